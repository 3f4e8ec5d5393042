/* smtp_session.c — the SMTP server protocol engine (RFC 5321, 3207, 4954,
 * 6409). Bytes in → bounded lines → command table → check → proceed → reply.
 * It performs no I/O: replies go to an output buffer, slow work (TLS, AUTH,
 * commit) is requested from the glue, and while a request is pending no
 * input is consumed, so pipelined commands are answered strictly in order.
 * Every refusal carries a code, an enhanced status code and a sentence. */
#include "core/smtp_session.h"

#include "auth/policy.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/log.h"

#define SESSION_INPUT_SLACK (1024 * 1024) /* one read burst past the line cap */
#define SESSION_OUTPUT_MAX (1024 * 1024)
#define SESSION_KEEP_BUF 4096            /* idle sessions keep at most this */

enum cmd_flags {
    CMD_PRE_TLS = 1 << 0,  /* allowed before STARTTLS on a submission listener */
};

struct smtp_tx {
    char qid[QUEUE_ID_SIZE];
    char sender[SMTP_ADDR_MAX + 1];
    char **recipients;
    size_t recipient_count, recipient_cap;
    unsigned refused_count;        /* RCPTs refused in this transaction */
    struct smtp_mail_params params;
    struct smtp_data_decoder decoder;
    struct smtp_buf body;
    struct smtp_buf header;
    struct queue_commit_req req;
};

struct smtp_session {
    struct smtp_session_params p;
    char *session_id, *hostname, *client_ip, *listener_name; /* owned copies */
    enum session_state state;
    enum session_request pending;
    bool is_tls, is_esmtp, is_authenticated, is_discarding_line, has_tx;
    unsigned errors;
    char helo[256];
    char user[256];
    char senders[1024];        /* the account's allowed senders ("" = any), from AUTH */
    int64_t acct_max_size;     /* the account's own limits, -1 = the listener's */
    int64_t acct_max_rcpts;
    bool is_trusted;           /* by network, not by password */
    char tls_version[16];
    char tls_cipher[64];
    struct smtp_buf in;
    size_t in_off;
    struct smtp_buf out;
    struct smtp_tx tx;
    /* AUTH in progress */
    char auth_mech[32];
    char *auth_text;
    bool auth_is_start, auth_has_text;
};

static const char *const session_state_names[] = {
    [SESSION_STATE_CONNECTED] = "connected", [SESSION_STATE_READY] = "ready",
    [SESSION_STATE_MAIL] = "mail",           [SESSION_STATE_RCPT] = "rcpt",
    [SESSION_STATE_DATA] = "data",           [SESSION_STATE_AUTH] = "auth",
    [SESSION_STATE_CLOSING] = "closing",
};

const char *smtp_session_state_name(enum session_state st)
{
    return (unsigned)st < sizeof(session_state_names) / sizeof(*session_state_names)
               ? session_state_names[st]
               : "?";
}

static const char *session_prefix(const struct smtp_session *s)
{
    return s->has_tx ? s->tx.qid : s->session_id;
}

static void session_enter_state(struct smtp_session *s, enum session_state st)
{
    if (s->state != st)
        log_debug(session_prefix(s), "state %s -> %s", smtp_session_state_name(s->state),
                  smtp_session_state_name(st));
    s->state = st;
}

/* ---- replies ---------------------------------------------------------- */

static void session_out(struct smtp_session *s, const char *text, size_t len)
{
    if (smtp_buf_append(&s->out, text, len) < 0) {
        /* Only a client that never reads its replies gets here. */
        session_enter_state(s, SESSION_STATE_CLOSING);
    }
}

__attribute__((format(printf, 4, 5))) static void
session_reply(struct smtp_session *s, int code, const char *enh, const char *fmt, ...)
{
    char line[1024];
    int n = snprintf(line, sizeof(line), "%d %s ", code, enh);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 2, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 3)
        len = sizeof(line) - 3;
    line[len++] = '\r';
    line[len++] = '\n';
    session_out(s, line, len);
}

static void session_close_with(struct smtp_session *s, const char *enh, const char *text)
{
    session_reply(s, 421, enh, "%s %s", s->hostname, text);
    session_enter_state(s, SESSION_STATE_CLOSING);
}

/* A refusal caused by the client: counted; past max_errors the session ends. */
__attribute__((format(printf, 4, 5))) static void
session_error(struct smtp_session *s, int code, const char *enh, const char *fmt, ...)
{
    if (++s->errors > s->p.max_errors) {
        log_info(session_prefix(s), "too many errors errors=%u client=[%s]", s->errors,
                 s->client_ip);
        session_close_with(s, "4.7.0", "Too many errors, closing connection");
        return;
    }
    char text[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    session_reply(s, code, enh, "%s", text);
}

int smtp_session_format_refusal(char *out, size_t out_size, const char *hostname,
                                const char *why)
{
    return snprintf(out, out_size, "421 4.7.0 %s %s\r\n", hostname, why);
}

/* ---- transaction ------------------------------------------------------ */

static void session_tx_reset(struct smtp_session *s)
{
    struct smtp_tx *tx = &s->tx;
    for (size_t i = 0; i < tx->recipient_count; i++)
        free(tx->recipients[i]);
    free(tx->recipients);
    smtp_buf_free(&tx->body);
    smtp_buf_free(&tx->header);
    memset(tx, 0, sizeof(*tx));
    s->has_tx = false;
}

static int session_tx_add_recipient(struct smtp_tx *tx, const char *addr)
{
    for (size_t i = 0; i < tx->recipient_count; i++)
        if (strcmp(tx->recipients[i], addr) == 0)
            return 0; /* RFC 5321 §3.3: a duplicate is accepted, delivered once */
    if (tx->recipient_count == tx->recipient_cap) {
        size_t cap = tx->recipient_cap ? tx->recipient_cap * 2 : 4;
        char **p = realloc(tx->recipients, cap * sizeof(*p));
        if (p == NULL)
            return -1;
        tx->recipients = p;
        tx->recipient_cap = cap;
    }
    char *copy = strdup(addr);
    if (copy == NULL)
        return -1;
    tx->recipients[tx->recipient_count++] = copy;
    return 0;
}

/* ---- EHLO ------------------------------------------------------------- */

static bool session_requires_tls(const struct smtp_session *s)
{
    return s->p.mode == LISTENER_STARTTLS && !s->is_tls && !s->p.allow_plaintext_auth &&
           !s->is_trusted;
}

static bool session_offers_auth(const struct smtp_session *s)
{
    return s->is_tls || s->p.allow_plaintext_auth;
}

static void session_cmd_ehlo(struct smtp_session *s, const struct smtp_command *c)
{
    bool is_ehlo = c->verb == SMTP_VERB_EHLO;
    if (c->arg_len == 0 || !smtp_helo_is_valid(c->arg, c->arg_len)) {
        session_error(s, 501, "5.5.4", "Syntax: %s hostname", is_ehlo ? "EHLO" : "HELO");
        return;
    }
    size_t n = c->arg_len < sizeof(s->helo) - 1 ? c->arg_len : sizeof(s->helo) - 1;
    memcpy(s->helo, c->arg, n);
    s->helo[n] = '\0';
    session_tx_reset(s);
    s->is_esmtp = is_ehlo;
    session_enter_state(s, SESSION_STATE_READY);
    if (!is_ehlo) {
        session_reply(s, 250, "2.0.0", "%s Hello %s [%s]", s->hostname, s->helo, s->client_ip);
        return;
    }
    char caps[8][64];
    size_t k = 0;
    snprintf(caps[k++], sizeof(caps[0]), "PIPELINING");
    snprintf(caps[k++], sizeof(caps[0]), "SIZE %llu", (unsigned long long)s->p.max_message_size);
    snprintf(caps[k++], sizeof(caps[0]), "8BITMIME");
    snprintf(caps[k++], sizeof(caps[0]), "ENHANCEDSTATUSCODES");
    if (s->p.mode == LISTENER_STARTTLS && !s->is_tls)
        snprintf(caps[k++], sizeof(caps[0]), "STARTTLS");
    if (session_offers_auth(s)) {
        snprintf(caps[k++], sizeof(caps[0]), "AUTH %s", auth_mechanisms());
        /* The pre-RFC form some old Outlook-era stacks in printers look for. */
        snprintf(caps[k++], sizeof(caps[0]), "AUTH=%s", auth_mechanisms());
    }
    snprintf(caps[k++], sizeof(caps[0]), "HELP");
    char line[300];
    int len = snprintf(line, sizeof(line), "250-%s Hello %s [%s]\r\n", s->hostname, s->helo,
                       s->client_ip);
    session_out(s, line, (size_t)len);
    for (size_t i = 0; i < k; i++) {
        len = snprintf(line, sizeof(line), "250%c%s\r\n", i + 1 == k ? ' ' : '-', caps[i]);
        session_out(s, line, (size_t)len);
    }
}

/* ---- STARTTLS --------------------------------------------------------- */

static void session_cmd_starttls(struct smtp_session *s, const struct smtp_command *c)
{
    if (s->p.mode != LISTENER_STARTTLS) {
        session_error(s, 502, "5.5.1", "STARTTLS not available on this port");
        return;
    }
    if (s->is_tls) {
        session_error(s, 503, "5.5.1", "TLS already active");
        return;
    }
    if (c->arg_len != 0) {
        session_error(s, 501, "5.5.4", "Syntax: STARTTLS");
        return;
    }
    session_reply(s, 220, "2.0.0", "Ready to start TLS");
    /* CVE-2011-0411: whatever the client pipelined after STARTTLS was sent
     * in plaintext and must not be executed inside the TLS session. */
    size_t dropped = s->in.len - s->in_off;
    if (dropped > 0)
        log_info(s->session_id, "starttls discarded=%zu bytes pipelined before the handshake",
                 dropped);
    s->in_off = s->in.len;
    s->pending = SESSION_REQ_STARTTLS;
}

void smtp_session_tls_started(struct smtp_session *s, const char *version, const char *cipher)
{
    s->is_tls = true;
    snprintf(s->tls_version, sizeof(s->tls_version), "%s", version);
    snprintf(s->tls_cipher, sizeof(s->tls_cipher), "%s", cipher);
    /* RFC 3207 §4.2: forget everything learnt before the handshake. */
    session_tx_reset(s);
    s->is_esmtp = false;
    s->helo[0] = '\0';
    if (s->pending == SESSION_REQ_STARTTLS)
        s->pending = SESSION_REQ_NONE;
    session_enter_state(s, SESSION_STATE_CONNECTED);
    log_info(s->session_id, "tls version=%s cipher=%s", s->tls_version, s->tls_cipher);
    if (s->p.mode == LISTENER_IMPLICIT)
        session_reply(s, 220, "2.0.0", "%s ESMTP smarthost", s->hostname);
}

/* ---- AUTH ------------------------------------------------------------- */

static void session_cmd_auth(struct smtp_session *s, const struct smtp_command *c)
{
    if (!session_offers_auth(s)) {
        session_error(s, 503, "5.5.1", "AUTH not available without TLS");
        return;
    }
    if (s->is_authenticated) {
        session_error(s, 503, "5.5.1", "Already authenticated");
        return;
    }
    if (s->state == SESSION_STATE_CONNECTED || !s->is_esmtp) {
        session_error(s, 503, "5.5.1", "Send EHLO first");
        return;
    }
    if (s->state != SESSION_STATE_READY) {
        session_error(s, 503, "5.5.1", "AUTH not allowed during a mail transaction");
        return;
    }
    const char *arg = c->arg, *end = c->arg + c->arg_len;
    const char *sp = memchr(arg, ' ', c->arg_len);
    size_t mech_len = sp != NULL ? (size_t)(sp - arg) : c->arg_len;
    if (mech_len == 0 || mech_len >= sizeof(s->auth_mech)) {
        session_error(s, 501, "5.5.4", "Syntax: AUTH mechanism [initial-response]");
        return;
    }
    memcpy(s->auth_mech, arg, mech_len);
    s->auth_mech[mech_len] = '\0';
    free(s->auth_text);
    s->auth_text = NULL;
    s->auth_has_text = false;
    if (sp != NULL) {
        const char *ir = sp + 1;
        if (ir >= end || memchr(ir, ' ', (size_t)(end - ir)) != NULL) {
            session_error(s, 501, "5.5.4", "Syntax: AUTH mechanism [initial-response]");
            return;
        }
        s->auth_text = strndup(ir, (size_t)(end - ir));
        if (s->auth_text == NULL) {
            session_reply(s, 454, "4.7.0", "Temporary authentication failure");
            return;
        }
        s->auth_has_text = true;
    }
    s->auth_is_start = true;
    s->pending = SESSION_REQ_AUTH;
}

static void session_auth_line(struct smtp_session *s, const char *line, size_t len)
{
    if (len == 1 && line[0] == '*') { /* RFC 4954 §4: the client cancels */
        session_enter_state(s, SESSION_STATE_READY);
        session_error(s, 501, "5.0.0", "Authentication cancelled");
        return;
    }
    free(s->auth_text);
    s->auth_text = strndup(line, len);
    if (s->auth_text == NULL) {
        session_enter_state(s, SESSION_STATE_READY);
        session_reply(s, 454, "4.7.0", "Temporary authentication failure");
        return;
    }
    s->auth_has_text = true;
    s->auth_is_start = false;
    s->pending = SESSION_REQ_AUTH;
}

void smtp_session_auth_args(const struct smtp_session *s, struct smtp_session_auth_args *out)
{
    out->is_start = s->auth_is_start;
    out->mech = s->auth_mech;
    out->text = s->auth_has_text ? s->auth_text : NULL;
}

void smtp_session_auth_done(struct smtp_session *s, const struct auth_outcome *o)
{
    char user[300];
    log_escape(o->user, strlen(o->user), user, sizeof(user));
    if (s->auth_text != NULL) {
        explicit_bzero(s->auth_text, strlen(s->auth_text));
        free(s->auth_text);
        s->auth_text = NULL;
    }
    s->auth_has_text = false;
    s->pending = SESSION_REQ_NONE;
    session_enter_state(s, SESSION_STATE_READY);
    switch (o->result) {
    case AUTH_OK:
        s->is_authenticated = true;
        snprintf(s->user, sizeof(s->user), "%s", o->user);
        snprintf(s->senders, sizeof(s->senders), "%s", o->senders);
        s->acct_max_size = o->max_size;
        s->acct_max_rcpts = o->max_rcpts;
        log_info(s->session_id, "auth ok user=%s mech=%s client=[%s]", user, s->auth_mech,
                 s->client_ip);
        session_reply(s, 235, "2.7.0", "Authentication successful");
        return;
    case AUTH_CONTINUE:
        session_enter_state(s, SESSION_STATE_AUTH);
        session_out(s, "334 ", 4);
        session_out(s, o->challenge, strlen(o->challenge));
        session_out(s, "\r\n", 2);
        return;
    case AUTH_FAIL:
        log_info(s->session_id, "auth failed user=%s mech=%s client=[%s]%s", user, s->auth_mech,
                 s->client_ip, o->locked_now ? " lockout=started" : "");
        session_error(s, 535, "5.7.8", "Authentication credentials invalid");
        return;
    case AUTH_LOCKED:
        log_info(s->session_id, "auth lockout user=%s client=[%s]", user, s->client_ip);
        session_error(s, 454, "4.7.0",
                      "Too many failed authentication attempts; try again later");
        return;
    case AUTH_TEMPFAIL:
        log_warn(s->session_id, "auth tempfail user=%s client=[%s]", user, s->client_ip);
        session_reply(s, 454, "4.7.0", "Temporary authentication failure; try again later");
        return;
    case AUTH_BAD_MECH:
        session_error(s, 504, "5.5.4", "Unrecognized authentication mechanism");
        return;
    case AUTH_BAD_BASE64:
        session_error(s, 501, "5.5.2", "Cannot decode the response (invalid base64)");
        return;
    }
}

/* ---- MAIL / RCPT / DATA ----------------------------------------------- */

static void session_cmd_mail(struct smtp_session *s, const struct smtp_command *c)
{
    if (s->state == SESSION_STATE_CONNECTED) {
        session_error(s, 503, "5.5.1", "Send EHLO or HELO first");
        return;
    }
    if (!s->is_authenticated) {
        session_error(s, 530, "5.7.0", "Authentication required");
        return;
    }
    if (s->state != SESSION_STATE_READY) {
        session_error(s, 503, "5.5.1", "Nested MAIL command");
        return;
    }
    char addr[SMTP_ADDR_MAX + 1];
    struct smtp_mail_params params;
    switch (smtp_parse_mail(c->arg, c->arg_len, addr, &params)) {
    case SMTP_PATH_OK:
    case SMTP_PATH_SOURCE_ROUTE:
        break;
    case SMTP_PATH_SYNTAX:
        session_error(s, 501, "5.5.4", "Syntax: MAIL FROM:<address>");
        return;
    case SMTP_PATH_UNKNOWN_PARAM:
        session_error(s, 555, "5.5.4", "Unsupported MAIL parameter");
        return;
    case SMTP_PATH_BAD_PARAM:
        session_error(s, 501, "5.5.4", "Malformed MAIL parameter");
        return;
    case SMTP_PATH_TOO_LONG:
        session_error(s, 501, "5.1.7", "Sender address too long");
        return;
    default:
        session_error(s, 501, "5.1.7", "Bad sender address syntax");
        return;
    }
    if (params.has_size && params.size > s->p.max_message_size) {
        session_error(s, 552, "5.3.4", "Message size exceeds fixed maximum message size (%llu bytes)",
                      (unsigned long long)s->p.max_message_size);
        return;
    }
    if (params.has_size && s->acct_max_size > 0 && params.size > (uint64_t)s->acct_max_size) {
        session_error(s, 552, "5.3.4", "Message size exceeds this account's maximum (%llu bytes)",
                      (unsigned long long)s->acct_max_size);
        return;
    }
    if (!policy_sender_allowed(s->senders, addr)) {
        char user[300];
        log_escape(s->user, strlen(s->user), user, sizeof(user));
        log_info(s->session_id, "reject: sender <%s> not allowed for user=%s client=[%s]", addr,
                 user, s->client_ip);
        session_error(s, 553, "5.7.1", "Sender <%s> is not allowed for this account", addr);
        return;
    }
    session_tx_reset(s);
    s->has_tx = true;
    queue_id_new(s->tx.qid);
    memcpy(s->tx.sender, addr, sizeof(addr));
    s->tx.params = params;
    session_enter_state(s, SESSION_STATE_MAIL);
    session_reply(s, 250, "2.1.0", "Sender <%s> OK", addr);
}

static void session_cmd_rcpt(struct smtp_session *s, const struct smtp_command *c)
{
    if (!s->is_authenticated) {
        session_error(s, 530, "5.7.0", "Authentication required");
        return;
    }
    if (s->state != SESSION_STATE_MAIL && s->state != SESSION_STATE_RCPT) {
        session_error(s, 503, "5.5.1", "Need MAIL command first");
        return;
    }
    char addr[SMTP_ADDR_MAX + 1];
    enum smtp_path_error e = smtp_parse_rcpt(c->arg, c->arg_len, addr);
    if (e != SMTP_PATH_OK && e != SMTP_PATH_SOURCE_ROUTE) {
        s->tx.refused_count++;
        if (e == SMTP_PATH_SYNTAX)
            session_error(s, 501, "5.5.4", "Syntax: RCPT TO:<address>");
        else if (e == SMTP_PATH_UNKNOWN_PARAM)
            session_error(s, 555, "5.5.4", "Unsupported RCPT parameter");
        else
            session_error(s, 501, "5.1.3", "Bad recipient address syntax");
        return;
    }
    unsigned max_rcpts = s->p.max_recipients;
    if (s->acct_max_rcpts > 0 && (uint64_t)s->acct_max_rcpts < max_rcpts)
        max_rcpts = (unsigned)s->acct_max_rcpts;
    if (s->tx.recipient_count >= max_rcpts) {
        s->tx.refused_count++;
        session_reply(s, 452, "4.5.3", "Too many recipients (at most %u per message)", max_rcpts);
        return;
    }
    if (session_tx_add_recipient(&s->tx, addr) < 0) {
        session_reply(s, 452, "4.3.1", "Insufficient system resources");
        return;
    }
    session_enter_state(s, SESSION_STATE_RCPT);
    session_reply(s, 250, "2.1.5", "Recipient <%s> OK", addr);
}

static void session_cmd_data(struct smtp_session *s, const struct smtp_command *c)
{
    if (c->arg_len != 0) {
        session_error(s, 501, "5.5.4", "Syntax: DATA");
        return;
    }
    if (s->state == SESSION_STATE_MAIL && s->tx.refused_count > 0) {
        session_error(s, 554, "5.5.1", "No valid recipients");
        return;
    }
    if (s->state != SESSION_STATE_RCPT) {
        session_error(s, 503, "5.5.1",
                      s->state == SESSION_STATE_MAIL ? "Need RCPT command first"
                                                     : "Need MAIL command first");
        return;
    }
    smtp_data_init(&s->tx.decoder, s->p.max_message_size, s->p.bare_lf == BARE_LF_REJECT);
    s->tx.body.cap_max = (size_t)s->p.max_message_size;
    session_enter_state(s, SESSION_STATE_DATA);
    session_reply(s, 354, "2.0.0", "End data with <CR><LF>.<CR><LF>");
}

static size_t session_format_date(time_t t, char *out, size_t size)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    int n = snprintf(out, size, "%s, %d %s %d %02d:%02d:%02d +0000", days[tm.tm_wday % 7],
                     tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour,
                     tm.tm_min, tm.tm_sec);
    return n < 0 ? 0 : (size_t)n;
}

__attribute__((format(printf, 2, 3))) static int session_header_add(struct smtp_buf *b,
                                                                      const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(line))
        return -1;
    return smtp_buf_append(b, line, (size_t)n);
}

/* RFC 6409 §8 and RFC 5321 §4.4: trace header, then Message-ID and Date
 * when the device left them out. Every other header stays as sent. */
static int session_build_header(struct smtp_session *s)
{
    struct smtp_tx *tx = &s->tx;
    time_t now = s->p.clock != NULL ? s->p.clock() : time(NULL);
    char date[64];
    session_format_date(now, date, sizeof(date));
    bool is_auth = s->is_authenticated && !s->is_trusted; /* RFC 3848: SASL only */
    const char *with = s->is_esmtp ? (s->is_tls ? (is_auth ? "ESMTPSA" : "ESMTPS")
                                                : (is_auth ? "ESMTPA" : "ESMTP"))
                                   : "SMTP";
    tx->header.cap_max = 8192;
    /* RFC 5321 §4.1.3 address literal: IPv6 addresses carry the "IPv6:" tag. */
    const char *tag = strchr(s->client_ip, ':') != NULL ? "IPv6:" : "";
    int r = session_header_add(&tx->header, "Received: from %s ([%s%s])\r\n\tby %s (smarthost) with %s",
                               s->helo[0] ? s->helo : "unknown", tag, s->client_ip, s->hostname,
                               with);
    if (r == 0 && s->is_tls)
        r = session_header_add(&tx->header, " (%s %s)", s->tls_version, s->tls_cipher);
    if (r == 0 && s->is_trusted)
        r = session_header_add(&tx->header, "\r\n\t(trusted network, account %s)", s->user);
    else if (r == 0 && s->is_authenticated)
        r = session_header_add(&tx->header, "\r\n\t(authenticated as %s)", s->user);
    if (r == 0)
        r = session_header_add(&tx->header, "\r\n\tid %s;\r\n\t%s\r\n", tx->qid, date);
    if (r == 0 && !tx->decoder.has_message_id) {
        struct tm tm;
        gmtime_r(&now, &tm);
        r = session_header_add(&tx->header, "Message-ID: <%04d%02d%02d%02d%02d%02d.%s@%s>\r\n",
                               tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                               tm.tm_min, tm.tm_sec, tx->qid, s->hostname);
    }
    if (r == 0 && !tx->decoder.has_date)
        r = session_header_add(&tx->header, "Date: %s\r\n", date);
    return r;
}

static void session_end_of_data(struct smtp_session *s)
{
    struct smtp_tx *tx = &s->tx;
    session_enter_state(s, SESSION_STATE_READY);
    if (tx->decoder.is_oversize) {
        log_info(tx->qid, "reject: message too large size>%llu client=[%s]",
                 (unsigned long long)s->p.max_message_size, s->client_ip);
        session_reply(s, 552, "5.3.4", "Message size exceeds fixed maximum message size (%llu bytes)",
                      (unsigned long long)s->p.max_message_size);
        session_tx_reset(s);
        return;
    }
    if (tx->decoder.has_bare_lf && s->p.bare_lf == BARE_LF_REJECT) {
        log_info(tx->qid, "reject: bare LF or bare CR in message client=[%s]", s->client_ip);
        session_reply(s, 550, "5.6.0",
                      "Message contains a bare LF or bare CR (line ends must be CRLF); refused");
        session_tx_reset(s);
        return;
    }
    if (tx->decoder.is_out_of_memory || session_build_header(s) < 0) {
        session_reply(s, 452, "4.3.1", "Insufficient system resources; try again later");
        session_tx_reset(s);
        return;
    }
    struct queue_commit_req *req = &tx->req;
    memset(req, 0, sizeof(*req));
    req->qid = tx->qid;
    req->sender = tx->sender;
    req->recipients = (const char *const *)tx->recipients;
    req->recipient_count = tx->recipient_count;
    req->auth_user = s->user;
    req->client_addr = s->client_ip;
    req->helo = s->helo;
    req->header = tx->header.data;
    req->header_len = tx->header.len;
    req->body = tx->body.data != NULL ? tx->body.data : (const uint8_t *)"";
    req->body_len = tx->body.len;
    s->pending = SESSION_REQ_COMMIT;
}

struct queue_commit_req *smtp_session_commit_req(struct smtp_session *s)
{
    return s->pending == SESSION_REQ_COMMIT ? &s->tx.req : NULL;
}

void smtp_session_commit_done(struct smtp_session *s, int status)
{
    struct smtp_tx *tx = &s->tx;
    s->pending = SESSION_REQ_NONE;
    if (status == QUEUE_OK) {
        char user[300];
        log_escape(s->user, strlen(s->user), user, sizeof(user));
        log_info(tx->qid, "from=<%s>, size=%zu, nrcpt=%zu, user=%s, client=[%s] queued",
                 tx->sender, tx->header.len + tx->body.len, tx->recipient_count, user,
                 s->client_ip);
        session_reply(s, 250, "2.0.0", "Ok: queued as %s", tx->qid);
    } else if (status == QUEUE_ERR_POLICY) {
        const struct policy_verdict *v = &tx->req.verdict;
        char user[300];
        log_escape(s->user, strlen(s->user), user, sizeof(user));
        log_info(tx->qid, "reject: policy user=%s from=<%s> code=%d dsn=%s (%s) client=[%s]",
                 user, tx->sender, v->code, v->enhanced, v->text, s->client_ip);
        session_reply(s, v->code, v->enhanced, "%s", v->text);
    } else if (status == QUEUE_ERR_CLOSED) {
        session_tx_reset(s);
        session_close_with(s, "4.3.2", "Service shutting down, try again later");
        return;
    } else {
        log_warn(tx->qid, "storage error status=%d: message not accepted client=[%s]", status,
                 s->client_ip);
        session_reply(s, 452, "4.3.1", "Insufficient system storage; try again later");
    }
    session_tx_reset(s);
    if (s->state != SESSION_STATE_CLOSING)
        session_enter_state(s, SESSION_STATE_READY);
}

/* ---- the rest --------------------------------------------------------- */

static void session_cmd_rset(struct smtp_session *s, const struct smtp_command *c)
{
    session_tx_reset(s);
    if (s->state != SESSION_STATE_CONNECTED)
        session_enter_state(s, SESSION_STATE_READY);
    session_reply(s, 250, "2.0.0", "Ok");
}

static void session_cmd_noop(struct smtp_session *s, const struct smtp_command *c)
{
    session_reply(s, 250, "2.0.0", "Ok");
}

static void session_cmd_quit(struct smtp_session *s, const struct smtp_command *c)
{
    session_reply(s, 221, "2.0.0", "%s closing connection", s->hostname);
    session_enter_state(s, SESSION_STATE_CLOSING);
}

static void session_cmd_help(struct smtp_session *s, const struct smtp_command *c)
{
    session_reply(s, 214, "2.0.0",
                  "Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP QUIT HELP VRFY");
}

static void session_cmd_vrfy(struct smtp_session *s, const struct smtp_command *c)
{
    /* RFC 5321 §3.5.3: no user enumeration; 252 means "will try". */
    session_reply(s, 252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery");
}

static void session_cmd_not_implemented(struct smtp_session *s, const struct smtp_command *c)
{
    session_error(s, 502, "5.5.1", "%s not implemented", smtp_verb_name(c->verb));
}

struct session_command {
    enum smtp_verb verb;
    void (*handler)(struct smtp_session *s, const struct smtp_command *c);
    unsigned flags;
};

static const struct session_command session_commands[] = {
    {SMTP_VERB_EHLO, session_cmd_ehlo, CMD_PRE_TLS},
    {SMTP_VERB_HELO, session_cmd_ehlo, CMD_PRE_TLS},
    {SMTP_VERB_STARTTLS, session_cmd_starttls, CMD_PRE_TLS},
    {SMTP_VERB_NOOP, session_cmd_noop, CMD_PRE_TLS},
    {SMTP_VERB_RSET, session_cmd_rset, CMD_PRE_TLS},
    {SMTP_VERB_QUIT, session_cmd_quit, CMD_PRE_TLS},
    {SMTP_VERB_AUTH, session_cmd_auth, 0},
    {SMTP_VERB_MAIL, session_cmd_mail, 0},
    {SMTP_VERB_RCPT, session_cmd_rcpt, 0},
    {SMTP_VERB_DATA, session_cmd_data, 0},
    {SMTP_VERB_HELP, session_cmd_help, 0},
    {SMTP_VERB_VRFY, session_cmd_vrfy, 0},
    {SMTP_VERB_EXPN, session_cmd_not_implemented, 0},
    {SMTP_VERB_BDAT, session_cmd_not_implemented, 0},
};

static void session_command_line(struct smtp_session *s, const char *line, size_t len)
{
    struct smtp_command c;
    if (smtp_command_parse(line, len, &c) < 0) {
        session_error(s, 500, "5.5.1", "Command unrecognized");
        return;
    }
    for (size_t i = 0; i < sizeof(session_commands) / sizeof(*session_commands); i++) {
        const struct session_command *sc = &session_commands[i];
        if (sc->verb != c.verb)
            continue;
        if (!(sc->flags & CMD_PRE_TLS) && session_requires_tls(s)) {
            session_error(s, 530, "5.7.0", "Must issue a STARTTLS command first");
            return;
        }
        sc->handler(s, &c);
        return;
    }
    session_error(s, 500, "5.5.1", "Command unrecognized");
}

/* ---- input ------------------------------------------------------------ */

struct smtp_session *smtp_session_new(const struct smtp_session_params *p)
{
    struct smtp_session *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->p = *p;
    s->session_id = strdup(p->session_id);
    s->hostname = strdup(p->hostname);
    s->client_ip = strdup(p->client_ip);
    s->listener_name = strdup(p->listener_name != NULL ? p->listener_name : "");
    if (!s->session_id || !s->hostname || !s->client_ip || !s->listener_name) {
        smtp_session_free(s);
        return NULL;
    }
    s->in.cap_max = (size_t)p->max_line_length + SESSION_INPUT_SLACK;
    s->out.cap_max = SESSION_OUTPUT_MAX;
    s->state = SESSION_STATE_CONNECTED;
    s->acct_max_size = s->acct_max_rcpts = -1;
    if (p->trusted_account != NULL && p->trusted_account[0] != '\0') {
        /* its sender policy, limits and quotas are checked when it commits */
        s->is_trusted = true;
        s->is_authenticated = true;
        snprintf(s->user, sizeof(s->user), "%s", p->trusted_account);
        log_info(s->session_id, "trusted network client=[%s] account=%s listener=%s",
                 s->client_ip, s->user, s->listener_name);
    }
    s->p.trusted_account = NULL; /* borrowed pointer: not kept */
    if (p->mode != LISTENER_IMPLICIT)
        session_reply(s, 220, "2.0.0", "%s ESMTP smarthost", s->hostname);
    return s;
}

void smtp_session_free(struct smtp_session *s)
{
    if (s == NULL)
        return;
    session_tx_reset(s);
    if (s->auth_text != NULL) {
        explicit_bzero(s->auth_text, strlen(s->auth_text));
        free(s->auth_text);
    }
    if (s->in.data != NULL)
        explicit_bzero(s->in.data, s->in.cap_alloc); /* may hold AUTH payloads */
    smtp_buf_free(&s->in);
    smtp_buf_free(&s->out);
    free(s->session_id);
    free(s->hostname);
    free(s->client_ip);
    free(s->listener_name);
    free(s);
}

int smtp_session_input(struct smtp_session *s, const uint8_t *data, size_t len)
{
    if (s->state == SESSION_STATE_CLOSING)
        return 0;
    if (s->in_off > 0 && s->in_off == s->in.len) {
        s->in.len = 0;
        s->in_off = 0;
    }
    if (smtp_buf_append(&s->in, data, len) < 0) {
        if (s->in_off > 0) { /* compact and retry once */
            memmove(s->in.data, s->in.data + s->in_off, s->in.len - s->in_off);
            s->in.len -= s->in_off;
            s->in_off = 0;
            if (smtp_buf_append(&s->in, data, len) == 0)
                return 0;
        }
        return -1;
    }
    return 0;
}

static void session_input_compact(struct smtp_session *s)
{
    if (s->in_off == s->in.len) {
        s->in.len = 0;
        s->in_off = 0;
        if (s->in.cap_alloc > SESSION_KEEP_BUF)
            smtp_buf_free(&s->in), s->in.cap_max = (size_t)s->p.max_line_length + SESSION_INPUT_SLACK;
    } else if (s->in_off > 0) {
        memmove(s->in.data, s->in.data + s->in_off, s->in.len - s->in_off);
        s->in.len -= s->in_off;
        s->in_off = 0;
    }
}

enum session_request smtp_session_run(struct smtp_session *s)
{
    while (s->pending == SESSION_REQ_NONE && s->state != SESSION_STATE_CLOSING) {
        const uint8_t *p = s->in.data + s->in_off;
        size_t avail = s->in.len - s->in_off;
        if (avail == 0)
            break;
        if (s->state == SESSION_STATE_DATA) {
            size_t used = 0;
            enum smtp_data_status st =
                smtp_data_feed(&s->tx.decoder, p, avail, &used, &s->tx.body);
            s->in_off += used;
            if (st == SMTP_DATA_DONE)
                session_end_of_data(s);
            continue;
        }
        const uint8_t *lf = memchr(p, '\n', avail);
        if (lf == NULL) {
            if (avail > s->p.max_line_length) {
                if (!s->is_discarding_line)
                    session_error(s, 500, "5.5.2", "Line too long");
                s->is_discarding_line = true;
                s->in_off = s->in.len;
            }
            break;
        }
        size_t len = (size_t)(lf - p);
        s->in_off += len + 1;
        if (s->is_discarding_line) { /* the tail of an over-long line */
            s->is_discarding_line = false;
            continue;
        }
        if (len > 0 && p[len - 1] == '\r')
            len--;
        if (len + 2 > s->p.max_line_length) {
            session_error(s, 500, "5.5.2", "Line too long");
            continue;
        }
        if (s->state == SESSION_STATE_AUTH)
            session_auth_line(s, (const char *)p, len);
        else
            session_command_line(s, (const char *)p, len);
    }
    session_input_compact(s);
    if (s->state == SESSION_STATE_CLOSING)
        return SESSION_REQ_CLOSE;
    return s->pending;
}

const uint8_t *smtp_session_output(const struct smtp_session *s, size_t *len)
{
    *len = s->out.len;
    return s->out.data;
}

void smtp_session_output_consume(struct smtp_session *s)
{
    s->out.len = 0;
    if (s->out.cap_alloc > SESSION_KEEP_BUF) {
        smtp_buf_free(&s->out);
        s->out.cap_max = SESSION_OUTPUT_MAX;
    }
}

void smtp_session_close(struct smtp_session *s, enum session_close_reason why)
{
    if (s->state == SESSION_STATE_CLOSING)
        return;
    switch (why) {
    case SESSION_CLOSE_IDLE:
        session_close_with(s, "4.4.2", "Idle timeout, closing connection");
        break;
    case SESSION_CLOSE_TIMEOUT:
        session_close_with(s, "4.4.2", "Session time limit exceeded, closing connection");
        break;
    case SESSION_CLOSE_SHUTDOWN:
        session_close_with(s, "4.3.2", "Service shutting down, closing connection");
        break;
    }
}

enum session_state smtp_session_state(const struct smtp_session *s)
{
    return s->state;
}

bool smtp_session_is_busy(const struct smtp_session *s)
{
    return s->has_tx || s->pending != SESSION_REQ_NONE;
}

const char *smtp_session_user(const struct smtp_session *s)
{
    return s->user;
}

/* smtp_client.c — see smtp_client.h.
 *
 * One connection is a small state machine driven by replies. Bytes from the
 * socket go through GnuTLS (push/pull over our own buffers) once TLS is up,
 * then into a bounded line buffer, then into smtp_reply; each complete reply
 * advances the state. Anything the peer sent after its 220 to STARTTLS is
 * dropped before the handshake (no plaintext injection into the TLS
 * session). The message body is streamed in chunks, dot-stuffed and with
 * every line ending in CRLF, the next chunk made only when the previous one
 * has been written. */
#include "relay/smtp_client.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <gnutls/x509.h>

#include "core/log.h"
#include "relay/smtp_reply.h"

#define CLIENT_CHUNK_SIZE 65536
#define CLIENT_READ_MAX (256 * 1024) /* ciphertext waiting for GnuTLS */

enum client_state {
    ST_CONNECTING,
    ST_TLS_IMPLICIT,   /* handshake before the banner */
    ST_BANNER,
    ST_EHLO,
    ST_HELO,
    ST_STARTTLS,
    ST_TLS_HANDSHAKE,
    ST_EHLO2,          /* after TLS */
    ST_AUTH_PLAIN,
    ST_AUTH_LOGIN,     /* waiting for 334 Username */
    ST_AUTH_LOGIN_USER,/* waiting for 334 Password */
    ST_AUTH_LOGIN_PASS,/* waiting for 235 */
    ST_READY,
    ST_MAIL,
    ST_RCPT,
    ST_DATA,
    ST_BODY,           /* streaming the content */
    ST_DOT,            /* waiting for the final reply */
    ST_RSET,
    ST_DEAD,
};

struct client_write {
    uv_write_t req;
    struct client_conn *c;
    size_t len;
    char data[];
};

struct client_conn {
    uv_loop_t *loop;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect_req;
    const struct client_options *opt; /* = &opt_copy */
    struct client_options opt_copy;
    char server_name[256];
    enum client_state state;
    int handles_open;
    bool is_closing;
    bool is_aborted;
    char peer[80];

    gnutls_session_t tls;
    bool is_tls;          /* TLS established */
    uint8_t *cin;         /* ciphertext received, not yet read by GnuTLS */
    size_t cin_len, cin_off, cin_cap;
    /* corked: commands gathered to leave in one TLS record / one segment */
    bool is_corked;
    uint8_t *cork;
    size_t cork_len, cork_cap;

    char line[SMTP_REPLY_LINE_MAX + 2];
    size_t line_len;
    bool is_line_too_long;
    struct smtp_reply reply;
    struct smtp_ehlo_caps caps;

    client_cb cb;
    void *arg;
    client_lost_cb lost_cb; /* parked: told if the idle connection dies */
    void *lost_arg;
    struct client_result result;

    /* the transaction */
    const struct client_txn *txn;
    size_t rcpt_sent;     /* RCPT commands sent */
    size_t rcpt_replied;  /* RCPT replies read */
    size_t rcpt_ok;
    bool is_mail_ok;
    bool is_pipelined;
    size_t body_off;      /* header, then body, as one stream */
    bool at_line_start;
    bool pending_cr;
    size_t writes_pending;
    bool is_body_done;
    bool needs_rset;
    enum client_step failed_step;
    struct client_reply failed_reply;
    bool has_failure;
};

static void client_process(struct client_conn *c);
static void client_fail(struct client_conn *c, enum client_step step, int code, const char *fmt,
                        ...) __attribute__((format(printf, 4, 5)));

const char *client_step_name(enum client_step step)
{
    static const char *const names[] = {"dns", "connect", "banner", "ehlo", "starttls", "auth",
                                        "mail", "rcpt", "data", "quit", "done"};
    return (size_t)step < sizeof(names) / sizeof(names[0]) ? names[step] : "?";
}

/* ---- closing ------------------------------------------------------------- */

static void client_free(struct client_conn *c)
{
    if (c->tls != NULL)
        gnutls_deinit(c->tls);
    free(c->cin);
    free(c->cork);
    free(c->result.rcpts);
    free(c);
}

static void client_on_closed(uv_handle_t *h)
{
    struct client_conn *c = h->data;
    if (--c->handles_open == 0)
        client_free(c);
}

static void client_shutdown(struct client_conn *c)
{
    if (c->is_closing)
        return;
    c->is_closing = true;
    c->state = ST_DEAD;
    uv_timer_stop(&c->timer);
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_close((uv_handle_t *)&c->timer, client_on_closed);
    uv_close((uv_handle_t *)&c->tcp, client_on_closed);
    client_lost_cb lost = c->lost_cb;
    c->lost_cb = NULL;
    if (lost != NULL)
        lost(c, c->lost_arg);
}

/* ---- writing -------------------------------------------------------------- */

static void client_on_written(uv_write_t *req, int status)
{
    struct client_write *w = (struct client_write *)req;
    struct client_conn *c = w->c;
    free(w);
    c->writes_pending--;
    if (c->is_closing)
        return;
    if (status < 0) {
        client_fail(c, c->state == ST_BODY ? CLIENT_STEP_DATA : CLIENT_STEP_CONNECT, 0,
                    "connection lost while sending: %s", uv_strerror(status));
        return;
    }
    if (c->state == ST_BODY && c->writes_pending == 0)
        client_process(c);
}

/* Put raw bytes on the socket (already encrypted, or plaintext). */
static int client_write_raw(struct client_conn *c, const void *data, size_t len)
{
    /* At once when the socket takes it all (see conn_write_raw in core):
     * only what it refuses waits in a request, counted in writes_pending. */
    uv_buf_t now = uv_buf_init((char *)data, (unsigned)len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &now, 1);
    if (n >= 0 && (size_t)n == len)
        return 0;
    if (n < 0 && n != UV_EAGAIN)
        return n;
    if (n > 0) {
        data = (const char *)data + n;
        len -= (size_t)n;
    }
    struct client_write *w = malloc(sizeof(*w) + len);
    if (w == NULL)
        return -ENOMEM;
    w->c = c;
    w->len = len;
    memcpy(w->data, data, len);
    uv_buf_t buf = uv_buf_init(w->data, (unsigned)len);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, client_on_written);
    if (rc < 0) {
        free(w);
        return rc;
    }
    c->writes_pending++;
    return 0;
}

static ssize_t client_tls_push(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
    struct client_conn *c = ptr;
    if (client_write_raw(c, data, len) < 0) {
        gnutls_transport_set_errno(c->tls, EIO);
        return -1;
    }
    return (ssize_t)len;
}

static ssize_t client_tls_pull(gnutls_transport_ptr_t ptr, void *data, size_t len)
{
    struct client_conn *c = ptr;
    size_t avail = c->cin_len - c->cin_off;
    if (avail == 0) {
        gnutls_transport_set_errno(c->tls, EAGAIN);
        return -1;
    }
    if (len > avail)
        len = avail;
    memcpy(data, c->cin + c->cin_off, len);
    c->cin_off += len;
    if (c->cin_off == c->cin_len)
        c->cin_off = c->cin_len = 0;
    return (ssize_t)len;
}

/* Application data out: through TLS when it is up; kept back while corked. */
static int client_send_bytes(struct client_conn *c, const void *data, size_t len)
{
    if (c->is_corked) {
        if (c->cork_len + len > c->cork_cap) {
            size_t cap = c->cork_cap ? c->cork_cap : 2048;
            while (cap < c->cork_len + len)
                cap *= 2;
            uint8_t *p = realloc(c->cork, cap);
            if (p == NULL)
                return -ENOMEM;
            c->cork = p;
            c->cork_cap = cap;
        }
        memcpy(c->cork + c->cork_len, data, len);
        c->cork_len += len;
        return 0;
    }
    if (!c->is_tls)
        return client_write_raw(c, data, len);
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t n = gnutls_record_send(c->tls, p, len);
        if (n == GNUTLS_E_INTERRUPTED || n == GNUTLS_E_AGAIN)
            continue;
        if (n < 0)
            return -EIO;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Pipelined commands leave together: a peer that gets MAIL, RCPT and DATA in
 * separate segments answers each on its own, and with Nagle on its side the
 * second answer waits for our delayed ACK (tens of ms per message). */
static void client_cork(struct client_conn *c)
{
    c->is_corked = true;
    c->cork_len = 0;
}

static int client_uncork(struct client_conn *c, bool is_sent)
{
    c->is_corked = false;
    size_t len = c->cork_len;
    c->cork_len = 0;
    return is_sent && len > 0 ? client_send_bytes(c, c->cork, len) : 0;
}

static int client_send_line(struct client_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int client_send_line(struct client_conn *c, const char *fmt, ...)
{
    char buf[1100];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(buf) - 2)
        return -EINVAL;
    buf[n++] = '\r';
    buf[n++] = '\n';
    return client_send_bytes(c, buf, (size_t)n);
}

/* ---- results ---------------------------------------------------------------- */

static void client_reply_from(struct client_reply *out, const struct smtp_reply *r)
{
    out->code = r->code;
    snprintf(out->enhanced, sizeof(out->enhanced), "%s", r->enhanced);
    snprintf(out->text, sizeof(out->text), "%s", r->text);
}

static void client_arm_timer(struct client_conn *c, unsigned ms, unsigned fallback);

/* Report to the owner. The owner may close the connection inside. */
static void client_report(struct client_conn *c, enum client_step step, bool is_reusable)
{
    c->result.step = step;
    c->result.is_reusable = is_reusable;
    snprintf(c->result.peer, sizeof(c->result.peer), "%s", c->peer);
    client_cb cb = c->cb;
    void *arg = c->arg;
    c->cb = NULL;
    if (!is_reusable)
        client_shutdown(c);
    else
        uv_timer_stop(&c->timer);
    if (cb != NULL)
        cb(c, &c->result, arg);
}

static void client_fail(struct client_conn *c, enum client_step step, int code, const char *fmt,
                        ...)
{
    if (c->is_closing)
        return;
    struct client_reply *rep = &c->result.reply;
    memset(rep, 0, sizeof(*rep));
    rep->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rep->text, sizeof(rep->text), fmt, ap);
    va_end(ap);
    if (code != 0 && code == c->reply.code)
        snprintf(rep->enhanced, sizeof(rep->enhanced), "%s", c->reply.enhanced);
    if (code == 0 || code == 421 ||
        (code >= 400 && code < 500 &&
         (step == CLIENT_STEP_BANNER || step == CLIENT_STEP_EHLO || step == CLIENT_STEP_MAIL)))
        c->result.is_connection_failure = true;
    if (c->txn != NULL) {
        /* recipients without a final answer get this failure */
        for (size_t i = 0; i < c->result.rcpt_count; i++) {
            int rc = c->result.rcpts[i].reply.code;
            if (rc == 0 || (rc >= 200 && rc < 300))
                c->result.rcpts[i].reply = *rep;
        }
    } else {
        c->result.rcpt_count = 0;
    }
    client_report(c, step, false);
}

/* A reply ends this step with a failure (its code and text). */
static void client_fail_reply(struct client_conn *c, enum client_step step)
{
    client_fail(c, step, c->reply.code, "%s", c->reply.text);
}

/* ---- timers ----------------------------------------------------------------- */

static void client_on_timeout(uv_timer_t *t)
{
    struct client_conn *c = t->data;
    enum client_step step;
    switch (c->state) {
    case ST_CONNECTING: step = CLIENT_STEP_CONNECT; break;
    case ST_TLS_IMPLICIT:
    case ST_STARTTLS:
    case ST_TLS_HANDSHAKE: step = CLIENT_STEP_STARTTLS; break;
    case ST_BANNER: step = CLIENT_STEP_BANNER; break;
    case ST_EHLO:
    case ST_HELO:
    case ST_EHLO2: step = CLIENT_STEP_EHLO; break;
    case ST_AUTH_PLAIN:
    case ST_AUTH_LOGIN:
    case ST_AUTH_LOGIN_USER:
    case ST_AUTH_LOGIN_PASS: step = CLIENT_STEP_AUTH; break;
    case ST_MAIL: step = CLIENT_STEP_MAIL; break;
    case ST_RCPT: step = CLIENT_STEP_RCPT; break;
    default: step = CLIENT_STEP_DATA; break;
    }
    client_fail(c, step, 0, "timeout: no answer from %s", c->peer);
}

static void client_arm_timer(struct client_conn *c, unsigned ms, unsigned fallback)
{
    uv_timer_start(&c->timer, client_on_timeout, ms ? ms : fallback, 0);
}

static void client_arm_command(struct client_conn *c)
{
    client_arm_timer(c, c->opt->command_timeout_ms, 300000);
}

/* ---- TLS ----------------------------------------------------------------- */

static void client_tls_describe(struct client_conn *c)
{
    const char *v = gnutls_protocol_get_name(gnutls_protocol_get_version(c->tls));
    const char *ci = gnutls_cipher_get_name(gnutls_cipher_get(c->tls));
    snprintf(c->result.tls, sizeof(c->result.tls), "%s %s", v ? v : "TLS", ci ? ci : "");
}

static int client_tls_start(struct client_conn *c)
{
    int rc = gnutls_init(&c->tls, GNUTLS_CLIENT | GNUTLS_NONBLOCK);
    if (rc < 0)
        return rc;
    const char *prio = c->opt->tls_priority != NULL ? c->opt->tls_priority : "NORMAL";
    rc = gnutls_priority_set_direct(c->tls, prio, NULL);
    if (rc >= 0 && c->opt->tls_creds != NULL)
        rc = gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, c->opt->tls_creds);
    const char *name = c->opt->tls_server_name;
    bool is_ip = false;
    if (name != NULL) {
        unsigned char tmp[16];
        is_ip = inet_pton(AF_INET, name, tmp) == 1 || inet_pton(AF_INET6, name, tmp) == 1;
    }
    if (rc >= 0 && name != NULL && name[0] != '\0' && !is_ip)
        rc = gnutls_server_name_set(c->tls, GNUTLS_NAME_DNS, name, strlen(name));
    if (rc >= 0 && c->opt->tls == CLIENT_TLS_VERIFY)
        gnutls_session_set_verify_cert(c->tls, name != NULL && name[0] != '\0' ? name : NULL, 0);
    if (rc < 0)
        return rc;
    gnutls_transport_set_ptr(c->tls, c);
    gnutls_transport_set_push_function(c->tls, client_tls_push);
    gnutls_transport_set_pull_function(c->tls, client_tls_pull);
    gnutls_handshake_set_timeout(c->tls, 0);
    return 0;
}

/* Drive the handshake with what has arrived. */
static void client_tls_continue(struct client_conn *c)
{
    int rc = gnutls_handshake(c->tls);
    if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED)
        return;
    if (rc < 0) {
        char why[300];
        if (rc == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
            gnutls_datum_t out = {0};
            unsigned status = gnutls_session_get_verify_cert_status(c->tls);
            gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &out, 0);
            snprintf(why, sizeof(why), "certificate verification failed: %s",
                     out.data != NULL ? (const char *)out.data : "?");
            gnutls_free(out.data);
        } else {
            snprintf(why, sizeof(why), "TLS handshake failed: %s", gnutls_strerror(rc));
        }
        c->result.is_tls_failure = true;
        client_fail(c, CLIENT_STEP_STARTTLS, 0, "%s", why);
        return;
    }
    c->is_tls = true;
    client_tls_describe(c);
    if (c->state == ST_TLS_IMPLICIT) {
        c->state = ST_BANNER;
        client_arm_command(c);
    } else {
        c->state = ST_EHLO2;
        smtp_reply_init(&c->reply);
        if (client_send_line(c, "EHLO %s", c->opt->helo_name) < 0) {
            client_fail(c, CLIENT_STEP_EHLO, 0, "cannot send EHLO");
            return;
        }
        client_arm_command(c);
    }
}

/* ---- after EHLO: TLS, AUTH, ready ---------------------------------------------- */

/* The handshake starts (after STARTTLS's 220, or at once for implicit TLS). */
static void client_tls_begin(struct client_conn *c)
{
    if (client_tls_start(c) < 0) {
        client_fail(c, CLIENT_STEP_STARTTLS, 0, "cannot start TLS");
        return;
    }
    client_arm_command(c);
    client_tls_continue(c);
}

static void client_ready(struct client_conn *c)
{
    c->state = ST_READY;
    client_report(c, CLIENT_STEP_DONE, true);
}

static int client_b64(const void *data, size_t len, char *out, size_t out_size)
{
    gnutls_datum_t in = {(unsigned char *)data, (unsigned)len}, enc = {0};
    if (gnutls_base64_encode2(&in, &enc) < 0)
        return -1;
    int rc = 0;
    if (enc.size + 1 > out_size)
        rc = -1;
    else {
        memcpy(out, enc.data, enc.size);
        out[enc.size] = '\0';
    }
    gnutls_free(enc.data);
    return rc;
}

static void client_after_ehlo(struct client_conn *c)
{
    bool wants_tls = c->opt->tls != CLIENT_TLS_NONE && !c->is_tls;
    if (wants_tls && c->caps.has_starttls) {
        c->state = ST_STARTTLS;
        smtp_reply_init(&c->reply);
        if (client_send_line(c, "STARTTLS") < 0)
            client_fail(c, CLIENT_STEP_STARTTLS, 0, "cannot send STARTTLS");
        else
            client_arm_command(c);
        return;
    }
    if (wants_tls && c->opt->tls != CLIENT_TLS_OPPORTUNISTIC) {
        client_fail(c, CLIENT_STEP_STARTTLS, 0,
                    "%s does not offer STARTTLS, and TLS is required for this destination",
                    c->peer);
        return;
    }
    if (c->opt->auth_user != NULL) {
        if (!c->is_tls) {
            client_fail(c, CLIENT_STEP_AUTH, 0, "refusing to send credentials without TLS");
            return;
        }
        smtp_reply_init(&c->reply);
        if (c->caps.has_auth_plain) {
            char raw[600], b64[900];
            int n = snprintf(raw, sizeof(raw), "%c%s%c%s", 0, c->opt->auth_user, 0,
                             c->opt->auth_password != NULL ? c->opt->auth_password : "");
            int rc = n > 0 && (size_t)n < sizeof(raw) ? client_b64(raw, (size_t)n, b64, sizeof(b64))
                                                      : -1;
            explicit_bzero(raw, sizeof(raw));
            if (rc == 0)
                rc = client_send_line(c, "AUTH PLAIN %s", b64);
            explicit_bzero(b64, sizeof(b64));
            if (rc < 0) {
                client_fail(c, CLIENT_STEP_AUTH, 0, "cannot send AUTH PLAIN");
                return;
            }
            c->state = ST_AUTH_PLAIN;
        } else if (c->caps.has_auth_login) {
            if (client_send_line(c, "AUTH LOGIN") < 0) {
                client_fail(c, CLIENT_STEP_AUTH, 0, "cannot send AUTH LOGIN");
                return;
            }
            c->state = ST_AUTH_LOGIN;
        } else {
            client_fail(c, CLIENT_STEP_AUTH, 0, "%s offers neither AUTH PLAIN nor AUTH LOGIN",
                        c->peer); /* code 0: deferred, next address */
            return;
        }
        client_arm_command(c);
        return;
    }
    client_ready(c);
}

/* ---- the transaction -------------------------------------------------------- */

static void client_txn_done(struct client_conn *c);

/* Next bytes of the content (header then body), dot-stuffed, CRLF lines,
 * into out; returns how many. */
static size_t client_body_chunk(struct client_conn *c, uint8_t *out, size_t cap)
{
    const struct client_txn *t = c->txn;
    size_t total = t->header_len + t->body_len;
    size_t n = 0;
    while (c->body_off < total && n + 3 < cap) {
        const uint8_t *p = c->body_off < t->header_len ? t->header + c->body_off
                                                       : t->body + (c->body_off - t->header_len);
        if (!c->pending_cr && !c->at_line_start) {
            /* inside a line: copy up to its CR or LF in one go */
            size_t left = c->body_off < t->header_len ? t->header_len - c->body_off
                                                      : total - c->body_off;
            size_t run = left < cap - 3 - n ? left : cap - 3 - n;
            const uint8_t *cr = memchr(p, '\r', run);
            if (cr != NULL)
                run = (size_t)(cr - p);
            const uint8_t *lf = memchr(p, '\n', run);
            if (lf != NULL)
                run = (size_t)(lf - p);
            if (run > 0) {
                memcpy(out + n, p, run);
                n += run;
                c->body_off += run;
                continue;
            }
        }
        uint8_t ch = *p;
        c->body_off++;
        if (c->pending_cr) {
            c->pending_cr = false;
            if (ch == '\n') {
                out[n++] = '\r';
                out[n++] = '\n';
                c->at_line_start = true;
                continue;
            }
            out[n++] = '\r'; /* a bare CR becomes a line end */
            out[n++] = '\n';
            c->at_line_start = true;
        }
        if (ch == '\r') {
            c->pending_cr = true;
            continue;
        }
        if (ch == '\n') { /* bare LF */
            out[n++] = '\r';
            out[n++] = '\n';
            c->at_line_start = true;
            continue;
        }
        if (c->at_line_start && ch == '.')
            out[n++] = '.';
        c->at_line_start = false;
        out[n++] = ch;
    }
    return n;
}

/* Send the next chunk, or the final dot: true while more may follow at once. */
static bool client_body_next(struct client_conn *c)
{
    if (c->writes_pending > 0 || c->state != ST_BODY)
        return false;
    const struct client_txn *t = c->txn;
    size_t total = t->header_len + t->body_len;
    if (c->body_off >= total && !c->pending_cr) {
        const char *end = c->at_line_start ? ".\r\n" : "\r\n.\r\n";
        if (c->body_off == 0)
            end = ".\r\n";
        c->state = ST_DOT;
        smtp_reply_init(&c->reply);
        if (client_send_bytes(c, end, strlen(end)) < 0) {
            client_fail(c, CLIENT_STEP_DATA, 0, "connection lost while sending the end of data");
            return false;
        }
        client_arm_timer(c, c->opt->data_timeout_ms, 600000);
        return false;
    }
    uint8_t *buf = malloc(CLIENT_CHUNK_SIZE + 8);
    if (buf == NULL) {
        client_fail(c, CLIENT_STEP_DATA, 0, "out of memory");
        return false;
    }
    size_t n = client_body_chunk(c, buf, CLIENT_CHUNK_SIZE);
    if (c->body_off >= total && c->pending_cr) {
        buf[n++] = '\r';
        buf[n++] = '\n';
        c->pending_cr = false;
        c->at_line_start = true;
    }
    /* the last chunk carries the final dot: one record, not a lone 3-byte one */
    bool is_last = c->body_off >= total;
    if (is_last) {
        const char *end = c->at_line_start ? ".\r\n" : "\r\n.\r\n";
        memcpy(buf + n, end, strlen(end));
        n += strlen(end);
        c->state = ST_DOT;
        smtp_reply_init(&c->reply);
    }
    int rc = n > 0 ? client_send_bytes(c, buf, n) : 0;
    free(buf);
    if (rc < 0) {
        client_fail(c, CLIENT_STEP_DATA, 0, "connection lost while sending the message");
        return false;
    }
    if (is_last) {
        client_arm_timer(c, c->opt->data_timeout_ms, 600000);
        return false;
    }
    client_arm_timer(c, c->opt->command_timeout_ms, 300000);
    return c->writes_pending == 0; /* the socket took it all: keep going */
}

/* Stream the content while the socket takes it; a write left queued
 * resumes the pump from its callback. */
static void client_body_pump(struct client_conn *c)
{
    while (client_body_next(c)) {
    }
}

static void client_record_rcpt(struct client_conn *c, size_t i)
{
    client_reply_from(&c->result.rcpts[i].reply, &c->reply);
    if (c->reply.code >= 200 && c->reply.code < 300)
        c->rcpt_ok++;
}

static int client_send_rcpt(struct client_conn *c)
{
    int rc = client_send_line(c, "RCPT TO:<%s>", c->txn->rcpts[c->rcpt_sent]);
    if (rc == 0)
        c->rcpt_sent++;
    return rc;
}

/* The transaction is over (success or a refusal that leaves the connection
 * usable): RSET after a failure, then report. */
static void client_txn_done(struct client_conn *c)
{
    if (c->needs_rset) {
        c->needs_rset = false;
        c->state = ST_RSET;
        smtp_reply_init(&c->reply);
        if (client_send_line(c, "RSET") < 0)
            client_fail(c, CLIENT_STEP_QUIT, 0, "cannot send RSET");
        else
            client_arm_command(c);
        return;
    }
    c->state = ST_READY;
    c->txn = NULL;
    if (c->has_failure) {
        c->result.reply = c->failed_reply;
        client_report(c, c->failed_step, true);
    } else {
        client_report(c, CLIENT_STEP_DONE, true);
    }
}

static void client_txn_failed(struct client_conn *c, enum client_step step)
{
    c->has_failure = true;
    c->failed_step = step;
    client_reply_from(&c->failed_reply, &c->reply);
}

static void client_on_mail_reply(struct client_conn *c)
{
    if (c->reply.code >= 200 && c->reply.code < 300) {
        c->is_mail_ok = true;
        if (!c->is_pipelined) {
            c->state = ST_RCPT;
            if (client_send_rcpt(c) < 0)
                client_fail(c, CLIENT_STEP_RCPT, 0, "cannot send RCPT");
            else
                client_arm_command(c);
            return;
        }
        c->state = ST_RCPT;
        client_arm_command(c);
        return;
    }
    /* refused: with pipelining the RCPT and DATA replies still come */
    if (c->reply.code == 421 || (c->reply.code >= 400 && c->reply.code < 500)) {
        client_fail(c, CLIENT_STEP_MAIL, c->reply.code, "%s", c->reply.text);
        return;
    }
    client_txn_failed(c, CLIENT_STEP_MAIL);
    for (size_t i = 0; i < c->txn->rcpt_count; i++)
        c->result.rcpts[i].reply = c->failed_reply;
    if (c->is_pipelined) {
        c->state = ST_RCPT;
        client_arm_command(c);
        return;
    }
    c->needs_rset = true;
    client_txn_done(c);
}

static void client_on_rcpt_reply(struct client_conn *c)
{
    if (c->reply.code == 421) {
        client_fail(c, CLIENT_STEP_RCPT, 421, "%s", c->reply.text);
        return;
    }
    size_t i = c->rcpt_replied++;
    if (c->is_mail_ok)
        client_record_rcpt(c, i);
    if (c->rcpt_replied < c->txn->rcpt_count) {
        if (!c->is_pipelined && client_send_rcpt(c) < 0) {
            client_fail(c, CLIENT_STEP_RCPT, 0, "cannot send RCPT");
            return;
        }
        client_arm_command(c);
        return;
    }
    c->state = ST_DATA;
    if (!c->is_pipelined) {
        if (!c->is_mail_ok || c->rcpt_ok == 0) {
            if (!c->has_failure)
                client_txn_failed(c, CLIENT_STEP_RCPT);
            c->needs_rset = true;
            client_txn_done(c);
            return;
        }
        if (client_send_line(c, "DATA") < 0) {
            client_fail(c, CLIENT_STEP_DATA, 0, "cannot send DATA");
            return;
        }
    }
    client_arm_command(c);
}

static void client_on_data_reply(struct client_conn *c)
{
    if (c->reply.code == 354) {
        if (!c->is_mail_ok || c->rcpt_ok == 0) {
            /* pipelined DATA accepted although nobody can receive: end it empty
             * (RFC 2920 3.1) and keep the refusal */
            if (!c->has_failure)
                client_txn_failed(c, CLIENT_STEP_RCPT);
            c->state = ST_DOT;
            smtp_reply_init(&c->reply);
            if (client_send_bytes(c, ".\r\n", 3) < 0)
                client_fail(c, CLIENT_STEP_DATA, 0, "cannot end the data");
            else
                client_arm_command(c);
            return;
        }
        c->state = ST_BODY;
        c->body_off = 0;
        c->at_line_start = true;
        c->pending_cr = false;
        client_body_pump(c);
        return;
    }
    if (c->reply.code == 421) {
        client_fail(c, CLIENT_STEP_DATA, 421, "%s", c->reply.text);
        return;
    }
    if (!c->has_failure) {
        if (!c->is_mail_ok || c->rcpt_ok == 0)
            client_txn_failed(c, CLIENT_STEP_RCPT);
        else {
            client_txn_failed(c, CLIENT_STEP_DATA);
            /* every accepted recipient gets the DATA refusal */
            for (size_t i = 0; i < c->txn->rcpt_count; i++)
                if (c->result.rcpts[i].reply.code >= 200 && c->result.rcpts[i].reply.code < 300)
                    c->result.rcpts[i].reply = c->failed_reply;
        }
    }
    c->needs_rset = true;
    client_txn_done(c);
}

static void client_on_dot_reply(struct client_conn *c)
{
    if (c->has_failure) { /* the empty data after refused recipients */
        c->needs_rset = true;
        client_txn_done(c);
        return;
    }
    struct client_reply final;
    client_reply_from(&final, &c->reply);
    for (size_t i = 0; i < c->txn->rcpt_count; i++)
        if (c->result.rcpts[i].reply.code >= 200 && c->result.rcpts[i].reply.code < 300)
            c->result.rcpts[i].reply = final;
    if (c->reply.code == 421) {
        c->result.reply = final;
        c->result.is_connection_failure = true;
        client_report(c, CLIENT_STEP_DATA, false);
        return;
    }
    if (c->reply.code < 200 || c->reply.code >= 300) {
        client_txn_failed(c, CLIENT_STEP_DATA);
        c->needs_rset = true;
    } else {
        c->result.reply = final;
    }
    client_txn_done(c);
}

void client_park(struct client_conn *c, client_lost_cb lost, void *arg)
{
    uv_timer_stop(&c->timer);
    c->lost_cb = lost;
    c->lost_arg = arg;
}

int client_send(struct client_conn *c, const struct client_txn *txn, client_cb cb, void *arg)
{
    if (c == NULL || c->is_closing || c->state != ST_READY || txn == NULL || txn->rcpt_count == 0)
        return -EINVAL;
    c->lost_cb = NULL;
    struct client_rcpt_result *rr = calloc(txn->rcpt_count, sizeof(*rr));
    if (rr == NULL)
        return -ENOMEM;
    free(c->result.rcpts);
    memset(&c->result.reply, 0, sizeof(c->result.reply));
    c->result.rcpts = rr;
    c->result.rcpt_count = txn->rcpt_count;
    c->result.is_connection_failure = false;
    c->result.is_tls_failure = false;
    c->txn = txn;
    c->cb = cb;
    c->arg = arg;
    c->rcpt_sent = c->rcpt_replied = c->rcpt_ok = 0;
    c->is_mail_ok = false;
    c->has_failure = false;
    c->needs_rset = false;
    c->is_pipelined = c->caps.has_pipelining;
    uint64_t size = (uint64_t)txn->header_len + txn->body_len;
    if (c->caps.has_size && c->caps.size_max > 0 && size > c->caps.size_max) {
        /* the peer said it will not take this: do not even try */
        struct client_reply rep = {.code = 552};
        snprintf(rep.enhanced, sizeof(rep.enhanced), "5.3.4");
        snprintf(rep.text, sizeof(rep.text),
                 "552 5.3.4 message size %llu exceeds the %llu bytes %s accepts (local)",
                 (unsigned long long)size, (unsigned long long)c->caps.size_max, c->peer);
        for (size_t i = 0; i < txn->rcpt_count; i++)
            rr[i].reply = rep;
        c->has_failure = true;
        c->failed_step = CLIENT_STEP_MAIL;
        c->failed_reply = rep;
        client_txn_done(c);
        return 0;
    }
    char params[96] = "";
    int pn = 0;
    if (c->caps.has_size)
        pn += snprintf(params + pn, sizeof(params) - (size_t)pn, " SIZE=%llu",
                       (unsigned long long)size);
    if (txn->is_8bit && c->caps.has_8bitmime)
        snprintf(params + pn, sizeof(params) - (size_t)pn, " BODY=8BITMIME");
    smtp_reply_init(&c->reply);
    c->state = ST_MAIL;
    if (c->is_pipelined)
        client_cork(c);
    int rc = client_send_line(c, "MAIL FROM:<%s>%s", txn->sender, params);
    if (rc == 0 && c->is_pipelined) {
        /* RFC 2920: MAIL, every RCPT and DATA in one go */
        while (rc == 0 && c->rcpt_sent < txn->rcpt_count)
            rc = client_send_rcpt(c);
        if (rc == 0)
            rc = client_send_line(c, "DATA");
    }
    if (c->is_corked) {
        int flush_rc = client_uncork(c, rc == 0);
        if (rc == 0)
            rc = flush_rc;
    }
    if (rc < 0) {
        c->txn = NULL;
        c->cb = NULL;
        c->state = ST_READY;
        return rc;
    }
    client_arm_command(c);
    return 0;
}

/* ---- replies ------------------------------------------------------------- */

static void client_on_reply(struct client_conn *c)
{
    int code = c->reply.code;
    switch (c->state) {
    case ST_BANNER:
        if (code != 220) {
            client_fail_reply(c, CLIENT_STEP_BANNER);
            return;
        }
        c->state = ST_EHLO;
        smtp_reply_init(&c->reply);
        if (client_send_line(c, "EHLO %s", c->opt->helo_name) < 0)
            client_fail(c, CLIENT_STEP_EHLO, 0, "cannot send EHLO");
        else
            client_arm_command(c);
        return;
    case ST_EHLO:
    case ST_EHLO2:
        if (code == 250) {
            smtp_ehlo_parse(&c->reply, &c->caps);
            client_after_ehlo(c);
            return;
        }
        if (c->state == ST_EHLO && code >= 500 && code < 600) {
            /* an old server: HELO, and no extensions at all */
            c->state = ST_HELO;
            smtp_reply_init(&c->reply);
            if (client_send_line(c, "HELO %s", c->opt->helo_name) < 0)
                client_fail(c, CLIENT_STEP_EHLO, 0, "cannot send HELO");
            else
                client_arm_command(c);
            return;
        }
        client_fail_reply(c, CLIENT_STEP_EHLO);
        return;
    case ST_HELO:
        if (code != 250) {
            client_fail_reply(c, CLIENT_STEP_EHLO);
            return;
        }
        memset(&c->caps, 0, sizeof(c->caps));
        client_after_ehlo(c);
        return;
    case ST_STARTTLS:
        if (code != 220) {
            if (c->opt->tls == CLIENT_TLS_OPPORTUNISTIC) {
                /* refused STARTTLS: carry on in plaintext, as the policy allows */
                c->caps.has_starttls = false;
                if (c->opt->auth_user != NULL) {
                    client_fail(c, CLIENT_STEP_AUTH, 0, "refusing to send credentials without TLS");
                    return;
                }
                client_ready(c);
                return;
            }
            client_fail_reply(c, CLIENT_STEP_STARTTLS);
            return;
        }
        /* bytes after the 220 were sent before TLS: never trusted */
        c->line_len = 0;
        c->state = ST_TLS_HANDSHAKE;
        client_tls_begin(c);
        return;
    case ST_AUTH_PLAIN:
    case ST_AUTH_LOGIN_PASS:
        if (code != 235) {
            c->result.is_connection_failure = true; /* our credentials: never bounce mail */
            client_fail(c, CLIENT_STEP_AUTH, code, "%s", c->reply.text);
            return;
        }
        client_ready(c);
        return;
    case ST_AUTH_LOGIN:
    case ST_AUTH_LOGIN_USER: {
        if (code != 334) {
            c->result.is_connection_failure = true;
            client_fail(c, CLIENT_STEP_AUTH, code, "%s", c->reply.text);
            return;
        }
        const char *secret = c->state == ST_AUTH_LOGIN
                                 ? c->opt->auth_user
                                 : (c->opt->auth_password != NULL ? c->opt->auth_password : "");
        char b64[600];
        int rc = client_b64(secret, strlen(secret), b64, sizeof(b64));
        if (rc == 0)
            rc = client_send_line(c, "%s", b64);
        explicit_bzero(b64, sizeof(b64));
        if (rc < 0) {
            client_fail(c, CLIENT_STEP_AUTH, 0, "cannot send AUTH LOGIN data");
            return;
        }
        c->state = c->state == ST_AUTH_LOGIN ? ST_AUTH_LOGIN_USER : ST_AUTH_LOGIN_PASS;
        smtp_reply_init(&c->reply);
        client_arm_command(c);
        return;
    }
    case ST_MAIL: client_on_mail_reply(c); return;
    case ST_RCPT: client_on_rcpt_reply(c); return;
    case ST_DATA: client_on_data_reply(c); return;
    case ST_DOT: client_on_dot_reply(c); return;
    case ST_RSET:
        if (code != 250) {
            client_fail_reply(c, CLIENT_STEP_QUIT);
            return;
        }
        client_txn_done(c);
        return;
    case ST_READY:
        /* unsolicited (a 421 before closing an idle connection): dead now */
        client_shutdown(c);
        return;
    case ST_BODY:
        /* the server answered in the middle of the content: it gave up */
        client_fail(c, CLIENT_STEP_DATA, code, "%s", c->reply.text);
        return;
    default:
        return;
    }
}

/* Plaintext from the peer: lines → replies. */
static void client_on_plaintext(struct client_conn *c, const char *data, size_t len)
{
    for (size_t i = 0; i < len && !c->is_closing; i++) {
        char ch = data[i];
        if (ch != '\n') {
            if (c->line_len < SMTP_REPLY_LINE_MAX)
                c->line[c->line_len++] = ch;
            else
                c->is_line_too_long = true;
            continue;
        }
        size_t n = c->line_len;
        if (n > 0 && c->line[n - 1] == '\r')
            n--;
        c->line_len = 0;
        if (c->is_line_too_long) {
            client_fail(c, CLIENT_STEP_CONNECT, 0, "%s sent a reply line over %d bytes", c->peer,
                        SMTP_REPLY_LINE_MAX);
            return;
        }
        if (c->state == ST_DEAD || c->state == ST_CONNECTING || c->state == ST_TLS_HANDSHAKE ||
            c->state == ST_TLS_IMPLICIT)
            continue; /* nothing expected: ignored */
        enum smtp_reply_feed f = smtp_reply_feed(&c->reply, c->line, n);
        if (f == SMTP_REPLY_INVALID) {
            char esc[128];
            log_escape(c->line, n, esc, sizeof(esc));
            client_fail(c, CLIENT_STEP_CONNECT, 0, "%s sent something that is not SMTP: %s",
                        c->peer, esc);
            return;
        }
        if (f == SMTP_REPLY_MORE)
            continue;
        uv_timer_stop(&c->timer);
        enum client_state before = c->state;
        client_on_reply(c);
        if (c->is_closing)
            return;
        if (before == ST_STARTTLS && c->state == ST_TLS_HANDSHAKE)
            return; /* the rest of this read came before TLS: dropped */
        if (c->reply.line_count > 0 && c->reply.code != 0 && f == SMTP_REPLY_DONE &&
            c->state != ST_BODY)
            smtp_reply_init(&c->reply); /* ready for the next reply */
    }
}

static void client_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    static __thread char slab[65536];
    *buf = uv_buf_init(slab, sizeof(slab));
}

static void client_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct client_conn *c = s->data;
    if (c->is_closing)
        return;
    if (nread < 0) {
        enum client_step step = c->state == ST_BANNER      ? CLIENT_STEP_BANNER
                                : c->state == ST_EHLO       ? CLIENT_STEP_EHLO
                                : c->state == ST_MAIL       ? CLIENT_STEP_MAIL
                                : c->state == ST_RCPT       ? CLIENT_STEP_RCPT
                                : c->state == ST_TLS_HANDSHAKE ? CLIENT_STEP_STARTTLS
                                : c->state == ST_READY      ? CLIENT_STEP_QUIT
                                                            : CLIENT_STEP_DATA;
        if (c->state == ST_READY) {
            client_shutdown(c);
            return;
        }
        if (c->state == ST_TLS_HANDSHAKE || c->state == ST_TLS_IMPLICIT)
            c->result.is_tls_failure = true;
        client_fail(c, step, 0, "connection %s by %s",
                    nread == UV_EOF ? "closed" : uv_strerror((int)nread), c->peer);
        return;
    }
    if (nread == 0)
        return;
    if (c->tls == NULL) {
        client_on_plaintext(c, buf->base, (size_t)nread);
        return;
    }
    /* ciphertext: keep it for GnuTLS */
    if (c->cin_len + (size_t)nread > CLIENT_READ_MAX) {
        client_fail(c, CLIENT_STEP_CONNECT, 0, "%s sends faster than it is read", c->peer);
        return;
    }
    if (c->cin_len + (size_t)nread > c->cin_cap) {
        size_t cap = c->cin_cap ? c->cin_cap : 16384;
        while (cap < c->cin_len + (size_t)nread)
            cap *= 2;
        uint8_t *n = realloc(c->cin, cap);
        if (n == NULL) {
            client_fail(c, CLIENT_STEP_CONNECT, 0, "out of memory");
            return;
        }
        c->cin = n;
        c->cin_cap = cap;
    }
    memcpy(c->cin + c->cin_len, buf->base, (size_t)nread);
    c->cin_len += (size_t)nread;
    if (!c->is_tls) {
        client_tls_continue(c);
        if (c->is_closing || !c->is_tls)
            return;
    }
    char plain[16384];
    int warnings = 0;
    for (;;) {
        size_t unread_before = c->cin_len - c->cin_off;
        ssize_t n = gnutls_record_recv(c->tls, plain, sizeof(plain));
        if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
            /* also after a post-handshake message (a TLS 1.3 ticket): go on
             * while GnuTLS still consumes what has arrived */
            size_t unread = c->cin_len - c->cin_off;
            if (unread > 0 && unread < unread_before)
                continue;
            return;
        }
        if (n == 0 || (n < 0 && gnutls_error_is_fatal((int)n))) {
            if (c->state == ST_READY) {
                client_shutdown(c);
                return;
            }
            client_fail(c, c->state == ST_DOT ? CLIENT_STEP_DATA : CLIENT_STEP_CONNECT, 0,
                        "TLS connection %s by %s", n == 0 ? "closed" : gnutls_strerror((int)n),
                        c->peer);
            return;
        }
        if (n < 0) {
            if (++warnings > 16) /* a peer that only sends alerts */
                return;
            continue; /* a warning alert, a ticket */
        }
        client_on_plaintext(c, plain, (size_t)n);
        if (c->is_closing)
            return;
    }
}

static void client_process(struct client_conn *c)
{
    if (c->state == ST_BODY)
        client_body_pump(c);
}

/* ---- connecting ------------------------------------------------------------ */

static void client_on_connect(uv_connect_t *req, int status)
{
    struct client_conn *c = req->data;
    if (c->is_closing)
        return;
    if (status < 0) {
        client_fail(c, CLIENT_STEP_CONNECT, 0, "cannot connect to %s: %s", c->peer,
                    uv_strerror(status));
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if (uv_read_start((uv_stream_t *)&c->tcp, client_on_alloc, client_on_read) < 0) {
        client_fail(c, CLIENT_STEP_CONNECT, 0, "cannot read from %s", c->peer);
        return;
    }
    if (c->opt->is_implicit_tls) {
        c->state = ST_TLS_IMPLICIT;
        client_tls_begin(c);
        return;
    }
    c->state = ST_BANNER;
    smtp_reply_init(&c->reply);
    client_arm_command(c);
}

static void client_format_peer(const struct sockaddr *addr, char *out, size_t size)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        snprintf(out, size, "[%s]:%u", ip, ntohs(a->sin6_port));
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
        snprintf(out, size, "%s:%u", ip, ntohs(a->sin_port));
    }
}

int client_open(uv_loop_t *loop, const struct sockaddr *addr, const struct client_options *opt,
                client_cb cb, void *arg, struct client_conn **out)
{
    *out = NULL;
    if (loop == NULL || addr == NULL || opt == NULL || opt->helo_name == NULL || cb == NULL ||
        (addr->sa_family != AF_INET && addr->sa_family != AF_INET6))
        return -EINVAL;
    struct client_conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    c->loop = loop;
    c->opt_copy = *opt;
    if (opt->tls_server_name != NULL) {
        snprintf(c->server_name, sizeof(c->server_name), "%s", opt->tls_server_name);
        c->opt_copy.tls_server_name = c->server_name;
    }
    c->opt = &c->opt_copy;
    c->cb = cb;
    c->arg = arg;
    c->state = ST_CONNECTING;
    client_format_peer(addr, c->peer, sizeof(c->peer));
    int rc = uv_tcp_init(loop, &c->tcp);
    if (rc < 0) {
        free(c);
        return rc;
    }
    c->tcp.data = c;
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    c->handles_open = 2;
    c->connect_req.data = c;
    rc = uv_tcp_connect(&c->connect_req, &c->tcp, addr, client_on_connect);
    if (rc < 0) {
        c->cb = NULL;
        client_shutdown(c);
        return rc;
    }
    client_arm_timer(c, opt->connect_timeout_ms, 30000);
    *out = c;
    return 0;
}

void client_close(struct client_conn *c)
{
    if (c == NULL || c->is_closing)
        return;
    c->cb = NULL;
    c->lost_cb = NULL;
    if (c->state == ST_READY) {
        client_send_line(c, "QUIT"); /* best effort, no wait for 221 */
        if (c->is_tls)
            gnutls_bye(c->tls, GNUTLS_SHUT_WR);
    }
    client_shutdown(c);
}

void client_abort(struct client_conn *c)
{
    if (c == NULL || c->is_closing)
        return;
    c->cb = NULL;
    c->lost_cb = NULL;
    c->is_aborted = true;
    client_shutdown(c);
}

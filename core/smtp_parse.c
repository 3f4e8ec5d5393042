/* smtp_parse.c — pure parsers of the SMTP command channel: verb split, MAIL /
 * RCPT paths and parameters, the RFC 5321 §4.1.2 mailbox grammar, HELO names.
 * Every byte comes from an unauthenticated client: everything is bounded by the
 * caller's length, nothing is allocated, nothing is logged, no I/O. Must never
 * read past len, never write past addr[SMTP_ADDR_MAX], and never accept 8-bit
 * or control bytes in an address (we do not offer SMTPUTF8). */
#include "core/smtp_parse.h"

#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

#define SMTP_LOCAL_MAX 64    /* RFC 5321 §4.5.3.1.1 */
#define SMTP_DOMAIN_MAX 255  /* RFC 5321 §4.5.3.1.2 */
#define SMTP_LABEL_MAX 63    /* RFC 1035 §2.3.4 */
#define SMTP_HELO_MAX 255

static const char *const smtp_verb_names[] = {
    [SMTP_VERB_UNKNOWN] = "UNKNOWN", [SMTP_VERB_HELO] = "HELO",
    [SMTP_VERB_EHLO] = "EHLO",       [SMTP_VERB_MAIL] = "MAIL",
    [SMTP_VERB_RCPT] = "RCPT",       [SMTP_VERB_DATA] = "DATA",
    [SMTP_VERB_RSET] = "RSET",       [SMTP_VERB_NOOP] = "NOOP",
    [SMTP_VERB_QUIT] = "QUIT",       [SMTP_VERB_HELP] = "HELP",
    [SMTP_VERB_VRFY] = "VRFY",       [SMTP_VERB_EXPN] = "EXPN",
    [SMTP_VERB_STARTTLS] = "STARTTLS", [SMTP_VERB_AUTH] = "AUTH",
    [SMTP_VERB_BDAT] = "BDAT",
};
#define SMTP_VERB_COUNT (sizeof(smtp_verb_names) / sizeof(smtp_verb_names[0]))

const char *smtp_verb_name(enum smtp_verb verb)
{
    if ((unsigned)verb >= SMTP_VERB_COUNT || smtp_verb_names[verb] == NULL)
        return "UNKNOWN";
    return smtp_verb_names[verb];
}

/* ---- character classes (ASCII only, independent of the locale) ---------- */

static bool parse_is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool parse_is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* RFC 5322 §3.2.3 atext */
static bool parse_is_atext(unsigned char c)
{
    return parse_is_alpha(c) || parse_is_digit(c) || (c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/* RFC 5321 §4.1.2 qtextSMTP: printable ASCII and space, without " and \ */
static bool parse_is_qtext(unsigned char c)
{
    return c >= 32 && c <= 126 && c != '"' && c != '\\';
}

static bool parse_is_wsp(unsigned char c)
{
    return c == ' ' || c == '\t';
}

/* ---- command line ------------------------------------------------------- */

/* The verb is everything up to the first space. Extra spaces before the
 * argument and trailing spaces are tolerated (devices send both); any other
 * control character, NUL included, refuses the whole line so that nothing
 * downstream ever sees one. */
int smtp_command_parse(const char *line, size_t len, struct smtp_command *out)
{
    out->verb = SMTP_VERB_UNKNOWN;
    out->arg = "";
    out->arg_len = 0;
    if (line == NULL || len == 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)line[i];
        if (c < 0x20 || c == 0x7f)
            return -1;
    }
    size_t vlen = 0;
    while (vlen < len && line[vlen] != ' ')
        vlen++;
    enum smtp_verb verb = SMTP_VERB_UNKNOWN;
    for (size_t v = 1; v < SMTP_VERB_COUNT; v++) {
        const char *name = smtp_verb_names[v];
        if (strlen(name) == vlen && strncasecmp(line, name, vlen) == 0) {
            verb = (enum smtp_verb)v;
            break;
        }
    }
    if (verb == SMTP_VERB_UNKNOWN)
        return -1;
    size_t start = vlen;
    while (start < len && line[start] == ' ')
        start++;
    size_t end = len;
    while (end > start && line[end - 1] == ' ')
        end--;
    out->verb = verb;
    out->arg = start < len ? line + start : "";
    out->arg_len = end - start;
    return 0;
}

/* ---- mailbox grammar ---------------------------------------------------- */

/* Dot-atom local part: atext+ ("." atext+)*. */
static bool parse_dot_atom_is_valid(const char *s, size_t len)
{
    if (len == 0 || s[0] == '.' || s[len - 1] == '.')
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.') {
            if (s[i - 1] == '.')
                return false;
        } else if (!parse_is_atext(c)) {
            return false;
        }
    }
    return true;
}

/* Length of a quoted-string starting at s[0] == '"' (RFC 5321 quoted-pairSMTP
 * is "\" followed by %d32-126), or 0 when it is malformed or unterminated. */
static size_t parse_quoted_len(const char *s, size_t len)
{
    if (len == 0 || s[0] != '"')
        return 0;
    size_t i = 1;
    while (i < len) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"')
            return i + 1;
        if (c == '\\') {
            if (i + 1 >= len)
                return 0;
            unsigned char e = (unsigned char)s[i + 1];
            if (e < 32 || e > 126)
                return 0;
            i += 2;
        } else if (parse_is_qtext(c)) {
            i++;
        } else {
            return 0;
        }
    }
    return 0;
}

/* A hostname: labels of letters, digits and hyphens, not starting or ending
 * with a hyphen, at most 63 bytes each. '_' is also let through: printers
 * and scanners on internal networks are named "scan_01.corp.local", and an
 * underscore cannot change how the address is routed or parsed. */
static bool parse_hostname_is_valid(const char *s, size_t len)
{
    if (len == 0 || len > SMTP_DOMAIN_MAX)
        return false;
    size_t label = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || s[i] == '.') {
            if (label == 0 || label > SMTP_LABEL_MAX || s[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        unsigned char c = (unsigned char)s[i];
        if (!parse_is_alpha(c) && !parse_is_digit(c) && c != '-' && c != '_')
            return false;
        if (label == 0 && c == '-')
            return false;
        label++;
    }
    return true;
}

/* Dotted quad, 1-3 digits per part, each 0..255 (RFC 5321 IPv4-address-literal). */
static bool parse_ipv4_is_valid(const char *s, size_t len)
{
    size_t parts = 0, i = 0;
    while (parts < 4) {
        size_t digits = 0;
        unsigned value = 0;
        while (i < len && parse_is_digit((unsigned char)s[i]) && digits < 4) {
            value = value * 10 + (unsigned)(s[i] - '0');
            digits++;
            i++;
        }
        if (digits == 0 || digits > 3 || value > 255)
            return false;
        parts++;
        if (parts < 4) {
            if (i >= len || s[i] != '.')
                return false;
            i++;
        }
    }
    return i == len;
}

/* "[192.0.2.1]" or "[IPv6:2001:db8::1]" (tag case-insensitive). General
 * address literals (other tags) are refused: nothing can deliver to them. */
static bool parse_address_literal_is_valid(const char *s, size_t len)
{
    if (len < 3 || s[0] != '[' || s[len - 1] != ']')
        return false;
    const char *in = s + 1;
    size_t n = len - 2;
    if (n > 5 && strncasecmp(in, "IPv6:", 5) == 0) {
        char buf[INET6_ADDRSTRLEN + 1];
        unsigned char bin[16];
        n -= 5;
        if (n == 0 || n >= sizeof(buf))
            return false;
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)in[5 + i];
            /* inet_pton stops at NUL; anything but these is a syntax error */
            if (!parse_is_digit(c) && !((c | 0x20) >= 'a' && (c | 0x20) <= 'f') && c != ':' &&
                c != '.')
                return false;
        }
        memcpy(buf, in + 5, n);
        buf[n] = '\0';
        return inet_pton(AF_INET6, buf, bin) == 1;
    }
    return parse_ipv4_is_valid(in, n);
}

static bool parse_domain_is_valid(const char *s, size_t len)
{
    if (len == 0 || len > SMTP_DOMAIN_MAX)
        return false;
    if (s[0] == '[')
        return parse_address_literal_is_valid(s, len);
    return parse_hostname_is_valid(s, len);
}

/* Check "local@domain"; returns SMTP_PATH_OK, SMTP_PATH_TOO_LONG or
 * SMTP_PATH_BAD_ADDRESS. Length limits win over syntax so that a long but
 * otherwise fine address gets the more useful reply. */
static enum smtp_path_error parse_mailbox_check(const char *s, size_t len)
{
    if (len == 0)
        return SMTP_PATH_BAD_ADDRESS;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x7f) /* 8-bit: no SMTPUTF8; controls: never */
            return SMTP_PATH_BAD_ADDRESS;
    }
    size_t local_len;
    if (s[0] == '"') {
        local_len = parse_quoted_len(s, len);
        if (local_len == 0)
            return len > SMTP_ADDR_MAX ? SMTP_PATH_TOO_LONG : SMTP_PATH_BAD_ADDRESS;
    } else {
        /* a dot-atom holds no '@', so the first one ends it */
        const char *at = memchr(s, '@', len);
        local_len = at != NULL ? (size_t)(at - s) : len;
    }
    if (len > SMTP_ADDR_MAX || local_len > SMTP_LOCAL_MAX)
        return SMTP_PATH_TOO_LONG;
    if (local_len >= len || s[local_len] != '@')
        return SMTP_PATH_BAD_ADDRESS;
    size_t domain_len = len - local_len - 1;
    if (domain_len > SMTP_DOMAIN_MAX)
        return SMTP_PATH_TOO_LONG;
    if (s[0] != '"' && !parse_dot_atom_is_valid(s, local_len))
        return SMTP_PATH_BAD_ADDRESS;
    if (!parse_domain_is_valid(s + local_len + 1, domain_len))
        return SMTP_PATH_BAD_ADDRESS;
    return SMTP_PATH_OK;
}

bool smtp_mailbox_is_valid(const char *s, size_t len)
{
    return s != NULL && parse_mailbox_check(s, len) == SMTP_PATH_OK;
}

bool smtp_helo_is_valid(const char *s, size_t len)
{
    if (s == NULL || len == 0 || len > SMTP_HELO_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f)
            return false;
    }
    return true;
}

/* ---- paths ---------------------------------------------------------------- */

/* Find the '>' closing a path that starts at s[0] == '<', skipping quoted
 * strings (a quoted local part may hold '>'). Returns its offset, or 0. */
static size_t parse_path_close(const char *s, size_t len)
{
    bool in_quote = false;
    for (size_t i = 1; i < len; i++) {
        char c = s[i];
        if (in_quote) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_quote = false;
        } else if (c == '"') {
            in_quote = true;
        } else if (c == '>') {
            return i;
        }
    }
    return 0;
}

/* RFC 5321 §4.1.2 A-d-l: "@a,@b:" before the mailbox. Obsolete (Appendix C)
 * and ignored by every receiver, so it is checked and dropped. Returns the
 * length of the route including its ':', 0 when there is none, or -1. */
static long parse_source_route_len(const char *s, size_t len)
{
    if (len == 0 || s[0] != '@')
        return 0;
    size_t i = 0;
    for (;;) {
        if (i >= len || s[i] != '@')
            return -1;
        size_t start = ++i;
        while (i < len && s[i] != ',' && s[i] != ':')
            i++;
        if (i >= len || !parse_hostname_is_valid(s + start, i - start))
            return -1;
        if (s[i] == ':')
            return (long)(i + 1);
        i++; /* ',' */
    }
}

struct parse_path {
    const char *mailbox; /* inside the brackets, route stripped */
    size_t mailbox_len;
    bool had_route;
    const char *rest; /* after '>' */
    size_t rest_len;
};

/* "KEYWORD:" + optional whitespace + "<path>". */
static enum smtp_path_error parse_path_split(const char *args, size_t len, const char *keyword,
                                             struct parse_path *p)
{
    size_t klen = strlen(keyword);
    if (args == NULL || len < klen || strncasecmp(args, keyword, klen) != 0)
        return SMTP_PATH_SYNTAX;
    size_t i = klen;
    while (i < len && parse_is_wsp((unsigned char)args[i]))
        i++;
    if (i >= len || args[i] != '<')
        return SMTP_PATH_SYNTAX;
    size_t close = parse_path_close(args + i, len - i);
    if (close == 0)
        return SMTP_PATH_SYNTAX;
    const char *path = args + i + 1;
    size_t path_len = close - 1;
    p->rest = args + i + close + 1;
    p->rest_len = len - (i + close + 1);
    if (path_len > SMTP_ADDR_MAX)
        return SMTP_PATH_TOO_LONG;
    long route = parse_source_route_len(path, path_len);
    if (route < 0)
        return SMTP_PATH_BAD_ADDRESS;
    p->had_route = route > 0;
    p->mailbox = path + route;
    p->mailbox_len = path_len - (size_t)route;
    if (p->had_route && p->mailbox_len == 0)
        return SMTP_PATH_BAD_ADDRESS; /* "<@a:>" is not a null path */
    return SMTP_PATH_OK;
}

/* One "KEY[=VALUE]" (RFC 5321 §4.1.2 esmtp-param). */
struct parse_param {
    const char *key;
    size_t key_len;
    const char *value; /* NULL when there is no '=' */
    size_t value_len;
};

/* Split what follows '>' into parameters. Text glued to the '>' is a syntax
 * error; parameters are separated by spaces; trailing spaces are fine. */
static enum smtp_path_error parse_params_split(const char *s, size_t len,
                                               struct parse_param params[SMTP_PARAM_MAX],
                                               size_t *count)
{
    *count = 0;
    if (len > 0 && !parse_is_wsp((unsigned char)s[0]))
        return SMTP_PATH_SYNTAX;
    size_t i = 0;
    for (;;) {
        while (i < len && parse_is_wsp((unsigned char)s[i]))
            i++;
        if (i >= len)
            return SMTP_PATH_OK;
        size_t start = i;
        while (i < len && !parse_is_wsp((unsigned char)s[i]))
            i++;
        if (*count == SMTP_PARAM_MAX)
            return SMTP_PATH_BAD_PARAM;
        struct parse_param *p = &params[(*count)++];
        const char *tok = s + start;
        size_t tok_len = i - start;
        const char *eq = memchr(tok, '=', tok_len);
        p->key = tok;
        p->key_len = eq != NULL ? (size_t)(eq - tok) : tok_len;
        p->value = eq != NULL ? eq + 1 : NULL;
        p->value_len = eq != NULL ? tok_len - p->key_len - 1 : 0;
        /* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
        if (p->key_len == 0 || p->key[0] == '-')
            return SMTP_PATH_BAD_PARAM;
        for (size_t k = 0; k < p->key_len; k++) {
            unsigned char c = (unsigned char)p->key[k];
            if (!parse_is_alpha(c) && !parse_is_digit(c) && c != '-')
                return SMTP_PATH_BAD_PARAM;
        }
        /* esmtp-value = 1*(%d33-60 / %d62-126) */
        if (p->value != NULL) {
            if (p->value_len == 0)
                return SMTP_PATH_BAD_PARAM;
            for (size_t k = 0; k < p->value_len; k++) {
                unsigned char c = (unsigned char)p->value[k];
                if (c < 33 || c > 126 || c == '=')
                    return SMTP_PATH_BAD_PARAM;
            }
        }
    }
}

static bool parse_word_is(const char *s, size_t len, const char *word)
{
    return strlen(word) == len && strncasecmp(s, word, len) == 0;
}

/* SIZE=<digits> that fits in uint64 (RFC 1870); anything else is malformed. */
static bool parse_size_value(const char *s, size_t len, uint64_t *out)
{
    if (s == NULL || len == 0)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (!parse_is_digit((unsigned char)s[i]))
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static void parse_copy_addr(char addr[SMTP_ADDR_MAX + 1], const char *s, size_t len)
{
    /* callers checked len <= SMTP_ADDR_MAX */
    memcpy(addr, s, len);
    addr[len] = '\0';
}

enum smtp_path_error smtp_parse_mail(const char *args, size_t len, char addr[SMTP_ADDR_MAX + 1],
                                     struct smtp_mail_params *params)
{
    addr[0] = '\0';
    memset(params, 0, sizeof(*params));
    struct parse_path p;
    enum smtp_path_error e = parse_path_split(args, len, "FROM:", &p);
    if (e != SMTP_PATH_OK)
        return e;
    if (p.mailbox_len > 0) {
        e = parse_mailbox_check(p.mailbox, p.mailbox_len);
        if (e != SMTP_PATH_OK)
            return e;
    }
    struct parse_param list[SMTP_PARAM_MAX];
    size_t count;
    e = parse_params_split(p.rest, p.rest_len, list, &count);
    if (e != SMTP_PATH_OK)
        return e;
    struct smtp_mail_params mp = {.body = SMTP_BODY_UNSPEC};
    for (size_t i = 0; i < count; i++) {
        const struct parse_param *pp = &list[i];
        if (parse_word_is(pp->key, pp->key_len, "SIZE")) {
            if (mp.has_size || !parse_size_value(pp->value, pp->value_len, &mp.size))
                return SMTP_PATH_BAD_PARAM;
            mp.has_size = true;
        } else if (parse_word_is(pp->key, pp->key_len, "BODY")) {
            /* RFC 6152; BINARYMIME needs CHUNKING+BINARYMIME, which we do not offer */
            if (mp.body != SMTP_BODY_UNSPEC || pp->value == NULL)
                return SMTP_PATH_BAD_PARAM;
            if (parse_word_is(pp->value, pp->value_len, "7BIT"))
                mp.body = SMTP_BODY_7BIT;
            else if (parse_word_is(pp->value, pp->value_len, "8BITMIME"))
                mp.body = SMTP_BODY_8BITMIME;
            else
                return SMTP_PATH_BAD_PARAM;
        } else if (parse_word_is(pp->key, pp->key_len, "AUTH")) {
            /* RFC 4954 §5: the value is trusted only between trusted
             * servers; we take the identity from our own AUTH instead */
            if (mp.has_auth || pp->value == NULL)
                return SMTP_PATH_BAD_PARAM;
            mp.has_auth = true;
        } else {
            return SMTP_PATH_UNKNOWN_PARAM;
        }
    }
    *params = mp;
    parse_copy_addr(addr, p.mailbox, p.mailbox_len);
    return p.had_route ? SMTP_PATH_SOURCE_ROUTE : SMTP_PATH_OK;
}

enum smtp_path_error smtp_parse_rcpt(const char *args, size_t len, char addr[SMTP_ADDR_MAX + 1])
{
    addr[0] = '\0';
    struct parse_path p;
    enum smtp_path_error e = parse_path_split(args, len, "TO:", &p);
    if (e != SMTP_PATH_OK)
        return e;
    if (p.mailbox_len == 0)
        return SMTP_PATH_NULL_NOT_ALLOWED;
    /* RFC 5321 §4.5.1: "<Postmaster>" without a domain, any case */
    bool is_postmaster = parse_word_is(p.mailbox, p.mailbox_len, "Postmaster");
    if (!is_postmaster) {
        e = parse_mailbox_check(p.mailbox, p.mailbox_len);
        if (e != SMTP_PATH_OK)
            return e;
    }
    struct parse_param list[SMTP_PARAM_MAX];
    size_t count;
    e = parse_params_split(p.rest, p.rest_len, list, &count);
    if (e != SMTP_PATH_OK)
        return e;
    if (count > 0)
        return SMTP_PATH_UNKNOWN_PARAM; /* no RCPT extension is advertised */
    if (is_postmaster)
        parse_copy_addr(addr, "Postmaster", strlen("Postmaster"));
    else
        parse_copy_addr(addr, p.mailbox, p.mailbox_len);
    return p.had_route ? SMTP_PATH_SOURCE_ROUTE : SMTP_PATH_OK;
}

/* smtp_reply.h — reading what an SMTP server says: multi-line replies
 * (RFC 5321 4.2: "250-…" continuations, the same code on every line),
 * enhanced status codes (RFC 3463), and the EHLO keywords the client acts on.
 * Pure and bounded; fuzzed (tests/fuzz/smtp_reply.c). */
#ifndef SMARTHOST_RELAY_SMTP_REPLY_H
#define SMARTHOST_RELAY_SMTP_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SMTP_REPLY_LINE_MAX 2048 /* a longer line is a protocol error */
#define SMTP_REPLY_LINES_MAX 100
#define SMTP_REPLY_TEXT_MAX 512  /* kept text: enough for the admin, bounded */

struct smtp_reply {
    int code;                    /* 0 until the first line */
    size_t line_count;
    char enhanced[16];           /* "5.1.1" from the first line, or "" */
    char text[SMTP_REPLY_TEXT_MAX]; /* "550 5.1.1 no such user\n550 …" (truncated) */
    size_t text_len;
    /* EHLO keywords, one per continuation line (upper-cased), for smtp_ehlo_parse */
    char keywords[SMTP_REPLY_LINES_MAX][64];
    size_t keyword_count;
};

enum smtp_reply_feed {
    SMTP_REPLY_MORE = 0,     /* a continuation line: more to come */
    SMTP_REPLY_DONE = 1,     /* the last line: the reply is complete */
    SMTP_REPLY_INVALID = -1, /* not an SMTP reply line (or inconsistent codes, too many lines) */
};

void smtp_reply_init(struct smtp_reply *r);
/* One line without its CRLF. */
enum smtp_reply_feed smtp_reply_feed(struct smtp_reply *r, const char *line, size_t len);

struct smtp_ehlo_caps {
    bool has_pipelining, has_starttls, has_8bitmime, has_size, has_auth_plain, has_auth_login;
    uint64_t size_max;           /* SIZE n; 0 = no limit announced */
};
/* The capabilities in a complete 250 reply to EHLO. */
void smtp_ehlo_parse(const struct smtp_reply *r, struct smtp_ehlo_caps *caps);

#endif

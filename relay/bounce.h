/* bounce.h — RFC 3464 delivery status notifications: one multipart/report
 * per failed message (human part, message/delivery-status with each failed
 * or delayed recipient, its status and the remote reply, then the original
 * headers as text/rfc822-headers). Pure: no I/O, no clock. */
#ifndef SMARTHOST_RELAY_BOUNCE_H
#define SMARTHOST_RELAY_BOUNCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum bounce_kind {
    BOUNCE_FAILED = 0,   /* Action: failed */
    BOUNCE_DELAYED,      /* Action: delayed (delay warning) */
};

struct bounce_rcpt {
    const char *rcpt;          /* the original recipient address */
    const char *status;        /* "5.1.1" */
    const char *remote_mta;    /* "mx.example.net" or NULL */
    const char *diagnostic;    /* "550 5.1.1 no such user" (remote) or local words */
    bool is_remote_reply;      /* diagnostic is an SMTP reply ("smtp;") */
    int64_t last_attempt_at;   /* unix seconds, 0 → omitted */
};

struct bounce_input {
    enum bounce_kind kind;
    const char *reporting_mta; /* our host name */
    const char *qid;
    const char *from;          /* the DSN's From: mailbox, e.g. "MAILER-DAEMON@host" */
    const char *to;            /* who receives the DSN (sender, owner or admin) */
    const char *orig_sender;   /* the failed message's envelope sender */
    int64_t arrival_at;        /* when we accepted the original */
    int64_t now;               /* Date: of the DSN */
    const char *message_id;    /* "<…@host>" for the DSN; caller makes it unique */
    const struct bounce_rcpt *rcpts;
    size_t rcpt_count;
    const uint8_t *orig;       /* the original message (header + body) */
    size_t orig_len;
    int64_t retry_until;       /* for DELAYED: "will keep trying until", else 0 */
};

/* Compose the DSN message (CRLF lines, header + body, ready for the queue)
 * into a malloc'd buffer. Returns 0 or -ENOMEM / -EINVAL. */
int bounce_compose(const struct bounce_input *in, uint8_t **out, size_t *out_len);

#endif

/* bounce.c — see bounce.h. The DSN is built in one growing buffer. Text
 * from the outside (recipients, remote replies, the original headers) is
 * kept to printable ASCII on single lines, so nothing it contains can add a
 * header, a MIME boundary or a line of its own. */
#include "relay/bounce.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define BOUNCE_HEADERS_MAX (64 * 1024) /* of the original, in the third part */
#define BOUNCE_LINE_MAX 900            /* well under RFC 5322's 998 */

struct bounce_buf {
    char *data;
    size_t len, cap;
    bool is_oom;
};

static void bounce_put(struct bounce_buf *b, const char *s, size_t n)
{
    if (b->is_oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 8192;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (d == NULL) {
            b->is_oom = true;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void bounce_printf(struct bounce_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void bounce_printf(struct bounce_buf *b, const char *fmt, ...)
{
    char tmp[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    bounce_put(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* One safe line from untrusted text: printable ASCII, CR/LF/TAB → space,
 * anything else as "?" , at most max bytes. */
static void bounce_clean(const char *in, char *out, size_t max)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)(in != NULL ? in : ""); *p && n + 1 < max;
         p++)
        out[n++] = *p == '\r' || *p == '\n' || *p == '\t' ? ' '
                   : *p < 0x20 || *p > 0x7e             ? '?'
                                                        : (char)*p;
    out[n] = '\0';
}

static void bounce_date(int64_t t, char *out, size_t size)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, size, "%a, %d %b %Y %H:%M:%S +0000", &tm);
}

/* Is s a plausible RFC 5322 header field name? */
static bool bounce_is_field(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] > '~' || s[i] == ':')
            return false;
    return true;
}

/* The next line of the original's header section at *pos: its start and
 * length without CR LF; false at the empty line that ends the section or at
 * the end of the message. */
static bool bounce_next_header_line(const uint8_t *msg, size_t len, size_t *pos,
                                    const char **line, size_t *n)
{
    if (*pos >= len)
        return false;
    size_t end = *pos;
    while (end < len && msg[end] != '\n')
        end++;
    *line = (const char *)msg + *pos;
    *n = end - *pos;
    if (*n > 0 && (*line)[*n - 1] == '\r')
        (*n)--;
    *pos = end + 1;
    return *n > 0;
}

/* The original header section: lines up to the first empty one, CRLF,
 * folded lines kept, bounded, cleaned. */
static void bounce_put_headers(struct bounce_buf *b, const uint8_t *msg, size_t len)
{
    size_t pos = 0, out = 0, n;
    const char *s;
    char line[BOUNCE_LINE_MAX + 1];
    while (out < BOUNCE_HEADERS_MAX && bounce_next_header_line(msg, len, &pos, &s, &n)) {
        const char *colon = memchr(s, ':', n);
        bool is_continuation = s[0] == ' ' || s[0] == '\t';
        if (is_continuation || (colon != NULL && bounce_is_field(s, (size_t)(colon - s)))) {
            size_t k = 0;
            for (size_t i = 0; i < n && k < BOUNCE_LINE_MAX; i++) {
                unsigned char ch = (unsigned char)s[i];
                line[k++] = ch == '\t' && i == 0 ? '\t' : ch < 0x20 || ch > 0x7e ? '?' : (char)ch;
            }
            line[k] = '\0';
            bounce_put(b, line, k);
            bounce_put(b, "\r\n", 2);
            out += k + 2;
        }
    }
}

/* The original's Subject, cleaned, for our own Subject line. */
static void bounce_orig_subject(const uint8_t *msg, size_t len, char *out, size_t size)
{
    out[0] = '\0';
    size_t pos = 0, n;
    const char *line;
    while (bounce_next_header_line(msg, len, &pos, &line, &n)) {
        if (n > 8 && strncasecmp(line, "subject:", 8) == 0) {
            char tmp[200];
            size_t k = n - 8 < sizeof(tmp) - 1 ? n - 8 : sizeof(tmp) - 1;
            memcpy(tmp, line + 8, k);
            tmp[k] = '\0';
            bounce_clean(tmp, out, size);
            char *p = out;
            while (*p == ' ')
                p++;
            memmove(out, p, strlen(p) + 1);
            return;
        }
    }
}

int bounce_compose(const struct bounce_input *in, uint8_t **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (in == NULL || in->rcpt_count == 0 || in->rcpts == NULL || in->reporting_mta == NULL ||
        in->to == NULL || in->from == NULL || in->qid == NULL || in->message_id == NULL)
        return -EINVAL;
    bool is_delay = in->kind == BOUNCE_DELAYED;
    struct bounce_buf b = {0};
    char date[64], arrival[64], to[300], from[300], orig_sender[300], subject[200];
    bounce_date(in->now, date, sizeof(date));
    bounce_date(in->arrival_at, arrival, sizeof(arrival));
    bounce_clean(in->to, to, sizeof(to));
    bounce_clean(in->from, from, sizeof(from));
    bounce_clean(in->orig_sender, orig_sender, sizeof(orig_sender));
    bounce_orig_subject(in->orig, in->orig_len, subject, sizeof(subject));
    /* boundary: from the queue id and the time; cannot appear in our own
     * parts, and the original headers are in a part of their own */
    /* the queue id appears in the boundary and the text: letters and digits only */
    char qid[48];
    size_t qn = 0;
    for (const char *p = in->qid; *p != '\0' && qn + 1 < sizeof(qid); p++)
        if ((*p >= '0' && *p <= '9') || (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z'))
            qid[qn++] = *p;
    qid[qn] = '\0';
    /* the original headers go in a part of their own; the boundary must not
     * occur in them (a sender could try to guess it): vary it until it does not */
    struct bounce_buf headers = {0};
    bounce_put_headers(&headers, in->orig, in->orig_len);
    if (headers.is_oom) {
        free(headers.data);
        return -ENOMEM;
    }
    char boundary[128];
    for (unsigned n = 0;; n++) {
        snprintf(boundary, sizeof(boundary), "=_smarthost_%s_%lld_%u_dsn", qid,
                 (long long)in->now, n);
        if (headers.data == NULL || strstr(headers.data, boundary) == NULL)
            break;
    }

    bounce_printf(&b, "From: Mail Delivery System <%s>\r\n", from);
    bounce_printf(&b, "To: <%s>\r\n", to);
    bounce_printf(&b, "Subject: %s%s%.150s\r\n",
                  is_delay ? "Delayed Mail (still being retried)"
                           : "Undelivered Mail Returned to Sender",
                  subject[0] ? ": " : "", subject);
    bounce_printf(&b, "Date: %s\r\n", date);
    char message_id[320];
    bounce_clean(in->message_id, message_id, sizeof(message_id));
    bounce_printf(&b, "Message-ID: %s\r\n", message_id);
    bounce_printf(&b, "Auto-Submitted: auto-replied\r\n");
    bounce_printf(&b, "MIME-Version: 1.0\r\n");
    bounce_printf(&b, "Content-Type: multipart/report; report-type=delivery-status;\r\n"
                      "\tboundary=\"%s\"\r\n", boundary);
    bounce_printf(&b, "\r\nThis is a MIME-encapsulated message (RFC 3464 delivery report).\r\n");

    /* 1: for people */
    bounce_printf(&b, "\r\n--%s\r\n", boundary);
    bounce_printf(&b, "Content-Type: text/plain; charset=us-ascii\r\n"
                      "Content-Description: Notification\r\n\r\n");
    bounce_printf(&b, "This is the mail system at %.200s.\r\n\r\n", in->reporting_mta);
    if (is_delay) {
        char until[64];
        bounce_date(in->retry_until, until, sizeof(until));
        bounce_printf(&b, "Your message (queue id %.40s, sent %s) could not be delivered\r\n"
                          "yet to the recipients below. Nothing needs to be done: delivery\r\n"
                          "will be retried until %s.\r\n\r\n",
                      qid, arrival, until);
    } else {
        bounce_printf(&b, "Your message (queue id %.40s, sent %s) could not be delivered\r\n"
                          "to the recipients below. This is final: it will not be retried.\r\n\r\n",
                      qid, arrival);
    }
    for (size_t i = 0; i < in->rcpt_count; i++) {
        const struct bounce_rcpt *r = &in->rcpts[i];
        char rcpt[300], diag[BOUNCE_LINE_MAX], mta[260];
        bounce_clean(r->rcpt, rcpt, sizeof(rcpt));
        bounce_clean(r->diagnostic, diag, 600);
        bounce_clean(r->remote_mta, mta, sizeof(mta));
        bounce_printf(&b, "<%s>:\r\n", rcpt);
        if (r->is_remote_reply && mta[0] != '\0')
            bounce_printf(&b, "    %s said: %s\r\n\r\n", mta, diag);
        else
            bounce_printf(&b, "    %s\r\n\r\n", diag);
    }

    /* 2: for programs */
    bounce_printf(&b, "--%s\r\n", boundary);
    bounce_printf(&b, "Content-Type: message/delivery-status\r\n"
                      "Content-Description: Delivery report\r\n\r\n");
    bounce_printf(&b, "Reporting-MTA: dns; %.200s\r\n", in->reporting_mta);
    bounce_printf(&b, "X-Smarthost-Queue-ID: %s\r\n", qid);
    if (orig_sender[0] != '\0')
        bounce_printf(&b, "X-Original-Envelope-From: rfc822; %s\r\n", orig_sender);
    bounce_printf(&b, "Arrival-Date: %s\r\n", arrival);
    for (size_t i = 0; i < in->rcpt_count; i++) {
        const struct bounce_rcpt *r = &in->rcpts[i];
        char rcpt[300], diag[BOUNCE_LINE_MAX], mta[260], status[16], last[64];
        bounce_clean(r->rcpt, rcpt, sizeof(rcpt));
        bounce_clean(r->diagnostic, diag, 700);
        bounce_clean(r->remote_mta, mta, sizeof(mta));
        bounce_clean(r->status, status, sizeof(status));
        bounce_printf(&b, "\r\nFinal-Recipient: rfc822; %s\r\n", rcpt);
        bounce_printf(&b, "Original-Recipient: rfc822; %s\r\n", rcpt);
        bounce_printf(&b, "Action: %s\r\n", is_delay ? "delayed" : "failed");
        bounce_printf(&b, "Status: %s\r\n", status[0] ? status : (is_delay ? "4.0.0" : "5.0.0"));
        if (mta[0] != '\0')
            bounce_printf(&b, "Remote-MTA: dns; %s\r\n", mta);
        bounce_printf(&b, "Diagnostic-Code: %s; %s\r\n", r->is_remote_reply ? "smtp" : "x-local",
                      diag);
        if (r->last_attempt_at > 0) {
            bounce_date(r->last_attempt_at, last, sizeof(last));
            bounce_printf(&b, "Last-Attempt-Date: %s\r\n", last);
        }
        if (is_delay && in->retry_until > 0) {
            bounce_date(in->retry_until, last, sizeof(last));
            bounce_printf(&b, "Will-Retry-Until: %s\r\n", last);
        }
    }

    /* 3: the original headers, never the body */
    bounce_printf(&b, "\r\n--%s\r\n", boundary);
    bounce_printf(&b, "Content-Type: text/rfc822-headers\r\n"
                      "Content-Description: Undelivered Message Headers\r\n\r\n");
    if (headers.len > 0)
        bounce_put(&b, headers.data, headers.len);
    free(headers.data);
    bounce_printf(&b, "\r\n--%s--\r\n", boundary);
    if (b.is_oom) {
        free(b.data);
        return -ENOMEM;
    }
    *out = (uint8_t *)b.data;
    *out_len = b.len;
    return 0;
}

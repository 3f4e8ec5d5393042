/* Fuzz target: relay/bounce.c composing a DSN from hostile text — the input is
 * split at NUL bytes into a remote reply, a remote MTA name, a recipient, a
 * status and the original message. Invariants (abort on violation): the DSN is
 * CRLF-only with every line under 998 octets; outside the original-header part
 * it is printable ASCII (and the TAB of folded header lines); no line outside
 * that part starts with a header name that came from the input
 * ("X-Fuzz-Injected:"); the boundary delimiter occurs exactly once per part
 * (three, the headers part always present) plus the closing one. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay/bounce.h"

static void fuzz_check(bool ok)
{
    if (!ok)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1u << 20)
        return 0;
    char *copy = malloc(size + 5);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    memset(copy + size, 0, 5);
    /* Fields: reply \0 mta \0 rcpt \0 status \0 original (the rest, raw bytes). */
    char *fields[4];
    size_t pos = 0;
    for (int i = 0; i < 4; i++) {
        fields[i] = copy + pos;
        pos += strlen(copy + pos);
        if (pos < size)
            pos++;
    }
    const uint8_t *orig = (const uint8_t *)copy + (pos < size ? pos : size);
    size_t orig_len = size - (size_t)(orig - (const uint8_t *)copy);
    struct bounce_rcpt rcpts[2] = {
        {.rcpt = fields[2], .status = fields[3], .remote_mta = fields[1],
         .diagnostic = fields[0], .is_remote_reply = true, .last_attempt_at = 1700000000},
        {.rcpt = fields[0], .status = "5.1.1", .diagnostic = fields[2]},
    };
    struct bounce_input in = {
        .kind = size % 2 ? BOUNCE_DELAYED : BOUNCE_FAILED,
        .reporting_mta = "relay.fuzz.test",
        .qid = fields[1],
        .from = "MAILER-DAEMON@relay.fuzz.test",
        .to = fields[2],
        .orig_sender = fields[2],
        .arrival_at = 1700000000,
        .now = 1700003600,
        .message_id = "<fuzz@relay.fuzz.test>",
        .rcpts = rcpts,
        .rcpt_count = 2,
        .orig = orig,
        .orig_len = orig_len,
        .retry_until = 1700400000,
    };
    uint8_t *out = NULL;
    size_t len = 0;
    int rc = bounce_compose(&in, &out, &len);
    fuzz_check(rc == 0);
    const char *t = (const char *)out;
    const char *hdr_part = strstr(t, "Content-Type: text/rfc822-headers");
    size_t hdr_start = hdr_part ? (size_t)(hdr_part - t) : len;
    size_t col = 0, line_start = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = out[i];
        if (c == '\n') {
            fuzz_check(i > 0 && out[i - 1] == '\r');
            col = 0;
            line_start = i + 1;
            continue;
        }
        if (c == '\r')
            fuzz_check(i + 1 < len && out[i + 1] == '\n');
        if (i < hdr_start)
            fuzz_check((c >= 0x20 && c < 0x7f) || c == '\r' || c == '\t');
        if (i == line_start && i < hdr_start)
            fuzz_check(len - i < 17 || memcmp(out + i, "X-Fuzz-Injected:", 16) != 0);
        fuzz_check(++col <= 998);
    }
    /* the boundary of our Content-Type (input text may say "boundary=" elsewhere) */
    const char *ct = strstr(t, "\r\nContent-Type: multipart/report;");
    fuzz_check(ct != NULL);
    const char *b = strstr(ct, "boundary=\"");
    fuzz_check(b != NULL);
    b += 10;
    size_t blen = strcspn(b, "\"");
    char delim[128];
    fuzz_check(blen + 3 < sizeof(delim));
    delim[0] = '\n';
    delim[1] = '-';
    delim[2] = '-';
    memcpy(delim + 3, b, blen);
    delim[3 + blen] = '\0';
    size_t n = 0;
    for (const char *p = strstr(t, delim); p; p = strstr(p + 1, delim))
        n++;
    fuzz_check(hdr_part != NULL && n == 4u);
    free(out);
    free(copy);
    return 0;
}

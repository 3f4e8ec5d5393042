/* Fuzz target: relay/smtp_reply.c on what a remote SMTP server may send —
 * arbitrary bytes split into lines as the client splits them. Invariants
 * (abort on violation): no read outside the input (ASan); the kept text is
 * NUL-terminated, bounded and free of control bytes; a complete reply has a
 * code from 200 to 599; an enhanced code, when kept, starts with the code's
 * class; EHLO parsing of anything never fails. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "relay/smtp_reply.h"

static void fuzz_check(int ok)
{
    if (!ok)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct smtp_reply *r = malloc(sizeof(*r));
    if (r == NULL)
        return 0;
    smtp_reply_init(r);
    size_t pos = 0;
    while (pos < size) {
        size_t end = pos;
        while (end < size && data[end] != '\n')
            end++;
        size_t len = end - pos;
        if (len > 0 && data[pos + len - 1] == '\r')
            len--;
        enum smtp_reply_feed f = smtp_reply_feed(r, (const char *)data + pos, len);
        size_t tlen = strnlen(r->text, sizeof(r->text));
        fuzz_check(tlen < sizeof(r->text) && tlen == r->text_len);
        for (size_t i = 0; i < tlen; i++)
            fuzz_check((unsigned char)r->text[i] >= 0x20 || r->text[i] == '\n');
        if (f == SMTP_REPLY_DONE) {
            fuzz_check(r->code >= 200 && r->code <= 599);
            if (r->enhanced[0] != '\0')
                fuzz_check(r->enhanced[0] == '0' + r->code / 100);
            struct smtp_ehlo_caps caps;
            smtp_ehlo_parse(r, &caps);
            smtp_reply_init(r);
        } else if (f == SMTP_REPLY_INVALID) {
            smtp_reply_init(r);
        }
        pos = end + 1;
    }
    free(r);
    return 0;
}

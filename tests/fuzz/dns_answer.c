/* Fuzz target: relay/dns.c's reading of an MX answer — arbitrary bytes as a
 * resolver may return them (c-ares parses the message, dns_mx_parse keeps the
 * exchangers), then the ordering and the null-MX test the runner applies.
 * Invariants (abort on violation): no read outside the input (ASan); at most
 * max records kept, whatever the answer holds; every kept name NUL-terminated,
 * shorter than its buffer, and made of host-name characters; a failed parse keeps
 * nothing; the ordered set is sorted by preference. */
#include <ares.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "relay/dns.h"

static void fuzz_check(int ok)
{
    if (!ok)
        abort();
}

/* deterministic "random": the fuzzer's input drives the shuffle too */
static uint32_t fuzz_rand(uint32_t bound, void *arg)
{
    uint32_t *state = arg;
    *state = *state * 1103515245u + 12345u;
    return bound > 0 ? (*state >> 8) % bound : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65535)
        return 0; /* larger than any DNS message */
    /* a copy of exactly size bytes, so ASan sees any read past the answer */
    unsigned char *abuf = malloc(size > 0 ? size : 1);
    if (abuf == NULL)
        return 0;
    memcpy(abuf, data, size);
    size_t max = size > 0 ? 1 + data[size - 1] % DNS_MAX_HOSTS : DNS_MAX_HOSTS;
    struct dns_mx mx[DNS_MAX_HOSTS];
    memset(mx, 0xA5, sizeof(mx));
    size_t count = 99;
    int rc = dns_mx_parse(abuf, (int)size, mx, max, &count);
    free(abuf);
    fuzz_check(count <= max);
    if (rc != ARES_SUCCESS) {
        fuzz_check(count == 0);
        return 0;
    }
    for (size_t i = 0; i < count; i++) {
        size_t len = strnlen(mx[i].name, sizeof(mx[i].name));
        fuzz_check(len < sizeof(mx[i].name));
        for (size_t k = 0; k < len; k++)
            fuzz_check(strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                              "0123456789-._", mx[i].name[k]) != NULL);
    }
    uint32_t state = (uint32_t)size;
    dns_mx_order(mx, count, fuzz_rand, &state);
    for (size_t i = 1; i < count; i++)
        fuzz_check(mx[i - 1].preference <= mx[i].preference);
    (void)dns_mx_is_null(mx, count);
    return 0;
}

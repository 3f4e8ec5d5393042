/* Fuzz target: the DATA decoder (core/smtp_data.c). Input byte 0 picks the
 * policy (bit 0: reject bare LF, bit 1: a small max_size taken from byte 1),
 * byte 1 also seeds the chunking; the rest is the client's stream. Invariants
 * (abort on violation): consumed <= len; the output holds no lone CR or LF and
 * never passes its cap; one-shot, byte-at-a-time, two-piece and uneven-chunk
 * feeds give identical results; and all of them match a deliberately simple
 * reference decoder written here from the rules (end = first CRLF.CRLF,
 * counting the CRLF that ended DATA; unstuffing; CR/LF normalisation). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/smtp_data.h"

struct fuzz_run {
    enum smtp_data_status status;
    size_t consumed;
    struct smtp_buf out;
    struct smtp_data_decoder d;
};

static void fuzz_check(bool ok)
{
    if (!ok)
        abort();
}

/* Feed in chunks: chunk_of(i) gives the size of the i-th piece (>= 1). */
static void fuzz_feed(const uint8_t *in, size_t len, uint64_t max, bool reject, size_t cap,
                      size_t (*chunk_of)(size_t i, size_t seed), size_t seed, struct fuzz_run *r)
{
    memset(r, 0, sizeof(*r));
    r->out.cap_max = cap;
    smtp_data_init(&r->d, max, reject);
    r->status = SMTP_DATA_MORE;
    size_t off = 0;
    for (size_t i = 0; r->status == SMTP_DATA_MORE; i++) {
        size_t n = chunk_of(i, seed);
        if (n > len - off)
            n = len - off;
        size_t used = (size_t)-1;
        r->status = smtp_data_feed(&r->d, in + off, n, &used, &r->out);
        fuzz_check(used <= n);
        fuzz_check(r->status == SMTP_DATA_DONE || used == n);
        fuzz_check(r->out.len <= r->out.cap_max && r->out.cap_alloc <= r->out.cap_max);
        r->consumed += used;
        off += used;
        if (off == len && r->status == SMTP_DATA_MORE)
            break;
    }
    fuzz_check(r->consumed <= len);
}

static size_t fuzz_chunk_all(size_t i, size_t seed)
{
    return SIZE_MAX;
}

static size_t fuzz_chunk_one(size_t i, size_t seed)
{
    return 1;
}

static size_t fuzz_chunk_two(size_t i, size_t seed)
{
    return i == 0 ? seed : SIZE_MAX; /* seed may be 0: an empty first feed */
}

static size_t fuzz_chunk_uneven(size_t i, size_t seed)
{
    return 1 + (seed + i * 31) % 13;
}

static void fuzz_same(const struct fuzz_run *a, const struct fuzz_run *b)
{
    fuzz_check(a->status == b->status && a->consumed == b->consumed);
    fuzz_check(a->d.size == b->d.size && a->d.is_oversize == b->d.is_oversize);
    fuzz_check(a->d.has_bare_lf == b->d.has_bare_lf);
    fuzz_check(a->d.is_out_of_memory == b->d.is_out_of_memory);
    fuzz_check(a->d.header_count == b->d.header_count);
    fuzz_check(a->d.has_message_id == b->d.has_message_id && a->d.has_date == b->d.has_date &&
               a->d.has_from == b->d.has_from);
    fuzz_check(a->out.len == b->out.len);
    fuzz_check(a->out.len == 0 || memcmp(a->out.data, b->out.data, a->out.len) == 0);
}

/* ---- the reference decoder ------------------------------------------------ */

struct fuzz_ref {
    bool is_done;
    size_t consumed;
    uint8_t *decoded; /* everything decoded, before any storing policy */
    size_t decoded_len;
    bool has_bare;
    size_t bare_at; /* decoded offset of the first bare CR / LF */
    uint32_t header_count;
    bool has_message_id, has_date, has_from;
};

static void fuzz_ref_put(struct fuzz_ref *r, const uint8_t *p, size_t n)
{
    memcpy(r->decoded + r->decoded_len, p, n);
    r->decoded_len += n;
}

/* One SMTP line (between real CRLFs), without its CRLF. */
static void fuzz_ref_line(struct fuzz_ref *r, const uint8_t *p, size_t n, bool is_last_partial)
{
    if (n > 0 && p[0] == '.')
        p++, n--;
    if (is_last_partial && n > 0 && p[n - 1] == '\r')
        n--; /* a CR at the very end is still undecided */
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\r' || p[i] == '\n') {
            if (!r->has_bare) {
                r->has_bare = true;
                r->bare_at = r->decoded_len;
            }
            fuzz_ref_put(r, (const uint8_t *)"\r\n", 2);
        } else {
            fuzz_ref_put(r, p + i, 1);
        }
    }
    if (!is_last_partial)
        fuzz_ref_put(r, (const uint8_t *)"\r\n", 2);
}

static bool fuzz_ref_is(const uint8_t *name, size_t n, const char *want)
{
    return strlen(want) == n && strncasecmp((const char *)name, want, n) == 0;
}

/* RFC 5322 header section of the decoded text, line by line. */
static void fuzz_ref_headers(struct fuzz_ref *r)
{
    const uint8_t *p = r->decoded, *end = r->decoded + r->decoded_len;
    while (p < end) {
        const uint8_t *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        bool complete = eol != NULL;
        size_t n = complete ? (size_t)(eol - p) : (size_t)(end - p);
        if (n == 0)
            return; /* the empty line */
        if (p[0] == ' ' || p[0] == '\t') {
            if (r->header_count == 0)
                return;
        } else {
            size_t k = 0;
            while (k < n && p[k] > 32 && p[k] < 127 && p[k] != ':')
                k++;
            size_t name_len = k;
            while (k < n && (p[k] == ' ' || p[k] == '\t'))
                k++;
            if (name_len == 0 || k >= n || p[k] != ':')
                return; /* not a field (or not yet known to be one) */
            r->header_count++;
            if (fuzz_ref_is(p, name_len, "Message-ID"))
                r->has_message_id = true;
            else if (fuzz_ref_is(p, name_len, "Date"))
                r->has_date = true;
            else if (fuzz_ref_is(p, name_len, "From"))
                r->has_from = true;
        }
        if (!complete)
            return;
        p = eol + 2;
    }
}

static void fuzz_ref_decode(const uint8_t *in, size_t len, struct fuzz_ref *r)
{
    memset(r, 0, sizeof(*r));
    r->decoded = malloc(2 * len + 1);
    fuzz_check(r->decoded != NULL);
    /* the end: the first "\r\n.\r\n" in "\r\n" + input */
    uint8_t *prefixed = malloc(len + 2);
    fuzz_check(prefixed != NULL);
    memcpy(prefixed, "\r\n", 2);
    memcpy(prefixed + 2, in, len);
    const uint8_t *term = memmem(prefixed, len + 2, "\r\n.\r\n", 5);
    size_t content_len = len;
    if (term != NULL) {
        size_t at = (size_t)(term - prefixed); /* input offset of the "." is at */
        r->is_done = true;
        r->consumed = at + 3;
        content_len = at; /* up to and including the CRLF before the "." */
    }
    free(prefixed);
    size_t off = 0;
    while (off < content_len) {
        const uint8_t *eol = memmem(in + off, content_len - off, "\r\n", 2);
        if (eol == NULL) {
            fuzz_ref_line(r, in + off, content_len - off, true);
            break;
        }
        size_t n = (size_t)(eol - (in + off));
        fuzz_ref_line(r, in + off, n, false);
        off += n + 2;
    }
    fuzz_ref_headers(r);
}

/* What the decoder must have stored: the decoded text, cut at the first bare
 * CR/LF in reject mode, and at max_size (never inside a CRLF) when over it. */
static size_t fuzz_ref_stored_len(const struct fuzz_ref *r, uint64_t max, bool reject)
{
    size_t n = r->decoded_len;
    if (reject && r->has_bare && r->bare_at < n)
        n = r->bare_at;
    if (r->decoded_len > max) {
        size_t fit = (size_t)max;
        if (fit > 0 && r->decoded[fit - 1] == '\r')
            fit--;
        if (fit < n)
            n = fit;
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t flags = size > 0 ? data[0] : 0;
    uint8_t seed = size > 1 ? data[1] : 0;
    const uint8_t *in = size > 2 ? data + 2 : data;
    size_t len = size > 2 ? size - 2 : 0;
    bool reject = flags & 1;
    uint64_t max = (flags & 2) ? seed : UINT64_MAX;
    /* as the session does: the body buffer is capped at max_size */
    size_t cap = (flags & 2) ? (size_t)max : 2 * len + 16;

    struct fuzz_run one;
    fuzz_feed(in, len, max, reject, cap, fuzz_chunk_all, 0, &one);
    fuzz_check(!one.d.is_out_of_memory);
    const uint8_t *o = one.out.data;
    for (size_t i = 0; i < one.out.len; i++) {
        if (o[i] == '\r')
            fuzz_check(i + 1 < one.out.len && o[i + 1] == '\n');
        if (o[i] == '\n')
            fuzz_check(i > 0 && o[i - 1] == '\r');
    }
    fuzz_check(one.d.is_oversize == (one.d.size > max));

    struct fuzz_run other;
    fuzz_feed(in, len, max, reject, cap, fuzz_chunk_one, 0, &other);
    fuzz_same(&one, &other);
    smtp_buf_free(&other.out);
    fuzz_feed(in, len, max, reject, cap, fuzz_chunk_two, len > 0 ? (seed * 7919u) % (len + 1) : 0,
              &other);
    fuzz_same(&one, &other);
    smtp_buf_free(&other.out);
    fuzz_feed(in, len, max, reject, cap, fuzz_chunk_uneven, seed, &other);
    fuzz_same(&one, &other);
    smtp_buf_free(&other.out);

    struct fuzz_ref ref;
    fuzz_ref_decode(in, len, &ref);
    fuzz_check(ref.is_done == (one.status == SMTP_DATA_DONE));
    fuzz_check(one.consumed == (ref.is_done ? ref.consumed : len));
    fuzz_check(one.d.size == ref.decoded_len);
    fuzz_check(one.d.has_bare_lf == ref.has_bare);
    fuzz_check(one.d.header_count == ref.header_count);
    fuzz_check(one.d.has_message_id == ref.has_message_id && one.d.has_date == ref.has_date &&
               one.d.has_from == ref.has_from);
    size_t stored = fuzz_ref_stored_len(&ref, max, reject);
    fuzz_check(one.out.len == stored);
    fuzz_check(stored == 0 || memcmp(one.out.data, ref.decoded, stored) == 0);
    free(ref.decoded);
    smtp_buf_free(&one.out);
    return 0;
}

/* Unit tests for core/smtp_data.c: end-of-data detection, dot-unstuffing,
 * bare CR / bare LF normalisation and refusal (CVE-2023-51764 style inputs),
 * size limits, header detection and the capped buffer. Every table input is
 * decoded in one piece, one byte at a time and split in two at every position;
 * all ways must give the same result. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/smtp_data.h"

#define S(lit) lit, sizeof(lit) - 1 /* a literal with its exact length */
#define NO_LIMIT UINT64_MAX
#define SIZE_IS_OUT ((uint64_t)-1) /* expected size: the output's length */

struct decode_result {
    enum smtp_data_status status;
    size_t consumed;
    struct smtp_buf out;
    struct smtp_data_decoder d;
};

/* Decode in[0..len) fed in pieces ending at the given cut offsets (ascending,
 * each < len), then the rest. Stops feeding at SMTP_DATA_DONE. */
static void decode_cuts(const char *in, size_t len, uint64_t max, bool reject,
                        const size_t *cuts, size_t ncuts, struct decode_result *r)
{
    memset(r, 0, sizeof(*r));
    r->out.cap_max = 1u << 24;
    smtp_data_init(&r->d, max, reject);
    size_t off = 0;
    r->status = SMTP_DATA_MORE;
    for (size_t c = 0; c <= ncuts && r->status == SMTP_DATA_MORE; c++) {
        size_t end = c < ncuts ? cuts[c] : len;
        size_t used = (size_t)-1;
        r->status = smtp_data_feed(&r->d, (const uint8_t *)in + off, end - off, &used, &r->out);
        assert_true(used <= end - off);
        if (r->status == SMTP_DATA_MORE)
            assert_int_equal(used, end - off);
        r->consumed += used;
        off = end;
    }
}

static void decode_bytewise(const char *in, size_t len, uint64_t max, bool reject,
                            struct decode_result *r)
{
    size_t *cuts = malloc((len > 0 ? len : 1) * sizeof(*cuts));
    assert_non_null(cuts);
    for (size_t i = 1; i < len; i++)
        cuts[i - 1] = i;
    decode_cuts(in, len, max, reject, cuts, len > 0 ? len - 1 : 0, r);
    free(cuts);
}

static void assert_same_result(const struct decode_result *a, const struct decode_result *b,
                               const char *what, size_t at)
{
    if (a->status != b->status || a->consumed != b->consumed || a->d.size != b->d.size ||
        a->d.is_oversize != b->d.is_oversize || a->d.has_bare_lf != b->d.has_bare_lf ||
        a->d.header_count != b->d.header_count || a->d.has_message_id != b->d.has_message_id ||
        a->d.has_date != b->d.has_date || a->d.has_from != b->d.has_from ||
        a->out.len != b->out.len || (a->out.len > 0 && memcmp(a->out.data, b->out.data, a->out.len)))
        fail_msg("%s (split at %zu) differs from one-shot decoding", what, at);
}

/* The output holds CRLF pairs only: no lone CR, no lone LF. */
static void assert_only_crlf(const struct smtp_buf *out)
{
    for (size_t i = 0; i < out->len; i++) {
        if (out->data[i] == '\r')
            assert_true(i + 1 < out->len && out->data[i + 1] == '\n');
        if (out->data[i] == '\n')
            assert_true(i > 0 && out->data[i - 1] == '\r');
    }
}

/* One-shot decode into r, after checking that byte-wise and every two-piece
 * split agree with it. */
static void decode_all_ways(const char *in, size_t len, uint64_t max, bool reject,
                            struct decode_result *r)
{
    decode_cuts(in, len, max, reject, NULL, 0, r);
    assert_only_crlf(&r->out);
    struct decode_result other;
    decode_bytewise(in, len, max, reject, &other);
    assert_same_result(r, &other, "byte-wise", 1);
    smtp_buf_free(&other.out);
    for (size_t cut = 1; cut < len; cut++) {
        decode_cuts(in, len, max, reject, &cut, 1, &other);
        assert_same_result(r, &other, "two pieces", cut);
        smtp_buf_free(&other.out);
    }
}

/* ---- end of data, unstuffing, bare CR / LF ------------------------------ */

struct data_case {
    const char *name;
    const char *in;
    size_t len;
    bool reject;
    uint64_t max;
    enum smtp_data_status status;
    size_t consumed; /* for DONE; MORE always consumes everything */
    const char *out;
    size_t out_len;
    bool has_bare_lf;
    bool is_oversize;
    uint64_t size; /* SIZE_IS_OUT: equal to the output length */
};

#define DONE_AT(n) SMTP_DATA_DONE, (n)
#define MORE SMTP_DATA_MORE, 0

static const struct data_case data_cases[] = {
    /* the end of data, and only it */
    {"empty message", S(".\r\n"), false, NO_LIMIT, DONE_AT(3), S(""), false, false, SIZE_IS_OUT},
    {"one line", S("hello\r\n.\r\n"), false, NO_LIMIT, DONE_AT(10), S("hello\r\n"), false, false,
     SIZE_IS_OUT},
    {"pipelined after end", S("hello\r\n.\r\nQUIT\r\n"), false, NO_LIMIT, DONE_AT(10),
     S("hello\r\n"), false, false, SIZE_IS_OUT},
    {"first end wins", S("a\r\n.\r\n.\r\n"), false, NO_LIMIT, DONE_AT(6), S("a\r\n"), false, false,
     SIZE_IS_OUT},
    {"empty line then end", S("\r\n.\r\n"), false, NO_LIMIT, DONE_AT(5), S("\r\n"), false, false,
     SIZE_IS_OUT},
    {"nothing yet", S(""), false, NO_LIMIT, MORE, S(""), false, false, SIZE_IS_OUT},
    {"no end yet", S("a\r\nb"), false, NO_LIMIT, MORE, S("a\r\nb"), false, false, SIZE_IS_OUT},
    {"CR pending", S("a\r\n.\r"), false, NO_LIMIT, MORE, S("a\r\n"), false, false, SIZE_IS_OUT},
    {"dot pending", S("a\r\n."), false, NO_LIMIT, MORE, S("a\r\n"), false, false, SIZE_IS_OUT},
    {"no CRLF before dot", S("a.\r\n"), false, NO_LIMIT, MORE, S("a.\r\n"), false, false,
     SIZE_IS_OUT},
    {"dot with space", S("a\r\n. \r\n"), false, NO_LIMIT, MORE, S("a\r\n \r\n"), false, false,
     SIZE_IS_OUT},
    {"binary bytes", S("\0\x01\xff\x7f\r\n.\r\n"), false, NO_LIMIT, DONE_AT(9), S("\0\x01\xff\x7f\r\n"),
     false, false, SIZE_IS_OUT},
    /* dot-unstuffing (RFC 5321 §4.5.2) */
    {"stuffed dot", S("..dot\r\n.\r\n"), false, NO_LIMIT, DONE_AT(10), S(".dot\r\n"), false, false,
     SIZE_IS_OUT},
    {"stuffed lone dot", S("a\r\n..\r\n.\r\n"), false, NO_LIMIT, DONE_AT(10), S("a\r\n.\r\n"),
     false, false, SIZE_IS_OUT},
    {"stuffed two dots", S("a\r\n...\r\n.\r\n"), false, NO_LIMIT, DONE_AT(11), S("a\r\n..\r\n"),
     false, false, SIZE_IS_OUT},
    {"leading dot text", S(".a\r\n.\r\n"), false, NO_LIMIT, DONE_AT(7), S("a\r\n"), false, false,
     SIZE_IS_OUT},
    {"mid-line dots", S("a..b\r\n.\r\n"), false, NO_LIMIT, DONE_AT(9), S("a..b\r\n"), false, false,
     SIZE_IS_OUT},
    /* CVE-2023-51764 class: none of these ends the data */
    {"LF.LF", S("\n.\n"), false, NO_LIMIT, MORE, S("\r\n.\r\n"), true, false, SIZE_IS_OUT},
    {"CR.CR", S("\r.\r"), false, NO_LIMIT, MORE, S("\r\n."), true, false, SIZE_IS_OUT},
    {"CRLF.LF", S("\r\n.\n"), false, NO_LIMIT, MORE, S("\r\n\r\n"), true, false, SIZE_IS_OUT},
    {"LF.CRLF", S("\n.\r\n"), false, NO_LIMIT, MORE, S("\r\n.\r\n"), true, false, SIZE_IS_OUT},
    {".CRCRLF", S(".\r\r\n"), false, NO_LIMIT, MORE, S("\r\n\r\n"), true, false, SIZE_IS_OUT},
    {"CR.CRLF", S("a\r.\r\n"), false, NO_LIMIT, MORE, S("a\r\n.\r\n"), true, false, SIZE_IS_OUT},
    {"CRLF.CR.", S("a\r\n.\r.\r\n"), false, NO_LIMIT, MORE, S("a\r\n\r\n.\r\n"), true, false,
     SIZE_IS_OUT},
    {"CRLF CR.CRLF", S("a\r\n\r.\r\n"), false, NO_LIMIT, MORE, S("a\r\n\r\n.\r\n"), true, false,
     SIZE_IS_OUT},
    {"CRLF.LF.CRLF", S("a\r\n.\n.\r\n"), false, NO_LIMIT, MORE, S("a\r\n\r\n.\r\n"), true, false,
     SIZE_IS_OUT},
    {"LFCR.CRLF", S("a\n\r.\r\n"), false, NO_LIMIT, MORE, S("a\r\n\r\n.\r\n"), true, false,
     SIZE_IS_OUT},
    {"bare LF line kept", S("a\n.\nb\r\n.\r\n"), false, NO_LIMIT, DONE_AT(10), S("a\r\n.\r\nb\r\n"),
     true, false, SIZE_IS_OUT},
    {"smuggled command", S("a\n.\nMAIL FROM:<x@y>\r\nb\r.\rc\r\n.\r\n"), false, NO_LIMIT,
     DONE_AT(31), S("a\r\n.\r\nMAIL FROM:<x@y>\r\nb\r\n.\r\nc\r\n"), true, false, SIZE_IS_OUT},
    {"bare dots not unstuffed", S("a\n..\r\n.\r\n"), false, NO_LIMIT, DONE_AT(9),
     S("a\r\n..\r\n"), true, false, SIZE_IS_OUT},
    {"CR then CRLF", S("a\r\r\n.\r\n"), false, NO_LIMIT, DONE_AT(7), S("a\r\n\r\n"), true, false,
     SIZE_IS_OUT},
    {"LF then CRLF.CRLF", S("a\n\r\n.\r\n"), false, NO_LIMIT, DONE_AT(7), S("a\r\n\r\n"), true,
     false, SIZE_IS_OUT},
    {"many CRs", S("\r\r\r\n.\r\n"), false, NO_LIMIT, DONE_AT(7), S("\r\n\r\n\r\n"), true, false,
     SIZE_IS_OUT},
    {"LFLF", S("\n\n"), false, NO_LIMIT, MORE, S("\r\n\r\n"), true, false, SIZE_IS_OUT},
    /* reject mode: flag it, store nothing more, read to the real end */
    {"reject LF", S("a\nb\r\n.\r\n"), true, NO_LIMIT, DONE_AT(8), S("a"), true, false, 6},
    {"reject CR", S("ok\r\nx\ry\r\n.\r\n"), true, NO_LIMIT, DONE_AT(12), S("ok\r\nx"), true, false,
     10},
    {"reject reads to end", S("a\n.\r\nrest\r\n.\r\n"), true, NO_LIMIT, DONE_AT(14), S("a"), true,
     false, 12},
    {"reject clean", S("ok\r\n..\r\n.\r\n"), true, NO_LIMIT, DONE_AT(11), S("ok\r\n.\r\n"), false,
     false, SIZE_IS_OUT},
    /* size: decoded bytes; past max nothing more is stored */
    {"oversize run", S("abcdef\r\n.\r\n"), false, 3, DONE_AT(11), S("abc"), false, true, 8},
    {"oversize CRLF", S("ab\r\n.\r\n"), false, 3, DONE_AT(7), S("ab"), false, true, 4},
    {"exact size", S("ab\r\n.\r\n"), false, 4, DONE_AT(7), S("ab\r\n"), false, false, 4},
    {"oversize later", S("ab\r\ncd\r\n.\r\n"), false, 5, DONE_AT(11), S("ab\r\nc"), false, true, 8},
    {"stuffing not counted", S("..\r\n.\r\n"), false, 3, DONE_AT(7), S(".\r\n"), false, false, 3},
    {"max zero", S("x\r\n.\r\n"), false, 0, DONE_AT(6), S(""), false, true, 3},
    {"max zero empty", S(".\r\n"), false, 0, DONE_AT(3), S(""), false, false, 0},
    {"oversize bare LF", S("abc\ndef\r\n.\r\n"), false, 4, DONE_AT(12), S("abc"), true, true, 10},
    {"oversize and reject", S("abcdef\nx\r\n.\r\n"), true, 2, DONE_AT(13), S("ab"), true, true,
     11},
};

static void test_data_cases(void **state)
{
    for (size_t i = 0; i < sizeof(data_cases) / sizeof(data_cases[0]); i++) {
        const struct data_case *c = &data_cases[i];
        struct decode_result r;
        decode_all_ways(c->in, c->len, c->max, c->reject, &r);
        size_t want_consumed = c->status == SMTP_DATA_DONE ? c->consumed : c->len;
        uint64_t want_size = c->size == SIZE_IS_OUT ? c->out_len : c->size;
        if (r.status != c->status || r.consumed != want_consumed)
            fail_msg("%s: status %d consumed %zu, want %d %zu", c->name, r.status, r.consumed,
                     c->status, want_consumed);
        if (r.out.len != c->out_len || (c->out_len > 0 && memcmp(r.out.data, c->out, c->out_len)))
            fail_msg("%s: output \"%.*s\" (%zu bytes), want %zu bytes", c->name, (int)r.out.len,
                     r.out.data != NULL ? (const char *)r.out.data : "", r.out.len, c->out_len);
        if (r.d.has_bare_lf != c->has_bare_lf || r.d.is_oversize != c->is_oversize ||
            r.d.size != want_size)
            fail_msg("%s: bare=%d oversize=%d size=%llu, want %d %d %llu", c->name,
                     r.d.has_bare_lf, r.d.is_oversize, (unsigned long long)r.d.size,
                     c->has_bare_lf, c->is_oversize, (unsigned long long)want_size);
        assert_false(r.d.is_out_of_memory);
        smtp_buf_free(&r.out);
    }
}

/* ---- header section ----------------------------------------------------- */

struct header_case {
    const char *name;
    const char *in;
    size_t len;
    uint32_t count;
    bool message_id, date, from;
};

static const struct header_case header_cases[] = {
    {"all three", S("Message-ID: <a@b>\r\nDate: x\r\nFrom: a@b\r\n\r\nbody\r\n.\r\n"), 3, true, true,
     true},
    {"any case", S("message-id: x\r\nDATE: y\r\nfRoM: z\r\n\r\n.\r\n"), 3, true, true, true},
    {"none", S("Subject: hi\r\nTo: a@b\r\n\r\n.\r\n"), 2, false, false, false},
    {"only in body", S("Subject: hi\r\n\r\nDate: x\r\nFrom: y\r\n.\r\n"), 1, false, false, false},
    {"folded", S("Subject: hi\r\n there\r\n\tmore\r\nFrom: a\r\n\r\n.\r\n"), 2, false, false, true},
    {"name in a fold", S("Subject: a\r\n Date: x\r\n\tFrom: y\r\n\r\n.\r\n"), 1, false, false, false},
    {"first line prose", S("Hello world\r\nDate: x\r\n\r\n.\r\n"), 0, false, false, false},
    {"first line folded", S(" Date: x\r\nFrom: y\r\n\r\n.\r\n"), 0, false, false, false},
    {"first line empty", S("\r\nDate: x\r\n.\r\n"), 0, false, false, false},
    {"first line colon", S(":x\r\nDate: y\r\n\r\n.\r\n"), 0, false, false, false},
    {"prose ends header", S("Subject: a\r\nnot a header\r\nDate: x\r\n\r\n.\r\n"), 1, false, false,
     false},
    {"mbox From line", S("From user@host Mon Jan 1\r\nDate: x\r\n\r\n.\r\n"), 0, false, false,
     false},
    {"obsolete WSP", S("Date : x\r\nFrom\t: y\r\n\r\n.\r\n"), 2, false, true, true},
    {"similar names", S("X-Date: x\r\nDate-X: y\r\nFromage: z\r\nMessage-IDs: w\r\n\r\n.\r\n"), 4,
     false, false, false},
    {"long name", S("Message-ID-Extra-Long-Name: x\r\nA-Very-Long-Field-Name-Here: y\r\n\r\n.\r\n"), 2,
     false, false, false},
    {"empty value", S("Date:\r\nFrom:\r\n\r\n.\r\n"), 2, false, true, true},
    {"unstuffed name", S(".Date: x\r\n\r\n.\r\n"), 1, false, true, false},
    {"bare LF normalised", S("Subject: x\nDate: y\r\n\r\n.\r\n"), 2, false, true, false},
    {"8-bit name", S("D\xc3\xa4te: x\r\nDate: y\r\n\r\n.\r\n"), 0, false, false, false},
    {"header only", S("From: a\r\n.\r\n"), 1, false, false, true},
    {"no header at all", S(".\r\n"), 0, false, false, false},
};

static void test_header_detection(void **state)
{
    for (size_t i = 0; i < sizeof(header_cases) / sizeof(header_cases[0]); i++) {
        const struct header_case *c = &header_cases[i];
        struct decode_result r;
        decode_all_ways(c->in, c->len, NO_LIMIT, false, &r);
        assert_int_equal(r.status, SMTP_DATA_DONE);
        if (r.d.header_count != c->count || r.d.has_message_id != c->message_id ||
            r.d.has_date != c->date || r.d.has_from != c->from)
            fail_msg("%s: count=%u id=%d date=%d from=%d, want %u %d %d %d", c->name,
                     r.d.header_count, r.d.has_message_id, r.d.has_date, r.d.has_from, c->count,
                     c->message_id, c->date, c->from);
        smtp_buf_free(&r.out);
    }
}

/* ---- decoder lifecycle -------------------------------------------------- */

static void test_feed_after_done_and_reinit(void **state)
{
    struct smtp_data_decoder d;
    struct smtp_buf out = {.cap_max = 1024};
    smtp_data_init(&d, 100, false);
    size_t used;
    assert_int_equal(smtp_data_feed(&d, (const uint8_t *)"x\r\n.\r\nNOOP\r\n", 12, &used, &out),
                     SMTP_DATA_DONE);
    assert_int_equal(used, 6);
    /* a finished decoder takes nothing more: the rest is the command channel's */
    assert_int_equal(smtp_data_feed(&d, (const uint8_t *)"NOOP\r\n", 6, &used, &out),
                     SMTP_DATA_DONE);
    assert_int_equal(used, 0);
    assert_int_equal(out.len, 3);

    /* init resets every result and keeps the new configuration */
    d.has_bare_lf = d.is_oversize = d.has_date = true;
    smtp_data_init(&d, 7, true);
    assert_true(d.max_size == 7 && d.reject_bare_lf);
    assert_false(d.has_bare_lf || d.is_oversize || d.has_date || d.is_out_of_memory);
    assert_true(d.size == 0 && d.header_count == 0);
    smtp_buf_reset(&out);
    assert_int_equal(smtp_data_feed(&d, (const uint8_t *)".\r\n", 3, &used, &out),
                     SMTP_DATA_DONE);
    assert_int_equal(out.len, 0);
    smtp_buf_free(&out);
}

static void test_count_without_output(void **state)
{
    struct smtp_data_decoder d;
    smtp_data_init(&d, 4, false);
    size_t used;
    assert_int_equal(smtp_data_feed(&d, (const uint8_t *)"Date: 1\r\n.\r\n", 12, &used, NULL),
                     SMTP_DATA_DONE);
    assert_true(d.size == 9 && d.is_oversize && d.has_date);
}

static void test_out_of_memory_flag(void **state)
{
    /* a buffer capped below max_size: the failed append is reported, not hidden */
    struct smtp_data_decoder d;
    struct smtp_buf out = {.cap_max = 4};
    smtp_data_init(&d, 100, false);
    size_t used;
    assert_int_equal(smtp_data_feed(&d, (const uint8_t *)"abcdefgh\r\n.\r\n", 13, &used, &out),
                     SMTP_DATA_DONE);
    assert_true(d.is_out_of_memory);
    assert_false(d.is_oversize);
    assert_int_equal(d.size, 10);
    assert_true(out.len <= 4);
    smtp_buf_free(&out);
}

/* A large message in uneven chunks: the fast path over runs of text. */
static void test_large_message(void **state)
{
    const size_t lines = 20000, line_len = 49;
    size_t len = lines * line_len + 3;
    char *in = malloc(len);
    char *want = malloc(len);
    assert_non_null(in);
    assert_non_null(want);
    size_t n = 0, w = 0;
    for (size_t i = 0; i < lines; i++) {
        /* every 7th line starts with a stuffed dot, which must be removed */
        bool stuffed = i % 7 == 0;
        int k = snprintf(in + n, len - n, "%s%045zu\r\n", stuffed ? ".." : "l:", i);
        assert_int_equal(k, (int)line_len);
        memcpy(want + w, in + n + (stuffed ? 1 : 0), line_len - (stuffed ? 1 : 0));
        w += line_len - (stuffed ? 1 : 0);
        n += line_len;
    }
    memcpy(in + n, ".\r\n", 3);
    n += 3;
    assert_int_equal(n, len);

    struct smtp_data_decoder d;
    struct smtp_buf out = {.cap_max = len};
    smtp_data_init(&d, len, false);
    size_t off = 0, step = 1;
    enum smtp_data_status st = SMTP_DATA_MORE;
    while (off < len && st == SMTP_DATA_MORE) {
        size_t chunk = step < len - off ? step : len - off;
        size_t used;
        st = smtp_data_feed(&d, (const uint8_t *)in + off, chunk, &used, &out);
        off += used;
        step = step * 3 % 65521 + 1; /* 1, 4, 13, ... uneven sizes */
    }
    assert_int_equal(st, SMTP_DATA_DONE);
    assert_int_equal(off, len);
    assert_int_equal(out.len, w);
    assert_memory_equal(out.data, want, w);
    assert_int_equal(d.size, w);
    assert_false(d.has_bare_lf);
    assert_int_equal(d.header_count, 0); /* the first line is no field: no header section */
    assert_true(out.cap_alloc <= out.cap_max);
    smtp_buf_free(&out);
    free(in);
    free(want);
}

/* Random inputs over the characters that matter: every way of feeding them
 * must agree, the output must hold CRLF pairs only, and the end must be the
 * first CRLF.CRLF (counting the CRLF that ended DATA). */
static void test_random_inputs(void **state)
{
    static const char alphabet[] = "\r\n.\r\n.a: \r\n";
    uint32_t seed = 12345;
    char in[40];
    for (int round = 0; round < 3000; round++) {
        seed = seed * 1103515245u + 12345u;
        size_t len = (seed >> 16) % sizeof(in);
        for (size_t i = 0; i < len; i++) {
            seed = seed * 1103515245u + 12345u;
            in[i] = alphabet[(seed >> 16) % (sizeof(alphabet) - 1)];
        }
        bool reject = round % 3 == 0;
        uint64_t max = round % 5 == 0 ? (seed >> 8) % 16 : NO_LIMIT;
        struct decode_result r;
        decode_all_ways(in, len, max, reject, &r);
        /* expected end: first "\r\n.\r\n" in "\r\n" + input */
        char prefixed[sizeof(in) + 2] = "\r\n";
        memcpy(prefixed + 2, in, len);
        const char *end = memmem(prefixed, len + 2, "\r\n.\r\n", 5);
        if (end == NULL) {
            assert_int_equal(r.status, SMTP_DATA_MORE);
            assert_int_equal(r.consumed, len);
        } else {
            assert_int_equal(r.status, SMTP_DATA_DONE);
            assert_int_equal(r.consumed, (size_t)(end - prefixed) + 5 - 2);
        }
        if (r.d.is_oversize)
            assert_true(r.d.size > max && r.out.len <= max);
        else
            assert_true(r.d.size <= max);
        if (!r.d.is_oversize && !(reject && r.d.has_bare_lf))
            assert_true(r.d.size == r.out.len);
        smtp_buf_free(&r.out);
    }
}

/* ---- smtp_buf ----------------------------------------------------------- */

static void test_buf_cap(void **state)
{
    struct smtp_buf b = {.cap_max = 1000};
    assert_int_equal(smtp_buf_append(&b, "", 0), 0);
    assert_null(b.data); /* nothing allocated for nothing */
    char chunk[300];
    memset(chunk, 'z', sizeof(chunk));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(smtp_buf_append(&b, chunk, sizeof(chunk)), 0);
        assert_true(b.cap_alloc >= b.len && b.cap_alloc <= b.cap_max);
    }
    assert_int_equal(b.len, 900);
    /* 101 more would pass the cap: refused, nothing appended */
    assert_int_equal(smtp_buf_append(&b, chunk, 101), -1);
    assert_int_equal(b.len, 900);
    assert_int_equal(smtp_buf_append(&b, chunk, 100), 0);
    assert_int_equal(b.len, 1000);
    assert_int_equal(b.cap_alloc, 1000);
    assert_int_equal(smtp_buf_append(&b, chunk, 1), -1);
    assert_int_equal(smtp_buf_append(&b, NULL, 0), 0);

    uint8_t *mem = b.data;
    smtp_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_ptr_equal(b.data, mem);
    assert_int_equal(b.cap_alloc, 1000);
    assert_int_equal(smtp_buf_append(&b, "abc", 3), 0);
    assert_memory_equal(b.data, "abc", 3);

    smtp_buf_free(&b);
    assert_null(b.data);
    assert_true(b.len == 0 && b.cap_alloc == 0 && b.cap_max == 0);
    smtp_buf_free(&b); /* twice is harmless */
    /* a zeroed buffer has no room at all */
    assert_int_equal(smtp_buf_append(&b, "a", 1), -1);
}

static void test_buf_doubling(void **state)
{
    struct smtp_buf b = {.cap_max = 1u << 20};
    size_t grows = 0, last = 0;
    for (size_t i = 0; i < (1u << 20); i += 64) {
        char chunk[64] = {0};
        assert_int_equal(smtp_buf_append(&b, chunk, sizeof(chunk)), 0);
        if (b.cap_alloc != last) {
            if (last != 0)
                assert_int_equal(b.cap_alloc, last * 2);
            last = b.cap_alloc;
            grows++;
        }
    }
    assert_int_equal(b.len, 1u << 20);
    assert_true(grows <= 14); /* 256 .. 1 MiB by doubling */
    smtp_buf_free(&b);

    /* an odd cap is reached exactly, never passed */
    b.cap_max = 1000;
    char big[999] = {0};
    assert_int_equal(smtp_buf_append(&b, big, 999), 0);
    assert_int_equal(b.cap_alloc, 1000);
    assert_int_equal(smtp_buf_append(&b, big, 2), -1);
    assert_int_equal(smtp_buf_append(&b, big, 1), 0);
    smtp_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_data_cases),
        cmocka_unit_test(test_header_detection),
        cmocka_unit_test(test_feed_after_done_and_reinit),
        cmocka_unit_test(test_count_without_output),
        cmocka_unit_test(test_out_of_memory_flag),
        cmocka_unit_test(test_large_message),
        cmocka_unit_test(test_random_inputs),
        cmocka_unit_test(test_buf_cap),
        cmocka_unit_test(test_buf_doubling),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests: reading MX answers, MX ordering (RFC 5321 5.1) and null MX
 * detection (RFC 7505). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <ares.h>
#include <cmocka.h>

#include "relay/dns.h"

/* A scripted "random" source: returns the next value of a sequence, modulo
 * the bound, so every shuffle can be forced. */
struct script {
    const uint32_t *values;
    size_t n, i;
};

static uint32_t scripted(uint32_t bound, void *arg)
{
    struct script *s = arg;
    uint32_t v = s->values[s->i++ % s->n];
    return v % bound;
}

static void set(struct dns_mx *mx, const char *name, uint16_t pref)
{
    snprintf(mx->name, sizeof(mx->name), "%s", name);
    mx->preference = pref;
}

static void test_order_by_preference(void **state)
{
    (void)state;
    struct dns_mx mx[4];
    set(&mx[0], "c", 30);
    set(&mx[1], "a", 10);
    set(&mx[2], "d", 40);
    set(&mx[3], "b", 20);
    const uint32_t zero[] = {0};
    struct script s = {zero, 1, 0};
    dns_mx_order(mx, 4, scripted, &s);
    assert_string_equal(mx[0].name, "a");
    assert_string_equal(mx[1].name, "b");
    assert_string_equal(mx[2].name, "c");
    assert_string_equal(mx[3].name, "d");
}

/* Every permutation of an equal-preference group is reachable, and the
 * groups never mix, whatever the random source says. */
static void test_equal_preferences_shuffled(void **state)
{
    (void)state;
    char seen[16][8];
    size_t seen_count = 0;
    for (uint32_t a = 0; a < 4; a++)
        for (uint32_t b = 0; b < 4; b++)
            for (uint32_t c = 0; c < 4; c++) {
                struct dns_mx mx[4];
                set(&mx[0], "x", 10);
                set(&mx[1], "y", 10);
                set(&mx[2], "z", 10);
                set(&mx[3], "last", 20);
                const uint32_t values[] = {a, b, c};
                struct script s = {values, 3, 0};
                dns_mx_order(mx, 4, scripted, &s);
                assert_string_equal(mx[3].name, "last");
                char order[8] = {mx[0].name[0], mx[1].name[0], mx[2].name[0], 0};
                bool known = false;
                for (size_t i = 0; i < seen_count; i++)
                    if (strcmp(seen[i], order) == 0)
                        known = true;
                if (!known && seen_count < 16)
                    strcpy(seen[seen_count++], order);
            }
    assert_int_equal(seen_count, 6); /* 3! orders of x, y, z */
}

static void test_null_mx(void **state)
{
    (void)state;
    struct dns_mx mx[2];
    set(&mx[0], "", 0);
    assert_true(dns_mx_is_null(mx, 1));
    set(&mx[0], ".", 0);
    assert_true(dns_mx_is_null(mx, 1));
    set(&mx[0], "", 10); /* preference must be 0 */
    assert_false(dns_mx_is_null(mx, 1));
    set(&mx[0], "", 0);
    set(&mx[1], "mx.example.test", 10); /* "." among real hosts: not null MX */
    assert_false(dns_mx_is_null(mx, 2));
    set(&mx[0], "mx.example.test", 0);
    assert_false(dns_mx_is_null(mx, 1));
    assert_false(dns_mx_is_null(mx, 0));
}

/* A DNS response for example.test with the given MX rdata (each: preference,
 * then the wire-format exchanger), compressed owner names. */
static size_t answer(unsigned char *buf, const unsigned char *const *rdata, const size_t *len,
                     size_t n)
{
    static const unsigned char head[] = {0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0,
                                         7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 4, 't', 'e',
                                         's', 't', 0, 0, 15, 0, 1};
    size_t off = sizeof(head);
    memcpy(buf, head, off);
    buf[7] = (unsigned char)n;
    for (size_t i = 0; i < n; i++) {
        const unsigned char rr[] = {0xc0, 0x0c, 0, 15, 0, 1, 0, 0, 1, 0x2c, 0,
                                    (unsigned char)len[i]};
        memcpy(buf + off, rr, sizeof(rr));
        off += sizeof(rr);
        memcpy(buf + off, rdata[i], len[i]);
        off += len[i];
    }
    return off;
}

static void test_parse_answer(void **state)
{
    (void)state;
    static const unsigned char mx1[] = {0, 20, 3, 'm', 'x', '1', 0xc0, 0x0c};
    static const unsigned char mx2[] = {0, 10, 3, 'm', 'x', '2', 0xc0, 0x0c};
    static const unsigned char spaced[] = {0, 5, 3, 'a', ' ', 'b', 0xc0, 0x0c};
    static const unsigned char ctl[] = {0, 5, 3, 'a', '\n', 'b', 0xc0, 0x0c};
    const unsigned char *rdata[] = {mx1, spaced, ctl, mx2};
    const size_t len[] = {sizeof(mx1), sizeof(spaced), sizeof(ctl), sizeof(mx2)};
    unsigned char buf[512];
    size_t n = answer(buf, rdata, len, 4);
    struct dns_mx mx[4];
    size_t count = 9;
    /* the answer's order; the names that are not host names left out */
    assert_int_equal(dns_mx_parse(buf, (int)n, mx, 4, &count), ARES_SUCCESS);
    assert_int_equal(count, 2);
    assert_string_equal(mx[0].name, "mx1.example.test");
    assert_int_equal(mx[0].preference, 20);
    assert_string_equal(mx[1].name, "mx2.example.test");
    assert_int_equal(mx[1].preference, 10);
    /* no more than max */
    assert_int_equal(dns_mx_parse(buf, (int)n, mx, 1, &count), ARES_SUCCESS);
    assert_int_equal(count, 1);
    /* cut short: malformed, nothing kept */
    assert_int_not_equal(dns_mx_parse(buf, (int)n - 3, mx, 4, &count), ARES_SUCCESS);
    assert_int_equal(count, 0);
    /* no MX record at all */
    n = answer(buf, rdata, len, 0);
    assert_int_equal(dns_mx_parse(buf, (int)n, mx, 4, &count), ARES_ENODATA);
    assert_int_equal(count, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_by_preference),
        cmocka_unit_test(test_equal_preferences_shuffled),
        cmocka_unit_test(test_null_mx),
        cmocka_unit_test(test_parse_answer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

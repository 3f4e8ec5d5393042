/* Unit tests: MX ordering (RFC 5321 5.1) and null MX detection (RFC 7505). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_by_preference),
        cmocka_unit_test(test_equal_preferences_shuffled),
        cmocka_unit_test(test_null_mx),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests: retry schedule and the defer/bounce classification. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "relay/retry.h"

static void test_schedule_doubles_up_to_cap(void **state)
{
    (void)state;
    struct retry_params p = {0}; /* defaults: 300 s doubling to 3600 s */
    int64_t now = 1000000;
    assert_int_equal(retry_next_at(&p, 1, now) - now, 300);
    assert_int_equal(retry_next_at(&p, 2, now) - now, 600);
    assert_int_equal(retry_next_at(&p, 3, now) - now, 1200);
    assert_int_equal(retry_next_at(&p, 4, now) - now, 2400);
    assert_int_equal(retry_next_at(&p, 5, now) - now, 3600);
    assert_int_equal(retry_next_at(&p, 60, now) - now, 3600);
    assert_int_equal(retry_next_at(&p, 4000000000u, now) - now, 3600);
    struct retry_params q = {.first_backoff_s = 10, .max_backoff_s = 25};
    assert_int_equal(retry_next_at(&q, 1, now) - now, 10);
    assert_int_equal(retry_next_at(&q, 2, now) - now, 20);
    assert_int_equal(retry_next_at(&q, 3, now) - now, 25);
    struct retry_params r = {.first_backoff_s = 100, .max_backoff_s = 50}; /* cap below first */
    assert_int_equal(retry_next_at(&r, 3, now) - now, 100);
}

static void test_lifetime(void **state)
{
    (void)state;
    struct retry_params p = {0};
    assert_false(retry_is_expired(&p, 0, 5 * 86400 - 1));
    assert_true(retry_is_expired(&p, 0, 5 * 86400));
    struct retry_params q = {.max_lifetime_s = 60};
    assert_false(retry_is_expired(&q, 100, 159));
    assert_true(retry_is_expired(&q, 100, 160));
}

static void test_classify(void **state)
{
    (void)state;
    assert_int_equal(retry_classify_reply(250), RETRY_DELIVERED);
    assert_int_equal(retry_classify_reply(251), RETRY_DELIVERED);
    assert_int_equal(retry_classify_reply(421), RETRY_DEFER);
    assert_int_equal(retry_classify_reply(451), RETRY_DEFER);
    assert_int_equal(retry_classify_reply(550), RETRY_BOUNCE);
    assert_int_equal(retry_classify_reply(0), RETRY_DEFER);
    assert_int_equal(retry_classify_reply(354), RETRY_DEFER);
    assert_int_equal(retry_classify_reply(999), RETRY_DEFER);
    const char *st = NULL;
    assert_int_equal(retry_classify_dns(DNS_NXDOMAIN, &st), RETRY_BOUNCE);
    assert_string_equal(st, "5.1.2");
    assert_int_equal(retry_classify_dns(DNS_NULLMX, &st), RETRY_BOUNCE);
    assert_string_equal(st, "5.1.10");
    assert_int_equal(retry_classify_dns(DNS_NODATA, &st), RETRY_BOUNCE);
    assert_int_equal(retry_classify_dns(DNS_TEMPFAIL, &st), RETRY_DEFER);
    assert_string_equal(st, "4.4.3");
    assert_string_equal(retry_default_status(0), "4.4.1");
    assert_string_equal(retry_default_status(554), "5.0.0");
    assert_string_equal(retry_default_status(452), "4.0.0");
    assert_string_equal(retry_outcome_name(RETRY_BOUNCE), "bounced");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schedule_doubles_up_to_cap),
        cmocka_unit_test(test_lifetime),
        cmocka_unit_test(test_classify),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

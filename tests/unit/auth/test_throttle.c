/* Unit tests for auth/throttle.c, driven by a fake clock (plain numbers
 * passed as now_ms): growing and capped delays, lockout at the Nth failure
 * and its expiry, per-account lockouts across addresses, the failure window,
 * success clearing counters, IPv6 /64 aggregation and the entry bound. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "auth/throttle.h"

static const struct throttle_params base_params = {
    .failure_delay_ms = 100,
    .max_delay_ms = 1000,
    .ip_lockout_failures = 6,
    .account_lockout_failures = 3,
    .lockout_ms = 60000,
    .window_ms = 10000,
    .max_entries = 0,
};

static int setup(void **state)
{
    *state = throttle_new(&base_params);
    return *state == NULL ? -1 : 0;
}

static int teardown(void **state)
{
    throttle_free(*state);
    return 0;
}

static void test_delays_grow_and_cap(void **state)
{
    struct throttle *t = *state;
    /* IP only (user NULL): 100, 200, 400, 800, then capped at 1000. */
    const uint32_t want[] = {100, 200, 400, 800, 1000};
    uint64_t now = 1000;
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        bool locked_now = true;
        uint32_t d = throttle_record_failure(t, "192.0.2.1", NULL, now, &locked_now);
        if (d != want[i])
            fail_msg("failure %zu: delay %u, want %u", i + 1, d, want[i]);
        assert_false(locked_now);
        now += 1000;
    }
    /* Another address is unaffected. */
    assert_int_equal(throttle_record_failure(t, "192.0.2.2", NULL, now, NULL), 100);
}

static void test_delay_never_overflows(void **state)
{
    struct throttle_params p = base_params;
    p.failure_delay_ms = 3000;
    p.max_delay_ms = UINT32_MAX;
    p.ip_lockout_failures = 0; /* 0: never lock */
    struct throttle *t = throttle_new(&p);
    assert_non_null(t);
    uint32_t last = 0;
    for (int i = 0; i < 100; i++) {
        uint32_t d = throttle_record_failure(t, "192.0.2.9", NULL, 5000 + (uint64_t)i, NULL);
        assert_true(d >= last);
        last = d;
    }
    assert_int_equal(last, UINT32_MAX);
    assert_false(throttle_is_locked(t, "192.0.2.9", NULL, 6000, NULL));
    throttle_free(t);
}

static void test_ip_lockout_at_nth_failure_and_expiry(void **state)
{
    struct throttle *t = *state;
    uint64_t now = 50000;
    for (uint32_t i = 1; i <= base_params.ip_lockout_failures; i++) {
        assert_false(throttle_is_locked(t, "198.51.100.7", NULL, now, NULL));
        bool locked_now = false;
        throttle_record_failure(t, "198.51.100.7", NULL, now, &locked_now);
        if (locked_now != (i == base_params.ip_lockout_failures))
            fail_msg("failure %u: locked_now=%d", i, locked_now);
        now += 10;
    }
    uint64_t locked_at = now - 10;
    uint64_t until = 0;
    assert_true(throttle_is_locked(t, "198.51.100.7", NULL, now, &until));
    assert_int_equal(until, locked_at + base_params.lockout_ms);
    /* A user on that address is locked too. */
    assert_true(throttle_is_locked(t, "198.51.100.7", "anyone", now, NULL));
    assert_true(throttle_is_locked(t, "198.51.100.7", NULL, until - 1, NULL));
    /* Expiry: at `until` it is over, and the series starts from scratch. */
    assert_false(throttle_is_locked(t, "198.51.100.7", NULL, until, NULL));
    bool locked_now = true;
    assert_int_equal(throttle_record_failure(t, "198.51.100.7", NULL, until + 1, &locked_now),
                     100);
    assert_false(locked_now);
}

static void test_account_lockout_across_addresses(void **state)
{
    struct throttle *t = *state;
    const char *ips[] = {"203.0.113.1", "203.0.113.2", "203.0.113.3"};
    bool locked_now = false;
    for (size_t i = 0; i < 3; i++) {
        assert_false(throttle_is_locked(t, ips[i], "printer", 1000, NULL));
        uint32_t d = throttle_record_failure(t, ips[i], "printer", 1000 + i, &locked_now);
        /* The delay follows the larger count: the account's. */
        assert_int_equal(d, 100u << i);
        assert_int_equal(locked_now, i == 2);
    }
    uint64_t until = 0;
    assert_true(throttle_is_locked(t, "203.0.113.99", "printer", 1003, &until));
    assert_int_equal(until, 1002 + base_params.lockout_ms);
    /* Only the account: other users on those addresses carry on. */
    assert_false(throttle_is_locked(t, "203.0.113.1", "scanner", 1003, NULL));
    assert_false(throttle_is_locked(t, "203.0.113.1", NULL, 1003, NULL));
    assert_false(throttle_is_locked(t, "203.0.113.99", "printer", until, NULL));
}

static void test_window_forgets_old_failures(void **state)
{
    struct throttle *t = *state;
    uint64_t now = 0;
    /* Failures further apart than the window never accumulate. */
    for (int i = 0; i < 10; i++) {
        now += base_params.window_ms;
        bool locked_now = true;
        assert_int_equal(throttle_record_failure(t, "192.0.2.50", "slow", now, &locked_now), 100);
        assert_false(locked_now);
    }
    assert_false(throttle_is_locked(t, "192.0.2.50", "slow", now, NULL));
    /* Inside the window they do. */
    assert_int_equal(throttle_record_failure(t, "192.0.2.50", "slow", now + 1, NULL), 200);
    assert_int_equal(throttle_record_failure(t, "192.0.2.50", "slow",
                                             now + base_params.window_ms, NULL),
                     400);
}

static void test_success_clears(void **state)
{
    struct throttle *t = *state;
    assert_int_equal(throttle_record_failure(t, "192.0.2.60", "dev", 100, NULL), 100);
    assert_int_equal(throttle_record_failure(t, "192.0.2.60", "dev", 200, NULL), 200);
    throttle_record_success(t, "192.0.2.60", "dev");
    assert_int_equal(throttle_record_failure(t, "192.0.2.60", "dev", 300, NULL), 100);
    /* The account's counter went too: two more failures from elsewhere do
     * not reach the 3-failure account lockout. */
    throttle_record_success(t, "192.0.2.60", "dev");
    bool locked_now = false;
    throttle_record_failure(t, "192.0.2.61", "dev", 400, &locked_now);
    throttle_record_failure(t, "192.0.2.62", "dev", 500, &locked_now);
    assert_false(locked_now);
    assert_false(throttle_is_locked(t, "192.0.2.63", "dev", 600, NULL));
}

static void test_success_does_not_lift_lockout(void **state)
{
    struct throttle *t = *state;
    for (int i = 0; i < 3; i++)
        throttle_record_failure(t, "192.0.2.70", "held", 100, NULL);
    assert_true(throttle_is_locked(t, "192.0.2.71", "held", 200, NULL));
    throttle_record_success(t, "192.0.2.70", "held");
    assert_true(throttle_is_locked(t, "192.0.2.71", "held", 200, NULL));
}

static void test_ipv6_keyed_by_64(void **state)
{
    struct throttle *t = *state;
    /* Same /64, different interface identifiers: one client. */
    const char *same[] = {"2001:db8:1:2::1", "2001:db8:1:2:ffff::5", "2001:db8:1:2:a:b:c:d",
                          "2001:db8:1:2::1%eth0", "2001:db8:1:2:0:0:0:9"};
    for (uint32_t i = 0; i < 5; i++) {
        uint32_t d = throttle_record_failure(t, same[i], NULL, 1000, NULL);
        assert_int_equal(d, 100u << i < 1000 ? 100u << i : 1000);
    }
    bool locked_now = false;
    throttle_record_failure(t, "2001:db8:1:2::77", NULL, 1000, &locked_now);
    assert_true(locked_now);
    assert_true(throttle_is_locked(t, "2001:db8:1:2:1234::1", NULL, 1001, NULL));
    /* The neighbouring /64 is another client. */
    assert_false(throttle_is_locked(t, "2001:db8:1:3::1", NULL, 1001, NULL));
    assert_int_equal(throttle_record_failure(t, "2001:db8:1:3::1", NULL, 1001, NULL), 100);
}

static void test_ipv4_mapped_is_ipv4(void **state)
{
    struct throttle *t = *state;
    assert_int_equal(throttle_record_failure(t, "192.0.2.80", NULL, 1, NULL), 100);
    assert_int_equal(throttle_record_failure(t, "::ffff:192.0.2.80", NULL, 2, NULL), 200);
    /* Unparseable text is still a key of its own, bounded. */
    assert_int_equal(throttle_record_failure(t, "not-an-ip", NULL, 3, NULL), 100);
    assert_int_equal(throttle_record_failure(t, "not-an-ip", NULL, 4, NULL), 200);
}

static void test_eviction_bound(void **state)
{
    struct throttle_params p = base_params;
    p.max_entries = 4;
    p.ip_lockout_failures = 2;
    struct throttle *t = throttle_new(&p);
    assert_non_null(t);
    /* .1 is locked out; .2 .3 .4 have one failure each: 4 entries. */
    throttle_record_failure(t, "192.0.2.1", NULL, 10, NULL);
    throttle_record_failure(t, "192.0.2.1", NULL, 11, NULL);
    for (int i = 2; i <= 4; i++) {
        char ip[32];
        snprintf(ip, sizeof(ip), "192.0.2.%d", i);
        throttle_record_failure(t, ip, NULL, 20 + (uint64_t)i, NULL);
    }
    /* A fifth key evicts the oldest entry that is not locked out (.2),
     * not the older but locked .1. */
    throttle_record_failure(t, "192.0.2.5", NULL, 30, NULL);
    assert_true(throttle_is_locked(t, "192.0.2.1", NULL, 31, NULL));
    assert_int_equal(throttle_record_failure(t, "192.0.2.2", NULL, 32, NULL), 100); /* forgotten */
    /* .2's re-entry evicted .3, the oldest unlocked one left. */
    assert_int_equal(throttle_record_failure(t, "192.0.2.3", NULL, 33, NULL), 100);
    /* Many new keys: never more than four remembered, so after 100 of them
     * the first are all forgotten (second failure gives the base delay
     * again), while the locked one survives as long as others can go. */
    for (int i = 0; i < 100; i++) {
        char ip[32];
        snprintf(ip, sizeof(ip), "10.0.%d.%d", i / 256, i % 256);
        throttle_record_failure(t, ip, NULL, 40 + (uint64_t)i, NULL);
    }
    assert_true(throttle_is_locked(t, "192.0.2.1", NULL, 200, NULL));
    assert_int_equal(throttle_record_failure(t, "10.0.0.0", NULL, 201, NULL), 100);
    /* When every candidate is locked, the bound still holds: the oldest
     * goes even though locked. */
    for (int i = 0; i < 8; i++) {
        char ip[32];
        snprintf(ip, sizeof(ip), "172.16.0.%d", i);
        throttle_record_failure(t, ip, NULL, 300, NULL);
        throttle_record_failure(t, ip, NULL, 301, NULL);
    }
    assert_false(throttle_is_locked(t, "192.0.2.1", NULL, 302, NULL));
    assert_true(throttle_is_locked(t, "172.16.0.7", NULL, 302, NULL));
    throttle_free(t);
}

static void test_set_params(void **state)
{
    struct throttle *t = *state;
    assert_int_equal(throttle_record_failure(t, "192.0.2.90", NULL, 1, NULL), 100);
    struct throttle_params p = base_params;
    p.failure_delay_ms = 50;
    throttle_set_params(t, &p);
    /* Counters kept (second failure), new base delay. */
    assert_int_equal(throttle_record_failure(t, "192.0.2.90", NULL, 2, NULL), 100);
    assert_int_equal(throttle_record_failure(t, "192.0.2.90", NULL, 3, NULL), 200);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_delays_grow_and_cap),
        cmocka_unit_test(test_delay_never_overflows),
        T(test_ip_lockout_at_nth_failure_and_expiry),
        T(test_account_lockout_across_addresses),
        T(test_window_forgets_old_failures),
        T(test_success_clears),
        T(test_success_does_not_lift_lockout),
        T(test_ipv6_keyed_by_64),
        T(test_ipv4_mapped_is_ipv4),
        cmocka_unit_test(test_eviction_bound),
        T(test_set_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

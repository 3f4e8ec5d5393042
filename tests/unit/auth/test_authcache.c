/* Unit tests: the credentials cache never lets a wrong password through,
 * misses at once when the stored hash changes, and stays bounded; a
 * verification under way is shared only with the very same credentials. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdbool.h>
#include <time.h>

#include "auth/authcache.h"

static void test_hits_only_the_verified_password(void **state)
{
    (void)state;
    assert_int_equal(authcache_init(64), 0);
    assert_false(authcache_check("ricoh", "$y$hash1", "right"));
    authcache_put("ricoh", "$y$hash1", "right");
    assert_true(authcache_check("ricoh", "$y$hash1", "right"));
    assert_false(authcache_check("ricoh", "$y$hash1", "wrong"));
    assert_false(authcache_check("ricoh", "$y$hash1", "Right"));
    assert_false(authcache_check("ricoh", "$y$hash1", ""));
    assert_false(authcache_check("RICOH", "$y$hash1", "right"));
    /* a new password means a new stored hash: the old entry is useless */
    assert_false(authcache_check("ricoh", "$y$hash2", "right"));
    authcache_put("ricoh", "$y$hash2", "new");
    assert_false(authcache_check("ricoh", "$y$hash1", "right")); /* replaced */
    assert_true(authcache_check("ricoh", "$y$hash2", "new"));
    unsigned long long hits, misses, shared;
    authcache_stats(&hits, &misses, &shared);
    assert_int_equal(hits, 2);
    assert_int_equal(shared, 0);
    authcache_done();
}

static void test_bounded_and_disabled(void **state)
{
    (void)state;
    assert_int_equal(authcache_init(8), 0);
    char user[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(user, sizeof(user), "dev%d", i);
        authcache_put(user, "$y$h", "pw");
    }
    int kept = 0;
    for (int i = 0; i < 1000; i++) {
        snprintf(user, sizeof(user), "dev%d", i);
        kept += authcache_check(user, "$y$h", "pw");
    }
    assert_true(kept > 0 && kept <= 8);
    authcache_done();
    assert_int_equal(authcache_init(0), 0); /* off */
    authcache_put("ricoh", "$y$h", "pw");
    assert_false(authcache_check("ricoh", "$y$h", "pw"));
    authcache_done();
}

/* ---- single flight ----------------------------------------------------- */

struct waiter {
    const char *user, *hash, *password;
    pthread_t thread;
    int known, claim;
};

static void *waiter_run(void *arg)
{
    struct waiter *w = arg;
    w->known = authcache_begin(w->user, w->hash, w->password, true, &w->claim);
    return NULL;
}

static void waiter_start(struct waiter *w, const char *user, const char *hash, const char *pw)
{
    *w = (struct waiter){.user = user, .hash = hash, .password = pw, .known = 9, .claim = 9};
    assert_int_equal(pthread_create(&w->thread, NULL, waiter_run, w), 0);
}

/* Until `want` callers have joined a flight (no timing: a generous
 * deadline, then a failure rather than a hang). */
static void wait_shared(unsigned long long want)
{
    for (int i = 0; i < 60000; i++) {
        unsigned long long hits, misses, shared;
        authcache_stats(&hits, &misses, &shared);
        if (shared >= want)
            return;
        nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
    }
    fail_msg("no caller joined the verification under way");
}

/* One verification of (user, hash, pw) with a waiter that joins it (the
 * shared_before-th); settled with is_match / is_kept; the waiter's answer. */
static int shared_result(const char *user, const char *hash, const char *pw,
                         unsigned long long shared_before, bool is_match, bool is_kept)
{
    int claim = 0;
    assert_int_equal(authcache_begin(user, hash, pw, true, &claim), -1);
    struct waiter w;
    waiter_start(&w, user, hash, pw);
    wait_shared(shared_before + 1);
    authcache_settle(claim, user, hash, pw, is_match, is_kept);
    pthread_join(w.thread, NULL);
    assert_int_equal(w.claim, 0);
    return w.known;
}

static void test_single_flight(void **state)
{
    (void)state;
    assert_int_equal(authcache_init(64), 0);
    /* the first verifies; two more with the same credentials wait for it */
    int claim = 0;
    assert_int_equal(authcache_begin("ricoh", "$y$h1", "right", true, &claim), -1);
    assert_true(claim > 0);
    struct waiter w[2];
    waiter_start(&w[0], "ricoh", "$y$h1", "right");
    waiter_start(&w[1], "ricoh", "$y$h1", "right");
    wait_shared(2);
    /* other credentials do not wait: a password, a stored hash, a user */
    int other = 0;
    assert_int_equal(authcache_begin("ricoh", "$y$h1", "wrong", true, &other), -1);
    assert_true(other > 0 && other != claim);
    authcache_settle(other, "ricoh", "$y$h1", "wrong", false, true);
    assert_int_equal(authcache_begin("ricoh", "$y$h2", "right", true, &other), -1);
    authcache_settle(other, "ricoh", "$y$h2", "right", false, true);
    assert_int_equal(authcache_begin("RICOH", "$y$h1", "right", true, &other), -1);
    authcache_settle(other, "RICOH", "$y$h1", "right", false, true);
    authcache_settle(claim, "ricoh", "$y$h1", "right", true, true);
    for (int i = 0; i < 2; i++) {
        pthread_join(w[i].thread, NULL);
        assert_int_equal(w[i].known, 1);
        assert_int_equal(w[i].claim, 0);
    }
    assert_int_equal(authcache_begin("ricoh", "$y$h1", "right", true, &claim), 1); /* cached */
    assert_int_equal(claim, 0);
    /* no look-up asked (a disabled account): verified again, though cached */
    assert_int_equal(authcache_begin("ricoh", "$y$h1", "right", false, &claim), -1);
    assert_true(claim > 0);
    authcache_settle(claim, "ricoh", "$y$h1", "right", true, false);

    /* a failed verification is shared with its waiters, and not kept */
    assert_int_equal(shared_result("canon", "$y$h", "bad", 2, false, true), 0);
    assert_int_equal(authcache_begin("canon", "$y$h", "bad", true, &claim), -1);
    assert_true(claim > 0);
    authcache_settle(claim, "canon", "$y$h", "bad", false, true);

    /* a match not to be kept (a disabled account): shared, not cached */
    assert_int_equal(shared_result("epson", "$y$h", "pw", 3, true, false), 1);
    assert_false(authcache_check("epson", "$y$h", "pw"));

    /* more verifications at once than flights: the rest go alone */
    int claims[64];
    char user[64][16];
    for (int i = 0; i < 64; i++) {
        snprintf(user[i], sizeof(user[i]), "dev%d", i);
        assert_int_equal(authcache_begin(user[i], "$y$h", "pw", true, &claims[i]), -1);
        assert_true(claims[i] > 0);
    }
    assert_int_equal(authcache_begin("dev64", "$y$h", "pw", true, &claim), -1);
    assert_int_equal(claim, 0);
    authcache_settle(claim, "dev64", "$y$h", "pw", true, true);
    for (int i = 0; i < 64; i++)
        authcache_settle(claims[i], user[i], "$y$h", "pw", true, true);
    assert_int_equal(authcache_begin("dev63", "$y$h", "pw", true, &claim), 1); /* the last put */
    authcache_done();

    /* closed during a verification: its waiters verify alone, and its
     * late settle cannot answer a new verification in the same slot */
    assert_int_equal(authcache_init(64), 0);
    int stale = 0;
    assert_int_equal(authcache_begin("ricoh", "$y$h1", "right", true, &stale), -1);
    waiter_start(&w[0], "ricoh", "$y$h1", "right");
    wait_shared(1);
    authcache_done();
    pthread_join(w[0].thread, NULL);
    assert_int_equal(w[0].known, -1);
    assert_int_equal(w[0].claim, 0);
    assert_int_equal(authcache_init(64), 0);
    assert_int_equal(authcache_begin("ricoh", "$y$h1", "wrong", true, &claim), -1);
    assert_int_equal(claim, stale); /* the same slot */
    waiter_start(&w[0], "ricoh", "$y$h1", "wrong");
    wait_shared(1);
    authcache_settle(stale, "ricoh", "$y$h1", "right", true, false); /* ignored */
    authcache_settle(claim, "ricoh", "$y$h1", "wrong", false, true);
    pthread_join(w[0].thread, NULL);
    assert_int_equal(w[0].known, 0);
    authcache_done();

    /* the cache off: nothing shared either */
    assert_int_equal(authcache_init(0), 0);
    assert_int_equal(authcache_begin("ricoh", "$y$h1", "right", true, &claim), -1);
    assert_int_equal(claim, 0);
    authcache_done();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hits_only_the_verified_password),
        cmocka_unit_test(test_bounded_and_disabled),
        cmocka_unit_test(test_single_flight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests: the credentials cache never lets a wrong password through,
 * misses at once when the stored hash changes, and stays bounded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include <cmocka.h>

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
    unsigned long long hits, misses;
    authcache_stats(&hits, &misses);
    assert_int_equal(hits, 2);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hits_only_the_verified_password),
        cmocka_unit_test(test_bounded_and_disabled),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

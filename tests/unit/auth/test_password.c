/* Unit tests for auth/password.c: yescrypt hash and verify round trips,
 * refusal of malformed hashes and oversized passwords, and the generated
 * passwords' length, alphabet and bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "auth/password.h"

/* The look-alikes that must never appear in a generated password. */
static const char confusable[] = "0O1lI";

static void test_hash_and_verify(void **state)
{
    char hash[PASSWORD_HASH_SIZE];
    assert_int_equal(password_hash("correct horse battery staple", hash), 0);
    /* yescrypt at libcrypt's default cost: store.c's dummy hash for unknown
     * users uses exactly these parameters ("j9T"); if the default changes,
     * the dummy must change with it or timing tells names apart. */
    assert_memory_equal(hash, "$y$j9T$", 7);
    assert_true(password_verify("correct horse battery staple", hash));
    assert_false(password_verify("correct horse battery stapl", hash));
    assert_false(password_verify("Correct horse battery staple", hash));
    assert_false(password_verify("", hash));
}

static void test_hash_salted(void **state)
{
    char a[PASSWORD_HASH_SIZE], b[PASSWORD_HASH_SIZE];
    assert_int_equal(password_hash("same", a), 0);
    assert_int_equal(password_hash("same", b), 0);
    assert_string_not_equal(a, b);
    assert_true(password_verify("same", a));
    assert_true(password_verify("same", b));
}

static void test_hash_bounds(void **state)
{
    char hash[PASSWORD_HASH_SIZE];
    char longest[512], too_long[513];
    memset(longest, 'x', sizeof(longest) - 1);
    longest[sizeof(longest) - 1] = '\0';
    memset(too_long, 'x', sizeof(too_long) - 1);
    too_long[sizeof(too_long) - 1] = '\0';
    assert_int_equal(password_hash(longest, hash), 0);
    assert_true(password_verify(longest, hash));
    assert_int_equal(password_hash(too_long, hash), -1);
    assert_int_equal(password_hash(NULL, hash), -1);
    /* An oversized candidate never verifies (and never reaches libcrypt). */
    assert_int_equal(password_hash("x", hash), 0);
    assert_false(password_verify(too_long, hash));
    assert_false(password_verify(NULL, hash));
}

static void test_verify_malformed_hashes(void **state)
{
    char good[PASSWORD_HASH_SIZE];
    assert_int_equal(password_hash("pw", good), 0);
    char truncated[PASSWORD_HASH_SIZE];
    snprintf(truncated, sizeof(truncated), "%.*s", (int)strlen(good) - 3, good);
    char oversized[PASSWORD_HASH_SIZE + 10];
    memset(oversized, 'a', sizeof(oversized) - 1);
    oversized[0] = '$';
    oversized[sizeof(oversized) - 1] = '\0';
    const char *bad[] = {
        "", "*0", "*1", "$y$", "$y$j9T$", "garbage", "$1$abc$", "!locked", truncated, oversized,
        NULL,
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (password_verify("pw", bad[i]))
            fail_msg("hash %zu verified", i);
    }
}

static void test_generate_alphabet_and_length(void **state)
{
    char seen[256] = {0};
    for (int round = 0; round < 100; round++) {
        char pw[21];
        assert_int_equal(password_generate(pw, sizeof(pw), 20), 0);
        assert_int_equal(strlen(pw), 20);
        for (size_t i = 0; i < 20; i++) {
            unsigned char c = (unsigned char)pw[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
                fail_msg("not a letter or digit: 0x%02x", c);
            if (strchr(confusable, c) != NULL)
                fail_msg("look-alike character '%c'", c);
            seen[c] = 1;
        }
    }
    /* 2000 draws from 57 symbols: every symbol shows up unless the
     * generator is badly skewed (a miss has probability below 1e-13). */
    int distinct = 0;
    for (int c = 0; c < 256; c++)
        distinct += seen[c];
    assert_int_equal(distinct, 57);
}

static void test_generate_distinct(void **state)
{
    char a[33], b[33];
    assert_int_equal(password_generate(a, sizeof(a), 32), 0);
    assert_int_equal(password_generate(b, sizeof(b), 32), 0);
    assert_string_not_equal(a, b);
}

static void test_generate_bounds(void **state)
{
    char buf[8];
    memset(buf, '#', sizeof(buf));
    assert_int_equal(password_generate(buf, sizeof(buf), 8), -1); /* no room for NUL */
    assert_int_equal(password_generate(buf, sizeof(buf), 0), -1);
    assert_int_equal(password_generate(NULL, 8, 4), -1);
    assert_int_equal(password_generate(buf, sizeof(buf), 7), 0);
    assert_int_equal(strlen(buf), 7);
    char one[2];
    assert_int_equal(password_generate(one, sizeof(one), 1), 0);
    assert_int_equal(strlen(one), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_and_verify),
        cmocka_unit_test(test_hash_salted),
        cmocka_unit_test(test_hash_bounds),
        cmocka_unit_test(test_verify_malformed_hashes),
        cmocka_unit_test(test_generate_alphabet_and_length),
        cmocka_unit_test(test_generate_distinct),
        cmocka_unit_test(test_generate_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests: SMTP reply lines, enhanced codes, EHLO keywords. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "relay/smtp_reply.h"

static enum smtp_reply_feed feed(struct smtp_reply *r, const char *line)
{
    return smtp_reply_feed(r, line, strlen(line));
}

static void test_multiline_and_enhanced(void **state)
{
    (void)state;
    struct smtp_reply r;
    smtp_reply_init(&r);
    assert_int_equal(feed(&r, "550-5.1.1 first line"), SMTP_REPLY_MORE);
    assert_int_equal(feed(&r, "550 5.1.1 no such user"), SMTP_REPLY_DONE);
    assert_int_equal(r.code, 550);
    assert_string_equal(r.enhanced, "5.1.1");
    assert_string_equal(r.text, "550-5.1.1 first line\n550 5.1.1 no such user");

    smtp_reply_init(&r);
    assert_int_equal(feed(&r, "250"), SMTP_REPLY_DONE); /* bare code */
    smtp_reply_init(&r);
    assert_int_equal(feed(&r, "451 4.7.1 greylisted"), SMTP_REPLY_DONE);
    assert_string_equal(r.enhanced, "4.7.1");
    smtp_reply_init(&r);
    assert_int_equal(feed(&r, "550 4.1.1 class differs"), SMTP_REPLY_DONE);
    assert_string_equal(r.enhanced, ""); /* an enhanced code must match the reply class */
    smtp_reply_init(&r);
    feed(&r, "250 2.1.0x"); /* not a code */
    assert_string_equal(r.enhanced, "");
}

static void test_invalid_lines(void **state)
{
    (void)state;
    struct smtp_reply r;
    smtp_reply_init(&r);
    assert_int_equal(feed(&r, "hello"), SMTP_REPLY_INVALID);
    assert_int_equal(feed(&r, "25"), SMTP_REPLY_INVALID);
    assert_int_equal(feed(&r, "250x"), SMTP_REPLY_INVALID);
    assert_int_equal(feed(&r, "650 nope"), SMTP_REPLY_INVALID);
    assert_int_equal(feed(&r, "250-a"), SMTP_REPLY_MORE);
    assert_int_equal(feed(&r, "251 b"), SMTP_REPLY_INVALID); /* codes must agree */
    smtp_reply_init(&r);
    for (int i = 0; i < SMTP_REPLY_LINES_MAX; i++)
        assert_int_equal(feed(&r, "250-x"), SMTP_REPLY_MORE);
    assert_int_equal(feed(&r, "250 x"), SMTP_REPLY_INVALID); /* too many lines */
    /* control bytes never reach the kept text */
    smtp_reply_init(&r);
    assert_int_equal(smtp_reply_feed(&r, "550 a\rb\0c", 9), SMTP_REPLY_DONE);
    assert_null(strchr(r.text, '\r'));
    assert_int_equal(strlen(r.text), 9);
}

static void test_ehlo(void **state)
{
    (void)state;
    struct smtp_reply r;
    smtp_reply_init(&r);
    const char *lines[] = {"250-mx.example.test hello", "250-pipelining", "250-SIZE 10485760",
                           "250-STARTTLS", "250-AUTH=LOGIN", "250-AUTH PLAIN LOGIN CRAM-MD5",
                           "250 8BITMIME"};
    for (size_t i = 0; i < 7; i++)
        feed(&r, lines[i]);
    struct smtp_ehlo_caps c;
    smtp_ehlo_parse(&r, &c);
    assert_true(c.has_pipelining && c.has_starttls && c.has_8bitmime && c.has_size);
    assert_true(c.has_auth_plain && c.has_auth_login);
    assert_int_equal(c.size_max, 10485760);

    smtp_reply_init(&r);
    feed(&r, "250-mx hello");
    feed(&r, "250-SIZE");
    feed(&r, "250-STARTTLSX");
    feed(&r, "250 AUTH LOGIN");
    smtp_ehlo_parse(&r, &c);
    assert_true(c.has_size);
    assert_int_equal(c.size_max, 0);
    assert_false(c.has_starttls);
    assert_false(c.has_pipelining);
    assert_true(c.has_auth_login);
    assert_false(c.has_auth_plain);

    smtp_reply_init(&r);
    feed(&r, "502 no EHLO here");
    smtp_ehlo_parse(&r, &c);
    assert_false(c.has_size || c.has_starttls);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_multiline_and_enhanced),
        cmocka_unit_test(test_invalid_lines),
        cmocka_unit_test(test_ehlo),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests: RFC 3464 DSN composition — structure, per-recipient fields,
 * the original headers without the body, and hostile text kept on one line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "relay/bounce.h"

static const char orig[] = "Received: from printer\r\n"
                           "Subject: Scan from MFP\r\n"
                           "From: <scanner@example.test>\r\n"
                           "\r\n"
                           "SECRET BODY LINE\r\n";

static char *compose(enum bounce_kind kind, const struct bounce_rcpt *r, size_t n)
{
    struct bounce_input in = {
        .kind = kind, .reporting_mta = "relay.example.test", .qid = "2TCxQkTY6lXdKxS",
        .from = "MAILER-DAEMON@relay.example.test", .to = "scanner@example.test",
        .orig_sender = "scanner@example.test", .arrival_at = 1700000000, .now = 1700003600,
        .message_id = "<2TCxQkTY6lXdKxS.dsn@relay.example.test>", .rcpts = r,
        .rcpt_count = n, .orig = (const uint8_t *)orig, .orig_len = sizeof(orig) - 1,
        .retry_until = kind == BOUNCE_DELAYED ? 1700432000 : 0,
    };
    uint8_t *out = NULL;
    size_t len = 0;
    assert_int_equal(bounce_compose(&in, &out, &len), 0);
    char *s = malloc(len + 1);
    memcpy(s, out, len);
    s[len] = '\0';
    free(out);
    assert_int_equal(strlen(s), len); /* no NUL inside */
    return s;
}

static void assert_crlf_only(const char *s)
{
    for (const char *p = s; *p; p++) {
        if (*p == '\n')
            assert_true(p > s && p[-1] == '\r');
        if (*p == '\r')
            assert_true(p[1] == '\n');
    }
}

static void test_failed_dsn(void **state)
{
    (void)state;
    struct bounce_rcpt r[] = {
        {.rcpt = "bad@partial.test", .status = "5.1.1", .remote_mta = "mx.partial.test",
         .diagnostic = "550 5.1.1 <bad@partial.test>: no such user", .is_remote_reply = true,
         .last_attempt_at = 1700003600},
        {.rcpt = "x@nullmx.test", .status = "5.1.10",
         .diagnostic = "nullmx.test does not accept mail (null MX)"},
    };
    char *s = compose(BOUNCE_FAILED, r, 2);
    assert_crlf_only(s);
    assert_non_null(strstr(s, "Content-Type: multipart/report; report-type=delivery-status;"));
    assert_non_null(strstr(s, "Auto-Submitted: auto-replied\r\n"));
    assert_non_null(strstr(s, "Subject: Undelivered Mail Returned to Sender: Scan from MFP\r\n"));
    assert_non_null(strstr(s, "Content-Type: message/delivery-status\r\n"));
    assert_non_null(strstr(s, "Reporting-MTA: dns; relay.example.test\r\n"));
    assert_non_null(strstr(s, "Final-Recipient: rfc822; bad@partial.test\r\nOriginal-Recipient: "
                              "rfc822; bad@partial.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
                              "Remote-MTA: dns; mx.partial.test\r\nDiagnostic-Code: smtp; 550 "
                              "5.1.1 <bad@partial.test>: no such user\r\n"));
    assert_non_null(strstr(s, "Status: 5.1.10\r\n"));
    assert_non_null(strstr(s, "Diagnostic-Code: x-local; nullmx.test does not accept mail"));
    assert_non_null(strstr(s, "Content-Type: text/rfc822-headers\r\n"));
    assert_non_null(strstr(s, "Subject: Scan from MFP\r\n"));
    assert_null(strstr(s, "SECRET BODY LINE")); /* headers only */
    /* the closing boundary ends the message */
    const char *b = strstr(s, "boundary=\"");
    assert_non_null(b);
    char boundary[128];
    size_t n = strcspn(b + 10, "\"");
    memcpy(boundary, b + 10, n);
    boundary[n] = '\0';
    char end[160];
    snprintf(end, sizeof(end), "\r\n--%s--\r\n", boundary);
    assert_true(strlen(s) > strlen(end));
    assert_string_equal(s + strlen(s) - strlen(end), end);
    free(s);
}

static void test_delayed_and_hostile_text(void **state)
{
    (void)state;
    struct bounce_rcpt r[] = {{
        .rcpt = "a@slow.test\r\nBcc: victim@example.test",
        .status = "4.4.1",
        .diagnostic = "451 try later\r\n\r\n--fake-boundary\r\nContent-Type: text/html",
        .is_remote_reply = true,
        .remote_mta = "mx.slow.test",
    }};
    char *s = compose(BOUNCE_DELAYED, r, 1);
    assert_crlf_only(s);
    assert_non_null(strstr(s, "Action: delayed\r\n"));
    assert_non_null(strstr(s, "Will-Retry-Until: "));
    assert_non_null(strstr(s, "Subject: Delayed Mail (still being retried)"));
    assert_null(strstr(s, "\r\nBcc:"));                  /* no injected header */
    assert_null(strstr(s, "\r\n--fake-boundary"));       /* no injected MIME part */
    assert_null(strstr(s, "\r\nContent-Type: text/html"));
    free(s);
}

static void test_invalid(void **state)
{
    (void)state;
    uint8_t *out = NULL;
    size_t len = 0;
    struct bounce_input in = {0};
    assert_int_equal(bounce_compose(&in, &out, &len), -22);
    assert_null(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failed_dsn),
        cmocka_unit_test(test_delayed_and_hostile_text),
        cmocka_unit_test(test_invalid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

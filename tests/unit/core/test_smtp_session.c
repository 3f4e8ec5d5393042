/* Unit tests for the SMTP engine (core/smtp_session.c), driven directly:
 * bytes in, replies out, requests answered by the test (a fake AUTH and a
 * fake commit). Dialogues are data: each step sends text and expects the
 * replies' leading "code enhanced" parts in order. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/smtp_session.h"

static time_t fixed_clock(void)
{
    return 1795000000; /* a fixed wall clock: Date: and Received: are predictable */
}

static struct smtp_session_params params(enum listener_mode mode)
{
    return (struct smtp_session_params){
        .session_id = "s1", .hostname = "mx.test", .client_ip = "192.0.2.7",
        .listener_name = "submission", .mode = mode, .bare_lf = BARE_LF_NORMALIZE,
        .max_message_size = 1000, .max_recipients = 3, .max_line_length = 100,
        .max_errors = 10, .clock = fixed_clock,
    };
}

/* Everything the engine wrote since the last call, as a string (caller frees). */
static char *take_output(struct smtp_session *s)
{
    size_t len;
    const uint8_t *out = smtp_session_output(s, &len);
    char *copy = malloc(len + 1);
    assert_non_null(copy);
    if (len > 0)
        memcpy(copy, out, len);
    copy[len] = '\0';
    smtp_session_output_consume(s);
    return copy;
}

/* Assert that output holds exactly these reply prefixes, one per line. */
static void expect_replies(struct smtp_session *s, const char *const *want)
{
    char *out = take_output(s);
    char *line = out;
    size_t i = 0;
    while (*line != '\0') {
        char *eol = strstr(line, "\r\n");
        assert_non_null(eol);
        *eol = '\0';
        /* multi-line replies: only the last line ("250 ") is matched */
        if (!(strlen(line) > 3 && line[3] == '-')) {
            assert_non_null(want[i]);
            if (strncmp(line, want[i], strlen(want[i])) != 0)
                fail_msg("reply %zu: got \"%s\", want \"%s…\"", i, line, want[i]);
            i++;
        }
        line = eol + 2;
    }
    if (want[i] != NULL)
        fail_msg("missing reply %zu: want \"%s\"", i, want[i]);
    free(out);
}

static enum session_request send_text(struct smtp_session *s, const char *text)
{
    assert_int_equal(smtp_session_input(s, (const uint8_t *)text, strlen(text)), 0);
    return smtp_session_run(s);
}

#define REPLIES(...) ((const char *const[]){__VA_ARGS__, NULL})

/* A TLS-established, authenticated session on a STARTTLS listener. */
static struct smtp_session *ready_session(struct smtp_session_params p)
{
    struct smtp_session *s = smtp_session_new(&p);
    assert_non_null(s);
    expect_replies(s, REPLIES("220 2.0.0 mx.test ESMTP"));
    assert_int_equal(send_text(s, "EHLO dev\r\nSTARTTLS\r\n"), SESSION_REQ_STARTTLS);
    expect_replies(s, REPLIES("250 ", "220 2.0.0"));
    smtp_session_tls_started(s, "TLS1.3", "TLS_AES_128_GCM_SHA256");
    assert_int_equal(send_text(s, "EHLO dev\r\nAUTH PLAIN AGEAYg==\r\n"), SESSION_REQ_AUTH);
    struct smtp_session_auth_args a;
    smtp_session_auth_args(s, &a);
    assert_true(a.is_start);
    assert_string_equal(a.mech, "PLAIN");
    assert_string_equal(a.text, "AGEAYg==");
    struct auth_outcome o = {.result = AUTH_OK};
    strcpy(o.user, "printer1");
    smtp_session_auth_done(s, &o);
    assert_int_equal(smtp_session_run(s), SESSION_REQ_NONE);
    expect_replies(s, REPLIES("250 ", "235 2.7.0"));
    return s;
}

static void test_before_tls_only_basic_commands(void **state)
{
    struct smtp_session_params p = params(LISTENER_STARTTLS);
    struct smtp_session *s = smtp_session_new(&p);
    expect_replies(s, REPLIES("220 2.0.0 mx.test ESMTP smarthost"));
    assert_int_equal(send_text(s, "EHLO dev\r\n"), SESSION_REQ_NONE);
    char *ehlo = take_output(s);
    assert_non_null(strstr(ehlo, "250-STARTTLS\r\n"));
    assert_non_null(strstr(ehlo, "250-SIZE 1000\r\n"));
    assert_null(strstr(ehlo, "AUTH"));
    free(ehlo);
    send_text(s, "AUTH PLAIN AGEAYg==\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"
                 "DATA\r\nVRFY x\r\nNOOP\r\nRSET\r\n");
    expect_replies(s, REPLIES("530 5.7.0", "530 5.7.0", "530 5.7.0", "530 5.7.0", "530 5.7.0",
                              "250 2.0.0", "250 2.0.0"));
    smtp_session_free(s);
}

static void test_starttls_discards_pipelined_plaintext(void **state)
{
    struct smtp_session_params p = params(LISTENER_STARTTLS);
    struct smtp_session *s = smtp_session_new(&p);
    free(take_output(s));
    assert_int_equal(send_text(s, "EHLO dev\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<evil@x.test>\r\n"),
                     SESSION_REQ_STARTTLS);
    expect_replies(s, REPLIES("250 ", "220 2.0.0"));
    smtp_session_tls_started(s, "TLS1.3", "TLS_AES_128_GCM_SHA256");
    /* nothing of the injected commands is answered inside TLS */
    assert_int_equal(smtp_session_run(s), SESSION_REQ_NONE);
    expect_replies(s, REPLIES(NULL));
    /* state was reset: EHLO is needed again */
    send_text(s, "MAIL FROM:<a@b.test>\r\n");
    expect_replies(s, REPLIES("503 5.5.1"));
    send_text(s, "EHLO dev\r\n");
    char *ehlo = take_output(s);
    assert_null(strstr(ehlo, "STARTTLS"));
    assert_non_null(strstr(ehlo, "250-AUTH PLAIN LOGIN\r\n"));
    free(ehlo);
    send_text(s, "STARTTLS\r\n");
    expect_replies(s, REPLIES("503 5.5.1"));
    smtp_session_free(s);
}

static void test_auth_exchange(void **state)
{
    struct smtp_session *s = ready_session(params(LISTENER_STARTTLS));
    send_text(s, "AUTH LOGIN\r\n");
    expect_replies(s, REPLIES("503 5.5.1")); /* already authenticated */
    smtp_session_free(s);

    struct smtp_session_params p = params(LISTENER_IMPLICIT);
    s = smtp_session_new(&p);
    expect_replies(s, REPLIES(NULL)); /* implicit TLS: greeting after the handshake */
    smtp_session_tls_started(s, "TLS1.2", "ECDHE-RSA-AES256-GCM");
    expect_replies(s, REPLIES("220 2.0.0 mx.test"));
    send_text(s, "EHLO dev\r\nMAIL FROM:<a@b.test>\r\n");
    expect_replies(s, REPLIES("250 ", "530 5.7.0 Authentication required"));
    assert_int_equal(send_text(s, "AUTH LOGIN\r\n"), SESSION_REQ_AUTH);
    struct smtp_session_auth_args a;
    smtp_session_auth_args(s, &a);
    assert_null(a.text);
    struct auth_outcome o = {.result = AUTH_CONTINUE};
    strcpy(o.challenge, "VXNlcm5hbWU6");
    smtp_session_auth_done(s, &o);
    expect_replies(s, REPLIES("334 VXNlcm5hbWU6"));
    /* the next line is a response, even if it looks like a command */
    assert_int_equal(send_text(s, "QUIT\r\n"), SESSION_REQ_AUTH);
    smtp_session_auth_args(s, &a);
    assert_false(a.is_start);
    assert_string_equal(a.text, "QUIT");
    smtp_session_auth_done(s, &o);
    expect_replies(s, REPLIES("334 "));
    assert_int_equal(send_text(s, "*\r\n"), SESSION_REQ_NONE);
    expect_replies(s, REPLIES("501 5.0.0"));
    const struct { enum auth_result r; const char *reply; } outcomes[] = {
        {AUTH_FAIL, "535 5.7.8"},    {AUTH_LOCKED, "454 4.7.0"}, {AUTH_TEMPFAIL, "454 4.7.0"},
        {AUTH_BAD_MECH, "504 5.5.4"}, {AUTH_BAD_BASE64, "501 5.5.2"},
    };
    for (size_t i = 0; i < sizeof(outcomes) / sizeof(*outcomes); i++) {
        assert_int_equal(send_text(s, "AUTH PLAIN =\r\n"), SESSION_REQ_AUTH);
        struct auth_outcome f = {.result = outcomes[i].r};
        smtp_session_auth_done(s, &f);
        expect_replies(s, REPLIES(outcomes[i].reply));
    }
    smtp_session_free(s);
}

static struct queue_commit_req *submit_message(struct smtp_session *s, const char *body)
{
    assert_int_equal(send_text(s, "MAIL FROM:<dev@b.test> SIZE=50\r\nRCPT TO:<x@c.test>\r\n"
                                  "RCPT TO:<\"y z\"@c.test>\r\nDATA\r\n"),
                     SESSION_REQ_NONE);
    expect_replies(s, REPLIES("250 2.1.0", "250 2.1.5", "250 2.1.5", "354 "));
    assert_int_equal(send_text(s, body), SESSION_REQ_COMMIT);
    return smtp_session_commit_req(s);
}

static void test_transaction_and_fixups(void **state)
{
    struct smtp_session *s = ready_session(params(LISTENER_STARTTLS));
    struct queue_commit_req *req =
        submit_message(s, "Subject: hi\r\n\r\n..dot\r\nline\r\n.\r\nNOOP\r\n");
    assert_non_null(req);
    assert_string_equal(req->sender, "dev@b.test");
    assert_int_equal(req->recipient_count, 2);
    assert_string_equal(req->recipients[1], "\"y z\"@c.test");
    assert_string_equal(req->auth_user, "printer1");
    assert_int_equal(req->body_len, strlen("Subject: hi\r\n\r\n.dot\r\nline\r\n"));
    assert_memory_equal(req->body, "Subject: hi\r\n\r\n.dot\r\nline\r\n", req->body_len);
    char *hdr = strndup((const char *)req->header, req->header_len);
    assert_non_null(strstr(hdr, "Received: from dev ([192.0.2.7])\r\n\tby mx.test (smarthost) "
                                "with ESMTPSA (TLS1.3 TLS_AES_128_GCM_SHA256)\r\n"
                                "\t(authenticated as printer1)\r\n\tid "));
    assert_non_null(strstr(hdr, "\r\nMessage-ID: <"));
    assert_non_null(strstr(hdr, "\r\nDate: "));
    free(hdr);
    char qid[QUEUE_ID_SIZE];
    strcpy(qid, req->qid);
    smtp_session_commit_done(s, QUEUE_OK);
    /* the pipelined NOOP waited for the commit, and is answered after 250 */
    assert_int_equal(smtp_session_run(s), SESSION_REQ_NONE);
    char want[64];
    snprintf(want, sizeof(want), "250 2.0.0 Ok: queued as %s", qid);
    expect_replies(s, REPLIES(want, "250 2.0.0"));

    /* Message-ID and Date present: not added again */
    req = submit_message(s, "Message-ID: <a@b>\r\ndate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nx\r\n.\r\n");
    hdr = strndup((const char *)req->header, req->header_len);
    assert_null(strstr(hdr, "Message-ID:"));
    assert_null(strstr(hdr, "Date:"));
    free(hdr);
    smtp_session_commit_done(s, QUEUE_ERR_BUSY);
    smtp_session_run(s);
    expect_replies(s, REPLIES("452 4.3.1"));
    smtp_session_free(s);
}

static void test_limits(void **state)
{
    struct smtp_session *s = ready_session(params(LISTENER_STARTTLS));
    send_text(s, "MAIL FROM:<a@b.test> SIZE=1001\r\n");
    expect_replies(s, REPLIES("552 5.3.4"));
    send_text(s, "MAIL FROM:<a@b.test>\r\nRCPT TO:<1@c.test>\r\nRCPT TO:<2@c.test>\r\n"
                 "RCPT TO:<3@c.test>\r\nRCPT TO:<4@c.test>\r\nDATA\r\n");
    expect_replies(s, REPLIES("250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.1.5", "452 4.5.3",
                              "354 "));
    /* oversize while streaming: 552 after the end, session still usable */
    char big[1500];
    memset(big, 'a', sizeof(big) - 8);
    strcpy(big + sizeof(big) - 8, "\r\n.\r\n");
    assert_int_equal(send_text(s, big), SESSION_REQ_NONE);
    expect_replies(s, REPLIES("552 5.3.4"));
    send_text(s, "RSET\r\n");
    expect_replies(s, REPLIES("250 2.0.0"));
    /* an over-long command line, split across reads */
    char longline[300];
    memset(longline, 'X', sizeof(longline) - 1);
    longline[sizeof(longline) - 1] = '\0';
    send_text(s, longline);
    send_text(s, longline);
    send_text(s, "\r\nNOOP\r\n");
    expect_replies(s, REPLIES("500 5.5.2", "250 2.0.0"));
    smtp_session_free(s);
}

static void test_pipelined_bad_rcpt_and_no_valid_rcpt(void **state)
{
    struct smtp_session *s = ready_session(params(LISTENER_STARTTLS));
    send_text(s, "MAIL FROM:<a@b.test>\r\nRCPT TO:<ok@c.test>\r\nRCPT TO:<bad address>\r\n"
                 "RCPT TO:<ok2@c.test>\r\nDATA\r\n");
    expect_replies(s, REPLIES("250 2.1.0", "250 2.1.5", "501 5.1.3", "250 2.1.5", "354 "));
    assert_int_equal(send_text(s, "hi\r\n.\r\n"), SESSION_REQ_COMMIT);
    assert_int_equal(smtp_session_commit_req(s)->recipient_count, 2);
    smtp_session_commit_done(s, QUEUE_OK);
    smtp_session_run(s);
    expect_replies(s, REPLIES("250 2.0.0 Ok: queued as "));
    send_text(s, "MAIL FROM:<a@b.test>\r\nRCPT TO:<bad address>\r\nDATA\r\n");
    expect_replies(s, REPLIES("250 2.1.0", "501 5.1.3", "554 5.5.1"));
    send_text(s, "RSET\r\nDATA\r\nRCPT TO:<x@y.test>\r\nMAIL FROM:<>\r\nMAIL FROM:<>\r\n");
    expect_replies(s, REPLIES("250 2.0.0", "503 5.5.1", "503 5.5.1", "250 2.1.0", "503 5.5.1"));
    smtp_session_free(s);
}

static void test_bare_lf_policies(void **state)
{
    /* normalise: one message, CRLF only, the smuggled commands are content */
    struct smtp_session *s = ready_session(params(LISTENER_STARTTLS));
    struct queue_commit_req *req =
        submit_message(s, "a\n.\nMAIL FROM:<x@y>\r\nb\r.\rc\r\n.\r\n");
    assert_non_null(req);
    for (size_t i = 0; i < req->body_len; i++) {
        if (req->body[i] == '\n')
            assert_true(i > 0 && req->body[i - 1] == '\r');
        if (req->body[i] == '\r')
            assert_true(i + 1 < req->body_len && req->body[i + 1] == '\n');
    }
    smtp_session_commit_done(s, QUEUE_OK);
    smtp_session_free(s);

    struct smtp_session_params p = params(LISTENER_STARTTLS);
    p.bare_lf = BARE_LF_REJECT;
    s = ready_session(p);
    send_text(s, "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n");
    free(take_output(s));
    assert_int_equal(send_text(s, "a\nb\r\n.\r\n"), SESSION_REQ_NONE);
    expect_replies(s, REPLIES("550 5.6.0"));
    smtp_session_free(s);
}

static void test_errors_end_the_session(void **state)
{
    struct smtp_session_params p = params(LISTENER_STARTTLS);
    p.max_errors = 5;
    struct smtp_session *s = smtp_session_new(&p);
    free(take_output(s));
    assert_int_equal(send_text(s, "X1\r\nX2\r\nX3\r\nX4\r\nX5\r\n"), SESSION_REQ_NONE);
    expect_replies(s, REPLIES("500 5.5.1", "500 5.5.1", "500 5.5.1", "500 5.5.1", "500 5.5.1"));
    assert_int_equal(send_text(s, "X6\r\nNOOP\r\n"), SESSION_REQ_CLOSE);
    expect_replies(s, REPLIES("421 4.7.0"));
    smtp_session_free(s);
}

static void test_misc_commands(void **state)
{
    struct smtp_session *s = ready_session(params(LISTENER_STARTTLS));
    send_text(s, "VRFY root\r\nHELP\r\nNOOP\r\nEXPN list\r\nHELO box\r\n");
    expect_replies(s, REPLIES("252 2.5.0", "214 2.0.0", "250 2.0.0", "502 5.5.1", "250 2.0.0"));
    assert_int_equal(send_text(s, "QUIT\r\nNOOP\r\n"), SESSION_REQ_CLOSE);
    expect_replies(s, REPLIES("221 2.0.0"));
    smtp_session_free(s);

    struct smtp_session_params p = params(LISTENER_STARTTLS);
    s = smtp_session_new(&p);
    free(take_output(s));
    smtp_session_close(s, SESSION_CLOSE_IDLE);
    expect_replies(s, REPLIES("421 4.4.2"));
    assert_int_equal(smtp_session_run(s), SESSION_REQ_CLOSE);
    smtp_session_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_before_tls_only_basic_commands),
        cmocka_unit_test(test_starttls_discards_pipelined_plaintext),
        cmocka_unit_test(test_auth_exchange),
        cmocka_unit_test(test_transaction_and_fixups),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_pipelined_bad_rcpt_and_no_valid_rcpt),
        cmocka_unit_test(test_bare_lf_policies),
        cmocka_unit_test(test_errors_end_the_session),
        cmocka_unit_test(test_misc_commands),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for core/smtp_parse.c: the command split, MAIL / RCPT paths and
 * parameters, the mailbox grammar and its length limits, HELO names. Tables
 * of (input, expected result); inputs carry explicit lengths so that NUL and
 * 8-bit bytes can be part of them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/smtp_parse.h"

#define S(lit) lit, sizeof(lit) - 1 /* a literal with its exact length */

/* ---- command line ------------------------------------------------------- */

struct command_case {
    const char *line;
    size_t len;
    int want_rc;
    enum smtp_verb verb;
    const char *arg;
};

static const struct command_case command_cases[] = {
    {S("EHLO printer.lan"), 0, SMTP_VERB_EHLO, "printer.lan"},
    {S("ehlo printer.lan"), 0, SMTP_VERB_EHLO, "printer.lan"},
    {S("HeLo x"), 0, SMTP_VERB_HELO, "x"},
    {S("MaIl FROM:<a@b.test> SIZE=5"), 0, SMTP_VERB_MAIL, "FROM:<a@b.test> SIZE=5"},
    {S("MAIL  FROM:<a@b.test>"), 0, SMTP_VERB_MAIL, "FROM:<a@b.test>"},
    {S("rcpt TO:<c@d.test>"), 0, SMTP_VERB_RCPT, "TO:<c@d.test>"},
    {S("DATA"), 0, SMTP_VERB_DATA, ""},
    {S("data   "), 0, SMTP_VERB_DATA, ""},
    {S("DATA x"), 0, SMTP_VERB_DATA, "x"},
    {S("RSET"), 0, SMTP_VERB_RSET, ""},
    {S("NOOP hello there "), 0, SMTP_VERB_NOOP, "hello there"},
    {S("QUIT"), 0, SMTP_VERB_QUIT, ""},
    {S("HELP"), 0, SMTP_VERB_HELP, ""},
    {S("VRFY postmaster"), 0, SMTP_VERB_VRFY, "postmaster"},
    {S("EXPN list"), 0, SMTP_VERB_EXPN, "list"},
    {S("StartTLS"), 0, SMTP_VERB_STARTTLS, ""},
    {S("AUTH PLAIN AGEAYg=="), 0, SMTP_VERB_AUTH, "PLAIN AGEAYg=="},
    {S("BDAT 100 LAST"), 0, SMTP_VERB_BDAT, "100 LAST"},
    {S("MAIL FROM:<\xc3\xa9@b>"), 0, SMTP_VERB_MAIL, "FROM:<\xc3\xa9@b>"}, /* refused later */
    {S(""), -1, SMTP_VERB_UNKNOWN, ""},
    {S(" HELO x"), -1, SMTP_VERB_UNKNOWN, ""},
    {S("FOO bar"), -1, SMTP_VERB_UNKNOWN, ""},
    {S("MAILFROM:<a@b>"), -1, SMTP_VERB_UNKNOWN, ""},
    {S("HEL"), -1, SMTP_VERB_UNKNOWN, ""},
    {S("STARTTLSX"), -1, SMTP_VERB_UNKNOWN, ""},
    {S("MAIL\0FROM:<a@b>"), -1, SMTP_VERB_UNKNOWN, ""},
    {S("NOOP\0"), -1, SMTP_VERB_UNKNOWN, ""},
    {S("NOOP \x01"), -1, SMTP_VERB_UNKNOWN, ""},
    {S("RSET\t"), -1, SMTP_VERB_UNKNOWN, ""},
    {S("DATA\r"), -1, SMTP_VERB_UNKNOWN, ""},
    {S("QUIT\n"), -1, SMTP_VERB_UNKNOWN, ""},
    {S("NOOP \x7f"), -1, SMTP_VERB_UNKNOWN, ""},
    {S("\x1b[2JQUIT"), -1, SMTP_VERB_UNKNOWN, ""},
};

static void test_command_parse(void **state)
{
    for (size_t i = 0; i < sizeof(command_cases) / sizeof(command_cases[0]); i++) {
        const struct command_case *c = &command_cases[i];
        struct smtp_command cmd;
        memset(&cmd, 0xa5, sizeof(cmd));
        int rc = smtp_command_parse(c->line, c->len, &cmd);
        if (rc != c->want_rc || cmd.verb != c->verb)
            fail_msg("case %zu: rc=%d verb=%d, want rc=%d verb=%d", i, rc, cmd.verb, c->want_rc,
                     c->verb);
        assert_non_null(cmd.arg);
        if (cmd.arg_len != strlen(c->arg) || memcmp(cmd.arg, c->arg, cmd.arg_len) != 0)
            fail_msg("case %zu: arg \"%.*s\", want \"%s\"", i, (int)cmd.arg_len, cmd.arg, c->arg);
        /* the argument points into the line, never past it */
        if (cmd.arg_len > 0)
            assert_true(cmd.arg >= c->line && cmd.arg + cmd.arg_len <= c->line + c->len);
    }
}

static void test_command_parse_null_line(void **state)
{
    struct smtp_command cmd;
    assert_int_equal(smtp_command_parse(NULL, 0, &cmd), -1);
    assert_int_equal(cmd.verb, SMTP_VERB_UNKNOWN);
}

static void test_verb_names(void **state)
{
    static const struct {
        enum smtp_verb verb;
        const char *name;
    } names[] = {
        {SMTP_VERB_UNKNOWN, "UNKNOWN"}, {SMTP_VERB_HELO, "HELO"}, {SMTP_VERB_EHLO, "EHLO"},
        {SMTP_VERB_MAIL, "MAIL"},       {SMTP_VERB_RCPT, "RCPT"}, {SMTP_VERB_DATA, "DATA"},
        {SMTP_VERB_RSET, "RSET"},       {SMTP_VERB_NOOP, "NOOP"}, {SMTP_VERB_QUIT, "QUIT"},
        {SMTP_VERB_HELP, "HELP"},       {SMTP_VERB_VRFY, "VRFY"}, {SMTP_VERB_EXPN, "EXPN"},
        {SMTP_VERB_STARTTLS, "STARTTLS"}, {SMTP_VERB_AUTH, "AUTH"}, {SMTP_VERB_BDAT, "BDAT"},
        {(enum smtp_verb)99, "UNKNOWN"}, {(enum smtp_verb)-1, "UNKNOWN"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        assert_string_equal(smtp_verb_name(names[i].verb), names[i].name);
        /* every real verb name parses back to its verb */
        if (names[i].verb != SMTP_VERB_UNKNOWN && strcmp(names[i].name, "UNKNOWN") != 0) {
            struct smtp_command cmd;
            assert_int_equal(smtp_command_parse(names[i].name, strlen(names[i].name), &cmd), 0);
            assert_int_equal(cmd.verb, names[i].verb);
        }
    }
}

/* ---- MAIL FROM ---------------------------------------------------------- */

struct mail_case {
    const char *args;
    size_t len;
    enum smtp_path_error want;
    const char *addr; /* expected on success */
    bool has_size;
    uint64_t size;
    enum smtp_body_type body;
    bool has_auth;
};

static const struct mail_case mail_cases[] = {
    /* basic forms */
    {S("FROM:<a@b.test>"), SMTP_PATH_OK, "a@b.test", false, 0, SMTP_BODY_UNSPEC, false},
    {S("from:<a@b.test>"), SMTP_PATH_OK, "a@b.test", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM: <a@b.test>"), SMTP_PATH_OK, "a@b.test", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:\t <a@b.test>"), SMTP_PATH_OK, "a@b.test", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test>   "), SMTP_PATH_OK, "a@b.test", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<>"), SMTP_PATH_OK, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<> SIZE=0"), SMTP_PATH_OK, "", true, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<first.last+tag@sub.example.com>"), SMTP_PATH_OK, "first.last+tag@sub.example.com",
     false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<!#$%&'*+-/=?^_`{|}~@x.test>"), SMTP_PATH_OK, "!#$%&'*+-/=?^_`{|}~@x.test", false,
     0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<scan@scan_01.corp.local>"), SMTP_PATH_OK, "scan@scan_01.corp.local", false, 0,
     SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b>"), SMTP_PATH_OK, "a@b", false, 0, SMTP_BODY_UNSPEC, false},
    /* quoted local parts, kept as sent */
    {S("FROM:<\"john doe\"@example.com>"), SMTP_PATH_OK, "\"john doe\"@example.com", false, 0,
     SMTP_BODY_UNSPEC, false},
    {S("FROM:<\"a\\\"b\\\\c\"@example.com>"), SMTP_PATH_OK, "\"a\\\"b\\\\c\"@example.com", false,
     0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<\"a>b@c\"@example.com>"), SMTP_PATH_OK, "\"a>b@c\"@example.com", false, 0,
     SMTP_BODY_UNSPEC, false},
    {S("FROM:<\"\"@example.com>"), SMTP_PATH_OK, "\"\"@example.com", false, 0, SMTP_BODY_UNSPEC,
     false},
    {S("FROM:<\"a\\>@example.com>"), SMTP_PATH_SYNTAX, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<\"a\"b@example.com>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<\"a\tb\"@example.com>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC,
     false},
    {S("FROM:<\"a\\\x01\"@example.com>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC,
     false},
    /* address literals */
    {S("FROM:<user@[192.0.2.1]>"), SMTP_PATH_OK, "user@[192.0.2.1]", false, 0, SMTP_BODY_UNSPEC,
     false},
    {S("FROM:<user@[IPv6:2001:db8::1]>"), SMTP_PATH_OK, "user@[IPv6:2001:db8::1]", false, 0,
     SMTP_BODY_UNSPEC, false},
    {S("FROM:<user@[ipv6:::ffff:192.0.2.1]>"), SMTP_PATH_OK, "user@[ipv6:::ffff:192.0.2.1]",
     false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<user@[IPv6:2001:db8::g]>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC,
     false},
    {S("FROM:<user@[IPv6:]>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<user@[IPv6:1:2:3:4:5:6:7:8:9]>"), SMTP_PATH_BAD_ADDRESS, "", false, 0,
     SMTP_BODY_UNSPEC, false},
    {S("FROM:<user@[2001:db8::1]>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<user@[192.0.2.256]>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<user@[192.0.2]>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<user@[1.2.3.4.5]>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<user@[0001.2.3.4]>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<user@[1.2.3.4]x>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<user@[x-tag:foo]>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<user@[]>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    /* source routes: checked, stripped, reported */
    {S("FROM:<@relay.test,@r2.test:user@b.test>"), SMTP_PATH_SOURCE_ROUTE, "user@b.test", false, 0,
     SMTP_BODY_UNSPEC, false},
    {S("FROM:<@relay.test:user@b.test> SIZE=7"), SMTP_PATH_SOURCE_ROUTE, "user@b.test", true, 7,
     SMTP_BODY_UNSPEC, false},
    {S("FROM:<@relay.test:>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<@:a@b.test>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<@r.test,:a@b.test>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<@r-.test:a@b.test>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<@b.test>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    /* mailbox syntax */
    {S("FROM:<a..b@c.test>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<.a@c.test>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a.@c.test>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b..c>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@-b.c>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b-.c>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.c.>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@.b.c>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b@c>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a b@c.test>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:< a@c.test>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a(c)@c.test>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<Postmaster>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    /* 8-bit and control bytes are refused in addresses */
    {S("FROM:<j\xc3\xa9@b.test>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b\xc3\xa9.test>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<\"\xc3\xa9\"@b.test>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<\"\\\xc3\"@b.test>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a\x01@b.test>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a\0@b.test>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test\x7f>"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
    /* envelope syntax */
    {S("FROM:a@b.test"), SMTP_PATH_SYNTAX, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test"), SMTP_PATH_SYNTAX, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM <a@b.test>"), SMTP_PATH_SYNTAX, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM :<a@b.test>"), SMTP_PATH_SYNTAX, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("TO:<a@b.test>"), SMTP_PATH_SYNTAX, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:"), SMTP_PATH_SYNTAX, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM"), SMTP_PATH_SYNTAX, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S(""), SMTP_PATH_SYNTAX, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test>SIZE=1"), SMTP_PATH_SYNTAX, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test>>"), SMTP_PATH_SYNTAX, "", false, 0, SMTP_BODY_UNSPEC, false},
    /* parameters */
    {S("FROM:<a@b.test> SIZE=100 BODY=8BITMIME"), SMTP_PATH_OK, "a@b.test", true, 100,
     SMTP_BODY_8BITMIME, false},
    {S("FROM:<a@b.test> size=100 body=8bitmime"), SMTP_PATH_OK, "a@b.test", true, 100,
     SMTP_BODY_8BITMIME, false},
    {S("FROM:<a@b.test>   BODY=7BIT    SIZE=1  "), SMTP_PATH_OK, "a@b.test", true, 1,
     SMTP_BODY_7BIT, false},
    {S("FROM:<a@b.test> AUTH=<>"), SMTP_PATH_OK, "a@b.test", false, 0, SMTP_BODY_UNSPEC, true},
    {S("FROM:<a@b.test> AUTH=dev+40b.test SIZE=3"), SMTP_PATH_OK, "a@b.test", true, 3,
     SMTP_BODY_UNSPEC, true},
    {S("FROM:<a@b.test> AUTH"), SMTP_PATH_BAD_PARAM, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> AUTH=<> AUTH=<>"), SMTP_PATH_BAD_PARAM, "", false, 0, SMTP_BODY_UNSPEC,
     false},
    /* SIZE edge cases: digits only, must fit in uint64 */
    {S("FROM:<a@b.test> SIZE=0"), SMTP_PATH_OK, "a@b.test", true, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> SIZE=18446744073709551615"), SMTP_PATH_OK, "a@b.test", true, UINT64_MAX,
     SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> SIZE=0000000000000000000000000100"), SMTP_PATH_OK, "a@b.test", true, 100,
     SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> SIZE=18446744073709551616"), SMTP_PATH_BAD_PARAM, "", false, 0,
     SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> SIZE=99999999999999999999"), SMTP_PATH_BAD_PARAM, "", false, 0,
     SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> SIZE="), SMTP_PATH_BAD_PARAM, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> SIZE"), SMTP_PATH_BAD_PARAM, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> SIZE=-1"), SMTP_PATH_BAD_PARAM, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> SIZE=+5"), SMTP_PATH_BAD_PARAM, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> SIZE=1e3"), SMTP_PATH_BAD_PARAM, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> SIZE=0x10"), SMTP_PATH_BAD_PARAM, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> SIZE=1=2"), SMTP_PATH_BAD_PARAM, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> SIZE=1 SIZE=2"), SMTP_PATH_BAD_PARAM, "", false, 0, SMTP_BODY_UNSPEC,
     false},
    {S("FROM:<a@b.test> SIZE = 1"), SMTP_PATH_BAD_PARAM, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> SIZE=\xc2\xb9"), SMTP_PATH_BAD_PARAM, "", false, 0, SMTP_BODY_UNSPEC,
     false},
    {S("FROM:<a@b.test> BODY=BINARYMIME"), SMTP_PATH_BAD_PARAM, "", false, 0, SMTP_BODY_UNSPEC,
     false},
    {S("FROM:<a@b.test> BODY"), SMTP_PATH_BAD_PARAM, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> BODY=7BIT BODY=7BIT"), SMTP_PATH_BAD_PARAM, "", false, 0,
     SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> X_Y=1"), SMTP_PATH_BAD_PARAM, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> -X=1"), SMTP_PATH_BAD_PARAM, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> =1"), SMTP_PATH_BAD_PARAM, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> SMTPUTF8"), SMTP_PATH_UNKNOWN_PARAM, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> RET=HDRS"), SMTP_PATH_UNKNOWN_PARAM, "", false, 0, SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> SIZE=1 X-FOO"), SMTP_PATH_UNKNOWN_PARAM, "", false, 0, SMTP_BODY_UNSPEC,
     false},
    {S("FROM:<a@b.test> X1 X2 X3 X4 X5 X6 X7 X8"), SMTP_PATH_UNKNOWN_PARAM, "", false, 0,
     SMTP_BODY_UNSPEC, false},
    {S("FROM:<a@b.test> X1 X2 X3 X4 X5 X6 X7 X8 X9"), SMTP_PATH_BAD_PARAM, "", false, 0,
     SMTP_BODY_UNSPEC, false},
    /* an address error is reported before any parameter error */
    {S("FROM:<a..b@c.test> FOO"), SMTP_PATH_BAD_ADDRESS, "", false, 0, SMTP_BODY_UNSPEC, false},
};

static void test_parse_mail(void **state)
{
    for (size_t i = 0; i < sizeof(mail_cases) / sizeof(mail_cases[0]); i++) {
        const struct mail_case *c = &mail_cases[i];
        char addr[SMTP_ADDR_MAX + 1];
        strcpy(addr, "stale");
        struct smtp_mail_params p;
        memset(&p, 0xa5, sizeof(p));
        enum smtp_path_error e = smtp_parse_mail(c->args, c->len, addr, &p);
        if (e != c->want)
            fail_msg("case %zu \"%s\": got %d, want %d", i, c->args, e, c->want);
        if (e != SMTP_PATH_OK && e != SMTP_PATH_SOURCE_ROUTE) {
            assert_string_equal(addr, ""); /* never a stale or partial address */
            assert_false(p.has_size);
            continue;
        }
        if (strcmp(addr, c->addr) != 0)
            fail_msg("case %zu: addr \"%s\", want \"%s\"", i, addr, c->addr);
        assert_int_equal(p.has_size, c->has_size);
        assert_true(p.size == c->size);
        assert_int_equal(p.body, c->body);
        assert_int_equal(p.has_auth, c->has_auth);
    }
}

/* ---- RCPT TO ------------------------------------------------------------ */

struct rcpt_case {
    const char *args;
    size_t len;
    enum smtp_path_error want;
    const char *addr;
};

static const struct rcpt_case rcpt_cases[] = {
    {S("TO:<c@d.test>"), SMTP_PATH_OK, "c@d.test"},
    {S("to: <c@d.test>"), SMTP_PATH_OK, "c@d.test"},
    {S("To:<\"y z\"@c.test>"), SMTP_PATH_OK, "\"y z\"@c.test"},
    {S("TO:<Postmaster>"), SMTP_PATH_OK, "Postmaster"},
    {S("TO:<postMASTER>"), SMTP_PATH_OK, "Postmaster"},
    {S("TO:<postmaster@d.test>"), SMTP_PATH_OK, "postmaster@d.test"},
    {S("TO:<@r.test:Postmaster>"), SMTP_PATH_SOURCE_ROUTE, "Postmaster"},
    {S("TO:<Postmasters>"), SMTP_PATH_BAD_ADDRESS, ""},
    {S("TO:<@r.test,@s.test:c@d.test>"), SMTP_PATH_SOURCE_ROUTE, "c@d.test"},
    {S("TO:<c@[IPv6:::1]>"), SMTP_PATH_OK, "c@[IPv6:::1]"},
    {S("TO:<>"), SMTP_PATH_NULL_NOT_ALLOWED, ""},
    {S("TO:<> NOTIFY=NEVER"), SMTP_PATH_NULL_NOT_ALLOWED, ""},
    {S("TO:<c@d.test> NOTIFY=NEVER"), SMTP_PATH_UNKNOWN_PARAM, ""},
    {S("TO:<c@d.test> ORCPT"), SMTP_PATH_UNKNOWN_PARAM, ""},
    {S("TO:<c@d.test> =x"), SMTP_PATH_BAD_PARAM, ""},
    {S("TO:<c@d.test>   "), SMTP_PATH_OK, "c@d.test"},
    {S("TO:<bad address>"), SMTP_PATH_BAD_ADDRESS, ""},
    {S("TO:<c@d.test>x"), SMTP_PATH_SYNTAX, ""},
    {S("TO:c@d.test"), SMTP_PATH_SYNTAX, ""},
    {S("TO:<c@d.test"), SMTP_PATH_SYNTAX, ""},
    {S("FROM:<c@d.test>"), SMTP_PATH_SYNTAX, ""},
    {S("T"), SMTP_PATH_SYNTAX, ""},
    {S("TO:<c\xff@d.test>"), SMTP_PATH_BAD_ADDRESS, ""},
};

static void test_parse_rcpt(void **state)
{
    for (size_t i = 0; i < sizeof(rcpt_cases) / sizeof(rcpt_cases[0]); i++) {
        const struct rcpt_case *c = &rcpt_cases[i];
        char addr[SMTP_ADDR_MAX + 1];
        strcpy(addr, "stale");
        enum smtp_path_error e = smtp_parse_rcpt(c->args, c->len, addr);
        if (e != c->want)
            fail_msg("case %zu \"%s\": got %d, want %d", i, c->args, e, c->want);
        if (strcmp(addr, c->addr) != 0)
            fail_msg("case %zu: addr \"%s\", want \"%s\"", i, addr, c->addr);
    }
}

/* ---- length limits: 64 local, 255 domain, 320 path ---------------------- */

/* A hostname of exactly len bytes: 63-byte labels joined by dots. */
static void make_domain(char *out, size_t len)
{
    for (size_t i = 0; i < len; i++)
        out[i] = (i % 64 == 63) ? '.' : 'd';
    if (len > 0 && out[len - 1] == '.')
        out[len - 1] = 'e'; /* never end on a dot; a 1-byte last label */
    out[len] = '\0';
}

struct limit_case {
    size_t local_len;
    size_t domain_len;
    bool quoted;
    enum smtp_path_error want;
};

static const struct limit_case limit_cases[] = {
    {64, 10, false, SMTP_PATH_OK},
    {65, 10, false, SMTP_PATH_TOO_LONG},
    {64, 10, true, SMTP_PATH_OK}, /* quotes count: 62 chars + 2 quotes */
    {65, 10, true, SMTP_PATH_TOO_LONG},
    {1, 255, false, SMTP_PATH_OK},
    {1, 256, false, SMTP_PATH_TOO_LONG},
    {64, 255, false, SMTP_PATH_OK}, /* 320: the largest path */
    {64, 256, false, SMTP_PATH_TOO_LONG},
    {65, 255, false, SMTP_PATH_TOO_LONG},
    {200, 200, false, SMTP_PATH_TOO_LONG},
    {10, 400, false, SMTP_PATH_TOO_LONG},
};

static void test_length_limits(void **state)
{
    for (size_t i = 0; i < sizeof(limit_cases) / sizeof(limit_cases[0]); i++) {
        const struct limit_case *c = &limit_cases[i];
        char mailbox[1024];
        size_t n = 0;
        if (c->quoted) {
            mailbox[n++] = '"';
            memset(mailbox + n, 'q', c->local_len - 2);
            n += c->local_len - 2;
            mailbox[n++] = '"';
        } else {
            memset(mailbox, 'l', c->local_len);
            n = c->local_len;
        }
        mailbox[n++] = '@';
        make_domain(mailbox + n, c->domain_len);
        n += c->domain_len;
        assert_int_equal(strlen(mailbox), n);

        char args[1100];
        int len = snprintf(args, sizeof(args), "FROM:<%s> SIZE=1", mailbox);
        char addr[SMTP_ADDR_MAX + 1];
        struct smtp_mail_params p;
        enum smtp_path_error e = smtp_parse_mail(args, (size_t)len, addr, &p);
        if (e != c->want)
            fail_msg("case %zu (local %zu, domain %zu): got %d, want %d", i, c->local_len,
                     c->domain_len, e, c->want);
        if (e == SMTP_PATH_OK)
            assert_string_equal(addr, mailbox);
        len = snprintf(args, sizeof(args), "TO:<%s>", mailbox);
        assert_int_equal(smtp_parse_rcpt(args, (size_t)len, addr), c->want);
        assert_int_equal(smtp_mailbox_is_valid(mailbox, n), c->want == SMTP_PATH_OK);
    }
}

static void test_label_limit(void **state)
{
    char mailbox[128] = "a@";
    memset(mailbox + 2, 'x', 63);
    strcpy(mailbox + 65, ".test");
    assert_true(smtp_mailbox_is_valid(mailbox, strlen(mailbox)));
    memset(mailbox + 2, 'x', 64);
    strcpy(mailbox + 66, ".test");
    assert_false(smtp_mailbox_is_valid(mailbox, strlen(mailbox)));
}

/* ---- mailbox grammar alone, HELO names ---------------------------------- */

struct bool_case {
    const char *s;
    size_t len;
    bool want;
};

static const struct bool_case mailbox_cases[] = {
    {S("a@b.test"), true},
    {S("A.B-c_d@EXAMPLE.com"), true},
    {S("\"john doe\"@example.com"), true},
    {S("\"a\\\"b\"@example.com"), true},
    {S("u@[192.0.2.1]"), true},
    {S("u@[IPv6:2001:db8::1]"), true},
    {S("u@[IPv6:2001:db8::1"), false},
    {S("u@192.0.2.1]"), false},
    {S("Postmaster"), false},
    {S("<a@b.test>"), false},
    {S("a@b.test "), false},
    {S(""), false},
    {S("@"), false},
    {S("a@"), false},
    {S("@b"), false},
    {S("\"a@b"), false},
    {S("\"a\"@"), false},
    {S("a@b\0c"), false},
    {S("a\xe2\x82\xac@b.test"), false},
};

static void test_mailbox_is_valid(void **state)
{
    for (size_t i = 0; i < sizeof(mailbox_cases) / sizeof(mailbox_cases[0]); i++) {
        const struct bool_case *c = &mailbox_cases[i];
        if (smtp_mailbox_is_valid(c->s, c->len) != c->want)
            fail_msg("case %zu \"%s\": want %d", i, c->s, c->want);
    }
    assert_false(smtp_mailbox_is_valid(NULL, 0));
}

static const struct bool_case helo_cases[] = {
    {S("printer.lan"), true},
    {S("[192.0.2.1]"), true},
    {S("HP_LaserJet-4000"), true},
    {S("x"), true},
    {S(""), false},
    {S("two words"), false},
    {S("tab\there"), false},
    {S("nul\0"), false},
    {S("caf\xc3\xa9"), false},
    {S("del\x7f"), false},
};

static void test_helo_is_valid(void **state)
{
    for (size_t i = 0; i < sizeof(helo_cases) / sizeof(helo_cases[0]); i++) {
        const struct bool_case *c = &helo_cases[i];
        if (smtp_helo_is_valid(c->s, c->len) != c->want)
            fail_msg("case %zu \"%s\": want %d", i, c->s, c->want);
    }
    char name[300];
    memset(name, 'h', sizeof(name));
    assert_true(smtp_helo_is_valid(name, 255));
    assert_false(smtp_helo_is_valid(name, 256));
    assert_false(smtp_helo_is_valid(NULL, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_command_parse),
        cmocka_unit_test(test_command_parse_null_line),
        cmocka_unit_test(test_verb_names),
        cmocka_unit_test(test_parse_mail),
        cmocka_unit_test(test_parse_rcpt),
        cmocka_unit_test(test_length_limits),
        cmocka_unit_test(test_label_limit),
        cmocka_unit_test(test_mailbox_is_valid),
        cmocka_unit_test(test_helo_is_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

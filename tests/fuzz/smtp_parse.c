/* Fuzz target: core/smtp_parse.c on arbitrary bytes — the command split, MAIL
 * and RCPT arguments, the mailbox grammar and HELO names. Invariants (abort on
 * violation): no read outside the input (ASan), the argument lies inside the
 * line, an accepted address is NUL-terminated, at most SMTP_ADDR_MAX bytes,
 * printable ASCII, valid by smtp_mailbox_is_valid and parses back to itself;
 * a refused one leaves addr empty; smtp_mailbox_is_valid agrees with RCPT. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/smtp_parse.h"

#define FUZZ_WRAP_MAX 1024 /* longer inputs are only checked unwrapped */

static void fuzz_check(bool ok)
{
    if (!ok)
        abort();
}

static void fuzz_check_addr(const char addr[SMTP_ADDR_MAX + 1])
{
    size_t n = strnlen(addr, SMTP_ADDR_MAX + 1);
    fuzz_check(n <= SMTP_ADDR_MAX);
    for (size_t i = 0; i < n; i++)
        fuzz_check((unsigned char)addr[i] >= 0x20 && (unsigned char)addr[i] < 0x7f);
}

static bool fuzz_path_ok(enum smtp_path_error e)
{
    return e == SMTP_PATH_OK || e == SMTP_PATH_SOURCE_ROUTE;
}

/* "PREFIX<mailbox>" into buf; returns its length. */
static size_t fuzz_wrap(char *buf, const char *prefix, const char *mailbox, size_t len)
{
    size_t p = strlen(prefix);
    memcpy(buf, prefix, p);
    memcpy(buf + p, mailbox, len);
    buf[p + len] = '>';
    return p + len + 1;
}

static void fuzz_command(const char *s, size_t size)
{
    struct smtp_command c;
    int rc = smtp_command_parse(s, size, &c);
    fuzz_check(c.arg != NULL && smtp_verb_name(c.verb) != NULL);
    if (rc < 0) {
        fuzz_check(c.verb == SMTP_VERB_UNKNOWN && c.arg_len == 0);
        return;
    }
    fuzz_check(c.verb != SMTP_VERB_UNKNOWN);
    if (c.arg_len > 0)
        fuzz_check(c.arg >= s && c.arg + c.arg_len <= s + size);
    for (size_t i = 0; i < c.arg_len; i++)
        fuzz_check((unsigned char)c.arg[i] >= 0x20 && (unsigned char)c.arg[i] != 0x7f);
    /* the verb's name parses back to the same verb */
    const char *name = smtp_verb_name(c.verb);
    struct smtp_command again;
    fuzz_check(smtp_command_parse(name, strlen(name), &again) == 0 && again.verb == c.verb);
}

static void fuzz_mail(const char *s, size_t size)
{
    char addr[SMTP_ADDR_MAX + 1];
    struct smtp_mail_params p;
    enum smtp_path_error e = smtp_parse_mail(s, size, addr, &p);
    fuzz_check_addr(addr);
    if (!fuzz_path_ok(e)) {
        fuzz_check(addr[0] == '\0' && !p.has_size && p.size == 0 && !p.has_auth &&
                   p.body == SMTP_BODY_UNSPEC);
        return;
    }
    fuzz_check(p.has_size || p.size == 0);
    size_t n = strlen(addr);
    if (n == 0)
        return; /* the null sender */
    fuzz_check(smtp_mailbox_is_valid(addr, n));
    char buf[SMTP_ADDR_MAX + 16];
    char again[SMTP_ADDR_MAX + 1];
    struct smtp_mail_params p2;
    fuzz_check(smtp_parse_mail(buf, fuzz_wrap(buf, "FROM:<", addr, n), again, &p2) ==
               SMTP_PATH_OK);
    fuzz_check(strcmp(addr, again) == 0);
}

static void fuzz_rcpt(const char *s, size_t size)
{
    char addr[SMTP_ADDR_MAX + 1];
    enum smtp_path_error e = smtp_parse_rcpt(s, size, addr);
    fuzz_check_addr(addr);
    if (!fuzz_path_ok(e)) {
        fuzz_check(addr[0] == '\0');
        return;
    }
    size_t n = strlen(addr);
    fuzz_check(n > 0);
    fuzz_check(strcmp(addr, "Postmaster") == 0 || smtp_mailbox_is_valid(addr, n));
}

/* The mailbox grammar alone must agree with what RCPT accepts. */
static void fuzz_mailbox(const char *s, size_t size)
{
    bool valid = smtp_mailbox_is_valid(s, size);
    if (size > FUZZ_WRAP_MAX)
        return;
    if ((size > 0 && s[0] == '@') || (size == 10 && strncasecmp(s, "Postmaster", 10) == 0))
        return; /* a source route or the special recipient: RCPT rewrites them */
    char buf[FUZZ_WRAP_MAX + 16];
    char addr[SMTP_ADDR_MAX + 1];
    enum smtp_path_error e = smtp_parse_rcpt(buf, fuzz_wrap(buf, "TO:<", s, size), addr);
    bool same = e == SMTP_PATH_OK && strlen(addr) == size && memcmp(addr, s, size) == 0;
    fuzz_check(valid == same);
    if (valid)
        fuzz_check(size <= SMTP_ADDR_MAX);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    fuzz_command(s, size);
    fuzz_mail(s, size);
    fuzz_rcpt(s, size);
    fuzz_mailbox(s, size);
    bool helo = smtp_helo_is_valid(s, size);
    fuzz_check(!helo || (size >= 1 && size <= 255 && memchr(s, ' ', size) == NULL));
    /* a command line: whatever follows the verb goes to the right parser */
    struct smtp_command c;
    if (smtp_command_parse(s, size, &c) == 0) {
        if (c.verb == SMTP_VERB_MAIL)
            fuzz_mail(c.arg, c.arg_len);
        else if (c.verb == SMTP_VERB_RCPT)
            fuzz_rcpt(c.arg, c.arg_len);
        else if (c.verb == SMTP_VERB_EHLO || c.verb == SMTP_VERB_HELO)
            (void)smtp_helo_is_valid(c.arg, c.arg_len);
    }
    return 0;
}

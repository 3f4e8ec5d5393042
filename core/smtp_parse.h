/* smtp_parse.h — pure parsers for what an SMTP client sends on the command
 * channel: the verb, MAIL FROM / RCPT TO paths with their parameters, and the
 * mailbox grammar of RFC 5321 §4.1.2 (dot-atom or quoted-string local part,
 * domain or address literal). No allocation, no I/O; fuzzed
 * (tests/fuzz/smtp_parse.c). Input is one line WITHOUT its CRLF. */
#ifndef SMARTHOST_SMTP_PARSE_H
#define SMARTHOST_SMTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SMTP_ADDR_MAX 320   /* 64 local + @ + 255 domain (RFC 5321 §4.5.3.1) */
#define SMTP_PARAM_MAX 8

enum smtp_verb {
    SMTP_VERB_UNKNOWN = 0,
    SMTP_VERB_HELO, SMTP_VERB_EHLO, SMTP_VERB_MAIL, SMTP_VERB_RCPT,
    SMTP_VERB_DATA, SMTP_VERB_RSET, SMTP_VERB_NOOP, SMTP_VERB_QUIT,
    SMTP_VERB_HELP, SMTP_VERB_VRFY, SMTP_VERB_EXPN, SMTP_VERB_STARTTLS,
    SMTP_VERB_AUTH, SMTP_VERB_BDAT,
};

struct smtp_command {
    enum smtp_verb verb;
    const char *arg;     /* points into the line after the verb and one space; "" if none */
    size_t arg_len;
};

/* Split "VERB[ args]": verb matched case-insensitively. Returns 0, or -1 when
 * the line is empty or the verb unknown (verb = SMTP_VERB_UNKNOWN). NUL bytes
 * or other control characters in the line make it -1 too. */
int smtp_command_parse(const char *line, size_t len, struct smtp_command *out);
const char *smtp_verb_name(enum smtp_verb verb);

enum smtp_path_error {
    SMTP_PATH_OK = 0,
    SMTP_PATH_SYNTAX,        /* not "FROM:<…>" / "TO:<…>", or missing brackets */
    SMTP_PATH_BAD_ADDRESS,   /* mailbox syntax */
    SMTP_PATH_TOO_LONG,      /* local part > 64, domain > 255, path > SMTP_ADDR_MAX */
    SMTP_PATH_NULL_NOT_ALLOWED, /* "<>" in RCPT */
    SMTP_PATH_BAD_PARAM,     /* malformed "KEY=VALUE" */
    SMTP_PATH_UNKNOWN_PARAM, /* a parameter we do not support: 555 5.5.4 */
    SMTP_PATH_SOURCE_ROUTE,  /* "<@a,@b:user@c>": accepted and stripped, never an error */
};

enum smtp_body_type { SMTP_BODY_UNSPEC, SMTP_BODY_7BIT, SMTP_BODY_8BITMIME };

struct smtp_mail_params {
    uint64_t size;          /* SIZE=, 0 when absent */
    bool has_size;
    enum smtp_body_type body;
    bool has_auth;          /* AUTH=<…> given (accepted, value ignored) */
};

/* args: the text after "MAIL " ("FROM:<a@b> SIZE=10"). Whitespace after the
 * colon is tolerated (common in devices). addr receives the mailbox without
 * brackets ("" for <>), quoted local parts kept as sent. */
enum smtp_path_error smtp_parse_mail(const char *args, size_t len, char addr[SMTP_ADDR_MAX + 1],
                                     struct smtp_mail_params *params);
/* args after "RCPT " ("TO:<a@b>"); no parameters are supported. "<Postmaster>"
 * (no domain) is accepted as "Postmaster". */
enum smtp_path_error smtp_parse_rcpt(const char *args, size_t len, char addr[SMTP_ADDR_MAX + 1]);

/* Mailbox grammar alone (no brackets): "local@domain", local either
 * dot-atom or quoted-string, domain a hostname or [IPv4] / [IPv6:…] literal.
 * UTF-8 is refused (no SMTPUTF8). */
bool smtp_mailbox_is_valid(const char *s, size_t len);

/* A HELO/EHLO argument: a domain or address literal, 1..255 bytes. Lenient:
 * devices send odd names, so anything printable without spaces passes. */
bool smtp_helo_is_valid(const char *s, size_t len);

#endif

/* smtp_client.h — one outbound SMTP connection (libuv + GnuTLS): connect,
 * banner, EHLO (HELO fallback), STARTTLS by policy, AUTH PLAIN/LOGIN for a
 * relayhost, then any number of transactions (MAIL/RCPT/DATA, pipelined when
 * offered, remote SIZE respected, dot-stuffed), then QUIT. Reports which step
 * was reached and the remote reply, so queue show can say exactly what went
 * wrong. Classifying replies into delivered/deferred/bounced is retry.c's job;
 * this file reports codes and text. */
#ifndef SMARTHOST_RELAY_SMTP_CLIENT_H
#define SMARTHOST_RELAY_SMTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <gnutls/gnutls.h>
#include <uv.h>

enum client_step {
    CLIENT_STEP_DNS = 0, /* not used by the client; the runner records it */
    CLIENT_STEP_CONNECT,
    CLIENT_STEP_BANNER,
    CLIENT_STEP_EHLO,    /* EHLO, or HELO after EHLO was refused */
    CLIENT_STEP_STARTTLS,/* the command or the handshake */
    CLIENT_STEP_AUTH,
    CLIENT_STEP_MAIL,
    CLIENT_STEP_RCPT,
    CLIENT_STEP_DATA,    /* DATA command, content, or the final reply */
    CLIENT_STEP_QUIT,
    CLIENT_STEP_DONE,
};
const char *client_step_name(enum client_step step); /* "connect", "rcpt", … */

enum client_tls_policy {
    CLIENT_TLS_NONE = 0,       /* never STARTTLS */
    CLIENT_TLS_OPPORTUNISTIC,  /* STARTTLS when offered, any certificate */
    CLIENT_TLS_REQUIRE,        /* STARTTLS must succeed, any certificate */
    CLIENT_TLS_VERIFY,         /* must succeed, chain + host name verified (system CAs) */
};

struct client_options {
    const char *helo_name;          /* our host name for EHLO */
    enum client_tls_policy tls;
    bool is_implicit_tls;           /* TLS from the first byte (relayhost on 465) */
    const char *tls_server_name;    /* SNI and the name verified; NULL → none/no SNI */
    gnutls_certificate_credentials_t tls_creds; /* borrowed; system trust loaded */
    const char *tls_priority;       /* NULL → "NORMAL" */
    const char *auth_user;          /* non-NULL: AUTH (PLAIN, else LOGIN) after EHLO/TLS */
    const char *auth_password;
    unsigned connect_timeout_ms;    /* 0 → 30000 */
    unsigned command_timeout_ms;    /* banner, EHLO, MAIL, RCPT…; 0 → 300000 */
    unsigned data_timeout_ms;       /* waiting for the final 250 after ".": 0 → 600000 */
    const char *log_id;             /* prefix for log lines (queue id) or NULL */
};

/* Outcome of an open, or of a transaction. */
struct client_reply {
    int code;                 /* 3-digit SMTP code; 0 for a local error */
    char enhanced[16];        /* "5.1.1" when the peer sent one, else "" */
    char text[512];           /* the reply, lines joined by "\n", or the local error */
};

struct client_rcpt_result {
    struct client_reply reply; /* RCPT reply; if 2xx, then the DATA final reply */
};

struct client_result {
    enum client_step step;    /* CLIENT_STEP_DONE on success, else the step that failed */
    struct client_reply reply;/* reply (or local error) at that step */
    bool is_connection_failure; /* refused/timeout/reset/421/4xx at banner|EHLO|MAIL: try next address */
    bool is_tls_failure;      /* STARTTLS handshake failed (caller may retry in plaintext) */
    bool is_reusable;         /* the connection is open and idle: another transaction may follow */
    char tls[96];             /* "TLS1.3 AES-256-GCM" once TLS is up, else "" */
    char peer[80];            /* "127.0.0.2:25" / "[::1]:25" */
    /* per-recipient results, only for client_send (same order as the txn) */
    size_t rcpt_count;
    struct client_rcpt_result *rcpts;
};

struct client_txn {
    const char *sender;              /* "" for <> */
    const char *const *rcpts;
    size_t rcpt_count;
    const uint8_t *header;           /* prepended header lines (CRLF) or NULL */
    size_t header_len;
    const uint8_t *body;             /* message, CRLF lines, NOT dot-stuffed */
    size_t body_len;
    bool is_8bit;                    /* send BODY=8BITMIME when offered */
};

struct client_conn;
/* result valid only during the callback. After a callback whose result has
 * is_reusable false, the connection is already closing: do not use it. */
typedef void (*client_cb)(struct client_conn *c, const struct client_result *result, void *arg);

/* Connect to addr (port set by the caller) and get as far as ready-for-MAIL.
 * Returns 0 (cb runs exactly once, later) or negative (cb never runs). opt is
 * copied (with tls_server_name); its other strings and tls_creds are
 * borrowed until the connection is closed. */
int client_open(uv_loop_t *loop, const struct sockaddr *addr, const struct client_options *opt,
                client_cb cb, void *arg, struct client_conn **out);
/* One transaction on a ready connection (result.rcpts filled). The txn and
 * its buffers are borrowed until cb runs. Returns 0 or negative. */
int client_send(struct client_conn *c, const struct client_txn *txn, client_cb cb, void *arg);
/* Keep a ready, idle connection open for a later client_send: lost(c, arg)
 * runs once if it dies meanwhile (the peer closes it or says 421), after
 * which c must not be used. client_send, client_close and client_abort end
 * the parking (lost never runs after them). */
typedef void (*client_lost_cb)(struct client_conn *c, void *arg);
void client_park(struct client_conn *c, client_lost_cb lost, void *arg);
/* QUIT (best effort) and free; no callback. Safe on any open connection
 * that is not in the middle of client_send. */
void client_close(struct client_conn *c);
/* Stop at once whatever c is doing (connecting, in the middle of
 * client_send, …): no callback runs afterwards, the socket is closed without
 * QUIT, memory is released once the loop has run the close callbacks. For
 * shutting down with deliveries under way. */
void client_abort(struct client_conn *c);

#endif

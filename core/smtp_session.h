/* smtp_session.h — the server-side SMTP protocol engine, free of I/O.
 *
 * The glue (core/session_io.c) feeds received plaintext with
 * smtp_session_input(), calls smtp_session_run(), writes whatever the engine
 * queued in smtp_session_output(), and executes the request run() returns
 * (STARTTLS handshake, an AUTH step on a worker, a queue commit, close).
 * When the request completes the glue reports back (…_done) and calls run()
 * again. While a request is pending the engine consumes no input, so the
 * glue stops reading: pipelined commands wait in the input buffer, in order.
 * Unit tests and the fuzzer drive this engine directly. One thread at a time. */
#ifndef SMARTHOST_SMTP_SESSION_H
#define SMARTHOST_SMTP_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "auth/auth.h"
#include "core/config.h"
#include "core/queue.h"
#include "core/smtp_data.h"
#include "core/smtp_parse.h"

enum session_state {
    SESSION_STATE_CONNECTED, /* greeted, waiting for EHLO/HELO */
    SESSION_STATE_READY,     /* EHLO seen, no transaction */
    SESSION_STATE_MAIL,      /* MAIL accepted, no recipient yet */
    SESSION_STATE_RCPT,      /* at least one recipient */
    SESSION_STATE_DATA,      /* reading message content */
    SESSION_STATE_AUTH,      /* SASL exchange: next line is a response */
    SESSION_STATE_CLOSING,   /* nothing more is read */
};

enum session_request {
    SESSION_REQ_NONE,     /* need more input */
    SESSION_REQ_STARTTLS, /* flush output, then begin the server handshake */
    SESSION_REQ_AUTH,     /* run auth_session_start/step with smtp_session_auth_args() */
    SESSION_REQ_COMMIT,   /* submit smtp_session_commit_req() to the queue */
    SESSION_REQ_CLOSE,    /* flush output, then close */
};

/* Everything the engine needs to know about its listener and limits;
 * copied at smtp_session_new, so a reload never changes a running session. */
struct smtp_session_params {
    const char *session_id;   /* "s1f" — log prefix until a queue id exists */
    const char *hostname;
    const char *client_ip;    /* text form */
    const char *listener_name;
    enum listener_mode mode;
    enum bare_lf_policy bare_lf;
    bool allow_plaintext_auth;
    uint64_t max_message_size;
    unsigned max_recipients;
    unsigned max_line_length;
    unsigned max_errors;
    time_t (*clock)(void);    /* wall clock for Date: / Received:; NULL = time() */
    /* the client is on one of the listener's trusted_networks: no TLS or AUTH
     * needed, mail is sent as this account (its policy and quotas apply) */
    const char *trusted_account;
};

struct smtp_session;

/* Caller frees with smtp_session_free. The greeting (or, for an implicit TLS
 * listener, nothing until smtp_session_tls_started) is queued at once. */
struct smtp_session *smtp_session_new(const struct smtp_session_params *p);
void smtp_session_free(struct smtp_session *s);

/* Append received plaintext. Returns 0, or -1 if the buffer cap is reached
 * (the glue should have stopped reading; close the session). */
int smtp_session_input(struct smtp_session *s, const uint8_t *data, size_t len);
/* Process buffered input until more is needed or a request is raised. */
enum session_request smtp_session_run(struct smtp_session *s);

/* Replies queued so far (borrowed); call consume after writing them. */
const uint8_t *smtp_session_output(const struct smtp_session *s, size_t *len);
void smtp_session_output_consume(struct smtp_session *s);

/* STARTTLS: the handshake finished (version/cipher for Received:). For an
 * implicit TLS listener this also sends the greeting. Resets the session
 * (RFC 3207 §4.2): EHLO must be sent again. */
void smtp_session_tls_started(struct smtp_session *s, const char *version, const char *cipher);

/* AUTH: the mechanism and the client text to process; is_start tells
 * auth_session_start (mech, initial) from auth_session_step (response). */
struct smtp_session_auth_args {
    bool is_start;
    const char *mech;     /* is_start only */
    const char *text;     /* initial response (NULL if none) or continuation */
};
void smtp_session_auth_args(const struct smtp_session *s, struct smtp_session_auth_args *out);
/* Report the outcome (after any delay_ms has passed). */
void smtp_session_auth_done(struct smtp_session *s, const struct auth_outcome *o);

/* COMMIT: a request filled from the transaction, borrowed until
 * smtp_session_commit_done; the glue sets cb/data and submits it. */
struct queue_commit_req *smtp_session_commit_req(struct smtp_session *s);
void smtp_session_commit_done(struct smtp_session *s, int status);

/* Timers and shutdown: queue 421 (idle: 4.4.2, total time: 4.4.2, shutdown:
 * 4.3.2) and move to CLOSING. */
enum session_close_reason { SESSION_CLOSE_IDLE, SESSION_CLOSE_TIMEOUT, SESSION_CLOSE_SHUTDOWN };
void smtp_session_close(struct smtp_session *s, enum session_close_reason why);

enum session_state smtp_session_state(const struct smtp_session *s);
bool smtp_session_is_busy(const struct smtp_session *s); /* inside a transaction */
const char *smtp_session_user(const struct smtp_session *s); /* "" until AUTH */
const char *smtp_session_state_name(enum session_state st);

/* A one-line refusal for a connection we will not serve (limits), e.g.
 * "421 4.7.0 host Too many connections from your address\r\n". */
int smtp_session_format_refusal(char *out, size_t out_size, const char *hostname,
                                const char *why);

#endif

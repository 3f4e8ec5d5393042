/* auth.h — the SMTP AUTH exchange (RFC 4954) through Cyrus SASL (libsasl2,
 * PLAIN and LOGIN from libsasl2-modules). Passwords are checked by our
 * SASL_CB_SERVER_USERDB_CHECKPASS callback against yescrypt hashes in the
 * store; lockouts (throttle.h) are consulted before any hash is computed.
 *
 * Blocking (the checkpass step runs yescrypt and SQLite): call start/step on
 * a worker thread, never on a loop thread. An auth_session is used by one
 * thread at a time. Base64 is handled here: the caller passes the client's
 * text as received and sends back the challenge text as given. */
#ifndef SMARTHOST_AUTH_H
#define SMARTHOST_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/throttle.h"

enum auth_result {
    AUTH_OK,          /* 235 2.7.0 */
    AUTH_CONTINUE,    /* 334 <challenge> */
    AUTH_FAIL,        /* 535 5.7.8 after delay_ms */
    AUTH_LOCKED,      /* 454 4.7.0: IP or account locked out */
    AUTH_TEMPFAIL,    /* 454 4.7.0: storage error */
    AUTH_BAD_MECH,    /* 504 5.5.4: mechanism not offered */
    AUTH_BAD_BASE64,  /* 501 5.5.2: malformed response */
};

struct auth_outcome {
    enum auth_result result;
    char challenge[512];  /* for AUTH_CONTINUE: base64 text to send after "334 " */
    uint32_t delay_ms;    /* for AUTH_FAIL: wait this long before the reply */
    bool locked_now;      /* this failure started a lockout */
    char user[256];       /* the user name tried (OK, FAIL, LOCKED), else "" */
    /* for AUTH_OK: the account's sender list ("" = any) and its own limits
     * (-1 = the global one), checked at MAIL and RCPT; the commit checks
     * them again with fresh data */
    char senders[1024];
    int64_t max_size;
    int64_t max_rcpts;
};

/* Process-wide: sasl_server_init with our callbacks. db_path and the
 * throttle are borrowed for the life of the process. Call once before any
 * auth_session_new, on the main thread. Returns 0 or -1. */
int auth_global_init(const char *db_path, unsigned busy_timeout_ms, struct throttle *throttle);
void auth_global_done(void);

struct auth_session;

/* remote_ip: the client address as text (for throttling and logs);
 * local_host: our host name. Caller frees with auth_session_free. */
struct auth_session *auth_session_new(const char *local_host, const char *remote_ip);
void auth_session_free(struct auth_session *as);

/* "AUTH mech [initial]": initial is NULL when absent, "=" for an empty
 * initial response (RFC 4954 §4). */
void auth_session_start(struct auth_session *as, const char *mech, const char *initial,
                        uint64_t now_ms, struct auth_outcome *out);
/* A continuation line from the client (not "*": the caller handles cancel). */
void auth_session_step(struct auth_session *as, const char *response, uint64_t now_ms,
                       struct auth_outcome *out);

/* The mechanisms offered, space separated ("PLAIN LOGIN"). Static. */
const char *auth_mechanisms(void);

#endif

/* store.h — the account store in SQLite (WAL mode): accounts and their
 * password hashes. Synchronous, blocking calls: in the daemon they run on
 * worker threads only. One struct store per thread (a SQLite connection is
 * not shared between threads). Knows nothing of libuv or sockets.
 *
 * Schema changes go through versioned migrations kept in schema_version
 * (module TEXT PRIMARY KEY, version INTEGER): this module owns module
 * "auth"; core/queue.c owns "queue" in the same database file. */
#ifndef SMARTHOST_STORE_H
#define SMARTHOST_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_NAME_MAX 255  /* user names: 1..255 bytes, printable, no space */
/* Added by the auth module: an account's free-text note for admins, and the
 * longest password libcrypt accepts (CRYPT_MAX_PASSPHRASE_SIZE - 1). */
#define STORE_DESCRIPTION_MAX 255
#define STORE_PASSWORD_MAX 511

enum store_status {
    STORE_OK = 0,
    STORE_NOT_FOUND = -1,   /* no such user */
    STORE_EXISTS = -2,      /* user add: name taken */
    STORE_INVALID = -3,     /* bad name or empty password */
    STORE_BUSY = -4,        /* database locked past the busy timeout */
    STORE_ERROR = -5,       /* any other SQLite or I/O error */
};

enum store_auth_result {
    STORE_AUTH_OK,
    STORE_AUTH_BAD_PASSWORD,
    STORE_AUTH_NO_USER,     /* caller must not reveal this to the client */
    STORE_AUTH_DISABLED,
    STORE_AUTH_ERROR,       /* storage error: tempfail */
};

struct account {
    int64_t id;
    char name[STORE_NAME_MAX + 1];
    bool is_enabled;
    int64_t created_at;      /* unix seconds */
    int64_t password_changed_at;
    char description[STORE_DESCRIPTION_MAX + 1]; /* added: "" when none */
};

struct store;

/* Open (creating and migrating when needed) the database at path, WAL mode,
 * busy timeout busy_timeout_ms. Caller frees with store_close. A failure is
 * logged. */
int store_open(const char *path, unsigned busy_timeout_ms, struct store **out);
/* store_open that, on failure, writes the reason (SQLite's message or ours)
 * into err (err_size bytes) instead of logging it: the caller reports it. */
int store_open_err(const char *path, unsigned busy_timeout_ms, struct store **out, char *err,
                   size_t err_size);
void store_close(struct store *st);

/* Borrowed until store_close: the last SQLite error text, for CLI messages. */
const char *store_errmsg(struct store *st);

int store_user_add(struct store *st, const char *name, const char *password);
/* Added: store_user_add with a description (NULL or "" for none; at most
 * STORE_DESCRIPTION_MAX bytes, printable text, else STORE_INVALID). */
int store_user_create(struct store *st, const char *name, const char *password,
                      const char *description);
int store_user_del(struct store *st, const char *name);
int store_user_passwd(struct store *st, const char *name, const char *password);
int store_user_set_enabled(struct store *st, const char *name, bool is_enabled);
int store_user_get(struct store *st, const char *name, struct account *out);
/* Calls cb for each account in name order; a non-zero return from cb stops. */
int store_user_list(struct store *st, int (*cb)(const struct account *a, void *arg), void *arg);

/* Verify a password (yescrypt, slow). When the user does not exist a dummy
 * hash is still computed so timing does not reveal it. */
enum store_auth_result store_verify_password(struct store *st, const char *name,
                                             const char *password);

/* The sender policy and limits of name (auth/policy.h). Returns STORE_OK,
 * STORE_NOT_FOUND or STORE_ERROR. */
struct account_policy;
int store_policy_load(struct store *st, const char *name, struct account_policy *out);

/* Change one policy column of name: text columns senders, networks, owner;
 * number columns check_header_from, max_size, max_rcpts, msgs_per_hour,
 * msgs_per_day, rcpts_per_day, bytes_per_day (-1 = the global default).
 * Returns STORE_OK, STORE_NOT_FOUND, STORE_INVALID (unknown column) or an error. */
int store_policy_set_text(struct store *st, const char *name, const char *column,
                          const char *value);
int store_policy_set_number(struct store *st, const char *name, const char *column,
                            int64_t value);

struct store_usage {
    int64_t period_start;     /* the current hour or day (UTC), unix seconds */
    uint64_t msgs, rcpts, bytes;
};
/* Usage of name in the hour and the day containing now (zero when the stored
 * window is an older one). */
int store_usage_get(struct store *st, const char *name, int64_t now, struct store_usage *hour,
                    struct store_usage *day);
/* Forget name's usage counters (period "hour", "day", or NULL for both). */
int store_usage_reset(struct store *st, const char *name, const char *period);

/* true when name is acceptable as a user name. */
bool store_name_is_valid(const char *name);

#endif

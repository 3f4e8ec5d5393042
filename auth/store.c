/* store.c — the account store: one SQLite connection per struct store (WAL,
 * busy timeout, foreign keys), the "auth" migrations in schema_version, and
 * the account operations behind smarthostctl and AUTH.
 * Contract: blocking calls, one thread per struct store; passwords arrive
 * in plaintext only to be hashed (password.c) or verified, and are never
 * logged, stored or kept. An unknown user costs the same yescrypt work as a
 * known one, so response time does not reveal which names exist. */
#include "auth/store.h"

#include "auth/authcache.h"
#include "auth/policy.h"

#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/password.h"
#include "core/log.h"

/* A real yescrypt hash, at libcrypt's default cost (the "j9T" parameters
 * that password_hash produces), of a random password nobody knows. Verifying
 * against it for an unknown user takes as long as for a real account; the
 * unit tests check that its parameters still match password_hash's. */
#define STORE_DUMMY_HASH                                                                   \
    "$y$j9T$zit7RdE89Ec4iU16lYqYPJ3FDutmZQNwgYvZyg6vow5$MEqtkSD3LjyTY92zS00d7iv3zkpGlBpMWlZGSkouKl."

/* Versioned migrations for module "auth", applied in order, each in its own
 * BEGIN IMMEDIATE transaction. Append only: a shipped step never changes. */
static const char *const store_migrations[] = {
    /* 1 */
    "CREATE TABLE accounts("
    " id INTEGER PRIMARY KEY,"
    " name TEXT UNIQUE NOT NULL,"
    " password_hash TEXT NOT NULL,"
    " enabled INTEGER NOT NULL DEFAULT 1,"
    " description TEXT NOT NULL DEFAULT '',"
    " created_at INTEGER,"
    " password_changed_at INTEGER)",
    /* 2: sender policy and quotas (auth/policy.c); -1 = the global default */
    "ALTER TABLE accounts ADD COLUMN senders TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE accounts ADD COLUMN check_header_from INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE accounts ADD COLUMN networks TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE accounts ADD COLUMN owner TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE accounts ADD COLUMN max_size INTEGER NOT NULL DEFAULT -1;"
    "ALTER TABLE accounts ADD COLUMN max_rcpts INTEGER NOT NULL DEFAULT -1;"
    "ALTER TABLE accounts ADD COLUMN msgs_per_hour INTEGER NOT NULL DEFAULT -1;"
    "ALTER TABLE accounts ADD COLUMN msgs_per_day INTEGER NOT NULL DEFAULT -1;"
    "ALTER TABLE accounts ADD COLUMN rcpts_per_day INTEGER NOT NULL DEFAULT -1;"
    "ALTER TABLE accounts ADD COLUMN bytes_per_day INTEGER NOT NULL DEFAULT -1;"
    "CREATE TABLE usage("
    " account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,"
    " period TEXT NOT NULL,"          /* 'hour' | 'day' */
    " period_start INTEGER NOT NULL," /* unix seconds, UTC boundary */
    " msgs INTEGER NOT NULL DEFAULT 0,"
    " rcpts INTEGER NOT NULL DEFAULT 0,"
    " bytes INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY(account_id, period))",
};
#define STORE_SCHEMA_VERSION ((int)(sizeof(store_migrations) / sizeof(store_migrations[0])))

struct store {
    sqlite3 *db;
    sqlite3_stmt *st_verify; /* the AUTH hot path keeps its statement prepared */
    struct sql_cache sql;    /* and its policy load */
    char errmsg[256];
};

/* ---- errors ------------------------------------------------------------ */

static void store_set_error(struct store *st, const char *text)
{
    snprintf(st->errmsg, sizeof(st->errmsg), "%s", text);
}

/* Map an SQLite result to our status and remember its message for the CLI. */
static int store_status_from_sqlite(struct store *st, int rc)
{
    store_set_error(st, sqlite3_errmsg(st->db));
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return STORE_BUSY;
    default:
        return STORE_ERROR;
    }
}

const char *store_errmsg(struct store *st)
{
    return st != NULL ? st->errmsg : "out of memory";
}

/* ---- validation -------------------------------------------------------- */

bool store_name_is_valid(const char *name)
{
    if (name == NULL)
        return false;
    size_t len = strnlen(name, STORE_NAME_MAX + 1);
    if (len == 0 || len > STORE_NAME_MAX)
        return false;
    /* Printable ASCII without space: names go into log lines, SMTP replies'
     * logs and "authenticated as" headers without any quoting. */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c <= 0x20 || c >= 0x7f)
            return false;
    }
    return true;
}

static bool store_password_is_valid(const char *password)
{
    if (password == NULL)
        return false;
    size_t len = strnlen(password, STORE_PASSWORD_MAX + 1);
    return len > 0 && len <= STORE_PASSWORD_MAX;
}

/* Text without control characters, valid UTF-8 (JSON output needs it),
 * at most STORE_DESCRIPTION_MAX bytes. */
static bool store_description_is_valid(const char *text)
{
    size_t len = strnlen(text, STORE_DESCRIPTION_MAX + 1);
    if (len > STORE_DESCRIPTION_MAX)
        return false;
    const unsigned char *p = (const unsigned char *)text, *end = p + len;
    while (p < end) {
        unsigned char c = *p;
        size_t n;
        unsigned min;
        unsigned cp;
        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f)
                return false;
            p++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            n = 1, min = 0x80, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2, min = 0x800, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3, min = 0x10000, cp = c & 0x07;
        } else {
            return false;
        }
        if ((size_t)(end - p) <= n)
            return false;
        for (size_t i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        /* No overlong forms, no surrogates, nothing past U+10FFFF. */
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) || cp < 0xa0)
            return false;
        p += n + 1;
    }
    return true;
}

/* ---- opening and migrating -------------------------------------------- */

static int store_exec(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

/* The auth schema version recorded in the file; 0 when none yet (including
 * when schema_version itself does not exist). */
static int store_schema_version(sqlite3 *db, int *version)
{
    *version = 0;
    sqlite3_stmt *stmt = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT version FROM schema_version WHERE module = 'auth'",
                                -1, &stmt, NULL);
    if (rc != SQLITE_OK) {
        /* "no such table" on a fresh file is version 0, not an error. */
        return (rc & 0xff) == SQLITE_ERROR ? SQLITE_OK : rc;
    }
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
        *version = sqlite3_column_int(stmt, 0);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    }
    sqlite3_finalize(stmt);
    return rc;
}

/* Apply migration index i (to version i + 1) in one write transaction. The
 * version is read again under the write lock: the daemon's workers and
 * smarthostctl may open the same file at the same moment. */
static int store_migrate_one(sqlite3 *db, int i)
{
    int rc = store_exec(db, "BEGIN IMMEDIATE");
    if (rc != SQLITE_OK)
        return rc;
    rc = store_exec(db, "CREATE TABLE IF NOT EXISTS schema_version("
                        "module TEXT PRIMARY KEY, version INTEGER)");
    int version = 0;
    if (rc == SQLITE_OK)
        rc = store_schema_version(db, &version);
    bool is_applied = false;
    if (rc == SQLITE_OK && version == i) {
        rc = store_exec(db, store_migrations[i]);
        if (rc == SQLITE_OK) {
            sqlite3_stmt *stmt = NULL;
            rc = sqlite3_prepare_v2(db,
                                    "INSERT INTO schema_version(module, version) VALUES('auth', ?)"
                                    " ON CONFLICT(module) DO UPDATE SET version = excluded.version",
                                    -1, &stmt, NULL);
            if (rc == SQLITE_OK) {
                sqlite3_bind_int(stmt, 1, i + 1);
                rc = sqlite3_step(stmt) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(db);
                sqlite3_finalize(stmt);
            }
        }
        is_applied = rc == SQLITE_OK;
    } else if (rc == SQLITE_OK && version < i) {
        rc = SQLITE_CORRUPT; /* a gap: steps are applied strictly in order */
    }
    if (rc == SQLITE_OK)
        rc = store_exec(db, "COMMIT");
    if (rc != SQLITE_OK) {
        log_err(NULL, "auth migration failed version=%d rc=%d error=\"%s\"", i + 1, rc,
                sqlite3_errmsg(db));
        if (!sqlite3_get_autocommit(db))
            store_exec(db, "ROLLBACK");
        return rc;
    }
    if (is_applied)
        log_info(NULL, "auth schema migrated version=%d", i + 1);
    return SQLITE_OK;
}

static int store_migrate(struct store *st)
{
    int version = 0;
    int rc = store_schema_version(st->db, &version);
    if (rc != SQLITE_OK)
        return store_status_from_sqlite(st, rc);
    if (version > STORE_SCHEMA_VERSION) {
        /* A newer build wrote this file; our statements may not fit it. */
        snprintf(st->errmsg, sizeof(st->errmsg),
                 "auth schema version %d is newer than this build (%d)", version,
                 STORE_SCHEMA_VERSION);
        log_err(NULL, "auth schema is newer than this build version=%d supported=%d", version,
                STORE_SCHEMA_VERSION);
        return STORE_ERROR;
    }
    for (int i = version; i < STORE_SCHEMA_VERSION; i++) {
        rc = store_migrate_one(st->db, i);
        if (rc != SQLITE_OK)
            return store_status_from_sqlite(st, rc);
    }
    return STORE_OK;
}

static int store_configure(struct store *st, unsigned busy_timeout_ms)
{
    sqlite3_extended_result_codes(st->db, 1);
    sqlite3_busy_timeout(st->db, busy_timeout_ms > INT_MAX ? INT_MAX : (int)busy_timeout_ms);
    /* WAL: AUTH lookups on the workers never wait for the queue's committer
     * or for smarthostctl, and vice versa. */
    sqlite3_stmt *stmt = NULL;
    int rc = sqlite3_prepare_v2(st->db, "PRAGMA journal_mode=WAL", -1, &stmt, NULL);
    if (rc != SQLITE_OK)
        return store_status_from_sqlite(st, rc);
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
        const unsigned char *mode = sqlite3_column_text(stmt, 0);
        if (mode == NULL || strcmp((const char *)mode, "wal") != 0) {
            log_err(NULL, "auth database refused WAL mode journal_mode=%s",
                    mode != NULL ? (const char *)mode : "?");
            rc = SQLITE_ERROR;
        } else {
            rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(stmt);
    if (rc == SQLITE_ERROR) {
        store_set_error(st, "the database cannot use WAL mode");
        return STORE_ERROR;
    }
    if (rc != SQLITE_OK)
        return store_status_from_sqlite(st, rc);
    rc = store_exec(st->db, "PRAGMA foreign_keys=ON");
    if (rc != SQLITE_OK)
        return store_status_from_sqlite(st, rc);
    return STORE_OK;
}

int store_open_err(const char *path, unsigned busy_timeout_ms, struct store **out, char *err,
                   size_t err_size)
{
    *out = NULL;
    if (err != NULL && err_size > 0)
        err[0] = '\0';
    if (path == NULL)
        return STORE_INVALID;
    struct store *st = calloc(1, sizeof(*st));
    if (st == NULL) {
        if (err != NULL && err_size > 0)
            snprintf(err, err_size, "out of memory");
        return STORE_ERROR;
    }
    /* NOMUTEX: a struct store belongs to one thread (see store.h). */
    int rc = sqlite3_open_v2(path, &st->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             NULL);
    sql_cache_init(&st->sql, st->db);
    int status;
    if (rc != SQLITE_OK) {
        if (st->db != NULL)
            store_set_error(st, sqlite3_errmsg(st->db));
        else
            store_set_error(st, "out of memory");
        status = STORE_ERROR;
    } else {
        status = store_configure(st, busy_timeout_ms);
        if (status == STORE_OK)
            status = store_migrate(st);
        if (status == STORE_OK) {
            rc = sqlite3_prepare_v2(st->db,
                                    "SELECT password_hash, enabled FROM accounts WHERE name = ?",
                                    -1, &st->st_verify, NULL);
            if (rc != SQLITE_OK)
                status = store_status_from_sqlite(st, rc);
        }
    }
    if (status != STORE_OK) {
        if (err != NULL && err_size > 0) /* the caller reports it */
            snprintf(err, err_size, "%s", st->errmsg);
        else
            log_err(NULL, "cannot open the account store path=%s error=\"%s\"", path,
                    st->errmsg);
        store_close(st);
        return status;
    }
    *out = st;
    return STORE_OK;
}

int store_open(const char *path, unsigned busy_timeout_ms, struct store **out)
{
    return store_open_err(path, busy_timeout_ms, out, NULL, 0);
}

void store_close(struct store *st)
{
    if (st == NULL)
        return;
    sqlite3_finalize(st->st_verify);
    sql_cache_clear(&st->sql);
    sqlite3_close_v2(st->db);
    free(st);
}

/* ---- account operations ------------------------------------------------ */

/* Run one prepared write statement to completion; finalizes it. */
static int store_step_write(struct store *st, sqlite3_stmt *stmt)
{
    int rc = sqlite3_step(stmt);
    int status = STORE_OK;
    if (rc != SQLITE_DONE) {
        if ((rc & 0xff) == SQLITE_CONSTRAINT) {
            store_set_error(st, "an account with that name already exists");
            status = STORE_EXISTS;
        } else {
            status = store_status_from_sqlite(st, rc);
        }
    }
    sqlite3_finalize(stmt);
    return status;
}

static int store_prepare(struct store *st, const char *sql, sqlite3_stmt **stmt)
{
    int rc = sqlite3_prepare_v2(st->db, sql, -1, stmt, NULL);
    return rc == SQLITE_OK ? STORE_OK : store_status_from_sqlite(st, rc);
}

int store_user_create(struct store *st, const char *name, const char *password,
                      const char *description)
{
    if (description == NULL)
        description = "";
    if (!store_name_is_valid(name)) {
        store_set_error(st, "invalid user name (1-255 printable characters, no space)");
        return STORE_INVALID;
    }
    if (!store_password_is_valid(password)) {
        store_set_error(st, "invalid password (1-511 bytes)");
        return STORE_INVALID;
    }
    if (!store_description_is_valid(description)) {
        store_set_error(st, "invalid description (at most 255 bytes of UTF-8 text)");
        return STORE_INVALID;
    }
    char hash[PASSWORD_HASH_SIZE];
    if (password_hash(password, hash) < 0) {
        store_set_error(st, "cannot hash the password");
        return STORE_ERROR;
    }
    sqlite3_stmt *stmt = NULL;
    int status = store_prepare(st,
                               "INSERT INTO accounts(name, password_hash, enabled, description,"
                               " created_at, password_changed_at) VALUES(?, ?, 1, ?, ?, ?)",
                               &stmt);
    if (status == STORE_OK) {
        int64_t now = (int64_t)time(NULL);
        sqlite3_bind_text(stmt, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 2, hash, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 3, description, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 4, now);
        sqlite3_bind_int64(stmt, 5, now);
        status = store_step_write(st, stmt);
    }
    explicit_bzero(hash, sizeof(hash));
    return status;
}

int store_user_add(struct store *st, const char *name, const char *password)
{
    return store_user_create(st, name, password, "");
}

/* The number of rows the last write changed: 0 means no such user. */
static int store_status_if_unchanged(struct store *st, int status)
{
    if (status == STORE_OK && sqlite3_changes(st->db) == 0) {
        store_set_error(st, "no such user");
        return STORE_NOT_FOUND;
    }
    return status;
}

int store_user_del(struct store *st, const char *name)
{
    if (!store_name_is_valid(name)) {
        store_set_error(st, "no such user");
        return STORE_NOT_FOUND;
    }
    sqlite3_stmt *stmt = NULL;
    int status = store_prepare(st, "DELETE FROM accounts WHERE name = ?", &stmt);
    if (status != STORE_OK)
        return status;
    sqlite3_bind_text(stmt, 1, name, -1, SQLITE_STATIC);
    return store_status_if_unchanged(st, store_step_write(st, stmt));
}

int store_user_passwd(struct store *st, const char *name, const char *password)
{
    if (!store_name_is_valid(name)) {
        store_set_error(st, "no such user");
        return STORE_NOT_FOUND;
    }
    if (!store_password_is_valid(password)) {
        store_set_error(st, "invalid password (1-511 bytes)");
        return STORE_INVALID;
    }
    char hash[PASSWORD_HASH_SIZE];
    if (password_hash(password, hash) < 0) {
        store_set_error(st, "cannot hash the password");
        return STORE_ERROR;
    }
    sqlite3_stmt *stmt = NULL;
    int status = store_prepare(
        st, "UPDATE accounts SET password_hash = ?, password_changed_at = ? WHERE name = ?", &stmt);
    if (status == STORE_OK) {
        sqlite3_bind_text(stmt, 1, hash, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 2, (int64_t)time(NULL));
        sqlite3_bind_text(stmt, 3, name, -1, SQLITE_STATIC);
        status = store_status_if_unchanged(st, store_step_write(st, stmt));
    }
    explicit_bzero(hash, sizeof(hash));
    return status;
}

int store_user_set_enabled(struct store *st, const char *name, bool is_enabled)
{
    if (!store_name_is_valid(name)) {
        store_set_error(st, "no such user");
        return STORE_NOT_FOUND;
    }
    sqlite3_stmt *stmt = NULL;
    int status = store_prepare(st, "UPDATE accounts SET enabled = ? WHERE name = ?", &stmt);
    if (status != STORE_OK)
        return status;
    sqlite3_bind_int(stmt, 1, is_enabled ? 1 : 0);
    sqlite3_bind_text(stmt, 2, name, -1, SQLITE_STATIC);
    return store_status_if_unchanged(st, store_step_write(st, stmt));
}

#define STORE_ACCOUNT_COLUMNS "id, name, enabled, created_at, password_changed_at, description"

static void store_account_from_row(sqlite3_stmt *stmt, struct account *a)
{
    memset(a, 0, sizeof(*a));
    a->id = sqlite3_column_int64(stmt, 0);
    const unsigned char *name = sqlite3_column_text(stmt, 1);
    snprintf(a->name, sizeof(a->name), "%s", name != NULL ? (const char *)name : "");
    a->is_enabled = sqlite3_column_int(stmt, 2) != 0;
    a->created_at = sqlite3_column_int64(stmt, 3);
    a->password_changed_at = sqlite3_column_int64(stmt, 4);
    const unsigned char *desc = sqlite3_column_text(stmt, 5);
    snprintf(a->description, sizeof(a->description), "%s",
             desc != NULL ? (const char *)desc : "");
}

int store_user_get(struct store *st, const char *name, struct account *out)
{
    if (!store_name_is_valid(name)) {
        store_set_error(st, "no such user");
        return STORE_NOT_FOUND;
    }
    sqlite3_stmt *stmt = NULL;
    int status =
        store_prepare(st, "SELECT " STORE_ACCOUNT_COLUMNS " FROM accounts WHERE name = ?", &stmt);
    if (status != STORE_OK)
        return status;
    sqlite3_bind_text(stmt, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
        store_account_from_row(stmt, out);
        status = STORE_OK;
    } else if (rc == SQLITE_DONE) {
        store_set_error(st, "no such user");
        status = STORE_NOT_FOUND;
    } else {
        status = store_status_from_sqlite(st, rc);
    }
    sqlite3_finalize(stmt);
    return status;
}

int store_user_list(struct store *st, int (*cb)(const struct account *a, void *arg), void *arg)
{
    sqlite3_stmt *stmt = NULL;
    int status =
        store_prepare(st, "SELECT " STORE_ACCOUNT_COLUMNS " FROM accounts ORDER BY name", &stmt);
    if (status != STORE_OK)
        return status;
    struct account a;
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        store_account_from_row(stmt, &a);
        if (cb(&a, arg) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    status = rc == SQLITE_DONE ? STORE_OK : store_status_from_sqlite(st, rc);
    sqlite3_finalize(stmt);
    return status;
}

/* Does password match hash? Through the auth cache (authcache.h): a
 * device reconnecting with the password verified a moment ago skips
 * yescrypt, and logins with the very same name, hash and password at once
 * share one. Every outcome goes this way (no such account: the dummy hash;
 * disabled; enabled), so that two identical logins at once take the same
 * time whether the account exists or not. Only an enabled account's match
 * is kept, and only an enabled account is looked up in the cache. */
static bool store_password_matches(const char *name, const char *hash, const char *password,
                                   bool is_cacheable)
{
    int claim = 0;
    int known = authcache_begin(name, hash, password, is_cacheable, &claim);
    if (known >= 0)
        return known == 1;
    bool is_match = password_verify(password, hash);
    authcache_settle(claim, name, hash, password, is_match, is_cacheable);
    return is_match;
}

enum store_auth_result store_verify_password(struct store *st, const char *name,
                                             const char *password)
{
    if (password == NULL)
        password = "";
    if (!store_name_is_valid(name)) {
        /* Same work as for a real account: timing says nothing. */
        (void)store_password_matches(name, STORE_DUMMY_HASH, password, false);
        return STORE_AUTH_NO_USER;
    }
    sqlite3_stmt *stmt = st->st_verify;
    sqlite3_reset(stmt);
    sqlite3_bind_text(stmt, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(stmt);
    char hash[PASSWORD_HASH_SIZE] = "";
    bool is_enabled = false;
    if (rc == SQLITE_ROW) {
        const unsigned char *col = sqlite3_column_text(stmt, 0);
        snprintf(hash, sizeof(hash), "%s", col != NULL ? (const char *)col : "");
        is_enabled = sqlite3_column_int(stmt, 1) != 0;
    } else if (rc != SQLITE_DONE) {
        store_status_from_sqlite(st, rc);
    }
    /* Never leave the statement holding a read transaction or name. */
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    if (rc == SQLITE_DONE) {
        (void)store_password_matches(name, STORE_DUMMY_HASH, password, false);
        return STORE_AUTH_NO_USER;
    }
    if (rc != SQLITE_ROW) {
        /* A storage error: tempfail, and no hash computed at all. */
        log_warn(NULL, "account lookup failed error=\"%s\"", st->errmsg);
        return STORE_AUTH_ERROR;
    }
    /* The hash is computed for a disabled account too, so that a disabled
     * account takes as long as any other failure. The cache is keyed on
     * the stored hash, so a password change misses at once. */
    bool is_match = store_password_matches(name, hash, password, is_enabled);
    explicit_bzero(hash, sizeof(hash));
    if (!is_enabled)
        return STORE_AUTH_DISABLED;
    return is_match ? STORE_AUTH_OK : STORE_AUTH_BAD_PASSWORD;
}

int store_policy_load(struct store *st, const char *name, struct account_policy *out)
{
    int rc = policy_load(&st->sql, name, out);
    return rc == 0 ? STORE_OK : rc == 1 ? STORE_NOT_FOUND : STORE_ERROR;
}

static bool store_policy_column_ok(const char *column, bool is_text)
{
    static const char *const text_cols[] = {"senders", "networks", "owner"};
    static const char *const num_cols[] = {"check_header_from", "max_size",     "max_rcpts",
                                           "msgs_per_hour",     "msgs_per_day", "rcpts_per_day",
                                           "bytes_per_day"};
    const char *const *cols = is_text ? text_cols : num_cols;
    size_t n = is_text ? 3 : 7;
    for (size_t i = 0; i < n; i++)
        if (strcmp(cols[i], column) == 0)
            return true;
    return false;
}

static int store_policy_set(struct store *st, const char *name, const char *column,
                            const char *text, int64_t num, bool is_text)
{
    if (!store_policy_column_ok(column, is_text))
        return STORE_INVALID;
    char sql[128];
    snprintf(sql, sizeof(sql), "UPDATE accounts SET %s = ? WHERE name = ?", column);
    sqlite3_stmt *stmt = NULL;
    if (sqlite3_prepare_v2(st->db, sql, -1, &stmt, NULL) != SQLITE_OK)
        return STORE_ERROR;
    if (is_text)
        sqlite3_bind_text(stmt, 1, text, -1, SQLITE_STATIC);
    else
        sqlite3_bind_int64(stmt, 1, num);
    sqlite3_bind_text(stmt, 2, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(stmt);
    sqlite3_finalize(stmt);
    if (rc != SQLITE_DONE)
        return (rc & 0xff) == SQLITE_BUSY ? STORE_BUSY : STORE_ERROR;
    return sqlite3_changes(st->db) > 0 ? STORE_OK : STORE_NOT_FOUND;
}

int store_policy_set_text(struct store *st, const char *name, const char *column,
                          const char *value)
{
    return store_policy_set(st, name, column, value, 0, true);
}

int store_policy_set_number(struct store *st, const char *name, const char *column, int64_t value)
{
    return store_policy_set(st, name, column, NULL, value, false);
}

int store_usage_get(struct store *st, const char *name, int64_t now, struct store_usage *hour,
                    struct store_usage *day)
{
    memset(hour, 0, sizeof(*hour));
    memset(day, 0, sizeof(*day));
    hour->period_start = now - now % 3600;
    day->period_start = now - now % 86400;
    sqlite3_stmt *stmt = NULL;
    if (sqlite3_prepare_v2(st->db,
                           "SELECT u.period, u.period_start, u.msgs, u.rcpts, u.bytes FROM usage u"
                           " JOIN accounts a ON a.id = u.account_id WHERE a.name = ?",
                           -1, &stmt, NULL) != SQLITE_OK)
        return STORE_ERROR;
    sqlite3_bind_text(stmt, 1, name, -1, SQLITE_STATIC);
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        const char *period = (const char *)sqlite3_column_text(stmt, 0);
        struct store_usage *u = period != NULL && strcmp(period, "hour") == 0 ? hour : day;
        if (sqlite3_column_int64(stmt, 1) != u->period_start)
            continue; /* an old window: nothing used in this one yet */
        u->msgs = (uint64_t)sqlite3_column_int64(stmt, 2);
        u->rcpts = (uint64_t)sqlite3_column_int64(stmt, 3);
        u->bytes = (uint64_t)sqlite3_column_int64(stmt, 4);
    }
    sqlite3_finalize(stmt);
    return rc == SQLITE_DONE ? STORE_OK : STORE_ERROR;
}

int store_usage_reset(struct store *st, const char *name, const char *period)
{
    sqlite3_stmt *stmt = NULL;
    if (sqlite3_prepare_v2(st->db,
                           "DELETE FROM usage WHERE account_id = (SELECT id FROM accounts"
                           " WHERE name = ?1) AND (?2 IS NULL OR period = ?2)",
                           -1, &stmt, NULL) != SQLITE_OK)
        return STORE_ERROR;
    sqlite3_bind_text(stmt, 1, name, -1, SQLITE_STATIC);
    if (period != NULL)
        sqlite3_bind_text(stmt, 2, period, -1, SQLITE_STATIC);
    int rc = sqlite3_step(stmt);
    sqlite3_finalize(stmt);
    return rc == SQLITE_DONE ? STORE_OK : STORE_ERROR;
}

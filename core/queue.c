/* queue.c — the durable queue: module "queue" of the shared SQLite file
 * (messages, recipients, bodies), the group-commit thread and the reader used
 * by smarthostctl and tests. A callback reports QUEUE_OK only after COMMIT has
 * returned with synchronous=FULL, i.e. after the WAL was fsync'd; a failed
 * write is rolled back whole, so a message never exists without its
 * recipients and full body. Never touches libuv, and never calls a callback
 * for a request that queue_commit_submit() refused. */
#include "core/queue.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "core/log.h"
#include "core/queue_internal.h"
#include "core/sql_cache.h"

/* A bound on one transaction: more waiting requests stay for the next round
 * (one more fsync) instead of growing a single transaction without limit. */
#define QUEUE_BATCH_MAX 256
/* The reader serves the CLI: wait this long for the daemon's checkpoints. */
#define QUEUE_READER_BUSY_MS 5000
/* The checkpointer copies the WAL into the database on its own thread
 * (queue_checkpoint_due says when): the committer never checkpoints itself,
 * or the messages whose COMMIT crossed the line would wait for megabytes of
 * writes and an fsync before their 250. */
#define QUEUE_CHECKPOINT_IDLE_S 10 /* and at least this often while writes come */
/* A WAL that a burst grew is cut back to this when it starts over. */
#define QUEUE_WAL_SIZE_LIMIT "67108864" /* bytes: 64 MiB */

/* Ordered migrations of module "queue"; entry i brings the schema to i + 1.
 * Never edit a released entry: append a new one. */
static const char *const queue_migrations[] = {
    "CREATE TABLE messages("
    " id INTEGER PRIMARY KEY,"
    " qid TEXT UNIQUE NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " sender TEXT NOT NULL,"
    " auth_user TEXT NOT NULL,"
    " client_addr TEXT NOT NULL,"
    " helo TEXT NOT NULL,"
    " size INTEGER NOT NULL,"
    " state TEXT NOT NULL DEFAULT 'queued',"
    " next_attempt_at INTEGER NOT NULL DEFAULT 0,"
    " body BLOB NOT NULL);"
    "CREATE TABLE recipients("
    " id INTEGER PRIMARY KEY,"
    " message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,"
    " address TEXT NOT NULL,"
    " state TEXT NOT NULL DEFAULT 'queued',"
    " last_error TEXT NOT NULL DEFAULT '');"
    "CREATE INDEX recipients_message_id ON recipients(message_id);"
    "CREATE INDEX messages_state_next_attempt ON messages(state, next_attempt_at);",
    /* 2: delivery (relay/): per-recipient retry state, holds, DSN kind and an
     * attempt log that `queue show` reads. */
    "ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message';"
    "ALTER TABLE messages ADD COLUMN held INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE messages ADD COLUMN warned_at INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE messages ADD COLUMN done_at INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE recipients ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE recipients ADD COLUMN next_attempt_at INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE recipients ADD COLUMN dsn_status TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE recipients ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;"
    "CREATE TABLE attempts("
    " id INTEGER PRIMARY KEY,"
    " message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,"
    " recipient_id INTEGER REFERENCES recipients(id) ON DELETE CASCADE,"
    " at INTEGER NOT NULL,"
    " domain TEXT NOT NULL,"
    " host TEXT NOT NULL DEFAULT '',"
    " address TEXT NOT NULL DEFAULT '',"
    " step TEXT NOT NULL,"
    " tls TEXT NOT NULL DEFAULT '',"
    " reply TEXT NOT NULL DEFAULT '',"
    " outcome TEXT NOT NULL);"
    "CREATE INDEX attempts_message_id ON attempts(message_id);"
    "CREATE INDEX recipients_state_due ON recipients(state, next_attempt_at);",
    /* 3: bodies in their own table. In messages, the body came before every
     * column added since, so reading state, held or done_at walked the body's
     * whole overflow chain (a megabyte message: 256 pages per row touched).
     * The old column stays, empty: dropping it needs SQLite 3.35. */
    "CREATE TABLE bodies("
    " message_id INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,"
    " data BLOB NOT NULL);"
    "INSERT INTO bodies(message_id, data) SELECT id, body FROM messages;"
    "UPDATE messages SET body = X'';"
    "CREATE INDEX messages_state_done_at ON messages(state, done_at);",
    /* 4: a large body lives in a file named by the qid (queue_spool.c) and
     * its row only says so: data is empty and file is 1. */
    "ALTER TABLE bodies ADD COLUMN file INTEGER NOT NULL DEFAULT 0;",
};
#define QUEUE_SCHEMA_VERSION ((int)(sizeof(queue_migrations) / sizeof(queue_migrations[0])))

struct queue {
    sqlite3 *db; /* used only by the committer thread once queue_open returns */
    sqlite3_stmt *st_begin, *st_commit, *st_rollback, *st_message, *st_body, *st_recipient;
    struct sql_cache sql; /* q->db's other statements: the quota charge, its savepoint */
    /* Held around every write transaction of this process on the database
     * (the committer's, the shared stores', the checkpointer's RESTART): a
     * writer waiting for another here is woken when it is done, where
     * SQLite's busy handler can only poll. */
    pthread_mutex_t write_lock;
    pthread_t thread;
    sqlite3 *ckpt_db;  /* the checkpointer thread's own connection */
    pthread_t ckpt_thread;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_cond_t ckpt_cond;
    bool is_ckpt_wanted; /* guarded by lock */
    int ckpt_base;       /* guarded by lock: see queue_checkpoint_due */
    /* guarded by lock */
    struct queue_commit_req *head, *tail; /* FIFO of submitted requests */
    struct queue_task *task_head, *task_tail; /* FIFO of submitted tasks */
    bool is_closing;
    queue_committed_hook hook;
    void *hook_arg;
    bool has_policy;
    struct policy_defaults policy;

    atomic_uint_fast64_t batches;

    /* committer thread only: the batch being written */
    struct queue_commit_req *batch[QUEUE_BATCH_MAX];
    int status[QUEUE_BATCH_MAX];
    bool refused[QUEUE_BATCH_MAX]; /* by the account policy, in this round */
    bool is_spooled[QUEUE_BATCH_MAX]; /* body in a file, written and synced */
    bool is_spool_failed[QUEUE_BATCH_MAX];

    char spool[4200]; /* queue_spool_dir(): large bodies */
    int spool_fd;
    struct queue_store *task_store; /* committer thread only: on db, made at the first task */
    /* committer thread only: the rows the open transaction inserted, for
     * the committed hook; rcpt_ids is NULL after an allocation failed */
    int64_t message_ids[QUEUE_BATCH_MAX];
    size_t rcpt_first[QUEUE_BATCH_MAX]; /* index into rcpt_ids */
    int64_t *rcpt_ids;
    size_t rcpt_id_count, rcpt_id_cap;
    bool is_rcpt_ids_lost;
};


/* ---- helpers ---------------------------------------------------------- */

int queue_status_from_sqlite(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW:
        return QUEUE_OK;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return QUEUE_ERR_BUSY;
    default:
        return QUEUE_ERR_STORAGE;
    }
}

static bool queue_rc_is_busy(int rc)
{
    return queue_status_from_sqlite(rc) == QUEUE_ERR_BUSY;
}

/* Run one statement that returns no rows we need (pragmas, BEGIN, …). */
int queue_exec(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

/* Step a cached statement to completion and reset it; returns an SQLite code. */
int queue_step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

/* Copy a column into a fixed field, truncating; NULL becomes "". */
void queue_copy_text(char *out, size_t out_size, sqlite3_stmt *st, int col)
{
    const unsigned char *text = sqlite3_column_text(st, col);
    snprintf(out, out_size, "%s", text != NULL ? (const char *)text : "");
}

/* ---- opening and migrating -------------------------------------------- */

static int queue_schema_version(sqlite3 *db, int *version)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT version FROM schema_version WHERE module = 'queue'",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    *version = 0;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *version = sqlite3_column_int(st, 0);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Apply migration index i (to version i + 1) in its own write transaction.
 * The version is read again under the write lock: another process (the
 * daemon and smarthostctl share the file) may have just applied it. */
static int queue_migrate_one(sqlite3 *db, int i)
{
    int rc = queue_exec(db, "BEGIN IMMEDIATE");
    if (rc != SQLITE_OK)
        return rc;
    int version = 0;
    rc = queue_schema_version(db, &version);
    if (rc == SQLITE_OK && version <= i) {
        rc = queue_exec(db, queue_migrations[i]);
        if (rc == SQLITE_OK) {
            sqlite3_stmt *st = NULL;
            rc = sqlite3_prepare_v2(db,
                                    "INSERT INTO schema_version(module, version) VALUES('queue', ?)"
                                    " ON CONFLICT(module) DO UPDATE SET version = excluded.version",
                                    -1, &st, NULL);
            if (rc == SQLITE_OK) {
                sqlite3_bind_int(st, 1, i + 1);
                rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(db);
                sqlite3_finalize(st);
            }
        }
    }
    if (rc == SQLITE_OK)
        rc = queue_exec(db, "COMMIT");
    if (rc != SQLITE_OK) {
        log_err(NULL, "queue migration failed version=%d rc=%d error=\"%s\"", i + 1, rc,
                sqlite3_errmsg(db));
        if (!sqlite3_get_autocommit(db))
            queue_exec(db, "ROLLBACK");
        return rc;
    }
    if (version <= i)
        log_info(NULL, "queue schema migrated version=%d", i + 1);
    return SQLITE_OK;
}

int queue_migrate(sqlite3 *db)
{
    int rc = queue_exec(db, "CREATE TABLE IF NOT EXISTS schema_version("
                            "module TEXT PRIMARY KEY, version INTEGER)");
    if (rc != SQLITE_OK)
        return rc;
    int version = 0;
    rc = queue_schema_version(db, &version);
    if (rc != SQLITE_OK)
        return rc;
    if (version > QUEUE_SCHEMA_VERSION) {
        /* A newer build wrote this file: writing with our idea of the schema
         * could corrupt what it expects. */
        log_err(NULL, "queue schema is newer than this build version=%d supported=%d", version,
                QUEUE_SCHEMA_VERSION);
        return SQLITE_ERROR;
    }
    for (int i = version; i < QUEUE_SCHEMA_VERSION; i++) {
        rc = queue_migrate_one(db, i);
        if (rc != SQLITE_OK)
            return rc;
    }
    return SQLITE_OK;
}

/* SQLite's own busy timeout sleeps 1, 2, 5 ... up to 100 ms between tries:
 * a session waiting for its 250 while the runner records a delivery (a few
 * hundred microseconds) would wait tens of milliseconds. Writers here hold
 * the lock briefly, so try again every 100 us at first, then every ms, up to
 * the configured timeout. */
static int queue_on_busy(void *arg, int tries)
{
    unsigned timeout_ms = (unsigned)(uintptr_t)arg;
    uint64_t waited_us = tries < 50 ? (uint64_t)tries * 100 : 5000 + (uint64_t)(tries - 50) * 1000;
    if (waited_us >= (uint64_t)timeout_ms * 1000)
        return 0;
    usleep(tries < 50 ? 100 : 1000);
    return 1;
}

/* WAL so readers (smarthostctl, the runner) never block the committer, and
 * synchronous=FULL so COMMIT returns only after the WAL is fsync'd: that is
 * what lets the session answer 250. */
int queue_configure(sqlite3 *db, unsigned busy_timeout_ms)
{
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_handler(db, queue_on_busy, (void *)(uintptr_t)busy_timeout_ms);
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const unsigned char *mode = sqlite3_column_text(st, 0);
        rc = mode != NULL && strcmp((const char *)mode, "wal") == 0 ? SQLITE_OK : SQLITE_ERROR;
        if (rc != SQLITE_OK)
            log_err(NULL, "queue database refused WAL mode journal_mode=%s",
                    mode != NULL ? (const char *)mode : "?");
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_OK)
        return rc;
    rc = queue_exec(db, "PRAGMA synchronous=FULL");
    if (rc == SQLITE_OK)
        rc = queue_exec(db, "PRAGMA foreign_keys=ON");
    if (rc == SQLITE_OK)
        rc = queue_exec(db, "PRAGMA journal_size_limit=" QUEUE_WAL_SIZE_LIMIT);
    return rc;
}

static int queue_prepare_statements(struct queue *q)
{
    struct {
        sqlite3_stmt **st;
        const char *sql;
    } stmts[] = {
        {&q->st_begin, "BEGIN IMMEDIATE"},
        {&q->st_commit, "COMMIT"},
        {&q->st_rollback, "ROLLBACK"},
        {&q->st_message, "INSERT INTO messages(qid, created_at, sender, auth_user, client_addr,"
                         " helo, size, body) VALUES(?, ?, ?, ?, ?, ?, ?, X'')"},
        {&q->st_body, "INSERT INTO bodies(message_id, data, file) VALUES(?, ?, ?)"},
        {&q->st_recipient, "INSERT INTO recipients(message_id, address) VALUES(?, ?)"},
    };
    for (size_t i = 0; i < sizeof(stmts) / sizeof(stmts[0]); i++) {
        int rc = sqlite3_prepare_v3(q->db, stmts[i].sql, -1, SQLITE_PREPARE_PERSISTENT,
                                    stmts[i].st, NULL);
        if (rc != SQLITE_OK)
            return rc;
    }
    return SQLITE_OK;
}

static void queue_free_db(struct queue *q)
{
    sqlite3_finalize(q->st_begin);
    sqlite3_finalize(q->st_commit);
    sqlite3_finalize(q->st_rollback);
    sqlite3_finalize(q->st_message);
    sqlite3_finalize(q->st_body);
    sqlite3_finalize(q->st_recipient);
    sql_cache_clear(&q->sql);
    queue_store_close(q->task_store); /* its statements, before db closes */
    pthread_mutex_destroy(&q->write_lock);
    sqlite3_close(q->ckpt_db); /* NULL-safe; the last connection to close checkpoints */
    sqlite3_close(q->db);
    if (q->spool_fd >= 0)
        close(q->spool_fd);
    free(q->rcpt_ids);
}

/* ---- the committer ---------------------------------------------------- */

static bool queue_req_is_valid(const struct queue_commit_req *req)
{
    if (req->qid == NULL || req->sender == NULL || req->auth_user == NULL ||
        req->client_addr == NULL || req->helo == NULL)
        return false;
    /* A message without recipients could never leave the queue. */
    if (req->recipient_count == 0 || req->recipients == NULL)
        return false;
    for (size_t i = 0; i < req->recipient_count; i++)
        if (req->recipients[i] == NULL)
            return false;
    if ((req->header_len > 0 && req->header == NULL) || (req->body_len > 0 && req->body == NULL))
        return false;
    return true;
}

/* Write the body blob in place from its two parts, without concatenating
 * them first: the row was inserted with a zeroblob of the full size. */
static int queue_write_body(struct queue *q, sqlite3_int64 rowid,
                            const struct queue_commit_req *req)
{
    sqlite3_blob *blob = NULL;
    int rc = sqlite3_blob_open(q->db, "main", "bodies", "data", rowid, 1, &blob);
    if (rc != SQLITE_OK)
        return rc;
    if (req->header_len > 0)
        rc = sqlite3_blob_write(blob, req->header, (int)req->header_len, 0);
    if (rc == SQLITE_OK && req->body_len > 0)
        rc = sqlite3_blob_write(blob, req->body, (int)req->body_len, (int)req->header_len);
    int close_rc = sqlite3_blob_close(blob);
    return rc != SQLITE_OK ? rc : close_rc;
}

/* Note a recipient row for the committed hook. Out of memory only loses
 * the ids (the hook then says so), never the commit. */
static void queue_note_rcpt_id(struct queue *q, int64_t id)
{
    if (q->is_rcpt_ids_lost)
        return;
    if (q->rcpt_id_count == q->rcpt_id_cap) {
        size_t cap = q->rcpt_id_cap ? q->rcpt_id_cap * 2 : 256;
        int64_t *g = realloc(q->rcpt_ids, cap * sizeof(*g));
        if (g == NULL) {
            q->is_rcpt_ids_lost = true;
            return;
        }
        q->rcpt_ids = g;
        q->rcpt_id_cap = cap;
    }
    q->rcpt_ids[q->rcpt_id_count++] = id;
}

/* Insert batch[i] (its message, body and recipients) inside the caller's
 * open transaction. Returns an SQLite code; on failure the caller rolls
 * back. */
static int queue_insert_message(struct queue *q, size_t i, sqlite3_int64 now)
{
    const struct queue_commit_req *req = q->batch[i];
    bool is_spooled = q->is_spooled[i];
    if (!queue_req_is_valid(req))
        return SQLITE_MISUSE;
    /* sqlite3_blob_write takes int sizes; the configured message size limit
     * is far below this, so only a caller bug gets here. */
    if (req->header_len > INT_MAX || req->body_len > (size_t)INT_MAX - req->header_len)
        return SQLITE_TOOBIG;
    sqlite3_int64 size = (sqlite3_int64)(req->header_len + req->body_len);

    sqlite3_stmt *st = q->st_message;
    sqlite3_bind_text(st, 1, req->qid, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    sqlite3_bind_text(st, 3, req->sender, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, req->auth_user, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, req->client_addr, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, req->helo, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, size);
    int rc = queue_step_done(st);
    sqlite3_clear_bindings(st); /* drop borrowed pointers */
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_int64 rowid = sqlite3_last_insert_rowid(q->db);
    q->message_ids[i] = rowid;
    q->rcpt_first[i] = q->rcpt_id_count;
    st = q->st_body;
    sqlite3_bind_int64(st, 1, rowid);
    rc = sqlite3_bind_zeroblob64(st, 2, is_spooled ? 0 : (sqlite3_uint64)size);
    sqlite3_bind_int(st, 3, is_spooled ? 1 : 0);
    if (rc == SQLITE_OK)
        rc = queue_step_done(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_OK)
        return rc;
    if (size > 0 && !is_spooled) {
        rc = queue_write_body(q, rowid, req);
        if (rc != SQLITE_OK)
            return rc;
    }

    st = q->st_recipient;
    for (size_t k = 0; k < req->recipient_count; k++) {
        sqlite3_bind_int64(st, 1, rowid);
        sqlite3_bind_text(st, 2, req->recipients[k], -1, SQLITE_STATIC);
        rc = queue_step_done(st);
        sqlite3_clear_bindings(st);
        if (rc != SQLITE_OK)
            return rc;
        queue_note_rcpt_id(q, sqlite3_last_insert_rowid(q->db));
    }
    return SQLITE_OK;
}

/* Right after the COMMIT of batch[first .. first + count), write lock held
 * (see queue_committed_hook). */
static void queue_call_hook(struct queue *q, size_t first, size_t count, sqlite3_int64 now,
                            bool has_policy, queue_committed_hook hook, void *hook_arg)
{
    if (hook == NULL)
        return;
    for (size_t i = first; i < first + count; i++) {
        const struct queue_commit_req *req = q->batch[i];
        if (q->refused[i] || q->is_spool_failed[i])
            continue;
        /* committed, so queue_req_is_valid: auth_user is not NULL */
        struct queue_committed c = {
            .message_id = q->message_ids[i],
            .qid = req->qid,
            .created_at = now,
            .sender = req->sender,
            .auth_user = req->auth_user,
            .owner = req->auth_user[0] == '\0' ? "" : has_policy ? req->verdict.owner : NULL,
            .recipients = req->recipients,
            .recipient_ids = q->is_rcpt_ids_lost ? NULL : q->rcpt_ids + q->rcpt_first[i],
            .recipient_count = req->recipient_count,
            .header = req->header,
            .header_len = req->header_len,
            .body = req->body,
            .body_len = req->body_len,
        };
        hook(&c, hook_arg);
    }
}

static void queue_rollback(struct queue *q)
{
    /* Some errors (SQLITE_FULL, IOERR, NOMEM) already rolled back. */
    if (!sqlite3_get_autocommit(q->db))
        queue_step_done(q->st_rollback);
}

/* One transaction for batch[first .. first + count): BEGIN IMMEDIATE, every
 * insert, COMMIT. Returns an SQLite code; on failure nothing is left behind. */
static int queue_write_transaction(struct queue *q, size_t first, size_t count)
{
    const char *qid = count == 1 && q->batch[first]->qid != NULL ? q->batch[first]->qid : NULL;
    const char *step = "begin";
    sqlite3_int64 now = (sqlite3_int64)time(NULL);
    int rc = queue_step_done(q->st_begin);
    pthread_mutex_lock(&q->lock);
    bool has_policy = q->has_policy;
    struct policy_defaults policy = q->policy;
    queue_committed_hook hook = q->hook;
    void *hook_arg = q->hook_arg;
    pthread_mutex_unlock(&q->lock);
    q->rcpt_id_count = 0;
    q->is_rcpt_ids_lost = false;
    for (size_t i = first; rc == SQLITE_OK && i < first + count; i++) {
        struct queue_commit_req *req = q->batch[i];
        q->refused[i] = false;
        if (q->is_spool_failed[i])
            continue;
        req->verdict.owner[0] = '\0';
        if (has_policy && req->auth_user != NULL && req->auth_user[0] != '\0') {
            /* check and count in this transaction: atomic with the insert */
            step = "policy";
            rc = sql_cache_exec(&q->sql, "SAVEPOINT charge");
            char from[320];
            bool has_from = policy_header_from(req->body, req->body_len, from, sizeof(from));
            int verdict = rc == SQLITE_OK
                              ? policy_charge(&q->sql, req->auth_user, &policy, now, req->sender,
                                              has_from ? from : NULL, req->recipient_count,
                                              (uint64_t)req->header_len + req->body_len,
                                              &req->verdict)
                              : -1;
            if (verdict != 0) {
                sql_cache_exec(&q->sql, "ROLLBACK TO charge");
                sql_cache_exec(&q->sql, "RELEASE charge");
                if (verdict < 0) {
                    rc = rc != SQLITE_OK ? rc : SQLITE_IOERR;
                    qid = req->qid;
                    break;
                }
                q->refused[i] = true;
                continue;
            }
            rc = sql_cache_exec(&q->sql, "RELEASE charge");
            if (rc != SQLITE_OK)
                break;
        }
        step = "insert";
        rc = queue_insert_message(q, i, now);
        if (rc != SQLITE_OK && count > 1)
            qid = req->qid;
    }
    if (rc == SQLITE_OK) {
        step = "commit";
        rc = queue_step_done(q->st_commit);
    }
    if (rc == SQLITE_OK) {
        atomic_fetch_add(&q->batches, 1);
        queue_call_hook(q, first, count, now, has_policy, hook, hook_arg);
        return SQLITE_OK;
    }
    /* errmsg before ROLLBACK overwrites it */
    log_warn(qid, "queue write failed step=%s batch=%zu rc=%d error=\"%s\"", step, count, rc,
             rc == SQLITE_MISUSE ? "invalid request" : sqlite3_errmsg(q->db));
    queue_rollback(q);
    return rc;
}

/* Write batch[0 .. n) and set status[i] for each. Grouped first; when that
 * fails for a reason other than the lock, each request gets its own
 * transaction so that one bad request (a constraint, one body too big for
 * the disk) does not fail the others. A lock held past the busy timeout
 * fails everyone: retrying would only multiply the wait. */
static bool queue_req_wants_file(const struct queue *q, const struct queue_commit_req *req)
{
    return q->spool_fd >= 0 && req->header_len + req->body_len >= QUEUE_SPOOL_MIN_SIZE &&
           queue_req_is_valid(req);
}

/* Before the transaction: the files of the batch's large bodies, each
 * fdatasync'd, then one fsync of the directory for their names, so the
 * COMMIT that refers to them never outlives them. A request whose file
 * could not be written fails alone (452), before its transaction. */
static void queue_spool_batch(struct queue *q, size_t n)
{
    int fds[QUEUE_BATCH_MAX];
    bool has_files = false;
    for (size_t i = 0; i < n; i++) {
        struct queue_commit_req *req = q->batch[i];
        fds[i] = -1;
        q->is_spooled[i] = q->is_spool_failed[i] = false;
        if (!queue_req_wants_file(q, req))
            continue;
        int rc = queue_spool_create(q->spool_fd, req->qid, req->header, req->header_len,
                                    req->body, req->body_len, &fds[i]);
        if (rc < 0) {
            log_warn(req->qid, "queue body file not written dir=%s error=\"%s\"", q->spool,
                     strerror(-rc));
            q->is_spool_failed[i] = true;
            continue;
        }
        q->is_spooled[i] = has_files = true;
    }
    for (size_t i = 0; i < n; i++) {
        if (fds[i] < 0)
            continue;
        int rc = queue_spool_finish(fds[i]);
        if (rc < 0) {
            log_warn(q->batch[i]->qid, "queue body file not synced dir=%s error=\"%s\"",
                     q->spool, strerror(-rc));
            queue_spool_remove(q->spool, q->batch[i]->qid);
            q->is_spooled[i] = false;
            q->is_spool_failed[i] = true;
        }
    }
    if (has_files && fsync(q->spool_fd) < 0) {
        log_warn(NULL, "queue body directory not synced dir=%s error=\"%s\"", q->spool,
                 strerror(errno));
        for (size_t i = 0; i < n; i++) {
            if (q->is_spooled[i])
                queue_spool_remove(q->spool, q->batch[i]->qid);
            q->is_spool_failed[i] |= q->is_spooled[i];
            q->is_spooled[i] = false;
        }
    }
}

static int queue_req_status(const struct queue *q, size_t i, int rc)
{
    if (q->is_spool_failed[i])
        return QUEUE_ERR_STORAGE;
    return rc == SQLITE_OK && q->refused[i] ? QUEUE_ERR_POLICY : queue_status_from_sqlite(rc);
}

static void queue_write_batch(struct queue *q, size_t n)
{
    queue_spool_batch(q, n);
    pthread_mutex_lock(&q->write_lock);
    int rc = queue_write_transaction(q, 0, n);
    pthread_mutex_unlock(&q->write_lock);
    if (rc == SQLITE_OK || n == 1 || queue_rc_is_busy(rc)) {
        for (size_t i = 0; i < n; i++)
            q->status[i] = queue_req_status(q, i, rc);
    } else {
        bool is_busy = false;
        for (size_t i = 0; i < n; i++) {
            if (is_busy) {
                q->status[i] = QUEUE_ERR_BUSY;
                continue;
            }
            pthread_mutex_lock(&q->write_lock);
            rc = queue_write_transaction(q, i, 1);
            pthread_mutex_unlock(&q->write_lock);
            q->status[i] = queue_req_status(q, i, rc);
            is_busy = queue_rc_is_busy(rc);
        }
    }
    /* a file whose row was not committed (refused, failed) is not queued */
    for (size_t i = 0; i < n; i++)
        if (q->is_spooled[i] && q->status[i] != QUEUE_OK)
            queue_spool_remove(q->spool, q->batch[i]->qid);
}

static void queue_finish_batch(struct queue *q, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct queue_commit_req *req = q->batch[i];
        q->batch[i] = NULL;
        req->next = NULL;
        req->cb(req, q->status[i]);
    }
}

/* Outside any batch's transaction, in the order they came. */
static void queue_run_tasks(struct queue *q, struct queue_task *t)
{
    if (t != NULL && q->task_store == NULL)
        q->task_store = queue_store_borrow(q->db, q->spool, &q->write_lock);
    while (t != NULL) {
        struct queue_task *next = t->next; /* t may be freed by its run */
        t->next = NULL;
        t->run(q->task_store, t->arg);
        t = next;
    }
}

static void *queue_run_committer(void *arg)
{
    struct queue *q = arg;
    pthread_setname_np(pthread_self(), "committer");
    for (;;) {
        pthread_mutex_lock(&q->lock);
        while (q->head == NULL && q->task_head == NULL && !q->is_closing)
            pthread_cond_wait(&q->cond, &q->lock);
        if (q->head == NULL && q->task_head == NULL) { /* closing and drained */
            pthread_mutex_unlock(&q->lock);
            break;
        }
        size_t n = 0;
        while (q->head != NULL && n < QUEUE_BATCH_MAX) {
            q->batch[n++] = q->head;
            q->head = q->head->next;
        }
        if (q->head == NULL)
            q->tail = NULL;
        struct queue_task *tasks = q->task_head;
        q->task_head = q->task_tail = NULL;
        pthread_mutex_unlock(&q->lock);

        if (n > 0) {
            queue_write_batch(q, n);
            queue_finish_batch(q, n);
        }
        queue_run_tasks(q, tasks);
    }
    return NULL;
}

/* ---- public: the write side ------------------------------------------- */

/* After every commit of the committer and of the stores handed to it
 * (their threads, inside COMMIT). */
static int queue_on_wal_commit(void *arg, sqlite3 *db, const char *name, int pages)
{
    (void)db;
    (void)name;
    struct queue *q = arg;
    /* every commit, short ones too: one that follows a start over must
     * reset the base (see queue_checkpoint_due) */
    pthread_mutex_lock(&q->lock);
    if (queue_checkpoint_due(pages, &q->ckpt_base)) {
        q->is_ckpt_wanted = true;
        pthread_cond_signal(&q->ckpt_cond);
    }
    pthread_mutex_unlock(&q->lock);
    return SQLITE_OK;
}

bool queue_checkpoint_due(int pages, int *base)
{
    if (pages < *base)
        *base = 0; /* the WAL started over since */
    if (pages < QUEUE_CHECKPOINT_PAGES || pages - *base < QUEUE_CHECKPOINT_PAGES)
        return false;
    *base = pages;
    return true;
}

/* Under steady writes a PASSIVE checkpoint never finds the WAL wholly copied
 * (more frames come in while it copies), so the next writer never starts
 * the file over and it grows for as long as the load lasts (gigabytes in a
 * long burst, and every new frame extends the file, which fdatasync must
 * then record too). Hence the RESTART: writers wait the few milliseconds it
 * needs to copy what the PASSIVE one left and for readers to move on, and
 * the WAL begins again. */
int queue_checkpoint(sqlite3 *db, pthread_mutex_t *write_lock, int *restart_at)
{
    int log_pages = 0, done_pages = 0;
    int rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log_pages,
                                       &done_pages);
    if (rc != SQLITE_OK)
        return rc;
    if (log_pages < QUEUE_CHECKPOINT_RESTART_PAGES) {
        *restart_at = QUEUE_CHECKPOINT_RESTART_PAGES; /* it started over */
        return SQLITE_OK;
    }
    if (log_pages < *restart_at)
        return SQLITE_OK;
    if (write_lock != NULL)
        pthread_mutex_lock(write_lock);
    rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_RESTART, NULL, NULL);
    if (write_lock != NULL)
        pthread_mutex_unlock(write_lock);
    /* a reader kept it from finishing: not again before the WAL has grown
     * as much once more, or a long `queue list` would hold writers back at
     * every round */
    *restart_at = rc == SQLITE_OK ? QUEUE_CHECKPOINT_RESTART_PAGES
                                  : log_pages + QUEUE_CHECKPOINT_RESTART_PAGES;
    return rc;
}

/* PASSIVE checkpoints on a connection of its own: they never take the write
 * lock, so commits go on while the WAL is copied; past
 * QUEUE_CHECKPOINT_RESTART_PAGES a RESTART, which holds writers back for
 * what the PASSIVE one left and at most QUEUE_CHECKPOINT_BUSY_MS more. */
static void *queue_run_checkpointer(void *arg)
{
    struct queue *q = arg;
    pthread_setname_np(pthread_self(), "checkpointer");
    int restart_at = QUEUE_CHECKPOINT_RESTART_PAGES;
    pthread_mutex_lock(&q->lock);
    while (!q->is_closing) {
        if (!q->is_ckpt_wanted) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += QUEUE_CHECKPOINT_IDLE_S;
            pthread_cond_timedwait(&q->ckpt_cond, &q->lock, &until);
            if (q->is_closing)
                break;
        }
        q->is_ckpt_wanted = false;
        pthread_mutex_unlock(&q->lock);
        int rc = queue_checkpoint(q->ckpt_db, &q->write_lock, &restart_at);
        if (rc != SQLITE_OK && queue_status_from_sqlite(rc) != QUEUE_ERR_BUSY)
            log_warn(NULL, "queue checkpoint failed rc=%d error=\"%s\"", rc,
                     sqlite3_errmsg(q->ckpt_db));
        pthread_mutex_lock(&q->lock);
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

/* The directory of large bodies, and what a crash left in it: files
 * written for a COMMIT that never happened, or whose row was deleted just
 * before. No committer runs yet, so every file without a row is one. */
static int queue_open_spool(struct queue *q, const char *path)
{
    int err = queue_spool_dir(path, q->spool, sizeof(q->spool));
    if (err == 0)
        err = queue_spool_open(q->spool, &q->spool_fd);
    if (err < 0) {
        log_err(NULL, "queue body directory unusable dir=%s error=\"%s\"", q->spool,
                strerror(-err));
        return SQLITE_CANTOPEN;
    }
    size_t removed = 0;
    int rc = queue_spool_sweep(q->db, q->spool, 0, &removed);
    if (rc < 0)
        return rc == QUEUE_ERR_BUSY ? SQLITE_BUSY : SQLITE_IOERR;
    if (removed > 0)
        log_info(NULL, "queue removed %zu body file%s without a message dir=%s", removed,
                 removed == 1 ? "" : "s", q->spool);
    return SQLITE_OK;
}

int queue_open(const char *path, unsigned busy_timeout_ms, struct queue **out)
{
    *out = NULL;
    struct queue *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return -ENOMEM;
    atomic_init(&q->batches, 0);
    q->spool_fd = -1;
    pthread_mutex_init(&q->write_lock, NULL); /* default attributes: cannot fail */
    int rc = sqlite3_open_v2(path, &q->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, queue_vfs());
    sql_cache_init(&q->sql, q->db);
    if (rc == SQLITE_OK)
        rc = queue_configure(q->db, busy_timeout_ms);
    if (rc == SQLITE_OK)
        rc = queue_migrate(q->db);
    if (rc == SQLITE_OK)
        rc = queue_prepare_statements(q);
    if (rc == SQLITE_OK) {
        sqlite3_wal_autocheckpoint(q->db, 0);
        sqlite3_wal_hook(q->db, queue_on_wal_commit, q);
        rc = sqlite3_open_v2(path, &q->ckpt_db, SQLITE_OPEN_READWRITE, queue_vfs());
        if (rc == SQLITE_OK)
            rc = queue_configure(q->ckpt_db, QUEUE_CHECKPOINT_BUSY_MS);
    }
    if (rc == SQLITE_OK)
        rc = queue_open_spool(q, path);
    if (rc != SQLITE_OK) {
        log_err(NULL, "queue open failed path=%s rc=%d error=\"%s\"", path, rc,
                q->db != NULL ? sqlite3_errmsg(q->db) : sqlite3_errstr(rc));
        queue_free_db(q);
        free(q);
        return queue_status_from_sqlite(rc) == QUEUE_ERR_BUSY ? QUEUE_ERR_BUSY : QUEUE_ERR_STORAGE;
    }
    int err = pthread_mutex_init(&q->lock, NULL);
    if (err == 0) {
        err = pthread_cond_init(&q->cond, NULL);
        if (err != 0)
            pthread_mutex_destroy(&q->lock);
    }
    if (err == 0) {
        err = pthread_cond_init(&q->ckpt_cond, NULL);
        if (err != 0) {
            pthread_cond_destroy(&q->cond);
            pthread_mutex_destroy(&q->lock);
        }
    }
    if (err == 0) {
        err = pthread_create(&q->ckpt_thread, NULL, queue_run_checkpointer, q);
        if (err == 0) {
            err = pthread_create(&q->thread, NULL, queue_run_committer, q);
            if (err != 0) {
                pthread_mutex_lock(&q->lock);
                q->is_closing = true;
                pthread_cond_signal(&q->ckpt_cond);
                pthread_mutex_unlock(&q->lock);
                pthread_join(q->ckpt_thread, NULL);
            }
        }
        if (err != 0) {
            pthread_cond_destroy(&q->ckpt_cond);
            pthread_cond_destroy(&q->cond);
            pthread_mutex_destroy(&q->lock);
        }
    }
    if (err != 0) {
        log_err(NULL, "queue committer thread not started error=\"%s\"", strerror(err));
        queue_free_db(q);
        free(q);
        return -err;
    }
    *out = q;
    return 0;
}

void queue_close(struct queue *q)
{
    if (q == NULL)
        return;
    pthread_mutex_lock(&q->lock);
    q->is_closing = true;
    pthread_cond_signal(&q->cond);
    pthread_cond_signal(&q->ckpt_cond);
    pthread_mutex_unlock(&q->lock);
    pthread_join(q->thread, NULL); /* the committer drains the list first */
    pthread_join(q->ckpt_thread, NULL);
    pthread_cond_destroy(&q->ckpt_cond);
    pthread_cond_destroy(&q->cond);
    pthread_mutex_destroy(&q->lock);
    queue_free_db(q);
    free(q);
}

int queue_commit_submit(struct queue *q, struct queue_commit_req *req)
{
    if (req == NULL || req->cb == NULL)
        fatal("queue_commit_submit: request without a callback");
    req->next = NULL;
    pthread_mutex_lock(&q->lock);
    if (q->is_closing) {
        pthread_mutex_unlock(&q->lock);
        return QUEUE_ERR_CLOSED;
    }
    if (q->tail != NULL)
        q->tail->next = req;
    else
        q->head = req;
    q->tail = req;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
    return 0;
}

void queue_task_submit(struct queue *q, struct queue_task *t)
{
    if (t == NULL || t->run == NULL)
        fatal("queue_task_submit: a task without its function");
    t->next = NULL;
    pthread_mutex_lock(&q->lock);
    if (q->task_tail != NULL)
        q->task_tail->next = t;
    else
        q->task_head = t;
    q->task_tail = t;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

pthread_mutex_t *queue_share(struct queue *q, sqlite3 *db)
{
    sqlite3_wal_autocheckpoint(db, 0);
    sqlite3_wal_hook(db, queue_on_wal_commit, q);
    return &q->write_lock;
}

void queue_set_committed_hook(struct queue *q, queue_committed_hook hook, void *arg)
{
    /* the committer calls the hook holding write_lock: once we have it, no
     * call with the old hook is under way */
    pthread_mutex_lock(&q->write_lock);
    pthread_mutex_lock(&q->lock);
    q->hook = hook;
    q->hook_arg = arg;
    pthread_mutex_unlock(&q->lock);
    pthread_mutex_unlock(&q->write_lock);
}

void queue_set_policy(struct queue *q, const struct policy_defaults *d)
{
    pthread_mutex_lock(&q->lock);
    q->has_policy = d != NULL;
    if (d != NULL)
        q->policy = *d;
    pthread_mutex_unlock(&q->lock);
}

uint64_t queue_stats_batches(struct queue *q)
{
    return (uint64_t)atomic_load(&q->batches);
}

/* ---- queue ids -------------------------------------------------------- */

/* 15 base-62 digits hold 89 bits: 42 bits of milliseconds since 2020 (until
 * 2159) on top, so ids sort roughly by time; then 24 random bits fixed per
 * process (two daemons, or a restart within the same millisecond, differ)
 * and a 23-bit atomic counter (threads of one process never collide unless
 * one millisecond sees 8 million ids). */
#define QUEUE_ID_EPOCH_MS 1577836800000ULL /* 2020-01-01T00:00:00Z */
#define QUEUE_ID_TIME_BITS 42
#define QUEUE_ID_RANDOM_BITS 24
#define QUEUE_ID_COUNTER_BITS 23

static const char queue_id_digits[] =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
static pthread_once_t queue_id_once = PTHREAD_ONCE_INIT;
static atomic_uint_fast32_t queue_id_random;
static atomic_uint_fast32_t queue_id_counter;

static void queue_id_seed(void)
{
    uint32_t seed[2];
    if (getrandom(seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed)) {
        /* Early boot without entropy: still distinct per process and time. */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        seed[0] = (uint32_t)getpid() * 2654435761u ^ (uint32_t)ts.tv_nsec;
        seed[1] = (uint32_t)ts.tv_sec ^ ((uint32_t)ts.tv_nsec << 7);
    }
    atomic_store(&queue_id_random, seed[0] & ((1u << QUEUE_ID_RANDOM_BITS) - 1));
    atomic_store(&queue_id_counter, seed[1]);
}

static void queue_id_init(void)
{
    queue_id_seed();
    /* A forked child must not replay its parent's ids. */
    pthread_atfork(NULL, NULL, queue_id_seed);
}

void queue_id_new(char out[QUEUE_ID_SIZE])
{
    pthread_once(&queue_id_once, queue_id_init);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t now_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    uint64_t ms = now_ms > QUEUE_ID_EPOCH_MS ? now_ms - QUEUE_ID_EPOCH_MS : 0;
    ms &= (1ULL << QUEUE_ID_TIME_BITS) - 1;
    uint64_t random = atomic_load(&queue_id_random);
    uint64_t counter = atomic_fetch_add(&queue_id_counter, 1) & ((1u << QUEUE_ID_COUNTER_BITS) - 1);

    /* The 89-bit value as three 32-bit limbs, most significant first, so
     * that 32-bit targets (no __int128) encode the same ids. */
    const unsigned low_bits = QUEUE_ID_RANDOM_BITS + QUEUE_ID_COUNTER_BITS;
    uint64_t lo = ms << low_bits | random << QUEUE_ID_COUNTER_BITS | counter;
    uint32_t limbs[3] = {(uint32_t)(ms >> (64 - low_bits)), (uint32_t)(lo >> 32), (uint32_t)lo};
    for (int i = QUEUE_ID_SIZE - 2; i >= 0; i--) {
        uint64_t rem = 0;
        for (size_t k = 0; k < 3; k++) { /* long division by 62 */
            uint64_t cur = rem << 32 | limbs[k];
            limbs[k] = (uint32_t)(cur / 62);
            rem = cur % 62;
        }
        out[i] = queue_id_digits[rem];
    }
    out[QUEUE_ID_SIZE - 1] = '\0';
}

/* ---- the reader ------------------------------------------------------- */

int queue_reader_open(const char *path, struct queue_reader **out)
{
    *out = NULL;
    struct queue_reader *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -ENOMEM;
    /* READWRITE without CREATE: reading a WAL database needs its -shm file
     * writable, but a wrong path must not create an empty database. The
     * connection itself never writes (query_only). */
    int rc = queue_spool_dir(path, r->spool, sizeof(r->spool)) == 0
                 ? sqlite3_open_v2(path, &r->db, SQLITE_OPEN_READWRITE, queue_vfs())
                 : SQLITE_CANTOPEN;
    if (rc == SQLITE_OK) {
        sqlite3_extended_result_codes(r->db, 1);
        sqlite3_busy_timeout(r->db, QUEUE_READER_BUSY_MS);
        rc = queue_exec(r->db, "PRAGMA query_only=ON");
    }
    if (rc != SQLITE_OK) {
        log_err(NULL, "queue reader open failed path=%s rc=%d error=\"%s\"", path, rc,
                r->db != NULL ? sqlite3_errmsg(r->db) : sqlite3_errstr(rc));
        sqlite3_close(r->db);
        free(r);
        return queue_status_from_sqlite(rc) == QUEUE_ERR_BUSY ? QUEUE_ERR_BUSY : QUEUE_ERR_STORAGE;
    }
    *out = r;
    return 0;
}

void queue_reader_close(struct queue_reader *r)
{
    if (r == NULL)
        return;
    sqlite3_close(r->db);
    free(r);
}

/* True when the queue tables exist: a database only the account store has
 * touched yet holds an empty queue, not an error. */
static bool queue_reader_has_tables(struct queue_reader *r)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'",
                           -1, &st, NULL) != SQLITE_OK)
        return true; /* let the caller's own query report the error */
    bool has = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return has;
}

/* Prepare a reader query (statements are per call, so callbacks may use the
 * reader again). *st stays NULL, with 0 returned, when the tables do not
 * exist yet. */
int queue_reader_prepare(struct queue_reader *r, const char *sql, sqlite3_stmt **st)
{
    *st = NULL;
    int rc = sqlite3_prepare_v2(r->db, sql, -1, st, NULL);
    if (rc == SQLITE_OK)
        return 0;
    if (!queue_reader_has_tables(r))
        return 0;
    log_err(NULL, "queue read failed rc=%d error=\"%s\"", rc, sqlite3_errmsg(r->db));
    return queue_status_from_sqlite(rc);
}

int queue_reader_fail(struct queue_reader *r, sqlite3_stmt *st, int rc)
{
    log_err(NULL, "queue read failed rc=%d error=\"%s\"", rc, sqlite3_errmsg(r->db));
    sqlite3_finalize(st);
    return queue_status_from_sqlite(rc);
}

void queue_entry_from_row(sqlite3_stmt *st, struct queue_entry *e)
{
    memset(e, 0, sizeof(*e));
    queue_copy_text(e->qid, sizeof(e->qid), st, 0);
    e->created_at = sqlite3_column_int64(st, 1);
    queue_copy_text(e->sender, sizeof(e->sender), st, 2);
    queue_copy_text(e->auth_user, sizeof(e->auth_user), st, 3);
    queue_copy_text(e->client_addr, sizeof(e->client_addr), st, 4);
    sqlite3_int64 size = sqlite3_column_int64(st, 5);
    e->size = size > 0 ? (uint64_t)size : 0;
    queue_copy_text(e->state, sizeof(e->state), st, 6);
    e->recipient_count = (size_t)sqlite3_column_int64(st, 7);
    queue_copy_text(e->kind, sizeof(e->kind), st, 8);
    e->is_held = sqlite3_column_int(st, 9) != 0;
    e->next_attempt_at = sqlite3_column_int64(st, 10);
    e->pending_count = (size_t)sqlite3_column_int64(st, 11);
    queue_copy_text(e->last_error, sizeof(e->last_error), st, 12);
}

int queue_reader_list(struct queue_reader *r,
                      int (*cb)(const struct queue_entry *e, void *arg), void *arg)
{
    sqlite3_stmt *st;
    /* id order is commit order: oldest first. */
    int rc = queue_reader_prepare(
        r,
        QUEUE_ENTRY_SELECT " ORDER BY m.id",
        &st);
    if (rc < 0 || st == NULL)
        return rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct queue_entry e;
        queue_entry_from_row(st, &e);
        if (cb(&e, arg) != 0) {
            sqlite3_finalize(st);
            return 0;
        }
    }
    if (rc != SQLITE_DONE)
        return queue_reader_fail(r, st, rc);
    sqlite3_finalize(st);
    return 0;
}

/* 0 when a message with this qid exists, QUEUE_ERR_NOT_FOUND when not. */
static int queue_reader_message_exists(struct queue_reader *r, const char *qid)
{
    sqlite3_stmt *st;
    int rc = queue_reader_prepare(r, "SELECT 1 FROM messages WHERE qid = ?", &st);
    if (rc < 0)
        return rc;
    if (st == NULL)
        return QUEUE_ERR_NOT_FOUND;
    sqlite3_bind_text(st, 1, qid, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return queue_reader_fail(r, st, rc);
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : QUEUE_ERR_NOT_FOUND;
}

int queue_reader_recipients(struct queue_reader *r, const char *qid,
                            int (*cb)(const char *rcpt, const char *state, void *arg), void *arg)
{
    sqlite3_stmt *st;
    int rc = queue_reader_prepare(r,
                                  "SELECT r.address, r.state FROM recipients r"
                                  " JOIN messages m ON m.id = r.message_id"
                                  " WHERE m.qid = ? ORDER BY r.id",
                                  &st);
    if (rc < 0)
        return rc;
    if (st == NULL)
        return QUEUE_ERR_NOT_FOUND;
    sqlite3_bind_text(st, 1, qid, -1, SQLITE_STATIC);
    size_t count = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        count++;
        const unsigned char *address = sqlite3_column_text(st, 0);
        const unsigned char *state = sqlite3_column_text(st, 1);
        if (cb(address != NULL ? (const char *)address : "",
               state != NULL ? (const char *)state : "", arg) != 0) {
            sqlite3_finalize(st);
            return 0;
        }
    }
    if (rc != SQLITE_DONE)
        return queue_reader_fail(r, st, rc);
    sqlite3_finalize(st);
    return count > 0 ? 0 : queue_reader_message_exists(r, qid);
}

int queue_reader_body(struct queue_reader *r, const char *qid, uint8_t **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    sqlite3_stmt *st;
    int rc = queue_reader_prepare(r,
                                  "SELECT " QUEUE_BODY_COLUMNS " FROM messages m JOIN bodies b"
                                  " ON b.message_id = m.id WHERE m.qid = ?",
                                  &st);
    if (rc < 0)
        return rc;
    if (st == NULL)
        return QUEUE_ERR_NOT_FOUND;
    sqlite3_bind_text(st, 1, qid, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        sqlite3_finalize(st);
        return QUEUE_ERR_NOT_FOUND;
    }
    if (rc != SQLITE_ROW)
        return queue_reader_fail(r, st, rc);
    rc = queue_body_from_row(st, r->spool, out, out_len);
    sqlite3_finalize(st);
    return rc;
}

/* queue_store.c — the delivery side of the queue: what the relay runner
 * reads (due recipients, bodies) and writes (one transaction per attempt
 * result: attempt rows, recipient states, new DSN messages, the message's
 * own state), the admin actions behind `smarthostctl queue`, and the reader
 * queries `queue show` uses. Blocking SQLite on its own connection, so
 * callers run it on a worker thread. A recipient becomes 'delivered' only in
 * a transaction written after the remote 250; whatever was in flight when
 * the process died is still 'queued' or 'deferred' and is tried again. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "core/log.h"
#include "core/queue.h"
#include "core/queue_internal.h"
#include "core/sql_cache.h"

/* A recipient still waiting for delivery. */
#define QUEUE_PENDING "r.state IN ('queued', 'deferred')"

/* A file younger than this is left by the sweep: its COMMIT may be coming. */
#define QUEUE_SPOOL_SWEEP_AGE_S 600

struct queue_store {
    sqlite3 *db;
    char spool[4200]; /* queue_spool_dir() of the database */
    /* body files whose rows the open transaction deletes: removed once it
     * commits, forgotten if it rolls back */
    char (*doomed)[QUEUE_ID_SIZE];
    size_t doomed_count, doomed_cap;
    struct sql_cache sql; /* the runner runs the same few statements per message */
    pthread_mutex_t *write_lock; /* the daemon's queue's (queue_store_share), or NULL */
    bool is_borrowed;            /* db is another's: queue_store_borrow */
};

static void store_write_begin(struct queue_store *s)
{
    if (s->write_lock != NULL)
        pthread_mutex_lock(s->write_lock);
}

static void store_write_end(struct queue_store *s)
{
    if (s->write_lock != NULL)
        pthread_mutex_unlock(s->write_lock);
}

static int store_prepare(struct queue_store *s, const char *sql, sqlite3_stmt **st)
{
    return sql_cache_prepare(&s->sql, sql, st);
}

static void store_done(struct queue_store *s, sqlite3_stmt *st)
{
    sql_cache_done(&s->sql, st);
}

int queue_store_open(const char *path, unsigned busy_timeout_ms, struct queue_store **out)
{
    *out = NULL;
    struct queue_store *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    int rc = queue_spool_dir(path, s->spool, sizeof(s->spool)) == 0
                 ? sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, queue_vfs())
                 : SQLITE_CANTOPEN;
    if (rc == SQLITE_OK)
        rc = queue_configure(s->db, busy_timeout_ms);
    if (rc == SQLITE_OK)
        rc = queue_migrate(s->db);
    if (rc != SQLITE_OK) {
        log_err(NULL, "queue store open failed path=%s rc=%d error=\"%s\"", path, rc,
                s->db != NULL ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        sqlite3_close(s->db);
        free(s);
        return queue_status_from_sqlite(rc) == QUEUE_ERR_BUSY ? QUEUE_ERR_BUSY : QUEUE_ERR_STORAGE;
    }
    sql_cache_init(&s->sql, s->db);
    *out = s;
    return 0;
}

struct queue_store *queue_store_borrow(sqlite3 *db, const char *spool,
                                       pthread_mutex_t *write_lock)
{
    struct queue_store *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->db = db;
    s->is_borrowed = true;
    s->write_lock = write_lock;
    snprintf(s->spool, sizeof(s->spool), "%s", spool);
    sql_cache_init(&s->sql, db);
    return s;
}

void queue_store_close(struct queue_store *s)
{
    if (s == NULL)
        return;
    sql_cache_clear(&s->sql);
    if (!s->is_borrowed)
        sqlite3_close(s->db);
    free(s->doomed);
    free(s);
}

void queue_store_share(struct queue_store *s, struct queue *q)
{
    s->write_lock = queue_share(q, s->db);
}

sqlite3 *queue_store_db(struct queue_store *s)
{
    return s->db;
}

static int queue_store_fail(struct queue_store *s, sqlite3_stmt *st, int rc, const char *what)
{
    log_err(NULL, "queue %s failed rc=%d error=\"%s\"", what, rc, sqlite3_errmsg(s->db));
    store_done(s, st);
    if (!sqlite3_get_autocommit(s->db))
        queue_exec(s->db, "ROLLBACK");
    return queue_status_from_sqlite(rc);
}

/* ---- reading what is due ------------------------------------------------ */

void queue_due_free(struct queue_due *due, size_t count)
{
    if (due == NULL)
        return;
    for (size_t i = 0; i < count; i++)
        free(due[i].rcpts);
    free(due);
}

static int queue_store_due_rcpts(struct queue_store *s, struct queue_due *d, int64_t now)
{
    sqlite3_stmt *st = NULL;
    int rc = store_prepare(s,
                           "SELECT r.id, r.address, r.attempts FROM recipients r"
                           " WHERE r.message_id = ? AND " QUEUE_PENDING
                           " AND r.next_attempt_at <= ? ORDER BY r.id", &st);
    if (rc != SQLITE_OK)
        return queue_store_fail(s, st, rc, "due recipients");
    sqlite3_bind_int64(st, 1, d->id);
    sqlite3_bind_int64(st, 2, now);
    size_t cap = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (d->rcpt_count == cap) {
            size_t ncap = cap ? cap * 2 : 4;
            struct queue_due_rcpt *n = realloc(d->rcpts, ncap * sizeof(*n));
            if (n == NULL) {
                store_done(s, st);
                return -ENOMEM;
            }
            d->rcpts = n;
            cap = ncap;
        }
        struct queue_due_rcpt *r = &d->rcpts[d->rcpt_count++];
        r->id = sqlite3_column_int64(st, 0);
        queue_copy_text(r->address, sizeof(r->address), st, 1);
        r->attempts = (unsigned)sqlite3_column_int(st, 2);
    }
    if (rc != SQLITE_DONE)
        return queue_store_fail(s, st, rc, "due recipients");
    store_done(s, st);
    return 0;
}

int queue_store_due(struct queue_store *s, int64_t now, size_t max,
                    bool (*skip)(int64_t message_id, void *arg), void *arg,
                    struct queue_due **out, size_t *count)
{
    *out = NULL;
    *count = 0;
    if (max == 0)
        return 0;
    sqlite3_stmt *st = NULL;
    /* messages.next_attempt_at is kept equal to the earliest pending
     * recipient's, so the index on it finds what is due. */
    int rc = store_prepare(s,
                           "SELECT m.id, m.qid, m.created_at, m.sender, m.auth_user, m.kind,"
                           " m.warned_at, m.size FROM messages m"
                           " WHERE m.state = 'queued' AND m.held = 0"
                           " AND m.next_attempt_at <= ? ORDER BY m.next_attempt_at, m.id", &st);
    if (rc != SQLITE_OK)
        return queue_store_fail(s, st, rc, "due messages");
    sqlite3_bind_int64(st, 1, now);
    /* grown as rows come: a scan usually finds a few messages, and max of
     * them (over 1 KiB each) zeroed every time cost more than the reads */
    struct queue_due *due = NULL;
    size_t n = 0, cap = 0;
    while (n < max && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(st, 0);
        if (skip != NULL && skip(id, arg))
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            if (ncap > max)
                ncap = max;
            struct queue_due *g = realloc(due, ncap * sizeof(*g));
            if (g == NULL) {
                queue_due_free(due, n);
                store_done(s, st);
                return -ENOMEM;
            }
            due = g;
            cap = ncap;
        }
        struct queue_due *d = &due[n];
        memset(d, 0, sizeof(*d));
        d->id = id;
        queue_copy_text(d->qid, sizeof(d->qid), st, 1);
        d->created_at = sqlite3_column_int64(st, 2);
        queue_copy_text(d->sender, sizeof(d->sender), st, 3);
        queue_copy_text(d->auth_user, sizeof(d->auth_user), st, 4);
        queue_copy_text(d->kind, sizeof(d->kind), st, 5);
        d->warned_at = sqlite3_column_int64(st, 6);
        sqlite3_int64 size = sqlite3_column_int64(st, 7);
        d->size = size > 0 ? (uint64_t)size : 0;
        n++;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        queue_due_free(due, n);
        return queue_store_fail(s, st, rc, "due messages");
    }
    store_done(s, st);
    /* the sending account's owner gets its bounces (auth's table: absent in
     * a database the account store never opened, which is fine) */
    sqlite3_stmt *ost = NULL;
    if (store_prepare(s, "SELECT owner FROM accounts WHERE name = ?", &ost) == SQLITE_OK) {
        for (size_t i = 0; i < n; i++) {
            if (due[i].auth_user[0] == '\0')
                continue;
            sqlite3_bind_text(ost, 1, due[i].auth_user, -1, SQLITE_STATIC);
            if (sqlite3_step(ost) == SQLITE_ROW)
                queue_copy_text(due[i].owner, sizeof(due[i].owner), ost, 0);
            sqlite3_reset(ost);
        }
    }
    store_done(s, ost);
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        rc = queue_store_due_rcpts(s, &due[i], now);
        if (rc < 0) {
            queue_due_free(due, n);
            return rc;
        }
        /* a slot moved down or dropped keeps no pointer: the error path
         * above frees every slot's recipients */
        if (due[i].rcpt_count == 0) { /* raced with another writer: nothing due after all */
            free(due[i].rcpts);
            due[i].rcpts = NULL;
            continue;
        }
        if (kept != i) {
            due[kept] = due[i];
            due[i].rcpts = NULL;
            due[i].rcpt_count = 0;
        }
        kept++;
    }
    *out = due;
    *count = kept;
    if (kept == 0) {
        free(due);
        *out = NULL;
    }
    return 0;
}

int queue_store_next_due(struct queue_store *s, int64_t *at)
{
    *at = INT64_MAX;
    sqlite3_stmt *st = NULL;
    int rc = store_prepare(s,
                           "SELECT MIN(next_attempt_at) FROM messages"
                           " WHERE state = 'queued' AND held = 0", &st);
    if (rc != SQLITE_OK)
        return queue_store_fail(s, st, rc, "next due");
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        return queue_store_fail(s, st, rc, "next due");
    if (sqlite3_column_type(st, 0) != SQLITE_NULL)
        *at = sqlite3_column_int64(st, 0);
    store_done(s, st);
    return 0;
}

int queue_store_read_begin(struct queue_store *s)
{
    /* A deferred BEGIN takes its snapshot at the first read: read once
     * here, under the write lock, so that no commit of the queue is between
     * its COMMIT and the end of its committed hook (see queue.h). */
    store_write_begin(s);
    int rc = sql_cache_exec(&s->sql, "BEGIN");
    sqlite3_stmt *st = NULL;
    if (rc == SQLITE_OK)
        rc = store_prepare(s, "SELECT id FROM messages LIMIT 1", &st);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        rc = rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    store_done(s, st);
    store_write_end(s);
    return rc == SQLITE_OK ? 0 : queue_store_fail(s, NULL, rc, "read begin");
}

void queue_store_read_end(struct queue_store *s)
{
    if (!sqlite3_get_autocommit(s->db) && sql_cache_exec(&s->sql, "COMMIT") != SQLITE_OK)
        queue_exec(s->db, "ROLLBACK");
}

int queue_store_body(struct queue_store *s, int64_t message_id, uint8_t **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    sqlite3_stmt *st = NULL;
    int rc = store_prepare(s,
                           "SELECT " QUEUE_BODY_COLUMNS " FROM bodies b"
                           " JOIN messages m ON m.id = b.message_id WHERE b.message_id = ?", &st);
    if (rc != SQLITE_OK)
        return queue_store_fail(s, st, rc, "body read");
    sqlite3_bind_int64(st, 1, message_id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        store_done(s, st);
        return QUEUE_ERR_NOT_FOUND;
    }
    if (rc != SQLITE_ROW)
        return queue_store_fail(s, st, rc, "body read");
    rc = queue_body_from_row(st, s->spool, out, out_len);
    store_done(s, st);
    return rc;
}

/* ---- writing an outcome ------------------------------------------------- */

static int queue_store_insert_attempt(struct queue_store *s, int64_t message_id, int64_t now,
                                      const struct queue_attempt *a)
{
    sqlite3_stmt *st = NULL;
    int rc = store_prepare(s,
                           "INSERT INTO attempts(message_id, recipient_id, at, domain, host,"
                           " address, step, tls, reply, outcome)"
                           " VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", &st);
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_bind_int64(st, 1, message_id);
    if (a->recipient_id > 0)
        sqlite3_bind_int64(st, 2, a->recipient_id);
    else
        sqlite3_bind_null(st, 2);
    sqlite3_bind_int64(st, 3, now);
    const char *texts[] = {a->domain, a->host, a->address, a->step, a->tls, a->reply, a->outcome};
    for (int i = 0; i < 7; i++)
        sqlite3_bind_text(st, 4 + i, texts[i] != NULL ? texts[i] : "", -1, SQLITE_STATIC);
    rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(s->db);
    store_done(s, st);
    return rc;
}

static int queue_store_update_rcpt(struct queue_store *s, int64_t message_id, int64_t now,
                                   const struct queue_rcpt_update *u)
{
    sqlite3_stmt *st = NULL;
    /* Only a pending recipient changes: a result arriving for one an admin
     * has meanwhile deleted (or a duplicate) changes nothing. */
    int rc = store_prepare(s,
                           "UPDATE recipients SET state = ?, attempts = attempts + 1,"
                           " next_attempt_at = ?, dsn_status = ?, last_error = ?,"
                           " updated_at = ? WHERE id = ? AND message_id = ?"
                           " AND state IN ('queued', 'deferred')", &st);
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_bind_text(st, 1, u->state, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, u->next_attempt_at);
    sqlite3_bind_text(st, 3, u->dsn_status != NULL ? u->dsn_status : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, u->last_error != NULL ? u->last_error : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, now);
    sqlite3_bind_int64(st, 6, u->recipient_id);
    sqlite3_bind_int64(st, 7, message_id);
    rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(s->db);
    store_done(s, st);
    return rc;
}

static int queue_store_insert_message(struct queue_store *s, int64_t now,
                                      const struct queue_new_message *m)
{
    if (m->qid == NULL || m->recipient_count == 0 || m->data_len > INT_MAX)
        return SQLITE_MISUSE;
    sqlite3_stmt *st = NULL;
    int rc = store_prepare(s,
                           "INSERT INTO messages(qid, created_at, sender, auth_user,"
                           " client_addr, helo, size, body, kind)"
                           " VALUES(?, ?, ?, '', '', '', ?, X'', ?)", &st);
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_bind_text(st, 1, m->qid, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    sqlite3_bind_text(st, 3, m->sender != NULL ? m->sender : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)m->data_len);
    sqlite3_bind_text(st, 5, m->kind != NULL ? m->kind : "dsn", -1, SQLITE_STATIC);
    rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(s->db);
    store_done(s, st);
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_int64 id = sqlite3_last_insert_rowid(s->db);
    rc = store_prepare(s, "INSERT INTO bodies(message_id, data) VALUES(?, ?)", &st);
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_blob(st, 2, m->data_len > 0 ? m->data : (const void *)"", (int)m->data_len,
                      SQLITE_STATIC);
    rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(s->db);
    store_done(s, st);
    if (rc != SQLITE_OK)
        return rc;
    rc = store_prepare(s, "INSERT INTO recipients(message_id, address) VALUES(?, ?)", &st);
    if (rc != SQLITE_OK)
        return rc;
    for (size_t i = 0; rc == SQLITE_OK && i < m->recipient_count; i++) {
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_text(st, 2, m->recipients[i], -1, SQLITE_STATIC);
        rc = queue_step_done(st);
    }
    store_done(s, st);
    return rc;
}

/* The message row follows its recipients: due when the earliest pending
 * one is, done (with done_at) when none is pending. One pass over the
 * message's recipients, by recipients_message_id: the '+' keeps the planner
 * off recipients_state_due, which would walk every pending recipient in the
 * queue to find this message's (a backlog made each outcome cost as much as
 * the backlog was long). */
static int queue_store_refresh_message(struct queue_store *s, int64_t message_id, int64_t now,
                                       bool is_warned)
{
    sqlite3_stmt *st = NULL;
    int rc = store_prepare(
        s,
        "UPDATE messages SET (next_attempt_at, state, done_at, warned_at) = ("
        "SELECT COALESCE(MIN(r.next_attempt_at), messages.next_attempt_at),"
        " CASE WHEN COUNT(*) > 0 THEN 'queued' ELSE 'done' END,"
        " CASE WHEN COUNT(*) > 0 THEN 0 WHEN messages.done_at > 0 THEN messages.done_at"
        "  ELSE ?1 END,"
        " CASE WHEN ?2 THEN ?1 ELSE messages.warned_at END"
        " FROM recipients r WHERE r.message_id = messages.id AND +" QUEUE_PENDING ")"
        " WHERE id = ?3", &st);
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_bind_int64(st, 1, now);
    sqlite3_bind_int(st, 2, is_warned ? 1 : 0);
    sqlite3_bind_int64(st, 3, message_id);
    rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(s->db);
    store_done(s, st);
    return rc;
}

/* Note message_id's body file (if it has one) for removal after COMMIT;
 * only_done: only when the message is finished. An SQLite code. */
static int queue_store_doom_file(struct queue_store *s, int64_t message_id, bool only_done)
{
    sqlite3_stmt *st = NULL;
    int rc = store_prepare(s,
                           "SELECT m.qid FROM messages m JOIN bodies b ON b.message_id = m.id"
                           " WHERE m.id = ?1 AND b.file = 1 AND (?2 = 0 OR m.state = 'done')", &st);
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_bind_int64(st, 1, message_id);
    sqlite3_bind_int(st, 2, only_done ? 1 : 0);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        if (s->doomed_count == s->doomed_cap) {
            size_t cap = s->doomed_cap ? s->doomed_cap * 2 : 16;
            void *p = realloc(s->doomed, cap * sizeof(*s->doomed));
            if (p == NULL) {
                store_done(s, st);
                return SQLITE_NOMEM;
            }
            s->doomed = p;
            s->doomed_cap = cap;
        }
        queue_copy_text(s->doomed[s->doomed_count++], QUEUE_ID_SIZE, st, 0);
        rc = SQLITE_OK;
    } else {
        rc = rc == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(s->db);
    }
    store_done(s, st);
    return rc;
}

/* After the COMMIT that deleted their rows (committed) or a rollback. */
static void queue_store_settle_files(struct queue_store *s, bool is_committed)
{
    for (size_t i = 0; is_committed && i < s->doomed_count; i++)
        queue_spool_remove(s->spool, s->doomed[i]);
    s->doomed_count = 0;
}

/* A finished message keeps its envelope, recipients and attempts for `queue
 * show` (keep_done), not its content: no copy of delivered mail stays on
 * disk, and the freed pages take the next messages instead of growing the
 * file. Any DSN was composed before, in the same transaction. */
static int queue_store_drop_done_body(struct queue_store *s, int64_t message_id)
{
    int rc = queue_store_doom_file(s, message_id, true);
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_stmt *st = NULL;
    rc = store_prepare(s,
                       "DELETE FROM bodies WHERE message_id = ?1 AND EXISTS("
                       "SELECT 1 FROM messages WHERE id = ?1 AND state = 'done')", &st);
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_bind_int64(st, 1, message_id);
    rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(s->db);
    store_done(s, st);
    return rc;
}

/* One outcome's rows, inside the caller's transaction; *step names the
 * statement that failed; *status: 0, or QUEUE_ERR_NOT_FOUND when its
 * message was deleted (nothing written). Returns an SQLite code. */
static int queue_store_write_outcome(struct queue_store *s, const struct queue_outcome *o,
                                     const char **step, int *status)
{
    int rc = SQLITE_OK;
    *status = 0;
    if (o->qid != NULL) {
        *step = "lookup";
        sqlite3_stmt *st = NULL;
        rc = store_prepare(s, "SELECT qid = ?2 FROM messages WHERE id = ?1", &st);
        if (rc != SQLITE_OK)
            return rc;
        sqlite3_bind_int64(st, 1, o->message_id);
        sqlite3_bind_text(st, 2, o->qid, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (!(rc == SQLITE_ROW && sqlite3_column_int(st, 0) == 1))
            *status = QUEUE_ERR_NOT_FOUND;
        rc = rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(s->db);
        store_done(s, st);
        if (rc != SQLITE_OK || *status != 0)
            return rc;
    }
    for (size_t i = 0; rc == SQLITE_OK && i < o->attempt_count; i++) {
        *step = "attempt";
        rc = queue_store_insert_attempt(s, o->message_id, o->now, &o->attempts[i]);
    }
    for (size_t i = 0; rc == SQLITE_OK && i < o->rcpt_count; i++) {
        *step = "recipient";
        rc = queue_store_update_rcpt(s, o->message_id, o->now, &o->rcpts[i]);
    }
    for (size_t i = 0; rc == SQLITE_OK && i < o->created_count; i++) {
        *step = "new message";
        rc = queue_store_insert_message(s, o->now, &o->created[i]);
    }
    if (rc == SQLITE_OK) {
        *step = "message";
        rc = queue_store_refresh_message(s, o->message_id, o->now, o->is_warned);
    }
    if (rc == SQLITE_OK) {
        *step = "body";
        rc = queue_store_drop_done_body(s, o->message_id);
    }
    return rc;
}

/* outcomes[0 .. n) in one transaction; an SQLite code; when it is
 * SQLITE_OK, status[i] as queue_store_write_outcome sets it. */
static int queue_store_record_group(struct queue_store *s, const struct queue_outcome *const *o,
                                    size_t n, int *status)
{
    const char *step = "begin";
    s->doomed_count = 0;
    store_write_begin(s);
    int rc = sql_cache_exec(&s->sql, "BEGIN IMMEDIATE");
    for (size_t i = 0; rc == SQLITE_OK && i < n; i++)
        rc = queue_store_write_outcome(s, o[i], &step, &status[i]);
    if (rc == SQLITE_OK) {
        step = "commit";
        rc = sql_cache_exec(&s->sql, "COMMIT");
    }
    if (rc != SQLITE_OK) {
        log_warn(NULL, "queue outcome write failed step=%s outcomes=%zu rc=%d error=\"%s\"", step,
                 n, rc, sqlite3_errmsg(s->db));
        if (!sqlite3_get_autocommit(s->db))
            queue_exec(s->db, "ROLLBACK");
    }
    store_write_end(s);
    queue_store_settle_files(s, rc == SQLITE_OK);
    return rc;
}

/* The status of a failed write (never 0). */
static int queue_store_status(int rc)
{
    return queue_status_from_sqlite(rc) == QUEUE_OK ? QUEUE_ERR_STORAGE : queue_status_from_sqlite(rc);
}

int queue_store_record_batch(struct queue_store *s, const struct queue_outcome *const *o, size_t n,
                             int *status)
{
    int rc = queue_store_record_group(s, o, n, status);
    bool is_busy = queue_status_from_sqlite(rc) == QUEUE_ERR_BUSY; /* retrying would wait again */
    for (size_t i = 0; rc != SQLITE_OK && i < n; i++) {
        int one = n == 1 || is_busy ? rc : queue_store_record_group(s, &o[i], 1, &status[i]);
        if (one != SQLITE_OK)
            status[i] = queue_store_status(one);
    }
    int first = 0;
    for (size_t i = 0; i < n && first == 0; i++)
        first = status[i];
    return first;
}

int queue_store_record(struct queue_store *s, const struct queue_outcome *o)
{
    int status = 0;
    return queue_store_record_batch(s, &o, 1, &status);
}

/* ---- admin actions ------------------------------------------------------ */

/* Run one UPDATE/DELETE with an optional qid (?1) and number (?2) bound;
 * *changes gets the rows changed. */
static int queue_store_change(struct queue_store *s, const char *sql, const char *qid,
                              int64_t number, size_t *changes, const char *what)
{
    sqlite3_stmt *st = NULL;
    int rc = store_prepare(s, sql, &st);
    if (rc != SQLITE_OK)
        return queue_store_fail(s, st, rc, what);
    if (qid != NULL)
        sqlite3_bind_text(st, 1, qid, -1, SQLITE_STATIC);
    if (sqlite3_bind_parameter_count(st) >= 2)
        sqlite3_bind_int64(st, 2, number);
    rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return queue_store_fail(s, st, rc, what);
    store_done(s, st);
    *changes = (size_t)sqlite3_changes(s->db);
    return 0;
}

static int queue_store_hold_txn(struct queue_store *s, const char *qid, bool is_held)
{
    size_t n = 0;
    int rc = queue_store_change(s, "UPDATE messages SET held = ?2 WHERE qid = ?1", qid,
                                is_held ? 1 : 0, &n, "hold");
    if (rc < 0)
        return rc;
    return n > 0 ? 0 : QUEUE_ERR_NOT_FOUND;
}

static int queue_store_retry_txn(struct queue_store *s, const char *qid, int64_t now,
                                 size_t *count)
{
    *count = 0;
    bool is_all = qid == NULL || qid[0] == '\0';
    int rc = queue_exec(s->db, "BEGIN IMMEDIATE");
    if (rc != SQLITE_OK)
        return queue_store_fail(s, NULL, rc, "retry");
    size_t n = 0;
    /* ?1 is the qid (NULL: every message not held). */
    rc = queue_store_change(s,
                            "UPDATE recipients SET next_attempt_at = ?2"
                            " WHERE state IN ('queued', 'deferred') AND message_id IN"
                            " (SELECT id FROM messages WHERE state = 'queued' AND"
                            "  (?1 IS NULL AND held = 0 OR qid = ?1))",
                            is_all ? NULL : qid, now, &n, "retry");
    if (rc == 0)
        rc = queue_store_change(s,
                                "UPDATE messages SET next_attempt_at = ?2"
                                " WHERE state = 'queued' AND (?1 IS NULL AND held = 0 OR qid = ?1)",
                                is_all ? NULL : qid, now, count, "retry");
    if (rc < 0)
        return rc; /* rolled back by queue_store_fail */
    rc = queue_exec(s->db, "COMMIT");
    if (rc != SQLITE_OK)
        return queue_store_fail(s, NULL, rc, "retry");
    if (!is_all && *count == 0) {
        struct queue_reader r = {.db = s->db};
        struct queue_entry e;
        return queue_reader_entry(&r, qid, &e); /* not found, or found but finished: 0 */
    }
    return 0;
}

static int queue_store_delete_txn(struct queue_store *s, const char *qid)
{
    int rc = queue_exec(s->db, "BEGIN IMMEDIATE");
    if (rc != SQLITE_OK)
        return queue_store_fail(s, NULL, rc, "delete");
    s->doomed_count = 0;
    sqlite3_stmt *st = NULL;
    rc = store_prepare(s, "SELECT id FROM messages WHERE qid = ?", &st);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, qid, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        int64_t id = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
        rc = rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(s->db);
        store_done(s, st);
        if (rc == SQLITE_OK && id > 0)
            rc = queue_store_doom_file(s, id, false);
    }
    size_t n = 0;
    if (rc != SQLITE_OK) {
        queue_store_settle_files(s, false);
        return queue_store_fail(s, NULL, rc, "delete");
    }
    rc = queue_store_change(s, "DELETE FROM messages WHERE qid = ?1", qid, 0, &n, "delete");
    if (rc < 0) {
        queue_store_settle_files(s, false);
        return rc; /* rolled back by queue_store_fail */
    }
    int src = queue_exec(s->db, "COMMIT");
    queue_store_settle_files(s, src == SQLITE_OK);
    if (src != SQLITE_OK)
        return queue_store_fail(s, NULL, src, "delete");
    return n > 0 ? 0 : QUEUE_ERR_NOT_FOUND;
}

/* The admin actions, under the shared write lock like every other write. */
int queue_store_hold(struct queue_store *s, const char *qid, bool is_held)
{
    store_write_begin(s);
    int rc = queue_store_hold_txn(s, qid, is_held);
    store_write_end(s);
    return rc;
}

int queue_store_retry(struct queue_store *s, const char *qid, int64_t now, size_t *count)
{
    store_write_begin(s);
    int rc = queue_store_retry_txn(s, qid, now, count);
    store_write_end(s);
    return rc;
}

int queue_store_delete(struct queue_store *s, const char *qid)
{
    store_write_begin(s);
    int rc = queue_store_delete_txn(s, qid);
    store_write_end(s);
    return rc;
}

/* Finished messages older than before, and then the body files that no
 * message refers to any more (left by a crash between a COMMIT and the
 * removal of its file, or by a message deleted some other way). */
int queue_store_purge_done(struct queue_store *s, int64_t before, size_t *count)
{
    store_write_begin(s);
    int rc = queue_store_change(s,
                                "DELETE FROM messages WHERE state = 'done' AND done_at < ?2",
                                NULL, before, count, "purge");
    store_write_end(s);
    if (rc < 0)
        return rc;
    size_t removed = 0;
    rc = queue_spool_sweep(s->db, s->spool, QUEUE_SPOOL_SWEEP_AGE_S, &removed);
    if (rc < 0)
        log_warn(NULL, "queue body file sweep failed dir=%s", s->spool);
    else if (removed > 0)
        log_info(NULL, "queue removed %zu body file%s without a message dir=%s", removed,
                 removed == 1 ? "" : "s", s->spool);
    return 0;
}

/* ---- reader queries for queue show -------------------------------------- */

int queue_reader_entry(struct queue_reader *r, const char *qid, struct queue_entry *out)
{
    memset(out, 0, sizeof(*out));
    sqlite3_stmt *st;
    int rc = queue_reader_prepare(r, QUEUE_ENTRY_SELECT " WHERE m.qid = ?", &st);
    if (rc < 0)
        return rc;
    if (st == NULL)
        return QUEUE_ERR_NOT_FOUND;
    sqlite3_bind_text(st, 1, qid, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        queue_entry_from_row(st, out);
        sqlite3_finalize(st);
        return 0;
    }
    if (rc != SQLITE_DONE)
        return queue_reader_fail(r, st, rc);
    sqlite3_finalize(st);
    return QUEUE_ERR_NOT_FOUND;
}

int queue_reader_recipient_infos(struct queue_reader *r, const char *qid,
                                 int (*cb)(const struct queue_rcpt_info *i, void *arg), void *arg)
{
    sqlite3_stmt *st;
    int rc = queue_reader_prepare(r,
                                  "SELECT r.address, r.state, r.attempts, r.next_attempt_at,"
                                  " r.dsn_status, r.last_error, r.updated_at FROM recipients r"
                                  " JOIN messages m ON m.id = r.message_id"
                                  " WHERE m.qid = ? ORDER BY r.id",
                                  &st);
    if (rc < 0)
        return rc;
    if (st == NULL)
        return QUEUE_ERR_NOT_FOUND;
    sqlite3_bind_text(st, 1, qid, -1, SQLITE_STATIC);
    struct queue_rcpt_info *info = malloc(sizeof(*info));
    if (info == NULL) {
        sqlite3_finalize(st);
        return -ENOMEM;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        memset(info, 0, sizeof(*info));
        queue_copy_text(info->address, sizeof(info->address), st, 0);
        queue_copy_text(info->state, sizeof(info->state), st, 1);
        info->attempts = (unsigned)sqlite3_column_int(st, 2);
        info->next_attempt_at = sqlite3_column_int64(st, 3);
        queue_copy_text(info->dsn_status, sizeof(info->dsn_status), st, 4);
        queue_copy_text(info->last_error, sizeof(info->last_error), st, 5);
        info->updated_at = sqlite3_column_int64(st, 6);
        if (cb(info, arg) != 0)
            break;
    }
    free(info);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return queue_reader_fail(r, st, rc);
    sqlite3_finalize(st);
    return 0;
}

int queue_reader_attempts(struct queue_reader *r, const char *qid,
                          int (*cb)(const struct queue_attempt_info *a, void *arg), void *arg)
{
    sqlite3_stmt *st;
    int rc = queue_reader_prepare(r,
                                  "SELECT a.at, COALESCE(rc.address, ''), a.domain, a.host,"
                                  " a.address, a.step, a.tls, a.reply, a.outcome FROM attempts a"
                                  " JOIN messages m ON m.id = a.message_id"
                                  " LEFT JOIN recipients rc ON rc.id = a.recipient_id"
                                  " WHERE m.qid = ? ORDER BY a.id",
                                  &st);
    if (rc < 0)
        return rc;
    if (st == NULL)
        return QUEUE_ERR_NOT_FOUND;
    sqlite3_bind_text(st, 1, qid, -1, SQLITE_STATIC);
    struct queue_attempt_info *a = malloc(sizeof(*a));
    if (a == NULL) {
        sqlite3_finalize(st);
        return -ENOMEM;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        memset(a, 0, sizeof(*a));
        a->at = sqlite3_column_int64(st, 0);
        queue_copy_text(a->rcpt, sizeof(a->rcpt), st, 1);
        queue_copy_text(a->domain, sizeof(a->domain), st, 2);
        queue_copy_text(a->host, sizeof(a->host), st, 3);
        queue_copy_text(a->address, sizeof(a->address), st, 4);
        queue_copy_text(a->step, sizeof(a->step), st, 5);
        queue_copy_text(a->tls, sizeof(a->tls), st, 6);
        queue_copy_text(a->reply, sizeof(a->reply), st, 7);
        queue_copy_text(a->outcome, sizeof(a->outcome), st, 8);
        if (cb(a, arg) != 0)
            break;
    }
    free(a);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return queue_reader_fail(r, st, rc);
    sqlite3_finalize(st);
    return 0;
}

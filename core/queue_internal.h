/* queue_internal.h — shared between queue.c (submission side, reader) and
 * queue_store.c (delivery side); not for other modules. */
#ifndef SMARTHOST_QUEUE_INTERNAL_H
#define SMARTHOST_QUEUE_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "core/queue.h"

struct queue_reader {
    sqlite3 *db;
    char spool[4200]; /* queue_spool_dir() of its database */
};

int queue_status_from_sqlite(int rc);
int queue_exec(sqlite3 *db, const char *sql);
int queue_step_done(sqlite3_stmt *st);
void queue_copy_text(char *out, size_t out_size, sqlite3_stmt *st, int col);
/* WAL, synchronous=FULL, foreign keys, busy timeout. */
int queue_configure(sqlite3 *db, unsigned busy_timeout_ms);
/* Bring module "queue" to this build's schema version. */
int queue_migrate(sqlite3 *db);

/* After a commit that left the WAL `pages` frames long: is a checkpoint
 * round due? Past QUEUE_CHECKPOINT_PAGES, once per that many new frames
 * since the last round was due (*base, 0 at first; a WAL shorter than
 * *base started over since). A round copies each page once however often
 * it was written since the one before, so batching them copies the pages
 * written again and again (a queue's hot leaves, a freed body's pages
 * reused by the next) once per batch, where a round after every commit
 * copied nearly every frame. */
#define QUEUE_CHECKPOINT_PAGES 1000
bool queue_checkpoint_due(int pages, int *base);

/* One round of the checkpointer on db: PASSIVE, then RESTART once the WAL
 * has *restart_at frames or more, so that the next writer starts it over
 * (*restart_at begins at QUEUE_CHECKPOINT_RESTART_PAGES). The RESTART runs
 * under write_lock (NULL: none) and holds SQLite's write lock while it waits
 * for readers, so db's busy timeout is short (QUEUE_CHECKPOINT_BUSY_MS); one
 * that readers kept from finishing returns SQLITE_BUSY and moves *restart_at
 * a RESTART_PAGES further. An SQLite code. */
#define QUEUE_CHECKPOINT_RESTART_PAGES 8000
#define QUEUE_CHECKPOINT_BUSY_MS 20
int queue_checkpoint(sqlite3 *db, pthread_mutex_t *write_lock, int *restart_at);

/* db, another connection to q's database in this process, joins q's
 * writers: it stops checkpointing inside its own commits (it tells q's
 * checkpointer thread how long the WAL has grown, as q's committer does),
 * and it must hold the returned lock around each of its write transactions,
 * as q's committer does. (A writer waiting on the lock for one that waits
 * on another process, smarthostctl say, may wait up to twice the busy
 * timeout before its 452.) */
pthread_mutex_t *queue_share(struct queue *q, sqlite3 *db);

/* ---- queue_vfs.c: the WAL's writes gathered ---------------------------- */

/* The name of a VFS for sqlite3_open_v2: the default one, except that the
 * frames a transaction appends to the WAL reach the kernel in one call at
 * its commit (or when it gives up the write lock) instead of two per page;
 * NULL (the default VFS) if it could not be registered. Registers it on
 * first use. */
const char *queue_vfs(void);
/* Since the process began: writes SQLite made to WAL files through it, and
 * writes it made to the kernel. */
void queue_vfs_stats(uint64_t *gathered, uint64_t *written);

/* A store on a connection it does not own (the committer's, for its
 * tasks): its writes hold write_lock (NULL: none); queue_store_close
 * leaves db open. spool: queue_spool_dir() of the database. NULL when out
 * of memory. */
struct queue_store *queue_store_borrow(sqlite3 *db, const char *spool,
                                       pthread_mutex_t *write_lock);

/* The store's connection, for tests that look at its prepared statements
 * (sqlite3_next_stmt) and their query plans. */
sqlite3 *queue_store_db(struct queue_store *s);

/* ---- queue_spool.c: large bodies as files ---------------------------- */

#define QUEUE_SPOOL_SUFFIX "-bodies"
/* Bodies of at least this many bytes go to a file instead of the database. */
#define QUEUE_SPOOL_MIN_SIZE (128u * 1024)

/* "<db_path>-bodies" into out; -ENAMETOOLONG if it does not fit. */
int queue_spool_dir(const char *db_path, char *out, size_t out_size);
/* Create the directory (0700) if missing and open it; caller closes *dirfd. */
int queue_spool_open(const char *dir, int *dirfd);
/* Create the file for qid (it must not exist), write head then body and
 * start the write-back; *fd_out is for queue_spool_finish. On failure
 * nothing is left and a negative errno is returned. */
int queue_spool_create(int dirfd, const char *qid, const uint8_t *head, size_t head_len,
                       const uint8_t *body, size_t body_len, int *fd_out);
/* fdatasync and close; 0 or a negative errno (the fd is closed either way). */
int queue_spool_finish(int fd);
/* Remove qid's file; only after the COMMIT that deleted its row. */
void queue_spool_remove(const char *dir, const char *qid);
/* A body from a row whose columns are (data, file, qid): the blob, or the
 * file's content when file is 1. Caller frees *out. 0, -ENOMEM or
 * QUEUE_ERR_STORAGE (logged). */
int queue_body_from_row(sqlite3_stmt *st, const char *dir, uint8_t **out, size_t *out_len);
#define QUEUE_BODY_COLUMNS "b.data, b.file, m.qid"
/* Remove the files no `bodies` row refers to and at least min_age_s old
 * (0: all of them; only when no committer can be writing). */
int queue_spool_sweep(sqlite3 *db, const char *dir, int64_t min_age_s, size_t *removed);

/* Reader helpers: prepare (st NULL with 0 when the tables do not exist
 * yet), fail (log, finalize, map the code), one queue_entry from a row of
 * QUEUE_ENTRY_SELECT. */
int queue_reader_prepare(struct queue_reader *r, const char *sql, sqlite3_stmt **st);
int queue_reader_fail(struct queue_reader *r, sqlite3_stmt *st, int rc);
void queue_entry_from_row(sqlite3_stmt *st, struct queue_entry *e);
#define QUEUE_ENTRY_SELECT                                                                   \
    "SELECT m.qid, m.created_at, m.sender, m.auth_user, m.client_addr, m.size, m.state,"    \
    " (SELECT COUNT(*) FROM recipients r WHERE r.message_id = m.id),"                      \
    " m.kind, m.held, m.next_attempt_at,"                                                  \
    " (SELECT COUNT(*) FROM recipients r WHERE r.message_id = m.id"                        \
    "  AND r.state IN ('queued', 'deferred')),"                                            \
    " (SELECT r.last_error FROM recipients r WHERE r.message_id = m.id"                    \
    "  AND r.last_error != '' ORDER BY r.updated_at DESC, r.id LIMIT 1)"                   \
    " FROM messages m"

#endif

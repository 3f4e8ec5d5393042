/* queue_internal.h — shared between queue.c (submission side, reader) and
 * queue_store.c (delivery side); not for other modules. */
#ifndef SMARTHOST_QUEUE_INTERNAL_H
#define SMARTHOST_QUEUE_INTERNAL_H

#include <stddef.h>

#include <sqlite3.h>

#include "core/queue.h"

struct queue_reader {
    sqlite3 *db;
};

int queue_status_from_sqlite(int rc);
int queue_exec(sqlite3 *db, const char *sql);
int queue_step_done(sqlite3_stmt *st);
void queue_copy_text(char *out, size_t out_size, sqlite3_stmt *st, int col);
/* WAL, synchronous=FULL, foreign keys, busy timeout. */
int queue_configure(sqlite3 *db, unsigned busy_timeout_ms);
/* Bring module "queue" to this build's schema version. */
int queue_migrate(sqlite3 *db);

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

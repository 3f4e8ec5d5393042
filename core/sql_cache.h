/* sql_cache.h — prepared statements kept per SQLite connection, keyed by
 * their SQL text, so that what runs for every message (a quota charge, an
 * outcome's rows) is parsed once, not at every call. Embedded in the owner
 * of the connection and used by one thread at a time, as the connection
 * is. libuv-free: auth/ and the CLI use it too. */
#ifndef SMARTHOST_SQL_CACHE_H
#define SMARTHOST_SQL_CACHE_H

#include <stdbool.h>
#include <stddef.h>

#include <sqlite3.h>

#define SQL_CACHE_SIZE 32

struct sql_cache {
    sqlite3 *db;
    size_t count;
    struct sql_cache_entry {
        char *sql;
        sqlite3_stmt *st;
        bool is_in_use;
    } entries[SQL_CACHE_SIZE];
};

void sql_cache_init(struct sql_cache *c, sqlite3 *db);
/* Finalize every kept statement (before closing the connection). */
void sql_cache_clear(struct sql_cache *c);
/* The statement of an earlier call with the same SQL when it is free, else
 * a new one (kept while there is room; a nested use of the same SQL gets
 * its own). An SQLite code; *st is NULL unless SQLITE_OK. */
int sql_cache_prepare(struct sql_cache *c, const char *sql, sqlite3_stmt **st);
/* Done with st: a kept statement is reset and its bindings cleared for the
 * next call, any other is finalized. NULL-safe. */
void sql_cache_done(struct sql_cache *c, sqlite3_stmt *st);
/* Prepare, step to the end and be done with a statement that returns no
 * rows (SAVEPOINT, RELEASE, a write). An SQLite code. */
int sql_cache_exec(struct sql_cache *c, const char *sql);

#endif

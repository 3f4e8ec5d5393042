/* sql_cache.c — see sql_cache.h. A lookup compares the texts of at most
 * SQL_CACHE_SIZE statements; they differ early, so strcmp stops early. */
#include "core/sql_cache.h"

#include <stdlib.h>
#include <string.h>

void sql_cache_init(struct sql_cache *c, sqlite3 *db)
{
    memset(c, 0, sizeof(*c));
    c->db = db;
}

void sql_cache_clear(struct sql_cache *c)
{
    for (size_t i = 0; i < c->count; i++) {
        sqlite3_finalize(c->entries[i].st);
        free(c->entries[i].sql);
    }
    c->count = 0;
}

static struct sql_cache_entry *sql_cache_find(struct sql_cache *c, const char *sql)
{
    for (size_t i = 0; i < c->count; i++) {
        struct sql_cache_entry *e = &c->entries[i];
        if (!e->is_in_use && strcmp(e->sql, sql) == 0)
            return e;
    }
    return NULL;
}

int sql_cache_prepare(struct sql_cache *c, const char *sql, sqlite3_stmt **st)
{
    *st = NULL;
    struct sql_cache_entry *e = sql_cache_find(c, sql);
    if (e != NULL) {
        e->is_in_use = true;
        *st = e->st;
        return SQLITE_OK;
    }
    int rc = sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL);
    if (rc != SQLITE_OK) {
        sqlite3_finalize(*st);
        *st = NULL;
        return rc;
    }
    if (*st == NULL) /* only a comment or white space */
        return SQLITE_MISUSE;
    if (c->count == SQL_CACHE_SIZE)
        return SQLITE_OK;
    char *copy = strdup(sql);
    if (copy != NULL)
        c->entries[c->count++] = (struct sql_cache_entry){copy, *st, true};
    return SQLITE_OK;
}

void sql_cache_done(struct sql_cache *c, sqlite3_stmt *st)
{
    if (st == NULL)
        return;
    for (size_t i = 0; i < c->count; i++) {
        struct sql_cache_entry *e = &c->entries[i];
        if (e->st == st) {
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
            e->is_in_use = false;
            return;
        }
    }
    sqlite3_finalize(st); /* prepared past the cache: a nested use, or it was full */
}

int sql_cache_exec(struct sql_cache *c, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int rc = sql_cache_prepare(c, sql, &st);
    if (rc != SQLITE_OK)
        return rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        ;
    rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    sql_cache_done(c, st);
    return rc;
}

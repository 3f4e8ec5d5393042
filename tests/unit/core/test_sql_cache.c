/* Unit tests for core/sql_cache.c on an in-memory SQLite database: a
 * statement comes back for the same SQL, reset and unbound; a nested use of
 * the same SQL gets a statement of its own; past a full cache, statements
 * are finalized when done (the ASan build would report a leak); a kept
 * statement sees a table changed after it was prepared; errors leave no
 * statement behind. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "core/sql_cache.h"

struct fixture {
    sqlite3 *db;
    struct sql_cache sql;
};

static int fixture_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(sqlite3_open(":memory:", &f->db), SQLITE_OK);
    sql_cache_init(&f->sql, f->db);
    assert_int_equal(sql_cache_exec(&f->sql, "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)"),
                     SQLITE_OK);
    *state = f;
    return 0;
}

static int fixture_teardown(void **state)
{
    struct fixture *f = *state;
    sql_cache_clear(&f->sql);
    assert_null(sqlite3_next_stmt(f->db, NULL)); /* nothing left unfinalized */
    assert_int_equal(sqlite3_close(f->db), SQLITE_OK);
    free(f);
    return 0;
}

static const char *select_v(struct fixture *f, int64_t k, char *out, size_t size)
{
    sqlite3_stmt *st = NULL;
    assert_int_equal(sql_cache_prepare(&f->sql, "SELECT v FROM t WHERE k = ?", &st), SQLITE_OK);
    sqlite3_bind_int64(st, 1, k);
    if (sqlite3_step(st) == SQLITE_ROW)
        snprintf(out, size, "%s", (const char *)sqlite3_column_text(st, 0));
    else
        snprintf(out, size, "(none)");
    sql_cache_done(&f->sql, st);
    return out;
}

static void test_reuse(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(sql_cache_exec(&f->sql, "INSERT INTO t VALUES(1, 'one'), (2, 'two')"),
                     SQLITE_OK);
    sqlite3_stmt *first = NULL, *again = NULL;
    /* a copy of the text, not the same literal: found by content too */
    char sql[] = "SELECT v FROM t WHERE k = ?";
    assert_int_equal(sql_cache_prepare(&f->sql, sql, &first), SQLITE_OK);
    sqlite3_bind_int64(first, 1, 1);
    assert_int_equal(sqlite3_step(first), SQLITE_ROW); /* left mid-result */
    sql_cache_done(&f->sql, first);
    assert_false(sqlite3_stmt_busy(first)); /* reset: holds no read transaction */
    assert_int_equal(sql_cache_prepare(&f->sql, "SELECT v FROM t WHERE k = ?", &again),
                     SQLITE_OK);
    assert_ptr_equal(again, first);
    /* the binding was cleared: NULL matches no row */
    assert_int_equal(sqlite3_step(again), SQLITE_DONE);
    sql_cache_done(&f->sql, again);

    char v[32];
    assert_string_equal(select_v(f, 2, v, sizeof(v)), "two");
    /* a change made after the statement was prepared is seen */
    assert_int_equal(sql_cache_exec(&f->sql, "ALTER TABLE t ADD COLUMN w INTEGER"), SQLITE_OK);
    assert_int_equal(sql_cache_exec(&f->sql, "UPDATE t SET v = 'deux' WHERE k = 2"), SQLITE_OK);
    assert_string_equal(select_v(f, 2, v, sizeof(v)), "deux");
    assert_int_equal(f->sql.count, 5); /* CREATE, INSERT, SELECT, ALTER, UPDATE */
}

static void test_nested_and_full(void **state)
{
    struct fixture *f = *state;
    sqlite3_stmt *outer = NULL, *inner = NULL;
    assert_int_equal(sql_cache_prepare(&f->sql, "SELECT 1", &outer), SQLITE_OK);
    assert_int_equal(sql_cache_prepare(&f->sql, "SELECT 1", &inner), SQLITE_OK);
    assert_ptr_not_equal(inner, outer); /* outer is in use */
    assert_int_equal(sqlite3_step(inner), SQLITE_ROW);
    sql_cache_done(&f->sql, inner);
    sql_cache_done(&f->sql, outer);
    assert_int_equal(f->sql.count, 3); /* CREATE and both SELECTs, while there is room */

    /* fill the cache; the statements past it still work and are finalized */
    char sql[64];
    for (int i = 0; i < SQL_CACHE_SIZE + 8; i++) {
        snprintf(sql, sizeof(sql), "SELECT %d", 100 + i);
        sqlite3_stmt *st = NULL;
        assert_int_equal(sql_cache_prepare(&f->sql, sql, &st), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        assert_int_equal(sqlite3_column_int(st, 0), 100 + i);
        sql_cache_done(&f->sql, st);
    }
    assert_int_equal(f->sql.count, SQL_CACHE_SIZE);
    sql_cache_done(&f->sql, NULL);
}

static void test_errors(void **state)
{
    struct fixture *f = *state;
    sqlite3_stmt *st = (sqlite3_stmt *)f; /* overwritten */
    assert_int_equal(sql_cache_prepare(&f->sql, "SELEKT nothing", &st), SQLITE_ERROR);
    assert_null(st);
    assert_int_equal(sql_cache_prepare(&f->sql, "  -- only a comment", &st), SQLITE_MISUSE);
    assert_null(st);
    /* a failing step reports its code and leaves the statement reusable */
    assert_int_equal(sql_cache_exec(&f->sql, "INSERT INTO t VALUES(1, 'a')"), SQLITE_OK);
    assert_int_equal(sql_cache_exec(&f->sql, "INSERT INTO t VALUES(1, 'a')"), SQLITE_CONSTRAINT);
    assert_int_equal(sql_cache_exec(&f->sql, "DELETE FROM t"), SQLITE_OK);
    assert_int_equal(sql_cache_exec(&f->sql, "INSERT INTO t VALUES(1, 'a')"), SQLITE_OK);
    assert_int_equal(f->sql.count, 3); /* CREATE, INSERT, DELETE */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reuse, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_nested_and_full, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_errors, fixture_setup, fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

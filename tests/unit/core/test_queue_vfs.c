/* Unit tests for core/queue_vfs.c on real database files: a commit's WAL
 * writes reach the kernel in a few calls, and another connection on the
 * default VFS sees every commit at once, even with synchronous=OFF (no sync
 * to flush at); a writer still gathers after another began the log again;
 * a commit larger than the buffer and than the unix VFS's largest single
 * write goes down whole; frames spilled from a small cache mid-transaction
 * are read back and a rollback leaves nothing, even under another
 * connection's commit at the same offsets; a process that commits
 * without a sync and exits at once leaves a WAL that recovery keeps whole;
 * a write the kernel refuses (RLIMIT_FSIZE) fails the COMMIT, leaves the
 * database as it was, and the connection goes on. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "core/queue_internal.h"
#include "tests/unit/unit_tempdir.h"

struct fixture {
    char dir[64];
    char path[128];
    sqlite3 *db;    /* through the VFS */
    sqlite3 *other; /* the default VFS */
};

static void exec_ok(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    if (rc != SQLITE_OK)
        fail_msg("%s: %s", sql, err != NULL ? err : sqlite3_errstr(rc));
}

static int64_t query_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void assert_intact(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);
}

/* n rows of `size` random bytes each, in one transaction of db */
static int insert_blobs(sqlite3 *db, int n, int size)
{
    char sql[160];
    snprintf(sql, sizeof(sql),
             "BEGIN; WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < %d)"
             " INSERT INTO t(v) SELECT randomblob(%d) FROM c; COMMIT",
             n, size);
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK && !sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static int fixture_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_non_null(unit_tempdir_make(f->dir, sizeof(f->dir), "test_queue_vfs"));
    snprintf(f->path, sizeof(f->path), "%s/q.db", f->dir);
    assert_non_null(queue_vfs());
    assert_int_equal(sqlite3_open_v2(f->path, &f->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                                     queue_vfs()),
                     SQLITE_OK);
    exec_ok(f->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                   " CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB)");
    assert_int_equal(sqlite3_open_v2(f->path, &f->other, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    *state = f;
    return 0;
}

static int fixture_teardown(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(sqlite3_close(f->other), SQLITE_OK);
    assert_int_equal(sqlite3_close(f->db), SQLITE_OK);
    unit_tempdir_remove(f->dir);
    free(f);
    return 0;
}

static void test_commits_gathered_and_seen(void **state)
{
    struct fixture *f = *state;
    sqlite3_vfs *vfs = NULL;
    assert_int_equal(sqlite3_file_control(f->db, "main", SQLITE_FCNTL_VFS_POINTER, &vfs),
                     SQLITE_OK);
    assert_string_equal(vfs->zName, queue_vfs());

    exec_ok(f->db, "PRAGMA wal_autocheckpoint=0; PRAGMA synchronous=OFF");
    for (int i = 1; i <= 20; i++) {
        uint64_t gathered0, written0, gathered1, written1;
        queue_vfs_stats(&gathered0, &written0);
        /* twenty rows over three pages each: some fifty frames, 210 KiB, in
         * two writes (at most 124 KiB each) */
        assert_int_equal(insert_blobs(f->db, 20, 10000), SQLITE_OK);
        queue_vfs_stats(&gathered1, &written1);
        assert_true(gathered1 - gathered0 >= 80); /* a header and a page per frame */
        assert_true(written1 - written0 <= 2);
        /* no sync came, and yet the other connection sees it all */
        assert_int_equal(query_int(f->other, "SELECT COUNT(*) FROM t"), i * 20);
    }
    assert_intact(f->other);
}

/* One commit through the VFS: gathered (40 writes or more from SQLite, 27
 * frames of 110 KiB) into at most `most` writes, and seen by the other
 * connection. */
static void commit_gathered(struct fixture *f, sqlite3 *writer, int most, int rows)
{
    uint64_t gathered0, written0, gathered1, written1;
    queue_vfs_stats(&gathered0, &written0);
    assert_int_equal(insert_blobs(writer, 10, 10000), SQLITE_OK);
    queue_vfs_stats(&gathered1, &written1);
    assert_true(gathered1 - gathered0 >= 40);
    assert_true(written1 - written0 <= (uint64_t)most);
    assert_int_equal(query_int(f->other, "SELECT COUNT(*) FROM t"), rows);
}

/* Two writers through the VFS, and the log begun again by one of them under
 * the other: the other's next frames land below where it wrote before, and
 * are gathered all the same (they carry the new log's salt). */
static void test_log_restarted_by_another(void **state)
{
    struct fixture *f = *state;
    sqlite3 *second = NULL;
    assert_int_equal(sqlite3_open_v2(f->path, &second, SQLITE_OPEN_READWRITE, queue_vfs()),
                     SQLITE_OK);
    exec_ok(f->db, "PRAGMA wal_autocheckpoint=0");
    exec_ok(second, "PRAGMA wal_autocheckpoint=0");
    for (int i = 1; i <= 3; i++)
        commit_gathered(f, second, 1, 10 * i);
    /* everything copied: the next writer begins the log again */
    exec_ok(f->other, "PRAGMA wal_checkpoint(RESTART)");
    commit_gathered(f, f->db, 2, 40); /* and the new log's header */
    commit_gathered(f, second, 1, 50);
    commit_gathered(f, f->db, 1, 60);
    assert_int_equal(sqlite3_close(second), SQLITE_OK);
    assert_intact(f->other);
}

static void test_large_commit(void **state)
{
    struct fixture *f = *state;
    /* 4 MiB in one commit: past the buffer, and past 128 KiB per write */
    assert_int_equal(insert_blobs(f->db, 64, 64 * 1024), SQLITE_OK);
    assert_int_equal(query_int(f->other, "SELECT COUNT(*) FROM t"), 64);
    assert_int_equal(query_int(f->other, "SELECT SUM(length(v)) FROM t"), 64 * 64 * 1024);
    assert_intact(f->other);
    /* and the other way round: the other connection's checkpoint copies it */
    exec_ok(f->other, "PRAGMA wal_checkpoint(TRUNCATE)");
    assert_int_equal(query_int(f->db, "SELECT COUNT(*) FROM t"), 64);
    assert_intact(f->db);
}

static void test_spill_and_rollback(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(insert_blobs(f->db, 5, 1000), SQLITE_OK);
    /* a cache of a few pages: the transaction spills frames to the WAL and
     * must read them back to update the pages again */
    exec_ok(f->db, "PRAGMA cache_size=4; BEGIN");
    exec_ok(f->db, "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 300)"
                   " INSERT INTO t(v) SELECT randomblob(3000) FROM c");
    exec_ok(f->db, "UPDATE t SET v = zeroblob(10) WHERE k % 2 = 0");
    assert_int_equal(query_int(f->db, "SELECT COUNT(*) FROM t WHERE length(v) = 10"), 152);
    assert_int_equal(query_int(f->other, "SELECT COUNT(*) FROM t"), 5); /* not yet */
    exec_ok(f->db, "ROLLBACK");
    assert_int_equal(query_int(f->db, "SELECT COUNT(*) FROM t"), 5);
    assert_int_equal(query_int(f->other, "SELECT COUNT(*) FROM t"), 5);
    /* the frames after the last commit are written over */
    assert_int_equal(insert_blobs(f->db, 50, 3000), SQLITE_OK);
    assert_int_equal(query_int(f->other, "SELECT COUNT(*) FROM t"), 55);
    assert_intact(f->db);
    assert_intact(f->other);
}

/* A transaction that spilled frames to the WAL and rolled back, and then a
 * commit of another connection at the same offsets: the rolled-back frames
 * reach the file before the write lock passes on, never over the other's
 * (a batch of the committer that failed, then the relay's outcome). */
static void test_rollback_then_another_commits(void **state)
{
    struct fixture *f = *state;
    exec_ok(f->db, "PRAGMA wal_autocheckpoint=0; INSERT INTO t(v) VALUES(zeroblob(100))");
    sqlite3 *second = NULL;
    assert_int_equal(sqlite3_open_v2(f->path, &second, SQLITE_OPEN_READWRITE, queue_vfs()),
                     SQLITE_OK);
    exec_ok(second, "PRAGMA wal_autocheckpoint=0; PRAGMA wal_checkpoint(TRUNCATE)");
    exec_ok(f->db, "PRAGMA cache_size=50; BEGIN");
    exec_ok(f->db, "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 300)"
                   " INSERT INTO t(v) SELECT randomblob(3000) FROM c");
    exec_ok(f->db, "ROLLBACK");
    exec_ok(second, "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 700)"
                    " INSERT INTO t(v) SELECT zeroblob(2000) FROM c");
    assert_int_equal(query_int(f->db, "SELECT COUNT(*) FROM t"), 701); /* its WAL file again */
    assert_int_equal(query_int(f->other, "SELECT COUNT(*) FROM t"), 701);
    assert_intact(f->other);
    assert_int_equal(sqlite3_close(second), SQLITE_OK);
}

/* A process that commits and dies at once, without a sync at commit
 * (synchronous=NORMAL) and with pages written twice in the transaction (a
 * small cache spills them, so SQLite writes them again in place and then
 * rewrites the checksums of the frames after the first of them): nothing of
 * the commit may be left in the buffer, or recovery finds a frame whose
 * checksum does not follow and drops the transaction. */
static void test_commit_survives_exit(void **state)
{
    struct fixture *f = *state;
    exec_ok(f->db, "INSERT INTO t(v) VALUES(zeroblob(100))");
    /* none of ours open meanwhile: the next open recovers the WAL from the
     * file (the shared-memory index of a database no one has open is
     * rebuilt), as after a crash */
    assert_int_equal(sqlite3_close(f->other), SQLITE_OK);
    assert_int_equal(sqlite3_close(f->db), SQLITE_OK);
    f->db = f->other = NULL;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        sqlite3 *db = NULL;
        int ok = sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READWRITE, queue_vfs()) == SQLITE_OK &&
                 sqlite3_exec(db,
                              "PRAGMA synchronous=NORMAL; PRAGMA cache_size=4;"
                              " PRAGMA wal_autocheckpoint=0; BEGIN;"
                              " WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c"
                              "  WHERE i < 200) INSERT INTO t(v) SELECT randomblob(500) FROM c;"
                              " UPDATE t SET v = randomblob(400);"
                              " UPDATE t SET v = randomblob(300); COMMIT",
                              NULL, NULL, NULL) == SQLITE_OK;
        _exit(ok ? 0 : 1); /* no close: whatever is still buffered is lost */
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    sqlite3 *fresh = NULL;
    assert_int_equal(sqlite3_open_v2(f->path, &fresh, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(query_int(fresh, "SELECT COUNT(*) FROM t"), 201);
    assert_int_equal(query_int(fresh, "SELECT COUNT(*) FROM t WHERE length(v) = 300"), 201);
    assert_intact(fresh);
    f->db = fresh;
    assert_int_equal(sqlite3_open_v2(f->path, &f->other, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
}

static void test_refused_write(void **state)
{
    struct fixture *f = *state;
    exec_ok(f->db, "PRAGMA wal_autocheckpoint=0");
    assert_int_equal(insert_blobs(f->db, 10, 1000), SQLITE_OK);
    struct stat wal;
    char wal_path[160];
    snprintf(wal_path, sizeof(wal_path), "%s-wal", f->path);
    assert_int_equal(stat(wal_path, &wal), 0);

    /* the kernel takes no byte past 64 KiB more: the commit's frames (some
     * 600 KiB, gathered) are refused, with EFBIG instead of the signal */
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = old;
    lim.rlim_cur = (rlim_t)wal.st_size + 64 * 1024;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int rc = insert_blobs(f->db, 150, 4000);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_handler);
    assert_int_not_equal(rc, SQLITE_OK);
    assert_true(sqlite3_get_autocommit(f->db)); /* rolled back */

    assert_int_equal(query_int(f->other, "SELECT COUNT(*) FROM t"), 10);
    assert_int_equal(query_int(f->db, "SELECT COUNT(*) FROM t"), 10);
    assert_int_equal(insert_blobs(f->db, 150, 4000), SQLITE_OK);
    assert_int_equal(query_int(f->other, "SELECT COUNT(*) FROM t"), 160);
    assert_intact(f->other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_commits_gathered_and_seen, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_log_restarted_by_another, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_large_commit, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_spill_and_rollback, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_rollback_then_another_commits, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_commit_survives_exit, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_refused_write, fixture_setup, fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

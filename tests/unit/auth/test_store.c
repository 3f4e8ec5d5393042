/* Unit tests for auth/store.c against real SQLite files in a temporary
 * directory: migrations (and their coexistence with the queue's module row),
 * account operations and their errors, password verification outcomes,
 * that no plaintext password reaches the file, and busy / storage errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <pthread.h>
#include <sqlite3.h>

#include "auth/authcache.h"
#include "auth/store.h"

struct fixture {
    char dir[64];
    char path[128];
    struct store *st;
};

static int fixture_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/test_store.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/smarthost.db", f->dir);
    assert_int_equal(store_open(f->path, 1000, &f->st), STORE_OK);
    *state = f;
    return 0;
}

static int fixture_teardown(void **state)
{
    struct fixture *f = *state;
    store_close(f->st);
    const char *suffixes[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < 4; i++) {
        char p[160];
        snprintf(p, sizeof(p), "%s%s", f->path, suffixes[i]);
        unlink(p);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

/* A second, raw connection to the same file. */
static sqlite3 *raw_open(const struct fixture *f)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    return db;
}

static int raw_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *stmt = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &stmt, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(stmt), SQLITE_ROW);
    int v = sqlite3_column_int(stmt, 0);
    sqlite3_finalize(stmt);
    return v;
}

static void raw_exec(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("%s: %s", sql, err != NULL ? err : "?");
}

/* ---- schema ----------------------------------------------------------- */

static void test_open_creates_schema(void **state)
{
    struct fixture *f = *state;
    sqlite3 *db = raw_open(f);
    assert_int_equal(raw_int(db, "SELECT version FROM schema_version WHERE module = 'auth'"), 2);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM accounts"), 0);
    sqlite3_stmt *stmt = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &stmt, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(stmt), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(stmt, 0), "wal");
    sqlite3_finalize(stmt);
    sqlite3_close(db);

    /* Opening again migrates nothing and keeps the data. */
    assert_int_equal(store_user_add(f->st, "printer1", "pw1"), STORE_OK);
    struct store *again = NULL;
    assert_int_equal(store_open(f->path, 1000, &again), STORE_OK);
    struct account a;
    assert_int_equal(store_user_get(again, "printer1", &a), STORE_OK);
    store_close(again);
}

static void test_schema_version_shared_with_queue(void **state)
{
    char dir[] = "/tmp/test_store_q.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof(path), "%s/db", dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    /* As core/queue.c would have left it. */
    raw_exec(db, "CREATE TABLE schema_version(module TEXT PRIMARY KEY, version INTEGER);"
                 "INSERT INTO schema_version VALUES('queue', 3)");
    struct store *st = NULL;
    assert_int_equal(store_open(path, 1000, &st), STORE_OK);
    assert_int_equal(raw_int(db, "SELECT version FROM schema_version WHERE module = 'queue'"), 3);
    assert_int_equal(raw_int(db, "SELECT version FROM schema_version WHERE module = 'auth'"), 2);
    store_close(st);
    sqlite3_close(db);
    char p[96];
    const char *suffixes[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s%s", path, suffixes[i]);
        unlink(p);
    }
    rmdir(dir);
}

static void test_newer_schema_refused(void **state)
{
    struct fixture *f = *state;
    sqlite3 *db = raw_open(f);
    raw_exec(db, "UPDATE schema_version SET version = 99 WHERE module = 'auth'");
    sqlite3_close(db);
    struct store *st = NULL;
    assert_int_equal(store_open(f->path, 1000, &st), STORE_ERROR);
    assert_null(st);
}

static void test_open_bad_path(void **state)
{
    struct store *st = NULL;
    assert_int_not_equal(store_open("/nonexistent-dir/x/y.db", 100, &st), STORE_OK);
    assert_null(st);
    char err[128] = "unset";
    assert_int_equal(store_open_err("/nonexistent-dir/x/y.db", 100, &st, err, sizeof(err)),
                     STORE_ERROR);
    assert_null(st);
    assert_non_null(strstr(err, "unable to open"));
}

/* ---- accounts --------------------------------------------------------- */

static void test_user_lifecycle(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(store_user_create(f->st, "scanner", "s3cret", "Scanner, 2nd floor"),
                     STORE_OK);
    struct account a;
    assert_int_equal(store_user_get(f->st, "scanner", &a), STORE_OK);
    assert_string_equal(a.name, "scanner");
    assert_string_equal(a.description, "Scanner, 2nd floor");
    assert_true(a.is_enabled);
    assert_true(a.created_at > 1600000000);
    assert_true(a.password_changed_at >= a.created_at);

    assert_int_equal(store_user_add(f->st, "scanner", "other"), STORE_EXISTS);
    assert_int_equal(store_user_set_enabled(f->st, "scanner", false), STORE_OK);
    assert_int_equal(store_user_get(f->st, "scanner", &a), STORE_OK);
    assert_false(a.is_enabled);
    assert_int_equal(store_user_set_enabled(f->st, "scanner", true), STORE_OK);
    assert_int_equal(store_user_get(f->st, "scanner", &a), STORE_OK);
    assert_true(a.is_enabled);

    assert_int_equal(store_user_del(f->st, "scanner"), STORE_OK);
    assert_int_equal(store_user_get(f->st, "scanner", &a), STORE_NOT_FOUND);
    assert_int_equal(store_user_del(f->st, "scanner"), STORE_NOT_FOUND);
    assert_int_equal(store_user_passwd(f->st, "scanner", "x"), STORE_NOT_FOUND);
    assert_int_equal(store_user_set_enabled(f->st, "scanner", true), STORE_NOT_FOUND);
    /* The name is free again. */
    assert_int_equal(store_user_add(f->st, "scanner", "again"), STORE_OK);
}

static void test_names_validated(void **state)
{
    struct fixture *f = *state;
    char longest[STORE_NAME_MAX + 1], too_long[STORE_NAME_MAX + 2];
    memset(longest, 'n', STORE_NAME_MAX);
    longest[STORE_NAME_MAX] = '\0';
    memset(too_long, 'n', STORE_NAME_MAX + 1);
    too_long[STORE_NAME_MAX + 1] = '\0';
    const struct {
        const char *name;
        bool is_valid;
    } cases[] = {
        {"printer3", true},       {"a", true},          {"scan@example.com", true},
        {"a-b_c.d+e", true},      {longest, true},      {"", false},
        {too_long, false},        {"two words", false}, {" lead", false},
        {"tab\there", false},     {"nl\n", false},      {"del\x7f", false},
        {"caf\xc3\xa9", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (store_name_is_valid(cases[i].name) != cases[i].is_valid)
            fail_msg("case %zu: validity should be %d", i, cases[i].is_valid);
        int rc = store_user_add(f->st, cases[i].name, "pw");
        if (rc != (cases[i].is_valid ? STORE_OK : STORE_INVALID))
            fail_msg("case %zu: add returned %d", i, rc);
    }
    assert_false(store_name_is_valid(NULL));
}

static void test_passwords_and_descriptions_validated(void **state)
{
    struct fixture *f = *state;
    char longest[STORE_PASSWORD_MAX + 1], too_long[STORE_PASSWORD_MAX + 2];
    memset(longest, 'p', STORE_PASSWORD_MAX);
    longest[STORE_PASSWORD_MAX] = '\0';
    memset(too_long, 'p', STORE_PASSWORD_MAX + 1);
    too_long[STORE_PASSWORD_MAX + 1] = '\0';
    assert_int_equal(store_user_add(f->st, "u1", ""), STORE_INVALID);
    assert_int_equal(store_user_add(f->st, "u1", NULL), STORE_INVALID);
    assert_int_equal(store_user_add(f->st, "u1", too_long), STORE_INVALID);
    assert_int_equal(store_user_add(f->st, "u1", longest), STORE_OK);
    assert_int_equal(store_verify_password(f->st, "u1", longest), STORE_AUTH_OK);
    assert_int_equal(store_user_passwd(f->st, "u1", ""), STORE_INVALID);
    assert_int_equal(store_user_passwd(f->st, "u1", too_long), STORE_INVALID);

    char long_desc[STORE_DESCRIPTION_MAX + 2];
    memset(long_desc, 'd', sizeof(long_desc) - 1);
    long_desc[sizeof(long_desc) - 1] = '\0';
    const struct {
        const char *desc;
        bool is_valid;
    } cases[] = {
        {"Front desk MFP", true},
        {"B\xc3\xbcro Drucker \xe2\x82\xac \xf0\x9f\x96\xa8", true}, /* Büro, €, printer emoji */
        {"", true},
        {NULL, true},
        {"line\nbreak", false},
        {"bad \xff byte", false},
        {"overlong \xc0\xaf", false},
        {"truncated \xe2\x82", false},
        {"surrogate \xed\xa0\x80", false},
        {"c1 control \xc2\x85", false},
        {long_desc, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char name[16];
        snprintf(name, sizeof(name), "d%zu", i);
        int rc = store_user_create(f->st, name, "pw", cases[i].desc);
        if (rc != (cases[i].is_valid ? STORE_OK : STORE_INVALID))
            fail_msg("case %zu: create returned %d (%s)", i, rc, store_errmsg(f->st));
    }
}

static void test_verify_outcomes(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(store_user_add(f->st, "alice", "wonderland"), STORE_OK);
    assert_int_equal(store_verify_password(f->st, "alice", "wonderland"), STORE_AUTH_OK);
    assert_int_equal(store_verify_password(f->st, "alice", "Wonderland"), STORE_AUTH_BAD_PASSWORD);
    assert_int_equal(store_verify_password(f->st, "alice", ""), STORE_AUTH_BAD_PASSWORD);
    assert_int_equal(store_verify_password(f->st, "bob", "wonderland"), STORE_AUTH_NO_USER);
    assert_int_equal(store_verify_password(f->st, "bad name", "x"), STORE_AUTH_NO_USER);
    /* Exact names: no case folding, no trimming. */
    assert_int_equal(store_verify_password(f->st, "Alice", "wonderland"), STORE_AUTH_NO_USER);

    assert_int_equal(store_user_set_enabled(f->st, "alice", false), STORE_OK);
    assert_int_equal(store_verify_password(f->st, "alice", "wonderland"), STORE_AUTH_DISABLED);
    assert_int_equal(store_verify_password(f->st, "alice", "wrong"), STORE_AUTH_DISABLED);
    assert_int_equal(store_user_set_enabled(f->st, "alice", true), STORE_OK);

    assert_int_equal(store_user_passwd(f->st, "alice", "looking-glass"), STORE_OK);
    assert_int_equal(store_verify_password(f->st, "alice", "wonderland"), STORE_AUTH_BAD_PASSWORD);
    assert_int_equal(store_verify_password(f->st, "alice", "looking-glass"), STORE_AUTH_OK);
}

struct login {
    const char *path;
    const char *user, *password;
    pthread_t thread;
    int result;
};

static void *login_run(void *arg)
{
    struct login *l = arg;
    struct store *st = NULL;
    l->result = -100;
    if (store_open(l->path, 5000, &st) == STORE_OK)
        l->result = store_verify_password(st, l->user, l->password);
    store_close(st);
    return NULL;
}

/* n logins at once, user[i % 3] with password[i % 3]; each must get
 * want[i % 3]. */
static void logins_at_once(const struct fixture *f, const char *const user[3],
                           const char *const password[3], const int want[3])
{
    enum { N = 12 };
    struct login l[N];
    for (int i = 0; i < N; i++) {
        l[i] = (struct login){.path = f->path, .user = user[i % 3], .password = password[i % 3]};
        assert_int_equal(pthread_create(&l[i].thread, NULL, login_run, &l[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(l[i].thread, NULL);
        assert_int_equal(l[i].result, want[i % 3]);
    }
}

/* A floor of devices logging in at once with one account, the cache on
 * (and empty, as after a restart): whoever shares a verification gets the
 * result for its own password, never another's. */
static void test_concurrent_logins(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(authcache_init(64), 0);
    assert_int_equal(store_user_add(f->st, "scanner", "floor-3"), STORE_OK);
    const char *const users[3] = {"scanner", "scanner", "nobody"};
    const char *const passwords[3] = {"floor-3", "floor-4", "floor-3"};
    const int results[3] = {STORE_AUTH_OK, STORE_AUTH_BAD_PASSWORD, STORE_AUTH_NO_USER};
    for (int round = 0; round < 2; round++) /* the cache empty, then warm */
        logins_at_once(f, users, passwords, results);
    /* disabled: refused whatever the password, though it was cached */
    assert_int_equal(store_user_set_enabled(f->st, "scanner", false), STORE_OK);
    const int disabled[3] = {STORE_AUTH_DISABLED, STORE_AUTH_DISABLED, STORE_AUTH_NO_USER};
    logins_at_once(f, users, passwords, disabled);
    /* and not from the cache: its right password costs a yescrypt too */
    unsigned long long hits0, hits1, misses, shared;
    authcache_stats(&hits0, &misses, &shared);
    assert_int_equal(store_verify_password(f->st, "scanner", "floor-3"), STORE_AUTH_DISABLED);
    authcache_stats(&hits1, &misses, &shared);
    assert_int_equal(hits1, hits0);
    assert_int_equal(store_user_set_enabled(f->st, "scanner", true), STORE_OK);
    logins_at_once(f, users, passwords, results);
    /* a password change takes effect at once for everyone */
    assert_int_equal(store_user_passwd(f->st, "scanner", "floor-5"), STORE_OK);
    assert_int_equal(store_verify_password(f->st, "scanner", "floor-3"), STORE_AUTH_BAD_PASSWORD);
    assert_int_equal(store_verify_password(f->st, "scanner", "floor-5"), STORE_AUTH_OK);
    authcache_done();
}

/* Read a whole file into a new buffer (caller frees); NULL if absent. */
static char *slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 65536;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        size_t got = fread(buf + n, 1, cap - n, fp);
        if (got == 0)
            break;
        n += got;
    }
    fclose(fp);
    *len = n;
    return buf;
}

static void test_no_plaintext_in_file(void **state)
{
    struct fixture *f = *state;
    const char *secret = "Plaintext-Marker-7d1f";
    assert_int_equal(store_user_add(f->st, "dev1", secret), STORE_OK);
    assert_int_equal(store_user_passwd(f->st, "dev1", "Plaintext-Marker-2nd"), STORE_OK);
    sqlite3 *db = raw_open(f);
    sqlite3_stmt *stmt = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT password_hash FROM accounts WHERE name='dev1'",
                                        -1, &stmt, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(stmt), SQLITE_ROW);
    assert_memory_equal(sqlite3_column_text(stmt, 0), "$y$", 3);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    const char *suffixes[] = {"", "-wal"};
    for (size_t i = 0; i < 2; i++) {
        char p[160];
        snprintf(p, sizeof(p), "%s%s", f->path, suffixes[i]);
        size_t len = 0;
        char *data = slurp(p, &len);
        if (data == NULL)
            continue;
        assert_null(memmem(data, len, "Plaintext-Marker", 16));
        free(data);
    }
}

struct list_ctx {
    char names[8][STORE_NAME_MAX + 1];
    int count;
    int stop_after;
};

static int list_cb(const struct account *a, void *arg)
{
    struct list_ctx *ctx = arg;
    snprintf(ctx->names[ctx->count], sizeof(ctx->names[0]), "%s", a->name);
    ctx->count++;
    return ctx->count == ctx->stop_after;
}

static void test_list(void **state)
{
    struct fixture *f = *state;
    struct list_ctx ctx = {.stop_after = 0};
    assert_int_equal(store_user_list(f->st, list_cb, &ctx), STORE_OK);
    assert_int_equal(ctx.count, 0);
    const char *names[] = {"mfp-b", "app", "mfp-a", "zeta"};
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(store_user_add(f->st, names[i], "pw"), STORE_OK);
    assert_int_equal(store_user_list(f->st, list_cb, &ctx), STORE_OK);
    assert_int_equal(ctx.count, 4);
    assert_string_equal(ctx.names[0], "app");
    assert_string_equal(ctx.names[1], "mfp-a");
    assert_string_equal(ctx.names[2], "mfp-b");
    assert_string_equal(ctx.names[3], "zeta");
    struct list_ctx stop = {.stop_after = 2};
    assert_int_equal(store_user_list(f->st, list_cb, &stop), STORE_OK);
    assert_int_equal(stop.count, 2);
}

/* ---- concurrency and storage errors ----------------------------------- */

static void test_busy_writer(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(store_user_add(f->st, "reader", "pw"), STORE_OK);
    struct store *impatient = NULL;
    assert_int_equal(store_open(f->path, 1, &impatient), STORE_OK);
    sqlite3 *db = raw_open(f);
    raw_exec(db, "BEGIN IMMEDIATE");
    /* Another writer holds the lock past our 1 ms busy timeout. */
    assert_int_equal(store_user_add(impatient, "blocked", "pw"), STORE_BUSY);
    assert_int_equal(store_user_set_enabled(impatient, "reader", false), STORE_BUSY);
    assert_non_null(strstr(store_errmsg(impatient), "locked"));
    /* WAL: reading (AUTH) is not blocked by the writer. */
    assert_int_equal(store_verify_password(impatient, "reader", "pw"), STORE_AUTH_OK);
    raw_exec(db, "COMMIT");
    sqlite3_close(db);
    assert_int_equal(store_user_add(impatient, "blocked", "pw"), STORE_OK);
    store_close(impatient);
}

static void test_storage_error_is_not_a_bad_password(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(store_user_add(f->st, "carol", "pw"), STORE_OK);
    sqlite3 *db = raw_open(f);
    raw_exec(db, "ALTER TABLE accounts RENAME TO accounts_moved");
    assert_int_equal(store_verify_password(f->st, "carol", "pw"), STORE_AUTH_ERROR);
    struct account a;
    assert_int_equal(store_user_get(f->st, "carol", &a), STORE_ERROR);
    assert_non_null(strstr(store_errmsg(f->st), "accounts"));
    raw_exec(db, "ALTER TABLE accounts_moved RENAME TO accounts");
    sqlite3_close(db);
    assert_int_equal(store_verify_password(f->st, "carol", "pw"), STORE_AUTH_OK);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, fixture_setup, fixture_teardown)
    const struct CMUnitTest tests[] = {
        T(test_open_creates_schema),
        cmocka_unit_test(test_schema_version_shared_with_queue),
        T(test_newer_schema_refused),
        cmocka_unit_test(test_open_bad_path),
        T(test_user_lifecycle),
        T(test_names_validated),
        T(test_passwords_and_descriptions_validated),
        T(test_verify_outcomes),
        T(test_concurrent_logins),
        T(test_no_plaintext_in_file),
        T(test_list),
        T(test_busy_writer),
        T(test_storage_error_is_not_a_bad_password),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests: account policy — sender and network lists, the header From,
 * the migration from the first schema (data kept), and quotas charged in a
 * transaction with a clock the test controls (windows reset without sleeping). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "auth/policy.h"
#include "auth/store.h"

static void test_senders(void **state)
{
    (void)state;
    const char *list = "scanner@example.test, @printers.example.test *@Fax.Example.Test";
    assert_true(policy_sender_allowed(list, "scanner@example.test"));
    assert_true(policy_sender_allowed(list, "SCANNER@example.test"));
    assert_true(policy_sender_allowed(list, "mfp3@printers.example.test"));
    assert_true(policy_sender_allowed(list, "x@fax.example.test"));
    assert_false(policy_sender_allowed(list, "boss@example.test"));
    assert_false(policy_sender_allowed(list, "x@sub.printers.example.test"));
    assert_false(policy_sender_allowed(list, ""));
    assert_true(policy_sender_allowed("", "anyone@anywhere.test"));
    char why[200];
    assert_int_equal(policy_check_senders(list, why, sizeof(why)), 0);
    assert_int_equal(policy_check_senders("a@b.test, not-an-address", why, sizeof(why)), -1);
    assert_non_null(strstr(why, "not-an-address"));
    assert_int_equal(policy_check_senders("@nodot", why, sizeof(why)), -1);
    assert_int_equal(policy_check_senders("<a@b.test>", why, sizeof(why)), -1);
}

static void test_networks(void **state)
{
    (void)state;
    const char *list = "192.0.2.0/24, 198.51.100.7 2001:db8:1::/48";
    assert_true(policy_network_allowed(list, "192.0.2.200"));
    assert_false(policy_network_allowed(list, "192.0.3.1"));
    assert_true(policy_network_allowed(list, "198.51.100.7"));
    assert_false(policy_network_allowed(list, "198.51.100.8"));
    assert_true(policy_network_allowed(list, "2001:db8:1:ffff::1"));
    assert_false(policy_network_allowed(list, "2001:db8:2::1"));
    assert_true(policy_network_allowed(list, "::ffff:192.0.2.9")); /* v4-mapped */
    assert_false(policy_network_allowed(list, "not-an-ip"));
    assert_true(policy_network_allowed("", "203.0.113.1"));
    assert_true(policy_network_allowed("10.1.2.3/13", "10.0.0.1"));  /* host bits ignored */
    assert_false(policy_network_allowed("10.1.2.3/13", "10.8.0.1"));
    char why[200];
    assert_int_equal(policy_check_networks(list, why, sizeof(why)), 0);
    assert_int_equal(policy_check_networks("192.0.2.0/33", why, sizeof(why)), -1);
    assert_non_null(strstr(why, "192.0.2.0/33"));
    assert_int_equal(policy_check_networks("printers", why, sizeof(why)), -1);
}

static void test_header_from(void **state)
{
    (void)state;
    char out[320];
    const char *m1 = "Subject: x\r\nFrom: \"Scanner, 3rd floor\"\r\n <scan@example.test>\r\n\r\nFrom: "
                     "body@example.test\r\n";
    assert_true(policy_header_from((const uint8_t *)m1, strlen(m1), out, sizeof(out)));
    assert_string_equal(out, "scan@example.test");
    const char *m2 = "from: bare@example.test\r\n\r\n";
    assert_true(policy_header_from((const uint8_t *)m2, strlen(m2), out, sizeof(out)));
    assert_string_equal(out, "bare@example.test");
    const char *m3 = "Subject: no from\r\n\r\nFrom: body@example.test\r\n";
    assert_false(policy_header_from((const uint8_t *)m3, strlen(m3), out, sizeof(out)));
}

struct fixture {
    char dir[64];
    char path[96];
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/test_policy.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/smarthost.db", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    const char *suffixes[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < 4; i++) {
        char p[128];
        snprintf(p, sizeof(p), "%s%s", f->path, suffixes[i]);
        unlink(p);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

static void exec_sql(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("%s: %s", sql, err);
}

/* A database of the first release (auth schema 1) with one account. */
static void test_migration_from_v1(void **state)
{
    struct fixture *f = *state;
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    exec_sql(db, "CREATE TABLE schema_version(module TEXT PRIMARY KEY, version INTEGER);"
                 "INSERT INTO schema_version VALUES('auth', 1);"
                 "CREATE TABLE accounts(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL,"
                 " password_hash TEXT NOT NULL, enabled INTEGER NOT NULL DEFAULT 1,"
                 " description TEXT NOT NULL DEFAULT '', created_at INTEGER,"
                 " password_changed_at INTEGER);"
                 "INSERT INTO accounts(name, password_hash, description, created_at)"
                 " VALUES('ricoh', '$y$j9T$x$y', '3rd floor Ricoh MP C3004', 1700000000);");
    sqlite3_close(db);
    struct store *st = NULL;
    assert_int_equal(store_open(f->path, 2000, &st), STORE_OK);
    struct account a;
    assert_int_equal(store_user_get(st, "ricoh", &a), STORE_OK);
    assert_string_equal(a.description, "3rd floor Ricoh MP C3004");
    store_close(st);
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    struct sql_cache sql;
    sql_cache_init(&sql, db);
    struct account_policy p;
    assert_int_equal(policy_load(&sql, "ricoh", &p), 0);
    assert_true(p.is_enabled);
    assert_string_equal(p.senders, "");
    assert_int_equal(p.msgs_per_hour, POLICY_UNSET);
    assert_int_equal(policy_load(&sql, "nobody", &p), 1);
    sql_cache_clear(&sql);
    sqlite3_close(db);
}

/* Through one statement cache for the whole test, as the committer does:
 * each charge must still see the account as the last UPDATE left it. */
static int charge(struct sql_cache *sql, const struct policy_defaults *d, int64_t now,
                  size_t rcpts, uint64_t bytes, struct policy_verdict *v)
{
    exec_sql(sql->db, "BEGIN IMMEDIATE");
    int rc = policy_charge(sql, "ricoh", d, now, "scan@example.test", NULL, rcpts, bytes, v);
    exec_sql(sql->db, rc == 0 ? "COMMIT" : "ROLLBACK");
    return rc;
}

static void test_quotas(void **state)
{
    struct fixture *f = *state;
    struct store *st = NULL;
    assert_int_equal(store_open(f->path, 2000, &st), STORE_OK);
    assert_int_equal(store_user_add(st, "ricoh", "pw-Secret-1"), STORE_OK);
    store_close(st);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    struct sql_cache sql;
    sql_cache_init(&sql, db);
    struct policy_defaults d = {.max_size = 1000, .max_rcpts = 5, .msgs_per_hour = 2,
                                .msgs_per_day = 0, .rcpts_per_day = 6, .bytes_per_day = 0};
    struct policy_verdict v;
    int64_t t0 = 1700000000 - 1700000000 % 86400 + 3600; /* 01:00 UTC */
    assert_int_equal(charge(&sql, &d, t0, 1, 100, &v), 0);
    assert_string_equal(v.owner, ""); /* an account without one */
    exec_sql(db, "UPDATE accounts SET owner = 'it@example.test'");
    assert_int_equal(charge(&sql, &d, t0 + 10, 1, 100, &v), 0);
    assert_string_equal(v.owner, "it@example.test"); /* for the relay's bounces */
    assert_int_equal(charge(&sql, &d, t0 + 20, 1, 100, &v), 1); /* hourly: 2 */
    assert_int_equal(v.code, 452);
    assert_string_equal(v.owner, ""); /* only an accepted charge names it */
    assert_string_equal(v.enhanced, "4.2.2");
    assert_non_null(strstr(v.text, "Hourly message quota"));
    assert_non_null(strstr(v.text, "02:00 UTC"));
    /* the next hour: allowed again, counters only for accepted messages */
    assert_int_equal(charge(&sql, &d, t0 + 3600, 3, 100, &v), 0);
    assert_int_equal(charge(&sql, &d, t0 + 3601, 2, 100, &v), 1); /* recipients/day: 6 */
    assert_non_null(strstr(v.text, "Daily recipient quota"));
    assert_int_equal(charge(&sql, &d, t0 + 3602, 1, 2000, &v), 1); /* size */
    assert_int_equal(v.code, 552);
    assert_int_equal(charge(&sql, &d, t0 + 3603, 6, 10, &v), 1); /* max recipients */
    assert_string_equal(v.enhanced, "4.5.3");
    /* a per-account value overrides the default; the next day resets */
    exec_sql(db, "UPDATE accounts SET rcpts_per_day = 0, senders = '@example.test',"
                 " check_header_from = 1");
    assert_int_equal(charge(&sql, &d, t0 + 3604, 1, 10, &v), 1); /* header From required */
    assert_int_equal(v.code, 553);
    exec_sql(db, "UPDATE accounts SET check_header_from = 0");
    assert_int_equal(charge(&sql, &d, t0 + 3605, 1, 10, &v), 0);
    exec_sql(db, "UPDATE accounts SET senders = 'other@example.test'");
    assert_int_equal(charge(&sql, &d, t0 + 3606, 1, 10, &v), 1);
    assert_string_equal(v.enhanced, "5.7.1");
    exec_sql(db, "UPDATE accounts SET senders = '', enabled = 0");
    assert_int_equal(charge(&sql, &d, t0 + 3607, 1, 10, &v), 1);
    assert_int_equal(v.code, 535);
    sql_cache_clear(&sql);
    sqlite3_close(db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_senders),
        cmocka_unit_test(test_networks),
        cmocka_unit_test(test_header_from),
        cmocka_unit_test_setup_teardown(test_migration_from_v1, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quotas, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

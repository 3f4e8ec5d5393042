/* Unit tests for auth/auth.c: real SASL exchanges through libsasl2 and its
 * PLAIN / LOGIN plugins against a temporary SQLite account store. Each test
 * uses its own client address (and accounts where lockouts matter) so the
 * shared throttle does not couple them. Clock values are plain numbers. */
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

#include "auth/auth.h"
#include "auth/store.h"
#include "auth/throttle.h"

#define PW "correct horse"

static const struct throttle_params params = {
    .failure_delay_ms = 100,
    .max_delay_ms = 1000,
    .ip_lockout_failures = 5,
    .account_lockout_failures = 3,
    .lockout_ms = 60000,
    .window_ms = 600000,
};

static struct {
    char dir[64];
    char path[128];
    struct throttle *throttle;
} env;

/* ---- helpers ---------------------------------------------------------- */

static void b64(const void *data, size_t len, char *out, size_t out_size)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const uint8_t *in = data;
    size_t n = 0;
    assert_true((len + 2) / 3 * 4 < out_size);
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        out[n++] = a[v >> 18 & 63];
        out[n++] = a[v >> 12 & 63];
        out[n++] = i + 1 < len ? a[v >> 6 & 63] : '=';
        out[n++] = i + 2 < len ? a[v & 63] : '=';
    }
    out[n] = '\0';
}

/* base64("authzid\0authcid\0password") into out. */
static void plain_message(const char *authzid, const char *authcid, const char *password,
                          char *out, size_t out_size)
{
    char raw[2048];
    size_t a = strlen(authzid), c = strlen(authcid), p = strlen(password);
    assert_true(a + c + p + 2 <= sizeof(raw));
    memcpy(raw, authzid, a);
    raw[a] = '\0';
    memcpy(raw + a + 1, authcid, c);
    raw[a + 1 + c] = '\0';
    memcpy(raw + a + c + 2, password, p);
    b64(raw, a + c + p + 2, out, out_size);
}

static void text_b64(const char *text, char *out, size_t out_size)
{
    b64(text, strlen(text), out, out_size);
}

/* One complete PLAIN exchange with an initial response. */
static enum auth_result plain_auth(const char *ip, const char *user, const char *password,
                                   uint64_t now, struct auth_outcome *out)
{
    struct auth_session *as = auth_session_new("mx.test", ip);
    assert_non_null(as);
    char msg[1700];
    plain_message("", user, password, msg, sizeof(msg));
    auth_session_start(as, "PLAIN", msg, now, out);
    auth_session_free(as);
    return out->result;
}

static void sql(const char *statement)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(env.path, &db), SQLITE_OK);
    char *err = NULL;
    if (sqlite3_exec(db, statement, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("%s: %s", statement, err != NULL ? err : "?");
    sqlite3_close(db);
}

/* ---- fixtures ------------------------------------------------------------ */

static int group_setup(void **state)
{
    snprintf(env.dir, sizeof(env.dir), "/tmp/test_auth.XXXXXX");
    if (mkdtemp(env.dir) == NULL)
        return -1;
    snprintf(env.path, sizeof(env.path), "%s/smarthost.db", env.dir);
    struct store *st = NULL;
    if (store_open(env.path, 1000, &st) != STORE_OK)
        return -1;
    const char *users[] = {"alice", "bob", "locky", "disabled", "lockip", "worker", "ghost"};
    for (size_t i = 0; i < sizeof(users) / sizeof(users[0]); i++) {
        if (store_user_add(st, users[i], PW) != STORE_OK)
            return -1;
    }
    if (store_user_set_enabled(st, "disabled", false) != STORE_OK)
        return -1;
    store_close(st);
    env.throttle = throttle_new(&params);
    if (env.throttle == NULL)
        return -1;
    return auth_global_init(env.path, 1000, env.throttle);
}

static int group_teardown(void **state)
{
    auth_global_done();
    throttle_free(env.throttle);
    const char *suffixes[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        char p[160];
        snprintf(p, sizeof(p), "%s%s", env.path, suffixes[i]);
        unlink(p);
    }
    rmdir(env.dir);
    return 0;
}

/* ---- PLAIN ---------------------------------------------------------------- */

static void test_mechanisms(void **state)
{
    assert_string_equal(auth_mechanisms(), "PLAIN LOGIN");
}

static void test_plain_ok(void **state)
{
    struct auth_outcome o;
    assert_int_equal(plain_auth("192.0.2.1", "alice", PW, 1000, &o), AUTH_OK);
    assert_string_equal(o.user, "alice");
    assert_int_equal(o.delay_ms, 0);
}

static void test_plain_without_initial_response(void **state)
{
    struct auth_session *as = auth_session_new("mx.test", "192.0.2.2");
    struct auth_outcome o;
    auth_session_start(as, "plain", NULL, 1000, &o); /* mechanism names are case-insensitive */
    assert_int_equal(o.result, AUTH_CONTINUE);
    assert_string_equal(o.challenge, ""); /* "334 " with an empty challenge */
    char msg[256];
    plain_message("", "alice", PW, msg, sizeof(msg));
    auth_session_step(as, msg, 1001, &o);
    assert_int_equal(o.result, AUTH_OK);
    assert_string_equal(o.user, "alice");
    auth_session_free(as);
}

static void test_plain_bad_password(void **state)
{
    struct auth_outcome o;
    assert_int_equal(plain_auth("192.0.2.3", "bob", "wrong", 1000, &o), AUTH_FAIL);
    assert_string_equal(o.user, "bob");
    assert_int_equal(o.delay_ms, 100);
    assert_false(o.locked_now);
    assert_int_equal(plain_auth("192.0.2.3", "bob", "wrong again", 1001, &o), AUTH_FAIL);
    assert_int_equal(o.delay_ms, 200);
    /* Success clears the counters: the next failure starts over. */
    assert_int_equal(plain_auth("192.0.2.3", "bob", PW, 1002, &o), AUTH_OK);
    assert_int_equal(plain_auth("192.0.2.3", "bob", "wrong", 1003, &o), AUTH_FAIL);
    assert_int_equal(o.delay_ms, 100);
    assert_int_equal(plain_auth("192.0.2.3", "bob", PW, 1004, &o), AUTH_OK);
}

static void test_plain_authzid(void **state)
{
    struct auth_session *as = auth_session_new("mx.test", "192.0.2.4");
    struct auth_outcome o;
    char msg[256];
    /* authzid equal to authcid is just the same identity. */
    plain_message("alice", "alice", PW, msg, sizeof(msg));
    auth_session_start(as, "PLAIN", msg, 1000, &o);
    assert_int_equal(o.result, AUTH_OK);
    /* Acting as someone else, even with the right password: refused. */
    plain_message("bob", "alice", PW, msg, sizeof(msg));
    auth_session_start(as, "PLAIN", msg, 1001, &o);
    assert_int_equal(o.result, AUTH_FAIL);
    assert_int_equal(o.delay_ms, 100);
    auth_session_free(as);
    assert_int_equal(plain_auth("192.0.2.4", "alice", PW, 1002, &o), AUTH_OK);
}

static void test_plain_malformed_and_empty(void **state)
{
    struct auth_outcome o;
    struct auth_session *as = auth_session_new("mx.test", "192.0.2.5");
    /* "=" is an empty initial response: not a valid PLAIN message. */
    auth_session_start(as, "PLAIN", "=", 1000, &o);
    assert_int_equal(o.result, AUTH_FAIL);
    assert_string_equal(o.user, "");
    /* No NUL separators at all. */
    char msg[64];
    text_b64("alice", msg, sizeof(msg));
    auth_session_start(as, "PLAIN", msg, 1001, &o);
    assert_int_equal(o.result, AUTH_FAIL);
    /* An empty line as the response. */
    auth_session_start(as, "PLAIN", NULL, 1002, &o);
    assert_int_equal(o.result, AUTH_CONTINUE);
    auth_session_step(as, "", 1003, &o);
    assert_int_equal(o.result, AUTH_FAIL);
    auth_session_free(as);
}

static void test_names_used_exactly(void **state)
{
    struct auth_outcome o;
    /* No trimming, no case folding, no realm. */
    assert_int_equal(plain_auth("192.0.2.6", " alice", PW, 1000, &o), AUTH_FAIL);
    assert_int_equal(plain_auth("192.0.2.7", "alice ", PW, 1000, &o), AUTH_FAIL);
    assert_int_equal(plain_auth("192.0.2.8", "Alice", PW, 1000, &o), AUTH_FAIL);
    assert_int_equal(plain_auth("192.0.2.9", "alice@mx.test", PW, 1000, &o), AUTH_FAIL);
    assert_int_equal(plain_auth("192.0.2.10", "alice", PW, 1000, &o), AUTH_OK);
    assert_string_equal(o.user, "alice");
}

/* ---- LOGIN ---------------------------------------------------------------- */

static void test_login_with_prompts(void **state)
{
    struct auth_session *as = auth_session_new("mx.test", "192.0.2.20");
    struct auth_outcome o;
    char msg[128];
    auth_session_start(as, "LOGIN", NULL, 1000, &o);
    assert_int_equal(o.result, AUTH_CONTINUE);
    assert_string_equal(o.challenge, "VXNlcm5hbWU6"); /* "Username:" */
    text_b64("alice", msg, sizeof(msg));
    auth_session_step(as, msg, 1001, &o);
    assert_int_equal(o.result, AUTH_CONTINUE);
    assert_string_equal(o.challenge, "UGFzc3dvcmQ6"); /* "Password:" */
    text_b64(PW, msg, sizeof(msg));
    auth_session_step(as, msg, 1002, &o);
    assert_int_equal(o.result, AUTH_OK);
    assert_string_equal(o.user, "alice");
    auth_session_free(as);
}

static void test_login_with_initial_user(void **state)
{
    struct auth_session *as = auth_session_new("mx.test", "192.0.2.21");
    struct auth_outcome o;
    char msg[128];
    text_b64("alice", msg, sizeof(msg));
    auth_session_start(as, "login", msg, 1000, &o);
    assert_int_equal(o.result, AUTH_CONTINUE);
    assert_string_equal(o.challenge, "UGFzc3dvcmQ6");
    text_b64(PW, msg, sizeof(msg));
    auth_session_step(as, msg, 1001, &o);
    assert_int_equal(o.result, AUTH_OK);

    /* "=" (empty initial response) means: ask for the user name. */
    auth_session_start(as, "LOGIN", "=", 1002, &o);
    assert_int_equal(o.result, AUTH_CONTINUE);
    assert_string_equal(o.challenge, "VXNlcm5hbWU6");
    text_b64("alice", msg, sizeof(msg));
    auth_session_step(as, msg, 1003, &o);
    assert_int_equal(o.result, AUTH_CONTINUE);
    text_b64("not it", msg, sizeof(msg));
    auth_session_step(as, msg, 1004, &o);
    assert_int_equal(o.result, AUTH_FAIL);
    assert_string_equal(o.user, "alice");
    assert_int_equal(o.delay_ms, 100);
    auth_session_free(as);
}

/* ---- failures that must look alike ----------------------------------------- */

static void test_unknown_and_disabled_look_like_bad_password(void **state)
{
    struct auth_outcome bad, unknown, disabled;
    assert_int_equal(plain_auth("192.0.2.30", "ghost", "wrong", 1000, &bad), AUTH_FAIL);
    assert_int_equal(plain_auth("192.0.2.31", "nobody-here", PW, 1000, &unknown), AUTH_FAIL);
    assert_int_equal(plain_auth("192.0.2.32", "disabled", PW, 1000, &disabled), AUTH_FAIL);
    /* Same result, same delay, the name tried reported for the log. */
    assert_int_equal(unknown.delay_ms, bad.delay_ms);
    assert_int_equal(disabled.delay_ms, bad.delay_ms);
    assert_string_equal(unknown.user, "nobody-here");
    assert_string_equal(disabled.user, "disabled");
    /* LOGIN with an unknown user still asks for the password. */
    struct auth_session *as = auth_session_new("mx.test", "192.0.2.33");
    struct auth_outcome o;
    char msg[64];
    text_b64("nobody-here", msg, sizeof(msg));
    auth_session_start(as, "LOGIN", msg, 1000, &o);
    assert_int_equal(o.result, AUTH_CONTINUE);
    assert_string_equal(o.challenge, "UGFzc3dvcmQ6");
    text_b64(PW, msg, sizeof(msg));
    auth_session_step(as, msg, 1001, &o);
    assert_int_equal(o.result, AUTH_FAIL);
    auth_session_free(as);
}

/* ---- lockouts --------------------------------------------------------------- */

static void test_account_lockout(void **state)
{
    struct auth_outcome o;
    const char *ips[] = {"198.51.100.1", "198.51.100.2", "198.51.100.3"};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(plain_auth(ips[i], "locky", "guess", 2000 + (uint64_t)i, &o), AUTH_FAIL);
        assert_int_equal(o.locked_now, i == 2);
    }
    /* Locked: the right password, from anywhere, is refused. */
    assert_int_equal(plain_auth("198.51.100.9", "locky", PW, 2010, &o), AUTH_LOCKED);
    assert_string_equal(o.user, "locky");
    /* LOGIN reaches the lock only once it knows the user. */
    struct auth_session *as = auth_session_new("mx.test", "198.51.100.10");
    char msg[64];
    text_b64("locky", msg, sizeof(msg));
    auth_session_start(as, "LOGIN", msg, 2011, &o);
    assert_int_equal(o.result, AUTH_CONTINUE);
    text_b64(PW, msg, sizeof(msg));
    auth_session_step(as, msg, 2012, &o);
    assert_int_equal(o.result, AUTH_LOCKED);
    auth_session_free(as);
    /* Other accounts are fine; and after lockout_ms so is this one. */
    assert_int_equal(plain_auth("198.51.100.9", "alice", PW, 2013, &o), AUTH_OK);
    assert_int_equal(plain_auth("198.51.100.9", "locky", PW, 2002 + params.lockout_ms, &o),
                     AUTH_OK);
}

static void test_ip_lockout(void **state)
{
    struct auth_outcome o;
    const char *ip = "2001:db8:77:1::10";
    for (int i = 0; i < 5; i++) {
        char user[32];
        snprintf(user, sizeof(user), "spray%d", i);
        assert_int_equal(plain_auth(ip, user, "guess", 3000, &o), AUTH_FAIL);
        assert_int_equal(o.locked_now, i == 4);
    }
    /* The whole /64 is refused at once, before any exchange. */
    struct auth_session *as = auth_session_new("mx.test", "2001:db8:77:1::99");
    auth_session_start(as, "LOGIN", NULL, 3001, &o);
    assert_int_equal(o.result, AUTH_LOCKED);
    assert_string_equal(o.user, "");
    auth_session_free(as);
    assert_int_equal(plain_auth(ip, "lockip", PW, 3002, &o), AUTH_LOCKED);
    assert_int_equal(plain_auth("2001:db8:77:2::10", "lockip", PW, 3003, &o), AUTH_OK);
}

/* ---- protocol errors -------------------------------------------------------- */

static void test_bad_base64(void **state)
{
    struct auth_session *as = auth_session_new("mx.test", "192.0.2.40");
    struct auth_outcome o;
    const char *bad[] = {"!!!!", "abc", "AAA=A", "A===", "QUJD\r\n", "QU JD", "=QUJD"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        auth_session_start(as, "PLAIN", bad[i], 1000, &o);
        if (o.result != AUTH_BAD_BASE64)
            fail_msg("initial %zu: result %d", i, o.result);
    }
    auth_session_start(as, "LOGIN", NULL, 1001, &o);
    assert_int_equal(o.result, AUTH_CONTINUE);
    auth_session_step(as, "not base64!", 1002, &o);
    assert_int_equal(o.result, AUTH_BAD_BASE64);
    /* That ended the exchange: a further step has nothing to continue. */
    auth_session_step(as, "YWxpY2U=", 1003, &o);
    assert_int_equal(o.result, AUTH_TEMPFAIL);
    auth_session_free(as);
    /* None of it counted as a failed password. */
    assert_int_equal(plain_auth("192.0.2.40", "alice", "wrong", 1004, &o), AUTH_FAIL);
    assert_int_equal(o.delay_ms, 100);
}

static void test_unknown_mechanism(void **state)
{
    struct auth_session *as = auth_session_new("mx.test", "192.0.2.41");
    struct auth_outcome o;
    /* EXTERNAL is built into libsasl2 and CRAM-MD5 and others ship in
     * libsasl2-modules: none of them is offered. */
    const char *mechs[] = {"CRAM-MD5", "DIGEST-MD5", "EXTERNAL", "ANONYMOUS", "SCRAM-SHA-256",
                           "XOAUTH2", "", "PLAINX"};
    for (size_t i = 0; i < sizeof(mechs) / sizeof(mechs[0]); i++) {
        auth_session_start(as, mechs[i], NULL, 1000, &o);
        if (o.result != AUTH_BAD_MECH)
            fail_msg("%s: result %d", mechs[i], o.result);
    }
    auth_session_free(as);
}

static void test_oversized_response(void **state)
{
    struct auth_outcome o;
    char password[1500];
    memset(password, 'p', sizeof(password) - 1);
    password[sizeof(password) - 1] = '\0';
    struct auth_session *as = auth_session_new("mx.test", "192.0.2.42");
    char msg[2800];
    plain_message("", "alice", password, msg, sizeof(msg));
    auth_session_start(as, "PLAIN", msg, 1000, &o);
    assert_int_equal(o.result, AUTH_FAIL);
    /* 600 bytes fits a PLAIN message but no stored password is that long. */
    password[600] = '\0';
    plain_message("", "alice", password, msg, sizeof(msg));
    auth_session_start(as, "PLAIN", msg, 1001, &o);
    assert_int_equal(o.result, AUTH_FAIL);
    auth_session_free(as);
}

/* ---- concurrency ------------------------------------------------------------ */

struct worker_arg {
    int index;
    int ok_count;
};

static void *worker_main(void *p)
{
    struct worker_arg *arg = p;
    for (int i = 0; i < 3; i++) {
        char ip[32];
        snprintf(ip, sizeof(ip), "10.9.%d.%d", arg->index, i);
        struct auth_session *as = auth_session_new("mx.test", ip);
        struct auth_outcome o;
        char msg[128];
        if (i % 2 == 0) {
            plain_message("", "worker", PW, msg, sizeof(msg));
            auth_session_start(as, "PLAIN", msg, 5000, &o);
        } else {
            text_b64("worker", msg, sizeof(msg));
            auth_session_start(as, "LOGIN", msg, 5000, &o);
            if (o.result == AUTH_CONTINUE) {
                text_b64(PW, msg, sizeof(msg));
                auth_session_step(as, msg, 5001, &o);
            }
        }
        if (o.result == AUTH_OK && strcmp(o.user, "worker") == 0)
            arg->ok_count++;
        auth_session_free(as);
    }
    return NULL;
}

static void test_concurrent_exchanges(void **state)
{
    enum { THREADS = 4 };
    pthread_t threads[THREADS];
    struct worker_arg args[THREADS];
    for (int i = 0; i < THREADS; i++) {
        args[i] = (struct worker_arg){.index = i};
        assert_int_equal(pthread_create(&threads[i], NULL, worker_main, &args[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(threads[i], NULL), 0);
        assert_int_equal(args[i].ok_count, 3);
    }
}

/* ---- storage errors (last: it moves the table away and back) ---------------- */

static void test_storage_error_is_tempfail(void **state)
{
    struct auth_outcome o;
    assert_int_equal(plain_auth("192.0.2.50", "alice", PW, 1000, &o), AUTH_OK);
    sql("ALTER TABLE accounts RENAME TO accounts_away");
    assert_int_equal(plain_auth("192.0.2.50", "alice", PW, 1001, &o), AUTH_TEMPFAIL);
    assert_string_equal(o.user, "alice");
    /* Not counted as a failure; and a locked account is refused before
     * the store is even asked (LOCKED, not TEMPFAIL). */
    assert_int_equal(plain_auth("198.51.100.20", "locky", "x", 9000, &o), AUTH_TEMPFAIL);
    sql("ALTER TABLE accounts_away RENAME TO accounts");
    for (int i = 0; i < 3; i++)
        plain_auth("198.51.100.21", "locky", "guess", 100000 + (uint64_t)i, &o);
    assert_true(o.locked_now);
    sql("ALTER TABLE accounts RENAME TO accounts_away");
    assert_int_equal(plain_auth("198.51.100.22", "locky", PW, 100010, &o), AUTH_LOCKED);
    sql("ALTER TABLE accounts_away RENAME TO accounts");
    /* The store comes back on the next attempt, and the tempfail from
     * 192.0.2.50 was not counted: its first real failure waits the base
     * delay (a counted one would make this 200). */
    assert_int_equal(plain_auth("192.0.2.50", "alice", "wrong", 1002, &o), AUTH_FAIL);
    assert_int_equal(o.delay_ms, 100);
    assert_int_equal(plain_auth("192.0.2.50", "alice", PW, 1003, &o), AUTH_OK);
}

/* ---- missing plugins (own group: its own init and done) --------------------- */

static void test_missing_plugins_fail_init(void **state)
{
    char dir[] = "/tmp/test_auth_noplugins.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char db[96];
    snprintf(db, sizeof(db), "%s/db", dir);
    struct throttle *t = throttle_new(&params);
    assert_non_null(t);
    /* libsasl2 looks for plugins in $SASL_PATH: an empty directory. */
    assert_int_equal(setenv("SASL_PATH", dir, 1), 0);
    assert_int_equal(auth_global_init(db, 100, t), -1);
    unsetenv("SASL_PATH");
    /* Nothing is left half-initialised. */
    struct auth_session *as = auth_session_new("mx.test", "192.0.2.60");
    struct auth_outcome o;
    auth_session_start(as, "PLAIN", NULL, 1, &o);
    assert_int_equal(o.result, AUTH_TEMPFAIL);
    auth_session_free(as);
    throttle_free(t);
    const char *suffixes[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        char p[128];
        snprintf(p, sizeof(p), "%s%s", db, suffixes[i]);
        unlink(p);
    }
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest without_plugins[] = {
        cmocka_unit_test(test_missing_plugins_fail_init),
    };
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mechanisms),
        cmocka_unit_test(test_plain_ok),
        cmocka_unit_test(test_plain_without_initial_response),
        cmocka_unit_test(test_plain_bad_password),
        cmocka_unit_test(test_plain_authzid),
        cmocka_unit_test(test_plain_malformed_and_empty),
        cmocka_unit_test(test_names_used_exactly),
        cmocka_unit_test(test_login_with_prompts),
        cmocka_unit_test(test_login_with_initial_user),
        cmocka_unit_test(test_unknown_and_disabled_look_like_bad_password),
        cmocka_unit_test(test_account_lockout),
        cmocka_unit_test(test_ip_lockout),
        cmocka_unit_test(test_bad_base64),
        cmocka_unit_test(test_unknown_mechanism),
        cmocka_unit_test(test_oversized_response),
        cmocka_unit_test(test_concurrent_exchanges),
        cmocka_unit_test(test_storage_error_is_tempfail),
    };
    int failed = cmocka_run_group_tests_name("auth_without_plugins", without_plugins, NULL, NULL);
    failed += cmocka_run_group_tests_name("auth", tests, group_setup, group_teardown);
    return failed;
}

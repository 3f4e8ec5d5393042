/* Unit tests for core/config.c: the value parsers (bounds and garbage), the
 * key table, defaults, a full valid file, every error form with its exact
 * line, default listeners, IPv6 addresses, and packaging/smarthost.conf being
 * byte for byte what config_write_defaults() prints. Files are written to a
 * private temporary directory; each case is a row of a table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/config.h"

#define KIB 1024ULL
#define MIB (1024ULL * KIB)
#define GIB (1024ULL * MIB)

static char tmp_dir[] = "/tmp/test_config.XXXXXX";
static char tmp_path[sizeof(tmp_dir) + 32];

static int group_setup(void **state)
{
    if (mkdtemp(tmp_dir) == NULL)
        return -1;
    snprintf(tmp_path, sizeof(tmp_path), "%s/smarthost.conf", tmp_dir);
    return 0;
}

static int group_teardown(void **state)
{
    unlink(tmp_path);
    return rmdir(tmp_dir);
}

/* Writes len bytes of text to tmp_path and returns that path. */
static const char *write_file_len(const char *text, size_t len)
{
    FILE *fp = fopen(tmp_path, "w");
    assert_non_null(fp);
    assert_int_equal(fwrite(text, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
    return tmp_path;
}

static const char *write_file(const char *text)
{
    return write_file_len(text, strlen(text));
}

/* Loads text as a file; on success returns the config (caller frees). */
static struct config *load_ok(const char *text)
{
    struct config *cfg = NULL;
    char err[1024] = "";
    int r = config_load(write_file(text), &cfg, err, sizeof(err));
    if (r != 0)
        fail_msg("config_load failed: %s\n--- file ---\n%s", err, text);
    assert_non_null(cfg);
    return cfg;
}

/* Loads text and asserts the error, without the "PATH" in front of it. */
static void load_fails_len(const char *text, size_t len, const char *want)
{
    struct config *cfg = (struct config *)(uintptr_t)1;
    char err[1024] = "";
    assert_int_equal(config_load(write_file_len(text, len), &cfg, err, sizeof(err)), -1);
    assert_null(cfg);
    size_t plen = strlen(tmp_path);
    if (strncmp(err, tmp_path, plen) != 0 || strcmp(err + plen, want) != 0)
        fail_msg("\n got: %s\nwant: %s%s\n--- file ---\n%s", err, tmp_path, want, text);
}

static void load_fails(const char *text, const char *want)
{
    load_fails_len(text, strlen(text), want);
}

/* ---- value parsers ---- */

struct number_case {
    const char *in;
    int rc;
    uint64_t want;
};

static void test_parse_size(void **state)
{
    static const struct number_case cases[] = {
        {"0", 0, 0},
        {"1", 0, 1},
        {"1048576", 0, 1048576},
        {"10k", 0, 10 * KIB},
        {"10K", 0, 10 * KIB},
        {"35M", 0, 35 * MIB},
        {"35m", 0, 35 * MIB},
        {"2G", 0, 2 * GIB},
        {"2g", 0, 2 * GIB},
        {"007k", 0, 7 * KIB},
        {"18446744073709551615", 0, UINT64_MAX},
        {"17179869183G", 0, 17179869183ULL * GIB},
        {"18446744073709551616", -1, 0}, /* 2^64 */
        {"17179869184G", -1, 0},         /* 2^34 G = 2^64 */
        {"", -1, 0},
        {"k", -1, 0},
        {"-1", -1, 0},
        {"+1", -1, 0},
        {" 1", -1, 0},
        {"1 ", -1, 0},
        {"1 k", -1, 0},
        {"1.5M", -1, 0},
        {"1KB", -1, 0},
        {"1kk", -1, 0},
        {"1T", -1, 0},
        {"0x10", -1, 0},
        {"ten", -1, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t v = 12345;
        int rc = config_parse_size(cases[i].in, &v);
        if (rc != cases[i].rc || (rc == 0 && v != cases[i].want))
            fail_msg("size \"%s\": rc=%d v=%llu", cases[i].in, rc, (unsigned long long)v);
    }
    uint64_t v;
    assert_int_equal(config_parse_size(NULL, &v), -1);
}

static void test_parse_duration(void **state)
{
    static const struct number_case cases[] = {
        {"250ms", 0, 250},
        {"0ms", 0, 0},
        {"0", 0, 0},
        {"30s", 0, 30000},
        {"10", 0, 10000}, /* bare number = seconds */
        {"5m", 0, 300000},
        {"2h", 0, 7200000},
        {"1d", 0, 86400000},
        {"7d", 0, 604800000},
        {"18446744073709551615ms", 0, UINT64_MAX},
        {"18446744073709551", 0, 18446744073709551000ULL},
        {"18446744073709552", -1, 0}, /* seconds overflow once scaled */
        {"213503982334602d", -1, 0},
        {"", -1, 0},
        {"s", -1, 0},
        {"ms", -1, 0},
        {"5M", -1, 0}, /* units are lower case: M is a size */
        {"5S", -1, 0},
        {"1w", -1, 0},
        {"1.5s", -1, 0},
        {"-1s", -1, 0},
        {"1 s", -1, 0},
        {"1sm", -1, 0},
        {"1mss", -1, 0},
        {"1h30m", -1, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t v = 12345;
        int rc = config_parse_duration_ms(cases[i].in, &v);
        if (rc != cases[i].rc || (rc == 0 && v != cases[i].want))
            fail_msg("duration \"%s\": rc=%d v=%llu", cases[i].in, rc, (unsigned long long)v);
    }
    uint64_t v;
    assert_int_equal(config_parse_duration_ms(NULL, &v), -1);
}

static void test_parse_bool(void **state)
{
    static const struct {
        const char *in;
        int rc;
        bool want;
    } cases[] = {
        {"yes", 0, true},  {"YES", 0, true},    {"true", 0, true}, {"True", 0, true},
        {"on", 0, true},   {"1", 0, true},      {"no", 0, false},  {"No", 0, false},
        {"false", 0, false}, {"off", 0, false}, {"OFF", 0, false}, {"0", 0, false},
        {"", -1, false},   {"y", -1, false},    {"n", -1, false},  {"2", -1, false},
        {"yess", -1, false}, {"enable", -1, false}, {" yes", -1, false}, {"01", -1, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        bool v = !cases[i].want;
        int rc = config_parse_bool(cases[i].in, &v);
        if (rc != cases[i].rc || (rc == 0 && v != cases[i].want))
            fail_msg("bool \"%s\": rc=%d v=%d", cases[i].in, rc, v);
    }
    bool v;
    assert_int_equal(config_parse_bool(NULL, &v), -1);
}

/* ---- the key table ---- */

static void test_key_table(void **state)
{
    size_t count = 0;
    const struct config_key *keys = config_keys(&count);
    assert_non_null(keys);
    assert_true(count >= 30);
    for (size_t i = 0; i < count; i++) {
        const struct config_key *k = &keys[i];
        assert_non_null(k->section);
        assert_non_null(k->name);
        assert_non_null(k->default_value);
        assert_non_null(k->doc);
        assert_true(strlen(k->doc) > 10 && strlen(k->doc) <= 76); /* "# doc" fits 80 columns */
        for (size_t j = 0; j < i; j++)
            if (strcmp(keys[j].section, k->section) == 0 && strcmp(keys[j].name, k->name) == 0)
                fail_msg("[%s] %s listed twice", k->section, k->name);
        uint64_t v;
        switch (k->type) {
        case CONFIG_SIZE:
            assert_int_equal(config_parse_size(k->default_value, &v), 0);
            assert_true(v >= k->min && v <= k->max);
            break;
        case CONFIG_DURATION:
            assert_int_equal(config_parse_duration_ms(k->default_value, &v), 0);
            assert_true(v >= k->min && v <= k->max);
            break;
        case CONFIG_ENUM:
            assert_non_null(k->enum_values);
            assert_non_null(strstr(k->enum_values, k->default_value));
            break;
        case CONFIG_BOOL: {
            bool b;
            assert_int_equal(config_parse_bool(k->default_value, &b), 0);
            break;
        }
        default:
            break;
        }
        if (k->type == CONFIG_UINT || k->type == CONFIG_SIZE || k->type == CONFIG_DURATION)
            assert_true(k->min <= k->max && (k->size == 4 || k->size == 8));
    }
    assert_ptr_equal(config_keys(NULL), keys);
}

/* ---- defaults ---- */

static void assert_default_listeners(const struct config *cfg)
{
    assert_int_equal(cfg->listener_count, 2);
    const struct listener_config *a = &cfg->listeners[0], *b = &cfg->listeners[1];
    assert_string_equal(a->name, "submission");
    assert_int_equal(a->address_count, 2);
    assert_string_equal(a->addresses[0], "0.0.0.0:587");
    assert_string_equal(a->addresses[1], "[::]:587");
    assert_int_equal(a->mode, LISTENER_STARTTLS);
    assert_string_equal(b->name, "submissions");
    assert_int_equal(b->address_count, 2);
    assert_string_equal(b->addresses[0], "0.0.0.0:465");
    assert_string_equal(b->addresses[1], "[::]:465");
    assert_int_equal(b->mode, LISTENER_IMPLICIT);
    for (size_t i = 0; i < 2; i++) {
        const struct listener_config *l = &cfg->listeners[i];
        assert_string_equal(l->tls_priority, "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2");
        assert_int_equal(l->bare_lf, BARE_LF_NORMALIZE);
        assert_false(l->allow_plaintext_auth);
    }
}

static void assert_defaults(const struct config *cfg)
{
    char host[256] = "";
    gethostname(host, sizeof(host) - 1);
    assert_true(cfg->hostname[0] != '\0');
    if (host[0] != '\0' && strchr(host, '_') == NULL)
        assert_string_equal(cfg->hostname, host);
    assert_string_equal(cfg->user, "smarthost");
    assert_string_equal(cfg->database, "/var/lib/smarthost/smarthost.db");
    assert_int_equal(cfg->threads, 0);
    assert_int_equal(cfg->log_target, LOG_TARGET_STDERR);
    assert_int_equal(cfg->log_level, LOG_LEVEL_INFO);
    assert_string_equal(cfg->cert_file, "/etc/smarthost/tls/cert.pem");
    assert_string_equal(cfg->key_file, "/etc/smarthost/tls/key.pem");
    assert_string_equal(cfg->cert2_file, "");
    assert_string_equal(cfg->key2_file, "");
    assert_int_equal(cfg->max_message_size, 35 * MIB);
    assert_int_equal(cfg->max_recipients, 100);
    assert_int_equal(cfg->max_line_length, 2048);
    assert_int_equal(cfg->max_errors, 10);
    assert_int_equal(cfg->idle_timeout_ms, 5 * 60 * 1000);
    assert_int_equal(cfg->session_timeout_ms, 30 * 60 * 1000);
    assert_int_equal(cfg->max_connections, 1000);
    assert_int_equal(cfg->max_connections_per_ip, 50);
    assert_int_equal(cfg->auth_failure_delay_ms, 1000);
    assert_int_equal(cfg->auth_max_delay_ms, 15000);
    assert_int_equal(cfg->auth_ip_lockout_failures, 20);
    assert_int_equal(cfg->auth_account_lockout_failures, 10);
    assert_int_equal(cfg->auth_lockout_ms, 15 * 60 * 1000);
    assert_int_equal(cfg->auth_failure_window_ms, 60 * 60 * 1000);
    assert_int_equal(cfg->queue_busy_timeout_ms, 5000);
    assert_default_listeners(cfg);
}

static void test_defaults(void **state)
{
    struct config *cfg = config_defaults();
    assert_non_null(cfg);
    assert_null(cfg->path);
    assert_defaults(cfg);
    config_free(cfg);
    config_free(NULL);
}

static void test_empty_and_comment_only_files(void **state)
{
    static const char *const files[] = {
        "",
        "\n\n",
        "# only comments\n; and semicolons\n",
        "[server]\n[log]\n[tls]\n[limits]\n[auth]\n[queue]\n", /* empty sections are fine */
        "\xEF\xBB\xBF# BOM from a Windows editor\r\n[server]\r\n",
    };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        struct config *cfg = load_ok(files[i]);
        assert_string_equal(cfg->path, tmp_path);
        assert_defaults(cfg);
        config_free(cfg);
    }
}

/* ---- a full valid file ---- */

static void test_full_file(void **state)
{
    struct config *cfg = load_ok(
        "# every key set\n"
        "[server]\n"
        "hostname = mail.example.com\n"
        "user =\n"
        "database = /srv/smarthost/db.sqlite\n"
        "threads = 4\n"
        "\n"
        "[log]\n"
        "target = syslog\n"
        "level = debug ; inline comments are allowed after a blank\n"
        "[tls]\n"
        "cert_file = /etc/ssl/rsa.pem\n"
        "key_file = /etc/ssl/rsa.key\n"
        "cert2_file = /etc/ssl/ecdsa.pem\n"
        "key2_file = /etc/ssl/ecdsa.key\n"
        "[limits]\n"
        "   max_message_size = 10M\n" /* indented keys are keys, not continuations */
        "\tmax_recipients = 500\n"
        "max_line_length=1000\n"
        "max_errors = 3\r\n"
        "idle_timeout = 90\n"
        "session_timeout = 2h\n"
        "max_connections = 20000\n"
        "max_connections_per_ip = 5\n"
        "[auth]\n"
        "failure_delay = 250ms\n"
        "max_delay = 250ms\n"
        "ip_lockout_failures = 100\n"
        "account_lockout_failures = 7\n"
        "lockout_time = 1d\n"
        "failure_window = 30m\n"
        "[queue]\n"
        "busy_timeout = 100ms\n"
        "[listener lan]\n"
        "address = 192.168.1.10:2525, [fd00::1]:2525\n"
        "mode = plain\n"
        "allow_plaintext_auth = yes\n"
        "bare_lf = reject\n"
        "[listener tls_only-465]\n"
        "address = *:465\n"
        "mode = implicit\n"
        "tls_priority = SECURE256:-VERS-ALL:+VERS-TLS1.3\n"
        "[server]\n"
        "# a section may be opened again\n");
    assert_string_equal(cfg->hostname, "mail.example.com");
    assert_string_equal(cfg->user, "");
    assert_string_equal(cfg->database, "/srv/smarthost/db.sqlite");
    assert_int_equal(cfg->threads, 4);
    assert_int_equal(cfg->log_target, LOG_TARGET_SYSLOG);
    assert_int_equal(cfg->log_level, LOG_LEVEL_DEBUG);
    assert_string_equal(cfg->cert_file, "/etc/ssl/rsa.pem");
    assert_string_equal(cfg->key_file, "/etc/ssl/rsa.key");
    assert_string_equal(cfg->cert2_file, "/etc/ssl/ecdsa.pem");
    assert_string_equal(cfg->key2_file, "/etc/ssl/ecdsa.key");
    assert_int_equal(cfg->max_message_size, 10 * MIB);
    assert_int_equal(cfg->max_recipients, 500);
    assert_int_equal(cfg->max_line_length, 1000);
    assert_int_equal(cfg->max_errors, 3);
    assert_int_equal(cfg->idle_timeout_ms, 90000);
    assert_int_equal(cfg->session_timeout_ms, 7200000);
    assert_int_equal(cfg->max_connections, 20000);
    assert_int_equal(cfg->max_connections_per_ip, 5);
    assert_int_equal(cfg->auth_failure_delay_ms, 250);
    assert_int_equal(cfg->auth_max_delay_ms, 250);
    assert_int_equal(cfg->auth_ip_lockout_failures, 100);
    assert_int_equal(cfg->auth_account_lockout_failures, 7);
    assert_int_equal(cfg->auth_lockout_ms, 86400000);
    assert_int_equal(cfg->auth_failure_window_ms, 1800000);
    assert_int_equal(cfg->queue_busy_timeout_ms, 100);

    assert_int_equal(cfg->listener_count, 2);
    const struct listener_config *lan = &cfg->listeners[0], *tls = &cfg->listeners[1];
    assert_string_equal(lan->name, "lan");
    assert_int_equal(lan->address_count, 2);
    assert_string_equal(lan->addresses[0], "192.168.1.10:2525");
    assert_string_equal(lan->addresses[1], "[fd00::1]:2525");
    assert_int_equal(lan->mode, LISTENER_PLAIN);
    assert_true(lan->allow_plaintext_auth);
    assert_int_equal(lan->bare_lf, BARE_LF_REJECT);
    assert_string_equal(lan->tls_priority, "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2");
    assert_string_equal(tls->name, "tls_only-465");
    assert_int_equal(tls->address_count, 1);
    assert_string_equal(tls->addresses[0], "*:465");
    assert_int_equal(tls->mode, LISTENER_IMPLICIT);
    assert_false(tls->allow_plaintext_auth);
    assert_int_equal(tls->bare_lf, BARE_LF_NORMALIZE);
    assert_string_equal(tls->tls_priority, "SECURE256:-VERS-ALL:+VERS-TLS1.3");
    config_free(cfg);
}

static void test_bounds_accepted(void **state)
{
    /* both ends of every numeric range load */
    static const char *const files[] = {
        "[server]\nthreads = 64\n",
        "[limits]\nmax_message_size = 1k\nmax_recipients = 1\nmax_line_length = 512\n"
        "max_errors = 1\nidle_timeout = 1s\nsession_timeout = 10s\nmax_connections = 1\n"
        "max_connections_per_ip = 1\n",
        "[limits]\nmax_message_size = 2G\nmax_recipients = 10000\nmax_line_length = 65536\n"
        "max_errors = 1000\nidle_timeout = 1h\nsession_timeout = 1d\n"
        "max_connections = 1000000\nmax_connections_per_ip = 100000\n",
        "[auth]\nfailure_delay = 0\nmax_delay = 0\nip_lockout_failures = 1\n"
        "account_lockout_failures = 1\nlockout_time = 1s\nfailure_window = 1s\n",
        "[auth]\nfailure_delay = 60s\nmax_delay = 10m\nip_lockout_failures = 10000\n"
        "account_lockout_failures = 10000\nlockout_time = 7d\nfailure_window = 7d\n",
        "[queue]\nbusy_timeout = 10m\n",
        "[limits]\nsession_timeout = 10s\n", /* idle_timeout (5m) never fires first: fine */
        "[log]\nlevel = err\n[server]\nhostname = localhost\nuser = _smart.host-1\n",
        "[listener x]\naddress = 127.0.0.1:1,[::1]:65535\nallow_plaintext_auth = on\n",
    };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        config_free(load_ok(files[i]));
    struct config *cfg = load_ok("[limits]\nmax_message_size = 2G\n[auth]\nfailure_delay = 60s\n"
                                 "max_delay = 10m\n[log]\nlevel = warning\n");
    assert_int_equal(cfg->max_message_size, 2 * GIB);
    assert_int_equal(cfg->auth_failure_delay_ms, 60000);
    assert_int_equal(cfg->auth_max_delay_ms, 600000);
    assert_int_equal(cfg->log_level, LOG_LEVEL_WARN);
    config_free(cfg);
}

/* ---- listeners ---- */

static void test_default_listeners(void **state)
{
    /* settings but no listener section: the default pair */
    struct config *cfg = load_ok("[server]\nthreads = 2\n");
    assert_default_listeners(cfg);
    config_free(cfg);

    /* one listener section replaces the pair entirely */
    cfg = load_ok("[listener only]\naddress = 127.0.0.1:2525\n");
    assert_int_equal(cfg->listener_count, 1);
    assert_string_equal(cfg->listeners[0].name, "only");
    assert_int_equal(cfg->listeners[0].mode, LISTENER_STARTTLS);
    assert_int_equal(cfg->listeners[0].bare_lf, BARE_LF_NORMALIZE);
    assert_false(cfg->listeners[0].allow_plaintext_auth);
    config_free(cfg);
}

static void test_ipv6_and_address_lists(void **state)
{
    struct config *cfg = load_ok(
        "[listener v6]\n"
        "address = [::1]:2525,[2001:db8::1]:587 ,  127.0.0.1:25\t, *:26 ,[::ffff:192.0.2.1]:27,"
        "[fe80::1:2:3:4]:28,0.0.0.0:29,[::]:29\n");
    const struct listener_config *l = &cfg->listeners[0];
    static const char *const want[] = {
        "[::1]:2525",         "[2001:db8::1]:587", "127.0.0.1:25", "*:26", "[::ffff:192.0.2.1]:27",
        "[fe80::1:2:3:4]:28", "0.0.0.0:29",        "[::]:29"};
    assert_int_equal(l->address_count, CONFIG_MAX_ADDRESSES);
    for (size_t i = 0; i < CONFIG_MAX_ADDRESSES; i++)
        assert_string_equal(l->addresses[i], want[i]);
    config_free(cfg);

    /* a 63-character name, longer than libinih's own section buffer */
    cfg = load_ok("[listener abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_]\n"
                  "address = *:25\n");
    assert_string_equal(cfg->listeners[0].name,
                        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_");
    config_free(cfg);

    /* 16 listeners is the cap, not an error */
    char text[4096] = "";
    for (int i = 0; i < CONFIG_MAX_LISTENERS; i++) {
        size_t len = strlen(text);
        snprintf(text + len, sizeof(text) - len, "[listener l%d]\naddress = *:%d\n", i, 1000 + i);
    }
    cfg = load_ok(text);
    assert_int_equal(cfg->listener_count, CONFIG_MAX_LISTENERS);
    assert_string_equal(cfg->listeners[15].name, "l15");
    assert_string_equal(cfg->listeners[15].addresses[0], "*:1015");
    config_free(cfg);
}

/* ---- errors ---- */

struct error_case {
    const char *text;
    const char *want; /* what follows the path */
};

static void run_error_cases(const struct error_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++)
        load_fails(cases[i].text, cases[i].want);
}

static void test_errors_sections_and_keys(void **state)
{
    static const struct error_case cases[] = {
        {"[server]\nthreads = 1\n[bogus]\nx = 1\n",
         ":3: [bogus]: unknown section (expected server, log, tls, limits, auth, queue or "
         "listener NAME)"},
        {"[bogus]\n", /* even without keys */
         ":1: [bogus]: unknown section (expected server, log, tls, limits, auth, queue or "
         "listener NAME)"},
        {"[Server]\n",
         ":1: [Server]: unknown section (expected server, log, tls, limits, auth, queue or "
         "listener NAME)"},
        {"[listeners a]\n",
         ":1: [listeners a]: unknown section (expected server, log, tls, limits, auth, queue or "
         "listener NAME)"},
        {"[server]\n\n# comment\nbogus = 1\n", ":4: [server] bogus: unknown key"},
        {"[server]\nThreads = 1\n", ":2: [server] Threads: unknown key"},
        {"[listener a]\naddress = *:25\nport = 25\n", ":3: [listener a] port: unknown key"},
        {"[limits]\nmode = plain\n", ":2: [limits] mode: unknown key"},
        {"threads = 1\n", ":1: threads: key outside of any section (start with e.g. [server])"},
        {"\n\nx\x01y = 1\n", ":3: x\\x01y: key outside of any section (start with e.g. [server])"},
        {"[server]\nthreads = 1\nuser = a\n\nthreads = 2\n",
         ":5: [server] threads: duplicate key (already set on line 2)"},
        {"[server]\nthreads = 1\n[log]\nlevel = info\n[server]\nthreads = 2\n",
         ":6: [server] threads: duplicate key (already set on line 2)"},
        {"[listener a]\naddress = *:25\nmode = implicit\nmode = implicit\n",
         ":4: [listener a] mode: duplicate key (already set on line 3)"},
        {"[server]\nthreads\n", ":2: syntax error: expected [section] or key = value"},
        {"[server\nthreads = 1\n", ":1: syntax error: expected [section] or key = value"},
        /* the earliest problem wins, whoever found it */
        {"[server]\noops\nbogus = 1\n", ":2: syntax error: expected [section] or key = value"},
        {"[server]\nbogus = 1\noops\n", ":2: [server] bogus: unknown key"},
    };
    run_error_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_errors_values(void **state)
{
    static const struct error_case cases[] = {
        {"[server]\nthreads = 65\n",
         ":2: [server] threads: expected a number from 0 to 64, got \"65\""},
        {"[server]\nthreads = -1\n",
         ":2: [server] threads: expected a number from 0 to 64, got \"-1\""},
        {"[server]\nthreads = 4 # not a comment\n",
         ":2: [server] threads: expected a number from 0 to 64, got \"4 # not a comment\""},
        {"[limits]\nmax_recipients = 0\n",
         ":2: [limits] max_recipients: expected a number from 1 to 10000, got \"0\""},
        {"[limits]\nmax_line_length = 511\n",
         ":2: [limits] max_line_length: expected a number from 512 to 65536, got \"511\""},
        {"[limits]\nmax_connections = 1000001\n",
         ":2: [limits] max_connections: expected a number from 1 to 1000000, got \"1000001\""},
        {"[limits]\nmax_message_size = 1023\n",
         ":2: [limits] max_message_size: expected a size from 1k to 2G (bytes, or with k, M, G: "
         "10k, 35M), got \"1023\""},
        {"[limits]\nmax_message_size = 3G\n",
         ":2: [limits] max_message_size: expected a size from 1k to 2G (bytes, or with k, M, G: "
         "10k, 35M), got \"3G\""},
        {"[limits]\nmax_message_size = 99999999999999999999\n",
         ":2: [limits] max_message_size: expected a size from 1k to 2G (bytes, or with k, M, G: "
         "10k, 35M), got \"99999999999999999999\""},
        {"[limits]\nidle_timeout = 2h\n",
         ":2: [limits] idle_timeout: expected a duration from 1s to 1h (250ms, 30s, 5m, 2h, 1d; "
         "bare = seconds), got \"2h\""},
        {"[limits]\nidle_timeout = 999ms\n",
         ":2: [limits] idle_timeout: expected a duration from 1s to 1h (250ms, 30s, 5m, 2h, 1d; "
         "bare = seconds), got \"999ms\""},
        {"[queue]\nbusy_timeout = 5 seconds\n",
         ":2: [queue] busy_timeout: expected a duration from 100ms to 10m (250ms, 30s, 5m, 2h, "
         "1d; bare = seconds), got \"5 seconds\""},
        {"[auth]\nfailure_delay = 61s\n",
         ":2: [auth] failure_delay: expected a duration from 0 to 1m (250ms, 30s, 5m, 2h, 1d; "
         "bare = seconds), got \"61s\""},
        {"[log]\nlevel = verbose\n",
         ":2: [log] level: expected one of err|warning|info|debug, got \"verbose\""},
        {"[log]\ntarget = Syslog\n",
         ":2: [log] target: expected one of stderr|syslog, got \"Syslog\""},
        {"[log]\ntarget =\n", ":2: [log] target: expected one of stderr|syslog, got \"\""},
        {"[listener a]\naddress = *:25\nmode = smtps\n",
         ":3: [listener a] mode: expected one of starttls|implicit|plain, got \"smtps\""},
        {"[listener a]\naddress = *:25\nbare_lf = strip\n",
         ":3: [listener a] bare_lf: expected one of normalize|reject, got \"strip\""},
        {"[listener a]\naddress = *:25\nallow_plaintext_auth = maybe\n",
         ":3: [listener a] allow_plaintext_auth: expected yes or no, got \"maybe\""},
        {"[server]\ndatabase =\n", ":2: [server] database: must not be empty"},
        {"[tls]\ncert_file =\n", ":2: [tls] cert_file: must not be empty"},
        {"[server]\nuser = abcdefghijklmnopqrstuvwxyz0123456\n",
         ":2: [server] user: too long (33 bytes, at most 32)"},
        {"[server]\nuser = -root\n",
         ":2: [server] user: expected a user name: letters, digits, '.', '_' and '-' (not first)"},
        {"[server]\nuser = a:b\n",
         ":2: [server] user: expected a user name: letters, digits, '.', '_' and '-' (not first)"},
        {"[server]\nhostname = mail..example\n",
         ":2: [server] hostname: expected a host name: dot-separated labels of letters, digits "
         "and '-', each 1 to 63 characters"},
        {"[server]\nhostname = -mail.example\n",
         ":2: [server] hostname: expected a host name: dot-separated labels of letters, digits "
         "and '-', each 1 to 63 characters"},
        {"[server]\nhostname = mail-.example\n",
         ":2: [server] hostname: expected a host name: dot-separated labels of letters, digits "
         "and '-', each 1 to 63 characters"},
        {"[server]\nhostname = mail.example.\n",
         ":2: [server] hostname: expected a host name: dot-separated labels of letters, digits "
         "and '-', each 1 to 63 characters"},
        {"[server]\nhostname = mail example\n",
         ":2: [server] hostname: expected a host name: dot-separated labels of letters, digits "
         "and '-', each 1 to 63 characters"},
        {"[server]\nhostname = a234567890123456789012345678901234567890123456789012345678901234"
         ".example\n",
         ":2: [server] hostname: expected a host name: dot-separated labels of letters, digits "
         "and '-', each 1 to 63 characters"},
        {"[listener a]\naddress = *:25\ntls_priority = NORMAL: -VERS-SSL3.0\n",
         ":3: [listener a] tls_priority: expected a GnuTLS priority string (no spaces or quotes), "
         "e.g. NORMAL:-VERS-ALL:+VERS-TLS1.3"},
        {"[listener a]\naddress = *:25\ntls_priority = \"NORMAL\"\n",
         ":3: [listener a] tls_priority: expected a GnuTLS priority string (no spaces or quotes), "
         "e.g. NORMAL:-VERS-ALL:+VERS-TLS1.3"},
        {"[listener a]\naddress = *:25\ntls_priority =\n",
         ":3: [listener a] tls_priority: must not be empty"},
    };
    run_error_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

#define BAD_ADDRESS(a)                                                                        \
    ":2: [listener a] address: bad address \"" a "\": expected IPv4:PORT, [IPv6]:PORT or "    \
    "*:PORT with an IP literal and a port from 1 to 65535"

static void test_errors_listeners(void **state)
{
    static const struct error_case cases[] = {
        {"[listener a]\naddress = 1.2.3.4\n", BAD_ADDRESS("1.2.3.4")},
        {"[listener a]\naddress = ::1:25\n", BAD_ADDRESS("::1:25")},
        {"[listener a]\naddress = [::1]25\n", BAD_ADDRESS("[::1]25")},
        {"[listener a]\naddress = [::1]\n", BAD_ADDRESS("[::1]")},
        {"[listener a]\naddress = []:25\n", BAD_ADDRESS("[]:25")},
        {"[listener a]\naddress = [::1:25\n", BAD_ADDRESS("[::1:25")},
        {"[listener a]\naddress = [::g]:25\n", BAD_ADDRESS("[::g]:25")},
        {"[listener a]\naddress = [fe80::1%eth0]:25\n", BAD_ADDRESS("[fe80::1%eth0]:25")},
        {"[listener a]\naddress = [1.2.3.4]:25\n", BAD_ADDRESS("[1.2.3.4]:25")},
        {"[listener a]\naddress = 1.2.3.4:0\n", BAD_ADDRESS("1.2.3.4:0")},
        {"[listener a]\naddress = 1.2.3.4:65536\n", BAD_ADDRESS("1.2.3.4:65536")},
        {"[listener a]\naddress = 1.2.3.4:000025\n", BAD_ADDRESS("1.2.3.4:000025")},
        {"[listener a]\naddress = 1.2.3.4:25x\n", BAD_ADDRESS("1.2.3.4:25x")},
        {"[listener a]\naddress = 1.2.3.4:-25\n", BAD_ADDRESS("1.2.3.4:-25")},
        {"[listener a]\naddress = 1.2.3:25\n", BAD_ADDRESS("1.2.3:25")},
        {"[listener a]\naddress = 256.1.1.1:25\n", BAD_ADDRESS("256.1.1.1:25")},
        {"[listener a]\naddress = mail.example:25\n", BAD_ADDRESS("mail.example:25")},
        {"[listener a]\naddress = localhost:25\n", BAD_ADDRESS("localhost:25")},
        {"[listener a]\naddress = :25\n", BAD_ADDRESS(":25")},
        {"[listener a]\naddress = *:\n", BAD_ADDRESS("*:")},
        {"[listener a]\naddress = **:25\n", BAD_ADDRESS("**:25")},
        {"[listener a]\naddress = 1.2.3.4 :25\n", BAD_ADDRESS("1.2.3.4 :25")},
        {"[listener a]\naddress = *:25,[::1]:x\n", BAD_ADDRESS("[::1]:x")},
        {"[listener a]\naddress = *:25,,*:26\n",
         ":2: [listener a] address: empty entry in the comma-separated list"},
        {"[listener a]\naddress = *:25,\n",
         ":2: [listener a] address: empty entry in the comma-separated list"},
        {"[listener a]\naddress =\n",
         ":2: [listener a] address: expected 1 to 8 comma-separated entries, got none"},
        {"[listener a]\naddress = *:1,*:2,*:3,*:4,*:5,*:6,*:7,*:8,*:9\n",
         ":2: [listener a] address: too many entries (at most 8)"},
        {"[listener a]\nmode = implicit\n",
         ":1: [listener a] address: missing (a listener needs at least one)"},
        {"[server]\nthreads = 1\n[listener a]\n", /* a listener without any key */
         ":3: [listener a] address: missing (a listener needs at least one)"},
        {"[listener a]\naddress = *:25\n[listener b]\n# nothing\n[log]\nlevel = info\n",
         ":3: [listener b] address: missing (a listener needs at least one)"},
        {"[listener]\naddress = *:25\n",
         ":1: [listener]: expected [listener NAME], NAME being 1 to 63 letters, digits, '_' "
         "or '-'"},
        {"[listener a.b]\naddress = *:25\n",
         ":1: [listener a.b]: expected [listener NAME], NAME being 1 to 63 letters, digits, '_' "
         "or '-'"},
        {"[listener a b]\naddress = *:25\n",
         ":1: [listener a b]: expected [listener NAME], NAME being 1 to 63 letters, digits, '_' "
         "or '-'"},
        {"[listener abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-x]\n",
         ":1: [listener abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-x]: "
         "expected [listener NAME], NAME being 1 to 63 letters, digits, '_' or '-'"},
        {"[listener a]\naddress = *:25\n\n[listener b]\naddress = *:26\n[listener a]\n"
         "address = *:27\n",
         ":6: [listener a]: duplicate listener name (first defined on line 1)"},
        {"[listener a]\naddress = *:25\nmode = plain\n",
         ":3: [listener a] mode: plain needs allow_plaintext_auth = yes (without TLS, AUTH is "
         "refused otherwise)"},
        {"[listener a]\naddress = *:25\nallow_plaintext_auth = no\nmode = plain\n",
         ":4: [listener a] mode: plain needs allow_plaintext_auth = yes (without TLS, AUTH is "
         "refused otherwise)"},
        {"[listener a]\naddress = 0.0.0.0:587\n[listener b]\naddress = [::1]:587, *:587\n",
         ":4: [listener b] address: *:587 overlaps 0.0.0.0:587 of listener a"},
        {"[listener a]\naddress = [::]:25,[0:0::0]:25\n",
         ":2: [listener a] address: [0:0::0]:25 overlaps [::]:25 of listener a"},
        {"[listener a]\naddress = 127.0.0.1:25\n[listener b]\naddress = 127.0.0.1:25\n",
         ":4: [listener b] address: 127.0.0.1:25 overlaps 127.0.0.1:25 of listener a"},
    };
    run_error_cases(cases, sizeof(cases) / sizeof(cases[0]));

    /* the 17th listener */
    char text[4096] = "";
    for (int i = 0; i <= CONFIG_MAX_LISTENERS; i++) {
        size_t len = strlen(text);
        snprintf(text + len, sizeof(text) - len, "[listener l%d]\naddress = *:%d\n", i, 1000 + i);
    }
    load_fails(text, ":33: [listener l16]: too many listeners (at most 16)");
}

static void test_errors_relations(void **state)
{
    static const struct error_case cases[] = {
        {"[auth]\nfailure_delay = 20s\n",
         ":2: [auth] failure_delay: must not exceed max_delay (15s)"},
        {"[auth]\nmax_delay = 500ms\n",
         ":2: [auth] max_delay: must be at least failure_delay (1s)"},
        {"[auth]\nfailure_delay = 10s\n\nmax_delay = 5s\n",
         ":4: [auth] max_delay: must be at least failure_delay (10s)"},
        {"[tls]\ncert2_file = /etc/ssl/ecdsa.pem\n",
         ":2: [tls] cert2_file: set together with key2_file, or neither"},
        {"[tls]\n\nkey2_file = /etc/ssl/ecdsa.key\n",
         ":3: [tls] key2_file: set together with cert2_file, or neither"},
    };
    run_error_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_errors_file(void **state)
{
    /* a missing file and a directory */
    struct config *cfg = (struct config *)(uintptr_t)1;
    char err[512];
    char missing[sizeof(tmp_dir) + 16];
    snprintf(missing, sizeof(missing), "%s/nope.conf", tmp_dir);
    assert_int_equal(config_load(missing, &cfg, err, sizeof(err)), -1);
    assert_null(cfg);
    char want[600];
    snprintf(want, sizeof(want), "%s: cannot open: No such file or directory", missing);
    assert_string_equal(err, want);
    assert_int_equal(config_load(tmp_dir, &cfg, err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "%s: cannot open: Is a directory", tmp_dir);
    assert_string_equal(err, want);

    /* an error message cut to a tiny buffer, or no buffer at all */
    char small[8];
    assert_int_equal(config_load(missing, &cfg, small, sizeof(small)), -1);
    assert_int_equal(strlen(small), sizeof(small) - 1);
    assert_int_equal(config_load(missing, &cfg, NULL, 0), -1);

    /* a NUL byte is refused rather than silently ending the line */
    static const char nul[] = "[server]\nthreads = 1\0 = 2\n";
    load_fails_len(nul, sizeof(nul) - 1, ":2: NUL byte in line (is this a text file?)");
}

/* The line cap comes from libinih's buffer; learn it from the message and
 * check both sides of it. */
static void test_line_length_limit(void **state)
{
    char text[1300];
    memset(text, 0, sizeof(text));
    strcpy(text, "[server]\n# ");
    memset(text + strlen(text), 'x', 1000);
    strcat(text, "\nthreads = 1\n");
    struct config *cfg = NULL;
    char err[512];
    assert_int_equal(config_load(write_file(text), &cfg, err, sizeof(err)), -1);
    char want_prefix[600];
    snprintf(want_prefix, sizeof(want_prefix), "%s:2: line too long (at most ", tmp_path);
    assert_memory_equal(err, want_prefix, strlen(want_prefix));
    unsigned max = (unsigned)strtoul(err + strlen(want_prefix), NULL, 10);
    assert_true(max >= 100 && max < 1000);

    /* exactly max bytes (a comment) is fine, one more is not */
    snprintf(text, sizeof(text), "[server]\n#");
    memset(text + strlen(text), 'x', max - 1);
    strcpy(text + 10 + max - 1, "\nthreads = 3\n");
    cfg = load_ok(text);
    assert_int_equal(cfg->threads, 3);
    config_free(cfg);
    snprintf(text, sizeof(text), "[server]\n#");
    memset(text + strlen(text), 'x', max);
    strcpy(text + 10 + max, "\nthreads = 3\n");
    char want[600];
    snprintf(want, sizeof(want), ":2: line too long (at most %u bytes)", max);
    load_fails(text, want);

    /* a last line without newline is still read */
    cfg = load_ok("[server]\nthreads = 7");
    assert_int_equal(cfg->threads, 7);
    config_free(cfg);

    /* over-long section headers */
    snprintf(text, sizeof(text), "[listener ");
    memset(text + strlen(text), 'n', 120);
    strcpy(text + 10 + 120, "]\n");
    load_fails(text, ":1: section header too long (at most 127 characters between [ ])");
}

/* ---- the packaged default file ---- */

/* packaging/smarthost.conf, found from this file's own path so the test needs
 * no build-system help (tests/unit/core/test_config.c -> ../../../packaging). */
static void packaging_path(char *out, size_t size)
{
    const char *file = __FILE__;
    const char *slash = strrchr(file, '/');
    int dir_len = slash != NULL ? (int)(slash - file) : 1;
    snprintf(out, size, "%.*s/../../../packaging/smarthost.conf", dir_len,
             slash != NULL ? file : ".");
}

static char *read_all(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "r");
    if (fp == NULL)
        fail_msg("cannot open %s", path);
    char *buf = NULL;
    size_t cap = 0;
    *len = 0;
    for (;;) {
        if (*len == cap) {
            cap = cap ? cap * 2 : 4096;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        size_t n = fread(buf + *len, 1, cap - *len, fp);
        if (n == 0)
            break;
        *len += n;
    }
    fclose(fp);
    return buf;
}

static void test_packaging_file_matches(void **state)
{
    char path[4096];
    packaging_path(path, sizeof(path));
    size_t file_len;
    char *file = read_all(path, &file_len);

    char *gen = NULL;
    size_t gen_len = 0;
    FILE *mem = open_memstream(&gen, &gen_len);
    assert_non_null(mem);
    config_write_defaults(mem);
    assert_int_equal(fclose(mem), 0);

    if (file_len != gen_len || memcmp(file, gen, gen_len) != 0)
        fail_msg("%s differs from config_write_defaults(); regenerate it from the key table",
                 path);
    /* every key of the table appears, commented, with its default */
    size_t count;
    const struct config_key *keys = config_keys(&count);
    for (size_t i = 0; i < count; i++) {
        char needle[256];
        snprintf(needle, sizeof(needle), "\n#%s =", keys[i].name);
        assert_non_null(strstr(gen, needle));
    }
    free(gen);
    free(file);

    /* and the packaged file loads as exactly the defaults */
    struct config *cfg = NULL;
    char err[512];
    if (config_load(path, &cfg, err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_defaults(cfg);
    config_free(cfg);
}

/* Uncommenting every line of the default file yields a valid file equal to
 * the defaults: the documented values are the real ones. */
static void test_uncommented_defaults_load(void **state)
{
    char *gen = NULL;
    size_t gen_len = 0;
    FILE *mem = open_memstream(&gen, &gen_len);
    assert_non_null(mem);
    config_write_defaults(mem);
    assert_int_equal(fclose(mem), 0);

    char *out = malloc(gen_len + 1);
    assert_non_null(out);
    size_t o = 0;
    for (char *line = gen; *line != '\0';) {
        char *eol = strchr(line, '\n');
        size_t len = eol != NULL ? (size_t)(eol - line + 1) : strlen(line);
        /* "#key = value" and "#[listener …]" lines, not "# prose" */
        if (line[0] == '#' && len > 1 && line[1] != ' ' && line[1] != '\n') {
            memcpy(out + o, line + 1, len - 1);
            o += len - 1;
        }
        else if (line[0] == '[') {
            memcpy(out + o, line, len);
            o += len;
        }
        line += len;
    }
    out[o] = '\0';
    struct config *cfg = load_ok(out);
    assert_defaults(cfg);
    config_free(cfg);
    free(out);
    free(gen);
}

/* [relay] map values: "key=value, …", rates, host:port. */
static void test_relay_values(void **state)
{
    (void)state;
    const char *p = " Example.COM = verify,old.test=none ,";
    char k[64], v[32];
    assert_int_equal(config_map_next(&p, k, sizeof(k), v, sizeof(v)), 1);
    assert_string_equal(k, "example.com");
    assert_string_equal(v, "verify");
    assert_int_equal(config_map_next(&p, k, sizeof(k), v, sizeof(v)), 1);
    assert_string_equal(k, "old.test");
    assert_string_equal(v, "none");
    assert_int_equal(config_map_next(&p, k, sizeof(k), v, sizeof(v)), 0);
    p = "novalue";
    assert_int_equal(config_map_next(&p, k, sizeof(k), v, sizeof(v)), -1);
    p = "a=";
    assert_int_equal(config_map_next(&p, k, sizeof(k), v, sizeof(v)), -1);

    struct config_rate r;
    assert_int_equal(config_parse_rate("30/m", &r), 0);
    assert_int_equal(r.count, 30);
    assert_int_equal(r.period_ms, 60000);
    assert_false(r.is_recipients);
    assert_int_equal(config_parse_rate("100rcpt/h", &r), 0);
    assert_true(r.is_recipients);
    assert_int_equal(r.period_ms, 3600000);
    assert_int_equal(config_parse_rate("0/m", &r), -1);
    assert_int_equal(config_parse_rate("5/x", &r), -1);
    assert_int_equal(config_parse_rate("/m", &r), -1);
    assert_int_equal(config_parse_rate("5 /m", &r), -1);

    char host[64];
    unsigned port = 0;
    assert_int_equal(config_split_hostport("smtp.example.net:587", host, sizeof(host), &port), 0);
    assert_string_equal(host, "smtp.example.net");
    assert_int_equal(port, 587);
    assert_int_equal(config_split_hostport("[::1]:465", host, sizeof(host), &port), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(config_split_hostport("::1:465", host, sizeof(host), &port), -1);
    assert_int_equal(config_split_hostport("host", host, sizeof(host), &port), -1);
    assert_int_equal(config_split_hostport("host:0", host, sizeof(host), &port), -1);

    /* and through the file: a bad entry names the key */
    char err[512];
    struct config *cfg = NULL;
    const char *path = write_file("[relay]\ntls_policy = example.com=sometimes\n");
    assert_int_equal(config_load(path, &cfg, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "tls_policy"));
    assert_non_null(strstr(err, "sometimes"));
    write_file("[relay]\nrelayhost = smtp.example.net\n");
    assert_int_equal(config_load(path, &cfg, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "HOST:PORT"));
    write_file("[relay]\nrate_limit = outlook.com=30/m, outlook.com=600rcpt/h\n"
               "dns_servers = 127.0.0.1:5353, [::1]:53\nrelayhost = [192.0.2.1]:465\n");
    assert_int_equal(config_load(path, &cfg, err, sizeof(err)), 0);
    assert_string_equal(cfg->relay_relayhost, "[192.0.2.1]:465");
    config_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_parse_bool),
        cmocka_unit_test(test_key_table),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_empty_and_comment_only_files),
        cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_bounds_accepted),
        cmocka_unit_test(test_default_listeners),
        cmocka_unit_test(test_ipv6_and_address_lists),
        cmocka_unit_test(test_errors_sections_and_keys),
        cmocka_unit_test(test_errors_values),
        cmocka_unit_test(test_errors_listeners),
        cmocka_unit_test(test_errors_relations),
        cmocka_unit_test(test_errors_file),
        cmocka_unit_test(test_line_length_limit),
        cmocka_unit_test(test_packaging_file_matches),
        cmocka_unit_test(test_uncommented_defaults_load),
        cmocka_unit_test(test_relay_values),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

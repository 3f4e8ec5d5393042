/* Unit tests for core/log.c: the exact stderr line format, level filtering,
 * truncation of over-long lines, newline neutralising, journald detection,
 * log_escape (table-driven), whole lines under concurrent writers, and
 * fatal() exiting with status 1. stderr is redirected to a temporary file
 * opened with O_APPEND for each test and restored afterwards. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/log.h"

static char capture_path[] = "/tmp/test_log.XXXXXX";
static int saved_stderr = -1;

/* fd 2 -> a fresh capture file, and the logger reset to stderr/INFO. */
static int capture_setup(void **state)
{
    int fd = mkstemp(capture_path);
    if (fd < 0)
        return -1;
    close(fd);
    fd = open(capture_path, O_WRONLY | O_APPEND | O_TRUNC);
    if (fd < 0)
        return -1;
    fflush(stderr);
    saved_stderr = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
    unsetenv("JOURNAL_STREAM");
    log_setup(LOG_TARGET_STDERR, LOG_LEVEL_INFO, "smarthostd");
    return 0;
}

static int capture_teardown(void **state)
{
    /* whatever is left (cmocka's own failure report included) goes to the
     * real stderr, so a failing test still explains itself */
    char buf[4096];
    int fd = open(capture_path, O_RDONLY);
    ssize_t n;
    while (fd >= 0 && (n = read(fd, buf, sizeof(buf))) > 0)
        if (write(saved_stderr, buf, (size_t)n) != n)
            break;
    if (fd >= 0)
        close(fd);
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    unlink(capture_path);
    memcpy(capture_path + strlen(capture_path) - 6, "XXXXXX", 6);
    unsetenv("JOURNAL_STREAM");
    return 0;
}

/* Everything logged so far (caller frees), and the file emptied. */
static char *capture_take(size_t *len_out)
{
    FILE *fp = fopen(capture_path, "r");
    assert_non_null(fp);
    struct stat st;
    assert_int_equal(fstat(fileno(fp), &st), 0);
    char *buf = malloc((size_t)st.st_size + 1);
    assert_non_null(buf);
    size_t len = fread(buf, 1, (size_t)st.st_size, fp);
    assert_int_equal(len, (size_t)st.st_size);
    buf[len] = '\0';
    fclose(fp);
    assert_int_equal(ftruncate(STDERR_FILENO, 0), 0);
    if (len_out != NULL)
        *len_out = len;
    return buf;
}

static void assert_captured(const char *want)
{
    char *got = capture_take(NULL);
    assert_string_equal(got, want);
    free(got);
}

static void test_format(void **state)
{
    char want[256];
    long pid = (long)getpid();

    log_info("s1a2b3", "event=connect ip=%s port=%d", "192.0.2.7", 587);
    snprintf(want, sizeof(want), "smarthostd[%ld]: s1a2b3: event=connect ip=192.0.2.7 port=587\n",
             pid);
    assert_captured(want);

    log_err(NULL, "daemon-wide %s", "event");
    snprintf(want, sizeof(want), "smarthostd[%ld]: daemon-wide event\n", pid);
    assert_captured(want);

    log_msg(LOG_LEVEL_WARN, "4XyZ12", "%s", "");
    snprintf(want, sizeof(want), "smarthostd[%ld]: 4XyZ12: \n", pid);
    assert_captured(want);

    /* an embedded newline cannot forge a second line */
    log_info("s1", "user=%s", "bob\nsmarthostd[1]: forged\r");
    snprintf(want, sizeof(want), "smarthostd[%ld]: s1: user=bob smarthostd[1]: forged \n", pid);
    assert_captured(want);

    /* the ident given to log_setup is used */
    log_setup(LOG_TARGET_STDERR, LOG_LEVEL_INFO, "smarthostctl");
    log_info(NULL, "x=1");
    snprintf(want, sizeof(want), "smarthostctl[%ld]: x=1\n", pid);
    assert_captured(want);
}

static void test_levels(void **state)
{
    static const enum log_level levels[] = {LOG_LEVEL_ERR, LOG_LEVEL_WARN, LOG_LEVEL_INFO,
                                            LOG_LEVEL_DEBUG};
    for (size_t set = 0; set < 4; set++) {
        log_setup(LOG_TARGET_STDERR, levels[set], "smarthostd");
        assert_int_equal(log_get_level(), levels[set]);
        for (size_t msg = 0; msg < 4; msg++) {
            log_msg(levels[msg], NULL, "level=%d", (int)levels[msg]);
            char *got = capture_take(NULL);
            bool want_line = levels[msg] <= levels[set];
            if (want_line != (got[0] != '\0'))
                fail_msg("threshold %d, message %d: got \"%s\"", levels[set], levels[msg], got);
            free(got);
        }
    }
    /* log_debug does not even evaluate its arguments below DEBUG */
    log_setup(LOG_TARGET_STDERR, LOG_LEVEL_INFO, "smarthostd");
    int evaluated = 0;
    log_debug(NULL, "n=%d", ++evaluated);
    assert_int_equal(evaluated, 0);
    log_setup(LOG_TARGET_STDERR, LOG_LEVEL_DEBUG, "smarthostd");
    log_debug(NULL, "n=%d", ++evaluated);
    assert_int_equal(evaluated, 1);
    char *got = capture_take(NULL);
    assert_non_null(strstr(got, ": n=1\n"));
    free(got);
}

static void test_truncation(void **state)
{
    static char big[10000];
    memset(big, 'a', sizeof(big) - 1);
    log_info("s1", "body=%s", big);
    size_t len;
    char *got = capture_take(&len);
    /* one line of exactly 4096 bytes (PIPE_BUF), marked as cut */
    assert_int_equal(len, 4096);
    assert_int_equal(strchr(got, '\n') - got, 4095);
    const char *marker = "...[truncated]\n";
    assert_string_equal(got + len - strlen(marker), marker);
    char head[64];
    snprintf(head, sizeof(head), "smarthostd[%ld]: s1: body=aaa", (long)getpid());
    assert_memory_equal(got, head, strlen(head));
    free(got);

    /* a line that just fits is not marked */
    size_t header = strlen(head) - 3; /* up to "body=" */
    memset(big, 'b', sizeof(big));
    big[4095 - header] = '\0';
    log_info("s1", "body=%s", big);
    got = capture_take(&len);
    assert_int_equal(len, 4096);
    assert_null(strstr(got, "[truncated]"));
    free(got);
    big[4095 - header] = 'b';
    big[4096 - header] = '\0';
    log_info("s1", "body=%s", big);
    got = capture_take(&len);
    assert_int_equal(len, 4096);
    assert_non_null(strstr(got, "...[truncated]\n"));
    free(got);
}

static void test_errno_preserved(void **state)
{
    errno = ENOSPC;
    log_info(NULL, "x");
    assert_int_equal(errno, ENOSPC);
    free(capture_take(NULL));
}

static void test_journal_stream(void **state)
{
    struct stat st;
    assert_int_equal(fstat(STDERR_FILENO, &st), 0);
    char env[64];

    /* stderr is the stream systemd connected: "<N>" and no ident */
    snprintf(env, sizeof(env), "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    setenv("JOURNAL_STREAM", env, 1);
    log_setup(LOG_TARGET_STDERR, LOG_LEVEL_DEBUG, "smarthostd");
    log_warn("QID1", "status=deferred");
    log_debug(NULL, "trace");
    assert_captured("<4>QID1: status=deferred\n<7>trace\n");

    /* inherited from a parent but stderr is elsewhere: plain lines */
    static const char *const other[] = {"1:2", "garbage", "", "5:", "1:2:3"};
    for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++) {
        setenv("JOURNAL_STREAM", other[i], 1);
        log_setup(LOG_TARGET_STDERR, LOG_LEVEL_INFO, "smarthostd");
        log_info(NULL, "plain");
        char want[64];
        snprintf(want, sizeof(want), "smarthostd[%ld]: plain\n", (long)getpid());
        assert_captured(want);
    }
}

static void test_syslog_target(void **state)
{
    /* syslog lines never reach stderr; switching back restores stderr */
    log_setup(LOG_TARGET_SYSLOG, LOG_LEVEL_DEBUG, "smarthost-unit-test");
    log_debug("s1", "to syslog only");
    assert_captured("");
    log_setup(LOG_TARGET_STDERR, LOG_LEVEL_INFO, "smarthostd");
    log_info(NULL, "back");
    char want[64];
    snprintf(want, sizeof(want), "smarthostd[%ld]: back\n", (long)getpid());
    assert_captured(want);
}

struct escape_case {
    const char *in;
    size_t in_len;
    size_t out_size;
    const char *want;
};

static void test_escape(void **state)
{
    static const struct escape_case cases[] = {
        {"plain text", 10, 64, "plain text"},
        {"", 0, 64, ""},
        {"a\"b\\c", 5, 64, "a\\x22b\\x5cc"},
        {"\r\n\t", 3, 64, "\\x0d\\x0a\\x09"},
        {"\x7f\x80\xff", 3, 64, "\\x7f\\x80\\xff"},
        {"a\0b", 3, 64, "a\\x00b"},           /* length, not NUL, ends the input */
        {"~ !", 3, 64, "~ !"},
        {"abcdef", 3, 64, "abc"},
        {"abcdef", 6, 5, "abcd"},             /* cut to fit, NUL-terminated */
        {"ab\ncd", 5, 6, "ab"},               /* an escape is never split */
        {"ab\ncd", 5, 7, "ab\\x0a"},
        {"\n", 1, 4, ""},
        {"\n", 1, 5, "\\x0a"},
        {"abc", 3, 1, ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[64];
        memset(out, '#', sizeof(out));
        char *r = log_escape(cases[i].in, cases[i].in_len, out, cases[i].out_size);
        assert_ptr_equal(r, out);
        if (strcmp(out, cases[i].want) != 0)
            fail_msg("case %zu: got \"%s\", want \"%s\"", i, out, cases[i].want);
        assert_true(strlen(out) < cases[i].out_size);
    }
    char untouched = '#';
    assert_ptr_equal(log_escape("abc", 3, &untouched, 0), &untouched);
    assert_int_equal(untouched, '#');
    assert_string_equal(log_escape(NULL, 0, (char[4]){0}, 4), "");
}

#define THREADS 8
#define LINES_PER_THREAD 400

static void *writer_main(void *arg)
{
    int id = (int)(intptr_t)arg;
    char payload[301];
    memset(payload, 'a' + id, sizeof(payload) - 1);
    payload[sizeof(payload) - 1] = '\0';
    for (int i = 0; i < LINES_PER_THREAD; i++)
        log_info("s1", "thread=%d seq=%d data=%s", id, i, payload);
    return NULL;
}

static void test_concurrent_lines_stay_whole(void **state)
{
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, writer_main, (void *)(intptr_t)i), 0);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);

    size_t len;
    char *got = capture_take(&len);
    int next_seq[THREADS] = {0};
    char prefix[64];
    int prefix_len = snprintf(prefix, sizeof(prefix), "smarthostd[%ld]: s1: ", (long)getpid());
    size_t lines = 0;
    for (char *line = got; *line != '\0'; lines++) {
        char *eol = strchr(line, '\n');
        assert_non_null(eol);
        *eol = '\0';
        assert_memory_equal(line, prefix, (size_t)prefix_len);
        int id, seq, n = 0;
        assert_int_equal(sscanf(line + prefix_len, "thread=%d seq=%d data=%n", &id, &seq, &n), 2);
        assert_true(id >= 0 && id < THREADS);
        assert_int_equal(seq, next_seq[id]); /* each thread's lines in its order */
        next_seq[id]++;
        const char *data = line + prefix_len + n;
        assert_int_equal(strlen(data), 300);
        for (size_t k = 0; k < 300; k++)
            assert_int_equal(data[k], 'a' + id);
        line = eol + 1;
    }
    assert_int_equal(lines, THREADS * LINES_PER_THREAD);
    free(got);
}

static void test_fatal_exits_1(void **state)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        log_setup(LOG_TARGET_STDERR, LOG_LEVEL_ERR, "smarthostd");
        fatal("cannot bind address=%s", "0.0.0.0:587");
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1);
    char want[128];
    snprintf(want, sizeof(want), "smarthostd[%ld]: cannot bind address=0.0.0.0:587\n", (long)pid);
    assert_captured(want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_format, capture_setup, capture_teardown),
        cmocka_unit_test_setup_teardown(test_levels, capture_setup, capture_teardown),
        cmocka_unit_test_setup_teardown(test_truncation, capture_setup, capture_teardown),
        cmocka_unit_test_setup_teardown(test_errno_preserved, capture_setup, capture_teardown),
        cmocka_unit_test_setup_teardown(test_journal_stream, capture_setup, capture_teardown),
        cmocka_unit_test_setup_teardown(test_syslog_target, capture_setup, capture_teardown),
        cmocka_unit_test(test_escape),
        cmocka_unit_test_setup_teardown(test_concurrent_lines_stay_whole, capture_setup,
                                        capture_teardown),
        cmocka_unit_test_setup_teardown(test_fatal_exits_1, capture_setup, capture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

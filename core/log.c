/* log.c — the only writer of log lines: stderr (journald) or syslog.
 *
 * Each call formats the complete line into a stack buffer and emits it with a
 * single write(2) (or syslog(3)), so concurrent loop threads never interleave.
 * The stderr path neither allocates nor takes a lock; settings are atomics.
 * Never adds anything to a line beyond the ident, pid and prefix. */
#include "core/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

/* PIPE_BUF: a write of at most this many bytes to a pipe (journald's stdout
 * stream, a test harness) is atomic, so one line is the unit of output. */
#define LOG_LINE_MAX 4096
#define LOG_TRUNCATED "...[truncated]"

/* Settings are read on every call from any thread and changed on reload; plain
 * atomics are enough because each one is meaningful on its own. */
static _Atomic int log_target_current = LOG_TARGET_STDERR;
static _Atomic int log_level_current = LOG_LEVEL_INFO;
static _Atomic(const char *) log_ident_current = NULL;
/* stderr is journald's stream: lines carry "<N>" so journald sets the priority,
 * and no "ident[pid]:" because journald records both itself. */
static atomic_bool log_stderr_is_journal = false;
static bool log_syslog_open = false; /* only touched by log_setup (start-up, reload) */

/* getpid() is a system call each time (glibc stopped caching it), and every
 * line carries the pid: kept here, forgotten in a forked child. */
static _Atomic long log_pid_cached = 0;
static pthread_once_t log_pid_once = PTHREAD_ONCE_INIT;

static void log_on_fork_child(void)
{
    atomic_store(&log_pid_cached, 0);
}

static void log_register_fork_hook(void)
{
    pthread_atfork(NULL, NULL, log_on_fork_child);
}

static long log_pid(void)
{
    long pid = atomic_load(&log_pid_cached);
    if (pid == 0) {
        pthread_once(&log_pid_once, log_register_fork_hook);
        pid = (long)getpid();
        atomic_store(&log_pid_cached, pid);
    }
    return pid;
}

static const char *log_ident(void)
{
    const char *ident = atomic_load(&log_ident_current);
    return ident != NULL ? ident : program_invocation_short_name;
}

/* systemd sets JOURNAL_STREAM=dev:ino for the stream it connected; it is only
 * ours if fd 2 is still that very file (the variable leaks to children). */
static bool log_detect_journal(void)
{
    const char *env = getenv("JOURNAL_STREAM");
    if (env == NULL)
        return false;
    unsigned long long dev, ino;
    char tail;
    if (sscanf(env, "%llu:%llu%c", &dev, &ino, &tail) != 2)
        return false;
    struct stat st;
    if (fstat(STDERR_FILENO, &st) < 0)
        return false;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_setup(enum log_target target, enum log_level level, const char *ident)
{
    if (ident != NULL)
        atomic_store(&log_ident_current, ident);
    atomic_store(&log_level_current, (int)level);
    atomic_store(&log_stderr_is_journal, log_detect_journal());
    if (target == LOG_TARGET_SYSLOG) {
        if (!log_syslog_open) {
            /* LOG_NDELAY: connect now, before a privilege drop could make
             * /dev/log unreachable. */
            openlog(log_ident(), LOG_PID | LOG_NDELAY, LOG_MAIL);
            log_syslog_open = true;
        }
        atomic_store(&log_target_current, (int)target);
    } else {
        /* switch first, so no thread is sent to syslog after closelog() */
        atomic_store(&log_target_current, (int)target);
        if (log_syslog_open) {
            closelog();
            log_syslog_open = false;
        }
    }
}

enum log_level log_get_level(void)
{
    return (enum log_level)atomic_load(&log_level_current);
}


/* Appends fmt to buf[*len..size-1]; on overflow *len becomes size - 1 and the
 * function reports truncation. */
static bool log_append(char *buf, size_t size, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static bool log_append(char *buf, size_t size, size_t *len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *len, size - *len, fmt, ap);
    va_end(ap);
    if (n < 0)
        return false; /* encoding error: keep what we have */
    if ((size_t)n >= size - *len) {
        *len = size - 1;
        return true;
    }
    *len += (size_t)n;
    return false;
}

/* Formats "[<N> or ident[pid]: ][prefix: ]message" into buf (NUL-terminated,
 * no newline) and returns its length; a line that does not fit ends in
 * LOG_TRUNCATED. size must exceed the marker. */
static size_t log_format(char *buf, size_t size, bool with_header, enum log_level level,
                         const char *prefix, const char *fmt, va_list ap)
    __attribute__((format(printf, 6, 0)));
static size_t log_format(char *buf, size_t size, bool with_header, enum log_level level,
                         const char *prefix, const char *fmt, va_list ap)
{
    size_t len = 0;
    bool truncated = false;
    if (with_header) {
        if (atomic_load(&log_stderr_is_journal))
            truncated |= log_append(buf, size, &len, "<%d>", (int)level);
        else
            truncated |= log_append(buf, size, &len, "%s[%ld]: ", log_ident(), log_pid());
    }
    size_t body = len;
    if (prefix != NULL)
        truncated |= log_append(buf, size, &len, "%s: ", prefix);
    if (!truncated) {
        int n = vsnprintf(buf + len, size - len, fmt, ap);
        if (n >= 0 && (size_t)n >= size - len) {
            truncated = true;
            len = size - 1;
        } else if (n >= 0) {
            len += (size_t)n;
        }
    }
    /* One event, one line: an embedded newline (from a strerror, a path…)
     * must not let text masquerade as a separate log line. */
    for (size_t i = body; i < len; i++)
        if (buf[i] == '\n' || buf[i] == '\r')
            buf[i] = ' ';
    if (truncated) {
        len = size - 1;
        memcpy(buf + len - (sizeof(LOG_TRUNCATED) - 1), LOG_TRUNCATED, sizeof(LOG_TRUNCATED) - 1);
        buf[len] = '\0';
    }
    return len;
}

static void log_write_all(const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(STDERR_FILENO, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere left to report a failing stderr */
        }
        buf += n;
        len -= (size_t)n;
    }
}

void log_vmsg(enum log_level level, const char *prefix, const char *fmt, va_list ap)
{
    if ((int)level > atomic_load(&log_level_current))
        return;
    int saved_errno = errno; /* callers often log and then look at errno */
    char line[LOG_LINE_MAX];
    if (atomic_load(&log_target_current) == LOG_TARGET_SYSLOG) {
        log_format(line, sizeof(line), false, level, prefix, fmt, ap);
        syslog((int)level, "%s", line);
    } else {
        /* the newline takes the NUL's place: the whole line is <= PIPE_BUF */
        size_t len = log_format(line, sizeof(line), true, level, prefix, fmt, ap);
        line[len++] = '\n';
        log_write_all(line, len);
    }
    errno = saved_errno;
}

void log_msg(enum log_level level, const char *prefix, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, prefix, fmt, ap);
    va_end(ap);
}

char *log_escape(const char *in, size_t in_len, char *out, size_t out_size)
{
    static const char hex[] = "0123456789abcdef";
    if (out_size == 0)
        return out;
    size_t o = 0;
    for (size_t i = 0; i < in_len; i++) {
        unsigned char c = (unsigned char)in[i];
        bool plain = c >= 0x20 && c < 0x7f && c != '\\' && c != '"';
        size_t need = plain ? 1 : 4;
        if (o + need >= out_size)
            break; /* never emit half an escape sequence */
        if (plain) {
            out[o++] = (char)c;
        } else {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 0xf];
        }
    }
    out[o] = '\0';
    return out;
}

void fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(LOG_LEVEL_ERR, NULL, fmt, ap); /* ERR passes every level filter */
    va_end(ap);
    exit(1);
}

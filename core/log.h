/* log.h — one line per event, key=value, to stderr (journald) or syslog.
 *
 * Thread-safe: every call formats the whole line first and writes it with one
 * write(2), so lines from different loop threads never interleave. libuv-free,
 * so auth/ and smarthostctl can use it. Never pass passwords, AUTH payloads or
 * message bodies; client text goes through log_escape() first. */
#ifndef SMARTHOST_LOG_H
#define SMARTHOST_LOG_H

#include <stddef.h>
#include <stdarg.h>

enum log_level { LOG_LEVEL_ERR = 3, LOG_LEVEL_WARN = 4, LOG_LEVEL_INFO = 6, LOG_LEVEL_DEBUG = 7 };
enum log_target { LOG_TARGET_STDERR, LOG_TARGET_SYSLOG };

/* Configure once at start-up (and again on reload); ident is borrowed for the
 * life of the process (used by openlog). */
void log_setup(enum log_target target, enum log_level level, const char *ident);
enum log_level log_get_level(void);

/* prefix: the queue id once one exists, else the session id ("s1a2b3"), else
 * NULL for daemon-wide events. The line written is "prefix: message". */
void log_msg(enum log_level level, const char *prefix, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void log_vmsg(enum log_level level, const char *prefix, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

#define log_err(p, ...) log_msg(LOG_LEVEL_ERR, (p), __VA_ARGS__)
#define log_warn(p, ...) log_msg(LOG_LEVEL_WARN, (p), __VA_ARGS__)
#define log_info(p, ...) log_msg(LOG_LEVEL_INFO, (p), __VA_ARGS__)
#define log_debug(p, ...)                                                    \
    do {                                                                     \
        if (log_get_level() >= LOG_LEVEL_DEBUG)                              \
            log_msg(LOG_LEVEL_DEBUG, (p), __VA_ARGS__);                      \
    } while (0)

/* Escape untrusted text for a log line: printable ASCII except '\\' and '"'
 * is copied, everything else becomes \xHH; the result is truncated to fit
 * and always NUL-terminated. Returns out. */
char *log_escape(const char *in, size_t in_len, char *out, size_t out_size);

/* Startup-only or broken-invariant exit: logs at ERR and exits with status 1. */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif

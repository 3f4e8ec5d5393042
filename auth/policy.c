/* policy.c — see policy.h. */
#include "auth/policy.h"

#include "core/config.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static const char *const policy_names[POLICY_FIELD_COUNT] = {
    "max_size", "max_rcpts", "msgs_per_hour", "msgs_per_day", "rcpts_per_day", "bytes_per_day",
};

const char *policy_field_name(enum policy_field f)
{
    return (unsigned)f < POLICY_FIELD_COUNT ? policy_names[f] : "?";
}

int64_t policy_value(const struct account_policy *p, enum policy_field f)
{
    switch (f) {
    case POLICY_MAX_SIZE: return p->max_size;
    case POLICY_MAX_RCPTS: return p->max_rcpts;
    case POLICY_MSGS_PER_HOUR: return p->msgs_per_hour;
    case POLICY_MSGS_PER_DAY: return p->msgs_per_day;
    case POLICY_RCPTS_PER_DAY: return p->rcpts_per_day;
    case POLICY_BYTES_PER_DAY: return p->bytes_per_day;
    default: return POLICY_UNSET;
    }
}

uint64_t policy_effective(const struct account_policy *p, const struct policy_defaults *d,
                          enum policy_field f)
{
    int64_t v = policy_value(p, f);
    if (v >= 0)
        return (uint64_t)v;
    switch (f) {
    case POLICY_MAX_SIZE: return d->max_size;
    case POLICY_MAX_RCPTS: return d->max_rcpts;
    case POLICY_MSGS_PER_HOUR: return d->msgs_per_hour;
    case POLICY_MSGS_PER_DAY: return d->msgs_per_day;
    case POLICY_RCPTS_PER_DAY: return d->rcpts_per_day;
    case POLICY_BYTES_PER_DAY: return d->bytes_per_day;
    default: return 0;
    }
}

static void policy_text(char *out, size_t size, sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    snprintf(out, size, "%s", t != NULL ? (const char *)t : "");
}

int policy_load(struct sql_cache *sql, const char *user, struct account_policy *out)
{
    memset(out, 0, sizeof(*out));
    sqlite3_stmt *st = NULL;
    int rc = sql_cache_prepare(sql,
                               "SELECT id, enabled, senders, check_header_from, networks, owner,"
                               " max_size, max_rcpts, msgs_per_hour, msgs_per_day, rcpts_per_day,"
                               " bytes_per_day FROM accounts WHERE name = ?",
                               &st);
    if (rc != SQLITE_OK)
        return -EIO;
    sqlite3_bind_text(st, 1, user, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        sql_cache_done(sql, st);
        return 1;
    }
    if (rc != SQLITE_ROW) {
        sql_cache_done(sql, st);
        return (rc & 0xff) == SQLITE_BUSY ? -EBUSY : -EIO;
    }
    out->account_id = sqlite3_column_int64(st, 0);
    out->is_enabled = sqlite3_column_int(st, 1) != 0;
    policy_text(out->senders, sizeof(out->senders), st, 2);
    out->is_header_from_checked = sqlite3_column_int(st, 3) != 0;
    policy_text(out->networks, sizeof(out->networks), st, 4);
    policy_text(out->owner, sizeof(out->owner), st, 5);
    out->max_size = sqlite3_column_int64(st, 6);
    out->max_rcpts = sqlite3_column_int64(st, 7);
    out->msgs_per_hour = sqlite3_column_int64(st, 8);
    out->msgs_per_day = sqlite3_column_int64(st, 9);
    out->rcpts_per_day = sqlite3_column_int64(st, 10);
    out->bytes_per_day = sqlite3_column_int64(st, 11);
    sql_cache_done(sql, st);
    return 0;
}

/* ---- lists ----------------------------------------------------------------- */

/* Next comma/space separated entry of list at *p into out; false at the end. */
static bool policy_next(const char **p, char *out, size_t size)
{
    const char *s = *p;
    while (*s == ',' || *s == ' ' || *s == '\t')
        s++;
    if (*s == '\0')
        return false;
    size_t n = strcspn(s, ", \t");
    size_t k = n < size - 1 ? n : size - 1;
    memcpy(out, s, k);
    out[k] = '\0';
    *p = s + n;
    return true;
}

bool policy_sender_allowed(const char *list, const char *sender)
{
    if (list == NULL || list[0] == '\0')
        return true;
    const char *at = strrchr(sender, '@');
    const char *p = list;
    char e[320];
    while (policy_next(&p, e, sizeof(e))) {
        if (e[0] == '@' || (e[0] == '*' && e[1] == '@')) {
            const char *dom = e[0] == '@' ? e + 1 : e + 2;
            if (at != NULL && strcasecmp(at + 1, dom) == 0)
                return true;
        } else if (strcasecmp(e, sender) == 0) {
            return true;
        }
    }
    return false;
}

bool policy_network_allowed(const char *list, const char *client_ip)
{
    if (list == NULL || list[0] == '\0')
        return true;
    const char *p = list;
    char e[64];
    while (policy_next(&p, e, sizeof(e)))
        if (config_ip_in_network(e, client_ip))
            return true;
    return false;
}

static bool policy_is_domain(const char *d)
{
    size_t n = strlen(d);
    if (n == 0 || n > 253 || d[0] == '.' || d[n - 1] == '.')
        return false;
    for (const char *p = d; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.')
            return false;
    return strchr(d, '.') != NULL || strcasecmp(d, "localhost") == 0;
}

int policy_check_senders(const char *list, char *why, size_t why_size)
{
    const char *p = list;
    char e[320];
    size_t count = 0;
    if (strlen(list) >= POLICY_LIST_MAX) {
        snprintf(why, why_size, "the list is longer than %d bytes", POLICY_LIST_MAX - 1);
        return -1;
    }
    while (policy_next(&p, e, sizeof(e))) {
        count++;
        const char *dom = e[0] == '@' ? e + 1 : (e[0] == '*' && e[1] == '@') ? e + 2 : NULL;
        bool ok;
        if (dom != NULL) {
            ok = policy_is_domain(dom);
        } else {
            const char *at = strrchr(e, '@');
            ok = at != NULL && at != e && policy_is_domain(at + 1);
            for (const char *q = e; ok && q < at; q++)
                if ((unsigned char)*q <= ' ' || (unsigned char)*q > '~' || *q == '<' || *q == '>')
                    ok = false;
        }
        if (!ok) {
            snprintf(why, why_size,
                     "\"%.100s\" is not an address, @domain or *@domain", e);
            return -1;
        }
    }
    (void)count;
    return 0;
}

int policy_check_networks(const char *list, char *why, size_t why_size)
{
    const char *p = list;
    char e[64];
    if (strlen(list) >= POLICY_LIST_MAX) {
        snprintf(why, why_size, "the list is longer than %d bytes", POLICY_LIST_MAX - 1);
        return -1;
    }
    while (policy_next(&p, e, sizeof(e))) {
        if (!config_network_is_valid(e)) {
            snprintf(why, why_size, "\"%.60s\" is not a network (CIDR like 192.0.2.0/24 or "
                                    "2001:db8::/48)", e);
            return -1;
        }
    }
    return 0;
}

/* ---- header From --------------------------------------------------------- */

bool policy_header_from(const uint8_t *msg, size_t len, char *out, size_t out_size)
{
    size_t pos = 0;
    out[0] = '\0';
    while (pos < len) {
        size_t end = pos;
        while (end < len && msg[end] != '\n')
            end++;
        size_t n = end - pos;
        if (n > 0 && msg[pos + n - 1] == '\r')
            n--;
        if (n == 0)
            return false; /* end of the header section */
        if (n > 5 && strncasecmp((const char *)msg + pos, "from:", 5) == 0) {
            /* the field with its folded continuation lines */
            char field[1024];
            size_t k = 0;
            size_t i = pos + 5;
            for (;;) {
                while (i < end && k + 1 < sizeof(field))
                    field[k++] = (char)msg[i++];
                size_t next = end + 1;
                if (next < len && (msg[next] == ' ' || msg[next] == '\t')) {
                    end = next;
                    while (end < len && msg[end] != '\n')
                        end++;
                    i = next;
                    continue;
                }
                break;
            }
            field[k] = '\0';
            char *lt = strrchr(field, '<');
            char *addr = field;
            if (lt != NULL) {
                addr = lt + 1;
                char *gt = strchr(addr, '>');
                if (gt != NULL)
                    *gt = '\0';
            }
            while (*addr == ' ' || *addr == '\t')
                addr++;
            size_t m = strcspn(addr, " \t\r\n");
            addr[m] = '\0';
            if (*addr == '\0' || strchr(addr, '@') == NULL)
                return false;
            snprintf(out, out_size, "%s", addr);
            return true;
        }
        pos = end + 1;
    }
    return false;
}

/* ---- charging --------------------------------------------------------------- */

static void policy_refuse(struct policy_verdict *v, int code, const char *enhanced,
                          const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void policy_refuse(struct policy_verdict *v, int code, const char *enhanced,
                          const char *fmt, ...)
{
    v->code = code;
    snprintf(v->enhanced, sizeof(v->enhanced), "%s", enhanced);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->text, sizeof(v->text), fmt, ap);
    va_end(ap);
}

struct policy_usage {
    int64_t start;
    uint64_t msgs, rcpts, bytes;
};

static int policy_read_usage(struct sql_cache *sql, int64_t id, const char *period, int64_t start,
                             struct policy_usage *u)
{
    memset(u, 0, sizeof(*u));
    u->start = start;
    sqlite3_stmt *st = NULL;
    if (sql_cache_prepare(sql,
                          "SELECT period_start, msgs, rcpts, bytes FROM usage"
                          " WHERE account_id = ? AND period = ?",
                          &st) != SQLITE_OK)
        return -EIO;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_text(st, 2, period, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && sqlite3_column_int64(st, 0) == start) {
        u->msgs = (uint64_t)sqlite3_column_int64(st, 1);
        u->rcpts = (uint64_t)sqlite3_column_int64(st, 2);
        u->bytes = (uint64_t)sqlite3_column_int64(st, 3);
    }
    sql_cache_done(sql, st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -EIO;
}

static int policy_write_usage(struct sql_cache *sql, int64_t id, const char *period,
                              const struct policy_usage *u)
{
    sqlite3_stmt *st = NULL;
    if (sql_cache_prepare(sql,
                          "INSERT INTO usage(account_id, period, period_start, msgs, rcpts, bytes)"
                          " VALUES(?, ?, ?, ?, ?, ?) ON CONFLICT(account_id, period) DO UPDATE"
                          " SET period_start = excluded.period_start, msgs = excluded.msgs,"
                          " rcpts = excluded.rcpts, bytes = excluded.bytes",
                          &st) != SQLITE_OK)
        return -EIO;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_text(st, 2, period, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, u->start);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)u->msgs);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)u->rcpts);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)u->bytes);
    int rc = sqlite3_step(st);
    sql_cache_done(sql, st);
    return rc == SQLITE_DONE ? 0 : -EIO;
}

static void policy_reset_time(int64_t at, char *out, size_t size)
{
    time_t t = (time_t)at;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, size, "%H:%M UTC", &tm);
}

int policy_charge(struct sql_cache *sql, const char *user, const struct policy_defaults *d,
                  int64_t now, const char *sender, const char *header_from, size_t rcpts,
                  uint64_t bytes, struct policy_verdict *v)
{
    struct account_policy p;
    v->owner[0] = '\0';
    int rc = policy_load(sql, user, &p);
    if (rc < 0)
        return rc;
    if (rc == 1 || !p.is_enabled) {
        policy_refuse(v, 535, "5.7.8", "Account %s", rc == 1 ? "no longer exists" : "is disabled");
        return 1;
    }
    if (!policy_sender_allowed(p.senders, sender)) {
        policy_refuse(v, 553, "5.7.1", "Sender <%.200s> is not allowed for this account", sender);
        return 1;
    }
    if (p.is_header_from_checked &&
        (header_from == NULL || !policy_sender_allowed(p.senders, header_from))) {
        policy_refuse(v, 553, "5.7.1", "Header From <%.200s> is not allowed for this account",
                      header_from != NULL ? header_from : "");
        return 1;
    }
    uint64_t max_size = policy_effective(&p, d, POLICY_MAX_SIZE);
    if (max_size > 0 && bytes > max_size) {
        policy_refuse(v, 552, "5.3.4", "Message size exceeds this account's maximum (%llu bytes)",
                      (unsigned long long)max_size);
        return 1;
    }
    uint64_t max_rcpts = policy_effective(&p, d, POLICY_MAX_RCPTS);
    if (max_rcpts > 0 && rcpts > max_rcpts) {
        policy_refuse(v, 452, "4.5.3", "Too many recipients for this account (at most %llu)",
                      (unsigned long long)max_rcpts);
        return 1;
    }
    int64_t hour = now - now % 3600, day = now - now % 86400;
    struct policy_usage uh, ud;
    if (policy_read_usage(sql, p.account_id, "hour", hour, &uh) < 0 ||
        policy_read_usage(sql, p.account_id, "day", day, &ud) < 0)
        return -EIO;
    uint64_t lim;
    char reset[32];
    if ((lim = policy_effective(&p, d, POLICY_MSGS_PER_HOUR)) > 0 && uh.msgs + 1 > lim) {
        policy_reset_time(hour + 3600, reset, sizeof(reset));
        policy_refuse(v, 452, "4.2.2",
                      "Hourly message quota of this account reached (%llu); it resets at %s",
                      (unsigned long long)lim, reset);
        return 1;
    }
    policy_reset_time(day + 86400, reset, sizeof(reset));
    if ((lim = policy_effective(&p, d, POLICY_MSGS_PER_DAY)) > 0 && ud.msgs + 1 > lim) {
        policy_refuse(v, 452, "4.2.2",
                      "Daily message quota of this account reached (%llu); it resets at %s",
                      (unsigned long long)lim, reset);
        return 1;
    }
    if ((lim = policy_effective(&p, d, POLICY_RCPTS_PER_DAY)) > 0 && ud.rcpts + rcpts > lim) {
        policy_refuse(v, 452, "4.2.2",
                      "Daily recipient quota of this account reached (%llu, %llu used); it "
                      "resets at %s",
                      (unsigned long long)lim, (unsigned long long)ud.rcpts, reset);
        return 1;
    }
    if ((lim = policy_effective(&p, d, POLICY_BYTES_PER_DAY)) > 0 && ud.bytes + bytes > lim) {
        policy_refuse(v, 452, "4.2.2",
                      "Daily volume quota of this account reached (%llu bytes); it resets at %s",
                      (unsigned long long)lim, reset);
        return 1;
    }
    uh.msgs++;
    uh.rcpts += rcpts;
    uh.bytes += bytes;
    ud.msgs++;
    ud.rcpts += rcpts;
    ud.bytes += bytes;
    if (policy_write_usage(sql, p.account_id, "hour", &uh) < 0 ||
        policy_write_usage(sql, p.account_id, "day", &ud) < 0)
        return -EIO;
    snprintf(v->owner, sizeof(v->owner), "%s", p.owner);
    return 0;
}

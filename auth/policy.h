/* policy.h — what each account may send: allowed envelope senders (exact
 * addresses, @domain, *@domain), whether the header From must match them,
 * client networks (CIDR), size and recipient limits, and quotas (messages
 * per hour and per day, recipients per day, bytes per day) with usage
 * counters in SQLite. Per-account values override the global defaults.
 *
 * policy_charge() runs inside the queue's commit transaction (the same
 * SQLite connection), so the check and the count are one atomic step: two
 * sessions racing for the last unit of a quota can never both get it, and
 * only accepted messages are counted. libuv-free. */
#ifndef SMARTHOST_POLICY_H
#define SMARTHOST_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "core/sql_cache.h"

#define POLICY_LIST_MAX 1024
#define POLICY_UNSET (-1)   /* no per-account value: the global default applies */

struct policy_defaults {
    uint64_t max_size;      /* bytes */
    uint64_t max_rcpts;
    uint64_t msgs_per_hour; /* 0 = unlimited */
    uint64_t msgs_per_day;
    uint64_t rcpts_per_day;
    uint64_t bytes_per_day;
};

struct account_policy {
    int64_t account_id;
    bool is_enabled;
    char senders[POLICY_LIST_MAX];   /* "" = any sender */
    bool is_header_from_checked;
    char networks[POLICY_LIST_MAX];  /* "" = any client address */
    char owner[256];                 /* bounces for this account's mail; "" = none */
    /* POLICY_UNSET or the account's own value (0 = unlimited for quotas) */
    int64_t max_size, max_rcpts, msgs_per_hour, msgs_per_day, rcpts_per_day, bytes_per_day;
};

enum policy_field {
    POLICY_MAX_SIZE, POLICY_MAX_RCPTS, POLICY_MSGS_PER_HOUR, POLICY_MSGS_PER_DAY,
    POLICY_RCPTS_PER_DAY, POLICY_BYTES_PER_DAY, POLICY_FIELD_COUNT,
};
const char *policy_field_name(enum policy_field f);  /* "msgs_per_hour" … */
int64_t policy_value(const struct account_policy *p, enum policy_field f);
/* The limit in force: the account's value, else the default (0 = unlimited). */
uint64_t policy_effective(const struct account_policy *p, const struct policy_defaults *d,
                          enum policy_field f);

/* Load the policy of user. Returns 0, 1 when there is no such user, or a
 * negative SQLite-derived error. */
int policy_load(struct sql_cache *sql, const char *user, struct account_policy *out);

/* Pure checks. An empty list allows everything. Matching is case-insensitive. */
bool policy_sender_allowed(const char *list, const char *sender);
bool policy_network_allowed(const char *list, const char *client_ip);
/* Validation for smarthostctl: 0, or -1 with a sentence naming the bad entry. */
int policy_check_senders(const char *list, char *why, size_t why_size);
int policy_check_networks(const char *list, char *why, size_t why_size);

/* The header From address of a message (first From: field, folded lines,
 * "Name <addr>" or bare addr) into out; false when there is none. */
bool policy_header_from(const uint8_t *msg, size_t len, char *out, size_t out_size);

/* What to answer when a charge is refused; on acceptance only owner is set. */
struct policy_verdict {
    int code;               /* 452, 451, 553, 552, 535 */
    char enhanced[8];
    char text[256];         /* the sentence, naming the quota and when it resets */
    char owner[256];        /* accepted: the account's owner address (bounces), "" = none */
};

/* Inside an open write transaction on sql's connection: re-check the
 * account (enabled, sender, header From when the account checks it
 * (header_from NULL: none found), size, recipients) with fresh data, then
 * check and count the quotas. Returns 0 (counted: v->owner filled), 1
 * (refused: v filled), or negative (storage error). */
int policy_charge(struct sql_cache *sql, const char *user, const struct policy_defaults *d,
                  int64_t now, const char *sender, const char *header_from, size_t rcpts,
                  uint64_t bytes, struct policy_verdict *v);

#endif

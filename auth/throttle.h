/* throttle.h — AUTH failure throttling per client IP and per account:
 * each failure inside the window doubles the delay before the 535 reply
 * (from auth_failure_delay_ms up to auth_max_delay_ms); after N failures the
 * IP or the account is locked out for auth_lockout_ms (454 4.7.0). Success
 * clears the account's and the IP's counters. IPv6 clients are keyed by their
 * /64. In memory, bounded (oldest entries evicted), one mutex: safe from any
 * thread. Time comes from the caller (now_ms), so tests drive the clock. */
#ifndef SMARTHOST_THROTTLE_H
#define SMARTHOST_THROTTLE_H

#include <stdbool.h>
#include <stdint.h>

struct throttle_params {
    uint32_t failure_delay_ms;
    uint32_t max_delay_ms;
    uint32_t ip_lockout_failures;
    uint32_t account_lockout_failures;
    uint64_t lockout_ms;
    uint64_t window_ms;
    uint32_t max_entries; /* bound on tracked keys; 0 = 65536 */
};

struct throttle;

struct throttle *throttle_new(const struct throttle_params *p); /* caller frees */
void throttle_free(struct throttle *t);
/* Replace the parameters (SIGHUP); counters are kept. */
void throttle_set_params(struct throttle *t, const struct throttle_params *p);

/* Is this IP (user NULL) or this IP+account locked? When locked, returns true
 * and stores when it ends in *until_ms (if non-NULL). */
bool throttle_is_locked(struct throttle *t, const char *ip, const char *user,
                        uint64_t now_ms, uint64_t *until_ms);

/* Record one failed AUTH; returns the delay to apply before replying.
 * user may be NULL (unknown, malformed). *locked_now is set when this failure
 * started a lockout (for the log line). */
uint32_t throttle_record_failure(struct throttle *t, const char *ip, const char *user,
                                 uint64_t now_ms, bool *locked_now);
void throttle_record_success(struct throttle *t, const char *ip, const char *user);

/* Lockouts in force at now_ms: cb once per locked client address ("ip";
 * IPv6 as its /64) or account ("account"), with the time left. For
 * `smarthostctl auth lockouts` (through the daemon's control socket). */
void throttle_list_locked(struct throttle *t, uint64_t now_ms,
                          void (*cb)(const char *kind, const char *what, uint64_t left_ms,
                                     uint32_t failures, void *arg),
                          void *arg);
/* Lift the lockout and forget the failures of an address or an account.
 * Returns true when there was something to forget. */
bool throttle_unlock(struct throttle *t, const char *ip_or_user);

#endif

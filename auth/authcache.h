/* authcache.h — a cache of recently verified credentials, so that a device
 * that opens a new connection for every message does not cost a yescrypt
 * computation each time (as Dovecot's auth cache does).
 *
 * Safe by construction: an entry holds the user name, a SHA-256 of the
 * stored hash, and an HMAC-SHA256 of the password under a random key made at
 * start (never the password). The caller always reads the account row first:
 * a deleted or disabled account never reaches the cache, a password change
 * (a new stored hash) misses at once, and a wrong password can never match
 * the HMAC of the right one, so it always goes through yescrypt and fails.
 * Only successful verifications are stored. Bounded; thread-safe.
 *
 * Single flight: while one thread verifies a (user, stored hash, password)
 * triple, another about to verify the very same triple waits for that
 * result instead of computing it again, so a floor of devices logging in
 * with one account's credentials at once (after a restart, when the cache
 * is empty) costs one yescrypt, not one each. The same triple has the same
 * result; a different password or stored hash never shares one. */
#ifndef SMARTHOST_AUTHCACHE_H
#define SMARTHOST_AUTHCACHE_H

#include <stdbool.h>
#include <stddef.h>

/* max_entries 0 disables the cache. Call once before the first use. */
int authcache_init(size_t max_entries);
void authcache_done(void);

/* true when password is the one last verified for (user, stored_hash). */
bool authcache_check(const char *user, const char *stored_hash, const char *password);
/* Remember a successful verification. */
void authcache_put(const char *user, const char *stored_hash, const char *password);

/* Before verifying password against stored_hash: 1 (it matches) or 0 (it
 * does not) when that is known already, from the cache (only if is_lookup:
 * false for a disabled or unknown account, whose right password must cost
 * a whole yescrypt like any other) or by waiting for another thread
 * verifying the same triple right now; -1 when the caller must verify it,
 * then call authcache_settle with the same *claim. Blocks (never call it
 * on an event loop thread). */
int authcache_begin(const char *user, const char *stored_hash, const char *password,
                    bool is_lookup, int *claim);
/* The result of that verification, handed to whoever waits for it; kept
 * in the cache when it matched and is_kept (an enabled account). */
void authcache_settle(int claim, const char *user, const char *stored_hash, const char *password,
                      bool is_match, bool is_kept);

/* Hits, misses, and verifications shared by waiting (single flight) since
 * init (for tests and the benchmark). */
void authcache_stats(unsigned long long *hits, unsigned long long *misses,
                     unsigned long long *shared);

#endif

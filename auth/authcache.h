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
 * Only successful verifications are stored. Bounded; thread-safe. */
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

/* Hits and misses since init (for tests and the benchmark). */
void authcache_stats(unsigned long long *hits, unsigned long long *misses);

#endif

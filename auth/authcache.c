/* authcache.c — see authcache.h. A set-associative table: the user name
 * picks a set of AUTHCACHE_WAYS entries; the oldest entry of the set is
 * replaced. Comparisons of the secrets are constant-time. Verifications
 * under way sit in a small table of flights that waiters find by the same
 * digests. */
#include "auth/authcache.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#define AUTHCACHE_WAYS 4
#define AUTHCACHE_DIGEST 32
#define AUTHCACHE_USER_MAX 256
#define AUTHCACHE_FLIGHTS 64 /* verifications others can wait for; more go alone */

struct authcache_entry {
    uint64_t used_at;                   /* tick of the last hit or put; 0 = empty */
    char user[AUTHCACHE_USER_MAX];
    uint8_t hash_digest[AUTHCACHE_DIGEST];
    uint8_t secret[AUTHCACHE_DIGEST];   /* HMAC(key, password) */
};

/* One verification under way (claimed by authcache_begin), kept until its
 * result is settled and every waiter has read it. */
struct authcache_flight {
    bool is_used, is_done, is_match;
    bool is_aborted;                    /* authcache_done: waiters verify alone */
    unsigned waiters;
    char user[AUTHCACHE_USER_MAX];
    uint8_t hash_digest[AUTHCACHE_DIGEST];
    uint8_t secret[AUTHCACHE_DIGEST];
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t settled;             /* a flight is done */
    struct authcache_entry *entries;
    size_t sets;
    uint64_t tick;
    uint8_t key[32];
    unsigned long long hits, misses, shared;
    struct authcache_flight flights[AUTHCACHE_FLIGHTS];
} authcache = {.lock = PTHREAD_MUTEX_INITIALIZER, .settled = PTHREAD_COND_INITIALIZER};

int authcache_init(size_t max_entries)
{
    pthread_mutex_lock(&authcache.lock);
    free(authcache.entries);
    authcache.entries = NULL;
    authcache.sets = 0;
    int rc = 0;
    if (max_entries > 0) {
        size_t sets = (max_entries + AUTHCACHE_WAYS - 1) / AUTHCACHE_WAYS;
        authcache.entries = calloc(sets * AUTHCACHE_WAYS, sizeof(*authcache.entries));
        if (authcache.entries == NULL) {
            rc = -ENOMEM;
        } else if (getrandom(authcache.key, sizeof(authcache.key), 0) !=
                   (ssize_t)sizeof(authcache.key)) {
            free(authcache.entries);
            authcache.entries = NULL;
            rc = -EIO;
        } else {
            authcache.sets = sets;
        }
    }
    authcache.hits = authcache.misses = authcache.shared = 0;
    pthread_mutex_unlock(&authcache.lock);
    return rc;
}

void authcache_done(void)
{
    pthread_mutex_lock(&authcache.lock);
    if (authcache.entries != NULL)
        explicit_bzero(authcache.entries,
                       authcache.sets * AUTHCACHE_WAYS * sizeof(*authcache.entries));
    free(authcache.entries);
    authcache.entries = NULL;
    authcache.sets = 0;
    explicit_bzero(authcache.key, sizeof(authcache.key));
    /* Verifications under way: their settle finds nothing to match (see
     * authcache_settle); their waiters wake and verify alone. */
    for (int i = 0; i < AUTHCACHE_FLIGHTS; i++) {
        struct authcache_flight *f = &authcache.flights[i];
        unsigned waiters = f->waiters;
        explicit_bzero(f, sizeof(*f));
        if (waiters > 0) {
            f->is_used = f->is_done = f->is_aborted = true;
            f->waiters = waiters;
        }
    }
    pthread_cond_broadcast(&authcache.settled);
    pthread_mutex_unlock(&authcache.lock);
}

static uint64_t authcache_fnv(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ULL;
    return h;
}

static bool authcache_digests(const char *stored_hash, const char *password,
                              uint8_t hash_digest[AUTHCACHE_DIGEST],
                              uint8_t secret[AUTHCACHE_DIGEST])
{
    if (gnutls_hash_fast(GNUTLS_DIG_SHA256, stored_hash, strlen(stored_hash), hash_digest) < 0)
        return false;
    return gnutls_hmac_fast(GNUTLS_MAC_SHA256, authcache.key, sizeof(authcache.key), password,
                            strlen(password), secret) >= 0;
}

static bool authcache_equal(const uint8_t *a, const uint8_t *b, size_t n)
{
    uint8_t d = 0;
    for (size_t i = 0; i < n; i++)
        d |= a[i] ^ b[i];
    return d == 0;
}

/* Under the lock, the cache enabled: is (user, hd, secret) cached? Counts
 * the hit or miss. */
static bool authcache_lookup(const char *user, const uint8_t *hd, const uint8_t *secret)
{
    struct authcache_entry *set =
        &authcache.entries[(authcache_fnv(user) % authcache.sets) * AUTHCACHE_WAYS];
    for (int w = 0; w < AUTHCACHE_WAYS; w++) {
        struct authcache_entry *e = &set[w];
        if (e->used_at != 0 && strcmp(e->user, user) == 0 &&
            authcache_equal(e->hash_digest, hd, AUTHCACHE_DIGEST) &&
            authcache_equal(e->secret, secret, AUTHCACHE_DIGEST)) {
            e->used_at = ++authcache.tick;
            authcache.hits++;
            return true;
        }
    }
    authcache.misses++;
    return false;
}

bool authcache_check(const char *user, const char *stored_hash, const char *password)
{
    if (strlen(user) >= AUTHCACHE_USER_MAX)
        return false;
    uint8_t hd[AUTHCACHE_DIGEST], secret[AUTHCACHE_DIGEST];
    bool is_hit = false;
    pthread_mutex_lock(&authcache.lock);
    if (authcache.sets > 0 && authcache_digests(stored_hash, password, hd, secret))
        is_hit = authcache_lookup(user, hd, secret);
    pthread_mutex_unlock(&authcache.lock);
    explicit_bzero(secret, sizeof(secret));
    return is_hit;
}

static void authcache_flight_free(struct authcache_flight *f)
{
    explicit_bzero(f, sizeof(*f));
}

/* Under the lock: is f the verification of (user, hd, secret) under way
 * or just settled? */
static bool authcache_flight_is(const struct authcache_flight *f, const char *user,
                                const uint8_t *hd, const uint8_t *secret)
{
    return f->is_used && !f->is_aborted && strcmp(f->user, user) == 0 &&
           authcache_equal(f->hash_digest, hd, AUTHCACHE_DIGEST) &&
           authcache_equal(f->secret, secret, AUTHCACHE_DIGEST);
}

int authcache_begin(const char *user, const char *stored_hash, const char *password,
                    bool is_lookup, int *claim)
{
    *claim = 0;
    if (strlen(user) >= AUTHCACHE_USER_MAX)
        return -1;
    uint8_t hd[AUTHCACHE_DIGEST], secret[AUTHCACHE_DIGEST];
    int known = -1;
    pthread_mutex_lock(&authcache.lock);
    if (authcache.sets == 0 || !authcache_digests(stored_hash, password, hd, secret))
        goto out;
    if (is_lookup && authcache_lookup(user, hd, secret)) {
        known = 1;
        goto out;
    }
    struct authcache_flight *free_slot = NULL;
    for (int i = 0; i < AUTHCACHE_FLIGHTS; i++) {
        struct authcache_flight *f = &authcache.flights[i];
        if (!f->is_used) {
            if (free_slot == NULL)
                free_slot = f;
            continue;
        }
        if (!authcache_flight_is(f, user, hd, secret))
            continue;
        /* the very same verification is under way: its result is ours */
        f->waiters++;
        authcache.shared++;
        while (!f->is_done)
            pthread_cond_wait(&authcache.settled, &authcache.lock);
        known = f->is_aborted ? -1 : f->is_match ? 1 : 0;
        if (--f->waiters == 0)
            authcache_flight_free(f);
        goto out;
    }
    if (free_slot != NULL) {
        free_slot->is_used = true;
        snprintf(free_slot->user, sizeof(free_slot->user), "%s", user);
        memcpy(free_slot->hash_digest, hd, AUTHCACHE_DIGEST);
        memcpy(free_slot->secret, secret, AUTHCACHE_DIGEST);
        *claim = (int)(free_slot - authcache.flights) + 1;
    }
out:
    pthread_mutex_unlock(&authcache.lock);
    explicit_bzero(secret, sizeof(secret));
    return known;
}

void authcache_settle(int claim, const char *user, const char *stored_hash, const char *password,
                      bool is_match, bool is_kept)
{
    if (is_match && is_kept)
        authcache_put(user, stored_hash, password); /* before the waiters wake */
    if (claim < 1 || claim > AUTHCACHE_FLIGHTS || strlen(user) >= AUTHCACHE_USER_MAX)
        return;
    uint8_t hd[AUTHCACHE_DIGEST], secret[AUTHCACHE_DIGEST];
    pthread_mutex_lock(&authcache.lock);
    struct authcache_flight *f = &authcache.flights[claim - 1];
    /* Still ours? Not after authcache_done (the slot may since be another
     * verification's); the same credentials would get the same result. */
    if (authcache_digests(stored_hash, password, hd, secret) &&
        authcache_flight_is(f, user, hd, secret) && !f->is_done) {
        f->is_done = true;
        f->is_match = is_match;
        if (f->waiters == 0)
            authcache_flight_free(f);
        else
            pthread_cond_broadcast(&authcache.settled);
    }
    pthread_mutex_unlock(&authcache.lock);
    explicit_bzero(secret, sizeof(secret));
}

void authcache_put(const char *user, const char *stored_hash, const char *password)
{
    if (strlen(user) >= AUTHCACHE_USER_MAX)
        return;
    pthread_mutex_lock(&authcache.lock);
    if (authcache.sets > 0) {
        struct authcache_entry *set =
            &authcache.entries[(authcache_fnv(user) % authcache.sets) * AUTHCACHE_WAYS];
        /* the same user's old entry (old password) is replaced first */
        struct authcache_entry *victim = NULL;
        for (int w = 0; w < AUTHCACHE_WAYS; w++)
            if (set[w].used_at != 0 && strcmp(set[w].user, user) == 0)
                victim = &set[w];
        for (int w = 0; victim == NULL && w < AUTHCACHE_WAYS; w++)
            if (set[w].used_at == 0)
                victim = &set[w];
        if (victim == NULL) { /* the least recently used of the set */
            victim = &set[0];
            for (int k = 1; k < AUTHCACHE_WAYS; k++)
                if (set[k].used_at < victim->used_at)
                    victim = &set[k];
        }
        if (authcache_digests(stored_hash, password, victim->hash_digest, victim->secret)) {
            snprintf(victim->user, sizeof(victim->user), "%s", user);
            victim->used_at = ++authcache.tick;
        } else {
            victim->used_at = 0;
        }
    }
    pthread_mutex_unlock(&authcache.lock);
}

void authcache_stats(unsigned long long *hits, unsigned long long *misses,
                     unsigned long long *shared)
{
    pthread_mutex_lock(&authcache.lock);
    *hits = authcache.hits;
    *misses = authcache.misses;
    *shared = authcache.shared;
    pthread_mutex_unlock(&authcache.lock);
}

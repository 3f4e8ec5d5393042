/* throttle.c — AUTH failure counters per client address (IPv6 by /64) and
 * per account name, in one bounded hash table behind one mutex.
 * Contract: growing delays, lockouts and their expiry follow throttle.h;
 * time only comes from the caller. Never grows past max_entries (the least
 * recently failing key is evicted, unlocked keys first) and never lets a
 * client choose hash collisions (the hash is SipHash with a random key). */
#include "auth/throttle.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define THROTTLE_DEFAULT_MAX_ENTRIES 65536u
#define THROTTLE_MIN_BUCKETS 64u
/* How many of the least recently failing entries eviction looks at to find
 * one that is not locked out: spraying new keys must not cheaply flush an
 * active lockout, and eviction must stay O(1). */
#define THROTTLE_EVICT_SCAN 64
#define THROTTLE_KEY_MAX 256

enum throttle_kind {
    THROTTLE_KIND_IP4 = 4,
    THROTTLE_KIND_IP6 = 6,
    THROTTLE_KIND_IP_TEXT = 1, /* not an address we can parse: the text itself */
    THROTTLE_KIND_ACCOUNT = 2,
};

struct throttle_entry {
    struct throttle_entry *bucket_next;
    struct throttle_entry *lru_prev, *lru_next; /* lru_prev: less recent */
    uint64_t hash;
    uint64_t last_failure_at; /* ms, caller's clock */
    uint64_t locked_until;    /* ms; 0 = not locked */
    uint32_t failures;        /* inside the current window */
    uint16_t key_len;
    uint8_t key[]; /* kind byte, then the address bytes or the name */
};

struct throttle {
    pthread_mutex_t mutex;
    struct throttle_params params;
    uint8_t sip_key[16];
    struct throttle_entry **buckets;
    size_t bucket_count; /* a power of two */
    size_t entry_count;
    struct throttle_entry *lru_oldest, *lru_newest;
};

/* ---- SipHash-2-4 (Aumasson, Bernstein): keyed, so that user names and
 * addresses chosen by a client cannot all land in one bucket. */

#define THROTTLE_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

static uint64_t throttle_load64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

#define THROTTLE_SIPROUND                                                                     \
    do {                                                                                      \
        v0 += v1;                                                                             \
        v1 = THROTTLE_ROTL(v1, 13);                                                           \
        v1 ^= v0;                                                                             \
        v0 = THROTTLE_ROTL(v0, 32);                                                           \
        v2 += v3;                                                                             \
        v3 = THROTTLE_ROTL(v3, 16);                                                           \
        v3 ^= v2;                                                                             \
        v0 += v3;                                                                             \
        v3 = THROTTLE_ROTL(v3, 21);                                                           \
        v3 ^= v0;                                                                             \
        v2 += v1;                                                                             \
        v1 = THROTTLE_ROTL(v1, 17);                                                           \
        v1 ^= v2;                                                                             \
        v2 = THROTTLE_ROTL(v2, 32);                                                           \
    } while (0)

static uint64_t throttle_siphash(const uint8_t key[16], const uint8_t *in, size_t len)
{
    uint64_t k0 = throttle_load64(key), k1 = throttle_load64(key + 8);
    uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
    size_t full = len - len % 8;
    for (size_t i = 0; i < full; i += 8) {
        uint64_t m = throttle_load64(in + i);
        v3 ^= m;
        THROTTLE_SIPROUND;
        THROTTLE_SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t i = 0; i < len % 8; i++)
        b |= (uint64_t)in[full + i] << (8 * i);
    v3 ^= b;
    THROTTLE_SIPROUND;
    THROTTLE_SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    for (int i = 0; i < 4; i++)
        THROTTLE_SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- keys --------------------------------------------------------------- */

/* An IPv4 address is one key; an IPv6 client by its /64, because one host
 * usually owns the whole /64 and could otherwise rotate addresses forever.
 * IPv4-mapped IPv6 addresses count as the IPv4 address. Returns key_len. */
static size_t throttle_key_ip(const char *ip, uint8_t key[THROTTLE_KEY_MAX])
{
    char text[INET6_ADDRSTRLEN + 1];
    size_t len = strnlen(ip, sizeof(text));
    if (len < sizeof(text)) {
        memcpy(text, ip, len + 1);
        char *zone = strchr(text, '%'); /* fe80::1%eth0 */
        if (zone != NULL)
            *zone = '\0';
        struct in_addr a4;
        struct in6_addr a6;
        if (inet_pton(AF_INET, text, &a4) == 1) {
            key[0] = THROTTLE_KIND_IP4;
            memcpy(key + 1, &a4, 4);
            return 5;
        }
        if (inet_pton(AF_INET6, text, &a6) == 1) {
            if (IN6_IS_ADDR_V4MAPPED(&a6)) {
                key[0] = THROTTLE_KIND_IP4;
                memcpy(key + 1, a6.s6_addr + 12, 4);
                return 5;
            }
            key[0] = THROTTLE_KIND_IP6;
            memcpy(key + 1, a6.s6_addr, 8);
            return 9;
        }
    }
    len = strnlen(ip, THROTTLE_KEY_MAX - 1);
    key[0] = THROTTLE_KIND_IP_TEXT;
    memcpy(key + 1, ip, len);
    return len + 1;
}

static size_t throttle_key_account(const char *user, uint8_t key[THROTTLE_KEY_MAX])
{
    size_t len = strnlen(user, THROTTLE_KEY_MAX - 1);
    key[0] = THROTTLE_KIND_ACCOUNT;
    memcpy(key + 1, user, len);
    return len + 1;
}

/* ---- table -------------------------------------------------------------- */

static size_t throttle_max_entries(const struct throttle *t)
{
    return t->params.max_entries != 0 ? t->params.max_entries : THROTTLE_DEFAULT_MAX_ENTRIES;
}

static struct throttle_entry *throttle_find(struct throttle *t, const uint8_t *key, size_t len,
                                            uint64_t hash)
{
    for (struct throttle_entry *e = t->buckets[hash & (t->bucket_count - 1)]; e != NULL;
         e = e->bucket_next) {
        if (e->hash == hash && e->key_len == len && memcmp(e->key, key, len) == 0)
            return e;
    }
    return NULL;
}

static void throttle_lru_unlink(struct throttle *t, struct throttle_entry *e)
{
    if (e->lru_prev != NULL)
        e->lru_prev->lru_next = e->lru_next;
    else
        t->lru_oldest = e->lru_next;
    if (e->lru_next != NULL)
        e->lru_next->lru_prev = e->lru_prev;
    else
        t->lru_newest = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void throttle_lru_append(struct throttle *t, struct throttle_entry *e)
{
    e->lru_next = NULL;
    e->lru_prev = t->lru_newest;
    if (t->lru_newest != NULL)
        t->lru_newest->lru_next = e;
    else
        t->lru_oldest = e;
    t->lru_newest = e;
}

static void throttle_remove(struct throttle *t, struct throttle_entry *e)
{
    struct throttle_entry **pp = &t->buckets[e->hash & (t->bucket_count - 1)];
    while (*pp != e)
        pp = &(*pp)->bucket_next;
    *pp = e->bucket_next;
    throttle_lru_unlink(t, e);
    t->entry_count--;
    free(e);
}

/* Double the bucket array while it is smaller than the entry count and the
 * bound allows; an allocation failure only leaves chains a bit longer. */
static void throttle_grow(struct throttle *t)
{
    size_t limit = throttle_max_entries(t);
    if (t->entry_count < t->bucket_count || t->bucket_count >= limit)
        return;
    size_t n = t->bucket_count * 2;
    struct throttle_entry **b = calloc(n, sizeof(*b));
    if (b == NULL)
        return;
    for (size_t i = 0; i < t->bucket_count; i++) {
        struct throttle_entry *e = t->buckets[i];
        while (e != NULL) {
            struct throttle_entry *next = e->bucket_next;
            e->bucket_next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->bucket_count = n;
}

/* Make room for one more entry: drop the least recently failing entry that
 * is not locked out among the oldest few, else simply the oldest. */
static void throttle_evict(struct throttle *t, uint64_t now_ms)
{
    size_t limit = throttle_max_entries(t);
    while (t->entry_count >= limit && t->lru_oldest != NULL) {
        struct throttle_entry *victim = t->lru_oldest;
        struct throttle_entry *e = t->lru_oldest;
        for (int i = 0; e != NULL && i < THROTTLE_EVICT_SCAN; i++, e = e->lru_next) {
            if (e->locked_until <= now_ms) {
                victim = e;
                break;
            }
        }
        throttle_remove(t, victim);
    }
}

static struct throttle_entry *throttle_get_or_add(struct throttle *t, const uint8_t *key,
                                                  size_t len, uint64_t now_ms)
{
    uint64_t hash = throttle_siphash(t->sip_key, key, len);
    struct throttle_entry *e = throttle_find(t, key, len, hash);
    if (e != NULL)
        return e;
    throttle_evict(t, now_ms);
    e = calloc(1, sizeof(*e) + len);
    if (e == NULL)
        return NULL;
    e->hash = hash;
    e->key_len = (uint16_t)len;
    memcpy(e->key, key, len);
    size_t i = hash & (t->bucket_count - 1);
    e->bucket_next = t->buckets[i];
    t->buckets[i] = e;
    throttle_lru_append(t, e);
    t->entry_count++;
    throttle_grow(t);
    return e;
}

/* A lockout that has run out ends the series: the client starts afresh. */
static void throttle_expire(struct throttle_entry *e, uint64_t now_ms)
{
    if (e->locked_until != 0 && e->locked_until <= now_ms) {
        e->locked_until = 0;
        e->failures = 0;
    }
}

/* ---- public ------------------------------------------------------------- */

struct throttle *throttle_new(const struct throttle_params *p)
{
    struct throttle *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->params = *p;
    t->bucket_count = THROTTLE_MIN_BUCKETS;
    t->buckets = calloc(t->bucket_count, sizeof(*t->buckets));
    uint8_t *k = t->sip_key;
    size_t left = sizeof(t->sip_key);
    while (t->buckets != NULL && left > 0) {
        ssize_t n = getrandom(k, left, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        k += n;
        left -= (size_t)n;
    }
    if (t->buckets == NULL || left > 0 || pthread_mutex_init(&t->mutex, NULL) != 0) {
        free(t->buckets);
        free(t);
        return NULL;
    }
    return t;
}

void throttle_free(struct throttle *t)
{
    if (t == NULL)
        return;
    struct throttle_entry *e = t->lru_oldest;
    while (e != NULL) {
        struct throttle_entry *next = e->lru_next;
        free(e);
        e = next;
    }
    free(t->buckets);
    pthread_mutex_destroy(&t->mutex);
    free(t);
}

void throttle_set_params(struct throttle *t, const struct throttle_params *p)
{
    pthread_mutex_lock(&t->mutex);
    t->params = *p;
    pthread_mutex_unlock(&t->mutex);
}

/* Whether e is locked at now_ms; raises *until to its end. */
static bool throttle_entry_is_locked(struct throttle *t, const uint8_t *key, size_t len,
                                     uint64_t now_ms, uint64_t *until)
{
    uint64_t hash = throttle_siphash(t->sip_key, key, len);
    struct throttle_entry *e = throttle_find(t, key, len, hash);
    if (e == NULL)
        return false;
    throttle_expire(e, now_ms);
    if (e->locked_until == 0)
        return false;
    if (e->locked_until > *until)
        *until = e->locked_until;
    return true;
}

bool throttle_is_locked(struct throttle *t, const char *ip, const char *user, uint64_t now_ms,
                        uint64_t *until_ms)
{
    uint8_t key[THROTTLE_KEY_MAX];
    uint64_t until = 0;
    bool is_locked = false;
    pthread_mutex_lock(&t->mutex);
    if (ip != NULL) {
        size_t len = throttle_key_ip(ip, key);
        is_locked |= throttle_entry_is_locked(t, key, len, now_ms, &until);
    }
    if (user != NULL && user[0] != '\0') {
        size_t len = throttle_key_account(user, key);
        is_locked |= throttle_entry_is_locked(t, key, len, now_ms, &until);
    }
    pthread_mutex_unlock(&t->mutex);
    if (is_locked && until_ms != NULL)
        *until_ms = until;
    return is_locked;
}

/* Count one failure on e; returns its failure count in the window. */
static uint32_t throttle_entry_fail(struct throttle *t, struct throttle_entry *e,
                                    uint32_t lockout_failures, uint64_t now_ms, bool *locked_now)
{
    throttle_expire(e, now_ms);
    /* The series ends once window_ms passes without a failure: a slow,
     * steady guesser keeps its count (and its delay) instead of starting
     * over every window. */
    if (e->failures > 0 && now_ms - e->last_failure_at >= t->params.window_ms)
        e->failures = 0;
    if (e->failures < UINT32_MAX)
        e->failures++;
    e->last_failure_at = now_ms;
    throttle_lru_unlink(t, e);
    throttle_lru_append(t, e);
    if (lockout_failures != 0 && e->failures >= lockout_failures && e->locked_until == 0) {
        e->locked_until = now_ms + t->params.lockout_ms;
        if (e->locked_until == 0) /* 0 means "not locked": keep it a lockout */
            e->locked_until = 1;
        *locked_now = true;
    }
    return e->failures;
}

uint32_t throttle_record_failure(struct throttle *t, const char *ip, const char *user,
                                 uint64_t now_ms, bool *locked_now)
{
    uint8_t key[THROTTLE_KEY_MAX];
    uint32_t n = 0;
    bool is_new_lock = false;
    pthread_mutex_lock(&t->mutex);
    if (ip != NULL) {
        size_t len = throttle_key_ip(ip, key);
        struct throttle_entry *e = throttle_get_or_add(t, key, len, now_ms);
        if (e != NULL) {
            uint32_t c =
                throttle_entry_fail(t, e, t->params.ip_lockout_failures, now_ms, &is_new_lock);
            n = c > n ? c : n;
        }
    }
    if (user != NULL && user[0] != '\0') {
        size_t len = throttle_key_account(user, key);
        struct throttle_entry *e = throttle_get_or_add(t, key, len, now_ms);
        if (e != NULL) {
            uint32_t c = throttle_entry_fail(t, e, t->params.account_lockout_failures, now_ms,
                                             &is_new_lock);
            n = c > n ? c : n;
        }
    }
    /* failure_delay_ms << (n - 1), capped: computed in 64 bits with the
     * shift bounded, so no count can overflow it. */
    uint64_t delay = 0;
    if (n > 0) {
        unsigned shift = n - 1 < 32 ? n - 1 : 32;
        delay = (uint64_t)t->params.failure_delay_ms << shift;
        if (delay > t->params.max_delay_ms)
            delay = t->params.max_delay_ms;
    }
    pthread_mutex_unlock(&t->mutex);
    if (locked_now != NULL)
        *locked_now = is_new_lock;
    return (uint32_t)delay;
}

void throttle_record_success(struct throttle *t, const char *ip, const char *user)
{
    uint8_t key[THROTTLE_KEY_MAX];
    pthread_mutex_lock(&t->mutex);
    for (int i = 0; i < 2; i++) {
        size_t len;
        if (i == 0 && ip != NULL)
            len = throttle_key_ip(ip, key);
        else if (i == 1 && user != NULL && user[0] != '\0')
            len = throttle_key_account(user, key);
        else
            continue;
        uint64_t hash = throttle_siphash(t->sip_key, key, len);
        struct throttle_entry *e = throttle_find(t, key, len, hash);
        /* A running lockout is not lifted by a success (none can happen
         * through auth.c, which refuses before checking the password). */
        if (e != NULL && e->locked_until == 0)
            throttle_remove(t, e);
    }
    pthread_mutex_unlock(&t->mutex);
}

/* ---- admin view ----------------------------------------------------------- */

static void throttle_key_text(const struct throttle_entry *e, char *out, size_t size,
                              const char **kind)
{
    const uint8_t *k = e->key;
    switch (k[0]) {
    case THROTTLE_KIND_IP4:
        *kind = "ip";
        inet_ntop(AF_INET, k + 1, out, (socklen_t)size);
        return;
    case THROTTLE_KIND_IP6: {
        *kind = "ip";
        uint8_t a[16] = {0};
        memcpy(a, k + 1, 8);
        char text[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, a, text, sizeof(text));
        snprintf(out, size, "%s/64", text);
        return;
    }
    case THROTTLE_KIND_IP_TEXT:
        *kind = "ip";
        break;
    default:
        *kind = "account";
        break;
    }
    size_t n = (size_t)e->key_len - 1;
    if (n > size - 1)
        n = size - 1;
    memcpy(out, k + 1, n);
    out[n] = '\0';
}

void throttle_list_locked(struct throttle *t, uint64_t now_ms,
                          void (*cb)(const char *kind, const char *what, uint64_t left_ms,
                                     uint32_t failures, void *arg),
                          void *arg)
{
    pthread_mutex_lock(&t->mutex);
    for (struct throttle_entry *e = t->lru_newest; e != NULL; e = e->lru_prev) {
        if (e->locked_until <= now_ms)
            continue;
        char what[THROTTLE_KEY_MAX + 8];
        const char *kind;
        throttle_key_text(e, what, sizeof(what), &kind);
        cb(kind, what, e->locked_until - now_ms, e->failures, arg);
    }
    pthread_mutex_unlock(&t->mutex);
}

bool throttle_unlock(struct throttle *t, const char *ip_or_user)
{
    uint8_t key[THROTTLE_KEY_MAX];
    bool found = false;
    pthread_mutex_lock(&t->mutex);
    /* as an address (v6 by its /64; "2001:db8::/64" accepted), then as an account */
    char ip[INET6_ADDRSTRLEN + 4];
    snprintf(ip, sizeof(ip), "%s", ip_or_user);
    char *slash = strchr(ip, '/');
    if (slash != NULL)
        *slash = '\0';
    for (int pass = 0; pass < 2; pass++) {
        size_t len = pass == 0 ? throttle_key_ip(ip, key) : throttle_key_account(ip_or_user, key);
        if (pass == 0 && key[0] == THROTTLE_KIND_IP_TEXT)
            continue;
        struct throttle_entry *e =
            throttle_find(t, key, len, throttle_siphash(t->sip_key, key, len));
        if (e != NULL && (e->locked_until != 0 || e->failures != 0)) {
            e->locked_until = 0;
            e->failures = 0;
            found = true;
        }
    }
    pthread_mutex_unlock(&t->mutex);
    return found;
}

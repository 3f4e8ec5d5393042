/* password.c — yescrypt hashes through libcrypt (crypt_gensalt_rn "$y$",
 * crypt_rn with a heap struct crypt_data) and random passwords, with all
 * randomness from getrandom(2).
 * Contract: slow by design (tens of ms per hash), so callers stay off loop
 * threads; password_verify answers false on every error. Never logs, stores
 * or keeps a password: every copy (crypt_data holds one) is wiped. */
#include "auth/password.h"

#include <crypt.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* Letters and digits without the look-alikes 0/O, 1/l/I: an admin reads the
 * generated password off a terminal and types it into a printer's panel. */
static const char password_alphabet[] = "ABCDEFGHJKLMNPQRSTUVWXYZ"
                                        "abcdefghijkmnopqrstuvwxyz"
                                        "23456789";

/* Salt input for crypt_gensalt_rn: libxcrypt uses at most 32 bytes of it for
 * yescrypt (a 256-bit salt is far past what uniqueness needs). */
#define PASSWORD_SALT_BYTES 32

/* Fill buf completely from the kernel CSPRNG; blocks only until the pool is
 * initialised at boot. Returns 0 or -1. */
static int password_random_bytes(void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* crypt_rn into a zeroed heap crypt_data (about 32 KiB: too big for a worker
 * thread's stack on every platform we target). On success copies the hash
 * into out (out_size bytes) and returns 0. The crypt_data, which holds a
 * copy of the passphrase, is wiped before it is freed. */
static int password_crypt(const char *password, const char *setting, char *out, size_t out_size)
{
    struct crypt_data *cd = calloc(1, sizeof(*cd));
    if (cd == NULL)
        return -1;
    int rc = -1;
    const char *hash = crypt_rn(password, setting, cd, (int)sizeof(*cd));
    /* libcrypt signals failure with NULL or a "*0"/"*1" token. */
    if (hash != NULL && hash[0] == '$') {
        size_t len = strlen(hash);
        if (len < out_size) {
            memcpy(out, hash, len + 1);
            rc = 0;
        }
    }
    explicit_bzero(cd, sizeof(*cd));
    free(cd);
    return rc;
}

int password_hash(const char *password, char out[PASSWORD_HASH_SIZE])
{
    if (password == NULL || out == NULL || strlen(password) >= CRYPT_MAX_PASSPHRASE_SIZE)
        return -1;
    uint8_t salt[PASSWORD_SALT_BYTES];
    char setting[CRYPT_GENSALT_OUTPUT_SIZE];
    if (password_random_bytes(salt, sizeof(salt)) < 0)
        return -1;
    /* count 0: libcrypt's default yescrypt cost, the one /etc/shadow uses. */
    const char *s = crypt_gensalt_rn("$y$", 0, (const char *)salt, (int)sizeof(salt), setting,
                                     (int)sizeof(setting));
    explicit_bzero(salt, sizeof(salt));
    if (s == NULL || s[0] != '$')
        return -1;
    return password_crypt(password, setting, out, PASSWORD_HASH_SIZE);
}

/* Equal lengths and equal bytes, without an early exit: the time taken does
 * not depend on where the first difference is. */
static bool password_equal_ct(const char *a, const char *b, size_t len)
{
    volatile uint8_t diff = 0;
    for (size_t i = 0; i < len; i++)
        diff |= (uint8_t)a[i] ^ (uint8_t)b[i];
    return diff == 0;
}

bool password_verify(const char *password, const char *hash)
{
    if (password == NULL || hash == NULL || hash[0] != '$')
        return false;
    size_t hash_len = strnlen(hash, PASSWORD_HASH_SIZE);
    if (hash_len >= PASSWORD_HASH_SIZE || strlen(password) >= CRYPT_MAX_PASSPHRASE_SIZE)
        return false;
    char computed[PASSWORD_HASH_SIZE];
    if (password_crypt(password, hash, computed, sizeof(computed)) < 0)
        return false;
    /* The lengths are public (they follow from the stored hash's format);
     * the bytes are compared in constant time. */
    bool is_equal = strlen(computed) == hash_len && password_equal_ct(computed, hash, hash_len);
    explicit_bzero(computed, sizeof(computed));
    return is_equal;
}

int password_generate(char *out, size_t out_size, size_t len)
{
    if (out == NULL || len == 0 || out_size <= len)
        return -1;
    const size_t n = sizeof(password_alphabet) - 1;
    /* Rejection sampling: bytes >= limit are dropped so that every character
     * of the alphabet is equally likely (limit is a multiple of n). */
    const unsigned limit = 256 - 256 % n;
    uint8_t buf[64];
    size_t have = 0, used = 0, pos = 0;
    while (pos < len) {
        if (used == have) {
            if (password_random_bytes(buf, sizeof(buf)) < 0) {
                explicit_bzero(buf, sizeof(buf));
                explicit_bzero(out, out_size);
                return -1;
            }
            have = sizeof(buf);
            used = 0;
        }
        uint8_t b = buf[used++];
        if (b < limit)
            out[pos++] = password_alphabet[b % n];
    }
    out[len] = '\0';
    explicit_bzero(buf, sizeof(buf));
    return 0;
}

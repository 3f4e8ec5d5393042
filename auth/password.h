/* password.h — yescrypt password hashes through libcrypt, as /etc/shadow
 * uses. Deliberately slow (tens of ms): never call on a loop thread. */
#ifndef SMARTHOST_PASSWORD_H
#define SMARTHOST_PASSWORD_H

#include <stdbool.h>
#include <stddef.h>

#define PASSWORD_HASH_SIZE 256

/* Hash password with a fresh random salt ("$y$..."). Returns 0 or -1. */
int password_hash(const char *password, char out[PASSWORD_HASH_SIZE]);

/* true when password matches hash; compares in constant time. */
bool password_verify(const char *password, const char *hash);

/* Write a strong random password (letters and digits, no look-alikes) of
 * len characters plus NUL into out (out_size > len). Returns 0 or -1. */
int password_generate(char *out, size_t out_size, size_t len);

#endif

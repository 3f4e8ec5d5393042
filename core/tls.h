/* tls.h — GnuTLS server sessions over a libuv stream, without owning the
 * stream: the caller feeds ciphertext it read (tls_conn_feed) and gets back
 * ciphertext to write through a callback, plaintext through another.
 *
 * Credentials and per-listener priority strings live in a refcounted
 * struct tls_server_ctx, so SIGHUP can load new certificates while open
 * sessions keep the ones they started with. A tls_conn is used by one loop
 * thread only; a tls_server_ctx is shared (refcount is atomic). */
#ifndef SMARTHOST_TLS_H
#define SMARTHOST_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"

struct tls_server_ctx;

/* Load cert/key pairs from cfg [tls] and every listener's priority string.
 * Returns 0, or -1 with a sentence naming the file or listener in err.
 * Caller owns one reference. */
int tls_server_ctx_new(const struct config *cfg, struct tls_server_ctx **out, char *err,
                       size_t err_size);
struct tls_server_ctx *tls_server_ctx_ref(struct tls_server_ctx *ctx);
void tls_server_ctx_unref(struct tls_server_ctx *ctx);

/* Callbacks into the owner of the stream. */
struct tls_conn_ops {
    /* ciphertext to send; the bytes are borrowed for the call only */
    void (*write)(void *owner, const uint8_t *data, size_t len);
    /* decrypted application data */
    void (*plaintext)(void *owner, const uint8_t *data, size_t len);
    /* handshake finished (ok = true) or failed (ok = false, reason set) */
    void (*handshake_done)(void *owner, bool ok, const char *reason);
};

struct tls_conn;

/* A new server session for listener_index (its priority string). The conn
 * holds a ctx reference. Caller frees with tls_conn_free. NULL on failure. */
struct tls_conn *tls_conn_new(struct tls_server_ctx *ctx, size_t listener_index,
                              const struct tls_conn_ops *ops, void *owner);
void tls_conn_free(struct tls_conn *c);

/* Begin the handshake (nothing is sent by a server until the client hello). */
void tls_conn_start(struct tls_conn *c);
/* Ciphertext read from the stream: drives the handshake, then delivers
 * plaintext. Returns 0; TLS_CONN_CLOSED when the peer's close_notify came,
 * after the plaintext before it was delivered (nothing more will: its end
 * of input); or -1 on a fatal TLS error (close the stream). */
#define TLS_CONN_CLOSED 1
int tls_conn_feed(struct tls_conn *c, const uint8_t *data, size_t len);
/* Encrypt and write application data. is_last: close_notify follows in the
 * same write, so the last reply (221, 421) and the end of the session reach
 * the client in one segment; nothing can be sent after it. Returns 0 or -1. */
int tls_conn_send(struct tls_conn *c, const uint8_t *data, size_t len, bool is_last);
/* Send close_notify (best effort; once). */
void tls_conn_bye(struct tls_conn *c);

bool tls_conn_is_established(const struct tls_conn *c);
/* "TLS1.3", "TLS_AES_256_GCM_SHA384"-style names; borrowed until free. */
const char *tls_conn_version(const struct tls_conn *c);
const char *tls_conn_cipher(const struct tls_conn *c);

#endif

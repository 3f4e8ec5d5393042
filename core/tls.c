/* tls.c — GnuTLS server sessions driven by memory buffers: the loop feeds
 * ciphertext in, pushes come back out through ops->write in one batch per
 * call. Owns credentials (refcounted, swapped whole on reload) and the
 * per-listener priority caches. Never touches a socket and never blocks. */
#include "core/tls.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/gnutls.h>

#include "core/log.h"

struct tls_server_ctx {
    atomic_int refs;
    gnutls_certificate_credentials_t creds;
    gnutls_datum_t ticket_key;
    gnutls_priority_t priorities[CONFIG_MAX_LISTENERS];
    size_t priority_count;
};

struct tls_conn {
    struct tls_server_ctx *ctx;
    gnutls_session_t session;
    const struct tls_conn_ops *ops;
    void *owner;
    bool is_established;
    bool is_failed;
    bool is_ticket_due; /* TLS 1.3: the session ticket goes out with our first record */
    bool is_bye_sent;
    /* ciphertext received, not yet pulled by GnuTLS */
    uint8_t *in;
    size_t in_len, in_off, in_cap;
    /* ciphertext pushed by GnuTLS during the current call */
    uint8_t *out;
    size_t out_len, out_cap;
    char version[16];
    char cipher[64];
};

static void tls_ctx_destroy(struct tls_server_ctx *ctx)
{
    for (size_t i = 0; i < ctx->priority_count; i++)
        if (ctx->priorities[i] != NULL)
            gnutls_priority_deinit(ctx->priorities[i]);
    if (ctx->creds != NULL)
        gnutls_certificate_free_credentials(ctx->creds);
    if (ctx->ticket_key.data != NULL)
        gnutls_memset(ctx->ticket_key.data, 0, ctx->ticket_key.size), gnutls_free(ctx->ticket_key.data);
    free(ctx);
}

static int tls_ctx_add_pair(struct tls_server_ctx *ctx, const char *cert, const char *key,
                            char *err, size_t err_size)
{
    int r = gnutls_certificate_set_x509_key_file2(ctx->creds, cert, key, GNUTLS_X509_FMT_PEM,
                                                  NULL, 0);
    if (r < 0) {
        snprintf(err, err_size, "cannot load certificate %s with key %s: %s", cert, key,
                 gnutls_strerror(r));
        return -1;
    }
    return 0;
}

int tls_server_ctx_new(const struct config *cfg, struct tls_server_ctx **out, char *err,
                       size_t err_size)
{
    struct tls_server_ctx *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL) {
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    atomic_init(&ctx->refs, 1);
    if (gnutls_certificate_allocate_credentials(&ctx->creds) < 0) {
        snprintf(err, err_size, "cannot allocate TLS credentials");
        goto fail;
    }
    if (tls_ctx_add_pair(ctx, cfg->cert_file, cfg->key_file, err, err_size) < 0)
        goto fail;
    if (cfg->cert2_file != NULL && cfg->cert2_file[0] != '\0' &&
        tls_ctx_add_pair(ctx, cfg->cert2_file, cfg->key2_file, err, err_size) < 0)
        goto fail;
    /* Session tickets let a device that reconnects skip the full handshake. */
    if (gnutls_session_ticket_key_generate(&ctx->ticket_key) < 0) {
        snprintf(err, err_size, "cannot generate a session ticket key");
        goto fail;
    }
    for (size_t i = 0; i < cfg->listener_count; i++) {
        const char *where = NULL;
        const char *prio = cfg->listeners[i].tls_priority;
        int r = gnutls_priority_init(&ctx->priorities[i], prio, &where);
        ctx->priority_count = i + 1;
        if (r < 0) {
            ctx->priorities[i] = NULL;
            snprintf(err, err_size, "listener %s: bad tls_priority \"%s\" near \"%s\": %s",
                     cfg->listeners[i].name, prio, where != NULL ? where : "", gnutls_strerror(r));
            goto fail;
        }
    }
    *out = ctx;
    return 0;
fail:
    tls_ctx_destroy(ctx);
    return -1;
}

struct tls_server_ctx *tls_server_ctx_ref(struct tls_server_ctx *ctx)
{
    atomic_fetch_add(&ctx->refs, 1);
    return ctx;
}

void tls_server_ctx_unref(struct tls_server_ctx *ctx)
{
    if (ctx != NULL && atomic_fetch_sub(&ctx->refs, 1) == 1)
        tls_ctx_destroy(ctx);
}

static ssize_t tls_on_push(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
    struct tls_conn *c = ptr;
    if (c->out_len + len > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + len)
            cap *= 2;
        uint8_t *p = realloc(c->out, cap);
        if (p == NULL) {
            gnutls_transport_set_errno(c->session, ENOMEM);
            return -1;
        }
        c->out = p;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    return (ssize_t)len;
}

static ssize_t tls_on_pull(gnutls_transport_ptr_t ptr, void *data, size_t len)
{
    struct tls_conn *c = ptr;
    size_t avail = c->in_len - c->in_off;
    if (avail == 0) {
        gnutls_transport_set_errno(c->session, EAGAIN);
        return -1;
    }
    if (len > avail)
        len = avail;
    memcpy(data, c->in + c->in_off, len);
    c->in_off += len;
    if (c->in_off == c->in_len)
        c->in_off = c->in_len = 0;
    return (ssize_t)len;
}

static int tls_on_pull_timeout(gnutls_transport_ptr_t ptr, unsigned int ms)
{
    struct tls_conn *c = ptr;
    return c->in_len > c->in_off ? 1 : 0;
}

/* Hand everything GnuTLS pushed during this call to the owner in one write. */
static void tls_flush(struct tls_conn *c)
{
    if (c->out_len > 0) {
        size_t n = c->out_len;
        c->out_len = 0;
        c->ops->write(c->owner, c->out, n);
    }
    /* An idle session keeps no ciphertext buffers. */
    if (c->out_cap > 16384) {
        free(c->out);
        c->out = NULL;
        c->out_cap = 0;
    }
}

struct tls_conn *tls_conn_new(struct tls_server_ctx *ctx, size_t listener_index,
                              const struct tls_conn_ops *ops, void *owner)
{
    if (listener_index >= ctx->priority_count)
        return NULL;
    struct tls_conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    /* A TLS 1.3 ticket would leave as a write of its own between the handshake
     * and our first reply: tls_conn_send sends it with that reply instead. */
    if (gnutls_init(&c->session, GNUTLS_SERVER | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL |
                                     GNUTLS_NO_AUTO_SEND_TICKET) < 0) {
        free(c);
        return NULL;
    }
    c->ctx = tls_server_ctx_ref(ctx);
    c->ops = ops;
    c->owner = owner;
    if (gnutls_priority_set(c->session, ctx->priorities[listener_index]) < 0 ||
        gnutls_credentials_set(c->session, GNUTLS_CRD_CERTIFICATE, ctx->creds) < 0 ||
        gnutls_session_ticket_enable_server(c->session, &ctx->ticket_key) < 0) {
        tls_conn_free(c);
        return NULL;
    }
    gnutls_certificate_server_set_request(c->session, GNUTLS_CERT_IGNORE);
    gnutls_transport_set_ptr(c->session, c);
    gnutls_transport_set_push_function(c->session, tls_on_push);
    gnutls_transport_set_pull_function(c->session, tls_on_pull);
    gnutls_transport_set_pull_timeout_function(c->session, tls_on_pull_timeout);
    return c;
}

void tls_conn_free(struct tls_conn *c)
{
    if (c == NULL)
        return;
    gnutls_deinit(c->session);
    tls_server_ctx_unref(c->ctx);
    free(c->in);
    free(c->out);
    free(c);
}

void tls_conn_start(struct tls_conn *c)
{
    int r = gnutls_handshake(c->session); /* returns EAGAIN: no client hello yet */
    (void)r;
    tls_flush(c);
}

static void tls_record_names(struct tls_conn *c)
{
    const char *v = gnutls_protocol_get_name(gnutls_protocol_get_version(c->session));
    const char *s = gnutls_ciphersuite_get(c->session);
    snprintf(c->version, sizeof(c->version), "%s", v != NULL ? v : "unknown");
    snprintf(c->cipher, sizeof(c->cipher), "%s", s != NULL ? s : "unknown");
}

static int tls_in_append(struct tls_conn *c, const uint8_t *data, size_t len)
{
    if (c->in_off > 0 && c->in_off == c->in_len)
        c->in_off = c->in_len = 0;
    if (c->in_len + len > c->in_cap) {
        if (c->in_off > 0) {
            memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
            c->in_len -= c->in_off;
            c->in_off = 0;
        }
        if (c->in_len + len > c->in_cap) {
            size_t cap = c->in_cap ? c->in_cap : 4096;
            while (cap < c->in_len + len)
                cap *= 2;
            uint8_t *p = realloc(c->in, cap);
            if (p == NULL)
                return -1;
            c->in = p;
            c->in_cap = cap;
        }
    }
    memcpy(c->in + c->in_len, data, len);
    c->in_len += len;
    return 0;
}

int tls_conn_feed(struct tls_conn *c, const uint8_t *data, size_t len)
{
    if (c->is_failed)
        return -1;
    if (tls_in_append(c, data, len) < 0)
        return -1;
    if (!c->is_established) {
        int r = gnutls_handshake(c->session);
        tls_flush(c);
        if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
            return 0;
        if (r < 0) {
            c->is_failed = true;
            c->ops->handshake_done(c->owner, false, gnutls_strerror(r));
            return -1;
        }
        c->is_established = true;
        c->is_ticket_due = gnutls_protocol_get_version(c->session) == GNUTLS_TLS1_3;
        tls_record_names(c);
        c->ops->handshake_done(c->owner, true, NULL);
    }
    uint8_t buf[16384];
    for (;;) {
        ssize_t n = gnutls_record_recv(c->session, buf, sizeof(buf));
        tls_flush(c);
        if (n > 0) {
            c->ops->plaintext(c->owner, buf, (size_t)n);
            continue;
        }
        if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
            break;
        if (n == 0) /* close_notify */
            return TLS_CONN_CLOSED;
        if (!gnutls_error_is_fatal((int)n))
            continue; /* e.g. a TLS 1.3 post-handshake message already handled */
        c->is_failed = true;
        return -1;
    }
    /* Drop the buffer of a session that has gone quiet. */
    if (c->in_len == c->in_off && c->in_cap > 16384) {
        free(c->in);
        c->in = NULL;
        c->in_cap = c->in_len = c->in_off = 0;
    }
    return 0;
}

static void tls_send_bye(struct tls_conn *c)
{
    if (c->is_established && !c->is_failed && !c->is_bye_sent) {
        c->is_bye_sent = true;
        gnutls_bye(c->session, GNUTLS_SHUT_WR);
    }
}

int tls_conn_send(struct tls_conn *c, const uint8_t *data, size_t len, bool is_last)
{
    if (!c->is_established || c->is_failed || c->is_bye_sent)
        return -1;
    if (c->is_ticket_due) {
        c->is_ticket_due = false;
        int r = gnutls_session_ticket_send(c->session, 1, 0);
        if (r < 0) /* the client cannot resume: the session itself is fine */
            log_debug(NULL, "tls: no session ticket sent: %s", gnutls_strerror(r));
    }
    while (len > 0) {
        ssize_t n = gnutls_record_send(c->session, data, len);
        if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
            continue; /* our push never blocks; GnuTLS retries the buffered record */
        if (n < 0) {
            c->is_failed = true;
            tls_flush(c);
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    if (is_last)
        tls_send_bye(c);
    tls_flush(c);
    return 0;
}

void tls_conn_bye(struct tls_conn *c)
{
    tls_send_bye(c);
    tls_flush(c);
}

bool tls_conn_is_established(const struct tls_conn *c)
{
    return c->is_established;
}

const char *tls_conn_version(const struct tls_conn *c)
{
    return c->version;
}

const char *tls_conn_cipher(const struct tls_conn *c)
{
    return c->cipher;
}

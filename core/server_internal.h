/* server_internal.h — shared between core/server.c (loops, listeners, caps,
 * signals) and core/session_io.c (one connection: stream, TLS, engine,
 * worker jobs). Not a public header. */
#ifndef SMARTHOST_SERVER_INTERNAL_H
#define SMARTHOST_SERVER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "auth/auth.h"
#include "core/server.h"
#include "core/smtp_session.h"
#include "core/tls.h"

#define SERVER_MAX_SOCKETS (CONFIG_MAX_LISTENERS * CONFIG_MAX_ADDRESSES * 2)
#define SERVER_READ_BUF_SIZE 65536
#define SERVER_DRAIN_MS 30000

struct conn;

struct server_socket {
    int fd;                  /* bound, not yet listening: one per worker */
    size_t listener_index;
    char address[200];
};

struct worker {
    struct server *srv;
    size_t index;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wakeup;       /* commit completions, shutdown */
    uv_timer_t drain_timer;  /* hard deadline after SIGTERM */
    uv_tcp_t listeners[SERVER_MAX_SOCKETS];
    size_t listener_count;
    pthread_mutex_t lock;    /* guards done_head and is_stopping */
    struct conn *done_head;  /* commits finished on the committer thread */
    bool is_stopping;
    bool has_stopped_listening;
    struct conn *conns;      /* every open connection of this loop */
    uint8_t read_buf[SERVER_READ_BUF_SIZE]; /* one read at a time per loop */
};

struct ip_slot {
    char ip[64];
    unsigned count;
    struct ip_slot *next;
};

#define SERVER_IP_BUCKETS 1024

struct server {
    pthread_mutex_t lock;               /* guards cfg, tls across reloads */
    struct config *cfg;
    struct tls_server_ctx *tls;
    struct queue *queue;
    struct throttle *throttle;
    struct server_socket sockets[SERVER_MAX_SOCKETS];
    size_t socket_count;                /* per worker: each has its own fds */
    int *fds;                           /* worker_count * socket_count */
    struct worker *workers;
    size_t worker_count;
    atomic_uint_fast64_t next_session;
    /* connection caps, across all loops */
    pthread_mutex_t conn_lock;
    unsigned conn_total;
    struct ip_slot *ip_table[SERVER_IP_BUCKETS];
};

/* server.c: caps. Returns NULL if admitted, else the refusal sentence. */
const char *server_conn_admit(struct server *srv, const char *ip);
void server_conn_release(struct server *srv, const char *ip);

/* session_io.c */
void conn_accept(struct worker *w, uv_stream_t *listener, size_t listener_index);
void conn_on_commit_complete(struct conn *c);    /* on the loop, from wakeup */
void conn_shutdown(struct conn *c);              /* SIGTERM: idle ones close now */
void conn_force_close(struct conn *c);           /* drain deadline passed */
struct conn *conn_next(struct conn *c);
struct conn *conn_take_done_next(struct conn *c); /* done-list link */

#endif

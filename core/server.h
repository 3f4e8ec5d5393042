/* server.h — the daemon's network side: one libuv loop per thread, each with
 * its own SO_REUSEPORT socket per listener address, so the kernel spreads new
 * connections over every core; connection caps shared across threads;
 * SIGHUP reloads configuration and certificates, SIGTERM drains.
 *
 * server_bind runs first, as root (ports below 1024, the TLS key); the caller
 * then drops privileges, opens the queue and calls server_run. */
#ifndef SMARTHOST_SERVER_H
#define SMARTHOST_SERVER_H

#include <stddef.h>

#include "auth/throttle.h"
#include "core/config.h"
#include "core/queue.h"

struct server;

/* Takes ownership of cfg. Binds every listener address (threads sockets per
 * address) and loads the TLS credentials. Returns 0, or -1 with a sentence in
 * err. Caller frees with server_free. */
int server_bind(struct config *cfg, struct server **out, char *err, size_t err_size);

/* Run until SIGTERM/SIGINT has drained every session. queue and throttle
 * are borrowed. Returns 0 on a clean stop. */
int server_run(struct server *srv, struct queue *queue, struct throttle *throttle);

/* The configuration currently in force (borrowed until the next reload). */
const struct config *server_config(const struct server *srv);

void server_free(struct server *srv);

#endif

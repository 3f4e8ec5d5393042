/* runner.h — the queue runner: a thread with its own libuv loop that takes
 * due recipients from the queue, groups them by destination, resolves
 * (relay/dns.c) or hands them to the relayhost, delivers them
 * (relay/smtp_client.c), and records every outcome (relay/retry.c decides
 * delivered / deferred / bounced; relay/bounce.c writes the DSN, created in
 * the same transaction). The submission path never waits for it: database
 * work runs on libuv's worker pool, one job at a time on the runner's own
 * connection. */
#ifndef SMARTHOST_RELAY_RUNNER_H
#define SMARTHOST_RELAY_RUNNER_H

#include <stddef.h>

#include "core/config.h"
#include "core/queue.h"

struct relay_runner;

/* Start the runner with the [relay] settings of cfg (copied) on the
 * database at cfg->database. queue (NULL: none) is that database's open
 * queue, which must outlive the runner: its checkpointer thread then keeps
 * the WAL short for the runner's writes as well. Returns 0, or -1 with a
 * sentence in err (a bad credentials file, a resolver that cannot start). */
int relay_runner_start(const struct config *cfg, struct queue *queue, struct relay_runner **out,
                       char *err, size_t err_size);
/* Look at the queue again now (an admin acted). Thread-safe and cheap;
 * wakes coalesce. */
void relay_runner_wake(struct relay_runner *r);
/* A message was just committed: the queue's committed hook. Takes a copy
 * of it (c is borrowed for the call) for delivery at once, with no scan of
 * the queue nor read of its body; one it cannot take (larger than 128 KiB,
 * no room, owner or recipient ids not known) is left to a scan, which is
 * woken. Thread-safe. */
void relay_runner_offer(struct relay_runner *r, const struct queue_committed *c);
/* Start no new delivery, give the ones under way a grace period to finish,
 * then stop: whatever was not recorded stays queued and is tried again at
 * the next start. Frees r. NULL-safe. */
void relay_runner_stop(struct relay_runner *r);

#endif

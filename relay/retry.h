/* retry.h — the one place that decides what a delivery result means for a
 * recipient: delivered, deferred (and until when), or bounced; and the
 * retry schedule (exponential backoff up to a cap, until the maximum queue
 * lifetime). Pure: no I/O, no clock. */
#ifndef SMARTHOST_RELAY_RETRY_H
#define SMARTHOST_RELAY_RETRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "relay/dns.h"

enum retry_outcome {
    RETRY_DELIVERED = 0,
    RETRY_DEFER,
    RETRY_BOUNCE,
};
const char *retry_outcome_name(enum retry_outcome o); /* "delivered" "deferred" "bounced" */

struct retry_params {
    unsigned first_backoff_s;  /* first retry after this (default 300) */
    unsigned max_backoff_s;    /* doubling stops here (default 3600) */
    unsigned max_lifetime_s;   /* bounce when older than this (default 5 days) */
};

/* When to try again after the attempts-th failed attempt (1 = first). */
int64_t retry_next_at(const struct retry_params *p, unsigned attempts, int64_t now);
/* Has a message created at created_at outlived the queue lifetime? */
bool retry_is_expired(const struct retry_params *p, int64_t created_at, int64_t now);

/* An SMTP reply code (0 = local error, connection lost, timeout). */
enum retry_outcome retry_classify_reply(int code);
/* A DNS outcome; *status gets the enhanced status code for the DSN. */
enum retry_outcome retry_classify_dns(enum dns_status s, const char **status);
/* The enhanced status to report for a reply without one: "5.0.0" / "4.0.0",
 * and for a local error "4.4.1" (no answer from host). */
const char *retry_default_status(int code);

#endif

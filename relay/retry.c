/* retry.c — see retry.h. Which failure defers and which bounces is decided
 * here and nowhere else. */
#include "relay/retry.h"

const char *retry_outcome_name(enum retry_outcome o)
{
    switch (o) {
    case RETRY_DELIVERED: return "delivered";
    case RETRY_DEFER: return "deferred";
    case RETRY_BOUNCE: return "bounced";
    }
    return "?";
}

int64_t retry_next_at(const struct retry_params *p, unsigned attempts, int64_t now)
{
    uint64_t first = p->first_backoff_s ? p->first_backoff_s : 300;
    uint64_t cap = p->max_backoff_s ? p->max_backoff_s : 3600;
    if (cap < first)
        cap = first;
    uint64_t delay = first;
    for (unsigned i = 1; i < attempts && delay < cap; i++)
        delay *= 2;
    if (delay > cap)
        delay = cap;
    return now + (int64_t)delay;
}

bool retry_is_expired(const struct retry_params *p, int64_t created_at, int64_t now)
{
    uint64_t lifetime = p->max_lifetime_s ? p->max_lifetime_s : 5u * 24 * 3600;
    return now - created_at >= (int64_t)lifetime;
}

enum retry_outcome retry_classify_reply(int code)
{
    if (code >= 200 && code < 300)
        return RETRY_DELIVERED;
    if (code >= 500 && code < 600)
        return RETRY_BOUNCE;
    return RETRY_DEFER; /* 4xx, a local error, or a reply that makes no sense */
}

enum retry_outcome retry_classify_dns(enum dns_status s, const char **status)
{
    switch (s) {
    case DNS_OK: *status = "2.0.0"; return RETRY_DELIVERED;
    case DNS_NXDOMAIN: *status = "5.1.2"; return RETRY_BOUNCE;   /* bad destination system */
    case DNS_NODATA: *status = "5.4.4"; return RETRY_BOUNCE;     /* unable to route */
    case DNS_NULLMX: *status = "5.1.10"; return RETRY_BOUNCE;    /* RFC 7505 */
    case DNS_TEMPFAIL: *status = "4.4.3"; return RETRY_DEFER;    /* directory server failure */
    }
    *status = "4.4.3";
    return RETRY_DEFER;
}

const char *retry_default_status(int code)
{
    if (code == 0)
        return "4.4.1";
    if (code >= 200 && code < 300)
        return "2.0.0";
    if (code >= 500 && code < 600)
        return "5.0.0";
    return "4.0.0";
}

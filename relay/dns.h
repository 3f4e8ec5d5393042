/* dns.h — where to deliver mail for a domain: c-ares on a libuv loop.
 *
 * dns_route() resolves a domain the RFC 5321 §5.1 way: MX records, lowest
 * preference first and random order among equal preferences, then every
 * address of every exchanger (CNAMEs followed; an exchanger without an
 * address skipped). No MX → the domain's own A/AAAA (implicit MX). Null MX
 * ("0 .", RFC 7505) → DNS_NULLMX. The outcome is an enum; what it means for
 * the message (defer or bounce) is decided in relay/retry.c, not here. */
#ifndef SMARTHOST_RELAY_DNS_H
#define SMARTHOST_RELAY_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

#define DNS_MAX_HOSTS 16  /* exchangers kept per domain, in delivery order */
#define DNS_MAX_ADDRS 8   /* addresses kept per exchanger */

enum dns_status {
    DNS_OK = 0,      /* at least one host with at least one address */
    DNS_NXDOMAIN,    /* the domain does not exist: permanent */
    DNS_NODATA,      /* exists, but no MX and no usable A/AAAA: permanent */
    DNS_NULLMX,      /* "MX 0 ." — the domain accepts no mail: permanent 5.1.10 */
    DNS_TEMPFAIL,    /* SERVFAIL, REFUSED, timeout, no exchanger resolvable yet */
};

enum dns_family_policy {
    DNS_FAMILY_PREFER_V6 = 0, /* both, IPv6 addresses of a host first (default) */
    DNS_FAMILY_PREFER_V4,     /* both, IPv4 first */
    DNS_FAMILY_ONLY_V4,
    DNS_FAMILY_ONLY_V6,
};

struct dns_options {
    /* "" → /etc/resolv.conf; else a comma list "127.0.0.1:5353,[::1]:53". */
    const char *servers;
    enum dns_family_policy family;
    unsigned timeout_ms;      /* per try; default 5000 when 0 */
    unsigned tries;           /* default 2 when 0 */
};

struct dns_host {
    char name[256];           /* the exchanger (or the domain, if implicit) */
    uint16_t preference;
    size_t addr_count;
    struct sockaddr_storage addrs[DNS_MAX_ADDRS]; /* port 0; family order applied */
};

struct dns_route {
    enum dns_status status;
    bool is_implicit_mx;      /* no MX: the domain's own addresses */
    char detail[256];         /* human words for queue show: "SERVFAIL looking up MX for x" */
    size_t host_count;
    struct dns_host hosts[DNS_MAX_HOSTS];
};

struct dns_resolver;

/* A resolver bound to loop (call only from that loop's thread). Returns 0, or
 * a negative code with a sentence in err (bad server list, c-ares init). */
int dns_resolver_new(uv_loop_t *loop, const struct dns_options *opt, struct dns_resolver **out,
                     char *err, size_t err_size);
/* Cancel pending lookups (their callbacks run with DNS_TEMPFAIL, detail
 * "cancelled") and close the handles; memory is released once the loop has
 * run the close callbacks. */
void dns_resolver_close(struct dns_resolver *r);

/* route is valid only during the callback. */
typedef void (*dns_route_cb)(const struct dns_route *route, void *arg);
/* Returns 0 (cb will run exactly once, never from inside this call) or a
 * negative code (cb will not run). domain: ASCII, no trailing dot needed. */
int dns_route(struct dns_resolver *r, const char *domain, dns_route_cb cb, void *arg);

/* ---- pure helpers, exposed for unit tests ---- */
struct dns_mx {
    char name[256];
    uint16_t preference;
};
/* Sort by preference ascending; shuffle each run of equal preference using
 * rand_fn (returns a uniformly random value below bound). */
void dns_mx_order(struct dns_mx *mx, size_t count, uint32_t (*rand_fn)(uint32_t bound, void *arg),
                  void *arg);
/* The MX records of a DNS answer (untrusted bytes) into mx[0..max), in the
 * answer's order; records whose exchanger is not a host name (any byte but
 * letters, digits, '-', '.', '_', or too long) are left out. Returns
 * ARES_SUCCESS, or c-ares' status (ARES_ENODATA: no MX record; ARES_EBADRESP:
 * malformed) with *count 0. */
int dns_mx_parse(const unsigned char *abuf, int alen, struct dns_mx *mx, size_t max,
                 size_t *count);
/* true when the MX set is the RFC 7505 null MX (single record, target "."). */
bool dns_mx_is_null(const struct dns_mx *mx, size_t count);

#endif

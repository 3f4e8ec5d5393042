/* dns.c — see dns.h. c-ares drives its own sockets; we watch them with one
 * uv_poll_t each (ARES_OPT_SOCK_STATE_CB) and drive its timeouts with one
 * uv_timer_t. A lookup: MX query → per exchanger ares_getaddrinfo (DNS only,
 * CNAMEs followed) → one dns_route delivered from a zero timer, so the
 * callback never runs inside dns_route() or inside c-ares. */
#include "relay/dns.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <ares.h>
#include <netinet/in.h>

#include "core/log.h"

struct dns_poll {
    uv_poll_t handle;
    struct dns_resolver *r;
    ares_socket_t fd;
    struct dns_poll *next;
};

struct dns_resolver {
    uv_loop_t *loop;
    ares_channel channel;
    bool has_channel;
    uv_timer_t timer;
    struct dns_poll *polls;
    enum dns_family_policy family;
    size_t refs;           /* 1 (open) + lookups + handles not yet closed */
    bool is_closing;
};

struct dns_lookup {
    struct dns_resolver *r;
    char domain[256];
    dns_route_cb cb;
    void *arg;
    struct dns_route route;
    struct dns_mx mx[DNS_MAX_HOSTS];
    size_t mx_count;
    size_t pending;        /* address lookups under way */
    bool has_tempfail;     /* an address lookup failed temporarily */
    char tempfail_detail[256];
    bool is_finished;
    uv_timer_t done_timer; /* delivers the route from the loop */
};

static void dns_resolver_unref(struct dns_resolver *r)
{
    if (--r->refs > 0)
        return;
    if (r->has_channel)
        ares_destroy(r->channel);
    free(r);
}

/* ---- pure helpers ---------------------------------------------------------- */

static int dns_mx_compare(const void *a, const void *b)
{
    const struct dns_mx *x = a, *y = b;
    return (int)x->preference - (int)y->preference;
}

void dns_mx_order(struct dns_mx *mx, size_t count, uint32_t (*rand_fn)(uint32_t bound, void *arg),
                  void *arg)
{
    if (count < 2)
        return;
    /* shuffle the whole set first, then a stable sort by preference keeps
     * the random order inside each preference (insertion sort: stable, and
     * the set is at most DNS_MAX_HOSTS long) */
    for (size_t i = count - 1; i > 0; i--) {
        size_t j = rand_fn((uint32_t)(i + 1), arg);
        struct dns_mx t = mx[i];
        mx[i] = mx[j];
        mx[j] = t;
    }
    for (size_t i = 1; i < count; i++) {
        struct dns_mx t = mx[i];
        size_t j = i;
        while (j > 0 && dns_mx_compare(&mx[j - 1], &t) > 0) {
            mx[j] = mx[j - 1];
            j--;
        }
        mx[j] = t;
    }
}

static bool dns_name_is_root(const char *name)
{
    return name[0] == '\0' || strcmp(name, ".") == 0;
}

bool dns_mx_is_null(const struct dns_mx *mx, size_t count)
{
    /* RFC 7505: a single MX with preference 0 and target "."; a "." among
     * other records is just an unusable exchanger (skipped). */
    return count == 1 && mx[0].preference == 0 && dns_name_is_root(mx[0].name);
}

static uint32_t dns_random_below(uint32_t bound, void *arg)
{
    (void)arg;
    uint32_t v = 0;
    if (bound <= 1)
        return 0;
    uv_random(NULL, NULL, &v, sizeof(v), 0, NULL);
    return v % bound;
}

/* ---- sockets and timer ------------------------------------------------------ */

static void dns_schedule(struct dns_resolver *r);

static void dns_on_poll(uv_poll_t *h, int status, int events)
{
    struct dns_poll *p = h->data;
    ares_socket_t rfd = ARES_SOCKET_BAD, wfd = ARES_SOCKET_BAD;
    if (status < 0 || (events & UV_READABLE))
        rfd = p->fd;
    if (status < 0 || (events & UV_WRITABLE))
        wfd = p->fd;
    struct dns_resolver *r = p->r;
    ares_process_fd(r->channel, rfd, wfd); /* may close p via the state callback */
    dns_schedule(r);
}

static void dns_on_poll_closed(uv_handle_t *h)
{
    struct dns_poll *p = h->data;
    struct dns_resolver *r = p->r;
    free(p);
    dns_resolver_unref(r);
}

static void dns_on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    struct dns_resolver *r = data;
    struct dns_poll **pp = &r->polls;
    while (*pp != NULL && (*pp)->fd != fd)
        pp = &(*pp)->next;
    struct dns_poll *p = *pp;
    if (!readable && !writable) {
        if (p != NULL) {
            *pp = p->next;
            uv_poll_stop(&p->handle);
            uv_close((uv_handle_t *)&p->handle, dns_on_poll_closed);
        }
        return;
    }
    if (p == NULL) {
        p = calloc(1, sizeof(*p));
        if (p == NULL)
            return; /* the query times out instead */
        if (uv_poll_init_socket(r->loop, &p->handle, fd) != 0) {
            free(p);
            return;
        }
        p->handle.data = p;
        p->r = r;
        p->fd = fd;
        p->next = r->polls;
        r->polls = p;
        r->refs++;
    }
    uv_poll_start(&p->handle, (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0),
                  dns_on_poll);
}

static void dns_on_timer(uv_timer_t *t)
{
    struct dns_resolver *r = t->data;
    ares_process_fd(r->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    dns_schedule(r);
}

/* Arm the timer for c-ares's next timeout (or stop it when idle). */
static void dns_schedule(struct dns_resolver *r)
{
    if (r->is_closing)
        return;
    struct timeval tv;
    struct timeval *next = ares_timeout(r->channel, NULL, &tv);
    if (next == NULL) {
        uv_timer_stop(&r->timer);
        return;
    }
    uint64_t ms = (uint64_t)next->tv_sec * 1000 + (uint64_t)next->tv_usec / 1000;
    uv_timer_start(&r->timer, dns_on_timer, ms > 0 ? ms : 1, 0);
}

/* ---- resolver --------------------------------------------------------------- */

static void dns_on_timer_closed(uv_handle_t *h)
{
    dns_resolver_unref(h->data);
}

int dns_resolver_new(uv_loop_t *loop, const struct dns_options *opt, struct dns_resolver **out,
                     char *err, size_t err_size)
{
    *out = NULL;
    static bool is_lib_ready;
    if (!is_lib_ready) {
        int rc = ares_library_init(ARES_LIB_INIT_ALL);
        if (rc != ARES_SUCCESS) {
            snprintf(err, err_size, "c-ares: %s", ares_strerror(rc));
            return -EIO;
        }
        is_lib_ready = true;
    }
    struct dns_resolver *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -ENOMEM;
    r->loop = loop;
    r->family = opt->family;
    struct ares_options ao;
    memset(&ao, 0, sizeof(ao));
    ao.sock_state_cb = dns_on_sock_state;
    ao.sock_state_cb_data = r;
    ao.timeout = (int)(opt->timeout_ms ? opt->timeout_ms : 5000);
    ao.tries = (int)(opt->tries ? opt->tries : 2);
    ao.lookups = (char *)"b"; /* exchangers come from DNS, not /etc/hosts */
    int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_LOOKUPS;
    int rc = ares_init_options(&r->channel, &ao, mask);
    if (rc != ARES_SUCCESS) {
        snprintf(err, err_size, "c-ares: cannot start a resolver: %s", ares_strerror(rc));
        free(r);
        return -EIO;
    }
    r->has_channel = true;
    if (opt->servers != NULL && opt->servers[0] != '\0') {
        /* "a:p, b:p" → c-ares wants no spaces */
        char csv[512];
        size_t n = 0;
        for (const char *p = opt->servers; *p != '\0' && n + 1 < sizeof(csv); p++)
            if (*p != ' ' && *p != '\t')
                csv[n++] = *p;
        csv[n] = '\0';
        rc = ares_set_servers_ports_csv(r->channel, csv);
        if (rc != ARES_SUCCESS) {
            snprintf(err, err_size, "[relay] dns_servers \"%s\": %s", opt->servers,
                     ares_strerror(rc));
            ares_destroy(r->channel);
            free(r);
            return -EINVAL;
        }
    }
    uv_timer_init(loop, &r->timer);
    r->timer.data = r;
    r->refs = 2; /* open + the timer handle */
    *out = r;
    return 0;
}

void dns_resolver_close(struct dns_resolver *r)
{
    if (r == NULL || r->is_closing)
        return;
    /* callbacks of pending lookups run now (cancelled → TEMPFAIL), each
     * finishing through its own zero timer */
    ares_cancel(r->channel);
    r->is_closing = true;
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, dns_on_timer_closed);
    /* c-ares closes its sockets at ares_destroy (last unref); stop watching
     * them now so the loop can end */
    while (r->polls != NULL) {
        struct dns_poll *p = r->polls;
        r->polls = p->next;
        uv_poll_stop(&p->handle);
        uv_close((uv_handle_t *)&p->handle, dns_on_poll_closed);
    }
    dns_resolver_unref(r);
}

/* ---- lookups ------------------------------------------------------------------ */

static void dns_on_lookup_closed(uv_handle_t *h)
{
    struct dns_lookup *l = h->data;
    struct dns_resolver *r = l->r;
    free(l);
    dns_resolver_unref(r);
}

static void dns_on_done_timer(uv_timer_t *t)
{
    struct dns_lookup *l = t->data;
    l->cb(&l->route, l->arg);
    uv_close((uv_handle_t *)&l->done_timer, dns_on_lookup_closed);
}

static void dns_finish(struct dns_lookup *l)
{
    if (l->is_finished)
        return;
    l->is_finished = true;
    uv_timer_start(&l->done_timer, dns_on_done_timer, 0, 0);
}

static void dns_fail(struct dns_lookup *l, enum dns_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void dns_fail(struct dns_lookup *l, enum dns_status status, const char *fmt, ...)
{
    l->route.status = status;
    l->route.host_count = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->route.detail, sizeof(l->route.detail), fmt, ap);
    va_end(ap);
    dns_finish(l);
}

static bool dns_status_is_temporary(int status)
{
    return status != ARES_ENOTFOUND && status != ARES_ENODATA && status != ARES_ENONAME;
}

/* Words an admin understands for a c-ares status. */
static const char *dns_words(int status)
{
    switch (status) {
    case ARES_ESERVFAIL: return "SERVFAIL";
    case ARES_EREFUSED: return "REFUSED";
    case ARES_ETIMEOUT: return "timeout";
    case ARES_ECONNREFUSED: return "DNS server failure (SERVFAIL, REFUSED or unreachable)";
    case ARES_ENOTFOUND: return "NXDOMAIN";
    case ARES_ENODATA: return "no records";
    case ARES_ECANCELLED:
    case ARES_EDESTRUCTION: return "cancelled";
    default: return ares_strerror(status);
    }
}

/* Fill host h from an answer, in the family order of the policy. */
static void dns_take_addresses(struct dns_lookup *l, struct dns_host *h,
                               const struct ares_addrinfo *ai)
{
    int first = l->r->family == DNS_FAMILY_PREFER_V4 ? AF_INET : AF_INET6;
    for (int pass = 0; pass < 2; pass++) {
        int want = pass == 0 ? first : (first == AF_INET ? AF_INET6 : AF_INET);
        for (const struct ares_addrinfo_node *n = ai->nodes; n != NULL; n = n->ai_next) {
            if (n->ai_family != want || h->addr_count == DNS_MAX_ADDRS)
                continue;
            if ((want == AF_INET && l->r->family == DNS_FAMILY_ONLY_V6) ||
                (want == AF_INET6 && l->r->family == DNS_FAMILY_ONLY_V4))
                continue;
            size_t len = want == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
            if ((size_t)n->ai_addrlen < len)
                continue;
            struct sockaddr_storage *ss = &h->addrs[h->addr_count];
            memset(ss, 0, sizeof(*ss));
            memcpy(ss, n->ai_addr, len);
            /* the same address twice (two names, one host) only once */
            bool dup = false;
            for (size_t k = 0; k < h->addr_count; k++)
                if (memcmp(&h->addrs[k], ss, len) == 0)
                    dup = true;
            if (!dup)
                h->addr_count++;
        }
    }
}

struct dns_addr_req {
    struct dns_lookup *l;
    size_t index; /* into l->route.hosts */
};

static void dns_assemble(struct dns_lookup *l)
{
    /* keep exchangers with addresses, in order */
    size_t kept = 0;
    for (size_t i = 0; i < l->route.host_count; i++)
        if (l->route.hosts[i].addr_count > 0) {
            if (kept != i)
                l->route.hosts[kept] = l->route.hosts[i];
            kept++;
        }
    l->route.host_count = kept;
    if (kept > 0) {
        l->route.status = DNS_OK;
        snprintf(l->route.detail, sizeof(l->route.detail), "%s%.200s", l->route.is_implicit_mx
                 ? "no MX, using the address of " : "MX for ", l->domain);
    } else if (l->has_tempfail) {
        l->route.status = DNS_TEMPFAIL;
        snprintf(l->route.detail, sizeof(l->route.detail), "%s", l->tempfail_detail);
    } else {
        l->route.status = DNS_NODATA;
        if (l->route.is_implicit_mx)
            snprintf(l->route.detail, sizeof(l->route.detail),
                     "%.200s has no MX and no usable address", l->domain);
        else
            snprintf(l->route.detail, sizeof(l->route.detail),
                     "no MX host of %.200s has a usable address", l->domain);
    }
    dns_finish(l);
}

static void dns_on_addr(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    (void)timeouts;
    struct dns_addr_req *req = arg;
    struct dns_lookup *l = req->l;
    struct dns_host *h = &l->route.hosts[req->index];
    free(req);
    if (status == ARES_SUCCESS && res != NULL)
        dns_take_addresses(l, h, res);
    else if (dns_status_is_temporary(status) && !l->has_tempfail) {
        l->has_tempfail = true;
        snprintf(l->tempfail_detail, sizeof(l->tempfail_detail),
                 "%s looking up the address of %.200s", dns_words(status), h->name);
    }
    if (res != NULL)
        ares_freeaddrinfo(res);
    if (--l->pending == 0)
        dns_assemble(l);
}

/* Start the address lookup of every host in route (names set). */
static void dns_resolve_hosts(struct dns_lookup *l)
{
    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = l->r->family == DNS_FAMILY_ONLY_V4   ? AF_INET
                      : l->r->family == DNS_FAMILY_ONLY_V6 ? AF_INET6
                                                           : AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = ARES_AI_NOSORT;
    size_t count = l->route.host_count;
    l->pending = count + 1; /* +1 held until every query is started */
    for (size_t i = 0; i < count; i++) {
        struct dns_addr_req *req = calloc(1, sizeof(*req));
        if (req == NULL) {
            l->pending--;
            l->has_tempfail = true;
            snprintf(l->tempfail_detail, sizeof(l->tempfail_detail), "out of memory");
            continue;
        }
        req->l = l;
        req->index = i;
        ares_getaddrinfo(l->r->channel, l->route.hosts[i].name, NULL, &hints, dns_on_addr, req);
    }
    if (--l->pending == 0)
        dns_assemble(l);
    dns_schedule(l->r);
}

/* Letters, digits, '-', '.', and '_' (seen in the wild): what a host name
 * is made of, once c-ares has turned the wire format into text. */
static bool dns_is_host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_';
}

int dns_mx_parse(const unsigned char *abuf, int alen, struct dns_mx *mx, size_t max,
                 size_t *count)
{
    *count = 0;
    struct ares_mx_reply *replies = NULL;
    int rc = ares_parse_mx_reply(abuf, alen, &replies);
    if (rc != ARES_SUCCESS)
        return rc;
    for (struct ares_mx_reply *m = replies; m != NULL && *count < max; m = m->next) {
        const char *host = m->host != NULL ? m->host : "";
        size_t len = strlen(host);
        bool is_usable = len < sizeof(mx->name);
        for (size_t i = 0; is_usable && i < len; i++)
            is_usable = dns_is_host_char(host[i]);
        if (!is_usable)
            continue; /* not a host name (c-ares escapes odd bytes as \DDD) */
        struct dns_mx *d = &mx[(*count)++];
        memcpy(d->name, host, len + 1);
        d->preference = m->priority;
    }
    ares_free_data(replies);
    return ARES_SUCCESS;
}

static void dns_on_mx(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    (void)timeouts;
    struct dns_lookup *l = arg;
    if (status == ARES_ENODATA) {
        /* RFC 5321 5.1: no MX → the domain itself is the exchanger */
        l->route.is_implicit_mx = true;
        l->route.host_count = 1;
        snprintf(l->route.hosts[0].name, sizeof(l->route.hosts[0].name), "%s", l->domain);
        dns_resolve_hosts(l);
        return;
    }
    if (status == ARES_ENOTFOUND || status == ARES_ENONAME) {
        dns_fail(l, DNS_NXDOMAIN, "%.200s: domain does not exist (NXDOMAIN)", l->domain);
        return;
    }
    if (status != ARES_SUCCESS) {
        dns_fail(l, DNS_TEMPFAIL, "%s looking up MX for %.200s", dns_words(status), l->domain);
        return;
    }
    int rc = dns_mx_parse(abuf, alen, l->mx, DNS_MAX_HOSTS, &l->mx_count);
    if (rc == ARES_ENODATA) {
        l->route.is_implicit_mx = true;
        l->route.host_count = 1;
        snprintf(l->route.hosts[0].name, sizeof(l->route.hosts[0].name), "%s", l->domain);
        dns_resolve_hosts(l);
        return;
    }
    if (rc != ARES_SUCCESS) {
        dns_fail(l, DNS_TEMPFAIL, "unreadable MX answer for %.200s (%s)", l->domain,
                 ares_strerror(rc));
        return;
    }
    if (dns_mx_is_null(l->mx, l->mx_count)) {
        dns_fail(l, DNS_NULLMX, "%.200s does not accept mail (null MX)", l->domain);
        return;
    }
    dns_mx_order(l->mx, l->mx_count, dns_random_below, NULL);
    l->route.host_count = 0;
    for (size_t i = 0; i < l->mx_count; i++) {
        if (dns_name_is_root(l->mx[i].name))
            continue; /* "." among real exchangers: unusable, skipped */
        struct dns_host *h = &l->route.hosts[l->route.host_count++];
        snprintf(h->name, sizeof(h->name), "%s", l->mx[i].name);
        h->preference = l->mx[i].preference;
    }
    if (l->route.host_count == 0) {
        dns_fail(l, DNS_NODATA, "no usable MX host for %.200s", l->domain);
        return;
    }
    dns_resolve_hosts(l);
}

int dns_route(struct dns_resolver *r, const char *domain, dns_route_cb cb, void *arg)
{
    if (r == NULL || r->is_closing || domain == NULL || cb == NULL)
        return -EINVAL;
    size_t len = strlen(domain);
    while (len > 0 && domain[len - 1] == '.')
        len--;
    if (len == 0 || len > 253)
        return -EINVAL;
    struct dns_lookup *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return -ENOMEM;
    l->r = r;
    l->cb = cb;
    l->arg = arg;
    memcpy(l->domain, domain, len);
    l->domain[len] = '\0';
    uv_timer_init(r->loop, &l->done_timer);
    l->done_timer.data = l;
    r->refs++;
    /* an address literal domain ("[192.0.2.1]") is not looked up: the
     * submission side only accepts domains, so this is a caller bug */
    ares_query(r->channel, l->domain, ns_c_in, ns_t_mx, dns_on_mx, l);
    dns_schedule(r);
    return 0;
}

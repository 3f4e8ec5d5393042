/* probe_dns — resolve one domain with relay/dns.c and print the route as
 * JSON, for tests/integration/test_relay_dns.py.
 *   probe_dns --servers 127.0.0.1:5353 [--family prefer-ipv6|prefer-ipv4|ipv4|ipv6]
 *             [--timeout-ms N] [--repeat N] DOMAIN
 * With --repeat, resolves N times and prints one JSON line each. */
#include <arpa/inet.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "relay/dns.h"

static const char *status_name(enum dns_status s)
{
    switch (s) {
    case DNS_OK: return "ok";
    case DNS_NXDOMAIN: return "nxdomain";
    case DNS_NODATA: return "nodata";
    case DNS_NULLMX: return "nullmx";
    case DNS_TEMPFAIL: return "tempfail";
    }
    return "?";
}

static void print_json_string(const char *s)
{
    putchar('"');
    for (; *s != '\0'; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", *s);
        else
            putchar(*s);
    }
    putchar('"');
}

struct state {
    struct dns_resolver *r;
    const char *domain;
    int left;
};

static void on_route(const struct dns_route *route, void *arg)
{
    struct state *st = arg;
    printf("{\"status\":\"%s\",\"implicit\":%s,\"detail\":", status_name(route->status),
           route->is_implicit_mx ? "true" : "false");
    print_json_string(route->detail);
    printf(",\"hosts\":[");
    for (size_t i = 0; i < route->host_count; i++) {
        const struct dns_host *h = &route->hosts[i];
        printf("%s{\"name\":", i ? "," : "");
        print_json_string(h->name);
        printf(",\"preference\":%u,\"addresses\":[", h->preference);
        for (size_t k = 0; k < h->addr_count; k++) {
            char ip[INET6_ADDRSTRLEN] = "";
            const struct sockaddr_storage *ss = &h->addrs[k];
            if (ss->ss_family == AF_INET6)
                inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, ip, sizeof(ip));
            else
                inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, ip, sizeof(ip));
            printf("%s\"%s\"", k ? "," : "", ip);
        }
        printf("]}");
    }
    printf("]}\n");
    fflush(stdout);
    if (--st->left > 0) {
        if (dns_route(st->r, st->domain, on_route, st) < 0) {
            fprintf(stderr, "probe_dns: dns_route failed\n");
            exit(1);
        }
        return;
    }
    dns_resolver_close(st->r);
}

int main(int argc, char **argv)
{
    struct dns_options opt = {.servers = "", .timeout_ms = 2000, .tries = 1};
    int repeat = 1;
    static const struct option opts[] = {
        {"servers", required_argument, NULL, 's'}, {"family", required_argument, NULL, 'f'},
        {"timeout-ms", required_argument, NULL, 't'}, {"repeat", required_argument, NULL, 'n'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 's': opt.servers = optarg; break;
        case 'f':
            opt.family = strcmp(optarg, "prefer-ipv4") == 0 ? DNS_FAMILY_PREFER_V4
                         : strcmp(optarg, "ipv4") == 0      ? DNS_FAMILY_ONLY_V4
                         : strcmp(optarg, "ipv6") == 0      ? DNS_FAMILY_ONLY_V6
                                                            : DNS_FAMILY_PREFER_V6;
            break;
        case 't': opt.timeout_ms = (unsigned)atoi(optarg); break;
        case 'n': repeat = atoi(optarg); break;
        default: return 2;
        }
    }
    if (optind + 1 != argc || repeat < 1) {
        fprintf(stderr, "usage: probe_dns --servers IP:PORT [--family F] DOMAIN\n");
        return 2;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    char err[256];
    struct state st = {.domain = argv[optind], .left = repeat};
    if (dns_resolver_new(&loop, &opt, &st.r, err, sizeof(err)) < 0) {
        fprintf(stderr, "probe_dns: %s\n", err);
        return 1;
    }
    if (dns_route(st.r, st.domain, on_route, &st) < 0) {
        fprintf(stderr, "probe_dns: dns_route refused %s\n", st.domain);
        dns_resolver_close(st.r);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        return 1;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&loop);
    return rc == 0 ? 0 : 3;
}

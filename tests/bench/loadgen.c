/* loadgen — a submission load generator: N client threads, each opening TLS
 * connections (STARTTLS or implicit), authenticating with AUTH PLAIN and
 * sending messages, like a floor of scanners at 9:00. Prints messages/s,
 * MB/s, failures with the first replies, and p50/p90/p99 of the whole
 * transaction and of end-of-data → 250; and its own CPU time, so that a
 * client-bound run is visible. --idle N opens N authenticated TLS sessions
 * and holds them until stdin closes (for memory per connection).
 * --handshake-only counts bare implicit-TLS handshakes (connect, handshake,
 * close_notify) against `ceilings tls-server`; --rate R paces the transactions
 * to R per second overall (for latency at a given fraction of peak load).
 *
 *   loadgen --port 10587 --starttls --user bench --password pw --concurrency 16
 *           --size 10240 --per-conn 1 --messages 2000
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>

struct opts {
    const char *host;
    int port;
    bool is_implicit;
    const char *user, *password;
    int concurrency;
    size_t size;
    int per_conn;
    long messages;       /* total; 0 → duration */
    double duration_s;
    int idle;            /* idle mode: connections to hold */
    const char *from, *rcpt;
    bool is_handshake_only;
    double rate;         /* transactions per second overall; 0 → as fast as possible */
};

static struct opts o = {.host = "127.0.0.1", .port = 587, .concurrency = 16, .size = 10240,
                        .per_conn = 1, .messages = 1000, .from = "bench@example.test",
                        .rcpt = "sink@example.test"};

#define LOADGEN_IO_TIMEOUT_S 60

static gnutls_certificate_credentials_t creds;
static char *body;
static size_t body_len;
static atomic_long issued, done_ok, failed;
static double t_start;
static pthread_mutex_t lat_lock = PTHREAD_MUTEX_INITIALIZER;
static double *lat_txn, *lat_eod;
static size_t lat_n, lat_cap;
static char first_error[512];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A server that stops answering makes a failure, not a hang: sockets carry
 * SO_RCVTIMEO/SO_SNDTIMEO, and a wait that GnuTLS reports as AGAIN ends
 * once this much time has passed. */
static bool loadgen_timed_out(double since)
{
    return now_s() - since >= LOADGEN_IO_TIMEOUT_S;
}

struct conn {
    int fd;
    gnutls_session_t tls;
    char buf[8192];
    size_t len;
};

static int conn_write(struct conn *c, const void *data, size_t len)
{
    const char *p = data;
    double t0 = now_s();
    while (len > 0) {
        ssize_t n = c->tls ? gnutls_record_send(c->tls, p, len) : send(c->fd, p, len, MSG_NOSIGNAL);
        if ((n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) && !loadgen_timed_out(t0))
            continue; /* GnuTLS says AGAIN for post-handshake records too */
        if (n < 0 && errno == EINTR && !c->tls)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Read one reply (multi-line aware); returns its code or -1. */
static int conn_reply(struct conn *c, char *text, size_t text_size)
{
    double t0 = now_s();
    for (;;) {
        char *nl;
        while ((nl = memchr(c->buf, '\n', c->len)) != NULL) {
            size_t n = (size_t)(nl - c->buf) + 1;
            bool is_last = n >= 4 && c->buf[3] == ' ';
            int code = n >= 3 ? atoi(c->buf) : -1;
            if (text != NULL && is_last) {
                size_t k = n < text_size ? n : text_size - 1;
                memcpy(text, c->buf, k);
                text[k] = '\0';
                text[strcspn(text, "\r\n")] = '\0';
            }
            memmove(c->buf, c->buf + n, c->len - n);
            c->len -= n;
            if (is_last || n < 4)
                return code;
        }
        if (c->len == sizeof(c->buf))
            return -1;
        ssize_t r = c->tls ? gnutls_record_recv(c->tls, c->buf + c->len, sizeof(c->buf) - c->len)
                           : recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
        if ((r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) && !loadgen_timed_out(t0))
            continue; /* e.g. a TLS 1.3 session ticket was read, no data */
        if (r <= 0)
            return -1;
        c->len += (size_t)r;
    }
}

static int conn_cmd(struct conn *c, const char *line, int expect, char *text, size_t ts)
{
    if (line != NULL && conn_write(c, line, strlen(line)) < 0)
        return -1;
    int code = conn_reply(c, text, ts);
    return code == expect ? 0 : -1;
}

static void note_error(const char *what, const char *reply)
{
    pthread_mutex_lock(&lat_lock);
    if (first_error[0] == '\0') {
        snprintf(first_error, sizeof(first_error), "%s: %s", what, reply);
        for (char *p = first_error; *p; p++) /* it goes into a JSON string */
            if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
                *p = '\'';
    }
    pthread_mutex_unlock(&lat_lock);
}

static int conn_tls(struct conn *c)
{
    gnutls_init(&c->tls, GNUTLS_CLIENT);
    gnutls_set_default_priority(c->tls);
    gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, creds);
    gnutls_transport_set_int(c->tls, c->fd);
    int rc;
    double t0 = now_s();
    do
        rc = gnutls_handshake(c->tls);
    while (rc < 0 && !gnutls_error_is_fatal(rc) && !loadgen_timed_out(t0));
    return rc < 0 ? -1 : 0;
}

static void conn_close(struct conn *c)
{
    if (c->tls) {
        gnutls_bye(c->tls, GNUTLS_SHUT_WR);
        gnutls_deinit(c->tls);
    }
    if (c->fd >= 0)
        close(c->fd);
    c->tls = NULL;
    c->fd = -1;
}

/* A server that stops answering makes a failure, not a hang. */
static void loadgen_set_timeouts(int fd)
{
    struct timeval tv = {.tv_sec = LOADGEN_IO_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* Connect, TLS, EHLO, AUTH PLAIN. */
static int conn_open(struct conn *c)
{
    memset(c, 0, sizeof(*c));
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o.port)};
    inet_pton(AF_INET, o.host, &sa.sin_addr);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    loadgen_set_timeouts(c->fd);
    char text[512] = "";
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        note_error("connect", strerror(errno));
        return -1;
    }
    if (o.is_implicit && conn_tls(c) < 0) {
        note_error("tls", "handshake failed");
        return -1;
    }
    if (conn_cmd(c, NULL, 220, text, sizeof(text)) < 0 ||
        conn_cmd(c, "EHLO loadgen.test\r\n", 250, text, sizeof(text)) < 0) {
        note_error("greeting/EHLO", text);
        return -1;
    }
    if (!o.is_implicit) {
        if (conn_cmd(c, "STARTTLS\r\n", 220, text, sizeof(text)) < 0 || conn_tls(c) < 0) {
            note_error("STARTTLS", text);
            return -1;
        }
        if (conn_cmd(c, "EHLO loadgen.test\r\n", 250, text, sizeof(text)) < 0) {
            note_error("EHLO", text);
            return -1;
        }
    }
    char raw[512], b64[800], line[900];
    int n = snprintf(raw, sizeof(raw), "%c%s%c%s", 0, o.user, 0, o.password);
    gnutls_datum_t in = {(unsigned char *)raw, (unsigned)n}, out = {0};
    gnutls_base64_encode2(&in, &out);
    snprintf(b64, sizeof(b64), "%.*s", (int)out.size, out.data);
    gnutls_free(out.data);
    snprintf(line, sizeof(line), "AUTH PLAIN %s\r\n", b64);
    if (conn_cmd(c, line, 235, text, sizeof(text)) < 0) {
        note_error("AUTH", text);
        return -1;
    }
    return 0;
}

static int conn_send_message(struct conn *c, double *eod_s)
{
    char line[600], text[512] = "";
    snprintf(line, sizeof(line), "MAIL FROM:<%s>\r\n", o.from);
    if (conn_cmd(c, line, 250, text, sizeof(text)) < 0) {
        note_error("MAIL", text);
        return -1;
    }
    snprintf(line, sizeof(line), "RCPT TO:<%s>\r\n", o.rcpt);
    if (conn_cmd(c, line, 250, text, sizeof(text)) < 0) {
        note_error("RCPT", text);
        return -1;
    }
    if (conn_cmd(c, "DATA\r\n", 354, text, sizeof(text)) < 0) {
        note_error("DATA", text);
        return -1;
    }
    if (conn_write(c, body, body_len) < 0)
        return -1;
    double t = now_s();
    if (conn_cmd(c, ".\r\n", 250, text, sizeof(text)) < 0) {
        note_error("end of data", text);
        return -1;
    }
    *eod_s = now_s() - t;
    return 0;
}

static void record(double txn, double eod)
{
    pthread_mutex_lock(&lat_lock);
    if (lat_n == lat_cap) {
        lat_cap = lat_cap ? lat_cap * 2 : 4096;
        lat_txn = realloc(lat_txn, lat_cap * sizeof(double));
        lat_eod = realloc(lat_eod, lat_cap * sizeof(double));
    }
    lat_txn[lat_n] = txn;
    lat_eod[lat_n] = eod;
    lat_n++;
    pthread_mutex_unlock(&lat_lock);
}

/* The next transaction may start; with --rate, not before its slot. */
static bool take_ticket(void)
{
    long n = atomic_fetch_add(&issued, 1);
    if (o.messages > 0 ? n >= o.messages : now_s() - t_start >= o.duration_s)
        return false;
    if (o.rate > 0) {
        double wait = t_start + (double)n / o.rate - now_s();
        if (wait > 0) {
            struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
            nanosleep(&ts, NULL);
        }
    }
    return true;
}

/* Connect, full TLS handshake, close_notify, close: one "transaction". */
static int conn_handshake_only(void)
{
    struct conn c;
    memset(&c, 0, sizeof(c));
    c.fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o.port)};
    inet_pton(AF_INET, o.host, &sa.sin_addr);
    int one = 1, rc = 0;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    loadgen_set_timeouts(c.fd);
    if (connect(c.fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        note_error("connect", strerror(errno));
        rc = -1;
    } else if (conn_tls(&c) < 0) {
        note_error("tls", "handshake failed");
        rc = -1;
    }
    conn_close(&c);
    return rc;
}

static void *worker(void *arg)
{
    (void)arg;
    while (take_ticket()) {
        double t0 = now_s();
        if (o.is_handshake_only) {
            if (conn_handshake_only() < 0) {
                atomic_fetch_add(&failed, 1);
                continue;
            }
            atomic_fetch_add(&done_ok, 1);
            record(now_s() - t0, 0);
            continue;
        }
        struct conn c;
        if (conn_open(&c) < 0) {
            conn_close(&c);
            atomic_fetch_add(&failed, 1);
            continue;
        }
        for (int i = 0; i < o.per_conn; i++) {
            if (i > 0 && !take_ticket())
                break;
            double ts = i == 0 ? t0 : now_s(), eod = 0;
            if (conn_send_message(&c, &eod) < 0) {
                atomic_fetch_add(&failed, 1);
                break;
            }
            atomic_fetch_add(&done_ok, 1);
            record(now_s() - ts, eod);
        }
        conn_cmd(&c, "QUIT\r\n", 221, NULL, 0);
        conn_close(&c);
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i];
}

static int idle_mode(void)
{
    struct conn *cs = calloc((size_t)o.idle, sizeof(*cs));
    int ok = 0;
    for (int i = 0; i < o.idle; i++)
        if (conn_open(&cs[i]) == 0)
            ok++;
    printf("idle_ready %d of %d\n", ok, o.idle);
    fflush(stdout);
    char b[64];
    while (fread(b, 1, sizeof(b), stdin) > 0) /* until stdin closes */
        ;
    for (int i = 0; i < o.idle; i++)
        conn_close(&cs[i]);
    free(cs);
    return ok == o.idle ? 0 : 1;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"host", 1, 0, 'H'}, {"port", 1, 0, 'p'}, {"starttls", 0, 0, 's'},
        {"tls", 0, 0, 't'}, {"user", 1, 0, 'u'}, {"password", 1, 0, 'w'},
        {"concurrency", 1, 0, 'c'}, {"size", 1, 0, 'z'}, {"per-conn", 1, 0, 'k'},
        {"messages", 1, 0, 'n'}, {"duration", 1, 0, 'd'}, {"idle", 1, 0, 'i'},
        {"from", 1, 0, 'f'}, {"rcpt", 1, 0, 'r'}, {"handshake-only", 0, 0, 'h'},
        {"rate", 1, 0, 'R'}, {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'H': o.host = optarg; break;
        case 'p': o.port = atoi(optarg); break;
        case 's': o.is_implicit = false; break;
        case 't': o.is_implicit = true; break;
        case 'u': o.user = optarg; break;
        case 'w': o.password = optarg; break;
        case 'c': o.concurrency = atoi(optarg); break;
        case 'z': o.size = (size_t)atol(optarg); break;
        case 'k': o.per_conn = atoi(optarg); break;
        case 'n': o.messages = atol(optarg); break;
        case 'd': o.duration_s = atof(optarg); o.messages = 0; break;
        case 'i': o.idle = atoi(optarg); break;
        case 'f': o.from = optarg; break;
        case 'r': o.rcpt = optarg; break;
        case 'h': o.is_handshake_only = true; o.is_implicit = true; break;
        case 'R': o.rate = atof(optarg); break;
        default: return 2;
        }
    }
    if ((!o.is_handshake_only && (o.user == NULL || o.password == NULL)) || o.concurrency < 1 ||
        o.per_conn < 1 || o.rate < 0) {
        fprintf(stderr, "usage: loadgen --port P [--starttls|--tls] --user U --password W "
                        "[--concurrency N] [--size B] [--per-conn M] [--messages N | --duration S] "
                        "[--idle N] [--rate R] | --handshake-only\n");
        return 2;
    }
    gnutls_global_init();
    gnutls_certificate_allocate_credentials(&creds); /* the bench's self-signed certs: no verify */
    /* body: headers + lines of 76 characters up to size */
    body = malloc(o.size + 256);
    int n = snprintf(body, 256, "From: <%s>\r\nTo: <%s>\r\nSubject: loadgen\r\n\r\n", o.from, o.rcpt);
    body_len = (size_t)n;
    while (body_len + 78 <= o.size) {
        memset(body + body_len, 'x', 76);
        body_len += 76;
        body[body_len++] = '\r';
        body[body_len++] = '\n';
    }
    if (o.idle > 0)
        return idle_mode();
    pthread_t *th = calloc((size_t)o.concurrency, sizeof(*th));
    t_start = now_s();
    for (int i = 0; i < o.concurrency; i++)
        pthread_create(&th[i], NULL, worker, NULL);
    for (int i = 0; i < o.concurrency; i++)
        pthread_join(th[i], NULL);
    double wall = now_s() - t_start;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    qsort(lat_txn, lat_n, sizeof(double), cmp_double);
    qsort(lat_eod, lat_n, sizeof(double), cmp_double);
    long ok = atomic_load(&done_ok), bad = atomic_load(&failed);
    printf("{\"messages\":%ld,\"failures\":%ld,\"wall_s\":%.3f,\"msgs_per_s\":%.1f,"
           "\"mb_per_s\":%.2f,\"txn_p50_ms\":%.2f,\"txn_p90_ms\":%.2f,\"txn_p99_ms\":%.2f,"
           "\"eod_p50_ms\":%.2f,\"eod_p90_ms\":%.2f,\"eod_p99_ms\":%.2f,\"client_cpu_s\":%.2f,"
           "\"first_error\":\"%s\"}\n",
           ok, bad, wall, (double)ok / wall, (double)ok * (double)body_len / wall / 1e6,
           pct(lat_txn, lat_n, 0.5) * 1e3, pct(lat_txn, lat_n, 0.9) * 1e3,
           pct(lat_txn, lat_n, 0.99) * 1e3, pct(lat_eod, lat_n, 0.5) * 1e3,
           pct(lat_eod, lat_n, 0.9) * 1e3, pct(lat_eod, lat_n, 0.99) * 1e3, cpu, first_error);
    return bad == 0 ? 0 : 1;
}

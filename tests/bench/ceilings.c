/* ceilings — the two hardware/library ceilings the benchmark reports next to
 * the servers' figures:
 *
 *   ceilings fsync DIR [SECONDS]
 *       appends 4 KiB + fdatasync() to a file in DIR for SECONDS (3), prints
 *       {"fdatasync_per_s": X}: what one durable commit at a time can reach.
 *   ceilings tls-server --port P --cert C --key K [--threads N] [--priority S]
 *       an implicit-TLS server that only does the handshake (full, no
 *       resumption) and closes: driven by `loadgen --handshake-only`, its CPU
 *       time per handshake (from /proc, measured by run-bench) is the raw
 *       server-side handshake cost of that certificate. Runs until killed.
 *   ceilings smtp-server --port P --cert C --key K [--threads N] [--priority S]
 *       the same handshake inside the SMTP dialogue of a submission (banner,
 *       EHLO, STARTTLS, EHLO, AUTH, MAIL, RCPT, DATA, the message, QUIT), one
 *       blocking thread per connection, answering every command at once with
 *       a fixed reply: no parsing beyond the command's first letters, no
 *       storage, no password check, no relaying, no logging. Driven by
 *       `loadgen --starttls` as scenario 1, its CPU per message is what the
 *       dialogue alone costs any server on these cores, a one-reply-at-a-time
 *       client's round trips included.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>

static double ceil_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int ceil_fsync(const char *dir, double seconds)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/ceilings-fsync.%ld", dir, (long)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "ceilings: %s: %s\n", path, strerror(errno));
        return 1;
    }
    char block[4096];
    memset(block, 'x', sizeof(block));
    long n = 0;
    double t0 = ceil_now_s(), t = t0;
    while (t - t0 < seconds) {
        if (write(fd, block, sizeof(block)) != (ssize_t)sizeof(block) || fdatasync(fd) < 0) {
            fprintf(stderr, "ceilings: %s: %s\n", path, strerror(errno));
            close(fd);
            unlink(path);
            return 1;
        }
        n++;
        t = ceil_now_s();
    }
    close(fd);
    unlink(path);
    printf("{\"fdatasync_per_s\":%.1f}\n", (double)n / (t - t0));
    return 0;
}

static gnutls_certificate_credentials_t ceil_creds;
static gnutls_priority_t ceil_prio;

/* A server session on fd, its full handshake done (no ticket): 0, or a
 * GnuTLS error with *out still to be deinit'ed. */
static int ceil_tls_start(int fd, gnutls_session_t *out)
{
    gnutls_init(out, GNUTLS_SERVER | GNUTLS_NO_TICKETS);
    gnutls_priority_set(*out, ceil_prio);
    gnutls_credentials_set(*out, GNUTLS_CRD_CERTIFICATE, ceil_creds);
    gnutls_transport_set_int(*out, fd);
    int rc;
    do
        rc = gnutls_handshake(*out);
    while (rc < 0 && !gnutls_error_is_fatal(rc));
    return rc;
}

static void ceil_tls_serve(int fd)
{
    gnutls_session_t s;
    if (ceil_tls_start(fd, &s) == 0) { /* wait for the client's close_notify or EOF */
        char b[256];
        while (gnutls_record_recv(s, b, sizeof(b)) > 0)
            ;
    }
    gnutls_deinit(s);
}

struct ceil_listener {
    int fd;
    void (*serve)(int fd); /* one connection, start to end */
};

static void *ceil_worker(void *arg)
{
    const struct ceil_listener *l = arg;
    for (;;) {
        int fd = accept(l->fd, NULL, NULL);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        l->serve(fd);
        close(fd);
    }
    return NULL;
}

/* ---- smtp-server: the dialogue, nothing else ------------------------------ */

struct ceil_conn {
    int fd;
    gnutls_session_t tls; /* NULL before STARTTLS */
    char buf[16384];
    size_t len, off;
};

static ssize_t ceil_conn_recv(struct ceil_conn *c, char *out, size_t size)
{
    ssize_t r;
    do
        r = c->tls != NULL ? gnutls_record_recv(c->tls, out, size) : recv(c->fd, out, size, 0);
    while (c->tls != NULL && (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED));
    return r;
}

static int ceil_conn_send(struct ceil_conn *c, const char *reply)
{
    size_t len = strlen(reply);
    ssize_t r = c->tls != NULL ? gnutls_record_send(c->tls, reply, len) : send(c->fd, reply, len, 0);
    return r == (ssize_t)len ? 0 : -1;
}

/* The next command line's first four letters, upper-cased, into verb; -1 at
 * EOF or error. */
static int ceil_conn_command(struct ceil_conn *c, char verb[5])
{
    for (;;) {
        char *eol = memchr(c->buf + c->off, '\n', c->len - c->off);
        if (eol != NULL) {
            for (size_t i = 0; i < 4; i++) {
                char ch = c->off + i < (size_t)(eol - c->buf) ? c->buf[c->off + i] : ' ';
                verb[i] = (char)(ch >= 'a' && ch <= 'z' ? ch - 32 : ch);
            }
            verb[4] = '\0';
            c->off = (size_t)(eol - c->buf) + 1;
            return 0;
        }
        if (c->off > 0) {
            memmove(c->buf, c->buf + c->off, c->len - c->off);
            c->len -= c->off, c->off = 0;
        }
        if (c->len == sizeof(c->buf))
            return -1; /* no line this long in a submission */
        ssize_t r = ceil_conn_recv(c, c->buf + c->len, sizeof(c->buf) - c->len);
        if (r <= 0)
            return -1;
        c->len += (size_t)r;
    }
}

/* Past the message's "CRLF.CRLF"; -1 at EOF or error. The last 4 bytes
 * seen, one per byte of tail, so the end may straddle two reads. */
static int ceil_conn_skip_data(struct ceil_conn *c)
{
    const uint32_t end = (uint32_t)'\n' << 24 | (uint32_t)'.' << 16 | '\r' << 8 | '\n';
    uint32_t tail = '\r' << 8 | '\n'; /* DATA's own CRLF starts a line */
    for (;;) {
        while (c->off < c->len) {
            tail = tail << 8 | (uint8_t)c->buf[c->off++];
            if (tail == end)
                return 0;
        }
        c->off = c->len = 0;
        ssize_t r = ceil_conn_recv(c, c->buf, sizeof(c->buf));
        if (r <= 0)
            return -1;
        c->len = (size_t)r;
    }
}

#define CEIL_EHLO                                                                           \
    "250-ceiling.test\r\n250-PIPELINING\r\n250-SIZE 26214400\r\n250-8BITMIME\r\n"              \
    "250-ENHANCEDSTATUSCODES\r\n"

static void ceil_smtp_serve(int fd)
{
    struct ceil_conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    c->fd = fd;
    char verb[5];
    if (ceil_conn_send(c, "220 ceiling.test ESMTP\r\n") < 0)
        goto out;
    while (ceil_conn_command(c, verb) == 0) {
        int rc = 0;
        if (strcmp(verb, "EHLO") == 0)
            rc = ceil_conn_send(c, c->tls == NULL ? CEIL_EHLO "250 STARTTLS\r\n"
                                                  : CEIL_EHLO "250 AUTH PLAIN LOGIN\r\n");
        else if (strcmp(verb, "STAR") == 0 && c->tls == NULL) {
            if (ceil_conn_send(c, "220 2.0.0 Ready to start TLS\r\n") < 0)
                break;
            c->off = c->len = 0;
            rc = ceil_tls_start(fd, &c->tls);
        } else if (strcmp(verb, "AUTH") == 0)
            rc = ceil_conn_send(c, "235 2.7.0 Authentication successful\r\n");
        else if (strcmp(verb, "MAIL") == 0 || strcmp(verb, "RCPT") == 0)
            rc = ceil_conn_send(c, "250 2.1.0 Ok\r\n");
        else if (strcmp(verb, "DATA") == 0) {
            rc = ceil_conn_send(c, "354 End data with <CR><LF>.<CR><LF>\r\n");
            if (rc == 0 && ceil_conn_skip_data(c) == 0)
                rc = ceil_conn_send(c, "250 2.0.0 Ok: queued as CEILING\r\n");
            else
                rc = -1;
        } else if (strcmp(verb, "QUIT") == 0) {
            ceil_conn_send(c, "221 2.0.0 Bye\r\n");
            break;
        } else
            rc = ceil_conn_send(c, "502 5.5.2 Not in this ceiling\r\n");
        if (rc < 0)
            break;
    }
out:
    if (c->tls != NULL) {
        gnutls_bye(c->tls, GNUTLS_SHUT_WR);
        gnutls_deinit(c->tls);
    }
    free(c);
}

static int ceil_server(void (*serve)(int fd), int argc, char **argv)
{
    static const struct option lo[] = {{"port", 1, 0, 'p'},    {"cert", 1, 0, 'c'},
                                       {"key", 1, 0, 'k'},     {"threads", 1, 0, 't'},
                                       {"priority", 1, 0, 'P'}, {0, 0, 0, 0}};
    int port = 0, threads = 2, ch;
    const char *cert = NULL, *key = NULL;
    const char *prio = "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"; /* smarthostd's default */
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'p': port = atoi(optarg); break;
        case 'c': cert = optarg; break;
        case 'k': key = optarg; break;
        case 't': threads = atoi(optarg); break;
        case 'P': prio = optarg; break;
        default: return 2;
        }
    }
    if (port <= 0 || cert == NULL || key == NULL || threads < 1) {
        fprintf(stderr, "usage: ceilings tls-server|smtp-server --port P --cert C --key K "
                        "[--threads N] [--priority S]\n");
        return 2;
    }
    gnutls_global_init();
    gnutls_certificate_allocate_credentials(&ceil_creds);
    int rc = gnutls_certificate_set_x509_key_file(ceil_creds, cert, key, GNUTLS_X509_FMT_PEM);
    if (rc < 0 || gnutls_priority_init(&ceil_prio, prio, NULL) < 0) {
        fprintf(stderr, "ceilings: cannot load %s / %s: %s\n", cert, key, gnutls_strerror(rc));
        return 1;
    }
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 1024) < 0) {
        perror("ceilings: bind/listen");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    static struct ceil_listener l;
    l.fd = lfd, l.serve = serve;
    pthread_t *th = calloc((size_t)threads, sizeof(*th));
    for (int i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, ceil_worker, &l);
    pthread_join(th[0], NULL);
    return 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN); /* a peer gone mid-reply is not our death */
    if (argc >= 3 && strcmp(argv[1], "fsync") == 0)
        return ceil_fsync(argv[2], argc >= 4 ? atof(argv[3]) : 3.0);
    if (argc >= 2 && strcmp(argv[1], "tls-server") == 0)
        return ceil_server(ceil_tls_serve, argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "smtp-server") == 0)
        return ceil_server(ceil_smtp_serve, argc - 1, argv + 1);
    fprintf(stderr, "usage: ceilings fsync DIR [SECONDS] | ceilings tls-server|smtp-server "
                    "--port P --cert C --key K [--threads N] [--priority S]\n");
    return 2;
}

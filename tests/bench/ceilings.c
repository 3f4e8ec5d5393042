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
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
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

static void *ceil_tls_worker(void *arg)
{
    int lfd = (int)(long)arg;
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        gnutls_session_t s;
        gnutls_init(&s, GNUTLS_SERVER | GNUTLS_NO_TICKETS);
        gnutls_priority_set(s, ceil_prio);
        gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, ceil_creds);
        gnutls_transport_set_int(s, fd);
        int rc;
        do
            rc = gnutls_handshake(s);
        while (rc < 0 && !gnutls_error_is_fatal(rc));
        if (rc == 0) { /* wait for the client's close_notify or EOF */
            char b[256];
            while (gnutls_record_recv(s, b, sizeof(b)) > 0)
                ;
        }
        gnutls_deinit(s);
        close(fd);
    }
    return NULL;
}

static int ceil_tls_server(int argc, char **argv)
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
        fprintf(stderr, "usage: ceilings tls-server --port P --cert C --key K [--threads N]\n");
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
    pthread_t *th = calloc((size_t)threads, sizeof(*th));
    for (int i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, ceil_tls_worker, (void *)(long)lfd);
    pthread_join(th[0], NULL);
    return 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN); /* a peer gone mid-reply is not our death */
    if (argc >= 3 && strcmp(argv[1], "fsync") == 0)
        return ceil_fsync(argv[2], argc >= 4 ? atof(argv[3]) : 3.0);
    if (argc >= 2 && strcmp(argv[1], "tls-server") == 0)
        return ceil_tls_server(argc - 1, argv + 1);
    fprintf(stderr, "usage: ceilings fsync DIR [SECONDS] | ceilings tls-server --port P "
                    "--cert C --key K [--threads N] [--priority S]\n");
    return 2;
}

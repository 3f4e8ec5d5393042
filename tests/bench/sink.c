/* sink — the downstream SMTP server both servers relay to in the benchmark, as
 * an upstream provider would be: accepts everything on 127.0.0.1:PORT (STARTTLS
 * offered when given a certificate, PIPELINING, one thread per connection),
 * counts messages by their end-of-data, and answers "N T" on
 * stdout for every line read on stdin: N messages so far, T the CLOCK_MONOTONIC
 * time in seconds of the last one (the same clock as Python's time.monotonic()).
 * Exits when stdin closes. It must never be the bottleneck of the end-to-end
 * figure, hence C and not asyncio.
 *
 *   sink 30025 [CERT KEY]
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>

static gnutls_certificate_credentials_t sink_creds; /* NULL: no STARTTLS */
static gnutls_priority_t sink_prio;

struct sink_conn {
    int fd;
    gnutls_session_t tls;
};

static atomic_long sink_count;
static _Atomic double sink_last_at;

static double sink_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int sink_send(struct sink_conn *c, const char *text)
{
    size_t len = strlen(text);
    while (len > 0) {
        ssize_t n = c->tls ? gnutls_record_send(c->tls, text, len)
                           : send(c->fd, text, len, MSG_NOSIGNAL);
        if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
            continue;
        if (n <= 0)
            return -1;
        text += n;
        len -= (size_t)n;
    }
    return 0;
}

/* One client: lines are split out of a buffer; in DATA, only the lone "." ends
 * the message. Replies to pipelined commands are batched until the buffer is
 * drained, as a real server does. */
static void *sink_on_client(void *arg)
{
    struct sink_conn conn = {.fd = (int)(long)arg}, *c = &conn;
    char buf[65536], out[4096];
    size_t len = 0, out_len = 0;
    bool is_in_data = false, is_at_line_start = true;
    sink_send(c, "220 sink ESMTP\r\n");
    for (;;) {
        ssize_t n = c->tls ? gnutls_record_recv(c->tls, buf + len, sizeof(buf) - len)
                           : recv(c->fd, buf + len, sizeof(buf) - len, 0);
        if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        size_t pos = 0;
        bool is_quit = false, is_starttls = false;
        char *nl;
        while ((nl = memchr(buf + pos, '\n', len - pos)) != NULL) {
            char *line = buf + pos;
            size_t line_len = (size_t)(nl - line) + 1;
            pos += line_len;
            const char *reply = NULL;
            if (is_in_data) {
                if (is_at_line_start && line_len == 3 && line[0] == '.' && line[1] == '\r') {
                    is_in_data = false;
                    atomic_fetch_add(&sink_count, 1);
                    atomic_store(&sink_last_at, sink_now_s());
                    reply = "250 2.0.0 ok\r\n";
                }
                is_at_line_start = true;
            } else if (line_len >= 4 && strncasecmp(line, "EHLO", 4) == 0) {
                reply = sink_creds != NULL && c->tls == NULL
                            ? "250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-STARTTLS\r\n"
                              "250 SIZE 104857600\r\n"
                            : "250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 104857600\r\n";
            } else if (line_len >= 8 && strncasecmp(line, "STARTTLS", 8) == 0 &&
                       sink_creds != NULL && c->tls == NULL) {
                reply = "220 2.0.0 go ahead\r\n";
                is_starttls = true;
            } else if (line_len >= 4 && strncasecmp(line, "DATA", 4) == 0) {
                is_in_data = true;
                is_at_line_start = true;
                reply = "354 go\r\n";
            } else if (line_len >= 4 && strncasecmp(line, "QUIT", 4) == 0) {
                reply = "221 bye\r\n";
                is_quit = true;
            } else {
                reply = "250 ok\r\n";
            }
            if (reply != NULL) {
                size_t k = strlen(reply);
                if (out_len + k >= sizeof(out)) {
                    out[out_len] = '\0';
                    sink_send(c, out);
                    out_len = 0;
                }
                memcpy(out + out_len, reply, k);
                out_len += k;
            }
            if (is_quit || is_starttls)
                break;
        }
        /* A data line longer than the buffer: drop what we have, mid-line. */
        if (pos == 0 && len == sizeof(buf)) {
            is_at_line_start = false;
            len = 0;
        } else {
            memmove(buf, buf + pos, len - pos);
            len -= pos;
        }
        if (out_len > 0) {
            out[out_len] = '\0';
            if (sink_send(c, out) < 0)
                break;
            out_len = 0;
        }
        if (is_quit)
            break;
        if (is_starttls) { /* plaintext sent after STARTTLS is dropped, as RFC 3207 wants */
            len = 0;
            gnutls_init(&c->tls, GNUTLS_SERVER);
            gnutls_priority_set(c->tls, sink_prio);
            gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, sink_creds);
            gnutls_transport_set_int(c->tls, c->fd);
            int rc;
            do
                rc = gnutls_handshake(c->tls);
            while (rc < 0 && !gnutls_error_is_fatal(rc));
            if (rc < 0)
                break;
        }
    }
    if (c->tls != NULL) {
        gnutls_bye(c->tls, GNUTLS_SHUT_WR);
        gnutls_deinit(c->tls);
    }
    close(c->fd);
    return NULL;
}

static void *sink_accept_loop(void *arg)
{
    int lfd = (int)(long)arg;
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            continue;
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        if (pthread_create(&th, &attr, sink_on_client, (void *)(long)fd) != 0)
            close(fd);
        pthread_attr_destroy(&attr);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN); /* a peer gone mid-reply is not our death */
    if ((argc != 2 && argc != 4) || atoi(argv[1]) <= 0) {
        fprintf(stderr, "usage: sink PORT [CERT KEY]\n");
        return 2;
    }
    if (argc == 4) {
        gnutls_global_init();
        gnutls_certificate_allocate_credentials(&sink_creds);
        int rc = gnutls_certificate_set_x509_key_file(sink_creds, argv[2], argv[3],
                                                      GNUTLS_X509_FMT_PEM);
        if (rc < 0 || gnutls_priority_init(&sink_prio, "NORMAL", NULL) < 0) {
            fprintf(stderr, "sink: cannot load %s / %s: %s\n", argv[2], argv[3], gnutls_strerror(rc));
            return 1;
        }
    }
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 1024) < 0) {
        perror("sink: bind/listen");
        return 1;
    }
    pthread_t th;
    pthread_create(&th, NULL, sink_accept_loop, (void *)(long)lfd);
    printf("ready\n");
    fflush(stdout);
    char line[256];
    while (fgets(line, sizeof(line), stdin) != NULL) {
        printf("%ld %.6f\n", atomic_load(&sink_count), atomic_load(&sink_last_at));
        fflush(stdout);
    }
    return 0;
}

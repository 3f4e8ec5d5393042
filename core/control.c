/* control.c — see control.h. One connection at a time is plenty for an
 * admin tool; each is bounded by a short timeout so a stuck client cannot
 * hold the socket. */
#include "core/control.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"

#define CONTROL_IO_TIMEOUT_MS 2000

struct control {
    int fd;
    int stop_pipe[2];
    pthread_t thread;
    control_handler handler;
    void *arg;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

static int control_address(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (path == NULL || path[0] == '\0' || strlen(path) >= sizeof(sa->sun_path))
        return -ENAMETOOLONG;
    memcpy(sa->sun_path, path, strlen(path) + 1);
    return 0;
}

static int64_t control_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Read one line (up to '\n') under a deadline. Returns its length or -errno. */
static int control_read_line(int fd, char *out, size_t out_size, unsigned timeout_ms)
{
    size_t len = 0;
    int64_t deadline = control_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - control_now_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int n = poll(&p, 1, (int)left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n == 0 ? -ETIMEDOUT : -errno;
        ssize_t r = read(fd, out + len, out_size - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            break;
        len += (size_t)r;
        out[len] = '\0';
        if (memchr(out, '\n', len) != NULL || len == out_size - 1)
            break;
    }
    out[len] = '\0';
    char *nl = strpbrk(out, "\r\n");
    if (nl != NULL)
        *nl = '\0';
    return (int)strlen(out);
}

static int control_write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t w = send(fd, buf, len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

static void control_serve_one(struct control *c, int fd)
{
    char line[CONTROL_LINE_MAX];
    int n = control_read_line(fd, line, sizeof(line), CONTROL_IO_TIMEOUT_MS);
    if (n < 0)
        return;
    char *reply = calloc(1, CONTROL_REPLY_MAX);
    if (reply == NULL)
        return;
    bool is_printable = true;
    for (const char *p = line; *p != '\0'; p++)
        if ((unsigned char)*p < ' ' || (unsigned char)*p > '~')
            is_printable = false;
    if (is_printable && n > 0)
        c->handler(line, reply, CONTROL_REPLY_MAX - 2, c->arg);
    else
        snprintf(reply, CONTROL_REPLY_MAX, "error unreadable command");
    size_t len = strnlen(reply, CONTROL_REPLY_MAX - 2);
    reply[len++] = '\n';
    control_write_all(fd, reply, len);
    free(reply);
}

static void *control_run(void *arg)
{
    struct control *c = arg;
    pthread_setname_np(pthread_self(), "control");
    for (;;) {
        struct pollfd p[2] = {{.fd = c->fd, .events = POLLIN},
                              {.fd = c->stop_pipe[0], .events = POLLIN}};
        int n = poll(p, 2, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || (p[1].revents & (POLLIN | POLLHUP)) != 0)
            break;
        if ((p[0].revents & POLLIN) == 0)
            continue;
        int fd = accept4(c->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        control_serve_one(c, fd);
        close(fd);
    }
    return NULL;
}

int control_start(const char *path, control_handler handler, void *arg, struct control **out,
                  char *err, size_t err_size)
{
    *out = NULL;
    struct sockaddr_un sa;
    if (control_address(path, &sa) < 0) {
        snprintf(err, err_size, "control socket path \"%s\" is empty or too long", path);
        return -ENAMETOOLONG;
    }
    /* A live daemon already answering there must not lose its socket. */
    char probe[CONTROL_LINE_MAX];
    if (control_request(path, "ping", probe, sizeof(probe), 500) == 0) {
        snprintf(err, err_size, "another smarthostd answers on %s", path);
        return -EADDRINUSE;
    }
    struct control *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    c->handler = handler;
    c->arg = arg;
    c->stop_pipe[0] = c->stop_pipe[1] = -1;
    snprintf(c->path, sizeof(c->path), "%s", path);
    int rc = 0;
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        rc = -errno;
        goto fail;
    }
    unlink(path); /* stale, from a daemon that was killed */
    mode_t old = umask(0117);
    if (bind(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        rc = -errno;
    umask(old);
    if (rc == 0 && listen(c->fd, 8) < 0)
        rc = -errno;
    if (rc == 0 && pipe2(c->stop_pipe, O_CLOEXEC) < 0)
        rc = -errno;
    if (rc == 0) {
        int e = pthread_create(&c->thread, NULL, control_run, c);
        if (e != 0)
            rc = -e;
    }
    if (rc == 0) {
        *out = c;
        return 0;
    }
fail:
    snprintf(err, err_size, "control socket %s: %s", path, strerror(-rc));
    if (c->fd >= 0) {
        close(c->fd);
        unlink(path);
    }
    if (c->stop_pipe[0] >= 0) {
        close(c->stop_pipe[0]);
        close(c->stop_pipe[1]);
    }
    free(c);
    return rc;
}

void control_stop(struct control *c)
{
    if (c == NULL)
        return;
    char b = 'x';
    while (write(c->stop_pipe[1], &b, 1) < 0 && errno == EINTR)
        ;
    pthread_join(c->thread, NULL);
    close(c->fd);
    unlink(c->path);
    close(c->stop_pipe[0]);
    close(c->stop_pipe[1]);
    free(c);
}

int control_request(const char *path, const char *command, char *reply, size_t reply_size,
                    unsigned timeout_ms)
{
    reply[0] = '\0';
    struct sockaddr_un sa;
    if (control_address(path, &sa) < 0)
        return -ENAMETOOLONG;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int rc = 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        rc = -errno;
    char line[CONTROL_LINE_MAX];
    if (rc == 0) {
        int n = snprintf(line, sizeof(line), "%s\n", command);
        rc = n > 0 && (size_t)n < sizeof(line) ? control_write_all(fd, line, (size_t)n)
                                               : -EINVAL;
    }
    if (rc == 0) {
        int n = control_read_line(fd, reply, reply_size, timeout_ms);
        rc = n < 0 ? n : 0;
    }
    close(fd);
    return rc;
}

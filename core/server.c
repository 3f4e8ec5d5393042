/* server.c — loops, listeners, connection caps, signals. One libuv loop per
 * thread; each loop owns its own SO_REUSEPORT socket for every listener
 * address, so accepting needs no lock and the kernel balances connections.
 * The main thread only handles signals: SIGHUP swaps in a new configuration
 * and new certificates for new sessions (open ones keep theirs), SIGTERM
 * stops accepting and lets sessions finish within SERVER_DRAIN_MS. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/server_internal.h"

/* ---- connection caps -------------------------------------------------- */

static unsigned server_ip_hash(const char *ip)
{
    unsigned h = 2166136261u; /* FNV-1a */
    for (; *ip; ip++)
        h = (h ^ (unsigned char)*ip) * 16777619u;
    return h % SERVER_IP_BUCKETS;
}

const char *server_conn_admit(struct server *srv, const char *ip)
{
    const char *refusal = NULL;
    pthread_mutex_lock(&srv->lock);
    unsigned max_total = srv->cfg->max_connections;
    unsigned max_ip = srv->cfg->max_connections_per_ip;
    pthread_mutex_unlock(&srv->lock);

    pthread_mutex_lock(&srv->conn_lock);
    struct ip_slot **head = &srv->ip_table[server_ip_hash(ip)], *slot = *head;
    while (slot != NULL && strcmp(slot->ip, ip) != 0)
        slot = slot->next;
    if (srv->conn_total >= max_total) {
        refusal = "Too many connections, try again later";
    } else if (slot != NULL && slot->count >= max_ip) {
        refusal = "Too many connections from your address, try again later";
    } else {
        if (slot == NULL) {
            slot = calloc(1, sizeof(*slot));
            if (slot == NULL) {
                pthread_mutex_unlock(&srv->conn_lock);
                return "Insufficient resources, try again later";
            }
            snprintf(slot->ip, sizeof(slot->ip), "%s", ip);
            slot->next = *head;
            *head = slot;
        }
        slot->count++;
        srv->conn_total++;
    }
    pthread_mutex_unlock(&srv->conn_lock);
    return refusal;
}

void server_conn_release(struct server *srv, const char *ip)
{
    pthread_mutex_lock(&srv->conn_lock);
    struct ip_slot **pp = &srv->ip_table[server_ip_hash(ip)];
    while (*pp != NULL && strcmp((*pp)->ip, ip) != 0)
        pp = &(*pp)->next;
    if (*pp != NULL && --(*pp)->count == 0) {
        struct ip_slot *dead = *pp;
        *pp = dead->next;
        free(dead);
    }
    srv->conn_total--;
    pthread_mutex_unlock(&srv->conn_lock);
}

/* ---- binding (as root, before privileges are dropped) ------------------ */

static int server_parse_address(const char *text, struct sockaddr_storage *ss, char *err,
                                size_t err_size)
{
    char host[80];
    const char *colon = strrchr(text, ':');
    if (colon == NULL || (size_t)(colon - text) >= sizeof(host)) {
        snprintf(err, err_size, "bad listener address \"%s\"", text);
        return -1;
    }
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    int port = atoi(colon + 1);
    memset(ss, 0, sizeof(*ss));
    if (host[0] == '[') {
        size_t n = strlen(host);
        if (n < 2 || host[n - 1] != ']') {
            snprintf(err, err_size, "bad listener address \"%s\"", text);
            return -1;
        }
        host[n - 1] = '\0';
        if (uv_ip6_addr(host + 1, port, (struct sockaddr_in6 *)ss) != 0) {
            snprintf(err, err_size, "bad IPv6 address in \"%s\"", text);
            return -1;
        }
    } else if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) != 0) {
        snprintf(err, err_size, "bad IPv4 address in \"%s\"", text);
        return -1;
    }
    return 0;
}

static int server_bind_one(const struct sockaddr_storage *ss, const char *text, char *err,
                           size_t err_size)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(err, err_size, "%s: socket: %s", text, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
        snprintf(err, err_size, "%s: SO_REUSEPORT: %s", text, strerror(errno));
        close(fd);
        return -1;
    }
    if (ss->ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    /* replies go out at once; accepted sockets inherit it from the listener */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    socklen_t len = ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                              : sizeof(struct sockaddr_in);
    if (bind(fd, (const struct sockaddr *)ss, len) < 0) {
        snprintf(err, err_size, "cannot bind %s: %s", text, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

int server_bind(struct config *cfg, struct server **out, char *err, size_t err_size)
{
    struct server *srv = calloc(1, sizeof(*srv));
    if (srv == NULL) {
        snprintf(err, err_size, "out of memory");
        config_free(cfg);
        return -1;
    }
    pthread_mutex_init(&srv->lock, NULL);
    pthread_mutex_init(&srv->conn_lock, NULL);
    srv->cfg = cfg;
    atomic_init(&srv->next_session, 1);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    srv->worker_count = cfg->threads > 0 ? cfg->threads : (size_t)(cores > 0 ? cores : 1);

    /* Expand "*:port" into both families, then one socket per worker each. */
    for (size_t i = 0; i < cfg->listener_count; i++) {
        const struct listener_config *lc = &cfg->listeners[i];
        for (size_t a = 0; a < lc->address_count; a++) {
            const char *addr = lc->addresses[a];
            char expanded[2][200];
            size_t n = 0;
            if (strncmp(addr, "*:", 2) == 0) {
                snprintf(expanded[n++], sizeof(expanded[0]), "0.0.0.0:%s", addr + 2);
                snprintf(expanded[n++], sizeof(expanded[0]), "[::]:%s", addr + 2);
            } else {
                snprintf(expanded[n++], sizeof(expanded[0]), "%s", addr);
            }
            for (size_t k = 0; k < n && srv->socket_count < SERVER_MAX_SOCKETS; k++) {
                struct server_socket *sock = &srv->sockets[srv->socket_count++];
                sock->listener_index = i;
                sock->fd = -1;
                memcpy(sock->address, expanded[k], sizeof(sock->address));
            }
        }
    }
    srv->fds = malloc(sizeof(int) * srv->worker_count * (srv->socket_count ? srv->socket_count : 1));
    if (srv->fds == NULL) {
        snprintf(err, err_size, "out of memory");
        server_free(srv);
        return -1;
    }
    for (size_t i = 0; i < srv->worker_count * srv->socket_count; i++)
        srv->fds[i] = -1;
    for (size_t s = 0; s < srv->socket_count; s++) {
        struct sockaddr_storage ss;
        if (server_parse_address(srv->sockets[s].address, &ss, err, err_size) < 0) {
            server_free(srv);
            return -1;
        }
        for (size_t w = 0; w < srv->worker_count; w++) {
            int fd = server_bind_one(&ss, srv->sockets[s].address, err, err_size);
            if (fd < 0) {
                server_free(srv);
                return -1;
            }
            srv->fds[w * srv->socket_count + s] = fd;
        }
    }
    if (tls_server_ctx_new(cfg, &srv->tls, err, err_size) < 0) {
        server_free(srv);
        return -1;
    }
    *out = srv;
    return 0;
}

const struct config *server_config(const struct server *srv)
{
    return srv->cfg;
}

void server_free(struct server *srv)
{
    if (srv == NULL)
        return;
    if (srv->fds != NULL) {
        for (size_t i = 0; i < srv->worker_count * srv->socket_count; i++)
            if (srv->fds[i] >= 0)
                close(srv->fds[i]);
        free(srv->fds);
    }
    for (size_t i = 0; i < SERVER_IP_BUCKETS; i++) {
        while (srv->ip_table[i] != NULL) {
            struct ip_slot *n = srv->ip_table[i]->next;
            free(srv->ip_table[i]);
            srv->ip_table[i] = n;
        }
    }
    if (srv->tls != NULL)
        tls_server_ctx_unref(srv->tls);
    config_free(srv->cfg);
    pthread_mutex_destroy(&srv->lock);
    pthread_mutex_destroy(&srv->conn_lock);
    free(srv);
}

/* ---- worker loops ----------------------------------------------------- */

static void worker_on_connection(uv_stream_t *listener, int status)
{
    struct worker *w = listener->loop->data;
    if (status < 0) {
        log_warn(NULL, "accept error: %s", uv_strerror(status));
        return;
    }
    conn_accept(w, listener, (size_t)(uintptr_t)listener->data);
}

static void worker_on_drain_deadline(uv_timer_t *t)
{
    struct worker *w = t->data;
    struct conn *c = w->conns;
    while (c != NULL) {
        struct conn *next = conn_next(c);
        conn_force_close(c);
        c = next;
    }
}

static void worker_stop_listening(struct worker *w)
{
    if (w->has_stopped_listening)
        return;
    w->has_stopped_listening = true;
    for (size_t i = 0; i < w->listener_count; i++)
        uv_close((uv_handle_t *)&w->listeners[i], NULL);
    struct conn *c = w->conns;
    while (c != NULL) {
        struct conn *next = conn_next(c);
        conn_shutdown(c);
        c = next;
    }
    if (w->conns == NULL) {
        uv_close((uv_handle_t *)&w->wakeup, NULL);
        uv_close((uv_handle_t *)&w->drain_timer, NULL);
    } else {
        uv_timer_start(&w->drain_timer, worker_on_drain_deadline, SERVER_DRAIN_MS, 0);
    }
}

static void worker_on_wakeup(uv_async_t *a)
{
    struct worker *w = a->data;
    pthread_mutex_lock(&w->lock);
    struct conn *done = w->done_head;
    w->done_head = NULL;
    bool is_stopping = w->is_stopping;
    pthread_mutex_unlock(&w->lock);
    while (done != NULL) {
        struct conn *next = conn_take_done_next(done);
        conn_on_commit_complete(done);
        done = next;
    }
    if (is_stopping)
        worker_stop_listening(w);
}

static void worker_main(void *arg)
{
    struct worker *w = arg;
    char name[16]; /* top -H and perf tell the threads apart by these names */
    snprintf(name, sizeof(name), "session%zu", w->index);
    pthread_setname_np(pthread_self(), name);
    uv_run(&w->loop, UV_RUN_DEFAULT);
}

static int worker_init(struct server *srv, struct worker *w, size_t index, char *err,
                       size_t err_size)
{
    w->srv = srv;
    w->index = index;
    pthread_mutex_init(&w->lock, NULL);
    if (uv_loop_init(&w->loop) < 0) {
        snprintf(err, err_size, "cannot create an event loop");
        return -1;
    }
    w->loop.data = w;
    uv_async_init(&w->loop, &w->wakeup, worker_on_wakeup);
    w->wakeup.data = w;
    uv_timer_init(&w->loop, &w->drain_timer);
    w->drain_timer.data = w;
    for (size_t s = 0; s < srv->socket_count; s++) {
        uv_tcp_t *t = &w->listeners[w->listener_count];
        uv_tcp_init(&w->loop, t);
        int fd = srv->fds[index * srv->socket_count + s];
        int r = uv_tcp_open(t, fd);
        if (r == 0) {
            srv->fds[index * srv->socket_count + s] = -1; /* the handle owns it now */
            t->data = (void *)(uintptr_t)srv->sockets[s].listener_index;
            r = uv_listen((uv_stream_t *)t, 1024, worker_on_connection);
        }
        w->listener_count++;
        if (r < 0) {
            snprintf(err, err_size, "cannot listen on %s: %s", srv->sockets[s].address,
                     uv_strerror(r));
            return -1;
        }
    }
    return 0;
}

/* ---- signals and reload (main thread) ---------------------------------- */

struct server_main {
    struct server *srv;
    uv_signal_t sighup, sigterm, sigint;
    bool is_stopping;
};

static bool server_listeners_equal(const struct config *a, const struct config *b)
{
    if (a->listener_count != b->listener_count)
        return false;
    for (size_t i = 0; i < a->listener_count; i++) {
        const struct listener_config *x = &a->listeners[i], *y = &b->listeners[i];
        if (strcmp(x->name, y->name) != 0 || x->mode != y->mode ||
            x->address_count != y->address_count)
            return false;
        for (size_t k = 0; k < x->address_count; k++)
            if (strcmp(x->addresses[k], y->addresses[k]) != 0)
                return false;
    }
    return true;
}

static void server_reload(struct server *srv)
{
    char err[512];
    struct config *cfg = NULL;
    if (config_load(srv->cfg->path, &cfg, err, sizeof(err)) < 0) {
        log_err(NULL, "reload failed, keeping the running configuration: %s", err);
        return;
    }
    if (!server_listeners_equal(srv->cfg, cfg) || cfg->threads != srv->cfg->threads ||
        strcmp(cfg->database, srv->cfg->database) != 0 || strcmp(cfg->user, srv->cfg->user) != 0) {
        log_warn(NULL, "reload: listeners, threads, database and user need a restart; "
                       "those keep their running values, other changes apply");
        /* keep the running listeners: copy them over the new ones */
        for (size_t i = 0; i < cfg->listener_count; i++)
            for (size_t k = 0; k < cfg->listeners[i].address_count; k++)
                free(cfg->listeners[i].addresses[k]);
        for (size_t i = 0; i < cfg->listener_count; i++)
            free(cfg->listeners[i].tls_priority);
        cfg->listener_count = srv->cfg->listener_count;
        for (size_t i = 0; i < cfg->listener_count; i++) {
            cfg->listeners[i] = srv->cfg->listeners[i];
            cfg->listeners[i].tls_priority = strdup(srv->cfg->listeners[i].tls_priority);
            for (size_t k = 0; k < cfg->listeners[i].address_count; k++)
                cfg->listeners[i].addresses[k] = strdup(srv->cfg->listeners[i].addresses[k]);
        }
        cfg->threads = srv->cfg->threads;
        free(cfg->database);
        cfg->database = strdup(srv->cfg->database);
        free(cfg->user);
        cfg->user = strdup(srv->cfg->user);
    }
    struct tls_server_ctx *tls = NULL;
    if (tls_server_ctx_new(cfg, &tls, err, sizeof(err)) < 0) {
        log_err(NULL, "reload failed, keeping the running configuration: %s", err);
        config_free(cfg);
        return;
    }
    pthread_mutex_lock(&srv->lock);
    struct config *old_cfg = srv->cfg;
    struct tls_server_ctx *old_tls = srv->tls;
    srv->cfg = cfg;
    srv->tls = tls;
    pthread_mutex_unlock(&srv->lock);
    config_free(old_cfg);
    tls_server_ctx_unref(old_tls); /* open sessions hold their own references */
    log_setup(cfg->log_target, cfg->log_level, "smarthostd");
    struct throttle_params tp = {
        .failure_delay_ms = cfg->auth_failure_delay_ms,
        .max_delay_ms = cfg->auth_max_delay_ms,
        .ip_lockout_failures = cfg->auth_ip_lockout_failures,
        .account_lockout_failures = cfg->auth_account_lockout_failures,
        .lockout_ms = cfg->auth_lockout_ms,
        .window_ms = cfg->auth_failure_window_ms,
    };
    throttle_set_params(srv->throttle, &tp);
    log_info(NULL, "reloaded configuration from %s", cfg->path);
}

static void server_on_signal(uv_signal_t *h, int signum)
{
    struct server_main *m = h->data;
    if (signum == SIGHUP) {
        server_reload(m->srv);
        return;
    }
    if (m->is_stopping)
        return;
    m->is_stopping = true;
    log_info(NULL, "%s received: no new connections, draining open sessions",
             signum == SIGTERM ? "SIGTERM" : "SIGINT");
    for (size_t i = 0; i < m->srv->worker_count; i++) {
        struct worker *w = &m->srv->workers[i];
        pthread_mutex_lock(&w->lock);
        w->is_stopping = true;
        pthread_mutex_unlock(&w->lock);
        uv_async_send(&w->wakeup);
    }
    uv_close((uv_handle_t *)&m->sighup, NULL);
    uv_close((uv_handle_t *)&m->sigterm, NULL);
    uv_close((uv_handle_t *)&m->sigint, NULL);
}

int server_run(struct server *srv, struct queue *queue, struct throttle *throttle)
{
    char err[256];
    srv->queue = queue;
    srv->throttle = throttle;
    srv->workers = calloc(srv->worker_count, sizeof(*srv->workers));
    if (srv->workers == NULL)
        return -1;
    for (size_t i = 0; i < srv->worker_count; i++) {
        if (worker_init(srv, &srv->workers[i], i, err, sizeof(err)) < 0) {
            log_err(NULL, "%s", err);
            return -1; /* startup failure: the process exits */
        }
    }
    uv_loop_t *main_loop = uv_default_loop();
    struct server_main m = {.srv = srv};
    uv_signal_init(main_loop, &m.sighup);
    uv_signal_init(main_loop, &m.sigterm);
    uv_signal_init(main_loop, &m.sigint);
    m.sighup.data = m.sigterm.data = m.sigint.data = &m;
    uv_signal_start(&m.sighup, server_on_signal, SIGHUP);
    uv_signal_start(&m.sigterm, server_on_signal, SIGTERM);
    uv_signal_start(&m.sigint, server_on_signal, SIGINT);

    for (size_t i = 0; i < srv->worker_count; i++)
        uv_thread_create(&srv->workers[i].thread, worker_main, &srv->workers[i]);
    for (size_t s = 0; s < srv->socket_count; s++)
        log_info(NULL, "listening listener=%s address=%s mode=%s",
                 srv->cfg->listeners[srv->sockets[s].listener_index].name,
                 srv->sockets[s].address,
                 (const char *[]){"starttls", "implicit", "plain"}
                     [srv->cfg->listeners[srv->sockets[s].listener_index].mode]);
    log_info(NULL, "ready threads=%zu", srv->worker_count);

    uv_run(main_loop, UV_RUN_DEFAULT);
    for (size_t i = 0; i < srv->worker_count; i++) {
        struct worker *w = &srv->workers[i];
        uv_thread_join(&w->thread);
        uv_run(&w->loop, UV_RUN_DEFAULT); /* close callbacks still pending */
        uv_loop_close(&w->loop);
        pthread_mutex_destroy(&w->lock);
    }
    free(srv->workers);
    srv->workers = NULL;
    uv_loop_close(main_loop);
    log_info(NULL, "stopped");
    return 0;
}

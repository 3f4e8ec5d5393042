/* session_io.c — one client connection on one loop: the TCP stream, TLS
 * (tls.c) when active, the protocol engine (smtp_session.c), and the slow
 * steps it requests: AUTH on a libuv worker, commit through the queue's
 * group-commit thread. Owns the connection's lifetime: it is freed only when
 * both its handles have closed AND no worker job or commit is in flight.
 * Never blocks the loop. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "core/server_internal.h"

#define CONN_MAX_WRITE_QUEUE (512 * 1024) /* a client that stops reading */

enum conn_timer_mode { CONN_TIMER_IDLE, CONN_TIMER_AUTH_DELAY };

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown_req;
    struct worker *w;
    struct conn *prev, *next;     /* worker's list */
    struct conn *done_next;       /* worker's commit-completion list */
    struct smtp_session *engine;
    struct tls_conn *tls;
    struct tls_server_ctx *tls_ctx;
    struct auth_session *auth;
    size_t listener_index;
    enum listener_mode mode;
    char ip[64];
    char id[24];
    char hostname[256];
    uint64_t idle_timeout_ms;
    uint64_t deadline_ms;         /* uv_now value when the session must end */
    int open_handles;
    bool is_closing, is_admitted, is_reading, is_job_in_flight, is_tls_pending;
    /* An AUTH or a commit is answering: what the client sends meanwhile
     * waits in the engine, and its end of input until then too. */
    bool is_input_held, is_peer_done;
    enum conn_timer_mode timer_mode;
    /* AUTH job: inputs copied off the engine, outcome filled by the worker */
    uv_work_t auth_work;
    struct smtp_session_auth_args auth_args;
    char auth_mech[32];
    char *auth_text;
    struct auth_outcome auth_outcome;
    /* commit job */
    int commit_status;
};

static void conn_drive(struct conn *c);
static void conn_close(struct conn *c);

struct conn *conn_next(struct conn *c)
{
    return c->next;
}

struct conn *conn_take_done_next(struct conn *c)
{
    struct conn *n = c->done_next;
    c->done_next = NULL;
    return n;
}

static uint64_t conn_now_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- freeing ---------------------------------------------------------- */

static void conn_free_if_done(struct conn *c)
{
    if (c->open_handles > 0 || c->is_job_in_flight)
        return;
    struct worker *w = c->w;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    if (c->is_admitted)
        server_conn_release(w->srv, c->ip);
    log_info(c->id, "disconnect client=[%s]", c->ip);
    smtp_session_free(c->engine);
    tls_conn_free(c->tls);
    if (c->tls_ctx != NULL)
        tls_server_ctx_unref(c->tls_ctx);
    auth_session_free(c->auth);
    if (c->auth_text != NULL) {
        explicit_bzero(c->auth_text, strlen(c->auth_text));
        free(c->auth_text);
    }
    free(c);
    /* A draining loop ends when its last connection is gone. */
    if (w->has_stopped_listening && w->conns == NULL &&
        !uv_is_closing((uv_handle_t *)&w->wakeup)) {
        uv_close((uv_handle_t *)&w->wakeup, NULL);
        uv_close((uv_handle_t *)&w->drain_timer, NULL);
    }
}

static void conn_on_handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    c->open_handles--;
    conn_free_if_done(c);
}

/* ---- writing ---------------------------------------------------------- */

struct conn_write {
    uv_write_t req;
    size_t len;
    uint8_t data[];
};

static void conn_on_write(uv_write_t *req, int status)
{
    struct conn_write *wr = (struct conn_write *)req;
    struct conn *c = req->handle->data;
    free(wr);
    if (status < 0 && status != UV_ECANCELED)
        conn_close(c);
}

/* Bytes for the socket (ciphertext once TLS is on). Copied: the buffer
 * must stay alive until the write callback. */
static void conn_write_raw(struct conn *c, const uint8_t *data, size_t len)
{
    if (len == 0 || uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > CONN_MAX_WRITE_QUEUE) {
        log_info(c->id, "client stopped reading replies, closing client=[%s]", c->ip);
        conn_close(c);
        return;
    }
    /* Most replies fit the socket at once: written here they need no
     * request, no copy, and no completion round in the loop, whose end
     * re-arms the socket in epoll (an epoll_ctl per reply). uv_try_write
     * refuses while earlier bytes are still queued, so order holds. */
    uv_buf_t now = uv_buf_init((char *)data, (unsigned)len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &now, 1);
    if (n >= 0 && (size_t)n == len)
        return;
    if (n < 0 && n != UV_EAGAIN) {
        conn_close(c);
        return;
    }
    if (n > 0) {
        data += n;
        len -= (size_t)n;
    }
    struct conn_write *wr = malloc(sizeof(*wr) + len);
    if (wr == NULL) {
        conn_close(c);
        return;
    }
    memcpy(wr->data, data, len);
    wr->len = len;
    uv_buf_t buf = uv_buf_init((char *)wr->data, (unsigned)len);
    if (uv_write(&wr->req, (uv_stream_t *)&c->tcp, &buf, 1, conn_on_write) < 0) {
        free(wr);
        conn_close(c);
    }
}

/* is_last: the connection closes next; TLS then sends its close_notify in
 * the same write as the last reply. */
static void conn_flush(struct conn *c, bool is_last)
{
    size_t len;
    const uint8_t *out = smtp_session_output(c->engine, &len);
    if (len == 0)
        return;
    if (c->tls == NULL)
        conn_write_raw(c, out, len);
    else if (tls_conn_is_established(c->tls) && tls_conn_send(c->tls, out, len, is_last) < 0)
        conn_close(c);
    /* else mid-handshake (a timeout's 421): dropped, no plaintext into a TLS stream */
    smtp_session_output_consume(c->engine);
}

/* ---- closing ---------------------------------------------------------- */

static void conn_on_shutdown(uv_shutdown_t *req, int status)
{
    struct conn *c = req->data;
    uv_close((uv_handle_t *)&c->tcp, conn_on_handle_closed);
}

/* Let queued replies (e.g. 221, 421) reach the client, then close. */
static void conn_close(struct conn *c)
{
    if (c->is_closing)
        return;
    c->is_closing = true;
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (c->tls != NULL)
        tls_conn_bye(c->tls);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, conn_on_handle_closed);
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, conn_on_shutdown) < 0)
        uv_close((uv_handle_t *)&c->tcp, conn_on_handle_closed);
}

void conn_force_close(struct conn *c)
{
    if (c->is_closing)
        return;
    smtp_session_close(c->engine, SESSION_CLOSE_SHUTDOWN);
    conn_flush(c, true);
    conn_close(c);
}

void conn_shutdown(struct conn *c)
{
    if (c->is_closing || smtp_session_is_busy(c->engine) || c->is_job_in_flight)
        return; /* finishes its transaction first; drain_timer bounds it */
    conn_force_close(c);
}

/* ---- timers ----------------------------------------------------------- */

static void conn_on_timer(uv_timer_t *t);

static void conn_timer_arm(struct conn *c)
{
    if (c->is_closing)
        return;
    uint64_t now = uv_now(&c->w->loop);
    uint64_t left = c->deadline_ms > now ? c->deadline_ms - now : 0;
    uint64_t ms = c->idle_timeout_ms < left ? c->idle_timeout_ms : left;
    c->timer_mode = CONN_TIMER_IDLE;
    uv_timer_start(&c->timer, conn_on_timer, ms, 0);
}

static void conn_deliver_auth(struct conn *c)
{
    c->is_input_held = false;
    conn_timer_arm(c); /* stopped while the worker ran: a client silent after it is idle */
    smtp_session_auth_done(c->engine, &c->auth_outcome);
    explicit_bzero(&c->auth_outcome, sizeof(c->auth_outcome));
    conn_drive(c);
}

static void conn_on_timer(uv_timer_t *t)
{
    struct conn *c = t->data;
    if (c->timer_mode == CONN_TIMER_AUTH_DELAY) {
        conn_deliver_auth(c);
        return;
    }
    if (c->is_job_in_flight) { /* a commit outlives no timer: look again later */
        uv_timer_start(&c->timer, conn_on_timer, 1000, 0);
        return;
    }
    bool is_total = uv_now(&c->w->loop) >= c->deadline_ms;
    log_info(c->id, "%s client=[%s] state=%s", is_total ? "session time limit" : "idle timeout",
             c->ip, smtp_session_state_name(smtp_session_state(c->engine)));
    smtp_session_close(c->engine, is_total ? SESSION_CLOSE_TIMEOUT : SESSION_CLOSE_IDLE);
    conn_flush(c, true);
    conn_close(c);
}

/* ---- reading ---------------------------------------------------------- */

static void conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;
    /* Read callbacks run one at a time per loop and consume the bytes at
     * once, so every connection of a loop shares one read buffer. */
    *buf = uv_buf_init((char *)c->w->read_buf, sizeof(c->w->read_buf));
}

static void conn_on_plaintext(void *owner, const uint8_t *data, size_t len)
{
    struct conn *c = owner;
    if (smtp_session_input(c->engine, data, len) < 0)
        conn_close(c);
}

static void conn_on_tls_write(void *owner, const uint8_t *data, size_t len)
{
    conn_write_raw(owner, data, len);
}

static void conn_on_handshake(void *owner, bool ok, const char *reason)
{
    struct conn *c = owner;
    if (!ok) {
        log_info(c->id, "tls handshake failed client=[%s] reason=\"%s\"", c->ip, reason);
        conn_close(c);
        return;
    }
    c->is_tls_pending = false;
    smtp_session_tls_started(c->engine, tls_conn_version(c->tls), tls_conn_cipher(c->tls));
}

static const struct tls_conn_ops conn_tls_ops = {
    .write = conn_on_tls_write,
    .plaintext = conn_on_plaintext,
    .handshake_done = conn_on_handshake,
};

static void conn_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void conn_read_start(struct conn *c)
{
    if (c->is_peer_done) { /* its end of input came during a job: all answered now */
        conn_close(c);
        return;
    }
    if (!c->is_reading && !c->is_closing) {
        if (uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read) == 0)
            c->is_reading = true;
    }
}

static void conn_read_stop(struct conn *c)
{
    if (c->is_reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->is_reading = false;
    }
}

static void conn_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = stream->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        if (nread == UV_EOF && c->is_input_held) { /* answer what came first */
            conn_read_stop(c);
            c->is_peer_done = true;
            return;
        }
        if (nread != UV_EOF)
            log_debug(c->id, "read error: %s", uv_strerror((int)nread));
        conn_close(c);
        return;
    }
    bool is_end = false;
    if (c->tls != NULL) {
        int r = tls_conn_feed(c->tls, (const uint8_t *)buf->base, (size_t)nread);
        if (r < 0) {
            conn_close(c);
            return;
        }
        is_end = r == TLS_CONN_CLOSED;
    } else if (smtp_session_input(c->engine, (const uint8_t *)buf->base, (size_t)nread) < 0) {
        conn_close(c);
        return;
    }
    if (c->is_closing)
        return;
    if (is_end) {
        /* The client's close_notify, often in the same read as its last
         * commands ("QUIT", or the end of DATA while the commit runs): those
         * are answered, as after a TCP end of input, then the connection
         * closes (conn_read_start, once nothing is left to do). */
        conn_read_stop(c);
        c->is_peer_done = true;
        if (!c->is_input_held)
            conn_drive(c);
        return;
    }
    if (c->is_input_held) {
        /* Pipelined past the command being answered: the bytes wait in the
         * engine, and the socket rests until the answer is out. Reading
         * goes on through AUTH and commits otherwise, so the usual session,
         * which sends nothing meanwhile, costs no epoll change per job. */
        conn_read_stop(c);
        return;
    }
    conn_timer_arm(c);
    conn_drive(c);
}

/* ---- STARTTLS / implicit TLS ------------------------------------------ */

static int conn_tls_begin(struct conn *c)
{
    c->tls = tls_conn_new(c->tls_ctx, c->listener_index, &conn_tls_ops, c);
    if (c->tls == NULL) {
        log_err(c->id, "cannot create a TLS session");
        return -1;
    }
    c->is_tls_pending = true;
    tls_conn_start(c->tls);
    return 0;
}

/* ---- AUTH on a worker thread ------------------------------------------ */

static void conn_auth_work(uv_work_t *req)
{
    struct conn *c = req->data;
    uint64_t now = conn_now_wall_ms();
    if (c->auth == NULL)
        c->auth = auth_session_new(c->hostname, c->ip);
    if (c->auth == NULL) {
        memset(&c->auth_outcome, 0, sizeof(c->auth_outcome));
        c->auth_outcome.result = AUTH_TEMPFAIL;
        return;
    }
    if (c->auth_args.is_start)
        auth_session_start(c->auth, c->auth_mech, c->auth_text, now, &c->auth_outcome);
    else
        auth_session_step(c->auth, c->auth_text, now, &c->auth_outcome);
}

static void conn_auth_after(uv_work_t *req, int status)
{
    struct conn *c = req->data;
    c->is_job_in_flight = false;
    if (c->auth_text != NULL) {
        explicit_bzero(c->auth_text, strlen(c->auth_text));
        free(c->auth_text);
        c->auth_text = NULL;
    }
    if (c->is_closing) {
        conn_free_if_done(c);
        return;
    }
    if (status < 0) {
        c->auth_outcome.result = AUTH_TEMPFAIL;
    }
    if (c->auth_outcome.result == AUTH_OK || c->auth_outcome.result == AUTH_FAIL ||
        c->auth_outcome.result == AUTH_LOCKED) {
        /* The exchange is over: the next AUTH starts a fresh SASL context. */
        auth_session_free(c->auth);
        c->auth = NULL;
    }
    if (c->auth_outcome.result == AUTH_FAIL && c->auth_outcome.delay_ms > 0) {
        /* Throttling: the 535 waits, the loop does not. */
        c->timer_mode = CONN_TIMER_AUTH_DELAY;
        uv_timer_start(&c->timer, conn_on_timer, c->auth_outcome.delay_ms, 0);
        return;
    }
    conn_deliver_auth(c);
}

static int conn_auth_begin(struct conn *c)
{
    smtp_session_auth_args(c->engine, &c->auth_args);
    snprintf(c->auth_mech, sizeof(c->auth_mech), "%s", c->auth_args.mech);
    c->auth_text = NULL;
    if (c->auth_args.text != NULL && (c->auth_text = strdup(c->auth_args.text)) == NULL)
        return -1;
    c->auth_work.data = c;
    if (uv_queue_work(&c->w->loop, &c->auth_work, conn_auth_work, conn_auth_after) < 0)
        return -1;
    c->is_job_in_flight = true;
    uv_timer_stop(&c->timer); /* a slow hash must not look like an idle client */
    return 0;
}

/* ---- commit through the queue ----------------------------------------- */

/* Runs on the queue's committer thread: hand the result to our loop. */
static void conn_on_commit(struct queue_commit_req *req, int status)
{
    struct conn *c = req->data;
    struct worker *w = c->w;
    c->commit_status = status;
    pthread_mutex_lock(&w->lock);
    c->done_next = w->done_head;
    w->done_head = c;
    pthread_mutex_unlock(&w->lock);
    uv_async_send(&w->wakeup);
}

void conn_on_commit_complete(struct conn *c)
{
    c->is_job_in_flight = false;
    c->is_input_held = false;
    smtp_session_commit_done(c->engine, c->commit_status);
    if (c->is_closing) {
        conn_free_if_done(c);
        return;
    }
    conn_timer_arm(c);
    conn_drive(c);
    if (c->w->has_stopped_listening)
        conn_shutdown(c);
}

static int conn_commit_begin(struct conn *c)
{
    struct queue_commit_req *req = smtp_session_commit_req(c->engine);
    req->cb = conn_on_commit;
    req->data = c;
    c->is_job_in_flight = true;
    if (queue_commit_submit(c->w->srv->queue, req) < 0) {
        c->is_job_in_flight = false;
        smtp_session_commit_done(c->engine, QUEUE_ERR_CLOSED);
        return 0;
    }
    return 0;
}

/* ---- the driver ------------------------------------------------------- */

static void conn_drive(struct conn *c)
{
    while (!c->is_closing) {
        enum session_request req = smtp_session_run(c->engine);
        conn_flush(c, req == SESSION_REQ_CLOSE);
        if (c->is_closing)
            return;
        switch (req) {
        case SESSION_REQ_NONE:
            conn_read_start(c);
            return;
        case SESSION_REQ_STARTTLS:
            if (c->tls != NULL) /* handshake under way */
                return;
            if (conn_tls_begin(c) < 0)
                conn_close(c);
            return;
        case SESSION_REQ_AUTH:
            if (conn_auth_begin(c) < 0) {
                struct auth_outcome o = {.result = AUTH_TEMPFAIL};
                smtp_session_auth_done(c->engine, &o);
                continue;
            }
            c->is_input_held = true;
            return;
        case SESSION_REQ_COMMIT:
            conn_commit_begin(c);
            if (c->is_job_in_flight) {
                c->is_input_held = true;
                return;
            }
            continue;
        case SESSION_REQ_CLOSE:
            conn_close(c);
            return;
        }
    }
}

/* ---- accept ----------------------------------------------------------- */

static void conn_peer_ip(uv_tcp_t *tcp, char *out, size_t size)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    snprintf(out, size, "unknown");
    if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET) {
        uv_ip4_name((struct sockaddr_in *)&ss, out, size);
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
            inet_ntop(AF_INET, &s6->sin6_addr.s6_addr[12], out, (socklen_t)size);
        else
            uv_ip6_name(s6, out, size);
    }
}

void conn_accept(struct worker *w, uv_stream_t *listener, size_t listener_index)
{
    struct server *srv = w->srv;
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    c->w = w;
    uv_tcp_init(&w->loop, &c->tcp);
    uv_timer_init(&w->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->open_handles = 2;
    c->next = w->conns;
    if (w->conns != NULL)
        w->conns->prev = c;
    w->conns = c;
    snprintf(c->id, sizeof(c->id), "s%llx",
             (unsigned long long)atomic_fetch_add(&srv->next_session, 1));
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) < 0) {
        c->is_closing = true;
        uv_close((uv_handle_t *)&c->timer, conn_on_handle_closed);
        uv_close((uv_handle_t *)&c->tcp, conn_on_handle_closed);
        return;
    }
    conn_peer_ip(&c->tcp, c->ip, sizeof(c->ip));

    /* Snapshot what this session needs from the config in force now. */
    struct smtp_session_params p;
    pthread_mutex_lock(&srv->lock);
    const struct config *cfg = srv->cfg;
    const struct listener_config *lc = &cfg->listeners[listener_index];
    c->listener_index = listener_index;
    c->mode = lc->mode;
    c->tls_ctx = tls_server_ctx_ref(srv->tls);
    snprintf(c->hostname, sizeof(c->hostname), "%s", cfg->hostname);
    c->idle_timeout_ms = cfg->idle_timeout_ms;
    c->deadline_ms = uv_now(&w->loop) + cfg->session_timeout_ms;
    p = (struct smtp_session_params){
        .session_id = c->id,
        .hostname = c->hostname,
        .client_ip = c->ip,
        .listener_name = lc->name,
        .mode = lc->mode,
        .bare_lf = lc->bare_lf,
        .allow_plaintext_auth = lc->allow_plaintext_auth,
        .max_message_size = cfg->max_message_size,
        .max_recipients = cfg->max_recipients,
        .max_line_length = cfg->max_line_length,
        .max_errors = cfg->max_errors,
    };
    char trusted[256];
    p.trusted_account = config_trusted_account(lc, c->ip, trusted, sizeof(trusted));
    c->engine = smtp_session_new(&p);
    char listener_name[64];
    snprintf(listener_name, sizeof(listener_name), "%s", lc->name);
    pthread_mutex_unlock(&srv->lock);

    if (c->engine == NULL) {
        conn_close(c);
        return;
    }
    log_info(c->id, "connect client=[%s] listener=%s", c->ip, listener_name);
    const char *refusal = server_conn_admit(srv, c->ip);
    if (refusal != NULL) {
        log_info(c->id, "reject: %s client=[%s]", refusal, c->ip);
        if (c->mode != LISTENER_IMPLICIT) {
            char line[512];
            int n = smtp_session_format_refusal(line, sizeof(line), c->hostname, refusal);
            conn_write_raw(c, (const uint8_t *)line, (size_t)n);
        }
        conn_close(c);
        return;
    }
    c->is_admitted = true;
    conn_timer_arm(c);
    if (c->mode == LISTENER_IMPLICIT && conn_tls_begin(c) < 0) {
        conn_close(c);
        return;
    }
    conn_drive(c);
}

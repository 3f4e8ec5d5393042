/* runner.c — see runner.h.
 *
 * Life of a message here: a message just committed is handed over whole
 * by the queue's committed hook (relay_runner_offer, on the committer
 * thread, into the inbox); one that was not (too large, no room, a retry,
 * after a restart) comes from a scan (worker), which returns due messages
 * with their bodies. Each becomes a relay_msg whose due recipients are split
 * into jobs,
 * one per destination (domain, or the relayhost). dispatch() starts jobs
 * within the limits (in total, per destination, per address, pacing). A job
 * resolves, then walks the addresses: connect, deliver, per-recipient
 * results. When the last job of a message ends, its outcome (attempt rows,
 * recipient states, any DSN) is written in one transaction (by the queue's
 * committer thread, on its connection, as a queue_task; on a worker when
 * the runner has no queue), and only then is the message free to be picked
 * again. So a DSN is created exactly once per failure and never lost, and a
 * recipient is 'delivered' only once the remote 250 is on disk here. */
#include "relay/runner.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <uv.h>

#include "core/log.h"
#include "core/queue.h"
#include "relay/bounce.h"
#include "relay/dns.h"
#include "relay/retry.h"
#include "relay/smtp_client.h"

#define RUNNER_MSGS_MAX 200         /* messages held in memory (taken per scan at most) */
#define RUNNER_OFFER_MAX_SIZE (128u << 10) /* larger committed messages are left to a
                                        scan: no copy of them on the committer thread */
#define RUNNER_BYTES_MAX (64u << 20) /* their bodies, in bytes (one message may exceed it) */
#define RUNNER_MAX_RESCAN_MS 60000  /* look at the queue at least this often */
#define RUNNER_RETRY_SCAN_MS 5000   /* and this soon after a failure left mail behind */
#define RUNNER_RECORD_BATCH 64       /* delivery outcomes written per transaction */
#define RUNNER_RECORD_GATHER_MS 20   /* and gathered this long first: each write takes
                                        the lock the submissions' commits need */
#define RUNNER_PURGE_EVERY_S 60      /* finished messages past keep_done are removed */
#define RUNNER_STOP_GRACE_MS 10000  /* deliveries under way get this long at stop */
#define RUNNER_MAX_ATTEMPTS 64      /* attempt rows kept per message and run */
#define RUNNER_MAX_RATES 64
#define RUNNER_IDLE_MAX 16          /* delivered-on connections kept open for the next message */
#define RUNNER_TEXT_MAX 1024

/* ---- settings copied from the config ------------------------------------ */

struct runner_rate {
    char key[256];                  /* domain, or "relayhost" */
    struct config_rate rate;
    /* sliding window state (loop thread) */
    int64_t window_start_ms;
    unsigned used;
};

struct runner_settings {
    char database[4096];
    unsigned busy_ms;
    char helo[256];
    char hostname[256];
    unsigned port;
    struct dns_options dns;
    char dns_servers[512];
    unsigned connect_ms, command_ms, data_ms;
    unsigned max_deliveries, max_per_domain, max_per_ip;
    uint64_t idle_ms;               /* connection_cache_time (Postfix:
                                     * smtp_connection_cache_time_limit) */
    enum client_tls_policy tls;
    char *tls_policy;               /* "domain=policy, …" */
    struct runner_rate rates[RUNNER_MAX_RATES];
    size_t rate_count;
    struct retry_params retry;
    uint64_t delay_warning_s;
    uint64_t keep_done_s;
    int bounce_to;                  /* 0 sender, 1 admin, 2 both */
    char admin[256];
    bool has_relayhost;
    char relayhost[256];
    unsigned relayhost_port;
    char *relayhost_domains;
    bool is_relayhost_implicit;
    bool is_relayhost_verify;
    char relay_user[256];
    char relay_password[256];
    bool has_relay_auth;
};

/* ---- runtime structures -------------------------------------------------- */

struct relay_msg;

struct runner_rcpt {
    int64_t id;
    char address[512];
    unsigned attempts;
    /* outcome of this run */
    bool is_done;                   /* a result is known */
    enum retry_outcome outcome;
    char status[16];
    char error[RUNNER_TEXT_MAX];    /* the reply / local error */
    char remote_mta[256];
    bool is_remote;
};

struct runner_attempt {
    int64_t recipient_id;
    char domain[256], host[256], address[80], step[16], tls[96], outcome[16];
    char reply[RUNNER_TEXT_MAX];
};

struct relay_msg {
    struct queue_due due;           /* rcpts moved into rcpt[] */
    uint8_t *body;
    size_t body_len;
    struct runner_rcpt *rcpt;
    size_t rcpt_count;
    size_t jobs_left;
    struct runner_attempt *attempts;
    size_t attempt_count;
    struct relay_msg *next;         /* in runner->msgs */
};

struct runner_job;

struct runner_job {
    struct relay_runner *runner;
    struct relay_msg *msg;
    char key[256];                  /* destination: domain, or "relayhost" */
    char domain[256];
    bool is_relayhost;
    size_t *rcpt_idx;               /* into msg->rcpt */
    size_t rcpt_n;
    const char **rcpt_addrs;        /* for client_txn: the ones sent */
    size_t *sent_idx;               /* msg->rcpt index of each sent recipient */
    size_t sent_n;
    bool is_started;
    /* the route */
    struct dns_route route;
    size_t host_i, addr_i;
    bool is_plain_retry;            /* opportunistic TLS failed: same address, no TLS */
    bool is_from_idle;              /* sending on a parked connection (may have gone stale) */
    char last_error[RUNNER_TEXT_MAX];
    char last_step[16];
    int last_code;
    char cur_addr[80];
    char cur_host[256];
    struct client_options opts;     /* borrowed by the connection */
    struct client_txn txn;          /* borrowed by client_send until its callback */
    struct client_conn *conn;
    bool is_counted_ip;
    bool is_resolving;              /* a DNS or relayhost lookup is under way */
    bool is_paced_logged;
    uv_getaddrinfo_t gai;
    struct runner_job *next;        /* pending or active list */
};

struct runner_count {
    char key[256];
    unsigned n;
};

/* A connection whose delivery ended with no message waiting for its
 * destination: kept open connection_cache_time for the next one (no lookup, no
 * handshake). It still counts towards its address's max_per_ip. */
struct runner_idle {
    struct client_conn *conn;
    char key[256];
    char host[256];
    char addr[80];
    bool is_counted_ip;
    uint64_t parked_at_ms;
};

enum runner_db_kind { RUNNER_DB_SCAN, RUNNER_DB_RECORD };

struct runner_db_job {
    uv_work_t work;
    struct relay_runner *runner;
    enum runner_db_kind kind;
    int status;
    /* scan */
    int64_t *skip_ids;              /* in memory already: sorted, not taken again */
    size_t skip_count;
    size_t max_msgs;                /* room left in memory */
    uint64_t max_bytes;
    bool is_truncated;              /* more may be due than was taken */
    uint64_t dropped_gen;           /* runner's inbox_dropped_gen when submitted */
    struct queue_due *due;
    size_t due_count;
    uint8_t **bodies;
    size_t *body_lens;
    int64_t next_due;
    /* record */
    struct relay_msg *msg;
    struct queue_outcome outcome;
    struct queue_attempt *attempt_rows;
    struct queue_rcpt_update *updates;
    struct queue_new_message created[2];
    size_t created_count;
    char created_qids[2][QUEUE_ID_SIZE];
    uint8_t *created_data[2];
    const char *created_rcpts[2][2];
    /* the head job of a group of records carries the group: the outcomes
     * waiting behind it are written in the same transaction */
    struct runner_db_job *group[RUNNER_RECORD_BATCH];
    size_t group_n;
    struct queue_task task;        /* the group's, run by the queue's committer */
    uint64_t queued_at_ms;
    struct runner_db_job *next;
};

struct relay_runner {
    struct runner_settings set;
    struct queue *queue; /* the daemon's: its checkpointer serves r->store too */
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wake_async;
    uv_async_t stop_async;
    uv_async_t db_done_async;       /* the committer wrote a group of outcomes */
    _Atomic(struct runner_db_job *) db_done;
    uv_timer_t scan_timer;
    uv_timer_t grace_timer;
    uv_timer_t record_timer;
    uv_timer_t idle_timer;
    struct runner_idle idle[RUNNER_IDLE_MAX];
    size_t idle_count;
    struct dns_resolver *dns;
    gnutls_certificate_credentials_t creds;
    struct queue_store *store;      /* used by one worker job at a time */
    int64_t purged_at;              /* by the worker too: the last purge of done messages */

    struct relay_msg *msgs;         /* in flight */
    size_t msg_count;               /* and their number and body bytes: bounded, so a */
    uint64_t msg_bytes;             /* backlog stays in the database, not in memory */
    bool has_more_due;              /* the last scan left due messages behind, or the
                                       inbox had no room for an offered message */
    uint64_t inbox_dropped_gen;     /* offered messages dropped for want of room */
    /* offered by the committer thread (relay_runner_offer), taken on the loop */
    pthread_mutex_t inbox_lock;
    struct relay_msg *inbox, *inbox_tail;
    size_t inbox_count;
    bool is_inbox_missed;           /* a committed message is only in the database */
    atomic_bool is_scan_asked;      /* relay_runner_wake */
    struct runner_job *pending;     /* not started yet */
    struct runner_job *active;
    size_t active_count;
    struct runner_count per_key[256];
    size_t per_key_count;
    struct runner_count per_ip[256];
    size_t per_ip_count;

    struct runner_db_job *db_queue; /* FIFO, head runs */
    struct runner_db_job *db_tail;
    bool is_db_busy;
    bool is_scan_queued;
    bool is_rescan_wanted;
    bool is_stopping;
    bool is_closed;
    atomic_bool is_started;
};

static void runner_dispatch(struct relay_runner *r);
static void runner_scan(struct relay_runner *r);
static void runner_job_next_address(struct runner_job *job);
static void runner_job_resolve(struct runner_job *job);
static void runner_job_finish(struct runner_job *job);
static void runner_maybe_close(struct relay_runner *r);
static void runner_on_scan_timer(uv_timer_t *t);
static void runner_on_pace_timer(uv_timer_t *t);
static void runner_scan_soon(struct relay_runner *r);
static void runner_msg_drop(struct relay_runner *r, struct relay_msg *m);

static int64_t runner_now(void)
{
    return (int64_t)time(NULL);
}

/* Copy, truncating to size (text only ever shown to admins). */
static void runner_copy(char *out, size_t size, const char *in)
{
    size_t n = in != NULL ? strlen(in) : 0;
    if (n >= size)
        n = size - 1;
    if (n > 0)
        memcpy(out, in, n);
    out[n] = '\0';
}

/* ---- counters per destination and per address --------------------------- */

static struct runner_count *runner_count_find(struct runner_count *arr, size_t *n, size_t cap,
                                              const char *key, bool create)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp(arr[i].key, key) == 0)
            return &arr[i];
    if (!create)
        return NULL;
    for (size_t i = 0; i < *n; i++) /* reuse a slot at zero */
        if (arr[i].n == 0) {
            runner_copy(arr[i].key, sizeof(arr[i].key), key);
            return &arr[i];
        }
    if (*n == cap)
        return NULL;
    runner_copy(arr[*n].key, sizeof(arr[*n].key), key);
    arr[*n].n = 0;
    return &arr[(*n)++];
}

static unsigned runner_count_get(struct runner_count *arr, size_t *n, const char *key)
{
    struct runner_count *c = runner_count_find(arr, n, 256, key, false);
    return c != NULL ? c->n : 0;
}

static void runner_count_add(struct runner_count *arr, size_t *n, const char *key, int delta)
{
    struct runner_count *c = runner_count_find(arr, n, 256, key, true);
    if (c == NULL)
        return; /* more than 256 destinations at once: not counted, not limited */
    if (delta < 0 && c->n == 0)
        return;
    c->n = (unsigned)((int)c->n + delta);
}

/* ---- settings ------------------------------------------------------------ */

static int runner_read_credentials(struct runner_settings *s, const char *path, char *err,
                                   size_t err_size)
{
    FILE *fp = fopen(path, "re");
    if (fp == NULL) {
        snprintf(err, err_size, "[relay] relayhost_credentials %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(fp), &st) == 0 && (st.st_mode & 0077) != 0)
        log_warn(NULL, "[relay] relayhost_credentials %s is readable by others (mode %03o): "
                       "chmod 600 it",
                 path, (unsigned)(st.st_mode & 0777));
    char line[600];
    bool ok = fgets(line, sizeof(line), fp) != NULL;
    fclose(fp);
    char *colon = ok ? strchr(line, ':') : NULL;
    if (colon == NULL) {
        snprintf(err, err_size, "[relay] relayhost_credentials %s: expected one line USER:PASSWORD",
                 path);
        explicit_bzero(line, sizeof(line));
        return -1;
    }
    *colon = '\0';
    line[strcspn(colon + 1, "\r\n") + (size_t)(colon + 1 - line)] = '\0';
    runner_copy(s->relay_user, sizeof(s->relay_user), line);
    runner_copy(s->relay_password, sizeof(s->relay_password), colon + 1);
    explicit_bzero(line, sizeof(line));
    if (s->relay_user[0] == '\0' || s->relay_password[0] == '\0') {
        snprintf(err, err_size, "[relay] relayhost_credentials %s: empty user or password", path);
        return -1;
    }
    s->has_relay_auth = true;
    return 0;
}

static int runner_settings_load(struct runner_settings *s, const struct config *cfg, char *err,
                                size_t err_size)
{
    runner_copy(s->database, sizeof(s->database), cfg->database);
    s->busy_ms = (unsigned)cfg->queue_busy_timeout_ms;
    runner_copy(s->hostname, sizeof(s->hostname), cfg->hostname);
    runner_copy(s->helo, sizeof(s->helo),
                cfg->relay_helo_name[0] != '\0' ? cfg->relay_helo_name : cfg->hostname);
    s->port = cfg->relay_port;
    runner_copy(s->dns_servers, sizeof(s->dns_servers), cfg->relay_dns_servers);
    s->dns.servers = s->dns_servers;
    s->dns.family = (enum dns_family_policy)cfg->relay_ip_family;
    s->dns.timeout_ms = (unsigned)cfg->relay_dns_timeout_ms;
    s->dns.tries = 2;
    s->connect_ms = (unsigned)cfg->relay_connect_timeout_ms;
    s->command_ms = (unsigned)cfg->relay_command_timeout_ms;
    s->data_ms = (unsigned)cfg->relay_data_timeout_ms;
    s->max_deliveries = cfg->relay_max_deliveries;
    s->max_per_domain = cfg->relay_max_per_domain;
    s->max_per_ip = cfg->relay_max_per_ip;
    s->idle_ms = cfg->relay_connection_cache_time_ms;
    s->tls = (enum client_tls_policy)cfg->relay_tls;
    s->tls_policy = strdup(cfg->relay_tls_policy);
    s->relayhost_domains = strdup(cfg->relay_relayhost_domains);
    if (s->tls_policy == NULL || s->relayhost_domains == NULL) {
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    const char *p = cfg->relay_rate_limit;
    char key[256], value[64];
    while (s->rate_count < RUNNER_MAX_RATES &&
           config_map_next(&p, key, sizeof(key), value, sizeof(value)) > 0) {
        struct runner_rate *rt = &s->rates[s->rate_count];
        if (config_parse_rate(value, &rt->rate) == 0) {
            runner_copy(rt->key, sizeof(rt->key), key);
            s->rate_count++;
        }
    }
    s->retry.first_backoff_s = (unsigned)(cfg->relay_retry_first_ms / 1000);
    s->retry.max_backoff_s = (unsigned)(cfg->relay_retry_max_ms / 1000);
    s->retry.max_lifetime_s = (unsigned)(cfg->relay_max_lifetime_ms / 1000);
    s->delay_warning_s = cfg->relay_delay_warning_ms / 1000;
    s->keep_done_s = cfg->relay_keep_done_ms / 1000;
    s->bounce_to = cfg->relay_bounce_to;
    runner_copy(s->admin, sizeof(s->admin), cfg->relay_admin_address);
    if (s->bounce_to != 0 && s->admin[0] == '\0') {
        snprintf(err, err_size, "[relay] bounce_to needs [relay] admin_address");
        return -1;
    }
    if (cfg->relay_relayhost[0] != '\0') {
        if (config_split_hostport(cfg->relay_relayhost, s->relayhost, sizeof(s->relayhost),
                                  &s->relayhost_port) < 0) {
            snprintf(err, err_size, "[relay] relayhost: expected HOST:PORT");
            return -1;
        }
        s->has_relayhost = true;
        s->is_relayhost_implicit = cfg->relay_relayhost_security == 1;
        s->is_relayhost_verify = cfg->relay_relayhost_verify;
        if (cfg->relay_relayhost_credentials[0] != '\0' &&
            runner_read_credentials(s, cfg->relay_relayhost_credentials, err, err_size) < 0)
            return -1;
    }
    return 0;
}

static void runner_settings_free(struct runner_settings *s)
{
    free(s->tls_policy);
    free(s->relayhost_domains);
    explicit_bzero(s->relay_password, sizeof(s->relay_password));
}

/* Does a comma list of domains contain domain (case-insensitive)? */
static bool runner_list_has(const char *list, const char *domain)
{
    size_t dlen = strlen(domain);
    const char *p = list;
    while (*p != '\0') {
        while (*p == ' ' || *p == ',' || *p == '\t')
            p++;
        size_t n = strcspn(p, ", \t");
        if (n == dlen && strncasecmp(p, domain, n) == 0)
            return true;
        p += n;
    }
    return false;
}

static enum client_tls_policy runner_tls_for(const struct runner_settings *s, const char *domain)
{
    const char *p = s->tls_policy;
    char key[256], value[32];
    while (config_map_next(&p, key, sizeof(key), value, sizeof(value)) > 0) {
        if (strcasecmp(key, domain) != 0)
            continue;
        if (strcmp(value, "none") == 0)
            return CLIENT_TLS_NONE;
        if (strcmp(value, "require") == 0)
            return CLIENT_TLS_REQUIRE;
        if (strcmp(value, "verify") == 0)
            return CLIENT_TLS_VERIFY;
        return CLIENT_TLS_OPPORTUNISTIC;
    }
    return s->tls;
}

static bool runner_uses_relayhost(const struct runner_settings *s, const char *domain)
{
    if (!s->has_relayhost)
        return false;
    return s->relayhost_domains[0] == '\0' || runner_list_has(s->relayhost_domains, domain);
}

/* ---- pacing -------------------------------------------------------------- */

static int64_t runner_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Can key send one more message with rcpts recipients now? If not, *wait_ms
 * says how long until the window turns. */
static bool runner_rate_allows(struct relay_runner *r, const char *key, size_t rcpts,
                               int64_t *wait_ms)
{
    int64_t now = runner_now_ms();
    for (size_t i = 0; i < r->set.rate_count; i++) {
        struct runner_rate *rt = &r->set.rates[i];
        if (strcmp(rt->key, key) != 0)
            continue;
        if (now - rt->window_start_ms >= (int64_t)rt->rate.period_ms) {
            rt->window_start_ms = now;
            rt->used = 0;
        }
        unsigned need = rt->rate.is_recipients ? (unsigned)rcpts : 1;
        /* a single message bigger than the whole allowance still goes, alone */
        if (rt->used > 0 && rt->used + need > rt->rate.count) {
            *wait_ms = rt->window_start_ms + (int64_t)rt->rate.period_ms - now;
            return false;
        }
    }
    return true;
}

static void runner_rate_take(struct relay_runner *r, const char *key, size_t rcpts)
{
    for (size_t i = 0; i < r->set.rate_count; i++) {
        struct runner_rate *rt = &r->set.rates[i];
        if (strcmp(rt->key, key) == 0)
            rt->used += rt->rate.is_recipients ? (unsigned)rcpts : 1;
    }
}

/* ---- the database jobs: one at a time ------------------------------------ */
/* Scans run on a libuv worker with r->store; groups of outcomes on the
 * queue's committer thread (runner_db_record_task), which then wakes the
 * loop through db_done_async. */

static void runner_db_run_next(struct relay_runner *r);

static void runner_on_record_timer(uv_timer_t *t)
{
    runner_db_run_next(t->data);
}

static int runner_cmp_id(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static bool runner_is_in_flight(int64_t message_id, void *arg)
{
    const struct runner_db_job *j = arg;
    return j->skip_count > 0 &&
           bsearch(&message_id, j->skip_ids, j->skip_count, sizeof(int64_t), runner_cmp_id) != NULL;
}

static void runner_scan_read(struct relay_runner *r, struct runner_db_job *j, int64_t now);

/* The group of outcomes j carries, in one transaction on s (NULL: none). */
static void runner_db_record(struct queue_store *s, struct runner_db_job *j)
{
    const struct queue_outcome *o[RUNNER_RECORD_BATCH];
    int status[RUNNER_RECORD_BATCH];
    for (size_t i = 0; i < j->group_n; i++) {
        o[i] = &j->group[i]->outcome;
        status[i] = QUEUE_ERR_STORAGE;
    }
    if (s != NULL)
        queue_store_record_batch(s, o, j->group_n, status);
    for (size_t i = 0; i < j->group_n; i++)
        j->group[i]->status = status[i];
}

/* On the queue's committer thread. */
static void runner_db_record_task(struct queue_store *s, void *arg)
{
    struct runner_db_job *j = arg;
    struct relay_runner *r = j->runner;
    runner_db_record(s, j);
    atomic_store(&r->db_done, j);
    uv_async_send(&r->db_done_async); /* j and r are the loop's again */
}

static void runner_db_work(uv_work_t *w)
{
    struct runner_db_job *j = w->data;
    struct relay_runner *r = j->runner;
    if (r->store == NULL) {
        j->status = queue_store_open(r->set.database, r->set.busy_ms, &r->store);
        if (j->status < 0)
            return;
        if (r->queue != NULL)
            queue_store_share(r->store, r->queue);
    }
    if (j->kind == RUNNER_DB_RECORD) {
        runner_db_record(r->store, j);
        return;
    }
    /* scan */
    int64_t now = runner_now();
    /* a write, so not at every scan: scans come with every message committed */
    size_t purged = 0;
    if (now - r->purged_at >= RUNNER_PURGE_EVERY_S &&
        queue_store_purge_done(r->store, now - (int64_t)r->set.keep_done_s, &purged) == 0) {
        r->purged_at = now;
        if (purged > 0)
            log_info(NULL, "queue: removed %zu finished message%s older than keep_done", purged,
                     purged == 1 ? "" : "s");
    }
    j->status = queue_store_read_begin(r->store);
    if (j->status == 0)
        runner_scan_read(r, j, now);
    queue_store_read_end(r->store);
}

/* The scan's reads, in one read transaction. */
static void runner_scan_read(struct relay_runner *r, struct runner_db_job *j, int64_t now)
{
    /* the ones in flight (their outcome is not written yet) are skipped in the
     * query itself, so a backlog of them never hides the messages behind */
    j->status = queue_store_due(r->store, now, j->max_msgs, runner_is_in_flight, j, &j->due,
                                &j->due_count);
    if (j->status < 0)
        return;
    j->is_truncated = j->due_count == j->max_msgs;
    /* and only as many bodies as the byte budget allows (always at least one) */
    size_t kept = 0;
    uint64_t bytes = 0;
    for (size_t i = 0; i < j->due_count; i++) {
        if (kept > 0 && bytes + j->due[i].size > j->max_bytes) {
            free(j->due[i].rcpts);
            j->is_truncated = true;
            continue;
        }
        bytes += j->due[i].size;
        j->due[kept++] = j->due[i];
    }
    j->due_count = kept;
    j->bodies = calloc(kept ? kept : 1, sizeof(*j->bodies));
    j->body_lens = calloc(kept ? kept : 1, sizeof(*j->body_lens));
    if (j->bodies == NULL || j->body_lens == NULL) {
        j->status = -ENOMEM;
        queue_due_free(j->due, kept); /* none taken: a failed scan, retried soon */
        j->due = NULL;
        j->due_count = 0;
        return;
    }
    for (size_t i = 0; i < kept; i++) {
        int rc = queue_store_body(r->store, j->due[i].id, &j->bodies[i], &j->body_lens[i]);
        if (rc < 0)
            j->bodies[i] = NULL; /* deleted meanwhile: skipped below */
    }
    if (queue_store_next_due(r->store, &j->next_due) < 0)
        j->next_due = now + RUNNER_MAX_RESCAN_MS / 1000;
}

static void runner_on_scan_done(struct relay_runner *r, struct runner_db_job *j);
static void runner_on_record_done(struct relay_runner *r, struct runner_db_job *j);

static void runner_db_after(uv_work_t *w, int status)
{
    struct runner_db_job *j = w->data;
    struct relay_runner *r = j->runner;
    (void)status;
    /* take the whole group off the queue before any callback can queue more */
    struct runner_db_job *done[RUNNER_RECORD_BATCH];
    size_t n = j->kind == RUNNER_DB_RECORD ? j->group_n : 1;
    for (size_t i = 0; i < n; i++) {
        done[i] = r->db_queue;
        r->db_queue = r->db_queue->next;
    }
    if (r->db_queue == NULL)
        r->db_tail = NULL;
    r->is_db_busy = false;
    for (size_t i = 0; i < n; i++) {
        if (done[i]->kind == RUNNER_DB_SCAN)
            runner_on_scan_done(r, done[i]);
        else
            runner_on_record_done(r, done[i]);
    }
    runner_db_run_next(r);
    runner_maybe_close(r);
}

static void runner_db_run_next(struct relay_runner *r)
{
    if (r->is_db_busy || r->db_queue == NULL)
        return;
    struct runner_db_job *j = r->db_queue;
    j->group_n = 0;
    if (j->kind == RUNNER_DB_RECORD) { /* the records queued behind it, up to a scan */
        struct runner_db_job *scan = NULL, *before_scan = j;
        for (struct runner_db_job *p = j; p != NULL && j->group_n < RUNNER_RECORD_BATCH;
             p = p->next) {
            if (p->kind != RUNNER_DB_RECORD) {
                scan = p;
                break;
            }
            j->group[j->group_n++] = p;
            before_scan = p;
        }
        /* A small group waits a little for company, unless stopping. A scan
         * behind it does not wait: it goes first. It cannot take the group's
         * messages again, they stay in memory until their outcome is written,
         * and the records gathered meanwhile share the group's commit (each
         * commit is an fsync, and under load the scans, one per committed
         * message, came so often that groups were one or two outcomes). */
        uint64_t age_ms = uv_now(&r->loop) - j->queued_at_ms;
        if (j->group_n < RUNNER_RECORD_BATCH && !r->is_stopping &&
            age_ms < RUNNER_RECORD_GATHER_MS) {
            if (!uv_is_active((uv_handle_t *)&r->record_timer))
                uv_timer_start(&r->record_timer, runner_on_record_timer,
                               RUNNER_RECORD_GATHER_MS - age_ms, 0);
            if (scan == NULL)
                return;
            before_scan->next = scan->next;
            if (r->db_tail == scan)
                r->db_tail = before_scan;
            scan->next = r->db_queue;
            r->db_queue = scan;
            j = scan;
            j->group_n = 0;
        }
    }
    r->is_db_busy = true;
    j->work.data = j;
    if (j->kind == RUNNER_DB_RECORD && r->queue != NULL) {
        /* on the connection that wrote these messages: their pages are
         * still in its cache, and no other connection's is dropped */
        j->task = (struct queue_task){.run = runner_db_record_task, .arg = j};
        queue_task_submit(r->queue, &j->task);
        return;
    }
    if (uv_queue_work(&r->loop, &j->work, runner_db_work, runner_db_after) != 0) {
        r->is_db_busy = false;
        log_err(NULL, "relay: cannot queue database work");
    }
}

static void runner_on_db_done(uv_async_t *a)
{
    struct relay_runner *r = a->data;
    struct runner_db_job *j = atomic_exchange(&r->db_done, NULL);
    if (j != NULL)
        runner_db_after(&j->work, 0);
}

static void runner_db_submit(struct relay_runner *r, struct runner_db_job *j)
{
    j->runner = r;
    j->next = NULL;
    j->queued_at_ms = uv_now(&r->loop);
    if (r->db_tail != NULL)
        r->db_tail->next = j;
    else
        r->db_queue = j;
    r->db_tail = j;
    runner_db_run_next(r);
}

/* ---- scanning ------------------------------------------------------------ */

static void runner_scan(struct relay_runner *r)
{
    if (r->is_stopping)
        return;
    if (r->is_scan_queued) {
        r->is_rescan_wanted = true;
        return;
    }
    /* memory full: what is due waits in the database until messages finish */
    if (r->msg_count >= RUNNER_MSGS_MAX || r->msg_bytes >= RUNNER_BYTES_MAX) {
        r->has_more_due = true;
        return;
    }
    struct runner_db_job *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        runner_scan_soon(r);
        return;
    }
    j->kind = RUNNER_DB_SCAN;
    j->max_msgs = RUNNER_MSGS_MAX - r->msg_count;
    j->max_bytes = RUNNER_BYTES_MAX - r->msg_bytes;
    j->skip_ids = calloc(r->msg_count ? r->msg_count : 1, sizeof(*j->skip_ids));
    if (j->skip_ids == NULL) {
        free(j);
        runner_scan_soon(r);
        return;
    }
    for (struct relay_msg *m = r->msgs; m != NULL; m = m->next)
        j->skip_ids[j->skip_count++] = m->due.id;
    qsort(j->skip_ids, j->skip_count, sizeof(int64_t), runner_cmp_id);
    j->dropped_gen = r->inbox_dropped_gen;
    r->is_scan_queued = true;
    r->is_rescan_wanted = false;
    runner_db_submit(r, j);
}

static const char *runner_domain_of(const char *address)
{
    const char *at = strrchr(address, '@');
    return at != NULL ? at + 1 : "";
}

static void runner_msg_free(struct relay_msg *m)
{
    free(m->body);
    free(m->rcpt);
    free(m->attempts);
    free(m);
}

/* A list linked by next (not r->msgs' accounting). */
static void runner_msg_free_list(struct relay_msg *list)
{
    while (list != NULL) {
        struct relay_msg *m = list;
        list = m->next;
        runner_msg_free(m);
    }
}

static void runner_job_free(struct runner_job *job)
{
    free(job->rcpt_idx);
    free(job->rcpt_addrs);
    free(job->sent_idx);
    free(job);
}

/* Forget a message (in memory only). */
static void runner_msg_drop(struct relay_runner *r, struct relay_msg *m)
{
    for (struct relay_msg **p = &r->msgs; *p != NULL; p = &(*p)->next)
        if (*p == m) {
            *p = m->next;
            r->msg_count--;
            r->msg_bytes -= m->body_len;
            break;
        }
    runner_msg_free(m);
}

/* Split a message's due recipients into one job per destination. */
static int runner_msg_plan(struct relay_runner *r, struct relay_msg *m)
{
    for (size_t i = 0; i < m->rcpt_count; i++) {
        if (m->rcpt[i].is_done)
            continue;
        const char *domain = runner_domain_of(m->rcpt[i].address);
        bool via_relayhost = runner_uses_relayhost(&r->set, domain);
        const char *key = via_relayhost ? "relayhost" : domain;
        /* a job of this message for the same destination already? */
        struct runner_job *job = NULL;
        for (struct runner_job *p = r->pending; p != NULL; p = p->next)
            if (p->msg == m && strcasecmp(p->key, key) == 0)
                job = p;
        if (job == NULL) {
            job = calloc(1, sizeof(*job));
            if (job == NULL)
                return -ENOMEM;
            job->runner = r;
            job->msg = m;
            job->is_relayhost = via_relayhost;
            runner_copy(job->key, sizeof(job->key), key);
            runner_copy(job->domain, sizeof(job->domain), via_relayhost ? r->set.relayhost : domain);
            job->rcpt_idx = calloc(m->rcpt_count, sizeof(*job->rcpt_idx));
            job->rcpt_addrs = calloc(m->rcpt_count, sizeof(*job->rcpt_addrs));
            job->sent_idx = calloc(m->rcpt_count, sizeof(*job->sent_idx));
            if (job->rcpt_idx == NULL || job->rcpt_addrs == NULL || job->sent_idx == NULL) {
                runner_job_free(job);
                return -ENOMEM;
            }
            /* append to pending (FIFO: oldest message first) */
            struct runner_job **tail = &r->pending;
            while (*tail != NULL)
                tail = &(*tail)->next;
            *tail = job;
            m->jobs_left++;
        }
        job->rcpt_idx[job->rcpt_n++] = i;
    }
    return 0;
}

static struct relay_msg *runner_msg_find(struct relay_runner *r, int64_t message_id)
{
    for (struct relay_msg *m = r->msgs; m != NULL; m = m->next)
        if (m->due.id == message_id)
            return m;
    return NULL;
}

/* Look at the queue again in a few seconds at the latest: something due
 * was left in the database (an outcome not written, memory short) that no
 * commit will now bring back. */
static void runner_scan_soon(struct relay_runner *r)
{
    if (r->is_stopping || (uv_is_active((uv_handle_t *)&r->scan_timer) &&
                           uv_timer_get_due_in(&r->scan_timer) <= RUNNER_RETRY_SCAN_MS))
        return;
    uv_timer_stop(&r->scan_timer);
    uv_timer_start(&r->scan_timer, runner_on_pace_timer, RUNNER_RETRY_SCAN_MS, 0);
}

/* Take m into memory and plan its jobs. */
static void runner_msg_add(struct relay_runner *r, struct relay_msg *m)
{
    m->next = r->msgs;
    r->msgs = m;
    r->msg_count++;
    r->msg_bytes += m->body_len;
    if (runner_msg_plan(r, m) < 0) {
        log_warn(m->due.qid, "relay: out of memory planning the delivery");
        runner_scan_soon(r);
    }
    if (m->jobs_left == 0)
        runner_msg_drop(r, m); /* nothing recorded: tried again at the next scan */
}

/* Room for one more message of len bytes (one alone may exceed the bytes). */
static bool runner_has_room(const struct relay_runner *r, uint64_t len)
{
    return r->msg_count < RUNNER_MSGS_MAX &&
           (r->msg_count == 0 || r->msg_bytes + len <= RUNNER_BYTES_MAX);
}

/* The messages offered since the last look, oldest first. Returns true
 * when one could not be offered: only a scan finds it. */
static bool runner_take_inbox(struct relay_runner *r)
{
    pthread_mutex_lock(&r->inbox_lock);
    struct relay_msg *list = r->inbox;
    bool is_missed = r->is_inbox_missed;
    r->inbox = r->inbox_tail = NULL;
    r->inbox_count = 0;
    r->is_inbox_missed = false;
    pthread_mutex_unlock(&r->inbox_lock);
    while (list != NULL) {
        struct relay_msg *m = list;
        list = m->next;
        m->next = NULL;
        /* a scan that ran since the commit may have taken it already */
        struct relay_msg *held = runner_msg_find(r, m->due.id);
        if (r->is_stopping || (held != NULL && strcmp(held->due.qid, m->due.qid) == 0)) {
            runner_msg_free(m);
            continue;
        }
        /* No room; or its id is still held by a message an admin deleted
         * during its delivery (ids of deleted rows are reused): it waits in
         * the database, as a scan would leave it. */
        if (held != NULL || !runner_has_room(r, m->body_len)) {
            runner_msg_free(m);
            r->has_more_due = true;
            r->inbox_dropped_gen++;
            continue;
        }
        runner_msg_add(r, m);
    }
    return is_missed;
}

static void runner_record(struct relay_runner *r, struct relay_msg *m);

static void runner_on_scan_done(struct relay_runner *r, struct runner_db_job *j)
{
    r->is_scan_queued = false;
    /* What was offered before the scan's snapshot is in the inbox (the hook
     * runs before the snapshot can show it): in memory first, so that the
     * scan's copy of it is recognised below. */
    if (runner_take_inbox(r))
        r->is_rescan_wanted = true;
    /* more due than taken; or offered messages dropped for want of room
     * since the scan was asked for, which its snapshot may not show */
    r->has_more_due = (j->status == 0 && j->is_truncated) || r->inbox_dropped_gen != j->dropped_gen;
    if (j->status < 0)
        log_warn(NULL, "relay: queue scan failed (%s); retrying soon",
                 j->status == QUEUE_ERR_BUSY ? "database locked" : "storage error");
    for (size_t i = 0; i < j->due_count; i++) {
        struct queue_due *d = &j->due[i];
        if (r->is_stopping || j->bodies[i] == NULL || runner_msg_find(r, d->id) != NULL) {
            free(d->rcpts);
            free(j->bodies[i]);
            continue;
        }
        /* the inbox may have filled what room the scan was given */
        if (!runner_has_room(r, j->body_lens[i])) {
            free(d->rcpts);
            free(j->bodies[i]);
            r->has_more_due = true;
            continue;
        }
        struct relay_msg *m = calloc(1, sizeof(*m));
        struct runner_rcpt *rc = calloc(d->rcpt_count, sizeof(*rc));
        if (m == NULL || rc == NULL) {
            free(m);
            free(rc);
            free(d->rcpts);
            free(j->bodies[i]);
            continue;
        }
        m->due = *d;
        m->due.rcpts = NULL;
        m->body = j->bodies[i];
        m->body_len = j->body_lens[i];
        m->rcpt = rc;
        m->rcpt_count = d->rcpt_count;
        for (size_t k = 0; k < d->rcpt_count; k++) {
            rc[k].id = d->rcpts[k].id;
            runner_copy(rc[k].address, sizeof(rc[k].address), d->rcpts[k].address);
            rc[k].attempts = d->rcpts[k].attempts;
        }
        free(d->rcpts);
        runner_msg_add(r, m);
    }
    free(j->due);
    free(j->bodies);
    free(j->body_lens);
    free(j->skip_ids);
    /* next look: when the earliest deferred recipient is due, at the latest
     * after RUNNER_MAX_RESCAN_MS */
    if (!r->is_stopping) {
        int64_t now = runner_now();
        uint64_t delay_ms = RUNNER_MAX_RESCAN_MS;
        if (j->status == 0 && j->next_due != INT64_MAX && j->next_due > now &&
            (uint64_t)(j->next_due - now) * 1000 < delay_ms)
            delay_ms = (uint64_t)(j->next_due - now) * 1000;
        if (j->status < 0)
            delay_ms = RUNNER_RETRY_SCAN_MS;
        uv_timer_stop(&r->scan_timer);
        uv_timer_start(&r->scan_timer, runner_on_scan_timer, delay_ms, 0);
    }
    bool again = r->is_rescan_wanted;
    free(j);
    runner_dispatch(r);
    if (again)
        runner_scan(r);
}

static void runner_on_scan_timer(uv_timer_t *t)
{
    runner_scan(t->data);
}

/* ---- outcomes ------------------------------------------------------------ */

static void runner_add_attempt(struct relay_msg *m, int64_t recipient_id, const char *domain,
                               const char *host, const char *address, const char *step,
                               const char *tls, const char *reply, const char *outcome)
{
    if (m->attempt_count == RUNNER_MAX_ATTEMPTS)
        return;
    struct runner_attempt *n = realloc(m->attempts, (m->attempt_count + 1) * sizeof(*n));
    if (n == NULL)
        return;
    m->attempts = n;
    struct runner_attempt *a = &n[m->attempt_count++];
    memset(a, 0, sizeof(*a));
    a->recipient_id = recipient_id;
    runner_copy(a->domain, sizeof(a->domain), domain);
    runner_copy(a->host, sizeof(a->host), host);
    runner_copy(a->address, sizeof(a->address), address);
    runner_copy(a->step, sizeof(a->step), step);
    runner_copy(a->tls, sizeof(a->tls), tls);
    runner_copy(a->reply, sizeof(a->reply), reply);
    runner_copy(a->outcome, sizeof(a->outcome), outcome);
}

static void runner_rcpt_set(struct runner_rcpt *rc, enum retry_outcome o, const char *status,
                            const char *error, const char *remote_mta, bool is_remote)
{
    rc->is_done = true;
    rc->outcome = o;
    runner_copy(rc->status, sizeof(rc->status), status);
    runner_copy(rc->error, sizeof(rc->error), error);
    runner_copy(rc->remote_mta, sizeof(rc->remote_mta), remote_mta);
    rc->is_remote = is_remote;
}

/* Status for a reply: its own enhanced code, else one from the basic code. */
static const char *runner_reply_status(const struct client_reply *rep)
{
    return rep->enhanced[0] != '\0' ? rep->enhanced : retry_default_status(rep->code);
}

/* "550 5.1.1 text" for the log and queue show; local errors as they are. */
static void runner_reply_text(const struct client_reply *rep, char *out, size_t out_size)
{
    if (rep->code == 0 || (rep->text[0] >= '0' && rep->text[0] <= '9'))
        snprintf(out, out_size, "%s", rep->text);
    else
        snprintf(out, out_size, "%d %s", rep->code, rep->text);
}

/* Every recipient of the job not yet decided gets this outcome. */
static void runner_job_settle_all(struct runner_job *job, enum retry_outcome o, const char *status,
                                  const char *error, bool is_remote)
{
    for (size_t i = 0; i < job->rcpt_n; i++) {
        struct runner_rcpt *rc = &job->msg->rcpt[job->rcpt_idx[i]];
        if (!rc->is_done)
            runner_rcpt_set(rc, o, status, error, job->cur_host, is_remote);
    }
}

/* ---- DSN ------------------------------------------------------------------ */

/* Compose a DSN (failed or delayed) into j->created[slot]. */
static int runner_make_dsn(struct relay_runner *r, struct relay_msg *m, struct runner_db_job *j,
                           enum bounce_kind kind)
{
    const char *to[2];
    size_t nto = 0;
    bool to_sender = r->set.bounce_to == 0 || r->set.bounce_to == 2;
    bool to_admin = r->set.bounce_to == 1 || r->set.bounce_to == 2;
    /* a device's own sender address rarely has a mailbox: its account's
     * owner, when set, gets the notice instead */
    const char *sender_side = m->due.owner[0] != '\0' ? m->due.owner : m->due.sender;
    if (to_sender && sender_side[0] != '\0')
        to[nto++] = sender_side;
    if (to_admin && r->set.admin[0] != '\0' &&
        (nto == 0 || strcasecmp(r->set.admin, to[0]) != 0))
        to[nto++] = r->set.admin;
    if (nto == 0) {
        log_info(m->due.qid, "no %s notice: null sender and no admin address",
                 kind == BOUNCE_FAILED ? "bounce" : "delay");
        return 0;
    }
    size_t n = 0;
    struct bounce_rcpt *br = calloc(m->rcpt_count, sizeof(*br));
    if (br == NULL)
        return -ENOMEM;
    int64_t now = runner_now();
    for (size_t i = 0; i < m->rcpt_count; i++) {
        struct runner_rcpt *rc = &m->rcpt[i];
        bool wanted = kind == BOUNCE_FAILED ? rc->is_done && rc->outcome == RETRY_BOUNCE
                                            : rc->is_done && rc->outcome == RETRY_DEFER;
        if (!wanted)
            continue;
        br[n].rcpt = rc->address;
        br[n].status = rc->status;
        br[n].remote_mta = rc->remote_mta[0] != '\0' ? rc->remote_mta : NULL;
        br[n].diagnostic = rc->error;
        br[n].is_remote_reply = rc->is_remote;
        br[n].last_attempt_at = now;
        n++;
    }
    if (n == 0) {
        free(br);
        return 0;
    }
    size_t slot = j->created_count;
    queue_id_new(j->created_qids[slot]);
    char from[300], message_id[400];
    snprintf(from, sizeof(from), "MAILER-DAEMON@%s", r->set.hostname);
    snprintf(message_id, sizeof(message_id), "<%s.%s@%s>", j->created_qids[slot],
             kind == BOUNCE_FAILED ? "dsn" : "delay", r->set.hostname);
    struct bounce_input in = {
        .kind = kind,
        .reporting_mta = r->set.hostname,
        .qid = m->due.qid,
        .from = from,
        .to = to[0],
        .orig_sender = m->due.sender,
        .arrival_at = m->due.created_at,
        .now = now,
        .message_id = message_id,
        .rcpts = br,
        .rcpt_count = n,
        .orig = m->body,
        .orig_len = m->body_len,
        .retry_until = kind == BOUNCE_DELAYED
                           ? m->due.created_at + (int64_t)r->set.retry.max_lifetime_s
                           : 0,
    };
    uint8_t *data = NULL;
    size_t len = 0;
    int rc = bounce_compose(&in, &data, &len);
    free(br);
    if (rc < 0) {
        log_err(m->due.qid, "cannot compose the %s notice (%d)",
                kind == BOUNCE_FAILED ? "bounce" : "delay", rc);
        return rc;
    }
    j->created_data[slot] = data;
    for (size_t i = 0; i < nto; i++)
        j->created_rcpts[slot][i] = to[i];
    j->created[slot] = (struct queue_new_message){
        .qid = j->created_qids[slot],
        .kind = kind == BOUNCE_FAILED ? "dsn" : "warning",
        .sender = "",
        .recipients = j->created_rcpts[slot],
        .recipient_count = nto,
        .data = data,
        .data_len = len,
    };
    j->created_count++;
    return 0;
}

static const char *runner_state_word(enum retry_outcome o)
{
    switch (o) {
    case RETRY_DELIVERED: return "delivered";
    case RETRY_BOUNCE: return "bounced";
    case RETRY_DEFER: return "deferred";
    }
    return "deferred";
}

/* All jobs of m are over: write what happened (one transaction). */
static void runner_record(struct relay_runner *r, struct relay_msg *m)
{
    struct runner_db_job *j = calloc(1, sizeof(*j));
    if (j != NULL) {
        j->updates = calloc(m->rcpt_count ? m->rcpt_count : 1, sizeof(*j->updates));
        j->attempt_rows =
            calloc(m->attempt_count ? m->attempt_count : 1, sizeof(*j->attempt_rows));
    }
    if (j == NULL || j->updates == NULL || j->attempt_rows == NULL) {
        /* as a failed write: out of memory, and soon tried again (held in
         * memory, the scans would skip it until the daemon stops) */
        log_warn(m->due.qid, "delivery result not recorded (out of memory): the message will "
                             "be tried again");
        if (j != NULL)
            free(j->updates), free(j->attempt_rows), free(j);
        runner_msg_drop(r, m);
        runner_scan_soon(r);
        return;
    }
    j->kind = RUNNER_DB_RECORD;
    j->msg = m;
    int64_t now = runner_now();
    bool is_expired = retry_is_expired(&r->set.retry, m->due.created_at, now);
    bool has_bounce = false, has_defer = false;
    size_t nu = 0;
    for (size_t i = 0; i < m->rcpt_count; i++) {
        struct runner_rcpt *rc = &m->rcpt[i];
        if (!rc->is_done) /* no job reached it (stopping): leave it as it is */
            continue;
        if (rc->outcome == RETRY_DEFER && is_expired) {
            char why[RUNNER_TEXT_MAX];
            snprintf(why, sizeof(why), "gave up after the maximum queue lifetime; last error: %.960s",
                     rc->error);
            runner_copy(rc->error, sizeof(rc->error), why);
            rc->outcome = RETRY_BOUNCE;
            rc->is_remote = false;
            if (rc->status[0] == '4')
                rc->status[0] = '5';
        }
        has_bounce |= rc->outcome == RETRY_BOUNCE;
        has_defer |= rc->outcome == RETRY_DEFER;
        struct queue_rcpt_update *u = &j->updates[nu++];
        u->recipient_id = rc->id;
        u->state = runner_state_word(rc->outcome);
        u->next_attempt_at = rc->outcome == RETRY_DEFER
                                 ? retry_next_at(&r->set.retry, rc->attempts + 1, now)
                                 : 0;
        u->dsn_status = rc->status;
        u->last_error = rc->outcome == RETRY_DELIVERED ? "" : rc->error;
        /* the admin's log line, Postfix's field names */
        char esc[RUNNER_TEXT_MAX];
        log_escape(rc->error, strlen(rc->error), esc, sizeof(esc));
        log_info(m->due.qid, "to=<%s>, relay=%s, delay=%lld, dsn=%s, status=%s (%s)", rc->address,
                 rc->remote_mta[0] != '\0' ? rc->remote_mta : "none",
                 (long long)(now - m->due.created_at), rc->status,
                 rc->outcome == RETRY_DELIVERED ? "sent" : runner_state_word(rc->outcome), esc);
    }
    bool may_notify = strcmp(m->due.kind, "message") == 0; /* never a DSN about a DSN */
    if (has_bounce && may_notify)
        runner_make_dsn(r, m, j, BOUNCE_FAILED);
    bool is_warned = false;
    if (has_defer && may_notify && r->set.delay_warning_s > 0 && m->due.warned_at == 0 &&
        now - m->due.created_at >= (int64_t)r->set.delay_warning_s) {
        /* marked even when nobody could be told (null sender): once only */
        is_warned = runner_make_dsn(r, m, j, BOUNCE_DELAYED) == 0;
    }
    for (size_t i = 0; i < m->attempt_count; i++) {
        struct runner_attempt *a = &m->attempts[i];
        j->attempt_rows[i] = (struct queue_attempt){
            .recipient_id = a->recipient_id, .domain = a->domain, .host = a->host,
            .address = a->address, .step = a->step, .tls = a->tls, .reply = a->reply,
            .outcome = a->outcome};
    }
    j->outcome = (struct queue_outcome){
        .message_id = m->due.id,
        .qid = m->due.qid,
        .now = now,
        .attempts = j->attempt_rows,
        .attempt_count = m->attempt_count,
        .rcpts = j->updates,
        .rcpt_count = nu,
        .created = j->created,
        .created_count = j->created_count,
        .is_warned = is_warned,
    };
    runner_db_submit(r, j);
}

static void runner_on_record_done(struct relay_runner *r, struct runner_db_job *j)
{
    struct relay_msg *m = j->msg;
    if (j->status == QUEUE_ERR_NOT_FOUND) {
        log_info(m->due.qid, "deleted from the queue during its delivery: result not recorded");
    } else if (j->status < 0) {
        log_warn(m->due.qid, "delivery result not recorded (%s): the message will be tried again",
                 j->status == QUEUE_ERR_BUSY ? "database locked" : "storage error");
        runner_scan_soon(r);
    } else
        for (size_t i = 0; i < j->created_count; i++)
            log_info(j->created_qids[i], "%s for %s created", 
                     strcmp(j->created[i].kind, "dsn") == 0 ? "bounce" : "delay warning",
                     m->due.qid);
    bool has_new = j->status == 0 && j->created_count > 0;
    for (size_t i = 0; i < j->created_count; i++)
        free(j->created_data[i]);
    free(j->updates);
    free(j->attempt_rows);
    free(j);
    runner_msg_drop(r, m); /* it may be picked again by the next scan */
    /* new notices to send, or a backlog waiting for room (taken in batches,
     * at half empty, rather than one scan per finished message) */
    if (has_new || (r->has_more_due && r->msg_count <= RUNNER_MSGS_MAX / 2))
        runner_scan(r);
}

/* ---- jobs ----------------------------------------------------------------- */

static void runner_job_unlink(struct runner_job **list, struct runner_job *job)
{
    for (struct runner_job **p = list; *p != NULL; p = &(*p)->next)
        if (*p == job) {
            *p = job->next;
            job->next = NULL;
            return;
        }
}

/* A job is over: counters, its message, what may start now. */
static void runner_job_finish(struct runner_job *job)
{
    struct relay_runner *r = job->runner;
    if (job->is_counted_ip) {
        runner_count_add(r->per_ip, &r->per_ip_count, job->cur_addr, -1);
        job->is_counted_ip = false;
    }
    runner_job_unlink(&r->active, job);
    r->active_count--;
    runner_count_add(r->per_key, &r->per_key_count, job->key, -1);
    struct relay_msg *m = job->msg;
    runner_job_free(job);
    if (--m->jobs_left == 0)
        runner_record(r, m); /* also while stopping: what is known is written */
    runner_dispatch(r);
    runner_maybe_close(r);
}

static void runner_job_dns_failed(struct runner_job *job, const struct dns_route *route)
{
    const char *status = "4.4.3";
    enum retry_outcome o = retry_classify_dns(route->status, &status);
    runner_copy(job->cur_host, sizeof(job->cur_host), "");
    runner_add_attempt(job->msg, 0, job->domain, "", "", "dns", "", route->detail,
                       retry_outcome_name(o));
    runner_job_settle_all(job, o, status, route->detail, false);
    runner_job_finish(job);
}

static void runner_format_addr(const struct sockaddr_storage *ss, unsigned port, char *out,
                               size_t size)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (ss->ss_family == AF_INET6) {
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, ip, sizeof(ip));
        snprintf(out, size, "[%s]:%u", ip, port);
    } else {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, ip, sizeof(ip));
        snprintf(out, size, "%s:%u", ip, port);
    }
}

static void runner_on_sent(struct client_conn *c, const struct client_result *res, void *arg);

static void runner_job_send(struct runner_job *job);

/* ---- parked connections --------------------------------------------------- */

static void runner_on_idle_timer(uv_timer_t *t);

static void runner_idle_remove(struct relay_runner *r, size_t i)
{
    if (r->idle[i].is_counted_ip)
        runner_count_add(r->per_ip, &r->per_ip_count, r->idle[i].addr, -1);
    r->idle[i] = r->idle[--r->idle_count];
}

/* The peer closed a parked connection (or said 421): forget it. */
static void runner_on_idle_lost(struct client_conn *c, void *arg)
{
    struct relay_runner *r = arg;
    for (size_t i = 0; i < r->idle_count; i++) {
        if (r->idle[i].conn == c) {
            runner_idle_remove(r, i);
            return;
        }
    }
}

/* Close the parked connections older than connection_cache_time (all of them when
 * stopping); wake again for the next one to expire. */
static void runner_idle_expire(struct relay_runner *r)
{
    uint64_t now = uv_now(&r->loop);
    uint64_t idle_ms = r->set.idle_ms;
    uint64_t next_ms = 0;
    for (size_t i = 0; i < r->idle_count;) {
        struct runner_idle *e = &r->idle[i];
        uint64_t age = now - e->parked_at_ms;
        if (r->is_stopping || age >= idle_ms) {
            struct client_conn *c = e->conn;
            runner_idle_remove(r, i);
            client_close(c);
            continue;
        }
        if (next_ms == 0 || idle_ms - age < next_ms)
            next_ms = idle_ms - age;
        i++;
    }
    if (next_ms > 0)
        uv_timer_start(&r->idle_timer, runner_on_idle_timer, next_ms, 0);
}

static void runner_on_idle_timer(uv_timer_t *t)
{
    runner_idle_expire(t->data);
}

/* Keep c, on which job just delivered, for the next message to the same
 * destination. False when there is no room (the caller closes c). */
static bool runner_idle_park(struct runner_job *job, struct client_conn *c)
{
    struct relay_runner *r = job->runner;
    if (r->is_stopping || r->set.idle_ms == 0 || r->idle_count == RUNNER_IDLE_MAX)
        return false;
    struct runner_idle *e = &r->idle[r->idle_count++];
    e->conn = c;
    runner_copy(e->key, sizeof(e->key), job->key);
    runner_copy(e->host, sizeof(e->host), job->cur_host);
    runner_copy(e->addr, sizeof(e->addr), job->cur_addr);
    e->is_counted_ip = job->is_counted_ip; /* the address count moves with the connection */
    job->is_counted_ip = false;
    e->parked_at_ms = uv_now(&r->loop);
    client_park(c, runner_on_idle_lost, r);
    if (!uv_is_active((uv_handle_t *)&r->idle_timer))
        uv_timer_start(&r->idle_timer, runner_on_idle_timer, r->set.idle_ms, 0);
    return true;
}

/* A parked connection to job's destination, most recently used first; the
 * job takes it over. */
static bool runner_idle_take(struct runner_job *job)
{
    struct relay_runner *r = job->runner;
    for (size_t k = r->idle_count; k > 0; k--) {
        struct runner_idle *e = &r->idle[k - 1];
        if (strcasecmp(e->key, job->key) != 0)
            continue;
        job->conn = e->conn;
        runner_copy(job->cur_host, sizeof(job->cur_host), e->host);
        runner_copy(job->cur_addr, sizeof(job->cur_addr), e->addr);
        job->is_counted_ip = e->is_counted_ip;
        e->is_counted_ip = false;
        runner_idle_remove(r, k - 1);
        job->is_from_idle = true;
        log_debug(job->msg->due.qid, "reusing the parked connection to %s[%s]", job->cur_host,
                  job->cur_addr);
        return true;
    }
    return false;
}

/* The parked connection job took failed before MAIL was answered (the peer
 * closed it meanwhile): not an attempt; look the destination up and connect
 * afresh. */
static void runner_idle_went_stale(struct runner_job *job, const char *why)
{
    log_debug(job->msg->due.qid, "parked connection to %s[%s] lost (%s); reconnecting",
              job->cur_host, job->cur_addr, why);
    job->is_from_idle = false;
    job->conn = NULL;
    runner_job_resolve(job);
}

/* Messages to the same destination reuse an open connection: hand c to the
 * oldest pending job for job's destination (no new DNS lookup, no new
 * handshake). Returns false when there is none (the caller closes c). */
static bool runner_reuse(struct runner_job *job, struct client_conn *c)
{
    struct relay_runner *r = job->runner;
    if (r->is_stopping)
        return false;
    for (struct runner_job **p = &r->pending; *p != NULL; p = &(*p)->next) {
        struct runner_job *n = *p;
        if (strcasecmp(n->key, job->key) != 0)
            continue;
        int64_t wait_ms = 0;
        if (!runner_rate_allows(r, n->key, n->rcpt_n, &wait_ms))
            return false;
        *p = n->next;
        n->next = r->active;
        r->active = n;
        r->active_count++;
        n->is_started = true;
        runner_count_add(r->per_key, &r->per_key_count, n->key, 1);
        runner_rate_take(r, n->key, n->rcpt_n);
        n->route = job->route;
        n->host_i = job->host_i;
        n->addr_i = job->addr_i;
        runner_copy(n->cur_addr, sizeof(n->cur_addr), job->cur_addr);
        runner_copy(n->cur_host, sizeof(n->cur_host), job->cur_host);
        /* the address count moves with the connection */
        n->is_counted_ip = job->is_counted_ip;
        job->is_counted_ip = false;
        n->conn = c;
        log_debug(n->msg->due.qid, "reusing the connection to %s[%s]", n->cur_host, n->cur_addr);
        runner_job_send(n);
        return true;
    }
    return false;
}

static void runner_job_send(struct runner_job *job)
{
    struct relay_msg *m = job->msg;
    /* only the recipients still without an outcome (a previous address may
     * have answered some of them for good) */
    job->sent_n = 0;
    for (size_t i = 0; i < job->rcpt_n; i++) {
        struct runner_rcpt *rc = &m->rcpt[job->rcpt_idx[i]];
        if (rc->is_done)
            continue;
        job->rcpt_addrs[job->sent_n] = rc->address;
        job->sent_idx[job->sent_n++] = job->rcpt_idx[i];
    }
    job->txn = (struct client_txn){
        .sender = m->due.sender,
        .rcpts = job->rcpt_addrs,
        .rcpt_count = job->sent_n,
        .body = m->body,
        .body_len = m->body_len,
        .is_8bit = true,
    };
    if (job->sent_n == 0 || client_send(job->conn, &job->txn, runner_on_sent, job) < 0) {
        client_close(job->conn);
        job->conn = NULL;
        if (job->sent_n == 0) {
            runner_job_finish(job);
            return;
        }
        if (job->is_from_idle) {
            runner_idle_went_stale(job, "cannot start the transaction");
            return;
        }
        runner_copy(job->last_error, sizeof(job->last_error), "cannot start the transaction");
        job->addr_i++;
        runner_job_next_address(job);
    }
}

static void runner_on_sent(struct client_conn *c, const struct client_result *res, void *arg)
{
    struct runner_job *job = arg;
    struct relay_msg *m = job->msg;
    if (job->is_from_idle && res->is_connection_failure && res->step <= CLIENT_STEP_MAIL) {
        if (res->is_reusable)
            client_close(c);
        runner_idle_went_stale(job, res->reply.text);
        return;
    }
    job->is_from_idle = false;
    const char *step = client_step_name(res->step);
    char text[RUNNER_TEXT_MAX];
    runner_reply_text(&res->reply, text, sizeof(text));
    size_t left = 0;
    for (size_t i = 0; i < job->sent_n; i++) {
        struct runner_rcpt *rc = &m->rcpt[job->sent_idx[i]];
        const struct client_reply *rep = i < res->rcpt_count ? &res->rcpts[i].reply : &res->reply;
        char rtext[RUNNER_TEXT_MAX];
        runner_reply_text(rep, rtext, sizeof(rtext));
        enum retry_outcome o = retry_classify_reply(rep->code);
        if (res->is_connection_failure && o == RETRY_DEFER) {
            left++; /* the next address may take it */
            continue;
        }
        runner_rcpt_set(rc, o, runner_reply_status(rep), rtext, job->cur_host, rep->code != 0);
        runner_add_attempt(m, rc->id, job->domain, job->cur_host, job->cur_addr,
                           o == RETRY_DELIVERED ? "done" : step, res->tls, rtext,
                           retry_outcome_name(o));
    }
    if (left > 0) {
        runner_add_attempt(m, 0, job->domain, job->cur_host, job->cur_addr, step, res->tls, text,
                           "deferred");
        runner_copy(job->last_error, sizeof(job->last_error), text);
        runner_copy(job->last_step, sizeof(job->last_step), step);
        job->last_code = res->reply.code;
        if (res->is_reusable)
            client_close(c);
        job->conn = NULL;
        job->is_plain_retry = false;
        job->addr_i++;
        runner_job_next_address(job);
        return;
    }
    job->conn = NULL;
    if (!res->is_reusable || (!runner_reuse(job, c) && !runner_idle_park(job, c)))
        client_close(c);
    runner_job_finish(job);
}

static void runner_on_open(struct client_conn *c, const struct client_result *res, void *arg)
{
    struct runner_job *job = arg;
    struct relay_msg *m = job->msg;
    if (res->step == CLIENT_STEP_DONE) {
        job->conn = c;
        runner_job_send(job);
        return;
    }
    job->conn = NULL;
    const char *step = client_step_name(res->step);
    char text[RUNNER_TEXT_MAX];
    runner_reply_text(&res->reply, text, sizeof(text));
    enum retry_outcome o = res->is_connection_failure || res->is_tls_failure
                               ? RETRY_DEFER
                               : retry_classify_reply(res->reply.code);
    runner_add_attempt(m, 0, job->domain, job->cur_host, job->cur_addr, step, res->tls, text,
                       retry_outcome_name(o));
    runner_copy(job->last_error, sizeof(job->last_error), text);
    runner_copy(job->last_step, sizeof(job->last_step), step);
    job->last_code = res->reply.code;
    if (res->is_tls_failure && job->opts.tls == CLIENT_TLS_OPPORTUNISTIC && !job->is_plain_retry) {
        /* RFC 7435: a broken STARTTLS must not stop mail that could go in
         * plaintext under an opportunistic policy; same host, no TLS */
        log_info(m->due.qid, "TLS handshake with %s[%s] failed (%s); retrying without TLS",
                 job->cur_host, job->cur_addr, text);
        job->is_plain_retry = true;
        runner_job_next_address(job); /* addr_i not advanced: the same address */
        return;
    }
    job->is_plain_retry = false;
    if (res->is_connection_failure || res->is_tls_failure) {
        job->addr_i++;
        runner_job_next_address(job);
        return;
    }
    /* a permanent refusal at greeting or EHLO (5xx): the destination says no */
    runner_job_settle_all(job, o, runner_reply_status(&res->reply), text, res->reply.code != 0);
    runner_job_finish(job);
}

/* Back to pending, to be started again (from DNS) when a slot frees. */
static void runner_job_requeue(struct runner_job *job)
{
    struct relay_runner *r = job->runner;
    runner_job_unlink(&r->active, job);
    r->active_count--;
    runner_count_add(r->per_key, &r->per_key_count, job->key, -1);
    job->is_started = false;
    job->host_i = job->addr_i = 0;
    job->is_plain_retry = false;
    struct runner_job **tail = &r->pending;
    while (*tail != NULL)
        tail = &(*tail)->next;
    *tail = job;
}

/* Connect to the next address of the route, or settle the job when none is
 * left (deferred with the last error). */
static void runner_job_next_address(struct runner_job *job)
{
    struct relay_runner *r = job->runner;
    if (job->is_counted_ip) {
        runner_count_add(r->per_ip, &r->per_ip_count, job->cur_addr, -1);
        job->is_counted_ip = false;
    }
    if (r->is_stopping) {
        runner_job_finish(job);
        return;
    }
    while (job->host_i < job->route.host_count) {
        const struct dns_host *h = &job->route.hosts[job->host_i];
        if (job->addr_i >= h->addr_count) {
            job->host_i++;
            job->addr_i = 0;
            continue;
        }
        unsigned port = job->is_relayhost ? r->set.relayhost_port : r->set.port;
        struct sockaddr_storage ss = h->addrs[job->addr_i];
        if (ss.ss_family == AF_INET6)
            ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
        else
            ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
        runner_format_addr(&ss, port, job->cur_addr, sizeof(job->cur_addr));
        runner_copy(job->cur_host, sizeof(job->cur_host), h->name);
        if (runner_count_get(r->per_ip, &r->per_ip_count, job->cur_addr) >= r->set.max_per_ip) {
            runner_job_requeue(job); /* that address has enough of us: wait for a turn */
            return;
        }
        struct client_options *o = &job->opts;
        memset(o, 0, sizeof(*o));
        o->helo_name = r->set.helo;
        o->tls_creds = r->creds;
        o->connect_timeout_ms = r->set.connect_ms;
        o->command_timeout_ms = r->set.command_ms;
        o->data_timeout_ms = r->set.data_ms;
        o->log_id = job->msg->due.qid;
        if (job->is_relayhost) {
            o->tls = r->set.is_relayhost_verify ? CLIENT_TLS_VERIFY : CLIENT_TLS_REQUIRE;
            o->is_implicit_tls = r->set.is_relayhost_implicit;
            o->tls_server_name = r->set.relayhost;
            if (r->set.has_relay_auth) {
                o->auth_user = r->set.relay_user;
                o->auth_password = r->set.relay_password;
            }
        } else {
            o->tls = job->is_plain_retry ? CLIENT_TLS_NONE : runner_tls_for(&r->set, job->domain);
            o->tls_server_name = h->name;
        }
        if (job->is_plain_retry)
            o->tls = CLIENT_TLS_NONE;
        struct client_conn *c = NULL;
        if (client_open(&r->loop, (struct sockaddr *)&ss, o, runner_on_open, job, &c) < 0) {
            runner_add_attempt(job->msg, 0, job->domain, job->cur_host, job->cur_addr, "connect",
                               "", "cannot start a connection", "deferred");
            job->addr_i++;
            continue;
        }
        job->conn = c;
        runner_count_add(r->per_ip, &r->per_ip_count, job->cur_addr, 1);
        job->is_counted_ip = true;
        return;
    }
    /* every address tried */
    const char *err = job->last_error[0] != '\0' ? job->last_error
                                                 : "no address of the destination could be used";
    bool is_remote = job->last_code != 0;
    const char *status = job->last_code != 0 ? retry_default_status(job->last_code) : "4.4.1";
    if (job->last_code >= 500)
        status = "4.0.0"; /* a 5xx at greeting on one host does not bounce while others failed */
    runner_job_settle_all(job, RETRY_DEFER, status, err, is_remote);
    runner_job_finish(job);
}

static void runner_on_route(const struct dns_route *route, void *arg)
{
    struct runner_job *job = arg;
    job->is_resolving = false;
    if (job->runner->is_stopping) {
        runner_job_finish(job);
        return;
    }
    if (route->status != DNS_OK) {
        runner_job_dns_failed(job, route);
        return;
    }
    job->route = *route;
    job->host_i = job->addr_i = 0;
    runner_job_next_address(job);
}

static void runner_on_relayhost_addr(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct runner_job *job = req->data;
    struct dns_route route;
    memset(&route, 0, sizeof(route));
    if (status != 0 || res == NULL) {
        route.status = DNS_TEMPFAIL; /* a relayhost we cannot resolve: wait, never bounce */
        snprintf(route.detail, sizeof(route.detail), "cannot resolve relayhost %.160s: %.60s",
                 job->runner->set.relayhost, uv_strerror(status));
    } else {
        route.status = DNS_OK;
        route.host_count = 1;
        runner_copy(route.hosts[0].name, sizeof(route.hosts[0].name), job->runner->set.relayhost);
        for (struct addrinfo *ai = res; ai != NULL && route.hosts[0].addr_count < DNS_MAX_ADDRS;
             ai = ai->ai_next) {
            if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
                continue;
            memcpy(&route.hosts[0].addrs[route.hosts[0].addr_count++], ai->ai_addr,
                   ai->ai_addrlen);
        }
    }
    uv_freeaddrinfo(res);
    runner_on_route(&route, job);
}

/* The route of job's destination (DNS, or the relayhost's address), then
 * its addresses in turn. */
static void runner_job_resolve(struct runner_job *job)
{
    struct relay_runner *r = job->runner;
    if (job->is_counted_ip) {
        runner_count_add(r->per_ip, &r->per_ip_count, job->cur_addr, -1);
        job->is_counted_ip = false;
    }
    job->is_resolving = true;
    if (job->is_relayhost) {
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG};
        job->gai.data = job;
        if (uv_getaddrinfo(&r->loop, &job->gai, runner_on_relayhost_addr, r->set.relayhost, NULL,
                           &hints) == 0)
            return;
        struct dns_route route = {.status = DNS_TEMPFAIL};
        snprintf(route.detail, sizeof(route.detail), "cannot resolve relayhost %.200s",
                 r->set.relayhost);
        runner_on_route(&route, job);
        return;
    }
    if (dns_route(r->dns, job->domain, runner_on_route, job) < 0) {
        struct dns_route route = {.status = DNS_TEMPFAIL};
        snprintf(route.detail, sizeof(route.detail), "cannot start a DNS lookup for %.200s",
                 job->domain);
        runner_job_dns_failed(job, &route);
    }
}

static void runner_job_start(struct runner_job *job)
{
    struct relay_runner *r = job->runner;
    job->is_started = true;
    job->next = r->active;
    r->active = job;
    r->active_count++;
    runner_count_add(r->per_key, &r->per_key_count, job->key, 1);
    runner_rate_take(r, job->key, job->rcpt_n);
    if (runner_idle_take(job))
        runner_job_send(job);
    else
        runner_job_resolve(job);
}

/* Start what the limits allow, oldest first. */
static void runner_dispatch(struct relay_runner *r)
{
    int64_t min_wait_ms = -1;
    struct runner_job **p = &r->pending;
    while (*p != NULL && !r->is_stopping && r->active_count < r->set.max_deliveries) {
        struct runner_job *job = *p;
        int64_t wait_ms = 0;
        if (runner_count_get(r->per_key, &r->per_key_count, job->key) >= r->set.max_per_domain) {
            p = &job->next;
            continue;
        }
        if (!runner_rate_allows(r, job->key, job->rcpt_n, &wait_ms)) {
            if (min_wait_ms < 0 || wait_ms < min_wait_ms)
                min_wait_ms = wait_ms;
            if (!job->is_paced_logged) {
                job->is_paced_logged = true;
                log_info(job->msg->due.qid, "paced: %s is at its rate_limit, waiting %llds",
                         job->key, (long long)(wait_ms / 1000));
            }
            p = &job->next;
            continue;
        }
        *p = job->next;
        job->next = NULL;
        runner_job_start(job);
    }
    if (min_wait_ms >= 0 && !r->is_stopping) {
        /* paced mail waits in memory (and in the queue) for its window */
        uint64_t due = uv_timer_get_due_in(&r->scan_timer);
        if (due == 0 || (uint64_t)min_wait_ms + 10 < due) {
            uv_timer_stop(&r->scan_timer);
            uv_timer_start(&r->scan_timer, runner_on_pace_timer, (uint64_t)min_wait_ms + 10, 0);
        }
    }
}

static void runner_on_pace_timer(uv_timer_t *t)
{
    struct relay_runner *r = t->data;
    runner_dispatch(r);
    runner_scan(r);
}

/* ---- the thread ------------------------------------------------------------ */

static void runner_on_wake(uv_async_t *a)
{
    struct relay_runner *r = a->data;
    bool is_missed = runner_take_inbox(r);
    if (atomic_exchange(&r->is_scan_asked, false) || is_missed)
        runner_scan(r);
    runner_dispatch(r);
}

static void runner_close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Once stopping and nothing is under way any more: close every handle so
 * the loop ends. */
static void runner_maybe_close(struct relay_runner *r)
{
    if (!r->is_stopping || r->is_closed || r->active != NULL || r->is_db_busy ||
        r->db_queue != NULL)
        return;
    r->is_closed = true;
    if (r->dns != NULL) {
        struct dns_resolver *d = r->dns;
        r->dns = NULL;
        dns_resolver_close(d);
    }
    uv_timer_stop(&r->scan_timer);
    uv_timer_stop(&r->grace_timer);
    uv_timer_stop(&r->record_timer);
    uv_timer_stop(&r->idle_timer);
    uv_walk(&r->loop, runner_close_walk, NULL);
}

static void runner_on_grace(uv_timer_t *t)
{
    struct relay_runner *r = t->data;
    /* Lookups end through their callbacks (cancelled: the job finishes and
     * records what it knows). Connections still under way are abandoned:
     * not recorded, tried again at the next start (at worst a recipient
     * gets the message twice, never zero times). */
    if (r->dns != NULL) {
        struct dns_resolver *d = r->dns;
        r->dns = NULL;
        dns_resolver_close(d);
    }
    struct runner_job **p = &r->active;
    while (*p != NULL) {
        struct runner_job *job = *p;
        if (job->is_resolving) {
            uv_cancel((uv_req_t *)&job->gai); /* relayhost lookup: its callback finishes it */
            p = &job->next;
            continue;
        }
        *p = job->next;
        r->active_count--;
        if (job->conn != NULL)
            client_abort(job->conn);
        log_warn(job->msg->due.qid, "delivery to %s abandoned at shutdown; will be retried",
                 job->domain);
        struct relay_msg *m = job->msg;
        runner_job_free(job);
        if (--m->jobs_left == 0)
            runner_msg_drop(r, m);
    }
    runner_maybe_close(r);
}

static void runner_on_stop(uv_async_t *a)
{
    struct relay_runner *r = a->data;
    r->is_stopping = true;
    /* jobs not started: dropped (their messages stay queued) */
    while (r->pending != NULL) {
        struct runner_job *job = r->pending;
        r->pending = job->next;
        struct relay_msg *m = job->msg;
        runner_job_free(job);
        if (--m->jobs_left == 0)
            runner_msg_drop(r, m);
    }
    uv_timer_stop(&r->scan_timer);
    runner_idle_expire(r); /* parked connections: QUIT now */
    if (r->active != NULL)
        uv_timer_start(&r->grace_timer, runner_on_grace, RUNNER_STOP_GRACE_MS, 0);
    runner_db_run_next(r); /* outcomes gathering for a group are written now */
    runner_maybe_close(r);
}

static void runner_thread(void *arg)
{
    struct relay_runner *r = arg;
    pthread_setname_np(pthread_self(), "relay");
    runner_scan(r); /* whatever waited while we were down */
    uv_run(&r->loop, UV_RUN_DEFAULT);
}

/* A runner whose thread never started: its handles are closing; let them
 * close, then free everything. */
static void runner_free_unstarted(struct relay_runner *r)
{
    uv_run(&r->loop, UV_RUN_DEFAULT);
    uv_loop_close(&r->loop);
    pthread_mutex_destroy(&r->inbox_lock);
    gnutls_certificate_free_credentials(r->creds);
    runner_settings_free(&r->set);
    free(r);
}

int relay_runner_start(const struct config *cfg, struct queue *queue, struct relay_runner **out,
                       char *err, size_t err_size)
{
    *out = NULL;
    struct relay_runner *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    r->queue = queue;
    if (runner_settings_load(&r->set, cfg, err, err_size) < 0) {
        runner_settings_free(&r->set);
        free(r);
        return -1;
    }
    int rc = gnutls_certificate_allocate_credentials(&r->creds);
    if (rc == GNUTLS_E_SUCCESS) {
        if (cfg->relay_ca_file[0] != '\0')
            rc = gnutls_certificate_set_x509_trust_file(r->creds, cfg->relay_ca_file,
                                                        GNUTLS_X509_FMT_PEM);
        else
            rc = gnutls_certificate_set_x509_system_trust(r->creds);
        if (rc < 0)
            log_warn(NULL, "relay: no CA certificates loaded from %s (%s): verify will fail",
                     cfg->relay_ca_file[0] != '\0' ? cfg->relay_ca_file : "the system store",
                     gnutls_strerror(rc));
        rc = 0;
    } else {
        snprintf(err, err_size, "relay: GnuTLS credentials: %s", gnutls_strerror(rc));
        runner_settings_free(&r->set);
        free(r);
        return -1;
    }
    if (uv_loop_init(&r->loop) != 0) {
        snprintf(err, err_size, "relay: cannot create its event loop");
        gnutls_certificate_free_credentials(r->creds);
        runner_settings_free(&r->set);
        free(r);
        return -1;
    }
    pthread_mutex_init(&r->inbox_lock, NULL); /* default attributes: cannot fail */
    uv_async_init(&r->loop, &r->wake_async, runner_on_wake);
    r->wake_async.data = r;
    uv_async_init(&r->loop, &r->stop_async, runner_on_stop);
    r->stop_async.data = r;
    uv_async_init(&r->loop, &r->db_done_async, runner_on_db_done);
    r->db_done_async.data = r;
    atomic_init(&r->db_done, NULL);
    uv_timer_init(&r->loop, &r->scan_timer);
    r->scan_timer.data = r;
    uv_timer_init(&r->loop, &r->grace_timer);
    r->grace_timer.data = r;
    uv_timer_init(&r->loop, &r->record_timer);
    r->record_timer.data = r;
    uv_timer_init(&r->loop, &r->idle_timer);
    r->idle_timer.data = r;
    if (dns_resolver_new(&r->loop, &r->set.dns, &r->dns, err, err_size) < 0) {
        uv_walk(&r->loop, runner_close_walk, NULL);
        runner_free_unstarted(r);
        return -1;
    }
    if (uv_thread_create(&r->thread, runner_thread, r) != 0) {
        snprintf(err, err_size, "relay: cannot start its thread");
        r->is_stopping = true;
        runner_maybe_close(r);
        runner_free_unstarted(r);
        return -1;
    }
    atomic_store(&r->is_started, true);
    log_info(NULL, "relay: runner started%s%s (max_deliveries=%u per_domain=%u per_ip=%u)",
             r->set.has_relayhost ? " relayhost=" : "", r->set.has_relayhost ? cfg->relay_relayhost : "",
             r->set.max_deliveries, r->set.max_per_domain, r->set.max_per_ip);
    *out = r;
    return 0;
}

void relay_runner_wake(struct relay_runner *r)
{
    if (r != NULL && atomic_load(&r->is_started)) {
        atomic_store(&r->is_scan_asked, true);
        uv_async_send(&r->wake_async);
    }
}

/* A relay_msg of a message just committed, as a scan would have read it;
 * NULL when it is not to be taken this way or memory is short. */
static struct relay_msg *runner_msg_from_commit(const struct queue_committed *c)
{
    size_t len = c->header_len + c->body_len;
    if (c->owner == NULL || c->recipient_ids == NULL || c->recipient_count == 0 ||
        len > RUNNER_OFFER_MAX_SIZE)
        return NULL;
    struct relay_msg *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    m->rcpt = calloc(c->recipient_count, sizeof(*m->rcpt));
    m->body = malloc(len ? len : 1);
    if (m->rcpt == NULL || m->body == NULL) {
        runner_msg_free(m);
        return NULL;
    }
    if (c->header_len > 0)
        memcpy(m->body, c->header, c->header_len);
    if (c->body_len > 0)
        memcpy(m->body + c->header_len, c->body, c->body_len);
    m->body_len = len;
    struct queue_due *d = &m->due;
    d->id = c->message_id;
    runner_copy(d->qid, sizeof(d->qid), c->qid);
    d->created_at = c->created_at;
    runner_copy(d->sender, sizeof(d->sender), c->sender);
    runner_copy(d->auth_user, sizeof(d->auth_user), c->auth_user);
    runner_copy(d->kind, sizeof(d->kind), "message");
    runner_copy(d->owner, sizeof(d->owner), c->owner);
    d->size = len;
    m->rcpt_count = c->recipient_count;
    for (size_t k = 0; k < c->recipient_count; k++) {
        m->rcpt[k].id = c->recipient_ids[k];
        runner_copy(m->rcpt[k].address, sizeof(m->rcpt[k].address), c->recipients[k]);
    }
    return m;
}

void relay_runner_offer(struct relay_runner *r, const struct queue_committed *c)
{
    if (r == NULL || !atomic_load(&r->is_started))
        return;
    struct relay_msg *m = runner_msg_from_commit(c);
    pthread_mutex_lock(&r->inbox_lock);
    if (m != NULL && r->inbox_count < RUNNER_MSGS_MAX) {
        if (r->inbox_tail != NULL)
            r->inbox_tail->next = m;
        else
            r->inbox = m;
        r->inbox_tail = m;
        r->inbox_count++;
        m = NULL;
    } else {
        r->is_inbox_missed = true;
    }
    pthread_mutex_unlock(&r->inbox_lock);
    if (m != NULL)
        runner_msg_free(m);
    uv_async_send(&r->wake_async);
}

void relay_runner_stop(struct relay_runner *r)
{
    if (r == NULL)
        return;
    uv_async_send(&r->stop_async);
    uv_thread_join(&r->thread);
    /* every handle is closed; run once more for their close callbacks */
    uv_run(&r->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&r->loop) != 0)
        log_warn(NULL, "relay: event loop closed with handles still open");
    runner_msg_free_list(r->msgs);
    runner_msg_free_list(r->inbox); /* still queued: the next start's scan takes them */
    pthread_mutex_destroy(&r->inbox_lock);
    queue_store_close(r->store);
    gnutls_certificate_free_credentials(r->creds);
    runner_settings_free(&r->set);
    free(r);
}

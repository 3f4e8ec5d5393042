/* smarthostd — the daemon's main(): arguments, configuration, then the
 * order that keeps privileges short: bind ports and read the TLS key as root,
 * drop to the configured user, only then open the database and serve. */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <malloc.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "auth/auth.h"
#include "auth/authcache.h"
#include "auth/throttle.h"
#include "core/config.h"
#include "core/control.h"
#include "core/log.h"
#include "core/queue.h"
#include "core/server.h"
#include "relay/runner.h"

#include <pthread.h>
#include <uv.h>

#define SMARTHOSTD_DEFAULT_CONFIG "/etc/smarthost/smarthost.conf"

static void usage(FILE *fp)
{
    fprintf(fp,
            "Usage: smarthostd [-c FILE] [--check-config]\n"
            "Mail submission server and smarthost for devices.\n\n"
            "  -c, --config FILE   configuration file (default %s)\n"
            "      --check-config  check the configuration file and exit\n"
            "  -V, --version       print the version and exit\n"
            "  -h, --help          this help\n\n"
            "Runs in the foreground and logs to stderr (or syslog, [log] target).\n"
            "SIGHUP reloads configuration and certificates; SIGTERM drains and stops.\n",
            SMARTHOSTD_DEFAULT_CONFIG);
}

/* The control socket's commands (core/control.c runs this on its thread). */
struct control_ctx {
    struct relay_runner *runner;
    struct throttle *throttle;
};

struct lockout_list {
    char *out;
    size_t size, len;
    size_t count;
};

static void on_lockout(const char *kind, const char *what, uint64_t left_ms, uint32_t failures,
                       void *arg)
{
    struct lockout_list *l = arg;
    char esc[600];
    log_escape(what, strlen(what), esc, sizeof(esc));
    /* JSON string: log_escape leaves printable ASCII; quote and backslash escaped here */
    char js[1300];
    size_t k = 0;
    for (const char *p = esc; *p != '\0' && k + 2 < sizeof(js); p++) {
        if (*p == '"' || *p == '\\')
            js[k++] = '\\';
        js[k++] = *p;
    }
    js[k] = '\0';
    int n = snprintf(l->out + l->len, l->size - l->len,
                     "%s{\"kind\":\"%s\",\"what\":\"%s\",\"left_s\":%llu,\"failures\":%u}",
                     l->count ? "," : "", kind, js, (unsigned long long)((left_ms + 999) / 1000),
                     failures);
    if (n > 0 && (size_t)n < l->size - l->len - 2) {
        l->len += (size_t)n;
        l->count++;
    }
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts); /* the clock the sessions give the throttle */
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void on_control(const char *command, char *reply, size_t reply_size, void *arg)
{
    struct control_ctx *ctx = arg;
    if (strcmp(command, "ping") == 0) {
        snprintf(reply, reply_size, "ok smarthostd %s", SMARTHOST_VERSION);
    } else if (strcmp(command, "wake") == 0) {
        if (ctx->runner == NULL) {
            snprintf(reply, reply_size, "ok relay disabled");
        } else {
            relay_runner_wake(ctx->runner);
            snprintf(reply, reply_size, "ok");
        }
    } else if (strcmp(command, "lockouts") == 0) {
        struct lockout_list l = {.out = reply, .size = reply_size};
        l.len = (size_t)snprintf(reply, reply_size, "ok [");
        throttle_list_locked(ctx->throttle, wall_ms(), on_lockout, &l);
        snprintf(reply + l.len, reply_size - l.len, "]");
    } else if (strncmp(command, "unlock ", 7) == 0) {
        bool found = throttle_unlock(ctx->throttle, command + 7);
        char esc[300];
        log_escape(command + 7, strlen(command + 7), esc, sizeof(esc));
        log_info(NULL, "auth unlock %s by smarthostctl: %s", esc, found ? "done" : "nothing to do");
        snprintf(reply, reply_size, "ok %s", found ? "unlocked" : "none");
    } else {
        snprintf(reply, reply_size, "error unknown command");
    }
}

static void on_committed(const struct queue_committed *c, void *arg)
{
    relay_runner_offer(arg, c); /* a new message is attempted at once */
}

static int drop_privileges(const char *user)
{
    if (user[0] == '\0')
        return 0;
    if (geteuid() != 0) {
        log_info(NULL, "not running as root: staying uid=%d (user=%s not applied)", (int)getuid(),
                 user);
        return 0;
    }
    struct passwd *pw = getpwnam(user);
    if (pw == NULL) {
        log_err(NULL, "[server] user: no such user \"%s\"", user);
        return -1;
    }
    if (setgroups(0, NULL) < 0 || setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0) {
        log_err(NULL, "cannot drop privileges to %s: %s", user, strerror(errno));
        return -1;
    }
    if (setuid(0) == 0) { /* must be impossible now */
        log_err(NULL, "privileges could be regained after dropping to %s", user);
        return -1;
    }
    prctl(PR_SET_DUMPABLE, 1); /* core dumps remain possible for debugging */
    log_info(NULL, "running as user=%s uid=%d", user, (int)pw->pw_uid);
    return 0;
}

static void pool_noop(uv_work_t *req)
{
    (void)req;
}

/* Starts libuv's pool from here, so that its threads, which take their name from the
 * thread that first queues work, are called "pool" in top -H and perf, not after
 * whichever session or relay thread came first. */
static void pool_start(void)
{
    uv_loop_t loop;
    uv_work_t req;
    if (uv_loop_init(&loop) != 0)
        return;
    pthread_setname_np(pthread_self(), "pool");
    if (uv_queue_work(&loop, &req, pool_noop, NULL) == 0)
        uv_run(&loop, UV_RUN_DEFAULT);
    pthread_setname_np(pthread_self(), "smarthostd");
    uv_loop_close(&loop);
}

int main(int argc, char **argv)
{
    const char *path = SMARTHOSTD_DEFAULT_CONFIG;
    bool check_only = false;
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", no_argument, NULL, 'C'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "c:Vh", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': path = optarg; break;
        case 'C': check_only = true; break;
        case 'V': printf("smarthostd %s\n", SMARTHOST_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "smarthostd: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    /* glibc gives the free top of a thread's heap back past 128 KiB, and the
     * next allocations fault it in again: SQLite frees a connection's page
     * cache whenever another connection has committed, so under load every
     * database thread trimmed and refaulted its heap (madvise, a TLB shootdown
     * across cores, page faults) many times a second. Keep up to 8 MiB free
     * per heap. Setting it stops glibc from moving the mmap threshold, so fix
     * that too, at 4 MiB: a 1 MB message's buffers (up to 2 MiB as they grow)
     * come from the heap, not from a fresh mmap each time. glibc's own
     * adaptive limits go up to 32 and 64 MiB. */
#ifdef M_TRIM_THRESHOLD /* glibc */
    mallopt(M_TRIM_THRESHOLD, 8 << 20);
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
#endif

    char err[1024];
    struct config *cfg = NULL;
    if (config_load(path, &cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "smarthostd: %s\n", err);
        return 1;
    }
    if (check_only) {
        printf("%s: ok\n", path);
        config_free(cfg);
        return 0;
    }
    log_setup(cfg->log_target, cfg->log_level, "smarthostd");
    signal(SIGPIPE, SIG_IGN);
    /* AUTH (yescrypt) runs on libuv's pool: size it before first use. */
    if (getenv("UV_THREADPOOL_SIZE") == NULL) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        char v[32];
        snprintf(v, sizeof(v), "%ld", n > 2 ? n * 2 : 4);
        setenv("UV_THREADPOOL_SIZE", v, 1);
    }
    pool_start();

    char *user = strdup(cfg->user);
    char *database = strdup(cfg->database);
    unsigned busy_ms = (unsigned)cfg->queue_busy_timeout_ms;
    struct throttle_params tp = {
        .failure_delay_ms = cfg->auth_failure_delay_ms,
        .max_delay_ms = cfg->auth_max_delay_ms,
        .ip_lockout_failures = cfg->auth_ip_lockout_failures,
        .account_lockout_failures = cfg->auth_account_lockout_failures,
        .lockout_ms = cfg->auth_lockout_ms,
        .window_ms = cfg->auth_failure_window_ms,
    };

    struct server *srv = NULL;
    if (server_bind(cfg, &srv, err, sizeof(err)) < 0) { /* takes cfg */
        log_err(NULL, "%s: %s", path, err);
        return 1;
    }
    if (drop_privileges(user) < 0)
        return 1;

    struct queue *queue = NULL;
    if (queue_open(database, busy_ms, &queue) < 0) {
        log_err(NULL, "cannot open the queue database %s", database);
        return 1;
    }
    if (authcache_init(server_config(srv)->auth_cache_size) < 0) {
        log_err(NULL, "cannot create the authentication cache");
        return 1;
    }
    struct throttle *throttle = throttle_new(&tp);
    if (throttle == NULL || auth_global_init(database, busy_ms, throttle) < 0) {
        log_err(NULL, "cannot initialise authentication (are libsasl2-modules installed?)");
        return 1;
    }
    /* The delivery half, on its own thread; then the control socket. */
    const struct config *run_cfg = server_config(srv);
    struct policy_defaults defaults = {
        .max_size = run_cfg->max_message_size,
        .max_rcpts = run_cfg->max_recipients,
        .msgs_per_hour = run_cfg->acct_msgs_per_hour,
        .msgs_per_day = run_cfg->acct_msgs_per_day,
        .rcpts_per_day = run_cfg->acct_rcpts_per_day,
        .bytes_per_day = run_cfg->acct_bytes_per_day,
    };
    queue_set_policy(queue, &defaults);
    struct relay_runner *runner = NULL;
    if (run_cfg->relay_enabled) {
        if (relay_runner_start(run_cfg, queue, &runner, err, sizeof(err)) < 0) {
            log_err(NULL, "%s: %s", path, err);
            return 1;
        }
        queue_set_committed_hook(queue, on_committed, runner);
    } else {
        log_info(NULL, "relay disabled ([relay] enabled = no): accepted mail stays queued");
    }
    struct control *control = NULL;
    struct control_ctx control_ctx = {.runner = runner, .throttle = throttle};
    if (control_start(run_cfg->relay_control_socket, on_control, &control_ctx, &control, err,
                      sizeof(err)) < 0)
        log_warn(NULL, "%s (smarthostctl changes then apply at the next queue scan)", err);

    int rc = server_run(srv, queue, throttle);
    queue_set_committed_hook(queue, NULL, NULL);
    control_stop(control);
    relay_runner_stop(runner);
    queue_close(queue); /* every accepted message is committed before exit */
    auth_global_done();
    authcache_done();
    throttle_free(throttle);
    server_free(srv);
    free(user);
    free(database);
    return rc == 0 ? 0 : 1;
}

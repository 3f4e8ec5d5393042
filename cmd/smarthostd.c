/* smarthostd — the daemon's main(): arguments, configuration, then the
 * order that keeps privileges short: bind ports and read the TLS key as root,
 * drop to the configured user, only then open the database and serve. */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "auth/auth.h"
#include "auth/throttle.h"
#include "core/config.h"
#include "core/control.h"
#include "core/log.h"
#include "core/queue.h"
#include "core/server.h"
#include "relay/runner.h"

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
static void on_control(const char *command, char *reply, size_t reply_size, void *arg)
{
    struct relay_runner *runner = arg;
    if (strcmp(command, "ping") == 0) {
        snprintf(reply, reply_size, "ok smarthostd %s", SMARTHOST_VERSION);
    } else if (strcmp(command, "wake") == 0) {
        if (runner == NULL) {
            snprintf(reply, reply_size, "ok relay disabled");
        } else {
            relay_runner_wake(runner);
            snprintf(reply, reply_size, "ok");
        }
    } else {
        snprintf(reply, reply_size, "error unknown command");
    }
}

static void on_committed(const char *qid, void *arg)
{
    (void)qid;
    relay_runner_wake(arg); /* a new message is attempted at once */
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
        if (relay_runner_start(run_cfg, &runner, err, sizeof(err)) < 0) {
            log_err(NULL, "%s: %s", path, err);
            return 1;
        }
        queue_set_committed_hook(queue, on_committed, runner);
    } else {
        log_info(NULL, "relay disabled ([relay] enabled = no): accepted mail stays queued");
    }
    struct control *control = NULL;
    if (control_start(run_cfg->relay_control_socket, on_control, runner, &control, err,
                      sizeof(err)) < 0)
        log_warn(NULL, "%s (smarthostctl changes then apply at the next queue scan)", err);

    int rc = server_run(srv, queue, throttle);
    queue_set_committed_hook(queue, NULL, NULL);
    control_stop(control);
    relay_runner_stop(runner);
    queue_close(queue); /* every accepted message is committed before exit */
    auth_global_done();
    throttle_free(throttle);
    server_free(srv);
    free(user);
    free(database);
    return rc == 0 ? 0 : 1;
}

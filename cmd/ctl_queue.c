/* ctl_queue.c — `smarthostctl queue list|show|retry|flush|hold|release|
 * delete`. Every action changes the database itself (so it also holds when
 * the daemon is down) and then tells a running daemon over the control
 * socket to look again at once. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "cmd/ctl.h"
#include "core/control.h"
#include "core/log.h"
#include "core/queue.h"

struct ctl_queue_args {
    const char *qid;
    bool is_all;
};

/* Own options: --json, -c, -h everywhere; --all for retry. Returns
 * CTL_EXIT_OK, CTL_EXIT_USAGE, or -1 after --help. */
static int ctl_queue_parse(struct ctl *ctl, const char *name, int argc, char **argv, bool wants_qid,
                           struct ctl_queue_args *a)
{
    enum { OPT_JSON = 0x100, OPT_ALL };
    const struct ctl_command *c = ctl_find("queue", name);
    const struct option options[] = {
        {"json", no_argument, NULL, OPT_JSON},
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {"all", no_argument, NULL, OPT_ALL},
        {NULL, 0, NULL, 0},
    };
    bool takes_all = strcmp(name, "retry") == 0;
    memset(a, 0, sizeof(*a));
    optind = 0;
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, ":c:h", options, NULL)) != -1) {
        switch (opt) {
        case OPT_JSON: ctl->is_json = true; break;
        case 'c':
            ctl->config_path = optarg;
            ctl->is_config_explicit = true;
            break;
        case 'h': ctl_command_usage(c, stdout); return -1;
        case OPT_ALL:
            if (!takes_all)
                goto unknown;
            a->is_all = true;
            break;
        case ':': ctl_error(ctl, "option '%s' needs a value", argv[optind - 1]); return CTL_EXIT_USAGE;
        default:
        unknown:
            ctl_error(ctl, "unknown option '%s' (see --help)", argv[optind - 1]);
            return CTL_EXIT_USAGE;
        }
    }
    int left = argc - optind;
    if (wants_qid && !a->is_all) {
        if (left == 0) {
            ctl_error(ctl, "missing QID (see --help)");
            return CTL_EXIT_USAGE;
        }
        a->qid = argv[optind++];
        left--;
        if (strlen(a->qid) != QUEUE_ID_SIZE - 1 || strspn(a->qid,
                                                          "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                          "abcdefghijklmnopqrstuvwxyz") !=
                                                       QUEUE_ID_SIZE - 1) {
            char esc[64];
            ctl_error(ctl, "\"%s\" is not a queue id (15 letters and digits, see queue list)",
                      log_escape(a->qid, strlen(a->qid), esc, sizeof(esc)));
            return CTL_EXIT_USAGE;
        }
    }
    if (left > 0) {
        ctl_error(ctl, "unexpected argument '%s' (see --help)", argv[optind]);
        return CTL_EXIT_USAGE;
    }
    return CTL_EXIT_OK;
}

/* Load the configuration and make sure the database exists and has this
 * build's queue schema (opening the store migrates it). */
static int ctl_queue_prepare(struct ctl *ctl, struct queue_store **store)
{
    int rc = ctl_load_config(ctl);
    if (rc != CTL_EXIT_OK)
        return rc;
    if (access(ctl->cfg->database, F_OK) < 0) {
        ctl_error(ctl, "no database at %s (has smarthostd or `smarthostctl user add` run yet?)",
                  ctl->cfg->database);
        return CTL_EXIT_RUNTIME;
    }
    struct queue_store *s = NULL;
    if (queue_store_open(ctl->cfg->database, ctl_busy_ms(ctl), &s) < 0) {
        ctl_error(ctl, "cannot open the database %s (see the log for the reason)",
                  ctl->cfg->database);
        return CTL_EXIT_RUNTIME;
    }
    if (store != NULL)
        *store = s;
    else
        queue_store_close(s);
    return CTL_EXIT_OK;
}

static int ctl_queue_open_reader(struct ctl *ctl, struct queue_reader **r)
{
    int rc = ctl_queue_prepare(ctl, NULL);
    if (rc != CTL_EXIT_OK)
        return rc;
    if (queue_reader_open(ctl->cfg->database, r) < 0) {
        ctl_error(ctl, "cannot open the database %s (see the log for the reason)",
                  ctl->cfg->database);
        return CTL_EXIT_RUNTIME;
    }
    return CTL_EXIT_OK;
}

static int ctl_queue_status_exit(struct ctl *ctl, int status, const char *qid)
{
    if (status == 0)
        return CTL_EXIT_OK;
    if (status == QUEUE_ERR_NOT_FOUND) {
        ctl_error(ctl, "no message %s in the queue", qid != NULL ? qid : "");
        return CTL_EXIT_NOT_FOUND;
    }
    ctl_error(ctl, "cannot update the queue in %s (%s)", ctl->cfg->database,
              status == QUEUE_ERR_BUSY ? "database locked" : "storage error");
    return CTL_EXIT_RUNTIME;
}

/* What an admin calls the state of a message. */
static const char *ctl_queue_state(const struct queue_entry *e)
{
    if (e->is_held)
        return "held";
    if (strcmp(e->state, "done") == 0)
        return "done";
    return e->last_error[0] != '\0' ? "deferred" : "queued";
}

/* The first words of an error, on one line, for the list. */
static void ctl_queue_short_error(const char *err, char *out, size_t out_size)
{
    char line[256];
    size_t n = strcspn(err, "\r\n");
    if (n >= sizeof(line))
        n = sizeof(line) - 1;
    memcpy(line, err, n);
    line[n] = '\0';
    char esc[256];
    log_escape(line, strlen(line), esc, sizeof(esc));
    if (strlen(esc) > 48)
        snprintf(out, out_size, "%.45s...", esc);
    else
        snprintf(out, out_size, "%s", esc);
}

static void ctl_queue_when(int64_t at, int64_t now, char *out, size_t out_size)
{
    if (at <= now) {
        snprintf(out, out_size, "now");
        return;
    }
    char in[24];
    ctl_format_age(at - now, in, sizeof(in));
    snprintf(out, out_size, "in %s", in);
}

/* Tell a running daemon to rescan now. Returns true when it answered. */
static bool ctl_queue_wake(struct ctl *ctl)
{
    char reply[CONTROL_LINE_MAX];
    int rc = control_request(ctl->cfg->relay_control_socket, "wake", reply, sizeof(reply), 5000);
    return rc == 0 && strncmp(reply, "ok", 2) == 0;
}

static void ctl_queue_log_action(const char *action, const char *qid)
{
    char actor[256];
    ctl_actor(actor, sizeof(actor));
    log_info(qid, "admin action=queue-%s by=%s", action, actor);
}

/* ---- list ---------------------------------------------------------------- */

struct ctl_queue_list_ctx {
    bool is_json;
    json_t *array;
    size_t count;
    int64_t now;
};

static int ctl_queue_on_entry(const struct queue_entry *e, void *arg)
{
    struct ctl_queue_list_ctx *ctx = arg;
    const char *state = ctl_queue_state(e);
    if (ctx->is_json) {
        json_t *o = json_object();
        json_object_set_new(o, "qid", ctl_json_text(e->qid));
        json_object_set_new(o, "created_at", json_integer((json_int_t)e->created_at));
        json_object_set_new(o, "age", json_integer((json_int_t)(ctx->now - e->created_at)));
        json_object_set_new(o, "kind", ctl_json_text(e->kind));
        json_object_set_new(o, "sender", ctl_json_text(e->sender));
        json_object_set_new(o, "recipients", json_integer((json_int_t)e->recipient_count));
        json_object_set_new(o, "pending", json_integer((json_int_t)e->pending_count));
        json_object_set_new(o, "size", json_integer((json_int_t)e->size));
        json_object_set_new(o, "state", json_string(state));
        json_object_set_new(o, "held", json_boolean(e->is_held));
        json_object_set_new(o, "next_attempt_at",
                            strcmp(e->state, "done") == 0
                                ? json_null()
                                : json_integer((json_int_t)e->next_attempt_at));
        json_object_set_new(o, "last_error", ctl_json_text(e->last_error));
        json_object_set_new(o, "auth_user", ctl_json_text(e->auth_user));
        json_object_set_new(o, "client_addr", ctl_json_text(e->client_addr));
        json_array_append_new(ctx->array, o);
    } else {
        char age[32], sender[600], next[32], err[64];
        ctl_format_age(ctx->now - e->created_at, age, sizeof(age));
        /* Client-supplied text: escaped before it reaches a terminal. */
        log_escape(e->sender, strlen(e->sender), sender, sizeof(sender));
        if (strcmp(e->state, "done") == 0 || e->is_held)
            snprintf(next, sizeof(next), "-");
        else
            ctl_queue_when(e->next_attempt_at, ctx->now, next, sizeof(next));
        ctl_queue_short_error(e->last_error, err, sizeof(err));
        printf("%-15s %5s %-8s %3zu/%-3zu %-8s <%s>%s%s\n", e->qid, age, state, e->pending_count,
               e->recipient_count, next, sender, err[0] != '\0' ? "  " : "", err);
    }
    ctx->count++;
    return 0;
}

int ctl_queue_list(struct ctl *ctl, int argc, char **argv)
{
    struct ctl_queue_args a;
    int rc = ctl_queue_parse(ctl, "list", argc, argv, false, &a);
    if (rc != CTL_EXIT_OK)
        return rc < 0 ? CTL_EXIT_OK : rc;
    struct queue_reader *r = NULL;
    if ((rc = ctl_queue_open_reader(ctl, &r)) != CTL_EXIT_OK)
        return rc;
    struct ctl_queue_list_ctx ctx = {.is_json = ctl->is_json, .now = (int64_t)time(NULL)};
    if (ctl->is_json)
        ctx.array = json_array();
    else
        printf("%-15s %5s %-8s %-7s %-8s %s\n", "QID", "AGE", "STATE", "WAIT", "NEXT",
               "SENDER  LAST ERROR");
    int status = queue_reader_list(r, ctl_queue_on_entry, &ctx);
    queue_reader_close(r);
    if (ctl->is_json)
        ctl_json_print(ctx.array);
    else if (status == 0)
        printf("%zu message%s\n", ctx.count, ctx.count == 1 ? "" : "s");
    if (status < 0) {
        ctl_error(ctl, "cannot read the queue in %s (%s)", ctl->cfg->database,
                  status == QUEUE_ERR_BUSY ? "database locked" : "storage error");
        return CTL_EXIT_RUNTIME;
    }
    return CTL_EXIT_OK;
}

/* ---- show ---------------------------------------------------------------- */

struct ctl_queue_show_ctx {
    bool is_json;
    json_t *array;
    int64_t now;
    size_t attempt_count;
};

/* Print a remote reply (several lines) indented, escaped. */
static void ctl_queue_print_reply(const char *indent, const char *text)
{
    const char *p = text;
    while (*p != '\0') {
        size_t n = strcspn(p, "\n");
        char esc[1200];
        log_escape(p, n, esc, sizeof(esc));
        printf("%s%s\n", indent, esc);
        p += n;
        if (*p == '\n')
            p++;
    }
}

static int ctl_queue_on_rcpt(const struct queue_rcpt_info *i, void *arg)
{
    struct ctl_queue_show_ctx *ctx = arg;
    if (ctx->is_json) {
        json_t *o = json_object();
        json_object_set_new(o, "address", ctl_json_text(i->address));
        json_object_set_new(o, "state", ctl_json_text(i->state));
        json_object_set_new(o, "attempts", json_integer(i->attempts));
        json_object_set_new(o, "next_attempt_at", json_integer((json_int_t)i->next_attempt_at));
        json_object_set_new(o, "status", ctl_json_text(i->dsn_status));
        json_object_set_new(o, "last_error", ctl_json_text(i->last_error));
        json_object_set_new(o, "updated_at", json_integer((json_int_t)i->updated_at));
        json_array_append_new(ctx->array, o);
        return 0;
    }
    char addr[600], next[48] = "";
    log_escape(i->address, strlen(i->address), addr, sizeof(addr));
    if (strcmp(i->state, "queued") == 0 || strcmp(i->state, "deferred") == 0) {
        char when[30];
        ctl_queue_when(i->next_attempt_at, ctx->now, when, sizeof(when));
        snprintf(next, sizeof(next), "  next %s", when);
    }
    printf("  <%s>  %s  attempts %u%s%s%s\n", addr, i->state, i->attempts, next,
           i->dsn_status[0] != '\0' ? "  status " : "", i->dsn_status);
    if (i->last_error[0] != '\0')
        ctl_queue_print_reply("      ", i->last_error);
    return 0;
}

static int ctl_queue_on_attempt(const struct queue_attempt_info *a, void *arg)
{
    struct ctl_queue_show_ctx *ctx = arg;
    ctx->attempt_count++;
    if (ctx->is_json) {
        json_t *o = json_object();
        json_object_set_new(o, "at", json_integer((json_int_t)a->at));
        json_object_set_new(o, "recipient", ctl_json_text(a->rcpt));
        json_object_set_new(o, "domain", ctl_json_text(a->domain));
        json_object_set_new(o, "host", ctl_json_text(a->host));
        json_object_set_new(o, "address", ctl_json_text(a->address));
        json_object_set_new(o, "step", ctl_json_text(a->step));
        json_object_set_new(o, "tls", ctl_json_text(a->tls));
        json_object_set_new(o, "reply", ctl_json_text(a->reply));
        json_object_set_new(o, "outcome", ctl_json_text(a->outcome));
        json_array_append_new(ctx->array, o);
        return 0;
    }
    char when[64], rcpt[600], host[300];
    ctl_format_time(a->at, when, sizeof(when));
    log_escape(a->rcpt[0] != '\0' ? a->rcpt : a->domain,
               strlen(a->rcpt[0] != '\0' ? a->rcpt : a->domain), rcpt, sizeof(rcpt));
    log_escape(a->host, strlen(a->host), host, sizeof(host));
    printf("  %s  %s  %s%s%s%s  step=%s  %s%s%s\n", when, rcpt, host[0] ? host : "-",
           a->address[0] ? " [" : "", a->address, a->address[0] ? "]" : "", a->step, a->outcome,
           a->tls[0] ? "  tls=" : "", a->tls);
    if (a->reply[0] != '\0')
        ctl_queue_print_reply("      ", a->reply);
    return 0;
}

int ctl_queue_show(struct ctl *ctl, int argc, char **argv)
{
    struct ctl_queue_args a;
    int rc = ctl_queue_parse(ctl, "show", argc, argv, true, &a);
    if (rc != CTL_EXIT_OK)
        return rc < 0 ? CTL_EXIT_OK : rc;
    struct queue_reader *r = NULL;
    if ((rc = ctl_queue_open_reader(ctl, &r)) != CTL_EXIT_OK)
        return rc;
    struct queue_entry e;
    int status = queue_reader_entry(r, a.qid, &e);
    if (status < 0) {
        queue_reader_close(r);
        return ctl_queue_status_exit(ctl, status, a.qid);
    }
    int64_t now = (int64_t)time(NULL);
    struct ctl_queue_show_ctx ctx = {.is_json = ctl->is_json, .now = now};
    json_t *o = NULL;
    if (ctl->is_json) {
        o = json_object();
        json_object_set_new(o, "qid", ctl_json_text(e.qid));
        json_object_set_new(o, "kind", ctl_json_text(e.kind));
        json_object_set_new(o, "state", json_string(ctl_queue_state(&e)));
        json_object_set_new(o, "held", json_boolean(e.is_held));
        json_object_set_new(o, "created_at", json_integer((json_int_t)e.created_at));
        json_object_set_new(o, "sender", ctl_json_text(e.sender));
        json_object_set_new(o, "auth_user", ctl_json_text(e.auth_user));
        json_object_set_new(o, "client_addr", ctl_json_text(e.client_addr));
        json_object_set_new(o, "size", json_integer((json_int_t)e.size));
        json_object_set_new(o, "next_attempt_at", json_integer((json_int_t)e.next_attempt_at));
    } else {
        char arrived[64], age[32], sender[600], user[300];
        ctl_format_time(e.created_at, arrived, sizeof(arrived));
        ctl_format_age(now - e.created_at, age, sizeof(age));
        log_escape(e.sender, strlen(e.sender), sender, sizeof(sender));
        log_escape(e.auth_user, strlen(e.auth_user), user, sizeof(user));
        printf("Queue ID:  %s\n", e.qid);
        printf("State:     %s, %zu of %zu recipient%s waiting", ctl_queue_state(&e),
               e.pending_count, e.recipient_count, e.recipient_count == 1 ? "" : "s");
        if (strcmp(e.state, "done") != 0 && !e.is_held) {
            char when[32];
            ctl_queue_when(e.next_attempt_at, now, when, sizeof(when));
            printf(", next attempt %s", when);
        }
        printf("\nKind:      %s\n", e.kind);
        printf("Arrived:   %s (%s ago)\n", arrived, age);
        printf("Sender:    <%s>\n", sender);
        if (user[0] != '\0' || e.client_addr[0] != '\0')
            printf("From:      %s%s%s\n", user[0] ? user : "", user[0] ? " at " : "",
                   e.client_addr);
        printf("Size:      %llu bytes\n\nRecipients:\n", (unsigned long long)e.size);
    }
    if (ctl->is_json)
        ctx.array = json_array();
    status = queue_reader_recipient_infos(r, a.qid, ctl_queue_on_rcpt, &ctx);
    if (ctl->is_json) {
        json_object_set_new(o, "recipients", ctx.array);
        ctx.array = json_array();
    } else {
        printf("\nAttempts:\n");
    }
    if (status == 0)
        status = queue_reader_attempts(r, a.qid, ctl_queue_on_attempt, &ctx);
    queue_reader_close(r);
    if (ctl->is_json) {
        json_object_set_new(o, "attempts", ctx.array);
        if (status == 0)
            ctl_json_print(o);
        else
            json_decref(o);
    } else if (ctx.attempt_count == 0 && status == 0) {
        printf("  none yet\n");
    }
    return ctl_queue_status_exit(ctl, status, a.qid);
}

/* ---- actions ------------------------------------------------------------- */

static int ctl_queue_report(struct ctl *ctl, const char *action, const char *qid, size_t count,
                            bool has_count)
{
    bool is_notified = ctl_queue_wake(ctl);
    ctl_queue_log_action(action, qid);
    if (ctl->is_json) {
        json_t *o = json_object();
        json_object_set_new(o, "action", json_string(action));
        json_object_set_new(o, "qid", qid != NULL ? json_string(qid) : json_null());
        if (has_count)
            json_object_set_new(o, "messages", json_integer((json_int_t)count));
        json_object_set_new(o, "daemon_notified", json_boolean(is_notified));
        ctl_json_print(o);
        return CTL_EXIT_OK;
    }
    if (has_count)
        printf("%s: %zu message%s\n", action, count, count == 1 ? "" : "s");
    else
        printf("%s: %s\n", action, qid);
    if (!is_notified)
        printf("(smarthostd is not answering on %s: the change applies when it runs)\n",
               ctl->cfg->relay_control_socket);
    return CTL_EXIT_OK;
}

static int ctl_queue_retry_common(struct ctl *ctl, const char *name, int argc, char **argv,
                                  bool is_flush)
{
    struct ctl_queue_args a;
    int rc = ctl_queue_parse(ctl, name, argc, argv, !is_flush, &a);
    if (rc != CTL_EXIT_OK)
        return rc < 0 ? CTL_EXIT_OK : rc;
    struct queue_store *s = NULL;
    if ((rc = ctl_queue_prepare(ctl, &s)) != CTL_EXIT_OK)
        return rc;
    size_t count = 0;
    int status = queue_store_retry(s, is_flush || a.is_all ? NULL : a.qid, (int64_t)time(NULL),
                                   &count);
    queue_store_close(s);
    if (status < 0)
        return ctl_queue_status_exit(ctl, status, a.qid);
    return ctl_queue_report(ctl, is_flush ? "flush" : "retry", a.qid, count,
                            is_flush || a.is_all);
}

int ctl_queue_retry(struct ctl *ctl, int argc, char **argv)
{
    return ctl_queue_retry_common(ctl, "retry", argc, argv, false);
}

int ctl_queue_flush(struct ctl *ctl, int argc, char **argv)
{
    return ctl_queue_retry_common(ctl, "flush", argc, argv, true);
}

static int ctl_queue_change(struct ctl *ctl, const char *name, int argc, char **argv)
{
    struct ctl_queue_args a;
    int rc = ctl_queue_parse(ctl, name, argc, argv, true, &a);
    if (rc != CTL_EXIT_OK)
        return rc < 0 ? CTL_EXIT_OK : rc;
    struct queue_store *s = NULL;
    if ((rc = ctl_queue_prepare(ctl, &s)) != CTL_EXIT_OK)
        return rc;
    int status;
    if (strcmp(name, "delete") == 0)
        status = queue_store_delete(s, a.qid);
    else
        status = queue_store_hold(s, a.qid, strcmp(name, "hold") == 0);
    queue_store_close(s);
    if (status < 0)
        return ctl_queue_status_exit(ctl, status, a.qid);
    return ctl_queue_report(ctl, name, a.qid, 0, false);
}

int ctl_queue_hold(struct ctl *ctl, int argc, char **argv)
{
    return ctl_queue_change(ctl, "hold", argc, argv);
}

int ctl_queue_release(struct ctl *ctl, int argc, char **argv)
{
    return ctl_queue_change(ctl, "release", argc, argv);
}

int ctl_queue_delete(struct ctl *ctl, int argc, char **argv)
{
    return ctl_queue_change(ctl, "delete", argc, argv);
}

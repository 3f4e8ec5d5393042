/* ctl_account.c — what each account may send: `user set` (and the same
 * options on `user add`), `quota show|set|reset`, and the policy part of
 * `user show`. Every change is one UPDATE on the database the daemon reads
 * at AUTH and again inside each commit, so it applies to the next
 * transaction without a restart. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/policy.h"
#include "auth/store.h"
#include "cmd/ctl.h"
#include "core/log.h"

/* The options, shared by user add / user set / quota set. */
enum {
    OPT_SENDERS = 0x200, OPT_NETWORKS, OPT_OWNER, OPT_HEADER_FROM, OPT_MAX_SIZE, OPT_MAX_RCPTS,
    OPT_MSGS_HOUR, OPT_MSGS_DAY, OPT_RCPTS_DAY, OPT_BYTES_DAY,
};

static const struct option ctl_policy_options[] = {
    {"senders", required_argument, NULL, OPT_SENDERS},
    {"networks", required_argument, NULL, OPT_NETWORKS},
    {"owner", required_argument, NULL, OPT_OWNER},
    {"check-header-from", required_argument, NULL, OPT_HEADER_FROM},
    {"max-size", required_argument, NULL, OPT_MAX_SIZE},
    {"max-rcpts", required_argument, NULL, OPT_MAX_RCPTS},
    {"msgs-per-hour", required_argument, NULL, OPT_MSGS_HOUR},
    {"msgs-per-day", required_argument, NULL, OPT_MSGS_DAY},
    {"rcpts-per-day", required_argument, NULL, OPT_RCPTS_DAY},
    {"bytes-per-day", required_argument, NULL, OPT_BYTES_DAY},
};
#define CTL_POLICY_OPTION_COUNT (sizeof(ctl_policy_options) / sizeof(ctl_policy_options[0]))

static const char *ctl_policy_column(int opt)
{
    switch (opt) {
    case OPT_SENDERS: return "senders";
    case OPT_NETWORKS: return "networks";
    case OPT_OWNER: return "owner";
    case OPT_HEADER_FROM: return "check_header_from";
    case OPT_MAX_SIZE: return "max_size";
    case OPT_MAX_RCPTS: return "max_rcpts";
    case OPT_MSGS_HOUR: return "msgs_per_hour";
    case OPT_MSGS_DAY: return "msgs_per_day";
    case OPT_RCPTS_DAY: return "rcpts_per_day";
    case OPT_BYTES_DAY: return "bytes_per_day";
    }
    return NULL;
}

void ctl_policy_usage(FILE *fp)
{
    fprintf(fp,
            "\nPolicy options (also on user add):\n"
            "  --senders LIST           allowed envelope senders: address, @domain or *@domain,\n"
            "                           comma-separated; \"\" = any\n"
            "  --check-header-from yes|no  the header From must match the same list\n"
            "  --networks LIST          client networks allowed to log in (CIDR); \"\" = any\n"
            "  --owner ADDRESS          bounces for this account's mail go here; \"\" = none\n"
            "  --max-size SIZE          largest message (10M); \"default\" = [limits]\n"
            "  --max-rcpts N            recipients per message; \"default\" = [limits]\n"
            "  --msgs-per-hour N        quotas: 0 = unlimited, \"default\" = [accounts]\n"
            "  --msgs-per-day N\n"
            "  --rcpts-per-day N\n"
            "  --bytes-per-day SIZE\n");
}


/* Take the policy options out of argv (so the command's own parser never
 * sees them): argv is compacted in place and *argc updated. Returns
 * CTL_EXIT_OK or CTL_EXIT_USAGE. */
int ctl_policy_extract(struct ctl *ctl, int *argc, char **argv, struct ctl_policy_changes *out)
{
    memset(out, 0, sizeof(*out));
    int w = 1;
    for (int i = 1; i < *argc; i++) {
        const char *a = argv[i];
        const struct option *hit = NULL;
        const char *value = NULL;
        if (strncmp(a, "--", 2) == 0) {
            for (size_t k = 0; k < CTL_POLICY_OPTION_COUNT; k++) {
                size_t n = strlen(ctl_policy_options[k].name);
                if (strncmp(a + 2, ctl_policy_options[k].name, n) == 0 &&
                    (a[2 + n] == '\0' || a[2 + n] == '=')) {
                    hit = &ctl_policy_options[k];
                    value = a[2 + n] == '=' ? a + 3 + n : NULL;
                }
            }
        }
        if (hit == NULL) {
            argv[w++] = argv[i];
            continue;
        }
        if (value == NULL) {
            if (i + 1 >= *argc) {
                ctl_error(ctl, "option '--%s' needs a value", hit->name);
                return CTL_EXIT_USAGE;
            }
            value = argv[++i];
        }
        if (out->count == CTL_POLICY_MAX_CHANGES) {
            ctl_error(ctl, "too many options");
            return CTL_EXIT_USAGE;
        }
        out->items[out->count++] = (struct ctl_policy_change){hit->val, value};
    }
    *argc = w;
    argv[w] = NULL;
    return CTL_EXIT_OK;
}

/* A number option: "default" → -1, else a non-negative number (sizes with
 * k/M/G for the byte ones). */
static int ctl_policy_number(struct ctl *ctl, int opt, const char *value, int64_t *out)
{
    if (strcmp(value, "default") == 0) {
        *out = POLICY_UNSET;
        return 0;
    }
    if (opt == OPT_HEADER_FROM) {
        bool b;
        if (config_parse_bool(value, &b) < 0) {
            ctl_error(ctl, "--check-header-from: expected yes or no, got \"%s\"", value);
            return -1;
        }
        *out = b ? 1 : 0;
        return 0;
    }
    uint64_t v;
    bool is_size = opt == OPT_MAX_SIZE || opt == OPT_BYTES_DAY;
    if (value[0] == '-' || (is_size ? config_parse_size(value, &v) : config_parse_size(value, &v)) < 0 ||
        (!is_size && strspn(value, "0123456789") != strlen(value)) || v > (uint64_t)INT64_MAX) {
        ctl_error(ctl, "--%s: expected %s or \"default\", got \"%s\"",
                  ctl_policy_options[opt - OPT_SENDERS].name,
                  is_size ? "a size (10M, 500k, bytes)" : "a number (0 = unlimited)", value);
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

int ctl_policy_validate(struct ctl *ctl, const struct ctl_policy_changes *ch, int64_t *nums)
{
    for (size_t i = 0; i < ch->count; i++) {
        const struct ctl_policy_change *c = &ch->items[i];
        char why[256];
        if (c->opt == OPT_SENDERS && policy_check_senders(c->value, why, sizeof(why)) < 0) {
            ctl_error(ctl, "--senders: %s", why);
            return CTL_EXIT_USAGE;
        }
        if (c->opt == OPT_NETWORKS && policy_check_networks(c->value, why, sizeof(why)) < 0) {
            ctl_error(ctl, "--networks: %s", why);
            return CTL_EXIT_USAGE;
        }
        if (c->opt == OPT_OWNER && c->value[0] != '\0' &&
            policy_check_senders(c->value, why, sizeof(why)) < 0) {
            ctl_error(ctl, "--owner: \"%s\" is not an address", c->value);
            return CTL_EXIT_USAGE;
        }
        if (c->opt == OPT_OWNER && (c->value[0] == '@' || c->value[0] == '*' ||
                                    strchr(c->value, ',') != NULL)) {
            ctl_error(ctl, "--owner: one address, not a pattern or a list");
            return CTL_EXIT_USAGE;
        }
        if (c->opt >= OPT_HEADER_FROM && ctl_policy_number(ctl, c->opt, c->value, &nums[i]) < 0)
            return CTL_EXIT_USAGE;
    }
    return CTL_EXIT_OK;
}

int ctl_policy_apply(struct ctl *ctl, struct store *st, const char *name,
                     const struct ctl_policy_changes *ch)
{
    /* validate everything first: nothing half-applied on bad input */
    int64_t nums[CTL_POLICY_MAX_CHANGES];
    int rc = ctl_policy_validate(ctl, ch, nums);
    if (rc != CTL_EXIT_OK)
        return rc;
    char actor[256];
    ctl_actor(actor, sizeof(actor));
    for (size_t i = 0; i < ch->count; i++) {
        const struct ctl_policy_change *c = &ch->items[i];
        const char *column = ctl_policy_column(c->opt);
        int status = c->opt < OPT_HEADER_FROM ? store_policy_set_text(st, name, column, c->value)
                                              : store_policy_set_number(st, name, column, nums[i]);
        if (status == STORE_NOT_FOUND) {
            ctl_error(ctl, "no account named %s", name);
            return CTL_EXIT_NOT_FOUND;
        }
        if (status != STORE_OK) {
            ctl_error(ctl, "cannot change %s of %s: %s", column, name, store_errmsg(st));
            return CTL_EXIT_RUNTIME;
        }
        char esc[300];
        log_escape(c->value, strlen(c->value), esc, sizeof(esc));
        log_info(NULL, "user set name=%s %s=\"%s\" by=%s", name, column, esc, actor);
    }
    return CTL_EXIT_OK;
}

/* ---- showing -------------------------------------------------------------- */

static struct policy_defaults ctl_policy_defaults(const struct ctl *ctl)
{
    const struct config *c = ctl->cfg;
    return (struct policy_defaults){
        .max_size = c->max_message_size,
        .max_rcpts = c->max_recipients,
        .msgs_per_hour = c->acct_msgs_per_hour,
        .msgs_per_day = c->acct_msgs_per_day,
        .rcpts_per_day = c->acct_rcpts_per_day,
        .bytes_per_day = c->acct_bytes_per_day,
    };
}

static void ctl_limit_text(uint64_t v, char *out, size_t size)
{
    if (v == 0)
        snprintf(out, size, "unlimited");
    else
        snprintf(out, size, "%" PRIu64, v);
}

/* The policy and usage of one account: JSON object, or lines on stdout. */
int ctl_policy_show(struct ctl *ctl, struct store *st, const char *name, json_t *into)
{
    struct account_policy p;
    int status = store_policy_load(st, name, &p);
    if (status == STORE_NOT_FOUND) {
        ctl_error(ctl, "no account named %s", name);
        return CTL_EXIT_NOT_FOUND;
    }
    if (status != STORE_OK) {
        ctl_error(ctl, "cannot read the account %s: %s", name, store_errmsg(st));
        return CTL_EXIT_RUNTIME;
    }
    int64_t now = (int64_t)time(NULL);
    struct store_usage hour, day;
    if (store_usage_get(st, name, now, &hour, &day) != STORE_OK) {
        ctl_error(ctl, "cannot read the usage of %s: %s", name, store_errmsg(st));
        return CTL_EXIT_RUNTIME;
    }
    struct policy_defaults d = ctl_policy_defaults(ctl);
    uint64_t used[POLICY_FIELD_COUNT] = {0, 0, hour.msgs, day.msgs, day.rcpts, day.bytes};
    if (into != NULL) {
        json_object_set_new(into, "senders", ctl_json_text(p.senders));
        json_object_set_new(into, "check_header_from", json_boolean(p.is_header_from_checked));
        json_object_set_new(into, "networks", ctl_json_text(p.networks));
        json_object_set_new(into, "owner", ctl_json_text(p.owner));
        json_t *limits = json_object();
        for (int f = 0; f < POLICY_FIELD_COUNT; f++) {
            json_t *l = json_object();
            int64_t own = policy_value(&p, (enum policy_field)f);
            json_object_set_new(l, "limit", json_integer((json_int_t)policy_effective(&p, &d, f)));
            json_object_set_new(l, "is_default", json_boolean(own < 0));
            if (f >= POLICY_MSGS_PER_HOUR)
                json_object_set_new(l, "used", json_integer((json_int_t)used[f]));
            json_object_set_new(limits, policy_field_name((enum policy_field)f), l);
        }
        json_object_set_new(into, "limits", limits);
        json_object_set_new(into, "hour_resets_at", json_integer(hour.period_start + 3600));
        json_object_set_new(into, "day_resets_at", json_integer(day.period_start + 86400));
        return CTL_EXIT_OK;
    }
    printf("Senders:           %s\n", p.senders[0] ? p.senders : "any");
    printf("Header From:       %s\n", p.is_header_from_checked ? "must match the senders" : "not checked");
    printf("Networks:          %s\n", p.networks[0] ? p.networks : "any");
    printf("Owner:             %s\n", p.owner[0] ? p.owner : "-");
    for (int f = 0; f < POLICY_FIELD_COUNT; f++) {
        char lim[32];
        ctl_limit_text(policy_effective(&p, &d, f), lim, sizeof(lim));
        const char *src = policy_value(&p, (enum policy_field)f) < 0 ? " (default)" : "";
        if (f >= POLICY_MSGS_PER_HOUR)
            printf("%-18s %" PRIu64 " used of %s%s\n", policy_field_name((enum policy_field)f),
                   used[f], lim, src);
        else
            printf("%-18s %s%s\n", policy_field_name((enum policy_field)f), lim, src);
    }
    char when[64];
    ctl_format_time(hour.period_start + 3600, when, sizeof(when));
    printf("Hourly reset:      %s\n", when);
    ctl_format_time(day.period_start + 86400, when, sizeof(when));
    printf("Daily reset:       %s\n", when);
    return CTL_EXIT_OK;
}

/* "3/100" for the list: messages today against the daily quota. */
void ctl_policy_today(struct ctl *ctl, struct store *st, const char *name, char *out,
                      size_t size, json_t *into)
{
    struct account_policy p;
    struct store_usage hour, day;
    snprintf(out, size, "-");
    if (store_policy_load(st, name, &p) != STORE_OK ||
        store_usage_get(st, name, (int64_t)time(NULL), &hour, &day) != STORE_OK)
        return;
    struct policy_defaults d = ctl_policy_defaults(ctl);
    uint64_t lim = policy_effective(&p, &d, POLICY_MSGS_PER_DAY);
    char l[32];
    ctl_limit_text(lim, l, sizeof(l));
    snprintf(out, size, "%" PRIu64 "/%s", day.msgs, lim ? l : "-");
    if (into != NULL) {
        json_object_set_new(into, "msgs_today", json_integer((json_int_t)day.msgs));
        json_object_set_new(into, "msgs_per_day", json_integer((json_int_t)lim));
        json_object_set_new(into, "msgs_this_hour", json_integer((json_int_t)hour.msgs));
        json_object_set_new(into, "msgs_per_hour",
                            json_integer((json_int_t)policy_effective(&p, &d, POLICY_MSGS_PER_HOUR)));
    }
}

/* ---- commands -------------------------------------------------------------- */

/* The common shape: [options] NAME, own parsing after the policy options
 * were taken out. */
static int ctl_account_args(struct ctl *ctl, const char *group, const char *name, int *argc,
                            char **argv, struct ctl_policy_changes *ch, const char **user,
                            const char **period)
{
    int rc = ctl_policy_extract(ctl, argc, argv, ch);
    if (rc != CTL_EXIT_OK)
        return rc;
    enum { O_JSON = 0x100, O_HOUR, O_DAY };
    const struct option options[] = {
        {"json", no_argument, NULL, O_JSON}, {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},    {"hour", no_argument, NULL, O_HOUR},
        {"day", no_argument, NULL, O_DAY},   {NULL, 0, NULL, 0},
    };
    optind = 0;
    opterr = 0;
    int opt;
    while ((opt = getopt_long(*argc, argv, ":c:h", options, NULL)) != -1) {
        switch (opt) {
        case O_JSON: ctl->is_json = true; break;
        case 'c':
            ctl->config_path = optarg;
            ctl->is_config_explicit = true;
            break;
        case 'h':
            ctl_command_usage(ctl_find(group, name), stdout);
            if (strcmp(name, "reset") != 0 && strcmp(name, "show") != 0)
                ctl_policy_usage(stdout);
            return -1;
        case O_HOUR:
        case O_DAY:
            if (period == NULL)
                goto unknown;
            *period = opt == O_HOUR ? "hour" : "day";
            break;
        default:
        unknown:
            ctl_error(ctl, "unknown option '%s' (see --help)", argv[optind - 1]);
            return CTL_EXIT_USAGE;
        }
    }
    if (optind >= *argc) {
        ctl_error(ctl, "missing NAME (see --help)");
        return CTL_EXIT_USAGE;
    }
    if (optind + 1 < *argc) {
        ctl_error(ctl, "unexpected argument '%s' (see --help)", argv[optind + 1]);
        return CTL_EXIT_USAGE;
    }
    *user = argv[optind];
    if (!store_name_is_valid(*user)) {
        ctl_error(ctl, "\"%s\" is not a valid account name", *user);
        return CTL_EXIT_USAGE;
    }
    return CTL_EXIT_OK;
}

int ctl_open_store_public(struct ctl *ctl, struct store **st);

static int ctl_set_common(struct ctl *ctl, const char *group, const char *name, int argc,
                          char **argv, bool only_quotas)
{
    struct ctl_policy_changes ch;
    const char *user = NULL;
    int rc = ctl_account_args(ctl, group, name, &argc, argv, &ch, &user, NULL);
    if (rc != CTL_EXIT_OK)
        return rc < 0 ? CTL_EXIT_OK : rc;
    if (ch.count == 0) {
        ctl_error(ctl, "nothing to change (see --help)");
        return CTL_EXIT_USAGE;
    }
    for (size_t i = 0; only_quotas && i < ch.count; i++)
        if (ch.items[i].opt < OPT_MAX_SIZE) {
            ctl_error(ctl, "quota set changes limits only; use user set for senders, networks, owner");
            return CTL_EXIT_USAGE;
        }
    struct store *st = NULL;
    if ((rc = ctl_open_store_public(ctl, &st)) != CTL_EXIT_OK)
        return rc;
    rc = ctl_policy_apply(ctl, st, user, &ch);
    if (rc == CTL_EXIT_OK) {
        if (ctl->is_json) {
            json_t *o = json_object();
            json_object_set_new(o, "name", json_string(user));
            rc = ctl_policy_show(ctl, st, user, o);
            ctl_json_print(o);
        } else {
            printf("%s updated\n", user);
        }
    }
    store_close(st);
    return rc;
}

int ctl_user_set(struct ctl *ctl, int argc, char **argv)
{
    return ctl_set_common(ctl, "user", "set", argc, argv, false);
}

int ctl_quota_set(struct ctl *ctl, int argc, char **argv)
{
    return ctl_set_common(ctl, "quota", "set", argc, argv, true);
}

int ctl_quota_show(struct ctl *ctl, int argc, char **argv)
{
    struct ctl_policy_changes ch;
    const char *user = NULL;
    int rc = ctl_account_args(ctl, "quota", "show", &argc, argv, &ch, &user, NULL);
    if (rc != CTL_EXIT_OK)
        return rc < 0 ? CTL_EXIT_OK : rc;
    if (ch.count > 0) {
        ctl_error(ctl, "quota show takes no policy options (see quota set)");
        return CTL_EXIT_USAGE;
    }
    struct store *st = NULL;
    if ((rc = ctl_open_store_public(ctl, &st)) != CTL_EXIT_OK)
        return rc;
    if (ctl->is_json) {
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(user));
        rc = ctl_policy_show(ctl, st, user, o);
        if (rc == CTL_EXIT_OK)
            ctl_json_print(o);
        else
            json_decref(o);
    } else {
        printf("Name:              %s\n", user);
        rc = ctl_policy_show(ctl, st, user, NULL);
    }
    store_close(st);
    return rc;
}

int ctl_quota_reset(struct ctl *ctl, int argc, char **argv)
{
    struct ctl_policy_changes ch;
    const char *user = NULL, *period = NULL;
    int rc = ctl_account_args(ctl, "quota", "reset", &argc, argv, &ch, &user, &period);
    if (rc != CTL_EXIT_OK)
        return rc < 0 ? CTL_EXIT_OK : rc;
    struct store *st = NULL;
    if ((rc = ctl_open_store_public(ctl, &st)) != CTL_EXIT_OK)
        return rc;
    struct account_policy p;
    int status = store_policy_load(st, user, &p);
    if (status == STORE_OK)
        status = store_usage_reset(st, user, period);
    if (status == STORE_NOT_FOUND) {
        ctl_error(ctl, "no account named %s", user);
        rc = CTL_EXIT_NOT_FOUND;
    } else if (status != STORE_OK) {
        ctl_error(ctl, "cannot reset the usage of %s: %s", user, store_errmsg(st));
        rc = CTL_EXIT_RUNTIME;
    } else {
        char actor[256];
        ctl_actor(actor, sizeof(actor));
        log_info(NULL, "quota reset name=%s period=%s by=%s", user, period ? period : "all", actor);
        if (ctl->is_json)
            ctl_json_print(json_pack("{s:s,s:s}", "name", user, "reset", period ? period : "all"));
        else
            printf("%s: %s usage reset\n", user, period ? period : "hourly and daily");
    }
    store_close(st);
    return rc;
}

/* ---- AUTH lockouts (in the daemon's memory: asked over the control socket) ---- */

#include "core/control.h"

static int ctl_auth_request(struct ctl *ctl, const char *command, char *reply, size_t size)
{
    int rc = ctl_load_config(ctl);
    if (rc != CTL_EXIT_OK)
        return rc;
    int err = control_request(ctl->cfg->relay_control_socket, command, reply, size, 5000);
    if (err < 0) {
        ctl_error(ctl, "smarthostd is not answering on %s (%s): lockouts live in the running "
                       "daemon's memory",
                  ctl->cfg->relay_control_socket, strerror(-err));
        return CTL_EXIT_RUNTIME;
    }
    if (strncmp(reply, "ok", 2) != 0) {
        ctl_error(ctl, "smarthostd said: %s", reply);
        return CTL_EXIT_RUNTIME;
    }
    return CTL_EXIT_OK;
}

static int ctl_auth_args(struct ctl *ctl, const char *name, int argc, char **argv, int want,
                         const char **arg)
{
    const struct option options[] = {
        {"json", no_argument, NULL, 'j'}, {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0},
    };
    optind = 0;
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, ":c:h", options, NULL)) != -1) {
        switch (opt) {
        case 'j': ctl->is_json = true; break;
        case 'c':
            ctl->config_path = optarg;
            ctl->is_config_explicit = true;
            break;
        case 'h': ctl_command_usage(ctl_find("auth", name), stdout); return -1;
        default: ctl_error(ctl, "unknown option '%s' (see --help)", argv[optind - 1]); return CTL_EXIT_USAGE;
        }
    }
    if (argc - optind != want) {
        ctl_error(ctl, want ? "expected one address or account name (see --help)"
                            : "unexpected argument (see --help)");
        return CTL_EXIT_USAGE;
    }
    if (want)
        *arg = argv[optind];
    return CTL_EXIT_OK;
}

int ctl_auth_lockouts(struct ctl *ctl, int argc, char **argv)
{
    int rc = ctl_auth_args(ctl, "lockouts", argc, argv, 0, NULL);
    if (rc != CTL_EXIT_OK)
        return rc < 0 ? CTL_EXIT_OK : rc;
    char *reply = malloc(CONTROL_REPLY_MAX);
    if (reply == NULL)
        return CTL_EXIT_RUNTIME;
    rc = ctl_auth_request(ctl, "lockouts", reply, CONTROL_REPLY_MAX);
    if (rc == CTL_EXIT_OK) {
        json_error_t jerr;
        json_t *list = json_loads(reply + 3, 0, &jerr);
        if (!json_is_array(list)) {
            ctl_error(ctl, "unreadable answer from smarthostd");
            rc = CTL_EXIT_RUNTIME;
        } else if (ctl->is_json) {
            ctl_json_print(json_incref(list));
        } else {
            printf("%-8s %-40s %10s %8s\n", "KIND", "WHAT", "LEFT", "FAILURES");
            size_t i;
            json_t *e;
            json_array_foreach(list, i, e) {
                char left[32];
                ctl_format_age(json_integer_value(json_object_get(e, "left_s")), left, sizeof(left));
                printf("%-8s %-40s %10s %8lld\n", json_string_value(json_object_get(e, "kind")),
                       json_string_value(json_object_get(e, "what")), left,
                       (long long)json_integer_value(json_object_get(e, "failures")));
            }
            printf("%zu lockout%s\n", json_array_size(list), json_array_size(list) == 1 ? "" : "s");
        }
        json_decref(list);
    }
    free(reply);
    return rc;
}

int ctl_auth_unlock(struct ctl *ctl, int argc, char **argv)
{
    const char *what = NULL;
    int rc = ctl_auth_args(ctl, "unlock", argc, argv, 1, &what);
    if (rc != CTL_EXIT_OK)
        return rc < 0 ? CTL_EXIT_OK : rc;
    if (strlen(what) > 255 || strpbrk(what, " \t\r\n") != NULL) {
        ctl_error(ctl, "\"%s\" is not an address or an account name", what);
        return CTL_EXIT_USAGE;
    }
    char command[300], reply[CONTROL_LINE_MAX];
    snprintf(command, sizeof(command), "unlock %s", what);
    if ((rc = ctl_auth_request(ctl, command, reply, sizeof(reply))) != CTL_EXIT_OK)
        return rc;
    bool found = strcmp(reply, "ok unlocked") == 0;
    char actor[256];
    ctl_actor(actor, sizeof(actor));
    log_info(NULL, "auth unlock what=%s by=%s result=%s", what, actor, found ? "unlocked" : "none");
    if (ctl->is_json)
        ctl_json_print(json_pack("{s:s,s:b}", "unlock", what, "found", found));
    else
        printf(found ? "%s: unlocked\n" : "%s: no lockout or failures recorded\n", what);
    return found ? CTL_EXIT_OK : CTL_EXIT_NOT_FOUND;
}

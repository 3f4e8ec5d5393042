/* smarthostctl.c — the admin CLI: accounts (user add|del|passwd|enable|
 * disable|show|list), the queue (cmd/ctl_queue.c) and `config check|defaults`.
 * Contract: human tables on stdout by default, JSON with --json; errors on
 * stderr as "smarthostctl: <what>: <reason>"; exit 0 ok, 1 runtime error,
 * 2 usage, 3 not found, 4 already exists. Passwords come from a no-echo
 * prompt, stdin (--password-stdin) or --generate, never from argv, and are
 * wiped after use; each change is logged (syslog) with who made it. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "auth/password.h"
#include "auth/store.h"
#include "core/config.h"
#include "core/log.h"
#include "core/queue.h"
#include "cmd/ctl.h"

static int ctl_user_add(struct ctl *ctl, int argc, char **argv);
static int ctl_user_del(struct ctl *ctl, int argc, char **argv);
static int ctl_user_passwd(struct ctl *ctl, int argc, char **argv);
static int ctl_user_enable(struct ctl *ctl, int argc, char **argv);
static int ctl_user_disable(struct ctl *ctl, int argc, char **argv);
static int ctl_user_show(struct ctl *ctl, int argc, char **argv);
static int ctl_user_list(struct ctl *ctl, int argc, char **argv);
static int ctl_config_check(struct ctl *ctl, int argc, char **argv);
static int ctl_config_defaults(struct ctl *ctl, int argc, char **argv);
static int ctl_db_migrate(struct ctl *ctl, int argc, char **argv);

static const struct ctl_command ctl_commands[] = {
    {"user", "add", "NAME [--password-stdin | --generate] [--description TEXT] [policy options]",
     "create an account (asks for the password twice unless told otherwise)", ctl_user_add},
    {"user", "del", "NAME", "delete an account", ctl_user_del},
    {"user", "passwd", "NAME [--password-stdin | --generate]", "set a new password",
     ctl_user_passwd},
    {"user", "enable", "NAME", "allow the account to authenticate again", ctl_user_enable},
    {"user", "disable", "NAME", "refuse authentication for the account", ctl_user_disable},
    {"user", "set", "NAME [policy options]",
     "change what an account may send: senders, networks, owner, limits, quotas", ctl_user_set},
    {"user", "show", "NAME", "show one account, its policy and its usage", ctl_user_show},
    {"user", "list", "", "list all accounts with today's messages against the daily quota",
     ctl_user_list},
    {"quota", "show", "NAME", "limits in force and what was used this hour and today",
     ctl_quota_show},
    {"quota", "set", "NAME [--msgs-per-hour N] [--msgs-per-day N] ...",
     "change an account's limits (\"default\" = the configured default)", ctl_quota_set},
    {"quota", "reset", "NAME [--hour | --day]", "forget an account's usage counters",
     ctl_quota_reset},
    {"auth", "lockouts", "", "client addresses and accounts locked out after failed AUTH",
     ctl_auth_lockouts},
    {"auth", "unlock", "ADDRESS|NAME", "lift a lockout now and forget the failures",
     ctl_auth_unlock},
    {"queue", "list", "", "list messages: age, sender, recipients, state, next attempt, last error",
     ctl_queue_list},
    {"queue", "show", "QID", "one message: envelope, each recipient's state, every attempt",
     ctl_queue_show},
    {"queue", "retry", "QID | --all", "try again now (the running daemon is told at once)",
     ctl_queue_retry},
    {"queue", "flush", "", "try every waiting message now (same as retry --all)", ctl_queue_flush},
    {"queue", "hold", "QID", "keep a message from being delivered until released", ctl_queue_hold},
    {"queue", "release", "QID", "deliver a held message again", ctl_queue_release},
    {"queue", "delete", "QID", "remove a message for good, without a bounce", ctl_queue_delete},
    {"config", "check", "", "check the configuration file", ctl_config_check},
    {"config", "defaults", "", "print a configuration file with every key at its default",
     ctl_config_defaults},
    {"db", "migrate", "", "create the database, or bring it to this version's schema",
     ctl_db_migrate},
};
#define CTL_COMMAND_COUNT (sizeof(ctl_commands) / sizeof(ctl_commands[0]))

const struct ctl_command *ctl_find(const char *group, const char *name)
{
    for (size_t i = 0; i < CTL_COMMAND_COUNT; i++) {
        if (strcmp(ctl_commands[i].group, group) == 0 && strcmp(ctl_commands[i].name, name) == 0)
            return &ctl_commands[i];
    }
    return NULL;
}

/* ---- output helpers ----------------------------------------------------- */

void ctl_error(const struct ctl *ctl, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (ctl->what != NULL)
        fprintf(stderr, "smarthostctl: %s: %s\n", ctl->what, msg);
    else
        fprintf(stderr, "smarthostctl: %s\n", msg);
}

static void ctl_usage(FILE *fp)
{
    fprintf(fp, "Usage: smarthostctl [-c FILE] [--json] COMMAND [ARGS]\n"
                "\n"
                "Manage smarthost accounts, look at its queue and check its configuration.\n"
                "\n"
                "Options:\n"
                "  -c, --config FILE  configuration file (default " CTL_DEFAULT_CONFIG ")\n"
                "      --json         machine-readable output\n"
                "  -h, --help         this help; COMMAND --help for one command\n"
                "\n"
                "Commands:\n");
    for (size_t i = 0; i < CTL_COMMAND_COUNT; i++) {
        const struct ctl_command *c = &ctl_commands[i];
        char synopsis[128];
        snprintf(synopsis, sizeof(synopsis), "%s %s %s", c->group, c->name, c->args);
        fprintf(fp, "  %s\n      %s\n", synopsis, c->doc);
    }
    fprintf(fp, "\nExit status: 0 ok, 1 runtime error, 2 usage error, 3 not found, "
                "4 already exists.\n");
}

void ctl_command_usage(const struct ctl_command *c, FILE *fp)
{
    fprintf(fp, "Usage: smarthostctl [-c FILE] [--json] %s %s %s\n\n%c%s.\n", c->group, c->name,
            c->args, c->doc[0] >= 'a' && c->doc[0] <= 'z' ? c->doc[0] - 'a' + 'A' : c->doc[0],
            c->doc + 1);
    if (strcmp(c->name, "add") == 0 || strcmp(c->name, "passwd") == 0) {
        fprintf(fp, "\n"
                    "  --password-stdin    read the password from the first line of stdin\n"
                    "  --generate          generate a %d-character password and print it once,\n"
                    "                      with the settings to enter on the device\n",
                CTL_GENERATED_LEN);
        if (strcmp(c->name, "add") == 0)
            fprintf(fp, "  --description TEXT  a note for admins (at most %d bytes)\n",
                    STORE_DESCRIPTION_MAX);
    }
}

/* A JSON string from text that may not be valid UTF-8 (queue data from
 * clients): escaped as in log lines when jansson refuses it. */
json_t *ctl_json_text(const char *s)
{
    json_t *j = json_string(s);
    if (j == NULL) {
        char esc[1024];
        log_escape(s, strlen(s), esc, sizeof(esc));
        j = json_string(esc);
    }
    return j;
}

/* Print one JSON value on its own line (and free it). */
int ctl_json_print(json_t *j)
{
    if (j == NULL)
        return -1;
    int rc = json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(j);
    fputc('\n', stdout);
    return rc;
}

void ctl_format_time(int64_t t, char *out, size_t out_size)
{
    if (t <= 0) {
        snprintf(out, out_size, "-");
        return;
    }
    time_t tt = (time_t)t;
    struct tm tm;
    if (localtime_r(&tt, &tm) == NULL || strftime(out, out_size, "%Y-%m-%d %H:%M:%S %z", &tm) == 0)
        snprintf(out, out_size, "%lld", (long long)t);
}

void ctl_format_age(int64_t seconds, char *out, size_t out_size)
{
    if (seconds < 0)
        seconds = 0;
    if (seconds < 60)
        snprintf(out, out_size, "%llds", (long long)seconds);
    else if (seconds < 3600)
        snprintf(out, out_size, "%lldm", (long long)(seconds / 60));
    else if (seconds < 86400)
        snprintf(out, out_size, "%lldh", (long long)(seconds / 3600));
    else
        snprintf(out, out_size, "%lldd", (long long)(seconds / 86400));
}

/* "root" (or the uid), plus the sudo caller when there is one. */
void ctl_actor(char *out, size_t out_size)
{
    struct passwd *pw = getpwuid(getuid());
    char sudo[128] = "";
    const char *sudo_user = getenv("SUDO_USER");
    if (sudo_user != NULL && sudo_user[0] != '\0') {
        char esc[96];
        log_escape(sudo_user, strlen(sudo_user), esc, sizeof(esc));
        snprintf(sudo, sizeof(sudo), " sudo_user=%s", esc);
    }
    if (pw != NULL)
        snprintf(out, out_size, "%s%s", pw->pw_name, sudo);
    else
        snprintf(out, out_size, "%u%s", (unsigned)getuid(), sudo);
}

/* ---- arguments ---------------------------------------------------------- */

struct ctl_args {
    const char *positional[4];
    int positional_count;
    bool has_password_stdin, has_generate;
    const char *description;
};

enum {
    CTL_OPT_JSON = 0x100,
    CTL_OPT_PASSWORD_STDIN,
    CTL_OPT_GENERATE,
    CTL_OPT_DESCRIPTION,
};

/* Parse a command's own arguments (argv[0] is the command name). The
 * global options are accepted here too ("queue list --json"). Returns
 * CTL_EXIT_OK, CTL_EXIT_USAGE, or -1 when --help was printed. */
static int ctl_parse_args(struct ctl *ctl, const struct ctl_command *c, int argc, char **argv,
                          struct ctl_args *a)
{
    bool takes_password = strcmp(c->name, "add") == 0 || strcmp(c->name, "passwd") == 0;
    bool takes_description = strcmp(c->name, "add") == 0;
    const struct option options[] = {
        {"json", no_argument, NULL, CTL_OPT_JSON},
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {"password-stdin", no_argument, NULL, CTL_OPT_PASSWORD_STDIN},
        {"generate", no_argument, NULL, CTL_OPT_GENERATE},
        {"description", required_argument, NULL, CTL_OPT_DESCRIPTION},
        {NULL, 0, NULL, 0},
    };
    memset(a, 0, sizeof(*a));
    optind = 0; /* GNU: start over, argv[0] being the command name */
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, ":c:h", options, NULL)) != -1) {
        switch (opt) {
        case CTL_OPT_JSON:
            ctl->is_json = true;
            break;
        case 'c':
            ctl->config_path = optarg;
            ctl->is_config_explicit = true;
            break;
        case 'h':
            ctl_command_usage(c, stdout);
            return -1;
        case CTL_OPT_PASSWORD_STDIN:
            if (!takes_password)
                goto unknown;
            a->has_password_stdin = true;
            break;
        case CTL_OPT_GENERATE:
            if (!takes_password)
                goto unknown;
            a->has_generate = true;
            break;
        case CTL_OPT_DESCRIPTION:
            if (!takes_description)
                goto unknown;
            a->description = optarg;
            break;
        case ':':
            ctl_error(ctl, "option '%s' needs a value", argv[optind - 1]);
            return CTL_EXIT_USAGE;
        default:
        unknown:
            ctl_error(ctl, "unknown option '%s' (see --help)", argv[optind - 1]);
            return CTL_EXIT_USAGE;
        }
    }
    for (int i = optind; i < argc; i++) {
        if (a->positional_count == (int)(sizeof(a->positional) / sizeof(a->positional[0]))) {
            ctl_error(ctl, "too many arguments (see --help)");
            return CTL_EXIT_USAGE;
        }
        a->positional[a->positional_count++] = argv[i];
    }
    if (a->has_password_stdin && a->has_generate) {
        ctl_error(ctl, "--password-stdin and --generate exclude each other");
        return CTL_EXIT_USAGE;
    }
    return CTL_EXIT_OK;
}

/* Exactly n positional arguments, or a usage error. */
static int ctl_expect_args(struct ctl *ctl, const struct ctl_args *a, int n)
{
    if (a->positional_count < n) {
        ctl_error(ctl, "missing NAME (see --help)");
        return CTL_EXIT_USAGE;
    }
    if (a->positional_count > n) {
        ctl_error(ctl, "unexpected argument '%s' (see --help)", a->positional[n]);
        return CTL_EXIT_USAGE;
    }
    return CTL_EXIT_OK;
}

/* ctl_parse_args, then exactly n positional arguments: negative after
 * --help (the caller exits 0), else an exit code. */
static int ctl_parse_exact(struct ctl *ctl, const struct ctl_command *cmd, int argc, char **argv,
                           int n, struct ctl_args *a)
{
    int rc = ctl_parse_args(ctl, cmd, argc, argv, a);
    return rc != CTL_EXIT_OK ? rc : ctl_expect_args(ctl, a, n);
}

static int ctl_check_name(struct ctl *ctl, const char *name)
{
    if (store_name_is_valid(name))
        return CTL_EXIT_OK;
    char esc[128];
    log_escape(name, strlen(name), esc, sizeof(esc));
    ctl_error(ctl, "invalid user name '%s': 1 to %d printable characters, no spaces", esc,
              STORE_NAME_MAX);
    return CTL_EXIT_USAGE;
}

/* ---- configuration and database ----------------------------------------- */

/* The default file may be absent (then defaults apply); a file named with
 * -c must exist. */
int ctl_load_config(struct ctl *ctl)
{
    if (ctl->cfg != NULL)
        return CTL_EXIT_OK;
    if (!ctl->is_config_explicit && access(ctl->config_path, F_OK) < 0 && errno == ENOENT) {
        ctl->cfg = config_defaults();
        if (ctl->cfg == NULL) {
            ctl_error(ctl, "cannot build the default configuration");
            return CTL_EXIT_RUNTIME;
        }
        return CTL_EXIT_OK;
    }
    char err[512];
    if (config_load(ctl->config_path, &ctl->cfg, err, sizeof(err)) < 0) {
        ctl->cfg = NULL;
        ctl_error(ctl, "%s", err);
        return CTL_EXIT_RUNTIME;
    }
    return CTL_EXIT_OK;
}

unsigned ctl_busy_ms(const struct ctl *ctl)
{
    uint64_t ms = ctl->cfg->queue_busy_timeout_ms;
    if (ms < CTL_MIN_BUSY_MS)
        ms = CTL_MIN_BUSY_MS;
    return ms > UINT32_MAX ? UINT32_MAX : (unsigned)ms;
}

/* Run as root on a fresh install, we may be the one creating the database:
 * hand the new file to the owner of its directory (the daemon's user, as
 * packaging sets it up), or the daemon could not write it after dropping
 * privileges. SQLite gives -wal/-shm the owner of the database file. */
static void ctl_fix_new_db_owner(const char *path)
{
    if (geteuid() != 0)
        return;
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    struct stat st;
    if (stat(dir, &st) < 0 || st.st_uid == 0)
        return;
    const char *suffixes[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        char p[4200];
        snprintf(p, sizeof(p), "%s%s", path, suffixes[i]);
        if (chown(p, st.st_uid, st.st_gid) < 0 && errno != ENOENT)
            log_warn(NULL, "cannot hand the new database to its directory's owner path=%s", p);
    }
}

static int ctl_store_status_exit(int status)
{
    switch (status) {
    case STORE_OK:
        return CTL_EXIT_OK;
    case STORE_NOT_FOUND:
        return CTL_EXIT_NOT_FOUND;
    case STORE_EXISTS:
        return CTL_EXIT_EXISTS;
    case STORE_INVALID:
        return CTL_EXIT_USAGE;
    default:
        return CTL_EXIT_RUNTIME;
    }
}

static int ctl_open_store(struct ctl *ctl, struct store **st)
{
    int rc = ctl_load_config(ctl);
    if (rc != CTL_EXIT_OK)
        return rc;
    const char *path = ctl->cfg->database;
    bool existed = access(path, F_OK) == 0;
    char err[256];
    int status = store_open_err(path, ctl_busy_ms(ctl), st, err, sizeof(err));
    if (status != STORE_OK) {
        ctl_error(ctl, "cannot open the database %s: %s", path, err);
        return CTL_EXIT_RUNTIME;
    }
    if (!existed)
        ctl_fix_new_db_owner(path);
    return CTL_EXIT_OK;
}

int ctl_open_store_public(struct ctl *ctl, struct store **st)
{
    return ctl_open_store(ctl, st);
}

/* ---- passwords ------------------------------------------------------------ */

/* Read one line from fd byte by byte (nothing past the newline is
 * consumed, and no stdio buffer keeps a copy). The newline, and a CR before
 * it, are dropped. Returns 0, -1 on EOF before any byte or a read error,
 * -2 when the line is longer than out_size - 1 (the rest is discarded). */
static int ctl_read_line(int fd, char *out, size_t out_size)
{
    size_t len = 0;
    bool is_too_long = false, has_any = false;
    for (;;) {
        char c;
        ssize_t n = read(fd, &c, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        has_any = true;
        if (c == '\n')
            break;
        if (len + 1 < out_size)
            out[len++] = c;
        else
            is_too_long = true;
    }
    if (len > 0 && out[len - 1] == '\r')
        len--;
    out[len] = '\0';
    if (is_too_long) {
        explicit_bzero(out, out_size);
        return -2;
    }
    return has_any ? 0 : -1;
}

static struct termios ctl_tty_saved;
static volatile sig_atomic_t ctl_tty_fd = -1;

/* Ctrl-C at the password prompt must not leave the terminal without echo. */
static void ctl_on_signal(int sig)
{
    if (ctl_tty_fd >= 0)
        tcsetattr(ctl_tty_fd, TCSAFLUSH, &ctl_tty_saved);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Prompt on the controlling terminal with echo off. Returns 0, -1 (no
 * terminal, or EOF), -2 (too long). */
static int ctl_prompt_tty(int fd, const char *prompt, char *out, size_t out_size)
{
    struct termios quiet;
    if (tcgetattr(fd, &ctl_tty_saved) < 0)
        return -1;
    quiet = ctl_tty_saved;
    quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
    quiet.c_lflag |= ICANON;
    struct sigaction sa = {.sa_handler = ctl_on_signal};
    sigemptyset(&sa.sa_mask);
    const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
    struct sigaction old[4];
    for (size_t i = 0; i < 4; i++)
        sigaction(sigs[i], &sa, &old[i]);
    ctl_tty_fd = fd;
    if (write(fd, prompt, strlen(prompt)) < 0) {
        /* nothing useful to do: the read below reports the problem */
    }
    int rc = tcsetattr(fd, TCSAFLUSH, &quiet) < 0 ? -1 : ctl_read_line(fd, out, out_size);
    tcsetattr(fd, TCSAFLUSH, &ctl_tty_saved);
    ctl_tty_fd = -1;
    for (size_t i = 0; i < 4; i++)
        sigaction(sigs[i], &old[i], NULL);
    if (write(fd, "\n", 1) < 0) {
        /* the newline the user typed was not echoed; cosmetic only */
    }
    return rc;
}

/* Get the new password for name into out (STORE_PASSWORD_MAX + 1 bytes)
 * from the chosen source. Returns a ctl exit code. */
static int ctl_get_password(struct ctl *ctl, enum ctl_password_source source, const char *name,
                            char *out, size_t out_size)
{
    if (source == CTL_PASSWORD_GENERATE) {
        if (password_generate(out, out_size, CTL_GENERATED_LEN) < 0) {
            ctl_error(ctl, "cannot generate a password");
            return CTL_EXIT_RUNTIME;
        }
        return CTL_EXIT_OK;
    }
    int rc;
    if (source == CTL_PASSWORD_STDIN) {
        rc = ctl_read_line(STDIN_FILENO, out, out_size);
        if (rc == -1) {
            ctl_error(ctl, "no password on standard input");
            return CTL_EXIT_USAGE;
        }
    } else {
        int fd = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (fd < 0) {
            ctl_error(ctl, "no terminal to ask for the password: use --password-stdin or "
                           "--generate");
            return CTL_EXIT_USAGE;
        }
        char prompt[STORE_NAME_MAX + 32], again[STORE_PASSWORD_MAX + 1];
        snprintf(prompt, sizeof(prompt), "New password for %s: ", name);
        rc = ctl_prompt_tty(fd, prompt, out, out_size);
        if (rc == 0) {
            rc = ctl_prompt_tty(fd, "Retype the new password: ", again, sizeof(again));
            if (rc == 0 && strcmp(out, again) != 0) {
                explicit_bzero(again, sizeof(again));
                explicit_bzero(out, out_size);
                close(fd);
                ctl_error(ctl, "the passwords do not match");
                return CTL_EXIT_USAGE;
            }
            explicit_bzero(again, sizeof(again));
        }
        close(fd);
        if (rc == -1) {
            ctl_error(ctl, "no password entered");
            return CTL_EXIT_USAGE;
        }
    }
    if (rc == -2) {
        ctl_error(ctl, "the password is longer than %d bytes", STORE_PASSWORD_MAX);
        return CTL_EXIT_USAGE;
    }
    if (out[0] == '\0') {
        ctl_error(ctl, "the password is empty");
        return CTL_EXIT_USAGE;
    }
    return CTL_EXIT_OK;
}

/* The port and security of each way in that a device can use, from the
 * configured listeners: "587 STARTTLS", "465 SSL/TLS". Duplicates (one
 * port on IPv4 and IPv6) are listed once. */
struct ctl_port {
    unsigned port;
    const char *security;     /* for people */
    const char *security_key; /* for JSON */
};

static size_t ctl_device_ports(const struct config *cfg, struct ctl_port *out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < cfg->listener_count; i++) {
        const struct listener_config *l = &cfg->listeners[i];
        struct ctl_port p;
        switch (l->mode) {
        case LISTENER_STARTTLS:
            p = (struct ctl_port){0, "STARTTLS", "starttls"};
            break;
        case LISTENER_IMPLICIT:
            p = (struct ctl_port){0, "SSL/TLS", "tls"};
            break;
        case LISTENER_PLAIN:
        default:
            if (!l->allow_plaintext_auth)
                continue; /* no AUTH there: useless to a device */
            p = (struct ctl_port){0, "none (trusted network only)", "none"};
            break;
        }
        for (size_t k = 0; k < l->address_count; k++) {
            const char *colon = strrchr(l->addresses[k], ':');
            if (colon == NULL)
                continue;
            char *end = NULL;
            unsigned long port = strtoul(colon + 1, &end, 10);
            if (end == colon + 1 || *end != '\0' || port == 0 || port > 65535)
                continue;
            p.port = (unsigned)port;
            bool is_dup = false;
            for (size_t j = 0; j < n; j++)
                is_dup |= out[j].port == p.port && out[j].security == p.security;
            if (!is_dup && n < max)
                out[n++] = p;
        }
    }
    return n;
}

/* After --generate: the password, shown this once, with everything to type
 * into the device's mail settings. */
static void ctl_print_device_settings(const struct ctl *ctl, const char *name,
                                      const char *password, bool is_new)
{
    struct ctl_port ports[CONFIG_MAX_LISTENERS * CONFIG_MAX_ADDRESSES];
    size_t n = ctl_device_ports(ctl->cfg, ports, sizeof(ports) / sizeof(ports[0]));
    if (ctl->is_json) {
        json_t *o = json_object();
        json_t *jp = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(jp, json_pack("{s:i,s:s}", "port", (json_int_t)ports[i].port,
                                                "security", ports[i].security_key));
        json_object_set_new(o, "user", json_string(name));
        json_object_set_new(o, is_new ? "created" : "password_changed", json_true());
        json_object_set_new(o, "server", json_string(ctl->cfg->hostname));
        json_object_set_new(o, "ports", jp);
        json_object_set_new(o, "username", json_string(name));
        json_object_set_new(o, "password", json_string(password));
        char *text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        json_decref(o);
        if (text != NULL) {
            printf("%s\n", text);
            explicit_bzero(text, strlen(text));
            free(text);
        }
        return;
    }
    printf("%s %s.\n\n", is_new ? "Created account" : "New password for", name);
    printf("Settings for the device (the password is shown only this once):\n\n");
    printf("  SMTP server:     %s\n", ctl->cfg->hostname);
    for (size_t i = 0; i < n; i++)
        printf("  Port:            %u   security: %s\n", ports[i].port, ports[i].security);
    printf("  Authentication:  yes (PLAIN or LOGIN)\n");
    printf("  Username:        %s\n", name);
    printf("  Password:        %s\n", password);
}

/* ---- user commands ----------------------------------------------------- */

static json_t *ctl_account_json(const struct account *a)
{
    return json_pack("{s:s,s:b,s:s,s:I,s:I}", "name", a->name, "enabled", a->is_enabled,
                     "description", a->description, "created_at", (json_int_t)a->created_at,
                     "password_changed_at", (json_int_t)a->password_changed_at);
}

static int ctl_report_store_error(struct ctl *ctl, struct store *st, int status, const char *name)
{
    if (status == STORE_NOT_FOUND)
        ctl_error(ctl, "no such user: %s", name);
    else if (status == STORE_EXISTS)
        ctl_error(ctl, "user %s already exists", name);
    else
        ctl_error(ctl, "%s", store_errmsg(st));
    return ctl_store_status_exit(status);
}

static int ctl_set_password(struct ctl *ctl, int argc, char **argv, bool is_new,
                            const struct ctl_policy_changes *policy)
{
    struct ctl_args a;
    int rc = ctl_parse_args(ctl, ctl_find("user", is_new ? "add" : "passwd"), argc, argv, &a);
    if (rc != CTL_EXIT_OK) {
        if (rc < 0 && is_new)
            ctl_policy_usage(stdout);
        return rc < 0 ? CTL_EXIT_OK : rc;
    }
    int64_t nums[CTL_POLICY_MAX_CHANGES];
    if (policy != NULL && (rc = ctl_policy_validate(ctl, policy, nums)) != CTL_EXIT_OK)
        return rc; /* before anything is created */
    if ((rc = ctl_expect_args(ctl, &a, 1)) != CTL_EXIT_OK)
        return rc;
    const char *name = a.positional[0];
    if ((rc = ctl_check_name(ctl, name)) != CTL_EXIT_OK)
        return rc;
    enum ctl_password_source source = a.has_generate         ? CTL_PASSWORD_GENERATE
                                      : a.has_password_stdin ? CTL_PASSWORD_STDIN
                                                             : CTL_PASSWORD_PROMPT;
    struct store *st = NULL;
    /* Open first: a bad config or database fails before anyone types. */
    if ((rc = ctl_open_store(ctl, &st)) != CTL_EXIT_OK)
        return rc;
    struct account existing;
    int status = store_user_get(st, name, &existing);
    if (is_new ? status != STORE_NOT_FOUND : status != STORE_OK) {
        rc = ctl_report_store_error(ctl, st, status == STORE_OK ? STORE_EXISTS : status, name);
        store_close(st);
        return rc;
    }
    char password[STORE_PASSWORD_MAX + 1];
    rc = ctl_get_password(ctl, source, name, password, sizeof(password));
    if (rc == CTL_EXIT_OK) {
        status = is_new ? store_user_create(st, name, password, a.description)
                        : store_user_passwd(st, name, password);
        if (status != STORE_OK) {
            rc = ctl_report_store_error(ctl, st, status, name);
        } else if (policy != NULL && policy->count > 0 &&
                   (rc = ctl_policy_apply(ctl, st, name, policy)) != CTL_EXIT_OK) {
            /* validated above: only a storage error gets here */
        } else {
            char actor[256];
            ctl_actor(actor, sizeof(actor));
            log_info(NULL, "user %s name=%s by=%s", is_new ? "add" : "passwd", name, actor);
            if (source == CTL_PASSWORD_GENERATE)
                ctl_print_device_settings(ctl, name, password, is_new);
            else if (ctl->is_json)
                ctl_json_print(json_pack("{s:s,s:b}", "user", name,
                                         is_new ? "created" : "password_changed", 1));
            else
                printf("%s %s.\n", is_new ? "Created account" : "New password set for", name);
        }
    }
    explicit_bzero(password, sizeof(password));
    store_close(st);
    return rc;
}

static int ctl_user_add(struct ctl *ctl, int argc, char **argv)
{
    struct ctl_policy_changes policy;
    int rc = ctl_policy_extract(ctl, &argc, argv, &policy);
    if (rc != CTL_EXIT_OK)
        return rc;
    return ctl_set_password(ctl, argc, argv, true, &policy);
}

static int ctl_user_passwd(struct ctl *ctl, int argc, char **argv)
{
    return ctl_set_password(ctl, argc, argv, false, NULL);
}

/* user del / enable / disable: one name, one change. */
static int ctl_user_change(struct ctl *ctl, const struct ctl_command *c, int argc, char **argv)
{
    struct ctl_args a;
    int rc = ctl_parse_exact(ctl, c, argc, argv, 1, &a);
    if (rc != CTL_EXIT_OK)
        return rc < 0 ? CTL_EXIT_OK : rc;
    const char *name = a.positional[0];
    if ((rc = ctl_check_name(ctl, name)) != CTL_EXIT_OK)
        return rc;
    struct store *st = NULL;
    if ((rc = ctl_open_store(ctl, &st)) != CTL_EXIT_OK)
        return rc;
    int status;
    const char *done;
    if (strcmp(c->name, "del") == 0) {
        status = store_user_del(st, name);
        done = "deleted";
    } else {
        bool is_enable = strcmp(c->name, "enable") == 0;
        status = store_user_set_enabled(st, name, is_enable);
        done = is_enable ? "enabled" : "disabled";
    }
    if (status != STORE_OK) {
        rc = ctl_report_store_error(ctl, st, status, name);
    } else {
        char actor[256];
        ctl_actor(actor, sizeof(actor));
        log_info(NULL, "user %s name=%s by=%s", c->name, name, actor);
        if (ctl->is_json)
            ctl_json_print(json_pack("{s:s,s:b}", "user", name, done, 1));
        else
            printf("Account %s %s.\n", name, done);
    }
    store_close(st);
    return rc;
}

static int ctl_user_del(struct ctl *ctl, int argc, char **argv)
{
    return ctl_user_change(ctl, ctl_find("user", "del"), argc, argv);
}

static int ctl_user_enable(struct ctl *ctl, int argc, char **argv)
{
    return ctl_user_change(ctl, ctl_find("user", "enable"), argc, argv);
}

static int ctl_user_disable(struct ctl *ctl, int argc, char **argv)
{
    return ctl_user_change(ctl, ctl_find("user", "disable"), argc, argv);
}

static int ctl_user_show(struct ctl *ctl, int argc, char **argv)
{
    struct ctl_args a;
    int rc = ctl_parse_exact(ctl, ctl_find("user", "show"), argc, argv, 1, &a);
    if (rc != CTL_EXIT_OK)
        return rc < 0 ? CTL_EXIT_OK : rc;
    const char *name = a.positional[0];
    if ((rc = ctl_check_name(ctl, name)) != CTL_EXIT_OK)
        return rc;
    struct store *st = NULL;
    if ((rc = ctl_open_store(ctl, &st)) != CTL_EXIT_OK)
        return rc;
    struct account acc;
    int status = store_user_get(st, name, &acc);
    if (status != STORE_OK) {
        rc = ctl_report_store_error(ctl, st, status, name);
    } else if (ctl->is_json) {
        json_t *o = ctl_account_json(&acc);
        rc = ctl_policy_show(ctl, st, name, o);
        ctl_json_print(o);
    } else {
        char created[64], changed[64];
        ctl_format_time(acc.created_at, created, sizeof(created));
        ctl_format_time(acc.password_changed_at, changed, sizeof(changed));
        printf("Name:              %s\n", acc.name);
        printf("Enabled:           %s\n", acc.is_enabled ? "yes" : "no");
        printf("Description:       %s\n", acc.description);
        printf("Created:           %s\n", created);
        printf("Password changed:  %s\n", changed);
        rc = ctl_policy_show(ctl, st, name, NULL);
    }
    store_close(st);
    return rc;
}

struct ctl_list_ctx {
    bool is_json;
    size_t count;
    struct ctl *ctl;
    struct store *st;
};

static int ctl_on_account(const struct account *a, void *arg)
{
    struct ctl_list_ctx *ctx = arg;
    if (ctx->is_json) {
        json_t *o = ctl_account_json(a);
        char today[64];
        ctl_policy_today(ctx->ctl, ctx->st, a->name, today, sizeof(today), o);
        char *text = o != NULL ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        json_decref(o);
        printf("%s  %s", ctx->count == 0 ? "" : ",\n", text != NULL ? text : "null");
        free(text);
    } else {
        char created[64], today[64];
        ctl_format_time(a->created_at, created, sizeof(created));
        ctl_policy_today(ctx->ctl, ctx->st, a->name, today, sizeof(today), NULL);
        printf("%-24s %-8s %-12s %-25s%s%s\n", a->name, a->is_enabled ? "yes" : "no", today,
               created, a->description[0] != '\0' ? " " : "", a->description);
    }
    ctx->count++;
    return 0;
}

static int ctl_user_list(struct ctl *ctl, int argc, char **argv)
{
    struct ctl_args a;
    int rc = ctl_parse_exact(ctl, ctl_find("user", "list"), argc, argv, 0, &a);
    if (rc != CTL_EXIT_OK)
        return rc < 0 ? CTL_EXIT_OK : rc;
    struct store *st = NULL;
    if ((rc = ctl_open_store(ctl, &st)) != CTL_EXIT_OK)
        return rc;
    struct ctl_list_ctx ctx = {.is_json = ctl->is_json, .ctl = ctl, .st = st};
    if (ctl->is_json)
        printf("[\n");
    else
        printf("%-24s %-8s %-12s %-25s %s\n", "NAME", "ENABLED", "MSGS TODAY", "CREATED",
               "DESCRIPTION");
    int status = store_user_list(st, ctl_on_account, &ctx);
    if (ctl->is_json)
        printf("%s]\n", ctx.count > 0 ? "\n" : "");
    if (status != STORE_OK)
        rc = ctl_report_store_error(ctl, st, status, "");
    store_close(st);
    return rc;
}

/* ---- config ------------------------------------------------------------ */

static int ctl_config_check(struct ctl *ctl, int argc, char **argv)
{
    struct ctl_args a;
    int rc = ctl_parse_exact(ctl, ctl_find("config", "check"), argc, argv, 0, &a);
    if (rc != CTL_EXIT_OK)
        return rc < 0 ? CTL_EXIT_OK : rc;
    /* Always the file itself, default path included: checking a file that
     * is not there is an error, not "defaults are fine". */
    char err[512];
    struct config *cfg = NULL;
    bool is_ok = config_load(ctl->config_path, &cfg, err, sizeof(err)) == 0;
    config_free(cfg);
    if (ctl->is_json) {
        json_t *o = json_pack("{s:s,s:b}", "file", ctl->config_path, "ok", is_ok);
        if (!is_ok)
            json_object_set_new(o, "error", ctl_json_text(err));
        ctl_json_print(o);
    } else if (is_ok) {
        printf("%s: ok\n", ctl->config_path);
    } else {
        /* As `smarthostd --check-config` says it: FILE:LINE: [section] key: reason */
        fprintf(stderr, "%s\n", err);
    }
    return is_ok ? CTL_EXIT_OK : CTL_EXIT_RUNTIME;
}

static int ctl_config_defaults(struct ctl *ctl, int argc, char **argv)
{
    struct ctl_args a;
    int rc = ctl_parse_exact(ctl, ctl_find("config", "defaults"), argc, argv, 0, &a);
    if (rc != CTL_EXIT_OK)
        return rc < 0 ? CTL_EXIT_OK : rc;
    config_write_defaults(stdout);
    return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_RUNTIME;
}

/* ---- database ------------------------------------------------------------ */

/* Packages run this at install and upgrade: accounts and queue tables both
 * exist afterwards, at this build's schema version. */
static int ctl_db_migrate(struct ctl *ctl, int argc, char **argv)
{
    struct ctl_args a;
    int rc = ctl_parse_exact(ctl, ctl_find("db", "migrate"), argc, argv, 0, &a);
    if (rc != CTL_EXIT_OK)
        return rc < 0 ? CTL_EXIT_OK : rc;
    struct store *st = NULL;
    if ((rc = ctl_open_store(ctl, &st)) != CTL_EXIT_OK)
        return rc;
    store_close(st);
    struct queue_store *q = NULL;
    if (queue_store_open(ctl->cfg->database, ctl_busy_ms(ctl), &q) < 0) {
        ctl_error(ctl, "cannot migrate the queue in %s (see the log for the reason)",
                  ctl->cfg->database);
        return CTL_EXIT_RUNTIME;
    }
    queue_store_close(q);
    if (ctl->is_json)
        ctl_json_print(json_pack("{s:s,s:b}", "database", ctl->cfg->database, "ok", 1));
    else
        printf("%s: schema up to date\n", ctl->cfg->database);
    return CTL_EXIT_OK;
}

/* ---- main -------------------------------------------------------------- */

int main(int argc, char **argv)
{
    struct ctl ctl = {.config_path = CTL_DEFAULT_CONFIG};
    /* Admin actions are audit records: syslog (mail facility), not the
     * terminal, which gets only results and "smarthostctl: ..." errors. */
    log_setup(LOG_TARGET_SYSLOG, LOG_LEVEL_INFO, "smarthostctl");

    const struct option options[] = {
        {"config", required_argument, NULL, 'c'},
        {"json", no_argument, NULL, CTL_OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    opterr = 0;
    int opt;
    /* '+': stop at the command word; its own options are parsed later. */
    while ((opt = getopt_long(argc, argv, "+:c:h", options, NULL)) != -1) {
        switch (opt) {
        case 'c':
            ctl.config_path = optarg;
            ctl.is_config_explicit = true;
            break;
        case CTL_OPT_JSON:
            ctl.is_json = true;
            break;
        case 'h':
            ctl_usage(stdout);
            return CTL_EXIT_OK;
        case ':':
            ctl_error(&ctl, "option '%s' needs a value", argv[optind - 1]);
            return CTL_EXIT_USAGE;
        default:
            ctl_error(&ctl, "unknown option '%s' (see --help)", argv[optind - 1]);
            return CTL_EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        ctl_usage(stderr);
        return CTL_EXIT_USAGE;
    }
    const char *group = argv[optind];
    if (strcmp(group, "help") == 0) {
        ctl_usage(stdout);
        return CTL_EXIT_OK;
    }
    bool is_group = false;
    for (size_t i = 0; i < CTL_COMMAND_COUNT; i++)
        is_group |= strcmp(ctl_commands[i].group, group) == 0;
    if (!is_group) {
        ctl_error(&ctl, "unknown command '%s' (see --help)", group);
        return CTL_EXIT_USAGE;
    }
    if (optind + 1 >= argc) {
        ctl_error(&ctl, "%s: missing subcommand (see --help)", group);
        return CTL_EXIT_USAGE;
    }
    const char *name = argv[optind + 1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
        for (size_t i = 0; i < CTL_COMMAND_COUNT; i++) {
            if (strcmp(ctl_commands[i].group, group) == 0) {
                ctl_command_usage(&ctl_commands[i], stdout);
                fputc('\n', stdout);
            }
        }
        return CTL_EXIT_OK;
    }
    const struct ctl_command *c = ctl_find(group, name);
    if (c == NULL) {
        ctl_error(&ctl, "unknown command '%s %s' (see --help)", group, name);
        return CTL_EXIT_USAGE;
    }
    char what[64];
    snprintf(what, sizeof(what), "%s %s", c->group, c->name);
    ctl.what = what;
    int rc = c->run(&ctl, argc - optind - 1, argv + optind + 1);
    config_free(ctl.cfg);
    if (fflush(stdout) != 0 && rc == CTL_EXIT_OK) {
        ctl.what = NULL;
        ctl_error(&ctl, "cannot write the output: %s", strerror(errno));
        rc = CTL_EXIT_RUNTIME;
    }
    return rc;
}

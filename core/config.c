/* config.c — smarthost.conf: libinih reads the INI syntax, one table of keys
 * (config_key_table) decides everything else: names, types, defaults, bounds,
 * where each value is stored, and the documentation written to the default file.
 * Owns struct config's memory. Never exits and never logs: every problem is
 * returned to the caller as "FILE:LINE: [section] key: reason". Stays libuv- and
 * GnuTLS-free so that smarthostctl and auth/ can link it. */
#include "core/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define KIB 1024ULL
#define MIB (1024ULL * KIB)
#define GIB (1024ULL * MIB)
#define MS_PER_S 1000ULL
#define MS_PER_M (60ULL * MS_PER_S)
#define MS_PER_H (60ULL * MS_PER_M)
#define MS_PER_D (24ULL * MS_PER_H)

/* Longest text between [ ] that we accept. libinih itself hands the handler
 * at most 49 bytes of it, so the section is taken from our own reader. */
#define CONFIG_SECTION_MAX 127
#define CONFIG_LISTENER_NAME_MAX 63
#define CONFIG_ERR_MAX 512

#define CONFIG_FIELD(m)                                                                  \
    .offset = offsetof(struct config, m), .size = sizeof(((struct config *)0)->m)
#define LISTENER_FIELD(m)                                                                \
    .offset = offsetof(struct listener_config, m),                                       \
    .size = sizeof(((struct listener_config *)0)->m)

/* CONFIG_LIST stores entries into a char *[] immediately followed by its count. */
_Static_assert(offsetof(struct listener_config, address_count) ==
                   offsetof(struct listener_config, addresses) +
                       sizeof(((struct listener_config *)0)->addresses),
               "address_count must follow addresses");
_Static_assert(sizeof(enum log_level) == sizeof(int) && sizeof(enum listener_mode) == sizeof(int),
               "CONFIG_ENUM stores an int");
/* ENUM keys without an enum_map store the word's index in enum_values */
_Static_assert(LOG_TARGET_STDERR == 0 && LOG_TARGET_SYSLOG == 1, "log target words");
_Static_assert(LISTENER_STARTTLS == 0 && LISTENER_IMPLICIT == 1 && LISTENER_PLAIN == 2,
               "listener mode words");
_Static_assert(BARE_LF_NORMALIZE == 0 && BARE_LF_REJECT == 1, "bare_lf words");

static int config_check_hostname(const char *value, char *why, size_t why_size);
static int config_check_user(const char *value, char *why, size_t why_size);
static int config_check_priority(const char *value, char *why, size_t why_size);
static int config_check_address(const char *value, char *why, size_t why_size);
static int config_check_server_list(const char *value, char *why, size_t why_size);
static int config_check_tls_policy(const char *value, char *why, size_t why_size);
static int config_check_rate_limit(const char *value, char *why, size_t why_size);
static int config_check_relayhost(const char *value, char *why, size_t why_size);
static int config_check_trusted(const char *value, char *why, size_t why_size);

static const int config_log_level_map[] = {LOG_LEVEL_ERR, LOG_LEVEL_WARN, LOG_LEVEL_INFO,
                                           LOG_LEVEL_DEBUG};

/* The one table. Order is the order of the default file and the man page.
 * Bounds of durations are in milliseconds; doc lines stay short because the
 * default file is parsed by the same reader, whose lines are bounded. */
static const struct config_key config_key_table[] = {
    {.section = "server", .name = "hostname", .type = CONFIG_STRING, .default_value = "",
     .min = 0, .max = 253, .check = config_check_hostname, CONFIG_FIELD(hostname),
     .doc = "Name in the banner, Received: and Message-ID; empty = this machine's name."},
    {.section = "server", .name = "user", .type = CONFIG_STRING, .default_value = "smarthost",
     .min = 0, .max = 32, .check = config_check_user, CONFIG_FIELD(user),
     .doc = "User to run as once the ports are bound; empty = keep the starting user."},
    {.section = "server", .name = "database", .type = CONFIG_STRING,
     .default_value = "/var/lib/smarthost/smarthost.db", .min = 1, .max = 4095,
     CONFIG_FIELD(database),
     .doc = "SQLite file: accounts, quotas, queue; bodies >= 128 KiB in DATABASE-bodies/."},
    {.section = "server", .name = "threads", .type = CONFIG_UINT, .default_value = "0",
     .min = 0, .max = 64, CONFIG_FIELD(threads),
     .doc = "Event-loop threads; 0 = one per online CPU core."},

    {.section = "log", .name = "target", .type = CONFIG_ENUM, .default_value = "stderr",
     .enum_values = "stderr|syslog", CONFIG_FIELD(log_target),
     .doc = "Where log lines go: stderr (the journal under systemd) or syslog (mail)."},
    {.section = "log", .name = "level", .type = CONFIG_ENUM, .default_value = "info",
     .enum_values = "err|warning|info|debug", .enum_map = config_log_level_map,
     CONFIG_FIELD(log_level), .doc = "Least important messages that are logged."},

    {.section = "tls", .name = "cert_file", .type = CONFIG_STRING,
     .default_value = "/etc/smarthost/tls/cert.pem", .min = 1, .max = 4095,
     CONFIG_FIELD(cert_file), .doc = "Certificate chain (PEM), server certificate first."},
    {.section = "tls", .name = "key_file", .type = CONFIG_STRING,
     .default_value = "/etc/smarthost/tls/key.pem", .min = 1, .max = 4095,
     CONFIG_FIELD(key_file), .doc = "Private key (PEM) of cert_file."},
    {.section = "tls", .name = "cert2_file", .type = CONFIG_STRING, .default_value = "",
     .min = 0, .max = 4095, CONFIG_FIELD(cert2_file),
     .doc = "Optional second chain, e.g. ECDSA beside RSA; empty = none."},
    {.section = "tls", .name = "key2_file", .type = CONFIG_STRING, .default_value = "",
     .min = 0, .max = 4095, CONFIG_FIELD(key2_file),
     .doc = "Private key of cert2_file; set both or neither."},

    {.section = "limits", .name = "max_message_size", .type = CONFIG_SIZE,
     .default_value = "35M", .min = KIB, .max = 2 * GIB, CONFIG_FIELD(max_message_size),
     .doc = "Largest message accepted; advertised in the EHLO SIZE keyword."},
    {.section = "limits", .name = "max_recipients", .type = CONFIG_UINT,
     .default_value = "100", .min = 1, .max = 10000, CONFIG_FIELD(max_recipients),
     .doc = "Recipients per message; further RCPT get 452 4.5.3."},
    {.section = "limits", .name = "max_line_length", .type = CONFIG_UINT,
     .default_value = "2048", .min = 512, .max = 65536, CONFIG_FIELD(max_line_length),
     .doc = "Longest command line in bytes, CRLF included; longer get 500 5.5.2."},
    {.section = "limits", .name = "max_errors", .type = CONFIG_UINT, .default_value = "10",
     .min = 1, .max = 1000, CONFIG_FIELD(max_errors),
     .doc = "Protocol errors per session before 421 4.7.0 and disconnect."},
    {.section = "limits", .name = "idle_timeout", .type = CONFIG_DURATION,
     .default_value = "5m", .min = MS_PER_S, .max = MS_PER_H, CONFIG_FIELD(idle_timeout_ms),
     .doc = "Disconnect (421 4.4.2) a client that sends nothing for this long."},
    {.section = "limits", .name = "session_timeout", .type = CONFIG_DURATION,
     .default_value = "30m", .min = 10 * MS_PER_S, .max = MS_PER_D,
     CONFIG_FIELD(session_timeout_ms),
     .doc = "Longest duration of one whole session, then 421 4.4.2."},
    {.section = "limits", .name = "max_connections", .type = CONFIG_UINT,
     .default_value = "1000", .min = 1, .max = 1000000, CONFIG_FIELD(max_connections),
     .doc = "Client connections in total; more get 421 4.7.0."},
    {.section = "limits", .name = "max_connections_per_ip", .type = CONFIG_UINT,
     .default_value = "50", .min = 1, .max = 100000, CONFIG_FIELD(max_connections_per_ip),
     .doc = "Connections from one client address; more get 421 4.7.0."},

    {.section = "auth", .name = "failure_delay", .type = CONFIG_DURATION,
     .default_value = "1s", .min = 0, .max = 60 * MS_PER_S, CONFIG_FIELD(auth_failure_delay_ms),
     .doc = "Wait before answering a failed AUTH; doubles with each further failure."},
    {.section = "auth", .name = "max_delay", .type = CONFIG_DURATION, .default_value = "15s",
     .min = 0, .max = 10 * MS_PER_M, CONFIG_FIELD(auth_max_delay_ms),
     .doc = "Cap of that wait; >= failure_delay."},
    {.section = "auth", .name = "ip_lockout_failures", .type = CONFIG_UINT,
     .default_value = "20", .min = 1, .max = 10000, CONFIG_FIELD(auth_ip_lockout_failures),
     .doc = "Failed AUTH from one client address before it is locked out."},
    {.section = "auth", .name = "account_lockout_failures", .type = CONFIG_UINT,
     .default_value = "10", .min = 1, .max = 10000,
     CONFIG_FIELD(auth_account_lockout_failures),
     .doc = "Failed AUTH for one account before it is locked out."},
    {.section = "auth", .name = "lockout_time", .type = CONFIG_DURATION,
     .default_value = "15m", .min = MS_PER_S, .max = 7 * MS_PER_D, CONFIG_FIELD(auth_lockout_ms),
     .doc = "How long a lockout lasts."},
    {.section = "auth", .name = "failure_window", .type = CONFIG_DURATION,
     .default_value = "1h", .min = MS_PER_S, .max = 7 * MS_PER_D,
     CONFIG_FIELD(auth_failure_window_ms), .doc = "Failures older than this are forgotten."},
    {.section = "auth", .name = "cache_size", .type = CONFIG_UINT, .default_value = "4096",
     .max = 1000000, CONFIG_FIELD(auth_cache_size),
     .doc = "Verified logins kept (HMAC, not passwords), identical ones shared; 0 = off."},

    {.section = "queue", .name = "busy_timeout", .type = CONFIG_DURATION,
     .default_value = "5s", .min = 100, .max = 10 * MS_PER_M,
     CONFIG_FIELD(queue_busy_timeout_ms),
     .doc = "Wait for a locked database this long, then answer 452 4.3.1."},

    {.section = "accounts", .name = "msgs_per_hour", .type = CONFIG_UINT, .default_value = "0",
     .max = 100000000, CONFIG_FIELD(acct_msgs_per_hour),
     .doc = "Messages per hour per account (0 = unlimited); a per-account value wins."},
    {.section = "accounts", .name = "msgs_per_day", .type = CONFIG_UINT, .default_value = "0",
     .max = 100000000, CONFIG_FIELD(acct_msgs_per_day),
     .doc = "Messages per day (UTC) per account (0 = unlimited)."},
    {.section = "accounts", .name = "rcpts_per_day", .type = CONFIG_UINT, .default_value = "0",
     .max = 1000000000, CONFIG_FIELD(acct_rcpts_per_day),
     .doc = "Recipients per day per account (0 = unlimited)."},
    {.section = "accounts", .name = "bytes_per_day", .type = CONFIG_SIZE, .default_value = "0",
     .max = 1024 * GIB, CONFIG_FIELD(acct_bytes_per_day),
     .doc = "Bytes per day per account (0 = unlimited)."},

    {.section = "relay", .name = "enabled", .type = CONFIG_BOOL, .default_value = "yes",
     CONFIG_FIELD(relay_enabled), .doc = "Deliver queued mail (no: keep it queued)."},
    {.section = "relay", .name = "helo_name", .type = CONFIG_STRING, .default_value = "",
     .max = 253, .check = config_check_hostname, CONFIG_FIELD(relay_helo_name),
     .doc = "Name sent in EHLO; empty means [server] hostname."},
    {.section = "relay", .name = "port", .type = CONFIG_UINT, .default_value = "25", .min = 1,
     .max = 65535, CONFIG_FIELD(relay_port), .doc = "Port of the destination MX hosts."},
    {.section = "relay", .name = "dns_servers", .type = CONFIG_STRING, .default_value = "",
     .max = 512, .check = config_check_server_list, CONFIG_FIELD(relay_dns_servers),
     .doc = "Resolvers as IP:PORT, [IPv6]:PORT, comma-separated; empty: resolv.conf."},
    {.section = "relay", .name = "ip_family", .type = CONFIG_ENUM,
     .default_value = "prefer-ipv6", .enum_values = "prefer-ipv6|prefer-ipv4|ipv4|ipv6",
     CONFIG_FIELD(relay_ip_family), .doc = "Address families for delivery, and which first."},
    {.section = "relay", .name = "dns_timeout", .type = CONFIG_DURATION, .default_value = "5s",
     .min = 100, .max = MS_PER_M, CONFIG_FIELD(relay_dns_timeout_ms),
     .doc = "Wait this long for a DNS answer (per try, two tries)."},
    {.section = "relay", .name = "connect_timeout", .type = CONFIG_DURATION,
     .default_value = "30s", .min = 100, .max = 10 * MS_PER_M,
     CONFIG_FIELD(relay_connect_timeout_ms), .doc = "Give up connecting to one address."},
    {.section = "relay", .name = "command_timeout", .type = CONFIG_DURATION,
     .default_value = "5m", .min = 100, .max = MS_PER_H, CONFIG_FIELD(relay_command_timeout_ms),
     .doc = "Wait this long for the banner and each reply."},
    {.section = "relay", .name = "data_timeout", .type = CONFIG_DURATION,
     .default_value = "10m", .min = 100, .max = MS_PER_H, CONFIG_FIELD(relay_data_timeout_ms),
     .doc = "Wait this long for the reply to the end of data."},
    {.section = "relay", .name = "max_deliveries", .type = CONFIG_UINT, .default_value = "20",
     .min = 1, .max = 10000, CONFIG_FIELD(relay_max_deliveries),
     .doc = "Concurrent deliveries in total."},
    {.section = "relay", .name = "max_per_domain", .type = CONFIG_UINT, .default_value = "5",
     .min = 1, .max = 10000, CONFIG_FIELD(relay_max_per_domain),
     .doc = "Concurrent deliveries to one destination domain."},
    {.section = "relay", .name = "max_per_ip", .type = CONFIG_UINT, .default_value = "5",
     .min = 1, .max = 10000, CONFIG_FIELD(relay_max_per_ip),
     .doc = "Concurrent connections to one destination address."},
    {.section = "relay", .name = "connection_cache_time", .type = CONFIG_DURATION,
     .default_value = "2s", .min = 0, .max = MS_PER_M,
     CONFIG_FIELD(relay_connection_cache_time_ms),
     .doc = "Keep a delivered-on connection open for the next message; 0: close it."},
    {.section = "relay", .name = "tls", .type = CONFIG_ENUM, .default_value = "opportunistic",
     .enum_values = "none|opportunistic|require|verify", CONFIG_FIELD(relay_tls),
     .doc = "STARTTLS to MX hosts: none, opportunistic, require, verify."},
    {.section = "relay", .name = "tls_policy", .type = CONFIG_STRING, .default_value = "",
     .max = 4096, .check = config_check_tls_policy, CONFIG_FIELD(relay_tls_policy),
     .doc = "Per-domain TLS: \"example.com=verify, old.test=none\"."},
    {.section = "relay", .name = "rate_limit", .type = CONFIG_STRING, .default_value = "",
     .max = 4096, .check = config_check_rate_limit, CONFIG_FIELD(relay_rate_limit),
     .doc = "Pace per destination: \"outlook.com=30/m, relayhost=300rcpt/h\"."},
    {.section = "relay", .name = "retry_first", .type = CONFIG_DURATION, .default_value = "5m",
     .min = MS_PER_S, .max = MS_PER_D, CONFIG_FIELD(relay_retry_first_ms),
     .doc = "First retry after this; the delay doubles each time."},
    {.section = "relay", .name = "retry_max", .type = CONFIG_DURATION, .default_value = "1h",
     .min = MS_PER_S, .max = 7 * MS_PER_D, CONFIG_FIELD(relay_retry_max_ms),
     .doc = "The retry delay stops growing here."},
    {.section = "relay", .name = "max_lifetime", .type = CONFIG_DURATION, .default_value = "5d",
     .min = MS_PER_S, .max = 30 * MS_PER_D, CONFIG_FIELD(relay_max_lifetime_ms),
     .doc = "Bounce what could not be delivered within this time."},
    {.section = "relay", .name = "delay_warning", .type = CONFIG_DURATION,
     .default_value = "0", .min = 0, .max = 30 * MS_PER_D,
     CONFIG_FIELD(relay_delay_warning_ms),
     .doc = "Send one delay warning after this long queued; 0: never."},
    {.section = "relay", .name = "keep_done", .type = CONFIG_DURATION, .default_value = "1d",
     .min = 0, .max = 30 * MS_PER_D, CONFIG_FIELD(relay_keep_done_ms),
     .doc = "Keep finished messages (envelope, attempts, no content) this long."},
    {.section = "relay", .name = "bounce_to", .type = CONFIG_ENUM, .default_value = "sender",
     .enum_values = "sender|admin|both", CONFIG_FIELD(relay_bounce_to),
     .doc = "Bounces go to the envelope sender, the admin address, or both."},
    {.section = "relay", .name = "admin_address", .type = CONFIG_STRING, .default_value = "",
     .max = 254, CONFIG_FIELD(relay_admin_address),
     .doc = "Where admin copies of bounces go (needed for bounce_to admin|both)."},
    {.section = "relay", .name = "relayhost", .type = CONFIG_STRING, .default_value = "",
     .max = 300, .check = config_check_relayhost, CONFIG_FIELD(relay_relayhost),
     .doc = "Hand mail to HOST:PORT instead of MX delivery; empty: MX delivery."},
    {.section = "relay", .name = "relayhost_domains", .type = CONFIG_STRING,
     .default_value = "", .max = 4096, CONFIG_FIELD(relay_relayhost_domains),
     .doc = "Only these domains go to the relayhost (comma list); empty: all."},
    {.section = "relay", .name = "relayhost_security", .type = CONFIG_ENUM,
     .default_value = "starttls", .enum_values = "starttls|implicit",
     CONFIG_FIELD(relay_relayhost_security),
     .doc = "Required STARTTLS (587), or implicit TLS (465) to the relayhost."},
    {.section = "relay", .name = "relayhost_verify", .type = CONFIG_BOOL,
     .default_value = "yes", CONFIG_FIELD(relay_relayhost_verify),
     .doc = "Verify the relayhost's certificate and name."},
    {.section = "relay", .name = "relayhost_credentials", .type = CONFIG_STRING,
     .default_value = "", .max = 4096, CONFIG_FIELD(relay_relayhost_credentials),
     .doc = "File with one line USER:PASSWORD for relayhost AUTH (mode 0600)."},
    {.section = "relay", .name = "ca_file", .type = CONFIG_STRING, .default_value = "",
     .max = 4096, CONFIG_FIELD(relay_ca_file),
     .doc = "CA bundle for verify; empty: the system trust store."},
    {.section = "relay", .name = "control_socket", .type = CONFIG_STRING,
     .default_value = "/run/smarthost/control.sock", .max = 100,
     CONFIG_FIELD(relay_control_socket),
     .doc = "Unix socket smarthostctl uses to reach the running daemon."},

    {.section = "listener", .name = "address", .type = CONFIG_LIST, .default_value = "",
     .min = 1, .max = CONFIG_MAX_ADDRESSES, .check = config_check_address,
     LISTENER_FIELD(addresses),
     .doc = "Required: IPv4:PORT, [IPv6]:PORT or *:PORT, comma-separated."},
    {.section = "listener", .name = "mode", .type = CONFIG_ENUM, .default_value = "starttls",
     .enum_values = "starttls|implicit|plain", LISTENER_FIELD(mode),
     .doc = "starttls (587), implicit TLS (465), or plain: no TLS at all."},
    {.section = "listener", .name = "tls_priority", .type = CONFIG_STRING,
     .default_value = "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2", .min = 1, .max = 1024,
     .check = config_check_priority, LISTENER_FIELD(tls_priority),
     .doc = "GnuTLS priority string: protocol versions and ciphers."},
    {.section = "listener", .name = "bare_lf", .type = CONFIG_ENUM,
     .default_value = "normalize", .enum_values = "normalize|reject", LISTENER_FIELD(bare_lf),
     .doc = "Bare LF or CR in message data: normalize to CRLF, or reject (550 5.6.0)."},
    {.section = "listener", .name = "allow_plaintext_auth", .type = CONFIG_BOOL,
     .default_value = "no", LISTENER_FIELD(allow_plaintext_auth),
     .doc = "Accept AUTH without TLS (trusted networks only); mode = plain needs it."},
    {.section = "listener", .name = "trusted_networks", .type = CONFIG_STRING,
     .default_value = "", .max = 4096, .check = config_check_trusted,
     LISTENER_FIELD(trusted_networks),
     .doc = "Devices without AUTH: CIDR=ACCOUNT, comma-separated; its policy applies."},
    {.section = "listener", .name = "trusted_networks_force", .type = CONFIG_BOOL,
     .default_value = "no", LISTENER_FIELD(trusted_networks_force),
     .doc = "Allow trusted networks wider than /16 (IPv6 /48) or in public ranges."},
};

#define CONFIG_KEY_COUNT (sizeof(config_key_table) / sizeof(config_key_table[0]))

/* Used when the file has no [listener NAME] section at all (RFC 6409, RFC 8314). */
static const struct {
    const char *name, *address, *mode;
} config_default_listeners[] = {
    {"submission", "0.0.0.0:587,[::]:587", "starttls"},
    {"submissions", "0.0.0.0:465,[::]:465", "implicit"},
};

const struct config_key *config_keys(size_t *count)
{
    if (count != NULL)
        *count = CONFIG_KEY_COUNT;
    return config_key_table;
}

/* ---- value parsers ------------------------------------------------------ */

/* Leading decimal digits of s into *out; *end after them. At least one digit,
 * no sign, no spaces, no overflow. */
static int config_parse_digits(const char *s, const char **end, uint64_t *out)
{
    uint64_t v = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (p == s)
        return -1;
    *end = p;
    *out = v;
    return 0;
}

static int config_scale(uint64_t v, uint64_t unit, uint64_t *out)
{
    if (v > UINT64_MAX / unit)
        return -1;
    *out = v * unit;
    return 0;
}

static int config_parse_uint(const char *s, uint64_t *out)
{
    const char *end;
    if (config_parse_digits(s, &end, out) < 0 || *end != '\0')
        return -1;
    return 0;
}

int config_parse_size(const char *s, uint64_t *out)
{
    static const struct {
        const char *suffix;
        uint64_t unit;
    } units[] = {{"", 1}, {"k", KIB}, {"K", KIB}, {"m", MIB}, {"M", MIB}, {"g", GIB}, {"G", GIB}};
    const char *end;
    uint64_t v;
    if (s == NULL || config_parse_digits(s, &end, &v) < 0)
        return -1;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (strcmp(end, units[i].suffix) == 0)
            return config_scale(v, units[i].unit, out);
    return -1;
}

int config_parse_duration_ms(const char *s, uint64_t *out)
{
    static const struct {
        const char *suffix;
        uint64_t unit;
    } units[] = {{"", MS_PER_S}, {"ms", 1},        {"s", MS_PER_S},
                 {"m", MS_PER_M}, {"h", MS_PER_H}, {"d", MS_PER_D}};
    const char *end;
    uint64_t v;
    if (s == NULL || config_parse_digits(s, &end, &v) < 0)
        return -1;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (strcmp(end, units[i].suffix) == 0)
            return config_scale(v, units[i].unit, out);
    return -1;
}

int config_parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};
    if (s == NULL)
        return -1;
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

/* Largest exact unit: 2147483648 -> "2G", 600000 ms -> "10m", 0 -> "0". */
static const char *config_format_size(uint64_t v, char *buf, size_t size)
{
    if (v != 0 && v % GIB == 0)
        snprintf(buf, size, "%lluG", (unsigned long long)(v / GIB));
    else if (v != 0 && v % MIB == 0)
        snprintf(buf, size, "%lluM", (unsigned long long)(v / MIB));
    else if (v != 0 && v % KIB == 0)
        snprintf(buf, size, "%lluk", (unsigned long long)(v / KIB));
    else
        snprintf(buf, size, "%llu", (unsigned long long)v);
    return buf;
}

static const char *config_format_duration(uint64_t ms, char *buf, size_t size)
{
    static const struct {
        const char *suffix;
        uint64_t unit;
    } units[] = {{"d", MS_PER_D}, {"h", MS_PER_H}, {"m", MS_PER_M}, {"s", MS_PER_S}};
    if (ms == 0) {
        snprintf(buf, size, "0");
        return buf;
    }
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (ms % units[i].unit == 0) {
            snprintf(buf, size, "%llu%s", (unsigned long long)(ms / units[i].unit),
                     units[i].suffix);
            return buf;
        }
    }
    snprintf(buf, size, "%llums", (unsigned long long)ms);
    return buf;
}

/* ---- per-value checks (struct config_key.check) -------------------------- */

static int config_check_hostname(const char *value, char *why, size_t why_size)
{
    /* RFC 1123 labels: this name goes verbatim into the banner and headers */
    size_t label = 0;
    for (const char *p = value; *p != '\0'; p++) {
        bool alnum = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                     (*p >= '0' && *p <= '9');
        if (*p == '.') {
            if (label == 0 || p[-1] == '-')
                goto bad;
            label = 0;
        } else if (alnum || (*p == '-' && label > 0)) {
            if (++label > 63)
                goto bad;
        } else {
            goto bad;
        }
    }
    if (value[0] != '\0' && (label == 0 || value[strlen(value) - 1] == '-'))
        goto bad;
    return 0;
bad:
    snprintf(why, why_size, "expected a host name: dot-separated labels of letters, "
                            "digits and '-', each 1 to 63 characters");
    return -1;
}

static int config_check_user(const char *value, char *why, size_t why_size)
{
    for (const char *p = value; *p != '\0'; p++) {
        bool ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                  (*p >= '0' && *p <= '9') || *p == '_' || *p == '.' ||
                  (*p == '-' && p != value);
        if (!ok) {
            snprintf(why, why_size, "expected a user name: letters, digits, '.', '_' "
                                    "and '-' (not first)");
            return -1;
        }
    }
    return 0;
}

static int config_check_priority(const char *value, char *why, size_t why_size)
{
    for (const char *p = value; *p != '\0'; p++) {
        if (*p <= ' ' || *p > '~' || *p == '"' || *p == '\'') {
            snprintf(why, why_size, "expected a GnuTLS priority string (no spaces or quotes), "
                                    "e.g. NORMAL:-VERS-ALL:+VERS-TLS1.3");
            return -1;
        }
    }
    return 0;
}

/* One bindable endpoint; "*" stands for both wildcard addresses. */
struct config_endpoint {
    int family; /* AF_INET, AF_INET6, or AF_UNSPEC for "*" */
    unsigned char addr[16];
    unsigned port;
};

static int config_parse_endpoint(const char *s, struct config_endpoint *ep)
{
    char host[INET6_ADDRSTRLEN];
    const char *port;
    size_t host_len;
    memset(ep, 0, sizeof(*ep));
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':')
            return -1;
        host_len = (size_t)(close - s - 1);
        if (host_len == 0 || host_len >= sizeof(host))
            return -1;
        memcpy(host, s + 1, host_len);
        host[host_len] = '\0';
        if (inet_pton(AF_INET6, host, ep->addr) != 1)
            return -1;
        ep->family = AF_INET6;
        port = close + 2;
    } else {
        const char *colon = strchr(s, ':');
        if (colon == NULL || strchr(colon + 1, ':') != NULL)
            return -1; /* none, or an IPv6 literal without brackets */
        host_len = (size_t)(colon - s);
        if (host_len == 0 || host_len >= sizeof(host))
            return -1;
        memcpy(host, s, host_len);
        host[host_len] = '\0';
        if (strcmp(host, "*") == 0)
            ep->family = AF_UNSPEC;
        else if (inet_pton(AF_INET, host, ep->addr) == 1)
            ep->family = AF_INET;
        else
            return -1;
        port = colon + 1;
    }
    uint64_t v;
    if (strlen(port) > 5 || config_parse_uint(port, &v) < 0 || v < 1 || v > 65535)
        return -1;
    ep->port = (unsigned)v;
    return 0;
}

static int config_check_address(const char *value, char *why, size_t why_size)
{
    struct config_endpoint ep;
    if (config_parse_endpoint(value, &ep) == 0)
        return 0;
    char esc[96];
    snprintf(why, why_size, "bad address \"%s\": expected IPv4:PORT, [IPv6]:PORT or *:PORT "
                            "with an IP literal and a port from 1 to 65535",
             log_escape(value, strlen(value), esc, sizeof(esc)));
    return -1;
}

static int config_check_server_list(const char *value, char *why, size_t why_size)
{
    const char *p = value;
    char item[128];
    while (*p != '\0') {
        while (*p == ' ' || *p == ',')
            p++;
        size_t n = strcspn(p, ", ");
        if (n == 0)
            break;
        struct config_endpoint ep;
        if (n >= sizeof(item) || (memcpy(item, p, n), item[n] = '\0',
                                  config_parse_endpoint(item, &ep) < 0) ||
            ep.family == AF_UNSPEC) {
            snprintf(why, why_size, "expected resolvers as IPv4:PORT or [IPv6]:PORT, "
                                    "comma-separated, e.g. 127.0.0.1:53");
            return -1;
        }
        p += n;
    }
    return 0;
}

int config_map_next(const char **cursor, char *key, size_t key_size, char *value,
                    size_t value_size)
{
    const char *p = *cursor;
    while (*p == ' ' || *p == '\t' || *p == ',')
        p++;
    if (*p == '\0')
        return 0;
    size_t n = strcspn(p, ",");
    const char *eq = memchr(p, '=', n);
    if (eq == NULL)
        return -1;
    const char *k_end = eq;
    while (k_end > p && (k_end[-1] == ' ' || k_end[-1] == '\t'))
        k_end--;
    const char *v = eq + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    const char *v_end = p + n;
    while (v_end > v && (v_end[-1] == ' ' || v_end[-1] == '\t'))
        v_end--;
    size_t klen = (size_t)(k_end - p), vlen = (size_t)(v_end - v);
    if (klen == 0 || vlen == 0 || klen >= key_size || vlen >= value_size)
        return -1;
    for (size_t i = 0; i < klen; i++)
        key[i] = (char)tolower((unsigned char)p[i]);
    key[klen] = '\0';
    memcpy(value, v, vlen);
    value[vlen] = '\0';
    *cursor = p + n;
    return 1;
}

int config_parse_rate(const char *s, struct config_rate *out)
{
    char *end = NULL;
    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    unsigned long n = strtoul(s, &end, 10);
    if (errno != 0 || n == 0 || n > 1000000)
        return -1;
    out->is_recipients = false;
    if (strncmp(end, "rcpt", 4) == 0) {
        out->is_recipients = true;
        end += 4;
    } else if (strncmp(end, "msg", 3) == 0) {
        end += 3;
    }
    if (*end != '/')
        return -1;
    end++;
    if (strcmp(end, "s") == 0)
        out->period_ms = MS_PER_S;
    else if (strcmp(end, "m") == 0)
        out->period_ms = MS_PER_M;
    else if (strcmp(end, "h") == 0)
        out->period_ms = MS_PER_H;
    else if (strcmp(end, "d") == 0)
        out->period_ms = MS_PER_D;
    else
        return -1;
    out->count = (unsigned)n;
    return 0;
}

static int config_check_map(const char *value, char *why, size_t why_size, const char *what,
                             int (*check_value)(const char *v))
{
    const char *p = value;
    char key[256], v[64];
    int rc;
    while ((rc = config_map_next(&p, key, sizeof(key), v, sizeof(v))) > 0) {
        if (check_value(v) < 0) {
            char esc[96];
            snprintf(why, why_size, "bad value \"%s\" for \"%s\": expected %s",
                     log_escape(v, strlen(v), esc, sizeof(esc)), key, what);
            return -1;
        }
    }
    if (rc < 0) {
        snprintf(why, why_size, "expected DOMAIN=%s entries, comma-separated", what);
        return -1;
    }
    return 0;
}

static int config_check_tls_word(const char *v)
{
    return strcmp(v, "none") == 0 || strcmp(v, "opportunistic") == 0 ||
                   strcmp(v, "require") == 0 || strcmp(v, "verify") == 0
               ? 0
               : -1;
}

static int config_check_rate_word(const char *v)
{
    struct config_rate r;
    return config_parse_rate(v, &r);
}

static int config_check_tls_policy(const char *value, char *why, size_t why_size)
{
    return config_check_map(value, why, why_size, "none|opportunistic|require|verify",
                            config_check_tls_word);
}

static int config_check_rate_limit(const char *value, char *why, size_t why_size)
{
    return config_check_map(value, why, why_size, "N/m, N/h, Nrcpt/m … (s, m, h, d)",
                            config_check_rate_word);
}

int config_split_hostport(const char *s, char *host, size_t host_size, unsigned *port)
{
    const char *colon;
    const char *h = s;
    size_t hlen;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':')
            return -1;
        h = s + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL || memchr(s, ':', (size_t)(colon - s)) != NULL)
            return -1;
        hlen = (size_t)(colon - s);
    }
    uint64_t v;
    if (hlen == 0 || hlen >= host_size || strlen(colon + 1) > 5 ||
        config_parse_uint(colon + 1, &v) < 0 || v < 1 || v > 65535)
        return -1;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (unsigned)v;
    return 0;
}

static int config_check_relayhost(const char *value, char *why, size_t why_size)
{
    char host[256];
    unsigned port;
    if (value[0] == '\0' || config_split_hostport(value, host, sizeof(host), &port) == 0)
        return 0;
    snprintf(why, why_size, "expected HOST:PORT, e.g. smtp.example.net:587 or [192.0.2.1]:465");
    return -1;
}

/* Would binding a and b collide? "*" binds both families. */
static bool config_endpoint_overlaps(const struct config_endpoint *a,
                                     const struct config_endpoint *b)
{
    if (a->port != b->port)
        return false;
    if (a->family == AF_UNSPEC || b->family == AF_UNSPEC) {
        const struct config_endpoint *other = a->family == AF_UNSPEC ? b : a;
        static const unsigned char zero[16];
        return other->family == AF_UNSPEC || memcmp(other->addr, zero, sizeof(zero)) == 0;
    }
    return a->family == b->family && memcmp(a->addr, b->addr, sizeof(a->addr)) == 0;
}

/* ---- storing a value through the table ----------------------------------- */

static void config_store_number(void *field, size_t size, uint64_t v)
{
    if (size == sizeof(uint64_t)) {
        memcpy(field, &v, sizeof(v));
    } else {
        uint32_t v32 = (uint32_t)v; /* bounds in the table keep v below 2^32 */
        memcpy(field, &v32, sizeof(v32));
    }
}

static const char *config_type_noun(enum config_type type)
{
    switch (type) {
    case CONFIG_UINT: return "a number";
    case CONFIG_SIZE: return "a size";
    case CONFIG_DURATION: return "a duration";
    default: return "a value";
    }
}

static const char *config_type_hint(enum config_type type)
{
    switch (type) {
    case CONFIG_SIZE: return " (bytes, or with k, M, G: 10k, 35M)";
    case CONFIG_DURATION: return " (250ms, 30s, 5m, 2h, 1d; bare = seconds)";
    default: return "";
    }
}

static void config_format_bound(const struct config_key *k, uint64_t v, char *buf, size_t size)
{
    if (k->type == CONFIG_SIZE)
        config_format_size(v, buf, size);
    else if (k->type == CONFIG_DURATION)
        config_format_duration(v, buf, size);
    else
        snprintf(buf, size, "%llu", (unsigned long long)v);
}

static int config_set_number(const struct config_key *k, void *field, const char *value,
                             char *why, size_t why_size)
{
    uint64_t v;
    int r = k->type == CONFIG_SIZE       ? config_parse_size(value, &v)
            : k->type == CONFIG_DURATION ? config_parse_duration_ms(value, &v)
                                         : config_parse_uint(value, &v);
    if (r < 0 || v < k->min || v > k->max) {
        char lo[32], hi[32], esc[96];
        config_format_bound(k, k->min, lo, sizeof(lo));
        config_format_bound(k, k->max, hi, sizeof(hi));
        snprintf(why, why_size, "expected %s from %s to %s%s, got \"%s\"",
                 config_type_noun(k->type), lo, hi, config_type_hint(k->type),
                 log_escape(value, strlen(value), esc, sizeof(esc)));
        return -1;
    }
    config_store_number(field, k->size, v);
    return 0;
}

static int config_set_enum(const struct config_key *k, void *field, const char *value,
                           char *why, size_t why_size)
{
    size_t len = strlen(value);
    const char *word = k->enum_values;
    for (int index = 0; word != NULL && *word != '\0'; index++) {
        const char *bar = strchr(word, '|');
        size_t wlen = bar != NULL ? (size_t)(bar - word) : strlen(word);
        if (wlen == len && memcmp(word, value, len) == 0) {
            int stored = k->enum_map != NULL ? k->enum_map[index] : index;
            memcpy(field, &stored, sizeof(stored));
            return 0;
        }
        word = bar != NULL ? bar + 1 : NULL;
    }
    char esc[96];
    snprintf(why, why_size, "expected one of %s, got \"%s\"", k->enum_values,
             log_escape(value, len, esc, sizeof(esc)));
    return -1;
}

static int config_set_string(const struct config_key *k, void *field, const char *value,
                             char *why, size_t why_size)
{
    size_t len = strlen(value);
    if (len < k->min) {
        snprintf(why, why_size, "must not be empty");
        return -1;
    }
    if (len > k->max) {
        snprintf(why, why_size, "too long (%zu bytes, at most %llu)", len,
                 (unsigned long long)k->max);
        return -1;
    }
    if (k->check != NULL && k->check(value, why, why_size) < 0)
        return -1;
    char *copy = strdup(value);
    if (copy == NULL) {
        snprintf(why, why_size, "out of memory");
        return -1;
    }
    char *old;
    memcpy(&old, field, sizeof(old));
    free(old);
    memcpy(field, &copy, sizeof(copy));
    return 0;
}

static void config_list_clear(char **items, size_t *count)
{
    for (size_t i = 0; i < *count; i++) {
        free(items[i]);
        items[i] = NULL;
    }
    *count = 0;
}

/* "a, b,c": entries trimmed of blanks, each one checked, min..max of them. */
static int config_set_list(const struct config_key *k, void *field, const char *value,
                           char *why, size_t why_size)
{
    char **items = field;
    size_t *count = (size_t *)((char *)field + k->size);
    size_t capacity = k->size / sizeof(char *);
    char *tmp[CONFIG_MAX_ADDRESSES];
    size_t n = 0;
    const char *p = value;
    if (*p == '\0') {
        snprintf(why, why_size, "expected %llu to %llu comma-separated entries, got none",
                 (unsigned long long)k->min, (unsigned long long)k->max);
        return -1;
    }
    for (;;) {
        const char *comma = strchr(p, ',');
        const char *end = comma != NULL ? comma : p + strlen(p);
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if (end == p) {
            snprintf(why, why_size, "empty entry in the comma-separated list");
            goto fail;
        }
        if (n == k->max || n == capacity || n == sizeof(tmp) / sizeof(tmp[0])) {
            snprintf(why, why_size, "too many entries (at most %llu)", (unsigned long long)k->max);
            goto fail;
        }
        tmp[n] = strndup(p, (size_t)(end - p));
        if (tmp[n] == NULL) {
            snprintf(why, why_size, "out of memory");
            goto fail;
        }
        n++;
        if (k->check != NULL && k->check(tmp[n - 1], why, why_size) < 0)
            goto fail;
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    if (n < k->min) {
        snprintf(why, why_size, "expected at least %llu entries", (unsigned long long)k->min);
        goto fail;
    }
    config_list_clear(items, count);
    memcpy(items, tmp, n * sizeof(tmp[0]));
    *count = n;
    return 0;
fail:
    config_list_clear(tmp, &n);
    return -1;
}

/* Parses value as key k into the struct at base (struct config, or struct
 * listener_config for section "listener"). On error writes a reason. */
static int config_key_set(const struct config_key *k, void *base, const char *value, char *why,
                          size_t why_size)
{
    void *field = (char *)base + k->offset;
    switch (k->type) {
    case CONFIG_STRING: return config_set_string(k, field, value, why, why_size);
    case CONFIG_BOOL: {
        bool b;
        char esc[96];
        if (config_parse_bool(value, &b) < 0) {
            snprintf(why, why_size, "expected yes or no, got \"%s\"",
                     log_escape(value, strlen(value), esc, sizeof(esc)));
            return -1;
        }
        memcpy(field, &b, sizeof(b));
        return 0;
    }
    case CONFIG_UINT:
    case CONFIG_SIZE:
    case CONFIG_DURATION: return config_set_number(k, field, value, why, why_size);
    case CONFIG_ENUM: return config_set_enum(k, field, value, why, why_size);
    case CONFIG_LIST: return config_set_list(k, field, value, why, why_size);
    }
    snprintf(why, why_size, "unsupported key type");
    return -1;
}

static const struct config_key *config_key_find(const char *section, const char *name)
{
    for (size_t i = 0; i < CONFIG_KEY_COUNT; i++)
        if (strcmp(config_key_table[i].section, section) == 0 &&
            strcmp(config_key_table[i].name, name) == 0)
            return &config_key_table[i];
    return NULL;
}

static bool config_is_listener_section(const char *section)
{
    return strcmp(section, "listener") == 0;
}

/* Applies every default of one section group ("listener" or all the others). */
static int config_apply_defaults(void *base, bool listener, char *why, size_t why_size)
{
    for (size_t i = 0; i < CONFIG_KEY_COUNT; i++) {
        const struct config_key *k = &config_key_table[i];
        if (config_is_listener_section(k->section) != listener)
            continue;
        if (k->type == CONFIG_LIST && k->default_value[0] == '\0')
            continue; /* required list: no default entries */
        if (config_key_set(k, base, k->default_value, why, why_size) < 0)
            return -1;
    }
    return 0;
}

static void config_free_strings(void *base, bool listener)
{
    for (size_t i = 0; i < CONFIG_KEY_COUNT; i++) {
        const struct config_key *k = &config_key_table[i];
        if (config_is_listener_section(k->section) != listener)
            continue;
        void *field = (char *)base + k->offset;
        if (k->type == CONFIG_STRING) {
            char *s;
            memcpy(&s, field, sizeof(s));
            free(s);
        } else if (k->type == CONFIG_LIST) {
            config_list_clear(field, (size_t *)((char *)field + k->size));
        }
    }
}

void config_free(struct config *cfg)
{
    if (cfg == NULL)
        return;
    config_free_strings(cfg, false);
    for (size_t i = 0; i < cfg->listener_count; i++)
        config_free_strings(&cfg->listeners[i], true);
    free(cfg->path);
    free(cfg);
}

static struct listener_config *config_listener_add(struct config *cfg, const char *name,
                                                   char *why, size_t why_size)
{
    if (cfg->listener_count >= CONFIG_MAX_LISTENERS) {
        snprintf(why, why_size, "too many listeners (at most %d)", CONFIG_MAX_LISTENERS);
        return NULL;
    }
    struct listener_config *l = &cfg->listeners[cfg->listener_count++];
    memset(l, 0, sizeof(*l));
    snprintf(l->name, sizeof(l->name), "%s", name);
    if (config_apply_defaults(l, true, why, why_size) < 0)
        return NULL; /* already counted, so config_free releases it */
    return l;
}

static int config_add_default_listeners(struct config *cfg, char *why, size_t why_size)
{
    const struct config_key *address = config_key_find("listener", "address");
    const struct config_key *mode = config_key_find("listener", "mode");
    for (size_t i = 0; i < sizeof(config_default_listeners) / sizeof(config_default_listeners[0]);
         i++) {
        struct listener_config *l =
            config_listener_add(cfg, config_default_listeners[i].name, why, why_size);
        if (l == NULL || config_key_set(address, l, config_default_listeners[i].address, why,
                                        why_size) < 0 ||
            config_key_set(mode, l, config_default_listeners[i].mode, why, why_size) < 0)
            return -1;
    }
    return 0;
}

/* Everything but listeners, with an empty hostname resolved. */
static struct config *config_new_base(char *why, size_t why_size)
{
    struct config *cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL) {
        snprintf(why, why_size, "out of memory");
        return NULL;
    }
    if (config_apply_defaults(cfg, false, why, why_size) < 0) {
        config_free(cfg);
        return NULL;
    }
    return cfg;
}

/* hostname = "" (the default) means this machine's name, as Postfix's myhostname. */
static int config_resolve_hostname(struct config *cfg, char *why, size_t why_size)
{
    if (cfg->hostname[0] != '\0')
        return 0;
    char name[256];
    char ignored[8];
    if (gethostname(name, sizeof(name)) < 0)
        name[0] = '\0';
    name[sizeof(name) - 1] = '\0'; /* POSIX leaves a cut name unterminated */
    if (name[0] == '\0' || strlen(name) > 253 ||
        config_check_hostname(name, ignored, sizeof(ignored)) < 0)
        snprintf(name, sizeof(name), "localhost");
    char *copy = strdup(name);
    if (copy == NULL) {
        snprintf(why, why_size, "out of memory");
        return -1;
    }
    free(cfg->hostname);
    cfg->hostname = copy;
    return 0;
}

struct config *config_defaults(void)
{
    char why[CONFIG_ERR_MAX];
    struct config *cfg = config_new_base(why, sizeof(why));
    if (cfg == NULL)
        return NULL;
    if (config_add_default_listeners(cfg, why, sizeof(why)) < 0 ||
        config_resolve_hostname(cfg, why, sizeof(why)) < 0) {
        config_free(cfg);
        return NULL;
    }
    return cfg;
}

/* ---- reading the file ---------------------------------------------------- */

struct config_parser {
    const char *path;
    FILE *fp;
    struct config *cfg;
    unsigned lineno; /* lines handed to libinih so far: the line it is parsing */

    /* the section opened by the last header line */
    char section[CONFIG_SECTION_MAX + 1];
    bool in_section;
    struct listener_config *listener; /* when section is [listener NAME] */
    size_t listener_index;

    /* line each key was set on; 0 = still its default */
    unsigned key_line[CONFIG_KEY_COUNT];
    unsigned listener_line[CONFIG_MAX_LISTENERS];
    unsigned listener_key_line[CONFIG_MAX_LISTENERS][CONFIG_KEY_COUNT];

    bool failed;
    unsigned err_line; /* 0: the error concerns the whole file */
    char err[CONFIG_ERR_MAX];
};

static void config_fail(struct config_parser *p, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void config_fail(struct config_parser *p, unsigned line, const char *fmt, ...)
{
    if (p->failed)
        return; /* the first error is the one worth reading */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof(p->err), fmt, ap);
    va_end(ap);
    p->failed = true;
    p->err_line = line;
}

static const char *config_escape(const char *s, char *buf, size_t size)
{
    return log_escape(s, strlen(s), buf, size);
}

static bool config_is_known_section(const char *section)
{
    for (size_t i = 0; i < CONFIG_KEY_COUNT; i++)
        if (!config_is_listener_section(config_key_table[i].section) &&
            strcmp(config_key_table[i].section, section) == 0)
            return true;
    return false;
}

static bool config_listener_name_ok(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > CONFIG_LISTENER_NAME_MAX)
        return false;
    for (const char *c = name; *c != '\0'; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
              (*c >= '0' && *c <= '9') || *c == '_' || *c == '-'))
            return false;
    return true;
}

/* A "[...]" line was read: the section becomes current here rather than in
 * the value handler, because libinih never reports a section without keys
 * (an empty [listener NAME] must still be an error, not silently dropped). */
static void config_open_section(struct config_parser *p, const char *text, size_t len)
{
    char esc[2 * CONFIG_SECTION_MAX];
    char section[CONFIG_SECTION_MAX + 1];
    if (len > CONFIG_SECTION_MAX) {
        config_fail(p, p->lineno, "section header too long (at most %d characters between [ ])",
                    CONFIG_SECTION_MAX);
        return;
    }
    memcpy(section, text, len);
    section[len] = '\0';
    memcpy(p->section, section, len + 1);
    p->in_section = true;
    p->listener = NULL;
    if (config_is_known_section(section))
        return;
    if (strncmp(section, "listener", 8) != 0 ||
        (section[8] != '\0' && section[8] != ' ' && section[8] != '\t')) {
        config_fail(p, p->lineno,
                    "[%s]: unknown section (expected server, log, tls, limits, auth, queue "
                    "or listener NAME)",
                    config_escape(section, esc, sizeof(esc)));
        return;
    }
    /* "[listener NAME]": libinih keeps inner blanks, so trim around NAME */
    char *name = section + 8;
    while (*name == ' ' || *name == '\t')
        name++;
    char *end = name + strlen(name);
    while (end > name && (end[-1] == ' ' || end[-1] == '\t'))
        *--end = '\0';
    if (!config_listener_name_ok(name)) {
        config_fail(p, p->lineno,
                    "[%s]: expected [listener NAME], NAME being 1 to %d letters, digits, "
                    "'_' or '-'",
                    config_escape(p->section, esc, sizeof(esc)), CONFIG_LISTENER_NAME_MAX);
        return;
    }
    for (size_t i = 0; i < p->cfg->listener_count; i++) {
        if (strcmp(p->cfg->listeners[i].name, name) == 0) {
            config_fail(p, p->lineno, "[%s]: duplicate listener name (first defined on line %u)",
                        p->section, p->listener_line[i]);
            return;
        }
    }
    char why[CONFIG_ERR_MAX / 2];
    size_t index = p->cfg->listener_count;
    struct listener_config *l = config_listener_add(p->cfg, name, why, sizeof(why));
    if (l == NULL) {
        config_fail(p, p->lineno, "[%s]: %s", p->section, why);
        return;
    }
    p->listener = l;
    p->listener_index = index;
    p->listener_line[index] = p->lineno;
}

/* libinih's ini_reader: one line into str (at most num - 2 bytes, so that
 * every libinih version sees a complete line). Also counts lines, which
 * libinih's handler is not told, hides leading blanks (so an indented key is
 * never taken for a Python-style continuation line), and spots headers. */
static char *config_read_line(char *str, int num, void *stream)
{
    struct config_parser *p = stream;
    if (p->failed || num < 3)
        return NULL;
    size_t max = (size_t)num - 2;
    size_t len = 0;
    int c;
    bool got_any = false;
    while ((c = getc(p->fp)) != EOF) {
        got_any = true;
        if (c == '\n')
            break;
        if (c == '\0') {
            config_fail(p, p->lineno + 1, "NUL byte in line (is this a text file?)");
            return NULL;
        }
        if (len == max) {
            config_fail(p, p->lineno + 1, "line too long (at most %zu bytes)", max);
            return NULL;
        }
        str[len++] = (char)c;
    }
    if (!got_any) {
        if (ferror(p->fp))
            config_fail(p, 0, "cannot read: %s", strerror(errno));
        return NULL;
    }
    str[len] = '\0';
    p->lineno++;
    size_t skip = 0;
    if (p->lineno == 1 && len >= 3 && memcmp(str, "\xEF\xBB\xBF", 3) == 0)
        skip = 3; /* UTF-8 byte order mark from Windows editors */
    while (skip < len && (str[skip] == ' ' || str[skip] == '\t' || str[skip] == '\r' ||
                          str[skip] == '\v' || str[skip] == '\f'))
        skip++;
    memmove(str, str + skip, len - skip + 1);
    if (str[0] == '[') {
        /* libinih takes the text up to the first ']'; without one the line
         * is its syntax error, reported from its return value. */
        const char *close = strchr(str, ']');
        if (close != NULL)
            config_open_section(p, str + 1, (size_t)(close - str - 1));
        if (p->failed)
            return NULL;
    }
    return str;
}

/* libinih's handler, once per "key = value" line. */
static int config_on_value(void *user, const char *section, const char *name, const char *value)
{
    struct config_parser *p = user;
    char esc_section[2 * CONFIG_SECTION_MAX], esc_name[128];
    if (p->failed)
        return 0;
    if (!p->in_section) {
        config_fail(p, p->lineno, "%s: key outside of any section (start with e.g. [server])",
                    config_escape(name, esc_name, sizeof(esc_name)));
        return 0;
    }
    /* libinih's copy of the section may be cut short; ours is whole */
    if (strncmp(section, p->section, strlen(section)) != 0) {
        config_fail(p, p->lineno, "[%s]: section header not understood",
                    config_escape(section, esc_section, sizeof(esc_section)));
        return 0;
    }
    section = p->section;
    const char *kind = p->listener != NULL ? "listener" : section;
    const struct config_key *k = config_key_find(kind, name);
    if (k == NULL) {
        config_fail(p, p->lineno, "[%s] %s: unknown key",
                    config_escape(section, esc_section, sizeof(esc_section)),
                    config_escape(name, esc_name, sizeof(esc_name)));
        return 0;
    }
    size_t index = (size_t)(k - config_key_table);
    unsigned *line = p->listener != NULL ? &p->listener_key_line[p->listener_index][index]
                                         : &p->key_line[index];
    if (*line != 0) {
        config_fail(p, p->lineno, "[%s] %s: duplicate key (already set on line %u)", section,
                    name, *line);
        return 0;
    }
    *line = p->lineno;
    char why[CONFIG_ERR_MAX / 2];
    void *base = p->listener != NULL ? (void *)p->listener : (void *)p->cfg;
    if (config_key_set(k, base, value, why, sizeof(why)) < 0) {
        config_fail(p, p->lineno, "[%s] %s: %s", section, name, why);
        return 0;
    }
    return 1;
}

static size_t config_key_index(const char *section, const char *name)
{
    return (size_t)(config_key_find(section, name) - config_key_table);
}

/* For a rule between two keys, the line to blame: the key the admin wrote
 * (prefer the first), since a default cannot be wrong on its own. */
static bool config_blame(const unsigned *lines, const char *section, const char *first,
                         const char *second, const char **name, unsigned *line)
{
    unsigned a = lines[config_key_index(section, first)];
    unsigned b = lines[config_key_index(section, second)];
    *name = a != 0 ? first : second;
    *line = a != 0 ? a : b;
    return a != 0;
}

/* One trusted network entry "CIDR=ACCOUNT": parsed into its parts. */
struct config_trusted {
    int family;
    unsigned char addr[16];
    unsigned bits;
    char account[256];
};

static int config_parse_trusted(const char *key, const char *value, struct config_trusted *t)
{
    char ip[64];
    const char *slash = strchr(key, '/');
    size_t n = slash ? (size_t)(slash - key) : strlen(key);
    if (n == 0 || n >= sizeof(ip))
        return -1;
    memcpy(ip, key, n);
    ip[n] = '\0';
    memset(t, 0, sizeof(*t));
    if (inet_pton(AF_INET, ip, t->addr) == 1) {
        t->family = AF_INET;
        t->bits = 32;
    } else if (inet_pton(AF_INET6, ip, t->addr) == 1) {
        t->family = AF_INET6;
        t->bits = 128;
    } else {
        return -1;
    }
    if (slash != NULL) {
        uint64_t b;
        if (config_parse_uint(slash + 1, &b) < 0 || b > t->bits)
            return -1;
        t->bits = (unsigned)b;
    }
    size_t vlen = strlen(value);
    if (vlen == 0 || vlen >= sizeof(t->account))
        return -1;
    for (const char *c = value; *c; c++)
        if ((unsigned char)*c <= ' ' || (unsigned char)*c > '~')
            return -1;
    memcpy(t->account, value, vlen + 1);
    return 0;
}

/* RFC 1918, loopback, link-local, CGNAT (IPv4); ULA, link-local, loopback (IPv6). */
static bool config_trusted_is_private(const struct config_trusted *t)
{
    const unsigned char *a = t->addr;
    if (t->family == AF_INET)
        return (a[0] == 10 && t->bits >= 8) || (a[0] == 172 && (a[1] & 0xf0) == 16 && t->bits >= 12) ||
               (a[0] == 192 && a[1] == 168 && t->bits >= 16) || (a[0] == 127 && t->bits >= 8) ||
               (a[0] == 169 && a[1] == 254 && t->bits >= 16) ||
               (a[0] == 100 && (a[1] & 0xc0) == 64 && t->bits >= 10);
    static const unsigned char loop6[16] = {[15] = 1};
    return ((a[0] & 0xfe) == 0xfc && t->bits >= 7) || (a[0] == 0xfe && (a[1] & 0xc0) == 0x80 &&
                                                       t->bits >= 10) ||
           (memcmp(a, loop6, 16) == 0 && t->bits == 128);
}

static int config_check_trusted(const char *value, char *why, size_t why_size)
{
    const char *p = value;
    char key[128], account[256];
    int rc;
    while ((rc = config_map_next(&p, key, sizeof(key), account, sizeof(account))) > 0) {
        struct config_trusted t;
        if (config_parse_trusted(key, account, &t) < 0) {
            snprintf(why, why_size, "bad entry \"%s=%s\": expected CIDR=ACCOUNT, e.g. "
                                    "192.168.10.0/24=printers", key, account);
            return -1;
        }
    }
    if (rc < 0) {
        snprintf(why, why_size, "expected CIDR=ACCOUNT entries, comma-separated");
        return -1;
    }
    return 0;
}

/* An address in text into family + bytes; IPv4-mapped IPv6 as IPv4. */
static int config_parse_ip(const char *ip, int *family, unsigned char a[16])
{
    if (inet_pton(AF_INET, ip, a) == 1) {
        *family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, ip, a) == 1) {
        *family = AF_INET6;
        static const unsigned char mapped[12] = {[10] = 0xff, [11] = 0xff};
        if (memcmp(a, mapped, 12) == 0) {
            memmove(a, a + 12, 4);
            *family = AF_INET;
        }
        return 0;
    }
    return -1;
}

static bool config_trusted_contains(const struct config_trusted *t, int family,
                                    const unsigned char *a)
{
    if (t->family != family)
        return false;
    unsigned full = t->bits / 8, rest = t->bits % 8;
    if (memcmp(a, t->addr, full) != 0)
        return false;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (a[full] & mask) == (t->addr[full] & mask);
}

bool config_network_is_valid(const char *network)
{
    struct config_trusted t;
    return config_parse_trusted(network, "-", &t) == 0;
}

bool config_ip_in_network(const char *network, const char *client_ip)
{
    struct config_trusted t;
    unsigned char a[16];
    int family;
    return config_parse_trusted(network, "-", &t) == 0 &&
           config_parse_ip(client_ip, &family, a) == 0 && config_trusted_contains(&t, family, a);
}

const char *config_trusted_account(const struct listener_config *l, const char *client_ip,
                                   char *out, size_t out_size)
{
    if (l->trusted_networks == NULL || l->trusted_networks[0] == '\0')
        return NULL;
    unsigned char a[16];
    int family;
    if (config_parse_ip(client_ip, &family, a) < 0)
        return NULL;
    const char *p = l->trusted_networks;
    char key[128], account[256];
    while (config_map_next(&p, key, sizeof(key), account, sizeof(account)) > 0) {
        struct config_trusted t;
        if (config_parse_trusted(key, account, &t) < 0 || !config_trusted_contains(&t, family, a))
            continue;
        snprintf(out, out_size, "%s", t.account);
        return out;
    }
    return NULL;
}

/* Rules that involve more than one key, checked once the file is read. */
static void config_check_relations(struct config_parser *p)
{
    struct config *cfg = p->cfg;
    const char *name;
    unsigned line;
    char a[32], b[32];

    if (cfg->auth_max_delay_ms < cfg->auth_failure_delay_ms) {
        bool blame_max = config_blame(p->key_line, "auth", "max_delay", "failure_delay", &name,
                                      &line);
        config_format_duration(cfg->auth_max_delay_ms, a, sizeof(a));
        config_format_duration(cfg->auth_failure_delay_ms, b, sizeof(b));
        if (blame_max)
            config_fail(p, line, "[auth] max_delay: must be at least failure_delay (%s)", b);
        else
            config_fail(p, line, "[auth] failure_delay: must not exceed max_delay (%s)", a);
        return;
    }
    if ((cfg->cert2_file[0] == '\0') != (cfg->key2_file[0] == '\0')) {
        bool cert2_set = cfg->cert2_file[0] != '\0';
        line = p->key_line[config_key_index("tls", cert2_set ? "cert2_file" : "key2_file")];
        config_fail(p, line, "[tls] %s: set together with %s, or neither",
                    cert2_set ? "cert2_file" : "key2_file", cert2_set ? "key2_file" : "cert2_file");
        return;
    }

    size_t address_index = config_key_index("listener", "address");
    size_t mode_index = config_key_index("listener", "mode");
    for (size_t i = 0; i < cfg->listener_count; i++) {
        const struct listener_config *l = &cfg->listeners[i];
        if (l->address_count == 0) {
            config_fail(p, p->listener_line[i],
                        "[listener %s] address: missing (a listener needs at least one)", l->name);
            return;
        }
        if (l->trusted_networks != NULL && l->trusted_networks[0] != '\0' &&
            !l->trusted_networks_force) {
            const char *q = l->trusted_networks;
            char key[128], account[256];
            size_t tn_index = config_key_index("listener", "trusted_networks");
            while (config_map_next(&q, key, sizeof(key), account, sizeof(account)) > 0) {
                struct config_trusted t;
                if (config_parse_trusted(key, account, &t) < 0)
                    continue;
                unsigned min_bits = t.family == AF_INET ? 16 : 48;
                if (t.bits < min_bits || !config_trusted_is_private(&t)) {
                    config_fail(p, p->listener_key_line[i][tn_index],
                                "[listener %s] trusted_networks: %s is %s; mail from it needs no "
                                "password, so this is refused unless trusted_networks_force = yes",
                                l->name, key,
                                t.bits < min_bits ? (t.family == AF_INET ? "wider than /16"
                                                                         : "wider than /48")
                                                  : "not a private range");
                    return;
                }
            }
        }
        if (l->mode == LISTENER_PLAIN && !l->allow_plaintext_auth) {
            config_fail(p, p->listener_key_line[i][mode_index],
                        "[listener %s] mode: plain needs allow_plaintext_auth = yes (without "
                        "TLS, AUTH is refused otherwise)",
                        l->name);
            return;
        }
        /* SO_REUSEPORT would let two listeners bind the same endpoint silently */
        for (size_t j = 0; j <= i; j++) {
            const struct listener_config *o = &cfg->listeners[j];
            for (size_t x = 0; x < l->address_count; x++) {
                size_t y_end = j == i ? x : o->address_count;
                for (size_t y = 0; y < y_end; y++) {
                    struct config_endpoint ex, ey;
                    if (config_parse_endpoint(l->addresses[x], &ex) < 0 ||
                        config_parse_endpoint(o->addresses[y], &ey) < 0 ||
                        !config_endpoint_overlaps(&ex, &ey))
                        continue;
                    config_fail(p, p->listener_key_line[i][address_index],
                                "[listener %s] address: %s overlaps %s of listener %s", l->name,
                                l->addresses[x], o->addresses[y], o->name);
                    return;
                }
            }
        }
    }
}

static void config_write_error(char *err, size_t err_size, const char *path, unsigned line,
                               const char *msg)
{
    if (err == NULL || err_size == 0)
        return;
    if (line != 0)
        snprintf(err, err_size, "%s:%u: %s", path, line, msg);
    else
        snprintf(err, err_size, "%s: %s", path, msg);
}

int config_load(const char *path, struct config **out, char *err, size_t err_size)
{
    *out = NULL;
    struct config_parser *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        config_write_error(err, err_size, path, 0, "out of memory");
        return -1;
    }
    p->path = path;
    p->fp = fopen(path, "re");
    struct stat st;
    if (p->fp == NULL || fstat(fileno(p->fp), &st) < 0 || S_ISDIR(st.st_mode)) {
        int e = p->fp == NULL ? errno : S_ISDIR(st.st_mode) ? EISDIR : errno;
        config_fail(p, 0, "cannot open: %s", strerror(e));
        goto done;
    }
    p->cfg = config_new_base(p->err, sizeof(p->err));
    if (p->cfg == NULL || (p->cfg->path = strdup(path)) == NULL) {
        config_fail(p, 0, "out of memory");
        goto done;
    }
    int r = ini_parse_stream(config_read_line, p, config_on_value, p);
    if (r > 0 && (!p->failed || (unsigned)r < p->err_line)) {
        /* libinih's own complaint, earlier than anything we found */
        p->failed = false;
        config_fail(p, (unsigned)r, "syntax error: expected [section] or key = value");
    } else if (r < 0) {
        config_fail(p, 0, "out of memory");
    }
    if (p->failed)
        goto done;
    if (p->cfg->listener_count == 0) {
        char why[CONFIG_ERR_MAX / 2];
        if (config_add_default_listeners(p->cfg, why, sizeof(why)) < 0) {
            config_fail(p, 0, "%s", why);
            goto done;
        }
    }
    config_check_relations(p);
    if (!p->failed) {
        char why[CONFIG_ERR_MAX / 2];
        if (config_resolve_hostname(p->cfg, why, sizeof(why)) < 0)
            config_fail(p, 0, "%s", why);
    }
done:
    if (p->fp != NULL)
        fclose(p->fp);
    int rc = 0;
    if (p->failed) {
        config_write_error(err, err_size, path, p->err_line, p->err);
        config_free(p->cfg);
        rc = -1;
    } else {
        *out = p->cfg;
    }
    free(p);
    return rc;
}

/* ---- the default file ---------------------------------------------------- */

static void config_write_constraint(FILE *fp, const struct config_key *k)
{
    char lo[32], hi[32];
    switch (k->type) {
    case CONFIG_UINT:
    case CONFIG_SIZE:
    case CONFIG_DURATION:
        config_format_bound(k, k->min, lo, sizeof(lo));
        config_format_bound(k, k->max, hi, sizeof(hi));
        fprintf(fp, "# %s from %s to %s.\n", k->type == CONFIG_UINT ? "A number"
                                             : k->type == CONFIG_SIZE ? "A size"
                                                                      : "A duration",
                lo, hi);
        break;
    case CONFIG_BOOL: fprintf(fp, "# Yes or no.\n"); break;
    case CONFIG_ENUM: fprintf(fp, "# One of: %s.\n", k->enum_values); break;
    case CONFIG_LIST:
        fprintf(fp, "# %llu to %llu entries.\n", (unsigned long long)k->min,
                (unsigned long long)k->max);
        break;
    case CONFIG_STRING: break;
    }
}

static void config_write_key(FILE *fp, const struct config_key *k, const char *value)
{
    fprintf(fp, "\n# %s\n", k->doc);
    config_write_constraint(fp, k);
    if (value[0] != '\0')
        fprintf(fp, "#%s = %s\n", k->name, value);
    else
        fprintf(fp, "#%s =\n", k->name);
}

void config_write_defaults(FILE *fp)
{
    fputs("# smarthost.conf: configuration of smarthostd and smarthostctl.\n"
          "#\n"
          "# Every key is shown commented out, with its default value. Uncomment a\n"
          "# line to change it; check the result with `smarthostctl config check`.\n"
          "# smarthost.conf(5) documents every key.\n"
          "#\n"
          "# Durations: 250ms, 30s, 5m, 2h, 1d (a bare number means seconds).\n"
          "# Sizes: 10k, 35M, 2G (powers of 1024; a bare number means bytes).\n"
          "# Booleans: yes or no (also true/false, on/off, 1/0).\n",
          fp);
    const char *section = NULL;
    for (size_t i = 0; i < CONFIG_KEY_COUNT; i++) {
        const struct config_key *k = &config_key_table[i];
        if (config_is_listener_section(k->section))
            continue;
        if (section == NULL || strcmp(section, k->section) != 0) {
            section = k->section;
            fprintf(fp, "\n[%s]\n", section);
        }
        config_write_key(fp, k, k->default_value);
    }

    fprintf(fp, "\n# [listener NAME]: where to accept mail; NAME is 1 to %d letters,\n"
                "# digits, '_' or '-', up to %d listeners. A file without any listener\n"
                "# section gets these two:\n",
            CONFIG_LISTENER_NAME_MAX, CONFIG_MAX_LISTENERS);
    const struct config_key *address = config_key_find("listener", "address");
    const struct config_key *mode = config_key_find("listener", "mode");
    for (size_t d = 0; d < sizeof(config_default_listeners) / sizeof(config_default_listeners[0]);
         d++) {
        fprintf(fp, "\n#[listener %s]\n", config_default_listeners[d].name);
        for (size_t i = 0; i < CONFIG_KEY_COUNT; i++) {
            const struct config_key *k = &config_key_table[i];
            if (!config_is_listener_section(k->section))
                continue;
            const char *value = k == address ? config_default_listeners[d].address
                                : k == mode  ? config_default_listeners[d].mode
                                             : k->default_value;
            if (d == 0)
                config_write_key(fp, k, value);
            else if (k == address || k == mode)
                fprintf(fp, "#%s = %s\n", k->name, value); /* the rest as above */
        }
    }
}

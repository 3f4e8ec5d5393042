/* config.h — smarthost.conf: an INI file parsed with libinih and checked
 * against one table of keys (name, type, default, bounds, doc line). That
 * table drives parsing, `smarthostd --check-config`, `smarthostctl config
 * check` and the smarthost.conf(5) key list. libuv-free.
 *
 * Sections: [server] [log] [tls] [limits] [auth] [queue] [relay], and any number of
 * [listener NAME] sections. A file with no listener section gets the default
 * pair: "submission" (0.0.0.0:587 and [::]:587, starttls) and "submissions"
 * (0.0.0.0:465 and [::]:465, implicit TLS). Errors name file:line:key. */
#ifndef SMARTHOST_CONFIG_H
#define SMARTHOST_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/log.h"

#define CONFIG_MAX_ADDRESSES 8
#define CONFIG_MAX_LISTENERS 16

enum listener_mode {
    LISTENER_STARTTLS, /* port 587: STARTTLS required before AUTH or MAIL */
    LISTENER_IMPLICIT, /* port 465: TLS from the first byte (RFC 8314) */
    LISTENER_PLAIN,    /* no TLS offered at all; only with allow_plaintext_auth */
};

enum bare_lf_policy {
    BARE_LF_NORMALIZE, /* bare LF / bare CR inside DATA become CRLF (default) */
    BARE_LF_REJECT,    /* the message is refused with 550 5.6.0 */
};

struct listener_config {
    char name[64];                            /* from "[listener NAME]" */
    char *addresses[CONFIG_MAX_ADDRESSES];    /* "127.0.0.1:587", "[::1]:587", "*:587" */
    size_t address_count;
    enum listener_mode mode;
    char *tls_priority;        /* GnuTLS priority string */
    enum bare_lf_policy bare_lf;
    bool allow_plaintext_auth; /* AUTH without TLS (legacy devices, trusted LAN) */
    /* devices that cannot do TLS or AUTH: "192.0.2.0/24=printers, …", each
     * network mapped to the account whose policy and quotas apply */
    char *trusted_networks;
    bool trusted_networks_force; /* allow wider than /16 (/48) or public ranges */
};

struct config {
    char *path;

    /* [server] */
    char *hostname;          /* banner, Received:, Message-ID; default gethostname() */
    char *user;              /* drop to this user after binding; "" = stay */
    char *database;          /* SQLite file: accounts, quotas, queue */
    unsigned threads;        /* event loops; 0 = one per online core */

    /* [log] */
    enum log_target log_target;
    enum log_level log_level;

    /* [tls] */
    char *cert_file;         /* PEM chain (RSA or ECDSA) */
    char *key_file;
    char *cert2_file;        /* optional second pair, e.g. ECDSA beside RSA */
    char *key2_file;

    /* [limits] */
    uint64_t max_message_size;   /* bytes, advertised in EHLO SIZE */
    unsigned max_recipients;     /* per message: 452 4.5.3 beyond */
    unsigned max_line_length;    /* command line, bytes incl. CRLF: 500 5.5.2 */
    unsigned max_errors;         /* per session, then 421 4.7.0 and close */
    uint64_t idle_timeout_ms;    /* no input for this long: 421 4.4.2 */
    uint64_t session_timeout_ms; /* whole session: 421 4.4.2 */
    unsigned max_connections;        /* in total: 421 4.7.0 */
    unsigned max_connections_per_ip; /* per client address: 421 4.7.0 */

    /* [auth] */
    unsigned auth_failure_delay_ms;   /* first failed AUTH waits this long; doubles */
    unsigned auth_max_delay_ms;       /* cap of that delay */
    unsigned auth_ip_lockout_failures;      /* failures per client IP before lockout */
    unsigned auth_account_lockout_failures; /* failures per account before lockout */
    uint64_t auth_lockout_ms;         /* how long a lockout lasts */
    uint64_t auth_failure_window_ms;  /* failures older than this are forgotten */
    unsigned auth_cache_size;         /* verified credentials kept (0 = no cache) */

    /* [queue] */
    uint64_t queue_busy_timeout_ms;   /* SQLite busy wait before 452 4.3.1 */

    /* [accounts] — defaults for every account (smarthostctl overrides per account) */
    uint64_t acct_msgs_per_hour;      /* 0 = unlimited */
    uint64_t acct_msgs_per_day;
    uint64_t acct_rcpts_per_day;
    uint64_t acct_bytes_per_day;

    /* [relay] — the delivery half (relay/) */
    bool relay_enabled;               /* run the queue runner in smarthostd */
    char *relay_helo_name;            /* EHLO name; "" = [server] hostname */
    unsigned relay_port;              /* destination port for MX delivery (25) */
    char *relay_dns_servers;          /* "" = /etc/resolv.conf; "127.0.0.1:5353,…" */
    int relay_ip_family;              /* enum dns_family_policy order of words */
    uint64_t relay_dns_timeout_ms;
    uint64_t relay_connect_timeout_ms;
    uint64_t relay_command_timeout_ms;
    uint64_t relay_data_timeout_ms;
    unsigned relay_max_deliveries;    /* concurrent deliveries in total */
    unsigned relay_max_per_domain;    /* … per destination domain */
    unsigned relay_max_per_ip;        /* … per destination address */
    uint64_t relay_connection_cache_time_ms; /* keep an idle connection; 0 = close at once */
    int relay_tls;                    /* enum client_tls_policy order of words */
    char *relay_tls_policy;           /* "domain=verify, domain2=none" overrides */
    char *relay_rate_limit;           /* "domain=30/m, relayhost=600/h" */
    uint64_t relay_retry_first_ms;    /* first retry after this; doubles */
    uint64_t relay_retry_max_ms;      /* cap of the backoff */
    uint64_t relay_max_lifetime_ms;   /* then bounce */
    uint64_t relay_delay_warning_ms;  /* 0 = no delay warnings */
    uint64_t relay_keep_done_ms;      /* keep finished messages for queue show */
    int relay_bounce_to;              /* 0 sender, 1 admin, 2 both */
    char *relay_admin_address;
    char *relay_relayhost;            /* "" = MX delivery; "host:port" */
    char *relay_relayhost_domains;    /* "" = all mail; else "a.test, b.test" */
    int relay_relayhost_security;     /* 0 starttls, 1 implicit */
    bool relay_relayhost_verify;      /* verify its certificate (default yes) */
    char *relay_relayhost_credentials;/* file: "user:password" line, daemon-only */
    char *relay_ca_file;              /* "" = system trust store */
    char *relay_control_socket;       /* smarthostctl → daemon */

    struct listener_config listeners[CONFIG_MAX_LISTENERS];
    size_t listener_count;
};

enum config_type {
    CONFIG_STRING, CONFIG_BOOL, CONFIG_UINT, CONFIG_SIZE, CONFIG_DURATION, CONFIG_ENUM,
    CONFIG_LIST, /* comma-separated strings (listener addresses) */
};

struct config_key {
    const char *section;   /* "server", "limits", … or "listener" for [listener NAME] */
    const char *name;
    enum config_type type;
    const char *default_value; /* as written in the file ("35M", "5m", "yes") */
    uint64_t min, max;         /* bounds for UINT/SIZE/DURATION (ms) */
    const char *enum_values;   /* "starttls|implicit|plain" for ENUM */
    const char *doc;           /* one line for smarthost.conf(5) and --help */

    /* Added with config.c: where config_load stores the parsed value, so the
     * table alone drives parsing (no per-key code). STRING values also use
     * min/max as length bounds, LIST values as entry-count bounds. */
    size_t offset;             /* into struct config, or struct listener_config */
    size_t size;               /* sizeof that member (numbers: 4 or 8 bytes) */
    const int *enum_map;       /* ENUM: value stored per enum_values word; NULL = index */
    /* Extra check of one value (one LIST entry) after type and bounds; NULL =
     * none. Returns 0, or -1 with a reason ("expected …") written to why. */
    int (*check)(const char *value, char *why, size_t why_size);
};

/* The key table; *count receives its length. Borrowed, static. */
const struct config_key *config_keys(size_t *count);

/* Parse path into a new config (caller frees with config_free). On failure
 * returns -1 and writes "FILE:LINE: [section] key: reason" into err. Every
 * key has a default, so a missing file is an error but an empty one is not. */
int config_load(const char *path, struct config **out, char *err, size_t err_size);

/* A config holding only defaults (tests, `smarthostctl` without a file). */
struct config *config_defaults(void);
void config_free(struct config *cfg);

/* Value parsers, exposed for tests: "35M", "10k", "1048576"; "30s", "5m",
 * "2h", "1d", "250ms" (plain number = seconds). Return 0 or -1. */
int config_parse_size(const char *s, uint64_t *out);
int config_parse_duration_ms(const char *s, uint64_t *out);
int config_parse_bool(const char *s, bool *out);

/* "key=value, key2=value2" lists ([relay] tls_policy, rate_limit): the next
 * entry (key lower-cased) at *cursor. Returns 1 and advances, 0 at the end,
 * -1 on a malformed entry. */
int config_map_next(const char **cursor, char *key, size_t key_size, char *value,
                    size_t value_size);

/* A pace: "30/m" (messages), "100rcpt/h" (recipients), units s m h d. */
struct config_rate {
    unsigned count;
    uint64_t period_ms;
    bool is_recipients;
};
int config_parse_rate(const char *s, struct config_rate *out);

/* "host:port" or "[v6 or name]:port" → host and port. Returns 0 or -1. */
int config_split_hostport(const char *s, char *host, size_t host_size, unsigned *port);

/* Networks as CIDR text ("192.0.2.0/24", "2001:db8::/48", or one address):
 * is it well formed; does a client address (IPv4-mapped IPv6 too) fall in it. */
bool config_network_is_valid(const char *network);
bool config_ip_in_network(const char *network, const char *client_ip);

/* The account a client address maps to on a listener's trusted_networks, or
 * NULL. */
const char *config_trusted_account(const struct listener_config *l, const char *client_ip,
                                   char *out, size_t out_size);

/* Write the whole file format with defaults, every key commented, to fp
 * (used for packaging/smarthost.conf and the man page). */
void config_write_defaults(FILE *fp);

#endif

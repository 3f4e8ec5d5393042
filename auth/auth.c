/* auth.c — the SMTP AUTH exchange (RFC 4954) through Cyrus SASL: PLAIN and
 * LOGIN from libsasl2-modules, passwords checked by our
 * SASL_CB_SERVER_USERDB_CHECKPASS callback against the store, lockouts from
 * throttle.c consulted before any hash is computed.
 * Contract: every SASL option comes from auth_on_getopt, no SASL config file
 * or sasldb is read and only the PLAIN and LOGIN plugins are loaded; user
 * names are used exactly as sent. Never logs a password or an AUTH payload;
 * a disabled or unknown account fails exactly like a wrong password. */
#include "auth/auth.h"

#include "auth/policy.h"

#include <pthread.h>
#include <sasl/sasl.h>
#include <sasl/saslplug.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth/store.h"
#include "core/log.h"

#define AUTH_SERVICE "smtp"
#define AUTH_APPNAME "smarthost"
#define AUTH_CANON_PLUGIN "smarthost"
#define AUTH_AUXPROP_PLUGIN "smarthost"
/* Largest decoded client response we accept: a PLAIN message is at most
 * 255 (authzid) + 255 (authcid) + 511 (password) + 2 separators. */
#define AUTH_RESPONSE_MAX 1024

/* What our checkpass callback concluded during one exchange; the SASL
 * result alone cannot tell a lockout or a storage error from a bad
 * password, so the outcome is decided from this. */
enum auth_check {
    AUTH_CHECK_NONE,     /* the callback did not run (protocol error, …) */
    AUTH_CHECK_OK,
    AUTH_CHECK_BAD,      /* wrong password, unknown or disabled account */
    AUTH_CHECK_LOCKED,   /* IP or account locked: nothing was hashed */
    AUTH_CHECK_TEMPFAIL, /* the store failed */
};

struct auth_session {
    sasl_conn_t *conn; /* NULL between exchanges */
    sasl_callback_t callbacks[3];
    char local_host[256];
    char remote_ip[64];
    struct account_policy policy; /* loaded once the password was right */
    uint64_t now_ms; /* the clock of the call in progress */
    enum auth_check check;
    char user[STORE_NAME_MAX + 1];
    bool is_login_user_next; /* LOGIN: the next response is the user name */
};

/* One connection to the store per worker thread, opened on first use (a
 * SQLite connection is never shared between threads). auth_global_done
 * closes them all; a thread that exits closes its own. */
struct auth_store_slot {
    struct store *st;
    struct auth_store_slot *next;
    bool is_listed;
};

static struct {
    pthread_mutex_t mutex; /* slots list */
    struct auth_store_slot *slots;
    char *db_path;
    unsigned busy_timeout_ms;
    struct throttle *throttle;
    bool is_ready;
} auth_global = {.mutex = PTHREAD_MUTEX_INITIALIZER};

static pthread_key_t auth_slot_key;
static pthread_once_t auth_slot_once = PTHREAD_ONCE_INIT;
static bool auth_slot_key_ok;

const char *auth_mechanisms(void)
{
    return "PLAIN LOGIN";
}

/* ---- per-thread store ------------------------------------------------- */

static void auth_slot_on_thread_exit(void *p)
{
    struct auth_store_slot *slot = p;
    struct store *st = NULL;
    pthread_mutex_lock(&auth_global.mutex);
    if (slot->is_listed) {
        for (struct auth_store_slot **pp = &auth_global.slots; *pp != NULL; pp = &(*pp)->next) {
            if (*pp == slot) {
                *pp = slot->next;
                break;
            }
        }
        slot->is_listed = false;
        st = slot->st;
        slot->st = NULL;
    }
    pthread_mutex_unlock(&auth_global.mutex);
    store_close(st);
    free(slot);
}

static void auth_slot_key_create(void)
{
    auth_slot_key_ok = pthread_key_create(&auth_slot_key, auth_slot_on_thread_exit) == 0;
}

/* This thread's store, opened (and migrated) on first use. NULL on error. */
static struct store *auth_store_get(void)
{
    pthread_once(&auth_slot_once, auth_slot_key_create);
    if (!auth_slot_key_ok)
        return NULL;
    struct auth_store_slot *slot = pthread_getspecific(auth_slot_key);
    if (slot == NULL) {
        slot = calloc(1, sizeof(*slot));
        if (slot == NULL)
            return NULL;
        if (pthread_setspecific(auth_slot_key, slot) != 0) {
            free(slot);
            return NULL;
        }
    }
    if (slot->st != NULL)
        return slot->st;
    struct store *st = NULL;
    if (store_open(auth_global.db_path, auth_global.busy_timeout_ms, &st) != STORE_OK)
        return NULL; /* store_open logged why */
    pthread_mutex_lock(&auth_global.mutex);
    slot->st = st;
    if (!slot->is_listed) {
        slot->next = auth_global.slots;
        auth_global.slots = slot;
        slot->is_listed = true;
    }
    pthread_mutex_unlock(&auth_global.mutex);
    return st;
}

/* After a storage error: close this thread's connection so the next AUTH
 * opens a fresh one (the file may have been replaced or repaired). */
static void auth_store_drop(void)
{
    if (!auth_slot_key_ok)
        return;
    struct auth_store_slot *slot = pthread_getspecific(auth_slot_key);
    if (slot == NULL)
        return;
    pthread_mutex_lock(&auth_global.mutex);
    struct store *st = slot->st;
    slot->st = NULL;
    pthread_mutex_unlock(&auth_global.mutex);
    store_close(st);
}

/* ---- base64 (RFC 4648 §4, strict: no whitespace, padding required) ----- */

static int auth_b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Decode in (in_len chars) into out (out_size bytes). Returns the decoded
 * length, -1 for malformed base64, -2 when out is too small. */
static long auth_b64_decode(const char *in, size_t in_len, uint8_t *out, size_t out_size)
{
    if (in_len % 4 != 0)
        return -1;
    size_t n = 0;
    for (size_t i = 0; i < in_len; i += 4) {
        const unsigned char *q = (const unsigned char *)in + i;
        bool is_last = i + 4 == in_len;
        int v[4];
        size_t pad = 0;
        for (int k = 0; k < 4; k++) {
            if (q[k] == '=' && is_last && k >= 2) {
                v[k] = 0;
                pad++;
                continue;
            }
            if (pad > 0) /* "=x" inside the padding */
                return -1;
            v[k] = auth_b64_value(q[k]);
            if (v[k] < 0)
                return -1;
        }
        uint32_t triple = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 |
                          (uint32_t)v[3];
        size_t bytes = 3 - pad;
        if (n + bytes > out_size)
            return -2;
        out[n++] = (uint8_t)(triple >> 16);
        if (bytes > 1)
            out[n++] = (uint8_t)(triple >> 8);
        if (bytes > 2)
            out[n++] = (uint8_t)triple;
    }
    return (long)n;
}

/* Encode in into out as NUL-terminated text. Returns 0 or -1 (too long). */
static int auth_b64_encode(const uint8_t *in, size_t in_len, char *out, size_t out_size)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if ((in_len + 2) / 3 * 4 + 1 > out_size)
        return -1;
    size_t n = 0;
    for (size_t i = 0; i < in_len; i += 3) {
        uint32_t triple = (uint32_t)in[i] << 16;
        if (i + 1 < in_len)
            triple |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < in_len)
            triple |= in[i + 2];
        out[n++] = alphabet[(triple >> 18) & 63];
        out[n++] = alphabet[(triple >> 12) & 63];
        out[n++] = i + 1 < in_len ? alphabet[(triple >> 6) & 63] : '=';
        out[n++] = i + 2 < in_len ? alphabet[triple & 63] : '=';
    }
    out[n] = '\0';
    return 0;
}

/* ---- SASL callbacks ----------------------------------------------------- */

/* Every option libsasl2 asks for is answered here, so nothing depends on
 * /etc/sasl2 (and no config file is read at all, see verifyfile). */
static int auth_on_getopt(void *context, const char *plugin_name, const char *option,
                          const char **result, unsigned *len)
{
    static const struct {
        const char *name, *value;
    } options[] = {
        {"mech_list", "PLAIN LOGIN"},
        /* canonicalisation: ours, which keeps the name exactly as sent */
        {"canon_user_plugin", AUTH_CANON_PLUGIN},
        /* If our checkpass callback says no, libsasl2 still tries its own
         * pwcheck_method. "auxprop" restricted to our empty auxprop plugin
         * answers "no such user" without reading anything: no sasldb, no
         * saslauthd (and no real auxprop plugin is even loaded). */
        {"pwcheck_method", "auxprop"},
        {"auxprop_plugin", AUTH_AUXPROP_PLUGIN},
        {"auto_transition", "no"},
        {"log_level", "1"}, /* SASL_LOG_ERR */
    };
    if (plugin_name != NULL || option == NULL || result == NULL)
        return SASL_FAIL;
    for (size_t i = 0; i < sizeof(options) / sizeof(options[0]); i++) {
        if (strcmp(option, options[i].name) == 0) {
            *result = options[i].value;
            if (len != NULL)
                *len = (unsigned)strlen(options[i].value);
            return SASL_OK;
        }
    }
    return SASL_FAIL;
}

/* Only the PLAIN and LOGIN plugins are loaded; no configuration or password
 * file is ever used (SASL_CONTINUE: "skip this file", not an error). */
static int auth_on_verifyfile(void *context, const char *file, sasl_verify_type_t type)
{
    if (type != SASL_VRFY_PLUGIN || file == NULL)
        return SASL_CONTINUE;
    const char *base = strrchr(file, '/');
    base = base != NULL ? base + 1 : file;
    if (strncmp(base, "libplain.", 9) == 0 || strncmp(base, "liblogin.", 9) == 0)
        return SASL_OK;
    return SASL_CONTINUE;
}

/* libsasl2's own messages: errors and warnings only. Failure notes (our
 * session logs each failed AUTH itself) and traces, which can include
 * protocol data, are dropped. */
static int auth_on_sasl_log(void *context, int level, const char *message)
{
    if (message == NULL || (level != SASL_LOG_ERR && level != SASL_LOG_WARN))
        return SASL_OK;
    char text[512];
    log_escape(message, strlen(message), text, sizeof(text));
    if (level == SASL_LOG_ERR)
        log_err(NULL, "sasl error=\"%s\"", text);
    else
        log_warn(NULL, "sasl warning=\"%s\"", text);
    return SASL_OK;
}

/* The password check, called by the PLAIN and LOGIN plugins once they have
 * the (canonical) user name and the password. */
static int auth_on_checkpass(sasl_conn_t *conn, void *context, const char *user, const char *pass,
                             unsigned pass_len, struct propctx *propctx)
{
    struct auth_session *as = context;
    snprintf(as->user, sizeof(as->user), "%s", user != NULL ? user : "");
    if (user == NULL || pass == NULL) {
        as->check = AUTH_CHECK_BAD;
        return SASL_BADAUTH;
    }
    /* Locked out: refuse before any hash is computed, even when the
     * password would have been right. */
    if (throttle_is_locked(auth_global.throttle, as->remote_ip, user, as->now_ms, NULL)) {
        as->check = AUTH_CHECK_LOCKED;
        return SASL_BADAUTH;
    }
    if (pass_len > STORE_PASSWORD_MAX || memchr(pass, '\0', pass_len) != NULL) {
        as->check = AUTH_CHECK_BAD; /* no stored password can look like this */
        return SASL_BADAUTH;
    }
    struct store *st = auth_store_get();
    if (st == NULL) {
        as->check = AUTH_CHECK_TEMPFAIL;
        return SASL_UNAVAIL;
    }
    char password[STORE_PASSWORD_MAX + 1];
    memcpy(password, pass, pass_len);
    password[pass_len] = '\0';
    enum store_auth_result r = store_verify_password(st, user, password);
    explicit_bzero(password, sizeof(password));
    switch (r) {
    case STORE_AUTH_OK: {
        /* an account limited to some client networks refuses the others
         * exactly like a wrong password: nothing tells the client which */
        int prc = store_policy_load(st, user, &as->policy);
        if (prc == STORE_ERROR) {
            as->check = AUTH_CHECK_TEMPFAIL;
            auth_store_drop();
            return SASL_UNAVAIL;
        }
        if (prc != STORE_OK || !policy_network_allowed(as->policy.networks, as->remote_ip)) {
            log_info(NULL, "auth refused user=%s client=[%s]: outside the account's networks",
                     user, as->remote_ip);
            break;
        }
        as->check = AUTH_CHECK_OK;
        return SASL_OK;
    }
    case STORE_AUTH_ERROR:
        as->check = AUTH_CHECK_TEMPFAIL;
        auth_store_drop();
        return SASL_UNAVAIL;
    case STORE_AUTH_BAD_PASSWORD:
    case STORE_AUTH_NO_USER:
    case STORE_AUTH_DISABLED:
        break;
    }
    as->check = AUTH_CHECK_BAD;
    return SASL_BADAUTH;
}

/* Authorization: only as oneself. A PLAIN authzid naming anyone else is
 * refused (RFC 4616 §2 leaves that policy to the server). */
static int auth_on_authorize(sasl_conn_t *conn, void *context, const char *requested_user,
                             unsigned rlen, const char *auth_identity, unsigned alen,
                             const char *def_realm, unsigned urlen, struct propctx *propctx)
{
    if (requested_user == NULL || rlen == 0)
        return SASL_OK;
    if (auth_identity == NULL || rlen != alen || memcmp(requested_user, auth_identity, rlen) != 0) {
        sasl_seterror(conn, SASL_NOLOG, "authorization identity differs from authentication");
        return SASL_NOAUTHZ;
    }
    return SASL_OK;
}

/* Canonicalisation plugin: the name exactly as given (libsasl2's INTERNAL
 * one strips white space and can append a realm). Names that cannot be an
 * account are refused here, before any password check. */
static int auth_canon_server(void *glob_context, sasl_server_params_t *sparams, const char *user,
                             unsigned len, unsigned flags, char *out, unsigned out_max,
                             unsigned *out_len)
{
    if (user == NULL || out == NULL)
        return SASL_BADPARAM;
    if (len == 0 || len > STORE_NAME_MAX || len >= out_max || memchr(user, '\0', len) != NULL)
        return SASL_BADPROT;
    memmove(out, user, len); /* out may be user (see saslplug.h) */
    out[len] = '\0';
    if (out_len != NULL)
        *out_len = len;
    return SASL_OK;
}

static sasl_canonuser_plug_t auth_canon_plug = {
    .name = AUTH_CANON_PLUGIN,
    .canon_user_server = auth_canon_server,
};

static int auth_canon_init(const sasl_utils_t *utils, int max_version, int *out_version,
                           sasl_canonuser_plug_t **plug, const char *plugname)
{
    if (max_version < SASL_CANONUSER_PLUG_VERSION)
        return SASL_BADVERS;
    *out_version = SASL_CANONUSER_PLUG_VERSION;
    *plug = &auth_canon_plug;
    return SASL_OK;
}

/* Auxprop plugin that knows no properties: libsasl2 runs an auxprop lookup
 * after every canonicalisation and for its fallback password check; with
 * this one configured those lookups touch nothing (and, unlike a missing
 * plugin, do not make libsasl2 log an error on every failed password). */
static int auth_auxprop_lookup(void *glob_context, sasl_server_params_t *sparams, unsigned flags,
                               const char *user, unsigned ulen)
{
    return SASL_OK;
}

static sasl_auxprop_plug_t auth_auxprop_plug = {
    .name = AUTH_AUXPROP_PLUGIN,
    .auxprop_lookup = auth_auxprop_lookup,
};

static int auth_auxprop_init(const sasl_utils_t *utils, int max_version, int *out_version,
                             sasl_auxprop_plug_t **plug, const char *plugname)
{
    if (max_version < SASL_AUXPROP_PLUG_VERSION)
        return SASL_BADVERS;
    *out_version = SASL_AUXPROP_PLUG_VERSION;
    *plug = &auth_auxprop_plug;
    return SASL_OK;
}

/* libsasl2's built-in mutex functions do nothing (the library imports no
 * pthread symbol): give it real ones, as its plugins may lock shared state
 * while several workers run exchanges at once. */
static void *auth_mutex_alloc(void)
{
    pthread_mutex_t *m = malloc(sizeof(*m));
    if (m != NULL && pthread_mutex_init(m, NULL) != 0) {
        free(m);
        m = NULL;
    }
    return m;
}

static int auth_mutex_lock(void *m)
{
    return m != NULL && pthread_mutex_lock(m) == 0 ? SASL_OK : SASL_FAIL;
}

static int auth_mutex_unlock(void *m)
{
    return m != NULL && pthread_mutex_unlock(m) == 0 ? SASL_OK : SASL_FAIL;
}

static void auth_mutex_free(void *m)
{
    if (m != NULL) {
        pthread_mutex_destroy(m);
        free(m);
    }
}

/* sasl_callback_t.proc is "int (*)(void)"; going through the generic
 * function pointer type keeps -Wcast-function-type quiet. */
#define AUTH_CB(fn) ((int (*)(void))(void (*)(void))(fn))

static const sasl_callback_t auth_global_callbacks[] = {
    {SASL_CB_GETOPT, AUTH_CB(auth_on_getopt), NULL},
    {SASL_CB_VERIFYFILE, AUTH_CB(auth_on_verifyfile), NULL},
    {SASL_CB_LOG, AUTH_CB(auth_on_sasl_log), NULL},
    {SASL_CB_LIST_END, NULL, NULL},
};

/* ---- global ------------------------------------------------------------- */

static int auth_conn_new(const char *local_host, const sasl_callback_t *callbacks,
                         sasl_conn_t **out)
{
    /* No realm: names are matched exactly, never as user@realm. */
    int r = sasl_server_new(AUTH_SERVICE, local_host, NULL, NULL, NULL, callbacks, 0, out);
    if (r != SASL_OK) {
        *out = NULL;
        return -1;
    }
    sasl_security_properties_t props = {
        .min_ssf = 0,
        .max_ssf = 0,      /* no SASL security layer: TLS protects the session */
        .maxbufsize = 0,
        .security_flags = SASL_SEC_NOANONYMOUS,
    };
    if (sasl_setprop(*out, SASL_SEC_PROPS, &props) != SASL_OK) {
        sasl_dispose(out);
        *out = NULL;
        return -1;
    }
    return 0;
}

/* Is word (a mechanism name) in the space-separated list? */
static bool auth_list_has(const char *list, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = list; *p != '\0';) {
        while (*p == ' ')
            p++;
        const char *end = strchr(p, ' ');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        if (len == n && strncasecmp(p, word, n) == 0)
            return true;
        p += len;
    }
    return false;
}

/* libsasl2 starts happily with no plugins at all; check that it really
 * offers both mechanisms we advertise in EHLO. */
static int auth_check_mechanisms(void)
{
    sasl_conn_t *conn = NULL;
    if (auth_conn_new("localhost", NULL, &conn) < 0) {
        log_err(NULL, "auth: cannot create a SASL server connection");
        return -1;
    }
    const char *list = NULL;
    int r = sasl_listmech(conn, NULL, "", " ", "", &list, NULL, NULL);
    int rc = 0;
    const char *mechs[] = {"PLAIN", "LOGIN"};
    for (size_t i = 0; i < sizeof(mechs) / sizeof(mechs[0]); i++) {
        if (r != SASL_OK || list == NULL || !auth_list_has(list, mechs[i])) {
            log_err(NULL,
                    "auth: SASL mechanism %s is not available: install the PLAIN and LOGIN "
                    "plugins (Debian/Ubuntu: libsasl2-modules; RHEL: cyrus-sasl-plain) "
                    "available=\"%s\"",
                    mechs[i], r == SASL_OK && list != NULL ? list : "");
            rc = -1;
        }
    }
    sasl_dispose(&conn);
    return rc;
}

int auth_global_init(const char *db_path, unsigned busy_timeout_ms, struct throttle *throttle)
{
    if (auth_global.is_ready) {
        log_err(NULL, "auth: auth_global_init called twice");
        return -1;
    }
    if (db_path == NULL || throttle == NULL)
        return -1;
    /* Create or migrate the account tables now, on one thread, so that the
     * workers' first AUTH does not race to do it; this also fails early on
     * a database we cannot use. */
    struct store *st = NULL;
    if (store_open(db_path, busy_timeout_ms, &st) != STORE_OK)
        return -1;
    store_close(st);
    auth_global.db_path = strdup(db_path);
    if (auth_global.db_path == NULL)
        return -1;
    auth_global.busy_timeout_ms = busy_timeout_ms;
    auth_global.throttle = throttle;

    /* Must precede sasl_server_init: libsasl2 ignores it afterwards. */
    sasl_set_mutex(auth_mutex_alloc, auth_mutex_lock, auth_mutex_unlock, auth_mutex_free);
    int r = sasl_server_init(auth_global_callbacks, AUTH_APPNAME);
    if (r != SASL_OK) {
        log_err(NULL, "auth: sasl_server_init failed error=\"%s\"", sasl_errstring(r, NULL, NULL));
        free(auth_global.db_path);
        auth_global.db_path = NULL;
        return -1;
    }
    r = sasl_canonuser_add_plugin(AUTH_CANON_PLUGIN, auth_canon_init);
    if (r == SASL_OK)
        r = sasl_auxprop_add_plugin(AUTH_AUXPROP_PLUGIN, auth_auxprop_init);
    if (r != SASL_OK || auth_check_mechanisms() < 0) {
        if (r != SASL_OK)
            log_err(NULL, "auth: cannot register our SASL plugins error=\"%s\"",
                    sasl_errstring(r, NULL, NULL));
        sasl_server_done();
        free(auth_global.db_path);
        auth_global.db_path = NULL;
        return -1;
    }
    auth_global.is_ready = true;
    return 0;
}

void auth_global_done(void)
{
    if (!auth_global.is_ready)
        return;
    auth_global.is_ready = false;
    sasl_server_done();
    pthread_mutex_lock(&auth_global.mutex);
    struct auth_store_slot *slot = auth_global.slots;
    auth_global.slots = NULL;
    while (slot != NULL) {
        struct auth_store_slot *next = slot->next;
        /* The slot itself belongs to its thread (freed when it exits). */
        store_close(slot->st);
        slot->st = NULL;
        slot->is_listed = false;
        slot->next = NULL;
        slot = next;
    }
    pthread_mutex_unlock(&auth_global.mutex);
    if (auth_slot_key_ok) {
        struct auth_store_slot *own = pthread_getspecific(auth_slot_key);
        if (own != NULL) {
            pthread_setspecific(auth_slot_key, NULL);
            free(own);
        }
    }
    free(auth_global.db_path);
    auth_global.db_path = NULL;
    auth_global.throttle = NULL;
}

/* ---- sessions ----------------------------------------------------------- */

struct auth_session *auth_session_new(const char *local_host, const char *remote_ip)
{
    struct auth_session *as = calloc(1, sizeof(*as));
    if (as == NULL)
        return NULL;
    snprintf(as->local_host, sizeof(as->local_host), "%s",
             local_host != NULL && local_host[0] != '\0' ? local_host : "localhost");
    snprintf(as->remote_ip, sizeof(as->remote_ip), "%s", remote_ip != NULL ? remote_ip : "");
    as->callbacks[0] = (sasl_callback_t){SASL_CB_SERVER_USERDB_CHECKPASS,
                                         AUTH_CB(auth_on_checkpass), as};
    as->callbacks[1] = (sasl_callback_t){SASL_CB_PROXY_POLICY, AUTH_CB(auth_on_authorize), as};
    as->callbacks[2] = (sasl_callback_t){SASL_CB_LIST_END, NULL, NULL};
    return as;
}

/* End the exchange in progress, if any: the next start is a fresh one. */
static void auth_session_reset(struct auth_session *as)
{
    if (as->conn != NULL)
        sasl_dispose(&as->conn);
    as->conn = NULL;
    as->check = AUTH_CHECK_NONE;
    as->is_login_user_next = false;
    as->user[0] = '\0';
}

void auth_session_free(struct auth_session *as)
{
    if (as == NULL)
        return;
    auth_session_reset(as);
    explicit_bzero(as, sizeof(*as));
    free(as);
}

/* Decode a client response. "=" is an empty response only where allow_equal
 * (an initial response, RFC 4954 §4). *out is NULL for no response at all;
 * otherwise a buffer of *out_len bytes plus a NUL that the caller wipes and
 * frees. Returns 0, -1 for malformed base64, -2 when too long. */
static int auth_response_decode(const char *text, bool allow_equal, uint8_t **out,
                                size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (text == NULL)
        return 0;
    size_t len = strlen(text);
    if (allow_equal && len == 1 && text[0] == '=')
        len = 0;
    if (len / 4 * 3 > AUTH_RESPONSE_MAX + 3)
        return -2;
    uint8_t *buf = malloc(len / 4 * 3 + 1);
    if (buf == NULL)
        return -2;
    long n = auth_b64_decode(text, len, buf, len / 4 * 3);
    if (n < 0 || (size_t)n > AUTH_RESPONSE_MAX) {
        explicit_bzero(buf, len / 4 * 3 + 1);
        free(buf);
        return n == -1 ? -1 : -2;
    }
    buf[n] = '\0';
    *out = buf;
    *out_len = (size_t)n;
    return 0;
}

static void auth_response_free(uint8_t *buf, size_t len)
{
    if (buf != NULL) {
        explicit_bzero(buf, len + 1);
        free(buf);
    }
}

/* A failed attempt: count it and tell the caller how long to wait. */
static void auth_outcome_fail(struct auth_session *as, struct auth_outcome *out)
{
    out->result = AUTH_FAIL;
    snprintf(out->user, sizeof(out->user), "%s", as->user);
    out->delay_ms = throttle_record_failure(auth_global.throttle, as->remote_ip,
                                            as->user[0] != '\0' ? as->user : NULL, as->now_ms,
                                            &out->locked_now);
}

/* Turn what libsasl2 returned, together with what our checkpass callback
 * saw, into the outcome. Ends the exchange unless it continues. */
static void auth_session_finish(struct auth_session *as, int r, const char *server_out,
                                unsigned server_out_len, bool is_start, struct auth_outcome *out)
{
    if (r == SASL_CONTINUE) {
        if (auth_b64_encode((const uint8_t *)server_out, server_out != NULL ? server_out_len : 0,
                            out->challenge, sizeof(out->challenge)) == 0) {
            out->result = AUTH_CONTINUE;
            return;
        }
        log_err(NULL, "auth: SASL challenge too long len=%u", server_out_len);
        out->result = AUTH_TEMPFAIL;
    } else if (r == SASL_OK && as->check == AUTH_CHECK_OK) {
        const void *name = NULL;
        if (sasl_getprop(as->conn, SASL_USERNAME, &name) == SASL_OK && name != NULL)
            snprintf(as->user, sizeof(as->user), "%s", (const char *)name);
        out->result = AUTH_OK;
        snprintf(out->user, sizeof(out->user), "%s", as->user);
        snprintf(out->senders, sizeof(out->senders), "%s", as->policy.senders);
        out->max_size = as->policy.max_size;
        out->max_rcpts = as->policy.max_rcpts;
        throttle_record_success(auth_global.throttle, as->remote_ip, as->user);
    } else if (as->check == AUTH_CHECK_LOCKED) {
        out->result = AUTH_LOCKED;
        snprintf(out->user, sizeof(out->user), "%s", as->user);
    } else if (as->check == AUTH_CHECK_TEMPFAIL) {
        out->result = AUTH_TEMPFAIL;
        snprintf(out->user, sizeof(out->user), "%s", as->user);
    } else if (as->check == AUTH_CHECK_NONE &&
               (r == SASL_NOMEM || r == SASL_TRYAGAIN || r == SASL_UNAVAIL ||
                r == SASL_NOTINIT || r == SASL_BADPARAM || (is_start && r == SASL_NOMECH))) {
        /* Our own failure, not the client's: nothing was checked. */
        log_warn(NULL, "auth: SASL failure error=\"%s\"", sasl_errstring(r, NULL, NULL));
        out->result = AUTH_TEMPFAIL;
    } else {
        /* Wrong password, unknown or disabled account, authzid refused, a
         * malformed PLAIN/LOGIN message, or SASL_OK without our check
         * (impossible, but never a success). */
        auth_outcome_fail(as, out);
    }
    auth_session_reset(as);
}

/* A LOGIN user name that could name an account. Cyrus SASL's LOGIN plugin
 * leaks its copy of a user name it then refuses (empty, embedded NUL, too
 * long: found by fuzz/auth_exchange), so such names end here as a failure. */
static bool auth_login_user_is_plausible(const uint8_t *name, size_t len)
{
    return len > 0 && len <= STORE_NAME_MAX && memchr(name, '\0', len) == NULL &&
           store_name_is_valid((const char *)name);
}

void auth_session_start(struct auth_session *as, const char *mech, const char *initial,
                        uint64_t now_ms, struct auth_outcome *out)
{
    memset(out, 0, sizeof(*out));
    auth_session_reset(as);
    as->now_ms = now_ms;
    if (!auth_global.is_ready) {
        out->result = AUTH_TEMPFAIL;
        return;
    }
    const char *canonical = NULL;
    if (mech != NULL && strcasecmp(mech, "PLAIN") == 0)
        canonical = "PLAIN";
    else if (mech != NULL && strcasecmp(mech, "LOGIN") == 0)
        canonical = "LOGIN";
    if (canonical == NULL) {
        out->result = AUTH_BAD_MECH;
        return;
    }
    /* A locked-out address gets nothing more, not even a prompt. */
    if (throttle_is_locked(auth_global.throttle, as->remote_ip, NULL, now_ms, NULL)) {
        out->result = AUTH_LOCKED;
        return;
    }
    uint8_t *clientin = NULL;
    size_t clientin_len = 0;
    int d = auth_response_decode(initial, true, &clientin, &clientin_len);
    if (d == -1) {
        out->result = AUTH_BAD_BASE64;
        return;
    }
    bool is_login = strcmp(canonical, "LOGIN") == 0;
    if (is_login && clientin != NULL && clientin_len == 0) {
        /* "AUTH LOGIN =": an empty initial response, so LOGIN asks for the user. */
        auth_response_free(clientin, clientin_len);
        clientin = NULL;
    }
    if (d < 0 || (is_login && clientin != NULL &&
                  !auth_login_user_is_plausible(clientin, clientin_len))) {
        auth_response_free(clientin, clientin_len);
        auth_outcome_fail(as, out);
        return;
    }
    as->is_login_user_next = is_login && clientin == NULL;
    if (auth_conn_new(as->local_host, as->callbacks, &as->conn) < 0) {
        auth_response_free(clientin, clientin_len);
        out->result = AUTH_TEMPFAIL;
        return;
    }
    const char *server_out = NULL;
    unsigned server_out_len = 0;
    int r = sasl_server_start(as->conn, canonical, (const char *)clientin, (unsigned)clientin_len,
                              &server_out, &server_out_len);
    auth_response_free(clientin, clientin_len);
    auth_session_finish(as, r, server_out, server_out_len, true, out);
}

void auth_session_step(struct auth_session *as, const char *response, uint64_t now_ms,
                       struct auth_outcome *out)
{
    memset(out, 0, sizeof(*out));
    as->now_ms = now_ms;
    if (as->conn == NULL || !auth_global.is_ready) {
        log_warn(NULL, "auth: step without an exchange in progress");
        auth_session_reset(as);
        out->result = AUTH_TEMPFAIL;
        return;
    }
    uint8_t *clientin = NULL;
    size_t clientin_len = 0;
    int d = auth_response_decode(response != NULL ? response : "", false, &clientin,
                                 &clientin_len);
    if (d == -1) {
        auth_session_reset(as);
        out->result = AUTH_BAD_BASE64;
        return;
    }
    /* An empty response is never a valid PLAIN payload, LOGIN user name or
     * password; answering it here also keeps it away from the LOGIN plugin,
     * which leaks its copy of an empty user name (found by fuzz/auth_exchange). */
    bool is_user = as->is_login_user_next;
    as->is_login_user_next = false;
    if (d < 0 || clientin_len == 0 ||
        (is_user && !auth_login_user_is_plausible(clientin, clientin_len))) {
        auth_response_free(clientin, clientin_len);
        auth_outcome_fail(as, out);
        auth_session_reset(as);
        return;
    }
    const char *server_out = NULL;
    unsigned server_out_len = 0;
    int r = sasl_server_step(as->conn, (const char *)clientin, (unsigned)clientin_len,
                             &server_out, &server_out_len);
    auth_response_free(clientin, clientin_len);
    auth_session_finish(as, r, server_out, server_out_len, false, out);
}

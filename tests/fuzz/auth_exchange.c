/* Fuzz target: the AUTH exchange as a client drives it — auth/auth.c's strict
 * base64 decoder, the "=" empty initial response, LOGIN's prompts and Cyrus
 * SASL's PLAIN/LOGIN parsing of the decoded payload, the checkpass callback
 * against a real store. Input: lines separated by '\n'; the first is
 * "MECH [initial-response]", each further line one client response.
 * Invariants (abort on violation): every outcome is a known result; a
 * challenge is NUL-terminated base64; AUTH_OK only for the one real account
 * with its real password; no read outside the input (ASan). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth/auth.h"
#include "auth/store.h"
#include "auth/throttle.h"

#define FUZZ_USER "fuzzuser"
#define FUZZ_PASSWORD "fuzz-password-1"
#define FUZZ_MAX_STEPS 8
#define FUZZ_LINE_MAX 2048

static void fuzz_check(bool ok)
{
    if (!ok)
        abort();
}

static char fuzz_dir[64];
static struct throttle *fuzz_throttle;

static void fuzz_cleanup(void)
{
    auth_global_done();
    throttle_free(fuzz_throttle);
    char path[128];
    static const char *const files[] = {"auth.db", "auth.db-wal", "auth.db-shm"};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", fuzz_dir, files[i]);
        unlink(path);
    }
    rmdir(fuzz_dir);
}

/* One store with one account, one throttle that never delays or locks out
 * (failures would otherwise lock the fuzzer's own address out). */
static void fuzz_setup(void)
{
    snprintf(fuzz_dir, sizeof(fuzz_dir), "/tmp/smarthost-fuzz-auth-XXXXXX");
    fuzz_check(mkdtemp(fuzz_dir) != NULL);
    char db[128];
    snprintf(db, sizeof(db), "%s/auth.db", fuzz_dir);
    struct store *st = NULL;
    fuzz_check(store_open(db, 1000, &st) == 0);
    fuzz_check(store_user_add(st, FUZZ_USER, FUZZ_PASSWORD) == 0);
    store_close(st);
    struct throttle_params p = {.failure_delay_ms = 0,
                                .max_delay_ms = 0,
                                .ip_lockout_failures = UINT32_MAX,
                                .account_lockout_failures = UINT32_MAX,
                                .lockout_ms = 0,
                                .window_ms = 1,
                                .max_entries = 64};
    fuzz_throttle = throttle_new(&p);
    fuzz_check(fuzz_throttle != NULL);
    fuzz_check(auth_global_init(db, 1000, fuzz_throttle) == 0);
    atexit(fuzz_cleanup);
}

static bool fuzz_is_base64(const char *s)
{
    for (; *s != '\0'; s++)
        if (strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", *s) ==
            NULL)
            return false;
    return true;
}

/* Checks one outcome; true while the exchange continues. */
static bool fuzz_check_outcome(const struct auth_outcome *out)
{
    switch (out->result) {
    case AUTH_CONTINUE:
        fuzz_check(memchr(out->challenge, '\0', sizeof(out->challenge)) != NULL);
        fuzz_check(fuzz_is_base64(out->challenge));
        return true;
    case AUTH_OK:
        fuzz_check(strcmp(out->user, FUZZ_USER) == 0);
        return false;
    case AUTH_FAIL:
    case AUTH_LOCKED:
    case AUTH_TEMPFAIL:
    case AUTH_BAD_MECH:
    case AUTH_BAD_BASE64:
        fuzz_check(memchr(out->user, '\0', sizeof(out->user)) != NULL);
        return false;
    }
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool is_ready;
    if (!is_ready) {
        fuzz_setup();
        is_ready = true;
    }
    char *lines[FUZZ_MAX_STEPS + 1];
    size_t count = 0;
    size_t start = 0;
    for (size_t i = 0; i <= size && count < FUZZ_MAX_STEPS + 1; i++) {
        if (i == size || data[i] == '\n') {
            size_t len = i - start;
            if (len > FUZZ_LINE_MAX)
                len = FUZZ_LINE_MAX;
            lines[count] = malloc(len + 1);
            fuzz_check(lines[count] != NULL);
            memcpy(lines[count], data + start, len);
            lines[count][len] = '\0';
            count++;
            start = i + 1;
        }
    }
    /* "MECH initial": the mechanism is the first word, as smtp_session splits it. */
    char *mech = lines[0];
    char *initial = strchr(mech, ' ');
    if (initial != NULL)
        *initial++ = '\0';

    struct auth_session *as = auth_session_new("fuzz.test", "192.0.2.1");
    fuzz_check(as != NULL);
    struct auth_outcome out;
    memset(&out, 0, sizeof(out));
    auth_session_start(as, mech, initial, 1000, &out);
    bool is_going = fuzz_check_outcome(&out);
    for (size_t k = 1; k < count && is_going; k++) {
        memset(&out, 0, sizeof(out));
        auth_session_step(as, lines[k], 1000 + k, &out);
        is_going = fuzz_check_outcome(&out);
    }
    auth_session_free(as);
    for (size_t k = 0; k < count; k++)
        free(lines[k]);
    return 0;
}

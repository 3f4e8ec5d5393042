/* ctl.h — what the smarthostctl command files share (cmd/ only). */
#ifndef SMARTHOST_CMD_CTL_H
#define SMARTHOST_CMD_CTL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/config.h"

#define CTL_DEFAULT_CONFIG "/etc/smarthost/smarthost.conf"
#define CTL_GENERATED_LEN 20
/* smarthostctl waits at least this long for a locked database: an admin
 * command may well run while the daemon commits a burst of mail. */
#define CTL_MIN_BUSY_MS 5000

enum ctl_exit {
    CTL_EXIT_OK = 0,
    CTL_EXIT_RUNTIME = 1,
    CTL_EXIT_USAGE = 2,
    CTL_EXIT_NOT_FOUND = 3,
    CTL_EXIT_EXISTS = 4,
};

enum ctl_password_source {
    CTL_PASSWORD_PROMPT,
    CTL_PASSWORD_STDIN,
    CTL_PASSWORD_GENERATE,
};

struct ctl {
    const char *config_path;
    bool is_config_explicit;
    bool is_json;
    struct config *cfg;
    const char *what; /* "user add", for error messages */
};

struct ctl_command {
    const char *group, *name;
    const char *args; /* synopsis after the command words */
    const char *doc;
    int (*run)(struct ctl *ctl, int argc, char **argv);
};

const struct ctl_command *ctl_find(const char *group, const char *name);
void ctl_error(const struct ctl *ctl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ctl_command_usage(const struct ctl_command *c, FILE *fp);
/* A JSON string from text that may not be valid UTF-8. */
json_t *ctl_json_text(const char *s);
/* Print one JSON value on its own line (and free it). */
int ctl_json_print(json_t *j);
void ctl_format_time(int64_t t, char *out, size_t out_size);
void ctl_format_age(int64_t seconds, char *out, size_t out_size);
void ctl_actor(char *out, size_t out_size);
int ctl_load_config(struct ctl *ctl);
unsigned ctl_busy_ms(const struct ctl *ctl);

/* cmd/ctl_account.c: per-account policy options (user add / user set / quota set) */
#define CTL_POLICY_MAX_CHANGES 32
struct ctl_policy_change {
    int opt;
    const char *value;
};
struct ctl_policy_changes {
    struct ctl_policy_change items[CTL_POLICY_MAX_CHANGES];
    size_t count;
};
struct store;
int ctl_policy_extract(struct ctl *ctl, int *argc, char **argv, struct ctl_policy_changes *out);
int ctl_policy_validate(struct ctl *ctl, const struct ctl_policy_changes *ch, int64_t *nums);
int ctl_policy_apply(struct ctl *ctl, struct store *st, const char *name,
                     const struct ctl_policy_changes *ch);
int ctl_policy_show(struct ctl *ctl, struct store *st, const char *name, json_t *into);
void ctl_policy_today(struct ctl *ctl, struct store *st, const char *name, char *out,
                      size_t size, json_t *into);
void ctl_policy_usage(FILE *fp);
int ctl_open_store_public(struct ctl *ctl, struct store **st);
int ctl_user_set(struct ctl *ctl, int argc, char **argv);
int ctl_quota_show(struct ctl *ctl, int argc, char **argv);
int ctl_quota_set(struct ctl *ctl, int argc, char **argv);
int ctl_quota_reset(struct ctl *ctl, int argc, char **argv);
int ctl_auth_lockouts(struct ctl *ctl, int argc, char **argv);
int ctl_auth_unlock(struct ctl *ctl, int argc, char **argv);

/* cmd/ctl_queue.c */
int ctl_queue_list(struct ctl *ctl, int argc, char **argv);
int ctl_queue_show(struct ctl *ctl, int argc, char **argv);
int ctl_queue_retry(struct ctl *ctl, int argc, char **argv);
int ctl_queue_flush(struct ctl *ctl, int argc, char **argv);
int ctl_queue_hold(struct ctl *ctl, int argc, char **argv);
int ctl_queue_release(struct ctl *ctl, int argc, char **argv);
int ctl_queue_delete(struct ctl *ctl, int argc, char **argv);

#endif

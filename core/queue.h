/* queue.h — the durable queue: messages and their recipients in the SQLite
 * database (WAL mode, synchronous=FULL), bodies stored as blobs in the same
 * transaction. A message exists only once its transaction has committed and
 * been fsync'd: there is never a half-written message to find after a crash.
 *
 * Group commit: queue_commit_submit() only enqueues. One committer thread
 * takes every request waiting, writes them in one transaction and one fsync,
 * then calls each request's callback ON THE COMMITTER THREAD; the caller
 * (core's session glue) hands the result back to its loop. libuv-free. */
#ifndef SMARTHOST_QUEUE_H
#define SMARTHOST_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/policy.h"

#define QUEUE_ID_SIZE 16 /* 15 characters + NUL, e.g. "4Xk9T2mQpR7vB3a" */

enum queue_status {
    QUEUE_OK = 0,
    QUEUE_ERR_STORAGE = -1, /* disk full, I/O error: 452 4.3.1 */
    QUEUE_ERR_BUSY = -2,    /* database locked past the busy timeout: 452 4.3.1 */
    QUEUE_ERR_CLOSED = -3,  /* queue shutting down: 421 4.3.2 */
    QUEUE_ERR_NOT_FOUND = -4,
    QUEUE_ERR_POLICY = -5,  /* the account's policy or quota refused it: see req->verdict */
};

struct queue_commit_req;
typedef void (*queue_commit_cb)(struct queue_commit_req *req, int status);

/* Filled by the caller; every pointer is borrowed until the callback runs. */
struct queue_commit_req {
    const char *qid;                 /* from queue_id_new() */
    const char *sender;              /* "" for the null sender */
    const char *const *recipients;
    size_t recipient_count;
    const char *auth_user;           /* "" when unauthenticated */
    const char *client_addr;         /* "192.0.2.1" */
    const char *helo;
    const uint8_t *header;           /* our prepended header lines (Received: …) */
    size_t header_len;
    const uint8_t *body;             /* the message as received, CRLF lines */
    size_t body_len;
    queue_commit_cb cb;
    void *data;
    struct policy_verdict verdict;   /* filled when the status is QUEUE_ERR_POLICY */
    /* private to queue.c */
    struct queue_commit_req *next;
};

struct queue;

/* Open (creating/migrating) the queue tables in the database at path and
 * start the committer thread. Caller frees with queue_close. */
int queue_open(const char *path, unsigned busy_timeout_ms, struct queue **out);
/* Finish every submitted request (callbacks run) and task, stop the
 * thread, close. */
void queue_close(struct queue *q);

/* Thread-safe. Returns 0 (the callback will run exactly once) or
 * QUEUE_ERR_CLOSED (it will not). */
int queue_commit_submit(struct queue *q, struct queue_commit_req *req);

/* A new unique queue id into out (QUEUE_ID_SIZE). Thread-safe. */
void queue_id_new(char out[QUEUE_ID_SIZE]);

/* A message just committed, as the relay would read it back: every pointer
 * is borrowed for the duration of the hook call only. */
struct queue_committed {
    int64_t message_id;
    const char *qid;
    int64_t created_at;
    const char *sender;
    const char *auth_user;
    const char *owner;              /* the account's owner, "" = none; NULL = not known
                                       (no policy set, so the account was not read) */
    const char *const *recipients;
    const int64_t *recipient_ids;   /* NULL = not known (out of memory) */
    size_t recipient_count;
    const uint8_t *header;          /* the stored message is header then body */
    size_t header_len;
    const uint8_t *body;
    size_t body_len;
};

/* Hook called on the committer thread once per committed message, right
 * after its COMMIT and before any request's callback, while this process's
 * write lock is still held: a queue_store_read_begin() snapshot that shows
 * the message therefore starts after the hook has returned for it. The relay
 * core registers here (cmd/ wires it). Setting it waits for a call under way
 * to return, so after queue_set_committed_hook(q, NULL, NULL) none runs. */
typedef void (*queue_committed_hook)(const struct queue_committed *c, void *arg);
void queue_set_committed_hook(struct queue *q, queue_committed_hook hook, void *arg);

/* Account policy and quotas: once set (defaults copied), every request with
 * an auth_user is checked and counted inside its commit transaction (its own
 * SAVEPOINT), so a refusal fails that request alone (QUEUE_ERR_POLICY, with
 * req->verdict) and concurrent sessions can never overrun a quota. */
void queue_set_policy(struct queue *q, const struct policy_defaults *d);

struct queue_store;
/* Delivery-side writes run by the committer thread, between its batches, on
 * its own connection: they invalidate no other connection's page cache (in
 * WAL mode a connection re-reads every page once another has committed),
 * and they find the pages the committer just wrote still cached. run(s,
 * arg) is called once on the committer thread, with a store on that
 * connection (its write transactions take turns with the committer's
 * batches as a shared store's do), or with s NULL when none could be made
 * (out of memory); it must not wait for the submitter. Not after
 * queue_close has begun. */
struct queue_task {
    void (*run)(struct queue_store *s, void *arg);
    void *arg;
    struct queue_task *next; /* private to queue.c */
};
void queue_task_submit(struct queue *q, struct queue_task *t);

/* Write transactions committed (one WAL fsync each) since queue_open: a
 * whole group commit counts once. Thread-safe; for tests and status. */
uint64_t queue_stats_batches(struct queue *q);

/* ---- reading the queue (smarthostctl, tests). Blocking; own connection. */

struct queue_entry {
    char qid[QUEUE_ID_SIZE];
    int64_t created_at;       /* unix seconds */
    char sender[512];
    char auth_user[256];
    char client_addr[64];
    uint64_t size;            /* header + body bytes */
    size_t recipient_count;
    char state[16];           /* "queued" (being delivered or waiting), "done" */
    /* delivery (schema 2) */
    char kind[16];            /* "message", "dsn" (a bounce we made), "warning" */
    bool is_held;
    int64_t next_attempt_at;  /* earliest due recipient; 0 = now */
    size_t pending_count;     /* recipients not yet delivered or bounced */
    char last_error[256];     /* newest recipient error, "" when none */
};

struct queue_reader;
int queue_reader_open(const char *path, struct queue_reader **out);
void queue_reader_close(struct queue_reader *r);
/* cb for each message, oldest first; non-zero from cb stops. */
int queue_reader_list(struct queue_reader *r,
                      int (*cb)(const struct queue_entry *e, void *arg), void *arg);
/* Recipients of one message: cb once per recipient address. */
int queue_reader_recipients(struct queue_reader *r, const char *qid,
                            int (*cb)(const char *rcpt, const char *state, void *arg), void *arg);
/* The stored message (header + body) into a new buffer; caller frees *out. */
int queue_reader_body(struct queue_reader *r, const char *qid, uint8_t **out, size_t *out_len);

/* One message's envelope and state (queue show). */
int queue_reader_entry(struct queue_reader *r, const char *qid, struct queue_entry *out);

struct queue_rcpt_info {
    char address[512];
    char state[16];           /* queued | deferred | delivered | bounced */
    unsigned attempts;
    int64_t next_attempt_at;
    char dsn_status[16];      /* "5.1.1" once known */
    char last_error[1024];    /* the remote reply or local error of the last attempt */
    int64_t updated_at;
};
int queue_reader_recipient_infos(struct queue_reader *r, const char *qid,
                                 int (*cb)(const struct queue_rcpt_info *i, void *arg),
                                 void *arg);

struct queue_attempt_info {
    int64_t at;
    char rcpt[512];           /* "" when the attempt concerned the whole message */
    char domain[256];
    char host[256];
    char address[80];
    char step[16];            /* dns connect banner ehlo starttls auth mail rcpt data quit done */
    char tls[96];
    char reply[1024];
    char outcome[16];         /* delivered | deferred | bounced */
};
/* Every attempt for one message, oldest first. */
int queue_reader_attempts(struct queue_reader *r, const char *qid,
                          int (*cb)(const struct queue_attempt_info *a, void *arg), void *arg);

/* ---- the delivery side (relay/ runner, smarthostctl queue actions).
 * Blocking, own read-write connection: call from a worker thread, never from
 * a loop thread. Every write is one transaction. */

struct queue_store;
int queue_store_open(const char *path, unsigned busy_timeout_ms, struct queue_store **out);
void queue_store_close(struct queue_store *s);
/* s joins the writers of q (open in this process, outliving s): its write
 * transactions and q's committer take turns on one in-process lock, which
 * wakes the next at once where SQLite's busy handler would poll, and q's
 * checkpointer thread checkpoints for s too (none inside s's commits). */
void queue_store_share(struct queue_store *s, struct queue *q);

struct queue_due_rcpt {
    int64_t id;
    char address[512];
    unsigned attempts;
};

struct queue_due {
    int64_t id;
    char qid[QUEUE_ID_SIZE];
    int64_t created_at;
    char sender[512];
    char auth_user[256];
    char kind[16];
    char owner[256];          /* the account's owner address (bounces), "" = none */
    int64_t warned_at;
    uint64_t size;
    size_t rcpt_count;
    struct queue_due_rcpt *rcpts; /* the recipients due now */
};

/* Up to max messages with recipients due at now (state queued/deferred,
 * next_attempt_at <= now, message not held), oldest first, skipping message
 * ids for which skip returns true (in flight). *out: array for
 * queue_due_free. */
int queue_store_due(struct queue_store *s, int64_t now, size_t max,
                    bool (*skip)(int64_t message_id, void *arg), void *arg,
                    struct queue_due **out, size_t *count);
void queue_due_free(struct queue_due *due, size_t count);
/* Earliest next_attempt_at among pending recipients of messages not held;
 * INT64_MAX when nothing is pending. */
int queue_store_next_due(struct queue_store *s, int64_t *at);
/* Around a scan's reads (queue_store_due, queue_store_body,
 * queue_store_next_due): one read transaction, so they see one snapshot and
 * take SQLite's read lock once, not once per statement (and re-read the
 * pages other connections changed once). On a shared store the snapshot is
 * taken under the write lock, so every message it shows has been through
 * the committed hook already. 0 or QUEUE_ERR_STORAGE; read_end after
 * either. */
int queue_store_read_begin(struct queue_store *s);
void queue_store_read_end(struct queue_store *s);
/* The stored message (header + body) by message id; caller frees *out. */
int queue_store_body(struct queue_store *s, int64_t message_id, uint8_t **out, size_t *out_len);

struct queue_attempt {
    int64_t recipient_id;     /* 0: the whole message (dns, connect, …) */
    const char *domain, *host, *address, *step, *tls, *reply, *outcome;
};

struct queue_rcpt_update {
    int64_t recipient_id;
    const char *state;        /* "delivered" | "deferred" | "bounced" */
    int64_t next_attempt_at;  /* when deferred */
    const char *dsn_status;
    const char *last_error;
};

/* A message the delivery side creates (a DSN or delay warning). */
struct queue_new_message {
    const char *qid;          /* from queue_id_new() */
    const char *kind;         /* "dsn" | "warning" */
    const char *sender;       /* "" (null sender, RFC 3464) */
    const char *const *recipients;
    size_t recipient_count;
    const uint8_t *data;      /* the whole message, CRLF lines */
    size_t data_len;
};

/* The result of one delivery attempt for one message, written in one
 * transaction: attempt rows, recipient states (attempts counted), any new
 * messages (bounces are thus never lost nor duplicated), the warned mark,
 * and the message's own state / next_attempt_at / done_at recomputed. */
struct queue_outcome {
    int64_t message_id;
    /* the message's queue id (NULL: not checked): when the row with
     * message_id is gone or is now another message (an admin deleted it
     * during the attempt, and ids of deleted rows are reused), nothing of
     * the outcome is written and its status is QUEUE_ERR_NOT_FOUND */
    const char *qid;
    int64_t now;
    const struct queue_attempt *attempts;
    size_t attempt_count;
    const struct queue_rcpt_update *rcpts;
    size_t rcpt_count;
    const struct queue_new_message *created;
    size_t created_count;
    bool is_warned;           /* a delay warning was created: set warned_at */
};
int queue_store_record(struct queue_store *s, const struct queue_outcome *o);
/* Several outcomes in one transaction (one fsync), as the submission side
 * groups its commits; status[i] gets each one's result. When the group
 * fails for a reason other than the lock, each is written on its own so one
 * bad outcome does not fail the others. Returns 0 if all were written, else
 * the first non-zero status. */
int queue_store_record_batch(struct queue_store *s, const struct queue_outcome *const *o, size_t n,
                             int *status);

/* Admin actions by queue id (NULL/"" = every message where noted). */
int queue_store_hold(struct queue_store *s, const char *qid, bool is_held);
/* Make pending recipients due now; qid NULL: every message not held.
 * *count: messages affected. */
int queue_store_retry(struct queue_store *s, const char *qid, int64_t now, size_t *count);
int queue_store_delete(struct queue_store *s, const char *qid);
/* Delete finished messages whose done_at is before `before`; *count. */
int queue_store_purge_done(struct queue_store *s, int64_t before, size_t *count);

#endif

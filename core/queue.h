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

#define QUEUE_ID_SIZE 16 /* 15 characters + NUL, e.g. "4Xk9T2mQpR7vB3a" */

enum queue_status {
    QUEUE_OK = 0,
    QUEUE_ERR_STORAGE = -1, /* disk full, I/O error: 452 4.3.1 */
    QUEUE_ERR_BUSY = -2,    /* database locked past the busy timeout: 452 4.3.1 */
    QUEUE_ERR_CLOSED = -3,  /* queue shutting down: 421 4.3.2 */
    QUEUE_ERR_NOT_FOUND = -4,
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
    /* private to queue.c */
    struct queue_commit_req *next;
};

struct queue;

/* Open (creating/migrating) the queue tables in the database at path and
 * start the committer thread. Caller frees with queue_close. */
int queue_open(const char *path, unsigned busy_timeout_ms, struct queue **out);
/* Finish every submitted request (callbacks run), stop the thread, close. */
void queue_close(struct queue *q);

/* Thread-safe. Returns 0 (the callback will run exactly once) or
 * QUEUE_ERR_CLOSED (it will not). */
int queue_commit_submit(struct queue *q, struct queue_commit_req *req);

/* A new unique queue id into out (QUEUE_ID_SIZE). Thread-safe. */
void queue_id_new(char out[QUEUE_ID_SIZE]);

/* Hook called on the committer thread after each committed batch, once per
 * message (the relay core registers here; cmd/ wires it). */
typedef void (*queue_committed_hook)(const char *qid, void *arg);
void queue_set_committed_hook(struct queue *q, queue_committed_hook hook, void *arg);

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
    char state[16];           /* "queued", "hold", … */
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

#endif

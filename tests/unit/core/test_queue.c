/* Unit tests for the durable queue (core/queue.c) against a real SQLite file
 * in a fresh temporary directory: round trips, concurrent submitters, group
 * commit, storage failures leaving nothing behind, close with pending work,
 * queue id uniqueness, a child killed with SIGKILL mid-stream, and the WAL
 * starting over under steady writes. Every wait is on a condition (a
 * condvar, a pipe, a counter), never on a sleep. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "auth/store.h"
#include "core/queue.h"
#include "core/queue_internal.h"
#include "tests/unit/unit_tempdir.h"

#define WAIT_DEADLINE_S 60 /* a hang becomes a failure, never a pass */

/* ---- fixture: one temporary directory per test ------------------------- */

struct fixture {
    char dir[64];
    char path[96];
};

static int fixture_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_non_null(unit_tempdir_make(f->dir, sizeof(f->dir), "test_queue"));
    snprintf(f->path, sizeof(f->path), "%s/smarthost.db", f->dir);
    *state = f;
    return 0;
}

static int fixture_teardown(void **state)
{
    struct fixture *f = *state;
    unit_tempdir_remove(f->dir);
    free(f);
    return 0;
}

/* ---- requests and their callbacks -------------------------------------- */

/* Counts callbacks; optionally parks the committer inside one callback (the
 * "gate") so that the test can line up requests behind it. */
struct tracker {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    size_t done;
    bool is_gate_entered;
    bool is_gate_open;
};

struct test_req {
    struct queue_commit_req req;
    char qid[QUEUE_ID_SIZE];
    struct tracker *tracker;
    bool is_gate;
    int status;
    atomic_int calls;
};

static void tracker_init(struct tracker *t)
{
    memset(t, 0, sizeof(*t));
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->cond, NULL);
}

static void tracker_destroy(struct tracker *t)
{
    pthread_cond_destroy(&t->cond);
    pthread_mutex_destroy(&t->lock);
}

static struct timespec deadline_after(int seconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += seconds;
    return ts;
}

/* Wait until at least n callbacks ran. */
static void tracker_wait_done(struct tracker *t, size_t n)
{
    struct timespec deadline = deadline_after(WAIT_DEADLINE_S);
    pthread_mutex_lock(&t->lock);
    while (t->done < n) {
        if (pthread_cond_timedwait(&t->cond, &t->lock, &deadline) == ETIMEDOUT)
            break;
    }
    size_t done = t->done;
    pthread_mutex_unlock(&t->lock);
    if (done < n)
        fail_msg("only %zu of %zu callbacks ran", done, n);
}

static void tracker_wait_gate_entered(struct tracker *t)
{
    struct timespec deadline = deadline_after(WAIT_DEADLINE_S);
    pthread_mutex_lock(&t->lock);
    while (!t->is_gate_entered) {
        if (pthread_cond_timedwait(&t->cond, &t->lock, &deadline) == ETIMEDOUT)
            break;
    }
    bool entered = t->is_gate_entered;
    pthread_mutex_unlock(&t->lock);
    if (!entered)
        fail_msg("the committer never reached the gate callback");
}

static void tracker_open_gate(struct tracker *t)
{
    pthread_mutex_lock(&t->lock);
    t->is_gate_open = true;
    pthread_cond_broadcast(&t->cond);
    pthread_mutex_unlock(&t->lock);
}

static void test_on_commit(struct queue_commit_req *req, int status)
{
    struct test_req *tr = req->data;
    struct tracker *t = tr->tracker;
    tr->status = status;
    atomic_fetch_add(&tr->calls, 1);
    pthread_mutex_lock(&t->lock);
    t->done++;
    pthread_cond_broadcast(&t->cond);
    if (tr->is_gate) {
        t->is_gate_entered = true;
        pthread_cond_broadcast(&t->cond);
        while (!t->is_gate_open)
            pthread_cond_wait(&t->cond, &t->lock);
    }
    pthread_mutex_unlock(&t->lock);
}

static const char *const default_rcpts[] = {"alice@example.test", "bob@example.test"};
static const char default_header[] = "Received: from printer (unit test)\r\n";
static const char default_body[] = "Subject: hi\r\n\r\nhello\r\n";

/* A request with default content; the caller may override fields after. */
static void test_req_init(struct test_req *tr, struct tracker *t)
{
    memset(tr, 0, sizeof(*tr));
    queue_id_new(tr->qid);
    tr->tracker = t;
    tr->status = 1; /* no QUEUE_* value */
    tr->req.qid = tr->qid;
    tr->req.sender = "printer@example.test";
    tr->req.recipients = default_rcpts;
    tr->req.recipient_count = 2;
    tr->req.auth_user = "printer";
    tr->req.client_addr = "192.0.2.1";
    tr->req.helo = "printer.example.test";
    tr->req.header = (const uint8_t *)default_header;
    tr->req.header_len = strlen(default_header);
    tr->req.body = (const uint8_t *)default_body;
    tr->req.body_len = strlen(default_body);
    tr->req.cb = test_on_commit;
    tr->req.data = tr;
}

static struct queue *open_queue(const struct fixture *f, unsigned busy_ms)
{
    struct queue *q = NULL;
    assert_int_equal(queue_open(f->path, busy_ms, &q), 0);
    assert_non_null(q);
    return q;
}

/* ---- reading back ------------------------------------------------------ */

struct found {
    const char *qid;
    struct queue_entry entry;
    size_t matches;
    size_t total;
};

static int find_entry(const struct queue_entry *e, void *arg)
{
    struct found *fd = arg;
    fd->total++;
    if (strcmp(e->qid, fd->qid) == 0) {
        fd->entry = *e;
        fd->matches++;
    }
    return 0;
}

/* The list entry for qid; fails unless exactly one exists. */
static struct queue_entry read_entry(struct queue_reader *r, const char *qid)
{
    struct found fd = {.qid = qid};
    assert_int_equal(queue_reader_list(r, find_entry, &fd), 0);
    assert_int_equal(fd.matches, 1);
    return fd.entry;
}

static size_t count_messages(const struct fixture *f)
{
    struct queue_reader *r = NULL;
    assert_int_equal(queue_reader_open(f->path, &r), 0);
    struct found fd = {.qid = ""};
    assert_int_equal(queue_reader_list(r, find_entry, &fd), 0);
    queue_reader_close(r);
    return fd.total;
}

struct rcpt_list {
    char addr[8][128];
    char state[8][16];
    size_t count;
};

static int collect_rcpt(const char *rcpt, const char *state, void *arg)
{
    struct rcpt_list *l = arg;
    if (l->count < 8) {
        snprintf(l->addr[l->count], sizeof(l->addr[0]), "%s", rcpt);
        snprintf(l->state[l->count], sizeof(l->state[0]), "%s", state);
    }
    l->count++;
    return 0;
}

/* One integer from a direct query on its own connection. */
static int64_t sql_int(const struct fixture *f, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void sql_exec(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s: %s", sql, err != NULL ? err : "?");
        sqlite3_free(err);
        fail_msg("%s", msg);
    }
}

/* Assert a message is absent in every form: no list entry, no body, no
 * recipients, and no recipient row left without its message. */
static void assert_absent(const struct fixture *f, const char *qid)
{
    struct queue_reader *r = NULL;
    assert_int_equal(queue_reader_open(f->path, &r), 0);
    struct found fd = {.qid = qid};
    assert_int_equal(queue_reader_list(r, find_entry, &fd), 0);
    assert_int_equal(fd.matches, 0);
    uint8_t *body = NULL;
    size_t len = 0;
    assert_int_equal(queue_reader_body(r, qid, &body, &len), QUEUE_ERR_NOT_FOUND);
    assert_null(body);
    struct rcpt_list l = {.count = 0};
    assert_int_equal(queue_reader_recipients(r, qid, collect_rcpt, &l), QUEUE_ERR_NOT_FOUND);
    assert_int_equal(l.count, 0);
    queue_reader_close(r);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM recipients WHERE message_id NOT IN"
                                " (SELECT id FROM messages)"),
                     0);
}

/* Regular files in the queue's body directory. */
static int64_t spool_file_count(const struct fixture *f)
{
    char dir[160];
    snprintf(dir, sizeof(dir), "%s" QUEUE_SPOOL_SUFFIX, f->path);
    DIR *d = opendir(dir);
    assert_non_null(d);
    int64_t n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        n += e->d_type == DT_REG;
    closedir(d);
    return n;
}

/* ---- round trip (table-driven) ----------------------------------------- */

struct hook_log {
    pthread_mutex_t lock;
    char qids[4][QUEUE_ID_SIZE];
    size_t count;
};

static void on_committed(const struct queue_committed *c, void *arg)
{
    struct hook_log *h = arg;
    pthread_mutex_lock(&h->lock);
    if (h->count < 4)
        snprintf(h->qids[h->count], QUEUE_ID_SIZE, "%s", c->qid);
    h->count++;
    pthread_mutex_unlock(&h->lock);
}

struct roundtrip_case {
    const char *name;
    const char *sender;
    const char *const *rcpts;
    size_t rcpt_count;
    const char *auth_user;
    size_t header_len; /* bytes of generated header */
    size_t body_len;   /* bytes of generated body (binary, NULs included) */
};

static const char *const one_rcpt[] = {"x@example.test"};
static const char *const five_rcpts[] = {"a@example.test", "b@example.test", "c@example.test",
                                         "d@example.test", "e@example.test"};

static const struct roundtrip_case roundtrip_cases[] = {
    {"plain", "dev@example.test", five_rcpts, 5, "printer", 40, 200},
    {"null sender", "", one_rcpt, 1, "printer", 40, 10},
    {"unauthenticated", "a@example.test", one_rcpt, 1, "", 40, 10},
    {"empty header", "a@example.test", one_rcpt, 1, "u", 0, 100},
    {"empty body", "a@example.test", one_rcpt, 1, "u", 30, 0},
    {"empty message", "a@example.test", one_rcpt, 1, "u", 0, 0},
    {"one MiB body", "a@example.test", five_rcpts, 5, "u", 120, 1 << 20},
};

static void fill_bytes(uint8_t *p, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(seed + i * 131 + (i >> 9)); /* every byte value, NULs included */
}

static void test_roundtrip(void **state)
{
    struct fixture *f = *state;
    struct queue *q = open_queue(f, 5000);
    struct hook_log hook = {.count = 0};
    pthread_mutex_init(&hook.lock, NULL);
    queue_set_committed_hook(q, on_committed, &hook);

    const size_t n = sizeof(roundtrip_cases) / sizeof(roundtrip_cases[0]);
    struct tracker t;
    tracker_init(&t);
    for (size_t i = 0; i < n; i++) {
        const struct roundtrip_case *c = &roundtrip_cases[i];
        uint8_t *header = malloc(c->header_len + 1);
        uint8_t *body = malloc(c->body_len + 1);
        assert_non_null(header);
        assert_non_null(body);
        fill_bytes(header, c->header_len, 7 + (unsigned)i);
        fill_bytes(body, c->body_len, 99 + (unsigned)i);

        struct test_req tr;
        test_req_init(&tr, &t);
        tr.req.sender = c->sender;
        tr.req.recipients = c->rcpts;
        tr.req.recipient_count = c->rcpt_count;
        tr.req.auth_user = c->auth_user;
        tr.req.header = header;
        tr.req.header_len = c->header_len;
        tr.req.body = body;
        tr.req.body_len = c->body_len;
        time_t before = time(NULL);
        assert_int_equal(queue_commit_submit(q, &tr.req), 0);
        tracker_wait_done(&t, i + 1);
        if (tr.status != QUEUE_OK)
            fail_msg("case \"%s\": status %d", c->name, tr.status);
        assert_int_equal(atomic_load(&tr.calls), 1);

        /* Committed means readable by another connection right away. */
        struct queue_reader *r = NULL;
        assert_int_equal(queue_reader_open(f->path, &r), 0);
        struct queue_entry e = read_entry(r, tr.qid);
        assert_string_equal(e.sender, c->sender);
        assert_string_equal(e.auth_user, c->auth_user);
        assert_string_equal(e.client_addr, "192.0.2.1");
        assert_string_equal(e.state, "queued");
        assert_int_equal(e.size, c->header_len + c->body_len);
        assert_int_equal(e.recipient_count, c->rcpt_count);
        assert_true(e.created_at >= before && e.created_at <= time(NULL));

        struct rcpt_list l = {.count = 0};
        assert_int_equal(queue_reader_recipients(r, tr.qid, collect_rcpt, &l), 0);
        assert_int_equal(l.count, c->rcpt_count);
        for (size_t k = 0; k < c->rcpt_count; k++) {
            assert_string_equal(l.addr[k], c->rcpts[k]);
            assert_string_equal(l.state[k], "queued");
        }

        uint8_t *stored = NULL;
        size_t stored_len = 0;
        assert_int_equal(queue_reader_body(r, tr.qid, &stored, &stored_len), 0);
        assert_non_null(stored);
        assert_int_equal(stored_len, c->header_len + c->body_len);
        if (c->header_len > 0)
            assert_memory_equal(stored, header, c->header_len);
        if (c->body_len > 0)
            assert_memory_equal(stored + c->header_len, body, c->body_len);
        free(stored);
        queue_reader_close(r);
        free(header);
        free(body);

        /* the hook ran before the callback; closing and reopening works */
        if (i == 0) {
            queue_close(q);
            assert_int_equal(hook.count, 1);
            assert_string_equal(hook.qids[0], tr.qid);
            q = open_queue(f, 5000); /* reopening migrates nothing and works */
        }
    }
    queue_close(q);
    assert_int_equal(count_messages(f), n);
    assert_int_equal(sql_int(f, "SELECT version FROM schema_version WHERE module = 'queue'"), 4);

    /* unknown ids */
    struct queue_reader *r = NULL;
    assert_int_equal(queue_reader_open(f->path, &r), 0);
    uint8_t *body = NULL;
    size_t len = 0;
    assert_int_equal(queue_reader_body(r, "000000000000000", &body, &len), QUEUE_ERR_NOT_FOUND);
    struct rcpt_list l = {.count = 0};
    assert_int_equal(queue_reader_recipients(r, "000000000000000", collect_rcpt, &l),
                     QUEUE_ERR_NOT_FOUND);
    queue_reader_close(r);
    tracker_destroy(&t);
    pthread_mutex_destroy(&hook.lock);
}

/* ---- opening ------------------------------------------------------------ */

static int stop_at_first(const struct queue_entry *e, void *arg)
{
    (void)e;
    (*(size_t *)arg)++;
    return 1;
}

static void test_open_shares_schema_version(void **state)
{
    struct fixture *f = *state;
    /* The account store got there first: its row must survive ours. */
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    sql_exec(db, "CREATE TABLE schema_version(module TEXT PRIMARY KEY, version INTEGER);"
                 "INSERT INTO schema_version VALUES('auth', 3)");
    sqlite3_close(db);

    /* A database without queue tables reads as an empty queue. */
    struct queue_reader *r = NULL;
    assert_int_equal(queue_reader_open(f->path, &r), 0);
    size_t seen = 0;
    assert_int_equal(queue_reader_list(r, stop_at_first, &seen), 0);
    assert_int_equal(seen, 0);
    queue_reader_close(r);

    struct queue *q = open_queue(f, 1000);
    queue_close(q);
    q = open_queue(f, 1000);
    queue_close(q);
    assert_int_equal(sql_int(f, "SELECT version FROM schema_version WHERE module = 'auth'"), 3);
    assert_int_equal(sql_int(f, "SELECT version FROM schema_version WHERE module = 'queue'"), 4);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM schema_version"), 2);
    /* WAL is persistent in the file: the durability promise rests on it */
    assert_int_equal(
        sql_int(f, "SELECT COUNT(*) FROM pragma_journal_mode WHERE journal_mode = 'wal'"), 1);

    /* a non-zero return from the list callback stops the walk */
    struct tracker t;
    tracker_init(&t);
    q = open_queue(f, 1000);
    struct test_req a, b;
    test_req_init(&a, &t);
    test_req_init(&b, &t);
    assert_int_equal(queue_commit_submit(q, &a.req), 0);
    assert_int_equal(queue_commit_submit(q, &b.req), 0);
    queue_close(q);
    assert_int_equal(a.status, QUEUE_OK);
    assert_int_equal(b.status, QUEUE_OK);
    assert_int_equal(queue_reader_open(f->path, &r), 0);
    seen = 0;
    assert_int_equal(queue_reader_list(r, stop_at_first, &seen), 0);
    assert_int_equal(seen, 1);
    queue_reader_close(r);
    tracker_destroy(&t);
}

static void test_open_errors(void **state)
{
    struct fixture *f = *state;
    struct queue *q = (struct queue *)1;
    char path[160];
    snprintf(path, sizeof(path), "%s/missing-dir/smarthost.db", f->dir);
    assert_int_equal(queue_open(path, 100, &q), QUEUE_ERR_STORAGE);
    assert_null(q);

    /* the reader never creates a database */
    struct queue_reader *r = (struct queue_reader *)1;
    assert_int_equal(queue_reader_open(f->path, &r), QUEUE_ERR_STORAGE);
    assert_null(r);
    assert_int_equal(access(f->path, F_OK), -1);
}

/* ---- concurrency and grouping ------------------------------------------ */

#define SUBMITTERS 8
#define PER_SUBMITTER 100

struct submitter {
    struct queue *q;
    struct test_req *reqs;
    size_t count;
    int rc;
};

static void *submitter_run(void *arg)
{
    struct submitter *s = arg;
    for (size_t i = 0; i < s->count; i++)
        if (queue_commit_submit(s->q, &s->reqs[i].req) != 0)
            s->rc = -1;
    return NULL;
}

struct qid_set {
    char (*qids)[QUEUE_ID_SIZE];
    size_t count, cap;
};

static int collect_qid(const struct queue_entry *e, void *arg)
{
    struct qid_set *s = arg;
    if (s->count < s->cap)
        memcpy(s->qids[s->count], e->qid, QUEUE_ID_SIZE);
    s->count++;
    return 0;
}

static int compare_qid(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void count_committed(const struct queue_committed *c, void *arg)
{
    (void)c;
    atomic_fetch_add((atomic_size_t *)arg, 1);
}

static void test_concurrent_submitters(void **state)
{
    struct fixture *f = *state;
    const size_t total = SUBMITTERS * PER_SUBMITTER;
    struct queue *q = open_queue(f, 5000);
    atomic_size_t hooked = 0;
    queue_set_committed_hook(q, count_committed, &hooked);
    struct tracker t;
    tracker_init(&t);
    struct test_req *reqs = calloc(total, sizeof(*reqs));
    assert_non_null(reqs);
    for (size_t i = 0; i < total; i++)
        test_req_init(&reqs[i], &t);

    pthread_t threads[SUBMITTERS];
    struct submitter subs[SUBMITTERS];
    for (size_t i = 0; i < SUBMITTERS; i++) {
        subs[i] = (struct submitter){.q = q, .reqs = reqs + i * PER_SUBMITTER,
                                     .count = PER_SUBMITTER};
        assert_int_equal(pthread_create(&threads[i], NULL, submitter_run, &subs[i]), 0);
    }
    for (size_t i = 0; i < SUBMITTERS; i++) {
        pthread_join(threads[i], NULL);
        assert_int_equal(subs[i].rc, 0);
    }
    tracker_wait_done(&t, total);
    for (size_t i = 0; i < total; i++) {
        assert_int_equal(atomic_load(&reqs[i].calls), 1);
        assert_int_equal(reqs[i].status, QUEUE_OK);
    }
    assert_true(queue_stats_batches(q) >= 1 && queue_stats_batches(q) <= total);
    queue_close(q);
    assert_int_equal(atomic_load(&hooked), total);
    /* exactly once each: no extra callback arrived while closing */
    assert_int_equal(t.done, total);

    /* every row exists, none twice, nothing else */
    struct qid_set got = {.qids = calloc(total, QUEUE_ID_SIZE), .cap = total};
    char (*want)[QUEUE_ID_SIZE] = calloc(total, QUEUE_ID_SIZE);
    assert_non_null(got.qids);
    assert_non_null(want);
    struct queue_reader *r = NULL;
    assert_int_equal(queue_reader_open(f->path, &r), 0);
    assert_int_equal(queue_reader_list(r, collect_qid, &got), 0);
    queue_reader_close(r);
    assert_int_equal(got.count, total);
    for (size_t i = 0; i < total; i++)
        memcpy(want[i], reqs[i].qid, QUEUE_ID_SIZE);
    qsort(got.qids, total, QUEUE_ID_SIZE, compare_qid);
    qsort(want, total, QUEUE_ID_SIZE, compare_qid);
    for (size_t i = 0; i < total; i++)
        assert_string_equal(got.qids[i], want[i]);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM recipients"), 2 * total);
    free(got.qids);
    free(want);
    free(reqs);
    tracker_destroy(&t);
}

/* Park the committer in one callback, line up N requests behind it, let it
 * go: they must be written by exactly one more transaction. */
static void test_batches_group(void **state)
{
    struct fixture *f = *state;
    enum { N = 100 };
    struct queue *q = open_queue(f, 5000);
    assert_int_equal(queue_stats_batches(q), 0);
    struct tracker t;
    tracker_init(&t);
    struct test_req gate;
    test_req_init(&gate, &t);
    gate.is_gate = true;
    assert_int_equal(queue_commit_submit(q, &gate.req), 0);
    tracker_wait_gate_entered(&t);
    assert_int_equal(queue_stats_batches(q), 1);

    static struct test_req reqs[N];
    for (size_t i = 0; i < N; i++) {
        test_req_init(&reqs[i], &t);
        assert_int_equal(queue_commit_submit(q, &reqs[i].req), 0);
    }
    tracker_open_gate(&t);
    tracker_wait_done(&t, N + 1);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(reqs[i].status, QUEUE_OK);
    assert_int_equal(queue_stats_batches(q), 2);
    queue_close(q);
    assert_int_equal(count_messages(f), N + 1);
    tracker_destroy(&t);
}

/* ---- storage failures --------------------------------------------------- */

/* Another connection holds the write lock past the busy timeout: every
 * member of the batch gets QUEUE_ERR_BUSY, nothing is written, and the queue
 * works again once the lock is gone. */
static void test_lock_held_is_busy(void **state)
{
    struct fixture *f = *state;
    struct queue *q = open_queue(f, 20);
    struct tracker t;
    tracker_init(&t);
    struct test_req gate;
    test_req_init(&gate, &t);
    gate.is_gate = true;
    assert_int_equal(queue_commit_submit(q, &gate.req), 0);
    tracker_wait_gate_entered(&t);

    sqlite3 *other = NULL;
    assert_int_equal(sqlite3_open(f->path, &other), SQLITE_OK);
    sql_exec(other, "BEGIN EXCLUSIVE");
    struct test_req reqs[3];
    for (size_t i = 0; i < 3; i++) {
        test_req_init(&reqs[i], &t);
        assert_int_equal(queue_commit_submit(q, &reqs[i].req), 0);
    }
    tracker_open_gate(&t);
    tracker_wait_done(&t, 4);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(reqs[i].status, QUEUE_ERR_BUSY);
        assert_int_equal(atomic_load(&reqs[i].calls), 1);
    }
    assert_int_equal(queue_stats_batches(q), 1);
    sql_exec(other, "ROLLBACK");
    sqlite3_close(other);
    for (size_t i = 0; i < 3; i++)
        assert_absent(f, reqs[i].qid);

    struct test_req after;
    test_req_init(&after, &t);
    assert_int_equal(queue_commit_submit(q, &after.req), 0);
    tracker_wait_done(&t, 5);
    assert_int_equal(after.status, QUEUE_OK);
    queue_close(q);
    assert_int_equal(count_messages(f), 2);
    tracker_destroy(&t);
}

/* One request fails half-way (its message row is in, its second recipient
 * is refused): it gets QUEUE_ERR_STORAGE and leaves no row; the others in
 * its batch are retried alone and committed. */
static void test_failure_is_isolated(void **state)
{
    struct fixture *f = *state;
    struct queue *q = open_queue(f, 5000);
    sqlite3 *other = NULL;
    assert_int_equal(sqlite3_open(f->path, &other), SQLITE_OK);
    sql_exec(other, "CREATE TRIGGER test_refuse BEFORE INSERT ON recipients"
                    " WHEN NEW.address = 'refused@example.test'"
                    " BEGIN SELECT RAISE(ABORT, 'injected failure'); END");
    sqlite3_close(other);

    struct tracker t;
    tracker_init(&t);
    struct test_req gate;
    test_req_init(&gate, &t);
    gate.is_gate = true;
    assert_int_equal(queue_commit_submit(q, &gate.req), 0);
    tracker_wait_gate_entered(&t);

    static const char *const bad_rcpts[] = {"ok@example.test", "refused@example.test"};
    enum { N = 5, BAD = 2, INVALID = 4 };
    struct test_req reqs[N];
    for (size_t i = 0; i < N; i++) {
        test_req_init(&reqs[i], &t);
        if (i == BAD)
            reqs[i].req.recipients = bad_rcpts;
        if (i == INVALID)
            reqs[i].req.recipient_count = 0; /* could never be delivered */
        assert_int_equal(queue_commit_submit(q, &reqs[i].req), 0);
    }
    tracker_open_gate(&t);
    tracker_wait_done(&t, N + 1);
    for (size_t i = 0; i < N; i++) {
        int want = i == BAD || i == INVALID ? QUEUE_ERR_STORAGE : QUEUE_OK;
        if (reqs[i].status != want)
            fail_msg("request %zu: status %d, want %d", i, reqs[i].status, want);
        assert_int_equal(atomic_load(&reqs[i].calls), 1);
    }
    /* gate, then the three good ones alone: four transactions */
    assert_int_equal(queue_stats_batches(q), 4);
    queue_close(q);
    assert_absent(f, reqs[BAD].qid);
    assert_absent(f, reqs[INVALID].qid);
    assert_int_equal(count_messages(f), 4);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM recipients"), 8);
    tracker_destroy(&t);
}

/* ---- closing ------------------------------------------------------------ */

struct closer {
    struct queue *q;
};

static void *closer_run(void *arg)
{
    queue_close(((struct closer *)arg)->q);
    return NULL;
}

struct probe {
    struct test_req tr;
    struct probe *next;
};

/* queue_close with requests waiting: they are all committed and called back
 * before it returns; a submit once closing started is refused and never
 * called back. The committer is parked in a callback, so the queue stays
 * alive while the test probes it. */
static void test_close_with_pending(void **state)
{
    struct fixture *f = *state;
    enum { N = 20 };
    struct queue *q = open_queue(f, 5000);
    struct tracker t;
    tracker_init(&t);
    struct test_req gate;
    test_req_init(&gate, &t);
    gate.is_gate = true;
    assert_int_equal(queue_commit_submit(q, &gate.req), 0);
    tracker_wait_gate_entered(&t);
    struct test_req reqs[N];
    for (size_t i = 0; i < N; i++) {
        test_req_init(&reqs[i], &t);
        assert_int_equal(queue_commit_submit(q, &reqs[i].req), 0);
    }

    pthread_t thread;
    struct closer c = {.q = q};
    assert_int_equal(pthread_create(&thread, NULL, closer_run, &c), 0);
    /* Until the closer has flagged the queue, probes are accepted (and must
     * then be committed like any other request). */
    struct probe *probes = NULL;
    size_t accepted = 0;
    struct probe *refused = NULL;
    for (;;) {
        struct probe *p = calloc(1, sizeof(*p));
        assert_non_null(p);
        test_req_init(&p->tr, &t);
        p->next = probes;
        probes = p;
        int rc = queue_commit_submit(q, &p->tr.req);
        if (rc == QUEUE_ERR_CLOSED) {
            refused = p;
            break;
        }
        assert_int_equal(rc, 0);
        accepted++;
        sched_yield();
    }
    tracker_open_gate(&t);
    pthread_join(thread, NULL); /* q is gone now */

    assert_int_equal(t.done, 1 + N + accepted);
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(reqs[i].status, QUEUE_OK);
        assert_int_equal(atomic_load(&reqs[i].calls), 1);
    }
    char refused_qid[QUEUE_ID_SIZE];
    memcpy(refused_qid, refused->tr.qid, QUEUE_ID_SIZE);
    while (probes != NULL) {
        struct probe *p = probes;
        probes = p->next;
        if (p == refused) {
            assert_int_equal(atomic_load(&p->tr.calls), 0);
        } else {
            assert_int_equal(p->tr.status, QUEUE_OK);
            assert_int_equal(atomic_load(&p->tr.calls), 1);
        }
        free(p);
    }
    assert_int_equal(count_messages(f), 1 + N + accepted);
    assert_absent(f, refused_qid);
    tracker_destroy(&t);
}

/* ---- queue ids ---------------------------------------------------------- */

#define ID_THREADS 4
#define IDS_PER_THREAD 25000

static void *ids_run(void *arg)
{
    char (*out)[QUEUE_ID_SIZE] = arg;
    for (size_t i = 0; i < IDS_PER_THREAD; i++)
        queue_id_new(out[i]);
    return NULL;
}

/* The low 64 bits of the 89-bit value a queue id encodes (15 base-62
 * digits, most significant first; arithmetic modulo 2^64 keeps them exact).
 * Its low 47 bits are the process-random part and the counter. */
#define ID_LOW_MASK ((UINT64_C(1) << 47) - 1)

static uint64_t id_decode(const char *id)
{
    static const char digits[] =
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    uint64_t v = 0;
    for (size_t i = 0; i < QUEUE_ID_SIZE - 1; i++) {
        const char *d = strchr(digits, id[i]);
        assert_non_null(d);
        v = v * 62 + (unsigned)(d - digits);
    }
    return v;
}

static void test_ids_unique(void **state)
{
    (void)state;
    const size_t total = ID_THREADS * IDS_PER_THREAD;
    char (*ids)[QUEUE_ID_SIZE] = calloc(total, QUEUE_ID_SIZE);
    assert_non_null(ids);
    pthread_t threads[ID_THREADS];
    for (size_t i = 0; i < ID_THREADS; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, ids_run, ids + i * IDS_PER_THREAD), 0);
    for (size_t i = 0; i < ID_THREADS; i++)
        pthread_join(threads[i], NULL);
    for (size_t i = 0; i < total; i++) {
        assert_int_equal(strlen(ids[i]), QUEUE_ID_SIZE - 1);
        for (size_t k = 0; k < QUEUE_ID_SIZE - 1; k++) {
            char ch = ids[i][k];
            assert_true((ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'Z') ||
                        (ch >= 'a' && ch <= 'z'));
        }
    }
    qsort(ids, total, QUEUE_ID_SIZE, compare_qid);
    for (size_t i = 1; i < total; i++)
        if (strcmp(ids[i - 1], ids[i]) == 0)
            fail_msg("duplicate queue id %s", ids[i]);

    /* a forked child does not replay the parent's sequence */
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char id[QUEUE_ID_SIZE];
        queue_id_new(id);
        _exit(write(fds[1], id, QUEUE_ID_SIZE) == QUEUE_ID_SIZE ? 0 : 1);
    }
    char parent_id[QUEUE_ID_SIZE], child_id[QUEUE_ID_SIZE];
    queue_id_new(parent_id);
    assert_int_equal(read(fds[0], child_id, QUEUE_ID_SIZE), QUEUE_ID_SIZE);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(fds[0]);
    close(fds[1]);
    /* Same millisecond or not, the part below the time bits (24 random bits
     * per process, 23 counter bits) must differ: without a reseed at fork
     * both sides would continue from the same random part and counter. */
    assert_true((id_decode(parent_id) & ID_LOW_MASK) != (id_decode(child_id) & ID_LOW_MASK));
    free(ids);
}

/* ---- crash consistency -------------------------------------------------- */

#define CRASH_MESSAGES 4000
#define CRASH_IN_FLIGHT 32
#define CRASH_KILL_AFTER 100
#define CRASH_MAX_RCPTS 4

static const char *const crash_rcpts[CRASH_MAX_RCPTS] = {
    "rcpt0@example.test", "rcpt1@example.test", "rcpt2@example.test", "rcpt3@example.test"};

struct crash_msg {
    struct queue_commit_req req;
    char qid[QUEUE_ID_SIZE];
    char header[64];
    uint8_t *body;
};

struct crash_child {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    size_t in_flight;
    int fd;
    bool has_failed;
};

static unsigned crash_seed(const char *qid)
{
    unsigned h = 0;
    for (const char *p = qid; *p != '\0'; p++)
        h = h * 31 + (unsigned char)*p;
    return h;
}

/* Child side, on the committer thread: report the qid only once it is OK. */
static void crash_on_commit(struct queue_commit_req *req, int status)
{
    struct crash_msg *m = (struct crash_msg *)req;
    struct crash_child *c = req->data;
    if (status == QUEUE_OK) {
        char line[QUEUE_ID_SIZE];
        memcpy(line, m->qid, QUEUE_ID_SIZE - 1);
        line[QUEUE_ID_SIZE - 1] = '\n';
        if (write(c->fd, line, sizeof(line)) != (ssize_t)sizeof(line))
            c->has_failed = true;
    } else {
        c->has_failed = true;
    }
    free(m->body);
    free(m);
    pthread_mutex_lock(&c->lock);
    c->in_flight--;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

static _Noreturn void crash_child_run(const char *path, int fd)
{
    struct crash_child c = {.fd = fd};
    pthread_mutex_init(&c.lock, NULL);
    pthread_cond_init(&c.cond, NULL);
    struct queue *q = NULL;
    if (queue_open(path, 5000, &q) != 0)
        _exit(2);
    for (size_t i = 0; i < CRASH_MESSAGES && !c.has_failed; i++) {
        pthread_mutex_lock(&c.lock);
        while (c.in_flight >= CRASH_IN_FLIGHT)
            pthread_cond_wait(&c.cond, &c.lock);
        c.in_flight++;
        pthread_mutex_unlock(&c.lock);

        struct crash_msg *m = calloc(1, sizeof(*m));
        size_t rcpts = 1 + i % CRASH_MAX_RCPTS;
        /* one in eight is large: its body goes to a file */
        size_t body_len = 1000 + (i * 7919) % 60000 + (i % 8 == 0 ? QUEUE_SPOOL_MIN_SIZE : 0);
        if (m == NULL || (m->body = malloc(body_len)) == NULL)
            _exit(3);
        queue_id_new(m->qid);
        snprintf(m->header, sizeof(m->header), "X-Test: n=%zu len=%zu\r\n", rcpts, body_len);
        fill_bytes(m->body, body_len, crash_seed(m->qid));
        m->req = (struct queue_commit_req){
            .qid = m->qid, .sender = "crash@example.test", .recipients = crash_rcpts,
            .recipient_count = rcpts, .auth_user = "crash", .client_addr = "192.0.2.9",
            .helo = "crash.test", .header = (const uint8_t *)m->header,
            .header_len = strlen(m->header), .body = m->body, .body_len = body_len,
            .cb = crash_on_commit, .data = &c,
        };
        if (queue_commit_submit(q, &m->req) != 0)
            _exit(4);
    }
    queue_close(q);
    _exit(c.has_failed ? 5 : 0);
}

/* A stored message is complete: the header states how many recipients and
 * body bytes it must have, and the size column matches the blob. */
static void crash_check_message(struct queue_reader *r, const char *qid, uint64_t size_column)
{
    uint8_t *stored = NULL;
    size_t len = 0;
    assert_int_equal(queue_reader_body(r, qid, &stored, &len), 0);
    assert_int_equal(len, size_column);
    char header[64];
    size_t header_len = 0;
    while (header_len < len && header_len + 1 < sizeof(header) && stored[header_len] != '\n')
        header_len++;
    assert_true(header_len < len && stored[header_len] == '\n');
    memcpy(header, stored, header_len);
    header[header_len] = '\0';
    header_len++;
    size_t rcpts = 0, body_len = 0;
    if (sscanf(header, "X-Test: n=%zu len=%zu", &rcpts, &body_len) != 2)
        fail_msg("message %s: bad header \"%s\"", qid, header);
    assert_int_equal(len, header_len + body_len);
    uint8_t *want = malloc(body_len);
    assert_non_null(want);
    fill_bytes(want, body_len, crash_seed(qid));
    assert_memory_equal(stored + header_len, want, body_len);
    free(want);
    free(stored);

    struct rcpt_list l = {.count = 0};
    assert_int_equal(queue_reader_recipients(r, qid, collect_rcpt, &l), 0);
    assert_int_equal(l.count, rcpts);
    for (size_t k = 0; k < rcpts; k++)
        assert_string_equal(l.addr[k], crash_rcpts[k]);
}

struct crash_list {
    struct queue_reader *r;
    size_t count;
};

static int crash_check_entry(const struct queue_entry *e, void *arg)
{
    struct crash_list *cl = arg;
    cl->count++;
    assert_true(e->recipient_count >= 1);
    crash_check_message(cl->r, e->qid, e->size);
    return 0;
}

static void test_crash_consistency(void **state)
{
    struct fixture *f = *state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        crash_child_run(f->path, fds[1]);
    }
    close(fds[1]);
    FILE *in = fdopen(fds[0], "r");
    assert_non_null(in);

    size_t cap = CRASH_MESSAGES, count = 0;
    char (*reported)[QUEUE_ID_SIZE] = calloc(cap, QUEUE_ID_SIZE);
    assert_non_null(reported);
    char line[64];
    bool is_killed = false;
    while (fgets(line, sizeof(line), in) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        assert_int_equal(strlen(line), QUEUE_ID_SIZE - 1);
        assert_true(count < cap);
        memcpy(reported[count++], line, QUEUE_ID_SIZE);
        /* kill mid-stream; the lines the child wrote before dying stay in
         * the pipe and are read (and checked) after */
        if (count == CRASH_KILL_AFTER) {
            assert_int_equal(kill(pid, SIGKILL), 0);
            is_killed = true;
        }
    }
    fclose(in);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!is_killed || !WIFSIGNALED(status)) {
        /* the child may only finish first when it wrote everything */
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        assert_int_equal(count, CRASH_MESSAGES);
    }
    assert_true(count >= CRASH_KILL_AFTER);

    struct queue_reader *r = NULL;
    assert_int_equal(queue_reader_open(f->path, &r), 0);
    for (size_t i = 0; i < count; i++) {
        struct queue_entry e = read_entry(r, reported[i]);
        crash_check_message(r, reported[i], e.size);
    }
    struct crash_list cl = {.r = r};
    assert_int_equal(queue_reader_list(r, crash_check_entry, &cl), 0);
    assert_true(cl.count >= count);
    queue_reader_close(r);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM recipients WHERE message_id NOT IN"
                                " (SELECT id FROM messages)"),
                     0);
    free(reported);

    /* and the queue opens and writes again after the crash, first removing
     * the body files of messages whose COMMIT never happened */
    struct queue *q = open_queue(f, 5000);
    assert_true(sql_int(f, "SELECT COUNT(*) FROM bodies WHERE file = 1") > 0);
    assert_int_equal(spool_file_count(f), sql_int(f, "SELECT COUNT(*) FROM bodies WHERE file = 1"));
    struct tracker t;
    tracker_init(&t);
    struct test_req after;
    test_req_init(&after, &t);
    assert_int_equal(queue_commit_submit(q, &after.req), 0);
    queue_close(q);
    assert_int_equal(after.status, QUEUE_OK);
    tracker_destroy(&t);
}

/* ---- large bodies in files -------------------------------------------- */

static void test_large_bodies(void **state)
{
    struct fixture *f = *state;
    size_t big_len = QUEUE_SPOOL_MIN_SIZE + 12345;
    uint8_t *big = malloc(big_len);
    assert_non_null(big);
    for (size_t i = 0; i < big_len; i++)
        big[i] = (uint8_t)('a' + i % 26);

    struct queue *q = open_queue(f, 5000);
    struct tracker t;
    tracker_init(&t);
    struct test_req large, small, clash;
    test_req_init(&large, &t);
    large.req.body = big;
    large.req.body_len = big_len;
    test_req_init(&small, &t);
    test_req_init(&clash, &t);
    clash.req.body = big;
    clash.req.body_len = big_len;
    /* a file already named like clash's qid: its body cannot be written,
     * so clash fails alone (452) and leaves nothing, not even that file */
    char path[192];
    snprintf(path, sizeof(path), "%s" QUEUE_SPOOL_SUFFIX "/%s", f->path, clash.qid);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fclose(fp);
    assert_int_equal(queue_commit_submit(q, &large.req), 0);
    assert_int_equal(queue_commit_submit(q, &small.req), 0);
    assert_int_equal(queue_commit_submit(q, &clash.req), 0);
    tracker_wait_done(&t, 3);
    assert_int_equal(large.status, QUEUE_OK);
    assert_int_equal(small.status, QUEUE_OK);
    assert_int_equal(clash.status, QUEUE_ERR_STORAGE);
    assert_absent(f, clash.qid);
    queue_close(q);

    /* the large body is a file (header, then body), its row only says so */
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM bodies WHERE file = 1 AND length(data) = 0"),
                     1);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM bodies WHERE file = 0"), 1);
    struct queue_reader *r = NULL;
    assert_int_equal(queue_reader_open(f->path, &r), 0);
    uint8_t *stored = NULL;
    size_t len = 0;
    assert_int_equal(queue_reader_body(r, large.qid, &stored, &len), 0);
    size_t header_len = strlen(default_header);
    assert_int_equal(len, header_len + big_len);
    assert_memory_equal(stored, default_header, header_len);
    assert_memory_equal(stored + header_len, big, big_len);
    free(stored);
    assert_int_equal(read_entry(r, large.qid).size, header_len + big_len);
    queue_reader_close(r);

    /* opening removes what no row refers to (what a crash left: the clash
     * file stands for one), and leaves other names alone */
    char stranger[192];
    snprintf(stranger, sizeof(stranger), "%s" QUEUE_SPOOL_SUFFIX "/notes.txt", f->path);
    fp = fopen(stranger, "w");
    assert_non_null(fp);
    fclose(fp);
    fp = fopen(path, "w");
    assert_non_null(fp);
    fclose(fp);
    assert_int_equal(spool_file_count(f), 3);
    q = open_queue(f, 5000);
    queue_close(q);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(access(stranger, F_OK), 0);
    assert_int_equal(spool_file_count(f), 2);
    tracker_destroy(&t);
    free(big);
}

/* ---- the WAL starts over under steady writes --------------------------- */

struct wal_writer {
    char path[96];
    atomic_uint commits;
    atomic_uint last; /* stops once commits reaches it */
};

/* Commits ~100 KiB transactions back to back until it has made last, as the
 * committer and the runner do under load (durability off: only the WAL's
 * length matters here). */
static void *wal_writer_run(void *arg)
{
    struct wal_writer *w = arg;
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(w->path, &db), SQLITE_OK);
    assert_int_equal(queue_configure(db, 60000), SQLITE_OK);
    sqlite3_wal_autocheckpoint(db, 0);
    assert_int_equal(queue_exec(db, "PRAGMA synchronous=OFF"), SQLITE_OK);
    while (atomic_load(&w->commits) < atomic_load(&w->last)) {
        assert_int_equal(queue_exec(db, "BEGIN IMMEDIATE;"
                                        "INSERT INTO filler(data) VALUES(randomblob(100000));"
                                        "COMMIT"),
                         SQLITE_OK);
        atomic_fetch_add(&w->commits, 1);
    }
    sqlite3_close(db);
    return NULL;
}

/* The WAL header's checkpoint sequence number: one more each time the log
 * starts over. */
static uint32_t wal_sequence(const struct fixture *f)
{
    char path[128];
    snprintf(path, sizeof(path), "%s-wal", f->path);
    unsigned char h[16] = {0};
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    assert_int_equal(fread(h, 1, sizeof(h), fp), sizeof(h));
    fclose(fp);
    return (uint32_t)h[12] << 24 | (uint32_t)h[13] << 16 | (uint32_t)h[14] << 8 | h[15];
}

static int64_t wal_bytes(const struct fixture *f)
{
    char path[128];
    snprintf(path, sizeof(path), "%s-wal", f->path);
    struct stat st;
    return stat(path, &st) == 0 ? (int64_t)st.st_size : 0;
}

/* Checkpoint rounds come once per QUEUE_CHECKPOINT_PAGES new frames, not
 * after every commit past that length: the WAL as one writer grows it,
 * starts over, and grows again. */
static void test_checkpoint_due(void **state)
{
    (void)state;
    const int n = QUEUE_CHECKPOINT_PAGES;
    int base = 0, rounds = 0;
    for (int pages = 1; pages <= 5 * n; pages++) /* a commit of one frame each */
        rounds += queue_checkpoint_due(pages, &base);
    assert_int_equal(rounds, 5);
    assert_int_equal(base, 5 * n);
    /* a commit of many frames crosses the line once */
    assert_false(queue_checkpoint_due(6 * n - 1, &base));
    assert_true(queue_checkpoint_due(6 * n + 400, &base));
    assert_false(queue_checkpoint_due(7 * n + 399, &base));
    /* started over: short of the first line nothing, then due there again */
    assert_false(queue_checkpoint_due(12, &base));
    assert_false(queue_checkpoint_due(n - 1, &base));
    assert_true(queue_checkpoint_due(n, &base));
    assert_false(queue_checkpoint_due(n + 1, &base));
}

/* A PASSIVE checkpoint alone never finds the WAL wholly copied while a
 * writer keeps committing, so the WAL would grow for as long as the writes
 * last. One checkpointer round past QUEUE_CHECKPOINT_RESTART_PAGES makes
 * the writer's next transaction start the WAL over, and cut the file back
 * to the size limit. */
static void test_wal_starts_over(void **state)
{
    struct fixture *f = *state;
    struct queue *q = open_queue(f, 5000); /* the schema and WAL mode */
    queue_close(q);
    sqlite3 *ckpt = NULL;
    assert_int_equal(sqlite3_open(f->path, &ckpt), SQLITE_OK);
    assert_int_equal(queue_configure(ckpt, 60000), SQLITE_OK);
    assert_int_equal(queue_exec(ckpt, "CREATE TABLE filler(data BLOB)"), SQLITE_OK);

    struct wal_writer w;
    snprintf(w.path, sizeof(w.path), "%s", f->path);
    atomic_init(&w.commits, 0);
    atomic_init(&w.last, UINT_MAX);
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, wal_writer_run, &w), 0);
    /* well past both the restart point and the 64 MiB limit */
    int64_t limit = 64 << 20;
    time_t deadline = time(NULL) + WAIT_DEADLINE_S;
    while (wal_bytes(f) < limit + (16 << 20)) {
        assert_true(time(NULL) < deadline);
        sched_yield();
    }
    uint32_t sequence = wal_sequence(f);
    int restart_at = QUEUE_CHECKPOINT_RESTART_PAGES;
    assert_int_equal(queue_checkpoint(ckpt, NULL, &restart_at), SQLITE_OK);
    assert_int_equal(restart_at, QUEUE_CHECKPOINT_RESTART_PAGES);
    /* two more at least: however long this thread waits for a CPU here, the
     * writer goes on meanwhile (on a loaded machine, hundreds of commits) */
    atomic_store(&w.last, atomic_load(&w.commits) + 2);
    assert_int_equal(pthread_join(thread, NULL), 0);

    /* it started over, once, and was cut back to the limit then: it holds
     * what came after and no more */
    assert_int_equal(wal_sequence(f), sequence + 1);
    int log_frames = -1, copied = -1;
    assert_int_equal(sqlite3_wal_checkpoint_v2(ckpt, NULL, SQLITE_CHECKPOINT_PASSIVE,
                                               &log_frames, &copied),
                     SQLITE_OK);
    assert_true(log_frames >= 1);
    int64_t frames_bytes = 32 + (int64_t)log_frames * (24 + 4096);
    assert_true(wal_bytes(f) <= (frames_bytes > limit ? frames_bytes : limit));
    sqlite3_close(ckpt);
}

/* A reader that holds an old snapshot (a long `smarthostctl queue list`)
 * keeps a RESTART from finishing: the round gives up within the short busy
 * timeout, leaves the write lock free at once, and does not try again
 * before the WAL has grown as much once more. */
static void test_wal_restart_gives_way(void **state)
{
    struct fixture *f = *state;
    struct queue *q = open_queue(f, 5000);
    queue_close(q);
    sqlite3 *writer = NULL, *reader = NULL, *ckpt = NULL;
    assert_int_equal(sqlite3_open(f->path, &writer), SQLITE_OK);
    assert_int_equal(queue_configure(writer, 5000), SQLITE_OK);
    sqlite3_wal_autocheckpoint(writer, 0);
    assert_int_equal(queue_exec(writer, "PRAGMA synchronous=OFF;"
                                        "CREATE TABLE filler(data BLOB)"),
                     SQLITE_OK);
    assert_int_equal(sqlite3_open(f->path, &reader), SQLITE_OK);
    assert_int_equal(queue_exec(reader, "BEGIN"), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(reader, "SELECT COUNT(*) FROM filler", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW); /* the snapshot is taken */
    sqlite3_finalize(st);
    while (wal_bytes(f) < (int64_t)(QUEUE_CHECKPOINT_RESTART_PAGES + 100) * 4096)
        assert_int_equal(queue_exec(writer, "INSERT INTO filler VALUES(randomblob(100000))"),
                         SQLITE_OK);

    assert_int_equal(sqlite3_open(f->path, &ckpt), SQLITE_OK);
    assert_int_equal(queue_configure(ckpt, QUEUE_CHECKPOINT_BUSY_MS), SQLITE_OK);
    int restart_at = QUEUE_CHECKPOINT_RESTART_PAGES;
    assert_int_equal(queue_checkpoint(ckpt, NULL, &restart_at) & 0xff, SQLITE_BUSY);
    assert_true(restart_at > 2 * QUEUE_CHECKPOINT_RESTART_PAGES);
    /* the lock is free: a writer that does not wait at all gets it */
    sqlite3_busy_handler(writer, NULL, NULL);
    assert_int_equal(queue_exec(writer, "INSERT INTO filler VALUES(x'00')"), SQLITE_OK);
    /* no growth since: a PASSIVE round only, which does not wait */
    int at = restart_at;
    assert_int_equal(queue_checkpoint(ckpt, NULL, &restart_at), SQLITE_OK);
    assert_int_equal(restart_at, at);

    /* the reader done, the next RESTART finishes and the WAL starts over */
    assert_int_equal(queue_exec(reader, "COMMIT"), SQLITE_OK);
    while (wal_bytes(f) < (int64_t)restart_at * 4096 + (1 << 20))
        assert_int_equal(queue_exec(writer, "INSERT INTO filler VALUES(randomblob(100000))"),
                         SQLITE_OK);
    assert_int_equal(queue_checkpoint(ckpt, NULL, &restart_at), SQLITE_OK);
    assert_int_equal(restart_at, QUEUE_CHECKPOINT_RESTART_PAGES);
    assert_int_equal(queue_exec(writer, "INSERT INTO filler VALUES(x'00')"), SQLITE_OK);
    int log_frames = -1, copied = -1;
    assert_int_equal(sqlite3_wal_checkpoint_v2(ckpt, NULL, SQLITE_CHECKPOINT_PASSIVE,
                                               &log_frames, &copied),
                     SQLITE_OK);
    assert_in_range(log_frames, 1, 10);
    sqlite3_close(ckpt);
    sqlite3_close(reader);
    sqlite3_close(writer);
}

/* The runner's store shares the committer's write lock: with no busy
 * timeout at all on either connection (SQLite would answer BUSY at the
 * first collision), outcomes recorded while messages are being committed
 * all land, and so do the messages. */
static void test_store_shares_write_lock(void **state)
{
    struct fixture *f = *state;
    enum { FIRST = 100, MORE = 300 };
    struct queue *q = open_queue(f, 0);
    struct tracker t;
    tracker_init(&t);
    struct test_req *reqs = calloc(FIRST + MORE, sizeof(*reqs));
    assert_non_null(reqs);
    for (size_t i = 0; i < FIRST + MORE; i++)
        test_req_init(&reqs[i], &t);
    for (size_t i = 0; i < FIRST; i++)
        assert_int_equal(queue_commit_submit(q, &reqs[i].req), 0);
    tracker_wait_done(&t, FIRST);

    struct queue_store *s = NULL;
    assert_int_equal(queue_store_open(f->path, 0, &s), 0);
    queue_store_share(s, q);
    struct queue_due *due = NULL;
    size_t n = 0;
    assert_int_equal(queue_store_due(s, time(NULL) + 1, FIRST, NULL, NULL, &due, &n), 0);
    assert_int_equal(n, FIRST);

    pthread_t thread;
    struct submitter sub = {.q = q, .reqs = reqs + FIRST, .count = MORE};
    assert_int_equal(pthread_create(&thread, NULL, submitter_run, &sub), 0);
    for (size_t i = 0; i < n; i++) {
        struct queue_rcpt_update done[2];
        for (size_t k = 0; k < due[i].rcpt_count && k < 2; k++)
            done[k] = (struct queue_rcpt_update){.recipient_id = due[i].rcpts[k].id,
                                                 .state = "delivered", .dsn_status = "2.0.0",
                                                 .last_error = ""};
        struct queue_outcome o = {.message_id = due[i].id, .now = time(NULL), .rcpts = done,
                                  .rcpt_count = due[i].rcpt_count};
        assert_int_equal(queue_store_record(s, &o), 0);
    }
    pthread_join(thread, NULL);
    assert_int_equal(sub.rc, 0);
    tracker_wait_done(&t, FIRST + MORE);
    for (size_t i = 0; i < FIRST + MORE; i++)
        assert_int_equal(reqs[i].status, QUEUE_OK);
    queue_due_free(due, n);
    queue_store_close(s);
    queue_close(q);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM messages WHERE state = 'done'"), FIRST);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM messages WHERE state = 'queued'"), MORE);
    free(reqs);
    tracker_destroy(&t);
}

/* ---- tasks on the committer --------------------------------------------- */

/* A delivery outcome written by a task: where it ran and what it got. */
struct task_probe {
    struct queue_task task;
    struct queue_rcpt_update done[2];
    struct queue_outcome o;
    pthread_t thread;
    bool has_run, has_store;
    int status;
};

static void task_probe_run(struct queue_store *s, void *arg)
{
    struct task_probe *p = arg;
    p->thread = pthread_self();
    p->has_store = s != NULL;
    p->status = s != NULL ? queue_store_record(s, &p->o) : QUEUE_ERR_STORAGE;
    p->has_run = true;
}

static void task_probe_init(struct task_probe *p, const struct queue_due *due)
{
    memset(p, 0, sizeof(*p));
    for (size_t k = 0; k < due->rcpt_count && k < 2; k++)
        p->done[k] = (struct queue_rcpt_update){.recipient_id = due->rcpts[k].id,
                                                .state = "delivered", .dsn_status = "2.0.0",
                                                .last_error = ""};
    p->o = (struct queue_outcome){.message_id = due->id, .qid = due->qid, .now = time(NULL),
                                  .rcpts = p->done, .rcpt_count = due->rcpt_count};
    p->task = (struct queue_task){.run = task_probe_run, .arg = p};
}

/* A task runs on the committer thread with a store on its connection, its
 * writes in turn with the batches (a commit lined up behind the task still
 * commits), and one submitted just before queue_close still runs. */
static void test_tasks_on_committer(void **state)
{
    struct fixture *f = *state;
    struct queue *q = open_queue(f, 0);
    struct tracker t;
    tracker_init(&t);
    struct test_req reqs[3];
    for (size_t i = 0; i < 3; i++)
        test_req_init(&reqs[i], &t);
    for (size_t i = 0; i < 2; i++)
        assert_int_equal(queue_commit_submit(q, &reqs[i].req), 0);
    tracker_wait_done(&t, 2);

    struct queue_store *s = NULL;
    assert_int_equal(queue_store_open(f->path, 0, &s), 0);
    struct queue_due *due = NULL;
    size_t n = 0;
    assert_int_equal(queue_store_due(s, time(NULL) + 1, 10, NULL, NULL, &due, &n), 0);
    assert_int_equal(n, 2);
    queue_store_close(s);
    struct task_probe probes[2];
    task_probe_init(&probes[0], &due[0]);
    task_probe_init(&probes[1], &due[1]);

    queue_task_submit(q, &probes[0].task);
    assert_int_equal(queue_commit_submit(q, &reqs[2].req), 0);
    tracker_wait_done(&t, 3); /* the batch taken with the task (or after it) */
    assert_int_equal(reqs[2].status, QUEUE_OK);
    queue_task_submit(q, &probes[1].task);
    queue_close(q); /* runs what was submitted before it returns */

    for (size_t i = 0; i < 2; i++) {
        assert_true(probes[i].has_run);
        assert_true(probes[i].has_store);
        assert_false(pthread_equal(probes[i].thread, pthread_self()));
        assert_int_equal(probes[i].status, QUEUE_OK);
    }
    assert_true(pthread_equal(probes[0].thread, probes[1].thread));
    queue_due_free(due, n);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM messages WHERE state = 'done'"), 2);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM messages WHERE state = 'queued'"), 1);
    tracker_destroy(&t);
}

/* ---- the committed hook ---------------------------------------------- */

/* What the hook saw of one message (its pointers are borrowed: copied). */
struct seen_commit {
    char qid[QUEUE_ID_SIZE];
    int64_t message_id, created_at;
    char owner[64];
    bool is_owner_known;
    int64_t rcpt_ids[2];
    char rcpts[2][64];
    size_t rcpt_count;
    uint8_t data[256];
    size_t data_len;
    size_t callbacks_before; /* callbacks run when the hook was called */
};

struct seen_log {
    struct tracker *t;
    struct seen_commit seen[4];
    size_t count;
};

static void record_committed(const struct queue_committed *c, void *arg)
{
    struct seen_log *l = arg;
    assert_true(l->count < 4);
    struct seen_commit *s = &l->seen[l->count++];
    snprintf(s->qid, sizeof(s->qid), "%s", c->qid);
    s->message_id = c->message_id;
    s->created_at = c->created_at;
    s->is_owner_known = c->owner != NULL;
    snprintf(s->owner, sizeof(s->owner), "%s", c->owner != NULL ? c->owner : "");
    assert_non_null(c->recipient_ids);
    assert_true(c->recipient_count <= 2);
    s->rcpt_count = c->recipient_count;
    for (size_t k = 0; k < c->recipient_count; k++) {
        s->rcpt_ids[k] = c->recipient_ids[k];
        snprintf(s->rcpts[k], sizeof(s->rcpts[k]), "%s", c->recipients[k]);
    }
    assert_true(c->header_len + c->body_len <= sizeof(s->data));
    memcpy(s->data, c->header, c->header_len);
    memcpy(s->data + c->header_len, c->body, c->body_len);
    s->data_len = c->header_len + c->body_len;
    pthread_mutex_lock(&l->t->lock);
    s->callbacks_before = l->t->done;
    pthread_mutex_unlock(&l->t->lock);
}

static int64_t sql_int_text(const struct fixture *f, const char *sql, const char *arg, int row)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_text(st, 1, arg, -1, SQLITE_STATIC);
    for (int i = 0; i < row; i++)
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* The hook hands the relay each committed message as the database has it
 * (row ids, recipients, header + body, the account's owner for bounces),
 * before the session hears 250, and never a refused one. */
static void test_committed_hook(void **state)
{
    struct fixture *f = *state;
    struct store *st = NULL;
    assert_int_equal(store_open(f->path, 2000, &st), STORE_OK);
    assert_int_equal(store_user_add(st, "printer", "pw-Secret-1"), STORE_OK);
    assert_int_equal(store_policy_set_text(st, "printer", "owner", "it@example.test"), STORE_OK);
    store_close(st);

    struct tracker t;
    tracker_init(&t);
    struct seen_log log = {.t = &t};
    struct queue *q = open_queue(f, 5000);
    struct policy_defaults d = {.max_size = 1 << 20, .max_rcpts = 10};
    queue_set_policy(q, &d);
    queue_set_committed_hook(q, record_committed, &log);
    struct test_req reqs[4];
    for (size_t i = 0; i < 4; i++)
        test_req_init(&reqs[i], &t);
    reqs[1].req.auth_user = "";      /* e.g. a trusted network: no account, no owner */
    reqs[2].req.auth_user = "ghost"; /* no such account: refused, not handed over */
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(queue_commit_submit(q, &reqs[i].req), 0);
    tracker_wait_done(&t, 3);
    assert_int_equal(reqs[0].status, QUEUE_OK);
    assert_int_equal(reqs[1].status, QUEUE_OK);
    assert_int_equal(reqs[2].status, QUEUE_ERR_POLICY);
    assert_int_equal(reqs[2].req.verdict.code, 535);
    assert_int_equal(log.count, 2);

    /* without a policy the account is not read: its owner is not known */
    queue_set_policy(q, NULL);
    assert_int_equal(queue_commit_submit(q, &reqs[3].req), 0);
    tracker_wait_done(&t, 4);
    assert_int_equal(reqs[3].status, QUEUE_OK);
    queue_set_committed_hook(q, NULL, NULL);
    queue_close(q);
    assert_int_equal(log.count, 3);

    const struct test_req *committed[3] = {&reqs[0], &reqs[1], &reqs[3]};
    const char *owners[3] = {"it@example.test", "", ""};
    const bool known[3] = {true, true, false};
    char want[256];
    size_t want_len = strlen(default_header) + strlen(default_body);
    snprintf(want, sizeof(want), "%s%s", default_header, default_body);
    for (size_t i = 0; i < 3; i++) {
        const struct seen_commit *s = &log.seen[i];
        assert_string_equal(s->qid, committed[i]->qid);
        assert_int_equal(s->message_id,
                         sql_int_text(f, "SELECT id FROM messages WHERE qid = ?", s->qid, 0));
        assert_int_equal(s->created_at,
                         sql_int_text(f, "SELECT created_at FROM messages WHERE qid = ?", s->qid, 0));
        assert_int_equal(s->is_owner_known, known[i]);
        assert_string_equal(s->owner, owners[i]);
        assert_int_equal(s->rcpt_count, 2);
        for (size_t k = 0; k < 2; k++) {
            assert_string_equal(s->rcpts[k], default_rcpts[k]);
            assert_int_equal(s->rcpt_ids[k],
                             sql_int_text(f,
                                          "SELECT r.id FROM recipients r JOIN messages m"
                                          " ON m.id = r.message_id WHERE m.qid = ? ORDER BY r.id",
                                          s->qid, (int)k));
        }
        assert_int_equal(s->data_len, want_len);
        assert_memory_equal(s->data, want, want_len);
    }
    /* before any callback of its own batch: the first two may share one */
    assert_true(log.seen[0].callbacks_before == 0);
    assert_true(log.seen[2].callbacks_before == 3);
    tracker_destroy(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_committed_hook, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_open_shares_schema_version, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_submitters, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_batches_group, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_lock_held_is_busy, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_failure_is_isolated, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_close_with_pending, fixture_setup, fixture_teardown),
        cmocka_unit_test(test_ids_unique),
        cmocka_unit_test_setup_teardown(test_crash_consistency, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_large_bodies, fixture_setup, fixture_teardown),
        cmocka_unit_test(test_checkpoint_due),
        cmocka_unit_test_setup_teardown(test_wal_starts_over, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_wal_restart_gives_way, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_tasks_on_committer, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_store_shares_write_lock, fixture_setup,
                                        fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

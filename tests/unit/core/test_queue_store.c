/* Unit tests: the delivery side of the queue (core/queue_store.c) on a real
 * SQLite file — migration from schema 1 with a message already queued, due
 * selection, outcome records (delivered / deferred / bounced with a DSN
 * created in the same transaction), holds, retries, deletes, purges, and the
 * reader queries behind `queue show`, and bodies kept in files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "core/queue.h"
#include "core/queue_internal.h"
#include "tests/unit/unit_tempdir.h"

struct fixture {
    char dir[64];
    char path[96];
};

static int fixture_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_non_null(unit_tempdir_make(f->dir, sizeof(f->dir), "test_queue_store"));
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

static void sql(const struct fixture *f, const char *text)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    char *err = NULL;
    if (sqlite3_exec(db, text, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("%s: %s", text, err);
    sqlite3_close(db);
}

static int64_t sql_int(const struct fixture *f, const char *text)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, text, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* A database as release 0.1 (queue schema 1) left it, with one message for
 * two recipients still queued. */
static void make_v1_database(const struct fixture *f)
{
    sql(f, "PRAGMA journal_mode=WAL;"
           "CREATE TABLE schema_version(module TEXT PRIMARY KEY, version INTEGER);"
           "INSERT INTO schema_version VALUES('queue', 1);"
           "CREATE TABLE messages(id INTEGER PRIMARY KEY, qid TEXT UNIQUE NOT NULL,"
           " created_at INTEGER NOT NULL, sender TEXT NOT NULL, auth_user TEXT NOT NULL,"
           " client_addr TEXT NOT NULL, helo TEXT NOT NULL, size INTEGER NOT NULL,"
           " state TEXT NOT NULL DEFAULT 'queued', next_attempt_at INTEGER NOT NULL DEFAULT 0,"
           " body BLOB NOT NULL);"
           "CREATE TABLE recipients(id INTEGER PRIMARY KEY, message_id INTEGER NOT NULL"
           " REFERENCES messages(id) ON DELETE CASCADE, address TEXT NOT NULL,"
           " state TEXT NOT NULL DEFAULT 'queued', last_error TEXT NOT NULL DEFAULT '');"
           "CREATE INDEX recipients_message_id ON recipients(message_id);"
           "CREATE INDEX messages_state_next_attempt ON messages(state, next_attempt_at);"
           "INSERT INTO messages(id, qid, created_at, sender, auth_user, client_addr, helo, size,"
           " body) VALUES(1, 'OLDQID000000001', 1000, 'scanner@example.test', 'scanner',"
           " '192.0.2.7', 'scanner', 12, X'5375626A6563743A20780D0A');"
           "INSERT INTO recipients(message_id, address) VALUES(1, 'a@one.test'),"
           " (1, 'b@two.test');");
}

static struct queue_store *open_store(const struct fixture *f)
{
    struct queue_store *s = NULL;
    assert_int_equal(queue_store_open(f->path, 2000, &s), 0);
    assert_non_null(s);
    return s;
}

static bool skip_id(int64_t id, void *arg)
{
    return id == *(int64_t *)arg;
}

static void test_migrate_and_due(void **state)
{
    struct fixture *f = *state;
    make_v1_database(f);
    struct queue_store *s = open_store(f);
    assert_int_equal(sql_int(f, "SELECT version FROM schema_version WHERE module = 'queue'"), 4);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM attempts"), 0);
    /* 3: the body moved to its own table, the old column left empty */
    assert_int_equal(sql_int(f, "SELECT length(body) FROM messages WHERE id = 1"), 0);
    assert_int_equal(sql_int(f, "SELECT length(data) FROM bodies WHERE message_id = 1"), 12);

    struct queue_due *due = NULL;
    size_t n = 0;
    assert_int_equal(queue_store_due(s, 2000, 10, NULL, NULL, &due, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(due[0].qid, "OLDQID000000001");
    assert_string_equal(due[0].sender, "scanner@example.test");
    assert_string_equal(due[0].kind, "message");
    assert_int_equal(due[0].rcpt_count, 2);
    assert_string_equal(due[0].rcpts[1].address, "b@two.test");
    int64_t in_flight = due[0].id;
    queue_due_free(due, n);

    /* in flight: skipped */
    assert_int_equal(queue_store_due(s, 2000, 10, skip_id, &in_flight, &due, &n), 0);
    assert_int_equal(n, 0);
    assert_null(due);

    uint8_t *body = NULL;
    size_t len = 0;
    assert_int_equal(queue_store_body(s, in_flight, &body, &len), 0);
    assert_int_equal(len, 12);
    assert_memory_equal(body, "Subject: x\r\n", 12);
    free(body);
    assert_int_equal(queue_store_body(s, 999, &body, &len), QUEUE_ERR_NOT_FOUND);

    int64_t at = 0;
    assert_int_equal(queue_store_next_due(s, &at), 0);
    assert_int_equal(at, 0);
    queue_store_close(s);
}

/* Outcomes written as a group: all in one transaction; one that cannot be
 * written (its DSN reuses a queue id) fails alone, the others still land. */
static void test_record_batch(void **state)
{
    struct fixture *f = *state;
    make_v1_database(f);
    struct queue_store *s = open_store(f);
    sql(f, "INSERT INTO messages(id, qid, created_at, sender, auth_user, client_addr, helo, size,"
           " body) VALUES(2, 'OLDQID000000002', 1000, 's@example.test', 's', '192.0.2.7', 'h', 1,"
           " X'');"
           "INSERT INTO bodies(message_id, data) VALUES(2, X'78');"
           "INSERT INTO recipients(message_id, address) VALUES(2, 'c@three.test');");
    int64_t a_id = sql_int(f, "SELECT id FROM recipients WHERE address = 'a@one.test'");
    int64_t b_id = sql_int(f, "SELECT id FROM recipients WHERE address = 'b@two.test'");
    int64_t c_id = sql_int(f, "SELECT id FROM recipients WHERE address = 'c@three.test'");
    struct queue_rcpt_update done1[] = {
        {.recipient_id = a_id, .state = "delivered", .dsn_status = "2.0.0", .last_error = ""},
        {.recipient_id = b_id, .state = "delivered", .dsn_status = "2.0.0", .last_error = ""},
    };
    struct queue_rcpt_update bounced2 = {.recipient_id = c_id, .state = "bounced",
                                         .dsn_status = "5.1.1", .last_error = "550 5.1.1 no"};
    const char *dsn_rcpt[] = {"s@example.test"};
    struct queue_new_message dsn = {.qid = "OLDQID000000001", /* taken: the insert fails */
                                    .kind = "dsn", .sender = "", .recipients = dsn_rcpt,
                                    .recipient_count = 1, .data = (const uint8_t *)"x",
                                    .data_len = 1};
    struct queue_outcome o1 = {.message_id = 1, .now = 2000, .rcpts = done1, .rcpt_count = 2};
    struct queue_outcome o2 = {.message_id = 2, .now = 2000, .rcpts = &bounced2,
                               .rcpt_count = 1, .created = &dsn, .created_count = 1};
    const struct queue_outcome *group[] = {&o1, &o2};
    int status[2] = {1, 1};
    assert_int_not_equal(queue_store_record_batch(s, group, 2, status), 0);
    assert_int_equal(status[0], 0);
    assert_int_equal(status[1], QUEUE_ERR_STORAGE);
    assert_int_equal(sql_int(f, "SELECT state = 'done' FROM messages WHERE id = 1"), 1);
    assert_int_equal(sql_int(f, "SELECT state = 'queued' FROM messages WHERE id = 2"), 1);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM messages WHERE kind = 'dsn'"), 0);

    /* the same second outcome with a free queue id: written */
    dsn.qid = "DSNQID000000009";
    const struct queue_outcome *again[] = {&o2};
    assert_int_equal(queue_store_record_batch(s, again, 1, status), 0);
    assert_int_equal(status[0], 0);
    assert_int_equal(sql_int(f, "SELECT state = 'done' FROM messages WHERE id = 2"), 1);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM messages WHERE kind = 'dsn'"), 1);
    assert_int_equal(sql_int(f, "SELECT length(data) FROM bodies b JOIN messages m"
                                " ON m.id = b.message_id WHERE m.qid = 'DSNQID000000009'"),
                     1);
    queue_store_close(s);
}

static void test_record_outcomes(void **state)
{
    struct fixture *f = *state;
    make_v1_database(f);
    struct queue_store *s = open_store(f);
    int64_t a_id = sql_int(f, "SELECT id FROM recipients WHERE address = 'a@one.test'");
    int64_t b_id = sql_int(f, "SELECT id FROM recipients WHERE address = 'b@two.test'");

    /* a delivered, b deferred after a greylisting reply */
    struct queue_attempt attempts[] = {
        {.recipient_id = a_id, .domain = "one.test", .host = "mx.one.test",
         .address = "127.0.0.2:25", .step = "done", .tls = "TLS1.3", .reply = "250 2.0.0 ok",
         .outcome = "delivered"},
        {.recipient_id = b_id, .domain = "two.test", .host = "mx.two.test",
         .address = "127.0.0.3:25", .step = "rcpt", .reply = "451 4.7.1 greylisted",
         .outcome = "deferred"},
    };
    struct queue_rcpt_update rcpts[] = {
        {.recipient_id = a_id, .state = "delivered", .dsn_status = "2.0.0",
         .last_error = ""},
        {.recipient_id = b_id, .state = "deferred", .next_attempt_at = 2300,
         .dsn_status = "4.7.1", .last_error = "451 4.7.1 greylisted"},
    };
    struct queue_outcome o = {.message_id = 1, .now = 2000, .attempts = attempts,
                              .attempt_count = 2, .rcpts = rcpts, .rcpt_count = 2};
    assert_int_equal(queue_store_record(s, &o), 0);
    assert_int_equal(sql_int(f, "SELECT next_attempt_at FROM messages WHERE id = 1"), 2300);
    assert_int_equal(sql_int(f, "SELECT state = 'queued' FROM messages WHERE id = 1"), 1);

    struct queue_due *due = NULL;
    size_t n = 0;
    assert_int_equal(queue_store_due(s, 2299, 10, NULL, NULL, &due, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(queue_store_due(s, 2300, 10, NULL, NULL, &due, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(due[0].rcpt_count, 1); /* the delivered one is never due again */
    assert_int_equal(due[0].rcpts[0].attempts, 1);
    queue_due_free(due, n);

    /* b bounces; the DSN is created in the same transaction */
    const char *dsn_rcpt[] = {"scanner@example.test"};
    struct queue_new_message dsn = {.qid = "DSNQID000000001", .kind = "dsn", .sender = "",
                                    .recipients = dsn_rcpt, .recipient_count = 1,
                                    .data = (const uint8_t *)"Subject: bounce\r\n",
                                    .data_len = 17};
    struct queue_attempt bounce_attempt = {.recipient_id = b_id, .domain = "two.test",
                                           .step = "rcpt", .reply = "550 5.1.1 no such user",
                                           .outcome = "bounced"};
    struct queue_rcpt_update bounced = {.recipient_id = b_id, .state = "bounced",
                                        .dsn_status = "5.1.1",
                                        .last_error = "550 5.1.1 no such user"};
    struct queue_outcome o2 = {.message_id = 1, .now = 2400, .attempts = &bounce_attempt,
                               .attempt_count = 1, .rcpts = &bounced, .rcpt_count = 1,
                               .created = &dsn, .created_count = 1};
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM bodies WHERE message_id = 1"), 1);
    assert_int_equal(queue_store_record(s, &o2), 0);
    assert_int_equal(sql_int(f, "SELECT state = 'done' FROM messages WHERE id = 1"), 1);
    assert_int_equal(sql_int(f, "SELECT done_at FROM messages WHERE id = 1"), 2400);
    /* finished: the content is gone, the envelope and attempts stay for queue show */
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM bodies WHERE message_id = 1"), 0);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM attempts WHERE message_id = 1"), 3);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM messages WHERE kind = 'dsn'"
                                " AND sender = '' AND state = 'queued'"),
                     1);
    /* a late duplicate result changes nothing: the recipient is final */
    assert_int_equal(queue_store_record(s, &o), 0);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM recipients WHERE state = 'delivered'"), 1);
    assert_int_equal(sql_int(f, "SELECT attempts FROM recipients WHERE id = 2"), 2);

    /* the reader sees it all */
    struct queue_reader *r = NULL;
    assert_int_equal(queue_reader_open(f->path, &r), 0);
    struct queue_entry e;
    assert_int_equal(queue_reader_entry(r, "OLDQID000000001", &e), 0);
    assert_string_equal(e.state, "done");
    assert_int_equal(e.pending_count, 0);
    assert_string_equal(e.last_error, "550 5.1.1 no such user");
    assert_int_equal(queue_reader_entry(r, "NOSUCHQID000000", &e), QUEUE_ERR_NOT_FOUND);
    queue_reader_close(r);

    /* purge removes only finished messages older than the cut */
    size_t purged = 0;
    assert_int_equal(queue_store_purge_done(s, 2400, &purged), 0);
    assert_int_equal(purged, 0);
    assert_int_equal(queue_store_purge_done(s, 2401, &purged), 0);
    assert_int_equal(purged, 1);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM attempts"), 0); /* cascaded */
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM messages"), 1);  /* the DSN stays */
    queue_store_close(s);
}

static int collect_attempt(const struct queue_attempt_info *a, void *arg)
{
    char *out = arg;
    size_t len = strlen(out);
    snprintf(out + len, 1024 - len, "%s/%s/%s/%s;", a->rcpt, a->step, a->outcome, a->reply);
    return 0;
}

/* An admin deleted a message during its delivery, and a new one took its
 * row ids: the old outcome must not mark the new message delivered. */
static void test_outcome_of_deleted_message(void **state)
{
    struct fixture *f = *state;
    make_v1_database(f);
    struct queue_store *s = open_store(f);
    int64_t a_id = sql_int(f, "SELECT id FROM recipients WHERE address = 'a@one.test'");
    int64_t b_id = sql_int(f, "SELECT id FROM recipients WHERE address = 'b@two.test'");
    assert_int_equal(queue_store_delete(s, "OLDQID000000001"), 0);
    sql(f, "INSERT INTO messages(id, qid, created_at, sender, auth_user, client_addr, helo, size,"
           " body) VALUES(1, 'NEWQID000000001', 3000, 'other@example.test', 'other',"
           " '192.0.2.8', 'h', 1, X'');"
           "INSERT INTO bodies(message_id, data) VALUES(1, X'78');"
           "INSERT INTO recipients(message_id, address) VALUES(1, 'c@three.test'),"
           " (1, 'd@four.test');");
    assert_int_equal(sql_int(f, "SELECT MIN(id) FROM recipients"), a_id); /* reused */
    assert_int_equal(sql_int(f, "SELECT MAX(id) FROM recipients"), b_id);

    struct queue_rcpt_update done[] = {
        {.recipient_id = a_id, .state = "delivered", .dsn_status = "2.0.0", .last_error = ""},
        {.recipient_id = b_id, .state = "delivered", .dsn_status = "2.0.0", .last_error = ""},
    };
    struct queue_attempt at = {.recipient_id = a_id, .domain = "one.test", .step = "done",
                               .reply = "250 ok", .outcome = "delivered"};
    struct queue_outcome old = {.message_id = 1, .qid = "OLDQID000000001", .now = 3001,
                                .attempts = &at, .attempt_count = 1, .rcpts = done,
                                .rcpt_count = 2};
    assert_int_equal(queue_store_record(s, &old), QUEUE_ERR_NOT_FOUND);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM recipients WHERE state = 'queued'"), 2);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM attempts"), 0);
    assert_int_equal(sql_int(f, "SELECT state = 'queued' FROM messages WHERE id = 1"), 1);

    /* in a group beside an outcome of the live message: that one is written */
    struct queue_outcome cur = {.message_id = 1, .qid = "NEWQID000000001", .now = 3002,
                                .rcpts = done, .rcpt_count = 2};
    const struct queue_outcome *group[] = {&old, &cur};
    int status[2] = {1, 1};
    assert_int_equal(queue_store_record_batch(s, group, 2, status), QUEUE_ERR_NOT_FOUND);
    assert_int_equal(status[0], QUEUE_ERR_NOT_FOUND);
    assert_int_equal(status[1], 0);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM recipients WHERE state = 'delivered'"), 2);
    assert_int_equal(sql_int(f, "SELECT state = 'done' FROM messages WHERE id = 1"), 1);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM attempts"), 0);
    queue_store_close(s);
}

static void test_admin_actions(void **state)
{
    struct fixture *f = *state;
    make_v1_database(f);
    struct queue_store *s = open_store(f);

    assert_int_equal(queue_store_hold(s, "OLDQID000000001", true), 0);
    assert_int_equal(queue_store_hold(s, "NOSUCHQID000000", true), QUEUE_ERR_NOT_FOUND);
    struct queue_due *due = NULL;
    size_t n = 0;
    assert_int_equal(queue_store_due(s, 5000, 10, NULL, NULL, &due, &n), 0);
    assert_int_equal(n, 0); /* held */
    int64_t at = 0;
    assert_int_equal(queue_store_next_due(s, &at), 0);
    assert_int_equal(at, INT64_MAX);
    size_t count = 0;
    assert_int_equal(queue_store_retry(s, NULL, 5000, &count), 0);
    assert_int_equal(count, 0); /* retry --all leaves held mail alone */
    assert_int_equal(queue_store_hold(s, "OLDQID000000001", false), 0);

    /* a deferred message made due now by retry */
    sql(f, "UPDATE recipients SET state = 'deferred', next_attempt_at = 9000;"
           "UPDATE messages SET next_attempt_at = 9000;");
    assert_int_equal(queue_store_due(s, 5000, 10, NULL, NULL, &due, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(queue_store_retry(s, "OLDQID000000001", 5000, &count), 0);
    assert_int_equal(count, 1);
    assert_int_equal(queue_store_due(s, 5000, 10, NULL, NULL, &due, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(due[0].rcpt_count, 2);
    queue_due_free(due, n);
    assert_int_equal(queue_store_retry(s, "NOSUCHQID000000", 5000, &count), QUEUE_ERR_NOT_FOUND);

    /* attempts are listed oldest first, with the recipient they concern */
    struct queue_attempt a = {.recipient_id = 0, .domain = "one.test", .step = "dns",
                              .reply = "SERVFAIL looking up MX for one.test",
                              .outcome = "deferred"};
    struct queue_outcome o = {.message_id = 1, .now = 5001, .attempts = &a, .attempt_count = 1};
    assert_int_equal(queue_store_record(s, &o), 0);
    struct queue_reader *r = NULL;
    assert_int_equal(queue_reader_open(f->path, &r), 0);
    char seen[1024] = "";
    assert_int_equal(queue_reader_attempts(r, "OLDQID000000001", collect_attempt, seen), 0);
    assert_string_equal(seen, "/dns/deferred/SERVFAIL looking up MX for one.test;");
    queue_reader_close(r);

    assert_int_equal(queue_store_delete(s, "OLDQID000000001"), 0);
    assert_int_equal(queue_store_delete(s, "OLDQID000000001"), QUEUE_ERR_NOT_FOUND);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM recipients"), 0);
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM attempts"), 0);
    queue_store_close(s);
}

/* ---- large bodies in files (queue_spool.c) ------------------------------ */

static void spool_path(const struct fixture *f, const char *qid, char *out, size_t size)
{
    snprintf(out, size, "%s-bodies/%s", f->path, qid);
}

static void spool_write(const struct fixture *f, const char *qid, const char *content,
                        time_t mtime)
{
    char dir[160], path[192];
    snprintf(dir, sizeof(dir), "%s-bodies", f->path);
    mkdir(dir, 0700);
    spool_path(f, qid, path, sizeof(path));
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(content, 1, strlen(content), fp), strlen(content));
    assert_int_equal(fclose(fp), 0);
    if (mtime != 0) {
        struct timespec ts[2] = {{.tv_sec = mtime}, {.tv_sec = mtime}};
        assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
    }
}

static bool spool_exists(const struct fixture *f, const char *qid)
{
    char path[192];
    spool_path(f, qid, path, sizeof(path));
    return access(path, F_OK) == 0;
}

/* A message whose body row points at its file, with one queued recipient. */
static void insert_file_message(const struct fixture *f, int id, const char *qid)
{
    char text[512];
    snprintf(text, sizeof(text),
             "INSERT INTO messages(id, qid, created_at, sender, auth_user, client_addr, helo,"
             " size, body) VALUES(%d, '%s', 1000, 's@example.test', 'u', '192.0.2.1', 'h', 20, X'');"
             "INSERT INTO bodies(message_id, data, file) VALUES(%d, X'', 1);"
             "INSERT INTO recipients(id, message_id, address) VALUES(%d, %d, 'r@example.test');",
             id, qid, id, id, id);
    sql(f, text);
}

static void test_body_files(void **state)
{
    struct fixture *f = *state;
    struct queue_store *s = open_store(f); /* creates the schema */
    insert_file_message(f, 1, "FILEQID00000001");
    insert_file_message(f, 2, "FILEQID00000002");
    insert_file_message(f, 3, "FILEQID00000003"); /* its file is missing */
    const char *content = "Subject: big\r\n\r\nbody kept in a file\r\n";
    spool_write(f, "FILEQID00000001", content, 0);
    spool_write(f, "FILEQID00000002", content, 0);

    uint8_t *body = NULL;
    size_t len = 0;
    assert_int_equal(queue_store_body(s, 1, &body, &len), 0);
    assert_int_equal(len, strlen(content));
    assert_memory_equal(body, content, len);
    free(body);
    assert_int_equal(queue_store_body(s, 3, &body, &len), QUEUE_ERR_STORAGE);
    assert_null(body);
    struct queue_reader *r = NULL;
    assert_int_equal(queue_reader_open(f->path, &r), 0);
    assert_int_equal(queue_reader_body(r, "FILEQID00000002", &body, &len), 0);
    assert_int_equal(len, strlen(content));
    free(body);
    queue_reader_close(r);

    /* a failed outcome write keeps the file; the delivery that finishes
     * the message removes it with the row */
    struct queue_rcpt_update delivered = {.recipient_id = 1, .state = "delivered",
                                          .dsn_status = "2.0.0", .last_error = "250 ok"};
    struct queue_outcome o = {.message_id = 1, .now = 2000, .rcpts = &delivered, .rcpt_count = 1};
    struct queue_new_message dup = {.qid = "FILEQID00000002", .kind = "dsn", .sender = "",
                                    .recipients = (const char *[]){"x@example.test"},
                                    .recipient_count = 1, .data = (const uint8_t *)"x",
                                    .data_len = 1};
    struct queue_outcome bad = o;
    bad.created = &dup; /* a qid that exists: the whole transaction rolls back */
    bad.created_count = 1;
    assert_int_equal(queue_store_record(s, &bad), QUEUE_ERR_STORAGE);
    assert_true(spool_exists(f, "FILEQID00000001"));
    assert_int_equal(queue_store_record(s, &o), 0);
    assert_false(spool_exists(f, "FILEQID00000001"));
    assert_int_equal(sql_int(f, "SELECT COUNT(*) FROM bodies WHERE message_id = 1"), 0);

    /* an admin's delete removes it too */
    assert_int_equal(queue_store_delete(s, "FILEQID00000002"), 0);
    assert_false(spool_exists(f, "FILEQID00000002"));

    /* the sweep (with the purge) removes old files no row refers to, never a
     * young one (its COMMIT may be coming), a referenced one or a stranger */
    time_t old = time(NULL) - 3600;
    spool_write(f, "ORPHANOLD000001", content, old);
    spool_write(f, "ORPHANNEW000001", content, 0);
    spool_write(f, "FILEQID00000003", content, old);
    spool_write(f, "not-a-qid.txt", content, old);
    size_t purged = 0;
    assert_int_equal(queue_store_purge_done(s, 0, &purged), 0);
    assert_false(spool_exists(f, "ORPHANOLD000001"));
    assert_true(spool_exists(f, "ORPHANNEW000001"));
    assert_true(spool_exists(f, "FILEQID00000003"));
    assert_true(spool_exists(f, "not-a-qid.txt"));
    queue_store_close(s);
}

/* Every statement an outcome runs goes straight to its rows: a SEARCH by
 * rowid or by message_id, never a SCAN and never an index on state. With
 * thousands of messages pending, such a lookup would read every pending
 * recipient for each outcome recorded (the refresh of the message row once
 * did, through recipients_state_due). Read off the store's own prepared
 * statements with EXPLAIN QUERY PLAN, on a queue with a backlog. */
static void test_outcome_plans(void **state)
{
    struct fixture *f = *state;
    make_v1_database(f);
    struct queue_store *s = open_store(f);
    sql(f, "WITH RECURSIVE n(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM n WHERE i < 500)"
           " INSERT INTO messages(id, qid, created_at, sender, auth_user, client_addr, helo,"
           " size, body) SELECT i, printf('BACKLOG%08d', i), 1000, 's@x.test', 's', '', '', 1,"
           " X'' FROM n;"
           "INSERT INTO recipients(message_id, address) SELECT id, 'r@y.test' FROM messages"
           " WHERE id > 1;");
    int64_t a_id = sql_int(f, "SELECT id FROM recipients WHERE address = 'a@one.test'");
    int64_t b_id = sql_int(f, "SELECT id FROM recipients WHERE address = 'b@two.test'");
    struct queue_attempt attempt = {.recipient_id = a_id, .domain = "one.test",
                                    .step = "done", .reply = "250 ok",
                                    .outcome = "delivered"};
    struct queue_rcpt_update rcpts[] = {
        {.recipient_id = a_id, .state = "delivered", .dsn_status = "2.0.0", .last_error = ""},
        {.recipient_id = b_id, .state = "bounced", .dsn_status = "5.1.1", .last_error = "550"},
    };
    const char *dsn_rcpt[] = {"scanner@example.test"};
    struct queue_new_message dsn = {.qid = "DSNQID000000001", .kind = "dsn", .sender = "",
                                    .recipients = dsn_rcpt, .recipient_count = 1,
                                    .data = (const uint8_t *)"x", .data_len = 1};
    struct queue_outcome o = {.message_id = 1, .now = 2000, .attempts = &attempt,
                              .attempt_count = 1, .rcpts = rcpts, .rcpt_count = 2,
                              .created = &dsn, .created_count = 1};
    assert_int_equal(queue_store_record(s, &o), 0);
    assert_int_equal(sql_int(f, "SELECT state = 'done' FROM messages WHERE id = 1"), 1);

    sqlite3 *db = queue_store_db(s);
    size_t checked = 0;
    for (sqlite3_stmt *st = sqlite3_next_stmt(db, NULL); st != NULL;
         st = sqlite3_next_stmt(db, st)) {
        char explain[2048];
        snprintf(explain, sizeof(explain), "EXPLAIN QUERY PLAN %s", sqlite3_sql(st));
        sqlite3_stmt *plan = NULL;
        assert_int_equal(sqlite3_prepare_v2(db, explain, -1, &plan, NULL), SQLITE_OK);
        while (sqlite3_step(plan) == SQLITE_ROW) {
            const char *row = (const char *)sqlite3_column_text(plan, 3);
            bool is_direct = strncmp(row, "SEARCH", 6) != 0 || strstr(row, "PRIMARY KEY") ||
                             strstr(row, "(message_id=?)");
            if (strncmp(row, "SCAN", 4) == 0 || !is_direct)
                fail_msg("%s\n  plan: %s", sqlite3_sql(st), row);
        }
        sqlite3_finalize(plan);
        checked++;
    }
    assert_true(checked >= 6); /* attempt, recipient, message, body, DSN rows */
    queue_store_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_migrate_and_due, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_record_outcomes, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_record_batch, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_outcome_plans, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_admin_actions, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_outcome_of_deleted_message, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_body_files, fixture_setup, fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

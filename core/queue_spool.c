/* queue_spool.c — large message bodies as files beside the database, in
 * "<database>-bodies/<qid>". In SQLite a body is written twice (to the WAL,
 * then by the checkpoint into the database file) in page-sized pieces, and
 * read back the same way; a file is written once, in one call, and read in
 * one. The row in `bodies` (file = 1) is what makes a file part of the
 * queue: the committer writes and fdatasyncs the file and fsyncs the
 * directory before the COMMIT that inserts the row, and a file is removed
 * only after the COMMIT that deleted its row. A crash in between leaves a
 * file without a row, which queue_spool_sweep removes; never a row without
 * its file. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/queue_internal.h"

int queue_spool_dir(const char *db_path, char *out, size_t out_size)
{
    int n = snprintf(out, out_size, "%s" QUEUE_SPOOL_SUFFIX, db_path);
    return n < 0 || (size_t)n >= out_size ? -ENAMETOOLONG : 0;
}

int queue_spool_open(const char *dir, int *dirfd)
{
    *dirfd = -1;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return -errno;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    *dirfd = fd;
    return 0;
}

/* A queue id is all letters and digits: anything else in the directory is
 * not ours to remove, and no name read from the database leaves it. */
static bool queue_spool_name_is_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n >= QUEUE_ID_SIZE)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
            return false;
    }
    return true;
}

int queue_spool_create(int dirfd, const char *qid, const uint8_t *head, size_t head_len,
                       const uint8_t *body, size_t body_len, int *fd_out)
{
    *fd_out = -1;
    if (!queue_spool_name_is_valid(qid))
        return -EINVAL;
    int fd = openat(dirfd, qid, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    struct iovec iov[2] = {{(void *)head, head_len}, {(void *)body, body_len}};
    struct iovec *v = iov;
    int n = 2;
    for (;;) {
        while (n > 0 && v->iov_len == 0) {
            v++;
            n--;
        }
        if (n == 0)
            break;
        ssize_t w = writev(fd, v, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int err = w < 0 ? -errno : -EIO;
            close(fd);
            unlinkat(dirfd, qid, 0);
            return err;
        }
        for (size_t done = (size_t)w; done > 0;) {
            size_t step = done < v->iov_len ? done : v->iov_len;
            v->iov_base = (uint8_t *)v->iov_base + step;
            v->iov_len -= step;
            done -= step;
            if (v->iov_len == 0) {
                v++;
                n--;
            }
        }
    }
    /* start the write-back now, so the files of one batch reach the disk
     * together and the fdatasyncs that follow mostly wait for what is done */
    (void)sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    *fd_out = fd;
    return 0;
}

int queue_spool_finish(int fd)
{
    int rc = fdatasync(fd) < 0 ? -errno : 0;
    if (close(fd) < 0 && rc == 0 && errno != EINTR)
        rc = -errno;
    return rc;
}

void queue_spool_remove(const char *dir, const char *qid)
{
    if (!queue_spool_name_is_valid(qid))
        return;
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s", dir, qid);
    if (unlink(path) < 0 && errno != ENOENT)
        log_warn(qid, "queue body file not removed path=%s error=\"%s\"", path, strerror(errno));
}

static int queue_spool_read(const char *dir, const char *qid, uint8_t **out, size_t *out_len)
{
    if (!queue_spool_name_is_valid(qid))
        return QUEUE_ERR_STORAGE;
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s", dir, qid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        log_err(qid, "queue body file unreadable path=%s error=\"%s\"", path, strerror(err));
        return QUEUE_ERR_STORAGE;
    }
    size_t len = (size_t)st.st_size;
    uint8_t *data = malloc(len > 0 ? len : 1);
    if (data == NULL) {
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < len) {
        ssize_t r = read(fd, data + got, len - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            log_err(qid, "queue body file short read path=%s error=\"%s\"", path,
                    r < 0 ? strerror(errno) : "end of file");
            close(fd);
            free(data);
            return QUEUE_ERR_STORAGE;
        }
        got += (size_t)r;
    }
    close(fd);
    *out = data;
    *out_len = len;
    return 0;
}

int queue_body_from_row(sqlite3_stmt *st, const char *dir, uint8_t **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (sqlite3_column_int(st, 1) != 0) {
        const unsigned char *qid = sqlite3_column_text(st, 2);
        return queue_spool_read(dir, qid != NULL ? (const char *)qid : "", out, out_len);
    }
    const void *blob = sqlite3_column_blob(st, 0);
    int len = sqlite3_column_bytes(st, 0);
    if (len > 0 && blob == NULL) /* out of memory inside SQLite */
        return QUEUE_ERR_STORAGE;
    uint8_t *copy = malloc(len > 0 ? (size_t)len : 1);
    if (copy == NULL)
        return -ENOMEM;
    if (len > 0)
        memcpy(copy, blob, (size_t)len);
    *out = copy;
    *out_len = (size_t)len;
    return 0;
}

int queue_spool_sweep(sqlite3 *db, const char *dir, int64_t min_age_s, size_t *removed)
{
    *removed = 0;
    DIR *d = opendir(dir);
    if (d == NULL)
        return errno == ENOENT ? 0 : -errno;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db,
                                "SELECT 1 FROM messages m JOIN bodies b ON b.message_id = m.id"
                                " WHERE m.qid = ? AND b.file = 1",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) {
        closedir(d);
        return queue_status_from_sqlite(rc) == QUEUE_ERR_BUSY ? QUEUE_ERR_BUSY : QUEUE_ERR_STORAGE;
    }
    int status = 0;
    time_t now = time(NULL);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!queue_spool_name_is_valid(e->d_name))
            continue;
        struct stat sb;
        if (fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(sb.st_mode))
            continue;
        /* a file younger than this may be one whose COMMIT is on its way */
        if (min_age_s > 0 && (int64_t)(now - sb.st_mtime) < min_age_s)
            continue;
        sqlite3_bind_text(st, 1, e->d_name, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (rc == SQLITE_ROW)
            continue;
        if (rc != SQLITE_DONE) {
            status = queue_status_from_sqlite(rc) == QUEUE_ERR_BUSY ? QUEUE_ERR_BUSY
                                                                     : QUEUE_ERR_STORAGE;
            break;
        }
        if (unlinkat(dirfd(d), e->d_name, 0) == 0)
            (*removed)++;
        else if (errno != ENOENT)
            log_warn(NULL, "queue body file not removed dir=%s name=%s error=\"%s\"", dir,
                     e->d_name, strerror(errno));
    }
    sqlite3_finalize(st);
    closedir(d);
    return status;
}

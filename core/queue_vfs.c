/* queue_vfs.c — see queue_internal.h. SQLite writes each WAL frame as two
 * pwrite calls, its 24-byte header and then its page, so a commit of n pages
 * cost 2n system calls, every one of them through ext4's write path. This
 * VFS gathers the frames a transaction appends to the WAL in memory and
 * hands them to the default VFS in one call: at the page of a commit frame
 * (whose header names the database size after the commit, where other
 * frames have 0), before any read, sync, truncate, size query or file
 * control of the WAL, before a write elsewhere in it, when the buffer is
 * full, and when the connection gives up the write lock (xShmLock on the
 * database file: what a rolled-back transaction spilled reaches the file
 * before another writer may append at the same offsets).
 *
 * Frames become visible to other connections only through the wal-index,
 * which SQLite updates after the commit frame's write (and sync) returned,
 * so no connection looks for a frame still in the buffer. Only appended
 * frames are gathered: a write over what this transaction already wrote (a
 * page written again in place, the checksums SQLite then rewrites, which it
 * may do after the commit frame) goes straight down, so nothing of a commit
 * stays in memory once sqlite3WalFrames returns, synced or not. A gathered
 * write that fails is the error of the call that flushed it, and of every
 * write and sync after it until the write lock is given up, so no commit
 * can follow frames that never reached the file. Every other file, and
 * every other method, is the default VFS's own. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/queue_internal.h"

#define VFS_NAME "smarthost-wal"
#define VFS_BUF_FIRST (64u * 1024)
#define VFS_BUF_MAX (1024u * 1024) /* a larger commit goes out in pieces this big */
/* The unix VFS writes at most 128 KiB - 1 per call (it masks the length
 * with 0x1ffff: a longer write fails as SQLITE_FULL), so a buffer goes down
 * in calls of at most this much. */
#define VFS_WRITE_MAX (124u * 1024)
#define VFS_WAL_HEADER 32 /* the WAL file's own header, then frames */
#define VFS_FRAME_HEADER 24
#define VFS_WRITE_LOCK 0  /* the wal-index lock a writer holds (WAL_WRITE_LOCK) */

/* Both kinds of our files: the default VFS's file follows in the same
 * allocation. */
struct vfs_file {
    sqlite3_file base;
    sqlite3_file *real;
};

struct vfs_wal_file;

struct vfs_db_file {
    struct vfs_file f;       /* pMethods = &vfs_db_methods */
    struct vfs_wal_file *wal; /* its WAL while open */
};

struct vfs_wal_file {
    struct vfs_file f;      /* pMethods = &vfs_wal_methods */
    struct vfs_db_file *db; /* NULL: not ours (then nothing is gathered) */
    unsigned char *buf;
    size_t len, cap;
    sqlite3_int64 at;    /* file offset of buf[0] */
    sqlite3_int64 end;   /* of what this write transaction wrote */
    int err;             /* a gathered write failed in this write transaction */
    bool is_commit_next; /* the last write was an appended commit frame's header */
};

static sqlite3_vfs vfs;
static sqlite3_vfs *vfs_real;
static pthread_once_t vfs_once = PTHREAD_ONCE_INIT;
static bool is_vfs_registered;
static atomic_ullong vfs_gathered, vfs_written;

static sqlite3_file *vfs_under(sqlite3_file *file)
{
    return ((struct vfs_file *)file)->real;
}

/* ---- the WAL file --------------------------------------------------------- */

static int vfs_write_under(struct vfs_wal_file *w, const unsigned char *data, size_t len,
                           sqlite3_int64 off)
{
    int rc = SQLITE_OK;
    for (size_t done = 0; rc == SQLITE_OK && done < len;) {
        size_t n = len - done < VFS_WRITE_MAX ? len - done : VFS_WRITE_MAX;
        rc = w->f.real->pMethods->xWrite(w->f.real, data + done, (int)n,
                                         off + (sqlite3_int64)done);
        atomic_fetch_add_explicit(&vfs_written, 1, memory_order_relaxed);
        done += n;
    }
    return rc;
}

static int vfs_flush(struct vfs_wal_file *w)
{
    if (w->len == 0)
        return SQLITE_OK;
    int rc = vfs_write_under(w, w->buf, w->len, w->at);
    w->len = 0;
    if (rc != SQLITE_OK && w->err == SQLITE_OK)
        w->err = rc;
    return rc;
}

/* The write transaction is over (committed, or rolled back after spilling):
 * what it left goes down now, and the next one starts afresh. */
static void vfs_settle(struct vfs_wal_file *w)
{
    vfs_flush(w); /* frames no commit refers to: a failure loses nothing */
    w->err = SQLITE_OK;
    w->end = 0;
    w->is_commit_next = false;
}

static int vfs_reserve(struct vfs_wal_file *w, size_t need)
{
    if (need <= w->cap)
        return SQLITE_OK;
    size_t cap = w->cap ? w->cap : VFS_BUF_FIRST;
    while (cap < need)
        cap *= 2;
    unsigned char *p = realloc(w->buf, cap);
    if (p == NULL)
        return SQLITE_NOMEM;
    w->buf = p;
    w->cap = cap;
    return SQLITE_OK;
}

static int vfs_write(sqlite3_file *file, const void *data, int amt, sqlite3_int64 off)
{
    struct vfs_wal_file *w = (struct vfs_wal_file *)file;
    if (w->err != SQLITE_OK)
        return w->err;
    bool is_commit = w->is_commit_next;
    w->is_commit_next = false;
    bool is_append = w->db != NULL && off >= w->end;
    if (off + amt > w->end)
        w->end = off + amt;
    if (is_append && amt == VFS_FRAME_HEADER && off >= VFS_WAL_HEADER) {
        const unsigned char *h = data; /* page number, then database size if a commit */
        w->is_commit_next = (h[4] | h[5] | h[6] | h[7]) != 0;
    }
    bool is_gathered = is_append && (size_t)amt <= VFS_BUF_MAX;
    int rc = SQLITE_OK;
    if (w->len > 0 && (!is_gathered || off != w->at + (sqlite3_int64)w->len ||
                       w->len + (size_t)amt > VFS_BUF_MAX))
        rc = vfs_flush(w);
    if (rc == SQLITE_OK && is_gathered && vfs_reserve(w, w->len + (size_t)amt) != SQLITE_OK) {
        is_gathered = false; /* no memory: what is gathered goes first, then this */
        rc = vfs_flush(w);
    }
    if (rc != SQLITE_OK)
        return rc;
    if (!is_gathered)
        return vfs_write_under(w, data, (size_t)amt, off);
    if (w->len == 0)
        w->at = off;
    memcpy(w->buf + w->len, data, (size_t)amt);
    w->len += (size_t)amt;
    atomic_fetch_add_explicit(&vfs_gathered, 1, memory_order_relaxed);
    return is_commit ? vfs_flush(w) : SQLITE_OK;
}

static int vfs_wal_close(sqlite3_file *file)
{
    struct vfs_wal_file *w = (struct vfs_wal_file *)file;
    vfs_flush(w); /* no commit is left in it: see vfs_write */
    int rc = w->f.real->pMethods->xClose(w->f.real);
    if (w->db != NULL && w->db->wal == w)
        w->db->wal = NULL;
    free(w->buf);
    w->buf = NULL;
    w->cap = 0;
    return rc;
}

static int vfs_read(sqlite3_file *file, void *data, int amt, sqlite3_int64 off)
{
    struct vfs_wal_file *w = (struct vfs_wal_file *)file;
    int rc = vfs_flush(w);
    return rc != SQLITE_OK ? rc : w->f.real->pMethods->xRead(w->f.real, data, amt, off);
}

static int vfs_truncate(sqlite3_file *file, sqlite3_int64 size)
{
    struct vfs_wal_file *w = (struct vfs_wal_file *)file;
    int rc = vfs_flush(w);
    if (w->end > size)
        w->end = size;
    return rc != SQLITE_OK ? rc : w->f.real->pMethods->xTruncate(w->f.real, size);
}

static int vfs_sync(sqlite3_file *file, int flags)
{
    struct vfs_wal_file *w = (struct vfs_wal_file *)file;
    int rc = vfs_flush(w);
    if (rc == SQLITE_OK)
        rc = w->err;
    return rc != SQLITE_OK ? rc : w->f.real->pMethods->xSync(w->f.real, flags);
}

static int vfs_file_size(sqlite3_file *file, sqlite3_int64 *size)
{
    struct vfs_wal_file *w = (struct vfs_wal_file *)file;
    int rc = vfs_flush(w);
    return rc != SQLITE_OK ? rc : w->f.real->pMethods->xFileSize(w->f.real, size);
}

static int vfs_wal_file_control(sqlite3_file *file, int op, void *arg)
{
    struct vfs_wal_file *w = (struct vfs_wal_file *)file;
    int rc = vfs_flush(w);
    return rc != SQLITE_OK ? rc : w->f.real->pMethods->xFileControl(w->f.real, op, arg);
}

/* ---- the database file: the default VFS's, and the write lock watched ---- */

static int vfs_db_close(sqlite3_file *file)
{
    struct vfs_db_file *d = (struct vfs_db_file *)file;
    if (d->wal != NULL)
        d->wal->db = NULL;
    return d->f.real->pMethods->xClose(d->f.real);
}

static int vfs_shm_lock(sqlite3_file *file, int offset, int n, int flags)
{
    struct vfs_db_file *d = (struct vfs_db_file *)file;
    if ((flags & SQLITE_SHM_UNLOCK) && offset <= VFS_WRITE_LOCK &&
        VFS_WRITE_LOCK < offset + n && d->wal != NULL)
        vfs_settle(d->wal);
    return d->f.real->pMethods->xShmLock(d->f.real, offset, n, flags);
}

static int vfs_db_read(sqlite3_file *file, void *data, int amt, sqlite3_int64 off)
{
    return vfs_under(file)->pMethods->xRead(vfs_under(file), data, amt, off);
}

static int vfs_db_write(sqlite3_file *file, const void *data, int amt, sqlite3_int64 off)
{
    return vfs_under(file)->pMethods->xWrite(vfs_under(file), data, amt, off);
}

static int vfs_db_truncate(sqlite3_file *file, sqlite3_int64 size)
{
    return vfs_under(file)->pMethods->xTruncate(vfs_under(file), size);
}

static int vfs_db_sync(sqlite3_file *file, int flags)
{
    return vfs_under(file)->pMethods->xSync(vfs_under(file), flags);
}

static int vfs_db_file_size(sqlite3_file *file, sqlite3_int64 *size)
{
    return vfs_under(file)->pMethods->xFileSize(vfs_under(file), size);
}

static int vfs_db_file_control(sqlite3_file *file, int op, void *arg)
{
    return vfs_under(file)->pMethods->xFileControl(vfs_under(file), op, arg);
}

static int vfs_shm_map(sqlite3_file *file, int region, int size, int extend,
                       void volatile **out)
{
    return vfs_under(file)->pMethods->xShmMap(vfs_under(file), region, size, extend, out);
}

static void vfs_shm_barrier(sqlite3_file *file)
{
    vfs_under(file)->pMethods->xShmBarrier(vfs_under(file));
}

static int vfs_shm_unmap(sqlite3_file *file, int delete_flag)
{
    return vfs_under(file)->pMethods->xShmUnmap(vfs_under(file), delete_flag);
}

static int vfs_fetch(sqlite3_file *file, sqlite3_int64 off, int amt, void **out)
{
    sqlite3_file *real = vfs_under(file);
    if (real->pMethods->iVersion < 3) { /* no memory map: SQLite reads instead */
        *out = NULL;
        return SQLITE_OK;
    }
    return real->pMethods->xFetch(real, off, amt, out);
}

static int vfs_unfetch(sqlite3_file *file, sqlite3_int64 off, void *p)
{
    sqlite3_file *real = vfs_under(file);
    return real->pMethods->iVersion < 3 ? SQLITE_OK : real->pMethods->xUnfetch(real, off, p);
}

/* ---- both ------------------------------------------------------------------ */

static int vfs_lock(sqlite3_file *file, int lock)
{
    return vfs_under(file)->pMethods->xLock(vfs_under(file), lock);
}

static int vfs_unlock(sqlite3_file *file, int lock)
{
    return vfs_under(file)->pMethods->xUnlock(vfs_under(file), lock);
}

static int vfs_check_reserved(sqlite3_file *file, int *out)
{
    return vfs_under(file)->pMethods->xCheckReservedLock(vfs_under(file), out);
}

static int vfs_sector_size(sqlite3_file *file)
{
    return vfs_under(file)->pMethods->xSectorSize(vfs_under(file));
}

static int vfs_device_characteristics(sqlite3_file *file)
{
    return vfs_under(file)->pMethods->xDeviceCharacteristics(vfs_under(file));
}

static const sqlite3_io_methods vfs_wal_methods = {
    .iVersion = 1, /* no shared memory and no mmap: a WAL file has neither */
    .xClose = vfs_wal_close,
    .xRead = vfs_read,
    .xWrite = vfs_write,
    .xTruncate = vfs_truncate,
    .xSync = vfs_sync,
    .xFileSize = vfs_file_size,
    .xLock = vfs_lock,
    .xUnlock = vfs_unlock,
    .xCheckReservedLock = vfs_check_reserved,
    .xFileControl = vfs_wal_file_control,
    .xSectorSize = vfs_sector_size,
    .xDeviceCharacteristics = vfs_device_characteristics,
};

static const sqlite3_io_methods vfs_db_methods = {
    .iVersion = 3,
    .xClose = vfs_db_close,
    .xRead = vfs_db_read,
    .xWrite = vfs_db_write,
    .xTruncate = vfs_db_truncate,
    .xSync = vfs_db_sync,
    .xFileSize = vfs_db_file_size,
    .xLock = vfs_lock,
    .xUnlock = vfs_unlock,
    .xCheckReservedLock = vfs_check_reserved,
    .xFileControl = vfs_db_file_control,
    .xSectorSize = vfs_sector_size,
    .xDeviceCharacteristics = vfs_device_characteristics,
    .xShmMap = vfs_shm_map,
    .xShmLock = vfs_shm_lock,
    .xShmBarrier = vfs_shm_barrier,
    .xShmUnmap = vfs_shm_unmap,
    .xFetch = vfs_fetch,
    .xUnfetch = vfs_unfetch,
};

/* The real file sits after ours, aligned as malloc would align it. */
#define VFS_REAL_OFFSET ((sizeof(struct vfs_wal_file) + 15) & ~(size_t)15)

static int vfs_open(sqlite3_vfs *self, const char *name, sqlite3_file *file, int flags,
                    int *out_flags)
{
    (void)self;
    bool is_wal = flags & SQLITE_OPEN_WAL;
    if (!is_wal && !(flags & SQLITE_OPEN_MAIN_DB)) /* the default VFS's file, as is */
        return vfs_real->xOpen(vfs_real, name, file, flags, out_flags);
    struct vfs_file *f = (struct vfs_file *)file;
    memset(file, 0, VFS_REAL_OFFSET);
    f->real = (sqlite3_file *)((char *)file + VFS_REAL_OFFSET);
    int rc = vfs_real->xOpen(vfs_real, name, f->real, flags, out_flags);
    /* SQLite calls xClose even after a failed xOpen that set pMethods */
    if (f->real->pMethods == NULL)
        return rc;
    if (!is_wal) {
        f->base.pMethods = &vfs_db_methods;
        return rc;
    }
    f->base.pMethods = &vfs_wal_methods;
    sqlite3_file *db = sqlite3_database_file_object(name);
    if (db != NULL && db->pMethods == &vfs_db_methods) { /* its write lock tells us when */
        struct vfs_wal_file *w = (struct vfs_wal_file *)f;
        w->db = (struct vfs_db_file *)db;
        w->db->wal = w;
    }
    return rc;
}

static int vfs_delete(sqlite3_vfs *self, const char *name, int sync_dir)
{
    (void)self;
    return vfs_real->xDelete(vfs_real, name, sync_dir);
}

static int vfs_access(sqlite3_vfs *self, const char *name, int flags, int *out)
{
    (void)self;
    return vfs_real->xAccess(vfs_real, name, flags, out);
}

static int vfs_full_pathname(sqlite3_vfs *self, const char *name, int n, char *out)
{
    (void)self;
    return vfs_real->xFullPathname(vfs_real, name, n, out);
}

static int vfs_randomness(sqlite3_vfs *self, int n, char *out)
{
    (void)self;
    return vfs_real->xRandomness(vfs_real, n, out);
}

static int vfs_sleep(sqlite3_vfs *self, int us)
{
    (void)self;
    return vfs_real->xSleep(vfs_real, us);
}

static int vfs_current_time(sqlite3_vfs *self, double *out)
{
    (void)self;
    return vfs_real->xCurrentTime(vfs_real, out);
}

static int vfs_get_last_error(sqlite3_vfs *self, int n, char *out)
{
    (void)self;
    return vfs_real->xGetLastError(vfs_real, n, out);
}

static int vfs_current_time_int64(sqlite3_vfs *self, sqlite3_int64 *out)
{
    (void)self;
    return vfs_real->xCurrentTimeInt64(vfs_real, out);
}

static void vfs_register(void)
{
    vfs_real = sqlite3_vfs_find(NULL);
    if (vfs_real == NULL || vfs_real->iVersion < 2)
        return;
    vfs = (sqlite3_vfs){
        .iVersion = 2,
        .szOsFile = (int)(VFS_REAL_OFFSET + (size_t)vfs_real->szOsFile),
        .mxPathname = vfs_real->mxPathname,
        .zName = VFS_NAME,
        .xOpen = vfs_open,
        .xDelete = vfs_delete,
        .xAccess = vfs_access,
        .xFullPathname = vfs_full_pathname,
        .xRandomness = vfs_randomness,
        .xSleep = vfs_sleep,
        .xCurrentTime = vfs_current_time,
        .xGetLastError = vfs_get_last_error,
        .xCurrentTimeInt64 = vfs_current_time_int64,
    };
    is_vfs_registered = sqlite3_vfs_register(&vfs, 0) == SQLITE_OK;
}

const char *queue_vfs(void)
{
    pthread_once(&vfs_once, vfs_register);
    return is_vfs_registered ? VFS_NAME : NULL;
}

void queue_vfs_stats(uint64_t *gathered, uint64_t *written)
{
    *gathered = atomic_load(&vfs_gathered);
    *written = atomic_load(&vfs_written);
}

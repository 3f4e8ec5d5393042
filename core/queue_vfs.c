/* queue_vfs.c — see queue_internal.h. SQLite writes each WAL frame as two
 * pwrite calls, its 24-byte header and then its page, so a commit of n pages
 * cost 2n system calls, every one of them through ext4's write path. On the
 * WAL file this VFS gathers contiguous writes in memory and hands them to the
 * default VFS in one call: at the page of a commit frame (whose header names
 * the database size after the commit, where other frames have 0), before any
 * read, sync, truncate, size query or file control of that file, before a
 * write elsewhere in it, and when the buffer is full. Frames become visible
 * to other connections only through the wal-index, which SQLite updates
 * after the commit frame's write (and sync) returned, so no connection can
 * look for a frame that is still in the buffer; a failed gathered write is
 * the error of the write that flushed it, so the transaction fails as it
 * would have. Only appended frames are gathered: a write over what the file
 * already holds (a page written again in place, the checksums SQLite then
 * rewrites, which it may do after the commit frame) goes straight down, so
 * nothing of a commit stays in memory once sqlite3WalFrames returns, synced
 * or not. Every other file, and every other method, is the default VFS's
 * own. */
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
#define VFS_WAL_HEADER 32          /* the WAL file's own header, then frames */
#define VFS_FRAME_HEADER 24

struct vfs_wal_file {
    sqlite3_file base;  /* pMethods = &vfs_wal_methods */
    sqlite3_file *real; /* the default VFS's file, in the same allocation */
    unsigned char *buf;
    size_t len, cap;
    sqlite3_int64 at;    /* file offset of buf[0] */
    sqlite3_int64 end;   /* of what this handle wrote since the log began again */
    unsigned char salt[8]; /* of the frames it wrote: new ones mean the log began again */
    bool is_commit_next; /* the last write was an appended commit frame's header */
};

static sqlite3_vfs vfs;
static sqlite3_vfs *vfs_real;
static pthread_once_t vfs_once = PTHREAD_ONCE_INIT;
static bool is_vfs_registered;
static atomic_ullong vfs_gathered, vfs_written;

static int vfs_write_under(struct vfs_wal_file *f, const unsigned char *data, size_t len,
                           sqlite3_int64 off)
{
    int rc = SQLITE_OK;
    for (size_t done = 0; rc == SQLITE_OK && done < len;) {
        size_t n = len - done < VFS_WRITE_MAX ? len - done : VFS_WRITE_MAX;
        rc = f->real->pMethods->xWrite(f->real, data + done, (int)n, off + (sqlite3_int64)done);
        atomic_fetch_add_explicit(&vfs_written, 1, memory_order_relaxed);
        done += n;
    }
    return rc;
}

static int vfs_flush(struct vfs_wal_file *f)
{
    if (f->len == 0)
        return SQLITE_OK;
    int rc = vfs_write_under(f, f->buf, f->len, f->at);
    f->len = 0;
    return rc;
}

static int vfs_reserve(struct vfs_wal_file *f, size_t need)
{
    if (need <= f->cap)
        return SQLITE_OK;
    size_t cap = f->cap ? f->cap : VFS_BUF_FIRST;
    while (cap < need)
        cap *= 2;
    unsigned char *p = realloc(f->buf, cap);
    if (p == NULL)
        return SQLITE_NOMEM;
    f->buf = p;
    f->cap = cap;
    return SQLITE_OK;
}

static int vfs_write(sqlite3_file *file, const void *data, int amt, sqlite3_int64 off)
{
    struct vfs_wal_file *f = (struct vfs_wal_file *)file;
    bool is_commit = f->is_commit_next;
    f->is_commit_next = false;
    bool is_header = amt == VFS_FRAME_HEADER && off >= VFS_WAL_HEADER;
    /* The log began again, here (a new header) or from another connection
     * (its frames carry the new header's salt): nothing below is ours. A
     * frame whose checksums SQLite will rewrite has zeros for now. */
    static const unsigned char zeros[8];
    const unsigned char *salt = is_header ? (const unsigned char *)data + 8 : zeros;
    bool is_new_salt = memcmp(salt, zeros, 8) != 0 && memcmp(salt, f->salt, 8) != 0;
    if (off == 0 || is_new_salt)
        f->end = 0;
    if (is_new_salt)
        memcpy(f->salt, salt, 8);
    bool is_append = off >= f->end;
    if (off + amt > f->end)
        f->end = off + amt;
    if (is_append && is_header) {
        const unsigned char *h = data; /* page number, then database size if a commit */
        f->is_commit_next = (h[4] | h[5] | h[6] | h[7]) != 0;
    }
    int rc = SQLITE_OK;
    if (f->len > 0 && (off != f->at + (sqlite3_int64)f->len || f->len + (size_t)amt > VFS_BUF_MAX))
        rc = vfs_flush(f);
    if (rc != SQLITE_OK)
        return rc;
    if (!is_append || (size_t)amt > VFS_BUF_MAX || vfs_reserve(f, f->len + (size_t)amt) != SQLITE_OK)
        return vfs_write_under(f, data, (size_t)amt, off);
    if (f->len == 0)
        f->at = off;
    memcpy(f->buf + f->len, data, (size_t)amt);
    f->len += (size_t)amt;
    atomic_fetch_add_explicit(&vfs_gathered, 1, memory_order_relaxed);
    return is_commit ? vfs_flush(f) : SQLITE_OK;
}

static int vfs_close(sqlite3_file *file)
{
    struct vfs_wal_file *f = (struct vfs_wal_file *)file;
    int rc = vfs_flush(f);
    int rc_close = f->real->pMethods->xClose(f->real);
    free(f->buf);
    f->buf = NULL;
    f->cap = 0;
    return rc != SQLITE_OK ? rc : rc_close;
}

static int vfs_read(sqlite3_file *file, void *data, int amt, sqlite3_int64 off)
{
    struct vfs_wal_file *f = (struct vfs_wal_file *)file;
    int rc = vfs_flush(f);
    return rc != SQLITE_OK ? rc : f->real->pMethods->xRead(f->real, data, amt, off);
}

static int vfs_truncate(sqlite3_file *file, sqlite3_int64 size)
{
    struct vfs_wal_file *f = (struct vfs_wal_file *)file;
    int rc = vfs_flush(f);
    if (f->end > size)
        f->end = size;
    return rc != SQLITE_OK ? rc : f->real->pMethods->xTruncate(f->real, size);
}

static int vfs_sync(sqlite3_file *file, int flags)
{
    struct vfs_wal_file *f = (struct vfs_wal_file *)file;
    int rc = vfs_flush(f);
    return rc != SQLITE_OK ? rc : f->real->pMethods->xSync(f->real, flags);
}

static int vfs_file_size(sqlite3_file *file, sqlite3_int64 *size)
{
    struct vfs_wal_file *f = (struct vfs_wal_file *)file;
    int rc = vfs_flush(f);
    return rc != SQLITE_OK ? rc : f->real->pMethods->xFileSize(f->real, size);
}

static int vfs_file_control(sqlite3_file *file, int op, void *arg)
{
    struct vfs_wal_file *f = (struct vfs_wal_file *)file;
    if (op == SQLITE_FCNTL_VFSNAME) { /* say what we are, then what is under us */
        int rc = f->real->pMethods->xFileControl(f->real, op, arg);
        char *under = rc == SQLITE_OK ? *(char **)arg : NULL;
        *(char **)arg = under != NULL ? sqlite3_mprintf(VFS_NAME "/%z", under)
                                      : sqlite3_mprintf(VFS_NAME);
        return SQLITE_OK;
    }
    int rc = vfs_flush(f);
    return rc != SQLITE_OK ? rc : f->real->pMethods->xFileControl(f->real, op, arg);
}

/* ---- the rest, as the default VFS has them --------------------------- */

static sqlite3_file *vfs_under(sqlite3_file *file)
{
    return ((struct vfs_wal_file *)file)->real;
}

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
    .xClose = vfs_close,
    .xRead = vfs_read,
    .xWrite = vfs_write,
    .xTruncate = vfs_truncate,
    .xSync = vfs_sync,
    .xFileSize = vfs_file_size,
    .xLock = vfs_lock,
    .xUnlock = vfs_unlock,
    .xCheckReservedLock = vfs_check_reserved,
    .xFileControl = vfs_file_control,
    .xSectorSize = vfs_sector_size,
    .xDeviceCharacteristics = vfs_device_characteristics,
};

/* The real file sits after our struct, aligned as malloc would align it. */
#define VFS_REAL_OFFSET ((sizeof(struct vfs_wal_file) + 15) & ~(size_t)15)

static int vfs_open(sqlite3_vfs *self, const char *name, sqlite3_file *file, int flags,
                    int *out_flags)
{
    (void)self;
    if (!(flags & SQLITE_OPEN_WAL)) /* the default VFS's file, as is */
        return vfs_real->xOpen(vfs_real, name, file, flags, out_flags);
    struct vfs_wal_file *f = (struct vfs_wal_file *)file;
    memset(f, 0, sizeof(*f));
    f->real = (sqlite3_file *)((char *)file + VFS_REAL_OFFSET);
    int rc = vfs_real->xOpen(vfs_real, name, f->real, flags, out_flags);
    /* SQLite calls xClose even after a failed xOpen that set pMethods */
    f->base.pMethods = f->real->pMethods != NULL ? &vfs_wal_methods : NULL;
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

/* unit_tempdir.h — one fresh directory under /tmp per test, removed with
 * everything the code under test left in it (a database, its -wal and -shm,
 * the queue's body directory). */
#ifndef SMARTHOST_UNIT_TEMPDIR_H
#define SMARTHOST_UNIT_TEMPDIR_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>

/* dir gets "/tmp/<name>.XXXXXX", created; NULL if it could not be. */
static inline char *unit_tempdir_make(char *dir, size_t dir_size, const char *name)
{
    snprintf(dir, dir_size, "/tmp/%s.XXXXXX", name);
    return mkdtemp(dir);
}

static inline int unit_tempdir_remove_one(const char *path, const struct stat *sb, int flag,
                                          struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static inline void unit_tempdir_remove(const char *dir)
{
    nftw(dir, unit_tempdir_remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

#endif

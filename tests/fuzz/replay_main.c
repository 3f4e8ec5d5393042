/* replay_main.c — main() for fuzz targets built without libFuzzer: runs
 * LLVMFuzzerTestOneInput once over every regular file in the corpus
 * directory given as argv[1] (sorted, so failures are reproducible), or over
 * the files named as arguments. Exits non-zero when the corpus cannot be
 * read; a broken invariant aborts inside the target. Never writes anything. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define REPLAY_FILE_MAX (16u * 1024u * 1024u) /* corpus inputs are small; refuse junk */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Runs one file; returns 0, or -errno. */
static int replay_run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -errno;
    struct stat st;
    if (fstat(fileno(f), &st) < 0 || st.st_size < 0 || (uint64_t)st.st_size > REPLAY_FILE_MAX) {
        fclose(f);
        return -EFBIG;
    }
    size_t size = (size_t)st.st_size;
    /* a separate allocation of exactly size bytes lets ASan see overreads */
    uint8_t *data = malloc(size > 0 ? size : 1);
    if (data == NULL) {
        fclose(f);
        return -ENOMEM;
    }
    size_t got = size > 0 ? fread(data, 1, size, f) : 0;
    fclose(f);
    if (got != size) {
        free(data);
        return -EIO;
    }
    LLVMFuzzerTestOneInput(data, size);
    free(data);
    return 0;
}

static int replay_filter(const struct dirent *e)
{
    return e->d_name[0] != '.';
}

/* Runs every regular file in dir; returns how many ran, or -errno. */
static int replay_run_dir(const char *dir)
{
    struct dirent **names;
    int n = scandir(dir, &names, replay_filter, alphasort);
    if (n < 0)
        return -errno;
    int ran = 0, err = 0;
    for (int i = 0; i < n; i++) {
        char path[4096];
        int len = snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
        struct stat st;
        if (err == 0 && len > 0 && (size_t)len < sizeof(path) && stat(path, &st) == 0 &&
            S_ISREG(st.st_mode)) {
            int r = replay_run_file(path);
            if (r < 0) {
                fprintf(stderr, "replay: %s: %s\n", path, strerror(-r));
                err = r;
            } else {
                ran++;
            }
        }
        free(names[i]);
    }
    free(names);
    return err < 0 ? err : ran;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR | FILE...\n", argv[0]);
        return 2;
    }
    int total = 0;
    for (int a = 1; a < argc; a++) {
        struct stat st;
        if (stat(argv[a], &st) < 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[a], strerror(errno));
            return 1;
        }
        int r = S_ISDIR(st.st_mode) ? replay_run_dir(argv[a]) : replay_run_file(argv[a]);
        if (r < 0) {
            if (!S_ISDIR(st.st_mode))
                fprintf(stderr, "replay: %s: %s\n", argv[a], strerror(-r));
            return 1;
        }
        total += S_ISDIR(st.st_mode) ? r : 1;
    }
    if (total == 0) {
        fprintf(stderr, "replay: no inputs found\n");
        return 1;
    }
    printf("replay: %d inputs ok\n", total);
    return 0;
}

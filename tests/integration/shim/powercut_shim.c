/*
 * Test-only LD_PRELOAD shim for didgate's power-cut tests. It records every write to one file
 * (the store's data.mdb, named by $DIDGATE_POWERCUT_FILE) before the write happens, and a
 * marker after every flush of that file completes, into the log named by $DIDGATE_POWERCUT_LOG.
 * From the log a test rebuilds what a disk could hold after a power cut at the moment the
 * process was killed: every write before the last completed flush, and any subset (or torn
 * prefix) of the writes after it.
 *
 * Intercepted: open/open64/openat/openat64 (to learn which descriptors are the file, and
 * whether they are O_DSYNC), close, pwrite/pwrite64, write, writev (LMDB writes several pages
 * with lseek + writev), fdatasync/fsync, ftruncate/ftruncate64 (logged as a size change),
 * and mmap/mmap64: a writable shared mapping of the file would let writes bypass this log, so
 * it aborts the process loudly (didgate never maps the file writable).
 *
 * Log records, little-endian, each appended with one write(2) on an O_APPEND descriptor, so
 * records of concurrent threads and processes (`didgate prune` beside `serve`) never
 * interleave:
 *   'W' u64 offset, u64 length, then length bytes   a write, before it is made
 *   'F' u64 CLOCK_MONOTONIC ns, u64 0               a flush of the file completed
 *   'T' u64 new size, u64 0                         ftruncate, before it is made
 * A write through an O_DSYNC or O_SYNC descriptor is durable when it returns: it is logged as
 * 'W' then 'F'.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 65536

/* 0: not the file; 1: the file; 2: the file, opened O_DSYNC or O_SYNC. */
static unsigned char tracked[MAX_FDS];
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static int is_target(const char *path) {
    const char *target = getenv("DIDGATE_POWERCUT_FILE");
    if (!target || !path) return 0;
    char real[PATH_MAX];
    if (!realpath(path, real)) return 0;
    return strcmp(real, target) == 0;
}

static void track(int fd, const char *path, int flags) {
    if (fd < 0 || fd >= MAX_FDS) return;
    tracked[fd] = is_target(path) ? ((flags & (O_DSYNC | O_SYNC)) ? 2 : 1) : 0;
}

static ssize_t (*real_write)(int, const void *, size_t);

static void append(const void *head, size_t head_len, const struct iovec *data, int n) {
    const char *path = getenv("DIDGATE_POWERCUT_LOG");
    if (!path) return;
    struct iovec v[1 + 1024];
    v[0].iov_base = (void *)head;
    v[0].iov_len = head_len;
    int count = 1;
    for (int i = 0; i < n && count < 1025; i++) v[count++] = data[i];
    ssize_t (*real_writev)(int, const struct iovec *, int) =
        (ssize_t (*)(int, const struct iovec *, int))dlsym(RTLD_NEXT, "writev");
    int (*real_open)(const char *, int, ...) = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
    pthread_mutex_lock(&log_lock);
    int fd = real_open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        size_t total = 0;
        for (int i = 0; i < count; i++) total += v[i].iov_len;
        if (real_writev(fd, v, count) != (ssize_t)total) {
            static const char msg[] = "powercut shim: cannot append to the log\n";
            ssize_t ignored = write(2, msg, sizeof msg - 1);
            (void)ignored;
            abort();
        }
        close(fd);
    }
    pthread_mutex_unlock(&log_lock);
}

static void log_record(char tag, uint64_t a, uint64_t b, const struct iovec *data, int n) {
    unsigned char head[17];
    head[0] = (unsigned char)tag;
    memcpy(head + 1, &a, 8);
    memcpy(head + 9, &b, 8);
    append(head, sizeof head, data, n);
}

static void log_flush(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    log_record('F', (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec, 0, NULL, 0);
}

static int is_tracked(int fd) { return fd >= 0 && fd < MAX_FDS && tracked[fd]; }

/* opens */
#define DEFINE_OPEN(name)                                                         \
    int name(const char *path, int flags, ...) {                                  \
        mode_t mode = 0;                                                          \
        if (flags & (O_CREAT | O_TMPFILE)) {                                      \
            va_list ap;                                                           \
            va_start(ap, flags);                                                  \
            mode = (mode_t)va_arg(ap, int);                                       \
            va_end(ap);                                                           \
        }                                                                         \
        int (*real)(const char *, int, ...) =                                     \
            (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, #name);             \
        int fd = real(path, flags, mode);                                         \
        track(fd, path, flags);                                                   \
        return fd;                                                                \
    }
DEFINE_OPEN(open)
DEFINE_OPEN(open64)

#define DEFINE_OPENAT(name)                                                       \
    int name(int dirfd, const char *path, int flags, ...) {                       \
        mode_t mode = 0;                                                          \
        if (flags & (O_CREAT | O_TMPFILE)) {                                      \
            va_list ap;                                                           \
            va_start(ap, flags);                                                  \
            mode = (mode_t)va_arg(ap, int);                                       \
            va_end(ap);                                                           \
        }                                                                         \
        int (*real)(int, const char *, int, ...) =                                \
            (int (*)(int, const char *, int, ...))dlsym(RTLD_NEXT, #name);        \
        int fd = real(dirfd, path, flags, mode);                                  \
        if (fd >= 0 && fd < MAX_FDS) {                                            \
            char link[64], resolved[PATH_MAX];                                    \
            snprintf(link, sizeof link, "/proc/self/fd/%d", fd);                  \
            ssize_t len = readlink(link, resolved, sizeof resolved - 1);          \
            if (len > 0) {                                                        \
                resolved[len] = 0;                                                \
                track(fd, resolved, flags);                                       \
            } else {                                                              \
                tracked[fd] = 0;                                                  \
            }                                                                     \
        }                                                                         \
        return fd;                                                                \
    }
DEFINE_OPENAT(openat)
DEFINE_OPENAT(openat64)

int close(int fd) {
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "close");
    if (fd >= 0 && fd < MAX_FDS) tracked[fd] = 0;
    return real(fd);
}

/* writes */
static void after_write(int fd, ssize_t rc) {
    if (rc >= 0 && fd >= 0 && fd < MAX_FDS && tracked[fd] == 2) log_flush();
}

#define DEFINE_PWRITE(name)                                                        \
    ssize_t name(int fd, const void *buf, size_t count, off_t offset) {            \
        ssize_t (*real)(int, const void *, size_t, off_t) =                        \
            (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, #name); \
        if (is_tracked(fd)) {                                                      \
            struct iovec v = {(void *)buf, count};                                 \
            log_record('W', (uint64_t)offset, (uint64_t)count, &v, 1);             \
        }                                                                          \
        ssize_t rc = real(fd, buf, count, offset);                                 \
        after_write(fd, rc);                                                       \
        return rc;                                                                 \
    }
DEFINE_PWRITE(pwrite)
DEFINE_PWRITE(pwrite64)

ssize_t write(int fd, const void *buf, size_t count) {
    if (!real_write) real_write = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    if (is_tracked(fd)) {
        off_t at = lseek(fd, 0, SEEK_CUR);
        struct iovec v = {(void *)buf, count};
        log_record('W', (uint64_t)at, (uint64_t)count, &v, 1);
    }
    ssize_t rc = real_write(fd, buf, count);
    after_write(fd, rc);
    return rc;
}

ssize_t writev(int fd, const struct iovec *iov, int n) {
    ssize_t (*real)(int, const struct iovec *, int) =
        (ssize_t (*)(int, const struct iovec *, int))dlsym(RTLD_NEXT, "writev");
    if (is_tracked(fd)) {
        off_t at = lseek(fd, 0, SEEK_CUR);
        uint64_t total = 0;
        for (int i = 0; i < n; i++) total += iov[i].iov_len;
        log_record('W', (uint64_t)at, total, iov, n);
    }
    ssize_t rc = real(fd, iov, n);
    after_write(fd, rc);
    return rc;
}

/* flushes */
static int sync_call(const char *name, int fd) {
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, name);
    int rc = real(fd);
    if (rc == 0 && is_tracked(fd)) log_flush();
    return rc;
}
int fdatasync(int fd) { return sync_call("fdatasync", fd); }
int fsync(int fd) { return sync_call("fsync", fd); }

#define DEFINE_FTRUNCATE(name)                                                   \
    int name(int fd, off_t length) {                                             \
        int (*real)(int, off_t) = (int (*)(int, off_t))dlsym(RTLD_NEXT, #name);  \
        if (is_tracked(fd)) log_record('T', (uint64_t)length, 0, NULL, 0);       \
        return real(fd, length);                                                 \
    }
DEFINE_FTRUNCATE(ftruncate)
DEFINE_FTRUNCATE(ftruncate64)

/* A writable shared mapping would let writes reach the file without passing through here. */
#define DEFINE_MMAP(name)                                                                   \
    void *name(void *addr, size_t len, int prot, int flags, int fd, off_t off) {            \
        void *(*real)(void *, size_t, int, int, int, off_t) =                               \
            (void *(*)(void *, size_t, int, int, int, off_t))dlsym(RTLD_NEXT, #name);       \
        if (is_tracked(fd) && (prot & PROT_WRITE) && (flags & MAP_SHARED)) {                \
            static const char msg[] =                                                       \
                "powercut shim: a writable shared mapping of the data file; writes through " \
                "it cannot be logged\n";                                                    \
            ssize_t ignored = write(2, msg, sizeof msg - 1);                                \
            (void)ignored;                                                                  \
            abort();                                                                        \
        }                                                                                   \
        return real(addr, len, prot, flags, fd, off);                                       \
    }
DEFINE_MMAP(mmap)
DEFINE_MMAP(mmap64)

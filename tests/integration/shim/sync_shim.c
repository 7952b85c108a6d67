/*
 * Test-only LD_PRELOAD shim for didgate's reliability tests. It wraps the calls that make an
 * LMDB commit durable and lets a test delay them, fail them, and see when they completed:
 *
 *   fdatasync/fsync: LMDB's flush of the data pages at every commit (and `Store::sync`).
 *   pwrite/pwrite64 at offset < 2 pages: LMDB's write of a meta page, which is what makes a
 *     commit visible. The store opens with MDB_NOMETASYNC, so LMDB writes it through the
 *     ordinary descriptor (it opens an O_DSYNC one but never writes it); the meta page reaches
 *     the disk with the next fdatasync, the next commit's or an explicit one.
 *
 * Behaviour is read, at every call, from the file named by $DIDGATE_SHIM_CTL:
 *   delay_ms=N   sleep N ms before each fdatasync/fsync
 *   fail=sync    every fdatasync/fsync fails with EIO (a failed commit; LMDB stays usable)
 *   fail=meta    every meta-page write fails with EIO (LMDB marks the environment fatal)
 *   fail_mmap_over=N  mapping the data file (a shared mapping of a file), or reserving
 *                address space for it (an anonymous PROT_NONE, MAP_NORESERVE mapping), of more
 *                than N bytes fails with ENOMEM: a host whose address space has no room for
 *                a larger map (32-bit, RLIMIT_AS)
 * Completions are appended to $DIDGATE_SHIM_LOG as "<call> <CLOCK_MONOTONIC ns> <rc>".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static void read_ctl(char *buf, size_t n) {
    const char *path = getenv("DIDGATE_SHIM_CTL");
    buf[0] = 0;
    if (!path) return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t r = read(fd, buf, n - 1);
    close(fd);
    buf[r > 0 ? r : 0] = 0;
}

static void log_call(const char *what, long rc) {
    const char *path = getenv("DIDGATE_SHIM_LOG");
    if (!path) return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char line[96];
    int n = snprintf(line, sizeof line, "%s %lld %ld\n", what,
                     (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec, rc);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        ssize_t ignored = write(fd, line, (size_t)n);
        (void)ignored;
        close(fd);
    }
}

static int sync_call(const char *name, int fd) {
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, name);
    char ctl[128];
    read_ctl(ctl, sizeof ctl);
    const char *d = strstr(ctl, "delay_ms=");
    if (d) {
        long ms = atol(d + 9);
        struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&t, NULL);
    }
    if (strstr(ctl, "fail=sync")) {
        log_call(name, -1);
        errno = EIO;
        return -1;
    }
    int rc = real(fd);
    log_call(name, rc);
    return rc;
}

int fdatasync(int fd) { return sync_call("fdatasync", fd); }
int fsync(int fd) { return sync_call("fsync", fd); }

static ssize_t meta_write(const char *name, int fd, const void *buf, size_t count, off_t offset) {
    ssize_t (*real)(int, const void *, size_t, off_t) =
        (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, name);
    long page = sysconf(_SC_PAGESIZE);
    if (offset < 2 * page && count <= (size_t)page) {
        char ctl[128];
        read_ctl(ctl, sizeof ctl);
        if (strstr(ctl, "fail=meta")) {
            log_call("meta", -1);
            errno = EIO;
            return -1;
        }
        ssize_t rc = real(fd, buf, count, offset);
        log_call("meta", (long)rc);
        return rc;
    }
    return real(fd, buf, count, offset);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    return meta_write("pwrite", fd, buf, count, offset);
}
ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    return meta_write("pwrite64", fd, buf, count, offset);
}

static void *mmap_call(const char *name, void *addr, size_t len, int prot, int flags, int fd,
                       off_t off) {
    void *(*real)(void *, size_t, int, int, int, off_t) =
        (void *(*)(void *, size_t, int, int, int, off_t))dlsym(RTLD_NEXT, name);
    int data_map = fd >= 0 && (flags & MAP_SHARED);
    int reservation = fd < 0 && prot == PROT_NONE && (flags & MAP_NORESERVE);
    if (data_map || reservation) {
        char ctl[128];
        read_ctl(ctl, sizeof ctl);
        const char *over = strstr(ctl, "fail_mmap_over=");
        if (over && len > (size_t)atoll(over + 15)) {
            log_call("mmap", -1);
            errno = ENOMEM;
            return MAP_FAILED;
        }
    }
    return real(addr, len, prot, flags, fd, off);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return mmap_call("mmap", addr, len, prot, flags, fd, off);
}
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return mmap_call("mmap64", addr, len, prot, flags, fd, off);
}

/* Guest-side block benchmark for brique-bench (built static, run in the
 * guest): O_DIRECT I/O on a block device, queue depth 1.
 *   blkbench seqread  DEV MIB     sequential 1 MiB reads,  prints MiB/s
 *   blkbench seqwrite DEV MIB     sequential 1 MiB writes + fdatasync, MiB/s
 *   blkbench randread DEV SECONDS random 4 KiB reads, prints IOPS
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: blkbench seqread|seqwrite|randread DEV N\n");
        return 2;
    }
    const char *mode = argv[1], *dev = argv[2];
    long n = atol(argv[3]);
    int writing = strcmp(mode, "seqwrite") == 0;
    int fd = open(dev, (writing ? O_WRONLY : O_RDONLY) | O_DIRECT);
    if (fd < 0) { perror(dev); return 1; }
    void *buf;
    if (posix_memalign(&buf, 4096, 1 << 20)) return 1;
    memset(buf, 0x5a, 1 << 20);
    double start = now();
    if (strcmp(mode, "seqread") == 0 || writing) {
        for (long i = 0; i < n; i++) {
            ssize_t r = writing ? pwrite(fd, buf, 1 << 20, (off_t)i << 20)
                                : pread(fd, buf, 1 << 20, (off_t)i << 20);
            if (r != 1 << 20) { perror("io"); return 1; }
        }
        if (writing && fdatasync(fd)) { perror("fdatasync"); return 1; }
        printf("BLKBENCH %s MiBps=%.1f\n", mode, n / (now() - start));
    } else if (strcmp(mode, "randread") == 0) {
        uint64_t size = 0;
        if (ioctl(fd, BLKGETSIZE64, &size) || size < 4096) { perror("size"); return 1; }
        uint64_t blocks = size / 4096, ops = 0, x = 88172645463325252ULL;
        while (now() - start < n) {
            for (int k = 0; k < 64; k++) {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                if (pread(fd, buf, 4096, (off_t)((x % blocks) * 4096)) != 4096) {
                    perror("pread"); return 1;
                }
                ops++;
            }
        }
        printf("BLKBENCH randread IOPS=%.0f\n", ops / (now() - start));
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    return 0;
}

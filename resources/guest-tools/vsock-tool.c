/*
 * vsock-tool: the guest side of brique's vsock end-to-end tests.
 *
 *   vsock-tool listen PORT echo|sink [COUNT]
 *   vsock-tool listen PORT source N [COUNT]
 *       Listens on vsock PORT (any CID) and serves COUNT connections (0 or
 *       absent: forever), each in its own process: echo sends back what it
 *       reads until end of file; sink reads until end of file and reports
 *       what it got; source sends N pattern bytes, then closes.
 *   vsock-tool connect PORT send N
 *       Connects to the host (CID 2) port PORT, sends N pattern bytes,
 *       half-closes, then reads until end of file and reports both.
 *   vsock-tool connect PORT recv
 *       Connects and reads until end of file.
 *   vsock-tool connect PORT echo N
 *       Connects, sends N pattern bytes while reading them back, checks
 *       that the same N bytes came back.
 *   vsock-tool multi PORT K N
 *       Opens K connections to the host port at once and runs "echo N" on
 *       all of them concurrently (one process each).
 *
 * Options before the mode: --cid C (connect to another CID than 2);
 * --unix UDS (the host side of Firecracker's vsock backend, for the test
 * host: connect goes to the Unix socket UDS and asks for the guest's PORT
 * with "CONNECT PORT\n", expecting "OK <host port>\n"; listen listens on
 * the Unix socket UDS_PORT, where the guest's connections to PORT arrive).
 *
 * Every connection reports one line on stdout:
 *   VSOCK <what> port=<p> sent=<n> sent_fnv=<hex> recv=<n> recv_fnv=<hex> <ok|FAIL>
 * Pattern byte i is (i * 7 + i / 251) & 0xff; fnv is 32-bit FNV-1a over the
 * bytes, so a host test can compute both. The exit status is 0 only if
 * every connection ended ok.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define CHUNK 65536

static unsigned int peer_cid = VMADDR_CID_HOST;
static const char *unix_path; /* --unix: the host side, over Unix sockets */

static uint8_t pattern(uint64_t i) { return (uint8_t)(i * 7 + i / 251); }

static uint32_t fnv1a(uint32_t hash, const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        hash ^= data[i];
        hash *= 16777619u;
    }
    return hash;
}

#define FNV_START 2166136261u

struct tally {
    uint64_t sent, recv;
    uint32_t sent_fnv, recv_fnv;
    int mismatch;
};

static void tally_init(struct tally *t)
{
    memset(t, 0, sizeof(*t));
    t->sent_fnv = FNV_START;
    t->recv_fnv = FNV_START;
}

static int report(const char *what, unsigned int port, const struct tally *t, int ok)
{
    printf("VSOCK %s port=%u sent=%llu sent_fnv=%08x recv=%llu recv_fnv=%08x %s\n", what, port,
           (unsigned long long)t->sent, t->sent_fnv, (unsigned long long)t->recv, t->recv_fnv,
           ok ? "ok" : "FAIL");
    fflush(stdout);
    return ok ? 0 : 1;
}

static void die(const char *what)
{
    fprintf(stderr, "vsock-tool: %s: %s\n", what, strerror(errno));
    exit(2);
}

static uint64_t parse_count(const char *text)
{
    char *end;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno || *end || end == text) {
        fprintf(stderr, "vsock-tool: not a number: %s\n", text);
        exit(2);
    }
    return value;
}

static int write_all(int fd, const uint8_t *buf, size_t len)
{
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Sends `n` pattern bytes starting at pattern offset t->sent. */
static int send_pattern(int fd, struct tally *t, uint64_t n)
{
    static uint8_t buf[CHUNK];
    while (n) {
        size_t len = n < CHUNK ? (size_t)n : CHUNK;
        for (size_t i = 0; i < len; i++)
            buf[i] = pattern(t->sent + i);
        if (write_all(fd, buf, len) < 0)
            return -1;
        t->sent_fnv = fnv1a(t->sent_fnv, buf, len);
        t->sent += len;
        n -= len;
    }
    return 0;
}

/* Accounts received bytes; `check` compares them with the pattern. */
static void take(struct tally *t, const uint8_t *buf, size_t len, int check)
{
    if (check)
        for (size_t i = 0; i < len; i++)
            if (buf[i] != pattern(t->recv + i))
                t->mismatch = 1;
    t->recv_fnv = fnv1a(t->recv_fnv, buf, len);
    t->recv += len;
}

static int read_to_end(int fd, struct tally *t, int check)
{
    static uint8_t buf[CHUNK];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            return 0;
        take(t, buf, (size_t)n, check);
    }
}

static struct sockaddr_un unix_address(const char *path, const char *suffix)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int len = snprintf(addr.sun_path, sizeof(addr.sun_path), "%s%s", path, suffix);
    if (len < 0 || (size_t)len >= sizeof(addr.sun_path)) {
        fprintf(stderr, "vsock-tool: socket path too long: %s%s\n", path, suffix);
        exit(2);
    }
    return addr;
}

/* Connects to the guest's port through the backend's Unix socket. */
static int connect_unix(unsigned int port)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    struct sockaddr_un addr = unix_address(unix_path, "");
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        die("connect");
    char request[32], answer[32];
    int len = snprintf(request, sizeof(request), "CONNECT %u\n", port);
    if (write_all(fd, (const uint8_t *)request, (size_t)len) < 0)
        die("write CONNECT");
    /* The answer line, byte by byte: the guest's data may follow it. */
    size_t got = 0;
    while (got < sizeof(answer) - 1) {
        ssize_t n = read(fd, answer + got, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (answer[got++] == '\n')
            break;
    }
    answer[got] = 0;
    if (strncmp(answer, "OK ", 3) != 0) {
        fprintf(stderr, "vsock-tool: CONNECT %u answered \"%s\"\n", port, answer);
        exit(2);
    }
    return fd;
}

static int connect_to(unsigned int port)
{
    if (unix_path)
        return connect_unix(port);
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = peer_cid, .svm_port = port};
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        die("connect");
    return fd;
}

/* The listening socket for PORT: vsock, or with --unix the backend's UDS_PORT. */
static int listen_on(unsigned int port)
{
    int fd;
    if (unix_path) {
        char suffix[16];
        snprintf(suffix, sizeof(suffix), "_%u", port);
        struct sockaddr_un addr = unix_address(unix_path, suffix);
        unlink(addr.sun_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            die("socket");
        if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
            die("bind");
    } else {
        fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            die("socket");
        struct sockaddr_vm addr = {
            .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
        if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
            die("bind");
    }
    if (listen(fd, 128) < 0)
        die("listen");
    return fd;
}

/* Sends n bytes while reading what comes back; ok if the same bytes return. */
static int echo_client(int fd, unsigned int port, uint64_t n, const char *what)
{
    static uint8_t out[CHUNK], in[CHUNK];
    struct tally t;
    tally_init(&t);
    int write_done = n == 0, failed = 0;
    if (write_done)
        shutdown(fd, SHUT_WR);
    while (!failed && t.recv < n) {
        struct pollfd p = {.fd = fd, .events = POLLIN | (write_done ? 0 : POLLOUT)};
        if (poll(&p, 1, 30000) <= 0) {
            failed = 1;
            break;
        }
        if (p.revents & POLLIN) {
            ssize_t got = read(fd, in, sizeof(in));
            if (got <= 0) {
                failed = got < 0 && errno == EINTR ? 0 : 1;
                continue;
            }
            take(&t, in, (size_t)got, 1);
        }
        if (!write_done && (p.revents & POLLOUT)) {
            uint64_t left = n - t.sent;
            size_t len = left < CHUNK ? (size_t)left : CHUNK;
            for (size_t i = 0; i < len; i++)
                out[i] = pattern(t.sent + i);
            ssize_t put = send(fd, out, len, MSG_DONTWAIT);
            if (put > 0) {
                t.sent_fnv = fnv1a(t.sent_fnv, out, (size_t)put);
                t.sent += (uint64_t)put;
            } else if (put < 0 && errno != EAGAIN && errno != EINTR) {
                failed = 1;
            }
            if (t.sent == n) {
                write_done = 1;
                shutdown(fd, SHUT_WR);
            }
        }
    }
    close(fd);
    return report(what, port, &t, !failed && !t.mismatch && t.sent == n && t.recv == n);
}

static int serve(int fd, unsigned int port, const char *mode, uint64_t n)
{
    struct tally t;
    tally_init(&t);
    int ok = 1;
    if (!strcmp(mode, "echo")) {
        static uint8_t buf[CHUNK];
        for (;;) {
            ssize_t got = read(fd, buf, sizeof(buf));
            if (got < 0 && errno == EINTR)
                continue;
            if (got <= 0) {
                ok = got == 0;
                break;
            }
            take(&t, buf, (size_t)got, 0);
            if (write_all(fd, buf, (size_t)got) < 0) {
                ok = 0;
                break;
            }
            t.sent_fnv = fnv1a(t.sent_fnv, buf, (size_t)got);
            t.sent += (uint64_t)got;
        }
    } else if (!strcmp(mode, "sink")) {
        ok = read_to_end(fd, &t, 0) == 0;
    } else {
        ok = send_pattern(fd, &t, n) == 0;
    }
    close(fd);
    return report(mode, port, &t, ok);
}

/* Waits for every child; returns how many failed. */
static int reap(void)
{
    int failures = 0, status;
    while (wait(&status) > 0)
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            failures++;
    return failures;
}

static int listen_mode(unsigned int port, const char *mode, uint64_t n, uint64_t count)
{
    int fd = listen_on(port);
    printf("VSOCK listening port=%u mode=%s\n", port, mode);
    fflush(stdout);
    for (uint64_t served = 0; count == 0 || served < count; served++) {
        int conn = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (conn < 0) {
            if (errno == EINTR)
                continue;
            die("accept");
        }
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            close(fd);
            exit(serve(conn, port, mode, n));
        }
        close(conn);
    }
    close(fd);
    return reap() ? 1 : 0;
}

static int multi_mode(unsigned int port, uint64_t k, uint64_t n)
{
    int *fds = calloc(k ? k : 1, sizeof(int));
    if (!fds)
        die("calloc");
    /* Every connection is open before any data moves. */
    for (uint64_t i = 0; i < k; i++)
        fds[i] = connect_to(port);
    for (uint64_t i = 0; i < k; i++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0)
            exit(echo_client(fds[i], port, n, "multi"));
        close(fds[i]);
    }
    int failures = reap();
    printf("VSOCK multi port=%u connections=%llu failed=%d %s\n", port, (unsigned long long)k,
           failures, failures ? "FAIL" : "ok");
    return failures ? 1 : 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: vsock-tool [--cid C | --unix UDS] listen PORT echo|sink [COUNT]\n"
                    "       vsock-tool [--cid C | --unix UDS] listen PORT source N [COUNT]\n"
                    "       vsock-tool [--cid C | --unix UDS] connect PORT send N | recv | echo N\n"
                    "       vsock-tool [--cid C | --unix UDS] multi PORT K N\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int arg = 1;
    if (argc > 2 && !strcmp(argv[1], "--cid")) {
        peer_cid = (unsigned int)parse_count(argv[2]);
        arg = 3;
    } else if (argc > 2 && !strcmp(argv[1], "--unix")) {
        unix_path = argv[2];
        arg = 3;
    }
    if (argc - arg < 3)
        usage();
    const char *cmd = argv[arg], *mode = argv[arg + 2];
    unsigned int port = (unsigned int)parse_count(argv[arg + 1]);
    int rest = argc - arg - 3;
    char **more = argv + arg + 3;

    if (!strcmp(cmd, "listen")) {
        if (!strcmp(mode, "echo") || !strcmp(mode, "sink"))
            return listen_mode(port, mode, 0, rest > 0 ? parse_count(more[0]) : 0);
        if (!strcmp(mode, "source") && rest > 0)
            return listen_mode(port, mode, parse_count(more[0]),
                               rest > 1 ? parse_count(more[1]) : 0);
    } else if (!strcmp(cmd, "connect")) {
        if (!strcmp(mode, "send") && rest > 0) {
            struct tally t;
            tally_init(&t);
            int fd = connect_to(port);
            int ok = send_pattern(fd, &t, parse_count(more[0])) == 0;
            shutdown(fd, SHUT_WR);
            ok = read_to_end(fd, &t, 0) == 0 && ok;
            close(fd);
            return report("send", port, &t, ok);
        }
        if (!strcmp(mode, "recv")) {
            struct tally t;
            tally_init(&t);
            int fd = connect_to(port);
            int ok = read_to_end(fd, &t, 0) == 0;
            close(fd);
            return report("recv", port, &t, ok);
        }
        if (!strcmp(mode, "echo") && rest > 0)
            return echo_client(connect_to(port), port, parse_count(more[0]), "echo");
    } else if (!strcmp(cmd, "multi") && rest > 0) {
        return multi_mode(port, parse_count(mode), parse_count(more[0]));
    }
    usage();
    return 2;
}

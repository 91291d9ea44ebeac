/*
 * hold: open N TLS 1.3 keep-alive connections, one GET each, then hold
 * them idle (benches/compare/run.sh, memory with 10,000 idle connections).
 *
 *   hold HOST PORT N [PARALLEL [TIMEOUT_S [HOLD_S [SNI [PATH]]]]]
 *   defaults:             64       90         300    localhost /1k
 *
 * ALPN http/1.1, certificates not verified. The first connection makes a
 * full handshake; the others resume its session (TLS 1.3 ticket), which
 * halves the time to open them with OpenSSL 3 and leaves the same state
 * in the server once the handshake is over; HOLD_FULL=1 makes every
 * handshake full. At most PARALLEL connections
 * are connecting, handshaking or waiting for their answer at once. Once
 * every connection has its whole answer (or failed, or TIMEOUT_S passed)
 * it prints "held N errors E seconds S resumed R" and keeps the held connections
 * open, idle, until SIGTERM/SIGINT or HOLD_S seconds. Exit 0 if all N
 * were held.
 *
 * cc -O2 -o hold hold.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum state { CONNECTING, HANDSHAKE, WRITING, READING, HELD, FAILED };

struct conn {
    int fd;
    SSL *ssl;
    enum state st;
    size_t sent;
    char buf[4096];
    size_t got;       /* bytes of the head read so far */
    long body_left;   /* -1 until the head is complete */
};

static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int ep;
static SSL_CTX *ctx;
static struct sockaddr_in addr;
static const char *sni = "localhost";
static char request[512];
static size_t request_len;
static long held, failed, active, resumed;
static SSL_SESSION *session;   /* the first connection's, offered by the rest */

static void watch(struct conn *c, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(ep, op, c->fd, &ev);
}

static void fail(struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    if (c->ssl)
        SSL_free(c->ssl);
    close(c->fd);
    c->ssl = NULL;
    c->st = FAILED;
    failed++;
    active--;
}

static int start(struct conn *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->body_left = -1;
    active++;
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->st = FAILED;
        failed++;
        active--;
        return -1;
    }
    c->st = CONNECTING;
    watch(c, EPOLLOUT, EPOLL_CTL_ADD);
    return 0;
}

/* Drives one connection as far as it goes without blocking. */
static void step(struct conn *c) {
    int r;
    switch (c->st) {
    case CONNECTING: {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            fail(c);
            return;
        }
        c->ssl = SSL_new(ctx);
        SSL_set_fd(c->ssl, c->fd);
        SSL_set_tlsext_host_name(c->ssl, sni);
        SSL_set_connect_state(c->ssl);
        if (session != NULL)
            SSL_set_session(c->ssl, session);
        c->st = HANDSHAKE;
    }
    /* fall through */
    case HANDSHAKE:
        r = SSL_do_handshake(c->ssl);
        if (r != 1) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ)
                watch(c, EPOLLIN, EPOLL_CTL_MOD);
            else if (e == SSL_ERROR_WANT_WRITE)
                watch(c, EPOLLOUT, EPOLL_CTL_MOD);
            else
                fail(c);
            return;
        }
        c->st = WRITING;
    /* fall through */
    case WRITING:
        while (c->sent < request_len) {
            r = SSL_write(c->ssl, request + c->sent, (int)(request_len - c->sent));
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ)
                    watch(c, EPOLLIN, EPOLL_CTL_MOD);
                else if (e == SSL_ERROR_WANT_WRITE)
                    watch(c, EPOLLOUT, EPOLL_CTL_MOD);
                else
                    fail(c);
                return;
            }
            c->sent += (size_t)r;
        }
        c->st = READING;
        watch(c, EPOLLIN, EPOLL_CTL_MOD);
    /* fall through */
    case READING:
        for (;;) {
            char tmp[4096];
            char *dst = c->body_left < 0 ? c->buf + c->got : tmp;
            size_t room = c->body_left < 0 ? sizeof c->buf - 1 - c->got : sizeof tmp;
            if (room == 0) {
                fail(c);
                return;
            }
            r = SSL_read(c->ssl, dst, (int)room);
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ)
                    return;
                if (e == SSL_ERROR_WANT_WRITE) {
                    watch(c, EPOLLOUT, EPOLL_CTL_MOD);
                    return;
                }
                fail(c);
                return;
            }
            if (c->body_left < 0) {
                c->got += (size_t)r;
                c->buf[c->got] = '\0';
                char *end = strstr(c->buf, "\r\n\r\n");
                if (end == NULL)
                    continue;
                if (strncmp(c->buf, "HTTP/1.1 200", 12) != 0) {
                    fail(c);
                    return;
                }
                char *cl = strcasestr(c->buf, "\r\ncontent-length:");
                long length = cl ? strtol(cl + 17, NULL, 10) : 0;
                c->body_left = length - (long)(c->got - (size_t)(end + 4 - c->buf));
            } else {
                c->body_left -= r;
            }
            if (c->body_left <= 0) {
                /* Answered: now idle. Keep the socket, stop watching it. */
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                c->st = HELD;
                held++;
                if (SSL_session_reused(c->ssl))
                    resumed++;
                if (session == NULL && getenv("HOLD_FULL") == NULL)
                    session = SSL_get1_session(c->ssl);
                active--;
                return;
            }
        }
    default:
        return;
    }
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s HOST PORT N [PARALLEL [TIMEOUT_S [HOLD_S [SNI [PATH]]]]]\n", argv[0]);
        return 2;
    }
    long n = atol(argv[3]);
    long parallel = argc > 4 ? atol(argv[4]) : 64;
    double timeout = argc > 5 ? atof(argv[5]) : 90;
    double hold = argc > 6 ? atof(argv[6]) : 300;
    if (argc > 7)
        sni = argv[7];
    const char *path = argc > 8 ? argv[8] : "/1k";
    request_len = (size_t)snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, sni);

    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "hold: HOST must be an IPv4 address\n");
        return 2;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);

    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);

    struct conn *conns = calloc((size_t)n, sizeof *conns);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (conns == NULL || ep < 0) {
        perror("hold");
        return 2;
    }
    double t0 = now();
    long next = 0;
    struct epoll_event evs[256];
    while (!stop && held + failed < n && now() - t0 < timeout) {
        /* The first connection alone, so that the others can resume it. */
        while (next < n && active < (held + failed > 0 ? parallel : 1))
            start(&conns[next++]);
        int k = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < k; i++)
            step(evs[i].data.ptr);
    }
    long errors = n - held;
    printf("held %ld errors %ld seconds %.1f resumed %ld\n", held, errors, now() - t0, resumed);
    fflush(stdout);
    double t1 = now();
    while (!stop && now() - t1 < hold)
        usleep(100000);
    for (long i = 0; i < n; i++)
        if (conns[i].st == HELD)
            close(conns[i].fd);
    return errors == 0 ? 0 : 1;
}

/*
 * LD_PRELOAD shim for wrk (benches/compare/run.sh).
 *
 * wrk keeps one OpenSSL SSL object per connection slot and, on reconnect,
 * calls SSL_shutdown + SSL_clear + SSL_connect. SSL_clear keeps the last
 * session, so every reconnect offers it (TLS 1.3 PSK from the server's
 * ticket, or a TLS 1.2 session id/ticket): wrk resumes by default, and no
 * wrk option or Lua hook reaches the SSL object.
 *
 * With NORESUME=1 this shim drops the session right after SSL_clear, so
 * the client never offers resumption and every handshake is full,
 * whatever the server allows. In either mode it counts completed
 * handshakes, full and resumed (SSL_session_reused), and writes
 * "full N\nresumed N\n" to $HANDSHAKE_COUNT at exit: the client-side
 * proof that a "full handshake" run had 0 % resumed.
 *
 * No OpenSSL headers needed: cc -shared -fPIC -O2 -o noresume.so noresume.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;
extern int SSL_set_session(SSL *s, SSL_SESSION *session);
extern int SSL_session_reused(const SSL *s);

static atomic_long full_count, resumed_count;

static int drop_sessions(void) {
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("NORESUME");
        v = e != NULL && strcmp(e, "1") == 0;
    }
    return v;
}

int SSL_clear(SSL *s) {
    static int (*real)(SSL *);
    if (real == NULL)
        real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
    int r = real(s);
    if (drop_sessions())
        SSL_set_session(s, NULL);
    return r;
}

int SSL_connect(SSL *s) {
    static int (*real)(SSL *);
    if (real == NULL)
        real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
    int r = real(s);
    if (r == 1) {
        if (SSL_session_reused(s))
            atomic_fetch_add(&resumed_count, 1);
        else
            atomic_fetch_add(&full_count, 1);
    }
    return r;
}

__attribute__((destructor)) static void write_counts(void) {
    const char *path = getenv("HANDSHAKE_COUNT");
    if (path == NULL || *path == '\0')
        return;
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return;
    fprintf(f, "full %ld\nresumed %ld\n", atomic_load(&full_count), atomic_load(&resumed_count));
    fclose(f);
}

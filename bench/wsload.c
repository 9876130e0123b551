/*
 * wsload: a small epoll WebSocket load client for the realtime-sync benchmark.
 *
 * It opens N client connections to one server (loopback), authenticates each with the
 * JWT on its line of the tokens file (Authorization: Bearer ...), optionally sends one
 * text frame after the upgrade (the subscribe message), and then only reads: it counts
 * data messages and bytes, answers pings with pongs, and records close codes. It never
 * decodes JSON, so one process on one core outruns any single-core Python server.
 *
 * Every --report-ms it prints one status line on stdout:
 *   S <mono_ms> <open> <messages> <bytes> <closed> <failed> <pending> <close4008>
 * (mono_ms is CLOCK_MONOTONIC in milliseconds, the clock of Python's time.monotonic).
 * With --storm all connects start at once; when every connection has its first server
 * message (or failed), it prints:
 *   STORM <ok> <failed> <total_ms> <p50_ms> <p99_ms> <max_ms> <up_p50_ms> <up_p99_ms>
 * (p50/p99/max: connect() to the first server message; up_*: connect() to the 101).
 * --batch-us (default 1000) sleeps that long after each busy epoll round so frames
 * are read in batches. It exits when stdin closes (the harness's way to stop it) or after --max-seconds.
 *
 * Build: gcc -O2 -o wsload wsload.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_DONE };

typedef struct {
    int fd;
    int state;
    int idx;
    char *req;
    int req_len, req_off;
    char hbuf[2048];
    int hlen;
    unsigned char fh[14];
    int fh_len, fh_need;
    uint64_t remaining;
    int opcode, fin, in_frame;
    unsigned char ctl[128];
    int ctl_len;
    double t_start, t_up, t_first;
} conn_t;

static const char *host = "127.0.0.1";
static int port = 8080;
static const char *path = "/ws";
static const char *tokens_file = NULL;
static const char *subscribe = NULL;
static int count = 1;
static int storm = 0;
static int report_ms = 250;
static int max_seconds = 600;
static int concurrency = 256;
static int batch_us = 1000;

static conn_t *conns;
static int epfd;
static long n_open, n_closed, n_failed, n_pending, n_4008;
static unsigned long long n_msgs, n_bytes;
static int next_to_start;
static char **tokens;
static int n_tokens;
static int storm_reported;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

/* A masked client frame (fixed mask: this is a load generator, not a browser). */
static int client_frame(unsigned char *out, int opcode, const unsigned char *payload, int len) {
    static const unsigned char mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    int n = 0;
    out[n++] = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        out[n++] = (unsigned char)(0x80 | len);
    } else {
        out[n++] = 0x80 | 126;
        out[n++] = (unsigned char)(len >> 8);
        out[n++] = (unsigned char)(len & 0xff);
    }
    memcpy(out + n, mask, 4);
    n += 4;
    for (int i = 0; i < len; i++) out[n + i] = payload[i] ^ mask[i % 4];
    return n + len;
}

static void send_small(conn_t *c, int opcode, const unsigned char *payload, int len) {
    unsigned char buf[4200];
    if (len > 4000) return;
    int n = client_frame(buf, opcode, payload, len);
    ssize_t w = send(c->fd, buf, n, MSG_NOSIGNAL);
    (void)w; /* a full socket buffer here only drops a pong or the subscribe: counted by the server */
}

static void finish(conn_t *c, int failed) {
    if (c->state == ST_DONE) return;
    if (c->state == ST_OPEN) {
        n_open--;
        n_closed++;
    } else {
        n_pending--;
        if (failed) n_failed++;
    }
    c->state = ST_DONE;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
}

static void start_conn(conn_t *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, host, &sa.sin_addr);
    c->fd = fd;
    c->state = ST_CONNECTING;
    c->t_start = now_ms();
    n_pending++;
    int r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    if (r < 0 && errno != EINPROGRESS) {
        c->state = ST_HANDSHAKE; /* counted as pending until finish() */
        finish(c, 1);
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)c->idx};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
}

static void start_more(void) {
    while (next_to_start < count && (storm || n_pending < concurrency)) {
        start_conn(&conns[next_to_start++]);
    }
}

static void on_message_complete(conn_t *c) {
    n_msgs++;
    if (c->t_first == 0) c->t_first = now_ms();
}

static void on_control(conn_t *c) {
    if (c->opcode == 0x9) { /* ping -> pong */
        send_small(c, 0xA, c->ctl, c->ctl_len);
    } else if (c->opcode == 0x8) { /* close */
        int code = c->ctl_len >= 2 ? (c->ctl[0] << 8 | c->ctl[1]) : 1005;
        if (code == 4008) n_4008++;
        unsigned char body[2] = {(unsigned char)(code >> 8), (unsigned char)(code & 0xff)};
        send_small(c, 0x8, body, c->ctl_len >= 2 ? 2 : 0);
        finish(c, 0);
    }
}

/* Feed bytes of the frame stream; returns -1 if the connection finished. */
static int feed(conn_t *c, const unsigned char *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (!c->in_frame) {
            c->fh[c->fh_len++] = p[i++];
            if (c->fh_len == 2) {
                int len7 = c->fh[1] & 0x7f;
                c->fh_need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + ((c->fh[1] & 0x80) ? 4 : 0);
            }
            if (c->fh_len >= 2 && c->fh_len == c->fh_need) {
                int len7 = c->fh[1] & 0x7f;
                uint64_t len = (uint64_t)len7;
                if (len7 == 126) len = (uint64_t)c->fh[2] << 8 | c->fh[3];
                if (len7 == 127) {
                    len = 0;
                    for (int k = 0; k < 8; k++) len = len << 8 | c->fh[2 + k];
                }
                int op = c->fh[0] & 0x0f;
                c->fin = (c->fh[0] & 0x80) != 0;
                if (op != 0) c->opcode = op;
                c->remaining = len;
                c->in_frame = 1;
                c->fh_len = 0;
                c->fh_need = 0;
                c->ctl_len = 0;
                if (op >= 0x8 && len > 125) { finish(c, 0); return -1; }
                if (op >= 0x8) c->opcode = op;
                if (len == 0) goto frame_done;
            }
            continue;
        }
        {
            size_t take = n - i;
            if (take > c->remaining) take = (size_t)c->remaining;
            if (c->opcode >= 0x8) {
                memcpy(c->ctl + c->ctl_len, p + i, take);
                c->ctl_len += (int)take;
            }
            n_bytes += take;
            i += take;
            c->remaining -= take;
            if (c->remaining > 0) continue;
        }
    frame_done:
        c->in_frame = 0;
        if (c->opcode >= 0x8) {
            on_control(c);
            if (c->state == ST_DONE) return -1;
        } else if (c->fin) {
            on_message_complete(c);
        }
    }
    return 0;
}

static void on_writable(conn_t *c) {
    if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) { finish(c, 1); start_more(); return; }
        c->state = ST_HANDSHAKE;
        c->req_off = 0;
    }
    while (c->req_off < c->req_len) {
        ssize_t w = send(c->fd, c->req + c->req_off, c->req_len - c->req_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) return;
            finish(c, 1);
            start_more();
            return;
        }
        c->req_off += (int)w;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)c->idx};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static unsigned char rbuf[1 << 18];

static void on_readable(conn_t *c) {
    for (int rounds = 0; rounds < 8; rounds++) {
        ssize_t r = recv(c->fd, rbuf, sizeof rbuf, 0);
        if (r == 0) { finish(c, c->state != ST_OPEN); start_more(); return; }
        if (r < 0) {
            if (errno == EAGAIN) return;
            finish(c, c->state != ST_OPEN);
            start_more();
            return;
        }
        size_t off = 0;
        if (c->state == ST_HANDSHAKE) {
            size_t room = sizeof c->hbuf - 1 - (size_t)c->hlen;
            size_t take = (size_t)r < room ? (size_t)r : room;
            memcpy(c->hbuf + c->hlen, rbuf, take);
            c->hlen += (int)take;
            c->hbuf[c->hlen] = 0;
            char *end = strstr(c->hbuf, "\r\n\r\n");
            if (!end) {
                if (c->hlen >= (int)sizeof c->hbuf - 1) { finish(c, 1); start_more(); }
                return;
            }
            if (strncmp(c->hbuf, "HTTP/1.1 101", 12) != 0) { finish(c, 1); start_more(); return; }
            int header_len = (int)(end - c->hbuf) + 4;
            off = (size_t)(header_len - (c->hlen - (int)take));
            c->state = ST_OPEN;
            c->t_up = now_ms();
            n_pending--;
            n_open++;
            free(c->req);
            c->req = NULL;
            if (subscribe) send_small(c, 0x1, (const unsigned char *)subscribe, (int)strlen(subscribe));
            start_more();
        }
        if (off < (size_t)r && feed(c, rbuf + off, (size_t)r - off) < 0) { start_more(); return; }
        if ((size_t)r < sizeof rbuf) return;
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double q) {
    if (n == 0) return 0;
    int i = (int)(q * (n - 1) + 0.5);
    return v[i];
}

static void maybe_report_storm(void) {
    if (!storm || storm_reported || next_to_start < count) return;
    int ok = 0;
    for (int i = 0; i < count; i++) {
        if (conns[i].state == ST_OPEN && conns[i].t_first == 0) return; /* still waiting */
        if (conns[i].state == ST_HANDSHAKE || conns[i].state == ST_CONNECTING) return;
        if (conns[i].t_first > 0) ok++;
    }
    double *first = malloc(sizeof(double) * (size_t)(ok + 1));
    double *up = malloc(sizeof(double) * (size_t)(ok + 1));
    double t0 = 1e300, t1 = 0;
    int k = 0;
    for (int i = 0; i < count; i++) {
        if (conns[i].t_start < t0) t0 = conns[i].t_start;
        if (conns[i].t_first > 0) {
            first[k] = conns[i].t_first - conns[i].t_start;
            up[k] = conns[i].t_up - conns[i].t_start;
            if (conns[i].t_first > t1) t1 = conns[i].t_first;
            k++;
        }
    }
    qsort(first, (size_t)k, sizeof(double), cmp_double);
    qsort(up, (size_t)k, sizeof(double), cmp_double);
    printf("STORM %d %d %.1f %.1f %.1f %.1f %.1f %.1f\n", ok, count - ok, k ? t1 - t0 : 0.0,
           pct(first, k, 0.5), pct(first, k, 0.99), k ? first[k - 1] : 0.0, pct(up, k, 0.5),
           pct(up, k, 0.99));
    fflush(stdout);
    free(first);
    free(up);
    storm_reported = 1;
}

static void load_tokens(void) {
    FILE *f = fopen(tokens_file, "r");
    if (!f) die("tokens file");
    size_t cap = 1024;
    tokens = malloc(cap * sizeof(char *));
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        size_t l = strlen(line);
        while (l && (line[l - 1] == '\n' || line[l - 1] == '\r')) line[--l] = 0;
        if (!l) continue;
        if ((size_t)n_tokens == cap) tokens = realloc(tokens, (cap *= 2) * sizeof(char *));
        tokens[n_tokens++] = strdup(line);
    }
    fclose(f);
    if (!n_tokens) { fprintf(stderr, "no tokens\n"); exit(2); }
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--storm")) { storm = 1; continue; }
        if (!v) { fprintf(stderr, "missing value for %s\n", a); return 2; }
        i++;
        if (!strcmp(a, "--host")) host = v;
        else if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--path")) path = v;
        else if (!strcmp(a, "--tokens")) tokens_file = v;
        else if (!strcmp(a, "--subscribe")) subscribe = v;
        else if (!strcmp(a, "--count")) count = atoi(v);
        else if (!strcmp(a, "--report-ms")) report_ms = atoi(v);
        else if (!strcmp(a, "--max-seconds")) max_seconds = atoi(v);
        else if (!strcmp(a, "--concurrency")) concurrency = atoi(v);
        else if (!strcmp(a, "--batch-us")) batch_us = atoi(v);
        else { fprintf(stderr, "unknown flag %s\n", a); return 2; }
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)count + 64 > rl.rlim_cur) { fprintf(stderr, "RLIMIT_NOFILE too low\n"); return 2; }
    if (tokens_file) load_tokens();
    conns = calloc((size_t)count, sizeof(conn_t));
    for (int i = 0; i < count; i++) {
        conn_t *c = &conns[i];
        c->idx = i;
        c->fd = -1;
        const char *tok = tokens ? tokens[i % n_tokens] : NULL;
        char buf[8192];
        int n = snprintf(buf, sizeof buf,
                         "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         "Sec-WebSocket-Version: 13\r\n%s%s%s\r\n",
                         path, host, port, tok ? "Authorization: Bearer " : "", tok ? tok : "",
                         tok ? "\r\n" : "");
        c->req = malloc((size_t)n);
        memcpy(c->req, buf, (size_t)n);
        c->req_len = n;
    }
    epfd = epoll_create1(0);
    if (epfd < 0) die("epoll_create1");
    struct epoll_event in = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &in);
    double started = now_ms(), next_report = started;
    start_more();
    struct epoll_event evs[1024];
    for (;;) {
        double t = now_ms();
        if (t - started > max_seconds * 1e3) break;
        if (t >= next_report) {
            printf("S %.0f %ld %llu %llu %ld %ld %ld %ld\n", t, n_open, n_msgs, n_bytes, n_closed,
                   n_failed, n_pending, n_4008);
            fflush(stdout);
            next_report = t + report_ms;
        }
        int timeout = (int)(next_report - t) + 1;
        int n = epoll_wait(epfd, evs, 1024, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            uint32_t id = evs[k].data.u32;
            if (id == UINT32_MAX) {
                char b[256];
                ssize_t r = read(0, b, sizeof b);
                if (r == 0 || (r < 0 && errno != EAGAIN)) goto out;
                continue;
            }
            conn_t *c = &conns[id];
            if (c->state == ST_DONE) continue;
            if (evs[k].events & EPOLLOUT) on_writable(c);
            else if (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
        }
        maybe_report_storm();
        /* Let frames pile up in the socket buffers for a moment: one wake-up then reads
         * many frames from many sockets, which keeps this process far from its core's
         * limit (the server is measured, not this client). Never while handshaking. */
        if (batch_us > 0 && n > 0 && n < 1024 && n_pending == 0) usleep((useconds_t)batch_us);
    }
out:
    printf("S %.0f %ld %llu %llu %ld %ld %ld %ld\n", now_ms(), n_open, n_msgs, n_bytes, n_closed,
           n_failed, n_pending, n_4008);
    fflush(stdout);
    return 0;
}

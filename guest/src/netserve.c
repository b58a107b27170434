/*
 * netserve: a TCP server for migration tests, in one process: a poll loop
 * over every socket, with the heartbeat as the poll timeout.
 *
 * Parameters: port (7000), stream_port (7001). Both listen on 0.0.0.0.
 *
 * `port`, request/response: the client sends 16-byte requests {u64 seq,
 * u64 nonce} (little-endian), and gets for each a 16-byte response {u64 seq,
 * u64 answer(seq, nonce)}, in order; requests may be pipelined. Per
 * connection, each seq must be the previous one + 1 (the first is free):
 * otherwise bad, GODWIT CORRUPT {"check":"seq"}, and the count goes on from
 * the seq received.
 *
 * `stream_port`, bulk: the client's first byte picks the mode. 'R': the
 * server sends stream_byte(0), stream_byte(1)... until the client goes away
 * (a reset or EPIPE ends an R stream normally). 'W': the client sends the
 * same bytes and the server checks them: the first mismatch of a connection
 * is bad, GODWIT CORRUPT {"check":"stream"}, and the rest of it goes
 * unchecked. Any other mode byte ends the connection as a reset.
 *
 * The server brings `lo` up if it is down (the guest's other interfaces are
 * configured by the kernel's ip= parameter) and lists in READY the IPv4/IPv6
 * addresses of its interfaces: "addrs":[{"if":"eth0","addr":"10.0.2.15"},..].
 *
 * Progress points: every loop iteration, and poll returning; the poll wait
 * itself counts only past the heartbeat it was planned to wake for.
 *
 * HB fields: conns (open), conns_total (accepted), requests, requests_per_s,
 * stream_tx_bytes, stream_tx_bytes_per_s, stream_rx_bytes,
 * stream_rx_bytes_per_s, resets (connections that ended with an error).
 */
#define _GNU_SOURCE /* accept4, ppoll */
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "init.h"
#include "params.h"
#include "pattern.h"
#include "report.h"
#include "workloads.h"

#define MAX_CONNS 512
#define BUF_BYTES 8192 /* a connection's pending output; multiple of 8 */
#define REQ_BYTES 16
#define ACCEPT_BATCH 16 /* accepts per listener and loop iteration */
#define IO_BATCH 4      /* reads or buffer fills per connection and loop iteration */
#define MAX_ADDRS 8
#define GOLDEN 0x9e3779b97f4a7c15ull

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the wire format is little-endian");

/* The answer to a request: splitmix64's output for state seq ^ nonce. */
static uint64_t answer(uint64_t seq, uint64_t nonce)
{
    return mix64((seq ^ nonce) + GOLDEN);
}

/* Word k of the bulk stream (bytes 8k..8k+7, little-endian): the splitmix64
 * sequence seeded with 0. */
static uint64_t stream_word(uint64_t k)
{
    return mix64((k + 1) * GOLDEN);
}

enum kind { REQ, STREAM_NEW, STREAM_R, STREAM_W };

struct conn {
    int fd; /* -1: free slot */
    enum kind kind;
    uint64_t id;       /* accept order, from 0: "conn" in CORRUPT lines */
    uint64_t requests; /* REQ: answered on this connection */
    bool eof;     /* REQ: the client has finished sending; close once answered */
    bool corrupt; /* W: a mismatch was reported, the rest goes unchecked */
    bool have_seq;
    uint64_t next_seq; /* REQ: the seq the next request must carry */
    uint64_t offset;   /* R: stream bytes generated; W: received */
    size_t in_len;     /* REQ: bytes of a partial request */
    uint8_t in[REQ_BYTES];
    size_t out_off, out_len; /* pending output: out[out_off..out_len) */
    uint8_t out[BUF_BYTES];
};

struct netserve {
    int listen_req, listen_stream;
    struct conn conns[MAX_CONNS];
    unsigned open;
    uint64_t conns_total, requests, resets, tx, rx, bad;
    uint64_t requests_at_hb, tx_at_hb, rx_at_hb;
    struct stall stall;
    uint8_t scratch[65536];
    struct pollfd pfd[2 + MAX_CONNS];
    struct conn *pconn[2 + MAX_CONNS]; /* the connection of each pollfd, NULL for listeners */
};

static void report_corrupt(const char *check, uint64_t conn, const char *what, uint64_t where,
                           uint64_t expected, uint64_t found)
{
    if (!corrupt_line_allowed())
        return;
    struct json j;
    json_open(&j);
    json_str(&j, "workload", "netserve");
    json_str(&j, "check", check);
    json_u64(&j, "conn", conn);
    json_u64(&j, what, where);
    json_hex(&j, "expected", expected);
    json_hex(&j, "found", found);
    json_close(&j);
    emit_line("CORRUPT", &j);
}

/* ---- connections ------------------------------------------------------------ */

static void end_conn(struct netserve *n, struct conn *c, bool reset)
{
    if (reset)
        n->resets++;
    if (close(c->fd) < 0 && errno != EINTR)
        fatal("netserve: close: %s", strerror(errno));
    c->fd = -1;
    n->open--;
}

/* Ends a connection after a failed recv/send with errno `err`. */
static void end_conn_err(struct netserve *n, struct conn *c, int err)
{
    bool normal = c->kind == STREAM_R && (err == ECONNRESET || err == EPIPE);
    end_conn(n, c, !normal);
}

/* Sends pending output; false if the connection ended. */
static bool flush_out(struct netserve *n, struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return true;
            end_conn_err(n, c, errno);
            return false;
        }
        c->out_off += (size_t)w;
        if (c->kind == STREAM_R)
            n->tx += (uint64_t)w;
    }
    c->out_off = c->out_len = 0;
    return true;
}

/* recv that retries EINTR: > 0 bytes, 0 end of file, -1 nothing yet, -2 error (errno). */
static ssize_t conn_recv(struct conn *c, void *buf, size_t len)
{
    for (;;) {
        ssize_t got = recv(c->fd, buf, len, 0);
        if (got >= 0)
            return got;
        if (errno == EINTR)
            continue;
        return errno == EAGAIN || errno == EWOULDBLOCK ? -1 : -2;
    }
}

static void answer_request(struct netserve *n, struct conn *c)
{
    uint64_t seq, nonce;
    memcpy(&seq, c->in, 8);
    memcpy(&nonce, c->in + 8, 8);
    if (c->have_seq && seq != c->next_seq) {
        n->bad++;
        report_corrupt("seq", c->id, "request", c->requests, c->next_seq, seq);
    }
    c->have_seq = true;
    c->next_seq = seq + 1;
    uint64_t resp[2] = {seq, answer(seq, nonce)};
    memcpy(c->out + c->out_len, resp, sizeof resp);
    c->out_len += sizeof resp;
    c->requests++;
    n->requests++;
}

static void req_input(struct netserve *n, struct conn *c)
{
    for (int i = 0; i < IO_BATCH && !c->eof; i++) {
        if (c->out_off > 0) { /* compact: the room left is the room for responses */
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        size_t room = BUF_BYTES - c->out_len;
        if (room < REQ_BYTES)
            return;
        /* (in_len + got) / 16 responses fit in `room` when in_len + got <= room. */
        size_t want = room - c->in_len;
        if (want > sizeof n->scratch)
            want = sizeof n->scratch;
        ssize_t got = conn_recv(c, n->scratch, want);
        if (got == -1)
            return;
        if (got == -2) {
            end_conn_err(n, c, errno);
            return;
        }
        if (got == 0) {
            c->eof = true;
            return;
        }
        for (size_t off = 0; off < (size_t)got;) {
            size_t take = REQ_BYTES - c->in_len;
            if (take > (size_t)got - off)
                take = (size_t)got - off;
            memcpy(c->in + c->in_len, n->scratch + off, take);
            c->in_len += take;
            off += take;
            if (c->in_len == REQ_BYTES) {
                answer_request(n, c);
                c->in_len = 0;
            }
        }
    }
}

static void stream_check(struct netserve *n, struct conn *c, const uint8_t *buf, size_t len)
{
    uint64_t word = 0;
    for (size_t i = 0; i < len && !c->corrupt; i++) {
        uint64_t o = c->offset + i;
        if (i == 0 || o % 8 == 0)
            word = stream_word(o / 8);
        uint8_t expected = (uint8_t)(word >> (8 * (o % 8)));
        if (buf[i] != expected) {
            c->corrupt = true;
            n->bad++;
            report_corrupt("stream", c->id, "offset", o, expected, buf[i]);
        }
    }
    c->offset += len;
    n->rx += len;
}

/* Reads: the mode byte (STREAM_NEW), data to check (W), or nothing but the end (R). */
static void stream_input(struct netserve *n, struct conn *c)
{
    for (int i = 0; i < IO_BATCH; i++) {
        size_t want = c->kind == STREAM_NEW ? 1 : sizeof n->scratch;
        ssize_t got = conn_recv(c, n->scratch, want);
        if (got == -1)
            return;
        if (got == -2) {
            end_conn_err(n, c, errno);
            return;
        }
        if (got == 0) {
            end_conn(n, c, false);
            return;
        }
        if (c->kind == STREAM_NEW) {
            if (n->scratch[0] != 'R' && n->scratch[0] != 'W') {
                end_conn(n, c, true);
                return;
            }
            c->kind = n->scratch[0] == 'R' ? STREAM_R : STREAM_W;
        } else if (c->kind == STREAM_W) {
            stream_check(n, c, n->scratch, (size_t)got);
        } /* R: whatever the client sends is ignored */
    }
}

static void stream_output(struct netserve *n, struct conn *c)
{
    for (int i = 0; i < IO_BATCH; i++) {
        if (c->out_len == 0) {
            for (size_t w = 0; w < BUF_BYTES / 8; w++) {
                uint64_t word = stream_word(c->offset / 8 + w);
                memcpy(c->out + 8 * w, &word, 8);
            }
            c->out_len = BUF_BYTES;
            c->offset += BUF_BYTES;
        }
        if (!flush_out(n, c) || c->out_len != 0)
            return; /* ended, or the socket is full */
    }
}

static void handle_conn(struct netserve *n, struct conn *c, short revents)
{
    bool readable = revents & (POLLIN | POLLHUP | POLLERR);
    switch (c->kind) {
    case REQ:
        if (readable && !c->eof)
            req_input(n, c);
        if (c->fd >= 0 && flush_out(n, c) && c->eof && c->out_len == 0)
            end_conn(n, c, c->in_len != 0); /* a partial request left is an error */
        break;
    case STREAM_NEW:
    case STREAM_W:
        if (readable)
            stream_input(n, c);
        break;
    case STREAM_R:
        if (readable)
            stream_input(n, c);
        if (c->fd >= 0 && (revents & POLLOUT))
            stream_output(n, c);
        break;
    }
}

static void accept_conns(struct netserve *n, int lfd, enum kind kind)
{
    for (int i = 0; i < ACCEPT_BATCH && n->open < MAX_CONNS; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            fatal("netserve: accept: %s", strerror(errno));
        }
        int one = 1;
        if (kind == REQ && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
            fatal("netserve: TCP_NODELAY: %s", strerror(errno));
        struct conn *c = n->conns;
        while (c->fd >= 0) /* open < MAX_CONNS: there is a free slot */
            c++;
        c->fd = fd;
        c->kind = kind;
        c->id = n->conns_total;
        c->requests = 0;
        c->eof = c->corrupt = c->have_seq = false;
        c->offset = 0;
        c->in_len = c->out_off = c->out_len = 0;
        n->open++;
        n->conns_total++;
    }
}

/* Fills the pollfd array; returns its length. */
static nfds_t poll_set(struct netserve *n)
{
    nfds_t k = 0;
    short accepting = n->open < MAX_CONNS ? POLLIN : 0;
    n->pfd[k] = (struct pollfd){.fd = n->listen_req, .events = accepting};
    n->pconn[k++] = NULL;
    n->pfd[k] = (struct pollfd){.fd = n->listen_stream, .events = accepting};
    n->pconn[k++] = NULL;
    for (struct conn *c = n->conns; c < n->conns + MAX_CONNS; c++) {
        if (c->fd < 0)
            continue;
        short ev = 0;
        switch (c->kind) {
        case REQ:
            if (!c->eof && BUF_BYTES - (c->out_len - c->out_off) >= REQ_BYTES)
                ev |= POLLIN;
            if (c->out_off < c->out_len)
                ev |= POLLOUT;
            break;
        case STREAM_NEW:
        case STREAM_W:
            ev = POLLIN;
            break;
        case STREAM_R:
            ev = POLLIN | POLLOUT;
            break;
        }
        n->pfd[k] = (struct pollfd){.fd = c->fd, .events = ev};
        n->pconn[k++] = c;
    }
    return k;
}

/* ---- setup ------------------------------------------------------------------ */

static int listen_on(uint64_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        fatal("netserve: socket: %s", strerror(errno));
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        fatal("netserve: SO_REUSEADDR: %s", strerror(errno));
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        fatal("netserve: bind port %llu: %s", (unsigned long long)port, strerror(errno));
    if (listen(fd, 128) < 0)
        fatal("netserve: listen port %llu: %s", (unsigned long long)port, strerror(errno));
    return fd;
}

/* ip= brings lo up with the interface it configures; without it lo is down. */
static void loopback_up(void)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        fatal("netserve: socket: %s", strerror(errno));
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
        fatal("netserve: SIOCGIFFLAGS lo: %s", strerror(errno));
    if (!(ifr.ifr_flags & IFF_UP)) {
        ifr.ifr_flags |= IFF_UP;
        if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
            fatal("netserve: SIOCSIFFLAGS lo up: %s", strerror(errno));
    }
    if (close(fd) < 0)
        fatal("netserve: close: %s", strerror(errno));
}

/* READY's "addrs": [{"if":..,"addr":..}, ...], IPv4 and IPv6, at most MAX_ADDRS. */
static void add_ready(struct json *j, void *arg)
{
    (void)arg;
    struct ifaddrs *list;
    if (getifaddrs(&list) < 0)
        fatal("netserve: getifaddrs: %s", strerror(errno));
    char arr[1024] = "[";
    size_t len = 1;
    unsigned count = 0;
    for (struct ifaddrs *a = list; a && count < MAX_ADDRS; a = a->ifa_next) {
        if (!a->ifa_addr || (a->ifa_addr->sa_family != AF_INET && a->ifa_addr->sa_family != AF_INET6))
            continue;
        char text[INET6_ADDRSTRLEN];
        const void *raw = a->ifa_addr->sa_family == AF_INET
                              ? (const void *)&((const struct sockaddr_in *)a->ifa_addr)->sin_addr
                              : (const void *)&((const struct sockaddr_in6 *)a->ifa_addr)->sin6_addr;
        if (!inet_ntop(a->ifa_addr->sa_family, raw, text, sizeof text))
            continue;
        struct json o;
        json_open(&o);
        json_str(&o, "if", a->ifa_name);
        json_str(&o, "addr", text);
        json_close(&o);
        int w = snprintf(arr + len, sizeof arr - len, "%s%s", count ? "," : "", o.buf);
        if (w < 0 || (size_t)w >= sizeof arr - len - 1) /* keep room for the "]" */
            break;
        len += (size_t)w;
        count++;
    }
    freeifaddrs(list);
    arr[len++] = ']';
    arr[len] = '\0';
    json_raw(j, "addrs", arr);
}

static void report(struct netserve *n, struct heartbeat *hb, uint64_t now, enum beat beat)
{
    double dt = heartbeat_interval_s(hb, now);
    struct json j;
    heartbeat_open(hb, &j, now, n->bad, n->stall.max_ns);
    json_u64(&j, "conns", n->open);
    json_u64(&j, "conns_total", n->conns_total);
    json_u64(&j, "requests", n->requests);
    json_f(&j, "requests_per_s", dt > 0 ? (double)(n->requests - n->requests_at_hb) / dt : 0.0, 1);
    json_u64(&j, "stream_tx_bytes", n->tx);
    json_f(&j, "stream_tx_bytes_per_s", dt > 0 ? (double)(n->tx - n->tx_at_hb) / dt : 0.0, 0);
    json_u64(&j, "stream_rx_bytes", n->rx);
    json_f(&j, "stream_rx_bytes_per_s", dt > 0 ? (double)(n->rx - n->rx_at_hb) / dt : 0.0, 0);
    json_u64(&j, "resets", n->resets);
    heartbeat_emit(hb, &j, now, beat);
    n->requests_at_hb = n->requests;
    n->tx_at_hb = n->tx;
    n->rx_at_hb = n->rx;
}

void netserve_run(struct heartbeat *hb)
{
    static struct netserve ns; /* 4 MiB of buffers, touched as connections come */
    struct netserve *n = &ns;
    uint64_t port = param_u64("port", 7000, 1, 65535);
    uint64_t stream_port = param_u64("stream_port", 7001, 1, 65535);
    if (port == stream_port)
        fatal("netserve: port and stream_port are both %llu", (unsigned long long)port);
    for (unsigned i = 0; i < MAX_CONNS; i++)
        n->conns[i].fd = -1;
    loopback_up();
    n->listen_req = listen_on(port);
    n->listen_stream = listen_on(stream_port);

    uint64_t now = heartbeat_ready_with(hb, "netserve", add_ready, NULL);
    stall_start(&n->stall, now);
    for (;;) {
        now = now_ns();
        stall_point(&n->stall, now);
        enum beat beat = heartbeat_poll(hb, now);
        if (beat != BEAT_NONE) {
            report(n, hb, now, beat);
            if (beat == BEAT_DONE)
                break;
        }
        nfds_t count = poll_set(n);
        uint64_t wake = heartbeat_wake_ns(hb);
        uint64_t wait = wake > now ? wake - now : 0;
        struct timespec ts = {.tv_sec = (time_t)(wait / NS_PER_S), .tv_nsec = (long)(wait % NS_PER_S)};
        stall_sleep_until(&n->stall, wake);
        int ready = ppoll(n->pfd, count, &ts, NULL);
        stall_point(&n->stall, now_ns());
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            fatal("netserve: ppoll: %s", strerror(errno));
        }
        for (nfds_t k = 0; k < count && ready > 0; k++) {
            short rev = n->pfd[k].revents;
            if (!rev)
                continue;
            ready--;
            if (!n->pconn[k])
                accept_conns(n, n->pfd[k].fd, n->pfd[k].fd == n->listen_req ? REQ : STREAM_NEW);
            else
                handle_conn(n, n->pconn[k], rev);
        }
    }
    for (unsigned i = 0; i < MAX_CONNS; i++)
        if (n->conns[i].fd >= 0)
            end_conn(n, &n->conns[i], false);
    if (close(n->listen_req) < 0 || close(n->listen_stream) < 0)
        fatal("netserve: close: %s", strerror(errno));
}

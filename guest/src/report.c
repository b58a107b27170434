/* Console lines, clocks, heartbeat schedule: see report.h. */
#include "report.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "params.h"

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

void sleep_until_ns(uint64_t t)
{
    struct timespec ts = {.tv_sec = (time_t)(t / NS_PER_S), .tv_nsec = (long)(t % NS_PER_S)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

/* ---- JSON ---------------------------------------------------------------- */

static void json_append(struct json *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void json_append(struct json *j, const char *fmt, ...)
{
    if (j->len >= sizeof j->buf)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(j->buf + j->len, sizeof j->buf - j->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        j->len += (size_t)n;
    if (j->len >= sizeof j->buf) /* truncated: keep it a string, it is a bug anyway */
        j->len = sizeof j->buf - 1;
}

static void json_key(struct json *j, const char *key)
{
    json_append(j, "%s\"%s\":", j->first ? "" : ",", key);
    j->first = false;
}

void json_open(struct json *j)
{
    j->len = 0;
    j->buf[0] = '\0';
    j->first = true;
    json_append(j, "{");
}

void json_close(struct json *j)
{
    json_append(j, "}");
}

void json_u64(struct json *j, const char *key, uint64_t v)
{
    json_key(j, key);
    json_append(j, "%" PRIu64, v);
}

void json_f(struct json *j, const char *key, double v, int decimals)
{
    json_key(j, key);
    json_append(j, "%.*f", decimals, isfinite(v) ? v : 0.0);
}

void json_ms(struct json *j, const char *key, uint64_t ns)
{
    json_f(j, key, (double)ns / (double)NS_PER_MS, 3);
}

void json_hex(struct json *j, const char *key, uint64_t v)
{
    json_key(j, key);
    json_append(j, "\"0x%016" PRIx64 "\"", v);
}

void json_raw(struct json *j, const char *key, const char *raw)
{
    json_key(j, key);
    json_append(j, "%s", raw);
}

void json_str(struct json *j, const char *key, const char *v)
{
    json_key(j, key);
    json_append(j, "\"");
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if (*p == '"' || *p == '\\')
            json_append(j, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            json_append(j, "\\u%04x", *p);
        else
            json_append(j, "%c", *p);
    }
    json_append(j, "\"");
}

/* ---- console lines ------------------------------------------------------- */

static void write_all(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere left to complain to */
        }
        s += w;
        n -= (size_t)w;
    }
}

void emit_line(const char *tag, const struct json *j)
{
    char line[sizeof j->buf + 32];
    int n = snprintf(line, sizeof line, "GODWIT %s %s\n", tag, j->buf);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line) { /* cannot happen with our sizes; keep the newline */
        n = (int)sizeof line - 1;
        line[n - 1] = '\n';
    }
    write_all(STDOUT_FILENO, line, (size_t)n);
}

void emit_error(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct json j;
    json_open(&j);
    json_str(&j, "error", msg);
    json_close(&j);
    emit_line("ERROR", &j);
}

bool corrupt_line_allowed(void)
{
    static unsigned printed;
    if (printed >= 10)
        return false;
    printed++;
    return true;
}

/* ---- /proc/meminfo ------------------------------------------------------- */

uint64_t meminfo_kb(const char *field)
{
    static int fd = -1;
    if (fd < 0)
        fd = open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char buf[4096];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    size_t flen = strlen(field);
    /* Lines look like "MemFree:          123456 kB". */
    const char *line = buf;
    while (line) {
        if (strncmp(line, field, flen) == 0 && line[flen] == ':')
            return strtoull(line + flen + 1, NULL, 10);
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return 0;
}

/* ---- heartbeat ----------------------------------------------------------- */

void heartbeat_init(struct heartbeat *hb, uint64_t period_ms, uint64_t duration_s)
{
    memset(hb, 0, sizeof *hb);
    hb->period_ns = period_ms * NS_PER_MS;
    hb->duration_ns = duration_s * NS_PER_S;
}

uint64_t heartbeat_ready(struct heartbeat *hb, const char *workload)
{
    return heartbeat_ready_with(hb, workload, NULL, NULL);
}

uint64_t heartbeat_ready_with(struct heartbeat *hb, const char *workload,
                              void (*add)(struct json *j, void *arg), void *arg)
{
    struct json j;
    json_open(&j);
    json_str(&j, "workload", workload);
    json_raw(&j, "params", params_used_json());
    json_u64(&j, "mem_total_kb", meminfo_kb("MemTotal"));
    if (add)
        add(&j, arg);
    json_close(&j);

    uint64_t now = now_ns();
    emit_line("READY", &j);
    hb->t0_ns = now;
    hb->last_ns = now;
    hb->next_ns = now + hb->period_ns;
    hb->end_ns = hb->duration_ns ? now + hb->duration_ns : UINT64_MAX;
    return now;
}

enum beat heartbeat_poll(const struct heartbeat *hb, uint64_t now)
{
    if (now >= hb->end_ns)
        return BEAT_DONE;
    if (now >= hb->next_ns)
        return BEAT_HB;
    return BEAT_NONE;
}

void heartbeat_finish(struct heartbeat *hb, uint64_t now)
{
    hb->end_ns = now;
}

uint64_t heartbeat_wake_ns(const struct heartbeat *hb)
{
    return hb->next_ns < hb->end_ns ? hb->next_ns : hb->end_ns;
}

double heartbeat_interval_s(const struct heartbeat *hb, uint64_t now)
{
    return (double)(now - hb->last_ns) / (double)NS_PER_S;
}

void heartbeat_open(const struct heartbeat *hb, struct json *j, uint64_t now, uint64_t bad,
                    uint64_t max_stall_ns)
{
    json_open(j);
    json_u64(j, "seq", hb->seq);
    json_ms(j, "t_ms", now - hb->t0_ns);
    json_u64(j, "bad", bad);
    json_ms(j, "max_stall_ms", max_stall_ns);
}

void heartbeat_emit(struct heartbeat *hb, struct json *j, uint64_t now, enum beat beat)
{
    json_u64(j, "mem_free_kb", meminfo_kb("MemFree"));
    json_close(j);
    emit_line(beat == BEAT_DONE ? "DONE" : "HB", j);

    hb->seq++;
    hb->last_ns = now;
    hb->next_ns += hb->period_ns;
    if (hb->next_ns <= now) /* missed more than one interval: skip, keep the phase */
        hb->next_ns += ((now - hb->next_ns) / hb->period_ns + 1) * hb->period_ns;
}

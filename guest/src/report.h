/*
 * What leaves the guest: clock helpers, a tiny JSON object builder, the
 * `GODWIT <TAG> {json}` console lines, the heartbeat schedule and the stall
 * tracker every workload shares.
 *
 * Every status line is written with a single write(2) to stdout (the
 * console), so it leaves the guest at once and is never split or merged with
 * another line by stdio buffering.
 */
#ifndef GODWIT_REPORT_H
#define GODWIT_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull

/* CLOCK_MONOTONIC in ns. In a VM it follows the host, so a pause is a gap. */
uint64_t now_ns(void);
/* Sleeps until CLOCK_MONOTONIC reaches t (absolute, restarts on EINTR). */
void sleep_until_ns(uint64_t t);

/* A JSON object being built; sized for the longest line we print. */
struct json {
    char buf[1536];
    size_t len;
    bool first; /* no member yet: the next one needs no comma */
};

void json_open(struct json *j);
void json_u64(struct json *j, const char *key, uint64_t v);
/* Finite doubles with `decimals` places; NaN/inf are written as 0. */
void json_f(struct json *j, const char *key, double v, int decimals);
void json_ms(struct json *j, const char *key, uint64_t ns); /* ns as ms, %.3f */
void json_str(struct json *j, const char *key, const char *v);
void json_hex(struct json *j, const char *key, uint64_t v); /* "0x..." string */
/* Member whose value is already-valid JSON text (a nested object). */
void json_raw(struct json *j, const char *key, const char *raw);
void json_close(struct json *j);

/* Prints `GODWIT <tag> <json>\n` in one write. */
void emit_line(const char *tag, const struct json *j);
/* Prints `GODWIT ERROR {"error":"..."}` (does not stop anything). */
void emit_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* True for the first 10 calls in this process: caps GODWIT CORRUPT lines. */
bool corrupt_line_allowed(void);

/* A field of /proc/meminfo in kB ("MemFree", "MemTotal"...), 0 if missing.
 * Keeps the file open and preads it, so it is cheap enough per heartbeat. */
uint64_t meminfo_kb(const char *field);

/*
 * Stall tracking: the largest gap between consecutive progress points of a
 * workload loop, beyond what the loop itself planned. Call stall_point() at
 * every progress point; before a deliberate sleep call stall_sleep_until()
 * with the planned wake time, so only oversleep counts, not the sleep.
 */
struct stall {
    uint64_t expect_ns; /* when the next progress point is due at the latest */
    uint64_t max_ns;
};

static inline void stall_start(struct stall *s, uint64_t now)
{
    s->expect_ns = now;
    s->max_ns = 0;
}

static inline void stall_point(struct stall *s, uint64_t now)
{
    if (now > s->expect_ns && now - s->expect_ns > s->max_ns)
        s->max_ns = now - s->expect_ns;
    s->expect_ns = now;
}

static inline void stall_sleep_until(struct stall *s, uint64_t wake)
{
    s->expect_ns = wake;
}

/*
 * The heartbeat schedule: READY, then HB every period, then DONE once the
 * run's duration is over. Heartbeats do not drift (next += period), but after
 * a long gap they skip ahead instead of printing a burst.
 */
struct heartbeat {
    uint64_t period_ns;
    uint64_t duration_ns; /* 0 = run forever */
    uint64_t t0_ns;       /* READY time */
    uint64_t next_ns;     /* next HB due */
    uint64_t end_ns;      /* DONE due; UINT64_MAX = never */
    uint64_t last_ns;     /* previous HB (or READY): start of the rate interval */
    uint64_t seq;
};

enum beat { BEAT_NONE, BEAT_HB, BEAT_DONE };

void heartbeat_init(struct heartbeat *hb, uint64_t period_ms, uint64_t duration_s);
/* Prints GODWIT READY (workload, parameters read so far, mem_total_kb) and
 * starts the clock. Returns the READY time. */
uint64_t heartbeat_ready(struct heartbeat *hb, const char *workload);
/* heartbeat_ready() for a workload whose READY line carries more than the
 * common members: add(j, arg) appends its own after mem_total_kb. */
uint64_t heartbeat_ready_with(struct heartbeat *hb, const char *workload,
                              void (*add)(struct json *j, void *arg), void *arg);
/* What is due at `now`: nothing, a heartbeat, or the final DONE line. */
enum beat heartbeat_poll(const struct heartbeat *hb, uint64_t now);
/* Makes the next poll return BEAT_DONE (a workload that ran its course). */
void heartbeat_finish(struct heartbeat *hb, uint64_t now);
/* Earliest time something is due: what a sleeping loop should wake for. */
uint64_t heartbeat_wake_ns(const struct heartbeat *hb);
/* Seconds since the previous HB: the interval rates are computed over. */
double heartbeat_interval_s(const struct heartbeat *hb, uint64_t now);
/* Starts an HB/DONE object with the common fields seq, t_ms, bad, max_stall_ms. */
void heartbeat_open(const struct heartbeat *hb, struct json *j, uint64_t now, uint64_t bad,
                    uint64_t max_stall_ns);
/* Adds mem_free_kb, closes and prints the object as HB or DONE, and
 * schedules the next heartbeat. */
void heartbeat_emit(struct heartbeat *hb, struct json *j, uint64_t now, enum beat beat);

#endif

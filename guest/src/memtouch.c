/*
 * memtouch: dirties a working set at a chosen rate and checks every page.
 *
 * Parameters: wws_mb (64), pages_per_s (0 = as fast as it can), order
 * (seq|rand), seed (1). Each touch verifies the page against the generation
 * it was last written with (see pattern.h), counts a mismatch as bad, then
 * writes the next generation. The generation counters live in a separate
 * small array, so the working set itself is only what the guest touches.
 *
 * HB fields: touches (total), pages_per_s (achieved over the last interval),
 * passes (touches / pages in the working set: full sweeps), wws_mb.
 * max_stall_ms is the largest gap between two touches beyond a planned pacing
 * sleep (the clock is read at every page).
 */
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>

#include "init.h"
#include "params.h"
#include "pattern.h"
#include "report.h"
#include "workloads.h"

/*
 * Token bucket for pages_per_s > 0: credit accrues at the target rate; with
 * no credit the loop sleeps 1-10 ms (small batches, few syscalls). The bucket
 * holds at most 20 ms of credit, so after a pause of the VM the loop does not
 * burst to catch up: the rate stays the target rate while the guest runs.
 */
#define PACE_MIN_SLEEP_NS (1 * NS_PER_MS)
#define PACE_MAX_SLEEP_NS (10 * NS_PER_MS)

struct pacer {
    double pages_per_ns;
    double credit; /* pages that may be touched now */
    double max_credit;
    uint64_t last_ns;
};

static void pacer_init(struct pacer *p, uint64_t pages_per_s, uint64_t now)
{
    p->pages_per_ns = (double)pages_per_s / (double)NS_PER_S;
    p->max_credit = (double)pages_per_s * 0.020;
    if (p->max_credit < 1.0)
        p->max_credit = 1.0;
    p->credit = 1.0;
    p->last_ns = now;
}

/* Takes one page of credit if there is one. */
static bool pacer_take(struct pacer *p, uint64_t now)
{
    p->credit += (double)(now - p->last_ns) * p->pages_per_ns;
    p->last_ns = now;
    if (p->credit > p->max_credit)
        p->credit = p->max_credit;
    if (p->credit < 1.0)
        return false;
    p->credit -= 1.0;
    return true;
}

/* When to wake for the next page of credit. */
static uint64_t pacer_wake_ns(const struct pacer *p, uint64_t now)
{
    double wait = (1.0 - p->credit) / p->pages_per_ns;
    if (wait < (double)PACE_MIN_SLEEP_NS)
        wait = (double)PACE_MIN_SLEEP_NS;
    if (wait > (double)PACE_MAX_SLEEP_NS)
        wait = (double)PACE_MAX_SLEEP_NS;
    return now + (uint64_t)wait;
}

struct memtouch {
    uint8_t *wws;
    uint32_t *gen; /* per page: generation last written, 0 = never */
    uint64_t pages;
    uint64_t wws_mb;
    bool random;
    uint64_t rng;
    uint64_t cursor; /* next page in seq order */
    uint64_t touches;
    uint64_t touches_at_hb;
    uint64_t bad;
    struct stall stall;
};

static void touch_page(struct memtouch *m, uint64_t page)
{
    void *mem = m->wws + page * PAGE_BYTES;
    uint32_t gen = m->gen[page];
    struct mismatch first;
    unsigned bad_words = pattern_check(mem, page, gen, &first);
    if (bad_words) {
        m->bad++;
        pattern_report("memtouch", page, gen, &first, bad_words);
    }
    gen++;
    if (gen == 0) /* 2^32 touches of one page: skip the "never written" value */
        gen = 1;
    m->gen[page] = gen;
    pattern_write(mem, page, gen);
    m->touches++;
}

static uint64_t next_page(struct memtouch *m)
{
    if (m->random)
        return prng_below(&m->rng, m->pages);
    uint64_t page = m->cursor;
    m->cursor = page + 1 == m->pages ? 0 : page + 1;
    return page;
}

static void report(struct memtouch *m, struct heartbeat *hb, uint64_t now, enum beat beat)
{
    struct json j;
    double dt = heartbeat_interval_s(hb, now);
    heartbeat_open(hb, &j, now, m->bad, m->stall.max_ns);
    json_u64(&j, "touches", m->touches);
    json_f(&j, "pages_per_s", dt > 0 ? (double)(m->touches - m->touches_at_hb) / dt : 0.0, 1);
    json_u64(&j, "passes", m->touches / m->pages);
    json_u64(&j, "wws_mb", m->wws_mb);
    heartbeat_emit(hb, &j, now, beat);
    m->touches_at_hb = m->touches;
}

static void *map_zeroed(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        fatal("memtouch: mmap %zu bytes: %s", bytes, strerror(errno));
    return p;
}

void memtouch_run(struct heartbeat *hb)
{
    static const char *const orders[] = {"seq", "rand", NULL};
    struct memtouch m = {0};
    m.wws_mb = param_u64("wws_mb", 64, 1, 1u << 18); /* pattern_word: pages < 2^26 */
    uint64_t rate = param_u64("pages_per_s", 0, 0, 1000000000);
    m.random = strcmp(param_choice("order", "seq", orders), "rand") == 0;
    m.rng = param_u64("seed", 1, 0, UINT64_MAX);
    if (m.wws_mb > mem_budget_mb())
        fatal("memtouch: wws_mb=%llu does not fit: at most %llu MiB available",
              (unsigned long long)m.wws_mb, (unsigned long long)mem_budget_mb());

    m.pages = m.wws_mb * (1024 * 1024 / PAGE_BYTES);
    m.wws = map_zeroed(m.pages * PAGE_BYTES);
    m.gen = map_zeroed(m.pages * sizeof *m.gen);

    uint64_t now = heartbeat_ready(hb, "memtouch");
    struct pacer pacer;
    pacer_init(&pacer, rate, now);
    stall_start(&m.stall, now);
    for (;;) {
        now = now_ns();
        stall_point(&m.stall, now);
        enum beat beat = heartbeat_poll(hb, now);
        if (beat != BEAT_NONE) {
            report(&m, hb, now, beat);
            if (beat == BEAT_DONE)
                return;
        }
        if (rate && !pacer_take(&pacer, now)) {
            uint64_t wake = pacer_wake_ns(&pacer, now);
            if (wake > heartbeat_wake_ns(hb))
                wake = heartbeat_wake_ns(hb);
            stall_sleep_until(&m.stall, wake);
            sleep_until_ns(wake);
            continue;
        }
        touch_page(&m, next_page(&m));
    }
}

/*
 * alloc-free: takes a block of memory, uses it, gives it back, repeatedly,
 * so the balloon's free page reporting has freed memory to report to the host.
 *
 * Parameters: alloc_mb (128), hold_ms (1000), free_ms (3000), cycles (0 =
 * forever; otherwise DONE after that many cycles). One cycle:
 *   fill    mmap alloc_mb, check each page reads zero (fresh memory), write
 *           its pattern (generation = cycle number, see pattern.h)
 *   verify  check every page
 *   hold    keep it for hold_ms
 *   recheck check every page again (memory held across a migration)
 *   free    munmap, then wait free_ms
 * Work is done a page per loop iteration, so heartbeats keep coming meanwhile.
 *
 * HB fields: cycles (completed), phase, allocated_mb (MiB written and held
 * now), touches (page fills and checks so far), pages_per_s (of those, over
 * the last interval). max_stall_ms: largest gap between two pages of work or
 * past a planned wake-up.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "init.h"
#include "params.h"
#include "pattern.h"
#include "report.h"
#include "workloads.h"

enum phase { FILL, VERIFY, HOLD, RECHECK, FREE };
static const char *const phase_names[] = {"fill", "verify", "hold", "recheck", "free"};

struct allocfree {
    uint64_t pages;
    uint8_t *mem; /* NULL while freed */
    enum phase phase;
    uint64_t cursor;   /* next page of fill/verify/recheck */
    uint64_t filled;   /* pages written in this cycle's block */
    uint64_t until_ns; /* end of hold/free */
    uint64_t cycles;   /* completed */
    uint64_t touches, touches_at_hb;
    uint64_t bad;
    struct stall stall;
};

static void check_page(struct allocfree *a, uint64_t page, uint32_t gen)
{
    struct mismatch first;
    unsigned bad_words = pattern_check(a->mem + page * PAGE_BYTES, page, gen, &first);
    if (bad_words) {
        a->bad++;
        pattern_report("alloc-free", page, gen, &first, bad_words);
    }
    a->touches++;
}

static void report(struct allocfree *a, struct heartbeat *hb, uint64_t now, enum beat beat)
{
    struct json j;
    double dt = heartbeat_interval_s(hb, now);
    heartbeat_open(hb, &j, now, a->bad, a->stall.max_ns);
    json_u64(&j, "cycles", a->cycles);
    json_str(&j, "phase", phase_names[a->phase]);
    json_u64(&j, "allocated_mb", a->filled * PAGE_BYTES / (1024 * 1024));
    json_u64(&j, "touches", a->touches);
    json_f(&j, "pages_per_s", dt > 0 ? (double)(a->touches - a->touches_at_hb) / dt : 0.0, 1);
    heartbeat_emit(hb, &j, now, beat);
    a->touches_at_hb = a->touches;
}

/* One step of the cycle: a page of work, or a sleep towards the next event. */
static void step(struct allocfree *a, struct heartbeat *hb, uint64_t now, uint64_t hold_ns,
                 uint64_t free_ns, uint64_t max_cycles)
{
    /* Generation = cycle number + 1: never 0, and differs from the last cycle's. */
    uint32_t gen = (uint32_t)(a->cycles % 0xffffffffu) + 1;
    switch (a->phase) {
    case FILL:
        if (!a->mem) {
            a->mem = mmap(NULL, a->pages * PAGE_BYTES, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (a->mem == MAP_FAILED)
                fatal("alloc-free: mmap %llu pages: %s", (unsigned long long)a->pages,
                      strerror(errno));
        }
        check_page(a, a->cursor, 0); /* fresh anonymous memory reads zero */
        pattern_write(a->mem + a->cursor * PAGE_BYTES, a->cursor, gen);
        a->filled = ++a->cursor;
        if (a->cursor == a->pages) {
            a->phase = VERIFY;
            a->cursor = 0;
        }
        return;
    case VERIFY:
    case RECHECK:
        check_page(a, a->cursor++, gen);
        if (a->cursor < a->pages)
            return;
        a->cursor = 0;
        if (a->phase == VERIFY) {
            a->phase = HOLD;
            a->until_ns = now + hold_ns;
        } else {
            munmap(a->mem, a->pages * PAGE_BYTES);
            a->mem = NULL;
            a->filled = 0;
            a->phase = FREE;
            a->until_ns = now + free_ns;
        }
        return;
    case HOLD:
    case FREE:
        if (now >= a->until_ns) {
            if (a->phase == HOLD) {
                a->phase = RECHECK;
                return;
            }
            a->cycles++;
            if (max_cycles && a->cycles >= max_cycles)
                heartbeat_finish(hb, now); /* DONE on the next iteration */
            else
                a->phase = FILL;
            return;
        }
        uint64_t wake = a->until_ns < heartbeat_wake_ns(hb) ? a->until_ns : heartbeat_wake_ns(hb);
        stall_sleep_until(&a->stall, wake);
        sleep_until_ns(wake);
        return;
    }
}

void allocfree_run(struct heartbeat *hb)
{
    struct allocfree a = {0};
    uint64_t alloc_mb = param_u64("alloc_mb", 128, 1, 1u << 18);
    uint64_t hold_ns = param_u64("hold_ms", 1000, 0, 86400000) * NS_PER_MS;
    uint64_t free_ns = param_u64("free_ms", 3000, 0, 86400000) * NS_PER_MS;
    uint64_t max_cycles = param_u64("cycles", 0, 0, UINT64_MAX);
    if (alloc_mb > mem_budget_mb())
        fatal("alloc-free: alloc_mb=%llu does not fit: at most %llu MiB available",
              (unsigned long long)alloc_mb, (unsigned long long)mem_budget_mb());
    a.pages = alloc_mb * (1024 * 1024 / PAGE_BYTES);

    uint64_t now = heartbeat_ready(hb, "alloc-free");
    stall_start(&a.stall, now);
    for (;;) {
        now = now_ns();
        stall_point(&a.stall, now);
        enum beat beat = heartbeat_poll(hb, now);
        if (beat != BEAT_NONE) {
            report(&a, hb, now, beat);
            if (beat == BEAT_DONE)
                return;
        }
        step(&a, hb, now, hold_ns, free_ns, max_cycles);
    }
}

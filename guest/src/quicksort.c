/*
 * quicksort: CPU-bound processes sorting, checking every result.
 *
 * Parameters: procs (2), array_mb (4, per process), seed (1). init forks
 * `procs` children; each fills its own array of 32-bit integers from a PRNG,
 * sorts it with the quicksort below, checks the result is in order and holds
 * the same elements (a sum of a hash of every element, taken before and
 * after), and starts over. Results go to counters in a shared mapping; the
 * parent only sleeps and heartbeats.
 *
 * Progress points: every 4096 elements scanned (filling, partitioning,
 * insertion sorting, checking). max_stall_ms is the largest gap between two
 * consecutive progress points of *any* child: with more children than vCPUs
 * the scheduler's time slices do not count, a stalled VM does.
 * max_child_gap_ms is the largest gap within one child (it includes time
 * slices given to the other children).
 *
 * HB fields: sorts (total), sorts_per_s and elems_per_s (elements scanned by
 * the sort, a smooth measure of sorting work) over the last interval,
 * max_child_gap_ms, procs_running.
 */
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "init.h"
#include "params.h"
#include "pattern.h"
#include "report.h"
#include "workloads.h"

#define MAX_PROCS 64
#define PROGRESS_ELEMS 4096
#define INSERTION_MAX 16 /* partitions this small are insertion sorted */

/* Written only by its child (relaxed atomics), read by the parent. */
struct child_stats {
    uint64_t sorts;
    uint64_t bad;
    uint64_t elems;
    uint64_t max_gap_ns;
} __attribute__((aligned(64)));

struct shared {
    uint64_t last_progress_ns; /* latest progress point of any child */
    uint64_t max_stall_ns;     /* largest gap between progress points of any children */
    struct child_stats child[MAX_PROCS];
};

/* One child's sorting state. */
struct sorter {
    struct shared *sh;
    struct child_stats *me;
    uint64_t last_ns;
    uint64_t max_gap_ns;
    uint64_t elems; /* scanned by the sort, published at progress points */
    uint64_t units; /* elements since the last progress point */
};

#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

static void progress(struct sorter *s)
{
    uint64_t now = now_ns();
    if (now - s->last_ns > s->max_gap_ns) {
        s->max_gap_ns = now - s->last_ns;
        STORE(&s->me->max_gap_ns, s->max_gap_ns);
    }
    s->last_ns = now;

    uint64_t prev = __atomic_exchange_n(&s->sh->last_progress_ns, now, __ATOMIC_RELAXED);
    if (now > prev) {
        uint64_t gap = now - prev;
        uint64_t max = LOAD(&s->sh->max_stall_ns);
        while (gap > max && !__atomic_compare_exchange_n(&s->sh->max_stall_ns, &max, gap, true,
                                                         __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            ;
    }
    s->elems += s->units;
    s->units = 0;
    STORE(&s->me->elems, s->elems);
}

/* Accounts `n` elements of sorting work; a progress point every PROGRESS_ELEMS. */
static inline void sort_work(struct sorter *s, uint64_t n)
{
    s->units += n;
    if (s->units >= PROGRESS_ELEMS)
        progress(s);
}

static inline void swap(uint32_t *a, uint32_t *b)
{
    uint32_t t = *a;
    *a = *b;
    *b = t;
}

static void insertion_sort(uint32_t *a, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        uint32_t v = a[i];
        size_t j = i;
        for (; j > 0 && a[j - 1] > v; j--)
            a[j] = a[j - 1];
        a[j] = v;
    }
}

/*
 * Hoare partition around the median of the first, middle and last elements
 * (moved to a[0], which guarantees both parts are non-empty). Returns k with
 * 1 <= k < n and every a[0..k) <= every a[k..n).
 */
static size_t partition(struct sorter *s, uint32_t *a, size_t n)
{
    size_t mid = n / 2;
    if (a[mid] < a[0])
        swap(&a[mid], &a[0]);
    if (a[n - 1] < a[0])
        swap(&a[n - 1], &a[0]);
    if (a[n - 1] < a[mid])
        swap(&a[n - 1], &a[mid]);
    swap(&a[0], &a[mid]);
    uint32_t pivot = a[0];

    ptrdiff_t i = -1, j = (ptrdiff_t)n;
    ptrdiff_t i0 = i, j0 = j;
    for (;;) {
        do
            i++;
        while (a[i] < pivot);
        do
            j--;
        while (a[j] > pivot);
        sort_work(s, (uint64_t)((i - i0) + (j0 - j))); /* elements scanned this round */
        i0 = i;
        j0 = j;
        if (i >= j)
            return (size_t)j + 1;
        swap(&a[i], &a[j]);
    }
}

static void quicksort(struct sorter *s, uint32_t *a, size_t n)
{
    /* Recurse into the smaller part, loop on the larger: stack depth <= log2(n). */
    while (n > INSERTION_MAX) {
        size_t k = partition(s, a, n);
        if (k < n - k) {
            quicksort(s, a, k);
            a += k;
            n -= k;
        } else {
            quicksort(s, a + k, n - k);
            n = k;
        }
    }
    insertion_sort(a, n);
    sort_work(s, n);
}

/* Order-independent checksum term of one element. */
static inline uint64_t element_sum(uint32_t v)
{
    return mix64(v);
}

static void report_bad_sort(unsigned proc, uint64_t sort, const char *check, uint64_t index,
                            uint64_t expected, uint64_t found)
{
    if (!corrupt_line_allowed())
        return;
    struct json j;
    json_open(&j);
    json_str(&j, "workload", "quicksort");
    json_u64(&j, "proc", proc);
    json_u64(&j, "sort", sort);
    json_str(&j, "check", check);
    json_u64(&j, "index", index);
    json_hex(&j, "expected", expected);
    json_hex(&j, "found", found);
    json_close(&j);
    emit_line("CORRUPT", &j);
}

static noreturn void child_main(struct shared *sh, unsigned proc, size_t n, uint64_t seed)
{
    init_child_signals();
    uint32_t *a = mmap(NULL, n * sizeof *a, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED) {
        emit_error("quicksort: child %u: mmap: %s", proc, strerror(errno));
        _exit(1);
    }
    struct sorter s = {.sh = sh, .me = &sh->child[proc], .last_ns = now_ns()};
    uint64_t rng = seed ^ mix64(proc + 1);
    uint64_t bad = 0;
    for (uint64_t sort = 0;; sort++) {
        uint64_t sum = 0;
        for (size_t i = 0; i < n; i++) {
            a[i] = (uint32_t)(prng_next(&rng) >> 32);
            sum += element_sum(a[i]);
            if (i % PROGRESS_ELEMS == PROGRESS_ELEMS - 1)
                progress(&s);
        }

        quicksort(&s, a, n);

        uint64_t after = element_sum(a[0]);
        size_t unsorted = 0; /* first index out of order + 1; 0 = none */
        for (size_t i = 1; i < n; i++) {
            after += element_sum(a[i]);
            if (a[i - 1] > a[i] && !unsorted)
                unsorted = i + 1;
            if (i % PROGRESS_ELEMS == 0)
                progress(&s);
        }
        if (unsorted) {
            bad++;
            report_bad_sort(proc, sort, "order", unsorted - 1, a[unsorted - 2], a[unsorted - 1]);
        } else if (after != sum) {
            bad++;
            report_bad_sort(proc, sort, "sum", 0, sum, after);
        }
        STORE(&s.me->bad, bad);
        STORE(&s.me->sorts, sort + 1);
    }
}

struct parent {
    struct shared *sh;
    pid_t pid[MAX_PROCS]; /* 0 once exited */
    unsigned procs;
    uint64_t died; /* children that exited: each counts as bad */
    uint64_t sorts_at_hb, elems_at_hb;
};

static void reap_children(struct parent *p, bool expected)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, expected ? 0 : WNOHANG)) > 0) {
        for (unsigned i = 0; i < p->procs; i++) {
            if (p->pid[i] != pid)
                continue;
            p->pid[i] = 0;
            if (!expected) {
                p->died++;
                if (WIFSIGNALED(status))
                    emit_error("quicksort: child %u killed by signal %d", i, WTERMSIG(status));
                else
                    emit_error("quicksort: child %u exited with %d", i, WEXITSTATUS(status));
            }
        }
    }
}

static void report(struct parent *p, struct heartbeat *hb, uint64_t now, enum beat beat)
{
    uint64_t sorts = 0, elems = 0, bad = p->died, max_child_gap = 0;
    unsigned running = 0;
    for (unsigned i = 0; i < p->procs; i++) {
        const struct child_stats *c = &p->sh->child[i];
        sorts += LOAD(&c->sorts);
        elems += LOAD(&c->elems);
        bad += LOAD(&c->bad);
        uint64_t gap = LOAD(&c->max_gap_ns);
        if (gap > max_child_gap)
            max_child_gap = gap;
        running += p->pid[i] != 0;
    }
    double dt = heartbeat_interval_s(hb, now);
    struct json j;
    heartbeat_open(hb, &j, now, bad, LOAD(&p->sh->max_stall_ns));
    json_u64(&j, "sorts", sorts);
    json_f(&j, "sorts_per_s", dt > 0 ? (double)(sorts - p->sorts_at_hb) / dt : 0.0, 2);
    json_f(&j, "elems_per_s", dt > 0 ? (double)(elems - p->elems_at_hb) / dt : 0.0, 0);
    json_ms(&j, "max_child_gap_ms", max_child_gap);
    json_u64(&j, "procs_running", running);
    heartbeat_emit(hb, &j, now, beat);
    p->sorts_at_hb = sorts;
    p->elems_at_hb = elems;
}

void quicksort_run(struct heartbeat *hb)
{
    struct parent p = {0};
    p.procs = (unsigned)param_u64("procs", 2, 1, MAX_PROCS);
    uint64_t array_mb = param_u64("array_mb", 4, 1, 1u << 16);
    uint64_t seed = param_u64("seed", 1, 0, UINT64_MAX);
    if (p.procs * array_mb > mem_budget_mb())
        fatal("quicksort: procs=%u x array_mb=%llu does not fit: at most %llu MiB available",
              p.procs, (unsigned long long)array_mb, (unsigned long long)mem_budget_mb());
    size_t n = array_mb * 1024 * 1024 / sizeof(uint32_t);

    p.sh = mmap(NULL, sizeof *p.sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p.sh == MAP_FAILED)
        fatal("quicksort: mmap shared counters: %s", strerror(errno));

    uint64_t now = heartbeat_ready(hb, "quicksort");
    STORE(&p.sh->last_progress_ns, now);
    for (unsigned i = 0; i < p.procs; i++) {
        pid_t pid = fork();
        if (pid < 0)
            fatal("quicksort: fork: %s", strerror(errno));
        if (pid == 0)
            child_main(p.sh, i, n, seed);
        p.pid[i] = pid;
    }

    for (;;) {
        now = now_ns();
        reap_children(&p, false);
        enum beat beat = heartbeat_poll(hb, now);
        if (beat != BEAT_NONE) {
            report(&p, hb, now, beat);
            if (beat == BEAT_DONE)
                break;
        }
        sleep_until_ns(heartbeat_wake_ns(hb));
    }
    for (unsigned i = 0; i < p.procs; i++)
        if (p.pid[i])
            kill(p.pid[i], SIGKILL);
    reap_children(&p, true);
}

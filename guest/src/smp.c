/*
 * smp: threads on different CPUs hammering shared memory with the RISC-V
 * atomics, and two processes on two CPUs talking through a pipe; every count
 * is checked against its exact expected value.
 *
 * Parameters: threads (number of online CPUs, 1..64). Thread i is pinned to
 * CPU i % n of the n CPUs init may run on. The threads work in rounds; in
 * each round every thread does
 *   amo    AMO_ITERS x (amoadd.w on a 32-bit counter, a seq_cst amoadd.d
 *          on a 64-bit one)
 *   lrsc   LRSC_ITERS increments of a 64-bit counter by compare-and-swap,
 *          the CAS being an explicit lr.d.aq/sc.d.rl loop on riscv
 *          (__atomic_compare_exchange elsewhere, for native tests)
 *   mutex  MUTEX_ITERS increments, under a 3-state futex mutex, of a plain
 *          counter and of a struct {count, mix64(count), ~count}; each
 *          holder checks the struct is consistent and matches the counter
 * then all meet at a barrier and thread 0 checks every counter against
 * start + threads x iterations and resets them. The counters start just
 * below 2^32, so every round carries into the upper half of the 64-bit
 * ones and wraps the 32-bit one. A wrong count counts in bad and prints
 * GODWIT CORRUPT {"round","check","expected","found"}.
 *
 * Meanwhile a writer process (on the first CPU) sends 64-byte messages
 * {seq, mix64(seq * 8 + k) for k = 1..7} through a pipe, 8 per write, to a
 * reader process (on the second CPU), which checks that seq runs 0, 1, 2...
 * and every word; a bad message counts in bad and prints GODWIT CORRUPT
 * {"check":"pipe","expected_seq","found_seq","bad_words"}. A pipe process
 * that dies counts in bad too.
 *
 * The main thread only heartbeats. Progress points: every PROGRESS_ITERS
 * iterations of a worker loop and every pipe read or write; max_stall_ms is
 * the largest gap between consecutive progress points of *any* of them.
 *
 * HB fields: threads, cpus_online, rounds (checked), amo_ops_per_s (amoadd
 * instructions), lrsc_ops_per_s (successful CAS increments), mutex_ops_per_s
 * (lock/unlock pairs), cas_retries (failed CAS attempts so far: contention),
 * pipe_msgs, pipe_msgs_per_s. READY carries cpus_online as well.
 */
#define _GNU_SOURCE /* CPU affinity, pipe2 */
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "init.h"
#include "params.h"
#include "pattern.h"
#include "report.h"
#include "workloads.h"

#define MAX_THREADS 64
#define AMO_ITERS 2048 /* per thread and round, for each of the two counters */
#define LRSC_ITERS 2048
#define MUTEX_ITERS 256
#define PROGRESS_ITERS 256
#define MSG_WORDS 8      /* a pipe message: seq + 7 check words */
#define MSGS_PER_WRITE 8 /* 512 bytes: below PIPE_BUF, so each write is atomic */

#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define ALIGNED __attribute__((aligned(64)))

/* In a shared mapping: written by the workers and the pipe processes, read by the main thread. */
struct shared {
    uint64_t last_progress_ns; /* latest progress point of anyone */
    uint64_t max_stall_ns;
    uint64_t rounds ALIGNED; /* published by thread 0 */
    uint64_t bad;
    uint64_t cas_retries;
    uint64_t pipe_msgs ALIGNED; /* published by the pipe reader */
    uint64_t pipe_bad;
};

/* What one round's work hits; thread 0 checks and resets it between rounds. */
struct round_state {
    uint32_t amo32 ALIGNED;
    uint64_t amo64 ALIGNED;
    uint64_t lrsc ALIGNED;
    uint32_t lock ALIGNED; /* futex word: 0 free, 1 locked, 2 locked and maybe waiters */
    /* Under `lock`, plain loads and stores only. */
    uint64_t plain;
    struct guarded {
        uint64_t count, hash, inverse; /* hash = mix64(count), inverse = ~count */
    } guarded;
};

struct smp;

struct worker {
    struct smp *s;
    pthread_t tid;
    unsigned idx;
    uint64_t torn;    /* this round: guarded struct seen inconsistent by this thread */
    uint64_t retries; /* this round: failed CAS attempts */
} ALIGNED;

struct smp {
    struct round_state r;
    struct worker w[MAX_THREADS];
    unsigned threads;
    pthread_barrier_t start, end;
    bool stop;           /* decided by thread 0 before the start barrier, read after it */
    bool stop_requested; /* set by the main thread (atomic) */
    uint64_t round;      /* thread 0's */
    uint64_t retries;    /* thread 0's running total */
    struct shared *sh;
};

static void progress(struct shared *sh)
{
    uint64_t now = now_ns();
    uint64_t prev = __atomic_exchange_n(&sh->last_progress_ns, now, __ATOMIC_RELAXED);
    if (now > prev) {
        uint64_t gap = now - prev;
        uint64_t max = LOAD(&sh->max_stall_ns);
        while (gap > max && !__atomic_compare_exchange_n(&sh->max_stall_ns, &max, gap, true,
                                                         __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            ;
    }
}

/* ---- the primitives -------------------------------------------------------- */

/* Compare-and-swap of *p from `expected` to `desired`; returns the value it
 * saw (== expected on success). */
static inline uint64_t cas64(uint64_t *p, uint64_t expected, uint64_t desired)
{
#if defined(__riscv) && __riscv_xlen == 64
    uint64_t seen, fail;
    __asm__ volatile("1: lr.d.aq %0, %2\n"
                     "   bne %0, %3, 2f\n"
                     "   sc.d.rl %1, %4, %2\n"
                     "   bnez %1, 1b\n"
                     "2:\n"
                     : "=&r"(seen), "=&r"(fail), "+A"(*p)
                     : "r"(expected), "r"(desired)
                     : "memory");
    return seen;
#else
    __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    return expected; /* unchanged on success, the value seen on failure */
#endif
}

static long futex(uint32_t *word, int op, uint32_t val)
{
    return syscall(SYS_futex, word, op, val, NULL, NULL, 0);
}

/* The classic 3-state futex mutex (Drepper, "Futexes are tricky", mutex2). */
static void mutex_lock(uint32_t *m)
{
    uint32_t c = 0;
    if (__atomic_compare_exchange_n(m, &c, 1, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        return;
    if (c != 2)
        c = __atomic_exchange_n(m, 2, __ATOMIC_ACQUIRE);
    while (c != 0) {
        if (futex(m, FUTEX_WAIT_PRIVATE, 2) < 0 && errno != EAGAIN && errno != EINTR)
            fatal("smp: futex wait: %s", strerror(errno));
        c = __atomic_exchange_n(m, 2, __ATOMIC_ACQUIRE);
    }
}

static void mutex_unlock(uint32_t *m)
{
    if (__atomic_fetch_sub(m, 1, __ATOMIC_RELEASE) != 1) {
        __atomic_store_n(m, 0, __ATOMIC_RELEASE);
        if (futex(m, FUTEX_WAKE_PRIVATE, 1) < 0)
            fatal("smp: futex wake: %s", strerror(errno));
    }
}

/* ---- rounds ---------------------------------------------------------------- */

/* Counters start half a round's increments below 2^32. */
static uint64_t start_value(unsigned threads, unsigned iters)
{
    return (1ull << 32) - (uint64_t)threads * iters / 2;
}

static void round_reset(struct smp *s)
{
    struct round_state *r = &s->r;
    r->amo32 = (uint32_t)start_value(s->threads, AMO_ITERS);
    r->amo64 = start_value(s->threads, AMO_ITERS);
    r->lrsc = start_value(s->threads, LRSC_ITERS);
    r->plain = 0;
    r->guarded = (struct guarded){.count = 0, .hash = mix64(0), .inverse = ~0ull};
    for (unsigned i = 0; i < s->threads; i++)
        s->w[i].torn = s->w[i].retries = 0;
}

static void round_work(struct worker *w)
{
    struct round_state *r = &w->s->r;
    struct shared *sh = w->s->sh;
    for (unsigned i = 0; i < AMO_ITERS; i++) {
        __atomic_fetch_add(&r->amo32, 1, __ATOMIC_RELAXED); /* amoadd.w */
        __atomic_fetch_add(&r->amo64, 1, __ATOMIC_SEQ_CST); /* amoadd.d with ordering bits */
        if (i % PROGRESS_ITERS == PROGRESS_ITERS - 1)
            progress(sh);
    }
    for (unsigned i = 0; i < LRSC_ITERS; i++) {
        uint64_t old = LOAD(&r->lrsc);
        for (;;) {
            uint64_t seen = cas64(&r->lrsc, old, old + 1);
            if (seen == old)
                break;
            old = seen;
            w->retries++;
        }
        if (i % PROGRESS_ITERS == PROGRESS_ITERS - 1)
            progress(sh);
    }
    for (unsigned i = 0; i < MUTEX_ITERS; i++) {
        mutex_lock(&r->lock);
        struct guarded g = r->guarded;
        if (g.hash != mix64(g.count) || g.inverse != ~g.count || g.count != r->plain)
            w->torn++;
        r->plain++;
        g.count++;
        r->guarded = (struct guarded){.count = g.count, .hash = mix64(g.count), .inverse = ~g.count};
        mutex_unlock(&r->lock);
        if (i % PROGRESS_ITERS == PROGRESS_ITERS - 1)
            progress(sh);
    }
}

static void report_bad_count(uint64_t round, const char *check, uint64_t expected, uint64_t found)
{
    if (!corrupt_line_allowed())
        return;
    struct json j;
    json_open(&j);
    json_str(&j, "workload", "smp");
    json_u64(&j, "round", round);
    json_str(&j, "check", check);
    json_u64(&j, "expected", expected);
    json_u64(&j, "found", found);
    json_close(&j);
    emit_line("CORRUPT", &j);
}

/* Thread 0, between the barriers: every count against its exact value. */
static void round_check(struct smp *s)
{
    const struct round_state *r = &s->r;
    unsigned n = s->threads;
    uint64_t torn = 0, bad = 0;
    for (unsigned i = 0; i < n; i++) {
        torn += s->w[i].torn;
        s->retries += s->w[i].retries;
    }
    const struct {
        const char *check;
        uint64_t expected, found;
    } c[] = {
        {"amo32", (uint32_t)(start_value(n, AMO_ITERS) + (uint64_t)n * AMO_ITERS), r->amo32},
        {"amo64", start_value(n, AMO_ITERS) + (uint64_t)n * AMO_ITERS, r->amo64},
        {"lrsc", start_value(n, LRSC_ITERS) + (uint64_t)n * LRSC_ITERS, r->lrsc},
        {"mutex_plain", (uint64_t)n * MUTEX_ITERS, r->plain},
        {"mutex_struct", r->plain, r->guarded.count},
        {"mutex_struct_hash", mix64(r->guarded.count), r->guarded.hash},
        {"mutex_struct_inverse", ~r->guarded.count, r->guarded.inverse},
        {"mutex_torn", 0, torn}, /* holders that saw the struct inconsistent */
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        if (c[i].found != c[i].expected) {
            bad++;
            report_bad_count(s->round, c[i].check, c[i].expected, c[i].found);
        }
    }
    s->round++;
    __atomic_fetch_add(&s->sh->bad, bad, __ATOMIC_RELAXED);
    STORE(&s->sh->cas_retries, s->retries);
    STORE(&s->sh->rounds, s->round);
    round_reset(s);
    s->stop = __atomic_load_n(&s->stop_requested, __ATOMIC_ACQUIRE);
}

static void barrier(pthread_barrier_t *b)
{
    int rc = pthread_barrier_wait(b);
    if (rc != 0 && rc != PTHREAD_BARRIER_SERIAL_THREAD)
        fatal("smp: pthread_barrier_wait: %s", strerror(rc));
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct smp *s = w->s;
    for (;;) {
        barrier(&s->start);
        if (s->stop)
            return NULL;
        round_work(w);
        progress(s->sh);
        barrier(&s->end);
        if (w->idx == 0)
            round_check(s);
    }
}

/* ---- the pipe -------------------------------------------------------------- */

static uint64_t msg_word(uint64_t seq, unsigned k)
{
    return mix64(seq * MSG_WORDS + k);
}

static noreturn void pipe_writer(struct shared *sh, int fd)
{
    init_child_signals();
    uint64_t buf[MSGS_PER_WRITE * MSG_WORDS];
    for (uint64_t seq = 0;;) {
        for (unsigned m = 0; m < MSGS_PER_WRITE; m++, seq++) {
            buf[m * MSG_WORDS] = seq;
            for (unsigned k = 1; k < MSG_WORDS; k++)
                buf[m * MSG_WORDS + k] = msg_word(seq, k);
        }
        ssize_t n;
        do
            n = write(fd, buf, sizeof buf);
        while (n < 0 && errno == EINTR);
        if (n != (ssize_t)sizeof buf) { /* a pipe write below PIPE_BUF is all or nothing */
            emit_error("smp: pipe write: %s", n < 0 ? strerror(errno) : "short write");
            _exit(1);
        }
        progress(sh);
    }
}

static void report_bad_msg(uint64_t expected_seq, uint64_t found_seq, unsigned bad_words)
{
    if (!corrupt_line_allowed())
        return;
    struct json j;
    json_open(&j);
    json_str(&j, "workload", "smp");
    json_str(&j, "check", "pipe");
    json_u64(&j, "expected_seq", expected_seq);
    json_u64(&j, "found_seq", found_seq);
    json_u64(&j, "bad_words", bad_words);
    json_close(&j);
    emit_line("CORRUPT", &j);
}

static noreturn void pipe_reader(struct shared *sh, int fd)
{
    init_child_signals();
    uint64_t buf[MSGS_PER_WRITE * MSG_WORDS];
    uint64_t expect = 0, msgs = 0, bad = 0;
    for (;;) {
        size_t got = 0; /* whole messages only: a read may return less than asked */
        while (got < sizeof buf) {
            ssize_t n = read(fd, (char *)buf + got, sizeof buf - got);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                emit_error("smp: pipe read: %s", n < 0 ? strerror(errno) : "end of file");
                _exit(1);
            }
            got += (size_t)n;
        }
        for (unsigned m = 0; m < MSGS_PER_WRITE; m++) {
            const uint64_t *msg = &buf[m * MSG_WORDS];
            unsigned bad_words = msg[0] != expect;
            for (unsigned k = 1; k < MSG_WORDS; k++)
                bad_words += msg[k] != msg_word(msg[0], k);
            if (bad_words) {
                bad++;
                report_bad_msg(expect, msg[0], bad_words);
            }
            expect = msg[0] + 1; /* resynchronise on what came */
        }
        msgs += MSGS_PER_WRITE;
        STORE(&sh->pipe_msgs, msgs);
        STORE(&sh->pipe_bad, bad);
        progress(sh);
    }
}

/* ---- the main thread ------------------------------------------------------- */

struct cpus {
    int id[MAX_THREADS]; /* the first CPUs init may run on: thread i gets id[i % n] */
    unsigned n;
    long online;
};

static void cpus_load(struct cpus *c)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) < 0)
        fatal("smp: sched_getaffinity: %s", strerror(errno));
    c->n = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && c->n < MAX_THREADS; cpu++)
        if (CPU_ISSET(cpu, &set))
            c->id[c->n++] = cpu;
    c->online = sysconf(_SC_NPROCESSORS_ONLN);
    if (c->n == 0 || c->online < 1)
        fatal("smp: no CPU to run on (%u allowed, %ld online)", c->n, c->online);
}

static void cpu_only(cpu_set_t *set, int cpu)
{
    CPU_ZERO(set);
    CPU_SET(cpu, set);
}

static pid_t fork_pinned(struct shared *sh, int cpu, int fd, int other_fd, bool writer)
{
    pid_t pid = fork();
    if (pid < 0)
        fatal("smp: fork: %s", strerror(errno));
    if (pid == 0) {
        if (close(other_fd) < 0) {
            emit_error("smp: close pipe: %s", strerror(errno));
            _exit(1);
        }
        if (writer)
            pipe_writer(sh, fd);
        pipe_reader(sh, fd);
    }
    cpu_set_t set;
    cpu_only(&set, cpu);
    if (sched_setaffinity(pid, sizeof set, &set) < 0)
        fatal("smp: sched_setaffinity(pipe process, CPU %d): %s", cpu, strerror(errno));
    return pid;
}

struct parent {
    struct smp *s;
    struct cpus cpus;
    pid_t pid[2]; /* pipe writer, reader; 0 once exited */
    uint64_t died;
    uint64_t rounds_at_hb, msgs_at_hb;
};

static void reap_children(struct parent *p, bool expected)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, expected ? 0 : WNOHANG)) > 0) {
        for (unsigned i = 0; i < 2; i++) {
            if (p->pid[i] != pid)
                continue;
            p->pid[i] = 0;
            if (!expected) {
                p->died++;
                if (WIFSIGNALED(status))
                    emit_error("smp: pipe %s killed by signal %d", i ? "reader" : "writer",
                               WTERMSIG(status));
                else
                    emit_error("smp: pipe %s exited with %d", i ? "reader" : "writer",
                               WEXITSTATUS(status));
            }
        }
    }
}

static void report(struct parent *p, struct heartbeat *hb, uint64_t now, enum beat beat)
{
    const struct shared *sh = p->s->sh;
    uint64_t rounds = LOAD(&sh->rounds), msgs = LOAD(&sh->pipe_msgs);
    uint64_t bad = LOAD(&sh->bad) + LOAD(&sh->pipe_bad) + p->died;
    double dt = heartbeat_interval_s(hb, now);
    double per_s = dt > 0 ? (double)(rounds - p->rounds_at_hb) * p->s->threads / dt : 0.0;
    struct json j;
    heartbeat_open(hb, &j, now, bad, LOAD(&sh->max_stall_ns));
    json_u64(&j, "threads", p->s->threads);
    json_u64(&j, "cpus_online", (uint64_t)p->cpus.online);
    json_u64(&j, "rounds", rounds);
    json_f(&j, "amo_ops_per_s", per_s * AMO_ITERS * 2, 0);
    json_f(&j, "lrsc_ops_per_s", per_s * LRSC_ITERS, 0);
    json_f(&j, "mutex_ops_per_s", per_s * MUTEX_ITERS, 0);
    json_u64(&j, "cas_retries", LOAD(&sh->cas_retries));
    json_u64(&j, "pipe_msgs", msgs);
    json_f(&j, "pipe_msgs_per_s", dt > 0 ? (double)(msgs - p->msgs_at_hb) / dt : 0.0, 0);
    heartbeat_emit(hb, &j, now, beat);
    p->rounds_at_hb = rounds;
    p->msgs_at_hb = msgs;
}

static void add_ready(struct json *j, void *arg)
{
    const struct parent *p = arg;
    json_u64(j, "cpus_online", (uint64_t)p->cpus.online);
}

static void start_workers(struct smp *s, const struct cpus *cpus)
{
    for (unsigned i = 0; i < s->threads; i++) {
        pthread_attr_t attr;
        cpu_set_t set;
        cpu_only(&set, cpus->id[i % cpus->n]);
        int rc = pthread_attr_init(&attr);
        if (rc == 0)
            rc = pthread_attr_setstacksize(&attr, 256 * 1024);
        if (rc == 0)
            rc = pthread_attr_setaffinity_np(&attr, sizeof set, &set);
        if (rc == 0)
            rc = pthread_create(&s->w[i].tid, &attr, worker_main, &s->w[i]);
        if (rc != 0)
            fatal("smp: starting thread %u on CPU %d: %s", i, cpus->id[i % cpus->n], strerror(rc));
        pthread_attr_destroy(&attr);
    }
}

void smp_run(struct heartbeat *hb)
{
    static struct smp s; /* shared by the threads */
    struct parent p = {.s = &s};
    cpus_load(&p.cpus);
    uint64_t def = p.cpus.online < MAX_THREADS ? (uint64_t)p.cpus.online : MAX_THREADS;
    s.threads = (unsigned)param_u64("threads", def, 1, MAX_THREADS);
    s.sh = mmap(NULL, sizeof *s.sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s.sh == MAP_FAILED)
        fatal("smp: mmap shared counters: %s", strerror(errno));
    for (unsigned i = 0; i < s.threads; i++)
        s.w[i] = (struct worker){.s = &s, .idx = i};
    round_reset(&s);
    int rc = pthread_barrier_init(&s.start, NULL, s.threads);
    if (rc == 0)
        rc = pthread_barrier_init(&s.end, NULL, s.threads);
    if (rc != 0)
        fatal("smp: pthread_barrier_init: %s", strerror(rc));

    uint64_t now = heartbeat_ready_with(hb, "smp", add_ready, &p);
    STORE(&s.sh->last_progress_ns, now);

    /* Fork while there is only one thread. */
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        fatal("smp: pipe: %s", strerror(errno));
    p.pid[0] = fork_pinned(s.sh, p.cpus.id[0], fds[1], fds[0], true);
    p.pid[1] = fork_pinned(s.sh, p.cpus.id[1 % p.cpus.n], fds[0], fds[1], false);
    if (close(fds[0]) < 0 || close(fds[1]) < 0)
        fatal("smp: close pipe: %s", strerror(errno));
    start_workers(&s, &p.cpus);

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
    __atomic_store_n(&s.stop_requested, true, __ATOMIC_RELEASE);
    for (unsigned i = 0; i < s.threads; i++) {
        rc = pthread_join(s.w[i].tid, NULL);
        if (rc != 0)
            fatal("smp: pthread_join: %s", strerror(rc));
    }
    for (unsigned i = 0; i < 2; i++)
        if (p.pid[i])
            kill(p.pid[i], SIGKILL);
    reap_children(&p, true);
}

/*
 * Godwit guest init (PID 1).
 *
 * Mounts the pseudo file systems, reads the workload and its parameters from
 * /proc/cmdline, runs the workload (which prints READY, heartbeats and DONE
 * on the console) and powers the VM off when it returns. PID 1 must never
 * exit (the kernel would panic), so every way out, including a crash of
 * init itself, ends in power_off().
 *
 * Not PID 1 (a test run on some host): no mounts, the command line is taken
 * from argv, and power_off() just exits.
 */
#define _GNU_SOURCE /* REG_PC / REG_RIP in ucontext_t */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <ucontext.h>
#include <unistd.h>

#include "init.h"
#include "params.h"
#include "report.h"
#include "workloads.h"

static const struct workload {
    const char *name;
    void (*run)(struct heartbeat *hb);
} workloads[] = {
    {"idle", idle_run},
    {"memtouch", memtouch_run},
    {"quicksort", quicksort_run},
    {"alloc-free", allocfree_run},
    {"smp", smp_run},
    {"netserve", netserve_run},
    {"diskcheck", diskcheck_run},
};

static bool is_init;

noreturn void power_off(void)
{
    if (!is_init)
        exit(0);
    sync();
    reboot(RB_POWER_OFF);
    for (;;) /* power off failed: still never exit */
        pause();
}

noreturn void fatal(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    emit_error("%s", msg);
    power_off();
}

/* Writes v as 16 hex digits at out (async-signal-safe). */
static void hex16(char *out, uint64_t v)
{
    for (int i = 15; i >= 0; i--, v >>= 4)
        out[i] = "0123456789abcdef"[v & 15];
}

/* A crash of init would panic the kernel; say what happened (signal, the
 * faulting address and the pc) and power off. Only async-signal-safe calls
 * here. */
static void on_crash(int sig, siginfo_t *info, void *uctx)
{
    char line[] = "GODWIT ERROR {\"error\":\"init crashed with signal 00 at 0x0000000000000000 pc 0x0000000000000000\"}\n";
    char *digits = strstr(line, "00 at");
    digits[0] = (char)('0' + sig / 10 % 10);
    digits[1] = (char)('0' + sig % 10);
    hex16(strstr(line, "at 0x") + 5, (uint64_t)(uintptr_t)info->si_addr);
    uint64_t pc = 0;
#if defined(__riscv)
    pc = ((ucontext_t *)uctx)->uc_mcontext.__gregs[REG_PC];
#elif defined(__x86_64__)
    pc = (uint64_t)((ucontext_t *)uctx)->uc_mcontext.gregs[REG_RIP];
#else
    (void)uctx;
#endif
    hex16(strstr(line, "pc 0x") + 5, pc);
    if (write(STDOUT_FILENO, line, sizeof line - 1) < 0) {
        /* nothing else to try */
    }
    /* The mappings, to place the pc (open/read/write are async-signal-safe). */
    int fd = open("/proc/self/maps", O_RDONLY);
    if (fd >= 0) {
        char buf[4096];
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0)
            if (write(STDOUT_FILENO, buf, (size_t)n) < 0)
                break;
        close(fd);
    }
#if defined(__riscv)
    char regs[] = "ra 0x0000000000000000 sp 0x0000000000000000\n";
    hex16(regs + 5, ((ucontext_t *)uctx)->uc_mcontext.__gregs[1]);
    hex16(regs + 27, ((ucontext_t *)uctx)->uc_mcontext.__gregs[2]);
    if (write(STDOUT_FILENO, regs, sizeof regs - 1) < 0) {
        /* nothing else to try */
    }
#endif
    if (is_init)
        reboot(RB_POWER_OFF);
    _exit(128 + sig);
}

static const int crash_signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};

static void set_crash_handlers(void (*handler)(int, siginfo_t *, void *))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    if (handler) {
        sa.sa_sigaction = handler;
        sa.sa_flags = SA_RESETHAND | SA_SIGINFO;
    } else {
        sa.sa_handler = SIG_DFL;
    }
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof crash_signals / sizeof crash_signals[0]; i++)
        sigaction(crash_signals[i], &sa, NULL);
}

void init_child_signals(void)
{
    set_crash_handlers(NULL);
}

/* The kernel opens /dev/console as fd 0-2 for init; if it could not, try again. */
static void ensure_console(void)
{
    if (fcntl(STDOUT_FILENO, F_GETFD) >= 0)
        return;
    int fd = open("/dev/console", O_RDWR | O_NOCTTY);
    if (fd < 0)
        return;
    for (int i = 0; i <= 2; i++)
        if (fd != i)
            dup2(fd, i);
    if (fd > 2)
        close(fd);
}

static void mount_or_warn(const char *src, const char *target, const char *type,
                          const char *data, bool required)
{
    mkdir(target, 0755);
    if (mount(src, target, type, MS_NOSUID, data) == 0 || errno == EBUSY)
        return;
    if (required)
        fatal("mount %s on %s: %s", type, target, strerror(errno));
    fprintf(stderr, "godwit-init: mount %s on %s: %s\n", type, target, strerror(errno));
}

static void mount_filesystems(void)
{
    mount_or_warn("proc", "/proc", "proc", NULL, true); /* we need /proc/cmdline */
    mount_or_warn("sysfs", "/sys", "sysfs", NULL, false);
    mount_or_warn("devtmpfs", "/dev", "devtmpfs", NULL, false);
    mount_or_warn("tmpfs", "/tmp", "tmpfs", "mode=1777", false);
}

static void read_cmdline(char *buf, size_t size)
{
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        fatal("open /proc/cmdline: %s", strerror(errno));
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
}

static void join_args(char *buf, size_t size, int argc, char **argv)
{
    buf[0] = '\0';
    for (int i = 1; i < argc; i++) {
        strncat(buf, argv[i], size - strlen(buf) - 1);
        strncat(buf, " ", size - strlen(buf) - 1);
    }
}

int main(int argc, char **argv)
{
    is_init = getpid() == 1;
    static char cmdline[4096];
    if (is_init) {
        ensure_console();
        set_crash_handlers(on_crash);
        mount_filesystems();
        read_cmdline(cmdline, sizeof cmdline);
    } else {
        join_args(cmdline, sizeof cmdline, argc, argv);
    }
    /* Status lines go out with write(2); keep any stdio output unbuffered too. */
    setvbuf(stdout, NULL, _IONBF, 0);
    /* Timed sleeps (pacing, heartbeats) should wake on time, not up to 50 us late. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);

    params_load(cmdline);
    const char *name = param_raw("godwit.workload");
    if (!name || !*name)
        name = "idle";
    const struct workload *w = NULL;
    for (size_t i = 0; i < sizeof workloads / sizeof workloads[0]; i++)
        if (strcmp(workloads[i].name, name) == 0)
            w = &workloads[i];
    if (!w)
        fatal("unknown workload \"%s\" (known: idle, memtouch, quicksort, alloc-free, smp, netserve, diskcheck)", name);

    struct heartbeat hb;
    uint64_t hb_ms = param_u64("hb_ms", 100, 1, 60000);
    uint64_t duration_s = param_u64("duration_s", 0, 0, 100000000);
    heartbeat_init(&hb, hb_ms, duration_s);
    w->run(&hb);
    power_off();
}

/* What init (main.c) offers the workloads: the ways out. */
#ifndef GODWIT_INIT_H
#define GODWIT_INIT_H

#include <stdnoreturn.h>

/* sync() and power the VM off. Never returns (when not PID 1: exit(0)). */
noreturn void power_off(void);
/* Prints `GODWIT ERROR {"error":"<message>"}` and powers off. */
noreturn void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Restores default signal handling in a forked workload process, whose
 * crash must not power the VM off the way a crash of init does. */
void init_child_signals(void);

#endif

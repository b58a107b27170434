/*
 * Workload parameters: plain `key=value` words of the kernel command line.
 *
 * We read /proc/cmdline ourselves because the kernel passes init neither
 * words containing '.' (godwit.workload=...) nor the ones it consumed. Every
 * parameter a workload reads (value or default) is remembered, so READY can
 * print the exact configuration that ran. A malformed or out-of-range value
 * is fatal: GODWIT ERROR, then power off.
 */
#ifndef GODWIT_PARAMS_H
#define GODWIT_PARAMS_H

#include <stdint.h>

/* Splits a command line into words (double quotes group, as the kernel does). */
void params_load(const char *cmdline);
/* The value of the last `key=value` word, or NULL. Not recorded. */
const char *param_raw(const char *key);
/* A decimal integer in [min, max]; `def` when absent. */
uint64_t param_u64(const char *key, uint64_t def, uint64_t min, uint64_t max);
/* One of `choices` (NULL-terminated); `def` when absent. */
const char *param_choice(const char *key, const char *def, const char *const choices[]);
/* `{"key":value,...}` of every parameter read so far, in reading order. */
const char *params_used_json(void);

#endif

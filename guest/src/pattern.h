/*
 * Page contents a workload can check later, and the PRNG the workloads use.
 *
 * A page written in generation `gen` holds, in the first 64-bit word of each
 * of its 64 cache lines, hash(page index, gen, word index). Generation 0
 * means "never written": fresh anonymous memory, all zero. Checking a page
 * against its expected generation therefore catches lost pages (zero or
 * stale content), pages from the wrong place, and torn pages.
 */
#ifndef GODWIT_PATTERN_H
#define GODWIT_PATTERN_H

#include <stdint.h>

#define PAGE_BYTES 4096u
#define LINE_BYTES 64u
#define WORDS_PER_PAGE (PAGE_BYTES / LINE_BYTES) /* checked words: one per cache line */

/* splitmix64's finalizer: a cheap, well-mixing 64-bit hash. */
static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

/* splitmix64: the PRNG of every workload (fast, any seed is fine). */
static inline uint64_t prng_next(uint64_t *state)
{
    *state += 0x9e3779b97f4a7c15ull;
    return mix64(*state);
}

/* Uniform in [0, n) without division. */
static inline uint64_t prng_below(uint64_t *state, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)prng_next(state) * n) >> 64);
}

/* Word `w` of page `page` in generation `gen` (distinct inputs for pages < 2^26). */
static inline uint64_t pattern_word(uint64_t page, uint32_t gen, unsigned w)
{
    if (gen == 0)
        return 0;
    return mix64((page << 38) ^ ((uint64_t)gen << 6) ^ w);
}

/* Writes generation `gen` of page `page` into `mem` (one page). */
void pattern_write(void *mem, uint64_t page, uint32_t gen);

/* The first mismatching word of a page check. */
struct mismatch {
    unsigned word;
    uint64_t expected;
    uint64_t found;
};

/* Checks `mem` against generation `gen`; returns how many of the
 * WORDS_PER_PAGE words differ and describes the first in *first. */
unsigned pattern_check(const void *mem, uint64_t page, uint32_t gen, struct mismatch *first);

/* Prints `GODWIT CORRUPT {"page":..,"gen":..,"word":..,"expected":..,"found":..,
 * "bad_words":..}` (at most 10 such lines per process). */
void pattern_report(const char *workload, uint64_t page, uint32_t gen, const struct mismatch *m,
                    unsigned bad_words);

#endif

/* Checkable page contents: see pattern.h. */
#include "pattern.h"

#include "report.h"

#define WORD_STRIDE (LINE_BYTES / sizeof(uint64_t))

void pattern_write(void *mem, uint64_t page, uint32_t gen)
{
    uint64_t *p = mem;
    for (unsigned w = 0; w < WORDS_PER_PAGE; w++)
        p[w * WORD_STRIDE] = pattern_word(page, gen, w);
}

unsigned pattern_check(const void *mem, uint64_t page, uint32_t gen, struct mismatch *first)
{
    /* volatile: the compiler must really read what the page holds now, even
     * right after writing it in the same function after inlining. */
    const volatile uint64_t *p = mem;
    unsigned bad = 0;
    for (unsigned w = 0; w < WORDS_PER_PAGE; w++) {
        uint64_t expected = pattern_word(page, gen, w);
        uint64_t found = p[w * WORD_STRIDE];
        if (found != expected && bad++ == 0)
            *first = (struct mismatch){.word = w, .expected = expected, .found = found};
    }
    return bad;
}

void pattern_report(const char *workload, uint64_t page, uint32_t gen, const struct mismatch *m,
                    unsigned bad_words)
{
    if (!corrupt_line_allowed())
        return;
    struct json j;
    json_open(&j);
    json_str(&j, "workload", workload);
    json_u64(&j, "page", page);
    json_u64(&j, "gen", gen);
    json_u64(&j, "word", m->word);
    json_hex(&j, "expected", m->expected);
    json_hex(&j, "found", m->found);
    json_u64(&j, "bad_words", bad_words);
    json_close(&j);
    emit_line("CORRUPT", &j);
}

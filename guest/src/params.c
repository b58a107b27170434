/* Kernel command line parameters: see params.h. */
#include "params.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "init.h"
#include "report.h"

#define MAX_WORDS 256

static char words_buf[4096];
static const char *words[MAX_WORDS];
static int nwords;

/* The "params" object READY prints; grows as workloads read parameters. */
static struct json used;

void params_load(const char *cmdline)
{
    size_t out = 0;
    const char *p = cmdline;
    nwords = 0;
    json_open(&used);
    while (*p && nwords < MAX_WORDS) {
        while (isspace((unsigned char)*p))
            p++;
        if (!*p)
            break;
        words[nwords++] = &words_buf[out];
        bool quoted = false;
        for (; *p && (quoted || !isspace((unsigned char)*p)); p++) {
            if (*p == '"')
                quoted = !quoted;
            else if (out < sizeof words_buf - 1)
                words_buf[out++] = *p;
        }
        if (out < sizeof words_buf)
            words_buf[out++] = '\0';
        else
            words_buf[sizeof words_buf - 1] = '\0';
    }
}

const char *param_raw(const char *key)
{
    size_t klen = strlen(key);
    const char *value = NULL;
    for (int i = 0; i < nwords; i++) /* last one wins, as for the kernel's own */
        if (strncmp(words[i], key, klen) == 0 && words[i][klen] == '=')
            value = words[i] + klen + 1;
    return value;
}

uint64_t param_u64(const char *key, uint64_t def, uint64_t min, uint64_t max)
{
    const char *s = param_raw(key);
    uint64_t v = def;
    if (s) {
        char *end;
        errno = 0;
        unsigned long long parsed = strtoull(s, &end, 10);
        if (!isdigit((unsigned char)*s) || *end || errno || parsed < min || parsed > max)
            fatal("bad parameter %s=%s: want an integer in %" PRIu64 "..%" PRIu64, key, s, min, max);
        v = parsed;
    }
    json_u64(&used, key, v);
    return v;
}

const char *param_choice(const char *key, const char *def, const char *const choices[])
{
    const char *s = param_raw(key);
    if (!s)
        s = def;
    for (int i = 0; choices[i]; i++) {
        if (strcmp(s, choices[i]) == 0) {
            json_str(&used, key, choices[i]);
            return choices[i];
        }
    }
    char want[256] = "";
    for (int i = 0; choices[i]; i++) {
        strncat(want, i ? "|" : "", sizeof want - strlen(want) - 1);
        strncat(want, choices[i], sizeof want - strlen(want) - 1);
    }
    fatal("bad parameter %s=%s: want %s", key, s, want);
}

const char *params_used_json(void)
{
    /* Close a copy, so parameters read later still extend the original. */
    static struct json closed;
    closed = used;
    json_close(&closed);
    return closed.buf;
}

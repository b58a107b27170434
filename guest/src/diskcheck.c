/*
 * diskcheck: a log of checksummed records on a disk, written with a sync
 * after each, and a verifier; together they show that every acknowledged
 * write survives (a migration, a kill of the VM, a reboot).
 *
 * Parameters: dev (/dev/vda, or a regular file), mode (write|verify),
 * record_kb (4), sync (fsync|fdatasync|odirect), seed (1).
 *
 * Record `seq` fills slot `seq`: record_kb KiB at offset seq x record_kb KiB.
 * Its header (little-endian) is
 *   0  magic "GODWITDK"   8  u64 seq   16  u64 seed
 *   24 u32 length (bytes, the whole record)   28 u32 version (1)
 *   32 u64 hash
 * and its body, from byte 40, the words mix64(key + i), i = 0, 1, ...,
 * key = mix64(mix64(seed) ^ seq). hash folds every 64-bit word w of the
 * record, the hash field read as 0: h = 0x9e3779b97f4a7c15, h = mix64(h ^ w).
 *
 * Both modes start by scanning the log (heartbeating meanwhile). A slot is
 * valid (every field and word right), empty (all zero) or invalid. After
 * the last valid slot L: slot L+1 may be invalid (a torn record: torn_tail,
 * not bad) and every slot after it must be empty. Before L, every slot must
 * be valid and hold seq = its slot number. Everything else counts in bad
 * and prints GODWIT CORRUPT {"check":"seq"|"missing"|"garbage",...}.
 * verify scans to the end of the device (file), then prints DONE (it ignores
 * duration_s). write scans until 16 slots past the last valid one, then
 * appends records from slot L+1 on (resumed_from), each made durable before
 * the next: pwrite + fsync, pwrite + fdatasync, or one pwrite on an
 * O_DIRECT|O_DSYNC descriptor. acked_seq is the last record whose sync
 * returned. On a full block device writing stops (phase "full").
 *
 * Progress points: every record written or scan chunk read. max_stall_ms
 * includes I/O waits; fsync_ms_max is the largest sync alone.
 *
 * HB fields: phase (scan|write|full), records (valid records in the log:
 * found + written), last_seq (-1: none), torn_tail, records_per_s and
 * bytes_per_s (scanned or written). In write mode also acked_seq (-1: none),
 * resumed_from (-1 while scanning), fsync_ms_max.
 */
#define _GNU_SOURCE /* O_DIRECT */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "init.h"
#include "params.h"
#include "pattern.h"
#include "report.h"
#include "workloads.h"

#define MAGIC "GODWITDK"
#define VERSION 1
#define HASH_OFF 32
#define BODY_OFF 40
#define SCAN_CHUNK (256 * 1024) /* bytes read per scan step, at least one record */
#define WRITE_LOOKAHEAD 16      /* write mode: empty slots past the log it checks */
#define IO_ALIGN 4096

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "records are little-endian");

enum phase { SCAN, WRITE, FULL };
static const char *const phase_names[] = {"scan", "write", "full"};
enum sync_mode { SYNC_FSYNC, SYNC_FDATASYNC, SYNC_ODIRECT };

struct diskcheck {
    const char *dev;
    int fd;
    bool write_mode;
    enum sync_mode sync;
    uint64_t seed;
    size_t rec;        /* record bytes */
    uint64_t dev_bytes;
    uint64_t slots;    /* slots to scan (whole ones; a file's partial last one too) */
    uint64_t capacity; /* slots a write may fill; UINT64_MAX for a file */
    uint8_t *buf;      /* IO_ALIGN-aligned, `chunk` bytes */
    size_t chunk;
    enum phase phase;

    /* scan */
    uint64_t slot;       /* next slot to look at */
    uint64_t end;        /* slots up to and including the last valid one */
    uint64_t gap;        /* non-valid slots since then */
    bool gap_torn;       /* the first of them is not empty */
    uint64_t garbage;    /* non-empty ones among the others */
    uint64_t garbage_at; /* the first of those */
    const char *gap_why, *garbage_why; /* what was wrong with the first gap / garbage slot */

    uint64_t records, last_seq; /* last_seq valid if records > 0 */
    bool torn_tail;
    uint64_t next_seq, resumed_from;
    bool acked;
    uint64_t acked_seq, sync_max_ns;
    uint64_t bytes, records_at_hb, bytes_at_hb;
    uint64_t bad;
    struct stall stall;
};

static uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static void store64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

static uint64_t body_key(uint64_t seed, uint64_t seq)
{
    return mix64(mix64(seed) ^ seq);
}

static uint64_t record_hash(const uint8_t *r, size_t len)
{
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (size_t off = 0; off < len; off += 8)
        h = mix64(h ^ (off == HASH_OFF ? 0 : load64(r + off)));
    return h;
}

static void record_build(uint8_t *r, size_t len, uint64_t seed, uint64_t seq)
{
    memcpy(r, MAGIC, 8);
    store64(r + 8, seq);
    store64(r + 16, seed);
    uint32_t words[2] = {(uint32_t)len, VERSION};
    memcpy(r + 24, words, 8);
    store64(r + HASH_OFF, 0);
    uint64_t key = body_key(seed, seq);
    for (size_t off = BODY_OFF, i = 0; off < len; off += 8, i++)
        store64(r + off, mix64(key + i));
    store64(r + HASH_OFF, record_hash(r, len));
}

static bool all_zero(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i])
            return false;
    return true;
}

/* NULL if `r` (len bytes read of a slot) holds a valid record, then *seq;
 * else "empty" (all zero) or what is wrong. */
static const char *record_check(const struct diskcheck *d, const uint8_t *r, size_t len, uint64_t *seq)
{
    if (all_zero(r, len))
        return "empty";
    if (len < d->rec)
        return "short";
    if (memcmp(r, MAGIC, 8) != 0)
        return "magic";
    uint32_t words[2];
    memcpy(words, r + 24, 8);
    if (words[0] != d->rec)
        return "length";
    if (words[1] != VERSION)
        return "version";
    if (load64(r + 16) != d->seed)
        return "seed";
    if (load64(r + HASH_OFF) != record_hash(r, len))
        return "hash";
    *seq = load64(r + 8);
    uint64_t key = body_key(d->seed, *seq);
    for (size_t off = BODY_OFF, i = 0; off < len; off += 8, i++)
        if (load64(r + off) != mix64(key + i))
            return "body";
    return NULL;
}

static void report_corrupt(const char *check, uint64_t slot, uint64_t slots, const char *why,
                           uint64_t expected_seq, uint64_t found_seq)
{
    if (!corrupt_line_allowed())
        return;
    struct json j;
    json_open(&j);
    json_str(&j, "workload", "diskcheck");
    json_str(&j, "check", check);
    json_u64(&j, "slot", slot);
    if (why) {
        json_u64(&j, "slots", slots);
        json_str(&j, "first", why);
    } else {
        json_u64(&j, "expected_seq", expected_seq);
        json_u64(&j, "found_seq", found_seq);
    }
    json_close(&j);
    emit_line("CORRUPT", &j);
}

/* ---- scan ------------------------------------------------------------------- */

static void scan_slot(struct diskcheck *d, const uint8_t *r, size_t len)
{
    uint64_t slot = d->slot++, seq = 0;
    const char *why = record_check(d, r, len, &seq);
    if (why) {
        if (d->gap == 0) {
            d->gap_torn = strcmp(why, "empty") != 0;
            d->gap_why = why;
        } else if (strcmp(why, "empty") != 0 && d->garbage++ == 0) {
            d->garbage_at = slot;
            d->garbage_why = why;
        }
        d->gap++;
        return;
    }
    if (d->gap) { /* a hole in the log */
        d->bad += d->gap;
        report_corrupt("missing", d->end, d->gap, d->gap_why, 0, 0);
        d->gap = d->garbage = 0;
    }
    if (seq != slot) {
        d->bad++;
        report_corrupt("seq", slot, 0, NULL, slot, seq);
    }
    d->end = slot + 1;
    d->records++;
    d->last_seq = seq;
}

/* Reads and checks the next chunk of slots; false once the scan is over. */
static bool scan_step(struct diskcheck *d)
{
    if (d->slot >= d->slots || (d->write_mode && d->gap >= WRITE_LOOKAHEAD))
        return false;
    uint64_t n = d->slots - d->slot;
    if (n > d->chunk / d->rec)
        n = d->chunk / d->rec;
    size_t want = (size_t)n * d->rec;
    ssize_t got = pread(d->fd, d->buf, want, (off_t)(d->slot * d->rec));
    if (got < 0)
        fatal("diskcheck: read %s at %llu: %s", d->dev, (unsigned long long)(d->slot * d->rec),
              strerror(errno));
    if (got == 0) { /* a file that shrank: its end */
        d->slots = d->slot;
        return false;
    }
    if (d->slot == 0 && (size_t)got >= BODY_OFF && memcmp(d->buf, MAGIC, 8) == 0) {
        uint32_t len;
        memcpy(&len, d->buf + 24, 4);
        if (len != d->rec || load64(d->buf + 16) != d->seed)
            fatal("diskcheck: %s holds a log of %u-byte records with seed %llu, not record_kb=%zu seed=%llu",
                  d->dev, len, (unsigned long long)load64(d->buf + 16), d->rec / 1024,
                  (unsigned long long)d->seed);
    }
    d->bytes += (uint64_t)got;
    for (size_t off = 0; off < (size_t)got; off += d->rec)
        scan_slot(d, d->buf + off, (size_t)got - off < d->rec ? (size_t)got - off : d->rec);
    return true;
}

static void scan_finish(struct diskcheck *d)
{
    d->torn_tail = d->gap > 0 && d->gap_torn;
    if (d->garbage) {
        d->bad += d->garbage;
        report_corrupt("garbage", d->garbage_at, d->garbage, d->garbage_why, 0, 0);
    }
    d->resumed_from = d->next_seq = d->end;
}

/* ---- write ------------------------------------------------------------------ */

static void write_record(struct diskcheck *d)
{
    uint64_t seq = d->next_seq;
    off_t off = (off_t)(seq * d->rec);
    record_build(d->buf, d->rec, d->seed, seq);
    uint64_t t0 = now_ns();
    for (size_t done = 0; done < d->rec;) {
        ssize_t w = pwrite(d->fd, d->buf + done, d->rec - done, off + (off_t)done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            fatal("diskcheck: write %s at %llu: %s", d->dev, (unsigned long long)off,
                  w < 0 ? strerror(errno) : "no progress");
        done += (size_t)w;
    }
    if (d->sync != SYNC_ODIRECT) { /* O_DSYNC: durable when pwrite returned */
        t0 = now_ns();
        int rc = d->sync == SYNC_FSYNC ? fsync(d->fd) : fdatasync(d->fd);
        if (rc < 0)
            fatal("diskcheck: %s %s: %s", d->sync == SYNC_FSYNC ? "fsync" : "fdatasync", d->dev,
                  strerror(errno));
    }
    uint64_t took = now_ns() - t0;
    if (took > d->sync_max_ns)
        d->sync_max_ns = took;
    d->acked = true;
    d->acked_seq = seq;
    d->next_seq = seq + 1;
    d->records++;
    d->last_seq = seq;
    d->bytes += d->rec;
}

/* ---- setup and loop --------------------------------------------------------- */

static void json_seq(struct json *j, const char *key, bool have, uint64_t v)
{
    if (have)
        json_u64(j, key, v);
    else
        json_raw(j, key, "-1");
}

static void report(struct diskcheck *d, struct heartbeat *hb, uint64_t now, enum beat beat)
{
    double dt = heartbeat_interval_s(hb, now);
    struct json j;
    heartbeat_open(hb, &j, now, d->bad, d->stall.max_ns);
    json_str(&j, "phase", phase_names[d->phase]);
    json_u64(&j, "records", d->records);
    json_seq(&j, "last_seq", d->records > 0, d->last_seq);
    json_u64(&j, "torn_tail", d->torn_tail);
    json_f(&j, "records_per_s", dt > 0 ? (double)(d->records - d->records_at_hb) / dt : 0.0, 1);
    json_f(&j, "bytes_per_s", dt > 0 ? (double)(d->bytes - d->bytes_at_hb) / dt : 0.0, 0);
    if (d->write_mode) {
        json_seq(&j, "acked_seq", d->acked, d->acked_seq);
        json_seq(&j, "resumed_from", d->phase != SCAN, d->resumed_from);
        json_ms(&j, "fsync_ms_max", d->sync_max_ns);
    }
    heartbeat_emit(hb, &j, now, beat);
    d->records_at_hb = d->records;
    d->bytes_at_hb = d->bytes;
}

static void add_ready(struct json *j, void *arg)
{
    const struct diskcheck *d = arg;
    json_str(j, "dev", d->dev);
    json_str(j, "dev_type", d->capacity == UINT64_MAX ? "file" : "block");
    json_u64(j, "dev_bytes", d->dev_bytes);
}

static void open_dev(struct diskcheck *d)
{
    int flags = O_CLOEXEC | (d->write_mode ? O_RDWR | O_CREAT : O_RDONLY);
    if (d->sync == SYNC_ODIRECT)
        flags |= O_DIRECT | O_DSYNC;
    d->fd = open(d->dev, flags, 0644);
    if (d->fd < 0)
        fatal("diskcheck: open %s: %s", d->dev, strerror(errno));
    struct stat st;
    if (fstat(d->fd, &st) < 0)
        fatal("diskcheck: stat %s: %s", d->dev, strerror(errno));
    if (S_ISBLK(st.st_mode)) {
        if (ioctl(d->fd, BLKGETSIZE64, &d->dev_bytes) < 0)
            fatal("diskcheck: BLKGETSIZE64 %s: %s", d->dev, strerror(errno));
        d->slots = d->capacity = d->dev_bytes / d->rec;
    } else if (S_ISREG(st.st_mode)) {
        d->dev_bytes = (uint64_t)st.st_size;
        d->slots = (d->dev_bytes + d->rec - 1) / d->rec;
        d->capacity = UINT64_MAX;
    } else {
        fatal("diskcheck: %s is neither a block device nor a regular file", d->dev);
    }
}

void diskcheck_run(struct heartbeat *hb)
{
    static const char *const modes[] = {"write", "verify", NULL};
    static const char *const syncs[] = {"fsync", "fdatasync", "odirect", NULL};
    struct diskcheck d = {0};
    d.dev = param_raw("dev");
    if (!d.dev || !*d.dev)
        d.dev = "/dev/vda";
    d.write_mode = strcmp(param_choice("mode", "write", modes), "write") == 0;
    d.rec = param_u64("record_kb", 4, 1, 1024) * 1024;
    const char *sync = param_choice("sync", "fsync", syncs);
    d.sync = strcmp(sync, "fsync") == 0 ? SYNC_FSYNC : strcmp(sync, "fdatasync") == 0 ? SYNC_FDATASYNC : SYNC_ODIRECT;
    d.seed = param_u64("seed", 1, 0, UINT64_MAX);
    if (!d.write_mode)
        hb->duration_ns = 0; /* verify runs until it has seen everything */

    open_dev(&d);
    d.chunk = SCAN_CHUNK / d.rec * d.rec;
    if (d.chunk < d.rec)
        d.chunk = d.rec;
    void *buf;
    int rc = posix_memalign(&buf, IO_ALIGN, d.chunk);
    if (rc != 0)
        fatal("diskcheck: posix_memalign %zu: %s", d.chunk, strerror(rc));
    d.buf = buf;
    memset(d.buf, 0, d.chunk);

    uint64_t now = heartbeat_ready_with(hb, "diskcheck", add_ready, &d);
    stall_start(&d.stall, now);
    for (;;) {
        now = now_ns();
        stall_point(&d.stall, now);
        enum beat beat = heartbeat_poll(hb, now);
        if (beat != BEAT_NONE) {
            report(&d, hb, now, beat);
            if (beat == BEAT_DONE)
                break;
        }
        if (d.phase == SCAN && !scan_step(&d)) {
            scan_finish(&d);
            if (!d.write_mode)
                heartbeat_finish(hb, now);
            else
                d.phase = d.next_seq < d.capacity ? WRITE : FULL;
        } else if (d.phase == WRITE) {
            write_record(&d);
            if (d.next_seq >= d.capacity)
                d.phase = FULL;
        } else if (d.phase == FULL) {
            uint64_t wake = heartbeat_wake_ns(hb);
            stall_sleep_until(&d.stall, wake);
            sleep_until_ns(wake);
        }
    }
    free(buf);
    if (close(d.fd) < 0)
        fatal("diskcheck: close %s: %s", d.dev, strerror(errno));
}

/*
 * idle: heartbeats only. The process sleeps on a timer (clock_nanosleep to
 * the next heartbeat) between heartbeats, which tests that timer interrupts
 * keep waking the guest, e.g. after a migration.
 *
 * HB fields: wakeups (timer wakeups so far) and late_ms, the largest
 * oversleep of a wakeup past its due time. max_stall_ms is the same measure
 * (the gap between heartbeats minus hb_ms).
 */
#include "workloads.h"

void idle_run(struct heartbeat *hb)
{
    struct stall late;
    uint64_t wakeups = 0;
    uint64_t now = heartbeat_ready(hb, "idle");
    stall_start(&late, now);
    for (;;) {
        enum beat beat = heartbeat_poll(hb, now);
        if (beat != BEAT_NONE) {
            struct json j;
            heartbeat_open(hb, &j, now, 0, late.max_ns);
            json_u64(&j, "wakeups", wakeups);
            json_ms(&j, "late_ms", late.max_ns);
            heartbeat_emit(hb, &j, now, beat);
            if (beat == BEAT_DONE)
                return;
        }
        uint64_t wake = heartbeat_wake_ns(hb);
        stall_sleep_until(&late, wake);
        sleep_until_ns(wake);
        now = now_ns();
        stall_point(&late, now);
        wakeups++;
    }
}

//! Boot tests: the real Linux guest boots in Godwit to `GODWIT READY` with
//! every workload, and the workloads' own checks report no errors.

mod common;
use common::*;

#[test]
fn memtouch_runs_clean() {
    guest_image();
    let out = run_workload("memtouch", "wws_mb=16 duration_s=6", 120);
    let done = assert_clean_run(&out);
    assert!(
        done["touches"].as_u64().unwrap_or(0) > 4096,
        "memtouch made progress: {done}"
    );
}

#[test]
fn memtouch_random_paced_runs_clean() {
    guest_image();
    let out = run_workload(
        "memtouch",
        "wws_mb=8 order=rand pages_per_s=5000 duration_s=4",
        120,
    );
    let done = assert_clean_run(&out);
    assert!(done["touches"].as_u64().unwrap_or(0) > 1000, "{done}");
}

#[test]
fn quicksort_runs_clean() {
    guest_image();
    let out = run_workload("quicksort", "procs=2 array_mb=1 duration_s=6", 120);
    let done = assert_clean_run(&out);
    assert!(
        done["sorts"].as_u64().unwrap_or(0) >= 2,
        "quicksort sorted: {done}"
    );
}

#[test]
fn idle_timer_sleeps_keep_time() {
    guest_image();
    let out = run_workload("idle", "duration_s=3", 60);
    let done = assert_clean_run(&out);
    // 100 ms heartbeats over 3 s: the timer must fire on time.
    assert!(done["wakeups"].as_u64().unwrap_or(0) >= 25, "{done}");
}

#[test]
fn alloc_free_runs_clean() {
    guest_image();
    let out = run_workload(
        "alloc-free",
        "alloc_mb=32 hold_ms=500 free_ms=500 cycles=2",
        120,
    );
    let done = assert_clean_run(&out);
    assert_eq!(done["cycles"], 2, "{done}");
}

#[test]
fn unknown_workload_is_reported_by_the_guest() {
    guest_image();
    let out = run_workload("no-such-workload", "", 60);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(status_lines(&stdout, "ERROR").len(), 1, "{stdout}");
}

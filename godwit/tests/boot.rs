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

/// The guest boots with 1, 2 and 4 vCPUs and sees that many CPUs; with
/// several, threads on different CPUs hammer AMO counters, LR/SC CAS loops
/// and a futex mutex, and two processes on two CPUs talk through a pipe,
/// every count exact.
fn smp_runs_clean(cpus: u32) {
    guest_image();
    let n = cpus.to_string();
    let out = run_workload_with(&["--cpus", &n], "smp", "duration_s=5 hb_ms=500", 120);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ready = status_lines(&stdout, "READY");
    assert_eq!(ready.len(), 1, "{stdout}");
    assert_eq!(
        ready[0]["cpus_online"], cpus,
        "the guest sees {cpus} CPUs: {}",
        ready[0]
    );
    let done = assert_clean_run(&out);
    assert!(done["rounds"].as_u64().unwrap_or(0) > 10, "{done}");
    assert!(done["pipe_msgs"].as_u64().unwrap_or(0) > 1000, "{done}");
}

#[test]
fn smp_one_vcpu() {
    smp_runs_clean(1);
}

#[test]
fn smp_two_vcpus() {
    smp_runs_clean(2);
}

#[test]
fn smp_four_vcpus() {
    smp_runs_clean(4);
}

#[test]
fn quicksort_on_four_vcpus_runs_clean() {
    guest_image();
    let out = run_workload_with(
        &["--cpus", "4"],
        "quicksort",
        "procs=4 array_mb=1 duration_s=6",
        120,
    );
    let done = assert_clean_run(&out);
    assert!(done["sorts"].as_u64().unwrap_or(0) >= 4, "{done}");
}

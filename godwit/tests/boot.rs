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

/// The guest's early console: the kernel prints from its first moments
/// (before its serial driver probes), so a guest that dies early says why.
#[test]
fn the_kernel_prints_through_its_early_console() {
    guest_image();
    let out = run_workload("idle", "duration_s=1", 60);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("earlycon: ns16550a0 at MMIO")
            && stdout.contains("bootconsole [ns16550a0] enabled"),
        "no early console:\n{}",
        stdout.lines().take(12).collect::<Vec<_>>().join("\n")
    );
    assert_clean_run(&out);
}

/// Exactly as many init environment variables (31 besides HOME and TERM)
/// and arguments (32) as Linux has room for still boot: the limit Godwit
/// checks before booting is the kernel's, not a guess below it.
#[test]
fn the_most_init_words_linux_takes_still_boot() {
    guest_image();
    let mut append = String::from("duration_s=1");
    for i in 1..31 {
        append.push_str(&format!(" w{i}=1"));
    }
    for i in 0..32 {
        append.push_str(&format!(" a{i}"));
    }
    let out = run_workload("idle", &append, 60);
    assert_clean_run(&out);
}

/// A RISC-V Linux `Image` of a few instructions: the header jumps over
/// itself to `code` (32-bit words).
fn tiny_image(dir: &std::path::Path, code: &[u32]) -> std::path::PathBuf {
    let mut v = vec![0u8; 4096];
    // jal x0, 64: over the 64-byte header.
    v[0..4].copy_from_slice(&0x0400_006fu32.to_le_bytes());
    v[8..16].copy_from_slice(&(2u64 << 20).to_le_bytes());
    v[16..24].copy_from_slice(&4096u64.to_le_bytes());
    v[48..56].copy_from_slice(b"RISCV\0\0\0");
    v[56..60].copy_from_slice(b"RSC\x05");
    for (i, w) in code.iter().enumerate() {
        v[64 + 4 * i..68 + 4 * i].copy_from_slice(&w.to_le_bytes());
    }
    let p = dir.join("Image");
    std::fs::write(&p, v).unwrap();
    p
}

const JUMP_TO_SELF: u32 = 0x0000_006f;

fn addi(rd: u32, rs1: u32, imm: u32) -> u32 {
    (imm << 20) | (rs1 << 15) | (rd << 7) | 0x13
}

/// A guest that never writes to its console (it spins) is reported on
/// stderr after `--console-watchdog` seconds instead of looking like a hang.
#[test]
fn a_silent_guest_is_reported_by_the_console_watchdog() {
    let (_, initrd) = guest_image();
    let dir = temp_dir("silent");
    let kernel = tiny_image(&dir, &[JUMP_TO_SELF]);
    let mut vm = Running::start(&[
        "run",
        "--mem",
        "64M",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--console-watchdog",
        "1",
    ]);
    let t = std::time::Instant::now();
    let line = vm.wait_for(
        "godwit: the guest has written nothing",
        std::time::Duration::from_secs(20),
    );
    assert!(
        line.contains("in 1 s") && line.contains("died before its console"),
        "{line}"
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t.elapsed()
    );
}

/// An SBI system reset giving "system failure" as its reason ends the VM
/// with status 1 and says so.
#[test]
fn an_sbi_reset_with_a_failure_reason_is_reported() {
    let (_, initrd) = guest_image();
    let dir = temp_dir("srst-fail");
    let (a0, a1, a6, a7) = (10, 11, 16, 17);
    let kernel = tiny_image(
        &dir,
        &[
            // a7 = SRST ("SRST" = 0x53525354), a6 = 0 (system_reset)
            (0x53525 << 12) | (a7 << 7) | 0x37,
            addi(a7, a7, 0x354),
            addi(a6, 0, 0),
            addi(a0, 0, 1), // cold reboot
            addi(a1, 0, 1), // reason: system failure
            0x0000_0073,    // ecall
            JUMP_TO_SELF,
        ],
    );
    let out = std::process::Command::new("timeout")
        .arg("30")
        .arg(env!("CARGO_BIN_EXE_godwit"))
        .args(["run", "--mem", "64M", "--kernel", kernel.to_str().unwrap()])
        .args(["--initrd", initrd.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("reporting a system failure"), "{err}");
}

//! VM state: pause/resume, snapshot to a file and restore in a fresh
//! process (integrity and timers checked from inside the guest), the
//! control socket's error handling, the balloon's free page reporting, and
//! the dirty-rate measurement.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

/// Boots `workload`, snapshots it while it runs, quits, restores the
/// snapshot in a new process and checks the guest carries on cleanly.
fn snapshot_and_restore(name: &str, workload: &str, append: &str) {
    guest_image();
    let dir = temp_dir(name);
    let sock = dir.join("ctl.sock");
    let snap = dir.join("vm.snap");
    let s = sock.to_str().unwrap();
    let mut vm = Running::start(&[
        "run",
        "--mem",
        "256M",
        "--control",
        s,
        "--workload",
        workload,
        "--append",
        append,
    ]);
    vm.wait_for("GODWIT READY", Duration::from_secs(60));
    for _ in 0..3 {
        vm.wait_for("GODWIT HB", Duration::from_secs(30));
    }
    let reply = qmp(&sock, "snapshot", json!({ "path": snap.to_str().unwrap() }));
    assert!(
        reply["return"]["pages_stored"].as_u64().unwrap_or(0) > 100,
        "{reply}"
    );
    let before = line_json(&vm.wait_for("GODWIT HB", Duration::from_secs(30)));
    assert_eq!(qmp(&sock, "quit", json!({}))["return"], json!({}));
    assert_eq!(vm.wait_exit(Duration::from_secs(30)), Some(0));

    let mut restored = Running::start(&["run", "--restore", snap.to_str().unwrap()]);
    let first = line_json(&restored.wait_for("GODWIT HB", Duration::from_secs(60)));
    // The restored guest continues from the snapshot: its heartbeat counter
    // goes on from where it was when the snapshot was taken.
    assert!(
        first["seq"].as_u64() <= before["seq"].as_u64(),
        "restored from the snapshot, not later: {first} vs {before}"
    );
    assert!(first["seq"].as_u64().unwrap_or(0) >= 3, "{first}");
    let done = line_json(&restored.wait_for("GODWIT DONE", Duration::from_secs(120)));
    assert_eq!(done["bad"], 0, "integrity after restore: {done}");
    assert_eq!(restored.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(
        restored
            .seen
            .iter()
            .all(|l| !l.starts_with("GODWIT CORRUPT") && !l.starts_with("GODWIT ERROR")),
        "{:?}",
        restored.seen
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn snapshot_restore_memtouch() {
    snapshot_and_restore("mt", "memtouch", "wws_mb=16 duration_s=8");
}

#[test]
fn snapshot_restore_quicksort() {
    snapshot_and_restore("qs", "quicksort", "procs=2 array_mb=1 duration_s=8");
}

#[test]
fn snapshot_restore_idle_timers_keep_working() {
    snapshot_and_restore("idle", "idle", "duration_s=6");
}

#[test]
fn snapshot_restore_alloc_free() {
    snapshot_and_restore(
        "af",
        "alloc-free",
        "alloc_mb=32 hold_ms=500 free_ms=500 cycles=3",
    );
}

#[test]
fn pause_resume_and_bad_commands() {
    guest_image();
    let dir = temp_dir("ctl");
    let sock = dir.join("ctl.sock");
    let mut vm = Running::start(&[
        "run",
        "--mem",
        "256M",
        "--control",
        sock.to_str().unwrap(),
        "--workload",
        "idle",
        "--append",
        "duration_s=6",
    ]);
    vm.wait_for("GODWIT READY", Duration::from_secs(60));
    assert_eq!(
        qmp(&sock, "query-status", json!({}))["return"]["status"],
        "running"
    );
    let stop = qmp(&sock, "stop", json!({}));
    assert!(
        stop["return"]["pause_latency_us"].as_u64().is_some(),
        "{stop}"
    );
    assert_eq!(
        qmp(&sock, "query-status", json!({}))["return"]["status"],
        "paused"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(qmp(&sock, "cont", json!({}))["return"], json!({}));
    // Garbage and unknown commands get error replies; the VM carries on.
    assert_eq!(
        qmp_raw(&sock, "{not json}")["error"]["class"],
        "GenericError"
    );
    assert_eq!(
        qmp(&sock, "no-such-command", json!({}))["error"]["class"],
        "CommandNotFound"
    );
    assert_eq!(
        qmp(&sock, "snapshot", json!({}))["error"]["class"],
        "GenericError"
    );
    let done = line_json(&vm.wait_for("GODWIT DONE", Duration::from_secs(60)));
    assert_eq!(done["bad"], 0);
    // The guest saw the pause as a gap in its own clock (at least 400 ms).
    assert!(
        done["max_stall_ms"].as_f64().unwrap_or(0.0) >= 400.0,
        "{done}"
    );
    assert_eq!(vm.wait_exit(Duration::from_secs(30)), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `calc-dirty-rate` counts a guest's writable working set: memtouch
/// writing 16 MiB as fast as it can shows at least those 4096 pages (and
/// not much more: the kernel's own writes); a migration waits for it.
#[test]
fn calc_dirty_rate_counts_the_working_set() {
    guest_image();
    let dir = temp_dir("dirtyrate");
    let sock = dir.join("ctl.sock");
    let mut vm = start_vm(&sock, "memtouch", "1", "wws_mb=16 pages_per_s=0");
    assert_eq!(
        qmp(&sock, "query-dirty-rate", json!({}))["return"]["status"],
        "unstarted"
    );
    for bad in [
        json!({}),
        json!({"calc-time": 0}),
        json!({"calc-time": "2"}),
    ] {
        let r = qmp(&sock, "calc-dirty-rate", bad.clone());
        assert_eq!(r["error"]["class"], "GenericError", "{bad}: {r}");
    }
    assert_eq!(
        qmp(&sock, "calc-dirty-rate", json!({"calc-time": 2}))["return"],
        json!({})
    );
    assert_eq!(
        qmp(&sock, "query-dirty-rate", json!({}))["return"]["status"],
        "measuring"
    );
    let again = qmp(&sock, "calc-dirty-rate", json!({"calc-time": 2}));
    assert!(again.get("error").is_some(), "{again}");
    let to = format!("127.0.0.1:{}", free_port());
    let m = qmp(&sock, "migrate", json!({ "uri": format!("tcp:{to}") }));
    assert!(
        m["error"]["desc"]
            .as_str()
            .is_some_and(|d| d.contains("calc-dirty-rate")),
        "{m}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let r = loop {
        let r = qmp(&sock, "query-dirty-rate", json!({}));
        if r["return"]["status"] != "measuring" || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("dirty rate: {r}");
    assert_eq!(r["return"]["status"], "measured", "{r}");
    let pages = r["return"]["dirty-pages"].as_u64().unwrap_or(0);
    assert!((4096..4096 + 2048).contains(&pages), "{r}");
    assert!(
        r["return"]["window-ms"].as_f64().unwrap_or(0.0) >= 2000.0,
        "{r}"
    );
    // The guest carries on unharmed.
    clean_beats(&mut vm, 2, "after the measurement");
    assert_eq!(qmp(&sock, "quit", json!({}))["return"], json!({}));
    let _ = vm.wait_exit(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
}

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn free_page_reporting_returns_memory_to_the_host() {
    guest_image();
    let dir = temp_dir("balloon");
    let sock = dir.join("ctl.sock");
    let mut vm = Running::start(&[
        "run",
        "--mem",
        "512M",
        "--control",
        sock.to_str().unwrap(),
        "--workload",
        "alloc-free",
        "--append",
        "alloc_mb=160 hold_ms=3000 free_ms=8000 cycles=1",
    ]);
    vm.wait_for("GODWIT READY", Duration::from_secs(60));
    let pid = vm.child.id();
    // While the 160 MiB are held, the VMM's RSS includes them.
    let mut held = 0;
    let mut held_free_pages = u64::MAX;
    for _ in 0..60 {
        let hb = line_json(&vm.wait_for("GODWIT HB", Duration::from_secs(30)));
        if hb["allocated_mb"] == 160 {
            held = rss_kb(pid);
            held_free_pages = qmp(&sock, "query-balloon", json!({}))["return"]["free_pages"]
                .as_u64()
                .unwrap_or(0);
            break;
        }
    }
    assert!(held > 160 * 1024, "RSS while holding: {held} KiB");
    // After the guest frees them, reporting hands them back within seconds.
    let mut after = held;
    let mut free_pages = 0;
    for _ in 0..100 {
        let hb = line_json(&vm.wait_for("GODWIT HB", Duration::from_secs(30)));
        if hb["allocated_mb"] == 0 {
            after = rss_kb(pid);
            free_pages = qmp(&sock, "query-balloon", json!({}))["return"]["free_pages"]
                .as_u64()
                .unwrap_or(0);
            if after + 100 * 1024 < held {
                break;
            }
        }
    }
    eprintln!("RSS {held} KiB -> {after} KiB; free pages {held_free_pages} -> {free_pages}");
    assert!(
        after + 100 * 1024 < held,
        "RSS did not drop: {held} KiB -> {after} KiB"
    );
    assert!(
        free_pages > held_free_pages + 20_000,
        "free-page count did not grow: {held_free_pages} -> {free_pages}"
    );
    let _ = qmp(&sock, "quit", json!({}));
    let _ = vm.wait_exit(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `godwit run` output: exit status and stderr.
fn run_output(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_godwit"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run godwit");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A snapshot restored on a board that differs (vCPUs, RAM, devices) is
/// refused with the difference named, and so is a snapshot of an older
/// state version; nothing boots.
#[test]
fn snapshot_of_another_board_or_version_is_refused() {
    guest_image();
    let dir = temp_dir("board");
    let sock = dir.join("ctl.sock");
    let snap = dir.join("vm.snap");
    let mut vm = Running::start(&[
        "run",
        "--mem",
        "128M",
        "--control",
        sock.to_str().unwrap(),
        "--workload",
        "idle",
    ]);
    vm.wait_for("GODWIT READY", Duration::from_secs(60));
    let reply = qmp(&sock, "snapshot", json!({ "path": snap.to_str().unwrap() }));
    assert!(reply.get("return").is_some(), "{reply}");
    assert_eq!(qmp(&sock, "quit", json!({}))["return"], json!({}));
    assert_eq!(vm.wait_exit(Duration::from_secs(30)), Some(0));
    let s = snap.to_str().unwrap();

    let (code, err) = run_output(&["run", "--restore", s, "--cpus", "4"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("4 harts here, 2 harts there"), "{err}");
    let (code, err) = run_output(&["run", "--restore", s, "--mem", "256M"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("268435456 bytes of RAM here, 134217728 there"),
        "{err}"
    );
    let (code, err) = run_output(&["run", "--restore", s, "--no-balloon"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("virtio slot 0: nothing here, virtio-balloon there"),
        "{err}"
    );

    // The same file with the state's version word set to 1 (the layout of
    // the file itself is unchanged: magic, header line, state length).
    let mut bytes = std::fs::read(&snap).unwrap();
    let header_end = bytes.iter().skip(16).position(|&b| b == b'\n').unwrap() + 17;
    bytes[header_end + 8..header_end + 12].copy_from_slice(&1u32.to_le_bytes());
    let old = dir.join("old.snap");
    std::fs::write(&old, &bytes).unwrap();
    let (code, err) = run_output(&["run", "--restore", old.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("version 1, from an older Godwit"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

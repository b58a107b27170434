//! Live migration end to end on loopback: a source `godwit run`, a
//! destination `godwit receive`, and `godwit migrate` between them, in every
//! mode and pre-paging strategy. The guest checks its own memory (`bad`),
//! its timers keep firing at the destination, the source exits cleanly, and
//! the report is complete.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Keys every report must carry (DESIGN.md, "What every migration reports").
const REPORT_KEYS: &[&str] = &[
    "mode",
    "prepaging",
    "total_ms",
    "downtime_ms",
    "guest_max_stall_ms",
    "pages_precopy",
    "pages_stop_copy",
    "pages_pushed",
    "pages_demand",
    "pages_zero",
    "pages_free_skipped",
    "duplicate_pages",
    "state_bytes",
    "bytes_sent",
    "network_faults",
    "demands_deferred",
    "fault_latency_us_p50",
    "fault_latency_us_p99",
    "fault_latency_us_max",
    "prepaging_hits",
    "rounds",
    "nonfree_pages",
    "ram_bytes",
];

/// Keys that must be numbers when the workload reports a throughput figure
/// (idle has none). `throughput_during` may be null: a migration shorter
/// than a heartbeat period has no heartbeat while it runs.
const THROUGHPUT_KEYS: &[&str] = &["throughput_before", "throughput_after"];

struct Pair {
    src: Running,
    dst: Running,
    src_sock: std::path::PathBuf,
    dst_sock: std::path::PathBuf,
    to: String,
    dir: std::path::PathBuf,
}

fn start_pair(name: &str, workload: &str, append: &str, receive_extra: &[&str]) -> Pair {
    guest_image();
    let dir = temp_dir(name);
    let src_sock = dir.join("src.sock");
    let dst_sock = dir.join("dst.sock");
    let to = format!("127.0.0.1:{}", free_port());
    let mut src = Running::start(&[
        "run",
        "--mem",
        "256M",
        "--control",
        src_sock.to_str().unwrap(),
        "--workload",
        workload,
        "--append",
        append,
    ]);
    let mut args = vec![
        "receive",
        "--listen",
        &to,
        "--control",
        dst_sock.to_str().unwrap(),
        "--report-after-ms",
        "500",
    ];
    if !receive_extra.iter().any(|a| a.starts_with("--tls")) {
        args.push("--tls-plain");
    }
    args.extend_from_slice(receive_extra);
    let dst = Running::start(&args);
    src.wait_for("GODWIT READY", Duration::from_secs(60));
    // A few heartbeats first: the "before" figures and a settled guest.
    for _ in 0..5 {
        src.wait_for("GODWIT HB", Duration::from_secs(30));
    }
    // Let the guest's free page reporting (a 2 s delay in Linux) run once,
    // so every mode has free pages to skip.
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < end {
        let b = qmp(&src_sock, "query-balloon", json!({}));
        if b["return"]["free_pages"].as_u64().unwrap_or(0) > 1000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Pair {
        src,
        dst,
        src_sock,
        dst_sock,
        to,
        dir,
    }
}

fn migrate_cmd(p: &Pair, mode: &str, prepaging: &str, extra: &[&str]) -> std::process::Output {
    let json = p.dir.join("report.json");
    godwit()
        .args([
            "migrate",
            "--control",
            p.src_sock.to_str().unwrap(),
            "--to",
            &p.to,
            "--mode",
            mode,
            "--prepaging",
            prepaging,
            "--json",
            json.to_str().unwrap(),
            "--timeout",
            "120",
        ])
        .args(if extra.iter().any(|a| a.starts_with("--tls")) {
            &[][..]
        } else {
            &["--tls-plain"][..]
        })
        .args(extra)
        .output()
        .expect("run godwit migrate")
}

/// Migrates and checks everything the issue asks of a completed migration.
fn migrate_and_check(
    name: &str,
    workload: &str,
    append: &str,
    mode: &str,
    prepaging: &str,
) -> Value {
    migrate_and_check_with(name, workload, append, mode, prepaging, &[])
}

/// [`migrate_and_check`] with more `godwit migrate` arguments.
fn migrate_and_check_with(
    name: &str,
    workload: &str,
    append: &str,
    mode: &str,
    prepaging: &str,
    extra: &[&str],
) -> Value {
    let mut p = start_pair(name, workload, append, &[]);
    let last_src = line_json(&p.src.wait_for("GODWIT HB", Duration::from_secs(30)));
    let out = migrate_cmd(&p, mode, prepaging, extra);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "godwit migrate failed: {stderr}");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(p.dir.join("report.json")).expect("report written"),
    )
    .expect("report is JSON");
    for k in REPORT_KEYS {
        let v = report.get(*k).unwrap_or(&Value::Null);
        assert!(!v.is_null(), "report lacks {k} (or it is null): {report}");
    }
    assert!(report.get("throughput_during").is_some(), "{report}");
    if workload != "idle" {
        for k in THROUGHPUT_KEYS {
            assert!(
                report[*k].as_f64().is_some(),
                "{k} is not a number: {report}"
            );
        }
    }
    assert_eq!(report["mode"], json!(mode));
    assert_eq!(report["status"], json!("completed"));
    assert!(report["total_ms"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["downtime_ms"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(report["guest_bad"], json!(0), "{report}");
    // The source VMM exits cleanly once told the VM is gone.
    assert_eq!(p.src.wait_exit(Duration::from_secs(30)), Some(0));
    // The guest runs on at the destination: heartbeats continue from where
    // the source left off, with no corruption, and its timers fire (three
    // 100 ms periods; the first beat may be one that was overdue at resume).
    let mut beats = Vec::new();
    for _ in 0..4 {
        beats.push(line_json(
            &p.dst.wait_for("GODWIT HB", Duration::from_secs(30)),
        ));
    }
    for b in &beats {
        assert_eq!(b["bad"], json!(0), "corruption at the destination: {b}");
    }
    assert!(
        beats[0]["seq"].as_u64().unwrap() > last_src["seq"].as_u64().unwrap(),
        "the destination's guest is not the source's: {beats:?} after {last_src}"
    );
    let t0 = beats[0]["t_ms"].as_f64().unwrap();
    let t3 = beats[3]["t_ms"].as_f64().unwrap();
    assert!(
        (150.0..=5000.0).contains(&(t3 - t0)),
        "heartbeats (timer sleeps) irregular at the destination: {beats:?}"
    );
    if mode == "postcopy" || mode == "hybrid" {
        assert_eq!(report["duplicate_pages"], json!(0), "{report}");
        // The link never broke: every demand request went out when made.
        assert_eq!(report["demands_deferred"], json!(0), "{report}");
        let pending = report["destination"]["pages_pending"].as_u64().unwrap();
        let sent =
            report["pages_pushed"].as_u64().unwrap() + report["pages_demand"].as_u64().unwrap();
        assert_eq!(
            pending, sent,
            "every pending page crosses exactly once: {report}"
        );
        assert_eq!(report["prepaging"], json!(prepaging));
        if mode == "postcopy" {
            // The vCPUs' hot pages went ahead, before the pause, and only they.
            let hot = report["pages_hot_ahead"].as_u64().unwrap();
            assert!(hot > 0, "the hot set goes ahead: {report}");
            assert_eq!(report["pages_precopy"].as_u64().unwrap(), hot, "{report}");
        }
    }
    assert_eq!(qmp(&p.dst_sock, "quit", json!({}))["return"], json!({}));
    assert_eq!(p.dst.wait_exit(Duration::from_secs(30)), Some(0));
    report
}

#[test]
fn stop_and_copy_memtouch() {
    let r = migrate_and_check(
        "sc",
        "memtouch",
        "wws_mb=32 pages_per_s=0",
        "stop-and-copy",
        "none",
    );
    assert!(r["pages_stop_copy"].as_u64().unwrap() > 0, "{r}");
    assert!(
        r["pages_free_skipped"].as_u64().unwrap() > 0,
        "free pages are skipped: {r}"
    );
}

#[test]
fn precopy_memtouch_paced_writer() {
    let r = migrate_and_check(
        "pre",
        "memtouch",
        "wws_mb=16 pages_per_s=5000 order=rand",
        "precopy",
        "none",
    );
    assert!(r["pages_precopy"].as_u64().unwrap() > 0, "{r}");
    assert!(r["rounds"].as_u64().unwrap() >= 1, "{r}");
}

#[test]
fn precopy_auto_converge_throttles_a_busy_writer() {
    // At 40 MB/s a guest rewriting 32 MiB as fast as it can outruns every
    // round: auto-converge must throttle it, and the migration complete
    // with every page right.
    let r = migrate_and_check_with(
        "pre-ac",
        "memtouch",
        "wws_mb=32 pages_per_s=0",
        "precopy",
        "none",
        &["--auto-converge", "--max-bandwidth", "40000000"],
    );
    assert_eq!(r["auto_converge"], json!(true), "{r}");
    let steps = r["throttle_steps"].as_array().expect("throttle steps");
    assert!(!steps.is_empty(), "the throttle was never set: {r}");
    let max = r["throttle_max_permille"].as_u64().unwrap();
    assert!((200..=990).contains(&max), "{r}");
    let permille: Vec<u64> = steps
        .iter()
        .map(|s| s["permille"].as_u64().unwrap())
        .collect();
    assert!(
        permille.windows(2).all(|w| w[0] < w[1]),
        "the throttle only rises: {r}"
    );
    assert!(r["throttled_vcpu_ms"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn precopy_compresses_its_pages_with_lz4_and_zstd() {
    // memtouch writes one word per cache line: its pages shrink a lot, and
    // every one of them must arrive exactly as written.
    for codec in ["lz4", "zstd"] {
        let r = migrate_and_check_with(
            &format!("pre-{codec}"),
            "memtouch",
            "wws_mb=16 pages_per_s=5000 order=rand",
            "precopy",
            "none",
            &["--compress", codec],
        );
        assert_eq!(r["compress"], json!(codec), "{r}");
        let plain = r["compress_plain_bytes"].as_u64().unwrap();
        let wire = r["compress_wire_bytes"].as_u64().unwrap();
        assert!(
            plain >= 16 << 20,
            "the working set went through the packer: {r}"
        );
        assert!(
            wire * 2 < plain,
            "{codec} halves sparse pages at least: {r}"
        );
        assert!(r["bytes_sent"].as_u64().unwrap() < plain, "{r}");
    }
}

#[test]
fn the_bulk_transfer_spreads_over_several_connections() {
    // A busy writer takes several rounds: a page sent again in a later
    // round travels on the same connection as before, so the destination
    // keeps the newest copy; the guest checks every one. Hybrid ends the
    // bulk connections before its post-copy, stop-and-copy sends its one
    // pass over them.
    for (mode, channels, extra) in [
        ("precopy", "4", &["--compress", "zstd"][..]),
        ("hybrid", "3", &[][..]),
        ("stop-and-copy", "2", &[][..]),
    ] {
        let mut args = vec!["--channels", channels];
        args.extend_from_slice(extra);
        let r = migrate_and_check_with(
            &format!("bulk-{mode}"),
            "memtouch",
            "wws_mb=24 pages_per_s=20000 order=rand",
            mode,
            if mode == "hybrid" { "dual" } else { "none" },
            &args,
        );
        assert_eq!(
            r["channels"],
            json!(channels.parse::<u32>().unwrap()),
            "{r}"
        );
        let bulk = r["pages_precopy"].as_u64().unwrap() + r["pages_stop_copy"].as_u64().unwrap();
        assert!(bulk >= 24 << 8, "the working set went in bulk: {r}");
    }
}

#[test]
fn postcopy_none_memtouch() {
    migrate_and_check(
        "pc-none",
        "memtouch",
        "wws_mb=32 pages_per_s=0",
        "postcopy",
        "none",
    );
}

#[test]
fn postcopy_forward_memtouch_random() {
    migrate_and_check(
        "pc-fwd",
        "memtouch",
        "wws_mb=48 pages_per_s=0 order=rand",
        "postcopy",
        "forward",
    );
}

#[test]
fn postcopy_dual_memtouch() {
    let r = migrate_and_check(
        "pc-dual",
        "memtouch",
        "wws_mb=64 pages_per_s=0",
        "postcopy",
        "dual",
    );
    assert!(
        r["network_faults"].as_u64().unwrap() > 0,
        "a busy writer faults: {r}"
    );
}

#[test]
fn postcopy_multi_pivot_quicksort() {
    migrate_and_check(
        "pc-mp",
        "quicksort",
        "procs=2 array_mb=8",
        "postcopy",
        "multi-pivot",
    );
}

#[test]
fn postcopy_dual_idle_timers() {
    migrate_and_check("pc-idle", "idle", "", "postcopy", "dual");
}

#[test]
fn hybrid_memtouch() {
    let r = migrate_and_check(
        "hyb",
        "memtouch",
        "wws_mb=32 pages_per_s=0",
        "hybrid",
        "multi-pivot",
    );
    assert!(r["pages_precopy"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn precopy_idle() {
    migrate_and_check("pre-idle", "idle", "", "precopy", "none");
}

/// A destination that refuses (RAM size) is a clear error at the source,
/// before the guest is paused; the source VM runs on.
#[test]
fn refused_migration_leaves_the_source_running() {
    let mut p = start_pair(
        "refuse",
        "memtouch",
        "wws_mb=8 pages_per_s=2000",
        &["--mem", "128M"],
    );
    let out = migrate_cmd(&p, "postcopy", "dual", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused") && err.contains("134217728"),
        "{err}"
    );
    assert_eq!(p.dst.wait_exit(Duration::from_secs(30)), Some(1));
    let status = qmp(&p.src_sock, "query-status", json!({}));
    assert_eq!(status["return"]["status"], json!("running"), "{status}");
    let hb = line_json(&p.src.wait_for("GODWIT HB", Duration::from_secs(10)));
    assert_eq!(hb["bad"], json!(0));
    assert_eq!(qmp(&p.src_sock, "quit", json!({}))["return"], json!({}));
}

/// A destination whose board differs (vCPU count) refuses in the
/// handshake, naming the difference on both sides; the source runs on.
#[test]
fn other_board_is_refused_naming_the_difference() {
    let mut p = start_pair(
        "board",
        "memtouch",
        "wws_mb=8 pages_per_s=2000",
        &["--cpus", "1"],
    );
    let out = migrate_cmd(&p, "precopy", "none", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused") && err.contains("1 hart here, 2 harts there"),
        "{err}"
    );
    assert_eq!(p.dst.wait_exit(Duration::from_secs(30)), Some(1));
    assert!(
        p.dst
            .seen
            .iter()
            .any(|l| l.contains("1 hart here, 2 harts there")),
        "the destination says why too: {:?}",
        p.dst.seen
    );
    let status = qmp(&p.src_sock, "query-status", json!({}));
    assert_eq!(status["return"]["status"], json!("running"), "{status}");
    assert_eq!(qmp(&p.src_sock, "quit", json!({}))["return"], json!({}));
}

/// The Python interpreter with QEMU's QMP library (`qemu.qmp`), which
/// `scripts/install-deps.sh` puts in a virtualenv in the cache.
fn qmp_python() -> std::path::PathBuf {
    let py = std::env::var_os("GODWIT_QMP_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| godwit_vmm::guest::cache_dir().join("qmp-venv/bin/python3"));
    let ok = std::process::Command::new(&py)
        .args(["-c", "import qemu.qmp"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import qemu.qmp: run scripts/install-deps.sh (or set GODWIT_QMP_PYTHON)",
        py.display()
    );
    py
}

/// QEMU's own QMP client library drives a migration unchanged: greeting,
/// negotiation, query-status, migrate-set-parameters, migrate and
/// query-migrate, and it sees the MIGRATION events.
#[test]
fn qemu_qmp_client_drives_a_migration() {
    let py = qmp_python();
    let mut p = start_pair("qemuqmp", "memtouch", "wws_mb=8 pages_per_s=2000", &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/qmp/drive_migration.py");
    let out = std::process::Command::new(py)
        .args([
            script,
            p.src_sock.to_str().unwrap(),
            &format!("tcp:{}", p.to),
            "postcopy",
        ])
        .output()
        .expect("run the qemu.qmp client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qemu.qmp client failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).expect("client output is JSON");
    assert_eq!(v["status"], json!("completed"), "{v}");
    let events: Vec<(String, Value)> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e[0].as_str().unwrap().to_string(), e[1].clone()))
        .collect();
    for want in ["setup", "postcopy-active", "completed"] {
        assert!(
            events.contains(&("MIGRATION".to_string(), json!(want))),
            "no MIGRATION {want} event: {v}"
        );
    }
    // As QEMU's, the source stays, paused, until told to quit.
    let st = qmp(&p.src_sock, "query-status", json!({}));
    assert_eq!(st["return"]["running"], json!(false), "{st}");
    assert_eq!(qmp(&p.src_sock, "quit", json!({}))["return"], json!({}));
    assert_eq!(p.src.wait_exit(Duration::from_secs(30)), Some(0));
    let hb = line_json(&p.dst.wait_for("GODWIT HB", Duration::from_secs(30)));
    assert_eq!(hb["bad"], json!(0));
    assert_eq!(qmp(&p.dst_sock, "quit", json!({}))["return"], json!({}));
}

/// A cancelled pre-copy leaves the source running unharmed; the
/// destination discards what it got and exits with an error.
#[test]
fn cancelled_precopy_leaves_the_source_running() {
    let mut p = start_pair("cancel", "memtouch", "wws_mb=32 pages_per_s=0", &[]);
    let sock = p.src_sock.clone();
    // 2 MB/s: the first round alone takes many seconds.
    let r = qmp(
        &sock,
        "migrate-set-parameters",
        json!({"mode": "precopy", "max-bandwidth": 2_000_000, "tls-plain": true}),
    );
    assert!(r.get("return").is_some(), "{r}");
    let r = qmp(&sock, "migrate", json!({ "uri": format!("tcp:{}", p.to) }));
    assert!(r.get("return").is_some(), "{r}");
    std::thread::sleep(Duration::from_secs(2));
    let q = qmp(&sock, "query-migrate", json!({}));
    assert_eq!(q["return"]["status"], json!("active"), "{q}");
    // A second migrate while one runs is refused.
    let again = qmp(&sock, "migrate", json!({ "uri": format!("tcp:{}", p.to) }));
    assert_eq!(again["error"]["class"], json!("MigrationActive"), "{again}");
    qmp(&sock, "migrate-cancel", json!({}));
    let q = wait_migration(&sock, &["cancelled", "failed"], Duration::from_secs(30));
    assert_eq!(q["return"]["status"], json!("cancelled"), "{q}");
    assert_ne!(p.dst.wait_exit(Duration::from_secs(30)), Some(0));
    let status = qmp(&sock, "query-status", json!({}));
    assert_eq!(status["return"]["status"], json!("running"), "{status}");
    for _ in 0..3 {
        let hb = line_json(&p.src.wait_for("GODWIT HB", Duration::from_secs(10)));
        assert_eq!(hb["bad"], json!(0));
    }
    assert_eq!(qmp(&sock, "quit", json!({}))["return"], json!({}));
}

/// `migrate-start-postcopy` switches a running pre-copy to post-copy, as
/// in QEMU; the guest arrives intact.
#[test]
fn precopy_switched_to_postcopy() {
    let mut p = start_pair("switch", "memtouch", "wws_mb=32 pages_per_s=0", &[]);
    let sock = p.src_sock.clone();
    let r = qmp(
        &sock,
        "migrate-set-parameters",
        json!({"mode": "precopy", "prepaging": "dual", "max-bandwidth": 20_000_000, "tls-plain": true}),
    );
    assert!(r.get("return").is_some(), "{r}");
    qmp(&sock, "migrate", json!({ "uri": format!("tcp:{}", p.to) }));
    std::thread::sleep(Duration::from_millis(500));
    let r = qmp(&sock, "migrate-start-postcopy", json!({}));
    assert!(r.get("return").is_some(), "{r}");
    let q = wait_migration(
        &sock,
        &["completed", "failed", "cancelled"],
        Duration::from_secs(60),
    );
    assert_eq!(q["return"]["status"], json!("completed"), "{q}");
    let report = &q["return"]["report"];
    assert!(
        report["pages_pushed"].as_u64().unwrap() + report["pages_demand"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(report["duplicate_pages"], json!(0), "{report}");
    assert_eq!(report["demands_deferred"], json!(0), "{report}");
    assert_eq!(qmp(&sock, "quit", json!({}))["return"], json!({}));
    assert_eq!(p.src.wait_exit(Duration::from_secs(30)), Some(0));
    for _ in 0..3 {
        let hb = line_json(&p.dst.wait_for("GODWIT HB", Duration::from_secs(30)));
        assert_eq!(hb["bad"], json!(0), "{hb}");
    }
    assert_eq!(qmp(&p.dst_sock, "quit", json!({}))["return"], json!({}));
}

fn tls_identities(dir: &std::path::Path) -> (String, String, String) {
    let a = dir.join("tls-a");
    let b = dir.join("tls-b");
    let evil = dir.join("tls-evil");
    let gen = |args: &[&str]| {
        let out = godwit()
            .arg("tls-gen")
            .args(args)
            .output()
            .expect("tls-gen");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    gen(&[a.to_str().unwrap()]);
    gen(&[b.to_str().unwrap(), "--ca", a.to_str().unwrap()]);
    gen(&[evil.to_str().unwrap()]);
    let s = |p: std::path::PathBuf| p.to_str().unwrap().to_string();
    (s(a), s(b), s(evil))
}

/// Mutual TLS: a migration over TLS completes intact; the report says so.
fn migrate_over_tls(name: &str, mode: &str) {
    let dir = temp_dir(&format!("{name}-ids"));
    let (a, b, _) = tls_identities(&dir);
    let mut p = start_pair(
        name,
        "memtouch",
        "wws_mb=16 pages_per_s=0",
        &["--tls-dir", &b],
    );
    let out = migrate_cmd(&p, mode, "dual", &["--tls-dir", &a]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(p.dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["security"], json!("TLS"), "{report}");
    assert_eq!(report["guest_bad"], json!(0), "{report}");
    assert_eq!(p.src.wait_exit(Duration::from_secs(30)), Some(0));
    let hb = line_json(&p.dst.wait_for("GODWIT HB", Duration::from_secs(30)));
    assert_eq!(hb["bad"], json!(0));
    assert_eq!(qmp(&p.dst_sock, "quit", json!({}))["return"], json!({}));
}

#[test]
fn postcopy_over_tls() {
    migrate_over_tls("tls-post", "postcopy");
}

/// Stop-and-copy streams megabytes per write: more than rustls buffers.
#[test]
fn stop_and_copy_over_tls() {
    migrate_over_tls("tls-sc", "stop-and-copy");
}

/// A source whose certificate is from another CA is refused during the
/// TLS handshake, with a clear error on both sides, before anything moves;
/// so is a source speaking plain TCP to a TLS destination, and a migration
/// that asks for neither TLS nor plain TCP.
#[test]
fn unauthenticated_sources_are_refused() {
    let dir = temp_dir("tls-ids-evil");
    let (_, b, evil) = tls_identities(&dir);
    let mut p = start_pair(
        "tls-evil",
        "memtouch",
        "wws_mb=8 pages_per_s=2000",
        &["--tls-dir", &b],
    );
    let out = migrate_cmd(&p, "postcopy", "dual", &["--tls-dir", &evil]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TLS handshake") && err.contains("keeps running"),
        "{err}"
    );
    let out = migrate_cmd(&p, "precopy", "none", &[]);
    assert!(
        !out.status.success(),
        "plain TCP to a TLS destination must fail"
    );
    let out = godwit()
        .args([
            "migrate",
            "--control",
            p.src_sock.to_str().unwrap(),
            "--to",
            &p.to,
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "neither --tls-dir nor --tls-plain"
    );
    qmp(
        &p.src_sock,
        "migrate-set-parameters",
        json!({"tls-plain": false, "tls-creds": ""}),
    );
    let r = qmp(
        &p.src_sock,
        "migrate",
        json!({"uri": format!("tcp:{}", p.to)}),
    );
    let desc = r["error"]["desc"].as_str().unwrap_or_default().to_string();
    assert!(desc.contains("TLS credentials"), "{r}");
    // The source VM is untouched, and the destination still waits.
    assert_eq!(
        qmp(&p.src_sock, "query-status", json!({}))["return"]["status"],
        json!("running")
    );
    let hb = line_json(&p.src.wait_for("GODWIT HB", Duration::from_secs(10)));
    assert_eq!(hb["bad"], json!(0));
    assert!(
        p.dst.child.try_wait().unwrap().is_none(),
        "the destination gave up on a stray peer"
    );
    assert_eq!(qmp(&p.src_sock, "quit", json!({}))["return"], json!({}));
}

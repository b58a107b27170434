//! Failures around a migration: either VMM dying before the switch, and a
//! soak that moves one VM back and forth in every mode.

mod common;
use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn source(sock: &Path, append: &str) -> Running {
    let mut vm = Running::start(&[
        "run",
        "--mem",
        "256M",
        "--control",
        sock.to_str().unwrap(),
        "--workload",
        "memtouch",
        "--append",
        append,
    ]);
    vm.wait_for("GODWIT READY", Duration::from_secs(60));
    for _ in 0..3 {
        vm.wait_for("GODWIT HB", Duration::from_secs(30));
    }
    vm
}

fn receiver(to: &str, sock: &Path) -> Running {
    Running::start(&[
        "receive",
        "--listen",
        to,
        "--control",
        sock.to_str().unwrap(),
        "--tls-plain",
        "--report-after-ms",
        "300",
    ])
}

/// Starts a slow pre-copy (2 MB/s) and waits until it is under way.
fn start_slow_precopy(sock: &Path, to: &str) {
    let r = qmp(
        sock,
        "migrate-set-parameters",
        json!({"mode": "precopy", "max-bandwidth": 2_000_000, "tls-plain": true}),
    );
    assert!(r.get("return").is_some(), "{r}");
    let r = qmp(sock, "migrate", json!({ "uri": format!("tcp:{to}") }));
    assert!(r.get("return").is_some(), "{r}");
    std::thread::sleep(Duration::from_millis(1500));
    let q = qmp(sock, "query-migrate", json!({}));
    assert_eq!(q["return"]["status"], json!("active"), "{q}");
}

fn wait_status(sock: &Path, want: &[&str]) -> String {
    let end = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let q = qmp(sock, "query-migrate", json!({}));
        let s = q["return"]["status"].as_str().unwrap_or("").to_string();
        if want.contains(&s.as_str()) || std::time::Instant::now() > end {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The destination VMM killed during pre-copy: the source fails the
/// migration and its VM runs on, intact.
#[test]
fn destination_killed_during_precopy() {
    guest_image();
    let dir = temp_dir("kill-dst");
    let (ss, ds) = (dir.join("src.sock"), dir.join("dst.sock"));
    let to = format!("127.0.0.1:{}", free_port());
    let mut src = source(&ss, "wws_mb=32 pages_per_s=0");
    let mut dst = receiver(&to, &ds);
    std::thread::sleep(Duration::from_millis(300));
    start_slow_precopy(&ss, &to);
    dst.child.kill().unwrap();
    let _ = dst.child.wait();
    assert_eq!(wait_status(&ss, &["failed", "completed"]), "failed");
    let q = qmp(&ss, "query-migrate", json!({}));
    assert!(q["return"]["error"].as_str().is_some(), "{q}");
    assert_eq!(
        qmp(&ss, "query-status", json!({}))["return"]["status"],
        json!("running")
    );
    for _ in 0..3 {
        let hb = line_json(&src.wait_for("GODWIT HB", Duration::from_secs(10)));
        assert_eq!(hb["bad"], json!(0), "{hb}");
    }
    assert_eq!(qmp(&ss, "quit", json!({}))["return"], json!({}));
    assert_eq!(src.wait_exit(Duration::from_secs(30)), Some(0));
}

/// The source VMM killed during pre-copy: the destination, which never
/// ran the VM, discards what it got and exits with an error.
#[test]
fn source_killed_during_precopy() {
    guest_image();
    let dir = temp_dir("kill-src");
    let (ss, ds) = (dir.join("src.sock"), dir.join("dst.sock"));
    let to = format!("127.0.0.1:{}", free_port());
    let mut src = source(&ss, "wws_mb=32 pages_per_s=0");
    let mut dst = receiver(&to, &ds);
    std::thread::sleep(Duration::from_millis(300));
    start_slow_precopy(&ss, &to);
    src.child.kill().unwrap();
    let _ = src.child.wait();
    assert_eq!(dst.wait_exit(Duration::from_secs(90)), Some(1));
    assert!(
        !dst.seen.iter().any(|l| l.starts_with("GODWIT HB")),
        "the destination must never have run the guest"
    );
}

/// One VM moves back and forth between two "hosts" (loopback ports) in
/// every mode, with its integrity checker on throughout. Each hop's source
/// VMM exits cleanly; at the end no VMM is left.
#[test]
fn soak_back_and_forth_in_every_mode() {
    guest_image();
    let dir = temp_dir("soak");
    let hops = [
        ("postcopy", "dual"),
        ("precopy", "none"),
        ("stop-and-copy", "none"),
        ("hybrid", "multi-pivot"),
        ("postcopy", "forward"),
        ("postcopy", "none"),
        ("precopy", "none"),
        ("postcopy", "multi-pivot"),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let mut sock: PathBuf = dir.join("vm0.sock");
    let mut cur = source(&sock, "wws_mb=24 pages_per_s=0 order=rand");
    let mut last_seq = 0;
    for (i, (mode, prepaging)) in hops.iter().enumerate() {
        assert!(
            std::time::Instant::now() < deadline,
            "soak over its time budget"
        );
        let next_sock = dir.join(format!("vm{}.sock", i + 1));
        let to = format!("127.0.0.1:{}", free_port());
        let mut next = receiver(&to, &next_sock);
        std::thread::sleep(Duration::from_millis(200));
        let out = godwit()
            .args([
                "migrate",
                "--control",
                sock.to_str().unwrap(),
                "--to",
                &to,
                "--mode",
                mode,
                "--prepaging",
                prepaging,
                "--tls-plain",
                "--timeout",
                "120",
            ])
            .output()
            .expect("godwit migrate");
        assert!(
            out.status.success(),
            "hop {i} ({mode}/{prepaging}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            cur.wait_exit(Duration::from_secs(30)),
            Some(0),
            "hop {i}: the source VMM did not exit cleanly"
        );
        for _ in 0..3 {
            let hb = line_json(&next.wait_for("GODWIT HB", Duration::from_secs(30)));
            assert_eq!(hb["bad"], json!(0), "hop {i} ({mode}): corruption {hb}");
            let seq = hb["seq"].as_u64().unwrap();
            assert!(seq > last_seq, "hop {i}: heartbeats went backwards");
            last_seq = seq;
        }
        cur = next;
        sock = next_sock;
    }
    assert_eq!(qmp(&sock, "quit", json!({}))["return"], json!({}));
    assert_eq!(cur.wait_exit(Duration::from_secs(30)), Some(0));
    eprintln!(
        "soak: {} migrations completed, last heartbeat {last_seq}",
        hops.len()
    );
}

//! Failures around a migration: either VMM dying before the switch, and a
//! soak that moves one VM back and forth in every mode.

mod common;
use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn source(sock: &Path, append: &str) -> Running {
    start_vm(sock, "memtouch", "1", append)
}

fn receiver(to: &str, sock: &Path) -> Running {
    start_receiver(to, sock)
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

/// A source and a destination with a slow pre-copy between them under way.
fn slow_precopy_pair(name: &str) -> (Running, Running, PathBuf) {
    guest_image();
    let dir = temp_dir(name);
    let (ss, ds) = (dir.join("src.sock"), dir.join("dst.sock"));
    let to = format!("127.0.0.1:{}", free_port());
    let src = source(&ss, "wws_mb=32 pages_per_s=0");
    let dst = receiver(&to, &ds);
    std::thread::sleep(Duration::from_millis(300));
    start_slow_precopy(&ss, &to);
    (src, dst, ss)
}

fn wait_status(sock: &Path, want: &[&str]) -> String {
    let q = wait_migration(sock, want, Duration::from_secs(60));
    q["return"]["status"].as_str().unwrap_or("").to_string()
}

/// The destination VMM killed during pre-copy: the source fails the
/// migration and its VM runs on, intact.
#[test]
fn destination_killed_during_precopy() {
    let (mut src, mut dst, ss) = slow_precopy_pair("kill-dst");
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
    let (mut src, mut dst, _) = slow_precopy_pair("kill-src");
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

/// The link breaks in the middle of a post-copy: both sides keep their
/// state, the guest waits at the destination only for pages it lacks, and
/// `godwit migrate --resume` over a new link finishes the migration with
/// the guest intact.
#[test]
fn postcopy_survives_a_broken_link() {
    guest_image();
    let dir = temp_dir("pc-recover");
    let (ss, ds) = (dir.join("src.sock"), dir.join("dst.sock"));
    let dst_addr = format!("127.0.0.1:{}", free_port());
    let mut src = source(&ss, "wws_mb=32 pages_per_s=0");
    let mut dst = receiver(&dst_addr, &ds);
    std::thread::sleep(Duration::from_millis(300));
    // 4 MB/s: the push takes several seconds, long enough to cut it.
    let link1 = postcopy_through_relay(
        &ss,
        &dst_addr,
        json!({"mode": "postcopy", "prepaging": "dual", "max-bandwidth": 4_000_000, "tls-plain": true}),
    );
    std::thread::sleep(Duration::from_millis(1500));
    link1.cut();
    assert_eq!(
        wait_status(&ss, &["postcopy-paused", "completed", "failed"]),
        "postcopy-paused"
    );
    // The destination keeps the VM (it has not exited) while the link is down.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        dst.child.try_wait().unwrap().is_none(),
        "the destination gave up"
    );
    let link2 = Relay::start(&dst_addr);
    let out = godwit()
        .args([
            "migrate",
            "--control",
            ss.to_str().unwrap(),
            "--to",
            &format!("127.0.0.1:{}", link2.port),
            "--resume",
            "--tls-plain",
            "--json",
            dir.join("report.json").to_str().unwrap(),
        ])
        .output()
        .expect("godwit migrate --resume");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["recoveries"], json!(1), "{report}");
    assert_eq!(report["destination"]["recoveries"], json!(1), "{report}");
    assert_eq!(report["duplicate_pages"], json!(0), "{report}");
    assert_eq!(src.wait_exit(Duration::from_secs(30)), Some(0));
    clean_beats(&mut dst, 5, "after recovery");
    assert_eq!(qmp(&ds, "quit", json!({}))["return"], json!({}));
    assert_eq!(dst.wait_exit(Duration::from_secs(30)), Some(0));
    link2.cut();
}

/// A "destination" that accepts and then says nothing: the source gives up
/// with a clear error within the handshake timeout, its VM unharmed, and
/// failed attempts leave no file descriptor behind in the source VMM.
#[test]
fn a_stalling_peer_is_a_clear_error_and_leaks_nothing() {
    guest_image();
    let dir = temp_dir("stall");
    let ss = dir.join("src.sock");
    let mut src = source(&ss, "wws_mb=8 pages_per_s=2000");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let to = silent.local_addr().unwrap().to_string();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h2 = held.clone();
    std::thread::spawn(move || {
        for s in silent.incoming().take(8).flatten() {
            h2.lock().unwrap().push(s); // accept, never answer
        }
    });
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let pid = src.child.id();
    // One attempt first: threads and lazily opened files settle.
    let attempt = |n: usize| {
        for _ in 0..n {
            let t = std::time::Instant::now();
            let out = godwit()
                .args(["migrate", "--control", ss.to_str().unwrap(), "--to", &to])
                .args(["--mode", "precopy", "--tls-plain"])
                .output()
                .unwrap();
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("handshake") && err.contains("keeps running"),
                "{err}"
            );
            assert!(
                t.elapsed() < Duration::from_secs(25),
                "gave up only after {:?}",
                t.elapsed()
            );
        }
    };
    attempt(1);
    std::thread::sleep(Duration::from_millis(300));
    let before = fds(pid);
    attempt(2);
    std::thread::sleep(Duration::from_millis(300));
    let after = fds(pid);
    assert_eq!(
        before, after,
        "file descriptors leaked by failed migrations"
    );
    assert_eq!(
        qmp(&ss, "query-status", json!({}))["return"]["status"],
        json!("running")
    );
    let hb = line_json(&src.wait_for("GODWIT HB", Duration::from_secs(10)));
    assert_eq!(hb["bad"], json!(0));
    assert_eq!(qmp(&ss, "quit", json!({}))["return"], json!({}));
    drop(held);
}

/// Two TLS identities from one CA (source, destination).
fn tls_ids(dir: &Path) -> (String, String) {
    let (a, b) = (dir.join("tls-a"), dir.join("tls-b"));
    for args in [
        vec![a.to_str().unwrap()],
        vec![b.to_str().unwrap(), "--ca", a.to_str().unwrap()],
    ] {
        let out = godwit().arg("tls-gen").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (
        a.to_str().unwrap().to_string(),
        b.to_str().unwrap().to_string(),
    )
}

/// A TLS destination for `to`.
fn tls_receiver(to: &str, sock: &Path, tls: &str) -> Running {
    Running::start(&[
        "receive",
        "--listen",
        to,
        "--control",
        sock.to_str().unwrap(),
        "--tls-dir",
        tls,
        "--report-after-ms",
        "300",
    ])
}

/// `godwit migrate` over TLS; returns how long it took.
fn tls_migrate(sock: &Path, to: &str, tls: &str, mode: &str) -> Duration {
    let t = std::time::Instant::now();
    let out = godwit()
        .args(["migrate", "--control", sock.to_str().unwrap(), "--to", to])
        .args(["--mode", mode, "--tls-dir", tls, "--timeout", "120"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

/// Anyone who can reach the port may connect: 50 connections that are not
/// a migration (closed at once, garbage, plain TCP to TLS) cost the waiting
/// destination nothing lasting: it logs them (rate-limited) and the real
/// source migrates afterwards.
#[test]
fn fifty_strays_then_a_real_migration() {
    use std::io::Write;
    guest_image();
    let dir = temp_dir("strays");
    let (a, b) = tls_ids(&dir);
    let (ss, ds) = (dir.join("src.sock"), dir.join("dst.sock"));
    let to = format!("127.0.0.1:{}", free_port());
    let mut src = source(&ss, "wws_mb=8 pages_per_s=2000");
    let mut dst = tls_receiver(&to, &ds, &b);
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..50 {
        let mut s = std::net::TcpStream::connect(&to).expect("connect");
        match i % 3 {
            0 => {}
            1 => {
                let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
            }
            _ => {
                let _ = s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]);
            }
        }
        drop(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        dst.child.try_wait().unwrap().is_none(),
        "the destination gave up after stray connections"
    );
    tls_migrate(&ss, &to, &a, "precopy");
    assert_eq!(src.wait_exit(Duration::from_secs(30)), Some(0));
    let hb = line_json(&dst.wait_for("GODWIT HB", Duration::from_secs(30)));
    assert_eq!(hb["bad"], json!(0), "{hb}");
    // The strays not shown are counted, a second after the last line.
    let counted = |l: &String| l.contains("more connections that were not a migration");
    while !dst.seen.iter().any(counted) {
        dst.wait_for("godwit: dropped ", Duration::from_secs(5));
    }
    let logged = dst
        .seen
        .iter()
        .filter(|l| l.contains("dropped a connection"))
        .count();
    assert!(
        (1..10).contains(&logged),
        "strays are logged, at most one line a second: {logged} lines"
    );
    assert_eq!(qmp(&ds, "quit", json!({}))["return"], json!({}));
    assert_eq!(dst.wait_exit(Duration::from_secs(30)), Some(0));
}

/// Connections that connect and say nothing, held open, do not delay the
/// real source: handshakes run side by side, each with its own time limit.
#[test]
fn a_silent_connection_does_not_delay_a_real_migration() {
    guest_image();
    let dir = temp_dir("silent-stray");
    let (a, b) = tls_ids(&dir);
    let (ss, ds) = (dir.join("src.sock"), dir.join("dst.sock"));
    let to = format!("127.0.0.1:{}", free_port());
    let mut src = source(&ss, "wws_mb=8 pages_per_s=2000");
    let mut dst = tls_receiver(&to, &ds, &b);
    std::thread::sleep(Duration::from_millis(300));
    let silent: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(&to).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let took = tls_migrate(&ss, &to, &a, "stop-and-copy");
    // The handshake limit is 10 s: one at a time, this took longer.
    assert!(took < Duration::from_secs(6), "the migration took {took:?}");
    assert_eq!(src.wait_exit(Duration::from_secs(30)), Some(0));
    let hb = line_json(&dst.wait_for("GODWIT HB", Duration::from_secs(30)));
    assert_eq!(hb["bad"], json!(0), "{hb}");
    drop(silent);
    assert_eq!(qmp(&ds, "quit", json!({}))["return"], json!({}));
    assert_eq!(dst.wait_exit(Duration::from_secs(30)), Some(0));
}

/// One command on a control socket with a time limit: `None` if the
/// socket did not answer within `limit` (connect, greeting, reply).
fn qmp_within(
    sock: &Path,
    execute: &str,
    args: serde_json::Value,
    limit: Duration,
) -> Option<serde_json::Value> {
    use std::io::{BufRead, Write};
    let s = std::os::unix::net::UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(limit)).ok()?;
    let mut r = std::io::BufReader::new(s.try_clone().ok()?);
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    writeln!(w, r#"{{"execute":"qmp_capabilities"}}"#).ok()?;
    line.clear();
    r.read_line(&mut line).ok()?;
    if !line.contains("\"return\"") {
        return serde_json::from_str(&line).ok();
    }
    let req = json!({"execute": execute, "arguments": args});
    w.write_all(format!("{req}\n").as_bytes()).ok()?;
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        let v: serde_json::Value = serde_json::from_str(&line).ok()?;
        if v.get("event").is_none() {
            return Some(v);
        }
    }
}

/// A post-copy whose link is cut (source paused at `postcopy-paused`),
/// with the destination's guest touching memory it does not have yet.
fn cut_postcopy(name: &str) -> (Running, Running, PathBuf, PathBuf, PathBuf, String) {
    guest_image();
    let dir = temp_dir(name);
    let (ss, ds) = (dir.join("src.sock"), dir.join("dst.sock"));
    let dst_addr = format!("127.0.0.1:{}", free_port());
    let src = source(&ss, "wws_mb=48 pages_per_s=0 order=rand");
    let dst = receiver(&dst_addr, &ds);
    std::thread::sleep(Duration::from_millis(300));
    let link = postcopy_through_relay(
        &ss,
        &dst_addr,
        json!({"mode": "postcopy", "prepaging": "none", "max-bandwidth": 2_000_000, "tls-plain": true}),
    );
    std::thread::sleep(Duration::from_millis(1000));
    link.cut();
    assert_eq!(
        wait_status(&ss, &["postcopy-paused", "completed", "failed"]),
        "postcopy-paused"
    );
    // Long enough for the guest to block on a page that is not there.
    std::thread::sleep(Duration::from_millis(1000));
    (src, dst, ss, ds, dir, dst_addr)
}

/// While a post-copy's link is down the destination's operator can still
/// inspect, pause and resume it: the control socket answers at once,
/// `query-migrate` says `postcopy-paused`, and many clients do not fill it.
/// After the link is back the migration completes, guest intact.
#[test]
fn the_destination_answers_its_control_socket_while_postcopy_is_paused() {
    let (mut src, mut dst, ss, ds, dir, dst_addr) = cut_postcopy("pc-ctl");
    let quick = Duration::from_secs(3);
    let q = qmp_within(&ds, "query-migrate", json!({}), quick).expect("query-migrate answers");
    assert_eq!(q["return"]["status"], json!("postcopy-paused"), "{q}");
    let q = qmp_within(&ds, "query-status", json!({}), quick).expect("query-status answers");
    assert_eq!(q["return"]["running"], json!(true), "{q}");
    let r = qmp_within(&ds, "stop", json!({}), quick).expect("stop answers");
    eprintln!("stop at the destination: {r}");
    assert!(r.get("return").is_some(), "{r}");
    for _ in 0..20 {
        let q = qmp_within(&ds, "query-status", json!({}), quick).expect("answers after stop");
        assert_eq!(q["return"]["status"], json!("paused"), "{q}");
    }
    let r = qmp_within(&ds, "snapshot", json!({"path": dir.join("x.snap")}), quick)
        .expect("snapshot answers");
    assert!(
        r["error"]["desc"]
            .as_str()
            .unwrap_or("")
            .contains("still arriving"),
        "{r}"
    );
    let r = qmp_within(&ds, "cont", json!({}), quick).expect("cont answers");
    assert!(r.get("return").is_some(), "{r}");
    // The link comes back: the migration finishes, the guest is intact.
    let link2 = Relay::start(&dst_addr);
    let out = godwit()
        .args(["migrate", "--control", ss.to_str().unwrap()])
        .args(["--to", &format!("127.0.0.1:{}", link2.port)])
        .args(["--resume", "--tls-plain"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(src.wait_exit(Duration::from_secs(30)), Some(0));
    let q = qmp_within(&ds, "query-migrate", json!({}), quick).expect("query-migrate");
    assert_eq!(q["return"]["status"], json!("completed"), "{q}");
    for _ in 0..3 {
        let hb = line_json(&dst.wait_for("GODWIT HB", Duration::from_secs(30)));
        assert_eq!(hb["bad"], json!(0), "{hb}");
    }
    assert_eq!(qmp(&ds, "quit", json!({}))["return"], json!({}));
    assert_eq!(dst.wait_exit(Duration::from_secs(30)), Some(0));
}

/// `quit` at the destination while its post-copy link is down ends the
/// destination VMM promptly (the VM is lost there, as the operator asked);
/// the source, paused, keeps its copy.
#[test]
fn quit_ends_a_destination_whose_postcopy_link_is_down() {
    let (_src, mut dst, ss, ds, _dir, _) = cut_postcopy("pc-quit");
    let quick = Duration::from_secs(3);
    let r = qmp_within(&ds, "quit", json!({}), quick).expect("quit answers");
    assert!(r.get("return").is_some(), "{r}");
    let t = std::time::Instant::now();
    let code = dst.wait_exit(Duration::from_secs(15));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(
        code,
        Some(1),
        "a migration that did not finish is a failure"
    );
    assert_eq!(
        qmp(&ss, "query-migrate", json!({}))["return"]["status"],
        json!("postcopy-paused")
    );
}

/// `migrate-cancel` once a post-copy is past its commit point is refused,
/// saying why (the VM runs at the destination and part of its memory is
/// only there), and the migration completes as if it had not been asked.
#[test]
fn migrate_cancel_in_postcopy_is_refused_and_the_migration_completes() {
    guest_image();
    let dir = temp_dir("pc-cancel");
    let (ss, ds) = (dir.join("src.sock"), dir.join("dst.sock"));
    let to = format!("127.0.0.1:{}", free_port());
    let mut src = source(&ss, "wws_mb=32 pages_per_s=0");
    let mut dst = receiver(&to, &ds);
    std::thread::sleep(Duration::from_millis(300));
    let r = qmp(
        &ss,
        "migrate-set-parameters",
        json!({"mode": "postcopy", "prepaging": "dual", "max-bandwidth": 8_000_000, "tls-plain": true}),
    );
    assert!(r.get("return").is_some(), "{r}");
    let r = qmp(&ss, "migrate", json!({ "uri": format!("tcp:{to}") }));
    assert!(r.get("return").is_some(), "{r}");
    assert_eq!(
        wait_status(&ss, &["postcopy-active", "completed", "failed"]),
        "postcopy-active"
    );
    let r = qmp(&ss, "migrate-cancel", json!({}));
    let desc = r["error"]["desc"].as_str().unwrap_or_default();
    assert!(
        desc.contains("commit point") && desc.contains("destination"),
        "{r}"
    );
    assert_eq!(
        wait_status(&ss, &["completed", "failed", "cancelled"]),
        "completed"
    );
    // The VM is gone from here (as `godwit migrate` does, quit the source).
    assert_eq!(qmp(&ss, "quit", json!({}))["return"], json!({}));
    assert_eq!(src.wait_exit(Duration::from_secs(30)), Some(0));
    for _ in 0..3 {
        let hb = line_json(&dst.wait_for("GODWIT HB", Duration::from_secs(30)));
        assert_eq!(hb["bad"], json!(0), "{hb}");
    }
    assert_eq!(qmp(&ds, "quit", json!({}))["return"], json!({}));
    assert_eq!(dst.wait_exit(Duration::from_secs(30)), Some(0));
}

/// `godwit soak`, short: one VM with 2 vCPUs moved 4 times, plain TCP and
/// TLS, every hop checked (guest intact, source VMM gone, the holder's
/// descriptors and RSS stable); per-hop figures and totals.
#[test]
fn godwit_soak_short_run() {
    guest_image();
    let dir = temp_dir("soak-cmd");
    let json_path = dir.join("soak.json");
    let out = godwit()
        .args(["soak", "--hops", "4", "--cpus", "2", "--dir"])
        .arg(&dir)
        .arg("--json")
        .arg(&json_path)
        .output()
        .expect("godwit soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("totals: 4 hops"), "{stdout}");
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let hops = all["hops"].as_array().unwrap();
    assert_eq!(hops.len(), 4, "{all}");
    assert!(hops.iter().all(|h| h["guest_bad"] == json!(0)), "{all}");
    for sec in ["plain", "TLS"] {
        assert!(hops.iter().any(|h| h["security"] == json!(sec)), "{all}");
    }
    assert_eq!(all["failure"], json!(null), "{all}");
    assert!(
        all["totals"]["downtime_ms"]["max"].as_f64().unwrap() > 0.0,
        "{all}"
    );
}

/// `quit` on a destination still waiting for a source ends it at once,
/// with status 0 (nothing was lost).
#[test]
fn quit_ends_a_destination_that_waits_for_a_source() {
    let dir = temp_dir("quit-waiting");
    let ds = dir.join("dst.sock");
    let to = format!("127.0.0.1:{}", free_port());
    let mut dst = receiver(&to, &ds);
    let q = qmp(&ds, "query-migrate", json!({}));
    assert_eq!(q["return"]["status"], json!("none"), "{q}");
    assert_eq!(qmp(&ds, "quit", json!({}))["return"], json!({}));
    assert_eq!(dst.wait_exit(Duration::from_secs(5)), Some(0));
}

//! Disks: the guest's `diskcheck` log on a virtio-blk image survives a
//! reboot (every record whose fsync returned is found again, from a
//! read-only second boot) and a snapshot restored with its disk, and a bad
//! `--drive` is an error before the VM starts.

mod common;
use common::*;
use std::path::Path;
use std::time::Duration;

/// A zeroed image of `bytes` in `dir`.
fn image(dir: &Path, name: &str, bytes: u64) -> String {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(bytes).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn diskcheck_records_survive_a_reboot() {
    guest_image();
    let dir = temp_dir("disk");
    let img = image(&dir, "log.img", 16 << 20);
    let drive = format!("file={img},id=log");
    let out = run_workload_with(&["--drive", &drive], "diskcheck", "duration_s=3", 120);
    let ready = status_lines(&String::from_utf8_lossy(&out.stdout), "READY");
    let done = assert_clean_run(&out);
    assert_eq!(ready[0]["dev"], "/dev/vda", "{}", ready[0]);
    assert_eq!(ready[0]["dev_type"], "block", "{}", ready[0]);
    assert_eq!(ready[0]["dev_bytes"], 16 << 20, "{}", ready[0]);
    let acked = done["acked_seq"].as_i64().unwrap_or(-1);
    assert!(acked >= 100, "records were written and synced: {done}");
    assert_eq!(done["resumed_from"], 0, "a fresh image: {done}");

    // Second boot, the same image read-only: verify finds every record
    // acknowledged (and nothing torn, since the first guest powered off).
    let drive = format!("file={img},readonly,id=log");
    verify_log(&drive, acked, 120, true);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_snapshot_resumes_with_its_disk() {
    guest_image();
    let dir = temp_dir("disksnap");
    let img = image(&dir, "log.img", 64 << 20);
    let drive = format!("file={img}");
    let (ctl, ctl2) = (dir.join("ctl"), dir.join("ctl2"));
    let snap = dir.join("snap");
    let mut vm = Running::start(&[
        "run",
        "--mem",
        "256M",
        "--control",
        ctl.to_str().unwrap(),
        "--drive",
        &drive,
        "--workload",
        "diskcheck",
        "--append",
        "hb_ms=200",
    ]);
    let mut before = -1;
    while before < 50 {
        let hb = line_json(&vm.wait_for("GODWIT HB", Duration::from_secs(60)));
        before = hb["acked_seq"].as_i64().unwrap_or(-1);
    }
    assert!(qmp(&ctl, "stop", serde_json::json!({}))["return"].is_object());
    let r = qmp(&ctl, "snapshot", serde_json::json!({"path": snap}));
    assert!(r["return"].is_object(), "{r}");
    qmp(&ctl, "quit", serde_json::json!({}));
    assert_eq!(vm.wait_exit(Duration::from_secs(30)), Some(0));

    // Without its disk, or with another one, the snapshot is refused.
    let s = snap.to_str().unwrap();
    let err = refused(&["run", "--restore", s]);
    assert!(
        err.contains("virtio slot 1") && err.contains("no disk image"),
        "{err}"
    );
    let err = refused(&[
        "run",
        "--restore",
        s,
        "--drive",
        &format!("{drive},id=other"),
    ]);
    assert!(err.contains("the boards differ"), "{err}");

    // With it, the guest goes on appending where it was.
    let mut vm = Running::start(&[
        "run",
        "--restore",
        s,
        "--control",
        ctl2.to_str().unwrap(),
        "--drive",
        &drive,
    ]);
    let mut after = -1;
    while after < before + 50 {
        let hb = line_json(&vm.wait_for("GODWIT HB", Duration::from_secs(60)));
        assert_eq!(hb["bad"], 0, "{hb}");
        assert_eq!(hb["resumed_from"], 0, "the same run goes on: {hb}");
        after = hb["acked_seq"].as_i64().unwrap_or(-1);
        if hb["phase"] == "full" {
            break;
        }
    }
    assert!(
        after > before,
        "records after the restore: {after} > {before}"
    );
    qmp(&ctl2, "quit", serde_json::json!({}));
    assert_eq!(vm.wait_exit(Duration::from_secs(30)), Some(0));

    verify_log(&format!("{drive},readonly"), after, 120, false);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `godwit run` of diskcheck (256 MiB) on `drive`, control socket `sock`.
fn diskcheck_vm(sock: &Path, drive: &str, append: &str) -> Running {
    Running::start(&[
        "run",
        "--mem",
        "256M",
        "--control",
        sock.to_str().unwrap(),
        "--drive",
        drive,
        "--workload",
        "diskcheck",
        "--append",
        append,
    ])
}

/// `godwit receive` over plain TCP on `to` with `drive`, and `extra`.
fn disk_receiver(to: &str, sock: &Path, drive: &str, extra: &[&str]) -> Running {
    let sock = sock.to_str().unwrap();
    let mut args = vec![
        "receive",
        "--listen",
        to,
        "--tls-plain",
        "--control",
        sock,
        "--drive",
        drive,
    ];
    args.extend_from_slice(extra);
    Running::start(&args)
}

/// A read-only boot of `drive` (a `--drive` spec) verifying the diskcheck
/// log: every record up to `acked` is there, in order; with `untorn`, no
/// torn record after the last.
fn verify_log(drive: &str, acked: i64, timeout_s: u32, untorn: bool) {
    // A heartbeat every 5 ms: a full 16 MiB log scans in under 100 ms, the
    // default period, and the clean-run check wants at least one beat.
    let out = run_workload_with(
        &["--drive", drive],
        "diskcheck",
        "mode=verify hb_ms=5",
        timeout_s,
    );
    let verify = assert_clean_run(&out);
    let last = verify["last_seq"].as_i64().unwrap_or(-1);
    assert!(
        last >= acked,
        "every acknowledged record is there: {verify}"
    );
    assert_eq!(verify["records"].as_i64(), Some(last + 1), "{verify}");
    if untorn {
        assert_eq!(verify["torn_tail"], 0, "{verify}");
    }
}

fn refused(args: &[&str]) -> String {
    let out = godwit()
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawn godwit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        !stdout.contains("GODWIT READY"),
        "{args:?}: the VM must not start"
    );
    stderr
}

#[test]
fn bad_drives_are_refused_before_the_vm_starts() {
    let dir = temp_dir("drives");
    let good = image(&dir, "good.img", 1 << 20);
    let odd = image(&dir, "odd.img", 1000);
    let empty = image(&dir, "empty.img", 0);
    let missing = dir.join("missing.img").to_str().unwrap().to_string();
    let folder = dir.to_str().unwrap().to_string();
    let cases = [
        (
            format!("file={good},format=raw"),
            "unknown option \"format=raw\"",
        ),
        ("readonly".to_string(), "no file=PATH"),
        (
            format!("file={good},id=123456789012345678901"),
            "an id is 1 to 20 bytes",
        ),
        (format!("file={missing}"), "No such file or directory"),
        (format!("file={folder}"), "Is a directory"),
        (
            format!("file={odd}"),
            "is 1000 bytes: a disk must be a non-zero multiple of 512",
        ),
        (format!("file={empty}"), "is 0 bytes"),
    ];
    for (spec, want) in &cases {
        let err = refused(&["run", "--drive", spec, "--workload", "idle"]);
        assert!(err.contains(want), "--drive {spec}: {err}");
        assert!(err.contains(&format!("--drive {spec}")), "{err}");
    }
    // Two drives cannot share an id.
    let err = refused(&[
        "run",
        "--drive",
        &format!("file={good}"),
        "--drive",
        &format!("file={good}"),
    ]);
    assert!(err.contains("id \"good.img\" is taken"), "{err}");

    // An image another process has locked (as another VMM would).
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&good)
        .unwrap();
    f.try_lock().unwrap();
    for spec in [format!("file={good}"), format!("file={good},readonly")] {
        let err = refused(&["run", "--drive", &spec, "--workload", "idle"]);
        assert!(err.contains("is in use") && err.contains(&good), "{err}");
    }
    drop(f);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A guest appending its diskcheck log migrates live with its disk (shared
/// storage: the same image file at both ends): the source flushes and lets
/// go of the image when it pauses, the destination opens it when the state
/// arrives, and the guest goes on appending. Afterwards a read-only boot
/// finds every record whose sync returned, in order, at either end.
fn disk_migration(name: &str, mode: &str) {
    guest_image();
    let dir = temp_dir(name);
    let img = image(&dir, "log.img", 256 << 20);
    let drive = format!("file={img}");
    let (src_sock, dst_sock) = (dir.join("src.sock"), dir.join("dst.sock"));
    let to = format!("127.0.0.1:{}", free_port());
    let mut src = diskcheck_vm(&src_sock, &drive, "hb_ms=200");
    // The destination names the same image: it must not open it while the
    // source holds it.
    let mut dst = disk_receiver(&to, &dst_sock, &drive, &["--report-after-ms", "2000"]);
    let mut before = -1;
    while before < 200 {
        let hb = line_json(&src.wait_for("GODWIT HB", Duration::from_secs(60)));
        // The empty image is scanned first (one beat or more on a busy host).
        if hb["phase"] == "scan" && hb["resumed_from"] == -1 {
            continue;
        }
        assert_eq!(hb["phase"], "write", "{hb}");
        before = hb["acked_seq"].as_i64().unwrap_or(-1);
    }
    let json = dir.join("report.json");
    let out = godwit()
        .args([
            "migrate",
            "--control",
            src_sock.to_str().unwrap(),
            "--to",
            &to,
            "--tls-plain",
            "--mode",
            mode,
            "--json",
            json.to_str().unwrap(),
            "--timeout",
            "120",
        ])
        .output()
        .expect("run godwit migrate");
    assert!(
        out.status.success(),
        "godwit migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("JSON");
    assert_eq!(report["status"], "completed", "{report}");
    // The report holds the destination's first 2 s; on a busy host a sync
    // can take that long (every disk test writes at once), so no beat there
    // is no error. Every beat after it is checked below.
    if report["destination"]["guest"]["beats"] != 0 {
        assert_eq!(report["guest_bad"], 0, "{report}");
    }
    assert_eq!(src.wait_exit(Duration::from_secs(30)), Some(0));
    // At the destination the same run goes on: more acknowledged records,
    // no corruption, no restart of the log.
    let mut after = -1;
    while after < before + 200 {
        let wait = Duration::from_secs(60);
        let Some(hb) = dst.try_wait_for("GODWIT HB", wait) else {
            panic!("{}", hang_dump(&dst, &dst_sock, &dir, wait));
        };
        let hb = line_json(&hb);
        assert_eq!(hb["bad"], 0, "{hb}");
        assert_eq!(hb["resumed_from"], 0, "the same run goes on: {hb}");
        assert_eq!(hb["phase"], "write", "{hb}");
        after = hb["acked_seq"].as_i64().unwrap_or(-1);
    }
    qmp(&dst_sock, "quit", serde_json::json!({}));
    assert_eq!(dst.wait_exit(Duration::from_secs(30)), Some(0));

    verify_log(&format!("{drive},readonly"), after, 180, true);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a test says of a guest that went silent at the destination: its
/// status, and a snapshot kept in `dir` (the VM stopped first) whose rings
/// and interrupt state `snapshot_info` prints.
fn hang_dump(vm: &Running, sock: &Path, dir: &Path, waited: Duration) -> String {
    let status = qmp(sock, "query-status", serde_json::json!({}));
    let stop = qmp(sock, "stop", serde_json::json!({}));
    let snap = dir.join("hang.snap");
    let saved = qmp(sock, "snapshot", serde_json::json!({"path": snap}));
    format!(
        "{}\nstatus before stopping: {status}\nstop: {stop}\nsnapshot: {saved}\n\
         inspect it with `cargo run --release -p godwit-machine --example snapshot_info -- {}`",
        vm.no_line("GODWIT HB", waited),
        snap.display()
    )
}

#[test]
fn disk_migrates_with_precopy() {
    disk_migration("diskmig-pre", "precopy");
}

#[test]
fn disk_migrates_with_postcopy() {
    disk_migration("diskmig-post", "postcopy");
}

#[test]
fn disk_migrates_with_stop_and_copy() {
    disk_migration("diskmig-stop", "stop-and-copy");
}

#[test]
fn disk_migrates_with_hybrid() {
    disk_migration("diskmig-hyb", "hybrid");
}

/// Post-copy with failover and a writable disk: the destination holds the
/// guest's writes until the checkpoint that covers them is safe at the
/// source; killed mid-push, it leaves the image as the checkpoint does, the
/// source resumes the VM from it and the guest goes on appending, and a
/// read-only boot afterwards finds every record whose sync returned.
#[test]
fn a_disk_survives_the_destination_dying_in_a_protected_postcopy() {
    disk_failover("disk-failover", &[]);
}

/// As above, with the destination killed after the source confirmed
/// checkpoints but before their held writes reached the image (it waits
/// 10 minutes to make them): the source, resuming from the last of them,
/// makes those writes itself first, or the guest would miss records it
/// synced (the destination once died in that window under load).
#[test]
fn a_disk_survives_the_destination_dying_before_it_made_confirmed_writes() {
    let r = disk_failover(
        "disk-failover-late",
        &["--x-disk-release-delay-ms", "600000"],
    );
    assert!(
        r["failover"]["disk_writes_replayed"].as_u64().unwrap() > 0,
        "{r}"
    );
}

/// A protected post-copy of a diskcheck guest whose destination (started
/// with `dst_extra`) is killed mid-push; returns the source's report.
fn disk_failover(name: &str, dst_extra: &[&str]) -> serde_json::Value {
    guest_image();
    let dir = temp_dir(name);
    let img = image(&dir, "log.img", 256 << 20);
    let drive = format!("file={img}");
    let (src_sock, dst_sock) = (dir.join("src.sock"), dir.join("dst.sock"));
    let to = format!("127.0.0.1:{}", free_port());
    let mut src = diskcheck_vm(&src_sock, &drive, "hb_ms=100");
    let mut dst = disk_receiver(&to, &dst_sock, &drive, dst_extra);
    let mut before = -1;
    while before < 100 {
        let hb = line_json(&src.wait_for("GODWIT HB", Duration::from_secs(60)));
        before = hb["acked_seq"].as_i64().unwrap_or(-1);
    }
    let r = qmp(
        &src_sock,
        "migrate-set-parameters",
        serde_json::json!({"mode": "postcopy", "max-bandwidth": 4_000_000, "tls-plain": true,
                           "failover-timeout": 1000, "checkpoint-interval": 50}),
    );
    assert!(r.get("return").is_some(), "{r}");
    let r = qmp(
        &src_sock,
        "migrate",
        serde_json::json!({ "uri": format!("tcp:{to}") }),
    );
    assert!(r.get("return").is_some(), "{r}");
    let q = wait_migration(
        &src_sock,
        &["postcopy-active", "failed", "completed"],
        Duration::from_secs(60),
    );
    assert_eq!(q["return"]["status"], "postcopy-active", "{q}");
    // The guest appends at the destination for a while (its writes held).
    let mut at_dst = -1;
    for _ in 0..10 {
        let hb = line_json(&dst.wait_for("GODWIT HB", Duration::from_secs(30)));
        assert_eq!(hb["bad"], 0, "{hb}");
        at_dst = hb["acked_seq"].as_i64().unwrap_or(-1);
    }
    assert!(at_dst > before, "the guest wrote at the destination");
    src.drain();
    dst.child.kill().unwrap();
    assert_eq!(dst.wait_exit(Duration::from_secs(10)), None);
    let q = wait_migration(&src_sock, &["failed", "completed"], Duration::from_secs(30));
    assert_eq!(q["return"]["status"], "failed", "{q}");
    assert_eq!(
        q["return"]["report"]["failover"]["failed_over"], true,
        "{q}"
    );
    src.skip_failover_splice(Duration::from_secs(30));
    let mut after = -1;
    for _ in 0..10 {
        let hb = line_json(&src.wait_for("GODWIT HB", Duration::from_secs(30)));
        assert_eq!(hb["bad"], 0, "corruption after the failover: {hb}");
        after = hb["acked_seq"].as_i64().unwrap_or(-1);
    }
    assert!(
        after > at_dst - 50,
        "the guest went on from the checkpoint: {after}, {at_dst}"
    );
    qmp(&src_sock, "quit", serde_json::json!({}));
    assert_eq!(src.wait_exit(Duration::from_secs(30)), Some(0));
    verify_log(&format!("{drive},readonly"), after, 120, false);
    let _ = std::fs::remove_dir_all(&dir);
    q["return"]["report"].clone()
}

//! Post-copy with failover: the destination sends checkpoints back, and
//! when it dies the VM runs on at the source from the last one; a
//! destination that loses its source stops the VM (fences) before the
//! source may resume it.

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Failover timeout and checkpoint interval of these tests, ms.
const FAILOVER_MS: u64 = 1000;
const CHECKPOINT_MS: u64 = 50;

/// A source VM and a destination with a protected post-copy between them
/// under way.
struct Pair {
    src: Running,
    dst: Running,
    ss: PathBuf,
    ds: PathBuf,
    /// The source's last heartbeat before the migration.
    last_src: u64,
}

fn protected_pair(name: &str, workload: &str, cpus: &str, append: &str) -> Pair {
    guest_image();
    let dir = temp_dir(name);
    let (ss, ds) = (dir.join("src.sock"), dir.join("dst.sock"));
    let to = format!("127.0.0.1:{}", free_port());
    let mut src = start_vm(&ss, workload, cpus, append);
    let last_src = seq_of(&src.wait_for("GODWIT HB", Duration::from_secs(30)));
    let dst = start_receiver(&to, &ds);
    std::thread::sleep(Duration::from_millis(300));
    start_protected_postcopy(&ss, &to);
    Pair {
        src,
        dst,
        ss,
        ds,
        last_src,
    }
}

/// A protected post-copy at 4 MB/s (the push takes several seconds).
fn start_protected_postcopy(sock: &Path, to: &str) {
    let r = qmp(
        sock,
        "migrate-set-parameters",
        json!({"mode": "postcopy", "prepaging": "dual", "max-bandwidth": 4_000_000,
               "tls-plain": true, "failover-timeout": FAILOVER_MS,
               "checkpoint-interval": CHECKPOINT_MS}),
    );
    assert!(r.get("return").is_some(), "{r}");
    let r = qmp(sock, "migrate", json!({ "uri": format!("tcp:{to}") }));
    assert!(r.get("return").is_some(), "{r}");
    let q = wait_migration(
        sock,
        &["postcopy-active", "completed", "failed"],
        Duration::from_secs(60),
    );
    assert_eq!(q["return"]["status"], json!("postcopy-active"), "{q}");
}

fn seq_of(line: &str) -> u64 {
    line_json(line)["seq"]
        .as_u64()
        .expect("a heartbeat has a seq")
}

/// The last heartbeat `r` printed (it has exited: every line is in).
fn last_beat(r: &Running) -> Option<u64> {
    r.seen
        .iter()
        .rev()
        .find(|l| l.starts_with("GODWIT HB"))
        .map(|l| seq_of(l))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum KillAt {
    /// As soon as the source says post-copy is active.
    Switch,
    /// 1.5 s into the push.
    MidPush,
    /// With less than a fifth of the pages still to send.
    NearEnd,
}

/// Kills the destination with SIGKILL at `at` of a protected post-copy of
/// `workload`: the source resumes the VM from the last checkpoint, the
/// guest finds its memory intact and goes on from where the destination
/// left it.
fn destination_dies(name: &str, workload: &str, cpus: &str, append: &str, at: KillAt) {
    let Pair {
        mut src,
        mut dst,
        ss,
        last_src,
        ..
    } = protected_pair(name, workload, cpus, append);
    let first = qmp(&ss, "query-migrate", json!({}))["return"]["pages_remaining"]
        .as_u64()
        .unwrap_or(0);
    match at {
        KillAt::Switch => {}
        KillAt::MidPush => std::thread::sleep(Duration::from_millis(1500)),
        KillAt::NearEnd => {
            let end = Instant::now() + Duration::from_secs(60);
            loop {
                let q = qmp(&ss, "query-migrate", json!({}));
                let left = q["return"]["pages_remaining"].as_u64().unwrap_or(0);
                assert_eq!(q["return"]["status"], json!("postcopy-active"), "{q}");
                if left * 5 < first || Instant::now() > end {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    // What the source printed before its pause is all in by now.
    let mut last_src = last_src;
    while let Ok(l) = src.lines.try_recv() {
        if l.starts_with("GODWIT HB") {
            last_src = seq_of(&l);
        }
    }
    dst.child.kill().unwrap();
    assert_eq!(dst.wait_exit(Duration::from_secs(10)), None, "killed");
    let at_dst = last_beat(&dst);
    let q = wait_migration(&ss, &["failed", "completed"], Duration::from_secs(30));
    assert_eq!(q["return"]["status"], json!("failed"), "{q}");
    let f = &q["return"]["report"]["failover"];
    assert_eq!(f["failed_over"], json!(true), "{q}");
    let from = f["resumed_from_checkpoint"].as_u64().unwrap();
    if at != KillAt::Switch {
        assert!(from >= 1, "no checkpoint reached the source: {q}");
        assert!(f["checkpoint_pages"].as_u64().unwrap() > 0, "{q}");
    }
    assert_eq!(
        qmp(&ss, "query-status", json!({}))["return"]["status"],
        json!("running")
    );
    // The guest goes on at the source: its checks find nothing wrong, and
    // its heartbeats continue from the checkpoint, not from the switch
    // (the first line it completes joins two beats' parts: the one after).
    src.skip_failover_splice(Duration::from_secs(30));
    let first_back = seq_of(&src.wait_for("GODWIT HB", Duration::from_secs(30)));
    assert!(first_back > last_src, "{first_back} after {last_src}");
    if let (Some(d), true) = (at_dst, at != KillAt::Switch) {
        assert!(
            first_back + 10 >= d && first_back <= d + 2,
            "the destination's last beat was {d}, the source goes on at {first_back} \
             (beat {last_src} before the switch)"
        );
    }
    clean_beats(&mut src, 5, "after the failover");
    assert_eq!(qmp(&ss, "quit", json!({}))["return"], json!({}));
    assert_eq!(src.wait_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn destination_killed_just_after_the_switch() {
    destination_dies(
        "fo-switch",
        "memtouch",
        "1",
        "wws_mb=32 pages_per_s=2000",
        KillAt::Switch,
    );
}

#[test]
fn destination_killed_mid_push_with_two_vcpus() {
    destination_dies("fo-mid-smp", "smp", "2", "hb_ms=100", KillAt::MidPush);
}

#[test]
fn destination_killed_mid_push() {
    destination_dies(
        "fo-mid",
        "memtouch",
        "1",
        "wws_mb=32 pages_per_s=2000",
        KillAt::MidPush,
    );
}

#[test]
fn destination_killed_near_the_end() {
    destination_dies(
        "fo-end",
        "memtouch",
        "1",
        "wws_mb=32 pages_per_s=2000",
        KillAt::NearEnd,
    );
}

/// The source stops (SIGSTOP) mid-push: the destination hears nothing,
/// stops the VM for good (fences) and exits with an error; the source,
/// continued, finds the destination gone and resumes the VM itself. The
/// VM never runs in both places.
#[test]
fn a_destination_without_its_source_fences_before_the_source_resumes() {
    let Pair {
        mut src,
        mut dst,
        ss,
        ..
    } = protected_pair("fo-fence", "memtouch", "1", "wws_mb=32 pages_per_s=2000");
    std::thread::sleep(Duration::from_millis(1000));
    let pid = src.child.id().to_string();
    assert!(bounded(5, "kill", &["-STOP", &pid]).status.success());
    let code = dst.wait_exit(Duration::from_secs(20));
    assert!(bounded(5, "kill", &["-CONT", &pid]).status.success());
    assert_eq!(code, Some(1), "the destination must fail");
    assert!(
        dst.seen.iter().any(|l| l.contains("fenced")),
        "the destination says it fenced: {:#?}",
        dst.seen.iter().rev().take(10).collect::<Vec<_>>()
    );
    // It fenced at half the source's timeout (the source, frozen all the
    // while, could not have resumed the VM before).
    let limit = format!("nothing from the source for {} ms", FAILOVER_MS / 2);
    assert!(
        dst.seen.iter().any(|l| l.contains(&limit)),
        "the destination fences at half the timeout: {:#?}",
        dst.seen.iter().rev().take(10).collect::<Vec<_>>()
    );
    let q: Value = wait_migration(&ss, &["failed", "completed"], Duration::from_secs(30));
    assert_eq!(q["return"]["status"], json!("failed"), "{q}");
    assert_eq!(
        q["return"]["report"]["failover"]["failed_over"],
        json!(true)
    );
    src.drain();
    src.skip_failover_splice(Duration::from_secs(30));
    clean_beats(&mut src, 5, "after the failover");
    assert_eq!(qmp(&ss, "quit", json!({}))["return"], json!({}));
    assert_eq!(src.wait_exit(Duration::from_secs(30)), Some(0));
}

/// Failover is refused where it cannot keep its promise, before anything
/// is sent: pre-copy, a timeout shorter than four checkpoints.
#[test]
fn failover_is_refused_for_precopy_and_for_a_timeout_too_short() {
    guest_image();
    let dir = temp_dir("fo-refuse");
    let ss = dir.join("src.sock");
    let to = format!("127.0.0.1:{}", free_port());
    let _src = start_vm(&ss, "memtouch", "1", "wws_mb=8 pages_per_s=100");
    for (params, says) in [
        (
            json!({"mode": "precopy", "failover-timeout": 1000, "tls-plain": true}),
            "needs mode postcopy or hybrid",
        ),
        (
            json!({"mode": "postcopy", "failover-timeout": 100, "checkpoint-interval": 50, "tls-plain": true}),
            "at least 4 checkpoint intervals",
        ),
    ] {
        let r = qmp(&ss, "migrate-set-parameters", params);
        assert!(r.get("return").is_some(), "{r}");
        let r = qmp(&ss, "migrate", json!({ "uri": format!("tcp:{to}") }));
        assert!(r.get("return").is_some(), "{r}");
        let q = wait_migration(&ss, &["failed", "completed"], Duration::from_secs(30));
        assert_eq!(q["return"]["status"], json!("failed"), "{q}");
        let e = q["return"]["error"].as_str().unwrap_or("");
        assert!(e.contains(says), "{e}");
        assert_eq!(
            qmp(&ss, "query-status", json!({}))["return"]["status"],
            json!("running")
        );
    }
}

/// A protected post-copy that nobody disturbs completes as any post-copy:
/// the destination took checkpoints and the source confirmed them, every
/// page crossed once, and the guest runs on at the destination intact.
#[test]
fn a_protected_postcopy_completes_and_reports_its_checkpoints() {
    let Pair {
        mut src,
        mut dst,
        ss,
        ds,
        ..
    } = protected_pair("fo-complete", "memtouch", "2", "wws_mb=32 pages_per_s=2000");
    let q = wait_migration(&ss, &["completed", "failed"], Duration::from_secs(90));
    assert_eq!(q["return"]["status"], json!("completed"), "{q}");
    let r = &q["return"]["report"];
    assert_eq!(r["duplicate_pages"], json!(0), "{r}");
    assert_eq!(r["guest_bad"], json!(0), "{r}");
    let f = &r["failover"];
    assert_eq!(
        (f["armed"].clone(), f["failed_over"].clone()),
        (json!(true), json!(false))
    );
    let c = &r["destination"]["checkpoints"];
    let taken = c["taken"].as_u64().unwrap();
    assert!(taken >= 2, "{c}");
    // The last confirmation may cross the end (the destination closes the
    // fault connection once every page is in).
    let (got, acked) = (
        f["checkpoints"].as_u64().unwrap(),
        c["acked"].as_u64().unwrap(),
    );
    assert!(acked <= got && acked + 1 >= got && got == taken, "{r}");
    assert!(c["pause_us_p50"].as_f64().unwrap() > 0.0, "{c}");
    assert_eq!(qmp(&ss, "quit", json!({}))["return"], json!({}));
    assert_eq!(src.wait_exit(Duration::from_secs(30)), Some(0));
    clean_beats(&mut dst, 5, "at the destination");
    assert_eq!(qmp(&ds, "quit", json!({}))["return"], json!({}));
    assert_eq!(dst.wait_exit(Duration::from_secs(30)), Some(0));
}

/// The link breaks and is back (`--resume`) within the failover timeout:
/// the post-copy goes on and completes at the destination, whose first
/// checkpoint after the break carries everything not confirmed before it.
#[test]
fn a_link_cut_that_heals_within_the_timeout_completes_at_the_destination() {
    guest_image();
    let dir = temp_dir("fo-heal");
    let (ss, ds) = (dir.join("src.sock"), dir.join("dst.sock"));
    let dst_addr = format!("127.0.0.1:{}", free_port());
    let mut src = start_vm(&ss, "memtouch", "1", "wws_mb=32 pages_per_s=2000");
    let mut dst = start_receiver(&dst_addr, &ds);
    std::thread::sleep(Duration::from_millis(300));
    // A longer timeout: the reconnection below must fit in it.
    let link1 = postcopy_through_relay(
        &ss,
        &dst_addr,
        json!({"mode": "postcopy", "prepaging": "dual", "max-bandwidth": 4_000_000,
               "tls-plain": true, "failover-timeout": 8000, "checkpoint-interval": CHECKPOINT_MS}),
    );
    std::thread::sleep(Duration::from_millis(1500));
    link1.cut();
    let q = wait_migration(&ss, &["postcopy-paused", "failed"], Duration::from_secs(30));
    assert_eq!(q["return"]["status"], json!("postcopy-paused"), "{q}");
    let link2 = Relay::start(&dst_addr);
    let r = qmp(
        &ss,
        "migrate",
        json!({ "uri": format!("tcp:127.0.0.1:{}", link2.port), "resume": true }),
    );
    assert!(r.get("return").is_some(), "{r}");
    let q = wait_migration(&ss, &["completed", "failed"], Duration::from_secs(90));
    assert_eq!(q["return"]["status"], json!("completed"), "{q}");
    let r = &q["return"]["report"];
    assert_eq!(r["recoveries"], json!(1), "{r}");
    assert_eq!(r["duplicate_pages"], json!(0), "{r}");
    assert_eq!(r["failover"]["failed_over"], json!(false), "{r}");
    assert!(
        r["destination"]["checkpoints"]["acked"].as_u64().unwrap() >= 2,
        "{r}"
    );
    assert_eq!(qmp(&ss, "quit", json!({}))["return"], json!({}));
    assert_eq!(src.wait_exit(Duration::from_secs(30)), Some(0));
    clean_beats(&mut dst, 5, "after the recovery");
    assert_eq!(qmp(&ds, "quit", json!({}))["return"], json!({}));
    assert_eq!(dst.wait_exit(Duration::from_secs(30)), Some(0));
    link2.cut();
}

/// The destination's host stops answering without closing anything
/// (SIGSTOP, as a hung or partitioned host): the source, hearing nothing
/// for the timeout, resumes the VM; when the destination runs again it
/// finds its source silent, stops the VM for good and exits with an error,
/// and nothing it held back leaves.
#[test]
fn a_silent_destination_is_given_up_and_fences_when_it_wakes() {
    let Pair {
        mut src,
        mut dst,
        ss,
        ..
    } = protected_pair("fo-silent", "memtouch", "1", "wws_mb=32 pages_per_s=2000");
    std::thread::sleep(Duration::from_millis(1000));
    let pid = dst.child.id().to_string();
    assert!(bounded(5, "kill", &["-STOP", &pid]).status.success());
    let stopped = Instant::now();
    let q = wait_migration(&ss, &["failed", "completed"], Duration::from_secs(30));
    let took = stopped.elapsed();
    assert_eq!(q["return"]["status"], json!("failed"), "{q}");
    assert_eq!(
        q["return"]["report"]["failover"]["failed_over"],
        json!(true),
        "{q}"
    );
    assert!(
        took >= Duration::from_millis(FAILOVER_MS - 100),
        "the source gave up after {took:?}, before its timeout"
    );
    src.drain();
    src.skip_failover_splice(Duration::from_secs(30));
    clean_beats(&mut src, 3, "after the failover");
    assert!(bounded(5, "kill", &["-CONT", &pid]).status.success());
    assert_eq!(dst.wait_exit(Duration::from_secs(30)), Some(1));
    assert!(
        dst.seen.iter().any(|l| l.contains("fenced")),
        "the destination says it fenced: {:#?}",
        dst.seen.iter().rev().take(10).collect::<Vec<_>>()
    );
    clean_beats(&mut src, 3, "after the destination fenced");
    assert_eq!(qmp(&ss, "quit", json!({}))["return"], json!({}));
    assert_eq!(src.wait_exit(Duration::from_secs(30)), Some(0));
}

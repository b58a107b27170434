//! The testbed (`godwit testbed`): two namespaces and a tbf-shaped veth
//! link. Measures the link once (a bulk transfer and a 4 KiB ping-pong, by
//! our own probe) and checks that nothing is left behind, also when the
//! measuring process is interrupted with Ctrl-C. Needs root; skipped (with
//! the reason printed) otherwise.

mod common;
use common::godwit;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const RATE_BITS_PER_S: f64 = 1e9;
const PROBE_TO: &str = "10.77.0.2:7711";

/// Why the testbed cannot be built here, if it cannot.
fn cannot_run() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces and tc)".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`ip netns list` fails: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("no `ip` command (iproute2): {e}")),
    }
}

/// Runs a command to completion, killed by `timeout` after `secs`.
fn bounded(secs: u32, program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg(secs.to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn godwit_testbed(args: &[&str]) -> Output {
    let mut all = vec!["testbed"];
    all.extend_from_slice(args);
    bounded(60, env!("CARGO_BIN_EXE_godwit"), &all)
}

fn godwit_namespaces() -> Vec<String> {
    let out = bounded(20, "ip", &["netns", "list"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("godwit-"))
        .map(String::from)
        .collect()
}

/// Tears the testbed down however the test ends.
struct Teardown;

impl Drop for Teardown {
    fn drop(&mut self) {
        let _ = godwit_testbed(&["down"]);
    }
}

/// A child killed and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        assert!(
            Instant::now() < end,
            "process did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn testbed_shapes_the_link_and_cleans_up() {
    // The test command runs as root (CI does); elsewhere this fails with
    // the reason rather than passing without testing anything.
    if let Some(reason) = cannot_run() {
        panic!("the testbed cannot be built here: {reason} (run as root, or skip this test with `--skip testbed`)");
    }
    let _teardown = Teardown;

    // Up, twice: the second must tear down the first (idempotent).
    for _ in 0..2 {
        let up = godwit_testbed(&["up", "--rate", "1gbit"]);
        assert!(
            up.status.success(),
            "testbed up: {}",
            String::from_utf8_lossy(&up.stderr)
        );
    }
    let status = godwit_testbed(&["status"]);
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(status_text.contains("testbed: up"), "{status_text}");
    assert!(status_text.contains("10.77.0.1/24"), "{status_text}");
    assert!(status_text.contains("10.77.0.2/24"), "{status_text}");
    assert_eq!(status_text.matches("tbf").count(), 2, "{status_text}");

    // Delay/loss cannot be had without netem: a clear error.
    let netem = godwit_testbed(&["up", "--delay", "1ms"]);
    assert!(!netem.status.success());
    assert!(String::from_utf8_lossy(&netem.stderr).contains("netem"));

    // Measure: our probe, receiver in godwit-dst, sender in godwit-src.
    let recv = Command::new("ip")
        .args(["netns", "exec", "godwit-dst", env!("CARGO_BIN_EXE_godwit")])
        .args([
            "testbed",
            "probe-recv",
            "--listen",
            PROBE_TO,
            "--timeout",
            "60",
        ])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn probe-recv");
    let mut recv = Reaped(recv);
    let send = bounded(
        90,
        "ip",
        &[
            "netns",
            "exec",
            "godwit-src",
            env!("CARGO_BIN_EXE_godwit"),
            "testbed",
            "probe-send",
            "--to",
            PROBE_TO,
            "--bulk-mb",
            "64",
            "--rr",
            "2000",
        ],
    );
    assert!(
        send.status.success(),
        "probe-send: {}",
        String::from_utf8_lossy(&send.stderr)
    );
    let figures: serde_json::Value =
        serde_json::from_slice(&send.stdout).expect("probe-send prints JSON");
    assert!(wait_exit(&mut recv.0, Duration::from_secs(20)).success());
    let bits = figures["bulk_bits_per_s"]
        .as_f64()
        .expect("bulk_bits_per_s");
    let p50 = figures["rr_us_p50"].as_f64().expect("rr_us_p50");
    let p99 = figures["rr_us_p99"].as_f64().expect("rr_us_p99");
    println!(
        "testbed link (tbf 1 Gbit/s): bulk {:.1} Mbit/s = {:.1} MB/s ({:.1}% of the rate); 4 KiB request/response p50 {p50:.0} µs, p99 {p99:.0} µs",
        bits / 1e6,
        bits / 8e6,
        bits / RATE_BITS_PER_S * 100.0
    );
    // A sanity check of the shaping, not a performance assertion.
    assert!(
        (0.5 * RATE_BITS_PER_S..=1.1 * RATE_BITS_PER_S).contains(&bits),
        "bulk rate {bits} bit/s is not near the tbf rate: {figures}"
    );
    assert!(p50 < 5000.0, "4 KiB round trip p50 {p50} µs: {figures}");

    let down = godwit_testbed(&["down"]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(godwit_namespaces(), Vec::<String>::new());

    // Ctrl-C in the middle of a (long) measurement still cleans up.
    let mut measure = godwit()
        .args(["testbed", "measure", "--bulk-mb", "4000", "--rr", "10"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn testbed measure");
    let stderr = measure.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut measure = Reaped(measure);
    let mut seen = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    while !seen.iter().any(|l: &String| l.starts_with("testbed: up")) {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("testbed measure never came up: {seen:#?}"),
        }
    }
    assert_eq!(godwit_namespaces().len(), 2, "up while measuring");
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signals our own child.
    unsafe { libc::kill(measure.0.id() as libc::pid_t, libc::SIGINT) };
    let st = wait_exit(&mut measure.0, Duration::from_secs(30));
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
        seen.push(l);
    }
    assert!(
        !st.success(),
        "an interrupted measurement must fail: {seen:#?}"
    );
    assert!(
        seen.iter().any(|l| l.contains("interrupted")),
        "says it was interrupted: {seen:#?}"
    );
    assert_eq!(
        godwit_namespaces(),
        Vec::<String>::new(),
        "nothing left after Ctrl-C: {seen:#?}"
    );
}

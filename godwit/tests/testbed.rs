//! The testbed (`godwit testbed`): two namespaces and a tbf-shaped veth
//! link, and the VM network (a switch, a bridge with a TAP in each host, a
//! client). Measures the link once (a bulk transfer and a 4 KiB ping-pong,
//! by our own probe), puts a stand-in guest (the native netserve in a
//! namespace of its own) on the VM network and loads it from the client
//! with `godwit netload`, also while it moves from one host to the other,
//! and checks that nothing is left behind, also when the measuring process
//! is interrupted with Ctrl-C. Needs root, gcc and iputils (ping, arping);
//! fails with the reason otherwise.

mod common;
use common::{bounded, godwit};

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const RATE_BITS_PER_S: f64 = 1e9;
const PROBE_TO: &str = "10.77.0.2:7711";
/// The stand-in guest's namespace (the test's own, not the testbed's).
const GUEST_NS: &str = "godwit-t-guest";
/// Every interface name the testbed (and this test) creates.
const OUR_LINKS: [&str; 12] = [
    "gw-src",
    "gw-dst",
    "gw-vm",
    "gw-client",
    "sw-src",
    "sw-dst",
    "sw-client",
    "brvm",
    "brsw",
    "gwtap0",
    "gw-guest",
    "guest0",
];

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

/// Tears the testbed (and the stand-in guest's namespace) down however the
/// test ends.
struct Teardown;

impl Drop for Teardown {
    fn drop(&mut self) {
        let _ = bounded(20, "ip", &["netns", "del", GUEST_NS]);
        let _ = godwit_testbed(&["down"]);
    }
}

/// Asserts `ip` (in `ns`, or the host's namespace) succeeds; its stdout.
fn ip_ok(args: &[&str]) -> String {
    let out = bounded(20, "ip", args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Links with our names left in the host's namespace.
fn our_links_on_the_host() -> Vec<String> {
    ip_ok(&["-br", "link", "show"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| OUR_LINKS.contains(&n.as_str()))
        .collect()
}

/// The native netserve: guest/src built with gcc into a temp dir.
fn build_netserve() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest/src");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&src)
        .expect("guest/src")
        .map(|e| e.expect("guest/src entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    sources.sort();
    // In cargo's temp folder for tests, renamed into place (as the netload
    // tests do): nothing is left in /tmp.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(dir).expect("temp dir");
    let bin = dir.join("testbed-netserve");
    let building = dir.join(format!("testbed-netserve.{}", std::process::id()));
    let out = Command::new("gcc")
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&building)
        .args(&sources)
        .output()
        .expect("gcc is needed to build the native netserve (apt-get install gcc)");
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&building, &bin).expect("move the netserve binary into place");
    bin
}

/// Opens `tap` in namespace `ns` with TUNSETIFF, as a VMM there would: on
/// a thread of its own, which enters the namespace (setns affects only
/// the calling thread) and ends after the open.
fn open_tap_in(ns: &str, tap: &str) -> std::io::Result<File> {
    let (ns, tap) = (ns.to_string(), tap.to_string());
    std::thread::spawn(move || {
        let netns = File::open(format!("/run/netns/{ns}"))?;
        // SAFETY: moves only this thread into the namespace.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let tun = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        // struct ifreq: the name (16 bytes), then the flags (a short).
        let mut ifr = [0u8; 40];
        ifr[..tap.len()].copy_from_slice(tap.as_bytes());
        let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as u16;
        ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes one struct ifreq, which fits in `ifr`.
        if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, ifr.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(tun)
    })
    .join()
    .expect("the TAP thread panicked")
}

/// `godwit netload` from the client namespace at the stand-in guest.
fn netload_from_client(secs: &str) -> Command {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        "godwit-client",
        env!("CARGO_BIN_EXE_godwit"),
    ])
    .args(["netload", "--to", "10.77.1.10", "--duration-s", secs])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

/// The exit status and JSON report of a finished `godwit netload`.
fn netload_report(out: &Output) -> serde_json::Value {
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "netload printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    for key in ["answers_lost", "answers_wrong", "conn_failures"] {
        assert_eq!(
            report[key],
            0,
            "{key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(out.status.success(), "netload exit status {}", out.status);
    assert!(report["answers_ok"].as_u64().unwrap_or(0) > 0);
    report
}

/// The VM network: the TAPs, and a stand-in guest on the segment reached
/// from the client before, while and after it moves between the hosts.
fn check_vm_network() {
    // The TAPs: persistent, on brvm, and a VMM in the namespace can open
    // them by name (then they have a carrier).
    for ns in ["godwit-src", "godwit-dst"] {
        let d = ip_ok(&["-n", ns, "-d", "link", "show", "gwtap0"]);
        assert!(d.contains("tun type tap"), "{d}");
        assert!(d.contains("persist on"), "{d}");
        assert!(d.contains("master brvm"), "{d}");
        let tap = open_tap_in(ns, "gwtap0")
            .unwrap_or_else(|e| panic!("cannot open gwtap0 in {ns} with TUNSETIFF: {e}"));
        let end = Instant::now() + Duration::from_secs(5);
        while !ip_ok(&["-n", ns, "-br", "link", "show", "gwtap0"]).contains("LOWER_UP") {
            assert!(
                Instant::now() < end,
                "gwtap0 in {ns} has no carrier when open"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(tap);
    }

    // A stand-in guest: 10.77.1.10/24 on a veth whose other end is a port
    // of godwit-src's brvm, and the native netserve in its namespace.
    let netserve = build_netserve();
    ip_ok(&["netns", "add", GUEST_NS]);
    ip_ok(&[
        "link",
        "add",
        "guest0",
        "netns",
        GUEST_NS,
        "type",
        "veth",
        "peer",
        "name",
        "gw-guest",
        "netns",
        "godwit-src",
    ]);
    ip_ok(&[
        "-n",
        "godwit-src",
        "link",
        "set",
        "gw-guest",
        "master",
        "brvm",
        "up",
    ]);
    ip_ok(&[
        "-n",
        GUEST_NS,
        "addr",
        "add",
        "10.77.1.10/24",
        "dev",
        "guest0",
    ]);
    ip_ok(&["-n", GUEST_NS, "link", "set", "guest0", "up"]);
    let mut server = Command::new("ip");
    server
        .args(["netns", "exec", GUEST_NS])
        .arg(&netserve)
        .arg("godwit.workload=netserve")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut server = Reaped(server.spawn().expect("start netserve"));
    let stdout = server.0.stdout.take().expect("netserve's stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) if l.starts_with("GODWIT READY") => break l,
            Ok(_) => {}
            Err(e) => panic!("netserve never got ready: {e}"),
        }
    };
    assert!(ready.contains("10.77.1.10"), "{ready}");

    // The client reaches it through the switch: 2 s, no errors; then a
    // ping on the idle network loses nothing (beside a stream that fills
    // the shaper's queue, tail drops of pings are the queue's right).
    let netload = |extra: &[&str]| {
        let mut args = vec![
            "netns",
            "exec",
            "godwit-client",
            env!("CARGO_BIN_EXE_godwit"),
            "netload",
            "--to",
            "10.77.1.10",
            "--duration-s",
            "2",
        ];
        args.extend_from_slice(extra);
        netload_report(&bounded(30, "ip", &args))
    };
    let report = netload(&["--stream", "out"]);
    assert!(report["stream"]["bytes"].as_u64().unwrap_or(0) > 0);
    let report = netload(&["--ping"]);
    assert_eq!(report["ping"]["lost"], 0, "{}", report["ping"]);

    // Move it to godwit-dst's brvm while the client loads it, as a
    // migration moves a guest (same address, same MAC). A gratuitous ARP
    // from the guest teaches the switch its new port.
    let mac = ip_ok(&["-n", GUEST_NS, "-br", "link", "show", "guest0"])
        .split_whitespace()
        .nth(2)
        .expect("guest0's MAC")
        .to_string();
    let load = Reaped(netload_from_client("4").spawn().expect("start netload"));
    std::thread::sleep(Duration::from_millis(1000));
    ip_ok(&[
        "-n",
        "godwit-src",
        "link",
        "set",
        "gw-guest",
        "netns",
        "godwit-dst",
    ]);
    ip_ok(&[
        "-n",
        "godwit-dst",
        "link",
        "set",
        "gw-guest",
        "master",
        "brvm",
        "up",
    ]);
    let garp = bounded(
        10,
        "ip",
        &[
            "netns",
            "exec",
            GUEST_NS,
            "arping",
            "-q",
            "-U",
            "-c",
            "1",
            "-I",
            "guest0",
            "10.77.1.10",
        ],
    );
    assert!(
        garp.status.success(),
        "arping -U (iputils-arping): {}",
        String::from_utf8_lossy(&garp.stderr)
    );
    let fdb = String::from_utf8_lossy(
        &bounded(
            10,
            "bridge",
            &["-n", "godwit-sw", "fdb", "show", "br", "brsw"],
        )
        .stdout,
    )
    .into_owned();
    assert!(
        fdb.lines()
            .any(|l| l.starts_with(&mac) && l.contains("dev sw-dst")),
        "the switch has not learned {mac} on sw-dst:
{fdb}"
    );
    let mut load = load;
    let st = wait_exit(&mut load.0, Duration::from_secs(20));
    let out = Output {
        status: st,
        stdout: read_all(load.0.stdout.take()),
        stderr: read_all(load.0.stderr.take()),
    };
    let report = netload_report(&out);
    // Answers kept coming after the move (at 1 s) until the end (4 s).
    let buckets: Vec<u64> = report["answers_per_bucket"]
        .as_array()
        .expect("answers_per_bucket")
        .iter()
        .map(|v| v.as_u64().unwrap_or(0))
        .collect();
    assert!(buckets.len() >= 39, "{buckets:?}");
    assert!(
        buckets[25..39].iter().all(|&n| n > 0),
        "no answers in some 100 ms after the move: {buckets:?}"
    );
    println!(
        "stand-in guest moved from godwit-src to godwit-dst under load: client-observed downtime {:.1} ms, 0 lost",
        report["downtime_ms"].as_f64().unwrap_or(f64::NAN)
    );
    drop(server);
    ip_ok(&["netns", "del", GUEST_NS]);
}

fn read_all(from: Option<impl std::io::Read>) -> Vec<u8> {
    let mut v = Vec::new();
    if let Some(mut f) = from {
        let _ = f.read_to_end(&mut v);
    }
    v
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
    // The link's two ends, and both ends of the switch's three ports.
    assert_eq!(status_text.matches("tbf").count(), 8, "{status_text}");
    assert!(status_text.contains("10.77.1.100/24"), "{status_text}");
    assert_eq!(
        status_text.matches("brvm port: gwtap0").count(),
        2,
        "{status_text}"
    );
    assert_eq!(
        status_text.matches("gwtap0: tun type tap").count(),
        2,
        "{status_text}"
    );

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

    check_vm_network();

    // --shared-link: no direct link; the migration addresses are on brvm
    // and the hosts reach each other through the switch, at the rate.
    let up = godwit_testbed(&["up", "--rate", "1gbit", "--shared-link"]);
    assert!(
        up.status.success(),
        "testbed up --shared-link: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let shared = String::from_utf8_lossy(&godwit_testbed(&["status"]).stdout).into_owned();
    assert!(
        shared
            .lines()
            .any(|l| l.contains("brvm") && l.contains("10.77.0.1/24")),
        "{shared}"
    );
    assert!(!shared.contains("gw-src"), "{shared}");
    assert_eq!(shared.matches("tbf").count(), 6, "{shared}");
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
        60,
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
            "32",
            "--rr",
            "200",
        ],
    );
    assert!(
        send.status.success(),
        "probe-send over the shared link: {}",
        String::from_utf8_lossy(&send.stderr)
    );
    assert!(wait_exit(&mut recv.0, Duration::from_secs(20)).success());
    let figures: serde_json::Value =
        serde_json::from_slice(&send.stdout).expect("probe-send prints JSON");
    let bits = figures["bulk_bits_per_s"]
        .as_f64()
        .expect("bulk_bits_per_s");
    println!("shared link: bulk {:.1} Mbit/s", bits / 1e6);
    assert!(
        (0.4 * RATE_BITS_PER_S..=1.1 * RATE_BITS_PER_S).contains(&bits),
        "bulk rate {bits} bit/s over the shared link: {figures}"
    );

    let down = godwit_testbed(&["down"]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(godwit_namespaces(), Vec::<String>::new());
    assert_eq!(our_links_on_the_host(), Vec::<String>::new());
    assert_eq!(
        godwit_testbed(&["down"]).status.code(),
        Some(0),
        "down twice"
    );

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
    assert_eq!(godwit_namespaces().len(), 4, "up while measuring");
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
    assert_eq!(our_links_on_the_host(), Vec::<String>::new());
}

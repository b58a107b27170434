//! A VM with a NIC migrates on the testbed while a client loads it: the
//! guest's `netserve` in `godwit-src`, `godwit netload` in `godwit-client`
//! holding four TCP connections (a request every millisecond on each, every
//! answer checked), and the VM moved back and forth between the two hosts
//! over the shaped link in every mode and pre-paging strategy. Each hop:
//! no answer lost or wrong, no connection failed, the VM answers from its
//! new host afterwards, and the old host's TAP gets nothing from its VMM
//! after the switch. Prints the client-observed downtime of each hop. Needs
//! root (network namespaces); fails with the reason otherwise.

mod common;
use common::*;
use serde_json::{json, Value};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const GUEST_IP: &str = "ip=10.77.1.10::10.77.1.1:255.255.255.0::eth0:off";

fn testbed(args: &[&str]) -> Output {
    let mut a = vec![env!("CARGO_BIN_EXE_godwit"), "testbed"];
    a.extend_from_slice(args);
    bounded(120, a[0], &a[1..])
}

/// Tears the testbed down however the test ends.
struct Teardown;

impl Drop for Teardown {
    fn drop(&mut self) {
        let _ = testbed(&["down"]);
    }
}

/// Frames the TAP `gwtap0` in `ns` received from its VMM so far.
fn tap_rx_packets(ns: &str) -> u64 {
    let out = bounded(10, "ip", &["-n", ns, "-s", "-j", "link", "show", "gwtap0"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j link");
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .expect("rx packets")
}

struct Host {
    ns: &'static str,
    addr: &'static str,
}

const HOSTS: [Host; 2] = [
    Host {
        ns: "godwit-src",
        addr: "10.77.0.1",
    },
    Host {
        ns: "godwit-dst",
        addr: "10.77.0.2",
    },
];

/// One hop: the VM on `from` (control socket `sock`) moves to `to` in
/// `mode`/`prepaging` under load; returns the new VM and its socket.
fn hop(
    dir: &std::path::Path,
    n: usize,
    mut vm: Running,
    sock: std::path::PathBuf,
    (from, to): (&Host, &Host),
    (mode, prepaging): (&str, &str),
) -> (Running, std::path::PathBuf, Value) {
    let port = 7800 + n as u16;
    let listen = format!("{}:{port}", to.addr);
    let dst_sock = dir.join(format!("vm{}.sock", n + 1));
    let mut dst = Running::start_in(
        to.ns,
        &[
            "receive",
            "--listen",
            &listen,
            "--tls-plain",
            "--control",
            dst_sock.to_str().unwrap(),
            "--net",
            "tap=gwtap0",
            "--report-after-ms",
            "500",
        ],
    );
    dst.wait_for("godwit: waiting for a migration", Duration::from_secs(30));
    let load_json = dir.join(format!("load{n}.json"));
    let mut load = Command::new("ip");
    load.args([
        "netns",
        "exec",
        "godwit-client",
        env!("CARGO_BIN_EXE_godwit"),
        "netload",
        "--to",
        "10.77.1.10",
        "--duration-s",
        "4",
        "--json",
        load_json.to_str().unwrap(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let load = load.spawn().expect("start netload");
    std::thread::sleep(Duration::from_millis(1500));
    let report_json = dir.join(format!("report{n}.json"));
    let out = bounded(
        150,
        "ip",
        &[
            "netns",
            "exec",
            from.ns,
            env!("CARGO_BIN_EXE_godwit"),
            "migrate",
            "--control",
            sock.to_str().unwrap(),
            "--to",
            &listen,
            "--tls-plain",
            "--mode",
            mode,
            "--prepaging",
            prepaging,
            "--json",
            report_json.to_str().unwrap(),
            "--timeout",
            "120",
        ],
    );
    assert!(
        out.status.success(),
        "hop {n} ({mode} {prepaging}) {} -> {}: {}",
        from.ns,
        to.ns,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(vm.wait_exit(Duration::from_secs(30)), Some(0), "old VMM");
    let silent_from = tap_rx_packets(from.ns);
    let load = load.wait_with_output().expect("netload");
    let err = String::from_utf8_lossy(&load.stderr);
    assert!(load.status.success(), "netload: {err}");
    let l: Value = serde_json::from_str(&std::fs::read_to_string(&load_json).expect("load JSON"))
        .expect("netload JSON");
    for key in ["answers_lost", "answers_wrong", "conn_failures"] {
        assert_eq!(l[key], 0, "hop {n} ({mode} {prepaging}) {key}: {err}");
    }
    // Answers went on coming from the new host to the end (in the last
    // second of the four; the old VMM had exited by then).
    let buckets: Vec<u64> = l["answers_per_bucket"]
        .as_array()
        .expect("answers_per_bucket")
        .iter()
        .map(|v| v.as_u64().unwrap_or(0))
        .collect();
    assert!(
        buckets.len() >= 40 && buckets[30..40].iter().sum::<u64>() > 1000,
        "hop {n}: few answers at the end: {buckets:?}"
    );
    assert_eq!(
        tap_rx_packets(from.ns),
        silent_from,
        "hop {n}: the old host's TAP got frames after the switch"
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report_json).expect("report"))
        .expect("report JSON");
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["guest_bad"], 0, "{r}");
    let figures = json!({
        "hop": n,
        "from": from.ns,
        "mode": mode,
        "prepaging": prepaging,
        "vmm_downtime_ms": r["downtime_ms"],
        "frames_forwarded": r["frames_forwarded"],
        "client_downtime_ms": l["downtime_ms"],
        "client_p99_ms": l["rtt_ms"]["p99"],
        "answers_ok": l["answers_ok"],
    });
    println!("GODWIT HOP {figures}");
    (dst, dst_sock, figures)
}

#[test]
fn clients_keep_their_connections_through_every_mode() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("needs root (the testbed's network namespaces); run as root or skip with `--skip vmnet`");
    }
    guest_image();
    let _teardown = Teardown;
    let up = testbed(&["up", "--rate", "1gbit"]);
    assert!(
        up.status.success(),
        "testbed up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let dir = temp_dir("vmnet");
    let sock = dir.join("vm0.sock");
    let mut vm = Running::start_in(
        HOSTS[0].ns,
        &[
            "run",
            "--mem",
            "256M",
            "--control",
            sock.to_str().unwrap(),
            "--net",
            "tap=gwtap0",
            "--workload",
            "netserve",
            "--append",
            GUEST_IP,
        ],
    );
    let ready = vm.wait_for("GODWIT READY", Duration::from_secs(90));
    assert!(ready.contains("10.77.1.10"), "{ready}");
    let hops = [
        ("stop-and-copy", "none"),
        ("precopy", "none"),
        ("postcopy", "none"),
        ("postcopy", "forward"),
        ("postcopy", "dual"),
        ("postcopy", "multi-pivot"),
        ("hybrid", "dual"),
    ];
    let mut sock = sock;
    let mut all = Vec::new();
    for (n, &(mode, prepaging)) in hops.iter().enumerate() {
        let (from, to) = (&HOSTS[n % 2], &HOSTS[(n + 1) % 2]);
        let (next, next_sock, figures) = hop(&dir, n, vm, sock, (from, to), (mode, prepaging));
        vm = next;
        sock = next_sock;
        all.push(figures);
    }
    assert_eq!(qmp(&sock, "quit", json!({}))["return"], json!({}));
    assert_eq!(vm.wait_exit(Duration::from_secs(30)), Some(0));
    println!("{}", serde_json::to_string_pretty(&all).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

//! `godwit soak`: one VM migrated back and forth on loopback many times,
//! rotating every mode and pre-paging strategy over plain TCP and mutual
//! TLS, with a check after every hop: the guest's integrity (`bad` = 0 in
//! the report and in its heartbeats at the destination, which continue the
//! source's), the source VMM gone with status 0, and the file descriptors
//! and RSS of the VMM that holds the VM stable from hop to hop. Each VMM
//! process lives for two hops (it receives the VM, then sends it on), so
//! the same point of every holder's life is compared: a second after it
//! took over the VM. Prints a line per hop, then totals; `--json` writes
//! every figure.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Migrations to make.
    #[arg(long, default_value_t = 20)]
    hops: usize,
    /// vCPUs of the VM.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Guest RAM.
    #[arg(long, default_value = "256M")]
    mem: String,
    /// memtouch's parameters (its integrity check runs throughout).
    #[arg(long, default_value = "wws_mb=24 pages_per_s=0 order=rand")]
    append: String,
    /// Only plain TCP (default: every other hop over mutual TLS).
    #[arg(long)]
    no_tls: bool,
    /// Allowed growth of the holder's RSS over the first hop's, in MiB.
    #[arg(long, default_value_t = 64)]
    rss_slack_mb: u64,
    /// Write every hop's figures and the totals here (JSON).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Folder for sockets, TLS identities and reports (default: a new one
    /// under the temporary directory, removed after a run that passed).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The rotation: 7 (mode, pre-paging) pairs, so that with TLS on every
/// other hop each pair is seen over both.
const ROTATION: [(&str, &str); 7] = [
    ("postcopy", "dual"),
    ("precopy", "none"),
    ("stop-and-copy", "none"),
    ("hybrid", "multi-pivot"),
    ("postcopy", "forward"),
    ("postcopy", "none"),
    ("postcopy", "multi-pivot"),
];

/// A `godwit` process whose stdout and stderr arrive as lines.
struct Vmm {
    child: Child,
    lines: mpsc::Receiver<String>,
    sock: PathBuf,
}

impl Vmm {
    fn start(exe: &Path, args: &[&str], sock: PathBuf) -> Result<Vmm> {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start godwit")?;
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().context("no stdout")?;
        let err = child.stderr.take().context("no stderr")?;
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if tx2.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(Vmm { child, lines, sock })
    }

    /// The next line starting with `prefix`, within `limit`.
    fn wait_for(&mut self, prefix: &str, limit: Duration) -> Result<String> {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Ok(l),
                Ok(l) if l.starts_with("GODWIT CORRUPT") || l.starts_with("GODWIT ERROR") => {
                    bail!("the guest reported: {l}")
                }
                Ok(_) => {}
                Err(_) => bail!("no {prefix:?} line within {limit:?}"),
            }
        }
    }

    /// The JSON of the next heartbeat.
    fn heartbeat(&mut self) -> Result<Value> {
        let l = self.wait_for("GODWIT HB ", Duration::from_secs(30))?;
        serde_json::from_str(&l["GODWIT HB ".len()..]).context("a heartbeat that is not JSON")
    }

    /// Waits for the process to end; its exit code.
    fn wait_exit(&mut self, limit: Duration) -> Result<Option<i32>> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("pid {} did not exit within {limit:?}", self.child.id())
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open file descriptors and RSS (bytes) of process `pid`.
fn fds_and_rss(pid: u32) -> Result<(usize, u64)> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("cannot list the descriptors of {pid}"))?
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok((fds, kb * 1024))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn tls_gen(exe: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(exe).arg("tls-gen").args(args).output()?;
    if !out.status.success() {
        bail!(
            "godwit tls-gen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

pub fn run(args: Args) -> Result<i32> {
    let exe = std::env::current_exe().context("cannot find the godwit executable")?;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("godwit-soak-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    let (ta, tb) = (dir.join("tls-a"), dir.join("tls-b"));
    let (ta_s, tb_s) = (ta.to_string_lossy(), tb.to_string_lossy());
    if !args.no_tls {
        if !ta.join("cert.pem").exists() {
            tls_gen(&exe, &[&ta_s])?;
        }
        if !tb.join("cert.pem").exists() {
            tls_gen(&exe, &[&tb_s, "--ca", &ta_s])?;
        }
    }
    let cpus = args.cpus.to_string();
    let sock0 = dir.join("vm0.sock");
    let mut cur = Vmm::start(
        &exe,
        &[
            "run",
            "--mem",
            &args.mem,
            "--cpus",
            &cpus,
            "--control",
            &sock0.to_string_lossy(),
            "--workload",
            "memtouch",
            "--append",
            &args.append,
        ],
        sock0.clone(),
    )?;
    cur.wait_for("GODWIT READY", Duration::from_secs(60))?;
    let mut last_seq = 0u64;
    for _ in 0..3 {
        last_seq = cur.heartbeat()?["seq"].as_u64().unwrap_or(0);
    }
    eprintln!(
        "soak: {} hops, {} vCPUs, {} RAM, memtouch {}; plain TCP{}",
        args.hops,
        args.cpus,
        args.mem,
        args.append,
        if args.no_tls {
            ""
        } else {
            " and mutual TLS on every other hop"
        }
    );
    println!(
        "{:>5} {:<14} {:<11} {:<5} {:>9} {:>11} {:>9} {:>9} {:>4} {:>4} {:>8}",
        "hop",
        "mode",
        "prepaging",
        "link",
        "total ms",
        "downtime ms",
        "stall ms",
        "MB sent",
        "bad",
        "fds",
        "RSS MiB"
    );
    let started = Instant::now();
    let mut hops: Vec<Value> = Vec::new();
    let mut first: Option<(usize, u64)> = None;
    let mut failure: Option<String> = None;
    for i in 0..args.hops {
        let (mode, prepaging) = ROTATION[i % ROTATION.len()];
        let tls = !args.no_tls && i % 2 == 1;
        // The VM goes from "host" a to b and back: the identities swap.
        let (src_id, dst_id) = if i % 2 == 0 {
            (&ta_s, &tb_s)
        } else {
            (&tb_s, &ta_s)
        };
        let sock = dir.join(format!("vm{}.sock", i + 1));
        let _ = std::fs::remove_file(&sock);
        let to = format!("127.0.0.1:{}", free_port()?);
        let mut recv_args = vec![
            "receive",
            "--listen",
            &to,
            "--control",
            sock.to_str().unwrap_or_default(),
            "--cpus",
            &cpus,
            "--report-after-ms",
            "300",
        ];
        let dst_dir = dst_id.to_string();
        if tls {
            recv_args.extend(["--tls-dir", &dst_dir]);
        } else {
            recv_args.push("--tls-plain");
        }
        let mut next = Vmm::start(&exe, &recv_args, sock.clone())?;
        // Until it listens.
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&to).is_err() {
            if Instant::now() > end {
                bail!("hop {i}: the destination does not listen on {to}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let report_path = dir.join("report.json");
        let _ = std::fs::remove_file(&report_path);
        let mut mig = Command::new(&exe);
        mig.args(["migrate", "--control", &cur.sock.to_string_lossy()])
            .args(["--to", &to, "--mode", mode, "--prepaging", prepaging])
            .args(["--timeout", "120", "--json", &report_path.to_string_lossy()]);
        let src_dir = src_id.to_string();
        if tls {
            mig.args(["--tls-dir", &src_dir]);
        } else {
            mig.arg("--tls-plain");
        }
        let out = mig.output().context("cannot run godwit migrate")?;
        let check = (|| -> Result<Value> {
            if !out.status.success() {
                bail!(
                    "migrate failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let report: Value =
                serde_json::from_str(&std::fs::read_to_string(&report_path).context("no report")?)?;
            if report["guest_bad"] != json!(0) {
                bail!("the report says guest_bad = {}", report["guest_bad"]);
            }
            let pid = cur.child.id();
            match cur.wait_exit(Duration::from_secs(30))? {
                Some(0) => {}
                c => bail!("the source VMM (pid {pid}) ended with {c:?}"),
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                bail!("the source VMM (pid {pid}) is still there");
            }
            let mut bad = 0;
            for _ in 0..2 {
                let hb = next.heartbeat()?;
                let seq = hb["seq"].as_u64().unwrap_or(0);
                if seq <= last_seq {
                    bail!("heartbeats went backwards: {seq} after {last_seq}");
                }
                last_seq = seq;
                bad += hb["bad"].as_u64().unwrap_or(u64::MAX);
            }
            if bad != 0 {
                bail!("the guest reports bad = {bad} at the destination");
            }
            std::thread::sleep(Duration::from_millis(700));
            let (fds, rss) = fds_and_rss(next.child.id())?;
            let (fds0, rss0) = *first.get_or_insert((fds, rss));
            if fds > fds0 + 2 {
                bail!("the VMM holding the VM has {fds} descriptors open, the first had {fds0}");
            }
            if rss > rss0 + (args.rss_slack_mb << 20) {
                bail!(
                    "the VMM holding the VM uses {} MiB, the first used {} MiB",
                    rss >> 20,
                    rss0 >> 20
                );
            }
            Ok(json!({
                "hop": i,
                "mode": mode,
                "prepaging": prepaging,
                "security": if tls { "TLS" } else { "plain" },
                "total_ms": num(&report, "total_ms"),
                "downtime_ms": num(&report, "downtime_ms"),
                "guest_max_stall_ms": num(&report, "guest_max_stall_ms"),
                "bytes_sent": report["bytes_sent"].as_u64().unwrap_or(0),
                "network_faults": report["network_faults"].as_u64().unwrap_or(0),
                "guest_bad": 0,
                "holder_fds": fds,
                "holder_rss_bytes": rss,
            }))
        })();
        match check {
            Ok(h) => {
                println!(
                    "{:>5} {:<14} {:<11} {:<5} {:>9.0} {:>11.1} {:>9.1} {:>9.1} {:>4} {:>4} {:>8}",
                    i,
                    mode,
                    prepaging,
                    if tls { "TLS" } else { "plain" },
                    num(&h, "total_ms"),
                    num(&h, "downtime_ms"),
                    num(&h, "guest_max_stall_ms"),
                    num(&h, "bytes_sent") / 1e6,
                    0,
                    h["holder_fds"].as_u64().unwrap_or(0),
                    h["holder_rss_bytes"].as_u64().unwrap_or(0) >> 20
                );
                hops.push(h);
            }
            Err(e) => {
                let why = format!(
                    "hop {i} ({mode}/{prepaging}, {}): {e:#}",
                    if tls { "TLS" } else { "plain" }
                );
                eprintln!("soak: FAILED {why}");
                failure = Some(why);
                break;
            }
        }
        cur = next;
    }
    let _ = godwit_vmm::control::ControlClient::connect(&cur.sock)
        .and_then(|mut c| c.execute("quit", Value::Null));
    let end_code = cur.wait_exit(Duration::from_secs(30)).ok().flatten();
    if failure.is_none() && end_code != Some(0) {
        failure = Some(format!("the last VMM ended with {end_code:?}"));
    }
    let totals = totals(&hops, started.elapsed());
    print_totals(&totals);
    if let Some(p) = &args.json {
        let all = json!({ "hops": hops, "totals": totals, "failure": failure });
        std::fs::write(p, serde_json::to_string_pretty(&all)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    match failure {
        None => {
            // A folder of our own (TLS keys, sockets, the last report) goes
            // when the run passed; one the user named stays.
            if args.dir.is_none() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Ok(0)
        }
        Some(_) => {
            eprintln!(
                "soak: the last report, the sockets and TLS identities are kept in {}",
                dir.display()
            );
            Ok(1)
        }
    }
}

fn stats(v: &[f64]) -> Value {
    if v.is_empty() {
        return json!(null);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    let p = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    json!({ "n": s.len(), "mean": mean, "p50": p(0.5), "p99": p(0.99), "max": s[s.len() - 1] })
}

fn totals(hops: &[Value], elapsed: Duration) -> Value {
    let mut by: Vec<(String, Vec<&Value>)> = Vec::new();
    for h in hops {
        let key = format!(
            "{}/{}/{}",
            h["mode"].as_str().unwrap_or(""),
            h["prepaging"].as_str().unwrap_or(""),
            h["security"].as_str().unwrap_or("")
        );
        match by.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(h),
            None => by.push((key, vec![h])),
        }
    }
    let col = |hs: &[&Value], k: &str| hs.iter().map(|h| num(h, k)).collect::<Vec<_>>();
    let all: Vec<&Value> = hops.iter().collect();
    let fds: Vec<f64> = col(&all, "holder_fds");
    let rss: Vec<f64> = col(&all, "holder_rss_bytes");
    json!({
        "hops": hops.len(),
        "elapsed_s": elapsed.as_secs_f64(),
        "bytes_sent": hops.iter().map(|h| h["bytes_sent"].as_u64().unwrap_or(0)).sum::<u64>(),
        "total_ms": stats(&col(&all, "total_ms")),
        "downtime_ms": stats(&col(&all, "downtime_ms")),
        "holder_fds_min_max": [fds.iter().cloned().fold(f64::INFINITY, f64::min), fds.iter().cloned().fold(0.0, f64::max)],
        "holder_rss_mib_min_max": [(rss.iter().cloned().fold(f64::INFINITY, f64::min) / 1048576.0).round(), (rss.iter().cloned().fold(0.0, f64::max) / 1048576.0).round()],
        "by_kind": by.iter().map(|(k, hs)| json!({
            "kind": k,
            "total_ms": stats(&col(hs, "total_ms")),
            "downtime_ms": stats(&col(hs, "downtime_ms")),
        })).collect::<Vec<_>>(),
    })
}

fn print_totals(t: &Value) {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "totals: {} hops in {:.0} s, {:.1} MB sent; total ms mean {:.0} max {:.0}; downtime ms mean {:.1} p99 {:.1} max {:.1}; holder fds {} RSS MiB {}",
        t["hops"],
        f(t, "elapsed_s"),
        t["bytes_sent"].as_f64().unwrap_or(0.0) / 1e6,
        f(&t["total_ms"], "mean"),
        f(&t["total_ms"], "max"),
        f(&t["downtime_ms"], "mean"),
        f(&t["downtime_ms"], "p99"),
        f(&t["downtime_ms"], "max"),
        t["holder_fds_min_max"],
        t["holder_rss_mib_min_max"],
    );
    if let Some(kinds) = t["by_kind"].as_array() {
        for k in kinds {
            println!(
                "  {:<32} n={:<4} total ms mean {:>7.0}  downtime ms mean {:>7.1} max {:>7.1}",
                k["kind"].as_str().unwrap_or(""),
                k["total_ms"]["n"],
                f(&k["total_ms"], "mean"),
                f(&k["downtime_ms"], "mean"),
                f(&k["downtime_ms"], "max"),
            );
        }
    }
}

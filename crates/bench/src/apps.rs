//! `godwit bench --preset apps`: application benchmarks with the Debian
//! guest (guest/debian: OpenSBI, root on virtio-blk, 2 vCPUs, 512 MiB) on
//! the testbed, migrated in the steady state of a real server under load
//! from the client namespace.
//!
//! Cells (`--only` picks them by words of their id, e.g. `kv,postcopy`):
//!
//! - **kv**: redis-server in the guest. A dataset of `--kv-mib` MiB is
//!   loaded first (pipelined `SET gw:NNNNNNN <value>` from the client
//!   namespace; every value is derived from its key by a fixed generator),
//!   then `redis-benchmark` (the host's redis-tools: `-t set`, 4 clients, a
//!   random key space apart from the dataset's) runs through the migration.
//!   Its progress line (instantaneous rps every 250 ms) is the throughput
//!   series; a probe on its own connection sends `PING` every 10 ms, and the
//!   longest gap between its answers is the client-observed downtime.
//!   Afterwards every dataset key is read back (pipelined `GET`) and
//!   compared with its value, and `DBSIZE` must cover the dataset.
//! - **web**: nginx in the guest serving a static set made at boot on its
//!   disk (1024 files of 1 KiB, 1000 of 10 KiB, 200 of 100 KiB, 8 of
//!   1 MiB), `wrk` (one thread, 8 connections, a Lua script picking files
//!   70/25/4.5/0.5 % by size class) through the migration; the script
//!   counts responses per 100 ms and the longest gap between two responses
//!   (microseconds): the client-observed downtime. wrk's non-2xx and
//!   socket errors must be 0.
//!
//! Every cell runs with stop-and-copy, pre-copy and post-copy (pre-paging
//! `none` and `dual`). Each run boots a fresh sparse copy of the image
//! (shared by source and destination: shared storage), waits for the
//! guest's marker, sets up the application, starts the load, waits
//! `LOAD_BEFORE` (the steady state), migrates with `godwit migrate`, keeps
//! the load `LOAD_AFTER` on the destination, stops it and checks the data.
//! Every wait is bounded; every child is killed with its process group and
//! the testbed is torn down on every path.

use crate::testbed::{self, LinkConfig, Process, Side, Testbed};
use anyhow::{bail, Context, Result};
use godwit_vmm::control::ControlClient;
use godwit_vmm::guest::{debian_image, sparse_copy, DebianImage, DEBIAN_APPEND, DEBIAN_READY};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(300);
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// Load before the migration starts (the steady state), and after it ends.
const LOAD_BEFORE: Duration = Duration::from_secs(8);
const LOAD_AFTER: Duration = Duration::from_secs(8);
/// The load's first seconds are not counted (connections, caches).
const LOAD_SETTLE_MS: f64 = 2000.0;
const MIGRATION_PORT: u16 = 4444;
const KV_VALUE_BYTES: usize = 1000;
const KV_BATCH: usize = 500;
const PROBE_PERIOD: Duration = Duration::from_millis(10);
const WEB_ROOT: &str = "/var/www/html/gw";
/// The static set: (folder, file size, number of files, share of requests %).
const WEB_SET: [(&str, u64, u32, f64); 4] = [
    ("s", 1024, 1024, 70.0),
    ("m", 10240, 1000, 25.0),
    ("l", 102_400, 200, 4.5),
    ("x", 1_048_576, 8, 0.5),
];

/// What the apps preset takes from `godwit bench`'s command line.
pub struct Options {
    pub out: PathBuf,
    pub runs: u32,
    pub link: LinkConfig,
    pub pace_pct: u32,
    pub mem: u64,
    pub cpus: u32,
    pub only: Option<String>,
    pub list: bool,
    pub fail_fast: bool,
    pub kv_mib: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum App {
    Kv,
    Web,
}

impl App {
    fn name(self) -> &'static str {
        match self {
            App::Kv => "kv",
            App::Web => "web",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Cell {
    app: App,
    mode: &'static str,
    prepaging: Option<&'static str>,
}

impl Cell {
    fn id(&self) -> String {
        match self.prepaging {
            Some(p) => format!("{}-{}-{p}", self.app.name(), self.mode),
            None => format!("{}-{}", self.app.name(), self.mode),
        }
    }
}

fn matrix() -> Vec<Cell> {
    let mut v = Vec::new();
    for app in [App::Kv, App::Web] {
        for (mode, prepaging) in [
            ("stop-and-copy", None),
            ("precopy", None),
            ("postcopy", Some("none")),
            ("postcopy", Some("dual")),
        ] {
            v.push(Cell {
                app,
                mode,
                prepaging,
            });
        }
    }
    v
}

fn select(cells: Vec<Cell>, only: Option<&str>) -> Vec<Cell> {
    crate::migration::select_by_id(cells, only, Cell::id)
}

pub fn run(o: &Options) -> Result<i32> {
    let cells = select(matrix(), o.only.as_deref());
    if cells.is_empty() {
        bail!(
            "--only {:?} matches no cell (see `godwit bench --preset apps --list`)",
            o.only.as_deref().unwrap_or("")
        );
    }
    if o.list {
        for c in &cells {
            println!("{}", c.id());
        }
        return Ok(0);
    }
    if !testbed::is_root() {
        bail!("the apps preset needs root: it runs on the testbed (network namespaces, TAPs)");
    }
    for (tool, hint) in [("wrk", "wrk"), ("redis-benchmark", "redis-tools")] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found && cells.iter().any(|c| (c.app == App::Web) == (tool == "wrk")) {
            bail!("{tool} is missing: apt-get install {hint} (scripts/install-deps.sh)");
        }
    }
    testbed::catch_interrupts();
    let img = debian_image()?;
    let exe = std::env::current_exe().context("cannot find the godwit executable")?;
    let tmp = std::env::temp_dir().join(format!("godwit-apps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let _tmp_guard = RemoveDir(tmp.clone());
    let logs = o.out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let max_bw = (o.pace_pct > 0).then(|| o.link.bytes_per_s() * u64::from(o.pace_pct) / 100);
    eprintln!(
        "bench: preset apps, {} cell(s) × {} run(s); Debian guest {} MiB, {} vCPU(s); link {}; kv dataset {} MiB",
        cells.len(),
        o.runs,
        o.mem >> 20,
        o.cpus,
        o.link,
        o.kv_mib
    );
    let started_unix_s = unix_s();
    let mut records: Vec<Value> = Vec::new();
    let mut failed = 0;
    'runs: for run in 1..=o.runs {
        for cell in &cells {
            if testbed::interrupted() {
                break 'runs;
            }
            eprintln!("bench: {} run {run}/{}", cell.id(), o.runs);
            let dir = tmp.join(format!("run{run}-{}", cell.id()));
            let t0 = Instant::now();
            let result = std::fs::create_dir_all(&dir)
                .context("cannot create the run's folder")
                .and_then(|()| {
                    let mut r = Run::new(o, &img, &exe, &dir, *cell, max_bw);
                    let res = r.measure();
                    r.stop(&logs.join(format!("run{run}-{}", cell.id())));
                    res
                });
            let _ = std::fs::remove_dir_all(&dir);
            let rec = match result {
                Ok(mut v) => {
                    v["ok"] = json!(true);
                    v
                }
                Err(e) => {
                    failed += 1;
                    json!({"ok": false, "failure": format!("{e:#}")})
                }
            };
            let mut rec = rec;
            rec["cell"] = json!(cell.id());
            rec["app"] = json!(cell.app.name());
            rec["mode"] = json!(cell.mode);
            rec["prepaging"] = json!(cell.prepaging);
            rec["run"] = json!(run);
            rec["wall_s"] = json!(t0.elapsed().as_secs_f64());
            eprintln!("bench:   {}", one_line(&rec));
            records.push(rec);
            write_outputs(o, &cells, started_unix_s, max_bw, &records)?;
            if failed > 0 && o.fail_fast {
                break 'runs;
            }
        }
    }
    println!(
        "bench: {} run(s), {failed} failed; table {}, raw {}",
        records.len(),
        o.out.join("results.md").display(),
        o.out.join("results.json").display()
    );
    if testbed::interrupted() {
        return Ok(130);
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unix_us() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e6)
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// Processes with timestamped output

/// A child whose stdout and stderr are read as lines (split at `\n` and
/// `\r`, for progress lines), each with its time in ms since `epoch`.
struct Proc {
    process: Process,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<(f64, String)>>>,
    open: Arc<AtomicUsize>,
    scanned: usize,
    role: &'static str,
}

impl Proc {
    fn spawn(role: &'static str, mut cmd: Command, epoch: Instant, stdin: bool) -> Result<Proc> {
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut process = Process::spawn(role, cmd)?;
        let stdin = process.child.stdin.take();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(2));
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(process.child.stdout.take().context("no stdout pipe")?),
            Box::new(process.child.stderr.take().context("no stderr pipe")?),
        ];
        for mut p in pipes {
            let (lines, open) = (lines.clone(), open.clone());
            std::thread::Builder::new()
                .name("apps-reader".into())
                .spawn(move || {
                    let mut buf = [0u8; 8192];
                    let mut cur = Vec::new();
                    loop {
                        let n = match p.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let at = epoch.elapsed().as_secs_f64() * 1e3;
                        for &b in &buf[..n] {
                            if b == b'\n' || b == b'\r' {
                                if !cur.is_empty() {
                                    let t = String::from_utf8_lossy(&cur).into_owned();
                                    if let Ok(mut l) = lines.lock() {
                                        l.push((at, t));
                                    }
                                    cur.clear();
                                }
                            } else {
                                cur.push(b);
                            }
                        }
                    }
                    if !cur.is_empty() {
                        let at = epoch.elapsed().as_secs_f64() * 1e3;
                        if let Ok(mut l) = lines.lock() {
                            l.push((at, String::from_utf8_lossy(&cur).into_owned()));
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                })
                .context("cannot start a reader thread")?;
        }
        Ok(Proc {
            process,
            stdin,
            lines,
            open,
            scanned: 0,
            role,
        })
    }

    fn lines(&self) -> Vec<(f64, String)> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn tail(&self) -> String {
        let lines = self.lines();
        let n = lines.len().saturating_sub(15);
        let mut s = format!("; last output of {}:", self.role);
        for (_, t) in &lines[n..] {
            s.push_str("\n    ");
            s.push_str(t);
        }
        s
    }

    /// The next line containing `what`, within `timeout`.
    fn wait_for(&mut self, what: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let lines = self
                    .lines
                    .lock()
                    .map_err(|_| anyhow::anyhow!("a reader panicked"))?;
                if let Some(i) = lines[self.scanned..]
                    .iter()
                    .position(|(_, t)| t.contains(what))
                {
                    let i = self.scanned + i;
                    self.scanned = i + 1;
                    return Ok(lines[i].1.clone());
                }
                self.scanned = lines.len();
            }
            if let Some(s) = self.process.try_wait()? {
                self.drain();
                bail!("{} exited ({s}) before {what:?}{}", self.role, self.tail());
            }
            testbed::check_interrupted()?;
            if Instant::now() >= deadline {
                bail!(
                    "{} printed no {what:?} within {} s{}",
                    self.role,
                    timeout.as_secs(),
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn type_line(&mut self, line: &str) -> Result<()> {
        let role = self.role;
        let stdin = self.stdin.as_mut().context("no console input")?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .with_context(|| format!("cannot type into the {role}'s console"))
    }

    fn drain(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn control(sock: &Path, command: &str, args: Value) -> Result<Value> {
    let mut c = ControlClient::connect(sock)?;
    c.set_timeout(Some(CONTROL_TIMEOUT))?;
    c.execute(command, args)
}

/// Runs `f` on a thread inside the client namespace (setns moves only the
/// calling thread).
fn in_client<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let path = format!("/run/netns/{}", testbed::CLIENT_NS);
    std::thread::Builder::new()
        .name("apps-client".into())
        .spawn(move || {
            let ns = File::open(&path).with_context(|| format!("cannot open {path}"))?;
            // SAFETY: setns on a namespace file we hold open; it affects
            // only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            f()
        })
        .context("cannot start a client thread")
}

fn join<T>(h: std::thread::JoinHandle<Result<T>>) -> Result<T> {
    h.join()
        .map_err(|_| anyhow::anyhow!("a client thread panicked"))?
}

// ---------------------------------------------------------------------------
// redis

fn guest(port: u16) -> SocketAddr {
    let ip: std::net::Ipv4Addr = testbed::GUEST_ADDR
        .parse()
        .unwrap_or(std::net::Ipv4Addr::new(10, 77, 1, 10));
    SocketAddr::from((ip, port))
}

fn kv_key(i: u64) -> String {
    format!("gw:{i:07}")
}

/// The value of key `i`: hex digits of a splitmix64 stream seeded by `i`.
fn kv_value(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED;
    let mut v = Vec::with_capacity(KV_VALUE_BYTES);
    while v.len() < KV_VALUE_BYTES {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        for k in 0..16 {
            if v.len() < KV_VALUE_BYTES {
                v.push(b"0123456789abcdef"[((z >> (4 * k)) & 15) as usize]);
            }
        }
    }
    v
}

fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut r = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        r.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        r.extend_from_slice(a);
        r.extend_from_slice(b"\r\n");
    }
    r
}

/// A buffered reader of RESP replies.
struct RespConn {
    s: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

impl RespConn {
    fn connect(timeout: Duration) -> Result<RespConn> {
        let s = TcpStream::connect_timeout(&guest(6379), timeout)
            .context("cannot connect to the guest's redis")?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_nodelay(true)?;
        Ok(RespConn {
            s,
            buf: Vec::new(),
            pos: 0,
        })
    }

    fn fill(&mut self) -> Result<()> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut b = [0u8; 65536];
        let n = self.s.read(&mut b).context("read from redis")?;
        if n == 0 {
            bail!("redis closed the connection");
        }
        self.buf.extend_from_slice(&b[..n]);
        Ok(())
    }

    fn line(&mut self) -> Result<Vec<u8>> {
        for _ in 0..100_000 {
            if let Some(i) = self.buf[self.pos..].windows(2).position(|w| w == b"\r\n") {
                let l = self.buf[self.pos..self.pos + i].to_vec();
                self.pos += i + 2;
                return Ok(l);
            }
            self.fill()?;
        }
        bail!("a RESP line too long")
    }

    /// One reply: simple/integer/error as its line, bulk as its payload.
    fn reply(&mut self) -> Result<Vec<u8>> {
        let l = self.line()?;
        match l.first() {
            Some(b'$') => {
                let n: i64 = std::str::from_utf8(&l[1..])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .context("bad bulk length")?;
                if n < 0 {
                    return Ok(b"(nil)".to_vec());
                }
                let n = n as usize;
                for _ in 0..100_000 {
                    if self.buf.len() - self.pos >= n + 2 {
                        break;
                    }
                    self.fill()?;
                }
                if self.buf.len() - self.pos < n + 2 {
                    bail!("a bulk reply did not arrive");
                }
                let v = self.buf[self.pos..self.pos + n].to_vec();
                self.pos += n + 2;
                Ok(v)
            }
            _ => Ok(l),
        }
    }

    fn send(&mut self, b: &[u8]) -> Result<()> {
        self.s.write_all(b).context("write to redis")
    }
}

/// Loads keys 0..n (pipelined SETs); seconds taken.
fn kv_load(n: u64) -> Result<f64> {
    let t = Instant::now();
    let mut c = RespConn::connect(Duration::from_secs(10))?;
    for cfg in [["save", ""], ["appendonly", "no"]] {
        c.send(&resp(&[
            b"CONFIG",
            b"SET",
            cfg[0].as_bytes(),
            cfg[1].as_bytes(),
        ]))?;
        let r = c.reply()?;
        if r != b"+OK" {
            bail!("CONFIG SET {}: {}", cfg[0], String::from_utf8_lossy(&r));
        }
    }
    let mut i = 0;
    while i < n {
        let end = (i + KV_BATCH as u64).min(n);
        let mut req = Vec::new();
        for k in i..end {
            req.extend(resp(&[b"SET", kv_key(k).as_bytes(), &kv_value(k)]));
        }
        c.send(&req)?;
        for k in i..end {
            let r = c.reply()?;
            if r != b"+OK" {
                bail!("SET {}: {}", kv_key(k), String::from_utf8_lossy(&r));
            }
        }
        i = end;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Reads every key back; (DBSIZE, keys checked, wrong or missing).
fn kv_verify(n: u64) -> Result<(u64, u64, u64)> {
    let mut c = RespConn::connect(Duration::from_secs(10))?;
    c.send(&resp(&[b"DBSIZE"]))?;
    let r = c.reply()?;
    let dbsize: u64 = std::str::from_utf8(r.get(1..).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad DBSIZE reply {:?}", String::from_utf8_lossy(&r)))?;
    let (mut checked, mut bad) = (0, 0);
    let mut i = 0;
    while i < n {
        let end = (i + KV_BATCH as u64).min(n);
        let mut req = Vec::new();
        for k in i..end {
            req.extend(resp(&[b"GET", kv_key(k).as_bytes()]));
        }
        c.send(&req)?;
        for k in i..end {
            let v = c.reply()?;
            checked += 1;
            if v != kv_value(k) {
                bad += 1;
            }
        }
        i = end;
    }
    Ok((dbsize, checked, bad))
}

/// PINGs every 10 ms on one connection until `stop`; the times (ms since
/// `epoch`) of the answers, and the errors (a reconnect each).
fn kv_probe(epoch: Instant, stop: Arc<AtomicBool>) -> Result<(Vec<f64>, u64)> {
    let mut times = Vec::new();
    let mut errors = 0;
    let mut conn: Option<RespConn> = None;
    let end = Instant::now() + Duration::from_secs(900);
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match RespConn::connect(Duration::from_secs(2)) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    errors += 1;
                    std::thread::sleep(PROBE_PERIOD);
                    continue;
                }
            },
        };
        let ok = c
            .send(&resp(&[b"PING"]))
            .and_then(|()| c.reply())
            .map(|r| r == b"+PONG");
        match ok {
            Ok(true) => times.push(epoch.elapsed().as_secs_f64() * 1e3),
            _ => {
                errors += 1;
                conn = None;
            }
        }
        std::thread::sleep(PROBE_PERIOD);
    }
    Ok((times, errors))
}

// ---------------------------------------------------------------------------
// wrk

/// The wrk script: files picked by size class; per 100 ms bucket the
/// responses and the longest gap between two responses, in µs of the
/// host's wall clock, written to `out` when the bucket changes.
fn wrk_script(out: &Path) -> String {
    let mut s = String::from(
        "local ffi = require(\"ffi\")\n\
         ffi.cdef[[ typedef struct { long tv_sec; long tv_usec; } gw_timeval; int gettimeofday(gw_timeval *tv, void *tz); ]]\n\
         local tv = ffi.new(\"gw_timeval\")\n\
         local function now_us() ffi.C.gettimeofday(tv, nil); return tonumber(tv.tv_sec) * 1000000 + tonumber(tv.tv_usec) end\n\
         local classes = {\n",
    );
    let mut cum = 0.0;
    for (dir, _, n, pct) in WEB_SET {
        cum += pct;
        let _ = writeln!(s, "  {{ \"{dir}\", {n}, {cum} }},");
    }
    let _ = write!(
        s,
        "}}\n\
         local f, bucket, count, gap, last = nil, -1, 0, 0, nil\n\
         function init(args) f = io.open(\"{}\", \"w\"); math.randomseed(42) end\n\
         function request()\n\
           local r = math.random() * 100\n\
           local c = classes[#classes]\n\
           for i = 1, #classes do if r < classes[i][3] then c = classes[i]; break end end\n\
           return wrk.format(\"GET\", string.format(\"/gw/%s/f%05d\", c[1], math.random(0, c[2] - 1)))\n\
         end\n\
         function response(status, headers, body)\n\
           local t = now_us()\n\
           local b = math.floor(t / 100000)\n\
           if b ~= bucket then\n\
             if bucket >= 0 then f:write(string.format(\"%d %d %d\\n\", bucket, count, gap)); f:flush() end\n\
             bucket, count, gap = b, 0, 0\n\
           end\n\
           count = count + 1\n\
           if last ~= nil and t - last > gap then gap = t - last end\n\
           last = t\n\
         end\n",
        out.display()
    );
    s
}

/// The guest's shell line that makes the static set.
fn web_setup_cmd() -> String {
    let mut s = format!("rm -rf {WEB_ROOT} && mkdir -p {WEB_ROOT}");
    for (dir, size, n, _) in WEB_SET {
        let _ = write!(
            s,
            " && mkdir {WEB_ROOT}/{dir} && head -c {} /dev/urandom | split -b {size} -d -a 5 - {WEB_ROOT}/{dir}/f",
            size * u64::from(n)
        );
    }
    let _ = write!(
        s,
        " && sync && echo GWAPP-FILES-$((1 + 1)) $(find {WEB_ROOT} -type f | wc -l)"
    );
    s
}

// ---------------------------------------------------------------------------
// One run

struct Run<'a> {
    o: &'a Options,
    img: &'a DebianImage,
    exe: &'a Path,
    dir: &'a Path,
    cell: Cell,
    max_bw: Option<u64>,
    epoch: Instant,
    epoch_unix_us: f64,
    procs: Vec<Proc>,
    testbed: Option<Testbed>,
    stop_probe: Arc<AtomicBool>,
}

const SRC: usize = 0;
const DST: usize = 1;

impl<'a> Run<'a> {
    fn new(
        o: &'a Options,
        img: &'a DebianImage,
        exe: &'a Path,
        dir: &'a Path,
        cell: Cell,
        max_bw: Option<u64>,
    ) -> Run<'a> {
        Run {
            o,
            img,
            exe,
            dir,
            cell,
            max_bw,
            epoch: Instant::now(),
            epoch_unix_us: unix_us(),
            procs: Vec::new(),
            testbed: None,
            stop_probe: Arc::new(AtomicBool::new(true)),
        }
    }

    fn ms(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * 1e3
    }

    /// Kills everything, writes the logs, tears the testbed down.
    fn stop(&mut self, log_prefix: &Path) {
        self.stop_probe.store(true, Ordering::Relaxed);
        for p in &mut self.procs {
            p.process.kill();
        }
        for p in &self.procs {
            p.drain();
            let mut text = String::new();
            for (at, l) in p.lines() {
                let _ = writeln!(text, "{:10.1} {l}", at);
            }
            let path = PathBuf::from(format!("{}-{}.log", log_prefix.display(), p.role));
            let _ = std::fs::write(path, text);
        }
        self.procs.clear();
        if let Some(t) = self.testbed.take() {
            if let Err(e) = t.down() {
                eprintln!("bench: warning: testbed teardown failed: {e:#}");
            }
        }
    }

    fn measure(&mut self) -> Result<Value> {
        let (o, img, cell) = (self.o, self.img, self.cell);
        self.testbed = Some(Testbed::up(&o.link)?);
        let disk = self.dir.join("disk.img");
        sparse_copy(&img.disk, &disk)?;
        let drive = format!("file={}", disk.display());
        let net = format!("tap={}", testbed::TAP);
        let (src_sock, dst_sock) = (self.dir.join("src.sock"), self.dir.join("dst.sock"));
        let report_path = self.dir.join("report.json");
        let addr = format!("{}:{MIGRATION_PORT}", testbed::DST_ADDR);
        self.epoch = Instant::now();
        self.epoch_unix_us = unix_us();

        let mut src = testbed::in_netns(Side::Src, self.exe);
        src.arg("run").arg("--bios").arg(&img.bios);
        src.arg("--kernel").arg(&img.kernel);
        src.arg("--initrd").arg(&img.initrd);
        src.args(["--drive", &drive, "--net", &net]);
        src.args(["--mem", &o.mem.to_string(), "--cpus", &o.cpus.to_string()]);
        src.arg("--control").arg(&src_sock);
        src.args(["--append", DEBIAN_APPEND]);
        self.procs
            .push(Proc::spawn("source", src, self.epoch, true)?);
        let mut dst = testbed::in_netns(Side::Dst, self.exe);
        dst.args(["receive", "--listen", &addr, "--tls-plain", "--control"])
            .arg(&dst_sock)
            .args(["--drive", &drive, "--net", &net]);
        self.procs
            .push(Proc::spawn("destination", dst, self.epoch, true)?);
        self.procs[DST].wait_for("waiting for a migration", LISTEN_TIMEOUT)?;

        self.procs[SRC].wait_for(DEBIAN_READY, BOOT_TIMEOUT)?;
        let boot_s = self.ms() / 1e3;
        // The getty may drop what is typed while it starts.
        let mut up = false;
        for _ in 0..12 {
            self.procs[SRC].type_line("echo GWAPP-SHELL-$((40 + 2))")?;
            if self.procs[SRC]
                .wait_for("GWAPP-SHELL-42", Duration::from_secs(10))
                .is_ok()
            {
                up = true;
                break;
            }
        }
        if !up {
            bail!(
                "the guest's shell does not answer{}",
                self.procs[SRC].tail()
            );
        }

        let mut v = json!({"boot_s": boot_s});
        let kv_keys = u64::from(o.kv_mib) * 1_048_576 / KV_VALUE_BYTES as u64;
        match cell.app {
            App::Kv => {
                let secs = join(in_client(move || kv_load(kv_keys))?)?;
                eprintln!(
                    "bench:   loaded {kv_keys} keys ({} MiB of values) in {secs:.1} s",
                    o.kv_mib
                );
                v["kv_keys"] = json!(kv_keys);
                v["kv_value_bytes"] = json!(KV_VALUE_BYTES);
                v["kv_load_s"] = json!(secs);
            }
            App::Web => {
                self.procs[SRC].type_line(&web_setup_cmd())?;
                let l = self.procs[SRC].wait_for("GWAPP-FILES-2 ", Duration::from_secs(300))?;
                let want: u32 = WEB_SET.iter().map(|w| w.2).sum();
                let got: Option<u32> = l.split_whitespace().last().and_then(|w| w.parse().ok());
                if got != Some(want) {
                    bail!("the static set has {got:?} files, not {want}: {l:?}");
                }
                v["web_files"] = json!(want);
            }
        }
        // What the guest uses (free -m, from the console).
        self.procs[SRC]
            .type_line("echo GWAPP-MEM-$((1 + 1)) $(free -m | awk '/^Mem:/ {print $3, $6, $7}')")?;
        if let Ok(l) = self.procs[SRC].wait_for("GWAPP-MEM-2 ", Duration::from_secs(30)) {
            let w: Vec<f64> = l
                .split_whitespace()
                .skip_while(|w| !w.ends_with("GWAPP-MEM-2"))
                .skip(1)
                .filter_map(|w| w.parse().ok())
                .collect();
            if w.len() == 3 {
                v["guest_mem_mib"] = json!({"used": w[0], "buff_cache": w[1], "available": w[2]});
            }
        }
        if let Some(bw) = self.max_bw {
            control(
                &src_sock,
                "migrate-set-parameters",
                json!({ "max-bandwidth": bw }),
            )
            .context("cannot set max-bandwidth")?;
        }

        // The load, and for kv the probe.
        let series_path = self.dir.join("wrk-series.txt");
        let load_start_ms = self.ms();
        let mut load = Command::new("ip");
        load.args(["netns", "exec", testbed::CLIENT_NS]);
        match cell.app {
            App::Kv => {
                load.args([
                    "redis-benchmark",
                    "-h",
                    testbed::GUEST_ADDR,
                    "-t",
                    "set",
                    "-c",
                    "4",
                    "-d",
                    "256",
                    "-r",
                    "100000",
                    "-n",
                    "100000000",
                ]);
            }
            App::Web => {
                let script = self.dir.join("wrk.lua");
                std::fs::write(&script, wrk_script(&series_path))?;
                load.args([
                    "wrk",
                    "-t",
                    "1",
                    "-c",
                    "8",
                    "-d",
                    "600s",
                    "--timeout",
                    "10s",
                    "-s",
                ])
                .arg(&script)
                .arg(format!("http://{}/", testbed::GUEST_ADDR));
            }
        }
        self.procs
            .push(Proc::spawn("client", load, self.epoch, false)?);
        let load_i = self.procs.len() - 1;
        let probe = if cell.app == App::Kv {
            self.stop_probe = Arc::new(AtomicBool::new(false));
            let (epoch, stop) = (self.epoch, self.stop_probe.clone());
            Some(in_client(move || kv_probe(epoch, stop))?)
        } else {
            None
        };
        self.hold(load_i, LOAD_BEFORE)?;

        let start_ms = self.ms();
        let mut m = testbed::in_netns(Side::Src, self.exe);
        m.arg("migrate").arg("--control").arg(&src_sock);
        m.args(["--to", &addr, "--tls-plain", "--mode", cell.mode]);
        if let Some(p) = cell.prepaging {
            m.args(["--prepaging", p]);
        }
        m.arg("--json").arg(&report_path);
        m.args(["--timeout", &MIGRATE_TIMEOUT.as_secs().to_string()]);
        self.procs
            .push(Proc::spawn("migrate", m, self.epoch, false)?);
        let mi = self.procs.len() - 1;
        let status = self.procs[mi]
            .process
            .wait_timeout(MIGRATE_TIMEOUT + Duration::from_secs(30))?;
        let end_ms = self.ms();
        match status {
            None => bail!("godwit migrate did not finish{}", self.procs[mi].tail()),
            Some(s) if !s.success() => {
                self.procs[mi].drain();
                bail!("godwit migrate failed ({s}){}", self.procs[mi].tail())
            }
            Some(_) => {}
        }
        let report: Value = serde_json::from_str(
            &std::fs::read_to_string(&report_path).context("godwit migrate wrote no report")?,
        )
        .context("the migration report is not JSON")?;
        self.hold(load_i, LOAD_AFTER)?;
        let stop_ms = self.ms();

        // Stop the load: wrk prints its summary on SIGINT.
        let pid = self.procs[load_i].process.child.id() as libc::pid_t;
        // SAFETY: signals our own child's process group.
        unsafe { libc::kill(-pid, libc::SIGINT) };
        let st = self.procs[load_i]
            .process
            .wait_timeout(Duration::from_secs(10))?;
        if st.is_none() {
            self.procs[load_i].process.kill();
        }
        self.procs[load_i].drain();
        self.stop_probe.store(true, Ordering::Relaxed);
        let load_lines = self.procs[load_i].lines();

        let win = Windows {
            before: (load_start_ms + LOAD_SETTLE_MS, start_ms),
            during: (start_ms, end_ms),
            after: (end_ms, stop_ms),
        };
        v["window_ms"] = json!({
            "load_start": load_start_ms, "migrate_start": start_ms,
            "migrate_end": end_ms, "load_stop": stop_ms,
        });
        match cell.app {
            App::Kv => {
                // redis-benchmark's progress: "SET: rps=N (overall: ...) ...".
                let mut series = Vec::new();
                let mut errors = Vec::new();
                for (at, l) in &load_lines {
                    if let Some(r) = l.split("rps=").nth(1) {
                        if let Some(x) = r
                            .split_whitespace()
                            .next()
                            .and_then(|x| x.parse::<f64>().ok())
                        {
                            series.push((*at, x));
                        }
                    } else if l.contains("rror") || l.contains("closed") {
                        errors.push(l.clone());
                    }
                }
                if series.len() < 10 {
                    bail!(
                        "redis-benchmark printed too little progress ({} lines){}",
                        series.len(),
                        self.procs[load_i].tail()
                    );
                }
                let (times, probe_errors) = match probe {
                    Some(h) => join(h)?,
                    None => (Vec::new(), 0),
                };
                let gap = longest_gap(&times, start_ms, stop_ms);
                let kv = join(in_client(move || kv_verify(kv_keys))?)?;
                v["client"] = json!({
                    "tool": "redis-benchmark -t set -c 4 -d 256 -r 100000 (no rate limit: 4 clients, one request in flight each)",
                    "rps_before": mean_rate(&series, win.before),
                    "rps_during": mean_rate(&series, win.during),
                    "rps_after": mean_rate(&series, win.after),
                    "series_250ms": series.iter().map(|(t, r)| json!([t, r])).collect::<Vec<_>>(),
                    "errors": errors,
                    "exited_early": load_exited_early(&load_lines, st),
                    "probe_answers": times.len(),
                    "probe_errors": probe_errors,
                    "downtime_client_ms": gap.map(|g| g - PROBE_PERIOD.as_secs_f64() * 1e3),
                });
                v["kv_check"] = json!({"dbsize": kv.0, "checked": kv.1, "wrong_or_missing": kv.2});
                let failed = errors.len() as u64 + probe_errors + kv.2;
                v["failed_requests"] = json!(failed);
                if kv.0 < kv_keys || kv.1 != kv_keys || kv.2 > 0 {
                    bail!("redis lost data: DBSIZE {} of ≥ {kv_keys}, {} checked, {} wrong or missing", kv.0, kv.1, kv.2);
                }
                if failed > 0 {
                    bail!("the client saw failures: {errors:?}, {probe_errors} probe errors");
                }
            }
            App::Web => {
                let text = std::fs::read_to_string(&series_path).unwrap_or_default();
                let mut series = Vec::new();
                let mut gap_max: f64 = 0.0;
                for l in text.lines() {
                    let w: Vec<f64> = l
                        .split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    if w.len() == 3 {
                        let t_ms = w[0] * 100.0 - self.epoch_unix_us / 1e3;
                        series.push((t_ms, w[1] * 10.0));
                        // A gap ending in this bucket, within the migration or after it.
                        if t_ms + 100.0 >= start_ms && t_ms <= stop_ms {
                            gap_max = gap_max.max(w[2] / 1e3);
                        }
                    }
                }
                let summary: Vec<&str> = load_lines.iter().map(|(_, l)| l.as_str()).collect();
                let socket_errors = summary
                    .iter()
                    .find(|l| l.contains("Socket errors"))
                    .map(|l| l.trim().to_string());
                let non2xx: u64 = summary
                    .iter()
                    .find(|l| l.contains("Non-2xx"))
                    .and_then(|l| l.split(':').nth(1))
                    .and_then(|x| x.trim().parse().ok())
                    .unwrap_or(0);
                let requests = summary
                    .iter()
                    .find(|l| l.contains("requests in"))
                    .map(|l| l.trim().to_string());
                let rps_total: Option<f64> = summary
                    .iter()
                    .find(|l| l.contains("Requests/sec"))
                    .and_then(|l| l.split(':').nth(1))
                    .and_then(|x| x.trim().parse().ok());
                if requests.is_none() {
                    bail!("wrk printed no summary{}", self.procs[load_i].tail());
                }
                let sock_err_n: u64 = socket_errors
                    .as_deref()
                    .map(|l| {
                        l.split(',')
                            .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                            .sum()
                    })
                    .unwrap_or(0);
                v["client"] = json!({
                    "tool": "wrk -t 1 -c 8 (no rate limit), files by size class 70/25/4.5/0.5 %",
                    "rps_before": mean_bucket(&series, win.before),
                    "rps_during": mean_bucket(&series, win.during),
                    "rps_after": mean_bucket(&series, win.after),
                    "rps_wrk_total": rps_total,
                    "wrk_requests": requests,
                    "socket_errors": socket_errors,
                    "non_2xx": non2xx,
                    "series_100ms": series.iter().map(|(t, r)| json!([t, r])).collect::<Vec<_>>(),
                    "downtime_client_ms": (!series.is_empty()).then_some(gap_max),
                });
                v["failed_requests"] = json!(non2xx + sock_err_n);
                if non2xx + sock_err_n > 0 {
                    bail!("wrk saw failures: {non2xx} non-2xx, {socket_errors:?}");
                }
            }
        }
        v["report"] = report;
        // Ask the destination to quit; the source ended with the migration.
        let _ = control(&dst_sock, "quit", Value::Null);
        Ok(v)
    }

    /// Waits `d`, failing early if a VMM or the load exits.
    fn hold(&mut self, load_i: usize, d: Duration) -> Result<()> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            testbed::check_interrupted()?;
            if let Some(s) = self.procs[load_i].process.try_wait()? {
                self.procs[load_i].drain();
                bail!("the load exited ({s}){}", self.procs[load_i].tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

struct Windows {
    before: (f64, f64),
    during: (f64, f64),
    after: (f64, f64),
}

fn load_exited_early(_lines: &[(f64, String)], st: Option<std::process::ExitStatus>) -> bool {
    // Stopped by our SIGINT: a signal, not an exit code.
    matches!(st, Some(s) if s.code().is_some() && !s.success())
}

/// The longest gap between consecutive `times` that ends in [from, to].
fn longest_gap(times: &[f64], from: f64, to: f64) -> Option<f64> {
    times
        .windows(2)
        .filter(|w| w[1] >= from && w[0] <= to)
        .map(|w| w[1] - w[0])
        .fold(None, |m: Option<f64>, g| Some(m.map_or(g, |m| m.max(g))))
}

/// Mean of a progress series of (end time, rate over the interval before)
/// over the intervals that end within `w`, weighted by their length.
fn mean_rate(series: &[(f64, f64)], w: (f64, f64)) -> Option<f64> {
    let (mut sum, mut len) = (0.0, 0.0);
    for p in series.windows(2) {
        let (t0, (t1, r)) = (p[0].0, p[1]);
        if t1 > w.0 && t1 <= w.1 {
            sum += r * (t1 - t0);
            len += t1 - t0;
        }
    }
    (len > 0.0).then(|| sum / len)
}

/// Mean rate of 100 ms buckets (start time, rate) within `w`, empty buckets
/// counting as 0.
fn mean_bucket(series: &[(f64, f64)], w: (f64, f64)) -> Option<f64> {
    let span = w.1 - w.0;
    if span < 100.0 {
        return None;
    }
    let n: f64 = series
        .iter()
        .filter(|(t, _)| *t >= w.0 && *t + 100.0 <= w.1)
        .map(|(_, r)| r / 10.0)
        .sum();
    let full = ((span / 100.0).floor() * 100.0).max(100.0);
    Some(n / (full / 1e3))
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn one_line(r: &Value) -> String {
    if r["ok"] != json!(true) {
        return format!("FAILED: {}", r["failure"].as_str().unwrap_or("?"));
    }
    let f = |v: &Value| num(v).map_or("-".to_string(), |x| format!("{x:.1}"));
    format!(
        "total {} ms, downtime {} ms (VMM) / {} ms (client), faults {}, rps {} / {} / {}, failed {}",
        f(&r["report"]["total_ms"]),
        f(&r["report"]["downtime_ms"]),
        f(&r["client"]["downtime_client_ms"]),
        f(&r["report"]["network_faults"]),
        f(&r["client"]["rps_before"]),
        f(&r["client"]["rps_during"]),
        f(&r["client"]["rps_after"]),
        f(&r["failed_requests"]),
    )
}

fn write_outputs(
    o: &Options,
    cells: &[Cell],
    started_unix_s: u64,
    max_bw: Option<u64>,
    records: &[Value],
) -> Result<()> {
    let doc = json!({
        "godwit_version": env!("CARGO_PKG_VERSION"),
        "preset": "apps",
        "runs_per_cell": o.runs,
        "link": o.link.to_json(),
        "max_bandwidth_bytes_per_s": max_bw,
        "mem_bytes": o.mem,
        "cpus": o.cpus,
        "kv_mib": o.kv_mib,
        "load_before_s": LOAD_BEFORE.as_secs(),
        "load_after_s": LOAD_AFTER.as_secs(),
        "started_unix_s": started_unix_s,
        "cells": cells.iter().map(|c| c.id()).collect::<Vec<_>>(),
        "runs": records,
    });
    let path = o.out.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    let path = o.out.join("results.md");
    std::fs::write(&path, table(o, cells, max_bw, records))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn table(o: &Options, cells: &[Cell], max_bw: Option<u64>, records: &[Value]) -> String {
    let mut s = String::from("# godwit bench: preset apps\n\n");
    let _ = writeln!(
        s,
        "Debian guest (guest/debian), {} MiB, {} vCPUs, disk shared by both hosts, NIC on the testbed's VM network; link {}; migration max-bandwidth {}. Load {} s before the migration (the first {} s not counted) and {} s after it.\n",
        o.mem >> 20,
        o.cpus,
        o.link,
        max_bw.map_or("none".into(), |b| format!("{b} B/s")),
        LOAD_BEFORE.as_secs(),
        LOAD_SETTLE_MS / 1e3,
        LOAD_AFTER.as_secs()
    );
    let _ = writeln!(
        s,
        "*kv*: redis-server with {} MiB of values ({} keys × {KV_VALUE_BYTES} B, loaded before the load starts, every one read back and compared after the migration); load `redis-benchmark -t set -c 4 -d 256 -r 100000` from the client namespace; rps from its 250 ms progress line; *client downtime*: the longest gap between answers of a PING sent every 10 ms on its own connection, minus the period. \
         *web*: nginx serving {} files (1 KiB / 10 KiB / 100 KiB / 1 MiB, requested 70 / 25 / 4.5 / 0.5 %), load `wrk -t 1 -c 8`; rps from 100 ms buckets of its responses; *client downtime*: the longest gap between two responses (µs clock) from the migration's start to the load's end. \
         Neither tool has a rate limit: the load is a fixed number of connections. *failed*: kv: redis-benchmark errors + probe errors + keys wrong or missing; web: non-2xx + socket errors. Pages: pre-copy / stop-and-copy / demand / pushed / zero / free skipped.\n",
        o.kv_mib,
        u64::from(o.kv_mib) * 1_048_576 / KV_VALUE_BYTES as u64,
        WEB_SET.iter().map(|w| w.2).sum::<u32>()
    );
    s.push_str("| cell | mode | prepaging | total ms | downtime ms (VMM) | downtime ms (client) | pages pre/stop/demand/pushed/zero/free | network faults | rps before / during / after | failed | runs ok |\n");
    s.push_str("| --- | --- | --- | --: | --: | --: | --- | --: | --- | --: | --- |\n");
    for c in cells {
        let rs: Vec<&Value> = records
            .iter()
            .filter(|r| r["cell"] == json!(c.id()))
            .collect();
        if rs.is_empty() {
            continue;
        }
        let ok: Vec<&&Value> = rs.iter().filter(|r| r["ok"] == json!(true)).collect();
        let stat = |f: &dyn Fn(&Value) -> Option<f64>, d: usize| -> String {
            let v: Vec<f64> = ok.iter().filter_map(|r| f(r)).collect();
            match crate::stats::mean_sd(&v) {
                Some((m, sd)) if v.len() > 1 => format!("{m:.d$} ± {sd:.d$}"),
                Some((m, _)) => format!("{m:.d$}"),
                None => "-".into(),
            }
        };
        let pages: Vec<String> = [
            "pages_precopy",
            "pages_stop_copy",
            "pages_demand",
            "pages_pushed",
            "pages_zero",
            "pages_free_skipped",
        ]
        .iter()
        .map(|k| stat(&|r: &Value| num(&r["report"][*k]), 0))
        .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {}/{} |",
            c.app.name(),
            c.mode,
            c.prepaging.unwrap_or("-"),
            stat(&|r: &Value| num(&r["report"]["total_ms"]), 0),
            stat(&|r: &Value| num(&r["report"]["downtime_ms"]), 1),
            stat(&|r: &Value| num(&r["client"]["downtime_client_ms"]), 1),
            pages.join(" / "),
            stat(&|r: &Value| num(&r["report"]["network_faults"]), 0),
            stat(&|r: &Value| num(&r["client"]["rps_before"]), 0),
            stat(&|r: &Value| num(&r["client"]["rps_during"]), 0),
            stat(&|r: &Value| num(&r["client"]["rps_after"]), 0),
            stat(&|r: &Value| num(&r["failed_requests"]), 0),
            ok.len(),
            rs.len()
        );
    }
    for r in records.iter().filter(|r| r["ok"] != json!(true)) {
        let _ = writeln!(
            s,
            "\nFAILED {} run {}: {}",
            r["cell"].as_str().unwrap_or("?"),
            r["run"],
            r["failure"].as_str().unwrap_or("?")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_values_and_series() {
        let ids: Vec<String> = matrix().iter().map(Cell::id).collect();
        assert_eq!(ids.len(), 8);
        assert!(ids.contains(&"kv-postcopy-dual".to_string()));
        assert_eq!(select(matrix(), Some("web,postcopy")).len(), 2);
        assert_eq!(kv_value(7), kv_value(7));
        assert_ne!(kv_value(7), kv_value(8));
        assert_eq!(kv_value(1).len(), KV_VALUE_BYTES);
        assert_eq!(
            longest_gap(&[0.0, 10.0, 50.0, 60.0], 5.0, 100.0),
            Some(40.0)
        );
        let s = [(0.0, 100.0), (250.0, 100.0), (500.0, 0.0), (750.0, 200.0)];
        assert_eq!(mean_rate(&s, (0.0, 500.0)), Some(50.0));
        assert!(web_setup_cmd().contains("split -b 1024 -d -a 5"));
        assert!(wrk_script(Path::new("/tmp/x")).contains("/gw/%s/f%05d"));
    }
}

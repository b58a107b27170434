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
//! - **stream**: `iperf3 -s` in the guest, `iperf3 --bidir -i 0.1` from
//!   the client namespace: a TCP stream each way at full speed; its 100 ms
//!   intervals are the throughput series. `ping -i 0.01` on the side: the
//!   longest gap between its replies is the client-observed downtime.
//!   iperf3 must report no error (a reset or stalled connection ends it).
//! - **build**: `make -j2 linux` of Lua 5.4.7, from Debian's upstream
//!   tarball of the `lua5.4` source package (downloaded once into the
//!   cache, SHA-256 checked, written into the run's disk copy with
//!   debugfs), migrated [`BUILD_BEFORE`] after it starts. Its end line
//!   carries make's exit code and a hash of every object, the library and
//!   both programs; an unmigrated build (the `build-unmigrated` cell, which
//!   any build cell brings along and which runs first in every round) is
//!   the reference the migrated builds' hash must equal and their wall
//!   time is set against.
//!
//! Before every migration the writable working set is measured: the source
//! VMM's `calc-dirty-rate` keeps the dirty log on for [`WWS_WINDOW`] of the
//! steady state and counts the pages it holds; the network faults are
//! reported as a share of it (the paper's measure).
//!
//! Every application runs with stop-and-copy, pre-copy, post-copy with
//! each pre-paging strategy (`none`, `forward`, `dual`, `multi-pivot`) and
//! hybrid (`dual`), then pre-copy and post-copy `dual` again with
//! self-ballooning off (`godwit run --no-balloon`: no free page reporting,
//! free pages migrated like any other). `--preset apps-quick` runs post-copy
//! `dual` only, one cell per application. Each run boots a fresh sparse copy of the image
//! (shared by source and destination: shared storage), waits for the
//! guest's marker, sets up the application, starts the load, waits
//! `LOAD_BEFORE` (the steady state), migrates with `godwit migrate`, keeps
//! the load `LOAD_AFTER` on the destination, stops it and checks the data.
//! Every wait is bounded; every child is killed with its process group and
//! the testbed is torn down on every path.

use crate::migration::{Vmm, QEMU_MULTIFD_CHANNELS};
use crate::qemu::{self, Qemu, Qmp, Switch};
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
/// The writable working set: the pages the guest writes over this window
/// just before the migration (`calc-dirty-rate`, the dirty log).
const WWS_WINDOW: Duration = Duration::from_secs(5);
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
    /// The quick subset (`--preset apps-quick`).
    pub quick: bool,
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
    /// The QEMU of the QEMU cells, or none (`--no-qemu`).
    pub qemu: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum App {
    Kv,
    Web,
    Stream,
    Build,
}

impl App {
    fn name(self) -> &'static str {
        match self {
            App::Kv => "kv",
            App::Web => "web",
            App::Stream => "stream",
            App::Build => "build",
        }
    }
}

/// The build cell's mode without a migration: its output is the reference
/// the migrated builds must reproduce, its wall time their baseline.
const UNMIGRATED: &str = "unmigrated";

#[derive(Clone, Copy, Debug)]
struct Cell {
    app: App,
    mode: &'static str,
    prepaging: Option<&'static str>,
    /// Self-ballooning (the guest's free page reporting, and the free
    /// pages skipped by the migration); off: `godwit run --no-balloon`.
    balloon: bool,
    vmm: Vmm,
    /// Compression of the bulk page transfer: Godwit's `--compress`; for
    /// QEMU, multifd ([`QEMU_MULTIFD_CHANNELS`] channels) with this
    /// `multifd-compression`.
    compress: Option<&'static str>,
    /// Pre-copy's auto-converge (the vCPU throttle).
    auto_converge: bool,
    /// Godwit's bulk channels (`--channels`).
    channels: u32,
}

impl Cell {
    fn new(app: App, mode: &'static str, prepaging: Option<&'static str>) -> Cell {
        Cell {
            app,
            mode,
            prepaging,
            balloon: true,
            vmm: Vmm::Godwit,
            compress: None,
            auto_converge: false,
            channels: 1,
        }
    }

    fn id(&self) -> String {
        let mut id = if self.vmm != Vmm::Godwit {
            format!("{}-{}{}", self.app.name(), self.vmm.id_prefix(), self.mode)
        } else {
            match self.prepaging {
                Some(p) => format!("{}-{}-{p}", self.app.name(), self.mode),
                None => format!("{}-{}", self.app.name(), self.mode),
            }
        };
        if let Some(c) = self.compress {
            if self.vmm != Vmm::Godwit {
                id.push_str("-multifd");
            }
            id.push('-');
            id.push_str(c);
        }
        if self.auto_converge {
            id.push_str("-ac");
        }
        if self.channels > 1 {
            id.push_str(&format!("-mfd{}", self.channels));
        }
        if !self.balloon {
            id.push_str("-noballoon");
        }
        id
    }

    /// The table's mode column.
    fn mode_label(&self) -> String {
        let mut l = self.mode.to_string();
        if let Some(c) = self.compress {
            if self.vmm != Vmm::Godwit {
                l += &format!(" +multifd×{QEMU_MULTIFD_CHANNELS}");
            }
            l += &format!(" +{c}");
        }
        if self.auto_converge {
            l += " +auto-converge";
        }
        if self.channels > 1 {
            l += &format!(" +multifd×{}", self.channels);
        }
        if self.vmm != Vmm::Godwit {
            l += &format!(" ({})", self.vmm.name());
        }
        l
    }
}

/// Every cell: per application every mode and post-copy strategy (hybrid
/// with `dual`), then pre-copy and post-copy dual without self-ballooning;
/// `quick`: post-copy dual only.
fn matrix(quick: bool) -> Vec<Cell> {
    let mut v = Vec::new();
    for app in [App::Kv, App::Web, App::Stream, App::Build] {
        if app == App::Build {
            v.push(Cell::new(app, UNMIGRATED, None));
        }
        if quick {
            v.push(Cell::new(app, "postcopy", Some("dual")));
            continue;
        }
        for (mode, prepaging) in [
            ("stop-and-copy", None),
            ("precopy", None),
            ("postcopy", Some("none")),
            ("postcopy", Some("forward")),
            ("postcopy", Some("dual")),
            ("postcopy", Some("multi-pivot")),
            ("hybrid", Some("dual")),
        ] {
            v.push(Cell::new(app, mode, prepaging));
        }
        for (mode, prepaging) in [("precopy", None), ("postcopy", Some("dual"))] {
            v.push(Cell {
                balloon: false,
                ..Cell::new(app, mode, prepaging)
            });
        }
        // Pre-copy with its bulk transfer compressed, and with
        // auto-converge too (QEMU's tuned cell below does the same).
        // Then zstd spread over as many channels as QEMU's multifd gets.
        for (compress, auto_converge, channels) in [
            ("lz4", false, 1),
            ("zstd", false, 1),
            ("zstd", true, 1),
            ("zstd", false, QEMU_MULTIFD_CHANNELS),
            ("zstd", true, QEMU_MULTIFD_CHANNELS),
        ] {
            v.push(Cell {
                compress: Some(compress),
                auto_converge,
                channels,
                ..Cell::new(app, "precopy", None)
            });
        }
        // QEMU beside it: pre-copy as shipped; post-copy (switched at once)
        // and hybrid (switched after the first pass) with the timer re-arm.
        // Not the build: its wall time under QEMU's translator would need
        // an unmigrated QEMU build of its own.
        if app != App::Build {
            for (vmm, mode) in [
                (Vmm::Qemu, "precopy"),
                (Vmm::QemuRearm, "postcopy"),
                (Vmm::QemuRearm, "hybrid"),
            ] {
                v.push(Cell {
                    vmm,
                    ..Cell::new(app, mode, None)
                });
            }
            // QEMU's pre-copy tuned: multifd with zstd, auto-converge.
            v.push(Cell {
                vmm: Vmm::Qemu,
                compress: Some("zstd"),
                auto_converge: true,
                ..Cell::new(app, "precopy", None)
            });
        }
    }
    v
}

/// The cells `only` picks; a migrated build brings the unmigrated one
/// along (run first in every round: the reference for its output).
fn select(cells: Vec<Cell>, only: Option<&str>) -> Vec<Cell> {
    let mut v = crate::migration::select_by_id(cells, only, Cell::id);
    let builds = v.iter().any(|c| c.app == App::Build);
    let has_ref = v
        .iter()
        .any(|c| c.app == App::Build && c.mode == UNMIGRATED);
    if builds && !has_ref {
        let at = v.iter().position(|c| c.app == App::Build).unwrap_or(0);
        v.insert(at, Cell::new(App::Build, UNMIGRATED, None));
    }
    v
}

pub fn run(o: &Options) -> Result<i32> {
    let mut all = matrix(o.quick);
    if o.qemu.is_none() {
        all.retain(|c| c.vmm == Vmm::Godwit);
    }
    let cells = select(all, o.only.as_deref());
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
    for (tool, hint, app) in [
        ("wrk", "wrk", App::Web),
        ("redis-benchmark", "redis-tools", App::Kv),
        ("iperf3", "iperf3", App::Stream),
        ("ping", "iputils-ping", App::Stream),
        ("debugfs", "e2fsprogs", App::Build),
        ("curl", "curl", App::Build),
    ] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found && cells.iter().any(|c| c.app == app) {
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
    let qemu = match &o.qemu {
        Some(exe) if cells.iter().any(|c| c.vmm != Vmm::Godwit) => Some(
            Qemu::find(exe).context("the QEMU cells need QEMU (or leave them out: --no-qemu)")?,
        ),
        _ => None,
    };
    let build_src = if cells.iter().any(|c| c.app == App::Build) {
        Some(build_source()?)
    } else {
        None
    };
    let mut build_ref: Option<BuildRef> = None;
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
                    r.build_src = build_src.clone();
                    r.qemu = qemu.as_ref();
                    r.build_ref = build_ref.clone();
                    let res = r.measure();
                    r.stop(&logs.join(format!("run{run}-{}", cell.id())));
                    res
                });
            let _ = std::fs::remove_dir_all(&dir);
            let rec = match result {
                Ok(mut v) => {
                    v["ok"] = json!(true);
                    if cell.app == App::Build && cell.mode == UNMIGRATED {
                        build_ref = BuildRef::from_record(&v, build_ref.as_ref());
                    }
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
            rec["balloon"] = json!(cell.balloon);
            rec["compress"] = json!(cell.compress);
            rec["auto_converge"] = json!(cell.auto_converge);
            rec["channels"] = json!(cell.channels);
            rec["vmm"] = json!(cell.vmm.name());
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
        self.wait_for_at(what, timeout).map(|(_, l)| l)
    }

    /// The next line containing `what`, within `timeout`, and when it came
    /// (ms since the epoch).
    fn wait_for_at(&mut self, what: &str, timeout: Duration) -> Result<(f64, String)> {
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
                    return Ok(lines[i].clone());
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
// iperf3 and ping

/// One interval line of an `iperf3 --bidir -i 0.1 -f m` client: whether it
/// is the client's sending stream (`[TX-C]`, else `[RX-C]`) and its
/// Mbit/s; `None` for any other line (headers, the summary's sender and
/// receiver totals).
fn iperf_interval(l: &str) -> Option<(bool, f64)> {
    let tx = l.contains("[TX-C]");
    if !(tx || l.contains("[RX-C]")) || l.contains("sender") || l.contains("receiver") {
        return None;
    }
    let w: Vec<&str> = l.split_whitespace().collect();
    let i = w.iter().position(|x| *x == "Mbits/sec")?;
    Some((tx, w.get(i.checked_sub(1)?)?.parse().ok()?))
}

/// The reception time (Unix seconds) of a `ping -D` reply line.
fn ping_reply_unix_s(l: &str) -> Option<f64> {
    if !l.contains("bytes from") {
        return None;
    }
    l.strip_prefix('[')?.split(']').next()?.parse().ok()
}

/// The longest run of consecutive intervals of `series` (time, Mbit/s, in
/// order) that moved nothing, in intervals.
fn longest_stall(series: &[(f64, f64)], w: (f64, f64)) -> u32 {
    let (mut run, mut best) = (0, 0);
    for (t, r) in series {
        if *t < w.0 || *t > w.1 {
            continue;
        }
        if *r <= 0.0 {
            run += 1;
            best = best.max(run);
        } else {
            run = 0;
        }
    }
    best
}

// ---------------------------------------------------------------------------
// The build: Lua 5.4's sources, from Debian's archive

/// Debian trixie's upstream tarball of Lua 5.4.7 (the `lua5.4` source
/// package), under the archive's root, and its SHA-256 as the archive
/// lists it; the top folder it unpacks into.
const LUA_POOL_PATH: &str = "pool/main/l/lua5.4/lua5.4_5.4.7.orig.tar.gz";
const LUA_SHA256: &str = "9fbf5e28ef86c69858f6d3d34eccc32e911c1a28b4120ff3e84aaa70cfbf1e30";
const LUA_DIR: &str = "lua-5.4.7";
/// The build runs this long before the migration starts.
const BUILD_BEFORE: Duration = Duration::from_secs(15);
const BUILD_TIMEOUT: Duration = Duration::from_secs(1200);

fn sha256_of(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("cannot run sha256sum")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next() {
        Some(h) if out.status.success() => Ok(h.to_string()),
        _ => bail!("sha256sum {} failed", path.display()),
    }
}

/// The build's sources, downloaded once (GODWIT_DEBIAN_MIRROR, else
/// deb.debian.org) into the cache and checked against their hash.
fn build_source() -> Result<PathBuf> {
    let dir = godwit_vmm::guest::cache_dir().join("apps");
    let path = dir.join(LUA_POOL_PATH.rsplit('/').next().unwrap_or("lua.tar.gz"));
    if path.exists() && sha256_of(&path)? == LUA_SHA256 {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mirror = std::env::var("GODWIT_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let url = format!("{}/{LUA_POOL_PATH}", mirror.trim_end_matches('/'));
    let part = path.with_extension("part");
    eprintln!("bench: fetching the build's sources from {url}");
    let st = Command::new("curl")
        .args(["-fsSL", "--retry", "3", "--max-time", "300", "-o"])
        .arg(&part)
        .arg(&url)
        .status()
        .context("cannot run curl")?;
    if !st.success() {
        let _ = std::fs::remove_file(&part);
        bail!("cannot download {url} ({st}); GODWIT_DEBIAN_MIRROR picks another mirror");
    }
    let got = sha256_of(&part)?;
    if got != LUA_SHA256 {
        let _ = std::fs::remove_file(&part);
        bail!("{url} has SHA-256 {got}, not {LUA_SHA256}");
    }
    std::fs::rename(&part, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Puts `src` into `/root/src.tar.gz` of the ext4 image `disk` (not
/// mounted by anyone) with debugfs.
fn put_into_image(disk: &Path, src: &Path) -> Result<()> {
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!("write {} /root/src.tar.gz", src.display()))
        .arg(disk)
        .output()
        .context("cannot run debugfs")?;
    let err = String::from_utf8_lossy(&out.stderr);
    // debugfs prints its banner on stderr and exits 0 on most errors.
    let complaints: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    if !out.status.success() || !complaints.is_empty() {
        bail!(
            "debugfs could not write {} into {}: {}",
            src.display(),
            disk.display(),
            complaints.join("; ")
        );
    }
    Ok(())
}

/// The guest's shell line that unpacks the sources, checks them and says
/// so.
fn build_setup_cmd() -> &'static str {
    "rm -rf /root/b && mkdir /root/b && tar -xzf /root/src.tar.gz -C /root/b && \
     echo GWAPP-SRC-$((1 + 1)) $(sha256sum < /root/src.tar.gz | cut -d' ' -f1) $(ls /root/b)"
}

/// The guest's shell line that runs the build in the background and, when
/// it ends, prints its exit code, its time by the guest's clock and a hash
/// of everything it produced (the objects, the library and both programs).
fn build_cmd() -> String {
    format!(
        "(cd /root/b/{LUA_DIR} && echo GWAPP-BUILD-START-$((1 + 1)) && t0=$(date +%s.%N) && \
         make -j2 linux > /root/build.log 2>&1; rc=$?; t1=$(date +%s.%N); \
         echo GWAPP-BUILD-$((1 + 1)) $rc $(awk \"BEGIN {{ print $t1 - $t0 }}\") \
         $(cat src/*.o src/liblua.a src/lua src/luac | sha256sum | cut -c1-16)) &"
    )
}

/// The unmigrated builds so far: their output's hash, and their wall times.
#[derive(Clone, Debug)]
struct BuildRef {
    hash: String,
    wall_s: Vec<f64>,
}

impl BuildRef {
    /// `prev` with the unmigrated run `v` added.
    fn from_record(v: &Value, prev: Option<&BuildRef>) -> Option<BuildRef> {
        let hash = v["build"]["hash"].as_str()?.to_string();
        let wall = v["build"]["wall_s"].as_f64()?;
        let mut wall_s = prev.map(|p| p.wall_s.clone()).unwrap_or_default();
        wall_s.push(wall);
        Some(BuildRef { hash, wall_s })
    }

    fn mean_wall_s(&self) -> Option<f64> {
        crate::stats::mean_sd(&self.wall_s).map(|(m, _)| m)
    }
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
    /// The build cell's sources and the unmigrated builds so far.
    build_src: Option<PathBuf>,
    build_ref: Option<BuildRef>,
    /// QEMU, for the QEMU cells; their QMP connections (source,
    /// destination) once both run.
    qemu: Option<&'a Qemu>,
    qmp: Option<(Qmp, Qmp)>,
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
            build_src: None,
            build_ref: None,
            qemu: None,
            qmp: None,
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
        if cell.app == App::Build {
            let src = self
                .build_src
                .as_deref()
                .context("no sources for the build")?;
            put_into_image(&disk, src)?;
        }
        let drive = format!("file={}", disk.display());
        let net = format!("tap={}", testbed::TAP);
        let (src_sock, dst_sock) = (self.dir.join("src.sock"), self.dir.join("dst.sock"));
        let report_path = self.dir.join("report.json");
        let addr = format!("{}:{MIGRATION_PORT}", testbed::DST_ADDR);
        self.epoch = Instant::now();
        self.epoch_unix_us = unix_us();

        if cell.vmm == Vmm::Godwit {
            let mut src = testbed::in_netns(Side::Src, self.exe);
            src.arg("run").arg("--bios").arg(&img.bios);
            src.arg("--kernel").arg(&img.kernel);
            src.arg("--initrd").arg(&img.initrd);
            src.args(["--drive", &drive, "--net", &net]);
            src.args(["--mem", &o.mem.to_string(), "--cpus", &o.cpus.to_string()]);
            if !cell.balloon {
                src.arg("--no-balloon");
            }
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
        } else {
            self.start_qemu(&disk, &addr)?;
        }

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

        let mut v = json!({"boot_s": boot_s, "epoch_unix_us": self.epoch_unix_us});
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
            App::Stream => {
                self.procs[SRC].type_line("iperf3 -s -D && echo GWAPP-IPERF-$((1 + 1))")?;
                self.procs[SRC].wait_for("GWAPP-IPERF-2", Duration::from_secs(30))?;
                // The daemon listens a moment after it forks.
                std::thread::sleep(Duration::from_secs(1));
            }
            App::Build => {
                self.procs[SRC].type_line(build_setup_cmd())?;
                let l = self.procs[SRC].wait_for("GWAPP-SRC-2 ", Duration::from_secs(300))?;
                if !(l.contains(LUA_SHA256) && l.contains(LUA_DIR)) {
                    bail!("the guest did not unpack the sources it was given: {l:?}");
                }
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
        if let Some((src_q, _)) = self.qmp.as_mut() {
            qemu::set_parameters(src_q, self.max_bw)?;
        } else if let Some(bw) = self.max_bw {
            control(
                &src_sock,
                "migrate-set-parameters",
                json!({ "max-bandwidth": bw }),
            )
            .context("cannot set max-bandwidth")?;
        }

        // The load, and for kv the probe.
        let series_path = self.dir.join("wrk-series.txt");
        let mut load_start_ms = self.ms();
        let mut load = Command::new("ip");
        load.args(["netns", "exec", testbed::CLIENT_NS]);
        let mut ping_i = None;
        match cell.app {
            App::Build => {}
            App::Stream => {
                load.args([
                    "iperf3",
                    "-c",
                    testbed::GUEST_ADDR,
                    "--bidir",
                    "-t",
                    "600",
                    "-i",
                    "0.1",
                    "-f",
                    "m",
                    "--forceflush",
                ]);
                let mut ping = Command::new("ip");
                ping.args(["netns", "exec", testbed::CLIENT_NS]);
                ping.args(["ping", "-D", "-n", "-i", "0.01", testbed::GUEST_ADDR]);
                self.procs
                    .push(Proc::spawn("ping", ping, self.epoch, false)?);
                ping_i = Some(self.procs.len() - 1);
            }
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
        let load_i = if cell.app == App::Build {
            self.procs[SRC].type_line(&build_cmd())?;
            self.procs[SRC].wait_for("GWAPP-BUILD-START-2", Duration::from_secs(30))?;
            load_start_ms = self.ms();
            None
        } else {
            self.procs
                .push(Proc::spawn("client", load, self.epoch, false)?);
            Some(self.procs.len() - 1)
        };
        let probe = if cell.app == App::Kv {
            self.stop_probe = Arc::new(AtomicBool::new(false));
            let (epoch, stop) = (self.epoch, self.stop_probe.clone());
            Some(in_client(move || kv_probe(epoch, stop))?)
        } else {
            None
        };
        // The steady state; the writable working set measured in it.
        let before = if cell.app == App::Build {
            BUILD_BEFORE
        } else {
            LOAD_BEFORE
        };
        let settle = before - WWS_WINDOW - Duration::from_secs(1);
        self.hold(load_i, settle)?;
        if cell.vmm != Vmm::Godwit {
            // QEMU's calc-dirty-rate gives a rate, not the pages: no WWS.
            self.hold(load_i, before - settle)?;
        } else {
            control(
                &src_sock,
                "calc-dirty-rate",
                json!({ "calc-time": WWS_WINDOW.as_secs() }),
            )
            .context("cannot start the dirty-rate measurement")?;
            self.hold(load_i, before - settle)?;
            let mut wws = Value::Null;
            for _ in 0..50 {
                wws = control(&src_sock, "query-dirty-rate", Value::Null)?;
                if wws["status"] != "measuring" {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if wws["status"] != "measured" {
                bail!("the dirty-rate measurement did not end: {wws}");
            }
            v["wws"] = wws;
        }

        let start_ms = self.ms();
        let migrated = cell.mode != UNMIGRATED;
        let link_before = if migrated {
            testbed::link_tx_bytes()?
        } else {
            0
        };
        let mut report = if !migrated {
            Value::Null
        } else if cell.vmm != Vmm::Godwit {
            self.migrate_qemu(&addr)?
        } else {
            self.migrate(&src_sock, &addr, &report_path)?
        };
        let end_ms = self.ms();
        if migrated {
            // What crossed the link, measured the same way for both VMMs
            // (QEMU's own counters do not say what its multifd compression
            // put on the wire).
            report["link_bytes"] = json!(testbed::link_tx_bytes()?.saturating_sub(link_before));
        }
        let mut st = None;
        let mut load_lines = Vec::new();
        let stop_ms;
        if let Some(load_i) = load_i {
            self.hold(Some(load_i), LOAD_AFTER)?;
            stop_ms = self.ms();
            // Stop the load: wrk and iperf3 print their summaries on SIGINT.
            let pid = self.procs[load_i].process.child.id() as libc::pid_t;
            // SAFETY: signals our own child's process group.
            unsafe { libc::kill(-pid, libc::SIGINT) };
            st = self.procs[load_i]
                .process
                .wait_timeout(Duration::from_secs(10))?;
            if st.is_none() {
                self.procs[load_i].process.kill();
            }
            self.procs[load_i].drain();
            self.stop_probe.store(true, Ordering::Relaxed);
            load_lines = self.procs[load_i].lines();
        } else {
            // The build ends where the VM runs now.
            let at = if migrated { DST } else { SRC };
            let (t, l) = self.procs[at].wait_for_at("GWAPP-BUILD-2 ", BUILD_TIMEOUT)?;
            stop_ms = t;
            let w: Vec<&str> = l
                .split_whitespace()
                .skip_while(|w| *w != "GWAPP-BUILD-2")
                .skip(1)
                .collect();
            let (rc, guest_s, hash) = match w[..] {
                [rc, secs, hash, ..] => (rc, secs.parse::<f64>().ok(), hash.to_string()),
                _ => bail!("the build's end line is garbled: {l:?}"),
            };
            let wall_s = (t - load_start_ms) / 1e3;
            if rc != "0" {
                let _ = self.procs[at].type_line("tail -n 20 /root/build.log");
                std::thread::sleep(Duration::from_secs(2));
                bail!(
                    "the build failed (make exited {rc}){}",
                    self.procs[at].tail()
                );
            }
            let reference = self.build_ref.clone();
            let base = reference.as_ref().and_then(BuildRef::mean_wall_s);
            v["build"] = json!({
                "what": format!("Lua 5.4.7 (Debian's lua5.4 upstream tarball), make -j2 linux"),
                "wall_s": wall_s,
                "guest_clock_s": guest_s,
                "hash": hash,
                "reference_hash": reference.as_ref().map(|r| r.hash.clone()),
                "unmigrated_wall_s": base,
                "slowdown_pct": base.map(|b| (wall_s / b - 1.0) * 100.0),
            });
            match (&reference, migrated) {
                (Some(r), _) if r.hash != hash => bail!(
                    "the build produced {hash}, the unmigrated build {}: {}",
                    r.hash,
                    if migrated {
                        "the migration changed what the guest computed"
                    } else {
                        "the build is not reproducible"
                    }
                ),
                (None, true) => {
                    bail!("no unmigrated build to compare with (it failed, or did not run first)")
                }
                _ => {}
            }
            v["failed_requests"] = json!(0);
        }

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
                        self.procs[load_i.unwrap_or(SRC)].tail()
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
                    bail!(
                        "wrk printed no summary{}",
                        self.procs[load_i.unwrap_or(SRC)].tail()
                    );
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
            App::Build => {}
            App::Stream => {
                let mut tx = Vec::new();
                let mut rx = Vec::new();
                let mut errors = Vec::new();
                for (at, l) in &load_lines {
                    match iperf_interval(l) {
                        Some((true, r)) => tx.push((*at, r)),
                        Some((false, r)) => rx.push((*at, r)),
                        None if l.contains("error") => errors.push(l.clone()),
                        None => {}
                    }
                }
                if tx.len() < 10 || rx.len() < 10 {
                    bail!(
                        "iperf3 printed too few intervals ({} out, {} in){}",
                        tx.len(),
                        rx.len(),
                        self.procs[load_i.unwrap_or(SRC)].tail()
                    );
                }
                // The probe: the longest gap between ping replies.
                let pi = ping_i.context("no ping probe")?;
                let pid = self.procs[pi].process.child.id() as libc::pid_t;
                // SAFETY: signals our own child's process group.
                unsafe { libc::kill(-pid, libc::SIGINT) };
                let _ = self.procs[pi]
                    .process
                    .wait_timeout(Duration::from_secs(5))?;
                self.procs[pi].drain();
                let times: Vec<f64> = self.procs[pi]
                    .lines()
                    .iter()
                    .filter_map(|(_, l)| ping_reply_unix_s(l))
                    .map(|u| u * 1e3 - self.epoch_unix_us / 1e3)
                    .collect();
                let gap = longest_gap(&times, start_ms, stop_ms);
                let sum: Vec<(f64, f64)> =
                    tx.iter().zip(&rx).map(|(a, b)| (a.0, a.1 + b.1)).collect();
                let stall = |series: &[(f64, f64)]| {
                    f64::from(longest_stall(series, (start_ms, stop_ms))) * 100.0
                };
                v["client"] = json!({
                    "tool": "iperf3 --bidir -i 0.1 (a TCP stream each way, as fast as they go); ping -i 0.01",
                    "unit": "Mbit/s (both directions)",
                    "rps_before": mean_rate(&sum, win.before),
                    "rps_during": mean_rate(&sum, win.during),
                    "rps_after": mean_rate(&sum, win.after),
                    "mbit_s_out": [mean_rate(&tx, win.before), mean_rate(&tx, win.during), mean_rate(&tx, win.after)],
                    "mbit_s_in": [mean_rate(&rx, win.before), mean_rate(&rx, win.during), mean_rate(&rx, win.after)],
                    "series_100ms": sum.iter().map(|(t, r)| json!([t, r])).collect::<Vec<_>>(),
                    "stall_ms_out": stall(&tx),
                    "stall_ms_in": stall(&rx),
                    "errors": errors,
                    "ping_replies": times.len(),
                    "downtime_client_ms": gap.map(|g| g - PROBE_PERIOD.as_secs_f64() * 1e3),
                });
                v["failed_requests"] = json!(errors.len());
                if !errors.is_empty() {
                    bail!("iperf3 saw failures: {errors:?}");
                }
            }
        }
        if let (Some(f), Some(w)) = (
            report["network_faults"].as_f64(),
            v["wws"]["dirty-pages"].as_f64(),
        ) {
            v["faults_pct_of_wws"] = json!(if w > 0.0 { f / w * 100.0 } else { 0.0 });
        }
        v["report"] = report;
        // Ask the destination to quit; the source ended with the migration.
        if let Some((_, dst_q)) = self.qmp.as_mut() {
            let _ = dst_q.execute("quit", Value::Null);
        } else {
            let _ = control(&dst_sock, "quit", Value::Null);
        }
        Ok(v)
    }

    /// Waits `d`, failing early if a VMM or the load exits.
    fn hold(&mut self, load_i: Option<usize>, d: Duration) -> Result<()> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            testbed::check_interrupted()?;
            if let Some(i) = load_i {
                if let Some(s) = self.procs[i].process.try_wait()? {
                    self.procs[i].drain();
                    bail!("the load exited ({s}){}", self.procs[i].tail());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Starts QEMU on both hosts (the destination waiting for `addr`, the
    /// source booting the guest), with the same firmware, kernel, disk and
    /// NIC as Godwit's cells, and connects to both QMP sockets.
    fn start_qemu(&mut self, disk: &Path, addr: &str) -> Result<()> {
        let (o, img, cell) = (self.o, self.img, self.cell);
        let q = self.qemu.context("QEMU is not available")?;
        let (src_qmp, dst_qmp) = (self.dir.join("src.qmp"), self.dir.join("dst.qmp"));
        let gdb = (cell.vmm == Vmm::QemuRearm).then(|| self.dir.join("dst.gdb"));
        let guest = qemu::Guest {
            kernel: &img.kernel,
            initrd: &img.initrd,
            mem_bytes: o.mem,
            cmdline: DEBIAN_APPEND.to_string(),
            balloon: cell.balloon,
            cpus: o.cpus,
            tap: Some(testbed::TAP),
            bios: Some(&img.bios),
            drive: Some(disk),
        };
        let mut src = testbed::in_netns(Side::Src, &q.exe);
        qemu::args(&mut src, &guest, &src_qmp, false, None)?;
        self.procs
            .push(Proc::spawn("source", src, self.epoch, true)?);
        let mut dst = testbed::in_netns(Side::Dst, &q.exe);
        qemu::args(&mut dst, &guest, &dst_qmp, true, gdb.as_deref())?;
        self.procs
            .push(Proc::spawn("destination", dst, self.epoch, true)?);
        let mut pair = Vec::new();
        for (i, path) in [(SRC, &src_qmp), (DST, &dst_qmp)] {
            let p = &mut self.procs[i];
            let role = p.role;
            let qmp = Qmp::connect(path, role, || {
                testbed::check_interrupted()?;
                if let Some(s) = p.process.try_wait()? {
                    p.drain();
                    bail!("the {role} QEMU exited ({s}){}", p.tail());
                }
                Ok(())
            })?;
            pair.push(qmp);
        }
        let (Some(mut dst_q), Some(mut src_q)) = (pair.pop(), pair.pop()) else {
            bail!("no QMP connections");
        };
        if Switch::for_mode(cell.mode) != Switch::Never {
            qemu::enable_postcopy(&mut src_q, &mut dst_q)?;
        }
        if let Some(c) = cell.compress {
            qemu::enable_multifd(&mut src_q, &mut dst_q, QEMU_MULTIFD_CHANNELS, c)?;
        }
        if cell.auto_converge {
            qemu::enable_auto_converge(&mut src_q)?;
        }
        dst_q.execute("migrate-incoming", json!({ "uri": format!("tcp:{addr}") }))?;
        self.qmp = Some((src_q, dst_q));
        Ok(())
    }

    /// QEMU's migration to `addr` over QMP, driven as the memtouch bench
    /// does ([`qemu::migrate`]); its figures under the report's keys.
    fn migrate_qemu(&mut self, addr: &str) -> Result<Value> {
        let cell = self.cell;
        let uri = format!("tcp:{addr}");
        let gdb = (cell.vmm == Vmm::QemuRearm).then(|| self.dir.join("dst.gdb"));
        let switch = Switch::for_mode(cell.mode);
        let plan = qemu::Plan {
            uri: &uri,
            switch,
            rearm: if switch == Switch::Never {
                None
            } else {
                gdb.as_deref()
            },
            timeout: MIGRATE_TIMEOUT,
        };
        let (mut src_q, mut dst_q) = self.qmp.take().context("QEMU's QMP is not connected")?;
        let epoch = self.epoch;
        let procs = &mut self.procs;
        let outcome = qemu::migrate(
            &mut src_q,
            &mut dst_q,
            &plan,
            || {
                testbed::check_interrupted()?;
                for p in procs.iter_mut().take(2) {
                    if let Some(s) = p.process.try_wait()? {
                        p.drain();
                        bail!(
                            "the {} QEMU ended during the migration ({s}){}",
                            p.role,
                            p.tail()
                        );
                    }
                }
                Ok(())
            },
            || epoch.elapsed().as_secs_f64() * 1e3,
        );
        // QEMU's source stays paused after a migration: it is asked to quit.
        let _ = src_q.execute("quit", Value::Null);
        self.qmp = Some((src_q, dst_q));
        let outcome = outcome?;
        let mut report = qemu::report(&outcome, cell.mode, switch, cell.vmm.name());
        if let Some(q) = self.qemu {
            report["qemu_version"] = json!(q.version);
        }
        Ok(report)
    }

    /// `godwit migrate` in the source host to `addr`; its report.
    fn migrate(&mut self, src_sock: &Path, addr: &str, report_path: &Path) -> Result<Value> {
        let cell = self.cell;
        let mut m = testbed::in_netns(Side::Src, self.exe);
        m.arg("migrate").arg("--control").arg(src_sock);
        m.args(["--to", addr, "--tls-plain", "--mode", cell.mode]);
        if let Some(p) = cell.prepaging {
            m.args(["--prepaging", p]);
        }
        if let Some(c) = cell.compress {
            m.args(["--compress", c]);
        }
        if cell.auto_converge {
            m.arg("--auto-converge");
        }
        if cell.channels > 1 {
            m.args(["--channels", &cell.channels.to_string()]);
        }
        m.arg("--json").arg(report_path);
        m.args(["--timeout", &MIGRATE_TIMEOUT.as_secs().to_string()]);
        self.procs
            .push(Proc::spawn("migrate", m, self.epoch, false)?);
        let mi = self.procs.len() - 1;
        let status = self.procs[mi]
            .process
            .wait_timeout(MIGRATE_TIMEOUT + Duration::from_secs(30))?;
        match status {
            None => bail!("godwit migrate did not finish{}", self.procs[mi].tail()),
            Some(s) if !s.success() => {
                self.procs[mi].drain();
                bail!("godwit migrate failed ({s}){}", self.procs[mi].tail())
            }
            Some(_) => {}
        }
        serde_json::from_str(
            &std::fs::read_to_string(report_path).context("godwit migrate wrote no report")?,
        )
        .context("the migration report is not JSON")
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
         *stream*: `iperf3 -s` in the guest, `iperf3 --bidir -i 0.1` from the client namespace (a TCP stream each way as fast as it goes); load in Mbit/s, both directions summed, from its 100 ms intervals; *client downtime*: the longest gap between replies of `ping -i 0.01`, minus the period. \
         *build*: `make -j2 linux` of Lua 5.4.7 (Debian's upstream tarball of `lua5.4`, written into the disk before boot), migrated {} s after it starts; its wall time (host clock, start to end line) against the unmigrated builds of the same bench, and the hash of everything it produced (objects, library, programs), which must equal theirs. \
         Neither load has a rate limit: a fixed number of connections. *failed*: kv: redis-benchmark errors + probe errors + keys wrong or missing; web: non-2xx + socket errors; stream: iperf3 errors. Pages: pre-copy / stop-and-copy / demand / pushed / zero / free skipped. *MB on the link*: the source's end of the migration link, its transmit counter over the migration (`ip -s link`: frames with their headers), the same measure for both VMMs. \
         *WWS*: the pages the guest wrote (each once) over the {} s just before the migration, from the dirty log (`calc-dirty-rate`); *faults % of WWS*: network faults over those pages (the paper's measure).\n",
        o.kv_mib,
        u64::from(o.kv_mib) * 1_048_576 / KV_VALUE_BYTES as u64,
        WEB_SET.iter().map(|w| w.2).sum::<u32>(),
        BUILD_BEFORE.as_secs(),
        WWS_WINDOW.as_secs()
    );
    s.push_str("| cell | mode | prepaging | balloon | total ms | downtime ms (VMM) | downtime ms (client) | MB on the link | pages pre/stop/demand/pushed/zero/free | network faults | WWS MiB | faults % of WWS | load before / during / after (kv, web: req/s; stream: Mbit/s; build: wall s, vs unmigrated) | failed | runs ok |\n");
    s.push_str(
        "| --- | --- | --- | --- | --: | --: | --: | --: | --- | --: | --: | --: | --- | --: | --- |\n",
    );
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
        let load = if c.app == App::Build {
            format!(
                "{} s ({} %)",
                stat(&|r: &Value| num(&r["build"]["wall_s"]), 1),
                stat(&|r: &Value| num(&r["build"]["slowdown_pct"]), 1)
            )
        } else {
            format!(
                "{} / {} / {}",
                stat(&|r: &Value| num(&r["client"]["rps_before"]), 0),
                stat(&|r: &Value| num(&r["client"]["rps_during"]), 0),
                stat(&|r: &Value| num(&r["client"]["rps_after"]), 0)
            )
        };
        let _ =
            writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {load} | {} | {}/{} |",
            c.app.name(),
            c.mode_label(),
            c.prepaging.unwrap_or("-"),
            if c.balloon { "on" } else { "off" },
            stat(&|r: &Value| num(&r["report"]["total_ms"]), 0),
            stat(&|r: &Value| num(&r["report"]["downtime_ms"]), 1),
            stat(&|r: &Value| num(&r["client"]["downtime_client_ms"]), 1),
            stat(&|r: &Value| num(&r["report"]["link_bytes"]).map(|b| b / 1e6), 0),
            pages.join(" / "),
            stat(&|r: &Value| num(&r["report"]["network_faults"]), 0),
            stat(&|r: &Value| num(&r["wws"]["dirty-mib"]), 0),
            stat(&|r: &Value| num(&r["faults_pct_of_wws"]), 1),
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
        let ids: Vec<String> = matrix(false).iter().map(Cell::id).collect();
        assert_eq!(ids.len(), 4 * 14 + 1 + 3 * 4);
        assert!(ids.contains(&"kv-precopy-lz4".to_string()));
        assert!(ids.contains(&"kv-precopy-zstd-ac-mfd2".to_string()));
        assert!(ids.contains(&"web-precopy-zstd-mfd2".to_string()));
        assert!(ids.contains(&"build-precopy-zstd-ac".to_string()));
        assert!(ids.contains(&"web-qemu-precopy-multifd-zstd-ac".to_string()));
        assert!(ids.contains(&"web-qemu-rearm-postcopy".to_string()));
        assert!(!ids.iter().any(|i| i.starts_with("build-qemu")));
        assert!(ids.contains(&"stream-precopy".to_string()));
        assert!(ids.contains(&"kv-hybrid-dual".to_string()));
        assert!(ids.contains(&"web-postcopy-dual-noballoon".to_string()));
        let quick: Vec<String> = matrix(true).iter().map(Cell::id).collect();
        assert_eq!(
            quick,
            [
                "kv-postcopy-dual",
                "web-postcopy-dual",
                "stream-postcopy-dual",
                "build-unmigrated",
                "build-postcopy-dual"
            ]
        );
        // A migrated build brings its unmigrated reference along, first.
        let b: Vec<String> = select(matrix(false), Some("build,postcopy-dual"))
            .iter()
            .map(Cell::id)
            .collect();
        assert_eq!(
            b,
            [
                "build-unmigrated",
                "build-postcopy-dual",
                "build-postcopy-dual-noballoon"
            ]
        );
        assert_eq!(select(matrix(false), Some("build-unmigrated")).len(), 1);
        assert_eq!(
            iperf_interval(
                "[  5][TX-C]   1.00-1.10   sec  1.12 MBytes  94.4 Mbits/sec    0   85.5 KBytes"
            ),
            Some((true, 94.4))
        );
        assert_eq!(
            iperf_interval("[  7][RX-C]   1.00-1.10   sec  0.00 Bytes  0.00 Mbits/sec"),
            Some((false, 0.0))
        );
        assert_eq!(
            iperf_interval(
                "[  5][TX-C]   0.00-9.00   sec   100 MBytes  93.2 Mbits/sec    0   sender"
            ),
            None
        );
        assert_eq!(
            ping_reply_unix_s(
                "[1733334444.123456] 64 bytes from 10.77.1.10: icmp_seq=1 ttl=64 time=0.5 ms"
            ),
            Some(1733334444.123456)
        );
        assert_eq!(
            ping_reply_unix_s(
                "[1733334444.1] From 10.77.1.100 icmp_seq=2 Destination Host Unreachable"
            ),
            None
        );
        let st = [(1.0, 5.0), (2.0, 0.0), (3.0, 0.0), (4.0, 1.0), (5.0, 0.0)];
        assert_eq!(longest_stall(&st, (0.0, 10.0)), 2);
        assert!(build_cmd().contains("make -j2 linux"));
        assert!(ids.contains(&"kv-postcopy-dual".to_string()));
        assert_eq!(select(matrix(false), Some("web,postcopy-")).len(), 5);
        assert_eq!(select(matrix(false), Some("kv,qemu")).len(), 4);
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

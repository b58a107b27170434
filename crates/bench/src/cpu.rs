//! `godwit bench-cpu`: Godwit against QEMU (TCG) on the same guest image.
//!
//! Both VMMs boot the default guest image (see guest/README.md) with the same
//! RAM, one vCPU and the same kernel command line, taking turns (godwit,
//! qemu, godwit, qemu, ...) so that noise from other users of the machine
//! falls on both alike. Two measurements, each `--runs` times per VMM:
//!
//! - **boot**: host seconds from spawning the VMM to the `GODWIT READY`
//!   line arriving on its stdout (workload `idle duration_s=1`, which powers
//!   off by itself);
//! - **throughput**: `quicksort procs=2 array_mb=2 duration_s=S`; elements
//!   sorted per second of guest time, over the heartbeats after a 2 s
//!   warm-up. For Godwit also the guest MIPS it reports on stderr at exit.
//!
//! Every line of output is timestamped on arrival by a reader thread. A VMM
//! that fails, stalls or reports a guest error ends the benchmark with an
//! error; children are killed on every path (also on Ctrl-C / SIGTERM, and
//! by the kernel if this process dies: `PR_SET_PDEATHSIG`).
//!
//! `--dirty-log` measures something else: what dirty logging costs Godwit
//! (no QEMU). `memtouch` and `quicksort` run with logging off, on, and on
//! with the log taken every 100 ms as pre-copy rounds would take it; the
//! three take turns within each round. Throughput is given per guest
//! second and per second of the vCPU thread's CPU time (the steadier one on
//! a busy host). The VM runs on a thread of this process, since logging is
//! switched and the log taken through [`VmHandle::exec`]; see
//! [`run_dirty_log`].

use anyhow::{bail, Context, Result};
use godwit_machine::{BoardConfig, DeviceConfig, GuestExit, Machine, Vm, VmConfig, VmHandle};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// Target: Godwit's boot time at most this many times QEMU's.
const BOOT_RATIO_MAX: f64 = 2.0;
/// Target: Godwit's throughput at least this fraction of QEMU's.
const THROUGHPUT_RATIO_MIN: f64 = 0.5;
/// A VMM that prints no `GODWIT READY` within this time is killed.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Extra time after READY + duration_s for the guest to power off.
const EXIT_SLACK: Duration = Duration::from_secs(60);
/// Heartbeats in the first part of a throughput run are not counted.
const WARMUP_MS: f64 = 2000.0;
/// Guest parameters of the boot runs.
const BOOT_WORKLOAD: (&str, &str) = ("idle", "duration_s=1");
/// QEMU's OpenSBI firmware for `-bios default` (Debian: qemu-system-data).
const QEMU_FIRMWARE: &str = "opensbi-riscv64-generic-fw_dynamic.bin";

/// Command line of `godwit bench-cpu`.
#[derive(clap::Args)]
pub struct Args {
    /// Runs per VMM of each measurement.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Length of each throughput run (guest `duration_s`), seconds; the
    /// first 2 s are warm-up.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(3..))]
    seconds: u32,
    /// Guest RAM of both VMMs: a whole number of MiB, e.g. 512M or 1G.
    #[arg(long, default_value = "512M", value_parser = godwit_vmm::size::parse_size)]
    mem: u64,
    /// vCPUs of both VMMs (Godwit `--cpus`, QEMU `-smp`; QEMU's TCG runs
    /// one thread per vCPU as Godwit does). quicksort runs two processes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    cpus: u32,
    /// Also write every measurement and the summary to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The QEMU executable.
    #[arg(long, default_value = "qemu-system-riscv64")]
    qemu: PathBuf,
    /// Instead of the QEMU comparison: the cost of dirty logging in Godwit
    /// (memtouch and quicksort with logging off, on, and on with the log
    /// taken every 100 ms; `--runs` of each, interleaved).
    #[arg(long)]
    dirty_log: bool,
}

/// Runs the benchmark; Ok(0) whenever the measurement worked, whether or
/// not the targets were met.
pub fn run(args: Args) -> Result<i32> {
    catch_interrupts();
    if args.dirty_log {
        return run_dirty_log(&args);
    }
    let setup = Setup::new(&args)?;
    let host_start = host_info();
    eprintln!(
        "bench-cpu: {} run(s) per VMM, taking turns godwit/godwit-interp/qemu; boot: {} {}; throughput: quicksort {} ({} s); {} MiB RAM",
        args.runs,
        BOOT_WORKLOAD.0,
        BOOT_WORKLOAD.1,
        QUICKSORT_PARAMS,
        args.seconds,
        args.mem >> 20,
    );
    let mut results: [VmmResults; 3] = Default::default();
    let mut raw = Vec::new();
    for round in 1..=args.runs {
        for vmm in VMMS {
            let m = measure_boot(&setup, vmm)?;
            eprintln!(
                "bench-cpu: [{round}/{}] {:<13} boot        {:6.2} s",
                args.runs,
                vmm.name(),
                m.boot_s
            );
            results[vmm as usize].boot_s.push(m.boot_s);
            raw.push(m.to_json(round, vmm, "boot"));
        }
        for vmm in VMMS {
            let m = measure_throughput(&setup, vmm, args.seconds)?;
            let tp = m.throughput.as_ref().context("no throughput figure")?;
            eprintln!(
                "bench-cpu: [{round}/{}] {:<13} throughput  {:6.2} M elems/s{}",
                args.runs,
                vmm.name(),
                tp.elems_per_s / 1e6,
                m.mips
                    .as_ref()
                    .map_or(String::new(), |x| format!(", {:.1} MIPS", x.mips)),
            );
            let r = &mut results[vmm as usize];
            r.elems_per_s.push(tp.elems_per_s);
            if let Some(x) = &m.mips {
                r.mips.push(x.mips);
            }
            raw.push(m.to_json(round, vmm, "throughput"));
        }
    }
    let summary = Summary::new(&results);
    println!();
    summary.print_table(&args, &host_start);
    if let Some(path) = &args.json {
        let doc = json!({
            "godwit_version": env!("CARGO_PKG_VERSION"),
            "runs": args.runs,
            "seconds": args.seconds,
            "mem_bytes": args.mem,
            "cpus": args.cpus,
            "qemu_version": setup.qemu_version,
            "qemu_devices": "virtio-balloon-device,free-page-reporting=on",
            "cmdline_boot": godwit_vmm::guest::cmdline(Some(BOOT_WORKLOAD.0), BOOT_WORKLOAD.1),
            "cmdline_throughput": godwit_vmm::guest::cmdline(Some("quicksort"), &quicksort_params(args.seconds)),
            "warmup_ms": WARMUP_MS,
            "host": host_start,
            "host_end": host_info(),
            "measurements": raw,
            "summary": summary.to_json(),
        });
        let text = serde_json::to_string_pretty(&doc)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    Ok(0)
}

// ---------------------------------------------------------------------------
// The two VMMs and how to start them

/// The VMMs compared, in the order they take turns: Godwit translating
/// guest code (its default), Godwit interpreting every instruction
/// (`godwit run --interpreter`), QEMU.
const VMMS: [Vmm; 3] = [Vmm::Godwit, Vmm::GodwitInterp, Vmm::Qemu];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Vmm {
    Godwit = 0,
    Qemu = 1,
    GodwitInterp = 2,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Godwit => "godwit",
            Vmm::Qemu => "qemu",
            Vmm::GodwitInterp => "godwit-interp",
        }
    }
}

/// What both VMMs are started with.
struct Setup {
    godwit: PathBuf,
    qemu: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    mem_bytes: u64,
    cpus: u32,
    /// First line of `qemu --version`.
    qemu_version: String,
}

impl Setup {
    /// Finds this executable, the guest image and a usable QEMU.
    fn new(args: &Args) -> Result<Setup> {
        if args.mem == 0 || !args.mem.is_multiple_of(1 << 20) {
            bail!("--mem must be a whole number of MiB (QEMU's -m), like 512M");
        }
        let (kernel, initrd) = guest_image()?;
        let qemu_version = check_qemu(&args.qemu)?;
        Ok(Setup {
            godwit: std::env::current_exe().context("cannot find the godwit executable")?,
            qemu: args.qemu.clone(),
            kernel,
            initrd,
            mem_bytes: args.mem,
            cpus: args.cpus,
            qemu_version,
        })
    }

    /// The command that boots `workload` with `params` under `vmm`.
    fn command(&self, vmm: Vmm, workload: &str, params: &str) -> Command {
        match vmm {
            Vmm::Godwit | Vmm::GodwitInterp => {
                let mut c = Command::new(&self.godwit);
                if vmm == Vmm::GodwitInterp {
                    c.arg("run").arg("--interpreter");
                } else {
                    c.arg("run");
                }
                c.arg("--kernel")
                    .arg(&self.kernel)
                    .arg("--initrd")
                    .arg(&self.initrd)
                    .arg("--mem")
                    .arg(self.mem_bytes.to_string())
                    .args(["--cpus", &self.cpus.to_string()])
                    .args(["--workload", workload, "--append", params]);
                c
            }
            Vmm::Qemu => {
                let mut c = Command::new(&self.qemu);
                c.args(["-M", "virt", "-nographic", "-no-reboot"])
                    .arg("-smp")
                    .arg(self.cpus.to_string())
                    .args(["-bios", "default", "-m"])
                    .arg(format!("{}M", self.mem_bytes >> 20))
                    .arg("-kernel")
                    .arg(&self.kernel)
                    .arg("-initrd")
                    .arg(&self.initrd)
                    .arg("-append")
                    .arg(godwit_vmm::guest::cmdline(Some(workload), params))
                    // Godwit's default board has a balloon too (as in guest/qemu-boot.sh).
                    .args(["-device", "virtio-balloon-device,free-page-reporting=on"]);
                c
            }
        }
    }
}

/// The default guest image: kernel and initramfs.
fn guest_image() -> Result<(PathBuf, PathBuf)> {
    let (kernel, initrd) = godwit_vmm::guest::resolve(None, None)
        .context("the guest image is missing: build it with guest/build.sh")?;
    Ok((kernel, initrd.context("the guest image has no initramfs")?))
}

/// Checks that QEMU runs and has its RISC-V firmware; returns its version.
fn check_qemu(qemu: &Path) -> Result<String> {
    let out = match Command::new(qemu).arg("--version").output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} not found: install QEMU with `apt-get install qemu-system-misc` (or pass --qemu PATH)",
            qemu.display()
        ),
        r => r.with_context(|| format!("cannot run {}", qemu.display()))?,
    };
    if !out.status.success() {
        bail!("{} --version failed ({})", qemu.display(), out.status);
    }
    let version = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    // `-L help` lists the firmware directories; if it fails, let QEMU speak.
    let Ok(dirs) = Command::new(qemu).args(["-L", "help"]).output() else {
        return Ok(version);
    };
    let dirs = String::from_utf8_lossy(&dirs.stdout);
    if dirs
        .lines()
        .all(|d| !Path::new(d).join(QEMU_FIRMWARE).exists())
    {
        bail!(
            "QEMU's RISC-V firmware {QEMU_FIRMWARE} is missing (looked in: {}): install it with `apt-get install qemu-system-data`",
            dirs.lines().collect::<Vec<_>>().join(" ")
        );
    }
    Ok(version)
}

// ---------------------------------------------------------------------------
// Measurements

/// Guest parameters of the throughput runs, except duration_s.
const QUICKSORT_PARAMS: &str = "procs=2 array_mb=2";

fn quicksort_params(seconds: u32) -> String {
    format!("{QUICKSORT_PARAMS} duration_s={seconds}")
}

/// What one run measured.
struct Measurement {
    boot_s: f64,
    wall_s: f64,
    throughput: Option<Throughput>,
    mips: Option<Mips>,
}

impl Measurement {
    fn to_json(&self, round: u32, vmm: Vmm, kind: &str) -> Value {
        let mut v = json!({
            "round": round,
            "vmm": vmm.name(),
            "kind": kind,
            "boot_s": self.boot_s,
            "wall_s": self.wall_s,
        });
        if let Some(t) = &self.throughput {
            v["elems_per_s"] = json!(t.elems_per_s);
            v["elems_per_s_host_clock"] = json!(t.elems_per_s_host_clock);
            v["done_elems_per_s"] = json!(t.done_elems_per_s);
            v["window_guest_s"] = json!(t.window_guest_s);
            v["sorts"] = json!(t.sorts);
        }
        if let Some(m) = &self.mips {
            v["instructions"] = json!(m.instructions);
            v["run_s"] = json!(m.seconds);
            v["mips"] = json!(m.mips);
        }
        v
    }
}

/// One boot run: `idle duration_s=1` until it powers off.
fn measure_boot(setup: &Setup, vmm: Vmm) -> Result<Measurement> {
    let (workload, params) = BOOT_WORKLOAD;
    let t = Running::spawn(vmm, setup.command(vmm, workload, params))?
        .finish(Duration::from_secs(1))?;
    t.check()?;
    Ok(Measurement {
        boot_s: t.boot_s()?,
        wall_s: t.wall_s,
        throughput: None,
        mips: mips_if_godwit(&t, vmm)?,
    })
}

/// One throughput run: quicksort for `seconds`.
fn measure_throughput(setup: &Setup, vmm: Vmm, seconds: u32) -> Result<Measurement> {
    let params = quicksort_params(seconds);
    let t = Running::spawn(vmm, setup.command(vmm, "quicksort", &params))?
        .finish(Duration::from_secs(seconds.into()))?;
    t.check()?;
    Ok(Measurement {
        boot_s: t.boot_s()?,
        wall_s: t.wall_s,
        throughput: Some(t.throughput()?),
        mips: mips_if_godwit(&t, vmm)?,
    })
}

fn mips_if_godwit(t: &Transcript, vmm: Vmm) -> Result<Option<Mips>> {
    match vmm {
        Vmm::Godwit | Vmm::GodwitInterp => t.mips().map(Some),
        Vmm::Qemu => Ok(None),
    }
}

/// Sorting throughput of one run.
struct Throughput {
    /// Elements per second of guest time, after the warm-up.
    elems_per_s: f64,
    /// The same elements per second of host time (between the arrivals of
    /// the heartbeats): a check on the guest clock.
    elems_per_s_host_clock: f64,
    /// The rate in the DONE line (its last interval only).
    done_elems_per_s: f64,
    /// Guest seconds the rate was measured over.
    window_guest_s: f64,
    sorts: u64,
}

/// A heartbeat rate after the warm-up.
struct Rate {
    /// Per second of guest time.
    per_s: f64,
    /// Per second of host time (between the arrivals of the heartbeats):
    /// a check on the guest clock.
    per_s_host_clock: f64,
    /// Per second of CPU time of the vCPU thread (in-process VMs only).
    /// Other load on the host takes wall time, and with it guest time, from
    /// the VM, but not CPU time, so this figure varies less.
    per_vcpu_s: Option<f64>,
    /// Guest seconds the rate was measured over.
    window_guest_s: f64,
}

/// Godwit's own instruction count (from its exit line on stderr).
struct Mips {
    instructions: u64,
    seconds: f64,
    mips: f64,
}

// ---------------------------------------------------------------------------
// Running a VMM and collecting its output

/// Set by SIGINT/SIGTERM; the wait loop polls it.
pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns Ctrl-C and SIGTERM into an error, so children get killed.
pub(crate) fn catch_interrupts() {
    let handler = on_signal as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// A line of a child's output and when it arrived (since spawn).
struct Line {
    at: Duration,
    stream: Stream,
    text: String,
    /// CPU time of the VMM's vCPU thread when the line was written (known
    /// only for an in-process VM).
    vcpu_time: Option<Duration>,
}

/// A started VMM with reader threads on its stdout and stderr; killed when
/// dropped.
struct Running {
    vmm: Vmm,
    child: Child,
    started: Instant,
    rx: Receiver<Line>,
}

impl Running {
    fn spawn(vmm: Vmm, mut cmd: Command) -> Result<Running> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", vmm.name()))?;
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let running = Running {
            vmm,
            child,
            started,
            rx,
        };
        read_lines(
            stdout.context("no stdout pipe")?,
            Stream::Stdout,
            started,
            tx.clone(),
        )?;
        read_lines(
            stderr.context("no stderr pipe")?,
            Stream::Stderr,
            started,
            tx,
        )?;
        Ok(running)
    }

    /// Collects the output until the VMM exits: within BOOT_TIMEOUT of the
    /// start to READY, and then within `duration` + EXIT_SLACK.
    fn finish(mut self, duration: Duration) -> Result<Transcript> {
        let mut lines: Vec<Line> = Vec::new();
        let mut ready_at = None;
        loop {
            if INTERRUPTED.load(Ordering::SeqCst) {
                bail!("interrupted; stopped {}", self.vmm.name());
            }
            let deadline = ready_at.map_or(BOOT_TIMEOUT, |r| r + duration + EXIT_SLACK);
            let now = self.started.elapsed();
            if now >= deadline {
                let what = match ready_at {
                    None => format!(
                        "printed no GODWIT READY within {} s",
                        BOOT_TIMEOUT.as_secs()
                    ),
                    Some(_) => format!(
                        "did not power off within {} s after GODWIT READY",
                        (duration + EXIT_SLACK).as_secs()
                    ),
                };
                bail!("{} {what}; killed it{}", self.vmm.name(), tail(&lines));
            }
            match self
                .rx
                .recv_timeout((deadline - now).min(Duration::from_millis(200)))
            {
                Ok(line) => {
                    if ready_at.is_none()
                        && line.stream == Stream::Stdout
                        && line.text.contains("GODWIT READY")
                    {
                        ready_at = Some(line.at);
                    }
                    lines.push(line);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let status = self.wait_exit()?;
        Ok(Transcript {
            vmm: self.vmm,
            wall_s: self.started.elapsed().as_secs_f64(),
            lines,
            status,
        })
    }

    /// Waits a little for the exit once both pipes are closed.
    fn wait_exit(&mut self) -> Result<ExitStatus> {
        for _ in 0..100 {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} closed its output but did not exit; killed it",
            self.vmm.name()
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts a thread that sends each line of `pipe` with its arrival time.
fn read_lines(
    pipe: impl Read + Send + 'static,
    stream: Stream,
    started: Instant,
    tx: Sender<Line>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("bench-reader".into())
        .spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let at = started.elapsed();
                let text = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                let line = Line {
                    at,
                    stream,
                    text,
                    vcpu_time: None,
                };
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
        .context("cannot start a reader thread")?;
    Ok(())
}

/// The last lines of output, for error messages.
fn tail(lines: &[Line]) -> String {
    let last: Vec<&str> = lines
        .iter()
        .rev()
        .map(|l| l.text.as_str())
        .filter(|t| !t.trim().is_empty())
        .take(8)
        .collect();
    if last.is_empty() {
        return " (no output)".into();
    }
    let mut s = String::from("; last output:");
    for t in last.iter().rev() {
        s.push_str("\n    ");
        s.push_str(t);
    }
    s
}

/// Everything a finished VMM printed.
struct Transcript {
    vmm: Vmm,
    wall_s: f64,
    lines: Vec<Line>,
    status: ExitStatus,
}

/// A `GODWIT HB|DONE {json}` line.
struct Report {
    at: Duration,
    vcpu_time: Option<Duration>,
    done: bool,
    json: Value,
}

impl Transcript {
    /// Console lines containing `marker`, from the marker on.
    fn console<'a>(&'a self, marker: &'a str) -> impl Iterator<Item = (&'a Line, &'a str)> + 'a {
        self.lines
            .iter()
            .filter(|l| l.stream == Stream::Stdout)
            .filter_map(move |l| l.text.find(marker).map(|i| (l, &l.text[i..])))
    }

    /// Fails on a guest error, a missing DONE, `bad` > 0 or an exit status
    /// other than 0.
    fn check(&self) -> Result<()> {
        let name = self.vmm.name();
        for marker in ["GODWIT ERROR", "GODWIT CORRUPT", "Kernel panic"] {
            if let Some((_, text)) = self.console(marker).next() {
                bail!("the guest under {name} failed: {text}{}", tail(&self.lines));
            }
        }
        let reports = self.reports()?;
        let Some(done) = reports.iter().find(|r| r.done) else {
            bail!(
                "the guest under {name} ended without GODWIT DONE ({}){}",
                self.status,
                tail(&self.lines)
            );
        };
        if done.json["bad"].as_u64() != Some(0) {
            bail!(
                "the guest under {name} reported integrity errors: {}",
                done.json
            );
        }
        if !self.status.success() {
            bail!("{name} exited with {}{}", self.status, tail(&self.lines));
        }
        Ok(())
    }

    /// Seconds from spawn to `GODWIT READY`.
    fn boot_s(&self) -> Result<f64> {
        let (line, _) = self
            .console("GODWIT READY")
            .next()
            .with_context(|| format!("no GODWIT READY from {}", self.vmm.name()))?;
        Ok(line.at.as_secs_f64())
    }

    /// The HB and DONE lines, parsed.
    fn reports(&self) -> Result<Vec<Report>> {
        let hb = self
            .console("GODWIT HB ")
            .map(|(l, t)| (l, false, &t[10..]));
        let done = self
            .console("GODWIT DONE ")
            .map(|(l, t)| (l, true, &t[12..]));
        let mut all: Vec<_> = hb.chain(done).collect();
        all.sort_by_key(|(l, _, _)| l.at);
        all.into_iter()
            .map(|(l, done, text)| {
                let json = serde_json::from_str(text)
                    .with_context(|| format!("bad JSON from {}: {}", self.vmm.name(), l.text))?;
                Ok(Report {
                    at: l.at,
                    vcpu_time: l.vcpu_time,
                    done,
                    json,
                })
            })
            .collect()
    }

    /// A number from a heartbeat.
    fn field(&self, r: &Report, key: &str) -> Result<f64> {
        r.json[key].as_f64().with_context(|| {
            format!(
                "no {key} in a heartbeat from {}: {}",
                self.vmm.name(),
                r.json
            )
        })
    }

    /// The heartbeats' `key` rate (a `..._per_s` field) over the intervals
    /// that start after the warm-up: the count over those intervals divided
    /// by their total length.
    fn rate(&self, key: &str) -> Result<Rate> {
        let name = self.vmm.name();
        let reports = self.reports()?;
        let (mut count, mut guest_ms, mut first) = (0.0, 0.0, None);
        for pair in reports.windows(2) {
            let t0 = self.field(&pair[0], "t_ms")?;
            if t0 < WARMUP_MS {
                continue;
            }
            let dt_ms = self.field(&pair[1], "t_ms")? - t0;
            count += self.field(&pair[1], key)? * dt_ms / 1e3;
            guest_ms += dt_ms;
            first.get_or_insert(&pair[0]);
        }
        let (Some(first), Some(last)) = (first, reports.last()) else {
            bail!("{name}: no heartbeats after the {WARMUP_MS} ms warm-up");
        };
        if guest_ms <= 0.0 {
            bail!("{name}: the heartbeats after the warm-up span no time");
        }
        let host_s = (last.at - first.at).as_secs_f64();
        let vcpu_s = match (first.vcpu_time, last.vcpu_time) {
            (Some(a), Some(b)) if b > a => Some((b - a).as_secs_f64()),
            _ => None,
        };
        Ok(Rate {
            per_s: count / (guest_ms / 1e3),
            per_s_host_clock: if host_s > 0.0 { count / host_s } else { 0.0 },
            per_vcpu_s: vcpu_s.map(|s| count / s),
            window_guest_s: guest_ms / 1e3,
        })
    }

    /// Quicksort throughput (see [`Transcript::rate`]).
    fn throughput(&self) -> Result<Throughput> {
        let rate = self.rate("elems_per_s")?;
        let reports = self.reports()?;
        let last = reports.last().context("no heartbeats")?;
        Ok(Throughput {
            elems_per_s: rate.per_s,
            elems_per_s_host_clock: rate.per_s_host_clock,
            done_elems_per_s: self.field(last, "elems_per_s")?,
            window_guest_s: rate.window_guest_s,
            sorts: last.json["sorts"].as_u64().unwrap_or(0),
        })
    }

    /// Parses Godwit's `... N instructions in T s (X MIPS)` exit line.
    fn mips(&self) -> Result<Mips> {
        let parse = |text: &str| -> Option<Mips> {
            let words: Vec<&str> = text.split_whitespace().collect();
            let i = words.iter().position(|w| *w == "instructions")?;
            let instructions: u64 = words.get(i.checked_sub(1)?)?.parse().ok()?;
            let seconds: f64 = words.get(i + 2)?.parse().ok()?;
            (seconds > 0.0).then(|| Mips {
                instructions,
                seconds,
                mips: instructions as f64 / seconds / 1e6,
            })
        };
        self.lines
            .iter()
            .filter(|l| l.stream == Stream::Stderr && l.text.contains("instructions in"))
            .find_map(|l| parse(&l.text))
            .context("godwit printed no `N instructions in T s` line on stderr")
    }
}

// ---------------------------------------------------------------------------
// Summary

/// Measurements of one VMM, in run order.
#[derive(Default)]
struct VmmResults {
    boot_s: Vec<f64>,
    elems_per_s: Vec<f64>,
    mips: Vec<f64>,
}

/// Mean, minimum and maximum of a few numbers.
#[derive(Clone, Copy)]
struct Stats {
    mean: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(xs: &[f64]) -> Option<Stats> {
        if xs.is_empty() {
            return None;
        }
        Some(Stats {
            mean: xs.iter().sum::<f64>() / xs.len() as f64,
            min: xs.iter().copied().fold(f64::INFINITY, f64::min),
            max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }

    fn to_json(s: Option<Stats>) -> Value {
        s.map_or(
            Value::Null,
            |s| json!({"mean": s.mean, "min": s.min, "max": s.max}),
        )
    }

    /// `mean (min–max)`, each number divided by `scale`.
    fn show(s: Option<Stats>, scale: f64, decimals: usize) -> String {
        s.map_or("-".into(), |s| {
            format!(
                "{:.d$} ({:.d$}–{:.d$})",
                s.mean / scale,
                s.min / scale,
                s.max / scale,
                d = decimals
            )
        })
    }
}

/// Per-VMM statistics and the Godwit/QEMU ratios.
struct Summary {
    /// Godwit, QEMU, Godwit interpreting.
    boot_s: [Option<Stats>; 3],
    elems_per_s: [Option<Stats>; 3],
    mips: [Option<Stats>; 3],
    boot_ratio: f64,
    throughput_ratio: f64,
    /// Godwit translating against Godwit interpreting.
    translator_speedup: f64,
}

impl Summary {
    fn new(r: &[VmmResults; 3]) -> Summary {
        let boot_s = [0, 1, 2].map(|i| Stats::of(&r[i].boot_s));
        let elems_per_s = [0, 1, 2].map(|i| Stats::of(&r[i].elems_per_s));
        let ratio = |a: Option<Stats>, b: Option<Stats>| match (a, b) {
            (Some(a), Some(b)) if b.mean > 0.0 => a.mean / b.mean,
            _ => f64::NAN,
        };
        Summary {
            boot_ratio: ratio(boot_s[0], boot_s[1]),
            throughput_ratio: ratio(elems_per_s[0], elems_per_s[1]),
            translator_speedup: ratio(elems_per_s[0], elems_per_s[2]),
            boot_s,
            elems_per_s,
            mips: [0, 1, 2].map(|i| Stats::of(&r[i].mips)),
        }
    }

    fn boot_met(&self) -> bool {
        self.boot_ratio <= BOOT_RATIO_MAX
    }

    fn throughput_met(&self) -> bool {
        self.throughput_ratio >= THROUGHPUT_RATIO_MIN
    }

    fn print_table(&self, args: &Args, host: &Value) {
        let verdict = |met: bool| if met { "met" } else { "MISSED" };
        let load: Vec<String> = host["loadavg"]
            .as_array()
            .map_or(Vec::new(), |a| a.iter().map(|x| x.to_string()).collect());
        println!(
            "bench-cpu: Godwit vs QEMU TCG, {} vCPU(s), {} run(s) each, {} s quicksort; mean (min–max); host: {} CPUs, load {} at start",
            args.cpus,
            args.runs,
            args.seconds,
            host["nproc"],
            load.join(" ")
        );
        println!(
            "{:<22} {:<24} {:<24} {:>12}   {:<12} {:<24}",
            "", "godwit", "qemu", "godwit/qemu", "target", "godwit-interp"
        );
        println!(
            "{:<22} {:<24} {:<24} {:>12.2}   {:<12} {:<24}",
            "boot to READY (s)",
            Stats::show(self.boot_s[0], 1.0, 2),
            Stats::show(self.boot_s[1], 1.0, 2),
            self.boot_ratio,
            format!("<= {BOOT_RATIO_MAX:.1} {}", verdict(self.boot_met())),
            Stats::show(self.boot_s[2], 1.0, 2),
        );
        println!(
            "{:<22} {:<24} {:<24} {:>12.2}   {:<12} {:<24}",
            "quicksort (M elems/s)",
            Stats::show(self.elems_per_s[0], 1e6, 1),
            Stats::show(self.elems_per_s[1], 1e6, 1),
            self.throughput_ratio,
            format!(
                ">= {THROUGHPUT_RATIO_MIN:.1} {}",
                verdict(self.throughput_met())
            ),
            Stats::show(self.elems_per_s[2], 1e6, 1),
        );
        println!(
            "{:<22} {:<24} {:<24} {:>12}   {:<12} {:<24}",
            "guest MIPS",
            Stats::show(self.mips[0], 1.0, 1),
            "-",
            "",
            "",
            Stats::show(self.mips[2], 1.0, 1),
        );
        println!(
            "translator: quicksort {:.2}x the interpreter's throughput (godwit / godwit-interp)",
            self.translator_speedup
        );
        println!(
            "targets: boot ratio {:.2} {} (<= {BOOT_RATIO_MAX:.1}), throughput ratio {:.2} {} (>= {THROUGHPUT_RATIO_MIN:.1})",
            self.boot_ratio,
            verdict(self.boot_met()),
            self.throughput_ratio,
            verdict(self.throughput_met())
        );
    }

    fn to_json(&self) -> Value {
        let vmm = |i: usize| {
            json!({
                "boot_s": Stats::to_json(self.boot_s[i]),
                "elems_per_s": Stats::to_json(self.elems_per_s[i]),
            })
        };
        let mut godwit = vmm(0);
        godwit["mips"] = Stats::to_json(self.mips[0]);
        let mut interp = vmm(2);
        interp["mips"] = Stats::to_json(self.mips[2]);
        json!({
            "godwit": godwit,
            "godwit_interp": interp,
            "qemu": vmm(1),
            "translator_speedup": self.translator_speedup,
            "boot_ratio": self.boot_ratio,
            "boot_ratio_target_max": BOOT_RATIO_MAX,
            "boot_target_met": self.boot_met(),
            "throughput_ratio": self.throughput_ratio,
            "throughput_ratio_target_min": THROUGHPUT_RATIO_MIN,
            "throughput_target_met": self.throughput_met(),
        })
    }
}

/// The host as the benchmark found it.
pub(crate) fn host_info() -> Value {
    let loadavg: Vec<f64> = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|w| w.parse().ok())
        .collect();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        });
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "loadavg": loadavg,
        "cpu_model": cpu_model,
        "unix_time_s": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}

// ---------------------------------------------------------------------------
// The cost of dirty logging (--dirty-log)

/// How often the `taken` condition takes the log (a pre-copy round's pace).
const TAKE_PERIOD: Duration = Duration::from_millis(100);

/// Dirty logging during a run; switched at `GODWIT READY`, so boots are alike.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Logging {
    Off,
    /// On, the log never taken: each page's first store is logged, later
    /// ones go through cached write translations. The set only grows.
    On,
    /// On, taken every [`TAKE_PERIOD`]: after each take the first store to
    /// every page is logged again (the take drops the write translations).
    Taken,
}

impl Logging {
    const ALL: [Logging; 3] = [Logging::Off, Logging::On, Logging::Taken];

    fn name(self) -> &'static str {
        match self {
            Logging::Off => "off",
            Logging::On => "on",
            Logging::Taken => "on+take",
        }
    }
}

/// A guest workload of the dirty-log benchmark and the heartbeat rate that
/// measures it.
struct DirtyWorkload {
    name: &'static str,
    /// Guest parameters, except duration_s.
    params: &'static str,
    /// The HB field with the rate.
    rate_key: &'static str,
    /// How the table shows the rate: divided by `scale`, in `unit`.
    scale: f64,
    unit: &'static str,
}

impl DirtyWorkload {
    fn cmdline(&self, seconds: u32) -> String {
        godwit_vmm::guest::cmdline(
            Some(self.name),
            &format!("{} duration_s={seconds}", self.params),
        )
    }
}

const DIRTY_WORKLOADS: [DirtyWorkload; 2] = [
    DirtyWorkload {
        name: "memtouch",
        params: "wws_mb=32 pages_per_s=0",
        rate_key: "pages_per_s",
        scale: 1e3,
        unit: "k pages/s",
    },
    DirtyWorkload {
        name: "quicksort",
        params: QUICKSORT_PARAMS,
        rate_key: "elems_per_s",
        scale: 1e6,
        unit: "M elems/s",
    },
];

/// `--dirty-log`: every round runs each workload under the three logging
/// conditions, their order rotating from round to round so that neither
/// host noise nor a warm cache favours one.
fn run_dirty_log(args: &Args) -> Result<i32> {
    let (kernel, initrd) = guest_image()?;
    let bench = DirtyBench {
        kernel,
        initrd,
        mem_bytes: args.mem,
        seconds: args.seconds,
    };
    let host_start = host_info();
    eprintln!(
        "bench-cpu --dirty-log: {} run(s) per condition, logging off / on / on + take every {} ms, interleaved; {} s per run ({} ms warm-up); {} MiB RAM",
        args.runs,
        TAKE_PERIOD.as_millis(),
        args.seconds,
        WARMUP_MS,
        args.mem >> 20,
    );
    let mut runs: Vec<DirtyRun> = Vec::new();
    for round in 1..=args.runs {
        for (w, workload) in DIRTY_WORKLOADS.iter().enumerate() {
            for k in 0..Logging::ALL.len() {
                let logging = Logging::ALL[(k + round as usize - 1) % Logging::ALL.len()];
                let run = measure_dirty(&bench, w, logging, round)?;
                eprintln!(
                    "bench-cpu: [{round}/{}] {:<9} {:<8} {:6.1} {} ({:6.1} per vCPU s), {:5.1} MIPS{}",
                    args.runs,
                    workload.name,
                    logging.name(),
                    run.rate.per_s / workload.scale,
                    workload.unit,
                    run.rate.per_vcpu_s.unwrap_or(f64::NAN) / workload.scale,
                    run.mips,
                    match Stats::of(&run.pages_per_take()) {
                        Some(s) => format!(
                            ", {} takes, {:.0} dirty pages/take",
                            run.takes.len(),
                            s.mean
                        ),
                        None => String::new(),
                    }
                );
                runs.push(run);
            }
        }
    }
    let rows = DirtyRow::summarize(&runs);
    println!();
    print_dirty_table(args, &host_start, &rows);
    if let Some(path) = &args.json {
        let cmdlines: serde_json::Map<String, Value> = DIRTY_WORKLOADS
            .iter()
            .map(|w| (w.name.to_string(), json!(w.cmdline(args.seconds))))
            .collect();
        let doc = json!({
            "godwit_version": env!("CARGO_PKG_VERSION"),
            "benchmark": "dirty-log",
            "runs": args.runs,
            "seconds": args.seconds,
            "mem_bytes": args.mem,
            "take_period_ms": TAKE_PERIOD.as_millis() as u64,
            "warmup_ms": WARMUP_MS,
            "cmdlines": cmdlines,
            "host": host_start,
            "host_end": host_info(),
            "measurements": runs.iter().map(DirtyRun::to_json).collect::<Vec<_>>(),
            "summary": rows.iter().map(DirtyRow::to_json).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&doc)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    Ok(0)
}

/// What every run of the dirty-log benchmark boots.
struct DirtyBench {
    kernel: PathBuf,
    initrd: PathBuf,
    mem_bytes: u64,
    seconds: u32,
}

impl DirtyBench {
    /// The VM for `workload`, its console going to `console`.
    fn config(&self, workload: &DirtyWorkload, console: Box<dyn Write + Send>) -> VmConfig {
        VmConfig {
            // As `godwit run --cpus 1` boots it.
            board: BoardConfig {
                harts: 1,
                ram_bytes: self.mem_bytes,
                devices: vec![DeviceConfig::Balloon],
            },
            kernel: self.kernel.clone(),
            initrd: Some(self.initrd.clone()),
            bios: None,
            cmdline: workload.cmdline(self.seconds),
            console,
        }
    }
}

/// One take of the log during a run.
struct Take {
    /// When it returned, since the VM was started.
    at: Duration,
    /// Pages in the log.
    pages: u64,
    /// From asking the vCPU thread to having the log back.
    latency: Duration,
}

/// What one in-process run measured.
struct DirtyRun {
    round: u32,
    /// Index into [`DIRTY_WORKLOADS`].
    workload: usize,
    logging: Logging,
    boot_s: f64,
    wall_s: f64,
    rate: Rate,
    /// Guest instructions per host second from READY to DONE.
    mips: f64,
    /// The takes after the warm-up, until DONE.
    takes: Vec<Take>,
    /// For [`Logging::On`]: pages in the log at DONE, i.e. every page the
    /// guest wrote since READY.
    dirty_at_done: Option<u64>,
}

impl DirtyRun {
    fn pages_per_take(&self) -> Vec<f64> {
        self.takes.iter().map(|t| t.pages as f64).collect()
    }

    fn take_ms(&self) -> Vec<f64> {
        self.takes
            .iter()
            .map(|t| t.latency.as_secs_f64() * 1e3)
            .collect()
    }

    fn to_json(&self) -> Value {
        let w = &DIRTY_WORKLOADS[self.workload];
        json!({
            "round": self.round,
            "workload": w.name,
            "logging": self.logging.name(),
            "boot_s": self.boot_s,
            "wall_s": self.wall_s,
            "rate_field": w.rate_key,
            "rate_per_s": self.rate.per_s,
            "rate_per_s_host_clock": self.rate.per_s_host_clock,
            "rate_per_vcpu_s": self.rate.per_vcpu_s,
            "window_guest_s": self.rate.window_guest_s,
            "mips": self.mips,
            "takes": self.takes.len(),
            "dirty_pages_per_take": self.takes.iter().map(|t| t.pages).collect::<Vec<_>>(),
            "take_ms": self.take_ms(),
            "dirty_pages_at_done": self.dirty_at_done,
        })
    }
}

/// Boots workload `w` in this process, switches logging on at READY as
/// `logging` says (taking the log every [`TAKE_PERIOD`] for
/// [`Logging::Taken`]), and collects the console until the guest powers off.
fn measure_dirty(bench: &DirtyBench, w: usize, logging: Logging, round: u32) -> Result<DirtyRun> {
    let workload = &DIRTY_WORKLOADS[w];
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let console = ConsoleLines {
        buf: Vec::new(),
        started,
        tx: tx.clone(),
    };
    let vm = InProcessVm::start(bench.config(workload, Box::new(console)), tx)?;
    let mut lines: Vec<Line> = Vec::new();
    // (arrival, host instant, instructions retired) at READY and at DONE.
    let mut ready: Option<(Duration, Instant, u64)> = None;
    let mut done: Option<(Duration, Instant, u64)> = None;
    let mut dirty_at_done = None;
    let mut takes = Vec::new();
    let mut next_take: Option<Instant> = None;
    let duration = Duration::from_secs(bench.seconds.into());
    let exit = loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted; stopped the VM");
        }
        let deadline = ready.map_or(BOOT_TIMEOUT, |r| r.0 + duration + EXIT_SLACK);
        if started.elapsed() >= deadline {
            bail!(
                "the guest {}; stopped it{}",
                if ready.is_none() {
                    "printed no GODWIT READY in time"
                } else {
                    "did not power off in time after GODWIT READY"
                },
                tail(&lines)
            );
        }
        if let Some(due) = next_take.filter(|&d| Instant::now() >= d) {
            let asked = Instant::now();
            let words = vm.exec(|m| m.take_dirty_log())?;
            takes.push(Take {
                at: started.elapsed(),
                pages: words.iter().map(|w| u64::from(w.count_ones())).sum(),
                latency: asked.elapsed(),
            });
            // Keep the schedule; skip ahead rather than catch up in a burst.
            let mut next = due + TAKE_PERIOD;
            while next <= Instant::now() {
                next += TAKE_PERIOD;
            }
            next_take = Some(next);
        }
        let mut wait = (deadline.saturating_sub(started.elapsed())).min(Duration::from_millis(200));
        if let Some(due) = next_take {
            wait = wait.min(due.saturating_duration_since(Instant::now()));
        }
        match rx.recv_timeout(wait) {
            Ok(VmEvent::Console(line)) => {
                if ready.is_none() && line.text.contains("GODWIT READY") {
                    let on = logging != Logging::Off;
                    let insns = vm.exec(move |m| {
                        if on {
                            m.set_dirty_logging(true);
                        }
                        m.instret()
                    })?;
                    ready = Some((line.at, Instant::now(), insns));
                    if logging == Logging::Taken {
                        next_take = Some(Instant::now() + TAKE_PERIOD);
                    }
                } else if ready.is_some() && done.is_none() && line.text.contains("GODWIT DONE ") {
                    let (insns, dirty) = vm.exec(|m| (m.instret(), m.ram().dirty_log().count()))?;
                    done = Some((line.at, Instant::now(), insns));
                    if logging == Logging::On {
                        dirty_at_done = Some(dirty as u64);
                    }
                    next_take = None;
                }
                lines.push(line);
            }
            Ok(VmEvent::Ended(exit)) => break exit,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                bail!(
                    "the VM thread ended without reporting how the guest ended{}",
                    tail(&lines)
                )
            }
        }
    };
    drop(vm);
    let transcript = Transcript {
        vmm: Vmm::Godwit,
        wall_s: started.elapsed().as_secs_f64(),
        lines,
        // The status `godwit run` would have exited with.
        status: ExitStatus::from_raw(exit.status() << 8),
    };
    transcript.check()?;
    let (Some(ready), Some(done)) = (ready, done) else {
        bail!("no GODWIT READY or DONE from the guest");
    };
    let host_s = (done.1 - ready.1).as_secs_f64();
    let counted_from = ready.0 + Duration::from_secs_f64(WARMUP_MS / 1e3);
    takes.retain(|t| t.at >= counted_from && t.at <= done.0);
    Ok(DirtyRun {
        round,
        workload: w,
        logging,
        boot_s: transcript.boot_s()?,
        wall_s: transcript.wall_s,
        rate: transcript.rate(workload.rate_key)?,
        mips: (done.2 - ready.2) as f64 / host_s / 1e6,
        takes,
        dirty_at_done,
    })
}

/// What the in-process VM reports.
enum VmEvent {
    /// A console line, timestamped as the UART wrote it.
    Console(Line),
    /// The guest ended (the vCPU thread now only serves jobs, see below).
    Ended(GuestExit),
}

/// The guest console, cut into timestamped lines.
struct ConsoleLines {
    buf: Vec<u8>,
    started: Instant,
    tx: Sender<VmEvent>,
}

impl Write for ConsoleLines {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        for &b in data {
            if b != b'\n' {
                self.buf.push(b);
                continue;
            }
            let text = String::from_utf8_lossy(&self.buf)
                .trim_end_matches('\r')
                .to_string();
            self.buf.clear();
            let line = Line {
                at: self.started.elapsed(),
                stream: Stream::Stdout,
                text,
                // The UART writes on the vCPU thread, as the guest prints.
                vcpu_time: thread_cpu_time(),
            };
            // The benchmark gone means nobody is listening: drop the line.
            let _ = self.tx.send(VmEvent::Console(line));
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill in.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return None;
    }
    Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// A Godwit VM on a thread of this process. Told to quit and joined when
/// dropped.
struct InProcessVm {
    handle: VmHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcessVm {
    /// Builds the VM on its own thread and starts the guest; `tx` hears
    /// how the guest ended.
    fn start(cfg: VmConfig, tx: Sender<VmEvent>) -> Result<InProcessVm> {
        let (handle_tx, handle_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("bench-vcpu".into())
            .spawn(move || {
                let vm = match Vm::boot(cfg) {
                    Ok(vm) => vm,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(vm.handle()));
                // Once `run` returns, `exec` (a take racing the power-off)
                // fails with `VmGone` instead of waiting.
                let exit = vm.run().map(|o| o.exit).unwrap_or(GuestExit::Failure);
                let _ = tx.send(VmEvent::Ended(exit));
            })
            .context("cannot start the vCPU thread")?;
        let handle = handle_rx
            .recv()
            .context("the vCPU thread died building the VM")?
            .context("cannot build the VM")?;
        Ok(InProcessVm {
            handle,
            thread: Some(thread),
        })
    }

    /// Runs `f` with the vCPUs stopped.
    fn exec<R>(&self, f: impl FnOnce(&mut Machine) -> R) -> Result<R> {
        if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
            bail!("the vCPU thread has ended");
        }
        Ok(self.handle.exec(f)?)
    }
}

impl Drop for InProcessVm {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if !thread.is_finished() {
                let _ = self.handle.quit();
            }
            let _ = thread.join();
        }
    }
}

/// One line of the summary: a workload under one logging condition.
struct DirtyRow {
    workload: usize,
    logging: Logging,
    /// Workload rate per guest second.
    rate: Option<Stats>,
    /// Workload rate per second of vCPU thread CPU time.
    rate_vcpu: Option<Stats>,
    /// Mean `rate` over the mean `rate` with logging off.
    ratio: f64,
    /// The same for `rate_vcpu`.
    ratio_vcpu: f64,
    /// Run-by-run `rate_vcpu` over the logging-off run of the same round
    /// (neighbours in time, so they share the host's mood).
    paired_vcpu: Option<Stats>,
    mips: Option<Stats>,
    pages_per_take: Option<Stats>,
    take_ms: Option<Stats>,
    dirty_at_done: Option<Stats>,
}

impl DirtyRow {
    fn summarize(runs: &[DirtyRun]) -> Vec<DirtyRow> {
        let mut rows = Vec::new();
        for w in 0..DIRTY_WORKLOADS.len() {
            let of = |l: Logging| {
                runs.iter()
                    .filter(move |r| r.workload == w && r.logging == l)
            };
            let stats = |l: Logging, f: &dyn Fn(&DirtyRun) -> Vec<f64>| {
                Stats::of(&of(l).flat_map(f).collect::<Vec<_>>())
            };
            let per_s = |r: &DirtyRun| vec![r.rate.per_s];
            let per_vcpu_s = |r: &DirtyRun| r.rate.per_vcpu_s.into_iter().collect();
            let ratio = |a: Option<Stats>, b: Option<Stats>| match (a, b) {
                (Some(a), Some(b)) if b.mean > 0.0 => a.mean / b.mean,
                _ => f64::NAN,
            };
            let off = (
                stats(Logging::Off, &per_s),
                stats(Logging::Off, &per_vcpu_s),
            );
            for logging in Logging::ALL {
                let rate = stats(logging, &per_s);
                let rate_vcpu = stats(logging, &per_vcpu_s);
                let paired: Vec<f64> = of(logging)
                    .filter_map(|r| {
                        let base = of(Logging::Off).find(|o| o.round == r.round)?;
                        Some(r.rate.per_vcpu_s? / base.rate.per_vcpu_s?)
                    })
                    .collect();
                rows.push(DirtyRow {
                    workload: w,
                    logging,
                    ratio: ratio(rate, off.0),
                    ratio_vcpu: ratio(rate_vcpu, off.1),
                    rate,
                    rate_vcpu,
                    paired_vcpu: Stats::of(&paired),
                    mips: stats(logging, &|r| vec![r.mips]),
                    pages_per_take: stats(logging, &DirtyRun::pages_per_take),
                    take_ms: stats(logging, &DirtyRun::take_ms),
                    dirty_at_done: stats(logging, &|r| {
                        r.dirty_at_done.map(|d| d as f64).into_iter().collect()
                    }),
                });
            }
        }
        rows
    }

    fn to_json(&self) -> Value {
        let w = &DIRTY_WORKLOADS[self.workload];
        json!({
            "workload": w.name,
            "logging": self.logging.name(),
            "rate_field": w.rate_key,
            "rate_per_s": Stats::to_json(self.rate),
            "ratio_to_off": self.ratio,
            "rate_per_vcpu_s": Stats::to_json(self.rate_vcpu),
            "ratio_to_off_per_vcpu_s": self.ratio_vcpu,
            "ratio_to_off_same_round_per_vcpu_s": Stats::to_json(self.paired_vcpu),
            "mips": Stats::to_json(self.mips),
            "dirty_pages_per_take": Stats::to_json(self.pages_per_take),
            "take_ms": Stats::to_json(self.take_ms),
            "dirty_pages_at_done": Stats::to_json(self.dirty_at_done),
        })
    }
}

/// Two tables: the workloads' throughput, then what the log saw.
fn print_dirty_table(args: &Args, host: &Value, rows: &[DirtyRow]) {
    let load: Vec<String> = host["loadavg"]
        .as_array()
        .map_or(Vec::new(), |a| a.iter().map(|x| x.to_string()).collect());
    println!(
        "bench-cpu --dirty-log: Godwit, {} run(s) per row, {} s each ({} ms warm-up), log taken every {} ms in on+take; mean (min–max); host: {} CPUs, load {} at start",
        args.runs,
        args.seconds,
        WARMUP_MS,
        TAKE_PERIOD.as_millis(),
        host["nproc"],
        load.join(" ")
    );
    println!(
        "{:<10} {:<8} {:<28} {:>6}  {:<20} {:>6}  {:<20} guest MIPS",
        "workload",
        "logging",
        "per guest s",
        "vs off",
        "per vCPU CPU s",
        "vs off",
        "same round vs off",
    );
    for r in rows {
        let w = &DIRTY_WORKLOADS[r.workload];
        println!(
            "{:<10} {:<8} {:<28} {:>6.3}  {:<20} {:>6.3}  {:<20} {}",
            w.name,
            r.logging.name(),
            format!("{} {}", Stats::show(r.rate, w.scale, 1), w.unit),
            r.ratio,
            Stats::show(r.rate_vcpu, w.scale, 1),
            r.ratio_vcpu,
            Stats::show(r.paired_vcpu, 1.0, 3),
            Stats::show(r.mips, 1.0, 1),
        );
    }
    println!();
    println!(
        "{:<10} {:<8} {:<24} {:<22} pages dirtied READY–DONE",
        "workload", "logging", "dirty pages per take", "take (ms)",
    );
    for r in rows.iter().filter(|r| r.logging != Logging::Off) {
        println!(
            "{:<10} {:<8} {:<24} {:<22} {}",
            DIRTY_WORKLOADS[r.workload].name,
            r.logging.name(),
            Stats::show(r.pages_per_take, 1.0, 0),
            Stats::show(r.take_ms, 1.0, 2),
            Stats::show(r.dirty_at_done, 1.0, 0),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_are_cut_at_newlines() {
        let (tx, rx) = mpsc::channel();
        let mut c = ConsoleLines {
            buf: Vec::new(),
            started: Instant::now(),
            tx,
        };
        c.write_all(b"GODWIT READY {}\r\nGODWIT ").unwrap();
        c.write_all(b"HB {\"t_ms\":1}\nno newline yet").unwrap();
        let texts: Vec<String> = rx
            .try_iter()
            .map(|e| match e {
                VmEvent::Console(l) => {
                    assert!(l.vcpu_time.is_some());
                    l.text
                }
                VmEvent::Ended(_) => panic!("no exit was sent"),
            })
            .collect();
        assert_eq!(texts, ["GODWIT READY {}", "GODWIT HB {\"t_ms\":1}"]);
    }

    #[test]
    fn rates_count_the_intervals_after_the_warm_up() {
        // Heartbeats every second of guest time; the host saw them 1.25 s
        // apart and the vCPU thread ran 0.5 s between them.
        let hb = |i: u64, rate: u64| Line {
            at: Duration::from_millis(1250 * i),
            stream: Stream::Stdout,
            text: format!("GODWIT HB {{\"t_ms\":{},\"pages_per_s\":{rate}}}", 1000 * i),
            vcpu_time: Some(Duration::from_millis(500 * i)),
        };
        let t = Transcript {
            vmm: Vmm::Godwit,
            wall_s: 5.0,
            lines: vec![hb(0, 0), hb(1, 10), hb(2, 20), hb(3, 100), hb(4, 300)],
            status: ExitStatus::from_raw(0),
        };
        let r = t.rate("pages_per_s").unwrap();
        // Counted: the intervals starting at 2 s and 3 s: 100 + 300 pages.
        assert_eq!(r.window_guest_s, 2.0);
        assert_eq!(r.per_s, 200.0);
        assert_eq!(r.per_s_host_clock, 400.0 / 2.5);
        assert_eq!(r.per_vcpu_s, Some(400.0));
    }
}

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

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
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
    #[arg(long, default_value = "512M", value_parser = crate::size::parse_size)]
    mem: u64,
    /// Also write every measurement and the summary to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The QEMU executable.
    #[arg(long, default_value = "qemu-system-riscv64")]
    qemu: PathBuf,
}

/// Runs the benchmark; Ok(0) whenever the measurement worked, whether or
/// not the targets were met.
pub fn run(args: Args) -> Result<i32> {
    catch_interrupts();
    let setup = Setup::new(&args)?;
    let host_start = host_info();
    eprintln!(
        "bench-cpu: {} run(s) per VMM, alternating godwit/qemu; boot: {} {}; throughput: quicksort {} ({} s); {} MiB RAM",
        args.runs,
        BOOT_WORKLOAD.0,
        BOOT_WORKLOAD.1,
        QUICKSORT_PARAMS,
        args.seconds,
        args.mem >> 20,
    );
    let mut results = [VmmResults::default(), VmmResults::default()];
    let mut raw = Vec::new();
    for round in 1..=args.runs {
        for vmm in VMMS {
            let m = measure_boot(&setup, vmm)?;
            eprintln!(
                "bench-cpu: [{round}/{}] {:<6} boot        {:6.2} s",
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
                "bench-cpu: [{round}/{}] {:<6} throughput  {:6.2} M elems/s{}",
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
            "qemu_version": setup.qemu_version,
            "qemu_devices": "virtio-balloon-device,free-page-reporting=on",
            "cmdline_boot": crate::run::cmdline(Some(BOOT_WORKLOAD.0), BOOT_WORKLOAD.1),
            "cmdline_throughput": crate::run::cmdline(Some("quicksort"), &quicksort_params(args.seconds)),
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

/// The VMMs compared, in the order they take turns.
const VMMS: [Vmm; 2] = [Vmm::Godwit, Vmm::Qemu];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Vmm {
    Godwit = 0,
    Qemu = 1,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Godwit => "godwit",
            Vmm::Qemu => "qemu",
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
    /// First line of `qemu --version`.
    qemu_version: String,
}

impl Setup {
    /// Finds this executable, the guest image and a usable QEMU.
    fn new(args: &Args) -> Result<Setup> {
        if args.mem == 0 || !args.mem.is_multiple_of(1 << 20) {
            bail!("--mem must be a whole number of MiB (QEMU's -m), like 512M");
        }
        let (kernel, initrd) = crate::guest_image::resolve(None, None)
            .context("the guest image is missing: build it with guest/build.sh")?;
        let initrd = initrd.context("the guest image has no initramfs")?;
        let qemu_version = check_qemu(&args.qemu)?;
        Ok(Setup {
            godwit: std::env::current_exe().context("cannot find the godwit executable")?,
            qemu: args.qemu.clone(),
            kernel,
            initrd,
            mem_bytes: args.mem,
            qemu_version,
        })
    }

    /// The command that boots `workload` with `params` under `vmm`.
    fn command(&self, vmm: Vmm, workload: &str, params: &str) -> Command {
        match vmm {
            Vmm::Godwit => {
                let mut c = Command::new(&self.godwit);
                c.arg("run")
                    .arg("--kernel")
                    .arg(&self.kernel)
                    .arg("--initrd")
                    .arg(&self.initrd)
                    .arg("--mem")
                    .arg(self.mem_bytes.to_string())
                    .args(["--workload", workload, "--append", params]);
                c
            }
            Vmm::Qemu => {
                let mut c = Command::new(&self.qemu);
                c.args(["-M", "virt", "-smp", "1", "-nographic", "-no-reboot"])
                    .args(["-bios", "default", "-m"])
                    .arg(format!("{}M", self.mem_bytes >> 20))
                    .arg("-kernel")
                    .arg(&self.kernel)
                    .arg("-initrd")
                    .arg(&self.initrd)
                    .arg("-append")
                    .arg(crate::run::cmdline(Some(workload), params))
                    // Godwit's default board has a balloon too (as in guest/qemu-boot.sh).
                    .args(["-device", "virtio-balloon-device,free-page-reporting=on"]);
                c
            }
        }
    }
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
        Vmm::Godwit => t.mips().map(Some),
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

/// Godwit's own instruction count (from its exit line on stderr).
struct Mips {
    instructions: u64,
    seconds: f64,
    mips: f64,
}

// ---------------------------------------------------------------------------
// Running a VMM and collecting its output

/// Set by SIGINT/SIGTERM; the wait loop polls it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns Ctrl-C and SIGTERM into an error, so children get killed.
fn catch_interrupts() {
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
                if tx.send(Line { at, stream, text }).is_err() {
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
                    done,
                    json,
                })
            })
            .collect()
    }

    /// Quicksort throughput: elements over the heartbeat intervals that
    /// start after the warm-up, divided by their total length.
    fn throughput(&self) -> Result<Throughput> {
        let name = self.vmm.name();
        let reports = self.reports()?;
        let num = |r: &Report, key: &str| {
            r.json[key]
                .as_f64()
                .with_context(|| format!("no {key} in a heartbeat from {name}: {}", r.json))
        };
        let (mut elems, mut guest_ms, mut first_at) = (0.0, 0.0, None);
        for pair in reports.windows(2) {
            let t0 = num(&pair[0], "t_ms")?;
            if t0 < WARMUP_MS {
                continue;
            }
            let dt_ms = num(&pair[1], "t_ms")? - t0;
            elems += num(&pair[1], "elems_per_s")? * dt_ms / 1e3;
            guest_ms += dt_ms;
            first_at.get_or_insert(pair[0].at);
        }
        let (Some(first_at), Some(last)) = (first_at, reports.last()) else {
            bail!("{name}: no heartbeats after the {WARMUP_MS} ms warm-up");
        };
        if guest_ms <= 0.0 {
            bail!("{name}: the heartbeats after the warm-up span no time");
        }
        let host_s = (last.at - first_at).as_secs_f64();
        Ok(Throughput {
            elems_per_s: elems / (guest_ms / 1e3),
            elems_per_s_host_clock: if host_s > 0.0 { elems / host_s } else { 0.0 },
            done_elems_per_s: num(last, "elems_per_s")?,
            window_guest_s: guest_ms / 1e3,
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
    boot_s: [Option<Stats>; 2],
    elems_per_s: [Option<Stats>; 2],
    mips: Option<Stats>,
    boot_ratio: f64,
    throughput_ratio: f64,
}

impl Summary {
    fn new(r: &[VmmResults; 2]) -> Summary {
        let boot_s = [Stats::of(&r[0].boot_s), Stats::of(&r[1].boot_s)];
        let elems_per_s = [Stats::of(&r[0].elems_per_s), Stats::of(&r[1].elems_per_s)];
        let ratio = |s: &[Option<Stats>; 2]| match s {
            [Some(g), Some(q)] if q.mean > 0.0 => g.mean / q.mean,
            _ => f64::NAN,
        };
        Summary {
            boot_ratio: ratio(&boot_s),
            throughput_ratio: ratio(&elems_per_s),
            boot_s,
            elems_per_s,
            mips: Stats::of(&r[0].mips),
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
            "bench-cpu: Godwit vs QEMU TCG, {} run(s) each, {} s quicksort; mean (min–max); host: {} CPUs, load {} at start",
            args.runs,
            args.seconds,
            host["nproc"],
            load.join(" ")
        );
        println!(
            "{:<22} {:<24} {:<24} {:>12}   target",
            "", "godwit", "qemu", "godwit/qemu"
        );
        println!(
            "{:<22} {:<24} {:<24} {:>12.2}   <= {BOOT_RATIO_MAX:.1}  {}",
            "boot to READY (s)",
            Stats::show(self.boot_s[0], 1.0, 2),
            Stats::show(self.boot_s[1], 1.0, 2),
            self.boot_ratio,
            verdict(self.boot_met())
        );
        println!(
            "{:<22} {:<24} {:<24} {:>12.2}   >= {THROUGHPUT_RATIO_MIN:.1}  {}",
            "quicksort (M elems/s)",
            Stats::show(self.elems_per_s[0], 1e6, 1),
            Stats::show(self.elems_per_s[1], 1e6, 1),
            self.throughput_ratio,
            verdict(self.throughput_met())
        );
        println!(
            "{:<22} {:<24} -",
            "guest MIPS",
            Stats::show(self.mips, 1.0, 1)
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
        godwit["mips"] = Stats::to_json(self.mips);
        json!({
            "godwit": godwit,
            "qemu": vmm(1),
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
fn host_info() -> Value {
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

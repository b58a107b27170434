//! `godwit bench-debian`: the Debian guest (guest/debian) on Godwit next to
//! QEMU (TCG, `-M virt -bios fw_dynamic.bin`) with the same firmware,
//! kernel, initrd, disk image, RAM and vCPUs, taking turns (godwit, qemu,
//! godwit, ...) so that noise from other users of the host falls on both.
//!
//! Each run boots a fresh sparse copy of the disk image, with a virtio-net
//! NIC on a TAP in a private network namespace (`gwdeb-b<pid>`, removed at
//! the end; the guest's marker waits for its network) and measures:
//!
//! - **boot**: host seconds from spawning the VMM to the guest's
//!   `GODWIT DEBIAN READY` line;
//! - **disk**: fio in the guest on a 256 MiB file of its ext4 root
//!   (`direct=1`, `psync`, queue depth 1): sequential write and read in
//!   1 MiB blocks, then 4 KiB random read and write for 10 s each;
//! - **gzip**: `gzip -9` of the first `--gzip-mib` MiB of gcc's `cc1` (a
//!   real program on real data; `-9` needs 674 MiB, more than the guest
//!   has), guest seconds from the page cache to /root.
//!
//! The commands are typed at the guest's root shell on ttyS0 and their
//! results come back as `GWB ...` console lines. Then `systemctl poweroff`,
//! and the VMM must exit. A VMM that fails or stalls ends the benchmark
//! with an error; children are killed on every path (`PR_SET_PDEATHSIG`
//! too). Needs root (namespace and TAP).

use crate::cpu::{catch_interrupts, host_info, INTERRUPTED};
use crate::stats::mean_sd;
use anyhow::{bail, Context, Result};
use godwit_vmm::guest::{debian_image, sparse_copy, DebianImage, DEBIAN_APPEND, DEBIAN_READY};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
const WORK_TIMEOUT: Duration = Duration::from_secs(900);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(180);
const TAP: &str = "gwdeb0";
const HOST_ADDR: &str = "10.77.1.1/24";

/// Command line of `godwit bench-debian`.
#[derive(clap::Args)]
pub struct Args {
    /// Runs per VMM and vCPU count.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// vCPU counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    cpus: Vec<u32>,
    /// Guest RAM of both VMMs: a whole number of MiB, e.g. 512M or 1G.
    #[arg(long, default_value = "512M", value_parser = godwit_vmm::size::parse_size)]
    mem: u64,
    /// MiB of input for the gzip run (xz is not in the image).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    gzip_mib: u32,
    /// Skip the disk measurement (fio).
    #[arg(long)]
    no_fio: bool,
    /// Only Godwit (no QEMU runs).
    #[arg(long)]
    no_qemu: bool,
    /// Also write every measurement and the summary to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The QEMU executable.
    #[arg(long, default_value = "qemu-system-riscv64")]
    qemu: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Vmm {
    Godwit,
    Qemu,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Godwit => "godwit",
            Vmm::Qemu => "qemu",
        }
    }
}

/// The figures of one run, by name (see [`METRICS`]).
#[derive(Default)]
struct Run {
    values: Vec<(&'static str, f64)>,
    /// Godwit's closing statistics line (MIPS, blocks translated).
    exit_line: Option<String>,
}

/// Metric key, table label, and whether higher is better.
const METRICS: [(&str, &str, bool); 6] = [
    ("boot_s", "boot to marker (s)", false),
    ("seqwrite_mib_s", "fio seq write 1M (MiB/s)", true),
    ("seqread_mib_s", "fio seq read 1M (MiB/s)", true),
    ("randread_iops", "fio rand read 4K (IOPS)", true),
    ("randwrite_iops", "fio rand write 4K (IOPS)", true),
    ("gzip_s", "gzip -9 (guest s)", false),
];

/// Runs the benchmark.
pub fn run(args: Args) -> Result<i32> {
    catch_interrupts();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-debian needs root: the guests' NIC is a TAP in a network namespace");
    }
    if args.mem == 0 || !args.mem.is_multiple_of(1 << 20) {
        bail!("--mem must be a whole number of MiB (QEMU's -m), like 512M");
    }
    if args.cpus.is_empty() || args.cpus.iter().any(|&c| !(1..=8).contains(&c)) {
        bail!("--cpus: vCPU counts from 1 to 8");
    }
    let img = debian_image()?;
    let godwit = std::env::current_exe().context("cannot find this executable")?;
    let qemu_version = if args.no_qemu {
        None
    } else {
        Some(qemu_version(&args.qemu)?)
    };
    let vmms: &[Vmm] = if args.no_qemu {
        &[Vmm::Godwit]
    } else {
        &[Vmm::Godwit, Vmm::Qemu]
    };
    let host_start = host_info();
    let ns = Netns::new()?;
    let work = TempDir::new()?;
    eprintln!(
        "bench-debian: {} run(s) per VMM with {:?} vCPUs, {} MiB; image {}",
        args.runs,
        args.cpus,
        args.mem >> 20,
        img.disk.display()
    );
    let mut raw = Vec::new();
    // results[cpus index][vmm index] = runs
    let mut results: Vec<Vec<Vec<Run>>> = Vec::new();
    for &cpus in &args.cpus {
        let mut per_vmm: Vec<Vec<Run>> = vmms.iter().map(|_| Vec::new()).collect();
        for round in 1..=args.runs {
            for (vi, &vmm) in vmms.iter().enumerate() {
                let r = measure(&args, &img, &godwit, &ns, &work.0, vmm, cpus)
                    .with_context(|| format!("{} with {cpus} vCPU(s), run {round}", vmm.name()))?;
                let line: Vec<String> = r
                    .values
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.2}"))
                    .collect();
                eprintln!(
                    "bench-debian: [{round}/{}] {:<6} {cpus} vCPU: {}",
                    args.runs,
                    vmm.name(),
                    line.join(", ")
                );
                let mut m = json!({"vmm": vmm.name(), "cpus": cpus, "round": round});
                for (k, v) in &r.values {
                    m[*k] = json!(v);
                }
                if let Some(l) = &r.exit_line {
                    m["godwit_exit"] = json!(l);
                }
                raw.push(m);
                per_vmm[vi].push(r);
            }
        }
        results.push(per_vmm);
    }
    let summary = print_table(&args, vmms, &results, &host_start, qemu_version.as_deref());
    if let Some(path) = &args.json {
        let doc = json!({
            "godwit_version": env!("CARGO_PKG_VERSION"),
            "runs": args.runs,
            "cpus": args.cpus,
            "mem_bytes": args.mem,
            "gzip_mib": args.gzip_mib,
            "qemu_version": qemu_version,
            "append": DEBIAN_APPEND,
            "guest_script": guest_script(&args),
            "host": host_start,
            "host_end": host_info(),
            "measurements": raw,
            "summary": summary,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    Ok(0)
}

fn qemu_version(qemu: &Path) -> Result<String> {
    let out = Command::new(qemu)
        .arg("--version")
        .output()
        .with_context(|| {
            format!(
                "cannot run {} (apt-get install qemu-system-misc, or --qemu PATH, or --no-qemu)",
                qemu.display()
            )
        })?;
    if !out.status.success() {
        bail!("{} --version failed ({})", qemu.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// What is typed at the guest's shell: every step prints a `GWB` line, and
/// `GWB-END-2` closes (the echoed input reads `$((1 + 1))`).
fn guest_script(args: &Args) -> String {
    let mut s = String::from("cd /root && rm -f fio.dat gz.in gz.out");
    if !args.no_fio {
        s.push_str(
            " && F='fio --filename=/root/fio.dat --size=256M --direct=1 --ioengine=psync --output-format=terse --terse-version=3' \
             && for j in '--name=seqwrite --rw=write --bs=1M' '--name=seqread --rw=read --bs=1M' \
             '--name=randread --rw=randread --bs=4k --time_based --runtime=10' \
             '--name=randwrite --rw=randwrite --bs=4k --time_based --runtime=10'; \
             do $F $j | awk -F';' '$1 == 3 { print \"GWB fio\", $3, $7, $8, $48, $49 }'; done \
             && rm -f fio.dat",
        );
    }
    s.push_str(&format!(
        " && head -c {}M $(ls /usr/libexec/gcc/*/*/cc1 | head -n 1) > gz.in && cat gz.in > /dev/null \
         && t0=$(date +%s.%N) && gzip -9 -c gz.in > gz.out && t1=$(date +%s.%N) \
         && echo GWB gzip $t0 $t1 $(stat -c %s gz.in) $(stat -c %s gz.out) && rm -f gz.in gz.out \
         ; echo GWB-END-$((1 + 1))",
        args.gzip_mib
    ));
    s
}

/// One boot, the guest script, poweroff.
fn measure(
    args: &Args,
    img: &DebianImage,
    godwit: &Path,
    ns: &Netns,
    work: &Path,
    vmm: Vmm,
    cpus: u32,
) -> Result<Run> {
    let disk = work.join("disk.img");
    let _ = std::fs::remove_file(&disk);
    sparse_copy(&img.disk, &disk)?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0]);
    match vmm {
        Vmm::Godwit => {
            cmd.arg(godwit).arg("run").arg("--bios").arg(&img.bios);
            cmd.arg("--kernel").arg(&img.kernel);
            cmd.arg("--initrd").arg(&img.initrd);
            cmd.arg("--drive").arg(format!("file={}", disk.display()));
            cmd.args(["--net", &format!("tap={TAP}")]);
            cmd.args(["--mem", &format!("{}M", args.mem >> 20)]);
            cmd.args(["--cpus", &cpus.to_string(), "--append", DEBIAN_APPEND]);
        }
        Vmm::Qemu => {
            cmd.arg(&args.qemu)
                .args(["-M", "virt", "-nographic", "-no-reboot"]);
            cmd.args(["-m", &format!("{}M", args.mem >> 20)]);
            cmd.args(["-smp", &cpus.to_string()]);
            cmd.arg("-bios").arg(&img.bios);
            cmd.arg("-kernel").arg(&img.kernel);
            cmd.arg("-initrd").arg(&img.initrd);
            // Godwit's guests get the same first words (BASE_CMDLINE).
            cmd.args([
                "-append",
                &format!("{} {DEBIAN_APPEND}", godwit_vmm::guest::BASE_CMDLINE),
            ]);
            cmd.arg("-drive")
                .arg(format!("file={},format=raw,if=none,id=hd0", disk.display()));
            cmd.args(["-device", "virtio-blk-device,drive=hd0"]);
            cmd.args([
                "-netdev",
                &format!("tap,id=n0,ifname={TAP},script=no,downscript=no"),
            ]);
            cmd.args(["-device", "virtio-net-device,netdev=n0"]);
            // Godwit's board has a balloon with free page reporting.
            cmd.args(["-device", "virtio-balloon-device,free-page-reporting=on"]);
        }
    }
    let mut g = Console::spawn(vmm, cmd)?;
    g.wait_for(DEBIAN_READY, BOOT_TIMEOUT)?;
    let boot_s = g.started.elapsed().as_secs_f64();
    let mut run = Run::default();
    run.values.push(("boot_s", boot_s));
    // The getty may drop what is typed while it starts: a probe line,
    // typed again until the shell answers, then the script.
    let mut shell_up = false;
    for _ in 0..12 {
        g.type_line("echo GWB-SHELL-$((40 + 2))")?;
        if g.wait_for("GWB-SHELL-42", Duration::from_secs(10)).is_ok() {
            shell_up = true;
            break;
        }
    }
    if !shell_up {
        bail!(
            "the guest's shell does not answer on its console{}",
            g.tail()
        );
    }
    g.type_line(&guest_script(args))?;
    let mut fio_seen = 0;
    let mut gzip_seen = false;
    let end = Instant::now() + WORK_TIMEOUT;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let line = g.wait_for("GWB", left)?;
        let words: Vec<&str> = line[line.find("GWB").unwrap_or(0)..]
            .split_whitespace()
            .collect();
        match words.as_slice() {
            ["GWB-END-2"] => break,
            ["GWB", "fio", name, rbw, riops, wbw, wiops] => {
                let num = |s: &str| -> Result<f64> {
                    s.parse::<f64>()
                        .with_context(|| format!("bad fio figure {s:?} in {line:?}"))
                };
                let (rbw, riops, wbw, wiops) = (num(rbw)?, num(riops)?, num(wbw)?, num(wiops)?);
                let (key, v) = match *name {
                    "seqwrite" => ("seqwrite_mib_s", wbw / 1024.0),
                    "seqread" => ("seqread_mib_s", rbw / 1024.0),
                    "randread" => ("randread_iops", riops),
                    "randwrite" => ("randwrite_iops", wiops),
                    _ => bail!("unknown fio job in {line:?}"),
                };
                if v <= 0.0 {
                    bail!("fio job {name} did no I/O: {line:?}");
                }
                run.values.push((key, v));
                fio_seen += 1;
            }
            ["GWB", "gzip", t0, t1, n_in, n_out] => {
                let f = |s: &str| s.parse::<f64>().ok();
                let (Some(t0), Some(t1), Some(n_in), Some(n_out)) =
                    (f(t0), f(t1), f(n_in), f(n_out))
                else {
                    bail!("bad gzip line {line:?}");
                };
                if n_in < f64::from(args.gzip_mib) * 1048576.0 || n_out <= 0.0 || t1 <= t0 {
                    bail!("gzip did not compress the input: {line:?}");
                }
                run.values.push(("gzip_s", t1 - t0));
                gzip_seen = true;
            }
            _ => {} // the echoed input line, or noise
        }
    }
    let want_fio = if args.no_fio { 0 } else { 4 };
    if fio_seen != want_fio || !gzip_seen {
        bail!(
            "the guest script failed ({fio_seen} of {want_fio} fio jobs, gzip {}){}",
            if gzip_seen { "done" } else { "not done" },
            g.tail()
        );
    }
    g.type_line("systemctl poweroff")?;
    let status = g.wait_exit(POWEROFF_TIMEOUT)?;
    if !status.success() {
        bail!(
            "{} exited with {status} after poweroff{}",
            vmm.name(),
            g.tail()
        );
    }
    run.exit_line = g
        .seen
        .iter()
        .rev()
        .find(|l| l.starts_with("godwit: guest ended"))
        .cloned();
    let _ = std::fs::remove_file(&disk);
    Ok(run)
}

/// A VMM with its console on pipes: input typed, output as lines.
struct Console {
    vmm: Vmm,
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    seen: Vec<String>,
    started: Instant,
}

impl Console {
    fn spawn(vmm: Vmm, mut cmd: Command) -> Result<Console> {
        cmd.stdin(Stdio::piped())
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
        let stdin = child.stdin.take().context("no stdin pipe")?;
        let (tx, lines) = mpsc::channel();
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().context("no stdout pipe")?),
            Box::new(child.stderr.take().context("no stderr pipe")?),
        ];
        for p in pipes {
            let tx = tx.clone();
            std::thread::Builder::new()
                .name("bench-reader".into())
                .spawn(move || {
                    let mut r = BufReader::new(p);
                    let mut buf = Vec::new();
                    loop {
                        buf.clear();
                        match r.read_until(b'\n', &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                        let l = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\r', '\n'])
                            .to_string();
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                })
                .context("cannot start a reader thread")?;
        }
        Ok(Console {
            vmm,
            child,
            stdin,
            lines,
            seen: Vec::new(),
            started,
        })
    }

    fn tail(&self) -> String {
        let n = self.seen.len().saturating_sub(12);
        let mut s = String::from("; last output:");
        for l in &self.seen[n..] {
            s.push_str("\n    ");
            s.push_str(l);
        }
        s
    }

    /// The next line containing `what`, within `timeout`.
    fn wait_for(&mut self, what: &str, timeout: Duration) -> Result<String> {
        let end = Instant::now() + timeout;
        loop {
            if INTERRUPTED.load(Ordering::SeqCst) {
                bail!("interrupted; stopped {}{}", self.vmm.name(), self.tail());
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{} printed no {what:?} within {} s{}",
                    self.vmm.name(),
                    timeout.as_secs(),
                    self.tail()
                );
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(l) => {
                    let hit = l.contains(what);
                    self.seen.push(l);
                    if hit {
                        return Ok(self.seen[self.seen.len() - 1].clone());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("{} exited before {what:?}{}", self.vmm.name(), self.tail())
                }
            }
        }
    }

    fn type_line(&mut self, line: &str) -> Result<()> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| self.stdin.flush())
            .with_context(|| format!("cannot type into {}'s console", self.vmm.name()))
    }

    fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if INTERRUPTED.load(Ordering::SeqCst) {
                bail!("interrupted; stopped {}", self.vmm.name());
            }
            while let Ok(l) = self.lines.try_recv() {
                self.seen.push(l);
            }
            if let Some(st) = self.child.try_wait()? {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(l);
                }
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{} did not exit within {} s of poweroff{}",
            self.vmm.name(),
            timeout.as_secs(),
            self.tail()
        )
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A private namespace with the TAP both VMMs use; removed on drop.
struct Netns(String);

impl Netns {
    fn new() -> Result<Netns> {
        let ns = Netns(format!("gwdeb-b{}", std::process::id()));
        let _ = ip(&["netns", "del", &ns.0]);
        ip(&["netns", "add", &ns.0])?;
        ip(&["-n", &ns.0, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns.0, "tuntap", "add", TAP, "mode", "tap"])?;
        ip(&["-n", &ns.0, "addr", "add", HOST_ADDR, "dev", TAP])?;
        ip(&["-n", &ns.0, "link", "set", TAP, "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("timeout")
        .arg("20")
        .arg("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let d = std::env::temp_dir().join(format!("gwdeb-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        Ok(TempDir(d))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Prints the table (mean ± sample sd over the runs, Godwit/QEMU of the
/// means) and returns the summary as JSON.
fn print_table(
    args: &Args,
    vmms: &[Vmm],
    results: &[Vec<Vec<Run>>],
    host: &Value,
    qemu_version: Option<&str>,
) -> Value {
    println!();
    println!(
        "Debian guest, {} MiB, {} run(s) each, alternating; host: {} CPUs, load {}; {}",
        args.mem >> 20,
        args.runs,
        host["nproc"],
        host["loadavg"],
        qemu_version.unwrap_or("no QEMU")
    );
    let mut summary = Vec::new();
    for (ci, &cpus) in args.cpus.iter().enumerate() {
        println!();
        print!("| {cpus} vCPU |");
        for v in vmms {
            print!(" {} |", v.name());
        }
        if vmms.len() == 2 {
            print!(" godwit / qemu |");
        }
        println!();
        println!(
            "| --- |{}",
            " --: |".repeat(vmms.len() + usize::from(vmms.len() == 2))
        );
        for (key, label, higher_better) in METRICS {
            let stats: Vec<Option<(f64, f64, usize)>> = (0..vmms.len())
                .map(|vi| {
                    let v: Vec<f64> = results[ci][vi]
                        .iter()
                        .filter_map(|r| r.values.iter().find(|(k, _)| *k == key).map(|(_, v)| *v))
                        .collect();
                    mean_sd(&v).map(|(m, s)| (m, s, v.len()))
                })
                .collect();
            if stats.iter().all(Option::is_none) {
                continue;
            }
            print!("| {label} |");
            let mut entry = json!({"cpus": cpus, "metric": key, "higher_is_better": higher_better});
            for (vi, s) in stats.iter().enumerate() {
                match s {
                    Some((m, sd, n)) => {
                        print!(" {} ± {} |", fmt(*m), fmt(*sd));
                        entry[vmms[vi].name()] = json!({"mean": m, "sd": sd, "n": n});
                    }
                    None => print!(" – |"),
                }
            }
            if vmms.len() == 2 {
                match (stats[0], stats[1]) {
                    (Some((g, _, _)), Some((q, _, _))) if q > 0.0 => {
                        print!(" {:.2} |", g / q);
                        entry["ratio"] = json!(g / q);
                    }
                    _ => print!(" – |"),
                }
            }
            println!();
            summary.push(entry);
        }
    }
    Value::Array(summary)
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn guest_script_runs_every_step_and_ends_with_the_end_line() {
        let a = Cli::parse_from(["x", "--gzip-mib", "2"]).args;
        assert_eq!(a.cpus, vec![1, 2]);
        let s = guest_script(&a);
        for job in ["seqwrite", "seqread", "randread", "randwrite"] {
            assert!(s.contains(&format!("--name={job} ")), "{s}");
        }
        assert!(s.contains("head -c 2M "), "{s}");
        // Quoted words stay apart (a line continuation drops the blank).
        assert!(!s.contains("''"), "{s}");
        assert!(!s.contains("'&&") && !s.contains("'do"), "{s}");
        assert!(s.ends_with("; echo GWB-END-$((1 + 1))"), "{s}");
        assert!(!s.contains('\n'), "one line at the shell");
        let a = Cli::parse_from(["x", "--no-fio", "--cpus", "2"]).args;
        assert_eq!(a.cpus, vec![2]);
        assert!(!guest_script(&a).contains("fio --"));
    }
}

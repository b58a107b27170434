//! `godwit bench`: the paper's evaluation, every migration mode and
//! pre-paging strategy on the same guest and workload, in one run.
//!
//! For each cell of the matrix (workload × self-ballooning × mode/strategy)
//! and each run:
//!
//! 1. bring the testbed up ([`crate::testbed`]; or, with `--loopback` or
//!    without root, use 127.0.0.1 and cap the migration at the link rate with
//!    `migrate-set-parameters {"max-bandwidth": ...}`);
//! 2. start `godwit receive` in `godwit-dst` and `godwit run` in
//!    `godwit-src`, each with a control socket in a temporary folder; every
//!    console line gets a host timestamp (one clock for both) as it arrives;
//! 3. wait for `GODWIT READY`, the warm-up, the destination's listening
//!    socket and, with the balloon on (memtouch, quicksort), for the guest's
//!    free page reporting to settle (the free map unchanged for 2.5 s), so
//!    every mode starts from the same free map; run `godwit migrate ...
//!    --json REPORT` (in `godwit-src`);
//! 4. let the destination run a little longer, quit it, and check the guest's
//!    integrity on both sides (`bad` == 0, no CORRUPT/ERROR lines): a cell
//!    with an integrity error is FAILED, loudly;
//! 5. keep the engine's report and the host's own figures.
//!
//! The host figures follow DESIGN.md, "Comparing fairly with QEMU": the
//! guest-observed downtime is the largest gap between consecutive
//! `GODWIT HB` lines (source and destination consoles merged) from the start
//! of the migration to the end of the after-run, minus the heartbeat period;
//! the achieved guest rate is the workload's throughput figure averaged over
//! the heartbeats of the last second before the migration (the warm-up lasts
//! `--warmup-s` and, for memtouch and quicksort, until they reach their steady
//! state: a full pass over the working set, a first complete sort).
//!
//! Outputs (in `--out`, rewritten after every run so an interrupted bench
//! keeps what it measured): `results.json` (every run, raw), `results.md`
//! (one row per cell, mean ± sample standard deviation over runs),
//! `plot-*.svg` (full preset: figures against the working-set size) and
//! `logs/` (every console, timestamped).
//!
//! QEMU (TCG, `-M virt`, `virtio-balloon-device,free-page-reporting=on`)
//! migrates the same guest over the same link in the same run: the
//! `qemu-*` cells (memtouch at the fixed rate, balloon on; pre-copy,
//! post-copy, and QEMU's post-copy after the first pass as "hybrid"),
//! driven over QMP by [`crate::qemu`]. Its rows take their VMM figures
//! from `query-migrate` and their guest figures from the consoles exactly
//! as Godwit's rows. QEMU runs twice per case: as shipped (`qemu`) and with
//! the guest's timer re-armed on the destination (`qemu+rearm`; the module
//! doc of `bench_qemu` explains the QEMU bug this works around). A QEMU run
//! that fails is FAILED in the table like any other, but does not make the
//! bench exit non-zero: it is a finding about QEMU, not about Godwit.
//! Without `qemu-system-riscv64` (or with `--no-qemu`) the QEMU cells are
//! skipped.
//!
//! Everything the bench starts it stops: children are killed with their
//! process group when their guard drops, every wait is bounded, the testbed
//! guard tears the namespaces down, and Ctrl-C turns into an error at the
//! next wait.

use crate::qemu::{self, Qemu, Qmp, Switch};
use crate::stats::{mean, mean_sd};
use crate::testbed::{self, LinkConfig, Process, Side, Testbed};
use anyhow::{bail, Context, Result};
use godwit_vmm::control::ControlClient;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The source prints `GODWIT READY` within this time or the run fails.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// The destination listens within this time or the run fails.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);
/// `godwit migrate` finishes within this time or is killed.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(600);
/// A VMM asked to quit (or quit by the migration) exits within this time.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Timeout of each control socket command.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP port of the migration on the testbed.
const MIGRATION_PORT: u16 = 4444;
/// memtouch's fixed dirty rate, pages/s: 80 MB/s, below the link's 125 MB/s.
const FIXED_PAGES_PER_S: u64 = 20_000;
const PAGE_BYTES: f64 = 4096.0;
/// The achieved guest rate is averaged over this much time before the
/// migration starts.
const RATE_WINDOW_MS: f64 = 1000.0;
/// The warm-up waits at most this long for the workload's steady state.
const STEADY_TIMEOUT: Duration = Duration::from_secs(120);
/// QEMU's migration completes within this time or is cancelled (QEMU's
/// pre-copy has no round limit: it would iterate forever).
const QEMU_MIGRATE_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Preset {
    /// memtouch, 64 MiB working set, fixed and busy rate; every mode; 1 run.
    Quick,
    /// WWS sweep 8..256 MiB (fixed and busy), quicksort, idle, alloc-free;
    /// self-ballooning on and off; every mode; 3 runs.
    Full,
    /// netserve on the testbed's VM network, loaded from the client
    /// namespace (`godwit netload`: four connections, a request every
    /// millisecond on each) through the migration; every mode, and QEMU
    /// with the same NIC setup; 3 runs. Needs the testbed (root).
    Net,
    /// Applications in the Debian guest (2 vCPUs, 512 MiB, shared disk,
    /// NIC on the VM network): redis under redis-benchmark (`kv`), nginx
    /// under wrk (`web`), iperf3 both ways (`stream`), a C build
    /// (`build`); every mode and post-copy strategy, self-ballooning on and
    /// off for pre-copy and post-copy dual; 1 run. Needs the testbed
    /// (root), wrk, redis-tools, iperf3 ([`crate::apps`]).
    Apps,
    /// The apps preset's quick subset: post-copy dual on every application
    /// (and the unmigrated build); 1 run.
    AppsQuick,
}

/// Migrate the same guest with every mode and pre-paging strategy, over the
/// testbed; writes a table, raw JSON, plots and console logs.
#[derive(clap::Args)]
pub struct Args {
    /// Which matrix to run.
    #[arg(long, value_enum, default_value_t = Preset::Quick)]
    preset: Preset,
    /// Folder for results.json, results.md, plots and logs.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Runs per cell (default: 1 for quick, 3 for full).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    runs: Option<u32>,
    /// Migrate over 127.0.0.1 with max-bandwidth set to the link rate,
    /// instead of the testbed (the default when not root).
    #[arg(long)]
    loopback: bool,
    #[command(flatten)]
    link: testbed::LinkArgs,
    /// Guest RAM: bytes or with a K/M/G suffix.
    #[arg(long, default_value = "512M", value_parser = godwit_vmm::size::parse_size)]
    mem: u64,
    /// vCPUs of the guest (Godwit `--cpus`, QEMU `-smp`).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=8))]
    cpus: u32,
    /// Guest heartbeat period, ms: the resolution of the guest-observed
    /// downtime.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    hb_ms: u32,
    /// Seconds the guest runs after READY before the migration.
    #[arg(long, default_value_t = 2)]
    warmup_s: u32,
    /// Seconds the destination runs after the migration.
    #[arg(long, default_value_t = 2)]
    after_s: u32,
    /// Run only cells whose id contains every comma-separated word
    /// (e.g. "postcopy,wws64"); a word can be alternatives ("kv-|web-")
    /// or a negation ("!noballoon"); see --list.
    #[arg(long)]
    only: Option<String>,
    /// Print the cell ids and exit.
    #[arg(long)]
    list: bool,
    /// Stop at the first failed run.
    #[arg(long)]
    fail_fast: bool,
    /// On the testbed, cap the migration at this percentage of the link
    /// rate (max-bandwidth; the engine paces post-copy's push with it so that
    /// demand replies do not queue behind pushed pages in the tbf queue);
    /// 0: no cap. On loopback the cap is the link rate itself.
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u32).range(0..=100))]
    pace_pct: u32,
    /// Migrate over mutual TLS (identities made with `godwit tls-gen`)
    /// instead of plain TCP.
    #[arg(long)]
    tls: bool,
    /// Leave out the QEMU cells.
    #[arg(long)]
    no_qemu: bool,
    /// Godwit's post-copy and hybrid cells: protect the VM with failover
    /// (checkpoints back to the source), this timeout in ms.
    #[arg(long, value_name = "MS")]
    failover: Option<u64>,
    /// With --failover: ms between the destination's checkpoints.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    checkpoint_ms: u64,
    /// The QEMU executable of the QEMU cells.
    #[arg(long, default_value = "qemu-system-riscv64")]
    qemu: PathBuf,
    /// Apps preset: MiB of values loaded into redis before the kv cells.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=1024))]
    kv_mib: u32,
}

pub fn run(args: Args) -> Result<i32> {
    if matches!(args.preset, Preset::Apps | Preset::AppsQuick) {
        return crate::apps::run(&crate::apps::Options {
            quick: args.preset == Preset::AppsQuick,
            out: args.out.clone(),
            runs: args.runs.unwrap_or(1),
            link: args.link.config()?,
            pace_pct: args.pace_pct,
            mem: args.mem,
            cpus: args.cpus,
            only: args.only.clone(),
            list: args.list,
            fail_fast: args.fail_fast,
            kv_mib: args.kv_mib,
            qemu: (!args.no_qemu).then(|| args.qemu.clone()),
        });
    }
    let mut all = matrix(args.preset);
    if args.no_qemu {
        all.retain(|c| c.vmm == Vmm::Godwit);
    }
    let mut cells = select(all, args.only.as_deref());
    if cells.is_empty() {
        bail!(
            "--only {:?} matches no cell (see `godwit bench --preset {} --list`)",
            args.only.as_deref().unwrap_or(""),
            preset_name(args.preset)
        );
    }
    if args.list {
        for c in &cells {
            println!("{}", c.id());
        }
        return Ok(0);
    }
    testbed::catch_interrupts();
    let need_qemu = cells.iter().any(|c| c.vmm.is_qemu());
    let bench = Bench::new(&args, need_qemu)?;
    if need_qemu && bench.qemu.is_none() {
        let n = cells.iter().filter(|c| c.vmm.is_qemu()).count();
        eprintln!(
            "bench: QEMU is not available: {}; skipping its {n} cell(s)",
            bench.qemu_missing.as_deref().unwrap_or("?")
        );
        cells.retain(|c| !c.vmm.is_qemu());
        if cells.is_empty() {
            println!("bench: nothing left to run");
            return Ok(0);
        }
    }
    let runs = args.runs.unwrap_or(match args.preset {
        Preset::Quick => 1,
        Preset::Full | Preset::Net => 3,
        Preset::Apps | Preset::AppsQuick => 1,
    });
    eprintln!(
        "bench: preset {}, {} cell(s) × {runs} run(s); guest {} MiB, {} vCPU(s), heartbeat {} ms, warm-up {} s, after-run {} s",
        preset_name(args.preset),
        cells.len(),
        args.mem >> 20,
        args.cpus,
        args.hb_ms,
        args.warmup_s,
        args.after_s
    );
    eprintln!("bench: network: {}", bench.describe_net());
    if let Some(q) = bench
        .qemu
        .as_ref()
        .filter(|_| cells.iter().any(|c| c.vmm.is_qemu()))
    {
        eprintln!("bench: QEMU: {} ({})", q.version, q.exe.display());
    }
    eprintln!("bench: results in {}", args.out.display());

    let mut records: Vec<RunRecord> = Vec::new();
    let total = cells.len() * runs as usize;
    let started = Instant::now();
    'runs: for run in 1..=runs {
        for cell in &cells {
            if testbed::interrupted() {
                break 'runs;
            }
            let done = records.len();
            eprintln!(
                "bench: [{:>3}/{total}] {} run {run}/{runs}{}",
                done + 1,
                cell.id(),
                eta(started, done, total)
            );
            let record = bench.run_cell(cell, run);
            if testbed::interrupted() {
                eprintln!("bench:           interrupted; this run is not recorded");
                break 'runs;
            }
            eprintln!("bench:           {}", record.one_line());
            // A QEMU failure is a finding about QEMU, not a bench failure.
            let failed = !record.ok && !cell.vmm.is_qemu();
            records.push(record);
            bench.write_outputs(&cells, runs, &records)?;
            if failed && args.fail_fast {
                eprintln!("bench: stopping at the first failure (--fail-fast)");
                break 'runs;
            }
        }
    }
    let plots = bench.write_plots(&cells, &records)?;
    let is_qemu = |r: &RunRecord| cells.iter().any(|c| c.vmm.is_qemu() && c.id() == r.cell);
    let failed: Vec<&RunRecord> = records.iter().filter(|r| !r.ok && !is_qemu(r)).collect();
    let qemu_failed: Vec<&RunRecord> = records.iter().filter(|r| !r.ok && is_qemu(r)).collect();
    println!();
    println!(
        "bench: {} of {} run(s) done in {}; {} failed{}",
        records.len(),
        total,
        show_duration(started.elapsed()),
        failed.len(),
        if qemu_failed.is_empty() {
            String::new()
        } else {
            format!(" (and {} QEMU run(s))", qemu_failed.len())
        }
    );
    println!(
        "bench: table {}, raw {}{}",
        args.out.join("results.md").display(),
        args.out.join("results.json").display(),
        if plots.is_empty() {
            String::new()
        } else {
            format!(", {} plot(s)", plots.len())
        }
    );
    for r in &failed {
        println!(
            "bench: FAILED {} run {}: {}",
            r.cell,
            r.run,
            r.failure_text()
        );
    }
    for r in &qemu_failed {
        println!(
            "bench: QEMU FAILED {} run {}: {}",
            r.cell,
            r.run,
            r.failure_text()
        );
    }
    if testbed::interrupted() {
        eprintln!(
            "bench: interrupted; results so far are in {}",
            args.out.display()
        );
        return Ok(130);
    }
    Ok(if failed.is_empty() { 0 } else { 1 })
}

fn preset_name(p: Preset) -> &'static str {
    match p {
        Preset::Quick => "quick",
        Preset::Full => "full",
        Preset::Net => "net",
        Preset::Apps => "apps",
        Preset::AppsQuick => "apps-quick",
    }
}

fn eta(started: Instant, done: usize, total: usize) -> String {
    if done == 0 {
        return String::new();
    }
    let per = started.elapsed().as_secs_f64() / done as f64;
    format!(
        "  (elapsed {}, ~{} left)",
        show_duration(started.elapsed()),
        show_duration(Duration::from_secs_f64(per * (total - done) as f64))
    )
}

fn show_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

// ---------------------------------------------------------------------------
// The matrix

/// A guest workload and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Workload {
    /// Dirties a working set of `wws_mb` at `pages_per_s` (0: as fast as it can).
    Memtouch {
        wws_mb: u64,
        pages_per_s: u64,
    },
    Quicksort,
    Idle,
    AllocFree,
    /// TCP requests from the client namespace (needs the testbed).
    Netserve,
}

/// The guest's address on the testbed's VM network (the kernel's `ip=`).
const NETSERVE_PARAMS: &str = "ip=10.77.1.10::10.77.1.1:255.255.255.0::eth0:off";

const QUICKSORT_PARAMS: &str = "procs=2 array_mb=4";
const QUICKSORT_WWS_MB: u64 = 8;
const ALLOCFREE_PARAMS: &str = "alloc_mb=128 hold_ms=1000 free_ms=1000";
const ALLOCFREE_WWS_MB: u64 = 128;

impl Workload {
    /// The guest's name for it (`godwit.workload=`).
    fn name(&self) -> &'static str {
        match self {
            Workload::Memtouch { .. } => "memtouch",
            Workload::Quicksort => "quicksort",
            Workload::Idle => "idle",
            Workload::AllocFree => "alloc-free",
            Workload::Netserve => "netserve",
        }
    }

    /// Kernel command line words, without `hb_ms`.
    fn params(&self) -> String {
        match self {
            Workload::Memtouch {
                wws_mb,
                pages_per_s,
            } => format!("wws_mb={wws_mb} pages_per_s={pages_per_s}"),
            Workload::Quicksort => QUICKSORT_PARAMS.into(),
            Workload::Idle => String::new(),
            Workload::AllocFree => ALLOCFREE_PARAMS.into(),
            Workload::Netserve => NETSERVE_PARAMS.into(),
        }
    }

    fn id(&self) -> String {
        match self {
            Workload::Memtouch {
                wws_mb,
                pages_per_s: 0,
            } => format!("memtouch-wws{wws_mb}-busy"),
            Workload::Memtouch {
                wws_mb,
                pages_per_s,
            } => format!("memtouch-wws{wws_mb}-pps{pages_per_s}"),
            w => w.name().into(),
        }
    }

    /// Memory the workload keeps writing, MiB.
    fn wws_mb(&self) -> Option<u64> {
        match self {
            Workload::Memtouch { wws_mb, .. } => Some(*wws_mb),
            Workload::Quicksort => Some(QUICKSORT_WWS_MB),
            Workload::Idle | Workload::Netserve => None,
            Workload::AllocFree => Some(ALLOCFREE_WWS_MB),
        }
    }

    /// The heartbeat field with the workload's throughput.
    fn rate_key(&self) -> Option<&'static str> {
        match self {
            Workload::Memtouch { .. } | Workload::AllocFree => Some("pages_per_s"),
            Workload::Quicksort => Some("elems_per_s"),
            Workload::Netserve => Some("requests_per_s"),
            Workload::Idle => None,
        }
    }

    /// The heartbeat counter that is at least 1 once the workload has
    /// reached its steady state (memtouch: a full pass over the working set,
    /// whose first touches fault fresh pages in; quicksort: a first sort).
    fn steady_counter(&self) -> Option<&'static str> {
        match self {
            Workload::Memtouch { .. } => Some("passes"),
            Workload::Quicksort => Some("sorts"),
            Workload::Idle | Workload::AllocFree | Workload::Netserve => None,
        }
    }

    /// The rate asked for, if fixed.
    fn target(&self) -> String {
        match self {
            Workload::Memtouch { pages_per_s: 0, .. } => "busy".into(),
            Workload::Memtouch { pages_per_s, .. } => pages_per_s.to_string(),
            _ => "-".into(),
        }
    }
}

/// A migration mode and, for post-copy, its pre-paging strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Strategy {
    mode: &'static str,
    prepaging: Option<&'static str>,
    /// Pre-copy with auto-converge (the vCPU throttle).
    auto_converge: bool,
    /// Pre-copy's bulk transfer compressed: Godwit's `--compress`; QEMU's
    /// multifd ([`QEMU_MULTIFD_CHANNELS`] channels) with this
    /// `multifd-compression`.
    compress: Option<&'static str>,
    /// Godwit's bulk channels (`--channels`; QEMU's compressed cells use
    /// [`QEMU_MULTIFD_CHANNELS`]).
    channels: u32,
}

/// QEMU's multifd channels in its compressed pre-copy: one per host core.
pub(crate) const QEMU_MULTIFD_CHANNELS: u32 = 2;

const PRECOPY: Strategy = Strategy::plain("precopy", None);
const PRECOPY_AC: Strategy = Strategy {
    auto_converge: true,
    ..PRECOPY
};
const PRECOPY_ZSTD_AC: Strategy = Strategy {
    compress: Some("zstd"),
    ..PRECOPY_AC
};
/// As QEMU's compressed cells: zstd and auto-converge over as many
/// channels.
const PRECOPY_ZSTD_AC_MFD: Strategy = Strategy {
    channels: QEMU_MULTIFD_CHANNELS,
    ..PRECOPY_ZSTD_AC
};

/// Every strategy the paper compares, in table order.
const STRATEGIES: [Strategy; 10] = [
    Strategy::plain("stop-and-copy", None),
    PRECOPY,
    PRECOPY_AC,
    PRECOPY_ZSTD_AC,
    PRECOPY_ZSTD_AC_MFD,
    Strategy::plain("postcopy", Some("none")),
    Strategy::plain("postcopy", Some("forward")),
    Strategy::plain("postcopy", Some("dual")),
    Strategy::plain("postcopy", Some("multi-pivot")),
    Strategy::plain("hybrid", None),
];

/// The modes QEMU runs: pre-copy (as shipped, with auto-converge, and with
/// multifd + zstd + auto-converge), post-copy switching at once (as
/// Godwit's post-copy), and post-copy after the first pass (QEMU's usual
/// recipe, Godwit's hybrid); see [`Switch::for_mode`].
const QEMU_STRATEGIES: [Strategy; 5] = [
    PRECOPY,
    PRECOPY_AC,
    PRECOPY_ZSTD_AC,
    Strategy::plain("postcopy", None),
    Strategy::plain("hybrid", None),
];

/// The VMM that migrates a cell's guest (the memtouch and apps presets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Vmm {
    Godwit,
    /// QEMU as shipped.
    Qemu,
    /// QEMU with the guest's timer re-armed on the destination as soon as
    /// it runs (works around a QEMU bug, see [`crate::qemu`]).
    QemuRearm,
}

impl Vmm {
    /// The table's VMM column.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Vmm::Godwit => "godwit",
            Vmm::Qemu => "qemu",
            Vmm::QemuRearm => "qemu+rearm",
        }
    }

    /// Before the strategy in cell ids (none for Godwit: its ids predate QEMU's).
    pub(crate) fn id_prefix(self) -> &'static str {
        match self {
            Vmm::Godwit => "",
            Vmm::Qemu => "qemu-",
            Vmm::QemuRearm => "qemu-rearm-",
        }
    }

    fn is_qemu(self) -> bool {
        self != Vmm::Godwit
    }

    /// Every VMM with its strategies, in table and plot order.
    fn all() -> [(Vmm, &'static [Strategy]); 3] {
        [
            (Vmm::Godwit, &STRATEGIES),
            (Vmm::QemuRearm, &QEMU_STRATEGIES),
            (Vmm::Qemu, &QEMU_STRATEGIES),
        ]
    }
}

impl Strategy {
    /// A mode (and pre-paging strategy) without auto-converge or
    /// compression.
    const fn plain(mode: &'static str, prepaging: Option<&'static str>) -> Strategy {
        Strategy {
            mode,
            prepaging,
            auto_converge: false,
            compress: None,
            channels: 1,
        }
    }

    /// The cell id's strategy part.
    fn id(&self) -> String {
        let mut id = match self.prepaging {
            Some(p) => format!("{}-{p}", self.mode),
            None => self.mode.into(),
        };
        if let Some(c) = self.compress {
            id += "-";
            id += c;
        }
        if self.auto_converge {
            id += "-ac";
        }
        if self.channels > 1 {
            id += &format!("-mfd{}", self.channels);
        }
        id
    }
}

/// One configuration to migrate.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Cell {
    workload: Workload,
    /// Self-ballooning (the virtio-balloon with free page reporting).
    balloon: bool,
    vmm: Vmm,
    strategy: Strategy,
}

impl Cell {
    fn id(&self) -> String {
        format!(
            "{}-{}-{}{}",
            self.workload.id(),
            if self.balloon { "balloon" } else { "noballoon" },
            self.vmm.id_prefix(),
            self.strategy.id()
        )
    }

    /// The table's strategy column when no report says better.
    fn strategy_label(&self) -> String {
        let st = &self.strategy;
        let mut parts: Vec<String> = Vec::new();
        if self.vmm.is_qemu() {
            parts.push(Switch::for_mode(st.mode).label().into());
            if st.compress.is_some() {
                parts.push(format!("multifd×{QEMU_MULTIFD_CHANNELS}"));
            }
        } else if let Some(p) = st.prepaging {
            parts.push(p.into());
        } else if st.channels > 1 {
            parts.push(format!("multifd×{}", st.channels));
        }
        if let Some(c) = st.compress {
            parts.push(c.into());
        }
        if st.auto_converge {
            parts.push("auto-converge".into());
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join("+")
        }
    }

    /// The series of the plots this cell belongs to.
    fn series(&self) -> String {
        format!("{}{}", self.vmm.id_prefix(), self.strategy.id())
    }
}

fn matrix(preset: Preset) -> Vec<Cell> {
    let (workloads, balloons): (Vec<Workload>, &[bool]) = match preset {
        Preset::Quick => (
            [FIXED_PAGES_PER_S, 0]
                .into_iter()
                .map(|pages_per_s| Workload::Memtouch {
                    wws_mb: 64,
                    pages_per_s,
                })
                .collect(),
            &[true],
        ),
        Preset::Full => {
            let mut w = Vec::new();
            for pages_per_s in [FIXED_PAGES_PER_S, 0] {
                for wws_mb in [8, 32, 64, 128, 256] {
                    w.push(Workload::Memtouch {
                        wws_mb,
                        pages_per_s,
                    });
                }
            }
            w.extend([Workload::Quicksort, Workload::Idle, Workload::AllocFree]);
            (w, &[true, false])
        }
        Preset::Net => (vec![Workload::Netserve], &[true]),
        // Its own matrix: crate::apps.
        Preset::Apps | Preset::AppsQuick => (Vec::new(), &[]),
    };
    let mut cells = Vec::new();
    for &balloon in balloons {
        for workload in &workloads {
            // QEMU: memtouch at the fixed rate (which both VMMs sustain), balloon on.
            let qemu = balloon
                && (matches!(workload, Workload::Memtouch { pages_per_s, .. } if *pages_per_s == FIXED_PAGES_PER_S)
                    || *workload == Workload::Netserve);
            for (vmm, strategies) in Vmm::all() {
                if vmm.is_qemu() && !qemu {
                    continue;
                }
                for &strategy in strategies {
                    cells.push(Cell {
                        workload: workload.clone(),
                        balloon,
                        vmm,
                        strategy,
                    });
                }
            }
        }
    }
    cells
}

/// The cells whose id contains every comma-separated word of `only`.
fn select(cells: Vec<Cell>, only: Option<&str>) -> Vec<Cell> {
    select_by_id(cells, only, Cell::id)
}

/// The items whose `id` contains every comma-separated word of `only`
/// (`--only` of every preset); all of them without `only`. A word may be
/// alternatives (`precopy|stop`: one of them) or start with `!` (`!qemu`:
/// not this).
pub(crate) fn select_by_id<T>(
    items: Vec<T>,
    only: Option<&str>,
    id: impl Fn(&T) -> String,
) -> Vec<T> {
    let Some(only) = only else { return items };
    let words: Vec<&str> = only
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect();
    items
        .into_iter()
        .filter(|c| {
            let id = id(c);
            words.iter().all(|w| match w.strip_prefix('!') {
                Some(not) => !id.contains(not),
                None => w.split('|').any(|alt| id.contains(alt)),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Where the migrations run

/// The network between source and destination.
enum Net {
    Testbed(LinkConfig),
    /// 127.0.0.1, with the migration capped at this many bytes/s; why.
    Loopback {
        bytes_per_s: u64,
        why: &'static str,
    },
}

impl Net {
    fn bytes_per_s(&self) -> u64 {
        match self {
            Net::Testbed(link) => link.bytes_per_s(),
            Net::Loopback { bytes_per_s, .. } => *bytes_per_s,
        }
    }

    fn describe(&self) -> String {
        match self {
            Net::Testbed(link) => format!(
                "testbed {} {} <-> {} {}, {link}",
                testbed::SRC_NS,
                testbed::SRC_ADDR,
                testbed::DST_NS,
                testbed::DST_ADDR
            ),
            Net::Loopback { bytes_per_s, why } => format!(
                "LOOPBACK ({why}) standing in for a {} link",
                testbed::show_rate(bytes_per_s * 8)
            ),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Net::Testbed(link) => json!({"kind": "testbed", "link": link.to_json()}),
            Net::Loopback { bytes_per_s, why } => {
                json!({"kind": "loopback", "why": why, "max_bandwidth_bytes_per_s": bytes_per_s})
            }
        }
    }
}

/// What every run shares.
struct Bench {
    exe: PathBuf,
    net: Net,
    mem: u64,
    cpus: u32,
    hb_ms: u32,
    warmup: Duration,
    after: Duration,
    preset: Preset,
    out: PathBuf,
    logs: PathBuf,
    tmp: TempDir,
    started_unix_s: u64,
    /// `max-bandwidth` given to the source before each migration, B/s.
    max_bandwidth: Option<u64>,
    /// TLS identity folders (source, destination), or plain TCP.
    tls: Option<(PathBuf, PathBuf)>,
    /// Failover's timeout and checkpoint interval for post-copy, ms.
    failover: Option<(u64, u64)>,
    /// The guest image (QEMU is given it explicitly).
    kernel: PathBuf,
    initrd: PathBuf,
    /// QEMU for the QEMU cells, or why there is none (None, None: no
    /// QEMU cell was asked for).
    qemu: Option<Qemu>,
    qemu_missing: Option<String>,
}

impl Bench {
    fn new(args: &Args, need_qemu: bool) -> Result<Bench> {
        let link = args.link.config()?;
        let net = if args.loopback {
            Net::Loopback {
                bytes_per_s: link.bytes_per_s(),
                why: "--loopback",
            }
        } else if !testbed::is_root() {
            Net::Loopback {
                bytes_per_s: link.bytes_per_s(),
                why: "not root, so no testbed",
            }
        } else {
            Net::Testbed(link)
        };
        let max_bandwidth = match &net {
            Net::Loopback { bytes_per_s, .. } => Some(*bytes_per_s),
            Net::Testbed(link) => {
                (args.pace_pct > 0).then(|| link.bytes_per_s() * u64::from(args.pace_pct) / 100)
            }
        };
        let (kernel, initrd) = godwit_vmm::guest::resolve(None, None)
            .context("the guest image is missing: build it with guest/build.sh")?;
        let initrd = initrd.context("the guest image has no initramfs")?;
        let (qemu, qemu_missing) = if need_qemu {
            match Qemu::find(&args.qemu) {
                Ok(q) => (Some(q), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            }
        } else {
            (None, None)
        };
        let logs = args.out.join("logs");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        let exe = std::env::current_exe().context("cannot find the godwit executable")?;
        let tmp = TempDir::new()?;
        let tls = if args.tls {
            let (a, b) = (tmp.0.join("tls-src"), tmp.0.join("tls-dst"));
            for extra in [vec![], vec!["--ca".to_string(), a.display().to_string()]] {
                let dir = if extra.is_empty() { &a } else { &b };
                let st = std::process::Command::new(&exe)
                    .arg("tls-gen")
                    .arg(dir)
                    .args(&extra)
                    .stdout(std::process::Stdio::null())
                    .status()
                    .context("cannot run godwit tls-gen")?;
                if !st.success() {
                    bail!("godwit tls-gen {} failed", dir.display());
                }
            }
            Some((a, b))
        } else {
            None
        };
        Ok(Bench {
            exe,
            net,
            mem: args.mem,
            cpus: args.cpus,
            hb_ms: args.hb_ms,
            warmup: Duration::from_secs(args.warmup_s.into()),
            after: Duration::from_secs(args.after_s.into()),
            preset: args.preset,
            out: args.out.clone(),
            logs,
            tmp,
            started_unix_s: unix_time_s(),
            max_bandwidth,
            tls,
            failover: args.failover.map(|t| (t, args.checkpoint_ms)),
            kernel,
            initrd,
            qemu,
            qemu_missing,
        })
    }

    /// One run of one cell; never fails: a failure is in the record.
    fn run_cell(&self, cell: &Cell, run: u32) -> RunRecord {
        let dir = self.tmp.0.join(format!("run{run}-{}", cell.id()));
        let mut r = CellRun {
            consoles: Vec::new(),
            testbed: None,
            bench: self,
            cell,
            dir,
            epoch: Instant::now(),
            migrated: false,
            client: None,
        };
        let result = std::fs::create_dir_all(&r.dir)
            .with_context(|| format!("cannot create {}", r.dir.display()))
            .and_then(|()| match cell.vmm {
                Vmm::Godwit => r.measure(),
                Vmm::Qemu | Vmm::QemuRearm => r.measure_qemu(),
            });
        // Stop everything (children first, then the testbed) before the logs.
        if let Some((mut c, _)) = r.client.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for c in &mut r.consoles {
            c.process.kill();
        }
        for c in &r.consoles {
            c.drain(Duration::from_millis(500));
        }
        let logs = r.write_logs(run);
        let testbed_down = r.testbed.take().map(Testbed::down);
        let _ = std::fs::remove_dir_all(&r.dir);
        let mut record = RunRecord {
            cell: cell.id(),
            run,
            ok: false,
            failure: None,
            report: None,
            host: None,
            logs,
        };
        match result {
            Ok((report, host)) => {
                record.failure = host.integrity_failure().map(|why| {
                    if cell.vmm == Vmm::Qemu && host.dst_stalled() {
                        format!(
                            "{why} (QEMU as shipped: QEMU 7.2 migrates the guest's timer compare value but does not \
                             re-arm the timer on the destination, so a sleeping guest never wakes; if the qemu+rearm \
                             row passes, that is the cause here)"
                        )
                    } else {
                        why
                    }
                });
                record.ok = record.failure.is_none();
                record.report = Some(report);
                record.host = Some(host);
            }
            Err(e) => record.failure = Some(format!("{e:#}")),
        }
        if let Some(Err(e)) = testbed_down {
            eprintln!("bench: warning: testbed teardown failed: {e:#}");
        }
        record
    }

    fn write_outputs(&self, cells: &[Cell], runs: u32, records: &[RunRecord]) -> Result<()> {
        let doc = json!({
            "godwit_version": env!("CARGO_PKG_VERSION"),
            "preset": preset_name(self.preset),
            "runs_per_cell": runs,
            "network": self.net.to_json(),
            "max_bandwidth_bytes_per_s": self.max_bandwidth,
            "qemu": match (&self.qemu, &self.qemu_missing) {
                (Some(q), _) => json!({ "version": q.version, "exe": q.exe, "downtime_limit_ms": qemu::DOWNTIME_LIMIT_MS }),
                (None, Some(why)) => json!({ "missing": why }),
                (None, None) => Value::Null,
            },
            "link_bytes_per_s": self.net.bytes_per_s(),
            "mem_bytes": self.mem,
            "hb_ms": self.hb_ms,
            "warmup_s": self.warmup.as_secs(),
            "after_s": self.after.as_secs(),
            "started_unix_s": self.started_unix_s,
            "host": host_info(),
            "cells": cells.iter().map(|c| json!({
                "id": c.id(),
                "workload": c.workload.name(),
                "params": c.workload.params(),
                "wws_mb": c.workload.wws_mb(),
                "balloon": c.balloon,
                "vmm": c.vmm.name(),
                "mode": c.strategy.mode,
                "prepaging": c.strategy.prepaging,
            })).collect::<Vec<_>>(),
            "runs": records,
        });
        let path = self.out.join("results.json");
        std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        let path = self.out.join("results.md");
        std::fs::write(&path, self.table(cells, runs, records))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

impl Bench {
    fn describe_net(&self) -> String {
        let cap = match self.max_bandwidth {
            Some(b) => format!(
                "migration max-bandwidth {b} B/s ({})",
                testbed::show_rate(b * 8)
            ),
            None => "no max-bandwidth".into(),
        };
        format!("{}; {cap}", self.net.describe())
    }
}

/// A temporary folder, removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let d = std::env::temp_dir().join(format!("godwit-bench-{}", std::process::id()));
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

// ---------------------------------------------------------------------------
// One run of one cell

/// The processes of one run. Fields drop in order: the consoles (killing
/// the VMMs) before the testbed they run in.
struct CellRun<'a> {
    consoles: Vec<Console>,
    testbed: Option<Testbed>,
    bench: &'a Bench,
    cell: &'a Cell,
    /// Control sockets and the report, removed after the run.
    dir: PathBuf,
    /// Time zero of every console timestamp.
    epoch: Instant,
    /// The migration is over: the source VMM may end.
    migrated: bool,
    /// netserve cells: the client (`godwit netload` in the client
    /// namespace) and where it writes its report.
    client: Option<(std::process::Child, PathBuf)>,
}

/// Index of each console in `CellRun::consoles`.
const DST: usize = 0;
const SRC: usize = 1;
const MIGRATE: usize = 2;

impl CellRun<'_> {
    /// A `godwit` command on `side`'s host.
    fn godwit(&self, side: Side) -> Command {
        self.program(side, &self.bench.exe)
    }

    fn ms(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * 1e3
    }

    /// Brings the testbed up (if used); the destination's `HOST:PORT`.
    fn network(&mut self) -> Result<(String, u16)> {
        if let Net::Testbed(link) = &self.bench.net {
            self.testbed = Some(Testbed::up(link)?);
        }
        let port = match &self.bench.net {
            Net::Testbed(_) => MIGRATION_PORT,
            Net::Loopback { .. } => free_port()?,
        };
        let host = match &self.bench.net {
            Net::Testbed(_) => testbed::DST_ADDR,
            Net::Loopback { .. } => "127.0.0.1",
        };
        Ok((format!("{host}:{port}"), port))
    }

    fn measure(&mut self) -> Result<(Value, HostFigures)> {
        let b = self.bench;
        let cell = self.cell;
        let (addr, port) = self.network()?;
        let src_sock = self.dir.join("src.sock");
        let dst_sock = self.dir.join("dst.sock");
        let report_path = self.dir.join("report.json");
        self.epoch = Instant::now();

        // The destination first, so that it listens by the time the source is ready.
        let mut dst = self.godwit(Side::Dst);
        dst.args(["receive", "--listen", &addr, "--control"])
            .arg(&dst_sock);
        match &b.tls {
            Some((_, d)) => dst.arg("--tls-dir").arg(d),
            None => dst.arg("--tls-plain"),
        };
        let nic = cell.workload == Workload::Netserve;
        if nic {
            dst.args(["--net", &format!("tap={}", testbed::TAP)]);
        }
        self.consoles
            .push(Console::spawn("destination", dst, self.epoch)?);
        let mut src = self.godwit(Side::Src);
        src.args(["run", "--control"])
            .arg(&src_sock)
            .args(["--mem", &b.mem.to_string()])
            .args(["--cpus", &b.cpus.to_string()])
            .args(["--workload", cell.workload.name()])
            .arg("--append")
            .arg(format!("{} hb_ms={}", cell.workload.params(), b.hb_ms).trim());
        if !cell.balloon {
            src.arg("--no-balloon");
        }
        if nic {
            src.args(["--net", &format!("tap={}", testbed::TAP)]);
        }
        self.consoles
            .push(Console::spawn("source", src, self.epoch)?);

        let ready_ms = self.consoles[SRC].wait_for("GODWIT READY", BOOT_TIMEOUT)?;
        self.wait_listening(port)?;
        self.warm_up()?;
        if self.cell.balloon && self.cell.workload.steady_counter().is_some() {
            self.wait_free_page_reporting(&src_sock)?;
        }
        if let Some(bytes_per_s) = b.max_bandwidth {
            control(
                &src_sock,
                "migrate-set-parameters",
                json!({ "max-bandwidth": bytes_per_s }),
            )
            .context("cannot set the migration's max-bandwidth")?;
        }
        self.start_client()?;

        let start_ms = self.ms();
        let mut migrate = self.godwit(Side::Src);
        migrate.args(["migrate", "--control"]).arg(&src_sock).args([
            "--to",
            &addr,
            "--mode",
            cell.strategy.mode,
        ]);
        if let Some(p) = cell.strategy.prepaging {
            migrate.args(["--prepaging", p]);
        }
        if let Some(c) = cell.strategy.compress {
            migrate.args(["--compress", c]);
        }
        if cell.strategy.channels > 1 {
            migrate.args(["--channels", &cell.strategy.channels.to_string()]);
        }
        if cell.strategy.auto_converge {
            migrate.arg("--auto-converge");
        }
        if let (Some((timeout, interval)), "postcopy" | "hybrid") = (b.failover, cell.strategy.mode)
        {
            migrate
                .args(["--failover-timeout", &timeout.to_string()])
                .args(["--checkpoint-interval", &interval.to_string()]);
        }
        match &b.tls {
            Some((s, _)) => migrate.arg("--tls-dir").arg(s),
            None => migrate.arg("--tls-plain"),
        };
        migrate.arg("--json").arg(&report_path);
        self.consoles
            .push(Console::spawn("migrate", migrate, self.epoch)?);
        let status = self.consoles[MIGRATE]
            .process
            .wait_timeout(MIGRATE_TIMEOUT)?;
        let end_ms = self.ms();
        self.migrated = true;
        let m = &self.consoles[MIGRATE];
        match status {
            None => bail!(
                "godwit migrate did not finish within {} s; killed it{}",
                MIGRATE_TIMEOUT.as_secs(),
                m.tail()
            ),
            Some(s) if !s.success() => bail!("godwit migrate failed ({s}){}", m.tail()),
            Some(_) => {}
        }

        self.hold(b.after, "the after-run")?;
        let after_ms = self.ms();
        let client = self.stop_client()?;
        // The reply may not come: the VMM exits while answering.
        let asked = control(&dst_sock, "quit", Value::Null);
        let dst_exit = self.wait_exit(DST, asked);
        let src_exit = self.wait_exit(SRC, Ok(Value::Null));
        for c in &self.consoles {
            c.drain(Duration::from_secs(2));
        }

        let text = std::fs::read_to_string(&report_path).with_context(|| {
            format!(
                "godwit migrate succeeded but wrote no report to {}",
                report_path.display()
            )
        })?;
        let mut report: Value = serde_json::from_str(&text)
            .with_context(|| format!("the migration report is not JSON: {text}"))?;
        if let Some(c) = client {
            report["client"] = c;
        }
        let mut host = self.host_figures(ready_ms, start_ms, end_ms, after_ms);
        host.src_exit = src_exit;
        host.dst_exit = dst_exit;
        host.physical_limit_ms = report["nonfree_pages"]
            .as_f64()
            .map(|p| p * PAGE_BYTES / b.net.bytes_per_s() as f64 * 1e3);
        Ok((report, host))
    }

    /// What the host saw of the guest, from both consoles.
    fn host_figures(
        &self,
        ready_ms: f64,
        start_ms: f64,
        end_ms: f64,
        after_ms: f64,
    ) -> HostFigures {
        let window = Window {
            ready_ms,
            start_ms,
            end_ms,
            after_ms,
            rate_window_ms: RATE_WINDOW_MS.min(self.bench.warmup.as_secs_f64() * 1e3),
        };
        HostFigures::new(
            &self.consoles[SRC].lines(),
            &self.consoles[DST].lines(),
            &window,
            self.bench.hb_ms.into(),
            self.cell.workload.rate_key(),
        )
    }

    /// The QEMU run of a cell: the same steps as [`CellRun::measure`], with
    /// QEMU on both sides driven over QMP ([`crate::qemu`]).
    fn measure_qemu(&mut self) -> Result<(Value, HostFigures)> {
        let b = self.bench;
        let cell = self.cell;
        let qemu = b.qemu.as_ref().context("QEMU is not available")?;
        let (addr, port) = self.network()?;
        let uri = format!("tcp:{addr}");
        let src_qmp = self.dir.join("src.qmp");
        let dst_qmp = self.dir.join("dst.qmp");
        let gdb = (cell.vmm == Vmm::QemuRearm).then(|| self.dir.join("dst.gdb"));
        let append = format!("{} hb_ms={}", cell.workload.params(), b.hb_ms);
        let guest = qemu::Guest {
            kernel: &b.kernel,
            initrd: &b.initrd,
            mem_bytes: b.mem,
            cmdline: godwit_vmm::guest::cmdline(Some(cell.workload.name()), &append),
            balloon: cell.balloon,
            cpus: b.cpus,
            tap: (cell.workload == Workload::Netserve).then_some(testbed::TAP),
            bios: None,
            drive: None,
        };
        self.epoch = Instant::now();

        let mut dst = self.program(Side::Dst, &qemu.exe);
        qemu::args(&mut dst, &guest, &dst_qmp, true, gdb.as_deref())?;
        self.consoles
            .push(Console::spawn("destination", dst, self.epoch)?);
        let mut src = self.program(Side::Src, &qemu.exe);
        qemu::args(&mut src, &guest, &src_qmp, false, None)?;
        self.consoles
            .push(Console::spawn("source", src, self.epoch)?);
        let mut dst_q = self.qmp(DST, &dst_qmp)?;
        let mut src_q = self.qmp(SRC, &src_qmp)?;
        let switch = Switch::for_mode(cell.strategy.mode);
        if switch != Switch::Never {
            qemu::enable_postcopy(&mut src_q, &mut dst_q)?;
        }
        if let Some(c) = cell.strategy.compress {
            qemu::enable_multifd(&mut src_q, &mut dst_q, QEMU_MULTIFD_CHANNELS, c)?;
        }
        if cell.strategy.auto_converge {
            qemu::enable_auto_converge(&mut src_q)?;
        }
        dst_q.execute("migrate-incoming", json!({ "uri": uri }))?;

        let ready_ms = self.consoles[SRC].wait_for("GODWIT READY", BOOT_TIMEOUT)?;
        self.wait_listening(port)?;
        self.warm_up()?;
        qemu::set_parameters(&mut src_q, b.max_bandwidth)?;
        self.start_client()?;

        let start_ms = self.ms();
        let plan = qemu::Plan {
            uri: &uri,
            switch,
            rearm: gdb.as_deref(),
            timeout: QEMU_MIGRATE_TIMEOUT,
        };
        let epoch = self.epoch;
        let consoles = &mut self.consoles;
        let outcome = qemu::migrate(
            &mut src_q,
            &mut dst_q,
            &plan,
            || {
                testbed::check_interrupted()?;
                for c in consoles.iter_mut() {
                    if let Some(s) = c.process.try_wait()? {
                        bail!(
                            "the {} QEMU ended during the migration ({s}){}",
                            c.role,
                            c.tail()
                        );
                    }
                }
                Ok(())
            },
            || epoch.elapsed().as_secs_f64() * 1e3,
        )?;
        let end_ms = outcome.completed_ms;
        self.migrated = true;
        // QEMU's source stays paused after a migration: it is asked to quit.
        let asked = src_q.execute("quit", Value::Null);
        let src_exit = self.wait_exit(SRC, asked);

        self.hold(b.after, "the after-run")?;
        let after_ms = self.ms();
        let client = self.stop_client()?;
        let asked = dst_q.execute("quit", Value::Null);
        let dst_exit = self.wait_exit(DST, asked);
        for c in &self.consoles {
            c.drain(Duration::from_secs(2));
        }

        let mut report = qemu::report(&outcome, cell.strategy.mode, switch, cell.vmm.name());
        report["qemu_version"] = json!(qemu.version);
        if let Some(c) = client {
            report["client"] = c;
        }
        let since_start = |t: Option<f64>| t.map(|t| t - start_ms);
        report["host_switch_ms"] = json!(since_start(outcome.switch_ms));
        report["host_dst_running_ms"] = json!(since_start(outcome.dst_running_ms));
        report["host_rearmed_ms"] = json!(since_start(outcome.rearmed_ms));
        report["qemu_events"] = json!({ "source": src_q.events, "destination": dst_q.events });
        let mut host = self.host_figures(ready_ms, start_ms, end_ms, after_ms);
        host.src_exit = src_exit;
        host.dst_exit = dst_exit;
        Ok((report, host))
    }

    /// netserve cells: starts the client in the client namespace (four
    /// connections, a request every millisecond on each, until stopped)
    /// and lets it run a second before the migration starts.
    fn start_client(&mut self) -> Result<()> {
        if self.cell.workload != Workload::Netserve {
            return Ok(());
        }
        if self.testbed.is_none() {
            bail!("netserve cells need the testbed's VM network (run as root, without --loopback)");
        }
        let json = self.dir.join("client.json");
        let log = std::fs::File::create(self.dir.join("client.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", testbed::CLIENT_NS])
            .arg(&self.bench.exe)
            .args([
                "netload",
                "--to",
                testbed::GUEST_ADDR,
                "--duration-s",
                "0",
                "--json",
            ])
            .arg(&json)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start godwit netload in the client namespace")?;
        self.client = Some((child, json));
        self.hold(Duration::from_secs(1), "the client's first second")
    }

    /// Stops the client (SIGINT: it writes its report) and returns what it
    /// saw; a lost or wrong answer or a failed connection fails the run.
    fn stop_client(&mut self) -> Result<Option<Value>> {
        let Some((mut child, json)) = self.client.take() else {
            return Ok(None);
        };
        // SAFETY: signals our own child, which has not been reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("godwit netload did not stop within 10 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = std::fs::read_to_string(self.dir.join("client.log")).unwrap_or_default();
        let text = std::fs::read_to_string(&json)
            .with_context(|| format!("godwit netload ({status}) wrote no report: {log}"))?;
        let v: Value = serde_json::from_str(&text).context("the client's report is not JSON")?;
        let bad: u64 = ["answers_lost", "answers_wrong", "conn_failures"]
            .iter()
            .map(|k| v[*k].as_u64().unwrap_or(0))
            .sum();
        if bad > 0 || !status.success() {
            bail!("the client saw failures ({status}): {log}");
        }
        Ok(Some(json!({
            "downtime_ms": v["downtime_ms"],
            "answers_ok": v["answers_ok"],
            "answers_lost": v["answers_lost"],
            "answers_wrong": v["answers_wrong"],
            "conn_failures": v["conn_failures"],
            "rtt_ms": v["rtt_ms"],
            "answers_per_bucket": v["answers_per_bucket"],
        })))
    }

    /// A program on `side`'s host.
    fn program(&self, side: Side, exe: &Path) -> Command {
        match &self.testbed {
            Some(t) => t.command(side, exe),
            None => Command::new(exe),
        }
    }

    /// Connects to the QMP socket of the QEMU in `consoles[i]`.
    fn qmp(&mut self, i: usize, path: &Path) -> Result<Qmp> {
        let c = &mut self.consoles[i];
        let role = c.role;
        Qmp::connect(path, role, || {
            testbed::check_interrupted()?;
            if let Some(s) = c.process.try_wait()? {
                c.drain(Duration::from_millis(500));
                bail!(
                    "the {role} QEMU exited ({s}) before its QMP socket opened{}",
                    c.tail()
                );
            }
            Ok(())
        })
    }

    /// Waits until the destination listens on `port` (seen in its own
    /// network namespace, through /proc/PID/net/tcp, without connecting).
    fn wait_listening(&mut self, port: u16) -> Result<()> {
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        loop {
            let dst = &mut self.consoles[DST];
            if let Some(s) = dst.process.try_wait()? {
                bail!(
                    "godwit receive exited before the migration ({s}){}",
                    dst.tail()
                );
            }
            if listening(dst.process.child.id(), port) {
                return Ok(());
            }
            testbed::check_interrupted()?;
            if Instant::now() >= deadline {
                bail!(
                    "godwit receive does not listen on port {port} after {} s{}",
                    LISTEN_TIMEOUT.as_secs(),
                    dst.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The warm-up: at least `--warmup-s`, and until the workload is in its
    /// steady state ([`Workload::steady_counter`]), so that the achieved rate
    /// and pre-copy's first round see the steady state.
    fn warm_up(&mut self) -> Result<()> {
        self.hold(self.bench.warmup, "the warm-up")?;
        let Some(counter) = self.cell.workload.steady_counter() else {
            return Ok(());
        };
        let deadline = Instant::now() + STEADY_TIMEOUT;
        loop {
            let (src_beats, _) = beats(&self.consoles[SRC].lines());
            if src_beats
                .last()
                .is_some_and(|b| b.json[counter].as_u64().unwrap_or(0) >= 1)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the workload's heartbeat shows no {counter} >= 1 within {} s of the warm-up{}",
                    STEADY_TIMEOUT.as_secs(),
                    self.consoles[SRC].tail()
                );
            }
            self.hold(Duration::from_millis(100), "the warm-up")?;
        }
    }

    /// Polls the source's free page count until it and the reported total
    /// have not changed for [`REPORTING_QUIET`]; prints a warning (and goes
    /// on) after [`REPORTING_TIMEOUT`].
    fn wait_free_page_reporting(&mut self, sock: &Path) -> Result<()> {
        let deadline = Instant::now() + REPORTING_TIMEOUT;
        let mut last = None;
        let mut since = Instant::now();
        loop {
            let r = control(sock, "query-balloon", Value::Null)
                .context("cannot read the source's free page count")?;
            let now = (
                r["free_pages"].as_u64().unwrap_or(0),
                r["reported_pages_total"].as_u64().unwrap_or(0),
            );
            if last != Some(now) {
                last = Some(now);
                since = Instant::now();
            } else if since.elapsed() >= REPORTING_QUIET && now.0 > 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "bench: warning: free page reporting still changing {} s after the warm-up ({} free pages); migrating now",
                    REPORTING_TIMEOUT.as_secs(),
                    now.0
                );
                return Ok(());
            }
            self.hold(
                Duration::from_millis(250),
                "waiting for free page reporting",
            )?;
        }
    }

    /// Lets time pass; both VMMs must stay alive.
    fn hold(&mut self, d: Duration, what: &str) -> Result<()> {
        let deadline = Instant::now() + d;
        // After the migration the source has quit: only the destination counts.
        let watched: &[usize] = if self.migrated { &[DST] } else { &[SRC, DST] };
        while Instant::now() < deadline {
            testbed::check_interrupted()?;
            for &i in watched {
                let c = &mut self.consoles[i];
                if let Some(s) = c.process.try_wait()? {
                    bail!("the {} VMM ended during {what} ({s}){}", c.role, c.tail());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// A bounded wait for `consoles[i]` to exit after `asked` (the reply to
    /// `quit`, if one was sent); kills it after the wait. Its exit, in words.
    fn wait_exit(&mut self, i: usize, asked: Result<Value>) -> String {
        let c = &mut self.consoles[i];
        match c.process.wait_timeout(EXIT_TIMEOUT) {
            Ok(Some(s)) => show_status(s),
            _ => {
                c.process.kill();
                match asked {
                    Ok(_) => format!(
                        "did not exit within {} s (of quit, or of the migration's end); killed",
                        EXIT_TIMEOUT.as_secs()
                    ),
                    Err(e) => format!("quit failed ({e:#}); killed"),
                }
            }
        }
    }

    /// Writes each console to the log folder; returns the paths.
    fn write_logs(&self, run: u32) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        for c in &self.consoles {
            let path = self
                .bench
                .logs
                .join(format!("{}.run{run}.{}.log", self.cell.id(), c.role));
            let mut text = String::new();
            for l in c.lines() {
                let _ = writeln!(
                    text,
                    "{:10.3} {} {}",
                    l.at_ms,
                    if l.stderr { "err" } else { "out" },
                    l.text
                );
            }
            match std::fs::write(&path, text) {
                Ok(()) => paths.push(path),
                Err(e) => eprintln!("bench: warning: cannot write {}: {e}", path.display()),
            }
        }
        paths
    }
}

/// The guest reports free memory a while after it frees it (Linux waits
/// 2 s, then reports in batches). Every mode should start from a settled
/// free map, however fast the guest booted: the bench waits until the free
/// page count and the reported total have not changed for this long.
const REPORTING_QUIET: Duration = Duration::from_millis(2500);
/// ... but at most this long after the warm-up.
const REPORTING_TIMEOUT: Duration = Duration::from_secs(20);

/// One control command with a timeout.
fn control(sock: &Path, command: &str, args: Value) -> Result<Value> {
    let mut c = ControlClient::connect(sock)?;
    c.set_timeout(Some(CONTROL_TIMEOUT))?;
    c.execute(command, args)
}

/// A free TCP port on 127.0.0.1 (free when asked; the receiver takes it next).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free TCP port")?;
    Ok(l.local_addr()?.port())
}

/// Whether process `pid` (in whatever network namespace it is) has a TCP
/// socket listening on `port`.
fn listening(pid: u32, port: u16) -> bool {
    ["tcp", "tcp6"].iter().any(|f| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{f}"))
            .map(|t| tcp_table_listens(&t, port))
            .unwrap_or(false)
    })
}

/// Parses /proc/net/tcp: a row whose local port is `port` in state 0A (LISTEN).
fn tcp_table_listens(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|row| {
        let f: Vec<&str> = row.split_whitespace().collect();
        f.len() > 3
            && f[3] == "0A"
            && f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
                == Some(port)
    })
}

fn show_status(s: ExitStatus) -> String {
    match s.code() {
        Some(c) => format!("exit {c}"),
        None => s.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Consoles

/// A line of a child's output, timestamped on arrival.
#[derive(Clone, Debug)]
struct Line {
    /// Milliseconds since the run's epoch (one clock for every console).
    at_ms: f64,
    stderr: bool,
    text: String,
}

/// A child process whose stdout and stderr are read, line by line, by two
/// threads.
struct Console {
    role: &'static str,
    process: Process,
    lines: Arc<Mutex<Vec<Line>>>,
    /// Pipes still open (0: both readers are done).
    open: Arc<AtomicUsize>,
    /// Lines already searched by `wait_for`.
    scanned: usize,
}

impl Console {
    fn spawn(role: &'static str, mut cmd: Command, epoch: Instant) -> Result<Console> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut process = Process::spawn(role, cmd)?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(2));
        let out = process.child.stdout.take().context("no stdout pipe")?;
        let err = process.child.stderr.take().context("no stderr pipe")?;
        read_lines(out, false, epoch, lines.clone(), open.clone())?;
        read_lines(err, true, epoch, lines.clone(), open.clone())?;
        Ok(Console {
            role,
            process,
            lines,
            open,
            scanned: 0,
        })
    }

    fn lines(&self) -> Vec<Line> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits for a stdout line containing `marker`; returns its time (ms).
    fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let lines = self
                    .lines
                    .lock()
                    .map_err(|_| anyhow::anyhow!("reader panicked"))?;
                if let Some(l) = lines[self.scanned..]
                    .iter()
                    .find(|l| !l.stderr && l.text.contains(marker))
                {
                    return Ok(l.at_ms);
                }
                self.scanned = lines.len();
            }
            if let Some(s) = self.process.try_wait()? {
                self.drain(Duration::from_millis(500));
                bail!(
                    "the {} VMM exited ({s}) before printing {marker}{}",
                    self.role,
                    self.tail()
                );
            }
            testbed::check_interrupted()?;
            if Instant::now() >= deadline {
                bail!(
                    "the {} VMM printed no {marker} within {} s{}",
                    self.role,
                    timeout.as_secs(),
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for the readers to reach the end of both pipes.
    fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last lines of output, for error messages.
    fn tail(&self) -> String {
        let lines = self.lines();
        let last: Vec<&str> = lines
            .iter()
            .rev()
            .map(|l| l.text.as_str())
            .filter(|t| !t.trim().is_empty())
            .take(8)
            .collect();
        if last.is_empty() {
            return format!(" ({} printed nothing)", self.role);
        }
        let mut s = format!("; last output of {}:", self.role);
        for t in last.iter().rev() {
            s.push_str("\n    ");
            s.push_str(t);
        }
        s
    }
}

fn read_lines(
    pipe: impl Read + Send + 'static,
    stderr: bool,
    epoch: Instant,
    lines: Arc<Mutex<Vec<Line>>>,
    open: Arc<AtomicUsize>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("bench-console".into())
        .spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let at_ms = epoch.elapsed().as_secs_f64() * 1e3;
                let text = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                match lines.lock() {
                    Ok(mut l) => l.push(Line {
                        at_ms,
                        stderr,
                        text,
                    }),
                    Err(_) => break,
                }
            }
            open.fetch_sub(1, Ordering::SeqCst);
        })
        .context("cannot start a console reader thread")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// What the host measures

/// Moments of a run, ms since its epoch.
struct Window {
    ready_ms: f64,
    start_ms: f64,
    end_ms: f64,
    after_ms: f64,
    rate_window_ms: f64,
}

/// A `GODWIT HB {json}` line.
struct Beat {
    at_ms: f64,
    json: Value,
}

/// The heartbeats among `lines` (garbled ones, e.g. cut by a kernel
/// message, are skipped and counted).
fn beats(lines: &[Line]) -> (Vec<Beat>, usize) {
    let mut garbled = 0;
    let beats = lines
        .iter()
        .filter(|l| !l.stderr)
        .filter_map(|l| l.text.find("GODWIT HB ").map(|i| (l, &l.text[i + 10..])))
        .filter_map(|(l, j)| match serde_json::from_str(j) {
            Ok(json) => Some(Beat {
                at_ms: l.at_ms,
                json,
            }),
            Err(_) => {
                garbled += 1;
                None
            }
        })
        .collect();
    (beats, garbled)
}

/// The guest's downtime as seen from the host.
#[derive(Debug, PartialEq)]
struct GuestGap {
    /// Largest gap between consecutive heartbeats (both consoles merged)
    /// from the last one before the migration to the end of the after-run.
    max_gap_ms: f64,
    /// `max_gap_ms` minus the heartbeat period (not below 0).
    downtime_ms: f64,
    /// From the source's last heartbeat to the destination's first.
    switch_gap_ms: Option<f64>,
}

fn guest_gap(src: &[Beat], dst: &[Beat], from_ms: f64, to_ms: f64, hb_ms: f64) -> Option<GuestGap> {
    let mut t: Vec<f64> = src.iter().chain(dst).map(|b| b.at_ms).collect();
    t.sort_by(f64::total_cmp);
    let first = t.iter().rposition(|&x| x <= from_ms).unwrap_or(0);
    let t: Vec<f64> = t[first..].iter().copied().filter(|&x| x <= to_ms).collect();
    let max_gap_ms = t.windows(2).map(|w| w[1] - w[0]).fold(f64::NAN, f64::max);
    if max_gap_ms.is_nan() {
        return None;
    }
    let switch_gap_ms = match (src.last(), dst.first()) {
        (Some(s), Some(d)) => Some(d.at_ms - s.at_ms),
        _ => None,
    };
    Some(GuestGap {
        max_gap_ms,
        downtime_ms: (max_gap_ms - hb_ms).max(0.0),
        switch_gap_ms,
    })
}

/// Mean of the heartbeat field `key` over beats in [from, to].
fn mean_rate(beats: &[&Beat], key: &str, from_ms: f64, to_ms: f64) -> Option<f64> {
    let v: Vec<f64> = beats
        .iter()
        .filter(|b| b.at_ms >= from_ms && b.at_ms <= to_ms)
        .filter_map(|b| b.json[key].as_f64())
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The host's own figures of one run.
#[derive(Debug, Default, Serialize)]
struct HostFigures {
    hb_ms: f64,
    ready_ms: f64,
    migrate_wall_ms: f64,
    guest_downtime_ms: Option<f64>,
    guest_max_hb_gap_ms: Option<f64>,
    switch_gap_ms: Option<f64>,
    rate_key: Option<&'static str>,
    rate_before: Option<f64>,
    rate_during: Option<f64>,
    rate_after: Option<f64>,
    src_heartbeats: usize,
    dst_heartbeats: usize,
    garbled_heartbeats: usize,
    src_bad: Option<u64>,
    dst_bad: Option<u64>,
    dst_max_stall_ms: Option<f64>,
    /// Console lines that say the guest is broken (CORRUPT, ERROR, panic).
    guest_errors: Vec<String>,
    src_exit: String,
    dst_exit: String,
    /// nonfree_pages × 4 KiB at the link rate.
    physical_limit_ms: Option<f64>,
    /// From the destination's last heartbeat to the end of the after-run.
    dst_silent_tail_ms: Option<f64>,
    /// A longer silent tail means the guest stopped running there.
    dst_silent_limit_ms: f64,
}

impl HostFigures {
    fn new(
        src: &[Line],
        dst: &[Line],
        w: &Window,
        hb_ms: f64,
        rate_key: Option<&'static str>,
    ) -> HostFigures {
        let (src_beats, g1) = beats(src);
        let (dst_beats, g2) = beats(dst);
        let gap = guest_gap(&src_beats, &dst_beats, w.start_ms, w.after_ms, hb_ms);
        let all: Vec<&Beat> = src_beats.iter().chain(&dst_beats).collect();
        let srcs: Vec<&Beat> = src_beats.iter().collect();
        let dsts: Vec<&Beat> = dst_beats.iter().collect();
        let rate = |b: &[&Beat], from, to| rate_key.and_then(|k| mean_rate(b, k, from, to));
        let mut guest_errors = Vec::new();
        for (side, lines) in [("source", src), ("destination", dst)] {
            for l in lines.iter().filter(|l| !l.stderr) {
                if ["GODWIT CORRUPT", "GODWIT ERROR", "Kernel panic"]
                    .iter()
                    .any(|m| l.text.contains(m))
                {
                    guest_errors.push(format!("{side}: {}", l.text));
                }
            }
        }
        guest_errors.truncate(20);
        HostFigures {
            hb_ms,
            ready_ms: w.ready_ms,
            migrate_wall_ms: w.end_ms - w.start_ms,
            guest_downtime_ms: gap.as_ref().map(|g| g.downtime_ms),
            guest_max_hb_gap_ms: gap.as_ref().map(|g| g.max_gap_ms),
            switch_gap_ms: gap.and_then(|g| g.switch_gap_ms),
            rate_key,
            rate_before: rate(&srcs, w.start_ms - w.rate_window_ms, w.start_ms),
            rate_during: rate(&all, w.start_ms, w.end_ms),
            rate_after: rate(&dsts, w.end_ms, w.after_ms),
            src_heartbeats: src_beats.len(),
            dst_heartbeats: dst_beats.len(),
            garbled_heartbeats: g1 + g2,
            src_bad: src_beats.last().and_then(|b| b.json["bad"].as_u64()),
            dst_bad: dst_beats.last().and_then(|b| b.json["bad"].as_u64()),
            dst_max_stall_ms: dst_beats
                .last()
                .and_then(|b| b.json["max_stall_ms"].as_f64()),
            dst_silent_tail_ms: dst_beats.last().map(|b| w.after_ms - b.at_ms),
            dst_silent_limit_ms: silent_limit_ms(w),
            guest_errors,
            ..HostFigures::default()
        }
    }

    /// Why the guest's side of the run failed, if it did.
    fn integrity_failure(&self) -> Option<String> {
        let mut why = Vec::new();
        for (side, bad) in [("source", self.src_bad), ("destination", self.dst_bad)] {
            if let Some(n) = bad.filter(|&n| n > 0) {
                why.push(format!(
                    "INTEGRITY: the guest on the {side} reports bad = {n}"
                ));
            }
        }
        if let Some(first) = self.guest_errors.first() {
            why.push(format!("guest error line(s), first: {first}"));
        }
        if self.dst_heartbeats == 0 {
            why.push(
                "the guest printed no heartbeat on the destination (it did not run there)".into(),
            );
        } else if let Some(t) = self
            .dst_silent_tail_ms
            .filter(|&t| t > self.dst_silent_limit_ms)
        {
            why.push(format!(
                "the guest stalled on the destination: {} heartbeat(s) there, then none for the last {t:.0} ms of the after-run",
                self.dst_heartbeats
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// Whether the guest stopped running on the destination.
    fn dst_stalled(&self) -> bool {
        self.dst_heartbeats == 0
            || self
                .dst_silent_tail_ms
                .is_some_and(|t| t > self.dst_silent_limit_ms)
    }
}

/// The destination's guest must have printed a heartbeat within this long
/// before the end of the after-run: half the after-run, at least 500 ms.
fn silent_limit_ms(w: &Window) -> f64 {
    ((w.after_ms - w.end_ms) / 2.0).max(500.0)
}

/// Everything kept about one run (an element of results.json's `runs`).
#[derive(Serialize)]
struct RunRecord {
    cell: String,
    run: u32,
    ok: bool,
    failure: Option<String>,
    /// The engine's report (`godwit migrate --json`), as written.
    report: Option<Value>,
    host: Option<HostFigures>,
    logs: Vec<PathBuf>,
}

impl RunRecord {
    fn failure_text(&self) -> &str {
        self.failure.as_deref().unwrap_or("")
    }

    /// The progress line's verdict.
    fn one_line(&self) -> String {
        let num = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.0}"));
        let report = self.report.as_ref();
        let f = |k: &str| report.and_then(|r| r[k].as_f64());
        let figures = format!(
            "total {} ms, downtime {} ms (VMM) / {} ms (guest)",
            num(f("total_ms")),
            num(f("downtime_ms")),
            num(self.host.as_ref().and_then(|h| h.guest_downtime_ms)),
        );
        if self.ok {
            format!("ok: {figures}")
        } else {
            let text: String = self
                .failure_text()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let cut: String = text.chars().take(300).collect();
            let more = if cut.len() < text.len() { " …" } else { "" };
            format!(
                "FAILED: {cut}{more} (logs: {})",
                self.logs
                    .first()
                    .map_or(String::new(), |p| p.display().to_string())
            )
        }
    }

    fn report_num(&self, key: &str) -> Option<f64> {
        self.report.as_ref().and_then(|r| r[key].as_f64())
    }

    /// Pages of one kind; the stop-and-copy kind was once named `pages_state`.
    fn pages(&self, key: &str) -> Option<f64> {
        match key {
            "pages_stop_copy" => self
                .report_num(key)
                .or_else(|| self.report_num("pages_state")),
            _ => self.report_num(key),
        }
    }
}

/// The report's page counts, in table order.
const PAGE_KINDS: [&str; 6] = [
    "pages_precopy",
    "pages_stop_copy",
    "pages_demand",
    "pages_pushed",
    "pages_zero",
    "pages_free_skipped",
];

// ---------------------------------------------------------------------------
// The table

/// `mean ± sd` (just the value for one run), `-` for none.
fn show_stat(v: &[f64], decimals: usize) -> String {
    match mean_sd(v) {
        None => "-".into(),
        Some((m, _)) if v.len() == 1 => format!("{m:.decimals$}"),
        Some((m, sd)) => format!("{m:.decimals$} ± {sd:.decimals$}"),
    }
}

impl Bench {
    fn table(&self, cells: &[Cell], runs: u32, records: &[RunRecord]) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# godwit bench: preset {}\n", preset_name(self.preset));
        let _ = writeln!(
            s,
            "Started {} UTC; godwit {}; guest {} MiB RAM, heartbeat every {} ms, warm-up {} s, after-run {} s; {} run(s) per cell.\n",
            utc(self.started_unix_s),
            env!("CARGO_PKG_VERSION"),
            self.mem >> 20,
            self.hb_ms,
            self.warmup.as_secs(),
            self.after.as_secs(),
            runs
        );
        let _ = writeln!(s, "Network: {}.\n", self.describe_net());
        s.push_str(
            "Columns: *guest rate* is the workload's own throughput figure (memtouch and alloc-free: pages/s, quicksort: elements/s) \
             averaged over the heartbeats of the last second before the migration, after the target (`busy` = as fast as it can). *downtime (VMM)* is the engine's figure; \
             *downtime (guest)* is the largest gap between consecutive heartbeat lines (host timestamps, both consoles) from the migration's \
             start to the end of the after-run, minus the heartbeat period. Pages: pre-copy / stop-and-copy / demand / pushed / zero / free skipped. \
             *faults* are network faults on the destination, with their share of the working set's pages. *limit* is the physical limit: \
             non-free pages × 4 KiB at the link rate. With several runs: mean ± sample standard deviation over the runs that succeeded.\n\n",
        );
        if cells.iter().any(|c| c.vmm.is_qemu()) {
            let _ = writeln!(
                s,
                "QEMU rows ({}, TCG, `-M virt`, virtio-balloon-device with free-page-reporting; same kernel, initramfs, command line, RAM and link): \
                 *total* and *downtime (VMM)* are QEMU's `query-migrate` total-time and downtime; the guest figures come from the consoles as for Godwit. \
                 max-bandwidth and max-postcopy-bandwidth are the cap above, downtime-limit {} ms. \
                 Its pages per phase are estimated from its byte counters (precopy-bytes / downtime-bytes / postcopy-bytes); *zero* is QEMU's `duplicate` \
                 (which includes the pages the guest reported free: QEMU discards them, so they read as zero); *faults* are `postcopy-requests`. \
                 post-copy switches at once (as Godwit's post-copy), hybrid after the first pass (QEMU's usual recipe; it completes as pre-copy \
                 when the dirty set is below the downtime threshold by then). *qemu* is QEMU as shipped; *qemu+rearm* re-arms the guest's \
                 timer on the destination through QEMU's gdbstub as soon as it runs (QEMU migrates `stimecmp` but does not re-arm the timer \
                 behind it; the re-arm pauses the guest for a moment, which counts in its downtime).\n",
                self.qemu.as_ref().map_or("QEMU", |q| q.version.as_str()),
                qemu::DOWNTIME_LIMIT_MS
            );
        }
        let clients = cells.iter().any(|c| c.workload == Workload::Netserve);
        if clients {
            s.push_str(
                "*downtime (client)* (netserve rows): the client in the client namespace (`godwit netload`, four TCP connections, a request \
                 every millisecond on each, every answer checked) saw this as the longest gap between answers on one connection, minus the \
                 request period; a lost or wrong answer or a failed connection fails the run. *guest rate* is requests/s answered.\n\n",
            );
        }
        s.push_str("| VMM | mode | strategy | workload | WWS MiB | balloon | guest rate (target → achieved) | total ms | downtime ms (VMM) | downtime ms (guest) |");
        if clients {
            s.push_str(" downtime ms (client) |");
        }
        s.push_str(" pages pre/stop/demand/pushed/zero/free | faults (% WWS) | fault p50 / p99 µs | MB sent | limit ms | runs ok |\n");
        s.push_str("| --- | --- | --- | --- | --: | --- | --- | --: | --: | --: |");
        if clients {
            s.push_str(" --: |");
        }
        s.push_str(" --- | --: | --- | --: | --: | --- |\n");
        for cell in cells {
            let id = cell.id();
            let all: Vec<&RunRecord> = records.iter().filter(|r| r.cell == id).collect();
            if all.is_empty() {
                continue;
            }
            let ok: Vec<&RunRecord> = all.iter().copied().filter(|r| r.ok).collect();
            let rep = |k: &str| {
                ok.iter()
                    .filter_map(|r| r.report_num(k))
                    .collect::<Vec<f64>>()
            };
            let host = |f: fn(&HostFigures) -> Option<f64>| {
                ok.iter()
                    .filter_map(|r| r.host.as_ref().and_then(f))
                    .collect::<Vec<f64>>()
            };
            let pages: Vec<String> = PAGE_KINDS
                .iter()
                .map(|k| {
                    let v: Vec<f64> = ok.iter().filter_map(|r| r.pages(k)).collect();
                    mean(&v).map_or("-".into(), |m| format!("{m:.0}"))
                })
                .collect();
            let faults = rep("network_faults");
            let faults_shown = match (mean(&faults), cell.workload.wws_mb()) {
                (None, _) => "-".into(),
                (Some(f), Some(w)) => {
                    format!(
                        "{} ({:.1}%)",
                        show_stat(&faults, 0),
                        f / (w as f64 * 256.0) * 100.0
                    )
                }
                (Some(_), None) => show_stat(&faults, 0),
            };
            let prepaging = ok
                .iter()
                .find_map(|r| {
                    r.report
                        .as_ref()
                        .and_then(|v| v["prepaging"].as_str().map(String::from))
                })
                // Pre-copy's "n/a" says less than the cell's own label.
                .filter(|p| p != "n/a")
                .unwrap_or_else(|| cell.strategy_label());
            let bytes: Vec<f64> = rep("bytes_sent").iter().map(|b| b / 1e6).collect();
            let runs_ok = if ok.len() == all.len() {
                format!("{}/{}", ok.len(), all.len())
            } else {
                format!("**{}/{} FAILED**", ok.len(), all.len())
            };
            let client_col = if clients {
                let v: Vec<f64> = ok
                    .iter()
                    .filter_map(|r| r.report.as_ref()?["client"]["downtime_ms"].as_f64())
                    .collect();
                format!(" {} |", show_stat(&v, 1))
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} → {} | {} | {} | {} |{client_col} {} | {} | {} / {} | {} | {} | {} |",
                cell.vmm.name(),
                cell.strategy.mode,
                prepaging,
                cell.workload.name(),
                cell.workload.wws_mb().map_or("-".into(), |w| w.to_string()),
                if cell.balloon { "on" } else { "off" },
                cell.workload.target(),
                show_stat(&host(|h| h.rate_before), 0),
                show_stat(&rep("total_ms"), 0),
                show_stat(&rep("downtime_ms"), 1),
                show_stat(&host(|h| h.guest_downtime_ms), 1),
                pages.join(" / "),
                faults_shown,
                show_stat(&rep("fault_latency_us_p50"), 0),
                show_stat(&rep("fault_latency_us_p99"), 0),
                show_stat(&bytes, 1),
                show_stat(&host(|h| h.physical_limit_ms), 0),
                runs_ok,
            );
        }
        let failed: Vec<&RunRecord> = records.iter().filter(|r| !r.ok).collect();
        if !failed.is_empty() {
            let _ = writeln!(s, "\n## FAILED runs ({})\n", failed.len());
            for r in failed {
                let text = r.failure_text().replace('\n', " ⏎ ");
                let _ = writeln!(s, "- `{}` run {}: {}", r.cell, r.run, text);
            }
        }
        s
    }
}

/// `YYYY-MM-DD HH:MM` of a Unix time (UTC).
fn utc(unix_s: u64) -> String {
    // Howard Hinnant's civil-from-days.
    let days = (unix_s / 86400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let secs = unix_s % 86400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60
    )
}

fn unix_time_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The host as the benchmark found it.
fn host_info() -> Value {
    let loadavg: Vec<f64> = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|w| w.parse().ok())
        .collect();
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "loadavg": loadavg,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "unix_time_s": unix_time_s(),
    })
}

// ---------------------------------------------------------------------------
// Plots

/// What the plots show, against the working-set size.
const PLOTS: [(&str, &str); 5] = [
    ("total_ms", "Total migration time (ms)"),
    ("downtime_ms", "Downtime, VMM figure (ms)"),
    ("guest_downtime_ms", "Downtime as the guest saw it (ms)"),
    (
        "pages_sent",
        "Pages sent (pre-copy + stop-and-copy + demand + pushed)",
    ),
    ("network_faults", "Network faults on the destination"),
];

impl Bench {
    /// One SVG per figure and memtouch rate (balloon on), one line per
    /// VMM and strategy (QEMU's dashed), when the runs cover at least two
    /// working-set sizes.
    fn write_plots(&self, cells: &[Cell], records: &[RunRecord]) -> Result<Vec<PathBuf>> {
        let value = |r: &RunRecord, key: &str| -> Option<f64> {
            if key == "pages_sent" {
                let v: Vec<f64> = PAGE_KINDS[..4].iter().filter_map(|k| r.pages(k)).collect();
                (!v.is_empty()).then(|| v.iter().sum())
            } else if key == "guest_downtime_ms" {
                r.host.as_ref().and_then(|h| h.guest_downtime_ms)
            } else {
                r.report_num(key)
            }
        };
        let rates: BTreeSet<u64> = cells
            .iter()
            .filter_map(|c| match c.workload {
                Workload::Memtouch { pages_per_s, .. } => Some(pages_per_s),
                _ => None,
            })
            .collect();
        let mut written = Vec::new();
        for rate in rates {
            for (key, title) in PLOTS {
                let mut series = Vec::new();
                let kinds = Vmm::all()
                    .into_iter()
                    .flat_map(|(vmm, strategies)| strategies.iter().map(move |&s| (vmm, s)));
                for (vmm, strategy) in kinds {
                    let mut points = Vec::new();
                    let mut name = None;
                    for cell in cells
                        .iter()
                        .filter(|c| c.balloon && c.vmm == vmm && c.strategy == strategy)
                    {
                        let Workload::Memtouch {
                            wws_mb,
                            pages_per_s,
                        } = cell.workload
                        else {
                            continue;
                        };
                        if pages_per_s != rate {
                            continue;
                        }
                        let id = cell.id();
                        let v: Vec<f64> = records
                            .iter()
                            .filter(|r| r.ok && r.cell == id)
                            .filter_map(|r| value(r, key))
                            .collect();
                        if let Some(m) = mean(&v) {
                            points.push((wws_mb as f64, m));
                            name = Some(cell.series());
                        }
                    }
                    if let Some(name) = name {
                        series.push((name, points));
                    }
                }
                let xs: BTreeSet<u64> = series
                    .iter()
                    .flat_map(|(_, p)| p.iter().map(|(x, _)| *x as u64))
                    .collect();
                if xs.len() < 2 {
                    continue;
                }
                let rate_name = if rate == 0 {
                    "busy".to_string()
                } else {
                    format!("{rate} pages/s")
                };
                let svg = line_chart(
                    &format!("{title}: memtouch, {rate_name}, balloon on"),
                    "writable working set (MiB, log scale)",
                    &series,
                );
                let name = if rate == 0 {
                    format!("plot-{key}-busy.svg")
                } else {
                    format!("plot-{key}-pps{rate}.svg")
                };
                let path = self.out.join(name);
                std::fs::write(&path, svg)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                written.push(path);
            }
        }
        Ok(written)
    }
}

const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// A line chart as SVG text: x on a log2 scale (ticks at the data's x
/// values), y linear from 0. Plain SVG with a generic font family, so it
/// needs nothing on this machine to write and any browser to view.
fn line_chart(title: &str, x_label: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let (w, h) = (820.0, 480.0);
    let (left, right, top, bottom) = (80.0, 190.0, 40.0, 60.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let xs: Vec<f64> = {
        let mut v: Vec<f64> = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|q| q.0))
            .collect();
        v.sort_by(f64::total_cmp);
        v.dedup();
        v
    };
    let (x0, x1) = (
        xs[0].log2(),
        xs[xs.len() - 1].log2().max(xs[0].log2() + 1.0),
    );
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .fold(0.0, f64::max);
    let (step, top_tick) = nice_ticks(y_max);
    let px = |x: f64| left + (x.log2() - x0) / (x1 - x0) * pw;
    let py = |y: f64| top + ph - y / top_tick * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    let mut y = 0.0;
    while y <= top_tick * 1.0001 {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#ddd"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            py(y),
            left + pw,
            left - 6.0,
            py(y) + 4.0,
            show_tick(y)
        );
        y += step;
    }
    for &x in &xs {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{1}" stroke="#eee"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
            px(x),
            top + ph,
            top + ph + 18.0,
            show_tick(x)
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 18.0,
        esc(x_label)
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        // QEMU's lines are dashed: the palette repeats after Godwit's.
        let dash = if name.starts_with("qemu") {
            r#" stroke-dasharray="7 4""#
        } else {
            ""
        };
        let coords: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            coords.join(" ")
        );
        for &(x, y) in points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"><title>{}: {} MiB, {}</title></circle>"#,
                px(x),
                py(y),
                esc(name),
                show_tick(x),
                show_tick(y)
            );
        }
        let ly = top + 10.0 + i as f64 * 20.0;
        let lx = left + pw + 16.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 22.0,
            lx + 28.0,
            ly + 4.0,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A tick step of 1, 2 or 5 × 10^k giving about 5 ticks, and the top tick.
fn nice_ticks(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 1.0);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    (step, (max / step).ceil() * step)
}

fn show_tick(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{}M", trim_num(v / 1e6))
    } else if v.abs() >= 1e4 {
        format!("{}k", trim_num(v / 1e3))
    } else {
        trim_num(v)
    }
}

fn trim_num(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrices() {
        let quick = matrix(Preset::Quick);
        assert_eq!(quick.len(), 20 + 2 * 5);
        assert!(quick
            .iter()
            .all(|c| c.balloon && c.workload.wws_mb() == Some(64)));
        let qemu: Vec<String> = quick
            .iter()
            .filter(|c| c.vmm.is_qemu())
            .map(Cell::id)
            .collect();
        assert!(qemu.contains(&"memtouch-wws64-pps20000-balloon-qemu-precopy".to_string()));
        assert!(qemu.contains(&"memtouch-wws64-pps20000-balloon-qemu-rearm-postcopy".to_string()));
        assert!(qemu.contains(&"memtouch-wws64-pps20000-balloon-qemu-rearm-precopy-ac".to_string()));
        assert!(qemu.contains(&"memtouch-wws64-pps20000-balloon-qemu-precopy-zstd-ac".to_string()));
        assert_eq!(select(quick.clone(), Some("qemu")).len(), 10);
        // Alternatives and negations.
        assert_eq!(select(quick.clone(), Some("stop|zstd,!qemu")).len(), 6);
        assert!(quick
            .iter()
            .any(|c| c.id() == "memtouch-wws64-busy-balloon-precopy-zstd-ac-mfd2"));
        assert_eq!(
            select(quick, Some("pps20000,precopy|hybrid,!rearm")).len(),
            5 + 4
        );
        let full = matrix(Preset::Full);
        // Godwit: every strategy everywhere; QEMU: the fixed-rate WWS sweep, balloon on.
        assert_eq!(full.len(), (10 + 3) * 2 * 10 + 5 * 2 * 5);
        let ids: BTreeSet<String> = full.iter().map(Cell::id).collect();
        assert_eq!(ids.len(), full.len(), "cell ids are unique");
        assert!(ids.contains("memtouch-wws256-busy-noballoon-postcopy-multi-pivot"));
        assert!(ids.contains("alloc-free-balloon-hybrid"));
        assert!(ids.contains("memtouch-wws8-pps20000-balloon-qemu-rearm-hybrid"));
        assert!(!ids.iter().any(|i| i.contains("busy") && i.contains("qemu")));
        let some = select(full, Some("postcopy, wws64"));
        assert_eq!(some.len(), 2 * 2 * 4 + 2);
    }

    fn beat(at_ms: f64) -> Beat {
        Beat {
            at_ms,
            json: json!({"bad": 0, "pages_per_s": at_ms}),
        }
    }

    #[test]
    fn guest_downtime_is_the_largest_heartbeat_gap_minus_the_period() {
        // Source beats every 10 ms up to 1000, destination from 1180.
        let src: Vec<Beat> = (0..=100).map(|i| beat(i as f64 * 10.0)).collect();
        let dst: Vec<Beat> = (0..50).map(|i| beat(1180.0 + i as f64 * 10.0)).collect();
        let g = guest_gap(&src, &dst, 995.0, 2000.0, 10.0).unwrap();
        assert_eq!(g.max_gap_ms, 180.0);
        assert_eq!(g.downtime_ms, 170.0);
        assert_eq!(g.switch_gap_ms, Some(180.0));
        // A later stall on the destination (post-copy faults) counts too.
        let mut dst2 = dst;
        dst2.push(beat(1900.0));
        let g = guest_gap(&src, &dst2, 995.0, 2000.0, 10.0).unwrap();
        assert_eq!(g.max_gap_ms, 1900.0 - 1670.0);
        // Gaps before the migration do not.
        let g = guest_gap(&src, &dst2, 995.0, 1500.0, 10.0).unwrap();
        assert_eq!(g.max_gap_ms, 180.0);
        assert!(guest_gap(&[], &[], 0.0, 1.0, 10.0).is_none());
    }

    #[test]
    fn heartbeats_and_integrity() {
        let line = |at_ms: f64, text: &str| Line {
            at_ms,
            stderr: false,
            text: text.into(),
        };
        let src = vec![
            line(1.0, "GODWIT READY {\"workload\":\"memtouch\"}"),
            line(
                10.0,
                "GODWIT HB {\"seq\":0,\"bad\":0,\"max_stall_ms\":0.1,\"pages_per_s\":100.0}",
            ),
            line(
                20.0,
                "GODWIT HB {\"seq\":1,\"bad\":0,\"max_stall_ms\":0.1,\"pages_per_s\":300.0}",
            ),
            line(25.0, "GODWIT HB {\"seq\":2,\"ba[   12.3] kernel says hi"),
        ];
        let dst = vec![
            line(
                60.0,
                "GODWIT HB {\"seq\":3,\"bad\":0,\"max_stall_ms\":40.0,\"pages_per_s\":50.0}",
            ),
            line(
                70.0,
                "GODWIT HB {\"seq\":4,\"bad\":2,\"max_stall_ms\":40.0,\"pages_per_s\":250.0}",
            ),
            line(71.0, "GODWIT CORRUPT {\"page\":7}"),
        ];
        let w = Window {
            ready_ms: 1.0,
            start_ms: 21.0,
            end_ms: 65.0,
            after_ms: 80.0,
            rate_window_ms: 20.0,
        };
        let h = HostFigures::new(&src, &dst, &w, 10.0, Some("pages_per_s"));
        assert_eq!(
            (h.src_heartbeats, h.dst_heartbeats, h.garbled_heartbeats),
            (2, 2, 1)
        );
        assert_eq!(h.rate_before, Some(200.0));
        assert_eq!(h.rate_during, Some(50.0));
        assert_eq!(h.rate_after, Some(250.0));
        assert_eq!(h.guest_max_hb_gap_ms, Some(40.0));
        assert_eq!(h.guest_downtime_ms, Some(30.0));
        assert_eq!(h.dst_bad, Some(2));
        let why = h.integrity_failure().unwrap();
        assert!(
            why.contains("INTEGRITY") && why.contains("bad = 2"),
            "{why}"
        );
        assert!(why.contains("GODWIT CORRUPT"), "{why}");
    }

    #[test]
    fn a_guest_that_goes_silent_on_the_destination_fails() {
        let hb = |at_ms: f64| Line {
            at_ms,
            stderr: false,
            text: "GODWIT HB {\"bad\":0,\"max_stall_ms\":1.0}".into(),
        };
        let src: Vec<Line> = (0..100).map(|i| hb(i as f64 * 10.0)).collect();
        let w = Window {
            ready_ms: 0.0,
            start_ms: 900.0,
            end_ms: 1000.0,
            after_ms: 3000.0,
            rate_window_ms: 500.0,
        };
        // One heartbeat on the destination, then nothing for 2 s.
        let h = HostFigures::new(&src, &[hb(1010.0)], &w, 10.0, None);
        assert!(h.dst_stalled());
        let why = h.integrity_failure().unwrap();
        assert!(why.contains("stalled on the destination"), "{why}");
        // Beating to the end is fine.
        let dst: Vec<Line> = (0..200).map(|i| hb(1010.0 + i as f64 * 10.0)).collect();
        let h = HostFigures::new(&src, &dst, &w, 10.0, None);
        assert!(!h.dst_stalled() && h.integrity_failure().is_none());
    }

    #[test]
    fn proc_net_tcp_listen_rows() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:115C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   \
            1: 0100007F:9C40 0100007F:115C 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n";
        assert!(tcp_table_listens(table, 4444));
        assert!(
            !tcp_table_listens(table, 40000),
            "established, not listening"
        );
        assert!(!tcp_table_listens(table, 80));
    }

    #[test]
    fn stats_ticks_dates() {
        assert_eq!(show_stat(&[], 0), "-");
        assert_eq!(show_stat(&[5.0], 1), "5.0");
        assert_eq!(show_stat(&[1.0, 2.0, 3.0], 1), "2.0 ± 1.0");
        assert_eq!(nice_ticks(930.0), (200.0, 1000.0));
        assert_eq!(nice_ticks(0.0), (1.0, 1.0));
        assert_eq!(nice_ticks(4.2), (1.0, 5.0));
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13");
        assert_eq!(show_tick(125000.0), "125k");
    }

    #[test]
    fn svg_chart() {
        let series = vec![
            ("precopy".to_string(), vec![(8.0, 100.0), (64.0, 900.0)]),
            (
                "postcopy-<dual>".to_string(),
                vec![(8.0, 50.0), (64.0, 60.0)],
            ),
        ];
        let svg = line_chart("Total & time", "WWS", &series);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("Total &amp; time") && svg.contains("postcopy-&lt;dual&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        let qemu = vec![("qemu-precopy".to_string(), vec![(8.0, 1.0), (64.0, 2.0)])];
        assert!(line_chart("t", "x", &qemu).contains("stroke-dasharray"));
    }
}

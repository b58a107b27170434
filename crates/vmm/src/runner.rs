//! Running a VM in this process (`godwit run`): boot or restore it, forward
//! the console, serve the control socket, and wait for it to end.

use crate::console::{ConsoleTee, Heartbeats};
use crate::control::ControlServer;
use crate::vm_control::VmControl;
use anyhow::{anyhow, Context, Result};
use godwit_machine::layout::RAM_BASE;
use godwit_machine::{snapshot, BoardConfig, HostDevice, Vm, VmConfig, VmHandle};
use godwit_memory::GuestRam;
use serde_json::json;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to run.
pub enum Boot {
    /// A kernel (and initrd) on a board.
    Kernel {
        board: BoardConfig,
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        /// M-mode firmware to boot through (`--bios`).
        bios: Option<PathBuf>,
        cmdline: String,
        /// Each device's host side, in slot order (disk images).
        host: Vec<HostDevice>,
    },
    /// A snapshot; a snapshot whose board differs from what `expect` asks
    /// for is refused, naming the difference.
    Snapshot {
        path: PathBuf,
        expect: Expect,
        /// Each device's host side, in the snapshot's slot order.
        host: Vec<HostDevice>,
    },
}

/// What the user said the restored board must be (unset: anything).
#[derive(Clone, Debug, Default)]
pub struct Expect {
    pub harts: Option<u32>,
    pub ram_bytes: Option<u64>,
    pub devices: Option<Vec<godwit_machine::DeviceConfig>>,
}

impl Expect {
    /// The board `saved` with what the user asked for put in its place.
    fn board(&self, saved: &BoardConfig) -> BoardConfig {
        BoardConfig {
            harts: self.harts.unwrap_or(saved.harts),
            ram_bytes: self.ram_bytes.unwrap_or(saved.ram_bytes),
            devices: self
                .devices
                .clone()
                .unwrap_or_else(|| saved.devices.clone()),
        }
    }
}

/// What `godwit run` was told.
pub struct RunOptions {
    pub boot: Boot,
    /// Control socket path.
    pub control: Option<PathBuf>,
    /// Interpret every instruction (no translator).
    pub interpreter: bool,
    /// Say so on stderr when a booting guest has written nothing to its
    /// console this long after it started (`None`: never).
    pub console_watchdog: Option<Duration>,
}

/// Default of [`RunOptions::console_watchdog`]: a Godwit guest prints its
/// first kernel line within a fraction of a second.
pub const CONSOLE_WATCHDOG: Duration = Duration::from_secs(10);

/// Watches a booting guest's console: if nothing arrived within `limit`
/// while the VM runs, says so once (a kernel that died before its console
/// came up looks exactly like a hang otherwise).
fn watch_console(vm: VmHandle, spoke: Arc<AtomicBool>, limit: Duration) -> Result<()> {
    std::thread::Builder::new()
        .name("console-watchdog".into())
        .spawn(move || {
            let start = Instant::now();
            while start.elapsed() < limit {
                if spoke.load(Ordering::Acquire) || vm.is_gone() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50).min(limit));
            }
            if !spoke.load(Ordering::Acquire) && !vm.is_gone() && !vm.is_paused() {
                eprintln!(
                    "godwit: the guest has written nothing to its console in {:.0} s: it probably died before its console came up (a kernel that cannot start on this board, or one that panicked before its serial driver probed and has no early console for this board's ns16550a). The VM is still running; end it with Ctrl-C or the control socket's `quit`.",
                    limit.as_secs_f64()
                );
            }
        })
        .context("cannot start the console watchdog")?;
    Ok(())
}

/// Turns the translator off when asked; says so when it cannot be on.
pub fn choose_cpu(vm: &VmHandle, interpreter: bool) -> Result<()> {
    let on = vm.set_jit(!interpreter).map_err(|e| anyhow!(e))?;
    if !on && !interpreter {
        eprintln!(
            "godwit: no executable memory for translated code: every instruction is interpreted"
        );
    }
    Ok(())
}

/// Forwards our stdin to the guest's console.
pub fn console_input(handle: VmHandle) -> Result<()> {
    std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || handle.is_gone() {
                    break;
                }
                handle.push_input(&buf[..n]);
            }
        })
        .context("cannot start the console input thread")?;
    Ok(())
}

fn build(boot: Boot, beats: &Heartbeats, spoke: &Arc<AtomicBool>) -> Result<Vm> {
    let console =
        Box::new(ConsoleTee::new(std::io::stdout(), beats.clone()).noting_output(spoke.clone()));
    match boot {
        Boot::Snapshot { path, expect, host } => {
            let snap = snapshot::load(&path)?;
            let board = expect.board(&snap.state.board);
            // Refused before any RAM is mapped or filled.
            board
                .compare(&snap.state.board)
                .with_context(|| format!("cannot restore {}", path.display()))?;
            let ram = Arc::new(GuestRam::new(
                RAM_BASE,
                snap.state.board.ram_bytes as usize,
            )?);
            snap.fill_ram(&ram)?;
            let vm = Vm::restore_with(&snap.state, ram, console, Some(&board), host)
                .with_context(|| format!("cannot restore {}", path.display()))?;
            eprintln!("godwit: restored {} ({})", path.display(), vm.board());
            Ok(vm)
        }
        Boot::Kernel {
            board,
            kernel,
            initrd,
            bios,
            cmdline,
            host,
        } => {
            crate::guest::check_init_words(&cmdline)?;
            Ok(Vm::boot_with(
                VmConfig {
                    board,
                    kernel,
                    initrd,
                    bios,
                    cmdline,
                    console,
                },
                host,
            )?)
        }
    }
}

/// Boots (or restores) the VM, serves it until it ends; returns the guest's
/// exit status.
pub fn run_vm(opts: RunOptions) -> Result<i32> {
    let beats = Heartbeats::default();
    let booting = matches!(opts.boot, Boot::Kernel { .. });
    let spoke = Arc::new(AtomicBool::new(false));
    let vm = build(opts.boot, &beats, &spoke).context("cannot start the VM")?;
    let handle = vm.handle();
    if let Some(limit) = opts.console_watchdog.filter(|_| booting) {
        watch_console(handle.clone(), spoke, limit)?;
    }
    choose_cpu(&handle, opts.interpreter)?;
    console_input(handle.clone())?;
    let control = Arc::new(VmControl::new(handle.clone(), beats));
    let server = match &opts.control {
        Some(p) => {
            let s = ControlServer::start(p, control.clone())
                .with_context(|| format!("cannot open the control socket {}", p.display()))?;
            control.set_events(s.events());
            eprintln!("godwit: control socket {}", s.path().display());
            Some(s)
        }
        None => None,
    };
    let jit = if opts.interpreter {
        "interpreted"
    } else {
        "translated"
    };
    let outcome = vm.run()?;
    control.emit(
        "SHUTDOWN",
        json!({ "guest": outcome.exit != godwit_machine::GuestExit::Quit }),
    );
    drop(server);
    let secs = outcome.elapsed.as_secs_f64();
    let j = outcome.jit;
    eprintln!("godwit: {}.", outcome.exit.describe());
    eprintln!(
        "godwit: guest ended: {:?}; {} instructions in {secs:.2} s ({:.1} MIPS, {jit}; {} blocks translated, {} page invalidations, {} flushes, {} fence.i, {} code pages checked)",
        outcome.exit,
        outcome.instructions,
        outcome.instructions as f64 / secs.max(1e-9) / 1e6,
        j.blocks,
        j.invalidations,
        j.flushes,
        j.fence_i,
        j.code_checks,
    );
    Ok(outcome.exit.status())
}

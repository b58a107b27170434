//! A VM: built from a [`VmConfig`] (boot) or from a saved [`VmState`]
//! (restore, migration), run by [`Vm::run`] on its own threads, and driven
//! from anywhere through a [`VmHandle`].
//!
//! Threads: one vCPU thread per hart ([`crate::vcpu`]), one event thread
//! per virtio device ([`crate::worker`]); the thread that calls
//! [`Vm::run`] waits for the VM to end. Other threads never touch a hart
//! while it runs: [`VmHandle::exec`] stops every vCPU first and hands the
//! closure a [`Machine`] with all harts.
//!
//! Pausing ([`VmHandle::pause`]) stops the vCPUs, then drains the device
//! threads: once it returns, nothing changes guest memory or any device
//! until [`VmHandle::resume`], and [`VmHandle::save_state`] may run.

use crate::board::{BoardConfig, DeviceConfig};
use crate::bus::{lock, Devices, Slot};
use crate::error::{RestoreError, VmError};
use crate::host::{self, HostDevice};
use crate::layout::*;
use crate::state::{HartRun, SavedHart, VmState};
use crate::vcpu::{stop_harts, stop_harts_within, vcpu_main, HartSignal, Stopped};
use crate::worker::{worker_main, WorkerSignal, Workers};
use crate::{fdt, loader};
use godwit_devices::{Balloon, Clint, Plic, Uart16550, VirtioMmio};
use godwit_hart::{GuestClock, Hart};
use godwit_memory::GuestRam;
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How the VM ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest powered off.
    PowerOff,
    /// The guest ended giving "system failure" as the reason: an SBI
    /// system reset (shutdown or reboot) with reason 1, or the test
    /// finisher's failure code.
    Failure,
    /// The guest asked for a reboot (Godwit ends the VM instead).
    Reboot,
    /// The VMM was told to quit (control socket, migration done).
    Quit,
}

impl GuestExit {
    /// Process exit status: 0 power-off or quit, 1 failure, 3 reboot.
    pub fn status(self) -> i32 {
        match self {
            GuestExit::PowerOff | GuestExit::Quit => 0,
            GuestExit::Failure => 1,
            GuestExit::Reboot => 3,
        }
    }

    /// What happened, in words, for the VMM's last message.
    pub fn describe(self) -> &'static str {
        match self {
            GuestExit::PowerOff => "the guest powered off",
            GuestExit::Failure => {
                "the guest ended reporting a system failure (SBI system reset with reason \"system failure\", or the test finisher's failure code)"
            }
            GuestExit::Reboot => "the guest asked for a reboot (Godwit ends the VM instead)",
            GuestExit::Quit => "the VMM was told to quit",
        }
    }
}

/// What to boot.
pub struct VmConfig {
    /// The board.
    pub board: BoardConfig,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// M-mode firmware (OpenSBI `fw_dynamic.bin`) to boot through, loaded
    /// at the start of RAM; without it the built-in SBI serves the kernel.
    pub bios: Option<PathBuf>,
    pub cmdline: String,
    /// Where the guest console goes.
    pub console: Box<dyn Write + Send>,
}

/// Pause, stop and exit, shared by every thread.
#[derive(Default)]
pub(crate) struct RunCtl {
    /// Stops in force ([`stop_harts`]); vCPUs stay out while > 0.
    pub stops: AtomicU32,
    /// The VM is paused: vCPUs stay out until resumed.
    pub paused: AtomicBool,
    pub park: Mutex<()>,
    pub park_cv: Condvar,
    exit: Mutex<Option<GuestExit>>,
    exit_cv: Condvar,
    exited: AtomicBool,
    /// Console input held while paused.
    input: Mutex<VecDeque<u8>>,
    /// vCPU throttle (auto-converge), per mille of each vCPU's time spent
    /// asleep instead of running; 0: off.
    pub throttle: AtomicU32,
    /// Time vCPUs slept for the throttle, summed over vCPUs, ns.
    pub throttled_ns: AtomicU64,
}

/// The strongest vCPU throttle, per mille ([`VmHandle::set_throttle`]).
pub const MAX_THROTTLE: u32 = 990;

/// Everything the threads of one VM share.
pub(crate) struct Shared {
    pub board: BoardConfig,
    pub ram: Arc<GuestRam>,
    pub clock: GuestClock,
    pub cmdline: String,
    pub devices: Devices,
    /// Every hart, by id; a vCPU holds its hart's lock while it runs.
    pub harts: Vec<Mutex<Hart>>,
    /// Every hart's signal, by id.
    pub sigs: Vec<HartSignal>,
    pub workers: Vec<WorkerSignal>,
    pub worker_ctl: Workers,
    pub ctl: RunCtl,
    /// vCPUs and stoppers wait here for acknowledgements.
    pub acks: Mutex<()>,
    pub acks_cv: Condvar,
}

impl Shared {
    /// The harts' signals as a slice (what the bus wires interrupts to).
    pub fn signals(&self) -> &[HartSignal] {
        &self.sigs
    }

    pub fn exited(&self) -> bool {
        self.ctl.exited.load(SeqCst)
    }

    pub fn set_exit(&self, exit: GuestExit) {
        {
            let mut e = lock(&self.ctl.exit);
            if e.is_none() {
                *e = Some(exit);
            }
            self.ctl.exited.store(true, SeqCst);
            self.ctl.exit_cv.notify_all();
        }
        self.worker_ctl.quit.store(true, SeqCst);
        for w in &self.workers {
            w.wake.signal();
        }
        for sig in &self.sigs {
            sig.kick();
        }
        self.wake_parked();
        let _g = lock(&self.acks);
        self.acks_cv.notify_all();
    }
}

/// The vCPU thread is gone (the VM ended).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the VM is not running any more")]
pub struct VmGone;

/// A VM, built and ready to run.
pub struct Vm {
    shared: Arc<Shared>,
}

/// What [`Vm::run`] returns.
#[derive(Clone, Copy, Debug)]
pub struct RunOutcome {
    pub exit: GuestExit,
    /// Instructions all harts retired while running.
    pub instructions: u64,
    pub elapsed: Duration,
    /// The translators' counters, summed over the harts.
    pub jit: godwit_hart::JitStats,
}

impl Vm {
    /// Builds the board, loads the guest, and leaves it ready to run. For
    /// boards whose devices need nothing on the host (no disks); see
    /// [`boot_with`](Self::boot_with).
    pub fn boot(cfg: VmConfig) -> Result<Vm, VmError> {
        Vm::boot_with(cfg, Vec::new())
    }

    /// [`boot`](Self::boot) with each device's host side, in slot order
    /// (see [`crate::host`]): a disk needs its image.
    pub fn boot_with(cfg: VmConfig, host: Vec<HostDevice>) -> Result<Vm, VmError> {
        cfg.board.validate()?;
        let host = host::align(host, cfg.board.devices.len())?;
        let limit = cfg.board.ram_bytes;
        let kernel = loader::read_bounded(&cfg.kernel, limit)?;
        let initrd = cfg
            .initrd
            .as_ref()
            .map(|p| loader::read_bounded(p, limit))
            .transpose()?;
        let bios = cfg
            .bios
            .as_ref()
            .map(|p| {
                let b = loader::read_bounded(p, limit)?;
                loader::check_firmware(&p.display().to_string(), &b)?;
                Ok::<_, VmError>(b)
            })
            .transpose()?;
        let ram = Arc::new(GuestRam::new(RAM_BASE, cfg.board.ram_bytes as usize)?);
        let place = loader::load(
            &ram,
            &cfg.kernel.display().to_string(),
            &kernel,
            initrd.as_deref(),
        )?;
        if let Some(fw) = &bios {
            ram.write(RAM_BASE, fw)?;
            let info = loader::FirmwareInfo {
                next_addr: place.kernel_entry,
            };
            ram.write(place.fw_info, &info.bytes())?;
        }
        let blob = fdt::build(&fdt::FdtConfig {
            ram_base: RAM_BASE,
            ram_size: cfg.board.ram_bytes,
            harts: cfg.board.harts,
            bootargs: &cfg.cmdline,
            initrd: place.initrd,
            virtio_slots: cfg.board.devices.len() as u32,
        })
        .map_err(|e| VmError::Fdt(e.to_string()))?;
        if blob.len() as u64 > loader::DTB_MAX {
            return Err(VmError::Fdt(format!(
                "device tree is {} bytes, more than the space kept for it",
                blob.len()
            )));
        }
        ram.write(place.dtb, &blob)?;
        let clock = GuestClock::starting_now();
        let harts = (0..cfg.board.harts)
            .map(|h| {
                let mut hart = Hart::new(u64::from(h), ram.clone(), place.kernel_entry, place.dtb);
                if bios.is_some() {
                    // Every hart enters the firmware, which picks the one
                    // that boots the kernel and parks the others itself.
                    hart.reset_for_firmware(RAM_BASE, place.dtb, place.fw_info);
                    return (hart, HartRun::Started);
                }
                // The built-in SBI starts hart 0; the kernel starts the
                // others through SBI HSM.
                let run = if h == 0 {
                    HartRun::Started
                } else {
                    HartRun::Stopped
                };
                (hart, run)
            })
            .collect();
        let shared = Shared::new(
            cfg.board,
            ram,
            clock,
            cfg.cmdline,
            cfg.console,
            harts,
            host,
            |_, _| Ok::<(), VmError>(()),
        )?;
        Ok(Vm { shared })
    }

    /// Builds a VM from a saved state, with `ram` already holding its
    /// memory. `board`, when given, is the board this host expects: a state
    /// for another one is refused. Everything is checked before anything
    /// runs: on error nothing is left behind. For boards whose devices
    /// need nothing on the host; see [`restore_with`](Self::restore_with).
    pub fn restore(
        state: &VmState,
        ram: Arc<GuestRam>,
        console: Box<dyn Write + Send>,
        board: Option<&BoardConfig>,
    ) -> Result<Vm, RestoreError> {
        Vm::restore_with(state, ram, console, board, Vec::new())
    }

    /// [`restore`](Self::restore) with each device's host side, in the
    /// state's slot order (see [`crate::host`]). A disk's image must have
    /// the size the state's board says.
    pub fn restore_with(
        state: &VmState,
        ram: Arc<GuestRam>,
        console: Box<dyn Write + Send>,
        board: Option<&BoardConfig>,
        host: Vec<HostDevice>,
    ) -> Result<Vm, RestoreError> {
        state.board.validate().map_err(VmError::from)?;
        if let Some(b) = board {
            b.compare(&state.board)?;
        }
        let host = host::align(host, state.board.devices.len())?;
        let b = &state.board;
        if ram.size() as u64 != b.ram_bytes {
            return Err(RestoreError::Inconsistent(format!(
                "the state is for {} bytes of RAM, this VM has {}",
                b.ram_bytes,
                ram.size()
            )));
        }
        if state.harts.len() != b.harts as usize || state.devices.len() != b.devices.len() {
            return Err(RestoreError::Inconsistent(format!(
                "the board has {} harts and {} devices, the state {} and {}",
                b.harts,
                b.devices.len(),
                state.harts.len(),
                state.devices.len()
            )));
        }
        let clock = GuestClock::resume(&state.clock);
        let harts = state
            .harts
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut hart = Hart::new(i as u64, ram.clone(), RAM_BASE, 0);
                hart.restore(&s.cpu);
                (hart, s.run)
            })
            .collect();
        let shared = Shared::new(
            state.board.clone(),
            ram.clone(),
            clock,
            state.cmdline.clone(),
            console,
            harts,
            host,
            |devices, _| {
                lock(&devices.plic).restore(&state.plic)?;
                lock(&devices.clint).restore(&state.clint)?;
                for (slot, s) in devices.slots.iter().zip(&state.devices) {
                    lock(&slot.transport).restore(s)?;
                }
                lock(&devices.uart).restore(&state.uart);
                Ok::<(), RestoreError>(())
            },
        )?;
        // Last, once nothing can fail: the free map lives in shared RAM.
        ram.free_map().load_from(&state.free_pages);
        let sigs = shared.signals();
        shared.devices.sync_clint(sigs);
        shared.devices.sync_uart(sigs);
        for slot in 0..shared.devices.slots.len() {
            shared.devices.sync_slot(sigs, slot);
        }
        Ok(Vm { shared })
    }

    /// A handle for other threads.
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            shared: self.shared.clone(),
        }
    }

    /// Guest RAM.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.shared.ram
    }

    /// The board.
    pub fn board(&self) -> &BoardConfig {
        &self.shared.board
    }

    /// Starts paused (or not): a VM received by migration waits for the
    /// engine's resume.
    pub fn set_paused(&self, paused: bool) {
        self.shared.ctl.paused.store(paused, SeqCst);
        self.shared.worker_ctl.paused.store(paused, SeqCst);
    }

    /// Runs the guest until it powers off, reboots, or is told to quit:
    /// starts the vCPU and device threads and waits for them.
    pub fn run(self) -> Result<RunOutcome, VmError> {
        let shared = self.shared;
        let started = Instant::now();
        let first = instret(&shared);
        let mut threads = Vec::new();
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .map_err(VmError::Thread)
        };
        let mut failed = None;
        for slot in 0..shared.devices.slots.len() {
            let s = shared.clone();
            match spawn(format!("dev{slot}"), Box::new(move || worker_main(s, slot))) {
                Ok(t) => threads.push(t),
                Err(e) => failed = Some(e),
            }
        }
        for h in 0..shared.harts.len() {
            let s = shared.clone();
            match spawn(format!("vcpu{h}"), Box::new(move || vcpu_main(&s, h))) {
                Ok(t) => threads.push(t),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            shared.set_exit(GuestExit::Quit);
            for t in threads {
                let _ = t.join();
            }
            return Err(e);
        }
        let exit = {
            let mut e = lock(&shared.ctl.exit);
            while e.is_none() {
                e = shared
                    .ctl
                    .exit_cv
                    .wait(e)
                    .unwrap_or_else(|p| p.into_inner());
            }
            e.unwrap_or(GuestExit::Quit)
        };
        shared.set_exit(exit);
        for t in threads {
            let _ = t.join();
        }
        shared.devices.flush_console();
        let mut jit = godwit_hart::JitStats::default();
        for h in &shared.harts {
            let s = lock(h).jit_stats();
            jit.blocks += s.blocks;
            jit.invalidations += s.invalidations;
            jit.flushes += s.flushes;
            jit.fence_i += s.fence_i;
            jit.code_checks += s.code_checks;
        }
        Ok(RunOutcome {
            exit,
            instructions: instret(&shared).wrapping_sub(first),
            elapsed: started.elapsed(),
            jit,
        })
    }
}

fn instret(shared: &Shared) -> u64 {
    shared
        .harts
        .iter()
        .map(|h| lock(h).instret())
        .fold(0u64, u64::wrapping_add)
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    fn new<E>(
        board: BoardConfig,
        ram: Arc<GuestRam>,
        clock: GuestClock,
        cmdline: String,
        console: Box<dyn Write + Send>,
        harts: Vec<(Hart, HartRun)>,
        host: Vec<HostDevice>,
        restore: impl FnOnce(&Devices, ()) -> Result<(), E>,
    ) -> Result<Arc<Shared>, E>
    where
        E: From<VmError>,
    {
        let n = board.harts;
        let time = clock;
        let slots = board
            .devices
            .iter()
            .zip(host)
            .enumerate()
            .map(|(i, (d, h))| {
                Ok(Slot {
                    transport: Mutex::new(VirtioMmio::new(
                        host::new_device(i, d, h, &ram)?,
                        ram.clone(),
                    )),
                    irq: VIRTIO_IRQ + i as u32,
                    base: VIRTIO_BASE + i as u64 * VIRTIO_SIZE,
                })
            })
            .collect::<Result<Vec<_>, VmError>>()?;
        let devices = Devices {
            uart: Mutex::new(Uart16550::new(console)),
            plic: Mutex::new(Plic::new(PLIC_SOURCES, 2 * n)),
            clint: Mutex::new(Clint::new(n, Box::new(move || time.ticks()))),
            finisher: Mutex::new(godwit_devices::Finisher::default()),
            slots,
        };
        let workers = (0..devices.slots.len())
            .map(|_| WorkerSignal::new().map_err(VmError::Thread))
            .collect::<Result<Vec<_>, _>>()?;
        // A kick wakes the slot's event thread (also one a restored state
        // had pending).
        for (slot, w) in devices.slots.iter().zip(&workers) {
            let wake = w.wake.clone();
            lock(&slot.transport).set_kick_waker(Arc::new(move || wake.signal()));
        }
        restore(&devices, ())?;
        let sigs = harts
            .iter()
            .map(|(_, run)| HartSignal::new(clock, *run))
            .collect();
        let harts = harts
            .into_iter()
            .map(|(mut hart, _)| {
                hart.set_clock(clock);
                Mutex::new(hart)
            })
            .collect();
        Ok(Arc::new(Shared {
            board,
            ram,
            clock,
            cmdline,
            devices,
            harts,
            sigs,
            workers,
            worker_ctl: Workers::default(),
            ctl: RunCtl::default(),
            acks: Mutex::new(()),
            acks_cv: Condvar::new(),
        }))
    }
}

/// The VM with every vCPU stopped, for [`VmHandle::exec`].
pub struct Machine<'a> {
    stopped: Stopped<'a>,
    shared: &'a Shared,
}

impl<'a> Machine<'a> {
    pub(crate) fn shared(&self) -> &Shared {
        self.shared
    }

    /// Every hart, by id.
    pub fn harts(&mut self) -> &mut [MutexGuard<'a, Hart>] {
        &mut self.stopped.harts
    }

    /// Guest RAM.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.shared.ram
    }

    /// The board.
    pub fn board(&self) -> &BoardConfig {
        &self.shared.board
    }

    /// How long stopping the vCPUs took (until the last one was out).
    pub fn stop_latency(&self) -> Duration {
        self.stopped.latency
    }

    /// Turns the dirty log on (cleared) or off. The harts drop their cached
    /// write translations in the same step: with logging on, the first
    /// store to every page goes through the log.
    pub fn set_dirty_logging(&mut self, on: bool) {
        self.shared.ram.set_logging(on);
        for h in self.stopped.harts.iter_mut() {
            h.tlb_flush_writes();
        }
    }

    /// Makes every hart drop its cached write translations, so that its next
    /// store to any page goes through the dirty log and free map (after
    /// pages were marked free from outside the harts).
    pub fn flush_write_translations(&mut self) {
        for h in self.stopped.harts.iter_mut() {
            h.tlb_flush_writes();
        }
    }

    /// Fetches and clears the dirty log (one bit per page, as `u64` words).
    /// The harts' cached write translations go with it, so the next store
    /// to any page of the log sets its bit again.
    pub fn take_dirty_log(&mut self) -> Vec<u64> {
        let words = self.shared.ram.dirty_log().take();
        for h in self.stopped.harts.iter_mut() {
            h.tlb_flush_writes();
        }
        words
    }

    /// The RAM pages the harts used last (their TLBs' pages), sorted.
    pub fn hot_pages(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .stopped
            .harts
            .iter()
            .flat_map(|h| h.tlb_ram_pages())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Instructions retired by all harts.
    pub fn instret(&self) -> u64 {
        self.stopped
            .harts
            .iter()
            .map(|h| h.instret())
            .fold(0u64, u64::wrapping_add)
    }

    /// The complete machine state (not RAM). Only meaningful while the VM
    /// is paused ([`VmHandle::pause`]): then the devices are drained too.
    pub fn save_state(&mut self) -> VmState {
        // What other harts asked of a hart that is out (an SBI IPI above
        // all) is served only when it runs again: fold it into the hart
        // now, or the state would lose it (a reschedule IPI lost this way
        // left a migrated guest's idle hart asleep until its next timer).
        for (id, h) in self.stopped.harts.iter_mut().enumerate() {
            crate::vcpu::serve(self.shared, h, id);
        }
        let d = &self.shared.devices;
        d.flush_console();
        VmState {
            board: self.shared.board.clone(),
            harts: self
                .stopped
                .harts
                .iter()
                .zip(&self.shared.sigs)
                .map(|(h, sig)| SavedHart {
                    cpu: h.state(),
                    run: sig.run_state(),
                })
                .collect(),
            clock: self.shared.clock.save(),
            uart: lock(&d.uart).state(),
            plic: lock(&d.plic).state(),
            clint: lock(&d.clint).state(),
            devices: d.slots.iter().map(|s| lock(&s.transport).state()).collect(),
            free_pages: self.shared.ram.free_map().snapshot(),
            cmdline: self.shared.cmdline.clone(),
        }
    }
}

impl Machine<'_> {
    /// Replaces the state of this VM, paused, with `state` (taken from the
    /// same board), in place: every hart, its HSM state, the UART, PLIC,
    /// CLINT, every device and the free map. Guest RAM must already hold
    /// the memory that goes with it. The clock is not set back: the caller
    /// makes sure this VM's clock has reached the state's time
    /// ([`VmHandle::clock_ns`]), so the guest never sees time go back.
    /// Every part is checked before any is changed where the device allows;
    /// a device that refuses its part leaves the VM paused and its state
    /// mixed, so the caller must not resume it then.
    pub fn load_state(&mut self, state: &VmState) -> Result<(), RestoreError> {
        let shared = self.shared;
        shared.board.compare(&state.board)?;
        if state.harts.len() != self.stopped.harts.len()
            || state.devices.len() != shared.devices.slots.len()
        {
            return Err(RestoreError::Inconsistent(format!(
                "the state has {} harts and {} devices, this VM {} and {}",
                state.harts.len(),
                state.devices.len(),
                self.stopped.harts.len(),
                shared.devices.slots.len()
            )));
        }
        let d = &shared.devices;
        lock(&d.plic).restore(&state.plic)?;
        lock(&d.clint).restore(&state.clint)?;
        for (slot, s) in d.slots.iter().zip(&state.devices) {
            lock(&slot.transport).restore(s)?;
        }
        lock(&d.uart).restore(&state.uart);
        for ((hart, sig), s) in self
            .stopped
            .harts
            .iter_mut()
            .zip(&shared.sigs)
            .zip(&state.harts)
        {
            hart.restore(&s.cpu);
            sig.set_run_state(s.run);
        }
        shared.ram.free_map().load_from(&state.free_pages);
        let sigs = shared.signals();
        d.sync_clint(sigs);
        d.sync_uart(sigs);
        for slot in 0..d.slots.len() {
            d.sync_slot(sigs, slot);
        }
        Ok(())
    }
}

/// What [`VmHandle::pause_within`] achieved.
#[derive(Debug, Clone)]
pub struct PauseOutcome {
    /// Until the last vCPU was out (or the limit).
    pub latency: Duration,
    /// vCPUs still inside an instruction (they stop when it completes).
    pub vcpus: Vec<usize>,
    /// Device slots whose thread is still busy.
    pub devices: Vec<usize>,
}

/// A handle on a VM for other threads.
#[derive(Clone)]
pub struct VmHandle {
    shared: Arc<Shared>,
}

impl VmHandle {
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Guest RAM.
    pub fn ram(&self) -> Arc<GuestRam> {
        self.shared.ram.clone()
    }

    /// The board.
    pub fn board(&self) -> &BoardConfig {
        &self.shared.board
    }

    /// The kernel command line the VM booted with.
    pub fn cmdline(&self) -> &str {
        &self.shared.cmdline
    }

    /// Queues console input for the guest (held while the VM is paused).
    pub fn push_input(&self, data: &[u8]) {
        if self.is_paused() {
            let mut q = lock(&self.shared.ctl.input);
            let room = 65536usize.saturating_sub(q.len());
            q.extend(data.iter().copied().take(room));
            return;
        }
        lock(&self.shared.devices.uart).push_input(data);
        self.shared.devices.sync_uart(self.shared.signals());
    }

    /// Runs `f` with every vCPU stopped, on the calling thread; the vCPUs
    /// go on (unless paused) when it returns.
    pub fn exec<R>(&self, f: impl FnOnce(&mut Machine) -> R) -> Result<R, VmGone> {
        if self.shared.exited() {
            return Err(VmGone);
        }
        let stopped = stop_harts(&self.shared);
        let mut m = Machine {
            stopped,
            shared: &self.shared,
        };
        Ok(f(&mut m))
    }

    /// Throttles every vCPU to `1 - permille / 1000` of its time (0: off,
    /// at most [`MAX_THROTTLE`]): a running vCPU sleeps after each stretch
    /// of running, as long as the stretch times `permille / (1000 -
    /// permille)`. Pre-copy's auto-converge slows a guest that dirties
    /// memory faster than the link sends it.
    pub fn set_throttle(&self, permille: u32) {
        let p = permille.min(MAX_THROTTLE);
        self.shared.ctl.throttle.store(p, SeqCst);
        if p == 0 {
            for s in &self.shared.sigs {
                s.kick();
            }
        }
    }

    /// Time the vCPUs slept for the throttle so far, summed over vCPUs.
    pub fn throttled(&self) -> Duration {
        Duration::from_nanos(self.shared.ctl.throttled_ns.load(SeqCst))
    }

    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.shared.ctl.paused.load(SeqCst)
    }

    /// Whether the VM has ended.
    pub fn is_gone(&self) -> bool {
        self.shared.exited()
    }

    /// Pauses the VM: stops every vCPU, then drains the device threads.
    /// Returns how long the vCPUs took to stop (until the last one).
    pub fn pause(&self) -> Result<Duration, VmGone> {
        if self.shared.exited() {
            return Err(VmGone);
        }
        self.shared.ctl.paused.store(true, SeqCst);
        let latency = stop_harts(&self.shared).latency;
        self.shared.worker_ctl.quiesce(&self.shared);
        self.shared.devices.flush_console();
        Ok(latency)
    }

    /// [`pause`](Self::pause) that waits at most `limit` for the vCPUs and
    /// then as long again for the device threads. The VM is paused either
    /// way: a vCPU or device thread still inside a guest memory access (a
    /// post-copy page that has not arrived) stops as soon as it is done.
    pub fn pause_within(&self, limit: Duration) -> Result<PauseOutcome, VmGone> {
        if self.shared.exited() {
            return Err(VmGone);
        }
        self.shared.ctl.paused.store(true, SeqCst);
        let (latency, vcpus) = stop_harts_within(&self.shared, limit);
        let devices = self
            .shared
            .worker_ctl
            .quiesce_within(&self.shared, Some(limit));
        if vcpus.is_empty() && devices.is_empty() {
            self.shared.devices.flush_console();
        }
        Ok(PauseOutcome {
            latency,
            vcpus,
            devices,
        })
    }

    /// Resumes a paused VM: devices first, then the vCPUs.
    pub fn resume(&self) -> Result<(), VmGone> {
        if self.shared.exited() {
            return Err(VmGone);
        }
        self.shared.worker_ctl.resume(&self.shared);
        self.shared.ctl.paused.store(false, SeqCst);
        self.shared.wake_parked();
        let held: Vec<u8> = lock(&self.shared.ctl.input).drain(..).collect();
        if !held.is_empty() {
            self.push_input(&held);
        }
        Ok(())
    }

    /// Ends the VM: [`Vm::run`] returns [`GuestExit::Quit`].
    pub fn quit(&self) -> Result<(), VmGone> {
        if self.shared.exited() {
            return Err(VmGone);
        }
        self.shared.set_exit(GuestExit::Quit);
        Ok(())
    }

    /// Guest time now, in nanoseconds.
    pub fn clock_ns(&self) -> u64 {
        self.shared.clock.now_ns()
    }

    /// Loads `state` into this paused VM in place ([`Machine::load_state`]).
    pub fn load_state(&self, state: &VmState) -> Result<(), RestoreError> {
        if !self.is_paused() {
            return Err(RestoreError::Inconsistent(
                "a state can only be loaded into a paused VM".into(),
            ));
        }
        self.exec(|m| m.load_state(state))
            .map_err(|e| RestoreError::Inconsistent(e.to_string()))?
    }

    /// The complete machine state; the VM must be paused.
    pub fn save_state(&self) -> Result<VmState, VmGone> {
        debug_assert!(self.is_paused(), "state saved from a running VM");
        self.exec(|m| m.save_state())
    }

    /// Runs `f` on the device in `slot` if it is a `T` (host-side
    /// control), then lets the device's thread act on the change.
    pub fn with_device<T: 'static, R>(
        &self,
        slot: usize,
        f: impl FnOnce(&mut T) -> R,
    ) -> Option<R> {
        let s = self.shared.devices.slots.get(slot)?;
        let r = {
            let mut t = lock(&s.transport);
            f(t.device_as_mut::<T>()?)
        };
        if let Some(w) = self.shared.workers.get(slot) {
            w.wake.signal();
        }
        Some(r)
    }

    /// Runs `f` on the board's balloon, if it has one (see [`with_device`](Self::with_device)).
    pub fn with_balloon<R>(&self, f: impl FnOnce(&mut Balloon) -> R) -> Option<R> {
        let slot = self.shared.board.slot_of(&DeviceConfig::Balloon)?;
        self.with_device(slot, f)
    }

    /// Turns the translator on or off on every hart; returns whether it is
    /// on (it cannot be where executable memory is unavailable).
    pub fn set_jit(&self, on: bool) -> Result<bool, VmGone> {
        self.exec(|m| {
            let mut all = true;
            for h in m.harts() {
                all &= h.set_jit(on);
            }
            all
        })
    }
}

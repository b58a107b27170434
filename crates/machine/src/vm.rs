//! Building a VM, its run loop on the vCPU thread, and the handle other
//! threads use to pause it, resume it, and reach into it.
//!
//! Other threads never touch the hart or the devices directly: they send a
//! job (a closure) through [`VmHandle::exec`], and the vCPU thread runs it
//! between two instruction slices, where the machine is in a consistent
//! state. Pausing is such a job plus a flag that keeps the vCPU parked (but
//! still serving jobs) until a resume job clears it.

use crate::bus::SystemBus;
use crate::layout::*;
use crate::sbi::{self, ResetRequest};
use crate::state::VmState;
use crate::{fdt, loader};
use godwit_devices::{Balloon, BalloonDevice, BalloonFeatures, Clint, Plic, Uart16550, VirtioMmio};
use godwit_hart::{Exit, GuestClock, Hart};
use godwit_memory::GuestRam;
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Instructions per run slice: between slices the loop checks the timer,
/// console input and jobs from other threads.
const SLICE: u64 = 20_000;
/// Longest sleep in `wfi` before the loop looks around again.
const MAX_IDLE: Duration = Duration::from_millis(20);
/// How often host-side balloon work (config changes, stats) is polled.
const BALLOON_POLL: Duration = Duration::from_millis(20);

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot read {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("memory size {0} bytes is out of range: it must be between 32 MiB and 64 GiB, a multiple of 4 KiB")]
    MemSize(u64),
    #[error(transparent)]
    Load(#[from] loader::LoadError),
    #[error(transparent)]
    Memory(#[from] godwit_memory::MemoryError),
    #[error("cannot build the device tree: {0}")]
    Fdt(String),
    #[error("cannot restore the VM state: {0}")]
    Restore(String),
}

/// How the VM ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest powered off.
    PowerOff,
    /// The guest powered off giving "system failure" as the reason.
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
}

/// What to boot.
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub mem_bytes: u64,
    pub cmdline: String,
    /// Where the guest console goes.
    pub console: Box<dyn Write + Send>,
    /// Whether the board has a virtio-balloon (slot 0).
    pub balloon: bool,
}

type Job = Box<dyn FnOnce(&mut Vm) + Send>;

#[derive(Default)]
struct Pending {
    input: VecDeque<u8>,
    jobs: VecDeque<Job>,
    /// The run loop has returned: no job will ever run again.
    gone: bool,
}

/// What the vCPU thread shares with everyone else.
#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Set when `pending` has something: the run loop's only per-slice check.
    attention: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The vCPU thread is gone (the VM ended).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the VM is not running any more")]
pub struct VmGone;

/// A handle on a running VM for other threads.
#[derive(Clone)]
pub struct VmHandle {
    shared: Arc<Shared>,
}

impl VmHandle {
    /// Queues console input for the guest.
    pub fn push_input(&self, data: &[u8]) {
        let mut p = self.shared.lock();
        let room = 65536usize.saturating_sub(p.input.len());
        p.input.extend(data.iter().copied().take(room));
        self.shared.attention.store(true, Ordering::Release);
        self.shared.wake.notify_all();
    }

    /// Runs `f` on the vCPU thread between two slices and returns its result.
    pub fn exec<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vm) -> R + Send + 'static,
    ) -> Result<R, VmGone> {
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut p = self.shared.lock();
            if p.gone {
                return Err(VmGone);
            }
            p.jobs.push_back(Box::new(move |vm| {
                let _ = tx.send(f(vm));
            }));
            self.shared.attention.store(true, Ordering::Release);
            self.shared.wake.notify_all();
        }
        rx.recv().map_err(|_| VmGone)
    }

    /// Pauses the vCPU; returns how long it took to stop.
    pub fn pause(&self) -> Result<Duration, VmGone> {
        let t = Instant::now();
        self.exec(|vm| vm.paused = true)?;
        Ok(t.elapsed())
    }

    /// Resumes a paused vCPU.
    pub fn resume(&self) -> Result<(), VmGone> {
        self.exec(|vm| vm.paused = false)
    }

    /// Ends the VM: the run loop returns [`GuestExit::Quit`].
    pub fn quit(&self) -> Result<(), VmGone> {
        self.exec(|vm| vm.quit = true)
    }
}

/// A virtual machine: one hart, its devices and guest RAM.
pub struct Vm {
    pub hart: Hart,
    pub bus: SystemBus,
    pub ram: Arc<GuestRam>,
    /// The kernel command line it was booted with (kept for snapshots).
    pub cmdline: String,
    shared: Arc<Shared>,
    paused: bool,
    quit: bool,
    last_poll: Instant,
}

fn read_file(p: &PathBuf) -> Result<Vec<u8>, VmError> {
    std::fs::read(p).map_err(|err| VmError::Read {
        path: p.display().to_string(),
        err,
    })
}

/// Checks a RAM size against what the board supports.
pub fn check_mem(bytes: u64) -> Result<(), VmError> {
    if !(MIN_RAM..=MAX_RAM).contains(&bytes) || !bytes.is_multiple_of(4096) {
        return Err(VmError::MemSize(bytes));
    }
    Ok(())
}

impl Vm {
    /// Builds the board and loads the guest.
    pub fn new(cfg: VmConfig) -> Result<Vm, VmError> {
        check_mem(cfg.mem_bytes)?;
        let kernel = read_file(&cfg.kernel)?;
        let initrd = cfg.initrd.as_ref().map(read_file).transpose()?;
        let ram = Arc::new(GuestRam::new(RAM_BASE, cfg.mem_bytes as usize)?);
        let place = loader::load(
            &ram,
            &cfg.kernel.display().to_string(),
            &kernel,
            initrd.as_deref(),
        )?;
        let blob = fdt::build(&fdt::FdtConfig {
            ram_base: RAM_BASE,
            ram_size: cfg.mem_bytes,
            harts: 1,
            bootargs: &cfg.cmdline,
            initrd: place.initrd,
            virtio_slots: cfg.balloon as u32,
        })
        .map_err(|e| VmError::Fdt(e.to_string()))?;
        if blob.len() as u64 > loader::DTB_RESERVE {
            return Err(VmError::Fdt(format!(
                "device tree is {} bytes, more than the space kept for it",
                blob.len()
            )));
        }
        ram.write(place.dtb, &blob)?;
        let hart = Hart::new(0, ram.clone(), place.kernel_entry, place.dtb);
        Ok(Vm::assemble(
            hart,
            ram,
            cfg.console,
            cfg.balloon,
            cfg.cmdline,
        ))
    }

    /// Builds an empty board of `mem_bytes` RAM for a VM whose state and
    /// memory will be loaded from a snapshot or a migration.
    pub fn empty(
        mem_bytes: u64,
        console: Box<dyn Write + Send>,
        balloon: bool,
    ) -> Result<Vm, VmError> {
        check_mem(mem_bytes)?;
        let ram = Arc::new(GuestRam::new(RAM_BASE, mem_bytes as usize)?);
        let hart = Hart::new(0, ram.clone(), RAM_BASE, 0);
        Ok(Vm::assemble(hart, ram, console, balloon, String::new()))
    }

    fn assemble(
        hart: Hart,
        ram: Arc<GuestRam>,
        console: Box<dyn Write + Send>,
        balloon: bool,
        cmdline: String,
    ) -> Vm {
        let bus = SystemBus {
            uart: Uart16550::new(console),
            plic: Plic::new(PLIC_SOURCES, 2),
            clint: clint_for(*hart.clock()),
            balloon: balloon.then(|| new_balloon(&ram)),
        };
        Vm {
            hart,
            bus,
            ram,
            cmdline,
            shared: Arc::new(Shared::default()),
            paused: false,
            quit: false,
            last_poll: Instant::now(),
        }
    }

    /// A handle for other threads (console input, pause/resume, jobs).
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            shared: self.shared.clone(),
        }
    }

    /// Whether the vCPU is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Pauses or resumes from the vCPU thread itself (e.g. start paused).
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Turns the dirty log on (cleared) or off. On the vCPU thread, so the
    /// write translations the vCPU cached are dropped in the same step: with
    /// logging on, the first store to every page goes through the log.
    pub fn set_dirty_logging(&mut self, on: bool) {
        self.ram.set_logging(on);
        self.hart.tlb_flush_writes();
    }

    /// Fetches and clears the dirty log (one bit per page, as `u64` words).
    /// The vCPU's cached write translations go with it, so the next store to
    /// any page of the log sets its bit again.
    pub fn take_dirty_log(&mut self) -> Vec<u64> {
        let words = self.ram.dirty_log().take();
        self.hart.tlb_flush_writes();
        words
    }

    /// Captures the complete machine state (not RAM).
    pub fn save_state(&mut self) -> VmState {
        self.bus.uart.flush();
        VmState {
            hart: self.hart.state(),
            uart: self.bus.uart.state(),
            plic: self.bus.plic.state(),
            clint: self.bus.clint.state(),
            balloon: self.bus.balloon.as_ref().map(|b| b.state()),
            ram_bytes: self.ram.size() as u64,
            free_pages: self.ram.free_map().snapshot(),
            cmdline: self.cmdline.clone(),
        }
    }

    /// Loads a state captured by [`Vm::save_state`] (RAM is loaded separately).
    pub fn restore_state(&mut self, s: &VmState) -> Result<(), VmError> {
        if s.ram_bytes != self.ram.size() as u64 {
            return Err(VmError::Restore(format!(
                "state is for {} bytes of RAM, this VM has {}",
                s.ram_bytes,
                self.ram.size()
            )));
        }
        match (&mut self.bus.balloon, &s.balloon) {
            (Some(b), Some(bs)) => b.restore(bs).map_err(|e| VmError::Restore(e.to_string()))?,
            (None, None) => {}
            _ => {
                return Err(VmError::Restore(
                    "the state and this VM disagree on having a balloon".into(),
                ))
            }
        }
        self.bus
            .plic
            .restore(&s.plic)
            .map_err(|e| VmError::Restore(e.to_string()))?;
        self.hart.restore(&s.hart);
        self.bus.clint = clint_for(*self.hart.clock());
        self.bus
            .clint
            .restore(&s.clint)
            .map_err(|e| VmError::Restore(e.to_string()))?;
        self.bus.uart.restore(&s.uart);
        self.ram.free_map().load_from(&s.free_pages);
        self.cmdline = s.cmdline.clone();
        Ok(())
    }

    /// Runs the guest until it powers off, reboots, or is told to quit.
    /// Jobs sent after that fail with [`VmGone`] instead of waiting.
    pub fn run(&mut self) -> GuestExit {
        let exit = self.run_loop();
        let mut p = self.shared.lock();
        p.gone = true;
        p.jobs.clear(); // dropping a job's sender answers its caller: VmGone
        exit
    }

    fn run_loop(&mut self) -> GuestExit {
        loop {
            if self.shared.attention.load(Ordering::Acquire) || self.paused {
                self.service();
            }
            if self.quit {
                self.bus.uart.flush();
                return GuestExit::Quit;
            }
            self.hart.update_timer();
            let lines = godwit_hart::Bus::irq_lines(&mut self.bus);
            self.hart.set_irq_lines(lines);
            match self.hart.run(&mut self.bus, SLICE) {
                Exit::Budget => {}
                Exit::Sbi => {
                    if let Some(req) = sbi::handle(&mut self.hart, &mut self.bus) {
                        self.bus.uart.flush();
                        return match req {
                            ResetRequest::Shutdown { failure: false } => GuestExit::PowerOff,
                            ResetRequest::Shutdown { failure: true } => GuestExit::Failure,
                            ResetRequest::Reboot => GuestExit::Reboot,
                        };
                    }
                }
                Exit::Wfi => self.idle(),
            }
            if self.last_poll.elapsed() >= BALLOON_POLL {
                self.poll_devices();
            }
        }
    }

    /// Host-side device work: balloon config changes and stats.
    fn poll_devices(&mut self) {
        self.last_poll = Instant::now();
        self.bus.uart.flush();
        if let Some(b) = &mut self.bus.balloon {
            b.poll();
            if b.device_mut().take_free_map_changed() {
                self.hart.tlb_flush_writes();
            }
        }
    }

    /// Runs queued jobs and console input; parks here while paused.
    fn service(&mut self) {
        loop {
            let (input, jobs) = {
                let mut p = self.shared.lock();
                self.shared.attention.store(false, Ordering::Release);
                if p.jobs.is_empty() && self.paused && !self.quit {
                    p = self
                        .shared
                        .wake
                        .wait_timeout(p, Duration::from_millis(100))
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                let input: Vec<u8> = if self.paused {
                    Vec::new()
                } else {
                    p.input.drain(..).collect()
                };
                (input, std::mem::take(&mut p.jobs))
            };
            if !input.is_empty() {
                self.bus.uart.push_input(&input);
            }
            for job in jobs {
                job(self);
            }
            if !self.paused || self.quit {
                return;
            }
        }
    }

    /// `wfi`: sleep until the timer deadline, console input or a job.
    fn idle(&mut self) {
        self.bus.uart.flush();
        self.hart.update_timer();
        if self.hart.interrupt_waiting() {
            return;
        }
        let ns = self.hart.clock().ns_until(self.hart.timer_deadline());
        let d = Duration::from_nanos(ns).min(MAX_IDLE);
        if !d.is_zero() {
            let p = self.shared.lock();
            if !self.shared.attention.load(Ordering::Acquire) {
                let _ = self.shared.wake.wait_timeout(p, d);
            }
        }
    }
}

fn clint_for(clock: GuestClock) -> Clint {
    Clint::new(1, Box::new(move || clock.ticks()))
}

fn new_balloon(ram: &Arc<GuestRam>) -> BalloonDevice {
    VirtioMmio::new(Balloon::new(BalloonFeatures::default(), ram), ram.clone())
}

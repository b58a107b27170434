//! Building a VM from a kernel, an initrd and a command line, and running it.

use crate::bus::SystemBus;
use crate::layout::*;
use crate::sbi::{self, ResetRequest};
use crate::{fdt, loader};
use godwit_devices::{Clint, Plic, Uart16550};
use godwit_hart::{Exit, GuestClock, Hart};
use godwit_memory::GuestRam;
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Instructions per run slice: between slices the loop checks the timer,
/// console input and requests from other threads.
const SLICE: u64 = 20_000;
/// Longest sleep in `wfi` before the loop looks around again.
const MAX_IDLE: Duration = Duration::from_millis(50);

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
}

/// How the guest ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest powered off.
    PowerOff,
    /// The guest powered off giving "system failure" as the reason.
    Failure,
    /// The guest asked for a reboot (Godwit ends the VM instead).
    Reboot,
}

impl GuestExit {
    /// Process exit status for this ending: 0 power-off, 1 failure, 3 reboot.
    pub fn status(self) -> i32 {
        match self {
            GuestExit::PowerOff => 0,
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
}

/// Console input and wake-ups shared with other threads.
#[derive(Default)]
pub struct VmInput {
    bytes: Mutex<VecDeque<u8>>,
    wake: Condvar,
}

impl VmInput {
    /// Queues console input for the guest and wakes the vCPU.
    pub fn push(&self, data: &[u8]) {
        let mut q = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let room = 65536usize.saturating_sub(q.len());
        q.extend(data.iter().copied().take(room));
        self.wake.notify_all();
    }

    fn take(&self) -> Vec<u8> {
        let mut q = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        q.drain(..).collect()
    }

    /// Sleeps up to `d` or until input arrives.
    fn sleep(&self, d: Duration) {
        let q = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        if q.is_empty() {
            let _ = self.wake.wait_timeout(q, d);
        }
    }
}

/// A virtual machine: one hart, its devices and guest RAM.
pub struct Vm {
    pub hart: Hart,
    pub bus: SystemBus,
    pub ram: Arc<GuestRam>,
    input: Arc<VmInput>,
}

fn read_file(p: &PathBuf) -> Result<Vec<u8>, VmError> {
    std::fs::read(p).map_err(|err| VmError::Read {
        path: p.display().to_string(),
        err,
    })
}

impl Vm {
    /// Builds the board and loads the guest.
    pub fn new(cfg: VmConfig) -> Result<Vm, VmError> {
        if !(MIN_RAM..=MAX_RAM).contains(&cfg.mem_bytes) || !cfg.mem_bytes.is_multiple_of(4096) {
            return Err(VmError::MemSize(cfg.mem_bytes));
        }
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
            virtio_slots: 0,
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
        let clock: GuestClock = *hart.clock();
        let bus = SystemBus {
            uart: Uart16550::new(cfg.console),
            plic: Plic::new(PLIC_SOURCES, 2),
            clint: Clint::new(1, Box::new(move || clock.ticks())),
            balloon: None,
        };
        Ok(Vm {
            hart,
            bus,
            ram,
            input: Arc::new(VmInput::default()),
        })
    }

    /// The handle other threads use to type into the guest console.
    pub fn input(&self) -> Arc<VmInput> {
        self.input.clone()
    }

    /// Runs the guest until it powers off or reboots.
    pub fn run(&mut self) -> GuestExit {
        loop {
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
            let typed = self.input.take();
            if !typed.is_empty() {
                self.bus.uart.push_input(&typed);
            }
        }
    }

    /// `wfi`: sleep until the timer deadline or console input.
    fn idle(&mut self) {
        self.bus.uart.flush();
        self.hart.update_timer();
        if self.hart.interrupt_waiting() {
            return;
        }
        let ns = self.hart.clock().ns_until(self.hart.timer_deadline());
        let d = Duration::from_nanos(ns).min(MAX_IDLE);
        if !d.is_zero() {
            self.input.sleep(d);
        }
    }
}

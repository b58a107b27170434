//! The devices every thread of a VM shares, and the system bus: routing of
//! a hart's physical accesses outside RAM to them, and the wiring of their
//! interrupt lines to the harts.
//!
//! Every device sits behind its own lock; a hart holds one only for the
//! duration of one register access, and nobody waits for anything else
//! while holding one (so a thread that stops the vCPUs never deadlocks
//! against a vCPU blocked on a device).

use crate::layout::*;
use crate::sbi::SbiHost;
use crate::vcpu::HartSignal;
use godwit_devices::{Clint, Finisher, FinisherRequest, MmioDevice, Plic, Uart16550, VirtioMmio};
use godwit_hart::{irq, Bus};
use std::sync::{Mutex, MutexGuard};

/// Locks a device; a panic elsewhere while it was held leaves the device
/// usable (its registers are plain data).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One virtio-mmio slot: the transport (and device behind it) and what
/// wakes the device's event thread.
pub(crate) struct Slot {
    pub transport: Mutex<VirtioMmio>,
    pub irq: u32,
    pub base: u64,
}

/// Every device of the board.
pub(crate) struct Devices {
    pub uart: Mutex<Uart16550>,
    pub plic: Mutex<Plic>,
    pub clint: Mutex<Clint>,
    pub finisher: Mutex<Finisher>,
    pub slots: Vec<Slot>,
}

impl Devices {
    /// Drives PLIC source `source` to `level`, then every hart's MEIP and
    /// SEIP from its two contexts (2h: M-mode, 2h+1: S-mode).
    pub fn set_irq(&self, harts: &[HartSignal], source: u32, level: bool) {
        let mut plic = lock(&self.plic);
        plic.set_level(source, level);
        Self::drive_harts(&plic, harts);
    }

    /// Re-drives every hart's external interrupt lines from the PLIC (after
    /// a claim or complete, which change what is pending everywhere).
    fn drive_harts(plic: &Plic, harts: &[HartSignal]) {
        for (h, sig) in harts.iter().enumerate() {
            let h = h as u32;
            let mut lines = 0;
            if plic.context_pending(2 * h) {
                lines |= irq::MEIP;
            }
            if plic.context_pending(2 * h + 1) {
                lines |= irq::SEIP;
            }
            sig.set_lines(irq::MEIP | irq::SEIP, lines);
        }
    }

    /// Copies the CLINT's per-hart registers (MSIP, `mtimecmp`) to the
    /// harts' signals, where the vCPU threads read them without the lock.
    fn drive_clint(clint: &Clint, harts: &[HartSignal]) {
        for (h, sig) in harts.iter().enumerate() {
            let h = h as u32;
            sig.set_lines(irq::MSIP, if clint.msip(h) { irq::MSIP } else { 0 });
            sig.set_mtimecmp(clint.mtimecmp(h));
        }
    }

    /// The UART's line to the PLIC, after anything that may change it.
    ///
    /// The level is read and driven under the device's lock (lock order:
    /// device, then PLIC). Read outside it, two threads could drive the
    /// line in the opposite order they read it: a vCPU acknowledging an
    /// interrupt reads "low", the device's thread raises a new one and
    /// drives "high", then the vCPU drives its stale "low" and the
    /// interrupt is lost for good (the guest waits on a completion that
    /// it is never told about).
    pub fn sync_uart(&self, harts: &[HartSignal]) {
        let uart = lock(&self.uart);
        self.set_irq(harts, UART_IRQ, uart.irq_level());
    }

    /// A virtio slot's line to the PLIC, after anything that may change it
    /// (under the transport's lock, as in [`sync_uart`](Self::sync_uart)).
    pub fn sync_slot(&self, harts: &[HartSignal], slot: usize) {
        let Some(s) = self.slots.get(slot) else {
            return;
        };
        let transport = lock(&s.transport);
        self.set_irq(harts, s.irq, transport.irq_level());
    }

    /// The CLINT's outputs, after a restore.
    pub fn sync_clint(&self, harts: &[HartSignal]) {
        Self::drive_clint(&lock(&self.clint), harts);
    }

    /// Flushes the console.
    pub fn flush_console(&self) {
        lock(&self.uart).flush();
    }

    /// A power-off or reset the guest asked the `sifive,test0` register for.
    pub fn take_finisher_request(&self) -> Option<FinisherRequest> {
        lock(&self.finisher).take_request()
    }
}

/// Which device an address falls in.
enum Target {
    Finisher(u64),
    Uart(u64),
    Plic(u64),
    Clint(u64),
    Slot(usize, u64),
}

fn route(devices: &Devices, addr: u64) -> Option<Target> {
    let in_range = |base: u64, size: u64| addr >= base && addr - base < size;
    if in_range(FINISHER_BASE, FINISHER_SIZE) {
        Some(Target::Finisher(addr - FINISHER_BASE))
    } else if in_range(UART_BASE, UART_SIZE) {
        Some(Target::Uart(addr - UART_BASE))
    } else if in_range(PLIC_BASE, PLIC_SIZE) {
        Some(Target::Plic(addr - PLIC_BASE))
    } else if in_range(CLINT_BASE, CLINT_SIZE) {
        Some(Target::Clint(addr - CLINT_BASE))
    } else if in_range(VIRTIO_BASE, VIRTIO_SIZE * u64::from(VIRTIO_SLOTS)) {
        let slot = ((addr - VIRTIO_BASE) / VIRTIO_SIZE) as usize;
        let s = devices.slots.get(slot)?;
        Some(Target::Slot(slot, addr - s.base))
    } else {
        None
    }
}

/// The bus as one hart sees it.
pub(crate) struct HartBus<'a> {
    pub devices: &'a Devices,
    pub harts: &'a [HartSignal],
    pub hart: usize,
}

impl HartBus<'_> {
    fn access(
        &mut self,
        addr: u64,
        f: impl FnOnce(&mut dyn MmioDevice, u64) -> u64,
    ) -> Option<u64> {
        let d = self.devices;
        match route(d, addr)? {
            Target::Finisher(off) => Some(f(&mut *lock(&d.finisher), off)),
            Target::Uart(off) => {
                let v = f(&mut *lock(&d.uart), off);
                d.sync_uart(self.harts);
                Some(v)
            }
            Target::Plic(off) => {
                let mut plic = lock(&d.plic);
                let v = f(&mut *plic, off);
                Devices::drive_harts(&plic, self.harts);
                Some(v)
            }
            Target::Clint(off) => {
                let mut clint = lock(&d.clint);
                let v = f(&mut *clint, off);
                Devices::drive_clint(&clint, self.harts);
                Some(v)
            }
            Target::Slot(slot, off) => {
                let v = f(&mut *lock(&d.slots[slot].transport), off);
                d.sync_slot(self.harts, slot);
                Some(v)
            }
        }
    }
}

impl Bus for HartBus<'_> {
    fn load(&mut self, addr: u64, size: u8) -> Option<u64> {
        self.access(addr, |dev, off| dev.read(off, size))
    }

    fn store(&mut self, addr: u64, size: u8, value: u64) -> bool {
        self.access(addr, |dev, off| {
            dev.write(off, size, value);
            0
        })
        .is_some()
    }

    fn irq_lines(&mut self) -> u64 {
        self.harts[self.hart].lines()
    }
}

impl SbiHost for HartBus<'_> {
    fn console_putchar(&mut self, byte: u8) {
        // The legacy SBI console and the UART share one output stream.
        lock(&self.devices.uart).write(0, 1, byte as u64);
        self.devices.sync_uart(self.harts);
    }

    fn console_getchar(&mut self) -> Option<u8> {
        let byte = {
            let mut uart = lock(&self.devices.uart);
            if uart.pending_input() == 0 {
                return None;
            }
            uart.read(0, 1) as u8
        };
        self.devices.sync_uart(self.harts);
        Some(byte)
    }
}

//! The system bus: routes physical accesses outside RAM to the devices and
//! folds their interrupt lines into the hart's external interrupt bits.

use crate::layout::*;
use crate::sbi::SbiHost;
use godwit_devices::{BalloonDevice, Clint, MmioDevice, Plic, Uart16550};
use godwit_hart::{irq, Bus};

/// Every device of the board.
pub struct SystemBus {
    pub uart: Uart16550,
    pub plic: Plic,
    pub clint: Clint,
    pub balloon: Option<BalloonDevice>,
}

impl SystemBus {
    /// Re-drives the PLIC sources from the devices' interrupt lines.
    pub fn sync_irqs(&mut self) {
        let uart = self.uart.irq_level();
        self.plic.set_level(UART_IRQ, uart);
        if let Some(b) = &self.balloon {
            let level = b.irq_level();
            self.plic.set_level(VIRTIO_IRQ, level);
        }
    }

    fn device(&mut self, addr: u64) -> Option<(&mut dyn MmioDevice, u64)> {
        let in_range = |base: u64, size: u64| addr >= base && addr - base < size;
        if in_range(UART_BASE, UART_SIZE) {
            Some((&mut self.uart, addr - UART_BASE))
        } else if in_range(PLIC_BASE, PLIC_SIZE) {
            Some((&mut self.plic, addr - PLIC_BASE))
        } else if in_range(CLINT_BASE, CLINT_SIZE) {
            Some((&mut self.clint, addr - CLINT_BASE))
        } else if in_range(VIRTIO_BASE, VIRTIO_SIZE) {
            self.balloon
                .as_mut()
                .map(|b| (b as &mut dyn MmioDevice, addr - VIRTIO_BASE))
        } else {
            None
        }
    }
}

impl Bus for SystemBus {
    fn load(&mut self, addr: u64, size: u8) -> Option<u64> {
        let (dev, off) = self.device(addr)?;
        Some(dev.read(off, size))
    }

    fn store(&mut self, addr: u64, size: u8, value: u64) -> bool {
        match self.device(addr) {
            Some((dev, off)) => {
                dev.write(off, size, value);
                true
            }
            None => false,
        }
    }

    fn irq_lines(&mut self) -> u64 {
        self.sync_irqs();
        let mut lines = 0;
        if self.plic.context_pending(0) {
            lines |= irq::MEIP;
        }
        if self.plic.context_pending(1) {
            lines |= irq::SEIP;
        }
        if self.clint.msip(0) {
            lines |= irq::MSIP;
        }
        lines
    }
}

impl SbiHost for SystemBus {
    fn console_putchar(&mut self, byte: u8) {
        // The legacy SBI console and the UART share one output stream.
        self.uart.write(0, 1, byte as u64);
    }

    fn console_getchar(&mut self) -> Option<u8> {
        if self.uart.pending_input() == 0 {
            return None;
        }
        Some(self.uart.read(0, 1) as u8)
    }
}

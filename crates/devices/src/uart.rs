//! ns16550a UART, as Linux's 8250 driver drives the one on QEMU's `virt`
//! board (8-bit registers, register shift 0).
//!
//! Transmission is instant: the transmitter is always empty (LSR THRE|TEMT),
//! so the only transmit interrupt is the 16550 "THR empty" interrupt, whose
//! edge-like semantics follow QEMU's `serial.c`: it becomes pending when a
//! byte has been sent or when IER.THRI goes from 0 to 1, and reading IIR
//! while it is the reported cause clears it. Linux depends on exactly this:
//! its startup probes for UARTs that fail to re-assert THRE, and its transmit
//! path stops when no THRE interrupt arrives.

use crate::MmioDevice;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Write;

/// Size of the UART's MMIO region on the `virt` board.
pub const UART_MMIO_SIZE: u64 = 0x100;

/// Keyboard input bytes held before the guest reads them; more are dropped,
/// as a real UART would overrun (a stalled guest must not grow host memory).
pub const INPUT_CAPACITY: usize = 4096;

/// Output is written through to the host once this many bytes are buffered
/// even without a newline, so a long line cannot grow the buffer unbounded.
const OUTPUT_FLUSH_AT: usize = 4096;

// Register offsets (DLAB = 0 unless noted).
const RBR_THR_DLL: u64 = 0;
const IER_DLM: u64 = 1;
const IIR_FCR: u64 = 2;
const LCR: u64 = 3;
const MCR: u64 = 4;
const LSR: u64 = 5;
const MSR: u64 = 6;
const SCR: u64 = 7;

const IER_RDI: u8 = 0x01;
const IER_THRI: u8 = 0x02;

const IIR_NO_INT: u8 = 0x01;
const IIR_THRI: u8 = 0x02;
const IIR_RDI: u8 = 0x04;
const IIR_FIFO_ENABLED: u8 = 0xc0;

const FCR_ENABLE_FIFO: u8 = 0x01;
const FCR_CLEAR_RCVR: u8 = 0x02;

const LCR_DLAB: u8 = 0x80;

const MCR_LOOP: u8 = 0x10;

const LSR_DR: u8 = 0x01;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;

/// Modem status with no loopback: carrier, data set ready and clear to send
/// asserted, as QEMU reports for a connected character device.
const MSR_IDLE: u8 = 0xb0;

/// The architectural state of a [`Uart16550`], for snapshots and migration.
///
/// Output not yet flushed to the host is not part of it: it has left the
/// guest already; the VMM calls [`Uart16550::flush`] before saving.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct UartState {
    /// Interrupt enable register (low 4 bits).
    pub ier: u8,
    /// Line control register.
    pub lcr: u8,
    /// Modem control register.
    pub mcr: u8,
    /// Scratch register.
    pub scr: u8,
    /// Divisor latch, low byte.
    pub dll: u8,
    /// Divisor latch, high byte.
    pub dlm: u8,
    /// Last FIFO control value (bit 0: FIFOs enabled).
    pub fcr: u8,
    /// A THR-empty interrupt is pending (cleared by reading IIR).
    pub thr_ipending: bool,
    /// Received bytes the guest has not read yet.
    pub input: Vec<u8>,
}

/// An ns16550a UART whose transmitted bytes go to a host writer.
pub struct Uart16550 {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fcr: u8,
    thr_ipending: bool,
    input: VecDeque<u8>,
    out_buf: Vec<u8>,
    output: Box<dyn Write + Send>,
}

impl Uart16550 {
    /// A UART in its reset state writing transmitted bytes to `output`.
    ///
    /// Output is buffered and written through at every newline (so each
    /// console line reaches the host, and its timestamp, as soon as it is
    /// complete) and by [`flush`](Self::flush).
    pub fn new(output: Box<dyn Write + Send>) -> Self {
        Uart16550 {
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            // 115200 baud from QEMU's 1.8432 MHz clock; Linux rewrites it.
            dll: 1,
            dlm: 0,
            fcr: 0,
            thr_ipending: false,
            input: VecDeque::new(),
            out_buf: Vec::new(),
            output,
        }
    }

    /// Queues keyboard input for the guest. Bytes beyond
    /// [`INPUT_CAPACITY`] pending ones are dropped. Returns how many were
    /// accepted.
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        let room = INPUT_CAPACITY.saturating_sub(self.input.len());
        let n = bytes.len().min(room);
        self.input.extend(&bytes[..n]);
        n
    }

    /// Number of received bytes the guest has not read yet.
    pub fn pending_input(&self) -> usize {
        self.input.len()
    }

    /// Writes buffered output through to the host writer. The VMM calls it
    /// periodically (a shell prompt has no newline) and before snapshots.
    /// Host write errors are ignored: a closed console must not stop the VM.
    pub fn flush(&mut self) {
        if !self.out_buf.is_empty() {
            let _ = self.output.write_all(&self.out_buf);
            self.out_buf.clear();
        }
        let _ = self.output.flush();
    }

    /// The architectural state (see [`UartState`]).
    pub fn state(&self) -> UartState {
        UartState {
            ier: self.ier,
            lcr: self.lcr,
            mcr: self.mcr,
            scr: self.scr,
            dll: self.dll,
            dlm: self.dlm,
            fcr: self.fcr,
            thr_ipending: self.thr_ipending,
            input: self.input.iter().copied().collect(),
        }
    }

    /// Loads `state`; the output writer is kept. Input beyond
    /// [`INPUT_CAPACITY`] is dropped.
    pub fn restore(&mut self, state: &UartState) {
        self.ier = state.ier & 0x0f;
        self.lcr = state.lcr;
        self.mcr = state.mcr & 0x1f;
        self.scr = state.scr;
        self.dll = state.dll;
        self.dlm = state.dlm;
        self.fcr = state.fcr;
        self.thr_ipending = state.thr_ipending;
        self.input = state.input.iter().copied().take(INPUT_CAPACITY).collect();
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    /// The highest-priority pending interrupt, as the IIR low nibble.
    /// Line-status and modem-status interrupts never occur: there are no
    /// line errors and the modem lines never change.
    fn iir_id(&self) -> u8 {
        if self.ier & IER_RDI != 0 && !self.input.is_empty() {
            IIR_RDI
        } else if self.ier & IER_THRI != 0 && self.thr_ipending {
            IIR_THRI
        } else {
            IIR_NO_INT
        }
    }

    fn lsr(&self) -> u8 {
        let dr = if self.input.is_empty() { 0 } else { LSR_DR };
        LSR_THRE | LSR_TEMT | dr
    }

    fn msr(&self) -> u8 {
        if self.loopback() {
            // Loopback wires DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD; the 8250
            // autoconfig probe checks this (MCR=LOOP|0x0a must read 0x90).
            let m = self.mcr;
            ((m & 0x02) << 3) | ((m & 0x01) << 5) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
        } else {
            MSR_IDLE
        }
    }

    fn transmit(&mut self, byte: u8) {
        if self.loopback() {
            if self.input.len() < INPUT_CAPACITY {
                self.input.push_back(byte);
            }
        } else {
            self.out_buf.push(byte);
            if byte == b'\n' || self.out_buf.len() >= OUTPUT_FLUSH_AT {
                self.flush();
            }
        }
        // The byte left at once, so THR is empty again: that is the event
        // the THRE interrupt reports.
        self.thr_ipending = true;
    }
}

impl Drop for Uart16550 {
    /// The last partial line (a prompt, a panic message) must not be lost.
    fn drop(&mut self) {
        self.flush();
    }
}

impl MmioDevice for Uart16550 {
    fn read(&mut self, offset: u64, _size: u8) -> u64 {
        let v = match offset {
            RBR_THR_DLL if self.dlab() => self.dll,
            RBR_THR_DLL => self.input.pop_front().unwrap_or(0),
            IER_DLM if self.dlab() => self.dlm,
            IER_DLM => self.ier,
            IIR_FCR => {
                let id = self.iir_id();
                if id == IIR_THRI {
                    self.thr_ipending = false;
                }
                let fifo = if self.fcr & FCR_ENABLE_FIFO != 0 {
                    IIR_FIFO_ENABLED
                } else {
                    0
                };
                id | fifo
            }
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => self.lsr(),
            MSR => self.msr(),
            SCR => self.scr,
            _ => 0,
        };
        u64::from(v)
    }

    fn write(&mut self, offset: u64, _size: u8, value: u64) {
        let v = value as u8;
        match offset {
            RBR_THR_DLL if self.dlab() => self.dll = v,
            RBR_THR_DLL => self.transmit(v),
            IER_DLM if self.dlab() => self.dlm = v,
            IER_DLM => {
                let old = self.ier;
                self.ier = v & 0x0f;
                // Enabling THRI while THR is empty (always) raises the
                // interrupt again even if an IIR read had cleared it.
                if (old ^ self.ier) & IER_THRI != 0 {
                    self.thr_ipending = self.ier & IER_THRI != 0;
                }
            }
            IIR_FCR => {
                if (v ^ self.fcr) & FCR_ENABLE_FIFO != 0 || v & FCR_CLEAR_RCVR != 0 {
                    // Toggling FIFO mode or the clear bit empties the
                    // receiver; the transmitter is always empty anyway.
                    self.input.clear();
                }
                self.fcr = v & 0xc9;
            }
            LCR => self.lcr = v,
            MCR => self.mcr = v & 0x1f,
            SCR => self.scr = v,
            // LSR and MSR are read-only.
            _ => {}
        }
    }

    fn irq_level(&self) -> bool {
        self.iir_id() != IIR_NO_INT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer whose bytes the test can inspect.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn uart() -> (Uart16550, Sink) {
        let sink = Sink::default();
        (Uart16550::new(Box::new(sink.clone())), sink)
    }

    #[test]
    fn dlab_selects_divisor_latch() {
        let (mut u, sink) = uart();
        u.write(LCR, 1, 0x83);
        u.write(0, 1, 0x0c);
        u.write(1, 1, 0x01);
        assert_eq!(u.read(0, 1), 0x0c);
        assert_eq!(u.read(1, 1), 0x01);
        assert_eq!(u.read(IER_DLM, 1), 0x01, "DLM, not IER");
        u.write(LCR, 1, 0x03);
        assert_eq!(u.read(IER_DLM, 1), 0, "IER untouched by divisor writes");
        u.flush();
        assert!(
            sink.0.lock().unwrap().is_empty(),
            "divisor writes transmit nothing"
        );
        assert_eq!(u.read(LCR, 1), 0x03);
    }

    #[test]
    fn output_buffered_until_newline_or_flush() {
        let (mut u, sink) = uart();
        for b in b"hi" {
            u.write(0, 1, u64::from(*b));
        }
        assert!(sink.0.lock().unwrap().is_empty());
        u.write(0, 1, u64::from(b'\n'));
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        u.write(0, 1, u64::from(b'#'));
        u.flush();
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n#");
    }

    #[test]
    fn lsr_and_receive() {
        let (mut u, _) = uart();
        assert_eq!(u.read(LSR, 1), 0x60, "THRE|TEMT, no data");
        assert_eq!(u.push_input(b"ab"), 2);
        assert_eq!(u.read(LSR, 1), 0x61);
        assert_eq!(u.read(0, 1), u64::from(b'a'));
        assert_eq!(u.read(0, 1), u64::from(b'b'));
        assert_eq!(u.read(LSR, 1), 0x60);
        assert_eq!(u.read(0, 1), 0, "empty receiver reads zero");
        let big = vec![7u8; INPUT_CAPACITY + 10];
        assert_eq!(u.push_input(&big), INPUT_CAPACITY);
        assert_eq!(u.push_input(b"x"), 0);
        u.write(IIR_FCR, 1, u64::from(FCR_ENABLE_FIFO | FCR_CLEAR_RCVR));
        assert_eq!(u.pending_input(), 0);
    }

    #[test]
    fn rx_interrupt() {
        let (mut u, _) = uart();
        u.push_input(b"x");
        assert!(!u.irq_level(), "RDI not enabled");
        u.write(IER_DLM, 1, u64::from(IER_RDI));
        assert!(u.irq_level());
        assert_eq!(u.read(IIR_FCR, 1) & 0x0f, u64::from(IIR_RDI));
        assert!(u.irq_level(), "IIR read does not clear RDI");
        u.read(0, 1);
        assert!(!u.irq_level());
        assert_eq!(u.read(IIR_FCR, 1), u64::from(IIR_NO_INT));
    }

    #[test]
    fn thre_interrupt_like_8250_expects() {
        let (mut u, _) = uart();
        // Linux's startup THRE test: enable THRI, read IIR, disable,
        // enable again: the interrupt must be re-asserted.
        u.write(IER_DLM, 1, u64::from(IER_THRI));
        assert!(u.irq_level());
        assert_eq!(u.read(IIR_FCR, 1), u64::from(IIR_THRI));
        assert!(!u.irq_level(), "IIR read clears THRE");
        assert_eq!(u.read(IIR_FCR, 1), u64::from(IIR_NO_INT));
        u.write(IER_DLM, 1, 0);
        u.write(IER_DLM, 1, u64::from(IER_THRI));
        assert_eq!(
            u.read(IIR_FCR, 1),
            u64::from(IIR_THRI),
            "re-asserted on enable"
        );
        // Transmit path: every byte sent makes THR empty again.
        u.write(0, 1, u64::from(b'a'));
        assert!(u.irq_level());
        // RX data outranks THRE.
        u.write(IER_DLM, 1, u64::from(IER_THRI | IER_RDI));
        u.push_input(b"z");
        assert_eq!(u.read(IIR_FCR, 1), u64::from(IIR_RDI));
        u.read(0, 1);
        assert_eq!(u.read(IIR_FCR, 1), u64::from(IIR_THRI));
        // Disabling THRI drops the line.
        u.write(IER_DLM, 1, 0);
        assert!(!u.irq_level());
    }

    #[test]
    fn fifo_bits_in_iir_and_scratch_and_ier_probe() {
        let (mut u, _) = uart();
        u.write(IIR_FCR, 1, u64::from(FCR_ENABLE_FIFO));
        assert_eq!(u.read(IIR_FCR, 1), 0xc1);
        u.write(SCR, 1, 0x5a);
        assert_eq!(u.read(SCR, 1), 0x5a);
        u.write(IER_DLM, 1, 0xff);
        assert_eq!(u.read(IER_DLM, 1), 0x0f, "only 4 IER bits exist");
        u.write(MCR, 1, u64::from(MCR_LOOP | 0x0a));
        assert_eq!(u.read(MSR, 1) & 0xf0, 0x90, "8250 loopback probe");
        u.write(MCR, 1, 0x08);
        assert_eq!(u.read(MSR, 1), u64::from(MSR_IDLE));
        assert_eq!(u.read(0x40, 1), 0, "outside the register file");
        u.write(0x40, 1, 1);
    }

    #[test]
    fn state_round_trip() {
        let (mut u, _) = uart();
        u.write(LCR, 1, 0x03);
        u.write(IER_DLM, 1, u64::from(IER_THRI | IER_RDI));
        u.write(IIR_FCR, 1, u64::from(FCR_ENABLE_FIFO));
        u.write(SCR, 1, 9);
        u.push_input(b"qz");
        let s = u.state();
        let json = serde_json::to_string(&s).unwrap();
        let back: UartState = serde_json::from_str(&json).unwrap();
        let (mut v, _) = uart();
        v.restore(&back);
        assert_eq!(v.state(), s);
        assert!(v.irq_level());
        assert_eq!(v.read(0, 1), u64::from(b'q'));
        assert_eq!(v.read(SCR, 1), 9);
        assert_eq!(v.read(IIR_FCR, 1), 0xc4);
    }
}

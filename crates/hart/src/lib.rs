//! An RV64GC hart (RV64IMAFDC + Zicsr + Zifencei) with M/S/U privilege,
//! Sv39 paging and a software TLB whose entries point straight into guest
//! RAM.
//!
//! The hart knows nothing about devices or the SBI: loads and stores outside
//! RAM go to a [`Bus`], an `ecall` from S-mode and a `wfi` with nothing
//! pending return from [`Hart::run`] as an [`Exit`] for the machine to handle.

mod clock;
mod csr;
mod exec;
pub mod fp;
mod hart;
mod jit;
mod mmu;
mod rvc;
mod state;
#[cfg(test)]
mod tests;

pub use clock::{ClockState, GuestClock, TIMEBASE_HZ};
pub use hart::{Exit, Hart, Priv};
pub use jit::JitStats;
pub use state::HartState;

/// Physical accesses that miss guest RAM (device registers).
pub trait Bus {
    /// Loads `size` bytes (1, 2, 4 or 8) at physical `addr`; `None` is an access fault.
    fn load(&mut self, addr: u64, size: u8) -> Option<u64>;
    /// Stores the low `size` bytes of `value` at physical `addr`; `false` is an access fault.
    fn store(&mut self, addr: u64, size: u8, value: u64) -> bool;
    /// The externally driven interrupt lines as `mip` bits (MEIP, SEIP,
    /// MTIP, MSIP), read by the hart after every device access so that a
    /// claim or an acknowledge takes effect at the next instruction.
    fn irq_lines(&mut self) -> u64;
}

/// Interrupt-pending bits in `mip`/`sip`, for the machine wiring devices to the hart.
pub mod irq {
    /// Supervisor software interrupt.
    pub const SSIP: u64 = 1 << 1;
    /// Machine software interrupt.
    pub const MSIP: u64 = 1 << 3;
    /// Supervisor timer interrupt.
    pub const STIP: u64 = 1 << 5;
    /// Machine timer interrupt.
    pub const MTIP: u64 = 1 << 7;
    /// Supervisor external interrupt.
    pub const SEIP: u64 = 1 << 9;
    /// Machine external interrupt.
    pub const MEIP: u64 = 1 << 11;
}

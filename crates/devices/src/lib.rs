//! Godwit's emulated devices: ns16550a UART, PLIC, CLINT, the `sifive,test0`
//! power-off register, the virtio-mmio transport (split virtqueues) and the
//! virtio devices behind it: balloon, net and block.
//!
//! Every device is a plain struct whose registers the vCPU threads drive
//! through [`MmioDevice`] (the machine keeps each behind a lock); a device
//! never sees the CPU or the migration engine.
//! Each device keeps what it must remember across a snapshot or migration in
//! a serde `...State` struct beside it (Firecracker's `persist.rs` shape).
//!
//! Nothing a guest writes to a register or a virtqueue can make a device
//! panic or loop without bound: malformed virtqueues mark the virtio device
//! `DEVICE_NEEDS_RESET`, out-of-range values are ignored or clamped.
//!
//! # Wiring (what the machine does)
//!
//! - Interrupt lines are levels: after an MMIO access to a device, after
//!   [`VirtioMmio::process`] and after [`Uart16550::push_input`], the machine
//!   copies [`MmioDevice::irq_level`] into [`Plic::set_level`] for the
//!   device's source, then drives each hart's MEIP/SEIP from
//!   [`Plic::context_pending`] (context `2h` / `2h + 1`).
//! - A virtio kick only records the queue and calls the transport's
//!   [`KickWaker`]; the device's event thread then runs
//!   [`VirtioMmio::process`], which also serves host-side changes made
//!   through [`VirtioMmio::device_as_mut`]. When it returns
//!   [`Processed::free_map_changed`], every vCPU must drop its cached write
//!   translations before [`VirtioMmio::release_held`] hands the guest back
//!   the requests that freed pages.
//! - Flush the UART ([`Uart16550::flush`]) before saving state.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod clint;
pub mod finisher;
pub mod plic;
pub mod uart;
pub mod virtio;

pub use clint::{Clint, ClintState, CLINT_MMIO_SIZE};
pub use finisher::{Finisher, FinisherRequest, FINISHER_MMIO_SIZE};
pub use plic::{Plic, PlicState};
pub use uart::{Uart16550, UartState, UART_MMIO_SIZE};
pub use virtio::balloon::{
    Balloon, BalloonFeatures, BalloonState, BalloonStats, HintPhase, HintStatus, ReportingStatus,
};
pub use virtio::block::{
    Block, BlockBackend, BlockCounters, BlockError, BlockState, DiskOpenError, FileDisk, HeldWrite,
    HeldWriteStats, WriteHold,
};
pub use virtio::mmio::{KickWaker, Processed, VirtioMmio, VirtioMmioState, VIRTIO_MMIO_SIZE};
pub use virtio::net::{rarp_frame, HeldStats, Net, NetBackend, NetConfig, NetCounters, NetState};
pub use virtio::queue::{Descriptor, DescriptorChain, QueueState, SplitQueue};
pub use virtio::{DeviceEvents, DeviceState, VirtioDevice};

/// A device reached by loads and stores at guest-physical addresses.
///
/// `offset` is relative to the device's base address; `size` is 1, 2, 4 or 8.
pub trait MmioDevice: Send {
    /// A guest load. Unimplemented registers read as zero.
    fn read(&mut self, offset: u64, size: u8) -> u64;
    /// A guest store. Stores to read-only or unknown registers are ignored.
    fn write(&mut self, offset: u64, size: u8, value: u64);
    /// The level of the device's interrupt line (wired to a PLIC source).
    fn irq_level(&self) -> bool {
        false
    }
}

/// A saved device state that does not fit the device it is restored into
/// (for example a PLIC state with another number of sources). States come
/// from another host during migration, so they are checked, never trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot restore {device} state: {reason}")]
pub struct StateError {
    /// Which device refused the state.
    pub device: &'static str,
    /// What did not match.
    pub reason: String,
}

impl StateError {
    pub(crate) fn new(device: &'static str, reason: impl Into<String>) -> Self {
        StateError {
            device,
            reason: reason.into(),
        }
    }
}

//! The Godwit board: a machine like QEMU's RISC-V `virt` built from a
//! [`BoardConfig`] (harts, RAM, a list of virtio devices), with an SBI
//! implemented inside the VMM.
//!
//! - [`board`]: the board as data, and how two boards compare.
//! - [`layout`]: the memory map.
//! - [`loader`]: the riscv64 `Image` header, kernel and initrd placement.
//! - [`fdt`]: the device tree, written in one place.
//! - [`host`]: what each device is connected to on this host (disk
//!   images), and moving a disk's lock with a migration.
//! - [`sbi`]: the SBI (base, TIME, IPI, RFENCE, HSM, SRST, legacy console).
//! - `bus`: the shared devices, routing of physical accesses to them and
//!   their interrupt wiring.
//! - [`tap`]: a TAP device as a NIC's host side.
//! - `vcpu`: one thread per hart; stopping them; requests between harts.
//! - `worker`: one event thread per virtio device.
//! - [`vm`]: building a VM (boot or restore), running it, the handle to
//!   pause, resume and reach into it.
//! - [`state`]: the machine state as bytes; [`snapshot`]: state + RAM in a file.

pub mod board;
mod bus;
pub mod error;
pub mod fdt;
pub mod host;
pub mod layout;
pub mod loader;
pub mod sbi;
pub mod snapshot;
pub mod state;
pub mod tap;
mod vcpu;
pub mod vm;
mod worker;

pub use board::{BoardConfig, BoardMismatch, DeviceConfig, MAX_HARTS};
pub use error::{ConfigError, RestoreError, VmError};
pub use godwit_devices::{BlockBackend, BlockCounters, DiskOpenError, FileDisk};
pub use host::{DiskControlError, DiskInfo, HostDevice};
pub use state::VmState;
pub use vm::{
    GuestExit, Machine, PauseOutcome, RunOutcome, Vm, VmConfig, VmGone, VmHandle, MAX_THROTTLE,
};

//! The Godwit board: a machine like QEMU's RISC-V `virt` built from the
//! hart, the devices and guest RAM, with an SBI implemented inside the VMM.
//!
//! - [`layout`]: the memory map.
//! - [`loader`]: the riscv64 `Image` header, kernel and initrd placement.
//! - [`fdt`]: the device tree, written in one place.
//! - [`sbi`]: the SBI (base, TIME, IPI, RFENCE, HSM, SRST, legacy console).
//! - [`bus`]: routing of physical accesses outside RAM to devices.
//! - [`vm`]: building a VM, its run loop, and the handle to pause it.
//! - [`state`]: the machine state as bytes; [`snapshot`]: state + RAM in a file.

pub mod bus;
pub mod fdt;
pub mod layout;
pub mod loader;
pub mod sbi;
pub mod snapshot;
pub mod state;
pub mod vm;

pub use state::VmState;
pub use vm::{check_mem, GuestExit, Vm, VmConfig, VmError, VmGone, VmHandle};

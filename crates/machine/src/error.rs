//! The machine's errors: what failed and, where it helps, what to do.

use crate::board::BoardMismatch;
use crate::loader::LoadError;
use crate::state::StateDecodeError;
use godwit_devices::StateError;
use godwit_memory::MemoryError;

/// A board description that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Hart count out of range.
    #[error("{0} harts: a board has 1 to {max}", max = crate::board::MAX_HARTS)]
    Harts(u32),
    /// RAM size out of range or not page-aligned.
    #[error("memory size {0} bytes is out of range: it must be between 32 MiB and 64 GiB, a multiple of 4 KiB")]
    RamSize(u64),
    /// More devices than virtio slots.
    #[error("{0} virtio devices: the board has {max} slots", max = crate::layout::VIRTIO_SLOTS)]
    TooManyDevices(usize),
    /// Two NICs with one MAC.
    #[error("two NICs have the MAC {0}; each needs its own")]
    DuplicateMac(String),
    /// A board description that does not parse.
    #[error("the board description does not parse: {0}")]
    Describe(String),
    /// A disk the board cannot have (size, id).
    #[error("{0}")]
    Disk(String),
}

/// Building or starting a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The board description is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file to boot could not be read.
    #[error("cannot read {path}: {err}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        err: std::io::Error,
    },
    /// The kernel, initrd or firmware does not fit or is not what it claims.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Guest RAM could not be mapped.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The device tree could not be built.
    #[error("cannot build the device tree: {0}")]
    Fdt(String),
    /// A device has no host backend, or the wrong kind.
    #[error("virtio slot {slot} ({device}) needs {needs} on this host")]
    Backend {
        /// The slot.
        slot: usize,
        /// The device, as the board names it.
        device: String,
        /// What it needs ("a TAP device: --net tap=NAME").
        needs: &'static str,
    },
    /// A VM thread could not be started.
    #[error("cannot start a VM thread: {0}")]
    Thread(std::io::Error),
    /// A device's host side (a disk image) is missing or does not fit.
    #[error("virtio slot {slot} ({device}): {reason}")]
    HostDevice {
        /// The slot.
        slot: usize,
        /// The device as the board has it.
        device: String,
        /// What is wrong.
        reason: String,
    },
}

/// A saved state that cannot be loaded into the board it is meant for.
/// Restoring builds a new VM from the state, so on any of these errors
/// nothing was started and nothing half-restored is left.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The state does not decode (or is from another state version).
    #[error(transparent)]
    Decode(#[from] StateDecodeError),
    /// The state is for another board.
    #[error("the saved VM does not fit this board: {0}")]
    Board(#[from] BoardMismatch),
    /// The state lists another number of harts or devices than its board.
    #[error("the saved VM is inconsistent: {0}")]
    Inconsistent(String),
    /// A device refused its part of the state.
    #[error(transparent)]
    Device(#[from] StateError),
    /// Building the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
}

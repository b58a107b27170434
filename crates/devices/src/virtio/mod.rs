//! Virtio 1.x over the MMIO transport (version 2) with split virtqueues,
//! and the devices behind it.
//!
//! The transport ([`mmio::VirtioMmio`]) owns the queues and the register
//! file; a device ([`VirtioDevice`]) sees only its own configuration space,
//! its queues when the driver kicks one, and a periodic [`VirtioDevice::poll`]
//! for work the host starts (a new balloon target, a stats request).

pub mod balloon;
pub mod mmio;
pub mod queue;

#[cfg(test)]
pub(crate) mod testdrv;

use crate::StateError;
use godwit_memory::GuestRam;
use queue::SplitQueue;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

/// Device status bits (virtio 1.x §2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready: queues may be used.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Feature bits shared by every device type.
pub mod features {
    /// Descriptors may point at tables of descriptors (not offered).
    pub const RING_INDIRECT_DESC: u32 = 28;
    /// `used_event`/`avail_event` notification suppression (not offered).
    pub const RING_EVENT_IDX: u32 = 29;
    /// Virtio 1.x (non-legacy) device: mandatory for MMIO version 2.
    pub const VERSION_1: u32 = 32;
}

/// Virtio device IDs.
pub mod device_id {
    /// Memory balloon.
    pub const BALLOON: u32 = 5;
}

/// What a device's [`VirtioDevice::poll`] asks the transport to signal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
///
/// Used-buffer interrupts need no flag here: the transport raises one for
/// every queue the device added used entries to (unless the driver
/// suppressed interrupts on that queue).
pub struct DeviceEvents {
    /// The device changed its configuration space: bump the configuration
    /// generation and raise the configuration-change interrupt.
    pub config_changed: bool,
}

/// The device side of a virtio device: what differs between device types.
///
/// The transport calls these from the vCPU thread. None of them may panic or
/// loop without bound on guest-controlled data; queue errors are recorded
/// by [`SplitQueue`] itself (the transport then sets `DEVICE_NEEDS_RESET`).
pub trait VirtioDevice: Send {
    /// The device's saved state (the transport saves its own beside it).
    type State: Serialize + DeserializeOwned + Clone + Debug + PartialEq;

    /// The virtio device ID (5 for the balloon).
    fn device_type(&self) -> u32;
    /// Feature bits the device offers. The transport adds
    /// [`features::VERSION_1`] itself.
    fn features(&self) -> u64;
    /// Number of virtqueues the transport exposes (the most the driver can
    /// ask for; fewer may be used depending on the negotiated features).
    fn num_queues(&self) -> u16;
    /// Largest size of queue `index` (`QueueNumMax`); a power of two.
    fn queue_max_size(&self, index: u16) -> u16;
    /// Reads configuration space at `offset` into `data`; bytes past the end
    /// of the configuration read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A driver write to configuration space; read-only fields ignore it.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set `DRIVER_OK` after accepting `features`: the queues are
    /// live from now on.
    fn activate(&mut self, features: u64);
    /// The driver kicked queue `queue`. Returns true when the device put
    /// buffers in the used ring (the transport then raises the used-buffer
    /// interrupt unless the driver suppressed it).
    fn notify(&mut self, queue: u16, q: &mut SplitQueue, ram: &GuestRam) -> bool;
    /// Host-initiated work, called by the VMM through
    /// [`mmio::VirtioMmio::poll`] after changing the device from the host
    /// side and periodically. Only called while the device is live.
    fn poll(&mut self, queues: &mut [SplitQueue], ram: &GuestRam) -> DeviceEvents;
    /// The driver reset the device (status 0): forget everything the driver
    /// told it; keep what the host configured.
    fn reset(&mut self);
    /// The device's saved state.
    fn state(&self) -> Self::State;
    /// Loads a saved state produced by [`state`](Self::state).
    fn restore(&mut self, state: &Self::State) -> Result<(), StateError>;
}

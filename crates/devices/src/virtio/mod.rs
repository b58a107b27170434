//! Virtio 1.x over the MMIO transport (version 2) with split virtqueues,
//! and the devices behind it.
//!
//! The transport ([`mmio::VirtioMmio`]) owns the queues and the register
//! file; a device ([`VirtioDevice`]) sees only its own configuration space,
//! its queues when the driver kicked them, and [`VirtioDevice::poll`] for
//! work the host starts (a new balloon target, a stats request, a packet on
//! a TAP device). Each device kind has its own folder: the device and, in
//! `state.rs`, what it remembers.
//!
//! # Threads
//!
//! Register accesses come from the vCPU threads; everything else runs on
//! the device's own event thread (the machine's `DeviceWorker`): a kick
//! only records which queue was kicked and wakes that thread, which then
//! calls [`mmio::VirtioMmio::process`]. A vCPU therefore never waits for
//! device I/O, and a device with a host backend (a TAP, a disk file) does
//! its I/O off the vCPU.

pub mod balloon;
pub mod block;
pub mod mmio;
pub mod net;
pub mod queue;

#[cfg(test)]
pub(crate) mod testdrv;

use crate::StateError;
use godwit_memory::GuestRam;
use queue::SplitQueue;
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::os::fd::RawFd;
use std::time::Instant;

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
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Memory balloon.
    pub const BALLOON: u32 = 5;
}

/// What [`VirtioDevice::poll`] and [`VirtioDevice::notify`] ask the
/// transport to do besides raising used-buffer interrupts (which the
/// transport raises by itself for every queue that got used entries, unless
/// the driver suppressed them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceEvents {
    /// The device changed its configuration space: bump the configuration
    /// generation and raise the configuration-change interrupt.
    pub config_changed: bool,
}

/// The saved state of a device behind the transport, by kind.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum DeviceState {
    /// virtio-balloon.
    Balloon(balloon::BalloonState),
    /// virtio-net.
    Net(net::NetState),
    /// virtio-blk.
    Block(block::BlockState),
}

impl DeviceState {
    /// The kind's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceState::Balloon(_) => "virtio-balloon",
            DeviceState::Net(_) => "virtio-net",
            DeviceState::Block(_) => "virtio-blk",
        }
    }
}

/// The device side of a virtio device: what differs between device types.
/// Object-safe, so a board holds its devices as a list.
///
/// The transport calls these with its lock held: register and
/// configuration accesses from a vCPU thread, the rest from the device's
/// event thread. None of them may panic or loop without bound on
/// guest-controlled data; queue errors are recorded by [`SplitQueue`]
/// itself (the transport then sets `DEVICE_NEEDS_RESET`).
pub trait VirtioDevice: Send {
    /// The virtio device ID (5 for the balloon, 2 for a disk).
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
    /// Serves queue `queue`, which the driver kicked. Returns true when the
    /// device put buffers in its used ring.
    fn notify(&mut self, queue: u16, queues: &mut [SplitQueue], ram: &GuestRam) -> bool;
    /// Host-initiated work: after the host changed the device, when one of
    /// [`io_fds`](Self::io_fds) is ready, at [`poll_deadline`](Self::poll_deadline),
    /// and after every kick. Only called while the device is live.
    fn poll(&mut self, queues: &mut [SplitQueue], ram: &GuestRam) -> DeviceEvents;
    /// The driver reset the device (status 0): forget everything the driver
    /// told it; keep what the host configured.
    fn reset(&mut self);
    /// The device's saved state.
    fn state(&self) -> DeviceState;
    /// Loads a saved state produced by [`state`](Self::state) from a device
    /// of the same kind and configuration; on error nothing is changed.
    fn restore(&mut self, state: &DeviceState) -> Result<(), StateError>;
    /// Host descriptors the event thread waits on (readable) for this
    /// device, such as a TAP. None by default.
    fn io_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// When the device next wants [`poll`](Self::poll) without any event
    /// (a retry, a timer). None by default.
    fn poll_deadline(&self) -> Option<Instant> {
        None
    }
    /// True (once) when the device marked guest pages free since the last
    /// call. Before the device hands the guest back the requests that did
    /// it ([`release_held`](Self::release_held)), every vCPU must drop the
    /// write translations it cached: a page marked free must clear its
    /// free bit on the next guest store, which only a store that goes
    /// through `GuestRam::note_write` does.
    fn take_free_map_changed(&mut self) -> bool {
        false
    }
    /// Completes the requests held back until the vCPUs dropped their
    /// write translations (see [`take_free_map_changed`](Self::take_free_map_changed)).
    /// Returns true when used entries were added.
    fn release_held(&mut self, _queues: &mut [SplitQueue], _ram: &GuestRam) -> bool {
        false
    }
    /// The device, for host-side control through a downcast.
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// The device, for host-side queries through a downcast.
    fn as_any(&self) -> &dyn Any;
}

//! What a virtio-net device remembers across a snapshot or a migration.

use serde::{Deserialize, Serialize};

/// Counters of a [`super::Net`], for reports.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames the guest sent (written to the backend).
    pub tx_frames: u64,
    /// Bytes of those frames (without headers).
    pub tx_bytes: u64,
    /// Frames given to the guest.
    pub rx_frames: u64,
    /// Bytes of those frames (without headers).
    pub rx_bytes: u64,
    /// Malformed transmit chains dropped.
    pub tx_dropped: u64,
    /// Received frames dropped: larger than the guest's buffers could ever
    /// hold, or a backend write error.
    pub rx_dropped: u64,
    /// Backend errors (other than "would block").
    pub backend_errors: u64,
}

/// The saved state of a virtio-net device.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NetState {
    /// The MAC the guest sees (the driver may change it through the
    /// control queue).
    pub mac: [u8; 6],
    /// Features the device offers (a restore into a device that offers
    /// others is refused: the queue layout and headers would differ).
    pub offered: u64,
    /// Features the driver accepted (0 before `DRIVER_OK`).
    pub acked: u64,
    /// The configuration's `status` (LINK_UP, ANNOUNCE).
    pub status: u16,
    /// A frame taken from the backend that no receive buffer could hold
    /// yet (with its virtio-net header).
    pub held_rx: Option<Vec<u8>>,
    /// Counters so far.
    pub counters: NetCounters,
}

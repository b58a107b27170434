//! What the block device remembers across a snapshot or a migration, and
//! its host-visible counters.

use super::ID_BYTES;
use serde::{Deserialize, Serialize};

/// What the device did since it was created (the counters travel with a
/// migration, so they cover the VM's whole life). For `query-block`-style
/// reports.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockCounters {
    /// Requests taken from the queue, well-formed or not.
    pub requests: u64,
    /// Reads (`T_IN`) completed with status OK.
    pub reads: u64,
    /// Writes (`T_OUT`) completed with status OK.
    pub writes: u64,
    /// Flushes (`T_FLUSH`) completed with status OK.
    pub flushes: u64,
    /// Discards completed with status OK.
    pub discards: u64,
    /// Write-zeroes requests completed with status OK.
    pub write_zeroes: u64,
    /// Device ID requests (`T_GET_ID`) answered.
    pub get_ids: u64,
    /// Bytes read from the backend into guest memory.
    pub bytes_read: u64,
    /// Bytes written from guest memory to the backend (`T_OUT`).
    pub bytes_written: u64,
    /// Bytes zeroed by write-zeroes requests.
    pub bytes_zeroed: u64,
    /// Requests that failed in the backend (status IOERR).
    pub io_errors: u64,
    /// Malformed or refused requests: bad framing, buffers outside RAM,
    /// sectors past the end, a write to a read-only disk (status IOERR, or
    /// no status at all when the chain had no writable status byte).
    pub invalid: u64,
    /// Requests of a type the device does not support (status UNSUPP).
    pub unsupported: u64,
}

impl BlockCounters {
    /// Every failed request: backend errors, invalid and unsupported ones.
    pub fn errors(&self) -> u64 {
        self.io_errors + self.invalid + self.unsupported
    }
}

/// The saved state of a [`Block`](super::Block) (the transport saves the
/// queue). The backend is not part of it: each host opens its own.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BlockState {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// The disk is offered read-only.
    pub readonly: bool,
    /// The device ID string, NUL-padded.
    pub id: [u8; ID_BYTES],
    /// Features offered (they depend on the backend: discard).
    pub offered_features: u64,
    /// Features the driver accepted (0 until `DRIVER_OK`).
    pub acked_features: u64,
    /// A kick arrived while the backend was released; the queue is served
    /// once it is back.
    pub deferred: bool,
    /// The counters.
    pub counters: BlockCounters,
}

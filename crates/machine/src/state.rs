//! The complete machine state, as bytes for snapshots and migration.

use crate::board::BoardConfig;
use godwit_devices::{ClintState, PlicState, UartState, VirtioMmioState};
use godwit_hart::{ClockState, HartState};
use serde::{Deserialize, Serialize};

/// Whether a hart runs (SBI HSM: started) or waits to be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HartRun {
    /// Running guest code (or waiting for an interrupt).
    Started,
    /// Stopped: waits for an SBI `hart_start` from another hart.
    Stopped,
}

/// One hart's part of the state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedHart {
    /// The architectural state.
    pub cpu: HartState,
    /// Started or stopped.
    pub run: HartRun,
}

/// Everything a VM remembers besides RAM contents. Each device's part is
/// the `...State` struct kept beside the device; lists follow the board's
/// order (harts by id, virtio devices by slot).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    /// The board the state belongs to.
    pub board: BoardConfig,
    /// Every hart, by hart id.
    pub harts: Vec<SavedHart>,
    /// The board's clock.
    pub clock: ClockState,
    pub uart: UartState,
    pub plic: PlicState,
    pub clint: ClintState,
    /// Every virtio device, by slot.
    pub devices: Vec<VirtioMmioState>,
    /// The free-page map, one bit per 4 KiB page.
    pub free_pages: Vec<u64>,
    /// The kernel command line the VM booted with.
    pub cmdline: String,
}

/// Version of the encoding below; bumped on any change to [`VmState`].
/// Version 2: the board as data (harts and devices as lists, one clock).
pub const STATE_VERSION: u32 = 2;

/// Errors decoding a state blob.
#[derive(Debug, thiserror::Error)]
pub enum StateDecodeError {
    #[error("state blob is {0} bytes, too short for its header")]
    Short(usize),
    #[error("the state is version {found}, from {}; this Godwit reads version {STATE_VERSION} only (boot the VM afresh and save it again)", if *.found < STATE_VERSION { "an older Godwit" } else { "a newer Godwit" })]
    Version { found: u32 },
    #[error("state blob does not decode: {0}")]
    Decode(String),
}

impl VmState {
    /// Encodes as `version (u32 LE) || postcard(VmState)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = STATE_VERSION.to_le_bytes().to_vec();
        // Serializing plain structs into a Vec cannot fail.
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// Decodes what [`VmState::encode`] produced, checking the version.
    pub fn decode(bytes: &[u8]) -> Result<VmState, StateDecodeError> {
        let Some((v, rest)) = bytes.split_first_chunk::<4>() else {
            return Err(StateDecodeError::Short(bytes.len()));
        };
        let found = u32::from_le_bytes(*v);
        if found != STATE_VERSION {
            return Err(StateDecodeError::Version { found });
        }
        postcard::from_bytes(rest).map_err(|e| StateDecodeError::Decode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_versions_are_refused_clearly() {
        let mut old = 1u32.to_le_bytes().to_vec();
        old.extend([0u8; 64]);
        let e = VmState::decode(&old).unwrap_err().to_string();
        assert!(e.contains("version 1, from an older Godwit"), "{e}");
        assert!(VmState::decode(&[1, 0]).is_err());
    }
}

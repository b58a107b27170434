//! The complete machine state, as bytes for snapshots and migration.

use godwit_devices::{BalloonDeviceState, ClintState, PlicState, UartState};
use godwit_hart::HartState;
use serde::{Deserialize, Serialize};

/// Everything a VM remembers besides RAM contents. Each device's part is
/// the `...State` struct kept beside the device.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    pub hart: HartState,
    pub uart: UartState,
    pub plic: PlicState,
    pub clint: ClintState,
    pub balloon: Option<BalloonDeviceState>,
    pub ram_bytes: u64,
    /// The free-page map, one bit per 4 KiB page.
    pub free_pages: Vec<u64>,
    pub cmdline: String,
}

/// Version of the encoding below; bumped on any change to [`VmState`].
pub const STATE_VERSION: u32 = 1;

/// Errors decoding a state blob.
#[derive(Debug, thiserror::Error)]
pub enum StateDecodeError {
    #[error("state blob is {0} bytes, too short for its header")]
    Short(usize),
    #[error("state blob has version {found}, this Godwit reads version {STATE_VERSION}")]
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

//! The board as data: how many harts, how much RAM, which devices. The
//! device tree, the bus, the threads, the saved state and the migration
//! handshake are all derived from one [`BoardConfig`].
//!
//! A config describes what the *guest* sees. What a device is connected to
//! on the host (a TAP device, a disk file) is not part of it: that differs
//! between the two hosts of a migration and is given to each VMM on its own
//! command line.

use crate::error::ConfigError;
use crate::layout::{MAX_RAM, MIN_RAM, VIRTIO_SLOTS};
use godwit_memory::PAGE_SIZE;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Most harts a board has.
pub const MAX_HARTS: u32 = 8;

/// One virtio device of the board, in slot order: slot `n` is at
/// `VIRTIO_BASE + n * VIRTIO_SIZE` with PLIC source `VIRTIO_IRQ + n`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceConfig {
    /// virtio-balloon with statistics, free page hinting and free page
    /// reporting (self-ballooning).
    Balloon,
}

impl DeviceConfig {
    /// The kind's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceConfig::Balloon => "virtio-balloon",
        }
    }
}

impl fmt::Display for DeviceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

/// The board: what the guest sees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoardConfig {
    /// Number of harts (vCPUs), 1..=[`MAX_HARTS`].
    pub harts: u32,
    /// Guest RAM in bytes.
    pub ram_bytes: u64,
    /// The virtio devices, one per slot, in slot order.
    pub devices: Vec<DeviceConfig>,
}

impl BoardConfig {
    /// Checks the board can be built: hart count, RAM size, slot count.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_HARTS).contains(&self.harts) {
            return Err(ConfigError::Harts(self.harts));
        }
        if !(MIN_RAM..=MAX_RAM).contains(&self.ram_bytes)
            || !self.ram_bytes.is_multiple_of(PAGE_SIZE as u64)
        {
            return Err(ConfigError::RamSize(self.ram_bytes));
        }
        if self.devices.len() > VIRTIO_SLOTS as usize {
            return Err(ConfigError::TooManyDevices(self.devices.len()));
        }
        Ok(())
    }

    /// Whether the board has a virtio-balloon.
    pub fn has_balloon(&self) -> bool {
        self.devices.contains(&DeviceConfig::Balloon)
    }

    /// The slot of the first device of kind `kind`.
    pub fn slot_of(&self, kind: &DeviceConfig) -> Option<usize> {
        self.devices.iter().position(|d| d == kind)
    }

    /// `Ok` when a VM of board `other` can be loaded into this one: same
    /// harts, RAM and devices. Otherwise every difference, as "this: ...,
    /// other: ..." phrases.
    pub fn compare(&self, other: &BoardConfig) -> Result<(), BoardMismatch> {
        let mut diffs = Vec::new();
        if self.harts != other.harts {
            diffs.push(format!(
                "{} here, {} there",
                harts(self.harts),
                harts(other.harts)
            ));
        }
        if self.ram_bytes != other.ram_bytes {
            diffs.push(format!(
                "{} bytes of RAM here, {} there",
                self.ram_bytes, other.ram_bytes
            ));
        }
        let n = self.devices.len().max(other.devices.len());
        for slot in 0..n {
            match (self.devices.get(slot), other.devices.get(slot)) {
                (Some(a), Some(b)) if a == b => {}
                (a, b) => diffs.push(format!(
                    "virtio slot {slot}: {} here, {} there",
                    a.map_or("nothing".to_string(), |d| d.to_string()),
                    b.map_or("nothing".to_string(), |d| d.to_string()),
                )),
            }
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(BoardMismatch(diffs))
        }
    }

    /// The board as one line of JSON (the migration handshake carries it).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses what [`to_json`](Self::to_json) wrote, and validates it.
    pub fn from_json(s: &str) -> Result<BoardConfig, ConfigError> {
        let b: BoardConfig =
            serde_json::from_str(s).map_err(|e| ConfigError::Describe(e.to_string()))?;
        b.validate()?;
        Ok(b)
    }
}

impl fmt::Display for BoardConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} hart(s), {} MiB RAM",
            self.harts,
            self.ram_bytes >> 20
        )?;
        for d in &self.devices {
            write!(f, ", {d}")?;
        }
        Ok(())
    }
}

/// "1 hart", "2 harts".
pub fn harts(n: u32) -> String {
    if n == 1 {
        "1 hart".into()
    } else {
        format!("{n} harts")
    }
}

/// How two boards differ (see [`BoardConfig::compare`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the boards differ: {}", .0.join("; "))]
pub struct BoardMismatch(pub Vec<String>);

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> BoardConfig {
        BoardConfig {
            harts: 2,
            ram_bytes: 512 << 20,
            devices: vec![DeviceConfig::Balloon],
        }
    }

    #[test]
    fn validation() {
        assert!(board().validate().is_ok());
        for bad in [
            BoardConfig {
                harts: 0,
                ..board()
            },
            BoardConfig {
                harts: 9,
                ..board()
            },
            BoardConfig {
                ram_bytes: 1 << 20,
                ..board()
            },
            BoardConfig {
                ram_bytes: (512 << 20) + 1,
                ..board()
            },
            BoardConfig {
                devices: vec![DeviceConfig::Balloon; 9],
                ..board()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn differences_are_named() {
        let a = board();
        assert!(a.compare(&a.clone()).is_ok());
        let b = BoardConfig {
            harts: 4,
            ram_bytes: 1 << 30,
            devices: vec![],
        };
        let e = a.compare(&b).unwrap_err().to_string();
        assert!(e.contains("2 harts here, 4 harts there"), "{e}");
        assert!(
            e.contains("536870912 bytes of RAM here, 1073741824 there"),
            "{e}"
        );
        assert!(
            e.contains("slot 0: virtio-balloon here, nothing there"),
            "{e}"
        );
    }

    #[test]
    fn json_round_trip_and_junk() {
        let a = board();
        assert_eq!(BoardConfig::from_json(&a.to_json()).unwrap(), a);
        assert!(BoardConfig::from_json("{").is_err());
        assert!(BoardConfig::from_json(r#"{"harts":0,"ram_bytes":0,"devices":[]}"#).is_err());
    }
}

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
    /// virtio-net with this MAC; `offloads`: checksum and TSO offered. Its
    /// host side is a TAP device, named on each host's command line.
    Net { mac: [u8; 6], offloads: bool },
}

impl DeviceConfig {
    /// The kind's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceConfig::Balloon => "virtio-balloon",
            DeviceConfig::Net { .. } => "virtio-net",
        }
    }
}

/// `52:54:00:12:34:56`.
pub fn show_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `52:54:00:12:34:56`: a unicast address.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad = || format!("'{s}' is not a MAC address (six hex bytes: 52:54:00:12:34:56)");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut m = [0u8; 6];
    for (d, p) in m.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *d = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if m[0] & 1 != 0 {
        return Err(format!(
            "{s} is a multicast address; a NIC needs a unicast one"
        ));
    }
    if m == [0; 6] {
        return Err(format!("{s} is not a usable MAC address"));
    }
    Ok(m)
}

impl fmt::Display for DeviceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceConfig::Net { mac, offloads } => write!(
                f,
                "virtio-net {}{}",
                show_mac(mac),
                if *offloads { "" } else { " (no offloads)" }
            ),
            d => f.write_str(d.kind()),
        }
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
        let macs: Vec<&[u8; 6]> = self
            .devices
            .iter()
            .filter_map(|d| match d {
                DeviceConfig::Net { mac, .. } => Some(mac),
                _ => None,
            })
            .collect();
        for (i, m) in macs.iter().enumerate() {
            if macs[..i].contains(m) {
                return Err(ConfigError::DuplicateMac(show_mac(m)));
            }
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
    fn macs() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Ok([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        for bad in [
            "52:54:00:12:34",
            "52:54:00:12:34:5g",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "525400123456",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        let nic = |m| DeviceConfig::Net {
            mac: m,
            offloads: true,
        };
        let twice = BoardConfig {
            devices: vec![nic([2, 0, 0, 0, 0, 1]), nic([2, 0, 0, 0, 0, 1])],
            ..board()
        };
        assert_eq!(
            twice.validate(),
            Err(ConfigError::DuplicateMac("02:00:00:00:00:01".into()))
        );
        assert!(nic([2, 0, 0, 0, 0, 1])
            .to_string()
            .contains("02:00:00:00:00:01"));
    }

    #[test]
    fn json_round_trip_and_junk() {
        let a = board();
        assert_eq!(BoardConfig::from_json(&a.to_json()).unwrap(), a);
        assert!(BoardConfig::from_json("{").is_err());
        assert!(BoardConfig::from_json(r#"{"harts":0,"ram_bytes":0,"devices":[]}"#).is_err());
    }
}

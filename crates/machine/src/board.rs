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
    /// virtio-blk: a disk of `bytes` (a non-zero multiple of 512),
    /// read-only or not, whose device ID (`T_GET_ID`, the guest's
    /// `serial`) is `id`, at most 20 bytes. The image behind it is host
    /// state: each VMM opens its own ([`crate::HostDevice`]).
    Block {
        /// Capacity in bytes.
        bytes: u64,
        /// Offered read-only.
        readonly: bool,
        /// Device ID string.
        id: String,
    },
}

impl DeviceConfig {
    /// The kind's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceConfig::Balloon => "virtio-balloon",
            DeviceConfig::Net { .. } => "virtio-net",
            DeviceConfig::Block { .. } => "virtio-blk",
        }
    }

    /// Checks what the device itself requires of its configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            DeviceConfig::Balloon | DeviceConfig::Net { .. } => Ok(()),
            DeviceConfig::Block { bytes, id, .. } => {
                if *bytes == 0 || !bytes.is_multiple_of(512) {
                    return Err(ConfigError::Disk(format!(
                        "a disk of {bytes} bytes: the size must be a non-zero multiple of 512"
                    )));
                }
                if id.len() > godwit_devices::virtio::block::ID_BYTES {
                    return Err(ConfigError::Disk(format!(
                        "disk id {id:?} is {} bytes: at most {}",
                        id.len(),
                        godwit_devices::virtio::block::ID_BYTES
                    )));
                }
                Ok(())
            }
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
            DeviceConfig::Balloon => f.write_str(self.kind()),
            DeviceConfig::Block {
                bytes,
                readonly,
                id,
            } => write!(
                f,
                "{} {id:?} ({bytes} bytes, {})",
                self.kind(),
                if *readonly { "read-only" } else { "read-write" }
            ),
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
        self.devices.iter().try_for_each(DeviceConfig::validate)
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

    fn disk(bytes: u64, readonly: bool, id: &str) -> DeviceConfig {
        DeviceConfig::Block {
            bytes,
            readonly,
            id: id.into(),
        }
    }

    #[test]
    fn disks_are_part_of_the_board() {
        let a = BoardConfig {
            devices: vec![DeviceConfig::Balloon, disk(16 << 20, false, "root")],
            ..board()
        };
        assert!(a.validate().is_ok());
        assert!(a.compare(&a.clone()).is_ok());
        // Another size, identity or mode is another board, named as such.
        for (other, want) in [
            (
                disk(32 << 20, false, "root"),
                r#"virtio slot 1: virtio-blk "root" (16777216 bytes, read-write) here, virtio-blk "root" (33554432 bytes, read-write) there"#,
            ),
            (disk(16 << 20, false, "data"), r#"virtio-blk "data""#),
            (disk(16 << 20, true, "root"), "read-only) there"),
        ] {
            let b = BoardConfig {
                devices: vec![DeviceConfig::Balloon, other],
                ..board()
            };
            let e = a.compare(&b).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let b = BoardConfig {
            devices: vec![DeviceConfig::Balloon],
            ..board()
        };
        let e = a.compare(&b).unwrap_err().to_string();
        assert!(e.contains("slot 1: virtio-blk"), "{e}");
        assert!(e.contains("here, nothing there"), "{e}");
        assert_eq!(BoardConfig::from_json(&a.to_json()).unwrap(), a);
        for bad in [
            disk(0, false, "x"),
            disk(1000, false, "x"),
            disk(512, false, "123456789012345678901"),
        ] {
            let b = BoardConfig {
                devices: vec![bad],
                ..board()
            };
            assert!(matches!(b.validate(), Err(ConfigError::Disk(_))), "{b:?}");
        }
        assert!(BoardConfig {
            devices: vec![disk(512, true, "12345678901234567890")],
            ..board()
        }
        .validate()
        .is_ok());
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

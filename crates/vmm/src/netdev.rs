//! `--net tap=NAME[,mac=MAC][,offload=on|off]`: a NIC on the board and the
//! TAP it is connected to on this host.

use anyhow::{bail, Context, Result};
use godwit_devices::virtio::net::MAX_FORWARDED;
use godwit_devices::{rarp_frame, Net};
use godwit_machine::board::{parse_mac, show_mac};
use godwit_machine::tap::Tap;
use godwit_machine::{BoardConfig, DeviceConfig, HostDevice, VmHandle};

/// One `--net` as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    /// The TAP device's name.
    pub tap: String,
    /// The MAC the guest sees (`None`: the default for its position).
    pub mac: Option<[u8; 6]>,
    /// Offer the checksum and TSO offloads.
    pub offloads: bool,
}

impl std::str::FromStr for NetSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<NetSpec, String> {
        let mut spec = NetSpec {
            tap: String::new(),
            mac: None,
            offloads: true,
        };
        for part in s.split(',') {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                format!(
                    "'{part}' in --net {s}: expected key=value (tap=NAME, mac=MAC, offload=on|off)"
                )
            })?;
            match k {
                "tap" => spec.tap = v.to_string(),
                "mac" => spec.mac = Some(parse_mac(v)?),
                "offload" => {
                    spec.offloads = match v {
                        "on" => true,
                        "off" => false,
                        _ => return Err(format!("offload={v}: on or off")),
                    }
                }
                _ => return Err(format!("unknown --net option '{k}' (tap, mac, offload)")),
            }
        }
        if spec.tap.is_empty() {
            return Err(format!("--net {s}: tap=NAME is required"));
        }
        Ok(spec)
    }
}

/// The MAC of the `n`th NIC when none is given: locally administered
/// (52:54:00, as QEMU's), the same on every host.
pub fn default_mac(n: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, 0x34, 0x56u8.wrapping_add(n as u8)]
}

/// The board devices for `specs`, in order.
pub fn nic_devices(specs: &[NetSpec]) -> Vec<DeviceConfig> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| DeviceConfig::Net {
            mac: s.mac.unwrap_or_else(|| default_mac(i)),
            offloads: s.offloads,
        })
        .collect()
}

/// Opens the TAPs of `specs` (before anything boots: a missing or busy
/// TAP is an error now).
pub fn open_taps(specs: &[NetSpec]) -> Result<Vec<Tap>> {
    let mut taps = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        if specs[..i].iter().any(|o| o.tap == s.tap) {
            bail!("TAP {} is given twice", s.tap);
        }
        taps.push(Tap::open(&s.tap).with_context(|| format!("--net tap={}", s.tap))?);
    }
    Ok(taps)
}

/// The host side of every device of `board`, in slot order: the TAPs go
/// to its NICs and the disk images to its disks, each in order. Exactly as
/// many of each are needed.
pub fn host_devices(
    board: &BoardConfig,
    taps: Vec<Tap>,
    disks: Vec<HostDevice>,
) -> Result<Vec<HostDevice>> {
    let count = |f: fn(&DeviceConfig) -> bool| board.devices.iter().filter(|d| f(d)).count();
    let nics = count(|d| matches!(d, DeviceConfig::Net { .. }));
    let blks = count(|d| matches!(d, DeviceConfig::Block { .. }));
    if nics != taps.len() {
        bail!(
            "the VM has {nics} NIC(s) ({}) and {} TAP(s) were given: give one --net tap=NAME per NIC",
            board
                .devices
                .iter()
                .filter_map(|d| match d {
                    DeviceConfig::Net { mac, .. } => Some(show_mac(mac)),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(", "),
            taps.len()
        );
    }
    if blks != disks.len() {
        bail!(
            "the VM has {blks} disk(s) and {} --drive were given: give one per disk, in order",
            disks.len()
        );
    }
    let mut taps = taps.into_iter();
    let mut disks = disks.into_iter();
    Ok(board
        .devices
        .iter()
        .map(|d| match d {
            DeviceConfig::Net { .. } => taps.next().map_or(HostDevice::None, HostDevice::Tap),
            DeviceConfig::Block { .. } => disks.next().unwrap_or(HostDevice::None),
            _ => HostDevice::None,
        })
        .collect())
}

/// The virtio slots of `board`'s NICs, in order (the NIC ordinal is the
/// index in this list).
pub fn nic_slots(board: &BoardConfig) -> Vec<usize> {
    board
        .devices
        .iter()
        .enumerate()
        .filter(|(_, d)| matches!(d, DeviceConfig::Net { .. }))
        .map(|(slot, _)| slot)
        .collect()
}

/// At a migration source, the VM paused: the frames waiting in each NIC's
/// TAP (NIC ordinal, frame), at most [`MAX_FORWARDED`] per NIC.
pub fn take_frames(vm: &VmHandle) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    for (nic, slot) in nic_slots(vm.board()).into_iter().enumerate() {
        let frames = vm
            .with_device::<Net, _>(slot, |n| n.take_backend_frames(MAX_FORWARDED))
            .unwrap_or_default();
        out.extend(frames.into_iter().map(|f| (nic as u16, f)));
    }
    out
}

/// At a migration destination, before the VM resumes: the frames the
/// source took from its TAPs, for each NIC's guest ahead of its own TAP's.
pub fn deliver_frames(vm: &VmHandle, frames: Vec<(u16, Vec<u8>)>) -> Result<()> {
    let slots = nic_slots(vm.board());
    for (nic, frame) in frames {
        let Some(&slot) = slots.get(usize::from(nic)) else {
            bail!("a frame for NIC {nic}; the VM has {}", slots.len());
        };
        vm.with_device::<Net, _>(slot, |n| n.deliver_forwarded(frame));
    }
    Ok(())
}

/// One RARP frame for each NIC's MAC on its own TAP: the switch learns the
/// VM's port now (the destination, once the state arrived; the source, if
/// the VM resumes there after a failed migration). With `guest`, each NIC
/// also asks the guest to announce itself (GUEST_ANNOUNCE).
pub fn announce_once(vm: &VmHandle, guest: bool) {
    for slot in nic_slots(vm.board()) {
        vm.with_device::<Net, _>(slot, |n| {
            if guest {
                n.announce();
            }
            let _ = n.send_host_frame(&rarp_frame(n.mac()));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s: NetSpec = "tap=gwtap0,mac=52:54:00:00:00:01,offload=off"
            .parse()
            .unwrap();
        assert_eq!(s.tap, "gwtap0");
        assert_eq!(s.mac, Some([0x52, 0x54, 0, 0, 0, 1]));
        assert!(!s.offloads);
        for bad in [
            "",
            "mac=52:54:00:00:00:01",
            "tap",
            "tap=x,mac=zz",
            "tap=x,color=red",
            "tap=x,offload=maybe",
            "tap=x,mac=01:00:00:00:00:01",
        ] {
            assert!(bad.parse::<NetSpec>().is_err(), "{bad}");
        }
        let d = nic_devices(&["tap=a".parse().unwrap(), "tap=b".parse().unwrap()]);
        assert_ne!(d[0], d[1], "default MACs differ");
    }
}

//! The host side of the board's devices: what each virtio slot is
//! connected to on this host (a disk image, a TAP), which the board does not say
//! because it differs between the two hosts of a migration.
//!
//! [`Vm::boot_with`](crate::Vm::boot_with) and
//! [`Vm::restore_with`](crate::Vm::restore_with) take one [`HostDevice`]
//! per slot, in slot order (missing entries at the end are
//! [`HostDevice::None`]): a disk ([`crate::DeviceConfig::Block`]) needs a
//! [`HostDevice::Disk`] of exactly its size, the balloon needs nothing.
//!
//! # Disks and migration
//!
//! A disk image is locked while a VM has it open ([`FileDisk`]: an
//! exclusive `flock` read-write, a shared one read-only). With shared
//! storage, the lock moves with the VM:
//!
//! - source, after [`VmHandle::pause`](crate::VmHandle::pause):
//!   [`VmHandle::release_disks`] flushes every disk and closes its image
//!   (dropping the lock). Requests the guest makes meanwhile (none while
//!   paused) wait in the queue;
//! - destination: opens its images (taking the locks) only when the state
//!   arrives, and builds the VM from it with [`Vm::restore_with`](crate::Vm::restore_with);
//! - source, if the migration fails before the destination resumed:
//!   [`VmHandle::reacquire_disks`] reopens and relocks the images (their
//!   sizes checked) before [`VmHandle::resume`](crate::VmHandle::resume).

use crate::board::DeviceConfig;
use crate::bus::lock;
use crate::error::VmError;
use crate::vm::{Machine, Shared, VmHandle};
use godwit_devices::{
    Balloon, BalloonFeatures, Block, BlockBackend, BlockCounters, DiskOpenError, FileDisk, Net,
    NetConfig, VirtioDevice,
};
use godwit_memory::GuestRam;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::Ordering::SeqCst;

/// What one virtio slot is connected to on this host.
pub enum HostDevice {
    /// Nothing (the balloon).
    None,
    /// The backend of a disk.
    Disk(Box<dyn BlockBackend>),
    /// A NIC's TAP device.
    Tap(crate::tap::Tap),
}

impl HostDevice {
    /// Opens the disk image at `path` (read-only or not) with its lock; see
    /// [`FileDisk::open`] for what is refused.
    pub fn open_image(path: impl AsRef<Path>, readonly: bool) -> Result<HostDevice, DiskOpenError> {
        Ok(HostDevice::Disk(Box::new(FileDisk::open(path, readonly)?)))
    }

    fn describe(&self) -> &'static str {
        match self {
            HostDevice::None => "nothing",
            HostDevice::Disk(_) => "a disk",
            HostDevice::Tap(_) => "a TAP",
        }
    }
}

/// Builds the device of slot `slot` from its configuration and host side.
pub(crate) fn new_device(
    slot: usize,
    d: &DeviceConfig,
    host: HostDevice,
    ram: &GuestRam,
) -> Result<Box<dyn VirtioDevice>, VmError> {
    let fail = |reason: String| VmError::HostDevice {
        slot,
        device: d.to_string(),
        reason,
    };
    match (d, host) {
        (DeviceConfig::Balloon, HostDevice::None) => {
            Ok(Box::new(Balloon::new(BalloonFeatures::default(), ram)))
        }
        (
            DeviceConfig::Block {
                bytes,
                readonly,
                id,
            },
            HostDevice::Disk(backend),
        ) => {
            let what = backend.describe();
            let block = Block::new(backend, *readonly, id).map_err(|e| fail(e.to_string()))?;
            if block.capacity_bytes() != *bytes {
                return Err(fail(format!(
                    "{what} is {} bytes, the board's disk {bytes}",
                    block.capacity_bytes()
                )));
            }
            Ok(Box::new(block))
        }
        (DeviceConfig::Block { .. }, HostDevice::None) => {
            Err(fail("no disk image was given for it".into()))
        }
        (DeviceConfig::Net { mac, offloads }, HostDevice::Tap(tap)) => Ok(Box::new(Net::new(
            NetConfig {
                mac: *mac,
                offloads: *offloads,
            },
            Box::new(tap),
        ))),
        (DeviceConfig::Net { .. }, HostDevice::None) => Err(fail(
            "no TAP device was given for it (--net tap=NAME)".into(),
        )),
        (d, h) => Err(fail(format!(
            "{} cannot be connected to {}",
            d.kind(),
            h.describe()
        ))),
    }
}

/// Lines `host` up with `n` board devices: missing entries are
/// [`HostDevice::None`]; more entries than devices is an error.
pub(crate) fn align(mut host: Vec<HostDevice>, n: usize) -> Result<Vec<HostDevice>, VmError> {
    if host.len() > n {
        return Err(VmError::HostDevice {
            slot: n,
            device: "nothing".into(),
            reason: format!("{} host devices for {n} virtio devices", host.len()),
        });
    }
    host.resize_with(n, || HostDevice::None);
    Ok(host)
}

/// One disk of a running VM, for `query-block`-style reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiskInfo {
    /// Its virtio slot.
    pub slot: usize,
    /// Device ID string.
    pub id: String,
    /// Capacity in bytes.
    pub bytes: u64,
    /// Offered read-only.
    pub readonly: bool,
    /// What it is on this host (the image's path).
    pub backend: String,
    /// Released for a migration's switch ([`VmHandle::release_disks`]).
    pub released: bool,
    /// What the guest did with it.
    pub counters: BlockCounters,
}

/// Releasing or taking back a VM's disks failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskControlError {
    /// Disks are released only while the VM is paused.
    #[error("the VM must be paused before its disks are released")]
    NotPaused,
    /// A disk's backend failed (flush, close, reopen, lock, size).
    #[error("disk {id:?} in virtio slot {slot} ({backend}): {err}")]
    Disk {
        /// Its slot.
        slot: usize,
        /// Its device ID.
        id: String,
        /// What it is on this host.
        backend: String,
        /// What failed.
        err: std::io::Error,
    },
}

/// Runs `f` on every disk of the VM, in slot order.
fn each_disk<R>(shared: &Shared, mut f: impl FnMut(usize, &mut Block) -> Option<R>) -> Option<R> {
    for (slot, s) in shared.devices.slots.iter().enumerate() {
        let mut t = lock(&s.transport);
        if let Some(b) = t.device_as_mut::<Block>() {
            if let Some(r) = f(slot, b) {
                return Some(r);
            }
        }
    }
    None
}

fn disk_error(slot: usize, b: &Block, err: std::io::Error) -> DiskControlError {
    DiskControlError::Disk {
        slot,
        id: b.id(),
        backend: b.backend_description(),
        err,
    }
}

fn disks(shared: &Shared) -> Vec<DiskInfo> {
    let mut out = Vec::new();
    each_disk::<()>(shared, |slot, b| {
        out.push(DiskInfo {
            slot,
            id: b.id(),
            bytes: b.capacity_bytes(),
            readonly: b.read_only(),
            backend: b.backend_description(),
            released: b.is_released(),
            counters: b.counters(),
        });
        None
    });
    out
}

fn release_disks(shared: &Shared) -> Result<(), DiskControlError> {
    if !shared.ctl.paused.load(SeqCst) {
        return Err(DiskControlError::NotPaused);
    }
    let mut released = Vec::new();
    let failed = each_disk(shared, |slot, b| match b.release_backend() {
        Ok(()) => {
            released.push(slot);
            None
        }
        Err(e) => Some(disk_error(slot, b, e)),
    });
    let Some(e) = failed else {
        return Ok(());
    };
    // All or none: the VM keeps the disks it had (best effort).
    for slot in released {
        if let Some(s) = shared.devices.slots.get(slot) {
            if let Some(b) = lock(&s.transport).device_as_mut::<Block>() {
                let _ = b.reacquire_backend();
            }
        }
    }
    Err(e)
}

fn reacquire_disks(shared: &Shared) -> Result<(), DiskControlError> {
    let mut first = None;
    each_disk::<()>(shared, |slot, b| {
        if let Err(e) = b.reacquire_backend() {
            first.get_or_insert(disk_error(slot, b, e));
        }
        None
    });
    // Requests that waited are served once the device's thread runs
    // (now, or at resume if the VM is paused).
    for w in &shared.workers {
        w.wake.signal();
    }
    first.map_or(Ok(()), Err)
}

impl VmHandle {
    /// The board's disks, with what the guest did with them.
    pub fn disks(&self) -> Vec<DiskInfo> {
        disks(self.shared())
    }

    /// For a migration's switch, after [`pause`](Self::pause): flushes
    /// every disk (`fdatasync`) and closes its image, dropping the lock, so
    /// that the destination may open it. All or none: on error the disks
    /// already released are taken back, and the error names the disk.
    pub fn release_disks(&self) -> Result<(), DiskControlError> {
        release_disks(self.shared())
    }

    /// Takes back the disks [`release_disks`](Self::release_disks) let go
    /// of (the migration failed): reopens and relocks each image, checks
    /// its size, and lets the devices serve the requests that waited.
    /// Every disk is tried; the first error is returned.
    pub fn reacquire_disks(&self) -> Result<(), DiskControlError> {
        reacquire_disks(self.shared())
    }
}

impl Machine<'_> {
    /// The board's disks (see [`VmHandle::disks`]).
    pub fn disks(&self) -> Vec<DiskInfo> {
        disks(self.shared())
    }

    /// See [`VmHandle::release_disks`]; the VM must be paused.
    pub fn release_disks(&mut self) -> Result<(), DiskControlError> {
        release_disks(self.shared())
    }

    /// See [`VmHandle::reacquire_disks`].
    pub fn reacquire_disks(&mut self) -> Result<(), DiskControlError> {
        reacquire_disks(self.shared())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BoardConfig, RestoreError, Vm, VmConfig};
    use std::path::PathBuf;

    /// A file removed on drop.
    struct Temp(PathBuf);

    impl Temp {
        fn new(name: &str, bytes: &[u8]) -> Temp {
            let p = std::env::temp_dir().join(format!("godwit-host-{name}-{}", std::process::id()));
            std::fs::write(&p, bytes).unwrap();
            Temp(p)
        }

        fn zeroed(name: &str, len: u64) -> Temp {
            let t = Temp::new(name, &[]);
            std::fs::File::options()
                .write(true)
                .open(&t.0)
                .unwrap()
                .set_len(len)
                .unwrap();
            t
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// The smallest riscv64 `Image` the loader takes (one file per test:
    /// tests run in parallel in one process).
    fn kernel(test: &str) -> Temp {
        let mut v = vec![0u8; 8192];
        v[8..16].copy_from_slice(&(2u64 << 20).to_le_bytes());
        v[16..24].copy_from_slice(&8192u64.to_le_bytes());
        v[48..56].copy_from_slice(b"RISCV\0\0\0");
        v[56..60].copy_from_slice(b"RSC\x05");
        Temp::new(&format!("{test}-kernel"), &v)
    }

    fn board(bytes: u64) -> BoardConfig {
        BoardConfig {
            harts: 1,
            ram_bytes: 64 << 20,
            devices: vec![
                DeviceConfig::Balloon,
                DeviceConfig::Block {
                    bytes,
                    readonly: false,
                    id: "root".into(),
                },
            ],
        }
    }

    fn boot(k: &Temp, board: BoardConfig, host: Vec<HostDevice>) -> Result<Vm, VmError> {
        Vm::boot_with(
            VmConfig {
                board,
                kernel: k.0.clone(),
                initrd: None,
                bios: None,
                cmdline: String::new(),
                console: Box::new(std::io::sink()),
            },
            host,
        )
    }

    fn image(t: &Temp) -> HostDevice {
        HostDevice::open_image(&t.0, false).unwrap()
    }

    #[test]
    fn disks_need_a_fitting_image() {
        let k = kernel("fit");
        let img = Temp::zeroed("fit", 1 << 20);
        let small = Temp::zeroed("small", 1 << 19);
        // Each case opens its images when it runs (a second open of the
        // same image would find it locked).
        type Host<'a> = Box<dyn Fn() -> Vec<HostDevice> + 'a>;
        let cases: Vec<(Host, &str)> = vec![
            (Box::new(Vec::new), "no disk image was given"),
            (
                Box::new(|| vec![HostDevice::None, image(&small)]),
                "is 524288 bytes, the board's disk 1048576",
            ),
            (
                Box::new(|| vec![image(&small), HostDevice::None]),
                "virtio-balloon cannot be connected to a disk",
            ),
            (
                Box::new(|| vec![HostDevice::None, HostDevice::None, HostDevice::None]),
                "3 host devices for 2 virtio devices",
            ),
        ];
        for (host, want) in cases {
            let e = boot(&k, board(1 << 20), host())
                .err()
                .expect("refused")
                .to_string();
            assert!(e.contains(want), "{e}");
        }
        let vm = boot(&k, board(1 << 20), vec![HostDevice::None, image(&img)]).unwrap();
        let disks = vm.handle().disks();
        assert_eq!(disks.len(), 1);
        let d = &disks[0];
        assert_eq!(
            (d.slot, d.id.as_str(), d.bytes, d.readonly),
            (1, "root", 1 << 20, false)
        );
        assert_eq!(d.backend, img.0.display().to_string());
        assert!(!d.released);
        // The image is locked while the VM has it.
        assert!(matches!(
            FileDisk::open(&img.0, true),
            Err(DiskOpenError::Locked { .. })
        ));
        drop(vm);
        FileDisk::open(&img.0, false).expect("unlocked once the VM is gone");
    }

    #[test]
    fn the_lock_moves_with_the_state() {
        let k = kernel("move");
        let img = Temp::zeroed("move", 1 << 20);
        let src = boot(&k, board(1 << 20), vec![HostDevice::None, image(&img)]).unwrap();
        let h = src.handle();
        assert!(matches!(
            h.release_disks(),
            Err(DiskControlError::NotPaused)
        ));
        src.set_paused(true);
        h.release_disks().unwrap();
        assert!(h.disks()[0].released);
        let state = h.save_state().unwrap();
        // The destination opens the image once the state is there.
        let ram = h.ram();
        let dest = Vm::restore_with(
            &state,
            ram.clone(),
            Box::new(std::io::sink()),
            Some(&board(1 << 20)),
            vec![HostDevice::None, image(&img)],
        )
        .unwrap();
        assert!(!dest.handle().disks()[0].released);
        // The source cannot take it back while the destination has it.
        let e = h.reacquire_disks().unwrap_err().to_string();
        assert!(e.contains("in use") && e.contains("root"), "{e}");
        assert!(h.disks()[0].released);
        drop(dest);
        h.reacquire_disks().unwrap();
        assert!(!h.disks()[0].released);
        // A destination expecting another disk, or given another image,
        // refuses the state.
        let e = Vm::restore_with(
            &state,
            ram.clone(),
            Box::new(std::io::sink()),
            Some(&board(2 << 20)),
            vec![],
        )
        .err()
        .expect("refused");
        assert!(matches!(e, RestoreError::Board(_)), "{e}");
        let other = Temp::zeroed("other", 2 << 20);
        let e = Vm::restore_with(
            &state,
            ram,
            Box::new(std::io::sink()),
            None,
            vec![HostDevice::None, image(&other)],
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(e.contains("is 2097152 bytes"), "{e}");
    }
}

#[cfg(test)]
mod load_state_tests {
    use crate::board::{BoardConfig, DeviceConfig};
    use crate::state::HartRun;
    use crate::{Vm, VmConfig};

    #[test]
    fn a_state_loads_into_the_paused_vm_in_place() {
        let path = std::env::temp_dir().join(format!("godwit-ls-kernel-{}", std::process::id()));
        let mut v = vec![0u8; 8192];
        v[8..16].copy_from_slice(&(2u64 << 20).to_le_bytes());
        v[16..24].copy_from_slice(&8192u64.to_le_bytes());
        v[48..56].copy_from_slice(b"RISCV\0\0\0");
        v[56..60].copy_from_slice(b"RSC\x05");
        std::fs::write(&path, &v).unwrap();
        let board = |harts| BoardConfig {
            harts,
            ram_bytes: 64 << 20,
            devices: vec![DeviceConfig::Balloon],
        };
        let boot = |harts| {
            Vm::boot(VmConfig {
                board: board(harts),
                kernel: path.clone(),
                initrd: None,
                bios: None,
                cmdline: String::new(),
                console: Box::new(std::io::sink()),
            })
            .unwrap()
        };
        let vm = boot(2);
        let h = vm.handle();
        let before = h.exec(|m| m.save_state()).unwrap();
        // Change what a checkpoint restores: registers, HSM, the free map.
        let mut other = before.clone();
        other.harts[0].cpu.pc += 0x40;
        other.harts[0].cpu.x[5] = 0xdead_beef;
        other.harts[1].run = HartRun::Started;
        other.free_pages[0] = 0b1011;
        assert!(
            h.load_state(&other).is_err(),
            "a running VM does not take a state"
        );
        vm.set_paused(true);
        h.load_state(&other).unwrap();
        let now = h.exec(|m| m.save_state()).unwrap();
        assert_eq!(format!("{:?}", now.harts), format!("{:?}", other.harts));
        assert_eq!(now.free_pages[0], 0b1011);
        assert_eq!(
            format!("{:?}", (&now.plic, &now.clint, &now.devices)),
            format!("{:?}", (&other.plic, &other.clint, &other.devices))
        );
        h.load_state(&before).unwrap();
        assert_eq!(
            format!("{:?}", h.exec(|m| m.save_state()).unwrap().harts),
            format!("{:?}", before.harts)
        );
        // A state of another board is refused, and nothing changes.
        let one = boot(1).handle().exec(|m| m.save_state()).unwrap();
        let e = h.load_state(&one).unwrap_err().to_string();
        assert!(e.contains("harts"), "{e}");
        assert_eq!(
            format!("{:?}", h.exec(|m| m.save_state()).unwrap().harts),
            format!("{:?}", before.harts)
        );
        // An IPI posted to a hart that is out (asleep in `wfi`, parked by
        // the pause) before it ran again is part of the state: the hart
        // finds it pending wherever the state is loaded.
        vm.set_paused(true);
        h.shared().sigs[1].post(crate::vcpu::REQ_IPI);
        let saved = h.save_state().unwrap();
        assert_ne!(
            saved.harts[1].cpu.mip_sw & godwit_hart::irq::SSIP,
            0,
            "the IPI is in the saved hart"
        );
        assert_eq!(saved.harts[0].cpu.mip_sw & godwit_hart::irq::SSIP, 0);
        let _ = std::fs::remove_file(&path);
    }
}

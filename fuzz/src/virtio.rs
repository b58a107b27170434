//! A hostile guest driver for virtio-mmio devices, steered by the fuzz
//! input. It negotiates features and sets up every queue through the MMIO
//! registers as Linux does, then runs the input as a program of driver
//! actions on real guest RAM (`godwit_memory::GuestRam`): raw descriptors
//! (any address, length, flags and `next`), bytes anywhere in RAM (the
//! device headers and the rings themselves), available-ring entries and
//! indices, kicks, register and configuration accesses, host-side device
//! actions, resets, and save/restore into a fresh device.
//!
//! Input layout:
//!
//! ```text
//! header := features:u64 (ANDed with the offered ones) shift:u8 (queue
//!           size = QueueNumMax >> (shift % 8)) flags:u8 (device-specific)
//! op*    := opcode:u8 fields...              (see `Op` below)
//! ```
//!
//! The oracle: no panic, no endless loop (libFuzzer's timeout), the state
//! taken at any point restores into a fresh device and reads back equal,
//! and what each device's rig checks (a disk is never accessed outside its
//! bounds, nor written when read-only).

use crate::input::{Input, Output};
use godwit_devices::virtio::queue::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use godwit_devices::virtio::status;
use godwit_devices::{MmioDevice, VirtioDevice, VirtioMmio};
use godwit_memory::GuestRam;
use std::sync::Arc;

/// Guest RAM: 1 MiB at the usual base.
pub const RAM_BASE: u64 = 0x8000_0000;
pub const RAM_SIZE: usize = 1 << 20;
/// The rings live in the top quarter, 16 KiB a queue; the driver's
/// buffers (device headers, data) anywhere below.
pub const RINGS: u64 = RAM_BASE + (RAM_SIZE as u64 / 4) * 3;
const RING_STRIDE: u64 = 16 << 10;

/// Register offsets (virtio-mmio version 2).
pub mod reg {
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const CONFIG: u64 = 0x100;
}

/// Opcodes of the driver program.
pub mod op {
    /// `q:u8 i:u16 kind:u8 addr:(u32 offset into RAM | u64 raw if kind&1)
    /// len:u32 flags:u16 next:u16`: writes raw descriptor `i`.
    pub const DESC: u8 = 0;
    /// `off:u32 n:u8 bytes[n]`: writes bytes into RAM (offset mod RAM).
    pub const POKE: u8 = 1;
    /// `q:u8 head:u16`: puts `head` in the next available-ring slot.
    pub const PUBLISH: u8 = 2;
    /// `q:u8 idx:u16`: sets the available index to anything.
    pub const AVAIL_IDX: u8 = 3;
    /// `q:u8`: notifies queue `q` (any number), then lets the device work.
    pub const KICK: u8 = 4;
    /// `off:u16 size:u8 value:u32`: a register store, then device work.
    pub const WRITE_REG: u8 = 5;
    /// `off:u16 size:u8`: a register load.
    pub const READ_REG: u8 = 6;
    /// `what:u8 arg:u32 ...`: a host-side action of the device's rig.
    pub const HOST: u8 = 7;
    /// Resets the device and negotiates again (same header).
    pub const REPROBE: u8 = 8;
    /// Saves the state, restores it into a fresh device and goes on there.
    pub const SAVE_RESTORE: u8 = 9;
    /// Reads and acknowledges the interrupt status.
    pub const ACK: u8 = 10;
    /// `q:u8 n:u8 (off:u32 len:u32 writable:u8)*n`: a well-linked chain of
    /// buffers in RAM from the next free descriptors, published and kicked
    /// (the shortest way to a request the device serves).
    pub const CHAIN: u8 = 11;
    /// Number of opcodes (the opcode byte is taken modulo it).
    pub const COUNT: u8 = 12;
}

/// What differs between devices: how to build one, the host side, checks.
pub trait Rig {
    /// A fresh device; `flags` is the header's device-specific byte.
    fn device(&mut self, ram: &Arc<GuestRam>, flags: u8) -> Box<dyn VirtioDevice>;
    /// A host-side action (a new balloon target, a frame from the network).
    fn host(&mut self, dev: &mut VirtioMmio, what: u8, arg: u32, input: &mut Input);
    /// Checks after the program (the rig's own invariants).
    fn check(&mut self, _dev: &VirtioMmio) {}
}

struct Queue {
    size: u16,
    desc: u64,
    avail: u64,
    avail_idx: u16,
    next_free: u16,
}

/// The driver: the device behind its transport, RAM and the queues as the
/// driver laid them out.
pub struct Driver {
    pub dev: VirtioMmio,
    pub ram: Arc<GuestRam>,
    queues: Vec<Queue>,
    features: u64,
    shift: u8,
}

impl Driver {
    fn w32(&mut self, off: u64, v: u32) {
        self.dev.write(off, 4, u64::from(v));
        self.work();
    }

    fn r32(&mut self, off: u64) -> u32 {
        self.dev.read(off, 4) as u32
    }

    /// What the device's event thread does after a kick or a change.
    pub fn work(&mut self) {
        if self.dev.process().free_map_changed {
            self.dev.release_held();
        }
    }

    /// Reset, feature negotiation and queue setup, as `virtio_mmio.c`.
    pub fn probe(&mut self) {
        self.w32(reg::STATUS, 0);
        self.w32(reg::STATUS, status::ACKNOWLEDGE);
        self.w32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.w32(reg::DEVICE_FEATURES_SEL, 1);
        let mut offered = u64::from(self.r32(reg::DEVICE_FEATURES)) << 32;
        self.w32(reg::DEVICE_FEATURES_SEL, 0);
        offered |= u64::from(self.r32(reg::DEVICE_FEATURES));
        let features = offered & self.features;
        self.w32(reg::DRIVER_FEATURES_SEL, 1);
        self.w32(reg::DRIVER_FEATURES, (features >> 32) as u32);
        self.w32(reg::DRIVER_FEATURES_SEL, 0);
        self.w32(reg::DRIVER_FEATURES, features as u32);
        let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.w32(reg::STATUS, st);
        self.queues.clear();
        let n = self.dev.queues().len().min(8);
        for i in 0..n {
            self.w32(reg::QUEUE_SEL, i as u32);
            let max = self.r32(reg::QUEUE_NUM_MAX) as u16;
            let size = (max >> (self.shift % 8)).max(1);
            let base = RINGS + RING_STRIDE * i as u64;
            let (desc, avail, used) = (base, base + 4096, base + 8192);
            self.w32(reg::QUEUE_NUM, u32::from(size));
            for (lo, addr) in [
                (reg::QUEUE_DESC_LOW, desc),
                (reg::QUEUE_DRIVER_LOW, avail),
                (reg::QUEUE_DEVICE_LOW, used),
            ] {
                self.w32(lo, addr as u32);
                self.w32(lo + 4, (addr >> 32) as u32);
            }
            self.w32(reg::QUEUE_READY, 1);
            self.queues.push(Queue {
                size,
                desc,
                avail,
                avail_idx: 0,
                next_free: 0,
            });
        }
        self.w32(reg::STATUS, st | status::DRIVER_OK);
    }

    fn queue(&mut self, q: u8) -> Option<&mut Queue> {
        let n = self.queues.len();
        if n == 0 {
            return None;
        }
        self.queues.get_mut(usize::from(q) % n)
    }

    fn write_desc(&self, desc: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        let _ = self.ram.write(desc + 16 * u64::from(i), &d);
    }

    fn publish(&mut self, q: u8, head: u16) {
        let ram = self.ram.clone();
        if let Some(q) = self.queue(q) {
            let slot = u64::from(q.avail_idx % q.size);
            let _ = ram.write(q.avail + 4 + 2 * slot, &head.to_le_bytes());
            q.avail_idx = q.avail_idx.wrapping_add(1);
            let _ = ram.write(q.avail + 2, &q.avail_idx.to_le_bytes());
        }
    }

    fn kick(&mut self, q: u8) {
        self.w32(reg::QUEUE_NOTIFY, u32::from(q));
    }
}

/// `dev` behind a transport, negotiated and with its queues set up by the
/// driver (every offered feature), for seeds.
pub fn probed(dev: Box<dyn VirtioDevice>, ram: &Arc<GuestRam>) -> VirtioMmio {
    let mut d = Driver {
        dev: VirtioMmio::new(dev, ram.clone()),
        ram: ram.clone(),
        queues: Vec::new(),
        features: u64::MAX,
        shift: 0,
    };
    d.probe();
    d.dev
}

fn ram_addr(off: u32) -> u64 {
    RAM_BASE + u64::from(off) % RAM_SIZE as u64
}

fn size_of_access(sel: u8) -> u8 {
    1 << (sel % 4)
}

/// Runs one fuzz input against the device `rig` builds.
pub fn run(rig: &mut impl Rig, data: &[u8]) {
    let mut input = Input::new(data);
    let features = input.u64();
    let shift = input.u8();
    let flags = input.u8();
    let ram = Arc::new(GuestRam::new(RAM_BASE, RAM_SIZE).expect("1 MiB of guest RAM"));
    let dev = VirtioMmio::new(rig.device(&ram, flags), ram.clone());
    let mut d = Driver {
        dev,
        ram,
        queues: Vec::new(),
        features,
        shift,
    };
    d.probe();
    while !input.is_empty() {
        match input.u8() % op::COUNT {
            op::DESC => {
                let (q, i, kind) = (input.u8(), input.u16(), input.u8());
                let addr = if kind & 1 == 0 {
                    ram_addr(input.u32())
                } else {
                    input.u64()
                };
                let (len, fl, next) = (input.u32(), input.u16(), input.u16());
                if let Some(qu) = d.queue(q) {
                    let (desc, i) = (qu.desc, i % qu.size);
                    d.write_desc(desc, i, addr, len, fl, next);
                }
            }
            op::POKE => {
                let off = input.u32();
                let n = input.u8();
                let bytes = input.bytes(usize::from(n));
                let at = u64::from(off) % RAM_SIZE as u64;
                let fit = bytes.len().min(RAM_SIZE - at as usize);
                let _ = d.ram.write(RAM_BASE + at, &bytes[..fit]);
            }
            op::PUBLISH => {
                let (q, head) = (input.u8(), input.u16());
                d.publish(q, head);
            }
            op::AVAIL_IDX => {
                let (q, idx) = (input.u8(), input.u16());
                let ram = d.ram.clone();
                if let Some(q) = d.queue(q) {
                    q.avail_idx = idx;
                    let _ = ram.write(q.avail + 2, &idx.to_le_bytes());
                }
            }
            op::KICK => {
                let q = input.u8();
                d.kick(q);
            }
            op::WRITE_REG => {
                let (off, size, v) = (input.u16(), input.u8(), input.u32());
                d.dev
                    .write(u64::from(off) % 0x200, size_of_access(size), u64::from(v));
                d.work();
            }
            op::READ_REG => {
                let (off, size) = (input.u16(), input.u8());
                d.dev.read(u64::from(off) % 0x200, size_of_access(size));
            }
            op::HOST => {
                let (what, arg) = (input.u8(), input.u32());
                rig.host(&mut d.dev, what, arg, &mut input);
                d.work();
            }
            op::REPROBE => d.probe(),
            op::SAVE_RESTORE => {
                let saved = d.dev.state();
                // The old device goes first: a disk image is locked by its
                // user.
                let old = std::mem::replace(
                    &mut d.dev,
                    VirtioMmio::new(Box::new(Placeholder), d.ram.clone()),
                );
                drop(old);
                let mut fresh = VirtioMmio::new(rig.device(&d.ram, flags), d.ram.clone());
                fresh
                    .restore(&saved)
                    .expect("a device's own state restores into a fresh one");
                assert_eq!(fresh.state(), saved, "restored state reads back different");
                d.dev = fresh;
                d.work();
            }
            op::ACK => {
                let s = d.r32(reg::INTERRUPT_STATUS);
                d.w32(reg::INTERRUPT_ACK, s);
            }
            op::CHAIN => {
                let q = input.u8();
                let n = (input.u8() % 8).max(1);
                let bufs: Vec<(u64, u32, bool)> = (0..n)
                    .map(|_| (ram_addr(input.u32()), input.u32(), input.u8() & 1 != 0))
                    .collect();
                let Some(qu) = d.queue(q) else { continue };
                let (desc, size, first) = (qu.desc, qu.size, qu.next_free);
                qu.next_free = first.wrapping_add(u16::from(n)) % size;
                for (k, &(addr, len, w)) in bufs.iter().enumerate() {
                    let i = (first + k as u16) % size;
                    let last = k + 1 == bufs.len();
                    let fl = if w { VIRTQ_DESC_F_WRITE } else { 0 }
                        | if last { 0 } else { VIRTQ_DESC_F_NEXT };
                    d.write_desc(desc, i, addr, len, fl, (i + 1) % size);
                }
                d.publish(q, first);
                d.kick(q);
            }
            _ => unreachable!("opcode is taken modulo op::COUNT"),
        }
    }
    let saved = d.dev.state();
    drop(d.dev);
    let mut fresh = VirtioMmio::new(rig.device(&d.ram, flags), d.ram.clone());
    fresh
        .restore(&saved)
        .expect("a device's own state restores into a fresh one");
    assert_eq!(fresh.state(), saved, "restored state reads back different");
    rig.check(&fresh);
}

/// Stands in for a device for the moment between dropping one and
/// building its successor.
struct Placeholder;

impl VirtioDevice for Placeholder {
    fn device_type(&self) -> u32 {
        0
    }
    fn features(&self) -> u64 {
        0
    }
    fn num_queues(&self) -> u16 {
        0
    }
    fn queue_max_size(&self, _: u16) -> u16 {
        1
    }
    fn read_config(&self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn activate(&mut self, _: u64) {}
    fn notify(&mut self, _: u16, _: &mut [godwit_devices::SplitQueue], _: &GuestRam) -> bool {
        false
    }
    fn poll(
        &mut self,
        _: &mut [godwit_devices::SplitQueue],
        _: &GuestRam,
    ) -> godwit_devices::DeviceEvents {
        Default::default()
    }
    fn reset(&mut self) {}
    fn state(&self) -> godwit_devices::DeviceState {
        unreachable!("never saved")
    }
    fn restore(
        &mut self,
        _: &godwit_devices::DeviceState,
    ) -> Result<(), godwit_devices::StateError> {
        unreachable!("never restored")
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Builds driver programs in the format [`run`] reads, for seeds.
pub struct Program(pub Output);

impl Program {
    /// The header: accept `features` (all offered ones: `u64::MAX`),
    /// full-size queues, device flags `flags`.
    pub fn new(features: u64, flags: u8) -> Self {
        let mut o = Output::default();
        o.u64(features).u8(0).u8(flags);
        Program(o)
    }

    /// Bytes at `off` in RAM.
    pub fn poke(&mut self, off: u32, bytes: &[u8]) -> &mut Self {
        for (k, c) in bytes.chunks(255).enumerate() {
            self.0
                .u8(op::POKE)
                .u32(off + 255 * k as u32)
                .u8(c.len() as u8)
                .bytes(c);
        }
        self
    }

    /// A chain of `(offset, len, device-writable)` buffers on queue `q`.
    pub fn chain(&mut self, q: u8, bufs: &[(u32, u32, bool)]) -> &mut Self {
        self.0.u8(op::CHAIN).u8(q).u8(bufs.len() as u8);
        for &(off, len, w) in bufs {
            self.0.u32(off).u32(len).u8(w as u8);
        }
        self
    }

    /// A host-side action.
    pub fn host(&mut self, what: u8, arg: u32, extra: &[u8]) -> &mut Self {
        self.0.u8(op::HOST).u8(what).u32(arg).bytes(extra);
        self
    }

    /// Any other opcode with its raw fields.
    pub fn op(&mut self, code: u8, fields: &[u8]) -> &mut Self {
        self.0.u8(code).bytes(fields);
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.0 .0.clone()
    }
}

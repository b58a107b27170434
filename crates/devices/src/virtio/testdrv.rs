//! A guest-side virtio-mmio driver for tests: it lays out split rings in a
//! `GuestRam` the way Linux's `virtio_ring.c` does and talks to the
//! transport only through MMIO loads and stores, in the order
//! `virtio_mmio.c` uses.

use super::balloon::Balloon;
use super::mmio::VirtioMmio;
use super::queue::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use super::status;
use crate::MmioDevice;
use godwit_memory::GuestRam;
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) const RAM_BASE: u64 = 0x8000_0000;
pub(crate) const RAM_SIZE: usize = 4 << 20;
/// Rings and driver-owned buffers live in the top MiB of RAM; tests use the
/// rest as "guest memory" to balloon.
pub(crate) const DRIVER_AREA: u64 = RAM_BASE + RAM_SIZE as u64 - (1 << 20);

pub(crate) fn ram() -> Arc<GuestRam> {
    Arc::new(GuestRam::new(RAM_BASE, RAM_SIZE).unwrap())
}

/// One queue as the driver set it up.
pub(crate) struct DriverQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
    avail_idx: u16,
    last_used: u16,
}

pub(crate) struct TestDriver {
    pub dev: VirtioMmio,
    pub ram: Arc<GuestRam>,
    pub queues: Vec<DriverQueue>,
    pub next_alloc: u64,
    /// Times the device asked for the vCPUs' write translations to be
    /// dropped before it released held requests.
    pub barriers: u32,
}

impl TestDriver {
    pub fn new(dev: VirtioMmio) -> Self {
        let ram = dev.ram().clone();
        TestDriver {
            dev,
            ram,
            queues: Vec::new(),
            next_alloc: DRIVER_AREA,
            barriers: 0,
        }
    }

    pub fn r32(&mut self, off: u64) -> u32 {
        self.dev.read(off, 4) as u32
    }

    /// A register write, then what the device's event thread does once
    /// woken (here at once: the test is the only "vCPU").
    pub fn w32(&mut self, off: u64, v: u32) {
        self.dev.write(off, 4, u64::from(v));
        self.process();
    }

    /// Runs the device's deferred work as its event thread would: served
    /// kicks and host-side changes, then the requests held until the vCPUs
    /// (none here) dropped their write translations.
    pub fn process(&mut self) {
        if self.dev.process().free_map_changed {
            self.barriers += 1;
            self.dev.release_held();
        }
    }

    /// The balloon behind the transport.
    pub fn balloon(&self) -> &Balloon {
        self.dev.device_as::<Balloon>().expect("a balloon")
    }

    /// The balloon behind the transport, for host-side changes (follow
    /// them with [`process`](Self::process)).
    pub fn balloon_mut(&mut self) -> &mut Balloon {
        self.dev.device_as_mut::<Balloon>().expect("a balloon")
    }

    pub fn alloc(&mut self, len: u64, align: u64) -> u64 {
        let a = self.next_alloc.next_multiple_of(align);
        self.next_alloc = a + len;
        assert!(
            self.next_alloc <= RAM_BASE + RAM_SIZE as u64,
            "test driver out of memory"
        );
        a
    }

    /// Feature negotiation and queue setup like `virtio_dev_probe` +
    /// `vm_find_vqs`; returns the negotiated features.
    pub fn probe(&mut self, want: u64, nqueues: u16) -> u64 {
        assert_eq!(self.r32(0x000), 0x7472_6976);
        assert_eq!(self.r32(0x004), 2);
        self.w32(0x070, 0);
        self.w32(0x070, status::ACKNOWLEDGE);
        self.w32(0x070, status::ACKNOWLEDGE | status::DRIVER);
        self.w32(0x014, 1);
        let mut offered = u64::from(self.r32(0x010)) << 32;
        self.w32(0x014, 0);
        offered |= u64::from(self.r32(0x010));
        let features = offered & want;
        self.w32(0x024, 1);
        self.w32(0x020, (features >> 32) as u32);
        self.w32(0x024, 0);
        self.w32(0x020, features as u32);
        let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.w32(0x070, st);
        assert_ne!(self.r32(0x070) & status::FEATURES_OK, 0, "features refused");
        for i in 0..nqueues {
            self.setup_queue(i);
        }
        self.w32(0x070, st | status::DRIVER_OK);
        features
    }

    pub fn setup_queue(&mut self, index: u16) {
        self.w32(0x030, u32::from(index));
        assert_eq!(self.r32(0x044), 0, "queue already live");
        let size = self.r32(0x034) as u16;
        assert!(size > 0);
        // vring layout with PAGE_SIZE alignment, as virtio_mmio uses.
        let desc = self.alloc(16 * u64::from(size), 4096);
        let avail = self.alloc(6 + 2 * u64::from(size), 2);
        let used = self.alloc(6 + 8 * u64::from(size), 4096);
        self.w32(0x038, u32::from(size));
        for (lo, addr) in [(0x080, desc), (0x090, avail), (0x0a0, used)] {
            self.w32(lo, addr as u32);
            self.w32(lo + 4, (addr >> 32) as u32);
        }
        self.w32(0x044, 1);
        assert_eq!(self.r32(0x044), 1);
        let q = DriverQueue {
            size,
            desc,
            avail,
            used,
            free: (0..size).rev().collect(),
            chains: HashMap::new(),
            avail_idx: 0,
            last_used: 0,
        };
        if self.queues.len() <= usize::from(index) {
            self.queues.resize_with(usize::from(index), || DriverQueue {
                size: 0,
                desc: 0,
                avail: 0,
                used: 0,
                free: Vec::new(),
                chains: HashMap::new(),
                avail_idx: 0,
                last_used: 0,
            });
            self.queues.push(q);
        } else {
            self.queues[usize::from(index)] = q;
        }
    }

    /// Writes raw descriptor `i` of queue `qi`.
    pub fn write_desc(&self, qi: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let q = &self.queues[qi];
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.ram.write(q.desc + 16 * u64::from(i), &d).unwrap();
    }

    /// Publishes head `head` in the available ring (no kick).
    pub fn publish(&mut self, qi: usize, head: u16) {
        let q = &mut self.queues[qi];
        let slot = u64::from(q.avail_idx % q.size);
        self.ram
            .write(q.avail + 4 + 2 * slot, &head.to_le_bytes())
            .unwrap();
        q.avail_idx = q.avail_idx.wrapping_add(1);
        let (avail, idx) = (q.avail, q.avail_idx);
        self.ram.write(avail + 2, &idx.to_le_bytes()).unwrap();
    }

    /// Adds a chain of `(addr, len, device_writable)` buffers; returns head.
    pub fn add(&mut self, qi: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let idxs: Vec<u16> = (0..bufs.len())
            .map(|_| self.queues[qi].free.pop().expect("ring full"))
            .collect();
        for (n, &(addr, len, w)) in bufs.iter().enumerate() {
            let last = n + 1 == bufs.len();
            let flags =
                if w { VIRTQ_DESC_F_WRITE } else { 0 } | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            let next = if last { 0 } else { idxs[n + 1] };
            self.write_desc(qi, idxs[n], addr, len, flags, next);
        }
        let head = idxs[0];
        self.queues[qi].chains.insert(head, idxs);
        self.publish(qi, head);
        head
    }

    /// Adds one device-readable buffer holding `bytes`.
    pub fn add_out_bytes(&mut self, qi: usize, bytes: &[u8]) -> u16 {
        let addr = self.alloc(bytes.len() as u64, 8);
        self.ram.write(addr, bytes).unwrap();
        self.add(qi, &[(addr, bytes.len() as u32, false)])
    }

    pub fn kick(&mut self, qi: usize) {
        self.w32(0x050, qi as u32);
    }

    /// Sets the avail ring flags (1 = no interrupts), like
    /// `virtqueue_disable_cb`.
    pub fn set_avail_flags(&self, qi: usize, flags: u16) {
        self.ram
            .write(self.queues[qi].avail, &flags.to_le_bytes())
            .unwrap();
    }

    /// Collects used entries `(head, len)` and frees their descriptors.
    pub fn used(&mut self, qi: usize) -> Vec<(u32, u32)> {
        let q = &mut self.queues[qi];
        let idx = u16::from_le_bytes(self.ram.read_le::<2>(q.used + 2).unwrap());
        let mut out = Vec::new();
        while q.last_used != idx {
            let slot = u64::from(q.last_used % q.size);
            let e = self.ram.read_le::<8>(q.used + 4 + 8 * slot).unwrap();
            let id = u32::from_le_bytes(e[0..4].try_into().unwrap());
            let len = u32::from_le_bytes(e[4..8].try_into().unwrap());
            if let Some(descs) = q.chains.remove(&(id as u16)) {
                q.free.extend(descs);
            }
            out.push((id, len));
            q.last_used = q.last_used.wrapping_add(1);
        }
        out
    }

    /// Reads and acknowledges the interrupt status, like `vm_interrupt`.
    pub fn take_interrupts(&mut self) -> u32 {
        let s = self.r32(0x060);
        self.w32(0x064, s);
        s
    }

    pub fn status(&mut self) -> u32 {
        self.r32(0x070)
    }

    pub fn config_read32(&mut self, off: u64) -> u32 {
        self.dev.read(0x100 + off, 4) as u32
    }

    pub fn config_write32(&mut self, off: u64, v: u32) {
        self.dev.write(0x100 + off, 4, u64::from(v));
    }
}

//! Split virtqueues (virtio 1.x §2.7) in guest RAM, device side.
//!
//! Everything in the rings is guest-controlled, so every index is checked
//! and every walk is bounded by the queue size. Any structural error (a ring
//! outside RAM, a head or `next` index past the queue size, a chain longer
//! than the queue, an indirect descriptor we never offered, an available
//! index that runs ahead by more than the queue size) marks the queue
//! *broken*: it then yields nothing more, and the transport sets
//! `DEVICE_NEEDS_RESET`. Buffer addresses are not checked here; the device
//! checks them when it touches the bytes.
//!
//! Used-ring updates go through [`GuestRam::write`], so they are
//! dirty-logged like any device DMA.

use crate::StateError;
use godwit_memory::GuestRam;
use serde::{Deserialize, Serialize};

/// The descriptor continues in `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// The buffer is device-writable (an "in" buffer for the driver).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// The buffer holds a table of descriptors (never negotiated here).
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// In the available ring's flags: the driver wants no used-buffer interrupts.
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// One buffer of a descriptor chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// `VIRTQ_DESC_F_*` bits.
    pub flags: u16,
}

impl Descriptor {
    /// True for a device-writable buffer.
    pub fn is_write_only(&self) -> bool {
        self.flags & VIRTQ_DESC_F_WRITE != 0
    }
}

/// A chain of descriptors the driver made available, in chain order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescriptorChain {
    /// Index of the head descriptor: what the used ring reports back.
    pub head: u16,
    /// The descriptors; never more than the queue size.
    pub descriptors: Vec<Descriptor>,
}

impl DescriptorChain {
    /// The device-readable buffers.
    pub fn readable(&self) -> impl Iterator<Item = &Descriptor> {
        self.descriptors.iter().filter(|d| !d.is_write_only())
    }

    /// The device-writable buffers.
    pub fn writable(&self) -> impl Iterator<Item = &Descriptor> {
        self.descriptors.iter().filter(|d| d.is_write_only())
    }

    /// Copies up to `limit` bytes of the readable buffers, in order. Returns
    /// `None` when a buffer it needs lies outside RAM.
    pub fn read_readable(&self, ram: &GuestRam, limit: usize) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for d in self.readable() {
            let n = (d.len as usize).min(limit - out.len());
            if n == 0 {
                break;
            }
            // Check before allocating: the length is the guest's word.
            if !ram.contains(d.addr, n) {
                return None;
            }
            let start = out.len();
            out.resize(start + n, 0);
            ram.read(d.addr, &mut out[start..]).ok()?;
        }
        Some(out)
    }
}

/// The saved state of one [`SplitQueue`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct QueueState {
    /// `QueueNumMax`.
    pub max_size: u16,
    /// `QueueNum` as the driver set it.
    pub size: u16,
    /// `QueueReady`.
    pub ready: bool,
    /// Guest-physical address of the descriptor table.
    pub desc_table: u64,
    /// Guest-physical address of the available (driver) ring.
    pub avail_ring: u64,
    /// Guest-physical address of the used (device) ring.
    pub used_ring: u64,
    /// Next available-ring index the device will read.
    pub next_avail: u16,
    /// Next used-ring index the device will write.
    pub next_used: u16,
    /// The queue hit a structural error and is dead until reset.
    pub broken: bool,
}

/// One split virtqueue as the device sees it.
#[derive(Clone, Debug)]
pub struct SplitQueue {
    max_size: u16,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    next_avail: u16,
    next_used: u16,
    broken: bool,
    /// Used entries were added since the transport last looked.
    used_added: bool,
}

impl SplitQueue {
    /// A queue in reset state that can hold up to `max_size` descriptors.
    pub fn new(max_size: u16) -> Self {
        SplitQueue {
            max_size,
            size: max_size,
            ready: false,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
            next_avail: 0,
            next_used: 0,
            broken: false,
            used_added: false,
        }
    }

    /// Back to the reset state (driver reset or `QueueReady` cleared).
    pub fn reset(&mut self) {
        *self = SplitQueue::new(self.max_size);
    }

    /// `QueueNumMax`.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    /// `QueueNum`.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Whether the driver enabled the queue.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Whether the queue hit a structural error (see the module docs).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Descriptor table address.
    pub fn desc_table(&self) -> u64 {
        self.desc_table
    }

    /// Available ring address.
    pub fn avail_ring(&self) -> u64 {
        self.avail_ring
    }

    /// Used ring address.
    pub fn used_ring(&self) -> u64 {
        self.used_ring
    }

    /// Sets `QueueNum`; checked when the queue is enabled.
    pub fn set_size(&mut self, size: u16) {
        self.size = size;
    }

    /// Sets the descriptor table address.
    pub fn set_desc_table(&mut self, addr: u64) {
        self.desc_table = addr;
    }

    /// Sets the available ring address.
    pub fn set_avail_ring(&mut self, addr: u64) {
        self.avail_ring = addr;
    }

    /// Sets the used ring address.
    pub fn set_used_ring(&mut self, addr: u64) {
        self.used_ring = addr;
    }

    /// `QueueReady`: enabling checks the size (a power of two up to the
    /// maximum) and that the three rings are aligned and inside RAM; a queue
    /// that fails is enabled but broken. Disabling resets the queue.
    pub fn set_ready(&mut self, ram: &GuestRam, ready: bool) {
        if !ready {
            self.reset();
            return;
        }
        self.ready = true;
        self.next_avail = 0;
        self.next_used = 0;
        self.broken = !self.geometry_ok(ram);
    }

    /// Size is a power of two up to the maximum; the rings are aligned and
    /// lie inside RAM. Once this holds, ring address arithmetic cannot leave
    /// RAM, and `size` is never zero where it is used as a divisor.
    fn geometry_ok(&self, ram: &GuestRam) -> bool {
        let n = usize::from(self.size);
        self.size != 0
            && self.size <= self.max_size
            && self.size.is_power_of_two()
            && self.desc_table.is_multiple_of(16)
            && self.avail_ring.is_multiple_of(2)
            && self.used_ring.is_multiple_of(4)
            && ram.contains(self.desc_table, 16 * n)
            && ram.contains(self.avail_ring, 6 + 2 * n)
            && ram.contains(self.used_ring, 6 + 8 * n)
    }

    fn read_u16(&mut self, ram: &GuestRam, gpa: u64) -> Option<u16> {
        match ram.read_le::<2>(gpa) {
            Ok(b) => Some(u16::from_le_bytes(b)),
            Err(_) => {
                self.broken = true;
                None
            }
        }
    }

    /// Number of chains the driver made available that the device has not
    /// taken yet (0 when not ready or broken).
    pub fn pending(&mut self, ram: &GuestRam) -> u16 {
        if !self.ready || self.broken {
            return 0;
        }
        let Some(idx) = self.read_u16(ram, self.avail_ring.wrapping_add(2)) else {
            return 0;
        };
        let pending = idx.wrapping_sub(self.next_avail);
        if pending > self.size {
            self.broken = true;
            return 0;
        }
        // The ring entries and descriptors the index published are read
        // after it.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        pending
    }

    /// Takes the next available descriptor chain, or `None` when there is
    /// none or the queue is (or just became) broken.
    pub fn pop(&mut self, ram: &GuestRam) -> Option<DescriptorChain> {
        if self.pending(ram) == 0 {
            return None;
        }
        let slot = u64::from(self.next_avail % self.size);
        let head = self.read_u16(ram, self.avail_ring.wrapping_add(4 + 2 * slot))?;
        let descriptors = self.walk(ram, head)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        Some(DescriptorChain { head, descriptors })
    }

    /// Gives back the last `n` chains [`pop`](Self::pop) took, untouched
    /// (the device found it cannot use them yet): they are taken again by
    /// the next pops, in the same order.
    pub fn unpop(&mut self, n: u16) {
        self.next_avail = self.next_avail.wrapping_sub(n);
    }

    /// Collects the chain starting at `head`; at most `size` descriptors.
    fn walk(&mut self, ram: &GuestRam, head: u16) -> Option<Vec<Descriptor>> {
        let mut out = Vec::new();
        let mut idx = head;
        for _ in 0..self.size {
            if idx >= self.size {
                break;
            }
            let Ok(raw) = ram.read_le::<16>(self.desc_table.wrapping_add(16 * u64::from(idx)))
            else {
                break;
            };
            let d = Descriptor {
                addr: u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default()),
                len: u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default()),
                flags: u16::from_le_bytes([raw[12], raw[13]]),
            };
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                break;
            }
            out.push(d);
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                return Some(out);
            }
            idx = u16::from_le_bytes([raw[14], raw[15]]);
        }
        // Bad index, unreadable descriptor, indirect, or a chain longer than
        // the queue (a loop): the driver broke the ring.
        self.broken = true;
        None
    }

    /// Returns chain `head` to the driver with `len` bytes written.
    pub fn add_used(&mut self, ram: &GuestRam, head: u16, len: u32) {
        if !self.ready || self.broken {
            return;
        }
        let slot = u64::from(self.next_used % self.size);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        // The element must be visible before the index that publishes it
        // (the driver reads them on another thread).
        if ram
            .write(self.used_ring.wrapping_add(4 + 8 * slot), &elem)
            .is_err()
        {
            self.broken = true;
            return;
        }
        self.next_used = self.next_used.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        if ram
            .write(
                self.used_ring.wrapping_add(2),
                &self.next_used.to_le_bytes(),
            )
            .is_err()
        {
            self.broken = true;
            return;
        }
        self.used_added = true;
    }

    /// True (once) when used entries were added since the last call.
    pub fn take_used_added(&mut self) -> bool {
        std::mem::take(&mut self.used_added)
    }

    /// True when the driver set `VIRTQ_AVAIL_F_NO_INTERRUPT` (queues without
    /// a callback in Linux, like the balloon's free-page-hint queue).
    pub fn interrupt_suppressed(&self, ram: &GuestRam) -> bool {
        // The flags are read after the used index was published (virtio
        // §2.7.7.2), or a driver that just re-enabled interrupts is missed.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        ram.read_le::<2>(self.avail_ring)
            .is_ok_and(|b| u16::from_le_bytes(b) & VIRTQ_AVAIL_F_NO_INTERRUPT != 0)
    }

    /// The saved state.
    pub fn state(&self) -> QueueState {
        QueueState {
            max_size: self.max_size,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
            next_avail: self.next_avail,
            next_used: self.next_used,
            broken: self.broken,
        }
    }

    /// Loads a saved state; its `max_size` must be this queue's. A ready
    /// queue whose geometry does not fit `ram` comes back broken.
    pub fn restore(&mut self, s: &QueueState, ram: &GuestRam) -> Result<(), StateError> {
        if s.max_size != self.max_size {
            return Err(StateError::new(
                "virtqueue",
                format!("max size {} != {}", s.max_size, self.max_size),
            ));
        }
        *self = SplitQueue {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            broken: s.broken,
            used_added: false,
        };
        if self.ready && !self.geometry_ok(ram) {
            self.broken = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testdrv::{ram, RAM_BASE};

    const DESC: u64 = RAM_BASE;
    const AVAIL: u64 = RAM_BASE + 0x1000;
    const USED: u64 = RAM_BASE + 0x2000;

    fn queue(ram: &GuestRam, size: u16) -> SplitQueue {
        let mut q = SplitQueue::new(256);
        q.set_size(size);
        q.set_desc_table(DESC);
        q.set_avail_ring(AVAIL);
        q.set_used_ring(USED);
        q.set_ready(ram, true);
        assert!(!q.is_broken());
        q
    }

    fn desc(ram: &GuestRam, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        ram.write(DESC + 16 * u64::from(i), &d).unwrap();
    }

    fn publish(ram: &GuestRam, size: u16, idx: u16, head: u16) {
        ram.write(AVAIL + 4 + 2 * u64::from(idx % size), &head.to_le_bytes())
            .unwrap();
        ram.write(AVAIL + 2, &idx.wrapping_add(1).to_le_bytes())
            .unwrap();
    }

    #[test]
    fn chain_with_read_and_write_parts() {
        let ram = ram();
        let mut q = queue(&ram, 8);
        desc(&ram, 3, 0x100, 10, VIRTQ_DESC_F_NEXT, 5);
        desc(
            &ram,
            5,
            0x200,
            20,
            VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
            1,
        );
        desc(&ram, 1, 0x300, 30, VIRTQ_DESC_F_WRITE, 0);
        publish(&ram, 8, 0, 3);
        assert_eq!(q.pending(&ram), 1);
        let c = q.pop(&ram).unwrap();
        assert_eq!(c.head, 3);
        assert_eq!(c.descriptors.len(), 3);
        assert_eq!(
            c.readable().map(|d| d.addr).collect::<Vec<_>>(),
            vec![0x100]
        );
        assert_eq!(
            c.writable().map(|d| d.len).collect::<Vec<_>>(),
            vec![20, 30]
        );
        assert!(q.pop(&ram).is_none());
        q.add_used(&ram, c.head, 50);
        assert!(q.take_used_added());
        assert!(!q.take_used_added());
        assert_eq!(ram.read_le::<2>(USED + 2).unwrap(), 1u16.to_le_bytes());
        assert_eq!(
            ram.read_le::<8>(USED + 4).unwrap(),
            [3, 0, 0, 0, 50, 0, 0, 0]
        );
        assert!(!q.interrupt_suppressed(&ram));
        ram.write(AVAIL, &VIRTQ_AVAIL_F_NO_INTERRUPT.to_le_bytes())
            .unwrap();
        assert!(q.interrupt_suppressed(&ram));
    }

    #[test]
    fn used_ring_writes_are_dirty_logged() {
        let ram = ram();
        let mut q = queue(&ram, 4);
        desc(&ram, 0, 0, 0, 0, 0);
        publish(&ram, 4, 0, 0);
        ram.set_logging(true);
        let c = q.pop(&ram).unwrap();
        q.add_used(&ram, c.head, 0);
        assert!(ram.dirty_log().get(((USED - RAM_BASE) / 4096) as usize));
    }

    #[test]
    fn indexes_wrap_at_u16() {
        let ram = ram();
        let mut q = queue(&ram, 4);
        desc(&ram, 2, 0x10, 1, 0, 0);
        // Run 70,000 single-descriptor chains through a 4-entry queue.
        for i in 0..70_000u32 {
            publish(&ram, 4, i as u16, 2);
            let c = q.pop(&ram).expect("one chain each time");
            q.add_used(&ram, c.head, i);
            assert!(q.pop(&ram).is_none());
        }
        assert!(!q.is_broken());
        assert_eq!(q.state().next_avail, 70_000u32 as u16);
        assert_eq!(q.state().next_used, 70_000u32 as u16);
    }

    #[test]
    fn structural_errors_break_the_queue() {
        let ram = ram();
        // A full ring of descriptors chained in a circle.
        let mut q = queue(&ram, 16);
        for i in 0..16 {
            desc(&ram, i, 0, 0, VIRTQ_DESC_F_NEXT, (i + 1) % 16);
        }
        publish(&ram, 16, 0, 0);
        assert!(q.pop(&ram).is_none());
        assert!(q.is_broken());
        assert!(q.pop(&ram).is_none(), "stays broken");
        q.add_used(&ram, 0, 0);
        assert!(!q.take_used_added(), "no used entries once broken");
        // Bad geometries at enable time.
        for (size, d, a, u) in [
            (0, DESC, AVAIL, USED),
            (512, DESC, AVAIL, USED),
            (12, DESC, AVAIL, USED),
            (16, DESC + 8, AVAIL, USED),
            (16, DESC, AVAIL + 1, USED),
            (16, DESC, AVAIL, USED + 2),
            (16, u64::MAX - 15, AVAIL, USED),
            (16, DESC, AVAIL, RAM_BASE + (4 << 20) - 16),
        ] {
            let mut q = SplitQueue::new(256);
            q.set_size(size);
            q.set_desc_table(d);
            q.set_avail_ring(a);
            q.set_used_ring(u);
            q.set_ready(&ram, true);
            assert!(
                q.is_broken(),
                "size {size} desc {d:#x} avail {a:#x} used {u:#x}"
            );
            assert!(q.pop(&ram).is_none());
        }
        // Disabling resets.
        q.set_ready(&ram, false);
        assert!(!q.is_broken() && !q.ready());
        assert_eq!(q.size(), 256);
    }

    #[test]
    fn read_readable_is_bounded() {
        let ram = ram();
        ram.write(RAM_BASE, b"abcdef").unwrap();
        let c = DescriptorChain {
            head: 0,
            descriptors: vec![
                Descriptor {
                    addr: RAM_BASE,
                    len: 3,
                    flags: 0,
                },
                Descriptor {
                    addr: RAM_BASE,
                    len: 1,
                    flags: VIRTQ_DESC_F_WRITE,
                },
                Descriptor {
                    addr: RAM_BASE + 3,
                    len: u32::MAX,
                    flags: 0,
                },
            ],
        };
        assert_eq!(c.read_readable(&ram, 5).unwrap(), b"abcde");
        assert!(
            c.read_readable(&ram, 1 << 30).is_none(),
            "second buffer leaves RAM"
        );
    }

    #[test]
    fn restore_checks_geometry() {
        let ram = ram();
        let q = queue(&ram, 8);
        let mut s = q.state();
        let mut r = SplitQueue::new(256);
        r.restore(&s, &ram).unwrap();
        assert_eq!(r.state(), s);
        s.used_ring = u64::MAX - 3;
        r.restore(&s, &ram).unwrap();
        assert!(r.is_broken());
        assert!(SplitQueue::new(128).restore(&s, &ram).is_err());
    }
}

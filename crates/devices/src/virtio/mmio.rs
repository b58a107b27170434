//! The virtio-mmio transport, version 2 (virtio 1.x §4.2.2), as Linux's
//! `virtio_mmio.c` drives it.
//!
//! Registers are 32 bits wide and must be accessed with 32-bit loads and
//! stores (others read as zero and are ignored); the device configuration
//! space from offset 0x100 takes any size.

use super::queue::{QueueState, SplitQueue};
use super::{features, status, DeviceState, VirtioDevice};
use crate::{MmioDevice, StateError};
use godwit_memory::GuestRam;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Most queues a device may have (kicks are recorded in a 64-bit mask).
pub const MAX_QUEUES: u16 = 64;

/// Called when the driver kicks a queue: wakes whoever runs
/// [`VirtioMmio::process`] (the device's event thread).
pub type KickWaker = Arc<dyn Fn() + Send + Sync>;

/// What one [`VirtioMmio::process`] did that the caller must follow up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Processed {
    /// The device marked guest pages free and holds the requests that did
    /// it: make every vCPU drop its cached write translations, then call
    /// [`VirtioMmio::release_held`].
    pub free_map_changed: bool,
}

/// Size of one virtio-mmio device's MMIO region (QEMU `virt` spacing).
pub const VIRTIO_MMIO_SIZE: u64 = 0x200;
/// "virt" in little endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The transport version implemented (modern virtio-mmio).
pub const VERSION: u32 = 2;
/// Vendor ID reported to the guest: QEMU's ("QEMU"), which no Linux driver
/// treats specially, so the guest sees nothing unusual.
pub const VENDOR_ID: u32 = 0x554d_4551;

/// Interrupt status bit: a used ring was updated.
pub const INT_USED_BUFFER: u32 = 1;
/// Interrupt status bit: the device configuration changed.
pub const INT_CONFIG_CHANGE: u32 = 2;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_SEL: u64 = 0x0ac;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_BASE_HIGH: u64 = 0x0bc;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_BASE: u64 = 0x100;

/// The saved state of a [`VirtioMmio`] and its device.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct VirtioMmioState {
    /// `DeviceFeaturesSel`.
    pub device_features_sel: u32,
    /// `DriverFeaturesSel`.
    pub driver_features_sel: u32,
    /// Features the driver wrote (accepted ones once `FEATURES_OK` is set).
    pub driver_features: u64,
    /// `QueueSel`.
    pub queue_sel: u32,
    /// Device status.
    pub status: u32,
    /// Pending interrupt causes (`INT_*`).
    pub interrupt_status: u32,
    /// Configuration generation counter.
    pub config_generation: u32,
    /// Kicks recorded and not yet served (bit per queue).
    pub pending_kicks: u64,
    /// Every virtqueue.
    pub queues: Vec<QueueState>,
    /// The device behind the transport.
    pub device: DeviceState,
}

/// A virtio device behind the MMIO transport. Owns the queues and a handle
/// on guest RAM (for rings and buffers).
pub struct VirtioMmio {
    device: Box<dyn VirtioDevice>,
    ram: Arc<GuestRam>,
    queues: Vec<SplitQueue>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    pending_kicks: u64,
    waker: Option<KickWaker>,
}

impl VirtioMmio {
    /// Puts `device` behind a transport in reset state.
    pub fn new(device: Box<dyn VirtioDevice>, ram: Arc<GuestRam>) -> Self {
        let queues = (0..device.num_queues().min(MAX_QUEUES))
            .map(|i| SplitQueue::new(device.queue_max_size(i)))
            .collect();
        VirtioMmio {
            device,
            ram,
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            pending_kicks: 0,
            waker: None,
        }
    }

    /// Sets what a kick wakes (the device's event thread).
    pub fn set_kick_waker(&mut self, waker: KickWaker) {
        self.waker = Some(waker);
    }

    /// The device.
    pub fn device(&self) -> &dyn VirtioDevice {
        &*self.device
    }

    /// The device, for host-side control (follow changes with
    /// [`process`](Self::process) so they reach the guest).
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        &mut *self.device
    }

    /// The device as its concrete type, if it is a `T`.
    pub fn device_as<T: 'static>(&self) -> Option<&T> {
        self.device.as_any().downcast_ref()
    }

    /// The device as its concrete type, if it is a `T`, for host-side
    /// control (follow changes with [`process`](Self::process)).
    pub fn device_as_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.device.as_any_mut().downcast_mut()
    }

    /// Guest RAM as the transport sees it.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Pending interrupt causes (`INT_USED_BUFFER`, `INT_CONFIG_CHANGE`).
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    /// The features the driver accepted (meaningful once `FEATURES_OK`).
    pub fn acked_features(&self) -> u64 {
        self.driver_features
    }

    /// The queues (for inspection).
    pub fn queues(&self) -> &[SplitQueue] {
        &self.queues
    }

    /// The device is live: the driver set `DRIVER_OK` and the device has
    /// not failed.
    pub fn is_live(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | 1 << features::VERSION_1
    }

    /// Serves the kicks recorded since the last call, then lets the device
    /// act on host-side changes (new balloon target, stats request, a
    /// readable TAP), and raises the resulting interrupts. The device's
    /// event thread calls it after every kick and host-side change; it is
    /// cheap when there is nothing to do. Does nothing until the driver has
    /// set `DRIVER_OK`, so kicks and changes made earlier are served by the
    /// first call after that.
    pub fn process(&mut self) -> Processed {
        if !self.is_live() {
            return Processed::default();
        }
        let mut kicks = std::mem::take(&mut self.pending_kicks);
        while kicks != 0 {
            let index = kicks.trailing_zeros() as usize;
            kicks &= kicks - 1;
            let Some(q) = self.queues.get(index) else {
                continue;
            };
            if !q.ready() || q.is_broken() {
                continue;
            }
            let used = self
                .device
                .notify(index as u16, &mut self.queues, &self.ram);
            self.settle(Some((index, used)));
        }
        let ev = self.device.poll(&mut self.queues, &self.ram);
        if ev.config_changed {
            self.config_changed();
        }
        self.settle(None);
        Processed {
            free_map_changed: self.device.take_free_map_changed(),
        }
    }

    /// Completes the requests the device held back after it marked guest
    /// pages free (see [`Processed::free_map_changed`]); call it once every
    /// vCPU dropped its cached write translations.
    pub fn release_held(&mut self) {
        // Used entries added here raise the interrupt through `settle`,
        // which honours the driver's suppression.
        self.device.release_held(&mut self.queues, &self.ram);
        self.settle(None);
    }

    /// Kicks recorded and not served yet (bit per queue).
    pub fn pending_kicks(&self) -> u64 {
        self.pending_kicks
    }

    fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.interrupt_status |= INT_CONFIG_CHANGE;
        }
    }

    /// After the device touched the queues: raises the used-buffer
    /// interrupt for queues that got used entries (unless the driver
    /// suppressed it there) and fails the device if a queue broke.
    /// `kicked` is the queue the device just served and whether it said it
    /// used buffers.
    fn settle(&mut self, kicked: Option<(usize, bool)>) {
        let mut raise = false;
        let mut broken = false;
        for (i, q) in self.queues.iter_mut().enumerate() {
            let said = kicked.is_some_and(|(k, used)| k == i && used);
            if (q.take_used_added() || said) && !q.interrupt_suppressed(&self.ram) {
                raise = true;
            }
            broken |= q.is_broken();
        }
        if raise {
            self.interrupt_status |= INT_USED_BUFFER;
        }
        if broken && self.status & status::DEVICE_NEEDS_RESET == 0 {
            // The spec asks for a configuration-change notification after
            // setting DEVICE_NEEDS_RESET on a live device.
            self.status |= status::DEVICE_NEEDS_RESET;
            self.config_changed();
        }
    }

    /// A kick: recorded for [`process`](Self::process), which the device's
    /// event thread runs once woken. Kicks before `DRIVER_OK` (Linux primes
    /// the balloon's stats queue during probe) are served once the driver
    /// sets it.
    fn notify(&mut self, index: u32) {
        if index >= self.queues.len() as u32 {
            return;
        }
        self.pending_kicks |= 1 << index;
        self.wake();
    }

    fn wake(&self) {
        if let Some(w) = &self.waker {
            w();
        }
    }

    /// Virtio reset: everything the driver set up is forgotten.
    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt_status = 0;
        self.pending_kicks = 0;
    }

    fn write_status(&mut self, value: u32) {
        let value = value & 0xff;
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // Only a reset clears DEVICE_NEEDS_RESET.
        let mut new = value | (old & status::DEVICE_NEEDS_RESET);
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            let f = self.driver_features;
            if f & !self.offered_features() != 0 || f & 1 << features::VERSION_1 == 0 {
                // Refused: the driver reads FEATURES_OK back and gives up.
                new &= !status::FEATURES_OK;
            }
        }
        if new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0 {
            if new & status::FEATURES_OK == 0 {
                new &= !status::DRIVER_OK;
                self.status = new;
                return;
            }
            self.status = new;
            self.device.activate(self.driver_features);
            // Serve kicks that arrived before DRIVER_OK, and anything the
            // host changed meanwhile.
            let all = if self.queues.len() >= 64 {
                u64::MAX
            } else {
                (1u64 << self.queues.len()) - 1
            };
            self.pending_kicks |= all;
            self.wake();
            return;
        }
        self.status = new;
    }

    fn selected_queue(&mut self) -> Option<&mut SplitQueue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Changes a ring address half of the selected queue while the queue is
    /// disabled (the spec forbids changes to an enabled queue).
    fn set_queue_addr(&mut self, which: u64, value: u32) {
        let Some(q) = self.queues.get_mut(self.queue_sel as usize) else {
            return;
        };
        if q.ready() {
            return;
        }
        let high = matches!(
            which,
            REG_QUEUE_DESC_HIGH | REG_QUEUE_DRIVER_HIGH | REG_QUEUE_DEVICE_HIGH
        );
        let merge = |old: u64| {
            if high {
                (old & 0xffff_ffff) | u64::from(value) << 32
            } else {
                (old & !0xffff_ffff) | u64::from(value)
            }
        };
        match which {
            REG_QUEUE_DESC_LOW | REG_QUEUE_DESC_HIGH => q.set_desc_table(merge(q.desc_table())),
            REG_QUEUE_DRIVER_LOW | REG_QUEUE_DRIVER_HIGH => q.set_avail_ring(merge(q.avail_ring())),
            _ => q.set_used_ring(merge(q.used_ring())),
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_NUM => self.selected_queue().map_or(0, |q| u32::from(q.size())),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            REG_QUEUE_DESC_LOW => self.selected_queue().map_or(0, |q| q.desc_table() as u32),
            REG_QUEUE_DESC_HIGH => self
                .selected_queue()
                .map_or(0, |q| (q.desc_table() >> 32) as u32),
            REG_QUEUE_DRIVER_LOW => self.selected_queue().map_or(0, |q| q.avail_ring() as u32),
            REG_QUEUE_DRIVER_HIGH => self
                .selected_queue()
                .map_or(0, |q| (q.avail_ring() >> 32) as u32),
            REG_QUEUE_DEVICE_LOW => self.selected_queue().map_or(0, |q| q.used_ring() as u32),
            REG_QUEUE_DEVICE_HIGH => self
                .selected_queue()
                .map_or(0, |q| (q.used_ring() >> 32) as u32),
            REG_INTERRUPT_STATUS => self.interrupt_status,
            REG_STATUS => self.status,
            // No shared memory regions: length and base read as all ones.
            REG_SHM_LEN_LOW..=REG_SHM_BASE_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            // Frozen once negotiation completed.
            REG_DRIVER_FEATURES if self.status & status::FEATURES_OK == 0 => match self
                .driver_features_sel
            {
                0 => {
                    self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value)
                }
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | u64::from(value) << 32
                }
                _ => {}
            },
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected_queue().filter(|q| !q.ready()) {
                    // Out-of-range sizes become 0, refused when enabling.
                    q.set_size(u16::try_from(value).unwrap_or(0));
                }
            }
            REG_QUEUE_READY => {
                let ram = self.ram.clone();
                if let Some(q) = self.queues.get_mut(self.queue_sel as usize) {
                    let on = value & 1 != 0;
                    if on != q.ready() {
                        q.set_ready(&ram, on);
                    }
                }
                self.settle(None);
            }
            REG_QUEUE_NOTIFY => self.notify(value & 0xffff),
            REG_INTERRUPT_ACK => self.interrupt_status &= !value,
            REG_STATUS => self.write_status(value),
            REG_QUEUE_DESC_LOW..=REG_QUEUE_DEVICE_HIGH => self.set_queue_addr(offset, value),
            REG_SHM_SEL => {}
            _ => {}
        }
    }

    /// The saved state of transport, queues and device.
    pub fn state(&self) -> VirtioMmioState {
        VirtioMmioState {
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            status: self.status,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            pending_kicks: self.pending_kicks,
            queues: self.queues.iter().map(SplitQueue::state).collect(),
            device: self.device.state(),
        }
    }

    /// Loads a state saved by [`state`](Self::state) from a device of the
    /// same kind; on error nothing is changed.
    pub fn restore(&mut self, s: &VirtioMmioState) -> Result<(), StateError> {
        if s.queues.len() != self.queues.len() {
            return Err(StateError::new(
                "virtio-mmio",
                format!(
                    "{} queues saved, device has {}",
                    s.queues.len(),
                    self.queues.len()
                ),
            ));
        }
        let mut queues = self.queues.clone();
        for (q, qs) in queues.iter_mut().zip(&s.queues) {
            q.restore(qs, &self.ram)?;
        }
        self.device.restore(&s.device)?;
        self.queues = queues;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.driver_features = s.driver_features;
        self.queue_sel = s.queue_sel;
        self.status = s.status & 0xff;
        self.interrupt_status = s.interrupt_status & (INT_USED_BUFFER | INT_CONFIG_CHANGE);
        self.config_generation = s.config_generation;
        let all = if self.queues.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << self.queues.len()) - 1
        };
        self.pending_kicks = s.pending_kicks & all;
        if self.pending_kicks != 0 {
            self.wake();
        }
        Ok(())
    }
}

impl MmioDevice for VirtioMmio {
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        if offset >= CONFIG_BASE {
            let mut buf = [0u8; 8];
            let n = usize::from(size.min(8));
            self.device.read_config(offset - CONFIG_BASE, &mut buf[..n]);
            return u64::from_le_bytes(buf);
        }
        if size != 4 || !offset.is_multiple_of(4) {
            return 0;
        }
        u64::from(self.read_reg(offset))
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) {
        if offset >= CONFIG_BASE {
            let n = usize::from(size.min(8));
            self.device
                .write_config(offset - CONFIG_BASE, &value.to_le_bytes()[..n]);
            return;
        }
        if size != 4 || !offset.is_multiple_of(4) {
            return;
        }
        self.write_reg(offset, value as u32);
    }

    fn irq_level(&self) -> bool {
        self.interrupt_status != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::balloon::{Balloon, BalloonFeatures};
    use crate::virtio::testdrv::{ram, TestDriver, RAM_BASE};

    /// xorshift64*: deterministic junk.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn register_file_basics() {
        let ram = ram();
        let mut d = TestDriver::new(VirtioMmio::new(
            Box::new(Balloon::new(BalloonFeatures::default(), &ram)),
            ram,
        ));
        assert_eq!(d.r32(REG_MAGIC), MAGIC);
        assert_eq!(d.r32(REG_VERSION), 2);
        assert_eq!(d.r32(REG_VENDOR_ID), VENDOR_ID);
        assert_eq!(d.r32(REG_SHM_LEN_LOW), u32::MAX, "no shared memory");
        d.w32(REG_QUEUE_SEL, 1);
        assert_eq!(d.r32(REG_QUEUE_NUM_MAX), 128);
        assert_eq!(d.r32(REG_QUEUE_READY), 0);
        d.w32(REG_QUEUE_DESC_LOW, 0x1234_5000);
        d.w32(REG_QUEUE_DESC_HIGH, 1);
        assert_eq!(d.dev.queues()[1].desc_table(), 0x1_1234_5000);
        d.w32(REG_QUEUE_NUM, 70_000);
        assert_eq!(d.r32(REG_QUEUE_NUM), 0, "out-of-range size");
        d.w32(REG_QUEUE_SEL, 99);
        assert_eq!(d.r32(REG_QUEUE_NUM_MAX), 0);
        d.w32(REG_QUEUE_READY, 1);
        d.w32(REG_QUEUE_NUM, 4);
        // DRIVER_OK without FEATURES_OK is refused.
        d.w32(
            REG_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
        );
        assert_eq!(d.r32(REG_STATUS), status::ACKNOWLEDGE | status::DRIVER);
        assert!(!d.dev.is_live());
    }

    #[test]
    fn ready_queue_addresses_are_frozen() {
        let ram = ram();
        let mut d = TestDriver::new(VirtioMmio::new(
            Box::new(Balloon::new(BalloonFeatures::default(), &ram)),
            ram,
        ));
        d.probe(u64::MAX, 5);
        let before = d.dev.queues()[0].desc_table();
        d.w32(REG_QUEUE_SEL, 0);
        d.w32(REG_QUEUE_DESC_LOW, 0);
        d.w32(REG_QUEUE_NUM, 2);
        assert_eq!(d.dev.queues()[0].desc_table(), before);
        assert_eq!(d.dev.queues()[0].size(), 128);
        // Writing 1 again to a ready queue does not reset its indexes.
        d.add_out_bytes(0, &[0; 4]);
        d.kick(0);
        d.w32(REG_QUEUE_READY, 1);
        assert_eq!(d.dev.queues()[0].state().next_avail, 1);
    }

    #[test]
    fn random_guest_writes_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..40 {
            let ram = ram();
            let mut d = TestDriver::new(VirtioMmio::new(
                Box::new(Balloon::new(BalloonFeatures::default(), &ram)),
                ram,
            ));
            if round % 2 == 0 {
                d.probe(u64::MAX, 5);
            }
            for _ in 0..2_000 {
                let r = rng.next();
                match r % 8 {
                    // A random descriptor published properly, so the
                    // device gets to chew on random addresses and lengths.
                    0 if !d.queues.is_empty() => {
                        let qi = (r >> 8) as usize % 5;
                        let i = (r >> 16) as u16 % 128;
                        let addr = RAM_BASE
                            .wrapping_add(rng.next() % (8 << 20))
                            .wrapping_sub(1 << 20);
                        let len = if r & 1 << 40 != 0 {
                            rng.next() as u32
                        } else {
                            rng.next() as u32 % 8192
                        };
                        d.write_desc(
                            qi,
                            i,
                            addr,
                            len,
                            (r >> 24) as u16 & 3,
                            (r >> 32) as u16 % 130,
                        );
                        d.publish(qi, i);
                    }
                    // Junk in the rings and descriptor tables.
                    0..=2 => {
                        let q = &d.dev.queues()[(r >> 8) as usize % 5];
                        let base =
                            [q.desc_table(), q.avail_ring(), q.used_ring()][(r >> 16) as usize % 3];
                        let off = (r >> 20) % 2048;
                        let _ = d
                            .ram
                            .write(base.wrapping_add(off), &rng.next().to_le_bytes());
                    }
                    3 => d.w32(REG_QUEUE_NOTIFY, (r >> 8) as u32 % 6),
                    4 => d.process(),
                    5 => {
                        let reg = ((r >> 8) % 0x100) & !3;
                        d.w32(reg, rng.next() as u32);
                    }
                    6 => {
                        let off = (r >> 8) % 0x200;
                        d.dev.write(off, 1 << ((r >> 20) % 4), rng.next());
                        d.dev.read(off, 1 << ((r >> 24) % 4));
                    }
                    _ => {
                        let b = d.dev.device_as_mut::<Balloon>().unwrap();
                        match (r >> 8) % 4 {
                            0 => b.set_target_pages(rng.next() as u32),
                            1 => b.request_stats(),
                            2 => {
                                b.start_free_page_hint();
                            }
                            _ => b.stop_free_page_hint(),
                        }
                    }
                }
            }
            // The state still round-trips whatever happened.
            let s = d.dev.state();
            let ram2 = d.ram.clone();
            let mut fresh = VirtioMmio::new(
                Box::new(Balloon::new(BalloonFeatures::default(), &ram2)),
                ram2,
            );
            fresh.restore(&s).unwrap();
            assert_eq!(fresh.state(), s);
        }
    }
}

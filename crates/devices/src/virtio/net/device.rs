//! The virtio-net device: host-side control, and the receive, transmit and
//! control queues.

use super::super::queue::{DescriptorChain, SplitQueue};
use super::super::{device_id, DeviceEvents, DeviceState, VirtioDevice};
use super::state::{NetCounters, NetState};
use crate::StateError;
use godwit_memory::GuestRam;
use std::io;
use std::os::fd::RawFd;

/// Feature bit: the device takes partially checksummed frames.
pub const VIRTIO_NET_F_CSUM: u32 = 0;
/// Feature bit: the driver takes partially checksummed frames.
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
/// Feature bit: the device has a MAC address (in configuration space).
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// Feature bit: the driver takes TCPv4 segments larger than the MTU.
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
/// Feature bit: the driver takes TCPv6 segments larger than the MTU.
pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
/// Feature bit: the device takes TCPv4 segments larger than the MTU.
pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
/// Feature bit: the device takes TCPv6 segments larger than the MTU.
pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
/// Feature bit: a received frame may span several receive buffers.
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
/// Feature bit: configuration space has a link status.
pub const VIRTIO_NET_F_STATUS: u32 = 16;
/// Feature bit: a control queue exists.
pub const VIRTIO_NET_F_CTRL_VQ: u32 = 17;
/// Feature bit: the control queue takes rx mode commands.
pub const VIRTIO_NET_F_CTRL_RX: u32 = 18;
/// Feature bit: the device can ask the driver to announce itself.
pub const VIRTIO_NET_F_GUEST_ANNOUNCE: u32 = 21;

/// Status bit: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// Status bit: the driver should announce itself (gratuitous ARP).
pub const VIRTIO_NET_S_ANNOUNCE: u16 = 2;

/// The virtio-net header in front of every frame (version 1: with
/// `num_buffers`), here and on the TAP (`TUNSETVNETHDRSZ` 12).
pub const HDR_LEN: usize = 12;
/// The longest frame (a TSO segment) plus its header.
pub const MAX_FRAME: usize = 65_550 + HDR_LEN;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most frames handed over by a migration source waiting for the guest
/// (a TAP's default queue holds 1000).
pub const MAX_FORWARDED: usize = 4096;

const RX: usize = 0;
const TX: usize = 1;
const CTRL: usize = 2;

const CTRL_RX: u8 = 0;
const CTRL_MAC: u8 = 1;
const CTRL_MAC_ADDR_SET: u8 = 1;
const CTRL_ANNOUNCE: u8 = 3;
const CTRL_ANNOUNCE_ACK: u8 = 0;
const CTRL_OK: u8 = 0;
const CTRL_ERR: u8 = 1;

/// Where frames go: a TAP device, or a test's fake. Every frame carries the
/// [`HDR_LEN`]-byte virtio-net header in front.
pub trait NetBackend: Send {
    /// Reads one frame into `buf`; `ErrorKind::WouldBlock` when there is
    /// none now.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends one frame.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// The descriptor that is readable when a frame waits, for the event
    /// thread to wait on.
    fn fd(&self) -> Option<RawFd>;
    /// The driver takes partially checksummed frames (`csum`) and TCP
    /// segments (`tso4`, `tso6`): the backend may now deliver them.
    fn set_offloads(&mut self, csum: bool, tso4: bool, tso6: bool) -> io::Result<()>;
}

/// Most frames held back for a checkpoint ([`Net::hold_output`]); beyond
/// them a frame is dropped, as a full switch port would (TCP sends it
/// again).
pub const MAX_HELD: usize = 16_384;

/// What [`Net::hold_output`] held back so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HeldStats {
    /// Frames held and then sent.
    pub released: u64,
    /// Frames dropped because [`MAX_HELD`] were waiting.
    pub dropped: u64,
    /// Frames still waiting.
    pub waiting: u64,
    /// Time the released frames waited, summed, µs.
    pub wait_us_sum: f64,
    /// The longest a released frame waited, µs.
    pub wait_us_max: f64,
}

/// The guest's output, held until a checkpoint that covers it is safe.
struct HeldOutput {
    /// (epoch, when held, frame with its header).
    frames: std::collections::VecDeque<(u64, std::time::Instant, Vec<u8>)>,
    /// The tag of frames held from now on.
    epoch: u64,
    stats: HeldStats,
}

/// How the device is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The MAC address the guest sees.
    pub mac: [u8; 6],
    /// Offer the checksum and TSO offloads.
    pub offloads: bool,
}

fn bit(b: u32) -> u64 {
    1 << b
}

/// A virtio-net device on a [`NetBackend`].
pub struct Net {
    backend: Box<dyn NetBackend>,
    mac: [u8; 6],
    offered: u64,
    acked: u64,
    status: u16,
    held_rx: Option<Vec<u8>>,
    /// Frames the migration source received for the guest after it paused
    /// there: delivered before anything from the backend. Not part of the
    /// saved state (like frames still in the TAP's queue).
    forwarded: std::collections::VecDeque<Vec<u8>>,
    /// The guest had no receive buffer for the last frame: do not poll the
    /// backend until it adds some.
    rx_starved: bool,
    config_pending: bool,
    counters: NetCounters,
    buf: Vec<u8>,
    /// Output held back for checkpoints (none: frames go out at once).
    held_tx: Option<HeldOutput>,
    /// What the last hold held (kept after it ends).
    held_stats: HeldStats,
}

impl Net {
    /// A device with `config` on `backend`, link up.
    pub fn new(config: NetConfig, backend: Box<dyn NetBackend>) -> Self {
        let mut offered = bit(VIRTIO_NET_F_MAC)
            | bit(VIRTIO_NET_F_STATUS)
            | bit(VIRTIO_NET_F_MRG_RXBUF)
            | bit(VIRTIO_NET_F_CTRL_VQ)
            | bit(VIRTIO_NET_F_CTRL_RX)
            | bit(VIRTIO_NET_F_GUEST_ANNOUNCE);
        if config.offloads {
            offered |= bit(VIRTIO_NET_F_CSUM)
                | bit(VIRTIO_NET_F_GUEST_CSUM)
                | bit(VIRTIO_NET_F_HOST_TSO4)
                | bit(VIRTIO_NET_F_HOST_TSO6)
                | bit(VIRTIO_NET_F_GUEST_TSO4)
                | bit(VIRTIO_NET_F_GUEST_TSO6);
        }
        Net {
            backend,
            mac: config.mac,
            offered,
            acked: 0,
            status: VIRTIO_NET_S_LINK_UP,
            held_rx: None,
            forwarded: Default::default(),
            rx_starved: false,
            config_pending: false,
            counters: NetCounters::default(),
            buf: vec![0; MAX_FRAME],
            held_tx: None,
            held_stats: HeldStats::default(),
        }
    }

    /// The MAC the guest uses now.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Counters so far.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// Whether the driver accepted feature `b`.
    fn has(&self, b: u32) -> bool {
        self.acked & bit(b) != 0
    }

    /// Asks the guest to announce itself (after a migration): sets
    /// `VIRTIO_NET_S_ANNOUNCE` and raises a configuration change at the
    /// next poll. False when the driver did not accept GUEST_ANNOUNCE.
    pub fn announce(&mut self) -> bool {
        if !self.has(VIRTIO_NET_F_GUEST_ANNOUNCE) {
            return false;
        }
        self.status |= VIRTIO_NET_S_ANNOUNCE;
        self.config_pending = true;
        true
    }

    /// Sends `frame` (with its header) on the backend from the host side:
    /// the VMM's own announcements.
    pub fn send_host_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.backend.send(frame)
    }

    /// From now on the guest's frames wait in the device instead of going
    /// to the backend, tagged with the epoch they were sent in (0 first),
    /// until [`release_output`](Self::release_output) lets them go: the
    /// output of a VM protected by checkpoints must not be seen outside
    /// before a checkpoint that covers it is safe (the VM may be resumed
    /// from that checkpoint elsewhere).
    pub fn hold_output(&mut self) {
        if self.held_tx.is_none() {
            self.held_tx = Some(HeldOutput {
                frames: Default::default(),
                epoch: 0,
                stats: HeldStats::default(),
            });
        }
    }

    /// Frames the guest sends from now on belong to `epoch` (the VM is
    /// paused for checkpoint `epoch`: everything sent before has a
    /// smaller tag). Nothing while output is not held.
    pub fn mark_output(&mut self, epoch: u64) {
        if let Some(h) = &mut self.held_tx {
            h.epoch = h.epoch.max(epoch);
        }
    }

    /// Sends the held frames of epochs before `epoch` (checkpoint `epoch`
    /// covers them and is safe); `None`: every held frame, and output is
    /// no longer held.
    pub fn release_output(&mut self, epoch: Option<u64>) {
        let Some(mut h) = self.held_tx.take() else {
            return;
        };
        let now = std::time::Instant::now();
        while let Some((tag, _, _)) = h.frames.front() {
            if epoch.is_some_and(|e| *tag >= e) {
                break;
            }
            let Some((_, at, frame)) = h.frames.pop_front() else {
                break;
            };
            let us = now.saturating_duration_since(at).as_secs_f64() * 1e6;
            h.stats.released += 1;
            h.stats.wait_us_sum += us;
            h.stats.wait_us_max = h.stats.wait_us_max.max(us);
            match self.backend.send(&frame) {
                Ok(()) => {
                    self.counters.tx_frames += 1;
                    self.counters.tx_bytes += (frame.len() - HDR_LEN) as u64;
                }
                Err(_) => self.counters.backend_errors += 1,
            }
        }
        h.stats.waiting = h.frames.len() as u64;
        self.held_stats = h.stats;
        if epoch.is_some() {
            self.held_tx = Some(h);
        }
    }

    /// What holding output did (the current or the last hold).
    pub fn held_stats(&self) -> HeldStats {
        match &self.held_tx {
            Some(h) => HeldStats {
                waiting: h.frames.len() as u64,
                ..h.stats
            },
            None => self.held_stats,
        }
    }

    /// Queues `frame` (with its header), which reached this VM's NIC at the
    /// migration source after the VM paused there, for the guest ahead of
    /// the backend's frames. A frame of impossible size, or one beyond
    /// [`MAX_FORWARDED`] waiting, is dropped (counted in `rx_dropped`).
    pub fn deliver_forwarded(&mut self, frame: Vec<u8>) {
        if frame.len() < HDR_LEN || frame.len() > MAX_FRAME || self.forwarded.len() >= MAX_FORWARDED
        {
            self.counters.rx_dropped += 1;
            return;
        }
        self.forwarded.push_back(frame);
    }

    /// Takes the frames waiting in the backend, at most `max` (the VM is
    /// paused for a migration: they go to the destination instead). A frame
    /// held for the guest stays; it is part of the saved state.
    pub fn take_backend_frames(&mut self, max: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.backend.recv(&mut self.buf) {
                Ok(n) if n >= HDR_LEN => out.push(self.buf[..n].to_vec()),
                Ok(_) => self.counters.rx_dropped += 1,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.counters.backend_errors += 1;
                    break;
                }
            }
        }
        out
    }

    fn merge(&self) -> bool {
        self.has(VIRTIO_NET_F_MRG_RXBUF)
    }

    /// Moves frames from the backend into the guest while both have some.
    fn receive(&mut self, queues: &mut [SplitQueue], ram: &GuestRam) -> bool {
        let Some(q) = queues.get_mut(RX) else {
            return false;
        };
        let mut used = false;
        // Bounded: at most one queue's worth of frames per call.
        for _ in 0..QUEUE_SIZE {
            let frame = match self.held_rx.take().or_else(|| self.forwarded.pop_front()) {
                Some(f) => f,
                None => match self.backend.recv(&mut self.buf) {
                    Ok(n) if n >= HDR_LEN => self.buf[..n].to_vec(),
                    Ok(_) => {
                        self.counters.rx_dropped += 1;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        self.counters.backend_errors += 1;
                        break;
                    }
                },
            };
            match deliver(q, ram, &frame, self.merge()) {
                Delivered::Yes => {
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += (frame.len() - HDR_LEN) as u64;
                    used = true;
                }
                Delivered::NoRoom => {
                    self.held_rx = Some(frame);
                    self.rx_starved = true;
                    break;
                }
                Delivered::TooBig => self.counters.rx_dropped += 1,
            }
        }
        used
    }

    fn transmit(&mut self, queues: &mut [SplitQueue], ram: &GuestRam) -> bool {
        let Some(q) = queues.get_mut(TX) else {
            return false;
        };
        let mut used = false;
        while let Some(chain) = q.pop(ram) {
            match gather(&chain, ram, &mut self.buf) {
                Some(n) if self.held_tx.is_some() => {
                    if let Some(h) = &mut self.held_tx {
                        if h.frames.len() < MAX_HELD {
                            let at = std::time::Instant::now();
                            h.frames.push_back((h.epoch, at, self.buf[..n].to_vec()));
                        } else {
                            h.stats.dropped += 1;
                        }
                    }
                }
                Some(n) => match self.backend.send(&self.buf[..n]) {
                    Ok(()) => {
                        self.counters.tx_frames += 1;
                        self.counters.tx_bytes += (n - HDR_LEN) as u64;
                    }
                    // A full TAP queue drops the frame, as a switch port
                    // would; the guest's TCP sends it again.
                    Err(_) => self.counters.backend_errors += 1,
                },
                None => self.counters.tx_dropped += 1,
            }
            q.add_used(ram, chain.head, 0);
            used = true;
        }
        used
    }

    fn control(&mut self, queues: &mut [SplitQueue], ram: &GuestRam) -> bool {
        let Some(q) = queues.get_mut(CTRL) else {
            return false;
        };
        let mut used = false;
        while let Some(chain) = q.pop(ram) {
            let ack = self.command(&chain, ram);
            let mut len = 0;
            if let Some(d) = chain.writable().last() {
                if d.len >= 1 && ram.write(d.addr, &[ack]).is_ok() {
                    len = 1;
                }
            }
            q.add_used(ram, chain.head, len);
            used = true;
        }
        used
    }

    /// One control command: `class, command, data...` in the readable
    /// buffers; returns the ack byte.
    fn command(&mut self, chain: &DescriptorChain, ram: &GuestRam) -> u8 {
        let Some(cmd) = chain.read_readable(ram, 64) else {
            return CTRL_ERR;
        };
        match (cmd.first(), cmd.get(1)) {
            // Promiscuous, all-multicast and the rest: the device delivers
            // everything the backend gives it anyway.
            (Some(&CTRL_RX), Some(_)) => CTRL_OK,
            (Some(&CTRL_MAC), Some(&CTRL_MAC_ADDR_SET)) => match cmd.get(2..8) {
                Some(m) => {
                    self.mac.copy_from_slice(m);
                    CTRL_OK
                }
                None => CTRL_ERR,
            },
            (Some(&CTRL_MAC), Some(_)) => CTRL_OK,
            (Some(&CTRL_ANNOUNCE), Some(&CTRL_ANNOUNCE_ACK)) => {
                self.status &= !VIRTIO_NET_S_ANNOUNCE;
                CTRL_OK
            }
            _ => CTRL_ERR,
        }
    }

    fn config_bytes(&self) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&self.status.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
        c
    }

    /// What the device remembers.
    pub fn saved(&self) -> NetState {
        NetState {
            mac: self.mac,
            offered: self.offered,
            acked: self.acked,
            status: self.status,
            held_rx: self.held_rx.clone(),
            counters: self.counters,
        }
    }

    /// Loads a saved state; on error nothing is changed.
    pub fn load(&mut self, s: &NetState) -> Result<(), StateError> {
        if s.offered != self.offered {
            return Err(StateError::new(
                "virtio-net",
                "offered features differ (offloads on one side, off on the other)",
            ));
        }
        if s.held_rx
            .as_ref()
            .is_some_and(|f| f.len() > MAX_FRAME || f.len() < HDR_LEN)
        {
            return Err(StateError::new(
                "virtio-net",
                "held frame of impossible size",
            ));
        }
        self.mac = s.mac;
        self.acked = s.acked;
        self.status = s.status | VIRTIO_NET_S_LINK_UP;
        self.held_rx = s.held_rx.clone();
        self.rx_starved = self.held_rx.is_some();
        self.counters = s.counters;
        if self.acked != 0 {
            self.apply_offloads();
        }
        Ok(())
    }

    fn apply_offloads(&mut self) {
        let (c, t4, t6) = (
            self.has(VIRTIO_NET_F_GUEST_CSUM),
            self.has(VIRTIO_NET_F_GUEST_TSO4),
            self.has(VIRTIO_NET_F_GUEST_TSO6),
        );
        if self.backend.set_offloads(c, t4, t6).is_err() {
            self.counters.backend_errors += 1;
        }
    }
}

/// How delivering one frame went.
enum Delivered {
    Yes,
    /// Not enough receive buffers now (nothing was consumed).
    NoRoom,
    /// No buffer could ever hold it (without MRG_RXBUF, a chain too small).
    TooBig,
}

/// The total device-writable length of a chain, saturating.
fn capacity(chain: &DescriptorChain) -> usize {
    chain
        .writable()
        .fold(0usize, |n, d| n.saturating_add(d.len as usize))
}

/// Writes `frame` (header first) into receive chains: one, or as many as
/// it takes with `merge`, setting `num_buffers`. Chains are only consumed
/// once the frame fits.
fn deliver(q: &mut SplitQueue, ram: &GuestRam, frame: &[u8], merge: bool) -> Delivered {
    let mut chains = Vec::new();
    let mut room = 0usize;
    while room < frame.len() {
        let Some(c) = q.pop(ram) else {
            q.unpop(chains.len() as u16);
            return Delivered::NoRoom;
        };
        room = room.saturating_add(capacity(&c));
        chains.push(c);
        if !merge && room < frame.len() {
            // One chain must hold the frame: this one never will. Give it
            // back unused and drop the frame.
            q.add_used(ram, chains[0].head, 0);
            return Delivered::TooBig;
        }
    }
    let mut hdr = [0u8; HDR_LEN];
    hdr.copy_from_slice(&frame[..HDR_LEN]);
    hdr[10..12].copy_from_slice(&(chains.len() as u16).to_le_bytes());
    let mut src: Vec<&[u8]> = vec![&hdr, &frame[HDR_LEN..]];
    for c in &chains {
        let mut written = 0u32;
        for d in c.writable() {
            let mut off = 0u64;
            while off < u64::from(d.len) {
                let Some(part) = src.first_mut() else { break };
                if part.is_empty() {
                    src.remove(0);
                    continue;
                }
                let n = part.len().min((u64::from(d.len) - off) as usize);
                let Some(addr) = d.addr.checked_add(off) else {
                    break;
                };
                if ram.write(addr, &part[..n]).is_err() {
                    // A buffer outside RAM: this chain ends here.
                    off = u64::from(d.len);
                    continue;
                }
                *part = &part[n..];
                off += n as u64;
                written += n as u32;
            }
        }
        q.add_used(ram, c.head, written);
    }
    Delivered::Yes
}

/// Copies a transmit chain (all device-readable) into `buf`; its length,
/// or `None` for a malformed chain.
fn gather(chain: &DescriptorChain, ram: &GuestRam, buf: &mut [u8]) -> Option<usize> {
    if chain.writable().next().is_some() {
        return None;
    }
    let mut n = 0usize;
    for d in chain.readable() {
        let len = d.len as usize;
        let end = n.checked_add(len).filter(|&e| e <= buf.len())?;
        ram.read(d.addr, &mut buf[n..end]).ok()?;
        n = end;
    }
    (n >= HDR_LEN).then_some(n)
}

/// A RARP frame announcing `mac` (with a zero virtio-net header in front),
/// as QEMU's announce-self sends: broadcast, "reverse request" from `mac`,
/// so every switch on the segment learns where `mac` now lives.
pub fn rarp_frame(mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; HDR_LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x8035u16.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f.push(6);
    f.push(4);
    f.extend_from_slice(&3u16.to_be_bytes()); // reverse request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0; 4]);
    f.resize(HDR_LEN + 60, 0); // the Ethernet minimum, without FCS
    f
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_id::NET
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn num_queues(&self) -> u16 {
        3
    }

    fn queue_max_size(&self, _index: u16) -> u16 {
        QUEUE_SIZE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| c.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Every field is read-only for a version 1 driver.
    }

    fn activate(&mut self, features: u64) {
        self.acked = features & (self.offered | bit(32));
        self.apply_offloads();
        self.rx_starved = false;
    }

    fn notify(&mut self, queue: u16, queues: &mut [SplitQueue], ram: &GuestRam) -> bool {
        match usize::from(queue) {
            RX => {
                // New receive buffers: take frames again.
                self.rx_starved = false;
                self.receive(queues, ram)
            }
            TX => self.transmit(queues, ram),
            CTRL => self.control(queues, ram),
            _ => false,
        }
    }

    fn poll(&mut self, queues: &mut [SplitQueue], ram: &GuestRam) -> DeviceEvents {
        if !self.rx_starved {
            self.receive(queues, ram);
        }
        DeviceEvents {
            config_changed: std::mem::take(&mut self.config_pending),
        }
    }

    fn reset(&mut self) {
        self.acked = 0;
        self.status = VIRTIO_NET_S_LINK_UP;
        self.held_rx = None;
        self.forwarded.clear();
        self.rx_starved = false;
        self.config_pending = false;
    }

    fn state(&self) -> DeviceState {
        DeviceState::Net(self.saved())
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), StateError> {
        match state {
            DeviceState::Net(s) => self.load(s),
            other => Err(StateError::new(
                "virtio-net",
                format!("a {} state is not a NIC's", other.kind()),
            )),
        }
    }

    fn io_fds(&self) -> Vec<RawFd> {
        if self.rx_starved || self.acked == 0 {
            return Vec::new();
        }
        self.backend.fd().into_iter().collect()
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

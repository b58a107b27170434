//! The block device: configuration space, request validation and the I/O.

use super::backend::BlockBackend;
use super::hold::{Detached, HeldWrite, Holding, WriteHold};
use super::state::{BlockCounters, BlockState};
use crate::virtio::queue::{DescriptorChain, SplitQueue};
use crate::virtio::{device_id, DeviceEvents, DeviceState, VirtioDevice};
use crate::StateError;
use godwit_memory::GuestRam;
use std::io;
use std::sync::Arc;

/// Feature bit: `seg_max` holds the most data buffers of one request.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Feature bit: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature bit: `blk_size` holds the logical block size.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Feature bit: the device has a write cache and takes `T_FLUSH`.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// Feature bit: discard requests (offered when the backend can discard).
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
/// Feature bit: write-zeroes requests.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;

/// Request type: read sectors into device-writable buffers.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write sectors from device-readable buffers.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: make every completed write durable.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: the device ID string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Request type: discard ranges of sectors.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Request type: zero ranges of sectors.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Status: done.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: failed (I/O error, malformed or refused request).
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: request type (or flag) not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Discard / write-zeroes segment flag: the device may deallocate.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// The protocol's sector: every `sector` field and capacity counts these,
/// whatever `blk_size` says.
pub const SECTOR_SIZE: u64 = 512;
/// The logical block size offered in `blk_size`.
pub const BLK_SIZE: u32 = 512;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data buffers in one request: a chain also holds the header and
/// the status, and (without indirect descriptors) must fit in the queue.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Length of the device ID string (`T_GET_ID`).
pub const ID_BYTES: usize = 20;
/// Most sectors in one discard segment.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Most segments in one discard request.
pub const MAX_DISCARD_SEG: u32 = 16;
/// Alignment the driver should split discards at, in sectors (4 KiB).
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// Most sectors in one write-zeroes request (16 MiB, zeroed on the event
/// thread in [`CHUNK`]-sized writes).
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 15;
/// Most segments in one write-zeroes request.
pub const MAX_WRITE_ZEROES_SEG: u32 = 1;
/// Data moves between guest memory and the backend through one buffer of
/// this size, whatever lengths the guest's descriptors claim.
pub const CHUNK: usize = 64 << 10;

/// Request header: `le32 type, le32 reserved, le64 sector`.
const HEADER_SIZE: usize = 16;
/// One discard / write-zeroes segment: `le64 sector, le32 num_sectors,
/// le32 flags`.
const SEGMENT_SIZE: usize = 16;
/// Configuration space up to and including `write_zeroes_may_unmap` and
/// its padding.
const CONFIG_SIZE: usize = 60;

/// A device the backend cannot be offered as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The ID string is longer than the protocol's 20 bytes.
    #[error("disk id {0:?} is {len} bytes: at most {ID_BYTES}", len = .0.len())]
    IdTooLong(String),
    /// A size that is zero or not a whole number of sectors.
    #[error("{backend} is {len} bytes: a disk must be a non-zero multiple of 512 bytes")]
    Size {
        /// What the backend is.
        backend: String,
        /// Its size.
        len: u64,
    },
    /// A writable disk over a backend that refuses writes.
    #[error("{0} was opened read-only, but the disk is writable")]
    BackendReadOnly(String),
}

/// A run of guest memory that passed the RAM check.
#[derive(Clone, Copy, Debug)]
struct Seg {
    addr: u64,
    len: u64,
}

/// A request that passed the framing checks: the header, then the data
/// buffers after it (device-readable) and before the status byte
/// (device-writable).
struct Request {
    kind: u32,
    sector: u64,
    readable: Vec<Seg>,
    writable: Vec<Seg>,
}

fn total(segs: &[Seg]) -> u64 {
    segs.iter().map(|s| s.len).sum()
}

/// The status byte: the last byte of the chain's last descriptor, which
/// must be device-writable and inside RAM.
fn status_byte(chain: &DescriptorChain, ram: &GuestRam) -> Option<u64> {
    let last = chain.descriptors.last()?;
    if !last.is_write_only() || last.len == 0 {
        return None;
    }
    let addr = last.addr.checked_add(u64::from(last.len) - 1)?;
    ram.contains(addr, 1).then_some(addr)
}

/// Checks the chain's framing (virtio 1.x §2.7.4.2 and §5.2.6): readable
/// descriptors before writable ones, every buffer inside RAM, a 16-byte
/// header at the start of the readable bytes (it may span descriptors).
/// The status byte (see [`status_byte`]) is not part of `writable`.
fn parse(chain: &DescriptorChain, ram: &GuestRam) -> Option<Request> {
    let d = &chain.descriptors;
    let first_w = d.iter().position(|x| x.is_write_only()).unwrap_or(d.len());
    if d[first_w..].iter().any(|x| !x.is_write_only()) {
        return None;
    }
    if d.iter()
        .any(|x| x.len != 0 && !ram.contains(x.addr, x.len as usize))
    {
        return None;
    }
    let mut header = [0u8; HEADER_SIZE];
    let mut have = 0usize;
    let mut readable = Vec::new();
    for x in &d[..first_w] {
        let len = u64::from(x.len);
        let take = (HEADER_SIZE - have).min(x.len as usize);
        if take > 0 {
            ram.read(x.addr, &mut header[have..have + take]).ok()?;
            have += take;
        }
        let rest = len - take as u64;
        if rest > 0 {
            readable.push(Seg {
                addr: x.addr + take as u64,
                len: rest,
            });
        }
    }
    if have < HEADER_SIZE {
        return None;
    }
    let mut writable: Vec<Seg> = d[first_w..]
        .iter()
        .filter(|x| x.len != 0)
        .map(|x| Seg {
            addr: x.addr,
            len: u64::from(x.len),
        })
        .collect();
    // The caller found a status byte: the last descriptor is writable and
    // not empty, so it is the last entry here.
    if let Some(last) = writable.last_mut() {
        last.len -= 1;
        if last.len == 0 {
            writable.pop();
        }
    }
    Some(Request {
        kind: u32::from_le_bytes([header[0], header[1], header[2], header[3]]),
        sector: u64::from_le_bytes([
            header[8], header[9], header[10], header[11], header[12], header[13], header[14],
            header[15],
        ]),
        readable,
        writable,
    })
}

/// A position in a list of checked guest buffers.
struct Cursor<'a> {
    segs: &'a [Seg],
    i: usize,
    off: u64,
}

impl<'a> Cursor<'a> {
    fn new(segs: &'a [Seg]) -> Self {
        Cursor { segs, i: 0, off: 0 }
    }

    /// Copies the next `buf.len()` bytes of the buffers into `buf` (from
    /// guest memory) or from `buf` into them (`to_guest`).
    fn copy(&mut self, ram: &GuestRam, buf: &mut [u8], to_guest: bool) -> Option<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let seg = self.segs.get(self.i)?;
            let left = seg.len - self.off;
            if left == 0 {
                self.i += 1;
                self.off = 0;
                continue;
            }
            let n = left.min((buf.len() - done) as u64) as usize;
            let addr = seg.addr + self.off;
            let part = &mut buf[done..done + n];
            if to_guest {
                ram.write(addr, part).ok()?;
            } else {
                ram.read(addr, part).ok()?;
            }
            done += n;
            self.off += n as u64;
        }
        Some(())
    }
}

/// How a request ended: the status, and the bytes written into the
/// request's device-writable data buffers.
type Outcome = (u8, u64);

/// The virtio-blk device (device ID 2): one request queue, served in
/// order and synchronously on the device's event thread. See the module
/// documentation for what is offered and guaranteed.
pub struct Block {
    backend: Box<dyn BlockBackend>,
    /// Capacity in sectors.
    capacity: u64,
    readonly: bool,
    id: [u8; ID_BYTES],
    offered: u64,
    acked: u64,
    counters: BlockCounters,
    /// The backend is released (a migration's switch): requests stay in
    /// the queue until it is back.
    released: bool,
    /// A kick came while released.
    deferred: bool,
    /// The one bounce buffer, [`CHUNK`] bytes.
    buf: Vec<u8>,
    /// Once writes have been held for checkpoints ([`hold_writes`](Self::hold_writes)).
    hold: Option<Arc<WriteHold>>,
}

impl Block {
    /// A disk over `backend`, offered read-only or not, with device ID
    /// `id` (at most 20 bytes; NUL-padded). The capacity is the backend's
    /// length, which must be a non-zero multiple of 512.
    pub fn new(
        backend: Box<dyn BlockBackend>,
        readonly: bool,
        id: &str,
    ) -> Result<Block, BlockError> {
        if id.len() > ID_BYTES {
            return Err(BlockError::IdTooLong(id.into()));
        }
        let len = backend.len();
        if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::Size {
                backend: backend.describe(),
                len,
            });
        }
        if backend.read_only() && !readonly {
            return Err(BlockError::BackendReadOnly(backend.describe()));
        }
        let mut idb = [0u8; ID_BYTES];
        idb[..id.len()].copy_from_slice(id.as_bytes());
        let mut offered = 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        if readonly {
            offered |= 1 << VIRTIO_BLK_F_RO;
        }
        if backend.can_discard() {
            offered |= 1 << VIRTIO_BLK_F_DISCARD;
        }
        Ok(Block {
            backend,
            capacity: len / SECTOR_SIZE,
            readonly,
            id: idb,
            offered,
            acked: 0,
            counters: BlockCounters::default(),
            released: false,
            deferred: false,
            buf: vec![0; CHUNK],
            hold: None,
        })
    }

    /// From now on the guest's writes (and discards, and flushes) stop in
    /// the returned [`WriteHold`] until it releases them, epoch by epoch;
    /// reads see them. For a VM protected by checkpoints: the image must
    /// not get writes before the checkpoint that covers them is safe.
    pub fn hold_writes(&mut self) -> Arc<WriteHold> {
        if let Some(h) = &self.hold {
            h.restart();
            return h.clone();
        }
        let inner = std::mem::replace(&mut self.backend, Box::new(Detached));
        let h = WriteHold::new(inner);
        self.backend = Box::new(Holding(h.clone()));
        self.hold = Some(h.clone());
        h
    }

    /// Makes `writes` on the image, in order, then flushes it: the writes
    /// of checkpoints a lost destination confirmed but may not have made
    /// (a failover resumes from such a checkpoint). Making one twice is
    /// harmless: the list is replayed whole and in order. The backend must
    /// be attached.
    pub fn replay(&mut self, writes: &[HeldWrite]) -> io::Result<()> {
        if self.released {
            return Err(io::Error::other("the disk is released"));
        }
        for w in writes {
            match w {
                HeldWrite::Write { off, data } => self.backend.write_at(data, *off)?,
                HeldWrite::Discard { off, len } => self.backend.discard(*off, *len)?,
            }
        }
        self.backend.flush()
    }

    // ---- host-side queries and control

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity * SECTOR_SIZE
    }

    /// Whether the disk is offered read-only.
    pub fn read_only(&self) -> bool {
        self.readonly
    }

    /// The device ID string, without its NUL padding.
    pub fn id(&self) -> String {
        let end = self.id.iter().position(|&b| b == 0).unwrap_or(ID_BYTES);
        String::from_utf8_lossy(&self.id[..end]).into_owned()
    }

    /// What the backend is (the image's path).
    pub fn backend_description(&self) -> String {
        self.backend.describe()
    }

    /// The counters.
    pub fn counters(&self) -> BlockCounters {
        self.counters
    }

    /// Whether the backend is released (see [`release_backend`](Self::release_backend)).
    pub fn is_released(&self) -> bool {
        self.released
    }

    /// Flushes the backend and lets go of it (closes the image, dropping
    /// its lock), for a migration's switch: the VM must be paused (its
    /// device thread drained). Until [`reacquire_backend`](Self::reacquire_backend),
    /// kicks are remembered and requests stay in the queue. On error the
    /// backend stays attached.
    pub fn release_backend(&mut self) -> io::Result<()> {
        if self.released {
            return Ok(());
        }
        self.backend.flush()?;
        self.backend.release()?;
        self.released = true;
        Ok(())
    }

    /// Takes the backend again (reopens and relocks the image) and checks
    /// its size did not change; the requests that waited are served at the
    /// device's next poll (wake its event thread). On error the backend
    /// stays released.
    pub fn reacquire_backend(&mut self) -> io::Result<()> {
        if !self.released {
            return Ok(());
        }
        self.backend.reacquire()?;
        if self.backend.len() / SECTOR_SIZE != self.capacity {
            let len = self.backend.len();
            let _ = self.backend.release();
            return Err(io::Error::other(format!(
                "{} is now {len} bytes, the disk has {} sectors",
                self.backend.describe(),
                self.capacity
            )));
        }
        self.released = false;
        Ok(())
    }

    // ---- guest-side processing

    fn acked(&self, bit: u32) -> bool {
        self.acked & self.offered & 1 << bit != 0
    }

    /// Without a negotiated FLUSH every write must be durable when it
    /// completes (virtio 1.x §5.2.6.2, a write is stable at completion
    /// when FLUSH was offered and not negotiated).
    fn write_through(&self) -> bool {
        !self.acked(VIRTIO_BLK_F_FLUSH)
    }

    /// The byte offset of `len` bytes at `sector`, if they lie inside the
    /// disk.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let off = sector.checked_mul(SECTOR_SIZE)?;
        let end = off.checked_add(len)?;
        (end <= self.capacity_bytes()).then_some(off)
    }

    fn invalid(&mut self) -> Outcome {
        self.counters.invalid += 1;
        (VIRTIO_BLK_S_IOERR, 0)
    }

    fn io_error(&mut self, written: u64) -> Outcome {
        self.counters.io_errors += 1;
        (VIRTIO_BLK_S_IOERR, written)
    }

    /// After a write of any kind: the durability the driver was promised.
    fn finish_write(&mut self) -> Result<(), ()> {
        if self.write_through() && self.backend.flush().is_err() {
            self.counters.io_errors += 1;
            return Err(());
        }
        Ok(())
    }

    /// Serves one chain; returns the used length (bytes written into
    /// device-writable buffers, the status byte included).
    fn serve(&mut self, chain: &DescriptorChain, ram: &GuestRam) -> u32 {
        self.counters.requests += 1;
        let Some(status) = status_byte(chain, ram) else {
            // Nowhere to say it failed: returned untouched.
            self.counters.invalid += 1;
            return 0;
        };
        let (code, written) = match parse(chain, ram) {
            Some(req) => self.execute(&req, ram),
            None => self.invalid(),
        };
        if ram.write(status, &[code]).is_err() {
            return u32::try_from(written).unwrap_or(u32::MAX);
        }
        u32::try_from(written.saturating_add(1)).unwrap_or(u32::MAX)
    }

    fn execute(&mut self, req: &Request, ram: &GuestRam) -> Outcome {
        match req.kind {
            VIRTIO_BLK_T_IN => self.read(req, ram),
            VIRTIO_BLK_T_OUT => self.write(req, ram),
            VIRTIO_BLK_T_FLUSH => self.flush(),
            VIRTIO_BLK_T_GET_ID => self.get_id(req, ram),
            VIRTIO_BLK_T_DISCARD if self.acked(VIRTIO_BLK_F_DISCARD) => {
                self.discard_or_zero(req, ram, false)
            }
            VIRTIO_BLK_T_WRITE_ZEROES if self.acked(VIRTIO_BLK_F_WRITE_ZEROES) => {
                self.discard_or_zero(req, ram, true)
            }
            _ => {
                self.counters.unsupported += 1;
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
        }
    }

    fn read(&mut self, req: &Request, ram: &GuestRam) -> Outcome {
        let len = total(&req.writable);
        if !req.readable.is_empty() || !len.is_multiple_of(SECTOR_SIZE) {
            return self.invalid();
        }
        let Some(off) = self.range(req.sector, len) else {
            return self.invalid();
        };
        let mut cur = Cursor::new(&req.writable);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            if self
                .backend
                .read_at(&mut self.buf[..n], off + done)
                .is_err()
            {
                return self.io_error(done);
            }
            if cur.copy(ram, &mut self.buf[..n], true).is_none() {
                self.counters.invalid += 1;
                return (VIRTIO_BLK_S_IOERR, done);
            }
            done += n as u64;
        }
        self.counters.reads += 1;
        self.counters.bytes_read += len;
        (VIRTIO_BLK_S_OK, len)
    }

    fn write(&mut self, req: &Request, ram: &GuestRam) -> Outcome {
        let len = total(&req.readable);
        if self.readonly || !req.writable.is_empty() || !len.is_multiple_of(SECTOR_SIZE) {
            return self.invalid();
        }
        let Some(off) = self.range(req.sector, len) else {
            return self.invalid();
        };
        let mut cur = Cursor::new(&req.readable);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            if cur.copy(ram, &mut self.buf[..n], false).is_none() {
                return self.invalid();
            }
            if self.backend.write_at(&self.buf[..n], off + done).is_err() {
                return self.io_error(0);
            }
            done += n as u64;
        }
        if self.finish_write().is_err() {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        self.counters.writes += 1;
        self.counters.bytes_written += len;
        (VIRTIO_BLK_S_OK, 0)
    }

    /// Every write completed before this request is in the backend (they
    /// were served first, synchronously); `fdatasync` makes them durable.
    fn flush(&mut self) -> Outcome {
        if self.backend.flush().is_err() {
            return self.io_error(0);
        }
        self.counters.flushes += 1;
        (VIRTIO_BLK_S_OK, 0)
    }

    fn get_id(&mut self, req: &Request, ram: &GuestRam) -> Outcome {
        if !req.readable.is_empty() {
            return self.invalid();
        }
        let n = total(&req.writable).min(ID_BYTES as u64) as usize;
        let mut id = self.id;
        if Cursor::new(&req.writable)
            .copy(ram, &mut id[..n], true)
            .is_none()
        {
            return self.invalid();
        }
        self.counters.get_ids += 1;
        (VIRTIO_BLK_S_OK, n as u64)
    }

    /// Discard (`zero` false) or write-zeroes (`zero` true): every segment
    /// is checked before any is carried out.
    fn discard_or_zero(&mut self, req: &Request, ram: &GuestRam, zero: bool) -> Outcome {
        let (max_seg, max_sectors, allowed_flags) = if zero {
            (
                MAX_WRITE_ZEROES_SEG,
                MAX_WRITE_ZEROES_SECTORS,
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
            )
        } else {
            // The unmap flag is not for discard (§5.2.6.2).
            (MAX_DISCARD_SEG, MAX_DISCARD_SECTORS, 0)
        };
        let len = total(&req.readable);
        let max_len = u64::from(max_seg) * SEGMENT_SIZE as u64;
        if !req.writable.is_empty()
            || len == 0
            || !len.is_multiple_of(SEGMENT_SIZE as u64)
            || len > max_len
        {
            return self.invalid();
        }
        let mut raw = [0u8; MAX_DISCARD_SEG as usize * SEGMENT_SIZE];
        let raw = &mut raw[..len as usize];
        if Cursor::new(&req.readable).copy(ram, raw, false).is_none() {
            return self.invalid();
        }
        let segs: Vec<(u64, u32, u32)> = raw
            .chunks_exact(SEGMENT_SIZE)
            .map(|s| {
                let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
                (u64::from(w(0)) | u64::from(w(4)) << 32, w(8), w(12))
            })
            .collect();
        if segs
            .iter()
            .any(|&(_, _, flags)| flags & !allowed_flags != 0)
        {
            self.counters.unsupported += 1;
            return (VIRTIO_BLK_S_UNSUPP, 0);
        }
        if self.readonly {
            return self.invalid();
        }
        let mut ranges = Vec::with_capacity(segs.len());
        for &(sector, n, _) in &segs {
            let bytes = u64::from(n) * SECTOR_SIZE;
            match self.range(sector, bytes) {
                Some(off) if n <= max_sectors => ranges.push((off, bytes)),
                _ => return self.invalid(),
            }
        }
        for (off, bytes) in ranges {
            let ok = if zero {
                self.zero(off, bytes).is_ok()
            } else {
                self.backend.discard(off, bytes).is_ok()
            };
            if !ok {
                return self.io_error(0);
            }
            if zero {
                self.counters.bytes_zeroed += bytes;
            }
        }
        if self.finish_write().is_err() {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        if zero {
            self.counters.write_zeroes += 1;
        } else {
            self.counters.discards += 1;
        }
        (VIRTIO_BLK_S_OK, 0)
    }

    /// Writes zeros (never a discard: the range must read as zeros after).
    fn zero(&mut self, off: u64, len: u64) -> io::Result<()> {
        let n = (len.min(CHUNK as u64)) as usize;
        self.buf[..n].fill(0);
        let mut done = 0u64;
        while done < len {
            let m = (len - done).min(CHUNK as u64) as usize;
            self.backend.write_at(&self.buf[..m], off + done)?;
            done += m as u64;
        }
        Ok(())
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        let mut put = |off: usize, b: &[u8]| c[off..off + b.len()].copy_from_slice(b);
        put(0, &self.capacity.to_le_bytes());
        put(12, &SEG_MAX.to_le_bytes());
        put(20, &BLK_SIZE.to_le_bytes());
        if self.offered & 1 << VIRTIO_BLK_F_DISCARD != 0 {
            put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
            put(40, &MAX_DISCARD_SEG.to_le_bytes());
            put(44, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
        }
        put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
        put(52, &MAX_WRITE_ZEROES_SEG.to_le_bytes());
        // write_zeroes_may_unmap (56) stays 0: zeroing always writes.
        c
    }

    /// What the device remembers (see [`BlockState`]).
    pub fn saved(&self) -> BlockState {
        BlockState {
            capacity: self.capacity,
            readonly: self.readonly,
            id: self.id,
            offered_features: self.offered,
            acked_features: self.acked,
            deferred: self.deferred,
            counters: self.counters,
        }
    }

    /// Loads a saved state from a disk of the same capacity, mode, ID and
    /// features; on error nothing is changed. The backend stays as it is.
    pub fn load(&mut self, s: &BlockState) -> Result<(), StateError> {
        let err = |r: String| Err(StateError::new("virtio-blk", r));
        if s.capacity != self.capacity {
            return err(format!(
                "{} sectors saved, this disk has {}",
                s.capacity, self.capacity
            ));
        }
        if s.readonly != self.readonly {
            return err(format!(
                "the disk was {}, here it is {}",
                if s.readonly { "read-only" } else { "writable" },
                if self.readonly {
                    "read-only"
                } else {
                    "writable"
                }
            ));
        }
        if s.id != self.id {
            return err("the disk ID differs".into());
        }
        if s.offered_features != self.offered {
            return err(format!(
                "offered features {:#x} saved, this disk offers {:#x}",
                s.offered_features, self.offered
            ));
        }
        self.acked = s.acked_features;
        self.deferred = s.deferred;
        self.counters = s.counters;
        Ok(())
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_id::BLOCK
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn num_queues(&self) -> u16 {
        1
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
        // Every field is the device's (no CONFIG_WCE: no writeback toggle).
    }

    fn activate(&mut self, features: u64) {
        self.acked = features;
    }

    fn notify(&mut self, queue: u16, queues: &mut [SplitQueue], ram: &GuestRam) -> bool {
        if queue != 0 {
            return false;
        }
        let Some(q) = queues.get_mut(0) else {
            return false;
        };
        if self.released {
            self.deferred = true;
            return false;
        }
        let mut used = false;
        // In ring order, each request finished (its writes in the backend,
        // its flush durable) before the next is looked at. pop() yields at
        // most what the driver published and stops when the ring breaks.
        while let Some(chain) = q.pop(ram) {
            let len = self.serve(&chain, ram);
            q.add_used(ram, chain.head, len);
            used = true;
        }
        used
    }

    fn poll(&mut self, queues: &mut [SplitQueue], ram: &GuestRam) -> DeviceEvents {
        if self.deferred && !self.released {
            self.deferred = false;
            self.notify(0, queues, ram);
        }
        DeviceEvents::default()
    }

    fn reset(&mut self) {
        self.acked = 0;
        self.deferred = false;
    }

    fn state(&self) -> DeviceState {
        DeviceState::Block(self.saved())
    }

    fn restore(&mut self, s: &DeviceState) -> Result<(), StateError> {
        let DeviceState::Block(s) = s else {
            return Err(StateError::new(
                "virtio-blk",
                format!("a {} state is not a block device's", s.kind()),
            ));
        };
        self.load(s)
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

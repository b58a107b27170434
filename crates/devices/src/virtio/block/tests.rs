use super::*;
use crate::virtio::mmio::{VirtioMmio, INT_USED_BUFFER};
use crate::virtio::queue::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use crate::virtio::status;
use crate::virtio::testdrv::{ram, TestDriver, RAM_BASE, RAM_SIZE};
use crate::virtio::DeviceState;
use crate::MmioDevice;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What a [`MemDisk`] was asked to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Read(u64, usize),
    Write(u64, usize),
    Flush,
    Discard(u64, u64),
}

#[derive(Default)]
struct Inner {
    data: Vec<u8>,
    log: Vec<Op>,
    fail_read: bool,
    fail_write: bool,
    fail_flush: bool,
    released: bool,
}

/// An in-memory backend that records every call and asserts that nothing
/// outside its bytes is ever read, written or discarded.
#[derive(Clone)]
struct MemDisk {
    inner: Arc<Mutex<Inner>>,
    discard: bool,
    readonly: bool,
}

impl MemDisk {
    fn new(bytes: usize) -> Self {
        MemDisk {
            inner: Arc::new(Mutex::new(Inner {
                data: vec![0; bytes],
                ..Default::default()
            })),
            discard: false,
            readonly: false,
        }
    }

    fn with(bytes: usize, discard: bool, readonly: bool) -> Self {
        MemDisk {
            discard,
            readonly,
            ..MemDisk::new(bytes)
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    fn log(&self) -> Vec<Op> {
        std::mem::take(&mut self.inner().log)
    }

    fn bytes(&self, off: usize, len: usize) -> Vec<u8> {
        self.inner().data[off..off + len].to_vec()
    }

    fn check(i: &Inner, off: u64, len: u64, what: &str) {
        assert!(!i.released, "{what} while released");
        assert!(
            off.checked_add(len)
                .is_some_and(|end| end <= i.data.len() as u64),
            "{what} of {len} bytes at {off} outside a disk of {}",
            i.data.len()
        );
    }
}

impl BlockBackend for MemDisk {
    fn len(&self) -> u64 {
        self.inner().data.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let mut i = self.inner();
        Self::check(&i, off, buf.len() as u64, "read");
        i.log.push(Op::Read(off, buf.len()));
        if i.fail_read {
            return Err(io::Error::other("injected read error"));
        }
        let o = off as usize;
        buf.copy_from_slice(&i.data[o..o + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        let mut i = self.inner();
        assert!(!self.readonly, "write to a read-only backend");
        Self::check(&i, off, buf.len() as u64, "write");
        i.log.push(Op::Write(off, buf.len()));
        if i.fail_write {
            return Err(io::Error::other("injected write error"));
        }
        let o = off as usize;
        i.data[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut i = self.inner();
        assert!(!i.released, "flush while released");
        i.log.push(Op::Flush);
        if i.fail_flush {
            return Err(io::Error::other("injected flush error"));
        }
        Ok(())
    }

    fn discard(&self, off: u64, len: u64) -> io::Result<()> {
        let mut i = self.inner();
        assert!(self.discard, "discard on a backend that cannot");
        assert!(!self.readonly, "discard on a read-only backend");
        Self::check(&i, off, len, "discard");
        i.log.push(Op::Discard(off, len));
        let o = off as usize;
        i.data[o..o + len as usize].fill(0);
        Ok(())
    }

    fn can_discard(&self) -> bool {
        self.discard
    }

    fn read_only(&self) -> bool {
        self.readonly
    }

    fn describe(&self) -> String {
        "a memory disk".into()
    }

    fn release(&mut self) -> io::Result<()> {
        self.inner().released = true;
        Ok(())
    }

    fn reacquire(&mut self) -> io::Result<()> {
        self.inner().released = false;
        Ok(())
    }
}

const MIB: usize = 1 << 20;
/// Guest buffers for data live below the driver's area.
const DATA: u64 = RAM_BASE + 0x1000;
const UNSET: u8 = 0xee;
const ALL: u64 = u64::MAX;

fn driver(backend: Box<dyn BlockBackend>, readonly: bool, id: &str, want: u64) -> TestDriver {
    let ram = ram();
    let dev = Block::new(backend, readonly, id).expect("a valid disk");
    let mut d = TestDriver::new(VirtioMmio::new(Box::new(dev), ram));
    d.probe(want, 1);
    d
}

fn mem_driver(bytes: usize) -> (TestDriver, MemDisk) {
    let m = MemDisk::new(bytes);
    (driver(Box::new(m.clone()), false, "mem0", ALL), m)
}

fn block(d: &TestDriver) -> &Block {
    d.dev.device_as::<Block>().expect("a block device")
}

fn block_mut(d: &mut TestDriver) -> &mut Block {
    d.dev.device_as_mut::<Block>().expect("a block device")
}

fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// A device-readable buffer in the driver's area holding `bytes`.
fn out_buf(d: &mut TestDriver, bytes: &[u8]) -> (u64, u32, bool) {
    let a = d.alloc(bytes.len() as u64, 8);
    d.ram.write(a, bytes).unwrap();
    (a, bytes.len() as u32, false)
}

/// A one-byte device-writable status buffer, preset to [`UNSET`].
fn status_buf(d: &mut TestDriver) -> (u64, u32, bool) {
    let a = d.alloc(1, 1);
    d.ram.write(a, &[UNSET]).unwrap();
    (a, 1, true)
}

/// Submits one chain and kicks; returns (used length, status byte found in
/// the chain's last buffer).
fn submit(d: &mut TestDriver, bufs: &[(u64, u32, bool)]) -> (u32, u8) {
    let head = d.add(0, bufs);
    d.kick(0);
    let used = d.used(0);
    assert_eq!(used.len(), 1, "one used entry");
    assert_eq!(used[0].0, u32::from(head));
    let &(addr, len, _) = bufs.last().unwrap();
    let st = d
        .ram
        .read_le::<1>(addr + u64::from(len.max(1)) - 1)
        .unwrap()[0];
    (used[0].1, st)
}

/// A request with a header, `data` buffers (device-writable for reads and
/// GET_ID) and a status byte.
fn request(d: &mut TestDriver, kind: u32, sector: u64, data: &[(u64, u32)]) -> (u32, u8) {
    let w = matches!(kind, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID);
    let mut bufs = vec![out_buf(d, &header(kind, sector))];
    bufs.extend(data.iter().map(|&(a, l)| (a, l, w)));
    bufs.push(status_buf(d));
    submit(d, &bufs)
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn segment(sector: u64, n: u32, flags: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&n.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    s
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("godwit-blk-{name}-{}", std::process::id()))
}

/// A zeroed image file of `bytes`, removed on drop.
struct TempImage(PathBuf);

impl TempImage {
    fn new(name: &str, bytes: u64) -> Self {
        let p = temp_path(name);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(bytes).unwrap();
        TempImage(p)
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn probe_features_and_config() {
    let (mut d, _m) = mem_driver(MIB);
    assert_eq!(d.r32(0x008), 2, "device id");
    assert_ne!(d.status() & status::DRIVER_OK, 0);
    d.w32(0x030, 0);
    assert_eq!(d.r32(0x034), 256, "queue size");
    d.w32(0x030, 1);
    assert_eq!(d.r32(0x034), 0, "one queue");
    let f = d.dev.acked_features();
    let want = 1 << VIRTIO_BLK_F_SEG_MAX
        | 1 << VIRTIO_BLK_F_BLK_SIZE
        | 1 << VIRTIO_BLK_F_FLUSH
        | 1 << VIRTIO_BLK_F_WRITE_ZEROES
        | 1 << 32;
    assert_eq!(f, want, "offered: {f:#x}");
    // capacity (le64 at 0), seg_max (12), blk_size (20).
    assert_eq!(d.dev.read(0x100, 8), (MIB / 512) as u64);
    assert_eq!(d.config_read32(0), (MIB / 512) as u32);
    assert_eq!(d.config_read32(4), 0);
    assert_eq!(d.config_read32(8), 0, "no size_max");
    assert_eq!(d.config_read32(12), 254);
    assert_eq!(d.config_read32(20), 512);
    assert_eq!(d.config_read32(36), 0, "no discard");
    assert_eq!(d.config_read32(48), MAX_WRITE_ZEROES_SECTORS);
    assert_eq!(d.config_read32(52), 1);
    assert_eq!(d.dev.read(0x100 + 56, 1), 0, "zeroing never unmaps");
    assert_eq!(d.dev.read(0x100 + 60, 8), 0, "past the end");
    assert_eq!(d.dev.read(u64::MAX, 8), 0);
    // The driver cannot change anything.
    d.config_write32(0, 7);
    d.config_write32(32, 1);
    d.dev.write(u64::MAX, 8, u64::MAX);
    assert_eq!(d.config_read32(0), (MIB / 512) as u32);
    assert_eq!(d.dev.read(0x100 + 32, 1), 0);

    // Read-only and discarding backends add RO and DISCARD.
    let m = MemDisk::with(MIB, true, true);
    let d = driver(Box::new(m), true, "", ALL);
    let f = d.dev.acked_features();
    assert_ne!(f & 1 << VIRTIO_BLK_F_RO, 0);
    assert_ne!(f & 1 << VIRTIO_BLK_F_DISCARD, 0);
    let mut d = d;
    assert_eq!(d.config_read32(36), MAX_DISCARD_SECTORS);
    assert_eq!(d.config_read32(40), MAX_DISCARD_SEG);
    assert_eq!(d.config_read32(44), DISCARD_SECTOR_ALIGNMENT);
}

#[test]
fn bad_configurations_are_refused() {
    let e = Block::new(Box::new(MemDisk::new(MIB)), false, "123456789012345678901");
    assert!(matches!(e, Err(BlockError::IdTooLong(_))));
    assert!(Block::new(Box::new(MemDisk::new(MIB)), false, "12345678901234567890").is_ok());
    for bytes in [0, 511, 513, MIB + 1] {
        let e = Block::new(Box::new(MemDisk::new(bytes)), false, "x");
        assert!(matches!(e, Err(BlockError::Size { .. })), "{bytes}");
    }
    let e = Block::new(Box::new(MemDisk::with(MIB, false, true)), false, "x");
    assert!(matches!(e, Err(BlockError::BackendReadOnly(_))));
    assert!(Block::new(Box::new(MemDisk::with(MIB, false, true)), true, "x").is_ok());
}

#[test]
fn file_round_trip_with_any_layout() {
    let img = TempImage::new("roundtrip", MIB as u64);
    let disk = FileDisk::open(&img.0, false).unwrap();
    assert_eq!(disk.len(), MIB as u64);
    let mut d = driver(Box::new(disk), false, "file0", ALL);
    // 1536 bytes at sector 3, from three buffers of odd sizes.
    let data = pattern(1536, 7);
    d.ram.write(DATA, &data[..100]).unwrap();
    d.ram.write(DATA + 0x1000, &data[100..612]).unwrap();
    d.ram.write(DATA + 0x2000, &data[612..]).unwrap();
    let (used, st) = request(
        &mut d,
        VIRTIO_BLK_T_OUT,
        3,
        &[(DATA, 100), (DATA + 0x1000, 512), (DATA + 0x2000, 924)],
    );
    assert_eq!(
        (used, st),
        (1, VIRTIO_BLK_S_OK),
        "a write only writes its status"
    );
    assert_eq!(d.take_interrupts(), INT_USED_BUFFER);
    let file = std::fs::read(&img.0).unwrap();
    assert_eq!(&file[3 * 512..3 * 512 + 1536], &data[..]);
    assert!(file[..3 * 512].iter().all(|&b| b == 0));
    assert!(file[3 * 512 + 1536..].iter().all(|&b| b == 0));
    // Read it back into two buffers of another split.
    let back = DATA + 0x10_0000;
    let (used, st) = request(
        &mut d,
        VIRTIO_BLK_T_IN,
        3,
        &[(back, 1000), (back + 0x1000, 536)],
    );
    assert_eq!((used, st), (1537, VIRTIO_BLK_S_OK), "data + status");
    let mut got = vec![0u8; 1536];
    d.ram.read(back, &mut got[..1000]).unwrap();
    d.ram.read(back + 0x1000, &mut got[1000..]).unwrap();
    assert_eq!(got, data);
    // Header split over two descriptors; header and data in one
    // descriptor; data and status in one: framing is free (§2.6.4).
    let h = header(VIRTIO_BLK_T_OUT, 100);
    let a = out_buf(&mut d, &h[..8]);
    let b = out_buf(&mut d, &h[8..]);
    let c = out_buf(&mut d, &pattern(512, 9));
    let s = status_buf(&mut d);
    assert_eq!(submit(&mut d, &[a, b, c, s]), (1, VIRTIO_BLK_S_OK));
    let mut joined = header(VIRTIO_BLK_T_OUT, 101).to_vec();
    joined.extend(pattern(512, 10));
    let c = out_buf(&mut d, &joined);
    let s = status_buf(&mut d);
    assert_eq!(submit(&mut d, &[c, s]), (1, VIRTIO_BLK_S_OK));
    let rs = d.alloc(1025, 1);
    let h = out_buf(&mut d, &header(VIRTIO_BLK_T_IN, 100));
    assert_eq!(
        submit(&mut d, &[h, (rs, 1025, true)]),
        (1025, VIRTIO_BLK_S_OK)
    );
    let mut got = vec![0u8; 1024];
    d.ram.read(rs, &mut got).unwrap();
    assert_eq!(got[..512], pattern(512, 9)[..]);
    assert_eq!(got[512..], pattern(512, 10)[..]);
    let c = block(&d).counters();
    assert_eq!((c.reads, c.writes, c.invalid), (2, 3, 0));
    assert_eq!((c.bytes_read, c.bytes_written), (2560, 2560));
}

#[test]
fn large_transfers_go_through_the_bounce_buffer() {
    // 300 KiB over more than four chunks, in uneven buffers.
    let (mut d, m) = mem_driver(MIB);
    let n = 300 << 10;
    let data = pattern(n, 3);
    d.ram.write(DATA, &data).unwrap();
    let split = [
        (DATA, 70_000),
        (DATA + 70_000, 1),
        (DATA + 70_001, n as u32 - 70_001),
    ];
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_OUT, 8, &split).1,
        VIRTIO_BLK_S_OK
    );
    let writes: Vec<Op> = m.log();
    assert_eq!(writes.len(), n.div_ceil(CHUNK));
    assert!(writes
        .iter()
        .all(|w| matches!(w, Op::Write(_, l) if *l <= CHUNK)));
    assert_eq!(m.bytes(8 * 512, n), data);
    let back = DATA + 0x8_0000;
    let (used, st) = request(&mut d, VIRTIO_BLK_T_IN, 8, &[(back, n as u32)]);
    assert_eq!((used, st), (n as u32 + 1, VIRTIO_BLK_S_OK));
    let mut got = vec![0u8; n];
    d.ram.read(back, &mut got).unwrap();
    assert_eq!(got, data);
}

#[test]
fn reads_dirty_the_pages_they_fill() {
    let (mut d, _m) = mem_driver(MIB);
    d.ram.set_logging(true);
    let page = |a: u64| ((a - RAM_BASE) / 4096) as usize;
    request(&mut d, VIRTIO_BLK_T_IN, 0, &[(DATA + 0x5000, 4096)]);
    assert!(d.ram.dirty_log().get(page(DATA + 0x5000)));
    assert!(!d.ram.dirty_log().get(page(DATA + 0x7000)));
}

#[test]
fn flushes_follow_the_writes_before_them() {
    let (mut d, m) = mem_driver(MIB);
    let w = |d: &mut TestDriver, sector| request(d, VIRTIO_BLK_T_OUT, sector, &[(DATA, 512)]);
    // Several requests made available before one kick: served in order.
    let mut heads = Vec::new();
    for (kind, sector) in [
        (VIRTIO_BLK_T_OUT, 1),
        (VIRTIO_BLK_T_OUT, 2),
        (VIRTIO_BLK_T_FLUSH, 0),
        (VIRTIO_BLK_T_OUT, 3),
    ] {
        let mut bufs = vec![out_buf(&mut d, &header(kind, sector))];
        if kind == VIRTIO_BLK_T_OUT {
            bufs.push((DATA, 512, false));
        }
        bufs.push(status_buf(&mut d));
        heads.push(d.add(0, &bufs));
    }
    d.kick(0);
    let used: Vec<u32> = d.used(0).iter().map(|u| u.0).collect();
    assert_eq!(
        used,
        heads.iter().map(|&h| u32::from(h)).collect::<Vec<_>>()
    );
    assert_eq!(w(&mut d, 4).1, VIRTIO_BLK_S_OK);
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_FLUSH, 0, &[]),
        (1, VIRTIO_BLK_S_OK)
    );
    assert_eq!(
        m.log(),
        vec![
            Op::Write(512, 512),
            Op::Write(1024, 512),
            Op::Flush,
            Op::Write(1536, 512),
            Op::Write(2048, 512),
            Op::Flush,
        ]
    );
    assert_eq!(block(&d).counters().flushes, 2);

    // A driver without FLUSH gets write-through: each write is durable
    // before it completes.
    let m = MemDisk::new(MIB);
    let mut d = driver(
        Box::new(m.clone()),
        false,
        "",
        ALL & !(1 << VIRTIO_BLK_F_FLUSH),
    );
    w(&mut d, 5);
    w(&mut d, 6);
    assert_eq!(
        m.log(),
        vec![
            Op::Write(2560, 512),
            Op::Flush,
            Op::Write(3072, 512),
            Op::Flush
        ]
    );
}

#[test]
fn backend_errors_become_ioerr() {
    let (mut d, m) = mem_driver(MIB);
    m.inner().fail_flush = true;
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_FLUSH, 0, &[]),
        (1, VIRTIO_BLK_S_IOERR)
    );
    m.inner().fail_write = true;
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_OUT, 0, &[(DATA, 512)]).1,
        VIRTIO_BLK_S_IOERR
    );
    m.inner().fail_read = true;
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 0, &[(DATA, 1024)]),
        (1, VIRTIO_BLK_S_IOERR)
    );
    let c = block(&d).counters();
    assert_eq!((c.io_errors, c.reads, c.writes, c.flushes), (3, 0, 0, 0));
    assert_eq!(c.errors(), 3);
    // It recovers once the backend does.
    *m.inner() = Inner {
        data: vec![0; MIB],
        ..Default::default()
    };
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 0, &[(DATA, 1024)]),
        (1025, VIRTIO_BLK_S_OK)
    );
    assert_eq!(d.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn sectors_outside_the_disk_are_refused() {
    let (mut d, m) = mem_driver(64 * 512);
    for (sector, len) in [
        (64u64, 512u32),
        (63, 1024),
        (u64::MAX, 512),
        (u64::MAX / 512, 512),
        (u64::MAX / 512 + 1, 512),
        (1 << 55, 512),
    ] {
        for kind in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT] {
            assert_eq!(
                request(&mut d, kind, sector, &[(DATA, len)]),
                (1, VIRTIO_BLK_S_IOERR),
                "type {kind} sector {sector} len {len}"
            );
        }
    }
    // Lengths that are not whole sectors.
    for len in [1, 511, 513, 1000] {
        assert_eq!(
            request(&mut d, VIRTIO_BLK_T_OUT, 0, &[(DATA, len)]).1,
            VIRTIO_BLK_S_IOERR
        );
    }
    assert!(m.log().is_empty(), "the backend was never touched");
    // The last sector is fine, and so is an empty read at the end.
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_OUT, 63, &[(DATA, 512)]).1,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 64, &[]),
        (1, VIRTIO_BLK_S_OK)
    );
    assert_eq!(block(&d).counters().invalid, 16);
}

#[test]
fn malformed_chains_are_answered_or_dropped() {
    let (mut d, m) = mem_driver(MIB);
    let h_in = header(VIRTIO_BLK_T_IN, 0);
    let h_out = header(VIRTIO_BLK_T_OUT, 0);
    // (name, chain, expected used length, expected status or None for
    // "untouched")
    type Build = fn(&mut TestDriver, [u8; 16], [u8; 16]) -> Vec<(u64, u32, bool)>;
    let cases: Vec<(&str, Build, u32, Option<u8>)> = vec![
        (
            "status only, no header",
            |d, _, _| vec![status_buf(d)],
            1,
            Some(VIRTIO_BLK_S_IOERR),
        ),
        (
            "header device-writable",
            |d, hi, _| {
                let (a, l, _) = out_buf(d, &hi);
                vec![(a, l, true), (DATA, 512, true), status_buf(d)]
            },
            1,
            Some(VIRTIO_BLK_S_IOERR),
        ),
        (
            "short header",
            |d, hi, _| vec![out_buf(d, &hi[..15]), status_buf(d)],
            1,
            Some(VIRTIO_BLK_S_IOERR),
        ),
        (
            "zero-length header",
            |d, _, _| vec![(DATA, 0, false), (DATA, 512, true), status_buf(d)],
            1,
            Some(VIRTIO_BLK_S_IOERR),
        ),
        (
            "status device-readable",
            |d, hi, _| {
                let (a, _, _) = status_buf(d);
                vec![out_buf(d, &hi), (DATA, 512, true), (a, 1, false)]
            },
            0,
            None,
        ),
        (
            "zero-length status",
            |d, hi, _| {
                let (a, _, _) = status_buf(d);
                vec![out_buf(d, &hi), (DATA, 512, true), (a, 0, true)]
            },
            0,
            None,
        ),
        (
            "one empty descriptor",
            |_, _, _| vec![(DATA, 0, false)],
            0,
            None,
        ),
        (
            "status outside RAM",
            |d, hi, _| vec![out_buf(d, &hi), (u64::MAX - 1, 1, true)],
            0,
            None,
        ),
        (
            "read with device-readable data",
            |d, hi, _| vec![out_buf(d, &hi), (DATA, 512, false), status_buf(d)],
            1,
            Some(VIRTIO_BLK_S_IOERR),
        ),
        (
            "write with device-writable data",
            |d, _, ho| vec![out_buf(d, &ho), (DATA, 512, true), status_buf(d)],
            1,
            Some(VIRTIO_BLK_S_IOERR),
        ),
        (
            "readable after writable",
            |d, _, ho| {
                vec![
                    out_buf(d, &ho),
                    (DATA, 512, true),
                    (DATA, 512, false),
                    status_buf(d),
                ]
            },
            1,
            Some(VIRTIO_BLK_S_IOERR),
        ),
        (
            "huge read length",
            |d, hi, _| vec![out_buf(d, &hi), (DATA, !511u32, true), status_buf(d)],
            1,
            Some(VIRTIO_BLK_S_IOERR),
        ),
        (
            "huge write length",
            |d, _, ho| vec![out_buf(d, &ho), (DATA, !511u32, false), status_buf(d)],
            1,
            Some(VIRTIO_BLK_S_IOERR),
        ),
        (
            "data past the end of RAM",
            |d, hi, _| {
                let end = RAM_BASE + RAM_SIZE as u64;
                vec![out_buf(d, &hi), (end - 512, 1024, true), status_buf(d)]
            },
            1,
            Some(VIRTIO_BLK_S_IOERR),
        ),
        (
            "data below RAM",
            |d, _, ho| vec![out_buf(d, &ho), (0x1000, 512, false), status_buf(d)],
            1,
            Some(VIRTIO_BLK_S_IOERR),
        ),
        (
            "address wraps",
            |d, _, ho| vec![out_buf(d, &ho), (u64::MAX - 255, 512, false), status_buf(d)],
            1,
            Some(VIRTIO_BLK_S_IOERR),
        ),
    ];
    let n = cases.len() as u64;
    for (name, build, used_len, want) in cases {
        let bufs = build(&mut d, h_in, h_out);
        let &(last, last_len, _) = bufs.last().unwrap();
        let before = d.ram.read_le::<1>(last).ok();
        let head = d.add(0, &bufs);
        d.kick(0);
        assert_eq!(
            d.used(0),
            vec![(u32::from(head), used_len)],
            "{name}: used length"
        );
        if let Some(st) = want {
            let got = d.ram.read_le::<1>(last + u64::from(last_len) - 1).unwrap()[0];
            assert_eq!(got, st, "{name}: status");
        } else {
            assert_eq!(d.ram.read_le::<1>(last).ok(), before, "{name}: untouched");
        }
        assert_eq!(d.status() & status::DEVICE_NEEDS_RESET, 0, "{name}");
    }
    assert!(
        m.log().is_empty(),
        "no malformed request reached the backend"
    );
    assert_eq!(block(&d).counters().invalid, n);
    assert_eq!(block(&d).counters().requests, n);
    // Still serving.
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 0, &[(DATA, 512)]),
        (513, VIRTIO_BLK_S_OK)
    );
}

#[test]
fn read_only_disks_refuse_every_write() {
    let m = MemDisk::with(MIB, false, true);
    {
        let mut i = m.inner();
        i.data[..512].copy_from_slice(&pattern(512, 1));
    }
    let mut d = driver(Box::new(m.clone()), true, "ro", ALL);
    assert_ne!(d.dev.acked_features() & 1 << VIRTIO_BLK_F_RO, 0);
    d.ram.write(DATA, &[0x55; 512]).unwrap();
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_OUT, 0, &[(DATA, 512)]),
        (1, VIRTIO_BLK_S_IOERR)
    );
    let seg = segment(0, 1, 0);
    let s = out_buf(&mut d, &seg);
    let h = out_buf(&mut d, &header(VIRTIO_BLK_T_WRITE_ZEROES, 0));
    let st = status_buf(&mut d);
    assert_eq!(submit(&mut d, &[h, s, st]).1, VIRTIO_BLK_S_IOERR);
    assert_eq!(m.bytes(0, 512), pattern(512, 1), "unchanged");
    assert!(m.log().is_empty());
    // Reads and flushes work.
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 0, &[(DATA, 512)]).1,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_FLUSH, 0, &[]).1,
        VIRTIO_BLK_S_OK
    );
    let mut got = vec![0u8; 512];
    d.ram.read(DATA, &mut got).unwrap();
    assert_eq!(got, pattern(512, 1));
    assert_eq!(block(&d).counters().invalid, 2);

    // A read-only file: the device and the file both refuse writes.
    let img = TempImage::new("ro", 4096);
    std::fs::write(&img.0, [7u8; 4096]).unwrap();
    let disk = FileDisk::open(&img.0, true).unwrap();
    assert!(disk.read_only());
    let mut d = driver(Box::new(disk), true, "ro", ALL);
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_OUT, 0, &[(DATA, 512)]).1,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(std::fs::read(&img.0).unwrap(), vec![7u8; 4096]);
}

#[test]
fn get_id_is_twenty_bytes_nul_padded() {
    let m = MemDisk::new(MIB);
    let mut d = driver(Box::new(m), false, "disk-7", ALL);
    let buf = DATA + 0x3000;
    d.ram.write(buf, &[0xff; 64]).unwrap();
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_GET_ID, 0, &[(buf, 20)]),
        (21, VIRTIO_BLK_S_OK)
    );
    let mut got = [0u8; 21];
    d.ram.read(buf, &mut got).unwrap();
    assert_eq!(&got[..6], b"disk-7");
    assert!(got[6..20].iter().all(|&b| b == 0), "NUL-padded");
    // A longer buffer gets 20 bytes; a shorter one what fits.
    d.ram.write(buf, &[0xff; 64]).unwrap();
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_GET_ID, 0, &[(buf, 64)]),
        (21, VIRTIO_BLK_S_OK)
    );
    assert_eq!(d.ram.read_le::<1>(buf + 20).unwrap()[0], 0xff);
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_GET_ID, 0, &[(buf, 3)]),
        (4, VIRTIO_BLK_S_OK)
    );
    // An ID of exactly 20 bytes has no NUL.
    let mut d = driver(
        Box::new(MemDisk::new(MIB)),
        false,
        "abcdefghijklmnopqrst",
        ALL,
    );
    request(&mut d, VIRTIO_BLK_T_GET_ID, 0, &[(buf, 20)]);
    let mut got = [0u8; 20];
    d.ram.read(buf, &mut got).unwrap();
    assert_eq!(&got, b"abcdefghijklmnopqrst");
    assert_eq!(block(&d).id(), "abcdefghijklmnopqrst");
    assert_eq!(block(&d).counters().get_ids, 1);
}

#[test]
fn unknown_and_unnegotiated_types_are_unsupported() {
    let (mut d, m) = mem_driver(MIB);
    // GET_LIFETIME, SECURE_ERASE, junk, and DISCARD (not offered here).
    for kind in [10, 14, 99, u32::MAX, VIRTIO_BLK_T_DISCARD] {
        let seg = segment(0, 1, 0);
        let s = out_buf(&mut d, &seg);
        let h = out_buf(&mut d, &header(kind, 0));
        let st = status_buf(&mut d);
        assert_eq!(
            submit(&mut d, &[h, s, st]),
            (1, VIRTIO_BLK_S_UNSUPP),
            "{kind}"
        );
    }
    assert_eq!(block(&d).counters().unsupported, 5);
    // A driver that did not take WRITE_ZEROES cannot use it.
    let mut d = driver(
        Box::new(m.clone()),
        false,
        "",
        ALL & !(1 << VIRTIO_BLK_F_WRITE_ZEROES),
    );
    let seg = segment(0, 1, 0);
    let s = out_buf(&mut d, &seg);
    let h = out_buf(&mut d, &header(VIRTIO_BLK_T_WRITE_ZEROES, 0));
    let st = status_buf(&mut d);
    assert_eq!(submit(&mut d, &[h, s, st]).1, VIRTIO_BLK_S_UNSUPP);
    assert!(m.log().is_empty());
}

fn segments_request(d: &mut TestDriver, kind: u32, segs: &[[u8; 16]]) -> (u32, u8) {
    let bytes: Vec<u8> = segs.iter().flatten().copied().collect();
    let h = out_buf(d, &header(kind, 0));
    let mut bufs = vec![h];
    if !bytes.is_empty() {
        bufs.push(out_buf(d, &bytes));
    }
    bufs.push(status_buf(d));
    submit(d, &bufs)
}

#[test]
fn write_zeroes_writes_zeros() {
    let m = MemDisk::new(MIB);
    m.inner().data.fill(0xaa);
    let mut d = driver(Box::new(m.clone()), false, "", ALL);
    // 200 KiB from sector 10, unmap allowed (it still writes zeros).
    let n = 400u32;
    assert_eq!(
        segments_request(
            &mut d,
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[segment(10, n, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)]
        ),
        (1, VIRTIO_BLK_S_OK)
    );
    assert!(m.bytes(10 * 512, n as usize * 512).iter().all(|&b| b == 0));
    assert!(m.bytes(9 * 512, 512).iter().all(|&b| b == 0xaa));
    assert!(m
        .bytes((10 + n as usize) * 512, 512)
        .iter()
        .all(|&b| b == 0xaa));
    assert!(m
        .log()
        .iter()
        .all(|op| matches!(op, Op::Write(_, l) if *l <= CHUNK)));
    let c = block(&d).counters();
    assert_eq!((c.write_zeroes, c.bytes_zeroed), (1, u64::from(n) * 512));
    // Refused: an unknown flag (UNSUPP), two segments, too many sectors,
    // past the end, no segment, a partial segment (IOERR).
    let cap = (MIB / 512) as u64;
    assert_eq!(
        segments_request(&mut d, VIRTIO_BLK_T_WRITE_ZEROES, &[segment(0, 1, 2)]).1,
        VIRTIO_BLK_S_UNSUPP
    );
    for segs in [
        vec![segment(0, 1, 0), segment(2, 1, 0)],
        vec![segment(0, MAX_WRITE_ZEROES_SECTORS + 1, 0)],
        vec![segment(cap - 1, 2, 0)],
        vec![segment(u64::MAX, 1, 0)],
        vec![],
    ] {
        assert_eq!(
            segments_request(&mut d, VIRTIO_BLK_T_WRITE_ZEROES, &segs).1,
            VIRTIO_BLK_S_IOERR,
            "{segs:?}"
        );
    }
    let h = out_buf(&mut d, &header(VIRTIO_BLK_T_WRITE_ZEROES, 0));
    let s = out_buf(&mut d, &segment(0, 1, 0)[..12]);
    let st = status_buf(&mut d);
    assert_eq!(submit(&mut d, &[h, s, st]).1, VIRTIO_BLK_S_IOERR);
    assert!(m.log().is_empty());
}

#[test]
fn discard_through_a_backend_that_can() {
    let m = MemDisk::with(MIB, true, false);
    m.inner().data.fill(0xaa);
    let mut d = driver(Box::new(m.clone()), false, "", ALL);
    assert_ne!(d.dev.acked_features() & 1 << VIRTIO_BLK_F_DISCARD, 0);
    assert_eq!(
        segments_request(
            &mut d,
            VIRTIO_BLK_T_DISCARD,
            &[segment(8, 8, 0), segment(100, 16, 0)]
        ),
        (1, VIRTIO_BLK_S_OK)
    );
    assert_eq!(
        m.log(),
        vec![Op::Discard(8 * 512, 4096), Op::Discard(100 * 512, 8192)]
    );
    // UNMAP is not a discard flag; ranges are all checked first.
    assert_eq!(
        segments_request(&mut d, VIRTIO_BLK_T_DISCARD, &[segment(0, 8, 1)]).1,
        VIRTIO_BLK_S_UNSUPP
    );
    let cap = (MIB / 512) as u64;
    assert_eq!(
        segments_request(
            &mut d,
            VIRTIO_BLK_T_DISCARD,
            &[segment(0, 8, 0), segment(cap, 1, 0)]
        )
        .1,
        VIRTIO_BLK_S_IOERR
    );
    let too_many = vec![segment(0, 1, 0); MAX_DISCARD_SEG as usize + 1];
    assert_eq!(
        segments_request(&mut d, VIRTIO_BLK_T_DISCARD, &too_many).1,
        VIRTIO_BLK_S_IOERR
    );
    assert!(m.log().is_empty());
    assert_eq!(block(&d).counters().discards, 1);
}

#[test]
fn state_round_trip() {
    let (mut d, m) = mem_driver(MIB);
    d.ram.write(DATA, &pattern(1024, 5)).unwrap();
    request(&mut d, VIRTIO_BLK_T_OUT, 4, &[(DATA, 1024)]);
    request(&mut d, VIRTIO_BLK_T_FLUSH, 0, &[]);
    // A request published and kicked but not served yet (as when the VM
    // paused between the kick and the device thread).
    let h = out_buf(&mut d, &header(VIRTIO_BLK_T_IN, 4));
    let st = status_buf(&mut d);
    let head = d.add(0, &[h, (DATA + 0x4000, 1024, true), st]);
    d.dev.write(0x050, 4, 0);
    let saved = d.dev.state();
    let json = serde_json::to_string(&saved).unwrap();
    let DeviceState::Block(b) = &saved.device else {
        panic!("a block state");
    };
    assert_eq!(b.counters.writes, 1);
    assert_eq!(b.capacity, (MIB / 512) as u64);

    // Restore into a fresh device over the same bytes and RAM (as after a
    // migration with shared storage).
    let ram2 = d.ram.clone();
    let dev = Block::new(Box::new(m.clone()), false, "mem0").unwrap();
    let mut fresh = VirtioMmio::new(Box::new(dev), ram2);
    fresh
        .restore(&serde_json::from_str(&json).unwrap())
        .unwrap();
    assert_eq!(fresh.state(), saved);
    let mut d2 = TestDriver::new(fresh);
    d2.queues = std::mem::take(&mut d.queues);
    d2.next_alloc = d.next_alloc;
    // The pending kick is served by the restored device.
    d2.process();
    assert_eq!(d2.used(0), vec![(u32::from(head), 1025)]);
    let mut got = vec![0u8; 1024];
    d2.ram.read(DATA + 0x4000, &mut got).unwrap();
    assert_eq!(got, pattern(1024, 5));
    assert_eq!(
        request(&mut d2, VIRTIO_BLK_T_IN, 0, &[(DATA, 512)]).1,
        VIRTIO_BLK_S_OK
    );
    let c = block(&d2).counters();
    assert_eq!((c.reads, c.writes, c.flushes, c.requests), (2, 1, 1, 4));

    // Another capacity, mode, ID or feature set is refused, and a
    // balloon's state too; the device is left as it was.
    let others: [(&str, Box<dyn BlockBackend>, bool, &str); 4] = [
        ("capacity", Box::new(MemDisk::new(2 * MIB)), false, "mem0"),
        ("mode", Box::new(MemDisk::new(MIB)), true, "mem0"),
        ("id", Box::new(MemDisk::new(MIB)), false, "mem1"),
        (
            "features",
            Box::new(MemDisk::with(MIB, true, false)),
            false,
            "mem0",
        ),
    ];
    for (what, backend, ro, id) in others {
        let r = ram();
        let mut other = VirtioMmio::new(Box::new(Block::new(backend, ro, id).unwrap()), r);
        let before = other.state();
        assert!(other.restore(&saved).is_err(), "{what}");
        assert_eq!(other.state(), before, "{what}");
    }
    let r = ram();
    let balloon = crate::Balloon::new(crate::BalloonFeatures::default(), &r);
    let mut bs = VirtioMmio::new(Box::new(balloon), r).state();
    bs.queues.truncate(1);
    bs.queues[0].max_size = QUEUE_SIZE;
    let r = ram();
    let mut other = VirtioMmio::new(
        Box::new(Block::new(Box::new(MemDisk::new(MIB)), false, "mem0").unwrap()),
        r,
    );
    let e = other.restore(&bs).unwrap_err();
    assert!(e.to_string().contains("virtio-balloon"), "{e}");
}

#[test]
fn driver_reset_and_reprobe() {
    let (mut d, _m) = mem_driver(MIB);
    d.w32(0x070, 0);
    assert_eq!(d.status(), 0);
    assert_eq!(block(&d).saved().acked_features, 0);
    d.queues.clear();
    d.probe(ALL, 1);
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 0, &[(DATA, 512)]).1,
        VIRTIO_BLK_S_OK
    );
}

#[test]
fn released_backend_holds_requests_until_reacquired() {
    let img = TempImage::new("release", 64 << 10);
    let disk = FileDisk::open(&img.0, false).unwrap();
    let mut d = driver(Box::new(disk), false, "rel", ALL);
    d.ram.write(DATA, &pattern(512, 2)).unwrap();
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_OUT, 0, &[(DATA, 512)]).1,
        VIRTIO_BLK_S_OK
    );
    // Locked while attached.
    assert!(matches!(
        FileDisk::open(&img.0, false),
        Err(DiskOpenError::Locked { .. })
    ));
    block_mut(&mut d).release_backend().unwrap();
    assert!(block(&d).is_released());
    // The lock is gone: another VMM could open it now.
    let other = FileDisk::open(&img.0, false).expect("released image opens");
    assert_eq!(std::fs::read(&img.0).unwrap()[..512], pattern(512, 2)[..]);
    // A request while released waits in the queue.
    let h = out_buf(&mut d, &header(VIRTIO_BLK_T_IN, 0));
    let st = status_buf(&mut d);
    let head = d.add(0, &[h, (DATA + 0x1000, 512, true), st]);
    d.kick(0);
    assert!(d.used(0).is_empty());
    assert!(block(&d).saved().deferred);
    // Taking it back fails while someone else holds the lock.
    let e = block_mut(&mut d).reacquire_backend().unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    assert!(block(&d).is_released());
    drop(other);
    block_mut(&mut d).reacquire_backend().unwrap();
    d.process();
    assert_eq!(d.used(0), vec![(u32::from(head), 513)]);
    let mut got = vec![0u8; 512];
    d.ram.read(DATA + 0x1000, &mut got).unwrap();
    assert_eq!(got, pattern(512, 2));
    assert!(!block(&d).saved().deferred);
}

#[test]
fn file_disks_lock_and_check_size() {
    let img = TempImage::new("locks", 8192);
    let rw = FileDisk::open(&img.0, false).unwrap();
    for ro in [false, true] {
        let e = FileDisk::open(&img.0, ro).unwrap_err();
        assert!(matches!(e, DiskOpenError::Locked { .. }), "{e}");
        assert!(e.to_string().contains(&img.0.display().to_string()), "{e}");
    }
    drop(rw);
    let a = FileDisk::open(&img.0, true).unwrap();
    let b = FileDisk::open(&img.0, true).expect("shared locks share");
    assert!(matches!(
        FileDisk::open(&img.0, false),
        Err(DiskOpenError::Locked { .. })
    ));
    drop((a, b));
    for (name, len) in [("empty", 0u64), ("odd", 513)] {
        let t = TempImage::new(name, len);
        let e = FileDisk::open(&t.0, false).unwrap_err();
        assert!(
            matches!(e, DiskOpenError::Size { len: l, .. } if l == len),
            "{e}"
        );
    }
    let e = FileDisk::open(temp_path("missing"), false).unwrap_err();
    assert!(matches!(e, DiskOpenError::Open { .. }), "{e}");
    let e = FileDisk::open(std::env::temp_dir(), true).unwrap_err();
    assert!(matches!(e, DiskOpenError::NotADisk { .. }), "{e}");
    // Reads past the end fail as errors, never panics.
    let disk = FileDisk::open(&img.0, false).unwrap();
    let mut buf = [0u8; 512];
    assert!(disk.read_at(&mut buf, 8192).is_err());
}

/// xorshift64*: deterministic junk.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.next() as usize % from.len()]
    }
}

#[test]
fn random_requests_never_panic_or_stray() {
    // The backend asserts every access lies inside the disk (and that a
    // read-only one is never written): any stray byte fails the test.
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    const SECTORS: u64 = 64;
    let scratch = RAM_BASE + (2 << 20);
    for round in 0..24 {
        let readonly = round % 3 == 2;
        let m = MemDisk::with(SECTORS as usize * 512, round % 2 == 0, readonly);
        let mut d = driver(Box::new(m.clone()), readonly, "fuzz", ALL);
        let mut probes = 0;
        for _ in 0..1_500 {
            let r = rng.next();
            match r % 10 {
                0..=4 => {
                    // A request published properly: half of them well
                    // framed with plausible sectors (so real I/O happens,
                    // some of it across the end of the disk), the rest of
                    // random framing.
                    let sane = r & 1 << 42 != 0;
                    let kind = if sane {
                        rng.pick(&[0u32, 0, 0, 1, 1, 1, 4, 8, 11, 13])
                    } else {
                        rng.pick(&[0u32, 0, 1, 1, 4, 8, 11, 13, 10, 99, u32::MAX])
                    };
                    let any = rng.next() % (2 * SECTORS);
                    let sector = if sane {
                        rng.next() % (SECTORS + 4)
                    } else {
                        rng.pick(&[
                            0,
                            1,
                            SECTORS - 1,
                            SECTORS,
                            SECTORS + 1,
                            u64::MAX,
                            u64::MAX / 512,
                            any,
                        ])
                    };
                    let hdr = scratch + (r >> 8) % 64 * 64;
                    let segmented = kind == 11 || kind == 13 || (!sane && r & 1 << 40 != 0);
                    let mut h = header(kind, sector);
                    if segmented {
                        // Discard / write-zeroes segments after the header.
                        h = header(kind, 0);
                        let seg = if sane {
                            segment(
                                rng.next() % SECTORS,
                                1 + rng.next() as u32 % 8,
                                rng.pick(&[0, 0, 1]),
                            )
                        } else {
                            segment(
                                rng.pick(&[0, SECTORS - 2, SECTORS, u64::MAX]),
                                rng.pick(&[0, 1, 2, 9, u32::MAX]),
                                rng.pick(&[0, 0, 1, 2]),
                            )
                        };
                        d.ram.write(hdr + 16, &seg).unwrap();
                    }
                    d.ram.write(hdr, &h).unwrap();
                    let n = if sane {
                        match kind {
                            4 => 2,
                            11 | 13 => 3,
                            _ => 3 + (r >> 16) as u16 % 4,
                        }
                    } else {
                        1 + (r >> 16) as u16 % 6
                    };
                    let start = (r >> 24) as u16;
                    for k in 0..n {
                        let i = start.wrapping_add(k) % QUEUE_SIZE;
                        let next = start.wrapping_add(k + 1) % QUEUE_SIZE;
                        let last = k + 1 == n;
                        let (addr, len, mut write) = if k == 0 {
                            let len = if sane {
                                16
                            } else {
                                rng.pick(&[16, 16, 32, 8, 0, 15])
                            };
                            (hdr, len, false)
                        } else if last {
                            let at = scratch + 0x8000 + rng.next() % 512;
                            let len = if sane {
                                1
                            } else {
                                rng.pick(&[1, 1, 1, 0, 2, 513])
                            };
                            (at, len, true)
                        } else if sane && segmented {
                            (hdr + 16, 16, false)
                        } else if sane {
                            let at = DATA + rng.next() % 64 * 512;
                            (
                                at,
                                512 * (1 + rng.next() as u32 % 4),
                                kind == 0 || kind == 8,
                            )
                        } else {
                            let (in_ram, high) = (rng.next(), rng.next());
                            let addr = rng.pick(&[
                                RAM_BASE + in_ram % (RAM_SIZE as u64),
                                DATA,
                                RAM_BASE - 512,
                                u64::MAX - high % 4096,
                                RAM_BASE + RAM_SIZE as u64 - 512,
                            ]);
                            let any = rng.next() as u32 % 70_000;
                            let len = rng.pick(&[512, 1024, 100, 4096, u32::MAX, any]);
                            (addr, len, kind == 0 || kind == 8)
                        };
                        if !sane && rng.next().is_multiple_of(8) {
                            write = !write;
                        }
                        let flags = if write { VIRTQ_DESC_F_WRITE } else { 0 }
                            | if last { 0 } else { VIRTQ_DESC_F_NEXT };
                        // Stay out of the rings, which live in the driver's
                        // area: a write there would only break the queue.
                        let addr = if write
                            && (crate::virtio::testdrv::DRIVER_AREA..RAM_BASE + RAM_SIZE as u64)
                                .contains(&addr)
                        {
                            DATA
                        } else {
                            addr
                        };
                        d.write_desc(0, i, addr, len, flags, next);
                    }
                    d.publish(0, start % QUEUE_SIZE);
                    if r & 1 << 41 != 0 {
                        d.kick(0);
                    }
                }
                5 => d.kick(0),
                6 => d.process(),
                7 => {
                    let off = (r >> 8) % 0x100;
                    d.dev.write(off, 1 << ((r >> 20) % 4), rng.next());
                    d.dev.read(off, 1 << ((r >> 24) % 4));
                }
                8 => {
                    // Junk in the rings.
                    let q = &d.dev.queues()[0];
                    let base =
                        [q.desc_table(), q.avail_ring(), q.used_ring()][(r >> 16) as usize % 3];
                    let _ = d.ram.write(
                        base.wrapping_add((r >> 20) % 4096),
                        &rng.next().to_le_bytes(),
                    );
                }
                _ => {
                    let _ = d.used(0);
                }
            }
            let st = d.status();
            let dead = st & status::DEVICE_NEEDS_RESET != 0
                || st & status::DRIVER_OK == 0
                || !d.dev.queues()[0].ready();
            if dead && probes < 20 {
                probes += 1;
                d.queues.clear();
                d.probe(ALL, 1);
            }
        }
        if readonly {
            assert!(
                m.log()
                    .iter()
                    .all(|op| matches!(op, Op::Read(..) | Op::Flush)),
                "a read-only disk was written"
            );
        }
        // The state still round-trips whatever happened.
        let s = d.dev.state();
        let dev = Block::new(Box::new(m.clone()), readonly, "fuzz").unwrap();
        let mut fresh = VirtioMmio::new(Box::new(dev), d.ram.clone());
        fresh.restore(&s).unwrap();
        assert_eq!(fresh.state(), s);
        assert!(block(&d).counters().requests > 0);
    }
}

#[test]
fn held_writes_reach_the_image_only_when_their_checkpoint_is_safe() {
    let (mut d, m) = mem_driver(MIB);
    let (a, b, c) = (pattern(1024, 1), pattern(512, 2), pattern(512, 3));
    let hold = block_mut(&mut d).hold_writes();
    let write = |d: &mut TestDriver, sector, data: &[u8]| {
        d.ram.write(DATA, data).unwrap();
        request(d, VIRTIO_BLK_T_OUT, sector, &[(DATA, data.len() as u32)]).1
    };
    let read = |d: &mut TestDriver, sector, len: usize| {
        assert_eq!(
            request(d, VIRTIO_BLK_T_IN, sector, &[(DATA, len as u32)]).1,
            VIRTIO_BLK_S_OK
        );
        let mut got = vec![0u8; len];
        d.ram.read(DATA, &mut got).unwrap();
        got
    };
    // Epoch 0: two sectors, then a flush, which completes at once.
    assert_eq!(write(&mut d, 4, &a), VIRTIO_BLK_S_OK);
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_FLUSH, 0, &[]).1,
        VIRTIO_BLK_S_OK
    );
    hold.mark(1);
    // Epoch 1 overwrites the second of them.
    assert_eq!(write(&mut d, 5, &b), VIRTIO_BLK_S_OK);
    hold.mark(2);
    assert_eq!(write(&mut d, 6, &c), VIRTIO_BLK_S_OK);
    assert!(
        m.log().iter().all(|op| matches!(op, Op::Read(..))),
        "nothing written or flushed while held"
    );
    assert_eq!(
        m.bytes(4 * 512, 1536),
        vec![0; 1536],
        "the image is untouched"
    );
    // Reads see the held writes, the later over the earlier.
    let mut want = a[..512].to_vec();
    want.extend_from_slice(&b);
    want.extend_from_slice(&c);
    assert_eq!(read(&mut d, 4, 1536), want);
    assert_eq!(m.log(), vec![Op::Read(2048, 1536)]);
    // Checkpoint 1 confirmed: epoch 0 goes, in order, then a flush.
    hold.release(Some(1)).unwrap();
    assert_eq!(m.log(), vec![Op::Write(2048, 1024), Op::Flush]);
    assert_eq!(m.bytes(4 * 512, 1024), a);
    assert_eq!(read(&mut d, 4, 1536), want, "still the guest's view");
    m.log();
    hold.release(Some(1)).unwrap();
    assert!(m.log().is_empty(), "released once");
    hold.release(Some(3)).unwrap();
    assert_eq!(
        m.log(),
        vec![Op::Write(2560, 512), Op::Write(3072, 512), Op::Flush]
    );
    assert_eq!(m.bytes(4 * 512, 1536), want);
    let s = hold.stats();
    assert_eq!((s.released, s.waiting, s.release_errors), (3, 0, 0));
    // The end of the hold: writes and flushes go straight through again.
    hold.release(None).unwrap();
    assert_eq!(write(&mut d, 7, &a[..512]), VIRTIO_BLK_S_OK);
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_FLUSH, 0, &[]).1,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(m.log(), vec![Op::Write(3584, 512), Op::Flush]);
    // A disk whose writes are held cannot be let go (nothing may be lost).
    let hold = block_mut(&mut d).hold_writes();
    assert_eq!(write(&mut d, 8, &b), VIRTIO_BLK_S_OK);
    assert!(block_mut(&mut d).release_backend().is_err());
    hold.release(None).unwrap();
    block_mut(&mut d).release_backend().unwrap();
}

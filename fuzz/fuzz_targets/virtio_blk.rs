//! virtio-blk under a hostile driver (see `godwit_fuzz::virtio`): request
//! headers (type, sector), data buffers, status bytes, discard and
//! write-zeroes segments from guest-controlled rings, on a 64 KiB image in
//! a temporary file (`FileDisk`, as `godwit run --drive` uses). A wrapper
//! checks that the device never reaches outside the disk and never writes
//! a read-only one. Host actions: release and reacquire the image (a
//! migration's switch).
#![no_main]

use godwit_devices::{Block, BlockBackend, FileDisk, VirtioDevice, VirtioMmio};
use godwit_fuzz::input::Input;
use godwit_fuzz::virtio::{self, Rig};
use godwit_memory::GuestRam;
use libfuzzer_sys::fuzz_target;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

const DISK: u64 = 64 << 10;

/// The image, created once per process (removed by whoever runs the
/// fuzzer: `docs/fuzz.md`).
fn image() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("godwit-fuzz-blk-{}.img", std::process::id()));
        std::fs::write(&p, vec![0x5a; DISK as usize]).expect("a temporary disk image");
        p
    })
}

/// `FileDisk` with the device's obligations checked.
struct Checked {
    disk: FileDisk,
    readonly: bool,
    discard: bool,
}

impl Checked {
    fn inside(&self, what: &str, off: u64, len: u64) {
        assert!(
            off.checked_add(len).is_some_and(|end| end <= DISK),
            "the device {what} {len} bytes at {off}, outside the {DISK}-byte disk"
        );
    }
}

impl BlockBackend for Checked {
    fn len(&self) -> u64 {
        self.disk.len()
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.inside("read", off, buf.len() as u64);
        self.disk.read_at(buf, off)
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        assert!(!self.readonly, "the device wrote a read-only disk");
        self.inside("wrote", off, buf.len() as u64);
        self.disk.write_at(buf, off)
    }
    fn flush(&self) -> io::Result<()> {
        self.disk.flush()
    }
    fn discard(&self, off: u64, len: u64) -> io::Result<()> {
        assert!(self.discard, "discard without can_discard");
        assert!(!self.readonly, "the device discarded on a read-only disk");
        self.inside("discarded", off, len);
        Ok(())
    }
    fn can_discard(&self) -> bool {
        self.discard
    }
    fn read_only(&self) -> bool {
        self.readonly
    }
    fn release(&mut self) -> io::Result<()> {
        self.disk.release()
    }
    fn reacquire(&mut self) -> io::Result<()> {
        self.disk.reacquire()
    }
}

struct BlkRig;

impl Rig for BlkRig {
    fn device(&mut self, _: &Arc<GuestRam>, flags: u8) -> Box<dyn VirtioDevice> {
        let readonly = flags & 1 != 0;
        let disk = FileDisk::open(image(), readonly).expect("the temporary image opens");
        let backend = Checked {
            disk,
            readonly,
            discard: flags & 2 != 0,
        };
        Box::new(Block::new(Box::new(backend), readonly, "fuzz").expect("a disk"))
    }

    fn host(&mut self, dev: &mut VirtioMmio, what: u8, _: u32, _: &mut Input) {
        let Some(b) = dev.device_as_mut::<Block>() else {
            return;
        };
        match what % 3 {
            0 => {
                let _ = b.release_backend();
            }
            1 => {
                let _ = b.reacquire_backend();
            }
            _ => {
                let _ = (b.counters(), b.is_released(), b.capacity());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| virtio::run(&mut BlkRig, data));

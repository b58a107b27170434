//! Snapshots: the machine state and guest RAM in one file.
//!
//! Layout (all integers little-endian):
//! ```text
//! "GODWIT-SNAPSHOT\n"
//! one line of JSON: {"format":1,"godwit":"…","ram_bytes":…,"pages_stored":…}
//! u64 state length, state bytes (VmState::encode: version + postcard)
//! u64 word count, the stored-page bitmap (one bit per 4 KiB page)
//! 4096 bytes for every page whose bit is set, in page order
//! ```
//! Pages the guest reported free, and pages that are all zero, are not
//! stored: a restored VM starts from zeroed RAM.

use crate::state::{StateDecodeError, VmState};
use crate::vm::Machine;
use godwit_memory::{is_zero_page, AtomicBitmap, GuestRam, MemoryError, PAGE_SIZE};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

const MAGIC: &[u8] = b"GODWIT-SNAPSHOT\n";
/// File format version.
pub const FORMAT: u64 = 1;

/// Errors writing or reading a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("{path}: not a Godwit snapshot ({why})")]
    Format { path: String, why: String },
    #[error("{path}: {err}")]
    State { path: String, err: StateDecodeError },
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// What a snapshot held, read back.
pub struct Snapshot {
    pub state: VmState,
    /// The pages stored in the file (bitmap words) and their bytes, in order.
    stored: Vec<u64>,
    pages: Vec<u8>,
}

/// What [`save`] wrote.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct SaveReport {
    pub pages_stored: u64,
    pub pages_free: u64,
    pub pages_zero: u64,
    pub bytes: u64,
}

/// Creates a temporary file next to `path`, exclusively (never an existing
/// file), for the snapshot to be written into before it replaces `path`.
/// Refuses a `path` that exists and is not a regular file (a device, a
/// directory, a socket): the rename would replace it.
fn temp_file_for(path: &Path) -> std::io::Result<(std::fs::File, std::path::PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => {
            return Err(std::io::Error::other(
                "exists and is not a regular file; refusing to replace it",
            ))
        }
        _ => {}
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".into());
    for n in 0..100u32 {
        let tmp = dir.join(format!(".{name}.{}.{n}.partial", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(
        "cannot create a temporary file next to it",
    ))
}

/// Writes the VM to `path`. The VM must be paused ([`crate::VmHandle::pause`])
/// so that its devices are drained; `m` is it with every vCPU stopped. The
/// file appears complete or not at all: it is written to a temporary file
/// in the same folder, synced, then renamed; on any failure the temporary
/// file is removed.
pub fn save(m: &mut Machine, path: &Path) -> Result<SaveReport, SnapshotError> {
    let io = |err| SnapshotError::Io {
        path: path.display().to_string(),
        err,
    };
    let state = m.save_state().encode();
    let ram = m.ram().clone();
    let free = ram.free_map();
    let stored = AtomicBitmap::new(ram.pages());
    let (mut pages_free, mut pages_zero) = (0, 0);
    let mut buf = Box::new([0u8; PAGE_SIZE]);
    for p in 0..ram.pages() {
        if free.get(p) {
            pages_free += 1;
            continue;
        }
        ram.read_page(p, &mut buf)?;
        if is_zero_page(&buf) {
            pages_zero += 1;
        } else {
            stored.set(p);
        }
    }
    let words = stored.snapshot();
    let pages_stored = stored.count() as u64;
    let (file, tmp) = temp_file_for(path).map_err(io)?;
    let written = (|| -> Result<(), SnapshotError> {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let header = serde_json::json!({
            "format": FORMAT,
            "godwit": env!("CARGO_PKG_VERSION"),
            "ram_bytes": ram.size(),
            "pages_stored": pages_stored,
        });
        w.write_all(MAGIC).map_err(io)?;
        writeln!(w, "{header}").map_err(io)?;
        w.write_all(&(state.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.write_all(&state).map_err(io)?;
        w.write_all(&(words.len() as u64).to_le_bytes())
            .map_err(io)?;
        for word in &words {
            w.write_all(&word.to_le_bytes()).map_err(io)?;
        }
        for p in AtomicBitmap::iter_set(&words) {
            ram.read_page(p, &mut buf)?;
            w.write_all(&buf[..]).map_err(io)?;
        }
        w.flush().map_err(io)?;
        w.get_ref().sync_all().map_err(io)?;
        drop(w);
        std::fs::rename(&tmp, path).map_err(io)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(SaveReport {
        pages_stored,
        pages_free,
        pages_zero,
        bytes,
    })
}

/// Reads a snapshot file.
pub fn load(path: &Path) -> Result<Snapshot, SnapshotError> {
    let p = path.display().to_string();
    let io = |err| SnapshotError::Io {
        path: p.clone(),
        err,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    read_from(BufReader::with_capacity(1 << 20, file), file_len, &p)
}

/// Reads a snapshot held in memory, as [`load`] reads a file (for the
/// fuzz targets in `fuzz/`).
#[doc(hidden)]
pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    read_from(bytes, bytes.len() as u64, "<memory>")
}

/// Reads a snapshot of `len` bytes from `r`. Every length in it is
/// checked against the bytes that are left before anything is allocated
/// by it: the file is outside input.
fn read_from(mut r: impl BufRead, len: u64, p: &str) -> Result<Snapshot, SnapshotError> {
    let bad = |why: &str| SnapshotError::Format {
        path: p.to_string(),
        why: why.to_string(),
    };
    let mut magic = [0u8; 16];
    r.read_exact(&mut magic).map_err(|_| bad("too short"))?;
    if magic != MAGIC {
        return Err(bad("wrong magic"));
    }
    let mut header = String::new();
    let header_len = (&mut r)
        .take(4096)
        .read_line(&mut header)
        .map_err(|_| bad("unreadable header"))?;
    let header: serde_json::Value =
        serde_json::from_str(&header).map_err(|_| bad("header is not JSON"))?;
    if header["format"].as_u64() != Some(FORMAT) {
        return Err(bad(&format!(
            "format {} (this Godwit reads {FORMAT})",
            header["format"]
        )));
    }
    // Bytes of the file not read yet.
    let mut left = len.saturating_sub(MAGIC.len() as u64 + header_len as u64);
    let read_u64 = |r: &mut dyn BufRead, left: &mut u64| -> Result<u64, SnapshotError> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).map_err(|_| bad("truncated"))?;
        *left = left.saturating_sub(8);
        Ok(u64::from_le_bytes(b))
    };
    let state_len = read_u64(&mut r, &mut left)?;
    if state_len > left {
        return Err(bad("state length beyond the end of the file"));
    }
    left -= state_len;
    let mut state = vec![0u8; state_len as usize];
    r.read_exact(&mut state)
        .map_err(|_| bad("truncated state"))?;
    let state = VmState::decode(&state).map_err(|err| SnapshotError::State {
        path: p.to_string(),
        err,
    })?;
    let words = read_u64(&mut r, &mut left)?;
    // The state's RAM size is as much outside input as the rest: the
    // bitmap it implies must be in the file before it is allocated.
    if words.checked_mul(8).is_none_or(|b| b > left) {
        return Err(bad("page bitmap beyond the end of the file"));
    }
    if words != state.board.ram_bytes.div_ceil(PAGE_SIZE as u64 * 64) {
        return Err(bad("page bitmap does not match the RAM size"));
    }
    let mut stored = Vec::with_capacity(words as usize);
    for _ in 0..words {
        stored.push(read_u64(&mut r, &mut left)?);
    }
    let count: u64 = stored.iter().map(|w| u64::from(w.count_ones())).sum();
    let page_bytes = count.checked_mul(PAGE_SIZE as u64);
    let Some(page_bytes) = page_bytes.filter(|&b| b <= left) else {
        return Err(bad("more pages than the file holds"));
    };
    let mut pages = vec![0u8; page_bytes as usize];
    r.read_exact(&mut pages)
        .map_err(|_| bad("truncated pages"))?;
    Ok(Snapshot {
        state,
        stored,
        pages,
    })
}

impl Snapshot {
    /// The bytes of guest page `page` (index from the start of RAM) as
    /// stored, or `None` for a page the file does not hold (free or zero).
    pub fn page(&self, page: usize) -> Option<&[u8]> {
        let word = *self.stored.get(page / 64)?;
        if word & (1 << (page % 64)) == 0 {
            return None;
        }
        let below = |w: u64| w.count_ones() as usize;
        let n = self.stored[..page / 64]
            .iter()
            .map(|&w| below(w))
            .sum::<usize>()
            + below(word & ((1u64 << (page % 64)) - 1));
        self.pages.get(n * PAGE_SIZE..(n + 1) * PAGE_SIZE)
    }

    /// Copies the stored pages into `ram` (which must be fresh, all zero).
    pub fn fill_ram(&self, ram: &GuestRam) -> Result<(), godwit_memory::MemoryError> {
        for (n, p) in AtomicBitmap::iter_set(&self.stored).enumerate() {
            let gpa = ram.base() + (p * PAGE_SIZE) as u64;
            ram.write(gpa, &self.pages[n * PAGE_SIZE..(n + 1) * PAGE_SIZE])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::BoardConfig;
    use godwit_devices::{Clint, Plic, Uart16550};
    use godwit_hart::GuestClock;

    fn tiny_state(ram_bytes: u64) -> VmState {
        VmState {
            board: BoardConfig {
                harts: 1,
                ram_bytes,
                devices: vec![],
            },
            harts: vec![],
            clock: GuestClock::starting_now().save(),
            uart: Uart16550::new(Box::new(std::io::sink())).state(),
            plic: Plic::new(1, 2).state(),
            clint: Clint::new(1, Box::new(|| 0)).state(),
            devices: vec![],
            free_pages: vec![],
            cmdline: String::new(),
        }
    }

    /// A snapshot of `state`: the bitmap words `words` and `pages` pages.
    fn file(state: &VmState, words: &[u64], pages: usize) -> Vec<u8> {
        let state = state.encode();
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(b"{\"format\":1}\n");
        f.extend_from_slice(&(state.len() as u64).to_le_bytes());
        f.extend_from_slice(&state);
        f.extend_from_slice(&(words.len() as u64).to_le_bytes());
        for w in words {
            f.extend_from_slice(&w.to_le_bytes());
        }
        f.extend(std::iter::repeat_n(7u8, pages * PAGE_SIZE));
        f
    }

    #[test]
    fn decodes_what_it_should() {
        let s = tiny_state(1 << 20);
        let snap = decode(&file(&s, &[0, 0, 0, 0b101], 2)).unwrap();
        assert_eq!(snap.state.board.ram_bytes, 1 << 20);
        let ram = GuestRam::new(0x8000_0000, 1 << 20).unwrap();
        snap.fill_ram(&ram).unwrap();
        assert_eq!(ram.read_le::<1>(0x8000_0000 + 194 * 4096).unwrap(), [7]);
        // Truncated anywhere: an error, never a panic.
        let f = file(&s, &[0, 0, 0, 0b101], 2);
        for cut in (0..f.len()).step_by(97) {
            assert!(decode(&f[..cut]).is_err(), "{cut}");
        }
    }

    #[test]
    fn page_finds_each_stored_page_by_its_index() {
        let s = tiny_state(1 << 20);
        let mut f = file(&s, &[1 << 63, 0, 0b101, 0], 0);
        for fill in [1u8, 2, 3] {
            f.extend(std::iter::repeat_n(fill, PAGE_SIZE));
        }
        let snap = decode(&f).unwrap();
        let first = |p: usize| snap.page(p).map(|b| b[0]);
        assert_eq!(first(63), Some(1));
        assert_eq!(first(128), Some(2));
        assert_eq!(first(130), Some(3));
        assert_eq!(first(129), None, "not stored");
        assert_eq!(first(0), None);
        assert_eq!(first(1 << 30), None, "beyond RAM");
    }

    /// Found by fuzzing (issue 18 §4; target `snapshot_file`): the page
    /// bitmap was allocated with as many words as the state's claimed RAM
    /// size implies before anything checked the file holds them. A state
    /// claiming 16 EiB of RAM made the reader reserve 512 TiB (the
    /// process aborted); the bitmap is now checked against the file first.
    #[test]
    fn bitmap_is_checked_against_the_file_before_it_is_allocated() {
        let huge = u64::MAX - (PAGE_SIZE as u64 - 1);
        let words = huge.div_ceil(PAGE_SIZE as u64 * 64);
        let mut f = file(&tiny_state(huge), &[], 0);
        let at = f.len() - 8;
        f[at..].copy_from_slice(&words.to_le_bytes());
        let e = decode(&f).err().expect("refused").to_string();
        assert!(e.contains("bitmap beyond the end of the file"), "{e}");
        // A bitmap of the right size for a claimed 1 TiB of RAM, of which
        // the file holds four words.
        let mut f = file(&tiny_state(1 << 40), &[1; 4], 0);
        let at = f.len() - 5 * 8;
        f[at..at + 8].copy_from_slice(&(1u64 << 22).to_le_bytes());
        let e = decode(&f).err().expect("refused").to_string();
        assert!(e.contains("bitmap beyond the end of the file"), "{e}");
    }
}

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
    let bad = |why: &str| SnapshotError::Format {
        path: p.clone(),
        why: why.to_string(),
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 16];
    r.read_exact(&mut magic).map_err(|_| bad("too short"))?;
    if magic != MAGIC {
        return Err(bad("wrong magic"));
    }
    let mut header = String::new();
    (&mut r)
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
    let read_u64 = |r: &mut BufReader<std::fs::File>| -> Result<u64, SnapshotError> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).map_err(|_| bad("truncated"))?;
        Ok(u64::from_le_bytes(b))
    };
    let state_len = read_u64(&mut r)?;
    if state_len > file_len {
        return Err(bad("state length beyond the end of the file"));
    }
    let mut state = vec![0u8; state_len as usize];
    r.read_exact(&mut state)
        .map_err(|_| bad("truncated state"))?;
    let state = VmState::decode(&state).map_err(|err| SnapshotError::State {
        path: p.clone(),
        err,
    })?;
    let words = read_u64(&mut r)?;
    if words != state.board.ram_bytes.div_ceil(PAGE_SIZE as u64 * 64) {
        return Err(bad("page bitmap does not match the RAM size"));
    }
    let mut stored = Vec::with_capacity(words as usize);
    for _ in 0..words {
        stored.push(read_u64(&mut r)?);
    }
    let count: u64 = stored.iter().map(|w| w.count_ones() as u64).sum();
    if count * PAGE_SIZE as u64 > file_len {
        return Err(bad("more pages than the file holds"));
    }
    let mut pages = vec![0u8; (count as usize) * PAGE_SIZE];
    r.read_exact(&mut pages)
        .map_err(|_| bad("truncated pages"))?;
    Ok(Snapshot {
        state,
        stored,
        pages,
    })
}

impl Snapshot {
    /// Copies the stored pages into `ram` (which must be fresh, all zero).
    pub fn fill_ram(&self, ram: &GuestRam) -> Result<(), godwit_memory::MemoryError> {
        for (n, p) in AtomicBitmap::iter_set(&self.stored).enumerate() {
            let gpa = ram.base() + (p * PAGE_SIZE) as u64;
            ram.write(gpa, &self.pages[n * PAGE_SIZE..(n + 1) * PAGE_SIZE])?;
        }
        Ok(())
    }
}

//! One guest RAM region backed by an anonymous host mapping.

use crate::AtomicBitmap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

/// Most harts whose translated code guest RAM keeps track of.
pub const MAX_CODE_HARTS: usize = 8;

/// log2 of the guest page size tracked by the dirty log and the free map.
pub const PAGE_SHIFT: u32 = 12;
/// Guest page size tracked by the dirty log and the free map.
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;

/// Errors from guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is zero or not a multiple of the page size.
    #[error("guest RAM size {0} bytes is not a positive multiple of 4 KiB")]
    BadSize(usize),
    /// The host refused the mapping.
    #[error("cannot map {size} bytes of guest RAM: {err}")]
    Map { size: usize, err: std::io::Error },
    /// A guest-physical range falls outside RAM.
    #[error("guest address range {gpa:#x}+{len:#x} is outside RAM")]
    OutOfRange { gpa: u64, len: usize },
    /// `madvise` failed.
    #[error("madvise on guest RAM failed: {0}")]
    Madvise(std::io::Error),
}

/// What [`GuestRam::mark_code`] found and did.
#[derive(Clone, Copy, Debug)]
pub struct CodeMark {
    /// The page's marks before (bit per hart).
    pub before: u8,
    /// The mark epoch after the call.
    pub epoch: u64,
    /// The call advanced the epoch (from `epoch - 1`).
    pub advanced: bool,
}

/// Guest RAM: `size` bytes at guest-physical `base`, one host mapping.
pub struct GuestRam {
    base: u64,
    size: usize,
    host: *mut u8,
    dirty: AtomicBitmap,
    free: AtomicBitmap,
    logging: AtomicBool,
    discard_epoch: AtomicU64,
    /// Per page: which harts hold translated code from it (bit per hart).
    code: Box<[AtomicU8]>,
    code_epoch: AtomicU64,
    /// Per hart: pages another hart stored to whose blocks it must drop.
    code_stale: [Mutex<Vec<usize>>; MAX_CODE_HARTS],
    /// Bit per hart: its `code_stale` list is not empty.
    code_stale_any: AtomicU8,
    /// Advances each time a page with no code mark gets one (see
    /// [`mark_code`](Self::mark_code)).
    mark_epoch: AtomicU64,
    /// Per hart: the [`mark_epoch`](Self::mark_epoch) its cached write
    /// translations are no older than; `u64::MAX` when it caches none.
    write_seen: [AtomicU64; MAX_CODE_HARTS],
    /// Bit per hart that keeps translated code (see
    /// [`register_code_hart`](Self::register_code_hart)).
    code_harts: AtomicU8,
}

// SAFETY: the mapping lives as long as the struct and is only reached through
// raw pointers whose users (vCPU, devices, migration) accept the same
// concurrency as real hardware memory: racy bytes, never a dangling pointer.
unsafe impl Send for GuestRam {}
// SAFETY: see above; all bookkeeping is atomic.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// Maps `size` bytes of zeroed guest RAM at guest-physical `base`.
    pub fn new(base: u64, size: usize) -> Result<Self, MemoryError> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) {
            return Err(MemoryError::BadSize(size));
        }
        // SAFETY: an anonymous private mapping with no address hint; the
        // result is checked for MAP_FAILED before use.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if host == libc::MAP_FAILED {
            return Err(MemoryError::Map {
                size,
                err: std::io::Error::last_os_error(),
            });
        }
        let pages = size / PAGE_SIZE;
        Ok(GuestRam {
            base,
            size,
            host: host.cast(),
            dirty: AtomicBitmap::new(pages),
            free: AtomicBitmap::new(pages),
            logging: AtomicBool::new(false),
            discard_epoch: AtomicU64::new(0),
            code: (0..pages).map(|_| AtomicU8::new(0)).collect(),
            code_epoch: AtomicU64::new(0),
            code_stale: Default::default(),
            code_stale_any: AtomicU8::new(0),
            mark_epoch: AtomicU64::new(0),
            write_seen: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
            code_harts: AtomicU8::new(0),
        })
    }

    /// Guest-physical address of the first byte.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Number of 4 KiB pages.
    pub fn pages(&self) -> usize {
        self.size / PAGE_SIZE
    }

    /// Host address of the first byte (for the vCPU's TLB and userfaultfd).
    pub fn host_ptr(&self) -> *mut u8 {
        self.host
    }

    /// True when `gpa..gpa+len` lies inside RAM.
    #[inline]
    pub fn contains(&self, gpa: u64, len: usize) -> bool {
        gpa >= self.base
            && (gpa - self.base)
                .checked_add(len as u64)
                .is_some_and(|end| end <= self.size as u64)
    }

    fn offset(&self, gpa: u64, len: usize) -> Result<usize, MemoryError> {
        if self.contains(gpa, len) {
            Ok((gpa - self.base) as usize)
        } else {
            Err(MemoryError::OutOfRange { gpa, len })
        }
    }

    /// Copies guest memory at `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let off = self.offset(gpa, buf.len())?;
        // SAFETY: `offset` checked that the range is inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(self.host.add(off), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `buf` into guest memory at `gpa` and logs the pages as written.
    pub fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> {
        let off = self.offset(gpa, buf.len())?;
        // SAFETY: `offset` checked that the range is inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), self.host.add(off), buf.len()) };
        if !buf.is_empty() {
            let first = off / PAGE_SIZE;
            let last = (off + buf.len() - 1) / PAGE_SIZE;
            for page in first..=last {
                self.note_write(page);
                self.note_code_change(page);
            }
        }
        Ok(())
    }

    /// Reads a little-endian integer of `N` bytes.
    pub fn read_le<const N: usize>(&self, gpa: u64) -> Result<[u8; N], MemoryError> {
        let mut b = [0u8; N];
        self.read(gpa, &mut b)?;
        Ok(b)
    }

    /// Records that page `page` (index from the start of RAM) was written:
    /// sets its dirty bit when logging is on and clears its free bit.
    /// Call it after the bytes are stored.
    #[inline]
    pub fn note_write(&self, page: usize) {
        if self.logging.load(Ordering::Relaxed) {
            self.dirty.set(page);
        }
        self.free.clear(page);
    }

    /// True when a guest write to `page` must go through [`note_write`]:
    /// logging is on and the page is not dirty yet, or the page is free.
    /// The vCPU caches a direct write translation only when this is false.
    #[inline]
    pub fn write_needs_note(&self, page: usize) -> bool {
        (self.logging.load(Ordering::Relaxed) && !self.dirty.get(page)) || self.free.get(page)
    }

    /// Turns dirty logging on or off. Turning it on clears the log.
    pub fn set_logging(&self, on: bool) {
        if on {
            self.dirty.clear_all();
        }
        self.logging.store(on, Ordering::SeqCst);
    }

    /// Whether dirty logging is on.
    pub fn logging(&self) -> bool {
        self.logging.load(Ordering::Relaxed)
    }

    /// The dirty log. Taking it must go through the VM (see crate docs).
    pub fn dirty_log(&self) -> &AtomicBitmap {
        &self.dirty
    }

    /// The free-page map.
    pub fn free_map(&self) -> &AtomicBitmap {
        &self.free
    }

    /// Gives pages `first..first+count` back to the host (they read as zero
    /// afterwards) and marks them free.
    pub fn discard(&self, first: usize, count: usize) -> Result<(), MemoryError> {
        let end = first.checked_add(count).filter(|&e| e <= self.pages());
        let Some(end) = end else {
            return Err(MemoryError::OutOfRange {
                gpa: self.base + (first * PAGE_SIZE) as u64,
                len: count * PAGE_SIZE,
            });
        };
        if count == 0 {
            return Ok(());
        }
        // SAFETY: the range was checked to lie inside our mapping.
        let rc = unsafe {
            libc::madvise(
                self.host.add(first * PAGE_SIZE).cast(),
                count * PAGE_SIZE,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            return Err(MemoryError::Madvise(std::io::Error::last_os_error()));
        }
        self.free.set_range(first, end);
        self.discard_epoch.fetch_add(1, Ordering::AcqRel);
        for page in first..end {
            self.note_code_change(page);
        }
        Ok(())
    }

    /// Marks pages `first..first+count` free without releasing them (free
    /// page hints: the guest did not isolate them, so their contents must
    /// stay). The migration engine may skip such a page only if it was not
    /// dirtied after logging began.
    pub fn mark_free(&self, first: usize, count: usize) {
        self.free.set_range(first, first.saturating_add(count));
        self.discard_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Changes every time pages become free. A vCPU that cached direct write
    /// translations drops them when this changes, so the next write to a
    /// newly free page clears its free bit.
    pub fn discard_epoch(&self) -> u64 {
        self.discard_epoch.load(Ordering::Acquire)
    }

    /// Marks `page` as holding code hart `hart` translated. While any
    /// hart's mark is on, no hart caches a direct write translation for the
    /// page, so a store to it is seen ([`note_hart_store`](Self::note_hart_store));
    /// a change from outside the harts ([`write`](Self::write),
    /// [`discard`](Self::discard)) clears the marks and advances
    /// [`code_epoch`](Self::code_epoch).
    ///
    /// When the page had no mark, [`mark_epoch`](Self::mark_epoch)
    /// advances: other harts may still hold write translations for it,
    /// cached before the mark, which they drop once they see the new epoch
    /// ([`note_write_translations`](Self::note_write_translations)).
    /// Returns the marks before and the mark epoch after, with whether
    /// this call advanced it from the one before.
    pub fn mark_code(&self, page: usize, hart: usize) -> CodeMark {
        let before = self.code[page].fetch_or(1 << (hart % MAX_CODE_HARTS), Ordering::SeqCst);
        if before == 0 {
            let e = self.mark_epoch.fetch_add(1, Ordering::SeqCst);
            CodeMark {
                before,
                epoch: e + 1,
                advanced: true,
            }
        } else {
            CodeMark {
                before,
                epoch: self.mark_epoch.load(Ordering::SeqCst),
                advanced: false,
            }
        }
    }

    /// Counts the pages that went from no code mark to one.
    #[inline]
    pub fn mark_epoch(&self) -> u64 {
        self.mark_epoch.load(Ordering::SeqCst)
    }

    /// Hart `hart` keeps translated code from this RAM: the others check
    /// their code against its stores ([`code_writes_settled`](Self::code_writes_settled)).
    pub fn register_code_hart(&self, hart: usize) {
        self.code_harts
            .fetch_or(1 << (hart % MAX_CODE_HARTS), Ordering::SeqCst);
    }

    /// True when a hart other than `hart` keeps translated code from this RAM.
    pub fn other_code_harts(&self, hart: usize) -> bool {
        self.code_harts.load(Ordering::SeqCst) & !(1 << (hart % MAX_CODE_HARTS)) != 0
    }

    /// Hart `hart` starts caching write translations: returns the mark
    /// epoch they are made under. Every page marked up to that epoch is
    /// seen marked by the hart's later checks, so it caches no write
    /// translation for it.
    pub fn begin_write_translations(&self, hart: usize) -> u64 {
        let seen = &self.write_seen[hart % MAX_CODE_HARTS];
        // Not "caches none" while the epoch is read: a hart that reads
        // this slot after a mark sees either the epoch or this 0.
        seen.store(0, Ordering::SeqCst);
        let epoch = self.mark_epoch.load(Ordering::SeqCst);
        seen.store(epoch, Ordering::SeqCst);
        epoch
    }

    /// Hart `hart`'s cached write translations are no older than mark
    /// epoch `epoch` (it marked the page of that epoch itself and dropped
    /// its own write translations for it).
    pub fn advance_write_translations(&self, hart: usize, epoch: u64) {
        self.write_seen[hart % MAX_CODE_HARTS].store(epoch, Ordering::SeqCst);
    }

    /// Hart `hart` dropped every cached write translation.
    pub fn note_write_translations(&self, hart: usize) {
        self.write_seen[hart % MAX_CODE_HARTS].store(u64::MAX, Ordering::SeqCst);
    }

    /// True when no hart but `hart` can still store, unseen, through a
    /// write translation cached before mark epoch `epoch`: each has
    /// dropped such translations, or caches none.
    pub fn code_writes_settled(&self, hart: usize, epoch: u64) -> bool {
        let others = self.code_harts.load(Ordering::SeqCst) & !(1 << (hart % MAX_CODE_HARTS));
        (0..MAX_CODE_HARTS)
            .filter(|h| others & (1 << h) != 0)
            .all(|h| self.write_seen[h].load(Ordering::SeqCst) >= epoch)
    }

    /// Clears hart `hart`'s mark on `page` (it dropped its translations).
    pub fn clear_code(&self, page: usize, hart: usize) {
        self.code[page].fetch_and(!(1 << (hart % MAX_CODE_HARTS)), Ordering::AcqRel);
    }

    /// True when some hart holds translated code from `page`.
    #[inline]
    pub fn is_code(&self, page: usize) -> bool {
        self.code[page].load(Ordering::Relaxed) != 0
    }

    /// Hart `hart` stored to `page`, which holds translated code: clears
    /// every hart's mark and queues the page for every *other* hart that
    /// had one, to drop its blocks at its next synchronization
    /// ([`take_stale_code`](Self::take_stale_code)). Returns whether `hart`
    /// itself had a mark (it drops its own blocks at once).
    pub fn note_hart_store(&self, page: usize, hart: usize) -> bool {
        let me = 1u8 << (hart % MAX_CODE_HARTS);
        let marks = self.code[page].swap(0, Ordering::AcqRel);
        let others = marks & !me;
        if others != 0 {
            for h in 0..MAX_CODE_HARTS {
                if others & (1 << h) != 0 {
                    self.code_stale[h]
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(page);
                }
            }
            self.code_stale_any.fetch_or(others, Ordering::AcqRel);
        }
        marks & me != 0
    }

    /// The pages other harts stored to since hart `hart` last asked, whose
    /// blocks it must drop (empty, cheaply, most of the time).
    pub fn take_stale_code(&self, hart: usize) -> Vec<usize> {
        let me = 1u8 << (hart % MAX_CODE_HARTS);
        if self.code_stale_any.load(Ordering::Acquire) & me == 0 {
            return Vec::new();
        }
        self.code_stale_any.fetch_and(!me, Ordering::AcqRel);
        std::mem::take(
            &mut *self.code_stale[hart % MAX_CODE_HARTS]
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Changes every time a page with translated code is changed from
    /// outside the harts; each hart then drops its translations.
    pub fn code_epoch(&self) -> u64 {
        self.code_epoch.load(Ordering::Acquire)
    }

    fn note_code_change(&self, page: usize) {
        if self.code[page].swap(0, Ordering::AcqRel) != 0 {
            self.code_epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Copies page `page` into `out`. The guest (or another thread) may be
    /// writing the page meanwhile: the copy is made through raw pointers,
    /// never through a Rust reference into guest memory, and may hold a mix
    /// of old and new bytes, as a DMA engine's read would. Whoever needs a
    /// consistent page stops the writers first or tracks them with the
    /// dirty log.
    pub fn read_page(&self, page: usize, out: &mut [u8; PAGE_SIZE]) -> Result<(), MemoryError> {
        if page >= self.pages() {
            return Err(MemoryError::OutOfRange {
                gpa: self
                    .base
                    .wrapping_add((page as u64).wrapping_mul(PAGE_SIZE as u64)),
                len: PAGE_SIZE,
            });
        }
        // SAFETY: the page is inside the mapping (checked above), which
        // outlives `self`; `out` is a distinct Rust-owned buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.host.add(page * PAGE_SIZE),
                out.as_mut_ptr(),
                PAGE_SIZE,
            )
        };
        Ok(())
    }

    /// Marks `len` bytes at `gpa` as written by a device (DMA done through
    /// [`write`](Self::write) is marked already; this is for writers that
    /// stored through a host pointer of their own, such as `UFFDIO_COPY`).
    pub fn mark_dirty(&self, gpa: u64, len: usize) -> Result<(), MemoryError> {
        let off = self.offset(gpa, len)?;
        if len > 0 {
            for page in off / PAGE_SIZE..=(off + len - 1) / PAGE_SIZE {
                self.note_write(page);
                self.note_code_change(page);
            }
        }
        Ok(())
    }
}

/// `true` when every byte of `page` is zero.
pub fn is_zero_page(page: &[u8; PAGE_SIZE]) -> bool {
    page.chunks_exact(8)
        .all(|w| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) == 0)
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: `host`/`size` are exactly what mmap returned.
        unsafe { libc::munmap(self.host.cast(), self.size) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_and_bounds() {
        let ram = GuestRam::new(0x8000_0000, 16 * PAGE_SIZE).unwrap();
        ram.write(0x8000_1000, &[1, 2, 3]).unwrap();
        assert_eq!(ram.read_le::<3>(0x8000_1000).unwrap(), [1, 2, 3]);
        assert!(ram.write(0x8001_0000, &[0]).is_err());
        assert!(ram.read(0x7fff_ffff, &mut [0]).is_err());
        assert!(GuestRam::new(0, 100).is_err());
    }

    #[test]
    fn dirty_and_free_tracking() {
        let ram = GuestRam::new(0, 16 * PAGE_SIZE).unwrap();
        ram.write(0, &[1]).unwrap();
        assert_eq!(ram.dirty_log().count(), 0, "logging off records nothing");
        ram.set_logging(true);
        ram.write((PAGE_SIZE * 2 - 1) as u64, &[1, 2]).unwrap();
        assert_eq!(
            AtomicBitmap::iter_set(&ram.dirty_log().take()).collect::<Vec<_>>(),
            vec![1, 2]
        );
        ram.write(5 * PAGE_SIZE as u64, &[9; 8]).unwrap();
        ram.discard(4, 4).unwrap();
        assert_eq!(ram.read_le::<1>(5 * PAGE_SIZE as u64).unwrap(), [0]);
        assert_eq!(ram.free_map().count(), 4);
        assert!(ram.write_needs_note(5));
        ram.write(5 * PAGE_SIZE as u64, &[7]).unwrap();
        assert!(!ram.free_map().get(5));
        assert!(ram.discard(15, 2).is_err());
    }
}

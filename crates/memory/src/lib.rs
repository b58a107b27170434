//! Guest RAM for Godwit: one anonymous host `mmap` per region, plus the two
//! page maps live migration needs (DESIGN.md, "Guest RAM contract"):
//!
//! - the **dirty log**: one bit per 4 KiB page, set after a guest or device
//!   write while logging is on; the migration engine takes it with
//!   fetch-and-clear semantics (through the VM, which first makes the vCPU
//!   drop the write translations it cached, see `godwit-machine`);
//! - the **free map**: pages the guest reported free through the balloon.
//!   They are released to the host with `madvise(MADV_DONTNEED)`; the next
//!   guest write clears the bit again.
//!
//! Both maps are atomic bitmaps so devices, the vCPU and the engine can share
//! one `Arc<GuestRam>` without locks.

mod bitmap;
mod ram;

pub use bitmap::AtomicBitmap;
pub use ram::{
    is_zero_page, CodeMark, GuestRam, MemoryError, MAX_CODE_HARTS, PAGE_SHIFT, PAGE_SIZE,
};

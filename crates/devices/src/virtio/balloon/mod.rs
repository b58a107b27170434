//! virtio-balloon (device ID 5) as Linux 6.1's `virtio_balloon.c` uses it:
//! inflate/deflate, memory statistics, free page hinting and free page
//! reporting. This is the device side of Godwit's self-ballooning
//! (DESIGN.md): pages the guest gives back are `madvise(MADV_DONTNEED)`'d
//! and marked in the guest RAM free map, so no migration mode sends them.
//!
//! Queue numbering follows the driver's `init_vqs`: inflateq and deflateq
//! always exist; statsq, free_page_vq and reporting_vq follow in that order,
//! each present only if its feature was negotiated, and *the indexes close
//! up* (virtio-mmio's `vm_find_vqs` skips absent queues without consuming an
//! index). So with STATS_VQ and REPORTING but no FREE_PAGE_HINT the
//! reporting queue is queue 3, not 4.
//!
//! After this device sets bits in the free map (inflate, reporting, hints)
//! the VMM must make the vCPU drop its cached write translations for guest
//! RAM (see [`Balloon::take_free_map_changed`]): a page marked free must
//! clear its free bit on the next guest store, which only happens when the
//! store goes through `GuestRam::note_write`.
//!
//! The device is in [`device`], what it remembers across a snapshot or a
//! migration in [`state`].

mod device;
mod state;
#[cfg(test)]
mod tests;

pub use device::*;
pub use state::*;

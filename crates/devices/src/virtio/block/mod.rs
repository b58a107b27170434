//! virtio-blk (device ID 2, virtio 1.x §5.2) as Linux's `virtio_blk.c`
//! drives it: a disk of 512-byte sectors over a host [`BlockBackend`],
//! usually an image file ([`FileDisk`]).
//!
//! # What is offered
//!
//! One request queue of [`QUEUE_SIZE`] entries and these features:
//!
//! | feature | config field | value |
//! | --- | --- | --- |
//! | `SEG_MAX` | `seg_max` | [`SEG_MAX`] (the queue size less header and status: no indirect descriptors) |
//! | `BLK_SIZE` | `blk_size` | 512 |
//! | `FLUSH` | | a write cache: writes are durable after a `T_FLUSH` |
//! | `WRITE_ZEROES` | `max_write_zeroes_sectors`, `max_write_zeroes_seg` | [`MAX_WRITE_ZEROES_SECTORS`], 1; `write_zeroes_may_unmap` 0 |
//! | `RO` | | only for a read-only disk |
//! | `DISCARD` | `max_discard_sectors`, `max_discard_seg`, `discard_sector_alignment` | only when the backend can discard ([`BlockBackend::can_discard`]; a [`FileDisk`] cannot) |
//!
//! `capacity` is the backend's length in sectors. Nothing else (no
//! `SIZE_MAX`, geometry, topology, `CONFIG_WCE`, multiqueue, lifetime,
//! secure erase, zones); the configuration space is read-only.
//!
//! # Request processing
//!
//! A request is a chain: a 16-byte header (`le32 type, le32 reserved,
//! le64 sector`) at the start of the device-readable bytes, data buffers,
//! and a status byte, the last byte of the last descriptor, which must be
//! device-writable. Every chain is checked before any I/O:
//!
//! - no writable status byte (the last descriptor is readable, empty, or
//!   outside RAM): the chain is returned with used length 0 and nothing
//!   else happens;
//! - otherwise the status is `S_IOERR` when the framing is wrong (a
//!   readable descriptor after a writable one, a buffer outside RAM, fewer
//!   than 16 readable bytes), the data buffers have the wrong direction
//!   for the type, a read or write is not a multiple of 512 bytes, the
//!   sectors are not all inside the disk (overflow-checked), or the disk
//!   is read-only and the request writes;
//! - `T_IN` reads, `T_OUT` writes, `T_FLUSH` runs the backend's flush
//!   (`fdatasync`) and answers OK only once it returned, `T_GET_ID` writes
//!   the 20-byte NUL-padded ID (at most the buffer's length);
//!   `T_WRITE_ZEROES` (and `T_DISCARD` when offered) take segments of
//!   `le64 sector, le32 num_sectors, le32 flags`, all checked before any
//!   is carried out; an unknown flag, or `UNMAP` on a discard, is
//!   `S_UNSUPP`. Write-zeroes always writes zeros. Any other type (or one
//!   not negotiated) is `S_UNSUPP`;
//! - a backend error is `S_IOERR` and counted, never a panic.
//!
//! Data moves through one bounce buffer of [`CHUNK`] (64 KiB), whatever
//! lengths the descriptors claim: the device allocates nothing per
//! request that the guest can size. Guest memory is written only through
//! `GuestRam::write`, so a read from the disk dirties the pages it fills
//! (the migration engine sends them again). The used length is the number
//! of bytes written into device-writable buffers: the data read (or the
//! ID), plus one for the status.
//!
//! # Ordering and durability
//!
//! Requests are served in the order the driver made them available, one
//! at a time and synchronously, in [`VirtioDevice::notify`](crate::VirtioDevice::notify), which runs on
//! the device's own event thread (never on a vCPU). So a request is
//! complete in the backend before the next one starts: writes reach the
//! file in the order the guest issued them, and a `T_FLUSH` returns OK
//! only once every write completed before it is durable. When the driver
//! did not negotiate `FLUSH`, every write is made durable before it
//! completes (§5.2.6.2: such writes are stable on completion).
//!
//! # Migration: the disk's lock and file
//!
//! The backend is host state and never part of [`BlockState`]; the board
//! (capacity, read-only, ID) is what the two hosts compare. A
//! [`FileDisk`] holds an advisory lock on its image, exclusive when
//! read-write, shared when read-only, so two VMMs never write one image.
//! When both hosts of a migration see the same image (shared storage), the
//! lock must move with the VM:
//!
//! 1. The source pauses the VM (its device threads are then drained: no
//!    request is in flight), then calls [`Block::release_backend`]: the
//!    image is flushed (`fdatasync`) and closed, which drops the lock.
//!    Kicks that arrive while released are remembered; requests stay in
//!    the queue.
//! 2. The destination opens the image (and takes the lock) only when the
//!    state arrives, just before it builds the VM from it; a state whose
//!    disk differs in capacity, mode or ID is refused.
//! 3. If the migration fails before the destination resumed, the source
//!    calls [`Block::reacquire_backend`] (reopens and relocks, checking
//!    the size) and wakes the device's event thread, which serves the
//!    requests that waited, before it resumes the guest.
//!
//! The device is in `device.rs`, what it remembers in [`state`], the
//! backends in [`backend`].

pub mod backend;
mod device;
pub mod hold;
pub mod state;
#[cfg(test)]
mod tests;

pub use backend::{BlockBackend, DiskOpenError, FileDisk};
pub use device::*;
pub use hold::{HeldWrite, HeldWriteStats, WriteHold};
pub use state::{BlockCounters, BlockState};

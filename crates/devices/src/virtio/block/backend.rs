//! Where a disk's bytes live on the host: the [`BlockBackend`] trait the
//! device does its I/O through, and [`FileDisk`], an image file (or a host
//! block device) opened with an advisory lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

/// The host side of a virtio-blk device: a byte array of fixed length.
///
/// Every call is synchronous. The device calls them on its own event
/// thread, one request at a time, in the order the guest made its
/// requests available; a backend needs no ordering of its own.
pub trait BlockBackend: Send {
    /// Size in bytes. Constant while the backend is attached.
    fn len(&self) -> u64;

    /// Whether the backend has no bytes at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from byte offset `off`; a short read is an error.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;

    /// Writes all of `buf` at byte offset `off`. The bytes need not be
    /// durable before [`flush`](Self::flush) returns.
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()>;

    /// Makes every write that returned before durable (`fdatasync`).
    fn flush(&self) -> io::Result<()>;

    /// Tells the backend that `len` bytes at `off` are no longer needed
    /// (it may deallocate them: they read back as anything afterwards).
    /// Only called when [`can_discard`](Self::can_discard) is true.
    fn discard(&self, off: u64, len: u64) -> io::Result<()> {
        let _ = (off, len);
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Whether [`discard`](Self::discard) does anything; the device offers
    /// `VIRTIO_BLK_F_DISCARD` only then.
    fn can_discard(&self) -> bool {
        false
    }

    /// Whether writes are refused (the image was opened read-only).
    fn read_only(&self) -> bool {
        false
    }

    /// What the backend is, for messages and reports (the image's path).
    fn describe(&self) -> String {
        "a host disk".into()
    }

    /// Makes everything durable, then lets go of the host resource (for a
    /// file: closes it, which drops its lock), so that another host may
    /// open it. No other call but [`reacquire`](Self::reacquire) is made
    /// until then.
    fn release(&mut self) -> io::Result<()> {
        self.flush()
    }

    /// Takes the host resource again after [`release`](Self::release) (for
    /// a file: reopens it with the same mode and lock). An error leaves the
    /// backend released.
    fn reacquire(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A disk image that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskOpenError {
    /// The file could not be opened.
    #[error("cannot open disk image {} {}: {err}", path.display(), mode(*readonly))]
    Open {
        /// The image.
        path: PathBuf,
        /// Opened read-only.
        readonly: bool,
        /// Why.
        err: io::Error,
    },
    /// Another process (another VMM) holds a conflicting lock.
    #[error(
        "disk image {} is in use: another process holds {} lock on it (is another VM using it?)",
        path.display(),
        if *readonly { "an exclusive (read-write)" } else { "a" }
    )]
    Locked {
        /// The image.
        path: PathBuf,
        /// We asked for a shared (read-only) lock.
        readonly: bool,
    },
    /// Locking failed for another reason than a conflicting lock.
    #[error("cannot lock disk image {}: {err}", path.display())]
    Lock {
        /// The image.
        path: PathBuf,
        /// Why.
        err: io::Error,
    },
    /// Neither a regular file nor a block device.
    #[error("disk image {} is neither a regular file nor a block device", path.display())]
    NotADisk {
        /// The path.
        path: PathBuf,
    },
    /// A size the device cannot offer.
    #[error(
        "disk image {} is {len} bytes: a disk must be a non-zero multiple of 512 bytes",
        path.display()
    )]
    Size {
        /// The image.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The image changed size while it was released.
    #[error("disk image {} is now {now} bytes, it was {was}", path.display())]
    Resized {
        /// The image.
        path: PathBuf,
        /// Size when first opened.
        was: u64,
        /// Size now.
        now: u64,
    },
}

fn mode(readonly: bool) -> &'static str {
    if readonly {
        "read-only"
    } else {
        "read-write"
    }
}

/// A disk image file (or host block device), opened read-write with an
/// exclusive advisory lock (`flock`), or read-only with a shared one: two
/// VMMs never write one image at once, and nobody writes an image a VMM
/// reads. A process that ignores advisory locks is not stopped.
#[derive(Debug)]
pub struct FileDisk {
    path: PathBuf,
    readonly: bool,
    /// `None` while released.
    file: Option<File>,
    len: u64,
}

impl FileDisk {
    /// Opens and locks `path`. Refuses anything but a regular file or a
    /// block device, a size that is zero or not a multiple of 512, and an
    /// image another process holds a conflicting lock on.
    pub fn open(path: impl AsRef<Path>, readonly: bool) -> Result<FileDisk, DiskOpenError> {
        let path = path.as_ref().to_path_buf();
        let (file, len) = Self::open_locked(&path, readonly)?;
        if len == 0 || !len.is_multiple_of(512) {
            return Err(DiskOpenError::Size { path, len });
        }
        Ok(FileDisk {
            path,
            readonly,
            file: Some(file),
            len,
        })
    }

    fn open_locked(path: &Path, readonly: bool) -> Result<(File, u64), DiskOpenError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(path)
            .map_err(|err| DiskOpenError::Open {
                path: path.to_path_buf(),
                readonly,
                err,
            })?;
        let kind = file
            .metadata()
            .map_err(|err| DiskOpenError::Open {
                path: path.to_path_buf(),
                readonly,
                err,
            })?
            .file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(DiskOpenError::NotADisk {
                path: path.to_path_buf(),
            });
        }
        let locked = if readonly {
            file.try_lock_shared()
        } else {
            file.try_lock()
        };
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(DiskOpenError::Locked {
                    path: path.to_path_buf(),
                    readonly,
                })
            }
            Err(TryLockError::Error(err)) => {
                return Err(DiskOpenError::Lock {
                    path: path.to_path_buf(),
                    err,
                })
            }
        }
        // The end offset, not the metadata: a block device's metadata says 0.
        let len = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|err| DiskOpenError::Open {
                path: path.to_path_buf(),
                readonly,
                err,
            })?;
        Ok((file, len))
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the image was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.readonly
    }

    /// Whether the image is released (closed, unlocked).
    pub fn is_released(&self) -> bool {
        self.file.is_none()
    }

    fn file(&self) -> io::Result<&File> {
        self.file.as_ref().ok_or_else(|| {
            io::Error::other(format!(
                "disk image {} is released (closed)",
                self.path.display()
            ))
        })
    }
}

impl BlockBackend for FileDisk {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.file()?.read_exact_at(buf, off)
    }

    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        if self.readonly {
            return Err(io::ErrorKind::PermissionDenied.into());
        }
        self.file()?.write_all_at(buf, off)
    }

    fn flush(&self) -> io::Result<()> {
        let f = self.file()?;
        if self.readonly {
            return Ok(());
        }
        f.sync_data()
    }

    fn read_only(&self) -> bool {
        self.readonly
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn release(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        self.flush()?;
        // Closing the only descriptor of this open file drops its lock.
        self.file = None;
        Ok(())
    }

    fn reacquire(&mut self) -> io::Result<()> {
        if self.file.is_some() {
            return Ok(());
        }
        let (file, len) = Self::open_locked(&self.path, self.readonly).map_err(io::Error::other)?;
        if len != self.len {
            return Err(io::Error::other(DiskOpenError::Resized {
                path: self.path.clone(),
                was: self.len,
                now: len,
            }));
        }
        self.file = Some(file);
        Ok(())
    }
}

//! A disk's writes held back until a checkpoint that covers them is safe
//! (post-copy failover): the guest's writes complete at once and read back
//! as written, but reach the image only when [`WriteHold::release`] lets
//! their epoch go. A VM resumed from a checkpoint elsewhere then finds the
//! image as that checkpoint left it, never with writes it does not
//! remember making.

use super::backend::BlockBackend;
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most bytes of writes held at once. A guest that writes more before a
/// checkpoint is confirmed waits (its request does not complete) until a
/// release makes room: that happens only when confirmations stop coming,
/// and the VM cannot go on then anyway.
pub const MAX_HELD_WRITE_BYTES: usize = 256 << 20;

/// What a [`WriteHold`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HeldWriteStats {
    /// Writes (and discards) held and then made on the image.
    pub released: u64,
    /// Their bytes.
    pub released_bytes: u64,
    /// Held ones not released yet.
    pub waiting: u64,
    /// Times a write waited for room.
    pub full_waits: u64,
    /// Writes the image refused when they were released (the guest was
    /// told they succeeded: these are lost).
    pub release_errors: u64,
    /// The longest a released write waited, µs.
    pub wait_us_max: f64,
}

/// A write (or discard) held for a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeldWrite {
    /// `data` written at byte `off`.
    Write {
        /// Byte offset on the image.
        off: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// `len` bytes from `off` discarded.
    Discard {
        /// Byte offset on the image.
        off: u64,
        /// Bytes.
        len: u64,
    },
}

struct Held {
    epoch: u64,
    at: Instant,
    op: HeldWrite,
}

struct Inner {
    backend: Box<dyn BlockBackend>,
    holding: bool,
    epoch: u64,
    writes: VecDeque<Held>,
    bytes: usize,
    stats: HeldWriteStats,
}

/// The held writes of one disk, shared by its device (through
/// [`Holding`]) and whoever confirms checkpoints.
pub struct WriteHold {
    inner: Mutex<Inner>,
    room: Condvar,
}

impl WriteHold {
    /// Holds the writes made to `backend` from now on, tagged with epoch 0.
    pub(crate) fn new(backend: Box<dyn BlockBackend>) -> Arc<WriteHold> {
        Arc::new(WriteHold {
            inner: Mutex::new(Inner {
                backend,
                holding: true,
                epoch: 0,
                writes: VecDeque::new(),
                bytes: 0,
                stats: HeldWriteStats::default(),
            }),
            room: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds again (after a [`release`](Self::release) of everything).
    pub(crate) fn restart(&self) {
        let mut g = self.lock();
        g.holding = true;
    }

    /// Writes from now on belong to `epoch` (the VM is paused for
    /// checkpoint `epoch`: everything written before has a smaller tag).
    pub fn mark(&self, epoch: u64) {
        let mut g = self.lock();
        g.epoch = g.epoch.max(epoch);
    }

    /// Makes the held writes of epochs before `epoch` on the image, in the
    /// order the guest made them, then flushes it; `None`: all of them, and
    /// writes are no longer held. Errors of the image are counted
    /// (`release_errors`) and the first is returned; the rest still go.
    pub fn release(&self, epoch: Option<u64>) -> io::Result<()> {
        let mut g = self.lock();
        let now = Instant::now();
        let mut first_err = None;
        let mut any = false;
        while g
            .writes
            .front()
            .is_some_and(|h| epoch.is_none_or(|e| h.epoch < e))
        {
            let Some(h) = g.writes.pop_front() else {
                break;
            };
            any = true;
            let r = match &h.op {
                HeldWrite::Write { off, data } => {
                    g.bytes -= data.len();
                    g.stats.released_bytes += data.len() as u64;
                    g.backend.write_at(data, *off)
                }
                HeldWrite::Discard { off, len } => g.backend.discard(*off, *len),
            };
            g.stats.released += 1;
            let us = now.saturating_duration_since(h.at).as_secs_f64() * 1e6;
            g.stats.wait_us_max = g.stats.wait_us_max.max(us);
            if let Err(e) = r {
                g.stats.release_errors += 1;
                first_err.get_or_insert(e);
            }
        }
        if any {
            if let Err(e) = g.backend.flush() {
                g.stats.release_errors += 1;
                first_err.get_or_insert(e);
            }
        }
        if epoch.is_none() {
            g.holding = false;
        }
        g.stats.waiting = g.writes.len() as u64;
        drop(g);
        self.room.notify_all();
        first_err.map_or(Ok(()), Err)
    }

    /// Copies of the held writes of epochs `from..to`, in the order the
    /// guest made them (for the checkpoint that covers them, so that the
    /// source can make them itself if this side is lost before it does).
    pub fn held_in(&self, from: u64, to: u64) -> Vec<HeldWrite> {
        self.lock()
            .writes
            .iter()
            .filter(|h| (from..to).contains(&h.epoch))
            .map(|h| h.op.clone())
            .collect()
    }

    /// What the hold did so far.
    pub fn stats(&self) -> HeldWriteStats {
        let g = self.lock();
        HeldWriteStats {
            waiting: g.writes.len() as u64,
            ..g.stats
        }
    }
}

/// The backend a disk uses once its writes may be held: everything goes to
/// the real backend inside the [`WriteHold`], but while it holds, writes,
/// discards and flushes stop there and reads see the held writes.
pub(crate) struct Holding(pub Arc<WriteHold>);

impl BlockBackend for Holding {
    fn len(&self) -> u64 {
        self.0.lock().backend.len()
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let g = self.0.lock();
        g.backend.read_at(buf, off)?;
        let end = off + buf.len() as u64;
        // Later writes over earlier ones: in the order they were made.
        for h in &g.writes {
            if let HeldWrite::Write { off: w, data } = &h.op {
                let wend = w + data.len() as u64;
                let (from, to) = (off.max(*w), end.min(wend));
                if from < to {
                    buf[(from - off) as usize..(to - off) as usize]
                        .copy_from_slice(&data[(from - w) as usize..(to - w) as usize]);
                }
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        let mut g = self.0.lock();
        let mut waited = false;
        loop {
            if !g.holding {
                return g.backend.write_at(buf, off);
            }
            if g.bytes + buf.len() <= MAX_HELD_WRITE_BYTES || g.writes.is_empty() {
                let epoch = g.epoch;
                g.bytes += buf.len();
                g.writes.push_back(Held {
                    epoch,
                    at: Instant::now(),
                    op: HeldWrite::Write {
                        off,
                        data: buf.to_vec(),
                    },
                });
                return Ok(());
            }
            if !waited {
                g.stats.full_waits += 1;
                waited = true;
            }
            g = self
                .0
                .room
                .wait_timeout(g, Duration::from_millis(100))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn flush(&self) -> io::Result<()> {
        let g = self.0.lock();
        if g.holding {
            // Durable once their checkpoint is confirmed (the release
            // flushes): the checkpoint, not the image, holds them now.
            return Ok(());
        }
        g.backend.flush()
    }

    fn discard(&self, off: u64, len: u64) -> io::Result<()> {
        let mut g = self.0.lock();
        if !g.holding {
            return g.backend.discard(off, len);
        }
        let epoch = g.epoch;
        g.writes.push_back(Held {
            epoch,
            at: Instant::now(),
            op: HeldWrite::Discard { off, len },
        });
        Ok(())
    }

    fn can_discard(&self) -> bool {
        self.0.lock().backend.can_discard()
    }

    fn read_only(&self) -> bool {
        self.0.lock().backend.read_only()
    }

    fn describe(&self) -> String {
        self.0.lock().backend.describe()
    }

    fn release(&mut self) -> io::Result<()> {
        let mut g = self.0.lock();
        if g.holding && !g.writes.is_empty() {
            return Err(io::Error::other(
                "writes are held for a checkpoint; the disk cannot be let go now",
            ));
        }
        g.backend.release()
    }

    fn reacquire(&mut self) -> io::Result<()> {
        self.0.lock().backend.reacquire()
    }
}

/// Stands in for a backend while it is being moved into a [`WriteHold`].
pub(crate) struct Detached;

impl BlockBackend for Detached {
    fn len(&self) -> u64 {
        0
    }
    fn read_at(&self, _buf: &mut [u8], _off: u64) -> io::Result<()> {
        Err(io::ErrorKind::NotConnected.into())
    }
    fn write_at(&self, _buf: &[u8], _off: u64) -> io::Result<()> {
        Err(io::ErrorKind::NotConnected.into())
    }
    fn flush(&self) -> io::Result<()> {
        Err(io::ErrorKind::NotConnected.into())
    }
}

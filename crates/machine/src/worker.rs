//! The device event threads: one per virtio slot, doing the device's work
//! off the vCPUs.
//!
//! A thread sleeps in `poll(2)` on an eventfd (kicks from the guest,
//! host-side changes, pause and quit) and on the device's own host
//! descriptors ([`VirtioDevice::io_fds`], e.g. a TAP), with the device's
//! [`VirtioDevice::poll_deadline`] as timeout. Woken, it runs
//! [`VirtioMmio::process`] under the transport's lock and drives the
//! slot's interrupt line. When the device marked guest pages free, the
//! thread lets go of the lock, has every vCPU drop its cached write
//! translations, and only then lets the device release the requests that
//! freed the pages.
//!
//! **Pause means drained.** [`Workers::quiesce`] returns once every thread
//! finished the cycle it was in (including held requests) and waits: no
//! device touches guest memory or its host backend until
//! [`Workers::resume`]. Device state is only saved in that condition.
//!
//! [`VirtioDevice::io_fds`]: godwit_devices::VirtioDevice::io_fds
//! [`VirtioDevice::poll_deadline`]: godwit_devices::VirtioDevice::poll_deadline
//! [`VirtioMmio::process`]: godwit_devices::VirtioMmio::process

use crate::bus::lock;
use crate::vcpu::{request_harts, REQ_FLUSH_WRITES};
use crate::vm::Shared;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// An eventfd: a counter the kernel wakes `poll` on.
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> std::io::Result<EventFd> {
        // SAFETY: creates a new descriptor; no memory is passed.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Wakes the waiter (adds 1 to the counter).
    pub fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a local buffer to our descriptor. A
        // full counter (EAGAIN) already means "woken".
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Resets the counter after a wake-up.
    fn drain(&self) {
        let mut b = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a local buffer.
        unsafe { libc::read(self.0.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
    }

    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// What a device thread and the VM share.
pub(crate) struct WorkerSignal {
    pub wake: Arc<EventFd>,
    /// The pause generation in which the thread was last seen waiting with
    /// nothing in flight.
    idle: Mutex<u64>,
    idle_cv: Condvar,
}

impl WorkerSignal {
    pub fn new() -> std::io::Result<WorkerSignal> {
        Ok(WorkerSignal {
            wake: Arc::new(EventFd::new()?),
            idle: Mutex::new(0),
            idle_cv: Condvar::new(),
        })
    }
}

/// Pause and quit for all device threads.
#[derive(Default)]
pub(crate) struct Workers {
    pub paused: AtomicBool,
    pub quit: AtomicBool,
    /// Counts pauses, so an acknowledgement of an older pause never
    /// passes for one of the current pause.
    gen: AtomicU64,
}

impl Workers {
    /// Stops every device thread after the cycle it is in; returns once all
    /// are idle.
    pub fn quiesce(&self, shared: &Shared) {
        self.quiesce_within(shared, None);
    }

    /// [`quiesce`](Self::quiesce), waiting at most `limit`; returns the
    /// slots whose thread is still busy (it stops when its work is done).
    pub fn quiesce_within(&self, shared: &Shared, limit: Option<Duration>) -> Vec<usize> {
        let t = std::time::Instant::now();
        let gen = self.gen.fetch_add(1, SeqCst) + 1;
        self.paused.store(true, SeqCst);
        for w in &shared.workers {
            w.wake.signal();
        }
        let mut busy = Vec::new();
        for (slot, w) in shared.workers.iter().enumerate() {
            let mut idle = lock(&w.idle);
            while *idle < gen && !self.quit.load(SeqCst) {
                if limit.is_some_and(|l| t.elapsed() >= l) {
                    busy.push(slot);
                    break;
                }
                idle = w
                    .idle_cv
                    .wait_timeout(idle, Duration::from_millis(50))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        }
        busy
    }

    /// Lets the device threads run again.
    pub fn resume(&self, shared: &Shared) {
        self.paused.store(false, SeqCst);
        for w in &shared.workers {
            w.wake.signal();
        }
    }
}

/// The thread of virtio slot `slot`.
pub(crate) fn worker_main(shared: Arc<Shared>, slot: usize) {
    let sig = &shared.workers[slot];
    let transport = &shared.devices.slots[slot].transport;
    loop {
        if shared.worker_ctl.quit.load(SeqCst) {
            return;
        }
        let paused = shared.worker_ctl.paused.load(SeqCst);
        let (fds, deadline) = if paused {
            (Vec::new(), None)
        } else {
            let t = lock(transport);
            (t.device().io_fds(), t.device().poll_deadline())
        };
        if paused {
            *lock(&sig.idle) = shared.worker_ctl.gen.load(SeqCst);
            sig.idle_cv.notify_all();
        }
        wait(sig.wake.fd(), &fds, deadline);
        sig.wake.drain();
        if shared.worker_ctl.paused.load(SeqCst) {
            continue;
        }
        let processed = lock(transport).process();
        if processed.free_map_changed {
            // No lock held: vCPUs may be waiting for this transport.
            request_harts(&shared, 0..shared.harts.len(), REQ_FLUSH_WRITES, None);
            lock(transport).release_held();
        }
        shared.devices.sync_slot(shared.signals(), slot);
    }
}

/// Sleeps until `wake` or one of `fds` is readable, or until `deadline`.
fn wait(wake: RawFd, fds: &[RawFd], deadline: Option<Instant>) {
    let mut pfds: Vec<libc::pollfd> = std::iter::once(wake)
        .chain(fds.iter().copied())
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout = match deadline {
        None => -1,
        Some(d) => d
            .saturating_duration_since(Instant::now())
            .as_millis()
            .min(60_000) as libc::c_int,
    };
    // SAFETY: `pfds` is a valid array of pollfd for the whole call.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
}

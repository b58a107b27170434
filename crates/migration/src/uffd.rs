//! Post-copy page faults: a small safe wrapper around Linux `userfaultfd`
//! in MISSING mode.
//!
//! On the destination, guest RAM is one private anonymous mapping that starts
//! empty. [`Uffd::register`] arms it before the guest runs; from then on any
//! thread that touches a page nobody has filled yet sleeps in the kernel until
//! the handler fills that page:
//!
//! ```text
//!  vCPU / device thread        kernel                  handler thread        resolver thread(s)
//!  ────────────────────        ──────                  ──────────────        ──────────────────
//!  load/store missing page ──► queue fault event ────► next_fault() = off ─► fetch page `off`
//!  (sleeps)                                                                  from the source
//!                                                                                 │
//!  load/store retried      ◄── fill page, wake     ◄──── Resolver::copy(off, page) ┘
//!                                                        (zeropage() for zero pages)
//! ```
//!
//! The same calls also push pages nobody asked for yet (pre-paging): filling a
//! page before it is touched means it never faults.
//!
//! ```no_run
//! # fn fetch_from_source(_offset: usize) -> Vec<u8> { vec![0; 4096] }
//! use godwit_migration::uffd::Uffd;
//! use std::time::Duration;
//! # fn run(ram: &godwit_memory::GuestRam) -> std::io::Result<()> {
//! // SAFETY: `ram` is a private anonymous mapping that outlives `uffd`.
//! let mut uffd = unsafe { Uffd::register(ram.host_ptr(), ram.size())? };
//! let resolver = uffd.resolver(); // clones go to the network threads
//! while let Some(offset) = uffd.next_fault(Duration::from_millis(100))? {
//!     // Done or AlreadyPresent: either way the faulting thread runs again.
//!     resolver.copy(offset, &fetch_from_source(offset))?;
//! }
//! uffd.unregister()?; // migration complete: ordinary memory again
//! # Ok(()) }
//! ```
//!
//! Rules the caller must respect:
//! - The thread that calls [`Uffd::next_fault`] (and any thread that resolves)
//!   must never touch a missing page of the region itself, directly or through
//!   a syscall (`read(2)` into guest RAM, `GuestRam::read`): it would sleep
//!   waiting for itself. For the same reason the `page` given to `copy` must
//!   not point into the registered region.
//! - Several threads faulting on the same page yield several events for it;
//!   the second resolution reports [`Resolve::AlreadyPresent`], which is fine.
//! - [`Uffd::unregister`] (or dropping the [`Uffd`]) wakes every thread still
//!   waiting and lets it read zeros: only unregister once every page has been
//!   copied.
//! - `MADV_DONTNEED` on a registered page makes it missing again (the next
//!   touch faults); after unregistering it reads as zeros instead.
//!
//! The ioctls are issued directly rather than through the `userfaultfd`
//! crate, whose `-sys` part runs bindgen (needs libclang) at every build; the
//! structs and ioctl numbers below are checked against the kernel header.

use godwit_memory::PAGE_SIZE;
use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The subset of `<linux/userfaultfd.h>` this module uses.
mod abi {
    /// `_IOC(dir, 0xAA, nr, size)` as `<asm-generic/ioctl.h>` builds it.
    const fn ioc(dir: u32, nr: u32, size: usize) -> libc::Ioctl {
        ((dir << 30) | ((size as u32) << 16) | (0xAA << 8) | nr) as libc::Ioctl
    }
    const IOC_WRITE: u32 = 1;
    const IOC_READ: u32 = 2;

    pub const UFFD_API: u64 = 0xAA;
    pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
    pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

    // Bit numbers of the ioctls in `uffdio_register.ioctls`.
    const NR_REGISTER: u32 = 0x00;
    const NR_UNREGISTER: u32 = 0x01;
    const NR_WAKE: u32 = 0x02;
    const NR_COPY: u32 = 0x03;
    const NR_ZEROPAGE: u32 = 0x04;
    const NR_API: u32 = 0x3F;
    /// The range ioctls this module needs on the registered region.
    pub const NEEDED_RANGE_IOCTLS: u64 = (1 << NR_WAKE) | (1 << NR_COPY) | (1 << NR_ZEROPAGE);

    pub const UFFDIO_API: libc::Ioctl = ioc(IOC_READ | IOC_WRITE, NR_API, size_of::<UffdioApi>());
    pub const UFFDIO_REGISTER: libc::Ioctl = ioc(
        IOC_READ | IOC_WRITE,
        NR_REGISTER,
        size_of::<UffdioRegister>(),
    );
    pub const UFFDIO_UNREGISTER: libc::Ioctl =
        ioc(IOC_READ, NR_UNREGISTER, size_of::<UffdioRange>());
    pub const UFFDIO_WAKE: libc::Ioctl = ioc(IOC_READ, NR_WAKE, size_of::<UffdioRange>());
    pub const UFFDIO_COPY: libc::Ioctl =
        ioc(IOC_READ | IOC_WRITE, NR_COPY, size_of::<UffdioCopy>());
    pub const UFFDIO_ZEROPAGE: libc::Ioctl = ioc(
        IOC_READ | IOC_WRITE,
        NR_ZEROPAGE,
        size_of::<UffdioZeropage>(),
    );
    /// `ioctl` on `/dev/userfaultfd` that returns a new userfaultfd.
    pub const USERFAULTFD_IOC_NEW: libc::Ioctl = ioc(0, 0x00, 0);

    /// `struct uffd_msg` is 32 bytes; a page fault keeps `event` at byte 0
    /// and `arg.pagefault.address` at bytes 16..24.
    pub const MSG_SIZE: usize = 32;
    pub const MSG_EVENT: usize = 0;
    pub const MSG_FAULT_ADDRESS: std::ops::Range<usize> = 16..24;

    #[repr(C)]
    pub struct UffdioApi {
        pub api: u64,
        pub features: u64,
        pub ioctls: u64,
    }

    #[repr(C)]
    pub struct UffdioRange {
        pub start: u64,
        pub len: u64,
    }

    #[repr(C)]
    pub struct UffdioRegister {
        pub range: UffdioRange,
        pub mode: u64,
        pub ioctls: u64,
    }

    #[repr(C)]
    pub struct UffdioCopy {
        pub dst: u64,
        pub src: u64,
        pub len: u64,
        pub mode: u64,
        pub copy: i64,
    }

    #[repr(C)]
    pub struct UffdioZeropage {
        pub range: UffdioRange,
        pub mode: u64,
        pub zeropage: i64,
    }
}

/// Fault events read per `read(2)`: a burst of faults costs one syscall.
const READ_BATCH: usize = 16;
/// How often a resolution is retried while the kernel answers EAGAIN (the
/// address space is changing under it); about 0.1 s in total.
const MAX_EAGAIN_RETRIES: u32 = 1000;

/// What went wrong; carried inside the `io::Error`s this module returns
/// (reach it with `err.get_ref()` and `downcast_ref::<UffdError>()`).
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// The process may not create a userfaultfd that handles kernel faults.
    #[error(
        "userfaultfd is not permitted ({source}): run as root or with CAP_SYS_PTRACE, \
         or set sysctl vm.unprivileged_userfaultfd=1, or give this user read/write \
         access to /dev/userfaultfd"
    )]
    NotPermitted { source: io::Error },
    /// The kernel has no userfaultfd.
    #[error(
        "this kernel has no userfaultfd ({source}): post-copy needs a kernel built with \
         CONFIG_USERFAULTFD=y (and no seccomp filter blocking the syscall)"
    )]
    NoKernelSupport { source: io::Error },
    /// Creating the userfaultfd or the UFFDIO_API handshake failed otherwise.
    #[error("cannot set up a userfaultfd: {what}: {source}")]
    Setup {
        what: &'static str,
        source: io::Error,
    },
    /// The host's page size is not the 4 KiB this module resolves.
    #[error("host page size is {0} bytes; userfaultfd post-copy needs 4 KiB pages")]
    HostPageSize(usize),
    /// The region cannot be registered.
    #[error("cannot register {len:#x} bytes at {base:#x} with userfaultfd: {reason}")]
    BadRegion {
        base: usize,
        len: usize,
        reason: &'static str,
    },
    /// The kernel registered the region but cannot resolve faults in it.
    #[error(
        "the kernel offers ioctls {ioctls:#x} on the region, lacking UFFDIO_COPY, \
         UFFDIO_ZEROPAGE or UFFDIO_WAKE: is the region private anonymous memory?"
    )]
    MissingIoctls { ioctls: u64 },
    /// An offset is not a page inside the region.
    #[error("offset {offset:#x} is not a 4 KiB aligned page inside the {len:#x}-byte region")]
    BadOffset { offset: usize, len: usize },
    /// A page buffer of the wrong size.
    #[error("page buffer holds {0} bytes; a page is exactly 4096")]
    BadPageLength(usize),
    /// The region is no longer registered (unregistered, or the mapping changed).
    #[error(
        "{op} at offset {offset:#x}: the region is no longer registered with this \
         userfaultfd (unregistered, or the mapping was changed)"
    )]
    NotRegistered { op: &'static str, offset: usize },
    /// The kernel kept answering EAGAIN.
    #[error("{op} at offset {offset:#x}: the kernel kept answering EAGAIN; retry later")]
    Busy { op: &'static str, offset: usize },
    /// The kernel reported a fault outside the region (a bug somewhere).
    #[error("userfaultfd reported a fault at {address:#x}, outside the registered region")]
    FaultOutsideRegion { address: u64 },
    /// Any other failure of a userfaultfd operation.
    #[error("{op} failed: {source}")]
    Os { op: &'static str, source: io::Error },
}

impl UffdError {
    fn kind(&self) -> io::ErrorKind {
        use io::ErrorKind as K;
        match self {
            Self::NotPermitted { .. } => K::PermissionDenied,
            Self::NoKernelSupport { .. } | Self::HostPageSize(_) | Self::MissingIoctls { .. } => {
                K::Unsupported
            }
            Self::BadRegion { .. } | Self::BadOffset { .. } | Self::BadPageLength(_) => {
                K::InvalidInput
            }
            Self::NotRegistered { .. } => K::NotFound,
            Self::Busy { .. } => K::ResourceBusy,
            Self::FaultOutsideRegion { .. } => K::InvalidData,
            Self::Setup { source, .. } | Self::Os { source, .. } => source.kind(),
        }
    }
}

impl From<UffdError> for io::Error {
    fn from(err: UffdError) -> Self {
        io::Error::new(err.kind(), err)
    }
}

/// How a page was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// The page was filled; threads waiting on it were woken.
    Done,
    /// The page was already present (filled meanwhile); it was left as is and
    /// any waiters were woken.
    AlreadyPresent,
}

/// The userfaultfd and the region it covers, shared by [`Uffd`] and its
/// [`Resolver`]s.
#[derive(Debug)]
struct Region {
    fd: OwnedFd,
    base: usize,
    len: usize,
}

/// A registered region: waits for page faults and resolves them.
///
/// Dropping it unregisters the region (waking any waiter, who then reads
/// zeros); the file descriptor closes when the last [`Resolver`] is gone.
#[derive(Debug)]
pub struct Uffd {
    region: Arc<Region>,
    registered: bool,
    /// Fault offsets read from the kernel but not yet returned.
    pending: VecDeque<usize>,
}

/// A handle that resolves faults of one [`Uffd`] from any thread.
#[derive(Debug, Clone)]
pub struct Resolver {
    region: Arc<Region>,
}

impl Uffd {
    /// Creates a userfaultfd (`O_CLOEXEC | O_NONBLOCK`), does the `UFFDIO_API`
    /// handshake and registers `len` bytes at `base` in MISSING mode.
    ///
    /// Errors say what to fix: no permission (root / `CAP_SYS_PTRACE` /
    /// `vm.unprivileged_userfaultfd=1` / access to `/dev/userfaultfd`), no
    /// kernel support, or a region that is not page aligned, not private
    /// anonymous memory, not fully mapped or already registered.
    ///
    /// # Safety
    ///
    /// `base..base + len` must be a private anonymous mapping owned by the
    /// caller that stays mapped, and is not replaced, for as long as this
    /// `Uffd` or any [`Resolver`] made from it exists. Its contents must only
    /// be accessed through raw pointers (as guest RAM is), never through Rust
    /// references that assume the bytes cannot change: resolving a fault
    /// writes into pages the program has not written itself.
    pub unsafe fn register(base: *mut u8, len: usize) -> io::Result<Uffd> {
        let host_page = host_page_size();
        if host_page != PAGE_SIZE {
            return Err(UffdError::HostPageSize(host_page).into());
        }
        let base_addr = base as usize;
        let bad = |reason| UffdError::BadRegion {
            base: base_addr,
            len,
            reason,
        };
        if base.is_null() || len == 0 {
            return Err(bad("the region is empty or null").into());
        }
        if !base_addr.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(bad("base and length must be multiples of 4 KiB").into());
        }
        if base_addr.checked_add(len).is_none() {
            return Err(bad("the region wraps around the address space").into());
        }

        let fd = open_userfaultfd()?;
        let mut api = abi::UffdioApi {
            api: abi::UFFD_API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API takes a `struct uffdio_api`, which `api` is.
        unsafe { uffd_ioctl(fd.as_fd(), abi::UFFDIO_API, &mut api) }.map_err(|source| {
            UffdError::Setup {
                what: "UFFDIO_API handshake",
                source,
            }
        })?;

        let mut reg = abi::UffdioRegister {
            range: abi::UffdioRange {
                start: base_addr as u64,
                len: len as u64,
            },
            mode: abi::UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER takes a `struct uffdio_register`, which
        // `reg` is; the caller vouches for the range (see `# Safety`).
        if let Err(err) = unsafe { uffd_ioctl(fd.as_fd(), abi::UFFDIO_REGISTER, &mut reg) } {
            let reason = match err.raw_os_error() {
                Some(libc::EINVAL) => {
                    "the kernel refused it (EINVAL): the region must be page aligned and \
                     private anonymous memory (MAP_PRIVATE|MAP_ANONYMOUS), not file-backed \
                     or shared"
                }
                Some(libc::ENOMEM) => "part of the range is not mapped (ENOMEM)",
                Some(libc::EBUSY) => {
                    "the range is already registered with another userfaultfd (EBUSY)"
                }
                Some(libc::EPERM) => {
                    "the kernel refused it (EPERM): userfaultfd of this kind is not permitted \
                     on this mapping"
                }
                _ => {
                    return Err(UffdError::Os {
                        op: "UFFDIO_REGISTER",
                        source: err,
                    }
                    .into())
                }
            };
            return Err(bad(reason).into());
        }

        let uffd = Uffd {
            region: Arc::new(Region {
                fd,
                base: base_addr,
                len,
            }),
            registered: true,
            pending: VecDeque::with_capacity(READ_BATCH),
        };
        // Dropping `uffd` on this error path unregisters again.
        if reg.ioctls & abi::NEEDED_RANGE_IOCTLS != abi::NEEDED_RANGE_IOCTLS {
            return Err(UffdError::MissingIoctls { ioctls: reg.ioctls }.into());
        }
        Ok(uffd)
    }

    /// Waits up to `timeout` for the next page fault and returns the faulting
    /// page's byte offset from `base` (4 KiB aligned), or `None` on timeout.
    ///
    /// The faulting thread keeps sleeping until the page is resolved.
    /// Events are read in batches; non-fault events are skipped.
    pub fn next_fault(&mut self, timeout: Duration) -> io::Result<Option<usize>> {
        // `None` (a timeout too long to represent) waits without limit.
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if let Some(offset) = self.pending.pop_front() {
                return Ok(Some(offset));
            }
            // Read before polling: under a burst the events are already queued
            // and one read(2) collects several of them.
            if self.read_events()? {
                continue;
            }
            let remaining = match deadline {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(None);
                    }
                    Some(deadline - now)
                }
                None => None,
            };
            wait_readable(self.region.fd.as_fd(), remaining)?;
        }
    }

    /// Fills the page at `offset` with `page` (exactly 4096 bytes) and wakes
    /// the threads waiting on it. See [`Resolver::copy`].
    pub fn copy(&self, offset: usize, page: &[u8]) -> io::Result<Resolve> {
        Ok(self.region.copy(offset, page)?)
    }

    /// Maps the zero page at `offset` and wakes the threads waiting on it.
    /// See [`Resolver::zeropage`].
    pub fn zeropage(&self, offset: usize) -> io::Result<Resolve> {
        Ok(self.region.zeropage(offset)?)
    }

    /// Wakes the threads waiting on the page at `offset`.
    pub fn wake(&self, offset: usize) -> io::Result<()> {
        Ok(self.region.wake(offset)?)
    }

    /// Unregisters the whole region: it becomes ordinary memory again, so
    /// missing pages read as zeros without faulting. Threads still waiting
    /// on a fault are woken and see zeros. Calling it twice is harmless.
    pub fn unregister(&mut self) -> io::Result<()> {
        if !self.registered {
            return Ok(());
        }
        let mut range = abi::UffdioRange {
            start: self.region.base as u64,
            len: self.region.len as u64,
        };
        // SAFETY: UFFDIO_UNREGISTER takes a `struct uffdio_range`, which
        // `range` is.
        unsafe { uffd_ioctl(self.region.fd.as_fd(), abi::UFFDIO_UNREGISTER, &mut range) }.map_err(
            |source| UffdError::Os {
                op: "UFFDIO_UNREGISTER",
                source,
            },
        )?;
        self.registered = false;
        self.pending.clear();
        Ok(())
    }

    /// A handle that resolves faults from other threads while this one
    /// waits in [`Uffd::next_fault`].
    pub fn resolver(&self) -> Resolver {
        Resolver {
            region: Arc::clone(&self.region),
        }
    }

    /// Reads one batch of events into `pending`; false when none was queued.
    fn read_events(&mut self) -> Result<bool, UffdError> {
        let mut buf = [0u8; abi::MSG_SIZE * READ_BATCH];
        // SAFETY: `buf` is writable for `buf.len()` bytes during the call.
        let n = unsafe {
            libc::read(
                self.region.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let n = match usize::try_from(n) {
            Ok(n) => n,
            Err(_) => {
                let err = io::Error::last_os_error();
                return match err.raw_os_error() {
                    Some(libc::EAGAIN | libc::EINTR) => Ok(false),
                    _ => Err(UffdError::Os {
                        op: "reading userfaultfd events",
                        source: err,
                    }),
                };
            }
        };
        let mut outside = None;
        for msg in buf[..n].chunks_exact(abi::MSG_SIZE) {
            if msg[abi::MSG_EVENT] != abi::UFFD_EVENT_PAGEFAULT {
                continue;
            }
            let mut address = [0u8; 8];
            address.copy_from_slice(&msg[abi::MSG_FAULT_ADDRESS]);
            let address = u64::from_ne_bytes(address);
            match self.region.offset_of(address) {
                Some(offset) => self.pending.push_back(offset),
                None => outside = Some(address),
            }
        }
        match outside {
            // Keep the good events of the batch; report the bad one now.
            Some(address) => Err(UffdError::FaultOutsideRegion { address }),
            None => Ok(n > 0),
        }
    }
}

impl Drop for Uffd {
    fn drop(&mut self) {
        // Nothing to report to from a destructor; closing the fd would
        // unregister too, but Resolvers may keep it open.
        let _ = self.unregister();
    }
}

impl Resolver {
    /// Fills the page at `offset` with `page` (exactly 4096 bytes, not inside
    /// the region) and wakes the threads waiting on it. A page that is
    /// already present is left unchanged: [`Resolve::AlreadyPresent`].
    pub fn copy(&self, offset: usize, page: &[u8]) -> io::Result<Resolve> {
        Ok(self.region.copy(offset, page)?)
    }

    /// Maps the shared zero page at `offset` (a later write copies it as
    /// usual) and wakes the threads waiting on it.
    pub fn zeropage(&self, offset: usize) -> io::Result<Resolve> {
        Ok(self.region.zeropage(offset)?)
    }

    /// Wakes the threads waiting on the page at `offset`.
    pub fn wake(&self, offset: usize) -> io::Result<()> {
        Ok(self.region.wake(offset)?)
    }
}

impl Region {
    /// Host address of the page at `offset`, if it is an aligned page inside.
    fn page_address(&self, offset: usize) -> Result<u64, UffdError> {
        if !offset.is_multiple_of(PAGE_SIZE) || offset >= self.len {
            return Err(UffdError::BadOffset {
                offset,
                len: self.len,
            });
        }
        // `register` checked that base + len does not overflow.
        Ok((self.base + offset) as u64)
    }

    /// Page offset of a faulting host address, if it lies in the region.
    fn offset_of(&self, address: u64) -> Option<usize> {
        let offset = usize::try_from(address).ok()?.checked_sub(self.base)?;
        (offset < self.len).then_some(offset & !(PAGE_SIZE - 1))
    }

    fn copy(&self, offset: usize, page: &[u8]) -> Result<Resolve, UffdError> {
        if page.len() != PAGE_SIZE {
            return Err(UffdError::BadPageLength(page.len()));
        }
        let dst = self.page_address(offset)?;
        self.resolve("UFFDIO_COPY", offset, |fd| {
            let mut arg = abi::UffdioCopy {
                dst,
                src: page.as_ptr() as u64,
                len: PAGE_SIZE as u64,
                mode: 0,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY takes a `struct uffdio_copy`, which `arg`
            // is; `src` points at `page`, readable for PAGE_SIZE bytes, and
            // `dst` is a page inside the registered region.
            unsafe { uffd_ioctl(fd, abi::UFFDIO_COPY, &mut arg) }
        })
    }

    fn zeropage(&self, offset: usize) -> Result<Resolve, UffdError> {
        let start = self.page_address(offset)?;
        self.resolve("UFFDIO_ZEROPAGE", offset, |fd| {
            let mut arg = abi::UffdioZeropage {
                range: abi::UffdioRange {
                    start,
                    len: PAGE_SIZE as u64,
                },
                mode: 0,
                zeropage: 0,
            };
            // SAFETY: UFFDIO_ZEROPAGE takes a `struct uffdio_zeropage`, which
            // `arg` is; the range is one page inside the registered region.
            unsafe { uffd_ioctl(fd, abi::UFFDIO_ZEROPAGE, &mut arg) }
        })
    }

    fn wake(&self, offset: usize) -> Result<(), UffdError> {
        let mut range = abi::UffdioRange {
            start: self.page_address(offset)?,
            len: PAGE_SIZE as u64,
        };
        // SAFETY: UFFDIO_WAKE takes a `struct uffdio_range`, which `range` is.
        unsafe { uffd_ioctl(self.fd.as_fd(), abi::UFFDIO_WAKE, &mut range) }.map_err(
            |err| match err.raw_os_error() {
                Some(libc::ENOENT) => UffdError::NotRegistered {
                    op: "UFFDIO_WAKE",
                    offset,
                },
                _ => UffdError::Os {
                    op: "UFFDIO_WAKE",
                    source: err,
                },
            },
        )
    }

    /// Runs a one-page fill ioctl, turning the kernel's answers into a
    /// [`Resolve`]: EEXIST means someone filled the page first (wake its
    /// waiters anyway, they may have queued behind that fill); EAGAIN means
    /// the address space was changing, so the kernel asks for a retry. A
    /// one-page fill is all or nothing, so a retry redoes the whole page.
    fn resolve(
        &self,
        op: &'static str,
        offset: usize,
        mut fill: impl FnMut(BorrowedFd<'_>) -> io::Result<()>,
    ) -> Result<Resolve, UffdError> {
        for attempt in 0..MAX_EAGAIN_RETRIES {
            let err = match fill(self.fd.as_fd()) {
                Ok(()) => return Ok(Resolve::Done),
                Err(err) => err,
            };
            match err.raw_os_error() {
                Some(libc::EEXIST) => {
                    self.wake(offset)?;
                    return Ok(Resolve::AlreadyPresent);
                }
                Some(libc::EAGAIN | libc::EINTR) => {
                    if attempt < 16 {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                }
                Some(libc::ENOENT) => return Err(UffdError::NotRegistered { op, offset }),
                _ => return Err(UffdError::Os { op, source: err }),
            }
        }
        Err(UffdError::Busy { op, offset })
    }
}

/// Issues one userfaultfd ioctl.
///
/// # Safety
///
/// `arg` must be the argument struct `request` expects, and any addresses
/// in it must satisfy that ioctl's contract.
unsafe fn uffd_ioctl<T>(fd: BorrowedFd<'_>, request: libc::Ioctl, arg: &mut T) -> io::Result<()> {
    // SAFETY: forwarded from the caller; `arg` is a live, exclusive borrow.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg as *mut T) };
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Creates a non-blocking, close-on-exec userfaultfd that handles kernel-mode
/// faults too (device threads `read(2)` into guest RAM): the syscall first,
/// then `/dev/userfaultfd` (Linux 6.1+), whose file permissions can grant
/// what the syscall denies.
fn open_userfaultfd() -> Result<OwnedFd, UffdError> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: userfaultfd(2) takes one int of flags and returns a new fd or -1.
    let ret = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if let Ok(fd) = RawFd::try_from(ret) {
        if fd >= 0 {
            // SAFETY: `fd` was just created and is owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSYS) => Err(UffdError::NoKernelSupport { source: err }),
        Some(libc::EPERM) => {
            open_dev_userfaultfd(flags).map_err(|_| UffdError::NotPermitted { source: err })
        }
        _ => Err(UffdError::Setup {
            what: "userfaultfd(2)",
            source: err,
        }),
    }
}

fn open_dev_userfaultfd(flags: libc::c_int) -> io::Result<OwnedFd> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")?;
    // SAFETY: USERFAULTFD_IOC_NEW takes the new fd's flags by value and
    // returns a new fd or -1.
    let fd = unsafe { libc::ioctl(dev.as_raw_fd(), abi::USERFAULTFD_IOC_NEW, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sleeps until `fd` is readable or `timeout` (None: forever) passes.
/// Returning early (signal, spurious wakeup) is fine: the caller loops.
fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<(), UffdError> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // ppoll rather than poll: microsecond timeouts are not rounded to 0 ms.
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        // Always below 1e9, so it fits.
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
    // SAFETY: `pfd` is one valid pollfd, `ts_ptr` is null or points at `ts`,
    // which outlives the call; a null sigmask keeps the current mask.
    let ret = unsafe { libc::ppoll(&mut pfd, 1, ts_ptr, std::ptr::null()) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EINTR) => Ok(()),
            _ => Err(UffdError::Os {
                op: "polling the userfaultfd",
                source: err,
            }),
        };
    }
    if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
        return Err(UffdError::Os {
            op: "polling the userfaultfd",
            source: io::Error::other(format!("poll reported revents {:#x}", pfd.revents)),
        });
    }
    Ok(())
}

fn host_page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;

    /// No wait in these tests may last longer than this.
    const TEST_TIMEOUT: Duration = Duration::from_secs(10);
    const SHORT: Duration = Duration::from_millis(50);

    /// A test mapping, unmapped on drop.
    struct Mapping {
        ptr: *mut u8,
        len: usize,
    }

    impl Mapping {
        /// Guest-RAM-like memory: private, anonymous, no reserve.
        fn anon(pages: usize) -> Mapping {
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
            Mapping::map(pages * PAGE_SIZE, flags, -1)
        }

        fn map(len: usize, flags: libc::c_int, fd: RawFd) -> Mapping {
            let prot = libc::PROT_READ | libc::PROT_WRITE;
            // SAFETY: a new mapping with no address hint, checked below.
            let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
            assert_ne!(
                ptr,
                libc::MAP_FAILED,
                "mmap: {}",
                io::Error::last_os_error()
            );
            Mapping {
                ptr: ptr.cast(),
                len,
            }
        }

        fn addr(&self) -> usize {
            self.ptr as usize
        }

        fn register(&self) -> Uffd {
            // SAFETY: a private anonymous mapping that every test declares
            // before its Uffd, so it is dropped (unmapped) after it.
            unsafe { Uffd::register(self.ptr, self.len) }.expect("Uffd::register")
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // A failing test may leave a toucher thread reading the mapping
            // (woken with zeros by the unregister): leak it rather than have
            // that thread crash the whole test binary.
            if thread::panicking() {
                return;
            }
            // SAFETY: unmaps exactly what `map` mapped; no thread uses it any more.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }

    /// Reads a whole page at host address `addr`, faulting it in if missing.
    fn read_page(addr: usize) -> Vec<u8> {
        let mut out = vec![0u8; PAGE_SIZE];
        let src = addr as *const u8;
        // SAFETY: `addr` is a page of a live test mapping; the first read
        // faults (and blocks until resolved), the copy then reads a present
        // page. Raw reads only: the kernel may fill the page concurrently.
        unsafe {
            std::ptr::read_volatile(src);
            std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), PAGE_SIZE);
        }
        out
    }

    /// A recognisable, non-zero page for page index `index`.
    fn pattern(index: usize) -> Vec<u8> {
        (0..PAGE_SIZE / 8)
            .flat_map(|word| (0xA5u64 << 56 | (index as u64) << 32 | word as u64).to_ne_bytes())
            .collect()
    }

    /// Runs `f` on its own thread; the receiver yields its result.
    fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx
    }

    /// Joins a `spawn`ed thread, failing the test after TEST_TIMEOUT.
    fn join<T>(rx: mpsc::Receiver<T>, what: &str) -> T {
        rx.recv_timeout(TEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("{what} did not finish within {TEST_TIMEOUT:?}: {e}"))
    }

    fn next(uffd: &mut Uffd) -> usize {
        uffd.next_fault(TEST_TIMEOUT)
            .expect("next_fault")
            .expect("no fault arrived within TEST_TIMEOUT")
    }

    #[test]
    fn uffd_ioctl_numbers_match_the_header() {
        // Values printed by a C program including <linux/userfaultfd.h>.
        assert_eq!(abi::UFFDIO_API, 0xc018_aa3f);
        assert_eq!(abi::UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(abi::UFFDIO_UNREGISTER, 0x8010_aa01);
        assert_eq!(abi::UFFDIO_WAKE, 0x8010_aa02);
        assert_eq!(abi::UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(abi::UFFDIO_ZEROPAGE, 0xc020_aa04);
        assert_eq!(abi::USERFAULTFD_IOC_NEW, 0xaa00);
    }

    #[test]
    fn uffd_serves_every_touched_page_with_copy() {
        const PAGES: usize = 64;
        let map = Mapping::anon(PAGES);
        let mut uffd = map.register();
        // 37 is coprime with 64: every page once, out of order.
        let order: Vec<usize> = (0..PAGES).map(|i| i * 37 % PAGES).collect();
        let (base, touch) = (map.addr(), order.clone());
        let toucher = spawn(move || {
            touch
                .iter()
                .map(|&page| read_page(base + page * PAGE_SIZE))
                .collect::<Vec<_>>()
        });

        let mut served = Vec::new();
        while served.len() < PAGES {
            let offset = next(&mut uffd);
            let page = offset / PAGE_SIZE;
            assert_eq!(
                uffd.copy(offset, &pattern(page)).expect("copy"),
                Resolve::Done
            );
            served.push(page);
        }
        let contents = join(toucher, "toucher");
        assert_eq!(served, order, "one fault per touched page, in touch order");
        for (page, content) in order.iter().zip(&contents) {
            assert!(*content == pattern(*page), "page {page} has wrong contents");
        }
        assert_eq!(uffd.next_fault(SHORT).expect("next_fault"), None);
    }

    #[test]
    fn uffd_zeropage_and_already_present() {
        let map = Mapping::anon(4);
        let mut uffd = map.register();

        // A faulting thread woken by zeropage reads zeros.
        let base = map.addr();
        let toucher = spawn(move || read_page(base + 2 * PAGE_SIZE));
        assert_eq!(next(&mut uffd), 2 * PAGE_SIZE);
        assert_eq!(
            uffd.zeropage(2 * PAGE_SIZE).expect("zeropage"),
            Resolve::Done
        );
        assert!(join(toucher, "toucher").iter().all(|&b| b == 0));

        // Filling ahead of any fault (pre-paging), then filling again.
        assert_eq!(uffd.copy(0, &pattern(0)).expect("copy"), Resolve::Done);
        let again = uffd.copy(0, &pattern(9)).expect("second copy");
        assert_eq!(again, Resolve::AlreadyPresent);
        assert_eq!(uffd.zeropage(0).expect("zeropage"), Resolve::AlreadyPresent);
        assert!(
            read_page(base) == pattern(0),
            "a second fill changed the page"
        );

        // A zero page is present too: copy does not overwrite it.
        let over_zero = uffd.copy(2 * PAGE_SIZE, &pattern(2)).expect("copy");
        assert_eq!(over_zero, Resolve::AlreadyPresent);
        assert!(read_page(base + 2 * PAGE_SIZE).iter().all(|&b| b == 0));
        assert_eq!(uffd.next_fault(SHORT).expect("next_fault"), None);
    }

    #[test]
    fn uffd_dontneed_makes_a_page_missing_again() {
        let map = Mapping::anon(8);
        let mut uffd = map.register();
        let offset = 5 * PAGE_SIZE;
        assert_eq!(uffd.copy(offset, &pattern(5)).expect("copy"), Resolve::Done);
        assert!(read_page(map.addr() + offset) == pattern(5));

        // SAFETY: drops one page of the test mapping; nothing references it.
        let ret =
            unsafe { libc::madvise(map.ptr.add(offset).cast(), PAGE_SIZE, libc::MADV_DONTNEED) };
        assert_eq!(ret, 0, "madvise: {}", io::Error::last_os_error());

        let addr = map.addr() + offset;
        let toucher = spawn(move || read_page(addr));
        assert_eq!(next(&mut uffd), offset);
        assert_eq!(uffd.zeropage(offset).expect("zeropage"), Resolve::Done);
        assert!(join(toucher, "toucher").iter().all(|&b| b == 0));
    }

    #[test]
    fn uffd_unregister_turns_the_region_into_ordinary_memory() {
        let map = Mapping::anon(4);
        let mut uffd = map.register();
        let resolver = uffd.resolver();
        let base = map.addr();

        // A thread still waiting when the region is unregistered is woken
        // and reads zeros.
        let waiting = spawn(move || read_page(base));
        assert_eq!(next(&mut uffd), 0);
        uffd.unregister().expect("unregister");
        assert!(join(waiting, "waiting toucher").iter().all(|&b| b == 0));

        // A never-populated page now reads zero without any fault.
        let toucher = spawn(move || read_page(base + 2 * PAGE_SIZE));
        assert!(join(toucher, "toucher").iter().all(|&b| b == 0));
        assert_eq!(uffd.next_fault(SHORT).expect("next_fault"), None);

        // Resolving is now an error, not a write into ordinary memory.
        let err = resolver.copy(3 * PAGE_SIZE, &pattern(3)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert!(read_page(base + 3 * PAGE_SIZE).iter().all(|&b| b == 0));
        uffd.unregister().expect("second unregister is a no-op");
    }

    #[test]
    fn uffd_resolver_serves_from_another_thread() {
        const PAGES: usize = 32;
        let map = Mapping::anon(PAGES);
        let uffd = map.register();
        let resolver = uffd.resolver();
        let (to_resolver, offsets) = mpsc::channel::<usize>();

        // Thread A waits for faults and forwards their offsets ...
        let waiter = spawn(move || {
            let mut uffd = uffd;
            for _ in 0..PAGES {
                match uffd.next_fault(TEST_TIMEOUT) {
                    Ok(Some(offset)) => to_resolver.send(offset).expect("resolver gone"),
                    other => return Err(format!("next_fault: {other:?}")),
                }
            }
            Ok(uffd) // dropped by the test thread, before the mapping
        });
        // ... thread B resolves them ...
        let resolving = spawn(move || {
            let mut done = 0;
            while let Ok(offset) = offsets.recv_timeout(TEST_TIMEOUT) {
                let page = pattern(offset / PAGE_SIZE);
                if resolver.copy(offset, &page).expect("copy") == Resolve::Done {
                    done += 1;
                }
            }
            done
        });
        // ... while a third thread touches the pages backwards.
        let base = map.addr();
        let toucher = spawn(move || {
            (0..PAGES)
                .rev()
                .all(|page| read_page(base + page * PAGE_SIZE) == pattern(page))
        });

        assert!(join(toucher, "toucher"), "a page had wrong contents");
        let uffd = join(waiter, "fault waiter").expect("fault waiter");
        assert_eq!(join(resolving, "resolver"), PAGES);
        drop(uffd);
    }

    #[test]
    fn uffd_rejects_bad_input() {
        let map = Mapping::anon(4);
        let uffd = map.register();
        let resolver = uffd.resolver();
        let page = pattern(0);
        let invalid = |result: io::Result<Resolve>| {
            let err = result.expect_err("bad input accepted");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        };
        invalid(uffd.copy(1, &page));
        invalid(uffd.copy(4 * PAGE_SIZE, &page));
        invalid(uffd.copy(usize::MAX & !(PAGE_SIZE - 1), &page));
        invalid(uffd.copy(0, &page[..PAGE_SIZE - 1]));
        invalid(uffd.copy(0, &[0u8; PAGE_SIZE + 1]));
        invalid(uffd.copy(0, &[]));
        invalid(resolver.zeropage(PAGE_SIZE / 2));
        invalid(resolver.zeropage(4 * PAGE_SIZE));
        let err = resolver.wake(usize::MAX).expect_err("bad wake accepted");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // Nothing was filled by the rejected calls.
        assert_eq!(uffd.copy(0, &page).expect("copy"), Resolve::Done);

        // Registering: misaligned, empty, already registered, file-backed.
        let register = |base: *mut u8, len: usize| {
            // SAFETY: every call below fails before or in UFFDIO_REGISTER, so
            // no Uffd outlives this test's mappings.
            unsafe { Uffd::register(base, len) }.expect_err("bad region accepted")
        };
        // SAFETY: one byte into the mapping, still inside it.
        let err = register(unsafe { map.ptr.add(1) }, PAGE_SIZE);
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        let err = register(map.ptr, 0);
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        let err = register(map.ptr, map.len);
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("EBUSY"), "{err}");

        let path = std::env::temp_dir().join(format!("godwit-uffd-{}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("temp file");
        file.set_len(4 * PAGE_SIZE as u64).expect("set_len");
        let file_map = Mapping::map(4 * PAGE_SIZE, libc::MAP_PRIVATE, file.as_raw_fd());
        let err = register(file_map.ptr, file_map.len);
        let _ = std::fs::remove_file(&path);
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("anonymous"), "{err}");
    }

    /// Fault -> copy -> wake round trip as the faulting thread sees it, and
    /// the UFFDIO_COPY call alone, as sorted durations.
    fn round_trips(pages: usize, gap: Duration) -> (Vec<Duration>, Vec<Duration>) {
        let map = Mapping::anon(pages);
        let mut uffd = map.register();
        let base = map.addr();
        let toucher = spawn(move || {
            (0..pages)
                .map(|page| {
                    // A gap lets the handler fall asleep in ppoll, as it
                    // usually is when a vCPU faults.
                    if !gap.is_zero() {
                        thread::sleep(gap);
                    }
                    let start = Instant::now();
                    // SAFETY: a page of the live test mapping; the read
                    // faults and blocks until the test thread resolves it.
                    unsafe { std::ptr::read_volatile((base + page * PAGE_SIZE) as *const u8) };
                    start.elapsed()
                })
                .collect::<Vec<_>>()
        });
        let page = pattern(1);
        let mut copies = Vec::with_capacity(pages);
        for _ in 0..pages {
            let offset = next(&mut uffd);
            let start = Instant::now();
            assert_eq!(uffd.copy(offset, &page).expect("copy"), Resolve::Done);
            copies.push(start.elapsed());
        }
        let mut trips = join(toucher, "toucher");
        trips.sort();
        copies.sort();
        (trips, copies)
    }

    /// Prints the round-trip figures (visible with `--nocapture`); asserts
    /// nothing about time.
    #[test]
    fn uffd_fault_round_trip_latency() {
        const PAGES: usize = 2000;
        let us = |sorted: &[Duration], p: usize| {
            sorted[(sorted.len() - 1) * p / 100].as_secs_f64() * 1e6
        };
        for (label, gap) in [
            ("back-to-back faults", Duration::ZERO),
            (
                "handler idle (100 us between faults)",
                Duration::from_micros(100),
            ),
        ] {
            let (trips, copies) = round_trips(PAGES, gap);
            eprintln!(
                "uffd round trip, {label}, {PAGES} faults: fault -> next_fault -> copy -> wake \
                 p50 {:.1} us, p99 {:.1} us, max {:.1} us; UFFDIO_COPY call p50 {:.1} us, \
                 p99 {:.1} us",
                us(&trips, 50),
                us(&trips, 99),
                us(&trips, 100),
                us(&copies, 50),
                us(&copies, 99),
            );
        }
    }

    #[test]
    fn uffd_handles_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Uffd>();
        send_sync::<Resolver>();
    }
}

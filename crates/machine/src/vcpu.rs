//! The vCPU threads: one host thread per hart, running in parallel.
//!
//! A vCPU thread holds its hart's lock while it runs guest code and lets go
//! of it whenever it is *out*: parked (the VM is stopped or paused), asleep
//! in `wfi`, or stopped (SBI HSM). Whoever needs the harts (a snapshot, the
//! dirty log, a migration) stops them with [`stop_harts`]: it raises a stop
//! request, kicks every vCPU, waits until each is out and then takes the
//! harts' locks; the vCPUs park until the request is withdrawn.
//!
//! Harts ask each other for things (an IPI, a remote `sfence.vma`, a remote
//! `fence.i`, dropping cached write translations) through [`HartSignal::post`].
//! A running target serves requests at its next slice boundary and
//! acknowledges; a target that is out serves them before it runs again, so
//! nobody waits for it ([`wait_served`]). Both sides publish their half with
//! sequentially consistent operations in opposite orders (store then load),
//! so a request is never both missed by the target and not waited for.

use crate::bus::{lock, HartBus};
use crate::sbi::{self, RemoteFence, ResetRequest, SbiHarts};
use crate::state::HartRun;
use crate::vm::Shared;
use crate::GuestExit;
use godwit_devices::FinisherRequest;
use godwit_hart::{irq, Exit, GuestClock, Hart};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::*};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Instructions per run slice: between slices the vCPU looks at its signal.
const SLICE: u64 = 20_000;
/// Longest sleep in `wfi` without any timer armed (a safety net only:
/// every interrupt source wakes the thread itself).
const MAX_IDLE: Duration = Duration::from_secs(1);

/// Request: drop every cached translation (remote `sfence.vma`).
pub(crate) const REQ_FLUSH_TLB: u32 = 1;
/// Request: drop cached write translations (dirty log, free map).
pub(crate) const REQ_FLUSH_WRITES: u32 = 2;
/// Request: drop translated code (remote `fence.i`).
pub(crate) const REQ_FENCE_I: u32 = 4;
/// Request: raise a supervisor software interrupt (SBI IPI).
pub(crate) const REQ_IPI: u32 = 8;

const HSM_STOPPED: u8 = 0;
const HSM_STARTED: u8 = 1;
const HSM_START_PENDING: u8 = 2;

/// What other threads use to reach one hart without its lock.
pub(crate) struct HartSignal {
    /// External interrupt lines (MEIP, SEIP, MSIP) as `mip` bits.
    lines: AtomicU64,
    /// The CLINT's `mtimecmp` for this hart (MTIP is `time >= mtimecmp`).
    mtimecmp: AtomicU64,
    clock: GuestClock,
    /// Something changed: look at it at the next slice boundary.
    attention: AtomicBool,
    requests: AtomicU32,
    posted: AtomicU64,
    served: AtomicU64,
    /// The thread runs guest code (holds the hart); false while out.
    running: AtomicBool,
    /// HSM state.
    hsm: AtomicU8,
    /// `hart_start`'s address and opaque argument.
    start: Mutex<(u64, u64)>,
    /// Wakes the thread from `wfi`, a park or HSM stop.
    nap: Mutex<bool>,
    nap_cv: Condvar,
}

impl HartSignal {
    pub fn new(clock: GuestClock, run: HartRun) -> HartSignal {
        HartSignal {
            lines: AtomicU64::new(0),
            mtimecmp: AtomicU64::new(u64::MAX),
            clock,
            attention: AtomicBool::new(true),
            requests: AtomicU32::new(0),
            posted: AtomicU64::new(0),
            served: AtomicU64::new(0),
            running: AtomicBool::new(false),
            hsm: AtomicU8::new(match run {
                HartRun::Started => HSM_STARTED,
                HartRun::Stopped => HSM_STOPPED,
            }),
            start: Mutex::new((0, 0)),
            nap: Mutex::new(false),
            nap_cv: Condvar::new(),
        }
    }

    /// The externally driven lines, MTIP included, as `mip` bits.
    pub fn lines(&self) -> u64 {
        let mut l = self.lines.load(Acquire);
        if self.clock.ticks() >= self.mtimecmp.load(Relaxed) {
            l |= irq::MTIP;
        }
        l
    }

    /// Sets the bits `mask` of the external lines to `value`; wakes the
    /// hart when they changed.
    pub fn set_lines(&self, mask: u64, value: u64) {
        let old = self.lines.load(Acquire);
        let new = (old & !mask) | (value & mask);
        if old != new {
            self.lines.fetch_and(!mask, AcqRel);
            self.lines.fetch_or(value & mask, AcqRel);
            self.kick();
        }
    }

    /// The CLINT wrote `mtimecmp`.
    pub fn set_mtimecmp(&self, v: u64) {
        if self.mtimecmp.swap(v, AcqRel) != v {
            self.kick();
        }
    }

    /// Makes the thread look at its signal soon, waking it if it sleeps.
    pub fn kick(&self) {
        self.attention.store(true, Release);
        let mut woken = lock(&self.nap);
        *woken = true;
        self.nap_cv.notify_one();
    }

    /// Posts `req` (REQ_* bits); returns the ticket [`wait_served`] waits for.
    pub fn post(&self, req: u32) -> u64 {
        self.requests.fetch_or(req, SeqCst);
        let ticket = self.posted.fetch_add(1, SeqCst) + 1;
        self.kick();
        ticket
    }

    /// True once the target served `ticket`, or is out (it then serves it
    /// before it runs again).
    fn is_served(&self, ticket: u64) -> bool {
        !self.running.load(SeqCst) || self.served.load(SeqCst) >= ticket
    }

    /// Sets the hart's HSM state from a saved state (the VM is stopped).
    pub fn set_run_state(&self, run: HartRun) {
        self.hsm.store(
            match run {
                HartRun::Started => HSM_STARTED,
                HartRun::Stopped => HSM_STOPPED,
            },
            Release,
        );
        self.kick();
    }

    /// The hart's HSM state for a saved state.
    pub fn run_state(&self) -> HartRun {
        match self.hsm.load(Acquire) {
            HSM_STOPPED => HartRun::Stopped,
            _ => HartRun::Started,
        }
    }

    /// Sleeps until kicked or `timeout`.
    fn nap(&self, timeout: Duration) {
        let mut woken = lock(&self.nap);
        if !*woken {
            woken = self
                .nap_cv
                .wait_timeout(woken, timeout)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        *woken = false;
    }
}

/// Waits until every ticket in `tickets` (hart, ticket) is served. `own`
/// is the waiting vCPU's hart, whose own requests it keeps serving
/// meanwhile (two harts may wait for each other).
pub(crate) fn wait_served(
    shared: &Shared,
    tickets: &[(usize, u64)],
    own: Option<(&mut Hart, usize)>,
) {
    let mut own = own;
    loop {
        if let Some((hart, id)) = own.as_mut() {
            serve(shared, hart, *id);
        }
        if tickets.iter().all(|&(h, t)| shared.sigs[h].is_served(t)) {
            return;
        }
        let g = lock(&shared.acks);
        // Re-check under the lock: acknowledgements notify under it.
        if tickets.iter().all(|&(h, t)| shared.sigs[h].is_served(t)) {
            return;
        }
        let _ = shared.acks_cv.wait_timeout(g, Duration::from_millis(1));
    }
}

/// Posts `req` to every hart in `targets` but `except` and waits until they
/// served it.
pub(crate) fn request_harts(
    shared: &Shared,
    targets: impl Iterator<Item = usize>,
    req: u32,
    except: Option<(&mut Hart, usize)>,
) {
    let me = except.as_ref().map(|(_, id)| *id);
    let tickets: Vec<(usize, u64)> = targets
        .filter(|&h| Some(h) != me)
        .map(|h| (h, shared.sigs[h].post(req)))
        .collect();
    wait_served(shared, &tickets, except);
}

/// Serves the hart's pending requests.
pub(crate) fn serve(shared: &Shared, hart: &mut Hart, id: usize) {
    let sig = &shared.sigs[id];
    let posted = sig.posted.load(SeqCst);
    let req = sig.requests.swap(0, SeqCst);
    if req & REQ_FLUSH_TLB != 0 {
        hart.tlb_flush();
    }
    if req & REQ_FLUSH_WRITES != 0 {
        hart.tlb_flush_writes();
    }
    if req & REQ_FENCE_I != 0 {
        hart.fence_i();
    }
    if req & REQ_IPI != 0 {
        hart.set_software_interrupt();
    }
    if sig.served.load(SeqCst) < posted {
        sig.served.store(posted, SeqCst);
        let _g = lock(&shared.acks);
        shared.acks_cv.notify_all();
    }
}

/// The stop in force: while it lives, every vCPU is out and parked.
pub(crate) struct Stopped<'a> {
    shared: &'a Shared,
    pub harts: Vec<MutexGuard<'a, Hart>>,
    pub latency: Duration,
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.harts.clear();
        self.shared.ctl.stops.fetch_sub(1, SeqCst);
        self.shared.wake_parked();
    }
}

/// Asks every vCPU to stop and waits at most `limit` until all are out;
/// returns the harts still in (a vCPU blocked inside a guest memory access,
/// e.g. on a post-copy page that has not arrived, cannot be out). Those
/// stop at their next instruction boundary as long as a stop or a pause is
/// in force; this one ends when it returns.
pub(crate) fn stop_harts_within(shared: &Shared, limit: Duration) -> (Duration, Vec<usize>) {
    let t = Instant::now();
    shared.ctl.stops.fetch_add(1, SeqCst);
    for sig in &shared.sigs {
        sig.kick();
    }
    let running = || -> Vec<usize> {
        (0..shared.sigs.len())
            .filter(|&i| shared.sigs[i].running.load(SeqCst))
            .collect()
    };
    let mut g = lock(&shared.acks);
    let mut left = running();
    while !left.is_empty() && t.elapsed() < limit {
        g = shared
            .acks_cv
            .wait_timeout(g, Duration::from_millis(1))
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
        left = running();
    }
    drop(g);
    let latency = t.elapsed();
    shared.ctl.stops.fetch_sub(1, SeqCst);
    shared.wake_parked();
    (latency, left)
}

/// Stops every vCPU and takes its hart. The latency is the time until the
/// last one was out.
pub(crate) fn stop_harts(shared: &Shared) -> Stopped<'_> {
    let t = Instant::now();
    shared.ctl.stops.fetch_add(1, SeqCst);
    for sig in &shared.sigs {
        sig.kick();
    }
    let mut g = lock(&shared.acks);
    while shared.sigs.iter().any(|sig| sig.running.load(SeqCst)) {
        g = shared
            .acks_cv
            .wait_timeout(g, Duration::from_millis(1))
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
    }
    drop(g);
    let latency = t.elapsed();
    let harts = shared.harts.iter().map(|h| lock(h)).collect();
    Stopped {
        shared,
        harts,
        latency,
    }
}

/// Why a vCPU lets go of its hart.
enum Out {
    /// Stop requested, VM paused, or the hart is HSM-stopped.
    Park,
    /// `wfi` with nothing pending: sleep until the next timer deadline.
    Wfi(Duration),
    /// The throttle is on: sleep this long.
    Throttle(Duration),
    /// The VM ends.
    Exit,
}

/// The thread of hart `id`.
pub(crate) fn vcpu_main(shared: &Shared, id: usize) {
    let sig = &shared.sigs[id];
    loop {
        let mut hart = lock(&shared.harts[id]);
        sig.running.store(true, SeqCst);
        if sig.hsm.load(Acquire) == HSM_START_PENDING {
            let (addr, opaque) = *lock(&sig.start);
            hart.hsm_start(addr, opaque);
            sig.hsm.store(HSM_STARTED, Release);
        }
        let out = if shared.must_park(id) {
            Out::Park
        } else {
            run_hart(shared, &mut hart, id)
        };
        if !matches!(out, Out::Exit) {
            // Out for a while: no write translations held meanwhile, so
            // the harts still running need not wait for this one before
            // they trust the code they translate (`Hart::fence_i`).
            hart.release_writes();
        }
        sig.running.store(false, SeqCst);
        drop(hart);
        {
            let _g = lock(&shared.acks);
            shared.acks_cv.notify_all();
        }
        match out {
            Out::Exit => return,
            Out::Wfi(d) => sig.nap(d),
            Out::Throttle(d) => throttle_nap(shared, id, d),
            Out::Park => {
                if shared.exited() {
                    return;
                }
                shared.park(id);
            }
        }
    }
}

/// How long a throttled vCPU runs between two sleeps.
const THROTTLE_RUN: Duration = Duration::from_millis(1);

/// Sleeps `d` for the throttle. Interrupts do not end it (they would cut
/// every sleep short at the guest's timer rate), and requests wait as for
/// any vCPU that is out; a stop, the VM's end or the throttle going off do.
fn throttle_nap(shared: &Shared, id: usize, d: Duration) {
    let start = Instant::now();
    let until = start + d;
    loop {
        let now = Instant::now();
        if now >= until
            || shared.must_park(id)
            || shared.exited()
            || shared.ctl.throttle.load(SeqCst) == 0
        {
            break;
        }
        shared.sigs[id].nap(until - now);
    }
    shared
        .ctl
        .throttled_ns
        .fetch_add(start.elapsed().as_nanos() as u64, SeqCst);
}

/// Runs slices until the hart must let go.
fn run_hart(shared: &Shared, hart: &mut Hart, id: usize) -> Out {
    let sig = &shared.sigs[id];
    let ran_since = Instant::now();
    let mut bus = HartBus {
        devices: &shared.devices,
        harts: shared.signals(),
        hart: id,
    };
    loop {
        if sig.attention.swap(false, AcqRel) {
            serve(shared, hart, id);
            if shared.must_park(id) {
                return Out::Park;
            }
        }
        hart.set_irq_lines(sig.lines());
        hart.update_timer();
        let exit = hart.run(&mut bus, SLICE);
        if let Some(r) = shared.devices.take_finisher_request() {
            shared.devices.flush_console();
            shared.set_exit(match r {
                FinisherRequest::PowerOff => GuestExit::PowerOff,
                FinisherRequest::Fail(_) => GuestExit::Failure,
                FinisherRequest::Reset => GuestExit::Reboot,
            });
            return Out::Exit;
        }
        match exit {
            Exit::Budget => {
                let t = shared.ctl.throttle.load(Relaxed);
                if t > 0 {
                    let ran = ran_since.elapsed();
                    if ran >= THROTTLE_RUN {
                        return Out::Throttle(ran * t / (1000 - t.min(999)));
                    }
                }
            }
            Exit::Sbi => {
                let mut harts = VcpuHarts { shared, id };
                match sbi::handle(hart, &mut bus, &mut harts) {
                    Some(req) => {
                        shared.devices.flush_console();
                        shared.set_exit(match req {
                            ResetRequest::Shutdown { failure: false } => GuestExit::PowerOff,
                            ResetRequest::Shutdown { failure: true }
                            | ResetRequest::Reboot { failure: true } => GuestExit::Failure,
                            ResetRequest::Reboot { failure: false } => GuestExit::Reboot,
                        });
                        return Out::Exit;
                    }
                    None => {
                        if sig.hsm.load(Acquire) == HSM_STOPPED {
                            return Out::Park;
                        }
                    }
                }
            }
            Exit::Wfi => {
                hart.set_irq_lines(sig.lines());
                hart.update_timer();
                if hart.interrupt_waiting() || sig.attention.load(Acquire) {
                    continue;
                }
                let ticks = hart.timer_deadline().min(sig.mtimecmp.load(Relaxed));
                let ns = if ticks == u64::MAX {
                    MAX_IDLE.as_nanos() as u64
                } else {
                    hart.clock().ns_until(ticks)
                };
                if ns == 0 {
                    continue;
                }
                shared.devices.flush_console();
                return Out::Wfi(Duration::from_nanos(ns).min(MAX_IDLE));
            }
        }
    }
}

/// The SBI's view of the other harts, from the vCPU of hart `id`.
struct VcpuHarts<'a> {
    shared: &'a Shared,
    id: usize,
}

impl SbiHarts for VcpuHarts<'_> {
    fn count(&self) -> usize {
        self.shared.sigs.len()
    }

    fn send_ipi(&mut self, me: &mut Hart, harts: &[usize]) {
        for &h in harts {
            if h == self.id {
                me.set_software_interrupt();
            } else {
                self.shared.sigs[h].post(REQ_IPI);
            }
        }
    }

    fn remote_fence(&mut self, me: &mut Hart, harts: &[usize], fence: RemoteFence) {
        let req = match fence {
            RemoteFence::FenceI => REQ_FENCE_I,
            RemoteFence::SfenceVma => REQ_FLUSH_TLB,
        };
        if harts.contains(&self.id) {
            match fence {
                RemoteFence::FenceI => me.fence_i(),
                RemoteFence::SfenceVma => me.tlb_flush(),
            }
        }
        request_harts(self.shared, harts.iter().copied(), req, Some((me, self.id)));
    }

    fn status(&self, hart: usize) -> Option<bool> {
        let sig = self.shared.sigs.get(hart)?;
        Some(sig.hsm.load(Acquire) != HSM_STOPPED)
    }

    fn start(&mut self, hart: usize, addr: u64, opaque: u64) -> Result<(), sbi::HsmError> {
        let Some(sig) = self.shared.sigs.get(hart) else {
            return Err(sbi::HsmError::InvalidParam);
        };
        *lock(&sig.start) = (addr, opaque);
        match sig
            .hsm
            .compare_exchange(HSM_STOPPED, HSM_START_PENDING, AcqRel, Acquire)
        {
            Ok(_) => {
                sig.kick();
                self.shared.wake_parked();
                Ok(())
            }
            Err(_) => Err(sbi::HsmError::AlreadyAvailable),
        }
    }

    fn stop_self(&mut self) {
        self.shared.sigs[self.id].hsm.store(HSM_STOPPED, Release);
    }
}

impl Shared {
    /// Whether hart `id` must stay out: a stop or pause is in force, the VM
    /// ended, or the hart is HSM-stopped (a pending `hart_start` is not:
    /// the hart's thread takes it when it next holds the hart).
    fn must_park(&self, id: usize) -> bool {
        self.ctl.stops.load(SeqCst) > 0
            || self.ctl.paused.load(SeqCst)
            || self.exited()
            || self.sigs[id].hsm.load(Acquire) == HSM_STOPPED
    }

    /// Parks hart `id` until it may run again (or the VM ends).
    fn park(&self, id: usize) {
        let mut g = lock(&self.ctl.park);
        while self.must_park(id) && !self.exited() {
            g = self
                .ctl
                .park_cv
                .wait_timeout(g, Duration::from_millis(100))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Wakes parked vCPUs so they look again.
    pub(crate) fn wake_parked(&self) {
        let _g = lock(&self.ctl.park);
        self.ctl.park_cv.notify_all();
    }
}

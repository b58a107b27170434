//! The receiving side: accept the source's two connections, check the
//! handshake, then load pages and state into a fresh VM — directly, or in
//! post-copy by serving the guest's page faults through `userfaultfd`.

use crate::stats::latency_summary;
use crate::transport::{Conn, Security};
use crate::uffd::{Resolve, Resolver, Uffd};
use crate::wire::{self, Channel, Hello, Msg, Page, WireError, PAGE};
use crate::{unix_ns, DestVm};
use anyhow::{anyhow, bail, Context, Result};
use godwit_memory::{AtomicBitmap, GuestRam};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long to wait for the source at any step before giving up.
const PEER_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections that do not speak the protocol are dropped; after this many
/// `accept` gives up.
const MAX_STRAY: usize = 16;

/// An accepted incoming migration: the handshake is done, the VM not built.
pub struct Incoming {
    pub hello: Hello,
    main: Arc<Conn>,
    fault: Arc<Conn>,
    /// Kept for post-copy recovery: a source whose link broke reconnects.
    listener: TcpListener,
    sec: Security,
}

fn read_hello(s: &Conn) -> Result<Hello> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = s;
    match wire::recv(&mut r, 0)? {
        Msg::Hello(h) => Ok(h),
        m => bail!("expected a handshake, got {}", m.name()),
    }
}

/// Waits for a source on `listener` and checks its handshake with `check`
/// (plus the protocol version and page size). A refusal is sent to the
/// source with the reason and returned as an error here too.
pub fn accept(
    listener: &TcpListener,
    sec: &Security,
    check: impl Fn(&Hello) -> Result<(), String>,
) -> Result<Incoming> {
    let mut strays = 0;
    loop {
        let (tcp, peer) = listener.accept().context("accepting a migration")?;
        let main = match Conn::server(tcp, sec) {
            Ok(c) => c,
            Err(e) => {
                // Unauthenticated peers are refused and logged; we go on
                // waiting for the real source (bounded).
                strays += 1;
                eprintln!("godwit: refused a connection from {peer}: {e:#}");
                if strays >= MAX_STRAY {
                    bail!("{MAX_STRAY} refused connections; giving up (last: {e:#})");
                }
                continue;
            }
        };
        let hello = match read_hello(&main) {
            Ok(h) if h.channel == Channel::Main => h,
            Ok(_) | Err(_) => {
                strays += 1;
                eprintln!("godwit: ignored a connection from {peer} that is not a migration");
                if strays >= MAX_STRAY {
                    bail!("{MAX_STRAY} connections that are not migrations; giving up");
                }
                continue;
            }
        };
        let verdict = if hello.version != wire::VERSION {
            Err(format!(
                "protocol version {} (this destination speaks version {})",
                hello.version,
                wire::VERSION
            ))
        } else if hello.page_size as usize != PAGE {
            Err(format!(
                "page size {} (this destination uses {PAGE})",
                hello.page_size
            ))
        } else {
            check(&hello)
        };
        if let Err(why) = verdict {
            let _ = wire::send(&mut &main, &Msg::Refuse(why.clone()));
            bail!("refused a migration from {peer}: {why}");
        }
        wire::send(&mut &main, &Msg::Accept)?;
        let fault = accept_fault(listener, sec, hello.session, &main)?;
        return Ok(Incoming {
            hello,
            main: Arc::new(main),
            fault: Arc::new(fault),
            listener: listener.try_clone()?,
            sec: sec.clone(),
        });
    }
}

/// After the main connection of `session` was accepted: accepts its fault
/// connection and sets both up for the transfer.
fn accept_fault(listener: &TcpListener, sec: &Security, session: u64, main: &Conn) -> Result<Conn> {
    let (tcp, peer) = accept_within(listener, Duration::from_secs(10))?;
    let fault = Conn::server(tcp, sec)?;
    let fh = read_hello(&fault)?;
    if fh.channel != Channel::Fault || fh.session != session {
        let _ = wire::send(
            &mut &fault,
            &Msg::Refuse("not the fault channel of this migration".into()),
        );
        bail!("the second connection from {peer} is not this migration's fault channel");
    }
    wire::send(&mut &fault, &Msg::Accept)?;
    for s in [main, &fault] {
        s.tcp().set_nodelay(true)?;
        s.set_read_timeout(Some(PEER_TIMEOUT))?;
        s.set_write_timeout(Some(PEER_TIMEOUT))?;
    }
    Ok(fault)
}

fn accept_within(
    listener: &TcpListener,
    limit: Duration,
) -> Result<(TcpStream, std::net::SocketAddr)> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((s, a)) => {
                listener.set_nonblocking(false)?;
                s.set_nonblocking(false)?;
                return Ok((s, a));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    listener.set_nonblocking(false)?;
                    bail!("the source did not open its fault connection within {limit:?}");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e).context("accepting the fault connection"),
        }
    }
}

/// What the destination learned, for its log (the source gets it as JSON).
pub struct Received {
    pub report: Value,
}

/// Shared state of post-copy receipt.
struct Post<'a> {
    ram: &'a GuestRam,
    resolver: Resolver,
    pending: AtomicBitmap,
    received: AtomicBitmap,
    requested: AtomicBitmap,
    pushed: AtomicBitmap,
    pending_count: usize,
    received_count: AtomicUsize,
    requested_at: Mutex<HashMap<u32, Instant>>,
    latencies_us: Mutex<Vec<f64>>,
    network_faults: AtomicU64,
    local_faults: AtomicU64,
    served_by_push: AtomicU64,
    /// Demand requests made while there was no link to send them on (they
    /// go out again when the source reconnects).
    deferred_demands: AtomicU64,
    duplicates: AtomicU64,
    all_in: (Mutex<bool>, Condvar),
    finished: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Where demand requests go; `None` while the link is down.
    demand_to: Mutex<Option<Arc<Conn>>>,
    /// The current link broke (post-copy pauses until the source is back).
    link_broken: AtomicBool,
}

impl Post<'_> {
    fn install(&self, page: Page, via_push: bool) -> Result<()> {
        let p = page.index as usize;
        let off = p * PAGE;
        let r = match &page.data {
            Some(d) => self.resolver.copy(off, &d[..]),
            None => self.resolver.zeropage(off),
        }
        .with_context(|| format!("cannot place page {p} into guest RAM"))?;
        let newly = self.pending.get(p) && !self.received.set(p);
        if !newly || r == Resolve::AlreadyPresent {
            // Not pending, or here twice: the protocol says never.
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        if !newly {
            return Ok(());
        }
        if via_push {
            self.pushed.set(p);
        }
        if self.requested.get(p) {
            let t = self
                .requested_at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&page.index);
            if let Some(t) = t {
                self.latencies_us
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(t.elapsed().as_secs_f64() * 1e6);
            }
            if via_push {
                self.served_by_push.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.received_count.fetch_add(1, Ordering::AcqRel) + 1 == self.pending_count {
            let (m, c) = &self.all_in;
            *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
            c.notify_all();
        }
        Ok(())
    }

    fn link_lost(&self) {
        self.link_broken.store(true, Ordering::Release);
        *self.demand_to.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let (m, c) = &self.all_in;
        let _g = m.lock().unwrap_or_else(|e| e.into_inner());
        c.notify_all();
    }

    /// Sends a demand request if the link is up (else it is sent again when
    /// the source reconnects).
    fn demand(&self, pages: Vec<u32>) {
        let to = self
            .demand_to
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match to {
            Some(c) => {
                if (&*c).write_all(&Msg::Demand(pages).encode()).is_err() {
                    self.link_lost();
                }
            }
            None => {
                self.deferred_demands.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn fail(&self, why: String) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(why);
        }
        let (m, c) = &self.all_in;
        let _g = m.lock().unwrap_or_else(|e| e.into_inner());
        c.notify_all();
    }

    /// Serves the guest's page faults until told to stop.
    fn fault_loop(&self, mut uffd: Uffd) -> Result<()> {
        crate::fault_path_priority();
        while !self.finished.load(Ordering::Acquire) {
            let Some(off) = uffd.next_fault(Duration::from_millis(10))? else {
                continue;
            };
            let p = off / PAGE;
            if p >= self.ram.pages() {
                continue;
            }
            if self.pending.get(p) && !self.received.get(p) {
                if !self.requested.set(p) {
                    self.requested_at
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(p as u32, Instant::now());
                    self.network_faults.fetch_add(1, Ordering::Relaxed);
                    self.demand(vec![p as u32]);
                }
                // Already requested: the faulting thread waits for the copy.
            } else {
                // Free, zero, already here, or discarded since: local.
                self.local_faults.fetch_add(1, Ordering::Relaxed);
                self.resolver.zeropage(off)?;
            }
        }
        uffd.unregister()
            .context("cannot unregister guest RAM from userfaultfd")?;
        Ok(())
    }
}

impl Incoming {
    /// Receives the VM into `vm` and runs it. Returns once every page is at
    /// the destination and the report went to the source. `guest` is asked,
    /// `after_window` after completion, for what the VMM saw of the guest
    /// (resume and completion times are passed in, as Unix ns).
    pub fn run(
        self,
        vm: &dyn DestVm,
        after_window: Duration,
        guest: &dyn Fn(u128, u128) -> Value,
    ) -> Result<Received> {
        let ram = vm.ram();
        let pages = ram.pages();
        let main: &Conn = &self.main;
        let have = AtomicBitmap::new(pages);
        let mut rounds = 0u32;
        let mut pages_received = 0u64;
        let started = Instant::now();
        loop {
            let msg = match wire::recv(&mut &*main, pages) {
                Ok(m) => m,
                Err(WireError::Closed) => {
                    bail!("the source closed the connection before the VM was handed over; discarding what arrived")
                }
                Err(e) => return Err(anyhow!(e).context("receiving the migration")),
            };
            match msg {
                Msg::Pages(list) => {
                    for pg in list {
                        let p = pg.index as usize;
                        let gpa = ram.base() + (p * PAGE) as u64;
                        match pg.data {
                            Some(d) => ram.write(gpa, &d[..])?,
                            None if have.get(p) => ram.write(gpa, &[0u8; PAGE])?,
                            None => {}
                        }
                        have.set(p);
                        pages_received += 1;
                    }
                }
                Msg::RoundEnd(n) => rounds = n,
                Msg::State(state) => {
                    vm.load_state(&state).context("cannot load the VM state")?;
                    wire::send(&mut &*main, &Msg::Ready)?;
                    wait_go(vm, main, pages)?;
                    vm.resume()?;
                    let resumed = unix_ns();
                    wire::send(&mut &*main, &Msg::Complete)?;
                    std::thread::sleep(after_window);
                    let report = json!({
                        "resumed_unix_ns": resumed.to_string(),
                        "rounds_received": rounds,
                        "pages_received": pages_received,
                        "receive_ms": started.elapsed().as_secs_f64() * 1e3,
                        "network_faults": 0,
                        "guest": guest(resumed, resumed),
                    });
                    wire::send(&mut &*main, &Msg::Report(report.to_string()))?;
                    return Ok(Received { report });
                }
                Msg::Switch { state, pending } => {
                    return postcopy(
                        vm,
                        &ram,
                        (self.main.clone(), self.fault.clone()),
                        (&self.listener, &self.sec, self.hello.session),
                        have,
                        state,
                        pending,
                        (rounds, pages_received),
                        after_window,
                        guest,
                    );
                }
                Msg::Cancel(why) => {
                    bail!("the source cancelled the migration ({why}); discarding what arrived")
                }
                Msg::Error(why) => bail!("the source failed ({why}); discarding what arrived"),
                m => bail!("unexpected {} from the source", m.name()),
            }
        }
    }
}

/// Waits for the commit point; frames the source took from its NICs may
/// come first (one `Frames` per [`wire::MAX_FRAMES`]) and are handed to the
/// VM before it resumes.
fn wait_go(vm: &dyn DestVm, main: &Conn, pages: usize) -> Result<()> {
    loop {
        match wire::recv(&mut &*main, pages) {
            Ok(Msg::Go) => return Ok(()),
            Ok(Msg::Frames(frames)) => vm
                .deliver_host_frames(frames)
                .context("cannot take the frames the source received")?,
            Ok(Msg::Cancel(why)) => {
                bail!("the source cancelled the migration ({why}); discarding what arrived")
            }
            Ok(m) => bail!("expected Go from the source, got {}", m.name()),
            Err(e) => {
                return Err(anyhow!(e)
                    .context("the source did not commit the migration; discarding what arrived"))
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn postcopy(
    vm: &dyn DestVm,
    ram: &GuestRam,
    first: (Arc<Conn>, Arc<Conn>),
    (listener, sec, session): (&TcpListener, &Security, u64),
    have: AtomicBitmap,
    state: Vec<u8>,
    pending_words: Vec<u64>,
    (rounds, pages_received): (u32, u64),
    after_window: Duration,
    guest: &dyn Fn(u128, u128) -> Value,
) -> Result<Received> {
    let pages = ram.pages();
    let pending = AtomicBitmap::new(pages);
    pending.load_from(&pending_words);
    // Pages that arrived in pre-copy rounds but changed since: drop them so
    // the guest faults on them instead of reading stale bytes.
    for p in AtomicBitmap::iter_set(&pending_words) {
        if p < pages && have.get(p) {
            ram.discard(p, 1)?;
        }
    }
    // SAFETY: guest RAM is one anonymous mapping owned by `ram`, which
    // outlives the registration (it is unregistered before this returns).
    let uffd = unsafe { Uffd::register(ram.host_ptr(), ram.size()) }
        .context("post-copy needs userfaultfd on guest RAM")?;
    vm.load_state(&state).context("cannot load the VM state")?;
    let pending_count = pending.count();
    let post = Post {
        ram,
        resolver: uffd.resolver(),
        pending,
        received: AtomicBitmap::new(pages),
        requested: AtomicBitmap::new(pages),
        pushed: AtomicBitmap::new(pages),
        pending_count,
        received_count: AtomicUsize::new(0),
        requested_at: Mutex::new(HashMap::new()),
        latencies_us: Mutex::new(Vec::new()),
        network_faults: AtomicU64::new(0),
        local_faults: AtomicU64::new(0),
        served_by_push: AtomicU64::new(0),
        deferred_demands: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        all_in: (Mutex::new(pending_count == 0), Condvar::new()),
        finished: AtomicBool::new(false),
        failure: Mutex::new(None),
        demand_to: Mutex::new(None),
        link_broken: AtomicBool::new(false),
    };
    let main: &Conn = &first.0;
    wire::send(&mut &*main, &Msg::Ready)?;
    wait_go(vm, main, pages)?;
    vm.set_dirty_logging(true)?;
    let t_go = Instant::now();
    let mut recoveries = 0u64;
    // Demand requests must have somewhere to go before the guest can fault:
    // a request made while this is `None` waits for a reconnection, and
    // its page for the push.
    *post.demand_to.lock().unwrap_or_else(|e| e.into_inner()) = Some(first.1.clone());
    let result = std::thread::scope(|scope| -> Result<(u128, u128, u64, Arc<Conn>)> {
        let faults = scope.spawn(|| {
            let r = post.fault_loop(uffd);
            if let Err(e) = &r {
                post.fail(format!("{e:#}"));
            }
            r
        });
        let resume = vm.resume();
        let resumed = unix_ns();
        let mut link = first.clone();
        let outcome = resume.and_then(|()| loop {
            let (m, f) = link.clone();
            f.set_read_timeout(None)?;
            post.link_broken.store(false, Ordering::Release);
            *post.demand_to.lock().unwrap_or_else(|e| e.into_inner()) = Some(f.clone());
            if recoveries > 0 {
                // Demands the old link swallowed go out again.
                let again: Vec<u32> = AtomicBitmap::iter_set(&post.requested.snapshot())
                    .filter(|&p| p < pages && !post.received.get(p))
                    .map(|p| p as u32)
                    .collect();
                for chunk in again.chunks(wire::MAX_BATCH) {
                    post.demand(chunk.to_vec());
                }
            }
            let replies = {
                let f = f.clone();
                let post = &post;
                scope.spawn(move || {
                    crate::fault_path_priority();
                    let mut r = &*f;
                    loop {
                        match wire::recv(&mut r, pages) {
                            Ok(Msg::Pages(list)) => {
                                for pg in list {
                                    if let Err(e) = post.install(pg, false) {
                                        post.fail(format!("{e:#}"));
                                        return;
                                    }
                                }
                            }
                            Ok(m) => {
                                post.fail(format!("unexpected {} on the fault connection", m.name()));
                                return;
                            }
                            Err(_) => {
                                if !post.finished.load(Ordering::Acquire) {
                                    post.link_lost();
                                }
                                return;
                            }
                        }
                    }
                })
            };
            let r = receive_push(&post, &m, pages).and_then(|()| wait_all_in(&post));
            if post.received_count.load(Ordering::Acquire) == post.pending_count {
                // Everything is here, whatever happened to the link after.
                post.finished.store(true, Ordering::Release);
                f.shutdown(std::net::Shutdown::Both);
                let _ = replies.join();
                break Ok(m);
            }
            if let Some(why) = post.failure.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                f.shutdown(std::net::Shutdown::Both);
                let _ = replies.join();
                break Err(anyhow!("post-copy failed at the destination: {why}"));
            }
            // The link broke: keep every page and the guest (it blocks only
            // on pages it does not have) and wait for the source to return.
            post.link_lost();
            m.shutdown(std::net::Shutdown::Both);
            f.shutdown(std::net::Shutdown::Both);
            let _ = replies.join();
            let why = match r {
                Err(e) => format!("{e:#}"),
                Ok(()) => "the fault connection broke".into(),
            };
            eprintln!(
                "godwit: post-copy link lost ({why}); {} of {} pages here; waiting for the source to reconnect (godwit migrate --resume)",
                post.received_count.load(Ordering::Acquire),
                post.pending_count
            );
            match accept_resume(listener, sec, session, &post) {
                Ok(l) => {
                    recoveries += 1;
                    eprintln!("godwit: post-copy resumed");
                    link = l;
                }
                Err(e) => break Err(e),
            }
        });
        let completed = unix_ns();
        post.finished.store(true, Ordering::Release);
        let f = faults
            .join()
            .map_err(|_| anyhow!("the fault thread panicked"))?;
        let m = outcome?;
        f?;
        Ok((resumed, completed, t_go.elapsed().as_millis() as u64, m))
    });
    let (resumed, completed, postcopy_ms, main) = result?;
    let written = vm.take_dirty_log()?;
    vm.set_dirty_logging(false)?;
    let mut hits = 0u64;
    let mut written_n = 0u64;
    for p in AtomicBitmap::iter_set(&written) {
        if p >= pages {
            continue;
        }
        written_n += 1;
        if post.pushed.get(p) && !post.requested.get(p) {
            hits += 1;
        }
    }
    wire::send(&mut &*main, &Msg::Complete)?;
    std::thread::sleep(after_window);
    let lat = post
        .latencies_us
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let (p50, p99, max) = latency_summary(lat);
    let report = json!({
        "resumed_unix_ns": resumed.to_string(),
        "completed_unix_ns": completed.to_string(),
        "postcopy_ms": postcopy_ms,
        "rounds_received": rounds,
        "pages_received": pages_received + pending_count as u64,
        "pages_pending": pending_count,
        "network_faults": post.network_faults.load(Ordering::Relaxed),
        "local_faults": post.local_faults.load(Ordering::Relaxed),
        "faults_served_by_push": post.served_by_push.load(Ordering::Relaxed),
        "demands_deferred": post.deferred_demands.load(Ordering::Relaxed),
        "duplicate_pages": post.duplicates.load(Ordering::Relaxed),
        "fault_latency_us_p50": p50,
        "fault_latency_us_p99": p99,
        "fault_latency_us_max": max,
        "prepaging_hits": hits,
        "pages_written_during_postcopy": written_n,
        "recoveries": recoveries,
        "guest": guest(resumed, completed),
    });
    wire::send(&mut &*main, &Msg::Report(report.to_string()))?;
    Ok(Received { report })
}

/// Waits until every pending page is in, the link breaks, or something
/// fails for good.
fn wait_all_in(post: &Post) -> Result<()> {
    let (m, c) = &post.all_in;
    let mut all = m.lock().unwrap_or_else(|e| e.into_inner());
    let deadline = Instant::now() + PEER_TIMEOUT;
    loop {
        if *all {
            return Ok(());
        }
        if post.link_broken.load(Ordering::Acquire) {
            bail!("the fault connection broke");
        }
        if post.failure.lock().map(|f| f.is_some()).unwrap_or(true) {
            bail!("post-copy failed");
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no page from the source for {PEER_TIMEOUT:?}");
        }
        all = c
            .wait_timeout(all, left.min(Duration::from_millis(100)))
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
    }
}

/// Accepts the source of this session back after a broken link and tells
/// it which pages are already here.
fn accept_resume(
    listener: &TcpListener,
    sec: &Security,
    session: u64,
    post: &Post,
) -> Result<(Arc<Conn>, Arc<Conn>)> {
    loop {
        let (tcp, peer) = listener.accept().context("accepting the source again")?;
        let main = match Conn::server(tcp, sec) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("godwit: refused a connection from {peer}: {e:#}");
                continue;
            }
        };
        match read_hello(&main) {
            Ok(h) if h.resume && h.session == session && h.channel == Channel::Main => {}
            Ok(_) => {
                let _ = wire::send(
                    &mut &main,
                    &Msg::Refuse("this destination is finishing another migration".into()),
                );
                continue;
            }
            Err(_) => continue,
        }
        wire::send(&mut &main, &Msg::Accept)?;
        let fault = accept_fault(listener, sec, session, &main)?;
        wire::send(&mut &main, &Msg::Resume(post.received.snapshot()))?;
        return Ok((Arc::new(main), Arc::new(fault)));
    }
}

/// The push stream: pages until `PushDone`.
fn receive_push(post: &Post, main: &Conn, pages: usize) -> Result<()> {
    loop {
        match wire::recv(&mut &*main, pages) {
            Ok(Msg::Pages(list)) => {
                for pg in list {
                    post.install(pg, true)?;
                }
            }
            Ok(Msg::PushDone) => return Ok(()),
            Ok(m) => bail!("unexpected {} from the source during post-copy", m.name()),
            Err(e) => return Err(anyhow!(e).context("the push stream from the source broke")),
        }
    }
}

//! The receiving side: accept the source's two connections, check the
//! handshake, then load pages and state into a fresh VM — directly, or in
//! post-copy by serving the guest's page faults through `userfaultfd`.

use crate::stats::{fault_breakdown, latency_summary, FaultSample};
use crate::transport::{Conn, Security};
use crate::uffd::{Resolve, Resolver, Uffd};
use crate::wire::{self, Channel, DiskWrite, Hello, Msg, Page, WireError, PAGE};
use crate::{or_into, unix_ns, DestVm, Status};
use anyhow::{anyhow, bail, Context, Result};
use godwit_memory::{is_zero_page, AtomicBitmap, GuestRam};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long to wait for the source at any step before giving up.
const PEER_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a connection has, from `accept`, to finish its TLS handshake and
/// send its `Hello`; it is closed after that.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once (each on its own thread); a connection
/// beyond that is closed at once.
const MAX_HANDSHAKES: usize = 8;
/// Handshaken connections waiting to be looked at; more are closed.
const MAX_WAITING: usize = 4;
/// At most one log line per this about connections that are not a
/// migration (the rest are counted into the next line).
const STRAY_LOG_EVERY: Duration = Duration::from_secs(1);

/// An accepted incoming migration: the handshake is done, the VM not built.
pub struct Incoming {
    pub hello: Hello,
    main: Arc<Conn>,
    fault: Arc<Conn>,
    /// The bulk connections beside the main one, by index.
    bulk: Vec<Arc<Conn>>,
    /// Kept for post-copy recovery: a source whose link broke reconnects.
    gate: Gate,
}

fn read_hello(s: &Conn) -> Result<Hello> {
    s.set_read_timeout(Some(HANDSHAKE_LIMIT))?;
    let mut r = s;
    match wire::recv(&mut r, 0)? {
        Msg::Hello(h) => Ok(h),
        m => bail!("expected a handshake, got {}", m.name()),
    }
}

/// A connection that finished its handshake and said `Hello`.
struct Arrival {
    conn: Conn,
    hello: Hello,
    peer: SocketAddr,
}

/// Logs connections that are not a migration, at most one line per
/// [`STRAY_LOG_EVERY`]; they cost nothing else.
#[derive(Default)]
struct StrayLog {
    last: Option<Instant>,
    quiet: u64,
}

impl StrayLog {
    fn note(log: &Mutex<StrayLog>, peer: SocketAddr, why: &str) {
        let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
        if l.last.is_some_and(|t| t.elapsed() < STRAY_LOG_EVERY) {
            l.quiet += 1;
            return;
        }
        let more = match std::mem::take(&mut l.quiet) {
            0 => String::new(),
            n => format!(" ({n} more not shown since the last such line)"),
        };
        l.last = Some(Instant::now());
        eprintln!("godwit: dropped a connection from {peer}: {why}; still waiting{more}");
    }

    /// Says how many were not shown, once the last line is old enough (or
    /// at once with `now`: the listener stops).
    fn flush(log: &Mutex<StrayLog>, now: bool) {
        let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
        if l.quiet > 0 && (now || l.last.is_some_and(|t| t.elapsed() >= STRAY_LOG_EVERY)) {
            let n = std::mem::take(&mut l.quiet);
            l.last = Some(Instant::now());
            eprintln!(
                "godwit: dropped {n} more connections that were not a migration; still waiting"
            );
        }
    }
}

/// One handshake in progress, as the acceptor watches it.
struct Pending {
    deadline: Instant,
    tcp: TcpStream,
    /// `Some(true)` once handed on, `Some(false)` once timed out.
    state: Arc<Mutex<Option<bool>>>,
}

/// The listening side of a destination: a thread accepts connections and
/// runs each one's TLS handshake and `Hello` on a thread of its own (at
/// most [`MAX_HANDSHAKES`] at once, each closed after [`HANDSHAKE_LIMIT`]),
/// so a silent or hostile peer delays nobody; connections that said
/// `Hello` are handed to whoever waits in [`Gate::next`]. Dropping it stops
/// accepting and closes the handshakes still in progress.
struct Gate {
    rx: Mutex<mpsc::Receiver<Arrival>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    strays: Arc<Mutex<StrayLog>>,
}

/// Waits until `fd` is readable or `limit` passed.
fn readable(fd: std::os::fd::RawFd, limit: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the whole call.
    unsafe { libc::poll(&mut p, 1, limit.as_millis().min(i32::MAX as u128) as i32) > 0 }
}

impl Gate {
    fn open(listener: &TcpListener, sec: &Security) -> Result<Gate> {
        let listener = listener.try_clone()?;
        listener.set_nonblocking(true)?;
        let (tx, rx) = mpsc::sync_channel(MAX_WAITING);
        let stop = Arc::new(AtomicBool::new(false));
        let strays = Arc::new(Mutex::new(StrayLog::default()));
        let thread = {
            let (stop, strays, sec) = (stop.clone(), strays.clone(), sec.clone());
            std::thread::Builder::new()
                .name("migration-accept".into())
                .spawn(move || accept_loop(&listener, &sec, &tx, &stop, &strays))
                .context("cannot start the migration accept thread")?
        };
        Ok(Gate {
            rx: Mutex::new(rx),
            stop,
            thread: Some(thread),
            strays,
        })
    }

    /// The next connection that said `Hello`, waiting at most `limit`
    /// (`None`: for ever); `Ok(None)` when the time is up.
    fn next(&self, limit: Option<Duration>) -> Result<Option<Arrival>> {
        let rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        let r = match limit {
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_timeout(d),
        };
        match r {
            Ok(a) => Ok(Some(a)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the migration listener stopped accepting connections")
            }
        }
    }

    fn stray(&self, peer: SocketAddr, why: &str) {
        StrayLog::note(&self.strays, peer, why);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    sec: &Security,
    tx: &mpsc::SyncSender<Arrival>,
    stop: &AtomicBool,
    strays: &Arc<Mutex<StrayLog>>,
) {
    use std::os::fd::AsRawFd;
    let mut pending: Vec<Pending> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        readable(listener.as_raw_fd(), Duration::from_millis(50));
        StrayLog::flush(strays, false);
        // Close handshakes past their time; forget finished ones.
        let now = Instant::now();
        pending.retain(|p| {
            let mut st = p.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.is_some() {
                return false;
            }
            if now >= p.deadline {
                *st = Some(false);
                let _ = p.tcp.shutdown(std::net::Shutdown::Both);
                return false;
            }
            true
        });
        loop {
            let (tcp, peer) = match listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // E.g. out of descriptors: do not spin.
                    eprintln!("godwit: accepting a migration connection failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            };
            if pending.len() >= MAX_HANDSHAKES {
                StrayLog::note(
                    strays,
                    peer,
                    &format!("{MAX_HANDSHAKES} handshakes are in progress already"),
                );
                continue;
            }
            let Ok(watch) = tcp.try_clone() else {
                continue;
            };
            let state = Arc::new(Mutex::new(None));
            pending.push(Pending {
                deadline: Instant::now() + HANDSHAKE_LIMIT,
                tcp: watch,
                state: state.clone(),
            });
            let (tx, sec, log) = (tx.clone(), sec.clone(), strays.clone());
            let spawned = std::thread::Builder::new()
                .name("migration-handshake".into())
                .spawn(move || {
                    let r = tcp
                        .set_nonblocking(false)
                        .map_err(anyhow::Error::from)
                        .and_then(|()| Conn::server(tcp, &sec))
                        .and_then(|c| read_hello(&c).map(|h| (c, h)));
                    let timed_out = {
                        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                        let t = *st == Some(false);
                        *st = Some(true);
                        t
                    };
                    match r {
                        _ if timed_out => StrayLog::note(
                            &log,
                            peer,
                            &format!("no handshake within {HANDSHAKE_LIMIT:?}"),
                        ),
                        Ok((conn, hello)) => {
                            if tx.try_send(Arrival { conn, hello, peer }).is_err() {
                                StrayLog::note(&log, peer, "too many connections waiting");
                            }
                        }
                        Err(e) => StrayLog::note(&log, peer, &format!("{e:#}")),
                    }
                });
            if spawned.is_err() {
                StrayLog::note(strays, peer, "cannot start a handshake thread");
            }
        }
    }
    for p in pending {
        let st = p.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.is_none() {
            let _ = p.tcp.shutdown(std::net::Shutdown::Both);
        }
    }
    StrayLog::flush(strays, true);
}

/// Waits for a source on `listener` and checks its handshake with `check`
/// (plus the protocol version and page size). A refusal is sent to the
/// source with the reason and returned as an error here too. Connections
/// that are not a migration (no TLS identity from our CA, no `Hello`, a
/// fault channel of no migration) are dropped and logged, and the wait goes
/// on.
/// `stop` ends the wait (an error) when it turns true.
pub fn accept(
    listener: &TcpListener,
    sec: &Security,
    stop: &dyn Fn() -> bool,
    check: impl Fn(&Hello) -> Result<(), String>,
) -> Result<Incoming> {
    let gate = Gate::open(listener, sec)?;
    loop {
        if stop() {
            bail!("stopped waiting for a migration");
        }
        let Some(Arrival {
            conn: main,
            hello,
            peer,
        }) = gate.next(Some(Duration::from_millis(100)))?
        else {
            continue;
        };
        if hello.channel != Channel::Main {
            gate.stray(peer, "a fault or bulk connection of no migration");
            continue;
        }
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
        let fault = accept_fault(&gate, hello.session, &main)?;
        let bulk = accept_bulk(&gate, &hello)?;
        return Ok(Incoming {
            hello,
            main: Arc::new(main),
            fault: Arc::new(fault),
            bulk,
            gate,
        });
    }
}

/// After the main connection of `session` was accepted: waits for its fault
/// connection (other migrations meanwhile are refused) and sets both up for
/// the transfer.
fn accept_fault(gate: &Gate, session: u64, main: &Conn) -> Result<Conn> {
    let limit = Duration::from_secs(10);
    let deadline = Instant::now() + limit;
    let fault = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(a) = gate.next(Some(left))? else {
            bail!("the source did not open its fault connection within {limit:?}");
        };
        if a.hello.channel == Channel::Fault && a.hello.session == session {
            break a.conn;
        }
        refuse_another(gate, a);
    };
    fault
        .mark_fault_path()
        .context("cannot set the fault connection's priority")?;
    wire::send(&mut &fault, &Msg::Accept)?;
    for s in [main, &fault] {
        s.tcp().set_nodelay(true)?;
        s.set_read_timeout(Some(PEER_TIMEOUT))?;
        s.set_write_timeout(Some(PEER_TIMEOUT))?;
    }
    Ok(fault)
}

/// Turns away a connection that arrived while a migration is being set up.
fn refuse_another(gate: &Gate, a: Arrival) {
    let _ = wire::send(
        &mut &a.conn,
        &Msg::Refuse("this destination is receiving another migration".into()),
    );
    gate.stray(a.peer, "another migration while one is being set up");
}

/// After the fault connection: waits for the `hello.bulk` bulk connections
/// of the session (in any order; other migrations meanwhile are refused).
fn accept_bulk(gate: &Gate, hello: &Hello) -> Result<Vec<Arc<Conn>>> {
    let limit = Duration::from_secs(10);
    let deadline = Instant::now() + limit;
    let want = usize::from(hello.bulk);
    let mut got: Vec<Option<Conn>> = (0..want).map(|_| None).collect();
    while got.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(a) = gate.next(Some(left))? else {
            let have = got.iter().filter(|c| c.is_some()).count();
            bail!("the source opened {have} of its {want} bulk connections within {limit:?}");
        };
        match a.hello.channel {
            Channel::Bulk(n) if a.hello.session == hello.session => {
                let slot = got.get_mut(usize::from(n));
                match slot {
                    Some(slot @ None) => {
                        // The source opens the next one once this one is
                        // answered.
                        wire::send(&mut &a.conn, &Msg::Accept)?;
                        *slot = Some(a.conn);
                    }
                    _ => bail!("the source opened bulk connection {n} twice or beyond its {want}"),
                }
            }
            _ => refuse_another(gate, a),
        }
    }
    let mut out = Vec::new();
    for c in got.into_iter().flatten() {
        c.tcp().set_nodelay(true)?;
        c.set_read_timeout(Some(PEER_TIMEOUT))?;
        c.set_write_timeout(Some(PEER_TIMEOUT))?;
        out.push(Arc::new(c));
    }
    Ok(out)
}

/// Places a batch of pre-copy or stop-and-copy pages into guest RAM and
/// notes them in `have`; returns how many there were.
fn place_pages(ram: &GuestRam, have: &AtomicBitmap, list: Vec<Page>) -> Result<u64> {
    let n = list.len() as u64;
    for pg in list {
        let p = pg.index as usize;
        let gpa = ram.base() + (p * PAGE) as u64;
        match pg.data {
            Some(d) => ram.write(gpa, &d[..])?,
            // A zero page needs writing only over an earlier copy.
            None if have.get(p) => ram.write(gpa, &[0u8; PAGE])?,
            None => {}
        }
        have.set(p);
    }
    Ok(n)
}

/// Reads one bulk connection until its `BulkEnd`; returns the pages it
/// brought.
fn read_bulk(c: &Conn, ram: &GuestRam, have: &AtomicBitmap, n: usize) -> Result<u64> {
    let mut count = 0;
    loop {
        match wire::recv(&mut &*c, ram.pages()) {
            Ok(Msg::Pages(list)) => count += place_pages(ram, have, list)?,
            Ok(Msg::BulkEnd) => return Ok(count),
            Ok(m) => bail!("unexpected {} on bulk connection {}", m.name(), n + 1),
            Err(WireError::Closed) => {
                bail!("the source closed bulk connection {} before its end", n + 1)
            }
            Err(e) => {
                return Err(anyhow!(e).context(format!("receiving on bulk connection {}", n + 1)))
            }
        }
    }
}

/// The connections of the current link, so that the operator's `quit` can
/// break whatever the engine is waiting on.
struct Links(Mutex<Vec<Arc<Conn>>>);

impl Links {
    fn set(&self, conns: Vec<Arc<Conn>>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = conns;
    }

    fn shutdown(&self) {
        for c in self.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// What the destination learned, for its log (the source gets it as JSON).
pub struct Received {
    pub report: Value,
}

/// A post-copy protected by checkpoints (`Msg::Protect`).
#[derive(Clone, Copy, Debug)]
struct Protect {
    interval: Duration,
    /// Without a word from the source this long, the VM stops here for good.
    fence: Duration,
}

/// Longest pause a checkpoint waits for the vCPUs to stop (one may wait
/// for a page); past it the checkpoint is skipped.
const CHECKPOINT_STOP_LIMIT: Duration = Duration::from_millis(200);

/// The checkpoints' side of a protected post-copy.
#[derive(Default)]
struct Checkpoints {
    /// Highest checkpoint the source has confirmed.
    acked: AtomicU64,
    /// Highest checkpoint whose disk writes are all on the images.
    released: AtomicU64,
    /// The releaser waits here for `acked` to move.
    moved: (Mutex<()>, Condvar),
    /// Pages the guest wrote since the switch (the dirty log the
    /// checkpoints take, for the pre-paging hits).
    written: Mutex<Vec<u64>>,
    taken: AtomicU64,
    skipped: AtomicU64,
    pages: AtomicU64,
    bytes: AtomicU64,
    pause_us: Mutex<Vec<f64>>,
    /// Stopped here for good: the source may have resumed the VM.
    fenced: AtomicBool,
}

/// Shared state of post-copy receipt.
struct Post<'a> {
    vm: &'a dyn DestVm,
    ram: &'a GuestRam,
    resolver: Resolver,
    pending: AtomicBitmap,
    received: AtomicBitmap,
    requested: AtomicBitmap,
    pushed: AtomicBitmap,
    pending_count: usize,
    received_count: AtomicUsize,
    /// Per requested page: when its fault was read, and when the request
    /// was written (`None` until then).
    requested_at: Mutex<HashMap<u32, (Instant, Option<Instant>)>>,
    latencies_us: Mutex<Vec<f64>>,
    fault_samples: Mutex<Vec<FaultSample>>,
    /// Just before the vCPUs were let go at the destination.
    resumed_at: std::sync::OnceLock<Instant>,
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
    /// Checkpoints back to the source, if the post-copy is protected.
    protect: Option<Protect>,
    ckpt: Checkpoints,
    /// Where checkpoints go (the current link's main connection).
    ckpt_to: Mutex<Option<Arc<Conn>>>,
    /// When the source was last heard from (any message).
    last_heard: Mutex<Instant>,
}

impl Post<'_> {
    fn heard(&self) {
        *self.last_heard.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn silent_for(&self) -> Duration {
        self.last_heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    fn ack(&self, seq: u64) {
        if self.ckpt.acked.fetch_max(seq, Ordering::AcqRel) < seq {
            let (m, c) = &self.ckpt.moved;
            let _g = m.lock().unwrap_or_else(|e| e.into_inner());
            c.notify_all();
        }
    }

    /// Takes a checkpoint every interval and sends it to the source until
    /// every page is here; stops the VM for good (fence) when the source
    /// has not been heard from for the fence time.
    fn checkpoint_loop(&self, p: Protect, links: &Links) {
        let pages = self.ram.pages();
        let words = pages.div_ceil(64);
        let mut seq = 0u64;
        // Each checkpoint's dirty set until the source confirms it: a
        // checkpoint cut by a broken link is sent again, whole, in the
        // first one after the reconnection.
        let mut unacked: std::collections::VecDeque<(u64, Vec<u64>)> = Default::default();
        let mut resend = false;
        let mut next = Instant::now() + p.interval;
        while !self.finished.load(Ordering::Acquire) {
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(5)));
                continue;
            }
            next = now + p.interval;
            if self.silent_for() > p.fence {
                self.ckpt.fenced.store(true, Ordering::Release);
                self.vm.fence();
                self.fail(format!(
                    "nothing from the source for {} ms: the VM is stopped here for good (fenced),                      the source resumes it from its last checkpoint",
                    p.fence.as_millis()
                ));
                links.shutdown();
                return;
            }
            let acked = self.ckpt.acked.load(Ordering::Acquire);
            while unacked.front().is_some_and(|(s, _)| *s <= acked) {
                unacked.pop_front();
            }
            let to = self
                .ckpt_to
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let Some(to) = to.filter(|_| !self.link_broken.load(Ordering::Acquire)) else {
                resend = true;
                continue;
            };
            let from = if resend { acked } else { seq };
            match self.take_checkpoint(seq + 1, &mut unacked, resend, words, from) {
                Ok(Some((list, writes, state))) => {
                    seq += 1;
                    resend = false;
                    if self.send_checkpoint(&to, seq, list, writes, state).is_err() {
                        self.link_lost();
                        resend = true;
                    }
                }
                Ok(None) => {
                    self.ckpt.skipped.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.fail(format!("cannot take a checkpoint: {e:#}"));
                    return;
                }
            }
        }
    }

    /// One checkpoint, in one pause: the pages written since the last one
    /// (and, after a broken link, those of checkpoints not confirmed), the
    /// disk writes of output epochs `from..seq` (likewise), the state, and
    /// the output epoch. `None`: the VM did not stop in time.
    #[allow(clippy::type_complexity)]
    fn take_checkpoint(
        &self,
        seq: u64,
        unacked: &mut std::collections::VecDeque<(u64, Vec<u64>)>,
        resend: bool,
        words: usize,
        from: u64,
    ) -> Result<Option<(Vec<Page>, Vec<DiskWrite>, Vec<u8>)>> {
        let t = Instant::now();
        if !self.vm.pause_checkpoint(CHECKPOINT_STOP_LIMIT)? {
            return Ok(None);
        }
        let taken = (|| {
            let mut dirty = self.vm.take_dirty_log()?;
            dirty.resize(words, 0);
            {
                let mut w = self.ckpt.written.lock().unwrap_or_else(|e| e.into_inner());
                w.resize(words, 0);
                or_into(&mut w, &dirty);
            }
            let mut set = dirty.clone();
            if resend {
                for (_, d) in unacked.iter() {
                    or_into(&mut set, d);
                }
            }
            let mut list = Vec::new();
            for p in AtomicBitmap::iter_set(&set).filter(|&p| p < self.ram.pages()) {
                let mut d = Box::new([0u8; PAGE]);
                self.ram.read_page(p, &mut d)?;
                let data = (!is_zero_page(&d)).then_some(d);
                list.push(Page {
                    index: p as u32,
                    data,
                });
            }
            let state = self.vm.save_state()?;
            let writes = self.vm.held_disk_writes(from, seq);
            self.vm.mark_output(seq);
            unacked.push_back((seq, dirty));
            Ok::<_, anyhow::Error>((list, writes, state))
        })();
        self.vm.resume_checkpoint()?;
        let taken = taken?;
        self.ckpt
            .pause_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(t.elapsed().as_secs_f64() * 1e6);
        self.ckpt.taken.fetch_add(1, Ordering::Relaxed);
        Ok(Some(taken))
    }

    fn send_checkpoint(
        &self,
        to: &Conn,
        seq: u64,
        list: Vec<Page>,
        writes: Vec<DiskWrite>,
        state: Vec<u8>,
    ) -> Result<()> {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, to);
        let mut bytes = 0usize;
        self.ckpt
            .pages
            .fetch_add(list.len() as u64, Ordering::Relaxed);
        let mut list = list;
        while !list.is_empty() {
            let rest = list.split_off(list.len().min(wire::MAX_BATCH));
            let frame = Msg::CkptPages(std::mem::replace(&mut list, rest)).encode();
            bytes += frame.len();
            w.write_all(&frame)?;
        }
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        for dw in writes {
            if batch_bytes + dw.wire_len() > wire::MAX_WRITES_BYTES && !batch.is_empty() {
                let frame = Msg::CkptWrites(std::mem::take(&mut batch)).encode();
                bytes += frame.len();
                w.write_all(&frame)?;
                batch_bytes = 0;
            }
            batch_bytes += dw.wire_len();
            batch.push(dw);
        }
        if !batch.is_empty() {
            let frame = Msg::CkptWrites(batch).encode();
            bytes += frame.len();
            w.write_all(&frame)?;
        }
        let released = self.ckpt.released.load(Ordering::Acquire);
        let frame = Msg::Checkpoint {
            seq,
            released,
            state,
        }
        .encode();
        bytes += frame.len();
        w.write_all(&frame)?;
        w.flush()?;
        self.ckpt.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Sends the held output as the source confirms checkpoints (on a
    /// thread of its own: a NIC may hold its device while it waits for a
    /// page).
    fn release_loop(&self) {
        let mut released = 0u64;
        while !self.finished.load(Ordering::Acquire) && !self.ckpt.fenced.load(Ordering::Acquire) {
            let acked = self.ckpt.acked.load(Ordering::Acquire);
            if acked > released {
                self.vm.release_output(Some(acked));
                released = acked;
                // The next checkpoint tells the source: it need not keep
                // these disk writes any longer.
                self.ckpt.released.store(released, Ordering::Release);
                continue;
            }
            let (m, c) = &self.ckpt.moved;
            let g = m.lock().unwrap_or_else(|e| e.into_inner());
            if self.ckpt.acked.load(Ordering::Acquire) == released {
                let _ = c.wait_timeout(g, Duration::from_millis(20));
            }
        }
    }

    /// Places a page that `arrived` (its message was read) on the push
    /// stream or as a demand reply.
    fn install(&self, page: Page, via_push: bool, arrived: Instant) -> Result<()> {
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
            if let Some((faulted, sent)) = t {
                let now = Instant::now();
                let us = |d: Duration| d.as_secs_f64() * 1e6;
                self.latencies_us
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(us(now - faulted));
                // A page can arrive before its request was written (it was
                // on the push stream already): the request step ends there.
                let sent = sent.unwrap_or(faulted).clamp(faulted, arrived.max(faulted));
                self.fault_samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(FaultSample {
                        via_push,
                        request_us: us(sent - faulted),
                        wait_us: us(arrived.saturating_duration_since(sent)),
                        install_us: us(now.saturating_duration_since(arrived.max(faulted))),
                        since_resume_us: self
                            .resumed_at
                            .get()
                            .map(|r| us(faulted.saturating_duration_since(*r))),
                    });
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
                    let requested = || self.requested_at.lock().unwrap_or_else(|e| e.into_inner());
                    requested().insert(p as u32, (Instant::now(), None));
                    self.network_faults.fetch_add(1, Ordering::Relaxed);
                    self.demand(vec![p as u32]);
                    let sent = Instant::now();
                    if let Some(e) = requested().get_mut(&(p as u32)) {
                        e.1 = Some(sent);
                    }
                }
                // Already requested: the faulting thread waits for the copy.
            } else {
                // Free, zero, already here, or discarded since: local.
                self.local_faults.fetch_add(1, Ordering::Relaxed);
                self.resolver.zeropage(off)?;
            }
        }
        if self.vm.aborted() {
            // The operator ended the VM: vCPUs blocked on pages that never
            // came stay blocked until the process exits, rather than run
            // on zero pages (closing or unregistering would wake them).
            std::mem::forget(uffd);
            return Ok(());
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
        vm.set_status(Status::Active);
        let mut all = vec![self.main.clone(), self.fault.clone()];
        all.extend(self.bulk.iter().cloned());
        let links = Links(Mutex::new(all));
        let done = AtomicBool::new(false);
        let r = std::thread::scope(|scope| {
            scope.spawn(|| {
                // The operator's `quit` ends whatever the engine waits for.
                while !done.load(Ordering::Acquire) {
                    if vm.aborted() {
                        links.shutdown();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
            let r = self.receive(vm, &links, after_window, guest);
            done.store(true, Ordering::Release);
            r
        });
        let r = r.map_err(|e| {
            if vm.aborted() {
                e.context("the destination's operator ended the migration (quit)")
            } else {
                e
            }
        });
        if r.is_err() {
            vm.set_status(Status::Failed);
        }
        r
    }

    fn receive(
        self,
        vm: &dyn DestVm,
        links: &Links,
        after_window: Duration,
        guest: &dyn Fn(u128, u128) -> Value,
    ) -> Result<Received> {
        let ram = vm.ram();
        let pages = ram.pages();
        let have = AtomicBitmap::new(pages);
        let bulk = self.bulk.clone();
        std::thread::scope(|scope| {
            let readers: Vec<_> = bulk
                .iter()
                .enumerate()
                .map(|(n, c)| {
                    let (ram, have) = (&ram, &have);
                    scope.spawn(move || read_bulk(c, ram, have, n))
                })
                .collect();
            let r = self.receive_main(vm, links, after_window, guest, &have, readers);
            if r.is_err() {
                for c in &bulk {
                    c.shutdown(std::net::Shutdown::Both);
                }
            }
            r
        })
    }

    /// The main connection's part of [`receive`](Self::receive); `readers`
    /// are the bulk connections' threads, joined before the state is used.
    fn receive_main(
        self,
        vm: &dyn DestVm,
        links: &Links,
        after_window: Duration,
        guest: &dyn Fn(u128, u128) -> Value,
        have: &AtomicBitmap,
        mut readers: Vec<std::thread::ScopedJoinHandle<'_, Result<u64>>>,
    ) -> Result<Received> {
        let ram = vm.ram();
        let pages = ram.pages();
        let main: &Conn = &self.main;
        // Every bulk connection's pages are in once its reader is joined.
        let mut join_bulk = |received: &mut u64| -> Result<()> {
            for r in readers.drain(..) {
                *received += r
                    .join()
                    .map_err(|_| anyhow!("a bulk connection's reader panicked"))??;
            }
            Ok(())
        };
        let mut rounds = 0u32;
        let mut pages_received = 0u64;
        let mut protect = None;
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
                Msg::Pages(list) => pages_received += place_pages(&ram, have, list)?,
                Msg::RoundEnd(n) => rounds = n,
                Msg::Protect {
                    interval_ms,
                    fence_ms,
                } => {
                    if !(1..=60_000).contains(&interval_ms) || fence_ms <= interval_ms {
                        bail!(
                            "the source asked for checkpoints every {interval_ms} ms with a fence of \
                             {fence_ms} ms (the interval must be 1..60000 ms and the fence longer)"
                        );
                    }
                    protect = Some(Protect {
                        interval: Duration::from_millis(interval_ms.into()),
                        fence: Duration::from_millis(fence_ms.into()),
                    });
                }
                Msg::State(state) => {
                    join_bulk(&mut pages_received)?;
                    vm.set_status(Status::Device);
                    vm.load_state(&state).context("cannot load the VM state")?;
                    wire::send(&mut &*main, &Msg::Ready)?;
                    wait_go(vm, main, pages)?;
                    vm.resume()?;
                    let resumed = unix_ns();
                    vm.set_status(Status::Completed);
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
                    join_bulk(&mut pages_received)?;
                    vm.set_status(Status::Device);
                    return postcopy(
                        vm,
                        &ram,
                        (self.main.clone(), self.fault.clone()),
                        (&self.gate, self.hello.session, links),
                        have,
                        state,
                        pending,
                        (rounds, pages_received),
                        protect,
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
    (gate, session, links): (&Gate, u64, &Links),
    have: &AtomicBitmap,
    state: Vec<u8>,
    pending_words: Vec<u64>,
    (rounds, pages_received): (u32, u64),
    protect: Option<Protect>,
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
        vm,
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
        fault_samples: Mutex::new(Vec::new()),
        resumed_at: std::sync::OnceLock::new(),
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
        protect,
        ckpt: Checkpoints::default(),
        ckpt_to: Mutex::new(None),
        last_heard: Mutex::new(Instant::now()),
    };
    let main: &Conn = &first.0;
    wire::send(&mut &*main, &Msg::Ready)?;
    wait_go(vm, main, pages)?;
    vm.set_dirty_logging(true)?;
    if protect.is_some() {
        // Nothing the guest sends here is seen outside before the source
        // has a checkpoint that covers it.
        vm.hold_output()?;
    }
    post.heard();
    vm.set_status(Status::PostcopyActive);
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
        if let Some(p) = protect {
            let post = &post;
            scope.spawn(move || post.checkpoint_loop(p, links));
            scope.spawn(move || post.release_loop());
        }
        let _ = post.resumed_at.set(Instant::now());
        let resume = vm.resume();
        let resumed = unix_ns();
        let mut link = first.clone();
        let outcome = resume.and_then(|()| loop {
            let (m, f) = link.clone();
            f.set_read_timeout(None)?;
            post.link_broken.store(false, Ordering::Release);
            *post.demand_to.lock().unwrap_or_else(|e| e.into_inner()) = Some(f.clone());
            *post.ckpt_to.lock().unwrap_or_else(|e| e.into_inner()) = Some(m.clone());
            post.heard();
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
                                let arrived = Instant::now();
                                post.heard();
                                for pg in list {
                                    if let Err(e) = post.install(pg, false, arrived) {
                                        post.fail(format!("{e:#}"));
                                        return;
                                    }
                                }
                            }
                            Ok(Msg::CheckpointAck(seq)) if post.protect.is_some() => {
                                post.heard();
                                post.ack(seq);
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
            if vm.aborted() {
                f.shutdown(std::net::Shutdown::Both);
                let _ = replies.join();
                break Err(anyhow!(
                    "post-copy ended with {} of {} pages here; the VM is lost at the destination",
                    post.received_count.load(Ordering::Acquire),
                    post.pending_count
                ));
            }
            vm.set_status(Status::PostcopyPaused);
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
            match accept_resume(gate, session, &post) {
                Ok(l) => {
                    recoveries += 1;
                    eprintln!("godwit: post-copy resumed");
                    links.set(vec![l.0.clone(), l.1.clone()]);
                    vm.set_status(Status::PostcopyActive);
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
    let mut written = vm.take_dirty_log()?;
    vm.set_dirty_logging(false)?;
    {
        let w = post.ckpt.written.lock().unwrap_or_else(|e| e.into_inner());
        or_into(&mut written, &w);
    }
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
    if let Some(p) = protect {
        // The source confirms that it will not resume the VM any more;
        // only then does the VM's output go out unheld. Without that word
        // within the fence time the source may resume it: stop here.
        wire::send(&mut &*main, &Msg::Complete)?;
        main.set_read_timeout(Some(p.fence))?;
        let confirmed = loop {
            match wire::recv(&mut &*main, pages) {
                Ok(Msg::CheckpointAck(u64::MAX)) => break true,
                Ok(Msg::CheckpointAck(_)) => continue,
                _ => break false,
            }
        };
        if !confirmed {
            vm.fence();
            vm.set_status(Status::Failed);
            bail!(
                "every page is here, but the source did not confirm the end of the migration \
                 within {} ms: the VM is stopped here for good (fenced)",
                p.fence.as_millis()
            );
        }
        main.set_read_timeout(Some(PEER_TIMEOUT))?;
        vm.release_output(None);
        vm.set_status(Status::Completed);
    } else {
        vm.set_status(Status::Completed);
        wire::send(&mut &*main, &Msg::Complete)?;
    }
    std::thread::sleep(after_window);
    let lat = post
        .latencies_us
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let (p50, p99, max) = latency_summary(lat);
    let breakdown = fault_breakdown(
        &post.fault_samples.lock().unwrap_or_else(|e| e.into_inner()),
        &[],
    );
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
        "fault_breakdown": breakdown,
        "prepaging_hits": hits,
        "pages_written_during_postcopy": written_n,
        "recoveries": recoveries,
        "checkpoints": checkpoint_report(&post, vm),
        "guest": guest(resumed, completed),
    });
    wire::send(&mut &*main, &Msg::Report(report.to_string()))?;
    Ok(Received { report })
}

/// The checkpoints' figures for the report (null without protection).
fn checkpoint_report(post: &Post, vm: &dyn DestVm) -> Value {
    let Some(p) = post.protect else {
        return Value::Null;
    };
    let c = &post.ckpt;
    let pause = c.pause_us.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (p50, p99, max) = latency_summary(pause);
    json!({
        "interval_ms": p.interval.as_millis() as u64,
        "fence_ms": p.fence.as_millis() as u64,
        "taken": c.taken.load(Ordering::Relaxed),
        "skipped": c.skipped.load(Ordering::Relaxed),
        "acked": c.acked.load(Ordering::Relaxed),
        "pages": c.pages.load(Ordering::Relaxed),
        "bytes": c.bytes.load(Ordering::Relaxed),
        "pause_us_p50": p50,
        "pause_us_p99": p99,
        "pause_us_max": max,
        "held_output": vm.held_output(),
    })
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
        if post.vm.aborted() {
            bail!("the operator ended the migration");
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
fn accept_resume(gate: &Gate, session: u64, post: &Post) -> Result<(Arc<Conn>, Arc<Conn>)> {
    loop {
        if post.vm.aborted() {
            bail!("no source came back before the operator ended the migration");
        }
        if let Some(why) = post
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            bail!("post-copy failed at the destination: {why}");
        }
        let Some(a) = gate.next(Some(Duration::from_millis(100)))? else {
            continue;
        };
        let h = &a.hello;
        if !(h.resume && h.session == session && h.channel == Channel::Main) {
            let _ = wire::send(
                &mut &a.conn,
                &Msg::Refuse("this destination is finishing another migration".into()),
            );
            gate.stray(a.peer, "not the source of the migration in progress");
            continue;
        }
        let main = a.conn;
        post.vm.set_status(Status::PostcopyRecover);
        wire::send(&mut &main, &Msg::Accept)?;
        let fault = accept_fault(gate, session, &main)?;
        wire::send(&mut &main, &Msg::Resume(post.received.snapshot()))?;
        return Ok((Arc::new(main), Arc::new(fault)));
    }
}

/// The push stream: pages until `PushDone`.
fn receive_push(post: &Post, main: &Conn, pages: usize) -> Result<()> {
    loop {
        match wire::recv(&mut &*main, pages) {
            Ok(Msg::Pages(list)) => {
                let arrived = Instant::now();
                post.heard();
                for pg in list {
                    post.install(pg, true, arrived)?;
                }
            }
            Ok(Msg::PushDone) => {
                post.heard();
                return Ok(());
            }
            Ok(m) => bail!("unexpected {} from the source during post-copy", m.name()),
            Err(e) => return Err(anyhow!(e).context("the push stream from the source broke")),
        }
    }
}

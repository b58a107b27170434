//! The sending side: connect, hand shake, then move the VM in the chosen
//! mode. See [`crate::wire`] for the exchange.

use crate::prepaging::PushOrder;
use crate::stats::{Progress, Report, Status, ThrottleStep};
use crate::transport::{Conn, Security};
use crate::wire::{self, Channel, Codec, DiskWrite, Hello, Msg, Packer, Page, WireError, PAGE};
use crate::{converge, or_into, unix_ns, Mode, Params, SourceVm};
use anyhow::{anyhow, bail, Context, Result};
use godwit_memory::{is_zero_page, AtomicBitmap, GuestRam};
use std::io::{BufWriter, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long to wait for the destination to answer any one step.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the destination may take to answer the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pages per `Pages` frame on the push / pre-copy stream.
const BATCH: usize = 32;
/// Send buffer of the push connection in post-copy: small, so that little
/// pushed data sits between the engine and the link.
const PUSH_SNDBUF: usize = 256 << 10;
/// Unsent bytes the push connection may hold in the kernel
/// (`TCP_NOTSENT_LOWAT`).
const PUSH_NOTSENT_LOWAT: libc::c_int = 16 << 10;
/// Post-copy's hot pages sent ahead: the pause waits until at most this
/// much of them is still unacknowledged...
const HOT_AHEAD_QUEUED: usize = 32 << 10;
/// ...but no longer than this after the last was written.
const HOT_AHEAD_DRAIN: Duration = Duration::from_secs(2);

fn connect(to: &str) -> Result<TcpStream> {
    let addrs: Vec<_> = to
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve migration address '{to}' (want HOST:PORT)"))?
        .collect();
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, Duration::from_secs(10)) {
            Ok(s) => {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(PEER_TIMEOUT))?;
                s.set_write_timeout(Some(PEER_TIMEOUT))?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => anyhow!(e).context(format!(
            "cannot connect to the destination {to} (is `godwit receive --listen {to}` running?)"
        )),
        None => anyhow!("migration address '{to}' resolves to nothing"),
    })
}

/// Caps the kernel's pacing rate of a TCP socket (bytes/s): the socket
/// sends no faster, so it never builds a queue at a slower link. The kernel
/// takes a 32- or 64-bit value.
fn set_pacing(s: &Conn, bytes_per_s: u64) -> Result<()> {
    s.set_option(libc::SOL_SOCKET, libc::SO_MAX_PACING_RATE, bytes_per_s)
        .context("cannot set SO_MAX_PACING_RATE")
}

fn set_sndbuf(s: &Conn, bytes: usize) -> Result<()> {
    s.set_option(libc::SOL_SOCKET, libc::SO_SNDBUF, bytes as libc::c_int)
        .context("cannot set SO_SNDBUF")
}

/// Reads one message, mapping the peer's own error reports to errors.
fn expect(s: &Conn, pages: usize, what: &str) -> Result<Msg> {
    let mut r = s;
    match wire::recv(&mut r, pages) {
        Ok(Msg::Error(e)) => bail!("the destination failed: {e}"),
        Ok(Msg::Refuse(e)) => bail!("the destination refused the migration: {e}"),
        Ok(m) => Ok(m),
        Err(WireError::Closed) => {
            bail!("the destination closed the connection (waiting for {what})")
        }
        Err(WireError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            bail!("the destination did not answer in time (waiting for {what})")
        }
        Err(e) => Err(anyhow!(e).context(format!("waiting for {what} from the destination"))),
    }
}

/// Counts what goes out on a connection.
struct Out<'a> {
    w: BufWriter<&'a Conn>,
    progress: &'a Progress,
    /// Packs page batches (the bulk transfer's connection only).
    packer: Option<Packer>,
    packed: Packed,
}

/// What packing page batches did.
#[derive(Default, Clone, Copy)]
struct Packed {
    /// Page-batch bytes before and after packing.
    plain_bytes: u64,
    wire_bytes: u64,
    /// Time spent packing.
    ns: u64,
}

impl Packed {
    fn add(&mut self, o: &Packed) {
        self.plain_bytes += o.plain_bytes;
        self.wire_bytes += o.wire_bytes;
        self.ns += o.ns;
    }
}

impl<'a> Out<'a> {
    fn new(w: BufWriter<&'a Conn>, progress: &'a Progress) -> Out<'a> {
        Out {
            w,
            progress,
            packer: None,
            packed: Packed::default(),
        }
    }

    fn send(&mut self, m: &Msg) -> Result<()> {
        let bytes = match &mut self.packer {
            Some(p) if matches!(m, Msg::Pages(_)) => {
                let t = Instant::now();
                let (bytes, plain) = p.encode(m).context("cannot compress a page batch")?;
                self.packed.ns += t.elapsed().as_nanos() as u64;
                self.packed.plain_bytes += plain as u64;
                self.packed.wire_bytes += bytes.len() as u64;
                bytes
            }
            _ => m.encode(),
        };
        self.progress
            .bytes_sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.w
            .write_all(&bytes)
            .with_context(|| format!("cannot send {} to the destination", m.name()))
    }
    fn flush(&mut self) -> Result<()> {
        self.w.flush().context("cannot send to the destination")
    }
}

/// Reads a page for the wire; `None` data for a zero page.
fn read_page(ram: &GuestRam, p: usize, progress: &Progress) -> Result<Page> {
    let mut d = Box::new([0u8; PAGE]);
    ram.read_page(p, &mut d)?;
    if is_zero_page(&d) {
        progress.pages_zero.fetch_add(1, Ordering::Relaxed);
        return Ok(Page {
            index: p as u32,
            data: None,
        });
    }
    Ok(Page {
        index: p as u32,
        data: Some(d),
    })
}

/// Sends `pages` in batches; checks for cancellation between batches.
fn send_pages(
    out: &mut Out,
    ram: &GuestRam,
    pages: impl Iterator<Item = usize>,
    counter: &std::sync::atomic::AtomicU64,
    cancellable: bool,
) -> Result<u64> {
    let progress = out.progress;
    let mut batch = Vec::with_capacity(BATCH);
    let mut n = 0;
    for p in pages {
        batch.push(read_page(ram, p, progress)?);
        n += 1;
        if batch.len() == BATCH {
            out.send(&Msg::Pages(std::mem::take(&mut batch)))?;
            counter.fetch_add(BATCH as u64, Ordering::Relaxed);
            if cancellable && progress.cancel.load(Ordering::Relaxed) {
                bail!("cancelled");
            }
        }
    }
    if !batch.is_empty() {
        counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
        out.send(&Msg::Pages(batch))?;
    }
    Ok(n)
}

/// Pages of one bulk channel's share, in a run of this many: each page
/// always travels on the same channel (so its copies of successive rounds
/// arrive in order), and batches stay mostly contiguous.
const CHANNEL_RUN: usize = 64;

/// The channel (0: the main connection) that page `p` travels on.
fn channel_of(p: usize, channels: usize) -> usize {
    (p / CHANNEL_RUN) % channels
}

/// Which progress counter a set of pages adds to.
#[derive(Clone, Copy)]
enum Pass {
    Precopy,
    StopCopy,
}

impl Pass {
    fn counter(self, progress: &Progress) -> &AtomicU64 {
        match self {
            Pass::Precopy => &progress.pages_precopy,
            Pass::StopCopy => &progress.pages_stop_copy,
        }
    }
}

enum Job {
    Pages(Vec<usize>, Pass),
    /// Send `BulkEnd` and stop.
    End,
}

/// What one bulk channel's thread reports for a job.
enum Done {
    Sent(Result<u64>),
    Ended(Result<Packed>),
}

/// The bulk connections' sending threads: each reads its share of a page
/// set from guest RAM, packs it if asked, and writes it out on its own
/// connection, so reading, compression and TLS run on as many threads as
/// there are channels.
struct Bulk<'c> {
    jobs: Vec<std::sync::mpsc::SyncSender<Job>>,
    done: std::sync::mpsc::Receiver<Done>,
    conns: &'c [Conn],
    ended: bool,
}

impl<'c> Bulk<'c> {
    /// Starts a thread per connection of `conns` in `scope`.
    fn start<'s, 'e>(
        scope: &'s std::thread::Scope<'s, 'e>,
        conns: &'c [Conn],
        ram: &'e GuestRam,
        progress: &'e Progress,
        codec: Codec,
    ) -> Result<Bulk<'c>>
    where
        'c: 's,
    {
        let (done_tx, done) = std::sync::mpsc::channel();
        let mut jobs = Vec::new();
        for c in conns {
            let packer = match codec {
                Codec::None => None,
                c => Some(Packer::new(c)?),
            };
            let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(1);
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                let mut out = Out::new(BufWriter::with_capacity(1 << 20, c), progress);
                out.packer = packer;
                while let Ok(job) = rx.recv() {
                    match job {
                        Job::Pages(list, pass) => {
                            let r = send_pages(
                                &mut out,
                                ram,
                                list.into_iter(),
                                pass.counter(progress),
                                true,
                            )
                            .and_then(|n| out.flush().map(|()| n));
                            if done_tx.send(Done::Sent(r)).is_err() {
                                return;
                            }
                        }
                        Job::End => {
                            let r = out
                                .send(&Msg::BulkEnd)
                                .and_then(|()| out.flush())
                                .map(|()| std::mem::take(&mut out.packed));
                            let _ = done_tx.send(Done::Ended(r));
                            return;
                        }
                    }
                }
            });
            jobs.push(tx);
        }
        Ok(Bulk {
            jobs,
            done,
            conns,
            ended: false,
        })
    }

    /// Every channel, the main one included.
    fn channels(&self) -> usize {
        self.jobs.len() + 1
    }

    /// Sends `pages`: each bulk channel's share on its thread, the main
    /// connection's on `out` here; returns once all of it is written.
    fn send(&self, out: &mut Out, ram: &GuestRam, pages: Vec<usize>, pass: Pass) -> Result<u64> {
        let n = self.channels();
        if n == 1 {
            return send_pages(
                out,
                ram,
                pages.into_iter(),
                pass.counter(out.progress),
                true,
            );
        }
        let mut shares = vec![Vec::new(); n];
        for p in pages {
            shares[channel_of(p, n)].push(p);
        }
        let mut shares = shares.into_iter();
        let main = shares.next().unwrap_or_default();
        for (tx, share) in self.jobs.iter().zip(shares) {
            tx.send(Job::Pages(share, pass))
                .map_err(|_| anyhow!("a bulk channel's thread ended"))?;
        }
        // The main connection's share goes out meanwhile; every reply is
        // collected before an error is returned, so no job is left behind.
        let mut result = send_pages(out, ram, main.into_iter(), pass.counter(out.progress), true);
        for _ in 0..self.jobs.len() {
            let r = match self.done.recv() {
                Ok(Done::Sent(r)) => r,
                _ => Err(anyhow!("a bulk channel's thread ended")),
            };
            result = match (result, r) {
                (Ok(a), Ok(b)) => Ok(a + b),
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
        }
        result
    }

    /// Ends every bulk connection (`BulkEnd` after its last page) and adds
    /// what their packers did to `out`'s; the main connection gets the
    /// whole bandwidth cap back.
    fn finish(&mut self, out: &mut Out, max_bandwidth: u64) -> Result<()> {
        if self.ended || self.jobs.is_empty() {
            return Ok(());
        }
        self.ended = true;
        for tx in &self.jobs {
            tx.send(Job::End)
                .map_err(|_| anyhow!("a bulk channel's thread ended"))?;
        }
        for _ in 0..self.jobs.len() {
            match self.done.recv() {
                Ok(Done::Ended(Ok(p))) => out.packed.add(&p),
                Ok(Done::Ended(Err(e))) => return Err(e.context("ending a bulk connection")),
                _ => bail!("a bulk channel's thread ended"),
            }
        }
        if max_bandwidth > 0 {
            set_pacing(out.w.get_ref(), max_bandwidth)?;
        }
        Ok(())
    }

    /// Closes the bulk connections (on a failure: a thread blocked on a
    /// write returns).
    fn shut(&self) {
        for c in self.conns {
            c.shutdown(Shutdown::Both);
        }
    }
}

/// Pages in `words` that are not free now.
fn not_free(words: &[u64], ram: &GuestRam) -> Vec<usize> {
    let free = ram.free_map();
    AtomicBitmap::iter_set(words)
        .filter(|&p| p < ram.pages() && !free.get(p))
        .collect()
}

struct Conns {
    main: Conn,
    fault: Conn,
    /// The bulk connections beside the main one (none on a resume).
    bulk: Vec<Conn>,
    pages: usize,
}

fn handshake(
    to: &str,
    vm: &dyn SourceVm,
    params: &Params,
    sec: &Security,
    session: u64,
    resume: bool,
) -> Result<Conns> {
    let ram = vm.ram();
    let bulk = if resume {
        0
    } else {
        params.channels.clamp(1, crate::MAX_CHANNELS) - 1
    } as u8;
    let hello = |channel| {
        Msg::Hello(Hello {
            version: wire::VERSION,
            channel,
            session,
            ram_bytes: ram.size() as u64,
            page_size: PAGE as u32,
            board: vm.board(),
            mode: params.mode.to_string(),
            resume,
            bulk: if channel == Channel::Main { bulk } else { 0 },
        })
    };
    let answer = |c: &Conn| -> Result<()> {
        c.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        match expect(c, 0, "the handshake answer")? {
            Msg::Accept => {}
            m => bail!("the destination answered the handshake with {}", m.name()),
        }
        c.set_read_timeout(Some(PEER_TIMEOUT))?;
        Ok(())
    };
    let main = Conn::client(connect(to)?, sec)?;
    wire::send(&mut &main, &hello(Channel::Main)).context("cannot send the handshake")?;
    answer(&main)?;
    let fault = Conn::client(connect(to)?, sec)?;
    fault
        .mark_fault_path()
        .context("cannot set the fault connection's priority")?;
    wire::send(&mut &fault, &hello(Channel::Fault)).context("cannot send the handshake")?;
    answer(&fault)?;
    let mut conns = Vec::new();
    for n in 0..bulk {
        let c = Conn::client(connect(to)?, sec)?;
        wire::send(&mut &c, &hello(Channel::Bulk(n)))
            .with_context(|| format!("cannot open bulk connection {}", n + 1))?;
        answer(&c)?;
        conns.push(c);
    }
    Ok(Conns {
        main,
        fault,
        bulk: conns,
        pages: ram.pages(),
    })
}

/// Migrates the VM to `to` (`HOST:PORT` of `godwit receive`). On success
/// the source VM stays paused (the destination runs it); on a failure
/// before the commit point the source VM runs again, unharmed.
pub fn migrate(
    vm: &dyn SourceVm,
    to: &str,
    params: &Params,
    sec: &Security,
    progress: &Progress,
) -> Result<Report> {
    let ram = vm.ram();
    let mut report = Report {
        mode: params.mode.to_string(),
        prepaging: match params.mode {
            Mode::Postcopy | Mode::Hybrid => params.prepaging.to_string(),
            _ => "n/a".into(),
        },
        ram_bytes: ram.size() as u64,
        pages_total: ram.pages() as u64,
        max_bandwidth: params.max_bandwidth,
        ..Report::default()
    };
    progress
        .pages_total
        .store(ram.pages() as u64, Ordering::Relaxed);
    if params.failover_ms > 0 {
        check_failover(params)?;
        report.failover.armed = true;
        report.failover.timeout_ms = params.failover_ms;
        report.failover.checkpoint_interval_ms = params.checkpoint_ms;
    }
    let session = (unix_ns() as u64) ^ ((std::process::id() as u64) << 32);
    let conns = handshake(to, vm, params, sec, session, false)?;
    report.security = sec.name().into();
    report.channels = 1 + conns.bulk.len() as u32;
    if params.max_bandwidth > 0 {
        // The bulk transfer shares the cap; the main connection gets all of
        // it back for post-copy's push (`Bulk::finish`).
        let share = params.max_bandwidth / u64::from(report.channels);
        for c in std::iter::once(&conns.main).chain(&conns.bulk) {
            set_pacing(c, share.max(1))?;
        }
    }
    let mut s = Session {
        hot: Vec::new(),
        session,
        sec,
        vm,
        ram: &ram,
        params,
        progress,
        report: &mut report,
        paused: false,
        committed: false,
        logging: false,
        hinting: false,
        throttle: 0,
        backup: Backup::new(),
        released: false,
    };
    let result = s.run(conns);
    if let Err(e) = &result {
        s.unwind(e);
    }
    result?;
    report.status = if report.failover.failed_over {
        "failed-over".into()
    } else {
        "completed".into()
    };
    Ok(report)
}

/// Most bytes of a protected post-copy's disk writes the source keeps (the
/// destination holds at most 256 MiB; a destination that sends more is
/// wrong).
const MAX_BACKUP_WRITE_BYTES: u64 = 512 << 20;

/// How long a failover waits for the VM to be able to resume here (a hung
/// destination may still hold the disks).
const FAILOVER_RESUME_LIMIT: Duration = Duration::from_secs(60);

/// Failover's parameters, checked before anything is sent.
fn check_failover(params: &Params) -> Result<()> {
    if !matches!(params.mode, Mode::Postcopy | Mode::Hybrid) {
        bail!(
            "failover protects a post-copy: it needs mode postcopy or hybrid, not {}",
            params.mode
        );
    }
    if !(1..=60_000).contains(&params.checkpoint_ms) {
        bail!(
            "checkpoint interval {} ms: it must be 1..60000 ms",
            params.checkpoint_ms
        );
    }
    if params.failover_ms < 4 * params.checkpoint_ms || params.failover_ms > 3_600_000 {
        bail!(
            "failover timeout {} ms: it must be at least 4 checkpoint intervals ({} ms) and at most an hour \
             (the destination stops the VM after half of it without a word from the source, \
             before the source may resume it)",
            params.failover_ms,
            4 * params.checkpoint_ms
        );
    }
    Ok(())
}

/// The source's copy of a post-copy protected by checkpoints: its RAM
/// (which it keeps) plus the destination's checkpoints applied to it.
struct Backup {
    /// The last complete checkpoint: its number and state.
    last: Mutex<Option<(u64, Vec<u8>)>>,
    /// The disk writes of complete checkpoints (tagged with the checkpoint
    /// that brought them) that the destination has not said are on the
    /// images yet, in the order they came.
    writes: Mutex<std::collections::VecDeque<(u64, DiskWrite)>>,
    /// Their bytes.
    write_bytes: AtomicU64,
    /// When the destination last said anything.
    heard: Mutex<Instant>,
    checkpoints: AtomicU64,
    pages: AtomicU64,
    bytes: AtomicU64,
}

impl Backup {
    fn new() -> Backup {
        Backup {
            last: Mutex::new(None),
            writes: Mutex::new(Default::default()),
            write_bytes: AtomicU64::new(0),
            heard: Mutex::new(Instant::now()),
            checkpoints: AtomicU64::new(0),
            pages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    fn heard(&self) {
        *self.heard.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn last_heard(&self) -> Instant {
        *self.heard.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn last_seq(&self) -> u64 {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |l| l.0)
    }

    /// Reads the destination's checkpoints on `main` until `Complete`. A
    /// checkpoint's pages are kept aside until its end arrives, then
    /// written into this RAM (they are pages the destination has, so the
    /// push never reads them) and confirmed on the fault connection. A
    /// checkpoint cut short by a broken link is dropped (the destination
    /// sends its pages again in the next one).
    fn receive(&self, main: &Conn, ram: &GuestRam, acks: &Mutex<Out>, pages: usize) -> Result<()> {
        let mut staged: Vec<Page> = Vec::new();
        let mut staged_writes: Vec<DiskWrite> = Vec::new();
        let mut staged_write_bytes = 0u64;
        loop {
            let msg = wire::recv(&mut &*main, pages)
                .map_err(|e| anyhow!(e).context("the destination went silent or its link broke"))?;
            self.heard();
            match msg {
                Msg::CkptPages(list) => {
                    if staged.len() + list.len() > pages {
                        bail!("the destination sent a checkpoint with more pages than RAM has");
                    }
                    // What the batch cost on the wire: a zero page is its
                    // header only.
                    let bytes: usize = list
                        .iter()
                        .map(|pg| 5 + pg.data.as_ref().map_or(0, |_| PAGE))
                        .sum();
                    self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                    staged.extend(list);
                }
                Msg::CkptWrites(list) => {
                    let bytes: u64 = list.iter().map(|w| w.wire_len() as u64).sum();
                    staged_write_bytes += bytes;
                    if staged_write_bytes + self.write_bytes.load(Ordering::Relaxed)
                        > MAX_BACKUP_WRITE_BYTES
                    {
                        bail!(
                            "the destination sent more than {} MiB of disk writes not yet on its images",
                            MAX_BACKUP_WRITE_BYTES >> 20
                        );
                    }
                    self.bytes.fetch_add(bytes, Ordering::Relaxed);
                    staged_writes.extend(list);
                }
                Msg::Checkpoint {
                    seq,
                    released,
                    state,
                } => {
                    if seq <= self.last_seq() {
                        bail!(
                            "the destination sent checkpoint {seq} after {}",
                            self.last_seq()
                        );
                    }
                    {
                        let mut w = self.writes.lock().unwrap_or_else(|e| e.into_inner());
                        w.extend(staged_writes.drain(..).map(|d| (seq, d)));
                        // Those of checkpoints up to `released` are on the
                        // images: a failover need not make them again.
                        while w.front().is_some_and(|(s, _)| *s <= released) {
                            w.pop_front();
                        }
                        let held: u64 = w.iter().map(|(_, d)| d.wire_len() as u64).sum();
                        self.write_bytes.store(held, Ordering::Relaxed);
                    }
                    staged_write_bytes = 0;
                    self.bytes.fetch_add(state.len() as u64, Ordering::Relaxed);
                    self.pages.fetch_add(staged.len() as u64, Ordering::Relaxed);
                    for pg in staged.drain(..) {
                        let gpa = ram.base() + pg.index as u64 * PAGE as u64;
                        match &pg.data {
                            Some(d) => ram.write(gpa, &d[..])?,
                            None => ram.write(gpa, &[0u8; PAGE])?,
                        }
                    }
                    *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((seq, state));
                    self.checkpoints.fetch_add(1, Ordering::Relaxed);
                    // A confirmation that cannot be sent is not an error
                    // here: the destination closes the fault connection
                    // once every page is in (a last checkpoint may cross
                    // that), and a broken link shows on `main` anyway. The
                    // heartbeat repeats it.
                    let mut out = acks.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = out
                        .send(&Msg::CheckpointAck(seq))
                        .and_then(|()| out.flush());
                }
                Msg::Complete => return Ok(()),
                m => bail!(
                    "the destination sent {} during a protected post-copy",
                    m.name()
                ),
            }
        }
    }
}

struct Session<'a> {
    /// Post-copy: pages to push first (the vCPU's last-used pages).
    hot: Vec<usize>,
    session: u64,
    sec: &'a Security,
    vm: &'a dyn SourceVm,
    ram: &'a GuestRam,
    params: &'a Params,
    progress: &'a Progress,
    report: &'a mut Report,
    paused: bool,
    committed: bool,
    logging: bool,
    hinting: bool,
    /// The auto-converge throttle in force, per mille.
    throttle: u32,
    /// Post-copy with failover: the destination's checkpoints.
    backup: Backup,
    /// Post-copy with failover: the source told the destination that it
    /// will not resume the VM (after `Complete`); no failover after that.
    released: bool,
}

impl Session<'_> {
    /// Ends the throttle (the VM is paused, or the migration failed) and
    /// notes what it cost the guest.
    fn throttle_off(&mut self) -> Result<()> {
        if self.throttle > 0 {
            self.throttle = 0;
            let slept = self.vm.set_throttle(0)?;
            self.report.throttled_vcpu_ms = slept.as_secs_f64() * 1e3;
        }
        Ok(())
    }

    /// After a failure: before the commit point the source runs on.
    fn unwind(&mut self, e: &anyhow::Error) {
        let _ = self.throttle_off();
        if self.hinting {
            let _ = self.vm.stop_free_page_hints();
        }
        if self.logging {
            let _ = self.vm.set_dirty_logging(false);
        }
        if self.paused && !self.committed {
            let _ = self.vm.resume();
        }
        self.report.error = Some(format!("{e:#}"));
    }

    fn run(&mut self, conns: Conns) -> Result<()> {
        let Conns {
            main,
            fault,
            bulk,
            pages,
        } = conns;
        let (ram, progress, codec) = (self.ram, self.progress, self.params.compress);
        std::thread::scope(|scope| {
            let mut spread = Bulk::start(scope, &bulk, ram, progress, codec)?;
            let r = self.run_on(main, fault, &mut spread, pages);
            if r.is_err() {
                spread.shut();
            }
            r
        })
    }

    fn run_on(&mut self, main: Conn, fault: Conn, bulk: &mut Bulk, pages: usize) -> Result<()> {
        let reader = &main;
        let mut out = Out::new(BufWriter::with_capacity(1 << 20, &main), self.progress);
        if self.params.compress != Codec::None {
            out.packer = Some(Packer::new(self.params.compress)?);
        }
        self.progress.set_status(Status::Active);
        let nonfree = (0..pages).filter(|&p| !self.ram.free_map().get(p)).count() as u64;
        self.report.nonfree_pages = nonfree;
        let start = self.progress.started;

        // Pre-copy rounds (pre-copy and hybrid).
        let mut unsent: Vec<u64> = vec![0; pages.div_ceil(64)];
        let iterate = matches!(self.params.mode, Mode::Precopy | Mode::Hybrid);
        let mut switch_to_postcopy = self.params.mode == Mode::Postcopy;
        if iterate {
            switch_to_postcopy = self.precopy_rounds(&mut out, bulk, &mut unsent)?;
        } else if switch_to_postcopy && self.params.hot_pages_first && self.params.hot_pages_ahead {
            self.send_hot_ahead(&mut out, &main, &mut unsent)?;
        }
        if self.progress.cancel.load(Ordering::Relaxed) {
            bail!("cancelled");
        }

        // Stop the source.
        self.report.pause_latency_us = self.vm.pause()?.as_micros() as u64;
        self.report.paused_unix_ns = unix_ns();
        self.paused = true;
        self.throttle_off()?;
        self.progress.set_status(Status::Device);
        if self.logging {
            or_into(&mut unsent, &self.vm.take_dirty_log()?);
            self.vm.set_dirty_logging(false)?;
            self.logging = false;
        } else {
            unsent.iter_mut().for_each(|w| *w = u64::MAX);
        }
        if self.hinting {
            self.vm.stop_free_page_hints()?;
            self.hinting = false;
        }
        let remaining = not_free(&unsent, self.ram);
        if switch_to_postcopy && self.params.hot_pages_first {
            self.hot = self.vm.hot_pages()?;
            self.report.pages_hot_first = self.hot.len() as u64;
        }
        let free_now = self.ram.free_map().count() as u64;
        let state = self.vm.save_state()?;
        self.report.state_bytes = state.len() as u64;

        if !switch_to_postcopy {
            // Stop-and-copy of what is left, then the state.
            self.progress
                .pages_remaining
                .store(remaining.len() as u64, Ordering::Relaxed);
            if !iterate {
                self.progress
                    .pages_free_skipped
                    .store(free_now, Ordering::Relaxed);
            }
            bulk.send(&mut out, self.ram, remaining, Pass::StopCopy)?;
            bulk.finish(&mut out, self.params.max_bandwidth)?;
            out.send(&Msg::State(state))?;
            out.flush()?;
            match expect(reader, pages, "Ready")? {
                Msg::Ready => {}
                m => bail!("the destination sent {} instead of Ready", m.name()),
            }
            if !self.progress.commit() {
                bail!("cancelled");
            }
            self.hand_over_frames(&mut out)?;
            self.committed = true;
            out.send(&Msg::Go)?;
            out.flush()?;
            match expect(reader, pages, "Complete")? {
                Msg::Complete => {}
                m => bail!("the destination sent {} instead of Complete", m.name()),
            }
            self.report.total_ms = start.elapsed().as_secs_f64() * 1e3;
        } else {
            bulk.finish(&mut out, self.params.max_bandwidth)?;
            self.postcopy(&mut out, reader, &fault, remaining, state, pages)?;
        }
        if !self.report.failover.failed_over {
            self.progress.set_status(Status::Completed);
            self.progress.pages_remaining.store(0, Ordering::Relaxed);
        }

        // The destination's report: its side of the figures (post-copy
        // read it on whichever connection it ended with).
        if !switch_to_postcopy {
            reader.set_read_timeout(Some(
                PEER_TIMEOUT + Duration::from_millis(self.params.after_window_ms),
            ))?;
            match expect(reader, pages, "the report")? {
                Msg::Report(json) => self.merge_dest_report(&json),
                m => bail!("the destination sent {} instead of its report", m.name()),
            }
        }
        main.shutdown(Shutdown::Both);
        fault.shutdown(Shutdown::Both);
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let r = &mut *self.report;
        r.rounds = g(&self.progress.rounds);
        r.pages_precopy = g(&self.progress.pages_precopy);
        r.pages_stop_copy = g(&self.progress.pages_stop_copy);
        r.pages_pushed = g(&self.progress.pages_pushed);
        r.pages_demand = g(&self.progress.pages_demand);
        r.pages_zero = g(&self.progress.pages_zero);
        r.pages_free_skipped = g(&self.progress.pages_free_skipped);
        r.bytes_sent = g(&self.progress.bytes_sent);
        r.recoveries = g(&self.progress.recoveries);
        r.compress = self.params.compress.name().to_string();
        r.compress_plain_bytes = out.packed.plain_bytes;
        r.compress_wire_bytes = out.packed.wire_bytes;
        r.compress_ms = out.packed.ns as f64 / 1e6;
        if r.resumed_unix_ns > r.paused_unix_ns {
            r.downtime_ms = (r.resumed_unix_ns - r.paused_unix_ns) as f64 / 1e6;
        }
        Ok(())
    }

    /// Post-copy: sends the pages the vCPUs use now (their TLBs' pages and
    /// the tables that map them) while the VM still runs, with the dirty
    /// log on, so the guest's first steps after the resume find them. At
    /// the pause only those written since are still to send. Leaves the
    /// pages still to send in `unsent`.
    fn send_hot_ahead(&mut self, out: &mut Out, main: &Conn, unsent: &mut [u64]) -> Result<()> {
        self.vm.set_dirty_logging(true)?;
        self.logging = true;
        let pages = self.ram.pages();
        unsent.iter_mut().for_each(|w| *w = u64::MAX);
        let hot: Vec<usize> = self
            .vm
            .hot_pages()?
            .into_iter()
            .filter(|&p| p < pages && !self.ram.free_map().get(p))
            .collect();
        for &p in &hot {
            unsent[p / 64] &= !(1u64 << (p % 64));
        }
        let t = Instant::now();
        self.report.pages_hot_ahead = send_pages(
            out,
            self.ram,
            hot.into_iter(),
            &self.progress.pages_precopy,
            true,
        )?;
        out.flush()?;
        // Pause only once they have crossed: `Switch` must not queue behind
        // them. Bounded: a slow link pauses with some still on the way.
        let written = Instant::now();
        while written.elapsed() < HOT_AHEAD_DRAIN && main.unacked_bytes()? > HOT_AHEAD_QUEUED {
            std::thread::sleep(Duration::from_micros(200));
        }
        self.report.hot_ahead_ms = t.elapsed().as_secs_f64() * 1e3;
        Ok(())
    }

    /// Runs pre-copy rounds until the rest fits the downtime limit (or the
    /// rounds stop shrinking, or hit the limit). Leaves the pages still to
    /// send in `unsent`. Returns whether to finish with post-copy.
    fn precopy_rounds(&mut self, out: &mut Out, bulk: &Bulk, unsent: &mut [u64]) -> Result<bool> {
        let p = self.params;
        let progress = self.progress;
        self.vm.set_dirty_logging(true)?;
        self.logging = true;
        self.report.auto_converge = p.auto_converge;
        if p.free_page_hints {
            self.hinting = self.vm.start_free_page_hints()?;
            self.report.free_page_hints = self.hinting;
        }
        // Round 1: every page not free.
        let pages = self.ram.pages();
        let t = Instant::now();
        let free = self.ram.free_map();
        let mut skipped = 0u64;
        let all = (0..pages)
            .filter(|&q| {
                let f = free.get(q);
                skipped += f as u64;
                !f
            })
            .collect();
        let mut sent = bulk.send(out, self.ram, all, Pass::Precopy)?;
        progress
            .pages_free_skipped
            .store(skipped, Ordering::Relaxed);
        out.send(&Msg::RoundEnd(1))?;
        out.flush()?;
        progress.rounds.store(1, Ordering::Relaxed);
        let mut rate = sent as f64 * PAGE as f64 / t.elapsed().as_secs_f64().max(1e-6);
        let mut prev = u64::MAX;
        let mut stuck = 0;
        let mut round_secs = t.elapsed().as_secs_f64();
        loop {
            let mut dirty = self.vm.take_dirty_log()?;
            let todo = not_free(&dirty, self.ram);
            let n = todo.len() as u64;
            progress.dirty_last_round.store(n, Ordering::Relaxed);
            progress.pages_remaining.store(n, Ordering::Relaxed);
            let rounds = progress.rounds.load(Ordering::Relaxed) as u32;
            let est_ms = n as f64 * PAGE as f64 / rate.max(1.0) * 1e3;
            stuck = if n >= prev { stuck + 1 } else { 0 };
            prev = n;
            let fits = est_ms <= p.downtime_limit_ms as f64;
            let hybrid_switch = p.mode == Mode::Hybrid && rounds >= p.hybrid_rounds;
            let asked = progress.start_postcopy.load(Ordering::Relaxed);
            // With auto-converge, rounds that do not shrink go on while
            // the throttle can still rise.
            let can_throttle = p.auto_converge && self.throttle < converge::MAX_THROTTLE;
            if fits
                || hybrid_switch
                || asked
                || rounds >= p.max_rounds
                || (stuck >= 2 && !can_throttle)
            {
                unsent.copy_from_slice(&dirty);
                return Ok(hybrid_switch || asked);
            }
            if can_throttle {
                // Measure the dirty rate over a short sample (its pages
                // join this round's), then set the throttle from it.
                let s = Instant::now();
                std::thread::sleep(converge::SAMPLE);
                let sample = self.vm.take_dirty_log()?;
                let sample_secs = s.elapsed().as_secs_f64();
                let sample_pages: u64 = sample.iter().map(|w| w.count_ones() as u64).sum();
                or_into(&mut dirty, &sample);
                let t = converge::next_throttle(
                    self.throttle,
                    &converge::RoundEnd {
                        left_pages: n,
                        sample_pages,
                        sample_secs,
                        link_pages_per_s: rate / PAGE as f64,
                        limit_secs: p.downtime_limit_ms as f64 / 1e3,
                    },
                );
                if t > self.throttle {
                    self.throttle = t;
                    self.vm.set_throttle(t)?;
                    stuck = 0;
                    let r = &mut *self.report;
                    r.throttle_max_permille = r.throttle_max_permille.max(t);
                    r.throttle_steps.push(ThrottleStep {
                        round: rounds + 1,
                        permille: t,
                        sample_pages,
                        left_pages: n,
                        after_round_ms: round_secs * 1e3,
                    });
                }
            }
            let todo = not_free(&dirty, self.ram);
            if progress.cancel.load(Ordering::Relaxed) {
                bail!("cancelled");
            }
            let t = Instant::now();
            sent = bulk.send(out, self.ram, todo, Pass::Precopy)?;
            round_secs = t.elapsed().as_secs_f64();
            out.send(&Msg::RoundEnd(rounds + 1))?;
            out.flush()?;
            progress.rounds.store(rounds as u64 + 1, Ordering::Relaxed);
            let r = sent as f64 * PAGE as f64 / t.elapsed().as_secs_f64().max(1e-6);
            if sent >= 64 {
                rate = r;
            }
        }
    }

    /// Post-copy from the paused source: state and pending map first, then
    /// push and demand until every pending page is at the destination.
    fn postcopy(
        &mut self,
        out: &mut Out,
        reader: &Conn,
        fault: &Conn,
        remaining: Vec<usize>,
        state: Vec<u8>,
        pages: usize,
    ) -> Result<()> {
        let progress = self.progress;
        if self.params.mode == Mode::Postcopy {
            progress
                .pages_free_skipped
                .store((pages - remaining.len()) as u64, Ordering::Relaxed);
        }
        let done = AtomicBitmap::new(pages);
        done.fill();
        let pending = AtomicBitmap::new(pages);
        for &p in &remaining {
            done.clear(p);
            pending.set(p);
        }
        progress
            .pages_remaining
            .store(remaining.len() as u64, Ordering::Relaxed);
        if self.params.failover_ms > 0 {
            out.send(&Msg::Protect {
                interval_ms: self.params.checkpoint_ms as u32,
                fence_ms: (self.params.failover_ms / 2) as u32,
            })?;
        }
        out.send(&Msg::Switch {
            state,
            pending: pending.snapshot(),
        })?;
        out.flush()?;
        match expect(reader, pages, "Ready")? {
            Msg::Ready => {}
            m => bail!("the destination sent {} instead of Ready", m.name()),
        }
        if !progress.commit() {
            bail!("cancelled");
        }
        self.hand_over_frames(out)?;
        self.committed = true;
        out.send(&Msg::Go)?;
        out.flush()?;
        self.backup.heard();
        progress
            .failover_armed
            .store(self.params.failover_ms > 0, Ordering::Relaxed);
        progress.set_status(Status::PostcopyActive);
        // From here the VM runs at the destination: a broken link pauses the
        // transfer (both sides keep their state) until `migrate --resume`.
        let mut next: Option<Conns> = None;
        loop {
            let (main, fault): (&Conn, &Conn) = match &next {
                None => (reader, fault),
                Some(c) => (&c.main, &c.fault),
            };
            // Everything before Go was flushed: each link gets its own writer.
            let mut out = Out::new(BufWriter::with_capacity(1 << 20, main), progress);
            match self.postcopy_transfer(&mut out, main, fault, &done, pages) {
                Ok(json) => {
                    self.merge_dest_report(&json);
                    main.shutdown(Shutdown::Both);
                    fault.shutdown(Shutdown::Both);
                    return Ok(());
                }
                Err(e) if self.params.failover_ms > 0 && !self.released => {
                    main.shutdown(Shutdown::Both);
                    fault.shutdown(Shutdown::Both);
                    let why = format!("post-copy link lost: {e:#}");
                    let deadline =
                        self.backup.last_heard() + Duration::from_millis(self.params.failover_ms);
                    eprintln!(
                        "godwit: {why}; unless the destination is reconnected within {} ms of its last word \
                         (`godwit migrate --resume --to HOST:PORT`), the VM resumes here from checkpoint {}",
                        self.params.failover_ms,
                        self.backup.last_seq()
                    );
                    progress.note_error(why.clone());
                    progress.set_status(Status::PostcopyPaused);
                    drop(out);
                    match self.reconnect(&pending, &done, pages, Some(deadline)) {
                        Some(c) => {
                            next = Some(c);
                            self.backup.heard();
                            progress.recoveries.fetch_add(1, Ordering::Relaxed);
                            progress.set_status(Status::PostcopyActive);
                        }
                        None => return self.fail_over(&why),
                    }
                }
                Err(e) => {
                    main.shutdown(Shutdown::Both);
                    fault.shutdown(Shutdown::Both);
                    let why = format!("post-copy link lost: {e:#}");
                    eprintln!(
                        "godwit: {why}; the VM waits at the destination for the pages it lacks; \
                         reconnect with `godwit migrate --resume --to HOST:PORT`"
                    );
                    progress.note_error(why);
                    progress.set_status(Status::PostcopyPaused);
                    drop(out);
                    next = self.reconnect(&pending, &done, pages, None);
                    progress.recoveries.fetch_add(1, Ordering::Relaxed);
                    progress.set_status(Status::PostcopyActive);
                }
            }
        }
    }

    /// After `Ready` (the destination has announced the VM, so the network
    /// sends its frames there now): what reached the paused VM's NICs here
    /// goes along, ahead of `Go`.
    fn hand_over_frames(&mut self, out: &mut Out) -> Result<()> {
        let frames = self.vm.take_host_frames()?;
        if frames.is_empty() {
            return Ok(());
        }
        self.report.frames_forwarded = frames.len() as u64;
        for chunk in frames.chunks(wire::MAX_FRAMES) {
            out.send(&Msg::Frames(chunk.to_vec()))?;
        }
        Ok(())
    }

    /// The destination was lost for good: the VM resumes here from the last
    /// complete checkpoint (its pages are in this RAM already), or from the
    /// state of the switch when none came.
    fn fail_over(&mut self, why: &str) -> Result<()> {
        let lost_at = self.backup.last_heard();
        let last = self
            .backup
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let seq = last.as_ref().map_or(0, |l| l.0);
        if let Some((_, state)) = &last {
            self.vm.load_checkpoint(state).with_context(|| {
                format!("the destination is lost and checkpoint {seq} cannot be loaded; the VM stays paused here")
            })?;
        }
        // The confirmed checkpoints' disk writes the destination may not
        // have made: made here (again, in order) before the VM runs.
        let writes: Vec<DiskWrite> = self
            .backup
            .writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .map(|(_, w)| w)
            .collect();
        // A destination that hangs (rather than dies) may still hold the
        // disks' images: the VM waits here until it lets go.
        let waited = Instant::now();
        let mut said = false;
        loop {
            match self.vm.resume_with_disk_writes(&writes) {
                Ok(()) => break,
                Err(e) if waited.elapsed() < FAILOVER_RESUME_LIMIT => {
                    if !said {
                        eprintln!("godwit: the destination is lost, but the VM cannot resume here yet ({e:#}); retrying");
                        said = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "the destination is lost and the VM could not resume here within {} s; it stays paused",
                        FAILOVER_RESUME_LIMIT.as_secs()
                    )))
                }
            }
        }
        let f = &mut self.report.failover;
        f.failed_over = true;
        f.resumed_from_checkpoint = seq;
        f.disk_writes_replayed = writes.len() as u64;
        f.failover_ms = lost_at.elapsed().as_secs_f64() * 1e3;
        f.checkpoints = self.backup.checkpoints.load(Ordering::Relaxed);
        f.checkpoint_pages = self.backup.pages.load(Ordering::Relaxed);
        f.checkpoint_bytes = self.backup.bytes.load(Ordering::Relaxed);
        let msg = format!(
            "{why}; the destination did not come back within {} ms: the VM runs here again, \
             from checkpoint {seq} ({:.0} ms after the destination's last word)",
            self.params.failover_ms, f.failover_ms
        );
        eprintln!("godwit: {msg}");
        self.report.error = Some(msg.clone());
        self.progress.fail(msg);
        Ok(())
    }

    /// Waits for `migrate --resume` and reconnects to the destination, which
    /// says which pages it has; the others are sent again. Retries until it
    /// works (the VM cannot run anywhere else now), or until `deadline`
    /// (failover: the VM can run here again): then `None`.
    fn reconnect(
        &mut self,
        pending: &AtomicBitmap,
        done: &AtomicBitmap,
        pages: usize,
        deadline: Option<Instant>,
    ) -> Option<Conns> {
        let progress = self.progress;
        loop {
            let to = loop {
                let asked = progress
                    .resume_to
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                if let Some(to) = asked {
                    break to;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let attempt = handshake(&to, self.vm, self.params, self.sec, self.session, true)
                .and_then(
                    |c| match expect(&c.main, pages, "the destination's page map")? {
                        Msg::Resume(have) => Ok((c, have)),
                        m => bail!("the destination sent {} instead of its page map", m.name()),
                    },
                );
            match attempt {
                Ok((c, have)) => {
                    let mut missing = 0;
                    for p in AtomicBitmap::iter_set(&pending.snapshot()) {
                        let there = have.get(p / 64).is_some_and(|w| w >> (p % 64) & 1 == 1);
                        if there {
                            done.set(p);
                        } else {
                            done.clear(p);
                            missing += 1;
                        }
                    }
                    progress.pages_remaining.store(missing, Ordering::Relaxed);
                    eprintln!("godwit: post-copy resumed to {to}; {missing} pages still to send");
                    return Some(c);
                }
                Err(e) => {
                    let why = format!("cannot resume the post-copy to {to}: {e:#}");
                    eprintln!("godwit: {why}");
                    progress.note_error(why);
                    progress.set_status(Status::PostcopyPaused);
                }
            }
        }
    }

    /// One connection's worth of post-copy: push and serve demands until the
    /// destination has every page; returns its report.
    fn postcopy_transfer(
        &mut self,
        out: &mut Out,
        main: &Conn,
        fault: &Conn,
        done: &AtomicBitmap,
        pages: usize,
    ) -> Result<String> {
        let progress = self.progress;
        // The push connection: paced a little under the link (by the push
        // itself, in small frames; see `Pacer`), small buffer.
        set_sndbuf(main, PUSH_SNDBUF)?;
        // Little unsent data in the kernel: a page the guest faults on
        // while it waits there costs that backlog's time on the link.
        main.set_option(
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            PUSH_NOTSENT_LOWAT,
        )
        .context("cannot set TCP_NOTSENT_LOWAT on the push connection")?;
        let pacer = (self.params.max_bandwidth > 0)
            .then(|| Pacer::new(self.params.max_bandwidth * 95 / 100));
        fault.set_read_timeout(None)?;
        let protected = self.params.failover_ms > 0;
        if protected {
            // The destination sends a checkpoint every interval: silence
            // this long means it is gone.
            main.set_read_timeout(Some(Duration::from_millis(self.params.failover_ms)))?;
        }
        let order = Mutex::new(PushOrder::new(self.params.prepaging, pages));
        let ram = self.ram;
        let start = progress.started;
        let replies = Mutex::new(Out::new(
            BufWriter::with_capacity(64 << 10, fault),
            progress,
        ));
        let backup = &self.backup;
        let interval = Duration::from_millis(self.params.checkpoint_ms.max(1));
        let stop = AtomicBool::new(false);
        let r = std::thread::scope(|scope| -> Result<String> {
            let demand =
                scope.spawn(|| serve_demand(fault, &replies, ram, done, &order, progress, pages));
            let checkpoints = protected.then(|| {
                // The destination's word that this side lives, between
                // checkpoints too: without it for its fence time, it stops.
                scope.spawn(|| {
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(interval.min(Duration::from_millis(100)));
                        let mut out = replies.lock().unwrap_or_else(|e| e.into_inner());
                        if out.send(&Msg::CheckpointAck(backup.last_seq())).is_err()
                            || out.flush().is_err()
                        {
                            return;
                        }
                    }
                });
                scope.spawn(|| {
                    let r = backup.receive(main, ram, &replies, pages);
                    if r.is_err() {
                        // The push stops too (its writes fail).
                        main.shutdown(Shutdown::Both);
                    }
                    r
                })
            });
            let hot = std::mem::take(&mut self.hot);
            let pushed = push(out, ram, done, &order, &hot, progress, pacer);
            // Wait for the destination to have every page.
            let r = match checkpoints {
                Some(reader) => {
                    if pushed.is_err() {
                        main.shutdown(Shutdown::Both);
                    }
                    let got = reader
                        .join()
                        .map_err(|_| anyhow!("the checkpoint thread panicked"))?;
                    pushed.and(got).and_then(|()| {
                        // The commit of a protected post-copy: from here the
                        // VM is the destination's alone.
                        self.released = true;
                        out.send(&Msg::CheckpointAck(u64::MAX))?;
                        out.flush()
                    })
                }
                None => pushed.and_then(|()| match expect(main, pages, "Complete")? {
                    Msg::Complete => Ok(()),
                    m => bail!("the destination sent {} instead of Complete", m.name()),
                }),
            };
            stop.store(true, Ordering::Release);
            if r.is_ok() {
                self.report.total_ms = start.elapsed().as_secs_f64() * 1e3;
            }
            // Ends the demand thread (its reads fail once the socket is shut).
            fault.shutdown(Shutdown::Read);
            let d = demand
                .join()
                .map_err(|_| anyhow!("the demand thread panicked"))?;
            r?;
            let d = d?;
            self.report.demand_service_us.extend(d.service_us);
            self.report.demands_in_flight += d.in_flight;
            main.set_read_timeout(Some(
                PEER_TIMEOUT + Duration::from_millis(self.params.after_window_ms),
            ))?;
            match expect(main, pages, "the report")? {
                Msg::Report(json) => Ok(json),
                m => bail!("the destination sent {} instead of its report", m.name()),
            }
        });
        let f = &mut self.report.failover;
        f.checkpoints = self.backup.checkpoints.load(Ordering::Relaxed);
        f.checkpoint_pages = self.backup.pages.load(Ordering::Relaxed);
        f.checkpoint_bytes = self.backup.bytes.load(Ordering::Relaxed);
        r
    }

    fn merge_dest_report(&mut self, json: &str) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
            self.report.error = Some("the destination's report is not JSON".into());
            return;
        };
        let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(0.0);
        let r = &mut *self.report;
        r.resumed_unix_ns = v
            .get("resumed_unix_ns")
            .and_then(|x| x.as_str())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        r.network_faults = f("network_faults") as u64;
        r.local_faults = f("local_faults") as u64;
        r.faults_served_by_push = f("faults_served_by_push") as u64;
        r.demands_deferred = f("demands_deferred") as u64;
        r.duplicate_pages = f("duplicate_pages") as u64;
        r.fault_latency_us_p50 = f("fault_latency_us_p50");
        r.fault_latency_us_p99 = f("fault_latency_us_p99");
        r.fault_latency_us_max = f("fault_latency_us_max");
        let mut breakdown = v.get("fault_breakdown").cloned().unwrap_or_default();
        if breakdown.is_object() {
            // The source's side of each request, from its own clock.
            let own = crate::stats::fault_breakdown(&[], &r.demand_service_us);
            breakdown["source_service_us"] = own["source_service_us"].clone();
        }
        r.fault_breakdown = breakdown;
        r.prepaging_hits = f("prepaging_hits") as u64;
        r.pages_written_during_postcopy = f("pages_written_during_postcopy") as u64;
        r.destination = v;
    }
}

/// The push: every page not done, in the pre-paging order, paced by the
/// socket. Ends with `PushDone`.
fn push(
    out: &mut Out,
    ram: &GuestRam,
    done: &AtomicBitmap,
    order: &Mutex<PushOrder>,
    hot: &[usize],
    progress: &Progress,
    mut pacer: Option<Pacer>,
) -> Result<()> {
    let mut batch = Vec::with_capacity(PUSH_FRAME);
    let mut hot = hot.iter().copied().filter(|&p| p < ram.pages());
    loop {
        let next = hot.next().or_else(|| {
            order
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .next(|p| done.get(p))
        });
        let Some(p) = next else { break };
        if done.set(p) {
            continue; // a demand reply took it
        }
        batch.push(read_page(ram, p, progress)?);
        progress.pages_remaining.fetch_sub(1, Ordering::Relaxed);
        // Small frames: a fault's pivot change takes effect quickly, and
        // a page the guest faults on while it is on its way waits behind
        // little.
        if batch.len() == PUSH_FRAME {
            progress
                .pages_pushed
                .fetch_add(PUSH_FRAME as u64, Ordering::Relaxed);
            if let Some(p) = &mut pacer {
                // What the frame costs on the wire: a zero page is its header.
                let bytes: usize = batch
                    .iter()
                    .map(|pg| 8 + pg.data.as_ref().map_or(0, |_| PAGE))
                    .sum();
                p.wait(bytes);
            }
            out.send(&Msg::Pages(std::mem::take(&mut batch)))?;
            out.flush()?;
        }
    }
    progress
        .pages_pushed
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    if !batch.is_empty() {
        out.send(&Msg::Pages(batch))?;
    }
    out.send(&Msg::PushDone)?;
    out.flush()
}

/// Pages per frame of the post-copy push.
const PUSH_FRAME: usize = 4;
/// The most the push pacer sends back to back to catch up, bytes.
const PACER_CATCH_UP: usize = 64 << 10;

/// Paces the post-copy push in the application, frame by frame. Paced by
/// the kernel (`SO_MAX_PACING_RATE`), TCP sends 64 KiB bursts (its TSO
/// autosizing is a millisecond of the pacing rate, capped at 64 KiB), and
/// a pushed page waits for its burst's turn: ~0.45 ms at 1 Gbit/s for a
/// page the guest faults on while it is on its way. Written at the rate in
/// 16 KiB frames, each leaves at once as a frame of its own.
struct Pacer {
    bytes_per_s: f64,
    next: std::time::Instant,
}

impl Pacer {
    fn new(bytes_per_s: u64) -> Pacer {
        Pacer {
            bytes_per_s: bytes_per_s.max(1) as f64,
            next: std::time::Instant::now(),
        }
    }

    /// Waits for `bytes`' turn. Time lost to a late wake-up or a busy CPU
    /// is caught up by the next frames (the schedule is absolute), at most
    /// [`PACER_CATCH_UP`] bytes' worth at once.
    fn wait(&mut self, bytes: usize) {
        let now = std::time::Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        }
        let slack = Duration::from_secs_f64(PACER_CATCH_UP as f64 / self.bytes_per_s);
        let start = self.next.max(now.checked_sub(slack).unwrap_or(now));
        self.next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_s);
    }
}

/// What the demand thread saw of one link.
#[derive(Default)]
struct Served {
    /// Per request answered: from its read to its reply written, µs.
    service_us: Vec<f64>,
    /// Pages requested that were already on the push stream (no reply).
    in_flight: u64,
}

/// Answers demand requests on the fault connection, first come first
/// served, ahead of anything pushed. Returns when the connection closes.
fn serve_demand(
    fault: &Conn,
    replies: &Mutex<Out>,
    ram: &GuestRam,
    done: &AtomicBitmap,
    order: &Mutex<PushOrder>,
    progress: &Progress,
    pages: usize,
) -> Result<Served> {
    crate::fault_path_priority();
    let mut r = fault;
    let mut served = Served::default();
    loop {
        let msg = match wire::recv(&mut r, pages) {
            Ok(m) => m,
            Err(WireError::Closed) => return Ok(served),
            Err(WireError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotConnected | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                return Ok(served)
            }
            Err(e) => return Err(anyhow!(e).context("reading demand requests")),
        };
        let Msg::Demand(list) = msg else {
            bail!(
                "the destination sent {} on the fault connection",
                msg.name()
            );
        };
        let read = std::time::Instant::now();
        let mut reply = Vec::new();
        for p in list {
            let p = p as usize;
            if done.set(p) {
                // Already pushed (in flight) or free: nothing to do.
                served.in_flight += 1;
                continue;
            }
            reply.push(read_page(ram, p, progress)?);
            progress.pages_remaining.fetch_sub(1, Ordering::Relaxed);
        }
        if !reply.is_empty() {
            progress
                .pages_demand
                .fetch_add(reply.len() as u64, Ordering::Relaxed);
            let reply_pages: Vec<usize> = reply.iter().map(|p| p.index as usize).collect();
            {
                let mut out = replies.lock().unwrap_or_else(|e| e.into_inner());
                out.send(&Msg::Pages(reply))?;
                out.flush()?;
            }
            served.service_us.push(read.elapsed().as_secs_f64() * 1e6);
            // Move the push's pivot only after the reply is on its way.
            let mut order = order.lock().unwrap_or_else(|e| e.into_inner());
            for p in &reply_pages {
                order.on_fault(*p);
            }
        }
    }
}

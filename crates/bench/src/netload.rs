//! `godwit netload`: load on a guest's `netserve` (guest/README.md) that
//! measures what a user of the service feels while the guest migrates.
//!
//! - `conns` TCP connections to the request/response port. Each sends a
//!   16-byte request every `period` (sequence-numbered per connection from 0,
//!   random nonces) and checks every answer: the right `seq`, the right
//!   `mix64((seq ^ nonce) + G)`. Each answer's response time is kept with the
//!   time its request was sent (monotonic clock, ms since the run's start).
//! - optionally one bulk stream: `in` (we send the pattern, mode `W`; the
//!   guest checks it) or `out` (mode `R`; we check every byte), its bytes
//!   counted in 100 ms buckets;
//! - optionally the system `ping -i 0.01 -W 1` (iputils) at the guest.
//!
//! Requests go out on schedule whatever the server does: during a stall
//! they queue in the socket (and, once it is full, in our buffer); the
//! backlog is counted. A connection that fails (refused, reset, closed by
//! the server) is reported with the reason and never reopened. Sending stops
//! at the end of the run; answers still missing [`GRACE`] later are lost.
//!
//! The *client-observed downtime* of a connection is the largest gap
//! between two consecutive answers, less the period (the gap a healthy
//! server shows anyway); the run's is the largest of its connections'.
//!
//! [`start`] returns a [`Handle`]: [`Handle::now_ms`] and [`Handle::mark`]
//! put a caller's events (a migration's phases) on the run's clock, and
//! [`Handle::stop`] (or [`Handle::wait`]) returns the [`Report`].
//! The run's start is also given as a `CLOCK_MONOTONIC` reading
//! (`epoch_monotonic_ns`), which every process of the machine shares.
//!
//! One thread per connection (`ppoll` on its socket, waking for the next
//! request), one for the stream. Every loop ends by the run's end plus the
//! grace, and is also capped in iterations.

use crate::stats::{mean_sd, percentile};
use crate::testbed::{self, Process};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// netserve's request/response port.
pub const DEFAULT_PORT: u16 = 7000;
/// netserve's bulk stream port.
pub const DEFAULT_STREAM_PORT: u16 = 7001;
/// How long answers may still come after sending stopped.
pub const GRACE: Duration = Duration::from_secs(2);
/// Width of the throughput buckets.
pub const BUCKET_MS: u64 = 100;
/// Most connections of one run.
pub const MAX_CONNS: usize = 64;
/// Longest run (also of one that waits for `stop`).
pub const MAX_RUN: Duration = Duration::from_secs(3600);
const MIN_PERIOD: Duration = Duration::from_micros(100);
const MAX_PERIOD: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a worker blocks without looking at the stop flag.
const TICK: Duration = Duration::from_millis(20);
/// Reads per wake-up of a connection (each takes what is there).
const READS_PER_WAKE: usize = 8;
const STREAM_CHUNK: usize = 64 << 10;
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
const REQ_BYTES: usize = 16;

// ---------------------------------------------------------------------------
// The wire (guest/README.md, `netserve`)

/// splitmix64's finalizer, as the guest's `mix64`.
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The answer netserve gives to request `(seq, nonce)`.
pub fn answer(seq: u64, nonce: u64) -> u64 {
    mix64((seq ^ nonce).wrapping_add(GOLDEN))
}

/// Word `k` of the bulk stream (bytes 8k..8k+7, little-endian).
pub fn stream_word(k: u64) -> u64 {
    mix64(k.wrapping_add(1).wrapping_mul(GOLDEN))
}

/// Fills `buf` with the stream's bytes from `offset` on.
pub fn fill_stream(offset: u64, buf: &mut [u8]) {
    let mut k = offset / 8;
    let mut word = stream_word(k).to_le_bytes();
    for (i, b) in buf.iter_mut().enumerate() {
        let o = offset + i as u64;
        if o / 8 != k {
            k = o / 8;
            word = stream_word(k).to_le_bytes();
        }
        *b = word[(o % 8) as usize];
    }
}

/// The first byte of a stream that was not the pattern's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Corruption {
    pub offset: u64,
    pub expected: u8,
    pub found: u8,
}

/// Checks received stream bytes against the pattern. As the guest's own
/// checker: the first mismatch is recorded, the rest goes unchecked.
#[derive(Debug, Default)]
pub struct StreamChecker {
    /// Bytes fed so far.
    pub offset: u64,
    pub corrupt: Option<Corruption>,
}

impl StreamChecker {
    pub fn feed(&mut self, data: &[u8]) {
        if self.corrupt.is_none() {
            let mut k = self.offset / 8;
            let mut word = stream_word(k).to_le_bytes();
            for (i, &found) in data.iter().enumerate() {
                let o = self.offset + i as u64;
                if o / 8 != k {
                    k = o / 8;
                    word = stream_word(k).to_le_bytes();
                }
                let expected = word[(o % 8) as usize];
                if found != expected {
                    self.corrupt = Some(Corruption {
                        offset: o,
                        expected,
                        found,
                    });
                    break;
                }
            }
        }
        self.offset += data.len() as u64;
    }
}

fn le64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

/// splitmix64, seeded from the kernel: the nonces.
struct Rng(u64);

impl Rng {
    fn seeded(salt: u64) -> Rng {
        let mut seed = [0u8; 8];
        // SAFETY: getrandom writes at most `seed.len()` bytes into `seed`.
        let got = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        let mut s = u64::from_le_bytes(seed);
        if got != seed.len() as isize {
            s = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
        }
        Rng(s ^ mix64(salt))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }
}

// ---------------------------------------------------------------------------
// Configuration

/// Which bulk stream runs beside the requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StreamMode {
    /// No stream.
    None,
    /// We send the pattern to the guest (mode W), the guest checks it.
    In,
    /// The guest sends the pattern (mode R), we check every byte.
    Out,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The request/response port of the netserve.
    pub to: SocketAddr,
    /// The bulk stream port, on the same host.
    pub stream_port: u16,
    /// Request/response connections (0 is allowed with a stream or ping).
    pub conns: usize,
    /// One request per connection every `period`.
    pub period: Duration,
    /// Stop after this long; `None`: at [`Handle::stop`] (at most [`MAX_RUN`]).
    pub duration: Option<Duration>,
    pub stream: StreamMode,
    /// Also run `ping` at the guest's address.
    pub ping: bool,
}

impl Config {
    /// The defaults: 4 connections, 1 ms, no stream, no ping, until stopped.
    pub fn new(to: SocketAddr) -> Config {
        Config {
            to,
            stream_port: DEFAULT_STREAM_PORT,
            conns: 4,
            period: Duration::from_millis(1),
            duration: None,
            stream: StreamMode::None,
            ping: false,
        }
    }

    fn check(&self) -> Result<()> {
        if self.conns > MAX_CONNS {
            bail!("{} connections: at most {MAX_CONNS}", self.conns);
        }
        if !(MIN_PERIOD..=MAX_PERIOD).contains(&self.period) {
            bail!(
                "a period of {:?} is out of range ({MIN_PERIOD:?}..{MAX_PERIOD:?})",
                self.period
            );
        }
        if let Some(d) = self.duration {
            if d.is_zero() || d > MAX_RUN {
                bail!("a duration of {d:?} is out of range (up to {MAX_RUN:?})");
            }
        }
        if self.conns == 0 && self.stream == StreamMode::None && !self.ping {
            bail!("nothing to do: no connections, no stream, no ping");
        }
        Ok(())
    }

    fn run_limit(&self) -> Duration {
        self.duration.unwrap_or(MAX_RUN)
    }
}

// ---------------------------------------------------------------------------
// Running

/// What the workers share with the handle.
struct Shared {
    epoch: Instant,
    stop: AtomicBool,
    marks: Mutex<Vec<Mark>>,
}

impl Shared {
    fn ms(&self, t: Instant) -> f64 {
        ms_between(self.epoch, t)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

fn ms_between(from: Instant, to: Instant) -> f64 {
    if to >= from {
        (to - from).as_secs_f64() * 1e3
    } else {
        -((from - to).as_secs_f64() * 1e3)
    }
}

/// A caller's event on the run's clock.
#[derive(Clone, Debug, Serialize)]
pub struct Mark {
    pub what: String,
    pub t_ms: f64,
}

/// A running load; dropping it stops the workers (they end within the grace).
pub struct Handle {
    config: Config,
    shared: Arc<Shared>,
    limit: Instant,
    epoch_monotonic_ns: u64,
    started_unix_ms: u64,
    conns: Vec<JoinHandle<ConnReport>>,
    stream: Option<JoinHandle<StreamReport>>,
    ping: Option<Ping>,
}

/// Starts the load. Connection failures are not errors here: they are in
/// the report. Spawn from the main thread when `ping` is on (the child
/// dies with the thread that started it).
pub fn start(config: Config) -> Result<Handle> {
    config.check()?;
    let ping = if config.ping {
        Some(Ping::start(config.to.ip())?)
    } else {
        None
    };
    let epoch = Instant::now();
    let epoch_monotonic_ns = monotonic_ns();
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let limit = epoch + config.run_limit();
    let shared = Arc::new(Shared {
        epoch,
        stop: AtomicBool::new(false),
        marks: Mutex::new(Vec::new()),
    });
    let mut handle = Handle {
        config: config.clone(),
        shared: shared.clone(),
        limit,
        epoch_monotonic_ns,
        started_unix_ms,
        conns: Vec::new(),
        stream: None,
        ping,
    };
    // On an error `handle` is dropped, which stops what was started.
    for id in 0..config.conns {
        let shared = shared.clone();
        let (to, period) = (config.to, config.period);
        let worker = std::thread::Builder::new()
            .name(format!("netload-conn{id}"))
            .spawn(move || Conn::new(id, shared, period).run(to, limit))
            .context("cannot start a connection thread")?;
        handle.conns.push(worker);
    }
    if config.stream != StreamMode::None {
        let shared = shared.clone();
        let mode = config.stream;
        let to = SocketAddr::new(config.to.ip(), config.stream_port);
        let worker = std::thread::Builder::new()
            .name("netload-stream".into())
            .spawn(move || run_stream(mode, to, limit, &shared))
            .context("cannot start the stream thread")?;
        handle.stream = Some(worker);
    }
    Ok(handle)
}

/// `CLOCK_MONOTONIC` now, in ns (the clock `Instant` reads on Linux).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Handle {
    /// The instant the run's clock counts from.
    pub fn epoch(&self) -> Instant {
        self.shared.epoch
    }

    /// `t` on the run's clock (ms since the start).
    pub fn ms_at(&self, t: Instant) -> f64 {
        self.shared.ms(t)
    }

    pub fn now_ms(&self) -> f64 {
        self.shared.ms(Instant::now())
    }

    /// Records an event (a migration's phase, say) in the report's `marks`.
    pub fn mark(&self, what: &str) {
        let t_ms = self.now_ms();
        if let Ok(mut marks) = self.shared.marks.lock() {
            marks.push(Mark {
                what: what.to_string(),
                t_ms,
            });
        }
    }

    /// Whether the run's duration is over.
    pub fn is_done(&self) -> bool {
        Instant::now() >= self.limit
    }

    /// Waits until the duration is over (or Ctrl-C / SIGTERM, once
    /// [`testbed::catch_interrupts`] is on), then [`Handle::stop`]s.
    pub fn wait(self) -> Report {
        // Sleeps of 10 ms but the last: at most this many.
        let naps = self.config.run_limit().as_millis() / 10 + 2;
        for _ in 0..naps {
            if self.is_done() || testbed::interrupted() {
                break;
            }
            let left = self.limit.saturating_duration_since(Instant::now());
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
        self.stop()
    }

    /// Stops sending now, waits (at most the grace) for the answers still
    /// due, and reports.
    pub fn stop(mut self) -> Report {
        let sent_until = Instant::now().min(self.limit);
        self.shared.stop.store(true, Ordering::SeqCst);
        let ping = self.ping.take().map(Ping::stop);
        let conns = std::mem::take(&mut self.conns)
            .into_iter()
            .enumerate()
            .map(|(id, w)| {
                w.join().unwrap_or_else(|_| ConnReport {
                    id,
                    error: Some("the connection's thread panicked".into()),
                    ..ConnReport::default()
                })
            })
            .collect();
        let stream = self.stream.take().map(|w| {
            w.join().unwrap_or_else(|_| {
                let mut r = StreamReport::new(self.config.stream);
                r.error = Some("the stream's thread panicked".into());
                r
            })
        });
        let marks = self
            .shared
            .marks
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        Report::build(
            &self.config,
            self.shared.ms(sent_until),
            self.epoch_monotonic_ns,
            self.started_unix_ms,
            conns,
            stream,
            ping,
            marks,
        )
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

/// Waits up to `timeout` for `fd` to be readable (or writable, if asked);
/// the events seen, 0 on a timeout or a signal.
fn wait_fd(fd: i32, want_write: bool, timeout: Duration) -> Result<i16> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | if want_write { libc::POLLOUT } else { 0 },
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    let r = unsafe { libc::ppoll(&mut p, 1, &ts, std::ptr::null()) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e).context("poll failed");
    }
    Ok(p.revents)
}

// ---------------------------------------------------------------------------
// One request/response connection

/// A request waiting for its answer.
struct Request {
    seq: u64,
    nonce: u64,
    sent: Instant,
}

/// One answer: when its request was sent (ms since the start) and how long
/// the answer took.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    pub sent_ms: f64,
    pub rtt_ms: f64,
}

/// Response times, ms.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    pub sd: Option<f64>,
}

impl Latency {
    fn of(mut v: Vec<f64>) -> Latency {
        v.sort_by(f64::total_cmp);
        let (mean, sd) = mean_sd(&v).unzip();
        if v.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: Some(percentile(&v, 0.50)),
            p99: Some(percentile(&v, 0.99)),
            max: v.last().copied(),
            mean,
            sd,
        }
    }
}

/// What one connection saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnReport {
    pub id: usize,
    /// Requests sent (handed to the socket or queued for it).
    pub sent: u64,
    /// Right answers.
    pub ok: u64,
    /// Sent, never answered before the end (the grace included).
    pub lost: u64,
    /// Answers with the wrong seq or value, or with no request to answer.
    pub wrong: u64,
    /// Why the connection failed (refused, reset, closed by the server).
    pub error: Option<String>,
    pub error_at_ms: Option<f64>,
    /// The largest gap between two consecutive right answers, and when it
    /// began (the first of the two answers).
    pub max_gap_ms: f64,
    pub max_gap_at_ms: Option<f64>,
    /// `max_gap_ms` less the period (at least 0).
    pub downtime_ms: f64,
    /// Most requests waiting for their answers at once.
    pub max_backlog: u64,
    /// Most requests the socket would not take at once (its buffer full).
    pub max_unwritten: u64,
    pub rtt_ms: Latency,
    /// Every right answer, in order (not in the JSON).
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

struct Conn {
    shared: Arc<Shared>,
    period: Duration,
    report: ConnReport,
    waiting: VecDeque<Request>,
    /// Request bytes the socket has not taken yet.
    unwritten: Vec<u8>,
    /// The start of an incomplete answer.
    partial: Vec<u8>,
    last_answer: Option<Instant>,
    next_seq: u64,
    rng: Rng,
}

impl Conn {
    fn new(id: usize, shared: Arc<Shared>, period: Duration) -> Conn {
        Conn {
            shared,
            period,
            report: ConnReport {
                id,
                ..ConnReport::default()
            },
            waiting: VecDeque::new(),
            unwritten: Vec::new(),
            partial: Vec::new(),
            last_answer: None,
            next_seq: 0,
            rng: Rng::seeded(id as u64),
        }
    }

    /// Runs the connection until `limit` (or the stop flag), plus the grace.
    fn run(mut self, to: SocketAddr, limit: Instant) -> ConnReport {
        if let Err(e) = self.exchange(to, limit) {
            self.report.error = Some(format!("{e:#}"));
            self.report.error_at_ms = Some(self.shared.ms(Instant::now()));
        }
        let mut r = self.report;
        r.lost = self.waiting.len() as u64;
        r.rtt_ms = Latency::of(r.samples.iter().map(|s| s.rtt_ms).collect());
        r.downtime_ms = (r.max_gap_ms - self.period.as_secs_f64() * 1e3).max(0.0);
        r
    }

    fn exchange(&mut self, to: SocketAddr, limit: Instant) -> Result<()> {
        let stream = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)
            .with_context(|| format!("cannot connect to {to}"))?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        let fd = stream.as_raw_fd();
        let mut buf = vec![0u8; 64 << 10];
        let mut next_send = Instant::now();
        let mut send_end: Option<Instant> = None;
        // Each iteration sends a request, moves bytes or waits for the next
        // request or a tick: bounded by the requests there can be.
        let span = limit.saturating_duration_since(Instant::now()) + GRACE;
        let requests_max = (span.as_nanos() / self.period.as_nanos()) as u64 + 1;
        let cap = 40 * requests_max + 2 * (span.as_millis() / TICK.as_millis()) as u64 + 1000;
        for _ in 0..cap {
            let now = Instant::now();
            if send_end.is_none() && (self.shared.stopping() || now >= limit) {
                send_end = Some(now.min(limit));
            }
            let wake = match send_end {
                None => {
                    if next_send <= now {
                        // Far behind (this thread was not scheduled): go on
                        // from now rather than send a burst.
                        if now - next_send > self.period * 100 {
                            next_send = now;
                        }
                        self.queue_request(now);
                        next_send += self.period;
                    }
                    next_send.min(limit)
                }
                Some(end) => {
                    if self.waiting.is_empty() || now >= end + GRACE {
                        let _ = stream.shutdown(Shutdown::Both);
                        return Ok(());
                    }
                    end + GRACE
                }
            };
            self.write_some(&stream)?;
            let timeout = wake.saturating_duration_since(now).min(TICK);
            let events = wait_fd(fd, !self.unwritten.is_empty(), timeout)?;
            if events & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
                self.read_some(&stream, &mut buf)?;
            }
        }
        bail!("stopped after {cap} loop iterations (a bug)")
    }

    fn queue_request(&mut self, now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let nonce = self.rng.next();
        self.unwritten.extend_from_slice(&seq.to_le_bytes());
        self.unwritten.extend_from_slice(&nonce.to_le_bytes());
        self.waiting.push_back(Request {
            seq,
            nonce,
            sent: now,
        });
        self.report.sent += 1;
        self.report.max_backlog = self.report.max_backlog.max(self.waiting.len() as u64);
    }

    fn write_some(&mut self, mut s: &TcpStream) -> Result<()> {
        if !self.unwritten.is_empty() {
            match s.write(&self.unwritten) {
                Ok(n) => {
                    self.unwritten.drain(..n);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => return Err(e).context("send failed"),
            }
        }
        let unwritten = self.unwritten.len().div_ceil(REQ_BYTES) as u64;
        self.report.max_unwritten = self.report.max_unwritten.max(unwritten);
        Ok(())
    }

    fn read_some(&mut self, mut s: &TcpStream, buf: &mut [u8]) -> Result<()> {
        for _ in 0..READS_PER_WAKE {
            match s.read(buf) {
                Ok(0) => bail!("the server closed the connection"),
                Ok(n) => self.take(&buf[..n], Instant::now()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("receive failed"),
            }
        }
        Ok(())
    }

    /// Takes received bytes: every whole answer in them is checked.
    fn take(&mut self, data: &[u8], now: Instant) {
        let mut bytes = std::mem::take(&mut self.partial);
        bytes.extend_from_slice(data);
        let mut answers = bytes.chunks_exact(REQ_BYTES);
        for a in &mut answers {
            self.check(le64(&a[..8]), le64(&a[8..]), now);
        }
        self.partial = answers.remainder().to_vec();
    }

    fn check(&mut self, seq: u64, value: u64, now: Instant) {
        let Some(req) = self.waiting.pop_front() else {
            self.report.wrong += 1; // an answer to nothing
            return;
        };
        if req.seq != seq || value != answer(req.seq, req.nonce) {
            self.report.wrong += 1;
            return;
        }
        self.report.ok += 1;
        self.report.samples.push(Sample {
            sent_ms: self.shared.ms(req.sent),
            rtt_ms: ms_between(req.sent, now),
        });
        if let Some(last) = self.last_answer {
            let gap = ms_between(last, now);
            if gap > self.report.max_gap_ms {
                self.report.max_gap_ms = gap;
                self.report.max_gap_at_ms = Some(self.shared.ms(last));
            }
        }
        self.last_answer = Some(now);
    }
}

// ---------------------------------------------------------------------------
// The bulk stream

/// What the stream saw.
#[derive(Clone, Debug, Serialize)]
pub struct StreamReport {
    pub mode: StreamMode,
    /// Bytes sent (in: taken by the socket) or received (out).
    pub bytes: u64,
    pub bucket_ms: u64,
    /// Bytes in each bucket of `bucket_ms`, from the run's start.
    pub bytes_per_bucket: Vec<u64>,
    /// Mean and standard deviation over the whole buckets while sending.
    pub mean_bytes_per_s: Option<f64>,
    pub sd_bytes_per_s: Option<f64>,
    /// Why the stream failed (refused, reset, closed by the server).
    pub error: Option<String>,
    pub error_at_ms: Option<f64>,
    /// `out`: the first byte that was not the pattern's.
    pub corrupt: Option<Corruption>,
}

impl StreamReport {
    fn new(mode: StreamMode) -> StreamReport {
        StreamReport {
            mode,
            bytes: 0,
            bucket_ms: BUCKET_MS,
            bytes_per_bucket: Vec::new(),
            mean_bytes_per_s: None,
            sd_bytes_per_s: None,
            error: None,
            error_at_ms: None,
            corrupt: None,
        }
    }

    fn count(&mut self, t_ms: f64, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let i = (t_ms.max(0.0) / BUCKET_MS as f64) as usize;
        if self.bytes_per_bucket.len() <= i {
            self.bytes_per_bucket.resize(i + 1, 0);
        }
        self.bytes_per_bucket[i] += bytes as u64;
        self.bytes += bytes as u64;
    }

    /// Rates (bytes/s) of the whole buckets before `until_ms` for which
    /// `keep(start_ms, end_ms)` holds.
    fn rates(&self, until_ms: f64, keep: impl Fn(f64, f64) -> bool) -> Vec<f64> {
        let whole = (until_ms.max(0.0) / BUCKET_MS as f64) as usize;
        let per_s = 1000.0 / BUCKET_MS as f64;
        (0..whole)
            .filter(|&i| {
                keep(
                    (i as u64 * BUCKET_MS) as f64,
                    ((i as u64 + 1) * BUCKET_MS) as f64,
                )
            })
            .map(|i| self.bytes_per_bucket.get(i).copied().unwrap_or(0) as f64 * per_s)
            .collect()
    }
}

fn run_stream(mode: StreamMode, to: SocketAddr, limit: Instant, shared: &Shared) -> StreamReport {
    let mut r = StreamReport::new(mode);
    let mut checker = StreamChecker::default();
    if let Err(e) = stream_loop(&mut r, &mut checker, to, limit, shared) {
        r.error = Some(format!("{e:#}"));
        r.error_at_ms = Some(shared.ms(Instant::now()));
    }
    r.corrupt = checker.corrupt;
    r
}

fn stream_loop(
    r: &mut StreamReport,
    checker: &mut StreamChecker,
    to: SocketAddr,
    limit: Instant,
    shared: &Shared,
) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)
        .with_context(|| format!("cannot connect to the stream port {to}"))?;
    s.set_read_timeout(Some(TICK))?;
    s.set_write_timeout(Some(TICK))?;
    let mode_byte = if r.mode == StreamMode::In { b'W' } else { b'R' };
    s.write_all(&[mode_byte])
        .context("cannot send the stream's mode")?;
    let mut buf = vec![0u8; STREAM_CHUNK];
    // In: `buf` holds the pattern from `filled - buf.len()`; `pos` of it is sent.
    let (mut filled, mut pos) = (0u64, buf.len());
    // A safety net: an iteration moves a chunk or waits a tick, and takes
    // at least 10 µs either way.
    let span = limit.saturating_duration_since(Instant::now());
    let cap = span.as_micros() as u64 / 10 + 10_000;
    for _ in 0..cap {
        if shared.stopping() || Instant::now() >= limit {
            if r.mode == StreamMode::In {
                let _ = s.shutdown(Shutdown::Write);
            }
            return Ok(());
        }
        let moved = match r.mode {
            StreamMode::In => {
                if pos == buf.len() {
                    fill_stream(filled, &mut buf);
                    filled += buf.len() as u64;
                    pos = 0;
                }
                match s.write(&buf[pos..]) {
                    Ok(n) => {
                        pos += n;
                        n
                    }
                    Err(e) if idle(&e) => 0,
                    Err(e) => return Err(e).context("stream send failed"),
                }
            }
            _ => match s.read(&mut buf) {
                Ok(0) => bail!("the server closed the stream"),
                Ok(n) => {
                    checker.feed(&buf[..n]);
                    n
                }
                Err(e) if idle(&e) => 0,
                Err(e) => return Err(e).context("stream receive failed"),
            },
        };
        r.count(shared.ms(Instant::now()), moved);
    }
    bail!("stopped after {cap} loop iterations (a bug)")
}

/// A timed-out or interrupted socket call: nothing happened, try again.
fn idle(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

// ---------------------------------------------------------------------------
// ping

/// What `ping` counted.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PingReport {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    /// ping's summary lines.
    pub summary: String,
    pub error: Option<String>,
}

/// `ping -q -n -i 0.01 -W 1 HOST` until stopped with SIGINT.
struct Ping {
    process: Process,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

impl Ping {
    fn start(host: IpAddr) -> Result<Ping> {
        let mut cmd = Command::new("ping");
        cmd.args(["-q", "-n", "-i", "0.01", "-W", "1"])
            .arg(host.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut process = Process::spawn("ping", cmd)
            .context("is iputils-ping installed? (apt-get install iputils-ping)")?;
        let stdout = process.child.stdout.take().context("ping's stdout")?;
        let stderr = process.child.stderr.take().context("ping's stderr")?;
        Ok(Ping {
            process,
            stdout: drain_tail(stdout),
            stderr: drain_tail(stderr),
        })
    }

    fn stop(mut self) -> PingReport {
        let pid = self.process.child.id() as libc::pid_t;
        // SAFETY: signals our own child; SIGINT makes ping print its summary.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let mut r = PingReport::default();
        let mut exited = false;
        for _ in 0..300 {
            match self.process.child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    exited = true;
                    break;
                }
            }
        }
        if !exited {
            self.process.kill();
            r.error = Some("ping did not exit within 3 s of SIGINT".into());
        }
        let out = self.stdout.join().unwrap_or_default();
        let err = self.stderr.join().unwrap_or_default();
        r.summary = out
            .lines()
            .filter(|l| l.contains("packets transmitted") || l.starts_with("rtt "))
            .collect::<Vec<_>>()
            .join("\n");
        match parse_ping_summary(&out) {
            Some((sent, received)) => {
                r.sent = sent;
                r.received = received;
                r.lost = sent.saturating_sub(received);
            }
            None => {
                r.error.get_or_insert(format!(
                    "no summary from ping: {}",
                    err.lines().last().unwrap_or("(nothing on stderr)")
                ));
            }
        }
        r
    }
}

/// Reads `from` to its end on a thread, keeping the last 16 KiB.
fn drain_tail(mut from: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        const KEEP: usize = 16 << 10;
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        // Ends when the child exits (or is killed): the pipe closes.
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > 2 * KEEP {
                kept.drain(..kept.len() - KEEP);
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

/// `(transmitted, received)` from iputils ping's summary line
/// `N packets transmitted, M received, ...`.
pub fn parse_ping_summary(out: &str) -> Option<(u64, u64)> {
    const MARK: &str = " packets transmitted, ";
    let line = out.lines().find(|l| l.contains(MARK))?;
    let (sent, rest) = line.split_once(MARK)?;
    let received = rest.split_whitespace().next()?;
    Some((sent.trim().parse().ok()?, received.parse().ok()?))
}

// ---------------------------------------------------------------------------
// The report

/// Stream throughput before, during and after a window.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub start_ms: f64,
    pub end_ms: f64,
    pub stream: Option<Phases>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Phases {
    pub before: PhaseRate,
    pub during: PhaseRate,
    pub after: PhaseRate,
}

/// Mean and sd of the 100 ms buckets of a phase, bytes/s.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseRate {
    pub buckets: usize,
    pub mean_bytes_per_s: Option<f64>,
    pub sd_bytes_per_s: Option<f64>,
}

impl PhaseRate {
    fn of(rates: &[f64]) -> PhaseRate {
        let (mean, sd) = mean_sd(rates).unzip();
        PhaseRate {
            buckets: rates.len(),
            mean_bytes_per_s: mean,
            sd_bytes_per_s: sd,
        }
    }
}

/// Everything a run saw. Times are ms since its start.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub to: String,
    pub stream_port: u16,
    pub conns: usize,
    pub period_ms: f64,
    /// The run's start on `CLOCK_MONOTONIC` (shared by every process here).
    pub epoch_monotonic_ns: u64,
    pub started_unix_ms: u64,
    /// When sending stopped.
    pub sent_until_ms: f64,
    pub grace_ms: f64,
    pub requests_sent: u64,
    pub answers_ok: u64,
    pub answers_lost: u64,
    pub answers_wrong: u64,
    /// Connections (request/response and stream) that were refused, reset
    /// or closed by the server. 0 is the only good value.
    pub conn_failures: u64,
    pub rtt_ms: Latency,
    /// The client-observed downtime: the largest gap between consecutive
    /// answers on any connection, less the period; which connection, when.
    pub downtime_ms: f64,
    pub downtime_conn: Option<usize>,
    pub downtime_at_ms: Option<f64>,
    /// Most requests waiting for answers on one connection at once.
    pub max_backlog: u64,
    /// Right answers received in each bucket of `BUCKET_MS`, all connections.
    pub answers_per_bucket: Vec<u64>,
    pub connections: Vec<ConnReport>,
    pub stream: Option<StreamReport>,
    pub ping: Option<PingReport>,
    pub marks: Vec<Mark>,
    pub window: Option<Window>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn build(
        config: &Config,
        sent_until_ms: f64,
        epoch_monotonic_ns: u64,
        started_unix_ms: u64,
        connections: Vec<ConnReport>,
        mut stream: Option<StreamReport>,
        ping: Option<PingReport>,
        marks: Vec<Mark>,
    ) -> Report {
        let sum = |f: fn(&ConnReport) -> u64| connections.iter().map(f).sum::<u64>();
        let rtts = connections
            .iter()
            .flat_map(|c| c.samples.iter().map(|s| s.rtt_ms))
            .collect();
        let worst = connections
            .iter()
            .filter(|c| c.max_gap_at_ms.is_some())
            .max_by(|a, b| a.downtime_ms.total_cmp(&b.downtime_ms));
        let mut answers_per_bucket = Vec::new();
        for s in connections.iter().flat_map(|c| &c.samples) {
            let i = ((s.sent_ms + s.rtt_ms).max(0.0) / BUCKET_MS as f64) as usize;
            if answers_per_bucket.len() <= i {
                answers_per_bucket.resize(i + 1, 0);
            }
            answers_per_bucket[i] += 1;
        }
        if let Some(s) = &mut stream {
            let rates = s.rates(sent_until_ms, |_, _| true);
            (s.mean_bytes_per_s, s.sd_bytes_per_s) = mean_sd(&rates).unzip();
        }
        let stream_failed = stream.as_ref().is_some_and(|s| s.error.is_some());
        Report {
            to: config.to.to_string(),
            stream_port: config.stream_port,
            conns: config.conns,
            period_ms: config.period.as_secs_f64() * 1e3,
            epoch_monotonic_ns,
            started_unix_ms,
            sent_until_ms,
            grace_ms: GRACE.as_secs_f64() * 1e3,
            requests_sent: sum(|c| c.sent),
            answers_ok: sum(|c| c.ok),
            answers_lost: sum(|c| c.lost),
            answers_wrong: sum(|c| c.wrong),
            conn_failures: sum(|c| c.error.is_some() as u64) + stream_failed as u64,
            rtt_ms: Latency::of(rtts),
            downtime_ms: worst.map_or(0.0, |c| c.downtime_ms),
            downtime_conn: worst.map(|c| c.id),
            downtime_at_ms: worst.and_then(|c| c.max_gap_at_ms),
            max_backlog: connections.iter().map(|c| c.max_backlog).max().unwrap_or(0),
            answers_per_bucket,
            connections,
            stream,
            ping,
            marks,
            window: None,
        }
    }

    /// Splits the stream's throughput into before, during and after
    /// `[start_ms, end_ms)` (a migration, say); only whole buckets count,
    /// each in the phase its midpoint falls in.
    pub fn set_window(&mut self, start_ms: f64, end_ms: f64) {
        let stream = self.stream.as_ref().map(|s| {
            let until = self.sent_until_ms;
            let mid = |a: f64, b: f64| (a + b) / 2.0;
            Phases {
                before: PhaseRate::of(&s.rates(until, |a, b| mid(a, b) < start_ms)),
                during: PhaseRate::of(
                    &s.rates(until, |a, b| (start_ms..end_ms).contains(&mid(a, b))),
                ),
                after: PhaseRate::of(&s.rates(until, |a, b| mid(a, b) >= end_ms)),
            }
        });
        self.window = Some(Window {
            start_ms,
            end_ms,
            stream,
        });
    }

    /// No answer lost or wrong, no connection failed, no stream corrupted.
    pub fn clean(&self) -> bool {
        self.answers_lost == 0
            && self.answers_wrong == 0
            && self.conn_failures == 0
            && self.stream.as_ref().is_none_or(|s| s.corrupt.is_none())
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.3} ms"))
}

fn mbit(bytes_per_s: Option<f64>) -> String {
    bytes_per_s.map_or("-".into(), |b| format!("{:.1} Mbit/s", b * 8.0 / 1e6))
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "netload: {}, {} connections, a request every {} ms, sent for {:.2} s",
            self.to,
            self.conns,
            self.period_ms,
            self.sent_until_ms / 1e3
        )?;
        writeln!(
            f,
            "  answers: {} ok, {} lost, {} wrong of {} sent; connections failed: {}",
            self.answers_ok,
            self.answers_lost,
            self.answers_wrong,
            self.requests_sent,
            self.conn_failures
        )?;
        writeln!(
            f,
            "  response time: p50 {}, p99 {}, max {}; backlog at most {} requests",
            opt_ms(self.rtt_ms.p50),
            opt_ms(self.rtt_ms.p99),
            opt_ms(self.rtt_ms.max),
            self.max_backlog
        )?;
        match (self.downtime_conn, self.downtime_at_ms) {
            (Some(c), Some(at)) => writeln!(
                f,
                "  client-observed downtime: {:.1} ms (connection {c}, gap from {at:.1} ms)",
                self.downtime_ms
            )?,
            _ => writeln!(f, "  client-observed downtime: - (fewer than two answers)")?,
        }
        for c in &self.connections {
            if let Some(e) = &c.error {
                writeln!(
                    f,
                    "  connection {} FAILED at {:.1} ms: {e}",
                    c.id,
                    c.error_at_ms.unwrap_or(0.0)
                )?;
            }
        }
        if let Some(s) = &self.stream {
            let mode = if s.mode == StreamMode::In {
                "in"
            } else {
                "out"
            };
            let min = s
                .rates(self.sent_until_ms, |_, _| true)
                .into_iter()
                .min_by(f64::total_cmp);
            writeln!(
                f,
                "  stream {mode}: {} bytes, {} mean, slowest 100 ms bucket {}",
                s.bytes,
                mbit(s.mean_bytes_per_s),
                mbit(min)
            )?;
            if let Some(c) = &s.corrupt {
                writeln!(
                    f,
                    "  stream CORRUPT at byte {}: expected {:#04x}, found {:#04x}",
                    c.offset, c.expected, c.found
                )?;
            }
            if let Some(e) = &s.error {
                writeln!(f, "  stream FAILED: {e}")?;
            }
        }
        if let Some(w) = &self.window {
            if let Some(p) = &w.stream {
                writeln!(
                    f,
                    "  stream in window {:.0}..{:.0} ms: before {}, during {}, after {}",
                    w.start_ms,
                    w.end_ms,
                    mbit(p.before.mean_bytes_per_s),
                    mbit(p.during.mean_bytes_per_s),
                    mbit(p.after.mean_bytes_per_s)
                )?;
            }
        }
        if let Some(p) = &self.ping {
            write!(f, "  ping: {} sent, {} lost", p.sent, p.lost)?;
            match &p.error {
                Some(e) => writeln!(f, " ({e})")?,
                None => writeln!(f)?,
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Command line

/// `godwit netload`: load a guest's netserve, report what a user felt.
#[derive(clap::Args)]
pub struct Args {
    /// The netserve: HOST or HOST:PORT (request/response port, default 7000).
    #[arg(long)]
    pub to: String,
    /// The netserve's bulk stream port (same host).
    #[arg(long, default_value_t = DEFAULT_STREAM_PORT)]
    pub stream_port: u16,
    /// Request/response connections.
    #[arg(long, default_value_t = 4)]
    pub conns: usize,
    /// A request on each connection every this many ms.
    #[arg(long, default_value_t = 1.0)]
    pub period_ms: f64,
    /// Seconds of load; 0: until Ctrl-C (at most an hour).
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// A bulk stream beside the requests: in (to the guest), out (from it).
    #[arg(long, value_enum, default_value_t = StreamMode::None)]
    pub stream: StreamMode,
    /// Also run `ping -i 0.01 -W 1` at the host and count its losses.
    #[arg(long)]
    pub ping: bool,
    /// Also write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// START:END, ms since the start: the stream's throughput before, during
    /// and after this window.
    #[arg(long, value_parser = parse_window)]
    pub window_ms: Option<(f64, f64)>,
}

fn parse_window(s: &str) -> Result<(f64, f64), String> {
    let bad = || format!("'{s}' is not START:END in ms (e.g. 2000:3500)");
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let (a, b): (f64, f64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if !(a.is_finite() && b.is_finite() && a <= b) {
        return Err(bad());
    }
    Ok((a, b))
}

/// `HOST` or `HOST:PORT` (port 7000 if none given).
pub fn parse_target(s: &str) -> Result<SocketAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let mut found = if s.contains(':') {
        s.to_socket_addrs()
    } else {
        (s, DEFAULT_PORT).to_socket_addrs()
    }
    .with_context(|| format!("--to {s}: not HOST or HOST:PORT"))?;
    found
        .next()
        .with_context(|| format!("--to {s}: no address"))
}

/// `godwit netload`: exit status 0 for a clean run, 2 when an answer was
/// lost or wrong, a connection failed or the stream was corrupted.
pub fn run(args: Args) -> Result<i32> {
    let mut config = Config::new(parse_target(&args.to)?);
    config.stream_port = args.stream_port;
    config.conns = args.conns;
    if !(args.period_ms.is_finite() && args.period_ms > 0.0) {
        bail!("--period-ms {} is not a positive number", args.period_ms);
    }
    config.period = Duration::from_secs_f64(args.period_ms / 1e3);
    if !(args.duration_s.is_finite() && args.duration_s >= 0.0) {
        bail!(
            "--duration-s {} is not a number of seconds",
            args.duration_s
        );
    }
    config.duration = (args.duration_s > 0.0).then(|| Duration::from_secs_f64(args.duration_s));
    config.stream = args.stream;
    config.ping = args.ping;
    testbed::catch_interrupts();
    let handle = start(config.clone())?;
    eprintln!(
        "netload: {} connections to {}{}{}, {}",
        config.conns,
        config.to,
        match config.stream {
            StreamMode::None => String::new(),
            m => format!(", stream {m:?} on port {}", config.stream_port).to_lowercase(),
        },
        if config.ping { ", ping" } else { "" },
        match config.duration {
            Some(d) => format!("for {:.1} s", d.as_secs_f64()),
            None => "until Ctrl-C".into(),
        }
    );
    let mut report = handle.wait();
    if testbed::interrupted() {
        eprintln!("netload: interrupted; reporting what was measured");
    }
    if let Some((a, b)) = args.window_ms {
        report.set_window(a, b);
    }
    eprint!("{report}");
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{json}");
    Ok(if report.clean() { 0 } else { 2 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_matches_the_guest() {
        // splitmix64 from state 0: its first outputs are well known.
        assert_eq!(stream_word(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(stream_word(1), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(answer(0, 0), stream_word(0));
        let mut buf = [0u8; 20];
        fill_stream(3, &mut buf);
        let mut c = StreamChecker {
            offset: 3,
            corrupt: None,
        };
        c.feed(&buf);
        assert_eq!(c.corrupt, None);
        assert_eq!(buf[0], (stream_word(0) >> 24) as u8);
        assert_eq!(buf[5], stream_word(1) as u8);
        buf[11] ^= 1;
        let mut c = StreamChecker {
            offset: 3,
            corrupt: None,
        };
        c.feed(&buf[..7]);
        c.feed(&buf[7..]);
        assert_eq!(c.corrupt.map(|x| x.offset), Some(14));
        assert_eq!(c.offset, 23);
    }

    #[test]
    fn ping_summary() {
        let out = "PING 10.77.1.10 (10.77.1.10) 56(84) bytes of data.\n\n--- 10.77.1.10 ping statistics ---\n\
                   312 packets transmitted, 290 received, +3 errors, 7.05128% packet loss, time 3401ms\n\
                   rtt min/avg/max/mdev = 0.031/0.070/0.352/0.030 ms, pipe 2\n";
        assert_eq!(parse_ping_summary(out), Some((312, 290)));
        assert_eq!(parse_ping_summary("ping: unknown host"), None);
    }

    #[test]
    fn targets_and_windows() {
        assert_eq!(
            parse_target("10.77.1.10").unwrap(),
            "10.77.1.10:7000".parse().unwrap()
        );
        assert_eq!(
            parse_target("127.0.0.1:7100").unwrap(),
            "127.0.0.1:7100".parse().unwrap()
        );
        assert!(parse_target("10.77.1.10:port").is_err());
        assert_eq!(parse_window("100:250.5"), Ok((100.0, 250.5)));
        assert!(parse_window("300:100").is_err());
        assert!(parse_window("300").is_err());
    }

    #[test]
    fn window_phases() {
        let mut s = StreamReport::new(StreamMode::Out);
        for (i, b) in [10u64, 10, 0, 0, 20, 20, 5].iter().enumerate() {
            s.count(i as f64 * 100.0 + 50.0, *b as usize);
        }
        let mut r = Report::build(
            &Config::new("127.0.0.1:1".parse().unwrap()),
            650.0, // the last bucket is not whole
            0,
            0,
            Vec::new(),
            Some(s),
            None,
            Vec::new(),
        );
        r.set_window(200.0, 400.0);
        let p = r.window.as_ref().and_then(|w| w.stream.as_ref()).unwrap();
        assert_eq!(p.before.mean_bytes_per_s, Some(100.0));
        assert_eq!(p.during.mean_bytes_per_s, Some(0.0));
        assert_eq!(p.after.buckets, 2);
        assert_eq!(p.after.mean_bytes_per_s, Some(200.0));
    }
}

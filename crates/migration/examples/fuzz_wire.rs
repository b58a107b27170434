//! A mutation fuzzer for the migration wire decoder (`Msg::decode`,
//! `wire::recv`) that runs on stable Rust with `std` alone: no coverage
//! instrumentation, so it steers by outcomes instead: an input whose result
//! (message type plus the decoder's verdict, digits stripped) is new joins
//! the corpus.
//!
//! ```text
//! cargo run --release -p godwit-migration --example fuzz_wire -- \
//!     [--seconds S | --iterations N] [--seed X] [--findings DIR]
//! cargo run --release -p godwit-migration --example fuzz_wire -- --replay FILE
//! ```
//!
//! Seeds are the encodings of every message kind. Each execution stacks one
//! to four mutations (bit flips, interesting bytes and words, insertions,
//! deletions, splices, length-word edits, truncation, appended frames), then
//! often repairs the length word and the CRC so the input gets past framing
//! and the checksum into the parser. A panic, a decoded message that breaks
//! an invariant (page index >= RAM, bitmap size, batch or text bounds,
//! re-encode that does not decode to the same message or not to the same
//! bytes), or an allocation beyond what the input can justify is a finding:
//! it is written as hex to the findings directory, once per distinct kind.
//! The last line on stdout is a JSON summary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use godwit_migration::wire::{
    self, Channel, Hello, Msg, Page, WireError, MAX_BATCH, MAX_FRAME, PAGE,
};

/// Counts the bytes requested, so an execution's allocations can be checked
/// against what its input justifies.
struct CountingAlloc;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size.saturating_sub(layout.size()), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// The decoder's private bound on a text, mirrored.
const MAX_TEXT: usize = 1 << 20;
/// RAM size (pages) the seeds are valid for: not a multiple of 64, so the
/// Switch bitmap has tail bits that must stay clear.
const SEED_PAGES: usize = 200;
/// Other RAM sizes to decode against.
const OTHER_PAGES: [usize; 8] = [0, 1, 63, 64, 65, 4096, 1 << 20, 1 << 32];
/// Hello's last byte (`resume`) is the one byte the decoder reads
/// loosely (non-zero is `true`).
/// Allocation slack per decode beyond the input's size: the batch vector
/// (256 * 16 B), one page box allocated before a failed read, error strings.
const ALLOC_SLACK: usize = 64 << 10;
const CORPUS_CAP: usize = 4096;

/// xorshift64: small, fast, reproducible from `--seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// CRC-32 (IEEE), as the wire uses; kept here so the example needs only std.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

struct Options {
    seconds: f64,
    iterations: Option<u64>,
    seed: u64,
    findings: PathBuf,
    replay: Option<PathBuf>,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        seconds: 60.0,
        iterations: None,
        seed: 0x9E37_79B9_7F4A_7C15,
        findings: PathBuf::from("target/fuzz-findings"),
        replay: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--seconds" => o.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--iterations" => {
                o.iterations = Some(value()?.parse().map_err(|e| format!("--iterations: {e}"))?)
            }
            "--seed" => o.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--findings" => o.findings = value()?.into(),
            "--replay" => o.replay = Some(value()?.into()),
            _ => {
                return Err(format!(
                    "unknown argument {a}; usage: fuzz_wire [--seconds S | --iterations N] \
                     [--seed X] [--findings DIR] [--replay FILE]"
                ))
            }
        }
    }
    if o.seed == 0 {
        o.seed = 1; // xorshift's one fixed point
    }
    Ok(o)
}

/// The encodings of every message kind, valid for `SEED_PAGES`.
fn seeds() -> Vec<Vec<u8>> {
    let data = |fill: u8| {
        let mut d = Box::new([fill; PAGE]);
        d[0] = 0x7f;
        d[PAGE - 1] = 0x80;
        Some(d)
    };
    let hello = |channel, mode: &str, resume| {
        Msg::Hello(Hello {
            version: wire::VERSION,
            channel,
            session: 0xdead_beef,
            ram_bytes: (SEED_PAGES * PAGE) as u64,
            page_size: PAGE as u32,
            board: r#"{"harts":1,"ram_bytes":819200,"devices":["Balloon"]}"#.into(),
            mode: mode.into(),
            resume,
            bulk: if channel == Channel::Main { 2 } else { 0 },
        })
    };
    let mut pending = vec![u64::MAX; SEED_PAGES.div_ceil(64)];
    *pending.last_mut().unwrap() = (1 << (SEED_PAGES % 64)) - 1;
    let msgs = [
        hello(Channel::Main, "postcopy", false),
        hello(Channel::Fault, "hybrid ✓ 🐦", true),
        hello(Channel::Bulk(1), "precopy", false),
        Msg::Accept,
        Msg::Refuse("RAM size differs: 1 GiB here".into()),
        Msg::Pages(vec![]),
        Msg::Pages(vec![
            Page {
                index: 0,
                data: None,
            },
            Page {
                index: (SEED_PAGES - 1) as u32,
                data: None,
            },
        ]),
        Msg::Pages(vec![
            Page {
                index: 7,
                data: data(0xa5),
            },
            Page {
                index: 8,
                data: None,
            },
        ]),
        Msg::RoundEnd(3),
        Msg::State(vec![]),
        Msg::State((0..64).collect()),
        Msg::Switch {
            state: vec![1, 2, 3, 4],
            pending: pending.clone(),
        },
        Msg::Resume(pending),
        Msg::Ready,
        Msg::Go,
        Msg::Demand(vec![0, 1, (SEED_PAGES - 1) as u32]),
        Msg::PushDone,
        Msg::BulkEnd,
        Msg::CkptWrites(vec![wire::DiskWrite {
            slot: 1,
            off: 512,
            op: wire::DiskOp::Write(vec![3; 512]),
        }]),
        Msg::Complete,
        Msg::Report("{\"pages\": 200, \"ok\": true}".into()),
        Msg::Cancel("user".into()),
        Msg::Error("ünïcödé".into()),
    ];
    msgs.iter().map(Msg::encode).collect()
}

/// The message types whose CRC the fuzzer repairs, read off the encoder so
/// no type number is hard-coded here.
struct Types {
    pages: u8,
    state: u8,
    switch: u8,
    resume: u8,
}

impl Types {
    fn new() -> Types {
        let t = |m: Msg| m.encode()[4];
        Types {
            pages: t(Msg::Pages(vec![])),
            state: t(Msg::State(vec![])),
            switch: t(Msg::Switch {
                state: vec![],
                pending: vec![],
            }),
            resume: t(Msg::Resume(vec![])),
        }
    }

    /// Recomputes the checksum of a Pages, State, Switch or Resume frame, so a
    /// mutation reaches the parser's later checks instead of dying at the
    /// CRC.
    fn fix_crc(&self, frame: &mut [u8]) {
        let Some(body) = frame.get_mut(4..) else {
            return;
        };
        if body.len() < 5 {
            return;
        }
        let n = body.len();
        if [self.pages, self.switch, self.resume].contains(&body[0]) {
            let c = crc32(&body[1..n - 4]);
            body[n - 4..].copy_from_slice(&c.to_le_bytes());
        } else if body[0] == self.state {
            let c = crc32(&body[5..]);
            body[1..5].copy_from_slice(&c.to_le_bytes());
        }
    }
}

fn set_len_word(frame: &mut Vec<u8>, len: u32) {
    if frame.len() < 4 {
        frame.resize(4, 0);
    }
    frame[..4].copy_from_slice(&len.to_le_bytes());
}

fn interesting_word(rng: &mut Rng, pages: usize) -> u32 {
    const W: [u32; 18] = [
        0,
        1,
        0x7f,
        0x80,
        0xff,
        0x100,
        MAX_BATCH as u32,
        MAX_BATCH as u32 + 1,
        0xffff,
        0x1_0000,
        PAGE as u32,
        MAX_TEXT as u32,
        MAX_TEXT as u32 + 1,
        MAX_FRAME as u32,
        MAX_FRAME as u32 + 1,
        0x7fff_ffff,
        0x8000_0000,
        u32::MAX,
    ];
    match rng.below(W.len() + 2) {
        i if i < W.len() => W[i],
        i if i == W.len() => pages as u32,
        _ => (pages as u32).wrapping_sub(1),
    }
}

/// Applies one to four mutations, then maybe repairs length and CRC.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>], types: &Types, pages: usize) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(11) {
            0 if len > 0 => input[rng.below(len)] ^= 1 << rng.below(8),
            1 if len > 0 => {
                input[rng.below(len)] = [0, 0xff, 0x7f, 0x80, 1, 0xfe][rng.below(6)];
            }
            2 if len > 0 => input[rng.below(len)] = rng.next() as u8,
            3 if len >= 2 => {
                // A little-endian u16 or u32 at a random spot: counts and
                // lengths are where a decoder goes wrong.
                let w = interesting_word(rng, pages).to_le_bytes();
                let n = (if rng.chance(2) { 2 } else { 4 }).min(len);
                let at = rng.below(len - n + 1);
                input[at..at + n].copy_from_slice(&w[..n]);
            }
            4 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
            5 if len > 0 => {
                let at = rng.below(len);
                let n = (1 + rng.below(16)).min(len - at);
                input.drain(at..at + n);
            }
            6 => {
                // Splice: our head, another input's tail.
                let other = &corpus[rng.below(corpus.len())];
                let head = rng.below(len + 1);
                let tail = rng.below(other.len() + 1);
                input.truncate(head);
                input.extend_from_slice(&other[tail..]);
            }
            7 => {
                let body = len.saturating_sub(4) as u32;
                let w = match rng.below(4) {
                    0 => body.wrapping_add(1 + rng.below(8) as u32),
                    1 => body.wrapping_sub(1 + rng.below(8) as u32),
                    2 => interesting_word(rng, pages),
                    _ => rng.next() as u32,
                };
                set_len_word(input, w);
            }
            8 => input.truncate(rng.below(len + 1)),
            9 => {
                // Another frame behind this one: recv must stop at frame
                // boundaries.
                let other = &corpus[rng.below(corpus.len())];
                input.extend_from_slice(other);
            }
            _ if len > 4 => {
                // Duplicate a chunk of the body in place (repeats a page
                // record or a bitmap word).
                let at = 4 + rng.below(len - 4);
                let n = (1 + rng.below(64)).min(len - at);
                let chunk = input[at..at + n].to_vec();
                let to = 4 + rng.below(len - 3);
                input.splice(to..to, chunk);
            }
            _ => {}
        }
    }
    if input.len() > MAX_FRAME / 16 {
        input.truncate(MAX_FRAME / 16);
    }
    if rng.chance(2) {
        types.fix_crc(input);
    }
    if rng.chance(3) {
        // Most inputs keep an honest length word, so the body is parsed
        // rather than failing at framing.
        let body = input.len().saturating_sub(4) as u32;
        set_len_word(input, body);
    }
}

/// What must hold for any message the decoder accepts from `body`.
fn check(m: &Msg, body: &[u8], pages: usize) -> Result<(), String> {
    match m {
        Msg::Pages(list) => {
            if list.len() > MAX_BATCH {
                return Err(format!("batch of {} pages", list.len()));
            }
            if let Some(p) = list.iter().find(|p| p.index as usize >= pages) {
                return Err(format!("page {} accepted with RAM of {pages}", p.index));
            }
        }
        Msg::Demand(list) => {
            if list.len() > MAX_BATCH {
                return Err(format!("demand of {} pages", list.len()));
            }
            if let Some(p) = list.iter().find(|&&p| p as usize >= pages) {
                return Err(format!("demand {p} accepted with RAM of {pages}"));
            }
        }
        Msg::Switch { pending, .. } => {
            if pending.len() != pages.div_ceil(64) {
                return Err(format!("bitmap of {} words for {pages}", pending.len()));
            }
            let tail = pages % 64;
            if tail != 0 && pending.last().is_some_and(|w| w >> tail != 0) {
                return Err("pending bits beyond RAM accepted".into());
            }
        }
        Msg::Resume(words) => {
            if words.len() != pages.div_ceil(64) {
                return Err(format!("resume map of {} words for {pages}", words.len()));
            }
            let tail = pages % 64;
            if tail != 0 && words.last().is_some_and(|w| w >> tail != 0) {
                return Err("resume map bits beyond RAM accepted".into());
            }
        }
        Msg::Hello(h) if h.mode.len() > MAX_TEXT => return Err("long Hello mode".into()),
        Msg::Refuse(s) | Msg::Report(s) | Msg::Cancel(s) | Msg::Error(s) if s.len() > MAX_TEXT => {
            return Err("long text".into());
        }
        _ => {}
    }
    let again = m.encode();
    if again.len() - 4 > MAX_FRAME {
        return Err("re-encoding exceeds MAX_FRAME".into());
    }
    match Msg::decode(&again[4..], pages) {
        Ok(ref back) if back == m => {}
        Ok(back) => return Err(format!("re-encoding decodes to {}", back.name())),
        Err(e) => return Err(format!("re-encoding fails to decode: {e}")),
    }
    // The format is canonical but for Hello's two flag bytes.
    let mut canon = body.to_vec();
    if matches!(m, Msg::Hello(_)) {
        let last = canon.len() - 1;
        canon[last] = u8::from(canon[last] != 0);
    }
    if again[4..] != canon[..] {
        return Err(format!("{} re-encodes to other bytes", m.name()));
    }
    Ok(())
}

/// Most a decode of `body` may allocate: its own size (texts, state, page
/// boxes), the bitmap the RAM size implies, and some slack.
fn alloc_bound(body_len: usize, pages: usize) -> usize {
    2 * body_len + pages.div_ceil(64) * 8 + ALLOC_SLACK
}

#[derive(Clone, Copy)]
enum Target {
    Decode,
    Recv,
}

/// Result of one execution: the outcome signature (for corpus novelty) and
/// whether some message decoded.
struct Outcome {
    signature: String,
    decoded: bool,
}

/// Appends a decode's verdict, digits stripped, to an outcome signature.
fn verdict(signature: &mut String, r: &Result<Msg, WireError>) {
    let s = match r {
        Ok(m) => m.name().to_string(),
        Err(e) => e.to_string(),
    };
    signature.extend(s.chars().filter(|c| !c.is_ascii_digit()).take(60));
    signature.push('|');
}

/// Runs one input through a target; `Err` is a finding (kind, detail).
fn execute(input: &[u8], pages: usize, target: Target) -> Result<Outcome, (String, String)> {
    let mut signature = String::new();
    let mut decoded = false;
    match target {
        Target::Decode => {
            let body = input.get(4..).unwrap_or(input);
            let _ = write!(signature, "d{}:", body.first().copied().unwrap_or(0));
            let before = ALLOCATED.load(Ordering::Relaxed);
            let r = Msg::decode(body, pages);
            let used = ALLOCATED.load(Ordering::Relaxed) - before;
            if used > alloc_bound(body.len(), pages) {
                return Err((
                    "alloc".into(),
                    format!("decode of {} bytes allocated {used}", body.len()),
                ));
            }
            verdict(&mut signature, &r);
            if let Ok(m) = r {
                decoded = true;
                check(&m, body, pages).map_err(|e| ("invariant".to_string(), e))?;
            }
        }
        Target::Recv => {
            let _ = write!(signature, "r{}:", input.get(4).copied().unwrap_or(0));
            let mut r = input;
            // Up to eight frames of a stream.
            for _ in 0..8 {
                let at = input.len() - r.len();
                let len = r
                    .get(..4)
                    .map_or(0, |w| u32::from_le_bytes(w.try_into().unwrap()) as usize);
                let before = ALLOCATED.load(Ordering::Relaxed);
                let got = wire::recv(&mut r, pages);
                let used = ALLOCATED.load(Ordering::Relaxed) - before;
                let bound = len.min(MAX_FRAME) + alloc_bound(len.min(MAX_FRAME), pages);
                if used > bound {
                    return Err((
                        "alloc".into(),
                        format!("recv of a {len}-byte frame allocated {used}"),
                    ));
                }
                verdict(&mut signature, &got);
                match got {
                    Ok(m) => {
                        decoded = true;
                        let body = &input[at + 4..at + 4 + len];
                        check(&m, body, pages).map_err(|e| ("invariant".to_string(), e))?;
                    }
                    Err(_) => break,
                }
            }
        }
    }
    Ok(Outcome { signature, decoded })
}

static PANIC_MESSAGE: Mutex<String> = Mutex::new(String::new());

/// Runs `execute` with panics caught and turned into findings.
fn guarded(input: &[u8], pages: usize, target: Target) -> Result<Outcome, (String, String)> {
    match panic::catch_unwind(AssertUnwindSafe(|| execute(input, pages, target))) {
        Ok(r) => r,
        Err(_) => {
            let what =
                std::mem::take(&mut *PANIC_MESSAGE.lock().unwrap_or_else(|e| e.into_inner()));
            Err(("panic".into(), what))
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2).unwrap_or("x"), 16).map_err(|e| e.to_string()))
        .collect()
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes a finding as `# comment` lines and one hex line; returns the path.
fn record(
    dir: &PathBuf,
    kind: &str,
    what: &str,
    input: &[u8],
    pages: usize,
    target: Target,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{kind}-{:016x}.hex", fnv(input)));
    let target = match target {
        Target::Decode => "decode",
        Target::Recv => "recv",
    };
    let text = format!(
        "# {kind}: {}\n# target={target} pages={pages}\n{}\n",
        what.replace('\n', " "),
        hex(input)
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `--replay FILE`: runs one recorded input again and prints the verdict.
fn replay(path: &PathBuf) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut pages = SEED_PAGES;
    let mut target = Target::Recv;
    let mut data = String::new();
    for line in text.lines() {
        if let Some(c) = line.strip_prefix('#') {
            for kv in c.split_whitespace() {
                match kv.split_once('=') {
                    Some(("pages", v)) => pages = v.parse().map_err(|e| format!("pages: {e}"))?,
                    Some(("target", "decode")) => target = Target::Decode,
                    _ => {}
                }
            }
        } else {
            data.push_str(line);
        }
    }
    let input = unhex(&data)?;
    match guarded(&input, pages, target) {
        Ok(o) => println!("no finding: {}", o.signature),
        Err((kind, what)) => println!("{kind}: {what}"),
    }
    Ok(())
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fuzz_wire: {e}");
            std::process::exit(2);
        }
    };
    // Keep panics quiet (they are expected findings), but remember where.
    panic::set_hook(Box::new(|info| {
        let mut m = PANIC_MESSAGE.lock().unwrap_or_else(|e| e.into_inner());
        *m = info.to_string();
    }));
    if let Some(path) = &opts.replay {
        if let Err(e) = replay(path) {
            eprintln!("fuzz_wire: {e}");
            std::process::exit(2);
        }
        return;
    }

    let types = Types::new();
    let seeds = seeds();
    // The local CRC must agree with the encoder's, or CRC repair is useless.
    let state_seed = Msg::State(vec![1, 2, 3]).encode();
    assert_eq!(
        state_seed[5..9],
        crc32(&[1, 2, 3]).to_le_bytes(),
        "CRC-32 mismatch"
    );
    for s in &seeds {
        assert!(recv_ok(s), "a seed does not decode");
    }

    let mut rng = Rng(opts.seed);
    let mut corpus = seeds.clone();
    let mut seen: HashSet<String> = HashSet::new();
    let mut found: HashSet<(String, String)> = HashSet::new();
    let (mut executions, mut decoded_ok) = (0u64, 0u64);
    let started = Instant::now();
    let mut input = Vec::new();
    loop {
        if let Some(n) = opts.iterations {
            if executions >= n {
                break;
            }
        } else if executions % 1024 == 0 && started.elapsed().as_secs_f64() >= opts.seconds {
            break;
        }
        let pages = if rng.chance(4) {
            OTHER_PAGES[rng.below(OTHER_PAGES.len())]
        } else {
            SEED_PAGES
        };
        input.clear();
        input.extend_from_slice(&corpus[rng.below(corpus.len())]);
        mutate(&mut rng, &mut input, &corpus, &types, pages);
        let target = if rng.chance(2) {
            Target::Decode
        } else {
            Target::Recv
        };
        executions += 1;
        match guarded(&input, pages, target) {
            Ok(o) => {
                decoded_ok += u64::from(o.decoded);
                if corpus.len() < CORPUS_CAP && seen.insert(o.signature) {
                    corpus.push(input.clone());
                }
            }
            Err((kind, what)) => {
                let short: String = what.chars().filter(|c| !c.is_ascii_digit()).collect();
                if found.insert((kind.clone(), short)) {
                    match record(&opts.findings, &kind, &what, &input, pages, target) {
                        Ok(p) => eprintln!("finding: {kind}: {what} -> {}", p.display()),
                        Err(e) => eprintln!("finding: {kind}: {what} (not saved: {e})"),
                    }
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "corpus {} inputs, {} distinct outcomes",
        corpus.len(),
        seen.len()
    );
    println!(
        "{{\"executions\": {executions}, \"seconds\": {seconds:.1}, \"execs_per_s\": {:.0}, \"findings\": {}, \"decoded_ok\": {decoded_ok}}}",
        executions as f64 / seconds.max(1e-9),
        found.len()
    );
}

fn recv_ok(frame: &[u8]) -> bool {
    wire::recv(&mut &frame[..], SEED_PAGES).is_ok()
}

//! Post-copy push order: pre-paging ("bubbling", Hines & Gopalan).
//!
//! Once the guest runs at the destination, the source pushes every page not
//! yet sent while it also answers demand requests for pages the guest faults
//! on. Each page crosses the network once. Faults are hints of spatial
//! locality, so the push moves to where the guest is faulting:
//!
//! ```text
//!  none          0 1 2 3 4 ...                          (plain linear push)
//!  forward       fault at X: X+1 X+2 X+3 ...            (one pivot, one edge)
//!  dual          fault at X: X-1 X+1 X-2 X+2 ...        (one pivot, two edges)
//!  multi-pivot   one dual bubble per recent fault, serviced round-robin:
//!
//!     0 ▶▶▶▶▶▶▶▶▶▶.........◀◀◀ P1 ▶▶▶|◀◀ P2 ▶▶▶▶.......◀◀ P3 ▶▶▶▶▶.... MAX
//!     sticky sweep                 meeting edges stop
//! ```
//!
//! [`PushOrder`] is pure policy: the engine asks it for the next page and
//! tells it about faults; sockets, threads and the shared "done" bitmap stay
//! in the engine. The rules:
//!
//! - Before any fault every strategy pushes linearly from page 0 (the paper's
//!   initial pivot at 0, whose bubble can only grow forward).
//! - A fault at X moves the push to X (`forward`, `dual`) or adds a pivot at X
//!   (`multi-pivot`: the `k` most recent faults have a bubble each, the oldest
//!   is replaced). A fault on a page already pushed is ignored.
//! - Single-pivot edges skip pages already sent and stop only at page 0 or
//!   the last page. Multi-pivot edges stop where they meet a page pushed or
//!   faulted during this post-copy (another bubble's territory), but skip
//!   pages that were done for other reasons (free pages, pages sent by
//!   pre-copy), so bubbles still work in a hybrid migration.
//! - The linear sweep never stops: in `multi-pivot` it is the paper's
//!   "sticky" first pivot and takes its round-robin turn with the bubbles; in
//!   the other strategies it takes over when the bubble is exhausted. Either
//!   way every page is eventually produced.
//!
//! Cost: [`PushOrder`] remembers which pages it has produced, heard faulted,
//! or seen done, in bitsets with a summary level per 64 words, so skipping a
//! run of sent pages is a few word operations whatever its length. Each
//! `is_done` probe either finds a new done page (at most one probe per page
//! over the migration) or yields the page to produce, so a whole migration
//! costs O(pages · log₆₄ pages) plus O(1)-ish work per fault.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

/// Pivots kept by `multi-pivot` when no count is given (the paper's best).
pub const DEFAULT_PIVOTS: usize = 7;
/// Largest pivot count `multi-pivot:K` accepts.
pub const MAX_PIVOTS: usize = 64;

/// How the post-copy push is ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Linear push 0, 1, 2, ...; faults do not change the order.
    None,
    /// One pivot; its bubble grows forward only.
    Forward,
    /// One pivot; its bubble grows both ways, nearest pages first.
    Dual,
    /// The `k` most recent faults each have a dual bubble, plus the sticky
    /// linear sweep from page 0; serviced round-robin. `k` outside
    /// `1..=MAX_PIVOTS` is clamped into it.
    MultiPivot {
        /// Fault pivots kept (the sticky sweep is extra).
        k: usize,
    },
}

/// Why a strategy name did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseStrategyError {
    /// Not one of the strategy names.
    #[error(
        "unknown pre-paging strategy '{0}' (choose none, forward, dual, \
         multi-pivot or multi-pivot:K with K from 1 to {MAX_PIVOTS})"
    )]
    Unknown(String),
    /// `multi-pivot:K` with K not a number in `1..=MAX_PIVOTS`.
    #[error("bad pivot count in '{0}': K in multi-pivot:K must be a whole number from 1 to {MAX_PIVOTS}")]
    BadPivotCount(String),
}

impl FromStr for Strategy {
    type Err = ParseStrategyError;

    /// `none`, `forward`, `dual`, `multi-pivot` (k = 7) or `multi-pivot:K`.
    fn from_str(s: &str) -> Result<Strategy, ParseStrategyError> {
        match s {
            "none" => Ok(Strategy::None),
            "forward" => Ok(Strategy::Forward),
            "dual" => Ok(Strategy::Dual),
            "multi-pivot" => Ok(Strategy::MultiPivot { k: DEFAULT_PIVOTS }),
            _ => {
                let Some(k) = s.strip_prefix("multi-pivot:") else {
                    return Err(ParseStrategyError::Unknown(s.to_owned()));
                };
                let bad = || ParseStrategyError::BadPivotCount(s.to_owned());
                if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                match k.parse::<usize>() {
                    Ok(k) if (1..=MAX_PIVOTS).contains(&k) => Ok(Strategy::MultiPivot { k }),
                    _ => Err(bad()),
                }
            }
        }
    }
}

/// The inverse of `FromStr`: `multi-pivot` when k is the default.
impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so width and alignment work in tables.
        match self {
            Strategy::None => f.pad("none"),
            Strategy::Forward => f.pad("forward"),
            Strategy::Dual => f.pad("dual"),
            Strategy::MultiPivot { k: DEFAULT_PIVOTS } => f.pad("multi-pivot"),
            Strategy::MultiPivot { k } => f.pad(&format!("multi-pivot:{k}")),
        }
    }
}

/// Decides which page the post-copy source pushes next.
pub struct PushOrder {
    strategy: Strategy,
    /// Most fault bubbles kept (0 for `none`, 1 for single pivot, k).
    max_bubbles: usize,
    ledger: Ledger,
    /// The linear sweep (sticky pivot / fallback): every page below it is
    /// known done. Only moves forward.
    sweep: usize,
    /// Fault bubbles, oldest first.
    bubbles: VecDeque<Bubble>,
    /// Multi-pivot round robin: index into `bubbles`; `bubbles.len()` is the
    /// sweep's turn.
    turn: usize,
    bubble_pages: u64,
    linear_pages: u64,
}

impl PushOrder {
    /// A push order over `pages` guest pages, none of them known done yet.
    pub fn new(strategy: Strategy, pages: usize) -> PushOrder {
        let max_bubbles = match strategy {
            Strategy::None => 0,
            Strategy::Forward | Strategy::Dual => 1,
            Strategy::MultiPivot { k } => k.clamp(1, MAX_PIVOTS),
        };
        PushOrder {
            strategy,
            max_bubbles,
            ledger: Ledger::new(pages),
            sweep: 0,
            bubbles: VecDeque::with_capacity(max_bubbles),
            turn: 0,
            bubble_pages: 0,
            linear_pages: 0,
        }
    }

    /// The strategy this order follows.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// A network fault at `page` (the engine has already sent it as a demand
    /// reply and marked it done). Ignored if this order already produced the
    /// page (it was in flight) or already heard of the fault, and for pages
    /// out of range.
    pub fn on_fault(&mut self, page: usize) {
        if page >= self.ledger.pages || self.ledger.touched.contains(page) {
            return;
        }
        self.ledger.mark_sent(page);
        let pages = self.ledger.pages;
        match self.strategy {
            Strategy::None => {}
            Strategy::Forward => {
                self.bubbles.clear();
                self.bubbles.push_back(Bubble::new(page, pages, false));
            }
            Strategy::Dual => {
                self.bubbles.clear();
                self.bubbles.push_back(Bubble::new(page, pages, true));
            }
            Strategy::MultiPivot { .. } => {
                if self.bubbles.len() == self.max_bubbles {
                    self.bubbles.pop_front();
                }
                self.bubbles.push_back(Bubble::new(page, pages, true));
                // The newest fault is the freshest hint: serve it next, then
                // carry on round-robin from there.
                self.turn = self.bubbles.len() - 1;
            }
        }
    }

    /// The next page to push that `is_done` says is not done, or `None` when
    /// every page is done. Never returns a page twice, even if the engine has
    /// not marked it done yet.
    pub fn next(&mut self, is_done: impl Fn(usize) -> bool) -> Option<usize> {
        match self.strategy {
            Strategy::None => self.next_linear(&is_done),
            Strategy::Forward | Strategy::Dual => {
                if let Some(bubble) = self.bubbles.front_mut() {
                    match bubble.next(&mut self.ledger, EdgeRule::SkipSent, &is_done) {
                        Some(page) => return Some(self.produced_by_bubble(page)),
                        // Both edges reached the ends: the sweep mops up.
                        None => self.bubbles.clear(),
                    }
                }
                self.next_linear(&is_done)
            }
            Strategy::MultiPivot { .. } => loop {
                let Some(bubble) = self.bubbles.get_mut(self.turn) else {
                    // The sticky pivot's turn. It never stalls, so when it
                    // has nothing every page is known done.
                    self.turn = 0;
                    return self.next_linear(&is_done);
                };
                match bubble.next(&mut self.ledger, EdgeRule::StopAtSent, &is_done) {
                    Some(page) => {
                        self.turn += 1;
                        return Some(self.produced_by_bubble(page));
                    }
                    // Both edges stopped: the bubble frees its slot and the
                    // next one (now at `turn`) gets this turn.
                    None => {
                        self.bubbles.remove(self.turn);
                    }
                }
            },
        }
    }

    /// Pages `next` produced from a fault pivot's bubble.
    pub fn bubble_pages(&self) -> u64 {
        self.bubble_pages
    }

    /// Pages `next` produced by the linear sweep (the initial pivot at page
    /// 0, the sticky pivot of `multi-pivot`, or the fallback).
    pub fn linear_pages(&self) -> u64 {
        self.linear_pages
    }

    fn produced_by_bubble(&mut self, page: usize) -> usize {
        self.ledger.mark_sent(page);
        self.bubble_pages += 1;
        page
    }

    /// The first page at or after the sweep that is not done. The cursor
    /// only moves forward, so the sweep costs O(pages) over a migration.
    fn next_linear<F: Fn(usize) -> bool>(&mut self, is_done: &F) -> Option<usize> {
        loop {
            let Some(page) = self.ledger.known.first_clear_from(self.sweep) else {
                self.sweep = self.ledger.pages;
                return None;
            };
            self.sweep = page + 1;
            if is_done(page) {
                self.ledger.note_done(page);
                continue;
            }
            self.ledger.mark_sent(page);
            self.linear_pages += 1;
            return Some(page);
        }
    }

    /// Fault pivots, oldest first (the sticky sweep is not listed).
    #[cfg(test)]
    fn pivots(&self) -> Vec<usize> {
        self.bubbles.iter().map(|b| b.pivot).collect()
    }
}

impl fmt::Debug for PushOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushOrder")
            .field("strategy", &self.strategy)
            .field("pages", &self.ledger.pages)
            .field("sweep", &self.sweep)
            .field(
                "pivots",
                &self.bubbles.iter().map(|b| b.pivot).collect::<Vec<_>>(),
            )
            .field("bubble_pages", &self.bubble_pages)
            .field("linear_pages", &self.linear_pages)
            .finish()
    }
}

/// What a bubble edge does at a page that is already sent.
#[derive(Clone, Copy)]
enum EdgeRule {
    /// Single pivot: skip it, stop only at the ends of RAM.
    SkipSent,
    /// Multi-pivot: stop there if this post-copy pushed or faulted it (the
    /// edge met another bubble); skip pages done for other reasons.
    StopAtSent,
}

/// One pivot and the two edges of its bubble.
struct Bubble {
    pivot: usize,
    /// Next page the forward edge looks at; `None` once it has stopped.
    up: Option<usize>,
    /// Next page the backward edge looks at; `None` once it has stopped.
    down: Option<usize>,
}

impl Bubble {
    fn new(pivot: usize, pages: usize, dual: bool) -> Bubble {
        Bubble {
            pivot,
            up: (pivot + 1 < pages).then_some(pivot + 1),
            down: if dual { pivot.checked_sub(1) } else { None },
        }
    }

    /// The edge page nearest the pivot (backward first on a tie), which is
    /// the order of the paper's loop "send pivot-b, send pivot+b, b += 1"
    /// with sent pages skipped; `None` once both edges stopped.
    fn next<F: Fn(usize) -> bool>(
        &mut self,
        ledger: &mut Ledger,
        rule: EdgeRule,
        is_done: &F,
    ) -> Option<usize> {
        // Each edge remembers its candidate, so a call costs two bitset
        // searches however long the runs of sent pages they jump.
        self.down = self
            .down
            .and_then(|from| ledger.edge_down(from, rule, is_done));
        self.up = self.up.and_then(|from| ledger.edge_up(from, rule, is_done));
        let take_down = match (self.down, self.up) {
            (Some(d), Some(u)) => self.pivot - d <= u - self.pivot,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        if take_down {
            let page = self.down?;
            self.down = page.checked_sub(1);
            Some(page)
        } else {
            let page = self.up?;
            self.up = Some(page + 1);
            Some(page)
        }
    }
}

/// What the order knows about each page. All three sets only learn; a page
/// moves from `external` to `touched` if its fault is reported after the
/// order saw it done.
struct Ledger {
    pages: usize,
    /// Produced by `next` or reported by `on_fault` (sent during post-copy).
    touched: PageSet,
    /// Seen done through `is_done` but not touched (free, pre-copied, or a
    /// demand reply not reported yet).
    external: PageSet,
    /// `touched` ∪ `external`: never worth probing again.
    known: PageSet,
}

impl Ledger {
    fn new(pages: usize) -> Ledger {
        Ledger {
            pages,
            touched: PageSet::new(pages),
            external: PageSet::new(pages),
            known: PageSet::new(pages),
        }
    }

    fn mark_sent(&mut self, page: usize) {
        self.touched.insert(page);
        self.external.remove(page);
        self.known.insert(page);
    }

    fn note_done(&mut self, page: usize) {
        self.external.insert(page);
        self.known.insert(page);
    }

    /// The forward edge's next page to push at or after `from`, or `None` if
    /// the edge stops.
    fn edge_up<F: Fn(usize) -> bool>(
        &mut self,
        mut from: usize,
        rule: EdgeRule,
        is_done: &F,
    ) -> Option<usize> {
        loop {
            let page = match rule {
                EdgeRule::SkipSent => self.known.first_clear_from(from),
                EdgeRule::StopAtSent => self.external.first_clear_from(from),
            }?;
            if self.touched.contains(page) {
                return None;
            }
            if !is_done(page) {
                return Some(page);
            }
            // Learned once per page: bounds the probes over a migration.
            self.note_done(page);
            from = page + 1;
        }
    }

    /// The backward edge's next page to push at or before `from`.
    fn edge_down<F: Fn(usize) -> bool>(
        &mut self,
        mut from: usize,
        rule: EdgeRule,
        is_done: &F,
    ) -> Option<usize> {
        loop {
            let page = match rule {
                EdgeRule::SkipSent => self.known.last_clear_upto(from),
                EdgeRule::StopAtSent => self.external.last_clear_upto(from),
            }?;
            if self.touched.contains(page) {
                return None;
            }
            if !is_done(page) {
                return Some(page);
            }
            self.note_done(page);
            from = page.checked_sub(1)?;
        }
    }
}

/// A set of page numbers that finds the nearest page *not* in it, in either
/// direction, in a few word operations. `levels[0]` has a bit per page;
/// each level above has a bit per word of the one below, set when that word
/// is full, up to a single word. Bits past the end are kept set so searches
/// never land there.
struct PageSet {
    len: usize,
    levels: Vec<Vec<u64>>,
}

impl PageSet {
    fn new(len: usize) -> PageSet {
        let mut levels = Vec::new();
        let mut bits = len;
        loop {
            let words = bits.div_ceil(64).max(1);
            let mut level = vec![0u64; words];
            if !bits.is_multiple_of(64) || bits == 0 {
                level[words - 1] = !0 << (bits % 64);
            }
            levels.push(level);
            if words == 1 {
                return PageSet { len, levels };
            }
            bits = words;
        }
    }

    fn contains(&self, page: usize) -> bool {
        self.levels[0][page / 64] & (1 << (page % 64)) != 0
    }

    fn insert(&mut self, page: usize) {
        let mut idx = page;
        for level in &mut self.levels {
            let word = &mut level[idx / 64];
            *word |= 1 << (idx % 64);
            if *word != !0 {
                return;
            }
            idx /= 64;
        }
    }

    fn remove(&mut self, page: usize) {
        let mut idx = page;
        for level in &mut self.levels {
            let word = &mut level[idx / 64];
            let was_full = *word == !0;
            *word &= !(1 << (idx % 64));
            if !was_full {
                return;
            }
            idx /= 64;
        }
    }

    /// The smallest page >= `from` not in the set.
    fn first_clear_from(&self, from: usize) -> Option<usize> {
        if from >= self.len {
            return None;
        }
        // Climb until a word has a clear bit at or after `idx`...
        let (mut level, mut idx) = (0, from);
        loop {
            let w = idx / 64;
            let word = *self.levels[level].get(w)? | ((1u64 << (idx % 64)) - 1);
            if word != !0 {
                idx = w * 64 + (!word).trailing_zeros() as usize;
                break;
            }
            if level + 1 == self.levels.len() {
                return None;
            }
            (level, idx) = (level + 1, w + 1);
        }
        // ...then descend to the first clear bit under it.
        while level > 0 {
            level -= 1;
            idx = idx * 64 + (!self.levels[level][idx]).trailing_zeros() as usize;
        }
        (idx < self.len).then_some(idx)
    }

    /// The largest page <= `from` not in the set.
    fn last_clear_upto(&self, from: usize) -> Option<usize> {
        let (mut level, mut idx) = (0, from.min(self.len.checked_sub(1)?));
        loop {
            let w = idx / 64;
            let above = match idx % 64 {
                63 => 0,
                b => !0u64 << (b + 1),
            };
            let word = self.levels[level][w] | above;
            if word != !0 {
                idx = w * 64 + 63 - (!word).leading_zeros() as usize;
                break;
            }
            if w == 0 || level + 1 == self.levels.len() {
                return None;
            }
            (level, idx) = (level + 1, w - 1);
        }
        while level > 0 {
            level -= 1;
            idx = idx * 64 + 63 - (!self.levels[level][idx]).leading_zeros() as usize;
        }
        Some(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// splitmix64: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const ALL: [Strategy; 6] = [
        Strategy::None,
        Strategy::Forward,
        Strategy::Dual,
        Strategy::MultiPivot { k: 7 },
        Strategy::MultiPivot { k: 1 },
        Strategy::MultiPivot { k: 3 },
    ];

    /// Drains `order` with no faults, marking each page done as produced.
    fn drain(order: &mut PushOrder, done: &mut [bool]) -> Vec<usize> {
        let mut out = Vec::new();
        while let Some(p) = order.next(|p| done[p]) {
            assert!(!done[p], "page {p} produced twice");
            done[p] = true;
            out.push(p);
        }
        out
    }

    fn take(order: &mut PushOrder, done: &mut [bool], n: usize) -> Vec<usize> {
        let mut out = Vec::new();
        for _ in 0..n {
            let p = order.next(|p| done[p]).expect("a page");
            assert!(!done[p], "page {p} produced twice");
            done[p] = true;
            out.push(p);
        }
        out
    }

    fn fault(order: &mut PushOrder, done: &mut [bool], page: usize) {
        assert!(!done[page]);
        done[page] = true;
        order.on_fault(page);
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in [
            "none",
            "forward",
            "dual",
            "multi-pivot",
            "multi-pivot:1",
            "multi-pivot:64",
        ] {
            let strategy: Strategy = s.parse().unwrap();
            assert_eq!(strategy.to_string(), s);
        }
        assert_eq!("multi-pivot".parse(), Ok(Strategy::MultiPivot { k: 7 }));
        assert_eq!("multi-pivot:3".parse(), Ok(Strategy::MultiPivot { k: 3 }));
        assert_eq!(Strategy::MultiPivot { k: 7 }.to_string(), "multi-pivot");
        assert_eq!(
            "multi-pivot:7".parse::<Strategy>().unwrap().to_string(),
            "multi-pivot"
        );
        for k in 1..=MAX_PIVOTS {
            let s = Strategy::MultiPivot { k };
            assert_eq!(s.to_string().parse(), Ok(s));
        }
        let json = serde_json::to_string(&Strategy::MultiPivot { k: 5 }).unwrap();
        assert_eq!(
            serde_json::from_str::<Strategy>(&json).unwrap(),
            Strategy::MultiPivot { k: 5 }
        );
    }

    #[test]
    fn parse_errors() {
        for s in [
            "",
            "Dual",
            "backward",
            "multi",
            "multipivot",
            " dual",
            "multi-pivot:",
        ] {
            let err = s.parse::<Strategy>().unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("none, forward, dual") || msg.contains("1 to 64"),
                "{msg}"
            );
        }
        for s in [
            "multi-pivot:0",
            "multi-pivot:65",
            "multi-pivot:-1",
            "multi-pivot:+3",
            "multi-pivot:x",
        ] {
            assert_eq!(
                s.parse::<Strategy>(),
                Err(ParseStrategyError::BadPivotCount(s.to_owned()))
            );
        }
        let msg = "bubbly".parse::<Strategy>().unwrap_err().to_string();
        assert!(msg.contains("'bubbly'"), "{msg}");
        for choice in ["none", "forward", "dual", "multi-pivot", "multi-pivot:K"] {
            assert!(msg.contains(choice), "{msg}");
        }
    }

    #[test]
    fn page_set_searches() {
        for len in [0, 1, 63, 64, 65, 4095, 4096, 4097, 300_000] {
            let mut set = PageSet::new(len);
            assert_eq!(set.first_clear_from(0), (len > 0).then_some(0));
            assert_eq!(set.last_clear_upto(usize::MAX), len.checked_sub(1));
            for p in 0..len {
                set.insert(p);
            }
            assert_eq!(set.first_clear_from(0), None);
            assert_eq!(set.last_clear_upto(usize::MAX), None);
            if len > 10 {
                let mid = len / 2;
                set.remove(mid);
                assert_eq!(set.first_clear_from(0), Some(mid));
                assert_eq!(set.first_clear_from(mid + 1), None);
                assert_eq!(set.last_clear_upto(len - 1), Some(mid));
                assert_eq!(set.last_clear_upto(mid - 1), None);
                set.remove(3);
                assert_eq!(set.last_clear_upto(mid - 1), Some(3));
                assert_eq!(set.first_clear_from(4), Some(mid));
                set.insert(mid);
                assert_eq!(set.first_clear_from(4), None);
            }
        }
        // Random cross-check against a plain Vec<bool>.
        let mut rng = Rng(7);
        let len = 20_000;
        let mut set = PageSet::new(len);
        let mut plain = vec![false; len];
        for round in 0..40_000u32 {
            let p = rng.below(len);
            if round.is_multiple_of(5) {
                set.remove(p);
                plain[p] = false;
            } else {
                // Mostly long runs, to exercise the summary levels.
                let end = (p + rng.below(3000)).min(len);
                plain[p..end].fill(true);
                (p..end).for_each(|q| set.insert(q));
            }
            let q = rng.below(len);
            assert_eq!(set.first_clear_from(q), (q..len).find(|&i| !plain[i]));
            assert_eq!(set.last_clear_upto(q), (0..=q).rev().find(|&i| !plain[i]));
            assert_eq!(set.contains(q), plain[q]);
        }
    }

    /// The engine, simulated: some pages free (done from the start), faults
    /// at random pages after random intervals, clustered like real
    /// workloads; produced and faulted pages are marked done.
    fn simulate(strategy: Strategy, pages: usize, faults: usize, seed: u64) -> (PushOrder, u128) {
        let mut rng = Rng(seed);
        let mut done = vec![false; pages];
        for _ in 0..pages / 100 {
            let start = rng.below(pages);
            let end = (start + rng.below(32)).min(pages);
            done[start..end].iter_mut().for_each(|d| *d = true);
        }
        let free: Vec<bool> = done.clone();
        let mut sent = vec![0u8; pages];
        let mut order = PushOrder::new(strategy, pages);
        let mut until_fault = rng.below(2 * pages / faults.max(1) + 1);
        let mut last_fault = 0;
        let mut faulted = 0;
        let mut produced = 0;
        let start = Instant::now();
        loop {
            while faulted < faults && until_fault == 0 {
                until_fault = rng.below(2 * pages / faults.max(1) + 1);
                let page = if rng.below(2) == 0 {
                    (last_fault + rng.below(64)).min(pages - 1)
                } else {
                    rng.below(pages)
                };
                faulted += 1;
                if !done[page] {
                    done[page] = true;
                    sent[page] += 1;
                    last_fault = page;
                    order.on_fault(page);
                }
            }
            until_fault = until_fault.saturating_sub(1);
            match order.next(|p| done[p]) {
                Some(p) => {
                    assert!(!done[p], "{strategy}: page {p} produced while done");
                    done[p] = true;
                    sent[p] += 1;
                    produced += 1;
                }
                None => break,
            }
        }
        let elapsed = start.elapsed().as_micros();
        assert_eq!(order.next(|p| done[p]), None);
        for p in 0..pages {
            let want = u8::from(!free[p]);
            assert_eq!(sent[p], want, "{strategy}: page {p} sent {} times", sent[p]);
        }
        assert_eq!(order.bubble_pages() + order.linear_pages(), produced);
        (order, elapsed)
    }

    /// Faults the order accepted (pages touched but not produced).
    fn order_faults(order: &PushOrder) -> u64 {
        let l = &order.ledger;
        let touched = (0..l.pages).filter(|&p| l.touched.contains(p)).count() as u64;
        touched - order.bubble_pages() - order.linear_pages()
    }

    #[test]
    fn every_strategy_is_complete() {
        for strategy in ALL {
            for seed in 0..4 {
                for faults in [0, 10, 300, 3000] {
                    let (order, _) = simulate(strategy, 10_000, faults, seed);
                    if strategy == Strategy::None || faults == 0 {
                        assert_eq!(order.bubble_pages(), 0);
                    }
                }
            }
        }
    }

    #[test]
    fn never_repeats_a_page_the_engine_has_not_marked() {
        for strategy in ALL {
            let pages = 1000;
            let mut order = PushOrder::new(strategy, pages);
            let mut seen = vec![false; pages];
            let mut n = 0usize;
            // The engine never marks anything done: each page still comes once.
            while let Some(p) = order.next(|_| false) {
                assert!(!seen[p], "{strategy}: page {p} twice");
                seen[p] = true;
                n += 1;
                if n.is_multiple_of(97) {
                    order.on_fault((n * 31) % pages);
                }
            }
            let faulted = order_faults(&order) as usize;
            assert_eq!(n + faulted, pages, "{strategy}");
        }
    }

    #[test]
    fn none_is_linear() {
        let mut done = vec![false; 50];
        let mut order = PushOrder::new(Strategy::None, 50);
        assert_eq!(take(&mut order, &mut done, 5), [0, 1, 2, 3, 4]);
        fault(&mut order, &mut done, 30);
        done[7] = true; // e.g. a free page
        let rest = drain(&mut order, &mut done);
        let want: Vec<usize> = (5..50).filter(|&p| p != 7 && p != 30).collect();
        assert_eq!(rest, want);
        assert_eq!((order.linear_pages(), order.bubble_pages()), (48, 0));
    }

    #[test]
    fn forward_moves_to_the_fault() {
        let mut done = vec![false; 100];
        let mut order = PushOrder::new(Strategy::Forward, 100);
        assert_eq!(take(&mut order, &mut done, 3), [0, 1, 2]);
        fault(&mut order, &mut done, 50);
        done[53] = true;
        assert_eq!(take(&mut order, &mut done, 4), [51, 52, 54, 55]);
        // A new fault restarts the bubble there, even behind the old pivot.
        fault(&mut order, &mut done, 20);
        assert_eq!(take(&mut order, &mut done, 3), [21, 22, 23]);
        // A fault on a page already pushed is ignored.
        order.on_fault(22);
        assert_eq!(order.pivots(), [20]);
        let rest = drain(&mut order, &mut done);
        // The bubble sweeps forward over sent pages to the end, then the
        // linear fallback takes what is left below.
        let mut want: Vec<usize> = (24..100).filter(|p| !(50..=55).contains(p)).collect();
        want.extend(3..20);
        assert_eq!(rest, want);
        assert_eq!(order.bubble_pages(), 4 + 3 + 70);
        assert_eq!(order.linear_pages(), 3 + 17);
    }

    #[test]
    fn dual_alternates_nearest_first() {
        let mut done = vec![false; 100];
        let mut order = PushOrder::new(Strategy::Dual, 100);
        fault(&mut order, &mut done, 50);
        assert_eq!(take(&mut order, &mut done, 6), [49, 51, 48, 52, 47, 53]);
        // Sent pages are skipped but the order stays by distance: the
        // paper's "send pivot-b, pivot+b if not yet sent; b += 1".
        fault(&mut order, &mut done, 20);
        done[19] = true;
        (21..=23).for_each(|p| done[p] = true);
        assert_eq!(take(&mut order, &mut done, 7), [18, 17, 16, 24, 15, 25, 14]);

        // The edge at 0 stops, the other goes on.
        let mut done = vec![false; 10];
        let mut order = PushOrder::new(Strategy::Dual, 10);
        fault(&mut order, &mut done, 2);
        assert_eq!(drain(&mut order, &mut done), [1, 3, 0, 4, 5, 6, 7, 8, 9]);
        assert_eq!((order.bubble_pages(), order.linear_pages()), (9, 0));

        // Same at the end of RAM.
        let mut done = vec![false; 10];
        let mut order = PushOrder::new(Strategy::Dual, 10);
        assert_eq!(take(&mut order, &mut done, 2), [0, 1]);
        fault(&mut order, &mut done, 8);
        assert_eq!(drain(&mut order, &mut done), [7, 9, 6, 5, 4, 3, 2]);
    }

    #[test]
    fn multi_pivot_keeps_the_k_most_recent() {
        let mut done = vec![false; 1000];
        let mut order = PushOrder::new(Strategy::MultiPivot { k: 2 }, 1000);
        assert_eq!(take(&mut order, &mut done, 1), [0]);
        fault(&mut order, &mut done, 100);
        fault(&mut order, &mut done, 200);
        assert_eq!(order.pivots(), [100, 200]);
        fault(&mut order, &mut done, 300);
        assert_eq!(order.pivots(), [200, 300], "the oldest pivot is replaced");
        // The newest pivot first, then round-robin: sticky sweep, 200, 300.
        assert_eq!(
            take(&mut order, &mut done, 10),
            [299, 1, 199, 301, 2, 201, 298, 3, 198, 302]
        );
        // A fault on a page in flight changes nothing.
        order.on_fault(301);
        order.on_fault(2);
        assert_eq!(order.pivots(), [200, 300]);
        // The sticky sweep is never replaced, however many faults come.
        for p in [500, 600, 700, 800] {
            fault(&mut order, &mut done, p);
        }
        assert_eq!(order.pivots(), [700, 800]);
        let next = take(&mut order, &mut done, 6);
        assert_eq!(next, [799, 4, 699, 801, 5, 701]);
    }

    #[test]
    fn multi_pivot_edges_stop_where_bubbles_meet() {
        let mut done = vec![false; 100];
        let mut order = PushOrder::new(Strategy::MultiPivot { k: 7 }, 100);
        done[60..70].iter_mut().for_each(|d| *d = true); // free pages
        fault(&mut order, &mut done, 50);
        fault(&mut order, &mut done, 54);
        // 54 first; sweep; 50; 54; sweep; 50; ...
        assert_eq!(
            take(&mut order, &mut done, 9),
            [53, 0, 49, 55, 1, 51, 52, 2, 48]
        );
        // 50's forward edge met 52 (sent by 54's bubble) and stopped.
        assert_eq!(order.bubbles[0].up, None);
        assert_eq!(take(&mut order, &mut done, 3), [56, 3, 47]);
        // Same for 54's backward edge at 51: both only grow outwards now.
        assert_eq!(order.bubbles[1].down, None);
        // Free pages are skipped, not a wall: 54's forward edge jumps them.
        let next = take(&mut order, &mut done, 9);
        assert_eq!(next, [57, 4, 46, 58, 5, 45, 59, 6, 44]);
        assert_eq!(take(&mut order, &mut done, 1), [70]);
        // The sweep never stalls: it skips pages the bubbles sent.
        drain(&mut order, &mut done);
        assert!(done.iter().all(|&d| d));
        assert_eq!(order.bubble_pages() + order.linear_pages(), 100 - 10 - 2);
    }

    #[test]
    fn tiny_ram_and_faults_at_the_edges() {
        for strategy in ALL {
            for pages in 1..=3 {
                let last = pages - 1;
                // Faults at 0 and/or the last page, after any number of pushes.
                for plan in 0..16 {
                    for at0 in 0..=pages {
                        for at_last in 0..=pages {
                            let mut done = vec![false; pages];
                            let mut count = vec![0; pages];
                            let mut order = PushOrder::new(strategy, pages);
                            let mut step = 0;
                            loop {
                                let faults = [(at0, 0), (at_last, last)];
                                for (when, page) in faults {
                                    if when == step
                                        && plan & (1 << (page.min(1))) != 0
                                        && !done[page]
                                    {
                                        done[page] = true;
                                        count[page] += 1;
                                        order.on_fault(page);
                                        // A repeated fault report is ignored.
                                        if plan & 4 != 0 {
                                            order.on_fault(page);
                                        }
                                    }
                                }
                                if plan & 8 != 0 {
                                    order.on_fault(pages); // out of range: ignored
                                }
                                match order.next(|p| done[p]) {
                                    Some(p) => {
                                        assert!(!done[p]);
                                        done[p] = true;
                                        count[p] += 1;
                                    }
                                    None => break,
                                }
                                step += 1;
                            }
                            assert!(
                                count.iter().all(|&c| c == 1),
                                "{strategy} {pages} {count:?}"
                            );
                            assert_eq!(order.next(|_| false), None);
                        }
                    }
                }
            }
            let mut empty = PushOrder::new(strategy, 0);
            empty.on_fault(0);
            assert_eq!(empty.next(|_| false), None);
        }
    }

    #[test]
    fn a_big_ram_is_fast() {
        for strategy in ALL {
            let (order, micros) = simulate(strategy, 1 << 20, 5000, 42);
            println!(
                "prepaging {strategy:>14}: 2^20 pages, 5000 faults: {:>7.1} ms \
                 ({} bubble pages, {} linear)",
                micros as f64 / 1000.0,
                order.bubble_pages(),
                order.linear_pages()
            );
        }
    }

    /// The quadratic trap: most of RAM already done (a hybrid migration
    /// after its pre-copy round) and faults walking down just below it, so
    /// every new bubble edge faces the same long run of done pages.
    #[test]
    fn long_done_runs_are_jumped_not_walked() {
        let pages = 1 << 20;
        let tail = 8192;
        for strategy in ALL {
            let mut done = vec![false; pages];
            done[tail..].iter_mut().for_each(|d| *d = true);
            done[pages / 2] = false; // one dirty page far away
            let mut order = PushOrder::new(strategy, pages);
            let start = Instant::now();
            let mut produced = 0usize;
            let mut next_fault = tail - 1;
            loop {
                if produced.is_multiple_of(2) && next_fault > 0 && !done[next_fault] {
                    fault(&mut order, &mut done, next_fault);
                    next_fault -= 2;
                }
                match order.next(|p| done[p]) {
                    Some(p) => {
                        assert!(!done[p]);
                        done[p] = true;
                        produced += 1;
                    }
                    None => break,
                }
            }
            assert!(done.iter().all(|&d| d));
            println!(
                "prepaging {strategy:>14}: 2^20 pages, {} done, faults below them: {:>7.1} ms",
                pages - tail - 1,
                start.elapsed().as_secs_f64() * 1000.0
            );
        }
    }
}

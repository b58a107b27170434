//! Pre-copy auto-converge: how hard to throttle the vCPUs when the guest
//! dirties memory faster than the rounds can send it.
//!
//! A round that ends with more left than fits the downtime limit says the
//! guest outruns the link. The engine then samples the dirty log for
//! [`SAMPLE`] (the pages dirtied in so short a time measure the dirty rate
//! before the working set saturates the count, unlike a whole round's) and
//! sets the throttle so that, at the throttled rate, what the next round
//! leaves behind fits the limit. Each further round that does not fit
//! halves the time the vCPUs still run, so the throttle climbs to
//! [`MAX_THROTTLE`] in a few rounds even where the sample undercounts.
//! QEMU's `auto-converge` starts at 20% and adds 10% per round; starting
//! from a measured rate gets there in one or two rounds instead of eight.

use std::time::Duration;

/// The strongest throttle, per mille of vCPU time asleep.
pub const MAX_THROTTLE: u32 = 990;

/// The weakest throttle once one is needed, per mille.
pub const FIRST_THROTTLE: u32 = 200;

/// How long the dirty log is sampled to measure the dirty rate.
pub const SAMPLE: Duration = Duration::from_millis(10);

/// What the engine knows at the end of a round that did not fit.
#[derive(Clone, Copy, Debug)]
pub struct RoundEnd {
    /// Pages the round left to send.
    pub left_pages: u64,
    /// Pages dirtied during the sample.
    pub sample_pages: u64,
    /// The sample's length, seconds.
    pub sample_secs: f64,
    /// What the link carries, pages per second.
    pub link_pages_per_s: f64,
    /// The downtime limit, seconds.
    pub limit_secs: f64,
}

/// The throttle (per mille) for the next round, from the one in force.
/// Never lower than `current` (a round that did not fit is no reason to
/// run the guest faster), at least [`FIRST_THROTTLE`], at most
/// [`MAX_THROTTLE`].
pub fn next_throttle(current: u32, r: &RoundEnd) -> u32 {
    let current = current.min(MAX_THROTTLE);
    let run_now = 1.0 - current as f64 / 1000.0;
    // The guest's dirty rate with no throttle, pages per second.
    let rate = r.sample_pages as f64 / r.sample_secs.max(1e-6) / run_now;
    let link = r.link_pages_per_s.max(1.0);
    let next_round_secs = r.left_pages as f64 / link;
    let fit_pages = link * r.limit_secs;
    let dirtied_unthrottled = rate * next_round_secs;
    let needed = if dirtied_unthrottled <= fit_pages {
        0.0
    } else {
        1.0 - fit_pages / dirtied_unthrottled
    };
    let needed = (needed * 1000.0).ceil() as u32;
    let escalated = if current == 0 {
        FIRST_THROTTLE
    } else {
        1000 - (1000 - current) / 2
    };
    needed.max(escalated).clamp(FIRST_THROTTLE, MAX_THROTTLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(left: u64, sample: u64) -> RoundEnd {
        RoundEnd {
            left_pages: left,
            sample_pages: sample,
            sample_secs: 0.01,
            link_pages_per_s: 30_000.0,
            limit_secs: 0.3,
        }
    }

    #[test]
    fn a_fast_writer_is_throttled_hard_at_once() {
        // 1.6 M pages/s over a 16 K-page working set: the 10 ms sample
        // counts 16 K pages (saturated), still a rate of 1.6 M/s.
        let t = next_throttle(0, &round(16_384, 16_000));
        assert!(t >= 970, "{t}");
        assert!(t <= MAX_THROTTLE);
    }

    #[test]
    fn a_slow_writer_gets_the_first_step_only() {
        // 100 pages in 10 ms = 10 K pages/s; the next round of 12 K pages
        // takes 0.4 s and leaves 4 K unthrottled, under the 9 K that fit.
        assert_eq!(next_throttle(0, &round(12_000, 100)), FIRST_THROTTLE);
    }

    #[test]
    fn each_round_that_does_not_fit_halves_the_running_time() {
        let quiet = round(12_000, 0);
        let mut t = 0;
        let mut seen = Vec::new();
        for _ in 0..8 {
            t = next_throttle(t, &quiet);
            seen.push(t);
        }
        assert_eq!(seen[..5], [200, 600, 800, 900, 950]);
        assert_eq!(*seen.last().unwrap(), MAX_THROTTLE);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn the_throttle_never_drops_and_never_passes_the_cap() {
        let t = next_throttle(2000, &round(100, 0));
        assert_eq!(t, MAX_THROTTLE);
        assert!(next_throttle(700, &round(100, 0)) >= 700);
        // A zero-length sample cannot make the rate infinite.
        let r = RoundEnd {
            sample_secs: 0.0,
            ..round(16_384, 10)
        };
        assert_eq!(next_throttle(0, &r), MAX_THROTTLE);
    }
}

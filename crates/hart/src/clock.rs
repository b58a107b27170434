//! The guest timebase: a 10 MHz counter driven by the host's monotonic
//! clock, so a step of the host's wall clock (NTP, an operator) never moves
//! guest time.
//!
//! Guest time continues across a snapshot or a migration: the saved
//! [`ClockState`] holds the guest time and the host *wall* clock at the
//! moment it was taken (the one clock two hosts share), and
//! [`GuestClock::resume`] starts the new host's clock from the saved guest
//! time plus the wall-clock time that passed since. A paused VM therefore
//! sees its pause as a jump of its clock, which is how the guest measures
//! downtime from the inside; it never sees time go backwards.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// Ticks per second of the guest `time` CSR (as QEMU `virt`).
pub const TIMEBASE_HZ: u64 = 10_000_000;
const NS_PER_TICK: u64 = 1_000_000_000 / TIMEBASE_HZ;

/// Guest time = host `CLOCK_MONOTONIC` + a fixed offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestClock {
    /// Guest nanoseconds minus host monotonic nanoseconds.
    offset_ns: i128,
}

/// What a saved VM remembers of its clock.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClockState {
    /// Guest time when the state was taken, in nanoseconds.
    pub guest_ns: u64,
    /// The host's wall clock at that moment (Unix nanoseconds).
    pub host_unix_ns: u64,
}

/// Host `CLOCK_MONOTONIC` in nanoseconds.
fn mono_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill in.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Host wall clock in Unix nanoseconds (0 before 1970: not worth a panic).
fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl GuestClock {
    /// A clock that reads zero now.
    pub fn starting_now() -> Self {
        GuestClock {
            offset_ns: -mono_ns(),
        }
    }

    /// A clock that reads `guest_ns` now.
    pub fn reading(guest_ns: u64) -> Self {
        GuestClock {
            offset_ns: guest_ns as i128 - mono_ns(),
        }
    }

    /// Guest nanoseconds now.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        (mono_ns() + self.offset_ns).clamp(0, u64::MAX as i128) as u64
    }

    /// Current guest time in timebase ticks.
    #[inline]
    pub fn ticks(&self) -> u64 {
        self.now_ns() / NS_PER_TICK
    }

    /// Host nanoseconds until the guest clock reaches `ticks` (0 if passed).
    pub fn ns_until(&self, ticks: u64) -> u64 {
        let target = ticks as i128 * NS_PER_TICK as i128 - self.offset_ns;
        (target - mono_ns()).clamp(0, u64::MAX as i128) as u64
    }

    /// The clock's state now, for a snapshot or a migration.
    pub fn save(&self) -> ClockState {
        ClockState {
            guest_ns: self.now_ns(),
            host_unix_ns: unix_ns(),
        }
    }

    /// The clock of a VM resumed from `state`: the saved guest time plus
    /// the wall-clock time since it was saved (never less than the saved
    /// time, whatever this host's wall clock says).
    pub fn resume(state: &ClockState) -> Self {
        let passed = unix_ns().saturating_sub(state.host_unix_ns);
        GuestClock::reading(state.guest_ns.saturating_add(passed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_continues_from_the_saved_time() {
        let c = GuestClock::reading(5_000_000_000);
        let s = c.save();
        assert!(s.guest_ns >= 5_000_000_000);
        let r = GuestClock::resume(&s);
        assert!(r.now_ns() >= s.guest_ns);
        // A state from the future (the other host's wall clock runs ahead)
        // never makes the clock go back.
        let ahead = ClockState {
            guest_ns: 7_000_000_000,
            host_unix_ns: unix_ns() + 60_000_000_000,
        };
        assert!(GuestClock::resume(&ahead).now_ns() >= 7_000_000_000);
    }

    #[test]
    fn deadlines() {
        let c = GuestClock::reading(0);
        assert_eq!(c.ns_until(0), 0);
        let ns = c.ns_until(TIMEBASE_HZ);
        assert!(ns > 900_000_000 && ns <= 1_000_000_000);
    }
}

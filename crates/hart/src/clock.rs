//! The guest timebase: a 10 MHz counter that follows the host's wall clock.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// Ticks per second of the guest `time` CSR (as QEMU `virt`).
pub const TIMEBASE_HZ: u64 = 10_000_000;

/// Guest time = host wall clock + a fixed offset. Because the offset (not a
/// tick count) is what is saved, a VM restored or migrated after a pause of
/// N ms sees its clock jump by N ms: that gap is how the guest measures
/// downtime from the inside.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GuestClock {
    /// Guest nanoseconds minus host wall-clock nanoseconds.
    pub offset_ns: i128,
}

fn host_ns() -> i128 {
    // A host clock before 1970 is not a case worth a panic: read it as 0.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

impl GuestClock {
    /// A clock that reads zero now.
    pub fn starting_now() -> Self {
        GuestClock {
            offset_ns: -host_ns(),
        }
    }

    /// Current guest time in timebase ticks.
    #[inline]
    pub fn ticks(&self) -> u64 {
        let ns = host_ns() + self.offset_ns;
        (ns.max(0) / (1_000_000_000 / TIMEBASE_HZ as i128)) as u64
    }

    /// Host nanoseconds until the guest clock reaches `ticks` (0 if passed).
    pub fn ns_until(&self, ticks: u64) -> u64 {
        let target = ticks as i128 * (1_000_000_000 / TIMEBASE_HZ as i128) - self.offset_ns;
        (target - host_ns()).clamp(0, u64::MAX as i128) as u64
    }
}

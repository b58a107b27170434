//! What the balloon remembers across a snapshot or a migration.

use super::BalloonFeatures;
use serde::{Deserialize, Serialize};

/// The guest's latest memory statistics (`None`: the guest never sent that
/// tag). Byte counts are bytes, as the guest reports them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct BalloonStats {
    /// Bytes swapped in (tag 0).
    pub swap_in: Option<u64>,
    /// Bytes swapped out (tag 1).
    pub swap_out: Option<u64>,
    /// Major page faults (tag 2).
    pub major_faults: Option<u64>,
    /// Minor page faults (tag 3).
    pub minor_faults: Option<u64>,
    /// Free memory in bytes (tag 4).
    pub free_memory: Option<u64>,
    /// Total memory in bytes (tag 5).
    pub total_memory: Option<u64>,
    /// Available memory in bytes, as `MemAvailable` (tag 6).
    pub available_memory: Option<u64>,
    /// Page cache bytes (tag 7).
    pub disk_caches: Option<u64>,
    /// Hugetlb allocations (tag 8).
    pub hugetlb_allocations: Option<u64>,
    /// Hugetlb allocation failures (tag 9).
    pub hugetlb_failures: Option<u64>,
    /// How many stats buffers the guest has sent so far: compare before and
    /// after [`Balloon::request_stats`] to know fresh numbers arrived.
    pub updates: u64,
}

impl BalloonStats {
    pub(super) fn set(&mut self, tag: u16, val: u64) {
        let slot = match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            _ => return,
        };
        *slot = Some(val);
    }
}

/// Where a free page hinting run stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HintPhase {
    /// No run yet (or the driver reset the device).
    Idle,
    /// The host published a command ID; the guest has not answered yet.
    Requested,
    /// The guest echoed the command ID and is sending free blocks.
    Running,
    /// The guest sent STOP: it has hinted everything it could.
    Stopped,
    /// The host said DONE: the guest got its hinted pages back.
    Done,
}

/// Free page hinting progress, from [`Balloon::hint_status`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct HintStatus {
    /// Phase of the current (or last) run.
    pub phase: HintPhase,
    /// Command ID of the current run (0 before the first).
    pub cmd_id: u32,
    /// Free blocks hinted in the current run.
    pub blocks: u64,
    /// 4 KiB pages marked free in the current run.
    pub pages: u64,
    /// 4 KiB pages marked free over all runs.
    pub pages_total: u64,
}

/// Free page reporting counters, from [`Balloon::reporting_status`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportingStatus {
    /// Report requests (buffers) the guest sent.
    pub requests: u64,
    /// 4 KiB pages discarded and marked free, in total.
    pub pages_total: u64,
    /// 4 KiB pages reported but kept because the guest expects a non-zero
    /// poison value in free pages.
    pub pages_kept: u64,
}

/// The saved state of a [`Balloon`] (the transport saves the queues).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BalloonState {
    /// Features offered.
    pub offered: BalloonFeatures,
    /// Features the driver accepted (0 until `DRIVER_OK`).
    pub acked_features: u64,
    /// Config: the host's target, in 4 KiB pages.
    pub num_pages: u32,
    /// Config: pages the guest says are in the balloon.
    pub actual: u32,
    /// Config: free page hint command ID.
    pub free_page_hint_cmd_id: u32,
    /// Config: the value the guest expects in free pages.
    pub poison_val: u32,
    /// First guest-physical address of RAM the state was taken with.
    pub ram_base: u64,
    /// Number of 4 KiB RAM pages the state was taken with.
    pub ram_pages: u64,
    /// Inflated pages as runs `(first page index from RAM base, count)`.
    pub inflated: Vec<(u64, u64)>,
    /// Latest guest statistics.
    pub stats: BalloonStats,
    /// Head of the stats buffer the device holds, if any.
    pub stats_buffer: Option<u16>,
    /// The host asked for fresh stats and has not got them yet.
    pub stats_requested: bool,
    /// Hinting progress.
    pub hint: HintStatus,
    /// Command ID the next hinting run gets.
    pub next_cmd_id: u32,
    /// Reporting counters.
    pub reporting: ReportingStatus,
    /// Reported pages not yet returned by [`Balloon::take_reported_pages`].
    pub reported_unread: u64,
    /// The host changed the config and the guest has not been told yet.
    pub config_pending: bool,
}

//! Live counters of a running migration and its final report.

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Where a migration stands (`query-migrate`'s `status`, QEMU's names).
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    #[default]
    None,
    Setup,
    Active,
    Device,
    PostcopyActive,
    /// Post-copy with its link lost: waiting for `migrate --resume`.
    PostcopyPaused,
    /// Reconnecting a paused post-copy.
    PostcopyRecover,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    const ALL: [Status; 10] = [
        Status::None,
        Status::Setup,
        Status::Active,
        Status::Device,
        Status::PostcopyActive,
        Status::PostcopyPaused,
        Status::PostcopyRecover,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
    ];

    /// The wire name (`"postcopy-active"`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::None => "none",
            Status::Setup => "setup",
            Status::Active => "active",
            Status::Device => "device",
            Status::PostcopyActive => "postcopy-active",
            Status::PostcopyPaused => "postcopy-paused",
            Status::PostcopyRecover => "postcopy-recover",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether the migration has ended (one way or another).
    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

/// Counters shared between the migration threads and whoever watches them
/// (the control socket's `query-migrate`), plus the two requests a user can
/// make while it runs.
pub struct Progress {
    status: AtomicU8,
    pub started: Instant,
    pub pages_total: AtomicU64,
    pub pages_precopy: AtomicU64,
    pub pages_stop_copy: AtomicU64,
    pub pages_pushed: AtomicU64,
    pub pages_demand: AtomicU64,
    pub pages_zero: AtomicU64,
    pub pages_free_skipped: AtomicU64,
    pub pages_remaining: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub rounds: AtomicU64,
    pub dirty_last_round: AtomicU64,
    /// Set by `migrate-cancel` ([`Progress::request_cancel`]).
    pub cancel: AtomicBool,
    /// Past the commit point (`Go` sent): only the destination may run the
    /// VM now, and a cancel is refused. Taken with `cancel` under this lock.
    committed: Mutex<bool>,
    /// Set by `migrate-start-postcopy`.
    pub start_postcopy: AtomicBool,
    /// Set by `migrate --resume`: where to reconnect a paused post-copy.
    pub resume_to: Mutex<Option<String>>,
    /// Post-copy links re-established after a failure.
    pub recoveries: AtomicU64,
    /// A post-copy with failover: a lost destination ends with the VM
    /// running here again (a paused post-copy is then not for good).
    pub failover_armed: AtomicBool,
    error: Mutex<Option<String>>,
    /// Called with every new status (the VMM turns it into a QMP
    /// `MIGRATION` event).
    on_status: Mutex<Option<StatusHook>>,
}

/// A cancel refused: the migration passed its commit point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed;

/// What [`Progress::set_on_status`] takes.
pub type StatusHook = Box<dyn Fn(Status) + Send>;

impl Progress {
    pub fn new() -> Progress {
        Progress {
            status: AtomicU8::new(Status::Setup as u8),
            started: Instant::now(),
            pages_total: AtomicU64::new(0),
            pages_precopy: AtomicU64::new(0),
            pages_stop_copy: AtomicU64::new(0),
            pages_pushed: AtomicU64::new(0),
            pages_demand: AtomicU64::new(0),
            pages_zero: AtomicU64::new(0),
            pages_free_skipped: AtomicU64::new(0),
            pages_remaining: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            rounds: AtomicU64::new(0),
            dirty_last_round: AtomicU64::new(0),
            cancel: AtomicBool::new(false),
            committed: Mutex::new(false),
            start_postcopy: AtomicBool::new(false),
            resume_to: Mutex::new(None),
            recoveries: AtomicU64::new(0),
            failover_armed: AtomicBool::new(false),
            error: Mutex::new(None),
            on_status: Mutex::new(None),
        }
    }

    /// `migrate-cancel`: stops the migration at its next step, unless it
    /// has passed its commit point (then `Err`, and nothing changes).
    pub fn request_cancel(&self) -> Result<(), Committed> {
        let c = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        if *c {
            return Err(Committed);
        }
        self.cancel.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The commit point: `false` if a cancel came first (the migration
    /// must stop), else from now on cancels are refused.
    pub fn commit(&self) -> bool {
        let mut c = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        if self.cancel.load(Ordering::SeqCst) {
            return false;
        }
        *c = true;
        true
    }

    /// Whether the migration passed its commit point.
    pub fn is_committed(&self) -> bool {
        *self.committed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `f` with every status the migration enters from now on.
    pub fn set_on_status(&self, f: StatusHook) {
        *self.on_status.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    pub fn status(&self) -> Status {
        let v = self.status.load(Ordering::Acquire);
        Status::ALL
            .into_iter()
            .find(|s| *s as u8 == v)
            .unwrap_or(Status::Failed)
    }

    pub fn set_status(&self, s: Status) {
        let old = self.status.swap(s as u8, Ordering::AcqRel);
        if old != s as u8 {
            if let Some(f) = self
                .on_status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                f(s);
            }
        }
    }

    /// Records why the migration failed.
    pub fn fail(&self, why: String) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        self.set_status(Status::Failed);
    }

    /// Records a problem without ending the migration (a paused post-copy).
    pub fn note_error(&self, why: String) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The live counters as JSON (`query-migrate` while running).
    pub fn snapshot(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "status": self.status().as_str(),
            "elapsed_ms": self.started.elapsed().as_millis() as u64,
            "pages_total": g(&self.pages_total),
            "pages_precopy": g(&self.pages_precopy),
            "pages_stop_copy": g(&self.pages_stop_copy),
            "pages_pushed": g(&self.pages_pushed),
            "pages_demand": g(&self.pages_demand),
            "pages_zero": g(&self.pages_zero),
            "pages_free_skipped": g(&self.pages_free_skipped),
            "pages_remaining": g(&self.pages_remaining),
            "bytes_sent": g(&self.bytes_sent),
            "rounds": g(&self.rounds),
            "dirty_pages_last_round": g(&self.dirty_last_round),
            "recoveries": g(&self.recoveries),
            "failover_armed": self.failover_armed.load(Ordering::Relaxed),
            "error": self.error(),
        })
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

/// One change of the auto-converge throttle.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ThrottleStep {
    /// The pre-copy round it applies to.
    pub round: u32,
    pub permille: u32,
    /// Pages the guest dirtied in the dirty-rate sample.
    pub sample_pages: u64,
    /// Pages the round before left to send.
    pub left_pages: u64,
    /// How long the round before took, ms.
    pub after_round_ms: f64,
}

/// The engine's part of "what every migration reports" (DESIGN.md). The
/// VMM adds what the guest saw (heartbeats) before printing it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub mode: String,
    pub prepaging: String,
    pub status: String,
    pub ram_bytes: u64,
    pub pages_total: u64,
    /// Pages that were not free when the migration started.
    pub nonfree_pages: u64,
    /// Start of `migrate` to the last page at the destination.
    pub total_ms: f64,
    /// Source pause to destination resume (host wall clocks; both VMMs run
    /// on one machine in our testbed).
    pub downtime_ms: f64,
    /// How long the source vCPU took to stop.
    pub pause_latency_us: u64,
    /// Unix time (ns) of the source pause and of the destination resume.
    pub paused_unix_ns: u128,
    pub resumed_unix_ns: u128,
    pub rounds: u64,
    pub pages_precopy: u64,
    pub pages_stop_copy: u64,
    pub pages_pushed: u64,
    pub pages_demand: u64,
    pub pages_zero: u64,
    pub pages_free_skipped: u64,
    /// Pages that crossed the wire more than once in post-copy (pre-copy
    /// resends dirty pages by design and does not count here).
    pub duplicate_pages: u64,
    pub state_bytes: u64,
    pub bytes_sent: u64,
    /// Pages the destination fetched on demand (guest touched a page that
    /// was not there yet and the request went to the source).
    pub network_faults: u64,
    /// Faults on pages the destination resolved locally (free or already
    /// present) without the network.
    pub local_faults: u64,
    /// Demand requests answered by a pushed page that crossed in flight.
    pub faults_served_by_push: u64,
    /// Demand requests the destination made while it had no link to the
    /// source (0 unless the link broke): they wait for the reconnection.
    pub demands_deferred: u64,
    pub fault_latency_us_p50: f64,
    pub fault_latency_us_p99: f64,
    pub fault_latency_us_max: f64,
    /// Where a network fault's time goes ([`fault_breakdown`]).
    pub fault_breakdown: serde_json::Value,
    /// Pages the destination requested that the source had pushed already
    /// (they were crossing; the source sent no reply).
    pub demands_in_flight: u64,
    /// The source's time per demand request answered, µs (for
    /// `fault_breakdown`; not in the JSON).
    #[serde(skip)]
    pub demand_service_us: Vec<f64>,
    /// Pushed pages the guest wrote at the destination after they arrived
    /// without faulting: the push was ahead of the guest.
    pub prepaging_hits: u64,
    /// Pages the guest wrote at the destination during post-copy.
    pub pages_written_during_postcopy: u64,
    /// Free page hints the guest gave at migration start.
    pub free_page_hints: bool,
    /// Pre-copy auto-converge was asked for.
    pub auto_converge: bool,
    /// The strongest vCPU throttle it set, per mille (0: none).
    pub throttle_max_permille: u32,
    /// The compression of the bulk page transfer (`none`, `lz4`, `zstd`).
    pub compress: String,
    /// Page-batch bytes it was given and what went on the wire for them
    /// (both 0 without compression).
    pub compress_plain_bytes: u64,
    pub compress_wire_bytes: u64,
    /// Source CPU time spent compressing, ms (summed over the channels'
    /// threads).
    pub compress_ms: f64,
    /// Connections the bulk transfer was spread over (`Params::channels`).
    pub channels: u32,
    /// Time the vCPUs slept for the throttle, summed over vCPUs, ms: the
    /// guest's CPU time lost to auto-converge.
    pub throttled_vcpu_ms: f64,
    /// Each throttle change.
    pub throttle_steps: Vec<ThrottleStep>,
    pub max_bandwidth: u64,
    /// "TLS" or "plain TCP".
    pub security: String,
    /// Post-copy links lost and re-established.
    pub recoveries: u64,
    /// Post-copy: pages the vCPUs used last (and their page tables), sent
    /// before the rest.
    pub pages_hot_first: u64,
    /// Post-copy: the vCPUs' pages sent while the VM still ran, before the
    /// pause (counted in `pages_precopy` too).
    pub pages_hot_ahead: u64,
    /// Post-copy: how long sending them took, until the link had carried
    /// them (the VM ran meanwhile), ms.
    pub hot_ahead_ms: f64,
    /// Frames that reached the source's NICs after the pause, handed to
    /// the destination before `Go`.
    pub frames_forwarded: u64,
    /// Post-copy with failover: the source's side of the checkpoints.
    pub failover: Failover,
    pub error: Option<String>,
    /// Everything the destination reported (its engine figures and what its
    /// VMM saw of the guest), as it sent it.
    pub destination: serde_json::Value,
}

/// A post-copy protected by checkpoints, as the source saw it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Failover {
    /// Protection was on (`failover_ms` > 0).
    pub armed: bool,
    /// The timeout and the destination's checkpoint interval, ms.
    pub timeout_ms: u64,
    pub checkpoint_interval_ms: u64,
    /// Complete checkpoints received, their pages and bytes on the wire.
    pub checkpoints: u64,
    pub checkpoint_pages: u64,
    pub checkpoint_bytes: u64,
    /// The destination was lost and the VM runs here again.
    pub failed_over: bool,
    /// The checkpoint it resumed from (0: the state of the switch itself).
    pub resumed_from_checkpoint: u64,
    /// Disk writes of confirmed checkpoints the source made on the images
    /// itself before resuming (the destination may not have made them).
    pub disk_writes_replayed: u64,
    /// From the last word of the destination to the VM running here, ms.
    pub failover_ms: f64,
}

/// The `q`-quantile (0 ≤ q ≤ 1) of the sorted values `sorted`, by nearest
/// rank: the smallest value with at least `q` of the values at or below it
/// (p99 of 100 values is the 99th). NaN for no values. Every figure Godwit
/// prints as p50/p99 (engine reports, benchmarks) comes from here.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latency percentiles of `v` (µs): p50, p99, max.
pub fn latency_summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    (
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.last().copied().unwrap_or(0.0),
    )
}

/// One network fault's way through the destination, µs: from the fault
/// read off userfaultfd to the demand request written to the socket
/// (`request`), from there to the page's arrival (`wait`: both wire
/// crossings and the source's service, or the push stream's backlog when
/// the page was already on its way), and from the arrival to the end of
/// `UFFDIO_COPY`, which wakes the vCPU (`install`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultSample {
    /// The page came on the push stream (sent before the request got
    /// there), not as the demand reply.
    pub via_push: bool,
    pub request_us: f64,
    pub wait_us: f64,
    pub install_us: f64,
    /// When the fault was read, counted from the resume (`None` when
    /// unknown).
    pub since_resume_us: Option<f64>,
}

/// The window after the resume that `fault_breakdown`'s `after_resume`
/// describes, µs.
pub const AFTER_RESUME_US: f64 = 50_000.0;

/// The report's `fault_breakdown`: p50, p99 and max of each step of
/// [`FaultSample`] and of their sum, separately for faults answered by the
/// demand reply and by the push; `source_service_us` is the source's time
/// from a request read to its reply written (its own clock: only
/// durations cross between hosts).
pub fn fault_breakdown(samples: &[FaultSample], source_service_us: &[f64]) -> serde_json::Value {
    let stat = |v: Vec<f64>| {
        let n = v.len();
        let (p50, p99, max) = latency_summary(v);
        serde_json::json!({ "count": n, "p50": p50, "p99": p99, "max": max })
    };
    let group = |push: bool| {
        let s: Vec<&FaultSample> = samples.iter().filter(|f| f.via_push == push).collect();
        serde_json::json!({
            "faults": s.len(),
            "request_us": stat(s.iter().map(|f| f.request_us).collect()),
            "wait_us": stat(s.iter().map(|f| f.wait_us).collect()),
            "install_us": stat(s.iter().map(|f| f.install_us).collect()),
            "total_us": stat(s.iter().map(|f| f.request_us + f.wait_us + f.install_us).collect()),
        })
    };
    // The start of post-copy, where the guest's downtime is made: how many
    // faults, how long they held their vCPUs, and the first ones in order.
    let mut early: Vec<&FaultSample> = samples
        .iter()
        .filter(|f| f.since_resume_us.is_some_and(|t| t < AFTER_RESUME_US))
        .collect();
    early.sort_by(|a, b| {
        a.since_resume_us
            .unwrap_or(0.0)
            .total_cmp(&b.since_resume_us.unwrap_or(0.0))
    });
    let total = |f: &FaultSample| f.request_us + f.wait_us + f.install_us;
    serde_json::json!({
        "by_reply": group(false),
        "by_push": group(true),
        "source_service_us": stat(source_service_us.to_vec()),
        "after_resume": {
            "window_us": AFTER_RESUME_US,
            "faults": early.len(),
            "blocked_us": early.iter().map(|f| total(f)).sum::<f64>(),
            "first": early.iter().take(20).map(|f| serde_json::json!([f.since_resume_us, total(f)])).collect::<Vec<_>>(),
        },
    })
}

#[cfg(test)]
mod breakdown_tests {
    use super::*;

    #[test]
    fn the_breakdown_splits_reply_and_push_and_sums_the_steps() {
        let f = |via_push, r, w, i| FaultSample {
            via_push,
            request_us: r,
            wait_us: w,
            install_us: i,
            since_resume_us: Some(r * 1000.0),
        };
        let samples = [
            f(false, 1.0, 100.0, 5.0),
            f(false, 3.0, 300.0, 7.0),
            f(true, 2.0, 900.0, 4.0),
        ];
        let b = fault_breakdown(&samples, &[10.0, 20.0, 30.0]);
        assert_eq!(b["by_reply"]["faults"], 2);
        assert_eq!(b["by_push"]["faults"], 1);
        assert_eq!(b["by_reply"]["wait_us"]["p50"], 100.0);
        assert_eq!(b["by_reply"]["wait_us"]["max"], 300.0);
        assert_eq!(b["by_reply"]["total_us"]["p99"], 310.0);
        assert_eq!(b["by_push"]["total_us"]["p50"], 906.0);
        assert_eq!(b["source_service_us"]["p50"], 20.0);
        assert_eq!(b["source_service_us"]["count"], 3);
        // Faults at 1, 3 and 2 ms after the resume, listed in that order.
        let a = &b["after_resume"];
        assert_eq!(a["faults"], 3);
        assert_eq!(a["blocked_us"], 106.0 + 310.0 + 906.0);
        assert_eq!(a["first"][0][0], 1000.0);
        assert_eq!(a["first"][1][0], 2000.0);
        assert_eq!(a["first"][2][1], 310.0);
        let none = fault_breakdown(&[], &[]);
        assert_eq!(none["by_push"]["faults"], 0);
        assert_eq!(none["by_push"]["total_us"]["p50"], 0.0);
    }
}

#[cfg(test)]
mod cancel_tests {
    use super::*;

    #[test]
    fn a_cancel_and_the_commit_point_exclude_each_other() {
        let p = Progress::new();
        assert!(p.request_cancel().is_ok());
        assert!(!p.commit(), "cancelled before the commit point");
        assert!(!p.is_committed());
        let p = Progress::new();
        assert!(p.commit());
        assert_eq!(p.request_cancel(), Err(Committed));
        assert!(
            !p.cancel.load(Ordering::SeqCst),
            "a refused cancel changes nothing"
        );
    }
}

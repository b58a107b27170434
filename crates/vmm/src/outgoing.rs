//! The source side of a migration: the running VM as the engine's
//! [`SourceVm`], the migration thread, and the final report (the engine's
//! figures plus what both VMMs saw of the guest).

use crate::console::{self, Heartbeats};
use crate::control::EventSender;
use anyhow::{anyhow, Result};
use godwit_devices::{Block, HeldWrite};
use godwit_machine::VmHandle;
use godwit_memory::GuestRam;
use godwit_migration::wire::{DiskOp, DiskWrite};
use godwit_migration::{source, Mode, Params, Progress, SourceVm, Status};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The running VM, for the engine.
pub struct VmSource {
    vm: VmHandle,
}

impl VmSource {
    /// The engine's view of `vm`.
    pub fn new(vm: VmHandle) -> VmSource {
        VmSource { vm }
    }
}

fn gone(e: godwit_machine::VmGone) -> anyhow::Error {
    anyhow!(e)
}

impl SourceVm for VmSource {
    fn ram(&self) -> Arc<GuestRam> {
        self.vm.ram()
    }
    fn board(&self) -> String {
        self.vm.board().to_json()
    }
    /// Pauses the VM (vCPUs stopped, devices drained), then flushes its
    /// disks and lets go of their images, which the destination opens
    /// when the state arrives (shared storage).
    fn pause(&self) -> Result<Duration> {
        let took = self.vm.pause().map_err(gone)?;
        if let Err(e) = self.vm.release_disks() {
            let _ = self.vm.resume();
            return Err(anyhow!(e).context("cannot hand the disks over"));
        }
        Ok(took)
    }
    /// The migration failed before the destination ran the VM: takes the
    /// disks back, then resumes; its NICs announce it here again (the
    /// destination may have announced it there already).
    fn resume(&self) -> Result<()> {
        self.vm
            .reacquire_disks()
            .map_err(|e| anyhow!(e).context("cannot take the disks back; the VM stays paused"))?;
        self.vm.resume().map_err(gone)?;
        crate::netdev::announce_once(&self.vm, true);
        Ok(())
    }
    fn resume_with_disk_writes(&self, writes: &[DiskWrite]) -> Result<()> {
        self.vm
            .reacquire_disks()
            .map_err(|e| anyhow!(e).context("cannot take the disks back; the VM stays paused"))?;
        let mut slots: Vec<u16> = writes.iter().map(|w| w.slot).collect();
        slots.sort_unstable();
        slots.dedup();
        for slot in slots {
            let list: Vec<HeldWrite> = writes
                .iter()
                .filter(|w| w.slot == slot)
                .map(|w| match &w.op {
                    DiskOp::Write(data) => HeldWrite::Write {
                        off: w.off,
                        data: data.clone(),
                    },
                    DiskOp::Discard(len) => HeldWrite::Discard {
                        off: w.off,
                        len: *len,
                    },
                })
                .collect();
            match self
                .vm
                .with_device::<Block, _>(usize::from(slot), |b| b.replay(&list))
            {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    return Err(anyhow!(e).context(format!(
                        "cannot make the checkpoints' writes on the disk in slot {slot}; the VM stays paused"
                    )))
                }
                None => anyhow::bail!(
                    "the destination kept disk writes for slot {slot}, which holds no disk here"
                ),
            }
        }
        self.resume()
    }
    fn take_host_frames(&self) -> Result<Vec<(u16, Vec<u8>)>> {
        Ok(crate::netdev::take_frames(&self.vm))
    }
    fn save_state(&self) -> Result<Vec<u8>> {
        Ok(self.vm.save_state().map_err(gone)?.encode())
    }
    fn set_dirty_logging(&self, on: bool) -> Result<()> {
        self.vm.exec(|m| m.set_dirty_logging(on)).map_err(gone)
    }
    fn take_dirty_log(&self) -> Result<Vec<u64>> {
        self.vm.exec(|m| m.take_dirty_log()).map_err(gone)
    }
    fn start_free_page_hints(&self) -> Result<bool> {
        Ok(self
            .vm
            .with_balloon(|b| {
                if !b.free_page_hint_negotiated() {
                    return false;
                }
                b.start_free_page_hint();
                true
            })
            .unwrap_or(false))
    }
    fn set_throttle(&self, permille: u32) -> Result<Duration> {
        self.vm.set_throttle(permille);
        Ok(self.vm.throttled())
    }
    fn hot_pages(&self) -> Result<Vec<usize>> {
        self.vm.exec(|m| m.hot_pages()).map_err(gone)
    }
    /// Loads the destination's last checkpoint into the paused VM, once
    /// this host's guest clock has reached the checkpoint's time (the
    /// guest never sees time go back; the hosts' clocks differ by little).
    fn load_checkpoint(&self, state: &[u8]) -> Result<()> {
        let st = godwit_machine::VmState::decode(state)?;
        let passed = godwit_migration::unix_ns().saturating_sub(u128::from(st.clock.host_unix_ns));
        let target = u128::from(st.clock.guest_ns) + passed;
        let waited = std::time::Instant::now();
        while u128::from(self.vm.clock_ns()) < target {
            let behind = target - u128::from(self.vm.clock_ns());
            if waited.elapsed() > CLOCK_WAIT_LIMIT {
                anyhow::bail!(
                    "this host's guest clock is {:.1} s behind the checkpoint's (the hosts' wall clocks differ)",
                    behind as f64 / 1e9
                );
            }
            std::thread::sleep(Duration::from_nanos(behind.min(10_000_000) as u64));
        }
        self.vm.load_state(&st).map_err(|e| anyhow!(e))
    }
    fn stop_free_page_hints(&self) -> Result<()> {
        // DONE lets the guest reuse its hinted pages: first every vCPU
        // drops its write translations, so those writes clear the free bits.
        self.vm
            .exec(|m| m.flush_write_translations())
            .map_err(gone)?;
        self.vm.with_balloon(|b| b.stop_free_page_hint());
        Ok(())
    }
}

/// Longest the source waits for its guest clock to reach a checkpoint's.
const CLOCK_WAIT_LIMIT: Duration = Duration::from_secs(5);

/// One outgoing migration.
pub struct OutgoingMigration {
    /// Its mode.
    pub mode: Mode,
    /// Live counters and requests (cancel, start post-copy, resume).
    pub progress: Arc<Progress>,
    result: Mutex<Option<Result<Value, String>>>,
}

impl OutgoingMigration {
    /// `query-migrate`: live counters, and the report once it is over.
    pub fn query(&self) -> Value {
        let mut v = self.progress.snapshot();
        let result = self.result.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = result.as_ref() {
            match r {
                Ok(report) => v["report"] = report.clone(),
                Err(e) => v["error"] = json!(e),
            }
        }
        // The status flips to final only once the report is stored.
        if self.progress.status().is_final() && result.is_none() {
            v["status"] = json!("active");
        }
        v
    }

    /// Starts the migration thread for `vm` to `to` (`HOST:PORT`).
    pub fn start(
        vm: &VmHandle,
        beats: &Heartbeats,
        events: EventSender,
        to: String,
        params: Params,
    ) -> Result<Arc<OutgoingMigration>> {
        let security = params.security()?;
        let job = Arc::new(OutgoingMigration {
            mode: params.mode,
            progress: Arc::new(Progress::new()),
            result: Mutex::new(None),
        });
        {
            let events = events.clone();
            job.progress.set_on_status(Box::new(move |s| {
                events.emit("MIGRATION", json!({ "status": s.as_str() }))
            }));
        }
        events.emit("MIGRATION", json!({ "status": "setup" }));
        let src = VmSource::new(vm.clone());
        let beats = beats.clone();
        let j = job.clone();
        std::thread::Builder::new()
            .name("migration".into())
            .spawn(move || {
                let start = godwit_migration::unix_ns();
                let r = source::migrate(&src, &to, &params, &security, &j.progress);
                let result = match r {
                    // A failover ends `Ok` too: the engine marked the
                    // migration failed, the VM runs here again, and the
                    // report says how.
                    Ok(report) => Ok(full_report(report, &beats, start)),
                    Err(e) => {
                        let cancelled = j.progress.cancel.load(std::sync::atomic::Ordering::SeqCst);
                        j.progress.fail(format!("{e:#}"));
                        if cancelled {
                            j.progress.set_status(Status::Cancelled);
                        }
                        eprintln!("godwit: migration to {to} failed: {e:#}; the VM runs on here");
                        Err(format!("{e:#}"))
                    }
                };
                *j.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
            })?;
        Ok(job)
    }
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// The engine's report plus the guest's view from both sides, with the
/// headline guest figures at the top level.
fn full_report(report: godwit_migration::Report, beats: &Heartbeats, start: u128) -> Value {
    let src = console::source_view(beats, start, report.paused_unix_ns);
    let mut v = serde_json::to_value(&report).unwrap_or_else(|_| json!({}));
    let dst = report
        .destination
        .get("guest")
        .cloned()
        .unwrap_or(Value::Null);
    v["throughput_before"] = src["throughput_before"].clone();
    v["throughput_during"] = match (
        num(&src["throughput_during_source"]),
        num(&dst["throughput_during_destination"]),
    ) {
        (Some(a), Some(b)) => json!((a + b) / 2.0),
        (a, b) => json!(a.or(b)),
    };
    v["throughput_after"] = dst["throughput_after"].clone();
    v["throughput_unit"] = src["throughput_unit"].clone();
    v["guest_max_stall_ms"] = dst["max_stall_ms"].clone();
    v["guest_max_stall_before_ms"] = src["max_stall_ms_before"].clone();
    v["guest_bad"] = dst["bad"].clone();
    // Host-side view of the guest's pause: the gap in heartbeats across the
    // switch minus one heartbeat period.
    if let (Some(last), Some(first)) = (num(&src["last_hb_unix_ns"]), num(&dst["first_hb_unix_ns"]))
    {
        let period = num(&src["hb_period_ms"]).unwrap_or(0.0);
        v["guest_downtime_console_ms"] = json!(((first - last) / 1e6 - period).max(0.0));
    }
    v["guest_source"] = src;
    v
}

//! The source side of a migration inside `godwit run`: the VM as the
//! engine's [`SourceVm`], the migration thread, and the final report (the
//! engine's figures plus what both VMMs saw of the guest).

use crate::console::{self, Heartbeats};
use crate::control::CommandError;
use crate::vmctl::VmControl;
use anyhow::{anyhow, Result};
use godwit_machine::VmHandle;
use godwit_memory::GuestRam;
use godwit_migration::{source, Mode, Params, Progress, SourceVm, Status, Strategy};
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The running VM, for the engine.
pub struct VmSource {
    vm: VmHandle,
    ram: Arc<GuestRam>,
    balloon: bool,
}

fn gone(e: godwit_machine::VmGone) -> anyhow::Error {
    anyhow!(e)
}

impl SourceVm for VmSource {
    fn ram(&self) -> Arc<GuestRam> {
        self.ram.clone()
    }
    fn has_balloon(&self) -> bool {
        self.balloon
    }
    fn pause(&self) -> Result<Duration> {
        self.vm.pause().map_err(gone)
    }
    fn resume(&self) -> Result<()> {
        self.vm.resume().map_err(gone)
    }
    fn save_state(&self) -> Result<Vec<u8>> {
        self.vm.exec(|vm| vm.save_state().encode()).map_err(gone)
    }
    fn set_dirty_logging(&self, on: bool) -> Result<()> {
        self.vm
            .exec(move |vm| vm.set_dirty_logging(on))
            .map_err(gone)
    }
    fn take_dirty_log(&self) -> Result<Vec<u64>> {
        self.vm.exec(|vm| vm.take_dirty_log()).map_err(gone)
    }
    fn start_free_page_hints(&self) -> Result<bool> {
        self.vm
            .exec(|vm| {
                let Some(b) = vm.bus.balloon.as_mut() else {
                    return false;
                };
                if !b.device_mut().free_page_hint_negotiated() {
                    return false;
                }
                b.device_mut().start_free_page_hint();
                b.poll();
                true
            })
            .map_err(gone)
    }
    fn hot_pages(&self) -> Result<Vec<usize>> {
        self.vm.exec(|vm| vm.hart.tlb_ram_pages()).map_err(gone)
    }
    fn stop_free_page_hints(&self) -> Result<()> {
        self.vm
            .exec(|vm| {
                if let Some(b) = vm.bus.balloon.as_mut() {
                    b.device_mut().stop_free_page_hint();
                    b.poll();
                }
            })
            .map_err(gone)
    }
}

/// One outgoing migration.
pub struct Job {
    pub mode: Mode,
    pub progress: Arc<Progress>,
    result: Mutex<Option<Result<Value, String>>>,
}

impl Job {
    /// `query-migrate`: live counters, and the report once it is over.
    pub fn query(&self) -> Value {
        let mut v = self.progress.snapshot();
        if let Some(r) = self
            .result
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            match r {
                Ok(report) => v["report"] = report.clone(),
                Err(e) => v["error"] = json!(e),
            }
        }
        // The status flips to final only once the report is stored.
        if self.progress.status().is_final()
            && self
                .result
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none()
        {
            v["status"] = json!("active");
        }
        v
    }
}

/// Applies `migrate` / `migrate-set-parameters` arguments (QMP names).
pub fn apply_parameters(
    p: &mut Params,
    args: &Map<String, Value>,
    migrate: bool,
) -> Result<(), CommandError> {
    for (k, v) in args {
        let num = || {
            v.as_u64().ok_or_else(|| {
                CommandError::generic(format!("parameter '{k}' must be a non-negative integer"))
            })
        };
        match k.as_str() {
            "max-bandwidth" => p.max_bandwidth = num()?,
            "downtime-limit" => p.downtime_limit_ms = num()?.max(1),
            "max-rounds" => p.max_rounds = num()?.clamp(1, 10_000) as u32,
            "hybrid-rounds" => p.hybrid_rounds = num()?.clamp(1, 10_000) as u32,
            "after-window-ms" => p.after_window_ms = num()?.min(60_000),
            "free-page-hints" => {
                p.free_page_hints = v.as_bool().ok_or_else(|| {
                    CommandError::generic("parameter 'free-page-hints' must be true or false")
                })?
            }
            "mode" => {
                let s = v.as_str().unwrap_or_default();
                p.mode = s.parse().map_err(CommandError::generic)?;
            }
            "prepaging" => {
                let s = v.as_str().unwrap_or_default();
                p.prepaging = s
                    .parse::<Strategy>()
                    .map_err(|e| CommandError::generic(e.to_string()))?;
            }
            "tls-creds" => {
                let s = v.as_str().ok_or_else(|| {
                    CommandError::generic("parameter 'tls-creds' must be a folder path")
                })?;
                p.tls_creds = (!s.is_empty()).then(|| std::path::PathBuf::from(s));
            }
            "hot-pages-first" => {
                p.hot_pages_first = v.as_bool().ok_or_else(|| {
                    CommandError::generic("parameter 'hot-pages-first' must be true or false")
                })?
            }
            "tls-plain" => {
                p.tls_plain = v.as_bool().ok_or_else(|| {
                    CommandError::generic("parameter 'tls-plain' must be true or false")
                })?
            }
            "uri" | "resume" if migrate => {}
            _ => {
                return Err(CommandError::generic(format!(
                    "unknown migration parameter '{k}'"
                )))
            }
        }
    }
    Ok(())
}

/// Starts the migration thread.
pub fn start(ctl: &VmControl, to: String, params: Params) -> Result<Arc<Job>> {
    let security = params.security()?;
    let job = Arc::new(Job {
        mode: params.mode,
        progress: Arc::new(Progress::new()),
        result: Mutex::new(None),
    });
    let vm = VmSource {
        vm: ctl.vm.clone(),
        ram: ctl.ram.clone(),
        balloon: ctl.balloon,
    };
    let beats = ctl.beats.clone();
    let j = job.clone();
    std::thread::Builder::new()
        .name("migration".into())
        .spawn(move || {
            let start = godwit_migration::unix_ns();
            let r = source::migrate(&vm, &to, &params, &security, &j.progress);
            let result = match r {
                Ok(report) => Ok(full_report(report, &beats, start)),
                Err(e) => {
                    let status = if j.progress.cancel.load(std::sync::atomic::Ordering::SeqCst) {
                        Status::Cancelled
                    } else {
                        Status::Failed
                    };
                    j.progress.fail(format!("{e:#}"));
                    j.progress.set_status(status);
                    eprintln!("godwit: migration to {to} failed: {e:#}; the VM runs on here");
                    Err(format!("{e:#}"))
                }
            };
            *j.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        })?;
    Ok(job)
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

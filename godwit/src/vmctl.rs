//! The control socket's commands for a running VM (`godwit run --control`).

use crate::console::Heartbeats;
use crate::control::{CommandError, ControlTarget, ErrorClass};
use crate::migrate_src::{self, Job};
use godwit_machine::{snapshot, VmHandle};
use godwit_memory::{GuestRam, PAGE_SIZE};
use godwit_migration::Params;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Commands of a VM run: `query-status`, `stop`, `cont`, `snapshot`,
/// `balloon`, `query-balloon`, `quit`, and the migration commands
/// (`migrate`, `migrate-set-parameters`, `query-migrate`,
/// `migrate-start-postcopy`, `migrate-cancel`).
pub struct VmControl {
    pub vm: VmHandle,
    pub ram: Arc<GuestRam>,
    pub balloon: bool,
    pub beats: Heartbeats,
    pub params: Mutex<Params>,
    pub job: Mutex<Option<Arc<Job>>>,
}

impl VmControl {
    pub fn new(vm: VmHandle, ram: Arc<GuestRam>, balloon: bool, beats: Heartbeats) -> Self {
        VmControl {
            vm,
            ram,
            balloon,
            beats,
            params: Mutex::new(Params::default()),
            job: Mutex::new(None),
        }
    }

    fn current_job(&self) -> Option<Arc<Job>> {
        self.job.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn gone(_: godwit_machine::VmGone) -> CommandError {
    CommandError {
        class: ErrorClass::DeviceNotActive,
        desc: "the VM is not running any more".into(),
    }
}

fn arg_str<'a>(args: &'a Map<String, Value>, key: &str) -> Result<&'a str, CommandError> {
    args.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| CommandError::generic(format!("argument '{key}' (a string) is required")))
}

/// The `uri` argument of `migrate` (`tcp:HOST:PORT`, or plain `HOST:PORT`).
fn arg_tcp_uri(args: &Map<String, Value>) -> Result<String, CommandError> {
    let uri = arg_str(args, "uri")?;
    Ok(uri.strip_prefix("tcp:").unwrap_or(uri).to_string())
}

fn arg_u64(args: &Map<String, Value>, key: &str) -> Result<u64, CommandError> {
    args.get(key).and_then(Value::as_u64).ok_or_else(|| {
        CommandError::generic(format!(
            "argument '{key}' (a non-negative integer) is required"
        ))
    })
}

impl ControlTarget for VmControl {
    fn execute(&self, name: &str, args: &Map<String, Value>) -> Result<Value, CommandError> {
        match name {
            "query-status" => {
                let running = self.vm.exec(|vm| !vm.is_paused()).map_err(gone)?;
                Ok(
                    json!({ "status": if running { "running" } else { "paused" }, "running": running }),
                )
            }
            "stop" => {
                let took = self.vm.pause().map_err(gone)?;
                Ok(json!({ "pause_latency_us": took.as_micros() as u64 }))
            }
            "cont" => {
                self.vm.resume().map_err(gone)?;
                Ok(json!({}))
            }
            "snapshot" => {
                let path = PathBuf::from(arg_str(args, "path")?);
                let t = Instant::now();
                let report = self
                    .vm
                    .exec(move |vm| {
                        let was_paused = vm.is_paused();
                        vm.set_paused(true);
                        let r = snapshot::save(vm, &path);
                        vm.set_paused(was_paused);
                        r
                    })
                    .map_err(gone)?
                    .map_err(|e| CommandError::generic(e.to_string()))?;
                let mut v = serde_json::to_value(report).unwrap_or(json!({}));
                v["total_ms"] = json!(t.elapsed().as_secs_f64() * 1e3);
                Ok(v)
            }
            "balloon" => {
                // As QMP: `value` is the memory the guest should keep, in bytes.
                let value = arg_u64(args, "value")?;
                self.vm
                    .exec(move |vm| {
                        let ram = vm.ram.size() as u64;
                        let Some(b) = vm.bus.balloon.as_mut() else {
                            return Err(CommandError { class: ErrorClass::DeviceNotFound, desc: "this VM has no balloon (it was started with --no-balloon)".into() });
                        };
                        if value > ram || value < 16 << 20 {
                            return Err(CommandError::generic(format!("balloon value {value} must be between 16 MiB and the RAM size ({ram})")));
                        }
                        let target = (ram - value) / PAGE_SIZE as u64;
                        b.device_mut().set_target_pages(target as u32);
                        b.poll();
                        Ok(json!({ "target_pages": target }))
                    })
                    .map_err(gone)?
            }
            "query-balloon" => self
                .vm
                .exec(|vm| {
                    let ram = vm.ram.size() as u64;
                    let free_pages = vm.ram.free_map().count() as u64;
                    let Some(b) = vm.bus.balloon.as_mut() else {
                        return Err(CommandError {
                            class: ErrorClass::DeviceNotFound,
                            desc: "this VM has no balloon (it was started with --no-balloon)"
                                .into(),
                        });
                    };
                    let d = b.device_mut();
                    d.request_stats();
                    let actual_pages = d.actual_pages() as u64;
                    let reporting = d.reporting_status();
                    Ok(json!({
                        "actual": ram - actual_pages * PAGE_SIZE as u64,
                        "target_pages": d.target_pages(),
                        "inflated_pages": d.inflated_pages(),
                        "free_pages": free_pages,
                        "free_bytes": free_pages * PAGE_SIZE as u64,
                        "reported_pages_total": reporting.pages_total,
                        "stats": d.stats(),
                    }))
                })
                .map_err(gone)?,
            "migrate" if args.get("resume").and_then(Value::as_bool) == Some(true) => {
                let to = arg_tcp_uri(args)?;
                match self.current_job() {
                    Some(j) if j.progress.status() == godwit_migration::Status::PostcopyPaused => {
                        *j.progress.resume_to.lock().unwrap_or_else(|e| e.into_inner()) = Some(to);
                        j.progress.set_status(godwit_migration::Status::PostcopyRecover);
                        Ok(json!({}))
                    }
                    _ => Err(CommandError::generic(
                        "no paused post-copy to resume (query-migrate shows postcopy-paused when its link broke)",
                    )),
                }
            }
            "migrate" => {
                let mut params = self
                    .params
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                migrate_src::apply_parameters(&mut params, args, true)?;
                let to = arg_tcp_uri(args)?;
                let mut slot = self.job.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(j) = slot.as_ref() {
                    if !j.progress.status().is_final() {
                        return Err(CommandError::new(
                            ErrorClass::MigrationActive,
                            "a migration is already running",
                        ));
                    }
                    if j.progress.status() == godwit_migration::Status::Completed {
                        return Err(CommandError::generic("this VM has already migrated away"));
                    }
                }
                let job = migrate_src::start(self, to, params)
                    .map_err(|e| CommandError::generic(format!("{e:#}")))?;
                *slot = Some(job);
                Ok(json!({}))
            }
            "migrate-set-parameters" => {
                let mut params = self.params.lock().unwrap_or_else(|e| e.into_inner());
                let mut p = params.clone();
                migrate_src::apply_parameters(&mut p, args, false)?;
                *params = p;
                Ok(serde_json::to_value(&*params).unwrap_or(json!({})))
            }
            "query-migrate-parameters" => {
                let params = self.params.lock().unwrap_or_else(|e| e.into_inner());
                Ok(serde_json::to_value(&*params).unwrap_or(json!({})))
            }
            "query-migrate" => Ok(match self.current_job() {
                None => json!({ "status": "none" }),
                Some(j) => j.query(),
            }),
            "migrate-cancel" => {
                if let Some(j) = self.current_job() {
                    j.progress
                        .cancel
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                Ok(json!({}))
            }
            "migrate-start-postcopy" => match self.current_job() {
                Some(j) if !j.progress.status().is_final() => {
                    if !matches!(
                        j.mode,
                        godwit_migration::Mode::Precopy | godwit_migration::Mode::Hybrid
                    ) {
                        return Err(CommandError::generic(format!(
                            "a {} migration has no pre-copy phase to switch from",
                            j.mode
                        )));
                    }
                    j.progress
                        .start_postcopy
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    Ok(json!({}))
                }
                _ => Err(CommandError::generic("no migration is running")),
            },
            "quit" => {
                self.vm.quit().map_err(gone)?;
                Ok(json!({}))
            }
            _ => Err(CommandError::not_found(name)),
        }
    }
}

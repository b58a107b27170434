//! The commands of a running VM (`godwit run --control`, and `godwit
//! receive --control` once its VM runs): the control socket's
//! [`ControlTarget`] for a [`VmHandle`].

use crate::commands::{Command, COMMAND_NAMES};
use crate::console::Heartbeats;
use crate::control::{CommandError, ControlTarget, ErrorClass, EventSender};
use crate::outgoing::OutgoingMigration;
use godwit_machine::{snapshot, VmGone, VmHandle};
use godwit_memory::PAGE_SIZE;
use godwit_migration::{Mode, Params, Status};
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How long `stop` waits for the vCPUs (and again for the devices).
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The control target of one VM.
pub struct VmControl {
    vm: VmHandle,
    beats: Heartbeats,
    params: Mutex<Params>,
    job: Mutex<Option<Arc<OutgoingMigration>>>,
    events: Mutex<EventSender>,
    dirty_rate: Arc<Mutex<DirtyRate>>,
}

/// `calc-dirty-rate`'s measurement: the dirty log on for a window, then the
/// pages it holds counted (each page once, however often it was written:
/// the window's writable working set).
#[derive(Clone, Debug, Default)]
enum DirtyRate {
    #[default]
    Unstarted,
    Measuring {
        start_unix_s: u64,
        calc_time_s: u64,
    },
    Measured {
        start_unix_s: u64,
        calc_time_s: u64,
        window_ms: f64,
        pages: u64,
    },
    Failed {
        start_unix_s: u64,
        calc_time_s: u64,
        error: String,
    },
}

impl DirtyRate {
    fn to_json(&self) -> Value {
        match self {
            DirtyRate::Unstarted => json!({ "status": "unstarted" }),
            DirtyRate::Measuring {
                start_unix_s,
                calc_time_s,
            } => json!({
                "status": "measuring", "start-time": start_unix_s, "calc-time": calc_time_s,
            }),
            DirtyRate::Measured {
                start_unix_s,
                calc_time_s,
                window_ms,
                pages,
            } => {
                let mib = (*pages * PAGE_SIZE as u64) as f64 / (1u64 << 20) as f64;
                json!({
                    "status": "measured", "start-time": start_unix_s, "calc-time": calc_time_s,
                    "mode": "dirty-bitmap",
                    "window-ms": window_ms,
                    "dirty-pages": pages,
                    "dirty-mib": mib,
                    // QMP's figure: MB/s of distinct pages over the window.
                    "dirty-rate": (mib / (window_ms / 1e3)).round() as u64,
                })
            }
            DirtyRate::Failed {
                start_unix_s,
                calc_time_s,
                error,
            } => json!({
                "status": "failed", "start-time": start_unix_s, "calc-time": calc_time_s, "error": error,
            }),
        }
    }
}

/// Seconds since the Unix epoch.
fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn gone(_: VmGone) -> CommandError {
    CommandError::new(
        ErrorClass::DeviceNotActive,
        "the VM is not running any more",
    )
}

fn no_balloon() -> CommandError {
    CommandError::new(
        ErrorClass::DeviceNotFound,
        "this VM has no balloon (it was started with --no-balloon)",
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VmControl {
    /// Commands for `vm`, whose console heartbeats are in `beats`.
    pub fn new(vm: VmHandle, beats: Heartbeats) -> Self {
        VmControl {
            vm,
            beats,
            params: Mutex::new(Params::default()),
            job: Mutex::new(None),
            events: Mutex::new(EventSender::none()),
            dirty_rate: Arc::new(Mutex::new(DirtyRate::Unstarted)),
        }
    }

    /// Where events go (the server this target is served by).
    pub fn set_events(&self, events: EventSender) {
        *lock(&self.events) = events;
    }

    /// Sends an event to the control socket's clients.
    pub fn emit(&self, name: &str, data: Value) {
        lock(&self.events).emit(name, data);
    }

    /// Whether this VM has started a migration of its own (outgoing).
    pub fn has_migration(&self) -> bool {
        lock(&self.job).is_some()
    }

    fn current_job(&self) -> Option<Arc<OutgoingMigration>> {
        lock(&self.job).clone()
    }

    /// Starts a dirty-rate measurement of `calc_time` seconds on a thread
    /// of its own (the answer comes at once; `query-dirty-rate` tells when
    /// it is measured).
    fn calc_dirty_rate(&self, calc_time: u64) -> Result<Value, CommandError> {
        // Holding the job slot: no migration starts while the state changes.
        let job = lock(&self.job);
        if job
            .as_ref()
            .is_some_and(|j| !j.progress.status().is_final())
        {
            return Err(CommandError::new(
                ErrorClass::MigrationActive,
                "a migration is running: the dirty log is its own",
            ));
        }
        let mut state = lock(&self.dirty_rate);
        if matches!(*state, DirtyRate::Measuring { .. }) {
            return Err(CommandError::generic(
                "a calc-dirty-rate measurement is already running",
            ));
        }
        let start_unix_s = unix_s();
        self.vm.exec(|m| m.set_dirty_logging(true)).map_err(gone)?;
        let t0 = Instant::now();
        *state = DirtyRate::Measuring {
            start_unix_s,
            calc_time_s: calc_time,
        };
        drop(state);
        drop(job);
        let (vm, slot) = (self.vm.clone(), self.dirty_rate.clone());
        let spawned = std::thread::Builder::new()
            .name("dirty-rate".into())
            .spawn(move || {
                std::thread::sleep(std::time::Duration::from_secs(calc_time));
                let words = vm.exec(|m| {
                    let w = m.take_dirty_log();
                    m.set_dirty_logging(false);
                    w
                });
                let window_ms = t0.elapsed().as_secs_f64() * 1e3;
                *lock(&slot) = match words {
                    Ok(w) => DirtyRate::Measured {
                        start_unix_s,
                        calc_time_s: calc_time,
                        window_ms,
                        pages: w.iter().map(|x| u64::from(x.count_ones())).sum(),
                    },
                    Err(VmGone) => DirtyRate::Failed {
                        start_unix_s,
                        calc_time_s: calc_time,
                        error: "the VM ended during the measurement".into(),
                    },
                };
            });
        if let Err(e) = spawned {
            let _ = self.vm.exec(|m| m.set_dirty_logging(false));
            *lock(&self.dirty_rate) = DirtyRate::Failed {
                start_unix_s,
                calc_time_s: calc_time,
                error: format!("cannot start the measuring thread: {e}"),
            };
            return Err(CommandError::generic(format!(
                "cannot start the measuring thread: {e}"
            )));
        }
        Ok(json!({}))
    }

    /// Runs one command.
    pub fn run(&self, cmd: Command) -> Result<Value, CommandError> {
        match cmd {
            Command::QueryStatus => {
                if self.vm.is_gone() {
                    return Err(gone(VmGone));
                }
                let running = !self.vm.is_paused();
                Ok(json!({
                    "status": if running { "running" } else { "paused" },
                    "running": running,
                    "singlestep": false,
                }))
            }
            Command::QueryVersion => {
                let v: Vec<u64> = env!("CARGO_PKG_VERSION")
                    .split('.')
                    .map(|n| n.parse().unwrap_or(0))
                    .collect();
                Ok(json!({
                    "qemu": { "major": v.first(), "minor": v.get(1), "micro": v.get(2) },
                    "package": concat!("godwit ", env!("CARGO_PKG_VERSION")),
                }))
            }
            Command::QueryCommands => Ok(Value::Array(
                COMMAND_NAMES.iter().map(|n| json!({ "name": n })).collect(),
            )),
            Command::Stop => {
                // Bounded: a vCPU blocked on a post-copy page that has not
                // arrived cannot stop before it does.
                let p = self.vm.pause_within(STOP_WAIT).map_err(gone)?;
                self.emit("STOP", json!({}));
                if p.vcpus.is_empty() && p.devices.is_empty() {
                    return Ok(json!({ "pause_latency_us": p.latency.as_micros() as u64 }));
                }
                Ok(json!({
                    "pause_latency_us": null,
                    "vcpus_in_memory_access": p.vcpus,
                    "devices_busy": p.devices,
                    "note": "paused; these are blocked on guest memory that has not arrived (post-copy) and stop as soon as it does",
                }))
            }
            Command::Cont => {
                self.vm.resume().map_err(gone)?;
                self.emit("RESUME", json!({}));
                Ok(json!({}))
            }
            Command::Snapshot(a) => {
                let t = Instant::now();
                let was_paused = self.vm.is_paused();
                self.vm.pause().map_err(gone)?;
                let report = self.vm.exec(|m| snapshot::save(m, &a.path)).map_err(gone);
                if !was_paused {
                    let _ = self.vm.resume();
                }
                let report = report?.map_err(|e| CommandError::generic(e.to_string()))?;
                let mut v = serde_json::to_value(report).unwrap_or(json!({}));
                v["total_ms"] = json!(t.elapsed().as_secs_f64() * 1e3);
                Ok(v)
            }
            Command::Balloon(a) => {
                let ram = self.vm.ram().size() as u64;
                if a.value > ram || a.value < 16 << 20 {
                    return Err(CommandError::generic(format!(
                        "balloon value {} must be between 16 MiB and the RAM size ({ram})",
                        a.value
                    )));
                }
                let target = (ram - a.value) / PAGE_SIZE as u64;
                self.vm
                    .with_balloon(|b| b.set_target_pages(target as u32))
                    .ok_or_else(no_balloon)?;
                Ok(json!({ "target_pages": target }))
            }
            Command::QueryBalloon => {
                let ram = self.vm.ram();
                let free_pages = ram.free_map().count() as u64;
                let size = ram.size() as u64;
                self.vm
                    .with_balloon(|d| {
                        d.request_stats();
                        let reporting = d.reporting_status();
                        json!({
                            "actual": size - d.actual_pages() as u64 * PAGE_SIZE as u64,
                            "target_pages": d.target_pages(),
                            "inflated_pages": d.inflated_pages(),
                            "free_pages": free_pages,
                            "free_bytes": free_pages * PAGE_SIZE as u64,
                            "reported_pages_total": reporting.pages_total,
                            "stats": d.stats(),
                        })
                    })
                    .ok_or_else(no_balloon)
            }
            Command::Migrate(a) if a.resume => match self.current_job() {
                Some(j) if j.progress.status() == Status::PostcopyPaused => {
                    *lock(&j.progress.resume_to) = Some(a.address().to_string());
                    j.progress.set_status(Status::PostcopyRecover);
                    Ok(json!({}))
                }
                _ => Err(CommandError::generic(
                    "no paused post-copy to resume (query-migrate shows postcopy-paused when its link broke)",
                )),
            },
            Command::Migrate(a) => {
                let mut params = lock(&self.params).clone();
                a.params.apply(&mut params)?;
                // The job slot first, as calc-dirty-rate takes them.
                let mut slot = lock(&self.job);
                if matches!(*lock(&self.dirty_rate), DirtyRate::Measuring { .. }) {
                    return Err(CommandError::generic(
                        "a calc-dirty-rate measurement is running (it uses the dirty log); migrate when query-dirty-rate says it is measured",
                    ));
                }
                if let Some(j) = slot.as_ref() {
                    if !j.progress.status().is_final() {
                        return Err(CommandError::new(
                            ErrorClass::MigrationActive,
                            "a migration is already running",
                        ));
                    }
                    if j.progress.status() == Status::Completed {
                        return Err(CommandError::generic("this VM has already migrated away"));
                    }
                }
                let events = lock(&self.events).clone();
                let job = OutgoingMigration::start(
                    &self.vm,
                    &self.beats,
                    events,
                    a.address().to_string(),
                    params,
                )
                .map_err(|e| CommandError::generic(format!("{e:#}")))?;
                *slot = Some(job);
                Ok(json!({}))
            }
            Command::MigrateSetParameters(p) => {
                let mut params = lock(&self.params);
                p.apply(&mut params)?;
                Ok(serde_json::to_value(&*params).unwrap_or(json!({})))
            }
            Command::QueryMigrateParameters => {
                Ok(serde_json::to_value(&*lock(&self.params)).unwrap_or(json!({})))
            }
            Command::QueryMigrate => Ok(match self.current_job() {
                None => json!({ "status": "none" }),
                Some(j) => j.query(),
            }),
            Command::MigrateCancel => match self.current_job() {
                Some(j) if !j.progress.status().is_final() => {
                    j.progress.request_cancel().map_err(|_| {
                        let status = j.progress.status();
                        let what = if matches!(
                            status,
                            Status::PostcopyActive | Status::PostcopyPaused | Status::PostcopyRecover
                        ) {
                            "the VM runs at the destination now and part of its memory is only there, so it cannot come back; let the migration complete (after a broken link: migrate with \"resume\": true)"
                        } else {
                            "the destination has been told to run the VM; it is completing"
                        };
                        CommandError::generic(format!(
                            "cannot cancel a migration past its commit point ({}): {what}",
                            status.as_str()
                        ))
                    })?;
                    Ok(json!({}))
                }
                // Nothing running: nothing to do, as QEMU.
                _ => Ok(json!({})),
            },
            Command::MigrateStartPostcopy => match self.current_job() {
                Some(j) if !j.progress.status().is_final() => {
                    if !matches!(j.mode, Mode::Precopy | Mode::Hybrid) {
                        return Err(CommandError::generic(format!(
                            "a {} migration has no pre-copy phase to switch from",
                            j.mode
                        )));
                    }
                    j.progress.start_postcopy.store(true, Ordering::SeqCst);
                    Ok(json!({}))
                }
                _ => Err(CommandError::generic("no migration is running")),
            },
            Command::CalcDirtyRate(a) => self.calc_dirty_rate(a.calc_time),
            Command::QueryDirtyRate => Ok(lock(&self.dirty_rate).to_json()),
            Command::Quit => {
                self.vm.quit().map_err(gone)?;
                Ok(json!({}))
            }
        }
    }
}

impl ControlTarget for VmControl {
    fn execute(&self, name: &str, args: &Map<String, Value>) -> Result<Value, CommandError> {
        self.run(Command::parse(name, args)?)
    }
}

//! The destination side of a migration (`godwit receive`): wait for a
//! source, check that its board is the one this host will build, receive
//! the VM and run it.
//!
//! The VM does not exist until its state arrives: guest RAM is mapped at
//! the handshake (pages arrive into it, or it is registered with
//! `userfaultfd`), and the state then *constructs* the VM
//! ([`Vm::restore`]), which starts paused until the engine resumes it.

use crate::commands::Command;
use crate::console::{self, ConsoleTee, Heartbeats};
use crate::control::{CommandError, ControlServer, ControlTarget, ErrorClass};
use crate::drive::{expected_devices, open_images, DriveSpec};
use crate::netdev::host_devices;
use crate::vm_control::VmControl;
use anyhow::{anyhow, bail, Context, Result};
use godwit_devices::{rarp_frame, Block, HeldWrite, Net, NetBackend, WriteHold};
use godwit_machine::layout::RAM_BASE;
use godwit_machine::tap::Tap;
use godwit_machine::{BoardConfig, DeviceConfig, RunOutcome, Vm, VmHandle, VmState};
use godwit_memory::GuestRam;
use godwit_migration::wire::{DiskOp, DiskWrite};
use godwit_migration::{dest, DestVm, Security, Status};
use serde_json::{json, Map, Value};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What `godwit receive` was told.
pub struct ReceiveOptions {
    /// `HOST:PORT` to accept the migration on.
    pub listen: String,
    /// Control socket path.
    pub control: Option<PathBuf>,
    /// Refuse a VM whose RAM is not this many bytes.
    pub mem: Option<u64>,
    /// Refuse a VM with another number of harts.
    pub harts: Option<u32>,
    /// How long to watch the guest after completion before reporting.
    pub report_after: Duration,
    pub security: Security,
    /// Interpret every instruction (no translator).
    pub interpreter: bool,
    /// TAPs for the VM's NICs, in order (opened before waiting).
    pub taps: Vec<Tap>,
    /// Images for the VM's disks, in order: opened (and locked) only when
    /// the VM's state arrives, after the source flushed and let go of them.
    pub drives: Vec<DriveSpec>,
    /// Testing: wait this long before making confirmed disk writes on the
    /// images (0 in use).
    pub disk_release_delay: Duration,
}

/// The thread a received VM runs on.
type VmThread = JoinHandle<Result<RunOutcome, godwit_machine::VmError>>;

/// The VM being received, for the engine.
struct VmDest {
    board: BoardConfig,
    ram: Arc<GuestRam>,
    beats: Heartbeats,
    interpreter: bool,
    /// The TAPs for the VM's NICs, until the VM takes them.
    taps: Mutex<Vec<Tap>>,
    /// The disk images to open when the state arrives.
    drives: Vec<DriveSpec>,
    /// Second handles on them, for announcing the VM.
    announce: Vec<Tap>,
    /// The VM once its state arrived.
    vm: Mutex<Option<VmHandle>>,
    /// Hands the VM's run thread to the main thread.
    started: Mutex<Option<mpsc::Sender<VmThread>>>,
    /// The control socket's target once the VM exists.
    control: Arc<DestControl>,
    /// The VM is paused for a checkpoint (not by the operator).
    checkpoint_paused: Mutex<bool>,
    /// Writable disks whose writes are held for checkpoints (slot, hold).
    disk_holds: Mutex<Vec<(usize, Arc<WriteHold>)>>,
    disk_release_delay: Duration,
}

impl VmDest {
    fn handle(&self) -> Result<VmHandle> {
        self.vm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| anyhow!("the VM state has not arrived yet"))
    }
}

impl DestVm for VmDest {
    fn ram(&self) -> Arc<GuestRam> {
        self.ram.clone()
    }
    fn load_state(&self, state: &[u8]) -> Result<()> {
        let state = VmState::decode(state)?;
        let console = Box::new(ConsoleTee::new(std::io::stdout(), self.beats.clone()));
        let taps = std::mem::take(&mut *self.taps.lock().unwrap_or_else(|e| e.into_inner()));
        let disks = open_images(&self.drives)?;
        let host = host_devices(&self.board, taps, disks)?;
        let vm = Vm::restore_with(&state, self.ram.clone(), console, Some(&self.board), host)?;
        vm.set_paused(true);
        let handle = vm.handle();
        // The network sends the VM's frames here from now on; they wait in
        // the TAPs until it resumes, and what reached the source meanwhile
        // comes with `Go` (deliver_host_frames).
        crate::netdev::announce_once(&handle, false);
        crate::runner::choose_cpu(&handle, self.interpreter)?;
        // The console's input follows the VM: this VMM's stdin.
        crate::runner::console_input(handle.clone())?;
        let thread = std::thread::Builder::new()
            .name("vm".into())
            .spawn(move || vm.run())
            .context("cannot start the VM")?;
        self.control
            .set_vm(Arc::new(VmControl::new(handle.clone(), self.beats.clone())));
        *self.vm.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        if let Some(tx) = self
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = tx.send(thread);
        }
        Ok(())
    }
    fn resume(&self) -> Result<()> {
        let vm = self.handle()?;
        vm.resume().map_err(|e| anyhow!(e))?;
        self.control.emit("RESUME", json!({}));
        announce(&vm, &self.announce);
        Ok(())
    }
    fn set_dirty_logging(&self, on: bool) -> Result<()> {
        self.handle()?
            .exec(|m| m.set_dirty_logging(on))
            .map_err(|e| anyhow!(e))
    }
    fn take_dirty_log(&self) -> Result<Vec<u64>> {
        self.handle()?
            .exec(|m| m.take_dirty_log())
            .map_err(|e| anyhow!(e))
    }
    fn pause_checkpoint(&self, limit: Duration) -> Result<bool> {
        let vm = self.handle()?;
        let was = vm.is_paused();
        let p = vm.pause_within(limit).map_err(|e| anyhow!(e))?;
        if p.vcpus.is_empty() && p.devices.is_empty() {
            *self
                .checkpoint_paused
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = !was;
            return Ok(true);
        }
        if !was {
            vm.resume().map_err(|e| anyhow!(e))?;
        }
        Ok(false)
    }
    fn save_state(&self) -> Result<Vec<u8>> {
        Ok(self
            .handle()?
            .save_state()
            .map_err(|e| anyhow!(e))?
            .encode())
    }
    fn resume_checkpoint(&self) -> Result<()> {
        // Only a pause the checkpoint made: one the operator asked for stays.
        let ours = std::mem::take(
            &mut *self
                .checkpoint_paused
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if ours {
            self.handle()?.resume().map_err(|e| anyhow!(e))?;
        }
        Ok(())
    }
    /// NICs hold their frames and writable disks their writes.
    fn hold_output(&self) -> Result<()> {
        let vm = self.handle()?;
        for slot in crate::netdev::nic_slots(vm.board()) {
            vm.with_device::<Net, _>(slot, |n| n.hold_output());
        }
        let mut holds = self.disk_holds.lock().unwrap_or_else(|e| e.into_inner());
        for (slot, d) in vm.board().devices.iter().enumerate() {
            if let DeviceConfig::Block {
                readonly: false, ..
            } = d
            {
                if let Some(h) = vm.with_device::<Block, _>(slot, |b| b.hold_writes()) {
                    holds.push((slot, h));
                }
            }
        }
        Ok(())
    }
    fn mark_output(&self, epoch: u64) {
        if let Ok(vm) = self.handle() {
            for slot in crate::netdev::nic_slots(vm.board()) {
                vm.with_device::<Net, _>(slot, |n| n.mark_output(epoch));
            }
        }
        for (_, h) in self
            .disk_holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            h.mark(epoch);
        }
    }
    fn release_output(&self, epoch: Option<u64>) {
        // Disks first: a frame may tell a peer that a write is done.
        let holds = self
            .disk_holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if epoch.is_some() && !holds.is_empty() {
            std::thread::sleep(self.disk_release_delay);
        }
        for (slot, h) in &holds {
            if let Err(e) = h.release(epoch) {
                eprintln!("godwit: disk in slot {slot}: a held write failed on the image: {e}");
            }
        }
        if let Ok(vm) = self.handle() {
            for slot in crate::netdev::nic_slots(vm.board()) {
                vm.with_device::<Net, _>(slot, |n| n.release_output(epoch));
            }
        }
    }
    fn held_disk_writes(&self, from: u64, to: u64) -> Vec<DiskWrite> {
        let holds = self
            .disk_holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut out = Vec::new();
        for (slot, h) in &holds {
            for w in h.held_in(from, to) {
                let (off, op) = match w {
                    HeldWrite::Write { off, data } => (off, DiskOp::Write(data)),
                    HeldWrite::Discard { off, len } => (off, DiskOp::Discard(len)),
                };
                out.push(DiskWrite {
                    slot: *slot as u16,
                    off,
                    op,
                });
            }
        }
        out
    }
    fn held_output(&self) -> Value {
        let Ok(vm) = self.handle() else {
            return Value::Null;
        };
        let mut nics = Vec::new();
        for slot in crate::netdev::nic_slots(vm.board()) {
            if let Some(s) = vm.with_device::<Net, _>(slot, |n| n.held_stats()) {
                let mean = if s.released > 0 {
                    s.wait_us_sum / s.released as f64
                } else {
                    0.0
                };
                nics.push(json!({
                    "frames_released": s.released,
                    "frames_dropped": s.dropped,
                    "frames_waiting": s.waiting,
                    "wait_us_mean": mean,
                    "wait_us_max": s.wait_us_max,
                }));
            }
        }
        let disks: Vec<Value> = self
            .disk_holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(slot, h)| {
                let s = h.stats();
                json!({
                    "slot": slot,
                    "writes_released": s.released,
                    "bytes_released": s.released_bytes,
                    "writes_waiting": s.waiting,
                    "full_waits": s.full_waits,
                    "release_errors": s.release_errors,
                    "wait_us_max": s.wait_us_max,
                })
            })
            .collect();
        json!({ "nics": nics, "disks": disks })
    }
    fn fence(&self) {
        if let Ok(vm) = self.handle() {
            // Paused for good: a vCPU inside an access to a page that never
            // comes stops when (if) it completes; nothing it sends leaves.
            let _ = vm.pause_within(Duration::from_millis(100));
            self.control.emit("STOP", json!({ "reason": "fenced" }));
        }
    }
    fn deliver_host_frames(&self, frames: Vec<(u16, Vec<u8>)>) -> Result<()> {
        crate::netdev::deliver_frames(&self.handle()?, frames)
    }
    fn set_status(&self, status: Status) {
        *self
            .control
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = status;
        self.control
            .emit("MIGRATION", json!({ "status": status.as_str() }));
    }
    fn aborted(&self) -> bool {
        self.control.quit.load(Ordering::SeqCst)
    }
}

/// After the VM resumed here: the network must learn where its MACs are
/// now. Each NIC asks the guest to announce itself (GUEST_ANNOUNCE: its
/// gratuitous ARPs), and the VMM sends RARP frames for each MAC on the
/// NIC's TAP, as QEMU's announce-self does: at once, then 50, 150, 300
/// and 500 ms later (a frame lost to a busy queue is sent again).
///
/// All on a thread of its own: in post-copy a device thread may hold its
/// device while it waits for a guest page, which arrives only once the
/// engine, which called this, reads on.
fn announce(vm: &VmHandle, taps: &[Tap]) {
    let Ok(mut taps) = taps
        .iter()
        .map(Tap::try_clone)
        .collect::<std::io::Result<Vec<_>>>()
    else {
        eprintln!("godwit: cannot announce the VM's MACs: no second TAP handle");
        return;
    };
    let vm = vm.clone();
    let spawned = std::thread::Builder::new()
        .name("announce".into())
        .spawn(move || {
            let mut macs = Vec::new();
            for slot in crate::netdev::nic_slots(vm.board()) {
                if let Some(mac) = vm.with_device::<Net, _>(slot, |n| {
                    n.announce();
                    n.mac()
                }) {
                    macs.push(mac);
                }
            }
            for ms in [0u64, 50, 100, 150, 200] {
                std::thread::sleep(Duration::from_millis(ms));
                for (tap, mac) in taps.iter_mut().zip(&macs) {
                    let _ = tap.send(&rarp_frame(*mac));
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("godwit: cannot announce the VM's MACs: {e}");
    }
}

/// The destination's control target: before the VM exists it answers
/// `query-status` (`inmigrate`, as QEMU); then the VM's commands. Until
/// the incoming migration completes only those that cannot block on guest
/// memory still to arrive run (queries, `stop`, `cont`, `quit`); the
/// others are refused, saying why. `query-migrate` shows the incoming
/// migration's state (until the VM starts one of its own), and `quit` ends
/// the VMM in every state.
#[derive(Default)]
pub struct DestControl {
    vm: Mutex<Option<Arc<VmControl>>>,
    events: Mutex<Option<crate::control::EventSender>>,
    /// The incoming migration's state.
    status: Mutex<Status>,
    /// The operator said `quit`.
    quit: AtomicBool,
}

/// Commands a VM whose memory is still arriving can run without waiting
/// for it.
fn safe_while_incoming(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::QueryStatus
            | Command::QueryVersion
            | Command::QueryCommands
            | Command::Stop
            | Command::Cont
            | Command::QueryMigrateParameters
            | Command::MigrateSetParameters(_)
    )
}

impl DestControl {
    fn set_vm(&self, vm: Arc<VmControl>) {
        if let Some(e) = self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            vm.set_events(e);
        }
        *self.vm.lock().unwrap_or_else(|e| e.into_inner()) = Some(vm);
    }

    fn emit(&self, name: &str, data: Value) {
        if let Some(e) = self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            e.emit(name, data);
        }
    }
}

impl ControlTarget for DestControl {
    fn execute(&self, name: &str, args: &Map<String, Value>) -> Result<Value, CommandError> {
        let cmd = Command::parse(name, args)?;
        let vm = self.vm.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let status = *self.status.lock().unwrap_or_else(|e| e.into_inner());
        match &cmd {
            Command::Quit => {
                self.quit.store(true, Ordering::SeqCst);
                if let Some(vm) = &vm {
                    let _ = vm.run(Command::Quit);
                }
                return Ok(json!({}));
            }
            Command::QueryMigrate if !vm.as_ref().is_some_and(|v| v.has_migration()) => {
                return Ok(json!({ "status": status.as_str() }));
            }
            _ => {}
        }
        match vm {
            Some(vm) if status == Status::Completed || safe_while_incoming(&cmd) => vm.run(cmd),
            Some(_) => Err(CommandError::generic(format!(
                "{name} must wait until the incoming migration completes (it is {}): the VM's memory is still arriving",
                status.as_str()
            ))),
            None => match cmd {
                Command::QueryStatus => {
                    Ok(json!({ "status": "inmigrate", "running": false, "singlestep": false }))
                }
                _ => Err(CommandError::new(
                    ErrorClass::DeviceNotActive,
                    "the incoming VM has not arrived yet",
                )),
            },
        }
    }
}

/// Waits up to `limit` for the VM's thread. A vCPU blocked on a post-copy
/// page that never came keeps it from ending; the process then exits
/// without it.
fn join_within(
    thread: VmThread,
    limit: Duration,
) -> Option<Result<RunOutcome, godwit_machine::VmError>> {
    let end = std::time::Instant::now() + limit;
    while !thread.is_finished() {
        if std::time::Instant::now() >= end {
            eprintln!("godwit: the VM's threads are blocked on memory that never arrived; exiting without them");
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    thread.join().ok()
}

/// Waits for a migration, receives it, runs the VM; returns the guest's
/// exit status.
pub fn receive(opts: ReceiveOptions) -> Result<i32> {
    let listener = TcpListener::bind(&opts.listen)
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    eprintln!(
        "godwit: waiting for a migration on {} ({})",
        listener.local_addr()?,
        opts.security.name()
    );
    let control = Arc::new(DestControl::default());
    let server = match &opts.control {
        Some(p) => {
            let s = ControlServer::start(p, control.clone())
                .with_context(|| format!("cannot open the control socket {}", p.display()))?;
            *control.events.lock().unwrap_or_else(|e| e.into_inner()) = Some(s.events());
            eprintln!("godwit: control socket {}", s.path().display());
            Some(s)
        }
        None => None,
    };
    let (want_mem, want_harts) = (opts.mem, opts.harts);
    let tap_names: Vec<String> = opts.taps.iter().map(|t| t.name().to_string()).collect();
    let want_disks = expected_devices(&opts.drives)?;
    let quit = || control.quit.load(Ordering::SeqCst);
    let incoming = dest::accept(&listener, &opts.security, &quit, |h| {
        let board = BoardConfig::from_json(&h.board).map_err(|e| e.to_string())?;
        if board.ram_bytes != h.ram_bytes {
            return Err(format!(
                "the handshake names {} bytes of RAM and a board of {}",
                h.ram_bytes, board.ram_bytes
            ));
        }
        let mut diffs = Vec::new();
        if let Some(m) = want_mem.filter(|&m| m != board.ram_bytes) {
            diffs.push(format!("{m} bytes of RAM here, {} there", board.ram_bytes));
        }
        let nics = board
            .devices
            .iter()
            .filter(|d| matches!(d, DeviceConfig::Net { .. }))
            .count();
        if nics != tap_names.len() {
            diffs.push(format!(
                "{} TAP(s) here ({}), {nics} NIC(s) there",
                tap_names.len(),
                tap_names.join(", ")
            ));
        }
        let disks: Vec<&DeviceConfig> = board
            .devices
            .iter()
            .filter(|d| matches!(d, DeviceConfig::Block { .. }))
            .collect();
        if disks.len() != want_disks.len() {
            diffs.push(format!(
                "{} disk(s) here (--drive), {} there",
                want_disks.len(),
                disks.len()
            ));
        }
        for (i, (here, there)) in want_disks.iter().zip(&disks).enumerate() {
            if here != *there {
                diffs.push(format!("disk {i}: {here} here, {there} there"));
            }
        }
        if let Some(n) = want_harts.filter(|&n| n != board.harts) {
            diffs.push(format!(
                "{} here, {} there",
                godwit_machine::board::harts(n),
                godwit_machine::board::harts(board.harts)
            ));
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            let why = format!("this destination's board differs: {}", diffs.join("; "));
            eprintln!("godwit: refusing the migration: {why}");
            Err(why)
        }
    });
    let incoming = match incoming {
        Err(_) if quit() => {
            eprintln!("godwit: quit before a migration arrived");
            drop(server);
            return Ok(0);
        }
        r => r?,
    };
    drop(listener);
    let board = BoardConfig::from_json(&incoming.hello.board)?;
    eprintln!(
        "godwit: receiving a {} migration ({board})",
        incoming.hello.mode
    );
    let ram = Arc::new(GuestRam::new(RAM_BASE, board.ram_bytes as usize)?);
    let beats = Heartbeats::default();
    let (tx, rx) = mpsc::channel();
    let announce_taps = opts
        .taps
        .iter()
        .map(Tap::try_clone)
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot open a second handle on a TAP")?;
    let dvm = VmDest {
        board,
        ram,
        beats: beats.clone(),
        interpreter: opts.interpreter,
        taps: Mutex::new(opts.taps),
        drives: opts.drives,
        announce: announce_taps,
        vm: Mutex::new(None),
        started: Mutex::new(Some(tx)),
        control: control.clone(),
        checkpoint_paused: Mutex::new(false),
        disk_holds: Mutex::new(Vec::new()),
        disk_release_delay: opts.disk_release_delay,
    };
    let received = incoming.run(&dvm, opts.report_after, &|resumed, completed| {
        console::dest_view(&beats, resumed, completed)
    });
    let handle = dvm.vm.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let thread = rx.try_recv().ok();
    match received {
        Ok(r) => eprintln!("godwit: migration received: {}", r.report),
        Err(e) => {
            if let Some(h) = &handle {
                let _ = h.quit();
            }
            if let Some(t) = thread {
                join_within(t, Duration::from_secs(3));
            }
            drop(server);
            return Err(e.context("the incoming migration failed"));
        }
    }
    let (Some(handle), Some(thread)) = (handle, thread) else {
        bail!("the migration completed without a VM state");
    };
    crate::runner::console_input(handle)?;
    let outcome = thread
        .join()
        .map_err(|_| anyhow!("the VM thread panicked"))??;
    control.emit(
        "SHUTDOWN",
        json!({ "guest": outcome.exit != godwit_machine::GuestExit::Quit }),
    );
    drop(server);
    eprintln!(
        "godwit: guest ended: {:?}; {} instructions in {:.2} s",
        outcome.exit,
        outcome.instructions,
        outcome.elapsed.as_secs_f64()
    );
    Ok(outcome.exit.status())
}

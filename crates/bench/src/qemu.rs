//! QEMU as the reference VMM of `godwit bench` (DESIGN.md, "Comparing
//! fairly with QEMU"): its command line for the Godwit guest, a small QMP
//! client, the migration driver, and the translation of QEMU's
//! `query-migrate` into the keys of Godwit's migration report, so that both
//! VMMs land in one table. `bench.rs` owns the cells, the consoles and the
//! host's figures; this file only knows QEMU.
//!
//! ```text
//!  bench ──QMP──▶ source QEMU (godwit-src)                destination QEMU (godwit-dst) ◀──QMP── bench
//!                  │ -qmp unix:src.qmp                     -incoming defer, -qmp unix:dst.qmp
//!                  │                                        [-gdb unix:dst.gdb]  (re-arm variant)
//!   both:          qmp_capabilities; migrate-set-capabilities postcopy-ram (post-copy, hybrid)
//!   destination:   migrate-incoming tcp:DST:PORT
//!   source:        migrate-set-parameters max-bandwidth, max-postcopy-bandwidth, downtime-limit
//!                  migrate tcp:DST:PORT ──────────────────▶ (QEMU's migration stream)
//!                  [migrate-start-postcopy]  at once (post-copy) / after the first pass (hybrid)
//!                  query-migrate … until completed          query-status … until running
//!                                                           [gdbstub: stimecmp := stimecmp]
//! ```
//!
//! The re-arm variant works around a QEMU bug seen with 7.2: the guest's
//! Sstc timer compare value (`stimecmp`) is migrated, but the destination
//! does not re-arm the QEMU timer behind it, so a guest that was asleep
//! (in `wfi`) when the source stopped waits for a timer interrupt that never
//! comes; one that was running sets a new compare value itself and lives, so
//! QEMU as shipped survives a migration by chance. (With `sstc=off` the
//! ACLINT timer is not migrated at all: no better.) Writing `stimecmp` back
//! with its own value through QEMU's gdbstub as soon as the destination runs
//! arms the timer again; the destination is polled every 10 ms, and the
//! gdbstub pauses the guest for about a millisecond, both of which count in
//! the guest's downtime. The bench runs QEMU both as shipped and with this
//! repair, and labels the rows.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// QEMU's OpenSBI firmware for `-bios default` (Debian: qemu-system-data).
const FIRMWARE: &str = "opensbi-riscv64-generic-fw_dynamic.bin";
/// Every QMP command and gdbstub exchange answers within this time.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// QEMU opens its QMP socket within this time of starting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the driver asks both QEMUs how things stand.
const POLL: Duration = Duration::from_millis(10);
/// After the source says completed, the destination runs within this time.
const RESUME_TIMEOUT: Duration = Duration::from_secs(10);
/// RISC-V CSR numbers: `sstatus` (to find the gdbstub's CSR numbering) and
/// `stimecmp` (Sstc).
const CSR_SSTATUS: u32 = 0x100;
const CSR_STIMECMP: u32 = 0x14d;

/// A usable `qemu-system-riscv64`.
pub struct Qemu {
    pub exe: PathBuf,
    /// First line of `--version`.
    pub version: String,
}

impl Qemu {
    /// Checks that `exe` runs and has its RISC-V firmware.
    pub fn find(exe: &Path) -> Result<Qemu> {
        let out = match Command::new(exe).arg("--version").output() {
            Err(e) if e.kind() == ErrorKind::NotFound => bail!(
                "{} not found (install QEMU with `apt-get install qemu-system-misc`, or pass --qemu PATH)",
                exe.display()
            ),
            r => r.with_context(|| format!("cannot run {}", exe.display()))?,
        };
        if !out.status.success() {
            bail!("{} --version failed ({})", exe.display(), out.status);
        }
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        // `-L help` lists the firmware folders; if it fails, let QEMU speak later.
        if let Ok(dirs) = Command::new(exe).args(["-L", "help"]).output() {
            let dirs = String::from_utf8_lossy(&dirs.stdout);
            if dirs.lines().all(|d| !Path::new(d).join(FIRMWARE).exists()) {
                bail!(
                    "QEMU's RISC-V firmware {FIRMWARE} is missing (install it with `apt-get install qemu-system-data`)"
                );
            }
        }
        Ok(Qemu {
            exe: exe.to_path_buf(),
            version,
        })
    }
}

/// The guest as both QEMUs boot it (the destination's is only the shape
/// its incoming state must fit).
pub struct Guest<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub mem_bytes: u64,
    pub cmdline: String,
    pub balloon: bool,
    /// vCPUs (`-smp`).
    pub cpus: u32,
    /// A virtio-net NIC on this TAP (with the MAC Godwit's first NIC has).
    pub tap: Option<&'a str>,
    /// The firmware (`-bios`; QEMU's own OpenSBI when `None`).
    pub bios: Option<&'a Path>,
    /// A raw disk image as a virtio-blk device (shared by both QEMUs, as
    /// Godwit's `--drive`).
    pub drive: Option<&'a Path>,
}

/// Appends QEMU's arguments for `guest` to `cmd` (whose program is QEMU,
/// possibly behind `ip netns exec`): the `virt` board as in
/// guest/qemu-boot.sh, serial console on stdout, QMP on `qmp`, and for a
/// destination `-incoming defer` and, if asked, a gdbstub on `gdb`.
pub fn args(
    cmd: &mut Command,
    guest: &Guest,
    qmp: &Path,
    incoming: bool,
    gdb: Option<&Path>,
) -> Result<()> {
    if guest.mem_bytes == 0 || !guest.mem_bytes.is_multiple_of(1 << 20) {
        bail!("QEMU needs a whole number of MiB of guest RAM (-m): use --mem 512M or similar");
    }
    cmd.args(["-M", "virt", "-accel", "tcg", "-bios"])
        .arg(
            guest
                .bios
                .map_or("default".into(), |b| b.as_os_str().to_owned()),
        )
        .arg("-smp")
        .arg(guest.cpus.to_string())
        .arg("-m")
        .arg(format!("{}M", guest.mem_bytes >> 20))
        .arg("-kernel")
        .arg(guest.kernel)
        .arg("-initrd")
        .arg(guest.initrd)
        .arg("-append")
        .arg(&guest.cmdline)
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
        .arg("-no-reboot")
        .arg("-qmp")
        .arg(socket_spec(qmp));
    if guest.balloon {
        cmd.args(["-device", "virtio-balloon-device,free-page-reporting=on"]);
    }
    if let Some(tap) = guest.tap {
        // vhost off: the same user-space data path as Godwit's.
        cmd.arg("-netdev")
            .arg(format!(
                "tap,id=net0,ifname={tap},script=no,downscript=no,vhost=off"
            ))
            .args([
                "-device",
                "virtio-net-device,netdev=net0,mac=52:54:00:12:34:56",
            ]);
    }
    if let Some(d) = guest.drive {
        let d = d.to_str().context("the disk image's path is not UTF-8")?;
        if d.contains(',') {
            bail!("QEMU cannot take a disk image path with a comma: {d}");
        }
        cmd.arg("-drive")
            .arg(format!("file={d},format=raw,if=none,id=hd0"))
            .args(["-device", "virtio-blk-device,drive=hd0"]);
    }
    if incoming {
        cmd.args(["-incoming", "defer"]);
    }
    if let Some(g) = gdb {
        cmd.arg("-gdb").arg(socket_spec(g));
    }
    Ok(())
}

/// A listening Unix socket chardev that does not wait for its client.
fn socket_spec(path: &Path) -> String {
    format!("unix:{},server=on,wait=off", path.display())
}

// ---------------------------------------------------------------------------
// QMP

/// A QMP connection (one JSON object per line each way). Asynchronous
/// events that arrive while waiting for a reply are kept in `events`.
pub struct Qmp {
    what: &'static str,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects (retrying while QEMU starts; `alive` fails when it has
    /// died), reads the greeting and leaves capabilities negotiation.
    pub fn connect(
        path: &Path,
        what: &'static str,
        mut alive: impl FnMut() -> Result<()>,
    ) -> Result<Qmp> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    alive()?;
                    if Instant::now() >= deadline {
                        return Err(e).with_context(|| {
                            format!(
                                "the {what} QEMU opened no QMP socket at {} within {} s",
                                path.display(),
                                CONNECT_TIMEOUT.as_secs()
                            )
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        stream.set_write_timeout(Some(COMMAND_TIMEOUT))?;
        let mut q = Qmp {
            what,
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            events: Vec::new(),
        };
        let greeting = q.message()?;
        if greeting.get("QMP").is_none() {
            bail!("the {what} QEMU's QMP socket did not greet with QMP: {greeting}");
        }
        q.execute("qmp_capabilities", Value::Null)?;
        Ok(q)
    }

    /// Runs one command; its `return` value, or its `error` as an error.
    pub fn execute(&mut self, command: &str, args: Value) -> Result<Value> {
        let msg = if args.is_null() {
            json!({ "execute": command })
        } else {
            json!({ "execute": command, "arguments": args })
        };
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .with_context(|| format!("cannot send {command} to the {} QEMU", self.what))?;
        loop {
            let m = self
                .message()
                .with_context(|| format!("no reply to {command}"))?;
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                bail!(
                    "the {} QEMU refused {command}: {} ({})",
                    self.what,
                    e["desc"].as_str().unwrap_or("no description"),
                    e["class"].as_str().unwrap_or("?")
                );
            }
            if m.get("event").is_some() {
                self.events.push(m);
            }
        }
    }

    fn message(&mut self) -> Result<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => bail!("the {} QEMU closed its QMP socket", self.what),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => bail!(
                "the {} QEMU did not answer on QMP within {} s",
                self.what,
                COMMAND_TIMEOUT.as_secs()
            ),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read the {} QEMU's QMP", self.what))
            }
        }
        serde_json::from_str(line.trim())
            .with_context(|| format!("the {} QEMU sent QMP that is not JSON: {line}", self.what))
    }
}

// ---------------------------------------------------------------------------
// The migration

/// When the source switches to post-copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    /// Pre-copy to the end.
    Never,
    /// `migrate-start-postcopy` as soon as the migration runs: the
    /// destination resumes with (almost) no memory, like Godwit's post-copy.
    AtOnce,
    /// After the first pass over RAM (the second dirty-bitmap sync), QEMU's
    /// usual recipe; like Godwit's hybrid. If the dirty set is below the
    /// downtime threshold by then, QEMU completes as pre-copy instead.
    AfterFirstPass,
}

impl Switch {
    /// The switch for one of Godwit's mode names.
    pub fn for_mode(mode: &str) -> Switch {
        match mode {
            "postcopy" => Switch::AtOnce,
            "hybrid" => Switch::AfterFirstPass,
            _ => Switch::Never,
        }
    }

    /// Whether the source should be told to switch now, given its latest
    /// `query-migrate`.
    fn due(self, info: &Value) -> bool {
        let status = info["status"].as_str().unwrap_or("");
        match self {
            Switch::Never => false,
            Switch::AtOnce => matches!(status, "setup" | "active"),
            Switch::AfterFirstPass => {
                status == "active" && info["ram"]["dirty-sync-count"].as_u64().unwrap_or(0) >= 2
            }
        }
    }

    /// How the table describes it.
    pub fn label(self) -> &'static str {
        match self {
            Switch::Never => "n/a",
            Switch::AtOnce => "switch at once",
            Switch::AfterFirstPass => "switch after 1st pass",
        }
    }
}

/// QEMU's `downtime-limit`, ms (its default, stated).
pub const DOWNTIME_LIMIT_MS: u64 = 300;

/// Sets the source's migration parameters: [`DOWNTIME_LIMIT_MS`], and
/// `max_bw` bytes/s (Godwit's cap) before and after a post-copy switch.
pub fn set_parameters(src: &mut Qmp, max_bw: Option<u64>) -> Result<()> {
    let mut params = json!({ "downtime-limit": DOWNTIME_LIMIT_MS });
    if let Some(bw) = max_bw {
        params["max-bandwidth"] = json!(bw);
        params["max-postcopy-bandwidth"] = json!(bw);
    }
    src.execute("migrate-set-parameters", params)
        .context("cannot set QEMU's migration parameters")?;
    Ok(())
}

/// Turns post-copy on for a migration from `src` to `dst` (and QEMU's
/// count of the destination's blocked vCPU time).
pub fn enable_postcopy(src: &mut Qmp, dst: &mut Qmp) -> Result<()> {
    let caps = |names: &[&str]| {
        let list: Vec<Value> = names
            .iter()
            .map(|n| json!({ "capability": n, "state": true }))
            .collect();
        json!({ "capabilities": list })
    };
    src.execute("migrate-set-capabilities", caps(&["postcopy-ram"]))?;
    dst.execute(
        "migrate-set-capabilities",
        caps(&["postcopy-ram", "postcopy-blocktime"]),
    )?;
    Ok(())
}

/// Turns QEMU's multifd on at both ends: `channels` parallel streams,
/// each compressing with `compression` (`none`, `zlib`, `zstd`).
pub fn enable_multifd(
    src: &mut Qmp,
    dst: &mut Qmp,
    channels: u32,
    compression: &str,
) -> Result<()> {
    for q in [src, dst] {
        q.execute(
            "migrate-set-capabilities",
            json!({ "capabilities": [{ "capability": "multifd", "state": true }] }),
        )
        .context("QEMU refused multifd")?;
        q.execute(
            "migrate-set-parameters",
            json!({ "multifd-channels": channels, "multifd-compression": compression }),
        )
        .with_context(|| format!("QEMU refused multifd with {compression}"))?;
    }
    Ok(())
}

/// Turns QEMU's auto-converge (the vCPU throttle) on at the source.
pub fn enable_auto_converge(src: &mut Qmp) -> Result<()> {
    src.execute(
        "migrate-set-capabilities",
        json!({ "capabilities": [{ "capability": "auto-converge", "state": true }] }),
    )
    .context("QEMU refused auto-converge")?;
    Ok(())
}

/// What the migration driver needs.
pub struct Plan<'a> {
    /// `tcp:HOST:PORT` of the destination.
    pub uri: &'a str,
    pub switch: Switch,
    /// The destination's gdbstub socket: re-arm the guest's timer there.
    pub rearm: Option<&'a Path>,
    pub timeout: Duration,
}

/// What the driver saw.
pub struct Outcome {
    /// The source's last `query-migrate` (status completed).
    pub info: Value,
    /// The destination's `query-migrate` after the migration.
    pub dst_info: Value,
    /// Host ms (the caller's clock) when the source said completed.
    pub completed_ms: f64,
    /// Host ms when the destination was first seen running.
    pub dst_running_ms: Option<f64>,
    /// Host ms when the timer re-arm finished.
    pub rearmed_ms: Option<f64>,
    /// Host ms of the `migrate-start-postcopy`.
    pub switch_ms: Option<f64>,
}

/// Starts the migration on `src` (capabilities and parameters already set)
/// and drives it to completion: switches to post-copy per the plan, watches
/// the destination start running and, in the re-arm variant, re-arms its
/// timer at once. `check` runs every poll (Ctrl-C, VMMs alive); `now_ms` is
/// the caller's clock.
pub fn migrate(
    src: &mut Qmp,
    dst: &mut Qmp,
    plan: &Plan,
    mut check: impl FnMut() -> Result<()>,
    now_ms: impl Fn() -> f64,
) -> Result<Outcome> {
    src.execute("migrate", json!({ "uri": plan.uri }))?;
    let deadline = Instant::now() + plan.timeout;
    let mut switch_ms = None;
    let mut completed: Option<(Value, f64, Instant)> = None;
    let mut dst_running_ms = None;
    let mut rearmed_ms = None;
    loop {
        check()?;
        if dst_running_ms.is_none() {
            let st = dst.execute("query-status", Value::Null)?;
            if st["running"].as_bool() == Some(true) {
                dst_running_ms = Some(now_ms());
                if let Some(gdb) = plan.rearm {
                    rearm_timer(gdb)
                        .context("cannot re-arm the guest's timer on the destination")?;
                    // Detaching resumes the VM; make sure of it.
                    if dst.execute("query-status", Value::Null)?["running"].as_bool() != Some(true)
                    {
                        dst.execute("cont", Value::Null)?;
                    }
                    rearmed_ms = Some(now_ms());
                }
            }
        }
        if completed.is_none() {
            let info = src.execute("query-migrate", Value::Null)?;
            match info["status"].as_str().unwrap_or("") {
                "completed" => {
                    let seen_ms = now_ms();
                    let info = settled(src, info)?;
                    completed = Some((info, seen_ms, Instant::now()));
                }
                s @ ("failed" | "cancelled") => bail!(
                    "QEMU's migration {s}: {}",
                    info["error-desc"].as_str().unwrap_or("QEMU gave no reason")
                ),
                _ => {
                    if switch_ms.is_none() && plan.switch.due(&info) {
                        src.execute("migrate-start-postcopy", Value::Null)?;
                        switch_ms = Some(now_ms());
                    }
                    if Instant::now() >= deadline {
                        let _ = src.execute("migrate_cancel", Value::Null);
                        bail!(
                            "QEMU's migration did not complete within {} s (status {}); cancelled",
                            plan.timeout.as_secs(),
                            info["status"]
                        );
                    }
                }
            }
        }
        if let Some((info, completed_ms, at)) = &completed {
            if dst_running_ms.is_some() {
                let dst_info = dst.execute("query-migrate", Value::Null)?;
                return Ok(Outcome {
                    info: info.clone(),
                    dst_info,
                    completed_ms: *completed_ms,
                    dst_running_ms,
                    rearmed_ms,
                    switch_ms,
                });
            }
            if at.elapsed() >= RESUME_TIMEOUT {
                bail!(
                    "QEMU's source completed but the destination did not run within {} s",
                    RESUME_TIMEOUT.as_secs()
                );
            }
        }
        std::thread::sleep(POLL);
    }
}

/// The completed `query-migrate` once QEMU has filled in its times: QEMU
/// 7.2 says "completed" a moment before it computes total-time and
/// downtime (and answers 0 for both in between). Asks again for up to 2 s.
fn settled(src: &mut Qmp, mut info: Value) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while info["total-time"].as_u64().unwrap_or(0) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        info = src.execute("query-migrate", Value::Null)?;
    }
    Ok(info)
}

/// QEMU's figures under the keys of Godwit's migration report.
///
/// QEMU counts normal (non-zero) pages and zero pages (`duplicate`, which
/// includes the pages the guest reported free: QEMU discards them, so they
/// read as zero), and bytes per phase. The pages per phase are estimated
/// from the bytes: `normal` split in proportion to precopy-bytes /
/// downtime-bytes / postcopy-bytes; post-copy's demand pages are
/// `postcopy-requests`, the rest of its pages pushed.
pub fn report(out: &Outcome, mode: &str, switch: Switch, variant: &str) -> Value {
    let info = &out.info;
    let ram = &info["ram"];
    let num = |k: &str| ram[k].as_f64();
    let normal = num("normal").unwrap_or(0.0);
    let phase = [
        num("precopy-bytes").unwrap_or(0.0),
        num("downtime-bytes").unwrap_or(0.0),
        num("postcopy-bytes").unwrap_or(0.0),
    ];
    let total: f64 = phase.iter().sum();
    let share = |b: f64| {
        if total > 0.0 {
            (normal * b / total).round()
        } else {
            0.0
        }
    };
    let (pre, stop, post) = if total > 0.0 {
        (share(phase[0]), share(phase[1]), share(phase[2]))
    } else {
        // No per-phase bytes (older QEMU): all pages count as pre-copy.
        (normal, 0.0, 0.0)
    };
    // Rounding must not invent or lose pages.
    let pre = pre + (normal - pre - stop - post);
    let requests = num("postcopy-requests").unwrap_or(0.0);
    let demand = requests.min(post);
    let switched = num("postcopy-bytes").unwrap_or(0.0) > 0.0;
    let strategy = if switch == Switch::AfterFirstPass && !switched {
        "switch after 1st pass (finished as pre-copy)"
    } else {
        switch.label()
    };
    // QEMU 7.2 sometimes reports a downtime longer than the whole migration
    // (seen after a post-copy switch): no figure rather than a wrong one.
    // And a total of 0 is one it had not computed yet.
    let total_ms = info["total-time"].as_f64().filter(|&t| t > 0.0);
    let downtime_ms = info["downtime"]
        .as_f64()
        .filter(|&d| total_ms.is_some_and(|t| d <= t));
    json!({
        "vmm": variant,
        "mode": mode,
        "prepaging": strategy,
        "status": info["status"],
        "switched_to_postcopy": switched,
        "asked_for_postcopy": out.switch_ms.is_some(),
        "total_ms": total_ms,
        "downtime_ms": downtime_ms,
        "qemu_downtime_ms": info["downtime"],
        "setup_ms": info["setup-time"],
        "rounds": ram["dirty-sync-count"],
        "pages_precopy": pre,
        "pages_stop_copy": stop,
        "pages_demand": demand,
        "pages_pushed": post - demand,
        "pages_zero": ram["duplicate"],
        "pages_normal": normal,
        "pages_split": "estimated from QEMU's precopy-bytes / downtime-bytes / postcopy-bytes",
        "network_faults": requests,
        "bytes_sent": ram["transferred"],
        "mbps": ram["mbps"],
        "postcopy_blocktime_ms": out.dst_info["postcopy-blocktime"],
        "qemu_query_migrate": info,
        "qemu_destination_query_migrate": out.dst_info,
    })
}

// ---------------------------------------------------------------------------
// The timer re-arm, through QEMU's gdbstub

/// Connects to QEMU's gdbstub (which stops the VM), writes each vCPU's
/// `stimecmp` back with its own value (which makes QEMU arm the timer it
/// forgot), and detaches (which resumes the VM).
pub fn rearm_timer(sock: &Path) -> Result<()> {
    let stream = UnixStream::connect(sock)
        .with_context(|| format!("cannot connect to QEMU's gdbstub at {}", sock.display()))?;
    stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    stream.set_write_timeout(Some(COMMAND_TIMEOUT))?;
    let mut g = Gdb {
        stream,
        buf: Vec::new(),
    };
    g.request("qSupported:xmlRegisters=riscv")?;
    let target = g.xfer("target.xml")?;
    let csr_xml = target
        .split("href=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .find(|f| f.contains("csr"))
        .context("QEMU's gdbstub describes no CSRs")?
        .to_string();
    let csrs = g.xfer(&csr_xml)?;
    let base = regnum(&csrs, "sstatus")
        .and_then(|n| n.checked_sub(CSR_SSTATUS))
        .context("QEMU's gdbstub does not number sstatus")?;
    let reg = base + CSR_STIMECMP;
    // Every vCPU (a gdb thread each) has its own timer.
    let mut threads = Vec::new();
    let mut reply = g.request("qfThreadInfo")?;
    while let Some(list) = reply.strip_prefix('m') {
        threads.extend(list.split(',').map(str::to_string));
        if threads.len() > 64 {
            bail!("QEMU's gdbstub lists more than 64 threads");
        }
        reply = g.request("qsThreadInfo")?;
    }
    if threads.is_empty() {
        bail!("QEMU's gdbstub lists no threads (vCPUs): {reply:?}");
    }
    for t in &threads {
        let ok = g.request(&format!("Hg{t}"))?;
        if ok != "OK" {
            bail!("QEMU's gdbstub cannot select vCPU thread {t}: {ok:?}");
        }
        let value = g.request(&format!("p{reg:x}"))?;
        if value.is_empty() || value.starts_with('E') {
            bail!("QEMU's gdbstub cannot read stimecmp (register {reg}) of thread {t}: {value:?}");
        }
        let ok = g.request(&format!("P{reg:x}={value}"))?;
        if ok != "OK" {
            bail!("QEMU's gdbstub cannot write stimecmp of thread {t}: {ok:?}");
        }
    }
    let ok = g.request("D")?;
    if ok != "OK" {
        bail!("QEMU's gdbstub did not detach: {ok:?}");
    }
    Ok(())
}

/// The `regnum` of the register `name` in a gdb target description.
fn regnum(xml: &str, name: &str) -> Option<u32> {
    let at = xml.find(&format!("<reg name=\"{name}\""))?;
    let rest = &xml[at..];
    let tag = &rest[..rest.find('>')?];
    let n = tag.split("regnum=\"").nth(1)?.split('"').next()?;
    n.parse().ok()
}

/// The GDB remote serial protocol, just enough of it: packets
/// `$data#checksum`, acknowledged with `+`.
struct Gdb {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Gdb {
    /// Sends a packet and returns the reply, skipping the stop replies
    /// (`T…`/`S…`) QEMU sends unasked when the debugger attaches.
    fn request(&mut self, data: &str) -> Result<String> {
        let sum = data.bytes().fold(0u8, u8::wrapping_add);
        self.stream
            .write_all(format!("${data}#{sum:02x}").as_bytes())
            .context("cannot write to QEMU's gdbstub")?;
        loop {
            // None of our requests is answered with T or S: those are stops.
            let reply = self.packet()?;
            if !(reply.starts_with('T') || reply.starts_with('S')) {
                return Ok(reply);
            }
        }
    }

    /// Reads a whole `qXfer:features:read` object.
    fn xfer(&mut self, annex: &str) -> Result<String> {
        let mut text = String::new();
        loop {
            let r = self.request(&format!("qXfer:features:read:{annex}:{:x},fff", text.len()))?;
            let (more, chunk) = r.split_at(r.len().min(1));
            text.push_str(chunk);
            match more {
                "l" => return Ok(text),
                "m" => {}
                _ => bail!("QEMU's gdbstub cannot read {annex}: {r:?}"),
            }
        }
    }

    /// The next packet from QEMU, acknowledged.
    fn packet(&mut self) -> Result<String> {
        loop {
            if let Some(start) = self.buf.iter().position(|&b| b == b'$') {
                if let Some(end) = self.buf[start..].iter().position(|&b| b == b'#') {
                    let end = start + end;
                    if self.buf.len() >= end + 3 {
                        let data = String::from_utf8_lossy(&self.buf[start + 1..end]).into_owned();
                        self.buf.drain(..end + 3);
                        // The ack of the last reply may find the stub gone (detach).
                        let _ = self.stream.write_all(b"+");
                        return Ok(data);
                    }
                }
            }
            let mut chunk = [0u8; 4096];
            let n = match self.stream.read(&mut chunk) {
                Ok(0) => bail!("QEMU's gdbstub closed the connection"),
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    bail!(
                        "QEMU's gdbstub did not answer within {} s",
                        COMMAND_TIMEOUT.as_secs()
                    )
                }
                Err(e) => return Err(e).context("cannot read QEMU's gdbstub"),
            };
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn outcome(info: Value) -> Outcome {
        Outcome {
            info,
            dst_info: json!({"status": "completed"}),
            completed_ms: 0.0,
            dst_running_ms: Some(0.0),
            rearmed_ms: None,
            switch_ms: None,
        }
    }

    #[test]
    fn precopy_report_from_query_migrate() {
        // A real QEMU 7.2 pre-copy of the memtouch guest (wws 64 MiB).
        let info = json!({"status": "completed", "setup-time": 1, "downtime": 28, "total-time": 1129,
            "ram": {"total": 604041216u64, "postcopy-requests": 0, "dirty-sync-count": 7,
                    "downtime-bytes": 37157616u64, "postcopy-bytes": 0, "transferred": 174672236u64,
                    "precopy-bytes": 137514620u64, "duplicate": 127412, "normal": 42282}});
        let r = report(&outcome(info), "precopy", Switch::Never, "qemu");
        assert_eq!(r["total_ms"], 1129.0);
        assert_eq!(r["downtime_ms"], 28.0);
        assert_eq!(r["bytes_sent"], 174672236u64);
        assert_eq!(r["pages_zero"], 127412);
        let p = |k: &str| r[k].as_f64().unwrap();
        assert_eq!(
            p("pages_precopy") + p("pages_stop_copy") + p("pages_demand") + p("pages_pushed"),
            42282.0
        );
        assert_eq!(
            p("pages_stop_copy"),
            (42282.0 * 37157616.0 / 174672236.0f64).round()
        );
        assert_eq!(p("pages_demand") + p("pages_pushed"), 0.0);
        assert_eq!(r["switched_to_postcopy"], false);
        // QEMU's hybrid that converged before the switch says so.
        let r = report(
            &outcome(r["qemu_query_migrate"].clone()),
            "hybrid",
            Switch::AfterFirstPass,
            "qemu",
        );
        assert_eq!(
            r["prepaging"],
            "switch after 1st pass (finished as pre-copy)"
        );
    }

    #[test]
    fn postcopy_report_splits_demand_and_push() {
        let info = json!({"status": "completed", "downtime": 40, "total-time": 900,
            "ram": {"postcopy-requests": 300, "precopy-bytes": 0, "downtime-bytes": 0,
                    "postcopy-bytes": 4104000, "normal": 1000, "duplicate": 5, "transferred": 4104000}});
        let r = report(&outcome(info), "postcopy", Switch::AtOnce, "qemu");
        assert_eq!(r["pages_demand"].as_f64(), Some(300.0));
        assert_eq!(r["pages_pushed"].as_f64(), Some(700.0));
        assert_eq!(r["network_faults"].as_f64(), Some(300.0));
        assert_eq!(r["prepaging"], "switch at once");
        assert_eq!(r["switched_to_postcopy"], true);
        let bogus =
            json!({"status": "completed", "downtime": 24283275u64, "total-time": 944, "ram": {}});
        let r = report(&outcome(bogus), "hybrid", Switch::AfterFirstPass, "qemu");
        assert!(r["downtime_ms"].is_null() && r["qemu_downtime_ms"] == 24283275u64);
        let early = json!({"status": "completed", "downtime": 0, "total-time": 0, "ram": {}});
        let r = report(&outcome(early), "precopy", Switch::Never, "qemu");
        assert!(r["total_ms"].is_null() && r["downtime_ms"].is_null());
    }

    #[test]
    fn switch_points() {
        let q = |status: &str, syncs: u64| json!({"status": status, "ram": {"dirty-sync-count": syncs}});
        assert!(!Switch::Never.due(&q("active", 5)));
        assert!(Switch::AtOnce.due(&q("setup", 0)));
        assert!(Switch::AtOnce.due(&q("active", 1)));
        assert!(!Switch::AtOnce.due(&q("postcopy-active", 1)));
        assert!(!Switch::AfterFirstPass.due(&q("active", 1)));
        assert!(Switch::AfterFirstPass.due(&q("active", 2)));
        assert_eq!(Switch::for_mode("hybrid"), Switch::AfterFirstPass);
        assert_eq!(Switch::for_mode("precopy"), Switch::Never);
    }

    #[test]
    fn command_line() {
        let guest = Guest {
            kernel: Path::new("/k"),
            initrd: Path::new("/i"),
            mem_bytes: 512 << 20,
            cmdline: "console=ttyS0".into(),
            balloon: true,
            cpus: 2,
            tap: Some("gwtap0"),
            bios: None,
            drive: None,
        };
        let mut c = Command::new("qemu");
        args(&mut c, &guest, Path::new("/q"), true, Some(Path::new("/g"))).unwrap();
        let a: Vec<String> = c.get_args().map(|s| s.to_string_lossy().into()).collect();
        let a = a.join(" ");
        assert!(a.contains("-M virt") && a.contains("-m 512M"), "{a}");
        assert!(a.contains("-smp 2"), "{a}");
        assert!(
            a.contains("-netdev tap,id=net0,ifname=gwtap0,script=no,downscript=no,vhost=off"),
            "{a}"
        );
        assert!(a.contains("-qmp unix:/q,server=on,wait=off"), "{a}");
        assert!(
            a.contains("virtio-balloon-device,free-page-reporting=on"),
            "{a}"
        );
        assert!(a.contains("-incoming defer") && a.contains("-gdb unix:/g,server=on,wait=off"));
        assert!(a.contains("-bios default"), "{a}");
        let disk = Guest {
            bios: Some(Path::new("/fw.bin")),
            drive: Some(Path::new("/d.img")),
            cmdline: guest.cmdline.clone(),
            ..guest
        };
        let mut c = Command::new("qemu");
        args(&mut c, &disk, Path::new("/q"), false, None).unwrap();
        let a: Vec<String> = c.get_args().map(|s| s.to_string_lossy().into()).collect();
        let a = a.join(" ");
        assert!(a.contains("-bios /fw.bin"), "{a}");
        assert!(
            a.contains(
                "-drive file=/d.img,format=raw,if=none,id=hd0 -device virtio-blk-device,drive=hd0"
            ),
            "{a}"
        );
        let odd = Guest {
            mem_bytes: 1000,
            ..guest
        };
        assert!(args(
            &mut Command::new("qemu"),
            &odd,
            Path::new("/q"),
            false,
            None
        )
        .is_err());
    }

    #[test]
    fn regnums() {
        let xml = r#"<feature><reg name="sstatus" bitsize="64" regnum="322"/><reg name="sie" bitsize="64" regnum="326"/></feature>"#;
        assert_eq!(regnum(xml, "sstatus"), Some(322));
        assert_eq!(regnum(xml, "sie"), Some(326));
        assert_eq!(regnum(xml, "stimecmp"), None);
    }

    /// A fake QEMU on a Unix socket: the QMP client skips events, reports
    /// errors, and the gdbstub client re-arms through the packets QEMU 7.2
    /// uses.
    #[test]
    fn qmp_and_gdbstub_against_fakes() {
        let dir =
            std::env::temp_dir().join(format!("godwit-bench-qemu-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let qmp_path = dir.join("q.sock");
        let listener = UnixListener::bind(&qmp_path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut line = String::new();
            for reply in [
                r#"{"return": {}}"#,
                "{\"event\": \"STOP\"}\r\n{\"return\": {\"status\": \"active\"}}",
                r#"{"error": {"class": "GenericError", "desc": "nope"}}"#,
            ] {
                line.clear();
                r.read_line(&mut line).unwrap();
                writeln!(w, "{reply}").unwrap();
            }
        });
        let mut q = Qmp::connect(&qmp_path, "test", || Ok(())).unwrap();
        let v = q.execute("query-migrate", Value::Null).unwrap();
        assert_eq!(v["status"], "active");
        assert_eq!(q.events.len(), 1);
        let e = q.execute("migrate", json!({"uri": "x"})).unwrap_err();
        assert!(format!("{e:#}").contains("nope"), "{e:#}");
        server.join().unwrap();

        let gdb_path = dir.join("g.sock");
        let listener = UnixListener::bind(&gdb_path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let send = |s: &mut UnixStream, d: &str| {
                let sum = d.bytes().fold(0u8, u8::wrapping_add);
                s.write_all(format!("${d}#{sum:02x}").as_bytes()).unwrap();
            };
            send(&mut s, "T02thread:01;");
            let mut seen = Vec::new();
            let mut buf = Vec::new();
            while !seen.iter().any(|p: &String| p == "D") {
                let mut chunk = [0u8; 1024];
                let n = s.read(&mut chunk).unwrap();
                buf.extend_from_slice(&chunk[..n]);
                while let (Some(a), Some(b)) = (
                    buf.iter().position(|&c| c == b'$'),
                    buf.iter().position(|&c| c == b'#'),
                ) {
                    if buf.len() < b + 3 {
                        break;
                    }
                    let p = String::from_utf8_lossy(&buf[a + 1..b]).into_owned();
                    buf.drain(..b + 3);
                    s.write_all(b"+").unwrap();
                    let reply = if p.starts_with("qSupported") {
                        "PacketSize=1000;qXfer:features:read+".to_string()
                    } else if p.starts_with("qXfer:features:read:target.xml:0,") {
                        r#"l<target><xi:include href="riscv-64bit-cpu.xml"/><xi:include href="riscv-csr.xml"/></target>"#.into()
                    } else if p.starts_with("qXfer:features:read:riscv-csr.xml:0,") {
                        r#"m<feature><reg name="sstatus" bitsize="64" regnum="322"/>"#.into()
                    } else if p.starts_with("qXfer:features:read:riscv-csr.xml:") {
                        "l</feature>".into()
                    } else if p == "qfThreadInfo" {
                        "m1,2".into()
                    } else if p == "qsThreadInfo" {
                        "l".into()
                    } else if p == "Hg1" || p == "Hg2" {
                        "OK".into()
                    } else if p == "p18f" {
                        "40e8c30200000000".into()
                    } else if p == "P18f=40e8c30200000000" || p == "D" {
                        "OK".into()
                    } else {
                        format!("E01 unexpected {p}")
                    };
                    send(&mut s, &reply);
                    seen.push(p);
                }
            }
            seen
        });
        rearm_timer(&gdb_path).unwrap();
        let seen = server.join().unwrap();
        // Both vCPUs' timers, each selected first.
        let order: Vec<&str> = seen
            .iter()
            .map(String::as_str)
            .filter(|p| p.starts_with("Hg") || p.starts_with('P'))
            .collect();
        assert_eq!(
            order,
            [
                "Hg1",
                "P18f=40e8c30200000000",
                "Hg2",
                "P18f=40e8c30200000000"
            ],
            "{seen:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

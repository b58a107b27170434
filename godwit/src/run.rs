//! `godwit run`: boot a VM (or restore one from a snapshot) and serve its
//! console and control socket until it ends.

use crate::console::{Heartbeats, Tap};
use crate::control::ControlServer;
use crate::vmctl::VmControl;
use crate::{guest_image, size};
use anyhow::{Context, Result};
use godwit_machine::{snapshot, Vm, VmConfig, VmHandle};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct RunArgs {
    /// Kernel `Image` (default: the built guest image, see guest/build.sh).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs (default: the built guest image).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Guest RAM size: bytes, or with a K/M/G suffix (512M, 1G).
    #[arg(long, default_value = "512M", value_parser = size::parse_size)]
    mem: u64,
    /// Guest workload (adds `godwit.workload=NAME` to the kernel command line).
    #[arg(long)]
    workload: Option<String>,
    /// Extra kernel command line words, e.g. "wws_mb=64 pages_per_s=0".
    #[arg(long, default_value = "")]
    append: String,
    /// Board without the virtio-balloon (no free page reporting).
    #[arg(long)]
    no_balloon: bool,
    /// Open a QMP-style control socket at this path.
    #[arg(long)]
    control: Option<PathBuf>,
    /// Resume the VM saved in this snapshot file instead of booting.
    #[arg(long, conflicts_with_all = ["kernel", "initrd", "workload"])]
    restore: Option<PathBuf>,
    /// Run every instruction in the interpreter (no translation to host
    /// code): slower, for comparison and debugging.
    #[arg(long)]
    interpreter: bool,
}

/// Turns the translator off when asked; says so when it cannot be on.
pub fn choose_cpu(vm: &mut Vm, interpreter: bool) {
    if !vm.hart.set_jit(!interpreter) && !interpreter {
        eprintln!(
            "godwit: no executable memory for translated code: every instruction is interpreted"
        );
    }
}

/// How the vCPU ran, for the exit line.
pub fn cpu_name(vm: &Vm) -> &'static str {
    if vm.hart.jit_enabled() {
        "translated"
    } else {
        "interpreted"
    }
}

/// The kernel command line every Godwit guest gets before the user's words.
/// `page_reporting_order=0`: the guest reports free memory down to single
/// 4 KiB pages (the kernel's default is 2 MiB blocks), so as little free
/// memory as possible is ever migrated. Override it with `--append`.
pub const BASE_CMDLINE: &str = "console=ttyS0 earlycon=sbi page_reporting.page_reporting_order=0";

/// The full kernel command line for a workload and extra words.
pub fn cmdline(workload: Option<&str>, append: &str) -> String {
    let mut c = BASE_CMDLINE.to_string();
    if let Some(w) = workload {
        c.push_str(" godwit.workload=");
        c.push_str(w);
    }
    if !append.trim().is_empty() {
        c.push(' ');
        c.push_str(append.trim());
    }
    c
}

fn build_vm(args: &RunArgs, beats: &Heartbeats) -> Result<Vm> {
    let console = || Box::new(Tap::new(std::io::stdout(), beats.clone()));
    if let Some(path) = &args.restore {
        let snap = snapshot::load(path)?;
        let mut vm = Vm::empty(
            snap.state.ram_bytes,
            console(),
            snap.state.balloon.is_some(),
        )?;
        snap.fill_ram(&vm.ram)?;
        vm.restore_state(&snap.state)?;
        eprintln!("godwit: restored {}", path.display());
        return Ok(vm);
    }
    let (kernel, initrd) = guest_image::resolve(args.kernel.clone(), args.initrd.clone())?;
    Ok(Vm::new(VmConfig {
        kernel,
        initrd,
        mem_bytes: args.mem,
        cmdline: cmdline(args.workload.as_deref(), &args.append),
        console: console(),
        balloon: !args.no_balloon,
    })?)
}

/// Forwards our stdin to the guest's console.
pub fn console_input(handle: VmHandle) -> Result<()> {
    std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
                handle.push_input(&buf[..n]);
            }
        })
        .context("cannot start the console input thread")?;
    Ok(())
}

/// Opens the control socket for `vm` if a path was given.
pub fn control_server(
    path: Option<&Path>,
    vm: &Vm,
    beats: &Heartbeats,
) -> Result<Option<ControlServer>> {
    let Some(path) = path else { return Ok(None) };
    let target = Arc::new(VmControl::new(
        vm.handle(),
        vm.ram.clone(),
        vm.bus.balloon.is_some(),
        beats.clone(),
    ));
    let server = ControlServer::start(path, target)
        .with_context(|| format!("cannot open the control socket {}", path.display()))?;
    eprintln!("godwit: control socket {}", server.path().display());
    Ok(Some(server))
}

pub fn run(args: RunArgs) -> Result<i32> {
    let beats = Heartbeats::default();
    let mut vm = build_vm(&args, &beats).context("cannot start the VM")?;
    choose_cpu(&mut vm, args.interpreter);
    console_input(vm.handle())?;
    let server = control_server(args.control.as_deref(), &vm, &beats)?;
    let started = std::time::Instant::now();
    let first = vm.hart.instret();
    let exit = vm.run();
    let secs = started.elapsed().as_secs_f64();
    let insns = vm.hart.instret() - first;
    if let Some(s) = server {
        s.shutdown();
    }
    eprintln!(
        "godwit: guest ended: {exit:?}; {insns} instructions in {secs:.2} s ({:.1} MIPS, {})",
        insns as f64 / secs / 1e6,
        cpu_name(&vm),
    );
    Ok(exit.status())
}

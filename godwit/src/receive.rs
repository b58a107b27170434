//! `godwit receive`: wait for an incoming migration, build the VM it
//! describes, receive it, and run it.

use crate::console::{self, Heartbeats, Tap};
use crate::run;
use anyhow::{anyhow, Context, Result};
use godwit_machine::{check_mem, Vm, VmHandle};
use godwit_memory::GuestRam;
use godwit_migration::{dest, DestVm, Security};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Address to accept the migration on (HOST:PORT).
    #[arg(long)]
    listen: String,
    /// Open a QMP-style control socket at this path once the VM runs.
    #[arg(long)]
    control: Option<PathBuf>,
    /// Refuse a VM whose RAM size is not this (bytes or K/M/G suffix).
    #[arg(long, value_parser = crate::size::parse_size)]
    mem: Option<u64>,
    /// How long to watch the guest after the migration completes before
    /// reporting back ("throughput after"), in ms.
    #[arg(long, default_value_t = 1000)]
    report_after_ms: u64,
    /// TLS identity folder (`godwit tls-gen`): the source must present a
    /// certificate from the same CA.
    #[arg(long, required_unless_present = "tls_plain")]
    tls_dir: Option<PathBuf>,
    /// Accept the migration over plain TCP (no authentication, no encryption).
    #[arg(long, conflicts_with = "tls_dir")]
    tls_plain: bool,
    /// Run every instruction in the interpreter (no translation to host code).
    #[arg(long)]
    interpreter: bool,
}

/// The VM being received, for the engine.
struct VmDest {
    vm: VmHandle,
    ram: Arc<GuestRam>,
}

impl DestVm for VmDest {
    fn ram(&self) -> Arc<GuestRam> {
        self.ram.clone()
    }
    fn load_state(&self, state: &[u8]) -> Result<()> {
        let state = godwit_machine::VmState::decode(state)?;
        self.vm
            .exec(move |vm| vm.restore_state(&state))
            .map_err(|e| anyhow!(e))??;
        Ok(())
    }
    fn resume(&self) -> Result<()> {
        self.vm.resume().map_err(|e| anyhow!(e))
    }
    fn set_dirty_logging(&self, on: bool) -> Result<()> {
        self.vm
            .exec(move |vm| vm.set_dirty_logging(on))
            .map_err(|e| anyhow!(e))
    }
    fn take_dirty_log(&self) -> Result<Vec<u64>> {
        self.vm
            .exec(|vm| vm.take_dirty_log())
            .map_err(|e| anyhow!(e))
    }
}

pub fn run(args: Args) -> Result<i32> {
    let security = Security::from_dir(args.tls_dir.as_deref())?;
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "godwit: waiting for a migration on {} ({})",
        listener.local_addr()?,
        security.name()
    );
    let want = args.mem;
    let incoming = dest::accept(&listener, &security, |h| {
        check_mem(h.ram_bytes).map_err(|e| e.to_string())?;
        match want {
            Some(m) if m != h.ram_bytes => Err(format!(
                "this destination takes VMs of {m} bytes of RAM, the source's has {}",
                h.ram_bytes
            )),
            _ => Ok(()),
        }
    })?;
    drop(listener);
    let hello = incoming.hello.clone();
    eprintln!(
        "godwit: receiving a {} migration ({} MiB RAM{})",
        hello.mode,
        hello.ram_bytes >> 20,
        if hello.balloon { ", balloon" } else { "" }
    );
    let beats = Heartbeats::default();
    let mut vm = Vm::empty(
        hello.ram_bytes,
        Box::new(Tap::new(std::io::stdout(), beats.clone())),
        hello.balloon,
    )?;
    vm.set_paused(true);
    run::choose_cpu(&mut vm, args.interpreter);
    let handle = vm.handle();
    let dvm = VmDest {
        vm: handle.clone(),
        ram: vm.ram.clone(),
    };
    let server = run::control_server(args.control.as_deref(), &vm, &beats)?;
    let vcpu = std::thread::Builder::new()
        .name("vcpu".into())
        .spawn(move || {
            let started = Instant::now();
            let first = vm.hart.instret();
            let exit = vm.run();
            (exit, vm.hart.instret() - first, started.elapsed())
        })
        .context("cannot start the vCPU thread")?;
    let window = Duration::from_millis(args.report_after_ms.min(60_000));
    let received = incoming.run(&dvm, window, &|resumed, completed| {
        console::dest_view(&beats, resumed, completed)
    });
    match received {
        Ok(r) => eprintln!("godwit: migration received: {}", r.report),
        Err(e) => {
            let _ = handle.quit();
            let _ = vcpu.join();
            if let Some(s) = server {
                s.shutdown();
            }
            return Err(e.context("the incoming migration failed"));
        }
    }
    run::console_input(handle)?;
    let (exit, insns, took) = vcpu
        .join()
        .map_err(|_| anyhow!("the vCPU thread panicked"))?;
    if let Some(s) = server {
        s.shutdown();
    }
    eprintln!(
        "godwit: guest ended: {exit:?}; {insns} instructions in {:.2} s",
        took.as_secs_f64()
    );
    Ok(exit.status())
}

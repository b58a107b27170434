//! `godwit receive`: wait for an incoming migration, build the VM it
//! describes, receive it, and run it.

use anyhow::{bail, Result};
use godwit_migration::Security;
use godwit_vmm::drive;
use godwit_vmm::incoming::{self, ReceiveOptions};
use godwit_vmm::netdev::{self, NetSpec};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Address to accept the migration on (HOST:PORT).
    #[arg(long)]
    listen: String,
    /// Open a QMP-style control socket at this path.
    #[arg(long)]
    control: Option<PathBuf>,
    /// Refuse a VM whose RAM size is not this (bytes or K/M/G suffix).
    #[arg(long, value_parser = godwit_vmm::size::parse_size)]
    mem: Option<u64>,
    /// Refuse a VM with another number of vCPUs.
    #[arg(long)]
    cpus: Option<u32>,
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
    /// The image of the VM's next disk, on storage both hosts share:
    /// `file=PATH[,readonly][,id=NAME]`, one per disk, in order; opened only
    /// once the VM's state arrives (the source lets go of it first).
    #[arg(long = "drive", value_name = "SPEC")]
    drives: Vec<String>,
    /// The TAP for the VM's next NIC (its MAC comes from the source):
    /// `tap=NAME`; one per NIC, in order.
    #[arg(long = "net", value_name = "tap=NAME")]
    net: Vec<NetSpec>,
    /// Testing only: in a protected post-copy, make held disk writes on the
    /// images this long after their checkpoint is confirmed (a test kills
    /// the destination in that window).
    #[arg(long, hide = true, value_name = "MS", default_value_t = 0)]
    x_disk_release_delay_ms: u64,
}

pub fn run(args: Args) -> Result<i32> {
    let harts = args.cpus.map(crate::run::check_cpus).transpose()?;
    if let Some(s) = args.net.iter().find(|s| s.mac.is_some() || !s.offloads) {
        bail!(
            "--net tap={}: on the destination only tap= is given; the NIC's MAC and offloads come from the source",
            s.tap
        );
    }
    let taps = netdev::open_taps(&args.net)?;
    let drives = args
        .drives
        .iter()
        .map(|s| drive::parse_drive(s))
        .collect::<Result<Vec<_>>>()?;
    incoming::receive(ReceiveOptions {
        security: Security::from_dir(args.tls_dir.as_deref())?,
        listen: args.listen,
        control: args.control,
        mem: args.mem,
        harts,
        report_after: Duration::from_millis(args.report_after_ms.min(60_000)),
        interpreter: args.interpreter,
        taps,
        drives,
        disk_release_delay: Duration::from_millis(args.x_disk_release_delay_ms.min(600_000)),
    })
}

//! `godwit run`: boot a VM (or restore one from a snapshot) and serve its
//! console and control socket until it ends.

use anyhow::{bail, Result};
use godwit_machine::{BoardConfig, DeviceConfig, HostDevice, MAX_HARTS};
use godwit_vmm::drive;
use godwit_vmm::netdev::{self, NetSpec};
use godwit_vmm::runner::{self, Boot, Expect, RunOptions};
use godwit_vmm::{guest, size};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct RunArgs {
    /// Kernel `Image` (default: the built guest image, see guest/build.sh).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs (default: the built guest image).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Guest RAM size: bytes, or with a K/M/G suffix (512M, 1G); default
    /// 512M. With --restore: the size the snapshot must have.
    #[arg(long, value_parser = size::parse_size)]
    mem: Option<u64>,
    /// Number of vCPUs (harts), 1 to 8, default 2; each runs on its own
    /// host thread.
    /// With --restore: the count the snapshot must have.
    #[arg(long)]
    cpus: Option<u32>,
    /// M-mode firmware to boot through, e.g. OpenSBI's `fw_dynamic.bin`
    /// (loaded at the start of RAM; the kernel is its next stage). Without
    /// it the VMM's own SBI serves the kernel.
    #[arg(long, conflicts_with = "restore")]
    bios: Option<PathBuf>,
    /// Guest workload (adds `godwit.workload=NAME` to the kernel command line).
    #[arg(long)]
    workload: Option<String>,
    /// Extra kernel command line words, e.g. "wws_mb=64 pages_per_s=0".
    #[arg(long, default_value = "")]
    append: String,
    /// Board without the virtio-balloon (no free page reporting). With
    /// --restore: the snapshot must have no balloon.
    #[arg(long)]
    no_balloon: bool,
    /// A NIC (virtio-net) on an existing TAP device:
    /// `tap=NAME[,mac=52:54:00:12:34:56][,offload=on|off]`; repeatable.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC][,offload=on|off]")]
    net: Vec<NetSpec>,
    /// A disk: `file=PATH[,readonly][,id=NAME]`, repeatable, each a
    /// virtio-blk device after the balloon (one drive is the guest's
    /// /dev/vda). The image's size must be a non-zero multiple of 512; it
    /// is locked while the VM runs (exclusively, or shared when readonly).
    /// The id (the guest's serial, at most 20 bytes) defaults to the file
    /// name; write a comma in PATH as `,,`. With --restore: the snapshot's
    /// disks, in order.
    #[arg(long = "drive", value_name = "SPEC")]
    drives: Vec<String>,
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
    /// Seconds after boot by which a guest that has written nothing to its
    /// console is reported on stderr as probably dead before its console
    /// came up (0: never).
    #[arg(long, value_name = "SECS", default_value_t = runner::CONSOLE_WATCHDOG.as_secs())]
    console_watchdog: u64,
}

/// Default vCPU count.
pub const DEFAULT_CPUS: u32 = 2;

/// Checks a `--cpus` value.
pub fn check_cpus(n: u32) -> Result<u32> {
    if !(1..=MAX_HARTS).contains(&n) {
        bail!("--cpus {n}: a VM has 1 to {MAX_HARTS} vCPUs");
    }
    Ok(n)
}

/// The default RAM size.
const DEFAULT_MEM: u64 = 512 << 20;

pub fn run(args: RunArgs) -> Result<i32> {
    let cpus = args.cpus.map(check_cpus).transpose()?;
    let mut devices = if args.no_balloon {
        vec![]
    } else {
        vec![DeviceConfig::Balloon]
    };
    // Slot order: the balloon, the NICs, the disks.
    let mut host: Vec<HostDevice> = devices.iter().map(|_| HostDevice::None).collect();
    devices.extend(netdev::nic_devices(&args.net));
    host.extend(
        netdev::open_taps(&args.net)?
            .into_iter()
            .map(HostDevice::Tap),
    );
    for (config, disk) in drive::open_drives(&args.drives)? {
        devices.push(config);
        host.push(disk);
    }
    let boot = match args.restore {
        Some(path) => Boot::Snapshot {
            path,
            expect: Expect {
                harts: cpus,
                ram_bytes: args.mem,
                devices: (args.no_balloon || !args.net.is_empty() || !args.drives.is_empty())
                    .then_some(devices),
            },
            host,
        },
        None => {
            let board = BoardConfig {
                harts: cpus.unwrap_or(DEFAULT_CPUS),
                ram_bytes: args.mem.unwrap_or(DEFAULT_MEM),
                devices,
            };
            board.validate()?;
            let (kernel, initrd) = guest::resolve(args.kernel, args.initrd)?;
            Boot::Kernel {
                board,
                kernel,
                initrd,
                bios: args.bios,
                host,
                cmdline: guest::cmdline(args.workload.as_deref(), &args.append),
            }
        }
    };
    runner::run_vm(RunOptions {
        boot,
        control: args.control,
        interpreter: args.interpreter,
        console_watchdog: (args.console_watchdog > 0)
            .then(|| std::time::Duration::from_secs(args.console_watchdog)),
    })
}

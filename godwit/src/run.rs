//! `godwit run`: boot a VM (or restore one from a snapshot) and serve its
//! console and control socket until it ends.

use anyhow::{anyhow, bail, Result};
use godwit_machine::{BlockBackend, BoardConfig, DeviceConfig, FileDisk, HostDevice, MAX_HARTS};
use godwit_vmm::netdev::{self, NetSpec};
use godwit_vmm::runner::{self, Boot, Expect, RunOptions};
use godwit_vmm::{guest, size};
use std::path::{Path, PathBuf};

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

/// Longest disk id (the virtio-blk device ID string).
const ID_BYTES: usize = 20;

/// A `--drive` as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSpec {
    pub path: PathBuf,
    pub readonly: bool,
    pub id: String,
}

/// Splits at single commas; `,,` stands for a comma.
fn split_options(spec: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                cur.push(',');
            }
            ',' => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    parts
}

/// The file name, cut to [`ID_BYTES`] at a character boundary.
fn default_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut end = name.len().min(ID_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// Parses `file=PATH[,readonly][,id=NAME]`.
pub fn parse_drive(spec: &str) -> Result<DriveSpec> {
    let bad = |why: String| anyhow!("--drive {spec}: {why}");
    let mut path: Option<PathBuf> = None;
    let mut readonly = false;
    let mut id: Option<String> = None;
    if spec.is_empty() {
        return Err(bad("no file=PATH".into()));
    }
    for part in split_options(spec) {
        match part.split_once('=') {
            Some(("file", v)) => {
                if v.is_empty() {
                    return Err(bad("file= needs a path".into()));
                }
                if path.replace(PathBuf::from(v)).is_some() {
                    return Err(bad("file= given twice".into()));
                }
            }
            Some(("id", v)) => {
                if v.is_empty() || v.len() > ID_BYTES || v.contains('\0') {
                    return Err(bad(format!(
                        "id {v:?}: an id is 1 to {ID_BYTES} bytes, without NUL"
                    )));
                }
                if id.replace(v.to_string()).is_some() {
                    return Err(bad("id= given twice".into()));
                }
            }
            Some(("readonly", v)) => {
                readonly = match v {
                    "on" | "true" | "yes" | "1" => true,
                    "off" | "false" | "no" | "0" => false,
                    _ => return Err(bad(format!("readonly={v}: expected on or off"))),
                }
            }
            None if part == "readonly" => readonly = true,
            _ if part.is_empty() => return Err(bad("an empty option".into())),
            _ => {
                return Err(bad(format!(
                    "unknown option {part:?} (options: file=PATH, readonly, id=NAME)"
                )))
            }
        }
    }
    let path = path.ok_or_else(|| bad("no file=PATH".into()))?;
    let id = match id {
        Some(id) => id,
        None => default_id(&path),
    };
    Ok(DriveSpec { path, readonly, id })
}

/// Parses every `--drive` and opens its image (locked): every error, from
/// a malformed spec to an image in use, comes before the VM starts.
pub fn open_drives(specs: &[String]) -> Result<Vec<(DeviceConfig, HostDevice)>> {
    let parsed = specs
        .iter()
        .map(|s| parse_drive(s))
        .collect::<Result<Vec<_>>>()?;
    for (i, a) in parsed.iter().enumerate() {
        if parsed[..i].iter().any(|b| b.id == a.id) {
            bail!(
                "--drive {}: id {:?} is taken by another drive (give one with id=NAME)",
                specs[i],
                a.id
            );
        }
    }
    parsed
        .into_iter()
        .zip(specs)
        .map(|(d, spec)| {
            let disk =
                FileDisk::open(&d.path, d.readonly).map_err(|e| anyhow!("--drive {spec}: {e}"))?;
            let config = DeviceConfig::Block {
                bytes: disk.len(),
                readonly: d.readonly,
                id: d.id,
            };
            Ok((config, HostDevice::Disk(Box::new(disk))))
        })
        .collect()
}

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
    for (config, disk) in open_drives(&args.drives)? {
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_specs() {
        let d = parse_drive("file=/img/root.raw").unwrap();
        assert_eq!(
            d,
            DriveSpec {
                path: "/img/root.raw".into(),
                readonly: false,
                id: "root.raw".into()
            }
        );
        let d = parse_drive("readonly,id=data,file=a,,b").unwrap();
        assert_eq!(
            (d.path, d.readonly, d.id),
            ("a,b".into(), true, "data".into())
        );
        assert_eq!(parse_drive("file=a,,").unwrap().path, PathBuf::from("a,"));
        assert!(!parse_drive("file=x,readonly=off").unwrap().readonly);
        assert!(parse_drive("file=x,readonly=on").unwrap().readonly);
        // The default id is the file name cut to 20 bytes (whole characters).
        assert_eq!(
            parse_drive("file=/a/abcdefghijklmnopqrstuvwxyz.img")
                .unwrap()
                .id,
            "abcdefghijklmnopqrst"
        );
        assert_eq!(parse_drive("file=/a/ééééééééééé").unwrap().id, "éééééééééé");
        for (bad, want) in [
            ("", "no file=PATH"),
            ("readonly", "no file=PATH"),
            ("file=", "needs a path"),
            ("file=a,file=b", "given twice"),
            ("file=a,", "an empty option"),
            ("file=a,format=raw", "unknown option \"format=raw\""),
            ("file=a,id=", "an id is 1 to 20 bytes"),
            ("file=a,id=123456789012345678901", "an id is 1 to 20 bytes"),
            ("file=a,readonly=maybe", "expected on or off"),
        ] {
            let e = parse_drive(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad:?}: {e}");
            assert!(e.starts_with(&format!("--drive {bad}:")), "{e}");
        }
    }
}

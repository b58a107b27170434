//! The guest Godwit boots by default: where `guest/build.sh` leaves it, and
//! the kernel command line every guest gets.

use anyhow::{bail, Result};
use std::path::PathBuf;

/// The cache folder `guest/build.sh` uses: `$GODWIT_CACHE`, else
/// `$XDG_CACHE_HOME/godwit`, else `~/.cache/godwit`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GODWIT_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("godwit");
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/godwit")
}

/// Kernel and initrd to boot: the given ones, else the built default image.
pub fn resolve(
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
) -> Result<(PathBuf, Option<PathBuf>)> {
    let default = cache_dir().join("guest/default");
    let kernel = kernel.unwrap_or_else(|| default.join("Image"));
    let initrd = Some(initrd.unwrap_or_else(|| default.join("initramfs.cpio.gz")));
    for p in std::iter::once(&kernel).chain(initrd.iter()) {
        if !p.exists() {
            bail!("{} does not exist (build the guest image with guest/build.sh, or pass --kernel/--initrd)", p.display());
        }
    }
    Ok((kernel, initrd))
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

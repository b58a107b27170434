//! Finding the guest image: explicit paths, or the default one that
//! `guest/build.sh` leaves in the cache.

use anyhow::{bail, Result};
use std::path::PathBuf;

/// The cache folder `guest/build.sh` uses.
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
    let kernel = match kernel {
        Some(k) => k,
        None => default.join("Image"),
    };
    let initrd = match initrd {
        Some(i) => Some(i),
        None => Some(default.join("initramfs.cpio.gz")),
    };
    for p in std::iter::once(&kernel).chain(initrd.iter()) {
        if !p.exists() {
            bail!("{} does not exist (build the guest image with guest/build.sh, or pass --kernel/--initrd)", p.display());
        }
    }
    Ok((kernel, initrd))
}

//! The guest Godwit boots by default: where `guest/build.sh` leaves it, and
//! the kernel command line every guest gets; where `guest/debian/build.sh`
//! leaves the Debian guest.

use anyhow::{bail, Context, Result};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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

/// The Debian guest's files, as `guest/debian/build.sh` leaves them in
/// `<cache>/debian/default/`.
#[derive(Clone, Debug)]
pub struct DebianImage {
    /// The stock Debian kernel (an uncompressed RISC-V `Image`).
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The root file system: raw ext4, the whole of `/dev/vda`. Boot a copy
    /// of it (see [`sparse_copy`]): the guest writes to its disk.
    pub disk: PathBuf,
    /// OpenSBI's `fw_dynamic.bin` from the image.
    pub bios: PathBuf,
}

/// What the Debian guest needs on its kernel command line (as
/// `guest/debian/qemu-boot.sh` gives it).
pub const DEBIAN_APPEND: &str = "root=/dev/vda rw console=ttyS0";

/// The line the Debian guest prints on its console when it is up (followed
/// by JSON: `{"cpus":N,"mem_kb":M,"kernel":"..."}`).
pub const DEBIAN_READY: &str = "GODWIT DEBIAN READY ";

/// The built Debian guest, or an error naming what is missing and how to
/// build it.
pub fn debian_image() -> Result<DebianImage> {
    let dir = cache_dir().join("debian/default");
    let img = DebianImage {
        kernel: dir.join("Image"),
        initrd: dir.join("initrd.img"),
        disk: dir.join("disk.img"),
        bios: dir.join("fw_dynamic.bin"),
    };
    for p in [&img.kernel, &img.initrd, &img.disk, &img.bios] {
        if !p.is_file() {
            bail!(
                "the Debian guest is not built: {} is missing (run guest/debian/build.sh as root, about 10-13 minutes the first time; scripts/test.sh does)",
                p.display()
            );
        }
    }
    Ok(img)
}

/// Copies `from` to a new file `to`, leaving holes where `from` has runs
/// of zeros (4 KiB granules), so a copy of a mostly empty disk image takes
/// only the space of its data. `to` must not exist.
pub fn sparse_copy(from: &Path, to: &Path) -> Result<()> {
    const CHUNK: usize = 1 << 20;
    const GRANULE: usize = 4096;
    let mut src =
        std::fs::File::open(from).with_context(|| format!("cannot open {}", from.display()))?;
    let len = src.metadata()?.len();
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .with_context(|| format!("cannot create {}", to.display()))?;
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(CHUNK as u64) as usize;
        src.read_exact(&mut buf[..n])
            .with_context(|| format!("cannot read {}", from.display()))?;
        // Runs of granules with data, each written with one call.
        let granules = n.div_ceil(GRANULE);
        let mut i = 0;
        while i < granules {
            let has_data = |g: usize| {
                buf[g * GRANULE..((g + 1) * GRANULE).min(n)]
                    .iter()
                    .any(|&b| b != 0)
            };
            if !has_data(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < granules && has_data(i) {
                i += 1;
            }
            let (from_b, to_b) = (start * GRANULE, (i * GRANULE).min(n));
            dst.seek(SeekFrom::Start(at + from_b as u64))?;
            dst.write_all(&buf[from_b..to_b])
                .with_context(|| format!("cannot write {}", to.display()))?;
        }
        at += n as u64;
    }
    dst.set_len(len)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copy_keeps_data_and_leaves_holes() {
        let dir = std::env::temp_dir().join(format!("godwit-sparse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        // 8 MiB: data at the start, one byte in the middle of a granule, a
        // partial granule at the end; zeros elsewhere.
        let mut data = vec![0u8; 8 << 20];
        data[..5000].fill(0xa5);
        data[3 << 20 | 1234] = 7;
        let n = data.len();
        data[n - 10..].fill(1);
        let odd = &data[..n - 100]; // not a multiple of 4096
        std::fs::write(&a, odd).unwrap();
        sparse_copy(&a, &b).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), odd);
        let blocks = std::fs::metadata(&b).unwrap().blocks() * 512;
        assert!(
            blocks < 1 << 20,
            "{blocks} bytes allocated for 4 granules of data"
        );
        assert!(
            sparse_copy(&a, &b).is_err(),
            "an existing file is not overwritten"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Loading a riscv64 Linux `Image` and an initrd into guest RAM.
//!
//! The `Image` header (Documentation/riscv/boot-image-header.rst):
//! code0/code1 (8 bytes), text_offset (u64 at 8), image_size (u64 at 16),
//! flags (u64 at 24), version (u32 at 32), reserved, magic "RISCV\0\0\0"
//! (deprecated, at 48), magic2 "RSC\x05" (at 56).

use godwit_memory::GuestRam;

/// Errors while loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: not a RISC-V Linux Image (missing the \"RSC\\x05\" magic at offset 56)")]
    NotRiscvImage { path: String },
    #[error(
        "{path}: {what} ({size} bytes) does not fit in guest RAM ({ram} bytes); use a larger --mem"
    )]
    TooBig {
        path: String,
        what: &'static str,
        size: u64,
        ram: u64,
    },
    #[error("{path}: not M-mode firmware: {why}")]
    NotFirmware { path: String, why: String },
    #[error("{path}: more than {limit} bytes, the guest's RAM: it cannot be loaded (is it the right file?)")]
    FileTooBig { path: String, limit: u64 },
    #[error("cannot read {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error(transparent)]
    Memory(#[from] godwit_memory::MemoryError),
}

/// Reads the file at `path`, refusing to read more than `limit` bytes (the
/// guest's RAM): a device like `/dev/zero`, or a huge file given by
/// mistake, is an error instead of an unbounded allocation.
pub fn read_bounded(path: &std::path::Path, limit: u64) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    let p = path.display().to_string();
    let err = |err| LoadError::Read {
        path: p.clone(),
        err,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    if meta.is_dir() {
        return Err(err(std::io::Error::other("it is a directory")));
    }
    if meta.is_file() && meta.len() > limit {
        return Err(LoadError::FileTooBig { path: p, limit });
    }
    let mut out = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(err)?;
    if out.len() as u64 > limit {
        return Err(LoadError::FileTooBig { path: p, limit });
    }
    Ok(out)
}

/// Where things were placed.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    pub kernel_entry: u64,
    pub kernel_end: u64,
    pub initrd: Option<(u64, u64)>,
    pub dtb: u64,
    /// The last page of RAM: the firmware's dynamic info, if any.
    pub fw_info: u64,
}

/// Parsed `Image` header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    pub text_offset: u64,
    pub image_size: u64,
}

/// Parses the riscv64 `Image` header.
pub fn parse_image(path: &str, bytes: &[u8]) -> Result<ImageHeader, LoadError> {
    if bytes.len() < 64 || &bytes[56..60] != b"RSC\x05" {
        return Err(LoadError::NotRiscvImage {
            path: path.to_string(),
        });
    }
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8]));
    let image_size = u64_at(16).max(bytes.len() as u64);
    Ok(ImageHeader {
        text_offset: u64_at(8),
        image_size,
    })
}

/// Space kept free at the top of RAM for the device tree (and, in its last
/// page, the firmware's dynamic info).
pub const DTB_RESERVE: u64 = 64 << 10;
/// Most bytes of device tree (the rest of the reserve is the info page).
pub const DTB_MAX: u64 = DTB_RESERVE - 4096;

/// OpenSBI's `struct fw_dynamic_info` magic ("OSBI") and the version laid
/// out by [`FirmwareInfo::bytes`].
const FW_DYNAMIC_MAGIC: u64 = 0x4942_534f;
const FW_DYNAMIC_VERSION: u64 = 2;

/// What `fw_dynamic` firmware is told: where the next stage (the kernel)
/// starts and in which mode.
pub struct FirmwareInfo {
    /// The kernel's entry.
    pub next_addr: u64,
}

impl FirmwareInfo {
    /// The structure as firmware reads it: six little-endian `unsigned
    /// long`s: magic, version, next_addr, next_mode (1 = S-mode), options
    /// (0), boot_hart (-1: whichever hart wins the firmware's lottery).
    pub fn bytes(&self) -> [u8; 48] {
        let mut b = [0u8; 48];
        for (i, v) in [
            FW_DYNAMIC_MAGIC,
            FW_DYNAMIC_VERSION,
            self.next_addr,
            1,
            0,
            u64::MAX,
        ]
        .into_iter()
        .enumerate()
        {
            b[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

/// Checks that `bytes` can be M-mode firmware loaded at the start of RAM
/// (a raw binary such as OpenSBI's `fw_dynamic.bin`): not empty, small
/// enough to end before the kernel, and not obviously something else.
pub fn check_firmware(path: &str, bytes: &[u8]) -> Result<(), LoadError> {
    let bad = |why: &str| {
        Err(LoadError::NotFirmware {
            path: path.to_string(),
            why: why.to_string(),
        })
    };
    if bytes.len() < 256 {
        return bad("it is empty or too short for firmware");
    }
    if bytes.len() as u64 > crate::layout::MAX_FIRMWARE {
        return bad("it is larger than 2 MiB, where the kernel starts");
    }
    if bytes.starts_with(b"\x7fELF") {
        return bad("it is an ELF file; give the raw binary (fw_dynamic.bin, not fw_dynamic.elf)");
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return bad("it is gzip-compressed");
    }
    if bytes.len() >= 64 && &bytes[56..60] == b"RSC\x05" {
        return bad("it is a Linux kernel Image (give it with --kernel)");
    }
    if bytes[..256].iter().all(|&b| b == 0) {
        return bad("it starts with zeros, not code");
    }
    Ok(())
}

/// Copies the kernel (at RAM base + text_offset) and the initrd (high in
/// RAM, below the device tree) and returns their placement.
pub fn load(
    ram: &GuestRam,
    kernel_path: &str,
    kernel: &[u8],
    initrd: Option<&[u8]>,
) -> Result<Placement, LoadError> {
    let hdr = parse_image(kernel_path, kernel)?;
    let size = ram.size() as u64;
    // A 2 MiB-aligned load address is what the kernel expects on rv64.
    let text_offset = if hdr.text_offset.is_multiple_of(2 << 20) {
        hdr.text_offset
    } else {
        2 << 20
    };
    // The header's sizes come from the file: checked sums, so that one
    // near `u64::MAX` is "too big", not an overflow.
    let needed = text_offset
        .checked_add(hdr.image_size)
        .and_then(|n| n.checked_add(DTB_RESERVE));
    if needed.is_none_or(|n| n > size) {
        return Err(LoadError::TooBig {
            path: kernel_path.into(),
            what: "kernel",
            size: hdr.image_size,
            ram: size,
        });
    }
    // Both fit in RAM now (checked just above).
    let kernel_entry = ram.base() + text_offset;
    let kernel_end = kernel_entry + hdr.image_size;
    ram.write(kernel_entry, kernel)?;
    let ram_end = ram.base() + size;
    let dtb = (ram_end - DTB_RESERVE) & !0xfff;
    let initrd = match initrd {
        None => None,
        Some(bytes) => {
            let len = bytes.len() as u64;
            let start = dtb.checked_sub(len).map(|s| s & !0xfff);
            match start {
                // Keep clear of the kernel and the memory it uses right after
                // its image (early page tables, BSS), roughly 1/4 of the image.
                Some(s) if s >= kernel_end.saturating_add(hdr.image_size / 4 + (2 << 20)) => {
                    ram.write(s, bytes)?;
                    Some((s, s + len))
                }
                _ => {
                    return Err(LoadError::TooBig {
                        path: "initrd".into(),
                        what: "kernel + initrd",
                        size: hdr.image_size.saturating_add(len),
                        ram: size,
                    })
                }
            }
        }
    };
    Ok(Placement {
        kernel_entry,
        kernel_end,
        initrd,
        dtb,
        fw_info: ram_end - 4096,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(size: usize) -> Vec<u8> {
        let mut v = vec![0u8; size];
        v[8..16].copy_from_slice(&(2u64 << 20).to_le_bytes());
        v[16..24].copy_from_slice(&(size as u64).to_le_bytes());
        v[48..56].copy_from_slice(b"RISCV\0\0\0");
        v[56..60].copy_from_slice(b"RSC\x05");
        v
    }

    #[test]
    fn rejects_non_images() {
        assert!(matches!(
            parse_image("x", b"hello"),
            Err(LoadError::NotRiscvImage { .. })
        ));
        assert!(matches!(
            parse_image("x", &[0u8; 4096]),
            Err(LoadError::NotRiscvImage { .. })
        ));
    }

    #[test]
    fn firmware_checks() {
        let mut fw = vec![0x13u8; 4096];
        assert!(check_firmware("f", &fw).is_ok());
        assert!(check_firmware("f", &fw[..100]).is_err());
        assert!(check_firmware("f", &vec![1u8; 3 << 20]).is_err());
        assert!(check_firmware("f", &image(8192)).is_err());
        assert!(check_firmware("f", &[0u8; 4096]).is_err());
        fw[..4].copy_from_slice(b"\x7fELF");
        assert!(check_firmware("f", &fw).is_err());
        let info = FirmwareInfo {
            next_addr: 0x8020_0000,
        }
        .bytes();
        assert_eq!(&info[0..8], &0x4942_534fu64.to_le_bytes());
        assert_eq!(&info[16..24], &0x8020_0000u64.to_le_bytes());
    }

    #[test]
    fn reads_are_bounded() {
        let e = read_bounded(std::path::Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(
            matches!(e, LoadError::FileTooBig { limit, .. } if limit == 1 << 20),
            "{e}"
        );
        assert!(matches!(
            read_bounded(std::path::Path::new("/"), 1 << 20),
            Err(LoadError::Read { .. })
        ));
        assert!(matches!(
            read_bounded(std::path::Path::new("/nonexistent/godwit"), 1 << 20),
            Err(LoadError::Read { .. })
        ));
        let me = std::env::current_exe().unwrap();
        assert!(matches!(
            read_bounded(&me, 16),
            Err(LoadError::FileTooBig { .. })
        ));
    }

    /// Found by fuzzing (issue 18 §4; target `loader`): an
    /// `Image` header whose `image_size` is near `u64::MAX` overflowed
    /// `text_offset + image_size` (a panic with overflow checks, a kernel
    /// "placed" past the end of RAM without them).
    #[test]
    fn huge_image_size_is_too_big_not_an_overflow() {
        let ram = GuestRam::new(0x8000_0000, 4 << 20).unwrap();
        for claimed in [u64::MAX, u64::MAX - (2 << 20), u64::MAX - DTB_RESERVE + 1] {
            let mut k = image(8192);
            k[16..24].copy_from_slice(&claimed.to_le_bytes());
            assert_eq!(parse_image("k", &k).unwrap().image_size, claimed);
            let e = load(&ram, "k", &k, Some(&[1u8; 100]));
            assert!(
                matches!(e, Err(LoadError::TooBig { what: "kernel", .. })),
                "{claimed:#x}: {e:?}"
            );
        }
    }

    #[test]
    fn places_kernel_initrd_and_dtb() {
        let ram = GuestRam::new(0x8000_0000, 64 << 20).unwrap();
        let p = load(&ram, "k", &image(8192), Some(&[7u8; 10000])).unwrap();
        assert_eq!(p.kernel_entry, 0x8020_0000);
        let (s, e) = p.initrd.unwrap();
        assert!(s > p.kernel_end && e <= p.dtb);
        assert_eq!(ram.read_le::<1>(s).unwrap(), [7]);
        let small = GuestRam::new(0x8000_0000, 4 << 20).unwrap();
        assert!(matches!(
            load(&small, "k", &image(8192), Some(&vec![1u8; 3 << 20])),
            Err(LoadError::TooBig { .. })
        ));
    }
}

//! A TAP device as a virtio-net backend: frames with their virtio-net
//! header (`IFF_VNET_HDR`, 12 bytes), non-blocking, the checksum and TSO
//! offloads the guest accepted passed on with `TUNSETOFFLOAD`.
//!
//! The TAP must exist already (`ip tuntap add dev NAME mode tap`, attached
//! to a bridge): opening a name that does not exist is an error here, not
//! a new device nobody configured.

use godwit_devices::NetBackend;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

/// Why a TAP cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP device {0} does not exist (create it with `ip tuntap add dev {0} mode tap`, or bring the testbed up)")]
    NotFound(String),
    #[error("{0} is a network device but not a TAP")]
    NotTap(String),
    #[error("TAP device {0} is busy: another process has it open")]
    Busy(String),
    #[error("TAP name {0:?} is not a valid interface name (1 to 15 bytes, no '/' or spaces)")]
    BadName(String),
    #[error("cannot open TAP device {name}: {err}")]
    Open { name: String, err: io::Error },
}

/// An open TAP device.
pub struct Tap {
    file: File,
    name: String,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name.contains(['/', ' ', '\0'])
        && name != "."
        && name != ".."
}

impl Tap {
    /// Opens the existing TAP device `name` (in this network namespace).
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::BadName(name.into()));
        }
        let sys = std::path::Path::new("/sys/class/net").join(name);
        if !sys.exists() {
            return Err(TapError::NotFound(name.into()));
        }
        if !sys.join("tun_flags").exists() {
            return Err(TapError::NotTap(name.into()));
        }
        let open_err = |err| TapError::Open {
            name: name.into(),
            err,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(open_err)?;
        // SAFETY: `ifreq` is plain old data; all zeroes is valid.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        // SAFETY: TUNSETIFF reads and writes the `ifreq` we pass, which
        // outlives the call, on a descriptor we own.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut ifr) } < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EBUSY) => TapError::Busy(name.into()),
                _ => open_err(e),
            });
        }
        let hdr: libc::c_int = godwit_devices::virtio::net::HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int we pass by pointer.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr) } < 0 {
            return Err(open_err(io::Error::last_os_error()));
        }
        let tap = Tap {
            file,
            name: name.into(),
        };
        tap.offload(0).map_err(open_err)?;
        Ok(tap)
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn offload(&self, flags: libc::c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A second handle on the same device (the VMM's own announcements go
    /// out on it while the device owns the first).
    pub fn try_clone(&self) -> io::Result<Tap> {
        // SAFETY: dup of a descriptor we own; the result is checked.
        let fd = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(Tap {
            file,
            name: self.name.clone(),
        })
    }
}

use std::os::unix::fs::OpenOptionsExt;

impl NetBackend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Read;
        self.file.read(buf)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        use std::io::Write;
        // A TAP takes a whole frame per write, or none.
        let n = self.file.write(frame)?;
        if n != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to the TAP",
            ));
        }
        Ok(())
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn set_offloads(&mut self, csum: bool, tso4: bool, tso6: bool) -> io::Result<()> {
        let mut f = 0;
        if csum {
            f |= TUN_F_CSUM;
            // TSO needs checksum offload.
            if tso4 {
                f |= TUN_F_TSO4;
            }
            if tso6 {
                f |= TUN_F_TSO6;
            }
        }
        self.offload(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_missing_devices() {
        assert!(matches!(Tap::open(""), Err(TapError::BadName(_))));
        assert!(matches!(Tap::open("a/b"), Err(TapError::BadName(_))));
        assert!(matches!(
            Tap::open("a-very-long-name-x"),
            Err(TapError::BadName(_))
        ));
        assert!(matches!(Tap::open("gwnosuch0"), Err(TapError::NotFound(_))));
        assert!(matches!(Tap::open("lo"), Err(TapError::NotTap(_))));
    }
}

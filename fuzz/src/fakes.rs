//! Host sides that need nothing on the host: a disk in memory and a
//! network backend that never receives.

use godwit_devices::{BlockBackend, NetBackend};
use std::io;
use std::os::fd::RawFd;
use std::sync::Mutex;

/// A disk of zeros in memory; out-of-range accesses are errors.
pub struct MemDisk(Mutex<Vec<u8>>);

impl MemDisk {
    pub fn new(len: usize) -> Self {
        MemDisk(Mutex::new(vec![0; len]))
    }
}

fn range(off: u64, len: usize, size: usize) -> io::Result<std::ops::Range<usize>> {
    let start = usize::try_from(off).map_err(|_| io::ErrorKind::InvalidInput)?;
    let end = start.checked_add(len).filter(|&e| e <= size);
    end.map(|e| start..e)
        .ok_or_else(|| io::ErrorKind::InvalidInput.into())
}

impl BlockBackend for MemDisk {
    fn len(&self) -> u64 {
        self.0.lock().map(|d| d.len() as u64).unwrap_or(0)
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let d = self.0.lock().map_err(|_| io::Error::other("poisoned"))?;
        buf.copy_from_slice(&d[range(off, buf.len(), d.len())?]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        let mut d = self.0.lock().map_err(|_| io::Error::other("poisoned"))?;
        let r = range(off, buf.len(), d.len())?;
        d[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A NIC backend with nothing to receive that drops what is sent.
pub struct NullNet;

impl NetBackend for NullNet {
    fn recv(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn send(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn fd(&self) -> Option<RawFd> {
        None
    }
    fn set_offloads(&mut self, _: bool, _: bool, _: bool) -> io::Result<()> {
        Ok(())
    }
}

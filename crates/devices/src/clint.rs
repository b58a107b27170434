//! SiFive CLINT (ACLINT MSWI + MTIMER in one region) with QEMU `virt`'s
//! layout: `msip` at `0x0 + 4*hart`, `mtimecmp` at `0x4000 + 8*hart`,
//! `mtime` at `0xbff8`.
//!
//! Linux running on an SBI never touches it (timers and IPIs go through the
//! SBI, implemented in the VMM), but the device tree lists it and M-mode
//! firmware-style code may probe it, so its registers behave.

use crate::{MmioDevice, StateError};
use serde::{Deserialize, Serialize};

const MSIP_BASE: u64 = 0x0;
const MTIMECMP_BASE: u64 = 0x4000;
const MTIME: u64 = 0xbff8;

/// Size of the CLINT's MMIO region.
pub const CLINT_MMIO_SIZE: u64 = 0x10000;
/// Most harts the layout can address (`mtimecmp` must stay below `mtime`).
pub const MAX_HARTS: u32 = 4095;

/// The architectural state of a [`Clint`], for snapshots and migration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ClintState {
    /// Machine software interrupt pending, per hart.
    pub msip: Vec<bool>,
    /// Timer compare value, per hart.
    pub mtimecmp: Vec<u64>,
    /// What the guest added to the host timebase by writing `mtime`
    /// (wrapping). Usually 0: the VMM's time source itself stays continuous
    /// across a migration.
    pub mtime_offset: u64,
}

/// Core-local interruptor: software interrupts and the machine timer.
pub struct Clint {
    msip: Vec<bool>,
    mtimecmp: Vec<u64>,
    mtime_offset: u64,
    time: Box<dyn Fn() -> u64 + Send>,
}

impl Clint {
    /// A CLINT for `harts` harts (clamped to [`MAX_HARTS`]); `time` returns
    /// the current 10 MHz timebase (the same one the harts' `time` CSR
    /// reads). `mtimecmp` resets to `u64::MAX` so no timer interrupt is
    /// pending before software programs one.
    pub fn new(harts: u32, time: Box<dyn Fn() -> u64 + Send>) -> Self {
        let n = harts.min(MAX_HARTS) as usize;
        Clint {
            msip: vec![false; n],
            mtimecmp: vec![u64::MAX; n],
            mtime_offset: 0,
            time,
        }
    }

    /// Number of harts.
    pub fn harts(&self) -> u32 {
        self.msip.len() as u32
    }

    /// The current `mtime` value.
    pub fn mtime(&self) -> u64 {
        (self.time)().wrapping_add(self.mtime_offset)
    }

    /// Machine software interrupt pending for `hart` (MSIP).
    pub fn msip(&self, hart: u32) -> bool {
        self.msip.get(hart as usize).copied().unwrap_or(false)
    }

    /// Timer compare value of `hart` (`u64::MAX` for unknown harts).
    pub fn mtimecmp(&self, hart: u32) -> u64 {
        self.mtimecmp
            .get(hart as usize)
            .copied()
            .unwrap_or(u64::MAX)
    }

    /// Machine timer interrupt pending for `hart` (MTIP): `mtime >= mtimecmp`.
    pub fn mtip(&self, hart: u32) -> bool {
        (hart as usize) < self.msip.len() && self.mtime() >= self.mtimecmp(hart)
    }

    /// The architectural state (see [`ClintState`]).
    pub fn state(&self) -> ClintState {
        ClintState {
            msip: self.msip.clone(),
            mtimecmp: self.mtimecmp.clone(),
            mtime_offset: self.mtime_offset,
        }
    }

    /// Loads `state`, which must be for the same number of harts.
    pub fn restore(&mut self, state: &ClintState) -> Result<(), StateError> {
        if state.msip.len() != self.msip.len() || state.mtimecmp.len() != self.msip.len() {
            return Err(StateError::new(
                "CLINT",
                format!(
                    "state for {} harts, device has {}",
                    state.msip.len(),
                    self.msip.len()
                ),
            ));
        }
        self.msip = state.msip.clone();
        self.mtimecmp = state.mtimecmp.clone();
        self.mtime_offset = state.mtime_offset;
        Ok(())
    }

    /// Reads the 32-bit word at `offset` (4-aligned).
    fn read32(&self, offset: u64) -> u32 {
        if offset < MTIMECMP_BASE {
            return u32::from(self.msip(((offset - MSIP_BASE) / 4) as u32));
        }
        let v64 = if offset >= MTIME {
            self.mtime()
        } else {
            let hart = (offset - MTIMECMP_BASE) / 8;
            self.mtimecmp.get(hart as usize).copied().unwrap_or(0)
        };
        if offset % 8 == 4 {
            (v64 >> 32) as u32
        } else {
            v64 as u32
        }
    }

    /// Replaces the 32-bit half at `offset` (4-aligned) with `value`.
    fn write32(&mut self, offset: u64, value: u32) {
        if offset < MTIMECMP_BASE {
            if let Some(m) = self.msip.get_mut(((offset - MSIP_BASE) / 4) as usize) {
                // Only bit 0 exists.
                *m = value & 1 != 0;
            }
            return;
        }
        let merge = |old: u64| {
            if offset % 8 == 4 {
                (old & 0xffff_ffff) | u64::from(value) << 32
            } else {
                (old & !0xffff_ffff) | u64::from(value)
            }
        };
        if offset >= MTIME {
            let now = (self.time)();
            let new = merge(self.mtime());
            self.mtime_offset = new.wrapping_sub(now);
        } else if let Some(c) = self
            .mtimecmp
            .get_mut(((offset - MTIMECMP_BASE) / 8) as usize)
        {
            *c = merge(*c);
        }
    }
}

impl MmioDevice for Clint {
    /// 4- and 8-byte accesses at naturally aligned offsets; anything else
    /// reads as zero and writes nothing.
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        if offset >= MTIME + 8 || !offset.is_multiple_of(u64::from(size.max(1))) {
            return 0;
        }
        match size {
            4 => u64::from(self.read32(offset)),
            8 if offset >= MTIMECMP_BASE => {
                u64::from(self.read32(offset)) | u64::from(self.read32(offset + 4)) << 32
            }
            _ => 0,
        }
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) {
        if offset >= MTIME + 8 || !offset.is_multiple_of(u64::from(size.max(1))) {
            return;
        }
        match size {
            4 => self.write32(offset, value as u32),
            8 if offset >= MTIME => {
                // One store: set the whole 64-bit mtime at once.
                self.mtime_offset = value.wrapping_sub((self.time)());
            }
            8 if offset >= MTIMECMP_BASE => {
                if let Some(c) = self
                    .mtimecmp
                    .get_mut(((offset - MTIMECMP_BASE) / 8) as usize)
                {
                    *c = value;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn clint() -> (Clint, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(1_000));
        let n = now.clone();
        (
            Clint::new(2, Box::new(move || n.load(Ordering::Relaxed))),
            now,
        )
    }

    #[test]
    fn registers() {
        let (mut c, now) = clint();
        assert_eq!(c.read(MTIME, 8), 1_000);
        now.store(0x1_0000_0005, Ordering::Relaxed);
        assert_eq!(c.read(MTIME, 4), 5);
        assert_eq!(c.read(MTIME + 4, 4), 1);
        // msip: bit 0 only, per hart.
        c.write(4, 4, 0xffff_ffff);
        assert!(c.msip(1) && !c.msip(0));
        assert_eq!(c.read(4, 4), 1);
        assert_eq!(c.read(8, 4), 0, "no hart 2");
        // mtimecmp, whole and by halves.
        assert_eq!(c.mtimecmp(0), u64::MAX);
        assert!(!c.mtip(0));
        c.write(MTIMECMP_BASE, 8, 0x1_0000_0000);
        assert_eq!(c.mtimecmp(0), 0x1_0000_0000);
        assert!(c.mtip(0));
        c.write(MTIMECMP_BASE + 8 + 4, 4, 2);
        c.write(MTIMECMP_BASE + 8, 4, 7);
        assert_eq!(c.mtimecmp(1), 0x2_0000_0007);
        assert_eq!(c.read(MTIMECMP_BASE + 8, 8), 0x2_0000_0007);
        assert!(!c.mtip(1));
        // mtime writes shift the timebase.
        c.write(MTIME, 8, 10);
        assert_eq!(c.mtime(), 10);
        now.store(0x1_0000_0015, Ordering::Relaxed);
        assert_eq!(
            c.read(MTIME, 8),
            10 + 0x10,
            "runs on from the written value"
        );
        c.write(MTIME + 4, 4, 3);
        assert_eq!(c.mtime(), 0x3_0000_001a);
        // Junk is harmless.
        assert_eq!(c.read(3, 4), 0);
        assert_eq!(c.read(0x20000, 4), 0);
        assert_eq!(c.read(0xc000, 4), 0, "nothing past mtime");
        c.write(u64::MAX - 7, 8, 1);
        assert_eq!(c.read(MTIMECMP_BASE + 8 * 100, 8), 0);
        c.write(MTIMECMP_BASE + 8 * 100, 8, 1);
        assert!(!c.mtip(5));
    }

    #[test]
    fn state_round_trip() {
        let (mut c, now) = clint();
        c.write(0, 4, 1);
        c.write(MTIMECMP_BASE + 8, 8, 5_000);
        c.write(MTIME, 8, 400);
        let s = c.state();
        let back: ClintState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        let n2 = now.clone();
        let mut d = Clint::new(2, Box::new(move || n2.load(Ordering::Relaxed)));
        d.restore(&back).unwrap();
        assert_eq!(d.state(), s);
        assert!(d.msip(0));
        assert_eq!(d.mtimecmp(1), 5_000);
        assert_eq!(d.mtime(), 400);
        assert!(Clint::new(1, Box::new(|| 0)).restore(&s).is_err());
    }
}

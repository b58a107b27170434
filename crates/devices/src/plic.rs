//! SiFive PLIC with the register layout of QEMU's `virt` board.
//!
//! Sources are level-triggered (every Godwit device has a level line). The
//! gateway semantics are the PLIC specification's: while a source is claimed
//! (in service) its line is not forwarded, so a still-high line does not
//! re-pend until the hart completes it; after completion a still-high line
//! pends again at once. When a line drops before anyone claimed it, the
//! pending bit drops with it, which saves the guest a spurious claim of 0.

use crate::{MmioDevice, StateError};
use serde::{Deserialize, Serialize};

const PRIORITY_BASE: u64 = 0x0;
const PENDING_BASE: u64 = 0x1000;
const ENABLE_BASE: u64 = 0x2000;
const ENABLE_STRIDE: u64 = 0x80;
const CONTEXT_BASE: u64 = 0x20_0000;
const CONTEXT_STRIDE: u64 = 0x1000;

/// Most sources the PLIC layout can address (IDs 0..1023, 0 reserved).
pub const MAX_SOURCES: u32 = 1024;
/// Most contexts the PLIC layout can address.
pub const MAX_CONTEXTS: u32 = 15872;
/// Priorities are 3 bits wide, as on QEMU `virt` (`riscv,max-priority = 7`).
const PRIORITY_MASK: u32 = 7;

/// The architectural state of a [`Plic`], for snapshots and migration.
/// Bit vectors are 32-bit words indexed by source ID.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PlicState {
    /// Number of interrupt IDs, including the reserved ID 0.
    pub num_sources: u32,
    /// Number of contexts.
    pub num_contexts: u32,
    /// Priority per source.
    pub priority: Vec<u32>,
    /// Pending bits.
    pub pending: Vec<u32>,
    /// Claimed (in service) bits.
    pub claimed: Vec<u32>,
    /// Current input line levels.
    pub level: Vec<u32>,
    /// Enable bits per context.
    pub enable: Vec<Vec<u32>>,
    /// Priority threshold per context.
    pub threshold: Vec<u32>,
}

/// A platform-level interrupt controller.
#[derive(Clone, Debug)]
pub struct Plic {
    num_sources: u32,
    num_contexts: u32,
    priority: Vec<u32>,
    pending: Vec<u32>,
    claimed: Vec<u32>,
    level: Vec<u32>,
    enable: Vec<Vec<u32>>,
    threshold: Vec<u32>,
}

fn words(bits: u32) -> usize {
    bits.div_ceil(32) as usize
}

fn get_bit(v: &[u32], i: u32) -> bool {
    v.get((i / 32) as usize)
        .is_some_and(|w| w & (1 << (i % 32)) != 0)
}

fn put_bit(v: &mut [u32], i: u32, on: bool) {
    if let Some(w) = v.get_mut((i / 32) as usize) {
        if on {
            *w |= 1 << (i % 32);
        } else {
            *w &= !(1 << (i % 32));
        }
    }
}

impl Plic {
    /// A PLIC with interrupt IDs `0..num_sources` (ID 0 is reserved; the
    /// device tree's `riscv,ndev` is `num_sources - 1`; QEMU `virt` uses 96)
    /// and `num_contexts` contexts (2 per hart: context `2h` is hart `h`'s
    /// M-mode, `2h + 1` its S-mode). Both are clamped to what the register
    /// layout can address.
    pub fn new(num_sources: u32, num_contexts: u32) -> Self {
        let num_sources = num_sources.clamp(1, MAX_SOURCES);
        let num_contexts = num_contexts.min(MAX_CONTEXTS);
        let w = words(num_sources);
        Plic {
            num_sources,
            num_contexts,
            priority: vec![0; num_sources as usize],
            pending: vec![0; w],
            claimed: vec![0; w],
            level: vec![0; w],
            enable: vec![vec![0; w]; num_contexts as usize],
            threshold: vec![0; num_contexts as usize],
        }
    }

    /// Size of the MMIO region: `0x200000 + 0x1000 * num_contexts`.
    pub fn mmio_size(&self) -> u64 {
        CONTEXT_BASE + CONTEXT_STRIDE * u64::from(self.num_contexts)
    }

    /// Number of interrupt IDs, including the reserved ID 0.
    pub fn num_sources(&self) -> u32 {
        self.num_sources
    }

    /// Number of contexts.
    pub fn num_contexts(&self) -> u32 {
        self.num_contexts
    }

    /// Sets the level of interrupt line `source`. The VMM calls it with each
    /// device's [`MmioDevice::irq_level`] after the device may have changed
    /// it (cheap when nothing changed). Source 0 and unknown sources are
    /// ignored.
    pub fn set_level(&mut self, source: u32, high: bool) {
        if source == 0 || source >= self.num_sources {
            return;
        }
        put_bit(&mut self.level, source, high);
        if !get_bit(&self.claimed, source) {
            put_bit(&mut self.pending, source, high);
        }
    }

    /// The best source context `ctx` could claim now: pending, enabled for
    /// `ctx`, not in service, priority above the threshold; highest
    /// priority wins, ties go to the lowest ID.
    fn best(&self, ctx: u32) -> Option<u32> {
        let enable = self.enable.get(ctx as usize)?;
        let threshold = self.threshold[ctx as usize];
        let mut best: Option<(u32, u32)> = None;
        for (n, ((&p, &c), &e)) in self
            .pending
            .iter()
            .zip(&self.claimed)
            .zip(enable)
            .enumerate()
        {
            let mut w = p & !c & e;
            while w != 0 {
                let src = n as u32 * 32 + w.trailing_zeros();
                w &= w - 1;
                let prio = self.priority.get(src as usize).copied().unwrap_or(0);
                if prio > threshold && best.is_none_or(|(_, bp)| prio > bp) {
                    best = Some((src, prio));
                }
            }
        }
        best.map(|(src, _)| src)
    }

    /// True when context `ctx` has an interrupt to take: the level of the
    /// hart's external interrupt pin (MEIP for even, SEIP for odd contexts).
    pub fn context_pending(&self, ctx: u32) -> bool {
        self.best(ctx).is_some()
    }

    /// Claims the best pending interrupt for `ctx` (as a read of the claim
    /// register): returns its ID, or 0 when there is none.
    pub fn claim(&mut self, ctx: u32) -> u32 {
        match self.best(ctx) {
            Some(src) => {
                put_bit(&mut self.pending, src, false);
                put_bit(&mut self.claimed, src, true);
                src
            }
            None => 0,
        }
    }

    /// Completes `source` (as a write of the claim register). Completing a
    /// source that is not in service is ignored. A line still high pends
    /// again.
    pub fn complete(&mut self, _ctx: u32, source: u32) {
        // The specification ignores completions of sources not enabled for
        // the context; Linux handles that by enabling around the write
        // (plic_irq_eoi). QEMU accepts them regardless, and so do we: being
        // lenient cannot lose an interrupt.
        if source == 0 || source >= self.num_sources || !get_bit(&self.claimed, source) {
            return;
        }
        put_bit(&mut self.claimed, source, false);
        let high = get_bit(&self.level, source);
        put_bit(&mut self.pending, source, high);
    }

    /// The architectural state (see [`PlicState`]).
    pub fn state(&self) -> PlicState {
        PlicState {
            num_sources: self.num_sources,
            num_contexts: self.num_contexts,
            priority: self.priority.clone(),
            pending: self.pending.clone(),
            claimed: self.claimed.clone(),
            level: self.level.clone(),
            enable: self.enable.clone(),
            threshold: self.threshold.clone(),
        }
    }

    /// Loads `state`, which must have this PLIC's geometry.
    pub fn restore(&mut self, state: &PlicState) -> Result<(), StateError> {
        let w = words(self.num_sources);
        let err = |r: String| Err(StateError::new("PLIC", r));
        if state.num_sources != self.num_sources || state.num_contexts != self.num_contexts {
            return err(format!(
                "geometry {}x{} != {}x{}",
                state.num_sources, state.num_contexts, self.num_sources, self.num_contexts
            ));
        }
        if state.priority.len() != self.num_sources as usize
            || [&state.pending, &state.claimed, &state.level]
                .iter()
                .any(|v| v.len() != w)
            || state.enable.len() != self.num_contexts as usize
            || state.enable.iter().any(|v| v.len() != w)
            || state.threshold.len() != self.num_contexts as usize
        {
            return err("vector lengths do not match the geometry".into());
        }
        self.priority = state.priority.iter().map(|p| p & PRIORITY_MASK).collect();
        self.pending = state.pending.clone();
        self.claimed = state.claimed.clone();
        self.level = state.level.clone();
        self.enable = state.enable.clone();
        self.threshold = state.threshold.iter().map(|t| t & PRIORITY_MASK).collect();
        // ID 0 does not exist, nor do IDs past num_sources in the last word.
        let valid = self.valid_mask();
        for v in [&mut self.pending, &mut self.claimed, &mut self.level]
            .into_iter()
            .chain(self.enable.iter_mut())
        {
            for (word, m) in v.iter_mut().zip(&valid) {
                *word &= m;
            }
        }
        Ok(())
    }

    /// Per word, the bits that name real sources.
    fn valid_mask(&self) -> Vec<u32> {
        (0..words(self.num_sources))
            .map(|n| {
                let lo = n as u32 * 32;
                let count = (self.num_sources - lo).min(32);
                let m = if count == 32 {
                    u32::MAX
                } else {
                    (1u32 << count) - 1
                };
                if n == 0 {
                    m & !1
                } else {
                    m
                }
            })
            .collect()
    }

    fn read32(&mut self, offset: u64) -> u32 {
        if offset < PENDING_BASE {
            let src = (offset - PRIORITY_BASE) / 4;
            return self.priority.get(src as usize).copied().unwrap_or(0);
        }
        if offset < ENABLE_BASE {
            let word = (offset - PENDING_BASE) / 4;
            return self.pending.get(word as usize).copied().unwrap_or(0);
        }
        if offset < CONTEXT_BASE {
            let ctx = (offset - ENABLE_BASE) / ENABLE_STRIDE;
            let word = (offset - ENABLE_BASE) % ENABLE_STRIDE / 4;
            return self
                .enable
                .get(ctx as usize)
                .and_then(|e| e.get(word as usize))
                .copied()
                .unwrap_or(0);
        }
        let ctx = (offset - CONTEXT_BASE) / CONTEXT_STRIDE;
        if ctx >= u64::from(self.num_contexts) {
            return 0;
        }
        match (offset - CONTEXT_BASE) % CONTEXT_STRIDE {
            0 => self.threshold[ctx as usize],
            4 => self.claim(ctx as u32),
            _ => 0,
        }
    }

    fn write32(&mut self, offset: u64, value: u32) {
        if offset < PENDING_BASE {
            let src = (offset - PRIORITY_BASE) / 4;
            if src != 0 {
                if let Some(p) = self.priority.get_mut(src as usize) {
                    *p = value & PRIORITY_MASK;
                }
            }
            return;
        }
        if offset < ENABLE_BASE {
            // Pending bits are read-only.
            return;
        }
        if offset < CONTEXT_BASE {
            let ctx = (offset - ENABLE_BASE) / ENABLE_STRIDE;
            let word = ((offset - ENABLE_BASE) % ENABLE_STRIDE / 4) as usize;
            let mask = self.valid_mask().get(word).copied().unwrap_or(0);
            if let Some(w) = self
                .enable
                .get_mut(ctx as usize)
                .and_then(|e| e.get_mut(word))
            {
                *w = value & mask;
            }
            return;
        }
        let ctx = (offset - CONTEXT_BASE) / CONTEXT_STRIDE;
        if ctx >= u64::from(self.num_contexts) {
            return;
        }
        match (offset - CONTEXT_BASE) % CONTEXT_STRIDE {
            0 => self.threshold[ctx as usize] = value & PRIORITY_MASK,
            4 => self.complete(ctx as u32, value),
            _ => {}
        }
    }
}

impl MmioDevice for Plic {
    /// 32-bit registers; an 8-byte access covers two of them (low first).
    /// Other sizes and misaligned offsets read as zero.
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        if !offset.is_multiple_of(4) {
            return 0;
        }
        match size {
            4 => u64::from(self.read32(offset)),
            8 => {
                let Some(hi) = offset.checked_add(4) else {
                    return 0;
                };
                u64::from(self.read32(offset)) | u64::from(self.read32(hi)) << 32
            }
            _ => 0,
        }
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) {
        if !offset.is_multiple_of(4) {
            return;
        }
        match size {
            4 => self.write32(offset, value as u32),
            8 => {
                if let Some(hi) = offset.checked_add(4) {
                    self.write32(offset, value as u32);
                    self.write32(hi, (value >> 32) as u32);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S_CTX: u32 = 1;

    fn ctx_reg(ctx: u32, reg: u64) -> u64 {
        CONTEXT_BASE + CONTEXT_STRIDE * u64::from(ctx) + reg
    }

    fn enable(p: &mut Plic, ctx: u32, src: u32) {
        let off = ENABLE_BASE + ENABLE_STRIDE * u64::from(ctx) + u64::from(src / 32) * 4;
        let v = p.read(off, 4) | 1 << (src % 32);
        p.write(off, 4, v);
    }

    fn plic() -> Plic {
        let mut p = Plic::new(96, 2);
        for src in [1, 2, 10, 40] {
            p.write(u64::from(src) * 4, 4, 1);
            enable(&mut p, S_CTX, src);
        }
        p
    }

    #[test]
    fn claim_complete_and_level_repend() {
        let mut p = plic();
        assert!(!p.context_pending(S_CTX));
        p.set_level(10, true);
        assert!(p.context_pending(S_CTX));
        assert!(!p.context_pending(0), "not enabled for M-mode");
        assert_eq!(p.read(PENDING_BASE, 4), 1 << 10);
        assert_eq!(p.read(ctx_reg(S_CTX, 4), 4), 10);
        assert!(!p.context_pending(S_CTX), "claimed source is in service");
        assert_eq!(p.read(ctx_reg(S_CTX, 4), 4), 0, "nothing else to claim");
        // The line stays high while in service: no re-pend yet.
        p.set_level(10, true);
        assert!(!p.context_pending(S_CTX));
        p.write(ctx_reg(S_CTX, 4), 4, 10);
        assert!(
            p.context_pending(S_CTX),
            "still high after complete: pends again"
        );
        assert_eq!(p.read(ctx_reg(S_CTX, 4), 4), 10);
        p.set_level(10, false);
        p.write(ctx_reg(S_CTX, 4), 4, 10);
        assert!(!p.context_pending(S_CTX), "low after complete: quiet");
        // A line that drops before being claimed is no longer pending.
        p.set_level(2, true);
        p.set_level(2, false);
        assert!(!p.context_pending(S_CTX));
        // Completing something not in service is ignored.
        p.write(ctx_reg(S_CTX, 4), 4, 40);
        p.write(ctx_reg(S_CTX, 4), 4, 5000);
    }

    #[test]
    fn priority_and_threshold() {
        let mut p = plic();
        p.write(2 * 4, 4, 5);
        p.write(40 * 4, 4, 0xffff_ffff);
        assert_eq!(p.read(40 * 4, 4), 7, "3 priority bits");
        p.set_level(1, true);
        p.set_level(2, true);
        p.set_level(40, true);
        assert_eq!(p.claim(S_CTX), 40);
        assert_eq!(p.claim(S_CTX), 2);
        assert_eq!(p.claim(S_CTX), 1);
        for s in [1, 2, 40] {
            p.complete(S_CTX, s);
        }
        // Threshold 5 hides priorities 1 and 5, not 7.
        p.write(ctx_reg(S_CTX, 0), 4, 5);
        assert_eq!(p.read(ctx_reg(S_CTX, 0), 4), 5);
        assert_eq!(p.claim(S_CTX), 40);
        assert_eq!(p.claim(S_CTX), 0);
        // Priority 0 never interrupts, even with threshold 0.
        p.write(ctx_reg(S_CTX, 0), 4, 0);
        p.write(4, 4, 0);
        p.write(2 * 4, 4, 0);
        assert!(!p.context_pending(S_CTX));
        // Equal priorities: lowest ID first.
        p.write(4, 4, 3);
        p.write(2 * 4, 4, 3);
        assert_eq!(p.claim(S_CTX), 1);
    }

    #[test]
    fn enables_and_bounds() {
        let mut p = Plic::new(96, 2);
        p.write(ENABLE_BASE, 4, 0xffff_ffff);
        assert_eq!(
            p.read(ENABLE_BASE, 4),
            0xffff_fffe,
            "source 0 does not exist"
        );
        p.write(ENABLE_BASE + 8, 4, 0xffff_ffff);
        assert_eq!(p.read(ENABLE_BASE + 8, 4), 0xffff_ffff);
        p.write(ENABLE_BASE + 12, 4, 0xffff_ffff);
        assert_eq!(p.read(ENABLE_BASE + 12, 4), 0, "IDs >= 96 do not exist");
        p.write(PENDING_BASE, 4, 0xffff_ffff);
        assert_eq!(p.read(PENDING_BASE, 4), 0, "pending is read-only");
        // Out-of-range contexts, sources and odd accesses are harmless.
        p.write(ctx_reg(7, 0), 4, 1);
        assert_eq!(p.read(ctx_reg(7, 4), 4), 0);
        p.set_level(0, true);
        p.set_level(96, true);
        p.set_level(u32::MAX, true);
        assert_eq!(p.read(3, 4), 0);
        assert_eq!(p.read(0x4, 1), 0);
        p.write(u64::MAX - 3, 8, u64::MAX);
        assert_eq!(p.read(u64::MAX - 3, 4), 0);
        assert!(!p.context_pending(99));
        assert_eq!(p.claim(99), 0);
        assert_eq!(p.mmio_size(), 0x202000);
    }

    #[test]
    fn state_round_trip() {
        let mut p = plic();
        p.write(ctx_reg(S_CTX, 0), 4, 0);
        p.set_level(10, true);
        p.set_level(40, true);
        assert_eq!(p.claim(S_CTX), 10);
        let s = p.state();
        let back: PlicState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        let mut q = Plic::new(96, 2);
        q.restore(&back).unwrap();
        assert_eq!(q.state(), s);
        assert_eq!(q.claim(S_CTX), 40);
        q.complete(S_CTX, 10);
        assert_eq!(q.claim(S_CTX), 10, "level kept high across restore");
        assert!(Plic::new(32, 2).restore(&s).is_err());
        let mut bad = s.clone();
        bad.enable[0].pop();
        assert!(Plic::new(96, 2).restore(&bad).is_err());
    }
}

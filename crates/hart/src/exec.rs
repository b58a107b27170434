//! Instruction execution: one match over the 32-bit opcode (compressed
//! instructions arrive already expanded by `rvc`).

use crate::csr::mstatus;
use crate::hart::{ecall_cause, Hart, Priv, Trap, CAUSE_BREAKPOINT};
use crate::mmu::{read_host, write_host, TLB_MASK};
use crate::{fp, Bus};
use godwit_memory::PAGE_SHIFT;

#[inline(always)]
fn imm_i(i: u32) -> u64 {
    ((i as i32) >> 20) as i64 as u64
}
#[inline(always)]
fn imm_s(i: u32) -> u64 {
    ((((i as i32) >> 25) << 5) | ((i >> 7) & 0x1f) as i32) as i64 as u64
}
#[inline(always)]
fn imm_b(i: u32) -> u64 {
    let v = (((i as i32) >> 31) << 12) as u32
        | ((i << 4) & 0x800)
        | ((i >> 20) & 0x7e0)
        | ((i >> 7) & 0x1e);
    v as i32 as i64 as u64
}
#[inline(always)]
fn imm_j(i: u32) -> u64 {
    let v = (((i as i32) >> 31) << 20) as u32
        | (i & 0xff000)
        | ((i >> 9) & 0x800)
        | ((i >> 20) & 0x7fe);
    v as i32 as i64 as u64
}
#[inline(always)]
fn sext32(v: u64) -> u64 {
    v as i32 as i64 as u64
}

impl Hart {
    /// Executes one instruction.
    #[inline(always)]
    pub(crate) fn step(&mut self, bus: &mut dyn Bus) -> Result<(), Trap> {
        let (inst, len) = self.fetch()?;
        let r = self.execute(inst, len, bus);
        self.x[0] = 0;
        r
    }

    #[inline(always)]
    fn load(&mut self, va: u64, size: u8, bus: &mut dyn Bus) -> Result<u64, Trap> {
        let vpn = va >> PAGE_SHIFT;
        let e = &self.tlbs[self.tlb_data & 3][vpn as usize & TLB_MASK];
        if e.read == vpn && (va & 0xfff) + size as u64 <= 0x1000 {
            // SAFETY: a read tag is cached only for a page in guest RAM, and
            // the access does not leave the page.
            return Ok(unsafe { read_host(e.addend.wrapping_add(va as usize) as *const u8, size) });
        }
        self.load_slow(va, size, bus)
    }

    #[inline(always)]
    fn store(&mut self, va: u64, size: u8, v: u64, bus: &mut dyn Bus) -> Result<(), Trap> {
        let vpn = va >> PAGE_SHIFT;
        let e = &self.tlbs[self.tlb_data & 3][vpn as usize & TLB_MASK];
        if e.write == vpn && (va & 0xfff) + size as u64 <= 0x1000 {
            // SAFETY: a write tag is cached only for a page in guest RAM
            // whose writes need no bookkeeping, and the access stays inside it.
            unsafe { write_host(e.addend.wrapping_add(va as usize) as *mut u8, size, v) };
            return Ok(());
        }
        self.store_slow(va, size, v, bus)
    }

    #[inline(always)]
    fn execute(&mut self, i: u32, len: u64, bus: &mut dyn Bus) -> Result<(), Trap> {
        let rd = ((i >> 7) & 31) as usize;
        let rs1 = ((i >> 15) & 31) as usize;
        let rs2 = ((i >> 20) & 31) as usize;
        let f3 = (i >> 12) & 7;
        let f7 = i >> 25;
        let pc = self.pc;
        let mut next = pc.wrapping_add(len);
        match i & 0x7f {
            0x37 => self.x[rd] = (i & 0xffff_f000) as i32 as i64 as u64,
            0x17 => self.x[rd] = pc.wrapping_add((i & 0xffff_f000) as i32 as i64 as u64),
            0x6f => {
                self.x[rd] = next;
                next = pc.wrapping_add(imm_j(i));
            }
            0x67 => {
                if f3 != 0 {
                    return Err(Trap::illegal(self.insn));
                }
                let target = self.x[rs1].wrapping_add(imm_i(i)) & !1;
                self.x[rd] = next;
                next = target;
            }
            0x63 => {
                let (a, b) = (self.x[rs1], self.x[rs2]);
                let taken = match f3 {
                    0 => a == b,
                    1 => a != b,
                    4 => (a as i64) < (b as i64),
                    5 => (a as i64) >= (b as i64),
                    6 => a < b,
                    7 => a >= b,
                    _ => return Err(Trap::illegal(self.insn)),
                };
                if taken {
                    next = pc.wrapping_add(imm_b(i));
                }
            }
            0x03 => {
                let va = self.x[rs1].wrapping_add(imm_i(i));
                let v = match f3 {
                    0 => self.load(va, 1, bus)? as i8 as i64 as u64,
                    1 => self.load(va, 2, bus)? as i16 as i64 as u64,
                    2 => self.load(va, 4, bus)? as i32 as i64 as u64,
                    3 => self.load(va, 8, bus)?,
                    4 => self.load(va, 1, bus)?,
                    5 => self.load(va, 2, bus)?,
                    6 => self.load(va, 4, bus)?,
                    _ => return Err(Trap::illegal(self.insn)),
                };
                self.x[rd] = v;
            }
            0x23 => {
                let va = self.x[rs1].wrapping_add(imm_s(i));
                let size = match f3 {
                    0 => 1,
                    1 => 2,
                    2 => 4,
                    3 => 8,
                    _ => return Err(Trap::illegal(self.insn)),
                };
                self.store(va, size, self.x[rs2], bus)?;
            }
            0x13 => {
                let a = self.x[rs1];
                let imm = imm_i(i);
                let shamt = (i >> 20) & 0x3f;
                self.x[rd] = match f3 {
                    0 => a.wrapping_add(imm),
                    1 if i >> 26 == 0 => a << shamt,
                    2 => ((a as i64) < (imm as i64)) as u64,
                    3 => (a < imm) as u64,
                    4 => a ^ imm,
                    5 if i >> 26 == 0 => a >> shamt,
                    5 if i >> 26 == 0x10 => ((a as i64) >> shamt) as u64,
                    6 => a | imm,
                    7 => a & imm,
                    _ => return Err(Trap::illegal(self.insn)),
                };
            }
            0x1b => {
                let a = self.x[rs1];
                let shamt = (i >> 20) & 0x1f;
                self.x[rd] = match (f3, f7) {
                    (0, _) => sext32(a.wrapping_add(imm_i(i))),
                    (1, 0) => sext32(((a as u32) << shamt) as u64),
                    (5, 0) => sext32(((a as u32) >> shamt) as u64),
                    (5, 0x20) => ((a as i32) >> shamt) as i64 as u64,
                    _ => return Err(Trap::illegal(self.insn)),
                };
            }
            0x33 => {
                let (a, b) = (self.x[rs1], self.x[rs2]);
                self.x[rd] = match (f7, f3) {
                    (0, 0) => a.wrapping_add(b),
                    (0x20, 0) => a.wrapping_sub(b),
                    (0, 1) => a << (b & 63),
                    (0, 2) => ((a as i64) < (b as i64)) as u64,
                    (0, 3) => (a < b) as u64,
                    (0, 4) => a ^ b,
                    (0, 5) => a >> (b & 63),
                    (0x20, 5) => ((a as i64) >> (b & 63)) as u64,
                    (0, 6) => a | b,
                    (0, 7) => a & b,
                    (1, 0) => a.wrapping_mul(b),
                    (1, 1) => ((a as i64 as i128 * b as i64 as i128) >> 64) as u64,
                    (1, 2) => ((a as i64 as i128 * b as u128 as i128) >> 64) as u64,
                    (1, 3) => ((a as u128 * b as u128) >> 64) as u64,
                    (1, 4) => {
                        if b == 0 {
                            u64::MAX
                        } else {
                            (a as i64).wrapping_div(b as i64) as u64
                        }
                    }
                    (1, 5) => a.checked_div(b).unwrap_or(u64::MAX),
                    (1, 6) => {
                        if b == 0 {
                            a
                        } else {
                            (a as i64).wrapping_rem(b as i64) as u64
                        }
                    }
                    (1, 7) => a.checked_rem(b).unwrap_or(a),
                    _ => return Err(Trap::illegal(self.insn)),
                };
            }
            0x3b => {
                let (a, b) = (self.x[rs1] as u32, self.x[rs2] as u32);
                let v: u32 = match (f7, f3) {
                    (0, 0) => a.wrapping_add(b),
                    (0x20, 0) => a.wrapping_sub(b),
                    (0, 1) => a << (b & 31),
                    (0, 5) => a >> (b & 31),
                    (0x20, 5) => ((a as i32) >> (b & 31)) as u32,
                    (1, 0) => a.wrapping_mul(b),
                    (1, 4) => {
                        if b == 0 {
                            u32::MAX
                        } else {
                            (a as i32).wrapping_div(b as i32) as u32
                        }
                    }
                    (1, 5) => a.checked_div(b).unwrap_or(u32::MAX),
                    (1, 6) => {
                        if b == 0 {
                            a
                        } else {
                            (a as i32).wrapping_rem(b as i32) as u32
                        }
                    }
                    (1, 7) => a.checked_rem(b).unwrap_or(a),
                    _ => return Err(Trap::illegal(self.insn)),
                };
                self.x[rd] = v as i32 as i64 as u64;
            }
            0x0f => match f3 {
                // FENCE. The host (x86-64, TSO) keeps every order RVWMO
                // asks for but one: a store may pass a later load. So only
                // a fence that orders earlier stores (PW, bit 24) before
                // later loads (SR, bit 21) needs a host barrier; FENCE.TSO
                // (fm = 8) never asks for that order.
                0 => {
                    if i >> 28 != 8 && i & (1 << 24) != 0 && i & (1 << 21) != 0 {
                        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                    }
                }
                // FENCE.I: drop the translated blocks whose code other
                // harts (or devices) changed, so it is fetched afresh.
                1 => {
                    self.jit.stats.fence_i += 1;
                    self.jit_fence_i();
                }
                _ => return Err(Trap::illegal(self.insn)),
            },
            0x73 => {
                if f3 == 0 {
                    return self.system(i, next);
                }
                self.csr_op(i, rd, rs1, f3)?;
            }
            0x2f => self.amo(i, rd, rs1, rs2, f3, bus)?,
            0x07 => {
                self.fp_check()?;
                let va = self.x[rs1].wrapping_add(imm_i(i));
                self.fpu.f[rd] = match f3 {
                    2 => fp::nan_box(self.load(va, 4, bus)? as u32),
                    3 => self.load(va, 8, bus)?,
                    _ => return Err(Trap::illegal(self.insn)),
                };
                self.mstatus |= mstatus::FS;
            }
            0x27 => {
                self.fp_check()?;
                let va = self.x[rs1].wrapping_add(imm_s(i));
                let v = self.fpu.f[rs2];
                match f3 {
                    2 => self.store(va, 4, v, bus)?,
                    3 => self.store(va, 8, v, bus)?,
                    _ => return Err(Trap::illegal(self.insn)),
                }
            }
            0x43 | 0x47 | 0x4b | 0x4f | 0x53 => {
                self.fp_check()?;
                if self.fpu.execute(i, &mut self.x).is_err() {
                    return Err(Trap::illegal(self.insn));
                }
                self.mstatus |= mstatus::FS;
            }
            _ => return Err(Trap::illegal(self.insn)),
        }
        self.pc = next;
        Ok(())
    }

    /// ECALL, EBREAK, xRET, WFI, SFENCE.VMA.
    fn system(&mut self, i: u32, next: u64) -> Result<(), Trap> {
        let tsr = self.mstatus & mstatus::TSR != 0;
        let tvm = self.mstatus & mstatus::TVM != 0;
        let tw = self.mstatus & mstatus::TW != 0;
        match i {
            0x0000_0073 => {
                // An ecall from S-mode is the SBI, which lives in the VMM
                // (unless M-mode firmware runs in the guest).
                if self.prv == Priv::S && self.medeleg & (1 << 9) == 0 && self.builtin_sbi {
                    return Err(Trap::sbi());
                }
                Err(Trap::new(ecall_cause(self.prv), 0))
            }
            0x0010_0073 => Err(Trap::new(CAUSE_BREAKPOINT, self.pc)),
            0x1020_0073 => {
                if self.prv < Priv::S || (self.prv == Priv::S && tsr) {
                    return Err(Trap::illegal(self.insn));
                }
                let spp = if self.mstatus & mstatus::SPP != 0 {
                    Priv::S
                } else {
                    Priv::U
                };
                let sie = if self.mstatus & mstatus::SPIE != 0 {
                    mstatus::SIE
                } else {
                    0
                };
                self.mstatus =
                    (self.mstatus & !(mstatus::SIE | mstatus::SPP)) | sie | mstatus::SPIE;
                self.return_to(spp, self.sepc);
                Ok(())
            }
            0x3020_0073 => {
                if self.prv != Priv::M {
                    return Err(Trap::illegal(self.insn));
                }
                let mpp = Priv::from_bits((self.mstatus & mstatus::MPP) >> mstatus::MPP_SHIFT);
                let mie = if self.mstatus & mstatus::MPIE != 0 {
                    mstatus::MIE
                } else {
                    0
                };
                self.mstatus =
                    (self.mstatus & !(mstatus::MIE | mstatus::MPP)) | mie | mstatus::MPIE;
                self.return_to(mpp, self.mepc);
                Ok(())
            }
            0x1050_0073 => {
                if self.prv == Priv::U || (self.prv == Priv::S && tw) {
                    return Err(Trap::illegal(self.insn));
                }
                self.pc = next;
                if self.interrupt_waiting() {
                    Ok(())
                } else {
                    Err(Trap::wfi())
                }
            }
            _ if i >> 25 == 0x09 && (i >> 7) & 31 == 0 => {
                if self.prv == Priv::U || (self.prv == Priv::S && tvm) {
                    return Err(Trap::illegal(self.insn));
                }
                self.tlb_flush();
                self.pc = next;
                Ok(())
            }
            _ => Err(Trap::illegal(self.insn)),
        }
    }

    /// CSRRW/CSRRS/CSRRC and their immediate forms.
    fn csr_op(&mut self, i: u32, rd: usize, rs1: usize, f3: u32) -> Result<(), Trap> {
        let n = (i >> 20) as u16;
        let src = if f3 & 4 != 0 { rs1 as u64 } else { self.x[rs1] };
        let old = match f3 & 3 {
            1 if rd == 0 => {
                return self.csr_write(n, src);
            }
            1 => {
                let old = self.csr_read(n)?;
                self.csr_write(n, src)?;
                old
            }
            op @ (2 | 3) => {
                let old = self.csr_read(n)?;
                if rs1 != 0 {
                    let base = self.csr_rmw_base(n, old);
                    let new = if op == 2 { base | src } else { base & !src };
                    self.csr_write(n, new)?;
                }
                old
            }
            _ => return Err(Trap::illegal(self.insn)),
        };
        self.x[rd] = old;
        Ok(())
    }

    /// LR/SC and the AMOs, atomic with respect to every other hart.
    ///
    /// AMOs are host atomic read-modify-writes (`lock`-prefixed on x86-64,
    /// so also full barriers, which covers `.aq`/`.rl`). LR records the
    /// physical location (its host address: guest RAM is one mapping) and
    /// the value it read; SC stores only if the location is the reserved
    /// one and still holds that value, as one compare-and-swap. So a store
    /// by another hart that changed the reserved word makes the SC fail. (A
    /// store of the very same value does not: RVWMO cannot tell the two
    /// apart from the outside, and an SC may always fail spuriously; QEMU's
    /// TCG makes the same choice.) A trap or an interrupt drops the
    /// reservation.
    fn amo(
        &mut self,
        i: u32,
        rd: usize,
        rs1: usize,
        rs2: usize,
        f3: u32,
        _bus: &mut dyn Bus,
    ) -> Result<(), Trap> {
        let size: u8 = match f3 {
            2 => 4,
            3 => 8,
            _ => return Err(Trap::illegal(self.insn)),
        };
        let va = self.x[rs1];
        let sx = |v: u64| if size == 4 { sext32(v) } else { v };
        let funct5 = i >> 27;
        match funct5 {
            0x02 => {
                if rs2 != 0 {
                    return Err(Trap::illegal(self.insn));
                }
                let p = self.read_ptr(va, size)?;
                // SAFETY: `read_ptr` returns an aligned pointer to `size`
                // bytes of guest RAM, which lives as long as the hart.
                let v = unsafe { atomic_load(p, size) };
                self.reservation = Some(Reservation {
                    host: p as usize,
                    size,
                    value: v,
                });
                self.x[rd] = sx(v);
            }
            0x03 => {
                if va & (size as u64 - 1) != 0 {
                    return Err(Trap::new(6, va));
                }
                let Some(r) = self.reservation.take() else {
                    self.x[rd] = 1;
                    return Ok(());
                };
                let p = self.rmw_ptr(va, size)?;
                let ok = r.host == p as usize
                    && r.size == size
                    // SAFETY: `rmw_ptr` returns an aligned pointer to
                    // `size` bytes of guest RAM.
                    && unsafe { atomic_cas(p, size, r.value, self.x[rs2]) };
                self.x[rd] = u64::from(!ok);
            }
            _ => {
                if !matches!(
                    funct5,
                    0x00 | 0x01 | 0x04 | 0x08 | 0x0c | 0x10 | 0x14 | 0x18 | 0x1c
                ) {
                    return Err(Trap::illegal(self.insn));
                }
                let p = self.rmw_ptr(va, size)?;
                // SAFETY: `rmw_ptr` returns an aligned pointer to `size`
                // bytes of guest RAM.
                let old = unsafe { atomic_rmw(p, size, funct5, self.x[rs2]) };
                self.x[rd] = sx(old);
            }
        }
        Ok(())
    }
}

/// What an LR reserved: the host address of the location (one per
/// physical location), the access size and the value it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reservation {
    pub host: usize,
    pub size: u8,
    pub value: u64,
}

/// An atomic load of `size` (4 or 8) bytes at `p`.
///
/// # Safety
/// `p` is aligned to `size` and points into guest RAM.
unsafe fn atomic_load(p: *const u8, size: u8) -> u64 {
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
    // SAFETY: guaranteed by the caller; guest RAM is only ever accessed
    // through raw pointers and atomics, never through Rust references.
    unsafe {
        if size == 4 {
            u64::from(AtomicU32::from_ptr(p as *mut u32).load(SeqCst))
        } else {
            AtomicU64::from_ptr(p as *mut u64).load(SeqCst)
        }
    }
}

/// Compare-and-swap of `size` bytes at `p`: stores `new` if it holds
/// `expect` (the low 32 bits for a word); true if it did.
///
/// # Safety
/// As [`atomic_load`].
unsafe fn atomic_cas(p: *mut u8, size: u8, expect: u64, new: u64) -> bool {
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
    // SAFETY: guaranteed by the caller.
    unsafe {
        if size == 4 {
            AtomicU32::from_ptr(p as *mut u32)
                .compare_exchange(expect as u32, new as u32, SeqCst, SeqCst)
                .is_ok()
        } else {
            AtomicU64::from_ptr(p as *mut u64)
                .compare_exchange(expect, new, SeqCst, SeqCst)
                .is_ok()
        }
    }
}

/// The AMO `funct5` on `size` bytes at `p` with operand `b`; returns the
/// old value (zero-extended for a word).
///
/// # Safety
/// As [`atomic_load`]; `funct5` is one of the AMO codes.
unsafe fn atomic_rmw(p: *mut u8, size: u8, funct5: u32, b: u64) -> u64 {
    use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering::SeqCst};
    // SAFETY: guaranteed by the caller; signed and unsigned views of the
    // same aligned word are the same memory.
    unsafe {
        if size == 4 {
            let u = AtomicU32::from_ptr(p as *mut u32);
            let s = AtomicI32::from_ptr(p as *mut i32);
            let b32 = b as u32;
            u64::from(match funct5 {
                0x01 => u.swap(b32, SeqCst),
                0x00 => u.fetch_add(b32, SeqCst),
                0x04 => u.fetch_xor(b32, SeqCst),
                0x0c => u.fetch_and(b32, SeqCst),
                0x08 => u.fetch_or(b32, SeqCst),
                0x10 => s.fetch_min(b32 as i32, SeqCst) as u32,
                0x14 => s.fetch_max(b32 as i32, SeqCst) as u32,
                0x18 => u.fetch_min(b32, SeqCst),
                _ => u.fetch_max(b32, SeqCst),
            })
        } else {
            let u = AtomicU64::from_ptr(p as *mut u64);
            let s = AtomicI64::from_ptr(p as *mut i64);
            match funct5 {
                0x01 => u.swap(b, SeqCst),
                0x00 => u.fetch_add(b, SeqCst),
                0x04 => u.fetch_xor(b, SeqCst),
                0x0c => u.fetch_and(b, SeqCst),
                0x08 => u.fetch_or(b, SeqCst),
                0x10 => s.fetch_min(b as i64, SeqCst) as u64,
                0x14 => s.fetch_max(b as i64, SeqCst) as u64,
                0x18 => u.fetch_min(b, SeqCst),
                _ => u.fetch_max(b, SeqCst),
            }
        }
    }
}

//! The hart: architectural state, the run loop, traps and interrupts.

use crate::clock::GuestClock;
use crate::csr::mstatus;
use crate::fp::Fpu;
use crate::irq::*;
use crate::jit::Jit;
use crate::mmu::{read_host, TlbEntry, TLB_MASK, TLB_SIZE};
use crate::{rvc, Bus};
use godwit_memory::{GuestRam, PAGE_SHIFT};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Privilege level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum Priv {
    /// User.
    U = 0,
    /// Supervisor.
    S = 1,
    /// Machine.
    M = 3,
}

impl Priv {
    /// Decodes a 2-bit privilege field (the reserved value 2 reads as U).
    pub fn from_bits(b: u64) -> Priv {
        match b & 3 {
            3 => Priv::M,
            1 => Priv::S,
            _ => Priv::U,
        }
    }
}

/// Why [`Hart::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The instruction budget ran out.
    Budget,
    /// `wfi` with no interrupt pending: sleep until one may be.
    Wfi,
    /// `ecall` from S-mode: an SBI call for the machine. `a7`/`a6`/`a0..a5`
    /// hold it; answer with [`Hart::sbi_return`].
    Sbi,
}

/// A synchronous exception (or one of the internal exits) in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Trap {
    pub cause: u64,
    pub tval: u64,
}

/// Pseudo-causes for the run loop's own exits.
const EXIT_WFI: u64 = 1000;
const EXIT_SBI: u64 = 1001;

pub(crate) const CAUSE_ILLEGAL: u64 = 2;
pub(crate) const CAUSE_BREAKPOINT: u64 = 3;
pub(crate) const CAUSE_ECALL_U: u64 = 8;

impl Trap {
    pub fn new(cause: u64, tval: u64) -> Trap {
        Trap { cause, tval }
    }
    pub fn illegal(insn: u32) -> Trap {
        Trap {
            cause: CAUSE_ILLEGAL,
            tval: insn as u64,
        }
    }
    pub fn wfi() -> Trap {
        Trap {
            cause: EXIT_WFI,
            tval: 0,
        }
    }
    pub fn sbi() -> Trap {
        Trap {
            cause: EXIT_SBI,
            tval: 0,
        }
    }
}

/// One RISC-V hart.
pub struct Hart {
    pub(crate) x: [u64; 32],
    pub(crate) pc: u64,
    pub(crate) fpu: Fpu,
    pub(crate) prv: Priv,
    pub(crate) hartid: u64,

    pub(crate) mstatus: u64,
    pub(crate) medeleg: u64,
    pub(crate) mideleg: u64,
    pub(crate) mie: u64,
    /// Software-writable `mip` bits (SSIP, STIP, SEIP).
    pub(crate) mip_sw: u64,
    /// `mip` bits driven by the outside: PLIC, CLINT, the SBI timer.
    pub(crate) mip_ext: u64,
    pub(crate) mtvec: u64,
    pub(crate) mscratch: u64,
    pub(crate) mepc: u64,
    pub(crate) mcause: u64,
    pub(crate) mtval: u64,
    pub(crate) mcounteren: u64,
    pub(crate) menvcfg: u64,
    pub(crate) stvec: u64,
    pub(crate) sscratch: u64,
    pub(crate) sepc: u64,
    pub(crate) scause: u64,
    pub(crate) stval: u64,
    pub(crate) scounteren: u64,
    pub(crate) satp: u64,
    /// Sstc `stimecmp`; also where the SBI timer extension sets its deadline.
    pub(crate) stimecmp: u64,
    pub(crate) instret: u64,
    pub(crate) clock: GuestClock,
    /// LR/SC reservation: the reserved location and the value LR read.
    pub(crate) reservation: Option<crate::exec::Reservation>,

    /// S-mode `ecall`s go to the SBI inside the VMM ([`Exit::Sbi`]); off
    /// when M-mode firmware (OpenSBI) runs in the guest and takes them.
    pub(crate) builtin_sbi: bool,

    /// The instruction being executed (raw bits, for `tval`).
    pub(crate) insn: u32,
    pub(crate) irq_check_pending: bool,

    pub(crate) ram: Arc<GuestRam>,
    pub(crate) ram_base: u64,
    pub(crate) ram_host: *mut u8,
    pub(crate) seen_discard_epoch: u64,
    /// Some TLB entry may hold a write translation, made under guest RAM's
    /// code-mark epoch `write_epoch` (see [`GuestRam::begin_write_translations`]).
    pub(crate) writes_cached: bool,
    pub(crate) write_epoch: u64,
    pub(crate) tlbs: Box<[[TlbEntry; TLB_SIZE]; 4]>,
    pub(crate) tlb_data: usize,
    pub(crate) tlb_exec: usize,
    pub(crate) jit: Jit,
}

// SAFETY: `ram_host` points into the `Arc<GuestRam>` the hart also holds, so
// it stays valid wherever the hart moves; the hart is used by one thread at
// a time.
unsafe impl Send for Hart {}

impl Hart {
    /// A hart in S-mode at `pc`, as the SBI leaves it for a kernel: `a0` =
    /// hart id, `a1` = device tree address, counters enabled for S and U,
    /// exceptions and S interrupts delegated to S.
    pub fn new(hartid: u64, ram: Arc<GuestRam>, pc: u64, dtb: u64) -> Hart {
        let mut h = Hart {
            x: [0; 32],
            pc,
            fpu: Fpu::default(),
            prv: Priv::S,
            hartid,
            mstatus: 0,
            medeleg: 0xb1ff & !(1 << 9),
            mideleg: SSIP | STIP | SEIP,
            mie: 0,
            mip_sw: 0,
            mip_ext: 0,
            mtvec: 0,
            mscratch: 0,
            mepc: 0,
            mcause: 0,
            mtval: 0,
            mcounteren: 7,
            // Sstc on: the built-in SBI plays the M-mode firmware that
            // enables it, so Linux programs `stimecmp` without an ecall.
            menvcfg: 1 << 63,
            stvec: 0,
            sscratch: 0,
            sepc: 0,
            scause: 0,
            stval: 0,
            scounteren: 7,
            satp: 0,
            stimecmp: u64::MAX,
            instret: 0,
            clock: GuestClock::starting_now(),
            reservation: None,
            builtin_sbi: true,
            insn: 0,
            irq_check_pending: true,
            jit: Jit::new(ram.clone(), hartid as usize),
            ram_base: ram.base(),
            ram_host: ram.host_ptr(),
            seen_discard_epoch: ram.discard_epoch(),
            writes_cached: false,
            write_epoch: 0,
            ram,
            tlbs: Box::new([[TlbEntry::EMPTY; TLB_SIZE]; 4]),
            tlb_data: 1,
            tlb_exec: 1,
        };
        h.x[10] = hartid;
        h.x[11] = dtb;
        h.select_tlb();
        h
    }

    /// Integer register `i` (x0..x31).
    pub fn reg(&self, i: usize) -> u64 {
        self.x[i & 31]
    }

    /// Sets integer register `i` (writes to x0 are ignored).
    pub fn set_reg(&mut self, i: usize, v: u64) {
        if i & 31 != 0 {
            self.x[i & 31] = v;
        }
    }

    /// The program counter.
    pub fn pc(&self) -> u64 {
        self.pc
    }

    /// The current privilege.
    pub fn privilege(&self) -> Priv {
        self.prv
    }

    /// Instructions retired so far.
    pub fn instret(&self) -> u64 {
        self.instret
    }

    /// The guest clock.
    pub fn clock(&self) -> &GuestClock {
        &self.clock
    }

    /// Replaces the guest clock (restore, migration).
    pub fn set_clock(&mut self, clock: GuestClock) {
        self.clock = clock;
    }

    /// The hart as a RISC-V reset leaves it for M-mode firmware, with the
    /// arguments OpenSBI's `fw_dynamic` expects: M-mode at `entry`, `a0` =
    /// hart id, `a1` = device tree, `a2` = the dynamic info structure;
    /// delegation, counters and translation off; S-mode `ecall`s go to the
    /// firmware, not to the VMM.
    pub fn reset_for_firmware(&mut self, entry: u64, dtb: u64, info: u64) {
        self.prv = Priv::M;
        self.pc = entry;
        self.x = [0; 32];
        self.x[10] = self.hartid;
        self.x[11] = dtb;
        self.x[12] = info;
        self.mstatus = 0;
        self.medeleg = 0;
        self.mideleg = 0;
        self.mie = 0;
        self.mip_sw = 0;
        self.mcounteren = 0;
        self.scounteren = 0;
        self.menvcfg = 0;
        self.stimecmp = u64::MAX;
        self.satp = 0;
        self.builtin_sbi = false;
        self.reservation = None;
        self.tlb_flush();
        self.select_tlb();
        self.irq_check_pending = true;
    }

    /// Whether S-mode `ecall`s go to the VMM's SBI (see [`reset_for_firmware`](Self::reset_for_firmware)).
    pub fn builtin_sbi(&self) -> bool {
        self.builtin_sbi
    }

    /// SBI HSM `hart_start`: the hart begins at `pc` in S-mode with
    /// translation off and interrupts disabled, `a0` = its id, `a1` =
    /// `opaque`.
    pub fn hsm_start(&mut self, pc: u64, opaque: u64) {
        self.pc = pc;
        self.prv = Priv::S;
        self.satp = 0;
        self.mstatus &= !(crate::csr::mstatus::SIE | crate::csr::mstatus::MIE);
        self.x[10] = self.hartid;
        self.x[11] = opaque;
        self.reservation = None;
        self.tlb_flush();
        self.select_tlb();
        self.irq_check_pending = true;
    }

    /// `fence.i` for this hart from the outside (an SBI remote fence):
    /// drops the hart's translated code that changed.
    pub fn fence_i(&mut self) {
        self.jit_fence_i();
    }

    /// The hart lets go of its thread (`wfi`, a park, an HSM stop): it
    /// drops its write translations, so other harts need not wait for it
    /// to check the code they translate (see `jit_fence_i`).
    pub fn release_writes(&mut self) {
        if self.writes_cached {
            self.tlb_flush_writes();
        }
    }

    /// Completes an SBI call: `a0` = error, `a1` = value, resume after the `ecall`.
    pub fn sbi_return(&mut self, error: i64, value: u64) {
        self.x[10] = error as u64;
        self.x[11] = value;
        self.pc = self.pc.wrapping_add(4);
    }

    /// Sets the SBI timer deadline (clears a pending timer interrupt until it passes).
    pub fn set_timer(&mut self, ticks: u64) {
        self.stimecmp = ticks;
        self.update_timer();
    }

    /// Guest ticks of the next timer deadline (`u64::MAX` when none).
    pub fn timer_deadline(&self) -> u64 {
        self.stimecmp
    }

    /// Drives an externally wired interrupt line (`irq::MEIP`, `SEIP`, `MTIP`, `MSIP`).
    pub fn set_irq(&mut self, bit: u64, level: bool) {
        let old = self.mip_ext;
        if level {
            self.mip_ext |= bit;
        } else {
            self.mip_ext &= !bit;
        }
        if old != self.mip_ext {
            self.irq_check_pending = true;
        }
    }

    /// Raises a supervisor software interrupt (an SBI IPI to this hart).
    pub fn set_software_interrupt(&mut self) {
        self.mip_sw |= SSIP;
        self.irq_check_pending = true;
    }

    /// Drives all externally wired lines at once from [`Bus::irq_lines`].
    pub fn set_irq_lines(&mut self, lines: u64) {
        let mask = MEIP | SEIP | MTIP | MSIP;
        let new = (self.mip_ext & !mask) | (lines & mask);
        if new != self.mip_ext {
            self.mip_ext = new;
            self.irq_check_pending = true;
        }
    }

    /// Recomputes STIP from the deadline and the clock. `stimecmp` drives
    /// STIP when the built-in SBI's timer uses it, or when M-mode firmware
    /// turned Sstc on (`menvcfg.STCE`); otherwise STIP is the firmware's to
    /// set in `mip`.
    pub fn update_timer(&mut self) {
        let fired = self.sstc() && self.stimecmp != u64::MAX && self.clock.ticks() >= self.stimecmp;
        self.set_irq(STIP, fired);
    }

    /// `mip`. With Sstc on, STIP is `stimecmp`'s alone: a software write
    /// to `mip.STIP` (firmware's timer path) is ignored, as the spec says.
    pub(crate) fn mip(&self) -> u64 {
        if self.sstc() {
            (self.mip_sw & !STIP) | self.mip_ext
        } else {
            self.mip_sw | self.mip_ext
        }
    }

    /// Whether `stimecmp` drives STIP (see [`update_timer`](Self::update_timer)).
    #[inline]
    pub(crate) fn sstc(&self) -> bool {
        self.builtin_sbi || self.menvcfg >> 63 != 0
    }

    /// True when an enabled interrupt is pending (what wakes a `wfi`).
    pub fn interrupt_waiting(&self) -> bool {
        self.mip() & self.mie != 0
    }

    /// Runs up to `budget` steps (an instruction retired or a trap taken,
    /// so that a guest stuck in a trap loop still returns to the machine).
    pub fn run(&mut self, bus: &mut dyn Bus, budget: u64) -> Exit {
        self.irq_check_pending = true;
        self.jit_sync();
        let mut left = budget;
        while left > 0 {
            if self.irq_check_pending {
                self.irq_check_pending = false;
                if let Some(cause) = self.pending_interrupt() {
                    self.enter_trap(cause | (1 << 63), 0);
                    left -= 1;
                    continue;
                }
            }
            if let Some((code, len)) = self.jit_block() {
                if len as u64 <= left {
                    let r = self.jit_call(code, left);
                    debug_assert!(r.left <= left);
                    self.instret = self.instret.wrapping_add(left - r.left);
                    left = r.left;
                    self.pc = r.pc & !1;
                    // Bit 0: the instruction at pc is the interpreter's.
                    if r.pc & 1 == 0 || left == 0 {
                        continue;
                    }
                }
            }
            left -= 1;
            match self.step(bus) {
                Ok(()) => self.instret = self.instret.wrapping_add(1),
                Err(t) if t.cause == EXIT_WFI => {
                    self.instret = self.instret.wrapping_add(1);
                    return Exit::Wfi;
                }
                Err(t) if t.cause == EXIT_SBI => return Exit::Sbi,
                Err(t) => self.enter_trap(t.cause, t.tval),
            }
        }
        Exit::Budget
    }

    /// The highest-priority interrupt that is pending, enabled and not masked.
    fn pending_interrupt(&self) -> Option<u64> {
        let pending = self.mip() & self.mie;
        if pending == 0 {
            return None;
        }
        let m_enabled = self.prv < Priv::M || self.mstatus & mstatus::MIE != 0;
        let s_enabled =
            self.prv < Priv::S || (self.prv == Priv::S && self.mstatus & mstatus::SIE != 0);
        let m_pending = pending & !self.mideleg;
        let s_pending = pending & self.mideleg;
        let take = if m_enabled && m_pending != 0 {
            m_pending
        } else if s_enabled && s_pending != 0 {
            s_pending
        } else {
            return None;
        };
        // Priority: MEI, MSI, MTI, SEI, SSI, STI.
        [11, 3, 7, 9, 1, 5]
            .into_iter()
            .find(|&c| take & (1 << c) != 0)
    }

    /// Takes a trap (exception or interrupt `cause` with the top bit set).
    pub(crate) fn enter_trap(&mut self, cause: u64, tval: u64) {
        let interrupt = cause >> 63 != 0;
        let code = cause & 0x3f;
        let deleg = if interrupt {
            self.mideleg
        } else {
            self.medeleg
        };
        if self.prv <= Priv::S && (deleg >> code) & 1 != 0 {
            self.scause = cause;
            self.sepc = self.pc;
            self.stval = tval;
            let spie = if self.mstatus & mstatus::SIE != 0 {
                mstatus::SPIE
            } else {
                0
            };
            let spp = if self.prv == Priv::S { mstatus::SPP } else { 0 };
            self.mstatus =
                (self.mstatus & !(mstatus::SPIE | mstatus::SIE | mstatus::SPP)) | spie | spp;
            self.prv = Priv::S;
            self.pc = vector(self.stvec, interrupt, code);
        } else {
            self.mcause = cause;
            self.mepc = self.pc;
            self.mtval = tval;
            let mpie = if self.mstatus & mstatus::MIE != 0 {
                mstatus::MPIE
            } else {
                0
            };
            let mpp = (self.prv as u64) << mstatus::MPP_SHIFT;
            self.mstatus =
                (self.mstatus & !(mstatus::MPIE | mstatus::MIE | mstatus::MPP)) | mpie | mpp;
            self.prv = Priv::M;
            self.pc = vector(self.mtvec, interrupt, code);
        }
        self.reservation = None;
        self.select_tlb();
    }

    /// Fetches the instruction at `pc`; returns it (compressed ones expanded)
    /// and its length.
    #[inline(always)]
    pub(crate) fn fetch(&mut self) -> Result<(u32, u64), Trap> {
        let pc = self.pc;
        let vpn = pc >> PAGE_SHIFT;
        let e = &self.tlbs[self.tlb_exec & 3][vpn as usize & TLB_MASK];
        if e.exec == vpn {
            let p = e.addend.wrapping_add(pc as usize) as *const u8;
            // SAFETY: an exec tag is only cached for a page inside guest RAM,
            // and `pc & 0xfff <= 0xffe` since pc is 2-byte aligned.
            let lo = unsafe { read_host(p, 2) } as u16;
            if lo & 3 != 3 {
                self.insn = lo as u32;
                return Ok((rvc::expand(lo), 2));
            }
            if pc & 0xfff <= 0xffc {
                // SAFETY: the 4 bytes are inside the same cached RAM page.
                let w = unsafe { read_host(p, 4) } as u32;
                self.insn = w;
                return Ok((w, 4));
            }
        }
        let lo = self.fetch_slow16(pc)?;
        if lo & 3 != 3 {
            self.insn = lo as u32;
            return Ok((rvc::expand(lo), 2));
        }
        let hi = self.fetch_slow16(pc.wrapping_add(2))?;
        let w = lo as u32 | (hi as u32) << 16;
        self.insn = w;
        Ok((w, 4))
    }

    /// `mret`/`sret` common work: return to `prv`, reselect the TLB.
    pub(crate) fn return_to(&mut self, prv: Priv, pc: u64) {
        if prv != Priv::M {
            self.mstatus &= !mstatus::MPRV;
        }
        self.prv = prv;
        self.pc = pc;
        self.select_tlb();
        self.irq_check_pending = true;
    }

    /// Checks the FPU is on (`mstatus.FS` != Off).
    #[inline]
    pub(crate) fn fp_check(&self) -> Result<(), Trap> {
        if self.mstatus & mstatus::FS == 0 {
            Err(Trap::illegal(self.insn))
        } else {
            Ok(())
        }
    }

    /// Guest RAM this hart runs on.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }
}

fn vector(tvec: u64, interrupt: bool, code: u64) -> u64 {
    let base = tvec & !3;
    if interrupt && tvec & 3 == 1 {
        base + 4 * code
    } else {
        base
    }
}

/// Cause for an ecall from privilege `p`.
pub(crate) fn ecall_cause(p: Priv) -> u64 {
    CAUSE_ECALL_U + p as u64
}

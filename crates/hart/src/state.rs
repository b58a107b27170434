//! What a hart remembers across a snapshot or a migration.

use crate::hart::{Hart, Priv};
use serde::{Deserialize, Serialize};

/// The architectural state of one hart. The TLB is not part of it: it is
/// rebuilt from the page tables on demand. Nor is the clock: the board's
/// one clock is saved once for all harts (`ClockState`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HartState {
    pub x: [u64; 32],
    pub f: [u64; 32],
    pub fflags: u8,
    pub frm: u8,
    pub pc: u64,
    pub prv: Priv,
    pub hartid: u64,
    pub mstatus: u64,
    pub medeleg: u64,
    pub mideleg: u64,
    pub mie: u64,
    pub mip_sw: u64,
    pub mtvec: u64,
    pub mscratch: u64,
    pub mepc: u64,
    pub mcause: u64,
    pub mtval: u64,
    pub mcounteren: u64,
    pub menvcfg: u64,
    pub stvec: u64,
    pub sscratch: u64,
    pub sepc: u64,
    pub scause: u64,
    pub stval: u64,
    pub scounteren: u64,
    pub satp: u64,
    pub stimecmp: u64,
    pub instret: u64,
    /// S-mode ecalls go to the VMM's SBI (not to M-mode firmware).
    pub builtin_sbi: bool,
}

impl Hart {
    /// Captures the hart's state (call while it is not running).
    pub fn state(&self) -> HartState {
        HartState {
            x: self.x,
            f: self.fpu.f,
            fflags: self.fpu.fflags,
            frm: self.fpu.frm,
            pc: self.pc,
            prv: self.prv,
            hartid: self.hartid,
            mstatus: self.mstatus,
            medeleg: self.medeleg,
            mideleg: self.mideleg,
            mie: self.mie,
            mip_sw: self.mip_sw,
            mtvec: self.mtvec,
            mscratch: self.mscratch,
            mepc: self.mepc,
            mcause: self.mcause,
            mtval: self.mtval,
            mcounteren: self.mcounteren,
            menvcfg: self.menvcfg,
            stvec: self.stvec,
            sscratch: self.sscratch,
            sepc: self.sepc,
            scause: self.scause,
            stval: self.stval,
            scounteren: self.scounteren,
            satp: self.satp,
            stimecmp: self.stimecmp,
            instret: self.instret,
            builtin_sbi: self.builtin_sbi,
        }
    }

    /// Loads a state captured by [`Hart::state`]. Externally driven
    /// interrupt lines are not part of it: the machine re-drives them.
    pub fn restore(&mut self, s: &HartState) {
        self.x = s.x;
        self.x[0] = 0;
        self.fpu.f = s.f;
        self.fpu.fflags = s.fflags & 0x1f;
        self.fpu.frm = s.frm & 7;
        self.pc = s.pc;
        self.prv = s.prv;
        self.hartid = s.hartid;
        self.mstatus = 0;
        self.mstatus_write(s.mstatus);
        self.medeleg = s.medeleg;
        self.mideleg = s.mideleg;
        self.mie = s.mie;
        self.mip_sw = s.mip_sw;
        self.mtvec = s.mtvec;
        self.mscratch = s.mscratch;
        self.mepc = s.mepc;
        self.mcause = s.mcause;
        self.mtval = s.mtval;
        self.mcounteren = s.mcounteren;
        self.menvcfg = s.menvcfg;
        self.stvec = s.stvec;
        self.sscratch = s.sscratch;
        self.sepc = s.sepc;
        self.scause = s.scause;
        self.stval = s.stval;
        self.scounteren = s.scounteren;
        self.satp = s.satp;
        self.stimecmp = s.stimecmp;
        self.instret = s.instret;
        self.builtin_sbi = s.builtin_sbi;
        // A reservation does not survive a save (it names a host address):
        // the next SC fails, as an SC may, and the guest retries.
        self.reservation = None;
        self.tlb_flush();
        self.jit.flush();
        self.select_tlb();
        self.irq_check_pending = true;
    }
}

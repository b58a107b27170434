//! Control and status registers: numbers, `mstatus` fields, and the
//! read/write rules (WARL masks, privilege and counter-enable checks).

use crate::hart::{Hart, Priv, Trap};
use crate::irq::*;

pub const FFLAGS: u16 = 0x001;
pub const FRM: u16 = 0x002;
pub const FCSR: u16 = 0x003;
pub const CYCLE: u16 = 0xc00;
pub const TIME: u16 = 0xc01;
pub const INSTRET: u16 = 0xc02;
pub const SSTATUS: u16 = 0x100;
pub const SIE: u16 = 0x104;
pub const STVEC: u16 = 0x105;
pub const SCOUNTEREN: u16 = 0x106;
pub const SENVCFG: u16 = 0x10a;
pub const SSCRATCH: u16 = 0x140;
pub const SEPC: u16 = 0x141;
pub const SCAUSE: u16 = 0x142;
pub const STVAL: u16 = 0x143;
pub const SIP: u16 = 0x144;
pub const STIMECMP: u16 = 0x14d;
pub const SATP: u16 = 0x180;
pub const MVENDORID: u16 = 0xf11;
pub const MARCHID: u16 = 0xf12;
pub const MIMPID: u16 = 0xf13;
pub const MHARTID: u16 = 0xf14;
pub const MCONFIGPTR: u16 = 0xf15;
pub const MSTATUS: u16 = 0x300;
pub const MISA: u16 = 0x301;
pub const MEDELEG: u16 = 0x302;
pub const MIDELEG: u16 = 0x303;
pub const MIE: u16 = 0x304;
pub const MTVEC: u16 = 0x305;
pub const MCOUNTEREN: u16 = 0x306;
pub const MENVCFG: u16 = 0x30a;
pub const MCOUNTINHIBIT: u16 = 0x320;
pub const MSCRATCH: u16 = 0x340;
pub const MEPC: u16 = 0x341;
pub const MCAUSE: u16 = 0x342;
pub const MTVAL: u16 = 0x343;
pub const MIP: u16 = 0x344;
pub const MCYCLE: u16 = 0xb00;
pub const MINSTRET: u16 = 0xb02;

pub mod mstatus {
    pub const SIE: u64 = 1 << 1;
    pub const MIE: u64 = 1 << 3;
    pub const SPIE: u64 = 1 << 5;
    pub const MPIE: u64 = 1 << 7;
    pub const SPP: u64 = 1 << 8;
    pub const MPP_SHIFT: u32 = 11;
    pub const MPP: u64 = 3 << MPP_SHIFT;
    pub const FS_SHIFT: u32 = 13;
    pub const FS: u64 = 3 << FS_SHIFT;
    pub const MPRV: u64 = 1 << 17;
    pub const SUM: u64 = 1 << 18;
    pub const MXR: u64 = 1 << 19;
    pub const TVM: u64 = 1 << 20;
    pub const TW: u64 = 1 << 21;
    pub const TSR: u64 = 1 << 22;
    /// UXL = SXL = 2 (64-bit), read-only.
    pub const XL64: u64 = (2 << 32) | (2 << 34);
    pub const SD: u64 = 1 << 63;
    /// Bits M-mode can write.
    pub const M_WRITABLE: u64 =
        SIE | MIE | SPIE | MPIE | SPP | MPP | FS | MPRV | SUM | MXR | TVM | TW | TSR;
    /// Bits visible through `sstatus`.
    pub const S_VISIBLE: u64 = SIE | SPIE | SPP | FS | SUM | MXR | XL64 | SD;
    /// Bits S-mode can write through `sstatus`.
    pub const S_WRITABLE: u64 = SIE | SPIE | SPP | FS | SUM | MXR;
}

/// `misa`: RV64 with I M A F D C S U.
pub const MISA_VALUE: u64 = (2 << 62)
    | (1 << 0)
    | (1 << 2)
    | (1 << 3)
    | (1 << 5)
    | (1 << 8)
    | (1 << 12)
    | (1 << 18)
    | (1 << 20);

/// Interrupt bits the S-mode or M-mode software may set in `mip`.
const MIP_WRITABLE: u64 = SSIP | STIP | SEIP;
/// Interrupts that exist on this hart.
const MIE_WRITABLE: u64 = SSIP | MSIP | STIP | MTIP | SEIP | MEIP;
/// Exceptions that may be delegated to S-mode (not ecall from M).
const MEDELEG_WRITABLE: u64 = 0xb3ff;

impl Hart {
    /// Reads CSR `n` for the instruction at the current privilege.
    pub(crate) fn csr_read(&mut self, n: u16) -> Result<u64, Trap> {
        self.csr_check(n, false)?;
        let v = match n {
            FFLAGS | FRM | FCSR => {
                self.fp_check()?;
                match n {
                    FFLAGS => self.fpu.fflags as u64,
                    FRM => self.fpu.frm as u64,
                    _ => ((self.fpu.frm as u64) << 5) | self.fpu.fflags as u64,
                }
            }
            CYCLE | INSTRET | MCYCLE | MINSTRET => self.instret,
            TIME => self.clock.ticks(),
            0xc03..=0xc1f | 0xb03..=0xb1f | 0x323..=0x33f => 0,
            SSTATUS => self.mstatus_read() & mstatus::S_VISIBLE,
            SIE => self.mie & self.mideleg,
            STVEC => self.stvec,
            SCOUNTEREN => self.scounteren,
            SENVCFG => 0,
            SSCRATCH => self.sscratch,
            SEPC => self.sepc,
            SCAUSE => self.scause,
            STVAL => self.stval,
            SIP => self.mip() & self.mideleg,
            STIMECMP => self.stimecmp,
            SATP => {
                if self.prv == Priv::S && self.mstatus & mstatus::TVM != 0 {
                    return Err(Trap::illegal(self.insn));
                }
                self.satp
            }
            MVENDORID | MARCHID | MIMPID | MCONFIGPTR => 0,
            MHARTID => self.hartid,
            MSTATUS => self.mstatus_read(),
            MISA => MISA_VALUE,
            MEDELEG => self.medeleg,
            MIDELEG => self.mideleg,
            MIE => self.mie,
            MTVEC => self.mtvec,
            MCOUNTEREN => self.mcounteren,
            MENVCFG => self.menvcfg,
            MCOUNTINHIBIT => 0,
            MSCRATCH => self.mscratch,
            MEPC => self.mepc,
            MCAUSE => self.mcause,
            MTVAL => self.mtval,
            MIP => self.mip(),
            0x3a0..=0x3ef => 0, // PMP: none implemented, reads as zero
            _ => return Err(Trap::illegal(self.insn)),
        };
        Ok(v)
    }

    /// Writes CSR `n`.
    pub(crate) fn csr_write(&mut self, n: u16, v: u64) -> Result<(), Trap> {
        self.csr_check(n, true)?;
        match n {
            FFLAGS | FRM | FCSR => {
                self.fp_check()?;
                match n {
                    FFLAGS => self.fpu.fflags = (v & 0x1f) as u8,
                    FRM => self.fpu.frm = (v & 7) as u8,
                    _ => {
                        self.fpu.fflags = (v & 0x1f) as u8;
                        self.fpu.frm = ((v >> 5) & 7) as u8;
                    }
                }
                self.mstatus |= mstatus::FS;
            }
            SSTATUS => {
                let m = (self.mstatus & !mstatus::S_WRITABLE) | (v & mstatus::S_WRITABLE);
                self.mstatus_write(m);
            }
            SIE => self.mie = (self.mie & !self.mideleg) | (v & self.mideleg & MIE_WRITABLE),
            STVEC => self.stvec = v & !2,
            SCOUNTEREN => self.scounteren = v & 0xffff_ffff,
            SENVCFG => {}
            SSCRATCH => self.sscratch = v,
            SEPC => self.sepc = v & !1,
            SCAUSE => self.scause = v,
            STVAL => self.stval = v,
            SIP => {
                let mask = self.mideleg & SSIP;
                self.mip_sw = (self.mip_sw & !mask) | (v & mask);
            }
            STIMECMP => {
                self.stimecmp = v;
                self.update_timer();
            }
            SATP => {
                if self.prv == Priv::S && self.mstatus & mstatus::TVM != 0 {
                    return Err(Trap::illegal(self.insn));
                }
                // Only Bare and Sv39 exist; a write of any other mode has no
                // effect (Linux probes Sv57 and Sv48 this way). ASIDs are not
                // implemented: the ASID field reads as zero.
                let mode = v >> 60;
                if mode == 0 || mode == 8 {
                    self.satp = v & ((0xf << 60) | ((1 << 44) - 1));
                    self.tlb_flush();
                }
            }
            MSTATUS => self.mstatus_write(v),
            MISA | MCOUNTINHIBIT => {}
            MEDELEG => self.medeleg = v & MEDELEG_WRITABLE,
            MIDELEG => self.mideleg = v & (SSIP | STIP | SEIP),
            MIE => self.mie = v & MIE_WRITABLE,
            MTVEC => self.mtvec = v & !2,
            MCOUNTEREN => self.mcounteren = v & 0xffff_ffff,
            MENVCFG => self.menvcfg = v & (1 << 63), // STCE only
            MSCRATCH => self.mscratch = v,
            MEPC => self.mepc = v & !1,
            MCAUSE => self.mcause = v,
            MTVAL => self.mtval = v,
            MIP => {
                // With Sstc on, STIP is stimecmp's and read-only here.
                let w = if self.sstc() {
                    MIP_WRITABLE & !STIP
                } else {
                    MIP_WRITABLE
                };
                self.mip_sw = (self.mip_sw & !w) | (v & w);
            }
            MCYCLE | MINSTRET => self.instret = v,
            0xb03..=0xb1f | 0x323..=0x33f | 0x3a0..=0x3ef => {}
            _ => return Err(Trap::illegal(self.insn)),
        }
        // Writes can enable an interrupt that is already pending.
        self.irq_check_pending = true;
        Ok(())
    }

    /// The value CSRRS/CSRRC set or clear bits in, given what CSR `n` read.
    /// `mip.SEIP` reads as the software-writable bit ORed with the PLIC's
    /// line, but only the software bit takes part in a read-modify-write
    /// (privileged spec, "Machine Interrupt Registers"): otherwise M-mode
    /// code doing `csrs mip, SSIP` while the PLIC asserts SEIP would latch
    /// SEIP for ever, and S-mode would take external interrupts that no
    /// claim can clear.
    pub(crate) fn csr_rmw_base(&self, n: u16, read: u64) -> u64 {
        match n {
            MIP => (read & !SEIP) | (self.mip_sw & SEIP),
            _ => read,
        }
    }

    /// Privilege, read-only and counter-enable checks common to all CSRs.
    fn csr_check(&self, n: u16, write: bool) -> Result<(), Trap> {
        let min = Priv::from_bits(((n >> 8) & 3) as u64);
        if (self.prv as u8) < (min as u8) || (write && (n >> 10) & 3 == 3) {
            return Err(Trap::illegal(self.insn));
        }
        if (CYCLE..=0xc1f).contains(&n) {
            let bit = 1u64 << (n - CYCLE);
            let ok = match self.prv {
                Priv::M => true,
                Priv::S => self.mcounteren & bit != 0,
                Priv::U => self.mcounteren & bit != 0 && self.scounteren & bit != 0,
            };
            if !ok {
                return Err(Trap::illegal(self.insn));
            }
        }
        if n == STIMECMP
            && self.prv == Priv::S
            && (self.menvcfg >> 63 == 0 || self.mcounteren & 2 == 0)
        {
            return Err(Trap::illegal(self.insn));
        }
        Ok(())
    }

    /// `mstatus` with the read-only and summary fields filled in.
    pub(crate) fn mstatus_read(&self) -> u64 {
        let mut m = self.mstatus | mstatus::XL64;
        if m & mstatus::FS == mstatus::FS {
            m |= mstatus::SD;
        }
        m
    }

    pub(crate) fn mstatus_write(&mut self, v: u64) {
        let old = self.mstatus;
        let mut v = v & mstatus::M_WRITABLE;
        // MPP is WARL: the reserved value 2 reads back as U.
        if (v & mstatus::MPP) >> mstatus::MPP_SHIFT == 2 {
            v &= !mstatus::MPP;
        }
        self.mstatus = v;
        // SUM, MXR and MPRV change what a cached translation allows.
        if (old ^ v) & (mstatus::MXR | mstatus::MPRV | mstatus::MPP) != 0 {
            self.tlb_flush();
        }
        self.select_tlb();
    }
}

//! RISC-V F and D extensions: IEEE 754 arithmetic with RISC-V rules.
//!
//! [`Fpu::execute`] decodes and runs the computational instructions (OP-FP
//! and the four fused multiply-adds); loads, stores and the CSR accesses to
//! `fcsr` belong to the integer core, which reads and writes the public
//! fields directly.
//!
//! The arithmetic is a software IEEE 754 implementation (`fp/soft.rs`) rather
//! than host floating point, because the guest chooses the rounding mode
//! per instruction and needs exact exception flags, neither of which the
//! host operators expose, and because RISC-V differs from x86 in NaN
//! results (always canonical), tininess detection (after rounding) and
//! float-to-integer overflow (saturating). Host arithmetic serves only as a
//! fast path for round-to-nearest-even where it is provably exact in value
//! and flags (`fp/host.rs`).

mod host;
mod soft;
#[cfg(test)]
mod tests;

use soft::{Format, IntKind, Rm, F32, F64};

/// Floating-point register file and `fcsr`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fpu {
    /// f0..f31 as raw 64-bit patterns; single-precision values are NaN-boxed.
    pub f: [u64; 32],
    /// Accrued exception flags (`fflags`, 5 bits: NV DZ OF UF NX).
    pub fflags: u8,
    /// Dynamic rounding mode (`frm`, 3 bits).
    pub frm: u8,
}

/// The instruction is not a valid F/D instruction (illegal-instruction trap).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Illegal;

/// NaN-boxes a single-precision pattern into a 64-bit register.
#[inline]
pub fn nan_box(v: u32) -> u64 {
    0xffff_ffff_0000_0000 | v as u64
}

/// Reads a single-precision operand from a 64-bit register: the canonical
/// NaN 0x7fc00000 when not properly NaN-boxed (upper 32 bits not all ones).
#[inline]
pub fn unbox_f32(v: u64) -> u32 {
    if v >> 32 == 0xffff_ffff {
        v as u32
    } else {
        0x7fc0_0000
    }
}

/// Sign-extends the low 32 bits, as RV64 does for every 32-bit integer result.
fn sext32(v: u64) -> u64 {
    v as u32 as i32 as i64 as u64
}

/// Where an instruction's result goes.
enum Dest {
    /// `f[rd]`, in the given format (singles are NaN-boxed).
    F(Format, u64),
    /// `x[rd]`.
    X(u64),
}

impl Fpu {
    /// Executes one F/D computational instruction: opcode 0x53 (OP-FP) or the fused
    /// multiply-adds 0x43 FMADD, 0x47 FMSUB, 0x4b FNMSUB, 0x4f FNMADD, in both S (fmt=00) and D (fmt=01).
    /// Integer operands are read from / results written to `x` (the caller re-zeroes `x[0]` afterwards,
    /// so writing `x[0]` is harmless). Accrues fflags. Returns Err(Illegal) for reserved encodings,
    /// invalid rounding modes (rm=5,6, or rm=7 with frm>=5), unsupported fmt (H/Q).
    ///
    /// An illegal instruction changes no state.
    pub fn execute(&mut self, inst: u32, x: &mut [u64; 32]) -> Result<(), Illegal> {
        let rd = (inst >> 7 & 31) as usize;
        let rs1 = (inst >> 15 & 31) as usize;
        let rs2 = (inst >> 20 & 31) as usize;
        let funct3 = (inst >> 12 & 7) as u8;
        let fmt = match inst >> 25 & 3 {
            0 => F32,
            1 => F64,
            // H (Zfh) and Q are not implemented.
            _ => return Err(Illegal),
        };
        let (dest, flags) = match inst & 0x7f {
            op @ (0x43 | 0x47 | 0x4b | 0x4f) => {
                let rs3 = (inst >> 27) as usize;
                let rm = self.rounding(funct3)?;
                // FMADD: a*b+c, FMSUB: a*b-c, FNMSUB: -(a*b)+c, FNMADD: -(a*b)-c.
                let neg_prod = op == 0x4b || op == 0x4f;
                let neg_c = op == 0x47 || op == 0x4f;
                let (a, b, c) = (
                    self.read(fmt, rs1),
                    self.read(fmt, rs2),
                    self.read(fmt, rs3),
                );
                let (v, fl) = soft::fma(fmt, a, b, c, neg_prod, neg_c, rm);
                (Dest::F(fmt, v), fl)
            }
            0x53 => self.op_fp(inst, fmt, funct3, rs1, rs2, x)?,
            _ => return Err(Illegal),
        };
        match dest {
            Dest::F(fmt, v) => self.f[rd] = if fmt == F32 { nan_box(v as u32) } else { v },
            Dest::X(v) => x[rd] = v,
        }
        self.fflags |= flags;
        Ok(())
    }

    /// Decodes and computes an OP-FP instruction without changing any state.
    fn op_fp(
        &self,
        inst: u32,
        fmt: Format,
        funct3: u8,
        rs1: usize,
        rs2: usize,
        x: &[u64; 32],
    ) -> Result<(Dest, u8), Illegal> {
        let a = self.read(fmt, rs1);
        let b = self.read(fmt, rs2);
        let to_f = |(v, fl): (u64, u8)| (Dest::F(fmt, v), fl);
        let to_x = |(v, fl): (bool, u8)| (Dest::X(v as u64), fl);
        Ok(match inst >> 27 {
            0x00 => to_f(soft::add(fmt, a, b, self.rounding(funct3)?)),
            0x01 => to_f(soft::sub(fmt, a, b, self.rounding(funct3)?)),
            0x02 => to_f(soft::mul(fmt, a, b, self.rounding(funct3)?)),
            0x03 => to_f(soft::div(fmt, a, b, self.rounding(funct3)?)),
            0x0b if rs2 == 0 => to_f(soft::sqrt(fmt, a, self.rounding(funct3)?)),
            0x04 if funct3 <= 2 => (Dest::F(fmt, soft::sign_inject(fmt, a, b, funct3)), 0),
            0x05 if funct3 <= 1 => to_f(soft::min_max(fmt, a, b, funct3 == 1)),
            0x08 => {
                // FCVT.S.D (fmt S, source D in rs2=1) and FCVT.D.S (fmt D,
                // source S in rs2=0); other source formats are H/Q.
                let from = match (fmt == F32, rs2) {
                    (true, 1) => F64,
                    (false, 0) => F32,
                    _ => return Err(Illegal),
                };
                let rm = self.rounding(funct3)?;
                to_f(soft::convert(from, fmt, self.read(from, rs1), rm))
            }
            0x14 => match funct3 {
                0 => to_x(soft::fle(fmt, a, b)),
                1 => to_x(soft::flt(fmt, a, b)),
                2 => to_x(soft::feq(fmt, a, b)),
                _ => return Err(Illegal),
            },
            0x18 => {
                // FCVT.{W,WU,L,LU}.fmt
                let kind = int_kind(rs2)?;
                let (v, fl) = soft::to_int(fmt, a, kind, self.rounding(funct3)?);
                let v = match kind {
                    // 32-bit results, unsigned ones included, are sign-extended.
                    IntKind::W | IntKind::Wu => sext32(v as u64),
                    IntKind::L | IntKind::Lu => v as u64,
                };
                (Dest::X(v), fl)
            }
            0x1a => {
                // FCVT.fmt.{W,WU,L,LU}
                let kind = int_kind(rs2)?;
                let rm = self.rounding(funct3)?;
                let src = x[rs1];
                let v = match kind {
                    IntKind::W => i128::from(src as i32),
                    IntKind::Wu => i128::from(src as u32),
                    IntKind::L => i128::from(src as i64),
                    IntKind::Lu => i128::from(src),
                };
                to_f(soft::from_int(fmt, v, rm))
            }
            // FMV.X.W / FMV.X.D: a raw transfer, no NaN-box check (the low
            // 32 bits are moved and sign-extended).
            0x1c if rs2 == 0 && funct3 == 0 => {
                let raw = self.f[rs1];
                (Dest::X(if fmt == F32 { sext32(raw) } else { raw }), 0)
            }
            0x1c if rs2 == 0 && funct3 == 1 => (Dest::X(soft::classify(fmt, a)), 0),
            // FMV.W.X / FMV.D.X (Dest::F NaN-boxes the single).
            0x1e if rs2 == 0 && funct3 == 0 => (Dest::F(fmt, x[rs1]), 0),
            _ => return Err(Illegal),
        })
    }

    /// Reads an operand of format `fmt`: singles must be NaN-boxed.
    fn read(&self, fmt: Format, r: usize) -> u64 {
        if fmt == F32 {
            unbox_f32(self.f[r]).into()
        } else {
            self.f[r]
        }
    }

    /// Resolves an instruction's rm field (7 = dynamic, from `frm`).
    fn rounding(&self, rm: u8) -> Result<Rm, Illegal> {
        let mode = if rm == 7 { self.frm } else { rm };
        Rm::from_bits(mode).ok_or(Illegal)
    }
}

/// The integer type selected by rs2 in FCVT between integers and floats.
fn int_kind(rs2: usize) -> Result<IntKind, Illegal> {
    Ok(match rs2 {
        0 => IntKind::W,
        1 => IntKind::Wu,
        2 => IntKind::L,
        3 => IntKind::Lu,
        _ => return Err(Illegal),
    })
}

//! Tests of the F/D instructions, by instruction class, plus a check against
//! host arithmetic (authoritative for round-to-nearest-even) and a fuzz
//! test of the decoder.

use super::soft::{DZ, NV, NX, OF, UF};
use super::*;
use crate::tests::Rng;

const S: u32 = 0;
const D: u32 = 1;

const RNE: u32 = 0;
const RTZ: u32 = 1;
const RDN: u32 = 2;
const RUP: u32 = 3;
const RMM: u32 = 4;
const DYN: u32 = 7;
const MODES: [u32; 5] = [RNE, RTZ, RDN, RUP, RMM];

const QNAN_S: u32 = 0x7fc0_0000;
const QNAN_D: u64 = 0x7ff8_0000_0000_0000;
const SNAN_S: u32 = 0x7f80_0001;
const SNAN_D: u64 = 0x7ff0_0000_0000_0001;
const INF_S: u32 = 0x7f80_0000;
const INF_D: u64 = 0x7ff0_0000_0000_0000;
const MAX_S: u32 = 0x7f7f_ffff;
const MAX_D: u64 = 0x7fef_ffff_ffff_ffff;
const NEG_S: u32 = 0x8000_0000;
const NEG_D: u64 = 1 << 63;

// funct5 values of OP-FP.
const FADD: u32 = 0x00;
const FSUB: u32 = 0x01;
const FMUL: u32 = 0x02;
const FDIV: u32 = 0x03;
const FSGNJ: u32 = 0x04;
const FMINMAX: u32 = 0x05;
const FCVT_FF: u32 = 0x08;
const FSQRT: u32 = 0x0b;
const FCMP: u32 = 0x14;
const FCVT_IF: u32 = 0x18;
const FCVT_FI: u32 = 0x1a;
const FMV_X_CLASS: u32 = 0x1c;
const FMV_F_X: u32 = 0x1e;

// Fused multiply-add opcodes.
const FMADD: u32 = 0x43;
const FMSUB: u32 = 0x47;
const FNMSUB: u32 = 0x4b;
const FNMADD: u32 = 0x4f;

/// R-type OP-FP word: funct7 (funct5|fmt) | rs2 | rs1 | rm | rd | opcode.
fn r_type(funct5: u32, fmt: u32, rs2: u32, rs1: u32, rm: u32, rd: u32) -> u32 {
    funct5 << 27 | fmt << 25 | rs2 << 20 | rs1 << 15 | rm << 12 | rd << 7 | 0x53
}

/// R4-type fused multiply-add word.
fn r4_type(opcode: u32, rs3: u32, fmt: u32, rs2: u32, rs1: u32, rm: u32, rd: u32) -> u32 {
    rs3 << 27 | fmt << 25 | rs2 << 20 | rs1 << 15 | rm << 12 | rd << 7 | opcode
}

fn s(v: f32) -> u32 {
    v.to_bits()
}
fn d(v: f64) -> u64 {
    v.to_bits()
}

/// Runs `inst` with f1..f3 = `fregs` (raw register contents) and x5 = `xv`,
/// returning the machine afterwards. Panics if the instruction is illegal.
fn exec(inst: u32, fregs: [u64; 3], xv: u64, frm: u8) -> (Fpu, [u64; 32]) {
    let mut fpu = Fpu {
        frm,
        ..Fpu::default()
    };
    fpu.f[1..4].copy_from_slice(&fregs);
    let mut x = [0u64; 32];
    x[5] = xv;
    fpu.execute(inst, &mut x).expect("legal instruction");
    (fpu, x)
}

/// A single-precision result in f10: checks it is NaN-boxed, returns the bits.
fn single_result(fpu: &Fpu) -> u32 {
    assert_eq!(fpu.f[10] >> 32, 0xffff_ffff, "single result not NaN-boxed");
    fpu.f[10] as u32
}

/// Binary OP-FP on singles: f10 = f1 op f2.
fn op_s(funct5: u32, rm: u32, a: u32, b: u32) -> (u32, u8) {
    let (fpu, _) = exec(
        r_type(funct5, S, 2, 1, rm, 10),
        [nan_box(a), nan_box(b), 0],
        0,
        0,
    );
    (single_result(&fpu), fpu.fflags)
}

/// Binary OP-FP on doubles: f10 = f1 op f2.
fn op_d(funct5: u32, rm: u32, a: u64, b: u64) -> (u64, u8) {
    let (fpu, _) = exec(r_type(funct5, D, 2, 1, rm, 10), [a, b, 0], 0, 0);
    (fpu.f[10], fpu.fflags)
}

/// Single operand instructions whose rs2 selects a variant, f10 = op(f1).
fn unary_s(funct5: u32, rs2: u32, rm: u32, a: u32) -> (u32, u8) {
    let (fpu, _) = exec(r_type(funct5, S, rs2, 1, rm, 10), [nan_box(a), 0, 0], 0, 0);
    (single_result(&fpu), fpu.fflags)
}
fn unary_d(funct5: u32, rs2: u32, rm: u32, a: u64) -> (u64, u8) {
    let (fpu, _) = exec(r_type(funct5, D, rs2, 1, rm, 10), [a, 0, 0], 0, 0);
    (fpu.f[10], fpu.fflags)
}

/// Instructions with an integer result, x10 = op(f1, f2).
fn to_x_s(funct5: u32, rs2: u32, rm: u32, a: u32, b: u32) -> (u64, u8) {
    let (fpu, x) = exec(
        r_type(funct5, S, rs2, 1, rm, 10),
        [nan_box(a), nan_box(b), 0],
        0,
        0,
    );
    (x[10], fpu.fflags)
}
fn to_x_d(funct5: u32, rs2: u32, rm: u32, a: u64, b: u64) -> (u64, u8) {
    let (fpu, x) = exec(r_type(funct5, D, rs2, 1, rm, 10), [a, b, 0], 0, 0);
    (x[10], fpu.fflags)
}

/// FCVT.fmt.{W,WU,L,LU} (kind = rs2) of x5.
fn from_x_s(kind: u32, rm: u32, v: u64) -> (u32, u8) {
    let (fpu, _) = exec(r_type(FCVT_FI, S, kind, 5, rm, 10), [0; 3], v, 0);
    (single_result(&fpu), fpu.fflags)
}
fn from_x_d(kind: u32, rm: u32, v: u64) -> (u64, u8) {
    let (fpu, _) = exec(r_type(FCVT_FI, D, kind, 5, rm, 10), [0; 3], v, 0);
    (fpu.f[10], fpu.fflags)
}

fn fma_s(opcode: u32, rm: u32, a: u32, b: u32, c: u32) -> (u32, u8) {
    let inst = r4_type(opcode, 3, S, 2, 1, rm, 10);
    let (fpu, _) = exec(inst, [nan_box(a), nan_box(b), nan_box(c)], 0, 0);
    (single_result(&fpu), fpu.fflags)
}
fn fma_d(opcode: u32, rm: u32, a: u64, b: u64, c: u64) -> (u64, u8) {
    let (fpu, _) = exec(r4_type(opcode, 3, D, 2, 1, rm, 10), [a, b, c], 0, 0);
    (fpu.f[10], fpu.fflags)
}

// ---------------------------------------------------------------- rounding

#[test]
fn add_rounding_modes_on_a_tie() {
    // 1 + 2^-24 is exactly half an ulp above 1.0f.
    let (a, b) = (s(1.0), s(2f32.powi(-24)));
    let up = s(1.0) + 1;
    let want = [s(1.0), s(1.0), s(1.0), up, up];
    for (rm, w) in MODES.into_iter().zip(want) {
        assert_eq!(op_s(FADD, rm, a, b), (w, NX), "rm {rm}");
    }
    // Negated: the directed modes swap.
    let (a, b) = (s(-1.0), s(-(2f32.powi(-24))));
    let down = s(-1.0) + 1;
    let want = [s(-1.0), s(-1.0), down, s(-1.0), down];
    for (rm, w) in MODES.into_iter().zip(want) {
        assert_eq!(op_s(FADD, rm, a, b), (w, NX), "rm {rm}");
    }
    // A tie whose lower neighbour is odd: RNE goes up.
    let a = s(1.0) + 1;
    let want = [a + 1, a, a, a + 1, a + 1];
    for (rm, w) in MODES.into_iter().zip(want) {
        assert_eq!(op_s(FADD, rm, a, s(2f32.powi(-24))), (w, NX), "rm {rm}");
    }
}

#[test]
fn add_rounding_modes_double_and_sub() {
    // 1 + 3 * 2^-54 is 0.75 ulp above 1.0: nearest is up.
    let (a, b) = (d(1.0), d(3.0 * 2f64.powi(-54)));
    let up = d(1.0) + 1;
    let want = [up, d(1.0), d(1.0), up, up];
    for (rm, w) in MODES.into_iter().zip(want) {
        assert_eq!(op_d(FADD, rm, a, b), (w, NX), "rm {rm}");
    }
    // 1 - 2^-60: just below 1; the neighbours are 1 - 2^-53 and 1.
    let below = d(1.0) - 1;
    let want = [d(1.0), below, below, d(1.0), d(1.0)];
    for (rm, w) in MODES.into_iter().zip(want) {
        assert_eq!(
            op_d(FSUB, rm, d(1.0), d(2f64.powi(-60))),
            (w, NX),
            "rm {rm}"
        );
    }
    // Exact results raise nothing.
    assert_eq!(op_d(FADD, RNE, d(1.5), d(2.25)), (d(3.75), 0));
    assert_eq!(op_s(FSUB, RNE, s(1.5), s(2.25)), (s(-0.75), 0));
}

#[test]
fn exact_cancellation_sign() {
    for rm in MODES {
        let zero = if rm == RDN { NEG_S } else { 0 };
        assert_eq!(op_s(FSUB, rm, s(1.5), s(1.5)), (zero, 0), "rm {rm}");
        let zero_d = if rm == RDN { NEG_D } else { 0 };
        assert_eq!(op_d(FADD, rm, d(-2.0), d(2.0)), (zero_d, 0), "rm {rm}");
        // Same-signed zeros keep their sign; mixed ones follow the rule above.
        assert_eq!(op_s(FADD, rm, NEG_S, NEG_S), (NEG_S, 0));
        assert_eq!(op_s(FADD, rm, NEG_S, 0), (zero, 0));
    }
}

#[test]
fn div_rounding_modes() {
    // 1/3 = 0x3eaaaaaa plus 0.1010... ulp: above the midpoint.
    let lo = 0x3eaa_aaaa;
    let want = [lo + 1, lo, lo, lo + 1, lo + 1];
    for (rm, w) in MODES.into_iter().zip(want) {
        assert_eq!(op_s(FDIV, rm, s(1.0), s(3.0)), (w, NX), "rm {rm}");
        assert_eq!(op_s(FDIV, rm, s(-1.0), s(3.0)).1, NX);
    }
    let neg = [lo + 1, lo, lo + 1, lo, lo + 1].map(|v| v | NEG_S);
    for (rm, w) in MODES.into_iter().zip(neg) {
        assert_eq!(op_s(FDIV, rm, s(1.0), s(-3.0)), (w, NX), "rm {rm}");
    }
    // 2/3 in double: 0x3fe5555555555555.555...: the dropped part is below half.
    let lo = d(2.0 / 3.0);
    assert_eq!(lo, 0x3fe5_5555_5555_5555);
    let want = [lo, lo, lo, lo + 1, lo];
    for (rm, w) in MODES.into_iter().zip(want) {
        assert_eq!(op_d(FDIV, rm, d(2.0), d(3.0)), (w, NX), "rm {rm}");
    }
    assert_eq!(op_d(FDIV, RNE, d(1.0), d(4.0)), (d(0.25), 0));
}

#[test]
fn fcvt_rounding_modes() {
    // FCVT.W.S of ±2.5 and ±0.5.
    let cases: [(f32, [i64; 5]); 4] = [
        (2.5, [2, 2, 2, 3, 3]),
        (-2.5, [-2, -2, -3, -2, -3]),
        (0.5, [0, 0, 0, 1, 1]),
        (-1.75, [-2, -1, -2, -1, -2]),
    ];
    for (v, want) in cases {
        for (rm, w) in MODES.into_iter().zip(want) {
            assert_eq!(
                to_x_s(FCVT_IF, 0, rm, s(v), 0),
                (w as u64, NX),
                "{v} rm {rm}"
            );
            assert_eq!(
                to_x_d(FCVT_IF, 2, rm, d(v as f64), 0),
                (w as u64, NX),
                "{v} rm {rm}"
            );
        }
    }
    assert_eq!(to_x_s(FCVT_IF, 0, RNE, s(-7.0), 0), (-7i64 as u64, 0));
    // FCVT.S.W of 2^24 + 1: a tie between 2^24 and 2^24 + 2.
    let v = (1u64 << 24) + 1;
    let (lo, hi) = (s(16777216.0), s(16777218.0));
    let want = [lo, lo, lo, hi, hi];
    for (rm, w) in MODES.into_iter().zip(want) {
        assert_eq!(from_x_s(0, rm, v), (w, NX), "rm {rm}");
    }
    // Negative: -(2^24 + 3) lies between -(2^24 + 4) and -(2^24 + 2).
    let v = (-(16777219i64)) as u64;
    let (big, small) = (s(-16777220.0), s(-16777218.0));
    let want = [big, small, big, small, big];
    for (rm, w) in MODES.into_iter().zip(want) {
        assert_eq!(from_x_s(2, rm, v), (w, NX), "rm {rm}");
    }
    // FCVT.S.D of 1 + 2^-24 (a tie) and of 1 + 2^-24 + 2^-40 (above the tie).
    let up = s(1.0) + 1;
    let want = [s(1.0), s(1.0), s(1.0), up, up];
    for (rm, w) in MODES.into_iter().zip(want) {
        let (fpu, _) = exec(
            r_type(FCVT_FF, S, 1, 1, rm, 10),
            [d(1.0 + 2f64.powi(-24)), 0, 0],
            0,
            0,
        );
        assert_eq!((single_result(&fpu), fpu.fflags), (w, NX), "rm {rm}");
        let (fpu, _) = exec(
            r_type(FCVT_FF, S, 1, 1, rm, 10),
            [d(1.0 + 2f64.powi(-24) + 2f64.powi(-40)), 0, 0],
            0,
            0,
        );
        let w = if rm == RNE { up } else { w };
        assert_eq!((single_result(&fpu), fpu.fflags), (w, NX), "rm {rm}");
    }
}

#[test]
fn dynamic_and_invalid_rounding_modes() {
    // rm = 7 takes frm.
    for (frm, w) in [(0u8, s(1.0)), (3, s(1.0) + 1)] {
        let inst = r_type(FADD, S, 2, 1, DYN, 10);
        let (fpu, _) = exec(
            inst,
            [nan_box(s(1.0)), nan_box(s(2f32.powi(-24))), 0],
            0,
            frm,
        );
        assert_eq!(single_result(&fpu), w);
    }
    // rm 5 and 6 are reserved; so is rm 7 when frm is 5..7.
    let regs = [nan_box(s(1.0)), nan_box(s(2.0)), 0];
    for (rm, frm) in [(5, 0), (6, 0), (7, 5), (7, 6), (7, 7)] {
        for inst in [
            r_type(FADD, S, 2, 1, rm, 10),
            r_type(FDIV, D, 2, 1, rm, 10),
            r_type(FSQRT, S, 0, 1, rm, 10),
            r4_type(FMADD, 3, D, 2, 1, rm, 10),
            r_type(FCVT_IF, S, 0, 1, rm, 10),
            r_type(FCVT_FI, D, 3, 1, rm, 10),
            r_type(FCVT_FF, D, 0, 1, rm, 10),
        ] {
            let mut fpu = Fpu {
                frm,
                ..Fpu::default()
            };
            fpu.f[1..4].copy_from_slice(&regs);
            let before = fpu.clone();
            let mut x = [7u64; 32];
            assert_eq!(fpu.execute(inst, &mut x), Err(Illegal), "{inst:08x}");
            assert_eq!(fpu, before);
            assert_eq!(x, [7u64; 32]);
        }
    }
    // Instructions whose funct3 is not a rounding mode ignore frm.
    let inst = r_type(FSGNJ, S, 2, 1, 0, 10);
    let (fpu, _) = exec(inst, regs, 0, 7);
    assert_eq!(single_result(&fpu), s(1.0));
}

// ------------------------------------------------------------ NaN handling

#[test]
fn unboxed_single_reads_as_canonical_nan() {
    let unboxed = s(1.0) as u64; // upper half zero
    let partly = 0xffff_fffe_0000_0000 | s(1.0) as u64;
    for bad in [unboxed, partly] {
        // Arithmetic sees a quiet NaN: canonical result, no NV.
        let (fpu, _) = exec(
            r_type(FADD, S, 2, 1, RNE, 10),
            [bad, nan_box(s(1.0)), 0],
            0,
            0,
        );
        assert_eq!((single_result(&fpu), fpu.fflags), (QNAN_S, 0));
        // FSGNJ.S injects into the canonical NaN.
        let (fpu, _) = exec(
            r_type(FSGNJ, S, 2, 1, 0, 10),
            [bad, nan_box(NEG_S), 0],
            0,
            0,
        );
        assert_eq!(single_result(&fpu), QNAN_S | NEG_S);
        // FCLASS.S: quiet NaN.
        let (_, x) = exec(r_type(FMV_X_CLASS, S, 0, 1, 1, 10), [bad, 0, 0], 0, 0);
        assert_eq!(x[10], 1 << 9);
        // FEQ.S against itself: unordered, quiet.
        let (fpu, x) = exec(r_type(FCMP, S, 1, 1, 2, 10), [bad, 0, 0], 0, 0);
        assert_eq!((x[10], fpu.fflags), (0, 0));
        // FCVT.D.S: canonical NaN, no NV.
        let (fpu, _) = exec(r_type(FCVT_FF, D, 0, 1, RNE, 10), [bad, 0, 0], 0, 0);
        assert_eq!((fpu.f[10], fpu.fflags), (QNAN_D, 0));
        // FMV.X.W moves the low bits untouched, sign-extended.
        let (_, x) = exec(r_type(FMV_X_CLASS, S, 0, 1, 0, 10), [bad, 0, 0], 0, 0);
        assert_eq!(x[10], s(1.0) as u64);
    }
    // A properly boxed single in a D operation is just a NaN bit pattern.
    let (fpu, _) = exec(
        r_type(FADD, D, 2, 1, RNE, 10),
        [nan_box(s(1.0)), d(1.0), 0],
        0,
        0,
    );
    assert_eq!((fpu.f[10], fpu.fflags), (QNAN_D, 0));
}

#[test]
fn nan_results_are_canonical() {
    let payload_q_s = 0xffc1_2345; // negative quiet NaN with payload
    let payload_q_d = 0xfff8_dead_beef_0001;
    for funct5 in [FADD, FSUB, FMUL, FDIV] {
        assert_eq!(op_s(funct5, RNE, payload_q_s, s(1.0)), (QNAN_S, 0));
        assert_eq!(op_s(funct5, RNE, s(1.0), SNAN_S), (QNAN_S, NV));
        assert_eq!(op_d(funct5, RNE, payload_q_d, d(1.0)), (QNAN_D, 0));
        assert_eq!(op_d(funct5, RNE, SNAN_D | NEG_D, d(2.0)), (QNAN_D, NV));
    }
    assert_eq!(unary_s(FSQRT, 0, RNE, payload_q_s), (QNAN_S, 0));
    assert_eq!(unary_d(FSQRT, 0, RNE, SNAN_D), (QNAN_D, NV));
    assert_eq!(fma_s(FMADD, RNE, s(1.0), s(1.0), payload_q_s), (QNAN_S, 0));
    assert_eq!(fma_d(FNMADD, RNE, SNAN_D, d(1.0), d(1.0)), (QNAN_D, NV));
    // Conversions between formats.
    let (fpu, _) = exec(r_type(FCVT_FF, S, 1, 1, RNE, 10), [payload_q_d, 0, 0], 0, 0);
    assert_eq!((single_result(&fpu), fpu.fflags), (QNAN_S, 0));
    let (fpu, _) = exec(r_type(FCVT_FF, S, 1, 1, RNE, 10), [SNAN_D, 0, 0], 0, 0);
    assert_eq!((single_result(&fpu), fpu.fflags), (QNAN_S, NV));
    assert_eq!(unary_d(FCVT_FF, 0, RNE, nan_box(payload_q_s)), (QNAN_D, 0));
    assert_eq!(unary_d(FCVT_FF, 0, RNE, nan_box(SNAN_S)), (QNAN_D, NV));
    // Invalid operations produce the canonical NaN too.
    assert_eq!(op_s(FSUB, RNE, INF_S, INF_S), (QNAN_S, NV));
    assert_eq!(op_d(FADD, RNE, INF_D, INF_D | NEG_D), (QNAN_D, NV));
    assert_eq!(op_d(FMUL, RNE, INF_D, 0), (QNAN_D, NV));
    assert_eq!(op_s(FDIV, RNE, INF_S, INF_S | NEG_S), (QNAN_S, NV));
    // Sign injection is a bit operation: NaN payloads survive it.
    assert_eq!(
        op_s(FSGNJ, 1, payload_q_s, payload_q_s),
        (payload_q_s & !NEG_S, 0)
    );
    assert_eq!(op_d(FSGNJ, 2, SNAN_D, NEG_D), (SNAN_D | NEG_D, 0));
}

// ------------------------------------------------------------- comparisons

#[test]
fn compare_nan_flags() {
    const FLE: u32 = 0;
    const FLT: u32 = 1;
    const FEQ: u32 = 2;
    // Quiet NaN: FEQ is quiet, FLT/FLE signal.
    assert_eq!(to_x_s(FCMP, 2, FEQ, QNAN_S, s(1.0)), (0, 0));
    assert_eq!(to_x_s(FCMP, 2, FLT, QNAN_S, s(1.0)), (0, NV));
    assert_eq!(to_x_s(FCMP, 2, FLE, s(1.0), QNAN_S), (0, NV));
    assert_eq!(to_x_d(FCMP, 2, FEQ, QNAN_D, QNAN_D), (0, 0));
    assert_eq!(to_x_d(FCMP, 2, FLT, d(1.0), QNAN_D), (0, NV));
    // Signaling NaN: all three signal.
    assert_eq!(to_x_s(FCMP, 2, FEQ, SNAN_S, s(1.0)), (0, NV));
    assert_eq!(to_x_d(FCMP, 2, FEQ, d(1.0), SNAN_D), (0, NV));
    assert_eq!(to_x_d(FCMP, 2, FLE, SNAN_D, d(1.0)), (0, NV));
    // Zeros compare equal; ordinary ordering.
    assert_eq!(to_x_s(FCMP, 2, FEQ, NEG_S, 0), (1, 0));
    assert_eq!(to_x_d(FCMP, 2, FLT, NEG_D, 0), (0, 0));
    assert_eq!(to_x_d(FCMP, 2, FLE, NEG_D, 0), (1, 0));
    assert_eq!(to_x_s(FCMP, 2, FLT, s(-3.0), s(-2.0)), (1, 0));
    assert_eq!(to_x_s(FCMP, 2, FLT, s(-2.0), s(-3.0)), (0, 0));
    assert_eq!(to_x_d(FCMP, 2, FLE, d(-1.0), INF_D), (1, 0));
    assert_eq!(to_x_d(FCMP, 2, FLT, INF_D | NEG_D, d(-1e300)), (1, 0));
    assert_eq!(to_x_s(FCMP, 2, FEQ, s(1.0), s(1.0)), (1, 0));
    assert_eq!(to_x_s(FCMP, 2, FLE, 1, 0), (0, 0)); // subnormal vs +0
}

#[test]
fn min_max() {
    const MIN: u32 = 0;
    const MAX: u32 = 1;
    // -0 is below +0, in either operand order.
    assert_eq!(op_s(FMINMAX, MIN, 0, NEG_S), (NEG_S, 0));
    assert_eq!(op_s(FMINMAX, MIN, NEG_S, 0), (NEG_S, 0));
    assert_eq!(op_s(FMINMAX, MAX, NEG_S, 0), (0, 0));
    assert_eq!(op_d(FMINMAX, MAX, 0, NEG_D), (0, 0));
    assert_eq!(op_d(FMINMAX, MIN, 0, NEG_D), (NEG_D, 0));
    // Ordinary values.
    assert_eq!(op_s(FMINMAX, MIN, s(-1.0), s(2.0)), (s(-1.0), 0));
    assert_eq!(op_s(FMINMAX, MAX, s(-1.0), s(2.0)), (s(2.0), 0));
    assert_eq!(
        op_d(FMINMAX, MIN, INF_D | NEG_D, d(-1e308)),
        (INF_D | NEG_D, 0)
    );
    // One quiet NaN: the other operand, no flag.
    assert_eq!(op_s(FMINMAX, MIN, QNAN_S, s(3.0)), (s(3.0), 0));
    assert_eq!(op_d(FMINMAX, MAX, d(3.0), QNAN_D | 5), (d(3.0), 0));
    // One signaling NaN: the other operand, NV.
    assert_eq!(op_s(FMINMAX, MAX, SNAN_S, s(3.0)), (s(3.0), NV));
    assert_eq!(op_d(FMINMAX, MIN, d(3.0), SNAN_D), (d(3.0), NV));
    // Two NaNs: canonical NaN.
    assert_eq!(op_s(FMINMAX, MIN, 0xffc0_0001, QNAN_S), (QNAN_S, 0));
    assert_eq!(op_d(FMINMAX, MAX, SNAN_D, QNAN_D | 1), (QNAN_D, NV));
}

// ------------------------------------------------------------- conversions

#[test]
fn fcvt_to_int_saturation() {
    // (value, [W, WU, L, LU] result, [flags]) per the RISC-V table.
    let i32min = i32::MIN as i64 as u64;
    let i32max = i32::MAX as u64;
    let all = u64::MAX; // sign-extended u32::MAX, and u64::MAX
    let cases: [(f64, [u64; 4], [u8; 4]); 10] = [
        (f64::NAN, [i32max, all, i64::MAX as u64, all], [NV; 4]),
        (f64::INFINITY, [i32max, all, i64::MAX as u64, all], [NV; 4]),
        (f64::NEG_INFINITY, [i32min, 0, i64::MIN as u64, 0], [NV; 4]),
        (1e30, [i32max, all, i64::MAX as u64, all], [NV; 4]),
        (-1e30, [i32min, 0, i64::MIN as u64, 0], [NV; 4]),
        (
            2147483648.0,
            [i32max, 0xffff_ffff_8000_0000, 1 << 31, 1 << 31],
            [NV, 0, 0, 0],
        ),
        (
            -2147483648.0,
            [i32min, 0, -(1i64 << 31) as u64, 0],
            [0, NV, 0, NV],
        ),
        (
            4294967295.0,
            [i32max, all, 0xffff_ffff, 0xffff_ffff],
            [NV, 0, 0, 0],
        ),
        (
            4294967296.0,
            [i32max, all, 1 << 32, 1 << 32],
            [NV, NV, 0, 0],
        ),
        (-1.0, [all, 0, all, 0], [0, NV, 0, NV]),
    ];
    for (v, want, flags) in cases {
        for kind in 0..4 {
            let got = to_x_d(FCVT_IF, kind, RTZ, d(v), 0);
            assert_eq!(
                got,
                (want[kind as usize], flags[kind as usize]),
                "{v} kind {kind}"
            );
        }
    }
    // 2^63 and 2^64 as singles.
    let p63 = s(2f32.powi(63));
    assert_eq!(to_x_s(FCVT_IF, 2, RNE, p63, 0), (i64::MAX as u64, NV));
    assert_eq!(to_x_s(FCVT_IF, 3, RNE, p63, 0), (1 << 63, 0));
    assert_eq!(to_x_s(FCVT_IF, 2, RNE, p63 | NEG_S, 0), (1 << 63, 0));
    assert_eq!(to_x_s(FCVT_IF, 3, RNE, s(2f32.powi(64)), 0), (u64::MAX, NV));
    // The range check is on the rounded value.
    assert_eq!(to_x_d(FCVT_IF, 0, RTZ, d(2147483647.9), 0), (i32max, NX));
    assert_eq!(to_x_d(FCVT_IF, 0, RNE, d(2147483647.9), 0), (i32max, NV));
    assert_eq!(to_x_d(FCVT_IF, 0, RTZ, d(-2147483648.9), 0), (i32min, NX));
    assert_eq!(to_x_d(FCVT_IF, 0, RDN, d(-2147483648.1), 0), (i32min, NV));
    assert_eq!(to_x_s(FCVT_IF, 0, RNE, QNAN_S | NEG_S, 0), (i32max, NV));
}

#[test]
fn fcvt_unsigned_of_negative() {
    // Values that round to zero are in range: NX only.
    assert_eq!(to_x_s(FCVT_IF, 1, RTZ, s(-0.5), 0), (0, NX));
    assert_eq!(to_x_s(FCVT_IF, 1, RNE, s(-0.5), 0), (0, NX));
    assert_eq!(to_x_d(FCVT_IF, 3, RUP, d(-0.9), 0), (0, NX));
    // Values that round to -1 or below are invalid: 0 and NV (no NX).
    assert_eq!(to_x_s(FCVT_IF, 1, RNE, s(-0.7), 0), (0, NV));
    assert_eq!(to_x_s(FCVT_IF, 1, RDN, s(-0.1), 0), (0, NV));
    assert_eq!(to_x_d(FCVT_IF, 3, RMM, d(-0.5), 0), (0, NV));
    assert_eq!(to_x_d(FCVT_IF, 3, RTZ, d(-5.0), 0), (0, NV));
    // -0 is plain zero.
    assert_eq!(to_x_d(FCVT_IF, 3, RNE, NEG_D, 0), (0, 0));
    assert_eq!(to_x_s(FCVT_IF, 1, RNE, NEG_S, 0), (0, 0));
    // Tiny values, including subnormals.
    assert_eq!(to_x_d(FCVT_IF, 2, RUP, 1, 0), (1, NX));
    assert_eq!(to_x_d(FCVT_IF, 2, RDN, 1 | NEG_D, 0), (u64::MAX, NX));
    assert_eq!(to_x_s(FCVT_IF, 0, RNE, 1, 0), (0, NX));
}

#[test]
fn fcvt_from_int() {
    // W and WU take the low 32 bits of the register.
    assert_eq!(from_x_d(0, RNE, 0x1_0000_0005), (d(5.0), 0));
    assert_eq!(from_x_d(0, RNE, 0xffff_ffff), (d(-1.0), 0));
    assert_eq!(from_x_d(1, RNE, 0xdead_ffff_ffff), (d(4294967295.0), 0));
    assert_eq!(from_x_d(2, RNE, i64::MIN as u64), (d(-(2f64.powi(63))), 0));
    assert_eq!(from_x_d(3, RNE, u64::MAX), (d(1.8446744073709552e19), NX));
    assert_eq!(
        from_x_d(3, RTZ, u64::MAX),
        (d(1.8446744073709552e19) - 1, NX)
    );
    assert_eq!(from_x_s(3, RNE, u64::MAX), (s(1.8446744e19), NX));
    assert_eq!(from_x_s(2, RNE, 0), (0, 0));
    assert_eq!(
        from_x_s(0, RDN, 0xffff_ffff_8000_0001),
        (s(-2147483648.0), NX)
    );
    assert_eq!(from_x_s(0, RNE, (-3i64) as u64), (s(-3.0), 0));
}

#[test]
fn fcvt_between_formats() {
    // Singles widen exactly, subnormals included.
    assert_eq!(
        unary_d(FCVT_FF, 0, RNE, nan_box(1)),
        (d(f32::from_bits(1) as f64), 0)
    );
    assert_eq!(
        unary_d(FCVT_FF, 0, RNE, nan_box(INF_S | NEG_S)),
        (INF_D | NEG_D, 0)
    );
    assert_eq!(unary_d(FCVT_FF, 0, RNE, nan_box(NEG_S)), (NEG_D, 0));
    // Narrowing: overflow depends on the rounding mode.
    let big = d(1e300);
    let narrow = |rm, v| {
        let (fpu, _) = exec(r_type(FCVT_FF, S, 1, 1, rm, 10), [v, 0, 0], 0, 0);
        (single_result(&fpu), fpu.fflags)
    };
    assert_eq!(narrow(RNE, big), (INF_S, OF | NX));
    assert_eq!(narrow(RTZ, big), (MAX_S, OF | NX));
    assert_eq!(narrow(RDN, big | NEG_D), (INF_S | NEG_S, OF | NX));
    // Underflow to a subnormal and to zero.
    assert_eq!(narrow(RNE, d(1e-40)), (s(1e-40f64 as f32), UF | NX));
    assert_eq!(narrow(RNE, d(1e-50)), (0, UF | NX));
    assert_eq!(narrow(RUP, d(1e-50)), (1, UF | NX));
    assert_eq!(narrow(RNE, d(2f64.powi(-140))), (s(2f32.powi(-140)), 0));
    // 2^-126 - 2^-151 rounds to 2^-126 even with an unbounded exponent:
    // not tiny, so no UF.
    assert_eq!(
        narrow(RNE, d(2f64.powi(-126) - 2f64.powi(-151))),
        (0x0080_0000, NX)
    );
}

// ---------------------------------------------------------- overflow etc.

#[test]
fn overflow_to_inf_or_max_finite() {
    // MAX_S * 2 overflows: infinity or the largest finite per mode.
    let want_pos = [INF_S, MAX_S, MAX_S, INF_S, INF_S];
    let want_neg = [INF_S, MAX_S, INF_S, MAX_S, INF_S].map(|v| v | NEG_S);
    for i in 0..5 {
        let rm = MODES[i];
        assert_eq!(
            op_s(FMUL, rm, MAX_S, s(2.0)),
            (want_pos[i], OF | NX),
            "rm {rm}"
        );
        assert_eq!(
            op_s(FMUL, rm, MAX_S, s(-2.0)),
            (want_neg[i], OF | NX),
            "rm {rm}"
        );
        let wd = [INF_D, MAX_D, MAX_D, INF_D, INF_D][i];
        assert_eq!(op_d(FADD, rm, MAX_D, MAX_D), (wd, OF | NX), "rm {rm}");
    }
    // Rounding up to the overflow threshold overflows; staying below does not.
    let half_ulp = d(2f64.powi(970));
    assert_eq!(op_d(FADD, RNE, MAX_D, half_ulp), (INF_D, OF | NX));
    assert_eq!(op_d(FADD, RUP, MAX_D, half_ulp), (INF_D, OF | NX));
    // Overflow is judged on the rounded value: rounded towards zero this sum
    // is MAX_D itself, merely inexact.
    assert_eq!(op_d(FADD, RTZ, MAX_D, half_ulp), (MAX_D, NX));
    assert_eq!(op_d(FADD, RNE, MAX_D, d(2f64.powi(969))), (MAX_D, NX));
    // Infinities themselves are exact.
    assert_eq!(op_s(FMUL, RNE, INF_S, s(2.0)), (INF_S, 0));
}

#[test]
fn underflow_flags() {
    let min_normal_s = 0x0080_0000u32;
    // Exact subnormal results raise nothing.
    assert_eq!(op_s(FMUL, RNE, min_normal_s, s(0.5)), (0x0040_0000, 0));
    assert_eq!(
        op_d(FDIV, RNE, 0x0010_0000_0000_0000, d(4.0)),
        (0x0004_0000_0000_0000, 0)
    );
    // Inexact tiny results: UF | NX.
    assert_eq!(op_s(FMUL, RNE, 1, s(0.5)), (0, UF | NX));
    assert_eq!(op_s(FMUL, RUP, 1, s(0.5)), (1, UF | NX));
    assert_eq!(op_s(FMUL, RNE, 3, s(0.5)), (2, UF | NX));
    assert_eq!(op_d(FMUL, RNE, 1, d(0.75)), (1, UF | NX));
    assert_eq!(op_d(FMUL, RTZ, 1 | NEG_D, d(0.75)), (NEG_D, UF | NX));
    // Tininess after rounding: (2^24 - 1) * 2^-150 = 2^-126 - 2^-150 rounds
    // (in the subnormal range) up to 2^-126, but is representable with an
    // unbounded exponent, hence tiny: UF.
    let one_minus = s(1.0) - 1; // 1 - 2^-24
    assert_eq!(
        op_s(FMUL, RNE, one_minus, min_normal_s),
        (min_normal_s, UF | NX)
    );
    // (1 - 2^-53) * 2^-1022 in double: same situation.
    let min_normal_d = 0x0010_0000_0000_0000u64;
    assert_eq!(
        op_d(FMUL, RNE, d(1.0) - 1, min_normal_d),
        (min_normal_d, UF | NX)
    );
    // (2^25 - 1) * 2^-151 = 2^-126 - 2^-151 rounds to 2^-126 even with an
    // unbounded exponent: not tiny, no UF. 2^25 - 1 = 18631 * 1801.
    let (a, b) = (s(18631.0 * 2f32.powi(-75)), s(1801.0 * 2f32.powi(-76)));
    assert_eq!(op_s(FMUL, RNE, a, b), (min_normal_s, NX));
    // Rounded towards zero it stays below 2^-126: tiny.
    assert_eq!(op_s(FMUL, RTZ, a, b), (min_normal_s - 1, UF | NX));
    // With RTZ the same product stays below 2^-126: tiny.
    assert_eq!(
        op_s(FMUL, RTZ, one_minus, min_normal_s),
        (min_normal_s - 1, UF | NX)
    );
}

#[test]
fn divide_by_zero_and_division_specials() {
    assert_eq!(op_s(FDIV, RNE, s(1.0), 0), (INF_S, DZ));
    assert_eq!(op_s(FDIV, RNE, s(-1.0), 0), (INF_S | NEG_S, DZ));
    assert_eq!(op_d(FDIV, RNE, d(5.0), NEG_D), (INF_D | NEG_D, DZ));
    assert_eq!(op_d(FDIV, RNE, 1, 0), (INF_D, DZ)); // subnormal / 0
    assert_eq!(op_s(FDIV, RNE, 0, 0), (QNAN_S, NV));
    assert_eq!(op_d(FDIV, RNE, INF_D, 0), (INF_D, 0));
    assert_eq!(op_d(FDIV, RNE, d(1.0), INF_D | NEG_D), (NEG_D, 0));
    assert_eq!(op_s(FDIV, RNE, 0, s(-3.0)), (NEG_S, 0));
}

#[test]
fn square_root() {
    assert_eq!(unary_s(FSQRT, 0, RNE, s(-1.0)), (QNAN_S, NV));
    assert_eq!(unary_d(FSQRT, 0, RNE, INF_D | NEG_D), (QNAN_D, NV));
    assert_eq!(unary_d(FSQRT, 0, RNE, 1 | NEG_D), (QNAN_D, NV));
    assert_eq!(unary_s(FSQRT, 0, RNE, NEG_S), (NEG_S, 0));
    assert_eq!(unary_d(FSQRT, 0, RNE, INF_D), (INF_D, 0));
    assert_eq!(unary_d(FSQRT, 0, RNE, d(4.0)), (d(2.0), 0));
    assert_eq!(unary_s(FSQRT, 0, RNE, s(0.25)), (s(0.5), 0));
    // sqrt(2) = 0x3ff6a09e667f3bcc.9...: nearest rounds up.
    let lo = 0x3ff6_a09e_667f_3bcc;
    let want = [lo + 1, lo, lo, lo + 1, lo + 1];
    for (rm, w) in MODES.into_iter().zip(want) {
        assert_eq!(unary_d(FSQRT, 0, rm, d(2.0)), (w, NX), "rm {rm}");
    }
    // Subnormal operands: sqrt(2^-149) = 2^-74.5.
    assert_eq!(unary_s(FSQRT, 0, RNE, 1), (s(2f32.powi(-149).sqrt()), NX));
    assert_eq!(unary_d(FSQRT, 0, RNE, 4), (0x1e70_0000_0000_0000, 0)); // 2^-536
}

// ------------------------------------------------------------------- fma

#[test]
fn fma_rounds_once() {
    // (1 + 2^-23)(1 - 2^-23) = 1 - 2^-46: a separate multiply rounds it to 1.
    let (a, b) = (s(1.0) + 1, s(1.0 - 2f32.powi(-23)));
    let p = s(2f32.powi(-46));
    assert_eq!(op_s(FMUL, RNE, a, b), (s(1.0), NX));
    assert_eq!(fma_s(FMADD, RNE, a, b, s(-1.0)), (p | NEG_S, 0));
    assert_eq!(fma_s(FMSUB, RNE, a, b, s(1.0)), (p | NEG_S, 0));
    assert_eq!(fma_s(FNMSUB, RNE, a, b, s(1.0)), (p, 0));
    assert_eq!(fma_s(FNMADD, RNE, a, b, s(-1.0)), (p, 0));
    // Same in double with 2^-52.
    let (a, b) = (d(1.0) + 1, d(1.0 - 2f64.powi(-52)));
    let p = d(2f64.powi(-104));
    assert_eq!(fma_d(FMADD, RNE, a, b, d(-1.0)), (p | NEG_D, 0));
    assert_eq!(fma_d(FMSUB, RNE, a, b, d(1.0)), (p | NEG_D, 0));
    assert_eq!(fma_d(FNMSUB, RNE, a, b, d(1.0)), (p, 0));
    assert_eq!(fma_d(FNMADD, RNE, a, b, d(-1.0)), (p, 0));
    // An inexact fused result under every mode: 3 * (1/3 rounded) - 1.
    let third = d(1.0 / 3.0);
    let exact = -(2f64.powi(-54)); // 3 * 0x3fd5555555555555 - 1
    assert_eq!(fma_d(FMADD, RNE, d(3.0), third, d(-1.0)), (d(exact), 0));
    // Signs of zero results.
    assert_eq!(fma_s(FMADD, RNE, 0, s(1.0), NEG_S), (0, 0));
    assert_eq!(fma_s(FMADD, RDN, 0, s(1.0), NEG_S), (NEG_S, 0));
    assert_eq!(fma_s(FNMADD, RNE, 0, s(1.0), 0), (NEG_S, 0));
    assert_eq!(fma_d(FMSUB, RNE, NEG_D, d(1.0), 0), (NEG_D, 0));
    assert_eq!(fma_d(FMADD, RNE, d(1.0), d(1.0), d(-1.0)), (0, 0));
    assert_eq!(fma_d(FMADD, RDN, d(1.0), d(1.0), d(-1.0)), (NEG_D, 0));
    // A zero product leaves the addend exactly, subnormal or not.
    assert_eq!(fma_d(FMADD, RNE, 0, d(5.0), 3), (3, 0));
    assert_eq!(fma_s(FMSUB, RNE, NEG_S, s(5.0), s(2.5)), (s(-2.5), 0));
    // inf * 0 is invalid even with a quiet NaN addend.
    assert_eq!(fma_s(FMADD, RNE, INF_S, 0, QNAN_S), (QNAN_S, NV));
    assert_eq!(fma_d(FNMSUB, RNE, 0, INF_D, d(1.0)), (QNAN_D, NV));
    // inf - inf.
    assert_eq!(
        fma_d(FMADD, RNE, INF_D, d(1.0), INF_D | NEG_D),
        (QNAN_D, NV)
    );
    assert_eq!(fma_d(FMSUB, RNE, INF_D, d(1.0), INF_D), (QNAN_D, NV));
    assert_eq!(
        fma_d(FMADD, RNE, d(2.0), d(3.0), INF_D | NEG_D),
        (INF_D | NEG_D, 0)
    );
    // Overflow in the product that the addend does not cure.
    assert_eq!(fma_s(FMADD, RNE, MAX_S, s(2.0), s(-1.0)), (INF_S, OF | NX));
    // ... and one the addend brings back in range: no overflow, exact.
    assert_eq!(fma_s(FMADD, RNE, MAX_S, s(2.0), MAX_S | NEG_S), (MAX_S, 0));
}

#[test]
fn fma_rounding_modes() {
    // 1 * 1 + 2^-60 under every mode.
    let up = d(1.0) + 1;
    let want = [d(1.0), d(1.0), d(1.0), up, d(1.0)];
    for (rm, w) in MODES.into_iter().zip(want) {
        assert_eq!(
            fma_d(FMADD, rm, d(1.0), d(1.0), d(2f64.powi(-60))),
            (w, NX),
            "rm {rm}"
        );
    }
}

// ------------------------------------------------- classification, moves

#[test]
fn fclass_all_ten_classes() {
    let singles = [
        (INF_S | NEG_S, 0),
        (s(-1.0), 1),
        (1 | NEG_S, 2),
        (NEG_S, 3),
        (0, 4),
        (0x007f_ffff, 5),
        (MAX_S, 6),
        (INF_S, 7),
        (SNAN_S, 8),
        (QNAN_S, 9),
    ];
    for (v, bit) in singles {
        assert_eq!(to_x_s(FMV_X_CLASS, 0, 1, v, 0), (1 << bit, 0), "{v:#x}");
    }
    let doubles = [
        (INF_D | NEG_D, 0),
        (d(-1e-300), 1),
        (0x000f_ffff_ffff_ffff | NEG_D, 2),
        (NEG_D, 3),
        (0, 4),
        (1, 5),
        (d(1.0), 6),
        (INF_D, 7),
        (SNAN_D | NEG_D, 8),
        (QNAN_D | NEG_D | 1, 9),
    ];
    for (v, bit) in doubles {
        assert_eq!(to_x_d(FMV_X_CLASS, 0, 1, v, 0), (1 << bit, 0), "{v:#x}");
    }
}

#[test]
fn sign_injection() {
    let (a, b) = (s(1.5), s(-2.0));
    assert_eq!(op_s(FSGNJ, 0, a, b), (s(-1.5), 0));
    assert_eq!(op_s(FSGNJ, 1, a, b), (s(1.5), 0));
    assert_eq!(op_s(FSGNJ, 2, s(-1.5), b), (s(1.5), 0));
    // fabs / fneg idioms.
    assert_eq!(op_d(FSGNJ, 2, d(-3.0), d(-3.0)), (d(3.0), 0));
    assert_eq!(op_d(FSGNJ, 1, d(3.0), d(3.0)), (d(-3.0), 0));
    // Signaling NaNs raise nothing here.
    assert_eq!(op_d(FSGNJ, 0, SNAN_D, NEG_D), (SNAN_D | NEG_D, 0));
}

#[test]
fn moves() {
    // FMV.X.W sign-extends bit 31; FMV.X.D is raw.
    let (fpu, x) = exec(
        r_type(FMV_X_CLASS, S, 0, 1, 0, 10),
        [nan_box(NEG_S | 5), 0, 0],
        0,
        0,
    );
    assert_eq!((x[10], fpu.fflags), (0xffff_ffff_8000_0005, 0));
    let (_, x) = exec(
        r_type(FMV_X_CLASS, S, 0, 1, 0, 10),
        [nan_box(0x7fff_ffff), 0, 0],
        0,
        0,
    );
    assert_eq!(x[10], 0x7fff_ffff);
    let (_, x) = exec(r_type(FMV_X_CLASS, D, 0, 1, 0, 10), [SNAN_D, 0, 0], 0, 0);
    assert_eq!(x[10], SNAN_D);
    // FMV.W.X NaN-boxes the low 32 bits; FMV.D.X copies.
    let (fpu, _) = exec(
        r_type(FMV_F_X, S, 0, 5, 0, 10),
        [0; 3],
        0x1234_5678_7f80_0001,
        0,
    );
    assert_eq!((fpu.f[10], fpu.fflags), (nan_box(0x7f80_0001), 0));
    let (fpu, _) = exec(
        r_type(FMV_F_X, D, 0, 5, 0, 10),
        [0; 3],
        0x1234_5678_9abc_def0,
        0,
    );
    assert_eq!(fpu.f[10], 0x1234_5678_9abc_def0);
}

#[test]
fn flags_accrue() {
    let mut fpu = Fpu {
        fflags: DZ,
        ..Fpu::default()
    };
    fpu.f[1] = d(1.0);
    fpu.f[2] = d(3.0);
    let mut x = [0; 32];
    fpu.execute(r_type(FDIV, D, 2, 1, RNE, 10), &mut x).unwrap();
    assert_eq!(fpu.fflags, DZ | NX);
    fpu.execute(r_type(FADD, D, 2, 1, RNE, 10), &mut x).unwrap();
    assert_eq!(fpu.fflags, DZ | NX);
}

#[test]
fn reserved_encodings_are_illegal() {
    let illegal = [
        r_type(FADD, 2, 2, 1, RNE, 10),      // fmt H
        r_type(FADD, 3, 2, 1, RNE, 10),      // fmt Q
        r4_type(FMADD, 3, 2, 2, 1, RNE, 10), // FMADD.H
        r4_type(FMADD, 3, 3, 2, 1, RNE, 10), // FMADD.Q
        r_type(0x06, S, 2, 1, RNE, 10),      // unassigned funct5
        r_type(0x1f, D, 2, 1, RNE, 10),      // unassigned funct5
        r_type(FSQRT, S, 1, 1, RNE, 10),     // rs2 != 0
        r_type(FSGNJ, D, 2, 1, 3, 10),       // funct3 3
        r_type(FMINMAX, S, 2, 1, 2, 10),     // FMINM (Zfa)
        r_type(FCVT_FF, S, 0, 1, RNE, 10),   // FCVT.S.S
        r_type(FCVT_FF, D, 1, 1, RNE, 10),   // FCVT.D.D
        r_type(FCVT_FF, D, 2, 1, RNE, 10),   // FCVT.D.H
        r_type(FCVT_FF, S, 4, 1, RNE, 10),   // FROUND (Zfa)
        r_type(FCMP, S, 2, 1, 3, 10),        // funct3 3
        r_type(FCMP, D, 2, 1, 4, 10),        // FLEQ (Zfa)
        r_type(FCVT_IF, S, 4, 1, RNE, 10),   // rs2 4
        r_type(FCVT_IF, D, 8, 1, RTZ, 10),   // FCVTMOD (Zfa)
        r_type(FCVT_FI, D, 5, 1, RNE, 10),   // rs2 5
        r_type(FMV_X_CLASS, S, 1, 1, 0, 10), // rs2 != 0
        r_type(FMV_X_CLASS, D, 0, 1, 2, 10), // funct3 2
        r_type(FMV_F_X, S, 0, 1, 1, 10),     // funct3 1
        r_type(FMV_F_X, D, 1, 1, 0, 10),     // FLI (Zfa)
        0x0000_0013,                         // addi x0, x0, 0
        0x0000_0007,                         // a load
        r_type(FADD, S, 2, 1, RNE, 10) & !3, // not a 32-bit encoding
    ];
    for inst in illegal {
        let mut fpu = Fpu::default();
        fpu.f
            .iter_mut()
            .enumerate()
            .for_each(|(i, r)| *r = nan_box(i as u32));
        let before = fpu.clone();
        let mut x = [3u64; 32];
        assert_eq!(fpu.execute(inst, &mut x), Err(Illegal), "{inst:08x}");
        assert_eq!(fpu, before, "{inst:08x}");
        assert_eq!(x, [3u64; 32], "{inst:08x}");
    }
}

// ------------------------------------------------- random and host checks

impl Rng {
    /// A double in roughly [2^-200, 2^200] of either sign: products,
    /// quotients and sums of two stay comfortably normal.
    fn moderate_f64(&mut self) -> f64 {
        let exp = 1023 - 200 + self.next() % 400;
        let sign_and_frac = self.next() & (1 << 63 | ((1 << 52) - 1));
        f64::from_bits(sign_and_frac | exp << 52)
    }
    /// A single in [2^-14, 2^14): sums of two are exact in f64.
    fn moderate_f32(&mut self) -> f32 {
        let exp = 127 - 14 + self.next() % 28;
        let sign_and_frac = self.next() as u32 & (1 << 31 | ((1 << 23) - 1));
        f32::from_bits(sign_and_frac | (exp as u32) << 23)
    }
}

impl Rng {
    /// Any bit pattern of the format, biased towards the edges: zeros,
    /// subnormals, the extreme exponents, and significands that are all
    /// ones, all zeros or a single bit.
    fn edgy(&mut self, exp_bits: u32, frac_bits: u32) -> u64 {
        let max_exp = (1u64 << exp_bits) - 1;
        let frac_mask = (1u64 << frac_bits) - 1;
        let exp = match self.next() % 6 {
            0 => 0,
            1 => self.next() % 3,
            2 => max_exp - 1 - self.next() % 3,
            3 => max_exp,
            4 => max_exp / 2 + self.next() % 5 - 2,
            _ => self.next() % (max_exp + 1),
        };
        let frac = match self.next() % 4 {
            0 => 0,
            1 => frac_mask,
            2 => 1 << (self.next() % u64::from(frac_bits)),
            _ => self.next() & frac_mask,
        };
        (self.next() & 1) << (exp_bits + frac_bits) | exp << frac_bits | frac
    }
}

/// The host fast paths against the pure software operations, on edge-heavy
/// random operands, whenever the fast path accepts the case.
#[test]
fn host_fast_paths_match_software() {
    use super::soft::{self, Rm, F32, F64};
    type Fast2 = fn(u64, u64) -> Option<(u64, u8)>;
    type Soft2 = fn(soft::Format, u64, u64, Rm) -> (u64, u8);
    let binary: [(Fast2, Fast2, Soft2); 3] = [
        (host::single::add, host::double::add, soft::add_soft),
        (host::single::mul, host::double::mul, soft::mul_soft),
        (host::single::div, host::double::div, soft::div_soft),
    ];
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut taken = 0;
    for _ in 0..100_000 {
        let (a32, b32) = (rng.edgy(8, 23), rng.edgy(8, 23));
        let (a64, b64) = (rng.edgy(11, 52), rng.edgy(11, 52));
        for (fast_s, fast_d, slow) in binary {
            if let Some(r) = fast_s(a32, b32) {
                assert_eq!(r, slow(F32, a32, b32, Rm::Rne), "{a32:#x} {b32:#x}");
                taken += 1;
            }
            if let Some(r) = fast_d(a64, b64) {
                assert_eq!(r, slow(F64, a64, b64, Rm::Rne), "{a64:#x} {b64:#x}");
                taken += 1;
            }
        }
        if let Some(r) = host::single::sqrt(a32) {
            assert_eq!(r, soft::sqrt_soft(F32, a32, Rm::Rne), "{a32:#x}");
        }
        if let Some(r) = host::double::sqrt(a64) {
            assert_eq!(r, soft::sqrt_soft(F64, a64, Rm::Rne), "{a64:#x}");
        }
    }
    // The fast paths must actually be exercised.
    assert!(taken > 100_000, "{taken}");
}

/// Exact error of a + b (Knuth's TwoSum; exact when nothing overflows).
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    (s, (a - (s - bb)) + (b - bb))
}

/// Host results are authoritative for RNE: x86-64 SSE arithmetic and
/// `mul_add` are correctly rounded IEEE operations. The operands keep the
/// results well inside the normal range, where the error terms computed
/// with fma and TwoSum are exact, so NX can be derived too. For the other
/// modes, the sign of the exact error says which neighbour each mode picks.
#[test]
fn random_doubles_match_host() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..400 {
        let (a, b, c) = (rng.moderate_f64(), rng.moderate_f64(), rng.moderate_f64());
        // (operation, RNE result, exact error: result + err = true value)
        let (sum, sum_err) = two_sum(a, b);
        let prod = a * b;
        let quot = a / b;
        let root = a.abs().sqrt();
        let fused = a.mul_add(b, c);
        let cases: [(u32, f64, f64); 5] = [
            (FADD, sum, sum_err),
            (FMUL, prod, a.mul_add(b, -prod)),
            // q + r/b is the true quotient, r = a - q*b exactly.
            (FDIV, quot, (-quot).mul_add(b, a) / b),
            (FSUB, a - b, two_sum(a, -b).1),
            (FSQRT, root, (-root).mul_add(root, a.abs())),
        ];
        for (funct5, rne, err) in cases {
            let run = |rm| {
                if funct5 == FSQRT {
                    unary_d(FSQRT, 0, rm, d(a.abs()))
                } else {
                    op_d(funct5, rm, d(a), d(b))
                }
            };
            let nx = if err != 0.0 { NX } else { 0 };
            assert_eq!(run(RNE), (d(rne), nx), "{funct5} {a:e} {b:e}");
            if err == 0.0 {
                continue;
            }
            // Directed modes: err > 0 means the true value is above `rne`
            // (for sqrt the error is on the radicand; same sign).
            let up = rne.next_up();
            let down = rne.next_down();
            let (below, above) = if err > 0.0 { (rne, up) } else { (down, rne) };
            let towards_zero = if rne > 0.0 { below } else { above };
            assert_eq!(run(RDN), (d(below), NX));
            assert_eq!(run(RUP), (d(above), NX));
            assert_eq!(run(RTZ), (d(towards_zero), NX));
        }
        let (got, _) = fma_d(FMADD, RNE, d(a), d(b), d(c));
        assert_eq!(got, d(fused), "fma {a:e} {b:e} {c:e}");
        let (got, _) = fma_d(FNMSUB, RNE, d(a), d(b), d(c));
        assert_eq!(got, d((-a).mul_add(b, c)), "fnmsub {a:e} {b:e} {c:e}");
    }
}

/// Singles against host f32 arithmetic; NX from the exact f64 computation
/// (sums of these singles, products, and the checks q*b == a and r*r == a
/// are exact in f64).
#[test]
fn random_singles_match_host() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..400 {
        let (a, b, c) = (rng.moderate_f32(), rng.moderate_f32(), rng.moderate_f32());
        let (wa, wb) = (a as f64, b as f64);
        let q = a / b;
        let r = a.abs().sqrt();
        let cases = [
            (FADD, a + b, (a + b) as f64 != wa + wb),
            (FSUB, a - b, (a - b) as f64 != wa - wb),
            (FMUL, a * b, (a * b) as f64 != wa * wb),
            (FDIV, q, q as f64 * wb != wa),
            (FSQRT, r, r as f64 * r as f64 != wa.abs()),
        ];
        for (funct5, host, inexact) in cases {
            let got = if funct5 == FSQRT {
                unary_s(FSQRT, 0, RNE, s(a.abs()))
            } else {
                op_s(funct5, RNE, s(a), s(b))
            };
            let nx = if inexact { NX } else { 0 };
            assert_eq!(got, (s(host), nx), "{funct5} {a:e} {b:e}");
        }
        let (got, _) = fma_s(FMADD, RNE, s(a), s(b), s(c));
        assert_eq!(got, s(a.mul_add(b, c)), "fma {a:e} {b:e} {c:e}");
        // Conversions: f64 -> f32 narrowing and f32 -> i32 truncation.
        let (fpu, _) = exec(
            r_type(FCVT_FF, S, 1, 1, RNE, 10),
            [d(wa * wb / 3.0), 0, 0],
            0,
            0,
        );
        assert_eq!(single_result(&fpu), s((wa * wb / 3.0) as f32));
        let v = a * 1e3;
        if v.abs() < 2e9 {
            let want = (v as i32) as i64 as u64;
            let nx = if v.fract() != 0.0 { NX } else { 0 };
            assert_eq!(to_x_s(FCVT_IF, 0, RTZ, s(v), 0), (want, nx), "{v}");
        }
    }
}

/// Random 32-bit words, and random words with every F/D opcode forced, on
/// random register contents: `execute` must never panic, and an illegal
/// word must change nothing.
#[test]
fn fuzz_never_panics() {
    let mut rng = Rng(12345);
    let opcodes = [0x53, 0x43, 0x47, 0x4b, 0x4f];
    for i in 0..200_000 {
        let mut inst = rng.next() as u32;
        if i % 4 != 0 {
            inst = (inst & !0x7f) | opcodes[(rng.next() % 5) as usize];
        }
        let mut fpu = Fpu {
            frm: (rng.next() % 8) as u8,
            fflags: (rng.next() % 32) as u8,
            ..Fpu::default()
        };
        for r in fpu.f.iter_mut() {
            *r = match rng.next() % 3 {
                0 => rng.next(),
                1 => nan_box(rng.next() as u32),
                _ => rng.next() & 0x8000_0000_0000_0fff,
            };
        }
        let mut x = [0u64; 32];
        x.iter_mut().for_each(|r| *r = rng.next());
        let (before, xbefore) = (fpu.clone(), x);
        if fpu.execute(inst, &mut x).is_err() {
            assert_eq!((fpu, x), (before, xbefore), "{inst:08x}");
        } else {
            assert_eq!(fpu.frm, before.frm);
            assert!(fpu.fflags < 32 && fpu.fflags & before.fflags == before.fflags);
        }
    }
}

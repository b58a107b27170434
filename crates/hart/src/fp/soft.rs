//! Bit-exact IEEE 754 binary32/binary64 arithmetic with the RISC-V choices
//! (canonical NaN results, tininess detected after rounding, RISC-V
//! saturating float-to-integer conversions).
//!
//! Values travel as raw bit patterns in a `u64` (a single uses the low 32
//! bits) together with a [`Format`] describing the field widths, so one body
//! of code serves both precisions. Every operation returns the result bits
//! and the exception flags it raised, in `fflags` bit positions.
//!
//! The method is the textbook one: unpack to an integer significand and a
//! power-of-two exponent, compute the exact result (or one that is exact
//! except for a "sticky" lowest bit standing for nonzero bits shifted out,
//! which rounds the same way provided the sticky bit lies at least two bits
//! below the rounding position), then round once in [`round_pack`]. `u128`
//! is wide enough to hold every intermediate exactly: a binary64 product is
//! 106 bits, and sums, quotients and square roots are computed with the
//! operands shifted to the top of the 128 bits.
//!
//! Addition, multiplication, division and square root in round-to-nearest-
//! even first try a fast path on host arithmetic (`host.rs`), which
//! declines every case whose flags it cannot vouch for.

use super::host;

/// Inexact.
pub const NX: u8 = 1;
/// Underflow.
pub const UF: u8 = 2;
/// Overflow.
pub const OF: u8 = 4;
/// Divide by zero.
pub const DZ: u8 = 8;
/// Invalid operation.
pub const NV: u8 = 16;

/// Rounding direction (the RISC-V `rm` encodings 0..=4, in order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rm {
    /// Round to nearest, ties to even.
    Rne,
    /// Round towards zero.
    Rtz,
    /// Round down (towards -inf).
    Rdn,
    /// Round up (towards +inf).
    Rup,
    /// Round to nearest, ties to max magnitude.
    Rmm,
}

impl Rm {
    /// Decodes a rounding mode; 5..=7 are not rounding modes.
    pub fn from_bits(v: u8) -> Option<Rm> {
        Some(match v {
            0 => Rm::Rne,
            1 => Rm::Rtz,
            2 => Rm::Rdn,
            3 => Rm::Rup,
            4 => Rm::Rmm,
            _ => return None,
        })
    }
}

/// A binary interchange format, by its field widths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    exp_bits: u32,
    frac_bits: u32,
}

/// binary32.
pub const F32: Format = Format {
    exp_bits: 8,
    frac_bits: 23,
};
/// binary64.
pub const F64: Format = Format {
    exp_bits: 11,
    frac_bits: 52,
};

impl Format {
    fn bias(self) -> i32 {
        (1 << (self.exp_bits - 1)) - 1
    }
    /// Precision in bits, hidden bit included.
    fn prec(self) -> i32 {
        self.frac_bits as i32 + 1
    }
    fn sign_bit(self) -> u64 {
        1 << (self.exp_bits + self.frac_bits)
    }
    fn frac_mask(self) -> u64 {
        (1 << self.frac_bits) - 1
    }
    fn exp_mask(self) -> u64 {
        ((1 << self.exp_bits) - 1) << self.frac_bits
    }
    fn quiet_bit(self) -> u64 {
        1 << (self.frac_bits - 1)
    }
    fn sign(self, neg: bool) -> u64 {
        if neg {
            self.sign_bit()
        } else {
            0
        }
    }
    /// The RISC-V canonical NaN: positive, quiet, payload zero.
    pub fn default_nan(self) -> u64 {
        self.exp_mask() | self.quiet_bit()
    }
    fn inf(self, neg: bool) -> u64 {
        self.sign(neg) | self.exp_mask()
    }
    fn zero(self, neg: bool) -> u64 {
        self.sign(neg)
    }
    fn max_finite(self, neg: bool) -> u64 {
        self.sign(neg) | (self.exp_mask() - (1 << self.frac_bits)) | self.frac_mask()
    }
    pub fn is_nan(self, a: u64) -> bool {
        a & (self.exp_mask() | self.frac_mask()) > self.exp_mask()
    }
    pub fn is_snan(self, a: u64) -> bool {
        self.is_nan(a) && a & self.quiet_bit() == 0
    }
    fn is_neg(self, a: u64) -> bool {
        a & self.sign_bit() != 0
    }

    fn unpack(self, a: u64) -> (bool, Class) {
        let neg = self.is_neg(a);
        let biased = ((a & self.exp_mask()) >> self.frac_bits) as i32;
        let frac = a & self.frac_mask();
        let class = if biased == (1 << self.exp_bits) - 1 {
            if frac == 0 {
                Class::Inf
            } else {
                Class::Nan
            }
        } else if biased == 0 {
            if frac == 0 {
                Class::Zero
            } else {
                // Subnormal: no hidden bit, same exponent as the smallest normal.
                Class::Finite(frac as u128, 1 - self.bias() - self.frac_bits as i32)
            }
        } else {
            Class::Finite(
                (frac | 1 << self.frac_bits) as u128,
                biased - self.bias() - self.frac_bits as i32,
            )
        };
        (neg, class)
    }
}

/// An unpacked operand, without its sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Zero,
    /// `sig * 2^exp`, `sig != 0`.
    Finite(u128, i32),
    Inf,
    Nan,
}

/// Position of the most significant set bit (`x != 0`).
fn msb(x: u128) -> i32 {
    127 - x.leading_zeros() as i32
}

/// Shifts right by `n`, ORing every bit shifted out into bit 0 ("jamming").
fn shift_right_jam(x: u128, n: u32) -> u128 {
    if n == 0 {
        x
    } else if n >= 128 {
        (x != 0) as u128
    } else {
        x >> n | (x & ((1 << n) - 1) != 0) as u128
    }
}

/// Whether to add one unit in the last place: `lsb_odd` is the kept lowest
/// bit, `half` the first bit dropped, `rest` the OR of the bits below it.
fn round_up(rm: Rm, neg: bool, lsb_odd: bool, half: bool, rest: bool) -> bool {
    match rm {
        Rm::Rne => half && (rest || lsb_odd),
        Rm::Rtz => false,
        Rm::Rdn => neg && (half || rest),
        Rm::Rup => !neg && (half || rest),
        Rm::Rmm => half,
    }
}

/// Divides `sig` by `2^shift` rounding per `rm` (multiplies, exactly, when
/// `shift <= 0`; the caller guarantees that does not overflow). Returns the
/// rounded integer and whether it is inexact. The result may be one more
/// than `sig >> shift`, i.e. the rounding may carry into a new top bit.
fn shift_round(sig: u128, shift: i32, neg: bool, rm: Rm) -> (u128, bool) {
    if shift <= 0 {
        return (sig << -shift, false);
    }
    let (kept, half, rest) = if shift > 128 {
        (0, false, sig != 0)
    } else if shift == 128 {
        (0, sig >> 127 != 0, sig << 1 != 0)
    } else {
        let dropped = sig & ((1 << shift) - 1);
        let half_bit = 1u128 << (shift - 1);
        (
            sig >> shift,
            dropped & half_bit != 0,
            dropped & (half_bit - 1) != 0,
        )
    };
    let inc = round_up(rm, neg, kept & 1 != 0, half, rest);
    (kept + inc as u128, half || rest)
}

/// Result of an overflow: infinity or the largest finite number, depending
/// on which way the rounding mode points.
fn overflow_result(fmt: Format, neg: bool, rm: Rm) -> u64 {
    let to_inf = match rm {
        Rm::Rne | Rm::Rmm => true,
        Rm::Rtz => false,
        Rm::Rdn => neg,
        Rm::Rup => !neg,
    };
    if to_inf {
        fmt.inf(neg)
    } else {
        fmt.max_finite(neg)
    }
}

/// Rounds `(-1)^neg * sig * 2^exp` (`sig != 0`) to `fmt` and packs it.
///
/// `sig` may carry a sticky bit in bit 0; that is only sound when `sig` has
/// at least `prec + 2` significant bits, which every caller that jams
/// ensures.
fn round_pack(fmt: Format, neg: bool, sig: u128, exp: i32, rm: Rm) -> (u64, u8) {
    debug_assert!(sig != 0);
    let p = fmt.prec();
    let emin = 1 - fmt.bias();
    let emax = fmt.bias();
    // The exact value lies in [2^e, 2^(e+1)).
    let e = exp + msb(sig);
    // Weight of the result's last significand bit: p bits below the leading
    // one, but never finer than the subnormal spacing.
    let mut lsb = e.max(emin) - (p - 1);
    let (mut m, inexact) = shift_round(sig, lsb - exp, neg, rm);
    if m >> p != 0 {
        // Rounded up to the next power of two; dropping the low bit is exact.
        m >>= 1;
        lsb += 1;
    }
    let mut flags = if inexact { NX } else { 0 };
    let normal = m >> (p - 1) != 0;
    if normal && lsb + p - 1 > emax {
        return (overflow_result(fmt, neg, rm), OF | NX);
    }
    // RISC-V detects tininess after rounding: the result is tiny if rounding
    // the exact value to p bits with an unbounded exponent range would give
    // a magnitude below 2^emin. That can only be in doubt when the exact
    // value is just below 2^emin and p-bit rounding carries up to it.
    if inexact && e < emin {
        let tiny = e < emin - 1 || {
            let (m2, _) = shift_round(sig, e - (p - 1) - exp, neg, rm);
            m2 >> p == 0
        };
        if tiny {
            flags |= UF;
        }
    }
    let bits = if normal {
        let biased = (lsb + p - 1 + fmt.bias()) as u64;
        biased << fmt.frac_bits | (m as u64 & fmt.frac_mask())
    } else {
        // Subnormal or zero: the exponent field is zero.
        m as u64
    };
    (fmt.sign(neg) | bits, flags)
}

/// NV if any operand is a signaling NaN.
fn snan_flags(fmt: Format, ops: &[u64]) -> u8 {
    if ops.iter().any(|&a| fmt.is_snan(a)) {
        NV
    } else {
        0
    }
}

/// Moves the leading one of `sig` to bit 124, leaving headroom for a carry
/// and room below for the other addend's bits.
fn normalize(sig: u128, exp: i32) -> (u128, i32) {
    let sh = 124 - msb(sig);
    debug_assert!(sh >= 0);
    (sig << sh, exp - sh)
}

/// Adds two nonzero finite values and rounds once.
///
/// Both are normalized to the same bit position, so the alignment shift of
/// the smaller one loses bits only when the exponents differ by at least
/// two; then at most one bit cancels and the jammed bit stays far below the
/// rounding position. When they differ by 0 or 1 the shift is exact (the
/// inputs have at most 106 significant bits, so at least 18 zero bits sit at
/// the bottom), so massive cancellation is computed exactly.
#[allow(clippy::too_many_arguments)]
fn add_finite(
    fmt: Format,
    a_neg: bool,
    a_sig: u128,
    a_exp: i32,
    b_neg: bool,
    b_sig: u128,
    b_exp: i32,
    rm: Rm,
) -> (u64, u8) {
    let (a_sig, a_exp) = normalize(a_sig, a_exp);
    let (b_sig, b_exp) = normalize(b_sig, b_exp);
    // Order by magnitude; with equal leading-bit positions that is
    // lexicographic on (exponent, significand).
    let ((big_neg, big_sig, big_exp), (small_neg, small_sig, small_exp)) =
        if (a_exp, a_sig) >= (b_exp, b_sig) {
            ((a_neg, a_sig, a_exp), (b_neg, b_sig, b_exp))
        } else {
            ((b_neg, b_sig, b_exp), (a_neg, a_sig, a_exp))
        };
    let small_sig = shift_right_jam(small_sig, (big_exp - small_exp) as u32);
    if big_neg == small_neg {
        round_pack(fmt, big_neg, big_sig + small_sig, big_exp, rm)
    } else {
        let diff = big_sig - small_sig;
        if diff == 0 {
            // Exact cancellation: +0, except -0 when rounding down.
            (fmt.zero(rm == Rm::Rdn), 0)
        } else {
            round_pack(fmt, big_neg, diff, big_exp, rm)
        }
    }
}

/// The host fast path's answer for the cases it accepts, in
/// round-to-nearest-even only.
fn host_first(
    fmt: Format,
    rm: Rm,
    single: impl FnOnce() -> Option<(u64, u8)>,
    double: impl FnOnce() -> Option<(u64, u8)>,
) -> Option<(u64, u8)> {
    match rm {
        Rm::Rne if fmt == F32 => single(),
        Rm::Rne => double(),
        _ => None,
    }
}

/// a + b.
pub fn add(fmt: Format, a: u64, b: u64, rm: Rm) -> (u64, u8) {
    let single = || host::single::add(a, b);
    let double = || host::double::add(a, b);
    host_first(fmt, rm, single, double).unwrap_or_else(|| add_soft(fmt, a, b, rm))
}

/// [`add`] without the host fast path.
pub(super) fn add_soft(fmt: Format, a: u64, b: u64, rm: Rm) -> (u64, u8) {
    let (an, ac) = fmt.unpack(a);
    let (bn, bc) = fmt.unpack(b);
    match (ac, bc) {
        (Class::Nan, _) | (_, Class::Nan) => (fmt.default_nan(), snan_flags(fmt, &[a, b])),
        (Class::Inf, Class::Inf) if an != bn => (fmt.default_nan(), NV),
        (Class::Inf, _) => (fmt.inf(an), 0),
        (_, Class::Inf) => (fmt.inf(bn), 0),
        (Class::Zero, Class::Zero) => {
            let neg = if an == bn { an } else { rm == Rm::Rdn };
            (fmt.zero(neg), 0)
        }
        (Class::Zero, _) => (b, 0),
        (_, Class::Zero) => (a, 0),
        (Class::Finite(am, ae), Class::Finite(bm, be)) => {
            add_finite(fmt, an, am, ae, bn, bm, be, rm)
        }
    }
}

/// a - b.
pub fn sub(fmt: Format, a: u64, b: u64, rm: Rm) -> (u64, u8) {
    // Flipping the sign of a NaN is harmless: NaN results are canonical and
    // the signaling bit is untouched.
    add(fmt, a, b ^ fmt.sign_bit(), rm)
}

/// a * b.
pub fn mul(fmt: Format, a: u64, b: u64, rm: Rm) -> (u64, u8) {
    let single = || host::single::mul(a, b);
    let double = || host::double::mul(a, b);
    host_first(fmt, rm, single, double).unwrap_or_else(|| mul_soft(fmt, a, b, rm))
}

/// [`mul`] without the host fast path.
pub(super) fn mul_soft(fmt: Format, a: u64, b: u64, rm: Rm) -> (u64, u8) {
    let (an, ac) = fmt.unpack(a);
    let (bn, bc) = fmt.unpack(b);
    let neg = an != bn;
    match (ac, bc) {
        (Class::Nan, _) | (_, Class::Nan) => (fmt.default_nan(), snan_flags(fmt, &[a, b])),
        (Class::Inf, Class::Zero) | (Class::Zero, Class::Inf) => (fmt.default_nan(), NV),
        (Class::Inf, _) | (_, Class::Inf) => (fmt.inf(neg), 0),
        (Class::Zero, _) | (_, Class::Zero) => (fmt.zero(neg), 0),
        (Class::Finite(am, ae), Class::Finite(bm, be)) => {
            round_pack(fmt, neg, am * bm, ae + be, rm)
        }
    }
}

/// Fused `(-1)^neg_prod * a * b + (-1)^neg_c * c` with a single rounding.
/// The negations apply to the operands before the operation, so they also
/// decide the sign of exact-zero results (FNMADD of zeros gives -0).
pub fn fma(fmt: Format, a: u64, b: u64, c: u64, neg_prod: bool, neg_c: bool, rm: Rm) -> (u64, u8) {
    let (an, ac) = fmt.unpack(a);
    let (bn, bc) = fmt.unpack(b);
    let (cn, cc) = fmt.unpack(c);
    let pn = (an != bn) != neg_prod;
    let cn = cn != neg_c;
    let inf_times_zero = matches!(
        (ac, bc),
        (Class::Inf, Class::Zero) | (Class::Zero, Class::Inf)
    );
    if ac == Class::Nan || bc == Class::Nan || cc == Class::Nan {
        // RISC-V: inf * 0 raises NV even when the addend is a quiet NaN.
        let nv = if inf_times_zero { NV } else { 0 };
        return (fmt.default_nan(), snan_flags(fmt, &[a, b, c]) | nv);
    }
    if inf_times_zero {
        return (fmt.default_nan(), NV);
    }
    if ac == Class::Inf || bc == Class::Inf {
        return if cc == Class::Inf && cn != pn {
            (fmt.default_nan(), NV)
        } else {
            (fmt.inf(pn), 0)
        };
    }
    if cc == Class::Inf {
        return (fmt.inf(cn), 0);
    }
    match (ac, bc, cc) {
        (Class::Finite(am, ae), Class::Finite(bm, be), Class::Finite(cm, ce)) => {
            add_finite(fmt, pn, am * bm, ae + be, cn, cm, ce, rm)
        }
        (Class::Finite(am, ae), Class::Finite(bm, be), _) => {
            // c is zero: the sum is the product, nonzero.
            round_pack(fmt, pn, am * bm, ae + be, rm)
        }
        (_, _, Class::Zero) => {
            // Zero product plus zero.
            let neg = if pn == cn { pn } else { rm == Rm::Rdn };
            (fmt.zero(neg), 0)
        }
        // Zero product plus nonzero finite c: exactly c.
        _ => ((c & !fmt.sign_bit()) | fmt.sign(cn), 0),
    }
}

/// a / b.
pub fn div(fmt: Format, a: u64, b: u64, rm: Rm) -> (u64, u8) {
    let single = || host::single::div(a, b);
    let double = || host::double::div(a, b);
    host_first(fmt, rm, single, double).unwrap_or_else(|| div_soft(fmt, a, b, rm))
}

/// [`div`] without the host fast path.
pub(super) fn div_soft(fmt: Format, a: u64, b: u64, rm: Rm) -> (u64, u8) {
    let (an, ac) = fmt.unpack(a);
    let (bn, bc) = fmt.unpack(b);
    let neg = an != bn;
    match (ac, bc) {
        (Class::Nan, _) | (_, Class::Nan) => (fmt.default_nan(), snan_flags(fmt, &[a, b])),
        (Class::Inf, Class::Inf) | (Class::Zero, Class::Zero) => (fmt.default_nan(), NV),
        (Class::Inf, _) => (fmt.inf(neg), 0),
        (_, Class::Inf) | (Class::Zero, _) => (fmt.zero(neg), 0),
        (_, Class::Zero) => (fmt.inf(neg), DZ),
        (Class::Finite(am, ae), Class::Finite(bm, be)) => {
            // Dividend at the top of 127 bits: the quotient then has at
            // least 126 - 52 = 74 bits, plenty above the sticky bit.
            let sh = 126 - msb(am);
            let n = am << sh;
            let q = n / bm;
            let sticky = (!n.is_multiple_of(bm)) as u128;
            round_pack(fmt, neg, q | sticky, ae - sh - be, rm)
        }
    }
}

/// Square root.
pub fn sqrt(fmt: Format, a: u64, rm: Rm) -> (u64, u8) {
    let single = || host::single::sqrt(a);
    let double = || host::double::sqrt(a);
    host_first(fmt, rm, single, double).unwrap_or_else(|| sqrt_soft(fmt, a, rm))
}

/// [`sqrt`] without the host fast path.
pub(super) fn sqrt_soft(fmt: Format, a: u64, rm: Rm) -> (u64, u8) {
    let (an, ac) = fmt.unpack(a);
    match ac {
        Class::Nan => (fmt.default_nan(), snan_flags(fmt, &[a])),
        // sqrt(-0) = -0.
        Class::Zero => (a, 0),
        _ if an => (fmt.default_nan(), NV),
        Class::Inf => (a, 0),
        Class::Finite(m, e) => {
            // Shift the radicand to 125 or 126 bits, keeping the exponent
            // even so that it halves exactly; its root has 63 bits.
            let mut sh = 126 - msb(m);
            if (e - sh) % 2 != 0 {
                sh -= 1;
            }
            let n = m << sh;
            let root = n.isqrt();
            let sticky = (n != root * root) as u128;
            round_pack(fmt, false, root | sticky, (e - sh) / 2, rm)
        }
    }
}

/// Converts between formats (a no-op if `from == to`, apart from NaNs).
pub fn convert(from: Format, to: Format, a: u64, rm: Rm) -> (u64, u8) {
    let (an, ac) = from.unpack(a);
    match ac {
        Class::Nan => (to.default_nan(), snan_flags(from, &[a])),
        Class::Inf => (to.inf(an), 0),
        Class::Zero => (to.zero(an), 0),
        Class::Finite(m, e) => round_pack(to, an, m, e, rm),
    }
}

/// Integer destination of a float-to-integer conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntKind {
    /// i32.
    W,
    /// u32.
    Wu,
    /// i64.
    L,
    /// u64.
    Lu,
}

impl IntKind {
    fn range(self) -> (i128, i128) {
        match self {
            IntKind::W => (i32::MIN.into(), i32::MAX.into()),
            IntKind::Wu => (0, u32::MAX.into()),
            IntKind::L => (i64::MIN.into(), i64::MAX.into()),
            IntKind::Lu => (0, u64::MAX.into()),
        }
    }
}

/// Float to integer with RISC-V saturation: out-of-range values, infinities
/// and NaNs raise NV (and not NX) and give the nearest bound of the range,
/// NaN counting as +inf. The range test applies to the rounded value, so
/// -0.5 converted to an unsigned integer with RTZ is 0 and merely inexact.
/// The result is the integer value; the caller truncates and sign-extends.
pub fn to_int(fmt: Format, a: u64, kind: IntKind, rm: Rm) -> (i128, u8) {
    let (min, max) = kind.range();
    let (an, ac) = fmt.unpack(a);
    let (mag, inexact) = match ac {
        Class::Nan => return (max, NV),
        Class::Inf => return (if an { min } else { max }, NV),
        Class::Zero => return (0, 0),
        // Anything 2^65 or larger is out of every range.
        Class::Finite(_, e) if e > 64 => return (if an { min } else { max }, NV),
        Class::Finite(m, e) => shift_round(m, -e, an, rm),
    };
    // mag < 2^(53+64), so it fits an i128 with room to spare.
    let v = if an { -(mag as i128) } else { mag as i128 };
    if v < min {
        (min, NV)
    } else if v > max {
        (max, NV)
    } else {
        (v, if inexact { NX } else { 0 })
    }
}

/// Integer (any of i32/u32/i64/u64, widened) to float.
pub fn from_int(fmt: Format, v: i128, rm: Rm) -> (u64, u8) {
    if v == 0 {
        (fmt.zero(false), 0)
    } else {
        round_pack(fmt, v < 0, v.unsigned_abs(), 0, rm)
    }
}

/// Orders non-NaN values: ±0 map to the same key.
fn order_key(fmt: Format, a: u64) -> i64 {
    let mag = (a & !fmt.sign_bit()) as i64;
    if fmt.is_neg(a) {
        -mag
    } else {
        mag
    }
}

/// FEQ: quiet comparison, NV only for signaling NaNs.
pub fn feq(fmt: Format, a: u64, b: u64) -> (bool, u8) {
    if fmt.is_nan(a) || fmt.is_nan(b) {
        return (false, snan_flags(fmt, &[a, b]));
    }
    (order_key(fmt, a) == order_key(fmt, b), 0)
}

/// FLT: signaling comparison, NV for any NaN.
pub fn flt(fmt: Format, a: u64, b: u64) -> (bool, u8) {
    if fmt.is_nan(a) || fmt.is_nan(b) {
        return (false, NV);
    }
    (order_key(fmt, a) < order_key(fmt, b), 0)
}

/// FLE: signaling comparison, NV for any NaN.
pub fn fle(fmt: Format, a: u64, b: u64) -> (bool, u8) {
    if fmt.is_nan(a) || fmt.is_nan(b) {
        return (false, NV);
    }
    (order_key(fmt, a) <= order_key(fmt, b), 0)
}

/// FMIN/FMAX as in RISC-V F 2.2 (IEEE 754-2019 minimumNumber/maximumNumber):
/// a single NaN operand is ignored, two NaNs give the canonical NaN, -0 is
/// below +0, and signaling NaNs raise NV.
pub fn min_max(fmt: Format, a: u64, b: u64, max: bool) -> (u64, u8) {
    let flags = snan_flags(fmt, &[a, b]);
    let v = match (fmt.is_nan(a), fmt.is_nan(b)) {
        (true, true) => fmt.default_nan(),
        (true, false) => b,
        (false, true) => a,
        (false, false) => {
            let (ka, kb) = (order_key(fmt, a), order_key(fmt, b));
            if ka == kb {
                // Equal keys mean identical bits or ±0: OR picks -0 for the
                // minimum, AND picks +0 for the maximum.
                if max {
                    a & b
                } else {
                    a | b
                }
            } else if (ka < kb) != max {
                a
            } else {
                b
            }
        }
    };
    (v, flags)
}

/// FCLASS: a one-hot mask of the operand's class.
pub fn classify(fmt: Format, a: u64) -> u64 {
    let (neg, class) = fmt.unpack(a);
    let subnormal = a & fmt.exp_mask() == 0;
    let bit = match class {
        Class::Inf => {
            if neg {
                0
            } else {
                7
            }
        }
        Class::Finite(..) => match (neg, subnormal) {
            (true, false) => 1,
            (true, true) => 2,
            (false, true) => 5,
            (false, false) => 6,
        },
        Class::Zero => {
            if neg {
                3
            } else {
                4
            }
        }
        Class::Nan => {
            if fmt.is_snan(a) {
                8
            } else {
                9
            }
        }
    };
    1 << bit
}

/// FSGNJ (`op` 0), FSGNJN (1), FSGNJX (2): `a`'s magnitude with a sign taken
/// from `b`, from `b` inverted, or `a`'s sign XOR `b`'s. A pure bit
/// operation: no flags, and NaNs pass through unchanged.
pub fn sign_inject(fmt: Format, a: u64, b: u64, op: u8) -> u64 {
    let s = fmt.sign_bit();
    let sign = match op {
        0 => b & s,
        1 => !b & s,
        _ => (a ^ b) & s,
    };
    (a & !s) | sign
}

//! Fast paths on host arithmetic for round-to-nearest-even, the mode
//! nearly all guest code runs in.
//!
//! Host `+ - * /` and `sqrt` on `f32`/`f64` are correctly rounded IEEE 754
//! operations in round-to-nearest-even (x86-64 SSE, AArch64; Rust never
//! changes the host rounding mode or enables flush-to-zero), so their
//! results are the right bits whenever they are not NaN (RISC-V wants the
//! canonical NaN). What the host does not give is the exception flags, so
//! each fast path only takes cases where the flags can be derived exactly
//! and cheaply, and returns `None` for everything else (NaN, infinity,
//! overflow, results near the underflow threshold), which then goes the
//! general software way:
//!
//! - OF cannot happen when the result is finite (RNE overflows to infinity).
//! - UF needs a tiny inexact result. A sum that is tiny is exact (both
//!   operands are multiples of the smallest subnormal), so addition never
//!   underflows; for the other operations we require a result above the
//!   smallest normal number, which cannot come from a tiny exact value.
//! - NX is computed exactly: the TwoSum error term for addition (exact when
//!   nothing overflows), and integer tests on the significands for the rest.
//! - NV and DZ need NaN, infinite or zero operands, all of which are sent to
//!   the general path.

use super::soft::NX;

macro_rules! fast_paths {
    ($module:ident, $float:ty, $bits:ty, $frac_bits:expr) => {
        pub mod $module {
            use super::NX;

            const FRAC_BITS: u32 = $frac_bits;
            const HIDDEN: u64 = 1 << FRAC_BITS;
            const EXP_MASK: u64 = (<$bits>::MAX >> 1 >> FRAC_BITS) as u64;
            const BIAS: i32 = (EXP_MASK >> 1) as i32;
            /// Precision in bits, hidden bit included.
            const PREC: u32 = FRAC_BITS + 1;

            fn host(v: u64) -> $float {
                <$float>::from_bits(v as $bits)
            }
            fn bits(v: $float) -> u64 {
                v.to_bits() as u64
            }

            /// Integer significand and exponent of a finite nonzero value:
            /// `v = sig * 2^exp`.
            fn split(v: $float) -> (u64, i32) {
                let b = bits(v);
                let biased = (b >> FRAC_BITS & EXP_MASK) as i32;
                let frac = b & (HIDDEN - 1);
                if biased == 0 {
                    (frac, 1 - BIAS - FRAC_BITS as i32)
                } else {
                    (frac | HIDDEN, biased - BIAS - FRAC_BITS as i32)
                }
            }

            /// Finite and larger in magnitude than the smallest normal number:
            /// rounded to full precision, neither overflowed nor tiny.
            fn safe(r: $float) -> bool {
                r.is_finite() && r.abs() > <$float>::MIN_POSITIVE
            }

            fn nx(inexact: bool) -> u8 {
                if inexact {
                    NX
                } else {
                    0
                }
            }

            pub fn add(a: u64, b: u64) -> Option<(u64, u8)> {
                let (x, y) = (host(a), host(b));
                let s = x + y;
                if !s.is_finite() {
                    return None;
                }
                // TwoSum (Knuth): s + err == x + y exactly, barring overflow,
                // which would leave err infinite or NaN.
                let bb = s - x;
                let err = (x - (s - bb)) + (y - bb);
                if !err.is_finite() {
                    return None;
                }
                Some((bits(s), nx(err != 0.0)))
            }

            pub fn mul(a: u64, b: u64) -> Option<(u64, u8)> {
                let (x, y) = (host(a), host(b));
                let r = x * y;
                if !safe(r) {
                    return None;
                }
                // Exact iff the significands' product fits the precision.
                let p = u128::from(split(x).0) * u128::from(split(y).0);
                let span = 128 - p.leading_zeros() - p.trailing_zeros();
                Some((bits(r), nx(span > PREC)))
            }

            pub fn div(a: u64, b: u64) -> Option<(u64, u8)> {
                let (x, y) = (host(a), host(b));
                let r = x / y;
                if !safe(r) {
                    return None;
                }
                // x/y = (mx / (odd * 2^t)) * 2^k is a binary fraction, then
                // representable (mx / odd < 2^PREC), iff odd divides mx.
                let my = split(y).0;
                let odd = my >> my.trailing_zeros();
                Some((bits(r), nx(split(x).0 % odd != 0)))
            }

            pub fn sqrt(a: u64) -> Option<(u64, u8)> {
                let x = host(a);
                let r = x.sqrt();
                if !safe(r) {
                    return None;
                }
                // Exact iff r * r == x: compare mr^2 * 2^(2 er) with
                // mx * 2^ex after stripping trailing zero bits.
                let (mr, er) = split(r);
                let (mx, ex) = split(x);
                let sq = u128::from(mr) * u128::from(mr);
                let (tz_sq, tz_x) = (sq.trailing_zeros(), mx.trailing_zeros());
                let exact = sq >> tz_sq == u128::from(mx >> tz_x)
                    && 2 * er + tz_sq as i32 == ex + tz_x as i32;
                Some((bits(r), nx(!exact)))
            }
        }
    };
}

fast_paths!(single, f32, u32, 23);
fast_paths!(double, f64, u64, 52);

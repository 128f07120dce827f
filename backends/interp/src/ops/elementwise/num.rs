//! Numeric building blocks shared by the elementwise, cast and reduction
//! families: the [`Real`] and [`Int`] element traits, dtype dispatch macros
//! and broadcasting zips.
//!
//! Float arithmetic goes through `f64`: every `f16`, `bf16` and `f32` value
//! is exact in `f64`, and `+ - * /` and `sqrt` computed in `f64` and rounded
//! once to the narrower type give exactly the IEEE result of that type
//! (`f64` has more than twice their precision plus two bits). Transcendental
//! functions computed in `f64` and rounded once are at least as accurate as
//! ONNX's reference, which evaluates them in the input type.

use crate::util::broadcast_shapes;
use half::{bf16, f16};
use ndarray::{ArrayBase, ArrayD, ArrayViewD, Data, IxDyn, Zip};
use sharc_ir::{Element, EvalError};

/// Floating-point element types stored directly in a tensor.
pub(crate) trait Real: Element + Copy + PartialOrd {
    /// The value, exactly.
    fn to_f64(self) -> f64;
    /// The nearest value (round to nearest, ties to even; overflow to ±inf).
    fn from_f64(v: f64) -> Self;
}

impl Real for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

impl Real for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Real for f16 {
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        f16::from_f32(f64_to_f32_round_odd(v))
    }
}

impl Real for bf16 {
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        bf16::from_f32(f64_to_f32_round_odd(v))
    }
}

/// `v` rounded to `f32` with "round to odd": an inexact result is the
/// neighbour with an odd last bit. Rounding that again to a format with at
/// most 22 significant bits (f16, bf16) gives the correctly rounded result of
/// `v`, which a plain `f64 → f32 → f16` chain does not (it can round twice),
/// nor does `half`'s direct `from_f64` (it drops the low 32 bits first).
pub(crate) fn f64_to_f32_round_odd(v: f64) -> f32 {
    let r = v as f32;
    if !r.is_finite() || r as f64 == v || r.to_bits() & 1 == 1 {
        return r;
    }
    // `r` is inexact with an even last bit: its odd neighbour on v's side is
    // within the same rounding interval.
    if (r as f64) < v { r.next_up() } else { r.next_down() }
}

/// Integer element types stored directly in a tensor, with the arithmetic
/// ONNX defines on them (two's-complement wrapping).
pub(crate) trait Int: Element + Copy + Ord + Default + std::fmt::Display {
    const BITS: u32;
    const MIN: Self;
    const MAX: Self;
    const ZERO: Self;
    const ONE: Self;
    fn wrapping_add(self, o: Self) -> Self;
    fn wrapping_sub(self, o: Self) -> Self;
    fn wrapping_mul(self, o: Self) -> Self;
    fn wrapping_neg(self) -> Self;
    fn wrapping_abs(self) -> Self;
    /// Truncating division; `None` for a zero divisor. `MIN / -1` wraps.
    fn checked_div_trunc(self, o: Self) -> Option<Self>;
    /// Remainder with the sign of the dividend; `None` for a zero divisor.
    fn checked_rem_trunc(self, o: Self) -> Option<Self>;
    fn signum(self) -> Self;
    fn bitand(self, o: Self) -> Self;
    fn bitor(self, o: Self) -> Self;
    fn bitxor(self, o: Self) -> Self;
    fn bitnot(self) -> Self;
    /// Shift left by `n < BITS`, discarding bits shifted out.
    fn shl(self, n: u32) -> Self;
    /// Shift right by `n < BITS`: arithmetic for signed types.
    fn shr(self, n: u32) -> Self;
    fn to_i128(self) -> i128;
    /// The low `BITS` bits of `v` (two's complement), as ONNX's Cast does.
    fn from_i128_wrapping(v: i128) -> Self;
    fn to_f64(self) -> f64;
}

macro_rules! impl_int {
    ($($t:ty),*) => {$(
        impl Int for $t {
            const BITS: u32 = <$t>::BITS;
            const MIN: Self = <$t>::MIN;
            const MAX: Self = <$t>::MAX;
            const ZERO: Self = 0;
            const ONE: Self = 1;
            fn wrapping_add(self, o: Self) -> Self { <$t>::wrapping_add(self, o) }
            fn wrapping_sub(self, o: Self) -> Self { <$t>::wrapping_sub(self, o) }
            fn wrapping_mul(self, o: Self) -> Self { <$t>::wrapping_mul(self, o) }
            fn wrapping_neg(self) -> Self { <$t>::wrapping_neg(self) }
            #[allow(unused_comparisons)]
            fn wrapping_abs(self) -> Self { if self < 0 { <$t>::wrapping_neg(self) } else { self } }
            fn checked_div_trunc(self, o: Self) -> Option<Self> {
                if o == 0 { None } else { Some(<$t>::wrapping_div(self, o)) }
            }
            fn checked_rem_trunc(self, o: Self) -> Option<Self> {
                if o == 0 { None } else { Some(<$t>::wrapping_rem(self, o)) }
            }
            #[allow(unused_comparisons)]
            fn signum(self) -> Self { if self > 0 { 1 } else if self < 0 { (0 as $t).wrapping_sub(1) } else { 0 } }
            fn bitand(self, o: Self) -> Self { self & o }
            fn bitor(self, o: Self) -> Self { self | o }
            fn bitxor(self, o: Self) -> Self { self ^ o }
            fn bitnot(self) -> Self { !self }
            fn shl(self, n: u32) -> Self { self << n }
            fn shr(self, n: u32) -> Self { self >> n }
            fn to_i128(self) -> i128 { self as i128 }
            fn from_i128_wrapping(v: i128) -> Self { v as $t }
            fn to_f64(self) -> f64 { self as f64 }
        }
    )*};
}

impl_int!(i8, i16, i32, i64, u8, u16, u32, u64);

/// Matches a [`sharc_ir::TensorData`] holding a [`Real`] type, binding its
/// array; anything else goes to the fallback arm.
macro_rules! match_real {
    ($data:expr, $a:ident => $body:expr, $other:pat => $fallback:expr) => {
        match $data {
            sharc_ir::TensorData::F32($a) => $body,
            sharc_ir::TensorData::F64($a) => $body,
            sharc_ir::TensorData::F16($a) => $body,
            sharc_ir::TensorData::BF16($a) => $body,
            $other => $fallback,
        }
    };
}
pub(crate) use match_real;

/// Matches a [`sharc_ir::TensorData`] holding an [`Int`] type.
macro_rules! match_int {
    ($data:expr, $a:ident => $body:expr, $other:pat => $fallback:expr) => {
        match $data {
            sharc_ir::TensorData::I8($a) => $body,
            sharc_ir::TensorData::I16($a) => $body,
            sharc_ir::TensorData::I32($a) => $body,
            sharc_ir::TensorData::I64($a) => $body,
            sharc_ir::TensorData::U8($a) => $body,
            sharc_ir::TensorData::U16($a) => $body,
            sharc_ir::TensorData::U32($a) => $body,
            sharc_ir::TensorData::U64($a) => $body,
            $other => $fallback,
        }
    };
}
pub(crate) use match_int;

/// Matches two [`sharc_ir::TensorData`] of the same [`Real`] type.
macro_rules! match_real2 {
    ($x:expr, $y:expr, ($a:ident, $b:ident) => $body:expr, $other:pat => $fallback:expr) => {
        match ($x, $y) {
            (sharc_ir::TensorData::F32($a), sharc_ir::TensorData::F32($b)) => $body,
            (sharc_ir::TensorData::F64($a), sharc_ir::TensorData::F64($b)) => $body,
            (sharc_ir::TensorData::F16($a), sharc_ir::TensorData::F16($b)) => $body,
            (sharc_ir::TensorData::BF16($a), sharc_ir::TensorData::BF16($b)) => $body,
            $other => $fallback,
        }
    };
}
pub(crate) use match_real2;

/// Matches two [`sharc_ir::TensorData`] of the same [`Int`] type.
macro_rules! match_int2 {
    ($x:expr, $y:expr, ($a:ident, $b:ident) => $body:expr, $other:pat => $fallback:expr) => {
        match ($x, $y) {
            (sharc_ir::TensorData::I8($a), sharc_ir::TensorData::I8($b)) => $body,
            (sharc_ir::TensorData::I16($a), sharc_ir::TensorData::I16($b)) => $body,
            (sharc_ir::TensorData::I32($a), sharc_ir::TensorData::I32($b)) => $body,
            (sharc_ir::TensorData::I64($a), sharc_ir::TensorData::I64($b)) => $body,
            (sharc_ir::TensorData::U8($a), sharc_ir::TensorData::U8($b)) => $body,
            (sharc_ir::TensorData::U16($a), sharc_ir::TensorData::U16($b)) => $body,
            (sharc_ir::TensorData::U32($a), sharc_ir::TensorData::U32($b)) => $body,
            (sharc_ir::TensorData::U64($a), sharc_ir::TensorData::U64($b)) => $body,
            $other => $fallback,
        }
    };
}
pub(crate) use match_int2;

/// A view of `a` broadcast to `shape` (numpy rules), or an error naming both
/// shapes.
pub(crate) fn broadcast_to<'a, T, S: Data<Elem = T>>(
    a: &'a ArrayBase<S, IxDyn>,
    shape: &[usize],
) -> Result<ArrayViewD<'a, T>, EvalError> {
    a.broadcast(IxDyn(shape))
        .ok_or_else(|| EvalError::new(format!("shape {:?} does not broadcast to {:?}", a.shape(), shape)))
}

/// `f` over the numpy broadcast of two arrays.
pub(crate) fn zip2<A, B, C, SA: Data<Elem = A>, SB: Data<Elem = B>>(
    a: &ArrayBase<SA, IxDyn>,
    b: &ArrayBase<SB, IxDyn>,
    f: impl FnMut(&A, &B) -> C,
) -> Result<ArrayD<C>, EvalError> {
    let shape = broadcast_shapes(a.shape(), b.shape())?;
    let av = broadcast_to(a, &shape)?;
    let bv = broadcast_to(b, &shape)?;
    Ok(Zip::from(&av).and(&bv).map_collect(f))
}

/// Like [`zip2`] for a function that can fail: the first error wins.
pub(crate) fn try_zip2<A, B, C: Default, SA: Data<Elem = A>, SB: Data<Elem = B>>(
    a: &ArrayBase<SA, IxDyn>,
    b: &ArrayBase<SB, IxDyn>,
    mut f: impl FnMut(&A, &B) -> Result<C, EvalError>,
) -> Result<ArrayD<C>, EvalError> {
    let mut err = None;
    let out = zip2(a, b, |x, y| match f(x, y) {
        Ok(v) => v,
        Err(e) => {
            err.get_or_insert(e);
            C::default()
        }
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The broadcast shape of any number of shapes.
pub(crate) fn broadcast_all<'a>(shapes: impl IntoIterator<Item = &'a [usize]>) -> Result<Vec<usize>, EvalError> {
    let mut out: Vec<usize> = Vec::new();
    for s in shapes {
        out = broadcast_shapes(&out, s)?;
    }
    Ok(out)
}

/// NaN-propagating maximum (numpy's `maximum`).
pub(crate) fn max_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if b > a {
        b
    } else {
        a
    }
}

/// NaN-propagating minimum (numpy's `minimum`).
pub(crate) fn min_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if b < a {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharc_ir::Array;

    #[test]
    fn round_odd_avoids_double_rounding() {
        // 1 + 2^-11 + 2^-40 lies just above the midpoint between the f16
        // values 1 and 1 + 2^-10. Through f32 with round-to-nearest the tail
        // is lost and the tie goes to even (1.0); round-to-odd keeps it.
        let v = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
        assert_eq!(f16::from_f32(v as f32), f16::from_f32(1.0));
        assert_eq!(<f16 as Real>::from_f64(v).to_f64(), 1.0 + 2f64.powi(-10));
        // An exact midpoint still ties to even.
        assert_eq!(<f16 as Real>::from_f64(1.0 + 2f64.powi(-11)).to_f64(), 1.0);
        // Same for bf16 (8 significant bits).
        let w = 1.0 + 2f64.powi(-8) + 2f64.powi(-45);
        assert_eq!(<bf16 as Real>::from_f64(w).to_f64(), 1.0 + 2f64.powi(-7));
        assert_eq!(<bf16 as Real>::from_f64(1.0 + 2f64.powi(-8)).to_f64(), 1.0);
        // Overflow and specials.
        assert!(<f16 as Real>::from_f64(1e6).to_f64().is_infinite());
        assert!(<bf16 as Real>::from_f64(f64::NAN).to_f64().is_nan());
        assert_eq!(<f16 as Real>::from_f64(-0.0).to_f64().to_bits(), (-0.0f64).to_bits());
    }

    #[test]
    fn int_wrapping() {
        assert_eq!(Int::wrapping_abs(i8::MIN), i8::MIN);
        assert_eq!(Int::checked_div_trunc(i32::MIN, -1), Some(i32::MIN));
        assert_eq!(Int::checked_div_trunc(-7i32, 2), Some(-3));
        assert_eq!(Int::checked_rem_trunc(-7i32, 2), Some(-1));
        assert_eq!(Int::checked_div_trunc(7u8, 0), None);
        assert_eq!(Int::signum(200u8), 1);
        assert_eq!(Int::signum(-5i64), -1);
        assert_eq!(<i8 as Int>::from_i128_wrapping(200), -56);
        assert_eq!(Int::shr(-8i8, 1), -4);
    }

    #[test]
    fn zips_broadcast() {
        let a = Array::from_shape_vec(IxDyn(&[2, 1]), vec![1, 2]).unwrap();
        let b = Array::from_shape_vec(IxDyn(&[3]), vec![10, 20, 30]).unwrap();
        let c = zip2(&a, &b, |x, y| x + y).unwrap();
        assert_eq!(c.shape(), &[2, 3]);
        assert_eq!(c.iter().copied().collect::<Vec<_>>(), vec![11, 21, 31, 12, 22, 32]);
        let bad = Array::from_shape_vec(IxDyn(&[2]), vec![1, 2]).unwrap();
        assert!(zip2(&b, &bad, |x, y| x + y).is_err());
        let e = try_zip2(&a, &b, |x, y| if *y == 20 { Err(EvalError::new("no")) } else { Ok(x + y) });
        assert_eq!(e.unwrap_err().message, "no");
        assert_eq!(broadcast_all([&[2, 1][..], &[3], &[1, 1, 1]]).unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn nan_propagating_extremes() {
        assert!(max_nan(1.0, f64::NAN).is_nan());
        assert!(min_nan(f64::NAN, 1.0).is_nan());
        assert_eq!(max_nan(1.0, 2.0), 2.0);
        assert_eq!(min_nan(1.0, 2.0), 1.0);
    }
}

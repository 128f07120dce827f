//! The narrow element formats: value ↔ code conversion.
//!
//! Tensors of the 8-, 4- and 2-bit types ([`DType::is_narrow`]) hold one code
//! per element in a byte (`TensorData::Narrow`). This module is the single
//! place that knows what those codes mean; `Cast`, `IsNaN`/`IsInf` and the
//! quantisation ops all go through it.
//!
//! | dtype        | layout            | bias | largest finite | specials                          |
//! | ------------ | ----------------- | ---- | -------------- | --------------------------------- |
//! | `f8e4m3fn`   | s eeee mmm        | 7    | 448            | NaN = s.1111.111, no infinity     |
//! | `f8e4m3fnuz` | s eeee mmm        | 8    | 240            | NaN = 0x80, no -0, no infinity    |
//! | `f8e5m2`     | s eeeee mm        | 15   | 57344          | IEEE-like: ±inf and NaNs          |
//! | `f8e5m2fnuz` | s eeeee mm        | 16   | 57344          | NaN = 0x80, no -0, no infinity    |
//! | `f4e2m1`     | s ee m            | 1    | 6              | none                              |
//! | `f8e8m0`     | eeeeeeee          | 127  | 2^127          | NaN = 0xFF; only powers of two    |
//! | `i4`/`u4`    | two's complement  |      | 7 / 15         |                                   |
//! | `i2`/`u2`    | two's complement  |      | 1 / 3          |                                   |
//!
//! Encoding follows ONNX's `Cast`: round to nearest with ties to even, then
//! the `saturate` table of the `Cast` spec for values beyond the largest
//! finite value. `f8e8m0` has its own rounding modes ([`encode_e8m0`]).
//! Integer formats keep the low bits of the integer (two's complement), so
//! that `Cast` wraps like it does for the wide integer types.
//!
//! ```
//! use sharc_interp::ops::cast::narrow::{decode, encode};
//! use sharc_ir::DType;
//! let c = encode(DType::F8E4M3FN, 0.48, true);
//! assert_eq!(decode(DType::F8E4M3FN, c), 0.46875);
//! assert_eq!(decode(DType::F8E4M3FN, encode(DType::F8E4M3FN, 1e6, true)), 448.0);
//! assert!(decode(DType::F8E4M3FN, encode(DType::F8E4M3FN, 1e6, false)).is_nan());
//! assert_eq!(decode(DType::I4, 0xF), -1.0);
//! ```

use sharc_ir::DType;
use sharc_ir::op::RoundMode;

/// How a small float format spends its special codes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Specials {
    /// "Finite" formats (e4m3fn): all-ones exponent and mantissa is NaN.
    Fn,
    /// IEEE-style (e5m2): all-ones exponent is infinity or NaN.
    Ieee,
    /// "Unsigned zero" formats: the negative-zero code 0x80 is the only NaN.
    Uz,
    /// No NaN and no infinity (e2m1).
    Finite,
}

/// The layout of a sign–exponent–mantissa format.
#[derive(Clone, Copy, Debug)]
struct Format {
    man_bits: u32,
    bias: i32,
    /// The code of the largest finite positive value.
    max_code: u8,
    sign: u8,
    specials: Specials,
}

fn format(dtype: DType) -> Option<Format> {
    let (man_bits, bias, max_code, sign, specials) = match dtype {
        DType::F8E4M3FN => (3, 7, 0x7E, 0x80, Specials::Fn),
        DType::F8E4M3FNUZ => (3, 8, 0x7F, 0x80, Specials::Uz),
        DType::F8E5M2 => (2, 15, 0x7B, 0x80, Specials::Ieee),
        DType::F8E5M2FNUZ => (2, 16, 0x7F, 0x80, Specials::Uz),
        DType::F4E2M1 => (1, 1, 0x07, 0x08, Specials::Finite),
        _ => return None,
    };
    Some(Format { man_bits, bias, max_code, sign, specials })
}

impl Format {
    /// The magnitude of an unsigned code. Past `max_code` the formula keeps
    /// counting, which gives the value one step beyond the largest finite
    /// one: the rounding boundary for overflow.
    fn magnitude(self, code: u16) -> f64 {
        let m = (code & ((1 << self.man_bits) - 1)) as f64;
        let e = (code >> self.man_bits) as i32;
        let scale = 2f64.powi(-(self.man_bits as i32));
        if e == 0 { m * scale * 2f64.powi(1 - self.bias) } else { (1.0 + m * scale) * 2f64.powi(e - self.bias) }
    }

    fn nan(self, negative: bool) -> u8 {
        let s = if negative { self.sign } else { 0 };
        match self.specials {
            Specials::Fn => 0x7F | s,
            Specials::Ieee => 0x7E | s,
            Specials::Uz => 0x80,
            // No NaN code. ml_dtypes, which ONNX's reference uses, gives a
            // zero of the opposite sign; matching it keeps codes comparable.
            Specials::Finite => {
                if negative {
                    0
                } else {
                    self.sign
                }
            }
        }
    }

    fn overflow(self, negative: bool, saturate: bool) -> u8 {
        let s = if negative { self.sign } else { 0 };
        match self.specials {
            _ if saturate => self.max_code | s,
            Specials::Finite => self.max_code | s,
            Specials::Fn => 0x7F | s,
            Specials::Ieee => 0x7C | s,
            Specials::Uz => 0x80,
        }
    }

    fn decode(self, code: u8) -> f32 {
        let code = code & (self.sign | (self.sign - 1));
        let negative = code & self.sign != 0;
        let mag = code & !self.sign;
        let special = match self.specials {
            Specials::Fn if mag == 0x7F => Some(f32::NAN),
            Specials::Ieee if mag >= 0x7C => Some(if mag == 0x7C { f32::INFINITY } else { f32::NAN }),
            Specials::Uz if code == 0x80 => Some(f32::NAN),
            _ => None,
        };
        let v = special.unwrap_or_else(|| self.magnitude(mag as u16) as f32);
        if negative && !v.is_nan() { -v } else { v }
    }

    fn encode(self, v: f64, saturate: bool) -> u8 {
        let negative = v.is_sign_negative();
        if v.is_nan() {
            return self.nan(negative);
        }
        let a = v.abs();
        let top = self.max_code as u16 + 1;
        let code = if a.is_infinite() || a > self.magnitude(top) {
            top
        } else {
            // The smallest code whose magnitude is at least `a`.
            let (mut lo, mut hi) = (0u16, top);
            while lo < hi {
                let mid = (lo + hi) / 2;
                if self.magnitude(mid) < a {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            let above = lo;
            if above == 0 || self.magnitude(above) == a {
                above
            } else {
                let below = above - 1;
                let (d_below, d_above) = (a - self.magnitude(below), self.magnitude(above) - a);
                if d_below < d_above || (d_below == d_above && below % 2 == 0) { below } else { above }
            }
        };
        if code == top {
            return self.overflow(negative, saturate);
        }
        let code = code as u8;
        if code == 0 && self.specials == Specials::Uz {
            return 0;
        }
        if negative { code | self.sign } else { code }
    }
}

/// The value of a narrow code. Exact for every format: integers give their
/// value, `f8e8m0`'s smallest code gives 2^-127 (a subnormal `f32`).
/// Codes of non-narrow dtypes decode as NaN.
pub fn decode(dtype: DType, code: u8) -> f32 {
    if let Some(f) = format(dtype) {
        return f.decode(code);
    }
    match dtype {
        DType::F8E8M0 => decode_e8m0(code),
        DType::I4 | DType::U4 | DType::I2 | DType::U2 => decode_int(dtype, code) as f32,
        _ => f32::NAN,
    }
}

/// The integer value of an `i4`/`u4`/`i2`/`u2` code (bits above the format's
/// width are ignored). Other dtypes give 0.
pub fn decode_int(dtype: DType, code: u8) -> i64 {
    match dtype {
        DType::U4 => (code & 0x0F) as i64,
        DType::U2 => (code & 0x03) as i64,
        DType::I4 => (((code << 4) as i8) >> 4) as i64,
        DType::I2 => (((code << 6) as i8) >> 6) as i64,
        _ => 0,
    }
}

/// The value range of an integer narrow format, `None` for other dtypes.
/// Quantisers clamp to it before calling [`encode_int`].
pub fn int_range(dtype: DType) -> Option<(i64, i64)> {
    Some(match dtype {
        DType::U4 => (0, 15),
        DType::I4 => (-8, 7),
        DType::U2 => (0, 3),
        DType::I2 => (-2, 1),
        _ => return None,
    })
}

/// The code of an integer in an integer narrow format: its low 4 or 2 bits
/// (two's complement), i.e. out-of-range values wrap as ONNX's `Cast` makes
/// them. Other dtypes give 0.
pub fn encode_int(dtype: DType, value: i128) -> u8 {
    match dtype {
        DType::U4 | DType::I4 => (value as u8) & 0x0F,
        DType::U2 | DType::I2 => (value as u8) & 0x03,
        _ => 0,
    }
}

/// Encodes an `f32` into any narrow format with ONNX `Cast` semantics (see
/// [`encode_f64`]); `f8e8m0` rounds up, `Cast`'s default.
pub fn encode(dtype: DType, value: f32, saturate: bool) -> u8 {
    encode_f64(dtype, value as f64, saturate, RoundMode::Up)
}

/// Encodes a value into any narrow format with ONNX `Cast` semantics:
///
/// - float8 and float4: round to nearest, ties to even. A value whose rounded
///   magnitude exceeds the largest finite one (including ±inf) becomes ±max
///   when `saturate`, else NaN (e4m3fn, the fnuz types) or ±inf (e5m2).
///   float4 has no NaN or inf and always saturates. Zero keeps its sign
///   except in the fnuz types, which have no -0.
/// - `f8e8m0`: see [`encode_e8m0`] (`round_mode` applies only there).
/// - integer formats: truncated toward zero, then wrapped to the low bits
///   (NaN gives 0).
pub fn encode_f64(dtype: DType, value: f64, saturate: bool, round_mode: RoundMode) -> u8 {
    if let Some(f) = format(dtype) {
        return f.encode(value, saturate);
    }
    match dtype {
        DType::F8E8M0 => encode_e8m0(value as f32, saturate, round_mode),
        DType::I4 | DType::U4 | DType::I2 | DType::U2 => {
            encode_int(dtype, if value.is_nan() { 0 } else { value.trunc() as i128 })
        }
        _ => 0,
    }
}

fn decode_e8m0(code: u8) -> f32 {
    match code {
        0xFF => f32::NAN,
        // 2^-127 is below f32's normal range: its bit pattern is a subnormal.
        0 => f32::from_bits(0x0040_0000),
        c => f32::from_bits((c as u32) << 23),
    }
}

/// Encodes into `f8e8m0` (a bare power-of-two exponent) from the bits of the
/// `f32` value, as ONNX's reference does. The sign is ignored (negative
/// inputs are undefined in ONNX). `Up` bumps the exponent for any fraction,
/// `Down` drops it, `nearest` rounds on the first dropped bit (ties up). With
/// `saturate` the exponent never rounds past 2^127; without it that gives
/// NaN. NaN stays NaN; ±inf gives the largest value with `saturate` (the
/// `Cast` spec's table) and NaN without.
pub fn encode_e8m0(value: f32, saturate: bool, round_mode: RoundMode) -> u8 {
    let bits = value.to_bits();
    let exp = (bits >> 23) & 0xFF;
    if exp == 0xFF {
        return if value.is_infinite() && saturate { 0xFE } else { 0xFF };
    }
    let round_up = match round_mode {
        RoundMode::Up => bits & 0x7F_FFFF != 0,
        RoundMode::Down => false,
        RoundMode::ToNearestEven => {
            let guard = bits & 0x40_0000 != 0;
            let round = bits & 0x20_0000 != 0;
            let sticky = bits & 0x1F_FFFF != 0;
            guard && (round || sticky || exp > 0)
        }
    };
    if round_up && !(saturate && exp == 0xFE) { (exp + 1) as u8 } else { exp as u8 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOAT8: [DType; 4] = [DType::F8E4M3FN, DType::F8E4M3FNUZ, DType::F8E5M2, DType::F8E5M2FNUZ];

    #[test]
    fn largest_values_and_specials() {
        assert_eq!(decode(DType::F8E4M3FN, 0x7E), 448.0);
        assert!(decode(DType::F8E4M3FN, 0x7F).is_nan());
        assert!(decode(DType::F8E4M3FN, 0xFF).is_nan());
        assert_eq!(decode(DType::F8E4M3FNUZ, 0x7F), 240.0);
        assert!(decode(DType::F8E4M3FNUZ, 0x80).is_nan());
        assert_eq!(decode(DType::F8E5M2, 0x7B), 57344.0);
        assert_eq!(decode(DType::F8E5M2, 0x7C), f32::INFINITY);
        assert_eq!(decode(DType::F8E5M2, 0xFC), f32::NEG_INFINITY);
        assert!(decode(DType::F8E5M2, 0x7E).is_nan());
        assert_eq!(decode(DType::F8E5M2FNUZ, 0x7F), 57344.0);
        assert_eq!(decode(DType::F4E2M1, 0x7), 6.0);
        assert_eq!(decode(DType::F4E2M1, 0xF), -6.0);
        // Smallest subnormals.
        assert_eq!(decode(DType::F8E4M3FN, 0x01), 2f32.powi(-9));
        assert_eq!(decode(DType::F8E4M3FNUZ, 0x01), 2f32.powi(-10));
        assert_eq!(decode(DType::F8E5M2, 0x01), 2f32.powi(-16));
        assert_eq!(decode(DType::F8E5M2FNUZ, 0x01), 2f32.powi(-17));
        assert_eq!(decode(DType::F4E2M1, 0x01), 0.5);
        assert_eq!(decode(DType::F8E8M0, 127), 1.0);
        assert_eq!(decode(DType::F8E8M0, 0) as f64, 2f64.powi(-127));
        assert!(decode(DType::F8E8M0, 0xFF).is_nan());
    }

    #[test]
    fn every_code_round_trips() {
        for d in FLOAT8.into_iter().chain([DType::F4E2M1, DType::F8E8M0]) {
            let n = if d == DType::F4E2M1 { 16 } else { 256 };
            for c in 0..n {
                let v = decode(d, c as u8);
                if v.is_nan() {
                    continue;
                }
                // Rounding up would move e8m0's subnormal 2^-127 to 2^-126.
                let back =
                    if d == DType::F8E8M0 { encode_e8m0(v, false, RoundMode::Down) } else { encode(d, v, false) };
                assert_eq!(decode(d, back).to_bits(), v.to_bits(), "{d} code {c:#x} ({v}) came back as {back:#x}");
            }
        }
    }

    #[test]
    fn ties_go_to_even() {
        // 0.5 + 1/32 lies halfway between 0.5 (0x30, even) and 0.5625 (0x31).
        assert_eq!(encode(DType::F8E4M3FN, 0.53125, true), 0x30);
        // 0.5625 + 1/32 lies halfway between 0x31 (odd) and 0.625 (0x32).
        assert_eq!(encode(DType::F8E4M3FN, 0.59375, true), 0x32);
        // 464 is halfway between 448 (even code 0x7E) and the overflow step.
        assert_eq!(encode(DType::F8E4M3FN, 464.0, false), 0x7E);
        assert_eq!(encode(DType::F8E4M3FN, 465.0, false), 0x7F);
        // 61440 is halfway between 57344 (odd code 0x7B) and infinity.
        assert_eq!(encode(DType::F8E5M2, 61440.0, false), 0x7C);
        assert_eq!(encode(DType::F8E5M2, 61439.0, false), 0x7B);
        assert_eq!(encode(DType::F4E2M1, 5.0, true), 0x6); // 4 (even) vs 6
        assert_eq!(encode(DType::F4E2M1, 0.25, true), 0x0); // 0 (even) vs 0.5
    }

    /// Codes from ml_dtypes (ONNX's reference) for the node suite's inputs:
    /// `x.astype(float8)` without saturation, and `numpy_helper.saturate_cast`.
    #[test]
    fn matches_reference_codes() {
        let xs = [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e6, -1e6, -0.0, 464.0, 460.0, 1e-9, -1e-9];
        let no_sat: [(DType, [u8; 11]); 5] = [
            (DType::F8E4M3FN, [0x7f, 0xff, 0x7f, 0xff, 0x7f, 0xff, 0x80, 0x7e, 0x7e, 0x0, 0x80]),
            (DType::F8E4M3FNUZ, [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x0, 0x80, 0x80, 0x0, 0x0]),
            (DType::F8E5M2, [0x7e, 0xfe, 0x7c, 0xfc, 0x7c, 0xfc, 0x80, 0x5f, 0x5f, 0x0, 0x80]),
            (DType::F8E5M2FNUZ, [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x0, 0x63, 0x63, 0x0, 0x0]),
            (DType::F4E2M1, [0x8, 0x0, 0x7, 0xf, 0x7, 0xf, 0x8, 0x7, 0x7, 0x0, 0x8]),
        ];
        for (d, want) in no_sat {
            let got: Vec<u8> = xs.iter().map(|&x| encode(d, x, false)).collect();
            assert_eq!(got, want, "{d}");
        }
        // Saturating: infinities and huge values clamp, NaN stays NaN.
        assert_eq!(encode(DType::F8E4M3FN, f32::INFINITY, true), 0x7E);
        assert_eq!(encode(DType::F8E4M3FNUZ, -1e6, true), 0xFF);
        assert_eq!(encode(DType::F8E5M2, f32::NEG_INFINITY, true), 0xFB);
        assert_eq!(encode(DType::F8E5M2FNUZ, 1e6, true), 0x7F);
        assert_eq!(encode(DType::F8E5M2FNUZ, f32::NAN, true), 0x80);
        // test_cast_FLOAT_to_FLOAT8E4M3FN: 0.47892547 → 0.46875, 0.7229038 → 0.75.
        assert_eq!(decode(DType::F8E4M3FN, encode(DType::F8E4M3FN, 0.478_925_47, true)), 0.46875);
        assert_eq!(decode(DType::F8E4M3FN, encode(DType::F8E4M3FN, 0.722_903_8, true)), 0.75);
        assert_eq!(decode(DType::F8E5M2FNUZ, encode(DType::F8E5M2FNUZ, 0.819_105_45, true)), 0.875);
    }

    #[test]
    fn e8m0_rounding() {
        // onnx.numpy_helper.to_float8e8m0 on test_cast_e8m0's inputs.
        let xs = [0.0, 0.124, 0.25, 0.5, 1.1, 2.0, 4.0, 8.0];
        let got: Vec<u8> = xs.iter().map(|&x| encode_e8m0(x, true, RoundMode::Up)).collect();
        assert_eq!(got, [0, 124, 125, 126, 128, 128, 129, 130]);
        assert_eq!(encode_e8m0(1.1, true, RoundMode::Down), 127);
        assert_eq!(encode_e8m0(1.4, true, RoundMode::ToNearestEven), 127);
        assert_eq!(encode_e8m0(1.5, true, RoundMode::ToNearestEven), 128);
        assert_eq!(encode_e8m0(f32::MAX, true, RoundMode::Up), 0xFE);
        assert_eq!(encode_e8m0(f32::MAX, false, RoundMode::Up), 0xFF);
        assert_eq!(encode_e8m0(f32::INFINITY, true, RoundMode::Up), 0xFE);
        assert_eq!(encode_e8m0(f32::INFINITY, false, RoundMode::Up), 0xFF);
        assert_eq!(encode_e8m0(f32::NAN, true, RoundMode::Up), 0xFF);
    }

    #[test]
    fn integer_formats_wrap() {
        // test_cast_FLOAT_to_INT4: -9..15 → 7 -8 -7 ... 7 -8 -7 ... -1.
        let got: Vec<i64> =
            (-9..16).map(|v| decode_int(DType::I4, encode_f64(DType::I4, v as f64, true, RoundMode::Up))).collect();
        let want: Vec<i64> = (-9i64..16).map(|v| (v + 8).rem_euclid(16) - 8).collect();
        assert_eq!(got, want);
        assert_eq!(decode_int(DType::U4, encode_int(DType::U4, -1)), 15);
        assert_eq!(decode_int(DType::I2, encode_int(DType::I2, 2)), -2);
        assert_eq!(decode_int(DType::U2, encode_int(DType::U2, -3)), 1);
        assert_eq!(encode_f64(DType::I4, 7.9, true, RoundMode::Up), 7);
        assert_eq!(encode_f64(DType::I4, -1.5, true, RoundMode::Up), 0xF);
        assert_eq!(int_range(DType::I4), Some((-8, 7)));
        assert_eq!(decode(DType::I2, 0x3), -1.0);
    }
}

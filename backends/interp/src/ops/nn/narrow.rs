//! Values of the narrow formats (8-, 4- and 2-bit floats and integers) that
//! quantisation produces and consumes.
//!
//! A tensor of a narrow dtype stores one code per element in a byte. Decoding
//! is a formula per format; encoding rounds to nearest, ties to even, by
//! searching the sorted table of a format's finite values. The table makes the
//! rounding rule obviously right for every format (subnormals, the odd
//! maximum of `e4m3fn`, formats without negative zero), which matters more in
//! the oracle than speed.
//!
//! Overflow follows ONNX's `Cast` tables: a value whose rounding to the
//! format's mantissa width exceeds the largest finite value becomes that
//! value when saturating, and otherwise infinity (`e5m2`) or NaN (the
//! formats without infinities).

use sharc_ir::DType;
use std::sync::OnceLock;

/// The layout of a minifloat format.
#[derive(Clone, Copy)]
struct Minifloat {
    exp_bits: u32,
    man_bits: u32,
    bias: i32,
    /// Has infinities (IEEE-like all-ones exponent).
    ieee: bool,
    /// `fnuz`: no negative zero, code `0x80` is the only NaN.
    uz: bool,
    /// `e4m3fn`: only the all-ones code (per sign) is NaN.
    fn_nan: bool,
}

fn layout(d: DType) -> Option<Minifloat> {
    let (exp_bits, man_bits, bias, ieee, uz, fn_nan) = match d {
        DType::F8E4M3FN => (4, 3, 7, false, false, true),
        DType::F8E4M3FNUZ => (4, 3, 8, false, true, false),
        DType::F8E5M2 => (5, 2, 15, true, false, false),
        DType::F8E5M2FNUZ => (5, 2, 16, false, true, false),
        DType::F4E2M1 => (2, 1, 1, false, false, false),
        _ => return None,
    };
    Some(Minifloat { exp_bits, man_bits, bias, ieee, uz, fn_nan })
}

/// The value of one code of a narrow dtype (NaN for NaN codes).
pub(crate) fn decode(d: DType, code: u8) -> f64 {
    match d {
        DType::U4 => (code & 0x0f) as f64,
        DType::I4 => (((code & 0x0f) << 4) as i8 >> 4) as f64,
        DType::U2 => (code & 0x03) as f64,
        DType::I2 => (((code & 0x03) << 6) as i8 >> 6) as f64,
        DType::F8E8M0 => {
            if code == 0xff {
                f64::NAN
            } else {
                (2.0f64).powi(code as i32 - 127)
            }
        }
        _ => match layout(d) {
            Some(f) => decode_minifloat(f, code),
            None => f64::NAN,
        },
    }
}

fn decode_minifloat(f: Minifloat, code: u8) -> f64 {
    let bits = 1 + f.exp_bits + f.man_bits;
    let code = code & ((1u16 << bits) - 1) as u8;
    let sign_bit = 1u8 << (bits - 1);
    if f.uz && code == sign_bit {
        return f64::NAN;
    }
    let neg = code & sign_bit != 0;
    let exp = ((code >> f.man_bits) & ((1 << f.exp_bits) - 1) as u8) as i32;
    let man = (code & ((1 << f.man_bits) - 1) as u8) as f64;
    let max_exp = (1 << f.exp_bits) - 1;
    if f.ieee && exp == max_exp {
        return if man == 0.0 { if neg { f64::NEG_INFINITY } else { f64::INFINITY } } else { f64::NAN };
    }
    if f.fn_nan && exp == max_exp && man as u32 == (1 << f.man_bits) - 1 {
        return f64::NAN;
    }
    let scale = (1u32 << f.man_bits) as f64;
    let mag = if exp == 0 {
        man / scale * (2.0f64).powi(1 - f.bias)
    } else {
        (1.0 + man / scale) * (2.0f64).powi(exp - f.bias)
    };
    if neg { -mag } else { mag }
}

/// The non-negative finite values of a minifloat with their codes, ascending,
/// followed by one virtual entry (code `None`) one step above the maximum:
/// rounding to it means overflow.
struct Table {
    values: Vec<(f64, Option<u8>)>,
}

fn table(d: DType) -> Option<&'static Table> {
    static TABLES: [OnceLock<Table>; 5] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let i = match d {
        DType::F8E4M3FN => 0,
        DType::F8E4M3FNUZ => 1,
        DType::F8E5M2 => 2,
        DType::F8E5M2FNUZ => 3,
        DType::F4E2M1 => 4,
        _ => return None,
    };
    let f = layout(d)?;
    Some(TABLES[i].get_or_init(|| {
        let bits = 1 + f.exp_bits + f.man_bits;
        let positive_codes = 1u16 << (bits - 1);
        let mut values: Vec<(f64, Option<u8>)> = (0..positive_codes)
            .map(|c| (decode_minifloat(f, c as u8), Some(c as u8)))
            .filter(|(v, _)| v.is_finite())
            .collect();
        // Codes ascend with magnitude, so the table is already sorted.
        // In every format here the maximum is not the first value of its
        // binade, so the gap below it is the grid step above it too.
        let max = values[values.len() - 1].0;
        let prev = values[values.len() - 2].0;
        values.push((max + (max - prev), None));
        Table { values }
    }))
}

/// True for the narrow dtypes [`encode`] can produce (every narrow type but
/// `f8e8m0`, which only serves as a scale).
pub(crate) fn can_encode(d: DType) -> bool {
    d.is_narrow() && d != DType::F8E8M0
}

/// Encodes a value to a narrow dtype ([`can_encode`] must hold): integers
/// round half to even and clamp to the type's range; floats round to nearest
/// even with the overflow rule of the module docs. `saturate` only matters
/// for the 8-bit floats (the 4-bit float has no infinity or NaN and always
/// saturates).
pub(crate) fn encode(d: DType, v: f64, saturate: bool) -> u8 {
    match d {
        DType::U4 => clamp_int(v, 0.0, 15.0) as u8,
        DType::I4 => (clamp_int(v, -8.0, 7.0) as i8 as u8) & 0x0f,
        DType::U2 => clamp_int(v, 0.0, 3.0) as u8,
        DType::I2 => (clamp_int(v, -2.0, 1.0) as i8 as u8) & 0x03,
        _ => match (layout(d), table(d)) {
            (Some(f), Some(t)) => encode_minifloat(f, t, v, saturate || d == DType::F4E2M1),
            _ => panic!("encode called for {d}, which can_encode rejects"),
        },
    }
}

fn clamp_int(v: f64, lo: f64, hi: f64) -> f64 {
    if v.is_nan() { 0.0 } else { v.round_ties_even().clamp(lo, hi) }
}

fn encode_minifloat(f: Minifloat, t: &Table, v: f64, saturate: bool) -> u8 {
    let bits = 1 + f.exp_bits + f.man_bits;
    let sign_bit = 1u8 << (bits - 1);
    let max_code = t.values[t.values.len() - 2].1.expect("real entry");
    let nan = if f.uz {
        0x80
    } else if f.ieee {
        sign_bit | (((1u8 << f.exp_bits) - 1) << f.man_bits) | 1
    } else if f.fn_nan {
        sign_bit - 1
    } else {
        // e2m1 has no NaN; ONNX's reference (ml_dtypes) yields -0.
        sign_bit
    };
    if v.is_nan() {
        return if f.fn_nan && v.is_sign_negative() { nan | sign_bit } else { nan };
    }
    let neg = v.is_sign_negative();
    let sign = if neg { sign_bit } else { 0 };
    let overflow = || {
        if saturate {
            sign | max_code
        } else if f.ieee {
            sign | (((1u8 << f.exp_bits) - 1) << f.man_bits)
        } else if f.uz {
            nan
        } else {
            sign | nan
        }
    };
    let a = v.abs();
    if a.is_infinite() {
        return overflow();
    }
    // Nearest table entry; ties go to the even code (even mantissa).
    let vals = &t.values;
    let hi = vals.partition_point(|&(x, _)| x < a);
    let pick = if hi == 0 {
        0
    } else if hi == vals.len() {
        vals.len() - 1
    } else {
        let (lo_v, hi_v) = (vals[hi - 1].0, vals[hi].0);
        let (dl, dh) = (a - lo_v, hi_v - a);
        if dl < dh {
            hi - 1
        } else if dh < dl {
            hi
        } else {
            // The virtual overflow entry counts as odd when the maximum is even.
            let lo_even = vals[hi - 1].1.is_some_and(|c| c % 2 == 0);
            if lo_even { hi - 1 } else { hi }
        }
    };
    match vals[pick].1 {
        None => overflow(),
        Some(0) if f.uz => 0,
        Some(c) => sign | c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_codes() {
        assert_eq!(decode(DType::I4, 0x0f), -1.0);
        assert_eq!(decode(DType::I4, 0x08), -8.0);
        assert_eq!(decode(DType::I2, 0x02), -2.0);
        assert_eq!(decode(DType::U2, 0x03), 3.0);
        assert_eq!(encode(DType::I4, -9.0, true), 0x08);
        assert_eq!(encode(DType::I4, 2.5, true), 2);
        assert_eq!(encode(DType::I4, -1.0, true), 0x0f);
        assert_eq!(encode(DType::U4, 99.0, true), 15);
        assert_eq!(encode(DType::I2, 5.0, true), 1);
    }

    #[test]
    fn float8_round_trip_every_code() {
        for d in [DType::F8E4M3FN, DType::F8E4M3FNUZ, DType::F8E5M2, DType::F8E5M2FNUZ] {
            for c in 0..=255u8 {
                let v = decode(d, c);
                if v.is_nan() {
                    assert!(decode(d, encode(d, v, true)).is_nan());
                    continue;
                }
                let back = encode(d, v, false);
                // Negative zero of the fnuz formats encodes as zero.
                assert_eq!(decode(d, back), v, "{d} code {c:#x}");
            }
        }
    }

    #[test]
    fn float8_known_values() {
        // Checked against ml_dtypes.
        assert_eq!(decode(DType::F8E4M3FN, 0x7e), 448.0);
        assert!(decode(DType::F8E4M3FN, 0x7f).is_nan());
        assert_eq!(decode(DType::F8E4M3FNUZ, 0x7f), 240.0);
        assert_eq!(decode(DType::F8E5M2, 0x7b), 57344.0);
        assert_eq!(decode(DType::F8E5M2, 0x7c), f64::INFINITY);
        assert_eq!(decode(DType::F8E4M3FN, 0x01), 2f64.powi(-9));
        // Rounding: 0.2 -> 0x25 (0.203125) in e4m3fn; 464 ties to 448 (even).
        assert_eq!(encode(DType::F8E4M3FN, 0.2, true), 0x25);
        assert_eq!(encode(DType::F8E4M3FN, 464.0, false), 0x7e);
        assert_eq!(encode(DType::F8E4M3FN, 465.0, false), 0x7f);
        assert_eq!(encode(DType::F8E4M3FN, 1e6, true), 0x7e);
        assert_eq!(encode(DType::F8E4M3FN, -1e6, true), 0xfe);
        assert_eq!(encode(DType::F8E4M3FN, f64::INFINITY, false), 0x7f);
        // e4m3fnuz: 248 ties to the (even) overflow step; -0 and tiny negatives give +0.
        assert_eq!(encode(DType::F8E4M3FNUZ, 248.0, false), 0x80);
        assert_eq!(encode(DType::F8E4M3FNUZ, 247.0, false), 0x7f);
        assert_eq!(encode(DType::F8E4M3FNUZ, -0.0, true), 0x00);
        assert_eq!(encode(DType::F8E4M3FNUZ, -1e-9, true), 0x00);
        assert_eq!(encode(DType::F8E4M3FNUZ, 0.2, true), 45);
        assert_eq!(encode(DType::F8E4M3FNUZ, 7.0, true), 86);
        // e5m2 overflows to infinity without saturation.
        assert_eq!(encode(DType::F8E5M2, 1e6, false), 0x7c);
        assert_eq!(encode(DType::F8E5M2, -1e6, true), 0xfb);
        assert_eq!(encode(DType::F8E5M2, -0.0, true), 0x80);
    }

    #[test]
    fn float4_values() {
        // ml_dtypes float4_e2m1fn codes for [nan, inf, -inf, 7, -0, 0.25, 0.2, 0.75, 2.5, 5, -5].
        let xs = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 7., -0., 0.25, 0.2, 0.75, 2.5, 5., -5.];
        let codes: Vec<u8> = xs.iter().map(|&x| encode(DType::F4E2M1, x, false)).collect();
        assert_eq!(codes, vec![8, 7, 15, 7, 8, 0, 0, 2, 4, 6, 14]);
        let vals: Vec<f64> = (0..8).map(|c| decode(DType::F4E2M1, c)).collect();
        assert_eq!(vals, vec![0., 0.5, 1., 1.5, 2., 3., 4., 6.]);
    }

    #[test]
    fn e8m0_scales() {
        assert_eq!(decode(DType::F8E8M0, 127), 1.0);
        assert_eq!(decode(DType::F8E8M0, 0), 2f64.powi(-127));
        assert!(decode(DType::F8E8M0, 255).is_nan());
        assert!(!can_encode(DType::F8E8M0) && can_encode(DType::I2) && !can_encode(DType::U8));
    }
}

//! Numbers to strings and back, for `Cast` to and from `string` tensors.
//!
//! ONNX's reference casts with numpy, whose `str` of a float is the shortest
//! string that reads back as the same value, written positionally when
//! `1e-4 <= |x| < limit` (or `x == 0`) and in scientific notation otherwise,
//! with at least two exponent digits: `0.1`, `100.0`, `1e-05`, `1.5e+20`.
//! The limit depends on the type: `1e3` for f16, `1e6` for f32, `1e16` for
//! f64. Specials are `nan`, `inf` and `-inf`; booleans are `True`/`False`.

use crate::ops::elementwise::num::Real;

/// numpy's `str` of a float of a type whose positional range ends at `limit`,
/// given the value and its shortest round-trip digits in Rust's `{:e}` form
/// (`"1.25e-3"`).
fn numpy_style(v: f64, shortest: impl FnOnce() -> String, limit: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let s = shortest();
    let (mantissa, exp) = s.split_once('e').unwrap_or((s.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    let sign = if v < 0.0 { "-" } else { "" };
    let a = v.abs();
    let body = if (1e-4..limit).contains(&a) { positional(&digits, exp) } else { scientific(&digits, exp) };
    format!("{sign}{body}")
}

/// `d.ddd × 10^exp` written without an exponent: `123.45`, `100.0`, `0.001`.
fn positional(digits: &str, exp: i32) -> String {
    let n = digits.len() as i32;
    if exp >= 0 {
        let int_len = exp + 1;
        if n <= int_len {
            format!("{digits}{}.0", "0".repeat((int_len - n) as usize))
        } else {
            format!("{}.{}", &digits[..int_len as usize], &digits[int_len as usize..])
        }
    } else {
        format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
    }
}

/// `d.ddd × 10^exp` as numpy writes it: `1e+20`, `1.2345679e+08`, `5e-05`.
fn scientific(digits: &str, exp: i32) -> String {
    let mantissa = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits.to_string() };
    format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
}

/// The shortest `{:.Ne}` rendering of a value of type `T` that reads back as
/// the same `T` (Rust's own shortest form exists only for f32 and f64).
fn shortest_for<T: Real>(v: T) -> String {
    let x = v.to_f64();
    for precision in 0..17 {
        let s = format!("{x:.precision$e}");
        if s.parse::<f64>().is_ok_and(|back| T::from_f64(back).to_f64() == x) {
            return s;
        }
    }
    format!("{x:e}")
}

/// An `f32` as numpy's `str` writes it.
pub(crate) fn format_f32(v: f32) -> String {
    numpy_style(v as f64, || format!("{v:e}"), 1e6)
}

/// An `f64` as numpy's `str` writes it.
pub(crate) fn format_f64(v: f64) -> String {
    numpy_style(v, || format!("{v:e}"), 1e16)
}

/// An `f16` as numpy's `str` writes it.
pub(crate) fn format_f16(v: half::f16) -> String {
    numpy_style(v.to_f64(), || shortest_for(v), 1e3)
}

/// A `bf16` with its own shortest digits and `f32`'s notation rule (numpy
/// has no bf16; its range is f32's).
pub(crate) fn format_bf16(v: half::bf16) -> String {
    numpy_style(v.to_f64(), || shortest_for(v), 1e6)
}

/// A float as written in a string tensor: decimal or scientific notation,
/// surrounding whitespace ignored, and `inf`, `+inf`, `-inf`, `infinity` and
/// `nan` in any letter case.
pub(crate) fn parse_float(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok()
}

/// An integer as written in a string tensor. A float literal is accepted and
/// truncated toward zero (the `Cast` spec allows "100.5" → 100).
pub(crate) fn parse_int(s: &str) -> Option<i128> {
    let t = s.trim();
    t.parse::<i128>().ok().or_else(|| parse_float(t).filter(|v| v.is_finite()).map(|v| v.trunc() as i128))
}

/// A boolean as written in a string tensor: `true`/`false` in any case, or a
/// number (non-zero is true).
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("true") {
        Some(true)
    } else if t.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        parse_float(t).map(|v| v != 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// Expected strings from numpy 2.4: `np.array(xs, dtype).astype(np.str_)`.
    #[test]
    fn floats_like_numpy() {
        let f32s = [
            (0.1f32, "0.1"),
            (1e20, "1e+20"),
            (1e15, "1e+15"),
            (123456789.0, "1.2345679e+08"),
            (1e-4, "1e-04"),
            (1e-5, "1e-05"),
            (-0.0, "-0.0"),
            (f32::INFINITY, "inf"),
            (f32::NEG_INFINITY, "-inf"),
            (f32::NAN, "nan"),
            (std::f32::consts::PI, "3.1415927"),
            (1.0, "1.0"),
            (100.0, "100.0"),
            (999999.0, "999999.0"),
            (1e6, "1e+06"),
            (0.000123, "0.000123"),
            (-1234.5, "-1234.5"),
            (1e-45, "1e-45"),
            (3.4e38, "3.4e+38"),
        ];
        for (v, want) in f32s {
            assert_eq!(format_f32(v), want, "{v:e}");
        }
        let f64s = [
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (9.99e15, "9990000000000000.0"),
            (1e-4, "0.0001"),
            (9.9e-5, "9.9e-05"),
            (1e300, "1e+300"),
            (5e-324, "5e-324"),
            (0.1f32 as f64, "0.10000000149011612"),
        ];
        for (v, want) in f64s {
            assert_eq!(format_f64(v), want, "{v:e}");
        }
        let f16s = [
            (999.0, "999.0"),
            (1000.0, "1e+03"),
            (1024.0, "1.024e+03"),
            (65504.0, "6.55e+04"),
            (0.0001, "0.0001"),
            (0.00011, "0.00011"),
            (6e-5, "6e-05"),
            (6e-8, "6e-08"),
            (-3.25, "-3.25"),
            (0.1, "0.1"),
            (1.23456, "1.234"),
        ];
        for (v, want) in f16s {
            assert_eq!(format_f16(f16::from_f64(v)), want, "{v:e}");
        }
        assert_eq!(format_bf16(bf16::from_f32(0.1)), "0.1");
        assert_eq!(format_bf16(bf16::from_f32(3.0)), "3.0");
    }

    #[test]
    fn parsing() {
        assert_eq!(parse_float("1e-5"), Some(1e-5));
        assert_eq!(parse_float(" 3.5 "), Some(3.5));
        assert_eq!(parse_float("1E8"), Some(1e8));
        assert_eq!(parse_float("+INF"), Some(f64::INFINITY));
        assert_eq!(parse_float("INF"), Some(f64::INFINITY));
        assert_eq!(parse_float("-Inf"), Some(f64::NEG_INFINITY));
        assert!(parse_float("NaN").is_some_and(f64::is_nan));
        assert_eq!(parse_float("hello"), None);
        assert_eq!(parse_int("1000"), Some(1000));
        assert_eq!(parse_int("-7"), Some(-7));
        assert_eq!(parse_int("100.5"), Some(100));
        assert_eq!(parse_int("inf"), None);
        assert_eq!(parse_int("x1"), None);
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("2.5"), Some(true));
        assert_eq!(parse_bool("maybe"), None);
    }
}

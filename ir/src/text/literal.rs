//! Tensor elements in text: exact formatting and parsing for every dtype, and
//! the synthetic data [`super::parse`] gives to weights the text only declares.
//!
//! Every float is printed so that it parses back to the same bits: `f32` and
//! `f64` in Rust's shortest round-trip form, `f16` and `bf16` in the shortest
//! decimal that converts back to the same value, the narrow formats as the
//! exact value of their code. Infinities are `inf`/`-inf`, the canonical
//! quiet NaN of each type is `nan`/`-nan`, and any other bit pattern (a NaN
//! payload, an out-of-range narrow code) is written `bits(0x…)`.

use crate::{DType, Tensor, TensorData};
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use std::collections::HashMap;

/// The most bytes a literal or a synthetic weight may expand to. Text is
/// untrusted input: a `splat` or a declared weight shape must not be able to
/// exhaust memory.
pub(crate) const MAX_DATA_BYTES: u64 = 1 << 30;

/// One element as written, before its dtype gives it meaning.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Elem {
    /// A decimal number, as written.
    Num(String),
    /// `inf` or `-inf`.
    Inf { neg: bool },
    /// `nan` or `-nan`.
    Nan { neg: bool },
    /// `bits(0x…)`: a raw bit pattern (hex digits).
    Bits(String),
    /// `true` or `false`.
    Bool(bool),
    /// A string.
    Str(String),
    /// `(re, im)`.
    Complex(Box<Elem>, Box<Elem>),
}

impl Elem {
    fn describe(&self) -> String {
        match self {
            Elem::Num(s) => s.clone(),
            Elem::Inf { neg } => if *neg { "-inf" } else { "inf" }.to_string(),
            Elem::Nan { neg } => if *neg { "-nan" } else { "nan" }.to_string(),
            Elem::Bits(h) => format!("bits(0x{h})"),
            Elem::Bool(b) => b.to_string(),
            Elem::Str(_) => "a string".to_string(),
            Elem::Complex(..) => "a complex pair".to_string(),
        }
    }
}

// ----- formatting -----

fn bits_text(bits: u64, hex_digits: usize) -> String {
    format!("bits(0x{bits:0hex_digits$x})")
}

/// An `f32` that parses back to the same bits.
pub(crate) fn fmt_f32(v: f32) -> String {
    if v.is_nan() {
        return match v.to_bits() {
            0x7fc0_0000 => "nan".to_string(),
            0xffc0_0000 => "-nan".to_string(),
            b => bits_text(b as u64, 8),
        };
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    format!("{v:?}")
}

/// An `f64` that parses back to the same bits.
pub(crate) fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        return match v.to_bits() {
            0x7ff8_0000_0000_0000 => "nan".to_string(),
            0xfff8_0000_0000_0000 => "-nan".to_string(),
            b => bits_text(b, 16),
        };
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    format!("{v:?}")
}

/// The shortest decimal whose parse (through `f32`, as the parser reads
/// 16-bit floats) lands on the same 16-bit value. Prints `0.1` rather than
/// the `f32` expansion `0.099975586` of the nearest `f16`.
fn fmt_short16(x: f32, back: impl Fn(f32) -> u16, bits: u16) -> String {
    for digits in 0..9 {
        let s = format!("{x:.digits$e}");
        if let Ok(y) = s.parse::<f32>()
            && back(y) == bits
        {
            return format!("{y:?}");
        }
    }
    format!("{x:?}")
}

fn fmt_f16(v: f16) -> String {
    let b = v.to_bits();
    if v.is_nan() {
        return match b {
            0x7e00 => "nan".to_string(),
            0xfe00 => "-nan".to_string(),
            b => bits_text(b as u64, 4),
        };
    }
    if v.is_infinite() {
        return if b & 0x8000 == 0 { "inf" } else { "-inf" }.to_string();
    }
    fmt_short16(v.to_f32(), |y| f16::from_f32(y).to_bits(), b)
}

fn fmt_bf16(v: bf16) -> String {
    let b = v.to_bits();
    if v.is_nan() {
        return match b {
            0x7fc0 => "nan".to_string(),
            0xffc0 => "-nan".to_string(),
            b => bits_text(b as u64, 4),
        };
    }
    if v.is_infinite() {
        return if b & 0x8000 == 0 { "inf" } else { "-inf" }.to_string();
    }
    fmt_short16(v.to_f32(), |y| bf16::from_f32(y).to_bits(), b)
}

/// A string literal with the escapes the lexer understands.
pub(crate) fn quote_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ----- the narrow formats -----

/// What a narrow code means.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Narrow {
    Float(f32),
    Int(i64),
    /// A code with bits set above the format's width.
    Invalid,
}

fn minifloat(code: u8, ebits: u32, mbits: u32, bias: i32) -> f32 {
    let sign = (code >> (ebits + mbits)) & 1 == 1;
    let e = ((code >> mbits) & ((1 << ebits) - 1)) as i32;
    let m = (code & ((1 << mbits) - 1)) as f64;
    let scale = (1u32 << mbits) as f64;
    let mag = if e == 0 { m / scale * 2f64.powi(1 - bias) } else { (1.0 + m / scale) * 2f64.powi(e - bias) };
    (if sign { -mag } else { mag }) as f32
}

fn decode_narrow(dtype: DType, code: u8) -> Narrow {
    let bits = dtype.bit_width().unwrap_or(8) as u32;
    if bits < 8 && code >> bits != 0 {
        return Narrow::Invalid;
    }
    match dtype {
        DType::F8E4M3FN if code & 0x7f == 0x7f => Narrow::Float(f32::NAN),
        DType::F8E4M3FN => Narrow::Float(minifloat(code, 4, 3, 7)),
        DType::F8E4M3FNUZ if code == 0x80 => Narrow::Float(f32::NAN),
        DType::F8E4M3FNUZ => Narrow::Float(minifloat(code, 4, 3, 8)),
        DType::F8E5M2 if code & 0x7c == 0x7c => {
            let neg = code & 0x80 != 0;
            Narrow::Float(match (code & 0x03, neg) {
                (0, false) => f32::INFINITY,
                (0, true) => f32::NEG_INFINITY,
                _ => f32::NAN,
            })
        }
        DType::F8E5M2 => Narrow::Float(minifloat(code, 5, 2, 15)),
        DType::F8E5M2FNUZ if code == 0x80 => Narrow::Float(f32::NAN),
        DType::F8E5M2FNUZ => Narrow::Float(minifloat(code, 5, 2, 16)),
        DType::F8E8M0 if code == 0xff => Narrow::Float(f32::NAN),
        DType::F8E8M0 => Narrow::Float(2f64.powi(code as i32 - 127) as f32),
        DType::F4E2M1 => Narrow::Float(minifloat(code, 2, 1, 1)),
        DType::U4 | DType::U2 => Narrow::Int(code as i64),
        DType::I4 | DType::I2 => {
            let half = 1i64 << (bits - 1);
            let v = code as i64;
            Narrow::Int(if v >= half { v - 2 * half } else { v })
        }
        _ => Narrow::Invalid,
    }
}

/// The codes that `nan` and `-nan` stand for in each narrow float format.
fn narrow_nan(dtype: DType, neg: bool) -> Option<u8> {
    match (dtype, neg) {
        (DType::F8E4M3FN, false) => Some(0x7f),
        (DType::F8E4M3FN, true) => Some(0xff),
        (DType::F8E5M2, false) => Some(0x7e),
        (DType::F8E5M2, true) => Some(0xfe),
        (DType::F8E4M3FNUZ | DType::F8E5M2FNUZ, false) => Some(0x80),
        (DType::F8E8M0, false) => Some(0xff),
        _ => None,
    }
}

fn fmt_narrow(dtype: DType, code: u8) -> String {
    match decode_narrow(dtype, code) {
        Narrow::Float(v) if v.is_nan() => {
            if narrow_nan(dtype, false) == Some(code) {
                "nan".to_string()
            } else if narrow_nan(dtype, true) == Some(code) {
                "-nan".to_string()
            } else {
                bits_text(code as u64, 2)
            }
        }
        Narrow::Float(v) => fmt_f32(v),
        Narrow::Int(i) => i.to_string(),
        Narrow::Invalid => bits_text(code as u64, 2),
    }
}

/// Reads narrow elements: exact values only, so a typo never rounds silently.
struct NarrowCodec {
    dtype: DType,
    by_value: HashMap<u32, u8>,
}

impl NarrowCodec {
    fn new(dtype: DType) -> NarrowCodec {
        let n = 1u32 << dtype.bit_width().unwrap_or(8).min(8);
        let mut by_value = HashMap::new();
        for code in 0..n {
            if let Narrow::Float(v) = decode_narrow(dtype, code as u8)
                && !v.is_nan()
            {
                by_value.entry(v.to_bits()).or_insert(code as u8);
            }
        }
        NarrowCodec { dtype, by_value }
    }

    fn code(&self, e: &Elem) -> Result<u8, String> {
        let d = self.dtype;
        if let Elem::Bits(h) = e {
            return parse_bits(h, 8).map(|b| b as u8);
        }
        if matches!(d, DType::U4 | DType::I4 | DType::U2 | DType::I2) {
            let v = int_of(e)?;
            let bits = d.bit_width().unwrap_or(8) as u32;
            let (lo, hi) = if d.is_signed_integer() {
                (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
            } else {
                (0, (1i64 << bits) - 1)
            };
            if v < lo || v > hi {
                return Err(format!("{v} is out of range for {d} ({lo} to {hi})"));
            }
            return Ok((v & ((1 << bits) - 1)) as u8);
        }
        let v = match e {
            Elem::Nan { neg } => {
                return narrow_nan(d, *neg)
                    .ok_or_else(|| format!("{d} has no {}", if *neg { "negative NaN (write nan)" } else { "NaN" }));
            }
            Elem::Inf { neg } => {
                if *neg {
                    f32::NEG_INFINITY
                } else {
                    f32::INFINITY
                }
            }
            Elem::Num(s) => s.parse::<f32>().map_err(|_| format!("'{s}' is not a number"))?,
            other => return Err(format!("expected a number for {d}, found {}", other.describe())),
        };
        if let Some(&c) = self.by_value.get(&v.to_bits()) {
            return Ok(c);
        }
        if v == 0.0
            && let Some(&c) = self.by_value.get(&0)
        {
            // Formats without a negative zero read -0.0 as zero.
            return Ok(c);
        }
        if v.is_infinite() {
            return Err(format!("{d} has no infinity"));
        }
        let mut below = f32::NEG_INFINITY;
        let mut above = f32::INFINITY;
        for bits in self.by_value.keys() {
            let x = f32::from_bits(*bits);
            if x < v && x > below {
                below = x;
            }
            if x > v && x < above {
                above = x;
            }
        }
        let near: Vec<String> = [below, above].iter().filter(|x| x.is_finite()).map(|x| fmt_f32(*x)).collect();
        Err(format!(
            "{} is not exactly representable in {d} (nearest: {})",
            e.describe(),
            if near.is_empty() { "none".to_string() } else { near.join(" and ") }
        ))
    }
}

// ----- parsing elements -----

fn parse_bits(hex: &str, width_bytes: usize) -> Result<u64, String> {
    let v = u64::from_str_radix(hex, 16).map_err(|_| format!("bits(0x{hex}) does not fit in 64 bits"))?;
    if width_bytes < 8 && v >> (width_bytes * 8) != 0 {
        return Err(format!("bits(0x{hex}) does not fit in {} bits", width_bytes * 8));
    }
    Ok(v)
}

fn int_of(e: &Elem) -> Result<i64, String> {
    match e {
        Elem::Num(s) => s.parse::<i64>().map_err(|_| {
            if s.contains(['.', 'e', 'E']) {
                format!("expected an integer, found {s}")
            } else {
                format!("{s} does not fit in 64 bits")
            }
        }),
        other => Err(format!("expected an integer, found {}", other.describe())),
    }
}

fn float_of<F: std::str::FromStr>(
    e: &Elem,
    inf: F,
    neg_inf: F,
    nan: F,
    neg_nan: F,
    width_bytes: usize,
    from_bits: impl Fn(u64) -> F,
) -> Result<F, String> {
    match e {
        Elem::Num(s) => s.parse::<F>().map_err(|_| format!("'{s}' is not a number")),
        Elem::Inf { neg } => Ok(if *neg { neg_inf } else { inf }),
        Elem::Nan { neg } => Ok(if *neg { neg_nan } else { nan }),
        Elem::Bits(h) => parse_bits(h, width_bytes).map(from_bits),
        other => Err(format!("expected a number, found {}", other.describe())),
    }
}

fn f32_of(e: &Elem) -> Result<f32, String> {
    float_of(e, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, 4, |b| f32::from_bits(b as u32))
}

/// Reads an `f32` attribute value (the same rules as tensor elements).
pub(crate) fn attr_f32(e: &Elem) -> Result<f32, String> {
    f32_of(e)
}

fn f64_of(e: &Elem) -> Result<f64, String> {
    float_of(e, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, -f64::NAN, 8, f64::from_bits)
}

fn f16_of(e: &Elem) -> Result<f16, String> {
    match e {
        Elem::Bits(h) => parse_bits(h, 2).map(|b| f16::from_bits(b as u16)),
        Elem::Nan { neg } => Ok(f16::from_bits(if *neg { 0xfe00 } else { 0x7e00 })),
        _ => f32_of(e).map(f16::from_f32),
    }
}

fn bf16_of(e: &Elem) -> Result<bf16, String> {
    match e {
        Elem::Bits(h) => parse_bits(h, 2).map(|b| bf16::from_bits(b as u16)),
        Elem::Nan { neg } => Ok(bf16::from_bits(if *neg { 0xffc0 } else { 0x7fc0 })),
        _ => f32_of(e).map(bf16::from_f32),
    }
}

fn ranged<T: TryFrom<i64>>(e: &Elem, d: DType) -> Result<T, String> {
    let v = int_of(e)?;
    T::try_from(v).map_err(|_| format!("{v} is out of range for {d}"))
}

fn u64_of(e: &Elem) -> Result<u64, String> {
    match e {
        Elem::Num(s) if !s.starts_with('-') && !s.contains(['.', 'e', 'E']) => {
            s.parse::<u64>().map_err(|_| format!("{s} is out of range for u64"))
        }
        _ => ranged(e, DType::U64),
    }
}

fn bool_of(e: &Elem) -> Result<bool, String> {
    match e {
        Elem::Bool(b) => Ok(*b),
        Elem::Num(s) if s == "0" => Ok(false),
        Elem::Num(s) if s == "1" => Ok(true),
        other => Err(format!("expected true or false, found {}", other.describe())),
    }
}

fn complex_of<F: Copy + Default>(e: &Elem, part: impl Fn(&Elem) -> Result<F, String>) -> Result<[F; 2], String> {
    match e {
        Elem::Complex(re, im) => Ok([part(re)?, part(im)?]),
        // A real number is a complex number with a zero imaginary part.
        other => Ok([part(other)?, F::default()]),
    }
}

/// Estimated bytes for `n` elements of `dtype` in memory.
pub(crate) fn data_bytes(dtype: DType, n: u64) -> u64 {
    let per = match dtype {
        DType::String => 24,
        d if d.is_narrow() => 1,
        d => d.bit_width().map_or(1, |b| b.div_ceil(8)) as u64,
    };
    n.saturating_mul(per)
}

/// Builds a tensor from elements in row-major order. Errors carry the index
/// of the offending element.
pub(crate) fn build_tensor(dtype: DType, shape: &[usize], elems: &[Elem]) -> Result<Tensor, (usize, String)> {
    fn collect<T>(elems: &[Elem], f: impl Fn(&Elem) -> Result<T, String>) -> Result<Vec<T>, (usize, String)> {
        elems.iter().enumerate().map(|(i, e)| f(e).map_err(|m| (i, m))).collect()
    }
    fn make<T: crate::Element>(shape: &[usize], v: Vec<T>) -> Result<Tensor, (usize, String)> {
        Tensor::try_from_vec(shape, v).ok_or((0, "the number of elements does not match the shape".to_string()))
    }
    let d = dtype;
    match dtype {
        DType::F32 => make(shape, collect(elems, f32_of)?),
        DType::F64 => make(shape, collect(elems, f64_of)?),
        DType::F16 => make(shape, collect(elems, f16_of)?),
        DType::BF16 => make(shape, collect(elems, bf16_of)?),
        DType::I8 => make(shape, collect(elems, |e| ranged::<i8>(e, d))?),
        DType::I16 => make(shape, collect(elems, |e| ranged::<i16>(e, d))?),
        DType::I32 => make(shape, collect(elems, |e| ranged::<i32>(e, d))?),
        DType::I64 => make(shape, collect(elems, int_of)?),
        DType::U8 => make(shape, collect(elems, |e| ranged::<u8>(e, d))?),
        DType::U16 => make(shape, collect(elems, |e| ranged::<u16>(e, d))?),
        DType::U32 => make(shape, collect(elems, |e| ranged::<u32>(e, d))?),
        DType::U64 => make(shape, collect(elems, u64_of)?),
        DType::Bool => make(shape, collect(elems, bool_of)?),
        DType::String => make(
            shape,
            collect(elems, |e| match e {
                Elem::Str(s) => Ok(s.clone()),
                other => Err(format!("expected a string, found {}", other.describe())),
            })?,
        ),
        DType::Complex64 => {
            let v = collect(elems, |e| complex_of(e, f32_of))?;
            ArrayD::from_shape_vec(IxDyn(shape), v)
                .map(|a| Tensor::new(TensorData::Complex64(a.into_shared())))
                .map_err(|_| (0, "the number of elements does not match the shape".to_string()))
        }
        DType::Complex128 => {
            let v = collect(elems, |e| complex_of(e, f64_of))?;
            ArrayD::from_shape_vec(IxDyn(shape), v)
                .map(|a| Tensor::new(TensorData::Complex128(a.into_shared())))
                .map_err(|_| (0, "the number of elements does not match the shape".to_string()))
        }
        _ => {
            let codec = NarrowCodec::new(dtype);
            let codes = collect(elems, |e| codec.code(e))?;
            Tensor::from_codes(dtype, shape, codes)
                .ok_or((0, "the number of elements does not match the shape".to_string()))
        }
    }
}

/// Every element of a tensor, formatted, in row-major order.
pub(crate) fn format_elements(t: &Tensor) -> Vec<String> {
    fn all<T>(a: &crate::Array<T>, f: impl Fn(&T) -> String) -> Vec<String> {
        a.iter().map(f).collect()
    }
    match t.data() {
        TensorData::F32(a) => all(a, |v| fmt_f32(*v)),
        TensorData::F64(a) => all(a, |v| fmt_f64(*v)),
        TensorData::F16(a) => all(a, |v| fmt_f16(*v)),
        TensorData::BF16(a) => all(a, |v| fmt_bf16(*v)),
        TensorData::I8(a) => all(a, |v| v.to_string()),
        TensorData::I16(a) => all(a, |v| v.to_string()),
        TensorData::I32(a) => all(a, |v| v.to_string()),
        TensorData::I64(a) => all(a, |v| v.to_string()),
        TensorData::U8(a) => all(a, |v| v.to_string()),
        TensorData::U16(a) => all(a, |v| v.to_string()),
        TensorData::U32(a) => all(a, |v| v.to_string()),
        TensorData::U64(a) => all(a, |v| v.to_string()),
        TensorData::Bool(a) => all(a, |v| v.to_string()),
        TensorData::String(a) => all(a, |v| quote_str(v)),
        TensorData::Complex64(a) => all(a, |[r, i]| format!("({}, {})", fmt_f32(*r), fmt_f32(*i))),
        TensorData::Complex128(a) => all(a, |[r, i]| format!("({}, {})", fmt_f64(*r), fmt_f64(*i))),
        TensorData::Narrow { dtype, codes } => all(codes, |c| fmt_narrow(*dtype, *c)),
    }
}

// ----- synthetic data -----

/// SplitMix64: tiny, fast, and the same on every platform.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1) with 24 bits of randomness.
    fn unit_f32(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u32 << 24) as f32) * 2.0 - 1.0
    }

    /// Uniform in [-1, 1) with 53 bits of randomness.
    fn unit_f64(&mut self) -> f64 {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// Uniform in [-8, 8).
    fn small_int(&mut self) -> i64 {
        (self.next() % 16) as i64 - 8
    }
}

/// FNV-1a, 64 bits: the seed for a weight's synthetic data.
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Deterministic stand-in data for a weight the text declares without data.
/// See the module docs of [`super`] for the exact rule.
pub(crate) fn synthetic(name: &str, dtype: DType, shape: &[usize]) -> Result<Tensor, String> {
    let n = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64)).unwrap_or(u64::MAX);
    if data_bytes(dtype, n) > MAX_DATA_BYTES {
        return Err(format!(
            "weight @{name} would need {} bytes of synthetic data (the limit is {MAX_DATA_BYTES}); \
             use parse_with_weights to supply real data",
            data_bytes(dtype, n)
        ));
    }
    let n = n as usize;
    let mut r = SplitMix64(fnv1a(name));
    let s = IxDyn(shape);
    let shaped = |data: TensorData| Ok(Tensor::new(data));
    fn arr<T: Clone>(s: IxDyn, v: Vec<T>) -> crate::Array<T> {
        ArrayD::from_shape_vec(s, v).expect("n is the product of the shape").into_shared()
    }
    match dtype {
        DType::F32 => shaped(TensorData::F32(arr(s, (0..n).map(|_| r.unit_f32()).collect()))),
        DType::F64 => shaped(TensorData::F64(arr(s, (0..n).map(|_| r.unit_f64()).collect()))),
        DType::F16 => shaped(TensorData::F16(arr(s, (0..n).map(|_| f16::from_f32(r.unit_f32())).collect()))),
        DType::BF16 => shaped(TensorData::BF16(arr(s, (0..n).map(|_| bf16::from_f32(r.unit_f32())).collect()))),
        DType::I8 => shaped(TensorData::I8(arr(s, (0..n).map(|_| r.small_int() as i8).collect()))),
        DType::I16 => shaped(TensorData::I16(arr(s, (0..n).map(|_| r.small_int() as i16).collect()))),
        DType::I32 => shaped(TensorData::I32(arr(s, (0..n).map(|_| r.small_int() as i32).collect()))),
        DType::I64 => shaped(TensorData::I64(arr(s, (0..n).map(|_| r.small_int()).collect()))),
        DType::U8 => shaped(TensorData::U8(arr(s, (0..n).map(|_| (r.small_int() + 8) as u8).collect()))),
        DType::U16 => shaped(TensorData::U16(arr(s, (0..n).map(|_| (r.small_int() + 8) as u16).collect()))),
        DType::U32 => shaped(TensorData::U32(arr(s, (0..n).map(|_| (r.small_int() + 8) as u32).collect()))),
        DType::U64 => shaped(TensorData::U64(arr(s, (0..n).map(|_| (r.small_int() + 8) as u64).collect()))),
        DType::Bool => shaped(TensorData::Bool(arr(s, (0..n).map(|_| r.next() & 1 == 1).collect()))),
        DType::String => shaped(TensorData::String(arr(s, (0..n).map(|i| format!("{name}#{i}")).collect()))),
        DType::Complex64 => {
            shaped(TensorData::Complex64(arr(s, (0..n).map(|_| [r.unit_f32(), r.unit_f32()]).collect())))
        }
        DType::Complex128 => {
            shaped(TensorData::Complex128(arr(s, (0..n).map(|_| [r.unit_f64(), r.unit_f64()]).collect())))
        }
        _ => {
            let bits = dtype.bit_width().unwrap_or(8).min(8) as u32;
            let mask = ((1u32 << bits) - 1) as u64;
            let codes = (0..n)
                .map(|_| {
                    let c = (r.next() & mask) as u8;
                    // Keep synthetic narrow floats finite: NaN and infinity codes become zero.
                    match decode_narrow(dtype, c) {
                        Narrow::Float(v) if !v.is_finite() => 0,
                        _ => c,
                    }
                })
                .collect();
            shaped(TensorData::Narrow { dtype, codes: arr(s, codes) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_tables_match_known_values() {
        // Reference values from the OCP FP8 spec and ONNX's float8 docs.
        assert_eq!(decode_narrow(DType::F8E4M3FN, 0x7e), Narrow::Float(448.0));
        assert_eq!(decode_narrow(DType::F8E4M3FN, 0x01), Narrow::Float(2f32.powi(-9)));
        assert!(matches!(decode_narrow(DType::F8E4M3FN, 0xff), Narrow::Float(v) if v.is_nan()));
        assert_eq!(decode_narrow(DType::F8E4M3FNUZ, 0x7f), Narrow::Float(240.0));
        assert_eq!(decode_narrow(DType::F8E5M2, 0x7b), Narrow::Float(57344.0));
        assert_eq!(decode_narrow(DType::F8E5M2, 0xfc), Narrow::Float(f32::NEG_INFINITY));
        assert_eq!(decode_narrow(DType::F8E5M2FNUZ, 0x7f), Narrow::Float(57344.0));
        assert_eq!(decode_narrow(DType::F8E5M2FNUZ, 0x01), Narrow::Float(2f32.powi(-17)));
        assert_eq!(decode_narrow(DType::F8E8M0, 127), Narrow::Float(1.0));
        assert_eq!(decode_narrow(DType::F8E8M0, 0), Narrow::Float(2f32.powi(-127)));
        let fp4: Vec<f32> = (0..16)
            .map(|c| match decode_narrow(DType::F4E2M1, c) {
                Narrow::Float(v) => v,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(fp4[..8], [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]);
        assert_eq!(fp4[15], -6.0);
        assert_eq!(decode_narrow(DType::I4, 0xf), Narrow::Int(-1));
        assert_eq!(decode_narrow(DType::I2, 0x2), Narrow::Int(-2));
        assert_eq!(decode_narrow(DType::U4, 0x1f), Narrow::Invalid);
    }

    #[test]
    fn every_narrow_code_round_trips() {
        for d in crate::dtype::ALL_DTYPES.into_iter().filter(|d| d.is_narrow()) {
            let codec = NarrowCodec::new(d);
            for code in 0..=255u8 {
                let text = fmt_narrow(d, code);
                let e = elem_of(&text);
                assert_eq!(codec.code(&e), Ok(code), "{d} code {code:#x} printed as {text}");
            }
        }
    }

    #[test]
    fn sixteen_bit_floats_print_short_and_exact() {
        assert_eq!(fmt_f16(f16::from_f32(0.1)), "0.1");
        assert_eq!(fmt_bf16(bf16::from_f32(0.1)), "0.1");
        assert_eq!(fmt_f16(f16::from_bits(0x8000)), "-0.0");
        for bits in 0..=u16::MAX {
            for (text, back) in [
                (fmt_f16(f16::from_bits(bits)), f16_of(&elem_of(&fmt_f16(f16::from_bits(bits)))).map(|v| v.to_bits())),
                (
                    fmt_bf16(bf16::from_bits(bits)),
                    bf16_of(&elem_of(&fmt_bf16(bf16::from_bits(bits)))).map(|v| v.to_bits()),
                ),
            ] {
                assert_eq!(back, Ok(bits), "{bits:#06x} printed as {text}");
            }
        }
    }

    #[test]
    fn inexact_narrow_values_are_rejected() {
        let e = NarrowCodec::new(DType::F8E4M3FN).code(&Elem::Num("0.3".into())).unwrap_err();
        assert!(e.contains("nearest: 0.28125 and 0.3125"), "{e}");
        let e = NarrowCodec::new(DType::I4).code(&Elem::Num("8".into())).unwrap_err();
        assert!(e.contains("-8 to 7"), "{e}");
        let e = NarrowCodec::new(DType::F4E2M1).code(&Elem::Nan { neg: false }).unwrap_err();
        assert!(e.contains("no NaN"), "{e}");
    }

    #[test]
    fn synthetic_data_is_deterministic_and_bounded() {
        let a = synthetic("fc.weight", DType::F32, &[4, 3]).unwrap();
        assert_eq!(a, synthetic("fc.weight", DType::F32, &[4, 3]).unwrap());
        assert_ne!(a, synthetic("fc.bias", DType::F32, &[4, 3]).unwrap());
        assert!(a.as_array::<f32>().unwrap().iter().all(|v| (-1.0..1.0).contains(v)));
        // The first value follows from the documented rule.
        let mut r = SplitMix64(fnv1a("fc.weight"));
        assert_eq!(a.as_array::<f32>().unwrap().iter().next(), Some(&r.unit_f32()));
        assert!(synthetic("huge", DType::F32, &[1 << 20, 1 << 20]).unwrap_err().contains("limit"));
        for d in crate::dtype::ALL_DTYPES {
            let t = synthetic("w", d, &[3, 2]).unwrap();
            assert_eq!((t.dtype(), t.shape()), (d, &[3usize, 2][..]));
        }
    }

    /// The element a printed token reads back as (what the parser builds).
    fn elem_of(text: &str) -> Elem {
        match text {
            "nan" => Elem::Nan { neg: false },
            "-nan" => Elem::Nan { neg: true },
            "inf" => Elem::Inf { neg: false },
            "-inf" => Elem::Inf { neg: true },
            t if t.starts_with("bits(0x") => Elem::Bits(t[7..t.len() - 1].to_string()),
            t => Elem::Num(t.to_string()),
        }
    }
}

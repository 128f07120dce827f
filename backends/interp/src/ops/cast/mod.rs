//! Type conversion: `Cast`, `CastLike` and `BitCast`.
//!
//! Every value goes through one of three exact intermediate forms: an `f64`
//! for floats (every float type is exact in it), an `i128` for integers, or
//! a bool. The target then rounds once: floats to nearest-even (with the
//! `saturate` rules for float8), integers by truncating toward zero and
//! keeping the low bits (two's complement wrap, as the `Cast` spec says for
//! out-of-range fixed-point values). Strings are parsed and written as ONNX's
//! reference (numpy) does; see [`text`].

pub mod narrow;
mod text;

use super::elementwise::num::{Int, Real, match_int, match_real};
use super::{OpContext, OpResult};
use crate::util::{single, tensor_arg};
use half::{bf16, f16};
use sharc_ir::op::RoundMode;
use sharc_ir::{DType, Element, EvalError, Op, Tensor, TensorData, Value};

/// Runs the op if it belongs to this family.
pub fn run(op: &Op, inputs: &[Option<Value>], _cx: &OpContext) -> OpResult {
    let result = match op {
        Op::Cast(c) => tensor_arg(inputs, 0, "input").and_then(|x| cast(x, c.to, c.saturate, c.round_mode)),
        Op::CastLike(c) => tensor_arg(inputs, 0, "input").and_then(|x| {
            let like = tensor_arg(inputs, 1, "target_type")?;
            cast(x, like.dtype(), c.saturate, c.round_mode)
        }),
        Op::BitCast(b) => tensor_arg(inputs, 0, "input").and_then(|x| bitcast(x, b.to)),
        _ => return None,
    };
    Some(result.and_then(single))
}

/// One element in its exact intermediate form.
#[derive(Clone, Copy, Debug)]
enum Num {
    F(f64),
    I(i128),
    B(bool),
}

impl Num {
    fn f64(self) -> f64 {
        match self {
            Num::F(v) => v,
            Num::I(v) => v as f64,
            Num::B(b) => b as u8 as f64,
        }
    }

    /// Truncated toward zero; NaN gives 0 and ±inf saturate (both are
    /// undefined in ONNX).
    fn int(self) -> i128 {
        match self {
            Num::F(v) if v.is_nan() => 0,
            Num::F(v) => v.trunc() as i128,
            Num::I(v) => v,
            Num::B(b) => b as i128,
        }
    }

    fn bool(self) -> bool {
        match self {
            Num::F(v) => v != 0.0,
            Num::I(v) => v != 0,
            Num::B(b) => b,
        }
    }

    fn real<T: Real>(self) -> T {
        T::from_f64(self.f64())
    }

    fn wrap<T: Int>(self) -> T {
        T::from_i128_wrapping(self.int())
    }
}

type Nums<'a> = Box<dyn Iterator<Item = Num> + 'a>;

fn boxed<'a>(it: impl Iterator<Item = Num> + 'a) -> Nums<'a> {
    Box::new(it)
}

/// Converts a tensor to another element type with ONNX `Cast` semantics.
/// `saturate` applies to the float8 targets and `round_mode` to `f8e8m0`
/// (see [`narrow::encode_f64`]). Strings convert to and from their decimal
/// form.
pub fn cast(x: &Tensor, to: DType, saturate: bool, round_mode: RoundMode) -> Result<Tensor, EvalError> {
    if x.dtype() == to {
        return Ok(x.clone());
    }
    if matches!(to, DType::Complex64 | DType::Complex128) || matches!(x.dtype(), DType::Complex64 | DType::Complex128) {
        return Err(EvalError::new(format!("Cast does not convert between {} and {to}", x.dtype())));
    }
    if to == DType::String {
        return collect(x.shape(), to_strings(x)?.into_iter());
    }
    let parsed;
    let nums: Nums = match x.data() {
        TensorData::String(a) => {
            parsed = a.iter().map(|s| parse_string(s, to)).collect::<Result<Vec<Num>, EvalError>>()?;
            boxed(parsed.iter().copied())
        }
        TensorData::Bool(a) => boxed(a.iter().map(|&b| Num::B(b))),
        TensorData::Narrow { dtype, codes } => {
            let d = *dtype;
            if d.is_float() {
                boxed(codes.iter().map(move |&c| Num::F(narrow::decode(d, c) as f64)))
            } else {
                boxed(codes.iter().map(move |&c| Num::I(narrow::decode_int(d, c) as i128)))
            }
        }
        data => match_real!(data, a => boxed(a.iter().map(|v| Num::F(v.to_f64()))),
            _ => match_int!(data, a => boxed(a.iter().map(|v| Num::I(v.to_i128()))),
                _ => return Err(EvalError::unsupported(format!("Cast from {} is not implemented", x.dtype()))))),
    };
    build(to, x.shape(), nums, saturate, round_mode)
}

fn collect<T: Element>(shape: &[usize], values: impl Iterator<Item = T>) -> Result<Tensor, EvalError> {
    Tensor::try_from_vec(shape, values.collect())
        .ok_or_else(|| EvalError::new(format!("element count does not match shape {shape:?}")))
}

fn build(to: DType, shape: &[usize], nums: Nums, saturate: bool, round_mode: RoundMode) -> Result<Tensor, EvalError> {
    match to {
        // Integers convert to f32 directly: through f64 they could round twice.
        DType::F32 => collect(shape, nums.map(|n| if let Num::I(v) = n { v as f32 } else { n.f64() as f32 })),
        DType::F64 => collect(shape, nums.map(Num::f64)),
        DType::F16 => collect(shape, nums.map(Num::real::<f16>)),
        DType::BF16 => collect(shape, nums.map(Num::real::<bf16>)),
        DType::I8 => collect(shape, nums.map(Num::wrap::<i8>)),
        DType::I16 => collect(shape, nums.map(Num::wrap::<i16>)),
        DType::I32 => collect(shape, nums.map(Num::wrap::<i32>)),
        DType::I64 => collect(shape, nums.map(Num::wrap::<i64>)),
        DType::U8 => collect(shape, nums.map(Num::wrap::<u8>)),
        DType::U16 => collect(shape, nums.map(Num::wrap::<u16>)),
        DType::U32 => collect(shape, nums.map(Num::wrap::<u32>)),
        DType::U64 => collect(shape, nums.map(Num::wrap::<u64>)),
        DType::Bool => collect(shape, nums.map(Num::bool)),
        d if d.is_narrow() => {
            let codes: Vec<u8> = if d.is_float() {
                nums.map(|n| narrow::encode_f64(d, n.f64(), saturate, round_mode)).collect()
            } else {
                nums.map(|n| narrow::encode_int(d, n.int())).collect()
            };
            Tensor::from_codes(d, shape, codes)
                .ok_or_else(|| EvalError::new(format!("element count does not match shape {shape:?}")))
        }
        d => Err(EvalError::unsupported(format!("Cast to {d} is not implemented"))),
    }
}

/// Reads one string element as a value of the target type's kind.
fn parse_string(s: &str, to: DType) -> Result<Num, EvalError> {
    let parsed = if to == DType::Bool {
        text::parse_bool(s).map(Num::B)
    } else if to.is_integer() {
        text::parse_int(s).map(Num::I)
    } else {
        text::parse_float(s).map(Num::F)
    };
    parsed.ok_or_else(|| EvalError::new(format!("cannot read the string {s:?} as {to}")))
}

/// Every element's decimal form, as numpy writes it.
fn to_strings(x: &Tensor) -> Result<Vec<String>, EvalError> {
    Ok(match x.data() {
        TensorData::F32(a) => a.iter().map(|&v| text::format_f32(v)).collect(),
        TensorData::F64(a) => a.iter().map(|&v| text::format_f64(v)).collect(),
        TensorData::F16(a) => a.iter().map(|&v| text::format_f16(v)).collect(),
        TensorData::BF16(a) => a.iter().map(|&v| text::format_bf16(v)).collect(),
        TensorData::Bool(a) => a.iter().map(|&b| if b { "True" } else { "False" }.to_string()).collect(),
        TensorData::String(a) => a.iter().cloned().collect(),
        // A narrow float's value is exact in f32, and printed as one.
        TensorData::Narrow { dtype, codes } if dtype.is_float() => {
            codes.iter().map(|&c| text::format_f32(narrow::decode(*dtype, c))).collect()
        }
        TensorData::Narrow { dtype, codes } => {
            codes.iter().map(|&c| narrow::decode_int(*dtype, c).to_string()).collect()
        }
        data => match_int!(data, a => a.iter().map(|v| v.to_string()).collect(),
            _ => return Err(EvalError::unsupported(format!("Cast from {} to string is not implemented", x.dtype())))),
    })
}

/// `BitCast`: the same little-endian bits read as another type of the same
/// width (sub-byte types pack as ONNX stores them).
pub fn bitcast(x: &Tensor, to: DType) -> Result<Tensor, EvalError> {
    if x.dtype() == DType::String || to == DType::String {
        return Err(EvalError::new(format!("BitCast does not accept strings ({} to {to})", x.dtype())));
    }
    let (from_bits, to_bits) = (x.dtype().bit_width(), to.bit_width());
    if from_bits != to_bits {
        return Err(EvalError::new(format!(
            "BitCast needs types of one width, but {} has {} bits and {to} has {}",
            x.dtype(),
            from_bits.unwrap_or(0),
            to_bits.unwrap_or(0)
        )));
    }
    let bytes = x.to_le_bytes().ok_or_else(|| EvalError::new(format!("{} tensors have no bytes", x.dtype())))?;
    Tensor::from_le_bytes(to, x.shape(), &bytes).map_err(EvalError::new)
}

#[cfg(test)]
mod tests;

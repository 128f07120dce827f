//! Helpers shared by the `extra` ops: reading float tensors as `f64`,
//! writing results back in the caller's float type, and rounding
//! intermediates the way a lower-precision reference would.
//!
//! The ops here compute in `f64` so that the interpreter stays the most
//! accurate implementation in the project; where ONNX defines an op as a
//! composition whose intermediate values live in the input type (Attention,
//! SwiGLU), [`round_to`] reproduces that rounding so half-precision results
//! match the specification rather than an idealised exact result.

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use sharc_ir::{DType, Element, EvalError, Tensor, TensorData, Value};

/// A float tensor widened to `f64`, in row-major order.
#[derive(Clone, Debug)]
pub(crate) struct Floats {
    /// The element type the values came from.
    pub dtype: DType,
    /// The shape.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<f64>,
}

impl Floats {
    /// Reads a tensor of a real float type (f16, bf16, f32, f64).
    pub fn read(t: &Tensor, what: &str) -> Result<Floats, EvalError> {
        let data: Vec<f64> = match t.data() {
            TensorData::F32(a) => a.iter().map(|&v| v as f64).collect(),
            TensorData::F64(a) => a.iter().copied().collect(),
            TensorData::F16(a) => a.iter().map(|v| v.to_f64()).collect(),
            TensorData::BF16(a) => a.iter().map(|v| v.to_f64()).collect(),
            _ => {
                return Err(EvalError::new(format!("{what} must be a float tensor, got {}", t.dtype())));
            }
        };
        Ok(Floats { dtype: t.dtype(), shape: t.shape().to_vec(), data })
    }

    /// Reads any real-valued numeric tensor (floats, integers, bools), for
    /// inputs that ONNX allows in several types.
    pub fn read_numeric(t: &Tensor, what: &str) -> Result<Floats, EvalError> {
        let data = t
            .to_f64_vec()
            .ok_or_else(|| EvalError::new(format!("{what} must be a numeric tensor, got {}", t.dtype())))?;
        Ok(Floats { dtype: t.dtype(), shape: t.shape().to_vec(), data })
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

/// True for the float types the `extra` ops compute on.
pub(crate) fn is_real_float(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
}

/// Builds a float tensor of `dtype` from `f64` values (rounding to nearest).
pub(crate) fn float_tensor(dtype: DType, shape: &[usize], data: Vec<f64>) -> Result<Tensor, EvalError> {
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(EvalError::new(format!(
            "internal error: {} values for shape {shape:?} ({n} elements)",
            data.len()
        )));
    }
    let s = IxDyn(shape);
    fn arr<T: Clone>(s: IxDyn, v: Vec<T>) -> ndarray::ArcArray<T, IxDyn> {
        ArrayD::from_shape_vec(s, v).expect("sizes were checked").into_shared()
    }
    let data = match dtype {
        DType::F32 => TensorData::F32(arr(s, data.into_iter().map(|v| v as f32).collect())),
        DType::F64 => TensorData::F64(arr(s, data)),
        DType::F16 => TensorData::F16(arr(s, data.into_iter().map(f16::from_f64).collect())),
        DType::BF16 => TensorData::BF16(arr(s, data.into_iter().map(bf16::from_f64).collect())),
        other => {
            return Err(EvalError::new(format!("expected a float output type, got {other}")));
        }
    };
    Ok(Tensor::new(data))
}

/// Builds an integer or bool tensor of `dtype` from `i64` values, failing if
/// `dtype` is not an integer type.
pub(crate) fn int_tensor(dtype: DType, shape: &[usize], data: Vec<i64>) -> Result<Tensor, EvalError> {
    let t = match dtype {
        DType::I64 => Tensor::try_from_vec(shape, data),
        DType::I32 => Tensor::try_from_vec(shape, data.into_iter().map(|v| v as i32).collect()),
        DType::I16 => Tensor::try_from_vec(shape, data.into_iter().map(|v| v as i16).collect()),
        DType::I8 => Tensor::try_from_vec(shape, data.into_iter().map(|v| v as i8).collect()),
        DType::U64 => Tensor::try_from_vec(shape, data.into_iter().map(|v| v as u64).collect()),
        DType::U32 => Tensor::try_from_vec(shape, data.into_iter().map(|v| v as u32).collect()),
        DType::U16 => Tensor::try_from_vec(shape, data.into_iter().map(|v| v as u16).collect()),
        DType::U8 => Tensor::try_from_vec(shape, data.into_iter().map(|v| v as u8).collect()),
        DType::Bool => Tensor::try_from_vec(shape, data.into_iter().map(|v| v != 0).collect()),
        other => return Err(EvalError::new(format!("expected an integer output type, got {other}"))),
    };
    t.ok_or_else(|| EvalError::new(format!("internal error: value count does not match shape {shape:?}")))
}

/// Builds a tensor of any real numeric `dtype` from `f64` values: floats round
/// to nearest, integers truncate toward zero (as a C cast does).
pub(crate) fn numeric_tensor(dtype: DType, shape: &[usize], data: Vec<f64>) -> Result<Tensor, EvalError> {
    if is_real_float(dtype) {
        float_tensor(dtype, shape, data)
    } else {
        int_tensor(dtype, shape, data.into_iter().map(|v| v as i64).collect())
    }
}

/// Rounds `x` to the nearest value representable in `dtype` (identity for
/// f64 and for non-float types).
pub(crate) fn round_to(dtype: DType, x: f64) -> f64 {
    match dtype {
        DType::F32 => x as f32 as f64,
        DType::F16 => f16::from_f64(x).to_f64(),
        DType::BF16 => bf16::from_f64(x).to_f64(),
        _ => x,
    }
}

/// Rounds every element of `v` to `dtype` (see [`round_to`]).
pub(crate) fn round_all(dtype: DType, v: &mut [f64]) {
    if dtype != DType::F64 {
        for x in v {
            *x = round_to(dtype, *x);
        }
    }
}

/// Sums values the way a reduction in `dtype` does in the ONNX reference
/// (numpy): bf16 adds one element at a time, rounding after each addition;
/// the other float types accumulate in at least f32, so the exact sum
/// rounded once is within their precision.
pub(crate) fn sum_in(dtype: DType, v: impl IntoIterator<Item = f64>) -> f64 {
    if dtype == DType::BF16 {
        v.into_iter().fold(0.0, |acc, x| round_to(dtype, acc + x))
    } else {
        round_to(dtype, v.into_iter().sum())
    }
}

/// A tensor of `shape` whose element `k` is element `picks[k].1` (in
/// row-major order) of `sources[picks[k].0]`. All sources must share one
/// element type; this is how ops that select or look up elements of any
/// type (strings included) build their output.
pub(crate) fn pick(sources: &[&Tensor], picks: &[(usize, usize)], shape: &[usize]) -> Result<Tensor, EvalError> {
    fn typed<T: Element>(sources: &[&Tensor], picks: &[(usize, usize)], shape: &[usize]) -> Option<Tensor> {
        let arrays: Vec<Vec<&T>> =
            sources.iter().map(|t| t.as_array::<T>().map(|a| a.iter().collect())).collect::<Option<_>>()?;
        let v: Vec<T> =
            picks.iter().map(|&(s, i)| arrays.get(s)?.get(i).map(|x| (*x).clone())).collect::<Option<_>>()?;
        Tensor::try_from_vec(shape, v)
    }
    let dtype = match sources.first() {
        Some(t) => t.dtype(),
        None => return Err(EvalError::new("internal error: nothing to pick from")),
    };
    let t = match dtype {
        DType::F32 => typed::<f32>(sources, picks, shape),
        DType::F64 => typed::<f64>(sources, picks, shape),
        DType::F16 => typed::<f16>(sources, picks, shape),
        DType::BF16 => typed::<bf16>(sources, picks, shape),
        DType::I8 => typed::<i8>(sources, picks, shape),
        DType::I16 => typed::<i16>(sources, picks, shape),
        DType::I32 => typed::<i32>(sources, picks, shape),
        DType::I64 => typed::<i64>(sources, picks, shape),
        DType::U8 => typed::<u8>(sources, picks, shape),
        DType::U16 => typed::<u16>(sources, picks, shape),
        DType::U32 => typed::<u32>(sources, picks, shape),
        DType::U64 => typed::<u64>(sources, picks, shape),
        DType::Bool => typed::<bool>(sources, picks, shape),
        DType::String => typed::<String>(sources, picks, shape),
        other => return Err(EvalError::unsupported(format!("selecting elements of {other} tensors is not supported"))),
    };
    t.ok_or_else(|| EvalError::new(format!("internal error: cannot pick {dtype} elements into shape {shape:?}")))
}

/// Elements `idx` (row-major positions) of `t`, as a tensor of `shape`.
pub(crate) fn gather_flat(t: &Tensor, idx: &[usize], shape: &[usize]) -> Result<Tensor, EvalError> {
    let picks: Vec<(usize, usize)> = idx.iter().map(|&i| (0, i)).collect();
    pick(&[t], &picks, shape)
}

/// The element count of a shape taken from attributes or input values,
/// or an error when it does not fit in memory's address space.
pub(crate) fn checked_len(shape: &[usize]) -> Result<usize, EvalError> {
    // Buffers hold up to 16-byte elements and may not exceed isize::MAX bytes.
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= isize::MAX as usize / 16)
        .ok_or_else(|| EvalError::new(format!("shape {shape:?} has too many elements")))
}

/// Wraps tensors as op outputs.
pub(crate) fn outputs(ts: Vec<Tensor>) -> Result<Vec<Value>, EvalError> {
    Ok(ts.into_iter().map(Value::Tensor).collect())
}

/// Reads a scalar (or one-element) integer input.
pub(crate) fn scalar_i64(t: &Tensor, what: &str) -> Result<i64, EvalError> {
    let v =
        t.to_i64_vec().ok_or_else(|| EvalError::new(format!("{what} must be an integer tensor, got {}", t.dtype())))?;
    match v.as_slice() {
        [x] => Ok(*x),
        _ => Err(EvalError::new(format!("{what} must hold one value, got shape {:?}", t.shape()))),
    }
}

/// Reads a scalar (or one-element) real input as `f64`.
pub(crate) fn scalar_f64(t: &Tensor, what: &str) -> Result<f64, EvalError> {
    let v =
        t.to_f64_vec().ok_or_else(|| EvalError::new(format!("{what} must be a numeric tensor, got {}", t.dtype())))?;
    match v.as_slice() {
        [x] => Ok(*x),
        _ => Err(EvalError::new(format!("{what} must hold one value, got shape {:?}", t.shape()))),
    }
}

/// Converts a non-negative attribute or input value to `usize`, with a
/// message naming it when negative.
pub(crate) fn to_usize(v: i64, what: &str) -> Result<usize, EvalError> {
    usize::try_from(v).map_err(|_| EvalError::new(format!("{what} must be non-negative, got {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rounding() {
        let t = Tensor::from_vec(&[2], vec![1.5f32, -2.25]);
        let f = Floats::read(&t, "x").unwrap();
        assert_eq!(f.data, vec![1.5, -2.25]);
        assert_eq!(float_tensor(DType::F32, &f.shape, f.data).unwrap(), t);
        // 1 + 2^-11 is not representable in f16 and rounds to even (1.0).
        assert_eq!(round_to(DType::F16, 1.0 + 2f64.powi(-11)), 1.0);
        assert_eq!(round_to(DType::BF16, 1.0 + 2f64.powi(-9)), 1.0);
        assert_eq!(round_to(DType::F64, 0.1), 0.1);
        assert!(Floats::read(&Tensor::from_vec(&[1], vec![1i64]), "x").is_err());
        assert!(float_tensor(DType::F32, &[3], vec![1.0]).is_err());
        assert_eq!(numeric_tensor(DType::I32, &[2], vec![1.7, -1.7]).unwrap(), Tensor::from_vec(&[2], vec![1i32, -1]));
        assert_eq!(checked_len(&[2, 3, 0]).unwrap(), 0);
        assert!(checked_len(&[1 << 40, 1 << 40]).is_err());
    }
}

//! Quantisation: `QuantizeLinear`, `DequantizeLinear`, `DynamicQuantizeLinear`,
//! `MatMulInteger`, `QLinearMatMul`.
//!
//! Scales and zero points are per tensor (one element), per axis (1-D along
//! `axis`) or blocked (the input's shape with the `axis` dim divided into
//! blocks of `block_size`). Narrow formats go through the shared codec
//! [`crate::ops::cast::narrow`].

use super::linalg::matmul_nd;
use super::{broadcast_index, broadcasts_to, f64_array, int_array, round_to, tensor_from_f64};
use crate::ops::cast::narrow;
use crate::util::{normalize_axis, opt_tensor_arg, single, tensor_arg};
use ndarray::{ArrayD, IxDyn};
use sharc_ir::op::{DequantizeLinear, QuantizeLinear, RoundMode};
use sharc_ir::{DType, EvalError, Tensor, Value};

type Outputs = Result<Vec<Value>, EvalError>;

/// The values of any real tensor, narrow formats decoded, as `f64`.
fn decoded(t: &Tensor, what: &str) -> Result<ArrayD<f64>, EvalError> {
    match t.as_codes() {
        Some(codes) => {
            let d = t.dtype();
            Ok(ArrayD::from_shape_vec(IxDyn(t.shape()), codes.iter().map(|&c| narrow::decode(d, c) as f64).collect())
                .expect("one value per code"))
        }
        None => f64_array(t, what),
    }
}

/// For every element of `x`, the index of the scale (and zero point) that
/// applies to it.
fn param_index(x: &[usize], p: &[usize], axis: i64, block_size: i64, what: &str) -> Result<Vec<usize>, EvalError> {
    let n: usize = x.iter().product();
    if p.iter().product::<usize>() == 1 {
        return Ok(vec![0; n]);
    }
    if block_size < 0 {
        return Err(EvalError::new(format!("block_size {block_size} is negative")));
    }
    let axis = normalize_axis(axis, x.len())?;
    let inner: usize = x[axis + 1..].iter().product();
    let ax = x[axis];
    if block_size == 0 {
        if p.len() != 1 || p[0] != ax {
            return Err(EvalError::new(format!(
                "{what} of shape {p:?} is neither a scalar nor a 1-D tensor of the {ax} elements of axis {axis} \
                 of the input {x:?} (block_size is 0)"
            )));
        }
        return Ok((0..n).map(|i| (i / inner) % ax).collect());
    }
    let b = block_size as usize;
    let blocks = ax.div_ceil(b);
    let ok = p.len() == x.len()
        && p.iter().zip(x).enumerate().all(|(d, (&pd, &xd))| pd == if d == axis { blocks } else { xd });
    if !ok {
        return Err(EvalError::new(format!(
            "{what} of shape {p:?} does not match blocked quantisation of the input {x:?} along axis {axis} \
             with block_size {block_size} (expected {blocks} blocks)"
        )));
    }
    Ok((0..n)
        .map(|i| {
            let (outer, a, r) = (i / (ax * inner), (i / inner) % ax, i % inner);
            (outer * blocks + a / b) * inner + r
        })
        .collect())
}

/// The zero point's values per element of `x` (zeros when absent), checking
/// that it has the scale's shape.
fn zero_points(zp: Option<&Tensor>, scale: &Tensor, index: &[usize]) -> Result<Vec<f64>, EvalError> {
    match zp {
        None => Ok(vec![0.0; index.len()]),
        Some(z) => {
            if z.len() != scale.len() || (z.shape() != scale.shape() && z.len() != 1) {
                return Err(EvalError::new(format!(
                    "the zero point's shape {:?} differs from the scale's {:?}",
                    z.shape(),
                    scale.shape()
                )));
            }
            let v = decoded(z, "zero point")?;
            let v = v.as_slice().expect("standard layout");
            Ok(index.iter().map(|&i| v[i]).collect())
        }
    }
}

/// The integer range of a quantised dtype, `None` for float formats.
fn int_range(d: DType) -> Option<(f64, f64)> {
    Some(match d {
        DType::U8 => (0.0, 255.0),
        DType::I8 => (-128.0, 127.0),
        DType::U16 => (0.0, 65535.0),
        DType::I16 => (-32768.0, 32767.0),
        DType::U4 => (0.0, 15.0),
        DType::I4 => (-8.0, 7.0),
        DType::U2 => (0.0, 3.0),
        DType::I2 => (-2.0, 1.0),
        _ => return None,
    })
}

/// True for the float formats quantisation can produce.
fn is_quant_float(d: DType) -> bool {
    matches!(d, DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ | DType::F4E2M1)
}

/// Builds a quantised tensor of `dtype` from unrounded values: integers
/// round half to even and saturate (NaN becomes 0), floats encode with
/// `saturate` as ONNX's `Cast` does.
fn quantised_tensor(shape: &[usize], v: Vec<f64>, dtype: DType, saturate: bool) -> Result<Tensor, EvalError> {
    if let Some((lo, hi)) = int_range(dtype) {
        let v = v.into_iter().map(|x| if x.is_nan() { 0.0 } else { x.round_ties_even().clamp(lo, hi) });
        if !dtype.is_narrow() {
            return tensor_from_f64(shape, v.collect(), dtype);
        }
        let codes = v.map(|x| narrow::encode_int(dtype, x as i128)).collect();
        return Ok(Tensor::from_codes(dtype, shape, codes).expect("narrow dtype, sizes agree"));
    }
    if is_quant_float(dtype) {
        // The rounding mode only concerns f8e8m0, which is not a quantised type.
        let codes = v.into_iter().map(|x| narrow::encode_f64(dtype, x, saturate, RoundMode::Up)).collect();
        return Ok(Tensor::from_codes(dtype, shape, codes).expect("narrow dtype, sizes agree"));
    }
    Err(EvalError::new(format!("{dtype} is not a quantised type")))
}

fn dtype_attr(code: i64, name: &str) -> Result<Option<DType>, EvalError> {
    if code == 0 {
        return Ok(None);
    }
    i32::try_from(code)
        .ok()
        .and_then(DType::from_onnx_code)
        .map(Some)
        .ok_or_else(|| EvalError::new(format!("attribute {name} = {code} is not a known ONNX dtype")))
}

/// `QuantizeLinear`: `y = saturate(round(x / y_scale) + y_zero_point)`.
pub(crate) fn quantize_linear(a: &QuantizeLinear, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "x")?;
    let scale = tensor_arg(inputs, 1, "y_scale")?;
    let zp = opt_tensor_arg(inputs, 2, "y_zero_point")?;
    if !matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16 | DType::I32 | DType::F64) {
        return Err(EvalError::new(format!("QuantizeLinear input must be float or int32, got {}", x.dtype())));
    }
    if !matches!(scale.dtype(), DType::F32 | DType::F16 | DType::BF16 | DType::I32 | DType::F8E8M0 | DType::F64) {
        return Err(EvalError::new(format!("QuantizeLinear y_scale has unsupported type {}", scale.dtype())));
    }
    let out_attr = dtype_attr(a.output_dtype, "output_dtype")?;
    let out = match (zp, out_attr) {
        (Some(z), Some(o)) if z.dtype() != o => {
            return Err(EvalError::new(format!("output_dtype {o} differs from the zero point's type {}", z.dtype())));
        }
        (Some(z), _) => z.dtype(),
        (None, Some(o)) => o,
        (None, None) => DType::U8,
    };
    if int_range(out).is_none() && !is_quant_float(out) {
        return Err(EvalError::new(format!("QuantizeLinear cannot produce {out}")));
    }
    // The division happens in `precision`, else in the scale's type (a float
    // type; integer and e8m0 scales divide in f64 and f32, which is exact
    // for their values).
    let precision = match dtype_attr(a.precision, "precision")? {
        Some(p) if matches!(p, DType::F32 | DType::F16 | DType::BF16 | DType::F64) => p,
        Some(p) => return Err(EvalError::unsupported(format!("QuantizeLinear with precision {p}"))),
        None => match scale.dtype() {
            DType::F8E8M0 => DType::F32,
            DType::I32 => DType::F64,
            d => d,
        },
    };
    let index = param_index(x.shape(), scale.shape(), a.axis, a.block_size, "y_scale")?;
    let zps = zero_points(zp, scale, &index)?;
    let s = decoded(scale, "y_scale")?;
    let s = s.as_slice().expect("standard layout");
    let xv = decoded(x, "x")?;
    let is_int = int_range(out).is_some();
    let v: Vec<f64> = xv
        .iter()
        .zip(&index)
        .zip(&zps)
        .map(|((&x, &i), &z)| {
            let q = round_to(precision, round_to(precision, x) / round_to(precision, s[i]));
            if is_int { q.round_ties_even() + z } else { q + z }
        })
        .collect();
    single(quantised_tensor(x.shape(), v, out, a.saturate)?)
}

/// `DequantizeLinear`: `y = (x - x_zero_point) * x_scale`.
pub(crate) fn dequantize_linear(a: &DequantizeLinear, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "x")?;
    let scale = tensor_arg(inputs, 1, "x_scale")?;
    let zp = opt_tensor_arg(inputs, 2, "x_zero_point")?;
    if !(int_range(x.dtype()).is_some() || x.dtype() == DType::I32 || x.dtype().is_narrow()) {
        return Err(EvalError::new(format!("DequantizeLinear input has unsupported type {}", x.dtype())));
    }
    if let Some(z) = zp
        && z.dtype() != x.dtype()
    {
        return Err(EvalError::new(format!(
            "the zero point's type {} differs from the input's {}",
            z.dtype(),
            x.dtype()
        )));
    }
    let out = match dtype_attr(a.output_dtype, "output_dtype")? {
        Some(o) => o,
        None => scale.dtype(),
    };
    if !matches!(out, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
        return Err(EvalError::new(format!(
            "DequantizeLinear output type {out} is not a float type (set output_dtype for {} scales)",
            scale.dtype()
        )));
    }
    let index = param_index(x.shape(), scale.shape(), a.axis, a.block_size, "x_scale")?;
    let zps = zero_points(zp, scale, &index)?;
    let s = decoded(scale, "x_scale")?;
    let s = s.as_slice().expect("standard layout");
    let xv = decoded(x, "x")?;
    let v: Vec<f64> = xv.iter().zip(&index).zip(&zps).map(|((&x, &i), &z)| (x - z) * s[i]).collect();
    single(tensor_from_f64(x.shape(), v, out)?)
}

/// `DynamicQuantizeLinear`: uint8 quantisation with a scale and zero point
/// derived from the data range (extended to include 0), computed in `f32` as
/// ONNX specifies.
pub(crate) fn dynamic_quantize_linear(inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "x")?;
    let xs = x
        .as_array::<f32>()
        .ok_or_else(|| EvalError::new(format!("DynamicQuantizeLinear input must be f32, got {}", x.dtype())))?;
    let (qmin, qmax) = (0f32, 255f32);
    let maxx = xs.iter().fold(0f32, |m, &v| m.max(v));
    let minx = xs.iter().fold(0f32, |m, &v| m.min(v));
    let scale = if maxx == minx { 1f32 } else { maxx - minx } / (qmax - qmin);
    let zp = (qmin - minx / scale).clamp(qmin, qmax).round_ties_even();
    let y: Vec<u8> = xs.iter().map(|&v| ((v / scale).round_ties_even() + zp).clamp(qmin, qmax) as u8).collect();
    Ok(vec![
        Value::Tensor(Tensor::from_vec(x.shape(), y)),
        Value::Tensor(Tensor::scalar(scale)),
        Value::Tensor(Tensor::scalar(zp as u8)),
    ])
}

/// Which operand of a quantised matrix product a parameter belongs to: its
/// 1-D form is per row for the left operand, per column for the right.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Left,
    Right,
}

/// The shape under which a matmul parameter broadcasts against its operand
/// (`operand`) and against the product: scalars stay scalars, 1-D
/// parameters become `[M, 1]` (left) or `[N]` (right), others keep theirs.
fn param_shape(p: &Tensor, operand: &[usize], side: Side, what: &str) -> Result<Vec<usize>, EvalError> {
    if p.len() == 1 {
        return Ok(vec![]);
    }
    let r = operand.len();
    let shape = if p.rank() == 1 {
        match side {
            Side::Left if r >= 2 && p.len() == operand[r - 2] => vec![p.len(), 1],
            Side::Right if r >= 2 && p.len() == operand[r - 1] => vec![p.len()],
            _ => {
                return Err(EvalError::new(format!(
                    "{what} of shape {:?} matches neither the rows nor the columns of the operand {operand:?}",
                    p.shape()
                )));
            }
        }
    } else {
        p.shape().to_vec()
    };
    if !broadcasts_to(&shape, operand) {
        return Err(EvalError::new(format!(
            "{what} of shape {:?} does not broadcast to the operand {operand:?}",
            p.shape()
        )));
    }
    Ok(shape)
}

/// Subtracts a zero point (with [`param_shape`] broadcasting) from an operand.
fn minus_zero_point<T: Copy + std::ops::Sub<Output = T>>(
    x: ArrayD<T>,
    zp: Option<ArrayD<T>>,
    shape: &[usize],
) -> ArrayD<T> {
    match zp {
        None => x,
        Some(z) => {
            let z = z.as_slice().expect("standard layout").to_vec();
            let idx = broadcast_index(x.shape(), shape);
            let dims = x.shape().to_vec();
            let v: Vec<T> = x.iter().zip(idx).map(|(&v, i)| v - z[i]).collect();
            ArrayD::from_shape_vec(IxDyn(&dims), v).expect("same size")
        }
    }
}

/// `MatMulInteger`: `(A - a_zero_point) · (B - b_zero_point)` in int32.
pub(crate) fn matmul_integer(inputs: &[Option<Value>]) -> Outputs {
    let a = tensor_arg(inputs, 0, "A")?;
    let b = tensor_arg(inputs, 1, "B")?;
    let azp = opt_tensor_arg(inputs, 2, "a_zero_point")?;
    let bzp = opt_tensor_arg(inputs, 3, "b_zero_point")?;
    for (t, what) in [(Some(a), "A"), (Some(b), "B"), (azp, "a_zero_point"), (bzp, "b_zero_point")] {
        if let Some(t) = t
            && !matches!(t.dtype(), DType::I8 | DType::U8)
        {
            return Err(EvalError::new(format!("MatMulInteger {what} must be int8 or uint8, got {}", t.dtype())));
        }
    }
    let (a_sh, b_sh) = (a.shape().to_vec(), b.shape().to_vec());
    let azs = azp.map(|z| param_shape(z, &a_sh, Side::Left, "a_zero_point")).transpose()?.unwrap_or_default();
    let bzs = bzp.map(|z| param_shape(z, &b_sh, Side::Right, "b_zero_point")).transpose()?.unwrap_or_default();
    let av = minus_zero_point(int_array(a, "A")?, azp.map(|z| int_array(z, "a_zero_point")).transpose()?, &azs);
    let bv = minus_zero_point(int_array(b, "B")?, bzp.map(|z| int_array(z, "b_zero_point")).transpose()?, &bzs);
    let y = matmul_nd::<i64>(av.view(), bv.view())?;
    single(super::int_tensor(y, DType::I32)?)
}

/// `QLinearMatMul`: dequantise, multiply, requantise to `y_scale` and
/// `y_zero_point`. Integer operands accumulate in int32 as ONNX's reference
/// does; the rescaling factor `a_scale · b_scale / y_scale` is computed in the
/// scales' type.
pub(crate) fn qlinear_matmul(inputs: &[Option<Value>]) -> Outputs {
    let a = tensor_arg(inputs, 0, "a")?;
    let a_scale = tensor_arg(inputs, 1, "a_scale")?;
    let azp = opt_tensor_arg(inputs, 2, "a_zero_point")?;
    let b = tensor_arg(inputs, 3, "b")?;
    let b_scale = tensor_arg(inputs, 4, "b_scale")?;
    let bzp = opt_tensor_arg(inputs, 5, "b_zero_point")?;
    let y_scale = tensor_arg(inputs, 6, "y_scale")?;
    let yzp = opt_tensor_arg(inputs, 7, "y_zero_point")?;
    let quant = |d: DType| matches!(d, DType::I8 | DType::U8) || (d.is_narrow() && d.bit_width() == Some(8));
    for (t, what) in [(a, "a"), (b, "b")] {
        if !quant(t.dtype()) || t.dtype() == DType::F8E8M0 {
            return Err(EvalError::new(format!("QLinearMatMul {what} has unsupported type {}", t.dtype())));
        }
    }
    for (z, t, what) in [(azp, a, "a_zero_point"), (bzp, b, "b_zero_point")] {
        if let Some(z) = z
            && z.dtype() != t.dtype()
        {
            return Err(EvalError::new(format!("QLinearMatMul {what} has type {}, not {}", z.dtype(), t.dtype())));
        }
    }
    let ts = a_scale.dtype();
    if !matches!(ts, DType::F32 | DType::F16 | DType::BF16) || b_scale.dtype() != ts || y_scale.dtype() != ts {
        return Err(EvalError::new(format!(
            "QLinearMatMul scales must share one float type, got {}, {} and {}",
            ts,
            b_scale.dtype(),
            y_scale.dtype()
        )));
    }
    let out_dtype = yzp.map(|z| z.dtype()).unwrap_or(a.dtype());
    let (a_sh, b_sh) = (a.shape().to_vec(), b.shape().to_vec());
    let azs = azp.map(|z| param_shape(z, &a_sh, Side::Left, "a_zero_point")).transpose()?.unwrap_or_default();
    let bzs = bzp.map(|z| param_shape(z, &b_sh, Side::Right, "b_zero_point")).transpose()?.unwrap_or_default();
    let c: ArrayD<f64> = if a.dtype().is_narrow() || b.dtype().is_narrow() {
        let av = minus_zero_point(decoded(a, "a")?, azp.map(|z| decoded(z, "a_zero_point")).transpose()?, &azs);
        let bv = minus_zero_point(decoded(b, "b")?, bzp.map(|z| decoded(z, "b_zero_point")).transpose()?, &bzs);
        matmul_nd::<f64>(av.view(), bv.view())?
    } else {
        let av = minus_zero_point(int_array(a, "a")?, azp.map(|z| int_array(z, "a_zero_point")).transpose()?, &azs);
        let bv = minus_zero_point(int_array(b, "b")?, bzp.map(|z| int_array(z, "b_zero_point")).transpose()?, &bzs);
        matmul_nd::<i64>(av.view(), bv.view())?.mapv(|v| v as i32 as f64)
    };
    let out_shape = c.shape().to_vec();
    // Parameters broadcast against the product: per-row ones need the row dim,
    // which a 1-D left operand drops (and likewise the column dim on the right).
    let in_out = |p: &Tensor, operand: &[usize], side: Side, what: &str| -> Result<Vec<f64>, EvalError> {
        let mut shape = param_shape(p, operand, side, what)?;
        if !shape.is_empty() && ((side == Side::Left && a.rank() == 1) || (side == Side::Right && b.rank() == 1)) {
            return Err(EvalError::new(format!("{what} cannot be per row or column for a 1-D operand")));
        }
        if side == Side::Right && shape.len() >= 2 && a.rank() == 1 {
            shape.remove(shape.len() - 2);
        }
        if !broadcasts_to(&shape, &out_shape) {
            return Err(EvalError::new(format!(
                "{what} of shape {:?} does not broadcast to the product {out_shape:?}",
                p.shape()
            )));
        }
        let v = decoded(p, what)?;
        let v = v.as_slice().expect("standard layout");
        Ok(broadcast_index(&out_shape, &shape).into_iter().map(|i| v[i]).collect())
    };
    let sa = in_out(a_scale, &a_sh, Side::Left, "a_scale")?;
    let sb = in_out(b_scale, &b_sh, Side::Right, "b_scale")?;
    let y_param = |p: &Tensor, what: &str| -> Result<Vec<f64>, EvalError> {
        if !broadcasts_to(p.shape(), &out_shape) {
            return Err(EvalError::new(format!(
                "{what} of shape {:?} does not broadcast to the product {out_shape:?}",
                p.shape()
            )));
        }
        let v = decoded(p, what)?;
        let v = v.as_slice().expect("standard layout");
        Ok(broadcast_index(&out_shape, p.shape()).into_iter().map(|i| v[i]).collect())
    };
    let sy = y_param(y_scale, "y_scale")?;
    let zy = match yzp {
        Some(z) => y_param(z, "y_zero_point")?,
        None => vec![0.0; c.len()],
    };
    let v: Vec<f64> = c
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let mult = round_to(ts, round_to(ts, sa[i] * sb[i]) / sy[i]);
            c * mult + zy[i]
        })
        .collect();
    single(quantised_tensor(&out_shape, v, out_dtype, true)?)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, run_n, run1, t};
    use super::*;
    use sharc_ir::Op;

    fn q(axis: i64, block_size: i64, output_dtype: i64) -> Op {
        Op::QuantizeLinear(QuantizeLinear { axis, block_size, output_dtype, precision: 0, saturate: true })
    }

    fn dq(axis: i64, block_size: i64) -> Op {
        Op::DequantizeLinear(DequantizeLinear { axis, block_size, output_dtype: 0 })
    }

    #[test]
    fn quantize_per_tensor_rounds_half_even_and_saturates() {
        // onnx test_quantizelinear: x / 2 + 128 -> [128, 129, 130, 255, 1, 0]
        let x = t(&[6], vec![0f32, 2., 3., 1000., -254., -1000.]);
        let y = run1(&q(1, 0, 0), &[x, t(&[], vec![2f32]), t(&[], vec![128u8])]).unwrap();
        assert_eq!(y, Tensor::from_vec(&[6], vec![128u8, 129, 130, 255, 1, 0]));
        // Half to even: 0.5 -> 0, 1.5 -> 2, -2.5 -> -2 (int8 through output_dtype, no zero point).
        let y = run1(&q(1, 0, 3), &[t(&[3], vec![0.5f32, 1.5, -2.5]), t(&[], vec![1f32])]).unwrap();
        assert_eq!(y, Tensor::from_vec(&[3], vec![0i8, 2, -2]));
        // No zero point, no output_dtype: uint8.
        let y = run1(&q(1, 0, 0), &[t(&[2], vec![-3f32, 3.]), t(&[], vec![1f32])]).unwrap();
        assert_eq!(y, Tensor::from_vec(&[2], vec![0u8, 3]));
    }

    #[test]
    fn quantize_per_axis_and_blocked() {
        // Per channel on axis 1 of [1, 2, 2]: scales [1, 2], zero points [0, 10].
        let x = t(&[1, 2, 2], vec![1f32, 2., 4., 6.]);
        let y = run1(&q(1, 0, 0), &[x, t(&[2], vec![1f32, 2.]), t(&[2], vec![0u8, 10])]).unwrap();
        assert_eq!(y, Tensor::from_vec(&[1, 2, 2], vec![1u8, 2, 12, 13]));
        // Blocked along axis 1, block 2, x [2, 3] -> scale [2, 2] (the last block is short).
        let x = t(&[2, 3], vec![2f32, 4., 6., 8., 10., 12.]);
        let y = run1(&q(1, 2, 0), &[x, t(&[2, 2], vec![1f32, 2., 4., 6.]), t(&[2, 2], vec![0u8, 0, 1, 2])]).unwrap();
        assert_eq!(y, Tensor::from_vec(&[2, 3], vec![2u8, 4, 3, 3, 3, 4]));
        let e = run1(&q(1, 0, 0), &[t(&[2, 3], vec![0f32; 6]), t(&[2], vec![1f32, 1.])]).unwrap_err();
        assert!(e.message.contains("axis 1"), "{}", e.message);
        let e = run1(&q(1, 1, 0), &[t(&[2, 3], vec![0f32; 6]), t(&[2, 2], vec![1f32; 4])]).unwrap_err();
        assert!(e.message.contains("blocks"), "{}", e.message);
        let e = run1(&q(1, 0, 2), &[t(&[1], vec![0f32]), t(&[], vec![1f32]), t(&[], vec![0i8])]).unwrap_err();
        assert!(e.message.contains("output_dtype"), "{}", e.message);
    }

    #[test]
    fn quantize_narrow_outputs() {
        // int4 with zero point 1: [-20, 0.4, 3, 40] / 2 -> rint [-10, 0, 2, 20] + 1 -> clamp [-8, 1, 3, 7].
        let zp = Some(Value::Tensor(Tensor::from_codes(DType::I4, &[1], vec![1]).unwrap()));
        let y = run1(&q(0, 0, 0), &[t(&[4], vec![-20f32, 0.4, 3., 40.]), t(&[1], vec![2f32]), zp]).unwrap();
        assert_eq!(y.dtype(), DType::I4);
        assert_eq!(y.as_codes().unwrap().iter().copied().collect::<Vec<_>>(), vec![0x8, 1, 3, 7]);
        // float8 e4m3fn saturates by default: 1000 -> 448.
        let zp = Some(Value::Tensor(Tensor::from_codes(DType::F8E4M3FN, &[1], vec![0]).unwrap()));
        let y = run1(&q(1, 0, 0), &[t(&[3], vec![0.4f32, 1000., -0.8]), t(&[], vec![2f32]), zp]).unwrap();
        assert_eq!(y.as_codes().unwrap().iter().copied().collect::<Vec<_>>(), vec![0x25, 0x7e, 0xad]);
    }

    #[test]
    fn quantize_divides_in_the_scale_type() {
        // In f16, 1/3 rounds to 0.33325195; 0.5 / that = 1.50039... -> rint 2. The f32 path gives the same
        // here, so check the division rounding directly: 3 / 2 in f16 is exactly 1.5 -> 2 (even).
        let h = |v: f32| half::f16::from_f32(v);
        let y = run1(&q(1, 0, 3), &[t(&[1], vec![3f32]), t(&[], vec![h(2.0)])]).unwrap();
        assert_eq!(y, Tensor::from_vec(&[1], vec![2i8]));
        // 2049 / 1 rounds to 2048 in f16 before rint (f32 would give 2049 -> saturates differently in i16).
        let y = run1(&q(1, 0, 5), &[t(&[1], vec![2049f32]), t(&[], vec![h(1.0)])]).unwrap();
        assert_eq!(y, Tensor::from_vec(&[1], vec![2048i16]));
        let y = run1(&q(1, 0, 5), &[t(&[1], vec![2049f32]), t(&[], vec![1f32])]).unwrap();
        assert_eq!(y, Tensor::from_vec(&[1], vec![2049i16]));
    }

    #[test]
    fn dequantize() {
        let y = run1(&dq(1, 0), &[t(&[4], vec![0u8, 3, 128, 255]), t(&[], vec![2f32]), t(&[], vec![128u8])]).unwrap();
        assert_close(&y, &[4], &[-256., -250., 0., 254.], 0.0);
        // Per axis 1 with int16.
        let y =
            run1(&dq(1, 0), &[t(&[1, 2, 2], vec![1i16, 2, 3, 4]), t(&[2], vec![1f32, 0.5]), t(&[2], vec![0i16, 2])])
                .unwrap();
        assert_close(&y, &[1, 2, 2], &[1., 2., 0.5, 1.], 0.0);
        // Blocked along axis 0 with block 2 on [3, 1].
        let y = run1(&dq(0, 2), &[t(&[3, 1], vec![1i8, 2, 3]), t(&[2, 1], vec![10f32, 100.])]).unwrap();
        assert_close(&y, &[3, 1], &[10., 20., 300.], 0.0);
        // int4 codes and an f16 scale give an f16 output.
        let x = Some(Value::Tensor(Tensor::from_codes(DType::I4, &[2], vec![0xf, 0x7]).unwrap()));
        let y = run1(&dq(0, 0), &[x, t(&[], vec![half::f16::from_f32(0.5)])]).unwrap();
        assert_eq!(y, Tensor::from_vec(&[2], vec![half::f16::from_f32(-0.5), half::f16::from_f32(3.5)]));
        let e = run1(&dq(1, 0), &[t(&[1], vec![1u8]), t(&[], vec![1f32]), t(&[], vec![1i8])]).unwrap_err();
        assert!(e.message.contains("zero point"), "{}", e.message);
    }

    #[test]
    fn dynamic_quantize() {
        // onnx test_dynamicquantizelinear: x = [0, 2, -3, -2.5, 1.34, 0.5]
        let x = t(&[6], vec![0f32, 2., -3., -2.5, 1.34, 0.5]);
        let out = run_n(&Op::DynamicQuantizeLinear, &[x], 3).unwrap();
        assert_eq!(out[0], Tensor::from_vec(&[6], vec![153u8, 255, 0, 26, 221, 179]));
        assert_close(&out[1], &[], &[0.019607844], 1e-7);
        assert_eq!(out[2], Tensor::scalar(153u8));
        // All-zero input: scale 1/255, zero point 0.
        let out = run_n(&Op::DynamicQuantizeLinear, &[t(&[2], vec![0f32, 0.])], 3).unwrap();
        assert_eq!(out[2], Tensor::scalar(0u8));
    }

    #[test]
    fn matmul_integer_with_zero_points() {
        // onnx test_matmulinteger.
        let a = t(&[4, 3], vec![11u8, 7, 3, 10, 6, 2, 9, 5, 1, 8, 4, 0]);
        let b = t(&[3, 2], vec![1u8, 4, 2, 5, 3, 6]);
        let y = run1(&Op::MatMulInteger, &[a.clone(), b.clone(), t(&[1], vec![12u8]), t(&[1], vec![0u8])]).unwrap();
        assert_eq!(y, Tensor::from_vec(&[4, 2], vec![-38i32, -83, -44, -98, -50, -113, -56, -128]));
        // Per-row zero points on A, per-column on B.
        let y = run1(&Op::MatMulInteger, &[a, b, t(&[4], vec![11u8, 10, 9, 8]), t(&[2], vec![1u8, 4])]).unwrap();
        assert_eq!(y, Tensor::from_vec(&[4, 2], vec![-20i32; 8]));
        let e = run1(&Op::MatMulInteger, &[t(&[1], vec![1i32]), t(&[1], vec![1i32])]).unwrap_err();
        assert!(e.message.contains("int8"), "{}", e.message);
    }

    #[test]
    fn qlinear_matmul_matches_reference() {
        // onnx test_qlinearmatmul_2D_uint8_float32.
        let inputs = [
            t(&[2, 4], vec![208u8, 236, 0, 238, 3, 214, 255, 29]),
            t(&[1], vec![0.0066f32]),
            t(&[1], vec![113u8]),
            t(&[4, 3], vec![152u8, 51, 244, 60, 26, 255, 0, 127, 246, 127, 254, 247]),
            t(&[1], vec![0.00705f32]),
            t(&[1], vec![114u8]),
            t(&[1], vec![0.0107f32]),
            t(&[1], vec![118u8]),
        ];
        let y = run1(&Op::QLinearMatMul, &inputs).unwrap();
        assert_eq!(y, Tensor::from_vec(&[2, 3], vec![168u8, 115, 255, 1, 66, 151]));
        // int8 with f16 scales (test_qlinearmatmul_2D_int8_float16).
        let h = |v: f32| half::f16::from_f32(v);
        let inputs = [
            t(&[2, 4], vec![-3i8, 7, 5, -6, 4, -5, 8, 7]),
            t(&[1], vec![h(0.05)]),
            t(&[1], vec![0i8]),
            t(&[4, 3], vec![5i8, -3, 7, 8, -6, -8, -3, 6, 7, 9, 9, -5]),
            t(&[1], vec![h(0.05)]),
            t(&[1], vec![0i8]),
            t(&[1], vec![h(0.05)]),
            t(&[1], vec![1i8]),
        ];
        let y = run1(&Op::QLinearMatMul, &inputs).unwrap();
        assert_eq!(y, Tensor::from_vec(&[2, 3], vec![0i8, -2, 0, 2, 7, 5]));
    }
}

//! Family `movement`: ops that move, select, re-shape or resample data.
//!
//! Most of these ops never look at element values, so they are written once
//! for every dtype (strings and narrow formats included) on top of one
//! primitive, [`take`]: the output is described by the flat source index of
//! each of its elements, and [`take`] copies those elements whatever their
//! type. Ops that need arithmetic (scatter reductions, Resize, GridSample,
//! Col2Im...) convert through `f64` or dispatch on the numeric types.

mod col2im;
mod create;
mod gather;
mod grid;
mod resize;
mod select;
mod shape;
mod unique;

use super::{OpContext, OpResult};
use crate::util::i64_values;
use ndarray::{ArrayD, Axis, IxDyn};
use sharc_ir::{Array, DType, EvalError, Op, Tensor, TensorData, Value, map_array};

/// Runs the op if it belongs to this family.
pub fn run(op: &Op, inputs: &[Option<Value>], cx: &OpContext) -> OpResult {
    Some(match op {
        Op::Reshape(a) => shape::reshape(a, inputs),
        Op::Transpose(a) => shape::transpose(a, inputs),
        Op::Flatten(a) => shape::flatten(a, inputs),
        Op::Squeeze => shape::squeeze(inputs),
        Op::Unsqueeze => shape::unsqueeze(inputs),
        Op::Shape(a) => shape::shape_of(a, inputs),
        Op::Size => shape::size(inputs),
        Op::Identity => shape::identity(inputs),
        Op::Expand => shape::expand(inputs),
        Op::Tile => shape::tile(inputs),
        Op::DepthToSpace(a) => shape::depth_to_space(a, inputs),
        Op::SpaceToDepth(a) => shape::space_to_depth(a, inputs),
        Op::Concat(a) => select::concat(a, inputs),
        Op::Split(a) => select::split(a, inputs, cx),
        Op::Slice => select::slice(inputs),
        Op::Pad(a) => select::pad(a, inputs),
        Op::CenterCropPad(a) => select::center_crop_pad(a, inputs),
        Op::Compress(a) => select::compress(a, inputs),
        Op::ReverseSequence(a) => select::reverse_sequence(a, inputs),
        Op::Trilu(a) => select::trilu(a, inputs),
        Op::NonZero => select::non_zero(inputs),
        Op::ConstantOfShape(a) => create::constant_of_shape(a, inputs),
        Op::Range(a) => create::range(a, inputs),
        Op::EyeLike(a) => create::eye_like(a, inputs),
        Op::OneHot(a) => create::one_hot(a, inputs),
        Op::Dropout(a) => create::dropout(a, inputs, cx),
        Op::Gather(a) => gather::gather(a, inputs),
        Op::GatherElements(a) => gather::gather_elements(a, inputs),
        Op::GatherND(a) => gather::gather_nd(a, inputs),
        Op::ScatterElements(a) => gather::scatter_elements(a, inputs),
        Op::ScatterND(a) => gather::scatter_nd(a, inputs),
        Op::TensorScatter(a) => gather::tensor_scatter(a, inputs),
        Op::Unique(a) => unique::unique(a, inputs),
        Op::Col2Im(a) => col2im::col2im(a, inputs),
        Op::Resize(a) => resize::resize(a, inputs),
        Op::GridSample(a) => grid::grid_sample(a, inputs),
        Op::AffineGrid(a) => grid::affine_grid(a, inputs),
        _ => return None,
    })
}

/// Marks an output element of [`take`] that comes from the fill value
/// instead of the source tensor.
pub(crate) const FILL: usize = usize::MAX;

/// Row-major strides of a shape, in elements.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The multi-index of flat position `flat` in a row-major shape.
pub(crate) fn unravel(mut flat: usize, shape: &[usize], out: &mut [usize]) {
    for d in (0..shape.len()).rev() {
        let n = shape[d].max(1);
        out[d] = flat % n;
        flat /= n;
    }
}

/// Number of elements of a shape, or an error if it overflows `usize`.
pub(crate) fn checked_numel(shape: &[usize]) -> Result<usize, EvalError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| EvalError::new(format!("shape {shape:?} has too many elements")))
}

/// Builds a tensor of `shape` whose i-th element (row-major) is the element
/// at flat position `src[i]` of `t`, or the single element of `fill` where
/// `src[i] == FILL`. Works for every dtype because it only copies elements.
pub(crate) fn take(t: &Tensor, shape: &[usize], src: &[usize], fill: Option<&Tensor>) -> Result<Tensor, EvalError> {
    if checked_numel(shape)? != src.len() {
        return Err(EvalError::new(format!("internal: {} source indices for an output of shape {shape:?}", src.len())));
    }
    match fill {
        Some(f) if src.contains(&FILL) => {
            if f.len() != 1 {
                return Err(EvalError::new(format!("the fill value must have one element, it has {}", f.len())));
            }
            let n = t.len();
            let combined = concat_flat(&[t, f])?;
            let src: Vec<usize> = src.iter().map(|&i| if i == FILL { n } else { i }).collect();
            let data = map_array!(combined.data(), a => take_array(a, shape, &src)?);
            Ok(Tensor::new(data))
        }
        _ => {
            let data = map_array!(t.data(), a => take_array(a, shape, src)?);
            Ok(Tensor::new(data))
        }
    }
}

fn take_array<T: Clone>(a: &Array<T>, shape: &[usize], src: &[usize]) -> Result<Array<T>, EvalError> {
    let flat = a.as_standard_layout();
    let s = flat.as_slice().ok_or_else(|| EvalError::new("internal: standard layout is not contiguous"))?;
    let values = src
        .iter()
        .map(|&i| {
            s.get(i).cloned().ok_or_else(|| {
                EvalError::new(format!("internal: source index {i} is out of range for {} elements", s.len()))
            })
        })
        .collect::<Result<Vec<T>, EvalError>>()?;
    ArrayD::from_shape_vec(IxDyn(shape), values)
        .map(|a| a.into_shared())
        .map_err(|e| EvalError::new(format!("internal: {e}")))
}

/// Selects, along every axis independently, the source positions listed in
/// `per_axis[d]` (`None` picks the fill value). The output shape is the
/// lengths of the lists. This is the outer-product selection behind Slice,
/// Pad, Tile, Expand, CenterCropPad and nearest Resize.
pub(crate) fn take_axes(
    t: &Tensor,
    per_axis: &[Vec<Option<usize>>],
    fill: Option<&Tensor>,
) -> Result<Tensor, EvalError> {
    if per_axis.len() != t.rank() {
        return Err(EvalError::new(format!("internal: {} index lists for a rank-{} tensor", per_axis.len(), t.rank())));
    }
    let out_shape: Vec<usize> = per_axis.iter().map(|v| v.len()).collect();
    let total = checked_numel(&out_shape)?;
    let st = strides(t.shape());
    let mut src: Vec<usize> = Vec::with_capacity(total);
    src.push(0);
    for (d, list) in per_axis.iter().enumerate() {
        let mut next = Vec::with_capacity(src.len() * list.len());
        for &base in &src {
            for p in list {
                next.push(match p {
                    Some(i) if base != FILL => {
                        if *i >= t.shape()[d] {
                            return Err(EvalError::new(format!(
                                "internal: index {i} is out of range for axis {d} of size {}",
                                t.shape()[d]
                            )));
                        }
                        base + i * st[d]
                    }
                    _ => FILL,
                });
            }
        }
        src = next;
    }
    if total == 0 {
        src.clear();
    }
    take(t, &out_shape, &src, fill)
}

macro_rules! concat_variants {
    ($ts:expr, $axis:expr, [$($v:ident),*]) => {{
        let first = $ts[0];
        match first.data() {
            $( TensorData::$v(_) => {
                let views = $ts
                    .iter()
                    .map(|t| match t.data() {
                        TensorData::$v(a) => Ok(a.view()),
                        _ => Err(dtype_mismatch(first, t)),
                    })
                    .collect::<Result<Vec<_>, EvalError>>()?;
                TensorData::$v(concat_views(&views, $axis)?)
            } )*
            TensorData::Narrow { dtype, .. } => {
                let views = $ts
                    .iter()
                    .map(|t| match t.data() {
                        TensorData::Narrow { dtype: d, codes } if d == dtype => Ok(codes.view()),
                        _ => Err(dtype_mismatch(first, t)),
                    })
                    .collect::<Result<Vec<_>, EvalError>>()?;
                TensorData::Narrow { dtype: *dtype, codes: concat_views(&views, $axis)? }
            }
        }
    }};
}

fn dtype_mismatch(a: &Tensor, b: &Tensor) -> EvalError {
    EvalError::new(format!("element types differ: {} and {}", a.dtype(), b.dtype()))
}

fn concat_views<T: Clone>(views: &[ndarray::ArrayViewD<'_, T>], axis: usize) -> Result<Array<T>, EvalError> {
    ndarray::concatenate(Axis(axis), views)
        .map(|a| a.into_shared())
        .map_err(|e| EvalError::new(format!("cannot concatenate: {e}")))
}

/// Joins tensors of one dtype along `axis`; all other dims must agree.
pub(crate) fn concat_axis(ts: &[&Tensor], axis: usize) -> Result<Tensor, EvalError> {
    if ts.is_empty() {
        return Err(EvalError::new("nothing to concatenate"));
    }
    let data = concat_variants!(
        ts,
        axis,
        [F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64, Bool, String, Complex64, Complex128]
    );
    Ok(Tensor::new(data))
}

/// All elements of the tensors, one after the other, as a 1-D tensor.
pub(crate) fn concat_flat(ts: &[&Tensor]) -> Result<Tensor, EvalError> {
    let flat: Vec<Tensor> = ts
        .iter()
        .map(|t| t.reshape(&[t.len()]).ok_or_else(|| EvalError::new("internal: cannot flatten")))
        .collect::<Result<_, _>>()?;
    let refs: Vec<&Tensor> = flat.iter().collect();
    concat_axis(&refs, 0)
}

/// A tensor of a real-valued dtype from `f64` values, rounding the way
/// ONNX's reference does for integers (half to even, then saturating).
pub(crate) fn from_f64(dtype: DType, shape: &[usize], v: Vec<f64>) -> Result<Tensor, EvalError> {
    fn int<T>(v: &[f64], f: impl Fn(f64) -> T) -> Vec<T> {
        v.iter().map(|&x| f(x.round_ties_even())).collect()
    }
    let t = match dtype {
        DType::F32 => Tensor::try_from_vec(shape, v.iter().map(|&x| x as f32).collect()),
        DType::F64 => Tensor::try_from_vec(shape, v),
        DType::F16 => Tensor::try_from_vec(shape, v.iter().map(|&x| half::f16::from_f64(x)).collect()),
        DType::BF16 => Tensor::try_from_vec(shape, v.iter().map(|&x| half::bf16::from_f64(x)).collect()),
        DType::I8 => Tensor::try_from_vec(shape, int(&v, |x| x as i8)),
        DType::I16 => Tensor::try_from_vec(shape, int(&v, |x| x as i16)),
        DType::I32 => Tensor::try_from_vec(shape, int(&v, |x| x as i32)),
        DType::I64 => Tensor::try_from_vec(shape, int(&v, |x| x as i64)),
        DType::U8 => Tensor::try_from_vec(shape, int(&v, |x| x as u8)),
        DType::U16 => Tensor::try_from_vec(shape, int(&v, |x| x as u16)),
        DType::U32 => Tensor::try_from_vec(shape, int(&v, |x| x as u32)),
        DType::U64 => Tensor::try_from_vec(shape, int(&v, |x| x as u64)),
        DType::Bool => Tensor::try_from_vec(shape, v.iter().map(|&x| x != 0.0).collect()),
        other => return Err(EvalError::unsupported(format!("element type {other} is not supported here"))),
    };
    t.ok_or_else(|| EvalError::new(format!("internal: value count does not match shape {shape:?}")))
}

/// An integer tensor of `dtype` from `i64` values (wrapping like a C cast;
/// callers pass values that fit).
pub(crate) fn from_i64(dtype: DType, shape: &[usize], v: Vec<i64>) -> Result<Tensor, EvalError> {
    let t = match dtype {
        DType::I64 => Tensor::try_from_vec(shape, v),
        DType::I32 => Tensor::try_from_vec(shape, v.iter().map(|&x| x as i32).collect()),
        DType::I16 => Tensor::try_from_vec(shape, v.iter().map(|&x| x as i16).collect()),
        DType::I8 => Tensor::try_from_vec(shape, v.iter().map(|&x| x as i8).collect()),
        DType::U64 => Tensor::try_from_vec(shape, v.iter().map(|&x| x as u64).collect()),
        DType::U32 => Tensor::try_from_vec(shape, v.iter().map(|&x| x as u32).collect()),
        DType::U16 => Tensor::try_from_vec(shape, v.iter().map(|&x| x as u16).collect()),
        DType::U8 => Tensor::try_from_vec(shape, v.iter().map(|&x| x as u8).collect()),
        other => return Err(EvalError::unsupported(format!("element type {other} is not supported here"))),
    };
    t.ok_or_else(|| EvalError::new(format!("internal: value count does not match shape {shape:?}")))
}

/// The elements of a real-valued tensor as `f64`.
pub(crate) fn real_values(t: &Tensor, what: &str) -> Result<Vec<f64>, EvalError> {
    t.to_f64_vec()
        .ok_or_else(|| EvalError::unsupported(format!("{what} of element type {} is not supported", t.dtype())))
}

/// The single element of a scalar (or one-element) integer tensor.
pub(crate) fn scalar_i64(t: &Tensor, what: &str) -> Result<i64, EvalError> {
    let v = i64_values(t, what)?;
    match v.as_slice() {
        [x] => Ok(*x),
        _ => Err(EvalError::new(format!("{what} must have exactly one element, it has shape {:?}", t.shape()))),
    }
}

/// The single element of a scalar (or one-element) real tensor.
pub(crate) fn scalar_f64(t: &Tensor, what: &str) -> Result<f64, EvalError> {
    let v = real_values(t, what)?;
    match v.as_slice() {
        [x] => Ok(*x),
        _ => Err(EvalError::new(format!("{what} must have exactly one element, it has shape {:?}", t.shape()))),
    }
}

/// Resolves a possibly negative index against a dim of size `dim`.
pub(crate) fn resolve_index(i: i64, dim: usize, what: &str) -> Result<usize, EvalError> {
    let n = dim as i64;
    let j = if i < 0 { i + n } else { i };
    if j < 0 || j >= n {
        return Err(EvalError::new(format!("{what} {i} is out of range for a dim of size {dim}")));
    }
    Ok(j as usize)
}

/// Converts dims read from a tensor to sizes, rejecting negative ones.
pub(crate) fn to_sizes(v: &[i64], what: &str) -> Result<Vec<usize>, EvalError> {
    v.iter()
        .map(|&d| usize::try_from(d).map_err(|_| EvalError::new(format!("{what} has a negative entry: {v:?}"))))
        .collect()
}

/// Resolves a list of possibly negative axes against `rank`, rejecting repeats.
pub(crate) fn resolve_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, EvalError> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let r = crate::util::normalize_axis(a, rank)?;
        if out.contains(&r) {
            return Err(EvalError::new(format!("axis {a} is repeated in {axes:?}")));
        }
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod testutil {
    use sharc_ir::{Op, Tensor, Value};

    /// Runs an op of this family on tensor inputs (`None` = missing).
    pub fn run_n(op: Op, inputs: Vec<Option<Tensor>>, n_out: usize) -> Result<Vec<Value>, sharc_ir::EvalError> {
        let inputs: Vec<Option<Value>> = inputs.into_iter().map(|t| t.map(Value::Tensor)).collect();
        let types = vec![sharc_ir::Type::Unknown; n_out];
        let cx = crate::ops::OpContext { node_name: "test", num_outputs: n_out, output_types: &types };
        super::run(&op, &inputs, &cx).expect("op belongs to the movement family")
    }

    /// Runs an op with one output and returns it.
    pub fn run1(op: Op, inputs: Vec<Option<Tensor>>) -> Result<Tensor, sharc_ir::EvalError> {
        let mut out = run_n(op, inputs, 1)?;
        Ok(out.remove(0).into_tensor().expect("a tensor output"))
    }

    /// An f32 tensor.
    pub fn f(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_vec(shape, v.to_vec())
    }

    /// An i64 tensor.
    pub fn i(shape: &[usize], v: &[i64]) -> Tensor {
        Tensor::from_vec(shape, v.to_vec())
    }

    /// f32 values 0, 1, 2, ... in a shape.
    pub fn iota(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_vec(shape, (0..n).map(|x| x as f32).collect())
    }

    /// The f32 elements of a tensor.
    pub fn fv(t: &Tensor) -> Vec<f32> {
        t.as_array::<f32>().expect("f32 tensor").iter().copied().collect()
    }

    /// The i64 elements of a tensor.
    pub fn iv(t: &Tensor) -> Vec<i64> {
        t.as_array::<i64>().expect("i64 tensor").iter().copied().collect()
    }

    /// Asserts that two float slices agree to a tolerance.
    pub fn close(got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "lengths differ: {got:?} vs {want:?}");
        for (k, (&g, w)) in got.iter().zip(want).enumerate() {
            let g = g as f64;
            assert!((g - w).abs() <= tol * (1.0 + w.abs()), "element {k}: got {g}, want {w}\n{got:?}\n{want:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_works_for_strings_and_fill() {
        let t = Tensor::from_vec(&[3], vec!["a".to_string(), "b".into(), "c".into()]);
        let fill = Tensor::from_vec(&[], vec!["-".to_string()]);
        let out = take(&t, &[2, 2], &[2, FILL, 0, 0], Some(&fill)).unwrap();
        let want = Tensor::from_vec(&[2, 2], vec!["c".to_string(), "-".into(), "a".into(), "a".into()]);
        assert_eq!(out, want);
    }

    #[test]
    fn take_axes_is_an_outer_product() {
        let t = Tensor::from_vec(&[2, 3], vec![0i32, 1, 2, 3, 4, 5]);
        let out = take_axes(&t, &[vec![Some(1), Some(0)], vec![Some(2), None]], Some(&Tensor::scalar(9i32))).unwrap();
        assert_eq!(out, Tensor::from_vec(&[2, 2], vec![5i32, 9, 2, 9]));
    }

    #[test]
    fn concat_rejects_mixed_types() {
        let a = Tensor::from_vec(&[1], vec![1.0f32]);
        let b = Tensor::from_vec(&[1], vec![1i64]);
        assert!(concat_axis(&[&a, &b], 0).unwrap_err().message.contains("element types differ"));
    }

    #[test]
    fn narrow_types_concatenate_by_code() {
        let a = Tensor::from_codes(DType::I4, &[2], vec![1, 2]).unwrap();
        let b = Tensor::from_codes(DType::I4, &[1], vec![15]).unwrap();
        assert_eq!(concat_axis(&[&a, &b], 0).unwrap(), Tensor::from_codes(DType::I4, &[3], vec![1, 2, 15]).unwrap());
        let c = Tensor::from_codes(DType::U4, &[1], vec![15]).unwrap();
        assert!(concat_axis(&[&a, &c], 0).is_err());
    }

    #[test]
    fn from_f64_rounds_half_to_even_and_saturates() {
        let t = from_f64(DType::U8, &[4], vec![2.5, 3.5, -4.0, 300.0]).unwrap();
        assert_eq!(t, Tensor::from_vec(&[4], vec![2u8, 4, 0, 255]));
    }
}

//! Family `nn` of the interpreter's ops: linear algebra, convolution,
//! pooling, normalisation and quantisation.
//!
//! The ops follow the latest ONNX opset. Arithmetic is done in a type at least
//! as wide as the inputs: `f64` for `f64` tensors and for the statistics of
//! pooling and normalisation, `f32` for the matrix products of `f32`, `f16` and
//! `bf16` tensors, and wrapping `i64` for integer products (so that overflow
//! behaves like the two's-complement accumulation ONNX allows instead of
//! panicking). Results are rounded once to the output type, except where the
//! ONNX definition casts an intermediate value (the normalisation ops' stage
//! one, the quantisation division), which is then reproduced.

mod conv;
mod linalg;
mod norm;
mod pool;
mod quant;

use super::{OpContext, OpResult};
use half::{bf16, f16};
use ndarray::{ArrayD, ArrayView2, ArrayViewMut2, CowArray, IxDyn, LinalgScalar, ScalarOperand};
use sharc_ir::{DType, EvalError, Op, Tensor, TensorData, Value};
use std::fmt::Debug;

/// Runs the op if it belongs to this family.
pub fn run(op: &Op, inputs: &[Option<Value>], cx: &OpContext) -> OpResult {
    Some(match op {
        Op::MatMul => linalg::matmul(inputs),
        Op::Gemm(a) => linalg::gemm(a, inputs),
        Op::Einsum(a) => linalg::einsum(a, inputs),
        Op::Det => linalg::det(inputs),
        Op::Conv(a) => conv::conv(a, inputs),
        Op::ConvTranspose(a) => conv::conv_transpose(a, inputs),
        Op::DeformConv(a) => conv::deform_conv(a, inputs),
        Op::ConvInteger(a) => conv::conv_integer(a, inputs),
        Op::QLinearConv(a) => conv::qlinear_conv(a, inputs),
        Op::MaxPool(a) => pool::max_pool(a, inputs, cx),
        Op::AveragePool(a) => pool::average_pool(a, inputs),
        Op::LpPool(a) => pool::lp_pool(a, inputs),
        Op::GlobalAveragePool => pool::global_pool(pool::Global::Average, inputs),
        Op::GlobalMaxPool => pool::global_pool(pool::Global::Max, inputs),
        Op::GlobalLpPool(a) => pool::global_pool(pool::Global::Lp(a.p), inputs),
        Op::MaxRoiPool(a) => pool::max_roi_pool(a, inputs),
        Op::MaxUnpool(a) => pool::max_unpool(a, inputs),
        Op::BatchNormalization(a) => norm::batch_norm(a, inputs, cx),
        Op::InstanceNormalization(a) => norm::instance_norm(a, inputs),
        Op::LayerNormalization(a) => norm::layer_norm(a, inputs, cx),
        Op::GroupNormalization(a) => norm::group_norm(a, inputs),
        Op::RMSNormalization(a) => norm::rms_norm(a, inputs),
        Op::LpNormalization(a) => norm::lp_norm(a, inputs),
        Op::MeanVarianceNormalization(a) => norm::mean_variance_norm(a, inputs),
        Op::LRN(a) => norm::lrn(a, inputs),
        Op::QuantizeLinear(a) => quant::quantize_linear(a, inputs),
        Op::DequantizeLinear(a) => quant::dequantize_linear(a, inputs),
        Op::DynamicQuantizeLinear => quant::dynamic_quantize_linear(inputs),
        Op::MatMulInteger => quant::matmul_integer(inputs),
        Op::QLinearMatMul => quant::qlinear_matmul(inputs),
        _ => return None,
    })
}

/// A float type the matrix cores compute in (`f32` or `f64`).
pub(crate) trait Real:
    num_traits::Float + LinalgScalar + ScalarOperand + std::ops::AddAssign + sharc_ir::Element + Send + Sync + Debug
{
    /// Rounds an `f64` to this type.
    fn of(v: f64) -> Self;
    /// Widens to `f64` (exact).
    fn wide(self) -> f64;
}

impl Real for f32 {
    fn of(v: f64) -> f32 {
        v as f32
    }
    fn wide(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    fn of(v: f64) -> f64 {
        v
    }
    fn wide(self) -> f64 {
        self
    }
}

/// An element type of the matrix-product cores: `f32` and `f64` use
/// ndarray's blocked GEMM, `i64` wrapping loops (integer products in ONNX may
/// overflow only in the accumulator, and must not panic here).
pub(crate) trait MatElem: Copy + num_traits::Zero + Send + Sync + Debug + 'static {
    /// `self + o` (wrapping for integers).
    fn plus(self, o: Self) -> Self;
    /// Overwrites `c` with `a · b`. Shapes are checked by the caller.
    fn gemm(a: &ArrayView2<Self>, b: &ArrayView2<Self>, c: &mut ArrayViewMut2<Self>);
}

macro_rules! float_mat_elem {
    ($t:ty) => {
        impl MatElem for $t {
            fn plus(self, o: Self) -> Self {
                self + o
            }
            fn gemm(a: &ArrayView2<Self>, b: &ArrayView2<Self>, c: &mut ArrayViewMut2<Self>) {
                ndarray::linalg::general_mat_mul(1.0, a, b, 0.0, c);
            }
        }
    };
}
float_mat_elem!(f32);
float_mat_elem!(f64);

impl MatElem for i64 {
    fn plus(self, o: Self) -> Self {
        self.wrapping_add(o)
    }
    fn gemm(a: &ArrayView2<i64>, b: &ArrayView2<i64>, c: &mut ArrayViewMut2<i64>) {
        c.fill(0);
        for (a_row, mut c_row) in a.outer_iter().zip(c.outer_iter_mut()) {
            for (&av, b_row) in a_row.iter().zip(b.outer_iter()) {
                if av == 0 {
                    continue;
                }
                for (cv, &bv) in c_row.iter_mut().zip(b_row.iter()) {
                    *cv = cv.wrapping_add(av.wrapping_mul(bv));
                }
            }
        }
    }
}

/// True for the float types the float ops accept.
pub(crate) fn is_wide_float(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
}

/// An array in standard layout from an iterator in logical order.
fn collect_array<T>(shape: &[usize], values: impl Iterator<Item = T>) -> ArrayD<T> {
    ArrayD::from_shape_vec(IxDyn(shape), values.collect()).expect("an iterator over a shape yields its size")
}

/// The elements of a float tensor (`f16`, `bf16`, `f32`, `f64`) in `T`, in
/// standard layout.
pub(crate) fn real_array<T: Real>(t: &Tensor, what: &str) -> Result<ArrayD<T>, EvalError> {
    let s = t.shape();
    Ok(match t.data() {
        TensorData::F32(a) => collect_array(s, a.iter().map(|&v| T::of(v as f64))),
        TensorData::F64(a) => collect_array(s, a.iter().map(|&v| T::of(v))),
        TensorData::F16(a) => collect_array(s, a.iter().map(|v| T::of(v.to_f64()))),
        TensorData::BF16(a) => collect_array(s, a.iter().map(|v| T::of(v.to_f64()))),
        _ => return Err(EvalError::new(format!("{what} must be a float tensor, got {}", t.dtype()))),
    })
}

/// A float tensor as an array of `T`: borrowed when it already holds `T`
/// (the common case, which saves a copy of every activation), converted
/// otherwise.
pub(crate) fn real_cow<'a, T: Real>(t: &'a Tensor, what: &str) -> Result<CowArray<'a, T, IxDyn>, EvalError> {
    match t.as_array::<T>() {
        Some(a) => Ok(CowArray::from(a.view())),
        None => Ok(CowArray::from(real_array::<T>(t, what)?)),
    }
}

/// Rounds an array computed in `T` to a float tensor of `dtype` (one of the
/// types [`is_wide_float`] accepts).
pub(crate) fn real_tensor<T: Real>(a: ArrayD<T>, dtype: DType) -> Tensor {
    if T::DTYPE == dtype {
        return Tensor::from_array(a.into_shared());
    }
    let s = a.shape().to_vec();
    match dtype {
        DType::F64 => Tensor::from_array(collect_array(&s, a.iter().map(|v| v.wide())).into_shared()),
        DType::F16 => Tensor::from_array(collect_array(&s, a.iter().map(|v| f16::from_f64(v.wide()))).into_shared()),
        DType::BF16 => Tensor::from_array(collect_array(&s, a.iter().map(|v| bf16::from_f64(v.wide()))).into_shared()),
        _ => Tensor::from_array(collect_array(&s, a.iter().map(|v| v.wide() as f32)).into_shared()),
    }
}

/// The elements of a real tensor (floats, integers, bools) as `f64`, in
/// standard layout.
pub(crate) fn f64_array(t: &Tensor, what: &str) -> Result<ArrayD<f64>, EvalError> {
    // Contiguous f32 data (the common case) converts through a plain slice,
    // which stays fast in unoptimised builds.
    if let Some(s) = t.as_array::<f32>().and_then(|a| a.as_slice()) {
        let v = s.iter().map(|&x| x as f64).collect();
        return Ok(ArrayD::from_shape_vec(IxDyn(t.shape()), v).expect("one value per element"));
    }
    let v = t
        .to_f64_vec()
        .ok_or_else(|| EvalError::new(format!("{what} must be a real-valued tensor, got {}", t.dtype())))?;
    Ok(ArrayD::from_shape_vec(IxDyn(t.shape()), v).expect("to_f64_vec yields one value per element"))
}

/// Rounds `v` to the precision of a float `dtype` (identity for `f64` and
/// non-float types), so that arithmetic done in `f64` can reproduce an ONNX
/// cast to a narrower float.
#[inline]
pub(crate) fn round_to(dtype: DType, v: f64) -> f64 {
    match dtype {
        DType::F32 => v as f32 as f64,
        DType::F16 => f16::from_f64(v).to_f64(),
        DType::BF16 => bf16::from_f64(v).to_f64(),
        _ => v,
    }
}

/// A tensor of `dtype` from `f64` values: floats are rounded to nearest,
/// integers converted with Rust's saturating `as` (callers round or clamp
/// first where ONNX asks for it).
pub(crate) fn tensor_from_f64(shape: &[usize], v: Vec<f64>, dtype: DType) -> Result<Tensor, EvalError> {
    fn mk<T: sharc_ir::Element>(shape: &[usize], v: Vec<f64>, f: impl Fn(f64) -> T) -> Tensor {
        Tensor::from_vec(shape, v.into_iter().map(f).collect())
    }
    Ok(match dtype {
        DType::F32 => mk(shape, v, |x| x as f32),
        DType::F64 => mk(shape, v, |x| x),
        DType::F16 => mk(shape, v, f16::from_f64),
        DType::BF16 => mk(shape, v, bf16::from_f64),
        DType::I8 => mk(shape, v, |x| x as i8),
        DType::I16 => mk(shape, v, |x| x as i16),
        DType::I32 => mk(shape, v, |x| x as i32),
        DType::I64 => mk(shape, v, |x| x as i64),
        DType::U8 => mk(shape, v, |x| x as u8),
        DType::U16 => mk(shape, v, |x| x as u16),
        DType::U32 => mk(shape, v, |x| x as u32),
        DType::U64 => mk(shape, v, |x| x as u64),
        DType::Bool => mk(shape, v, |x| x != 0.0),
        d => return Err(EvalError::unsupported(format!("cannot produce a {d} tensor here"))),
    })
}

/// The elements of an integer tensor as `i64` (unsigned 64-bit values keep
/// their bit pattern, which wrapping arithmetic then treats correctly).
pub(crate) fn int_array(t: &Tensor, what: &str) -> Result<ArrayD<i64>, EvalError> {
    if !t.dtype().is_integer() || t.dtype().is_narrow() {
        return Err(EvalError::new(format!("{what} must be an integer tensor, got {}", t.dtype())));
    }
    let v = t.to_i64_vec().expect("integer tensors convert to i64");
    Ok(ArrayD::from_shape_vec(IxDyn(t.shape()), v).expect("one value per element"))
}

/// An integer tensor of `dtype` from wrapping `i64` results (truncating to the
/// type's width, as two's-complement arithmetic in that width would).
pub(crate) fn int_tensor(a: ArrayD<i64>, dtype: DType) -> Result<Tensor, EvalError> {
    let s = a.shape().to_vec();
    let v = a.into_iter();
    Ok(match dtype {
        DType::I8 => Tensor::from_vec(&s, v.map(|x| x as i8).collect()),
        DType::I16 => Tensor::from_vec(&s, v.map(|x| x as i16).collect()),
        DType::I32 => Tensor::from_vec(&s, v.map(|x| x as i32).collect()),
        DType::I64 => Tensor::from_vec(&s, v.collect()),
        DType::U8 => Tensor::from_vec(&s, v.map(|x| x as u8).collect()),
        DType::U16 => Tensor::from_vec(&s, v.map(|x| x as u16).collect()),
        DType::U32 => Tensor::from_vec(&s, v.map(|x| x as u32).collect()),
        DType::U64 => Tensor::from_vec(&s, v.map(|x| x as u64).collect()),
        d => return Err(EvalError::unsupported(format!("cannot produce a {d} tensor from integers"))),
    })
}

/// For every element of a tensor of shape `out`, the flat index of the
/// element of a tensor of shape `src` that numpy broadcasting reads for it.
/// `src` must broadcast to `out` (checked by the caller).
pub(crate) fn broadcast_index(out: &[usize], src: &[usize]) -> Vec<usize> {
    let n: usize = out.iter().product();
    let r = out.len();
    let off = r - src.len();
    // Strides of `src` placed under `out`'s dims, zero where broadcast.
    let mut strides = vec![0usize; r];
    let mut acc = 1;
    for i in (0..src.len()).rev() {
        if src[i] != 1 {
            strides[off + i] = acc;
        }
        acc *= src[i];
    }
    let mut idx = vec![0usize; r];
    let mut res = Vec::with_capacity(n);
    let mut cur = 0usize;
    for _ in 0..n {
        res.push(cur);
        // Odometer step over `out`, keeping `cur` in sync.
        for d in (0..r).rev() {
            idx[d] += 1;
            cur += strides[d];
            if idx[d] < out[d] {
                break;
            }
            cur -= strides[d] * idx[d];
            idx[d] = 0;
        }
    }
    res
}

/// True when `src` broadcasts to exactly `out` (unidirectional broadcasting).
pub(crate) fn broadcasts_to(src: &[usize], out: &[usize]) -> bool {
    src.len() <= out.len() && src.iter().rev().zip(out.iter().rev()).all(|(&s, &o)| s == o || s == 1)
}

/// A spatial attribute (`strides`, `dilations`, `kernel_shape`) with one
/// value per spatial dim, each at least `min`; `default` when absent.
pub(crate) fn spatial_attr(
    v: &Option<Vec<i64>>,
    n: usize,
    default: usize,
    name: &str,
    min: i64,
) -> Result<Vec<usize>, EvalError> {
    match v {
        None => Ok(vec![default; n]),
        Some(v) if v.len() != n => {
            Err(EvalError::new(format!("attribute {name} has {} values, the input has {n} spatial dims", v.len())))
        }
        Some(v) => v
            .iter()
            .map(|&x| {
                if x < min {
                    Err(EvalError::new(format!("attribute {name} = {v:?} has a value below {min}")))
                } else {
                    Ok(x as usize)
                }
            })
            .collect(),
    }
}

/// The `pads` attribute as (begin, end) per spatial dim; zeros when absent.
pub(crate) fn pads_attr(v: &Option<Vec<i64>>, n: usize) -> Result<(Vec<usize>, Vec<usize>), EvalError> {
    match v {
        None => Ok((vec![0; n], vec![0; n])),
        Some(p) if p.len() != 2 * n => Err(EvalError::new(format!(
            "attribute pads has {} values, expected {} (begin and end for {n} spatial dims)",
            p.len(),
            2 * n
        ))),
        Some(p) if p.iter().any(|&x| x < 0) => Err(EvalError::new(format!("attribute pads = {p:?} is negative"))),
        Some(p) => Ok((p[..n].iter().map(|&x| x as usize).collect(), p[n..].iter().map(|&x| x as usize).collect())),
    }
}

/// The span of a dilated kernel, `(k - 1) · d + 1`, for a kernel size of at
/// least 1; an error when attribute values make it overflow.
pub(crate) fn kernel_span(k: usize, d: usize) -> Result<usize, EvalError> {
    k.checked_sub(1)
        .and_then(|k| k.checked_mul(d))
        .and_then(|v| v.checked_add(1))
        .ok_or_else(|| EvalError::new(format!("kernel size {k} with dilation {d} is empty or overflows")))
}

/// `v` or an error saying that a size computed from `what` overflows.
pub(crate) fn no_overflow(v: Option<usize>, what: &str) -> Result<usize, EvalError> {
    v.ok_or_else(|| EvalError::new(format!("{what} overflows")))
}

/// Splits the total padding `SAME_UPPER` / `SAME_LOWER` needs into (begin,
/// end): the odd pixel goes at the end for upper, at the beginning for lower.
pub(crate) fn split_same(total: usize, upper: bool) -> (usize, usize) {
    let small = total / 2;
    if upper { (small, total - small) } else { (total - small, small) }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Helpers for the family's unit tests.

    use crate::ops::{OpContext, run_op};
    use sharc_ir::{Element, EvalError, Op, Tensor, Type, Value};

    /// An input value.
    pub fn t<T: Element>(shape: &[usize], v: Vec<T>) -> Option<Value> {
        Some(Value::Tensor(Tensor::from_vec(shape, v)))
    }

    /// Runs `op` declaring `n` outputs.
    pub fn run_n(op: &Op, inputs: &[Option<Value>], n: usize) -> Result<Vec<Tensor>, EvalError> {
        let types = vec![Type::Unknown; n];
        let cx = OpContext { node_name: "test", num_outputs: n, output_types: &types };
        let out = run_op(op, inputs, &cx)?;
        Ok(out.into_iter().map(|v| v.into_tensor().expect("tensor output")).collect())
    }

    /// Runs a one-output `op`.
    pub fn run1(op: &Op, inputs: &[Option<Value>]) -> Result<Tensor, EvalError> {
        Ok(run_n(op, inputs, 1)?.remove(0))
    }

    /// Asserts shape and values within `tol` (absolute plus relative).
    pub fn assert_close(t: &Tensor, shape: &[usize], expected: &[f64], tol: f64) {
        assert_eq!(t.shape(), shape, "shape of {t:?}");
        let got = t.to_f64_vec().expect("real tensor");
        assert_eq!(got.len(), expected.len());
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            let ok = (g - e).abs() <= tol * (1.0 + e.abs()) || (g.is_nan() && e.is_nan());
            assert!(ok, "element {i}: got {g}, expected {e}\n got {got:?}\nwant {expected:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_index_matches_numpy() {
        // src [3, 1] under out [2, 3, 2]: element (a, b, c) reads (b, 0).
        let idx = broadcast_index(&[2, 3, 2], &[3, 1]);
        assert_eq!(idx, vec![0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]);
        assert_eq!(broadcast_index(&[2, 2], &[]), vec![0, 0, 0, 0]);
        assert_eq!(broadcast_index(&[2, 2], &[2, 2]), vec![0, 1, 2, 3]);
        assert!(broadcasts_to(&[1, 4], &[3, 4]));
        assert!(!broadcasts_to(&[3, 4], &[4]));
    }

    #[test]
    fn rounding_helpers() {
        assert_eq!(round_to(DType::F16, 1.0 + 1e-4), 1.0);
        assert_eq!(round_to(DType::F64, 1.0 + 1e-12), 1.0 + 1e-12);
        let t = tensor_from_f64(&[2], vec![1.5, -2.0], DType::I8).unwrap();
        assert_eq!(t, Tensor::from_vec(&[2], vec![1i8, -2]));
        assert_eq!(split_same(3, true), (1, 2));
        assert_eq!(split_same(3, false), (2, 1));
    }

    #[test]
    fn attribute_checks() {
        assert_eq!(spatial_attr(&None, 2, 1, "strides", 1).unwrap(), vec![1, 1]);
        assert!(spatial_attr(&Some(vec![1]), 2, 1, "strides", 1).is_err());
        assert!(spatial_attr(&Some(vec![0, 1]), 2, 1, "strides", 1).is_err());
        assert_eq!(pads_attr(&Some(vec![1, 2, 3, 4]), 2).unwrap(), (vec![1, 2], vec![3, 4]));
        assert!(pads_attr(&Some(vec![-1, 0]), 1).is_err());
    }

    #[test]
    fn integer_gemm_wraps() {
        let a = ndarray::arr2(&[[i64::MAX, 1]]);
        let b = ndarray::arr2(&[[2i64], [3]]);
        let mut c = ndarray::Array2::<i64>::zeros((1, 1));
        i64::gemm(&a.view(), &b.view(), &mut c.view_mut());
        assert_eq!(c[[0, 0]], i64::MAX.wrapping_mul(2).wrapping_add(3));
    }
}

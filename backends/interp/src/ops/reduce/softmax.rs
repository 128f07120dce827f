//! `Softmax`, `LogSoftmax` and `Hardmax` along one axis (opset 13+: the
//! axis alone, not the flattened trailing dims of older opsets).
//!
//! `f32` and `f64` compute each lane in `f64` and round once. The 16-bit
//! types follow ONNX's function bodies for these ops step by step, each
//! intermediate rounded to the type, because that is how ONNX's reference
//! evaluates them and one bf16 ulp (2^-8) is already beyond the tolerance
//! results are checked with: `Softmax = Exp(X - Max) / Sum`, `LogSoftmax =
//! (X - Max) - Log(Sum)`. The inner sum accumulates as numpy does for the
//! type: in `f32` for f16, in bf16 itself for bf16 (ml_dtypes, which the
//! reference uses for bf16, has no wider accumulator).

use super::{arg_best, log_sum_exp, map_lanes, sum};
use crate::ops::elementwise::bad_type;
use crate::ops::elementwise::num::{Real, match_real, max_nan};
use crate::util::{normalize_axis, tensor_arg};
use ndarray::{ArrayBase, ArrayD, Data, IxDyn};
use sharc_ir::op::AxisAttr;
use sharc_ir::{DType, EvalError, Tensor, Value};

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Kind {
    Softmax,
    LogSoftmax,
    Hardmax,
}

pub(super) fn run(kind: Kind, a: &AxisAttr, inputs: &[Option<Value>]) -> Result<Tensor, EvalError> {
    let name = match kind {
        Kind::Softmax => "Softmax",
        Kind::LogSoftmax => "LogSoftmax",
        Kind::Hardmax => "Hardmax",
    };
    let x = tensor_arg(inputs, 0, "input")?;
    let axis = normalize_axis(a.axis, x.rank())?;
    fn go<T: Real, S: Data<Elem = T>>(
        x: &ArrayBase<S, IxDyn>,
        axis: usize,
        kind: Kind,
    ) -> Result<ArrayD<T>, EvalError> {
        let n = x.shape()[axis];
        let stepwise = matches!(T::DTYPE, DType::F16 | DType::BF16);
        map_lanes(x, axis, n, |lane, out| {
            let v: Vec<f64> = lane.iter().map(|e| e.to_f64()).collect();
            match kind {
                Kind::Softmax | Kind::LogSoftmax if stepwise => out.extend(stepwise_lane::<T>(&v, kind)),
                // Shifting by the maximum keeps exp from overflowing; a NaN
                // anywhere in the lane makes the whole lane NaN.
                Kind::Softmax => {
                    let m = v.iter().copied().fold(f64::NEG_INFINITY, max_nan);
                    let e: Vec<f64> = v.iter().map(|&t| (t - m).exp()).collect();
                    let s = sum(e.iter().copied());
                    out.extend(e.iter().map(|&t| T::from_f64(t / s)));
                }
                Kind::LogSoftmax => {
                    let lse = log_sum_exp(v.iter().copied());
                    out.extend(v.iter().map(|&t| T::from_f64(t - lse)));
                }
                Kind::Hardmax => {
                    let best = if n == 0 { 0 } else { arg_best(&v, true, false) };
                    out.extend((0..n).map(|i| T::from_f64(if i == best { 1.0 } else { 0.0 })));
                }
            }
        })
    }
    match_real!(x.data(), d => Ok(Tensor::from(go(d, axis, kind)?)), _ => Err(bad_type(name, x.dtype())))
}

/// One lane of `Softmax` or `LogSoftmax` for f16/bf16, rounding every step
/// of the function body to `T` (see the module docs).
fn stepwise_lane<T: Real>(v: &[f64], kind: Kind) -> Vec<T> {
    let round = |x: f64| T::from_f64(x).to_f64();
    let m = v.iter().copied().fold(f64::NEG_INFINITY, max_nan);
    let shifted: Vec<f64> = v.iter().map(|&x| round(x - m)).collect();
    let e: Vec<f64> = shifted.iter().map(|&t| round(t.exp())).collect();
    let s = if T::DTYPE == DType::BF16 {
        e.iter().fold(0.0, |acc, &x| round(acc + x))
    } else {
        let e32: Vec<f32> = e.iter().map(|&x| x as f32).collect();
        round(match e32.split_first() {
            Some((first, rest)) => (first + pairwise_sum_f32(rest)) as f64,
            None => 0.0,
        })
    };
    match kind {
        Kind::LogSoftmax => {
            let log_s = round(s.ln());
            shifted.iter().map(|&t| T::from_f64(t - log_s)).collect()
        }
        _ => e.iter().map(|&x| T::from_f64(x / s)).collect(),
    }
}

/// numpy's pairwise summation in `f32` (what `np.sum` does for f16 data
/// along a contiguous axis): blocks of eight partial sums, halves above 128.
fn pairwise_sum_f32(a: &[f32]) -> f32 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |acc, &x| acc + x)
    } else if n <= 128 {
        let mut r = [0f32; 8];
        r.copy_from_slice(&a[..8]);
        let full = n - n % 8;
        for chunk in a[8..full].chunks_exact(8) {
            for (acc, &x) in r.iter_mut().zip(chunk) {
                *acc += x;
            }
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[full..] {
            res += x;
        }
        res
    } else {
        let half = n / 2;
        let half = half - half % 8;
        pairwise_sum_f32(&a[..half]) + pairwise_sum_f32(&a[half..])
    }
}

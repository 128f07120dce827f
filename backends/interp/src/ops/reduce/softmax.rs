//! `Softmax`, `LogSoftmax` and `Hardmax` along one axis (opset 13+: the
//! axis alone, not the flattened trailing dims of older opsets).

use super::{arg_best, log_sum_exp, map_lanes, sum};
use crate::ops::elementwise::bad_type;
use crate::ops::elementwise::num::{Real, match_real, max_nan};
use crate::util::{normalize_axis, tensor_arg};
use ndarray::{ArrayBase, ArrayD, Data, IxDyn};
use sharc_ir::op::AxisAttr;
use sharc_ir::{EvalError, Tensor, Value};

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
        map_lanes(x, axis, n, |lane, out| {
            let v: Vec<f64> = lane.iter().map(|e| e.to_f64()).collect();
            match kind {
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

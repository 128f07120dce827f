//! Reductions and ops along an axis: `Reduce*`, `ArgMax`/`ArgMin`,
//! `CumSum`/`CumProd`, `Softmax`/`LogSoftmax`/`Hardmax` and `TopK`.
//!
//! Float types accumulate in `f64` (sums compensated) and round once to the
//! input type, which is at least as accurate as ONNX's reference (16-bit
//! `Softmax`/`LogSoftmax` are the exception, see `softmax.rs`); integer types
//! wrap on overflow like numpy does. NaN propagates through `Max` and
//! `Min` and wins `ArgMax`/`ArgMin` (numpy's behaviour).

mod scan;
mod softmax;
mod topk;

use super::elementwise::bad_type;
use super::elementwise::num::{Int, Real, match_int, match_real, max_nan, min_nan};
use super::{OpContext, OpResult};
use crate::util::{i64_values, normalize_axis, opt_tensor_arg, single, tensor_arg};
use ndarray::{ArrayBase, ArrayD, Axis, Data, IxDyn};
use sharc_ir::op::ArgReduce;
use sharc_ir::{Array, EvalError, Op, Reduce, ReduceKind, Tensor, TensorData, Value};

/// Runs the op if it belongs to this family.
pub fn run(op: &Op, inputs: &[Option<Value>], _cx: &OpContext) -> OpResult {
    let result = match op {
        Op::Reduce(r) => reduce(r, inputs).and_then(single),
        Op::ArgMax(a) => arg_reduce(a, true, inputs).and_then(single),
        Op::ArgMin(a) => arg_reduce(a, false, inputs).and_then(single),
        Op::CumSum(c) => scan::cumulative(c, false, inputs).and_then(single),
        Op::CumProd(c) => scan::cumulative(c, true, inputs).and_then(single),
        Op::Softmax(a) => softmax::run(softmax::Kind::Softmax, a, inputs).and_then(single),
        Op::LogSoftmax(a) => softmax::run(softmax::Kind::LogSoftmax, a, inputs).and_then(single),
        Op::Hardmax(a) => softmax::run(softmax::Kind::Hardmax, a, inputs).and_then(single),
        Op::TopK(t) => topk::top_k(t, inputs),
        _ => return None,
    };
    Some(result)
}

/// Applies `f` to every 1-D lane of `x` along `axis` (given as a contiguous
/// slice); `f` pushes exactly `out_len` results per lane, which form the
/// output's `axis`.
pub(crate) fn map_lanes<T: Clone, U: Clone, S: Data<Elem = T>>(
    x: &ArrayBase<S, IxDyn>,
    axis: usize,
    out_len: usize,
    mut f: impl FnMut(&[T], &mut Vec<U>),
) -> Result<ArrayD<U>, EvalError> {
    let rank = x.ndim();
    let mut perm: Vec<usize> = (0..rank).filter(|&d| d != axis).collect();
    perm.push(axis);
    let n = x.shape()[axis];
    let outer: usize = perm[..rank - 1].iter().map(|&d| x.shape()[d]).product();
    let data: Vec<T> = x.view().permuted_axes(IxDyn(&perm)).iter().cloned().collect();
    let mut out = Vec::with_capacity(outer * out_len);
    for i in 0..outer {
        f(&data[i * n..(i + 1) * n], &mut out);
        if out.len() != (i + 1) * out_len {
            return Err(EvalError::new(format!(
                "internal: a lane gave {} values, not {out_len}",
                out.len() - i * out_len
            )));
        }
    }
    let mut shape: Vec<usize> = perm.iter().map(|&d| x.shape()[d]).collect();
    shape[rank - 1] = out_len;
    let moved = ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| EvalError::new(e.to_string()))?;
    let mut back = vec![0; rank];
    for (i, &p) in perm.iter().enumerate() {
        back[p] = i;
    }
    Ok(moved.permuted_axes(IxDyn(&back)).as_standard_layout().into_owned())
}

/// Which axes a reduction folds and the shape it produces.
struct Plan {
    /// Kept axes first, then reduced ones.
    perm: Vec<usize>,
    /// Elements folded into each output element.
    group: usize,
    /// Number of output elements.
    outputs: usize,
    out_shape: Vec<usize>,
}

impl Plan {
    fn new(shape: &[usize], reduced: &[bool], keepdims: bool) -> Plan {
        let kept: Vec<usize> = (0..shape.len()).filter(|&d| !reduced[d]).collect();
        let folded: Vec<usize> = (0..shape.len()).filter(|&d| reduced[d]).collect();
        let out_shape = (0..shape.len())
            .filter_map(|d| match (reduced[d], keepdims) {
                (false, _) => Some(shape[d]),
                (true, true) => Some(1),
                (true, false) => None,
            })
            .collect();
        Plan {
            group: folded.iter().map(|&d| shape[d]).product(),
            outputs: kept.iter().map(|&d| shape[d]).product(),
            perm: kept.into_iter().chain(folded).collect(),
            out_shape,
        }
    }

    /// Folds each group of input elements into one output element.
    fn fold<T: Clone, U>(&self, a: &Array<T>, mut f: impl FnMut(&[T]) -> U) -> Result<ArrayD<U>, EvalError> {
        let values: Vec<T> = a.view().permuted_axes(IxDyn(&self.perm)).iter().cloned().collect();
        let out: Vec<U> = if self.group == 0 {
            (0..self.outputs).map(|_| f(&[])).collect()
        } else {
            values.chunks(self.group).map(f).collect()
        };
        ArrayD::from_shape_vec(IxDyn(&self.out_shape), out).map_err(|e| EvalError::new(e.to_string()))
    }
}

fn reduce(r: &Reduce, inputs: &[Option<Value>]) -> Result<Tensor, EvalError> {
    let name = r.kind.onnx_name();
    let x = tensor_arg(inputs, 0, "data")?;
    let axes = opt_tensor_arg(inputs, 1, "axes")?.map(|t| i64_values(t, "axes")).transpose()?;
    let rank = x.rank();
    let mut reduced = vec![false; rank];
    match axes {
        Some(axes) if !axes.is_empty() => {
            for a in axes {
                let d = normalize_axis(a, rank)?;
                if reduced[d] {
                    return Err(EvalError::new(format!("axis {a} is listed twice in {name}'s axes")));
                }
                reduced[d] = true;
            }
        }
        // No axes: every axis, unless `noop_with_empty_axes`, in which case
        // none: each element is "reduced" alone, so `ReduceSumSquare` still
        // squares, as the spec says.
        _ => reduced.fill(!r.attrs.noop_with_empty_axes),
    }
    let plan = Plan::new(x.shape(), &reduced, r.attrs.keepdims);
    let k = r.kind;
    fn real<T: Real>(plan: &Plan, a: &Array<T>, k: ReduceKind) -> Result<Tensor, EvalError> {
        Ok(Tensor::from(plan.fold(a, |g| T::from_f64(fold_real(k, g)))?))
    }
    match_real!(x.data(), a => real(&plan, a, k),
    _ => match_int!(x.data(), a => Ok(Tensor::from(plan.fold(a, |g| fold_int(k, g)).and_then(collect_results)?)),
        _ => match x.data() {
            TensorData::Bool(a) if matches!(k, ReduceKind::Max | ReduceKind::Min) => {
                let all = k == ReduceKind::Min;
                Ok(Tensor::from(plan.fold(a, |g| if all { g.iter().all(|&b| b) } else { g.iter().any(|&b| b) })?))
            }
            _ => Err(bad_type(name, x.dtype())),
        }))
}

/// Unwraps per-element results, keeping the first error.
fn collect_results<T>(a: ArrayD<Result<T, EvalError>>) -> Result<ArrayD<T>, EvalError> {
    let shape = a.shape().to_vec();
    let v = a.into_iter().collect::<Result<Vec<T>, EvalError>>()?;
    ArrayD::from_shape_vec(IxDyn(&shape), v).map_err(|e| EvalError::new(e.to_string()))
}

/// A sum with Neumaier's compensation, so long `f32` reductions do not
/// drift; infinities and NaN fall back to the plain sum they dominate.
pub(crate) fn sum(values: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut c, mut plain) = (0.0f64, 0.0f64, 0.0f64);
    for x in values {
        plain += x;
        let t = s + x;
        c += if s.abs() >= x.abs() { (s - t) + x } else { (x - t) + s };
        s = t;
    }
    if plain.is_finite() { s + c } else { plain }
}

/// One float reduction in `f64`. An empty group gives ONNX's identities:
/// 0 for sums, 1 for `Prod`, -inf for `Max`, `LogSum` and `LogSumExp`, +inf
/// for `Min`, NaN for `Mean`.
fn fold_real<T: Real>(k: ReduceKind, g: &[T]) -> f64 {
    let it = g.iter().map(|v| v.to_f64());
    match k {
        ReduceKind::Sum => sum(it),
        ReduceKind::Mean => sum(it) / g.len() as f64,
        ReduceKind::Max => it.fold(f64::NEG_INFINITY, max_nan),
        ReduceKind::Min => it.fold(f64::INFINITY, min_nan),
        ReduceKind::Prod => it.product(),
        ReduceKind::L1 => sum(it.map(f64::abs)),
        ReduceKind::L2 => sum(it.map(|v| v * v)).sqrt(),
        ReduceKind::LogSum => sum(it).ln(),
        ReduceKind::LogSumExp => log_sum_exp(it),
        ReduceKind::SumSquare => sum(it.map(|v| v * v)),
    }
}

/// `ln Σ e^x`, shifted by the largest finite element so that no term
/// overflows; infinities and NaN still come out as the unshifted formula
/// gives them.
pub(crate) fn log_sum_exp(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = values.clone().filter(|v| v.is_finite()).fold(f64::NEG_INFINITY, f64::max);
    let m = if m.is_finite() { m } else { 0.0 };
    sum(values.map(|v| (v - m).exp())).ln() + m
}

/// One integer reduction with wrapping arithmetic; `L2`, `LogSum` and
/// `LogSumExp` go through `f64` and truncate, as ONNX's reference does.
fn fold_int<T: Int>(k: ReduceKind, g: &[T]) -> Result<T, EvalError> {
    let wsum = |it: &mut dyn Iterator<Item = T>| it.fold(T::ZERO, T::wrapping_add);
    let trunc = |v: f64| T::from_i128_wrapping(if v.is_nan() { 0 } else { v.trunc() as i128 });
    Ok(match k {
        ReduceKind::Sum => wsum(&mut g.iter().copied()),
        // The sum wraps in T; the division by the count (which need not fit
        // in T) truncates, as numpy's mean with an integer dtype does.
        ReduceKind::Mean => {
            if g.is_empty() {
                return Err(EvalError::new("ReduceMean of an empty integer set is undefined"));
            }
            T::from_i128_wrapping(wsum(&mut g.iter().copied()).to_i128() / g.len() as i128)
        }
        ReduceKind::Max => g.iter().copied().fold(T::MIN, Ord::max),
        ReduceKind::Min => g.iter().copied().fold(T::MAX, Ord::min),
        ReduceKind::Prod => g.iter().copied().fold(T::ONE, T::wrapping_mul),
        ReduceKind::L1 => wsum(&mut g.iter().map(|v| v.wrapping_abs())),
        ReduceKind::SumSquare => wsum(&mut g.iter().map(|&v| v.wrapping_mul(v))),
        ReduceKind::L2 => trunc(wsum(&mut g.iter().map(|&v| v.wrapping_mul(v))).to_f64().sqrt()),
        ReduceKind::LogSum => trunc(wsum(&mut g.iter().copied()).to_f64().ln()),
        ReduceKind::LogSumExp => trunc(log_sum_exp(g.iter().map(|v| v.to_f64()))),
    })
}

/// Index of the largest (`max`) or smallest element of a non-empty lane:
/// the first one, or the last with `last`. NaN beats every number (numpy).
pub(crate) fn arg_best<T: PartialOrd + Copy>(lane: &[T], max: bool, last: bool) -> usize {
    #[allow(clippy::eq_op)]
    let is_nan = |v: T| v != v;
    let mut best = 0;
    for (i, &v) in lane.iter().enumerate().skip(1) {
        let b = lane[best];
        let wins = if is_nan(b) {
            last && is_nan(v)
        } else {
            is_nan(v) || (if max { v > b } else { v < b }) || (last && v == b)
        };
        if wins {
            best = i;
        }
    }
    best
}

fn arg_reduce(a: &ArgReduce, max: bool, inputs: &[Option<Value>]) -> Result<Tensor, EvalError> {
    let name = if max { "ArgMax" } else { "ArgMin" };
    let x = tensor_arg(inputs, 0, "data")?;
    let axis = normalize_axis(a.axis, x.rank())?;
    if x.shape()[axis] == 0 {
        return Err(EvalError::new(format!("{name} over axis {axis} of size 0 has no answer")));
    }
    fn go<T: PartialOrd + Copy, S: Data<Elem = T>>(
        x: &ArrayBase<S, IxDyn>,
        axis: usize,
        max: bool,
        last: bool,
    ) -> Result<ArrayD<i64>, EvalError> {
        map_lanes(x, axis, 1, |lane, out| out.push(arg_best(lane, max, last) as i64))
    }
    let last = a.select_last_index;
    let out = match_real!(x.data(), d => go(d, axis, max, last),
        _ => match_int!(x.data(), d => go(d, axis, max, last), _ => return Err(bad_type(name, x.dtype()))))?;
    let out = if a.keepdims { out } else { out.index_axis_move(Axis(axis), 0) };
    Ok(Tensor::from(out))
}

#[cfg(test)]
mod tests;

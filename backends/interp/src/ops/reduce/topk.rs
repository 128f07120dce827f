//! `TopK`: the k largest or smallest elements along an axis, with indices.

use super::map_lanes;
use crate::ops::elementwise::bad_type;
use crate::ops::elementwise::num::{match_int, match_real};
use crate::util::{i64_values, normalize_axis, tensor_arg};
use ndarray::{ArrayBase, ArrayD, Data, IxDyn};
use sharc_ir::op::TopK;
use sharc_ir::{Element, EvalError, Tensor, Value};
use std::cmp::Ordering;

/// The order `TopK` sorts by: NaN above every number (as numpy sorts it, which
/// ONNX's reference uses), equal values by ascending index.
fn rank<T: PartialOrd>(a: &T, b: &T) -> Ordering {
    #[allow(clippy::eq_op)]
    let (a_nan, b_nan) = (a != a, b != b);
    match (a_nan, b_nan) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(b).unwrap_or(Ordering::Equal),
    }
}

pub(super) fn top_k(t: &TopK, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let x = tensor_arg(inputs, 0, "X")?;
    let k = i64_values(tensor_arg(inputs, 1, "K")?, "K")?;
    let [k] = k[..] else {
        return Err(EvalError::new(format!("TopK's K must hold one value, got {}", k.len())));
    };
    let axis = normalize_axis(t.axis, x.rank())?;
    let n = x.shape()[axis];
    if k < 0 || k as usize > n {
        return Err(EvalError::new(format!("TopK's K = {k} is outside [0, {n}] (the size of axis {axis})")));
    }
    let k = k as usize;
    let largest = t.largest;
    fn go<T: PartialOrd + Element + Copy, S: Data<Elem = T>>(
        x: &ArrayBase<S, IxDyn>,
        axis: usize,
        k: usize,
        largest: bool,
    ) -> Result<Vec<Value>, EvalError> {
        let pairs: ArrayD<(T, i64)> = map_lanes(x, axis, k, |lane, out| {
            let mut order: Vec<usize> = (0..lane.len()).collect();
            // A stable sort keeps equal values in index order either way.
            if largest {
                order.sort_by(|&i, &j| rank(&lane[j], &lane[i]));
            } else {
                order.sort_by(|&i, &j| rank(&lane[i], &lane[j]));
            }
            out.extend(order[..k].iter().map(|&i| (lane[i], i as i64)));
        })?;
        let values = pairs.map(|p| p.0);
        let indices = pairs.map(|p| p.1);
        Ok(vec![Value::Tensor(Tensor::from(values)), Value::Tensor(Tensor::from(indices))])
    }
    match_real!(x.data(), d => go(d, axis, k, largest),
        _ => match_int!(x.data(), d => go(d, axis, k, largest), _ => Err(bad_type("TopK", x.dtype()))))
}

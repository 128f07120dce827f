//! `CumSum` and `CumProd`.

use super::map_lanes;
use crate::ops::elementwise::bad_type;
use crate::ops::elementwise::num::{Int, Real, match_int, match_real};
use crate::util::{i64_values, normalize_axis, tensor_arg};
use ndarray::{ArrayBase, ArrayD, Data, IxDyn};
use sharc_ir::op::Cumulative;
use sharc_ir::{EvalError, Tensor, Value};

/// Running sums (or products) along the axis given as the second input.
/// `exclusive` leaves out the element itself (the first output is the
/// identity), `reverse` runs from the end.
pub(super) fn cumulative(c: &Cumulative, prod: bool, inputs: &[Option<Value>]) -> Result<Tensor, EvalError> {
    let name = if prod { "CumProd" } else { "CumSum" };
    let x = tensor_arg(inputs, 0, "x")?;
    let axis = i64_values(tensor_arg(inputs, 1, "axis")?, "axis")?;
    let [axis] = axis[..] else {
        return Err(EvalError::new(format!("{name}'s axis must hold one value, got {}", axis.len())));
    };
    let axis = normalize_axis(axis, x.rank())?;
    let (exclusive, reverse) = (c.exclusive, c.reverse);
    // Floats accumulate in f64 and round each output once.
    fn real<T: Real, S: Data<Elem = T>>(
        x: &ArrayBase<S, IxDyn>,
        axis: usize,
        prod: bool,
        exclusive: bool,
        reverse: bool,
    ) -> Result<ArrayD<T>, EvalError> {
        let (init, step): (f64, fn(f64, f64) -> f64) = if prod { (1.0, |a, v| a * v) } else { (0.0, |a, v| a + v) };
        scan(x, axis, exclusive, reverse, init, |a, v: &T| step(a, v.to_f64()), T::from_f64)
    }
    fn int<T: Int, S: Data<Elem = T>>(
        x: &ArrayBase<S, IxDyn>,
        axis: usize,
        prod: bool,
        exclusive: bool,
        reverse: bool,
    ) -> Result<ArrayD<T>, EvalError> {
        let (init, step): (T, fn(T, T) -> T) =
            if prod { (T::ONE, T::wrapping_mul) } else { (T::ZERO, T::wrapping_add) };
        scan(x, axis, exclusive, reverse, init, |a, v: &T| step(a, *v), |a| a)
    }
    match_real!(x.data(), a => Ok(Tensor::from(real(a, axis, prod, exclusive, reverse)?)),
        _ => match_int!(x.data(), a => Ok(Tensor::from(int(a, axis, prod, exclusive, reverse)?)),
            _ => Err(bad_type(name, x.dtype()))))
}

fn scan<T: Clone, A: Copy, S: Data<Elem = T>>(
    x: &ArrayBase<S, IxDyn>,
    axis: usize,
    exclusive: bool,
    reverse: bool,
    init: A,
    step: impl Fn(A, &T) -> A,
    finish: impl Fn(A) -> T,
) -> Result<ArrayD<T>, EvalError> {
    let n = x.shape()[axis];
    map_lanes(x, axis, n, |lane, out| {
        let start = out.len();
        out.extend(lane.iter().cloned());
        let mut acc = init;
        for k in 0..n {
            let j = if reverse { n - 1 - k } else { k };
            if exclusive {
                out[start + j] = finish(acc);
                acc = step(acc, &lane[j]);
            } else {
                acc = step(acc, &lane[j]);
                out[start + j] = finish(acc);
            }
        }
    })
}

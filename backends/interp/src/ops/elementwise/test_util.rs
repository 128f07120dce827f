//! Helpers for the op families' unit tests.

use crate::ops::{OpContext, run_op};
use sharc_ir::{Element, EvalError, Op, Tensor, Value};

/// Runs one op on tensors (`None` for an absent optional input).
pub(crate) fn eval(op: Op, inputs: Vec<Option<Tensor>>) -> Result<Vec<Tensor>, EvalError> {
    let args: Vec<Option<Value>> = inputs.into_iter().map(|t| t.map(Value::Tensor)).collect();
    let cx = OpContext { node_name: "test", num_outputs: 1, output_types: &[] };
    let out = run_op(&op, &args, &cx)?;
    Ok(out.into_iter().map(|v| v.into_tensor().expect("ops in these families return tensors")).collect())
}

/// Runs one op on present inputs and returns its first output; panics on error.
pub(crate) fn eval1(op: Op, inputs: Vec<Tensor>) -> Tensor {
    let name = op.op_type().to_string();
    eval(op, inputs.into_iter().map(Some).collect()).unwrap_or_else(|e| panic!("{name}: {e}")).remove(0)
}

/// Runs one op and returns its error message; panics if it succeeds.
pub(crate) fn eval_err(op: Op, inputs: Vec<Tensor>) -> String {
    match eval(op, inputs.into_iter().map(Some).collect()) {
        Ok(out) => panic!("expected an error, got {out:?}"),
        Err(e) => e.message,
    }
}

/// A tensor from a shape and values.
pub(crate) fn t<T: Element>(shape: &[usize], values: Vec<T>) -> Tensor {
    Tensor::from_vec(shape, values)
}

/// The elements of a tensor of type `T`, in row-major order.
pub(crate) fn vals<T: Element>(t: &Tensor) -> Vec<T> {
    t.as_array::<T>().unwrap_or_else(|| panic!("expected {:?}, got {t:?}", T::DTYPE)).iter().cloned().collect()
}

/// Elementwise closeness with NaN equal to NaN and a relative tolerance.
pub(crate) fn assert_close(got: &[f64], want: &[f64], rtol: f64) {
    assert_eq!(got.len(), want.len(), "lengths differ: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= rtol * w.abs().max(1e-30);
        assert!(ok, "element {i}: got {g}, want {w} (all: {got:?} vs {want:?})");
    }
}

/// The elements of an `f32` tensor widened to `f64`.
pub(crate) fn f32s(t: &Tensor) -> Vec<f64> {
    vals::<f32>(t).into_iter().map(f64::from).collect()
}

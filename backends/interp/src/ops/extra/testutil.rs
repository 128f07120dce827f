//! Helpers for the `extra` family's unit tests.

use super::run;
use crate::ops::OpContext;
use sharc_ir::{Op, Tensor, Type, Value};

/// A context declaring `n` outputs of unknown type.
pub(crate) fn cx(n: usize) -> OpContext<'static> {
    const UNKNOWN: &[Type] = &[Type::Unknown, Type::Unknown, Type::Unknown, Type::Unknown, Type::Unknown];
    OpContext { node_name: "test", num_outputs: n, output_types: &UNKNOWN[..n.min(UNKNOWN.len())] }
}

/// An f32 tensor from f64 literals.
pub(crate) fn f32s(shape: &[usize], v: Vec<f64>) -> Tensor {
    Tensor::from_vec(shape, v.into_iter().map(|x| x as f32).collect())
}

/// Runs an op that must succeed and returns its `n` outputs.
pub(crate) fn run_n(op: &Op, inputs: Vec<Option<Value>>, n: usize) -> Vec<Tensor> {
    let out = run(op, &inputs, &cx(n)).expect("op is in the extra family").expect("op succeeds");
    assert!(out.len() >= n, "expected {n} outputs, got {}", out.len());
    out.into_iter().take(n).map(|v| v.into_tensor().expect("a tensor output")).collect()
}

/// Runs a one-output op that must succeed.
pub(crate) fn run1(op: &Op, inputs: Vec<Option<Value>>) -> Tensor {
    run_n(op, inputs, 1).remove(0)
}

/// Asserts shape and values within an absolute tolerance (NaNs must match).
pub(crate) fn assert_close(t: &Tensor, shape: &[usize], want: &[f64], tol: f64) {
    assert_eq!(t.shape(), shape, "shape");
    let got = t.to_f64_vec().expect("a numeric tensor");
    assert_eq!(got.len(), want.len(), "element count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= tol;
        assert!(ok, "element {i}: got {g}, want {w} (all: {got:?})");
    }
}

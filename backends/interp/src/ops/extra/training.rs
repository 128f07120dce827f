//! `ai.onnx.preview.training` optimizers: `Adagrad`, `Adam` and
//! `Momentum`, each updating one or more tensors in a single step.
//!
//! The inputs are `R` (learning rate), `T` (update count) and then groups of
//! equally many tensors (values, gradients, accumulators); the outputs are the
//! updated values followed by the updated accumulators, group by group.

use super::common::{Floats, float_tensor, scalar_f64, scalar_i64};
use super::ml::AttrView;
use crate::util::tensor_arg;
use sharc_ir::{EvalError, Opaque, Value};

/// Runs a training op, or returns `None` if it is not one of ours.
pub(crate) fn run(o: &Opaque, inputs: &[Option<Value>]) -> Option<Result<Vec<Value>, EvalError>> {
    let a = AttrView(&o.attrs);
    Some(match o.op_type.as_str() {
        "Adagrad" => optimize(inputs, 3, |r, t, v| adagrad(&a, r, t, v)),
        "Adam" => optimize(inputs, 4, |r, t, v| adam(&a, r, t, v)),
        "Momentum" => optimize(inputs, 3, |r, t, v| momentum(&a, r, t, v)),
        _ => return None,
    })
}

/// Splits the inputs into `groups` lists of tensors, applies `step` to each
/// element position of each optimized tensor, and lays the results out as
/// ONNX wants (all new values, then each kind of new accumulator).
fn optimize(
    inputs: &[Option<Value>],
    groups: usize,
    step: impl Fn(f64, i64, &[f64]) -> Result<Vec<f64>, EvalError>,
) -> Result<Vec<Value>, EvalError> {
    let r = scalar_f64(tensor_arg(inputs, 0, "R")?, "R")?;
    let t = scalar_i64(tensor_arg(inputs, 1, "T")?, "T")?;
    let rest = inputs.len().saturating_sub(2);
    if rest == 0 || !rest.is_multiple_of(groups) {
        return Err(EvalError::new(format!("expected a multiple of {groups} tensors after R and T, got {rest}")));
    }
    let n = rest / groups;
    let outs_per = groups - 1;
    let mut result = vec![None; n * outs_per];
    for i in 0..n {
        let tensors: Vec<Floats> = (0..groups)
            .map(|g| Floats::read(tensor_arg(inputs, 2 + g * n + i, "optimizer input")?, "optimizer input"))
            .collect::<Result<_, _>>()?;
        let x = &tensors[0];
        if let Some(bad) = tensors.iter().find(|f| f.shape != x.shape) {
            return Err(EvalError::new(format!("tensor {i}: shapes {:?} and {:?} differ", x.shape, bad.shape)));
        }
        let mut outs = vec![Vec::with_capacity(x.data.len()); outs_per];
        let mut args = vec![0.0; groups];
        for k in 0..x.data.len() {
            for (a, f) in args.iter_mut().zip(&tensors) {
                *a = f.data[k];
            }
            for (o, v) in outs.iter_mut().zip(step(r, t, &args)?) {
                o.push(v);
            }
        }
        for (j, o) in outs.into_iter().enumerate() {
            result[j * n + i] = Some(Value::Tensor(float_tensor(x.dtype, &x.shape, o)?));
        }
    }
    Ok(result.into_iter().map(|v| v.expect("every output was set")).collect())
}

/// One Adagrad step on `[x, g, h]`, giving `[x_new, h_new]`.
fn adagrad(a: &AttrView, r: f64, t: i64, v: &[f64]) -> Result<Vec<f64>, EvalError> {
    let decay = a.float("decay_factor", 0.0)? as f64;
    let eps = a.float("epsilon", 1e-6)? as f64;
    let norm = a.float("norm_coefficient", 0.0)? as f64;
    let (x, g, h) = (v[0], v[1], v[2]);
    let rate = r / (1.0 + t as f64 * decay);
    let gr = norm * x + g;
    let h_new = h + gr * gr;
    Ok(vec![x - rate * gr / (h_new.sqrt() + eps), h_new])
}

/// One Adam step on `[x, g, v, h]`, giving `[x_new, v_new, h_new]`.
fn adam(a: &AttrView, r: f64, t: i64, v: &[f64]) -> Result<Vec<f64>, EvalError> {
    let alpha = a.float("alpha", 0.9)? as f64;
    let beta = a.float("beta", 0.999)? as f64;
    let eps = a.float("epsilon", 1e-6)? as f64;
    let norm = a.float("norm_coefficient", 0.0)? as f64;
    let post = a.float("norm_coefficient_post", 0.0)? as f64;
    let (x, g, m, h) = (v[0], v[1], v[2], v[3]);
    let gr = norm * x + g;
    let m_new = alpha * m + (1.0 - alpha) * gr;
    let h_new = beta * h + (1.0 - beta) * gr * gr;
    let rate = if t > 0 { r * (1.0 - beta.powf(t as f64)).sqrt() / (1.0 - alpha.powf(t as f64)) } else { r };
    let x_new = x - rate * (m_new / (h_new.sqrt() + eps));
    Ok(vec![(1.0 - post) * x_new, m_new, h_new])
}

/// One momentum step on `[x, g, v]`, giving `[x_new, v_new]`.
fn momentum(a: &AttrView, r: f64, t: i64, v: &[f64]) -> Result<Vec<f64>, EvalError> {
    let required = |name: &str| -> Result<f64, EvalError> {
        if a.0.contains_key(name) {
            Ok(a.float(name, 0.0)? as f64)
        } else {
            Err(EvalError::new(format!("attribute '{name}' is required")))
        }
    };
    let (alpha, beta, norm) = (required("alpha")?, required("beta")?, required("norm_coefficient")?);
    let nesterov = match a.string("mode")?.as_deref() {
        Some("standard") => false,
        Some("nesterov") => true,
        Some(m) => return Err(EvalError::new(format!("mode '{m}' is not standard or nesterov"))),
        None => return Err(EvalError::new("attribute 'mode' is required")),
    };
    let (x, g, m) = (v[0], v[1], v[2]);
    let gr = norm * x + g;
    let beta = if t > 0 { beta } else { 1.0 };
    let m_new = alpha * m + beta * gr;
    let x_new = if nesterov { x - r * (gr + alpha * m_new) } else { x - r * m_new };
    Ok(vec![x_new, m_new])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::extra::testutil::{assert_close, f32s, run_n};
    use sharc_ir::{Attr, Op, Tensor};

    fn op(name: &str, attrs: Vec<(&str, Attr)>) -> Op {
        Op::Opaque(Opaque {
            domain: "ai.onnx.preview.training".into(),
            op_type: name.into(),
            attrs: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        })
    }

    fn t(v: Vec<f64>) -> Option<Value> {
        Some(Value::Tensor(f32s(&[v.len()], v)))
    }

    fn rt() -> Vec<Option<Value>> {
        vec![Some(Value::Tensor(Tensor::scalar(0.1f32))), Some(Value::Tensor(Tensor::scalar(1i64)))]
    }

    // Expected values from onnx.reference.
    #[test]
    fn adagrad_two_tensors() {
        let a = op("Adagrad", vec![("decay_factor", Attr::Float(0.1)), ("epsilon", Attr::Float(1e-5))]);
        let mut inputs = rt();
        inputs.extend([
            t(vec![1.0, 2.0]),
            t(vec![3.0]),
            t(vec![-1.0, 0.5]),
            t(vec![2.0]),
            t(vec![2.0, 1.0]),
            t(vec![0.5]),
        ]);
        let out = run_n(&a, inputs, 4);
        assert_close(&out[0], &[2], &[1.052486, 1.959345], 1e-5);
        assert_close(&out[1], &[1], &[2.91429], 1e-5);
        assert_close(&out[2], &[2], &[3.0, 1.25], 1e-6);
        assert_close(&out[3], &[1], &[4.5], 1e-6);
    }

    #[test]
    fn adam_and_momentum() {
        let a = op(
            "Adam",
            vec![("alpha", Attr::Float(0.9)), ("beta", Attr::Float(0.99)), ("norm_coefficient", Attr::Float(0.001))],
        );
        let mut inputs = rt();
        inputs.extend([t(vec![1.2, 2.8]), t(vec![-0.94, -2.5]), t(vec![1.7, 3.6]), t(vec![0.1, 0.1])]);
        let out = run_n(&a, inputs, 3);
        assert_close(&out[0], &[2], &[0.7626264, 2.05559], 1e-5);
        assert_close(&out[1], &[2], &[1.43612, 2.99028], 1e-5);
        assert_close(&out[2], &[2], &[0.1078134, 0.16136], 1e-6);
        let m = |mode: &str| {
            op(
                "Momentum",
                vec![
                    ("alpha", Attr::Float(0.95)),
                    ("beta", Attr::Float(0.1)),
                    ("norm_coefficient", Attr::Float(0.001)),
                    ("mode", Attr::String(mode.into())),
                ],
            )
        };
        let mut inputs = rt();
        inputs.extend([t(vec![1.2, 2.8]), t(vec![-0.94, -2.5]), t(vec![1.7, 3.6])]);
        let out = run_n(&m("standard"), inputs.clone(), 2);
        assert_close(&out[0], &[2], &[1.047888, 2.482972], 1e-5);
        assert_close(&out[1], &[2], &[1.52112, 3.17028], 1e-6);
        let out = run_n(&m("nesterov"), inputs, 2);
        assert_close(&out[0], &[2], &[1.149374, 2.748543], 1e-5);
    }
}

//! The losses `NegativeLogLikelihoodLoss` and `SoftmaxCrossEntropyLoss`.
//!
//! Both gather `-input[n, target[n, d...], d...]`, weight it by the target
//! class's weight (0 for `ignore_index`) and reduce: `mean` divides by the
//! sum of the weights that were applied, so ignored positions count neither
//! in the numerator nor in the denominator.

use super::common::{Floats, float_tensor, outputs};
use crate::util::{opt_tensor_arg, tensor_arg};
use sharc_ir::op::{Loss, LossReduction};
use sharc_ir::{EvalError, Value};

/// Computes the weighted, reduced negative log-likelihood of `logp` (shape
/// `(N, C, d...)`) at the `target` classes.
fn nll(
    logp: &Floats,
    target: &[i64],
    target_shape: &[usize],
    weight: Option<&[f64]>,
    a: &Loss,
) -> Result<Floats, EvalError> {
    let shape = &logp.shape;
    if shape.len() < 2 {
        return Err(EvalError::new(format!("input must be at least 2-D (N, C, ...), got {shape:?}")));
    }
    let (n, c) = (shape[0], shape[1]);
    let want: Vec<usize> = std::iter::once(n).chain(shape[2..].iter().copied()).collect();
    if target_shape != want.as_slice() {
        return Err(EvalError::new(format!("target has shape {target_shape:?}, expected {want:?}")));
    }
    if let Some(w) = weight
        && w.len() != c
    {
        return Err(EvalError::new(format!("weight has {} entries for {c} classes", w.len())));
    }
    let d: usize = shape[2..].iter().product();
    let mut loss = vec![0.0; n * d];
    let mut weights = vec![0.0; n * d];
    for i in 0..n {
        for k in 0..d {
            let t = target[i * d + k];
            if Some(t) == a.ignore_index {
                continue;
            }
            let class = usize::try_from(t)
                .ok()
                .filter(|&t| t < c)
                .ok_or_else(|| EvalError::new(format!("target class {t} is outside [0, {c})")))?;
            let w = weight.map_or(1.0, |w| w[class]);
            loss[i * d + k] = -logp.data[(i * c + class) * d + k] * w;
            weights[i * d + k] = w;
        }
    }
    let dtype = logp.dtype;
    Ok(match a.reduction {
        LossReduction::None => Floats { dtype, shape: want, data: loss },
        LossReduction::Sum => Floats { dtype, shape: vec![], data: vec![loss.iter().sum()] },
        LossReduction::Mean => {
            // 0 / 0 (everything ignored) is NaN, as in the reference.
            let total: f64 = weights.iter().sum();
            Floats { dtype, shape: vec![], data: vec![loss.iter().sum::<f64>() / total] }
        }
    })
}

fn read_target(inputs: &[Option<Value>]) -> Result<(Vec<i64>, Vec<usize>), EvalError> {
    let t = tensor_arg(inputs, 1, "target")?;
    let v =
        t.to_i64_vec().ok_or_else(|| EvalError::new(format!("target must be an integer tensor, got {}", t.dtype())))?;
    Ok((v, t.shape().to_vec()))
}

fn read_weight(inputs: &[Option<Value>]) -> Result<Option<Vec<f64>>, EvalError> {
    opt_tensor_arg(inputs, 2, "weight")?.map(|t| Floats::read(t, "weight").map(|f| f.data)).transpose()
}

/// Runs `NegativeLogLikelihoodLoss`.
pub(crate) fn nll_loss(a: &Loss, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let x = Floats::read(tensor_arg(inputs, 0, "input")?, "input")?;
    let (target, tshape) = read_target(inputs)?;
    let weight = read_weight(inputs)?;
    let loss = nll(&x, &target, &tshape, weight.as_deref(), a)?;
    outputs(vec![float_tensor(x.dtype, &loss.shape, loss.data)?])
}

/// Runs `SoftmaxCrossEntropyLoss`: the NLL of `log_softmax(scores, axis 1)`,
/// with the log-probabilities as optional second output.
pub(crate) fn softmax_cross_entropy(
    a: &Loss,
    inputs: &[Option<Value>],
    num_outputs: usize,
) -> Result<Vec<Value>, EvalError> {
    let x = Floats::read(tensor_arg(inputs, 0, "scores")?, "scores")?;
    if x.rank() < 2 {
        return Err(EvalError::new(format!("scores must be at least 2-D (N, C, ...), got {:?}", x.shape)));
    }
    let (n, c) = (x.shape[0], x.shape[1]);
    let d: usize = x.shape[2..].iter().product();
    let mut logp = x.clone();
    for i in 0..n {
        for k in 0..d {
            let idx = |j: usize| (i * c + j) * d + k;
            let m = (0..c).map(|j| x.data[idx(j)]).fold(f64::NEG_INFINITY, f64::max);
            let lse = m + (0..c).map(|j| (x.data[idx(j)] - m).exp()).sum::<f64>().ln();
            for j in 0..c {
                logp.data[idx(j)] = x.data[idx(j)] - lse;
            }
        }
    }
    let (target, tshape) = read_target(inputs)?;
    let weight = read_weight(inputs)?;
    let loss = nll(&logp, &target, &tshape, weight.as_deref(), a)?;
    let mut result = vec![float_tensor(x.dtype, &loss.shape, loss.data)?];
    if num_outputs > 1 {
        result.push(float_tensor(x.dtype, &logp.shape, logp.data)?);
    }
    outputs(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::extra::run;
    use crate::ops::extra::testutil::{assert_close, cx, f32s, run_n};
    use sharc_ir::{Op, Tensor};

    fn inputs(target: Vec<i64>, weight: bool) -> Vec<Option<Value>> {
        let x = vec![-0.5, 0.0069, -0.4862, 0.0207, -0.4724, 0.0345, -0.4586, 0.0483, -0.4448, 0.0621, -0.431, 0.0759];
        let mut v =
            vec![Some(Value::Tensor(f32s(&[2, 3, 2], x))), Some(Value::Tensor(Tensor::from_vec(&[2, 2], target)))];
        if weight {
            v.push(Some(Value::Tensor(f32s(&[3], vec![0.5, 2.0, 1.5]))));
        }
        v
    }

    fn loss(reduction: LossReduction) -> Loss {
        Loss { ignore_index: Some(-1), reduction }
    }

    // Expected values from onnx.reference.
    #[test]
    fn nll_reductions_with_weights_and_ignore_index() {
        let nll = |r| run_n(&Op::NegativeLogLikelihoodLoss(loss(r)), inputs(vec![2, -1, 0, 1], true), 1).remove(0);
        assert_close(&nll(LossReduction::None), &[2, 2], &[0.7086, 0.0, 0.2293, -0.1242], 1e-6);
        assert_close(&nll(LossReduction::Sum), &[], &[0.8137001], 1e-6);
        // The mean divides by the applied weights 1.5 + 0.5 + 2.0.
        assert_close(&nll(LossReduction::Mean), &[], &[0.203425], 1e-6);
    }

    #[test]
    fn softmax_cross_entropy_and_log_prob() {
        let sce = |r| run_n(&Op::SoftmaxCrossEntropyLoss(loss(r)), inputs(vec![2, -1, 0, 1], true), 2);
        assert_close(&sce(LossReduction::None)[0], &[2, 2], &[1.627314, 0.0, 0.5562379, 2.197351], 1e-6);
        assert_close(&sce(LossReduction::Sum)[0], &[], &[4.380903], 1e-5);
        let out = sce(LossReduction::Mean);
        assert_close(&out[0], &[], &[1.095226], 1e-6);
        let logp = [
            -1.112476, -1.112476, -1.098676, -1.098676, -1.084876, -1.084876, -1.112476, -1.112476, -1.098676,
            -1.098676, -1.084876, -1.084876,
        ];
        assert_close(&out[1], &[2, 3, 2], &logp, 1e-6);
        let plain = Loss { ignore_index: None, reduction: LossReduction::Mean };
        let out = run_n(&Op::SoftmaxCrossEntropyLoss(plain), inputs(vec![2, 0, 0, 1], false), 1);
        assert_close(&out[0], &[], &[1.102126], 1e-6);
    }

    #[test]
    fn loss_rejects_out_of_range_targets_and_bad_shapes() {
        let op = Op::NegativeLogLikelihoodLoss(loss(LossReduction::Mean));
        let e = run(&op, &inputs(vec![3, 0, 0, 1], false), &cx(1)).unwrap().unwrap_err();
        assert!(e.message.contains("target class 3"), "{e}");
        let mut bad = inputs(vec![0, 0, 0, 1], false);
        bad[1] = Some(Value::Tensor(Tensor::from_vec(&[4], vec![0i64; 4])));
        assert!(run(&op, &bad, &cx(1)).unwrap().is_err());
    }
}

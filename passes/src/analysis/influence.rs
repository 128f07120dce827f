//! Block importance from calibration data: ShortGPT's Block Influence.
//!
//! `BI_i = 1 − mean over tokens of cos(x_i, x_{i+1})`, where `x_i` is block
//! `i`'s input on the residual stream and `x_{i+1}` its output. A block that
//! barely turns the stream (cosine near 1) has little influence and is the
//! first to go. The angular variant replaces `1 − cos` by `arccos(cos)/π`,
//! which spreads out values that all sit close to 0.
//!
//! Both are measured in one streaming pass: only one batch of activations
//! is alive at a time, and padding tokens (per the `attention_mask` input,
//! when the model has one) are left out.

use super::blocks::BlockAnalysis;
use super::calibration::{CalibrationError, Probe, f32_data, for_each_batch, token_mask};
use super::similarity::cosine;
use serde::Serialize;
use sharc_ir::{Evaluator, Graph, Value};

/// The influence of every block.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BlockInfluence {
    /// `1 − mean cos(x_i, x_{i+1})` per block.
    pub influence: Vec<f64>,
    /// `mean arccos(cos(x_i, x_{i+1}))/π` per block.
    pub angular: Vec<f64>,
    /// Tokens averaged over.
    pub tokens: u64,
}

/// Measures the influence of every block of `an` on `batches`.
pub fn block_influence(
    ev: &dyn Evaluator,
    g: &Graph,
    an: &BlockAnalysis,
    batches: &[Vec<Value>],
) -> Result<BlockInfluence, CalibrationError> {
    let boundaries = an.boundaries();
    let probe = Probe::new(g, &boundaries)?;
    let n = an.blocks.len();
    let (mut cos_sum, mut ang_sum) = (vec![0.0f64; n], vec![0.0f64; n]);
    let mut tokens = 0u64;
    for_each_batch(ev, &probe, batches, "block influence", |_, batch, out| {
        let acts = out.probes.iter().map(f32_data).collect::<Result<Vec<_>, _>>()?;
        let dim = *out.probes[0].shape().last().ok_or("a probed block boundary is a scalar")?;
        if dim == 0 || acts.iter().any(|a| a.len() != acts[0].len()) || !acts[0].len().is_multiple_of(dim) {
            return Err("block boundaries differ in shape; block influence needs the residual stream".to_string());
        }
        let rows = acts[0].len() / dim;
        let mask = token_mask(g, batch).filter(|m| m.len() == rows);
        for r in (0..rows).filter(|&r| mask.as_ref().is_none_or(|m| m[r])) {
            for i in 0..n {
                let c = cosine(&acts[i][r * dim..(r + 1) * dim], &acts[i + 1][r * dim..(r + 1) * dim]);
                cos_sum[i] += c;
                ang_sum[i] += c.acos() / std::f64::consts::PI;
            }
            tokens += 1;
        }
        Ok(())
    })?;
    if tokens == 0 {
        return Err(CalibrationError::Data("no tokens to measure block influence on".to_string()));
    }
    let t = tokens as f64;
    Ok(BlockInfluence {
        influence: cos_sum.iter().map(|c| 1.0 - c / t).collect(),
        angular: ang_sum.iter().map(|a| a / t).collect(),
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::blocks::find_blocks;
    use crate::analysis::blocks::tests::synthetic;
    use sharc_interp::Interpreter;
    use sharc_ir::Tensor;
    use sharc_ir::text::parse;

    #[test]
    fn influence_matches_cosines_computed_by_hand() {
        let g = parse(&synthetic(&["Relu"; 3], 4, 8)).unwrap();
        let an = find_blocks(&g).unwrap();
        let x: Vec<f32> = (0..2 * 3 * 4).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let batch = vec![Value::Tensor(Tensor::from_vec(&[2, 3, 4], x))];
        let bi = block_influence(&Interpreter::new(), &g, &an, std::slice::from_ref(&batch)).unwrap();
        assert_eq!(bi.tokens, 6);
        // The same numbers from the boundary activations directly.
        let probe = Probe::new(&g, &an.boundaries()).unwrap();
        let out = probe.run(&Interpreter::new(), &batch).unwrap();
        let acts: Vec<Vec<f32>> = out.probes.iter().map(|t| f32_data(t).unwrap()).collect();
        for i in 0..3 {
            let mean: f64 =
                (0..6).map(|r| cosine(&acts[i][r * 4..r * 4 + 4], &acts[i + 1][r * 4..r * 4 + 4])).sum::<f64>() / 6.0;
            assert!((bi.influence[i] - (1.0 - mean)).abs() < 1e-12);
            assert!(bi.angular[i] > 0.0 && bi.angular[i] < 1.0);
        }
    }
}

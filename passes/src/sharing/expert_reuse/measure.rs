//! Running a graph on calibration batches to read inner values, and the
//! fidelity measures the MoE and dictionary reports share.

use crate::sharing::report::{argmax, log_softmax};
use sharc_ir::{Evaluator, Graph, GraphOutput, NodeId, Op, Tensor, Value, ValueRef};
use std::collections::{HashSet, VecDeque};

/// Runs `g` on every calibration batch with `values` as its outputs and
/// hands each batch's tensors to `f` (so memory stays bounded by one batch).
pub fn for_each_probe(
    ev: &dyn Evaluator,
    g: &Graph,
    values: &[ValueRef],
    batches: &[Vec<Value>],
    mut f: impl FnMut(usize, Vec<Tensor>) -> Result<(), String>,
) -> Result<(), String> {
    let mut probe = g.clone();
    *probe.outputs_mut() =
        values.iter().enumerate().map(|(i, v)| GraphOutput { name: format!("probe_{i}"), value: *v }).collect();
    for (b, batch) in batches.iter().enumerate() {
        let outs =
            ev.evaluate(&probe, batch).map_err(|e| format!("calibration batch {b} failed on {}: {e}", ev.name()))?;
        let tensors = outs
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.into_tensor().ok_or_else(|| format!("probe value {i} of batch {b} is not a tensor")))
            .collect::<Result<Vec<_>, _>>()?;
        f(b, tensors)?;
    }
    Ok(())
}

/// A tensor's elements as `f32`, or an error naming what it holds.
pub fn floats(t: &Tensor) -> Result<Vec<f32>, String> {
    match t.to_f64_vec() {
        Some(v) => Ok(v.into_iter().map(|x| x as f32).collect()),
        None => Err(format!("expected a float tensor, found {}{:?}", t.dtype(), t.shape())),
    }
}

/// Sums for relative mean squared error, `Σ(a−b)² / Σa²`, over many batches.
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorSum {
    diff: f64,
    reference: f64,
    max_abs: f64,
}

impl ErrorSum {
    /// Adds a reference/approximation pair of equal length.
    pub fn add(&mut self, reference: &[f32], approx: &[f32]) -> Result<(), String> {
        if reference.len() != approx.len() {
            return Err(format!("compared tensors have {} and {} elements", reference.len(), approx.len()));
        }
        for (a, b) in reference.iter().zip(approx) {
            let d = f64::from(*a) - f64::from(*b);
            self.diff += d * d;
            self.reference += f64::from(*a) * f64::from(*a);
            self.max_abs = self.max_abs.max(d.abs());
        }
        Ok(())
    }

    /// `Σ(a−b)² / Σa²` (0 when both are zero).
    pub fn relative_mse(&self) -> f64 {
        if self.reference == 0.0 {
            if self.diff == 0.0 { 0.0 } else { f64::INFINITY }
        } else {
            self.diff / self.reference
        }
    }

    /// The largest absolute difference seen.
    pub fn max_abs(&self) -> f64 {
        self.max_abs
    }
}

/// Next-token (or per-position) agreement of two logit tensors whose last
/// dim is the vocabulary: mean `KL(p_ref ‖ p_new)` and top-1 agreement.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogitSum {
    kl: f64,
    agree: u64,
    rows: u64,
}

impl LogitSum {
    /// Adds the rows of two logit tensors of `vocab` columns.
    pub fn add(&mut self, reference: &[f32], approx: &[f32], vocab: usize) -> Result<(), String> {
        if reference.len() != approx.len() || vocab == 0 || !reference.len().is_multiple_of(vocab) {
            return Err(format!(
                "logits of {} and {} elements do not split into rows of {vocab}",
                reference.len(),
                approx.len()
            ));
        }
        for (r, a) in reference.chunks(vocab).zip(approx.chunks(vocab)) {
            let lp = log_softmax(r);
            let lq = log_softmax(a);
            self.kl += lp.iter().zip(&lq).map(|(p, q)| p.exp() * (p - q)).sum::<f64>();
            // log-softmax is strictly increasing, so its argmax is the logits'.
            if argmax(&lp) == argmax(&lq) {
                self.agree += 1;
            }
            self.rows += 1;
        }
        Ok(())
    }

    /// Mean KL divergence in nats.
    pub fn mean_kl(&self) -> f64 {
        if self.rows == 0 { 0.0 } else { self.kl / self.rows as f64 }
    }

    /// Fraction of rows whose argmax agrees.
    pub fn top1(&self) -> f64 {
        if self.rows == 0 { 1.0 } else { self.agree as f64 / self.rows as f64 }
    }
}

/// Removes nodes no graph output depends on (graph inputs stay) and then
/// weights no node uses; returns how many nodes went.
pub fn remove_dead_nodes(g: &mut Graph) -> usize {
    let mut live: HashSet<NodeId> = HashSet::new();
    let mut queue: VecDeque<NodeId> = g.outputs().iter().map(|o| o.value.node).collect();
    while let Some(n) = queue.pop_front() {
        if live.insert(n) {
            queue.extend(g.predecessors(n));
        }
    }
    let inputs: HashSet<NodeId> = g.inputs().iter().chain(g.captures()).copied().collect();
    let dead: Vec<NodeId> = g.node_ids().filter(|n| !live.contains(n) && !inputs.contains(n)).collect();
    for &n in &dead {
        g.remove_node(n);
    }
    g.remove_unused_weights();
    dead.len()
}

/// True when the node computes only from weights and constants.
pub fn is_weight_side(g: &Graph, n: NodeId) -> bool {
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([n]);
    while let Some(id) = queue.pop_front() {
        if !seen.insert(id) {
            continue;
        }
        match g.node(id).op {
            Op::Input => return false,
            Op::Weight(_) | Op::Constant(_) => {}
            _ => queue.extend(g.predecessors(id)),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_and_top1_by_hand() {
        let mut s = LogitSum::default();
        // Identical rows: KL 0, agreement.
        s.add(&[1.0, 2.0], &[1.0, 2.0], 2).unwrap();
        assert!(s.mean_kl().abs() < 1e-12);
        assert_eq!(s.top1(), 1.0);
        // p = softmax(0, 0) = (½, ½), q = softmax(ln 3, 0) = (¾, ¼):
        // KL = ½ ln(⅔) + ½ ln(2) = ½ ln(4/3).
        let mut t = LogitSum::default();
        t.add(&[0.0, 0.0], &[3f32.ln(), 0.0], 2).unwrap();
        assert!((t.mean_kl() - 0.5 * (4.0f64 / 3.0).ln()).abs() < 1e-6);
        assert!(t.add(&[0.0; 3], &[0.0; 3], 2).is_err());
    }

    #[test]
    fn relative_error_by_hand() {
        let mut e = ErrorSum::default();
        e.add(&[3.0, 4.0], &[3.0, 5.0]).unwrap();
        assert!((e.relative_mse() - 1.0 / 25.0).abs() < 1e-12);
        assert_eq!(e.max_abs(), 1.0);
        assert!(e.add(&[1.0], &[]).is_err());
    }
}

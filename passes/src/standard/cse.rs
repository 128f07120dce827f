//! `cse`: common-subexpression elimination.
//!
//! Two nodes that compute the same pure op on the same inputs compute the
//! same values, so the later one is dropped and its users read the earlier
//! one. Exports are full of such repeats: every attention layer of a torch
//! export computes `Shape(x)[0]` again, and constants like `0.5` or the
//! axis list `[0]` appear once per use.
//!
//! - Only pure ops merge ([`Op::is_pure`]): random ops, `Dropout` and opaque
//!   ops never do.
//! - Weight nodes merge when they refer to the same `WeightId` (that is
//!   sharing already); different weights with equal contents do not, because
//!   deciding to share parameters is the job of the sharing passes.
//! - Constants merge when their dtype, shape and bytes are identical, so `0.0`
//!   and `-0.0` stay apart.
//! - Commutative binary ops match with their inputs in either order
//!   (`Add(a, b)` = `Add(b, a)`, which IEEE arithmetic guarantees exactly).
//! - Ops with bodies merge only when their bodies print identically.
//! - Each body graph is processed on its own.

use crate::options::NoOptions;
use crate::patch::Patch;
use crate::registry::RegisteredPass;
use crate::{Pass, PassContext, PassError, PassOutcome};
use sharc_ir::{Graph, NodeId, Op, ValueRef, VariadicOp};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

/// The `cse` pass. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct Cse;

impl Pass for Cse {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let merged = cse_graph(g).map_err(|m| PassError::Failed { pass: Self::NAME.to_string(), message: m })?;
        cx.count(Self::NAME, "merged", merged as i64);
        Ok(PassOutcome::from_changed(merged > 0))
    }
}

impl RegisteredPass for Cse {
    type Options = NoOptions;
    const NAME: &'static str = "cse";
    const SUMMARY: &'static str = "Merge nodes that compute the same pure op on the same inputs";
    fn new(_: NoOptions) -> Cse {
        Cse
    }
}

/// What must agree for two nodes to be compared at all.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    fingerprint: u64,
    inputs: Vec<Option<ValueRef>>,
    outputs: usize,
}

fn commutes(op: &Op, n_inputs: usize) -> bool {
    n_inputs == 2
        && match op {
            Op::Binary(b) => b.is_commutative(),
            Op::Variadic(v) => matches!(v, VariadicOp::Max | VariadicOp::Min | VariadicOp::Sum | VariadicOp::Mean),
            _ => false,
        }
}

/// A hash of what an op is, cheap to compute (bodies are not walked).
fn fingerprint(op: &Op) -> u64 {
    let mut h = DefaultHasher::new();
    op.op_type().hash(&mut h);
    op.domain().hash(&mut h);
    match op {
        Op::Constant(t) => {
            t.dtype().hash(&mut h);
            t.shape().hash(&mut h);
            match t.to_le_bytes() {
                Some(b) => b.hash(&mut h),
                None => format!("{t:?}").hash(&mut h),
            }
        }
        Op::Weight(id) => id.hash(&mut h),
        op if op.subgraphs().is_empty() => format!("{op:?}").hash(&mut h),
        _ => {}
    }
    h.finish()
}

/// True when two ops compute the same function of their inputs.
fn same_op(a: &Op, b: &Op) -> bool {
    match (a, b) {
        (Op::Constant(x), Op::Constant(y)) => {
            x.dtype() == y.dtype()
                && x.shape() == y.shape()
                && match (x.to_le_bytes(), y.to_le_bytes()) {
                    (Some(p), Some(q)) => p == q,
                    _ => x == y,
                }
        }
        _ if !a.subgraphs().is_empty() => {
            a == b
                && a.subgraphs().len() == b.subgraphs().len()
                && a.subgraphs().iter().zip(b.subgraphs()).all(|(x, y)| sharc_ir::print(x) == sharc_ir::print(y))
        }
        _ => a == b,
    }
}

/// Merges repeated nodes of `g` and its bodies; returns how many were removed.
fn cse_graph(g: &mut Graph) -> Result<usize, String> {
    let mut merged = 0;
    let owners: Vec<NodeId> = g.node_ids().filter(|&n| !g.node(n).op.subgraphs().is_empty()).collect();
    for id in owners {
        for body in g.node_mut(id).op.subgraphs_mut() {
            merged += cse_graph(body)?;
        }
    }

    let order = g.topo_order().map_err(|e| format!("in graph '{}': {e}", g.name))?;
    let mut canon: HashMap<ValueRef, ValueRef> = HashMap::new();
    let mut seen: HashMap<Key, Vec<NodeId>> = HashMap::new();
    let mut patch = Patch::new();
    let mut local = 0;
    for id in order {
        let node = g.node(id);
        if matches!(node.op, Op::Input) || !node.op.is_pure() {
            continue;
        }
        let mut inputs: Vec<Option<ValueRef>> =
            g.node_inputs(id).into_iter().map(|v| v.map(|v| canon.get(&v).copied().unwrap_or(v))).collect();
        if commutes(&node.op, inputs.len()) {
            inputs.sort();
        }
        let key = Key { fingerprint: fingerprint(&node.op), inputs, outputs: node.outputs.len() };
        let bucket = seen.entry(key).or_default();
        match bucket.iter().find(|&&c| same_op(&g.node(c).op, &node.op)) {
            Some(&c) => {
                for port in 0..node.outputs.len() as u32 {
                    let (dup, keep) = (ValueRef::new(id, port), ValueRef::new(c, port));
                    canon.insert(dup, keep);
                    patch.replace_uses(dup, keep);
                }
                patch.remove_node(id);
                local += 1;
            }
            None => bucket.push(id),
        }
    }
    if local > 0 {
        patch.apply(g).map_err(|e| format!("in graph '{}': {e}", g.name))?;
    }
    Ok(merged + local)
}

#[cfg(test)]
mod tests {
    use crate::testing::{run_pipeline, run_pipeline_diff};
    use insta::assert_snapshot;

    #[test]
    fn merges_repeated_shape_arithmetic_transitively() {
        assert_snapshot!(run_pipeline(
            "graph @g(%x: f32[batch, seq, 64]) -> (%y) {
  %s1 = Shape(%x)
  %i1 = const i64[] 0
  %d1 = Gather(%s1, %i1)
  %s2 = Shape(%x)
  %i2 = const i64[] 0
  %d2 = Gather(%s2, %i2)
  %sum = Add(%d1, %d2)
  %y = Mul(%sum, %d2)
}",
            "cse"
        ));
    }

    #[test]
    fn commutative_ops_and_shared_weights_merge() {
        assert_snapshot!(run_pipeline_diff(
            "graph @g(%x: f32[4, 4], %z: f32[4, 4]) -> (%y, %u) {
  %w1 = weight @w : f32[4, 4]
  %w2 = weight @w : f32[4, 4]
  %m1 = MatMul(%x, %w1)
  %m2 = MatMul(%x, %w2)
  %a = Add(%m1, %z)
  %b = Add(%z, %m2)
  %s = Sub(%m1, %z)
  %t = Sub(%z, %m2)
  %y = Mul(%a, %b)
  %u = Mul(%s, %t)
}",
            "cse"
        ));
    }

    #[test]
    fn does_not_merge_impure_ops_different_weights_or_signed_zeros() {
        let src = "graph @g(%x: f32[4]) -> (%y) {
  %w1 = weight @w1 : f32[4] = [1.0, 2.0, 3.0, 4.0]
  %w2 = weight @w2 : f32[4] = [1.0, 2.0, 3.0, 4.0]
  %z1 = const f32[] 0.0
  %z2 = const f32[] -0.0
  %r1 = RandomUniformLike(%x)
  %r2 = RandomUniformLike(%x)
  %a = Add(%w1, %w2)
  %b = Add(%z1, %z2)
  %c = Add(%r1, %r2)
  %d = Add(%a, %b)
  %y = Add(%c, %d)
}
";
        let out = run_pipeline(src, "cse");
        assert_eq!(out, crate::testing::normalize(src));
        assert_snapshot!(out);
    }

    #[test]
    fn bodies_merge_only_when_identical() {
        assert_snapshot!(run_pipeline(
            "graph @g(%c: bool[], %x: f32[4]) -> (%y) {
  %a = If(%c, %x) {else_branch = graph @e() captures(%v: f32[4]) -> (%r) {
    %r = Neg(%v)
  }, then_branch = graph @t() captures(%v: f32[4]) -> (%r) {
    %r1 = Abs(%v)
    %r2 = Abs(%v)
    %r = Add(%r1, %r2)
  }}
  %b = If(%c, %x) {else_branch = graph @e() captures(%v: f32[4]) -> (%r) {
    %r = Neg(%v)
  }, then_branch = graph @t() captures(%v: f32[4]) -> (%r) {
    %r1 = Abs(%v)
    %r = Add(%r1, %r1)
  }}
  %d = If(%c, %x) {else_branch = graph @e() captures(%v: f32[4]) -> (%r) {
    %r = Neg(%v)
  }, then_branch = graph @t() captures(%v: f32[4]) -> (%r) {
    %r = Abs(%v)
  }}
  %s = Add(%a, %b)
  %y = Add(%s, %d)
}",
            "cse"
        ));
    }
}

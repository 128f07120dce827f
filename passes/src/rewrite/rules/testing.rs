//! Helpers for testing rules on small expressions.
//!
//! Leaves are written `v0`, `v1`, ... and given types up front; literals
//! are written inline (`f32[]:1`). A test saturates an expression with a
//! rule set and asks whether another expression ended up in the same class.

use super::super::analysis::{LeafInfo, LeafKind, TensorAnalysis, TensorGraph};
use super::super::lang::TensorLang;
use super::{Rule, RuleOptions};
use egg::{Id, RecExpr, Runner};
use sharc_ir::{DType, Dim, Fact, NodeId, Type, ValueRef};

/// A type from `f32[batch, 4]` (dims are numbers or symbols).
pub fn ty(s: &str) -> Type {
    let (dt, dims) = s.trim_end_matches(']').split_once('[').expect("a type like f32[2, 3]");
    let dtype = DType::from_name(dt).expect("a dtype name");
    let dims: Vec<Dim> = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<u64>().map(Dim::Fixed).unwrap_or_else(|_| Dim::sym(d)))
        .collect();
    Type::tensor(dtype, dims)
}

/// An e-graph holding `expr`, whose leaves `v0, v1, ...` have the given
/// types (leaf `i` is a weight when its type is written with a leading `w:`).
pub fn egraph_with(leaf_types: &[&str], expr: &str) -> (TensorGraph, Id) {
    let leaves = leaf_types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (kind, t) = match t.strip_prefix("w:") {
                Some(t) => (LeafKind::Weight, t),
                None => (LeafKind::Dynamic, *t),
            };
            LeafInfo { value: ValueRef::new(NodeId::new(i), 0), kind, fact: Fact::of_type(ty(t)) }
        })
        .collect();
    let mut eg = TensorGraph::new(TensorAnalysis { leaves, ops: Vec::new(), failures: Vec::new() });
    let e: RecExpr<TensorLang> = expr.parse().unwrap_or_else(|e| panic!("{expr}: {e}"));
    let root = eg.add_expr(&e);
    eg.rebuild();
    (eg, root)
}

/// Saturates with `rules` (a small budget: these are tiny expressions).
pub fn saturate(eg: TensorGraph, rules: &[Rule]) -> TensorGraph {
    let runner = Runner::default().with_egraph(eg).with_iter_limit(12).with_node_limit(5_000).run(rules);
    runner.egraph
}

/// True when `expr` is in the e-graph, in the class of `root`.
pub fn proves(eg: &mut TensorGraph, root: Id, expr: &str) -> bool {
    let e: RecExpr<TensorLang> = expr.parse().unwrap_or_else(|e| panic!("{expr}: {e}"));
    match eg.lookup_expr(&e) {
        Some(id) => eg.find(id) == eg.find(root),
        None => false,
    }
}

/// Saturates `expr` with the rules of `set` and says whether `target` is
/// then equal to it. Also checks that no node failed to infer.
pub fn rewrites_to(
    set: fn(RuleOptions) -> Vec<Rule>,
    relaxed: bool,
    leaf_types: &[&str],
    expr: &str,
    target: &str,
) -> bool {
    let (eg, root) = egraph_with(leaf_types, expr);
    let mut eg = saturate(eg, &set(RuleOptions { relaxed }));
    assert!(eg.analysis.failures.is_empty(), "ill-typed nodes: {:?}", eg.analysis.failures);
    proves(&mut eg, root, target)
}

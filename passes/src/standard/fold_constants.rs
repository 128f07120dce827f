//! `fold-constants`: evaluates at compile time what depends only on stored data.
//!
//! A node whose inputs are all constants or weights is evaluated once, with
//! the reference interpreter's [`run_op`] (so the folded value is exactly
//! what the interpreter would compute at run time), and replaced by its
//! value: an `Op::Constant` when small, a new weight when large. Values that
//! shape inference proves constant fold too (option `shapes`): `Shape(x)`
//! when `x`'s shape is fixed, or `Gather(Shape(x), 2)` when only dim 2 is.
//!
//! # Folding never grows stored bytes
//!
//! Some computations on weights are compression: `W_shared + B·A` (relaxed
//! layer tying) or `Σ c·D` (a dictionary) stay in the graph precisely
//! because their result is larger than their inputs. Folding them would
//! silently undo the compression. So a fold is accepted only when its result
//! takes no more bytes than the stored data it frees — the constants and
//! weights that only this computation reads, and that become dead with it. A
//! shared weight is not freed by folding one of its users, so
//! `Transpose(W)` folds when `W` has no other user, and is refused when it
//! has (the transposed copy would be stored next to `W`).
//!
//! The only exception is tiny results (at most `small-result-bytes`, 64 by
//! default): a few bytes of shape arithmetic or a folded scalar cost less
//! than the nodes they replace, and can never undo a compression.
//!
//! Ops with bodies, impure ops and ops the interpreter does not implement
//! are left alone, and so is any fold whose result size cannot be known
//! before evaluating it (no op is evaluated blindly: a `ConstantOfShape` of
//! a huge constant shape is refused by size, never allocated).

use crate::patch::Patch;
use crate::registry::RegisteredPass;
use crate::{Pass, PassContext, PassError, PassOutcome, pass_options};
use sharc_interp::ops::{OpContext, run_op};
use sharc_ir::infer::SymData;
use sharc_ir::{
    DType, Fact, Graph, NodeId, Op, Tensor, TensorData, Type, Value, ValueRef, Weight, WeightId, infer_node,
    infer_node_facts,
};
use std::collections::{BTreeMap, HashMap};

pass_options! {
    /// Options of `fold-constants`.
    pub struct FoldConstantsOptions {
        /// Results of at most this many bytes always fold; larger ones only when they free as many stored bytes.
        small_result_bytes: u64 = 64,
        /// Folded results larger than this many bytes become weights instead of constants.
        constant_max_bytes: u64 = 128,
        /// Also fold integer values that shape inference proves constant (`Shape(x)` of a fixed shape).
        shapes: bool = true,
    }
}

/// The `fold-constants` pass. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct FoldConstants {
    /// The options.
    pub options: FoldConstantsOptions,
}

impl Pass for FoldConstants {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
        let changed = fold_graph(g, &self.options, &mut counts)
            .map_err(|m| PassError::Failed { pass: Self::NAME.to_string(), message: m })?;
        for (k, v) in counts {
            cx.count(Self::NAME, k, v);
        }
        Ok(PassOutcome::from_changed(changed))
    }
}

impl RegisteredPass for FoldConstants {
    type Options = FoldConstantsOptions;
    const NAME: &'static str = "fold-constants";
    const SUMMARY: &'static str =
        "Evaluate nodes whose inputs are constants or weights, never growing the stored bytes";
    fn new(options: FoldConstantsOptions) -> FoldConstants {
        FoldConstants { options }
    }
}

/// Bytes a tensor takes when stored.
pub(crate) fn tensor_bytes(t: &Tensor) -> u64 {
    match t.data() {
        TensorData::String(a) => a.iter().map(|s| s.len() as u64).sum(),
        _ => t.dtype().storage_bytes(t.len()).unwrap_or(0) as u64,
    }
}

/// Bytes a value of this type takes, when its shape is fixed.
fn type_bytes(t: &Type) -> Option<u64> {
    let tt = t.as_tensor()?;
    if tt.dtype == DType::String {
        return None;
    }
    let n = tt.shape.as_ref()?.num_elements()?;
    tt.dtype.storage_bytes(usize::try_from(n).ok()?).map(|b| b as u64)
}

/// Where a known value comes from.
#[derive(Clone)]
enum Known {
    /// A `Constant` node's tensor.
    Constant(Tensor),
    /// A weight node (decoded only when a fold needs it).
    Weight(WeightId),
    /// A value folded in this run.
    Folded(Tensor),
}

fn fold_graph(
    g: &mut Graph,
    opts: &FoldConstantsOptions,
    counts: &mut BTreeMap<&'static str, i64>,
) -> Result<bool, String> {
    let mut changed = false;
    let owners: Vec<NodeId> = g.node_ids().filter(|&n| !g.node(n).op.subgraphs().is_empty()).collect();
    for id in owners {
        for body in g.node_mut(id).op.subgraphs_mut() {
            changed |= fold_graph(body, opts, counts)?;
        }
    }

    let order = g.topo_order().map_err(|e| format!("in graph '{}': {e}", g.name))?;
    let mut known: HashMap<ValueRef, Known> = HashMap::new();
    // Remaining readers of each value (node input ports and graph outputs).
    let mut uses: HashMap<ValueRef, usize> = HashMap::new();
    for &id in &order {
        for v in g.node_inputs(id).into_iter().flatten() {
            *uses.entry(v).or_default() += 1;
        }
    }
    for o in g.outputs() {
        *uses.entry(o.value).or_default() += 1;
    }
    // Live weight nodes per weight: a weight is freed when its last one dies.
    let mut weight_nodes: HashMap<WeightId, usize> = HashMap::new();
    for &id in &order {
        match &g.node(id).op {
            Op::Constant(t) => {
                known.insert(ValueRef::new(id, 0), Known::Constant(t.clone()));
            }
            Op::Weight(w) => {
                known.insert(ValueRef::new(id, 0), Known::Weight(*w));
                if uses.get(&ValueRef::new(id, 0)).copied().unwrap_or(0) > 0 {
                    *weight_nodes.entry(*w).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    let mut facts: HashMap<ValueRef, Fact> = HashMap::new();
    let mut folded: Vec<NodeId> = Vec::new();
    // Source nodes that died because their readers were folded.
    let mut dead_sources: Vec<NodeId> = Vec::new();

    for &id in &order {
        let node = g.node(id);
        let names: Vec<&str> = node.outputs.iter().map(|o| o.name.as_str()).collect();
        let inputs = g.node_inputs(id);
        if node.op.is_source() {
            if opts.shapes {
                let fact = match &node.op {
                    Op::Constant(t) => Fact::of_tensor(t),
                    Op::Weight(w) => match g.weights.get(*w) {
                        Some(w) if w.num_elements() <= sharc_ir::infer::MAX_TRACKED as u64 => {
                            Fact::of_tensor(w.tensor())
                        }
                        _ => Fact::of_type(node.outputs[0].ty.clone()),
                    },
                    _ => Fact::of_type(node.outputs[0].ty.clone()),
                };
                facts.insert(ValueRef::new(id, 0), fact);
            }
            continue;
        }
        let eligible = node.op.is_pure() && node.op.subgraphs().is_empty() && !node.outputs.is_empty();
        let all_known = inputs.iter().flatten().all(|v| known.contains_key(v));
        let mut result: Option<(Vec<Tensor>, &'static str)> = None;
        if eligible && all_known {
            result = evaluate(g, id, &inputs, &known, &uses, &weight_nodes, opts, counts)?.map(|r| (r, "folded"));
        }
        if opts.shapes {
            let in_facts: Vec<Option<Fact>> = inputs
                .iter()
                .map(|v| v.map(|v| facts.get(&v).cloned().unwrap_or_else(|| Fact::of_type(g.value_type(v).clone()))))
                .collect();
            let out_facts: Vec<Fact> = match &result {
                Some((ts, _)) => ts.iter().map(Fact::of_tensor).collect(),
                None => infer_node_facts(&node.op, &in_facts, &names)
                    .unwrap_or_else(|_| node.outputs.iter().map(|o| Fact::of_type(o.ty.clone())).collect()),
            };
            if result.is_none() && eligible {
                result = shape_fold(&out_facts, node.outputs.len(), opts).map(|r| (r, "shape-folded"));
            }
            for (port, f) in out_facts.into_iter().enumerate().take(node.outputs.len()) {
                facts.insert(ValueRef::new(id, port as u32), f);
            }
        }
        let Some((values, counter)) = result else { continue };
        *counts.entry(counter).or_default() += 1;
        // The inputs lose a reader; those that die are freed.
        for v in inputs.iter().flatten() {
            let left = uses.get_mut(v).expect("every read was counted");
            *left -= 1;
            if *left == 0 {
                match known.get(v) {
                    Some(Known::Weight(w)) => {
                        dead_sources.push(v.node);
                        if let Some(n) = weight_nodes.get_mut(w) {
                            *n -= 1;
                        }
                    }
                    Some(Known::Constant(_)) => dead_sources.push(v.node),
                    _ => {}
                }
            }
        }
        for (port, t) in values.into_iter().enumerate() {
            known.insert(ValueRef::new(id, port as u32), Known::Folded(t));
        }
        folded.push(id);
    }
    if folded.is_empty() {
        return Ok(changed);
    }

    let mut patch = Patch::new();
    for &id in &folded {
        for (port, o) in g.node(id).outputs.iter().enumerate() {
            let v = ValueRef::new(id, port as u32);
            if uses.get(&v).copied().unwrap_or(0) == 0 {
                continue;
            }
            let Some(Known::Folded(t)) = known.get(&v) else { continue };
            let new = if tensor_bytes(t) > opts.constant_max_bytes {
                *counts.entry("weights-created").or_default() += 1;
                patch.add_weight(Weight::from_tensor(o.name.clone(), t.clone()))
            } else {
                *counts.entry("constants-created").or_default() += 1;
                patch.add_constant(&o.name, t.clone())
            };
            patch.replace_uses(v, new);
        }
        patch.remove_node(id);
    }
    for id in dead_sources {
        patch.remove_node(id);
    }
    patch.apply(g).map_err(|e| format!("in graph '{}': {e}", g.name))?;
    let removed = g.remove_unused_weights();
    if removed > 0 {
        *counts.entry("weights-removed").or_default() += removed as i64;
    }
    Ok(true)
}

/// Evaluates node `id` if the size rule allows; `None` when it does not
/// fold (with the reason counted).
#[allow(clippy::too_many_arguments)]
fn evaluate(
    g: &Graph,
    id: NodeId,
    inputs: &[Option<ValueRef>],
    known: &HashMap<ValueRef, Known>,
    uses: &HashMap<ValueRef, usize>,
    weight_nodes: &HashMap<WeightId, usize>,
    opts: &FoldConstantsOptions,
    counts: &mut BTreeMap<&'static str, i64>,
) -> Result<Option<Vec<Tensor>>, String> {
    let node = g.node(id);
    let names: Vec<&str> = node.outputs.iter().map(|o| o.name.as_str()).collect();
    let tensor_of = |v: &ValueRef| -> Option<Tensor> {
        match known.get(v)? {
            Known::Constant(t) | Known::Folded(t) => Some(t.clone()),
            Known::Weight(w) => g.weights.get(*w).map(|w| w.tensor().clone()),
        }
    };
    let bytes_of = |v: &ValueRef| -> u64 {
        match known.get(v) {
            Some(Known::Constant(t) | Known::Folded(t)) => tensor_bytes(t),
            Some(Known::Weight(w)) => g.weights.get(*w).map_or(0, |w| w.num_bytes()),
            None => 0,
        }
    };

    // The result's size, from inference on the input types and small values.
    let mut in_types: Vec<Option<Type>> = Vec::new();
    let mut small: Vec<Option<Tensor>> = Vec::new();
    for v in inputs {
        match v {
            None => {
                in_types.push(None);
                small.push(None);
            }
            Some(v) => {
                let t = match known.get(v) {
                    Some(Known::Weight(w)) => {
                        g.weights.get(*w).map(|w| Type::tensor(w.dtype, sharc_ir::Shape::fixed(&w.shape)))
                    }
                    Some(Known::Constant(t) | Known::Folded(t)) => {
                        Some(Type::tensor(t.dtype(), sharc_ir::Shape::fixed(t.shape())))
                    }
                    None => None,
                };
                in_types.push(t);
                // Values matter for shape-determining inputs; they are small.
                small.push(if bytes_of(v) <= 1 << 16 { tensor_of(v) } else { None });
            }
        }
    }
    let small_refs: Vec<Option<&Tensor>> = small.iter().map(|t| t.as_ref()).collect();
    let Ok(out_types) = infer_node(&node.op, &in_types, &small_refs, &names) else {
        *counts.entry("skipped-invalid").or_default() += 1;
        return Ok(None);
    };
    let Some(result_bytes) = out_types.iter().take(names.len()).map(type_bytes).sum::<Option<u64>>() else {
        *counts.entry("skipped-unknown-size").or_default() += 1;
        return Ok(None);
    };

    // What the fold frees: inputs whose every remaining reader is this node.
    let mut reads: HashMap<ValueRef, usize> = HashMap::new();
    for v in inputs.iter().flatten() {
        *reads.entry(*v).or_default() += 1;
    }
    let mut freed = 0u64;
    let mut dying_weights: HashMap<WeightId, usize> = HashMap::new();
    for (v, n) in &reads {
        if uses.get(v).copied().unwrap_or(0) != *n {
            continue;
        }
        match known.get(v) {
            Some(Known::Weight(w)) => *dying_weights.entry(*w).or_default() += 1,
            _ => freed += bytes_of(v),
        }
    }
    for (w, n) in dying_weights {
        if weight_nodes.get(&w).copied().unwrap_or(0) == n {
            freed += g.weights.get(w).map_or(0, |w| w.num_bytes());
        }
    }
    if result_bytes > opts.small_result_bytes && result_bytes > freed {
        *counts.entry("refused-growth").or_default() += 1;
        return Ok(None);
    }

    let mut args: Vec<Option<Value>> = Vec::with_capacity(inputs.len());
    for v in inputs {
        args.push(match v {
            None => None,
            Some(v) => {
                Some(Value::Tensor(tensor_of(v).ok_or_else(|| {
                    format!("the weight behind '{}' is missing from the store", g.value_info(*v).name)
                })?))
            }
        });
    }
    let label = if node.name.is_empty() { names.first().copied().unwrap_or("") } else { node.name.as_str() };
    let cx = OpContext { node_name: label, num_outputs: names.len(), output_types: &out_types };
    let values = match run_op(&node.op, &args, &cx) {
        Ok(v) => v,
        Err(_) => {
            // Unsupported here, or an error the model would also hit at run
            // time: either way the node stays and runs (or fails) as before.
            *counts.entry("skipped-eval-error").or_default() += 1;
            return Ok(None);
        }
    };
    let mut out = Vec::with_capacity(names.len());
    for (port, v) in values.into_iter().enumerate().take(names.len()) {
        let Value::Tensor(t) = v else {
            *counts.entry("skipped-not-a-tensor").or_default() += 1;
            return Ok(None);
        };
        // A result that disagrees with its inferred type would change the graph's types.
        let expected = out_types.get(port).and_then(|t| t.as_tensor());
        let agrees = expected.is_some_and(|e| {
            e.dtype == t.dtype() && e.shape.as_ref().and_then(|s| s.as_fixed()).as_deref() == Some(t.shape())
        });
        if !agrees {
            *counts.entry("skipped-type-mismatch").or_default() += 1;
            return Ok(None);
        }
        out.push(t);
    }
    if out.len() < names.len() {
        *counts.entry("skipped-eval-error").or_default() += 1;
        return Ok(None);
    }
    Ok(Some(out))
}

/// Integer results that inference knows completely, when small enough.
fn shape_fold(facts: &[Fact], n_outputs: usize, opts: &FoldConstantsOptions) -> Option<Vec<Tensor>> {
    if facts.len() < n_outputs {
        return None;
    }
    let mut out = Vec::with_capacity(n_outputs);
    for f in &facts[..n_outputs] {
        let v = f.value.as_ref()?;
        if !matches!(v.data, SymData::Int(_)) {
            return None;
        }
        let t = v.to_tensor()?;
        if tensor_bytes(&t) > opts.small_result_bytes {
            return None;
        }
        // The value must agree with the declared type, if any.
        if let Some(tt) = f.ty.as_tensor()
            && (tt.dtype != t.dtype() || tt.shape.as_ref().and_then(|s| s.as_fixed()).as_deref() != Some(t.shape()))
        {
            return None;
        }
        out.push(t);
    }
    Some(out)
}

/// The nodes reachable backwards from `roots` (used by tests).
#[cfg(test)]
fn ancestors(g: &Graph, roots: &[NodeId]) -> std::collections::HashSet<NodeId> {
    let mut seen = std::collections::HashSet::new();
    let mut stack = roots.to_vec();
    while let Some(n) = stack.pop() {
        if seen.insert(n) {
            stack.extend(g.predecessors(n));
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{PipelineTest, run_pipeline, run_pipeline_diff};
    use insta::assert_snapshot;

    fn checked(src: &str, pipeline: &str) -> String {
        PipelineTest::new(pipeline).check_numerics(0.0).run(src).unwrap_or_else(|e| panic!("{e}")).after
    }

    #[test]
    fn folds_chains_of_constants_into_one() {
        assert_snapshot!(checked(
            "graph @g(%x: f32[batch, 2]) -> (%y) {
  %two = const f32[] 2.0
  %s = Sqrt(%two)
  %h = Div(%s, %two)
  %y = Mul(%x, %h)
}",
            "fold-constants"
        ));
    }

    #[test]
    fn folds_shape_arithmetic_of_fixed_dims_and_keeps_symbolic_ones() {
        assert_snapshot!(checked(
            "graph @g(%x: f32[batch, 8, 64]) -> (%y) {
  %s = Shape(%x)
  %i0 = const i64[] 0
  %i1 = const i64[] 1
  %b = Gather(%s, %i0)
  %h = Gather(%s, %i1)
  %ax = const i64[1] [0]
  %b1 = Unsqueeze(%b, %ax)
  %h1 = Unsqueeze(%h, %ax)
  %minus = const i64[1] [-1]
  %shape = Concat(%b1, %h1, %minus) {axis = 0}
  %y = Reshape(%x, %shape)
}",
            "infer-shapes,fold-constants,dce"
        ));
    }

    #[test]
    fn never_undoes_a_low_rank_compression() {
        // W_shared + B·A: the product is larger than B and A, so it stays.
        let src = "graph @g(%x: f32[batch, 64]) -> (%y) {
  %w = weight @shared : f32[64, 64]
  %b = weight @layer.b : f32[64, 4]
  %a = weight @layer.a : f32[4, 64]
  %ba = MatMul(%b, %a)
  %wl = Add(%w, %ba)
  %y = MatMul(%x, %wl)
}";
        let out = checked(src, "fold-constants");
        assert_eq!(out, crate::testing::normalize(src));
        assert_snapshot!(out);
        let o = PipelineTest::new("fold-constants").run(src).unwrap();
        assert_eq!(o.report.records[0].counters.get("refused-growth"), Some(&1));
    }

    #[test]
    fn transposes_an_unshared_weight_but_not_a_shared_one() {
        assert_snapshot!(run_pipeline_diff(
            "graph @g(%x: f32[batch, 16]) -> (%y, %z) {
  %w = weight @own : f32[8, 16]
  %wt = Transpose(%w) {perm = [1, 0]}
  %y = MatMul(%x, %wt)
  %s = weight @shared : f32[8, 16]
  %st = Transpose(%s) {perm = [1, 0]}
  %p = MatMul(%x, %st)
  %q = MatMul(%p, %s)
  %z = Add(%q, %x)
}",
            "fold-constants"
        ));
    }

    #[test]
    fn leaves_inputs_random_ops_and_huge_results_alone() {
        let src = "graph @g(%x: f32[4]) -> (%y, %z) {
  %shape = const i64[2] [100000, 100000]
  %big = ConstantOfShape(%shape)
  %r = RandomUniform() {shape = [4]}
  %y = Add(%x, %r)
  %z = ReduceSum(%big)
}
";
        assert_eq!(run_pipeline(src, "fold-constants"), crate::testing::normalize(src));
    }

    #[test]
    fn large_results_become_weights() {
        let out = checked(
            "graph @g(%x: f32[batch, 64]) -> (%y) {
  %w = weight @w : f32[64, 64]
  %n = Neg(%w)
  %y = MatMul(%x, %n)
}",
            "fold-constants",
        );
        assert!(out.contains("%n = weight @n : f32[64, 64]"), "{out}");
        assert!(!out.contains("@w "), "{out}");
        let g = crate::testing::PipelineTest::new("fold-constants")
            .run(
                "graph @g(%x: f32[2]) -> (%y) {\n  %c = const f32[2] [1.0, 2.0]\n  %n = Neg(%c)\n  %y = Add(%x, %n)\n}",
            )
            .unwrap()
            .graph;
        let y = g.outputs()[0].value;
        assert_eq!(ancestors(&g, &[y.node]).len(), 3);
    }
}

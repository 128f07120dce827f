//! `canonicalize`: rewrites the graph into sharc's normal forms.
//!
//! Exporters spell the same computation many ways. Canonicalization picks
//! one spelling so that later passes (fusion, layer sharing, equality
//! saturation) look for one shape only, and drops work that does nothing.
//! Every rule is a local equality, applied to a fixpoint (at most
//! `max-iterations` sweeps); nodes that only the rewritten nodes read are
//! removed. The rules, by name (`disable=[name,...]` turns rules off):
//!
//! | rule | rewrite |
//! | --- | --- |
//! | `identity` | `Identity(x)`, `Dropout(x)` at inference (no `training_mode`, or a constant false, and the mask unused), `Cast(x)` / `CastLike(x, y)` to x's own type, single-input `Concat`/`Sum`/`Max`/`Min`/`Mean` → `x` |
//! | `same-shape` | `Reshape`, `Flatten`, `Squeeze`, `Unsqueeze`, `Expand`, `Tile` whose known output type equals the input's (symbolic dims compared by name) → `x` |
//! | `transpose-identity` | `Transpose` with the identity permutation → `x` |
//! | `transpose-chain` | `Transpose(Transpose(x, p), q)` → `Transpose(x, p∘q)`, or `x` when that is the identity |
//! | `reshape-chain` | `Reshape(R(x), s)` where `R` is a `Reshape`, `Flatten`, `Squeeze` or `Unsqueeze` and `s` is a constant without `0` entries (they would copy dims of the intermediate) → `Reshape(x, s)` |
//! | `gemm` | `Gemm(A, B, C)` → `Add(MatMul(A', B'), C)` with `Transpose` for `transA`/`transB` and `Mul` for `alpha`/`beta` ≠ 1 |
//! | `operands` | a commutative binary op with a constant or weight on the left gets it on the right: `Add(b, MatMul(x, W))` → `Add(MatMul(x, W), b)` |
//! | `gelu` | `x · 0.5 · (1 + erf(x / √2))` → `Gelu(x)`, and `0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))` → `Gelu(x) {approximate = "tanh"}` |
//! | `layer-norm` | `(x − mean(x)) / √(mean((x − mean(x))²) + ε) · γ + β` over trailing axes → `LayerNormalization(x, γ, β)` |
//! | `rms-norm` | `x / √(mean(x²) + ε) · γ` (or `x · 1/√(..)`, `x · Reciprocal(√(..))`) over trailing axes → `RMSNormalization(x, γ)` |
//! | `softmax` | `exp(x − max(x)) / sum(exp(x − max(x)))` (or without the max) along one axis → `Softmax(x)`, and `z − log(sum(exp(z)))` → `LogSoftmax` |
//!
//! # Normal forms chosen
//!
//! **A linear layer is `Add(MatMul(x, W), b)`.** `Gemm` is decomposed
//! rather than `MatMul` + `Add` being fused into `Gemm`, because `Gemm` is
//! 2-D only while transformer activations are 3-D: decomposing gives every
//! linear layer one spelling across exporters. A transposed weight
//! (`transB = 1`) becomes `Transpose(W)`, which `fold-constants` folds into
//! a transposed copy of `W` when nothing else reads `W`. Backends fuse the
//! bias add into the matmul's epilogue, so nothing is lost.
//!
//! **Constants go right** in commutative ops, so a bias add is always
//! `Add(<computation>, b)`.
//!
//! **Composite ops are recognised.** The GELU, LayerNormalization and
//! Softmax spellings are the ones torch exports op by op (minilm-l6's
//! Erf-based GELU, gpt-tiny's tanh GELU with `Pow(x, 3)`, layer norms of
//! exports before opset 17); the single ONNX op is what fused kernels and
//! pattern-based passes look for. The rewritten value is equal up to float
//! rounding (the fused op computes the same formula in one kernel).
//!
//! Algebraic identities (`x·1`, `x+0`, reassociation) are not here: they
//! belong to the equality-saturation pass `simplify`.

use crate::patch::{Patch, PatchValue};
use crate::registry::{RegisteredPass, closest};
use crate::{Pass, PassContext, PassError, PassOutcome, pass_options};
use sharc_ir::op::{GeluApproximation, Transpose};
use sharc_ir::{BinaryOp, DType, Graph, NodeId, Op, ReduceKind, Tensor, Type, UnaryOp, ValueRef};
use std::collections::{BTreeMap, HashSet};

pass_options! {
    /// Options of `canonicalize`.
    pub struct CanonicalizeOptions {
        /// Names of rules to skip (see the pass docs for the list).
        disable: Vec<String> = Vec::new(),
        /// The most sweeps over the graph before giving up on a fixpoint.
        max_iterations: usize = 16,
    }
}

/// The `canonicalize` pass. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct Canonicalize {
    /// The options.
    pub options: CanonicalizeOptions,
}

impl RegisteredPass for Canonicalize {
    type Options = CanonicalizeOptions;
    const NAME: &'static str = "canonicalize";
    const SUMMARY: &'static str = "Rewrite into normal forms: drop no-op ops, merge transpose/reshape chains, Gemm to MatMul+Add, fuse GELU/LayerNorm/Softmax";
    fn new(options: CanonicalizeOptions) -> Canonicalize {
        Canonicalize { options }
    }
}

/// A rewrite rule: if it matches at `node`, it records the rewrite in the
/// patch and returns true.
type Rule = fn(&Matcher, NodeId, &mut Patch) -> bool;

/// Every rule, in the order they are tried at a node.
const RULES: &[(&str, Rule)] = &[
    ("identity", identity),
    ("same-shape", same_shape),
    ("transpose-identity", transpose_identity),
    ("transpose-chain", transpose_chain),
    ("reshape-chain", reshape_chain),
    ("gemm", gemm),
    ("gelu", gelu),
    ("layer-norm", layer_norm),
    ("rms-norm", rms_norm),
    ("softmax", softmax),
    ("operands", operands),
];

/// The names of the rules, for `disable`.
pub fn rule_names() -> Vec<&'static str> {
    RULES.iter().map(|(n, _)| *n).collect()
}

impl Pass for Canonicalize {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let names = rule_names();
        for d in &self.options.disable {
            if !names.contains(&d.as_str()) {
                let hint = closest(d, &names).unwrap_or_else(|| format!("the rules are {}", names.join(", ")));
                return Err(PassError::Refused {
                    pass: Self::NAME.to_string(),
                    message: format!("no rule named `{d}` to disable; {hint}"),
                });
            }
        }
        let rules: Vec<(&'static str, Rule)> =
            RULES.iter().copied().filter(|(n, _)| !self.options.disable.iter().any(|d| d == n)).collect();
        let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
        let changed = canonicalize_graph(g, &rules, self.options.max_iterations, &mut counts)
            .map_err(|m| PassError::Failed { pass: Self::NAME.to_string(), message: m })?;
        for (k, v) in counts {
            cx.count(Self::NAME, k, v);
        }
        Ok(PassOutcome::from_changed(changed))
    }
}

fn canonicalize_graph(
    g: &mut Graph,
    rules: &[(&'static str, Rule)],
    max_iterations: usize,
    counts: &mut BTreeMap<&'static str, i64>,
) -> Result<bool, String> {
    let mut changed = false;
    let owners: Vec<NodeId> = g.node_ids().filter(|&n| !g.node(n).op.subgraphs().is_empty()).collect();
    for id in owners {
        for body in g.node_mut(id).op.subgraphs_mut() {
            changed |= canonicalize_graph(body, rules, max_iterations, counts)?;
        }
    }
    for _ in 0..max_iterations.max(1) {
        let order = g.topo_order().map_err(|e| format!("in graph '{}': {e}", g.name))?;
        let live_before: HashSet<NodeId> = g.node_ids().filter(|&n| is_read(g, n)).collect();
        let mut patch = Patch::new();
        let mut fired = 0;
        {
            let m = Matcher { g };
            for &id in &order {
                if g.node(id).op.is_source() {
                    continue;
                }
                for (name, rule) in rules {
                    if rule(&m, id, &mut patch) {
                        *counts.entry(name).or_default() += 1;
                        fired += 1;
                        break;
                    }
                }
            }
        }
        if fired == 0 {
            break;
        }
        patch.apply(g).map_err(|e| format!("in graph '{}': {e}", g.name))?;
        changed = true;
        let removed = remove_newly_dead(g, &live_before)?;
        *counts.entry("nodes-removed").or_default() += removed as i64;
    }
    Ok(changed)
}

/// True when a node's outputs are read by a node or a graph output.
fn is_read(g: &Graph, id: NodeId) -> bool {
    !g.successors(id).is_empty() || g.outputs().iter().any(|o| o.value.node == id)
}

/// Removes nodes that were read before the sweep and are not any more (the
/// rewritten nodes and what only they read). Dead code that was there
/// before is left for `dce`.
fn remove_newly_dead(g: &mut Graph, live_before: &HashSet<NodeId>) -> Result<usize, String> {
    let mut total = 0;
    loop {
        let dead: Vec<NodeId> = g
            .node_ids()
            .filter(|n| live_before.contains(n) && !is_read(g, *n) && !matches!(g.node(*n).op, Op::Input))
            .filter(|n| !g.inputs().contains(n) && !g.captures().contains(n))
            .collect();
        if dead.is_empty() {
            return Ok(total);
        }
        let mut patch = Patch::new();
        for &n in &dead {
            patch.remove_node(n);
        }
        patch.apply(g).map_err(|e| format!("in graph '{}': {e}", g.name))?;
        total += dead.len();
    }
}

/// Read-only queries the rules use.
struct Matcher<'g> {
    g: &'g Graph,
}

impl Matcher<'_> {
    fn op(&self, id: NodeId) -> &Op {
        &self.g.node(id).op
    }

    fn input(&self, id: NodeId, port: usize) -> Option<ValueRef> {
        self.g.node_input(id, port)
    }

    fn inputs(&self, id: NodeId) -> Vec<Option<ValueRef>> {
        self.g.node_inputs(id)
    }

    fn out(id: NodeId) -> ValueRef {
        ValueRef::new(id, 0)
    }

    fn ty(&self, v: ValueRef) -> &Type {
        self.g.value_type(v)
    }

    /// The op producing `v`, when `v` is its first output.
    fn producer(&self, v: ValueRef) -> Option<(NodeId, &Op)> {
        (v.port == 0).then(|| (v.node, &self.g.node(v.node).op))
    }

    /// `(a, b)` when `v = op(a, b)`.
    fn binary(&self, v: ValueRef, op: BinaryOp) -> Option<(ValueRef, ValueRef)> {
        let (id, o) = self.producer(v)?;
        if *o != Op::Binary(op) {
            return None;
        }
        Some((self.input(id, 0)?, self.input(id, 1)?))
    }

    /// Both operand orders of a commutative `op`.
    fn either(&self, v: ValueRef, op: BinaryOp) -> Vec<(ValueRef, ValueRef)> {
        match self.binary(v, op) {
            Some((a, b)) => vec![(a, b), (b, a)],
            None => vec![],
        }
    }

    /// `a` when `v = op(a)`.
    fn unary(&self, v: ValueRef, op: UnaryOp) -> Option<ValueRef> {
        let (id, o) = self.producer(v)?;
        (*o == Op::Unary(op)).then(|| self.input(id, 0)).flatten()
    }

    /// The tensor of a constant (or weight) value.
    fn constant(&self, v: ValueRef) -> Option<&Tensor> {
        match &self.g.node(v.node).op {
            Op::Constant(t) => Some(t),
            Op::Weight(w) => self.g.weights.get(*w).filter(|w| w.num_elements() <= 64).map(|w| w.tensor()),
            _ => None,
        }
    }

    /// The value of a one-element floating-point constant whose rank does
    /// not exceed `max_rank` (so broadcasting it cannot change a shape).
    fn scalar(&self, v: ValueRef, max_rank: usize) -> Option<f64> {
        let t = self.constant(v)?;
        if t.len() != 1 || t.rank() > max_rank || !t.dtype().is_float() {
            return None;
        }
        t.to_f64_vec()?.first().copied()
    }

    /// True when `v` is a scalar constant close to `want`.
    fn is_scalar(&self, v: ValueRef, want: f64, max_rank: usize) -> bool {
        self.scalar(v, max_rank).is_some_and(|c| (c - want).abs() <= 1e-5 * want.abs().max(1e-30))
    }

    /// The elements of a constant integer tensor.
    fn ints(&self, v: ValueRef) -> Option<Vec<i64>> {
        let t = self.constant(v)?;
        if !t.dtype().is_integer() {
            return None;
        }
        t.to_i64_vec()
    }

    /// The rank of a value, when known.
    fn rank(&self, v: ValueRef) -> Option<usize> {
        self.ty(v).shape().map(|s| s.rank())
    }

    /// True when `v` is a value of a floating-point type (or of unknown type).
    fn float_or_unknown(&self, v: ValueRef) -> bool {
        self.ty(v).dtype().is_none_or(|d| d.is_float())
    }

    /// True when `new` may stand for `old`: their types agree where known.
    /// A fully known type on one side and an unknown on the other is
    /// accepted (the rewrite is an equality; inference fills the gap).
    fn same_type(&self, old: ValueRef, new: ValueRef) -> bool {
        match (self.ty(old), self.ty(new)) {
            (Type::Unknown, _) | (_, Type::Unknown) => true,
            (a, b) => a == b,
        }
    }

    /// The axes of a `Reduce` node (from its axes input), with keepdims on,
    /// normalised against `rank`.
    fn reduce_axes(&self, id: NodeId, kind: ReduceKind, rank: usize) -> Option<Vec<usize>> {
        let Op::Reduce(r) = self.op(id) else { return None };
        if r.kind != kind || !r.attrs.keepdims || r.attrs.noop_with_empty_axes {
            return None;
        }
        let axes = self.ints(self.input(id, 1)?)?;
        let mut out: Vec<usize> = axes.iter().map(|&a| normalize_axis(a, rank)).collect::<Option<_>>()?;
        out.sort();
        out.dedup();
        (!out.is_empty()).then_some(out)
    }

    /// `(node, input)` when `v` is the output of a reduction of `kind`.
    fn reduction(&self, v: ValueRef, kind: ReduceKind) -> Option<(NodeId, ValueRef)> {
        let (id, op) = self.producer(v)?;
        match op {
            Op::Reduce(r) if r.kind == kind => Some((id, self.input(id, 0)?)),
            _ => None,
        }
    }
}

fn normalize_axis(a: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if a < 0 { a + r } else { a };
    (0..r).contains(&a).then_some(a as usize)
}

/// `Identity`, inference `Dropout`, same-type casts, single-input joins.
fn identity(m: &Matcher, id: NodeId, patch: &mut Patch) -> bool {
    let out = Matcher::out(id);
    let x = match m.op(id) {
        Op::Identity => m.input(id, 0),
        Op::Dropout(_) => {
            let training = match m.input(id, 2) {
                None => Some(false),
                Some(t) => m.constant(t).and_then(|t| t.to_i64_vec()).map(|v| v.iter().any(|&b| b != 0)),
            };
            let mask_used = m.g.node(id).outputs.len() > 1 && m.g.is_used(ValueRef::new(id, 1));
            if training == Some(false) && !mask_used { m.input(id, 0) } else { None }
        }
        Op::Cast(c) => m.input(id, 0).filter(|&x| m.ty(x).dtype() == Some(c.to)),
        Op::CastLike(_) => {
            let (x, like) = (m.input(id, 0), m.input(id, 1));
            match (x, like) {
                (Some(x), Some(l)) if m.ty(x).dtype().is_some() && m.ty(x).dtype() == m.ty(l).dtype() => Some(x),
                _ => None,
            }
        }
        Op::Concat(_) | Op::Variadic(_) if m.inputs(id).len() == 1 => m.input(id, 0),
        _ => None,
    };
    match x {
        Some(x) if m.same_type(out, x) => {
            patch.replace_uses(out, x);
            true
        }
        _ => false,
    }
}

/// Shape ops whose output type equals the input type.
fn same_shape(m: &Matcher, id: NodeId, patch: &mut Patch) -> bool {
    if !matches!(m.op(id), Op::Reshape(_) | Op::Flatten(_) | Op::Squeeze | Op::Unsqueeze | Op::Expand | Op::Tile) {
        return false;
    }
    let (out, Some(x)) = (Matcher::out(id), m.input(id, 0)) else { return false };
    let (Some(a), Some(b)) = (m.ty(out).as_tensor(), m.ty(x).as_tensor()) else { return false };
    let known = a.shape.is_some() && a == b;
    if known {
        patch.replace_uses(out, x);
    }
    known
}

/// The permutation of a Transpose node, given the input rank.
fn perm_of(t: &Transpose, rank: Option<usize>) -> Option<Vec<usize>> {
    match &t.perm {
        Some(p) => {
            let r = p.len();
            let v: Vec<usize> = p.iter().map(|&a| normalize_axis(a, r)).collect::<Option<_>>()?;
            let mut sorted = v.clone();
            sorted.sort();
            (sorted == (0..r).collect::<Vec<_>>()).then_some(v)
        }
        None => rank.map(|r| (0..r).rev().collect()),
    }
}

fn transpose_identity(m: &Matcher, id: NodeId, patch: &mut Patch) -> bool {
    let Op::Transpose(t) = m.op(id) else { return false };
    let Some(x) = m.input(id, 0) else { return false };
    let Some(p) = perm_of(t, m.rank(x)) else { return false };
    if p.iter().enumerate().all(|(i, &a)| i == a) {
        patch.replace_uses(Matcher::out(id), x);
        return true;
    }
    false
}

fn transpose_chain(m: &Matcher, id: NodeId, patch: &mut Patch) -> bool {
    let Op::Transpose(outer) = m.op(id) else { return false };
    let Some(mid) = m.input(id, 0) else { return false };
    let Some((inner_id, Op::Transpose(inner))) = m.producer(mid) else { return false };
    let Some(x) = m.input(inner_id, 0) else { return false };
    let (Some(p), Some(q)) = (perm_of(inner, m.rank(x)), perm_of(outer, m.rank(mid).or(m.rank(x)))) else {
        return false;
    };
    if p.len() != q.len() {
        return false;
    }
    // out[i] = mid[q[i]] = x[p[q[i]]].
    let composed: Vec<usize> = q.iter().map(|&i| p[i]).collect();
    let out = Matcher::out(id);
    if composed.iter().enumerate().all(|(i, &a)| i == a) {
        if !m.same_type(out, x) {
            return false;
        }
        patch.replace_uses(out, x);
    } else {
        let perm = Some(composed.iter().map(|&a| a as i64).collect());
        patch.replace_node(m.g, id, Op::Transpose(Transpose { perm }), &[Some(x.into())]);
    }
    true
}

fn reshape_chain(m: &Matcher, id: NodeId, patch: &mut Patch) -> bool {
    let Op::Reshape(outer) = m.op(id) else { return false };
    let (Some(mid), Some(shape)) = (m.input(id, 0), m.input(id, 1)) else { return false };
    let Some((inner_id, inner)) = m.producer(mid) else { return false };
    if !matches!(inner, Op::Reshape(_) | Op::Flatten(_) | Op::Squeeze | Op::Unsqueeze) {
        return false;
    }
    let Some(dims) = m.ints(shape) else { return false };
    if dims.contains(&0) && !outer.allowzero {
        return false;
    }
    let Some(x) = m.input(inner_id, 0) else { return false };
    patch.replace_node(m.g, id, Op::Reshape(outer.clone()), &[Some(x.into()), Some(shape.into())]);
    true
}

/// A scalar constant of `dtype` (a float type).
fn float_scalar(dtype: DType, v: f64) -> Option<Tensor> {
    let t = Tensor::from_vec(&[], vec![v]);
    let t = match dtype {
        DType::F64 => t,
        DType::F32 => Tensor::from_vec(&[], vec![v as f32]),
        DType::F16 => Tensor::from_vec(&[], vec![half::f16::from_f64(v)]),
        DType::BF16 => Tensor::from_vec(&[], vec![half::bf16::from_f64(v)]),
        _ => return None,
    };
    Some(t)
}

fn gemm(m: &Matcher, id: NodeId, patch: &mut Patch) -> bool {
    let Op::Gemm(a) = m.op(id) else { return false };
    let (Some(ai), Some(bi)) = (m.input(id, 0), m.input(id, 1)) else { return false };
    let ci = m.input(id, 2);
    let hint = m.g.node(id).outputs.first().map(|o| o.name.clone()).unwrap_or_default();
    let dtype = m.ty(ai).dtype();
    let scale = |patch: &mut Patch, v: PatchValue, s: f32, what: &str| -> Option<PatchValue> {
        if s == 1.0 {
            return Some(v);
        }
        let c = patch.add_constant(&format!("{hint}_{what}"), float_scalar(dtype?, s as f64)?);
        Some(patch.add_op(Op::Binary(BinaryOp::Mul), &[v, c], &hint))
    };
    // Constants of the right type are needed for alpha and beta ≠ 1.
    if (a.alpha != 1.0 || (a.beta != 1.0 && ci.is_some())) && !dtype.is_some_and(|d| d.is_float()) {
        return false;
    }
    let tr = || Op::Transpose(Transpose { perm: Some(vec![1, 0]) });
    let av: PatchValue = if a.trans_a { patch.add_op(tr(), &[ai.into()], &hint) } else { ai.into() };
    let bv: PatchValue = if a.trans_b { patch.add_op(tr(), &[bi.into()], &hint) } else { bi.into() };
    match ci {
        None if a.alpha == 1.0 => {
            patch.replace_node(m.g, id, Op::MatMul, &[Some(av), Some(bv)]);
        }
        None => {
            let mm = patch.add_op(Op::MatMul, &[av, bv], &hint);
            let Some(c) = float_scalar(dtype.unwrap_or(DType::F32), a.alpha as f64) else { return false };
            let c = patch.add_constant(&format!("{hint}_alpha"), c);
            patch.replace_node(m.g, id, Op::Binary(BinaryOp::Mul), &[Some(mm), Some(c)]);
        }
        Some(c) => {
            let mm = patch.add_op(Op::MatMul, &[av, bv], &hint);
            let (Some(mm), Some(c)) = (scale(patch, mm, a.alpha, "alpha"), scale(patch, c.into(), a.beta, "beta"))
            else {
                return false;
            };
            patch.replace_node(m.g, id, Op::Binary(BinaryOp::Add), &[Some(mm), Some(c)]);
        }
    }
    true
}

/// Constants and weights go to the right of commutative binary ops.
fn operands(m: &Matcher, id: NodeId, patch: &mut Patch) -> bool {
    let Op::Binary(b) = m.op(id) else { return false };
    if !b.is_commutative() {
        return false;
    }
    let (Some(l), Some(r)) = (m.input(id, 0), m.input(id, 1)) else { return false };
    let source = |v: ValueRef| matches!(m.g.node(v.node).op, Op::Constant(_) | Op::Weight(_));
    if source(l) && !source(r) {
        patch.set_input(id, 0, Some(r.into()));
        patch.set_input(id, 1, Some(l.into()));
        return true;
    }
    false
}

/// The ways to see `v` as a product of 3 factors through at most two `Mul`s:
/// each operand of the root `Mul` is either a leaf or a `Mul` of two leaves.
fn product_of_three(m: &Matcher, v: ValueRef) -> Vec<[ValueRef; 3]> {
    let Some((a, b)) = m.binary(v, BinaryOp::Mul) else { return vec![] };
    let mut out = Vec::new();
    if let Some((p, q)) = m.binary(a, BinaryOp::Mul) {
        out.push([p, q, b]);
    }
    if let Some((p, q)) = m.binary(b, BinaryOp::Mul) {
        out.push([a, p, q]);
    }
    out
}

/// `x` when `v = x³` spelled `Pow(x, 3)`, `Mul(Mul(x, x), x)` or `Mul(x, Mul(x, x))`.
fn cube_of(m: &Matcher, v: ValueRef) -> Option<ValueRef> {
    if let Some((x, e)) = m.binary(v, BinaryOp::Pow)
        && m.is_scalar(e, 3.0, 1)
    {
        return Some(x);
    }
    for (a, b) in m.either(v, BinaryOp::Mul) {
        if let Some((p, q)) = m.binary(a, BinaryOp::Mul)
            && p == q
            && q == b
        {
            return Some(b);
        }
    }
    None
}

/// `(x, approximation)` when `v = 1 + erf(x/√2)` or `1 + tanh(√(2/π)(x + 0.044715x³))`.
fn gelu_bracket(m: &Matcher, v: ValueRef) -> Option<(ValueRef, GeluApproximation)> {
    const SQRT2: f64 = std::f64::consts::SQRT_2;
    const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
    for (f, one) in m.either(v, BinaryOp::Add) {
        if !m.is_scalar(one, 1.0, 1) {
            continue;
        }
        if let Some(arg) = m.unary(f, UnaryOp::Erf) {
            if let Some((x, c)) = m.binary(arg, BinaryOp::Div)
                && m.is_scalar(c, SQRT2, 1)
            {
                return Some((x, GeluApproximation::None));
            }
            for (x, c) in m.either(arg, BinaryOp::Mul) {
                if m.is_scalar(c, 1.0 / SQRT2, 1) {
                    return Some((x, GeluApproximation::None));
                }
            }
        }
        if let Some(arg) = m.unary(f, UnaryOp::Tanh) {
            for (inner, c) in m.either(arg, BinaryOp::Mul) {
                if !m.is_scalar(c, SQRT_2_OVER_PI, 1) {
                    continue;
                }
                for (x, cubic) in m.either(inner, BinaryOp::Add) {
                    for (cube, k) in m.either(cubic, BinaryOp::Mul) {
                        if m.is_scalar(k, 0.044715, 1) && cube_of(m, cube) == Some(x) {
                            return Some((x, GeluApproximation::Tanh));
                        }
                    }
                }
            }
        }
    }
    None
}

fn gelu(m: &Matcher, id: NodeId, patch: &mut Patch) -> bool {
    if *m.op(id) != Op::Binary(BinaryOp::Mul) {
        return false;
    }
    let out = Matcher::out(id);
    for leaves in product_of_three(m, out) {
        for i in 0..3 {
            let Some((x, approximate)) = gelu_bracket(m, leaves[i]) else { continue };
            let rest: Vec<ValueRef> = (0..3).filter(|&j| j != i).map(|j| leaves[j]).collect();
            let max_rank = m.rank(x).unwrap_or(0);
            let ok = (rest[0] == x && m.is_scalar(rest[1], 0.5, max_rank))
                || (rest[1] == x && m.is_scalar(rest[0], 0.5, max_rank));
            if ok && m.float_or_unknown(x) && m.same_type(out, x) {
                patch.replace_node(m.g, id, Op::Unary(UnaryOp::Gelu { approximate }), &[Some(x.into())]);
                return true;
            }
        }
    }
    false
}

/// `(x, axes)` when `d = x - mean(x)` over `axes`.
fn centered(m: &Matcher, d: ValueRef) -> Option<(ValueRef, Vec<usize>)> {
    let (x, mean) = m.binary(d, BinaryOp::Sub)?;
    let (rid, rx) = m.reduction(mean, ReduceKind::Mean)?;
    if rx != x {
        return None;
    }
    let axes = m.reduce_axes(rid, ReduceKind::Mean, m.rank(x)?)?;
    Some((x, axes))
}

fn layer_norm(m: &Matcher, id: NodeId, patch: &mut Patch) -> bool {
    let out = Matcher::out(id);
    // y = n·γ + β, or y = n·γ.
    let mut candidates: Vec<(ValueRef, Option<ValueRef>)> = Vec::new();
    for (scaled, beta) in m.either(out, BinaryOp::Add) {
        candidates.push((scaled, Some(beta)));
    }
    if *m.op(id) == Op::Binary(BinaryOp::Mul) {
        candidates.push((out, None));
    }
    for (scaled, beta) in candidates {
        for (n, gamma) in m.either(scaled, BinaryOp::Mul) {
            let Some((d, sd)) = m.binary(n, BinaryOp::Div) else { continue };
            let Some((x, axes)) = centered(m, d) else { continue };
            let Some(var_eps) = m.unary(sd, UnaryOp::Sqrt) else { continue };
            for (var, eps) in m.either(var_eps, BinaryOp::Add) {
                let Some(rank) = m.rank(x) else { continue };
                let Some(eps) = m.scalar(eps, rank) else { continue };
                let Some((vid, sq)) = m.reduction(var, ReduceKind::Mean) else { continue };
                if m.reduce_axes(vid, ReduceKind::Mean, rank).as_ref() != Some(&axes) {
                    continue;
                }
                let squares_d = m.binary(sq, BinaryOp::Pow).is_some_and(|(b, e)| b == d && m.is_scalar(e, 2.0, rank))
                    || m.binary(sq, BinaryOp::Mul) == Some((d, d));
                // The axes must be the trailing ones, from `axis` on.
                let axis = axes[0];
                let trailing = axes.iter().enumerate().all(|(i, &a)| a == axis + i) && axes.last() == Some(&(rank - 1));
                if !squares_d || !trailing || !m.float_or_unknown(x) || !m.same_type(out, x) {
                    continue;
                }
                // γ and β must not broadcast beyond the normalised dims.
                let fits = |p: ValueRef| m.rank(p).is_some_and(|r| r <= rank - axis);
                if !fits(gamma) || !beta.is_none_or(fits) {
                    continue;
                }
                let op = Op::LayerNormalization(sharc_ir::op::LayerNormalization {
                    axis: axis as i64,
                    epsilon: eps as f32,
                    stash_type: 1,
                });
                let mut ins = vec![Some(x.into()), Some(gamma.into())];
                if let Some(b) = beta {
                    ins.push(Some(b.into()));
                }
                patch.replace_node(m.g, id, op, &ins);
                return true;
            }
        }
    }
    false
}

/// `(x, axis, ε)` when `r = 1 / √(mean(x²) + ε)` over the trailing axes
/// from `axis`, written `Div(1, Sqrt(..))` or `Reciprocal(Sqrt(..))`.
fn inverse_rms(m: &Matcher, r: ValueRef, x: ValueRef) -> Option<(usize, f64)> {
    let sd = match m.binary(r, BinaryOp::Div) {
        Some((one, sd)) if m.is_scalar(one, 1.0, 1) => sd,
        Some(_) => return None,
        None => m.unary(r, UnaryOp::Reciprocal)?,
    };
    rms_of(m, sd, x)
}

/// `(axis, ε)` when `sd = √(mean(x²) + ε)` over the trailing axes from `axis`.
fn rms_of(m: &Matcher, sd: ValueRef, x: ValueRef) -> Option<(usize, f64)> {
    let rank = m.rank(x)?;
    let var_eps = m.unary(sd, UnaryOp::Sqrt)?;
    for (var, eps) in m.either(var_eps, BinaryOp::Add) {
        let Some(eps) = m.scalar(eps, rank) else { continue };
        let Some((vid, sq)) = m.reduction(var, ReduceKind::Mean) else { continue };
        let Some(axes) = m.reduce_axes(vid, ReduceKind::Mean, rank) else { continue };
        let squares_x = m.binary(sq, BinaryOp::Pow).is_some_and(|(b, e)| b == x && m.is_scalar(e, 2.0, rank))
            || m.binary(sq, BinaryOp::Mul) == Some((x, x));
        let axis = axes[0];
        let trailing = axes.iter().enumerate().all(|(i, &a)| a == axis + i) && axes.last() == Some(&(rank - 1));
        if squares_x && trailing && eps >= 0.0 {
            return Some((axis, eps));
        }
    }
    None
}

/// `x / √(mean(x²) + ε) · γ` → `RMSNormalization(x, γ)` (what Llama- and
/// Mixtral-style exports spell out; opset 23 has the op).
fn rms_norm(m: &Matcher, id: NodeId, patch: &mut Patch) -> bool {
    if *m.op(id) != Op::Binary(BinaryOp::Mul) {
        return false;
    }
    let out = Matcher::out(id);
    for (n, gamma) in m.either(out, BinaryOp::Mul) {
        // n = x / sd, or x · (1 / sd) in either order.
        let mut found = None;
        if let Some((x, sd)) = m.binary(n, BinaryOp::Div) {
            found = rms_of(m, sd, x).map(|(axis, eps)| (x, axis, eps));
        }
        for (x, r) in m.either(n, BinaryOp::Mul) {
            if found.is_none() {
                found = inverse_rms(m, r, x).map(|(axis, eps)| (x, axis, eps));
            }
        }
        let Some((x, axis, eps)) = found else { continue };
        let Some(rank) = m.rank(x) else { continue };
        // γ must not broadcast beyond the normalised dims, nor be x itself.
        let fits = m.rank(gamma).is_some_and(|r| r <= rank - axis) && gamma != x;
        if !fits || !m.float_or_unknown(x) || !m.same_type(out, x) || m.ty(gamma).dtype() != m.ty(x).dtype() {
            continue;
        }
        let op = Op::RMSNormalization(sharc_ir::op::RMSNormalization {
            axis: axis as i64,
            epsilon: eps as f32,
            stash_type: 1,
        });
        patch.replace_node(m.g, id, op, &[Some(x.into()), Some(gamma.into())]);
        return true;
    }
    false
}

/// `axis` when `e = exp(z)` and `s = sum(e)` along that single axis.
fn sum_of_exp(m: &Matcher, s: ValueRef, e: ValueRef, rank: usize) -> Option<usize> {
    let (sid, se) = m.reduction(s, ReduceKind::Sum)?;
    if se != e {
        return None;
    }
    match m.reduce_axes(sid, ReduceKind::Sum, rank)?.as_slice() {
        [a] => Some(*a),
        _ => None,
    }
}

/// `x` when `z = x - max(x)` along `axis`, or `z` itself.
fn unshifted(m: &Matcher, z: ValueRef, axis: usize, rank: usize) -> ValueRef {
    if let Some((x, mx)) = m.binary(z, BinaryOp::Sub)
        && let Some((rid, rx)) = m.reduction(mx, ReduceKind::Max)
        && rx == x
        && m.reduce_axes(rid, ReduceKind::Max, rank) == Some(vec![axis])
    {
        return x;
    }
    z
}

fn softmax(m: &Matcher, id: NodeId, patch: &mut Patch) -> bool {
    let out = Matcher::out(id);
    // exp(z) / sum(exp(z)) → Softmax.
    if let Some((e, s)) = m.binary(out, BinaryOp::Div)
        && let Some(z) = m.unary(e, UnaryOp::Exp)
        && let Some(rank) = m.rank(z)
        && let Some(axis) = sum_of_exp(m, s, e, rank)
    {
        let x = unshifted(m, z, axis, rank);
        if m.float_or_unknown(x) && m.same_type(out, x) {
            let op = Op::Softmax(sharc_ir::op::AxisAttr { axis: axis as i64 });
            patch.replace_node(m.g, id, op, &[Some(x.into())]);
            return true;
        }
    }
    // z - log(sum(exp(z))) → LogSoftmax.
    if let Some((z, l)) = m.binary(out, BinaryOp::Sub)
        && let Some(s) = m.unary(l, UnaryOp::Log)
        && let Some(rank) = m.rank(z)
        && let Some((sid, e)) = m.reduction(s, ReduceKind::Sum)
        && m.unary(e, UnaryOp::Exp) == Some(z)
        && let Some(axes) = m.reduce_axes(sid, ReduceKind::Sum, rank)
        && let [axis] = axes[..]
    {
        let x = unshifted(m, z, axis, rank);
        if m.float_or_unknown(x) && m.same_type(out, x) {
            let op = Op::LogSoftmax(sharc_ir::op::AxisAttr { axis: axis as i64 });
            patch.replace_node(m.g, id, op, &[Some(x.into())]);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use crate::testing::{PipelineTest, normalize};
    use insta::assert_snapshot;

    /// Runs `infer-shapes,canonicalize` and checks the interpreter's outputs
    /// did not move (beyond float rounding).
    fn canon(src: &str) -> String {
        PipelineTest::new("infer-shapes,canonicalize")
            .check_numerics(1e-5)
            .run(src)
            .unwrap_or_else(|e| panic!("{e}"))
            .after
    }

    /// The IR after `infer-shapes` alone: what canonicalize must not change.
    fn typed(src: &str) -> String {
        PipelineTest::new("infer-shapes").run(src).unwrap_or_else(|e| panic!("{e}")).after
    }

    #[test]
    fn drops_identities_inference_dropout_and_same_type_casts() {
        assert_snapshot!(canon(
            "graph @g(%x: f32[batch, 4]) -> (%y) {
  %a = Identity(%x)
  %b = Dropout(%a)
  %c = Cast(%b) {to = f32}
  %d = Concat(%c) {axis = 0}
  %y = Relu(%d)
}"
        ));
    }

    #[test]
    fn keeps_real_casts_and_training_dropout() {
        let src = "graph @g(%x: f32[batch, 4], %train: bool[]) -> (%y, %z) {
  %c = Cast(%x) {to = f16}
  %r = const f32[] 0.5
  %d = Dropout(%x, %r, %train)
  %y = Cast(%c) {to = f32}
  %z = Relu(%d)
}";
        let out = PipelineTest::new("infer-shapes,canonicalize").run(src).unwrap().after;
        assert_eq!(out, typed(src));
    }

    #[test]
    fn removes_reshapes_to_the_same_shape_with_symbolic_dims() {
        assert_snapshot!(canon(
            "graph @g(%x: f32[batch, seq, 64]) -> (%y) {
  %s = Shape(%x)
  %y0 = Reshape(%x, %s)
  %ax = const i64[1] [0]
  %e = Expand(%y0, %s)
  %y = Relu(%e)
}"
        ));
    }

    #[test]
    fn merges_transpose_chains_and_drops_identity_transposes() {
        assert_snapshot!(canon(
            "graph @g(%x: f32[2, 3, 4]) -> (%y, %z, %w) {
  %t1 = Transpose(%x) {perm = [1, 0, 2]}
  %t2 = Transpose(%t1) {perm = [0, 2, 1]}
  %y = Relu(%t2)
  %u1 = Transpose(%x) {perm = [2, 0, 1]}
  %u2 = Transpose(%u1) {perm = [1, 2, 0]}
  %z = Relu(%u2)
  %i = Transpose(%x) {perm = [0, 1, 2]}
  %w = Relu(%i)
}"
        ));
    }

    #[test]
    fn merges_reshape_chains_unless_a_zero_copies_a_dim() {
        assert_snapshot!(canon(
            "graph @g(%x: f32[2, 3, 4]) -> (%y, %z) {
  %s1 = const i64[2] [6, 4]
  %r1 = Reshape(%x, %s1)
  %s2 = const i64[3] [2, 2, 6]
  %y = Reshape(%r1, %s2)
  %s3 = const i64[2] [0, -1]
  %z = Reshape(%r1, %s3)
}"
        ));
    }

    #[test]
    fn decomposes_gemm_into_matmul_and_add() {
        assert_snapshot!(canon(
            "graph @g(%x: f32[batch, 8]) -> (%y, %z) {
  %w = weight @fc.weight : f32[4, 8]
  %b = weight @fc.bias : f32[4]
  %y = Gemm(%x, %w, %b) {transB = 1}
  %v = weight @v : f32[8, 3]
  %z = Gemm(%x, %v) {alpha = 0.5}
}"
        ));
    }

    #[test]
    fn puts_constants_on_the_right_of_commutative_ops() {
        assert_snapshot!(canon(
            "graph @g(%x: f32[batch, 8]) -> (%y) {
  %w = weight @w : f32[8, 8]
  %b = weight @b : f32[8]
  %m = MatMul(%x, %w)
  %a = Add(%b, %m)
  %two = const f32[] 2.0
  %s = Sub(%two, %a)
  %y = Mul(%two, %s)
}"
        ));
    }

    #[test]
    fn recognises_the_erf_gelu_of_minilm() {
        // Spelled as torch exports BertIntermediate's GELU (minilm-l6).
        assert_snapshot!(canon(
            "graph @g(%x: f32[batch, 16]) -> (%y) {
  %c = const f32[] 1.4142135
  %d = Div(%x, %c)
  %e = Erf(%d)
  %one = const f32[] 1.0
  %a = Add(%e, %one)
  %m = Mul(%x, %a)
  %half = const f32[] 0.5
  %y = Mul(%m, %half)
}"
        ));
    }

    #[test]
    fn recognises_the_tanh_gelu_of_gpt2() {
        // Spelled as torch exports GPT-2's `gelu_new` (gpt-tiny).
        assert_snapshot!(canon(
            "graph @g(%x: f32[batch, 16]) -> (%y) {
  %half = const f32[] 0.5
  %h = Mul(%x, %half)
  %three = const f32[] 3.0
  %p = Pow(%x, %three)
  %k = const f32[] 0.044715
  %pk = Mul(%p, %k)
  %in = Add(%x, %pk)
  %c = const f32[] 0.7978846
  %ic = Mul(%in, %c)
  %t = Tanh(%ic)
  %one = const f32[] 1.0
  %a = Add(%t, %one)
  %y = Mul(%h, %a)
}"
        ));
    }

    #[test]
    fn does_not_take_a_near_gelu_for_a_gelu() {
        // 0.6 instead of 0.5, and an erf argument that is not x/√2.
        let src = "graph @g(%x: f32[batch, 16], %z: f32[batch, 16]) -> (%y, %w) {
  %c = const f32[] 1.4142135
  %d = Div(%x, %c)
  %e = Erf(%d)
  %one = const f32[] 1.0
  %a = Add(%e, %one)
  %m = Mul(%x, %a)
  %k = const f32[] 0.6
  %y = Mul(%m, %k)
  %d2 = Div(%z, %c)
  %e2 = Erf(%d2)
  %a2 = Add(%e2, %one)
  %m2 = Mul(%x, %a2)
  %half = const f32[] 0.5
  %w = Mul(%m2, %half)
}";
        let out = canon(src);
        assert_eq!(out, typed(src));
        assert_snapshot!(out);
    }

    #[test]
    fn recognises_a_layer_norm_spelled_out() {
        assert_snapshot!(canon(
            "graph @g(%x: f32[batch, seq, 8]) -> (%y) {
  %ax = const i64[1] [-1]
  %mean = ReduceMean(%x, %ax)
  %d = Sub(%x, %mean)
  %two = const f32[] 2.0
  %sq = Pow(%d, %two)
  %var = ReduceMean(%sq, %ax)
  %eps = const f32[] 1e-5
  %ve = Add(%var, %eps)
  %sd = Sqrt(%ve)
  %n = Div(%d, %sd)
  %gamma = weight @ln.weight : f32[8]
  %beta = weight @ln.bias : f32[8]
  %s = Mul(%n, %gamma)
  %y = Add(%s, %beta)
}"
        ));
    }

    #[test]
    fn a_normalisation_over_a_leading_axis_is_not_a_layer_norm() {
        let src = "graph @g(%x: f32[4, 8]) -> (%y) {
  %ax = const i64[1] [0]
  %mean = ReduceMean(%x, %ax)
  %d = Sub(%x, %mean)
  %sq = Mul(%d, %d)
  %var = ReduceMean(%sq, %ax)
  %eps = const f32[] 1e-5
  %ve = Add(%var, %eps)
  %sd = Sqrt(%ve)
  %n = Div(%d, %sd)
  %gamma = weight @g : f32[8]
  %y = Mul(%n, %gamma)
}";
        assert_eq!(canon(src), typed(src));
    }

    #[test]
    fn recognises_an_rms_norm_spelled_out() {
        // Spelled as torch exports Mixtral's RMSNorm (moe-tiny): casts to
        // f32 around it, and the reciprocal of the root as 1 / sqrt.
        assert_snapshot!(canon(
            "graph @g(%x: f32[batch, seq, 8]) -> (%y, %z) {
  %c = Cast(%x) {to = f32}
  %two = const f32[] 2.0
  %p = Pow(%c, %two)
  %ax = const i64[1] [-1]
  %ms = ReduceMean(%p, %ax)
  %eps = const f32[] 1e-5
  %a = Add(%ms, %eps)
  %sd = Sqrt(%a)
  %one = const f32[] 1.0
  %r = Div(%one, %sd)
  %n = Mul(%c, %r)
  %nc = Cast(%n) {to = f32}
  %gamma = weight @norm.weight : f32[8]
  %y = Mul(%gamma, %nc)
  %d = Div(%x, %sd)
  %z = Mul(%d, %gamma)
}"
        ));
    }

    #[test]
    fn a_root_mean_square_over_a_leading_axis_is_not_an_rms_norm() {
        let src = "graph @g(%x: f32[4, 8]) -> (%y) {
  %sq = Mul(%x, %x)
  %ax = const i64[1] [0]
  %ms = ReduceMean(%sq, %ax)
  %eps = const f32[] 1e-5
  %a = Add(%ms, %eps)
  %sd = Sqrt(%a)
  %n = Div(%x, %sd)
  %gamma = weight @g : f32[8]
  %y = Mul(%n, %gamma)
}";
        assert_eq!(canon(src), typed(src));
    }

    #[test]
    fn recognises_softmax_and_log_softmax_spelled_out() {
        assert_snapshot!(canon(
            "graph @g(%x: f32[batch, 4, 6]) -> (%y, %z, %l) {
  %ax = const i64[1] [-1]
  %mx = ReduceMax(%x, %ax)
  %sh = Sub(%x, %mx)
  %e = Exp(%sh)
  %s = ReduceSum(%e, %ax)
  %y = Div(%e, %s)
  %a1 = const i64[1] [1]
  %e1 = Exp(%x)
  %s1 = ReduceSum(%e1, %a1)
  %z = Div(%e1, %s1)
  %ls = Log(%s)
  %l = Sub(%sh, %ls)
}"
        ));
    }

    #[test]
    fn leaves_a_normalised_graph_alone() {
        let src = "graph @g(%x: f32[batch, 8]) -> (%y) {
  %w = weight @w : f32[8, 8]
  %b = weight @b : f32[8]
  %m = MatMul(%x, %w)
  %a = Add(%m, %b)
  %g = Gelu(%a)
  %ax = const i64[1] [-1]
  %s = ReduceSum(%g, %ax)
  %y = Div(%g, %s)
}";
        assert_eq!(canon(src), typed(src));
        assert_eq!(normalize(src), crate::testing::run_pipeline(src, "canonicalize"));
    }

    #[test]
    fn unknown_rule_names_are_refused_with_a_suggestion() {
        let e = crate::testing::try_run_pipeline("graph @g(%x: f32[2]) -> (%x) {\n}", "canonicalize{disable=[gelo]}")
            .unwrap_err();
        assert!(e.to_string().contains("did you mean `gelu`?"), "{e}");
        let src = "graph @g(%x: f32[2, 3]) -> (%y) {
  %i = Transpose(%x) {perm = [0, 1]}
  %y = Relu(%i)
}";
        let out = PipelineTest::new("canonicalize{disable=[transpose-identity]}").run(src).unwrap().after;
        assert_eq!(out, normalize(src));
    }
}

//! Control flow (bodies), sequences and optionals.
//!
//! Body graphs are inferred in place: their formal inputs take the types the
//! owning node gives them (merged with what the body declares), captured
//! values bring their types and known elements from the enclosing graph, and
//! the node's outputs come from the body's outputs.
//!
//! - `If`: both branches are inferred and their types joined. With a known
//!   condition the taken branch gives the outputs, and the other branch is
//!   inferred on a copy that is kept only if it succeeds: dead code (of a
//!   function expansion, say) may well be invalid for the shapes at hand.
//! - `Loop` and `Scan`: loop-carried types are widened to a fixpoint on a copy
//!   of the body (a dim that changes between iterations becomes a fresh
//!   symbol), then the body is inferred once with the final types. Scan
//!   outputs get the trip count as their stacking dim: `M` for a `Loop` without
//!   a condition, the scanned axis for a `Scan`, a fresh symbol otherwise.
//! - `SequenceMap`: the body sees one element of each sequence input.

use super::symbolic::Expr;
use super::value::SymTensor;
use super::{
    Fact, InferError, InferStats, Namer, OpCx, RuleResult, infer_graph, join_types, merge_type, norm_axis, out,
};
use crate::{DType, Dim, Graph, NodeId, Op, Shape, TensorType, Type};

/// A sequence of tensors of one type.
fn seq_of(t: Type) -> Type {
    Type::Sequence(Box::new(t))
}

/// The element type of a sequence type (unknown for anything else).
fn elem_of(t: &Type) -> Type {
    match t {
        Type::Sequence(e) => (**e).clone(),
        _ => Type::Unknown,
    }
}

pub(super) fn infer_sequence(cx: &mut OpCx) -> RuleResult {
    let expect_seq = |cx: &OpCx, p: usize| -> Result<(), String> {
        match cx.ty(p) {
            Type::Sequence(_) | Type::Unknown => Ok(()),
            t => Err(format!("input {p} must be a sequence, found {t}")),
        }
    };
    match cx.op {
        Op::SequenceEmpty(s) => {
            let e = Type::Tensor(TensorType::unranked(s.dtype.unwrap_or(DType::F32)));
            Ok(vec![Fact::of_type(seq_of(e))])
        }
        Op::SequenceConstruct => {
            let n = cx.num_inputs();
            if n == 0 {
                return Err("needs at least one input".to_string());
            }
            let mut acc = cx.ty(0);
            for p in 1..n {
                let t = cx.ty(p);
                acc = join_types(&acc, &t, &mut cx.namer, 0)
                    .ok_or_else(|| format!("the inputs have different types: {acc} and {t}"))?;
            }
            Ok(vec![Fact::of_type(seq_of(acc))])
        }
        Op::SequenceAt => {
            expect_seq(cx, 0)?;
            Ok(vec![Fact::of_type(elem_of(&cx.ty(0)))])
        }
        Op::SequenceErase => {
            expect_seq(cx, 0)?;
            Ok(vec![Fact::of_type(cx.ty(0))])
        }
        Op::SequenceInsert => {
            expect_seq(cx, 0)?;
            let (e, t) = (elem_of(&cx.ty(0)), cx.ty(1));
            let j = join_types(&e, &t, &mut cx.namer, 0)
                .ok_or_else(|| format!("cannot insert {t} into a sequence of {e}"))?;
            Ok(vec![Fact::of_type(seq_of(j))])
        }
        Op::SequenceLength => {
            expect_seq(cx, 0)?;
            Ok(vec![out(Some(DType::I64), Some(vec![]))?])
        }
        Op::SplitToSequence(s) => split_to_sequence(cx, s.axis, s.keepdims),
        Op::ConcatFromSequence(c) => {
            expect_seq(cx, 0)?;
            let e = elem_of(&cx.ty(0));
            let (dtype, shape) = (e.dtype(), e.shape().cloned());
            let shape = match shape {
                Some(s) => {
                    let mut d: Vec<Expr> = s.dims().iter().map(Expr::from_dim).collect();
                    if c.new_axis {
                        let r = d.len() as i64 + 1;
                        let a = super::from_end(c.axis, r);
                        if a < 0 || a >= r {
                            return Err(format!("axis {} is out of range for rank {r}", c.axis));
                        }
                        let f = cx.fresh(0);
                        d.insert(a as usize, f);
                    } else {
                        let a = norm_axis(c.axis, d.len())?;
                        d[a] = cx.fresh(0);
                    }
                    Some(d)
                }
                None => None,
            };
            Ok(vec![out(dtype, shape)?])
        }
        Op::Optional(o) => {
            let inner = if cx.has(0) {
                cx.ty(0)
            } else {
                o.ty.clone().ok_or("an Optional without input needs the type attribute")?
            };
            Ok(vec![Fact::of_type(Type::Optional(Box::new(inner)))])
        }
        Op::OptionalGetElement => {
            let t = match cx.ty(0) {
                Type::Optional(t) => *t,
                other => other,
            };
            Ok(vec![Fact::of_type(t)])
        }
        Op::OptionalHasElement => Ok(vec![out(Some(DType::Bool), Some(vec![]))?]),
        other => Err(format!("{} is not a sequence op", other.op_type())),
    }
}

fn split_to_sequence(cx: &mut OpCx, axis: i64, keepdims: bool) -> RuleResult {
    let x = cx.ty(0);
    let dtype = x.dtype();
    let Some(d) = cx.shape(0) else {
        return Ok(vec![Fact::of_type(seq_of(super::tensor_type(dtype, None)?))]);
    };
    let a = norm_axis(axis, d.len())?;
    let mut e = d.clone();
    if !cx.has(1) {
        if keepdims {
            e[a] = Expr::int(1);
        } else {
            e.remove(a);
        }
    } else {
        let piece = match cx.value(1) {
            Some(v) if v.shape.is_empty() => v.exprs().and_then(|s| {
                let k = s[0].clone();
                // Equal pieces only when the dim divides evenly.
                match (d[a].as_int(), k.as_int()) {
                    (Some(n), Some(kv)) if kv > 0 && n % kv == 0 => Some(k),
                    _ if d[a] == k => Some(k),
                    _ => None,
                }
            }),
            Some(v) => v.exprs().and_then(|s| {
                let first = s.first()?.clone();
                s.iter().all(|x| *x == first).then_some(first)
            }),
            None => None,
        };
        e[a] = match piece {
            Some(p) => p,
            None => cx.fresh(0),
        };
    }
    Ok(vec![Fact::of_type(seq_of(super::tensor_type(dtype, Some(&e))?))])
}

/// Sets the type of a body's input node, merged with what it declares.
fn bind(body: &mut Graph, node: NodeId, ty: &Type, fresh: &[String]) -> Result<(), String> {
    let existing = body.node(node).outputs.first().map(|o| o.ty.clone()).unwrap_or(Type::Unknown);
    let name = body.node(node).outputs.first().map(|o| o.name.clone()).unwrap_or_default();
    let merged = merge_type(&existing, ty, fresh).map_err(|m| format!("body input '{name}': {m}"))?;
    if let Some(o) = body.node_mut(node).outputs.first_mut() {
        o.ty = merged;
    }
    Ok(())
}

/// Binds a body's captures to the trailing inputs of the owning node and
/// returns their known values.
fn bind_captures(body: &mut Graph, caps: &[Option<Fact>]) -> Result<Vec<Option<SymTensor>>, String> {
    let ids: Vec<NodeId> = body.captures().to_vec();
    if ids.len() != caps.len() {
        return Err(format!("the body captures {} values but the node passes {}", ids.len(), caps.len()));
    }
    let mut vals = Vec::with_capacity(ids.len());
    for (id, f) in ids.into_iter().zip(caps) {
        let ty = f.as_ref().map_or(Type::Unknown, |f| f.ty.clone());
        bind(body, id, &ty, &[])?;
        vals.push(f.as_ref().and_then(|f| f.value.clone()));
    }
    Ok(vals)
}

fn bind_inputs(body: &mut Graph, tys: &[Type], fresh: &[String]) -> Result<(), String> {
    let ids: Vec<NodeId> = body.inputs().to_vec();
    if ids.len() != tys.len() {
        return Err(format!("the body takes {} inputs, the node gives it {}", ids.len(), tys.len()));
    }
    for (id, t) in ids.into_iter().zip(tys) {
        bind(body, id, t, fresh)?;
    }
    Ok(())
}

/// Infers a node whose op owns body graphs (the bodies are edited in place).
/// Returns the output facts and the fresh symbols made for them.
pub(super) fn infer_with_bodies(
    op: &mut Op,
    inputs: &[Option<Fact>],
    names: &[String],
    label: &str,
    scope: &str,
    stats: &mut InferStats,
) -> Result<(Vec<Fact>, Vec<String>), InferError> {
    let op_type = op.op_type().to_string();
    let fail = |m: String| InferError { node: label.to_string(), op: op_type.clone(), message: m };
    let mut namer = Namer::new(scope, names);
    let n_caps = op.subgraphs().first().map_or(0, |b| b.captures().len());
    if inputs.len() < n_caps {
        return Err(fail(format!("the bodies capture {n_caps} values but the node has {} inputs", inputs.len())));
    }
    let (regular, caps) = inputs.split_at(inputs.len() - n_caps);
    let facts = match op {
        Op::If(a) => {
            if let Some(Type::Tensor(t)) = regular.first().and_then(|f| f.as_ref()).map(|f| &f.ty)
                && t.dtype != DType::Bool
            {
                return Err(fail(format!("the condition must be bool, found {}", t.dtype)));
            }
            // With a known condition only one branch runs: the other is
            // inferred on a copy and kept only if it is consistent, since it
            // may well be invalid for these shapes (dead code of a function
            // expansion, say).
            let cond =
                regular.first().and_then(|f| f.as_ref()).and_then(|f| f.value.as_ref()).and_then(|v| v.as_ints());
            let taken = match cond.as_deref() {
                Some([c]) => Some(*c != 0),
                _ => None,
            };
            let mut branch_outs = Vec::new();
            for (is_then, body) in [(true, &mut a.then_branch), (false, &mut a.else_branch)] {
                let which = if is_then { "then" } else { "else" };
                let dead = taken.is_some_and(|t| t != is_then);
                if dead {
                    let mut copy = (**body).clone();
                    let mut dead_stats = InferStats::default();
                    let ok = bind_captures(&mut copy, caps)
                        .ok()
                        .and_then(|vals| infer_graph(&mut copy, &vals, label, &mut dead_stats).ok());
                    if ok.is_some() {
                        **body = copy;
                        add_stats(stats, &dead_stats);
                    }
                    branch_outs.push(None);
                    continue;
                }
                let vals = bind_captures(body, caps).map_err(|m| fail(format!("{which} branch: {m}")))?;
                let outs = infer_graph(body, &vals, label, stats)?;
                if outs.len() != names.len() {
                    return Err(fail(format!(
                        "the {which} branch has {} outputs, the node has {}",
                        outs.len(),
                        names.len()
                    )));
                }
                branch_outs.push(Some(outs));
            }
            let else_outs = branch_outs.pop().flatten();
            let then_outs = branch_outs.pop().flatten();
            match (then_outs, else_outs) {
                (Some(t), None) => t,
                (None, Some(e)) => e,
                (Some(then_outs), Some(else_outs)) => {
                    let mut joined = Vec::with_capacity(names.len());
                    for (i, (t, e)) in then_outs.iter().zip(&else_outs).enumerate() {
                        let ty = join_types(&t.ty, &e.ty, &mut namer, i).ok_or_else(|| {
                            fail(format!("output {i}: the then branch gives {} and the else branch {}", t.ty, e.ty))
                        })?;
                        let value = if t.value == e.value { t.value.clone() } else { None };
                        joined.push(Fact { ty, value });
                    }
                    joined
                }
                (None, None) => vec![Fact::of_type(Type::Unknown); names.len()],
            }
        }
        Op::Loop(l) => {
            let n_carried = regular.len().saturating_sub(2);
            let body = &mut l.body;
            let n_out = body.outputs().len();
            if n_out < 1 + n_carried {
                return Err(fail(format!("the body has {n_out} outputs, it needs at least {}", 1 + n_carried)));
            }
            let k = n_out - 1 - n_carried;
            if names.len() != n_carried + k {
                return Err(fail(format!("the node has {} outputs, the body gives {}", names.len(), n_carried + k)));
            }
            let vals = bind_captures(body, caps).map_err(fail)?;
            let scalar = |d| Type::tensor(d, Shape::scalar());
            let initial: Vec<Type> =
                (0..n_carried).map(|i| regular.get(2 + i).cloned().flatten().map_or(Type::Unknown, |f| f.ty)).collect();
            let (carried, finals) = widen_to_fixpoint(
                body,
                &initial,
                &[scalar(DType::I64), scalar(DType::Bool)],
                1,
                &vals,
                label,
                &mut namer,
            )
            .map_err(fail)?;
            let mut tys = vec![scalar(DType::I64), scalar(DType::Bool)];
            tys.extend(carried.iter().cloned());
            bind_inputs(body, &tys, &namer.made).map_err(fail)?;
            let outs = infer_graph(body, &vals, label, stats)?;
            // Without a condition the loop runs exactly max(M, 0) times.
            let cond_absent = regular.get(1).is_none_or(|c| c.is_none());
            let m = regular
                .first()
                .cloned()
                .flatten()
                .and_then(|f| f.value)
                .and_then(|v| v.exprs().and_then(|e| e.first().cloned()));
            let trip = match m {
                Some(m) if cond_absent => m.maximum(&Expr::zero()),
                _ => namer.fresh(n_carried),
            };
            let mut facts: Vec<Fact> = finals.into_iter().map(Fact::of_type).collect();
            for j in 0..k {
                facts.push(Fact::of_type(stacked(&outs[1 + n_carried + j].ty, &trip, 0).map_err(fail)?));
            }
            facts
        }
        Op::Scan(s) => {
            let n_scan =
                usize::try_from(s.num_scan_inputs).ok().filter(|&n| n >= 1 && n <= regular.len()).ok_or_else(|| {
                    fail(format!("num_scan_inputs {} does not fit the {} inputs", s.num_scan_inputs, regular.len()))
                })?;
            let n_state = regular.len() - n_scan;
            let body = &mut s.body;
            let n_out = body.outputs().len();
            if n_out < n_state || names.len() != n_out {
                return Err(fail(format!(
                    "the node has {} outputs, the body {n_out}, with {n_state} states",
                    names.len()
                )));
            }
            let k = n_out - n_state;
            let in_axes = s.scan_input_axes.clone().unwrap_or_else(|| vec![0; n_scan]);
            let out_axes = s.scan_output_axes.clone().unwrap_or_else(|| vec![0; k]);
            if in_axes.len() != n_scan || out_axes.len() != k {
                return Err(fail("scan_input_axes or scan_output_axes has the wrong length".to_string()));
            }
            let vals = bind_captures(body, caps).map_err(fail)?;
            let mut seq_len: Option<Expr> = None;
            let mut slices = Vec::with_capacity(n_scan);
            for j in 0..n_scan {
                let ty = regular[n_state + j].as_ref().map_or(Type::Unknown, |f| f.ty.clone());
                let slice = match (ty.dtype(), ty.shape()) {
                    (Some(dt), Some(sh)) => {
                        let a = norm_axis(in_axes[j], sh.rank()).map_err(fail)?;
                        let len = Expr::from_dim(&sh.dims()[a]);
                        seq_len = Some(match seq_len {
                            None => len,
                            Some(prev) => super::movement::unify(&prev, &len).map_err(|_| {
                                fail(format!("scan inputs disagree on the sequence length: {prev} and {len}"))
                            })?,
                        });
                        let mut dims = sh.dims().to_vec();
                        dims.remove(a);
                        Type::tensor(dt, dims)
                    }
                    (Some(dt), None) => Type::Tensor(TensorType::unranked(dt)),
                    _ => Type::Unknown,
                };
                slices.push(slice);
            }
            let initial: Vec<Type> =
                (0..n_state).map(|i| regular[i].as_ref().map_or(Type::Unknown, |f| f.ty.clone())).collect();
            let (carried, finals) =
                widen_to_fixpoint(body, &initial, &slices, 0, &vals, label, &mut namer).map_err(fail)?;
            let mut tys = carried.clone();
            tys.extend(slices);
            bind_inputs(body, &tys, &namer.made).map_err(fail)?;
            let outs = infer_graph(body, &vals, label, stats)?;
            let len = match seq_len {
                Some(l) => l,
                None => namer.fresh(n_state),
            };
            let mut facts: Vec<Fact> = finals.into_iter().map(Fact::of_type).collect();
            for j in 0..k {
                facts.push(Fact::of_type(stacked(&outs[n_state + j].ty, &len, out_axes[j]).map_err(fail)?));
            }
            facts
        }
        Op::SequenceMap(m) => {
            let body = &mut m.body;
            if let Some(Some(f)) = regular.first()
                && !matches!(f.ty, Type::Sequence(_) | Type::Unknown)
            {
                return Err(fail(format!("the first input must be a sequence, found {}", f.ty)));
            }
            let tys: Vec<Type> = regular
                .iter()
                .map(|f| match f.as_ref().map(|f| &f.ty) {
                    Some(Type::Sequence(e)) => (**e).clone(),
                    Some(t) => t.clone(),
                    None => Type::Unknown,
                })
                .collect();
            let vals = bind_captures(body, caps).map_err(fail)?;
            bind_inputs(body, &tys, &[]).map_err(fail)?;
            let outs = infer_graph(body, &vals, label, stats)?;
            if outs.len() != names.len() {
                return Err(fail(format!("the body has {} outputs, the node has {}", outs.len(), names.len())));
            }
            outs.into_iter().map(|f| Fact::of_type(seq_of(f.ty))).collect()
        }
        _ => {
            // An op sharc does not model: its bodies are still inferred with
            // what they declare, its outputs stay as they are.
            for body in op.subgraphs_mut() {
                let vals = bind_captures(body, caps).map_err(fail)?;
                infer_graph(body, &vals, label, stats)?;
            }
            vec![Fact::of_type(Type::Unknown); names.len()]
        }
    };
    Ok((facts, namer.made))
}

fn add_stats(into: &mut InferStats, s: &InferStats) {
    into.nodes += s.nodes;
    into.values += s.values;
    into.changed += s.changed;
    into.known_dtype += s.known_dtype;
    into.known_shape += s.known_shape;
    into.exact_shape += s.exact_shape;
    into.fixed_shape += s.fixed_shape;
    into.unknown += s.unknown;
}

/// Joins a loop-carried type with the type the body gives it back. ONNX lets
/// an optional initial value meet a plain body output (and the other way
/// round): the body input keeps the optional, while the node's output takes
/// the body's kind, as ONNX's own inference does. Returns the types for the
/// body input and for the node output.
fn join_carried(prev: &Type, next: &Type, namer: &mut Namer, port: usize) -> Option<(Type, Type)> {
    if let Some(j) = join_types(prev, next, namer, port) {
        return Some((j.clone(), j));
    }
    match (prev, next) {
        (Type::Optional(p), n) => {
            let j = join_types(p, n, namer, port)?;
            Some((Type::Optional(Box::new(j.clone())), j))
        }
        (p, Type::Optional(n)) => {
            let j = join_types(p, n, namer, port)?;
            Some((j.clone(), Type::Optional(Box::new(j))))
        }
        _ => None,
    }
}

/// Finds loop-carried types that hold in every iteration: starting from the
/// initial types, infers a copy of the body and joins each carried input with
/// the matching body output until nothing changes. `extra` are the body
/// inputs that are not carried (before them for `Loop`, after for `Scan`);
/// `first_out` is the index of the first carried body output. Returns the
/// types for the body inputs and for the node outputs.
fn widen_to_fixpoint(
    body: &Graph,
    initial: &[Type],
    extra: &[Type],
    first_out: usize,
    caps: &[Option<SymTensor>],
    label: &str,
    namer: &mut Namer,
) -> Result<(Vec<Type>, Vec<Type>), String> {
    let loop_like = first_out == 1;
    let mut carried = initial.to_vec();
    let mut node_types = initial.to_vec();
    for _ in 0..8 {
        let mut trial = body.clone();
        let mut tys: Vec<Type> = Vec::new();
        if loop_like {
            tys.extend(extra.iter().cloned());
            tys.extend(carried.iter().cloned());
        } else {
            tys.extend(carried.iter().cloned());
            tys.extend(extra.iter().cloned());
        }
        bind_inputs(&mut trial, &tys, &namer.made)?;
        let outs = infer_graph(&mut trial, caps, label, &mut InferStats::default()).map_err(|e| e.to_string())?;
        let mut changed = false;
        for (i, c) in carried.iter_mut().enumerate() {
            let after = outs.get(first_out + i).map_or(Type::Unknown, |f| f.ty.clone());
            let (j, n) = join_carried(c, &after, namer, i)
                .ok_or_else(|| format!("loop-carried value {i} changes type from {c} to {after}"))?;
            node_types[i] = n;
            if j != *c {
                *c = j;
                changed = true;
            }
        }
        if !changed {
            return Ok((carried, node_types));
        }
    }
    // No fixpoint within the budget: only the element types are certain.
    let erase = |t: Type| match t.dtype() {
        Some(d) => Type::Tensor(TensorType::unranked(d)),
        None => t,
    };
    Ok((carried.into_iter().map(erase).collect(), node_types.into_iter().map(erase).collect()))
}

/// The type of a scan output: the body's per-iteration type with the trip
/// count inserted at `axis` (counted in the stacked rank).
fn stacked(per_iter: &Type, len: &Expr, axis: i64) -> Result<Type, String> {
    match per_iter {
        Type::Tensor(t) => match &t.shape {
            Some(s) => {
                let r = s.rank() as i64 + 1;
                let a = super::from_end(axis, r);
                if a < 0 || a >= r {
                    return Err(format!("scan output axis {axis} is out of range for rank {r}"));
                }
                let mut dims: Vec<Dim> = s.dims().to_vec();
                let d = len.to_dim().ok_or_else(|| format!("the trip count {len} is negative"))?;
                dims.insert(a as usize, d);
                Ok(Type::tensor(t.dtype, dims))
            }
            None => Ok(Type::Tensor(TensorType::unranked(t.dtype))),
        },
        Type::Unknown => Ok(Type::Unknown),
        other => Err(format!("scan outputs must be tensors, the body gives {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::op::{self, If, Loop, Scan};
    use crate::{BinaryOp, Subgraph, Tensor, ValueInfo, ValueRef};

    #[test]
    fn sequences_and_optionals() {
        let x = t(DType::F32, &["n", "3"]);
        let y = t(DType::F32, &["m", "3"]);
        let r = one(Op::SequenceConstruct, [x.clone(), y.clone()], 1).unwrap();
        assert_eq!(r, vec!["seq<f32[unk__out0_0, 3]>"]);
        let s = Type::Sequence(Box::new(x.clone()));
        assert_eq!(one(Op::SequenceAt, [s.clone(), t(DType::I64, &[])], 1).unwrap(), vec!["f32[n, 3]"]);
        assert_eq!(one(Op::SequenceLength, [s.clone()], 1).unwrap(), vec!["i64[]"]);
        assert!(one(Op::SequenceAt, [x.clone(), t(DType::I64, &[])], 1).is_err());
        let cs = Op::ConcatFromSequence(op::ConcatFromSequence { axis: 0, new_axis: true });
        assert_eq!(one(cs, [s.clone()], 1).unwrap(), vec!["f32[unk__out0_0, n, 3]"]);
        let sts = Op::SplitToSequence(op::SplitToSequence { axis: 1, keepdims: false });
        assert_eq!(one(sts, [x.clone()], 1).unwrap(), vec!["seq<f32[n]>"]);
        let e = Op::SequenceEmpty(op::SequenceEmpty { dtype: Some(DType::I64) });
        assert_eq!(one(e, [], 1).unwrap(), vec!["seq<i64[*]>"]);
        let o = Op::Optional(op::OptionalOf { ty: None });
        assert_eq!(one(o, [x.clone()], 1).unwrap(), vec!["opt<f32[n, 3]>"]);
        let opt = Type::Optional(Box::new(x.clone()));
        assert_eq!(one(Op::OptionalGetElement, [opt.clone()], 1).unwrap(), vec!["f32[n, 3]"]);
        assert_eq!(one(Op::OptionalHasElement, [opt], 1).unwrap(), vec!["bool[]"]);
    }

    fn branch(g_outer_cap: &Type, make: impl Fn(&mut Graph, ValueRef) -> ValueRef) -> Subgraph {
        let mut b = Graph::new("branch");
        let c = b.add_capture("cap", g_outer_cap.clone());
        let y = make(&mut b, c);
        b.add_output("y", y);
        Subgraph::new(b)
    }

    #[test]
    fn if_joins_branches_or_takes_the_known_one() {
        let xt = t(DType::F32, &["batch", "4"]);
        let then_b = branch(&Type::Unknown, |b, c| b.add_op(Op::Unary(crate::UnaryOp::Relu), &[c], Type::Unknown));
        let else_b = branch(&Type::Unknown, |b, c| {
            let w = b.add_constant("", Tensor::from_vec(&[4, 2], vec![1.0f32; 8]));
            b.add_op(Op::MatMul, &[c, w], Type::Unknown)
        });
        for cond_value in [None, Some(true), Some(false)] {
            let mut g = Graph::new("g");
            let x = g.add_input("x", xt.clone());
            let cond = match cond_value {
                None => g.add_input("c", t(DType::Bool, &[])),
                Some(v) => g.add_constant("c", Tensor::scalar(v)),
            };
            let op = Op::If(If { else_branch: else_b.clone(), then_branch: then_b.clone() });
            let y = node(&mut g, op, &[Some(cond), Some(x)], 1)[0];
            g.add_output("y", y);
            run(&mut g);
            let got = ty_of(&g, y);
            match cond_value {
                None => assert!(got.starts_with("f32[batch, unk__"), "{got}"),
                Some(true) => assert_eq!(got, "f32[batch, 4]"),
                Some(false) => assert_eq!(got, "f32[batch, 2]"),
            }
            // The branch bodies were typed through the capture.
            let Op::If(a) = &g.node(y.node).op else { panic!() };
            let out = a.then_branch.outputs()[0].value;
            assert_eq!(a.then_branch.value_type(out).to_string(), "f32[batch, 4]");
            assert_eq!(run(&mut g).changed, 0);
        }
    }

    /// A loop that appends a row each iteration: the carried dim widens to a
    /// fresh symbol, the scan output stacks M iterations.
    #[test]
    fn loop_widens_carried_values() {
        let mut body = Graph::new("body");
        let _i = body.add_input("i", Type::Unknown);
        let c = body.add_input("cond", Type::Unknown);
        let acc = body.add_input("acc", Type::Unknown);
        let row = body.add_capture("row", Type::Unknown);
        let cat = body.add_op(Op::Concat(op::Concat { axis: 0 }), &[acc, row], Type::Unknown);
        let sq = body.add_op(Op::Binary(BinaryOp::Mul), &[row, row], Type::Unknown);
        body.add_output("cond_out", c);
        body.add_output("acc_out", cat);
        body.add_output("scan", sq);

        let mut g = Graph::new("g");
        let m = g.add_constant("m", Tensor::scalar(5i64));
        let init = g.add_input("init", t(DType::F32, &["0", "3"]));
        let row_v = g.add_input("r", t(DType::F32, &["1", "3"]));
        let lp = Op::Loop(Loop { body: Subgraph::new(body) });
        let outs = node(&mut g, lp, &[Some(m), None, Some(init), Some(row_v)], 2);
        g.add_output("acc", outs[0]);
        run(&mut g);
        let acc_t = ty_of(&g, outs[0]);
        assert!(acc_t.starts_with("f32[unk__") && acc_t.ends_with(", 3]"), "{acc_t}");
        assert_eq!(ty_of(&g, outs[1]), "f32[5, 1, 3]");
        let Op::Loop(l) = &g.node(outs[0].node).op else { panic!() };
        let cat_ty = l.body.value_type(l.body.outputs()[1].value).to_string();
        assert!(cat_ty.contains("+1"), "{cat_ty}");
        let before = g.clone();
        assert_eq!(run(&mut g).changed, 0);
        assert!(g.structurally_equal(&before));
    }

    #[test]
    fn scan_slices_and_stacks() {
        let mut body = Graph::new("body");
        let st = body.add_input("state", Type::Unknown);
        let xs = body.add_input("x", Type::Unknown);
        let sum = body.add_op(Op::Binary(BinaryOp::Add), &[st, xs], Type::Unknown);
        body.add_output("state_out", sum);
        body.add_output("y", sum);
        let mut g = Graph::new("g");
        let s0 = g.add_input("s0", t(DType::F32, &["4"]));
        let seq = g.add_input("xs", t(DType::F32, &["4", "seq"]));
        let sc = Op::Scan(Scan {
            body: Subgraph::new(body),
            num_scan_inputs: 1,
            scan_input_axes: Some(vec![1]),
            scan_input_directions: None,
            scan_output_axes: Some(vec![-1]),
            scan_output_directions: None,
        });
        let outs = node(&mut g, sc, &[Some(s0), Some(seq)], 2);
        g.add_output("y", outs[1]);
        run(&mut g);
        assert_eq!(ty_of(&g, outs[0]), "f32[4]");
        assert_eq!(ty_of(&g, outs[1]), "f32[4, seq]");
        let _ = ValueInfo::new("x", Type::Unknown);
    }
}

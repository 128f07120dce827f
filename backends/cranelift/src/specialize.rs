//! Specialisation: bind every symbolic dim, infer concrete shapes, and
//! evaluate constant subgraphs once.
//!
//! A compiled plan is for one set of input shapes. Binding the dims and
//! re-running shape inference turns `f32[batch, seq, 384]` into
//! `f32[8, 128, 384]` everywhere the shape follows from the inputs, which is
//! what lets the planner size buffers, bake strides into kernels and decide
//! fusion statically. Values whose shape depends on data (`NonZero`, `TopK`
//! with a computed k) keep symbolic dims and are handled at run time.

use crate::CompileError;
use sharc_interp::ops::{OpContext, run_op};
use sharc_ir::{Dim, Graph, NodeId, Op, Shape, Tensor, Type, Value, ValueRef, infer_shapes};
use std::collections::{BTreeMap, HashMap};

/// A graph specialised to concrete input shapes.
pub(crate) struct Specialized {
    /// The graph with concrete types wherever inference could fix them.
    pub graph: Graph,
    /// Nodes in execution order.
    pub order: Vec<NodeId>,
    /// Values known at compile time (constants and folded subgraphs), not
    /// counting weights, which stay in the weight store.
    pub consts: HashMap<ValueRef, Tensor>,
    /// The concrete shape of each graph input.
    pub input_shapes: Vec<Vec<usize>>,
}

/// A readable label for a node: its name, else its first output's name.
pub(crate) fn label(g: &Graph, id: NodeId) -> String {
    let n = g.node(id);
    match n.outputs.first() {
        Some(o) if n.name.is_empty() => o.name.clone(),
        _ => n.name.clone(),
    }
}

/// Binds the dims, infers shapes and folds constants.
pub(crate) fn specialize(graph: &Graph, dims: &BTreeMap<String, usize>) -> Result<Specialized, CompileError> {
    let mut g = graph.clone();
    let mut input_shapes = Vec::new();
    for &id in graph.inputs() {
        let vi = &graph.node(id).outputs[0];
        let Type::Tensor(tt) = &vi.ty else {
            return Err(CompileError::Graph(format!(
                "input '{}' has type {}; only tensor inputs can be compiled",
                vi.name, vi.ty
            )));
        };
        let Some(shape) = &tt.shape else {
            return Err(CompileError::Graph(format!("input '{}' has unknown rank; give it a shape", vi.name)));
        };
        let mut concrete = Vec::with_capacity(shape.rank());
        for d in shape.dims() {
            concrete.push(match d {
                Dim::Fixed(n) => *n as usize,
                Dim::Sym(s) => {
                    *dims.get(s).ok_or_else(|| CompileError::MissingDim { input: vi.name.clone(), dim: s.clone() })?
                }
            });
        }
        g.node_mut(id).outputs[0].ty = Type::tensor(tt.dtype, Shape::fixed(&concrete));
        input_shapes.push(concrete);
    }
    infer_shapes(&mut g).map_err(|e| CompileError::Graph(format!("shape inference after binding dims: {e}")))?;
    let order = g.topo_order().map_err(|e| CompileError::Graph(e.to_string()))?;
    let consts = fold_constants(&g, &order)?;
    Ok(Specialized { graph: g, order, consts, input_shapes })
}

/// Evaluates every pure node whose inputs are all known at compile time.
///
/// Weights count as known, so weight-only subgraphs (a transposed weight, a
/// derived `W + B·A`) are computed once here instead of on every run; a
/// subgraph reached from one shared weight through several nodes with the
/// same op is computed and stored once.
fn fold_constants(g: &Graph, order: &[NodeId]) -> Result<HashMap<ValueRef, Tensor>, CompileError> {
    let mut consts: HashMap<ValueRef, Tensor> = HashMap::new();
    // Identity of each known value, so equal computations on the same
    // inputs are done (and stored) once.
    let mut ident: HashMap<ValueRef, String> = HashMap::new();
    let mut memo: HashMap<String, Vec<Tensor>> = HashMap::new();
    let mut next = 0usize;
    for &id in order {
        let node = g.node(id);
        match &node.op {
            Op::Input => continue,
            Op::Weight(w) => {
                ident.insert(ValueRef::new(id, 0), format!("w{}", w.0));
                continue;
            }
            Op::Constant(t) => {
                let v = ValueRef::new(id, 0);
                consts.insert(v, t.clone());
                ident.insert(v, format!("c{next}"));
                next += 1;
                continue;
            }
            op if !op.is_pure() || !op.subgraphs().is_empty() => continue,
            _ => {}
        }
        let ins = g.node_inputs(id);
        // Shape and Size need only the (now concrete) type of their input,
        // not its data: this is what makes the shape arithmetic of exported
        // models (Shape → Gather → Concat → Reshape) fold away.
        if let Some(t) = ins.first().copied().flatten().and_then(|x| static_shape_tensor(g, &node.op, x)) {
            let v = ValueRef::new(id, 0);
            ident.insert(v, format!("c{next}"));
            next += 1;
            consts.insert(v, t);
            continue;
        }
        if ins.iter().flatten().any(|v| !ident.contains_key(v)) {
            continue;
        }
        // Shape-only ops on a weight need not be folded: the planner turns
        // them into views of the weight, which keeps a shared weight shared.
        let reads_weight = ins.iter().flatten().any(|v| matches!(g.node(v.node).op, Op::Weight(_)));
        if reads_weight && is_view_op(&node.op) {
            continue;
        }
        let key = format!(
            "{:?}|{}",
            node.op,
            ins.iter().map(|v| v.map_or("-".to_string(), |v| ident[&v].clone())).collect::<Vec<_>>().join(",")
        );
        let outs = if let Some(outs) = memo.get(&key) {
            outs.clone()
        } else {
            let args: Vec<Option<Value>> = ins
                .iter()
                .map(|v| {
                    v.map(|v| {
                        Value::Tensor(match &g.node(v.node).op {
                            Op::Weight(w) => g.weights.get(*w).map(|w| w.tensor().clone()).unwrap_or_else(|| {
                                // The verifier guarantees weights exist; an empty
                                // tensor makes the op fail with a message below.
                                Tensor::zeros(sharc_ir::DType::F32, &[0])
                            }),
                            _ => consts[&v].clone(),
                        })
                    })
                })
                .collect();
            let types: Vec<Type> = node.outputs.iter().map(|o| o.ty.clone()).collect();
            let name = label(g, id);
            let cx = OpContext { node_name: &name, num_outputs: node.outputs.len(), output_types: &types };
            let out = match run_op(&node.op, &args, &cx) {
                Ok(out) => out,
                // An op the interpreter does not implement may still be
                // handled at run time by nothing else; leave it unfolded so
                // the error (if any) names it when the model runs.
                Err(e) if e.unsupported => continue,
                Err(e) => {
                    return Err(CompileError::Fold {
                        node: name,
                        op: node.op.op_type().to_string(),
                        message: e.message,
                    });
                }
            };
            let mut tensors = Vec::new();
            for v in out {
                match v {
                    Value::Tensor(t) => tensors.push(t),
                    // Sequences and optionals stay run-time values.
                    _ => break,
                }
            }
            if tensors.len() < node.outputs.len() {
                continue;
            }
            memo.insert(key.clone(), tensors.clone());
            tensors
        };
        for (port, t) in outs.into_iter().enumerate().take(node.outputs.len()) {
            let v = ValueRef::new(id, port as u32);
            ident.insert(v, format!("{key}#{port}"));
            consts.insert(v, t);
        }
    }
    Ok(consts)
}

/// The result of `Shape` or `Size` on `x` when `x`'s shape is fully known.
fn static_shape_tensor(g: &Graph, op: &Op, x: ValueRef) -> Option<Tensor> {
    let dims: Vec<i64> = g.value_type(x).shape()?.as_fixed()?.iter().map(|&d| d as i64).collect();
    match op {
        Op::Shape(s) => {
            // ONNX: negative bounds count from the end; both are clamped to [0, rank].
            let rank = dims.len() as i64;
            let clamp = |i: i64| (if i < 0 { i + rank } else { i }).clamp(0, rank) as usize;
            let (start, end) = (clamp(s.start), clamp(s.end.unwrap_or(rank)));
            let picked: Vec<i64> = if start < end { dims[start..end].to_vec() } else { Vec::new() };
            Some(Tensor::from_vec(&[picked.len()], picked))
        }
        Op::Size => Some(Tensor::from_vec(&[], vec![dims.iter().product::<i64>()])),
        _ => None,
    }
}

/// Ops that only re-interpret the shape or order of their first input.
pub(crate) fn is_view_op(op: &Op) -> bool {
    matches!(op, Op::Reshape(_) | Op::Transpose(_) | Op::Squeeze | Op::Unsqueeze | Op::Flatten(_) | Op::Identity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharc_ir::{BinaryOp, DType, Weight};

    #[test]
    fn missing_dim_is_named() {
        let mut g = Graph::new("g");
        let x = g.add_input("tokens", Type::tensor(DType::F32, vec![Dim::sym("batch"), Dim::Fixed(3)]));
        g.add_output("y", x);
        let err = specialize(&g, &BTreeMap::new()).err().expect("must fail");
        assert!(err.to_string().contains("'tokens'") && err.to_string().contains("'batch'"), "{err}");
    }

    #[test]
    fn binds_dims_and_folds_shape_arithmetic() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", Type::tensor(DType::F32, vec![Dim::sym("n"), Dim::Fixed(3)]));
        let s = g.add_op(Op::Shape(sharc_ir::op::ShapeOf { start: 0, end: None }), &[x], Type::Unknown);
        let two = g.add_constant("two", Tensor::from_vec(&[1], vec![2i64]));
        let m = g.add_op(Op::Binary(BinaryOp::Mul), &[s, two], Type::Unknown);
        g.add_output("m", m);
        let mut dims = BTreeMap::new();
        dims.insert("n".to_string(), 5);
        let sp = specialize(&g, &dims).unwrap();
        assert_eq!(sp.consts[&m], Tensor::from_vec(&[2], vec![10i64, 6]));
        assert_eq!(sp.graph.value_type(x).shape().unwrap().as_fixed(), Some(vec![5, 3]));
    }

    #[test]
    fn shared_weight_derivations_fold_once() {
        let mut g = Graph::new("g");
        let w = g.add_weight(Weight::from_tensor("w", Tensor::from_vec(&[2], vec![1.0f32, 2.0])));
        let w2 = g.weight_value(sharc_ir::WeightId(0));
        let a = g.add_op(Op::Unary(sharc_ir::UnaryOp::Neg), &[w], Type::Unknown);
        let b = g.add_op(Op::Unary(sharc_ir::UnaryOp::Neg), &[w2], Type::Unknown);
        g.add_output("a", a);
        g.add_output("b", b);
        let sp = specialize(&g, &BTreeMap::new()).unwrap();
        let (ta, tb) = (&sp.consts[&a], &sp.consts[&b]);
        assert_eq!(ta, &Tensor::from_vec(&[2], vec![-1.0f32, -2.0]));
        // One computation, one buffer: both values share the array.
        let (pa, pb) = (ta.as_array::<f32>().unwrap().as_ptr(), tb.as_array::<f32>().unwrap().as_ptr());
        assert_eq!(pa, pb);
    }
}

//! Specialising a graph to static shapes and evaluating its shape arithmetic.
//!
//! MLIR's linalg lowering here works on static shapes: tiling, fusion and the
//! GPU launch dimensions all want known sizes. So before lowering, every
//! symbolic dim of the graph inputs gets its value from the `--shape` map,
//! shape inference re-runs to make every value's type static, and the parts
//! of the graph that depend only on constants and shapes (the `Shape` →
//! `Gather` → `Concat` → `Reshape` chains exporters emit, masks built from
//! `Range`) are evaluated once, with the reference interpreter, so that the
//! lowering sees them as literal values.

use crate::MlirError;
use sharc_interp::ops::{OpContext, run_op};
use sharc_ir::{
    DType, Dim, Fact, Graph, NodeId, Op, SymTensor, Tensor, Type, Value, ValueRef, infer_node_facts, infer_shapes,
};
use std::collections::{BTreeMap, HashMap};

/// Results larger than this many elements are computed at run time instead of
/// being folded into literal constants, so a module never embeds megabytes.
pub const FOLD_LIMIT: usize = 1 << 16;

/// Weights of at most this many elements count as known values: exporters
/// store shape vectors and axis lists as initializers. Larger weights stay
/// run-time arguments so they are passed by pointer, once, however many nodes
/// share them.
pub const SMALL_WEIGHT: usize = 64;

/// A graph with static types and its compile-time-known values.
pub struct Specialised {
    /// The graph with every value's type static.
    pub graph: Graph,
    /// Values known at compile time (constants and everything computed from
    /// them and from static shapes alone).
    pub known: HashMap<ValueRef, Tensor>,
    /// Small integer tensors whose elements are expressions over
    /// data-dependent dims (the shape of a `NonZero` result, say): known up
    /// to run-time sizes, so the lowering builds them from those sizes
    /// instead of running the shape arithmetic.
    pub sym: HashMap<ValueRef, SymTensor>,
}

/// A name for a node in messages: its own name, else its first output's.
pub fn label(g: &Graph, id: NodeId) -> String {
    let n = g.node(id);
    match n.outputs.first() {
        Some(o) if n.name.is_empty() => o.name.clone(),
        _ => n.name.clone(),
    }
}

/// Parses `batch=8,seq=128` (or the pieces of a repeated flag) into a map.
pub fn parse_dims<S: AsRef<str>>(items: &[S]) -> Result<BTreeMap<String, u64>, MlirError> {
    let mut out = BTreeMap::new();
    for item in items.iter().flat_map(|s| s.as_ref().split(',').map(str::to_string).collect::<Vec<_>>()) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| MlirError::Graph(format!("--shape item '{item}' is not of the form name=value")))?;
        let v: u64 = v
            .trim()
            .parse()
            .map_err(|_| MlirError::Graph(format!("--shape item '{item}': '{v}' is not a non-negative integer")))?;
        out.insert(k.trim().to_string(), v);
    }
    Ok(out)
}

/// Gives every graph input a static shape from `dims`, re-infers all types,
/// and evaluates the compile-time-known part of the graph.
pub fn specialise(graph: &Graph, dims: &BTreeMap<String, u64>) -> Result<Specialised, MlirError> {
    let mut g = graph.clone();
    for &id in graph.inputs() {
        let info = &mut g.node_mut(id).outputs[0];
        let name = info.name.clone();
        let Type::Tensor(t) = &mut info.ty else {
            return Err(MlirError::Graph(format!(
                "input '{name}' is not a tensor ({}); only tensors compile",
                info.ty
            )));
        };
        let Some(shape) = t.shape.as_mut() else {
            return Err(MlirError::Graph(format!("input '{name}' has an unknown rank; give the model a ranked input")));
        };
        for d in shape.0.iter_mut() {
            if let Dim::Sym(s) = d {
                let v = dims
                    .get(s.as_str())
                    .ok_or_else(|| MlirError::MissingDim { input: name.clone(), symbol: s.clone() })?;
                *d = Dim::Fixed(*v);
            }
        }
    }
    // Derived dims (`batch*seq`) on inner values would only be merged with the
    // new facts; clearing them lets inference state everything afresh.
    let inputs: Vec<NodeId> = g.inputs().to_vec();
    let ids: Vec<NodeId> = g.node_ids().collect();
    for id in ids {
        if inputs.contains(&id) || matches!(g.node(id).op, Op::Weight(_) | Op::Constant(_)) {
            continue;
        }
        for o in &mut g.node_mut(id).outputs {
            o.ty = Type::Unknown;
        }
    }
    infer_shapes(&mut g).map_err(|e| MlirError::Graph(format!("shape inference after specialising: {e}")))?;
    let (known, sym) = fold(&g)?;
    Ok(Specialised { graph: g, known, sym })
}

/// The static shape of a value, or an error naming it.
pub fn static_shape(g: &Graph, v: ValueRef) -> Result<(DType, Vec<u64>), MlirError> {
    let info = g.value_info(v);
    let t = info
        .ty
        .as_tensor()
        .ok_or_else(|| MlirError::Graph(format!("value '{}' is not a tensor ({})", info.name, info.ty)))?;
    let shape = t.shape.as_ref().ok_or_else(|| {
        MlirError::Graph(format!("value '{}' has an unknown rank even with all input dims given", info.name))
    })?;
    let mut out = Vec::with_capacity(shape.rank());
    for d in shape.dims() {
        match d {
            Dim::Fixed(n) => out.push(*n),
            Dim::Sym(s) => {
                return Err(MlirError::Graph(format!(
                    "value '{}' has the dim '{s}', which is data-dependent (not fixed by the input shapes); \
                     the MLIR backend needs static shapes",
                    info.name
                )));
            }
        }
    }
    Ok((t.dtype, out))
}

/// Evaluates what is known at compile time. Nodes whose inputs are all
/// literals run in the interpreter; for the rest, sharc's inference rules
/// track small integer tensors symbolically (`Shape` of a value with a
/// data-dependent dim, the arithmetic on it), which gives literals where the
/// data-dependent part drops out (`Shape(x)[-1]`) and symbolic shape vectors
/// otherwise.
/// Literal values, and symbolically known small tensors.
type Folded = (HashMap<ValueRef, Tensor>, HashMap<ValueRef, SymTensor>);

fn fold(g: &Graph) -> Result<Folded, MlirError> {
    let order = g.topo_order().map_err(|e| MlirError::Graph(e.to_string()))?;
    let mut known: HashMap<ValueRef, Tensor> = HashMap::new();
    let mut sym: HashMap<ValueRef, SymTensor> = HashMap::new();
    for id in order {
        fold_concrete(g, id, &mut known)?;
        fold_symbolic(g, id, &mut known, &mut sym);
    }
    Ok((known, sym))
}

/// Tracks the node's outputs symbolically when the concrete fold did not
/// evaluate them.
fn fold_symbolic(g: &Graph, id: NodeId, known: &mut HashMap<ValueRef, Tensor>, sym: &mut HashMap<ValueRef, SymTensor>) {
    let node = g.node(id);
    if node.op.is_source() || !node.op.is_pure() || !node.op.subgraphs().is_empty() {
        return;
    }
    let outs: Vec<ValueRef> = (0..node.outputs.len()).map(|p| ValueRef::new(id, p as u32)).collect();
    if outs.iter().all(|v| known.contains_key(v)) {
        return;
    }
    let inputs = g.node_inputs(id);
    // Only worth it when some input is a tracked value, or for the ops that
    // read types only.
    let reads_type = matches!(node.op, Op::Shape(_) | Op::Size);
    if !reads_type && !inputs.iter().flatten().any(|v| sym.contains_key(v) || known.contains_key(v)) {
        return;
    }
    let facts: Vec<Option<Fact>> = inputs
        .iter()
        .map(|v| {
            v.map(|v| {
                if let Some(t) = known.get(&v) {
                    Fact::of_tensor(t)
                } else if let Some(s) = sym.get(&v) {
                    Fact { ty: g.value_info(v).ty.clone(), value: Some(s.clone()) }
                } else {
                    Fact::of_type(g.value_info(v).ty.clone())
                }
            })
        })
        .collect();
    let names: Vec<&str> = node.outputs.iter().map(|o| o.name.as_str()).collect();
    let Ok(out) = infer_node_facts(&node.op, &facts, &names) else { return };
    for (v, fact) in outs.into_iter().zip(out) {
        let Some(value) = fact.value else { continue };
        if known.contains_key(&v) {
            continue;
        }
        // The tracked value must describe the graph's (static) type.
        let ty = &g.value_info(v).ty;
        let fits = ty.dtype() == Some(value.dtype)
            && ty.shape().and_then(|s| s.as_fixed()).as_deref() == Some(value.shape.as_slice());
        if !fits {
            continue;
        }
        match value.to_tensor() {
            Some(t) => {
                known.insert(v, t);
            }
            None if value.exprs().is_some() => {
                sym.insert(v, value);
            }
            None => {}
        }
    }
}

/// Evaluates a node in the interpreter when all its inputs are literals (and
/// records shapes, sizes, constants and small weights).
fn fold_concrete(g: &Graph, id: NodeId, known: &mut HashMap<ValueRef, Tensor>) -> Result<(), MlirError> {
    {
        let node = g.node(id);
        let v0 = ValueRef::new(id, 0);
        match &node.op {
            Op::Input => return Ok(()),
            Op::Constant(t) => {
                known.insert(v0, t.clone());
                return Ok(());
            }
            Op::Weight(w) => {
                if let Some(w) = g.weights.get(*w)
                    && w.num_elements() as usize <= SMALL_WEIGHT
                {
                    known.insert(v0, w.tensor().clone());
                }
                return Ok(());
            }
            Op::Shape(a) => {
                if let Some(src) = g.node_input(id, 0)
                    && let Ok((_, dims)) = static_shape(g, src)
                {
                    let r = dims.len() as i64;
                    let norm = |x: i64| if x < 0 { (x + r).clamp(0, r) } else { x.clamp(0, r) } as usize;
                    let (s, e) = (norm(a.start), norm(a.end.unwrap_or(r)));
                    let vals: Vec<i64> = dims[s..e.max(s)].iter().map(|&d| d as i64).collect();
                    known.insert(v0, Tensor::from_vec(&[vals.len()], vals));
                }
                return Ok(());
            }
            Op::Size => {
                if let Some(src) = g.node_input(id, 0)
                    && let Ok((_, dims)) = static_shape(g, src)
                {
                    known.insert(v0, Tensor::scalar(dims.iter().product::<u64>() as i64));
                }
                return Ok(());
            }
            op if !op.is_pure() || !op.subgraphs().is_empty() => return Ok(()),
            _ => {}
        }
        let inputs = g.node_inputs(id);
        if inputs.is_empty() || inputs.iter().flatten().any(|v| !known.contains_key(v)) {
            return Ok(());
        }
        // Only fold what stays small; the size is static by now.
        let small = node
            .outputs
            .iter()
            .all(|o| o.ty.shape().and_then(|s| s.num_elements()).is_some_and(|n| n as usize <= FOLD_LIMIT));
        if !small {
            return Ok(());
        }
        let args: Vec<Option<Value>> = inputs.iter().map(|v| v.map(|v| Value::Tensor(known[&v].clone()))).collect();
        let types: Vec<Type> = node.outputs.iter().map(|o| o.ty.clone()).collect();
        let name = label(g, id);
        let cx = OpContext { node_name: &name, num_outputs: node.outputs.len(), output_types: &types };
        let out = run_op(&node.op, &args, &cx).map_err(|e| {
            MlirError::Graph(format!("evaluating the constant node '{name}' ({}): {e}", node.op.op_type()))
        })?;
        for (port, value) in out.into_iter().enumerate().take(node.outputs.len()) {
            if let Value::Tensor(t) = value {
                known.insert(ValueRef::new(id, port as u32), t);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharc_ir::{Dim, Op, Type, UnaryOp};

    fn tiny() -> Graph {
        let mut g = Graph::new("t");
        let x = g.add_input("x", Type::tensor(DType::F32, vec![Dim::sym("batch"), Dim::Fixed(4)]));
        let s = g.add_op(Op::Shape(sharc_ir::op::ShapeOf { start: 0, end: None }), &[x], Type::Unknown);
        let y = g.add_op(Op::Unary(UnaryOp::Relu), &[x], Type::Unknown);
        g.add_output("y", y);
        g.add_output("s", s);
        g
    }

    #[test]
    fn missing_dim_is_named() {
        let Err(err) = specialise(&tiny(), &BTreeMap::new()) else { panic!("batch has no value") };
        let msg = err.to_string();
        assert!(msg.contains("'batch'") && msg.contains("input 'x'") && msg.contains("--shape batch=N"), "{msg}");
    }

    #[test]
    fn shapes_become_static_and_shape_ops_fold() {
        let sp = specialise(&tiny(), &parse_dims(&["batch=3"]).unwrap()).unwrap();
        let g = &sp.graph;
        let y = g.outputs()[0].value;
        assert_eq!(static_shape(g, y).unwrap(), (DType::F32, vec![3, 4]));
        let s = g.outputs()[1].value;
        assert_eq!(sp.known[&s].to_i64_vec().unwrap(), vec![3, 4]);
        assert!(!sp.known.contains_key(&y));
    }

    #[test]
    fn shapes_of_data_dependent_values_fold_symbolically() {
        let mut g = Graph::new("nz");
        let x = g.add_input("x", Type::tensor(DType::F32, vec![Dim::Fixed(5)]));
        let nz = g.add_op(Op::NonZero, &[x], Type::Unknown);
        let s = g.add_op(Op::Shape(sharc_ir::op::ShapeOf { start: 0, end: None }), &[nz], Type::Unknown);
        let zero = g.add_constant("zero", Tensor::scalar(0i64));
        let rank = g.add_op(Op::Gather(sharc_ir::op::Gather { axis: 0 }), &[s, zero], Type::Unknown);
        g.add_output("s", s);
        g.add_output("rank", rank);
        let sp = specialise(&g, &BTreeMap::new()).unwrap();
        // [1, n]: known up to the count, which only the data decide.
        assert!(!sp.known.contains_key(&s));
        let sv = &sp.sym[&s];
        assert_eq!(sv.shape, vec![2]);
        assert_eq!(sv.exprs().unwrap()[0].as_int(), Some(1));
        assert!(sv.exprs().unwrap()[1].as_int().is_none());
        // Its first element is a plain literal.
        assert_eq!(sp.known[&rank].to_i64_vec().unwrap(), vec![1]);
    }

    #[test]
    fn dims_parse_and_reject_garbage() {
        let d = parse_dims(&["batch=8,seq=128", "x=1"]).unwrap();
        assert_eq!(d.get("seq"), Some(&128));
        assert_eq!(d.len(), 3);
        assert!(parse_dims(&["batch"]).is_err());
        assert!(parse_dims(&["batch=-1"]).is_err());
    }
}

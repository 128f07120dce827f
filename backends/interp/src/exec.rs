//! Walks a graph in topological order and runs each node.
//!
//! Values are dropped after their last use, so memory stays proportional to
//! the live set rather than to the whole graph. Weights are decoded once per
//! weight (the store caches the decoded tensor) and shared by every node that
//! refers to them.

use crate::ops::{OpContext, run_op};
use sharc_ir::{EvalError, Evaluator, Graph, NodeId, Op, Value, ValueRef};
use std::collections::HashMap;

/// The reference interpreter.
#[derive(Clone, Debug, Default)]
pub struct Interpreter {}

impl Interpreter {
    /// A new interpreter.
    pub fn new() -> Interpreter {
        Interpreter {}
    }
}

impl Evaluator for Interpreter {
    fn name(&self) -> &str {
        "interp"
    }

    fn evaluate(&self, graph: &Graph, inputs: &[Value]) -> Result<Vec<Value>, EvalError> {
        run_graph(graph, inputs, &[])
    }
}

fn label(g: &Graph, id: NodeId) -> String {
    let n = g.node(id);
    match n.outputs.first() {
        Some(o) if n.name.is_empty() => o.name.clone(),
        _ => n.name.clone(),
    }
}

/// Runs a graph (or a body graph) on its inputs and captured values and
/// returns its outputs.
pub fn run_graph(graph: &Graph, inputs: &[Value], captures: &[Value]) -> Result<Vec<Value>, EvalError> {
    if inputs.len() != graph.inputs().len() {
        return Err(EvalError::new(format!(
            "graph '{}' takes {} inputs but {} were given",
            graph.name,
            graph.inputs().len(),
            inputs.len()
        )));
    }
    if captures.len() != graph.captures().len() {
        return Err(EvalError::new(format!(
            "graph '{}' captures {} outer values but {} were given",
            graph.name,
            graph.captures().len(),
            captures.len()
        )));
    }
    let order = graph.topo_order().map_err(|e| EvalError::new(e.to_string()))?;
    // How many more reads each value will get; at zero it is dropped.
    let mut remaining: HashMap<ValueRef, usize> = HashMap::new();
    for &id in &order {
        for v in graph.node_inputs(id).into_iter().flatten() {
            *remaining.entry(v).or_default() += 1;
        }
    }
    for o in graph.outputs() {
        *remaining.entry(o.value).or_default() += 1;
    }
    let mut env: HashMap<ValueRef, Value> = HashMap::new();
    for (i, &id) in graph.inputs().iter().enumerate() {
        env.insert(ValueRef::new(id, 0), inputs[i].clone());
    }
    for (i, &id) in graph.captures().iter().enumerate() {
        env.insert(ValueRef::new(id, 0), captures[i].clone());
    }
    for &id in &order {
        let node = graph.node(id);
        let outputs: Vec<Value> = match &node.op {
            Op::Input => continue,
            Op::Weight(w) => {
                let w = graph.weights.get(*w).ok_or_else(|| {
                    EvalError::new(format!("weight {w} is missing from the store")).at(&label(graph, id), "Weight")
                })?;
                vec![Value::Tensor(w.tensor().clone())]
            }
            Op::Constant(t) => vec![Value::Tensor(t.clone())],
            op => {
                let mut args: Vec<Option<Value>> = Vec::new();
                for v in graph.node_inputs(id) {
                    args.push(match v {
                        None => None,
                        Some(v) => {
                            let left = remaining.get_mut(&v).expect("every read was counted");
                            *left -= 1;
                            let value = if *left == 0 { env.remove(&v) } else { env.get(&v).cloned() };
                            Some(value.ok_or_else(|| {
                                EvalError::new(format!("input '{}' has no value", graph.value_info(v).name))
                                    .at(&label(graph, id), op.op_type())
                            })?)
                        }
                    });
                }
                let types: Vec<sharc_ir::Type> = node.outputs.iter().map(|o| o.ty.clone()).collect();
                let cx =
                    OpContext { node_name: &label(graph, id), num_outputs: node.outputs.len(), output_types: &types };
                let out = run_op(op, &args, &cx).map_err(|e| e.at(&label(graph, id), op.op_type()))?;
                if out.len() < node.outputs.len() {
                    return Err(EvalError::new(format!(
                        "produced {} outputs, the node declares {}",
                        out.len(),
                        node.outputs.len()
                    ))
                    .at(&label(graph, id), op.op_type()));
                }
                out
            }
        };
        for (port, value) in outputs.into_iter().enumerate().take(node.outputs.len()) {
            let v = ValueRef::new(id, port as u32);
            if remaining.get(&v).copied().unwrap_or(0) > 0 {
                env.insert(v, value);
            }
        }
    }
    graph
        .outputs()
        .iter()
        .map(|o| {
            let left = remaining.get_mut(&o.value).expect("outputs were counted");
            *left -= 1;
            let v = if *left == 0 { env.remove(&o.value) } else { env.get(&o.value).cloned() };
            v.ok_or_else(|| EvalError::new(format!("graph output '{}' was not computed", o.name)))
        })
        .collect()
}

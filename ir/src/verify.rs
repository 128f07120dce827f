//! The verifier: structural checks every pass must leave true.
//!
//! It checks that edges connect existing ports, that no input port is fed
//! twice, that the graph is acyclic, that weight references resolve, that
//! value names are unique, that inputs and outputs are well formed, and
//! (recursively) that body graphs agree with the nodes that own them. It
//! does not check types against ops; shape inference does that.

use crate::{Graph, NodeId, Op};
use petgraph::Direction;
use petgraph::visit::EdgeRef;
use std::collections::{HashMap, HashSet};

/// A violated invariant, naming the node or value involved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct VerifyError(pub String);

fn node_label(g: &Graph, id: NodeId) -> String {
    let n = g.node(id);
    let out = n.outputs.first().map(|o| o.name.as_str()).unwrap_or("");
    let name = if !n.name.is_empty() { n.name.as_str() } else { out };
    format!("'{name}' ({})", n.op.op_type())
}

/// Checks a graph and its bodies. Returns the first problem found.
pub fn verify(g: &Graph) -> Result<(), VerifyError> {
    verify_in(g, &g.name)
}

fn verify_in(g: &Graph, path: &str) -> Result<(), VerifyError> {
    let err = |m: String| Err(VerifyError(format!("in graph '{path}': {m}")));
    let dag = g.petgraph();
    let mut names: HashMap<&str, NodeId> = HashMap::new();
    for id in g.node_ids() {
        let node = g.node(id);
        for o in &node.outputs {
            if o.name.is_empty() {
                return err(format!("node {} has an output without a name", node_label(g, id)));
            }
            if let Some(other) = names.insert(&o.name, id) {
                return err(format!(
                    "value name '{}' is produced by both {} and {}",
                    o.name,
                    node_label(g, other),
                    node_label(g, id)
                ));
            }
        }
        let mut ports = HashSet::new();
        for e in dag.edges_directed(id, Direction::Incoming) {
            let src = g.node(e.source());
            if e.weight().src_port as usize >= src.outputs.len() {
                return err(format!(
                    "node {} reads output {} of {}, which has {} outputs",
                    node_label(g, id),
                    e.weight().src_port,
                    node_label(g, e.source()),
                    src.outputs.len()
                ));
            }
            if !ports.insert(e.weight().dst_port) {
                return err(format!("input {} of node {} is connected twice", e.weight().dst_port, node_label(g, id)));
            }
        }
        match &node.op {
            Op::Weight(w) if g.weights.get(*w).is_none() => {
                return err(format!("node {} refers to weight {w}, which does not exist", node_label(g, id)));
            }
            Op::Input if !g.inputs().contains(&id) && !g.captures().contains(&id) => {
                return err(format!("input node {} is neither a graph input nor a capture", node_label(g, id)));
            }
            _ => {}
        }
        if node.op.is_source() && !ports.is_empty() {
            return err(format!("source node {} has inputs", node_label(g, id)));
        }
        if node.outputs.is_empty() && !matches!(node.op, Op::Opaque(_)) {
            return err(format!("node {} has no outputs", node_label(g, id)));
        }
        let bodies = node.op.subgraphs();
        if let Some(first) = bodies.first() {
            let captures = first.captures().len();
            let max_port = g.node_inputs(id).len();
            for (i, b) in bodies.iter().enumerate() {
                if b.captures().len() != captures {
                    return err(format!(
                        "the bodies of node {} capture different numbers of outer values ({} and {})",
                        node_label(g, id),
                        captures,
                        b.captures().len()
                    ));
                }
                verify_in(b, &format!("{path}/{}#{i}", node_label(g, id)))?;
            }
            if max_port < captures {
                return err(format!(
                    "node {} has {max_port} inputs but its bodies capture {captures} outer values",
                    node_label(g, id)
                ));
            }
        }
    }
    let mut seen = HashSet::new();
    for &i in g.inputs().iter().chain(g.captures()) {
        if !g.contains(i) {
            return err(format!("graph input node {i:?} does not exist"));
        }
        if !matches!(g.node(i).op, Op::Input) {
            return err(format!("graph input {} is not an Input node", node_label(g, i)));
        }
        if !seen.insert(i) {
            return err(format!("graph input {} is listed twice", node_label(g, i)));
        }
    }
    let mut out_names = HashSet::new();
    for o in g.outputs() {
        if !g.contains(o.value.node) || o.value.port as usize >= g.node(o.value.node).outputs.len() {
            return err(format!("graph output '{}' refers to a value that does not exist", o.name));
        }
        if !out_names.insert(&o.name) {
            return err(format!("graph output name '{}' is used twice", o.name));
        }
    }
    g.topo_order().map_err(|e| VerifyError(format!("in graph '{path}': {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Tensor, Type, ValueInfo, ValueRef, Weight, WeightId};

    #[test]
    fn accepts_a_good_graph() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", Type::tensor(DType::F32, vec![]));
        let w = g.add_weight(Weight::from_tensor("w", Tensor::scalar(1.0f32)));
        let y = g.add_op(Op::MatMul, &[x, w], Type::Unknown);
        g.add_output("y", y);
        verify(&g).unwrap();
    }

    #[test]
    fn rejects_duplicate_names_bad_ports_and_missing_weights() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", Type::Unknown);
        g.add_node(Op::Identity, "", &[Some(x)], vec![ValueInfo::new("x", Type::Unknown)]);
        assert!(verify(&g).unwrap_err().0.contains("value name 'x'"));

        let mut g = Graph::new("g");
        let x = g.add_input("x", Type::Unknown);
        g.add_node(Op::Identity, "", &[Some(ValueRef::new(x.node, 3))], vec![ValueInfo::new("y", Type::Unknown)]);
        assert!(verify(&g).unwrap_err().0.contains("reads output 3"));

        let mut g = Graph::new("g");
        g.add_node(Op::Weight(WeightId(7)), "", &[], vec![ValueInfo::new("w", Type::Unknown)]);
        assert!(verify(&g).unwrap_err().0.contains("weight w7"));
    }

    #[test]
    fn rejects_cycles() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", Type::Unknown);
        let a = g.add_op(Op::Identity, &[x], Type::Unknown);
        let b = g.add_op(Op::Identity, &[a], Type::Unknown);
        g.set_node_input(a.node, 0, Some(b));
        assert!(verify(&g).unwrap_err().0.contains("cycle"));
    }
}

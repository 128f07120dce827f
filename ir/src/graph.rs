//! The graph: nodes on a petgraph `StableDiGraph`, with inputs, outputs,
//! weights and metadata.
//!
//! A value is one output port of one node ([`ValueRef`]). Edges carry the
//! producer's output port and the consumer's input port; a missing optional
//! input is simply an input port with no edge. Node ids stay valid when other
//! nodes are removed, so passes can hold on to them across edits.
//!
//! Iteration order is always deterministic: [`Graph::topo_order`] breaks ties
//! by node id (insertion order), which is what makes printing stable.

use crate::{Op, Tensor, Type, Weight, WeightId, WeightStore};
use petgraph::Direction;
use petgraph::stable_graph::{EdgeIndex, NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::fmt;

/// Identifies a node. Stays valid until that node is removed.
pub type NodeId = NodeIndex<u32>;

/// One output of one node: the unit of data flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueRef {
    /// The producing node.
    pub node: NodeId,
    /// Which of its outputs.
    pub port: u32,
}

impl ValueRef {
    /// Output `port` of `node`.
    pub fn new(node: NodeId, port: u32) -> ValueRef {
        ValueRef { node, port }
    }
}

/// The name and type of a value.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    /// Unique within its graph. Kept from the source model where possible.
    pub name: String,
    /// Type; [`Type::Unknown`] until shape inference has run.
    pub ty: Type,
}

impl ValueInfo {
    /// A value with a name and type.
    pub fn new(name: impl Into<String>, ty: Type) -> ValueInfo {
        ValueInfo { name: name.into(), ty }
    }
}

/// An operation and the values it produces.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// What it computes.
    pub op: Op,
    /// The node's own name (ONNX node name); may be empty.
    pub name: String,
    /// Its outputs, in port order.
    pub outputs: Vec<ValueInfo>,
}

/// A data-flow edge: producer output port → consumer input port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    /// Output port of the producer.
    pub src_port: u32,
    /// Input port of the consumer.
    pub dst_port: u32,
}

/// A named graph output.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphOutput {
    /// The name users see (ONNX output name). Stays stable when passes
    /// replace the value that produces it.
    pub name: String,
    /// The value.
    pub value: ValueRef,
}

/// Model-level facts kept for export.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    /// Tool that produced the model.
    pub producer_name: String,
    /// Its version.
    pub producer_version: String,
    /// Model domain.
    pub domain: String,
    /// Model version.
    pub model_version: i64,
    /// Documentation.
    pub doc_string: String,
    /// The ONNX IR version the model was read from (0 when built in memory).
    pub ir_version: i64,
    /// Operator set versions by domain, as imported.
    pub opset_imports: Vec<(String, i64)>,
    /// Free-form key/value metadata.
    pub props: Vec<(String, String)>,
    /// Frontend data that sharc does not interpret but keeps for export
    /// (for example serialized local functions), by key.
    pub preserved: Vec<(String, Vec<u8>)>,
}

/// A body graph owned by a control-flow op (see [`crate::op::If`]).
#[derive(Clone, Debug)]
pub struct Subgraph(pub Box<Graph>);

impl Subgraph {
    /// Wraps a graph.
    pub fn new(g: Graph) -> Subgraph {
        Subgraph(Box::new(g))
    }
}

impl std::ops::Deref for Subgraph {
    type Target = Graph;
    fn deref(&self) -> &Graph {
        &self.0
    }
}

impl std::ops::DerefMut for Subgraph {
    fn deref_mut(&mut self) -> &mut Graph {
        &mut self.0
    }
}

impl PartialEq for Subgraph {
    fn eq(&self, other: &Subgraph) -> bool {
        self.0.structurally_equal(&other.0)
    }
}

/// Errors from graph queries that need a well-formed graph.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum GraphError {
    #[error("the graph has a cycle through node '{0}'")]
    Cycle(String),
}

/// A computation graph. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Graph {
    /// The graph's name.
    pub name: String,
    dag: StableDiGraph<Node, Edge>,
    inputs: Vec<NodeId>,
    captures: Vec<NodeId>,
    outputs: Vec<GraphOutput>,
    /// The parameters.
    pub weights: WeightStore,
    /// Model metadata.
    pub meta: Metadata,
    used_names: HashSet<String>,
    next_fresh: u64,
}

impl Default for Graph {
    fn default() -> Graph {
        Graph::new("main")
    }
}

impl Graph {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            dag: StableDiGraph::default(),
            inputs: Vec::new(),
            captures: Vec::new(),
            outputs: Vec::new(),
            weights: WeightStore::new(),
            meta: Metadata::default(),
            used_names: HashSet::new(),
            next_fresh: 0,
        }
    }

    // ----- building -----

    /// Adds a node. `inputs[i]` feeds input port `i`; `None` leaves an
    /// optional input empty.
    pub fn add_node(
        &mut self,
        op: Op,
        name: impl Into<String>,
        inputs: &[Option<ValueRef>],
        outputs: Vec<ValueInfo>,
    ) -> NodeId {
        for o in &outputs {
            self.used_names.insert(o.name.clone());
        }
        let id = self.dag.add_node(Node { op, name: name.into(), outputs });
        for (port, v) in inputs.iter().enumerate() {
            if let Some(v) = v {
                self.dag.add_edge(v.node, id, Edge { src_port: v.port, dst_port: port as u32 });
            }
        }
        id
    }

    /// Adds a one-output node with all inputs present and a fresh output name
    /// derived from the op; returns its output.
    pub fn add_op(&mut self, op: Op, inputs: &[ValueRef], ty: Type) -> ValueRef {
        let name = self.fresh_name(&op.op_type().to_lowercase());
        let ins: Vec<Option<ValueRef>> = inputs.iter().copied().map(Some).collect();
        let id = self.add_node(op, "", &ins, vec![ValueInfo::new(name, ty)]);
        ValueRef::new(id, 0)
    }

    /// Adds a graph input.
    pub fn add_input(&mut self, name: impl Into<String>, ty: Type) -> ValueRef {
        let name = name.into();
        let id = self.add_node(Op::Input, "", &[], vec![ValueInfo::new(name, ty)]);
        self.inputs.push(id);
        ValueRef::new(id, 0)
    }

    /// Adds a captured outer value to a body graph (see [`Graph::captures`]).
    pub fn add_capture(&mut self, name: impl Into<String>, ty: Type) -> ValueRef {
        let id = self.add_node(Op::Input, "", &[], vec![ValueInfo::new(name, ty)]);
        self.captures.push(id);
        ValueRef::new(id, 0)
    }

    /// Adds a weight to the store and a node that brings it into the graph.
    /// The node's output takes the weight's name when it is free.
    pub fn add_weight(&mut self, w: Weight) -> ValueRef {
        let id = self.weights.add_unique(w);
        self.weight_value(id)
    }

    /// Adds a node that uses an existing weight. Call it once per consumer
    /// site to show sharing explicitly, or reuse one node: both are valid.
    pub fn weight_value(&mut self, id: WeightId) -> ValueRef {
        let w = self.weights.get(id).expect("weight id refers to the store");
        let ty = Type::tensor(w.dtype, crate::Shape::fixed(&w.shape));
        let base = w.name.clone();
        let name = if self.used_names.contains(&base) { self.fresh_name(&base) } else { base };
        let node = self.add_node(Op::Weight(id), "", &[], vec![ValueInfo::new(name, ty)]);
        ValueRef::new(node, 0)
    }

    /// Adds a constant node.
    pub fn add_constant(&mut self, name: &str, t: Tensor) -> ValueRef {
        let ty = Type::tensor(t.dtype(), crate::Shape::fixed(t.shape()));
        let name = if name.is_empty() || self.used_names.contains(name) {
            self.fresh_name(if name.is_empty() { "const" } else { name })
        } else {
            name.to_string()
        };
        let node = self.add_node(Op::Constant(t), "", &[], vec![ValueInfo::new(name, ty)]);
        ValueRef::new(node, 0)
    }

    /// Appends a graph output.
    pub fn add_output(&mut self, name: impl Into<String>, value: ValueRef) {
        self.outputs.push(GraphOutput { name: name.into(), value });
    }

    /// A value name not used in this graph, built from `hint`.
    pub fn fresh_name(&mut self, hint: &str) -> String {
        let hint = if hint.is_empty() { "v" } else { hint };
        loop {
            let candidate = format!("{hint}_{}", self.next_fresh);
            self.next_fresh += 1;
            if !self.used_names.contains(&candidate) {
                self.used_names.insert(candidate.clone());
                return candidate;
            }
        }
    }

    /// True when a value of this graph has this name (or it was reserved),
    /// so a new value must not take it. Constant time, unlike
    /// [`Graph::value_by_name`].
    pub fn name_is_taken(&self, name: &str) -> bool {
        self.used_names.contains(name)
    }

    /// Records a name as taken (after renaming a value through `node_mut`).
    pub fn reserve_name(&mut self, name: &str) {
        self.used_names.insert(name.to_string());
    }

    // ----- reading -----

    /// The node with this id. Panics if it was removed.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.dag[id]
    }

    /// Mutable access to a node.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.dag[id]
    }

    /// The node, if it exists.
    pub fn try_node(&self, id: NodeId) -> Option<&Node> {
        self.dag.node_weight(id)
    }

    /// True if the node exists.
    pub fn contains(&self, id: NodeId) -> bool {
        self.dag.contains_node(id)
    }

    /// All node ids in id order (not topological; see [`Graph::topo_order`]).
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.dag.node_indices()
    }

    /// Number of nodes (including inputs, weights and constants).
    pub fn node_count(&self) -> usize {
        self.dag.node_count()
    }

    /// The graph inputs (nodes with [`Op::Input`]), in order.
    pub fn inputs(&self) -> &[NodeId] {
        &self.inputs
    }

    /// The graph inputs as values.
    pub fn input_values(&self) -> Vec<ValueRef> {
        self.inputs.iter().map(|&n| ValueRef::new(n, 0)).collect()
    }

    /// For a body graph: the inputs bound to the outer values its owning node
    /// lists after its regular inputs, in the same order. Empty at top level.
    pub fn captures(&self) -> &[NodeId] {
        &self.captures
    }

    /// The graph outputs.
    pub fn outputs(&self) -> &[GraphOutput] {
        &self.outputs
    }

    /// Mutable access to the graph outputs.
    pub fn outputs_mut(&mut self) -> &mut Vec<GraphOutput> {
        &mut self.outputs
    }

    /// Replaces the list of inputs (the nodes must be `Op::Input` nodes).
    pub fn set_inputs(&mut self, inputs: Vec<NodeId>) {
        self.inputs = inputs;
    }

    /// Replaces the list of captures.
    pub fn set_captures(&mut self, captures: Vec<NodeId>) {
        self.captures = captures;
    }

    /// Name and type of a value.
    pub fn value_info(&self, v: ValueRef) -> &ValueInfo {
        &self.dag[v.node].outputs[v.port as usize]
    }

    /// Mutable name and type of a value.
    pub fn value_info_mut(&mut self, v: ValueRef) -> &mut ValueInfo {
        &mut self.dag[v.node].outputs[v.port as usize]
    }

    /// Type of a value.
    pub fn value_type(&self, v: ValueRef) -> &Type {
        &self.value_info(v).ty
    }

    /// The value with this name, if any (a linear scan).
    pub fn value_by_name(&self, name: &str) -> Option<ValueRef> {
        self.dag
            .node_indices()
            .find_map(|n| self.dag[n].outputs.iter().position(|o| o.name == name).map(|p| ValueRef::new(n, p as u32)))
    }

    /// The node's inputs by port; `None` marks an empty optional input.
    /// Trailing empty inputs are not listed.
    pub fn node_inputs(&self, id: NodeId) -> Vec<Option<ValueRef>> {
        let mut ins: Vec<Option<ValueRef>> = Vec::new();
        for e in self.dag.edges_directed(id, Direction::Incoming) {
            let port = e.weight().dst_port as usize;
            if ins.len() <= port {
                ins.resize(port + 1, None);
            }
            ins[port] = Some(ValueRef::new(e.source(), e.weight().src_port));
        }
        ins
    }

    /// The value at input `port` of a node, if connected.
    pub fn node_input(&self, id: NodeId, port: usize) -> Option<ValueRef> {
        self.dag
            .edges_directed(id, Direction::Incoming)
            .find(|e| e.weight().dst_port as usize == port)
            .map(|e| ValueRef::new(e.source(), e.weight().src_port))
    }

    /// The consumers of a value as (node, input port), sorted.
    pub fn users(&self, v: ValueRef) -> Vec<(NodeId, u32)> {
        let mut u: Vec<(NodeId, u32)> = self
            .dag
            .edges_directed(v.node, Direction::Outgoing)
            .filter(|e| e.weight().src_port == v.port)
            .map(|e| (e.target(), e.weight().dst_port))
            .collect();
        u.sort();
        u
    }

    /// True if any node or graph output uses the value.
    pub fn is_used(&self, v: ValueRef) -> bool {
        self.outputs.iter().any(|o| o.value == v)
            || self.dag.edges_directed(v.node, Direction::Outgoing).any(|e| e.weight().src_port == v.port)
    }

    /// The distinct nodes that consume any output of `id`.
    pub fn successors(&self, id: NodeId) -> Vec<NodeId> {
        let mut s: Vec<NodeId> = self.dag.neighbors_directed(id, Direction::Outgoing).collect();
        s.sort();
        s.dedup();
        s
    }

    /// The distinct nodes that `id` consumes values from.
    pub fn predecessors(&self, id: NodeId) -> Vec<NodeId> {
        let mut s: Vec<NodeId> = self.dag.neighbors_directed(id, Direction::Incoming).collect();
        s.sort();
        s.dedup();
        s
    }

    /// Read access to the underlying petgraph graph, for algorithms that
    /// petgraph provides (dominators, isomorphism, ...).
    pub fn petgraph(&self) -> &StableDiGraph<Node, Edge> {
        &self.dag
    }

    // ----- editing -----

    /// Connects `value` to input `port` of `node`, replacing what was there;
    /// `None` disconnects it.
    pub fn set_node_input(&mut self, node: NodeId, port: usize, value: Option<ValueRef>) {
        let old: Vec<EdgeIndex> = self
            .dag
            .edges_directed(node, Direction::Incoming)
            .filter(|e| e.weight().dst_port as usize == port)
            .map(|e| e.id())
            .collect();
        for e in old {
            self.dag.remove_edge(e);
        }
        if let Some(v) = value {
            self.dag.add_edge(v.node, node, Edge { src_port: v.port, dst_port: port as u32 });
        }
    }

    /// Replaces all of a node's inputs.
    pub fn set_node_inputs(&mut self, node: NodeId, inputs: &[Option<ValueRef>]) {
        let old: Vec<EdgeIndex> = self.dag.edges_directed(node, Direction::Incoming).map(|e| e.id()).collect();
        for e in old {
            self.dag.remove_edge(e);
        }
        for (port, v) in inputs.iter().enumerate() {
            if let Some(v) = v {
                self.dag.add_edge(v.node, node, Edge { src_port: v.port, dst_port: port as u32 });
            }
        }
    }

    /// Makes every consumer of `old` (nodes and graph outputs) use `new`.
    pub fn replace_uses(&mut self, old: ValueRef, new: ValueRef) {
        if old == new {
            return;
        }
        for (user, port) in self.users(old) {
            self.set_node_input(user, port as usize, Some(new));
        }
        for o in &mut self.outputs {
            if o.value == old {
                o.value = new;
            }
        }
    }

    /// Removes a node and its edges. Consumers lose that input, so replace
    /// its uses first. Also drops it from the input and capture lists.
    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        self.inputs.retain(|&n| n != id);
        self.captures.retain(|&n| n != id);
        let node = self.dag.remove_node(id)?;
        for o in &node.outputs {
            self.used_names.remove(&o.name);
        }
        Some(node)
    }

    /// Removes weights that no node refers to; returns how many.
    pub fn remove_unused_weights(&mut self) -> usize {
        let used: HashSet<WeightId> =
            self.dag.node_weights().filter_map(|n| if let Op::Weight(id) = n.op { Some(id) } else { None }).collect();
        let unused: Vec<WeightId> = self.weights.iter().map(|(id, _)| id).filter(|id| !used.contains(id)).collect();
        for id in &unused {
            self.weights.remove(*id);
        }
        unused.len()
    }

    // ----- ordering -----

    /// All nodes in a topological order; among ready nodes the smallest id
    /// comes first, so the order is deterministic and follows insertion order
    /// where the data flow allows.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, GraphError> {
        let mut indeg: BTreeMap<NodeId, usize> = BTreeMap::new();
        for n in self.dag.node_indices() {
            indeg.insert(n, self.predecessors(n).len());
        }
        let mut ready: BinaryHeap<std::cmp::Reverse<NodeId>> =
            indeg.iter().filter(|(_, d)| **d == 0).map(|(n, _)| std::cmp::Reverse(*n)).collect();
        let mut order = Vec::with_capacity(indeg.len());
        while let Some(std::cmp::Reverse(n)) = ready.pop() {
            order.push(n);
            for s in self.successors(n) {
                let d = indeg.get_mut(&s).expect("successor exists");
                *d -= 1;
                if *d == 0 {
                    ready.push(std::cmp::Reverse(s));
                }
            }
        }
        if order.len() != indeg.len() {
            let done: HashSet<NodeId> = order.iter().copied().collect();
            let stuck = self.dag.node_indices().find(|n| !done.contains(n)).expect("some node is left");
            let node = &self.dag[stuck];
            let label = node.outputs.first().map(|o| o.name.clone()).unwrap_or_else(|| node.name.clone());
            return Err(GraphError::Cycle(label));
        }
        Ok(order)
    }

    /// Structural equality: same inputs, outputs, nodes (in topological
    /// order), edges, weights and captures. Node ids may differ, and so may
    /// the point at which input and capture nodes were created (a frontend
    /// adds a capture when a body first uses an outer value; the text parser
    /// adds them first).
    pub fn structurally_equal(&self, other: &Graph) -> bool {
        let (Ok(a), Ok(b)) = (self.canonical_order(), other.canonical_order()) else {
            return false;
        };
        if a.len() != b.len()
            || self.inputs.len() != other.inputs.len()
            || self.captures.len() != other.captures.len()
            || self.outputs.len() != other.outputs.len()
        {
            return false;
        }
        let pos_a: BTreeMap<NodeId, usize> = a.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let pos_b: BTreeMap<NodeId, usize> = b.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let map_in = |g: &Graph, pos: &BTreeMap<NodeId, usize>, n: NodeId| -> Vec<Option<(usize, u32)>> {
            g.node_inputs(n).into_iter().map(|v| v.map(|v| (pos[&v.node], v.port))).collect()
        };
        for (&na, &nb) in a.iter().zip(&b) {
            let (x, y) = (&self.dag[na], &other.dag[nb]);
            if x.name != y.name || x.outputs != y.outputs {
                return false;
            }
            let same_op = match (&x.op, &y.op) {
                (Op::Weight(i), Op::Weight(j)) => match (self.weights.get(*i), other.weights.get(*j)) {
                    (Some(wi), Some(wj)) => {
                        wi.name == wj.name && wi.dtype == wj.dtype && wi.shape == wj.shape && wi.tensor() == wj.tensor()
                    }
                    _ => false,
                },
                (p, q) => p == q,
            };
            if !same_op || map_in(self, &pos_a, na) != map_in(other, &pos_b, nb) {
                return false;
            }
        }
        let same_list = |p: &[NodeId], q: &[NodeId]| p.iter().zip(q).all(|(x, y)| pos_a[x] == pos_b[y]);
        same_list(&self.inputs, &other.inputs)
            && same_list(&self.captures, &other.captures)
            && self.outputs.iter().zip(&other.outputs).all(|(o, p)| {
                o.name == p.name && pos_a[&o.value.node] == pos_b[&p.value.node] && o.value.port == p.value.port
            })
    }

    /// Inputs, then captures, then every other node in topological order.
    fn canonical_order(&self) -> Result<Vec<NodeId>, GraphError> {
        let topo = self.topo_order()?;
        let mut order: Vec<NodeId> =
            self.inputs.iter().chain(&self.captures).copied().filter(|n| self.dag.contains_node(*n)).collect();
        let listed: HashSet<NodeId> = order.iter().copied().collect();
        order.extend(topo.into_iter().filter(|n| !listed.contains(n)));
        Ok(order)
    }

    // ----- statistics -----

    /// Counts of nodes, ops and parameters. See [`GraphStats`].
    pub fn stats(&self) -> GraphStats {
        let mut s = GraphStats::default();
        let mut seen: HashSet<WeightId> = HashSet::new();
        for n in self.dag.node_indices() {
            let node = &self.dag[n];
            *s.op_histogram.entry(op_label(&node.op)).or_default() += 1;
            if !node.op.is_source() {
                s.compute_nodes += 1;
            }
            // Bodies of If/Loop/Scan: their nodes are counted apart (they run
            // a data-dependent number of times), their parameters with the
            // rest (they are stored like any other).
            for body in node.op.subgraphs() {
                let b = body.0.stats();
                s.subgraphs += 1 + b.subgraphs;
                s.subgraph_nodes += b.nodes + b.subgraph_nodes;
                for (op, count) in b.op_histogram.iter().chain(&b.subgraph_op_histogram) {
                    *s.subgraph_op_histogram.entry(op.clone()).or_default() += count;
                }
                s.total_params += b.total_params;
                s.total_bytes += b.total_bytes;
                s.unique_params += b.unique_params;
                s.unique_bytes += b.unique_bytes;
                s.unique_weights += b.unique_weights;
            }
            if let Op::Weight(id) = node.op
                && let Some(w) = self.weights.get(id)
            {
                let consumers = self.successors(n).len().max(1) as u64;
                s.total_params += w.num_elements() * consumers;
                s.total_bytes += w.num_bytes() * consumers;
                if seen.insert(id) {
                    s.unique_params += w.num_elements();
                    s.unique_bytes += w.num_bytes();
                    s.unique_weights += 1;
                }
            }
        }
        s.nodes = self.dag.node_count();
        s
    }
}

fn op_label(op: &Op) -> String {
    match op {
        Op::Opaque(o) if !o.domain.is_empty() => format!("{}.{}", o.domain, o.op_type),
        _ => op.op_type().to_string(),
    }
}

/// What a graph contains, with parameter sharing made visible.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GraphStats {
    /// All nodes, including inputs, weights and constants.
    pub nodes: usize,
    /// Nodes that compute something (not inputs, weights or constants).
    pub compute_nodes: usize,
    /// Node count per op name (opaque ops of other domains as `domain.op`).
    pub op_histogram: BTreeMap<String, usize>,
    /// Parameters as if nothing were shared: each weight counted once per
    /// consuming node.
    pub total_params: u64,
    /// Bytes as if nothing were shared.
    pub total_bytes: u64,
    /// Parameters actually stored: each distinct weight once.
    pub unique_params: u64,
    /// Bytes actually stored.
    pub unique_bytes: u64,
    /// Number of distinct weights in use.
    pub unique_weights: usize,
    /// Control-flow bodies (If branches, Loop and Scan bodies), nested ones
    /// included.
    pub subgraphs: usize,
    /// Nodes inside those bodies (not part of `nodes`).
    pub subgraph_nodes: usize,
    /// Node count per op name inside those bodies.
    pub subgraph_op_histogram: BTreeMap<String, usize>,
}

impl fmt::Display for GraphStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} nodes ({} compute), {} weights, {} unique / {} total parameters, {} unique bytes",
            self.nodes,
            self.compute_nodes,
            self.unique_weights,
            self.unique_params,
            self.total_params,
            self.unique_bytes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BinaryOp, DType, Dim, Shape};

    fn tiny() -> (Graph, ValueRef) {
        let mut g = Graph::new("tiny");
        let x = g.add_input("x", Type::tensor(DType::F32, vec![Dim::sym("batch"), Dim::Fixed(4)]));
        let w = g.add_weight(Weight::from_tensor("w", Tensor::from_vec(&[4, 4], vec![0.5f32; 16])));
        let y = g.add_op(Op::MatMul, &[x, w], Type::Unknown);
        let w2 = g.weight_value(WeightId(0));
        let z = g.add_op(Op::MatMul, &[y, w2], Type::Unknown);
        g.add_output("z", z);
        (g, z)
    }

    #[test]
    fn shared_weight_counts_once() {
        let (g, _) = tiny();
        let s = g.stats();
        assert_eq!(s.unique_params, 16);
        assert_eq!(s.total_params, 32);
        assert_eq!(s.unique_weights, 1);
        assert_eq!(s.compute_nodes, 2);
    }

    #[test]
    fn topo_order_and_editing() {
        let (mut g, z) = tiny();
        let order = g.topo_order().unwrap();
        assert_eq!(order.len(), 5);
        assert_eq!(*order.last().unwrap(), z.node);
        let x = g.input_values()[0];
        let r = g.add_op(Op::Binary(BinaryOp::Add), &[x, x], Type::Unknown);
        g.replace_uses(z, r);
        assert_eq!(g.outputs()[0].value, r);
        assert!(!g.is_used(z));
        g.remove_node(z.node);
        assert_eq!(g.node_inputs(r.node), vec![Some(x), Some(x)]);
    }

    #[test]
    fn clone_is_structurally_equal() {
        let (g, _) = tiny();
        assert!(g.structurally_equal(&g.clone()));
        let mut h = g.clone();
        h.outputs_mut()[0].name = "other".into();
        assert!(!g.structurally_equal(&h));
        let _ = Shape::scalar();
    }

    #[test]
    fn creation_order_of_inputs_does_not_matter() {
        let build = |input_first: bool| {
            let mut g = Graph::new("g");
            let mut x = None;
            if input_first {
                x = Some(g.add_input("x", Type::Unknown));
            }
            let c = g.add_constant("c", Tensor::scalar(1.0f32));
            let x = x.unwrap_or_else(|| g.add_input("x", Type::Unknown));
            let y = g.add_op(Op::Binary(BinaryOp::Add), &[x, c], Type::Unknown);
            g.add_output("y", y);
            g
        };
        assert!(build(true).structurally_equal(&build(false)));
        let mut other = build(false);
        other.add_input("z", Type::Unknown);
        assert!(!build(true).structurally_equal(&other));
    }

    #[test]
    fn fresh_names_do_not_collide() {
        let mut g = Graph::new("g");
        g.add_input("v_0", Type::Unknown);
        let n = g.fresh_name("v");
        assert_ne!(n, "v_0");
    }
}

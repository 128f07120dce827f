//! A read-only index of a graph for block analysis: topological positions,
//! inputs and users of every value, and what kind of quantity each node
//! computes.

use sharc_ir::{Fact, Graph, NodeId, Op, SymTensor, Type, ValueRef, infer_node_facts};
use std::collections::{HashMap, HashSet, VecDeque};

/// What a node's outputs depend on. Block analysis compares the three kinds
/// differently: data wiring must match exactly, shape computations only need
/// to compute the same sizes, and weight-side computations the same function
/// of weights with the same shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// Depends on the *values* of graph inputs (activations, masks, ids).
    Data,
    /// Depends on graph inputs only through their shapes (`Shape`, `Size`):
    /// sizes, reshape targets, position indices, masks built from sizes.
    Meta,
    /// Depends on weights and constants only.
    Const,
}

pub(crate) struct Index<'g> {
    pub g: &'g Graph,
    pub order: Vec<NodeId>,
    pub pos: HashMap<NodeId, usize>,
    inputs: HashMap<NodeId, Vec<Option<ValueRef>>>,
    users: HashMap<ValueRef, Vec<(NodeId, usize)>>,
    class: HashMap<NodeId, Class>,
    /// The elements of shape computations, where shape inference can tell.
    meta_values: HashMap<ValueRef, SymTensor>,
    graph_outputs: HashSet<ValueRef>,
}

impl<'g> Index<'g> {
    pub fn new(g: &'g Graph) -> Result<Index<'g>, String> {
        let order = g.topo_order().map_err(|e| e.to_string())?;
        let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut inputs = HashMap::new();
        let mut users: HashMap<ValueRef, Vec<(NodeId, usize)>> = HashMap::new();
        for &n in &order {
            let ins = g.node_inputs(n);
            for (port, v) in ins.iter().enumerate() {
                if let Some(v) = v {
                    users.entry(*v).or_default().push((n, port));
                }
            }
            inputs.insert(n, ins);
        }
        for u in users.values_mut() {
            u.sort_by_key(|(n, p)| (pos[n], *p));
        }
        let mut ix = Index {
            g,
            order,
            pos,
            inputs,
            users,
            class: HashMap::new(),
            meta_values: HashMap::new(),
            graph_outputs: g.outputs().iter().map(|o| o.value).collect(),
        };
        ix.classify();
        ix.track_meta_values();
        Ok(ix)
    }

    fn classify(&mut self) {
        for &n in &self.order {
            let op = &self.g.node(n).op;
            let c = match op {
                Op::Input => Class::Data,
                Op::Weight(_) | Op::Constant(_) => Class::Const,
                _ if !op.is_pure() => Class::Data,
                _ => {
                    let ins: Vec<Class> = self.inputs[&n].iter().flatten().map(|v| self.class[&v.node]).collect();
                    let shape_only = matches!(op, Op::Shape(_) | Op::Size);
                    if shape_only {
                        if ins.iter().all(|c| *c == Class::Const) { Class::Const } else { Class::Meta }
                    } else if ins.contains(&Class::Data) {
                        Class::Data
                    } else if ins.contains(&Class::Meta) {
                        Class::Meta
                    } else {
                        Class::Const
                    }
                }
            };
            self.class.insert(n, c);
        }
    }

    /// Propagates known elements through shape computations with the IR's
    /// own inference rules, so that `Shape(x)[1]` computed in two different
    /// places is recognised as the same `seq` when `x` has the same type.
    fn track_meta_values(&mut self) {
        let mut facts: HashMap<ValueRef, Fact> = HashMap::new();
        for &n in &self.order {
            if self.class[&n] != Class::Meta {
                continue;
            }
            let node = self.g.node(n);
            let ins: Vec<Option<Fact>> =
                self.inputs[&n].iter().map(|v| v.map(|v| self.input_fact(v, &facts))).collect();
            let names: Vec<&str> = node.outputs.iter().map(|o| o.name.as_str()).collect();
            let Ok(out) = infer_node_facts(&node.op, &ins, &names) else { continue };
            for (port, f) in out.into_iter().enumerate() {
                let v = ValueRef::new(n, port as u32);
                if let Some(val) = &f.value {
                    self.meta_values.insert(v, val.clone());
                }
                facts.insert(v, f);
            }
        }
    }

    fn input_fact(&self, v: ValueRef, facts: &HashMap<ValueRef, Fact>) -> Fact {
        let ty = self.g.value_type(v).clone();
        match &self.g.node(v.node).op {
            Op::Constant(t) => Fact::of_tensor(t),
            Op::Weight(id) => match self.g.weights.get(*id) {
                Some(w) if w.num_elements() <= sharc_ir::infer::MAX_TRACKED as u64 => Fact::of_tensor(w.tensor()),
                _ => Fact::of_type(ty),
            },
            _ => facts.get(&v).cloned().unwrap_or_else(|| Fact::of_type(ty)),
        }
    }

    pub fn class(&self, n: NodeId) -> Class {
        self.class[&n]
    }

    pub fn inputs(&self, n: NodeId) -> &[Option<ValueRef>] {
        &self.inputs[&n]
    }

    pub fn users(&self, v: ValueRef) -> &[(NodeId, usize)] {
        self.users.get(&v).map(|u| u.as_slice()).unwrap_or(&[])
    }

    pub fn meta_value(&self, v: ValueRef) -> Option<&SymTensor> {
        self.meta_values.get(&v)
    }

    pub fn is_graph_output(&self, v: ValueRef) -> bool {
        self.graph_outputs.contains(&v)
    }

    pub fn outputs_of(&self, n: NodeId) -> impl Iterator<Item = ValueRef> + '_ {
        (0..self.g.node(n).outputs.len()).map(move |p| ValueRef::new(n, p as u32))
    }

    /// The data nodes that depend on the value `v` through data edges only
    /// (not through `Shape`), with the number of nodes on the shortest path.
    pub fn data_reach(&self, v: ValueRef) -> HashMap<NodeId, usize> {
        let mut dist: HashMap<NodeId, usize> = HashMap::new();
        let mut queue: VecDeque<NodeId> = VecDeque::new();
        for &(u, _) in self.users(v) {
            if self.class[&u] == Class::Data && !dist.contains_key(&u) {
                dist.insert(u, 1);
                queue.push_back(u);
            }
        }
        while let Some(n) = queue.pop_front() {
            let d = dist[&n];
            for out in self.outputs_of(n) {
                for &(u, _) in self.users(out) {
                    if self.class[&u] == Class::Data && !dist.contains_key(&u) {
                        dist.insert(u, d + 1);
                        queue.push_back(u);
                    }
                }
            }
        }
        dist
    }

    /// The type's dims as text when fully known, for comparing shapes.
    pub fn dims(&self, v: ValueRef) -> Option<Vec<String>> {
        match self.g.value_type(v) {
            Type::Tensor(t) => t.shape.as_ref().map(|s| s.dims().iter().map(|d| d.to_string()).collect()),
            _ => None,
        }
    }

    /// A label for messages: the node name, or its first output's name.
    pub fn label(&self, n: NodeId) -> String {
        let node = self.g.node(n);
        if !node.name.is_empty() {
            node.name.clone()
        } else {
            node.outputs.first().map(|o| o.name.clone()).unwrap_or_else(|| format!("{n:?}"))
        }
    }
}

//! Patches: the way passes change a graph.
//!
//! A pass reads the graph, records the changes it wants in a [`Patch`] — new
//! nodes, values whose uses move to other values, nodes to remove — and
//! applies the patch at once with [`Patch::apply`]. This follows tract's
//! `ModelPatch`: while the pass is matching, the graph it reads never
//! changes under it, and the patch is checked as a whole before anything is
//! touched. A patch whose result would be invalid (a removed node that is
//! still used, a name taken twice, a cycle, a new node whose types do not
//! check) is refused with an error naming the values involved, and the
//! graph is left exactly as it was.
//!
//! ```
//! use sharc_ir::{text, Op, UnaryOp};
//! use sharc_passes::Patch;
//!
//! let mut g = text::parse("graph @g(%x: f32[4]) -> (%y) {
//!   %a = Identity(%x) : f32[4]
//!   %y = Relu(%a) : f32[4]
//! }").unwrap();
//! let a = g.value_by_name("a").unwrap();
//! let x = g.value_by_name("x").unwrap();
//! let mut patch = Patch::new();
//! patch.replace_uses(a, x);
//! patch.remove_node(a.node);
//! patch.apply(&mut g).unwrap();
//! assert!(text::print(&g).contains("%y = Relu(%x)"));
//! ```
//!
//! # Semantics
//!
//! - **Replacements** (`replace_uses(old, new)`) move every use of `old` by an
//!   existing node and by the graph outputs to `new`. They compose: when `a`
//!   is replaced by `b` and `b` by `c`, the users of `a` end up reading `c`,
//!   whatever the order the replacements were recorded in. A value can be
//!   replaced only once.
//! - **New nodes read exactly the values they are given**, so a new node can
//!   wrap a value whose uses it takes over (`c = Cast(a)`, then
//!   `replace_uses(a, c)`). The one exception: a new node reading a value
//!   that the patch both replaces and removes reads the replacement, since
//!   the old value no longer exists.
//! - **Removed nodes** must have no users left once replacements and
//!   removals are applied. Graph inputs and captures cannot be removed: a
//!   patch does not change a graph's interface.
//! - **Names**: a new output with an explicit name must not collide with a
//!   name still in use; names of removed nodes are free again.
//!   [`Patch::replace_node`] gives the new node the old node's output names
//!   and types, which keeps printed IR stable.
//! - **Types**: outputs of new nodes declared [`Type::Unknown`] are inferred
//!   from their inputs with [`sharc_ir::infer_node`]; an op that fails
//!   inference makes the patch fail.

use sharc_ir::{Graph, NodeId, Op, Tensor, Type, ValueInfo, ValueRef, Weight, WeightId, infer_node};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

/// A value a patch refers to: one already in the graph, or an output of a
/// node the patch adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PatchValue {
    /// A value of the graph as it was when the patch was built.
    Graph(ValueRef),
    /// Output `port` of the patch's new node number `node`.
    New {
        /// Index of the new node in the patch.
        node: usize,
        /// Which output.
        port: u32,
    },
}

impl From<ValueRef> for PatchValue {
    fn from(v: ValueRef) -> PatchValue {
        PatchValue::Graph(v)
    }
}

/// A node the patch adds, by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PatchNode(pub usize);

impl PatchNode {
    /// Output `port` of this node.
    pub fn output(self, port: u32) -> PatchValue {
        PatchValue::New { node: self.0, port }
    }
}

#[derive(Clone, Debug)]
enum OutName {
    /// Exactly this name; it must be free.
    Exact(String),
    /// This name if free, else a fresh name built from it.
    Prefer(String),
}

#[derive(Clone, Debug)]
struct NewNode {
    op: Op,
    /// A weight to add to the store; the node's op becomes `Weight(id)`.
    weight: Option<Weight>,
    name: String,
    inputs: Vec<Option<PatchValue>>,
    outputs: Vec<(OutName, Type)>,
    /// The node whose outputs (names, types, uses) this one takes over.
    takes_over: Option<NodeId>,
}

/// A set of changes to a graph, applied at once. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct Patch {
    nodes: Vec<NewNode>,
    replacements: Vec<(ValueRef, PatchValue)>,
    input_changes: Vec<(NodeId, usize, Option<PatchValue>)>,
    op_changes: Vec<(NodeId, Op)>,
    removals: BTreeSet<NodeId>,
}

/// Why a patch was refused. The graph is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid patch: {0}")]
pub struct PatchError(pub String);

/// What applying a patch created: the ids of its new nodes.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    nodes: Vec<NodeId>,
}

impl Applied {
    /// The graph node a patch node became.
    pub fn node(&self, n: PatchNode) -> NodeId {
        self.nodes[n.0]
    }

    /// The graph value a patch value became.
    pub fn value(&self, v: PatchValue) -> ValueRef {
        match v {
            PatchValue::Graph(v) => v,
            PatchValue::New { node, port } => ValueRef::new(self.nodes[node], port),
        }
    }

    /// Number of nodes added.
    pub fn added(&self) -> usize {
        self.nodes.len()
    }
}

impl Patch {
    /// An empty patch.
    pub fn new() -> Patch {
        Patch::default()
    }

    /// True when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.replacements.is_empty()
            && self.input_changes.is_empty()
            && self.op_changes.is_empty()
            && self.removals.is_empty()
    }

    /// Adds a node with explicitly named outputs. A [`Type::Unknown`] output
    /// type is inferred when the patch is applied.
    pub fn add_node(
        &mut self,
        op: Op,
        name: impl Into<String>,
        inputs: &[Option<PatchValue>],
        outputs: Vec<ValueInfo>,
    ) -> PatchNode {
        let outputs = outputs.into_iter().map(|o| (OutName::Exact(o.name), o.ty)).collect();
        self.push(NewNode { op, weight: None, name: name.into(), inputs: inputs.to_vec(), outputs, takes_over: None })
    }

    /// Adds a one-output node whose output gets a fresh name built from
    /// `hint` and an inferred type; returns the output.
    pub fn add_op(&mut self, op: Op, inputs: &[PatchValue], hint: &str) -> PatchValue {
        let ins: Vec<Option<PatchValue>> = inputs.iter().copied().map(Some).collect();
        self.add_op_with(op, &ins, hint, Type::Unknown)
    }

    /// Like [`Patch::add_op`], with optional inputs and a given type.
    pub fn add_op_with(&mut self, op: Op, inputs: &[Option<PatchValue>], hint: &str, ty: Type) -> PatchValue {
        let hint = if hint.is_empty() { op.op_type().to_lowercase() } else { hint.to_string() };
        let n = self.push(NewNode {
            op,
            weight: None,
            name: String::new(),
            inputs: inputs.to_vec(),
            outputs: vec![(OutName::Prefer(fresh_base(&hint)), ty)],
            takes_over: None,
        });
        n.output(0)
    }

    /// Adds a constant node; its output is named after `hint` (exactly, when free).
    pub fn add_constant(&mut self, hint: &str, t: Tensor) -> PatchValue {
        let ty = Type::tensor(t.dtype(), sharc_ir::Shape::fixed(t.shape()));
        let hint = if hint.is_empty() { "const" } else { hint };
        let n = self.push(NewNode {
            op: Op::Constant(t),
            weight: None,
            name: String::new(),
            inputs: vec![],
            outputs: vec![(OutName::Prefer(hint.to_string()), ty)],
            takes_over: None,
        });
        n.output(0)
    }

    /// Adds a weight to the store (renamed with a suffix if its name is
    /// taken) and a node that brings it into the graph.
    pub fn add_weight(&mut self, w: Weight) -> PatchValue {
        let ty = Type::tensor(w.dtype, sharc_ir::Shape::fixed(&w.shape));
        let name = w.name.clone();
        let n = self.push(NewNode {
            op: Op::Weight(WeightId(u32::MAX)),
            weight: Some(w),
            name: String::new(),
            inputs: vec![],
            outputs: vec![(OutName::Prefer(name), ty)],
            takes_over: None,
        });
        n.output(0)
    }

    /// Adds a node that uses a weight already in the store. `name` is the
    /// preferred name of its output (the weight's name is a good choice).
    pub fn weight_value(&mut self, id: WeightId, name: &str, ty: Type) -> PatchValue {
        let n = self.push(NewNode {
            op: Op::Weight(id),
            weight: None,
            name: String::new(),
            inputs: vec![],
            outputs: vec![(OutName::Prefer(name.to_string()), ty)],
            takes_over: None,
        });
        n.output(0)
    }

    /// Replaces node `old` by a new node computing `op` on `inputs`. The new
    /// node takes over the old node's output names, types and uses, and the
    /// old node is removed.
    pub fn replace_node(&mut self, g: &Graph, old: NodeId, op: Op, inputs: &[Option<PatchValue>]) -> PatchNode {
        let outputs: Vec<(OutName, Type)> = g
            .try_node(old)
            .map(|n| n.outputs.iter().map(|o| (OutName::Exact(o.name.clone()), o.ty.clone())).collect())
            .unwrap_or_default();
        let name = g.try_node(old).map(|n| n.name.clone()).unwrap_or_default();
        let pn = self.push(NewNode { op, weight: None, name, inputs: inputs.to_vec(), outputs, takes_over: Some(old) });
        self.removals.insert(old);
        pn
    }

    /// Makes every use of `old` (by existing nodes and graph outputs) use `new`.
    pub fn replace_uses(&mut self, old: ValueRef, new: impl Into<PatchValue>) {
        let new = new.into();
        if new != PatchValue::Graph(old) {
            self.replacements.push((old, new));
        }
    }

    /// Connects input `port` of existing node `node` to `value` (`None`
    /// disconnects it). Explicit: the value is used as given.
    pub fn set_input(&mut self, node: NodeId, port: usize, value: Option<PatchValue>) {
        self.input_changes.push((node, port, value));
    }

    /// Replaces the op of an existing node, keeping its inputs and outputs.
    pub fn set_op(&mut self, node: NodeId, op: Op) {
        self.op_changes.push((node, op));
    }

    /// Removes an existing node. Its outputs must have no users left.
    pub fn remove_node(&mut self, node: NodeId) {
        self.removals.insert(node);
    }

    /// True when the patch removes `node`.
    pub fn removes(&self, node: NodeId) -> bool {
        self.removals.contains(&node)
    }

    fn push(&mut self, n: NewNode) -> PatchNode {
        self.nodes.push(n);
        PatchNode(self.nodes.len() - 1)
    }

    /// Checks the patch against `g` and applies it. On error the graph is
    /// unchanged.
    pub fn apply(self, g: &mut Graph) -> Result<Applied, PatchError> {
        let plan = self.plan(g)?;
        Ok(self.execute(g, plan))
    }

    /// Validates everything and works out the rewiring, without mutating.
    fn plan(&self, g: &Graph) -> Result<Plan, PatchError> {
        let err = |m: String| Err(PatchError(m));
        let value_ok = |v: &PatchValue| -> Result<(), PatchError> {
            match *v {
                PatchValue::Graph(r) => {
                    let Some(n) = g.try_node(r.node) else {
                        return Err(PatchError(format!("value {r:?} refers to a node that does not exist")));
                    };
                    if r.port as usize >= n.outputs.len() {
                        return Err(PatchError(format!(
                            "value {r:?} reads output {} of {}, which has {} outputs",
                            r.port,
                            label(g, r.node),
                            n.outputs.len()
                        )));
                    }
                    Ok(())
                }
                PatchValue::New { node, port } => match self.nodes.get(node) {
                    Some(n) if (port as usize) < n.outputs.len() => Ok(()),
                    Some(n) => Err(PatchError(format!("new node #{node} ({}) has no output {port}", n.op.op_type()))),
                    None => Err(PatchError(format!("new node #{node} does not exist"))),
                },
            }
        };

        // Existence and interface checks.
        for &r in &self.removals {
            if !g.contains(r) {
                return err(format!("node {r:?} is removed but does not exist"));
            }
            if g.inputs().contains(&r) || g.captures().contains(&r) {
                return err(format!("{} is a graph input; a patch does not change a graph's interface", label(g, r)));
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            for v in n.inputs.iter().flatten() {
                value_ok(v)?;
                if let PatchValue::New { node, .. } = v
                    && *node >= i
                {
                    return err(format!("new node #{i} ({}) reads new node #{node}, made after it", n.op.op_type()));
                }
            }
            if let Some(old) = n.takes_over {
                let count = g.try_node(old).map_or(0, |o| o.outputs.len());
                if count != n.outputs.len() {
                    return err(format!("new node #{i} replaces node {old:?}, which does not exist"));
                }
            }
        }
        for (old, new) in &self.replacements {
            value_ok(&PatchValue::Graph(*old))?;
            value_ok(new)?;
        }
        for (node, _, v) in &self.input_changes {
            if !g.contains(*node) {
                return err(format!("input of node {node:?} is set, but the node does not exist"));
            }
            if self.removals.contains(node) {
                return err(format!("input of {} is set, but the patch removes that node", label(g, *node)));
            }
            if let Some(v) = v {
                value_ok(v)?;
            }
        }
        for (node, _) in &self.op_changes {
            if !g.contains(*node) || self.removals.contains(node) {
                return err(format!("the op of node {node:?} is changed, but the node does not exist or is removed"));
            }
        }

        // The replacement map, including the implicit ones of replace_node.
        let mut map: HashMap<ValueRef, PatchValue> = HashMap::new();
        let mut add_repl = |old: ValueRef, new: PatchValue| -> Result<(), PatchError> {
            if let Some(prev) = map.insert(old, new)
                && prev != new
            {
                return Err(PatchError(format!(
                    "value '{}' is replaced twice (by {} and by {})",
                    g.value_info(old).name,
                    self.describe(g, prev),
                    self.describe(g, new)
                )));
            }
            Ok(())
        };
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(old) = n.takes_over {
                for port in 0..n.outputs.len() {
                    add_repl(ValueRef::new(old, port as u32), PatchValue::New { node: i, port: port as u32 })?;
                }
            }
        }
        for (old, new) in &self.replacements {
            add_repl(*old, *new)?;
        }
        let resolve = |v: ValueRef| -> Result<PatchValue, PatchError> {
            let mut cur = PatchValue::Graph(v);
            let mut seen = HashSet::new();
            while let PatchValue::Graph(r) = cur {
                match map.get(&r) {
                    Some(next) => {
                        if !seen.insert(r) {
                            return Err(PatchError(format!(
                                "the replacements of value '{}' form a cycle",
                                g.value_info(v).name
                            )));
                        }
                        cur = *next;
                    }
                    None => break,
                }
            }
            Ok(cur)
        };
        let removed_value = |v: &PatchValue| matches!(v, PatchValue::Graph(r) if self.removals.contains(&r.node));

        // Rewiring of existing consumers and graph outputs.
        let explicit: HashMap<(NodeId, usize), Option<PatchValue>> =
            self.input_changes.iter().map(|(n, p, v)| ((*n, *p), *v)).collect();
        let mut rewires: Vec<(NodeId, usize, Option<PatchValue>)> = Vec::new();
        let mut touched: HashSet<NodeId> = HashSet::new();
        for &old in map.keys() {
            for (user, port) in g.users(old) {
                if self.removals.contains(&user) || explicit.contains_key(&(user, port as usize)) {
                    continue;
                }
                touched.insert(user);
            }
        }
        let mut touched: Vec<NodeId> = touched.into_iter().collect();
        touched.sort();
        for user in touched {
            for (port, v) in g.node_inputs(user).into_iter().enumerate() {
                if let Some(v) = v
                    && map.contains_key(&v)
                    && !explicit.contains_key(&(user, port))
                {
                    let target = resolve(v)?;
                    if removed_value(&target) {
                        return err(format!(
                            "value '{}' is replaced by '{}', which the patch removes",
                            g.value_info(v).name,
                            self.describe(g, target)
                        ));
                    }
                    rewires.push((user, port, Some(target)));
                }
            }
        }
        for (&(n, p), v) in &explicit {
            if let Some(t) = v
                && removed_value(t)
            {
                return err(format!(
                    "input {p} of {} is set to '{}', which the patch removes",
                    label(g, n),
                    self.describe(g, *t)
                ));
            }
            rewires.push((n, p, *v));
        }
        rewires.sort_by_key(|(n, p, _)| (*n, *p));
        let mut outputs: Vec<(usize, PatchValue)> = Vec::new();
        for (i, o) in g.outputs().iter().enumerate() {
            if map.contains_key(&o.value) {
                let target = resolve(o.value)?;
                if removed_value(&target) {
                    return err(format!(
                        "graph output '{}' is moved to '{}', which the patch removes",
                        o.name,
                        self.describe(g, target)
                    ));
                }
                outputs.push((i, target));
            } else if self.removals.contains(&o.value.node) {
                return err(format!(
                    "{} is removed but its value '{}' is the graph output '{}'",
                    label(g, o.value.node),
                    g.value_info(o.value).name,
                    o.name
                ));
            }
        }

        // Removed nodes must have no users left.
        for &r in &self.removals {
            for (port, _) in g.node(r).outputs.iter().enumerate() {
                let v = ValueRef::new(r, port as u32);
                for (user, uport) in g.users(v) {
                    let gone = self.removals.contains(&user)
                        || explicit.contains_key(&(user, uport as usize))
                        || map.contains_key(&v);
                    if !gone {
                        return err(format!(
                            "{} is removed but its value '{}' is still used by {}",
                            label(g, r),
                            g.value_info(v).name,
                            label(g, user)
                        ));
                    }
                }
            }
        }

        // New node inputs, with reads of replaced-and-removed values redirected.
        let mut new_inputs: Vec<Vec<Option<PatchValue>>> = Vec::with_capacity(self.nodes.len());
        for (i, n) in self.nodes.iter().enumerate() {
            let mut ins = Vec::with_capacity(n.inputs.len());
            for v in &n.inputs {
                let v = match v {
                    Some(PatchValue::Graph(r)) if self.removals.contains(&r.node) => {
                        let t = resolve(*r)?;
                        if removed_value(&t) {
                            return err(format!(
                                "new node #{i} ({}) reads '{}', which the patch removes",
                                n.op.op_type(),
                                g.value_info(*r).name
                            ));
                        }
                        if let PatchValue::New { node, .. } = t
                            && node >= i
                        {
                            return err(format!(
                                "new node #{i} ({}) reads '{}', which is replaced by a node made after it",
                                n.op.op_type(),
                                g.value_info(*r).name
                            ));
                        }
                        Some(t)
                    }
                    other => *other,
                };
                ins.push(v);
            }
            new_inputs.push(ins);
        }

        // Names.
        let mut taken: HashSet<&str> = HashSet::new();
        for id in g.node_ids() {
            if !self.removals.contains(&id) {
                for o in &g.node(id).outputs {
                    taken.insert(&o.name);
                }
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            for (name, _) in &n.outputs {
                if let OutName::Exact(name) = name {
                    if name.is_empty() {
                        return err(format!("new node #{i} ({}) has an output without a name", n.op.op_type()));
                    }
                    if !taken.insert(name) {
                        return err(format!(
                            "new node #{i} ({}) names its output '{name}', which is taken",
                            n.op.op_type()
                        ));
                    }
                }
            }
        }

        // Types of new nodes.
        let mut types: Vec<Vec<Type>> = Vec::with_capacity(self.nodes.len());
        for (i, n) in self.nodes.iter().enumerate() {
            let declared: Vec<Type> = n.outputs.iter().map(|(_, t)| t.clone()).collect();
            if declared.iter().all(|t| *t != Type::Unknown) || n.op.is_source() {
                types.push(declared);
                continue;
            }
            let mut in_types = Vec::new();
            let mut consts: Vec<Option<&Tensor>> = Vec::new();
            for v in &new_inputs[i] {
                match v {
                    None => {
                        in_types.push(None);
                        consts.push(None);
                    }
                    Some(PatchValue::Graph(r)) => {
                        in_types.push(Some(g.value_type(*r).clone()));
                        consts.push(match &g.node(r.node).op {
                            Op::Constant(t) => Some(t),
                            _ => None,
                        });
                    }
                    Some(PatchValue::New { node, port }) => {
                        in_types.push(Some(types[*node][*port as usize].clone()));
                        consts.push(match &self.nodes[*node].op {
                            Op::Constant(t) => Some(t),
                            _ => None,
                        });
                    }
                }
            }
            let names: Vec<String> = n
                .outputs
                .iter()
                .map(|(o, _)| match o {
                    OutName::Exact(s) | OutName::Prefer(s) => s.clone(),
                })
                .collect();
            let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let inferred = infer_node(&n.op, &in_types, &consts, &name_refs)
                .map_err(|e| PatchError(format!("new node #{i} ({}) does not type-check: {e}", n.op.op_type())))?;
            types.push(
                declared
                    .into_iter()
                    .enumerate()
                    .map(
                        |(p, d)| if d == Type::Unknown { inferred.get(p).cloned().unwrap_or(Type::Unknown) } else { d },
                    )
                    .collect(),
            );
        }

        // Cycles: only rewired edges can close one (new nodes read existing
        // values or earlier new nodes, and nothing else reads new nodes).
        self.check_acyclic(g, &new_inputs, &rewires)?;

        Ok(Plan { new_inputs, types, rewires, outputs })
    }

    fn check_acyclic(
        &self,
        g: &Graph,
        new_inputs: &[Vec<Option<PatchValue>>],
        rewires: &[(NodeId, usize, Option<PatchValue>)],
    ) -> Result<(), PatchError> {
        if rewires.iter().all(|(_, _, v)| v.is_none()) {
            return Ok(());
        }
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        enum Key {
            Old(NodeId),
            New(usize),
        }
        let key_of = |v: &PatchValue| match v {
            PatchValue::Graph(r) => Key::Old(r.node),
            PatchValue::New { node, .. } => Key::New(*node),
        };
        let rewired: HashSet<(NodeId, usize)> = rewires.iter().map(|(n, p, _)| (*n, *p)).collect();
        let mut extra: HashMap<Key, Vec<Key>> = HashMap::new();
        for (i, ins) in new_inputs.iter().enumerate() {
            for v in ins.iter().flatten() {
                extra.entry(key_of(v)).or_default().push(Key::New(i));
            }
        }
        for (n, _, v) in rewires {
            if let Some(v) = v {
                extra.entry(key_of(v)).or_default().push(Key::Old(*n));
            }
        }
        let succ = |k: Key| -> Vec<Key> {
            let mut out: Vec<Key> = extra.get(&k).cloned().unwrap_or_default();
            if let Key::Old(n) = k {
                for (port, _) in g.node(n).outputs.iter().enumerate() {
                    for (user, uport) in g.users(ValueRef::new(n, port as u32)) {
                        if !self.removals.contains(&user) && !rewired.contains(&(user, uport as usize)) {
                            out.push(Key::Old(user));
                        }
                    }
                }
            }
            out
        };
        // Iterative three-colour DFS from the rewired consumers.
        let mut state: HashMap<Key, u8> = HashMap::new(); // 1 = on stack, 2 = done
        for (start, _, v) in rewires {
            if v.is_none() || state.contains_key(&Key::Old(*start)) {
                continue;
            }
            let mut stack: Vec<(Key, Vec<Key>)> = vec![(Key::Old(*start), succ(Key::Old(*start)))];
            state.insert(Key::Old(*start), 1);
            while let Some((k, children)) = stack.last_mut() {
                match children.pop() {
                    Some(c) => match state.get(&c) {
                        Some(1) => {
                            let name = match c {
                                Key::Old(n) => label(g, n),
                                Key::New(i) => format!("new node #{i} ({})", self.nodes[i].op.op_type()),
                            };
                            return Err(PatchError(format!("the patch would create a cycle through {name}")));
                        }
                        Some(_) => {}
                        None => {
                            state.insert(c, 1);
                            let s = succ(c);
                            stack.push((c, s));
                        }
                    },
                    None => {
                        state.insert(*k, 2);
                        stack.pop();
                    }
                }
            }
        }
        Ok(())
    }

    fn execute(self, g: &mut Graph, plan: Plan) -> Applied {
        let Plan { new_inputs, types, rewires, outputs } = plan;
        for &r in &self.removals {
            g.remove_node(r);
        }
        // Explicit names first, so that no preferred name takes one of them.
        for n in &self.nodes {
            for (name, _) in &n.outputs {
                if let OutName::Exact(s) = name {
                    g.reserve_name(s);
                }
            }
        }
        let mut ids: Vec<NodeId> = Vec::with_capacity(self.nodes.len());
        let to_ref = |ids: &[NodeId], v: PatchValue| match v {
            PatchValue::Graph(r) => r,
            PatchValue::New { node, port } => ValueRef::new(ids[node], port),
        };
        for ((n, ins), tys) in self.nodes.into_iter().zip(new_inputs).zip(types) {
            let mut op = n.op;
            if let Some(w) = n.weight {
                op = Op::Weight(g.weights.add_unique(w));
            }
            let mut infos = Vec::with_capacity(n.outputs.len());
            for ((name, _), ty) in n.outputs.into_iter().zip(tys) {
                let name = match name {
                    OutName::Exact(s) => s,
                    OutName::Prefer(s) => {
                        if !g.name_is_taken(&s) {
                            g.reserve_name(&s);
                            s
                        } else {
                            g.fresh_name(&s)
                        }
                    }
                };
                infos.push(ValueInfo::new(name, ty));
            }
            let ins: Vec<Option<ValueRef>> = ins.into_iter().map(|v| v.map(|v| to_ref(&ids, v))).collect();
            ids.push(g.add_node(op, n.name, &ins, infos));
        }
        for (node, port, v) in rewires {
            g.set_node_input(node, port, v.map(|v| to_ref(&ids, v)));
        }
        for (i, v) in outputs {
            g.outputs_mut()[i].value = to_ref(&ids, v);
        }
        for (node, op) in self.op_changes {
            g.node_mut(node).op = op;
        }
        Applied { nodes: ids }
    }

    fn describe(&self, g: &Graph, v: PatchValue) -> String {
        match v {
            PatchValue::Graph(r) => {
                g.try_node(r.node).map_or_else(|| format!("{r:?}"), |_| g.value_info(r).name.clone())
            }
            PatchValue::New { node, port } => match self.nodes.get(node) {
                Some(n) => format!("output {port} of new node #{node} ({})", n.op.op_type()),
                None => format!("new node #{node}"),
            },
        }
    }
}

struct Plan {
    new_inputs: Vec<Vec<Option<PatchValue>>>,
    types: Vec<Vec<Type>>,
    rewires: Vec<(NodeId, usize, Option<PatchValue>)>,
    outputs: Vec<(usize, PatchValue)>,
}

/// The base of a fresh name: the hint without a trailing `_<digits>`, so
/// names do not grow with every rewrite (`x_3` → `x_7`, not `x_3_7`).
fn fresh_base(hint: &str) -> String {
    match hint.rsplit_once('_') {
        Some((base, digits))
            if !base.is_empty() && !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) =>
        {
            base.to_string()
        }
        _ => hint.to_string(),
    }
}

/// `'name' (Op)` for messages, as the verifier writes it.
pub(crate) fn label(g: &Graph, id: NodeId) -> String {
    match g.try_node(id) {
        None => format!("node {id:?}"),
        Some(n) => {
            let out = n.outputs.first().map(|o| o.name.as_str()).unwrap_or("");
            let name = if !n.name.is_empty() { n.name.as_str() } else { out };
            format!("node '{name}' ({})", n.op.op_type())
        }
    }
}

impl fmt::Display for PatchValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatchValue::Graph(r) => write!(f, "{:?}:{}", r.node, r.port),
            PatchValue::New { node, port } => write!(f, "new#{node}:{port}"),
        }
    }
}

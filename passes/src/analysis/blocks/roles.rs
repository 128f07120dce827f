//! Naming a block's weights by what they do, from the graph's structure.
//!
//! The roles are inferred on one block (the template) and carried to the
//! others through the isomorphism, so every block names the same weight the
//! same way. Names of weights and nodes play no part: exporters rename
//! freely (`onnx::MatMul_714`), while structure does not lie.
//!
//! - **Linear** weights feed `MatMul`/`Gemm`/`Conv` (directly or through
//!   weight-side ops such as a `Transpose`).
//! - **Attention**: a `Softmax` between two activation×activation `MatMul`s
//!   is an attention core. A linear whose output reaches the first operand of
//!   the scores product is `q`, the second operand `k`, the second operand of
//!   the context product `v` (a fused projection is `qkv`, `kv`, ...), and a
//!   linear fed by the context product is `o`.
//! - **Router**: a linear whose output reaches a `TopK`.
//! - **FFN**: the remaining linears, grouped by which feeds which. A pair is
//!   `ffn-in` → `ffn-out`; a gated unit is `ffn-gate` (the input linear whose
//!   path passes a non-linearity), `ffn-up` and `ffn-out`. Several units after
//!   a router are experts (`expert0.ffn-gate`, ... in graph order).
//! - **Bias**: added to a linear's output (or a `Gemm`/`Conv` bias input):
//!   `<linear>.bias`.
//! - **Norms**: the scale and bias inputs of normalisation ops, or a vector
//!   multiplied into a decomposed norm: `norm1.gain`, `norm1.bias`, numbered
//!   in graph order.
//! - Anything else is `other<i>` (an embedding table inside a block, say).

use super::index::{Class, Index};
use super::matcher::Region;
use sharc_ir::{BinaryOp, DType, NodeId, Op, UnaryOp, ValueRef, WeightId};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

/// What kind of parameter a role is, which decides how passes treat it
/// (low-rank corrections for matrices, exact residuals or tying for vectors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoleKind {
    /// A projection matrix (or convolution kernel).
    Linear,
    /// A bias added to a linear's output.
    Bias,
    /// A normalisation scale.
    NormGain,
    /// A normalisation shift.
    NormBias,
    /// Anything else.
    Other,
}

impl RoleKind {
    /// A short lowercase name for reports.
    pub fn name(self) -> &'static str {
        match self {
            RoleKind::Linear => "linear",
            RoleKind::Bias => "bias",
            RoleKind::NormGain => "norm-gain",
            RoleKind::NormBias => "norm-bias",
            RoleKind::Other => "other",
        }
    }
}

/// One weight position of a block, the same in every block.
#[derive(Clone, Debug, PartialEq)]
pub struct Role {
    /// `q`, `ffn-out`, `norm1.gain`, `o.bias`, ...; unique within a block.
    pub name: String,
    /// The kind of parameter.
    pub kind: RoleKind,
    /// Element type.
    pub dtype: DType,
    /// Shape (the same in every block).
    pub shape: Vec<usize>,
}

#[derive(Clone, Debug)]
enum Class0 {
    Linear(NodeId),
    Bias(NodeId),
    Gain(NodeId),
    Shift(NodeId),
    Other(&'static str),
}

/// Infers the role of each template weight (in the order given).
pub(crate) fn infer_roles(ix: &Index, t: &Region, weights: &[WeightId]) -> Vec<Role> {
    let members: HashSet<NodeId> = t.data.iter().chain(&t.aux).copied().collect();
    // Where each weight enters the data computation: (data node, port).
    let mut entries: HashMap<WeightId, Vec<(NodeId, usize)>> = HashMap::new();
    for &n in t.data.iter().chain(&t.aux) {
        for (port, v) in ix.inputs(n).iter().enumerate() {
            let Some(v) = v else { continue };
            if let Op::Weight(w) = ix.g.node(v.node).op {
                let e = entries.entry(w).or_default();
                follow_to_data(ix, &members, n, port, e);
            }
        }
    }
    for e in entries.values_mut() {
        e.sort_by_key(|(n, p)| (ix.pos[n], *p));
        e.dedup();
    }
    let rank = |w: WeightId| ix.g.weights.get(w).map_or(0, |w| w.shape.len());
    let numel = |w: WeightId| ix.g.weights.get(w).map_or(0, |w| w.num_elements());

    // First pass: linears, norm ops and everything decided by the consumer alone.
    let mut class: HashMap<WeightId, Class0> = HashMap::new();
    let mut linear_nodes: HashSet<NodeId> = HashSet::new();
    for &w in weights {
        let Some(&(d, port)) = entries.get(&w).and_then(|e| e.first()) else {
            class.insert(w, Class0::Other("other"));
            continue;
        };
        let c = match (&ix.g.node(d).op, port) {
            (Op::MatMul, _) if rank(w) >= 2 => Class0::Linear(d),
            (Op::Gemm(_), 0 | 1) => Class0::Linear(d),
            (Op::Gemm(_), 2) => Class0::Bias(d),
            (Op::Conv(_) | Op::ConvTranspose(_), 1) => Class0::Linear(d),
            (Op::Conv(_) | Op::ConvTranspose(_), 2) => Class0::Bias(d),
            (
                Op::LayerNormalization(_)
                | Op::RMSNormalization(_)
                | Op::GroupNormalization(_)
                | Op::InstanceNormalization(_)
                | Op::BatchNormalization(_),
                1,
            ) => Class0::Gain(d),
            (
                Op::LayerNormalization(_)
                | Op::GroupNormalization(_)
                | Op::InstanceNormalization(_)
                | Op::BatchNormalization(_),
                2,
            ) => Class0::Shift(d),
            (Op::Gather(_), 0) => Class0::Other("embedding"),
            _ => Class0::Other("other"),
        };
        if let Class0::Linear(d) = c {
            linear_nodes.insert(d);
        }
        class.insert(w, c);
    }
    // Second pass: vectors added to linear outputs are biases; vectors
    // multiplied into activations are gains of decomposed norms, and vectors
    // added after such a gain are that norm's bias.
    for &w in weights {
        let Some(Class0::Other(_)) = class.get(&w) else { continue };
        let Some(&(d, port)) = entries.get(&w).and_then(|e| e.first()) else { continue };
        let other = ix.inputs(d).get(1 - port.min(1)).copied().flatten();
        let vector = rank(w) <= 1 || ix.g.weights.get(w).is_some_and(|x| x.shape.iter().rev().skip(1).all(|&s| s == 1));
        let c = match &ix.g.node(d).op {
            Op::Binary(BinaryOp::Add) if vector => match other.map(|o| producer_through_reshapes(ix, t, o)) {
                Some(p) if linear_nodes.contains(&p) => Some(Class0::Bias(p)),
                Some(p) => Some(Class0::Shift(p)),
                None => None,
            },
            Op::Binary(BinaryOp::Mul) if vector && numel(w) > 1 => Some(Class0::Gain(d)),
            _ => None,
        };
        if let Some(c) = c {
            class.insert(w, c);
        }
    }
    // A shift is a norm bias only when it follows a gain; otherwise "other".
    let gain_nodes: HashSet<NodeId> =
        class.values().filter_map(|c| if let Class0::Gain(d) = c { Some(*d) } else { None }).collect();
    let norm_ops: HashSet<NodeId> = class
        .values()
        .filter_map(|c| match c {
            Class0::Gain(d) | Class0::Shift(d) if is_norm_op(&ix.g.node(*d).op) => Some(*d),
            _ => None,
        })
        .collect();
    let mut anchors: Vec<NodeId> = gain_nodes.union(&norm_ops).copied().collect();
    anchors.sort_by_key(|n| ix.pos[n]);
    let norm_index: HashMap<NodeId, usize> = anchors.iter().enumerate().map(|(i, n)| (*n, i + 1)).collect();

    let linear_names = name_linears(ix, t, &linear_nodes);

    let mut roles: Vec<Role> = Vec::new();
    let mut others = 0usize;
    for &w in weights {
        let (name, kind) = match class.get(&w).cloned().unwrap_or(Class0::Other("other")) {
            Class0::Linear(d) => (linear_names.get(&d).cloned().unwrap_or_else(|| "linear".into()), RoleKind::Linear),
            Class0::Bias(d) => match linear_names.get(&d) {
                Some(l) => (format!("{l}.bias"), RoleKind::Bias),
                None => ("bias".into(), RoleKind::Bias),
            },
            Class0::Gain(d) => match norm_index.get(&d) {
                Some(i) => (format!("norm{i}.gain"), RoleKind::NormGain),
                None => ("gain".into(), RoleKind::NormGain),
            },
            Class0::Shift(d) => match norm_index.get(&d) {
                Some(i) => (format!("norm{i}.bias"), RoleKind::NormBias),
                None => {
                    others += 1;
                    (format!("shift{others}"), RoleKind::Other)
                }
            },
            Class0::Other(what) => {
                others += 1;
                (format!("{what}{others}"), RoleKind::Other)
            }
        };
        let (dtype, shape) = ix.g.weights.get(w).map_or((DType::F32, Vec::new()), |x| (x.dtype, x.shape.clone()));
        roles.push(Role { name, kind, dtype, shape });
    }
    make_unique(&mut roles);
    roles
}

fn is_norm_op(op: &Op) -> bool {
    matches!(
        op,
        Op::LayerNormalization(_)
            | Op::RMSNormalization(_)
            | Op::GroupNormalization(_)
            | Op::InstanceNormalization(_)
            | Op::BatchNormalization(_)
    )
}

/// From a use of a weight by `n` at `port`, the data nodes where the
/// (possibly weight-side transformed) value enters the computation.
fn follow_to_data(ix: &Index, members: &HashSet<NodeId>, n: NodeId, port: usize, out: &mut Vec<(NodeId, usize)>) {
    let mut queue = VecDeque::from([(n, port)]);
    let mut seen = HashSet::new();
    while let Some((n, port)) = queue.pop_front() {
        if !seen.insert((n, port)) {
            continue;
        }
        if ix.class(n) == Class::Data {
            out.push((n, port));
            continue;
        }
        for v in ix.outputs_of(n) {
            for &(u, p) in ix.users(v) {
                if members.contains(&u) {
                    queue.push_back((u, p));
                }
            }
        }
    }
}

/// The producer of `v`, looking through reshapes and transposes (a bias may
/// be added after the linear's output was reshaped).
fn producer_through_reshapes(ix: &Index, t: &Region, v: ValueRef) -> NodeId {
    let mut n = v.node;
    for _ in 0..8 {
        match &ix.g.node(n).op {
            Op::Reshape(_) | Op::Transpose(_) | Op::Flatten(_) | Op::Squeeze | Op::Unsqueeze | Op::Identity => {
                match ix.inputs(n).first().copied().flatten() {
                    Some(p) if t.data_set.contains(&p.node) => n = p.node,
                    _ => break,
                }
            }
            _ => break,
        }
    }
    n
}

fn is_activation(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(
            UnaryOp::Erf
                | UnaryOp::Sigmoid
                | UnaryOp::Tanh
                | UnaryOp::Relu
                | UnaryOp::Softplus
                | UnaryOp::Softsign
                | UnaryOp::Mish
                | UnaryOp::HardSwish
                | UnaryOp::LeakyRelu { .. }
                | UnaryOp::Elu { .. }
                | UnaryOp::Celu { .. }
                | UnaryOp::Selu { .. }
                | UnaryOp::HardSigmoid { .. }
                | UnaryOp::ThresholdedRelu { .. }
                | UnaryOp::Gelu { .. }
                | UnaryOp::Swish { .. }
                | UnaryOp::Exp
        )
    )
}

/// What a forward or backward walk inside the region met: the stop nodes
/// reached (with the port of entry for forward walks) and the ops passed.
#[derive(Default)]
struct Walk {
    stops: BTreeSet<(usize, NodeId, usize)>,
    passed_activation: bool,
    passed_topk: bool,
}

impl Walk {
    fn hit(&self, n: NodeId, port: Option<usize>) -> bool {
        self.stops.iter().any(|&(_, m, p)| m == n && port.is_none_or(|q| q == p))
    }
}

fn walk_forward(ix: &Index, t: &Region, from: NodeId, stop: &HashSet<NodeId>) -> Walk {
    let mut w = Walk::default();
    let mut queue = VecDeque::from([from]);
    let mut seen = HashSet::from([from]);
    while let Some(n) = queue.pop_front() {
        for v in ix.outputs_of(n) {
            for &(u, p) in ix.users(v) {
                if !t.data_set.contains(&u) {
                    continue;
                }
                if stop.contains(&u) {
                    w.stops.insert((ix.pos[&u], u, p));
                    continue;
                }
                if seen.insert(u) {
                    let op = &ix.g.node(u).op;
                    w.passed_activation |= is_activation(op);
                    w.passed_topk |= matches!(op, Op::TopK(_));
                    queue.push_back(u);
                }
            }
        }
    }
    w
}

fn walk_backward(ix: &Index, t: &Region, from: &[ValueRef], stop: &HashSet<NodeId>) -> Walk {
    let mut w = Walk::default();
    let mut queue: VecDeque<NodeId> = VecDeque::new();
    let mut seen = HashSet::new();
    for v in from {
        if t.data_set.contains(&v.node) {
            if stop.contains(&v.node) {
                w.stops.insert((ix.pos[&v.node], v.node, 0));
            } else if seen.insert(v.node) {
                queue.push_back(v.node);
            }
        }
    }
    while let Some(n) = queue.pop_front() {
        for v in ix.inputs(n).iter().flatten() {
            if !t.data_set.contains(&v.node) {
                continue;
            }
            if stop.contains(&v.node) {
                w.stops.insert((ix.pos[&v.node], v.node, 0));
            } else if seen.insert(v.node) {
                queue.push_back(v.node);
            }
        }
    }
    w
}

/// Names the linear nodes of the template (see the module docs).
fn name_linears(ix: &Index, t: &Region, linears: &HashSet<NodeId>) -> HashMap<NodeId, String> {
    let mut names: HashMap<NodeId, String> = HashMap::new();
    // Activation × activation products: attention's scores and context.
    let act_mm: HashSet<NodeId> = t
        .data
        .iter()
        .copied()
        .filter(|n| {
            matches!(ix.g.node(*n).op, Op::MatMul)
                && !linears.contains(n)
                && ix.inputs(*n).iter().flatten().all(|v| ix.class(v.node) == Class::Data)
        })
        .collect();
    let stop: HashSet<NodeId> = linears.union(&act_mm).copied().collect();
    let mut units: Vec<(NodeId, NodeId)> = Vec::new();
    for &s in &t.data {
        if !matches!(ix.g.node(s).op, Op::Softmax(_) | Op::LogSoftmax(_)) {
            continue;
        }
        let back = walk_backward(ix, t, &ix.inputs(s).iter().flatten().copied().collect::<Vec<_>>(), &act_mm);
        let fwd = walk_forward(ix, t, s, &act_mm);
        let scores: Vec<NodeId> = back.stops.iter().map(|s| s.1).collect();
        let ctx: Vec<NodeId> = fwd.stops.iter().filter(|s| s.2 == 0).map(|s| s.1).collect();
        if let ([ms], [mc]) = (scores.as_slice(), ctx.as_slice()) {
            units.push((*ms, *mc));
        }
    }
    let mut ordered: Vec<NodeId> = linears.iter().copied().collect();
    ordered.sort_by_key(|n| ix.pos[n]);
    let many_units = units.len() > 1;
    for (i, &(ms, mc)) in units.iter().enumerate() {
        let prefix = if many_units { format!("attn{}.", i + 1) } else { String::new() };
        for &l in &ordered {
            if names.contains_key(&l) {
                continue;
            }
            let fwd = walk_forward(ix, t, l, &stop);
            let mut letters = String::new();
            if fwd.hit(ms, Some(0)) {
                letters.push('q');
            }
            if fwd.hit(ms, Some(1)) {
                letters.push('k');
            }
            if fwd.hit(mc, Some(1)) {
                letters.push('v');
            }
            if !letters.is_empty() {
                names.insert(l, format!("{prefix}{letters}"));
                continue;
            }
            let acts: Vec<ValueRef> =
                ix.inputs(l).iter().flatten().filter(|v| ix.class(v.node) == Class::Data).copied().collect();
            let back = walk_backward(ix, t, &acts, &stop);
            if back.hit(mc, None) {
                names.insert(l, format!("{prefix}o"));
            }
        }
    }
    // Routers: linears whose output reaches a TopK.
    for &l in &ordered {
        if !names.contains_key(&l) && walk_forward(ix, t, l, &stop).passed_topk {
            names.insert(l, "router".into());
        }
    }
    // The rest form feed-forward units: which linear feeds which.
    let rest: Vec<NodeId> = ordered.iter().copied().filter(|l| !names.contains_key(l)).collect();
    let rest_set: HashSet<NodeId> = rest.iter().copied().collect();
    let mut feeds: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    let mut fed_by: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    let mut activation: HashMap<NodeId, bool> = HashMap::new();
    for &l in &rest {
        let w = walk_forward(ix, t, l, &stop);
        activation.insert(l, w.passed_activation);
        for &(_, m, p) in &w.stops {
            let through_data = ix.inputs(m).get(p).copied().flatten().is_some_and(|v| ix.class(v.node) == Class::Data);
            if rest_set.contains(&m) && through_data {
                feeds.entry(l).or_default().push(m);
                fed_by.entry(m).or_default().push(l);
            }
        }
    }
    // Connected components in graph order.
    let mut comp_of: HashMap<NodeId, usize> = HashMap::new();
    let mut comps: Vec<Vec<NodeId>> = Vec::new();
    for &l in &rest {
        if comp_of.contains_key(&l) {
            continue;
        }
        let id = comps.len();
        let mut members = Vec::new();
        let mut queue = VecDeque::from([l]);
        comp_of.insert(l, id);
        while let Some(n) = queue.pop_front() {
            members.push(n);
            for m in feeds.get(&n).into_iter().flatten().chain(fed_by.get(&n).into_iter().flatten()) {
                if !comp_of.contains_key(m) {
                    comp_of.insert(*m, id);
                    queue.push_back(*m);
                }
            }
        }
        members.sort_by_key(|n| ix.pos[n]);
        comps.push(members);
    }
    let has_router = names.values().any(|n| n == "router");
    let units_n = comps.iter().filter(|c| c.len() > 1).count();
    let mut unit = 0usize;
    for comp in &comps {
        if comp.len() == 1 {
            names.insert(comp[0], "linear".into());
            continue;
        }
        let prefix = match (units_n > 1, has_router) {
            (true, true) => format!("expert{unit}."),
            (true, false) => format!("ffn{unit}."),
            _ => String::new(),
        };
        unit += 1;
        let sources: Vec<NodeId> = comp.iter().copied().filter(|n| !fed_by.contains_key(n)).collect();
        let sinks: Vec<NodeId> = comp.iter().copied().filter(|n| !feeds.contains_key(n)).collect();
        match (comp.len(), sources.as_slice(), sinks.as_slice()) {
            (2, [a], [b]) => {
                names.insert(*a, format!("{prefix}ffn-in"));
                names.insert(*b, format!("{prefix}ffn-out"));
            }
            (3, [a, b], [c]) => {
                let (ga, gb) = (activation[a], activation[b]);
                if ga != gb {
                    let (gate, up) = if ga { (*a, *b) } else { (*b, *a) };
                    names.insert(gate, format!("{prefix}ffn-gate"));
                    names.insert(up, format!("{prefix}ffn-up"));
                } else {
                    names.insert(*a, format!("{prefix}ffn-in1"));
                    names.insert(*b, format!("{prefix}ffn-in2"));
                }
                names.insert(*c, format!("{prefix}ffn-out"));
            }
            _ => {
                for (i, n) in comp.iter().enumerate() {
                    names.insert(*n, format!("{prefix}ffn.linear{}", i + 1));
                }
            }
        }
    }
    names
}

/// Makes role names unique by numbering repeats (`linear`, `linear.2`).
fn make_unique(roles: &mut [Role]) {
    let mut count: HashMap<String, usize> = HashMap::new();
    for r in roles.iter() {
        *count.entry(r.name.clone()).or_default() += 1;
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in roles.iter_mut() {
        if count[&r.name] > 1 {
            let k = seen.entry(r.name.clone()).or_default();
            *k += 1;
            if *k > 1 {
                r.name = format!("{}.{}", r.name, k);
            }
        }
    }
}

//! Mixture-of-experts layers, found from the graph's structure.
//!
//! An MoE layer as exporters write it (transformers' Mixtral, Qwen-MoE,
//! OLMoE through `torch.onnx.export`) has four parts, and [`find_moe_layers`]
//! recognises each from the data flow alone, never from names:
//!
//! 1. **Router**: a `MatMul` (or `Gemm`) of the layer's token matrix `x`
//!    with a 2-D weight of `N` columns, possibly followed by casts and a
//!    `Softmax`, feeding a `TopK` whose `k` is a constant.
//! 2. **Gates**: `TopK`'s values, possibly renormalised (`v / ΣV`) or passed
//!    through a softmax; the resulting value is what multiplies the experts'
//!    outputs.
//! 3. **Experts**: for each expert `e`, a *selector* picks the tokens routed
//!    to it from `TopK`'s indices (`Gather(OneHot(indices)ᵀ, e)` in torch
//!    exports, or `Equal(indices, e)`), and a `Gather` of `x`'s rows starts
//!    its body. The body is everything computed from those rows before the
//!    gate is applied; its weights are the expert's parameters.
//! 4. **Combine**: the first value whose *data* depends on every expert's
//!    output (the end of the scatter-add chain) is the layer's MoE output.
//!    Dependencies through `Shape`/`Size` do not count: torch exports expand
//!    each expert's rows to the shape of the running sum, which would
//!    otherwise make the last expert's own rows look like the combine.
//!
//! Every layer must have a body for each of its `N` experts; a layer that
//! looks like a router but whose experts cannot all be found is reported
//! with the reason, not guessed.

use sharc_ir::{Graph, NodeId, Op, Tensor, ValueRef, WeightId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write;

/// One expert of an MoE layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Expert {
    /// The expert's index in its router's output (`0..N`).
    pub index: usize,
    /// The value its body starts from: `x`'s rows routed to it.
    pub input: ValueRef,
    /// The body's result, before the gate multiplies it.
    pub output: ValueRef,
    /// The body's nodes, in topological order.
    pub body: Vec<NodeId>,
    /// The body's weights in the order the body first reads them (aligned
    /// across experts of the same structure).
    pub weights: Vec<WeightId>,
}

/// One MoE layer. See the [module docs](self).
#[derive(Clone, Debug, PartialEq)]
pub struct MoeLayer {
    /// The router's input: the token matrix `x` (`[tokens, d]`).
    pub router_input: ValueRef,
    /// The value expert bodies gather their rows from (`x` itself, or the
    /// tensor `x` was reshaped from).
    pub token_source: ValueRef,
    /// The router's matrix product node.
    pub router: NodeId,
    /// The router's weight.
    pub router_weight: WeightId,
    /// The router logits (`[tokens, N]`).
    pub router_logits: ValueRef,
    /// The `TopK` node.
    pub topk: NodeId,
    /// How many experts each token uses.
    pub k: usize,
    /// The gate values that multiply expert outputs (`[tokens, k]`).
    pub gates: ValueRef,
    /// `TopK`'s indices (`[tokens, k]`).
    pub indices: ValueRef,
    /// The experts, by index.
    pub experts: Vec<Expert>,
    /// The combined MoE output (`[tokens, d]`).
    pub output: ValueRef,
}

impl MoeLayer {
    /// Number of experts.
    pub fn num_experts(&self) -> usize {
        self.experts.len()
    }

    /// Parameters of one expert (each distinct weight once).
    pub fn expert_params(&self, g: &Graph, e: usize) -> u64 {
        let mut seen = HashSet::new();
        self.experts[e]
            .weights
            .iter()
            .filter(|w| seen.insert(**w))
            .filter_map(|w| g.weights.get(*w))
            .map(|w| w.num_elements())
            .sum()
    }
}

/// The MoE layers of a graph, in data-flow order, and the routers that were
/// seen but could not be used (with why).
#[derive(Clone, Debug, Default)]
pub struct MoeAnalysis {
    /// Recognised layers.
    pub layers: Vec<MoeLayer>,
    /// `TopK` nodes that looked like routers but were rejected, with the
    /// reason, so that a user can see why a layer was left out.
    pub rejected: Vec<(String, String)>,
}

impl MoeAnalysis {
    /// A human-readable listing for `sharc inspect` and reports.
    pub fn summary(&self, g: &Graph) -> String {
        let mut s = String::new();
        for (i, l) in self.layers.iter().enumerate() {
            let params: u64 = (0..l.num_experts()).map(|e| l.expert_params(g, e)).sum();
            let _ = writeln!(
                s,
                "moe layer {i}: router {} ({} experts, top-{}), {} expert parameters, output {}",
                g.weights.get(l.router_weight).map_or("?", |w| w.name.as_str()),
                l.num_experts(),
                l.k,
                params,
                g.value_info(l.output).name
            );
        }
        for (at, why) in &self.rejected {
            let _ = writeln!(s, "not an MoE layer at {at}: {why}");
        }
        s
    }
}

/// Finds the MoE layers of `g`. See the [module docs](self).
pub fn find_moe_layers(g: &Graph) -> Result<MoeAnalysis, String> {
    let order = g.topo_order().map_err(|e| format!("the graph cannot be analysed: {e}"))?;
    let position: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut out = MoeAnalysis::default();
    for &n in &order {
        if !matches!(g.node(n).op, Op::TopK(_)) {
            continue;
        }
        match layer_at(g, n, &order, &position) {
            Ok(layer) => out.layers.push(layer),
            Err(why) => out.rejected.push((value_name(g, ValueRef::new(n, 0)), why)),
        }
    }
    Ok(out)
}

fn value_name(g: &Graph, v: ValueRef) -> String {
    g.node(v.node).outputs.get(v.port as usize).map_or_else(|| g.node(v.node).name.clone(), |o| o.name.clone())
}

/// The producer of a value, skipping ops that do not change which expert a
/// column is (casts, identities).
fn through_casts(g: &Graph, mut v: ValueRef) -> ValueRef {
    loop {
        match g.node(v.node).op {
            Op::Cast(_) | Op::Identity => match g.node_input(v.node, 0) {
                Some(p) => v = p,
                None => return v,
            },
            _ => return v,
        }
    }
}

/// A constant integer scalar (or one-element tensor) feeding a value.
fn const_int(g: &Graph, v: ValueRef) -> Option<i64> {
    match &g.node(through_casts(g, v).node).op {
        Op::Constant(t) if t.len() == 1 => t.to_i64_vec().and_then(|v| v.first().copied()),
        _ => None,
    }
}

fn weight_of(g: &Graph, v: ValueRef) -> Option<WeightId> {
    match g.node(through_casts(g, v).node).op {
        Op::Weight(w) => Some(w),
        _ => None,
    }
}

fn layer_at(g: &Graph, topk: NodeId, order: &[NodeId], position: &HashMap<NodeId, usize>) -> Result<MoeLayer, String> {
    let Op::TopK(attrs) = &g.node(topk).op else { return Err("not a TopK node".into()) };
    if !attrs.largest {
        return Err("TopK picks the smallest values, which is not routing".into());
    }
    let k = g.node_input(topk, 1).and_then(|v| const_int(g, v)).ok_or("TopK's k is not a constant")?;
    let k = usize::try_from(k).ok().filter(|&k| k > 0).ok_or_else(|| format!("TopK's k is {k}"))?;
    // 1. Router: back from TopK's input through casts and a softmax.
    let mut v = g.node_input(topk, 0).ok_or("TopK has no input")?;
    loop {
        v = through_casts(g, v);
        match g.node(v.node).op {
            Op::Softmax(_) => v = g.node_input(v.node, 0).ok_or("Softmax has no input")?,
            _ => break,
        }
    }
    let router = v.node;
    let (router_input, router_weight, n) = match &g.node(router).op {
        Op::MatMul => {
            let w = g.node_input(router, 1).and_then(|w| weight_of(g, w)).ok_or("the router MatMul has no weight")?;
            let shape = &g.weights.get(w).ok_or("the router's weight is missing from the store")?.shape;
            if shape.len() != 2 {
                return Err(format!("the router weight has shape {shape:?}, not a matrix"));
            }
            (g.node_input(router, 0).ok_or("the router has no input")?, w, shape[1])
        }
        Op::Gemm(a) if !a.trans_a => {
            let w = g.node_input(router, 1).and_then(|w| weight_of(g, w)).ok_or("the router Gemm has no weight")?;
            let shape = &g.weights.get(w).ok_or("the router's weight is missing from the store")?.shape;
            if shape.len() != 2 {
                return Err(format!("the router weight has shape {shape:?}, not a matrix"));
            }
            let n = if a.trans_b { shape[0] } else { shape[1] };
            (g.node_input(router, 0).ok_or("the router has no input")?, w, n)
        }
        other => return Err(format!("TopK's input comes from {}, not a router matrix product", other.op_type())),
    };
    if k > n {
        return Err(format!("TopK picks {k} of only {n} experts"));
    }
    let values = ValueRef::new(topk, 0);
    let indices = ValueRef::new(topk, 1);
    // 2. Gates: renormalised or softmaxed top-k values, or the values as they are.
    let gates = gate_value(g, values);
    // The rows experts gather from: the router input or what it was reshaped from.
    let mut sources = HashSet::new();
    let mut s = router_input;
    loop {
        sources.insert(s);
        match g.node(s.node).op {
            Op::Reshape(_) | Op::Cast(_) | Op::Identity | Op::Flatten(_) => match g.node_input(s.node, 0) {
                Some(p) => s = p,
                None => break,
            },
            _ => break,
        }
    }
    // 3. Experts: selectors on the indices, then the row gather they drive.
    let index_side = descendants_by(g, indices, |op| {
        matches!(op, Op::OneHot(_) | Op::Transpose(_) | Op::Cast(_) | Op::Identity | Op::Reshape(_))
    });
    let gate_side = all_descendants(g, gates);
    let mut experts: Vec<Option<Expert>> = vec![None; n];
    for &sel in order {
        let is_selector = match &g.node(sel).op {
            Op::Gather(a) => a.axis == 0,
            Op::Binary(sharc_ir::BinaryOp::Equal) => true,
            _ => false,
        };
        if !is_selector {
            continue;
        }
        let ins = g.node_inputs(sel);
        let (Some(Some(a)), Some(Some(b))) = (ins.first(), ins.get(1)) else { continue };
        // The TopK node itself is on the index side only through its
        // indices output: a gather of its values is not a selector.
        let on_index = |x: &ValueRef| *x == indices || (x.node != topk && index_side.contains(&x.node));
        let e = if on_index(a) {
            const_int(g, *b)
        } else if on_index(b) && matches!(g.node(sel).op, Op::Binary(_)) {
            const_int(g, *a)
        } else {
            None
        };
        let Some(e) = e else { continue };
        let e = usize::try_from(e)
            .ok()
            .filter(|&e| e < n)
            .ok_or_else(|| format!("selector {} picks expert {e} of {n}", value_name(g, ValueRef::new(sel, 0))))?;
        if experts[e].is_some() {
            return Err(format!("expert {e} is selected twice"));
        }
        experts[e] = Some(expert_from_selector(g, sel, e, &sources, &gate_side, position)?);
    }
    let missing: Vec<usize> = (0..n).filter(|&e| experts[e].is_none()).collect();
    if !missing.is_empty() {
        return Err(format!("no body found for experts {missing:?} of {n}"));
    }
    let experts: Vec<Expert> = experts.into_iter().flatten().collect();
    // 4. Combine: the first node (in topological order) reached from every expert output.
    let output = combine_point(g, &experts, order)?;
    let token_source = g.node_input(experts[0].input.node, 0).ok_or("an expert's gather has no data input")?;
    if let Some(e) = experts.iter().find(|e| g.node_input(e.input.node, 0) != Some(token_source)) {
        return Err(format!("expert {} gathers its rows from another tensor than expert 0", e.index));
    }
    Ok(MoeLayer {
        router_input,
        token_source,
        router,
        router_weight,
        router_logits: ValueRef::new(router, 0),
        topk,
        k,
        gates,
        indices,
        experts,
        output,
    })
}

/// The gate value: `v / ReduceSum(v)` or `Softmax(v)` when the values are
/// renormalised that way, else the values themselves.
fn gate_value(g: &Graph, values: ValueRef) -> ValueRef {
    for (user, port) in g.users(values) {
        match &g.node(user).op {
            Op::Binary(sharc_ir::BinaryOp::Div) if port == 0 => {
                let denom = g.node_input(user, 1).map(|d| through_casts(g, d));
                if let Some(d) = denom
                    && matches!(&g.node(d.node).op, Op::Reduce(r) if r.kind == sharc_ir::ReduceKind::Sum)
                    && g.node_input(d.node, 0) == Some(values)
                {
                    return ValueRef::new(user, 0);
                }
            }
            Op::Softmax(_) => return ValueRef::new(user, 0),
            _ => {}
        }
    }
    values
}

/// Nodes reachable from `v` through ops accepted by `keep` (the start's
/// producer included).
fn descendants_by(g: &Graph, v: ValueRef, keep: impl Fn(&Op) -> bool) -> HashSet<NodeId> {
    let mut seen = HashSet::from([v.node]);
    let mut queue = VecDeque::from([v.node]);
    while let Some(n) = queue.pop_front() {
        for s in g.successors(n) {
            if keep(&g.node(s).op) && seen.insert(s) {
                queue.push_back(s);
            }
        }
    }
    seen
}

fn all_descendants(g: &Graph, v: ValueRef) -> HashSet<NodeId> {
    let mut seen = HashSet::new();
    let mut queue: VecDeque<NodeId> = g.users(v).into_iter().map(|(n, _)| n).collect();
    while let Some(n) = queue.pop_front() {
        if seen.insert(n) {
            queue.extend(g.successors(n));
        }
    }
    seen
}

fn expert_from_selector(
    g: &Graph,
    sel: NodeId,
    index: usize,
    sources: &HashSet<ValueRef>,
    gate_side: &HashSet<NodeId>,
    position: &HashMap<NodeId, usize>,
) -> Result<Expert, String> {
    // The first row gather of the tokens driven by this selector.
    let driven = all_descendants(g, ValueRef::new(sel, 0));
    let mut start: Option<NodeId> = None;
    for &n in &driven {
        if let Op::Gather(a) = &g.node(n).op
            && a.axis == 0
            && g.node_input(n, 0).is_some_and(|d| sources.contains(&d))
            && g.node_input(n, 1).is_some_and(|i| driven.contains(&i.node))
            && start.is_none_or(|s| position[&n] < position[&s])
        {
            start = Some(n);
        }
    }
    let start = start.ok_or_else(|| format!("expert {index}'s selector drives no gather of the token rows"))?;
    let input = ValueRef::new(start, 0);
    // The body: what the rows feed before the gate is applied.
    let mut body: HashSet<NodeId> = all_descendants(g, input);
    body.retain(|n| !gate_side.contains(n));
    // The body's result: the one body value read by a gated node.
    let mut outputs: Vec<ValueRef> = Vec::new();
    for &n in &body {
        for (port, _) in g.node(n).outputs.iter().enumerate() {
            let v = ValueRef::new(n, port as u32);
            if g.users(v).iter().any(|(u, _)| gate_side.contains(u)) && !outputs.contains(&v) {
                outputs.push(v);
            }
        }
    }
    let output = match outputs.as_slice() {
        [one] => *one,
        [] => return Err(format!("expert {index}'s body never meets the gate")),
        many => {
            let names: Vec<String> = many.iter().map(|v| value_name(g, *v)).collect();
            return Err(format!("expert {index}'s body meets the gate at several values: {}", names.join(", ")));
        }
    };
    // Keep only what the output needs (shape side branches that lead
    // nowhere else stay out of the body).
    let mut needed = HashSet::new();
    let mut queue = VecDeque::from([output.node]);
    while let Some(n) = queue.pop_front() {
        if body.contains(&n) && needed.insert(n) {
            queue.extend(g.predecessors(n));
        }
    }
    let mut body: Vec<NodeId> = needed.into_iter().collect();
    body.sort_by_key(|n| position[n]);
    let mut weights = Vec::new();
    for &n in &body {
        for v in g.node_inputs(n).into_iter().flatten() {
            if let Op::Weight(w) = g.node(v.node).op
                && !weights.contains(&w)
            {
                weights.push(w);
            }
        }
    }
    if weights.is_empty() {
        return Err(format!("expert {index}'s body has no weights"));
    }
    Ok(Expert { index, input, output, body, weights })
}

fn combine_point(g: &Graph, experts: &[Expert], order: &[NodeId]) -> Result<ValueRef, String> {
    let n = experts.len();
    let mut reached: HashMap<NodeId, Vec<bool>> = HashMap::new();
    let outputs: HashMap<NodeId, usize> = experts.iter().map(|e| (e.output.node, e.index)).collect();
    for &id in order {
        // `Shape` and `Size` read only their input's shape, so their
        // results carry no expert's data. Exporters size each expert's
        // scatter from the running sum of the earlier experts
        // (`Expand(y_e, Shape(acc))`), so following them would stop at the
        // last expert's own output instead of the sum.
        if matches!(g.node(id).op, Op::Shape(_) | Op::Size) {
            continue;
        }
        let mut mask: Option<Vec<bool>> = None;
        for p in g.predecessors(id) {
            if let Some(m) = reached.get(&p) {
                let mask = mask.get_or_insert_with(|| vec![false; n]);
                for (a, b) in mask.iter_mut().zip(m) {
                    *a |= *b;
                }
            }
        }
        if let Some(&e) = outputs.get(&id) {
            mask.get_or_insert_with(|| vec![false; n])[e] = true;
        }
        if let Some(m) = mask {
            if m.iter().all(|b| *b) {
                if g.node(id).outputs.len() != 1 {
                    return Err(format!(
                        "the experts combine in {}, which has several outputs",
                        g.node(id).op.op_type()
                    ));
                }
                return Ok(ValueRef::new(id, 0));
            }
            reached.insert(id, m);
        }
    }
    Err("the experts' outputs never combine".into())
}

/// The expert-to-row routing of one batch: which experts each token picked,
/// from the `TopK` indices as evaluated (`[tokens, k]` integers).
pub fn routing_from_indices(indices: &Tensor, num_experts: usize) -> Result<Vec<Vec<usize>>, String> {
    let shape = indices.shape();
    let k = *shape.last().ok_or("the routing indices are a scalar")?;
    let flat = indices.to_i64_vec().ok_or("the routing indices are not integers")?;
    if k == 0 {
        return Ok(Vec::new());
    }
    flat.chunks(k)
        .map(|row| {
            row.iter()
                .map(|&e| {
                    usize::try_from(e)
                        .ok()
                        .filter(|&e| e < num_experts)
                        .ok_or_else(|| format!("routing index {e} is outside 0..{num_experts}"))
                })
                .collect()
        })
        .collect()
}

//! Regions between two cut points of the residual stream, and the
//! isomorphism test between two regions.
//!
//! Two regions are isomorphic when their data nodes correspond one to one
//! with equal ops (attributes included), equal wiring (port by port), the
//! block input in the same places, the same outside data values (an
//! attention mask computed once for all layers), equivalent shape
//! computations (the same sizes, by value where shape inference knows them,
//! otherwise the same computation) and weight-side inputs computed the same
//! way from weights of the same dtype and shape. Names play no part.

use super::index::{Class, Index};
use sharc_ir::{NodeId, Op, ValueRef, WeightId};
use std::collections::{HashMap, HashSet};

/// The nodes between two cut points of the residual stream.
#[derive(Clone, Debug)]
pub(crate) struct Region {
    pub input: ValueRef,
    pub output: ValueRef,
    /// Data nodes, in topological order.
    pub data: Vec<NodeId>,
    pub data_set: HashSet<NodeId>,
    /// Shape and weight-side nodes used only inside the region.
    pub aux: Vec<NodeId>,
}

impl Region {
    /// The region from `input` to `output`: data nodes that depend on the
    /// input, that the output does not feed, and whose results stay inside
    /// (or are the output, or a graph output), plus the shape and weight-side
    /// computations used only by them. `None` when the output does not
    /// depend on the input.
    pub fn new(ix: &Index, input: ValueRef, output: ValueRef) -> Option<Region> {
        let from_in = ix.data_reach(input);
        if !from_in.contains_key(&output.node) {
            return None;
        }
        let from_out = ix.data_reach(output);
        let mut set: HashSet<NodeId> = from_in.keys().copied().filter(|n| !from_out.contains_key(n)).collect();
        loop {
            let leaking: Vec<NodeId> = set
                .iter()
                .copied()
                .filter(|&n| {
                    ix.outputs_of(n).any(|v| {
                        v != output && ix.users(v).iter().any(|(u, _)| ix.class(*u) == Class::Data && !set.contains(u))
                    })
                })
                .collect();
            if leaking.is_empty() {
                break;
            }
            for n in leaking {
                set.remove(&n);
            }
        }
        if !set.contains(&output.node) {
            return None;
        }
        let mut data: Vec<NodeId> = set.iter().copied().collect();
        data.sort_by_key(|n| ix.pos[n]);
        let aux = owned_aux(ix, &set);
        Some(Region { input, output, data, data_set: set, aux })
    }
}

/// Shape and weight-side nodes all of whose users lie in `members` or in
/// nodes already taken, found backwards from the members' inputs until
/// nothing more can be taken.
fn owned_aux(ix: &Index, members: &HashSet<NodeId>) -> Vec<NodeId> {
    let mut aux: HashSet<NodeId> = HashSet::new();
    loop {
        let taken: Vec<NodeId> = members.iter().chain(aux.iter()).copied().collect();
        let mut added = false;
        for n in taken {
            for v in ix.inputs(n).iter().flatten() {
                let p = v.node;
                if ix.class(p) == Class::Data
                    || matches!(ix.g.node(p).op, Op::Input)
                    || aux.contains(&p)
                    || members.contains(&p)
                {
                    continue;
                }
                let owned = ix.outputs_of(p).all(|v| {
                    !ix.is_graph_output(v) && ix.users(v).iter().all(|(u, _)| members.contains(u) || aux.contains(u))
                });
                if owned {
                    aux.insert(p);
                    added = true;
                }
            }
        }
        if !added {
            break;
        }
    }
    let mut out: Vec<NodeId> = aux.into_iter().collect();
    out.sort_by_key(|n| ix.pos[n]);
    out
}

/// A correspondence between two isomorphic regions.
#[derive(Clone, Debug, Default)]
pub(crate) struct Matching {
    /// Template data node → candidate data node.
    pub nodes: HashMap<NodeId, NodeId>,
    /// Template weight → candidate weight, in the order first met.
    pub weights: Vec<(WeightId, WeightId)>,
}

#[derive(Clone, Default)]
struct State {
    t2c: HashMap<NodeId, NodeId>,
    c2t: HashMap<NodeId, NodeId>,
    wt2c: HashMap<WeightId, WeightId>,
    wc2t: HashMap<WeightId, WeightId>,
    weights: Vec<(WeightId, WeightId)>,
    /// Side values (shape and weight-side) already found equivalent.
    side: HashSet<(ValueRef, ValueRef)>,
    work: Vec<(NodeId, NodeId)>,
}

/// Tests whether `c` computes what `t` computes; on success returns the
/// correspondence, otherwise why not (naming the first difference).
pub(crate) fn match_regions(ix: &Index, t: &Region, c: &Region) -> Result<Matching, String> {
    if t.data.len() != c.data.len() {
        return Err(format!(
            "{} compute nodes against {} (from '{}' to '{}' against '{}' to '{}')",
            t.data.len(),
            c.data.len(),
            ix.g.value_info(t.input).name,
            ix.g.value_info(t.output).name,
            ix.g.value_info(c.input).name,
            ix.g.value_info(c.output).name
        ));
    }
    let mut m = Matcher { ix, t, c, st: State::default() };
    if t.output.port != c.output.port {
        return Err("the outputs come from different ports".to_string());
    }
    m.pair(t.output.node, c.output.node)?;
    m.drain()?;
    // Nodes that do not feed the output (side outputs such as caches) are
    // matched forwards from nodes already paired.
    loop {
        let open: Vec<NodeId> = t.data.iter().copied().filter(|n| !m.st.t2c.contains_key(n)).collect();
        if open.is_empty() {
            break;
        }
        let mut progress = false;
        for nt in open {
            if m.try_forward(nt) {
                progress = true;
            }
        }
        if !progress {
            let nt = t.data.iter().copied().find(|n| !m.st.t2c.contains_key(n)).expect("open is not empty");
            return Err(format!("nothing corresponds to '{}' ({})", ix.label(nt), ix.g.node(nt).op.op_type()));
        }
    }
    if let Some(nc) = c.data.iter().find(|n| !m.st.c2t.contains_key(n)) {
        return Err(format!("'{}' ({}) has no counterpart", ix.label(*nc), ix.g.node(*nc).op.op_type()));
    }
    Ok(Matching { nodes: m.st.t2c, weights: m.st.weights })
}

/// Extends a correspondence forwards from `seed_t ↔ seed_c` over the
/// template nodes `t_nodes` (in topological order), looking for each among
/// the users of values already paired. Used to find where the last block
/// ends when the stream passes through ops after the last residual add (a
/// post-norm `LayerNormalization`). Returns the image of each template node.
pub(crate) fn extend_forward(
    ix: &Index,
    seed_t: ValueRef,
    seed_c: ValueRef,
    t_nodes: &[NodeId],
) -> Option<HashMap<NodeId, NodeId>> {
    let t = Region {
        input: seed_t,
        output: seed_t,
        data: t_nodes.to_vec(),
        data_set: t_nodes.iter().copied().collect(),
        aux: Vec::new(),
    };
    let reach: HashSet<NodeId> = ix.data_reach(seed_c).into_keys().collect();
    let c = Region { input: seed_c, output: seed_c, data: Vec::new(), data_set: reach, aux: Vec::new() };
    let mut m = Matcher { ix, t: &t, c: &c, st: State::default() };
    for &nt in t_nodes {
        if !m.try_forward(nt) {
            return None;
        }
    }
    Some(m.st.t2c)
}

struct Matcher<'a, 'g> {
    ix: &'a Index<'g>,
    t: &'a Region,
    c: &'a Region,
    st: State,
}

impl Matcher<'_, '_> {
    fn pair(&mut self, nt: NodeId, nc: NodeId) -> Result<(), String> {
        match (self.st.t2c.get(&nt), self.st.c2t.get(&nc)) {
            (Some(&x), _) if x == nc => Ok(()),
            (None, None) => {
                self.st.t2c.insert(nt, nc);
                self.st.c2t.insert(nc, nt);
                self.st.work.push((nt, nc));
                Ok(())
            }
            _ => Err(format!(
                "'{}' would correspond to two different nodes (one is '{}')",
                self.ix.label(nt),
                self.ix.label(nc)
            )),
        }
    }

    fn drain(&mut self) -> Result<(), String> {
        while let Some((nt, nc)) = self.st.work.pop() {
            self.compare_nodes(nt, nc)?;
        }
        Ok(())
    }

    fn compare_nodes(&mut self, nt: NodeId, nc: NodeId) -> Result<(), String> {
        let g = self.ix.g;
        let (a, b) = (g.node(nt), g.node(nc));
        if a.op != b.op || a.outputs.len() != b.outputs.len() {
            return Err(format!(
                "'{}' ({}) differs from '{}' ({})",
                self.ix.label(nt),
                a.op.op_type(),
                self.ix.label(nc),
                b.op.op_type()
            ));
        }
        let (ia, ib) = (self.ix.inputs(nt), self.ix.inputs(nc));
        if ia.len() != ib.len() {
            return Err(format!("'{}' and '{}' have different inputs", self.ix.label(nt), self.ix.label(nc)));
        }
        for (port, (x, y)) in ia.iter().zip(ib).enumerate() {
            match (x, y) {
                (None, None) => {}
                (Some(x), Some(y)) => {
                    if !self.equivalent(*x, *y)? {
                        return Err(format!(
                            "input {port} of '{}' ('{}') differs from input {port} of '{}' ('{}')",
                            self.ix.label(nt),
                            g.value_info(*x).name,
                            self.ix.label(nc),
                            g.value_info(*y).name
                        ));
                    }
                }
                _ => {
                    return Err(format!(
                        "input {port} of '{}' and '{}' is present in only one",
                        self.ix.label(nt),
                        self.ix.label(nc)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether value `x` (template side) plays the role of `y` (candidate side).
    fn equivalent(&mut self, x: ValueRef, y: ValueRef) -> Result<bool, String> {
        if x == self.t.input || y == self.c.input {
            return Ok(x == self.t.input && y == self.c.input);
        }
        let (cx, cy) = (self.ix.class(x.node), self.ix.class(y.node));
        if cx != cy {
            return Ok(false);
        }
        match cx {
            Class::Data => {
                let (in_t, in_c) = (self.t.data_set.contains(&x.node), self.c.data_set.contains(&y.node));
                match (in_t, in_c) {
                    (true, true) => {
                        if x.port != y.port {
                            return Ok(false);
                        }
                        self.pair(x.node, y.node)?;
                        Ok(true)
                    }
                    (false, false) => {
                        // The same outside value (a shared mask), or two graph
                        // inputs of one type (per-layer caches).
                        let both_inputs = matches!(self.ix.g.node(x.node).op, Op::Input)
                            && matches!(self.ix.g.node(y.node).op, Op::Input)
                            && self.ix.g.value_type(x) == self.ix.g.value_type(y);
                        Ok(x == y || both_inputs)
                    }
                    _ => Ok(false),
                }
            }
            Class::Meta | Class::Const => self.side_equivalent(x, y),
        }
    }

    /// Shape and weight-side values: equal when they are the same value, when
    /// shape inference knows both elements and they agree, or when they are
    /// computed by the same ops from equivalent inputs (weights: the same
    /// dtype and shape; constants: the same contents).
    fn side_equivalent(&mut self, x: ValueRef, y: ValueRef) -> Result<bool, String> {
        if x == y || self.st.side.contains(&(x, y)) {
            return Ok(true);
        }
        if let (Some(a), Some(b)) = (self.ix.meta_value(x), self.ix.meta_value(y))
            && a == b
        {
            self.st.side.insert((x, y));
            return Ok(true);
        }
        if x.port != y.port {
            return Ok(false);
        }
        let g = self.ix.g;
        let (a, b) = (&g.node(x.node).op, &g.node(y.node).op);
        let same = match (a, b) {
            (Op::Weight(i), Op::Weight(j)) => {
                let (Some(wi), Some(wj)) = (g.weights.get(*i), g.weights.get(*j)) else { return Ok(false) };
                if wi.dtype != wj.dtype || wi.shape != wj.shape {
                    return Ok(false);
                }
                match (self.st.wt2c.get(i), self.st.wc2t.get(j)) {
                    (Some(k), Some(l)) if k == j && l == i => true,
                    (None, None) => {
                        self.st.wt2c.insert(*i, *j);
                        self.st.wc2t.insert(*j, *i);
                        self.st.weights.push((*i, *j));
                        true
                    }
                    _ => false,
                }
            }
            (Op::Constant(s), Op::Constant(t)) => s == t,
            (Op::Input, _) | (_, Op::Input) => false,
            _ => {
                if a != b {
                    return Ok(false);
                }
                let (ia, ib) = (self.ix.inputs(x.node).to_vec(), self.ix.inputs(y.node).to_vec());
                if ia.len() != ib.len() {
                    return Ok(false);
                }
                for (p, q) in ia.iter().zip(&ib) {
                    match (p, q) {
                        (None, None) => {}
                        (Some(p), Some(q)) => {
                            if !self.equivalent(*p, *q)? {
                                return Ok(false);
                            }
                        }
                        _ => return Ok(false),
                    }
                }
                true
            }
        };
        if same {
            self.st.side.insert((x, y));
        }
        Ok(same)
    }

    /// Tries to pair template node `nt` with an unpaired user (of the same
    /// op) of a value already paired with one of its inputs. Keeps the first
    /// candidate whose whole consequence checks out.
    fn try_forward(&mut self, nt: NodeId) -> bool {
        if self.st.t2c.contains_key(&nt) {
            return true;
        }
        let op = &self.ix.g.node(nt).op;
        let mut candidates: Vec<NodeId> = Vec::new();
        for v in self.ix.inputs(nt).iter().flatten() {
            let image = if *v == self.t.input {
                Some(self.c.input)
            } else {
                self.st.t2c.get(&v.node).map(|n| ValueRef::new(*n, v.port))
            };
            if let Some(image) = image {
                for &(u, _) in self.ix.users(image) {
                    if self.c.data_set.contains(&u) && !self.st.c2t.contains_key(&u) && self.ix.g.node(u).op == *op {
                        candidates.push(u);
                    }
                }
            }
        }
        candidates.dedup();
        for nc in candidates {
            let saved = self.st.clone();
            let ok = self.pair(nt, nc).is_ok() && self.drain().is_ok();
            if ok {
                return true;
            }
            self.st = saved;
        }
        false
    }
}

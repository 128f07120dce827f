//! Repeated-block detection: the residual stream of a model, its cut points,
//! the isomorphic blocks between them, and their weights aligned by role.
//!
//! Every sharing pass starts here. [`find_blocks`] works on real exported
//! models (torch exports with their `Shape`/`Gather`/`Concat`/`Reshape`
//! chains, post-norm encoders, pre-norm decoders, MoE layers), from the
//! graph's structure alone:
//!
//! 1. **Kinds of values.** Every value is *data* (it depends on the values
//!    of graph inputs), *shape* (it depends on inputs only through their
//!    shapes: `Shape(x)[1]`, reshape targets, position ids, causal masks) or
//!    *weight-side* (weights and constants only). Shape inference is run on
//!    a copy first, and shape values are tracked by their elements, so that
//!    `seq` computed before the first layer and `seq` computed inside each
//!    later layer compare equal.
//! 2. **Residual adds.** An `Add` of two data values of one shape where one
//!    operand (the skip) feeds the other (the branch) through data edges.
//!    The residual stream is the longest chain of such adds in which each
//!    add's skip depends on the previous add's output; among equally long
//!    chains the one with the shortest links wins, which rejects adds inside
//!    a branch (the `x + 0.044715·x³` of a tanh GELU).
//! 3. **Cut points and blocks.** Each add's skip input is a cut point of the
//!    stream. For every period `p` (adds per block) and offset, consecutive
//!    groups of `p` adds are compared; the longest run of isomorphic groups
//!    wins (most adds covered, then most blocks). Two regions are isomorphic
//!    when their data ops correspond one to one with equal ops and
//!    attributes, the same wiring port by port, the same outside values, the
//!    same shape values and weight inputs of the same dtype and shape. The
//!    last block ends where the stream would be cut after it: for post-norm
//!    models the ops after the last add are matched against those of the
//!    block before.
//! 4. **Roles.** The template block's weights are named from structure (see
//!    [`Role`]) and carried to every block through the correspondence.
//!
//! A model with fewer than two isomorphic blocks gets a [`BlockError`] that
//! says what was found and where the first difference is, never a guess.

mod index;
mod matcher;
mod roles;

pub use roles::{Role, RoleKind};

use index::{Class, Index};
use matcher::{Matching, Region, extend_forward, match_regions};
use sharc_ir::{BinaryOp, Graph, NodeId, Op, ValueRef, WeightId};
use std::collections::{HashMap, HashSet};
use std::fmt::Write;

/// The repeated blocks of a model. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct BlockAnalysis {
    /// The blocks in stream order.
    pub blocks: Vec<Block>,
    /// The weight roles, in the order of every [`Block::weights`].
    pub roles: Vec<Role>,
    /// Residual adds per block.
    pub adds_per_block: usize,
    /// Every residual add of the stream, in order (blocks may cover only a
    /// part of them).
    pub residual_adds: Vec<NodeId>,
}

/// One block: where it sits on the residual stream, its nodes and its
/// weights. Node and weight lists are aligned across blocks: entry `i` of
/// one block corresponds to entry `i` of every other.
#[derive(Clone, Debug)]
pub struct Block {
    /// The residual-stream value the block reads.
    pub input: ValueRef,
    /// The residual-stream value it produces (the next block's input).
    pub output: ValueRef,
    /// Its compute nodes (those on activations), aligned across blocks.
    pub nodes: Vec<NodeId>,
    /// Shape computations and weight-side nodes used only by this block.
    /// Not aligned: exporters often compute the first layer's sizes outside
    /// it and every later layer's inside.
    pub aux_nodes: Vec<NodeId>,
    /// Its weights, one per role of [`BlockAnalysis::roles`].
    pub weights: Vec<BlockWeight>,
    /// Its residual adds, aligned across blocks.
    pub residual_adds: Vec<NodeId>,
}

/// One weight of one block, and where the block uses it.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockWeight {
    /// The stored weight.
    pub id: WeightId,
    /// The block's nodes that read it, as (node, input port), each reading
    /// an `Op::Weight` node of `id`. Rewiring these swaps the block's weight
    /// without touching other blocks that share the weight node.
    pub uses: Vec<(NodeId, usize)>,
}

/// Why a graph has no usable repeated blocks.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BlockError {
    /// The graph cannot be analysed (a cycle).
    #[error("the graph cannot be analysed: {0}")]
    Graph(String),
    /// No residual stream was found.
    #[error("no repeated blocks: {0}")]
    NoStream(String),
    /// A stream exists but no two consecutive groups of it match.
    #[error("no repeated blocks: {0}")]
    NoRepeats(String),
}

impl BlockAnalysis {
    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// True when there are no blocks (never for a successful analysis).
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The index of a role by name.
    pub fn role_index(&self, name: &str) -> Option<usize> {
        self.roles.iter().position(|r| r.name == name)
    }

    /// The cut points: every block's input, then the last block's output.
    pub fn boundaries(&self) -> Vec<ValueRef> {
        let mut b: Vec<ValueRef> = self.blocks.iter().map(|b| b.input).collect();
        if let Some(last) = self.blocks.last() {
            b.push(last.output);
        }
        b
    }

    /// Parameters of one block's weights (each distinct weight once).
    pub fn block_params(&self, g: &Graph, block: usize) -> u64 {
        let mut seen = HashSet::new();
        self.blocks[block]
            .weights
            .iter()
            .filter(|w| seen.insert(w.id))
            .filter_map(|w| g.weights.get(w.id))
            .map(|w| w.num_elements())
            .sum()
    }

    /// A human-readable listing: blocks, their boundaries and parameters,
    /// and the roles. `sharc inspect` prints it.
    pub fn summary(&self, g: &Graph) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} blocks of {} compute nodes, {} residual adds each ({} weights per block)",
            self.blocks.len(),
            self.blocks.first().map_or(0, |b| b.nodes.len()),
            self.adds_per_block,
            self.roles.len()
        );
        for (i, b) in self.blocks.iter().enumerate() {
            let _ = writeln!(
                s,
                "  block {i}: {} -> {}  ({} parameters)",
                g.value_info(b.input).name,
                g.value_info(b.output).name,
                self.block_params(g, i)
            );
        }
        let _ = writeln!(s, "roles");
        for r in &self.roles {
            let shape: Vec<String> = r.shape.iter().map(|d| d.to_string()).collect();
            let _ = writeln!(s, "  {:<16} {:<10} {}[{}]", r.name, r.kind.name(), r.dtype, shape.join(", "));
        }
        s
    }
}

/// One residual add: `out = skip + branch`, with `branch` depending on `skip`.
#[derive(Clone, Copy, Debug)]
struct ResidualAdd {
    node: NodeId,
    skip: ValueRef,
    out: ValueRef,
}

/// Finds the repeated blocks of `graph`. See the [module docs](self).
///
/// The returned node and value ids refer to `graph` (analysis runs shape
/// inference on a copy, which keeps ids).
pub fn find_blocks(graph: &Graph) -> Result<BlockAnalysis, BlockError> {
    let mut g = graph.clone();
    // Without inference the analysis still works, with less knowledge of
    // shape values; a failure here is the model's problem, not ours.
    let _ = sharc_ir::infer_shapes(&mut g);
    let ix = Index::new(&g).map_err(BlockError::Graph)?;
    let adds = residual_chain(&ix)?;
    let best = best_run(&ix, &adds)?;
    Ok(best)
}

fn residual_candidates(ix: &Index) -> Vec<ResidualAdd> {
    let mut out = Vec::new();
    for &n in &ix.order {
        if !matches!(ix.g.node(n).op, Op::Binary(BinaryOp::Add)) || ix.class(n) != Class::Data {
            continue;
        }
        let (Some(Some(a)), Some(Some(b))) = (ix.inputs(n).first(), ix.inputs(n).get(1)) else { continue };
        let (a, b) = (*a, *b);
        if ix.class(a.node) != Class::Data || ix.class(b.node) != Class::Data {
            continue;
        }
        let out_v = ValueRef::new(n, 0);
        if ix.g.value_type(out_v).dtype().is_some_and(|d| !d.is_float()) {
            continue;
        }
        // A residual add does not broadcast: where shapes are known, both
        // operands have the output's shape.
        let (da, db, dout) = (ix.dims(a), ix.dims(b), ix.dims(out_v));
        if let (Some(da), Some(db), Some(dout)) = (&da, &db, &dout)
            && (da != dout || db != dout)
        {
            continue;
        }
        let skip = if ix.data_reach(a).contains_key(&b.node) {
            a
        } else if ix.data_reach(b).contains_key(&a.node) {
            b
        } else {
            continue;
        };
        out.push(ResidualAdd { node: n, skip, out: out_v });
    }
    out
}

/// The residual stream: the longest chain of residual adds, each add's skip
/// depending on the previous add's output, with the shortest links.
fn residual_chain(ix: &Index) -> Result<Vec<ResidualAdd>, BlockError> {
    let cands = residual_candidates(ix);
    if cands.len() < 2 {
        return Err(BlockError::NoStream(format!(
            "found {} residual add{} (an Add whose one operand feeds the other); a stack of blocks needs at least 2",
            cands.len(),
            if cands.len() == 1 { "" } else { "s" }
        )));
    }
    // best[j] = (adds in chain, -total link length), prev pointer.
    let mut best: Vec<(usize, i64, Option<usize>)> = vec![(1, 0, None); cands.len()];
    for i in 0..cands.len() {
        let reach = ix.data_reach(cands[i].out);
        for j in i + 1..cands.len() {
            let link =
                if cands[j].skip == cands[i].out { Some(0) } else { reach.get(&cands[j].skip.node).map(|d| *d as i64) };
            let Some(link) = link else { continue };
            let cand = (best[i].0 + 1, best[i].1 - link);
            if (cand.0, cand.1) > (best[j].0, best[j].1) {
                best[j] = (cand.0, cand.1, Some(i));
            }
        }
    }
    let mut end = 0;
    for j in 1..cands.len() {
        if (best[j].0, best[j].1) > (best[end].0, best[end].1) {
            end = j;
        }
    }
    let mut chain = vec![cands[end]];
    let mut at = end;
    while let Some(p) = best[at].2 {
        chain.push(cands[p]);
        at = p;
    }
    chain.reverse();
    if chain.len() < 2 {
        return Err(BlockError::NoStream(format!(
            "found {} residual adds but no two of them lie on one stream",
            cands.len()
        )));
    }
    Ok(chain)
}

/// A block candidate: adds `first..first + p` of the chain.
struct Candidate {
    first: usize,
    region: Region,
}

/// The link after add `k`: the data nodes from its output to the next add's
/// skip (empty for pre-norm streams, the norm for post-norm ones).
fn link_nodes(ix: &Index, adds: &[ResidualAdd], k: usize) -> Vec<NodeId> {
    let (from, to) = (adds[k].out, adds[k + 1].skip);
    if from == to {
        return Vec::new();
    }
    let fwd = ix.data_reach(from);
    // Nodes on a path from `from` to `to`: reachable from `from`, and `to`
    // reachable from them.
    let mut nodes: Vec<NodeId> = fwd
        .keys()
        .copied()
        .filter(|&n| n == to.node || ix.outputs_of(n).any(|v| ix.data_reach(v).contains_key(&to.node)))
        .collect();
    nodes.sort_by_key(|n| ix.pos[n]);
    nodes
}

struct Builder<'a, 'g> {
    ix: &'a Index<'g>,
    adds: &'a [ResidualAdd],
    regions: HashMap<(usize, usize), Option<Region>>,
}

impl Builder<'_, '_> {
    /// The region of adds `first..first+p`, ending at the next add's skip or,
    /// for the last group, where the stream continues as after the group
    /// before.
    fn region(&mut self, first: usize, p: usize) -> Option<Region> {
        if let Some(r) = self.regions.get(&(first, p)) {
            return r.clone();
        }
        let m = self.adds.len();
        let input = self.adds[first].skip;
        let last = first + p - 1;
        let output = if last + 1 < m {
            Some(self.adds[last + 1].skip)
        } else if last >= p {
            // The group before ends with add `last - p` and is cut at the
            // skip of add `last - p + 1`; find the same ops after our last add.
            let prev = last - p;
            let link = link_nodes(self.ix, self.adds, prev);
            if link.is_empty() {
                Some(self.adds[last].out)
            } else {
                let to = self.adds[prev + 1].skip;
                extend_forward(self.ix, self.adds[prev].out, self.adds[last].out, &link)
                    .and_then(|map| map.get(&to.node).map(|n| ValueRef::new(*n, to.port)))
            }
        } else {
            Some(self.adds[last].out)
        };
        let r = output.and_then(|o| Region::new(self.ix, input, o));
        self.regions.insert((first, p), r.clone());
        r
    }
}

fn best_run(ix: &Index, adds: &[ResidualAdd]) -> Result<BlockAnalysis, BlockError> {
    let m = adds.len();
    let mut b = Builder { ix, adds, regions: HashMap::new() };
    // (adds covered, blocks, template first add), the run and matchings.
    let mut best: Option<((usize, usize), usize, Vec<Candidate>, Vec<Matching>)> = None;
    let mut first_failure: Option<(usize, String)> = None;
    for p in 1..=m / 2 {
        if best.as_ref().is_some_and(|(score, ..)| score.0 == m) {
            // Every add is covered already, by at least as many blocks.
            break;
        }
        for o in 0..p {
            let mut run: Vec<Candidate> = Vec::new();
            let mut matchings: Vec<Matching> = Vec::new();
            let mut first = o;
            let mut finish = |run: &mut Vec<Candidate>, matchings: &mut Vec<Matching>| {
                if run.len() >= 2 {
                    let score = (run.len() * p, run.len());
                    if best.as_ref().is_none_or(|(s, ..)| score > *s) {
                        best = Some((score, p, std::mem::take(run), std::mem::take(matchings)));
                    }
                }
                run.clear();
                matchings.clear();
            };
            while first + p <= m {
                let Some(region) = b.region(first, p) else {
                    finish(&mut run, &mut matchings);
                    first += p;
                    continue;
                };
                if let Some(t) = run.first() {
                    match match_regions(ix, &t.region, &region) {
                        Ok(mt) => {
                            run.push(Candidate { first, region });
                            matchings.push(mt);
                        }
                        Err(why) => {
                            if first_failure.as_ref().is_none_or(|(q, _)| *q != 2) {
                                first_failure = Some((
                                    p,
                                    format!(
                                        "with {p} residual adds per block, the group at add {} differs from the one at add {}: {why}",
                                        first + 1,
                                        t.first + 1
                                    ),
                                ));
                            }
                            finish(&mut run, &mut matchings);
                            run.push(Candidate { first, region });
                            matchings.push(Matching::default());
                        }
                    }
                } else {
                    run.push(Candidate { first, region });
                    matchings.push(Matching::default());
                }
                first += p;
            }
            finish(&mut run, &mut matchings);
        }
    }
    let Some((_, p, run, matchings)) = best else {
        return Err(BlockError::NoRepeats(format!(
            "found a residual stream of {m} adds, but no two consecutive groups of them compute the same thing{}",
            first_failure.map(|(_, f)| format!(" ({f})")).unwrap_or_default()
        )));
    };
    Ok(assemble(ix, adds, p, run, matchings))
}

fn assemble(
    ix: &Index,
    adds: &[ResidualAdd],
    p: usize,
    run: Vec<Candidate>,
    matchings: Vec<Matching>,
) -> BlockAnalysis {
    let t = &run[0].region;
    // Template weights in the order of their first use in the template.
    let mut t_weights: Vec<WeightId> = Vec::new();
    let mut t_members: Vec<NodeId> = t.data.iter().chain(&t.aux).copied().collect();
    t_members.sort_by_key(|n| ix.pos[n]);
    let mut seen = HashSet::new();
    for &n in &t_members {
        for v in ix.inputs(n).iter().flatten() {
            if let Op::Weight(w) = ix.g.node(v.node).op
                && seen.insert(w)
            {
                t_weights.push(w);
            }
        }
    }
    // Only weights that every block's matching paired are roles (a weight
    // read only by a shape computation that matched by value is not).
    t_weights.retain(|w| matchings.iter().skip(1).all(|m| m.weights.iter().any(|(a, _)| a == w)));
    let roles = roles::infer_roles(ix, t, &t_weights);
    let mut blocks = Vec::new();
    for (i, (cand, mt)) in run.iter().zip(&matchings).enumerate() {
        let r = &cand.region;
        let map = |n: NodeId| if i == 0 { n } else { mt.nodes[&n] };
        let wmap: HashMap<WeightId, WeightId> = mt.weights.iter().copied().collect();
        let members: Vec<NodeId> = r.data.iter().chain(&r.aux).copied().collect();
        let weights = t_weights
            .iter()
            .map(|tw| {
                let id = if i == 0 { *tw } else { wmap[tw] };
                let mut uses = Vec::new();
                for &n in &members {
                    for (port, v) in ix.inputs(n).iter().enumerate() {
                        if let Some(v) = v
                            && ix.g.node(v.node).op == Op::Weight(id)
                        {
                            uses.push((n, port));
                        }
                    }
                }
                BlockWeight { id, uses }
            })
            .collect();
        blocks.push(Block {
            input: r.input,
            output: r.output,
            nodes: t.data.iter().map(|&n| map(n)).collect(),
            aux_nodes: r.aux.clone(),
            weights,
            residual_adds: (cand.first..cand.first + p).map(|k| adds[k].node).collect(),
        });
    }
    BlockAnalysis { blocks, roles, adds_per_block: p, residual_adds: adds.iter().map(|a| a.node).collect() }
}

#[cfg(test)]
pub(crate) mod tests;

//! Graph surgery the sharing passes have in common: pointing a block's uses
//! of a role at another weight, removing whole blocks from the residual
//! stream, and cleaning up what that leaves dead.
//!
//! All of it works through [`BlockAnalysis`]: a block's weight uses are
//! `(node, port)` pairs, so rewiring one block never disturbs another block
//! that happened to read the same `Op::Weight` node.

use crate::analysis::blocks::BlockAnalysis;
use sharc_ir::{Graph, NodeId, Op, ValueRef, WeightId};
use std::collections::{BTreeSet, HashSet};

/// Makes block `block` read `value` wherever it read its weight of role
/// `role`. The weight nodes it read before are returned as candidates for
/// [`remove_dead`].
pub fn rewire_role(g: &mut Graph, an: &BlockAnalysis, block: usize, role: usize, value: ValueRef) -> Vec<NodeId> {
    let mut old = Vec::new();
    for &(node, port) in &an.blocks[block].weights[role].uses {
        if let Some(v) = g.node_input(node, port)
            && v != value
        {
            old.push(v.node);
        }
        g.set_node_input(node, port, Some(value));
    }
    old
}

/// Makes block `target` use the stored weight `id` for role `role`: one
/// `Op::Weight` node is added (or found among the target's current inputs)
/// and every use of the role in the target reads it.
pub fn share_weight(g: &mut Graph, an: &BlockAnalysis, target: usize, role: usize, id: WeightId) -> Vec<NodeId> {
    let current = &an.blocks[target].weights[role];
    if current.id == id {
        return Vec::new();
    }
    let value = g.weight_value(id);
    rewire_role(g, an, target, role, value)
}

/// Removes blocks from the residual stream: for each removed block, every
/// consumer of its output (the next block, a final norm, a graph output)
/// reads what the stream held before it instead. Blocks are handled from the
/// last to the first so runs of removed blocks chain correctly. The removed
/// blocks' nodes are left for [`remove_dead`], and returned as candidates.
pub fn bypass_blocks(g: &mut Graph, an: &BlockAnalysis, remove: &BTreeSet<usize>) -> Vec<NodeId> {
    let mut candidates = Vec::new();
    for &b in remove.iter().rev() {
        let block = &an.blocks[b];
        g.replace_uses(block.output, block.input);
        candidates.extend(block.nodes.iter().copied());
        candidates.extend(block.aux_nodes.iter().copied());
    }
    candidates
}

/// Removes the nodes among `candidates` (and, transitively, their
/// producers) that nothing reads any more, then the weights no node refers
/// to. Graph inputs and outputs are never removed. Returns the number of
/// nodes removed.
pub fn remove_dead(g: &mut Graph, candidates: impl IntoIterator<Item = NodeId>) -> usize {
    let keep: HashSet<NodeId> =
        g.inputs().iter().chain(g.captures()).copied().chain(g.outputs().iter().map(|o| o.value.node)).collect();
    let mut work: BTreeSet<NodeId> = candidates.into_iter().collect();
    let mut removed = 0;
    while let Some(n) = work.pop_last() {
        if !g.contains(n) || keep.contains(&n) || !g.successors(n).is_empty() {
            continue;
        }
        let preds = g.predecessors(n);
        g.remove_node(n);
        removed += 1;
        work.extend(preds);
    }
    g.remove_unused_weights();
    removed
}

/// The `Op::Weight` nodes in `nodes` (for counting what a pass touched).
pub fn weight_nodes(g: &Graph, nodes: &[NodeId]) -> Vec<NodeId> {
    nodes.iter().copied().filter(|&n| g.try_node(n).is_some_and(|x| matches!(x.op, Op::Weight(_)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::blocks::find_blocks;
    use crate::analysis::blocks::tests::synthetic;
    use sharc_ir::text::parse;

    #[test]
    fn bypassing_blocks_chains_the_stream_and_drops_their_weights() {
        let mut g = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
        let an = find_blocks(&g).unwrap();
        let before = g.stats().unique_params;
        let per_block = an.block_params(&g, 1);
        let dead = bypass_blocks(&mut g, &an, &BTreeSet::from([1, 2]));
        let removed = remove_dead(&mut g, dead);
        sharc_ir::verify(&g).unwrap();
        assert!(removed > 0);
        assert_eq!(g.stats().unique_params, before - 2 * per_block);
        // Block 3 now reads block 0's output directly.
        let an2 = find_blocks(&g).unwrap();
        assert_eq!(an2.len(), 2);
        assert_eq!(g.value_info(an2.blocks[1].input).name, "x1");
        assert!(g.weights.find("l1.wq").is_none() && g.weights.find("l3.wq").is_some());
    }

    #[test]
    fn sharing_a_weight_leaves_other_blocks_alone() {
        let mut g = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
        let an = find_blocks(&g).unwrap();
        let q = an.role_index("q").unwrap();
        let src = an.blocks[0].weights[q].id;
        let old = share_weight(&mut g, &an, 2, q, src);
        remove_dead(&mut g, old);
        let an2 = find_blocks(&g).unwrap();
        assert_eq!(an2.blocks[2].weights[q].id, src);
        assert_ne!(an2.blocks[1].weights[q].id, src);
        assert!(g.weights.find("l2.wq").is_none());
    }
}

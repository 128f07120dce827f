//! `dce`: dead-code elimination.
//!
//! Removes every node whose outputs no graph output depends on, inside body
//! graphs too; then drops body captures that no body reads (so the owning
//! node stops keeping an outer value alive) and removes stored weights that
//! no node refers to any more. Graph inputs are never removed: they are the
//! model's interface.
//!
//! ONNX nodes have no side effects, so an unused node can go whatever it
//! computes, random ops included. The one exception is an opaque op with no
//! outputs: it can only exist for an effect sharc does not know, so it
//! stays, together with what it reads.

use crate::options::NoOptions;
use crate::patch::Patch;
use crate::registry::RegisteredPass;
use crate::{Pass, PassContext, PassError, PassOutcome};
use sharc_ir::{Graph, NodeId, Op, ValueRef};
use std::collections::HashSet;

/// The `dce` pass. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct Dce;

#[derive(Default)]
struct Counts {
    nodes: i64,
    weights: i64,
    captures: i64,
}

impl Pass for Dce {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let mut c = Counts::default();
        dce_graph(g, &mut c).map_err(|m| PassError::Failed { pass: Self::NAME.to_string(), message: m })?;
        cx.count(Self::NAME, "nodes-removed", c.nodes);
        cx.count(Self::NAME, "weights-removed", c.weights);
        cx.count(Self::NAME, "captures-removed", c.captures);
        Ok(PassOutcome::from_changed(c.nodes + c.weights + c.captures > 0))
    }
}

impl RegisteredPass for Dce {
    type Options = NoOptions;
    const NAME: &'static str = "dce";
    const SUMMARY: &'static str =
        "Remove nodes no output depends on (also in bodies), unused captures and unused weights";
    fn new(_: NoOptions) -> Dce {
        Dce
    }
}

/// True for nodes that must stay even when nothing reads them.
fn has_effect(g: &Graph, id: NodeId) -> bool {
    let n = g.node(id);
    matches!(n.op, Op::Opaque(_)) && n.outputs.is_empty()
}

fn dce_graph(g: &mut Graph, c: &mut Counts) -> Result<(), String> {
    // Bodies first: dropping a capture can make an outer value dead.
    let owners: Vec<NodeId> = g.node_ids().filter(|&n| !g.node(n).op.subgraphs().is_empty()).collect();
    for id in owners {
        for body in g.node_mut(id).op.subgraphs_mut() {
            dce_graph(body, c)?;
        }
        prune_captures(g, id, c);
    }

    let mut live: HashSet<NodeId> = HashSet::new();
    let mut stack: Vec<NodeId> = g.outputs().iter().map(|o| o.value.node).collect();
    stack.extend(g.inputs().iter().chain(g.captures()).copied());
    stack.extend(g.node_ids().filter(|&n| has_effect(g, n)));
    while let Some(n) = stack.pop() {
        if live.insert(n) {
            stack.extend(g.predecessors(n));
        }
    }
    let mut patch = Patch::new();
    let mut removed = 0;
    for id in g.node_ids() {
        if !live.contains(&id) {
            patch.remove_node(id);
            removed += 1;
        }
    }
    if removed > 0 {
        patch.apply(g).map_err(|e| format!("in graph '{}': {e}", g.name))?;
    }
    c.nodes += removed;
    c.weights += g.remove_unused_weights() as i64;
    Ok(())
}

/// Removes the captures that no body of node `id` reads, and the matching
/// trailing inputs of the node.
fn prune_captures(g: &mut Graph, id: NodeId, c: &mut Counts) {
    let bodies = g.node(id).op.subgraphs();
    let Some(first) = bodies.first() else { return };
    let k = first.captures().len();
    if k == 0 || bodies.iter().any(|b| b.captures().len() != k) {
        return;
    }
    let unused: Vec<usize> =
        (0..k).filter(|&j| bodies.iter().all(|b| !b.is_used(ValueRef::new(b.captures()[j], 0)))).collect();
    if unused.is_empty() {
        return;
    }
    let inputs = g.node_inputs(id);
    let Some(regular) = inputs.len().checked_sub(k) else { return };
    let kept: Vec<Option<ValueRef>> = inputs
        .iter()
        .enumerate()
        .filter(|(port, _)| *port < regular || !unused.contains(&(port - regular)))
        .map(|(_, v)| *v)
        .collect();
    for body in g.node_mut(id).op.subgraphs_mut() {
        let doomed: Vec<NodeId> = unused.iter().map(|&j| body.captures()[j]).collect();
        for n in doomed {
            body.remove_node(n);
        }
    }
    g.set_node_inputs(id, &kept);
    c.captures += unused.len() as i64;
}

#[cfg(test)]
mod tests {
    use crate::testing::{run_pipeline, run_pipeline_diff};
    use insta::assert_snapshot;

    #[test]
    fn removes_dead_chains_and_their_weights() {
        assert_snapshot!(run_pipeline_diff(
            "graph @g(%x: f32[batch, 4]) -> (%y) {
  %w = weight @used : f32[4, 4]
  %v = weight @unused : f32[4, 4]
  %m = MatMul(%x, %w)
  %dead1 = MatMul(%x, %v)
  %dead2 = Relu(%dead1)
  %r = RandomNormalLike(%x)
  %y = Relu(%m)
}",
            "dce"
        ));
    }

    #[test]
    fn keeps_everything_that_reaches_an_output() {
        let src = "graph @g(%x: f32[4], %unused_input: f32[4]) -> (%y, %z) {
  %a = Neg(%x)
  %y = Relu(%a)
  %z = Abs(%a)
}
";
        let out = run_pipeline(src, "dce");
        assert_eq!(out, src);
        assert_snapshot!(out);
    }

    #[test]
    fn cleans_bodies_and_drops_unused_captures() {
        assert_snapshot!(run_pipeline(
            "graph @g(%c: bool[], %x: f32[4], %k: f32[4]) -> (%y) {
  %y = If(%c, %x, %k) {else_branch = graph @else() captures(%xo: f32[4], %ko: f32[4]) -> (%e) {
    %dead = Mul(%xo, %ko)
    %e = Neg(%xo)
  }, then_branch = graph @then() captures(%xo: f32[4], %ko: f32[4]) -> (%t) {
    %t = Abs(%xo)
  }}
}",
            "dce"
        ));
    }

    #[test]
    fn keeps_opaque_ops_without_outputs() {
        let src = "graph @g(%x: f32[4]) -> (%y) {
  %y = Relu(%x)
  my.Print(%x)
}
";
        assert_eq!(run_pipeline(src, "dce"), src);
    }
}

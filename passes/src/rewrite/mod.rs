//! The `simplify` pass: algebraic rewriting by equality saturation (egg).
//!
//! 1. **Lift** ([`lift`]): the graph's pure one-output tensor ops become one
//!    [`RecExpr`](egg::RecExpr) over [`TensorLang`]; inputs, weights, large
//!    constants and the outputs of ops the language cannot carry are leaves.
//!    Regions are cut at those ops so that no rewrite can create a cycle.
//! 2. **Saturate**: egg applies the rule sets of [`rules`] until nothing
//!    new is learnt or a limit (nodes, iterations, time) is hit. The
//!    analysis ([`analysis`]) tracks dtype, shape (symbolic dims included)
//!    and small constant values per e-class, folds constants, and gives rules
//!    their conditions.
//! 3. **Extract** greedily with the cost model of [`cost`]: FLOPs plus bytes
//!    moved plus a per-node overhead, with load-time (weight-only) work
//!    nearly free.
//! 4. **Splice** ([`splice`]) the chosen expressions back: unchanged nodes
//!    are reused, dead ones removed, names of replaced values kept.
//!
//! # Rewrite policy
//!
//! - **Directional rules, no blow-up.** Rules go from a form to a simpler or
//!   more canonical one; there are no general commutativity or
//!   associativity rules (they make e-graphs explode for no gain, which is
//!   Cranelift's and tensat's lesson). Where operand order matters, both
//!   orders are written out as separate rules.
//! - **Exact by default, relaxed by choice.** A rule is *exact* when it holds
//!   bit for bit in IEEE arithmetic for all inputs (NaN, infinities, signed
//!   zeros) and in wrapping integer arithmetic. *Relaxed* rules hold in real
//!   arithmetic and change float results only by rounding: reassociating
//!   constants, distributing a scale over a sum, dividing by multiplying
//!   with the reciprocal, moving a scale into a matrix product, `x + 0.0 →
//!   x`. They are off by default and turned on with `simplify{relaxed=true}`:
//!   on minilm-l6 and gpt-tiny the exact rules alone keep every output bit
//!   for bit, while the relaxed ones move results by rounding (up to about
//!   1e-5 on gpt-tiny's logits) in exchange for scales folded into weights.
//!   Laws that fail for NaN,
//!   infinities or negative inputs (`x - x → 0`, `x * 0 → 0`,
//!   `sqrt(x) * sqrt(x) → x`) are never used on floats.
//! - **Types never change.** Broadcasting can make `x * 1` larger than `x`;
//!   every rule that could change a dtype or shape checks, and declines when
//!   a shape it needs is unknown.
//! - **No growth of stored bytes.** Constant folding only turns
//!   computations that do not read weights into literals (at most
//!   [`lang::MAX_LITERAL`] elements). Work moved onto weights
//!   (`(x @ W) * s → x @ (W * s)`) stays in the graph as load-time ops; the
//!   pass never evaluates weights.
//! - **No churn.** Among equally cheap forms the original wins, and the
//!   splice reuses the graph's own nodes, so a graph with nothing to
//!   simplify comes back unchanged.

pub mod analysis;
pub mod cost;
pub mod lang;
pub mod lift;
pub mod rules;
pub mod splice;

#[cfg(test)]
mod tests;

use crate::{Pass, PassContext, PassError, PassOutcome, RegisteredPass};
use analysis::TensorGraph;
use cost::CostModel;
use egg::{Extractor, Id, Language, Runner, StopReason};
use lang::TensorLang;
use lift::Lifted;
use sharc_ir::Graph;
use std::collections::HashSet;
use std::time::{Duration, Instant};

crate::pass_options! {
    /// Options of the `simplify` pass: the limits that keep saturation
    /// bounded on large graphs, and how exact the rules must be.
    pub struct SimplifyOptions {
        /// Stop saturating once the e-graph holds this many e-nodes.
        node_limit: usize = 100_000,
        /// Stop after this many rounds of applying every rule.
        iter_limit: usize = 30,
        /// Stop saturating after this many milliseconds.
        time_limit_ms: u64 = 10_000,
        /// Also use relaxed float laws, which change results only by rounding (reassociation, distribution, reciprocals).
        relaxed: bool = false,
        /// The size the cost model assumes for a symbolic dim (batch, seq).
        nominal_dim: u64 = 64,
    }
}

/// The name pipelines use.
const NAME: &str = "simplify";

/// The `simplify` pass. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct Simplify {
    /// The options.
    pub options: SimplifyOptions,
}

impl RegisteredPass for Simplify {
    type Options = SimplifyOptions;
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str = "Equality saturation (egg) over pure tensor subgraphs with algebra, layout and \
                                   matmul rules; extracts the form with the fewest FLOPs plus bytes moved";
    fn new(options: SimplifyOptions) -> Simplify {
        Simplify { options }
    }
}

/// The counter name for a runner's stop reason.
fn stop_counter(reason: &Option<StopReason>) -> &'static str {
    match reason {
        Some(StopReason::Saturated) => "stop-saturated",
        Some(StopReason::IterationLimit(_)) => "stop-iteration-limit",
        Some(StopReason::NodeLimit(_)) => "stop-node-limit",
        Some(StopReason::TimeLimit(_)) => "stop-time-limit",
        Some(StopReason::Other(_)) | None => "stop-other",
    }
}

impl Pass for Simplify {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&mut self, graph: &mut Graph, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let start = Instant::now();
        let fail = |message: String| PassError::Failed { pass: NAME.to_string(), message };
        let lifted = lift::lift(graph).map_err(fail)?;
        let nodes_before = graph.node_count();
        cx.count(NAME, "regions", lifted.regions as i64);
        cx.count(NAME, "lifted-nodes", lifted.nodes.len() as i64);
        if lifted.roots.is_empty() {
            return Ok(PassOutcome::Unchanged);
        }
        let (egraph, class_of) = lifted.to_egraph();
        let rules = rules::all(rules::RuleOptions { relaxed: self.options.relaxed });
        let runner = Runner::default()
            .with_egraph(egraph)
            .with_node_limit(self.options.node_limit)
            .with_iter_limit(self.options.iter_limit)
            .with_time_limit(Duration::from_millis(self.options.time_limit_ms))
            .run(&rules);
        cx.count(NAME, stop_counter(&runner.stop_reason), 1);
        cx.count(NAME, "iterations", runner.iterations.len() as i64);
        cx.count(NAME, "egraph-nodes", runner.egraph.total_number_of_nodes() as i64);
        cx.count(NAME, "egraph-classes", runner.egraph.number_of_classes() as i64);
        cx.count(NAME, "ill-typed-nodes", runner.egraph.analysis.failures.len() as i64);
        let mut applied: Vec<(String, usize)> = Vec::new();
        for it in &runner.iterations {
            for (rule, n) in &it.applied {
                match applied.iter_mut().find(|(r, _)| r == rule.as_str()) {
                    Some(entry) => entry.1 += n,
                    None => applied.push((rule.to_string(), *n)),
                }
            }
        }
        let egraph = &runner.egraph;
        let original = original_nodes(&lifted, egraph, &class_of);
        let extractor = Extractor::new(egraph, CostModel::new(egraph, self.options.nominal_dim, original.clone()));
        let stats = splice::splice(graph, &lifted, egraph, &class_of, |c| extractor.find_best_node(c))
            .map_err(|m| fail(format!("splicing the rewritten graph failed: {m}")))?;
        sharc_ir::verify(graph).map_err(|e| fail(format!("the rewritten graph does not verify: {e}")))?;
        cx.count(NAME, "nodes-created", stats.created as i64);
        cx.count(NAME, "nodes-removed", stats.removed as i64);
        cx.count(NAME, "values-replaced", stats.replaced as i64);
        cx.count(NAME, "nodes-before", nodes_before as i64);
        cx.count(NAME, "nodes-after", graph.node_count() as i64);
        let mut report = format!(
            "simplify: {} lifted nodes in {} regions; saturation stopped ({:?}) after {} iterations with {} e-nodes \
             in {} classes; {} nodes -> {} nodes ({} created, {} removed) in {:.3} s\n",
            lifted.nodes.len(),
            lifted.regions,
            runner.stop_reason.as_ref().map_or(StopReason::Other("not run".into()), Clone::clone),
            runner.iterations.len(),
            egraph.total_number_of_nodes(),
            egraph.number_of_classes(),
            nodes_before,
            graph.node_count(),
            stats.created,
            stats.removed,
            start.elapsed().as_secs_f64()
        );
        applied.sort();
        for (rule, n) in &applied {
            report.push_str(&format!("  rule {rule}: applied {n} times\n"));
        }
        for f in egraph.analysis.failures.iter().take(5) {
            report.push_str(&format!("  ill-typed node (a rule bug): {f}\n"));
        }
        cx.reports.entry(NAME.to_string()).or_default().push_str(&report);
        Ok(PassOutcome::from_changed(stats.changed()))
    }
}

/// The input graph's nodes in canonical form (children are canonical
/// e-classes), for the cost model's preference for the original.
fn original_nodes(lifted: &Lifted, egraph: &TensorGraph, class_of: &[Id]) -> HashSet<TensorLang> {
    lifted
        .values
        .iter()
        .map(|&(_, e)| lifted.expr[e].clone().map_children(|c| egraph.find(class_of[usize::from(c)])))
        .collect()
}

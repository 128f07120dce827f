//! The pass manager: runs a pipeline with verification and instrumentation.
//!
//! ```
//! use sharc_passes::{PassContext, PassManager, Registry};
//!
//! let mut g = sharc_ir::text::parse("graph @g(%x: f32[4]) -> (%y) {
//!   %a = Relu(%x)
//!   %b = Relu(%x)
//!   %y = Add(%a, %b)
//! }").unwrap();
//! let mut pm = PassManager::from_pipeline(&Registry::with_standard_passes(), "infer-shapes,cse").unwrap();
//! pm.instrumentation.time_passes = true;
//! let mut log = String::new();
//! let report = pm.run_with_output(&mut g, &mut PassContext::default(), &mut log).unwrap();
//! assert_eq!(report.records[1].after.compute_nodes, 2);
//! assert!(log.contains("cse"));
//! ```
//!
//! What it offers, as `mlir-opt` does:
//!
//! - **Verification** after every pass (on by default): a pass that leaves
//!   an invalid graph is reported by name with the verifier's message.
//! - **Timing** (`time_passes`): wall time per pass and in total.
//! - **IR printing** before or after chosen passes (`print_ir_before`,
//!   `print_ir_after`), or as a unified diff around every pass that changed
//!   something (`print_ir_diff`).
//! - **Bisection** (`stop_after = N`): run only the first N passes.
//! - **Statistics**: per pass, nodes, weights and unique parameters before
//!   and after, plus the counters the pass reported with
//!   [`PassContext::count`]; always in the [`RunReport`], printed with
//!   `print_statistics`.
//!
//! Instrumentation output goes to a [`fmt::Write`] (stderr in the CLI, a
//! `String` in tests).

use crate::pipeline::PipelineError;
use crate::registry::Registry;
use crate::{Pass, PassContext, PassError, PassOutcome};
use sharc_ir::{Graph, GraphStats, text, verify};
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};

/// Which passes an instrumentation option applies to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PassFilter {
    /// None.
    #[default]
    None,
    /// Every pass.
    All,
    /// Passes with these names.
    Passes(Vec<String>),
}

impl PassFilter {
    /// `all`, or a comma-separated list of pass names; empty means none.
    pub fn parse(s: &str) -> PassFilter {
        let s = s.trim();
        if s.is_empty() {
            PassFilter::None
        } else if s == "all" {
            PassFilter::All
        } else {
            PassFilter::Passes(s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect())
        }
    }

    /// True when the filter selects the pass `name`.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            PassFilter::None => false,
            PassFilter::All => true,
            PassFilter::Passes(names) => names.iter().any(|n| n == name),
        }
    }
}

/// What the pass manager checks and reports while it runs.
#[derive(Clone, Debug)]
pub struct Instrumentation {
    /// Verify the graph before the first pass and after every pass.
    pub verify: bool,
    /// Print a table of wall time per pass when done.
    pub time_passes: bool,
    /// Print the IR before these passes.
    pub print_ir_before: PassFilter,
    /// Print the IR after these passes.
    pub print_ir_after: PassFilter,
    /// Print a unified diff of the IR around each pass that changed it.
    pub print_ir_diff: bool,
    /// Print the per-pass statistics when done.
    pub print_statistics: bool,
    /// Run only the first N passes (for bisecting a failure).
    pub stop_after: Option<usize>,
}

impl Default for Instrumentation {
    fn default() -> Instrumentation {
        Instrumentation {
            verify: true,
            time_passes: false,
            print_ir_before: PassFilter::None,
            print_ir_after: PassFilter::None,
            print_ir_diff: false,
            print_statistics: false,
            stop_after: None,
        }
    }
}

/// What one pass did.
#[derive(Clone, Debug)]
pub struct PassRecord {
    /// 1-based position in the pipeline.
    pub index: usize,
    /// The pass name.
    pub name: String,
    /// Whether it changed the graph.
    pub outcome: PassOutcome,
    /// Wall time of the pass itself.
    pub duration: Duration,
    /// Wall time of the verification after it.
    pub verify_duration: Duration,
    /// Statistics of the graph before the pass.
    pub before: GraphStats,
    /// Statistics after.
    pub after: GraphStats,
    /// The counters the pass reported during this run ([`PassContext::count`]).
    pub counters: BTreeMap<String, i64>,
}

/// What a pipeline run did.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// One record per pass that ran, in order.
    pub records: Vec<PassRecord>,
    /// Wall time of the whole run, instrumentation included.
    pub total: Duration,
    /// Passes not run because of `stop_after`.
    pub skipped: Vec<String>,
}

impl RunReport {
    /// True when any pass changed the graph.
    pub fn changed(&self) -> bool {
        self.records.iter().any(|r| r.outcome == PassOutcome::Changed)
    }

    /// The `--time-passes` table.
    pub fn timing_table(&self) -> String {
        let pass_total: Duration = self.records.iter().map(|r| r.duration).sum();
        let verify_total: Duration = self.records.iter().map(|r| r.verify_duration).sum();
        let total = self.total.max(pass_total + verify_total);
        let pct = |d: Duration| if total.is_zero() { 0.0 } else { 100.0 * d.as_secs_f64() / total.as_secs_f64() };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut s = String::new();
        let _ = writeln!(s, "===- pass execution timing report -===");
        let _ = writeln!(s, "  total wall time: {:.3} ms", ms(total));
        let _ = writeln!(s, "  {:>11}  {:>6}  pass", "wall (ms)", "%");
        for r in &self.records {
            let _ = writeln!(s, "  {:>11.3}  {:>5.1}%  {}. {}", ms(r.duration), pct(r.duration), r.index, r.name);
        }
        if !verify_total.is_zero() {
            let _ = writeln!(s, "  {:>11.3}  {:>5.1}%  (verifier)", ms(verify_total), pct(verify_total));
        }
        let other = total.saturating_sub(pass_total + verify_total);
        let _ = writeln!(s, "  {:>11.3}  {:>5.1}%  (instrumentation and other)", ms(other), pct(other));
        let _ = writeln!(s, "  {:>11.3}  {:>5.1}%  total", ms(total), pct(total));
        s
    }

    /// The per-pass statistics table.
    pub fn statistics_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "===- pass statistics -===");
        for r in &self.records {
            let (b, a) = (&r.before, &r.after);
            let changed = if r.outcome == PassOutcome::Changed { "changed" } else { "unchanged" };
            let _ = writeln!(s, "{}. {} ({changed})", r.index, r.name);
            let _ = writeln!(
                s,
                "    nodes {} -> {} (compute {} -> {}), weights {} -> {}, unique params {} -> {}, unique bytes {} -> {}",
                b.nodes,
                a.nodes,
                b.compute_nodes,
                a.compute_nodes,
                b.unique_weights,
                a.unique_weights,
                b.unique_params,
                a.unique_params,
                b.unique_bytes,
                a.unique_bytes
            );
            for (k, v) in &r.counters {
                let _ = writeln!(s, "    {k} = {v}");
            }
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(s, "not run (stop-after): {}", self.skipped.join(", "));
        }
        s
    }
}

/// Why a pipeline run stopped.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The graph was invalid before any pass ran.
    #[error("the input graph is invalid: {0}")]
    InvalidInput(String),
    /// A pass failed.
    #[error("pass {index} (`{name}`) failed: {source}")]
    Pass {
        /// 1-based position.
        index: usize,
        /// The pass.
        name: String,
        /// Its error.
        source: PassError,
    },
    /// A pass left a graph the verifier rejects.
    #[error("pass {index} (`{name}`) left an invalid graph: {message}")]
    Verify {
        /// 1-based position.
        index: usize,
        /// The pass.
        name: String,
        /// The verifier's message.
        message: String,
    },
    /// Writing instrumentation output failed.
    #[error("writing pass instrumentation output failed")]
    Output(#[from] fmt::Error),
}

/// Runs passes in order. See the [module docs](self).
#[derive(Default)]
pub struct PassManager {
    passes: Vec<Box<dyn Pass>>,
    /// What to check and report.
    pub instrumentation: Instrumentation,
}

impl PassManager {
    /// An empty pass manager with default instrumentation (verification on).
    pub fn new() -> PassManager {
        PassManager::default()
    }

    /// A pass manager for pipeline text, with passes from `registry`.
    pub fn from_pipeline(registry: &Registry, pipeline: &str) -> Result<PassManager, PipelineError> {
        Ok(PassManager { passes: registry.build_str(pipeline)?, instrumentation: Instrumentation::default() })
    }

    /// Appends a pass.
    pub fn add(&mut self, pass: Box<dyn Pass>) -> &mut PassManager {
        self.passes.push(pass);
        self
    }

    /// The names of the passes, in order.
    pub fn pass_names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.name()).collect()
    }

    /// Number of passes.
    pub fn len(&self) -> usize {
        self.passes.len()
    }

    /// True when there is no pass.
    pub fn is_empty(&self) -> bool {
        self.passes.is_empty()
    }

    /// Runs the passes, discarding instrumentation output (the report still
    /// has timings and statistics).
    pub fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<RunReport, ManagerError> {
        let mut sink = String::new();
        let quiet = Instrumentation {
            time_passes: false,
            print_ir_before: PassFilter::None,
            print_ir_after: PassFilter::None,
            print_ir_diff: false,
            print_statistics: false,
            ..self.instrumentation.clone()
        };
        let saved = std::mem::replace(&mut self.instrumentation, quiet);
        let r = self.run_with_output(g, cx, &mut sink);
        self.instrumentation = saved;
        r
    }

    /// Runs the passes, writing instrumentation output to `out`.
    pub fn run_with_output(
        &mut self,
        g: &mut Graph,
        cx: &mut PassContext,
        out: &mut dyn fmt::Write,
    ) -> Result<RunReport, ManagerError> {
        let start = Instant::now();
        let ins = self.instrumentation.clone();
        if ins.verify {
            verify(g).map_err(|e| ManagerError::InvalidInput(e.to_string()))?;
        }
        let limit = ins.stop_after.unwrap_or(usize::MAX).min(self.passes.len());
        let mut report = RunReport {
            skipped: self.passes[limit..].iter().map(|p| p.name().to_string()).collect(),
            ..Default::default()
        };
        // The printed IR of the current graph, kept while it is known to be current.
        let mut current_text: Option<String> = None;
        let mut stats = g.stats();
        for (i, pass) in self.passes[..limit].iter_mut().enumerate() {
            let index = i + 1;
            let name = pass.name().to_string();
            let wants_before = ins.print_ir_before.matches(&name);
            if wants_before || ins.print_ir_diff {
                let t = current_text.get_or_insert_with(|| text::print(g));
                if wants_before {
                    writeln!(out, "// -----// IR before pass {index} `{name}` //----- //")?;
                    out.write_str(t)?;
                }
            }
            let counters_before = cx.statistics.get(&name).cloned().unwrap_or_default();
            let t0 = Instant::now();
            let result = pass.run(g, cx);
            let duration = t0.elapsed();
            let outcome = result.map_err(|source| ManagerError::Pass { index, name: name.clone(), source })?;
            let t1 = Instant::now();
            if ins.verify {
                verify(g).map_err(|e| ManagerError::Verify { index, name: name.clone(), message: e.to_string() })?;
            }
            let verify_duration = t1.elapsed();
            let after = g.stats();
            let mut counters = cx.statistics.get(&name).cloned().unwrap_or_default();
            for (k, v) in counters.iter_mut() {
                *v -= counters_before.get(k).copied().unwrap_or(0);
            }
            counters.retain(|_, v| *v != 0);

            let before_text = if outcome == PassOutcome::Changed { current_text.take() } else { current_text.clone() };
            if ins.print_ir_diff && outcome == PassOutcome::Changed {
                let old = before_text.unwrap_or_default();
                let new = current_text.insert(text::print(g));
                let diff = similar::TextDiff::from_lines(old.as_str(), new.as_str());
                let body = diff
                    .unified_diff()
                    .context_radius(3)
                    .header(&format!("before pass {index} `{name}`"), &format!("after pass {index} `{name}`"))
                    .to_string();
                writeln!(out, "// -----// IR diff of pass {index} `{name}` //----- //")?;
                if body.is_empty() {
                    writeln!(out, "(the pass reported a change, but the printed IR is the same)")?;
                } else {
                    out.write_str(&body)?;
                }
            }
            if ins.print_ir_after.matches(&name) {
                let t = current_text.get_or_insert_with(|| text::print(g));
                writeln!(out, "// -----// IR after pass {index} `{name}` //----- //")?;
                out.write_str(t)?;
            }
            report.records.push(PassRecord {
                index,
                name,
                outcome,
                duration,
                verify_duration,
                before: std::mem::replace(&mut stats, after.clone()),
                after,
                counters,
            });
        }
        report.total = start.elapsed();
        if ins.time_passes {
            out.write_str(&report.timing_table())?;
        }
        if ins.print_statistics {
            out.write_str(&report.statistics_table())?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharc_ir::{Op, ValueRef};

    const SRC: &str = "graph @g(%x: f32[batch, 4]) -> (%y) {
  %a = Relu(%x)
  %b = Relu(%x)
  %dead = Neg(%x)
  %y = Add(%a, %b)
}
";

    /// A pass that breaks the graph: it points the output at a removed node.
    struct Breaker;
    impl Pass for Breaker {
        fn name(&self) -> &'static str {
            "breaker"
        }
        fn run(&mut self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassOutcome, PassError> {
            let y = g.outputs()[0].value;
            let x = g.input_values()[0];
            let bad = g.add_op(Op::Identity, &[x], sharc_ir::Type::Unknown);
            g.set_node_input(bad.node, 0, Some(ValueRef::new(y.node, 0)));
            g.set_node_input(y.node, 0, Some(bad));
            Ok(PassOutcome::Changed)
        }
    }

    fn pm(pipeline: &str) -> PassManager {
        PassManager::from_pipeline(&Registry::with_standard_passes(), pipeline).unwrap()
    }

    #[test]
    fn statistics_and_counters_per_pass() {
        let mut g = text::parse(SRC).unwrap();
        let report = pm("cse,dce").run(&mut g, &mut PassContext::default()).unwrap();
        assert_eq!(report.records.len(), 2);
        let cse = &report.records[0];
        assert_eq!((cse.before.compute_nodes, cse.after.compute_nodes), (4, 3));
        assert_eq!(cse.counters.get("merged"), Some(&1));
        let dce = &report.records[1];
        assert_eq!((dce.before.compute_nodes, dce.after.compute_nodes), (3, 2));
        assert_eq!(dce.counters.get("nodes-removed"), Some(&1));
        let table = report.statistics_table();
        assert!(table.contains("1. cse (changed)"), "{table}");
        assert!(table.contains("nodes 5 -> 4 (compute 4 -> 3)"), "{table}");
        assert!(table.contains("merged = 1"), "{table}");
    }

    #[test]
    fn a_pass_that_breaks_the_graph_is_named() {
        let mut g = text::parse(SRC).unwrap();
        let mut m = PassManager::new();
        m.add(Box::new(Breaker));
        let e = m.run(&mut g, &mut PassContext::default()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("pass 1 (`breaker`) left an invalid graph: "), "{msg}");
        assert!(msg.contains("cycle"), "{msg}");
    }

    #[test]
    fn verification_can_be_turned_off() {
        let mut g = text::parse(SRC).unwrap();
        let mut m = PassManager::new();
        m.add(Box::new(Breaker));
        m.instrumentation.verify = false;
        assert!(m.run(&mut g, &mut PassContext::default()).is_ok());
    }

    #[test]
    fn stop_after_runs_a_prefix() {
        let mut g = text::parse(SRC).unwrap();
        let mut m = pm("cse,dce,canonicalize");
        m.instrumentation.stop_after = Some(1);
        m.instrumentation.print_statistics = true;
        let mut log = String::new();
        let report = m.run_with_output(&mut g, &mut PassContext::default(), &mut log).unwrap();
        assert_eq!(report.records.len(), 1);
        assert_eq!(report.skipped, ["dce", "canonicalize"]);
        assert!(log.contains("not run (stop-after): dce, canonicalize"), "{log}");
        assert!(text::print(&g).contains("%dead = Neg(%x)"));
    }

    #[test]
    fn prints_ir_before_after_and_diffs() {
        let mut g = text::parse(SRC).unwrap();
        let mut m = pm("cse,dce");
        m.instrumentation.print_ir_before = PassFilter::parse("dce");
        m.instrumentation.print_ir_after = PassFilter::All;
        m.instrumentation.print_ir_diff = true;
        let mut log = String::new();
        m.run_with_output(&mut g, &mut PassContext::default(), &mut log).unwrap();
        assert!(!log.contains("IR before pass 1"), "{log}");
        assert!(log.contains("// -----// IR before pass 2 `dce` //----- //"), "{log}");
        assert!(log.contains("// -----// IR after pass 1 `cse` //----- //"), "{log}");
        assert!(log.contains("--- before pass 1 `cse`\n+++ after pass 1 `cse`\n"), "{log}");
        assert!(log.contains("-  %b = Relu(%x)\n"), "{log}");
        assert!(log.contains("-  %y = Add(%a, %b)\n+  %y = Add(%a, %a)\n"), "{log}");
        assert!(log.contains("-  %dead = Neg(%x)\n"), "{log}");
    }

    #[test]
    fn time_passes_prints_a_table() {
        let mut g = text::parse(SRC).unwrap();
        let mut m = pm("cse,dce");
        m.instrumentation.time_passes = true;
        let mut log = String::new();
        m.run_with_output(&mut g, &mut PassContext::default(), &mut log).unwrap();
        assert!(log.contains("pass execution timing report"), "{log}");
        assert!(log.contains("1. cse\n"), "{log}");
        assert!(log.contains("2. dce\n"), "{log}");
        assert!(log.contains("(verifier)"), "{log}");
        assert!(log.trim_end().ends_with("total"), "{log}");
    }

    #[test]
    fn invalid_input_is_reported_before_any_pass() {
        let mut g = text::parse(SRC).unwrap();
        let x = g.input_values()[0];
        let y = g.outputs()[0].value;
        g.set_node_input(y.node, 5, Some(ValueRef::new(x.node, 3)));
        let e = pm("cse").run(&mut g, &mut PassContext::default()).unwrap_err();
        assert!(e.to_string().starts_with("the input graph is invalid"), "{e}");
    }
}

//! The [`Pass`] trait and what a pass sees while it runs.

use sharc_ir::{Evaluator, Graph, Value};
use std::collections::BTreeMap;

/// A transformation of a graph.
///
/// A pass changes the graph in place and says whether it changed anything.
/// The pass manager verifies the graph after every pass (so a pass that
/// breaks an invariant is caught and named), times it, and records
/// statistics. Passes are constructed from typed options by the registry,
/// which is how pipelines such as `infer-shapes,cse,dce` name them.
pub trait Pass {
    /// The name pipelines use (`cse`, `tie-layers`); kebab-case.
    fn name(&self) -> &'static str;

    /// Runs the pass.
    fn run(&mut self, graph: &mut Graph, cx: &mut PassContext) -> Result<PassOutcome, PassError>;
}

/// Whether a pass changed the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassOutcome {
    /// Nothing changed; later instrumentation may skip diffs.
    Unchanged,
    /// Something changed.
    Changed,
}

impl PassOutcome {
    /// `Changed` when `changed` is true.
    pub fn from_changed(changed: bool) -> PassOutcome {
        if changed { PassOutcome::Changed } else { PassOutcome::Unchanged }
    }
}

/// What a pass may use and report while it runs.
#[derive(Default)]
pub struct PassContext<'a> {
    /// Runs graphs, for passes that need activations (calibration) or
    /// constant values. Passes that need one and find none fail clearly.
    pub evaluator: Option<&'a dyn Evaluator>,
    /// Calibration data for passes that measure activations (CRaSh's layer
    /// similarity, FoldGPT's block importance): batches of graph inputs, one
    /// value per graph input, in input order.
    pub calibration: Option<&'a [Vec<Value>]>,
    /// Counters a pass wants to report (`nodes-removed = 12`), by pass name.
    pub statistics: BTreeMap<String, BTreeMap<String, i64>>,
    /// Human-readable reports passes produce (compression reports), by pass name.
    pub reports: BTreeMap<String, String>,
}

impl<'a> PassContext<'a> {
    /// A context with an evaluator.
    pub fn with_evaluator(evaluator: &'a dyn Evaluator) -> PassContext<'a> {
        PassContext { evaluator: Some(evaluator), ..Default::default() }
    }

    /// The evaluator and the (non-empty) calibration batches, for a pass
    /// that must run the model; `needs` says what for, in the error a user
    /// sees when either is missing (`"block influence"`).
    pub fn measuring(&self, pass: &str, needs: &str) -> Result<(&'a dyn Evaluator, &'a [Vec<Value>]), PassError> {
        match (self.evaluator, self.calibration) {
            (Some(ev), Some(batches)) if !batches.is_empty() => Ok((ev, batches)),
            _ => Err(PassError::Missing {
                pass: pass.to_string(),
                message: format!(
                    "{needs} needs calibration data and an evaluator (give --calib to sharc opt or sharc compress)"
                ),
            }),
        }
    }

    /// Adds `delta` to a named counter of a pass.
    pub fn count(&mut self, pass: &str, counter: &str, delta: i64) {
        *self.statistics.entry(pass.to_string()).or_default().entry(counter.to_string()).or_default() += delta;
    }
}

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The pass refuses this graph (for example, blocks that do not match),
    /// with a message for the user.
    #[error("{pass}: {message}")]
    Refused { pass: String, message: String },
    /// The pass needs something the context does not provide.
    #[error("{pass}: {message}")]
    Missing { pass: String, message: String },
    /// Anything else, with a message naming the node involved.
    #[error("{pass}: {message}")]
    Failed { pass: String, message: String },
}

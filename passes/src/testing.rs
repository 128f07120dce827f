//! Snapshot testing of passes: run a pipeline on IR text, get IR text back.
//!
//! Designed for [insta](https://insta.rs):
//!
//! ```
//! use sharc_passes::testing::run_pipeline;
//!
//! let out = run_pipeline(
//!     "graph @g(%x: f32[4]) -> (%y) {
//!        %a = Relu(%x)
//!        %b = Relu(%x)
//!        %y = Add(%a, %b)
//!      }",
//!     "cse",
//! );
//! // In a test: insta::assert_snapshot!(out);
//! assert!(out.contains("%y = Add(%a, %a)"));
//! ```
//!
//! The input is parsed with [`sharc_ir::text::parse`], so weights written
//! as `weight @w : f32[4, 4]` get deterministic synthetic data and weights
//! written `= [..]` get exact data. The output is the printed graph, which
//! is deterministic, so snapshots are stable and readable.
//!
//! - [`run_pipeline`] returns the printed result; [`run_pipeline_diff`]
//!   returns a unified diff from the input to the result, which keeps
//!   snapshots of large inputs short.
//! - Both panic with a readable message (a caret under the bad part of the
//!   IR text or the pipeline) when something fails, which fails the test;
//!   the `try_` forms return the error instead, for tests of failures.
//! - [`PipelineTest`] adds a custom [`Registry`] (for your own passes) and a
//!   numeric check: it runs the reference interpreter on the graph before
//!   and after and fails when any output moves by more than a tolerance.

use crate::PassContext;
use crate::manager::{ManagerError, PassManager, RunReport};
use crate::pipeline::PipelineError;
use crate::registry::Registry;
use sharc_ir::{DType, Dim, EvalError, Evaluator, Graph, ParseError, Tensor, Type, Value};
use std::collections::BTreeMap;
use std::fmt;

/// Why a pipeline test could not produce its output.
#[derive(Debug)]
pub enum TestError {
    /// The IR text does not parse.
    Parse(ParseError),
    /// The pipeline is malformed or names an unknown pass or option.
    Pipeline(PipelineError),
    /// A pass failed or broke the graph.
    Run(ManagerError),
    /// The interpreter could not run the graph before or after the pipeline.
    Eval {
        /// `before` or `after`.
        stage: &'static str,
        /// The interpreter's error.
        source: EvalError,
    },
    /// An output changed by more than the tolerance.
    Numerics(String),
}

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestError::Parse(e) => write!(f, "the IR text does not parse:\n{e}"),
            TestError::Pipeline(e) => write!(f, "bad pipeline:\n{e}"),
            TestError::Run(e) => write!(f, "{e}"),
            TestError::Eval { stage, source } => {
                write!(f, "the interpreter cannot run the graph {stage} the pipeline: {source}")
            }
            TestError::Numerics(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for TestError {}

/// The result of a pipeline test.
#[derive(Debug)]
pub struct Outcome {
    /// The input, printed (normalised).
    pub before: String,
    /// The result, printed.
    pub after: String,
    /// The resulting graph.
    pub graph: Graph,
    /// Timings and statistics of the run.
    pub report: RunReport,
    /// Per graph output, the largest absolute difference the numeric check
    /// measured (empty when it was off).
    pub max_abs_diff: Vec<(String, f64)>,
}

impl Outcome {
    /// A unified diff from `before` to `after`; `(no change)` when equal.
    pub fn diff(&self) -> String {
        diff_text(&self.before, &self.after)
    }
}

/// A unified diff of two printed graphs, as the snapshot helpers show it.
pub fn diff_text(before: &str, after: &str) -> String {
    if before == after {
        return "(no change)\n".to_string();
    }
    similar::TextDiff::from_lines(before, after).unified_diff().context_radius(3).header("before", "after").to_string()
}

/// Options for running a pipeline in a test. See the [module docs](self).
pub struct PipelineTest<'r> {
    pipeline: String,
    registry: Option<&'r Registry>,
    tolerance: Option<f64>,
    dims: BTreeMap<String, usize>,
    verify: bool,
}

impl<'r> PipelineTest<'r> {
    /// A test of `pipeline` with the standard passes, verification on and
    /// no numeric check.
    pub fn new(pipeline: &str) -> PipelineTest<'r> {
        PipelineTest {
            pipeline: pipeline.to_string(),
            registry: None,
            tolerance: None,
            dims: BTreeMap::new(),
            verify: true,
        }
    }

    /// Uses `registry` (with your own passes) instead of the standard one.
    pub fn registry(mut self, registry: &'r Registry) -> PipelineTest<'r> {
        self.registry = Some(registry);
        self
    }

    /// Also runs the interpreter before and after on generated inputs and
    /// fails when an output differs by more than `tolerance` (absolute).
    /// Inputs are deterministic: floats in [-2, 2), integers in [0, 4),
    /// symbolic dims 3 unless [`PipelineTest::dim`] says otherwise.
    pub fn check_numerics(mut self, tolerance: f64) -> PipelineTest<'r> {
        self.tolerance = Some(tolerance);
        self
    }

    /// The size of a symbolic dim in the generated inputs.
    pub fn dim(mut self, symbol: &str, size: usize) -> PipelineTest<'r> {
        self.dims.insert(symbol.to_string(), size);
        self
    }

    /// Turns the verifier off (to test what a broken pass produces).
    pub fn no_verify(mut self) -> PipelineTest<'r> {
        self.verify = false;
        self
    }

    /// Runs on IR text.
    pub fn run(&self, src: &str) -> Result<Outcome, TestError> {
        let g = sharc_ir::text::parse(src).map_err(TestError::Parse)?;
        self.run_graph(g)
    }

    /// Runs on a graph.
    pub fn run_graph(&self, mut g: Graph) -> Result<Outcome, TestError> {
        let standard;
        let registry = match self.registry {
            Some(r) => r,
            None => {
                standard = Registry::with_standard_passes();
                &standard
            }
        };
        let mut pm = PassManager::from_pipeline(registry, &self.pipeline).map_err(TestError::Pipeline)?;
        pm.instrumentation.verify = self.verify;
        let before = sharc_ir::print(&g);
        let original = self.tolerance.map(|_| g.clone());
        let report = pm.run(&mut g, &mut PassContext::default()).map_err(TestError::Run)?;
        let after = sharc_ir::print(&g);
        let max_abs_diff = match (original, self.tolerance) {
            (Some(orig), Some(tol)) => compare_outputs(&orig, &g, tol, &self.dims)?,
            _ => Vec::new(),
        };
        Ok(Outcome { before, after, graph: g, report, max_abs_diff })
    }
}

/// Runs `pipeline` (standard passes) on IR text and returns the printed
/// result. Panics with a readable message on any error.
pub fn run_pipeline(src: &str, pipeline: &str) -> String {
    try_run_pipeline(src, pipeline).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`run_pipeline`], returning errors.
pub fn try_run_pipeline(src: &str, pipeline: &str) -> Result<String, TestError> {
    PipelineTest::new(pipeline).run(src).map(|o| o.after)
}

/// Runs `pipeline` (standard passes) on IR text and returns a unified diff
/// from the printed input to the printed result (`(no change)` when the
/// pipeline changed nothing). Panics with a readable message on any error.
pub fn run_pipeline_diff(src: &str, pipeline: &str) -> String {
    try_run_pipeline_diff(src, pipeline).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`run_pipeline_diff`], returning errors.
pub fn try_run_pipeline_diff(src: &str, pipeline: &str) -> Result<String, TestError> {
    PipelineTest::new(pipeline).run(src).map(|o| o.diff())
}

/// Runs `pipeline` with passes from `registry` (your own passes) and
/// returns the printed result. Panics with a readable message on any error.
pub fn run_pipeline_with(registry: &Registry, src: &str, pipeline: &str) -> String {
    PipelineTest::new(pipeline).registry(registry).run(src).map(|o| o.after).unwrap_or_else(|e| panic!("{e}"))
}

/// The IR text as the printer writes it (parse, then print): what a
/// pipeline that changes nothing returns.
pub fn normalize(src: &str) -> String {
    match sharc_ir::text::parse(src) {
        Ok(g) => sharc_ir::print(&g),
        Err(e) => panic!("the IR text does not parse:\n{e}"),
    }
}

/// Runs both graphs on the same generated inputs and compares outputs.
fn compare_outputs(
    before: &Graph,
    after: &Graph,
    tolerance: f64,
    dims: &BTreeMap<String, usize>,
) -> Result<Vec<(String, f64)>, TestError> {
    let inputs = generated_inputs(before, dims);
    let interp = sharc_interp::Interpreter::new();
    let want = interp.evaluate(before, &inputs).map_err(|source| TestError::Eval { stage: "before", source })?;
    let got = interp.evaluate(after, &inputs).map_err(|source| TestError::Eval { stage: "after", source })?;
    let mut out = Vec::new();
    for ((o, w), g) in before.outputs().iter().zip(&want).zip(&got) {
        let diff = value_diff(w, g).ok_or_else(|| {
            TestError::Numerics(format!(
                "output '{}' changed kind or shape: {} before, {} after",
                o.name,
                w.describe(),
                g.describe()
            ))
        })?;
        if diff > tolerance {
            return Err(TestError::Numerics(format!(
                "output '{}' differs by {diff:.3e} after the pipeline (tolerance {tolerance:.1e})",
                o.name
            )));
        }
        out.push((o.name.clone(), diff));
    }
    Ok(out)
}

/// Largest absolute difference of two values, `None` when their shapes or
/// kinds differ. NaN equals NaN; any other mismatch involving NaN is infinite.
fn value_diff(a: &Value, b: &Value) -> Option<f64> {
    match (a, b) {
        (Value::Tensor(x), Value::Tensor(y)) => {
            if x.shape() != y.shape() || x.dtype() != y.dtype() {
                return None;
            }
            match (x.to_f64_vec(), y.to_f64_vec()) {
                (Some(p), Some(q)) => Some(p.iter().zip(&q).fold(0.0, |m: f64, (u, v)| {
                    let d = if u.is_nan() && v.is_nan() || u == v { 0.0 } else { (u - v).abs() };
                    m.max(if d.is_nan() { f64::INFINITY } else { d })
                })),
                _ => Some(if x == y { 0.0 } else { f64::INFINITY }),
            }
        }
        (Value::Sequence(p), Value::Sequence(q)) if p.len() == q.len() => {
            p.iter().zip(q).map(|(u, v)| value_diff(u, v)).try_fold(0.0, |m: f64, d| d.map(|d| m.max(d)))
        }
        (Value::Optional(None), Value::Optional(None)) => Some(0.0),
        (Value::Optional(Some(p)), Value::Optional(Some(q))) => value_diff(p, q),
        _ => None,
    }
}

/// Deterministic inputs for a graph: a SplitMix64 stream per input.
pub fn generated_inputs(g: &Graph, dims: &BTreeMap<String, usize>) -> Vec<Value> {
    g.input_values()
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let Type::Tensor(tt) = g.value_type(v) else {
                return Value::Tensor(Tensor::scalar(0.0f32));
            };
            let shape: Vec<usize> = tt
                .shape
                .as_ref()
                .map(|s| {
                    s.dims()
                        .iter()
                        .map(|d| match d {
                            Dim::Fixed(n) => *n as usize,
                            Dim::Sym(s) => dims.get(s).copied().unwrap_or(3),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let n: usize = shape.iter().product();
            let mut state = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1);
            let mut next = move || {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^ (z >> 31)
            };
            let unit = |x: u64| (x >> 40) as f64 / (1u64 << 24) as f64;
            let t = match tt.dtype {
                DType::F32 => Tensor::from_vec(&shape, (0..n).map(|_| (unit(next()) * 4.0 - 2.0) as f32).collect()),
                DType::F64 => Tensor::from_vec(&shape, (0..n).map(|_| unit(next()) * 4.0 - 2.0).collect()),
                DType::I64 => Tensor::from_vec(&shape, (0..n).map(|_| (next() % 4) as i64).collect()),
                DType::I32 => Tensor::from_vec(&shape, (0..n).map(|_| (next() % 4) as i32).collect()),
                DType::Bool => Tensor::from_vec(&shape, (0..n).map(|_| next() % 2 == 1).collect()),
                d => Tensor::zeros(d, &shape),
            };
            Value::Tensor(t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "graph @g(%x: f32[batch, 4]) -> (%y) {
  %a = Relu(%x)
  %b = Relu(%x)
  %y = Add(%a, %b)
}";

    #[test]
    fn diff_shows_only_what_changed() {
        let d = run_pipeline_diff(SRC, "cse");
        assert_eq!(
            d,
            "--- before\n+++ after\n@@ -1,5 +1,4 @@\n graph @g(%x: f32[batch, 4]) -> (%y) {\n   %a = Relu(%x)\n-  %b = Relu(%x)\n-  %y = Add(%a, %b)\n+  %y = Add(%a, %a)\n }\n"
        );
        assert_eq!(run_pipeline_diff(SRC, "dce"), "(no change)\n");
    }

    #[test]
    fn errors_are_readable() {
        let e = try_run_pipeline("graph @g(%x) -> (%y) { %y = Relu(%q }", "cse").unwrap_err();
        assert!(matches!(e, TestError::Parse(_)), "{e}");
        let e = try_run_pipeline(SRC, "cse,dcee").unwrap_err();
        assert!(e.to_string().contains("did you mean `dce`?"), "{e}");
    }

    #[test]
    #[should_panic(expected = "unknown pass `nope`")]
    fn run_pipeline_panics_with_the_error() {
        run_pipeline(SRC, "nope");
    }

    #[test]
    fn numeric_check_runs_both_graphs() {
        let o = PipelineTest::new("cse").check_numerics(0.0).dim("batch", 2).run(SRC).unwrap();
        assert_eq!(o.max_abs_diff, vec![("y".to_string(), 0.0)]);
    }

    #[test]
    fn numeric_check_catches_a_wrong_pass() {
        use crate::{Pass, PassError, PassOutcome, RegisteredPass, options::NoOptions};
        /// Replaces every Relu by Abs: wrong on negative inputs.
        struct Wrong;
        impl Pass for Wrong {
            fn name(&self) -> &'static str {
                "wrong"
            }
            fn run(&mut self, g: &mut Graph, _: &mut PassContext) -> Result<PassOutcome, PassError> {
                for id in g.node_ids().collect::<Vec<_>>() {
                    if g.node(id).op == sharc_ir::Op::Unary(sharc_ir::UnaryOp::Relu) {
                        g.node_mut(id).op = sharc_ir::Op::Unary(sharc_ir::UnaryOp::Abs);
                    }
                }
                Ok(PassOutcome::Changed)
            }
        }
        impl RegisteredPass for Wrong {
            type Options = NoOptions;
            const NAME: &'static str = "wrong";
            const SUMMARY: &'static str = "wrong";
            fn new(_: NoOptions) -> Wrong {
                Wrong
            }
        }
        let mut r = Registry::new();
        r.register::<Wrong>();
        let e = PipelineTest::new("wrong").registry(&r).check_numerics(1e-6).run(SRC).unwrap_err();
        assert!(e.to_string().starts_with("output 'y' differs by"), "{e}");
    }
}

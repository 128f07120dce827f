//! Backend selection for `sharc run`, `sharc bench` and `sharc compile`.
//!
//! This is the one place that maps `--backend NAME` to code, so that the
//! subcommands stay backend-agnostic: adding a backend (the MLIR one) means
//! one variant of [`Backend`] and one arm in each method below.

use sharc::Error;
use sharc::ir::{EvalError, Evaluator, Graph, Tensor, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The backends a model can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The reference interpreter: slow, obviously right, runs every op.
    Interp,
    /// Code compiled with Cranelift for the input shapes: fused kernels,
    /// fast GEMM, a planned arena.
    Cranelift,
    /// Code lowered through MLIR (linalg) and LLVM, run by MLIR's
    /// ExecutionEngine; needs a build with `--features mlir`.
    Mlir,
}

/// Settings that compiled backends honour; the interpreter ignores them.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Worker threads (`None`: one per core).
    pub threads: Option<usize>,
    /// Fuse elementwise and reduction chains into kernels.
    pub fuse: bool,
    /// Use the Cranelift-generated GEMM instead of the `gemm` crate.
    pub cranelift_gemm: bool,
    /// Record the time of every step (see [`Prepared::profile`]).
    pub profile: bool,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning { threads: None, fuse: true, cranelift_gemm: false, profile: false }
    }
}

/// One line of a profile: what ran, how often, and for how long in total.
pub struct ProfileLine {
    pub label: String,
    pub calls: u64,
    pub total: Duration,
}

/// A model made ready to run on inputs of one set of shapes.
pub enum Prepared<'g> {
    /// The interpreter walks the graph on every run.
    Interp { graph: &'g Graph, interp: sharc::interp::Interpreter },
    /// A compiled plan.
    Cranelift(Arc<sharc_cranelift::Compiled>),
    /// Any other backend behind the `Evaluator` trait (MLIR).
    Evaluator { graph: &'g Graph, ev: Box<dyn sharc::ir::Evaluator> },
}

fn tensors_of(inputs: &[Value], backend: &str) -> Result<Vec<Tensor>, EvalError> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_tensor().cloned().ok_or_else(|| {
                EvalError::unsupported(format!(
                    "input {i} is a {}; the {backend} backend takes tensor inputs only",
                    v.describe()
                ))
            })
        })
        .collect()
}

impl Backend {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Interp => "interp",
            Backend::Cranelift => "cranelift",
            Backend::Mlir => "mlir",
        }
    }

    /// Prepares `graph` for inputs shaped like `inputs` (compiling it, for a
    /// compiled backend).
    pub fn prepare<'g>(self, graph: &'g Graph, inputs: &[Value], tuning: &Tuning) -> Result<Prepared<'g>, EvalError> {
        match self {
            Backend::Interp => Ok(Prepared::Interp { graph, interp: sharc::interp::Interpreter::new() }),
            Backend::Cranelift => {
                let opts = sharc_cranelift::CompileOptions {
                    threads: tuning.threads,
                    fuse: tuning.fuse,
                    gemm: if tuning.cranelift_gemm {
                        sharc_cranelift::GemmImpl::Cranelift
                    } else {
                        sharc_cranelift::GemmImpl::Crate
                    },
                    profile: tuning.profile,
                    ..Default::default()
                };
                let ev = sharc_cranelift::CraneliftEvaluator::new(opts);
                let compiled = ev.prepare(graph, &tensors_of(inputs, self.name())?)?;
                Ok(Prepared::Cranelift(compiled))
            }
            Backend::Mlir => {
                let ev = super::mlir::evaluator().map_err(|e| EvalError::new(e.to_string()))?;
                Ok(Prepared::Evaluator { graph, ev })
            }
        }
    }

    /// Compiles `graph` to an object file with a C entry point
    /// `<prefix>_run` and its header, specialised to `dims`.
    pub fn compile_object(
        self,
        graph: &Graph,
        dims: &BTreeMap<String, usize>,
        prefix: &str,
        model: &Path,
    ) -> Result<sharc_cranelift::aot::ObjectOutput, Error> {
        match self {
            Backend::Interp => {
                Err(Error::Usage("the interpreter produces no native code; use --backend cranelift".into()))
            }
            Backend::Mlir => Err(Error::Usage(
                "the MLIR backend writes MLIR or PTX, not object files: use `sharc compile --backend mlir \
                 [--target cuda] -o model.mlir|model.ptx`"
                    .into(),
            )),
            Backend::Cranelift => {
                let opts = sharc_cranelift::CompileOptions { dims: dims.clone(), ..Default::default() };
                sharc_cranelift::aot::compile_object(graph, &opts, prefix)
                    .map_err(|e| Error::Usage(format!("{}: {e}", model.display())))
            }
        }
    }
}

impl Prepared<'_> {
    /// Runs the model.
    pub fn run(&self, inputs: &[Value]) -> Result<Vec<Value>, EvalError> {
        match self {
            Prepared::Interp { graph, interp } => interp.evaluate(graph, inputs),
            Prepared::Evaluator { graph, ev } => ev.evaluate(graph, inputs),
            Prepared::Cranelift(c) => {
                Ok(c.run(&tensors_of(inputs, "cranelift")?)?.into_iter().map(Value::Tensor).collect())
            }
        }
    }

    /// Lines describing what compilation made of the model (empty for the
    /// interpreter).
    pub fn describe(&self) -> Vec<String> {
        match self {
            Prepared::Interp { .. } | Prepared::Evaluator { .. } => Vec::new(),
            Prepared::Cranelift(c) => {
                let st = c.stats();
                let mut lines = vec![format!(
                    "compiled in {:.1} ms: {} compute nodes: {} folded, {} views, {} fused into {} kernels ({} distinct), {} matmuls, {} other native, {} on the interpreter",
                    c.compile_time().as_secs_f64() * 1e3,
                    st.compute_nodes,
                    st.folded_nodes,
                    st.view_nodes,
                    st.fused_nodes,
                    st.kernels,
                    c.distinct_kernels(),
                    st.matmuls,
                    st.other_native,
                    st.fallback_nodes
                )];
                if !st.fallback_ops.is_empty() {
                    let fb: Vec<String> = st.fallback_ops.iter().map(|(o, n)| format!("{o} {n}")).collect();
                    lines.push(format!("interpreted ops: {}", fb.join(", ")));
                }
                lines.push(format!(
                    "arena: {:.2} MB (without reuse {:.2} MB)",
                    st.arena_bytes as f64 / 1e6,
                    st.arena_bytes_unshared as f64 / 1e6
                ));
                lines
            }
        }
    }

    /// Facts for a JSON report (empty for the interpreter).
    pub fn facts(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        if let Prepared::Cranelift(c) = self {
            let st = c.stats();
            m.insert("compile_ms".into(), (c.compile_time().as_secs_f64() * 1e3).into());
            m.insert("arena_bytes".into(), st.arena_bytes.into());
            m.insert("fallback_nodes".into(), st.fallback_nodes.into());
            m.insert("fused_nodes".into(), st.fused_nodes.into());
            m.insert("kernels".into(), st.kernels.into());
            m.insert("matmuls".into(), st.matmuls.into());
        }
        m
    }

    /// Time per kind of step over all runs so far, largest first (empty
    /// unless prepared with [`Tuning::profile`] on a compiled backend).
    pub fn profile(&self) -> Vec<ProfileLine> {
        match self {
            Prepared::Interp { .. } | Prepared::Evaluator { .. } => Vec::new(),
            Prepared::Cranelift(c) => c
                .profile()
                .into_iter()
                .map(|e| ProfileLine { label: e.label, calls: e.calls, total: e.total })
                .collect(),
        }
    }
}

//! Backend selection for `sharc run`, `sharc bench` and `sharc compile`.
//!
//! This is the one place that maps `--backend NAME` (and `--target`) to
//! code, so that the subcommands stay backend-agnostic: adding a backend (the
//! MLIR one) means one variant of [`Backend`] and one arm in each method
//! below.

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

/// Where a backend runs the model. Only the MLIR backend has a choice: the
/// interpreter and Cranelift run on the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The CPU.
    #[default]
    Cpu,
    /// An NVIDIA GPU through the CUDA driver (needs a build with
    /// `--features cuda`, a GPU of compute capability 8.0 or newer and its
    /// driver; no CUDA toolkit).
    Cuda,
}

impl Target {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Cuda => "cuda",
        }
    }
}

/// Settings that compiled backends honour; the interpreter ignores them.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Worker threads (`None`: one per core).
    pub threads: Option<usize>,
    /// Fuse elementwise and reduction chains into kernels.
    pub fuse: bool,
    /// Which GEMM the Cranelift backend runs matrix products on.
    pub gemm: sharc_cranelift::GemmImpl,
    /// Record the time of every step (see [`Prepared::profile`]).
    pub profile: bool,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning { threads: None, fuse: true, gemm: sharc_cranelift::GemmImpl::default(), profile: false }
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
    /// Code compiled by MLIR for the CPU or a GPU.
    #[cfg(feature = "mlir")]
    Mlir(MlirPrepared),
}

/// A model compiled by the MLIR backend. Running needs `&mut` (the compiled
/// code reuses its buffers), hence the `RefCell`: `Prepared::run` takes
/// `&self`.
#[cfg(feature = "mlir")]
pub struct MlirPrepared {
    exe: std::cell::RefCell<MlirExe>,
    compile_time: Duration,
}

#[cfg(feature = "mlir")]
enum MlirExe {
    Cpu(sharc::mlir::CpuExecutable),
    #[cfg(feature = "cuda")]
    Gpu(sharc::mlir::cuda::GpuExecutable),
}

/// Compiles `graph` with MLIR for the shapes of `inputs`, on `target`.
#[cfg(feature = "mlir")]
fn mlir_prepare(graph: &Graph, inputs: &[Tensor], target: Target) -> Result<MlirPrepared, EvalError> {
    use sharc::mlir::MlirError;
    let start = std::time::Instant::now();
    // What the backend rejects before MLIR sees it is unsupported; MLIR
    // failing, or the device, is an error.
    let err = |e: MlirError| match e {
        MlirError::Unsupported { .. } | MlirError::MissingDim { .. } | MlirError::Graph(_) => {
            EvalError::unsupported(e.to_string())
        }
        other => EvalError::new(other.to_string()),
    };
    let dims = sharc::mlir::compile::dims_from_inputs(graph, inputs).map_err(err)?;
    let lowered = sharc::mlir::lower_graph(graph, &dims).map_err(err)?;
    let exe = match target {
        Target::Cpu => MlirExe::Cpu(sharc::mlir::CpuExecutable::new(graph, &lowered, 3).map_err(err)?),
        #[cfg(feature = "cuda")]
        Target::Cuda => MlirExe::Gpu(sharc::mlir::cuda::GpuExecutable::cuda(graph, &lowered).map_err(err)?),
        #[cfg(not(feature = "cuda"))]
        Target::Cuda => {
            return Err(EvalError::new(
                "this sharc was built without the CUDA runner: rebuild with `--features cuda` \
                 (LLVM/MLIR 22 needed to build; CUDA is loaded at run time)",
            ));
        }
    };
    Ok(MlirPrepared { exe: std::cell::RefCell::new(exe), compile_time: start.elapsed() })
}

#[cfg(feature = "mlir")]
impl MlirPrepared {
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EvalError> {
        let mut exe = self.exe.try_borrow_mut().map_err(|_| EvalError::new("the compiled model is already running"))?;
        let out = match &mut *exe {
            MlirExe::Cpu(e) => e.run(inputs),
            #[cfg(feature = "cuda")]
            MlirExe::Gpu(e) => e.run(inputs),
        };
        out.map_err(|e| EvalError::new(e.to_string()))
    }

    fn describe(&self) -> Vec<String> {
        let ms = self.compile_time.as_secs_f64() * 1e3;
        match &*self.exe.borrow() {
            MlirExe::Cpu(e) => {
                vec![format!("compiled with MLIR for the CPU in {ms:.1} ms: {} loop nests after fusion", e.kernels)]
            }
            #[cfg(feature = "cuda")]
            MlirExe::Gpu(e) => vec![format!(
                "compiled with MLIR for {} ({}) in {ms:.1} ms: {} kernels",
                e.device,
                e.chip,
                e.kernels.len()
            )],
        }
    }

    fn facts(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("compile_ms".into(), (self.compile_time.as_secs_f64() * 1e3).into());
        let kernels = match &*self.exe.borrow() {
            MlirExe::Cpu(e) => e.kernels,
            #[cfg(feature = "cuda")]
            MlirExe::Gpu(e) => {
                m.insert("device".into(), e.device.clone().into());
                e.kernels.len()
            }
        };
        m.insert("kernels".into(), kernels.into());
        m
    }
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
    /// compiled backend), to run on the CPU.
    pub fn prepare<'g>(self, graph: &'g Graph, inputs: &[Value], tuning: &Tuning) -> Result<Prepared<'g>, EvalError> {
        self.prepare_on(Target::Cpu, graph, inputs, tuning)
    }

    /// Like [`Backend::prepare`], to run on `target`.
    pub fn prepare_on<'g>(
        self,
        target: Target,
        graph: &'g Graph,
        inputs: &[Value],
        tuning: &Tuning,
    ) -> Result<Prepared<'g>, EvalError> {
        if target != Target::Cpu && self != Backend::Mlir {
            // A usage error, not an unsupported op: no hint about ops.
            return Err(EvalError::new(format!(
                "the {} backend runs on the CPU only; --target {} needs --backend mlir",
                self.name(),
                target.name()
            )));
        }
        match self {
            Backend::Interp => Ok(Prepared::Interp { graph, interp: sharc::interp::Interpreter::new() }),
            Backend::Cranelift => {
                let opts = sharc_cranelift::CompileOptions {
                    threads: tuning.threads,
                    fuse: tuning.fuse,
                    gemm: tuning.gemm,
                    profile: tuning.profile,
                    ..Default::default()
                };
                let ev = sharc_cranelift::CraneliftEvaluator::new(opts);
                let compiled = ev.prepare(graph, &tensors_of(inputs, self.name())?)?;
                Ok(Prepared::Cranelift(compiled))
            }
            #[cfg(feature = "mlir")]
            Backend::Mlir => Ok(Prepared::Mlir(mlir_prepare(graph, &tensors_of(inputs, self.name())?, target)?)),
            #[cfg(not(feature = "mlir"))]
            Backend::Mlir => {
                let _ = target;
                Err(EvalError::new(super::mlir::not_built().to_string()))
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
            #[cfg(feature = "mlir")]
            Prepared::Mlir(m) => Ok(m.run(&tensors_of(inputs, "mlir")?)?.into_iter().map(Value::Tensor).collect()),
            Prepared::Cranelift(c) => {
                Ok(c.run(&tensors_of(inputs, "cranelift")?)?.into_iter().map(Value::Tensor).collect())
            }
        }
    }

    /// Lines describing what compilation made of the model (empty for the
    /// interpreter).
    pub fn describe(&self) -> Vec<String> {
        match self {
            Prepared::Interp { .. } => Vec::new(),
            #[cfg(feature = "mlir")]
            Prepared::Mlir(m) => m.describe(),
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
                    "arena: {:.2} MB (without reuse {:.2} MB); weights packed for the products: {:.2} MB",
                    st.arena_bytes as f64 / 1e6,
                    st.arena_bytes_unshared as f64 / 1e6,
                    c.packed_weight_bytes() as f64 / 1e6
                ));
                lines
            }
        }
    }

    /// Facts for a JSON report (empty for the interpreter).
    pub fn facts(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        #[cfg(feature = "mlir")]
        if let Prepared::Mlir(p) = self {
            return p.facts();
        }
        if let Prepared::Cranelift(c) = self {
            let st = c.stats();
            m.insert("compile_ms".into(), (c.compile_time().as_secs_f64() * 1e3).into());
            m.insert("arena_bytes".into(), st.arena_bytes.into());
            m.insert("packed_weight_bytes".into(), c.packed_weight_bytes().into());
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
            Prepared::Interp { .. } => Vec::new(),
            #[cfg(feature = "mlir")]
            Prepared::Mlir(_) => Vec::new(),
            Prepared::Cranelift(c) => c
                .profile()
                .into_iter()
                .map(|e| ProfileLine { label: e.label, calls: e.calls, total: e.total })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `relu(x @ w + b)`: arithmetic only, so every target compiles it.
    const MLP: &str = r#"graph @mlp(%x: f32[batch, 4]) -> (%y) {
  %w = weight @w : f32[4, 3]
  %b = weight @b : f32[3]
  %h = MatMul(%x, %w) : f32[batch, 3]
  %hb = Add(%h, %b) : f32[batch, 3]
  %y = Relu(%hb) : f32[batch, 3]
}
"#;

    fn mlp() -> (Graph, Vec<Value>) {
        let mut g = sharc::ir::parse(MLP).unwrap();
        let ids: Vec<_> = g.weights.iter().map(|(id, _)| id).collect();
        for id in ids {
            let w = g.weights.get_mut(id).unwrap();
            let shape = w.tensor().shape().to_vec();
            let n: usize = shape.iter().product();
            let vals: Vec<f32> = (0..n).map(|i| (i as f32 - 4.0) / 3.0).collect();
            *w = sharc::ir::Weight::from_tensor(w.name.clone(), Tensor::from_vec(&shape, vals));
        }
        let x = Tensor::from_vec(&[2, 4], (0..8).map(|i| i as f32 / 2.0 - 1.0).collect::<Vec<_>>());
        (g, vec![Value::Tensor(x)])
    }

    #[test]
    fn cpu_only_backends_reject_a_gpu_target() {
        let (g, inputs) = mlp();
        for b in [Backend::Interp, Backend::Cranelift] {
            let err = b.prepare_on(Target::Cuda, &g, &inputs, &Tuning::default()).err().expect("cpu only").to_string();
            assert!(err.contains("CPU only") && err.contains("--backend mlir"), "{err}");
        }
    }

    #[cfg(not(feature = "mlir"))]
    #[test]
    fn mlir_without_the_feature_says_how_to_build_it() {
        let (g, inputs) = mlp();
        for t in [Target::Cpu, Target::Cuda] {
            let err =
                Backend::Mlir.prepare_on(t, &g, &inputs, &Tuning::default()).err().expect("not built").to_string();
            assert!(err.contains("--features mlir"), "{err}");
        }
    }

    #[cfg(feature = "mlir")]
    #[test]
    fn mlir_cpu_is_compiled_once_and_matches_the_interpreter() {
        let (g, inputs) = mlp();
        let p = Backend::Mlir.prepare(&g, &inputs, &Tuning::default()).unwrap();
        assert!(p.describe()[0].contains("MLIR for the CPU"), "{:?}", p.describe());
        assert!(p.facts().contains_key("kernels"));
        let want = sharc::interp::Interpreter::new().evaluate(&g, &inputs).unwrap();
        // Twice: the compiled code is reused, and gives the same answer.
        for _ in 0..2 {
            let got = p.run(&inputs).unwrap();
            let (a, b) = (got[0].as_tensor().unwrap(), want[0].as_tensor().unwrap());
            let (a, b) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
            let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            assert!(err <= 1e-5, "{err}");
        }
    }

    #[cfg(all(feature = "mlir", not(feature = "cuda")))]
    #[test]
    fn gpu_target_without_the_runner_says_how_to_build_it() {
        let (g, inputs) = mlp();
        let err = Backend::Mlir.prepare_on(Target::Cuda, &g, &inputs, &Tuning::default()).err().unwrap().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn gpu_target_without_a_driver_is_a_clear_error() {
        let (g, inputs) = mlp();
        match Backend::Mlir.prepare_on(Target::Cuda, &g, &inputs, &Tuning::default()) {
            // A machine with a GPU: the run must match the interpreter.
            Ok(p) => {
                let got = p.run(&inputs).unwrap();
                let want = sharc::interp::Interpreter::new().evaluate(&g, &inputs).unwrap();
                let (a, b) = (got[0].as_tensor().unwrap(), want[0].as_tensor().unwrap());
                let (a, b) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
                let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
                assert!(err <= 1e-5, "{err}");
            }
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("no CUDA driver") || e.contains("CUDA:"), "{e}");
            }
        }
    }
}

//! The MLIR backend's command-line hook for `sharc compile --backend mlir`
//! (`sharc run` and `sharc bench` reach it through `backend.rs`).

use sharc::Error;
use std::path::PathBuf;

/// What `sharc compile --backend mlir` was asked for (see `compile::Args`).
pub struct Args {
    /// The model (.onnx or .sharc).
    pub model: PathBuf,
    /// Values for the symbolic dims of the inputs, e.g. `batch=8,seq=128`: the
    /// MLIR backend compiles for static shapes.
    pub shape: Vec<String>,
    /// `mlir` prints the module after each stage (tensor, fused, bufferized,
    /// loops, llvm for the CPU; tensor and gpu for CUDA).
    pub emit: Option<String>,
    /// What to generate code for: `cpu` or `cuda`.
    pub target: String,
    /// The GPU architecture for `--target cuda`.
    #[cfg_attr(not(feature = "mlir"), allow(dead_code))]
    pub chip: String,
    /// Output file: the lowered MLIR module for the CPU (`.mlir`), PTX for
    /// `--target cuda` (`.ptx`).
    pub output: Option<PathBuf>,
}

fn mlir_err(model: &std::path::Path, e: sharc::mlir::MlirError) -> Error {
    Error::Usage(format!("{}: {e}", model.display()))
}

/// Runs `sharc compile`.
pub fn compile(a: Args) -> Result<(), Error> {
    let g = sharc::model::load(&a.model)?;
    let dims = sharc::mlir::parse_dims(&a.shape).map_err(|e| Error::Usage(e.to_string()))?;
    let lowered = sharc::mlir::lower_graph(&g, &dims).map_err(|e| mlir_err(&a.model, e))?;
    eprintln!("lowered {} nodes of '{}' to MLIR", lowered.lowered_nodes, g.name);
    backend_compile(&a, &lowered)
}

#[cfg(not(feature = "mlir"))]
fn backend_compile(a: &Args, lowered: &sharc::mlir::Lowered) -> Result<(), Error> {
    if a.emit.is_some() {
        println!("// ---- stage: tensor ----\n{}", lowered.text);
    }
    if a.target == "cuda" {
        return Err(not_built());
    }
    if let Some(out) = &a.output {
        sharc::io::write_atomic(out, lowered.text.as_bytes())?;
    }
    if a.emit.is_some() {
        eprintln!("(later stages need a sharc built with --features mlir)");
    }
    Ok(())
}

#[cfg(feature = "mlir")]
fn backend_compile(a: &Args, lowered: &sharc::mlir::Lowered) -> Result<(), Error> {
    use sharc::mlir::compile;
    let err = |e| mlir_err(&a.model, e);
    if a.target == "cuda" {
        let gpu = compile::gpu_compile(lowered, &a.chip).map_err(err)?;
        if a.emit.is_some() {
            for (name, text) in &gpu.stages {
                println!("// ---- stage: {name} ----\n{text}");
            }
        }
        for k in &gpu.kernels {
            eprintln!("kernel {k}");
        }
        match &a.output {
            Some(out) => sharc::io::write_atomic(out, gpu.ptx.as_bytes())?,
            None if a.emit.is_none() => print!("{}", gpu.ptx),
            None => {}
        }
        return Ok(());
    }
    let stages = compile::cpu_stages(lowered).map_err(err)?;
    for (name, text) in &stages {
        if a.emit.is_some() {
            println!("// ---- stage: {name} ----\n{text}");
        }
        if name == "fused" {
            let kinds: Vec<String> = compile::kernel_stats(text).iter().map(|(k, n)| format!("{n} {k}")).collect();
            eprintln!("{} kernels after fusion ({})", compile::count_kernels(text), kinds.join(", "));
        }
    }
    if let Some(out) = &a.output {
        sharc::io::write_atomic(out, lowered.text.as_bytes())?;
    }
    Ok(())
}

/// The error for MLIR work in a sharc built without the backend.
#[cfg(not(feature = "mlir"))]
pub(super) fn not_built() -> Error {
    Error::Usage(
        "this sharc was built without the MLIR backend: rebuild with `--features mlir` \
         (needs LLVM/MLIR 22, MLIR_SYS_220_PREFIX and TABLEGEN_220_PREFIX)"
            .into(),
    )
}

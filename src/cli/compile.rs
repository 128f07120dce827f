//! `sharc compile`: native code output — an object file with a C entry
//! point and the header that declares it.

use super::backend::Backend;
use super::run::parse_shape;
use sharc::Error;
use std::path::PathBuf;

/// Arguments of `sharc compile`.
#[derive(clap::Args)]
pub struct Args {
    /// The model (.onnx or .sharc).
    model: PathBuf,
    /// Which backend generates the code.
    #[arg(long, value_enum, default_value_t = Backend::Cranelift)]
    backend: Backend,
    /// Values for the symbolic dims, e.g. `batch=1,seq=128`: the object is
    /// specialised to these shapes.
    #[arg(long, value_delimiter = ',')]
    shape: Vec<String>,
    /// The file to write: an object file (cranelift); for mlir the lowered
    /// module (`.mlir`) or PTX with `--target cuda` (`.ptx`).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// mlir only: `mlir` prints the module after each lowering stage.
    #[arg(long, value_parser = ["mlir"])]
    emit: Option<String>,
    /// mlir only: what to generate code for.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    target: String,
    /// mlir only: the GPU architecture for `--target cuda`.
    #[arg(long, default_value = "sm_80", value_parser = ["sm_80", "sm_90"])]
    chip: String,
    /// The C header to write (default: the object's path with `.h`).
    #[arg(long)]
    header: Option<PathBuf>,
    /// Prefix of the C symbols (default: the object's file stem).
    #[arg(long)]
    prefix: Option<String>,
}

pub fn run(a: Args) -> Result<(), Error> {
    if a.backend == Backend::Mlir {
        let Args { model, shape, output, emit, target, chip, .. } = a;
        return super::mlir::compile(super::mlir::Args { model, shape, emit, target, chip, output });
    }
    if a.emit.is_some() || a.target != "cpu" {
        return Err(Error::Usage("--emit and --target are options of --backend mlir".into()));
    }
    let Some(output) = a.output.clone() else {
        return Err(Error::Usage("sharc compile --backend cranelift needs -o model.o".into()));
    };
    let g = sharc::model::load(&a.model)?;
    let dims = parse_shape(&a.shape)?;
    let prefix = match &a.prefix {
        Some(p) => p.clone(),
        None => output
            .file_stem()
            .map(|s| s.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect())
            .unwrap_or_else(|| "model".to_string()),
    };
    let start = std::time::Instant::now();
    let out = a.backend.compile_object(&g, &dims, &prefix, &a.model)?;
    let header = a.header.clone().unwrap_or_else(|| output.with_extension("h"));
    sharc::io::write_atomic(&output, &out.object)?;
    sharc::io::write_atomic(&header, out.header.as_bytes())?;
    println!(
        "wrote {} ({} bytes, {:.2} MB of weights embedded) and {} in {:.1} ms; entry point {prefix}_run, workspace {} bytes",
        output.display(),
        out.object.len(),
        out.embedded_bytes as f64 / 1e6,
        header.display(),
        start.elapsed().as_secs_f64() * 1e3,
        out.workspace_bytes
    );
    Ok(())
}

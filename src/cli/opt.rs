//! `sharc opt`: read a model, run a pass pipeline, write the result in the
//! format the output path names.

use sharc::Error;
use sharc::model::SaveOptions;
use sharc::passes::{PassContext, PassFilter, PassManager, Registry};
use std::path::PathBuf;

/// Arguments of `sharc opt`.
#[derive(clap::Args)]
pub struct Args {
    /// The input model (.onnx or .sharc).
    model: PathBuf,
    /// The output model (.onnx or .sharc).
    #[arg(short, long)]
    output: PathBuf,
    /// The passes to run, e.g. `infer-shapes,canonicalize,cse,fold-constants,dce`
    /// (`sharc passes` lists them and their options). Without it the model is
    /// only converted.
    #[arg(short = 'p', long = "pipeline", visible_alias = "passes", value_name = "PIPELINE", default_value = "")]
    pipeline: String,
    /// Print the wall time of each pass.
    #[arg(long)]
    time_passes: bool,
    /// Print the IR before the named passes (comma-separated) or `all`.
    #[arg(long, value_name = "PASS|all")]
    print_ir_before: Option<String>,
    /// Print the IR after the named passes (comma-separated) or `all`.
    #[arg(long, value_name = "PASS|all")]
    print_ir_after: Option<String>,
    /// Print a unified diff of the IR around each pass that changed it.
    #[arg(long)]
    print_ir_diff: bool,
    /// Print nodes, weights and parameters before and after each pass, and
    /// the counters passes report.
    #[arg(long)]
    pass_statistics: bool,
    /// Run only the first N passes of the pipeline (to bisect a problem).
    #[arg(long, value_name = "N")]
    stop_after: Option<usize>,
    /// Do not verify the graph after each pass.
    #[arg(long)]
    no_verify: bool,
    /// For .onnx output: write the weights to a side file.
    #[arg(long)]
    external_data: bool,
    /// Calibration data for passes that measure the model (fold-blocks,
    /// crash, dictionary's whitening, expert-reuse): a safetensors file whose
    /// tensor names are the graph's input names. `sharc compress` also holds
    /// rows back to report fidelity; here every row calibrates.
    #[arg(long, value_name = "FILE")]
    calib: Option<PathBuf>,
    /// Rows per batch when running calibration data.
    #[arg(long, default_value_t = 8, requires = "calib")]
    batch_size: usize,
}

/// Writes instrumentation output to stderr as it comes.
struct Stderr;

impl std::fmt::Write for Stderr {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        use std::io::Write;
        std::io::stderr().write_all(s.as_bytes()).map_err(|_| std::fmt::Error)
    }
}

pub fn run(a: Args) -> Result<(), Error> {
    let mut registry = Registry::with_standard_passes();
    sharc::passes::sharing::register_sharing(&mut registry);
    // Check the pipeline before loading a large model.
    let mut pm = PassManager::from_pipeline(&registry, &a.pipeline)
        .map_err(|e| Error::Usage(format!("invalid pipeline (-p): {}", e.to_string().trim_start_matches("error: "))))?;
    let ins = &mut pm.instrumentation;
    ins.verify = !a.no_verify;
    ins.time_passes = a.time_passes;
    ins.print_ir_before = a.print_ir_before.as_deref().map(PassFilter::parse).unwrap_or_default();
    ins.print_ir_after = a.print_ir_after.as_deref().map(PassFilter::parse).unwrap_or_default();
    ins.print_ir_diff = a.print_ir_diff;
    ins.print_statistics = a.pass_statistics;
    ins.stop_after = a.stop_after;
    for filter in [&ins.print_ir_before, &ins.print_ir_after] {
        if let PassFilter::Passes(names) = filter {
            for n in names {
                if !registry.contains(n) {
                    return Err(Error::Usage(format!("--print-ir-before/after: no pass named `{n}`")));
                }
            }
        }
    }

    let mut g = sharc::model::load(&a.model)?;
    let before = g.stats();
    // Passes that run the model (calibration, fidelity checks) use the
    // reference interpreter: it runs every op, and its numbers are the ones
    // the other backends are checked against.
    let evaluator = sharc::interp::Interpreter::new();
    let calib = match &a.calib {
        None => Vec::new(),
        Some(path) => {
            let data = super::compress::CalibrationFile::read(&g, path)?;
            data.batches(&g, 0..data.rows, a.batch_size.max(1))?
        }
    };
    let mut cx = PassContext::with_evaluator(&evaluator);
    if !calib.is_empty() {
        cx.calibration = Some(&calib);
    }
    let report = pm
        .run_with_output(&mut g, &mut cx, &mut Stderr)
        .map_err(|e| Error::Usage(format!("{}: {e}", a.model.display())))?;
    if !pm.is_empty() {
        let after = g.stats();
        eprintln!(
            "{} passes in {:.1} ms: nodes {} -> {} (compute {} -> {}), unique parameters {} -> {}",
            report.records.len(),
            report.total.as_secs_f64() * 1e3,
            before.nodes,
            after.nodes,
            before.compute_nodes,
            after.compute_nodes,
            before.unique_params,
            after.unique_params
        );
        if !report.skipped.is_empty() {
            eprintln!("stopped after pass {}; not run: {}", report.records.len(), report.skipped.join(", "));
        }
    }
    sharc::model::save(&g, &a.output, &SaveOptions { external_data: a.external_data })?;
    eprintln!("wrote {} ({})", a.output.display(), g.stats());
    Ok(())
}

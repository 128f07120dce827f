//! `sharc compress`: a sharing method as a preset, with a report of what it
//! saved and what it cost.
//!
//! ```text
//! sharc compress model.onnx --method tie --blocks 3 --rank 32 --init average \
//!     --calib data.safetensors --holdout 0.25 -o small.onnx --report report
//! ```
//!
//! writes `small.onnx` and `report.txt`, `report.json` and `report.svg` (the
//! layer-similarity heatmap). Methods come from
//! [`sharc_passes::sharing::method`]: `tie` (Relaxed Recursive
//! Transformers), `fold` (FoldGPT with Block Influence) and `crash`. The
//! flags `--blocks`, `--rank`, `--init`, `--pattern`, `--role-rank` (tie),
//! `--remove`, `--rate`, `--group`, `--share`, `--refit-norms` (fold),
//! `--clusters`, `--mode` (crash) are shorthands for `--set key=value`,
//! which passes any setting a method knows. `--preset` starts from a named
//! setting of the method (see [`sharc_passes::sharing::PRESETS`]). Calibration rows are
//! split in two: the first part is what a method may fit to (and what the
//! layer-similarity matrix is computed on), the held-back part is where the
//! compressed model is compared with the original.

use sharc::Error;
use sharc::data::read_safetensors;
use sharc::model::SaveOptions;
use sharc_passes::PassContext;
use sharc_passes::analysis::blocks::find_blocks;
use sharc_passes::analysis::calibration::{Pooling, make_batches, row_count};
use sharc_passes::sharing::report::{CompressionReport, ModelSize, Task, detect_task, measure_cka, measure_fidelity};
use sharc_passes::sharing::{METHODS, method, preset_settings};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Arguments of `sharc compress`.
#[derive(clap::Args)]
pub struct Args {
    /// The model (.onnx or .sharc).
    model: PathBuf,
    /// The method: tie, fold, crash, dictionary or expert-reuse.
    #[arg(long, default_value = "tie")]
    method: String,
    /// Start from a named setting of the method: light, medium or strong.
    #[arg(long)]
    preset: Option<String>,
    /// tie: the number of shared blocks K left.
    #[arg(long)]
    blocks: Option<usize>,
    /// tie: the LoRA rank of the per-depth corrections (a number or `full`).
    #[arg(long)]
    rank: Option<String>,
    /// tie: the rank of one role or kind, e.g. `ffn-out=64` or `norm-gain=0` (repeatable).
    #[arg(long = "role-rank")]
    role_rank: Vec<String>,
    /// tie: how the shared weights start (stepwise, average, lower).
    #[arg(long)]
    init: Option<String>,
    /// tie: how layers map to shared blocks (cycle, sequence).
    #[arg(long)]
    pattern: Option<String>,
    /// fold: the number of blocks to remove.
    #[arg(long)]
    remove: Option<usize>,
    /// fold: the fraction of blocks to remove (instead of --remove).
    #[arg(long)]
    rate: Option<f64>,
    /// fold: retained blocks per weight-sharing group (1: no sharing).
    #[arg(long)]
    group: Option<usize>,
    /// fold: how a group's weights are chosen (representative, average).
    #[arg(long)]
    share: Option<String>,
    /// fold: refit the private norms on the calibration rows (true, false).
    #[arg(long)]
    refit_norms: Option<bool>,
    /// crash: the number of clusters (unique layers) kept.
    #[arg(long)]
    clusters: Option<usize>,
    /// crash: share the kept layers or remove the others (share, remove).
    #[arg(long)]
    mode: Option<String>,
    /// Any method setting, as key=value (repeatable).
    #[arg(long = "set")]
    set: Vec<String>,
    /// Calibration data: a safetensors file whose tensor names are the graph's input names.
    #[arg(long)]
    calib: Option<PathBuf>,
    /// The fraction of calibration rows held back to measure fidelity (0 measures on the calibration rows).
    #[arg(long, default_value_t = 0.25)]
    holdout: f64,
    /// Rows per batch when running calibration data.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Use only the first N rows of the calibration data (0 = all).
    #[arg(long, default_value_t = 0)]
    max_rows: usize,
    /// The final-output check: auto, encoder, decoder or none.
    #[arg(long, default_value = "auto", value_parser = ["auto", "encoder", "decoder", "none"])]
    task: String,
    /// How sequences are pooled for the layer-similarity matrix (and, for crash, for clustering);
    /// the method's own choice when not given.
    #[arg(long, value_parser = ["mean", "max", "last", "mean-weighted"])]
    pooling: Option<String>,
    /// The compressed model (.onnx or .sharc).
    #[arg(short, long)]
    output: PathBuf,
    /// Write the report to <REPORT>.txt, <REPORT>.json and <REPORT>.svg.
    #[arg(long)]
    report: Option<PathBuf>,
    /// For .onnx output: write the weights to a side file.
    #[arg(long)]
    external_data: bool,
}

fn settings(a: &Args) -> Result<BTreeMap<String, String>, Error> {
    let mut s = match &a.preset {
        Some(p) => preset_settings(&a.method, p).map_err(Error::Usage)?,
        None => BTreeMap::new(),
    };
    let mut put = |k: &str, v: String| s.insert(k.to_string(), v);
    if let Some(b) = a.blocks {
        put("blocks", b.to_string());
    }
    if let Some(r) = &a.rank {
        put("rank", r.clone());
    }
    if let Some(i) = &a.init {
        put("init", i.clone());
    }
    if let Some(p) = &a.pattern {
        put("pattern", p.clone());
    }
    if let Some(r) = a.remove {
        put("remove", r.to_string());
    }
    if let Some(r) = a.rate {
        put("rate", r.to_string());
    }
    if let Some(g) = a.group {
        put("group", g.to_string());
    }
    if let Some(v) = &a.share {
        put("share", v.clone());
    }
    if let Some(v) = a.refit_norms {
        put("refit-norms", v.to_string());
    }
    if let Some(c) = a.clusters {
        put("clusters", c.to_string());
    }
    if let Some(p) = &a.pooling
        && a.method == "crash"
    {
        put("pooling", p.clone());
    }
    if let Some(m) = &a.mode {
        put("mode", m.clone());
    }
    if !a.role_rank.is_empty() {
        put("role-ranks", a.role_rank.join(","));
    }
    for item in &a.set {
        let (k, v) =
            item.split_once('=').ok_or_else(|| Error::Usage(format!("--set expects key=value, got '{item}'")))?;
        s.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(s)
}

fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

fn usage(message: impl Into<String>) -> Error {
    Error::Usage(message.into())
}

pub fn run(a: Args) -> Result<(), Error> {
    if !(0.0..1.0).contains(&a.holdout) {
        return Err(usage(format!("--holdout must be in [0, 1), got {}", a.holdout)));
    }
    let original = sharc::model::load(&a.model)?;
    let mut method = method(&a.method, &settings(&a)?).map_err(|m| {
        let known: Vec<String> = METHODS.iter().map(|(n, d)| format!("  {n}: {d}")).collect();
        usage(format!("{m}\nmethods:\n{}", known.join("\n")))
    })?;
    let evaluator = sharc::interp::Interpreter::new();

    // Calibration rows: the first part for the method and CKA, the rest held back.
    let (calib, eval, total_rows) = match &a.calib {
        None => (Vec::new(), Vec::new(), 0),
        Some(path) => {
            let data = CalibrationFile::read(&original, path)?;
            let mut n = data.rows;
            if a.max_rows > 0 {
                n = n.min(a.max_rows);
            }
            let held =
                if a.holdout > 0.0 && n >= 2 { ((n as f64 * a.holdout).round() as usize).clamp(1, n - 1) } else { 0 };
            let split = n - held;
            let calib = data.batches(&original, 0..split, a.batch_size)?;
            let eval = if held > 0 { data.batches(&original, split..n, a.batch_size)? } else { calib.clone() };
            (calib, eval, n)
        }
    };
    let held_back = a.calib.is_some() && a.holdout > 0.0 && total_rows >= 2;
    let calib_rows: usize = calib.iter().map(|b| rows_of(b)).sum();
    let eval_rows: usize = eval.iter().map(|b| rows_of(b)).sum();
    if method.needs_calibration() && calib.is_empty() {
        return Err(usage(format!("method '{}' needs calibration data: give --calib", method.name())));
    }

    let mut compressed = original.clone();
    let mut cx = PassContext::with_evaluator(&evaluator);
    if !calib.is_empty() {
        cx.calibration = Some(&calib);
    }
    let outcome = method.apply(&mut compressed, &mut cx).map_err(|e| usage(e.to_string()))?;
    sharc::ir::verify(&compressed).map_err(|e| usage(format!("{}: the compressed graph is invalid: {e}", a.method)))?;
    sharc::model::save(&compressed, &a.output, &SaveOptions { external_data: a.external_data })?;
    eprintln!("wrote {} ({})", a.output.display(), compressed.stats());

    let mut before = ModelSize::of(&original);
    before.file_bytes = file_size(&a.model);
    let mut after = ModelSize::of(&compressed);
    after.file_bytes = file_size(&a.output)
        .map(|n| n + if a.external_data { file_size(&sharc_onnx_data_path(&a.output)).unwrap_or(0) } else { 0 });
    let mut notes = Vec::new();
    let task = match a.task.as_str() {
        "encoder" => Some(Task::Encoder),
        "decoder" => Some(Task::Decoder),
        "none" => None,
        _ => Some(detect_task(&original)),
    };
    let (blocks, final_output, cka) = if eval.is_empty() {
        notes.push("no calibration data (--calib): fidelity was not measured".to_string());
        (Vec::new(), None, None)
    } else {
        let model = a.model.clone();
        let eval_err = |e: sharc_passes::analysis::calibration::CalibrationError| match e {
            sharc_passes::analysis::calibration::CalibrationError::Eval { source, .. } => {
                Error::Eval { model: model.clone(), source }
            }
            other => usage(other.to_string()),
        };
        let (blocks, fin) =
            measure_fidelity(&evaluator, &original, &compressed, &outcome.points, &eval, task).map_err(eval_err)?;
        let cka = match find_blocks(&original) {
            Ok(an) => {
                let names: Vec<String> = an.boundaries().iter().map(|v| original.value_info(*v).name.clone()).collect();
                let labels: Vec<String> = (0..names.len())
                    .map(|i| if i == 0 { "input".to_string() } else { format!("block {}", i - 1) })
                    .collect();
                let pooling = a.pooling.as_deref().and_then(Pooling::parse).unwrap_or(method.pooling());
                if calib_rows < 2 {
                    notes.push(format!("layer similarity needs 2 or more calibration rows, {calib_rows} given"));
                    None
                } else {
                    Some(measure_cka(&evaluator, &original, &names, labels, &calib, pooling).map_err(eval_err)?)
                }
            }
            Err(e) => {
                notes.push(format!("layer similarity not computed: {e}"));
                None
            }
        };
        (blocks, fin, cka)
    };
    let report = CompressionReport {
        model: a.model.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| original.name.clone()),
        method: method.name().to_string(),
        method_summary: outcome.summary,
        method_details: outcome.details,
        before,
        after,
        blocks,
        final_output,
        cka,
        calibration_rows: calib_rows,
        evaluation_rows: eval_rows,
        evaluation_held_out: held_back,
        notes,
    };
    let text = report.to_text();
    print!("{text}");
    if let Some(base) = &a.report {
        let with_ext = |ext: &str| {
            let mut p = base.clone().into_os_string();
            p.push(format!(".{ext}"));
            PathBuf::from(p)
        };
        sharc::io::write_atomic(&with_ext("txt"), text.as_bytes())?;
        sharc::io::write_atomic(&with_ext("json"), report.to_json().as_bytes())?;
        sharc::io::write_atomic(&with_ext("svg"), report.to_svg().as_bytes())?;
        eprintln!("wrote {}.{{txt,json,svg}}", base.display());
    }
    Ok(())
}

/// Rows in a batch: dim 0 of its first tensor.
/// A calibration file read against a graph: its tensors and how many rows
/// they hold. Shared by `sharc compress` and `sharc opt --calib`.
pub(super) struct CalibrationFile {
    path: PathBuf,
    file: sharc::data::TensorFile,
    /// Rows in the file (the graph inputs' common first dim).
    pub rows: usize,
}

impl CalibrationFile {
    /// Reads `path` and counts its rows for `g`'s inputs.
    pub fn read(g: &sharc::ir::Graph, path: &Path) -> Result<CalibrationFile, Error> {
        let file = read_safetensors(path)?;
        let rows = row_count(g, &file.tensors).map_err(|e| data_error(path, e))?;
        Ok(CalibrationFile { path: path.to_path_buf(), file, rows })
    }

    /// Rows `rows` as batches of at most `batch_size`, one value per graph input.
    pub fn batches(
        &self,
        g: &sharc::ir::Graph,
        rows: std::ops::Range<usize>,
        batch_size: usize,
    ) -> Result<Vec<Vec<sharc::ir::Value>>, Error> {
        make_batches(g, &self.file.tensors, rows, batch_size).map_err(|e| data_error(&self.path, e))
    }
}

fn data_error(path: &Path, e: sharc_passes::analysis::calibration::CalibrationError) -> Error {
    Error::Data { path: path.to_path_buf(), message: e.to_string() }
}

fn rows_of(batch: &[sharc::ir::Value]) -> usize {
    batch.first().and_then(|v| v.as_tensor()).and_then(|t| t.shape().first().copied()).unwrap_or(0)
}

/// Where ONNX export puts external data for a model path.
fn sharc_onnx_data_path(model: &Path) -> PathBuf {
    let mut p = model.as_os_str().to_owned();
    p.push(".data");
    PathBuf::from(p)
}

//! A tied model exports to standard ONNX in which each shared weight is one
//! initializer, runs in onnxruntime and matches sharc's interpreter; and
//! `sharc compress` writes the model and its report.
//!
//! The onnxruntime checks need python3 with `onnxruntime`, `onnx`, `numpy`
//! and `safetensors`. Without them the checks are skipped with a message,
//! unless `SHARC_REQUIRE_PYTHON=1` makes that a failure.

mod common;

use sharc::data::{TensorFile, read_safetensors, write_safetensors};
use sharc::ir::{Evaluator, Graph, Value};
use sharc_passes::analysis::calibration::{Pooling, make_batches};
use sharc_passes::sharing::crash::{CrashOptions, Mode, crash};
use sharc_passes::sharing::fold_blocks::{FoldBlocksOptions, Share, fold_blocks};
use sharc_passes::sharing::tie_layers::{Init, Rank, TieLayersOptions, tie_layers};
use std::path::{Path, PathBuf};
use std::process::Command;

fn python_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import onnxruntime, onnx, numpy, safetensors"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("SHARC_REQUIRE_PYTHON").as_deref() == Ok("1") {
            panic!("python3 with onnxruntime, onnx, numpy and safetensors is required (SHARC_REQUIRE_PYTHON=1)");
        }
        eprintln!("skipping the onnxruntime check: python3 with onnxruntime, onnx, numpy and safetensors not found");
    }
    ok
}

/// Runs `model` in onnxruntime on the tensors of `inputs` and returns its
/// outputs by name, plus the number of initializers in the file.
fn run_onnxruntime(model: &Path, inputs: &Path, outputs: &Path) -> (TensorFile, usize) {
    let script = r#"
import sys, onnx, onnxruntime as ort
from safetensors.numpy import load_file, save_file
model, inputs, outputs = sys.argv[1:4]
m = onnx.load(model)
onnx.checker.check_model(m)
names = [i.name for i in m.graph.initializer]
assert len(names) == len(set(names)), "duplicate initializer names"
s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
feeds = load_file(inputs)
res = s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()})
save_file({o.name: r for o, r in zip(s.get_outputs(), res)}, outputs)
print(len(m.graph.initializer))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(model)
        .arg(inputs)
        .arg(outputs)
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "onnxruntime failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let count = String::from_utf8_lossy(&out.stdout).trim().parse::<usize>().expect("initializer count");
    (read_safetensors(outputs).unwrap(), count)
}

fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn gpt_tiny() -> Option<(PathBuf, Graph, TensorFile)> {
    let shared = common::shared_dir()?;
    let model = shared.join("models").join("gpt-tiny.onnx");
    let g = sharc::onnx::import_file(&model).unwrap_or_else(|e| panic!("{e}"));
    let data = read_safetensors(&shared.join("models").join("gpt-tiny.data.safetensors")).unwrap();
    Some((model, g, data))
}

/// Exports `compressed` (made from gpt-tiny at `model`), checks that the
/// file shrinks with the unique parameters and reads back with sharing
/// intact, then runs it in onnxruntime on two rows and compares with sharc's
/// interpreter (≤ 1e-4), checking one initializer per stored weight.
fn check_export(label: &str, model: &Path, original: &Graph, compressed: &Graph, data: &TensorFile) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(format!("{label}.onnx"));
    sharc::onnx::export_file(compressed, &out, &Default::default()).unwrap();
    let (before, after) = (std::fs::metadata(model).unwrap().len(), std::fs::metadata(&out).unwrap().len());
    let saved_params = original.stats().unique_params - compressed.stats().unique_params;
    println!("{label}: file {before} -> {after} bytes, {saved_params} parameters saved");
    // The file shrinks with the unique parameters (4 bytes each).
    assert!(before - after > 4 * saved_params * 9 / 10, "{before} -> {after} for {saved_params} parameters saved");

    // The exported file reads back with sharing intact.
    let back = sharc::onnx::import_file(&out).unwrap();
    assert_eq!(back.stats().unique_params, compressed.stats().unique_params);

    let batches = make_batches(original, &data.tensors, 0..2, 2).unwrap();
    let ours = sharc::interp::Interpreter::new().evaluate(compressed, &batches[0]).unwrap();
    let ours = ours[0].as_tensor().unwrap().to_f64_vec().unwrap();
    if !python_ready() {
        return;
    }
    let inputs = dir.path().join("inputs.safetensors");
    let mut f = TensorFile::default();
    let Value::Tensor(ids) = &batches[0][0] else { panic!("a tensor input") };
    f.tensors.insert("input_ids".into(), ids.clone());
    write_safetensors(&inputs, &f).unwrap();
    let (ort, initializers) = run_onnxruntime(&out, &inputs, &dir.path().join("ort.safetensors"));
    let theirs = ort.tensors["logits"].to_f64_vec().unwrap();
    let err = max_abs(&ours, &theirs);
    println!("{label}: onnxruntime vs sharc interp {err:.3e}; {initializers} initializers");
    assert!(err <= 1e-4, "{label}: onnxruntime and sharc disagree by {err}");
    assert_eq!(initializers, compressed.stats().unique_weights, "each stored weight is one initializer");
}

/// Calibration batches of gpt-tiny: rows 2..6 (rows 0..2 are what the
/// export check runs).
fn calibration(g: &Graph, data: &TensorFile) -> Vec<Vec<Value>> {
    make_batches(g, &data.tensors, 2..6, 2).unwrap()
}

#[test]
fn tied_gpt_tiny_runs_in_onnxruntime_with_one_initializer_per_shared_weight() {
    let Some((model, g, data)) = gpt_tiny() else { return };
    let mut tied = g.clone();
    let o = TieLayersOptions { blocks: 3, init: Init::Average, rank: Rank::Value(8), ..Default::default() };
    let s = tie_layers(&mut tied, &o).unwrap();
    println!("{s}");
    check_export("tie", &model, &g, &tied, &data);
}

#[test]
fn folded_gpt_tiny_runs_in_onnxruntime() {
    let Some((model, g, data)) = gpt_tiny() else { return };
    let mut folded = g.clone();
    let o = FoldBlocksOptions { remove: 1, group: 2, share: Share::Average, refit_norms: true, ..Default::default() };
    let s = fold_blocks(&mut folded, &o, &sharc::interp::Interpreter::new(), &calibration(&g, &data)).unwrap();
    println!("{s}");
    assert_eq!(s.removed.len(), 1);
    check_export("fold", &model, &g, &folded, &data);
}

#[test]
fn crashed_gpt_tiny_runs_in_onnxruntime() {
    let Some((model, g, data)) = gpt_tiny() else { return };
    let mut shared = g.clone();
    let o = CrashOptions { clusters: 3, pooling: Pooling::MeanWeighted, mode: Mode::Share };
    let s = crash(&mut shared, &o, &sharc::interp::Interpreter::new(), &calibration(&g, &data)).unwrap();
    println!("{s}");
    check_export("crash", &model, &g, &shared, &data);
}

#[test]
fn sharc_compress_writes_model_and_report() {
    let Some((model, _, _)) = gpt_tiny() else { return };
    let data = model.with_file_name("gpt-tiny.data.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("small.onnx");
    let report = dir.path().join("report");
    let run = Command::new(env!("CARGO_BIN_EXE_sharc"))
        .arg("compress")
        .arg(&model)
        .args(["--method", "tie", "--blocks", "3", "--rank", "4", "--init", "average"])
        .arg("--calib")
        .arg(&data)
        .args(["--max-rows", "4", "--holdout", "0.5", "--batch-size", "2"])
        .arg("-o")
        .arg(&out)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "sharc compress failed:\n{}\n{stdout}", String::from_utf8_lossy(&run.stderr));
    println!("{stdout}");
    assert!(stdout.contains("final output (decoder)"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.with_extension("json")).unwrap()).unwrap();
    assert_eq!(json["method"], "tie");
    assert_eq!(json["evaluation_rows"], 2);
    assert_eq!(json["blocks"].as_array().unwrap().len(), 6);
    assert_eq!(json["final_output"]["task"], "decoder");
    assert!(json["after"]["unique_params"].as_u64() < json["before"]["unique_params"].as_u64());
    assert!(json["after"]["file_bytes"].as_u64() < json["before"]["file_bytes"].as_u64());
    assert_eq!(json["cka"]["labels"].as_array().unwrap().len(), 7);
    let svg = std::fs::read_to_string(report.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("block 5"));
    assert!(std::fs::read_to_string(report.with_extension("txt")).unwrap().contains("per block"));

    // A method that does not exist is a clear error.
    let bad = Command::new(env!("CARGO_BIN_EXE_sharc"))
        .arg("compress")
        .arg(&model)
        .args(["--method", "melt", "-o"])
        .arg(dir.path().join("x.onnx"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown method 'melt'"));
}

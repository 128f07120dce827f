//! `expert-reuse` on the real moe-tiny: the detector finds its four MoE
//! layers, calibration reproduces the expert usage recorded when the model
//! was made, a pool as large as the window reproduces the model, and a
//! compressed model exports to ONNX that onnxruntime runs with the
//! interpreter's outputs.

mod common;

use sharc::data::{TensorFile, read_safetensors, write_safetensors};
use sharc::interp::Interpreter;
use sharc::ir::{Evaluator, Graph, Tensor, Value};
use sharc::passes::analysis::moe::find_moe_layers;
use sharc::passes::sharing::expert_reuse::{ExpertReuse, ExpertReuseOptions, Merge};
use sharc::passes::{Pass, PassContext};
use std::path::PathBuf;

fn model() -> Option<(Graph, Tensor)> {
    let shared = common::shared_dir()?;
    let g = sharc::onnx::import_file(shared.join("models/moe-tiny.onnx")).unwrap_or_else(|e| panic!("{e}"));
    let path = shared.join("models/moe-tiny.data.safetensors");
    let data = read_safetensors(&path).unwrap_or_else(|e| panic!("{e}"));
    let ids = data.get("input_ids", &path).unwrap().clone();
    Some((g, ids))
}

/// Rows `start..end` of a `[batch, seq]` int64 tensor.
fn rows(t: &Tensor, start: usize, end: usize) -> Tensor {
    let seq = t.shape()[1];
    let v = t.to_i64_vec().unwrap();
    Tensor::from_vec(&[end - start, seq], v[start * seq..end * seq].to_vec())
}

fn logits(g: &Graph, ids: &Tensor) -> Vec<f64> {
    let out = Interpreter::new().evaluate(g, &[Value::Tensor(ids.clone())]).unwrap_or_else(|e| panic!("{e}"));
    out[0].as_tensor().unwrap().to_f64_vec().unwrap()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn compress(
    g: &mut Graph,
    o: ExpertReuseOptions,
    calib: &[Vec<Value>],
) -> sharc::passes::sharing::expert_reuse::ExpertReuseReport {
    let ev = Interpreter::new();
    let mut cx = PassContext { evaluator: Some(&ev), calibration: Some(calib), ..Default::default() };
    let mut pass = ExpertReuse::new(o);
    pass.run(g, &mut cx).unwrap_or_else(|e| panic!("{e}"));
    sharc::ir::infer_shapes(g).unwrap_or_else(|e| panic!("{e}"));
    sharc::ir::verify(g).unwrap_or_else(|e| panic!("{e:?}"));
    pass.report.unwrap()
}

/// The unmodified model on an 8-row batch matches the onnxruntime logits
/// shipped with it (computed on all 32 rows; rows are independent). The
/// number of tokens each expert receives depends on the batch, so this
/// catches any shape that import or inference bakes in at trace time.
#[test]
fn moe_tiny_at_batch_8_matches_onnxruntime() {
    let Some((g, ids)) = model() else { return };
    let path = common::shared_dir().unwrap().join("models/moe-tiny.data.safetensors");
    let data = read_safetensors(&path).unwrap();
    let reference = data.get("logits", &path).unwrap().to_f64_vec().unwrap();
    let per_row = reference.len() / ids.shape()[0];
    for (start, end) in [(0, 8), (8, 16)] {
        let ours = logits(&g, &rows(&ids, start, end));
        let diff = max_diff(&reference[start * per_row..end * per_row], &ours);
        assert!(diff <= 1e-4, "rows {start}..{end}: max |diff| {diff:.3e}");
    }
}

#[test]
fn finds_the_four_moe_layers_of_moe_tiny() {
    let Some((g, _)) = model() else { return };
    let a = find_moe_layers(&g).unwrap();
    assert_eq!(a.layers.len(), 4, "{}", a.summary(&g));
    let routers = ["onnx::MatMul_3505", "onnx::MatMul_3565", "onnx::MatMul_3625", "onnx::MatMul_3685"];
    for (l, want) in a.layers.iter().zip(routers) {
        assert_eq!(g.weights.get(l.router_weight).unwrap().name, want);
        assert_eq!((l.num_experts(), l.k), (8, 2));
        for e in 0..8 {
            assert_eq!(l.experts[e].weights.len(), 2, "gate_up and down");
            assert_eq!(l.expert_params(&g, e), 128 * 512 + 256 * 128);
        }
    }
    eprintln!("{}", a.summary(&g));
    for (i, l) in a.layers.iter().enumerate() {
        // The combine is the end of the scatter-add chain (the sum of all
        // eight experts), not the last expert's rows broadcast to its shape.
        let name = &g.value_info(l.output).name;
        assert_eq!(name, &format!("/m/model/layers.{i}/mlp/experts/Add_23_output_0"));
    }
    // Experts in router order: layer 0's expert 0 owns the first gate_up weight.
    assert_eq!(g.weights.get(a.layers[0].experts[0].weights[0]).unwrap().name, "onnx::MatMul_3508");
    assert_eq!(g.weights.get(a.layers[0].experts[7].weights[1]).unwrap().name, "onnx::MatMul_3538");
}

#[test]
fn usage_matches_the_models_record_and_a_full_pool_reproduces_it() {
    let Some((mut g, ids)) = model() else { return };
    let original = g.clone();
    // The model card records top-2 usage on all 32 windows.
    let calib: Vec<Vec<Value>> = (0..4).map(|b| vec![Value::Tensor(rows(&ids, b * 8, b * 8 + 8))]).collect();
    let o = ExpertReuseOptions { window: 1, experts: Some(8), ..Default::default() };
    let r = compress(&mut g, o, &calib);
    let recorded: [[u64; 8]; 4] = [
        [535, 694, 143, 236, 792, 547, 428, 721],
        [0, 477, 1545, 125, 1091, 381, 90, 387],
        [991, 636, 5, 77, 174, 367, 1539, 307],
        [559, 147, 503, 1504, 7, 560, 17, 799],
    ];
    for (l, want) in recorded.iter().enumerate() {
        assert_eq!(r.usage[l], want.to_vec(), "layer {l}");
    }
    assert_eq!(r.experts_after, 32);
    assert!(r.routing_agreement.iter().all(|a| *a == 1.0), "{}", r.to_text());
    let sample = rows(&ids, 0, 2);
    assert!(max_diff(&logits(&original, &sample), &logits(&g, &sample)) <= 1e-4);
}

#[test]
fn reused_experts_export_to_onnx_that_onnxruntime_runs() {
    // Window 2, 8 pooled experts per window: 32 experts become 16.
    let Some((mut g, ids)) = model() else { return };
    let calib: Vec<Vec<Value>> = vec![vec![Value::Tensor(rows(&ids, 0, 8))]];
    let o = ExpertReuseOptions { window: 2, experts: Some(8), merge: Merge::Frequency, ..Default::default() };
    let r = compress(&mut g, o, &calib);
    eprintln!("{}", r.to_text());
    assert_eq!((r.experts_before, r.experts_after), (32, 16));
    assert_eq!(r.expert_params_before - r.expert_params_after, 16 * (128 * 512 + 256 * 128));
    assert!(r.top1 > 0.3 && r.top1 <= 1.0);

    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("moe-reused.onnx");
    sharc::onnx::export_file(&g, &path, &Default::default()).unwrap_or_else(|e| panic!("{e}"));
    let original_size = std::fs::metadata(common::shared_dir().unwrap().join("models/moe-tiny.onnx")).unwrap().len();
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < original_size * 6 / 10, "{size} vs {original_size}");

    let sample = rows(&ids, 8, 10);
    let ours = Interpreter::new().evaluate(&g, &[Value::Tensor(sample.clone())]).unwrap();
    let io = dir.path().join("io.safetensors");
    let mut f = TensorFile { tensors: Default::default(), metadata: Default::default() };
    f.tensors.insert("input_ids".into(), sample);
    f.tensors.insert("logits".into(), ours[0].as_tensor().unwrap().clone());
    write_safetensors(&io, &f).unwrap();
    let script = r#"
import sys, numpy as np, onnx, onnxruntime as ort
from safetensors.numpy import load_file
onnx.checker.check_model(sys.argv[1], full_check=True)
d = load_file(sys.argv[2])
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
out = s.run(["logits"], {"input_ids": d["input_ids"]})[0]
print(float(np.abs(out - d["logits"]).max()))
"#;
    let res = std::process::Command::new("python3").arg("-c").arg(script).arg(&path).arg(&io).output().unwrap();
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let diff: f64 = String::from_utf8_lossy(&res.stdout).trim().parse().unwrap();
    eprintln!("onnxruntime vs interpreter: max |diff| {diff:.3e}");
    assert!(diff <= 1e-4, "{diff}");
}

/// `sharc compress --method expert-reuse` end to end: calibration rows from
/// a file, the compressed ONNX written, and the report's expert and
/// parameter counts consistent with the pool asked for.
#[test]
fn the_cli_compresses_moe_tiny_with_expert_reuse() {
    let Some((_, ids)) = model() else { return };
    let shared = common::shared_dir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let calib = dir.path().join("calib.safetensors");
    let mut f = TensorFile { tensors: Default::default(), metadata: Default::default() };
    f.tensors.insert("input_ids".into(), rows(&ids, 0, 16));
    write_safetensors(&calib, &f).unwrap();
    let out = dir.path().join("moe-er.onnx");
    let report = dir.path().join("moe-er");
    let res = std::process::Command::new(env!("CARGO_BIN_EXE_sharc"))
        .arg("compress")
        .arg(shared.join("models/moe-tiny.onnx"))
        .args(["--method", "expert-reuse", "--set", "window=2", "--set", "experts=6", "--calib"])
        .arg(&calib)
        .arg("-o")
        .arg(&out)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(res.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&res.stderr));
    assert!(stdout.contains("experts                    32 ->         12"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.with_extension("json")).unwrap()).unwrap();
    let d = &json["method_details"];
    assert_eq!((d["experts_before"].as_u64(), d["experts_after"].as_u64()), (Some(32), Some(12)));
    // 20 of 32 experts of 128·512 + 256·128 parameters each are gone.
    let (before, after) = (json["before"]["unique_params"].as_u64().unwrap(), json["after"]["unique_params"].as_u64());
    assert_eq!(after, Some(before - 20 * (128 * 512 + 256 * 128)));
    // The written model loads and runs on the interpreter.
    let g = sharc::onnx::import_file(&out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(logits(&g, &rows(&ids, 16, 17)).len(), 64 * 256);
}

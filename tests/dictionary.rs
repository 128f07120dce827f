//! `dictionary` on the real models: with as many atoms as layers the outputs
//! come back (≤ 1e-4); the derived weights survive `fold-constants`; the
//! exported ONNX stores atoms and coefficients (the file shrinks) and runs in
//! onnxruntime with the interpreter's outputs.

mod common;

use sharc::data::{TensorFile, read_safetensors, write_safetensors};
use sharc::interp::Interpreter;
use sharc::ir::{Evaluator, Graph, Tensor, Value};
use sharc::passes::sharing::dictionary::{Dictionary, DictionaryOptions, DictionaryReport};
use sharc::passes::{Pass, PassContext};

fn load(name: &str) -> Option<(Graph, TensorFile, std::path::PathBuf)> {
    let shared = common::shared_dir()?;
    let model = shared.join("models").join(format!("{name}.onnx"));
    let path = shared.join("models").join(format!("{name}.data.safetensors"));
    let g = sharc::onnx::import_file(&model).unwrap_or_else(|e| panic!("{e}"));
    let d = read_safetensors(&path).unwrap_or_else(|e| panic!("{e}"));
    Some((g, d, model))
}

/// The first `n` rows of every graph input, as one batch.
fn inputs(g: &Graph, d: &TensorFile, start: usize, n: usize) -> Vec<Value> {
    g.input_values()
        .iter()
        .map(|v| {
            let t = &d.tensors[&g.value_info(*v).name];
            let seq = t.shape()[1];
            let x = t.to_i64_vec().unwrap();
            Value::Tensor(Tensor::from_vec(&[n, seq], x[start * seq..(start + n) * seq].to_vec()))
        })
        .collect()
}

fn first_output(g: &Graph, x: &[Value]) -> Vec<f64> {
    let out = Interpreter::new().evaluate(g, x).unwrap_or_else(|e| panic!("{e}"));
    out[0].as_tensor().unwrap().to_f64_vec().unwrap()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn factorise(g: &mut Graph, o: DictionaryOptions, calib: Option<&[Vec<Value>]>) -> DictionaryReport {
    let ev = Interpreter::new();
    let mut cx = PassContext { evaluator: Some(&ev), calibration: calib, ..Default::default() };
    let mut pass = Dictionary::new(o);
    pass.run(g, &mut cx).unwrap_or_else(|e| panic!("{e}"));
    sharc::ir::infer_shapes(g).unwrap_or_else(|e| panic!("{e}"));
    sharc::ir::verify(g).unwrap_or_else(|e| panic!("{e:?}"));
    pass.report.unwrap()
}

#[test]
fn as_many_atoms_as_layers_gives_the_model_back() {
    for (name, roles) in [("minilm-l6", vec!["q", "k", "v", "o"]), ("gpt-tiny", vec!["qkv", "o"])] {
        let Some((mut g, d, _)) = load(name) else { return };
        let original = g.clone();
        let x = inputs(&g, &d, 0, 2);
        let o = DictionaryOptions {
            roles: roles.iter().map(|s| s.to_string()).collect(),
            atoms: 6.0,
            ..Default::default()
        };
        let r = factorise(&mut g, o, None);
        assert!(r.parts.iter().all(|p| p.atoms == 6 && (p.explained_energy - 1.0).abs() < 1e-9), "{}", r.to_text());
        let err = max_diff(&first_output(&original, &x), &first_output(&g, &x));
        eprintln!("{name}: full-atom dictionary max |diff| {err:.3e}");
        assert!(err <= 1e-4, "{name}: {err}");
    }
}

#[test]
fn fold_constants_leaves_the_derived_weights_alone() {
    let Some((mut g, _, _)) = load("gpt-tiny") else { return };
    let o = DictionaryOptions { roles: vec!["qkv".into(), "o".into()], atoms: 2.0, ..Default::default() };
    factorise(&mut g, o, None);
    let before = g.stats();
    let mut fold = sharc::passes::standard::FoldConstants::default();
    fold.run(&mut g, &mut PassContext::default()).unwrap_or_else(|e| panic!("{e}"));
    let after = g.stats();
    assert_eq!(before.unique_params, after.unique_params, "fold-constants grew or shrank the dictionary");
    assert!(sharc::ir::print(&g).contains("dictionary.qkv.l5"));
}

#[test]
fn dictionary_exports_smaller_onnx_that_onnxruntime_runs() {
    let Some((mut g, d, model)) = load("gpt-tiny") else { return };
    let calib = vec![inputs(&g, &d, 0, 4)];
    let o =
        DictionaryOptions { roles: vec!["qkv".into(), "o".into()], atoms: 3.0, residual_rank: 8, ..Default::default() };
    let r = factorise(&mut g, o, Some(&calib));
    eprintln!("{}", r.to_text());
    assert!(r.params_after < r.params_before);
    assert!(r.top1.is_some() && r.block_error.len() == 6);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpt-dict.onnx");
    sharc::onnx::export_file(&g, &path, &Default::default()).unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = (std::fs::metadata(&model).unwrap().len(), std::fs::metadata(&path).unwrap().len());
    eprintln!("gpt-tiny.onnx {a} B -> {b} B");
    let saved = (r.params_before - r.params_after) * 4;
    assert!(b + saved * 8 / 10 < a, "the file did not shrink by the parameters removed: {a} -> {b}");

    let x = inputs(&g, &d, 8, 2);
    let ours = Interpreter::new().evaluate(&g, &x).unwrap();
    let io = dir.path().join("io.safetensors");
    let mut f = TensorFile { tensors: Default::default(), metadata: Default::default() };
    f.tensors.insert("input_ids".into(), x[0].as_tensor().unwrap().clone());
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

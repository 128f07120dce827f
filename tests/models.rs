//! Real models end to end: the reference interpreter against onnxruntime's
//! outputs shipped in `shared/models/*.data.safetensors`.

mod common;

use sharc::data::read_safetensors;
use sharc::ir::{Evaluator, Graph, Tensor, Value};
use std::path::Path;

/// A model, its interpreter outputs by name, and onnxruntime's reference file.
type RefRun = (Graph, Vec<(String, Tensor)>, sharc::data::TensorFile);

/// Runs `model` on the reference inputs and returns (outputs by name, reference file).
fn run_reference(name: &str) -> Option<RefRun> {
    let shared = common::shared_dir()?;
    let model = shared.join("models").join(format!("{name}.onnx"));
    let data_path = shared.join("models").join(format!("{name}.data.safetensors"));
    let g = sharc::onnx::import_file(&model).unwrap_or_else(|e| panic!("{e}"));
    let data = read_safetensors(&data_path).unwrap_or_else(|e| panic!("{e}"));
    let inputs: Vec<Value> = g
        .input_values()
        .iter()
        .map(|&v| Value::Tensor(data.get(&g.value_info(v).name, &data_path).unwrap().clone()))
        .collect();
    let start = std::time::Instant::now();
    let out = sharc::interp::Interpreter::new().evaluate(&g, &inputs).unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!("{name}: interpreter ran in {:.2} s", start.elapsed().as_secs_f64());
    let named = g.outputs().iter().zip(out).map(|(o, v)| (o.name.clone(), v.into_tensor().unwrap())).collect();
    Some((g, named, data))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let (a, b) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn check_outputs(name: &str, tol: f64) -> Option<(Vec<(String, Tensor)>, sharc::data::TensorFile)> {
    let (_, outputs, data) = run_reference(name)?;
    for (out_name, t) in &outputs {
        let want = data.get(out_name, Path::new(name)).unwrap();
        let err = max_abs_diff(t, want);
        println!("{name}: output '{out_name}' max abs error vs onnxruntime = {err:.3e}");
        assert!(err <= tol, "{name}: '{out_name}' differs from onnxruntime by {err:.3e} (> {tol:.0e})");
    }
    Some((outputs, data))
}

#[test]
fn minilm_l6_matches_onnxruntime_on_all_96_sentences() {
    let Some((outputs, data)) = check_outputs("minilm-l6", 1e-4) else { return };
    // The sentence embedding (mean over the attention mask, then L2
    // normalisation) is a derived reference computed independently.
    let hidden = &outputs[0].1;
    let mask = data.tensors["attention_mask"].to_i64_vec().unwrap();
    let want = data.tensors["sentence_embedding"].to_f64_vec().unwrap();
    let h = hidden.to_f64_vec().unwrap();
    let (b, s, d) = (hidden.shape()[0], hidden.shape()[1], hidden.shape()[2]);
    let mut worst: f64 = 0.0;
    for i in 0..b {
        let mut e = vec![0.0; d];
        let mut n = 0.0;
        for t in 0..s {
            if mask[i * s + t] != 0 {
                n += 1.0;
                for k in 0..d {
                    e[k] += h[(i * s + t) * d + k];
                }
            }
        }
        let norm = e.iter().map(|x| (x / n) * (x / n)).sum::<f64>().sqrt();
        for k in 0..d {
            worst = worst.max((e[k] / n / norm - want[i * d + k]).abs());
        }
    }
    println!("minilm-l6: sentence embedding max abs error = {worst:.3e}");
    assert!(worst <= 1e-4);
}

#[test]
fn gpt_tiny_matches_onnxruntime() {
    check_outputs("gpt-tiny", 1e-4);
}

#[test]
fn moe_tiny_matches_onnxruntime() {
    check_outputs("moe-tiny", 1e-4);
}

//! `infer-shapes` then `simplify` on the real models: the rewritten graph
//! verifies and computes what the original computes (within 1e-5 on the
//! reference inputs), and the node counts before and after are printed.

mod common;

use sharc::data::read_safetensors;
use sharc::ir::{Evaluator, Graph, Tensor, Value};
use sharc_passes::{Pass, PassContext, RegisteredPass, Simplify, SimplifyOptions};
use std::time::Instant;

/// The first `rows` entries along axis 0 of a reference input.
fn first_rows(t: &Tensor, rows: usize) -> Tensor {
    let shape = t.shape();
    let n = shape.first().copied().unwrap_or(1);
    let rows = rows.min(n);
    let bytes = t.to_le_bytes().expect("reference inputs are numeric");
    let row = bytes.len() / n.max(1);
    let mut new_shape = shape.to_vec();
    if let Some(d) = new_shape.first_mut() {
        *d = rows;
    }
    Tensor::from_le_bytes(t.dtype(), &new_shape, &bytes[..row * rows]).expect("a row-major prefix is a tensor")
}

fn run(g: &Graph, inputs: &[Value]) -> Vec<Tensor> {
    sharc::interp::Interpreter::new()
        .evaluate(g, inputs)
        .unwrap_or_else(|e| panic!("{}: {e}", g.name))
        .into_iter()
        .map(|v| v.into_tensor().expect("tensor outputs"))
        .collect()
}

fn check(name: &str, rows: usize, options: SimplifyOptions) {
    let Some(shared) = common::shared_dir() else { return };
    let model = shared.join("models").join(format!("{name}.onnx"));
    let data_path = shared.join("models").join(format!("{name}.data.safetensors"));
    let mut g = sharc::onnx::import_file(&model).unwrap_or_else(|e| panic!("{e}"));
    sharc::ir::infer_shapes(&mut g).unwrap_or_else(|e| panic!("{name}: {e}"));
    let original = g.clone();
    let start = Instant::now();
    let mut cx = PassContext::default();
    let mode = if options.relaxed { "relaxed" } else { "exact" };
    let outcome = Simplify::new(options).run(&mut g, &mut cx).unwrap_or_else(|e| panic!("{name}: {e}"));
    let elapsed = start.elapsed().as_secs_f64();
    sharc::ir::verify(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
    let stats = &cx.statistics["simplify"];
    println!(
        "{name} ({mode}): {} nodes before, {} after ({} compute -> {} compute), simplify took {elapsed:.2} s, {outcome:?}",
        original.node_count(),
        g.node_count(),
        original.stats().compute_nodes,
        g.stats().compute_nodes
    );
    println!("{name}: statistics {stats:?}");
    println!("{}", cx.reports["simplify"]);
    assert_eq!(stats.get("ill-typed-nodes"), Some(&0), "{name}: a rule built ill-typed nodes");
    // Both exports repeat shape arithmetic and constants and spell out
    // scales that fold into products: simplify must find something.
    assert!(g.node_count() < original.node_count(), "{name}: simplify removed nothing");
    assert_eq!(g.stats().unique_bytes, original.stats().unique_bytes, "{name}: stored bytes changed");

    let data = read_safetensors(&data_path).unwrap_or_else(|e| panic!("{e}"));
    let inputs: Vec<Value> = original
        .input_values()
        .iter()
        .map(|&v| {
            let t = data.get(&original.value_info(v).name, &data_path).unwrap_or_else(|e| panic!("{e}"));
            Value::Tensor(first_rows(t, rows))
        })
        .collect();
    let want = run(&original, &inputs);
    let got = run(&g, &inputs);
    assert_eq!(want.len(), got.len());
    for ((w, o), out) in want.iter().zip(&got).zip(original.outputs()) {
        assert_eq!(w.shape(), o.shape(), "{name}: output '{}' changed shape", out.name);
        let (w, o) = (w.to_f64_vec().expect("numeric"), o.to_f64_vec().expect("numeric"));
        let err = w.iter().zip(&o).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        println!("{name} ({mode}): output '{}' max abs difference after simplify = {err:.3e}", out.name);
        assert!(err <= 1e-5, "{name}: output '{}' moved by {err:.3e}", out.name);
    }
}

/// Relaxed mode: float laws that hold up to rounding are used too (the
/// default uses only laws that hold bit for bit).
fn relaxed() -> SimplifyOptions {
    SimplifyOptions { relaxed: true, ..SimplifyOptions::default() }
}

#[test]
fn simplify_keeps_minilm_l6_outputs() {
    check("minilm-l6", 2, SimplifyOptions::default());
    check("minilm-l6", 2, relaxed());
}

#[test]
fn simplify_keeps_gpt_tiny_outputs() {
    check("gpt-tiny", 2, SimplifyOptions::default());
    check("gpt-tiny", 2, relaxed());
}

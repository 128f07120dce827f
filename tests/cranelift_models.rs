//! Real models on the Cranelift backend, against onnxruntime's reference
//! outputs in `shared/models/*.data.safetensors`, plus the backend's cache
//! and what weight sharing does to its memory.
//!
//! Tolerance: 1e-4 absolute, the same as the interpreter's model tests. The
//! backend reassociates sums (four SIMD lanes, GEMM blocking) and uses its
//! own exp/erf polynomials, which moves results by about 1e-6 on these
//! models; the recorded differences are printed.

mod common;

use sharc::data::read_safetensors;
use sharc::ir::{Graph, Op, Tensor, WeightId};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let (a, b) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn model_path(shared: &Path, name: &str) -> (PathBuf, PathBuf) {
    (shared.join("models").join(format!("{name}.onnx")), shared.join("models").join(format!("{name}.data.safetensors")))
}

fn check(name: &str, tol: f64) {
    let Some(shared) = common::shared_dir() else { return };
    let (model, data_path) = model_path(&shared, name);
    let g = sharc::onnx::import_file(&model).unwrap_or_else(|e| panic!("{e}"));
    let data = read_safetensors(&data_path).unwrap_or_else(|e| panic!("{e}"));
    let inputs: Vec<Tensor> =
        g.input_values().iter().map(|&v| data.get(&g.value_info(v).name, &data_path).unwrap().clone()).collect();
    let ev = sharc_cranelift::CraneliftEvaluator::default();
    let compiled = ev.prepare(&g, &inputs).unwrap_or_else(|e| panic!("{name}: {e}"));
    let st = compiled.stats();
    println!(
        "{name}: compiled in {:.0} ms: {} compute nodes, {} folded, {} views, {} fused into {} kernels, {} matmuls, {} on the interpreter {:?}",
        compiled.compile_time().as_secs_f64() * 1e3,
        st.compute_nodes,
        st.folded_nodes,
        st.view_nodes,
        st.fused_nodes,
        st.kernels,
        st.matmuls,
        st.fallback_nodes,
        st.fallback_ops
    );
    let start = std::time::Instant::now();
    let out = compiled.run(&inputs).unwrap_or_else(|e| panic!("{name}: {e}"));
    println!("{name}: ran in {:.1} ms", start.elapsed().as_secs_f64() * 1e3);
    for (o, t) in g.outputs().iter().zip(&out) {
        let want = data.get(&o.name, &data_path).unwrap();
        let err = max_abs_diff(t, want);
        println!("{name}: output '{}' max abs error vs onnxruntime = {err:.3e}", o.name);
        assert!(err <= tol, "{name}: '{}' differs from onnxruntime by {err:.3e} (> {tol:.0e})", o.name);
    }
}

#[test]
fn minilm_l6_matches_onnxruntime() {
    check("minilm-l6", 1e-4);
}

#[test]
fn gpt_tiny_matches_onnxruntime() {
    check("gpt-tiny", 1e-4);
}

#[test]
fn moe_tiny_matches_onnxruntime() {
    check("moe-tiny", 1e-4);
}

#[test]
fn evaluator_compiles_once_per_shape() {
    let Some(shared) = common::shared_dir() else { return };
    let (model, data_path) = model_path(&shared, "gpt-tiny");
    let g = sharc::onnx::import_file(&model).unwrap();
    let data = read_safetensors(&data_path).unwrap();
    let ids = data.get("input_ids", &data_path).unwrap().clone();
    let small = Tensor::from_vec(&[2, 8], ids.to_i64_vec().unwrap()[..16].to_vec());
    let ev = sharc_cranelift::CraneliftEvaluator::default();
    use sharc::ir::{Evaluator, Value};
    let a = ev.evaluate(&g, &[Value::Tensor(ids.clone())]).unwrap();
    let b = ev.evaluate(&g, &[Value::Tensor(ids)]).unwrap();
    assert_eq!(a, b);
    ev.evaluate(&g, &[Value::Tensor(small.clone())]).unwrap();
    ev.evaluate(&g, &[Value::Tensor(small)]).unwrap();
    assert_eq!(ev.cache_stats(), (2, 2), "two shapes compile once each; the repeats hit the cache");
}

/// Makes every encoder layer of minilm-l6 use layer 0's weights: for each
/// weight node read by a node of `/m/encoder/layer.L/...`, the same role in
/// layer 0 (same node path after the layer prefix, same input port) gives
/// the weight id to use. Returns how many weight nodes were re-pointed.
fn tie_minilm_layers(g: &mut Graph) -> usize {
    let mut role_of: HashMap<(String, u32), WeightId> = HashMap::new();
    let mut uses: Vec<(sharc::ir::NodeId, usize, String, u32)> = Vec::new();
    for id in g.node_ids().collect::<Vec<_>>() {
        let name = g.node(id).name.clone();
        let Some(rest) = name.strip_prefix("/m/encoder/layer.") else { continue };
        let Some((layer, path)) = rest.split_once('/') else { continue };
        let Ok(layer) = layer.parse::<usize>() else { continue };
        for (port, v) in g.node_inputs(id).into_iter().enumerate() {
            let Some(v) = v else { continue };
            if let Op::Weight(w) = g.node(v.node).op {
                if layer == 0 {
                    role_of.insert((path.to_string(), port as u32), w);
                } else {
                    uses.push((v.node, layer, path.to_string(), port as u32));
                }
            }
        }
    }
    let mut n = 0;
    for (wnode, _, path, port) in uses {
        if let Some(&w0) = role_of.get(&(path, port)) {
            g.node_mut(wnode).op = Op::Weight(w0);
            n += 1;
        }
    }
    g.remove_unused_weights();
    n
}

/// Runs in a child process (see `tied_weights_are_stored_once`): compiles
/// and runs minilm-l6, tied or not, and prints its peak RSS.
#[test]
fn rss_probe() {
    let Ok(which) = std::env::var("SHARC_RSS_PROBE") else { return };
    let Some(shared) = common::shared_dir() else { return };
    let (model, _) = model_path(&shared, "minilm-l6");
    let mut g = sharc::onnx::import_file(&model).unwrap();
    if which == "tied" {
        assert!(tie_minilm_layers(&mut g) > 0);
    }
    let ids = Tensor::from_vec(&[1, 128], vec![1i64; 128]);
    let inputs = vec![ids.clone(), ids.clone(), Tensor::from_vec(&[1, 128], vec![0i64; 128])];
    let ev = sharc_cranelift::CraneliftEvaluator::default();
    let compiled = ev.prepare(&g, &inputs).unwrap();
    compiled.run(&inputs).unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = hwm.split_whitespace().nth(1).unwrap().parse().unwrap();
    println!("RSS_PROBE {which} {kb} {}", g.stats().unique_bytes);
}

fn probe(which: &str) -> Option<(u64, u64)> {
    let exe = std::env::current_exe().ok()?;
    let out = std::process::Command::new(exe)
        .args(["--exact", "rss_probe", "--nocapture", "--test-threads", "1"])
        .env("SHARC_RSS_PROBE", which)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // libtest may print the test's name on the same line first.
    let line = text.lines().find_map(|l| l.find("RSS_PROBE").map(|i| &l[i..]))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    Some((f[2].parse().ok()?, f[3].parse().ok()?))
}

#[test]
fn tied_weights_are_stored_once() {
    if common::shared_dir().is_none() {
        return;
    }
    let (untied_kb, untied_bytes) = probe("untied").expect("the untied probe ran");
    let (tied_kb, tied_bytes) = probe("tied").expect("the tied probe ran");
    println!(
        "minilm-l6 peak RSS on the cranelift backend: untied {:.1} MB ({:.1} MB unique weights), tied {:.1} MB ({:.1} MB unique weights)",
        untied_kb as f64 / 1e3,
        untied_bytes as f64 / 1e6,
        tied_kb as f64 / 1e3,
        tied_bytes as f64 / 1e6
    );
    // Layers 1..5 hold about 5/6 of the encoder's weights; the embeddings
    // (~47 MB of the 90) stay. The saving must show up in memory: at least
    // 80% of the bytes that tying removed.
    let saved_weights = untied_bytes.saturating_sub(tied_bytes);
    let saved_rss = (untied_kb.saturating_sub(tied_kb)) * 1024;
    assert!(
        saved_rss as f64 >= 0.8 * saved_weights as f64,
        "tying saved {saved_weights} bytes of weights but only {saved_rss} bytes of RSS"
    );
}

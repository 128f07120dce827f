//! The MLIR backend's CPU path end to end (needs `--features mlir`, i.e.
//! LLVM/MLIR 22): the real models against the reference interpreter and
//! onnxruntime, and the float subset of ONNX's node suite with its own status
//! file (`tests/mlir_node_status.txt`), which must match reality in both
//! directions. `SHARC_UPDATE_STATUS=1` rewrites it; `SHARC_NODE_FILTER=sub`
//! runs only matching cases and prints each.
//!
//! Everything lives in this one file so that only one test binary links the
//! (large, static) MLIR libraries.

#![cfg(feature = "mlir")]

mod common;

use sharc::data::read_safetensors;
use sharc::ir::{DType, Evaluator, Tensor, TensorData, Type, Value};
use sharc::mlir::MlirCpu;
use sharc::mlir::nvvm::{LIBDEVICE_ENV, NvvmTarget, find_libdevice};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The largest absolute difference; a NaN on one side only counts as an
/// infinite difference (`f64::max` would silently skip it).
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let (a, b) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            if x.is_nan() || y.is_nan() {
                if x.is_nan() && y.is_nan() { 0.0 } else { f64::INFINITY }
            } else {
                (x - y).abs()
            }
        })
        .fold(0.0, f64::max)
}

/// The first `rows` rows of a reference tensor (rows along dim 0).
fn rows(t: &Tensor, rows: usize) -> Tensor {
    let shape = t.shape();
    let n = rows.min(shape[0]);
    let inner: usize = shape[1..].iter().product();
    let mut s = shape.to_vec();
    s[0] = n;
    match t.data() {
        TensorData::I64(a) => Tensor::from_vec(&s, a.iter().copied().take(n * inner).collect::<Vec<_>>()),
        TensorData::F32(a) => Tensor::from_vec(&s, a.iter().copied().take(n * inner).collect::<Vec<_>>()),
        _ => panic!("unexpected reference dtype {}", t.dtype()),
    }
}

/// Runs `name` on the first `batch` rows of its reference data through the
/// MLIR CPU path and the interpreter, and checks both against onnxruntime.
fn check_model(name: &str, batch: usize) {
    let Some(shared) = common::shared_dir() else { return };
    let model = shared.join("models").join(format!("{name}.onnx"));
    let data_path = shared.join("models").join(format!("{name}.data.safetensors"));
    let g = sharc::onnx::import_file(&model).unwrap_or_else(|e| panic!("{e}"));
    let data = read_safetensors(&data_path).unwrap_or_else(|e| panic!("{e}"));
    let inputs: Vec<Tensor> =
        g.input_values().iter().map(|&v| rows(&data.tensors[&g.value_info(v).name], batch)).collect();
    if let Ok(dir) = std::env::var("SHARC_MLIR_DUMP") {
        let dims = sharc::mlir::compile::dims_from_inputs(&g, &inputs).unwrap();
        let l = sharc::mlir::lower_graph(&g, &dims).unwrap_or_else(|e| panic!("{name}: {e}"));
        std::fs::write(Path::new(&dir).join(format!("{name}.mlir")), &l.text).unwrap();
    }
    let start = std::time::Instant::now();
    let mut exe = MlirCpu::default().compile_for(&g, &inputs).unwrap_or_else(|e| panic!("{name}: {e}"));
    let compiled = start.elapsed();
    let start = std::time::Instant::now();
    let got = exe.run(&inputs).unwrap_or_else(|e| panic!("{name}: {e}"));
    let ran = start.elapsed();
    let values: Vec<Value> = inputs.iter().cloned().map(Value::Tensor).collect();
    let interp = sharc::interp::Interpreter::new().evaluate(&g, &values).unwrap();
    for ((o, t), i) in g.outputs().iter().zip(&got).zip(&interp) {
        let want = rows(&data.tensors[&o.name], batch);
        let vs_ort = max_abs_diff(t, &want);
        let vs_interp = max_abs_diff(t, i.as_tensor().unwrap());
        println!(
            "{name} (batch {batch}): '{}' mlir vs onnxruntime {vs_ort:.3e}, vs interp {vs_interp:.3e}; \
             {} kernels ({} tiled contractions), compiled in {:.2} s, ran in {:.3} s",
            o.name,
            exe.kernels,
            exe.tiled,
            compiled.as_secs_f64(),
            ran.as_secs_f64()
        );
        assert!(vs_ort <= 1e-4, "{name}: '{}' differs from onnxruntime by {vs_ort:.3e}", o.name);
        assert!(vs_interp <= 1e-4, "{name}: '{}' differs from the interpreter by {vs_interp:.3e}", o.name);
    }
    // Every model has matrix products; none may fall back to plain loops.
    assert!(exe.tiled > 0, "{name}: no contraction was tiled (the tiling pipeline failed)");
}

#[test]
fn minilm_l6_matches_references() {
    check_model("minilm-l6", 8);
}

#[test]
fn gpt_tiny_matches_references() {
    check_model("gpt-tiny", 8);
}

/// Mixture of experts: routing by TopK/OneHot, each expert's tokens picked by
/// NonZero (a data-dependent count), gathered, run and scattered back.
#[test]
fn moe_tiny_matches_references() {
    check_model("moe-tiny", 4);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pass,
    Fail,
    Unsupported,
}

impl Status {
    fn text(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Unsupported => "unsupported",
        }
    }
}

fn close(a: f64, b: f64) -> bool {
    let (rtol, atol) = (1e-3, 1e-7);
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= atol + rtol * b.abs()
}

/// The float subset: every output is a float tensor and every input a tensor
/// of a numeric or bool type.
fn in_float_subset(g: &sharc::ir::Graph) -> bool {
    let float = |t: &Type| matches!(t.dtype(), Some(DType::F32 | DType::F64));
    let plain = |t: &Type| {
        t.dtype().is_some_and(|d| d.is_float() || d.is_integer() || d == DType::Bool)
            && !matches!(t.dtype(), Some(DType::String))
    };
    !g.outputs().is_empty()
        && g.outputs().iter().all(|o| float(g.value_type(o.value)))
        && g.input_values().iter().all(|&v| plain(g.value_type(v)))
}

fn run_case(dir: &Path) -> Option<(Status, String)> {
    let g = sharc::onnx::import_file(dir.join("model.onnx")).ok()?;
    if !in_float_subset(&g) {
        return None;
    }
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    sets.sort();
    let backend = MlirCpu { opt_level: 0 };
    for set in sets {
        let mut inputs = Vec::new();
        for (f, &v) in common::numbered(&set, "input_").iter().zip(&g.input_values()) {
            match sharc::onnx::read_value_pb(&std::fs::read(f).unwrap_or_default(), g.value_type(v)) {
                Ok(x) => inputs.push(x),
                Err(e) => return Some((Status::Fail, format!("reading inputs: {e}"))),
            }
        }
        let got = match backend.evaluate(&g, &inputs) {
            Ok(v) => v,
            Err(e) if e.unsupported => return Some((Status::Unsupported, e.to_string())),
            Err(e) => return Some((Status::Fail, e.to_string())),
        };
        for (i, (f, got)) in common::numbered(&set, "output_").iter().zip(&got).enumerate() {
            let ty = g.value_type(g.outputs()[i].value).clone();
            let want = match sharc::onnx::read_value_pb(&std::fs::read(f).unwrap_or_default(), &ty) {
                Ok(Value::Tensor(t)) => t,
                _ => return Some((Status::Fail, "reading expected outputs".into())),
            };
            let Some(got) = got.as_tensor() else { return Some((Status::Fail, "not a tensor".into())) };
            if got.shape() != want.shape() || got.dtype() != want.dtype() {
                return Some((Status::Fail, format!("output {i}: {:?} vs {:?}", got.shape(), want.shape())));
            }
            let (a, b) = (got.to_f64_vec().unwrap_or_default(), want.to_f64_vec().unwrap_or_default());
            if let Some(k) = a.iter().zip(&b).position(|(x, y)| !close(*x, *y)) {
                return Some((Status::Fail, format!("output {i} element {k}: {} but expected {}", a[k], b[k])));
            }
        }
    }
    Some((Status::Pass, String::new()))
}

fn status_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("mlir_node_status.txt")
}

#[test]
fn node_suite_float_subset() {
    let Some(shared) = common::shared_dir() else { return };
    let filter = std::env::var("SHARC_NODE_FILTER").ok();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(shared.join("onnx-node"))
        .expect("onnx-node folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("model.onnx").is_file())
        .filter(|p| filter.as_deref().is_none_or(|f| p.to_string_lossy().contains(f)))
        .collect();
    cases.sort();
    let mut got: BTreeMap<String, Status> = BTreeMap::new();
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let outcome = std::panic::catch_unwind(|| run_case(dir));
        let (status, why) = match outcome {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(_) => (Status::Fail, "panicked".into()),
        };
        if filter.is_some() {
            println!("{name}: {} {why}", status.text());
        }
        got.insert(name, status);
    }
    let count = |s: Status| got.values().filter(|&&x| x == s).count();
    println!(
        "mlir onnx-node float subset: {} passed, {} failed, {} unsupported",
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Unsupported)
    );
    if filter.is_some() {
        return;
    }
    let mut text = String::from(
        "# MLIR CPU backend on the float subset of ONNX's node tests (tests/mlir_backend.rs).\n\
         # Regenerate with SHARC_UPDATE_STATUS=1 cargo test --features mlir --test mlir_backend; review the diff.\n",
    );
    for (k, v) in &got {
        text.push_str(&format!("{k} {}\n", v.text()));
    }
    if std::env::var("SHARC_UPDATE_STATUS").as_deref() == Ok("1") {
        std::fs::write(status_path(), &text).unwrap();
        return;
    }
    let recorded = std::fs::read_to_string(status_path()).unwrap_or_default();
    let want: BTreeMap<&str, &str> =
        recorded.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_once(' ')).collect();
    let mut drift = Vec::new();
    for (k, v) in &got {
        if want.get(k.as_str()) != Some(&v.text()) {
            drift.push(format!("{k}: recorded {:?}, now {}", want.get(k.as_str()), v.text()));
        }
    }
    for k in want.keys() {
        if !got.contains_key(*k) {
            drift.push(format!("{k}: recorded but no longer in the float subset"));
        }
    }
    assert!(drift.is_empty(), "status drift ({}):\n{}", drift.len(), drift.join("\n"));
}

/// The MoE dispatch pattern in miniature: the rows of `t` where `x` is
/// non-zero are picked (a data-dependent count), doubled and written back.
const PICK: &str = r#"graph @pick(%x: f32[5], %t: f32[5, 3]) -> (%y) {
  %axes0 = const i64[1] [0]
  %axes1 = const i64[1] [1]
  %two = const f32[1] [2.0]
  %nz = NonZero(%x) : ?
  %rows = Squeeze(%nz, %axes0) : ?
  %picked = Gather(%t, %rows) {axis = 0} : ?
  %upd = Mul(%picked, %two) : ?
  %col = Unsqueeze(%rows, %axes1) : ?
  %shape = Shape(%picked) : ?
  %idx = Expand(%col, %shape) : ?
  %y = ScatterElements(%t, %idx, %upd) {axis = 0} : ?
}
"#;

#[test]
fn data_dependent_pick_and_scatter_matches_interpreter() {
    let g = sharc::ir::parse(PICK).unwrap_or_else(|e| panic!("{e}"));
    let t = Tensor::from_vec(&[5, 3], (0..15).map(|i| i as f32 - 7.0).collect::<Vec<_>>());
    // No rows, some rows, all rows: the count is 0, 2 and 5.
    for x in [[0.0f32; 5], [0.0, 1.5, 0.0, -2.0, 0.0], [1.0; 5]] {
        let inputs = [Tensor::from_vec(&[5], x.to_vec()), t.clone()];
        let mut exe = MlirCpu::default().compile_for(&g, &inputs).unwrap_or_else(|e| panic!("{e}"));
        let got = exe.run(&inputs).unwrap();
        let values: Vec<Value> = inputs.iter().cloned().map(Value::Tensor).collect();
        let want = sharc::interp::Interpreter::new().evaluate(&g, &values).unwrap();
        assert_eq!(got[0].to_f64_vec(), want[0].as_tensor().unwrap().to_f64_vec(), "x = {x:?}");
    }
}

/// A small MLP block in IR text: matmul + bias + tanh-GELU, then LayerNorm.
const MLP: &str = r#"graph @mlp(%x: f32[batch, 64]) -> (%y) {
  %w = weight @w : f32[64, 128]
  %b = weight @b : f32[128]
  %g = weight @g : f32[128]
  %h = MatMul(%x, %w) : f32[batch, 128]
  %hb = Add(%h, %b) : f32[batch, 128]
  %a = Gelu(%hb) {approximate = "tanh"} : f32[batch, 128]
  %y = LayerNormalization(%a, %g, %b) : f32[batch, 128]
}
"#;

fn mlp_graph() -> sharc::ir::Graph {
    graph_with_weights(MLP)
}

/// Parses IR text and gives every weight deterministic small values.
fn graph_with_weights(text: &str) -> sharc::ir::Graph {
    use sharc::ir::{Tensor, Weight};
    let mut g = sharc::ir::parse(text).unwrap_or_else(|e| panic!("{e}"));
    // Deterministic weights: small values that exercise every op.
    let ids: Vec<_> = g.weights.iter().map(|(id, w)| (id, w.shape.clone())).collect();
    for (id, shape) in ids {
        let n: usize = shape.iter().product();
        let vals: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 400.0).collect();
        let name = g.weights.get(id).unwrap().name.clone();
        *g.weights.get_mut(id).unwrap() = Weight::from_tensor(name, Tensor::from_vec(&shape, vals));
    }
    g
}

#[test]
fn mlp_block_fuses_and_matches_interpreter() {
    let g = mlp_graph();
    let x: Vec<f32> = (0..4 * 64).map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0).collect();
    let x = Tensor::from_vec(&[4, 64], x);
    if let Ok(dir) = std::env::var("SHARC_MLIR_DUMP") {
        let l = sharc::mlir::lower_graph(&g, &sharc::mlir::parse_dims(&["batch=4"]).unwrap()).unwrap();
        std::fs::write(Path::new(&dir).join("mlp.mlir"), &l.text).unwrap();
    }
    let mut exe = MlirCpu::default().compile_for(&g, std::slice::from_ref(&x)).unwrap();
    let got = exe.run(std::slice::from_ref(&x)).unwrap();
    let want = sharc::interp::Interpreter::new().evaluate(&g, &[Value::Tensor(x)]).unwrap();
    let err = max_abs_diff(&got[0], want[0].as_tensor().unwrap());
    println!("mlp block: {} kernels after fusion, max abs error vs interp {err:.3e}", exe.kernels);
    assert!(err <= 1e-4, "{err}");
    // Unfused this is 8 loop nests (fill, matmul, bias, GELU, LayerNorm's
    // sum, variance and normalisation, plus the variance's fill); fusion
    // folds bias + GELU into their consumers.
    assert!(exe.kernels <= 7, "{} kernels", exe.kernels);
    // The matrix product is tiled, with bias + GELU computed per tile.
    assert_eq!(exe.tiled, 1);
}

/// A pre-LayerNorm transformer block: 4-head self-attention and a GELU MLP,
/// each with a residual connection.
const BLOCK: &str = r#"graph @block(%x: f32[seq, 64]) -> (%y) {
  %g1 = weight @g1 : f32[64]
  %be1 = weight @be1 : f32[64]
  %wq = weight @wq : f32[64, 64]
  %wk = weight @wk : f32[64, 64]
  %wv = weight @wv : f32[64, 64]
  %wo = weight @wo : f32[64, 64]
  %g2 = weight @g2 : f32[64]
  %be2 = weight @be2 : f32[64]
  %w1 = weight @w1 : f32[64, 256]
  %b1 = weight @b1 : f32[256]
  %w2 = weight @w2 : f32[256, 64]
  %b2 = weight @b2 : f32[64]
  %heads = const i64[3] [0, 4, 16]
  %flat = const i64[2] [0, 64]
  %scale = const f32[1] [0.25]
  %h = LayerNormalization(%x, %g1, %be1) {axis = -1, epsilon = 1e-5} : f32[seq, 64]
  %q = MatMul(%h, %wq) : f32[seq, 64]
  %k = MatMul(%h, %wk) : f32[seq, 64]
  %v = MatMul(%h, %wv) : f32[seq, 64]
  %q3 = Reshape(%q, %heads) : f32[seq, 4, 16]
  %k3 = Reshape(%k, %heads) : f32[seq, 4, 16]
  %v3 = Reshape(%v, %heads) : f32[seq, 4, 16]
  %qh = Transpose(%q3) {perm = [1, 0, 2]} : f32[4, seq, 16]
  %kh = Transpose(%k3) {perm = [1, 2, 0]} : f32[4, 16, seq]
  %vh = Transpose(%v3) {perm = [1, 0, 2]} : f32[4, seq, 16]
  %s = MatMul(%qh, %kh) : f32[4, seq, seq]
  %ss = Mul(%s, %scale) : f32[4, seq, seq]
  %p = Softmax(%ss) {axis = -1} : f32[4, seq, seq]
  %o = MatMul(%p, %vh) : f32[4, seq, 16]
  %ot = Transpose(%o) {perm = [1, 0, 2]} : f32[seq, 4, 16]
  %o2 = Reshape(%ot, %flat) : f32[seq, 64]
  %a = MatMul(%o2, %wo) : f32[seq, 64]
  %r1 = Add(%x, %a) : f32[seq, 64]
  %h2 = LayerNormalization(%r1, %g2, %be2) {axis = -1, epsilon = 1e-5} : f32[seq, 64]
  %m1 = MatMul(%h2, %w1) : f32[seq, 256]
  %m1b = Add(%m1, %b1) : f32[seq, 256]
  %ge = Gelu(%m1b) : f32[seq, 256]
  %m2 = MatMul(%ge, %w2) : f32[seq, 64]
  %m2b = Add(%m2, %b2) : f32[seq, 64]
  %y = Add(%r1, %m2b) : f32[seq, 64]
}
"#;

/// The kernel count of one transformer block after fusion, by kind, as a
/// snapshot: a change in fusion shows up as a reviewed diff. The block also
/// has to match the interpreter.
#[test]
fn transformer_block_kernel_count() {
    let g = graph_with_weights(BLOCK);
    let dims = sharc::mlir::parse_dims(&["seq=16"]).unwrap();
    let lowered = sharc::mlir::lower_graph(&g, &dims).unwrap_or_else(|e| panic!("{e}"));
    let stages = sharc::mlir::compile::cpu_stages(&lowered).unwrap_or_else(|e| panic!("{e}"));
    if let Ok(dir) = std::env::var("SHARC_MLIR_DUMP") {
        for (name, text) in &stages {
            std::fs::write(Path::new(&dir).join(format!("block.{name}.mlir")), text).unwrap();
        }
    }
    let text = |stage: &str| &stages.iter().find(|(n, _)| n == stage).unwrap().1;
    let before = sharc::mlir::compile::count_kernels(text("tensor"));
    let after = sharc::mlir::compile::count_kernels(text("fused"));
    let tiled = sharc::mlir::compile::count_kernels(text("tiled"));
    let kinds = |stage: &str| -> String {
        let k = sharc::mlir::compile::kernel_stats(text(stage));
        k.iter().map(|(k, n)| format!("  {k}: {n}")).collect::<Vec<_>>().join("\n")
    };
    let report = format!(
        "graph ops in the block: {}\nkernels as lowered: {before}\nkernels after elementwise fusion: {after}\n{}\n\
         loop nests after tiling with epilogue fusion: {tiled}\n{}",
        lowered.lowered_nodes,
        kinds("fused"),
        kinds("tiled")
    );
    println!("{report}");
    insta::assert_snapshot!("transformer_block_kernels", report);
    assert!(after < before, "elementwise fusion merged nothing ({before} -> {after})");
    assert!(tiled < after, "tiling fused no epilogue ({after} -> {tiled})");
    let x: Vec<f32> = (0..16 * 64).map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0).collect();
    let x = Tensor::from_vec(&[16, 64], x);
    let mut exe = MlirCpu::default().compile_for(&g, std::slice::from_ref(&x)).unwrap();
    let got = exe.run(std::slice::from_ref(&x)).unwrap();
    let want = sharc::interp::Interpreter::new().evaluate(&g, &[Value::Tensor(x)]).unwrap();
    let err = max_abs_diff(&got[0], want[0].as_tensor().unwrap());
    println!("transformer block: max abs error vs interp {err:.3e}");
    assert!(err <= 1e-4, "{err}");
}

/// Matmul + bias + ReLU: arithmetic only, so its PTX needs no libdevice.
const RELU_MLP: &str = r#"graph @relu_mlp(%x: f32[batch, 64]) -> (%y) {
  %w = weight @w : f32[64, 128]
  %b = weight @b : f32[128]
  %h = MatMul(%x, %w) : f32[batch, 128]
  %hb = Add(%h, %b) : f32[batch, 128]
  %y = Relu(%hb) : f32[batch, 128]
}
"#;

#[test]
fn gpu_math_without_libdevice_is_a_clear_error() {
    let g = mlp_graph();
    let lowered = sharc::mlir::lower_graph(&g, &sharc::mlir::parse_dims(&["batch=8"]).unwrap()).unwrap();
    let target = NvvmTarget::with_libdevice("sm_90", None).unwrap();
    let err = sharc::mlir::compile::gpu_compile_for(&lowered, &target).expect_err("tanh-GELU needs exp").to_string();
    assert!(err.contains("__nv_") && err.contains(LIBDEVICE_ENV), "{err}");
}

/// libdevice, where this machine has it. scripts/test.sh (and so CI) sets
/// `SHARC_LIBDEVICE` to the copy scripts/setup.sh extracted from pip's CUDA
/// compiler package, so there this test cannot pass by skipping.
fn libdevice_here() -> Option<std::path::PathBuf> {
    let found = find_libdevice().unwrap();
    if found.is_none() {
        assert!(
            std::env::var_os("SHARC_REQUIRE_LIBDEVICE").is_none(),
            "SHARC_REQUIRE_LIBDEVICE is set but no libdevice"
        );
        eprintln!("no libdevice.10.bc here (set {LIBDEVICE_ENV}): skipping the GPU math checks");
    }
    found
}

#[test]
fn gpu_math_links_libdevice_into_self_contained_ptx() {
    let Some(libdevice) = libdevice_here() else { return };
    let g = mlp_graph();
    let lowered = sharc::mlir::lower_graph(&g, &sharc::mlir::parse_dims(&["batch=8"]).unwrap()).unwrap();
    for chip in ["sm_80", "sm_90"] {
        let target = NvvmTarget::with_libdevice(chip, Some(libdevice.clone())).unwrap();
        let gpu = sharc::mlir::compile::gpu_compile_for(&lowered, &target).unwrap_or_else(|e| panic!("{chip}: {e}"));
        assert!(!gpu.ptx.contains("__nv_"), "{chip}: libdevice calls left in the PTX");
        // libdevice's expf is exp2 of a scaled argument: the hardware's ex2.
        assert!(gpu.ptx.contains("ex2.approx"), "{chip}: exp was not inlined from libdevice");
    }
}

/// Every op of the three real models lowers to PTX that needs nothing but
/// the driver (the math inlined from libdevice).
#[test]
fn real_models_compile_to_self_contained_ptx() {
    if libdevice_here().is_none() {
        return;
    }
    for (model, dims) in
        [("gpt-tiny", "batch=2,seq=16"), ("moe-tiny", "batch=2,seq=16"), ("minilm-l6", "batch=1,seq=16")]
    {
        let Some(shared) = common::shared_dir() else { return };
        let path = shared.join("models").join(format!("{model}.onnx"));
        let g = sharc::onnx::import_file(&path).unwrap_or_else(|e| panic!("{e}"));
        let dims: Vec<&str> = dims.split(',').collect();
        let lowered = sharc::mlir::lower_graph(&g, &sharc::mlir::parse_dims(&dims).unwrap()).unwrap();
        let gpu = sharc::mlir::compile::gpu_compile(&lowered, "sm_90").unwrap_or_else(|e| panic!("{model}: {e}"));
        assert!(!gpu.ptx.contains("__nv_"), "{model}: libdevice calls left in the PTX");
        println!("{model}: {} kernel launches, {} bytes of PTX", gpu.kernels.len(), gpu.ptx.len());
    }
}

#[test]
fn gpu_kernels_for_sm80_and_sm90() {
    let g = sharc::ir::parse(RELU_MLP).unwrap();
    let dims = sharc::mlir::parse_dims(&["batch=8"]).unwrap();
    let lowered = sharc::mlir::lower_graph(&g, &dims).unwrap();
    for chip in ["sm_80", "sm_90"] {
        let gpu = sharc::mlir::compile::gpu_compile(&lowered, chip).unwrap_or_else(|e| panic!("{chip}: {e}"));
        assert!(gpu.ptx.contains(&format!(".target {chip}")), "{chip}: PTX targets another chip");
        assert!(gpu.ptx.contains(".entry"), "{chip}: no kernel entry in the PTX");
        assert!(!gpu.ptx.contains("__nv_"), "{chip}: PTX needs libdevice");
        insta::assert_snapshot!(format!("mlp_kernels_{chip}"), gpu.kernels.join("\n"));
    }
}

//! Latency of the MLIR CPU path on minilm-l6 (batch 1 × seq 128 and batch 8 ×
//! seq 128) and gpt-tiny, next to the reference interpreter, with compile
//! time. A benchmark, never a test: it prints numbers and ratios.
//!
//! `cargo bench -p sharc-mlir --features mlir --bench mlir_cpu`; the models
//! come from `$SHARC_SHARED_DIR/models` (default `../shared/models`). Set
//! `SHARC_BENCH_ORT=1` to also time onnxruntime through python3 (2 threads,
//! all optimisations) on the same shapes.

#[cfg(feature = "mlir")]
fn main() {
    use sharc_ir::{DType, Evaluator, Tensor, Value};
    use std::path::PathBuf;
    use std::time::Instant;

    let shared = std::env::var_os("SHARC_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (model, batch, seq) in [("minilm-l6", 1, 128), ("minilm-l6", 8, 128), ("gpt-tiny", 8, 64)] {
        let path = shared.join("models").join(format!("{model}.onnx"));
        let g = match sharc_onnx::import_file(&path) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("skipping {model}: {e}");
                continue;
            }
        };
        let inputs: Vec<Tensor> = g
            .input_values()
            .iter()
            .map(|&v| {
                let dt = g.value_type(v).dtype().unwrap_or(DType::I64);
                let ids: Vec<i64> =
                    (0..batch * seq).map(|i| if model == "minilm-l6" { 1 } else { (i % 200) as i64 }).collect();
                match dt {
                    DType::I64 => Tensor::from_vec(&[batch, seq], ids),
                    _ => Tensor::zeros(dt, &[batch, seq]),
                }
            })
            .collect();
        let t0 = Instant::now();
        let mut exe = match sharc_mlir::MlirCpu::default().compile_for(&g, &inputs) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("{model}: {e}");
                continue;
            }
        };
        let compile = t0.elapsed().as_secs_f64();
        let mut times = Vec::new();
        for _ in 0..7 {
            let t = Instant::now();
            exe.run(&inputs).expect("run");
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let mlir = median(times);
        let values: Vec<Value> = inputs.iter().cloned().map(Value::Tensor).collect();
        let mut times = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            sharc_interp::Interpreter::new().evaluate(&g, &values).expect("interp");
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let interp = median(times);
        println!(
            "{model} batch {batch} x seq {seq}: mlir-cpu {mlir:.1} ms (compile {compile:.2} s, {} kernels), \
             interp {interp:.1} ms, mlir/interp {:.2}",
            exe.kernels,
            mlir / interp
        );
        if std::env::var("SHARC_BENCH_ORT").as_deref() == Ok("1") {
            let script = format!(
                "import onnxruntime as ort, numpy as np, time\n\
                 o = ort.SessionOptions(); o.intra_op_num_threads = 2; o.inter_op_num_threads = 1\n\
                 o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL\n\
                 s = ort.InferenceSession('{}', o, providers=['CPUExecutionProvider'])\n\
                 feed = {{i.name: np.ones(({batch}, {seq}), np.int64) for i in s.get_inputs()}}\n\
                 s.run(None, feed)\n\
                 ts = []\n\
                 for _ in range(7):\n    t = time.perf_counter(); s.run(None, feed); ts.append((time.perf_counter() - t) * 1e3)\n\
                 print(sorted(ts)[3])\n",
                path.display()
            );
            match std::process::Command::new("python3").arg("-c").arg(&script).output() {
                Ok(o) if o.status.success() => {
                    let ort: f64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(f64::NAN);
                    println!("{model} batch {batch} x seq {seq}: onnxruntime {ort:.1} ms, mlir/ort {:.2}", mlir / ort);
                }
                Ok(o) => eprintln!("onnxruntime failed: {}", String::from_utf8_lossy(&o.stderr)),
                Err(e) => eprintln!("python3: {e}"),
            }
        }
    }
}

#[cfg(not(feature = "mlir"))]
fn main() {
    eprintln!("the MLIR CPU benchmark needs --features mlir");
}

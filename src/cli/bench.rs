//! `sharc bench`: latency, throughput and memory of a model on a backend,
//! optionally side by side with a peer (onnxruntime, tract or the
//! interpreter) on the same inputs.

use super::backend::{Backend, Tuning};
use super::run::{generated_inputs, inputs_from_file, parse_shape};
use sharc::Error;
use sharc::ir::{Evaluator, Tensor};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Arguments of `sharc bench`.
#[derive(clap::Args)]
pub struct Args {
    /// The model (.onnx or .sharc).
    model: PathBuf,
    /// Which backend to measure.
    #[arg(long, value_enum, default_value_t = Backend::Cranelift)]
    backend: Backend,
    /// Values for symbolic dims, e.g. `batch=8,seq=128` (inputs are filled with ones).
    #[arg(long, value_delimiter = ',')]
    shape: Vec<String>,
    /// Inputs from a safetensors file instead of generated ones.
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// A peer to measure on the same model and shapes.
    #[arg(long, value_parser = ["onnxruntime", "tract", "interp"])]
    peer: Vec<String>,
    /// Timed runs (after the warm-up).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Worker threads (default: all cores). Peers get the same number.
    #[arg(long)]
    threads: Option<usize>,
    /// Print where the time goes (per kind of step, from an instrumented run).
    #[arg(long)]
    profile: bool,
    /// Turn kernel fusion off (to measure what it buys).
    #[arg(long)]
    no_fuse: bool,
    /// Which GEMM the cranelift backend uses: `packed` (weights packed at
    /// compile time, AVX2+FMA microkernel; the crate where the CPU lacks
    /// them), `crate` (the `gemm` crate) or `cranelift` (generated, as in
    /// object files).
    #[arg(long, default_value = "packed", value_parser = ["packed", "crate", "cranelift"])]
    gemm: String,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Latency statistics of a series of runs.
struct Stats {
    median: Duration,
    p90: Duration,
    min: Duration,
}

fn stats(mut t: Vec<Duration>) -> Stats {
    t.sort();
    let at = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize];
    Stats { median: at(0.5), p90: at(0.9), min: t[0] }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Peak resident memory of this process (Linux `VmHWM`), in bytes.
pub(crate) fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn time_runs(iters: usize, warmup: usize, mut f: impl FnMut() -> Result<(), Error>) -> Result<Stats, Error> {
    for _ in 0..warmup {
        f()?;
    }
    let mut t = Vec::with_capacity(iters.max(1));
    for _ in 0..iters.max(1) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed());
    }
    Ok(stats(t))
}

/// The folder holding the peer scripts (`bench/` of the source tree), or
/// `$SHARC_BENCH_DIR`.
fn bench_dir() -> PathBuf {
    std::env::var_os("SHARC_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("bench"))
}

/// Runs an external peer that prints one JSON object with `median_ms` and
/// `p90_ms`.
fn external_peer(cmd: &mut std::process::Command, what: &str) -> Result<serde_json::Value, Error> {
    let out = cmd.output().map_err(|e| Error::Usage(format!("cannot start the {what} peer: {e}")))?;
    if !out.status.success() {
        return Err(Error::Usage(format!(
            "the {what} peer failed: {}",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or("");
    serde_json::from_str(line).map_err(|e| Error::Usage(format!("the {what} peer printed no JSON result ({e})")))
}

/// The tract peer's `--inputs` specs (`i64:8x128`) for the generated inputs:
/// it fills each with ones, as sharc does, so both run the same values.
fn tract_input_specs(tensors: &[Tensor]) -> Vec<String> {
    tensors
        .iter()
        .map(|t| {
            let dims: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
            format!("{}:{}", t.dtype(), dims.join("x"))
        })
        .collect()
}

/// Writes `g` as ONNX into a new temporary folder, for a peer that reads
/// ONNX only; the folder (first) lives as long as the peer needs the file.
fn onnx_copy(g: &sharc::ir::Graph) -> Result<(tempfile::TempDir, PathBuf), Error> {
    let dir = tempfile::tempdir().map_err(|e| Error::Usage(format!("cannot make a temporary folder: {e}")))?;
    let path = dir.path().join("model.onnx");
    sharc::model::save(g, &path, &sharc::model::SaveOptions::default())?;
    Ok((dir, path))
}

pub fn run(a: Args) -> Result<(), Error> {
    let g = sharc::model::load(&a.model)?;
    let dims = parse_shape(&a.shape)?;
    let inputs = match &a.inputs {
        Some(p) => inputs_from_file(&g, p)?,
        None => generated_inputs(&g, &dims, true)?,
    };
    let tensors: Vec<Tensor> = inputs
        .iter()
        .map(|v| v.as_tensor().cloned().ok_or_else(|| Error::Usage("bench takes tensor inputs only".into())))
        .collect::<Result<_, _>>()?;
    let batch = tensors.first().and_then(|t| t.shape().first().copied()).unwrap_or(1).max(1);
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let eval_err = |e| Error::Eval { model: a.model.clone(), source: e };
    let shape_text = if a.shape.is_empty() { "as in the file".to_string() } else { a.shape.join(",") };
    println!("model: {}  shapes: {shape_text}  backend: {}  threads: {threads}", a.model.display(), a.backend.name());
    let mut json = serde_json::json!({
        "model": a.model.display().to_string(),
        "shape": shape_text,
        "backend": a.backend.name(),
        "threads": threads,
        "iters": a.iters,
    });

    let tuning = Tuning { threads: Some(threads), fuse: !a.no_fuse, gemm: gemm_impl(&a.gemm), profile: false };
    let prepared = a.backend.prepare(&g, &inputs, &tuning).map_err(eval_err)?;
    for line in prepared.describe() {
        println!("{line}");
    }
    for (k, v) in prepared.facts() {
        json[k] = v;
    }
    let main = time_runs(a.iters, a.warmup, || prepared.run(&inputs).map(|_| ()).map_err(eval_err))?;
    if a.profile {
        let prof = a.backend.prepare(&g, &inputs, &Tuning { profile: true, ..tuning.clone() }).map_err(eval_err)?;
        let runs = a.iters.clamp(1, 10);
        for _ in 0..runs {
            prof.run(&inputs).map_err(eval_err)?;
        }
        let entries = prof.profile();
        if entries.is_empty() {
            println!("profile: the {} backend records no per-step times", a.backend.name());
        } else {
            let runs = runs as u32;
            let total: Duration = entries.iter().map(|e| e.total).sum();
            println!("profile (per run, instrumented; total {:.2} ms):", ms(total / runs));
            let mut pj = Vec::new();
            for e in entries.iter().take(25) {
                println!(
                    "  {:>8.3} ms {:>5.1}%  {:>4} steps  {}",
                    ms(e.total / runs),
                    100.0 * e.total.as_secs_f64() / total.as_secs_f64().max(1e-12),
                    e.calls / runs as u64,
                    e.label
                );
                pj.push(serde_json::json!({"label": e.label, "ms_per_run": ms(e.total / runs), "steps": e.calls / runs as u64}));
            }
            json["profile"] = pj.into();
        }
    }
    let rss = peak_rss();
    println!(
        "latency: median {:.3} ms, p90 {:.3} ms, min {:.3} ms over {} runs; throughput {:.1} inferences/s ({:.1} batches/s)",
        ms(main.median),
        ms(main.p90),
        ms(main.min),
        a.iters.max(1),
        batch as f64 / main.median.as_secs_f64(),
        1.0 / main.median.as_secs_f64()
    );
    if let Some(r) = rss {
        println!("peak RSS: {:.1} MB", r as f64 / 1e6);
        json["peak_rss_bytes"] = r.into();
    }
    json["median_ms"] = ms(main.median).into();
    json["p90_ms"] = ms(main.p90).into();
    json["min_ms"] = ms(main.min).into();
    json["throughput_per_s"] = (batch as f64 / main.median.as_secs_f64()).into();

    let mut peers = serde_json::Map::new();
    for peer in &a.peer {
        let result = match peer.as_str() {
            "interp" => {
                let interp = sharc::interp::Interpreter::new();
                let s = time_runs(a.iters.min(5), 1, || interp.evaluate(&g, &inputs).map(|_| ()).map_err(eval_err))?;
                serde_json::json!({"median_ms": ms(s.median), "p90_ms": ms(s.p90)})
            }
            "onnxruntime" => {
                let mut cmd = std::process::Command::new("python3");
                cmd.arg(bench_dir().join("ort_peer.py"))
                    .arg(&a.model)
                    .args(["--iters", &a.iters.to_string(), "--warmup", &a.warmup.to_string()])
                    .args(["--threads", &threads.to_string()]);
                if !a.shape.is_empty() {
                    cmd.args(["--shape", &a.shape.join(",")]);
                }
                external_peer(&mut cmd, "onnxruntime")?
            }
            _ => {
                let bin = bench_dir().join("tract-peer").join("target").join("release").join("tract-peer");
                if !bin.exists() {
                    return Err(Error::Usage(format!(
                        "the tract peer is not built: run `cargo build --release --manifest-path {}`",
                        bench_dir().join("tract-peer").join("Cargo.toml").display()
                    )));
                }
                // tract reads ONNX only: a `.sharc` model goes to it as the
                // same graph written out as ONNX, and the result says so.
                let converted = match sharc::model::Format::of(&a.model)? {
                    sharc::model::Format::Onnx => None,
                    sharc::model::Format::Text => Some(onnx_copy(&g)?),
                };
                let mut cmd = std::process::Command::new(bin);
                cmd.arg(converted.as_ref().map_or(a.model.as_path(), |(_, p)| p.as_path()));
                match &a.inputs {
                    // The same data sharc runs on, read by the peer itself.
                    Some(p) => cmd.arg("--data").arg(p),
                    None => cmd.args(["--inputs", &tract_input_specs(&tensors).join(",")]),
                };
                cmd.args(["--iters", &a.iters.to_string(), "--warmup", &a.warmup.to_string()])
                    .args(["--threads", &threads.to_string()]);
                if a.inputs.is_some() {
                    // Reference outputs kept beside the inputs are compared.
                    cmd.arg("--check");
                }
                let mut result = external_peer(&mut cmd, "tract")?;
                if converted.is_some() {
                    result["model"] = "converted to ONNX by sharc".into();
                }
                result
            }
        };
        let median = result["median_ms"].as_f64().unwrap_or(f64::NAN);
        println!(
            "peer {peer}: median {median:.3} ms, p90 {:.3} ms — ratio sharc/{peer} = {:.2}",
            result["p90_ms"].as_f64().unwrap_or(f64::NAN),
            ms(main.median) / median
        );
        for c in result["check"].as_array().into_iter().flatten() {
            println!(
                "peer {peer}: output '{}' differs from the reference in {} by at most {:.3e}",
                c["output"].as_str().unwrap_or("?"),
                a.inputs.as_ref().map_or(String::new(), |p| p.display().to_string()),
                c["max_abs_diff"].as_f64().unwrap_or(f64::NAN)
            );
        }
        if let Some(n) = result["threads"].as_u64().filter(|&n| n as usize != threads) {
            println!("peer {peer}: ran on {n} thread(s), faster than {threads} in its warm-up");
        }
        if let Some(m) = result["model"].as_str() {
            println!("peer {peer}: ran the model {m}");
        }
        peers.insert(peer.clone(), result);
    }
    json["peers"] = peers.into();
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&json).map_err(|e| Error::Usage(e.to_string()))?;
        sharc::io::write_atomic(p, text.as_bytes())?;
    }
    Ok(())
}

/// The GEMM that `--gemm` names (clap has checked the spelling).
fn gemm_impl(name: &str) -> sharc_cranelift::GemmImpl {
    match name {
        "crate" => sharc_cranelift::GemmImpl::Crate,
        "cranelift" => sharc_cranelift::GemmImpl::Cranelift,
        _ => sharc_cranelift::GemmImpl::Packed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharc::ir::Value;

    #[test]
    fn tract_specs_give_type_and_shape() {
        let ids = Tensor::from_vec(&[8, 128], vec![1i64; 8 * 128]);
        let scale = Tensor::from_vec(&[], vec![0.5f32]);
        // The peer reads `TYPE:` with no dims as a scalar.
        assert_eq!(tract_input_specs(&[ids, scale]), ["i64:8x128", "f32:"]);
    }

    #[test]
    fn onnx_copy_computes_what_the_graph_computes() {
        let mut g = sharc::ir::parse(
            "graph @mlp(%x: f32[batch, 4]) -> (%y) {
  %w = weight @w : f32[4, 3]
  %h = MatMul(%x, %w) : f32[batch, 3]
  %y = Relu(%h) : f32[batch, 3]
}
",
        )
        .unwrap();
        let ids: Vec<_> = g.weights.iter().map(|(id, _)| id).collect();
        for id in ids {
            let w = g.weights.get_mut(id).unwrap();
            let vals: Vec<f32> = (0..12).map(|i| (i as f32 - 4.0) / 3.0).collect();
            *w = sharc::ir::Weight::from_tensor(w.name.clone(), Tensor::from_vec(&[4, 3], vals));
        }
        let (dir, path) = onnx_copy(&g).unwrap();
        assert!(path.starts_with(dir.path()) && path.extension().is_some_and(|e| e == "onnx"));
        let back = sharc::model::load(&path).unwrap();
        let x = vec![Value::Tensor(Tensor::from_vec(&[2, 4], (0..8).map(|i| i as f32 / 2.0 - 1.0).collect()))];
        let interp = sharc::interp::Interpreter::new();
        let want = interp.evaluate(&g, &x).unwrap();
        let got = interp.evaluate(&back, &x).unwrap();
        assert_eq!(got, want);
        // Row 1 of x is [1, 1.5, 2, 2.5]; column 2 of w is [-2/3, 1/3, 4/3, 7/3]:
        // 1·(-2/3) + 1.5/3 + 2·4/3 + 2.5·7/3 = 8.33...
        let y = got[0].as_tensor().unwrap().to_f64_vec().unwrap();
        assert!((y[5] - 25.0 / 3.0).abs() < 1e-5, "{y:?}");
        drop(dir);
        assert!(!path.exists(), "the temporary copy goes with its folder");
    }
}

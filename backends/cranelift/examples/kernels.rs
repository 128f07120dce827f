//! Kernel-level figures for the Cranelift backend: GEMM GFLOP/s (the `gemm`
//! crate and the Cranelift-generated kernel) on the shapes of minilm-l6 and
//! gpt-tiny, and fused LayerNormalization / Softmax bandwidth in GB/s.
//!
//! `cargo run --release -p sharc-cranelift --example kernels [-- --threads N] [--only gemm,ffn,gelu,layernorm,softmax,attention]`
//!
//! `--only` keeps the named sections, e.g. to compare two builds of one
//! kernel in alternating runs on a machine shared with other work.
//!
//! Each figure is the median of timed runs of a one-op graph compiled by the
//! backend, so it includes the per-call overhead a real model pays.

use sharc_cranelift::{CompileOptions, GemmImpl, compile};
use sharc_ir::ValueRef;
use sharc_ir::op::{AxisAttr, BinaryOp, LayerNormalization, UnaryOp};
use sharc_ir::{DType, Graph, Op, Tensor, Type, Weight};
use std::time::{Duration, Instant};

/// CPU time used so far by all of this process's threads, from Linux's
/// per-thread scheduler statistics (nanoseconds); `None` elsewhere.
fn process_cpu() -> Option<Duration> {
    let mut total = 0u64;
    for t in std::fs::read_dir("/proc/self/task").ok()? {
        let s = std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// The median wall time of `f` and its mean CPU time per call (all
/// threads). On a machine shared with other work the wall time swings with
/// the load, while the CPU time a call needs stays put: comparing that is
/// how two builds of a kernel can be told apart there.
fn measure(mut f: impl FnMut(), iters: usize) -> (Duration, Option<Duration>) {
    for _ in 0..3 {
        f();
    }
    let cpu0 = process_cpu();
    let mut t: Vec<Duration> = (0..iters)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    let cpu = match (cpu0, process_cpu()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) / iters as u32),
        _ => None,
    };
    t.sort();
    (t[t.len() / 2], cpu)
}

/// ` (CPU 123.4 us)`, or nothing where CPU time cannot be read.
fn cpu_note(cpu: Option<Duration>) -> String {
    cpu.map_or(String::new(), |c| format!(", CPU {:.1} us", c.as_secs_f64() * 1e6))
}

fn data(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| ((i as f32) * 0.618 + seed).sin()).collect()
}

fn gemm_graph(batch: usize, m: usize, n: usize, k: usize) -> (Graph, Vec<Tensor>) {
    let mut g = Graph::new("gemm");
    let (x, y) = if batch == 1 {
        let x = g.add_input("x", Type::tensor(DType::F32, sharc_ir::Shape::fixed(&[m, k])));
        let w = g.add_weight(Weight::from_tensor("w", Tensor::from_vec(&[k, n], data(k * n, 1.0))));
        (x, g.add_op(Op::MatMul, &[x, w], Type::Unknown))
    } else {
        let x = g.add_input("x", Type::tensor(DType::F32, sharc_ir::Shape::fixed(&[batch, m, k])));
        let w = g.add_input("w", Type::tensor(DType::F32, sharc_ir::Shape::fixed(&[batch, k, n])));
        (x, g.add_op(Op::MatMul, &[x, w], Type::Unknown))
    };
    let _ = x;
    g.add_output("y", y);
    let x_shape: Vec<usize> = if batch == 1 { vec![m, k] } else { vec![batch, m, k] };
    let mut inputs = vec![Tensor::from_vec(&x_shape, data(batch * m * k, 0.0))];
    if batch > 1 {
        inputs.push(Tensor::from_vec(&[batch, k, n], data(batch * k * n, 2.0)));
    }
    (g, inputs)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads = args
        .iter()
        .position(|a| a == "--threads")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(str::to_string).collect());
    let want = |section: &str| only.as_ref().is_none_or(|o| o.iter().any(|s| s == section));
    println!("threads: {threads}");
    println!("GEMM (GFLOP/s of wall time, median; in brackets GFLOP per CPU-second, which load does not dilute):");
    println!("{:>28} {:>20} {:>20} {:>20}", "batch x m x n x k", "packed", "gemm crate", "cranelift kernel");
    let shapes = [
        (1, 128, 384, 384, "minilm b1 qkv/out proj"),
        (1, 1024, 384, 384, "minilm b8 qkv/out proj"),
        (1, 1024, 1536, 384, "minilm b8 ffn up"),
        (1, 1024, 384, 1536, "minilm b8 ffn down"),
        (96, 128, 128, 32, "minilm b8 attention QK^T"),
        (96, 128, 32, 128, "minilm b8 attention AV"),
        (1, 128, 768, 256, "gpt-tiny b1 ffn up"),
    ];
    for (b, m, n, k, what) in shapes.into_iter().filter(|_| want("gemm")) {
        let (g, inputs) = gemm_graph(b, m, n, k);
        let flops = 2.0 * (b * m * n * k) as f64;
        let mut line = format!("{:>28}", format!("{b}x{m}x{n}x{k}"));
        for gemm in [GemmImpl::Packed, GemmImpl::Crate, GemmImpl::Cranelift] {
            let opts = CompileOptions { gemm, threads: Some(threads), ..Default::default() };
            let c = compile(&g, &opts).expect("compiles");
            let iters = if gemm == GemmImpl::Cranelift { 5 } else { 30 };
            let (t, cpu) = measure(|| drop(c.run(&inputs).expect("runs")), iters);
            let per_cpu = cpu.map_or(String::new(), |c| format!("({:.1})", flops / c.as_secs_f64() / 1e9));
            line.push_str(&format!(" {:>12.1} {:>7}", flops / t.as_secs_f64() / 1e9, per_cpu));
        }
        println!("{line}    {what}");
    }
    println!("fused kernels (GB/s of input read + output written, or GFLOP/s; median wall time):");
    // The FFN up-projection as exported by BERT-style models: a product with
    // a bias and exact (erf) GELU, which the backend fuses as the product's
    // epilogue, next to the same product alone.
    if want("ffn") {
        let (m, n, k) = (1024usize, 1536usize, 384usize);
        let flops = 2.0 * (m * n * k) as f64;
        let inputs = vec![Tensor::from_vec(&[m, k], data(m * k, 0.0))];
        let mut figures = Vec::new();
        for gelu in [false, true] {
            let mut g = Graph::new("ffn");
            let x = g.add_input("x", Type::tensor(DType::F32, sharc_ir::Shape::fixed(&[m, k])));
            let w = g.add_weight(Weight::from_tensor("w", Tensor::from_vec(&[k, n], data(k * n, 1.0))));
            let mut y = g.add_op(Op::MatMul, &[x, w], Type::Unknown);
            if gelu {
                y = add_bias_gelu(&mut g, y, n);
            }
            g.add_output("y", y);
            let c = compile(&g, &CompileOptions { threads: Some(threads), ..Default::default() }).expect("compiles");
            let (t, cpu) = measure(|| drop(c.run(&inputs).expect("runs")), 20);
            figures.push(format!(
                "{:.1} GFLOP/s ({:.1} us{})",
                flops / t.as_secs_f64() / 1e9,
                t.as_secs_f64() * 1e6,
                cpu_note(cpu)
            ));
        }
        println!(
            "  MatMul {m}x{n}x{k} (minilm b8 ffn up): alone {}; + bias + GELU epilogue {}",
            figures[0], figures[1]
        );
    }
    if want("gelu") {
        let (rows, n) = (1024usize, 1536usize);
        let mut g = Graph::new("gelu");
        let x = g.add_input("x", Type::tensor(DType::F32, sharc_ir::Shape::fixed(&[rows, n])));
        let y = add_bias_gelu(&mut g, x, n);
        g.add_output("y", y);
        let c = compile(&g, &CompileOptions { threads: Some(threads), ..Default::default() }).expect("compiles");
        let inp = vec![Tensor::from_vec(&[rows, n], data(rows * n, 0.5))];
        let (t, cpu) = measure(|| drop(c.run(&inp).expect("runs")), 50);
        let bytes = 2.0 * (rows * n * 4) as f64;
        println!(
            "  bias + GELU (erf) [{rows}, {n}]: {:.2} GB/s ({:.1} us{})",
            bytes / t.as_secs_f64() / 1e9,
            t.as_secs_f64() * 1e6,
            cpu_note(cpu)
        );
    }
    // LayerNormalization over [rows, 384] with scale and bias.
    for rows in [128usize, 1024].into_iter().filter(|_| want("layernorm")) {
        let mut g = Graph::new("ln");
        let x = g.add_input("x", Type::tensor(DType::F32, sharc_ir::Shape::fixed(&[rows, 384])));
        let s = g.add_weight(Weight::from_tensor("s", Tensor::from_vec(&[384], data(384, 3.0))));
        let b = g.add_weight(Weight::from_tensor("b", Tensor::from_vec(&[384], data(384, 4.0))));
        let y = g.add_op(
            Op::LayerNormalization(LayerNormalization { axis: -1, epsilon: 1e-5, stash_type: 1 }),
            &[x, s, b],
            Type::Unknown,
        );
        g.add_output("y", y);
        let c = compile(&g, &CompileOptions { threads: Some(threads), ..Default::default() }).expect("compiles");
        let inp = vec![Tensor::from_vec(&[rows, 384], data(rows * 384, 0.5))];
        let (t, cpu) = measure(|| drop(c.run(&inp).expect("runs")), 50);
        let bytes = 2.0 * (rows * 384 * 4) as f64;
        println!(
            "  LayerNormalization [{rows}, 384]: {:.2} GB/s ({:.1} us{})",
            bytes / t.as_secs_f64() / 1e9,
            t.as_secs_f64() * 1e6,
            cpu_note(cpu)
        );
    }
    for heads in [12usize, 96].into_iter().filter(|_| want("softmax")) {
        let mut g = Graph::new("sm");
        let x = g.add_input("x", Type::tensor(DType::F32, sharc_ir::Shape::fixed(&[heads, 128, 128])));
        let y = g.add_op(Op::Softmax(AxisAttr { axis: -1 }), &[x], Type::Unknown);
        g.add_output("y", y);
        let c = compile(&g, &CompileOptions { threads: Some(threads), ..Default::default() }).expect("compiles");
        let n = heads * 128 * 128;
        let inp = vec![Tensor::from_vec(&[heads, 128, 128], data(n, 0.25))];
        let (t, cpu) = measure(|| drop(c.run(&inp).expect("runs")), 50);
        let bytes = 2.0 * (n * 4) as f64;
        println!(
            "  Softmax [{heads}, 128, 128]: {:.2} GB/s ({:.1} us{})",
            bytes / t.as_secs_f64() / 1e9,
            t.as_secs_f64() * 1e6,
            cpu_note(cpu)
        );
    }
    // Attention scores as BERT exports them: Q K^T per head, scaled, plus
    // the additive mask broadcast over heads and query rows, then Softmax;
    // the backend runs Mul+Add+Softmax as the product's epilogue. Next to
    // the product alone, so the epilogue's share shows.
    if want("attention") {
        let (batch, heads, seq, dh) = (8usize, 12usize, 128usize, 32usize);
        let bh = batch * heads;
        let inputs = vec![
            Tensor::from_vec(&[batch, heads, seq, dh], data(bh * seq * dh, 0.0)),
            Tensor::from_vec(&[batch, heads, dh, seq], data(bh * seq * dh, 1.0)),
            Tensor::from_vec(
                &[batch, 1, 1, seq],
                (0..batch * seq).map(|i| if i % seq < seq - 8 * (i / seq) { 0.0f32 } else { -10000.0 }).collect(),
            ),
        ];
        let mut figures = Vec::new();
        for softmax in [false, true] {
            let mut g = Graph::new("attention");
            let q = g.add_input("q", Type::tensor(DType::F32, sharc_ir::Shape::fixed(&[batch, heads, seq, dh])));
            let k = g.add_input("k", Type::tensor(DType::F32, sharc_ir::Shape::fixed(&[batch, heads, dh, seq])));
            let mut y = g.add_op(Op::MatMul, &[q, k], Type::Unknown);
            if softmax {
                let shape = sharc_ir::Shape::fixed(&[batch, 1, 1, seq]);
                let mask = g.add_input("mask", Type::tensor(DType::F32, shape));
                let scale = g.add_weight(Weight::from_tensor("scale", Tensor::scalar(1.0 / (dh as f32).sqrt())));
                y = g.add_op(Op::Binary(BinaryOp::Mul), &[y, scale], Type::Unknown);
                y = g.add_op(Op::Binary(BinaryOp::Add), &[y, mask], Type::Unknown);
                y = g.add_op(Op::Softmax(AxisAttr { axis: -1 }), &[y], Type::Unknown);
            }
            g.add_output("y", y);
            let c = compile(&g, &CompileOptions { threads: Some(threads), ..Default::default() }).expect("compiles");
            let inp: Vec<Tensor> = if softmax { inputs.clone() } else { inputs[..2].to_vec() };
            let (t, cpu) = measure(|| drop(c.run(&inp).expect("runs")), 20);
            figures.push(format!("{:.1} us{}", t.as_secs_f64() * 1e6, cpu_note(cpu)));
        }
        println!(
            "  attention scores [{batch}x{heads}, {seq}, {seq}] (minilm b8): Q K^T alone {}; + scale + mask + Softmax epilogue {}",
            figures[0], figures[1]
        );
    }
}

/// `gelu(x + bias)` with exact GELU spelled as BERT exports it:
/// `y * 0.5 * (1 + erf(y / sqrt(2)))`.
fn add_bias_gelu(g: &mut Graph, x: ValueRef, n: usize) -> ValueRef {
    let bias = g.add_weight(Weight::from_tensor("bias", Tensor::from_vec(&[n], data(n, 5.0))));
    let c = |g: &mut Graph, name: &str, v: f32| g.add_weight(Weight::from_tensor(name, Tensor::scalar(v)));
    let (sqrt2, one, half) = (c(g, "sqrt2", std::f32::consts::SQRT_2), c(g, "one", 1.0), c(g, "half", 0.5));
    let y = g.add_op(Op::Binary(BinaryOp::Add), &[x, bias], Type::Unknown);
    let d = g.add_op(Op::Binary(BinaryOp::Div), &[y, sqrt2], Type::Unknown);
    let e = g.add_op(Op::Unary(UnaryOp::Erf), &[d], Type::Unknown);
    let p = g.add_op(Op::Binary(BinaryOp::Add), &[e, one], Type::Unknown);
    let m = g.add_op(Op::Binary(BinaryOp::Mul), &[y, p], Type::Unknown);
    g.add_op(Op::Binary(BinaryOp::Mul), &[m, half], Type::Unknown)
}

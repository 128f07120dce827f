//! End-to-end tests of the backend on small graphs: generated math against
//! libm, fused chains against values computed by hand in f64, what the
//! planner makes of a graph (kernels, views, epilogues, arena reuse), the
//! interpreter fallback, errors on bad input, and object output.

use crate::{CompileOptions, compile};
use sharc_ir::op::{AxisAttr, Cumulative, LayerNormalization, Transpose};
use sharc_ir::{BinaryOp, DType, Dim, Graph, Op, Shape, Tensor, Type, UnaryOp, Weight};

fn f32_input(g: &mut Graph, name: &str, shape: &[usize]) -> sharc_ir::ValueRef {
    g.add_input(name, Type::tensor(DType::F32, Shape::fixed(shape)))
}

fn values(t: &Tensor) -> Vec<f32> {
    t.as_array::<f32>().expect("f32 output").iter().copied().collect()
}

fn opts() -> CompileOptions {
    CompileOptions { threads: Some(1), ..Default::default() }
}

/// Relative error with a floor, so values near zero are judged absolutely.
fn rel_err(got: f32, want: f64) -> f64 {
    if got.is_nan() || want.is_nan() {
        return if got.is_nan() && want.is_nan() { 0.0 } else { f64::INFINITY };
    }
    if want.is_infinite() || got.is_infinite() {
        return if got as f64 == want { 0.0 } else { f64::INFINITY };
    }
    (got as f64 - want).abs() / want.abs().max(1e-30)
}

#[test]
fn generated_math_matches_libm() {
    let mut xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.01).collect();
    xs.extend([-100.0, -88.0, -87.0, -20.0, -9.5, 9.5, 20.0, 87.0, 88.0, 88.8, 100.0, 1e-7, -1e-7, 0.0]);
    // Where exp holds its exponent at 127 (r up to ln2) and where its
    // result is the smallest normal.
    xs.extend([88.4, 88.5, 88.6, 88.7, 88.72, -87.3, -87.33]);
    // A multiple of four plus a tail, so both vector and scalar code run.
    xs.push(0.123);
    let n = xs.len();
    #[allow(clippy::type_complexity)]
    let cases: [(UnaryOp, fn(f64) -> f64, bool); 5] = [
        (UnaryOp::Exp, libm::exp, false),
        (UnaryOp::Tanh, libm::tanh, false),
        (UnaryOp::Erf, libm::erf, false),
        (UnaryOp::Sigmoid, |x| 1.0 / (1.0 + libm::exp(-x)), false),
        (UnaryOp::Log, libm::log, true),
    ];
    for (op, reference, positive) in cases {
        let mut g = Graph::new("math");
        let x = f32_input(&mut g, "x", &[n]);
        let y = g.add_op(Op::Unary(op.clone()), &[x], Type::Unknown);
        g.add_output("y", y);
        let c = compile(&g, &opts()).expect("compiles");
        assert_eq!(c.stats().fallback_nodes, 0, "{op:?} must be native");
        let input: Vec<f32> = if positive { xs.iter().map(|v| v.abs() * 3.7 + 1e-6).collect() } else { xs.clone() };
        let out = values(&c.run(&[Tensor::from_vec(&[n], input.clone())]).expect("runs")[0]);
        let mut worst = (0.0f64, 0.0f32);
        for (&x, &y) in input.iter().zip(&out) {
            // The exact result rounded to f32 (exp overflows to inf there).
            let want = reference(x as f64) as f32 as f64;
            // Results that underflow f32 are judged absolutely.
            let e = if want.abs() < 1e-30 { (y as f64 - want).abs() } else { rel_err(y, want) };
            if e > worst.0 {
                worst = (e, x);
            }
        }
        println!("{op:?}: worst relative error {:.2e} at x = {}", worst.0, worst.1);
        // A few ulp of f32 (one ulp is 6e-8 relative).
        assert!(worst.0 < 1e-6, "{op:?}: relative error {:.2e} at x = {}", worst.0, worst.1);
    }
    // IEEE edges.
    let mut g = Graph::new("edges");
    let x = f32_input(&mut g, "x", &[5]);
    let e = g.add_op(Op::Unary(UnaryOp::Exp), &[x], Type::Unknown);
    let l = g.add_op(Op::Unary(UnaryOp::Log), &[x], Type::Unknown);
    g.add_output("e", e);
    g.add_output("l", l);
    let c = compile(&g, &opts()).expect("compiles");
    let out = c.run(&[Tensor::from_vec(&[5], vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -1.0])]).unwrap();
    let (e, l) = (values(&out[0]), values(&out[1]));
    assert!(e[0].is_nan() && e[1] == f32::INFINITY && e[2] == 0.0 && e[3] == 1.0, "exp edges: {e:?}");
    assert!(l[0].is_nan() && l[1] == f32::INFINITY && l[3] == f32::NEG_INFINITY && l[4].is_nan(), "log edges: {l:?}");
    // erf and tanh clamp their argument, which must not swallow a NaN or
    // overshoot ±1, and keep the sign of zero.
    for (op, at_4) in [(UnaryOp::Erf, 1.0), (UnaryOp::Tanh, 4.0f64.tanh() as f32)] {
        let mut g = Graph::new("edges");
        let x = f32_input(&mut g, "x", &[9]);
        let y = g.add_op(Op::Unary(op.clone()), &[x], Type::Unknown);
        g.add_output("y", y);
        let c = compile(&g, &opts()).expect("compiles");
        // Nine values: two vectors of four and a scalar tail, so both code paths see a NaN.
        let input = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 4.0, 1e30, -9.5, 0.0, -0.0, f32::NAN];
        let y = values(&c.run(&[Tensor::from_vec(&[9], input)]).unwrap()[0]);
        assert!(y[0].is_nan() && y[8].is_nan(), "{op:?}(NaN) = {} and {}", y[0], y[8]);
        assert_eq!(&y[1..3], &[1.0, -1.0], "{op:?} at ±inf: {y:?}");
        assert!((y[3] - at_4).abs() <= 2.0 * f32::EPSILON, "{op:?}(4) = {}", y[3]);
        assert_eq!(&y[4..6], &[1.0, -1.0], "{op:?} past the clamp: {y:?}");
        assert!(y[6] == 0.0 && y[6].is_sign_positive() && y[7] == 0.0 && y[7].is_sign_negative(), "{op:?}(±0): {y:?}");
    }
}

/// LayerNormalization → GELU spelled with Erf (as torch exports it) →
/// Softmax: one kernel, values as computed by hand in f64.
#[test]
fn layernorm_gelu_softmax_chain_is_one_kernel() {
    let (rows, n) = (3usize, 7usize);
    let mut g = Graph::new("chain");
    let x = f32_input(&mut g, "x", &[rows, n]);
    let scale: Vec<f32> = (0..n).map(|i| 1.0 + 0.1 * i as f32).collect();
    let bias: Vec<f32> = (0..n).map(|i| 0.05 * i as f32 - 0.2).collect();
    let s = g.add_weight(Weight::from_tensor("s", Tensor::from_vec(&[n], scale.clone())));
    let b = g.add_weight(Weight::from_tensor("b", Tensor::from_vec(&[n], bias.clone())));
    let ln = g.add_op(
        Op::LayerNormalization(LayerNormalization { axis: -1, epsilon: 1e-5, stash_type: 1 }),
        &[x, s, b],
        Type::Unknown,
    );
    let sqrt2 = g.add_constant("sqrt2", Tensor::from_vec(&[], vec![std::f32::consts::SQRT_2]));
    let one = g.add_constant("one", Tensor::from_vec(&[], vec![1.0f32]));
    let half = g.add_constant("half", Tensor::from_vec(&[], vec![0.5f32]));
    let d = g.add_op(Op::Binary(BinaryOp::Div), &[ln, sqrt2], Type::Unknown);
    let e = g.add_op(Op::Unary(UnaryOp::Erf), &[d], Type::Unknown);
    let e1 = g.add_op(Op::Binary(BinaryOp::Add), &[e, one], Type::Unknown);
    let m = g.add_op(Op::Binary(BinaryOp::Mul), &[ln, e1], Type::Unknown);
    let gelu = g.add_op(Op::Binary(BinaryOp::Mul), &[m, half], Type::Unknown);
    let y = g.add_op(Op::Softmax(AxisAttr { axis: -1 }), &[gelu], Type::Unknown);
    g.add_output("y", y);
    let c = compile(&g, &opts()).expect("compiles");
    assert_eq!(c.stats().kernels, 1, "{:?}", c.stats());
    assert_eq!(c.stats().fused_nodes, 7);
    let input: Vec<f32> = (0..rows * n).map(|i| ((i as f32) * 0.77).sin() * 2.0).collect();
    let out = values(&c.run(&[Tensor::from_vec(&[rows, n], input.clone())]).unwrap()[0]);
    for r in 0..rows {
        let row: Vec<f64> = input[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
        let mean = row.iter().sum::<f64>() / n as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        let act: Vec<f64> = row
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let l = (v - mean) / (var + 1e-5).sqrt() * scale[i] as f64 + bias[i] as f64;
                0.5 * l * (1.0 + libm::erf(l / std::f64::consts::SQRT_2))
            })
            .collect();
        let mx = act.iter().cloned().fold(f64::MIN, f64::max);
        let sum: f64 = act.iter().map(|a| (a - mx).exp()).sum();
        for i in 0..n {
            let want = (act[i] - mx).exp() / sum;
            let got = out[r * n + i] as f64;
            assert!((got - want).abs() < 1e-6, "row {r} col {i}: {got} vs {want}");
        }
    }
}

/// `MatMul` by a transposed weight, bias and Relu: the transpose is a view
/// (no copy), and bias + Relu run as the product's epilogue.
#[test]
fn matmul_takes_transposed_weight_as_view_and_fuses_epilogue() {
    let (m, k, n) = (5usize, 6usize, 9usize);
    let mut g = Graph::new("mm");
    let x = f32_input(&mut g, "x", &[m, k]);
    let wt: Vec<f32> = (0..n * k).map(|i| ((i as f32) * 0.31).cos()).collect();
    let bias: Vec<f32> = (0..n).map(|i| 0.1 * i as f32 - 0.4).collect();
    let w = g.add_weight(Weight::from_tensor("w_t", Tensor::from_vec(&[n, k], wt.clone())));
    let b = g.add_weight(Weight::from_tensor("b", Tensor::from_vec(&[n], bias.clone())));
    let wv = g.add_op(Op::Transpose(Transpose { perm: Some(vec![1, 0]) }), &[w], Type::Unknown);
    let p = g.add_op(Op::MatMul, &[x, wv], Type::Unknown);
    let a = g.add_op(Op::Binary(BinaryOp::Add), &[p, b], Type::Unknown);
    let y = g.add_op(Op::Unary(UnaryOp::Relu), &[a], Type::Unknown);
    g.add_output("y", y);
    let c = compile(&g, &CompileOptions { profile: true, ..opts() }).expect("compiles");
    let st = c.stats();
    assert_eq!((st.view_nodes, st.matmuls, st.kernels, st.fallback_nodes), (1, 1, 1, 0), "{st:?}");
    let input: Vec<f32> = (0..m * k).map(|i| ((i as f32) * 0.5).sin()).collect();
    let out = values(&c.run(&[Tensor::from_vec(&[m, k], input.clone())]).unwrap()[0]);
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|l| input[i * k + l] as f64 * wt[j * k + l] as f64).sum();
            let want = (dot + bias[j] as f64).max(0.0);
            assert!((out[i * n + j] as f64 - want).abs() < 1e-5, "({i},{j}): {} vs {want}", out[i * n + j]);
        }
    }
    let labels: Vec<String> = c.profile().into_iter().map(|e| e.label).collect();
    assert_eq!(labels.len(), 1, "one step only: {labels:?}");
    assert!(labels[0].starts_with("matmul 5x9x6") && labels[0].contains("+ Add+Relu"), "{labels:?}");
}

/// A `[batch, seq, hidden]` activation times a weight, batch 1 and 3: the
/// batch folds into the rows of one product, and the bias + Relu that follow
/// still run as its epilogue (a size-1 batch dim, which broadcasting gives
/// stride 0, must not stop that).
#[test]
fn batched_activation_times_weight_is_one_product_with_epilogue() {
    let (seq, k, n) = (4usize, 6usize, 5usize);
    for batch in [1usize, 3] {
        let mut g = Graph::new("proj");
        let x = f32_input(&mut g, "x", &[batch, seq, k]);
        let wv: Vec<f32> = (0..k * n).map(|i| ((i as f32) * 0.23).sin()).collect();
        let bias: Vec<f32> = (0..n).map(|i| 0.2 * i as f32 - 0.5).collect();
        let w = g.add_weight(Weight::from_tensor("w", Tensor::from_vec(&[k, n], wv.clone())));
        let b = g.add_weight(Weight::from_tensor("b", Tensor::from_vec(&[n], bias.clone())));
        let p = g.add_op(Op::MatMul, &[x, w], Type::Unknown);
        let a = g.add_op(Op::Binary(BinaryOp::Add), &[p, b], Type::Unknown);
        let y = g.add_op(Op::Unary(UnaryOp::Relu), &[a], Type::Unknown);
        g.add_output("y", y);
        let c = compile(&g, &CompileOptions { profile: true, threads: Some(2), ..opts() }).expect("compiles");
        let input: Vec<f32> = (0..batch * seq * k).map(|i| ((i as f32) * 0.7).cos()).collect();
        let out = values(&c.run(&[Tensor::from_vec(&[batch, seq, k], input.clone())]).unwrap()[0]);
        for r in 0..batch * seq {
            for j in 0..n {
                let dot: f64 = (0..k).map(|l| input[r * k + l] as f64 * wv[l * n + j] as f64).sum();
                let want = (dot + bias[j] as f64).max(0.0);
                assert!((out[r * n + j] as f64 - want).abs() < 1e-5, "batch {batch} ({r},{j})");
            }
        }
        let labels: Vec<String> = c.profile().into_iter().map(|e| e.label).collect();
        let want = format!("matmul {}x{n}x{k} (batch 1) + Add+Relu", batch * seq);
        assert_eq!(labels, vec![want], "batch {batch}");
    }
}

/// A mask computed in one fused group but read by a `Where` that had to
/// start a group of its own (an interpreted `CumSum` read the first group,
/// closing it) is left out of fusion, since kernels write f32 only, instead
/// of failing compilation; the result still matches.
#[test]
fn mask_read_outside_its_kernel_is_not_fused() {
    let mut g = Graph::new("mask");
    let x = f32_input(&mut g, "x", &[3, 4]);
    let zero = g.add_weight(Weight::from_tensor("zero", Tensor::from_vec(&[1], vec![0.0f32])));
    let axis = g.add_constant("axis", Tensor::from_vec(&[], vec![1i64]));
    let neg = g.add_op(Op::Unary(UnaryOp::Neg), &[x], Type::Unknown);
    let pos = g.add_op(Op::Binary(BinaryOp::Greater), &[neg, zero], Type::Unknown);
    let cs = g.add_op(Op::CumSum(Cumulative { exclusive: false, reverse: false }), &[neg, axis], Type::Unknown);
    let y = g.add_op(Op::Where, &[pos, cs, zero], Type::Unknown);
    g.add_output("y", y);
    let c = compile(&g, &opts()).expect("compiles");
    assert_eq!(c.stats().fallback_ops.iter().find(|(o, _)| o == "Greater").map(|(_, n)| *n), Some(1));
    let input: Vec<f32> = (0..12).map(|i| i as f32 - 5.5).collect();
    let out = values(&c.run(&[Tensor::from_vec(&[3, 4], input.clone())]).unwrap()[0]);
    let mut want = Vec::new();
    for r in 0..3 {
        let mut acc = 0.0f32;
        for j in 0..4 {
            let v = -input[r * 4 + j];
            acc += v;
            want.push(if v > 0.0 { acc } else { 0.0 });
        }
    }
    assert_eq!(out, want);
}

/// `Split` into unequal pieces along the last axis is a set of views: no
/// step runs for it, and each piece feeds its consumer with the right values.
#[test]
fn split_is_views_into_its_input() {
    let mut g = Graph::new("split");
    let x = f32_input(&mut g, "x", &[2, 6]);
    let sizes = g.add_constant("sizes", Tensor::from_vec(&[2], vec![2i64, 4]));
    let sp = g.add_node(
        Op::Split(sharc_ir::op::Split { axis: -1, num_outputs: None }),
        "split",
        &[Some(x), Some(sizes)],
        vec![sharc_ir::ValueInfo::new("s0", Type::Unknown), sharc_ir::ValueInfo::new("s1", Type::Unknown)],
    );
    let a = g.add_op(Op::Unary(UnaryOp::Neg), &[sharc_ir::ValueRef::new(sp, 0)], Type::Unknown);
    g.add_output("a", a);
    g.add_output("b", sharc_ir::ValueRef::new(sp, 1));
    let c = compile(&g, &opts()).expect("compiles");
    assert_eq!((c.stats().fallback_nodes, c.stats().view_nodes), (0, 1), "{:?}", c.stats());
    let input: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let out = c.run(&[Tensor::from_vec(&[2, 6], input)]).unwrap();
    assert_eq!(values(&out[0]), vec![-0.0, -1.0, -6.0, -7.0]);
    assert_eq!(values(&out[1]), vec![2.0, 3.0, 4.0, 5.0, 8.0, 9.0, 10.0, 11.0]);
}

/// Without fusion, a chain of ten elementwise ops gets ten buffers, but
/// only two are ever alive at once: the arena holds two.
#[test]
fn arena_reuses_buffers_by_liveness() {
    let mut g = Graph::new("chain");
    let x = f32_input(&mut g, "x", &[64, 64]);
    let mut v = x;
    for i in 0..10 {
        let op = if i % 2 == 0 { UnaryOp::Neg } else { UnaryOp::Abs };
        v = g.add_op(Op::Unary(op), &[v], Type::Unknown);
    }
    g.add_output("y", v);
    let c = compile(&g, &CompileOptions { fuse: false, ..opts() }).expect("compiles");
    let st = c.stats();
    let one = 64 * 64 * 4;
    assert_eq!(st.kernels, 10);
    assert_eq!(st.arena_bytes_unshared, 10 * one);
    assert_eq!(st.arena_bytes, 2 * one, "{st:?}");
    let out = values(&c.run(&[Tensor::from_vec(&[64, 64], vec![-2.0f32; 64 * 64])]).unwrap()[0]);
    // Neg then Abs five times: |-(-2)| = 2, then Neg → -2 ... ends on Abs.
    assert!(out.iter().all(|&v| v == 2.0));
    // With fusion the chain is one kernel writing one buffer.
    let fused = compile(&g, &opts()).unwrap();
    assert_eq!((fused.stats().kernels, fused.stats().arena_bytes), (1, one));
}

/// An op with no native code runs through the interpreter, between native
/// steps, with the right values.
#[test]
fn unsupported_op_falls_back_to_interpreter() {
    let mut g = Graph::new("cum");
    let x = f32_input(&mut g, "x", &[2, 3]);
    let axis = g.add_constant("axis", Tensor::from_vec(&[], vec![1i64]));
    let n = g.add_op(Op::Unary(UnaryOp::Neg), &[x], Type::Unknown);
    let cs = g.add_op(Op::CumSum(Cumulative { exclusive: false, reverse: false }), &[n, axis], Type::Unknown);
    let y = g.add_op(Op::Unary(UnaryOp::Abs), &[cs], Type::Unknown);
    g.add_output("y", y);
    let c = compile(&g, &opts()).expect("compiles");
    assert_eq!(c.stats().fallback_nodes, 1);
    assert_eq!(c.stats().fallback_ops, vec![("CumSum".to_string(), 1)]);
    let out = c.run(&[Tensor::from_vec(&[2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])]).unwrap();
    assert_eq!(out[0], Tensor::from_vec(&[2, 3], vec![1.0f32, 3.0, 6.0, 4.0, 9.0, 15.0]));
}

#[test]
fn wrong_inputs_are_errors_that_name_the_input() {
    let mut g = Graph::new("g");
    let x = g.add_input("tokens", Type::tensor(DType::F32, vec![Dim::sym("n"), Dim::Fixed(2)]));
    let y = g.add_op(Op::Unary(UnaryOp::Neg), &[x], Type::Unknown);
    g.add_output("y", y);
    let missing = compile(&g, &opts()).err().expect("n is unbound");
    assert!(missing.to_string().contains("'n'"), "{missing}");
    let mut o = opts();
    o.dims.insert("n".into(), 3);
    let c = compile(&g, &o).unwrap();
    let err = c.run(&[Tensor::from_vec(&[2, 2], vec![0.0f32; 4])]).expect_err("shape differs");
    assert!(err.to_string().contains("'tokens'"), "{err}");
    let err = c.run(&[]).expect_err("no inputs");
    assert!(err.to_string().contains("1 inputs"), "{err}");
}

#[test]
fn object_output_has_entry_point_and_header_and_rejects_interpreted_ops() {
    let mut g = Graph::new("g");
    let x = f32_input(&mut g, "x", &[4, 8]);
    let w = g.add_weight(Weight::from_tensor("w", Tensor::from_vec(&[8, 3], vec![0.5f32; 24])));
    let p = g.add_op(Op::MatMul, &[x, w], Type::Unknown);
    let y = g.add_op(Op::Softmax(AxisAttr { axis: -1 }), &[p], Type::Unknown);
    g.add_output("probs", y);
    let out = crate::aot::compile_object(&g, &opts(), "tiny").expect("compiles to an object");
    assert!(out.object.starts_with(b"\x7fELF") || cfg!(not(target_os = "linux")));
    assert!(out.header.contains("tiny_run("), "{}", out.header);
    assert!(out.header.contains("TINY_WORKSPACE_BYTES"), "{}", out.header);
    assert_eq!(out.embedded_bytes, 24 * 4);
    assert!(crate::aot::compile_object(&g, &opts(), "9bad").is_err());

    let mut h = Graph::new("h");
    let x = f32_input(&mut h, "x", &[2, 3]);
    let axis = h.add_constant("axis", Tensor::from_vec(&[], vec![1i64]));
    let cs = h.add_op(Op::CumSum(Cumulative { exclusive: false, reverse: false }), &[x, axis], Type::Unknown);
    h.add_output("y", cs);
    let err = crate::aot::compile_object(&h, &opts(), "h").err().expect("CumSum is interpreted");
    assert!(err.to_string().contains("CumSum"), "{err}");
}

/// The evaluator's cache: the same graph and shapes compile once, and a
/// changed weight (same structure) is a different graph.
#[test]
fn fingerprint_sees_weight_content() {
    let build = |v: f32| {
        let mut g = Graph::new("g");
        let x = f32_input(&mut g, "x", &[2]);
        let w = g.add_weight(Weight::from_tensor("w", Tensor::from_vec(&[2], vec![v, v])));
        let y = g.add_op(Op::Binary(BinaryOp::Mul), &[x, w], Type::Unknown);
        g.add_output("y", y);
        g
    };
    let (a, b) = (build(1.0), build(2.0));
    assert_eq!(crate::graph_fingerprint(&a), crate::graph_fingerprint(&build(1.0)));
    assert_ne!(crate::graph_fingerprint(&a), crate::graph_fingerprint(&b));
    let ev = crate::CraneliftEvaluator::default();
    let x = Tensor::from_vec(&[2], vec![3.0f32, 4.0]);
    use sharc_ir::{Evaluator, Value};
    let ya = ev.evaluate(&a, &[Value::Tensor(x.clone())]).unwrap();
    let ya2 = ev.evaluate(&a, &[Value::Tensor(x.clone())]).unwrap();
    let yb = ev.evaluate(&b, &[Value::Tensor(x)]).unwrap();
    assert_eq!(ya, ya2);
    assert_eq!(yb[0], Value::Tensor(Tensor::from_vec(&[2], vec![6.0f32, 8.0])));
    assert_eq!(ev.cache_stats(), (2, 1));
}

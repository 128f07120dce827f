//! Tests of `expert-reuse` and the MoE detector on synthetic MoE graphs
//! built the way torch exports Mixtral's expert loop.

use super::*;
use crate::analysis::moe::find_moe_layers;
use sharc_interp::Interpreter;
use sharc_ir::op::{AxisAttr, TopK, Transpose};
use sharc_ir::{Dim, Evaluator, verify};

/// Deterministic pseudo-random values in [-1, 1).
pub(crate) fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

fn c_i64(g: &mut Graph, v: Vec<i64>, shape: &[usize]) -> ValueRef {
    g.add_constant("c", Tensor::from_vec(shape, v))
}

/// How the experts' weights are made.
#[derive(Clone, Copy)]
pub(crate) enum Experts {
    /// Every expert different.
    Random,
    /// All experts of a layer identical.
    SameInLayer,
}

/// `layers` MoE layers on a residual stream, each with `n` experts of
/// `x → Relu(x·W1)·W2`, top-`k` softmax routing renormalised over the k,
/// and torch's dispatch (`OneHot` mask, `NonZero`, row `Gather`, gated
/// `ScatterND` add).
pub(crate) fn moe_graph(layers: usize, n: usize, k: usize, d: usize, f: usize, experts: Experts) -> Graph {
    moe_graph_with(layers, n, k, d, f, experts, false)
}

/// [`moe_graph`], optionally with torch's `Expand(y_e, Shape(Slice(acc)))`
/// before each scatter (`sized_by_sum`): a no-op broadcast whose shape
/// input depends on the running sum of the earlier experts, as in the
/// Mixtral-style exports of transformers (moe-tiny).
pub(crate) fn moe_graph_with(
    layers: usize,
    n: usize,
    k: usize,
    d: usize,
    f: usize,
    experts: Experts,
    sized_by_sum: bool,
) -> Graph {
    let mut g = Graph::new("moe");
    let mut x = g.add_input("x", Type::tensor(DType::F32, vec![Dim::sym("tokens"), Dim::Fixed(d as u64)]));
    let mut seed = 1;
    let mut next = |len: usize| {
        seed += 1;
        noise(seed, len)
    };
    for l in 0..layers {
        let wr = g.add_weight(Weight::from_tensor(format!("l{l}.router"), Tensor::from_vec(&[d, n], next(d * n))));
        let logits = g.add_op(Op::MatMul, &[x, wr], Type::Unknown);
        let probs = g.add_op(Op::Softmax(AxisAttr { axis: -1 }), &[logits], Type::Unknown);
        let kk = c_i64(&mut g, vec![k as i64], &[1]);
        let topk = g.add_node(
            Op::TopK(TopK { axis: -1, largest: true, sorted: true }),
            "",
            &[Some(probs), Some(kk)],
            vec![
                ValueInfo::new(format!("l{l}.topv"), Type::Unknown),
                ValueInfo::new(format!("l{l}.topi"), Type::Unknown),
            ],
        );
        let (values, indices) = (ValueRef::new(topk, 0), ValueRef::new(topk, 1));
        let last = c_i64(&mut g, vec![-1], &[1]);
        let sum = g.add_op(
            Op::Reduce(Reduce {
                kind: ReduceKind::Sum,
                attrs: ReduceAttrs { keepdims: true, noop_with_empty_axes: false },
            }),
            &[values, last],
            Type::Unknown,
        );
        let gates = g.add_op(Op::Binary(BinaryOp::Div), &[values, sum], Type::Unknown);
        let depth = c_i64(&mut g, vec![n as i64], &[]);
        let onoff = c_i64(&mut g, vec![0, 1], &[2]);
        let onehot = g.add_op(Op::OneHot(OneHot { axis: -1 }), &[indices, depth, onoff], Type::Unknown);
        let mask = g.add_op(Op::Transpose(Transpose { perm: Some(vec![2, 1, 0]) }), &[onehot], Type::Unknown);
        let shape = g.add_op(Op::Shape(ShapeOf { start: 0, end: None }), &[x], Type::Unknown);
        let mut acc = g.add_op(
            Op::ConstantOfShape(ConstantOfShape { value: Some(Tensor::from_vec(&[1], vec![0.0f32])) }),
            &[shape],
            Type::Unknown,
        );
        let flat = c_i64(&mut g, vec![-1], &[1]);
        let gflat = g.add_op(Op::Reshape(Reshape { allowzero: false }), &[gates, flat], Type::Unknown);
        let shared1 = next(d * f);
        let shared2 = next(f * d);
        for e in 0..n {
            let (w1, w2) = match experts {
                Experts::Random => (next(d * f), next(f * d)),
                Experts::SameInLayer => (shared1.clone(), shared2.clone()),
            };
            let w1 = g.add_weight(Weight::from_tensor(format!("l{l}.e{e}.w1"), Tensor::from_vec(&[d, f], w1)));
            let w2 = g.add_weight(Weight::from_tensor(format!("l{l}.e{e}.w2"), Tensor::from_vec(&[f, d], w2)));
            let ev = c_i64(&mut g, vec![e as i64], &[]);
            let sel = g.add_op(Op::Gather(Gather { axis: 0 }), &[mask, ev], Type::Unknown);
            let nz = g.add_op(Op::NonZero, &[sel], Type::Unknown);
            let zero = c_i64(&mut g, vec![0], &[]);
            let one = c_i64(&mut g, vec![1], &[]);
            let slot = g.add_op(Op::Gather(Gather { axis: 0 }), &[nz, zero], Type::Unknown);
            let tok = g.add_op(Op::Gather(Gather { axis: 0 }), &[nz, one], Type::Unknown);
            let rows = g.add_op(Op::Gather(Gather { axis: 0 }), &[x, tok], Type::Unknown);
            let h1 = g.add_op(Op::MatMul, &[rows, w1], Type::Unknown);
            let h2 = g.add_op(Op::Unary(sharc_ir::UnaryOp::Relu), &[h1], Type::Unknown);
            let h = g.add_op(Op::MatMul, &[h2, w2], Type::Unknown);
            let kc = c_i64(&mut g, vec![k as i64], &[]);
            let tk = g.add_op(Op::Binary(BinaryOp::Mul), &[tok, kc], Type::Unknown);
            let gi = g.add_op(Op::Binary(BinaryOp::Add), &[tk, slot], Type::Unknown);
            let gsel = g.add_op(Op::Gather(Gather { axis: 0 }), &[gflat, gi], Type::Unknown);
            let ax = c_i64(&mut g, vec![1], &[1]);
            let gcol = g.add_op(Op::Unsqueeze, &[gsel, ax], Type::Unknown);
            let mut y = g.add_op(Op::Binary(BinaryOp::Mul), &[h, gcol], Type::Unknown);
            if sized_by_sum {
                let (s0, s1, s2) =
                    (c_i64(&mut g, vec![0], &[1]), c_i64(&mut g, vec![1], &[1]), c_i64(&mut g, vec![0], &[1]));
                let head = g.add_op(Op::Slice, &[acc, s0, s1, s2], Type::Unknown);
                let to = g.add_op(Op::Shape(ShapeOf { start: 0, end: None }), &[head], Type::Unknown);
                y = g.add_op(Op::Expand, &[y, to], Type::Unknown);
            }
            let ti = g.add_op(Op::Unsqueeze, &[tok, ax], Type::Unknown);
            acc = g.add_op(Op::ScatterND(ScatterND { reduction: ScatterReduction::Add }), &[acc, ti, y], Type::Unknown);
        }
        x = g.add_op(Op::Binary(BinaryOp::Add), &[x, acc], Type::Unknown);
    }
    g.add_output("y", x);
    sharc_ir::infer_shapes(&mut g).expect("the synthetic MoE infers");
    verify(&g).expect("the synthetic MoE verifies");
    g
}

fn batch(seed: u64, tokens: usize, d: usize) -> Vec<Value> {
    vec![Value::Tensor(Tensor::from_vec(&[tokens, d], noise(seed, tokens * d)))]
}

fn run(g: &Graph, inputs: &[Value]) -> Vec<f32> {
    let out = Interpreter::new().evaluate(g, inputs).expect("runs");
    floats(out[0].as_tensor().expect("tensor")).expect("floats")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn apply(g: &mut Graph, o: ExpertReuseOptions, batches: &[Vec<Value>]) -> Result<ExpertReuseReport, PassError> {
    let ev = Interpreter::new();
    let mut cx = PassContext { evaluator: Some(&ev), calibration: Some(batches), ..Default::default() };
    let mut pass = ExpertReuse::new(o);
    pass.run(g, &mut cx)?;
    sharc_ir::infer_shapes(g).map_err(|e| failed(e.to_string()))?;
    verify(g).map_err(|e| failed(format!("{e:?}")))?;
    Ok(pass.report.expect("a report"))
}

#[test]
fn detects_router_topk_experts_and_combine() {
    let g = moe_graph(2, 4, 2, 6, 5, Experts::Random);
    let a = find_moe_layers(&g).unwrap();
    assert_eq!(a.layers.len(), 2, "{}", a.summary(&g));
    for (i, l) in a.layers.iter().enumerate() {
        assert_eq!(l.num_experts(), 4);
        assert_eq!(l.k, 2);
        assert_eq!(g.weights.get(l.router_weight).unwrap().name, format!("l{i}.router"));
        for (e, ex) in l.experts.iter().enumerate() {
            let names: Vec<&str> = ex.weights.iter().map(|w| g.weights.get(*w).unwrap().name.as_str()).collect();
            assert_eq!(names, vec![format!("l{i}.e{e}.w1"), format!("l{i}.e{e}.w2")]);
            assert_eq!(ex.body.len(), 3, "MatMul, Relu, MatMul");
        }
        // The combine is the last scatter of the layer, read by the residual add.
        assert!(matches!(g.node(l.output.node).op, Op::ScatterND(_)));
        assert!(g.users(l.output).iter().any(|(u, _)| matches!(g.node(*u).op, Op::Binary(BinaryOp::Add))));
    }
    assert!(a.summary(&g).contains("moe layer 1"));
}

/// Regression: when each expert's rows are broadcast to the shape of the
/// running sum, the last expert's rows depend on every expert through
/// `Shape` alone. The combine must still be the last scatter (the data that
/// sums all experts), or rebinding replaces one expert's rows with the
/// whole layer's output and the model stops running.
#[test]
fn shape_only_dependencies_do_not_make_a_combine() {
    let g = moe_graph_with(2, 4, 2, 6, 5, Experts::Random, true);
    let a = find_moe_layers(&g).unwrap();
    assert_eq!(a.layers.len(), 2, "{}", a.summary(&g));
    for l in &a.layers {
        assert!(matches!(g.node(l.output.node).op, Op::ScatterND(_)), "{}", a.summary(&g));
    }
    let batches = vec![batch(11, 20, 6), batch(12, 7, 6)];
    let before = run(&g, &batches[1]);
    let mut h = g.clone();
    let o = ExpertReuseOptions { window: 2, experts: Some(8), ..Default::default() };
    let r = apply(&mut h, o, &batches).unwrap();
    assert_eq!(r.experts_after, 8);
    assert!(max_diff(&before, &run(&h, &batches[1])) < 1e-5);
    let mut h = g.clone();
    let o = ExpertReuseOptions { window: 2, experts: Some(3), ..Default::default() };
    let r = apply(&mut h, o, &batches).unwrap();
    assert_eq!(r.experts_after, 3);
    assert_eq!(run(&h, &batches[1]).len(), before.len());
}

#[test]
fn a_pool_as_large_as_the_window_reproduces_the_model() {
    let batches = vec![batch(100, 24, 6), batch(101, 9, 6)];
    for window in [1, 2] {
        let mut g = moe_graph(2, 4, 2, 6, 5, Experts::Random);
        let before = run(&g, &batches[0]);
        let o = ExpertReuseOptions { window, experts: Some(4 * window), ..Default::default() };
        let r = apply(&mut g, o, &batches).unwrap();
        assert_eq!(r.experts_after, 8);
        assert!(max_diff(&before, &run(&g, &batches[0])) < 1e-5);
        assert!(r.routing_agreement.iter().all(|a| *a == 1.0));
        assert!(r.top1 == 1.0 && r.output_error < 1e-10, "{}", r.to_text());
    }
}

#[test]
fn two_picks_of_one_group_run_once_with_the_summed_gate() {
    // All experts of a layer equal: one pooled expert per layer must give
    // exactly the original output, which needs the two top-2 gates summed.
    let batches = vec![batch(7, 16, 6)];
    let mut g = moe_graph(2, 4, 2, 6, 5, Experts::SameInLayer);
    let before = run(&g, &batches[0]);
    let o = ExpertReuseOptions { window: 1, experts: Some(1), ..Default::default() };
    let r = apply(&mut g, o, &batches).unwrap();
    assert_eq!(r.experts_after, 2);
    assert_eq!(r.groups[0][0], vec![(0, 0), (0, 1), (0, 2), (0, 3)]);
    assert!(max_diff(&before, &run(&g, &batches[0])) < 1e-5);
    // Each pooled expert runs once per layer: two expert bodies in all.
    let matmuls = g.node_ids().filter(|n| matches!(g.node(*n).op, Op::MatMul)).count();
    assert_eq!(matmuls, 2 * (1 + 1 + 2), "router, rebinding and one expert body per layer");
}

#[test]
fn merging_averages_by_usage_and_shares_across_the_window() {
    let batches = vec![batch(3, 40, 6)];
    let mut g = moe_graph(2, 4, 2, 6, 5, Experts::Random);
    let orig = g.clone();
    let a = find_moe_layers(&orig).unwrap();
    let o = ExpertReuseOptions { window: 2, experts: Some(3), similarity: Similarity::Weights, ..Default::default() };
    let r = apply(&mut g, o, &batches).unwrap();
    assert_eq!(r.experts_before, 8);
    assert_eq!(r.experts_after, 3);
    assert_eq!(r.usage.iter().flatten().sum::<u64>(), 2 * 40 * 2, "k picks per token per layer");
    // Expert parameters: 3 pooled experts instead of 8.
    assert_eq!(r.expert_params_before, 8 * 60);
    assert_eq!(r.expert_params_after, 3 * 60);
    assert_eq!(r.params_before - r.params_after, 5 * 60);
    // Check the first pooled weight against Σ f_e W_e / Σ f_e by hand.
    let group = &r.groups[0][0];
    let total: u64 = group.iter().map(|&(l, e)| r.usage[l][e]).sum();
    let mut want = vec![0.0f64; 30];
    for &(l, e) in group {
        let w = floats(orig.weights.get(a.layers[l].experts[e].weights[0]).unwrap().tensor()).unwrap();
        let f = if total == 0 { 1.0 / group.len() as f64 } else { r.usage[l][e] as f64 / total as f64 };
        for (a, x) in want.iter_mut().zip(w) {
            *a += f * f64::from(x);
        }
    }
    let pooled = g.weights.iter().find(|(_, w)| w.name.starts_with("moe_pool0.expert0.0.")).expect("pooled weight");
    let got = floats(pooled.1.tensor()).unwrap();
    assert!(want.iter().zip(&got).all(|(a, b)| (*a as f32 - b).abs() < 1e-6));
    // The pooled weights are shared: both layers read the same weight ids.
    let readers = g.node_ids().filter(|n| matches!(g.node(*n).op, Op::Weight(w) if w == pooled.0)).count();
    assert!(readers >= 1);
    assert!(r.to_text().contains("window 0 pool"));
}

#[test]
fn drop_baseline_keeps_the_most_used_experts() {
    let batches = vec![batch(5, 40, 6)];
    let mut g = moe_graph(2, 4, 2, 6, 5, Experts::Random);
    let o = ExpertReuseOptions { window: 1, experts: Some(2), merge: Merge::Drop, ..Default::default() };
    let r = apply(&mut g, o, &batches).unwrap();
    for (l, pools) in r.groups.iter().enumerate() {
        assert_eq!(pools.len(), 2);
        let kept: Vec<u64> = pools.iter().map(|p| r.usage[l][p[0].1]).collect();
        let mut all = r.usage[l].clone();
        all.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(kept, all[..2].to_vec());
        assert!(pools.iter().all(|p| p.len() == 1));
    }
    assert!(r.top1 <= 1.0 && r.output_error > 0.0);
}

#[test]
fn output_and_router_similarity_run() {
    let batches = vec![batch(9, 30, 6)];
    for sim in [Similarity::Output, Similarity::Router] {
        let mut g = moe_graph(2, 4, 2, 6, 5, Experts::Random);
        let o = ExpertReuseOptions { window: 2, experts: Some(4), similarity: sim, ..Default::default() };
        let r = apply(&mut g, o, &batches).unwrap();
        assert_eq!(r.groups[0].iter().map(Vec::len).sum::<usize>(), 8);
    }
}

#[test]
fn refuses_graphs_without_moe_layers_and_mismatched_experts() {
    let mut g = Graph::new("dense");
    let x = g.add_input("x", Type::tensor(DType::F32, vec![Dim::Fixed(2), Dim::Fixed(2)]));
    let w = g.add_weight(Weight::from_tensor("w", Tensor::from_vec(&[2, 2], vec![1.0f32, 0.0, 0.0, 1.0])));
    let y = g.add_op(Op::MatMul, &[x, w], Type::Unknown);
    g.add_output("y", y);
    let batches = vec![batch(1, 2, 2)];
    let e = apply(&mut g, ExpertReuseOptions::default(), &batches).unwrap_err();
    assert!(matches!(e, PassError::Refused { .. }));
    assert!(e.to_string().contains("no MoE layers"), "{e}");

    // Layer 1's experts are wider than layer 0's: they cannot merge.
    let mut g = moe_graph(1, 2, 1, 4, 3, Experts::Random);
    let b = find_moe_layers(&g).unwrap();
    let id = b.layers[0].experts[1].weights[0];
    g.weights.get_mut(id).unwrap().set_tensor(Tensor::from_vec(&[4, 5], noise(3, 20)));
    let e = apply(&mut g, ExpertReuseOptions::default(), &[batch(1, 4, 4)]).unwrap_err();
    assert!(e.to_string().contains("cannot be merged"), "{e}");

    // No calibration: a clear error, not a guess.
    let mut g = moe_graph(1, 2, 1, 4, 3, Experts::Random);
    let mut cx = PassContext::default();
    let e = ExpertReuse::default().run(&mut g, &mut cx).unwrap_err();
    assert!(matches!(e, PassError::Missing { .. }), "{e}");
}

#[test]
fn snapshot_of_a_one_layer_rebinding() {
    let batches = vec![batch(2, 12, 3)];
    let mut g = moe_graph(1, 2, 1, 3, 2, Experts::SameInLayer);
    let o = ExpertReuseOptions { window: 1, experts: Some(1), ..Default::default() };
    apply(&mut g, o, &batches).unwrap();
    insta::assert_snapshot!(sharc_ir::print(&g));
}

#[test]
fn builds_from_pipeline_text() {
    let mut r = crate::Registry::with_standard_passes();
    r.register::<ExpertReuse>();
    let passes = r.build_str("expert-reuse{window=4,similarity=output,merge=drop,experts=6},dce").unwrap();
    assert_eq!(passes[0].name(), "expert-reuse");
    let Err(e) = r.build_str("expert-reuse{similarity=cosine}") else { panic!("a bad similarity was accepted") };
    let e = e.to_string();
    assert!(e.contains("similarity"), "{e}");
    let docs = r.describe();
    assert!(docs.contains("expert-reuse") && docs.contains("output-rows"), "{docs}");
}

//! Tests of lifting, splicing and the whole pass: unit tests, snapshots of
//! IR text, and numeric checks against the reference interpreter.

use super::*;
use sharc_interp::Interpreter;
use sharc_ir::text::{parse, print};
use sharc_ir::{Evaluator, Op, Tensor, Type, Value, infer_shapes};

/// Parses, infers shapes, runs `simplify`, verifies; returns the graph
/// before and after and the context.
fn run_on(src: &str, options: SimplifyOptions) -> (Graph, Graph, PassContext<'static>) {
    let mut g = parse(src).unwrap_or_else(|e| panic!("{e}"));
    infer_shapes(&mut g).unwrap_or_else(|e| panic!("{e}"));
    let before = g.clone();
    let mut cx = PassContext::default();
    Simplify::new(options).run(&mut g, &mut cx).unwrap_or_else(|e| panic!("{e}"));
    sharc_ir::verify(&g).unwrap_or_else(|e| panic!("{e}\n{}", print(&g)));
    (before, g, cx)
}

/// Relaxed mode: the snapshots show what the relaxed laws add.
fn relaxed() -> SimplifyOptions {
    SimplifyOptions { relaxed: true, ..SimplifyOptions::default() }
}

fn simplify(src: &str) -> String {
    simplify_with(src, SimplifyOptions::default())
}

fn simplify_with(src: &str, options: SimplifyOptions) -> String {
    let (_, g, cx) = run_on(src, options);
    assert_eq!(cx.statistics["simplify"].get("ill-typed-nodes"), Some(&0), "{:?}", cx.reports);
    print(&g)
}

/// Deterministic pseudo-random floats in [-1, 1).
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Random inputs for a graph whose inputs have fixed shapes.
fn random_inputs(g: &Graph) -> Vec<Value> {
    g.input_values()
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let shape = g.value_type(v).shape().and_then(|s| s.as_fixed()).expect("test inputs have fixed shapes");
            let n = shape.iter().product();
            Value::Tensor(Tensor::from_vec(&shape, random(n, i as u64 + 7)))
        })
        .collect()
}

/// Runs both graphs on the same random inputs; returns the largest
/// absolute difference over all outputs.
fn max_difference(a: &Graph, b: &Graph) -> f64 {
    let inputs = random_inputs(a);
    let interp = Interpreter::new();
    let ra = interp.evaluate(a, &inputs).unwrap_or_else(|e| panic!("before: {e}"));
    let rb = interp.evaluate(b, &inputs).unwrap_or_else(|e| panic!("after: {e}\n{}", print(b)));
    let mut worst: f64 = 0.0;
    for (x, y) in ra.iter().zip(&rb) {
        let (x, y) = (x.as_tensor().expect("tensor output"), y.as_tensor().expect("tensor output"));
        assert_eq!(x.shape(), y.shape());
        let (x, y) = (x.to_f64_vec().expect("numeric"), y.to_f64_vec().expect("numeric"));
        for (p, q) in x.iter().zip(&y) {
            worst = worst.max((p - q).abs());
        }
    }
    worst
}

// ----- lifting -----

#[test]
fn lifting_binds_leaves_and_carries_constants() {
    let g = parse(
        r#"graph @g(%x: f32[b, 4], %y: f32[b, 4]) -> (%out) {
  %two = const f32[] 2.0
  %s = Add(%x, %y)
  %out = Mul(%s, %two)
}
"#,
    )
    .unwrap();
    let l = lift::lift(&g).unwrap();
    assert_eq!(l.roots.len(), 1);
    assert_eq!(l.leaves.len(), 2);
    assert_eq!(g.value_info(l.leaves[0].value).name, "x");
    assert_eq!(l.root_expr(l.roots[0].1).to_string(), "(mul (add v0 v1) f32[]:2.0)");
}

#[test]
fn lifting_keeps_attributes_as_literals_and_other_ops_as_op_nodes() {
    let g = parse(
        r#"graph @g(%x: f32[2, 3, 4]) -> (%out) {
  %t = Transpose(%x) {perm = [0, 2, 1]}
  %r = Relu(%t)
  %c = Cast(%r) {to = f64}
  %out = Softmax(%c) {axis = 1}
}
"#,
    )
    .unwrap();
    let l = lift::lift(&g).unwrap();
    assert_eq!(
        l.root_expr(l.roots[0].1).to_string(),
        "(softmax (cast (op0 (transpose v0 i64[3]:0,2,1)) i64[]:11) i64[]:1)"
    );
    assert_eq!(l.ops, vec![Op::Unary(sharc_ir::UnaryOp::Relu)]);
}

#[test]
fn a_multi_output_op_splits_regions() {
    // The Split outputs depend on %a, and %out depends on them: %a and
    // %out must be in different regions, so %a is a root and a leaf of
    // %out's region.
    let g = parse(
        r#"graph @g(%x: f32[4, 6]) -> (%out) {
  %a = Neg(%x)
  %sizes = const i64[2] [3, 3]
  %p, %q = Split(%a, %sizes) {axis = 1}
  %s = Add(%p, %q)
  %out = Mul(%s, %a)
}
"#,
    )
    .unwrap();
    let l = lift::lift(&g).unwrap();
    assert_eq!(l.regions, 2);
    let roots: Vec<String> = l.roots.iter().map(|(v, _)| g.value_info(*v).name.clone()).collect();
    assert_eq!(roots, vec!["a", "out"]);
    let out = l.roots.iter().find(|(v, _)| g.value_info(*v).name == "out").unwrap().1;
    // Leaf v0 is %x (in %a's region); in out's region the two Split
    // outputs are v1 and v2, and %a is v3.
    assert_eq!(l.root_expr(out).to_string(), "(mul (add v1 v2) v3)");
    assert_eq!(g.value_info(l.leaves[3].value).name, "a");
}

// ----- splicing -----

#[test]
fn splicing_the_unchanged_extraction_changes_nothing() {
    let src = r#"graph @g(%x: f32[b, 4], %w: f32[4, 4]) -> (%y) {
  %m = MatMul(%x, %w)
  %one = const f32[] 1.0
  %y = Mul(%m, %one)
}
"#;
    let mut g = parse(src).unwrap();
    infer_shapes(&mut g).unwrap();
    let before = print(&g);
    let l = lift::lift(&g).unwrap();
    let (eg, class_of) = l.to_egraph();
    // No rules: extraction can only pick the original nodes.
    let original = original_nodes(&l, &eg, &class_of);
    let ex = Extractor::new(&eg, CostModel::new(&eg, 64, original));
    let stats = splice::splice(&mut g, &l, &eg, &class_of, |c| ex.find_best_node(c)).unwrap();
    assert!(!stats.changed(), "{stats:?}");
    assert_eq!(stats.reused, 2);
    assert_eq!(print(&g), before);
}

#[test]
fn splicing_keeps_output_names_and_removes_dead_nodes() {
    let (_, g, cx) = run_on(
        r#"graph @g(%x: f32[b, 4]) -> (%y) {
  %n = Neg(%x)
  %nn = Neg(%n)
  %y = Relu(%nn)
}
"#,
        SimplifyOptions::default(),
    );
    // Relu is rebuilt on %x; it keeps the name %y, and both Negs are gone.
    assert_eq!(print(&g), "graph @g(%x: f32[b, 4]) -> (%y) {\n  %y = Relu(%x) : f32[b, 4]\n}\n");
    assert_eq!(cx.statistics["simplify"]["nodes-removed"], 3);
}

// ----- the pass: snapshots -----

#[test]
fn snapshot_attention_scores() {
    // BERT's attention scores: q @ k^T / sqrt(d), with k transposed twice
    // (permute then transpose(-1, -2)). Relaxed: the scale moves onto q,
    // the smaller operand.
    let out = simplify_with(
        r#"graph @attention(%q: f32[b, 2, s, 8], %k: f32[b, s, 2, 8]) -> (%probs) {
  %kt = Transpose(%k) {perm = [0, 2, 1, 3]}
  %ktt = Transpose(%kt) {perm = [0, 1, 3, 2]}
  %scores = MatMul(%q, %ktt)
  %d = const f32[] 2.828427
  %scaled = Div(%scores, %d)
  %probs = Softmax(%scaled) {axis = -1}
}
"#,
        relaxed(),
    );
    insta::assert_snapshot!("attention_scores", out);
}

#[test]
fn snapshot_algebra_cleanup() {
    let out = simplify(
        r#"graph @cleanup(%x: f32[b, 4], %m: i64[b, 4]) -> (%y, %mask) {
  %one = const f32[] 1.0
  %a = Mul(%x, %one)
  %i = Identity(%a)
  %n = Neg(%i)
  %nn = Neg(%n)
  %two = const f32[] 2.0
  %p = Pow(%nn, %two)
  %y = Div(%p, %two)
  %ax1 = const i64[1] [1]
  %ax2 = const i64[1] [2]
  %u1 = Unsqueeze(%m, %ax1)
  %mask = Unsqueeze(%u1, %ax2)
}
"#,
    );
    insta::assert_snapshot!("algebra_cleanup", out);
}

#[test]
fn snapshot_flattened_linear_layer() {
    // gpt-2's Conv1D without bias: view(-1, K) @ W, viewed back.
    let out = simplify(
        r#"graph @conv1d(%x: f32[2, 3, 8]) -> (%y) {
  %w = weight @w : f32[8, 4]
  %flat = const i64[2] [-1, 8]
  %x2 = Reshape(%x, %flat)
  %g = Gemm(%x2, %w)
  %back = const i64[3] [2, 3, 4]
  %y = Reshape(%g, %back)
}
"#,
    );
    insta::assert_snapshot!("flattened_linear_layer", out);
}

#[test]
fn snapshot_matrix_bias_becomes_gemm() {
    // On matrices a product plus a bias is one Gemm: one kernel instead of two.
    let out = simplify(
        r#"graph @mlp(%x: f32[b, 8]) -> (%y) {
  %w1 = weight @w1 : f32[8, 16]
  %b1 = weight @b1 : f32[16]
  %h = MatMul(%x, %w1)
  %hb = Add(%h, %b1)
  %y = Relu(%hb)
}
"#,
    );
    insta::assert_snapshot!("matrix_bias_becomes_gemm", out);
}

#[test]
fn nothing_to_simplify_means_nothing_changes() {
    // A transformer feed-forward block on [batch, seq, dim]: Gemm needs
    // matrices, and nothing else has a cheaper form.
    let src = r#"graph @ffn(%x: f32[b, s, 8]) -> (%y) {
  %w1 = weight @w1 : f32[8, 16]
  %b1 = weight @b1 : f32[16]
  %h = MatMul(%x, %w1) : f32[b, s, 16]
  %hb = Add(%h, %b1) : f32[b, s, 16]
  %r = Relu(%hb) : f32[b, s, 16]
  %w2 = weight @w2 : f32[16, 8]
  %o = MatMul(%r, %w2) : f32[b, s, 8]
  %res = Add(%o, %x) : f32[b, s, 8]
  %g = weight @g : f32[8]
  %be = weight @be : f32[8]
  %y = LayerNormalization(%res, %g, %be) {axis = -1} : f32[b, s, 8]
}
"#;
    let (before, after, cx) = run_on(src, SimplifyOptions::default());
    assert_eq!(print(&after), print(&before));
    insta::assert_snapshot!("nothing_changes", print(&after));
    assert_eq!(cx.statistics["simplify"]["nodes-created"], 0);
    assert_eq!(cx.statistics["simplify"]["nodes-removed"], 0);
}

#[test]
fn exact_mode_keeps_divisions_by_non_powers_of_two() {
    let src = r#"graph @g(%x: f32[4]) -> (%y) {
  %c = const f32[] 3.0
  %y = Div(%x, %c)
}
"#;
    let (before, after, _) = run_on(src, SimplifyOptions::default());
    assert_eq!(print(&after), print(&before));
    // Relaxed mode multiplies by the rounded reciprocal instead.
    let (_, after, _) = run_on(src, relaxed());
    assert!(print(&after).contains("Mul(%x, "), "{}", print(&after));
}

#[test]
fn limits_are_reported() {
    let src = r#"graph @g(%x: f32[4]) -> (%y) {
  %c = const f32[] 2.0
  %a = Mul(%x, %c)
  %b = Mul(%a, %c)
  %y = Mul(%b, %c)
}
"#;
    let tight = SimplifyOptions { iter_limit: 1, ..relaxed() };
    let (_, _, cx) = run_on(src, tight);
    assert_eq!(cx.statistics["simplify"].get("stop-iteration-limit"), Some(&1));
    let (_, _, cx) = run_on(src, relaxed());
    assert_eq!(cx.statistics["simplify"].get("stop-saturated"), Some(&1));
}

#[test]
fn options_come_from_pipeline_text() {
    let r = crate::Registry::with_standard_passes();
    let info = r.get("simplify").expect("simplify is registered");
    let names: Vec<&str> = info.options.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["node-limit", "iter-limit", "time-limit-ms", "relaxed", "nominal-dim"]);
    let passes = r.build_str("simplify{relaxed=false,iter-limit=1}").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(passes[0].name(), "simplify");
    // The built pass honours the options: with one iteration on this chain
    // saturation stops at the limit.
    let mut g =
        parse("graph @g(%x: f32[4]) -> (%y) {\n  %c = const f32[] 2.0\n  %a = Mul(%x, %c)\n  %y = Mul(%a, %c)\n}\n")
            .unwrap();
    infer_shapes(&mut g).unwrap();
    let mut pass = r.build_str("simplify{iter-limit=1,relaxed=true}").unwrap();
    let mut cx = PassContext::default();
    pass[0].run(&mut g, &mut cx).unwrap();
    assert_eq!(cx.statistics["simplify"].get("stop-iteration-limit"), Some(&1));
    assert!(r.build_str("simplify{node-limt=3}").is_err());
}

// ----- the pass: numbers -----

#[test]
fn simplified_graphs_compute_the_same_values() {
    let src = r#"graph @mix(%x: f32[2, 3, 8], %q: f32[2, 2, 3, 4], %k: f32[2, 3, 2, 4]) -> (%y, %probs, %z) {
  %w = weight @w : f32[8, 4]
  %bias = weight @bias : f32[4]
  %flat = const i64[2] [-1, 8]
  %x2 = Reshape(%x, %flat)
  %g = Gemm(%x2, %w, %bias)
  %back = const i64[3] [2, 3, 4]
  %y = Reshape(%g, %back)
  %kt = Transpose(%k) {perm = [0, 2, 1, 3]}
  %ktt = Transpose(%kt) {perm = [0, 1, 3, 2]}
  %scores = MatMul(%q, %ktt)
  %d = const f32[] 2.0
  %scaled = Div(%scores, %d)
  %probs = Softmax(%scaled) {axis = -1}
  %one = const f32[] 1.0
  %three = const f32[] 3.0
  %m1 = Mul(%y, %one)
  %p = Pow(%m1, %three)
  %n = Neg(%p)
  %nn = Neg(%n)
  %half = const f32[] 0.5
  %s1 = Mul(%nn, %half)
  %s2 = Mul(%s1, %three)
  %z = Div(%s2, %three)
}
"#;
    // Exact laws keep every bit; relaxed ones may round differently.
    for (options, tolerance) in [(SimplifyOptions::default(), 0.0), (relaxed(), 1e-5)] {
        let (before, after, cx) = run_on(src, options);
        assert!(after.node_count() < before.node_count(), "{}", print(&after));
        let diff = max_difference(&before, &after);
        assert!(diff <= tolerance, "outputs moved by {diff:e}\n{}", cx.reports["simplify"]);
    }
}

#[test]
fn unknown_types_are_tolerated() {
    // Without shape inference nothing shape-dependent fires, and nothing breaks.
    let mut g = parse(
        r#"graph @g(%x) -> (%y) {
  %one = const f32[] 1.0
  %n = Neg(%x)
  %nn = Neg(%n)
  %y = Mul(%nn, %one)
}
"#,
    )
    .unwrap();
    let mut cx = PassContext::default();
    Simplify::default().run(&mut g, &mut cx).unwrap();
    sharc_ir::verify(&g).unwrap();
    // Double negation needs no shapes; `* 1` needs them and stays.
    assert!(print(&g).contains("Mul(%x, %one)"), "{}", print(&g));
    assert!(matches!(g.value_type(g.outputs()[0].value), Type::Unknown | Type::Tensor(_)));
}

#[test]
fn snapshot_through_the_pipeline_with_numeric_check() {
    // By name in a pipeline, under the pass manager's verifier, with the
    // interpreter checking every output before and after (b = 3, s = 5).
    let out = crate::testing::PipelineTest::new("infer-shapes,simplify{node-limit=5000,relaxed=true},dce")
        .check_numerics(1e-5)
        .dim("s", 5)
        .run(
            r#"graph @head(%x: f32[b, s, 8], %mask: i64[b, s]) -> (%y, %m) {
  %w = weight @w : f32[8, 8]
  %kt = Transpose(%x) {perm = [0, 2, 1]}
  %scores = MatMul(%x, %w)
  %ctx = MatMul(%scores, %kt)
  %d = const f32[] 4.0
  %scaled = Div(%ctx, %d)
  %one = const f32[] 1.0
  %y = Mul(%scaled, %one)
  %ax1 = const i64[1] [1]
  %ax2 = const i64[1] [2]
  %u1 = Unsqueeze(%mask, %ax1)
  %m = Unsqueeze(%u1, %ax2)
}
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.max_abs_diff.iter().all(|(_, d)| *d <= 1e-5), "{:?}", out.max_abs_diff);
    insta::assert_snapshot!("through_the_pipeline", out.diff());
}

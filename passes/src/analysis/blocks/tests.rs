use super::*;
use sharc_ir::text::parse;

/// IR text of a small pre-norm transformer: `acts.len()` blocks of
/// attention (q, k, v, o with a bias) and a two-layer FFN whose activation
/// is `acts[i]`, on a residual stream of width `d`, then a final norm.
/// Weights get parse's deterministic synthetic data.
pub(crate) fn synthetic(acts: &[&str], d: usize, ff: usize) -> String {
    let mut s = format!("graph @tiny(%x0: f32[batch, seq, {d}]) -> (%y) {{\n");
    for (i, act) in acts.iter().enumerate() {
        let l = format!("l{i}");
        let w = |name: &str, shape: &str| format!("  %{l}.{name} = weight @{l}.{name} : f32[{shape}]\n");
        for (name, shape) in [
            ("ln1.g", format!("{d}")),
            ("ln1.b", format!("{d}")),
            ("wq", format!("{d}, {d}")),
            ("wk", format!("{d}, {d}")),
            ("wv", format!("{d}, {d}")),
            ("wo", format!("{d}, {d}")),
            ("bo", format!("{d}")),
            ("ln2.g", format!("{d}")),
            ("ln2.b", format!("{d}")),
            ("w1", format!("{d}, {ff}")),
            ("b1", format!("{ff}")),
            ("w2", format!("{ff}, {d}")),
        ] {
            s.push_str(&w(name, &shape));
        }
        let x = format!("x{i}");
        let next = format!("x{}", i + 1);
        s.push_str(&format!(
            "  %{l}.n1 = LayerNormalization(%{x}, %{l}.ln1.g, %{l}.ln1.b)
  %{l}.q = MatMul(%{l}.n1, %{l}.wq)
  %{l}.k = MatMul(%{l}.n1, %{l}.wk)
  %{l}.v = MatMul(%{l}.n1, %{l}.wv)
  %{l}.kt = Transpose(%{l}.k) {{perm = [0, 2, 1]}}
  %{l}.s = MatMul(%{l}.q, %{l}.kt)
  %{l}.p = Softmax(%{l}.s)
  %{l}.c = MatMul(%{l}.p, %{l}.v)
  %{l}.o = MatMul(%{l}.c, %{l}.wo)
  %{l}.ob = Add(%{l}.o, %{l}.bo)
  %{l}.h = Add(%{x}, %{l}.ob)
  %{l}.n2 = LayerNormalization(%{l}.h, %{l}.ln2.g, %{l}.ln2.b)
  %{l}.f = MatMul(%{l}.n2, %{l}.w1)
  %{l}.fb = Add(%{l}.f, %{l}.b1)
  %{l}.a = {act}(%{l}.fb)
  %{l}.f2 = MatMul(%{l}.a, %{l}.w2)
  %{next} = Add(%{l}.h, %{l}.f2)
"
        ));
    }
    let n = acts.len();
    s.push_str(&format!(
        "  %lnf.g = weight @lnf.g : f32[{d}]\n  %lnf.b = weight @lnf.b : f32[{d}]\n  %y = LayerNormalization(%x{n}, %lnf.g, %lnf.b)\n}}\n"
    ));
    s
}

fn names(g: &Graph, an: &BlockAnalysis) -> Vec<(String, String)> {
    an.blocks.iter().map(|b| (g.value_info(b.input).name.clone(), g.value_info(b.output).name.clone())).collect()
}

#[test]
fn finds_the_blocks_of_a_synthetic_transformer() {
    let g = parse(&synthetic(&["Relu"; 4], 8, 16)).unwrap();
    let an = find_blocks(&g).unwrap();
    assert_eq!(an.len(), 4);
    assert_eq!(an.adds_per_block, 2);
    assert_eq!(
        names(&g, &an),
        vec![
            ("x0".into(), "x1".into()),
            ("x1".into(), "x2".into()),
            ("x2".into(), "x3".into()),
            ("x3".into(), "x4".into())
        ]
    );
    let roles: Vec<&str> = an.roles.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        roles,
        [
            "norm1.gain",
            "norm1.bias",
            "q",
            "k",
            "v",
            "o",
            "o.bias",
            "norm2.gain",
            "norm2.bias",
            "ffn-in",
            "ffn-in.bias",
            "ffn-out"
        ]
    );
    // Weights align by role: block i's `k` is l{i}.wk.
    for (i, b) in an.blocks.iter().enumerate() {
        let k = &b.weights[an.role_index("k").unwrap()];
        assert_eq!(g.weights.get(k.id).unwrap().name, format!("l{i}.wk"));
        assert_eq!(k.uses.len(), 1);
        assert_eq!(g.value_info(ValueRef::new(k.uses[0].0, 0)).name, format!("l{i}.k"));
        // 17 compute nodes, aligned: the same op at every position.
        assert_eq!(b.nodes.len(), 17);
        for (x, y) in b.nodes.iter().zip(&an.blocks[0].nodes) {
            assert_eq!(g.node(*x).op, g.node(*y).op);
        }
    }
    assert_eq!(an.block_params(&g, 0), (2 * 8 + 4 * 64 + 8 + 2 * 8 + 8 * 16 + 16 + 16 * 8) as u64);
    let text = an.summary(&g);
    assert!(text.contains("4 blocks of 17 compute nodes"), "{text}");
    assert!(text.contains("ffn-out"), "{text}");
}

#[test]
fn names_do_not_matter() {
    // The same model with every name scrambled finds the same blocks.
    let src = synthetic(&["Relu"; 3], 4, 8).replace("l0.", "zz.").replace("l1.", "aa.").replace("l2.", "mm.");
    let g = parse(&src).unwrap();
    let an = find_blocks(&g).unwrap();
    assert_eq!(an.len(), 3);
    assert_eq!(an.roles[an.role_index("v").unwrap()].kind, RoleKind::Linear);
}

#[test]
fn a_differing_block_ends_the_run() {
    // Block 2 uses another activation: only blocks 0 and 1 repeat.
    let g = parse(&synthetic(&["Relu", "Relu", "Sigmoid", "Tanh"], 4, 8)).unwrap();
    let an = find_blocks(&g).unwrap();
    assert_eq!(names(&g, &an), vec![("x0".into(), "x1".into()), ("x1".into(), "x2".into())]);
}

#[test]
fn no_two_matching_blocks_is_a_clear_error() {
    let g = parse(&synthetic(&["Relu", "Sigmoid", "Tanh", "Erf"], 4, 8)).unwrap();
    let e = find_blocks(&g).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, BlockError::NoRepeats(_)), "{msg}");
    assert!(msg.contains("residual stream of 8 adds"), "{msg}");
    assert!(msg.contains("differs"), "{msg}");
}

#[test]
fn a_model_without_residuals_has_no_stream() {
    let g = parse(
        "graph @mlp(%x: f32[2, 4]) -> (%y) {
  %w1 = weight @w1 : f32[4, 4]
  %w2 = weight @w2 : f32[4, 4]
  %a = MatMul(%x, %w1)
  %b = Relu(%a)
  %y = MatMul(%b, %w2)
}
",
    )
    .unwrap();
    let e = find_blocks(&g).unwrap_err();
    assert!(matches!(e, BlockError::NoStream(_)));
    assert!(e.to_string().starts_with("no repeated blocks: found 0 residual adds"), "{e}");
}

#[test]
fn shape_computations_may_live_outside_the_first_block() {
    // As torch exports do: the first block's reshape target is computed
    // from the stream before the block, later blocks compute their own.
    let mut src = String::from("graph @g(%x0: f32[batch, 4]) -> (%x3, %b0) {\n");
    src.push_str("  %s0 = Shape(%x0)\n  %i0 = const i64[1] [0]\n  %b0 = Gather(%s0, %i0) {axis = 0}\n");
    for i in 0..3 {
        let shape = if i == 0 {
            "%b0".to_string()
        } else {
            src.push_str(&format!(
                "  %s{i}x = Shape(%x{i})\n  %i{i}x = const i64[1] [0]\n  %b{i}x = Gather(%s{i}x, %i{i}x) {{axis = 0}}\n"
            ));
            format!("%b{i}x")
        };
        src.push_str(&format!(
            "  %w{i} = weight @w{i} : f32[4, 4]
  %m{i} = MatMul(%x{i}, %w{i})
  %c{i} = const i64[1] [4]
  %t{i} = Concat({shape}, %c{i}) {{axis = 0}}
  %r{i} = Reshape(%m{i}, %t{i})
  %x{} = Add(%x{i}, %r{i})
",
            i + 1
        ));
    }
    src.push_str("}\n");
    let g = parse(&src).unwrap();
    let an = find_blocks(&g).unwrap();
    assert_eq!(an.len(), 3, "{}", an.summary(&g));
    assert_eq!(an.roles.len(), 1);
    // Block 0 owns none of the size computation, the others own theirs.
    assert!(an.blocks[0].aux_nodes.iter().all(|n| !matches!(g.node(*n).op, Op::Shape(_))));
    assert!(an.blocks[1].aux_nodes.iter().any(|n| matches!(g.node(*n).op, Op::Shape(_))));
}

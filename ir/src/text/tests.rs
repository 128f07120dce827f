//! Tests of the text format: exact expected text for small graphs, the
//! round-trip contract on graphs covering every attribute kind, dtype and
//! structural feature, error reporting, robustness and speed.

use super::*;
use crate::dtype::ALL_DTYPES;
use crate::op::{If, Loop, MODELLED_OPS};
use crate::{
    Attr, Attrs, DType, Dim, Metadata, Op, Opaque, Shape, Subgraph, Tensor, TensorData, TensorType, Type, ValueInfo,
    ValueRef, Weight, verify,
};
use half::{bf16, f16};

// ----- helpers -----

fn op(name: &str, attrs: Vec<(&str, Attr)>) -> Op {
    let a: Attrs = attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    Op::from_onnx_default_domain(name, a).unwrap().unwrap()
}

fn t(dtype: DType, dims: &[Dim]) -> Type {
    Type::tensor(dtype, dims.to_vec())
}

fn f32s(dims: &[u64]) -> Type {
    Type::tensor(DType::F32, dims.iter().map(|&d| Dim::Fixed(d)).collect::<Vec<_>>())
}

fn node(g: &mut Graph, op: Op, inputs: &[Option<ValueRef>], outputs: &[(&str, Type)]) -> Vec<ValueRef> {
    let outs = outputs.iter().map(|(n, t)| ValueInfo::new(*n, t.clone())).collect();
    let id = g.add_node(op, "", inputs, outs);
    (0..outputs.len()).map(|p| ValueRef::new(id, p as u32)).collect()
}

fn one(g: &mut Graph, op: Op, inputs: &[ValueRef], name: &str, ty: Type) -> ValueRef {
    let ins: Vec<Option<ValueRef>> = inputs.iter().copied().map(Some).collect();
    node(g, op, &ins, &[(name, ty)])[0]
}

fn has_body_weights(g: &Graph) -> bool {
    all_weights(g).len() != g.weights.len()
}

/// Checks the format's contract on `g` and returns its text:
/// printing is deterministic, `print(parse_with_weights(print(g))) == print(g)`,
/// a valid graph reads back valid, and (with `structural`) a weight-free graph
/// reads back structurally equal through plain `parse`.
fn check(g: &Graph, structural: bool) -> String {
    let text = print(g);
    assert_eq!(text, print(&g.clone()), "printing is deterministic");
    let store = if has_body_weights(g) { all_weights(g) } else { g.weights.clone() };
    let back = parse_with_weights(&text, &store).unwrap_or_else(|e| panic!("{e}\n--- text ---\n{text}"));
    assert_eq!(print(&back), text, "print(parse(print(g))) differs");
    if verify(g).is_ok() {
        verify(&back).unwrap_or_else(|e| panic!("{e}\n{text}"));
    }
    if structural && all_weights(g).is_empty() {
        let plain = parse(&text).unwrap();
        assert!(plain.structurally_equal(g), "parse(print(g)) is not structurally equal to g:\n{text}");
    }
    text
}

// ----- graphs -----

fn tiny() -> Graph {
    let mut g = Graph::new("tiny");
    let x = g.add_input("x", t(DType::F32, &[Dim::sym("batch"), Dim::Fixed(16)]));
    let w = g.add_weight(Weight::from_tensor(
        "fc.weight",
        Tensor::from_vec(&[16, 8], (0..128).map(|i| i as f32 / 7.0).collect()),
    ));
    let h = one(&mut g, Op::MatMul, &[x, w], "0", t(DType::F32, &[Dim::sym("batch"), Dim::Fixed(8)]));
    let y = one(&mut g, op("Relu", vec![]), &[h], "y", t(DType::F32, &[Dim::sym("batch"), Dim::Fixed(8)]));
    g.add_output("y", y);
    g
}

/// A body with one formal input, used as a graph attribute.
fn small_body(name: &str) -> Graph {
    let mut b = Graph::new(name);
    let i = b.add_input("i", f32s(&[2]));
    let o = one(&mut b, op("Neg", vec![]), &[i], "o", f32s(&[2]));
    b.add_output("o", o);
    b
}

fn attr_zoo() -> Graph {
    let mut g = Graph::new("attrs");
    let x = g.add_input("x", f32s(&[2]));
    let mut a = Attrs::new();
    let mut put = |k: &str, v: Attr| {
        a.insert(k.to_string(), v);
    };
    put("f", Attr::Float(0.1));
    put("f_int_valued", Attr::Float(3.0));
    put("f_nan", Attr::Float(f32::NAN));
    put("f_neg_nan", Attr::Float(-f32::NAN));
    put("f_payload", Attr::Float(f32::from_bits(0x7fc0_0001)));
    put("f_neg_zero", Attr::Float(-0.0));
    put("f_inf", Attr::Float(f32::NEG_INFINITY));
    put("f_tiny", Attr::Float(f32::from_bits(1)));
    put("f_max", Attr::Float(f32::MAX));
    put("i", Attr::Int(-7));
    put("i_min", Attr::Int(i64::MIN));
    put("i_max", Attr::Int(i64::MAX));
    put("s", Attr::String("a \"quoted\"\n\tline \\ é 漢 \u{1} \0 \r end".into()));
    put("s_empty", Attr::String(String::new()));
    put("t", Attr::Tensor(Tensor::from_vec(&[2, 2], vec![1i64, -2, 3, i64::MIN])));
    put("t_str", Attr::Tensor(Tensor::from_vec(&[2], vec!["x".to_string(), "\"y\"".to_string()])));
    put("g", Attr::Graph(Subgraph::new(small_body("g_body"))));
    put("fs", Attr::Floats(vec![1.0, -0.0, f32::NAN, 1e-7]));
    put("fs_empty", Attr::Floats(vec![]));
    put("is", Attr::Ints(vec![1, -2, 0]));
    put("is_empty", Attr::Ints(vec![]));
    put("ss", Attr::Strings(vec!["a".into(), "b c".into(), String::new()]));
    put("ss_empty", Attr::Strings(vec![]));
    put("ts", Attr::Tensors(vec![Tensor::scalar(1.5f32), Tensor::from_vec(&[0], Vec::<i32>::new())]));
    put("ts_empty", Attr::Tensors(vec![]));
    put("gs", Attr::Graphs(vec![Subgraph::new(small_body("first")), Subgraph::new(small_body("second"))]));
    put("gs_empty", Attr::Graphs(vec![]));
    let seq_opt = Type::Sequence(Box::new(Type::Optional(Box::new(Type::Tensor(TensorType::unranked(DType::F16))))));
    put("ty", Attr::Type(seq_opt));
    put("ty_unknown", Attr::Type(Type::Unknown));
    put("weird name!", Attr::Int(1));
    let zoo = Op::Opaque(Opaque { domain: "com.example".into(), op_type: "Zoo".into(), attrs: a });
    let z = one(&mut g, zoo, &[x], "z", Type::Unknown);
    g.add_output("z", z);
    g
}

/// One constant per dtype, with the awkward values of each.
fn dtype_zoo(with_nans: bool) -> Graph {
    let mut g = Graph::new("dtypes");
    let mut consts: Vec<Tensor> = Vec::new();
    let nan = |v: f32| if with_nans { v } else { 0.0 };
    consts.push(Tensor::from_vec(
        &[10],
        vec![
            0.1f32,
            -0.0,
            nan(f32::NAN),
            nan(-f32::NAN),
            nan(f32::from_bits(0x7f80_0001)),
            f32::INFINITY,
            -1e-45,
            f32::MAX,
            3.0,
            1e20,
        ],
    ));
    let nan64 = |v: f64| if with_nans { v } else { 0.0 };
    consts.push(Tensor::from_vec(
        &[6],
        vec![0.1f64, -0.0, nan64(f64::from_bits(0x7ff0_0000_0000_0001)), f64::NEG_INFINITY, 5e-324, f64::MAX],
    ));
    let h: Vec<f16> =
        [0.1f32, -0.0, 65504.0, 6e-8, f32::INFINITY, 1.0 / 3.0].iter().map(|&v| f16::from_f32(v)).collect();
    let mut h = h;
    let mut b: Vec<bf16> =
        [0.1f32, -0.0, 3.0e38, 1e-40, f32::NEG_INFINITY, 1.0 / 3.0].iter().map(|&v| bf16::from_f32(v)).collect();
    if with_nans {
        h.push(f16::from_bits(0x7e01));
        h.push(f16::from_bits(0xfe00));
        b.push(bf16::from_bits(0x7fc1));
        b.push(bf16::from_bits(0x7fc0));
    }
    let (hn, bn) = (h.len(), b.len());
    consts.push(Tensor::from_vec(&[hn], h));
    consts.push(Tensor::from_vec(&[bn], b));
    consts.push(Tensor::from_vec(&[3], vec![i8::MIN, -1, i8::MAX]));
    consts.push(Tensor::from_vec(&[3], vec![i16::MIN, 0, i16::MAX]));
    consts.push(Tensor::from_vec(&[3], vec![i32::MIN, 0, i32::MAX]));
    consts.push(Tensor::from_vec(&[3], vec![i64::MIN, 0, i64::MAX]));
    consts.push(Tensor::from_vec(&[2], vec![0u8, u8::MAX]));
    consts.push(Tensor::from_vec(&[2], vec![0u16, u16::MAX]));
    consts.push(Tensor::from_vec(&[2], vec![0u32, u32::MAX]));
    consts.push(Tensor::from_vec(&[2], vec![0u64, u64::MAX]));
    consts.push(Tensor::from_vec(&[3], vec![true, false, true]));
    consts.push(Tensor::from_vec(
        &[5],
        vec!["".to_string(), "a\"b\\c".into(), "漢字".into(), "line\nbreak\ttab".into(), "\u{7f}\u{1b}".into()],
    ));
    let c64 = vec![[1.0f32, -2.0], [nan(f32::NAN), -0.0]];
    consts
        .push(Tensor::new(TensorData::Complex64(ndarray::ArrayD::from_shape_vec(vec![2], c64).unwrap().into_shared())));
    let c128 = vec![[0.1f64, 1e300]];
    consts.push(Tensor::new(TensorData::Complex128(
        ndarray::ArrayD::from_shape_vec(vec![1], c128).unwrap().into_shared(),
    )));
    for d in ALL_DTYPES.into_iter().filter(|d| d.is_narrow()) {
        let bits = d.bit_width().unwrap();
        let mut codes: Vec<u8> = (0..(1u32 << bits)).map(|c| c as u8).collect();
        if !with_nans {
            // Keep only codes whose values compare equal to themselves.
            codes.retain(|&c| !matches!((d, c), (DType::F8E4M3FN, 0x7f | 0xff) | (DType::F8E8M0, 0xff)));
            codes.retain(|&c| !matches!((d, c), (DType::F8E4M3FNUZ | DType::F8E5M2FNUZ, 0x80)));
            codes.retain(|&c| !(d == DType::F8E5M2 && c & 0x7c == 0x7c && c & 3 != 0));
        }
        if bits < 8 {
            codes.push(0xf0 | 1); // out of range for the format: printed as bits(0xf1)
        }
        let n = codes.len();
        consts.push(Tensor::from_codes(d, &[n], codes).unwrap());
    }
    // Shapes: scalar, nested, empty, splat.
    consts.push(Tensor::scalar(2.5f32));
    consts.push(Tensor::from_vec(&[2, 2, 3], (0..12).collect::<Vec<i32>>()));
    consts.push(Tensor::from_vec(&[0], Vec::<f32>::new()));
    consts.push(Tensor::from_vec(&[2, 0], Vec::<f32>::new()));
    consts.push(Tensor::from_vec(&[0, 3], Vec::<i64>::new()));
    consts.push(Tensor::from_vec(&[3, 4], vec![1.5f32; 12]));
    consts.push(Tensor::from_vec(&[1, 1], vec![7i64]));
    let mut ins = Vec::new();
    for (i, c) in consts.into_iter().enumerate() {
        ins.push(g.add_constant(&format!("c{i}"), c));
    }
    let cat = one(&mut g, Op::SequenceConstruct, &ins, "all", Type::Unknown);
    g.add_output("all", cat);
    g
}

/// An If whose then-branch runs a Loop: captures two levels deep.
fn nested_control_flow() -> Graph {
    let mut g = Graph::new("control");
    let cond = g.add_input("cond", t(DType::Bool, &[]));
    let x = g.add_input("x", f32s(&[2]));
    let y = one(&mut g, op("Neg", vec![]), &[x], "y", f32s(&[2]));

    // The loop body: (i, cond_in, acc) with y captured; acc += y.
    let mut body = Graph::new("loop_body");
    body.add_input("i", t(DType::I64, &[]));
    let c_in = body.add_input("cond_in", t(DType::Bool, &[]));
    let acc = body.add_input("acc", f32s(&[2]));
    let y_in = body.add_capture("y", f32s(&[2]));
    let acc2 = one(&mut body, op("Add", vec![]), &[acc, y_in], "acc2", f32s(&[2]));
    body.add_output("cond_out", c_in);
    body.add_output("acc2", acc2);

    let mut then = Graph::new("then");
    let y_then = then.add_capture("y", f32s(&[2]));
    let trip = then.add_constant("trip", Tensor::scalar(3i64));
    let keep = then.add_constant("keep", Tensor::scalar(true));
    let looped = one(
        &mut then,
        Op::Loop(Loop { body: Subgraph::new(body) }),
        &[trip, keep, y_then, y_then],
        "acc_final",
        f32s(&[2]),
    );
    then.add_output("acc_final", looped);

    let mut els = Graph::new("else");
    let y_else = els.add_capture("y", f32s(&[2]));
    let r = one(&mut els, Op::Identity, &[y_else], "r", f32s(&[2]));
    els.add_output("acc_final", r);

    let out = one(
        &mut g,
        Op::If(If { else_branch: Subgraph::new(els), then_branch: Subgraph::new(then) }),
        &[cond, y],
        "res",
        f32s(&[2]),
    );
    g.node_mut(out.node).name = "the if".into();
    g.add_output("res", out);
    g
}

fn names_and_types() -> Graph {
    let mut g = Graph::new("layer.0/attn");
    g.meta = Metadata {
        producer_name: "pytorch".into(),
        producer_version: "2.1.0".into(),
        domain: "ai.example".into(),
        model_version: 3,
        doc_string: "a model\nwith \"quotes\"".into(),
        ir_version: 8,
        opset_imports: vec![("".into(), 17), ("com.microsoft".into(), 1)],
        props: vec![("k".into(), "v".into()), ("k".into(), "again".into())],
        preserved: vec![("functions".into(), vec![0, 1, 0xab, 0xff])],
    };
    let x = g.add_input(
        "onnx::MatMul_123",
        t(DType::F32, &[Dim::sym("batch"), Dim::sym("unk 1"), Dim::sym("3"), Dim::sym(""), Dim::Fixed(0)]),
    );
    g.node_mut(x.node).name = "input node".into();
    let u = g.add_input("unknown", Type::Unknown);
    let s = g.add_input("seq", Type::Sequence(Box::new(t(DType::I64, &[]))));
    let o = g.add_input("opt", Type::Optional(Box::new(Type::Sequence(Box::new(Type::Unknown)))));
    let r = g.add_input("ranked?", Type::Tensor(TensorType::unranked(DType::BF16)));
    let a = one(&mut g, op("Relu", vec![]), &[x], "/layer.0/attn/Relu_output_0", Type::Unknown);
    g.node_mut(a.node).name = "/layer.0/attn/Relu".into();
    let e = one(&mut g, Op::Identity, &[u], "", Type::Unknown);
    let q = one(&mut g, Op::Identity, &[s], "\"quoted\"", Type::Unknown);
    let uni = one(&mut g, Op::Identity, &[o], "名前", Type::Unknown);
    g.add_output("/layer.0/attn/Relu_output_0", a);
    g.add_output("renamed output", e);
    g.add_output("plain_alias", q);
    g.add_output("名前", uni);
    g.add_output("r", r);
    g
}

fn structure_zoo() -> Graph {
    let mut g = Graph::new("structure");
    let x = g.add_input("x", f32s(&[4]));
    let max = g.add_constant("max", Tensor::scalar(6.0f32));
    let clip = node(&mut g, Op::Clip, &[Some(x), None, Some(max)], &[("clipped", f32s(&[4]))]);
    let split = node(
        &mut g,
        op("Split", vec![("axis", Attr::Int(0)), ("num_outputs", Attr::Int(2))]),
        &[Some(clip[0])],
        &[("a", f32s(&[2])), ("b", Type::Unknown)],
    );
    // Opaque ops: another domain, an odd domain, a modelled name, a keyword name.
    let fused = Op::Opaque(Opaque {
        domain: "com.microsoft".into(),
        op_type: "FusedMatMul".into(),
        attrs: [("alpha".to_string(), Attr::Float(0.5))].into_iter().collect(),
    });
    let f = one(&mut g, fused, &[split[0], split[1]], "fused", Type::Unknown);
    let odd = Op::Opaque(Opaque { domain: "my-domain".into(), op_type: "Odd Op".into(), attrs: Attrs::new() });
    let od = one(&mut g, odd, &[f], "odd", Type::Unknown);
    let fake_relu = Op::Opaque(Opaque {
        domain: String::new(),
        op_type: "Relu".into(),
        attrs: [("legacy".to_string(), Attr::Int(1))].into_iter().collect(),
    });
    let fr = one(&mut g, fake_relu, &[od], "fake_relu", Type::Unknown);
    let fake_matmul = Op::Opaque(Opaque { domain: String::new(), op_type: "MatMul".into(), attrs: Attrs::new() });
    let fm = one(&mut g, fake_matmul, &[fr, fr], "fake_matmul", Type::Unknown);
    let kw = Op::Opaque(Opaque { domain: String::new(), op_type: "const".into(), attrs: Attrs::new() });
    let k = one(&mut g, kw, &[fm], "kw", Type::Unknown);
    let unmodelled = Op::Opaque(Opaque { domain: String::new(), op_type: "FancyOp".into(), attrs: Attrs::new() });
    let um = one(&mut g, unmodelled, &[k], "fancy", Type::Unknown);
    let ai = Op::Opaque(Opaque { domain: "ai.onnx.ml".into(), op_type: "LabelEncoder".into(), attrs: Attrs::new() });
    let lbl = one(&mut g, ai, &[um], "lbl", Type::Unknown);
    // A node without outputs, and typed attributes shown by dtype name.
    let sink = Op::Opaque(Opaque { domain: "com.example".into(), op_type: "Print".into(), attrs: Attrs::new() });
    let sid = g.add_node(sink, "printer", &[Some(lbl)], vec![]);
    assert_eq!(g.node(sid).outputs.len(), 0);
    let cast =
        one(&mut g, op("Cast", vec![("to", Attr::Int(DType::F16.onnx_code() as i64))]), &[x], "h", Type::Unknown);
    let topk = node(
        &mut g,
        op("TopK", vec![("largest", Attr::Int(0))]),
        &[Some(x), Some(max)],
        &[("values", f32s(&[2])), ("indices", t(DType::I64, &[Dim::Fixed(2)]))],
    );
    g.add_output("a", split[0]);
    g.add_output("h", cast);
    g.add_output("indices", topk[1]);
    g.add_output("x", x);
    g
}

fn weights_zoo() -> Graph {
    let mut g = tiny();
    let x = g.input_values()[0];
    // Shared: a second node for the same weight.
    let w2 = g.weight_value(crate::WeightId(0));
    let h = one(&mut g, Op::MatMul, &[x, w2], "again", Type::Unknown);
    // A weight whose value type differs from its own.
    let b = g.add_weight(Weight::from_tensor("bias", Tensor::from_vec(&[8], vec![0.5f32; 8])));
    g.value_info_mut(b).ty = Type::Unknown;
    g.node_mut(b.node).name = "bias_node".into();
    let s = one(&mut g, op("Add", vec![]), &[h, b], "sum", Type::Unknown);
    // A quoted weight name, and a weight no node uses.
    let q = g.add_weight(Weight::from_tensor("/enc/\"w\"", Tensor::from_vec(&[2], vec![1i64, 2])));
    g.add_output("sum", s);
    g.add_output("q", q);
    g.weights.add(Weight::from_tensor("unused", Tensor::from_vec(&[3], vec![true, false, true]))).unwrap();
    g
}

// ----- the contract on many graphs -----

#[test]
fn tiny_prints_as_documented() {
    let g = tiny();
    let hash = g.weights.iter().next().unwrap().1.content_hash();
    let expected = format!(
        "graph @tiny(%x: f32[batch, 16]) -> (%y) {{
  %fc.weight = weight @fc.weight : f32[16, 8]  // sha {hash}
  %0 = MatMul(%x, %fc.weight) : f32[batch, 8]
  %y = Relu(%0) : f32[batch, 8]
}}
"
    );
    assert_eq!(check(&g, false), expected);
}

#[test]
fn attribute_kinds_round_trip() {
    let text = check(&attr_zoo(), false);
    for needle in [
        "f = 0.1",
        "f_int_valued = 3.0",
        "f_nan = nan",
        "f_neg_nan = -nan",
        "f_payload = bits(0x7fc00001)",
        "f_neg_zero = -0.0",
        "f_inf = -inf",
        "f_tiny = 1e-45",
        "i_min = -9223372036854775808",
        r#"s = "a \"quoted\"\n\tline \\ é 漢 \u{1} \0 \r end""#,
        "t = i64[2, 2] [[1, -2], [3, -9223372036854775808]]",
        "fs = [1.0, -0.0, nan, 1e-7]",
        "fs_empty = floats[]",
        "is_empty = []",
        "ss_empty = strings[]",
        "ts = [f32[] 1.5, i32[0] []]",
        "ts_empty = tensors[]",
        "gs_empty = graphs[]",
        "ty = type seq<opt<f16[*]>>",
        "ty_unknown = type ?",
        "\"weird name!\" = 1",
        "g = graph @g_body(%i: f32[2]) -> (%o) {",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // Every kind reads back as the same kind with the same value (bit for bit).
    let back = parse(&text).unwrap();
    let zoo = |g: &Graph| {
        let id = g.node_ids().find(|&n| matches!(g.node(n).op, Op::Opaque(_))).unwrap();
        g.node(id).op.attrs()
    };
    let (a, b) = (zoo(&attr_zoo()), zoo(&back));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, va) in &a {
        let vb = &b[k];
        assert_eq!(va.kind(), vb.kind(), "{k}");
        match (va, vb) {
            (Attr::Float(x), Attr::Float(y)) => assert_eq!(x.to_bits(), y.to_bits(), "{k}"),
            (Attr::Floats(x), Attr::Floats(y)) => {
                assert_eq!(
                    x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    y.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                )
            }
            _ => assert_eq!(va, vb, "{k}"),
        }
    }
}

#[test]
fn every_dtype_round_trips_bit_exactly() {
    let g = dtype_zoo(true);
    let text = check(&g, false);
    for needle in [
        "%c0 = const f32[10] [0.1, -0.0, nan, -nan, bits(0x7f800001), inf, -1e-45, 3.4028235e38, 3.0, 1e20]",
        "%c2 = const f16[8] [0.1, -0.0, 65500.0, 6e-8, inf, 0.3333, bits(0x7e01), -nan]",
        "%c3 = const bf16[8] [0.1, -0.0, 3e38, 9e-41, -inf, 0.334, bits(0x7fc1), nan]",
        "%c7 = const i64[3] [-9223372036854775808, 0, 9223372036854775807]",
        "%c11 = const u64[2] [0, 18446744073709551615]",
        "%c12 = const bool[3] [true, false, true]",
        r#"%c13 = const str[5] ["", "a\"b\\c", "漢字", "line\nbreak\ttab", "\u{7f}\u{1b}"]"#,
        "%c14 = const c64[2] [(1.0, -2.0), (nan, -0.0)]",
        "const f4e2m1[17] [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0, bits(0xf1)]",
        "const i4[17] [0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1, bits(0xf1)]",
        "const i2[5] [0, 1, -2, -1, bits(0xf1)]",
        "const f32[] 2.5",
        "const i32[2, 2, 3] [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]]",
        "const f32[2, 0] [[], []]",
        "const i64[0, 3] []",
        "const f32[3, 4] splat(1.5)",
        "const i64[1, 1] [[7]]",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // Bit-exact data for every constant, NaN payloads included.
    let back = parse(&text).unwrap();
    let consts = |g: &Graph| -> Vec<Tensor> {
        g.topo_order()
            .unwrap()
            .into_iter()
            .filter_map(|n| if let Op::Constant(t) = &g.node(n).op { Some(t.clone()) } else { None })
            .collect()
    };
    let (a, b) = (consts(&g), consts(&back));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.dtype(), x.shape()), (y.dtype(), y.shape()));
        match x.to_le_bytes() {
            Some(bytes) => assert_eq!(Some(bytes), y.to_le_bytes(), "{x:?}"),
            None => assert_eq!(x, y),
        }
        // Narrow codes, including out-of-range ones that packing would drop.
        assert_eq!(x.as_codes(), y.as_codes());
    }
    // Without NaNs, plain parse gives a structurally equal graph.
    check(&dtype_zoo(false), true);
}

#[test]
fn random_float_bit_patterns_round_trip() {
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let v32: Vec<f32> = (0..4000).map(|_| f32::from_bits(next() as u32)).collect();
    let v64: Vec<f64> = (0..4000).map(|_| f64::from_bits(next())).collect();
    let mut g = Graph::new("floats");
    let a = g.add_constant("a", Tensor::from_vec(&[4000], v32));
    let b = g.add_constant("b", Tensor::from_vec(&[4000], v64));
    g.add_output("a", a);
    g.add_output("b", b);
    let back = parse(&check(&g, false)).unwrap();
    for name in ["a", "b"] {
        let (x, y) = (g.value_by_name(name).unwrap(), back.value_by_name(name).unwrap());
        let (Op::Constant(x), Op::Constant(y)) = (&g.node(x.node).op, &back.node(y.node).op) else { panic!() };
        assert_eq!(x.to_le_bytes(), y.to_le_bytes());
    }
}

#[test]
fn nested_bodies_with_captures_round_trip() {
    let g = nested_control_flow();
    verify(&g).unwrap();
    let text = check(&g, true);
    let expected = r#"graph @control(%cond: bool[], %x: f32[2]) -> (%res) {
  %y = Neg(%x) : f32[2]
  %res = If(%cond, %y) {
    else_branch = graph @else() captures(%y: f32[2]) -> (%r as acc_final) {
      %r = Identity(%y) : f32[2]
    },
    then_branch = graph @then() captures(%y: f32[2]) -> (%acc_final) {
      %trip = const i64[] 3
      %keep = const bool[] true
      %acc_final = Loop(%trip, %keep, %y, %y) {
        body = graph @loop_body(%i: i64[], %cond_in: bool[], %acc: f32[2]) captures(%y: f32[2]) -> (%cond_in as cond_out, %acc2) {
          %acc2 = Add(%acc, %y) : f32[2]
        }
      } : f32[2]
    }
  } : f32[2] loc("the if")
}
"#;
    assert_eq!(text, expected);
}

#[test]
fn names_types_and_metadata_round_trip() {
    let g = names_and_types();
    let text = check(&g, true);
    let expected = r#"meta {ir_version = 8, producer_name = "pytorch", producer_version = "2.1.0", domain = "ai.example", model_version = 3, doc_string = "a model\nwith \"quotes\"", opset_import = {"" = 17, "com.microsoft" = 1}, props = {"k" = "v", "k" = "again"}, preserved = {"functions" = "0001abff"}}
graph @"layer.0/attn"(%"onnx::MatMul_123": f32[batch, "unk 1", "3", "", 0] loc("input node"), %unknown, %seq: seq<i64[]>, %opt: opt<seq<?>>, %"ranked?": bf16[*]) -> (%"/layer.0/attn/Relu_output_0", %"" as "renamed output", %"\"quoted\"" as plain_alias, %"名前", %"ranked?" as r) {
  %"/layer.0/attn/Relu_output_0" = Relu(%"onnx::MatMul_123") loc("/layer.0/attn/Relu")
  %"" = Identity(%unknown)
  %"\"quoted\"" = Identity(%seq)
  %"名前" = Identity(%opt)
}
"#;
    assert_eq!(text, expected);
    assert_eq!(parse(&text).unwrap().meta, g.meta);
}

#[test]
fn body_metadata_bom_and_keyword_ops() {
    let mut body = small_body("b");
    body.meta.doc_string = "the body".into();
    let mut g = Graph::new("outer");
    let x = g.add_input("x", f32s(&[2]));
    let attrs: Attrs = [("body".to_string(), Attr::Graph(Subgraph::new(body)))].into_iter().collect();
    let y = one(
        &mut g,
        Op::Opaque(Opaque { domain: "com.example".into(), op_type: "Map".into(), attrs }),
        &[x],
        "y",
        Type::Unknown,
    );
    let a = one(&mut g, op("Relu", vec![]), &[y], "a", f32s(&[2]));
    let loc_op = Op::Opaque(Opaque { domain: String::new(), op_type: "loc".into(), attrs: Attrs::new() });
    g.add_node(loc_op, "", &[Some(a)], vec![]);
    g.add_output("y", y);
    let text = check(&g, true);
    assert!(text.contains("body = meta {doc_string = \"the body\"} graph @b(%i: f32[2]) -> (%o) {"), "{text}");
    assert!(text.contains("  %a = Relu(%y) : f32[2]\n  \"\".loc(%a)\n"), "{text}");
    let with_bom = format!("\u{feff}{text}");
    assert_eq!(print(&parse(&with_bom).unwrap()), text);
}

#[test]
fn structure_round_trips() {
    let g = structure_zoo();
    verify(&g).unwrap();
    let text = check(&g, true);
    for needle in [
        "%clipped = Clip(%x, _, %max) : f32[4]",
        "%a, %b = Split(%clipped) {num_outputs = 2} : f32[2], ?",
        "%fused = com.microsoft.FusedMatMul(%a, %b) {alpha = 0.5}",
        "%odd = \"my-domain\".\"Odd Op\"(%fused)",
        "%fake_relu = \"\".Relu(%odd) {legacy = 1}",
        "%fake_matmul = \"\".MatMul(%fake_relu, %fake_relu)",
        "%kw = \"\".const(%fake_matmul)",
        "%fancy = FancyOp(%kw)",
        "%lbl = ai.onnx.ml.LabelEncoder(%fancy)",
        "  com.example.Print(%lbl) loc(\"printer\")\n",
        "%h = Cast(%x) {to = f16}",
        "%values, %indices = TopK(%x, %max) {largest = 0} : f32[2], i64[2]",
        "-> (%a, %h, %indices, %x)",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let back = parse(&text).unwrap();
    let kinds: Vec<bool> = back.node_ids().map(|n| matches!(back.node(n).op, Op::Opaque(_))).collect();
    assert_eq!(kinds.iter().filter(|k| **k).count(), 8, "the opaque ops stay opaque");
}

#[test]
fn weights_print_as_summaries_and_resolve_from_the_store() {
    let g = weights_zoo();
    let text = check(&g, false);
    let hash = |name: &str| g.weights.get(g.weights.find(name).unwrap()).unwrap().content_hash();
    for needle in [
        format!("%fc.weight = weight @fc.weight : f32[16, 8]  // sha {}", hash("fc.weight")),
        format!("%fc.weight_0 = weight @fc.weight : f32[16, 8]  // sha {}", hash("fc.weight")),
        format!("%bias = weight @bias f32[8] : ? loc(\"bias_node\")  // sha {}", hash("bias")),
        format!("%\"/enc/\\\"w\\\"\" = weight @\"/enc/\\\"w\\\"\" : i64[2]  // sha {}", hash("/enc/\"w\"")),
        format!("  weight @unused : bool[3]  // sha {}, unused\n", hash("unused")),
    ] {
        assert!(text.contains(&needle), "missing {needle:?} in\n{text}");
    }
    assert!(!text.contains("0.14285"), "weight data must not be printed");
    // From the store: the same data, shared by both nodes.
    let back = parse_with_weights(&text, &g.weights).unwrap();
    assert_eq!(back.weights.len(), 4);
    assert_eq!(back.stats().unique_params, g.stats().unique_params);
    assert_eq!(back.stats().total_params, g.stats().total_params);
    for (_, w) in g.weights.iter() {
        let got = back.weights.get(back.weights.find(&w.name).unwrap()).unwrap();
        assert_eq!(got.tensor(), w.tensor(), "{}", w.name);
    }
    // Synthetic data: the same declared types, other data.
    let synth = parse(&text).unwrap();
    assert_eq!(synth.weights.len(), 4);
    let w = synth.weights.get(synth.weights.find("fc.weight").unwrap()).unwrap();
    assert_eq!((w.dtype, w.shape.clone()), (DType::F32, vec![16, 8]));
    assert_ne!(w.tensor(), g.weights.get(crate::WeightId(0)).unwrap().tensor());
}

#[test]
fn store_errors_name_the_weight() {
    let g = tiny();
    let text = print(&g);
    let e = parse_with_weights(&text, &WeightStore::new()).unwrap_err();
    assert!(e.message.contains("weight @fc.weight is not in the weight store"), "{e}");
    assert_eq!((e.line, e.column), (2, 16));
    let mut other = WeightStore::new();
    other.add(Weight::from_tensor("fc.weight", Tensor::from_vec(&[8, 16], vec![0f32; 128]))).unwrap();
    let e = parse_with_weights(&text, &other).unwrap_err();
    assert!(e.message.contains("is f32[8, 16] in the weight store but the text says f32[16, 8]"), "{e}");
}

#[test]
fn inline_weight_data_and_synthetic_rule() {
    let src = "graph @g(%x: f32[2]) -> (%y) {
  %w = weight @w : f32[2] = [0.5, -1.0]
  %v = weight @v : f32[2, 2] = [[1.0, 2.0], [3.0, 4.0]]
  %u = weight @u : i8[3]
  %y = Mul(%x, %w)
  weight @spare : f32[3] = [1.0, 2.0, 3.0]
}";
    let g = parse(src).unwrap();
    let get = |n: &str| g.weights.get(g.weights.find(n).unwrap()).unwrap().tensor().clone();
    assert_eq!(get("w"), Tensor::from_vec(&[2], vec![0.5f32, -1.0]));
    assert_eq!(get("v"), Tensor::from_vec(&[2, 2], vec![1.0f32, 2.0, 3.0, 4.0]));
    assert_eq!(get("spare"), Tensor::from_vec(&[3], vec![1.0f32, 2.0, 3.0]));
    // The documented rule: SplitMix64 seeded with FNV-1a("u"), small ints in [-8, 8).
    let fnv = "u".bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    let mut s = fnv;
    let mut draw = || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % 16) as i8 - 8
    };
    let expected: Vec<i8> = (0..3).map(|_| draw()).collect();
    assert_eq!(get("u"), Tensor::from_vec(&[3], expected));
    // Inline data wins over the store; other weights come from it.
    let mut store = WeightStore::new();
    store.add(Weight::from_tensor("w", Tensor::from_vec(&[2], vec![9.0f32, 9.0]))).unwrap();
    store.add(Weight::from_tensor("u", Tensor::from_vec(&[3], vec![1i8, 2, 3]))).unwrap();
    let g = parse_with_weights(src, &store).unwrap();
    let get = |n: &str| g.weights.get(g.weights.find(n).unwrap()).unwrap().tensor().clone();
    assert_eq!(get("w"), Tensor::from_vec(&[2], vec![0.5f32, -1.0]));
    assert_eq!(get("u"), Tensor::from_vec(&[3], vec![1i8, 2, 3]));
}

#[test]
fn body_graph_weights_resolve_through_all_weights() {
    let mut body = small_body("b");
    let i = body.input_values()[0];
    let s = body.add_weight(Weight::from_tensor("scale", Tensor::from_vec(&[2], vec![2.0f32, 3.0])));
    let m = one(&mut body, op("Mul", vec![]), &[i, s], "m", f32s(&[2]));
    body.outputs_mut()[0].value = m;
    let mut g = Graph::new("outer");
    let x = g.add_input("x", f32s(&[2]));
    let attrs: Attrs = [("body".to_string(), Attr::Graph(Subgraph::new(body)))].into_iter().collect();
    let y = one(
        &mut g,
        Op::Opaque(Opaque { domain: "com.example".into(), op_type: "Map".into(), attrs }),
        &[x],
        "y",
        Type::Unknown,
    );
    g.add_output("y", y);
    assert!(has_body_weights(&g));
    let text = check(&g, false);
    let e = parse_with_weights(&text, &g.weights).unwrap_err();
    assert!(e.message.contains("@scale is not in the weight store"), "{e}");
}

#[test]
fn every_modelled_op_round_trips() {
    let mut g = Graph::new("ops");
    let x = g.add_input("x", f32s(&[2, 2]));
    let mut count = 0;
    let mut add = |g: &mut Graph, op: Op| {
        count += 1;
        let name = format!("v{count}");
        let v = one(g, op, &[x], &name, Type::Unknown);
        g.add_output(name, v);
    };
    for name in MODELLED_OPS {
        if let Ok(Some(op)) = Op::from_onnx_default_domain(name, Attrs::new()) {
            add(&mut g, op);
        }
    }
    let extra: Vec<(&str, Vec<(&str, Attr)>)> = vec![
        ("LeakyRelu", vec![("alpha", Attr::Float(0.2))]),
        ("Gelu", vec![("approximate", Attr::String("tanh".into()))]),
        ("IsInf", vec![("detect_negative", Attr::Int(0))]),
        ("Mod", vec![("fmod", Attr::Int(1))]),
        ("BitShift", vec![("direction", Attr::String("LEFT".into()))]),
        ("Sum", vec![]),
        ("ReduceMean", vec![("keepdims", Attr::Int(0))]),
        ("ReduceSum", vec![("noop_with_empty_axes", Attr::Int(1))]),
        ("Cast", vec![("to", Attr::Int(10)), ("saturate", Attr::Int(0))]),
        ("Concat", vec![("axis", Attr::Int(-1))]),
        ("Transpose", vec![("perm", Attr::Ints(vec![1, 0]))]),
        ("Gemm", vec![("alpha", Attr::Float(0.5)), ("transB", Attr::Int(1))]),
        ("Conv", vec![("pads", Attr::Ints(vec![1, 1, 1, 1])), ("group", Attr::Int(2))]),
        ("Einsum", vec![("equation", Attr::String("ij,jk->ik".into()))]),
        ("ConstantOfShape", vec![("value", Attr::Tensor(Tensor::from_vec(&[1], vec![0.5f32])))]),
        ("RandomNormal", vec![("shape", Attr::Ints(vec![2, 3])), ("seed", Attr::Float(1.0)), ("dtype", Attr::Int(11))]),
        ("SequenceEmpty", vec![("dtype", Attr::Int(7))]),
        ("Optional", vec![("type", Attr::Type(f32s(&[2])))]),
        ("StringNormalizer", vec![("stopwords", Attr::Strings(vec!["a".into()]))]),
        ("Resize", vec![("mode", Attr::String("linear".into()))]),
    ];
    for (name, attrs) in extra {
        add(&mut g, op(name, attrs));
    }
    assert!(count > 100, "only {count} ops were covered");
    let text = check(&g, true);
    assert!(text.contains("Cast(%x) {saturate = 0, to = f16}"), "{text}");
    assert!(text.contains("RandomNormal(%x) {dtype = f64, seed = 1.0, shape = [2, 3]}"), "{text}");
    assert!(text.contains("ConstantOfShape(%x) {value = f32[1] [0.5]}"), "{text}");
}

#[test]
fn odd_graphs_print_without_panicking() {
    // An Input node in neither list, and a cycle: both print and read back.
    let mut g = Graph::new("odd");
    let x = g.add_input("x", Type::Unknown);
    let stray = node(&mut g, Op::Input, &[], &[("stray", f32s(&[1]))])[0];
    let a = one(&mut g, Op::Identity, &[x], "a", Type::Unknown);
    let b = one(&mut g, op("Add", vec![]), &[a, stray], "b", Type::Unknown);
    g.set_node_input(a.node, 0, Some(b));
    g.add_output("b", b);
    let text = check(&g, false);
    assert!(text.contains("// warning: the graph has a cycle"), "{text}");
    assert!(text.contains("%stray = input : f32[1]"), "{text}");
    // Dangling references and missing weights print as markers.
    let mut g = Graph::new("broken");
    let x = g.add_input("x", Type::Unknown);
    let w = node(&mut g, Op::Weight(crate::WeightId(9)), &[], &[("w", Type::Unknown)])[0];
    let y = one(&mut g, op("Add", vec![]), &[x, w], "y", Type::Unknown);
    g.add_output("gone", ValueRef::new(y.node, 5));
    let text = print(&g);
    assert!(text.contains("weight @\"<missing w9>\""), "{text}");
    assert!(text.contains("-> (%\"<invalid 2:5>\" as gone)"), "{text}");
}

// ----- reading hand-written text -----

#[test]
fn hand_written_text_is_lenient_where_it_is_unambiguous() {
    let src = r#"
// Values may be used before they are defined; types may be left out.
graph @g(%x: f32[2, 3], %s) -> (%z) {
  %z = Add(%y, %c)
  %y = Relu(%x)
  %c = const f32[2, 3] [1, 2, 3, 4, 5, 6]   // a flat list for a matrix, ints as floats
  %e = Cast(%x) {to = i64}
  %t = "com.x".Thing(%x) {empty = [], f = floats[1, 2], dt = [f16, i8], trailing = 1,}
}
"#;
    let g = parse(src).unwrap();
    verify(&g).unwrap();
    let c = g.value_by_name("c").unwrap();
    assert_eq!(g.node(c.node).op, Op::Constant(Tensor::from_vec(&[2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])));
    let cast = g.value_by_name("e").unwrap();
    assert_eq!(g.node(cast.node).op.attrs()["to"], Attr::Int(DType::I64.onnx_code() as i64));
    let thing = g.value_by_name("t").unwrap();
    let a = g.node(thing.node).op.attrs();
    assert_eq!(a["empty"], Attr::Ints(vec![]));
    assert_eq!(a["f"], Attr::Floats(vec![1.0, 2.0]));
    assert_eq!(a["dt"], Attr::Ints(vec![10, 3]));
    let z = g.outputs()[0].value;
    assert_eq!(g.node_inputs(z.node), vec![g.value_by_name("y"), Some(c)]);
    // Printing puts the nodes in topological order.
    let text = print(&g);
    let pos = |s: &str| text.find(s).unwrap();
    assert!(pos("%y = Relu") < pos("%z = Add"), "{text}");
}

fn err(src: &str) -> ParseError {
    match parse(src) {
        Ok(g) => panic!("expected an error, got\n{}", print(&g)),
        Err(e) => e,
    }
}

#[test]
fn errors_point_at_the_problem() {
    let e = err("graph @g(%x) -> (%y) {\n  %y = Relu(%z)\n}");
    assert_eq!((e.line, e.column), (2, 13));
    assert_eq!(
        e.to_string(),
        "error: unknown value %z in graph @g (a body graph sees outer values only through its captures)\n \
         --> line 2, column 13\n  |\n2 |   %y = Relu(%z)\n  |             ^"
    );

    let e = err("graph @g(%x) -> (%x) {\n  %a = Relu(%x\n  %b = Relu(%a)\n}");
    assert_eq!((e.line, e.column), (3, 3));
    assert_eq!(e.message, "expected ',' or ')' after an operand, found value %b");

    let cases: &[(&str, (usize, usize), &str)] = &[
        ("graph @g(%x) -> (%x) {\n  %x = Relu(%x)\n}", (2, 3), "value %x is already defined at line 1, column 10"),
        (
            "graph @g() -> () {\n  %a = Gemm() {transB = 1.5}\n}",
            (2, 8),
            "Gemm: attribute 'transB' should be int, found float",
        ),
        ("graph @g() -> () {\n  %a = Relu() {bogus = 1}\n}", (2, 8), "Relu: unknown attribute 'bogus'"),
        ("graph @g() -> () {\n  %c = const f32[3] [1.0, 2.0]\n}", (2, 21), "the literal has 2 elements"),
        ("graph @g() -> () {\n  %c = const i8[2] [1, 300]\n}", (2, 24), "300 is out of range for i8"),
        ("graph @g() -> () {\n  %c = const f8e4m3fn[1] [0.3]\n}", (2, 27), "nearest: 0.28125 and 0.3125"),
        ("graph @g() -> () {\n  %c = const f32[2] [[1.0], [2.0, 3.0]]\n}", (2, 21), "nested as [2, 1]"),
        ("graph @g() -> () {\n  %c = const f32[2] [1.0, [2.0]]\n}", (2, 27), "nested unevenly"),
        ("graph @g() -> () {\n  %a = Relu() {s = \"open\n}", (2, 20), "unterminated string"),
        ("graph @g(%x: f33[2]) -> () {}", (1, 14), "unknown type 'f33'"),
        ("graph @g(%x: f32[-1]) -> () {}", (1, 18), "-1 is not a valid size"),
        ("graph @g() -> () {\n  %w = weight @w : f32[n]\n}", (2, 20), "fixed dims"),
        ("graph @g() -> () {\n  %a, %b = const f32[] 1.0\n}", (2, 3), "a constant defines exactly one value, not 2"),
        ("graph @g() -> () {\n  %a, %b = Split(%a) : f32[1]\n}", (2, 12), "2 results but 1 types"),
        ("graph @g() -> () {\n  %a = Relu() {x = 1, x = 2}\n}", (2, 23), "attribute 'x' is given twice"),
        ("graph @g() -> () {\n  %a = X() {l = [1, \"s\"]}\n}", (2, 21), "a list of ints cannot hold a string value"),
        ("meta {ir_version = 8, bogus = 1}\ngraph @g() -> () {}", (1, 23), "unknown metadata key 'bogus'"),
        ("graph @g() -> () {}\ngraph @h() -> () {}", (2, 1), "expected the end of the text after the graph"),
        ("graph @g() -> () {\n  %a = Relu() 16x\n}", (2, 15), "malformed number '16x'"),
        ("graph @g() -> () {\n  %a = X() {s = \"\\q\"}\n}", (2, 18), "unknown escape '\\q'"),
        ("graph @g() {}", (1, 12), "expected '->' before the graph's outputs, found '{'"),
        ("", (1, 1), "expected 'graph', found the end of the text"),
        ("graph @g() -> () {\n  %c = const f32[2] [bits(0x1ffffffff), 1.0]\n}", (2, 22), "does not fit in 32 bits"),
        (
            "graph @g() -> () {\n  %w = weight @w : f32[2] = [1.0, 2.0]\n  %v = weight @w : f32[3]\n}",
            (3, 8),
            "declared as f32[3] here but as f32[2] at line 2, column 8",
        ),
    ];
    for (src, (line, col), msg) in cases {
        let e = err(src);
        assert!(e.message.contains(msg), "{src:?}: expected {msg:?}, got\n{e}");
        assert_eq!((e.line, e.column), (*line, *col), "{src:?}:\n{e}");
    }
}

#[test]
fn caret_lines_up_with_tabs_and_unicode() {
    let e = err("graph @g() -> () {\n\t%\"名\" = Relu(%y)\n}");
    assert_eq!((e.line, e.column), (2, 14));
    assert!(e.to_string().ends_with("2 | \t%\"名\" = Relu(%y)\n  | \t            ^"), "{e}");
    // Names outside the plain set need quotes; the lexer says so.
    let e = err("graph @g() -> () {\n  %名 = Relu()\n}");
    assert_eq!((e.line, e.column), (2, 4));
    assert!(e.message.contains("expected a name after '%'"), "{e}");
}

// ----- robustness and speed -----

/// A small deterministic generator for the fuzz tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutated_and_random_text_never_panics() {
    let bases: Vec<(String, WeightStore)> =
        [tiny(), attr_zoo(), dtype_zoo(true), nested_control_flow(), names_and_types(), structure_zoo(), weights_zoo()]
            .iter()
            .map(|g| (print(g), g.weights.clone()))
            .collect();
    let alphabet: Vec<char> = "%@\"\\()[]{}<>,:=?*._-0123456789xe+ \n/abfgirt漢\t".chars().collect();
    let tokens = [
        "graph",
        "@g",
        "(",
        ")",
        "->",
        "{",
        "}",
        "%x",
        "%y",
        "=",
        ":",
        "f32",
        "[",
        "]",
        "*",
        "?",
        "seq",
        "<",
        ">",
        "const",
        "weight",
        "input",
        "Relu",
        "Add",
        "If",
        "\"\".",
        "com.x.Op",
        "splat",
        "bits",
        "(0x1f)",
        "nan",
        "-inf",
        "1.5e3",
        "-7",
        "\"s\\n\"",
        "loc",
        "captures",
        "as",
        "_",
        ",",
        "meta",
        "ints",
        "floats",
        "type",
        "f8e4m3fn",
        "u4",
        "c64",
        "str",
        "true",
        "99999999999999999999",
        "1e999",
    ];
    let mut rng = Rng(0x5eed);
    let mut parsed_ok = 0usize;
    for round in 0..6000 {
        let (base, store) = &bases[round % bases.len()];
        let mut chars: Vec<char> = base.chars().collect();
        for _ in 0..1 + rng.below(4) {
            let n = chars.len();
            let at = rng.below(n + 1);
            match rng.below(6) {
                0 if n > 0 => {
                    let len = 1 + rng.below(8);
                    chars.drain(at.min(n - 1)..(at + len).min(n));
                }
                1 => chars.insert(at, alphabet[rng.below(alphabet.len())]),
                2 if n > 0 => chars[at.min(n - 1)] = alphabet[rng.below(alphabet.len())],
                3 => chars.truncate(at),
                4 if n > 0 => {
                    let from = rng.below(n);
                    let piece: Vec<char> = chars[from..(from + rng.below(40)).min(n)].to_vec();
                    chars.splice(at..at, piece);
                }
                _ => {
                    let tok: Vec<char> = tokens[rng.below(tokens.len())].chars().collect();
                    chars.splice(at..at, tok);
                }
            }
        }
        let text: String = chars.into_iter().collect();
        let a = parse(&text);
        let b = parse_with_weights(&text, store);
        if let Ok(g) = a {
            parsed_ok += 1;
            // Whatever parses, prints and parses back to the same text.
            let again = print(&g);
            assert_eq!(print(&parse(&again).unwrap_or_else(|e| panic!("{e}\n{again}"))), again);
        }
        if let Err(e) = b {
            let _ = e.to_string();
        }
    }
    for _ in 0..3000 {
        let n = rng.below(40);
        let text: Vec<&str> = (0..n).map(|_| tokens[rng.below(tokens.len())]).collect();
        let _ = parse(&text.join(" "));
    }
    assert!(parsed_ok > 100, "mutations should leave some texts valid ({parsed_ok})");
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!("graph @g() -> () {{\n  %c = const f32[1] {}1.0{}\n}}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(err(&deep).message.contains("nesting is deeper than"));
    let deep = format!("graph @g(%x: {}f32[1]{}) -> () {{}}", "seq<".repeat(10_000), ">".repeat(10_000));
    assert!(err(&deep).message.contains("nesting is deeper than"));
    let deep = format!("graph @g() -> () {{\n  X() {{a = {}1{}}}\n}}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(err(&deep).message.contains("nesting is deeper than"));
    let huge = "graph @g() -> () {\n  %c = const f32[100000, 100000, 100000] splat(1.0)\n}";
    assert!(err(huge).message.contains("too large"));
}

#[test]
fn a_3000_node_graph_parses_quickly() {
    let mut g = Graph::new("big");
    let mut v = g.add_input("x", t(DType::F32, &[Dim::sym("batch"), Dim::Fixed(64)]));
    for layer in 0..1000 {
        let w =
            g.add_weight(Weight::from_tensor(format!("layers.{layer}.weight"), Tensor::zeros(DType::F32, &[64, 64])));
        let m = one(
            &mut g,
            Op::MatMul,
            &[v, w],
            &format!("/layers.{layer}/MatMul_output_0"),
            t(DType::F32, &[Dim::sym("batch"), Dim::Fixed(64)]),
        );
        g.node_mut(m.node).name = format!("/layers.{layer}/MatMul");
        let c =
            g.add_constant(&format!("/layers.{layer}/Constant_output_0"), Tensor::from_vec(&[2], vec![0.5f32, 1.5]));
        let _ = c;
        v = one(&mut g, op("Relu", vec![]), &[m], &format!("/layers.{layer}/Relu_output_0"), Type::Unknown);
    }
    g.add_output("y", v);
    assert!(g.node_count() > 3000);
    let text = print(&g);
    let start = std::time::Instant::now();
    let back = parse_with_weights(&text, &g.weights).unwrap();
    let took = start.elapsed();
    assert_eq!(back.node_count(), g.node_count());
    eprintln!("parsed {} nodes in {took:?}", g.node_count());
    assert!(took.as_secs_f64() < 1.0, "parsing {} nodes took {took:?}", g.node_count());
    assert_eq!(print(&back), text);
}

#[test]
fn weight_type_mismatch_against_declared_type_in_text() {
    // `weight @w D : T` keeps both the weight's own type and the value's.
    let src = "graph @g() -> (%w) {\n  %w = weight @w f32[2] : f32[n] = [1.0, 2.0]\n}";
    let g = parse(src).unwrap();
    let w = g.outputs()[0].value;
    assert_eq!(g.value_type(w), &t(DType::F32, &[Dim::sym("n")]));
    assert_eq!(g.weights.get(crate::WeightId(0)).unwrap().shape, vec![2]);
    assert!(print(&g).contains("%w = weight @w f32[2] : f32[n]"));
    let _ = Shape::scalar();
}

#[test]
fn stats_count_control_flow_bodies_apart() {
    let g = nested_control_flow();
    let s = g.stats();
    // then, else and the loop body inside then.
    assert_eq!(s.subgraphs, 3);
    assert_eq!(s.subgraph_op_histogram.get("Loop"), Some(&1));
    assert_eq!(s.subgraph_op_histogram.get("Add"), Some(&1));
    assert_eq!(s.subgraph_op_histogram.get("Identity"), Some(&1));
    assert!(!s.op_histogram.contains_key("Loop"));
    assert_eq!(s.op_histogram.get("If"), Some(&1));
}

use crate::testutil::*;
use crate::{import_bytes, import_file};
use sharc_ir::{Attr, BinaryOp, DType, Dim, Graph, NodeId, Op, Type, ValueRef, WeightData};

fn import(m: &onnx_protobuf::ModelProto) -> Result<Graph, crate::OnnxError> {
    import_bytes(&bytes(m), None)
}

fn find(g: &Graph, op_type: &str) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = g.node_ids().filter(|&id| g.node(id).op.op_type() == op_type).collect();
    v.sort();
    v
}

fn by_name(g: &Graph, name: &str) -> ValueRef {
    g.value_by_name(name).unwrap_or_else(|| panic!("no value '{name}'"))
}

fn constant_ints(g: &Graph, v: Option<ValueRef>) -> Vec<i64> {
    match &g.node(v.expect("connected").node).op {
        Op::Constant(t) => t.to_i64_vec().unwrap(),
        op => panic!("expected a constant, found {op:?}"),
    }
}

#[test]
fn simple_graph_with_weights_types_and_metadata() {
    let g = graph(
        "main",
        vec![node("MatMul", &["x", "w"], &["y"], vec![]), node("Relu", &["y"], &["z"], vec![])],
        vec![vi("x", 1, &["batch", "", "2"])],
        vec![vi("z", 1, &["batch", "", "3"])],
        vec![tensor_f32("w", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])],
    );
    let mut m = model(g, 17);
    let mut p = onnx_protobuf::StringStringEntryProto::new();
    p.key = "k".into();
    p.value = "v".into();
    m.metadata_props.push(p);
    let g = import(&m).unwrap();
    assert_eq!(g.inputs().len(), 1);
    let x = g.input_values()[0];
    match g.value_type(x) {
        Type::Tensor(t) => {
            let dims = t.shape.as_ref().unwrap().dims().to_vec();
            assert_eq!(dims[0], Dim::sym("batch"));
            assert!(matches!(&dims[1], Dim::Sym(s) if s.starts_with("unk__")));
            assert_eq!(dims[2], Dim::Fixed(2));
        }
        t => panic!("{t:?}"),
    }
    assert_eq!(g.weights.len(), 1);
    let w = g.weights.iter().next().unwrap().1;
    assert_eq!(w.tensor().to_f64_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let z = g.outputs()[0].value;
    assert_eq!(g.node(z.node).op, Op::Unary(sharc_ir::UnaryOp::Relu));
    assert_eq!(g.meta.opset_imports, vec![(String::new(), 17)]);
    assert_eq!(g.meta.props, vec![("k".to_string(), "v".to_string())]);
    assert_eq!(g.meta.producer_name, "test");
}

#[test]
fn graph_inputs_that_are_initializers_become_weights() {
    let g = graph(
        "main",
        vec![node("Add", &["x", "b"], &["y"], vec![])],
        vec![vi("x", 1, &["2"]), vi("b", 1, &["2"])],
        vec![vi("y", 1, &["2"])],
        vec![tensor_f32("b", &[2], &[1.0, 2.0])],
    );
    let g = import(&model(g, 13)).unwrap();
    assert_eq!(g.inputs().len(), 1, "b has a default, so it is a weight");
    assert_eq!(g.weights.len(), 1);
}

/// An If whose branches read outer values: both bodies get the union of
/// captures in first-use order, and the node lists them after its inputs.
#[test]
fn bodies_capture_outer_values_in_first_use_order() {
    let then_g =
        graph("then", vec![node("Add", &["b", "a"], &["t"], vec![])], vec![], vec![vi("t", 1, &["1"])], vec![]);
    let else_g = graph("else", vec![node("Neg", &["c"], &["e"], vec![])], vec![], vec![vi("e", 1, &["1"])], vec![]);
    let main = graph(
        "main",
        vec![node("If", &["cond"], &["y"], vec![attr_graph("else_branch", else_g), attr_graph("then_branch", then_g)])],
        vec![vi("cond", 9, &[]), vi("a", 1, &["1"]), vi("b", 1, &["1"]), vi("c", 1, &["1"])],
        vec![vi("y", 1, &["1"])],
        vec![],
    );
    let g = import(&model(main, 16)).unwrap();
    let iff = find(&g, "If")[0];
    let ins = g.node_inputs(iff);
    let names: Vec<&str> = ins.iter().map(|v| g.value_info(v.unwrap()).name.as_str()).collect();
    // Bodies are visited in attribute order: else (uses c), then (b, a).
    assert_eq!(names, vec!["cond", "c", "b", "a"]);
    let Op::If(op) = &g.node(iff).op else { panic!() };
    for body in [&op.else_branch, &op.then_branch] {
        let caps: Vec<&str> = body.captures().iter().map(|&c| body.node(c).outputs[0].name.as_str()).collect();
        assert_eq!(caps, vec!["c", "b", "a"]);
        assert!(body.inputs().is_empty());
    }
    // The then-branch Add reads its captures.
    let add = find(&op.then_branch, "Add")[0];
    let add_in: Vec<&str> =
        op.then_branch.node_inputs(add).iter().map(|v| op.then_branch.value_info(v.unwrap()).name.as_str()).collect();
    assert_eq!(add_in, vec!["b", "a"]);
}

#[test]
fn nested_bodies_capture_through_every_level() {
    // Loop body containing an If whose branch reads the top-level value "k".
    let inner_then = graph("it", vec![node("Identity", &["k"], &["o"], vec![])], vec![], vec![vi("o", 1, &[])], vec![]);
    let inner_else = graph("ie", vec![node("Neg", &["k"], &["o2"], vec![])], vec![], vec![vi("o2", 1, &[])], vec![]);
    let body = graph(
        "body",
        vec![
            node("Identity", &["c_in"], &["c_out"], vec![]),
            node(
                "If",
                &["c_in"],
                &["r"],
                vec![attr_graph("else_branch", inner_else), attr_graph("then_branch", inner_then)],
            ),
        ],
        vec![vi("i", 7, &[]), vi("c_in", 9, &[])],
        vec![vi("c_out", 9, &[]), vi("r", 1, &[])],
        vec![],
    );
    let main = graph(
        "main",
        vec![node("Loop", &["m", "c"], &["rs"], vec![attr_graph("body", body)])],
        vec![vi("m", 7, &[]), vi("c", 9, &[]), vi("k", 1, &[])],
        vec![vi("rs", 1, &["", ""])],
        vec![],
    );
    let g = import(&model(main, 16)).unwrap();
    let lp = find(&g, "Loop")[0];
    let ins = g.node_inputs(lp);
    assert_eq!(ins.len(), 3);
    assert_eq!(g.value_info(ins[2].unwrap()).name, "k");
    let Op::Loop(l) = &g.node(lp).op else { panic!() };
    assert_eq!(l.body.captures().len(), 1);
    let iff = find(&l.body, "If")[0];
    let if_ins = l.body.node_inputs(iff);
    assert_eq!(if_ins.len(), 2);
    assert_eq!(if_ins[1].unwrap().node, l.body.captures()[0], "the If reads the Loop body's capture of k");
}

#[test]
fn unsorted_nodes_are_sorted_and_cycles_rejected() {
    let g = graph(
        "main",
        vec![node("Relu", &["y"], &["z"], vec![]), node("Neg", &["x"], &["y"], vec![])],
        vec![vi("x", 1, &["1"])],
        vec![vi("z", 1, &["1"])],
        vec![],
    );
    let g = import(&model(g, 17)).unwrap();
    let order = g.topo_order().unwrap();
    let ops: Vec<&str> = order.iter().map(|&n| g.node(n).op.op_type()).collect();
    assert_eq!(ops, vec!["Input", "Neg", "Relu"]);

    let cyc = graph(
        "main",
        vec![node("Add", &["x", "b"], &["a"], vec![]), node("Neg", &["a"], &["b"], vec![])],
        vec![vi("x", 1, &["1"])],
        vec![vi("b", 1, &["1"])],
        vec![],
    );
    let e = import(&model(cyc, 17)).unwrap_err().to_string();
    assert!(e.contains("cycle"), "{e}");
}

#[test]
fn malformed_graphs_are_clear_errors() {
    let undefined = graph("main", vec![node("Relu", &["nope"], &["z"], vec![])], vec![], vec![vi("z", 1, &[])], vec![]);
    let e = import(&model(undefined, 17)).unwrap_err().to_string();
    assert!(e.contains("node 'z' (Relu)") && e.contains("input 'nope' is not produced"), "{e}");

    let dup = graph(
        "main",
        vec![node("Relu", &["x"], &["z"], vec![]), node("Neg", &["x"], &["z"], vec![])],
        vec![vi("x", 1, &[])],
        vec![vi("z", 1, &[])],
        vec![],
    );
    let e = import(&model(dup, 17)).unwrap_err().to_string();
    assert!(e.contains("produced by more than one node"), "{e}");

    let missing_out = graph("main", vec![], vec![vi("x", 1, &[])], vec![vi("q", 1, &[])], vec![]);
    assert!(import(&model(missing_out, 17)).unwrap_err().to_string().contains("output 'q'"));

    let bad_attr = graph(
        "main",
        vec![node("Relu", &["x"], &["z"], vec![attr_int("bogus", 1)])],
        vec![vi("x", 1, &[])],
        vec![vi("z", 1, &[])],
        vec![],
    );
    let e = import(&model(bad_attr, 17)).unwrap_err().to_string();
    assert!(e.contains("unknown attribute 'bogus'"), "{e}");

    let mut s = attr_string("mode", "x");
    s.s = vec![0xff, 0xfe];
    let bad_utf8 = graph(
        "main",
        vec![node("Pad", &["x", "p"], &["z"], vec![s])],
        vec![vi("x", 1, &[]), vi("p", 7, &["2"])],
        vec![vi("z", 1, &[])],
        vec![],
    );
    assert!(import(&model(bad_utf8, 17)).unwrap_err().to_string().contains("UTF-8"));

    let mut short = tensor_f32("w", &[3], &[1.0]);
    short.name = "w".into();
    let bad_data =
        graph("main", vec![node("Relu", &["w"], &["z"], vec![])], vec![], vec![vi("z", 1, &[])], vec![short]);
    let e = import(&model(bad_data, 17)).unwrap_err().to_string();
    assert!(e.contains("tensor 'w'") && e.contains("needs 3 values"), "{e}");

    let mut m = model(
        graph("main", vec![node("Relu", &["x"], &["z"], vec![])], vec![vi("x", 1, &[])], vec![vi("z", 1, &[])], vec![]),
        17,
    );
    m.opset_import.clear();
    m.ir_version = 8;
    assert!(import(&m).unwrap_err().to_string().contains("imports no opset"));

    assert!(import_bytes(b"\xff\xff\xff\xff", None).unwrap_err().to_string().contains("not a readable ONNX model"));
}

#[test]
fn constants_of_every_form() {
    let cases: Vec<(onnx_protobuf::AttributeProto, Vec<f64>, Vec<usize>)> = vec![
        (attr_float("value_float", 2.5), vec![2.5], vec![]),
        (attr_floats("value_floats", &[1.0, 2.0]), vec![1.0, 2.0], vec![2]),
        (attr_int("value_int", 7), vec![7.0], vec![]),
        (attr_ints("value_ints", &[1, 2, 3]), vec![1.0, 2.0, 3.0], vec![3]),
        (attr_tensor("value", tensor_f32("", &[1, 2], &[3.0, 4.0])), vec![3.0, 4.0], vec![1, 2]),
    ];
    for (a, vals, shape) in cases {
        let g = graph("main", vec![node("Constant", &[], &["c"], vec![a])], vec![], vec![vi("c", 1, &[])], vec![]);
        let g = import(&model(g, 17)).unwrap();
        let Op::Constant(t) = &g.node(g.outputs()[0].value.node).op else { panic!() };
        assert_eq!(t.to_f64_vec().unwrap(), vals);
        assert_eq!(t.shape(), shape.as_slice());
    }
    // sparse_value densifies.
    let mut sp = onnx_protobuf::SparseTensorProto::new();
    sp.values = Some(tensor_f32("", &[1], &[9.0])).into();
    sp.indices = Some(tensor_i64("", &[1], &[2])).into();
    sp.dims = vec![4];
    let mut a = onnx_protobuf::AttributeProto::new();
    a.name = "sparse_value".into();
    a.sparse_tensor = Some(sp).into();
    a.type_ = onnx_protobuf::attribute_proto::AttributeType::SPARSE_TENSOR.into();
    let g = graph("main", vec![node("Constant", &[], &["c"], vec![a])], vec![], vec![vi("c", 1, &[])], vec![]);
    let g = import(&model(g, 17)).unwrap();
    let Op::Constant(t) = &g.node(g.outputs()[0].value.node).op else { panic!() };
    assert_eq!(t.to_f64_vec().unwrap(), vec![0.0, 0.0, 9.0, 0.0]);

    let two = graph(
        "main",
        vec![node("Constant", &[], &["c"], vec![attr_int("value_int", 1), attr_float("value_float", 1.0)])],
        vec![],
        vec![vi("c", 1, &[])],
        vec![],
    );
    assert!(import(&model(two, 17)).unwrap_err().to_string().contains("exactly one value attribute"));
}

#[test]
fn unknown_and_foreign_ops_are_opaque() {
    let g = graph(
        "main",
        vec![
            {
                let mut n = node("MyOp", &["x"], &["y"], vec![attr_int("k", 3)]);
                n.domain = "com.example".into();
                n
            },
            node("ImageDecoder", &["y"], &["z"], vec![attr_string("pixel_format", "RGB")]),
        ],
        vec![vi("x", 2, &["10"])],
        vec![vi("z", 2, &["", "", "3"])],
        vec![],
    );
    let mut m = model(g, 20);
    let mut o = onnx_protobuf::OperatorSetIdProto::new();
    o.domain = "com.example".into();
    o.version = 3;
    m.opset_import.push(o);
    let g = import(&m).unwrap();
    let Op::Opaque(my) = &g.node(by_name(&g, "y").node).op else { panic!() };
    assert_eq!((my.domain.as_str(), my.op_type.as_str()), ("com.example", "MyOp"));
    assert_eq!(my.attrs.get("k"), Some(&Attr::Int(3)));
    let Op::Opaque(dec) = &g.node(by_name(&g, "z").node).op else { panic!() };
    assert_eq!(dec.domain, "");
    assert_eq!(dec.attrs.get("pixel_format"), Some(&Attr::String("RGB".into())));
}

#[test]
fn legacy_reduce_squeeze_split_become_inputs() {
    let g = graph(
        "main",
        vec![
            node("ReduceMean", &["x"], &["m"], vec![attr_ints("axes", &[1]), attr_int("keepdims", 0)]),
            node("Unsqueeze", &["m"], &["u"], vec![attr_ints("axes", &[0])]),
            node("Split", &["u"], &["s1", "s2"], vec![attr_int("axis", 1)]),
            node("Split", &["x"], &["t1", "t2"], vec![attr_int("axis", 1), attr_ints("split", &[1, 3])]),
        ],
        vec![vi("x", 1, &["2", "4"])],
        vec![vi("s1", 1, &[]), vi("s2", 1, &[]), vi("t1", 1, &[]), vi("t2", 1, &[])],
        vec![],
    );
    let g = import(&model(g, 11)).unwrap();
    let rm = by_name(&g, "m").node;
    assert_eq!(constant_ints(&g, g.node_input(rm, 1)), vec![1]);
    let Op::Reduce(r) = &g.node(rm).op else { panic!() };
    assert!(!r.attrs.keepdims);
    assert_eq!(constant_ints(&g, g.node_input(by_name(&g, "u").node, 1)), vec![0]);
    let Op::Split(s) = &g.node(by_name(&g, "s1").node).op else { panic!() };
    assert_eq!(s.num_outputs, Some(2), "an even split names its number of outputs");
    let t = by_name(&g, "t1").node;
    assert_eq!(constant_ints(&g, g.node_input(t, 1)), vec![1, 3]);
}

#[test]
fn legacy_softmax_keeps_last_axis_and_expands_others() {
    let g = graph(
        "main",
        vec![node("Softmax", &["x"], &["a"], vec![]), node("LogSoftmax", &["x"], &["b"], vec![attr_int("axis", 2)])],
        vec![vi("x", 1, &["2", "3", "4"])],
        vec![vi("a", 1, &["2", "3", "4"]), vi("b", 1, &["2", "3", "4"])],
        vec![],
    );
    let g = import(&model(g, 11)).unwrap();
    // Default axis 1 on rank 3: Flatten(1) → Softmax → Reshape(Shape(x)).
    let a = by_name(&g, "a").node;
    assert!(matches!(g.node(a).op, Op::Reshape(_)));
    let inner = g.node_input(a, 0).unwrap().node;
    assert!(matches!(g.node(inner).op, Op::Softmax(sharc_ir::op::AxisAttr { axis: 1 })));
    let flat = g.node_input(inner, 0).unwrap().node;
    assert!(matches!(g.node(flat).op, Op::Flatten(sharc_ir::op::Flatten { axis: 1 })));
    assert!(matches!(g.node(g.node_input(a, 1).unwrap().node).op, Op::Shape(_)));
    // Axis 2 is the last one: a plain LogSoftmax.
    let b = by_name(&g, "b").node;
    assert!(matches!(g.node(b).op, Op::LogSoftmax(sharc_ir::op::AxisAttr { axis: 2 })));
}

#[test]
fn legacy_attribute_inputs() {
    let g = graph(
        "main",
        vec![
            node("Clip", &["x"], &["c"], vec![attr_float("min", -1.0), attr_float("max", 2.0)]),
            node("Pad", &["c"], &["p"], vec![attr_ints("pads", &[0, 1, 0, 1]), attr_float("value", 1.5)]),
            node(
                "Slice",
                &["p"],
                &["s"],
                vec![attr_ints("starts", &[0]), attr_ints("ends", &[2]), attr_ints("axes", &[1])],
            ),
            node("TopK", &["s"], &["v", "i"], vec![attr_int("k", 1)]),
            node("Cast", &["v"], &["o"], vec![attr_string("to", "DOUBLE")]),
        ],
        vec![vi("x", 10, &["2", "3"])],
        vec![vi("o", 11, &[]), vi("i", 7, &[])],
        vec![],
    );
    let g = import(&model(g, 5)).unwrap();
    let clip = by_name(&g, "c").node;
    let Op::Constant(min) = &g.node(g.node_input(clip, 1).unwrap().node).op else { panic!() };
    assert_eq!(min.dtype(), DType::F16, "min takes the type of the input");
    assert_eq!(min.to_f64_vec().unwrap(), vec![-1.0]);
    let pad = by_name(&g, "p").node;
    assert_eq!(constant_ints(&g, g.node_input(pad, 1)), vec![0, 1, 0, 1]);
    assert!(g.node_input(pad, 2).is_some(), "a non-zero pad value becomes an input");
    let slice = by_name(&g, "s").node;
    assert_eq!(constant_ints(&g, g.node_input(slice, 3)), vec![1]);
    assert_eq!(constant_ints(&g, g.node_input(by_name(&g, "v").node, 1)), vec![1]);
    let Op::Cast(c) = &g.node(by_name(&g, "o").node).op else { panic!() };
    assert_eq!(c.to, DType::F64);
}

#[test]
fn legacy_clip_on_untyped_value_uses_castlike() {
    let g = graph(
        "main",
        vec![node("Relu", &["x"], &["r"], vec![]), node("Clip", &["r"], &["c"], vec![attr_float("max", 6.0)])],
        vec![vi("x", 1, &["2"])],
        vec![vi("c", 1, &["2"])],
        vec![],
    );
    let g = import(&model(g, 6)).unwrap();
    let clip = by_name(&g, "c").node;
    assert!(g.node_input(clip, 1).is_none());
    let max = g.node_input(clip, 2).unwrap().node;
    assert!(matches!(g.node(max).op, Op::CastLike(_)));
}

#[test]
fn legacy_broadcast_with_axis_unsqueezes_b() {
    let g = graph(
        "main",
        vec![node("Add", &["a", "b"], &["y"], vec![attr_int("broadcast", 1), attr_int("axis", 1)])],
        vec![vi("a", 1, &["2", "3", "4", "5"]), vi("b", 1, &["3", "4"])],
        vec![vi("y", 1, &["2", "3", "4", "5"])],
        vec![],
    );
    let g = import(&model(g, 6)).unwrap();
    let add = by_name(&g, "y").node;
    assert_eq!(g.node(add).op, Op::Binary(BinaryOp::Add));
    let un = g.node_input(add, 1).unwrap().node;
    assert_eq!(g.node(un).op, Op::Unsqueeze);
    assert_eq!(constant_ints(&g, g.node_input(un, 1)), vec![-1]);

    // Without ranks, the rewrite cannot be done: a clear error.
    let g2 = graph(
        "main",
        vec![
            node("Relu", &["a"], &["r"], vec![]),
            node("Mul", &["r", "b"], &["y"], vec![attr_int("broadcast", 1), attr_int("axis", 0)]),
        ],
        vec![vi("a", 1, &["2", "3"]), vi("b", 1, &["2"])],
        vec![vi("y", 1, &[])],
        vec![],
    );
    assert!(import(&model(g2, 6)).unwrap_err().to_string().contains("needs the ranks"));
}

#[test]
fn legacy_tile_folds_constant_repeats() {
    let g = graph(
        "main",
        vec![
            node("Constant", &[], &["t"], vec![attr_tensor("value", tensor_i64("", &[], &[3]))]),
            node("Constant", &[], &["ax"], vec![attr_tensor("value", tensor_i64("", &[], &[1]))]),
            node("Tile", &["x", "t", "ax"], &["y"], vec![]),
        ],
        vec![vi("x", 1, &["2", "2"])],
        vec![vi("y", 1, &["2", "6"])],
        vec![],
    );
    let g = import(&model(g, 5)).unwrap();
    let tile = by_name(&g, "y").node;
    assert_eq!(constant_ints(&g, g.node_input(tile, 1)), vec![1, 3]);
    assert_eq!(g.node_inputs(tile).len(), 2);
}

#[test]
fn upsample_and_scatter_are_renamed() {
    let g = graph(
        "main",
        vec![
            node(
                "Upsample",
                &["x"],
                &["u"],
                vec![attr_string("mode", "nearest"), attr_floats("scales", &[1.0, 1.0, 2.0, 2.0])],
            ),
            node("Scatter", &["u", "i", "v"], &["s"], vec![attr_int("axis", 1)]),
        ],
        vec![vi("x", 1, &["1", "1", "2", "2"]), vi("i", 7, &["1", "1", "1", "1"]), vi("v", 1, &["1", "1", "1", "1"])],
        vec![vi("s", 1, &[])],
        vec![],
    );
    let g = import(&model(g, 8)).unwrap();
    let Op::Resize(r) = &g.node(by_name(&g, "u").node).op else { panic!() };
    assert_eq!(r.coordinate_transformation_mode, sharc_ir::op::CoordinateTransform::Asymmetric);
    assert_eq!(r.nearest_mode, sharc_ir::op::NearestMode::Floor);
    let resize = by_name(&g, "u").node;
    assert!(g.node_input(resize, 1).is_none(), "no roi");
    assert!(g.node_input(resize, 2).is_some());
    let Op::ScatterElements(s) = &g.node(by_name(&g, "s").node).op else { panic!() };
    assert_eq!(s.axis, 1);
}

#[test]
fn scan_v8_becomes_a_scan_over_the_batch() {
    let body = graph(
        "body",
        vec![node("Add", &["s_in", "x_t"], &["s_out"], vec![]), node("Identity", &["s_out"], &["y_t"], vec![])],
        vec![vi("s_in", 1, &["2"]), vi("x_t", 1, &["2"])],
        vec![vi("s_out", 1, &["2"]), vi("y_t", 1, &["2"])],
        vec![],
    );
    let g = graph(
        "main",
        vec![node(
            "Scan",
            &["", "init", "xs"],
            &["fin", "ys"],
            vec![attr_graph("body", body), attr_int("num_scan_inputs", 1)],
        )],
        vec![vi("init", 1, &["3", "2"]), vi("xs", 1, &["3", "5", "2"])],
        vec![vi("fin", 1, &["3", "2"]), vi("ys", 1, &["3", "5", "2"])],
        vec![],
    );
    let g = import(&model(g, 8)).unwrap();
    let outer = by_name(&g, "fin").node;
    let Op::Scan(o) = &g.node(outer).op else { panic!() };
    assert_eq!(o.num_scan_inputs, 2, "every input is scanned over the batch");
    assert_eq!(g.node_inputs(outer).len(), 2);
    let inner_id = find(&o.body, "Scan")[0];
    let Op::Scan(inner) = &o.body.node(inner_id).op else { panic!() };
    assert_eq!(inner.num_scan_inputs, 1);
    assert_eq!(o.body.outputs().len(), 2);
    assert_eq!(inner.body.inputs().len(), 2);
}

#[test]
fn batchnorm_and_dropout_legacy_attributes() {
    let g = graph(
        "main",
        vec![
            node(
                "BatchNormalization",
                &["x", "s", "b", "m", "v"],
                &["y", "", "", "", ""],
                vec![attr_int("is_test", 1), attr_int("spatial", 1)],
            ),
            node("Dropout", &["y"], &["d", "mask"], vec![attr_float("ratio", 0.3), attr_int("is_test", 1)]),
        ],
        vec![vi("x", 1, &["1", "2"]), vi("s", 1, &["2"]), vi("b", 1, &["2"]), vi("m", 1, &["2"]), vi("v", 1, &["2"])],
        vec![vi("d", 1, &["1", "2"]), vi("mask", 1, &["1", "2"])],
        vec![],
    );
    let g = import(&model(g, 6)).unwrap();
    assert_eq!(g.node(by_name(&g, "y").node).outputs.len(), 1);
    // Before opset 10 the mask had the data type: a CastLike restores it.
    let mask = by_name(&g, "mask").node;
    assert!(matches!(g.node(mask).op, Op::CastLike(_)));
    let drop = by_name(&g, "d").node;
    assert!(matches!(g.node(drop).op, Op::Dropout(_)));
    assert!(g.node_input(drop, 1).is_some(), "the ratio becomes an input");

    let spatial0 = graph(
        "main",
        vec![node("BatchNormalization", &["x", "s", "b", "m", "v"], &["y"], vec![attr_int("spatial", 0)])],
        vec![vi("x", 1, &["1", "2"]), vi("s", 1, &["2"]), vi("b", 1, &["2"]), vi("m", 1, &["2"]), vi("v", 1, &["2"])],
        vec![vi("y", 1, &["1", "2"])],
        vec![],
    );
    assert!(import(&model(spatial0, 7)).unwrap_err().to_string().contains("spatial=0"));
}

#[test]
fn external_data_is_mapped_and_confined_to_the_model_folder() {
    let dir = tempfile::tempdir().unwrap();
    let vals: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut data = vec![0u8; 8];
    data.extend_from_slice(&vals);
    std::fs::write(dir.path().join("w.bin"), &data).unwrap();
    let make = |location: &str, offset: &str, length: &str| {
        let mut t = onnx_protobuf::TensorProto::new();
        t.name = "w".into();
        t.data_type = 1;
        t.dims = vec![4];
        t.data_location = onnx_protobuf::tensor_proto::DataLocation::EXTERNAL.into();
        for (k, v) in [("location", location), ("offset", offset), ("length", length)] {
            let mut e = onnx_protobuf::StringStringEntryProto::new();
            e.key = k.into();
            e.value = v.into();
            t.external_data.push(e);
        }
        let g = graph("main", vec![node("Relu", &["w"], &["z"], vec![])], vec![], vec![vi("z", 1, &["4"])], vec![t]);
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, bytes(&model(g, 17))).unwrap();
        import_file(&path)
    };
    let g = make("w.bin", "8", "16").unwrap();
    let w = g.weights.iter().next().unwrap().1;
    assert!(matches!(w.data, WeightData::Mapped { offset: 8, len: 16, .. }));
    assert_eq!(w.tensor().to_f64_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);

    for (loc, off, len, want) in [
        ("w.bin", "8", "12", "needs 16 bytes"),
        ("w.bin", "20", "16", "beyond the end"),
        ("w.bin", "x", "16", "not a non-negative integer"),
        ("missing.bin", "0", "16", "cannot be opened"),
        ("../w.bin", "0", "16", "escapes the model's folder"),
        ("/etc/passwd", "0", "16", "absolute path"),
    ] {
        let e = make(loc, off, len).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("tensor 'w'"), "{loc}: {e}");
    }

    #[cfg(unix)]
    {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.bin"), &data).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.bin"), dir.path().join("link.bin")).unwrap();
        let e = make("link.bin", "8", "16").unwrap_err().to_string();
        assert!(e.contains("outside the model's folder"), "{e}");
    }

    // From bytes without a folder, external data cannot be found.
    let bytes_only = std::fs::read(dir.path().join("model.onnx")).unwrap();
    assert!(import_bytes(&bytes_only, None).unwrap_err().to_string().contains("without a folder"));
}

#[test]
fn roi_align_before_16_keeps_its_unshifted_coordinates() {
    let g = graph(
        "main",
        vec![node("RoiAlign", &["x", "r", "b"], &["y"], vec![])],
        vec![vi("x", 1, &["1", "1", "4", "4"]), vi("r", 1, &["1", "4"]), vi("b", 7, &["1"])],
        vec![vi("y", 1, &["1", "1", "1", "1"])],
        vec![],
    );
    let g = import(&model(g, 10)).unwrap();
    let Op::RoiAlign(r) = &g.node(by_name(&g, "y").node).op else { panic!() };
    assert_eq!(r.coordinate_transformation_mode, "output_half_pixel");
}

#[test]
fn a_newer_opset_imports_with_a_warning_to_show() {
    let relu = || {
        graph("main", vec![node("Relu", &["x"], &["z"], vec![])], vec![vi("x", 1, &[])], vec![vi("z", 1, &[])], vec![])
    };
    let known = import(&model(relu(), crate::NEWEST_KNOWN_OPSET)).unwrap();
    assert_eq!(crate::newer_opset_warning(&known), None);
    let newer = import(&model(relu(), crate::NEWEST_KNOWN_OPSET + 1)).unwrap();
    let w = crate::newer_opset_warning(&newer).expect("a warning");
    assert!(w.contains(&format!("opset {}", crate::NEWEST_KNOWN_OPSET + 1)) && w.contains("re-export"), "{w}");
}

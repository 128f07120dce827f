//! Malformed models never panic: hundreds of mutated variants of a real
//! model and of a small model using every feature each import to Ok or to
//! an error. Also: failed exports leave no files behind.

mod common;

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataLocation;
use onnx_protobuf::tensor_shape_proto::dimension::Value as DimValue;
use onnx_protobuf::type_proto::Value as TypeValue;
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, SparseTensorProto,
    StringStringEntryProto, TensorProto, TypeProto, ValueInfoProto,
};
use sharc_onnx::{ExportOptions, export_bytes, export_file, import_bytes};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn node(op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = format!("{op}_{}", outputs.first().unwrap_or(&""));
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = outputs.iter().map(|s| s.to_string()).collect();
    n.attribute = attrs;
    n
}

fn attr(name: &str, kind: AttributeType, f: impl FnOnce(&mut AttributeProto)) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = kind.into();
    f(&mut a);
    a
}

fn vi(name: &str, elem: i32, dims: &[&str]) -> ValueInfoProto {
    let mut tt = onnx_protobuf::type_proto::Tensor::new();
    tt.elem_type = elem;
    let mut sp = onnx_protobuf::TensorShapeProto::new();
    for d in dims {
        let mut dp = onnx_protobuf::tensor_shape_proto::Dimension::new();
        dp.value = Some(match d.parse::<i64>() {
            Ok(v) => DimValue::DimValue(v),
            Err(_) => DimValue::DimParam(d.to_string()),
        });
        sp.dim.push(dp);
    }
    tt.shape = Some(sp).into();
    let mut tp = TypeProto::new();
    tp.value = Some(TypeValue::TensorType(tt));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = Some(tp).into();
    v
}

fn f32_tensor(name: &str, dims: &[i64], vals: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = 1;
    t.dims = dims.to_vec();
    t.raw_data = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    t
}

/// A small model that uses most features: weights (one external), a
/// sparse initializer, constants, an If whose branches capture outer
/// values, an opaque op with a graph attribute, symbolic dims, old-opset
/// attributes, strings.
fn g(m: &mut ModelProto) -> &mut GraphProto {
    m.graph.as_mut().unwrap()
}

fn feature_model(external: bool) -> ModelProto {
    let mut w_ext = f32_tensor("w", &[2, 2], &[1.0, 2.0, 3.0, 4.0]);
    if external {
        w_ext.raw_data.clear();
        w_ext.data_location = DataLocation::EXTERNAL.into();
        for (k, v) in [("location", "weights.bin"), ("offset", "0"), ("length", "16")] {
            let mut e = StringStringEntryProto::new();
            e.key = k.into();
            e.value = v.into();
            w_ext.external_data.push(e);
        }
    }
    let mut sp = SparseTensorProto::new();
    sp.values = Some(f32_tensor("sp", &[1], &[5.0])).into();
    let mut idx = TensorProto::new();
    idx.data_type = 7;
    idx.dims = vec![1];
    idx.int64_data = vec![1];
    sp.indices = Some(idx).into();
    sp.dims = vec![2];

    let then_g = {
        let mut g = GraphProto::new();
        g.name = "then".into();
        g.node = vec![node("Add", &["y", "b"], &["t_out"], vec![])];
        g.output = vec![vi("t_out", 1, &["batch", "2"])];
        g
    };
    let else_g = {
        let mut g = GraphProto::new();
        g.name = "else".into();
        g.node = vec![node("Neg", &["y"], &["e_out"], vec![])];
        g.output = vec![vi("e_out", 1, &["batch", "2"])];
        g
    };
    let mut custom =
        node("Custom", &["r"], &["c"], vec![attr("label", AttributeType::STRING, |a| a.s = b"hello".to_vec())]);
    custom.domain = "com.example".into();
    let nodes = vec![
        node("MatMul", &["x", "w"], &["y"], vec![]),
        node(
            "Constant",
            &[],
            &["k"],
            vec![attr("value", AttributeType::TENSOR, |a| a.t = Some(f32_tensor("", &[2], &[0.5, 0.25])).into())],
        ),
        node("Mul", &["y", "k"], &["m"], vec![]),
        node("ReduceSum", &["m"], &["s"], vec![attr("axes", AttributeType::INTS, |a| a.ints = vec![1])]),
        node("Greater", &["s", "zero"], &["cond_v"], vec![]),
        node("ReduceMin", &["cond_v_f"], &["cond_min"], vec![attr("keepdims", AttributeType::INT, |a| a.i = 0)]),
        node("Cast", &["cond_v"], &["cond_v_f"], vec![attr("to", AttributeType::INT, |a| a.i = 1)]),
        node("Cast", &["cond_min"], &["cond"], vec![attr("to", AttributeType::INT, |a| a.i = 9)]),
        node(
            "If",
            &["cond"],
            &["r"],
            vec![
                attr("then_branch", AttributeType::GRAPH, |a| a.g = Some(then_g).into()),
                attr("else_branch", AttributeType::GRAPH, |a| a.g = Some(else_g).into()),
            ],
        ),
        custom,
        node("Softmax", &["r"], &["out"], vec![attr("axis", AttributeType::INT, |a| a.i = 1)]),
    ];
    let mut g = GraphProto::new();
    g.name = "features".into();
    g.node = nodes;
    g.input = vec![vi("x", 1, &["batch", "2"])];
    g.output = vec![vi("out", 1, &["batch", "2"]), vi("c", 1, &["batch", "2"])];
    g.value_info = vec![vi("y", 1, &["batch", "2"])];
    g.initializer = vec![w_ext, f32_tensor("b", &[2], &[0.1, 0.2]), f32_tensor("zero", &[], &[0.0])];
    g.sparse_initializer = vec![sp];
    let mut m = ModelProto::new();
    m.ir_version = 7;
    for (d, v) in [("", 11), ("com.example", 1)] {
        let mut o = OperatorSetIdProto::new();
        o.domain = d.into();
        o.version = v;
        m.opset_import.push(o);
    }
    m.graph = Some(g).into();
    m
}

/// Imports (and, when that works, exports) under catch_unwind: from bytes,
/// or, with `file`, from that file (the memory-mapped path). Returns
/// whether the import succeeded, or the panic message.
fn survives(bytes: &[u8], base: Option<&Path>, file: Option<&Path>) -> Result<bool, String> {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let imported = match file {
            Some(f) => {
                std::fs::write(f, bytes).unwrap();
                sharc_onnx::import_file(f)
            }
            None => import_bytes(bytes, base),
        };
        match imported {
            Ok(g) => {
                let _ = export_bytes(&g, &ExportOptions::default());
                true
            }
            Err(_) => false,
        }
    }));
    r.map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

/// Imports truncated, bit-flipped and garbage variants of `original`; every
/// third one goes through a file in `dir` (for the zero-copy path).
fn mutate_and_import(name: &str, original: &[u8], dir: &Path, truncations: usize, flips: usize, seed: u64) {
    let mut rng = Rng(seed);
    let mut panics = Vec::new();
    let mut errors = 0;
    let mut variants = 0;
    let file = dir.join("variant.onnx");
    let mut check = |v: Vec<u8>, what: String| {
        variants += 1;
        let via_file = variants % 3 == 0;
        match survives(&v, Some(dir), via_file.then_some(file.as_path())) {
            Ok(true) => {}
            Ok(false) => errors += 1,
            Err(p) => panics.push(format!("{what}: {p}")),
        }
    };
    for i in 0..truncations {
        let at = if i < 8 { i } else { (original.len() * i) / truncations };
        check(original[..at].to_vec(), format!("truncated at {at}"));
    }
    for _ in 0..flips {
        let mut v = original.to_vec();
        let count = 1 + rng.below(6);
        let mut what = String::from("flipped");
        for _ in 0..count {
            let at = rng.below(v.len());
            let bits = 1 + rng.below(255) as u8;
            v[at] ^= bits;
            what.push_str(&format!(" {at}^{bits:#x}"));
        }
        check(v, what);
    }
    for junk in [vec![], vec![0u8; 64], (0..=255u8).collect::<Vec<_>>()] {
        check(junk, "garbage".to_string());
    }
    assert!(panics.is_empty(), "{name}: {} of {variants} variants panicked:\n{}", panics.len(), panics.join("\n"));
    assert!(errors > variants / 3, "{name}: only {errors} of {variants} variants were rejected");
}

#[test]
fn mutated_feature_model_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let weights: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.path().join("weights.bin"), weights).unwrap();
    let bytes = feature_model(true).write_to_bytes().unwrap();
    let g = import_bytes(&bytes, Some(dir.path())).expect("the unmutated model imports");
    assert_eq!(g.weights.len(), 4);
    // Every truncation point of the small model, plus random flips.
    mutate_and_import("feature model", &bytes, dir.path(), bytes.len(), 400, 0x5eed);
}

#[test]
fn mutated_real_model_never_panics() {
    let bytes = std::fs::read(common::shared_dir().join("models/gpt-tiny.onnx")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    mutate_and_import("gpt-tiny", &bytes, dir.path(), 48, 110, 42);
}

/// Targeted corruptions of the feature model, each with the error it must give.
#[test]
fn targeted_corruptions_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let weights: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.path().join("weights.bin"), &weights).unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("w.bin"), &weights).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(outside.path().join("w.bin"), dir.path().join("sneaky.bin")).unwrap();

    type Edit = Box<dyn Fn(&mut ModelProto)>;
    let set_location = |loc: &'static str| -> Edit {
        Box::new(move |m: &mut ModelProto| {
            g(m).initializer[0].external_data[0].value = loc.to_string();
        })
    };
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "wrong data length",
            Box::new(|m: &mut ModelProto| g(m).initializer[1].raw_data.pop().map(|_| ()).unwrap()),
            "needs 8 bytes",
        ),
        (
            "missing initializer",
            Box::new(|m: &mut ModelProto| {
                g(m).initializer.remove(1);
            }),
            "input 'b' is not produced",
        ),
        ("undefined value", Box::new(|m: &mut ModelProto| g(m).node[2].input[1] = "nowhere".into()), "input 'nowhere'"),
        ("external data escaping", set_location("../weights.bin"), "escapes the model's folder"),
        ("external data missing", set_location("gone.bin"), "cannot be opened"),
        ("external data absolute", set_location("/tmp/weights.bin"), "absolute path"),
        #[cfg(unix)]
        ("external data through a symlink", set_location("sneaky.bin"), "outside the model's folder"),
        ("duplicate output", Box::new(|m: &mut ModelProto| g(m).node[2].output[0] = "y".into()), "more than one node"),
        ("cycle", Box::new(|m: &mut ModelProto| g(m).node[0].input[0] = "out".into()), "cycle"),
        ("unknown dtype", Box::new(|m: &mut ModelProto| g(m).initializer[1].data_type = 77), "unknown element type"),
        ("negative dim", Box::new(|m: &mut ModelProto| g(m).initializer[1].dims = vec![-2]), "negative dimension"),
        (
            "bad attribute kind",
            Box::new(|m: &mut ModelProto| g(m).node[3].attribute[0].type_ = AttributeType::FLOAT.into()),
            "should be ints",
        ),
        ("no graph", Box::new(|m: &mut ModelProto| m.graph = None.into()), "has no graph"),
    ];
    for (what, edit, want) in cases {
        let mut m = feature_model(true);
        edit(&mut m);
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, m.write_to_bytes().unwrap()).unwrap();
        let e = sharc_onnx::import_file(&path).err().unwrap_or_else(|| panic!("{what}: imported")).to_string();
        assert!(e.contains(want), "{what}: '{e}' does not say '{want}'");
        assert!(e.contains("model.onnx"), "{what}: '{e}' does not name the file");
    }
}

#[test]
fn failed_exports_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("weights.bin"), [0u8; 16]).unwrap();
    let mut g = import_bytes(&feature_model(true).write_to_bytes().unwrap(), Some(dir.path())).unwrap();
    let listing = |d: &Path| {
        let mut v: Vec<String> =
            std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        v.sort();
        v
    };

    // A graph that fails late: after the weights were written to the side
    // file, a node with an attribute of unknown type cannot be written.
    let id = g.node_ids().find(|&id| g.node(id).op.domain() == "com.example").unwrap();
    if let sharc_ir::Op::Opaque(o) = &mut g.node_mut(id).op {
        o.attrs.insert("t".into(), sharc_ir::Attr::Type(sharc_ir::Type::Unknown));
    }
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("keep.onnx"), b"old").unwrap();
    for target in ["new.onnx", "keep.onnx"] {
        let e = export_file(&g, out.path().join(target), &ExportOptions::external(1)).unwrap_err();
        assert!(e.to_string().contains("type attribute 't' is unknown"), "{e}");
        assert_eq!(listing(out.path()), vec!["keep.onnx"], "no model, side file or temporary file is left");
        assert_eq!(std::fs::read(out.path().join("keep.onnx")).unwrap(), b"old", "the old file is untouched");
    }

    // A folder that does not exist.
    let e = export_file(&g, out.path().join("nope/m.onnx"), &ExportOptions::default()).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    // Bad side file names.
    for bad in ["../x.data", "m.onnx"] {
        let opts = ExportOptions { data_file: Some(bad.into()), ..ExportOptions::external(1) };
        assert!(export_file(&g, out.path().join("m.onnx"), &opts).is_err());
    }
    assert_eq!(listing(out.path()), vec!["keep.onnx"]);
    let _: Option<DataLocation> = None;
}

#[test]
fn shared_weights_are_written_once() {
    use sharc_ir::{DType, Dim, Graph, Op, Tensor, Type, Weight};
    let mut g = Graph::new("shared");
    let x = g.add_input("x", Type::tensor(DType::F32, vec![Dim::sym("batch"), Dim::Fixed(2)]));
    let w = g.add_weight(Weight::from_tensor("w", Tensor::from_vec(&[2, 2], vec![1.0f32, 0.0, 0.0, 1.0])));
    let y = g.add_op(Op::MatMul, &[x, w], Type::Unknown);
    // A second node for the same weight, and a value named like the weight.
    let w2 = g.weight_value(sharc_ir::WeightId(0));
    let z = g.add_op(Op::MatMul, &[y, w2], Type::Unknown);
    let clash = g.add_op(Op::Unary(sharc_ir::UnaryOp::Relu), &[z], Type::Unknown);
    // The weight is stored as "w" but its value nodes are named otherwise,
    // and an unrelated value takes the name "w".
    g.value_info_mut(w).name = "w_first".into();
    g.value_info_mut(clash).name = "w".into();
    // ONNX requires graph outputs to be typed.
    g.value_info_mut(clash).ty = Type::tensor(DType::F32, vec![Dim::sym("batch"), Dim::Fixed(2)]);
    // The output's name differs from its value's name.
    g.add_output("result", clash);
    g.add_output("also_x", x);
    let bytes = export_bytes(&g, &ExportOptions::default()).unwrap();
    let m = ModelProto::parse_from_bytes(&bytes).unwrap();
    let gp = m.graph.as_ref().unwrap();
    assert_eq!(gp.initializer.len(), 1, "one initializer for the shared weight");
    let init = gp.initializer[0].name.clone();
    let users = gp.node.iter().filter(|n| n.input.contains(&init)).count();
    assert_eq!(users, 2);
    let outs: Vec<&str> = gp.output.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(outs, vec!["result", "also_x"]);
    let mut names: Vec<&str> = gp.node.iter().flat_map(|n| n.output.iter().map(|s| s.as_str())).collect();
    names.push(&init);
    names.push("x");
    let unique: std::collections::HashSet<&&str> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "no name is defined twice: {names:?}");
    let g2 = import_bytes(&bytes, None).unwrap();
    assert_eq!(g2.stats().unique_params, 4);
    assert_eq!(g2.outputs()[1].name, "also_x");
    if common::have_python_onnx() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shared.onnx");
        std::fs::write(&p, &bytes).unwrap();
        let bad = common::check_models(&[p]);
        assert!(bad.is_empty(), "{bad:?}");
    }
}

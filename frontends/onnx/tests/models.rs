//! The real models of `shared/models`: import with the counts their README
//! gives, and round trip through export (inline and with external data).

mod common;

use onnx_protobuf::{Message, ModelProto};
use sharc_ir::{Graph, Op, WeightData};
use sharc_onnx::{ExportOptions, export_file, import_file};
use std::collections::BTreeMap;

const MODELS: [&str; 3] = ["minilm-l6", "gpt-tiny", "moe-tiny"];

/// What the README says about a model.
struct Facts {
    nodes: usize,
    initializers: usize,
    parameters: u64,
    ops: BTreeMap<String, usize>,
}

fn num(s: &str) -> u64 {
    s.trim().replace(',', "").parse().unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

fn readme_facts(model: &str) -> Facts {
    let text = std::fs::read_to_string(common::shared_dir().join("models/README.md")).unwrap();
    let section = text.split("### ").find(|s| s.starts_with(model)).unwrap_or_else(|| panic!("no section {model}"));
    let line = |prefix: &str| {
        section.lines().find_map(|l| l.trim().strip_prefix(prefix)).unwrap_or_else(|| panic!("no '{prefix}' line"))
    };
    // "- nodes: 516; initializers: 101; parameters (initializer elements): 22,565,376; plus ..."
    let parts: Vec<&str> = line("- nodes:").split(';').collect();
    let nodes = num(parts[0]) as usize;
    let initializers = num(parts[1].trim().strip_prefix("initializers:").unwrap()) as usize;
    let parameters = num(parts[2].trim().strip_prefix("parameters (initializer elements):").unwrap());
    // "- op types (24 kinds), top 15: Constant 160, Add 63, ...; the rest: Range 3, ..."
    let ops_line = line("- op types");
    let list = ops_line.split_once(": ").unwrap().1.replace("; the rest:", ",");
    let mut ops = BTreeMap::new();
    for item in list.split(',') {
        let (op, n) = item.trim().rsplit_once(' ').unwrap();
        ops.insert(op.to_string(), num(n) as usize);
    }
    Facts { nodes, initializers, parameters, ops }
}

fn model_path(m: &str) -> std::path::PathBuf {
    common::shared_dir().join(format!("models/{m}.onnx"))
}

/// Helper nodes the importer adds for old opsets: the `axes` constants of
/// opset-17 ReduceMean/Max/... (ReduceSum already takes axes as an input).
fn helper_constants(g: &Graph) -> usize {
    g.node_ids()
        .filter(|&id| matches!(&g.node(id).op, Op::Reduce(r) if r.kind != sharc_ir::ReduceKind::Sum))
        .filter(|&id| g.node_input(id, 1).is_some())
        .count()
}

#[test]
fn real_models_import_with_the_documented_counts() {
    for m in MODELS {
        let facts = readme_facts(m);
        let g = import_file(model_path(m)).unwrap_or_else(|e| panic!("{m}: {e}"));
        let s = g.stats();
        assert_eq!(g.weights.len(), facts.initializers, "{m}: initializers");
        assert_eq!(s.unique_weights, facts.initializers, "{m}: weights in use");
        assert_eq!(s.unique_params, facts.parameters, "{m}: parameters");
        let extra = helper_constants(&g);
        let mut hist = s.op_histogram.clone();
        hist.remove("Input");
        hist.remove("Weight");
        *hist.get_mut("Constant").unwrap() -= extra;
        assert_eq!(hist, facts.ops, "{m}: op histogram");
        assert_eq!(hist.values().sum::<usize>(), facts.nodes, "{m}: nodes");
        assert_eq!(g.meta.opset_imports, vec![(String::new(), 17)], "{m}");
        assert_eq!(g.meta.producer_name, "pytorch", "{m}");
        // Symbolic dims survive.
        let ty = g.value_type(g.input_values()[0]).to_string();
        assert_eq!(ty, "i64[batch, seq]", "{m}");
    }
}

fn opened(path: &std::path::Path) -> ModelProto {
    ModelProto::parse_from_bytes(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn real_models_round_trip_inline_and_with_external_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut to_check = Vec::new();
    for m in MODELS {
        let g = import_file(model_path(m)).unwrap();
        // Weights are not copied out of the model file but mapped.
        for (_, w) in g.weights.iter() {
            let mapped = matches!(&w.data, WeightData::Mapped { file, .. } if file.path == model_path(m));
            assert_eq!(mapped, w.num_bytes() >= 1024, "{m}: weight '{}' of {} bytes", w.name, w.num_bytes());
        }

        let inline = dir.path().join(format!("{m}.onnx"));
        export_file(&g, &inline, &ExportOptions::default()).unwrap();
        let g2 = import_file(&inline).unwrap();
        assert!(g.structurally_equal(&g2), "{m}: inline round trip");
        let p = opened(&inline);
        assert_eq!(p.opset_import[0].version, 18, "{m}: opset 17 is raised to 18");
        assert_eq!(p.ir_version, 8, "{m}: opset 18 pairs with IR 8");
        to_check.push(inline.clone());

        let ext = dir.path().join(format!("{m}-ext.onnx"));
        export_file(&g, &ext, &ExportOptions::external(4096)).unwrap();
        let data = dir.path().join(format!("{m}-ext.onnx.data"));
        assert!(data.is_file(), "{m}: the side file exists");
        let g3 = import_file(&ext).unwrap();
        assert!(g.structurally_equal(&g3), "{m}: external round trip");
        let in_side_file = g3
            .weights
            .iter()
            .filter(|(_, w)| matches!(&w.data, WeightData::Mapped { file, .. } if file.path.ends_with(format!("{m}-ext.onnx.data"))))
            .count();
        let big = g.weights.iter().filter(|(_, w)| w.num_bytes() >= 4096).count();
        assert_eq!(in_side_file, big, "{m}: every weight of 4 KiB or more is mapped from the side file");
        let p = opened(&ext);
        let mut external = 0;
        for t in &p.graph.initializer {
            if t.external_data.is_empty() {
                assert!(!t.raw_data.is_empty() || t.dims.contains(&0), "{m}: small weights stay inline");
                continue;
            }
            external += 1;
            let get = |k: &str| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.clone()).unwrap();
            assert_eq!(get("location"), format!("{m}-ext.onnx.data"));
            assert_eq!(get("offset").parse::<u64>().unwrap() % 4096, 0, "{m}: aligned offsets");
        }
        assert_eq!(external, big);
        assert!(std::fs::metadata(&ext).unwrap().len() < std::fs::metadata(&inline).unwrap().len() / 4);
        to_check.push(ext);
    }
    if common::have_python_onnx() {
        let bad = common::check_models(&to_check);
        assert!(bad.is_empty(), "checker failures: {bad:?}");
    }
}

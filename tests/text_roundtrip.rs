//! The IR text format on real imports: for the shared models and every model
//! of ONNX's node suite, printing, parsing back with the model's weights and
//! printing again gives the same text, and weight-free graphs read back
//! structurally equal through plain `parse`.

use sharc_ir::text::all_weights;
use sharc_ir::{Attr, Graph, Op, Tensor, TensorData, parse, parse_with_weights, print, verify};
use std::path::{Path, PathBuf};

/// `$SHARC_SHARED_DIR`, or `shared/` beside the repository.
fn shared_dir() -> PathBuf {
    match std::env::var("SHARC_SHARED_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
}

fn tensor_has_nan(t: &Tensor) -> bool {
    match t.data() {
        TensorData::F32(a) => a.iter().any(|v| v.is_nan()),
        TensorData::F64(a) => a.iter().any(|v| v.is_nan()),
        TensorData::F16(a) => a.iter().any(|v| v.is_nan()),
        TensorData::BF16(a) => a.iter().any(|v| v.is_nan()),
        TensorData::Complex64(a) => a.iter().flatten().any(|v| v.is_nan()),
        TensorData::Complex128(a) => a.iter().flatten().any(|v| v.is_nan()),
        // Narrow codes may stand for NaN; those graphs are compared by text only.
        TensorData::Narrow { .. } => true,
        _ => false,
    }
}

/// True when a constant or an attribute anywhere in the graph holds a NaN,
/// which makes `structurally_equal` false even for a graph and its clone.
fn has_nan(g: &Graph) -> bool {
    g.node_ids().any(|n| {
        let op = &g.node(n).op;
        let in_attrs = op.attrs().values().any(|a| match a {
            Attr::Float(v) => v.is_nan(),
            Attr::Floats(v) => v.iter().any(|v| v.is_nan()),
            Attr::Tensor(t) => tensor_has_nan(t),
            Attr::Tensors(ts) => ts.iter().any(tensor_has_nan),
            _ => false,
        });
        let in_const = matches!(op, Op::Constant(t) if tensor_has_nan(t));
        in_attrs || in_const || op.subgraphs().iter().any(|b| has_nan(b))
    })
}

/// Checks one model; returns whether the structural check applied, or a
/// description of what went wrong.
fn check_model(path: &Path) -> Result<bool, String> {
    let g = sharc_onnx::import_file(path).map_err(|e| format!("import: {e}"))?;
    let text = print(&g);
    // Body graphs keep their own weight stores; the text names all weights
    // in one namespace, so a model with body initializers needs them all.
    let everything = all_weights(&g);
    let store = if everything.len() == g.weights.len() { &g.weights } else { &everything };
    let back = parse_with_weights(&text, store).map_err(|e| format!("parse:\n{e}"))?;
    let again = print(&back);
    if again != text {
        let line = text.lines().zip(again.lines()).position(|(a, b)| a != b).unwrap_or(0);
        return Err(format!(
            "the text changed at line {}:\n  first:  {}\n  second: {}",
            line + 1,
            text.lines().nth(line).unwrap_or(""),
            again.lines().nth(line).unwrap_or("")
        ));
    }
    if verify(&g).is_ok() {
        verify(&back).map_err(|e| format!("the parsed graph does not verify: {e}"))?;
    }
    if everything.is_empty() && !has_nan(&g) {
        let plain = parse(&text).map_err(|e| format!("plain parse:\n{e}"))?;
        if !plain.structurally_equal(&g) {
            return Err("parse(print(g)) is not structurally equal to g".to_string());
        }
        return Ok(true);
    }
    Ok(false)
}

#[test]
fn shared_models_round_trip_through_text() {
    let dir = shared_dir().join("models");
    for name in ["minilm-l6", "gpt-tiny", "moe-tiny"] {
        let path = dir.join(format!("{name}.onnx"));
        assert!(path.is_file(), "missing {}", path.display());
        if let Err(e) = check_model(&path) {
            panic!("{name}: {e}");
        }
    }
}

#[test]
fn node_suite_models_round_trip_through_text() {
    let dir = shared_dir().join("onnx-node");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path().join("model.onnx")))
        .filter(|p| p.is_file())
        .collect();
    cases.sort();
    assert!(cases.len() > 1000, "expected the node suite, found {} cases", cases.len());
    let mut failures = Vec::new();
    let mut structural = 0;
    for p in &cases {
        match check_model(p) {
            Ok(checked) => structural += checked as usize,
            Err(e) => failures.push(format!("{}: {e}", p.parent().unwrap_or(p).display())),
        }
    }
    assert!(failures.is_empty(), "{} of {} models failed:\n{}", failures.len(), cases.len(), failures.join("\n\n"));
    eprintln!("{} node-suite models round-tripped, {structural} also checked structurally", cases.len());
    // Most node tests have no initializers and no NaN, so most get the structural check too.
    assert!(structural > 1800, "only {structural} models were checked for structural equality");
}

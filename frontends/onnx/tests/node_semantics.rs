//! Node-suite models of old opsets (before 18), normalised on import and
//! exported at a modern opset, still compute their expected outputs (run
//! with onnx's reference evaluator).

mod common;

use sharc_onnx::{ExportOptions, export_file, import_file};
use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn old_opset_node_cases_keep_their_results() {
    if !common::have_python_onnx() {
        eprintln!("python3 with onnx is not available: skipping");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let mut pairs = Vec::new();
    for case in common::node_cases() {
        let g = import_file(case.join("model.onnx")).unwrap();
        let opset = g.meta.opset_imports.iter().find(|(d, _)| d.is_empty() || d == "ai.onnx").map(|(_, v)| *v);
        if opset.is_none_or(|v| v >= 18) {
            continue;
        }
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let path = out.path().join(format!("{name}.onnx"));
        export_file(&g, &path, &ExportOptions::default()).unwrap();
        pairs.push(format!("{}\t{}", path.display(), case.display()));
    }
    assert!(pairs.len() > 500, "only {} old-opset cases", pairs.len());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/run_node_cases.py");
    let mut child = Command::new("python3").arg(script).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    writeln!(child.stdin.take().unwrap(), "{}", pairs.join("\n")).unwrap();
    let res = child.wait_with_output().unwrap();
    assert!(res.status.success());
    let report = String::from_utf8(res.stdout).unwrap();
    let ok = report.lines().filter(|l| l.starts_with("OK ")).count();
    let failed: Vec<&str> = report.lines().filter(|l| l.starts_with("FAIL ")).collect();
    assert_eq!(report.lines().count(), pairs.len(), "every case was answered");
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert!(ok > pairs.len() * 9 / 10, "only {ok} of {} cases could be checked:\n{report}", pairs.len());
}

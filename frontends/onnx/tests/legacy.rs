//! Opset normalisation keeps the meaning of old models: old-opset models
//! (built by tests/python/legacy_cases.py, with expected outputs computed
//! by numpy from the old operator definitions or by onnxruntime on the
//! original) are imported, exported at a modern opset, and run with onnx's
//! reference evaluator.

mod common;

use sharc_onnx::{ExportOptions, export_file, import_file};
use std::process::Command;

#[test]
fn normalised_old_models_compute_the_same_results() {
    if !common::have_python_onnx() {
        eprintln!("python3 with onnx is not available: skipping");
        return;
    }
    let has_ort = Command::new("python3").args(["-c", "import onnxruntime"]).output().is_ok_and(|o| o.status.success());
    if !has_ort {
        assert_ne!(std::env::var("SHARC_REQUIRE_PYTHON").as_deref(), Ok("1"), "onnxruntime is missing");
        eprintln!("onnxruntime is not available: skipping");
        return;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/legacy_cases.py");
    let cases = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let made = Command::new("python3").arg(&script).arg("gen").arg(cases.path()).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let names: Vec<String> = String::from_utf8(made.stdout).unwrap().lines().map(|s| s.to_string()).collect();
    assert!(names.len() >= 30, "{names:?}");
    for name in &names {
        let g = import_file(cases.path().join(format!("{name}.onnx"))).unwrap_or_else(|e| panic!("{name}: {e}"));
        export_file(&g, out.path().join(format!("{name}.onnx")), &ExportOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let check = Command::new("python3").arg(&script).arg("check").arg(cases.path()).arg(out.path()).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let report = String::from_utf8(check.stdout).unwrap();
    let failed: Vec<&str> = report.lines().filter(|l| !l.starts_with("OK ")).collect();
    assert_eq!(report.lines().count(), names.len(), "{report}");
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The shared data folder: `$SHARC_SHARED_DIR`, or `shared/` next to the
/// repository root.
pub fn shared_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SHARC_SHARED_DIR") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// The node-suite case folders, sorted.
pub fn node_cases() -> Vec<PathBuf> {
    let dir = shared_dir().join("onnx-node");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    cases.sort();
    cases
}

/// The test_data_set folders of a case, sorted.
pub fn data_sets(case: &std::path::Path) -> Vec<PathBuf> {
    let mut sets: Vec<PathBuf> = std::fs::read_dir(case)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.file_name().unwrap().to_string_lossy().starts_with("test_data_set"))
        .collect();
    sets.sort();
    sets
}

/// True when `python3 -c "import onnx"` works. With `SHARC_REQUIRE_PYTHON=1`
/// a missing onnx package is a test failure instead of a skip.
pub fn have_python_onnx() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import onnx"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok && std::env::var("SHARC_REQUIRE_PYTHON").as_deref() == Ok("1") {
        panic!("SHARC_REQUIRE_PYTHON=1 but `python3 -c \"import onnx\"` fails");
    }
    ok
}

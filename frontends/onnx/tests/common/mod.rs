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

/// Runs onnx's full checker on each model; returns `(path, reason)` for the
/// ones that fail.
pub fn check_models(paths: &[PathBuf]) -> Vec<(PathBuf, String)> {
    use std::io::Write;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_models.py");
    let mut child = std::process::Command::new("python3")
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    {
        let mut stdin = child.stdin.take().unwrap();
        for p in paths {
            writeln!(stdin, "{}", p.display()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the checker script failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut seen = 0;
    let mut failures = Vec::new();
    for line in text.lines() {
        seen += 1;
        if let Some(rest) = line.strip_prefix("FAIL ") {
            let (p, why) = rest.split_once('\t').unwrap_or((rest, ""));
            failures.push((PathBuf::from(p), why.to_string()));
        }
    }
    assert_eq!(seen, paths.len(), "the checker did not answer for every model");
    failures
}

/// True when a graph (or a body) holds a NaN in a constant or attribute
/// tensor: NaN != NaN, so such graphs never compare structurally equal to
/// themselves.
pub fn has_nan(g: &sharc_ir::Graph) -> bool {
    fn t_nan(t: &sharc_ir::Tensor) -> bool {
        t.to_f64_vec().is_some_and(|v| v.iter().any(|x| x.is_nan()))
    }
    g.node_ids().any(|id| {
        let op = &g.node(id).op;
        let in_attrs = match op {
            sharc_ir::Op::Constant(t) => t_nan(t),
            _ => op.attrs().values().any(|a| match a {
                sharc_ir::Attr::Tensor(t) => t_nan(t),
                sharc_ir::Attr::Tensors(ts) => ts.iter().any(t_nan),
                sharc_ir::Attr::Float(f) => f.is_nan(),
                sharc_ir::Attr::Floats(fs) => fs.iter().any(|f| f.is_nan()),
                _ => false,
            }),
        };
        in_attrs || op.subgraphs().iter().any(|b| has_nan(b))
    })
}

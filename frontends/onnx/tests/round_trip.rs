//! import → export → import is the identity (structurally) on the whole
//! node suite, and every export passes onnx's full checker.

mod common;

use sharc_onnx::{ExportOptions, export_bytes, export_file, import_bytes, import_file};

#[test]
fn node_suite_round_trips_and_passes_the_checker() {
    let out = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut exported = Vec::new();
    for case in common::node_cases() {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let g = import_file(case.join("model.onnx")).unwrap_or_else(|e| panic!("{e}"));
        let bytes = match export_bytes(&g, &ExportOptions::default()) {
            Ok(b) => b,
            Err(e) => {
                failures.push(format!("{name}: export: {e}"));
                continue;
            }
        };
        let g2 = match import_bytes(&bytes, None) {
            Ok(g2) => g2,
            Err(e) => {
                failures.push(format!("{name}: re-import: {e}"));
                continue;
            }
        };
        if !g.structurally_equal(&g2) {
            // NaN constants never compare equal; for those, exporting again
            // must give the same bytes instead.
            let again = export_bytes(&g2, &ExportOptions::default()).unwrap();
            if !(common::has_nan(&g) && again == bytes) {
                failures.push(format!("{name}: the re-imported graph differs"));
            }
        }
        let path = out.path().join(format!("{name}.onnx"));
        export_file(&g, &path, &ExportOptions::default()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "export_file and export_bytes agree");
        exported.push((path, case.join("model.onnx")));
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));

    if !common::have_python_onnx() {
        eprintln!("python3 with onnx is not available: skipping the checker");
        return;
    }
    let paths: Vec<_> = exported.iter().map(|(p, _)| p.clone()).collect();
    let bad = common::check_models(&paths);
    // A failure is only acceptable when the original model fails too.
    let originals: Vec<_> = bad.iter().map(|(p, _)| exported.iter().find(|(e, _)| e == p).unwrap().1.clone()).collect();
    let orig_bad = common::check_models(&originals);
    let real: Vec<String> = bad
        .iter()
        .zip(&originals)
        .filter(|(_, o)| !orig_bad.iter().any(|(b, _)| b == *o))
        .map(|((p, why), _)| format!("{}: {why}", p.display()))
        .collect();
    assert!(real.is_empty(), "{} exports fail the checker:\n{}", real.len(), real.join("\n"));
    assert!(bad.len() <= 3, "too many cases whose originals fail the checker: {bad:?}");
}

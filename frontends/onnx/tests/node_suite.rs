//! Every model of ONNX's node test suite imports, and every data file of it
//! reads with the type the model declares.

mod common;

use sharc_onnx::{import_file, read_value_pb};

#[test]
fn every_node_suite_model_imports_and_its_data_reads() {
    let cases = common::node_cases();
    assert!(cases.len() > 1000, "expected the node suite, found {} cases", cases.len());
    let mut failures = Vec::new();
    let mut files = 0;
    for case in &cases {
        let g = match import_file(case.join("model.onnx")) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{}: {e}", case.display()));
                continue;
            }
        };
        let in_types: Vec<_> = g.input_values().iter().map(|&v| g.value_type(v).clone()).collect();
        let out_types: Vec<_> = g.outputs().iter().map(|o| g.value_type(o.value).clone()).collect();
        for set in common::data_sets(case) {
            for (prefix, types) in [("input", &in_types), ("output", &out_types)] {
                for (i, ty) in types.iter().enumerate() {
                    let p = set.join(format!("{prefix}_{i}.pb"));
                    let Ok(bytes) = std::fs::read(&p) else { continue };
                    files += 1;
                    if let Err(e) = read_value_pb(&bytes, ty) {
                        failures.push(format!("{}: {e}", p.display()));
                    }
                }
            }
        }
    }
    assert!(files > 3000, "read only {files} data files");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

//! Conformance of the Cranelift backend: ONNX's node test cases, compiled
//! for their data sets' shapes and compared with the reference interpreter
//! (the oracle), not with the stored outputs, so that this file tests the
//! backend and nothing else.
//!
//! Each case gets one status in `tests/cranelift_node_status.txt`:
//!
//! - `native`: every compute node compiled natively (fused kernels, GEMM,
//!   views, gathers; constant subgraphs folded) and the outputs match;
//! - `pass`: the outputs match, with some nodes run through the interpreter
//!   fallback;
//! - `fail`: a mismatch or an error;
//! - `unsupported`: the interpreter cannot run it either, or its inputs are
//!   not tensors, or it draws random numbers without a seed (Bernoulli,
//!   RandomUniformLike, ...): such a case must still compile and run with the
//!   interpreter's dtypes and shapes, but its values cannot be compared.
//!
//! The test fails when reality drifts from the file in either direction
//! (`SHARC_UPDATE_STATUS=1` rewrites it; `SHARC_NODE_FILTER=substring` runs
//! matching cases and prints each).
//!
//! Tolerance: rtol 1e-4 and atol 1e-6 against the interpreter. Kernels
//! reduce in four SIMD lanes and evaluate exp/log/tanh/erf with polynomials
//! accurate to a few ulp, so results differ from the interpreter's
//! sequential libm arithmetic in the last bits; 1e-4 relative is two orders
//! above that and three below any real bug.

mod common;

use rayon::prelude::*;
use sharc::ir::{Evaluator, Tensor, TensorData, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Native,
    Pass,
    Fail,
    Unsupported,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Native => "native",
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Unsupported => "unsupported",
        })
    }
}

const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-6;

fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= ATOL + RTOL * b.abs()
}

fn compare_tensor(got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.dtype() != want.dtype() || got.shape() != want.shape() {
        return Err(format!(
            "{}{:?} but the interpreter gives {}{:?}",
            got.dtype(),
            got.shape(),
            want.dtype(),
            want.shape()
        ));
    }
    if let (TensorData::F32(_) | TensorData::F64(_), Some(a), Some(b)) =
        (got.data(), got.to_f64_vec(), want.to_f64_vec())
    {
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            if !close(*x, *y) {
                return Err(format!("element {i}: {x} but the interpreter gives {y}"));
            }
        }
        return Ok(());
    }
    if got != want { Err("values differ from the interpreter's".into()) } else { Ok(()) }
}

fn compare(got: &Value, want: &Value) -> Result<(), String> {
    match (got, want) {
        (Value::Tensor(a), Value::Tensor(b)) => compare_tensor(a, b),
        _ if got == want => Ok(()),
        _ => Err(format!("got {} but the interpreter gives {}", got.describe(), want.describe())),
    }
}

/// The op type of a node that draws random numbers without a fixed seed,
/// if the graph has one. Its outputs differ from run to run (the backend and
/// the interpreter each draw their own), so only their dtypes and shapes can
/// be compared.
fn unseeded_random_op(g: &sharc::ir::Graph) -> Option<String> {
    use sharc::ir::Op;
    g.node_ids().find_map(|id| {
        let op = &g.node(id).op;
        let unseeded = match op {
            Op::RandomUniformLike(r) => r.seed.is_none(),
            Op::RandomNormalLike(r) => r.seed.is_none(),
            Op::RandomUniform(r) => r.seed.is_none(),
            Op::RandomNormal(r) => r.seed.is_none(),
            Op::Multinomial(r) => r.seed.is_none(),
            Op::Bernoulli(r) => r.seed.is_none(),
            _ => false,
        };
        unseeded.then(|| op.op_type().to_string())
    })
}

fn run_case(dir: &Path) -> (Status, String) {
    let g = match sharc::onnx::import_file(dir.join("model.onnx")) {
        Ok(g) => g,
        Err(e) => return (Status::Unsupported, format!("import: {e}")),
    };
    let random = unseeded_random_op(&g);
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    sets.sort();
    let interp = sharc::interp::Interpreter::new();
    let cl = sharc_cranelift::CraneliftEvaluator::default();
    let mut all_native = true;
    for set in sets {
        let input_types: Vec<_> = g.input_values().iter().map(|&v| g.value_type(v).clone()).collect();
        let files = common::numbered(&set, "input_");
        if files.len() != input_types.len() {
            return (Status::Unsupported, "input files do not match the graph".into());
        }
        let mut inputs = Vec::new();
        for (f, ty) in files.iter().zip(&input_types) {
            match sharc::onnx::read_value_pb(&std::fs::read(f).unwrap_or_default(), ty) {
                Ok(v) => inputs.push(v),
                Err(e) => return (Status::Unsupported, format!("reading {}: {e}", f.display())),
            }
        }
        let want = match interp.evaluate(&g, &inputs) {
            Ok(v) => v,
            Err(e) => return (Status::Unsupported, format!("interpreter: {e}")),
        };
        let tensors: Option<Vec<Tensor>> = inputs.iter().map(|v| v.as_tensor().cloned()).collect();
        let Some(tensors) = tensors else { return (Status::Unsupported, "non-tensor inputs".into()) };
        let compiled = match cl.prepare(&g, &tensors) {
            Ok(c) => c,
            Err(e) => return (Status::Fail, format!("compile: {e}")),
        };
        let st = compiled.stats();
        if st.fallback_nodes > 0 || st.fused_nodes + st.matmuls + st.other_native + st.view_nodes + st.folded_nodes == 0
        {
            all_native = false;
        }
        let got = match compiled.run(&tensors) {
            Ok(v) => v,
            Err(e) if e.unsupported => return (Status::Unsupported, e.to_string()),
            Err(e) => return (Status::Fail, e.to_string()),
        };
        for (i, (g_out, w)) in got.iter().zip(&want).enumerate() {
            if let (Some(_), Some(wt)) = (&random, w.as_tensor()) {
                if g_out.dtype() != wt.dtype() || g_out.shape() != wt.shape() {
                    return (
                        Status::Fail,
                        format!(
                            "output {i}: {}{:?} but the interpreter gives {}{:?}",
                            g_out.dtype(),
                            g_out.shape(),
                            wt.dtype(),
                            wt.shape()
                        ),
                    );
                }
                continue;
            }
            if let Err(e) = compare(&Value::Tensor(g_out.clone()), w) {
                return (Status::Fail, format!("output {i}: {e}"));
            }
        }
    }
    if let Some(op) = random {
        return (
            Status::Unsupported,
            format!("{op} without a seed: values are not reproducible; compiled, ran, dtypes and shapes match"),
        );
    }
    (if all_native { Status::Native } else { Status::Pass }, String::new())
}

fn status_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("cranelift_node_status.txt")
}

fn read_status() -> BTreeMap<String, Status> {
    let text = std::fs::read_to_string(status_path()).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let case = parts.next()?.to_string();
            let status = match parts.next()? {
                "native" => Status::Native,
                "pass" => Status::Pass,
                "fail" => Status::Fail,
                "unsupported" => Status::Unsupported,
                _ => return None,
            };
            Some((case, status))
        })
        .collect()
}

#[test]
fn cranelift_node_conformance() {
    let Some(shared) = common::shared_dir() else { return };
    let root = shared.join("onnx-node");
    let filter = std::env::var("SHARC_NODE_FILTER").ok();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", root.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("model.onnx").exists())
        .filter(|p| filter.as_deref().is_none_or(|f| p.file_name().unwrap_or_default().to_string_lossy().contains(f)))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases found under {}", root.display());
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let results: Vec<(String, Status, String)> = cases
        .par_iter()
        .map(|dir| {
            let name = dir.file_name().unwrap_or_default().to_string_lossy().to_string();
            match std::panic::catch_unwind(|| run_case(dir)) {
                Ok((s, why)) => (name, s, why),
                Err(p) => {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    (name, Status::Fail, format!("PANIC: {msg}"))
                }
            }
        })
        .collect();
    std::panic::set_hook(default_hook);
    let count = |s: Status| results.iter().filter(|r| r.1 == s).count();
    let panics = results.iter().filter(|r| r.2.starts_with("PANIC")).count();
    if filter.is_some() {
        for (name, status, why) in &results {
            println!("{status:<11} {name}  {}", common::one_line(why));
        }
    }
    println!(
        "cranelift onnx-node: {} native, {} pass (with interpreter fallback), {} fail, {} unsupported",
        count(Status::Native),
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Unsupported)
    );
    if std::env::var("SHARC_UPDATE_STATUS").as_deref() == Ok("1") && filter.is_none() {
        let mut text = String::from(
            "# Status of every ONNX node test case on the cranelift backend (tests/cranelift_node.rs), compared\n\
             # with the interpreter: native = every node compiled natively, pass = matches with interpreter fallback.\n\
             # Regenerate with SHARC_UPDATE_STATUS=1 cargo test --test cranelift_node; review the diff.\n",
        );
        for (name, status, why) in &results {
            if why.is_empty() {
                text.push_str(&format!("{name} {status}\n"));
            } else {
                text.push_str(&format!("{name} {status}  # {}\n", common::one_line(why)));
            }
        }
        std::fs::write(status_path(), text).expect("write status file");
        return;
    }
    let recorded = read_status();
    let mut drift = Vec::new();
    for (name, status, why) in &results {
        match recorded.get(name) {
            Some(r) if r == status => {}
            Some(r) => drift.push(format!("{name}: recorded {r}, now {status}  {}", common::one_line(why))),
            None => drift.push(format!("{name}: not in the status file, now {status}  {}", common::one_line(why))),
        }
    }
    assert_eq!(panics, 0, "{panics} cases panicked");
    assert!(
        drift.is_empty(),
        "{} cases drifted from tests/cranelift_node_status.txt (rerun with SHARC_UPDATE_STATUS=1 and review):\n{}",
        drift.len(),
        drift.join("\n")
    );
}

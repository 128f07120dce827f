//! Shape inference on real models and on ONNX's node test suite.
//!
//! Import keeps the types a model declares (graph outputs, `value_info`), so
//! each test first forgets every type that inference is responsible for and
//! checks what inference derives on its own from the graph inputs, weights
//! and constants.
//!
//! Run with `--nocapture` to see the counts.

use sharc_interp::Interpreter;
use sharc_ir::infer::Expr;
use sharc_ir::{Dim, Evaluator, Graph, GraphOutput, Op, Tensor, Type, Value, ValueRef, infer_shapes};
use sharc_onnx::import_file;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `$SHARC_SHARED_DIR`, or `shared/` beside the repository.
fn shared_dir() -> PathBuf {
    match std::env::var("SHARC_SHARED_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
}

/// Sets every computed value's type to unknown, in bodies too. Graph and
/// body inputs, weights and constants keep theirs: they are what inference
/// starts from.
fn forget_types(g: &mut Graph) {
    let ids: Vec<_> = g.node_ids().collect();
    for id in ids {
        let node = g.node_mut(id);
        if !node.op.is_source() {
            for o in &mut node.outputs {
                o.ty = Type::Unknown;
            }
        }
        for body in node.op.subgraphs_mut() {
            forget_types(body);
        }
    }
}

/// Every value of a graph and its bodies with its type, for counting.
fn all_types(g: &Graph, out: &mut Vec<(String, Type)>) {
    for id in g.node_ids() {
        let node = g.node(id);
        for o in &node.outputs {
            out.push((o.name.clone(), o.ty.clone()));
        }
        for body in node.op.subgraphs() {
            all_types(body, out);
        }
    }
}

fn has_fresh(t: &Type) -> bool {
    t.shape().is_some_and(|s| s.dims().iter().any(sharc_ir::infer::is_fresh_dim))
}

#[test]
fn real_models_get_exact_output_types() {
    let cases = [
        ("minilm-l6", "f32[batch, seq, 384]"),
        ("gpt-tiny", "f32[batch, seq, 256]"),
        ("moe-tiny", "f32[batch, seq, 256]"),
    ];
    for (name, expected) in cases {
        let path = shared_dir().join("models").join(format!("{name}.onnx"));
        let mut g = import_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for v in g.input_values() {
            assert_eq!(g.value_type(v).to_string(), "i64[batch, seq]", "{name}: input dims are named batch/seq");
        }

        // With the declared types kept, inference must agree with them.
        let mut declared = g.clone();
        infer_shapes(&mut declared).unwrap_or_else(|e| panic!("{name} (declared types kept): {e}"));

        forget_types(&mut g);
        let stats = infer_shapes(&mut g).unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = g.outputs()[0].value;
        assert_eq!(g.value_type(out).to_string(), expected, "{name}: output type");

        let mut types = Vec::new();
        all_types(&g, &mut types);
        let unknown: Vec<&String> = types.iter().filter(|(_, t)| t.dtype().is_none()).map(|(n, _)| n).collect();
        assert!(unknown.is_empty(), "{name}: values without a dtype: {unknown:?}");
        let ranked = types.iter().filter(|(_, t)| t.shape().is_some()).count();
        let fresh: Vec<String> = types.iter().filter(|(_, t)| has_fresh(t)).map(|(n, t)| format!("{n}: {t}")).collect();
        println!(
            "{name}: {} values, {} with known dtype, {ranked} with a fully known shape (fixed or symbolic dims), \
             {} of them free of invented symbols; inference stats: {stats}",
            types.len(),
            types.len() - unknown.len(),
            ranked - fresh.len(),
        );
        for f in fresh.iter().take(10) {
            println!("  with an invented dim: {f}");
        }
        // Dims that are all fixed or symbolic, and every one derived from the
        // inputs: no rank is lost anywhere in these models.
        assert_eq!(ranked, types.len(), "{name}: some values have an unknown rank");

        let before = g.clone();
        assert_eq!(infer_shapes(&mut g).unwrap().changed, 0, "{name}: a second run changes types");
        assert!(g.structurally_equal(&before));
    }
}

/// The value of an inferred dim once `batch` and `seq` are known; invented
/// symbols bind to the first size they are compared with and must keep it.
fn eval_dim(d: &Dim, batch: i64, seq: i64, bound: &mut HashMap<String, i64>, actual: i64) -> Result<(), String> {
    let mut e = Expr::from_dim(d);
    for (name, v) in [("batch", batch), ("seq", seq)] {
        e = e.subst(name, &Expr::int(v)).ok_or("overflow")?;
    }
    for (name, v) in bound.iter() {
        e = e.subst(name, &Expr::int(*v)).ok_or("overflow")?;
    }
    if let Some(v) = e.as_int() {
        return if v == actual { Ok(()) } else { Err(format!("{d} is {v}, the run gives {actual}")) };
    }
    // One invented symbol left alone: it names this size from now on.
    match e.as_sym() {
        Some(s) if s.starts_with(sharc_ir::infer::FRESH_PREFIX) => {
            bound.insert(s.to_string(), actual);
            Ok(())
        }
        // An expression over several invented symbols: nothing to check.
        _ if e.symbols().iter().all(|s| s.starts_with(sharc_ir::infer::FRESH_PREFIX)) => Ok(()),
        _ => Err(format!("{d} does not evaluate (left with {e})")),
    }
}

/// Runs the interpreter on a copy of `g` whose outputs are all of its values
/// and checks every inferred dim against the shapes the run produces.
fn check_against_run(g: &Graph, name: &str, batch: usize, seq: usize) {
    let mut all = g.clone();
    let mut outs = Vec::new();
    for id in g.node_ids() {
        if matches!(g.node(id).op, Op::Input) {
            continue;
        }
        for (p, o) in g.node(id).outputs.iter().enumerate() {
            outs.push(GraphOutput { name: o.name.clone(), value: ValueRef::new(id, p as u32) });
        }
    }
    *all.outputs_mut() = outs.clone();
    let vocab = if name == "minilm-l6" { 30522 } else { 256 };
    let inputs: Vec<Value> = g
        .input_values()
        .iter()
        .map(|&v| {
            let n = batch * seq;
            let data: Vec<i64> = match g.value_info(v).name.as_str() {
                "attention_mask" => vec![1; n],
                "token_type_ids" => vec![0; n],
                _ => (0..n as i64).map(|i| (i * 7919 + 13) % vocab).collect(),
            };
            Value::Tensor(Tensor::from_vec(&[batch, seq], data))
        })
        .collect();
    let values =
        Interpreter::new().evaluate(&all, &inputs).unwrap_or_else(|e| panic!("{name}: the interpreter fails: {e}"));
    let mut bound: HashMap<String, i64> = HashMap::new();
    let mut checked = 0;
    for (o, v) in outs.iter().zip(&values) {
        let ty = g.value_type(o.value);
        let Value::Tensor(t) = v else { continue };
        assert_eq!(
            ty.dtype(),
            Some(t.dtype()),
            "{name} at batch {batch}, seq {seq}: '{}' is {ty}, the run gives {}",
            o.name,
            t.dtype()
        );
        let shape = ty.shape().unwrap_or_else(|| panic!("{name}: '{}' has no shape", o.name));
        assert_eq!(shape.rank(), t.rank(), "{name}: '{}' is {ty}, the run gives {:?}", o.name, t.shape());
        for (d, &actual) in shape.dims().iter().zip(t.shape()) {
            if let Err(e) = eval_dim(d, batch as i64, seq as i64, &mut bound, actual as i64) {
                panic!("{name} at batch {batch}, seq {seq}: '{}' is {ty}, the run gives {:?}: {e}", o.name, t.shape());
            }
            checked += 1;
        }
    }
    println!("{name} at batch {batch}, seq {seq}: {checked} dims of {} values agree with the interpreter", outs.len());
}

/// Every inferred dim of the real models, symbolic ones evaluated at several
/// (batch, seq), matches what the reference interpreter computes.
#[test]
fn inferred_dims_match_the_interpreter() {
    for name in ["minilm-l6", "gpt-tiny", "moe-tiny"] {
        let path = shared_dir().join("models").join(format!("{name}.onnx"));
        let mut g = import_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        forget_types(&mut g);
        infer_shapes(&mut g).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (batch, seq) in [(1, 1), (2, 7), (3, 16)] {
            check_against_run(&g, name, batch, seq);
        }
    }
}

/// How an inferred type compares with a declared one.
#[derive(Debug, PartialEq)]
enum Agreement {
    /// Identical.
    Exact,
    /// Compatible; one side knows less somewhere (a symbol against a size,
    /// an unranked shape).
    Compatible,
    /// One side is unknown: nothing to compare.
    Unknown,
    /// Contradictory.
    Conflict(String),
}

fn compare(declared: &Type, inferred: &Type) -> Agreement {
    use Agreement::*;
    if declared == inferred {
        return Exact;
    }
    match (declared, inferred) {
        (Type::Unknown, _) | (_, Type::Unknown) => Unknown,
        (Type::Tensor(d), Type::Tensor(i)) => {
            if d.dtype != i.dtype {
                return Conflict(format!("dtype {} against {}", d.dtype, i.dtype));
            }
            match (&d.shape, &i.shape) {
                (Some(ds), Some(is)) => {
                    if ds.rank() != is.rank() {
                        return Conflict(format!("rank {} against {}", ds.rank(), is.rank()));
                    }
                    for (k, (a, b)) in ds.dims().iter().zip(is.dims()).enumerate() {
                        if let (Dim::Fixed(x), Dim::Fixed(y)) = (a, b)
                            && x != y
                        {
                            return Conflict(format!("dim {k} is {x} against {y}"));
                        }
                    }
                    Compatible
                }
                _ => Compatible,
            }
        }
        (Type::Sequence(d), Type::Sequence(i)) | (Type::Optional(d), Type::Optional(i)) => match compare(d, i) {
            Exact => Exact,
            other => other,
        },
        _ => Conflict("different kinds".to_string()),
    }
}

fn node_cases(dir: &Path) -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    cases.sort();
    cases
}

#[test]
fn node_suite_inferred_outputs_agree_with_declared_types() {
    let cases = node_cases(&shared_dir().join("onnx-node"));
    assert!(cases.len() > 1000, "expected the node suite, found {} cases", cases.len());
    let (mut exact, mut compatible, mut unknown, mut skipped) = (0usize, 0usize, 0usize, 0usize);
    let mut unknown_ops: std::collections::BTreeMap<String, usize> = Default::default();
    let mut conflicts = Vec::new();
    let mut errors = Vec::new();
    for case in &cases {
        let label = case.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Ok(mut g) = import_file(case.join("model.onnx")) else {
            skipped += 1;
            continue;
        };
        let declared: Vec<Type> = g.outputs().iter().map(|o| g.value_type(o.value).clone()).collect();
        forget_types(&mut g);
        if let Err(e) = infer_shapes(&mut g) {
            errors.push(format!("{label}: {e}"));
            continue;
        }
        for (o, d) in g.outputs().iter().zip(&declared) {
            let inferred = g.value_type(o.value);
            match compare(d, inferred) {
                Agreement::Exact => exact += 1,
                Agreement::Compatible => compatible += 1,
                Agreement::Unknown => {
                    unknown += 1;
                    let op = &g.node(o.value.node).op;
                    let name = match op {
                        Op::Opaque(x) if !x.domain.is_empty() => format!("{}.{}", x.domain, x.op_type),
                        _ => op.op_type().to_string(),
                    };
                    *unknown_ops.entry(name).or_default() += 1;
                }
                Agreement::Conflict(why) => {
                    conflicts.push(format!("{label} output '{}': declared {d}, inferred {inferred}: {why}", o.name))
                }
            }
        }
    }
    println!(
        "node suite: {} cases ({skipped} not imported), outputs: {exact} exact, {compatible} compatible, \
         {unknown} not comparable, {} conflicting; {} inference errors",
        cases.len(),
        conflicts.len(),
        errors.len()
    );
    println!("outputs inference leaves unknown, by producing op: {unknown_ops:?}");
    assert!(
        errors.is_empty() && conflicts.is_empty(),
        "{} inference errors:\n{}\n{} conflicts:\n{}",
        errors.len(),
        errors.join("\n"),
        conflicts.len(),
        conflicts.join("\n")
    );
}

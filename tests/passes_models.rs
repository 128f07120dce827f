//! The standard pipeline on the real exported models: it must shrink the
//! graph where the exporter spelled things out, and leave the interpreter's
//! outputs within 1e-5 of the unoptimised model's on the reference inputs.

mod common;

use sharc::data::read_safetensors;
use sharc::interp::Interpreter;
use sharc::ir::{Evaluator, Graph, GraphStats, Tensor, Value};
use sharc::passes::{PassContext, PassManager, Registry};

const PIPELINE: &str = "infer-shapes,canonicalize,cse,fold-constants,dce";

/// The first `rows` rows (along axis 0) of a reference input.
fn first_rows(t: &Tensor, rows: usize) -> Tensor {
    let shape = t.shape();
    let rows = rows.min(shape[0]);
    let per_row: usize = shape[1..].iter().product();
    let mut new_shape = shape.to_vec();
    new_shape[0] = rows;
    let v = t.to_i64_vec().expect("the models' inputs are integer token ids");
    Tensor::from_vec(&new_shape, v[..rows * per_row].to_vec())
}

/// Runs the pipeline on `name` and compares outputs before and after on
/// the first `rows` reference inputs. Returns the stats before and after.
fn optimise_and_compare(name: &str, rows: usize) -> Option<(GraphStats, GraphStats, f64)> {
    let shared = common::shared_dir()?;
    let model = shared.join("models").join(format!("{name}.onnx"));
    let data_path = shared.join("models").join(format!("{name}.data.safetensors"));
    let original: Graph = sharc::onnx::import_file(&model).unwrap_or_else(|e| panic!("{e}"));
    let data = read_safetensors(&data_path).unwrap_or_else(|e| panic!("{e}"));
    let inputs: Vec<Value> = original
        .input_values()
        .iter()
        .map(|&v| {
            let t = data.get(&original.value_info(v).name, &data_path).unwrap_or_else(|e| panic!("{e}"));
            Value::Tensor(first_rows(t, rows))
        })
        .collect();

    let mut g = original.clone();
    let mut pm = PassManager::from_pipeline(&Registry::with_standard_passes(), PIPELINE).unwrap();
    let report = pm.run(&mut g, &mut PassContext::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    println!("{name}:\n{}", report.statistics_table());

    let interp = Interpreter::new();
    let want = interp.evaluate(&original, &inputs).unwrap_or_else(|e| panic!("{name} before: {e}"));
    let got = interp.evaluate(&g, &inputs).unwrap_or_else(|e| panic!("{name} after: {e}"));
    assert_eq!(want.len(), got.len());
    let mut worst: f64 = 0.0;
    for ((o, w), a) in original.outputs().iter().zip(&want).zip(&got) {
        let (w, a) = (w.as_tensor().unwrap(), a.as_tensor().unwrap());
        assert_eq!(w.shape(), a.shape(), "{name}: output '{}' changed shape", o.name);
        let (w, a) = (w.to_f64_vec().unwrap(), a.to_f64_vec().unwrap());
        let d = w.iter().zip(&a).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        println!("{name}: output '{}' max abs diff after the pipeline = {d:.3e}", o.name);
        worst = worst.max(d);
    }
    assert!(worst <= 1e-5, "{name}: outputs moved by {worst:.3e} (> 1e-5)");
    Some((original.stats(), g.stats(), worst))
}

#[test]
fn standard_pipeline_keeps_minilm_l6_outputs() {
    let Some((before, after, _)) = optimise_and_compare("minilm-l6", 2) else { return };
    println!("minilm-l6: compute nodes {} -> {}", before.compute_nodes, after.compute_nodes);
    assert!(after.compute_nodes < before.compute_nodes);
    // The Erf GELU torch spells out in each of the 6 layers becomes one op.
    assert_eq!(after.op_histogram.get("Gelu"), Some(&6), "{:?}", after.op_histogram);
    assert_eq!(after.op_histogram.get("Erf"), None, "{:?}", after.op_histogram);
    // Folding never grows what is stored.
    assert!(after.unique_bytes <= before.unique_bytes);
}

#[test]
fn standard_pipeline_keeps_gpt_tiny_outputs() {
    let Some((before, after, _)) = optimise_and_compare("gpt-tiny", 2) else { return };
    println!("gpt-tiny: compute nodes {} -> {}", before.compute_nodes, after.compute_nodes);
    assert!(after.compute_nodes < before.compute_nodes);
    // gpt_new's tanh GELU is recognised, and Gemm is in MatMul + Add form.
    assert_eq!(after.op_histogram.get("Gelu"), Some(&6), "{:?}", after.op_histogram);
    assert_eq!(after.op_histogram.get("Gemm"), None, "{:?}", after.op_histogram);
    assert!(after.unique_bytes <= before.unique_bytes);
}

//! `sharc inspect`: what a model contains.

use sharc::Error;
use sharc::ir::{Graph, Type};
use std::path::PathBuf;

/// Arguments of `sharc inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// The model (.onnx or .sharc).
    model: PathBuf,
    /// How many op kinds to list (all with 0).
    #[arg(long, default_value_t = 0)]
    top: usize,
}

pub fn run(a: Args) -> Result<(), Error> {
    let g = sharc::model::load(&a.model)?;
    print!("{}", report(&g, a.top));
    Ok(())
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn type_str(t: &Type) -> String {
    t.to_string()
}

/// The text `sharc inspect` prints.
pub fn report(g: &Graph, top: usize) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let m = &g.meta;
    let _ = writeln!(s, "model {}", g.name);
    if !m.producer_name.is_empty() {
        let _ = writeln!(s, "  producer  {} {}", m.producer_name, m.producer_version);
    }
    if !m.opset_imports.is_empty() {
        let opsets: Vec<String> =
            m.opset_imports.iter().map(|(d, v)| format!("{}:{v}", if d.is_empty() { "ai.onnx" } else { d })).collect();
        let _ = writeln!(s, "  opsets    {}", opsets.join(", "));
    }
    let _ = writeln!(s, "inputs");
    for v in g.input_values() {
        let vi = g.value_info(v);
        let _ = writeln!(s, "  {}: {}", vi.name, type_str(&vi.ty));
    }
    let _ = writeln!(s, "outputs");
    for o in g.outputs() {
        let _ = writeln!(s, "  {}: {}", o.name, type_str(g.value_type(o.value)));
    }
    let st = g.stats();
    let _ = writeln!(s, "parameters");
    let _ =
        writeln!(s, "  unique  {:>12}  ({}, {} weights)", st.unique_params, human(st.unique_bytes), st.unique_weights);
    let _ = writeln!(s, "  total   {:>12}  ({})", st.total_params, human(st.total_bytes));
    if st.total_params > st.unique_params {
        let _ = writeln!(
            s,
            "  shared  {:.1}% of total parameters are reuses",
            100.0 * (1.0 - st.unique_params as f64 / st.total_params as f64)
        );
    }
    let _ = writeln!(s, "ops ({} nodes, {} compute)", st.nodes, st.compute_nodes);
    let mut ops: Vec<(&String, &usize)> = st.op_histogram.iter().collect();
    ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let n = if top == 0 { ops.len() } else { top.min(ops.len()) };
    for (op, count) in &ops[..n] {
        let _ = writeln!(s, "  {count:>6}  {op}");
    }
    if n < ops.len() {
        let _ = writeln!(s, "  ... {} more kinds", ops.len() - n);
    }
    if st.subgraphs > 0 {
        let bodies = if st.subgraphs == 1 { "body" } else { "bodies" };
        let _ = writeln!(s, "ops inside control flow ({} {bodies}, {} nodes)", st.subgraphs, st.subgraph_nodes);
        let mut ops: Vec<(&String, &usize)> = st.subgraph_op_histogram.iter().collect();
        ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (op, count) in ops.iter().take(if top == 0 { ops.len() } else { top }) {
            let _ = writeln!(s, "  {count:>6}  {op}");
        }
    }
    let _ = writeln!(s, "blocks");
    match sharc_passes::analysis::blocks::find_blocks(g) {
        Ok(an) => {
            for line in an.summary(g).lines() {
                let _ = writeln!(s, "  {line}");
            }
        }
        Err(e) => {
            let _ = writeln!(s, "  none: {e}");
        }
    }
    s
}

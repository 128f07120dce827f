//! Times ONNX import (and export) of a model.
//!
//! ```text
//! cargo run --release -p sharc-onnx --example import_time -- model.onnx [repeats]
//! ```
//!
//! The first import is "cold" in the sense that the process has touched
//! nothing yet (whether the file is in the OS page cache depends on what ran
//! before); the following ones are warm.

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: import_time <model.onnx> [repeats]");
        std::process::exit(2);
    };
    let repeats: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut times = Vec::new();
    let mut graph = None;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        match sharc_onnx::import_file(&path) {
            Ok(g) => graph = Some(g),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        times.push(t.elapsed());
    }
    let g = graph.expect("imported at least once");
    println!("{path}: {}", g.stats());
    println!("import: first {:?}, then {:?}", times[0], &times[1..]);
    let t = Instant::now();
    let bytes = sharc_onnx::export_bytes(&g, &sharc_onnx::ExportOptions::default()).expect("exports");
    println!("export to bytes: {:?} ({} bytes)", t.elapsed(), bytes.len());
}

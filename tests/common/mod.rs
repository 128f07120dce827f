//! Helpers shared by the integration tests: where the large data lives.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The shared data folder: `$SHARC_SHARED_DIR`, or `../shared` beside the
/// repository. Tests that need it fail with a clear message when it is
/// missing, unless `SHARC_ALLOW_MISSING_DATA=1` asks them to skip.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("SHARC_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("shared"),
    };
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("SHARC_ALLOW_MISSING_DATA").as_deref() == Ok("1") {
        eprintln!("skipping: shared data folder {} not found", dir.display());
        return None;
    }
    panic!(
        "shared data folder {} not found: set SHARC_SHARED_DIR to the folder holding models/ and onnx-node/ \
         (or SHARC_ALLOW_MISSING_DATA=1 to skip tests that need it)",
        dir.display()
    );
}

/// The `<prefix><n>.pb` files of a node-suite data folder, in numeric order
/// (`input_10` after `input_9`).
pub fn numbered(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut files: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    let idx = name.strip_prefix(prefix)?.strip_suffix(".pb")?.parse().ok()?;
                    Some((idx, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

/// The first line of a message, cut to 160 characters, for one-line status entries.
pub fn one_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    if line.chars().count() > 160 {
        format!("{}...", line.chars().take(160).collect::<String>())
    } else {
        line.to_string()
    }
}

/// Log-probabilities of a row of logits.
pub fn log_softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let s = x.iter().map(|v| (v - m).exp()).sum::<f64>().ln() + m;
    x.iter().map(|v| v - s).collect()
}

/// The index of the first largest value.
pub fn argmax(x: &[f64]) -> usize {
    (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b })
}

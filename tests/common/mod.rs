//! Helpers shared by the integration tests: where the large data lives.

#![allow(dead_code)]

use std::path::PathBuf;

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

//! Snapshot testing of passes, for your own passes as for sharc's.
//!
//! Everything in [`sharc_passes::testing`] (run a pipeline on IR text, get
//! the printed IR or a unified diff back, check numerics with the reference
//! interpreter), plus the same on ONNX files.
//!
//! ```
//! use sharc::testing::run_pipeline;
//!
//! let out = run_pipeline(
//!     "graph @g(%x: f32[batch, 4]) -> (%y) {
//!        %a = Identity(%x)
//!        %y = Relu(%a)
//!      }",
//!     "canonicalize",
//! );
//! // In a test: insta::assert_snapshot!(out);
//! assert_eq!(out, "graph @g(%x: f32[batch, 4]) -> (%y) {\n  %y = Relu(%x)\n}\n");
//! ```

pub use sharc_passes::testing::*;

use sharc_passes::Registry;
use std::path::Path;

/// Why a pipeline on a model file could not produce its output.
#[derive(Debug, thiserror::Error)]
pub enum ModelTestError {
    /// The model could not be loaded.
    #[error(transparent)]
    Load(#[from] crate::Error),
    /// The pipeline failed.
    #[error("{0}")]
    Pipeline(TestError),
}

/// Runs `pipeline` (standard passes) on a model file (`.onnx` or `.sharc`)
/// and returns the printed result. Panics with a readable message on error.
pub fn run_pipeline_on_file(path: impl AsRef<Path>, pipeline: &str) -> String {
    try_run_pipeline_on_file(path.as_ref(), pipeline, None).map(|o| o.after).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `pipeline` on a model file and returns a unified diff from the
/// printed model to the printed result. Panics with a readable message on error.
pub fn run_pipeline_diff_on_file(path: impl AsRef<Path>, pipeline: &str) -> String {
    try_run_pipeline_on_file(path.as_ref(), pipeline, None).map(|o| o.diff()).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `pipeline` on a model file with passes from `registry` (the standard
/// ones when `None`), returning the whole [`Outcome`] or the error.
pub fn try_run_pipeline_on_file(
    path: &Path,
    pipeline: &str,
    registry: Option<&Registry>,
) -> Result<Outcome, ModelTestError> {
    let g = crate::model::load(path)?;
    let test = PipelineTest::new(pipeline);
    let test = match registry {
        Some(r) => test.registry(r),
        None => test,
    };
    test.run_graph(g).map_err(ModelTestError::Pipeline)
}

//! The error type of the `sharc` facade and CLI.

use std::path::PathBuf;

/// Everything that can go wrong in a `sharc` command, with the file involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A data file (safetensors) is malformed or lacks a tensor.
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },
    /// The model could not be imported or exported.
    #[error(transparent)]
    Onnx(#[from] sharc_onnx::OnnxError),
    /// Running the model failed.
    #[error("running {}: {source}{}", model.display(), eval_hint(source))]
    Eval { model: PathBuf, source: sharc_ir::EvalError },
    /// A command-line option is wrong.
    #[error("{0}")]
    Usage(String),
}

/// What to do about an evaluation error, where the error alone does not say:
/// an op the backend lacks is not the user's mistake, and they need to know
/// that no input or option will make the run work.
fn eval_hint(e: &sharc_ir::EvalError) -> &'static str {
    if e.unsupported {
        "; this backend does not support this op or case (no input or option changes that): \
         check the op name and domain, or run the model with another ONNX runtime"
    } else {
        ""
    }
}

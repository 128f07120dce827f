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
    #[error("running {}: {source}", model.display())]
    Eval { model: PathBuf, source: sharc_ir::EvalError },
    /// A command-line option is wrong.
    #[error("{0}")]
    Usage(String),
}

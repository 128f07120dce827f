//! The backend's error type.

use thiserror::Error;

/// Why the MLIR backend could not lower, compile or run a graph. Every
/// variant names what it is about (node, op, symbol, stage) so that a user can
/// find the cause without a debugger.
#[derive(Debug, Error)]
pub enum MlirError {
    /// A symbolic dim of a graph input has no value in the `--shape` map.
    #[error(
        "input '{input}' has the symbolic dim '{symbol}', which needs a value: pass --shape {symbol}=N \
         (the MLIR backend compiles for static shapes)"
    )]
    MissingDim {
        /// The graph input.
        input: String,
        /// The symbol without a value.
        symbol: String,
    },
    /// A node's op (or one of its forms) has no lowering.
    #[error("node '{node}' ({op}): {message}")]
    Unsupported {
        /// The node's label.
        node: String,
        /// The op type.
        op: String,
        /// What is not supported.
        message: String,
    },
    /// The graph is malformed or its types could not be made static.
    #[error("{0}")]
    Graph(String),
    /// MLIR rejected the module or a pass failed.
    #[error("MLIR {stage} failed: {message}")]
    Mlir {
        /// Which step: parsing, a pass pipeline, the JIT.
        stage: String,
        /// MLIR's diagnostics.
        message: String,
    },
    /// Running the compiled code failed (wrong inputs, missing driver...).
    #[error("{0}")]
    Run(String),
}

impl MlirError {
    pub(crate) fn unsupported(node: &str, op: &str, message: impl Into<String>) -> MlirError {
        MlirError::Unsupported { node: node.to_string(), op: op.to_string(), message: message.into() }
    }
}

//! The error type of ONNX import and export.

use std::path::Path;

/// Why a model could not be imported or exported.
///
/// Every variant names the file (or `<memory>` for byte buffers) and, where
/// one is involved, the node or tensor, so that a user can find the problem
/// in a model viewer. Messages end with what to do where there is something
/// sensible to suggest.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The file could not be read or written.
    #[error("{file}: {what}: {source}")]
    Io {
        /// The file involved.
        file: String,
        /// What was being done ("cannot read the model", ...).
        what: String,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a well-formed ONNX protobuf message.
    #[error(
        "{file}: not a readable ONNX {what}: {message}. The file may be truncated or corrupted, or not be an ONNX \
         file at all; re-export or re-download it"
    )]
    Decode {
        /// The file involved.
        file: String,
        /// Which message was expected (model, tensor, sequence...).
        what: String,
        /// The decoder's complaint.
        message: String,
    },
    /// A node could not be imported (or exported).
    #[error("{file}: node '{node}' ({op}) in {graph}: {message}")]
    Node {
        /// The file involved.
        file: String,
        /// The node's name, or its first output's name when it has none.
        node: String,
        /// The node's op type (with its domain when not the default one).
        op: String,
        /// Which graph the node is in ("graph 'main'", or a body path).
        graph: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor (initializer, attribute value, data file) is malformed.
    #[error("{file}: tensor '{tensor}': {message}")]
    Tensor {
        /// The file involved.
        file: String,
        /// The tensor's name (may be empty for attribute tensors).
        tensor: String,
        /// What is wrong.
        message: String,
    },
    /// A model- or graph-level problem (missing values, duplicate names,
    /// cycles, unsupported features).
    #[error("{file}: {message}")]
    Model {
        /// The file involved.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// The imported graph broke a structural invariant of the IR.
    #[error("{file}: the imported graph is not well formed: {message}")]
    Verify {
        /// The file involved.
        file: String,
        /// The verifier's message.
        message: String,
    },
    /// The graph cannot be written as ONNX.
    #[error("cannot export to {file}: {message}")]
    Export {
        /// The target file.
        file: String,
        /// What is wrong.
        message: String,
    },
}

impl OnnxError {
    pub(crate) fn io(file: &Path, what: &str, source: std::io::Error) -> OnnxError {
        OnnxError::Io { file: file.display().to_string(), what: what.to_string(), source }
    }

    pub(crate) fn model(file: &str, message: impl Into<String>) -> OnnxError {
        OnnxError::Model { file: file.to_string(), message: message.into() }
    }

    pub(crate) fn tensor(file: &str, tensor: &str, message: impl Into<String>) -> OnnxError {
        OnnxError::Tensor { file: file.to_string(), tensor: tensor.to_string(), message: message.into() }
    }

    pub(crate) fn decode(file: &str, what: &str, message: impl ToString) -> OnnxError {
        OnnxError::Decode { file: file.to_string(), what: what.to_string(), message: message.to_string() }
    }

    pub(crate) fn export(file: &str, message: impl Into<String>) -> OnnxError {
        OnnxError::Export { file: file.to_string(), message: message.into() }
    }
}

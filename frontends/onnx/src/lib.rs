//! # sharc-onnx
//!
//! ONNX import and export for sharc.
//!
//! - [`import_file`] / [`import_bytes`] read a model into a [`sharc_ir::Graph`]:
//!   every tensor type, external data (memory-mapped, never copied), symbolic
//!   dims, control flow with captured outer values, and opsets from 1 to the
//!   newest, normalised to one recent form per op (see the `import::legacy`
//!   module docs for the list of rewrites).
//! - [`read_value_pb`] / [`read_tensor_pb`] read the `.pb` data files of
//!   ONNX test cases.
//!
//! Malformed input is reported as an [`OnnxError`] that names the file, the
//! node or tensor and what is wrong; it never panics.

mod error;
mod external;
mod import;
mod tensor;
mod types;
mod value;

pub use error::OnnxError;
pub use import::{PRESERVED_FUNCTION, PRESERVED_TRAINING_INFO, import_bytes, import_file};
pub use tensor::{tensor_from_proto, tensor_to_proto};
pub use value::{read_tensor_pb, read_value_pb};

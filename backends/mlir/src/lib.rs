//! # sharc-mlir
//!
//! sharc's MLIR backend. A graph is specialised to static shapes
//! ([`specialise`]), lowered to MLIR's `func` + `linalg`/`tensor`/`arith`/
//! `math` dialects as text ([`lower`]), and, with the cargo feature `mlir`
//! (which needs LLVM/MLIR 22), compiled through melior: fused on tensors,
//! bufferized, lowered to LLVM and run by MLIR's ExecutionEngine on the CPU
//! ([`compile`]), or mapped to GPU kernels and run on an NVIDIA GPU
//! ([`cuda`]; the CUDA driver itself with the feature `cuda`).
//!
//! Without the feature the crate still lowers graphs to MLIR text, so the
//! lowering is built and tested on machines without LLVM.

mod error;
pub mod lower;
pub mod specialise;

#[cfg(feature = "mlir")]
pub mod compile;
#[cfg(feature = "mlir")]
pub mod cuda;
pub mod gpu_map;
pub mod nvvm;

#[cfg(feature = "mlir")]
pub use compile::{CpuExecutable, MlirCpu};
pub use error::MlirError;
pub use lower::{ArgKind, ArgSpec, Lowered, lower};
pub use specialise::{Specialised, parse_dims, specialise};

use sharc_ir::Graph;
use std::collections::BTreeMap;

/// Specialises `graph` to the given dim values and lowers it to MLIR text.
pub fn lower_graph(graph: &Graph, dims: &BTreeMap<String, u64>) -> Result<Lowered, MlirError> {
    let sp = specialise(graph, dims)?;
    lower(&sp)
}

//! # sharc
//!
//! A compiler for ONNX models: import a model into a typed graph IR, transform
//! it with passes (including parameter-sharing passes that shrink trained
//! models), and run or export the result.
//!
//! This crate is the facade: it re-exports the IR ([`ir`]), the ONNX frontend
//! ([`onnx`]), the reference interpreter ([`interp`]) and the passes
//! ([`passes`]), adds model loading and saving by file extension ([`model`]),
//! safetensors data files ([`data`]) and snapshot-test helpers for passes
//! ([`testing`]), and hosts the `sharc` command-line tool.
//!
//! ```no_run
//! let g = sharc::model::load(std::path::Path::new("model.onnx"))?;
//! println!("{}", g.stats());
//! # Ok::<(), sharc::Error>(())
//! ```

pub mod data;
mod error;
pub mod io;
pub mod model;
pub mod testing;

pub use error::Error;
pub use sharc_interp as interp;
pub use sharc_ir as ir;
pub use sharc_mlir as mlir;
pub use sharc_onnx as onnx;
pub use sharc_passes as passes;

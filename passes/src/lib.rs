//! # sharc-passes
//!
//! Passes transform a [`sharc_ir::Graph`]. This crate holds the [`Pass`]
//! trait and, as they land, the pass manager, the registry and pipeline
//! syntax, the standard passes, equality-saturation rewriting and the
//! parameter-sharing passes.

pub mod analysis;
mod pass;
pub mod sharing;

pub use pass::{Pass, PassContext, PassError, PassOutcome};

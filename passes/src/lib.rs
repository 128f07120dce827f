//! # sharc-passes
//!
//! Passes transform a [`sharc_ir::Graph`]. This crate holds the framework
//! and the standard passes:
//!
//! - [`Pass`]: the trait every pass implements, with [`PassContext`] for
//!   what it may use and report.
//! - [`Patch`]: how a pass changes a graph — record new nodes, replaced
//!   values and removed nodes, then apply them at once, checked.
//! - [`Registry`] and [`pass_options!`]: passes by name with typed options,
//!   so that pipeline text such as `infer-shapes,cse,fold-constants,dce`
//!   builds them ([`pipeline`] has the syntax).
//! - [`PassManager`]: runs a pipeline with verification after every pass,
//!   timing, statistics, IR printing and diffs, and bisection.
//! - [`standard`]: `infer-shapes`, `canonicalize`, `cse`, `fold-constants`
//!   and `dce`.
//! - [`testing`]: snapshot-test helpers (`run_pipeline(src, "cse")`).
//! - [`analysis`]: repeated-block detection, calibration runs and the
//!   similarity measures the sharing passes build on.
//! - [`sharing`]: the parameter-sharing passes (`tie-layers`,
//!   `fold-blocks`, `crash`), their compression reports and the methods
//!   `sharc compress` runs.
//!
//! # Writing a pass
//!
//! 1. Declare its options with [`pass_options!`] (or use [`NoOptions`]).
//! 2. Implement [`Pass`]: read the graph, record changes in a [`Patch`],
//!    apply it, report counters with [`PassContext::count`], and return
//!    whether anything changed.
//! 3. Implement [`RegisteredPass`] (name, one-line summary, constructor) and
//!    call [`Registry::register`]. The pass now works in pipelines, in the
//!    pass manager and, through the facade, in `sharc opt`.
//! 4. Test it with [`testing::run_pipeline`] and `insta::assert_snapshot!`.
//!
//! `examples/custom_pass.rs` in the repository does all four.

pub mod analysis;
mod manager;
pub mod options;
mod pass;
pub mod patch;
pub mod pipeline;
mod registry;
pub mod sharing;
pub mod standard;
pub mod testing;

pub use manager::{Instrumentation, ManagerError, PassFilter, PassManager, PassRecord, RunReport};
pub use options::{NoOptions, OptionDoc, OptionError, PassOptions};
pub use pass::{Pass, PassContext, PassError, PassOutcome};
pub use patch::{Applied, Patch, PatchError, PatchNode, PatchValue};
pub use pipeline::{Pipeline, PipelineError, parse_pipeline};
pub use registry::{DuplicatePass, PassInfo, RegisteredPass, Registry};
pub use standard::{STANDARD_PASSES, register_standard};

//! # sharc-cranelift
//!
//! sharc's CPU backend. A graph is *specialised* to concrete input shapes
//! (every symbolic dim bound), its constant subgraphs (shape arithmetic) are
//! evaluated once, and the rest becomes an execution plan:
//!
//! - **fused kernels**: chains of elementwise, broadcast and row-reduction ops
//!   (bias + activation, GELU in its `Erf` spelling, LayerNormalization,
//!   Softmax, residual adds, scaling, `Where` masks, decomposed RMS norms) are
//!   grouped by a fusion planner and compiled into one Cranelift function
//!   each, vectorised with `f32x4` and with scalar tails;
//! - **matrix products** (`MatMul`, `Gemm`) run over strided views on a
//!   packed product with an AVX2+FMA microkernel whose constant right
//!   operands (weights) are packed once at compile time, a tied weight once
//!   for all its layers (the `gemm` crate where AVX2/FMA is missing), so
//!   transposes and broadcast batch dims cost no copy (an
//!   activation's batch dims fold into the rows of one product with a shared
//!   weight), and the elementwise chain that follows runs as an epilogue on
//!   each block of rows while that block is still in cache;
//! - **views**: `Reshape`, `Transpose`, `Squeeze`, `Unsqueeze`, `Flatten`,
//!   `Identity` of f32 data are re-interpretations of a buffer, not copies,
//!   and so is each piece of a `Split`;
//! - **fallback**: every other op runs through the reference interpreter's
//!   [`sharc_interp::ops::run_op`], so every model the interpreter runs also
//!   runs here.
//!
//! A memory planner places every intermediate in one arena by liveness, and
//! weights are used where they lie (a memory-mapped, aligned weight is never
//! copied; a weight shared by N nodes through one [`WeightId`] exists once).
//!
//! The same plan can be written as an object file with a C entry point (see
//! [`aot`]), for models whose every node compiles natively.
//!
//! ```
//! use sharc_ir::*;
//! let mut g = Graph::new("g");
//! let x = g.add_input("x", Type::tensor(DType::F32, vec![Dim::sym("n"), Dim::Fixed(4)]));
//! let y = g.add_op(Op::Unary(UnaryOp::Relu), &[x], Type::Unknown);
//! g.add_output("y", y);
//! let mut opts = sharc_cranelift::CompileOptions::default();
//! opts.dims.insert("n".into(), 2);
//! let exe = sharc_cranelift::compile(&g, &opts).unwrap();
//! let out = exe.run(&[Tensor::from_vec(&[2, 4], vec![-1.0f32, 2.0, -3.0, 4.0, 5.0, -6.0, 7.0, -8.0])]).unwrap();
//! assert_eq!(out[0], Tensor::from_vec(&[2, 4], vec![0.0f32, 2.0, 0.0, 4.0, 5.0, 0.0, 7.0, 0.0]));
//! ```
//!
//! [`WeightId`]: sharc_ir::WeightId

pub mod aot;
mod cache;
mod codegen;
mod exec;
mod kernel;
mod math;
mod matmul;
mod memory;
mod packed_gemm;
mod plan;
mod specialize;
#[cfg(test)]
mod tests;

pub use cache::{CraneliftEvaluator, graph_fingerprint};
pub use exec::{Compiled, ProfileEntry};
pub use matmul::GemmImpl;
pub use plan::PlanStats;

use std::collections::BTreeMap;

/// How to compile a graph.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Values of the graph's symbolic dims (`batch`, `seq`). Every symbol
    /// that appears in an input's shape must be bound.
    pub dims: BTreeMap<String, usize>,
    /// Group elementwise and reduction chains into fused kernels. Off, each
    /// op that compiles natively gets a kernel of its own (for measuring
    /// what fusion buys).
    pub fuse: bool,
    /// Which GEMM runs matrix products.
    pub gemm: GemmImpl,
    /// Worker threads for kernels and GEMM; `None` uses rayon's global pool
    /// size (the number of cores).
    pub threads: Option<usize>,
    /// Record the time of every step, for [`Compiled::profile`].
    pub profile: bool,
}

impl Default for CompileOptions {
    fn default() -> CompileOptions {
        CompileOptions { dims: BTreeMap::new(), fuse: true, gemm: GemmImpl::default(), threads: None, profile: false }
    }
}

/// Why a graph could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// A symbolic dim of an input has no value in [`CompileOptions::dims`].
    #[error("input '{input}' has symbolic dim '{dim}' with no value: bind it (e.g. --shape {dim}=N)")]
    MissingDim {
        /// The graph input.
        input: String,
        /// The unbound symbol.
        dim: String,
    },
    /// The graph or one of its nodes is malformed or unsupported.
    #[error("{0}")]
    Graph(String),
    /// Evaluating a constant subgraph at compile time failed.
    #[error("evaluating constant node '{node}' ({op}) at compile time: {message}")]
    Fold {
        /// The node.
        node: String,
        /// Its op.
        op: String,
        /// What went wrong.
        message: String,
    },
    /// Cranelift rejected generated code (a bug in this crate).
    #[error("code generation for {what}: {message}")]
    Codegen {
        /// What was being generated.
        what: String,
        /// Cranelift's message.
        message: String,
    },
    /// Ahead-of-time output needs every node to compile natively.
    #[error("object output: {0}")]
    Aot(String),
}

/// Compiles `graph` for the input shapes that `opts.dims` implies.
pub fn compile(graph: &sharc_ir::Graph, opts: &CompileOptions) -> Result<Compiled, CompileError> {
    let start = std::time::Instant::now();
    let spec = specialize::specialize(graph, &opts.dims)?;
    let plan = plan::build(&spec, opts)?;
    let compiled = exec::Compiled::new(spec, plan, opts, start)?;
    Ok(compiled)
}

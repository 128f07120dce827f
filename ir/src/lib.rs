//! # sharc-ir
//!
//! The graph IR every part of sharc works on. Frontends produce a [`Graph`],
//! passes transform it, backends consume it. Nothing here knows about ONNX
//! protobufs, egg, Cranelift or MLIR.
//!
//! The pieces:
//!
//! - [`Graph`]: nodes on a petgraph `StableDiGraph`; a value is an output port
//!   of a node ([`ValueRef`]).
//! - [`Op`]: typed ops with parsed attributes, plus [`Op::Opaque`] for ops
//!   sharc does not model.
//! - [`WeightStore`]: parameters, owned or memory-mapped. Several nodes
//!   referring to one [`WeightId`] *is* parameter sharing, and
//!   [`Graph::stats`] reports total and unique parameters.
//! - [`DType`], [`Shape`], [`Dim`], [`Type`]: types with symbolic dims.
//! - [`Tensor`]: dense run-time data.
//! - [`verify()`]: structural invariants.
//! - [`infer_shapes`]: shape and type inference for every op, with symbolic
//!   dims kept symbolic and shape computations tracked by value.
//! - [`Evaluator`]: the interface every backend implements.
//!
//! A small graph built by hand:
//!
//! ```
//! use sharc_ir::*;
//! let mut g = Graph::new("tiny");
//! let x = g.add_input("x", Type::tensor(DType::F32, vec![Dim::sym("batch"), Dim::Fixed(2)]));
//! let w = g.add_weight(Weight::from_tensor("w", Tensor::from_vec(&[2, 2], vec![1.0f32, 0.0, 0.0, 1.0])));
//! let y = g.add_op(Op::MatMul, &[x, w], Type::Unknown);
//! g.add_output("y", y);
//! verify(&g).unwrap();
//! assert_eq!(g.stats().unique_params, 4);
//! ```

pub mod attr;
pub mod dtype;
pub mod eval;
pub mod graph;
pub mod infer;
pub mod op;
pub mod shape;
pub mod tensor;
pub mod text;
pub mod verify;
pub mod weights;

pub use attr::{Attr, AttrError, AttrReader, AttrValue, AttrWriter, Attrs, OpAttrs};
pub use dtype::DType;
pub use eval::{EvalError, Evaluator, Value};
pub use graph::{
    Edge, Graph, GraphError, GraphOutput, GraphStats, Metadata, Node, NodeId, Subgraph, ValueInfo, ValueRef,
};
pub use infer::{Fact, InferError, InferStats, SymTensor, infer_node, infer_node_facts, infer_shapes};
pub use op::{BinaryOp, Op, Opaque, Reduce, ReduceKind, UnaryOp, VariadicOp};
pub use shape::{Dim, Shape, TensorType, Type};
pub use tensor::{Array, Element, Tensor, TensorData};
pub use text::{ParseError, parse, parse_with_weights, print};
pub use verify::{VerifyError, verify};
pub use weights::{MappedFile, Weight, WeightData, WeightId, WeightStore};

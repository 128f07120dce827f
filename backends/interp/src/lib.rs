//! # sharc-interp
//!
//! The reference interpreter: one function per op, following ONNX semantics
//! exactly, with no optimisation that could blur what an op means. It is the
//! numeric oracle every other backend and every pass is tested against.
//!
//! ```
//! use sharc_ir::*;
//! use sharc_interp::Interpreter;
//! let mut g = Graph::new("g");
//! let x = g.add_input("x", Type::tensor(DType::F32, vec![Dim::Fixed(2)]));
//! let y = g.add_op(Op::Unary(UnaryOp::Neg), &[x], Type::Unknown);
//! g.add_output("y", y);
//! let out = Interpreter::new().evaluate(&g, &[Value::Tensor(Tensor::from_vec(&[2], vec![1.0f32, -2.0]))]).unwrap();
//! assert_eq!(out[0], Value::Tensor(Tensor::from_vec(&[2], vec![-1.0f32, 2.0])));
//! ```

mod exec;
pub mod ops;
pub mod util;

pub use exec::{Interpreter, run_graph};
pub use sharc_ir::Evaluator;

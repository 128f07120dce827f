//! Running graphs: run-time values and the [`Evaluator`] trait.
//!
//! Every backend implements [`Evaluator`]. Passes that need activations (for
//! calibration) take a `&dyn Evaluator`, so a fast backend can serve large
//! models while the reference interpreter serves tests.

use crate::{Graph, Tensor};
use std::fmt;

/// A run-time value: what flows along an edge when the graph runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A tensor.
    Tensor(Tensor),
    /// An ONNX sequence.
    Sequence(Vec<Value>),
    /// An ONNX optional.
    Optional(Option<Box<Value>>),
}

impl Value {
    /// The tensor, if this is one.
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// The tensor, if this is one.
    pub fn into_tensor(self) -> Option<Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// A short description (`f32[2, 3]`, `seq(4)`, `optional(none)`).
    pub fn describe(&self) -> String {
        match self {
            Value::Tensor(t) => format!("{}{:?}", t.dtype(), t.shape()),
            Value::Sequence(s) => format!("seq({})", s.len()),
            Value::Optional(None) => "optional(none)".to_string(),
            Value::Optional(Some(v)) => format!("optional({})", v.describe()),
        }
    }
}

impl From<Tensor> for Value {
    fn from(t: Tensor) -> Value {
        Value::Tensor(t)
    }
}

/// Why a graph could not be evaluated. Names the node and op where possible.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalError {
    /// Name of the failing node's first output (or the node name).
    pub node: Option<String>,
    /// The failing op.
    pub op: Option<String>,
    /// What went wrong.
    pub message: String,
    /// True when the failure is "this op or case is not supported" rather
    /// than "the input is invalid".
    pub unsupported: bool,
}

impl EvalError {
    /// An error about invalid input or state.
    pub fn new(message: impl Into<String>) -> EvalError {
        EvalError { node: None, op: None, message: message.into(), unsupported: false }
    }

    /// An error saying that something is not supported.
    pub fn unsupported(message: impl Into<String>) -> EvalError {
        EvalError { node: None, op: None, message: message.into(), unsupported: true }
    }

    /// Attaches the node and op, unless already set by a nested evaluation.
    pub fn at(mut self, node: &str, op: &str) -> EvalError {
        if self.node.is_none() {
            self.node = Some(node.to_string());
            self.op = Some(op.to_string());
        }
        self
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.node, &self.op) {
            (Some(n), Some(o)) => write!(f, "node '{n}' ({o}): {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for EvalError {}

/// Something that can run a graph.
pub trait Evaluator {
    /// A short name for reports ("interp", "cranelift").
    fn name(&self) -> &str;

    /// Runs `graph` on `inputs` (one per graph input, in order) and returns
    /// one value per graph output, in order.
    fn evaluate(&self, graph: &Graph, inputs: &[Value]) -> Result<Vec<Value>, EvalError>;
}

//! One module per family of ops. Each family's `run` returns `None` for ops
//! it does not handle, so the dispatcher can ask them in turn and a new family
//! is one line here.

pub mod cast;
pub mod control;
pub mod elementwise;
pub mod extra;
pub mod movement;
pub mod nn;
pub mod reduce;

use sharc_ir::{EvalError, Op, Type, Value};

/// What an op implementation may know about the node it runs for.
pub struct OpContext<'a> {
    /// The node's label, for messages.
    pub node_name: &'a str,
    /// How many outputs the node declares (ops with optional outputs, such
    /// as `MaxPool` or `Dropout`, compute only what is asked for).
    pub num_outputs: usize,
    /// The declared output types (may be [`Type::Unknown`]).
    pub output_types: &'a [Type],
}

/// The result of a family's `run`: `None` when the op is not in the family.
pub type OpResult = Option<Result<Vec<Value>, EvalError>>;

type Family = fn(&Op, &[Option<Value>], &OpContext) -> OpResult;

const FAMILIES: &[Family] =
    &[elementwise::run, cast::run, reduce::run, movement::run, nn::run, extra::run, control::run];

/// Runs one op on its inputs (`None` for an empty optional input).
pub fn run_op(op: &Op, inputs: &[Option<Value>], cx: &OpContext) -> Result<Vec<Value>, EvalError> {
    for family in FAMILIES {
        if let Some(result) = family(op, inputs, cx) {
            return result;
        }
    }
    Err(EvalError::unsupported(match op {
        Op::Opaque(o) if !o.domain.is_empty() => {
            format!("the interpreter does not implement {}.{}", o.domain, o.op_type)
        }
        _ => format!("the interpreter does not implement {}", op.op_type()),
    }))
}

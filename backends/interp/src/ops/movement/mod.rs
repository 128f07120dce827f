//! Family `movement` of the interpreter's ops.

use super::{OpContext, OpResult};
use sharc_ir::{Op, Value};

/// Runs the op if it belongs to this family.
pub fn run(_op: &Op, _inputs: &[Option<Value>], _cx: &OpContext) -> OpResult {
    None
}

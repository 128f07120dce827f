//! Control flow (ops with graph-valued attributes), sequences and optionals.
//!
//! A body graph reads values of the enclosing graph through *captures*: the
//! owning node lists the captured values as trailing inputs, and every body
//! has one capture input per trailing input, in the same order (see
//! [`crate::Graph::captures`]). This keeps the data flow explicit, so passes
//! such as DCE see that a body keeps an outer value alive.

use crate::{DType, Subgraph, Type, attr_struct};

attr_struct! {
    /// Runs one of two bodies depending on a boolean.
    pub struct If {
        else_branch: Subgraph = "else_branch";
        then_branch: Subgraph = "then_branch";
    }
}

attr_struct! {
    /// Runs a body while a condition holds and a trip count is not reached.
    pub struct Loop {
        body: Subgraph = "body";
    }
}

attr_struct! {
    /// Runs a body over slices of its scan inputs, carrying state.
    pub struct Scan {
        body: Subgraph = "body";
        num_scan_inputs: i64 = "num_scan_inputs";
        scan_input_axes: Option<Vec<i64>> = "scan_input_axes";
        scan_input_directions: Option<Vec<i64>> = "scan_input_directions";
        scan_output_axes: Option<Vec<i64>> = "scan_output_axes";
        scan_output_directions: Option<Vec<i64>> = "scan_output_directions";
    }
}

attr_struct! {
    /// Applies a body to each element of the input sequences.
    pub struct SequenceMap {
        body: Subgraph = "body";
    }
}

attr_struct! {
    /// An empty sequence of tensors of `dtype` (f32 by default).
    pub struct SequenceEmpty {
        dtype: Option<DType> = "dtype";
    }
}

attr_struct! {
    /// Splits a tensor into a sequence.
    pub struct SplitToSequence {
        axis: i64 = "axis", default 0;
        keepdims: bool = "keepdims", default true;
    }
}

attr_struct! {
    /// Concatenates (or stacks, with `new_axis`) a sequence.
    pub struct ConcatFromSequence {
        axis: i64 = "axis";
        new_axis: bool = "new_axis", default false;
    }
}

attr_struct! {
    /// Wraps a value (or, with no input, nothing of `type`) in an optional.
    pub struct OptionalOf {
        ty: Option<Type> = "type";
    }
}

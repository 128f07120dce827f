//! Reductions over axes.

use crate::attr_struct;

/// What a `Reduce*` op computes over the reduced axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    LogSum,
    LogSumExp,
    SumSquare,
}

/// Every reduction kind with its ONNX op name.
pub const REDUCE_KINDS: [(ReduceKind, &str); 10] = [
    (ReduceKind::Sum, "ReduceSum"),
    (ReduceKind::Mean, "ReduceMean"),
    (ReduceKind::Max, "ReduceMax"),
    (ReduceKind::Min, "ReduceMin"),
    (ReduceKind::Prod, "ReduceProd"),
    (ReduceKind::L1, "ReduceL1"),
    (ReduceKind::L2, "ReduceL2"),
    (ReduceKind::LogSum, "ReduceLogSum"),
    (ReduceKind::LogSumExp, "ReduceLogSumExp"),
    (ReduceKind::SumSquare, "ReduceSumSquare"),
];

impl ReduceKind {
    /// The kind for an ONNX op name.
    pub fn from_onnx(op_type: &str) -> Option<ReduceKind> {
        REDUCE_KINDS.iter().find(|(_, n)| *n == op_type).map(|(k, _)| *k)
    }

    /// The ONNX op name.
    pub fn onnx_name(self) -> &'static str {
        REDUCE_KINDS.iter().find(|(k, _)| *k == self).map(|(_, n)| *n).expect("every kind is listed")
    }
}

attr_struct! {
    /// The attributes shared by every `Reduce*` op. The axes are the optional
    /// second input (older opsets' `axes` attribute is turned into that input
    /// on import).
    pub struct ReduceAttrs {
        /// Keep reduced axes as size-1 dims.
        keepdims: bool = "keepdims", default true;
        /// With no axes given: return the input unchanged instead of reducing all axes.
        noop_with_empty_axes: bool = "noop_with_empty_axes", default false;
    }
}

/// A reduction: what it computes and how it treats axes.
#[derive(Clone, Debug, PartialEq)]
pub struct Reduce {
    /// What it computes.
    pub kind: ReduceKind,
    /// How it treats axes.
    pub attrs: ReduceAttrs,
}

attr_struct! {
    /// `ArgMax` and `ArgMin`: the index of the extreme value along one axis.
    pub struct ArgReduce {
        axis: i64 = "axis", default 0;
        keepdims: bool = "keepdims", default true;
        /// Report the last index among equal extremes instead of the first.
        select_last_index: bool = "select_last_index", default false;
    }
}

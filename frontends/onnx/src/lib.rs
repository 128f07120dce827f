//! # sharc-onnx
//!
//! ONNX import and export for sharc.
//!
//! - [`import_file`] / [`import_bytes`] read a model into a [`sharc_ir::Graph`]:
//!   every tensor type, weights memory-mapped from the model file or its
//!   external data files (never copied), symbolic dims, control flow with
//!   captured outer values, and opsets from 1 to the newest, normalised to one
//!   recent form per op (see below).
//! - [`export_file`] / [`export_bytes`] write a graph back: one initializer
//!   per (possibly shared) weight, optional external data, atomic writes, and
//!   the smallest opset (at least [`MIN_EXPORT_OPSET`]) valid for every node.
//! - [`read_value_pb`] / [`read_tensor_pb`] read the `.pb` data files of
//!   ONNX test cases.
//!
//! Malformed input is reported as an [`OnnxError`] that names the file, the
//! node or tensor and what is wrong; it never panics.
//!
//! ## Import choices
//!
//! - Initializers of the main graph become weights (shared by every node
//!   that uses them); initializers of bodies become `Constant` nodes.
//! - Graph inputs that are also initializers (written by old exporters) are
//!   imported as weights, not inputs: such an input has a default and is
//!   almost always a parameter.
//! - A dim with neither a size nor a name gets a fresh symbol `unk__N`,
//!   numbered in import order and avoiding the model's own names.
//! - Sparse tensors (initializers, `Constant`'s `sparse_value`, attributes)
//!   are densified (up to 1 GiB).
//! - An empty output name in the middle of a node's outputs gets a fresh
//!   name; trailing empty outputs are dropped (except for Split and
//!   control-flow ops, whose output count matters).
//! - Map, sparse-tensor and opaque *types* are not supported: they are an
//!   error on graph inputs and outputs and are dropped from value hints.
//! - Ops of other domains, unmodelled ops and calls of model-local functions
//!   become [`sharc_ir::Op::Opaque`]; local functions are kept (serialized,
//!   under [`PRESERVED_FUNCTION`]) and written back on export.
//!
//! ## Opset normalisation
//!
//! The IR follows recent opsets. Older forms are rewritten on import (and
//! anything that cannot be rewritten faithfully is an error naming the node):
//!
//! | op (opset) | rewrite |
//! | --- | --- |
//! | every op (< 7) | `consumed_inputs` dropped (it was a memory hint) |
//! | Add, Sub, Mul, Div, Pow, And, Or, Xor, Equal, Greater, Less (< 7) | `broadcast`/`axis` → numpy broadcasting, unsqueezing B when `axis` is not the suffix position |
//! | Gemm (< 7) | `broadcast` dropped (C broadcasts since opset 7) |
//! | PRelu (< 7) | per-channel 1-D slope unsqueezed to broadcast against N,C,... |
//! | Concat (< 4) | missing `axis` → 1 (the old default) |
//! | Softmax, LogSoftmax, Hardmax (< 13) | coerce-to-2D semantics: kept when the axis is the last one, else Flatten → op → Reshape(Shape(x)) |
//! | BatchNormalization (< 14) | `spatial`, `is_test` dropped; `spatial=0` and used training outputs rejected |
//! | Dropout (< 12) | `ratio` → input, `is_test` dropped; opset < 10 float mask → CastLike of the bool mask |
//! | Cast (< 6) | `to` as a type name → type code |
//! | Clip (< 11) | `min`/`max` → inputs of the input's type |
//! | Pad (< 11) | `pads`/`paddings`, `value` → inputs |
//! | Slice (< 10) | `starts`/`ends`/`axes` → inputs |
//! | TopK (< 10) | `k` → input |
//! | Split (< 13) | `split` → input; (< 18) without split sizes → `num_outputs` = number of outputs |
//! | Squeeze, Unsqueeze (< 13) | `axes` → input |
//! | Reduce* (< 18; ReduceSum < 13) | `axes` → input |
//! | Reshape (< 5) | `shape` → input |
//! | Tile (< 6) | `tiles`/`axis` inputs → `repeats` (constant-folded when possible) |
//! | Upsample (all) | → Resize with asymmetric coordinates (and floor rounding for nearest) |
//! | Resize (< 11) | empty `roi` input added; asymmetric coordinates, floor rounding for nearest |
//! | Scatter (all) | → ScatterElements |
//! | LpPool, GlobalLpPool (< 2) | float `p` → int |
//! | RNN, GRU, LSTM (< 7) | `output_sequence` dropped (the outputs say what is wanted) |
//! | GridSample (< 20) | modes `bilinear`/`bicubic` → `linear`/`cubic` |
//! | DFT (< 20) | `axis` attribute (default 1) → input |
//! | Scan (< 9) | batched Scan → a Scan over the batch whose body runs the unbatched Scan |
//! | GroupNormalization (< 21) | per-group `scale`/`bias` repeated to per-channel ones |
//! | RoiAlign (< 16) | `coordinate_transformation_mode` = `output_half_pixel`, the old behaviour (the new default shifts by half a pixel) |
//!
//! Two differences are left as they are because they only change rounding:
//! GroupNormalization before 21 and Range before 27 computed in the input's
//! precision, where the new definitions use f32 for 16-bit floats.

mod error;
mod export;
mod external;
mod import;
#[rustfmt::skip]
mod opsets;
mod scan;
mod tensor;
#[cfg(test)]
mod testutil;
mod types;
mod value;

pub use error::OnnxError;
pub use export::{ExportOptions, MIN_EXPORT_OPSET, export_bytes, export_file};
pub use import::{PRESERVED_FUNCTION, PRESERVED_TRAINING_INFO, import_bytes, import_file};
pub use tensor::{tensor_from_proto, tensor_to_proto};
pub use value::{read_tensor_pb, read_value_pb};

/// The newest default-domain opset whose op definitions sharc knows (from
/// the onnx release its schema table was generated from). A model stamped
/// with a newer opset still imports, reading each op by its newest known
/// definition; see [`newer_opset_warning`].
pub const NEWEST_KNOWN_OPSET: i64 = opsets::LATEST_OPSET;

/// A warning to show when `g` was imported from a model stamped with a
/// default-domain opset newer than [`NEWEST_KNOWN_OPSET`]: an op whose
/// definition changed after that opset would be read by its older meaning.
/// Import does not refuse such models (most newer opsets change few ops);
/// tools should print this so the user knows to check the outputs.
pub fn newer_opset_warning(g: &sharc_ir::Graph) -> Option<String> {
    let (_, v) = g.meta.opset_imports.iter().find(|(d, _)| d.is_empty() || d == "ai.onnx")?;
    (*v > NEWEST_KNOWN_OPSET).then(|| {
        format!(
            "the model uses ONNX opset {v}, newer than the newest sharc knows ({NEWEST_KNOWN_OPSET}); ops are read by \
             their opset-{NEWEST_KNOWN_OPSET} definitions, so compare outputs with onnxruntime, or re-export the \
             model at opset {NEWEST_KNOWN_OPSET} or lower"
        )
    })
}

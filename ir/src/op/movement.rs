//! Ops that move, select or re-shape data without arithmetic.

use crate::{DType, Tensor, attr_struct, string_enum};

attr_struct! {
    /// Reinterprets the input with the shape given as the second input.
    pub struct Reshape {
        /// A 0 in the target shape means a 0-sized dim instead of "copy this dim".
        allowzero: bool = "allowzero", default false;
    }
}

attr_struct! {
    /// Permutes dims; without `perm`, reverses them.
    pub struct Transpose {
        perm: Option<Vec<i64>> = "perm";
    }
}

attr_struct! {
    /// Collapses the dims before and after `axis` into a 2-D tensor.
    pub struct Flatten {
        axis: i64 = "axis", default 1;
    }
}

attr_struct! {
    /// Joins inputs along an axis.
    pub struct Concat {
        axis: i64 = "axis";
    }
}

attr_struct! {
    /// Splits along an axis, by the sizes in the optional second input or into
    /// `num_outputs` (nearly) equal parts.
    pub struct Split {
        axis: i64 = "axis", default 0;
        num_outputs: Option<i64> = "num_outputs";
    }
}

attr_struct! {
    /// Picks slices along `axis` by index.
    pub struct Gather {
        axis: i64 = "axis", default 0;
    }
}

attr_struct! {
    /// Picks single elements along `axis`, indices shaped like the output.
    pub struct GatherElements {
        axis: i64 = "axis", default 0;
    }
}

attr_struct! {
    /// Gathers slices addressed by index tuples.
    pub struct GatherND {
        batch_dims: i64 = "batch_dims", default 0;
    }
}

string_enum! {
    /// How scatter ops combine an update with the existing element.
    pub enum ScatterReduction {
        None = "none",
        Add = "add",
        Mul = "mul",
        Max = "max",
        Min = "min",
    }
}

attr_struct! {
    /// Writes updates at indices along `axis` (the inverse of GatherElements).
    pub struct ScatterElements {
        axis: i64 = "axis", default 0;
        reduction: ScatterReduction = "reduction", default ScatterReduction::None;
    }
}

attr_struct! {
    /// Writes update slices at index tuples (the inverse of GatherND).
    pub struct ScatterND {
        reduction: ScatterReduction = "reduction", default ScatterReduction::None;
    }
}

string_enum! {
    /// How `Pad` fills the new border.
    pub enum PadMode {
        Constant = "constant",
        Reflect = "reflect",
        Edge = "edge",
        Wrap = "wrap",
    }
}

attr_struct! {
    /// Pads with the amounts in the second input (older opsets' `pads`
    /// attribute becomes that input on import).
    pub struct Pad {
        mode: PadMode = "mode", default PadMode::Constant;
    }
}

attr_struct! {
    /// The input's shape as a 1-D int64 tensor, optionally a slice of it.
    pub struct ShapeOf {
        start: i64 = "start", default 0;
        end: Option<i64> = "end";
    }
}

attr_struct! {
    /// A tensor of the shape given by the input, filled with `value`.
    pub struct ConstantOfShape {
        /// A one-element tensor; defaults to a float zero.
        value: Option<Tensor> = "value";
    }
}

attr_struct! {
    /// `start, start+delta, ...` up to `limit`.
    pub struct Range {
        /// Precision of the intermediate accumulation (opset 27).
        stash_type: i64 = "stash_type", default 1;
    }
}

attr_struct! {
    /// Identity at inference; with `training_mode` input true, random masking.
    pub struct Dropout {
        seed: Option<i64> = "seed";
    }
}

attr_struct! {
    /// Keeps the upper or lower triangle of the last two dims.
    pub struct Trilu {
        upper: bool = "upper", default true;
    }
}

attr_struct! {
    /// One-hot encoding of indices along a new axis.
    pub struct OneHot {
        axis: i64 = "axis", default -1;
    }
}

attr_struct! {
    /// The k largest (or smallest) elements along an axis, with their indices.
    pub struct TopK {
        axis: i64 = "axis", default -1;
        largest: bool = "largest", default true;
        sorted: bool = "sorted", default true;
    }
}

attr_struct! {
    /// Keeps the slices along `axis` whose condition is true.
    pub struct Compress {
        axis: Option<i64> = "axis";
    }
}

attr_struct! {
    /// Reverses each batch entry's first `sequence_lens[i]` steps.
    pub struct ReverseSequence {
        batch_axis: i64 = "batch_axis", default 1;
        time_axis: i64 = "time_axis", default 0;
    }
}

string_enum! {
    /// Element order of `DepthToSpace`/`SpaceToDepth`.
    pub enum DepthSpaceMode {
        /// depth-column-row.
        Dcr = "DCR",
        /// column-row-depth.
        Crd = "CRD",
    }
}

attr_struct! {
    /// Moves depth into spatial blocks.
    pub struct DepthToSpace {
        blocksize: i64 = "blocksize";
        mode: DepthSpaceMode = "mode", default DepthSpaceMode::Dcr;
    }
}

attr_struct! {
    /// Moves spatial blocks into depth.
    pub struct SpaceToDepth {
        blocksize: i64 = "blocksize";
        mode: DepthSpaceMode = "mode", default DepthSpaceMode::Dcr;
    }
}

attr_struct! {
    /// A 2-D tensor with ones on the k-th diagonal.
    pub struct EyeLike {
        dtype: Option<DType> = "dtype";
        k: i64 = "k", default 0;
    }
}

attr_struct! {
    /// Cumulative sum or product along the axis given as second input.
    pub struct Cumulative {
        exclusive: bool = "exclusive", default false;
        reverse: bool = "reverse", default false;
    }
}

attr_struct! {
    /// Unique elements (or slices along `axis`) with indices and counts.
    pub struct Unique {
        axis: Option<i64> = "axis";
        sorted: bool = "sorted", default true;
    }
}

attr_struct! {
    /// Center crop or pad to the shape given as second input.
    pub struct CenterCropPad {
        axes: Option<Vec<i64>> = "axes";
    }
}

attr_struct! {
    /// Rearranges column blocks into an image (the inverse of im2col).
    pub struct Col2Im {
        dilations: Option<Vec<i64>> = "dilations";
        pads: Option<Vec<i64>> = "pads";
        strides: Option<Vec<i64>> = "strides";
    }
}

string_enum! {
    /// How `TensorScatter` places updates in a KV cache.
    pub enum TensorScatterMode {
        Linear = "linear",
        Circular = "circular",
    }
}

attr_struct! {
    /// Writes updates into a cache tensor at per-batch write positions.
    pub struct TensorScatter {
        axis: i64 = "axis", default -2;
        mode: TensorScatterMode = "mode", default TensorScatterMode::Linear;
    }
}

string_enum! {
    /// Interpolation of `Resize`.
    pub enum ResizeMode {
        Nearest = "nearest",
        Linear = "linear",
        Cubic = "cubic",
    }
}

string_enum! {
    /// How `Resize` maps output coordinates to input coordinates.
    pub enum CoordinateTransform {
        HalfPixel = "half_pixel",
        HalfPixelSymmetric = "half_pixel_symmetric",
        PytorchHalfPixel = "pytorch_half_pixel",
        AlignCorners = "align_corners",
        Asymmetric = "asymmetric",
        TfCropAndResize = "tf_crop_and_resize",
        TfHalfPixelForNearest = "tf_half_pixel_for_nearest",
    }
}

string_enum! {
    /// How `Resize` in nearest mode rounds a coordinate.
    pub enum NearestMode {
        RoundPreferFloor = "round_prefer_floor",
        RoundPreferCeil = "round_prefer_ceil",
        Floor = "floor",
        Ceil = "ceil",
    }
}

string_enum! {
    /// How `Resize` honours the aspect ratio when `sizes` is given.
    pub enum KeepAspectRatio {
        Stretch = "stretch",
        NotLarger = "not_larger",
        NotSmaller = "not_smaller",
    }
}

attr_struct! {
    /// Resizes with the `roi`, `scales` or `sizes` inputs. The deprecated
    /// `Upsample` is imported as this op.
    pub struct Resize {
        antialias: bool = "antialias", default false;
        axes: Option<Vec<i64>> = "axes";
        coordinate_transformation_mode: CoordinateTransform = "coordinate_transformation_mode", default CoordinateTransform::HalfPixel;
        cubic_coeff_a: f32 = "cubic_coeff_a", default -0.75;
        exclude_outside: bool = "exclude_outside", default false;
        extrapolation_value: f32 = "extrapolation_value", default 0.0;
        keep_aspect_ratio_policy: KeepAspectRatio = "keep_aspect_ratio_policy", default KeepAspectRatio::Stretch;
        mode: ResizeMode = "mode", default ResizeMode::Nearest;
        nearest_mode: NearestMode = "nearest_mode", default NearestMode::RoundPreferFloor;
    }
}

//! Neural-network ops: linear algebra, convolution, pooling, normalisation,
//! attention, recurrent layers and losses.

use crate::{DType, attr_struct, string_enum};

attr_struct! {
    /// General matrix multiply: `alpha * A' * B' + beta * C`.
    pub struct Gemm {
        alpha: f32 = "alpha", default 1.0;
        beta: f32 = "beta", default 1.0;
        trans_a: bool = "transA", default false;
        trans_b: bool = "transB", default false;
    }
}

string_enum! {
    /// How convolution and pooling ops pad when `pads` is not given.
    pub enum AutoPad {
        NotSet = "NOTSET",
        SameUpper = "SAME_UPPER",
        SameLower = "SAME_LOWER",
        Valid = "VALID",
    }
}

attr_struct! {
    /// N-D convolution (also used by `ConvInteger` and `QLinearConv`).
    pub struct Conv {
        auto_pad: AutoPad = "auto_pad", default AutoPad::NotSet;
        dilations: Option<Vec<i64>> = "dilations";
        group: i64 = "group", default 1;
        kernel_shape: Option<Vec<i64>> = "kernel_shape";
        pads: Option<Vec<i64>> = "pads";
        strides: Option<Vec<i64>> = "strides";
    }
}

attr_struct! {
    /// Transposed convolution.
    pub struct ConvTranspose {
        auto_pad: AutoPad = "auto_pad", default AutoPad::NotSet;
        dilations: Option<Vec<i64>> = "dilations";
        group: i64 = "group", default 1;
        kernel_shape: Option<Vec<i64>> = "kernel_shape";
        output_padding: Option<Vec<i64>> = "output_padding";
        output_shape: Option<Vec<i64>> = "output_shape";
        pads: Option<Vec<i64>> = "pads";
        strides: Option<Vec<i64>> = "strides";
    }
}

attr_struct! {
    /// Deformable convolution.
    pub struct DeformConv {
        dilations: Option<Vec<i64>> = "dilations";
        group: i64 = "group", default 1;
        kernel_shape: Option<Vec<i64>> = "kernel_shape";
        offset_group: i64 = "offset_group", default 1;
        pads: Option<Vec<i64>> = "pads";
        strides: Option<Vec<i64>> = "strides";
    }
}

attr_struct! {
    /// Max pooling, optionally with the argmax indices as second output.
    pub struct MaxPool {
        auto_pad: AutoPad = "auto_pad", default AutoPad::NotSet;
        ceil_mode: bool = "ceil_mode", default false;
        dilations: Option<Vec<i64>> = "dilations";
        kernel_shape: Vec<i64> = "kernel_shape";
        pads: Option<Vec<i64>> = "pads";
        storage_order: i64 = "storage_order", default 0;
        strides: Option<Vec<i64>> = "strides";
    }
}

attr_struct! {
    /// Average pooling.
    pub struct AveragePool {
        auto_pad: AutoPad = "auto_pad", default AutoPad::NotSet;
        ceil_mode: bool = "ceil_mode", default false;
        count_include_pad: bool = "count_include_pad", default false;
        dilations: Option<Vec<i64>> = "dilations";
        kernel_shape: Vec<i64> = "kernel_shape";
        pads: Option<Vec<i64>> = "pads";
        strides: Option<Vec<i64>> = "strides";
    }
}

attr_struct! {
    /// Lp-norm pooling.
    pub struct LpPool {
        auto_pad: AutoPad = "auto_pad", default AutoPad::NotSet;
        ceil_mode: bool = "ceil_mode", default false;
        dilations: Option<Vec<i64>> = "dilations";
        kernel_shape: Vec<i64> = "kernel_shape";
        p: i64 = "p", default 2;
        pads: Option<Vec<i64>> = "pads";
        strides: Option<Vec<i64>> = "strides";
    }
}

attr_struct! {
    /// Lp-norm over all spatial dims.
    pub struct GlobalLpPool {
        p: i64 = "p", default 2;
    }
}

attr_struct! {
    /// Max pooling over regions of interest.
    pub struct MaxRoiPool {
        pooled_shape: Vec<i64> = "pooled_shape";
        spatial_scale: f32 = "spatial_scale", default 1.0;
    }
}

attr_struct! {
    /// Scatters pooled values back to their argmax positions.
    pub struct MaxUnpool {
        kernel_shape: Vec<i64> = "kernel_shape";
        pads: Option<Vec<i64>> = "pads";
        strides: Option<Vec<i64>> = "strides";
    }
}

attr_struct! {
    /// Batch normalisation with running statistics.
    pub struct BatchNormalization {
        epsilon: f32 = "epsilon", default 1e-5;
        momentum: f32 = "momentum", default 0.9;
        training_mode: bool = "training_mode", default false;
    }
}

attr_struct! {
    /// Normalisation per instance and channel.
    pub struct InstanceNormalization {
        epsilon: f32 = "epsilon", default 1e-5;
    }
}

attr_struct! {
    /// Normalisation over the trailing dims from `axis`, with scale and bias.
    pub struct LayerNormalization {
        axis: i64 = "axis", default -1;
        epsilon: f32 = "epsilon", default 1e-5;
        /// Precision of the statistics (an ONNX dtype code, 1 = f32).
        stash_type: i64 = "stash_type", default 1;
    }
}

attr_struct! {
    /// Normalisation over groups of channels.
    pub struct GroupNormalization {
        epsilon: f32 = "epsilon", default 1e-5;
        num_groups: i64 = "num_groups";
        stash_type: i64 = "stash_type", default 1;
    }
}

attr_struct! {
    /// Root-mean-square normalisation over the trailing dims from `axis`.
    pub struct RMSNormalization {
        axis: i64 = "axis", default -1;
        epsilon: f32 = "epsilon", default 1e-5;
        stash_type: i64 = "stash_type", default 1;
    }
}

attr_struct! {
    /// Divides by the Lp norm along an axis.
    pub struct LpNormalization {
        axis: i64 = "axis", default -1;
        p: i64 = "p", default 2;
    }
}

attr_struct! {
    /// Zero mean, unit variance over `axes`.
    pub struct MeanVarianceNormalization {
        axes: Vec<i64> = "axes", default vec![0, 2, 3];
    }
}

attr_struct! {
    /// Local response normalisation across channels.
    pub struct LRN {
        alpha: f32 = "alpha", default 1e-4;
        beta: f32 = "beta", default 0.75;
        bias: f32 = "bias", default 1.0;
        size: i64 = "size";
    }
}

attr_struct! {
    /// `Softmax`, `LogSoftmax` and `Hardmax` along one axis.
    pub struct AxisAttr {
        axis: i64 = "axis", default -1;
    }
}

attr_struct! {
    /// Einstein summation.
    pub struct Einsum {
        equation: String = "equation";
    }
}

attr_struct! {
    /// Scaled dot-product attention with optional masks, caches and grouped heads.
    pub struct Attention {
        is_causal: bool = "is_causal", default false;
        kv_num_heads: Option<i64> = "kv_num_heads";
        left_window_size: i64 = "left_window_size", default -1;
        q_num_heads: Option<i64> = "q_num_heads";
        qk_matmul_output_mode: i64 = "qk_matmul_output_mode", default 0;
        right_window_size: i64 = "right_window_size", default -1;
        scale: Option<f32> = "scale";
        softcap: f32 = "softcap", default 0.0;
        softmax_precision: Option<i64> = "softmax_precision";
    }
}

attr_struct! {
    /// Rotary position embedding.
    pub struct RotaryEmbedding {
        interleaved: bool = "interleaved", default false;
        num_heads: Option<i64> = "num_heads";
        rotary_embedding_dim: i64 = "rotary_embedding_dim", default 0;
    }
}

attr_struct! {
    /// `SwiGLU`: `x1 * swish(x0)` over the two halves of the input.
    pub struct SwiGlu {
        alpha: f32 = "alpha", default 1.0;
    }
}

attr_struct! {
    /// Linear attention with a recurrent state.
    pub struct LinearAttention {
        chunk_size: i64 = "chunk_size", default 64;
        kv_num_heads: i64 = "kv_num_heads";
        q_num_heads: i64 = "q_num_heads";
        scale: f32 = "scale", default 0.0;
        update_rule: String = "update_rule", default "gated_delta".to_string();
    }
}

attr_struct! {
    /// Causal depthwise convolution carrying its state across calls.
    pub struct CausalConvWithState {
        activation: String = "activation", default "none".to_string();
    }
}

string_enum! {
    /// Direction of a recurrent layer.
    pub enum RnnDirection {
        Forward = "forward",
        Reverse = "reverse",
        Bidirectional = "bidirectional",
    }
}

attr_struct! {
    /// The attributes of `RNN`, `GRU` and `LSTM`.
    pub struct Recurrent {
        activation_alpha: Option<Vec<f32>> = "activation_alpha";
        activation_beta: Option<Vec<f32>> = "activation_beta";
        activations: Option<Vec<String>> = "activations";
        clip: Option<f32> = "clip";
        direction: RnnDirection = "direction", default RnnDirection::Forward;
        hidden_size: Option<i64> = "hidden_size";
        layout: i64 = "layout", default 0;
        /// GRU only.
        linear_before_reset: Option<bool> = "linear_before_reset";
        /// LSTM only.
        input_forget: Option<bool> = "input_forget";
    }
}

string_enum! {
    /// How a loss reduces over the batch.
    pub enum LossReduction {
        None = "none",
        Sum = "sum",
        Mean = "mean",
    }
}

attr_struct! {
    /// `NegativeLogLikelihoodLoss` and `SoftmaxCrossEntropyLoss`.
    pub struct Loss {
        ignore_index: Option<i64> = "ignore_index";
        reduction: LossReduction = "reduction", default LossReduction::Mean;
    }
}

attr_struct! {
    /// Samples the input at grid locations.
    pub struct GridSample {
        align_corners: bool = "align_corners", default false;
        mode: String = "mode", default "linear".to_string();
        padding_mode: String = "padding_mode", default "zeros".to_string();
    }
}

attr_struct! {
    /// A sampling grid from affine matrices.
    pub struct AffineGrid {
        align_corners: bool = "align_corners", default false;
    }
}

attr_struct! {
    /// Region-of-interest align.
    pub struct RoiAlign {
        coordinate_transformation_mode: String = "coordinate_transformation_mode", default "half_pixel".to_string();
        mode: String = "mode", default "avg".to_string();
        output_height: i64 = "output_height", default 1;
        output_width: i64 = "output_width", default 1;
        sampling_ratio: i64 = "sampling_ratio", default 0;
        spatial_scale: f32 = "spatial_scale", default 1.0;
    }
}

attr_struct! {
    /// Greedy non-maximum suppression of boxes.
    pub struct NonMaxSuppression {
        center_point_box: i64 = "center_point_box", default 0;
    }
}

attr_struct! {
    /// Quantises to an integer or narrow float type.
    pub struct QuantizeLinear {
        axis: i64 = "axis", default 1;
        block_size: i64 = "block_size", default 0;
        /// An ONNX dtype code; 0 means "from the zero point, else u8".
        output_dtype: i64 = "output_dtype", default 0;
        precision: i64 = "precision", default 0;
        saturate: bool = "saturate", default true;
    }
}

attr_struct! {
    /// Dequantises to a float type.
    pub struct DequantizeLinear {
        axis: i64 = "axis", default 1;
        block_size: i64 = "block_size", default 0;
        /// An ONNX dtype code; 0 means "the scale's type".
        output_dtype: i64 = "output_dtype", default 0;
    }
}

attr_struct! {
    /// Discrete Fourier transform.
    pub struct Dft {
        inverse: bool = "inverse", default false;
        onesided: bool = "onesided", default false;
    }
}

attr_struct! {
    /// Short-time Fourier transform.
    pub struct Stft {
        onesided: bool = "onesided", default true;
    }
}

attr_struct! {
    /// Hann, Hamming and Blackman windows.
    pub struct Window {
        output_datatype: DType = "output_datatype", default DType::F32;
        periodic: bool = "periodic", default true;
    }
}

attr_struct! {
    /// A mel filter bank matrix.
    pub struct MelWeightMatrix {
        output_datatype: DType = "output_datatype", default DType::F32;
    }
}

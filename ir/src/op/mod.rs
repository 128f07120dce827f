//! The op set.
//!
//! [`Op`] is a Rust enum of typed ops whose attributes were parsed on import
//! and follow the semantics of a recent ONNX opset (older forms are rewritten
//! by the frontend). Ops sharc does not model are kept as [`Op::Opaque`] with
//! their attributes, so that import → export loses nothing.
//!
//! Families of similar ops share one variant with an inner enum
//! ([`UnaryOp`], [`BinaryOp`], [`VariadicOp`], [`Reduce`]) because passes and
//! backends dispatch on the family first. Every other op is its own variant,
//! named as in ONNX and holding its attribute struct.

mod control;
mod elementwise;
mod misc;
mod movement;
mod nn;
mod reduce;

pub use control::*;
pub use elementwise::*;
pub use misc::*;
pub use movement::*;
pub use nn::*;
pub use reduce::*;

use crate::attr::{AttrError, AttrReader, AttrWriter, Attrs, OpAttrs};
use crate::{Attr, Subgraph, Tensor, WeightId};

/// An op kept as ONNX wrote it, because sharc does not model it.
#[derive(Clone, Debug, PartialEq)]
pub struct Opaque {
    /// The operator domain (`""` is the default ONNX domain).
    pub domain: String,
    /// The operator name.
    pub op_type: String,
    /// The attributes as written, including graph-valued ones.
    pub attrs: Attrs,
}

macro_rules! define_ops {
    (
        unit { $( $(#[$umeta:meta])* $unit:ident ),* $(,)? }
        with_attrs { $( $(#[$ameta:meta])* $var:ident ( $attrs:ty ) = $name:literal ),* $(,)? }
    ) => {
        /// An operation in the graph. See the [module docs](self).
        #[derive(Clone, Debug, PartialEq)]
        pub enum Op {
            /// A graph input (or a body's formal or captured input). Its name
            /// and type are the node's only output.
            Input,
            /// A stored parameter. Several nodes may refer to one weight: that
            /// is how shared parameters are expressed.
            Weight(WeightId),
            /// A literal tensor (ONNX `Constant`).
            Constant(Tensor),
            /// One-input elementwise ops.
            Unary(UnaryOp),
            /// Two-input broadcasting elementwise ops.
            Binary(BinaryOp),
            /// N-input broadcasting elementwise ops.
            Variadic(VariadicOp),
            /// `Reduce*` ops.
            Reduce(Reduce),
            $( $(#[$umeta])* $unit, )*
            $( $(#[$ameta])* $var($attrs), )*
            /// An op sharc does not model.
            Opaque(Opaque),
        }

        impl Op {
            /// Builds an op of the default ONNX domain from its name and attributes
            /// (already normalised to a recent opset). Returns `Ok(None)` when
            /// sharc does not model the op.
            pub fn from_onnx_default_domain(op_type: &str, attrs: Attrs) -> Result<Option<Op>, AttrError> {
                let mut r = AttrReader::new(attrs);
                let op = if let Some(u) = UnaryOp::from_onnx(op_type, &mut r) {
                    Op::Unary(u?)
                } else if let Some(b) = BinaryOp::from_onnx(op_type, &mut r) {
                    Op::Binary(b?)
                } else if let Some(v) = VariadicOp::from_onnx(op_type) {
                    Op::Variadic(v)
                } else if let Some(kind) = ReduceKind::from_onnx(op_type) {
                    Op::Reduce(Reduce { kind, attrs: ReduceAttrs::read(&mut r)? })
                } else {
                    match op_type {
                        $( stringify!($unit) => Op::$unit, )*
                        $( $name => Op::$var(<$attrs as OpAttrs>::read(&mut r)?), )*
                        _ => return Ok(None),
                    }
                };
                r.finish()?;
                Ok(Some(op))
            }

            /// The ONNX operator name.
            pub fn op_type(&self) -> &str {
                match self {
                    Op::Input => "Input",
                    Op::Weight(_) => "Weight",
                    Op::Constant(_) => "Constant",
                    Op::Unary(u) => u.onnx_name(),
                    Op::Binary(b) => b.onnx_name(),
                    Op::Variadic(v) => v.onnx_name(),
                    Op::Reduce(r) => r.kind.onnx_name(),
                    $( Op::$unit => stringify!($unit), )*
                    $( Op::$var(_) => $name, )*
                    Op::Opaque(o) => &o.op_type,
                }
            }

            /// The attributes in generic form, leaving out defaults. Sources
            /// (`Input`, `Weight`, `Constant`) have none: their payload is
            /// printed and exported separately.
            pub fn attrs(&self) -> Attrs {
                match self {
                    Op::Unary(u) => u.attrs(),
                    Op::Binary(b) => b.attrs(),
                    Op::Reduce(r) => {
                        let mut w = AttrWriter::new();
                        r.attrs.write(&mut w);
                        w.finish()
                    }
                    $( Op::$var(a) => {
                        let mut w = AttrWriter::new();
                        a.write(&mut w);
                        w.finish()
                    } )*
                    Op::Opaque(o) => o.attrs.clone(),
                    _ => Attrs::new(),
                }
            }
        }

        /// Every op name of the default domain that sharc models.
        pub const MODELLED_OPS: &[&str] = &[ $( stringify!($unit), )* $( $name, )* ];
    };
}

define_ops! {
    unit {
        /// Matrix product with numpy broadcasting of batch dims.
        MatMul,
        /// Broadcasts the input to a shape.
        Expand,
        /// Picks from two inputs by a boolean condition.
        Where,
        /// Passes the input through.
        Identity,
        /// Number of elements as an int64 scalar.
        Size,
        /// Repeats the input along each dim.
        Tile,
        /// Indices of non-zero elements.
        NonZero,
        /// Clamps to optional min and max inputs.
        Clip,
        /// Slices with starts, ends, axes and steps inputs.
        Slice,
        /// Removes size-1 dims listed in the optional axes input.
        Squeeze,
        /// Inserts size-1 dims at the axes input.
        Unsqueeze,
        /// Mean over all spatial dims.
        GlobalAveragePool,
        /// Max over all spatial dims.
        GlobalMaxPool,
        /// Matrix determinant.
        Det,
        /// Integer matrix product with zero points.
        MatMulInteger,
        /// Quantised matrix product.
        QLinearMatMul,
        /// Quantises with a scale and zero point computed from the data.
        DynamicQuantizeLinear,
        /// The element of a sequence at a position.
        SequenceAt,
        /// A sequence of the inputs.
        SequenceConstruct,
        /// A sequence without the element at a position.
        SequenceErase,
        /// A sequence with a tensor inserted.
        SequenceInsert,
        /// The number of elements of a sequence.
        SequenceLength,
        /// The value inside an optional.
        OptionalGetElement,
        /// Whether an optional holds a value.
        OptionalHasElement,
        /// Elementwise string concatenation.
        StringConcat,
    }
    with_attrs {
        Cast(Cast) = "Cast",
        CastLike(CastLike) = "CastLike",
        BitCast(BitCast) = "BitCast",
        Reshape(Reshape) = "Reshape",
        Transpose(Transpose) = "Transpose",
        Flatten(Flatten) = "Flatten",
        Concat(Concat) = "Concat",
        Split(Split) = "Split",
        Gather(Gather) = "Gather",
        GatherElements(GatherElements) = "GatherElements",
        GatherND(GatherND) = "GatherND",
        ScatterElements(ScatterElements) = "ScatterElements",
        ScatterND(ScatterND) = "ScatterND",
        Pad(Pad) = "Pad",
        /// The input's shape (named `ShapeOf` in Rust to keep `Shape` for dims).
        Shape(ShapeOf) = "Shape",
        ConstantOfShape(ConstantOfShape) = "ConstantOfShape",
        Range(Range) = "Range",
        Dropout(Dropout) = "Dropout",
        Trilu(Trilu) = "Trilu",
        OneHot(OneHot) = "OneHot",
        TopK(TopK) = "TopK",
        Compress(Compress) = "Compress",
        ReverseSequence(ReverseSequence) = "ReverseSequence",
        DepthToSpace(DepthToSpace) = "DepthToSpace",
        SpaceToDepth(SpaceToDepth) = "SpaceToDepth",
        EyeLike(EyeLike) = "EyeLike",
        CumSum(Cumulative) = "CumSum",
        CumProd(Cumulative) = "CumProd",
        Unique(Unique) = "Unique",
        ArgMax(ArgReduce) = "ArgMax",
        ArgMin(ArgReduce) = "ArgMin",
        CenterCropPad(CenterCropPad) = "CenterCropPad",
        Col2Im(Col2Im) = "Col2Im",
        TensorScatter(TensorScatter) = "TensorScatter",
        Resize(Resize) = "Resize",
        Gemm(Gemm) = "Gemm",
        Conv(Conv) = "Conv",
        ConvInteger(Conv) = "ConvInteger",
        QLinearConv(Conv) = "QLinearConv",
        ConvTranspose(ConvTranspose) = "ConvTranspose",
        DeformConv(DeformConv) = "DeformConv",
        MaxPool(MaxPool) = "MaxPool",
        AveragePool(AveragePool) = "AveragePool",
        LpPool(LpPool) = "LpPool",
        GlobalLpPool(GlobalLpPool) = "GlobalLpPool",
        MaxRoiPool(MaxRoiPool) = "MaxRoiPool",
        MaxUnpool(MaxUnpool) = "MaxUnpool",
        BatchNormalization(BatchNormalization) = "BatchNormalization",
        InstanceNormalization(InstanceNormalization) = "InstanceNormalization",
        LayerNormalization(LayerNormalization) = "LayerNormalization",
        GroupNormalization(GroupNormalization) = "GroupNormalization",
        RMSNormalization(RMSNormalization) = "RMSNormalization",
        LpNormalization(LpNormalization) = "LpNormalization",
        MeanVarianceNormalization(MeanVarianceNormalization) = "MeanVarianceNormalization",
        LRN(LRN) = "LRN",
        Softmax(AxisAttr) = "Softmax",
        LogSoftmax(AxisAttr) = "LogSoftmax",
        Hardmax(AxisAttr) = "Hardmax",
        Einsum(Einsum) = "Einsum",
        Attention(Attention) = "Attention",
        RotaryEmbedding(RotaryEmbedding) = "RotaryEmbedding",
        SwiGLU(SwiGlu) = "SwiGLU",
        LinearAttention(LinearAttention) = "LinearAttention",
        CausalConvWithState(CausalConvWithState) = "CausalConvWithState",
        RNN(Recurrent) = "RNN",
        GRU(Recurrent) = "GRU",
        LSTM(Recurrent) = "LSTM",
        NegativeLogLikelihoodLoss(Loss) = "NegativeLogLikelihoodLoss",
        SoftmaxCrossEntropyLoss(Loss) = "SoftmaxCrossEntropyLoss",
        GridSample(GridSample) = "GridSample",
        AffineGrid(AffineGrid) = "AffineGrid",
        RoiAlign(RoiAlign) = "RoiAlign",
        NonMaxSuppression(NonMaxSuppression) = "NonMaxSuppression",
        QuantizeLinear(QuantizeLinear) = "QuantizeLinear",
        DequantizeLinear(DequantizeLinear) = "DequantizeLinear",
        DFT(Dft) = "DFT",
        STFT(Stft) = "STFT",
        HannWindow(Window) = "HannWindow",
        HammingWindow(Window) = "HammingWindow",
        BlackmanWindow(Window) = "BlackmanWindow",
        MelWeightMatrix(MelWeightMatrix) = "MelWeightMatrix",
        RandomUniformLike(RandomUniformLike) = "RandomUniformLike",
        RandomNormalLike(RandomNormalLike) = "RandomNormalLike",
        RandomUniform(RandomUniform) = "RandomUniform",
        RandomNormal(RandomNormal) = "RandomNormal",
        Multinomial(Multinomial) = "Multinomial",
        Bernoulli(Bernoulli) = "Bernoulli",
        StringSplit(StringSplit) = "StringSplit",
        StringNormalizer(StringNormalizer) = "StringNormalizer",
        RegexFullMatch(RegexFullMatch) = "RegexFullMatch",
        TfIdfVectorizer(TfIdfVectorizer) = "TfIdfVectorizer",
        If(If) = "If",
        Loop(Loop) = "Loop",
        Scan(Scan) = "Scan",
        SequenceMap(SequenceMap) = "SequenceMap",
        SequenceEmpty(SequenceEmpty) = "SequenceEmpty",
        SplitToSequence(SplitToSequence) = "SplitToSequence",
        ConcatFromSequence(ConcatFromSequence) = "ConcatFromSequence",
        Optional(OptionalOf) = "Optional",
    }
}

impl Op {
    /// The operator domain (`""` for ONNX's default domain).
    pub fn domain(&self) -> &str {
        match self {
            Op::Opaque(o) => &o.domain,
            _ => "",
        }
    }

    /// The body graphs this op owns (If branches, Loop/Scan bodies, graph
    /// attributes of opaque ops), in attribute-name order.
    pub fn subgraphs(&self) -> Vec<&Subgraph> {
        match self {
            Op::If(a) => vec![&a.else_branch, &a.then_branch],
            Op::Loop(a) => vec![&a.body],
            Op::Scan(a) => vec![&a.body],
            Op::SequenceMap(a) => vec![&a.body],
            Op::Opaque(o) => o
                .attrs
                .values()
                .flat_map(|a| match a {
                    Attr::Graph(g) => vec![g],
                    Attr::Graphs(gs) => gs.iter().collect(),
                    _ => vec![],
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Mutable access to the body graphs, in the order of [`Op::subgraphs`].
    pub fn subgraphs_mut(&mut self) -> Vec<&mut Subgraph> {
        match self {
            Op::If(a) => vec![&mut a.else_branch, &mut a.then_branch],
            Op::Loop(a) => vec![&mut a.body],
            Op::Scan(a) => vec![&mut a.body],
            Op::SequenceMap(a) => vec![&mut a.body],
            Op::Opaque(o) => o
                .attrs
                .values_mut()
                .flat_map(|a| match a {
                    Attr::Graph(g) => vec![g],
                    Attr::Graphs(gs) => gs.iter_mut().collect(),
                    _ => vec![],
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// True when the op's outputs depend only on its inputs, so two nodes
    /// with the same op and inputs can be merged and an unused one removed.
    pub fn is_pure(&self) -> bool {
        !matches!(
            self,
            Op::RandomUniformLike(_)
                | Op::RandomNormalLike(_)
                | Op::RandomUniform(_)
                | Op::RandomNormal(_)
                | Op::Multinomial(_)
                | Op::Bernoulli(_)
                | Op::Opaque(_)
        ) && !(matches!(self, Op::Dropout(_)))
    }

    /// True for ops that introduce a value rather than compute one.
    pub fn is_source(&self) -> bool {
        matches!(self, Op::Input | Op::Weight(_) | Op::Constant(_))
    }

    /// True for one-output ops computed independently per element (with
    /// broadcasting); fusion planners group these.
    pub fn is_elementwise(&self) -> bool {
        matches!(self, Op::Unary(_) | Op::Binary(_) | Op::Variadic(_) | Op::Where | Op::Clip | Op::Cast(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_writes_back() {
        let mut attrs = Attrs::new();
        attrs.insert("transB".into(), Attr::Int(1));
        let op = Op::from_onnx_default_domain("Gemm", attrs.clone()).unwrap().unwrap();
        assert_eq!(op, Op::Gemm(Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true }));
        assert_eq!(op.op_type(), "Gemm");
        assert_eq!(op.attrs(), attrs);
    }

    #[test]
    fn families() {
        let op = Op::from_onnx_default_domain("ReduceMean", Attrs::new()).unwrap().unwrap();
        assert!(matches!(op, Op::Reduce(Reduce { kind: ReduceKind::Mean, .. })));
        let mut a = Attrs::new();
        a.insert("alpha".into(), Attr::Float(0.2));
        let op = Op::from_onnx_default_domain("LeakyRelu", a.clone()).unwrap().unwrap();
        assert_eq!(op, Op::Unary(UnaryOp::LeakyRelu { alpha: 0.2 }));
        assert_eq!(op.attrs(), a);
        let op = Op::from_onnx_default_domain("Add", Attrs::new()).unwrap().unwrap();
        assert_eq!(op, Op::Binary(BinaryOp::Add));
        assert_eq!(Op::from_onnx_default_domain("NoSuchOp", Attrs::new()).unwrap(), None);
    }

    #[test]
    fn unknown_attribute_on_known_op_is_an_error() {
        let mut a = Attrs::new();
        a.insert("bogus".into(), Attr::Int(1));
        assert!(Op::from_onnx_default_domain("Relu", a).is_err());
    }

    #[test]
    fn every_modelled_name_parses_back_to_itself() {
        for name in MODELLED_OPS {
            // Ops with required attributes fail without them; that is fine here.
            if let Ok(Some(op)) = Op::from_onnx_default_domain(name, Attrs::new()) {
                assert_eq!(op.op_type(), *name);
            }
        }
    }
}

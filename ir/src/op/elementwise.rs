//! Elementwise ops: one output element from the elements at the same position
//! of the (broadcast) inputs.
//!
//! They are grouped into families by arity because passes treat them that
//! way: fusion planners, the rewrite engine and the interpreter all dispatch
//! on "unary" or "binary" before they care which one.

use crate::attr::{AttrError, AttrReader, AttrWriter, Attrs};
use crate::string_enum;

string_enum! {
    /// How `Gelu` approximates the Gaussian CDF.
    pub enum GeluApproximation {
        /// The exact form with `erf`.
        None = "none",
        /// The `tanh` approximation.
        Tanh = "tanh",
    }
}

/// An op with one input and one output of the same shape.
#[derive(Clone, Debug, PartialEq)]
pub enum UnaryOp {
    Abs,
    Neg,
    Exp,
    Log,
    Sqrt,
    Reciprocal,
    Floor,
    Ceil,
    Round,
    Sign,
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Asinh,
    Acosh,
    Atanh,
    Erf,
    Sigmoid,
    Tanh,
    Relu,
    Softplus,
    Softsign,
    Mish,
    HardSwish,
    Not,
    BitwiseNot,
    IsNaN,
    IsInf { detect_negative: bool, detect_positive: bool },
    LeakyRelu { alpha: f32 },
    Elu { alpha: f32 },
    Celu { alpha: f32 },
    Selu { alpha: f32, gamma: f32 },
    HardSigmoid { alpha: f32, beta: f32 },
    ThresholdedRelu { alpha: f32 },
    Shrink { bias: f32, lambd: f32 },
    Gelu { approximate: GeluApproximation },
    Swish { alpha: f32 },
}

/// Unary ops without attributes, with their ONNX names.
const PLAIN_UNARY: &[(&str, UnaryOp)] = &[
    ("Abs", UnaryOp::Abs),
    ("Neg", UnaryOp::Neg),
    ("Exp", UnaryOp::Exp),
    ("Log", UnaryOp::Log),
    ("Sqrt", UnaryOp::Sqrt),
    ("Reciprocal", UnaryOp::Reciprocal),
    ("Floor", UnaryOp::Floor),
    ("Ceil", UnaryOp::Ceil),
    ("Round", UnaryOp::Round),
    ("Sign", UnaryOp::Sign),
    ("Sin", UnaryOp::Sin),
    ("Cos", UnaryOp::Cos),
    ("Tan", UnaryOp::Tan),
    ("Asin", UnaryOp::Asin),
    ("Acos", UnaryOp::Acos),
    ("Atan", UnaryOp::Atan),
    ("Sinh", UnaryOp::Sinh),
    ("Cosh", UnaryOp::Cosh),
    ("Asinh", UnaryOp::Asinh),
    ("Acosh", UnaryOp::Acosh),
    ("Atanh", UnaryOp::Atanh),
    ("Erf", UnaryOp::Erf),
    ("Sigmoid", UnaryOp::Sigmoid),
    ("Tanh", UnaryOp::Tanh),
    ("Relu", UnaryOp::Relu),
    ("Softplus", UnaryOp::Softplus),
    ("Softsign", UnaryOp::Softsign),
    ("Mish", UnaryOp::Mish),
    ("HardSwish", UnaryOp::HardSwish),
    ("Not", UnaryOp::Not),
    ("BitwiseNot", UnaryOp::BitwiseNot),
    ("IsNaN", UnaryOp::IsNaN),
];

impl UnaryOp {
    /// Parses an ONNX unary op, or returns `None` if `op_type` is not one.
    pub fn from_onnx(op_type: &str, r: &mut AttrReader) -> Option<Result<UnaryOp, AttrError>> {
        if let Some((_, op)) = PLAIN_UNARY.iter().find(|(n, _)| *n == op_type) {
            return Some(Ok(op.clone()));
        }
        let parsed = match op_type {
            "IsInf" => (|| {
                Ok(UnaryOp::IsInf {
                    detect_negative: r.take("detect_negative", Some(true))?,
                    detect_positive: r.take("detect_positive", Some(true))?,
                })
            })(),
            "LeakyRelu" => r.take("alpha", Some(0.01)).map(|alpha| UnaryOp::LeakyRelu { alpha }),
            "Elu" => r.take("alpha", Some(1.0)).map(|alpha| UnaryOp::Elu { alpha }),
            "Celu" => r.take("alpha", Some(1.0)).map(|alpha| UnaryOp::Celu { alpha }),
            "Selu" => (|| {
                Ok(UnaryOp::Selu {
                    alpha: r.take("alpha", Some(1.673_263_2))?,
                    gamma: r.take("gamma", Some(1.050_701))?,
                })
            })(),
            "HardSigmoid" => {
                (|| Ok(UnaryOp::HardSigmoid { alpha: r.take("alpha", Some(0.2))?, beta: r.take("beta", Some(0.5))? }))()
            }
            "ThresholdedRelu" => r.take("alpha", Some(1.0)).map(|alpha| UnaryOp::ThresholdedRelu { alpha }),
            "Shrink" => {
                (|| Ok(UnaryOp::Shrink { bias: r.take("bias", Some(0.0))?, lambd: r.take("lambd", Some(0.5))? }))()
            }
            "Gelu" => {
                r.take("approximate", Some(GeluApproximation::None)).map(|approximate| UnaryOp::Gelu { approximate })
            }
            "Swish" => r.take("alpha", Some(1.0)).map(|alpha| UnaryOp::Swish { alpha }),
            _ => return None,
        };
        Some(parsed)
    }

    /// The ONNX op name.
    pub fn onnx_name(&self) -> &'static str {
        if let Some((n, _)) = PLAIN_UNARY.iter().find(|(_, op)| op == self) {
            return n;
        }
        match self {
            UnaryOp::IsInf { .. } => "IsInf",
            UnaryOp::LeakyRelu { .. } => "LeakyRelu",
            UnaryOp::Elu { .. } => "Elu",
            UnaryOp::Celu { .. } => "Celu",
            UnaryOp::Selu { .. } => "Selu",
            UnaryOp::HardSigmoid { .. } => "HardSigmoid",
            UnaryOp::ThresholdedRelu { .. } => "ThresholdedRelu",
            UnaryOp::Shrink { .. } => "Shrink",
            UnaryOp::Gelu { .. } => "Gelu",
            UnaryOp::Swish { .. } => "Swish",
            _ => unreachable!("plain unary ops are listed in PLAIN_UNARY"),
        }
    }

    /// The attributes that differ from ONNX's defaults.
    pub fn attrs(&self) -> Attrs {
        let mut w = AttrWriter::new();
        match self {
            UnaryOp::IsInf { detect_negative, detect_positive } => {
                w.put("detect_negative", detect_negative, Some(true));
                w.put("detect_positive", detect_positive, Some(true));
            }
            UnaryOp::LeakyRelu { alpha } => w.put("alpha", alpha, Some(0.01)),
            UnaryOp::Elu { alpha } | UnaryOp::Celu { alpha } | UnaryOp::ThresholdedRelu { alpha } => {
                w.put("alpha", alpha, Some(1.0))
            }
            UnaryOp::Swish { alpha } => w.put("alpha", alpha, Some(1.0)),
            UnaryOp::Selu { alpha, gamma } => {
                w.put("alpha", alpha, Some(1.673_263_2));
                w.put("gamma", gamma, Some(1.050_701));
            }
            UnaryOp::HardSigmoid { alpha, beta } => {
                w.put("alpha", alpha, Some(0.2));
                w.put("beta", beta, Some(0.5));
            }
            UnaryOp::Shrink { bias, lambd } => {
                w.put("bias", bias, Some(0.0));
                w.put("lambd", lambd, Some(0.5));
            }
            UnaryOp::Gelu { approximate } => w.put("approximate", approximate, Some(GeluApproximation::None)),
            _ => {}
        }
        w.finish()
    }
}

/// An op with two inputs broadcast against each other (numpy rules).
#[derive(Clone, Debug, PartialEq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    /// Integer modulo; with `fmod` the sign follows the dividend (C's fmod),
    /// otherwise the divisor (Python's %).
    Mod {
        fmod: bool,
    },
    And,
    Or,
    Xor,
    Equal,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    /// Shift of unsigned integers, `left` or right.
    BitShift {
        left: bool,
    },
    BitwiseAnd,
    BitwiseOr,
    BitwiseXor,
    /// `x < 0 ? slope * x : x`, with the slope broadcast to x.
    PRelu,
}

const PLAIN_BINARY: &[(&str, BinaryOp)] = &[
    ("Add", BinaryOp::Add),
    ("Sub", BinaryOp::Sub),
    ("Mul", BinaryOp::Mul),
    ("Div", BinaryOp::Div),
    ("Pow", BinaryOp::Pow),
    ("And", BinaryOp::And),
    ("Or", BinaryOp::Or),
    ("Xor", BinaryOp::Xor),
    ("Equal", BinaryOp::Equal),
    ("Less", BinaryOp::Less),
    ("LessOrEqual", BinaryOp::LessOrEqual),
    ("Greater", BinaryOp::Greater),
    ("GreaterOrEqual", BinaryOp::GreaterOrEqual),
    ("BitwiseAnd", BinaryOp::BitwiseAnd),
    ("BitwiseOr", BinaryOp::BitwiseOr),
    ("BitwiseXor", BinaryOp::BitwiseXor),
    ("PRelu", BinaryOp::PRelu),
];

string_enum! {
    /// Direction of `BitShift`.
    pub enum ShiftDirection {
        Left = "LEFT",
        Right = "RIGHT",
    }
}

impl BinaryOp {
    /// Parses an ONNX binary op, or returns `None` if `op_type` is not one.
    pub fn from_onnx(op_type: &str, r: &mut AttrReader) -> Option<Result<BinaryOp, AttrError>> {
        if let Some((_, op)) = PLAIN_BINARY.iter().find(|(n, _)| *n == op_type) {
            return Some(Ok(op.clone()));
        }
        match op_type {
            "Mod" => Some(r.take("fmod", Some(false)).map(|fmod| BinaryOp::Mod { fmod })),
            "BitShift" => Some(
                r.take::<ShiftDirection>("direction", None)
                    .map(|d| BinaryOp::BitShift { left: d == ShiftDirection::Left }),
            ),
            _ => None,
        }
    }

    /// The ONNX op name.
    pub fn onnx_name(&self) -> &'static str {
        if let Some((n, _)) = PLAIN_BINARY.iter().find(|(_, op)| op == self) {
            return n;
        }
        match self {
            BinaryOp::Mod { .. } => "Mod",
            BinaryOp::BitShift { .. } => "BitShift",
            _ => unreachable!("plain binary ops are listed in PLAIN_BINARY"),
        }
    }

    /// The attributes that differ from ONNX's defaults.
    pub fn attrs(&self) -> Attrs {
        let mut w = AttrWriter::new();
        match self {
            BinaryOp::Mod { fmod } => w.put("fmod", fmod, Some(false)),
            BinaryOp::BitShift { left } => {
                let d = if *left { ShiftDirection::Left } else { ShiftDirection::Right };
                w.put("direction", &d, None)
            }
            _ => {}
        }
        w.finish()
    }

    /// True for comparisons, whose output is `bool` whatever the input type.
    pub fn is_comparison(&self) -> bool {
        matches!(
            self,
            BinaryOp::Equal | BinaryOp::Less | BinaryOp::LessOrEqual | BinaryOp::Greater | BinaryOp::GreaterOrEqual
        )
    }

    /// True when `a op b == b op a`.
    pub fn is_commutative(&self) -> bool {
        matches!(
            self,
            BinaryOp::Add
                | BinaryOp::Mul
                | BinaryOp::And
                | BinaryOp::Or
                | BinaryOp::Xor
                | BinaryOp::Equal
                | BinaryOp::BitwiseAnd
                | BinaryOp::BitwiseOr
                | BinaryOp::BitwiseXor
        )
    }
}

/// An op over any number of inputs, all broadcast together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VariadicOp {
    Sum,
    Mean,
    Max,
    Min,
}

impl VariadicOp {
    /// Parses an ONNX variadic op name.
    pub fn from_onnx(op_type: &str) -> Option<VariadicOp> {
        Some(match op_type {
            "Sum" => VariadicOp::Sum,
            "Mean" => VariadicOp::Mean,
            "Max" => VariadicOp::Max,
            "Min" => VariadicOp::Min,
            _ => return None,
        })
    }

    /// The ONNX op name.
    pub fn onnx_name(self) -> &'static str {
        match self {
            VariadicOp::Sum => "Sum",
            VariadicOp::Mean => "Mean",
            VariadicOp::Max => "Max",
            VariadicOp::Min => "Min",
        }
    }
}

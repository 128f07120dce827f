//! Shapes with symbolic dimensions, and the types of values.
//!
//! A dimension is either a known size or a symbol such as `batch`. Symbols
//! are what keep a compiled or compressed model usable for every batch size
//! and sequence length, so passes must carry them through rather than
//! specialising them away.

use crate::DType;
use std::fmt;

/// One dimension of a shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    /// A size known when the graph is built.
    Fixed(u64),
    /// A named size that is only known when the graph runs (`batch`, `seq`).
    /// Two dims with the same symbol are equal.
    Sym(String),
}

impl Dim {
    /// The fixed size, if known.
    pub fn fixed(&self) -> Option<u64> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }

    /// A symbolic dim.
    pub fn sym(name: impl Into<String>) -> Dim {
        Dim::Sym(name.into())
    }
}

impl From<u64> for Dim {
    fn from(n: u64) -> Dim {
        Dim::Fixed(n)
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Fixed(n as u64)
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Dim {
        Dim::Sym(s.to_string())
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) if is_plain_symbol(s) => f.write_str(s),
            Dim::Sym(s) => write!(f, "{s:?}"),
        }
    }
}

/// True when a symbol can be printed without quotes.
pub(crate) fn is_plain_symbol(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A tensor shape: a list of dims. The empty shape is a scalar.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    /// The shape of a scalar.
    pub fn scalar() -> Shape {
        Shape(Vec::new())
    }

    /// A shape whose dims are all known.
    pub fn fixed(dims: &[usize]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::Fixed(d as u64)).collect())
    }

    /// Number of dims.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// The dims as sizes, if all are known.
    pub fn as_fixed(&self) -> Option<Vec<usize>> {
        self.0.iter().map(|d| d.fixed().map(|n| n as usize)).collect()
    }

    /// Number of elements, if all dims are known.
    pub fn num_elements(&self) -> Option<u64> {
        self.0.iter().try_fold(1u64, |acc, d| d.fixed().map(|n| acc.saturating_mul(n)))
    }

    /// The dims.
    pub fn dims(&self) -> &[Dim] {
        &self.0
    }

    /// True when every dim is fixed.
    pub fn is_fixed(&self) -> bool {
        self.0.iter().all(|d| d.fixed().is_some())
    }
}

impl From<Vec<Dim>> for Shape {
    fn from(v: Vec<Dim>) -> Shape {
        Shape(v)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// The type of a tensor value. The shape is `None` when not even the rank is
/// known (shape inference could not decide it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    /// Element type.
    pub dtype: DType,
    /// Shape, or `None` when the rank is unknown.
    pub shape: Option<Shape>,
}

impl TensorType {
    /// A tensor type with a known shape.
    pub fn new(dtype: DType, shape: impl Into<Shape>) -> TensorType {
        TensorType { dtype, shape: Some(shape.into()) }
    }

    /// A tensor type of unknown rank.
    pub fn unranked(dtype: DType) -> TensorType {
        TensorType { dtype, shape: None }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.shape {
            Some(s) => write!(f, "{}{}", self.dtype, s),
            None => write!(f, "{}[*]", self.dtype),
        }
    }
}

/// The type of any value: a tensor, or one of ONNX's container types.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    /// A dense tensor.
    Tensor(TensorType),
    /// An ONNX sequence of values of one type.
    Sequence(Box<Type>),
    /// An ONNX optional: a value of the inner type, or none.
    Optional(Box<Type>),
    /// Not known yet (before shape inference, or an opaque op's output).
    Unknown,
}

impl Type {
    /// A tensor type with a known shape.
    pub fn tensor(dtype: DType, shape: impl Into<Shape>) -> Type {
        Type::Tensor(TensorType::new(dtype, shape))
    }

    /// The tensor type, if this is a tensor.
    pub fn as_tensor(&self) -> Option<&TensorType> {
        match self {
            Type::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// The element type, if this is a tensor.
    pub fn dtype(&self) -> Option<DType> {
        self.as_tensor().map(|t| t.dtype)
    }

    /// The shape, if this is a tensor of known rank.
    pub fn shape(&self) -> Option<&Shape> {
        self.as_tensor().and_then(|t| t.shape.as_ref())
    }
}

impl From<TensorType> for Type {
    fn from(t: TensorType) -> Type {
        Type::Tensor(t)
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Tensor(t) => write!(f, "{t}"),
            Type::Sequence(t) => write!(f, "seq<{t}>"),
            Type::Optional(t) => write!(f, "opt<{t}>"),
            Type::Unknown => f.write_str("?"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display() {
        let t = Type::tensor(DType::F32, vec![Dim::sym("batch"), Dim::Fixed(16)]);
        assert_eq!(t.to_string(), "f32[batch, 16]");
        let s = Type::Sequence(Box::new(Type::tensor(DType::I64, Shape::scalar())));
        assert_eq!(s.to_string(), "seq<i64[]>");
        assert_eq!(Dim::sym("unk 1").to_string(), "\"unk 1\"");
        assert_eq!(Type::Tensor(TensorType::unranked(DType::Bool)).to_string(), "bool[*]");
    }
}

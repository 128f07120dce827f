//! What a fused kernel computes, independent of how code is generated.
//!
//! A kernel iterates over a *domain*: `rows × inner`, where `inner` is the
//! last dim of the group's output shape and the rows are all other dims
//! (kept separately, so that every input can have its own strides per dim:
//! broadcasting is a stride of 0 and a transposed view is a permuted stride).
//!
//! Expressions are either *full* (one value per domain element) or *row*
//! (one value per row): a row reduction turns a full expression into a row
//! one, and row values broadcast back along the row. That is enough for
//! Softmax, LayerNormalization, RMS norms and every decomposed spelling of
//! them, while staying a single pass over memory per reduction.

/// An expression id: an index into [`KernelSpec::exprs`]. Operands always
/// have smaller ids than the expression using them.
pub(crate) type ExprId = usize;

/// The element type of an expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// 32-bit float.
    F32,
    /// A boolean (a comparison result or a bool input).
    Mask,
}

/// Whether an expression varies along the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Level {
    /// One value per row (or one for the whole kernel).
    Row,
    /// One value per domain element.
    Full,
}

/// One-operand float functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Unary {
    Neg,
    Abs,
    Sqrt,
    Recip,
    Exp,
    Log,
    Tanh,
    Erf,
    Sigmoid,
    Floor,
    Ceil,
    Round,
}

/// Two-operand float functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
}

/// Float comparisons, giving masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Cmp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Mask combinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Logic {
    And,
    Or,
    Xor,
}

/// Reductions along the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Reduce {
    Sum,
    Max,
    Min,
}

/// One expression node.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Expr {
    /// Kernel input `k`, read at the current position.
    Input(usize),
    /// A float constant.
    Const(f32),
    Unary(Unary, ExprId),
    Binary(Binary, ExprId, ExprId),
    Cmp(Cmp, ExprId, ExprId),
    Logic(Logic, ExprId, ExprId),
    Not(ExprId),
    /// `mask ? a : b`.
    Select(ExprId, ExprId, ExprId),
    /// A mask as 1.0 or 0.0.
    MaskToF32(ExprId),
    /// A float as a mask (`x != 0`).
    F32ToMask(ExprId),
    /// A reduction of a full expression over the row; a row value.
    Reduce(Reduce, ExprId),
}

/// The element type of a kernel input in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum InputType {
    F32,
    /// One byte per element, non-zero is true.
    Bool,
}

/// One input of a kernel: its type and its stride (in elements) along each
/// domain dim; 0 broadcasts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct InputSpec {
    pub ty: InputType,
    pub strides: Vec<isize>,
}

/// One output: an f32 expression written densely, per element (full) or
/// per row.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OutputSpec {
    pub expr: ExprId,
    pub level: Level,
}

/// A fused kernel.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct KernelSpec {
    /// The domain's dims; the last one is the row (inner) dim. A scalar
    /// domain is `[1]`.
    pub dims: Vec<usize>,
    pub inputs: Vec<InputSpec>,
    pub exprs: Vec<Expr>,
    pub outputs: Vec<OutputSpec>,
}

impl KernelSpec {
    /// Number of rows (product of all dims but the last).
    pub fn rows(&self) -> usize {
        self.dims[..self.dims.len() - 1].iter().product()
    }

    /// Length of a row.
    pub fn inner(&self) -> usize {
        *self.dims.last().expect("a domain has at least one dim")
    }

    /// The element type of each expression.
    pub fn kinds(&self) -> Vec<Kind> {
        let mut k = Vec::with_capacity(self.exprs.len());
        for e in &self.exprs {
            k.push(match e {
                Expr::Input(i) => match self.inputs[*i].ty {
                    InputType::F32 => Kind::F32,
                    InputType::Bool => Kind::Mask,
                },
                Expr::Cmp(..) | Expr::Logic(..) | Expr::Not(_) | Expr::F32ToMask(_) => Kind::Mask,
                Expr::Select(_, a, _) => k[*a],
                _ => Kind::F32,
            });
        }
        k
    }

    /// The level of each expression.
    pub fn levels(&self) -> Vec<Level> {
        let mut l: Vec<Level> = Vec::with_capacity(self.exprs.len());
        for e in &self.exprs {
            l.push(match e {
                Expr::Input(i) => {
                    if self.inputs[*i].strides.last().copied().unwrap_or(0) == 0 {
                        Level::Row
                    } else {
                        Level::Full
                    }
                }
                Expr::Const(_) | Expr::Reduce(..) => Level::Row,
                Expr::Unary(_, a) | Expr::Not(a) | Expr::MaskToF32(a) | Expr::F32ToMask(a) => l[*a],
                Expr::Binary(_, a, b) | Expr::Cmp(_, a, b) | Expr::Logic(_, a, b) => l[*a].max(l[*b]),
                Expr::Select(c, a, b) => l[*c].max(l[*a]).max(l[*b]),
            });
        }
        l
    }
}

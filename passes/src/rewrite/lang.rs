//! `TensorLang`: the e-graph language the `simplify` pass rewrites in.
//!
//! Every e-node is one tensor operation whose *data* operands are children.
//! Attributes that rules reason about (permutations, axes, target dtypes,
//! Gemm's flags) are children too, each a [`Literal`] leaf: that keeps them
//! visible to patterns (`(transpose (transpose ?x ?p) ?q)`) and lets one
//! analysis treat constant inputs (a `Reshape` target) and attributes (a
//! `Transpose` permutation) the same way. [`TensorLang::to_ir`] turns a node
//! back into an IR [`Op`] plus its data operands; the analysis (through shape
//! inference) and the splice both go through it, so a node means exactly
//! what the IR op it stands for means.
//!
//! Leaves are of three kinds:
//!
//! - [`Literal`]: a small constant carried by value (integers, booleans,
//!   `f32`/`f64`, at most [`MAX_LITERAL`] elements), so rules can fold and
//!   inspect it;
//! - [`LeafRef`] (`v3`): a value from outside the lifted region (a graph
//!   input, a weight, a large constant, an output of an op the language
//!   cannot carry), bound to its [`sharc_ir::ValueRef`] by the lift;
//! - `none`: an absent optional input.
//!
//! Ops the rules have no laws for but that are pure and have one output
//! (`Shape`, `Gather`, `LayerNormalization`, `Erf`, ...) are lifted as
//! `(opN children...)`, the IR op kept in a side table ([`OpRef`]). They cut no region
//! in two, take part in common-subexpression merging and are costed, but no
//! rule looks inside them.

use egg::{Id, define_language};
use sharc_ir::infer::{SymData, SymTensor};
use sharc_ir::op::{AxisAttr, Cast, Concat, Gemm, ReduceAttrs, Reshape, RoundMode, Transpose};
use sharc_ir::{BinaryOp, DType, Op, Reduce, ReduceKind, Tensor, UnaryOp};
use std::fmt;
use std::str::FromStr;

/// The most elements a constant may have to be carried in the language by
/// value. Larger constants are data, not parameters of a rewrite, and become
/// leaves.
pub const MAX_LITERAL: usize = 256;

define_language! {
    /// The tensor language. Operands, in order (`?` marks a child that may
    /// be `none`; *lit* a child that must be a [`Literal`]):
    ///
    /// | node | operands |
    /// | --- | --- |
    /// | `add` `sub` `mul` `div` `pow` | `a b` (broadcasting) |
    /// | `neg` `sqrt` `recip` `exp` `identity` | `x` |
    /// | `matmul` | `a b` |
    /// | `gemm` | `attrs a b c?`, attrs an `f64[4]` lit `[alpha, beta, transA, transB]` |
    /// | `transpose` | `x perm`, perm an `i64` lit |
    /// | `reshape` | `x shape` (`allowzero = 0`; the shape may be computed) |
    /// | `unsqueeze` | `x axes` |
    /// | `squeeze` | `x axes?` |
    /// | `concat` | `axis x1 x2 ...`, axis an `i64` scalar lit |
    /// | `slice` | `x starts ends axes? steps?` |
    /// | `reduce-sum` `reduce-mean` | `x axes? flags`, flags an `i64[2]` lit `[keepdims, noop_with_empty_axes]` |
    /// | `softmax` | `x axis`, axis an `i64` scalar lit |
    /// | `where` | `cond a b` |
    /// | `cast` | `x to`, to an `i64` scalar lit holding the ONNX dtype code (default `saturate` and `round_mode` only) |
    /// | `opN` | the operands of IR op N of the op table, `none` for absent ones |
    pub enum TensorLang {
        "add" = Add([Id; 2]),
        "sub" = Sub([Id; 2]),
        "mul" = Mul([Id; 2]),
        "div" = Div([Id; 2]),
        "pow" = Pow([Id; 2]),
        "neg" = Neg(Id),
        "sqrt" = Sqrt(Id),
        "recip" = Recip(Id),
        "exp" = Exp(Id),
        "identity" = Identity(Id),
        "matmul" = MatMul([Id; 2]),
        "gemm" = Gemm([Id; 4]),
        "transpose" = Transpose([Id; 2]),
        "reshape" = Reshape([Id; 2]),
        "unsqueeze" = Unsqueeze([Id; 2]),
        "squeeze" = Squeeze([Id; 2]),
        "concat" = Concat(Box<[Id]>),
        "slice" = Slice([Id; 5]),
        "reduce-sum" = ReduceSum([Id; 3]),
        "reduce-mean" = ReduceMean([Id; 3]),
        "softmax" = Softmax([Id; 2]),
        "where" = Where([Id; 3]),
        "cast" = Cast([Id; 2]),
        "none" = None,
        Lit(Literal),
        Leaf(LeafRef),
        Other(OpRef, Box<[Id]>),
    }
}

/// A value from outside the lifted region: index into the lift's leaf table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeafRef(pub u32);

impl fmt::Display for LeafRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl FromStr for LeafRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_indexed(s, "v").map(LeafRef)
    }
}

/// The IR op of an `(opN ...)` node: index into the op table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpRef(pub u32);

impl fmt::Display for OpRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op{}", self.0)
    }
}

impl FromStr for OpRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_indexed(s, "op").map(OpRef)
    }
}

fn parse_indexed(s: &str, prefix: &str) -> Result<u32, String> {
    s.strip_prefix(prefix)
        .filter(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|rest| rest.parse().ok())
        .ok_or_else(|| format!("'{s}' is not of the form {prefix}<number>"))
}

/// The elements of a [`Literal`]: integers (booleans as 0/1) or the bit
/// patterns of `f64` values (so that NaN and `-0.0` compare and hash exactly).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LitData {
    /// Integer or boolean elements.
    Int(Vec<i64>),
    /// Float elements as `f64::to_bits`, already rounded to the dtype.
    Float(Vec<u64>),
}

/// A small constant tensor carried by value. Written `i64[3]:0,-1,384` or
/// `f32[]:0.5`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Literal {
    /// Element type: an integer type other than `u64`, `bool`, `f32` or `f64`.
    pub dtype: DType,
    /// Shape (a literal's shape is always known).
    pub shape: Vec<usize>,
    /// Elements in row-major order.
    pub data: LitData,
}

/// True for dtypes a literal can hold exactly.
fn literal_dtype(d: DType) -> bool {
    matches!(
        d,
        DType::Bool
            | DType::I8
            | DType::I16
            | DType::I32
            | DType::I64
            | DType::U8
            | DType::U16
            | DType::U32
            | DType::F32
            | DType::F64
    )
}

impl Literal {
    /// The literal for a tensor, when it is small and of a dtype literals hold.
    pub fn from_tensor(t: &Tensor) -> Option<Literal> {
        if t.len() > MAX_LITERAL || !literal_dtype(t.dtype()) {
            return None;
        }
        let s = SymTensor::from_tensor(t)?;
        Literal::from_sym(&s)
    }

    /// The literal for a fully known [`SymTensor`] of a dtype literals hold.
    pub fn from_sym(s: &SymTensor) -> Option<Literal> {
        if s.len() > MAX_LITERAL || !literal_dtype(s.dtype) {
            return None;
        }
        let data = match &s.data {
            SymData::Int(_) => LitData::Int(s.as_ints()?),
            SymData::Float(v) => LitData::Float(v.iter().map(|x| x.to_bits()).collect()),
        };
        Some(Literal { dtype: s.dtype, shape: s.shape.clone(), data })
    }

    /// A 1-D `i64` literal (permutations, axes, shapes).
    pub fn ints(v: &[i64]) -> Literal {
        Literal { dtype: DType::I64, shape: vec![v.len()], data: LitData::Int(v.to_vec()) }
    }

    /// A scalar `i64` literal (an axis, a dtype code).
    pub fn int_scalar(v: i64) -> Literal {
        Literal { dtype: DType::I64, shape: vec![], data: LitData::Int(vec![v]) }
    }

    /// A float literal of `dtype` (f32 or f64) and `shape` with every element
    /// `v`, rounded to the dtype. `None` for other dtypes.
    pub fn float_splat(dtype: DType, shape: &[usize], v: f64) -> Option<Literal> {
        let v = match dtype {
            DType::F32 => v as f32 as f64,
            DType::F64 => v,
            _ => return None,
        };
        let n: usize = shape.iter().product();
        if n > MAX_LITERAL {
            return None;
        }
        Some(Literal { dtype, shape: shape.to_vec(), data: LitData::Float(vec![v.to_bits(); n]) })
    }

    /// A literal of `dtype` and `shape` holding `v` everywhere, for any
    /// literal dtype (integers take `v` truncated; it must be integral).
    pub fn splat(dtype: DType, shape: &[usize], v: f64) -> Option<Literal> {
        if dtype == DType::F32 || dtype == DType::F64 {
            return Literal::float_splat(dtype, shape, v);
        }
        if !literal_dtype(dtype) || v.fract() != 0.0 || !v.is_finite() {
            return None;
        }
        let n: usize = shape.iter().product();
        if n > MAX_LITERAL {
            return None;
        }
        let s = SymTensor::ints(dtype, shape.to_vec(), vec![sharc_ir::infer::Expr::int(v as i64); n]);
        // Round-trip through a tensor so the value wraps as the dtype stores it.
        Literal::from_tensor(&s.to_tensor()?)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            LitData::Int(v) => v.len(),
            LitData::Float(v) => v.len(),
        }
    }

    /// True when the literal has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as numbers.
    pub fn to_f64s(&self) -> Vec<f64> {
        match &self.data {
            LitData::Int(v) => v.iter().map(|&x| x as f64).collect(),
            LitData::Float(v) => v.iter().map(|&b| f64::from_bits(b)).collect(),
        }
    }

    /// The integer elements, for integer literals.
    pub fn as_ints(&self) -> Option<&[i64]> {
        match &self.data {
            LitData::Int(v) => Some(v),
            LitData::Float(_) => None,
        }
    }

    /// The single value all elements share, if the literal is non-empty and
    /// uniform (bitwise, so `0.0` and `-0.0` differ).
    pub fn splat_value(&self) -> Option<f64> {
        match &self.data {
            LitData::Int(v) => {
                let first = *v.first()?;
                v.iter().all(|&x| x == first).then_some(first as f64)
            }
            LitData::Float(v) => {
                let first = *v.first()?;
                v.iter().all(|&x| x == first).then_some(f64::from_bits(first))
            }
        }
    }

    /// The run-time tensor.
    pub fn to_tensor(&self) -> Option<Tensor> {
        self.to_sym().to_tensor()
    }

    /// The literal as a [`SymTensor`], the form shape inference reads.
    pub fn to_sym(&self) -> SymTensor {
        let data = match &self.data {
            LitData::Int(v) => SymData::Int(v.iter().map(|&x| sharc_ir::infer::Expr::int(x)).collect()),
            LitData::Float(v) => SymData::Float(v.iter().map(|&b| f64::from_bits(b)).collect()),
        };
        SymTensor { dtype: self.dtype, shape: self.shape.clone(), data }
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        write!(f, "{}[{}]:", self.dtype.name(), dims.join(","))?;
        let elems: Vec<String> = match &self.data {
            LitData::Int(v) => v.iter().map(|x| x.to_string()).collect(),
            LitData::Float(v) => v.iter().map(|&b| format!("{:?}", f64::from_bits(b))).collect(),
        };
        f.write_str(&elems.join(","))
    }
}

impl FromStr for Literal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a literal such as i64[2]:1,0");
        let (ty, elems) = s.split_once(':').ok_or_else(bad)?;
        let (dt, dims) = ty.strip_suffix(']').and_then(|t| t.split_once('[')).ok_or_else(bad)?;
        let dtype = DType::from_name(dt).filter(|d| literal_dtype(*d)).ok_or_else(bad)?;
        let shape: Vec<usize> = if dims.is_empty() {
            vec![]
        } else {
            dims.split(',').map(|d| d.parse::<usize>().map_err(|_| bad())).collect::<Result<_, _>>()?
        };
        let parts: Vec<&str> = if elems.is_empty() { vec![] } else { elems.split(',').collect() };
        if parts.len() != shape.iter().product::<usize>() || parts.len() > MAX_LITERAL {
            return Err(format!("'{s}': the number of elements does not match the shape"));
        }
        let data = if dtype == DType::F32 || dtype == DType::F64 {
            let mut v = Vec::with_capacity(parts.len());
            for p in parts {
                let x: f64 = p.parse().map_err(|_| bad())?;
                v.push(if dtype == DType::F32 { (x as f32 as f64).to_bits() } else { x.to_bits() });
            }
            LitData::Float(v)
        } else {
            LitData::Int(parts.iter().map(|p| p.parse::<i64>().map_err(|_| bad())).collect::<Result<_, _>>()?)
        };
        Ok(Literal { dtype, shape, data })
    }
}

/// What lowering a node needs to know about its children: the analysis
/// answers for e-classes, the lift for its own expressions.
pub trait LiteralSource {
    /// The literal value of child `id`, if it is a known small constant.
    fn literal(&self, id: Id) -> Option<Literal>;
    /// True when child `id` is `none` (an absent optional operand).
    fn is_none(&self, id: Id) -> bool;
}

/// A node lowered to the IR: the op and its data operands by input port
/// (`None` for an absent optional input).
#[derive(Clone, Debug, PartialEq)]
pub struct Lowered {
    /// The IR op, attributes filled in from literal children.
    pub op: Op,
    /// Data operands by input port.
    pub inputs: Vec<Option<Id>>,
}

fn int_attr(src: &dyn LiteralSource, id: Id, what: &str) -> Result<i64, String> {
    let l = src.literal(id).ok_or_else(|| format!("the {what} is not a constant"))?;
    match l.as_ints() {
        Some([v]) => Ok(*v),
        _ => Err(format!("the {what} {l} is not one integer")),
    }
}

fn ints_attr(src: &dyn LiteralSource, id: Id, what: &str) -> Result<Vec<i64>, String> {
    let l = src.literal(id).ok_or_else(|| format!("the {what} is not a constant"))?;
    l.as_ints().map(|v| v.to_vec()).ok_or_else(|| format!("the {what} {l} is not integers"))
}

/// Gemm's attributes from its `[alpha, beta, transA, transB]` literal.
pub fn gemm_attrs(src: &dyn LiteralSource, id: Id) -> Result<Gemm, String> {
    let l = src.literal(id).ok_or_else(|| "Gemm's attributes are not a constant".to_string())?;
    match l.to_f64s().as_slice() {
        [alpha, beta, ta, tb] => {
            Ok(Gemm { alpha: *alpha as f32, beta: *beta as f32, trans_a: *ta != 0.0, trans_b: *tb != 0.0 })
        }
        _ => Err(format!("Gemm's attribute literal {l} does not have four elements")),
    }
}

/// The `f64[4]` literal holding Gemm's attributes.
pub fn gemm_literal(g: &Gemm) -> Literal {
    let v = [g.alpha as f64, g.beta as f64, g.trans_a as u8 as f64, g.trans_b as u8 as f64];
    Literal { dtype: DType::F64, shape: vec![4], data: LitData::Float(v.iter().map(|x| x.to_bits()).collect()) }
}

impl TensorLang {
    /// Lowers a node to an IR op with its data operands. Leaves and `none`
    /// have no IR op and give an error, as do nodes whose attribute children
    /// are not literals (which only a faulty rule could build). `ops` is the
    /// side table of `(op ...)` nodes.
    pub fn to_ir(&self, ops: &[Op], src: &dyn LiteralSource) -> Result<Lowered, String> {
        let some = |ids: &[Id]| ids.iter().map(|&i| Some(i)).collect::<Vec<_>>();
        let (op, inputs) = match self {
            TensorLang::Add(c) => (Op::Binary(BinaryOp::Add), some(c)),
            TensorLang::Sub(c) => (Op::Binary(BinaryOp::Sub), some(c)),
            TensorLang::Mul(c) => (Op::Binary(BinaryOp::Mul), some(c)),
            TensorLang::Div(c) => (Op::Binary(BinaryOp::Div), some(c)),
            TensorLang::Pow(c) => (Op::Binary(BinaryOp::Pow), some(c)),
            TensorLang::Neg(x) => (Op::Unary(UnaryOp::Neg), some(&[*x])),
            TensorLang::Sqrt(x) => (Op::Unary(UnaryOp::Sqrt), some(&[*x])),
            TensorLang::Recip(x) => (Op::Unary(UnaryOp::Reciprocal), some(&[*x])),
            TensorLang::Exp(x) => (Op::Unary(UnaryOp::Exp), some(&[*x])),
            TensorLang::Identity(x) => (Op::Identity, some(&[*x])),
            TensorLang::MatMul(c) => (Op::MatMul, some(c)),
            TensorLang::Gemm([attrs, a, b, c]) => {
                (Op::Gemm(gemm_attrs(src, *attrs)?), vec![Some(*a), Some(*b), self.optional(*c, src)])
            }
            TensorLang::Transpose([x, perm]) => {
                let perm = ints_attr(src, *perm, "permutation")?;
                (Op::Transpose(Transpose { perm: Some(perm) }), some(&[*x]))
            }
            TensorLang::Reshape(c) => (Op::Reshape(Reshape { allowzero: false }), some(c)),
            TensorLang::Unsqueeze(c) => (Op::Unsqueeze, some(c)),
            TensorLang::Squeeze([x, axes]) => (Op::Squeeze, vec![Some(*x), self.optional(*axes, src)]),
            TensorLang::Concat(c) => {
                let (axis, xs) = c.split_first().ok_or("concat has no axis")?;
                (Op::Concat(Concat { axis: int_attr(src, *axis, "concat axis")? }), some(xs))
            }
            TensorLang::Slice([x, starts, ends, axes, steps]) => (
                Op::Slice,
                vec![Some(*x), Some(*starts), Some(*ends), self.optional(*axes, src), self.optional(*steps, src)],
            ),
            TensorLang::ReduceSum([x, axes, flags]) | TensorLang::ReduceMean([x, axes, flags]) => {
                let kind = if matches!(self, TensorLang::ReduceSum(_)) { ReduceKind::Sum } else { ReduceKind::Mean };
                let f = ints_attr(src, *flags, "reduction flags")?;
                let [keep, noop] = f.as_slice() else {
                    return Err(format!("reduction flags {f:?} are not two integers"));
                };
                let attrs = ReduceAttrs { keepdims: *keep != 0, noop_with_empty_axes: *noop != 0 };
                (Op::Reduce(Reduce { kind, attrs }), vec![Some(*x), self.optional(*axes, src)])
            }
            TensorLang::Softmax([x, axis]) => {
                (Op::Softmax(AxisAttr { axis: int_attr(src, *axis, "softmax axis")? }), some(&[*x]))
            }
            TensorLang::Where(c) => (Op::Where, some(c)),
            TensorLang::Cast([x, to]) => {
                let code = int_attr(src, *to, "cast target")?;
                let to = i32::try_from(code)
                    .ok()
                    .and_then(DType::from_onnx_code)
                    .ok_or_else(|| format!("{code} is not an ONNX dtype code"))?;
                (Op::Cast(Cast { to, saturate: true, round_mode: RoundMode::Up }), some(&[*x]))
            }
            TensorLang::Other(OpRef(k), xs) => {
                let op = ops.get(*k as usize).ok_or_else(|| format!("op{k} is not in the op table"))?.clone();
                (op, xs.iter().map(|&x| self.optional(x, src)).collect())
            }
            TensorLang::None | TensorLang::Lit(_) | TensorLang::Leaf(_) => {
                return Err(format!("'{self}' is a leaf, not an operation"));
            }
        };
        Ok(Lowered { op, inputs })
    }

    fn optional(&self, id: Id, src: &dyn LiteralSource) -> Option<Id> {
        if src.is_none(id) { None } else { Some(id) }
    }

    /// The children that are data operands (not attribute literals), in
    /// operand order; optional ones may be `none`.
    pub fn data_children(&self) -> Vec<Id> {
        match self {
            TensorLang::Gemm([_, a, b, c]) => vec![*a, *b, *c],
            TensorLang::Transpose([x, _])
            | TensorLang::Softmax([x, _])
            | TensorLang::Cast([x, _])
            | TensorLang::ReduceSum([x, _, _])
            | TensorLang::ReduceMean([x, _, _]) => vec![*x],
            TensorLang::Concat(c) => c[1..].to_vec(),
            _ => egg::Language::children(self).to_vec(),
        }
    }

    /// True for the leaf kinds.
    pub fn is_leaf_kind(&self) -> bool {
        matches!(self, TensorLang::None | TensorLang::Lit(_) | TensorLang::Leaf(_))
    }
}

//! Shape and type inference for every op, keeping symbolic dims symbolic.
//!
//! [`infer_shapes`] walks a graph in topological order and sets the type of
//! every node output, recursing into body graphs. [`infer_node`] and
//! [`infer_node_facts`] run the rule of a single op, for passes that build
//! nodes. The rules follow the ONNX specification of the latest opset, with
//! inputs in sharc's normalised form (reduce axes, split sizes, squeeze axes,
//! pads and slice parameters are inputs, never attributes).
//!
//! # Symbolic dims
//!
//! A dim is [`Dim::Fixed`] or [`Dim::Sym`]. Inference computes with
//! [`Expr`]essions over symbols (see [`symbolic`]) and writes a derived dim
//! back as a `Dim::Sym` holding the expression's canonical text: `batch*seq`,
//! `seq-1`, `(h+1)//2`, `min(512, seq)`, `bcast(a, b)`. Equal expressions
//! always print identically, and a later run reads the text back into the same
//! expression, so derived dims compare equal wherever they are equal as
//! polynomials. `Dim` itself is unchanged.
//!
//! Comparisons assume that every symbol is a size in `[0, 2^62)`; nothing else
//! is assumed. A symbolic value cast to a narrower integer type keeps its
//! expression (the model relies on it fitting).
//!
//! # Shape values
//!
//! Besides types, inference tracks the values of small integer tensors
//! ([`SymTensor`], each element an expression) through `Shape`, `Gather`,
//! `Slice`, `Concat`, `Unsqueeze`, `Squeeze`, `Cast`, integer arithmetic,
//! comparisons, `Where`, `Constant`, `ConstantOfShape`, `Reshape`, `Range`,
//! `Expand` and friends, and uses them for `Reshape`, `Expand`, `Range`,
//! `ConstantOfShape`, `Slice`, `Tile`, `Pad`, `TopK`, `OneHot`, `Resize`,
//! and every other op whose output shape depends on an input's values.
//! Constants and (small) weights are known values too.
//!
//! # What cannot be decided
//!
//! A dim that no rule can determine becomes a *fresh* symbol named
//! `unk__<value>_<k>` after the value it belongs to (deterministic, so a second
//! run produces the same names); a rank that cannot be determined leaves the
//! shape unranked. Broadcasting two different symbols gives `bcast(a, b)`,
//! which is exact (the one that is not 1) and never an error: ONNX only
//! requires them to agree at run time.
//!
//! # Existing types
//!
//! Inference never destroys information. For each output, the inferred type is
//! merged with the type already on the value:
//!
//! - unknown parts of either side take the other side's knowledge;
//! - a fixed dim beats a symbol; two different fixed dims, different dtypes,
//!   ranks or kinds are a conflict, reported as an [`InferError`] naming the
//!   node, op and both types;
//! - between two symbols, the inferred one wins (it is derived from the graph's
//!   inputs, so it relates to other dims), unless it is a fresh symbol, which
//!   says nothing: then the existing one stays.
//!
//! Because of this merge, running inference twice gives the same graph.

mod control;
mod elementwise;
mod misc;
mod movement;
mod nn;
mod reduce;
pub mod symbolic;
mod value;

pub use symbolic::{Atom, Expr};
pub use value::{MAX_TRACKED, SymData, SymTensor};

use crate::{DType, Dim, Graph, NodeId, Op, Shape, Tensor, TensorType, Type, ValueRef};
use std::collections::HashMap;
use std::fmt;

/// Prefix of the symbols inference invents for dims it cannot determine.
pub const FRESH_PREFIX: &str = "unk__";

/// Why inference failed: the node (its name, or its first output's name), the
/// op, and what is wrong, including the offending types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InferError {
    /// The node's name, or its first output's name; body nodes are prefixed
    /// with the owning node's label and a `/`.
    pub node: String,
    /// The op type.
    pub op: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for InferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node '{}' ({}): {}", self.node, self.op, self.message)
    }
}

impl std::error::Error for InferError {}

/// What one run of [`infer_shapes`] found, counted over every node output
/// in the graph and its bodies (graph inputs, weights and constants
/// included).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InferStats {
    /// Nodes visited (sources included).
    pub nodes: usize,
    /// Node outputs visited.
    pub values: usize,
    /// Outputs whose type this run changed.
    pub changed: usize,
    /// Outputs that are tensors of known dtype.
    pub known_dtype: usize,
    /// Tensors whose rank is known (every dim fixed or symbolic).
    pub known_shape: usize,
    /// Tensors of known rank with no fresh (`unk__`) symbol in any dim.
    pub exact_shape: usize,
    /// Tensors whose dims are all fixed.
    pub fixed_shape: usize,
    /// Outputs whose type is still [`Type::Unknown`].
    pub unknown: usize,
}

impl fmt::Display for InferStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} values: {} known dtype, {} known shape ({} exact, {} fixed), {} unknown, {} changed",
            self.values,
            self.known_dtype,
            self.known_shape,
            self.exact_shape,
            self.fixed_shape,
            self.unknown,
            self.changed
        )
    }
}

/// What is known about a value: its type and, for small tensors, its
/// elements.
#[derive(Clone, Debug, PartialEq)]
pub struct Fact {
    /// The type.
    pub ty: Type,
    /// The elements, when known.
    pub value: Option<SymTensor>,
}

impl Fact {
    /// A fact with a type only.
    pub fn of_type(ty: Type) -> Fact {
        Fact { ty, value: None }
    }

    /// A fact for a known value; the type follows from it.
    pub fn of_value(v: SymTensor) -> Fact {
        Fact { ty: Type::tensor(v.dtype, Shape::fixed(&v.shape)), value: Some(v) }
    }

    /// A fact for a literal tensor.
    pub fn of_tensor(t: &Tensor) -> Fact {
        Fact { ty: Type::tensor(t.dtype(), Shape::fixed(t.shape())), value: SymTensor::from_tensor(t) }
    }

    fn unknown() -> Fact {
        Fact::of_type(Type::Unknown)
    }
}

/// Result of one op rule: a message without the node label, which the caller
/// adds.
pub(crate) type RuleResult = Result<Vec<Fact>, String>;

/// Makes the fresh symbols of one node: `unk__<scope>_<output name>_<k>`,
/// numbered in the order the rule asks for them, so repeated runs agree.
pub(crate) struct Namer {
    scope: String,
    names: Vec<String>,
    counter: usize,
    /// The symbols made so far, which the merge treats as "nothing known".
    pub made: Vec<String>,
}

impl Namer {
    pub(crate) fn new(scope: &str, names: &[String]) -> Namer {
        Namer { scope: scope.to_string(), names: names.to_vec(), counter: 0, made: Vec::new() }
    }

    /// A new symbol for a dim of output `port`.
    pub(crate) fn fresh(&mut self, port: usize) -> Expr {
        let base = self.names.get(port).or_else(|| self.names.first()).map(String::as_str).unwrap_or("v");
        let base = if self.scope.is_empty() { sanitize(base) } else { sanitize(&format!("{}_{base}", self.scope)) };
        let name = format!("{FRESH_PREFIX}{base}_{}", self.counter);
        self.counter += 1;
        self.made.push(name.clone());
        Expr::sym(name)
    }

    /// True when `d` is exactly one of this namer's symbols.
    pub(crate) fn is_own(&self, d: &Dim) -> bool {
        matches!(d, Dim::Sym(s) if self.made.contains(s))
    }
}

/// Everything an op rule sees: the op, facts about its inputs, how many
/// outputs the node has, and a source of fresh symbols.
pub(crate) struct OpCx<'a> {
    pub op: &'a Op,
    pub inputs: &'a [Option<Fact>],
    pub num_outputs: usize,
    pub namer: Namer,
}

fn sanitize(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if out.is_empty() {
        out.push('v');
    }
    out
}

/// Renders a shape given as expressions, for error messages.
pub(crate) fn show(shape: &[Expr]) -> String {
    let parts: Vec<String> = shape.iter().map(|e| e.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

impl<'a> OpCx<'a> {
    pub(crate) fn new(op: &'a Op, inputs: &'a [Option<Fact>], names: &[String], scope: &str) -> OpCx<'a> {
        OpCx { op, inputs, num_outputs: names.len(), namer: Namer::new(scope, names) }
    }

    /// The fact for input `i`, if connected.
    pub fn input(&self, i: usize) -> Option<&Fact> {
        self.inputs.get(i).and_then(|f| f.as_ref())
    }

    /// True when input `i` is connected.
    pub fn has(&self, i: usize) -> bool {
        self.input(i).is_some()
    }

    /// Number of input ports (trailing empty ones not counted).
    pub fn num_inputs(&self) -> usize {
        self.inputs.iter().rposition(|f| f.is_some()).map_or(0, |p| p + 1)
    }

    /// The type of input `i` (unknown when absent).
    pub fn ty(&self, i: usize) -> Type {
        self.input(i).map_or(Type::Unknown, |f| f.ty.clone())
    }

    /// The dtype of input `i`, if it is a tensor of known dtype.
    pub fn dtype(&self, i: usize) -> Option<DType> {
        self.input(i).and_then(|f| f.ty.dtype())
    }

    /// The shape of input `i` as expressions, if its rank is known.
    pub fn shape(&self, i: usize) -> Option<Vec<Expr>> {
        self.input(i).and_then(|f| f.ty.shape()).map(|s| s.dims().iter().map(Expr::from_dim).collect())
    }

    /// The rank of input `i`, if known.
    pub fn rank(&self, i: usize) -> Option<usize> {
        self.input(i).and_then(|f| f.ty.shape()).map(|s| s.rank())
    }

    /// The known elements of input `i`.
    pub fn value(&self, i: usize) -> Option<&SymTensor> {
        self.input(i).and_then(|f| f.value.as_ref())
    }

    /// The elements of input `i`, if all are integer constants.
    pub fn ints(&self, i: usize) -> Option<Vec<i64>> {
        self.value(i).and_then(SymTensor::as_ints)
    }

    /// The elements of input `i` as expressions.
    pub fn exprs(&self, i: usize) -> Option<Vec<Expr>> {
        self.value(i).and_then(|v| v.exprs()).map(|e| e.to_vec())
    }

    /// The single element of input `i` (a scalar or one-element tensor).
    pub fn scalar_expr(&self, i: usize) -> Option<Expr> {
        let v = self.value(i)?;
        if v.len() != 1 {
            return None;
        }
        v.exprs().map(|e| e[0].clone())
    }

    /// The single element of input `i` as a number.
    pub fn scalar_f64(&self, i: usize) -> Option<f64> {
        let v = self.value(i)?;
        if v.len() != 1 {
            return None;
        }
        v.as_f64s().map(|e| e[0])
    }

    /// A new symbol for a dim of output `port` that no rule can determine.
    pub fn fresh(&mut self, port: usize) -> Expr {
        self.namer.fresh(port)
    }

    /// A shape of fresh symbols.
    pub fn fresh_shape(&mut self, port: usize, rank: usize) -> Vec<Expr> {
        (0..rank).map(|_| self.fresh(port)).collect()
    }

    /// The shape of input `i`, or an error when its rank is known and not
    /// one of `ranks`.
    pub fn shape_of_rank(&self, i: usize, what: &str, ok: impl Fn(usize) -> bool) -> Result<Option<Vec<Expr>>, String> {
        match self.shape(i) {
            Some(s) if !ok(s.len()) => {
                Err(format!("{what} has rank {} (shape {}), which is not allowed", s.len(), show(&s)))
            }
            s => Ok(s),
        }
    }
}

/// A tensor type from a dtype and shape in expression form. An unknown dtype
/// makes the whole type unknown (a [`Type`] cannot hold a shape without one).
pub(crate) fn tensor_type(dtype: Option<DType>, shape: Option<&[Expr]>) -> Result<Type, String> {
    let Some(dtype) = dtype else {
        return Ok(Type::Unknown);
    };
    match shape {
        None => Ok(Type::Tensor(TensorType::unranked(dtype))),
        Some(s) => {
            let mut dims = Vec::with_capacity(s.len());
            for e in s {
                dims.push(
                    e.to_dim().ok_or_else(|| format!("the output would have a negative dim {e} in {}", show(s)))?,
                );
            }
            Ok(Type::tensor(dtype, dims))
        }
    }
}

/// A fact for a tensor output.
pub(crate) fn out(dtype: Option<DType>, shape: Option<Vec<Expr>>) -> Result<Fact, String> {
    Ok(Fact::of_type(tensor_type(dtype, shape.as_deref())?))
}

/// A fact for a tensor output with known elements.
pub(crate) fn out_value(
    dtype: Option<DType>,
    shape: Option<Vec<Expr>>,
    value: Option<SymTensor>,
) -> Result<Fact, String> {
    let mut f = out(dtype, shape)?;
    if let Some(v) = value
        && Some(v.dtype) == f.ty.dtype()
        && f.ty.shape().and_then(|s| s.as_fixed()).as_deref() == Some(v.shape.as_slice())
    {
        f.value = Some(v);
    }
    Ok(f)
}

/// Counts a negative axis from the end of a rank, without overflowing on
/// absurd attribute values.
pub(crate) fn from_end(axis: i64, rank: i64) -> i64 {
    if axis < 0 { axis.saturating_add(rank) } else { axis }
}

/// Normalises an axis against a rank (`-1` is the last dim).
pub(crate) fn norm_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = from_end(axis, r);
    if a < 0 || a >= r {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(a as usize)
}

/// Normalises a list of axes, rejecting duplicates.
pub(crate) fn norm_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, String> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = norm_axis(a, rank)?;
        if out.contains(&n) {
            return Err(format!("axis {a} is listed twice in {axes:?}"));
        }
        out.push(n);
    }
    Ok(out)
}

/// Runs the rule of a non-control op.
fn run_rule(cx: &mut OpCx) -> RuleResult {
    match cx.op {
        Op::Input => Ok(vec![Fact::unknown()]),
        Op::Weight(_) => Ok(vec![Fact::unknown()]),
        Op::Constant(t) => Ok(vec![Fact::of_tensor(t)]),
        Op::Unary(_) | Op::Binary(_) | Op::Variadic(_) | Op::Where | Op::Clip => elementwise::infer(cx),
        Op::Cast(_) | Op::CastLike(_) | Op::BitCast(_) => elementwise::infer(cx),
        Op::Reduce(_) | Op::ArgMax(_) | Op::ArgMin(_) => reduce::infer(cx),
        Op::MatMul
        | Op::MatMulInteger
        | Op::QLinearMatMul
        | Op::Gemm(_)
        | Op::Det
        | Op::Conv(_)
        | Op::ConvInteger(_)
        | Op::QLinearConv(_)
        | Op::ConvTranspose(_)
        | Op::DeformConv(_)
        | Op::MaxPool(_)
        | Op::AveragePool(_)
        | Op::LpPool(_)
        | Op::GlobalAveragePool
        | Op::GlobalMaxPool
        | Op::GlobalLpPool(_)
        | Op::MaxRoiPool(_)
        | Op::MaxUnpool(_)
        | Op::BatchNormalization(_)
        | Op::InstanceNormalization(_)
        | Op::LayerNormalization(_)
        | Op::GroupNormalization(_)
        | Op::RMSNormalization(_)
        | Op::LpNormalization(_)
        | Op::MeanVarianceNormalization(_)
        | Op::LRN(_)
        | Op::Softmax(_)
        | Op::LogSoftmax(_)
        | Op::Hardmax(_)
        | Op::Einsum(_)
        | Op::Attention(_)
        | Op::RotaryEmbedding(_)
        | Op::SwiGLU(_)
        | Op::LinearAttention(_)
        | Op::CausalConvWithState(_)
        | Op::RNN(_)
        | Op::GRU(_)
        | Op::LSTM(_)
        | Op::NegativeLogLikelihoodLoss(_)
        | Op::SoftmaxCrossEntropyLoss(_)
        | Op::GridSample(_)
        | Op::AffineGrid(_)
        | Op::RoiAlign(_)
        | Op::NonMaxSuppression(_)
        | Op::QuantizeLinear(_)
        | Op::DequantizeLinear(_)
        | Op::DynamicQuantizeLinear
        | Op::DFT(_)
        | Op::STFT(_)
        | Op::HannWindow(_)
        | Op::HammingWindow(_)
        | Op::BlackmanWindow(_)
        | Op::MelWeightMatrix(_) => nn::infer(cx),
        Op::Expand
        | Op::Identity
        | Op::Size
        | Op::Tile
        | Op::NonZero
        | Op::Slice
        | Op::Squeeze
        | Op::Unsqueeze
        | Op::Reshape(_)
        | Op::Transpose(_)
        | Op::Flatten(_)
        | Op::Concat(_)
        | Op::Split(_)
        | Op::Gather(_)
        | Op::GatherElements(_)
        | Op::GatherND(_)
        | Op::ScatterElements(_)
        | Op::ScatterND(_)
        | Op::Pad(_)
        | Op::Shape(_)
        | Op::ConstantOfShape(_)
        | Op::Range(_)
        | Op::Dropout(_)
        | Op::Trilu(_)
        | Op::OneHot(_)
        | Op::TopK(_)
        | Op::Compress(_)
        | Op::ReverseSequence(_)
        | Op::DepthToSpace(_)
        | Op::SpaceToDepth(_)
        | Op::EyeLike(_)
        | Op::CumSum(_)
        | Op::CumProd(_)
        | Op::Unique(_)
        | Op::CenterCropPad(_)
        | Op::Col2Im(_)
        | Op::TensorScatter(_)
        | Op::Resize(_) => movement::infer(cx),
        Op::RandomUniformLike(_)
        | Op::RandomNormalLike(_)
        | Op::RandomUniform(_)
        | Op::RandomNormal(_)
        | Op::Multinomial(_)
        | Op::Bernoulli(_)
        | Op::StringSplit(_)
        | Op::StringNormalizer(_)
        | Op::RegexFullMatch(_)
        | Op::StringConcat
        | Op::TfIdfVectorizer(_) => misc::infer(cx),
        Op::SequenceAt
        | Op::SequenceConstruct
        | Op::SequenceErase
        | Op::SequenceInsert
        | Op::SequenceLength
        | Op::OptionalGetElement
        | Op::OptionalHasElement
        | Op::SequenceEmpty(_)
        | Op::SplitToSequence(_)
        | Op::ConcatFromSequence(_)
        | Op::Optional(_) => control::infer_sequence(cx),
        // Bodies are handled by `control::infer_with_bodies`; reaching here
        // means the caller could not give them, so nothing is known.
        Op::If(_) | Op::Loop(_) | Op::Scan(_) | Op::SequenceMap(_) | Op::Opaque(_) => {
            Ok(vec![Fact::unknown(); cx.num_outputs])
        }
    }
}

/// Infers the output facts of one op from facts about its inputs. Body graphs
/// of control-flow ops are inferred on a copy. `outputs` are the output
/// names (their number is the node's output count; they name fresh symbols
/// and errors).
pub fn infer_node_facts(op: &Op, inputs: &[Option<Fact>], outputs: &[&str]) -> Result<Vec<Fact>, InferError> {
    let names: Vec<String> = outputs.iter().map(|s| s.to_string()).collect();
    let label = names.first().cloned().unwrap_or_default();
    let (facts, _) = infer_one(op, inputs, &names, &label, "", &mut InferStats::default())?;
    Ok(facts)
}

/// Infers the output types of one op (see [`infer_node_facts`]). `consts`
/// gives the values of inputs known to be constant; an input with a value
/// but no type takes the value's type.
pub fn infer_node(
    op: &Op,
    inputs: &[Option<Type>],
    consts: &[Option<&Tensor>],
    outputs: &[&str],
) -> Result<Vec<Type>, InferError> {
    let n = inputs.len().max(consts.len());
    let facts: Vec<Option<Fact>> = (0..n)
        .map(|i| {
            let ty = inputs.get(i).cloned().flatten();
            let c = consts.get(i).copied().flatten();
            match (ty, c) {
                (None, None) => None,
                (Some(t), None) => Some(Fact::of_type(t)),
                (None, Some(t)) => Some(Fact::of_tensor(t)),
                (Some(ty), Some(t)) => Some(Fact {
                    ty: if ty == Type::Unknown { Fact::of_tensor(t).ty } else { ty },
                    value: SymTensor::from_tensor(t),
                }),
            }
        })
        .collect();
    Ok(infer_node_facts(op, &facts, outputs)?.into_iter().map(|f| f.ty).collect())
}

/// Runs one op (with bodies on a copy). Returns the facts and the fresh
/// symbols made.
fn infer_one(
    op: &Op,
    inputs: &[Option<Fact>],
    names: &[String],
    label: &str,
    scope: &str,
    stats: &mut InferStats,
) -> Result<(Vec<Fact>, Vec<String>), InferError> {
    if !op.subgraphs().is_empty() || matches!(op, Op::If(_) | Op::Loop(_) | Op::Scan(_) | Op::SequenceMap(_)) {
        let mut copy = op.clone();
        return control::infer_with_bodies(&mut copy, inputs, names, label, scope, stats);
    }
    let mut cx = OpCx::new(op, inputs, names, scope);
    let mut facts = run_rule(&mut cx).map_err(|m| err_at(label, op, m))?;
    facts.resize(names.len(), Fact::unknown());
    Ok((facts, cx.namer.made))
}

pub(crate) fn err_at(label: &str, op: &Op, message: String) -> InferError {
    InferError { node: label.to_string(), op: op.op_type().to_string(), message }
}

fn node_label(g: &Graph, id: NodeId, scope: &str) -> String {
    let n = g.node(id);
    let own =
        if !n.name.is_empty() { n.name.clone() } else { n.outputs.first().map(|o| o.name.clone()).unwrap_or_default() };
    if scope.is_empty() { own } else { format!("{scope}/{own}") }
}

/// Sets the type of every node output in `g` and its bodies. See the
/// [module docs](self) for the rules and the merge with existing types.
pub fn infer_shapes(g: &mut Graph) -> Result<InferStats, InferError> {
    let mut stats = InferStats::default();
    infer_graph(g, &[], "", &mut stats)?;
    Ok(stats)
}

/// Infers a graph whose inputs and captures already carry their types;
/// `capture_values` gives known elements of captured values. Returns the
/// facts of the graph outputs.
pub(crate) fn infer_graph(
    g: &mut Graph,
    capture_values: &[Option<SymTensor>],
    scope: &str,
    stats: &mut InferStats,
) -> Result<Vec<Fact>, InferError> {
    let order = g.topo_order().map_err(|e| InferError {
        node: if scope.is_empty() { g.name.clone() } else { scope.to_string() },
        op: "graph".to_string(),
        message: e.to_string(),
    })?;
    let captures: HashMap<NodeId, Option<SymTensor>> =
        g.captures().iter().copied().zip(capture_values.iter().cloned().chain(std::iter::repeat(None))).collect();
    let mut facts: HashMap<ValueRef, Fact> = HashMap::new();
    for id in order {
        stats.nodes += 1;
        let label = node_label(g, id, scope);
        let names: Vec<String> = g.node(id).outputs.iter().map(|o| o.name.clone()).collect();
        let inferred: Vec<Fact>;
        let mut fresh: Vec<String> = Vec::new();
        match &g.node(id).op {
            Op::Input => {
                let ty = g.node(id).outputs.first().map_or(Type::Unknown, |o| o.ty.clone());
                let value = captures.get(&id).cloned().flatten();
                inferred = vec![Fact { ty, value }];
            }
            Op::Weight(w) => {
                let w = g
                    .weights
                    .get(*w)
                    .ok_or_else(|| err_at(&label, &Op::Weight(*w), format!("weight {w} is not in the store")))?;
                let ty = Type::tensor(w.dtype, Shape::fixed(&w.shape));
                let small = w.num_elements() <= MAX_TRACKED as u64;
                let value = if small { SymTensor::from_tensor(w.tensor()) } else { None };
                inferred = vec![Fact { ty, value }];
            }
            _ => {
                let inputs: Vec<Option<Fact>> = g
                    .node_inputs(id)
                    .into_iter()
                    .map(|v| v.map(|v| facts.get(&v).cloned().unwrap_or_else(Fact::unknown)))
                    .collect();
                if g.node(id).op.subgraphs().is_empty() {
                    let op = &g.node(id).op;
                    let (f, fr) = infer_one(op, &inputs, &names, &label, scope, stats)?;
                    inferred = f;
                    fresh = fr;
                } else {
                    // Take the op out so its bodies can be edited in place.
                    let mut op = std::mem::replace(&mut g.node_mut(id).op, Op::Identity);
                    let r = control::infer_with_bodies(&mut op, &inputs, &names, &label, scope, stats);
                    g.node_mut(id).op = op;
                    let (f, fr) = r?;
                    inferred = f;
                    fresh = fr;
                }
            }
        }
        let op_type = g.node(id).op.op_type().to_string();
        for (port, fact) in inferred.into_iter().enumerate().take(names.len()) {
            let existing = g.node(id).outputs[port].ty.clone();
            let merged = merge_type(&existing, &fact.ty, &fresh).map_err(|m| InferError {
                node: label.clone(),
                op: op_type.clone(),
                message: format!("output {port} ('{}'): {m}", names[port]),
            })?;
            stats.values += 1;
            count(&merged, stats);
            if merged != existing {
                stats.changed += 1;
                g.node_mut(id).outputs[port].ty = merged.clone();
            }
            let value = fact.value.filter(|v| {
                merged.dtype() == Some(v.dtype)
                    && merged.shape().and_then(|s| s.as_fixed()).as_deref() == Some(v.shape.as_slice())
            });
            facts.insert(ValueRef::new(id, port as u32), Fact { ty: merged, value });
        }
    }
    Ok(g.outputs().iter().map(|o| facts.get(&o.value).cloned().unwrap_or_else(Fact::unknown)).collect())
}

fn count(t: &Type, stats: &mut InferStats) {
    match t {
        Type::Unknown => stats.unknown += 1,
        Type::Tensor(tt) => {
            stats.known_dtype += 1;
            if let Some(s) = &tt.shape {
                stats.known_shape += 1;
                if !s.dims().iter().any(is_fresh_dim) {
                    stats.exact_shape += 1;
                }
                if s.is_fixed() {
                    stats.fixed_shape += 1;
                }
            }
        }
        Type::Sequence(_) | Type::Optional(_) => stats.known_dtype += 1,
    }
}

/// True when a dim is or contains a symbol invented by inference.
pub fn is_fresh_dim(d: &Dim) -> bool {
    match d {
        Dim::Fixed(_) => false,
        Dim::Sym(s) => s.contains(FRESH_PREFIX),
    }
}

/// Merges an inferred type into the existing one (see the module docs).
pub(crate) fn merge_type(existing: &Type, inferred: &Type, fresh: &[String]) -> Result<Type, String> {
    let conflict = || format!("inferred type {inferred} conflicts with the existing type {existing}");
    match (existing, inferred) {
        (_, Type::Unknown) => Ok(existing.clone()),
        (Type::Unknown, _) => Ok(inferred.clone()),
        (Type::Tensor(e), Type::Tensor(i)) => {
            if e.dtype != i.dtype {
                return Err(conflict());
            }
            let shape = match (&e.shape, &i.shape) {
                (None, s) | (s, None) => s.clone(),
                (Some(a), Some(b)) => {
                    if a.rank() != b.rank() {
                        return Err(conflict());
                    }
                    let mut dims = Vec::with_capacity(a.rank());
                    for (x, y) in a.dims().iter().zip(b.dims()) {
                        dims.push(merge_dim(x, y, fresh).ok_or_else(conflict)?);
                    }
                    Some(Shape(dims))
                }
            };
            Ok(Type::Tensor(TensorType { dtype: e.dtype, shape }))
        }
        (Type::Sequence(e), Type::Sequence(i)) => {
            Ok(Type::Sequence(Box::new(merge_type(e, i, fresh).map_err(|_| conflict())?)))
        }
        (Type::Optional(e), Type::Optional(i)) => {
            Ok(Type::Optional(Box::new(merge_type(e, i, fresh).map_err(|_| conflict())?)))
        }
        _ => Err(conflict()),
    }
}

fn merge_dim(existing: &Dim, inferred: &Dim, fresh: &[String]) -> Option<Dim> {
    match (existing, inferred) {
        (Dim::Fixed(a), Dim::Fixed(b)) => (a == b).then(|| existing.clone()),
        (Dim::Fixed(a), Dim::Sym(_)) | (Dim::Sym(_), Dim::Fixed(a)) => {
            let sym = if let Dim::Sym(_) = existing { existing } else { inferred };
            // A symbolic expression that cannot take this value is a conflict.
            let e = Expr::from_dim(sym);
            match i64::try_from(*a) {
                Ok(v) if e.cmp_sym(&Expr::int(v)).is_some_and(|o| o != std::cmp::Ordering::Equal) => None,
                _ => Some(Dim::Fixed(*a)),
            }
        }
        (Dim::Sym(_), Dim::Sym(s)) => {
            if fresh.iter().any(|f| f == s) {
                Some(existing.clone())
            } else {
                Some(inferred.clone())
            }
        }
    }
}

/// Joins two types that a value may have (the branches of an `If`, the
/// iterations of a loop): equal parts stay, and so do dims that already are
/// this namer's symbols (which keeps loop widening finite); other differing
/// dims become fresh symbols of output `port`, and differing ranks leave the
/// shape unranked. `None` when the dtypes or kinds differ.
pub(crate) fn join_types(a: &Type, b: &Type, namer: &mut Namer, port: usize) -> Option<Type> {
    match (a, b) {
        (Type::Unknown, _) | (_, Type::Unknown) => Some(Type::Unknown),
        (Type::Tensor(x), Type::Tensor(y)) => {
            if x.dtype != y.dtype {
                return None;
            }
            let shape = match (&x.shape, &y.shape) {
                (Some(p), Some(q)) if p.rank() == q.rank() => Some(Shape(
                    p.dims()
                        .iter()
                        .zip(q.dims())
                        .map(|(d, e)| {
                            if d == e || namer.is_own(d) { d.clone() } else { Dim::Sym(namer.fresh(port).to_string()) }
                        })
                        .collect(),
                )),
                _ => None,
            };
            Some(Type::Tensor(TensorType { dtype: x.dtype, shape }))
        }
        (Type::Sequence(x), Type::Sequence(y)) => Some(Type::Sequence(Box::new(join_types(x, y, namer, port)?))),
        (Type::Optional(x), Type::Optional(y)) => Some(Type::Optional(Box::new(join_types(x, y, namer, port)?))),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers for the family tests: build a graph, infer, read types back.
    use super::*;
    use crate::ValueInfo;

    /// A tensor type from a dtype and dims written as text (`"batch"`, `"4"`,
    /// `"batch*seq"`).
    pub fn t(dtype: DType, dims: &[&str]) -> Type {
        Type::tensor(
            dtype,
            dims.iter().map(|d| d.parse::<u64>().map(Dim::Fixed).unwrap_or_else(|_| Dim::sym(*d))).collect::<Vec<_>>(),
        )
    }

    /// Infers and returns the printed type of a value.
    pub fn ty_of(g: &Graph, v: ValueRef) -> String {
        g.value_type(v).to_string()
    }

    /// Adds a node with `n` outputs and returns them.
    pub fn node(g: &mut Graph, op: Op, ins: &[Option<ValueRef>], n: usize) -> Vec<ValueRef> {
        let outs: Vec<ValueInfo> = (0..n).map(|_| ValueInfo::new(g.fresh_name("v"), Type::Unknown)).collect();
        let id = g.add_node(op, "", ins, outs);
        (0..n).map(|p| ValueRef::new(id, p as u32)).collect()
    }

    /// An i64 1-D constant.
    pub fn ints(g: &mut Graph, v: &[i64]) -> ValueRef {
        g.add_constant("", Tensor::from_vec(&[v.len()], v.to_vec()))
    }

    /// An i64 scalar constant.
    pub fn scalar(g: &mut Graph, v: i64) -> ValueRef {
        g.add_constant("", Tensor::scalar(v))
    }

    /// Runs inference, panicking with the error.
    pub fn run(g: &mut Graph) -> InferStats {
        infer_shapes(g).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs inference and returns the error text.
    pub fn fails(g: &mut Graph) -> String {
        match infer_shapes(g) {
            Ok(_) => panic!("inference should fail"),
            Err(e) => e.to_string(),
        }
    }

    /// Infers one op on input types and returns the printed output types.
    pub fn one<const N: usize>(op: Op, ins: [Type; N], n: usize) -> Result<Vec<String>, String> {
        let inputs: Vec<Option<Type>> = ins.into_iter().map(Some).collect();
        let names: Vec<String> = (0..n).map(|i| format!("out{i}")).collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        infer_node(&op, &inputs, &[], &refs)
            .map(|v| v.iter().map(|t| t.to_string()).collect())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use crate::{BinaryOp, Weight};

    #[test]
    fn merge_policy() {
        let fixed = t(DType::F32, &["2", "3"]);
        let sym = t(DType::F32, &["batch", "3"]);
        // A fixed dim beats a symbol either way round.
        assert_eq!(merge_type(&fixed, &sym, &[]).unwrap(), fixed);
        assert_eq!(merge_type(&sym, &fixed, &[]).unwrap(), fixed);
        // Inferred symbols win unless fresh.
        let other = t(DType::F32, &["n", "3"]);
        assert_eq!(merge_type(&other, &sym, &[]).unwrap(), sym);
        let fresh = t(DType::F32, &["unk__x_0", "3"]);
        assert_eq!(merge_type(&other, &fresh, &["unk__x_0".into()]).unwrap(), other);
        // Unknown keeps what exists.
        assert_eq!(merge_type(&sym, &Type::Unknown, &[]).unwrap(), sym);
        let unranked = Type::Tensor(TensorType::unranked(DType::F32));
        assert_eq!(merge_type(&sym, &unranked, &[]).unwrap(), sym);
        // Conflicts.
        let e = merge_type(&fixed, &t(DType::F32, &["2", "4"]), &[]).unwrap_err();
        assert!(e.contains("f32[2, 4]") && e.contains("f32[2, 3]"), "{e}");
        assert!(merge_type(&fixed, &t(DType::I64, &["2", "3"]), &[]).is_err());
        assert!(merge_type(&fixed, &t(DType::F32, &["2"]), &[]).is_err());
        // seq+1 can never be 0.
        assert!(merge_type(&t(DType::F32, &["0"]), &t(DType::F32, &["seq+1"]), &[]).is_err());
    }

    #[test]
    fn driver_sets_types_and_is_idempotent() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", t(DType::F32, &["batch", "4"]));
        let w = g.add_weight(Weight::from_tensor("w", Tensor::from_vec(&[4, 2], vec![0.5f32; 8])));
        let y = g.add_op(Op::MatMul, &[x, w], Type::Unknown);
        let z = g.add_op(Op::Binary(BinaryOp::Add), &[y, x], Type::Unknown);
        g.add_output("z", z);
        // [batch, 2] + [batch, 4] cannot broadcast.
        let e = fails(&mut g);
        assert!(e.contains("Add") && e.contains("[batch, 2]") && e.contains("[batch, 4]"), "{e}");

        let mut g = Graph::new("g");
        let x = g.add_input("x", t(DType::F32, &["batch", "4"]));
        let w = g.add_weight(Weight::from_tensor("w", Tensor::from_vec(&[4, 2], vec![0.5f32; 8])));
        let y = g.add_op(Op::MatMul, &[x, w], Type::Unknown);
        g.add_output("y", y);
        let s1 = run(&mut g);
        assert_eq!(ty_of(&g, y), "f32[batch, 2]");
        assert!(s1.changed >= 1);
        let before = g.clone();
        let s2 = run(&mut g);
        assert_eq!(s2.changed, 0);
        assert!(g.structurally_equal(&before));
    }

    /// Derived dims survive the IR text format, and inference on the parsed
    /// graph recognises them (nothing changes).
    #[test]
    fn derived_dims_round_trip_through_text() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", t(DType::F32, &["batch", "seq", "8"]));
        let y = g.add_input("y", t(DType::F32, &["n", "1", "8"]));
        let a = g.add_op(Op::Binary(BinaryOp::Add), &[x, y], Type::Unknown);
        let s = g.add_constant("starts", Tensor::from_vec(&[1], vec![1i64]));
        let e = g.add_constant("ends", Tensor::from_vec(&[1], vec![i64::MAX]));
        let ax = g.add_constant("axes", Tensor::from_vec(&[1], vec![1i64]));
        let st = g.add_constant("steps", Tensor::from_vec(&[1], vec![2i64]));
        let sl = g.add_op(Op::Slice, &[a, s, e, ax, st], Type::Unknown);
        let shape = g.add_constant("shape", Tensor::from_vec(&[2], vec![-1i64, 8]));
        let r = g.add_op(Op::Reshape(crate::op::Reshape { allowzero: false }), &[sl, shape], Type::Unknown);
        g.add_output("r", r);
        run(&mut g);
        assert_eq!(ty_of(&g, a), "f32[\"bcast(batch, n)\", seq, 8]");
        // x[1::2] along seq: ceil((seq-1)/2) elements, none when seq is 0.
        assert_eq!(ty_of(&g, sl), "f32[\"bcast(batch, n)\", \"(max(0, seq-1)+1)//2\", 8]");
        let text = crate::text::print(&g);
        let mut back = crate::text::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(back.structurally_equal(&g), "{text}");
        assert_eq!(run(&mut back).changed, 0);
        assert_eq!(crate::text::print(&back), text);
    }

    #[test]
    fn small_weights_are_known_values() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", t(DType::F32, &["batch", "seq", "384"]));
        let shape = g.add_weight(Weight::from_tensor("shape", Tensor::from_vec(&[4], vec![0i64, 0, 12, -1])));
        let r = g.add_op(Op::Reshape(crate::op::Reshape { allowzero: false }), &[x, shape], Type::Unknown);
        g.add_output("r", r);
        run(&mut g);
        assert_eq!(ty_of(&g, r), "f32[batch, seq, 12, 32]");
    }

    #[test]
    fn opaque_outputs_keep_their_declared_types() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", t(DType::F32, &["n"]));
        let op =
            Op::Opaque(crate::Opaque { domain: "custom".into(), op_type: "Thing".into(), attrs: Default::default() });
        let declared = g.add_op(op.clone(), &[x], t(DType::F32, &["n", "2"]));
        let untyped = g.add_op(op, &[x], Type::Unknown);
        let y = g.add_op(Op::Unary(crate::UnaryOp::Relu), &[declared], Type::Unknown);
        g.add_output("y", y);
        let stats = run(&mut g);
        assert_eq!(ty_of(&g, declared), "f32[n, 2]");
        assert_eq!(ty_of(&g, untyped), "?");
        assert_eq!(ty_of(&g, y), "f32[n, 2]");
        assert_eq!(stats.unknown, 1);
    }

    #[test]
    fn existing_declared_types_conflict_is_reported() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", t(DType::F32, &["batch", "4"]));
        let y = g.add_op(Op::Unary(crate::UnaryOp::Relu), &[x], t(DType::F32, &["batch", "5"]));
        g.add_output("y", y);
        let e = fails(&mut g);
        assert!(e.contains("Relu") && e.contains("f32[batch, 4]") && e.contains("f32[batch, 5]"), "{e}");
    }

    #[test]
    fn per_node_api() {
        let out = one(Op::MatMul, [t(DType::F32, &["b", "3", "4"]), t(DType::F32, &["4", "5"])], 1).unwrap();
        assert_eq!(out, vec!["f32[b, 3, 5]"]);
        // Known constant inputs are used.
        let shape = Tensor::from_vec(&[2], vec![-1i64, 6]);
        let ty = infer_node(
            &Op::Reshape(crate::op::Reshape { allowzero: false }),
            &[Some(t(DType::F32, &["b", "3", "4"])), None],
            &[None, Some(&shape)],
            &["r"],
        )
        .unwrap();
        assert_eq!(ty[0].to_string(), "f32[\"2*b\", 6]");
    }
}

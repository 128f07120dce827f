//! The planner: from a specialised graph to a list of steps.
//!
//! Every value gets a home. Static f32 (and bool) values that native steps
//! produce live in the arena; weights and folded constants are used where
//! they lie; values the interpreter produces are run-time tensors. Shape-only
//! ops become *views* (an offset, a shape and strides over another value's
//! memory) instead of copies.
//!
//! Fusion groups are formed greedily in execution order: an elementwise or
//! row-reduction node joins the group of one of its producers when its
//! output covers the group's domain (or one value per row of it) and no node
//! outside the group has consumed a group value yet (which is exactly the
//! condition under which running the whole group at its last member's place
//! keeps the order valid).

use crate::kernel::{self, Expr, ExprId, InputSpec, InputType, KernelSpec, Kind, Level, OutputSpec};
use crate::matmul::MatMulSpec;
use crate::memory;
use crate::specialize::{Specialized, is_view_op, label};
use crate::{CompileError, CompileOptions};
use sharc_ir::op::{Gather, GeluApproximation, LayerNormalization};
use sharc_ir::{BinaryOp, DType, Graph, NodeId, Op, ReduceKind, Tensor, UnaryOp, ValueRef, VariadicOp, WeightId};
use std::collections::{HashMap, HashSet};

/// Where the bytes of a value live at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Loc {
    /// At this byte offset of the arena.
    Arena(usize),
    /// In a weight.
    Weight(WeightId),
    /// In a folded constant.
    Const(usize),
    /// In a run-time tensor (an input or a fallback result).
    Dyn(usize),
}

/// A strided window onto some memory: element `i` (a multi-index) is at
/// element offset `offset + Σ i_d strides_d` of `loc`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct View {
    pub loc: Loc,
    pub dtype: DType,
    pub offset: isize,
    pub shape: Vec<usize>,
    pub strides: Vec<isize>,
}

impl View {
    fn dense(loc: Loc, dtype: DType, shape: &[usize]) -> View {
        View { loc, dtype, offset: 0, shape: shape.to_vec(), strides: dense_strides(shape) }
    }

    /// True when the elements are laid out densely in row-major order.
    pub fn is_dense(&self) -> bool {
        self.strides == dense_strides(&self.shape) || self.numel() <= 1
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Row-major strides of a shape.
pub(crate) fn dense_strides(shape: &[usize]) -> Vec<isize> {
    let mut s = vec![0isize; shape.len()];
    let mut acc = 1isize;
    for d in (0..shape.len()).rev() {
        s[d] = acc;
        acc *= shape[d] as isize;
    }
    s
}

/// How a fallback node gets one of its inputs.
#[derive(Clone, Debug)]
pub(crate) enum TArg {
    /// A run-time tensor slot.
    Dyn(usize),
    /// A folded constant.
    Const(usize),
    /// A weight (decoded once on first use).
    Weight(WeightId),
}

/// One step of the plan.
// Steps live in one Vec built once per compile; boxing the large MatMul
// variant would add an indirection on the hot path for no memory that matters.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub(crate) enum Step {
    /// A fused kernel over `rows` rows; `args` are its inputs then outputs.
    Kernel { kernel: usize, args: Vec<View>, rows: usize, inner: usize, label: String },
    /// A (batched, strided) matrix product into a dense output, optionally
    /// followed by a fused kernel run on each block of output rows as soon
    /// as the block is computed (while it is still in cache).
    MatMul { spec: MatMulSpec, a: View, b: View, out: View, label: String, epilogue: Option<Epilogue> },
    /// Embedding lookup: rows of a 2-D f32 table picked by integer indices.
    GatherRows { table: View, indices: usize, out: View, label: String },
    /// A node run by the reference interpreter.
    Fallback { node: NodeId, label: String, args: Vec<Option<TArg>>, outs: Vec<Option<usize>> },
    /// Copies a static value into a run-time tensor (for a fallback consumer).
    Materialize { src: View, dst: usize },
}

impl Step {
    /// A short label for profiles.
    pub fn label(&self) -> String {
        match self {
            Step::Kernel { label, .. } => format!("fused {label}"),
            Step::MatMul { label, epilogue: None, .. } => format!("matmul {label}"),
            Step::MatMul { label, epilogue: Some(e), .. } => format!("matmul {label} + {}", e.label),
            Step::GatherRows { label, .. } => format!("gather {label}"),
            Step::Fallback { label, .. } => format!("fallback {label}"),
            Step::Materialize { .. } => "materialize".to_string(),
        }
    }
}

/// A fused kernel run as a matrix product's epilogue: its rows are the
/// product's output rows.
#[derive(Clone, Debug)]
pub(crate) struct Epilogue {
    pub kernel: usize,
    pub args: Vec<View>,
    pub label: String,
}

/// Where a graph output comes from.
#[derive(Clone, Debug)]
pub(crate) enum OutSrc {
    View(View),
    Dyn(usize),
    Const(usize),
    Weight(WeightId),
    /// A non-tensor value (sequence, optional) in a slot.
    Missing(String),
}

/// Counts that describe a plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanStats {
    /// Compute nodes in the specialised graph (not inputs, weights, constants).
    pub compute_nodes: usize,
    /// Nodes evaluated at compile time.
    pub folded_nodes: usize,
    /// Nodes that became free views.
    pub view_nodes: usize,
    /// Nodes computed by fused kernels.
    pub fused_nodes: usize,
    /// Fused kernels generated.
    pub kernels: usize,
    /// Matrix products run on the GEMM.
    pub matmuls: usize,
    /// Nodes run natively in other ways (gathers).
    pub other_native: usize,
    /// Nodes run by the interpreter.
    pub fallback_nodes: usize,
    /// Op types that fell back, with counts.
    pub fallback_ops: Vec<(String, usize)>,
    /// Size of the arena in bytes.
    pub arena_bytes: usize,
    /// Bytes the arena would need without reuse (sum of all buffers).
    pub arena_bytes_unshared: usize,
}

/// The executable plan.
pub(crate) struct Plan {
    pub steps: Vec<Step>,
    pub kernels: Vec<KernelSpec>,
    pub consts: Vec<Tensor>,
    pub dyn_slots: usize,
    /// Dynamic slot of each graph input.
    pub input_slots: Vec<usize>,
    pub outputs: Vec<OutSrc>,
    /// Run-time tensor slots to drop after each step.
    pub frees: Vec<Vec<usize>>,
    pub arena_bytes: usize,
    pub stats: PlanStats,
}

/// What the planner knows about a value.
#[derive(Clone, Debug, Default)]
struct Home {
    view: Option<View>,
    /// A run-time tensor holding it.
    dyn_slot: Option<usize>,
    konst: Option<usize>,
    weight: Option<WeightId>,
}

/// True when two stride lists address the same elements of a `dims`-shaped
/// domain: a dim of size 1 is never stepped along, so its stride does not
/// matter (broadcasting gives it 0, a dense layout its row size).
/// One kernel computing what `second` computes when the inputs of `second`
/// marked in `from_first` are the (single) output of `first`: `first`'s
/// inputs, then `second`'s other inputs in order; `second`'s outputs.
fn compose_kernels(first: &KernelSpec, second: &KernelSpec, from_first: &[bool]) -> KernelSpec {
    // `kernel_chain` checked that every input of `first` restrides.
    let mut inputs: Vec<InputSpec> = first
        .inputs
        .iter()
        .map(|x| InputSpec {
            ty: x.ty,
            strides: restride(&x.strides, &first.dims, &second.dims).unwrap_or_else(|| x.strides.clone()),
        })
        .collect();
    let mut input_index = vec![usize::MAX; second.inputs.len()];
    for (i, spec) in second.inputs.iter().enumerate() {
        if !from_first[i] {
            input_index[i] = inputs.len();
            inputs.push(spec.clone());
        }
    }
    let mut exprs = first.exprs.clone();
    let produced = first.outputs[0].expr;
    // Where each of `second`'s expressions went.
    let mut at = Vec::with_capacity(second.exprs.len());
    for e in &second.exprs {
        let m = |x: &ExprId| at[*x];
        let new = match e {
            Expr::Input(i) if from_first[*i] => {
                at.push(produced);
                continue;
            }
            Expr::Input(i) => Expr::Input(input_index[*i]),
            Expr::Const(c) => Expr::Const(*c),
            Expr::Unary(op, a) => Expr::Unary(*op, m(a)),
            Expr::Binary(op, a, b) => Expr::Binary(*op, m(a), m(b)),
            Expr::Cmp(op, a, b) => Expr::Cmp(*op, m(a), m(b)),
            Expr::Logic(op, a, b) => Expr::Logic(*op, m(a), m(b)),
            Expr::Not(a) => Expr::Not(m(a)),
            Expr::Select(c, a, b) => Expr::Select(m(c), m(a), m(b)),
            Expr::MaskToF32(a) => Expr::MaskToF32(m(a)),
            Expr::F32ToMask(a) => Expr::F32ToMask(m(a)),
            Expr::Reduce(op, a) => Expr::Reduce(*op, m(a)),
        };
        at.push(exprs.len());
        exprs.push(new);
    }
    let outputs = second.outputs.iter().map(|o| OutputSpec { expr: at[o.expr], level: o.level }).collect();
    KernelSpec { dims: second.dims.clone(), inputs, exprs, outputs }
}

/// An input's strides over domain `from` given over domain `to` (the same
/// rows of the same length, shaped differently), where that needs no copy:
/// a dense input stays dense, one broadcast along rows (a bias) or
/// everywhere (a scalar) stays so.
fn restride(strides: &[isize], from: &[usize], to: &[usize]) -> Option<Vec<isize>> {
    if from == to {
        return Some(strides.to_vec());
    }
    let zeros = |n: usize| vec![0isize; n];
    let (inner_from, inner_to) = (from.last().copied()?, to.last().copied()?);
    if same_layout(strides, &dense_strides(from), from) {
        Some(dense_strides(to))
    } else if strides.iter().all(|&x| x == 0) {
        Some(zeros(to.len()))
    } else if inner_from == inner_to
        && strides.last() == Some(&1)
        && strides[..strides.len() - 1].iter().zip(from).all(|(&x, &d)| x == 0 || d == 1)
    {
        let mut s = zeros(to.len());
        *s.last_mut()? = 1;
        Some(s)
    } else {
        None
    }
}

/// The arena buffers that graph outputs view: they keep their storage to
/// the end, so no fusion may make them disappear.
fn output_buffers(outputs: &[OutSrc]) -> HashSet<usize> {
    outputs
        .iter()
        .filter_map(|o| match o {
            OutSrc::View(View { loc: Loc::Arena(b), .. }) => Some(*b),
            _ => None,
        })
        .collect()
}

/// The one step other than `producer` that uses buffer `b`, if there is
/// exactly one.
fn only_other_user(users: &HashMap<usize, Vec<usize>>, b: usize, producer: usize) -> Option<usize> {
    match users.get(&b).map(|u| u.iter().filter(|&&s| s != producer).collect::<Vec<_>>()).as_deref() {
        Some([only]) => Some(**only),
        _ => None,
    }
}

fn same_layout(a: &[isize], b: &[isize], dims: &[usize]) -> bool {
    a.len() == dims.len()
        && b.len() == dims.len()
        && dims.iter().zip(a.iter().zip(b)).all(|(&d, (x, y))| d == 1 || x == y)
}

fn static_shape(g: &Graph, v: ValueRef) -> Option<(DType, Vec<usize>)> {
    let ty = g.value_type(v);
    Some((ty.dtype()?, ty.shape()?.as_fixed()?))
}

/// A fusion group under construction.
struct Group {
    dims: Vec<usize>,
    members: Vec<NodeId>,
    member_set: HashSet<NodeId>,
}

impl Group {
    fn row_dims(&self) -> Vec<usize> {
        let mut r = self.dims.clone();
        if let Some(l) = r.last_mut() {
            *l = 1;
        }
        r
    }
}

/// The fusible role of a node, from its op and types alone.
fn fusible(g: &Graph, sp: &Specialized, id: NodeId) -> Option<Vec<usize>> {
    let node = g.node(id);
    if node.outputs.len() != 1 {
        // LayerNormalization may declare mean/inv-std outputs; fuse it only
        // when they are unused.
        if !matches!(node.op, Op::LayerNormalization(_))
            || (1..node.outputs.len()).any(|p| g.is_used(ValueRef::new(id, p as u32)))
        {
            return None;
        }
    }
    let out = ValueRef::new(id, 0);
    let (odt, oshape) = static_shape(g, out)?;
    if oshape.is_empty() || oshape.iter().product::<usize>() == 0 {
        return None;
    }
    let ins = g.node_inputs(id);
    let in_types: Vec<Option<(DType, Vec<usize>)>> = ins.iter().map(|v| v.and_then(|v| static_shape(g, v))).collect();
    let all_f32 = |from: usize| in_types[from..].iter().all(|t| matches!(t, Some((DType::F32, _))));
    let konst = |i: usize| ins.get(i).copied().flatten().and_then(|v| sp.consts.get(&v));
    // Inputs must broadcast to the output without being larger than it.
    if in_types.iter().flatten().any(|(_, s)| s.len() > oshape.len()) {
        return None;
    }
    let ok = match &node.op {
        Op::Unary(UnaryOp::Not) => {
            in_types.iter().all(|t| matches!(t, Some((DType::Bool, _)))) && bool_used_by_fusible(g, out)
        }
        Op::Unary(u) => odt == DType::F32 && all_f32(0) && unary_supported(u),
        Op::Binary(b) => match b {
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::PRelu => {
                odt == DType::F32 && all_f32(0)
            }
            BinaryOp::Pow => {
                odt == DType::F32 && all_f32(0) && konst(1).and_then(scalar_f32).is_some_and(|p| pow_expr(p).is_some())
            }
            BinaryOp::Equal | BinaryOp::Less | BinaryOp::LessOrEqual | BinaryOp::Greater | BinaryOp::GreaterOrEqual => {
                all_f32(0) && bool_used_by_fusible(g, out)
            }
            BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => {
                in_types.iter().all(|t| matches!(t, Some((DType::Bool, _)))) && bool_used_by_fusible(g, out)
            }
            _ => false,
        },
        Op::Variadic(_) => odt == DType::F32 && all_f32(0) && !ins.is_empty(),
        Op::Where => odt == DType::F32 && matches!(in_types.first(), Some(Some((DType::Bool, _)))) && all_f32(1),
        Op::Clip => odt == DType::F32 && all_f32(0) && ins.iter().skip(1).flatten().all(|v| sp.consts.contains_key(v)),
        Op::Cast(c) => {
            let from = in_types.first().cloned().flatten().map(|t| t.0);
            match (from, c.to) {
                (Some(DType::F32), DType::F32) | (Some(DType::Bool), DType::F32) => true,
                (Some(DType::F32), DType::Bool) => bool_used_by_fusible(g, out),
                _ => false,
            }
        }
        Op::Reduce(r) => {
            odt == DType::F32
                && all_f32(0)
                && r.attrs.keepdims
                && matches!(
                    r.kind,
                    ReduceKind::Sum
                        | ReduceKind::Mean
                        | ReduceKind::Max
                        | ReduceKind::Min
                        | ReduceKind::SumSquare
                        | ReduceKind::L2
                )
                && reduces_last_axis(g, sp, id)
        }
        Op::Softmax(a) | Op::LogSoftmax(a) => odt == DType::F32 && all_f32(0) && is_last_axis(a.axis, oshape.len()),
        Op::LayerNormalization(LayerNormalization { axis, stash_type, .. }) => {
            odt == DType::F32 && all_f32(0) && is_last_axis(*axis, oshape.len()) && *stash_type == 1
        }
        _ => false,
    };
    if !ok {
        return None;
    }
    // The domain a member covers: reductions cover their input's shape.
    Some(match &node.op {
        Op::Reduce(_) => in_types[0].clone()?.1,
        _ => oshape,
    })
}

fn is_last_axis(axis: i64, rank: usize) -> bool {
    axis == -1 || (rank > 0 && axis == rank as i64 - 1)
}

fn reduces_last_axis(g: &Graph, sp: &Specialized, id: NodeId) -> bool {
    let Some(x) = g.node_input(id, 0) else { return false };
    let Some((_, shape)) = static_shape(g, x) else { return false };
    match g.node_input(id, 1) {
        None => shape.len() == 1,
        Some(a) => match sp.consts.get(&a).and_then(|t| t.to_i64_vec()) {
            Some(axes) => axes.len() == 1 && is_last_axis(axes[0], shape.len()),
            None => false,
        },
    }
}

fn unary_supported(u: &UnaryOp) -> bool {
    matches!(
        u,
        UnaryOp::Neg
            | UnaryOp::Abs
            | UnaryOp::Sqrt
            | UnaryOp::Reciprocal
            | UnaryOp::Exp
            | UnaryOp::Log
            | UnaryOp::Tanh
            | UnaryOp::Erf
            | UnaryOp::Sigmoid
            | UnaryOp::Floor
            | UnaryOp::Ceil
            | UnaryOp::Round
            | UnaryOp::Relu
            | UnaryOp::LeakyRelu { .. }
            | UnaryOp::Gelu { .. }
            | UnaryOp::Swish { .. }
            | UnaryOp::HardSigmoid { .. }
            | UnaryOp::HardSwish
            | UnaryOp::Softsign
            | UnaryOp::Elu { .. }
    )
}

/// A bool value may be fused only if everything that reads it is fusible
/// (kernels write f32 outputs only).
fn bool_used_by_fusible(g: &Graph, v: ValueRef) -> bool {
    if g.outputs().iter().any(|o| o.value == v) {
        return false;
    }
    g.users(v).iter().all(|(n, _)| {
        matches!(
            g.node(*n).op,
            Op::Where
                | Op::Cast(_)
                | Op::Unary(UnaryOp::Not)
                | Op::Binary(BinaryOp::And | BinaryOp::Or | BinaryOp::Xor)
        )
    })
}

fn scalar_f32(t: &Tensor) -> Option<f32> {
    let v = t.to_f64_vec()?;
    if v.len() == 1 { Some(v[0] as f32) } else { None }
}

/// Exponents that `Pow` fuses exactly.
fn pow_expr(p: f32) -> Option<&'static str> {
    Some(match p {
        1.0 => "x",
        2.0 => "x2",
        3.0 => "x3",
        0.5 => "sqrt",
        -1.0 => "recip",
        -0.5 => "rsqrt",
        _ => return None,
    })
}

/// Builds the plan.
pub(crate) fn build(sp: &Specialized, opts: &CompileOptions) -> Result<Plan, CompileError> {
    Planner::new(sp, opts).run()
}

struct Planner<'a> {
    sp: &'a Specialized,
    g: &'a Graph,
    opts: &'a CompileOptions,
    homes: HashMap<ValueRef, Home>,
    consts: Vec<Tensor>,
    const_index: HashMap<ValueRef, usize>,
    steps: Vec<Step>,
    kernels: Vec<KernelSpec>,
    dyn_slots: usize,
    /// Arena buffers: (size in bytes, producing step).
    buffers: Vec<usize>,
    buffer_def: Vec<usize>,
    /// The step that fills each run-time slot (0 for inputs).
    dyn_def: Vec<usize>,
    stats: PlanStats,
    fallback_ops: HashMap<String, usize>,
}

impl<'a> Planner<'a> {
    fn new(sp: &'a Specialized, opts: &'a CompileOptions) -> Planner<'a> {
        Planner {
            sp,
            g: &sp.graph,
            opts,
            homes: HashMap::new(),
            consts: Vec::new(),
            const_index: HashMap::new(),
            steps: Vec::new(),
            kernels: Vec::new(),
            dyn_slots: 0,
            buffers: Vec::new(),
            buffer_def: Vec::new(),
            dyn_def: Vec::new(),
            stats: PlanStats::default(),
            fallback_ops: HashMap::new(),
        }
    }

    fn new_dyn(&mut self) -> usize {
        self.dyn_def.push(self.steps.len());
        self.dyn_slots += 1;
        self.dyn_slots - 1
    }

    fn new_buffer(&mut self, dtype: DType, shape: &[usize]) -> Loc {
        let bytes = shape.iter().product::<usize>() * dtype.storage_bytes(1).unwrap_or(4);
        self.buffers.push(bytes);
        self.buffer_def.push(self.steps.len());
        Loc::Arena(self.buffers.len() - 1)
    }

    fn run(mut self) -> Result<Plan, CompileError> {
        let g = self.g;
        let mut input_slots = Vec::new();
        for (i, &id) in g.inputs().iter().enumerate() {
            let slot = self.new_dyn();
            input_slots.push(slot);
            let v = ValueRef::new(id, 0);
            let mut home = Home { dyn_slot: Some(slot), ..Home::default() };
            if let Some((dt, shape)) = static_shape(g, v)
                && matches!(dt, DType::F32 | DType::Bool)
                && shape == self.sp.input_shapes[i]
            {
                home.view = Some(View::dense(Loc::Dyn(slot), dt, &shape));
            }
            self.homes.insert(v, home);
        }
        let groups = if self.opts.fuse { self.form_groups_checked() } else { self.single_groups() };
        let mut group_of: HashMap<NodeId, usize> = HashMap::new();
        let mut group_last: HashMap<NodeId, usize> = HashMap::new();
        for (gi, grp) in groups.iter().enumerate() {
            for &m in &grp.members {
                group_of.insert(m, gi);
            }
            group_last.insert(*grp.members.last().expect("groups are not empty"), gi);
        }
        for &id in &self.sp.order {
            let node = g.node(id);
            self.stats.compute_nodes += usize::from(!node.op.is_source());
            match &node.op {
                Op::Input => continue,
                Op::Weight(w) => {
                    let v = ValueRef::new(id, 0);
                    let mut home = Home { weight: Some(*w), ..Home::default() };
                    if let Some(wt) = g.weights.get(*w)
                        && matches!(wt.dtype, DType::F32 | DType::Bool)
                    {
                        home.view = Some(View::dense(Loc::Weight(*w), wt.dtype, &wt.shape));
                    }
                    self.homes.insert(v, home);
                    continue;
                }
                _ => {}
            }
            if (0..node.outputs.len()).all(|p| self.sp.consts.contains_key(&ValueRef::new(id, p as u32))) {
                if !node.op.is_source() {
                    self.stats.folded_nodes += 1;
                }
                for p in 0..node.outputs.len() {
                    let v = ValueRef::new(id, p as u32);
                    self.const_home(v);
                }
                continue;
            }
            if group_of.contains_key(&id) {
                if let Some(&gi) = group_last.get(&id) {
                    self.emit_group(&groups[gi])?;
                }
                continue;
            }
            if self.try_view(id) || self.try_split(id) || self.try_matmul(id)? || self.try_gather(id) {
                continue;
            }
            self.emit_fallback(id);
        }
        // Graph outputs.
        let mut outputs = Vec::new();
        for o in g.outputs() {
            let h = self.homes.get(&o.value).cloned().unwrap_or_default();
            outputs.push(if let Some(s) = h.dyn_slot {
                OutSrc::Dyn(s)
            } else if let Some(c) = h.konst {
                OutSrc::Const(c)
            } else if let Some(w) = h.weight {
                OutSrc::Weight(w)
            } else if let Some(v) = h.view {
                OutSrc::View(v)
            } else {
                OutSrc::Missing(o.name.clone())
            });
        }
        if self.opts.fuse {
            self.fuse_kernel_chains(&outputs);
            self.fuse_epilogues(&outputs);
        }
        // Liveness of arena buffers and run-time slots.
        let n = self.steps.len();
        let mut buf_last = vec![0usize; self.buffers.len()];
        // Buffers no step touches any more (a merged kernel's intermediate)
        // take no room.
        let mut buf_used = vec![false; self.buffers.len()];
        let mut dyn_last: Vec<Option<usize>> = vec![None; self.dyn_slots];
        for (i, s) in self.steps.iter().enumerate() {
            for loc in step_reads(s) {
                match loc {
                    Loc::Arena(b) => {
                        buf_last[b] = buf_last[b].max(i);
                        buf_used[b] = true;
                    }
                    Loc::Dyn(d) => dyn_last[d] = Some(dyn_last[d].map_or(i, |x| x.max(i))),
                    _ => {}
                }
            }
        }
        for o in &outputs {
            match o {
                OutSrc::View(v) => {
                    if let Loc::Arena(b) = v.loc {
                        buf_last[b] = n;
                        buf_used[b] = true;
                    }
                    if let Loc::Dyn(d) = v.loc {
                        dyn_last[d] = Some(n);
                    }
                }
                OutSrc::Dyn(d) => dyn_last[*d] = Some(n),
                _ => {}
            }
        }
        let mut frees = vec![Vec::new(); n];
        for (d, last) in dyn_last.iter().enumerate() {
            if let Some(l) = last
                && *l < n
            {
                frees[*l].push(d);
            }
        }
        let lifetimes: Vec<(usize, usize, usize)> = self
            .buffers
            .iter()
            .enumerate()
            .map(|(b, &size)| {
                let size = if buf_used[b] { size } else { 0 };
                (size, self.buffer_def[b], buf_last[b].max(self.buffer_def[b]))
            })
            .collect();
        let (offsets, arena_bytes) = memory::pack(&lifetimes);
        self.stats.arena_bytes = arena_bytes;
        self.stats.arena_bytes_unshared = lifetimes.iter().map(|(size, ..)| size.div_ceil(64) * 64).sum();
        let relocate = |v: &mut View| {
            if let Loc::Arena(b) = v.loc {
                v.loc = Loc::Arena(offsets[b]);
            }
        };
        for s in &mut self.steps {
            for v in step_views_mut(s) {
                relocate(v);
            }
        }
        for o in &mut outputs {
            if let OutSrc::View(v) = o {
                relocate(v);
            }
        }
        let mut fb: Vec<(String, usize)> = self.fallback_ops.into_iter().collect();
        fb.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        self.stats.fallback_ops = fb;
        self.stats.kernels = self.kernels.len();
        Ok(Plan {
            steps: self.steps,
            kernels: self.kernels,
            consts: self.consts,
            dyn_slots: self.dyn_slots,
            input_slots,
            outputs,
            frees,
            arena_bytes,
            stats: self.stats,
        })
    }

    /// For each arena buffer, the steps that read or write it, in order and
    /// each once.
    fn buffer_users(&self) -> HashMap<usize, Vec<usize>> {
        let mut users: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, s) in self.steps.iter().enumerate() {
            for loc in step_reads(s) {
                if let Loc::Arena(b) = loc {
                    // Steps come in order: a repeat is the last one pushed.
                    let u = users.entry(b).or_default();
                    if u.last() != Some(&i) {
                        u.push(i);
                    }
                }
            }
        }
        users
    }

    /// Whether every value in `inputs` exists before step `at` runs, apart
    /// from buffer `own` (the one being handed over there): a step moved to
    /// `at` may only read what is already computed.
    fn ready_at(&self, inputs: &[View], own: usize, at: usize) -> bool {
        inputs.iter().all(|v| match v.loc {
            Loc::Arena(b) => b == own || self.buffer_def[b] < at,
            Loc::Dyn(d) => self.dyn_def[d] <= at,
            _ => true,
        })
    }

    /// Turns a kernel that is the only reader of a matrix product's output,
    /// and reads it row for row, into that product's epilogue. The kernel
    /// then runs at the product's place, so all its other inputs must exist
    /// by then.
    fn fuse_epilogues(&mut self, outputs: &[OutSrc]) {
        let n = self.steps.len();
        let users = self.buffer_users();
        let in_output = output_buffers(outputs);
        let mut removed = vec![false; n];
        for i in 0..n {
            let Step::MatMul { spec, out, epilogue: None, .. } = &self.steps[i] else { continue };
            let Loc::Arena(bm) = out.loc else { continue };
            if in_output.contains(&bm) {
                continue;
            }
            let Some(j) = only_other_user(&users, bm, i) else { continue };
            if removed[j] {
                continue;
            }
            let Step::Kernel { kernel, args, rows, inner, label } = &self.steps[j] else { continue };
            let k = &self.kernels[*kernel];
            let n_in = k.inputs.len();
            let uses: Vec<usize> = (0..args.len()).filter(|&a| args[a].loc == Loc::Arena(bm)).collect();
            let [u] = uses[..] else { continue };
            if u >= n_in
                || args[u].offset != 0
                || !same_layout(&k.inputs[u].strides, &dense_strides(&k.dims), &k.dims)
                || *inner != spec.n
                || *rows != spec.batch_count() * spec.m
            {
                continue;
            }
            if !self.ready_at(&args[..n_in], bm, i) {
                continue;
            }
            let e = Epilogue { kernel: *kernel, args: args.clone(), label: label.clone() };
            for v in &args[n_in..] {
                if let Loc::Arena(b) = v.loc {
                    self.buffer_def[b] = i;
                }
            }
            if let Step::MatMul { epilogue, .. } = &mut self.steps[i] {
                *epilogue = Some(e);
            }
            removed[j] = true;
        }
        self.drop_steps(&removed);
    }

    /// Removes the steps marked in `removed` (moved into another step) and
    /// renumbers where each buffer and slot is defined.
    fn drop_steps(&mut self, removed: &[bool]) {
        let n = self.steps.len();
        let mut new_index = vec![0usize; n + 1];
        let mut kept = Vec::new();
        for (i, s) in std::mem::take(&mut self.steps).into_iter().enumerate() {
            new_index[i] = kept.len();
            if !removed[i] {
                kept.push(s);
            }
        }
        new_index[n] = kept.len();
        self.steps = kept;
        for d in &mut self.buffer_def {
            *d = new_index[*d];
        }
        for d in &mut self.dyn_def {
            *d = new_index[(*d).min(n)];
        }
    }

    /// Merges a kernel into the kernel that computes one of its inputs when
    /// it is that value's only reader and reads it element for element over
    /// the same domain — a Gemm's bias kernel and the activation after it:
    /// one pass over the rows instead of two, and the pair can then become a
    /// single epilogue of the product. The merged kernel runs at the first
    /// kernel's place, so the second's other inputs must exist by then.
    fn fuse_kernel_chains(&mut self, outputs: &[OutSrc]) {
        let in_output = output_buffers(outputs);
        // One merge per pass: merging renumbers the steps.
        while let Some((i, j)) = self.kernel_chain(&in_output) {
            let (
                Step::Kernel { kernel: k1, args: a1, label: l1, .. },
                Step::Kernel { kernel: k2, args: a2, label: l2, .. },
            ) = (&self.steps[i], &self.steps[j])
            else {
                unreachable!("kernel_chain returns two kernel steps");
            };
            let (s1, s2) = (&self.kernels[*k1], &self.kernels[*k2]);
            let b1 = a1[s1.inputs.len()].loc;
            let from_first: Vec<bool> = a2[..s2.inputs.len()].iter().map(|v| v.loc == b1).collect();
            let spec = compose_kernels(s1, s2, &from_first);
            let mut args: Vec<View> = a1[..s1.inputs.len()].to_vec();
            args.extend(a2[..s2.inputs.len()].iter().zip(&from_first).filter(|(_, f)| !**f).map(|(v, _)| v.clone()));
            args.extend(a2[s2.inputs.len()..].iter().cloned());
            let label = format!("{l1}+{l2}");
            for v in &a2[s2.inputs.len()..] {
                if let Loc::Arena(b) = v.loc {
                    self.buffer_def[b] = i;
                }
            }
            let (rows, inner) = (spec.rows(), spec.inner());
            self.kernels.push(spec);
            self.steps[i] = Step::Kernel { kernel: self.kernels.len() - 1, args, rows, inner, label };
            let mut removed = vec![false; self.steps.len()];
            removed[j] = true;
            self.drop_steps(&removed);
        }
    }

    /// The first pair (producer step, reader step) that
    /// [`Self::fuse_kernel_chains`] can merge.
    fn kernel_chain(&self, in_output: &HashSet<usize>) -> Option<(usize, usize)> {
        let users = self.buffer_users();
        for (i, step) in self.steps.iter().enumerate() {
            let Step::Kernel { kernel: k1, args: a1, .. } = step else { continue };
            let s1 = &self.kernels[*k1];
            if s1.outputs.len() != 1 || s1.outputs[0].level != Level::Full {
                continue;
            }
            let out = &a1[s1.inputs.len()];
            let Loc::Arena(b1) = out.loc else { continue };
            if in_output.contains(&b1) {
                continue;
            }
            let Some(j) = only_other_user(&users, b1, i) else { continue };
            let Step::Kernel { kernel: k2, args: a2, .. } = &self.steps[j] else { continue };
            let s2 = &self.kernels[*k2];
            let n2 = s2.inputs.len();
            let dense = dense_strides(&s2.dims);
            let kind1 = s1.kinds()[s1.outputs[0].expr];
            let reads_whole = |u: usize| {
                a2[u].offset == out.offset
                    && same_layout(&s2.inputs[u].strides, &dense, &s2.dims)
                    && (s2.inputs[u].ty == InputType::Bool) == (kind1 == Kind::Mask)
            };
            let uses: Vec<usize> = (0..a2.len()).filter(|&u| a2[u].loc == out.loc).collect();
            if uses.is_empty() || uses.iter().any(|&u| u >= n2 || !reads_whole(u)) {
                continue;
            }
            // The same rows of the same length, and the first kernel's
            // inputs expressible over the second's domain (a Gemm's 2-D
            // output read as [batch, seq, hidden]).
            if s1.dims != s2.dims
                && (s1.rows() != s2.rows()
                    || s1.inner() != s2.inner()
                    || s1.inputs.iter().any(|x| restride(&x.strides, &s1.dims, &s2.dims).is_none()))
            {
                continue;
            }
            if self.ready_at(&a2[..n2], b1, i) {
                return Some((i, j));
            }
        }
        None
    }

    fn const_home(&mut self, v: ValueRef) {
        let t = &self.sp.consts[&v];
        let idx = self.consts.len();
        self.consts.push(t.clone());
        self.const_index.insert(v, idx);
        let mut home = Home { konst: Some(idx), ..Home::default() };
        if matches!(t.dtype(), DType::F32 | DType::Bool) {
            home.view = Some(View::dense(Loc::Const(idx), t.dtype(), t.shape()));
        }
        self.homes.insert(v, home);
    }

    /// A run-time tensor argument for a fallback node, materialising a
    /// static value if needed.
    fn targ(&mut self, v: ValueRef) -> TArg {
        let h = self.homes.get(&v).cloned().unwrap_or_default();
        if let Some(s) = h.dyn_slot {
            return TArg::Dyn(s);
        }
        if let Some(c) = h.konst {
            return TArg::Const(c);
        }
        if let Some(w) = h.weight {
            return TArg::Weight(w);
        }
        let view = h.view.expect("every computed value has a home");
        let slot = self.new_dyn();
        self.steps.push(Step::Materialize { src: view, dst: slot });
        self.homes.get_mut(&v).expect("home").dyn_slot = Some(slot);
        TArg::Dyn(slot)
    }

    fn emit_fallback(&mut self, id: NodeId) {
        let g = self.g;
        let node = g.node(id);
        *self.fallback_ops.entry(node.op.op_type().to_string()).or_default() += 1;
        self.stats.fallback_nodes += 1;
        let args: Vec<Option<TArg>> = g.node_inputs(id).into_iter().map(|v| v.map(|v| self.targ(v))).collect();
        let mut outs = Vec::new();
        for p in 0..node.outputs.len() {
            let v = ValueRef::new(id, p as u32);
            if !g.is_used(v) {
                outs.push(None);
                continue;
            }
            let slot = self.new_dyn();
            outs.push(Some(slot));
            let mut home = Home { dyn_slot: Some(slot), ..Home::default() };
            if let Some((dt, shape)) = static_shape(g, v)
                && matches!(dt, DType::F32 | DType::Bool)
            {
                home.view = Some(View::dense(Loc::Dyn(slot), dt, &shape));
            }
            self.homes.insert(v, home);
        }
        self.steps.push(Step::Fallback { node: id, label: label(g, id), args, outs });
    }

    fn view_of(&self, v: ValueRef) -> Option<View> {
        self.homes.get(&v).and_then(|h| h.view.clone())
    }

    /// Shape-only ops on f32 data become views.
    fn try_view(&mut self, id: NodeId) -> bool {
        let g = self.g;
        let node = g.node(id);
        if !is_view_op(&node.op) || node.outputs.len() != 1 {
            return false;
        }
        let Some(x) = g.node_input(id, 0) else { return false };
        let Some(src) = self.view_of(x) else { return false };
        let out = ValueRef::new(id, 0);
        let Some((dt, shape)) = static_shape(g, out) else { return false };
        if dt != src.dtype || shape.iter().product::<usize>() != src.numel() {
            return false;
        }
        let view = match &node.op {
            Op::Transpose(t) => {
                let rank = src.shape.len();
                let perm: Vec<usize> = match &t.perm {
                    Some(p) => {
                        let mut seen = vec![false; rank];
                        let mut out = Vec::new();
                        for &a in p {
                            if a < 0 || a as usize >= rank || seen[a as usize] {
                                return false;
                            }
                            seen[a as usize] = true;
                            out.push(a as usize);
                        }
                        if out.len() != rank {
                            return false;
                        }
                        out
                    }
                    None => (0..rank).rev().collect(),
                };
                let v = View {
                    loc: src.loc,
                    dtype: dt,
                    offset: src.offset,
                    shape: perm.iter().map(|&p| src.shape[p]).collect(),
                    strides: perm.iter().map(|&p| src.strides[p]).collect(),
                };
                if v.shape != shape {
                    return false;
                }
                v
            }
            _ => {
                if !src.is_dense() {
                    // A reshape of a strided view needs a copy: a kernel.
                    let Some(copy) = self.copy_dense(&src) else { return false };
                    View { shape: shape.clone(), strides: dense_strides(&shape), ..copy }
                } else {
                    View { shape: shape.clone(), strides: dense_strides(&shape), ..src }
                }
            }
        };
        self.stats.view_nodes += 1;
        self.homes.insert(out, Home { view: Some(view), ..Home::default() });
        true
    }

    /// `Split` of f32 or bool data: each output is a window onto the input
    /// (an offset along the split axis), so splitting a fused QKV projection
    /// into Q, K and V copies nothing. The pieces' sizes are read off the
    /// outputs' inferred shapes, which covers every spelling of the split
    /// (sizes input, `num_outputs`, or equal parts); anything else (unknown
    /// shapes, pieces that do not tile the axis) is left to the interpreter.
    fn try_split(&mut self, id: NodeId) -> bool {
        let g = self.g;
        let node = g.node(id);
        let Op::Split(split) = &node.op else { return false };
        let Some(x) = g.node_input(id, 0) else { return false };
        let Some(src) = self.view_of(x) else { return false };
        let rank = src.shape.len() as i64;
        let axis = if split.axis < 0 { split.axis + rank } else { split.axis };
        if !(0..rank).contains(&axis) {
            return false;
        }
        let axis = axis as usize;
        let mut pieces = Vec::with_capacity(node.outputs.len());
        let mut start = 0usize;
        for p in 0..node.outputs.len() {
            let v = ValueRef::new(id, p as u32);
            let Some((dt, shape)) = static_shape(g, v) else { return false };
            if dt != src.dtype
                || shape.len() != src.shape.len()
                || shape.iter().zip(&src.shape).enumerate().any(|(d, (a, b))| d != axis && a != b)
            {
                return false;
            }
            let view = View {
                offset: src.offset + start as isize * src.strides[axis],
                shape: shape.clone(),
                strides: src.strides.clone(),
                ..src.clone()
            };
            start += shape[axis];
            pieces.push((v, view));
        }
        if start != src.shape[axis] {
            return false;
        }
        for (v, view) in pieces {
            self.homes.insert(v, Home { view: Some(view), ..Home::default() });
        }
        self.stats.view_nodes += 1;
        true
    }

    /// Emits a kernel copying a strided view into a dense arena buffer.
    fn copy_dense(&mut self, src: &View) -> Option<View> {
        if src.dtype != DType::F32 || src.shape.is_empty() {
            return None;
        }
        let loc = self.new_buffer(DType::F32, &src.shape);
        let out = View::dense(loc, DType::F32, &src.shape);
        let spec = KernelSpec {
            dims: src.shape.clone(),
            inputs: vec![InputSpec { ty: InputType::F32, strides: src.strides.clone() }],
            exprs: vec![Expr::Input(0)],
            outputs: vec![OutputSpec { expr: 0, level: Level::Full }],
        };
        let rows = spec.rows();
        let inner = spec.inner();
        self.kernels.push(spec);
        self.steps.push(Step::Kernel {
            kernel: self.kernels.len() - 1,
            args: vec![src.clone(), out.clone()],
            rows,
            inner,
            label: "copy".to_string(),
        });
        Some(out)
    }

    fn try_gather(&mut self, id: NodeId) -> bool {
        let g = self.g;
        let Op::Gather(Gather { axis: 0 }) = g.node(id).op else { return false };
        let (Some(t), Some(i)) = (g.node_input(id, 0), g.node_input(id, 1)) else { return false };
        let Some(table) = self.view_of(t) else { return false };
        if table.dtype != DType::F32 || table.shape.len() != 2 || !table.is_dense() {
            return false;
        }
        let out = ValueRef::new(id, 0);
        let Some((DType::F32, oshape)) = static_shape(g, out) else { return false };
        let Some((idt, ishape)) = static_shape(g, i) else { return false };
        if !matches!(idt, DType::I64 | DType::I32) {
            return false;
        }
        let mut want = ishape.clone();
        want.push(table.shape[1]);
        if want != oshape {
            return false;
        }
        let TArg::Dyn(slot) = self.targ(i) else {
            // Constant indices were folded already; nothing to do natively.
            return false;
        };
        let loc = self.new_buffer(DType::F32, &oshape);
        let view = View::dense(loc, DType::F32, &oshape);
        self.steps.push(Step::GatherRows { table, indices: slot, out: view.clone(), label: label(g, id) });
        self.stats.other_native += 1;
        self.homes.insert(out, Home { view: Some(view), ..Home::default() });
        true
    }

    fn try_matmul(&mut self, id: NodeId) -> Result<bool, CompileError> {
        let g = self.g;
        let node = g.node(id);
        let (trans_a, trans_b, alpha, beta) = match &node.op {
            Op::MatMul => (false, false, 1.0, 0.0),
            Op::Gemm(gm) => (gm.trans_a, gm.trans_b, gm.alpha, gm.beta),
            _ => return Ok(false),
        };
        let (Some(a), Some(b)) = (g.node_input(id, 0), g.node_input(id, 1)) else { return Ok(false) };
        let (Some(av), Some(bv)) = (self.view_of(a), self.view_of(b)) else { return Ok(false) };
        let out = ValueRef::new(id, 0);
        let Some((DType::F32, oshape)) = static_shape(g, out) else { return Ok(false) };
        if av.dtype != DType::F32 || bv.dtype != DType::F32 || oshape.iter().product::<usize>() == 0 {
            return Ok(false);
        }
        let c = g.node_input(id, 2);
        let cv = match c {
            Some(c) if beta != 0.0 => match self.view_of(c) {
                Some(v) if v.dtype == DType::F32 => Some(v),
                _ => return Ok(false),
            },
            _ => None,
        };
        let Some(spec) = MatMulSpec::new(&av, &bv, &oshape, trans_a, trans_b, alpha) else { return Ok(false) };
        let loc = self.new_buffer(DType::F32, &oshape);
        let view = View::dense(loc, DType::F32, &oshape);
        self.steps.push(Step::MatMul { spec, a: av, b: bv, out: view.clone(), label: label(g, id), epilogue: None });
        self.stats.matmuls += 1;
        let mut result = view;
        if let Some(cv) = cv {
            // Gemm's bias: out + beta * C, as a kernel over the output.
            let Some(strides) = broadcast_strides(&cv, &oshape) else {
                return Err(CompileError::Graph(format!(
                    "node '{}' (Gemm): C of shape {:?} does not broadcast to {:?}",
                    label(g, id),
                    cv.shape,
                    oshape
                )));
            };
            let loc = self.new_buffer(DType::F32, &oshape);
            let biased = View::dense(loc, DType::F32, &oshape);
            let mut exprs = vec![Expr::Input(0), Expr::Input(1)];
            let cexpr = if beta == 1.0 {
                1
            } else {
                exprs.push(Expr::Const(beta));
                exprs.push(Expr::Binary(kernel::Binary::Mul, 1, 2));
                3
            };
            exprs.push(Expr::Binary(kernel::Binary::Add, 0, cexpr));
            let spec = KernelSpec {
                dims: oshape.clone(),
                inputs: vec![
                    InputSpec { ty: InputType::F32, strides: dense_strides(&oshape) },
                    InputSpec { ty: InputType::F32, strides },
                ],
                outputs: vec![OutputSpec { expr: exprs.len() - 1, level: Level::Full }],
                exprs,
            };
            let (rows, inner) = (spec.rows(), spec.inner());
            self.kernels.push(spec);
            self.steps.push(Step::Kernel {
                kernel: self.kernels.len() - 1,
                args: vec![result, cv, biased.clone()],
                rows,
                inner,
                label: "gemm-bias".to_string(),
            });
            result = biased;
        }
        self.homes.insert(out, Home { view: Some(result), ..Home::default() });
        Ok(true)
    }

    /// Every fusible node in a group of its own (fusion off).
    fn single_groups(&self) -> Vec<Group> {
        let mut out = Vec::new();
        for &id in &self.sp.order {
            if self.is_folded(id) {
                continue;
            }
            if let Some(dims) = fusible(self.g, self.sp, id) {
                out.push(Group { dims, members: vec![id], member_set: [id].into_iter().collect() });
            }
        }
        out
    }

    fn is_folded(&self, id: NodeId) -> bool {
        let n = self.g.node(id);
        n.op.is_source() || (0..n.outputs.len()).all(|p| self.sp.consts.contains_key(&ValueRef::new(id, p as u32)))
    }

    /// Fusion groups in which every value read outside its group is f32.
    ///
    /// Kernels write f32 only, so a mask (a comparison, `Not`, `And`, a cast
    /// to bool) may be fused only when all its readers end up in the same
    /// group. Whether they do is known only once groups are formed (a reader
    /// may join another group, or find this one closed), so a node whose
    /// mask escapes its group is excluded from fusion and the groups are
    /// formed again; it then runs on its own (through the interpreter),
    /// and the nodes around it still fuse. Each round excludes at least one
    /// more node, so this ends.
    fn form_groups_checked(&self) -> Vec<Group> {
        let g = self.g;
        let mut excluded: HashSet<NodeId> = HashSet::new();
        loop {
            let groups = self.form_groups(&excluded);
            let before = excluded.len();
            for grp in &groups {
                for &id in &grp.members {
                    let out = ValueRef::new(id, 0);
                    let escapes = g.outputs().iter().any(|o| o.value == out)
                        || g.users(out).iter().any(|(u, _)| !grp.member_set.contains(u));
                    if escapes && static_shape(g, out).is_none_or(|t| t.0 != DType::F32) {
                        excluded.insert(id);
                    }
                }
            }
            if excluded.len() == before {
                return groups;
            }
        }
    }

    fn form_groups(&self, excluded: &HashSet<NodeId>) -> Vec<Group> {
        let g = self.g;
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of: HashMap<NodeId, usize> = HashMap::new();
        // Groups that a node outside them has already read from: closed.
        let mut closed: HashSet<usize> = HashSet::new();
        for &id in &self.sp.order {
            if self.is_folded(id) {
                continue;
            }
            let dims = if excluded.contains(&id) { None } else { fusible(g, self.sp, id) };
            let ins: Vec<ValueRef> = g.node_inputs(id).into_iter().flatten().collect();
            let mut joined = None;
            if let Some(dims) = &dims {
                let oshape = static_shape(g, ValueRef::new(id, 0)).map(|t| t.1).unwrap_or_default();
                for v in &ins {
                    let Some(&gi) = group_of.get(&v.node) else { continue };
                    if closed.contains(&gi) {
                        continue;
                    }
                    let grp = &groups[gi];
                    let covers =
                        *dims == grp.dims || (oshape == grp.row_dims() && self.row_level_ok(id, grp, &group_of, gi));
                    if covers {
                        joined = Some(gi);
                        break;
                    }
                }
            }
            match (joined, dims) {
                (Some(gi), _) => {
                    groups[gi].members.push(id);
                    groups[gi].member_set.insert(id);
                    group_of.insert(id, gi);
                }
                (None, Some(dims)) => {
                    groups.push(Group { dims, members: vec![id], member_set: [id].into_iter().collect() });
                    group_of.insert(id, groups.len() - 1);
                }
                (None, None) => {}
            }
            // Reading a group's value from outside closes that group.
            let mine = group_of.get(&id).copied();
            for v in &ins {
                if let Some(&gi) = group_of.get(&v.node)
                    && Some(gi) != mine
                {
                    closed.insert(gi);
                }
            }
        }
        groups
    }

    /// A node whose output is one value per row of the group's domain may
    /// join when all its inputs from the group are row values too.
    fn row_level_ok(&self, id: NodeId, grp: &Group, group_of: &HashMap<NodeId, usize>, gi: usize) -> bool {
        let g = self.g;
        if matches!(g.node(id).op, Op::Reduce(_) | Op::Softmax(_) | Op::LogSoftmax(_) | Op::LayerNormalization(_)) {
            return false;
        }
        let rows = grp.row_dims();
        g.node_inputs(id)
            .into_iter()
            .flatten()
            .all(|v| group_of.get(&v.node) != Some(&gi) || static_shape(g, v).is_some_and(|(_, s)| s == rows))
    }

    /// Emits a fusion group as one kernel.
    fn emit_group(&mut self, grp: &Group) -> Result<(), CompileError> {
        let g = self.g;
        let mut b = KernelBuilder::new(grp.dims.clone());
        let mut value_expr: HashMap<ValueRef, ExprId> = HashMap::new();
        let mut outputs: Vec<(ValueRef, ExprId, Level)> = Vec::new();
        for &id in &grp.members {
            let node = g.node(id);
            let mut args = Vec::new();
            for v in g.node_inputs(id) {
                let Some(v) = v else {
                    args.push(None);
                    continue;
                };
                if let Some(&e) = value_expr.get(&v) {
                    args.push(Some(e));
                    continue;
                }
                let e = if let Some(t) = self.sp.consts.get(&v)
                    && t.len() == 1
                    && t.dtype() == DType::F32
                {
                    b.push(Expr::Const(scalar_f32(t).unwrap_or(0.0)))
                } else {
                    let view = self.view_of(v).ok_or_else(|| {
                        CompileError::Graph(format!("fused input '{}' has no memory", g.value_info(v).name))
                    })?;
                    let strides = broadcast_strides(&view, &grp.dims).ok_or_else(|| {
                        CompileError::Graph(format!(
                            "'{}' of shape {:?} does not broadcast to {:?}",
                            g.value_info(v).name,
                            view.shape,
                            grp.dims
                        ))
                    })?;
                    b.input(view, strides)
                };
                value_expr.insert(v, e);
                args.push(Some(e));
            }
            let e = translate(&mut b, g, self.sp, id, &args).ok_or_else(|| {
                CompileError::Graph(format!("node '{}' ({}) could not be fused", label(g, id), node.op.op_type()))
            })?;
            let out = ValueRef::new(id, 0);
            value_expr.insert(out, e);
            self.stats.fused_nodes += 1;
            let used_outside = g.outputs().iter().any(|o| o.value == out)
                || g.users(out).iter().any(|(u, _)| !grp.member_set.contains(u));
            if used_outside {
                // Kernels write f32 only: a mask read outside its kernel
                // would be written as f32 into a one-byte-per-element buffer.
                if static_shape(g, out).is_none_or(|t| t.0 != DType::F32) {
                    return Err(CompileError::Graph(format!(
                        "node '{}' ({}): its {} result is read outside the fused kernel, which writes f32 only",
                        label(g, id),
                        node.op.op_type(),
                        g.value_type(out)
                    )));
                }
                let shape = static_shape(g, out).map(|t| t.1).unwrap_or_default();
                let level = if shape == grp.dims { Level::Full } else { Level::Row };
                outputs.push((out, e, level));
            }
        }
        let mut out_views = Vec::new();
        for (v, e, level) in &outputs {
            let (dt, shape) = static_shape(g, *v).unwrap_or((DType::F32, grp.dims.clone()));
            let loc = self.new_buffer(dt, &shape);
            let view = View::dense(loc, dt, &shape);
            b.outputs.push(OutputSpec { expr: *e, level: *level });
            out_views.push(view.clone());
            self.homes.insert(*v, Home { view: Some(view), ..Home::default() });
        }
        let mut names: Vec<&str> = Vec::new();
        for &m in &grp.members {
            let n = g.node(m).op.op_type();
            if !names.contains(&n) {
                names.push(n);
            }
        }
        let (spec, mut args) = b.finish();
        args.extend(out_views);
        let (rows, inner) = (spec.rows(), spec.inner());
        self.kernels.push(spec);
        self.steps.push(Step::Kernel { kernel: self.kernels.len() - 1, args, rows, inner, label: names.join("+") });
        Ok(())
    }
}

/// Collects the inputs and expressions of one kernel.
struct KernelBuilder {
    dims: Vec<usize>,
    inputs: Vec<InputSpec>,
    views: Vec<View>,
    exprs: Vec<Expr>,
    outputs: Vec<OutputSpec>,
    memo: HashMap<String, ExprId>,
}

impl KernelBuilder {
    fn new(dims: Vec<usize>) -> KernelBuilder {
        KernelBuilder {
            dims,
            inputs: Vec::new(),
            views: Vec::new(),
            exprs: Vec::new(),
            outputs: Vec::new(),
            memo: HashMap::new(),
        }
    }

    /// Adds an expression, sharing an identical one already present.
    fn push(&mut self, e: Expr) -> ExprId {
        let key = format!("{e:?}");
        if let Some(&id) = self.memo.get(&key) {
            return id;
        }
        self.exprs.push(e);
        let id = self.exprs.len() - 1;
        self.memo.insert(key, id);
        id
    }

    fn input(&mut self, view: View, strides: Vec<isize>) -> ExprId {
        let ty = if view.dtype == DType::Bool { InputType::Bool } else { InputType::F32 };
        let spec = InputSpec { ty, strides };
        let k = match self
            .views
            .iter()
            .zip(&self.inputs)
            .position(|(v, i)| v.loc == view.loc && v.offset == view.offset && *i == spec)
        {
            Some(k) => k,
            None => {
                self.inputs.push(spec);
                self.views.push(view);
                self.inputs.len() - 1
            }
        };
        self.push(Expr::Input(k))
    }

    fn c(&mut self, v: f32) -> ExprId {
        self.push(Expr::Const(v))
    }

    fn un(&mut self, u: kernel::Unary, a: ExprId) -> ExprId {
        self.push(Expr::Unary(u, a))
    }

    fn bin(&mut self, op: kernel::Binary, a: ExprId, b: ExprId) -> ExprId {
        self.push(Expr::Binary(op, a, b))
    }

    fn finish(self) -> (KernelSpec, Vec<View>) {
        (KernelSpec { dims: self.dims, inputs: self.inputs, exprs: self.exprs, outputs: self.outputs }, self.views)
    }
}

/// Strides that read `view` broadcast to `dims` (numpy rules), or `None`.
pub(crate) fn broadcast_strides(view: &View, dims: &[usize]) -> Option<Vec<isize>> {
    let r = dims.len();
    if view.shape.len() > r {
        return None;
    }
    let lead = r - view.shape.len();
    let mut out = vec![0isize; r];
    for d in 0..view.shape.len() {
        let (have, want) = (view.shape[d], dims[lead + d]);
        if have == want {
            out[lead + d] = if have == 1 { 0 } else { view.strides[d] };
        } else if have == 1 {
            out[lead + d] = 0;
        } else {
            return None;
        }
    }
    Some(out)
}

/// Translates one fusible node into expressions.
fn translate(
    b: &mut KernelBuilder,
    g: &Graph,
    sp: &Specialized,
    id: NodeId,
    args: &[Option<ExprId>],
) -> Option<ExprId> {
    use kernel::{Binary as B, Cmp, Logic, Reduce as R, Unary as U};
    let node = g.node(id);
    let a = |i: usize| args.get(i).copied().flatten();
    let x = a(0);
    Some(match &node.op {
        Op::Unary(u) => {
            let x = x?;
            match u {
                UnaryOp::Not => b.push(Expr::Not(x)),
                UnaryOp::Neg => b.un(U::Neg, x),
                UnaryOp::Abs => b.un(U::Abs, x),
                UnaryOp::Sqrt => b.un(U::Sqrt, x),
                UnaryOp::Reciprocal => b.un(U::Recip, x),
                UnaryOp::Exp => b.un(U::Exp, x),
                UnaryOp::Log => b.un(U::Log, x),
                UnaryOp::Tanh => b.un(U::Tanh, x),
                UnaryOp::Erf => b.un(U::Erf, x),
                UnaryOp::Sigmoid => b.un(U::Sigmoid, x),
                UnaryOp::Floor => b.un(U::Floor, x),
                UnaryOp::Ceil => b.un(U::Ceil, x),
                UnaryOp::Round => b.un(U::Round, x),
                UnaryOp::Relu => {
                    let z = b.c(0.0);
                    let m = b.push(Expr::Cmp(Cmp::Lt, x, z));
                    b.push(Expr::Select(m, z, x))
                }
                UnaryOp::LeakyRelu { alpha } => {
                    let z = b.c(0.0);
                    let al = b.c(*alpha);
                    let m = b.push(Expr::Cmp(Cmp::Lt, x, z));
                    let s = b.bin(B::Mul, x, al);
                    b.push(Expr::Select(m, s, x))
                }
                UnaryOp::Elu { alpha } => {
                    let z = b.c(0.0);
                    let one = b.c(1.0);
                    let al = b.c(*alpha);
                    let m = b.push(Expr::Cmp(Cmp::Lt, x, z));
                    let e = b.un(U::Exp, x);
                    let e1 = b.bin(B::Sub, e, one);
                    let s = b.bin(B::Mul, e1, al);
                    b.push(Expr::Select(m, s, x))
                }
                UnaryOp::Gelu { approximate: GeluApproximation::None } => {
                    let k = b.c(std::f32::consts::FRAC_1_SQRT_2);
                    let t = b.bin(B::Mul, x, k);
                    let e = b.un(U::Erf, t);
                    gelu_tail(b, x, e)
                }
                UnaryOp::Gelu { approximate: GeluApproximation::Tanh } => {
                    let c = b.c(0.044_715);
                    let k = b.c((2.0 / std::f32::consts::PI).sqrt());
                    let x2 = b.bin(B::Mul, x, x);
                    let x3 = b.bin(B::Mul, x2, x);
                    let t = b.bin(B::Mul, x3, c);
                    let t = b.bin(B::Add, x, t);
                    let t = b.bin(B::Mul, t, k);
                    let e = b.un(U::Tanh, t);
                    gelu_tail(b, x, e)
                }
                UnaryOp::Swish { alpha } => {
                    let al = b.c(*alpha);
                    let t = b.bin(B::Mul, x, al);
                    let s = b.un(U::Sigmoid, t);
                    b.bin(B::Mul, x, s)
                }
                UnaryOp::HardSigmoid { alpha, beta } => hard_sigmoid(b, x, *alpha, *beta),
                UnaryOp::HardSwish => {
                    let h = hard_sigmoid(b, x, 1.0 / 6.0, 0.5);
                    b.bin(B::Mul, x, h)
                }
                UnaryOp::Softsign => {
                    let one = b.c(1.0);
                    let ax = b.un(U::Abs, x);
                    let d = b.bin(B::Add, ax, one);
                    b.bin(B::Div, x, d)
                }
                _ => return None,
            }
        }
        Op::Binary(op) => {
            let (x, y) = (x?, a(1)?);
            match op {
                BinaryOp::Add => b.bin(B::Add, x, y),
                BinaryOp::Sub => b.bin(B::Sub, x, y),
                BinaryOp::Mul => b.bin(B::Mul, x, y),
                BinaryOp::Div => b.bin(B::Div, x, y),
                BinaryOp::PRelu => {
                    let z = b.c(0.0);
                    let m = b.push(Expr::Cmp(Cmp::Lt, x, z));
                    let s = b.bin(B::Mul, x, y);
                    b.push(Expr::Select(m, s, x))
                }
                BinaryOp::Pow => {
                    let p = sp.consts.get(&g.node_input(id, 1)?).and_then(scalar_f32)?;
                    match pow_expr(p)? {
                        "x" => x,
                        "x2" => b.bin(B::Mul, x, x),
                        "x3" => {
                            let x2 = b.bin(B::Mul, x, x);
                            b.bin(B::Mul, x2, x)
                        }
                        "sqrt" => b.un(U::Sqrt, x),
                        "recip" => b.un(U::Recip, x),
                        _ => {
                            let s = b.un(U::Sqrt, x);
                            b.un(U::Recip, s)
                        }
                    }
                }
                BinaryOp::Equal => b.push(Expr::Cmp(Cmp::Eq, x, y)),
                BinaryOp::Less => b.push(Expr::Cmp(Cmp::Lt, x, y)),
                BinaryOp::LessOrEqual => b.push(Expr::Cmp(Cmp::Le, x, y)),
                BinaryOp::Greater => b.push(Expr::Cmp(Cmp::Gt, x, y)),
                BinaryOp::GreaterOrEqual => b.push(Expr::Cmp(Cmp::Ge, x, y)),
                BinaryOp::And => b.push(Expr::Logic(Logic::And, x, y)),
                BinaryOp::Or => b.push(Expr::Logic(Logic::Or, x, y)),
                BinaryOp::Xor => b.push(Expr::Logic(Logic::Xor, x, y)),
                _ => return None,
            }
        }
        Op::Variadic(v) => {
            let xs: Vec<ExprId> = args.iter().flatten().copied().collect();
            let op = match v {
                VariadicOp::Sum | VariadicOp::Mean => B::Add,
                VariadicOp::Max => B::Max,
                VariadicOp::Min => B::Min,
            };
            let mut acc = *xs.first()?;
            for &e in &xs[1..] {
                acc = b.bin(op, acc, e);
            }
            if *v == VariadicOp::Mean {
                let k = b.c(1.0 / xs.len() as f32);
                acc = b.bin(B::Mul, acc, k);
            }
            acc
        }
        Op::Where => b.push(Expr::Select(x?, a(1)?, a(2)?)),
        Op::Clip => {
            let mut r = x?;
            if let Some(lo) = a(1) {
                r = b.bin(B::Max, r, lo);
            }
            if let Some(hi) = a(2) {
                r = b.bin(B::Min, r, hi);
            }
            r
        }
        Op::Cast(c) => {
            let from = g.value_type(g.node_input(id, 0)?).dtype()?;
            match (from, c.to) {
                (DType::F32, DType::F32) => x?,
                (DType::Bool, DType::F32) => b.push(Expr::MaskToF32(x?)),
                (DType::F32, DType::Bool) => b.push(Expr::F32ToMask(x?)),
                _ => return None,
            }
        }
        Op::Reduce(r) => {
            let x = x?;
            let n = *static_shape(g, g.node_input(id, 0)?)?.1.last()? as f32;
            match r.kind {
                ReduceKind::Sum => b.push(Expr::Reduce(R::Sum, x)),
                ReduceKind::Max => b.push(Expr::Reduce(R::Max, x)),
                ReduceKind::Min => b.push(Expr::Reduce(R::Min, x)),
                ReduceKind::Mean => {
                    let s = b.push(Expr::Reduce(R::Sum, x));
                    let k = b.c(1.0 / n);
                    b.bin(B::Mul, s, k)
                }
                ReduceKind::SumSquare | ReduceKind::L2 => {
                    let sq = b.bin(B::Mul, x, x);
                    let s = b.push(Expr::Reduce(R::Sum, sq));
                    if r.kind == ReduceKind::L2 { b.un(U::Sqrt, s) } else { s }
                }
                _ => return None,
            }
        }
        Op::Softmax(_) | Op::LogSoftmax(_) => {
            let x = x?;
            let m = b.push(Expr::Reduce(R::Max, x));
            let d = b.bin(B::Sub, x, m);
            let e = b.un(U::Exp, d);
            let s = b.push(Expr::Reduce(R::Sum, e));
            if matches!(node.op, Op::Softmax(_)) {
                let r = b.un(U::Recip, s);
                b.bin(B::Mul, e, r)
            } else {
                let l = b.un(U::Log, s);
                b.bin(B::Sub, d, l)
            }
        }
        Op::LayerNormalization(ln) => {
            let x = x?;
            let n = *b.dims.last()? as f32;
            let inv_n = b.c(1.0 / n);
            let s = b.push(Expr::Reduce(R::Sum, x));
            let mean = b.bin(B::Mul, s, inv_n);
            let d = b.bin(B::Sub, x, mean);
            let d2 = b.bin(B::Mul, d, d);
            let v = b.push(Expr::Reduce(R::Sum, d2));
            let var = b.bin(B::Mul, v, inv_n);
            let eps = b.c(ln.epsilon);
            let ve = b.bin(B::Add, var, eps);
            let sd = b.un(U::Sqrt, ve);
            let inv = b.un(U::Recip, sd);
            let mut y = b.bin(B::Mul, d, inv);
            if let Some(scale) = a(1) {
                y = b.bin(B::Mul, y, scale);
            }
            if let Some(bias) = a(2) {
                y = b.bin(B::Add, y, bias);
            }
            y
        }
        _ => return None,
    })
}

fn gelu_tail(b: &mut KernelBuilder, x: ExprId, e: ExprId) -> ExprId {
    use kernel::Binary as B;
    let one = b.c(1.0);
    let half = b.c(0.5);
    let t = b.bin(B::Add, e, one);
    let hx = b.bin(B::Mul, x, half);
    b.bin(B::Mul, hx, t)
}

fn hard_sigmoid(b: &mut KernelBuilder, x: ExprId, alpha: f32, beta: f32) -> ExprId {
    use kernel::Binary as B;
    let al = b.c(alpha);
    let be = b.c(beta);
    let zero = b.c(0.0);
    let one = b.c(1.0);
    let t = b.bin(B::Mul, x, al);
    let t = b.bin(B::Add, t, be);
    let t = b.bin(B::Min, t, one);
    b.bin(B::Max, t, zero)
}

/// The memory locations a step reads.
fn step_reads(s: &Step) -> Vec<Loc> {
    match s {
        Step::Kernel { args, .. } => args.iter().map(|v| v.loc).collect(),
        Step::MatMul { a, b, out, epilogue, .. } => {
            let mut v = vec![a.loc, b.loc, out.loc];
            if let Some(e) = epilogue {
                v.extend(e.args.iter().map(|x| x.loc));
            }
            v
        }
        Step::GatherRows { table, indices, out, .. } => vec![table.loc, Loc::Dyn(*indices), out.loc],
        Step::Fallback { args, outs, .. } => args
            .iter()
            .flatten()
            .filter_map(|a| if let TArg::Dyn(d) = a { Some(Loc::Dyn(*d)) } else { None })
            .chain(outs.iter().flatten().map(|d| Loc::Dyn(*d)))
            .collect(),
        Step::Materialize { src, dst } => vec![src.loc, Loc::Dyn(*dst)],
    }
}

fn step_views_mut(s: &mut Step) -> Vec<&mut View> {
    match s {
        Step::Kernel { args, .. } => args.iter_mut().collect(),
        Step::MatMul { a, b, out, epilogue, .. } => {
            let mut v = vec![a, b, out];
            if let Some(e) = epilogue {
                v.extend(e.args.iter_mut());
            }
            v
        }
        Step::GatherRows { table, out, .. } => vec![table, out],
        Step::Fallback { .. } => vec![],
        Step::Materialize { src, .. } => vec![src],
    }
}

#[cfg(test)]
mod tests {
    use crate::{CompileOptions, compile};
    use sharc_ir::op::Gemm;
    use sharc_ir::{DType, Graph, Op, Shape, Tensor, Type, UnaryOp, Weight};

    /// `Gemm` with a bias, then Tanh; with `keep_biased` the biased product
    /// is also a graph output, so the two kernels must stay apart.
    fn gemm_tanh(keep_biased: bool) -> (Graph, Vec<f32>, Vec<f32>, Vec<f32>) {
        let (m, k, n) = (7usize, 5usize, 11usize);
        let mut g = Graph::new("gemm");
        let x = g.add_input("x", Type::tensor(DType::F32, Shape::fixed(&[m, k])));
        let wt: Vec<f32> = (0..n * k).map(|i| ((i as f32) * 0.37).sin()).collect();
        let bias: Vec<f32> = (0..n).map(|i| 0.2 * i as f32 - 1.0).collect();
        let w = g.add_weight(Weight::from_tensor("w", Tensor::from_vec(&[n, k], wt.clone())));
        let b = g.add_weight(Weight::from_tensor("b", Tensor::from_vec(&[n], bias.clone())));
        let gemm = Op::Gemm(Gemm { alpha: 0.5, beta: 2.0, trans_a: false, trans_b: true });
        let p = g.add_op(gemm, &[x, w, b], Type::Unknown);
        let y = g.add_op(Op::Unary(UnaryOp::Tanh), &[p], Type::Unknown);
        g.add_output("y", y);
        if keep_biased {
            g.add_output("p", p);
        }
        let input: Vec<f32> = (0..m * k).map(|i| ((i as f32) * 0.29).cos()).collect();
        (g, wt, bias, input)
    }

    #[test]
    fn inputs_restride_between_shapes_of_the_same_rows_only_without_copies() {
        use super::restride;
        let (from, to) = ([512usize, 256], [8usize, 64, 256]);
        // Dense stays dense; a bias (broadcast along rows) and a scalar stay so.
        assert_eq!(restride(&[256, 1], &from, &to), Some(vec![64 * 256, 256, 1]));
        assert_eq!(restride(&[0, 1], &from, &to), Some(vec![0, 0, 1]));
        assert_eq!(restride(&[0, 0], &from, &to), Some(vec![0, 0, 0]));
        // A transposed input or a per-row column cannot be re-expressed.
        assert_eq!(restride(&[1, 512], &from, &to), None);
        assert_eq!(restride(&[1, 0], &from, &to), None);
        // The same shape keeps its strides, whatever they are.
        assert_eq!(restride(&[1, 512], &from, &from), Some(vec![1, 512]));
    }

    #[test]
    fn a_gemm_bias_and_the_activation_after_it_become_one_epilogue() {
        for keep_biased in [false, true] {
            let (g, wt, bias, input) = gemm_tanh(keep_biased);
            let (m, k, n) = (7usize, 5usize, 11usize);
            let c = compile(&g, &CompileOptions { threads: Some(1), profile: true, ..Default::default() }).unwrap();
            let out = c.run(&[Tensor::from_vec(&[m, k], input.clone())]).unwrap();
            let y = out[0].as_array::<f32>().unwrap();
            for i in 0..m {
                for j in 0..n {
                    let dot: f64 = (0..k).map(|l| input[i * k + l] as f64 * wt[j * k + l] as f64).sum();
                    let biased = 0.5 * dot + 2.0 * bias[j] as f64;
                    assert!((y[[i, j]] as f64 - biased.tanh()).abs() < 1e-5, "({i},{j}) keep_biased={keep_biased}");
                    if keep_biased {
                        let p = out[1].as_array::<f32>().unwrap();
                        assert!((p[[i, j]] as f64 - biased).abs() < 1e-5);
                    }
                }
            }
            let labels: Vec<String> = c.profile().into_iter().map(|e| e.label).collect();
            if keep_biased {
                // The biased product is read twice (Tanh, the output): no merge.
                assert_eq!(labels.len(), 2, "{labels:?}");
            } else {
                assert_eq!(labels.len(), 1, "one step only: {labels:?}");
                assert!(labels[0].contains("+ gemm-bias+Tanh"), "{labels:?}");
            }
        }
    }
}

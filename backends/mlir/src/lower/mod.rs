//! Lowering a specialised graph to MLIR text (func + linalg/tensor/arith/math).
//!
//! The module has one function, `@main`, in destination-passing style: every
//! graph input, every run-time weight and every graph output is a `memref`
//! argument, so the caller owns all buffers and no result descriptors or
//! frees cross the ABI. Inside, the arguments become tensors
//! (`bufferization.to_tensor`), the graph is lowered op by op onto tensors,
//! and the outputs are written with `bufferization.materialize_in_destination`.
//!
//! Nearly everything becomes a `linalg.generic` with explicit indexing maps:
//! broadcasting, slicing with steps and transposes are affine maps, so the
//! elementwise fusion pass sees every producer and consumer uniformly and
//! merges chains such as bias + GELU or the normalise-scale-shift of a
//! LayerNorm into one loop nest. Matrix products put the reduction loop in the
//! middle (`m, k, n`), which makes the innermost loop contiguous in both the
//! right operand and the result, so LLVM vectorises it.
//!
//! Why text rather than melior's op builders: the text is what users see with
//! `--emit mlir`, it needs no LLVM to produce (so lowering is tested without
//! the `mlir` feature), and MLIR's parser checks it completely when it is
//! compiled.

mod body;
mod dims;
mod dynamic;
mod ops;

use crate::MlirError;
use crate::specialise::{Specialised, label, static_shape};
use body::{Body, BodyResult, binary, unary};
use dims::{DimText, Dv, all_fixed, dv};
use sharc_ir::SymTensor;
use sharc_ir::op::ReduceKind;
use sharc_ir::{DType, Graph, NodeId, Op, Tensor, TensorData, UnaryOp, ValueRef, VariadicOp, WeightId};
use std::collections::HashMap;
use std::fmt::Write as _;

/// What an argument of `@main` carries.
#[derive(Clone, Debug, PartialEq)]
pub enum ArgKind {
    /// Graph input number `n`.
    Input(usize),
    /// A weight, passed once however many nodes share it.
    Weight(WeightId),
    /// Graph output number `n` (written by the function).
    Output(usize),
}

/// One argument of `@main`: a memref of a static shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ArgSpec {
    /// What it carries.
    pub kind: ArgKind,
    /// The graph name of the value, for messages.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Static shape.
    pub shape: Vec<u64>,
}

/// A lowered graph: the module text and its calling convention.
#[derive(Clone, Debug)]
pub struct Lowered {
    /// The MLIR module (tensor level, before any pass).
    pub text: String,
    /// The arguments of `@main`, in order: inputs, weights, outputs.
    pub args: Vec<ArgSpec>,
    /// How many graph nodes became MLIR ops (sources and folded nodes excluded).
    pub lowered_nodes: usize,
}

/// The name of the entry function.
pub const ENTRY: &str = "main";

/// The MLIR element type of a dtype.
pub fn elem_type(dt: DType) -> Option<&'static str> {
    Some(match dt {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::I8 | DType::U8 => "i8",
        DType::I16 | DType::U16 => "i16",
        DType::I32 | DType::U32 => "i32",
        DType::I64 | DType::U64 => "i64",
        DType::Bool => "i1",
        _ => return None,
    })
}

fn shape_text<D: DimText>(shape: &[D], elem: &str) -> String {
    let mut s = String::new();
    for d in shape {
        let _ = write!(s, "{}x", d.text());
    }
    s.push_str(elem);
    s
}

/// `tensor<2x3xf32>`, `tensor<?x3xf32>`.
fn tensor_ty<D: DimText>(dt: DType, shape: &[D]) -> String {
    format!("tensor<{}>", shape_text(shape, elem_type(dt).unwrap_or("none")))
}

/// `memref<2x3xf32>`.
pub fn memref_ty(dt: DType, shape: &[u64]) -> String {
    format!("memref<{}>", shape_text(shape, elem_type(dt).unwrap_or("none")))
}

fn dims(n: usize) -> String {
    (0..n).map(|i| format!("d{i}")).collect::<Vec<_>>().join(", ")
}

fn amap(loops: usize, results: &[String]) -> String {
    format!("affine_map<({}) -> ({})>", dims(loops), results.join(", "))
}

fn identity_exprs(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("d{i}")).collect()
}

/// Index expressions reading an input of shape `ins` broadcast (numpy rules,
/// right-aligned) to the loop space `out`. A run-time dim broadcasts only to
/// the same dim: whether it is 1 is unknown when the maps are written, and a
/// wrong guess would read out of bounds.
fn bcast_exprs(ins: &[Dv], out: &[Dv]) -> Result<Vec<String>, String> {
    if ins.len() > out.len() {
        return Err(format!("an operand of rank {} broadcasts to rank {}", ins.len(), out.len()));
    }
    let off = out.len() - ins.len();
    ins.iter()
        .enumerate()
        .map(|(i, d)| {
            let o = &out[off + i];
            if d == o {
                Ok(format!("d{}", off + i))
            } else if *d == Dv::N(1) {
                Ok("0".to_string())
            } else {
                Err(format!("dim {} ({}) does not broadcast to {} at compile time", i, dim_name(d), dim_name(o)))
            }
        })
        .collect()
}

fn dim_name(d: &Dv) -> String {
    match d {
        Dv::N(n) => n.to_string(),
        Dv::S(s) => format!("'{s}'"),
    }
}

/// Bit pattern of a float constant, which MLIR accepts for any float type and
/// which is exact (no decimal round trip, infinities and NaN included).
fn float_bits(v: f64, dt: DType) -> String {
    match dt {
        DType::F64 => format!("0x{:016X}", v.to_bits()),
        DType::F16 => format!("0x{:04X}", half::f16::from_f64(v).to_bits()),
        DType::BF16 => format!("0x{:04X}", half::bf16::from_f64(v).to_bits()),
        _ => format!("0x{:08X}", (v as f32).to_bits()),
    }
}

fn is_unsigned(dt: DType) -> bool {
    matches!(dt, DType::U8 | DType::U16 | DType::U32 | DType::U64 | DType::Bool)
}

/// How the init (outs) tensor of a generic is made.
enum Init {
    /// Uninitialised: every element is written.
    Empty,
    /// Filled with a scalar (for reductions).
    Fill(f64),
}

/// One `ins` operand of a generic.
struct In {
    ssa: String,
    dtype: DType,
    shape: Vec<Dv>,
    exprs: Vec<String>,
}

struct Emitter<'a> {
    g: &'a Graph,
    known: &'a HashMap<ValueRef, Tensor>,
    lines: Vec<String>,
    n: usize,
    vals: HashMap<ValueRef, String>,
    weight_args: Vec<WeightId>,
    weight_ssa: HashMap<WeightId, String>,
    lowered: usize,
    /// Small integer tensors known symbolically (shape vectors of values
    /// with data-dependent dims), materialised where used.
    sym: &'a HashMap<ValueRef, SymTensor>,
    /// Data-dependent symbols → the `index` value computed for them.
    env: HashMap<String, String>,
    /// Dim expression text (and `#const n`) → its `index` value.
    size_cache: HashMap<String, String>,
}

type R<T> = Result<T, MlirError>;

/// Lowers a specialised graph to an MLIR module.
pub fn lower(sp: &Specialised) -> Result<Lowered, MlirError> {
    let g = &sp.graph;
    let order = g.topo_order().map_err(|e| MlirError::Graph(e.to_string()))?;
    let mut em = Emitter {
        g,
        known: &sp.known,
        lines: Vec::new(),
        n: 0,
        vals: HashMap::new(),
        weight_args: Vec::new(),
        weight_ssa: HashMap::new(),
        lowered: 0,
        sym: &sp.sym,
        env: HashMap::new(),
        size_cache: HashMap::new(),
    };
    let mut args = Vec::new();
    for (i, &id) in g.inputs().iter().enumerate() {
        let v = ValueRef::new(id, 0);
        let (dt, shape) = static_shape(g, v)?;
        check_dtype(g, v, dt)?;
        let arg = format!("%in{i}");
        let t = em.fresh();
        em.lines.push(format!(
            "{t} = bufferization.to_tensor {arg} restrict : {} to {}",
            memref_ty(dt, &shape),
            tensor_ty(dt, &shape)
        ));
        em.vals.insert(v, t);
        args.push(ArgSpec { kind: ArgKind::Input(i), name: g.value_info(v).name.clone(), dtype: dt, shape });
    }
    for id in order {
        em.node(id)?;
    }
    let mut outs = Vec::new();
    for (i, o) in g.outputs().iter().enumerate() {
        // Outputs are buffers the caller allocates, so their size must be
        // known before the run.
        let (dt, shape) = static_shape(g, o.value)
            .map_err(|e| MlirError::Graph(format!("graph output '{}': {e} (outputs need static shapes)", o.name)))?;
        check_dtype(g, o.value, dt)?;
        let t = em.val(o.value)?;
        outs.push((format!("%out{i}"), dt, shape.clone(), t));
        args.push(ArgSpec { kind: ArgKind::Output(i), name: o.name.clone(), dtype: dt, shape });
    }
    for (arg, dt, shape, t) in &outs {
        em.lines.push(format!(
            "bufferization.materialize_in_destination {t} in restrict writable {arg} : ({}, {}) -> ()",
            tensor_ty(*dt, shape),
            memref_ty(*dt, shape)
        ));
    }
    // Weights go between inputs and outputs, in order of first use.
    let mut weight_specs = Vec::new();
    for (k, w) in em.weight_args.iter().enumerate() {
        let wt = g.weights.get(*w).ok_or_else(|| MlirError::Graph(format!("weight {w} is missing from the store")))?;
        let shape: Vec<u64> = wt.shape.iter().map(|&d| d as u64).collect();
        weight_specs.push((format!("%w{k}"), wt.dtype, shape.clone()));
        args.insert(
            g.inputs().len() + k,
            ArgSpec { kind: ArgKind::Weight(*w), name: wt.name.clone(), dtype: wt.dtype, shape },
        );
    }
    let mut sig = Vec::new();
    for (i, a) in args.iter().enumerate() {
        let name = match a.kind {
            ArgKind::Input(n) => format!("%in{n}"),
            ArgKind::Weight(_) => format!("%w{}", i - g.inputs().len()),
            ArgKind::Output(n) => format!("%out{n}"),
        };
        sig.push(format!("{name}: {}", memref_ty(a.dtype, &a.shape)));
    }
    let mut text = String::new();
    let _ = writeln!(text, "// sharc: graph '{}' lowered to linalg on tensors", g.name);
    let _ = writeln!(text, "module {{");
    let _ = writeln!(text, "  func.func @{ENTRY}({}) attributes {{llvm.emit_c_interface}} {{", sig.join(", "));
    for l in &em.lines {
        for part in l.lines() {
            let _ = writeln!(text, "    {part}");
        }
    }
    let _ = writeln!(text, "    return");
    let _ = writeln!(text, "  }}");
    let _ = writeln!(text, "}}");
    Ok(Lowered { text, args, lowered_nodes: em.lowered })
}

fn check_dtype(g: &Graph, v: ValueRef, dt: DType) -> R<()> {
    if elem_type(dt).is_none() {
        return Err(MlirError::Graph(format!(
            "value '{}' has the dtype {dt}, which the MLIR backend does not lower",
            g.value_info(v).name
        )));
    }
    Ok(())
}

impl<'a> Emitter<'a> {
    fn fresh(&mut self) -> String {
        self.n += 1;
        format!("%v{}", self.n)
    }

    fn push(&mut self, line: String) {
        self.lines.push(line);
    }

    /// The SSA tensor of a value: computed, a run-time weight, or a literal.
    fn val(&mut self, v: ValueRef) -> R<String> {
        if let Some(s) = self.vals.get(&v) {
            return Ok(s.clone());
        }
        if let Some(t) = self.known.get(&v) {
            // Several weight nodes may name one stored weight; a small one is
            // folded into a literal, which is emitted once for all of them.
            let weight = match &self.g.node(v.node).op {
                Op::Weight(w) => Some(*w),
                _ => None,
            };
            if let Some(s) = weight.and_then(|w| self.weight_ssa.get(&w)) {
                let s = s.clone();
                self.vals.insert(v, s.clone());
                return Ok(s);
            }
            let s = self.constant(t, &self.g.value_info(v).name.clone())?;
            if let Some(w) = weight {
                self.weight_ssa.insert(w, s.clone());
            }
            self.vals.insert(v, s.clone());
            return Ok(s);
        }
        if let Some(st) = self.sym.get(&v) {
            let exprs = st.exprs().ok_or_else(|| {
                MlirError::Graph(format!("value '{}' is tracked with float elements", self.g.value_info(v).name))
            })?;
            let mut vals = Vec::new();
            for e in exprs {
                vals.push(self.dim_ssa(&Dv::S(e.to_string()))?);
            }
            let shape: Vec<u64> = st.shape.iter().map(|&d| d as u64).collect();
            let s = self.tensor_of_indices(&vals, st.dtype, &shape)?;
            self.vals.insert(v, s.clone());
            return Ok(s);
        }
        if let Op::Weight(w) = &self.g.node(v.node).op {
            let s = self.weight(*w)?;
            self.vals.insert(v, s.clone());
            return Ok(s);
        }
        Err(MlirError::Graph(format!("value '{}' is used before it is computed", self.g.value_info(v).name)))
    }

    fn weight(&mut self, w: WeightId) -> R<String> {
        if let Some(s) = self.weight_ssa.get(&w) {
            return Ok(s.clone());
        }
        let wt = self.g.weights.get(w).ok_or_else(|| MlirError::Graph(format!("weight {w} is missing")))?;
        if elem_type(wt.dtype).is_none() {
            return Err(MlirError::Graph(format!("weight '{}' has the dtype {}, not lowered", wt.name, wt.dtype)));
        }
        let shape: Vec<u64> = wt.shape.iter().map(|&d| d as u64).collect();
        let k = self.weight_args.len();
        self.weight_args.push(w);
        let t = self.fresh();
        self.push(format!(
            "{t} = bufferization.to_tensor %w{k} restrict : {} to {}",
            memref_ty(wt.dtype, &shape),
            tensor_ty(wt.dtype, &shape)
        ));
        self.weight_ssa.insert(w, t.clone());
        Ok(t)
    }

    /// A literal tensor as `arith.constant`.
    fn constant(&mut self, t: &Tensor, name: &str) -> R<String> {
        let dt = t.dtype();
        let e = elem_type(dt)
            .ok_or_else(|| MlirError::Graph(format!("constant '{name}' has the dtype {dt}, which is not lowered")))?;
        let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
        let ty = tensor_ty(dt, &shape);
        let s = self.fresh();
        if t.is_empty() {
            self.push(format!("{s} = tensor.empty() : {ty}"));
            return Ok(s);
        }
        let body = if let TensorData::Bool(a) = t.data() {
            let items: Vec<&str> = a.iter().map(|&b| if b { "true" } else { "false" }).collect();
            if items.iter().all(|x| *x == items[0]) { items[0].to_string() } else { nested(&items, t.shape()) }
        } else {
            let bytes = t
                .to_le_bytes()
                .ok_or_else(|| MlirError::Graph(format!("constant '{name}' ({dt}) has no byte form")))?;
            // A splat (all elements equal, as for ConstantOfShape) is one
            // element's bytes, which MLIR reads as a splat.
            let width = bytes.len() / t.len();
            let splat = width > 0 && bytes.chunks(width).all(|c| c == &bytes[..width]);
            let bytes = if splat { &bytes[..width] } else { &bytes[..] };
            let mut hex = String::with_capacity(bytes.len() * 2 + 4);
            hex.push_str("\"0x");
            for b in bytes {
                let _ = write!(hex, "{b:02X}");
            }
            hex.push('"');
            hex
        };
        let _ = e;
        self.push(format!("{s} = arith.constant dense<{body}> : {ty}"));
        Ok(s)
    }

    fn shape_of(&self, v: ValueRef) -> R<(DType, Vec<u64>)> {
        static_shape(self.g, v)
    }

    fn known_i64(&self, v: Option<ValueRef>, node: &str, op: &str, what: &str) -> R<Option<Vec<i64>>> {
        let Some(v) = v else { return Ok(None) };
        let t = self.known.get(&v).ok_or_else(|| {
            MlirError::unsupported(
                node,
                op,
                format!("the {what} input must be known at compile time (it depends on run-time data)"),
            )
        })?;
        t.to_i64_vec()
            .map(Some)
            .ok_or_else(|| MlirError::unsupported(node, op, format!("the {what} input is not an integer tensor")))
    }

    /// The destination tensor of a linalg op: empty (every element is
    /// written) or filled with `init` (an accumulator).
    fn init(&mut self, out_dt: DType, out_shape: &[Dv], init: Init) -> Result<String, String> {
        let oty = tensor_ty(out_dt, out_shape);
        let empty = self.empty(out_dt, out_shape).map_err(|e| e.to_string())?;
        let init_ssa = match init {
            Init::Empty => empty,
            Init::Fill(v) => {
                let e = empty;
                let c = self.fresh();
                let et = elem_type(out_dt).ok_or("no element type")?;
                let lit = if out_dt.is_float() {
                    float_bits(v, out_dt)
                } else if out_dt == DType::Bool {
                    (if v != 0.0 { "true" } else { "false" }).to_string()
                } else {
                    format!("{}", v as i64)
                };
                if out_dt == DType::Bool {
                    self.push(format!("{c} = arith.constant {lit}"));
                } else {
                    self.push(format!("{c} = arith.constant {lit} : {et}"));
                }
                let s = self.fresh();
                self.push(format!("{s} = linalg.fill ins({c} : {et}) outs({e} : {oty}) -> {oty}"));
                s
            }
        };
        Ok(init_ssa)
    }

    /// Emits a `linalg.generic` over `loops` loops and returns its result.
    #[allow(clippy::too_many_arguments)]
    fn generic(
        &mut self,
        ins: &[In],
        out_dt: DType,
        out_shape: &[Dv],
        out_exprs: &[String],
        iters: &[bool],
        init: Init,
        body: impl FnOnce(&mut Body, &[String], &str) -> BodyResult,
    ) -> Result<String, String> {
        let loops = iters.len();
        let oty = tensor_ty(out_dt, out_shape);
        let init_ssa = self.init(out_dt, out_shape, init)?;
        let id = self.fresh();
        let prefix = id.trim_start_matches('%').to_string();
        let mut b = Body::new(prefix.clone());
        let mut args: Vec<String> = Vec::new();
        let mut bb_args = Vec::new();
        for (i, inp) in ins.iter().enumerate() {
            let a = format!("%{prefix}_a{i}");
            bb_args.push(format!("{a}: {}", elem_type(inp.dtype).ok_or("no element type")?));
            args.push(a);
        }
        let out_arg = format!("%{prefix}_out");
        bb_args.push(format!("{out_arg}: {}", elem_type(out_dt).ok_or("no element type")?));
        let result = body(&mut b, &args, &out_arg)?;
        let mut maps: Vec<String> = ins.iter().map(|i| amap(loops, &i.exprs)).collect();
        maps.push(amap(loops, out_exprs));
        let iter_text: Vec<&str> = iters.iter().map(|&p| if p { "\"parallel\"" } else { "\"reduction\"" }).collect();
        let mut s = String::new();
        let _ = write!(
            s,
            "{id} = linalg.generic {{indexing_maps = [{}], iterator_types = [{}]}}",
            maps.join(", "),
            iter_text.join(", ")
        );
        if !ins.is_empty() {
            let names: Vec<&str> = ins.iter().map(|i| i.ssa.as_str()).collect();
            let tys: Vec<String> = ins.iter().map(|i| tensor_ty(i.dtype, &i.shape)).collect();
            let _ = write!(s, " ins({} : {})", names.join(", "), tys.join(", "));
        }
        let _ = writeln!(s, " outs({init_ssa} : {oty}) {{");
        let _ = writeln!(s, "^bb0({}):", bb_args.join(", "));
        for l in &b.lines {
            let _ = writeln!(s, "  {l}");
        }
        let _ = writeln!(s, "  linalg.yield {result} : {}", elem_type(out_dt).ok_or("no element type")?);
        let _ = write!(s, "}} -> {oty}");
        self.push(s);
        Ok(id)
    }

    /// Emits `out = sum over the reduction loops of a * b` as a
    /// `linalg.contract` into a zero-filled accumulator. A named op rather
    /// than a generic on purpose: elementwise fusion only fuses into
    /// generics, so the producers of the operands (a GELU, a softmax's
    /// exp/div) stay separate kernels instead of being recomputed for every
    /// step of the reduction, and the CPU pipeline can find the contraction
    /// and tile it. Every expression must be a plain loop dim (the op takes
    /// projected permutations only).
    fn contract(
        &mut self,
        ins: [&In; 2],
        out_dt: DType,
        out_shape: &[Dv],
        out_exprs: &[String],
        loops: usize,
    ) -> Result<String, String> {
        let oty = tensor_ty(out_dt, out_shape);
        let init = self.init(out_dt, out_shape, Init::Fill(0.0))?;
        let maps = [amap(loops, &ins[0].exprs), amap(loops, &ins[1].exprs), amap(loops, out_exprs)];
        let id = self.fresh();
        self.push(format!(
            "{id} = linalg.contract indexing_maps = [{}] ins({}, {} : {}, {}) outs({init} : {oty}) -> {oty}",
            maps.join(", "),
            ins[0].ssa,
            ins[1].ssa,
            tensor_ty(ins[0].dtype, &ins[0].shape),
            tensor_ty(ins[1].dtype, &ins[1].shape)
        ));
        Ok(id)
    }

    /// An elementwise op over broadcast inputs.
    fn elementwise(
        &mut self,
        inputs: &[ValueRef],
        out_dt: DType,
        out_shape: &[Dv],
        body: impl FnOnce(&mut Body, &[String], &[DType]) -> BodyResult,
    ) -> Result<String, MlirError> {
        let mut ins = Vec::new();
        let mut dts = Vec::new();
        for &v in inputs {
            let (dt, shape) = self.dims_of(v)?;
            let exprs = bcast_exprs(&shape, out_shape)
                .map_err(|e| MlirError::Graph(format!("'{}': {e}", self.g.value_info(v).name)))?;
            let ssa = self.val(v)?;
            ins.push(In { ssa, dtype: dt, exprs, shape });
            dts.push(dt);
        }
        let r = out_shape.len();
        self.generic(&ins, out_dt, out_shape, &identity_exprs(r), &vec![true; r], Init::Empty, |b, a, _| {
            body(b, a, &dts)
        })
        .map_err(MlirError::Graph)
    }

    fn node(&mut self, id: NodeId) -> R<()> {
        let g = self.g;
        let node = g.node(id);
        if node.op.is_source() {
            return Ok(());
        }
        // Folded nodes are literals (or shape vectors of run-time dims);
        // they are emitted where used.
        if (0..node.outputs.len()).all(|p| {
            let v = ValueRef::new(id, p as u32);
            self.known.contains_key(&v) || self.sym.contains_key(&v)
        }) {
            return Ok(());
        }
        let name = label(g, id);
        let op_type = node.op.op_type().to_string();
        let wrap = |m: String| MlirError::unsupported(&name, &op_type, m);
        let inputs = g.node_inputs(id);
        let input = |i: usize| -> R<ValueRef> {
            inputs.get(i).copied().flatten().ok_or_else(|| wrap(format!("input {i} is missing")))
        };
        let out0 = ValueRef::new(id, 0);
        // Optional outputs that nobody reads need no code.
        let used = |p: usize| {
            g.is_used(ValueRef::new(id, p as u32))
                || g.outputs().iter().any(|o| o.value.node == id && o.value.port as usize == p)
        };
        let (odt, odims) = self.dims_of(out0)?;
        check_dtype(g, out0, odt)?;
        // Ops without a dynamic-shape lowering take static shapes only.
        let fixed = all_fixed(&odims);
        let static_out = || {
            fixed.clone().ok_or_else(|| {
                wrap(format!(
                    "the output has data-dependent dims ({}), which this op's lowering does not handle",
                    tensor_ty(odt, &odims)
                ))
            })
        };
        self.lowered += 1;
        let result: String = match &node.op {
            Op::Unary(u) => {
                let x = input(0)?;
                let (xdt, _) = self.dims_of(x)?;
                self.elementwise(&[x], odt, &odims, |b, a, _| unary(b, u, &a[0], xdt))
                    .map_err(|e| wrap(e.to_string()))?
            }
            Op::Binary(bop) => {
                let (x, y) = (input(0)?, input(1)?);
                let (xdt, _) = self.dims_of(x)?;
                let (ydt, _) = self.dims_of(y)?;
                self.elementwise(&[x, y], odt, &odims, |b, a, _| binary(b, bop, &a[0], &a[1], xdt, ydt))
                    .map_err(|e| wrap(e.to_string()))?
            }
            Op::Variadic(vop) => {
                let vs: Vec<ValueRef> = inputs.iter().copied().flatten().collect();
                if vs.is_empty() {
                    return Err(wrap("needs at least one input".into()));
                }
                let n = vs.len();
                let vop = *vop;
                self.elementwise(&vs, odt, &odims, |b, a, _| {
                    let mut acc = a[0].clone();
                    for x in &a[1..] {
                        acc = match vop {
                            VariadicOp::Sum | VariadicOp::Mean => b.add(&acc, x, odt),
                            VariadicOp::Max => b.max(&acc, x, odt),
                            VariadicOp::Min => b.min(&acc, x, odt),
                        };
                    }
                    if vop == VariadicOp::Mean {
                        let c = b.konst(n as f64, odt);
                        acc = b.div(&acc, &c, odt);
                    }
                    Ok(acc)
                })
                .map_err(|e| wrap(e.to_string()))?
            }
            Op::Where => {
                let vs = [input(0)?, input(1)?, input(2)?];
                self.elementwise(&vs, odt, &odims, |b, a, _| Ok(b.select(&a[0], &a[1], &a[2], odt)))
                    .map_err(|e| wrap(e.to_string()))?
            }
            Op::Clip => {
                let x = input(0)?;
                let lo = inputs.get(1).copied().flatten();
                let hi = inputs.get(2).copied().flatten();
                let mut vs = vec![x];
                vs.extend(lo);
                vs.extend(hi);
                let (has_lo, has_hi) = (lo.is_some(), hi.is_some());
                self.elementwise(&vs, odt, &odims, |b, a, _| {
                    let mut r = a[0].clone();
                    let mut k = 1;
                    if has_lo {
                        r = b.max(&r, &a[k], odt);
                        k += 1;
                    }
                    if has_hi {
                        r = b.min(&r, &a[k], odt);
                    }
                    Ok(r)
                })
                .map_err(|e| wrap(e.to_string()))?
            }
            Op::Cast(_) | Op::CastLike(_) => {
                let x = input(0)?;
                let (xdt, _) = self.dims_of(x)?;
                check_dtype(g, x, xdt)?;
                self.elementwise(&[x], odt, &odims, |b, a, _| b.convert(&a[0], xdt, odt))
                    .map_err(|e| wrap(e.to_string()))?
            }
            Op::Identity | Op::Dropout(_) => {
                if node.outputs.len() > 1 && used(1) {
                    return Err(wrap("the mask output is not lowered".into()));
                }
                self.val(input(0)?)?
            }
            Op::Reshape(_) | Op::Flatten(_) | Op::Squeeze | Op::Unsqueeze => {
                let x = input(0)?;
                self.reshape(x, &odims).map_err(|e| wrap(e.to_string()))?
            }
            Op::Transpose(t) => {
                let x = input(0)?;
                let (dt, shape) = self.dims_of(x)?;
                let r = shape.len();
                let perm: Vec<usize> = match &t.perm {
                    Some(p) => p.iter().map(|&a| a as usize).collect(),
                    None => (0..r).rev().collect(),
                };
                let mut inv = vec![usize::MAX; r];
                for (j, &p) in perm.iter().enumerate() {
                    if p >= r || inv[p] != usize::MAX {
                        return Err(wrap(format!("perm {perm:?} is not a permutation of rank {r}")));
                    }
                    inv[p] = j;
                }
                let ssa = self.val(x)?;
                let exprs: Vec<String> = (0..r).map(|p| format!("d{}", inv[p])).collect();
                let ins = [In { ssa, dtype: dt, shape, exprs }];
                self.generic(&ins, odt, &odims, &identity_exprs(r), &vec![true; r], Init::Empty, |_, a, _| {
                    Ok(a[0].clone())
                })
                .map_err(wrap)?
            }
            Op::Expand => {
                let x = input(0)?;
                self.elementwise(&[x], odt, &odims, |_, a, _| Ok(a[0].clone())).map_err(|e| wrap(e.to_string()))?
            }
            Op::MatMul => self.matmul(input(0)?, input(1)?, odt, &odims, 1.0, false, false).map_err(wrap)?,
            Op::Gemm(gm) => {
                let p = self
                    .matmul(input(0)?, input(1)?, odt, &odims, gm.alpha as f64, gm.trans_a, gm.trans_b)
                    .map_err(wrap)?;
                match inputs.get(2).copied().flatten() {
                    None => p,
                    Some(c) => {
                        let (cdt, cshape) = self.dims_of(c)?;
                        let cs = self.val(c)?;
                        let beta = gm.beta as f64;
                        let ins = [
                            In { ssa: p, dtype: odt, shape: odims.clone(), exprs: identity_exprs(2) },
                            In {
                                ssa: cs,
                                dtype: cdt,
                                exprs: bcast_exprs(&cshape, &odims).map_err(wrap)?,
                                shape: cshape,
                            },
                        ];
                        self.generic(&ins, odt, &odims, &identity_exprs(2), &[true, true], Init::Empty, |b, a, _| {
                            let c = if beta == 1.0 {
                                a[1].clone()
                            } else {
                                let k = b.konst(beta, odt);
                                b.mul(&k, &a[1], odt)
                            };
                            Ok(b.add(&a[0], &c, odt))
                        })
                        .map_err(wrap)?
                    }
                }
            }
            Op::Gather(ga) => self.gather(input(0)?, input(1)?, ga.axis, odt, &odims).map_err(wrap)?,
            Op::Slice => {
                let x = input(0)?;
                let starts = self.known_i64(Some(input(1)?), &name, &op_type, "starts")?.unwrap_or_default();
                let ends = self.known_i64(Some(input(2)?), &name, &op_type, "ends")?.unwrap_or_default();
                let axes = self.known_i64(inputs.get(3).copied().flatten(), &name, &op_type, "axes")?;
                let steps = self.known_i64(inputs.get(4).copied().flatten(), &name, &op_type, "steps")?;
                self.slice(x, &starts, &ends, axes, steps, odt, &odims).map_err(wrap)?
            }
            Op::Split(sp) => {
                let x = input(0)?;
                let (dt, shape) = self.dims_of(x)?;
                let r = shape.len() as i64;
                let axis = if sp.axis < 0 { sp.axis + r } else { sp.axis };
                if axis < 0 || axis >= r {
                    return Err(wrap(format!("axis {} is out of range for rank {r}", sp.axis)));
                }
                let axis = axis as usize;
                let Some(total) = shape[axis].fixed() else {
                    return Err(wrap("the split axis has a data-dependent size".into()));
                };
                let ssa = self.val(x)?;
                let mut offset = 0u64;
                for p in 0..node.outputs.len() {
                    let v = ValueRef::new(id, p as u32);
                    let (_, s) = self.dims_of(v)?;
                    let offs: Vec<String> =
                        (0..shape.len()).map(|i| if i == axis { offset.to_string() } else { "0".into() }).collect();
                    let sizes: Vec<String> = s.iter().map(|d| self.dim_operand(d)).collect::<R<_>>()?;
                    let ones = vec!["1"; shape.len()];
                    let out = self.fresh();
                    self.push(format!(
                        "{out} = tensor.extract_slice {ssa}[{}] [{}] [{}] : {} to {}",
                        offs.join(", "),
                        sizes.join(", "),
                        ones.join(", "),
                        tensor_ty(dt, &shape),
                        tensor_ty(dt, &s)
                    ));
                    offset += s
                        .get(axis)
                        .and_then(Dv::fixed)
                        .ok_or_else(|| wrap("a part has a data-dependent size".into()))?;
                    self.vals.insert(v, out);
                }
                if offset != total {
                    return Err(wrap(format!("the parts cover {offset} of the {total} elements on the axis")));
                }
                return Ok(());
            }
            Op::Concat(c) => {
                let vs: Vec<ValueRef> = inputs.iter().copied().flatten().collect();
                let r = odims.len() as i64;
                let axis = if c.axis < 0 { c.axis + r } else { c.axis };
                if axis < 0 || axis >= r {
                    return Err(wrap(format!("axis {} is out of range for rank {r}", c.axis)));
                }
                self.concat(&vs, axis as usize, odt, &odims)?
            }
            Op::Softmax(a) | Op::LogSoftmax(a) => {
                let log = matches!(node.op, Op::LogSoftmax(_));
                self.softmax(input(0)?, a.axis, log, odt, &static_out()?).map_err(wrap)?
            }
            Op::LayerNormalization(ln) => {
                if (1..node.outputs.len()).any(used) {
                    return Err(wrap("the Mean and InvStdDev outputs are not lowered".into()));
                }
                let bias = inputs.get(2).copied().flatten();
                self.layer_norm(input(0)?, input(1)?, bias, ln.axis, ln.epsilon as f64, odt, &static_out()?)
                    .map_err(wrap)?
            }
            Op::Reduce(rd) => {
                let x = input(0)?;
                let axes = self.known_i64(inputs.get(1).copied().flatten(), &name, &op_type, "axes")?;
                self.reduce(x, rd.kind, axes, rd.attrs.keepdims, rd.attrs.noop_with_empty_axes, odt, &static_out()?)
                    .map_err(wrap)?
            }
            Op::ConstantOfShape(c) => {
                let v = match &c.value {
                    Some(t) => t.to_f64_vec().and_then(|v| v.first().copied()).unwrap_or(0.0),
                    None => 0.0,
                };
                let r = odims.len();
                self.generic(&[], odt, &odims, &identity_exprs(r), &vec![true; r], Init::Fill(v), |_, _, o| {
                    Ok(o.to_string())
                })
                .map_err(wrap)?
            }
            Op::Range(_) => {
                let start = self.known_f64(input(0)?, &name, &op_type, "start")?;
                let delta = self.known_f64(input(2)?, &name, &op_type, "delta")?;
                self.generic(
                    &[],
                    odt,
                    &static_out().map(|s| dv(&s))?,
                    &identity_exprs(1),
                    &[true],
                    Init::Empty,
                    |b, _, _| {
                        let i = b.index(0);
                        let i64v = b.op(format!("arith.index_cast {i} : index to i64"));
                        let x = b.convert(&i64v, DType::I64, odt)?;
                        let s = b.konst(start, odt);
                        let d = b.konst(delta, odt);
                        let t = b.mul(&x, &d, odt);
                        Ok(b.add(&s, &t, odt))
                    },
                )
                .map_err(wrap)?
            }
            Op::Shape(a) => {
                // Shapes of values with run-time dims: the dims' sizes.
                let (_, xd) = self.dims_of(input(0)?)?;
                let r = xd.len() as i64;
                let norm = |x: i64| if x < 0 { (x + r).clamp(0, r) } else { x.clamp(0, r) } as usize;
                let (s, e) = (norm(a.start), norm(a.end.unwrap_or(r)));
                let mut vals = Vec::new();
                for d in &xd[s..e.max(s)] {
                    vals.push(self.dim_ssa(d)?);
                }
                let n = vals.len() as u64;
                self.tensor_of_indices(&vals, odt, &[n])?
            }
            Op::Size => {
                let (_, xd) = self.dims_of(input(0)?)?;
                let mut acc = self.index_const(1);
                for d in &xd {
                    let v = self.dim_ssa(d)?;
                    acc = self.index_op("arith.muli", &acc, &v);
                }
                self.tensor_of_indices(&[acc], odt, &[])?
            }
            Op::NonZero => self.non_zero(id, input(0)?, &odims)?,
            Op::OneHot(oh) => {
                let depth = self.known_i64(Some(input(1)?), &name, &op_type, "depth")?.unwrap_or_default();
                let &[depth] = depth.as_slice() else {
                    return Err(wrap("depth must hold one value".into()));
                };
                self.one_hot(input(0)?, depth, input(2)?, oh.axis, odt, &odims).map_err(wrap)?
            }
            Op::ScatterElements(se) => self
                .scatter_elements(input(0)?, input(1)?, input(2)?, se.axis, se.reduction, odt, &odims)
                .map_err(wrap)?,
            Op::TopK(tk) => {
                let k = self.known_i64(Some(input(1)?), &name, &op_type, "K")?.unwrap_or_default();
                let &[k] = k.as_slice() else {
                    return Err(wrap("K must hold one value".into()));
                };
                let (values, indices) = self.top_k(input(0)?, k, tk.axis, tk.largest, odt, &odims).map_err(wrap)?;
                self.vals.insert(ValueRef::new(id, 1), indices);
                values
            }
            other => {
                return Err(wrap(format!("{} has no MLIR lowering yet", other.op_type())));
            }
        };
        if node.outputs.len() > 1 && !matches!(node.op, Op::TopK(_)) && (1..node.outputs.len()).any(used) {
            return Err(wrap("only the first output is lowered".into()));
        }
        self.vals.insert(out0, result);
        Ok(())
    }
}

/// `[[true, false], [false, true]]` for a dense bool literal.
fn nested(items: &[&str], shape: &[usize]) -> String {
    if shape.is_empty() {
        return items.first().copied().unwrap_or("false").to_string();
    }
    let inner: usize = shape[1..].iter().product();
    let parts: Vec<String> = (0..shape[0]).map(|i| nested(&items[i * inner..(i + 1) * inner], &shape[1..])).collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::specialise::{parse_dims, specialise};
    use sharc_ir::op::GeluApproximation;
    use sharc_ir::{Dim, Type, Weight};

    fn lowered(g: &Graph, dims: &str) -> Result<Lowered, MlirError> {
        let sp = specialise(g, &parse_dims(&[dims]).unwrap())?;
        lower(&sp)
    }

    #[test]
    fn broadcast_maps_follow_numpy_rules() {
        let b = |i: &[u64], o: &[u64]| bcast_exprs(&dv(i), &dv(o)).unwrap();
        assert_eq!(b(&[4], &[2, 3, 4]), vec!["d2"]);
        assert_eq!(b(&[3, 1], &[2, 3, 4]), vec!["d1", "0"]);
        assert_eq!(b(&[1, 1], &[1, 1]), vec!["d0", "d1"]);
        assert!(b(&[], &[5]).is_empty());
        // A run-time dim reads through only where the result has the same dim.
        let n = Dv::S("n".into());
        assert_eq!(bcast_exprs(&[n.clone(), Dv::N(1)], &[n.clone(), Dv::N(4)]).unwrap(), vec!["d0", "0"]);
        assert!(bcast_exprs(&[n], &[Dv::N(4)]).is_err());
    }

    #[test]
    fn float_constants_are_exact_bit_patterns() {
        assert_eq!(float_bits(1.0, DType::F32), "0x3F800000");
        assert_eq!(float_bits(f64::NEG_INFINITY, DType::F32), "0xFF800000");
        assert_eq!(float_bits(-2.0, DType::F64), "0xC000000000000000");
        assert_eq!(float_bits(1.0, DType::F16), "0x3C00");
    }

    /// `x @ w @ w` where both products read one stored weight through two
    /// weight nodes (as importers emit for tied weights).
    fn shared_weight_mlp(k: usize) -> Graph {
        let mut g = Graph::new("mlp");
        let x = g.add_input("x", Type::tensor(DType::F32, vec![Dim::sym("batch"), Dim::Fixed(k as u64)]));
        let vals: Vec<f32> = (0..k * k).map(|i| i as f32 / 10.0).collect();
        let w = g.add_weight(Weight::from_tensor("w", Tensor::from_vec(&[k, k], vals)));
        let Op::Weight(id) = g.node(w.node).op else { panic!("add_weight makes a weight node") };
        let w2 = g.weight_value(id);
        let h = g.add_op(Op::MatMul, &[x, w], Type::Unknown);
        let h2 = g.add_op(Op::MatMul, &[h, w2], Type::Unknown);
        let y = g.add_op(Op::Unary(UnaryOp::Gelu { approximate: GeluApproximation::None }), &[h2], Type::Unknown);
        g.add_output("y", y);
        g
    }

    #[test]
    fn matmul_bias_gelu_lowers_to_a_contraction_with_shared_weight_passed_once() {
        // 9 x 9 = 81 elements: above SMALL_WEIGHT, so a run-time argument.
        let l = lowered(&shared_weight_mlp(9), "batch=3").unwrap();
        // One memref per input, per distinct weight, per output.
        assert_eq!(l.args.len(), 3, "{:?}", l.args);
        assert_eq!(l.args[0].shape, vec![3, 9]);
        assert!(matches!(l.args[1].kind, ArgKind::Weight(_)));
        assert!(
            l.text.contains("func.func @main(%in0: memref<3x9xf32>, %w0: memref<9x9xf32>, %out0: memref<3x9xf32>)"),
            "{}",
            l.text
        );
        // The contraction loops are ordered m, k, n with k a reduction (the
        // loop missing from the result).
        assert!(
            l.text.contains(
                "linalg.contract indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d1)>, \
                 affine_map<(d0, d1, d2) -> (d1, d2)>, affine_map<(d0, d1, d2) -> (d0, d2)>]"
            ),
            "{}",
            l.text
        );
        assert!(l.text.contains("math.erf"));
        assert_eq!(l.text.matches("bufferization.to_tensor %w0").count(), 1);
        assert_eq!(l.lowered_nodes, 3);
    }

    #[test]
    fn small_shared_weight_is_one_literal() {
        // 2 x 2 elements: folded into the module as a literal, emitted once
        // although two weight nodes refer to it.
        let l = lowered(&shared_weight_mlp(2), "batch=3").unwrap();
        assert_eq!(l.args.len(), 2, "{:?}", l.args);
        assert_eq!(l.text.matches("arith.constant dense<").count(), 1, "{}", l.text);
    }

    #[test]
    fn shape_arithmetic_folds_into_a_literal_reshape() {
        let mut g = Graph::new("r");
        let x = g.add_input("x", Type::tensor(DType::F32, vec![Dim::sym("b"), Dim::Fixed(6)]));
        let s = g.add_op(Op::Shape(sharc_ir::op::ShapeOf { start: 0, end: Some(1) }), &[x], Type::Unknown);
        let c = g.add_constant("c", Tensor::from_vec(&[2], vec![2i64, 3]));
        let shape = g.add_op(Op::Concat(sharc_ir::op::Concat { axis: 0 }), &[s, c], Type::Unknown);
        let y = g.add_op(Op::Reshape(sharc_ir::op::Reshape { allowzero: false }), &[x, shape], Type::Unknown);
        g.add_output("y", y);
        let l = lowered(&g, "b=4").unwrap();
        // [4, 6] -> [4, 2, 3] splits the last dim: an expand_shape.
        assert!(l.text.contains("tensor.expand_shape"), "{}", l.text);
        assert!(l.text.contains("output_shape [4, 2, 3]"), "{}", l.text);
        // Shape and Concat were evaluated at compile time.
        assert_eq!(l.lowered_nodes, 1);
    }

    #[test]
    fn unsupported_op_names_node_and_op() {
        let mut g = Graph::new("u");
        let x = g.add_input("x", Type::tensor(DType::F32, vec![Dim::Fixed(2), Dim::Fixed(2)]));
        let y = g.add_op(Op::Det, &[x], Type::Unknown);
        g.add_output("y", y);
        let err = lowered(&g, "").expect_err("Det has no lowering").to_string();
        assert!(err.contains("(Det)") && err.contains("no MLIR lowering"), "{err}");
    }

    /// `y = ScatterElements(t, rows, 2 * t[rows], axis 0)` with `rows` the
    /// non-zero positions of `x`: the MoE pattern of picking tokens,
    /// transforming them and writing them back. Shared with the JIT test.
    pub(crate) fn pick_and_scatter() -> Graph {
        use sharc_ir::op::{Gather, ScatterElements, ShapeOf};
        let mut g = Graph::new("nz");
        let x = g.add_input("x", Type::tensor(DType::F32, vec![Dim::Fixed(5)]));
        let t = g.add_input("t", Type::tensor(DType::F32, vec![Dim::Fixed(5), Dim::Fixed(3)]));
        let nz = g.add_op(Op::NonZero, &[x], Type::Unknown);
        let zero = g.add_constant("axes0", Tensor::from_vec(&[1], vec![0i64]));
        let one = g.add_constant("axes1", Tensor::from_vec(&[1], vec![1i64]));
        let rows = g.add_op(Op::Squeeze, &[nz, zero], Type::Unknown);
        let picked = g.add_op(Op::Gather(Gather { axis: 0 }), &[t, rows], Type::Unknown);
        let two = g.add_constant("two", Tensor::scalar(2.0f32));
        let upd = g.add_op(Op::Binary(sharc_ir::BinaryOp::Mul), &[picked, two], Type::Unknown);
        let col = g.add_op(Op::Unsqueeze, &[rows, one], Type::Unknown);
        let shape = g.add_op(Op::Shape(ShapeOf { start: 0, end: None }), &[picked], Type::Unknown);
        let idx = g.add_op(Op::Expand, &[col, shape], Type::Unknown);
        let se = ScatterElements { axis: 0, reduction: sharc_ir::op::ScatterReduction::None };
        let y = g.add_op(Op::ScatterElements(se), &[t, idx, upd], Type::Unknown);
        g.add_output("y", y);
        g
    }

    #[test]
    fn non_zero_binds_its_count_and_later_ops_use_it() {
        let sp = specialise(&pick_and_scatter(), &Default::default()).unwrap();
        let l = lower(&sp).unwrap();
        // The count is a reduction, then one ordered pass fills the result.
        assert!(l.text.contains("tensor<1x?xi64>"), "{}", l.text);
        assert!(l.text.contains("scf.for"), "{}", l.text);
        // The picked rows: as many as the count, allocated with it.
        assert!(l.text.lines().any(|s| s.contains("tensor.empty(%") && s.contains("tensor<?x3xf32>")), "{}", l.text);
        // The shape of the picked rows is built from the count at run time.
        assert!(l.text.contains("tensor.from_elements"), "{}", l.text);
        assert_eq!(l.args.len(), 3);
    }

    #[test]
    fn data_dependent_graph_outputs_are_refused_by_name() {
        let mut g = Graph::new("nz");
        let x = g.add_input("x", Type::tensor(DType::F32, vec![Dim::Fixed(5)]));
        let nz = g.add_op(Op::NonZero, &[x], Type::Unknown);
        g.add_output("idx", nz);
        let err = lowered(&g, "").expect_err("the output's size is data-dependent").to_string();
        assert!(err.contains("graph output 'idx'") && err.contains("data-dependent"), "{err}");
    }

    #[test]
    fn bool_constants_print_as_literals() {
        let items = ["true", "false", "false", "true"];
        assert_eq!(nested(&items, &[2, 2]), "[[true, false], [false, true]]");
        assert_eq!(nested(&["true"], &[]), "true");
    }
}

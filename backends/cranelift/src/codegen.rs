//! Cranelift code for fused kernels.
//!
//! Every kernel has the C signature
//! `void kernel(void *const *ptrs, int64_t row_start, int64_t row_end)`:
//! `ptrs` holds the base address of each input, then of each output, and
//! the kernel computes rows `row_start..row_end`, so a caller can split the
//! rows over threads. Shapes and strides are baked in as constants.
//!
//! Per row the kernel runs one loop over the row for each reduction and a
//! final loop that writes the outputs; each loop is `f32x4` where every
//! input it reads is contiguous or broadcast along the row, with a scalar
//! tail. Row positions advance like an odometer, so no division happens per
//! row.

use crate::CompileError;
use crate::kernel::{Binary, Cmp, Expr, ExprId, InputType, KernelSpec, Kind, Level, Logic, Reduce, Unary};
use crate::math::Math;
use cranelift_codegen::Context;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{AbiParam, InstBuilder, MemFlagsData, Type, UserFuncName, Value, types};
use cranelift_codegen::isa::TargetFrontendConfig;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_module::{FuncId, Linkage, Module};
use std::collections::{BTreeSet, HashMap};

/// Declares and defines a kernel in `module`.
pub(crate) fn define_kernel<M: Module>(
    module: &mut M,
    name: &str,
    linkage: Linkage,
    spec: &KernelSpec,
) -> Result<FuncId, CompileError> {
    let err = |m: String| CompileError::Codegen { what: format!("kernel {name}"), message: m };
    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    sig.params.push(AbiParam::new(ptr));
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(types::I64));
    let id = module.declare_function(name, linkage, &sig).map_err(|e| err(e.to_string()))?;
    let mut ctx = Context::new();
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, id.as_u32());
    build_kernel(&mut ctx.func, spec, module.target_config(), module.isa().has_native_fma());
    module.define_function(id, &mut ctx).map_err(|e| err(format!("{e:?}")))?;
    Ok(id)
}

/// Fills `func` (whose signature is the kernel signature) with the code of
/// `spec`; shared by [`define_kernel`] and the tests that read the machine
/// code.
fn build_kernel(
    func: &mut cranelift_codegen::ir::Function,
    spec: &KernelSpec,
    frontend: TargetFrontendConfig,
    fma: bool,
) {
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(func, &mut fctx);
    Gen::new(spec, frontend.pointer_type(), fma).emit(&mut b);
    b.seal_all_blocks();
    b.finalize(frontend);
}

fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

struct Gen<'s> {
    spec: &'s KernelSpec,
    ptr: Type,
    kinds: Vec<Kind>,
    levels: Vec<Level>,
    /// Base addresses: inputs, then outputs.
    bases: Vec<Value>,
    /// Byte offset of the current row, per input.
    offs: Vec<Variable>,
    row: Option<Variable>,
    /// Row values computed for the current row.
    row_cache: HashMap<ExprId, Value>,
    /// Their `f32x4` (or `i32x4` mask) splats, for vector loops.
    splat_cache: HashMap<ExprId, Value>,
    /// True when every input's row stride is 0 or 1, so loops can use f32x4.
    vectorizable: bool,
    /// Full expressions kept in an output's row by a reduction loop, so the
    /// final loop reads them instead of recomputing (softmax's `exp`):
    /// expression → (output index, that row's address).
    stored: HashMap<ExprId, (usize, Value)>,
    /// The output chosen by `scratch_for` for the loop being emitted.
    pending_scratch: Option<usize>,
    /// Whether the target fuses multiply-add (see [`Math::fma`]).
    fma: bool,
}

impl<'s> Gen<'s> {
    fn new(spec: &'s KernelSpec, ptr: Type, fma: bool) -> Gen<'s> {
        let vectorizable = spec.inputs.iter().all(|i| matches!(i.strides.last(), Some(0) | Some(1)));
        Gen {
            spec,
            ptr,
            kinds: spec.kinds(),
            levels: spec.levels(),
            bases: Vec::new(),
            offs: Vec::new(),
            row: None,
            row_cache: HashMap::new(),
            splat_cache: HashMap::new(),
            vectorizable,
            stored: HashMap::new(),
            pending_scratch: None,
            fma,
        }
    }

    fn esize(&self, k: usize) -> i64 {
        match self.spec.inputs[k].ty {
            InputType::F32 => 4,
            InputType::Bool => 1,
        }
    }

    fn emit(mut self, b: &mut FunctionBuilder) {
        let spec = self.spec;
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let params = b.block_params(entry).to_vec();
        let (table, start, end) = (params[0], params[1], params[2]);
        let n_ptrs = spec.inputs.len() + spec.outputs.len();
        for i in 0..n_ptrs {
            let p = b.ins().load(self.ptr, flags(), table, (i * 8) as i32);
            self.bases.push(p);
        }
        let exit = b.create_block();
        let header = b.create_block();
        let outer = &spec.dims[..spec.dims.len() - 1];
        // Decompose row_start into indices once.
        let mut idx_vars = Vec::new();
        let mut idx_vals = vec![None; outer.len()];
        let mut r = start;
        for d in (0..outer.len()).rev() {
            let dim = b.ins().iconst(types::I64, outer[d] as i64);
            idx_vals[d] = Some(b.ins().urem(r, dim));
            r = b.ins().udiv(r, dim);
        }
        for v in idx_vals.iter().flatten() {
            let var = b.declare_var(types::I64);
            b.def_var(var, *v);
            idx_vars.push(var);
        }
        for k in 0..spec.inputs.len() {
            let es = self.esize(k);
            let mut off = b.ins().iconst(types::I64, 0);
            for (d, iv) in idx_vals.iter().enumerate() {
                let s = spec.inputs[k].strides[d] as i64 * es;
                if s != 0 {
                    let t = b.ins().imul_imm_s(iv.expect("index"), s);
                    off = b.ins().iadd(off, t);
                }
            }
            let var = b.declare_var(types::I64);
            b.def_var(var, off);
            self.offs.push(var);
        }
        let row = b.declare_var(types::I64);
        b.def_var(row, start);
        self.row = Some(row);
        let empty = b.ins().icmp(IntCC::SignedGreaterThanOrEqual, start, end);
        b.ins().brif(empty, exit, &[], header, &[]);

        // One row.
        b.switch_to_block(header);
        self.row_cache.clear();
        self.splat_cache.clear();
        self.stored.clear();
        let reductions: Vec<ExprId> =
            (0..spec.exprs.len()).filter(|&e| matches!(spec.exprs[e], Expr::Reduce(..))).collect();
        for r in reductions {
            self.emit_reduction(b, r);
        }
        self.emit_outputs(b);

        // Next row: odometer increment of indices and offsets.
        let row_v = b.use_var(row);
        let next = b.ins().iadd_imm_s(row_v, 1);
        b.def_var(row, next);
        let done = b.ins().icmp(IntCC::SignedGreaterThanOrEqual, next, end);
        let mut inc_blocks: Vec<_> = (0..outer.len()).map(|_| b.create_block()).collect();
        if outer.is_empty() {
            b.ins().brif(done, exit, &[], header, &[]);
        } else {
            let last = *inc_blocks.last().expect("non-empty");
            b.ins().brif(done, exit, &[], last, &[]);
            for d in (0..outer.len()).rev() {
                b.switch_to_block(inc_blocks[d]);
                let iv = b.use_var(idx_vars[d]);
                let iv = b.ins().iadd_imm_s(iv, 1);
                b.def_var(idx_vars[d], iv);
                for k in 0..spec.inputs.len() {
                    let s = spec.inputs[k].strides[d] as i64 * self.esize(k);
                    if s != 0 {
                        let o = b.use_var(self.offs[k]);
                        let o = b.ins().iadd_imm_s(o, s);
                        b.def_var(self.offs[k], o);
                    }
                }
                if d == 0 {
                    b.ins().jump(header, &[]);
                } else {
                    let wrap = b.create_block();
                    let more = b.ins().icmp_imm_s(IntCC::SignedLessThan, iv, outer[d] as i64);
                    b.ins().brif(more, header, &[], wrap, &[]);
                    b.switch_to_block(wrap);
                    let zero = b.ins().iconst(types::I64, 0);
                    b.def_var(idx_vars[d], zero);
                    for k in 0..spec.inputs.len() {
                        let s = spec.inputs[k].strides[d] as i64 * self.esize(k) * outer[d] as i64;
                        if s != 0 {
                            let o = b.use_var(self.offs[k]);
                            let o = b.ins().iadd_imm_s(o, -s);
                            b.def_var(self.offs[k], o);
                        }
                    }
                    b.ins().jump(inc_blocks[d - 1], &[]);
                }
            }
        }
        inc_blocks.clear();
        b.switch_to_block(exit);
        b.ins().return_(&[]);
    }

    /// Row values reachable from `e` through full expressions: what a loop
    /// over the row needs computed before it starts.
    fn row_deps(&self, e: ExprId, out: &mut BTreeSet<ExprId>) {
        if self.levels[e] == Level::Row {
            out.insert(e);
            return;
        }
        match &self.spec.exprs[e] {
            Expr::Input(_) | Expr::Const(_) | Expr::Reduce(..) => {}
            Expr::Unary(_, a) | Expr::Not(a) | Expr::MaskToF32(a) | Expr::F32ToMask(a) => self.row_deps(*a, out),
            Expr::Binary(_, a, c) | Expr::Cmp(_, a, c) | Expr::Logic(_, a, c) => {
                self.row_deps(*a, out);
                self.row_deps(*c, out);
            }
            Expr::Select(m, a, c) => {
                self.row_deps(*m, out);
                self.row_deps(*a, out);
                self.row_deps(*c, out);
            }
        }
    }

    /// Computes row values (and their splats when `vector`) before a loop.
    fn prepare(&mut self, b: &mut FunctionBuilder, deps: &BTreeSet<ExprId>, vector: bool) {
        for &e in deps {
            let v = self.row_value(b, e);
            if vector && !self.splat_cache.contains_key(&e) {
                let s = match self.kinds[e] {
                    Kind::F32 => b.ins().splat(types::F32X4, v),
                    Kind::Mask => {
                        let t = b.ins().iconst(types::I32, -1);
                        let f = b.ins().iconst(types::I32, 0);
                        let w = b.ins().select(v, t, f);
                        b.ins().splat(types::I32X4, w)
                    }
                };
                self.splat_cache.insert(e, s);
            }
        }
    }

    /// A row-level value (scalar), computed once per row.
    fn row_value(&mut self, b: &mut FunctionBuilder, e: ExprId) -> Value {
        if let Some(v) = self.row_cache.get(&e) {
            return *v;
        }
        let m = Math { ty: types::F32, fma: self.fma };
        let v = match self.spec.exprs[e].clone() {
            Expr::Input(k) => {
                let addr = self.addr(b, k, None);
                self.load(b, k, addr, false)
            }
            Expr::Reduce(..) => unreachable!("reductions are computed before their users"),
            other => {
                let mut ops = Vec::new();
                for a in operands(&other) {
                    ops.push(self.row_value(b, a));
                }
                self.apply(b, &m, &other, &ops, false)
            }
        };
        self.row_cache.insert(e, v);
        v
    }

    /// Address of input `k` at row position `j` (an i64 element index) of the
    /// current row; `None` is position 0.
    fn addr(&self, b: &mut FunctionBuilder, k: usize, j: Option<Value>) -> Value {
        let off = b.use_var(self.offs[k]);
        let base = b.ins().iadd(self.bases[k], off);
        match j {
            None => base,
            Some(j) => {
                let s = *self.spec.inputs[k].strides.last().expect("dims") as i64 * self.esize(k);
                if s == 0 {
                    base
                } else {
                    let t = b.ins().imul_imm_s(j, s);
                    b.ins().iadd(base, t)
                }
            }
        }
    }

    fn load(&self, b: &mut FunctionBuilder, k: usize, addr: Value, vector: bool) -> Value {
        match (self.spec.inputs[k].ty, vector) {
            (InputType::F32, false) => b.ins().load(types::F32, flags(), addr, 0),
            (InputType::F32, true) => b.ins().load(types::F32X4, flags(), addr, 0),
            (InputType::Bool, false) => {
                let x = b.ins().uload8(types::I32, flags(), addr, 0);
                b.ins().icmp_imm_s(IntCC::NotEqual, x, 0)
            }
            (InputType::Bool, true) => {
                let z = b.ins().iconst(types::I32, 0);
                let mut v = b.ins().splat(types::I32X4, z);
                for lane in 0..4u8 {
                    let x = b.ins().uload8(types::I32, flags(), addr, lane as i32);
                    v = b.ins().insertlane(v, x, lane);
                }
                let zero = b.ins().splat(types::I32X4, z);
                b.ins().icmp(IntCC::NotEqual, v, zero)
            }
        }
    }

    /// A full-level expression at position `j` (vector: lanes j..j+4).
    fn full_value(
        &mut self,
        b: &mut FunctionBuilder,
        e: ExprId,
        j: Value,
        vector: bool,
        cache: &mut HashMap<ExprId, Value>,
    ) -> Value {
        if let Some(v) = cache.get(&e) {
            return *v;
        }
        if self.levels[e] == Level::Row {
            return if vector { self.splat_cache[&e] } else { self.row_cache[&e] };
        }
        if let Some(&(_, row_addr)) = self.stored.get(&e) {
            let off = b.ins().imul_imm_s(j, 4);
            let addr = b.ins().iadd(row_addr, off);
            let v = b.ins().load(if vector { types::F32X4 } else { types::F32 }, flags(), addr, 0);
            cache.insert(e, v);
            return v;
        }
        let m = Math { ty: if vector { types::F32X4 } else { types::F32 }, fma: self.fma };
        let v = match self.spec.exprs[e].clone() {
            Expr::Input(k) => {
                let addr = self.addr(b, k, Some(j));
                self.load(b, k, addr, vector)
            }
            Expr::Binary(Binary::Div, a, c) if self.reciprocal_of(c).is_some() => {
                let x = self.full_value(b, a, j, vector, cache);
                let r = m.f(b, self.reciprocal_of(c).expect("checked by the guard"));
                b.ins().fmul(x, r)
            }
            other => {
                let mut ops = Vec::new();
                for a in operands(&other) {
                    ops.push(self.full_value(b, a, j, vector, cache));
                }
                self.apply(b, &m, &other, &ops, vector)
            }
        };
        cache.insert(e, v);
        v
    }

    /// `1/c` when `e` is a constant `c` that can be divided by as a
    /// multiplication: `c` and `1/c` both normal floats, so nothing
    /// overflows or loses precision on the way. The product then differs
    /// from the quotient by at most an ulp (none when `c` is a power of
    /// two), and a division per element (a GELU's `x / sqrt(2)`, a
    /// `x / const` scaling) becomes a multiplication, which is several
    /// times cheaper and does not occupy the divider that `erf` needs.
    fn reciprocal_of(&self, e: ExprId) -> Option<f32> {
        let Expr::Const(c) = self.spec.exprs[e] else { return None };
        let r = 1.0 / c;
        (c.is_normal() && r.is_normal()).then_some(r)
    }

    /// One operation on already computed operands.
    fn apply(&self, b: &mut FunctionBuilder, m: &Math, e: &Expr, ops: &[Value], vector: bool) -> Value {
        match e {
            Expr::Const(c) => m.f(b, *c),
            Expr::Unary(u, _) => {
                let x = ops[0];
                match u {
                    Unary::Neg => b.ins().fneg(x),
                    Unary::Abs => b.ins().fabs(x),
                    Unary::Sqrt => b.ins().sqrt(x),
                    Unary::Recip => {
                        let one = m.f(b, 1.0);
                        b.ins().fdiv(one, x)
                    }
                    Unary::Exp => m.exp(b, x),
                    Unary::Log => m.log(b, x),
                    Unary::Tanh => m.tanh(b, x),
                    Unary::Erf => m.erf(b, x),
                    Unary::Sigmoid => m.sigmoid(b, x),
                    Unary::Floor => b.ins().floor(x),
                    Unary::Ceil => b.ins().ceil(x),
                    Unary::Round => b.ins().nearest(x),
                }
            }
            Expr::Binary(op, ..) => {
                let (x, y) = (ops[0], ops[1]);
                match op {
                    Binary::Add => b.ins().fadd(x, y),
                    Binary::Sub => b.ins().fsub(x, y),
                    Binary::Mul => b.ins().fmul(x, y),
                    Binary::Div => b.ins().fdiv(x, y),
                    Binary::Max => b.ins().fmax(x, y),
                    Binary::Min => b.ins().fmin(x, y),
                }
            }
            Expr::Cmp(c, ..) => {
                let cc = match c {
                    Cmp::Eq => FloatCC::Equal,
                    Cmp::Lt => FloatCC::LessThan,
                    Cmp::Le => FloatCC::LessThanOrEqual,
                    Cmp::Gt => FloatCC::GreaterThan,
                    Cmp::Ge => FloatCC::GreaterThanOrEqual,
                };
                b.ins().fcmp(cc, ops[0], ops[1])
            }
            Expr::Logic(l, ..) => match l {
                Logic::And => b.ins().band(ops[0], ops[1]),
                Logic::Or => b.ins().bor(ops[0], ops[1]),
                Logic::Xor => b.ins().bxor(ops[0], ops[1]),
            },
            Expr::Not(_) => {
                if vector {
                    b.ins().bnot(ops[0])
                } else {
                    b.ins().bxor_imm_s(ops[0], 1)
                }
            }
            Expr::Select(..) => {
                if vector {
                    let mask = b.ins().bitcast(types::F32X4, MemFlagsData::new(), ops[0]);
                    let is_mask = b.func.dfg.value_type(ops[1]) == types::I32X4;
                    if is_mask {
                        let x = b.ins().bitcast(types::F32X4, MemFlagsData::new(), ops[1]);
                        let y = b.ins().bitcast(types::F32X4, MemFlagsData::new(), ops[2]);
                        let r = b.ins().bitselect(mask, x, y);
                        b.ins().bitcast(types::I32X4, MemFlagsData::new(), r)
                    } else {
                        b.ins().bitselect(mask, ops[1], ops[2])
                    }
                } else {
                    b.ins().select(ops[0], ops[1], ops[2])
                }
            }
            Expr::MaskToF32(_) => {
                let one = m.f(b, 1.0);
                if vector {
                    let mask = b.ins().bitcast(types::F32X4, MemFlagsData::new(), ops[0]);
                    b.ins().band(mask, one)
                } else {
                    let zero = m.f(b, 0.0);
                    b.ins().select(ops[0], one, zero)
                }
            }
            Expr::F32ToMask(_) => {
                let zero = m.f(b, 0.0);
                b.ins().fcmp(FloatCC::NotEqual, ops[0], zero)
            }
            Expr::Input(_) | Expr::Reduce(..) => unreachable!("handled by the callers"),
        }
    }

    /// Emits `for j in (start..end).step_by(step)` and calls `body(j)` in the
    /// loop body; `accs` are loop-carried values updated by `body`.
    fn emit_loop(
        &mut self,
        b: &mut FunctionBuilder,
        start: i64,
        end: i64,
        step: i64,
        mut body: impl FnMut(&mut Self, &mut FunctionBuilder, Value),
    ) {
        if start >= end {
            return;
        }
        let jv = b.declare_var(types::I64);
        let j0 = b.ins().iconst(types::I64, start);
        b.def_var(jv, j0);
        let head = b.create_block();
        let body_b = b.create_block();
        let exit = b.create_block();
        b.ins().jump(head, &[]);
        b.switch_to_block(head);
        let j = b.use_var(jv);
        // The exit must be the branch's *first* target. Cranelift's
        // elaboration (which does its loop-invariant code motion) walks the
        // dominator tree in an order where, with the body first, the code
        // after a loop is visited before the body and pops the loop off its
        // stack of loops: nothing in the body was then hoisted out of it, so
        // every row value (a softmax's max, the reciprocal of its sum, their
        // splats) and every constant of `exp` was recomputed per vector.
        let done = b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, j, end);
        b.ins().brif(done, exit, &[], body_b, &[]);
        b.switch_to_block(body_b);
        let j = b.use_var(jv);
        body(self, b, j);
        let j = b.use_var(jv);
        let nj = b.ins().iadd_imm_s(j, step);
        b.def_var(jv, nj);
        b.ins().jump(head, &[]);
        b.switch_to_block(exit);
    }

    fn vec_end(&self) -> i64 {
        let inner = self.spec.inner() as i64;
        if self.vectorizable { inner / 4 * 4 } else { 0 }
    }

    fn emit_reduction(&mut self, b: &mut FunctionBuilder, r: ExprId) {
        let Expr::Reduce(kind, a) = self.spec.exprs[r] else { unreachable!("a reduction") };
        let inner = self.spec.inner() as i64;
        let mut deps = BTreeSet::new();
        self.row_deps(a, &mut deps);
        if self.levels[a] == Level::Row {
            // Reducing a value that is constant along the row.
            let v = self.row_value(b, a);
            let out = match kind {
                Reduce::Sum => {
                    let n = b.ins().f32const(inner as f32);
                    b.ins().fmul(v, n)
                }
                Reduce::Max | Reduce::Min => v,
            };
            self.row_cache.insert(r, out);
            return;
        }
        let vec_end = self.vec_end();
        self.prepare(b, &deps, vec_end > 0);
        let keep = self.scratch_for(b, a);
        let identity = match kind {
            Reduce::Sum => 0.0,
            Reduce::Max => f32::NEG_INFINITY,
            Reduce::Min => f32::INFINITY,
        };
        let fma = self.fma;
        // Max and min as the compare-and-select that is one `maxps`/`minps`
        // on x86 (Cranelift's `fmax`/`fmin` are an eight-instruction NaN
        // and signed-zero sequence there, and on the accumulator's
        // dependency chain). Those drop a NaN operand, so NaN is tracked
        // apart, in a mask that only ORs, and restored after the loops.
        let combine = |b: &mut FunctionBuilder, acc: Value, x: Value| {
            let m = Math { ty: b.func.dfg.value_type(acc), fma };
            match kind {
                Reduce::Sum => b.ins().fadd(acc, x),
                Reduce::Max => {
                    let c = b.ins().fcmp(FloatCC::LessThan, acc, x);
                    m.select(b, c, x, acc)
                }
                Reduce::Min => {
                    let c = b.ins().fcmp(FloatCC::LessThan, x, acc);
                    m.select(b, c, x, acc)
                }
            }
        };
        let track_nan = kind != Reduce::Sum;
        let note_nan = |b: &mut FunctionBuilder, var: Variable, x: Value| {
            let u = b.ins().fcmp(FloatCC::Unordered, x, x);
            let seen = b.use_var(var);
            let seen = b.ins().bor(seen, u);
            b.def_var(var, seen);
        };
        // One element (or vector) at column j into an accumulator: computed,
        // kept in the row's scratch when a later pass rereads it, combined,
        // and its NaN noted.
        let fold = |g: &mut Self, b: &mut FunctionBuilder, j: Value, vector: bool, acc: Variable, nan: Variable| {
            let mut cache = HashMap::new();
            let x = g.full_value(b, a, j, vector, &mut cache);
            if let Some(row_addr) = keep {
                let off = b.ins().imul_imm_s(j, 4);
                let addr = b.ins().iadd(row_addr, off);
                b.ins().store(flags(), x, addr, 0);
            }
            let sum = b.use_var(acc);
            let sum = combine(b, sum, x);
            b.def_var(acc, sum);
            if track_nan {
                note_nan(b, nan, x);
            }
        };
        let sacc = b.declare_var(types::F32);
        let init = b.ins().f32const(identity);
        b.def_var(sacc, init);
        let snan = b.declare_var(types::I8);
        let no = b.ins().iconst(types::I8, 0);
        b.def_var(snan, no);
        if vec_end > 0 {
            // A cheap reduced value (a LayerNorm's sums: a load and an add)
            // leaves the loop waiting on the accumulator's add latency, so it
            // gets up to four accumulators, each a vector apart; an
            // expensive one (softmax's exp) is bound by its own work and
            // keeps one, which also keeps its registers free.
            let ways: i64 =
                if self.expensive(a) { 1 } else { [4, 2, 1].into_iter().find(|&w| vec_end >= 8 * w).unwrap_or(1) };
            let accs: Vec<Variable> = (0..ways).map(|_| b.declare_var(types::F32X4)).collect();
            let init = b.ins().splat(types::F32X4, init);
            for &acc in &accs {
                b.def_var(acc, init);
            }
            let vnan = b.declare_var(types::I32X4);
            let no = b.ins().iconst(types::I32, 0);
            let no = b.ins().splat(types::I32X4, no);
            b.def_var(vnan, no);
            let unrolled_end = vec_end / (4 * ways) * (4 * ways);
            for (lo, hi, ways) in [(0, unrolled_end, ways), (unrolled_end, vec_end, 1)] {
                self.emit_loop(b, lo, hi, 4 * ways, |g, b, j| {
                    for (w, &var) in accs.iter().take(ways as usize).enumerate() {
                        let jw = if w == 0 { j } else { b.ins().iadd_imm_s(j, 4 * w as i64) };
                        fold(g, b, jw, true, var, vnan);
                    }
                });
            }
            let mut vals: Vec<Value> = accs.iter().map(|&v| b.use_var(v)).collect();
            while vals.len() > 1 {
                vals = vals.chunks(2).map(|p| combine(b, p[0], p[1])).collect();
            }
            let vacc = b.declare_var(types::F32X4);
            b.def_var(vacc, vals[0]);
            let acc = b.use_var(vacc);
            let l: Vec<Value> = (0..4u8).map(|i| b.ins().extractlane(acc, i)).collect();
            let x = combine(b, l[0], l[1]);
            let y = combine(b, l[2], l[3]);
            let s = combine(b, x, y);
            b.def_var(sacc, s);
            if track_nan {
                let seen = b.use_var(vnan);
                let any = b.ins().vany_true(seen);
                b.def_var(snan, any);
            }
        }
        if vec_end < inner {
            self.prepare(b, &deps, false);
            self.emit_loop(b, vec_end, inner, 1, |g, b, j| fold(g, b, j, false, sacc, snan));
        }
        if track_nan {
            let s = b.use_var(sacc);
            let seen = b.use_var(snan);
            let nan = b.ins().f32const(f32::NAN);
            let s = b.ins().select(seen, nan, s);
            b.def_var(sacc, s);
        }
        let v = b.use_var(sacc);
        self.row_cache.insert(r, v);
        if let (Some(row_addr), Some(o)) = (keep, self.pending_scratch.take()) {
            self.stored.insert(a, (o, row_addr));
        }
    }

    /// When `a` (reduced in the coming loop) is expensive and the outputs
    /// need it again, picks a full output whose row can hold it meanwhile
    /// and returns that row's address. Output rows are written only by the
    /// final loop, which reads each kept value before writing over it.
    fn scratch_for(&mut self, b: &mut FunctionBuilder, a: ExprId) -> Option<Value> {
        if self.stored.contains_key(&a) || !self.expensive(a) {
            return None;
        }
        let spec = self.spec;
        let mut finals = BTreeSet::new();
        for o in &spec.outputs {
            if o.level == Level::Full {
                self.full_deps(o.expr, &mut finals);
            }
        }
        if !finals.contains(&a) {
            return None;
        }
        let used: Vec<usize> = self.stored.values().map(|(o, _)| *o).collect();
        let o = (0..spec.outputs.len()).find(|&o| spec.outputs[o].level == Level::Full && !used.contains(&o))?;
        let row = b.use_var(self.row.expect("row variable"));
        let off = b.ins().imul_imm_s(row, spec.inner() as i64 * 4);
        let addr = b.ins().iadd(self.bases[spec.inputs.len() + o], off);
        self.pending_scratch = Some(o);
        Some(addr)
    }

    /// Full expressions reachable from `e` without crossing a row value.
    fn full_deps(&self, e: ExprId, out: &mut BTreeSet<ExprId>) {
        if self.levels[e] == Level::Row || !out.insert(e) {
            return;
        }
        for a in operands(&self.spec.exprs[e]) {
            self.full_deps(a, out);
        }
    }

    /// True when `e` computes a transcendental function per element.
    fn expensive(&self, e: ExprId) -> bool {
        let mut deps = BTreeSet::new();
        self.full_deps(e, &mut deps);
        deps.iter().any(|&d| {
            matches!(
                self.spec.exprs[d],
                Expr::Unary(Unary::Exp | Unary::Log | Unary::Tanh | Unary::Erf | Unary::Sigmoid, _)
            )
        })
    }

    fn emit_outputs(&mut self, b: &mut FunctionBuilder) {
        let spec = self.spec;
        let inner = spec.inner() as i64;
        let n_in = spec.inputs.len();
        let row = b.use_var(self.row.expect("row variable"));
        // Row outputs first: they need no loop.
        let mut full = Vec::new();
        for (o, out) in spec.outputs.iter().enumerate() {
            match out.level {
                Level::Row => {
                    let v = self.row_value(b, out.expr);
                    let off = b.ins().imul_imm_s(row, 4);
                    let addr = b.ins().iadd(self.bases[n_in + o], off);
                    b.ins().store(flags(), v, addr, 0);
                }
                Level::Full => full.push((o, out.expr)),
            }
        }
        if full.is_empty() {
            return;
        }
        let mut deps = BTreeSet::new();
        for &(_, e) in &full {
            self.row_deps(e, &mut deps);
        }
        let vec_end = self.vec_end();
        self.prepare(b, &deps, vec_end > 0);
        let row_off = b.ins().imul_imm_s(row, inner * 4);
        let out_bases: Vec<Value> = full.iter().map(|&(o, _)| b.ins().iadd(self.bases[n_in + o], row_off)).collect();
        for (vector, lo, hi, step) in [(true, 0, vec_end, 4), (false, vec_end, inner, 1)] {
            if lo >= hi {
                continue;
            }
            let kept: Vec<ExprId> = self.stored.keys().copied().collect();
            self.emit_loop(b, lo, hi, step, |g, b, j| {
                let mut cache = HashMap::new();
                // Kept values live in output rows: read them all before any
                // output of this position is written.
                for &e in &kept {
                    g.full_value(b, e, j, vector, &mut cache);
                }
                for (i, &(_, e)) in full.iter().enumerate() {
                    let v = g.full_value(b, e, j, vector, &mut cache);
                    let off = b.ins().imul_imm_s(j, 4);
                    let addr = b.ins().iadd(out_bases[i], off);
                    b.ins().store(flags(), v, addr, 0);
                }
            });
        }
    }
}

fn operands(e: &Expr) -> Vec<ExprId> {
    match e {
        Expr::Input(_) | Expr::Const(_) => vec![],
        Expr::Unary(_, a) | Expr::Not(a) | Expr::MaskToF32(a) | Expr::F32ToMask(a) | Expr::Reduce(_, a) => vec![*a],
        Expr::Binary(_, a, c) | Expr::Cmp(_, a, c) | Expr::Logic(_, a, c) => vec![*a, *c],
        Expr::Select(m, a, c) => vec![*m, *a, *c],
    }
}

/// Emits `for i in (start..end).step_by(step) { body(i) }` with i64 bounds.
fn for_loop(
    b: &mut FunctionBuilder,
    start: Value,
    end: Value,
    step: i64,
    mut body: impl FnMut(&mut FunctionBuilder, Value),
) {
    let iv = b.declare_var(types::I64);
    b.def_var(iv, start);
    let head = b.create_block();
    let body_b = b.create_block();
    let exit = b.create_block();
    b.ins().jump(head, &[]);
    b.switch_to_block(head);
    let i = b.use_var(iv);
    // The exit first, as in `Gen::emit_loop`: otherwise nothing is hoisted
    // out of the body.
    let done = b.ins().icmp(IntCC::SignedGreaterThanOrEqual, i, end);
    b.ins().brif(done, exit, &[], body_b, &[]);
    b.switch_to_block(body_b);
    let i = b.use_var(iv);
    body(b, i);
    let i = b.use_var(iv);
    let ni = b.ins().iadd_imm_s(i, step);
    b.def_var(iv, ni);
    b.ins().jump(head, &[]);
    b.switch_to_block(exit);
}

/// Declares and defines a matrix-product kernel: the same row-kernel
/// signature as fused kernels, with the pointer table `[A, B, out]` and
/// rows counting `batch × m` output rows.
pub(crate) fn define_matmul<M: Module>(
    module: &mut M,
    name: &str,
    linkage: Linkage,
    spec: &crate::matmul::MatMulSpec,
) -> Result<FuncId, CompileError> {
    let err = |m: String| CompileError::Codegen { what: format!("matmul kernel {name}"), message: m };
    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    sig.params.push(AbiParam::new(ptr));
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(types::I64));
    let id = module.declare_function(name, linkage, &sig).map_err(|e| err(e.to_string()))?;
    let mut ctx = Context::new();
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, id.as_u32());
    let frontend = module.target_config();
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        emit_matmul(&mut b, ptr, spec);
        b.seal_all_blocks();
        b.finalize(frontend);
    }
    module.define_function(id, &mut ctx).map_err(|e| err(format!("{e:?}")))?;
    Ok(id)
}

fn emit_matmul(b: &mut FunctionBuilder, ptr: Type, s: &crate::matmul::MatMulSpec) {
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let p = b.block_params(entry).to_vec();
    let (table, start, end) = (p[0], p[1], p[2]);
    let a = b.ins().load(ptr, flags(), table, 0);
    let bb = b.ins().load(ptr, flags(), table, 8);
    let out = b.ins().load(ptr, flags(), table, 16);
    let (m, n, k) = (s.m as i64, s.n as i64, s.k as i64);
    let alpha = s.alpha();
    // Columns in blocks of 8 and 4 when B is contiguous along them.
    let (n8, n4) = if s.b_cs == 1 { (n / 8 * 8, n / 4 * 4) } else { (0, 0) };
    for_loop(b, start, end, 1, |b, r| {
        let bi = b.ins().udiv_imm_s(r, m);
        let mi = b.ins().urem_imm_s(r, m);
        // Batch offsets (elements) of A and B.
        let mut oa = b.ins().imul_imm_s(mi, s.a_rs as i64);
        let mut ob = b.ins().iconst(types::I64, 0);
        let mut rest = bi;
        for d in (0..s.batch.len()).rev() {
            let idx = b.ins().urem_imm_s(rest, s.batch[d] as i64);
            rest = b.ins().udiv_imm_s(rest, s.batch[d] as i64);
            if s.a_bstrides[d] != 0 {
                let t = b.ins().imul_imm_s(idx, s.a_bstrides[d] as i64);
                oa = b.ins().iadd(oa, t);
            }
            if s.b_bstrides[d] != 0 {
                let t = b.ins().imul_imm_s(idx, s.b_bstrides[d] as i64);
                ob = b.ins().iadd(ob, t);
            }
        }
        let oa4 = b.ins().imul_imm_s(oa, 4);
        let a_row = b.ins().iadd(a, oa4);
        let ob4 = b.ins().imul_imm_s(ob, 4);
        let b_base = b.ins().iadd(bb, ob4);
        let ro = b.ins().imul_imm_s(r, n * 4);
        let o_row = b.ins().iadd(out, ro);
        for (lo, hi, lanes) in [(0, n8, 8), (n8, n4, 4), (n4, n, 1)] {
            if lo >= hi {
                continue;
            }
            let lo_v = b.ins().iconst(types::I64, lo);
            let hi_v = b.ins().iconst(types::I64, hi);
            for_loop(b, lo_v, hi_v, lanes, |b, j| {
                let (ty, nacc) = match lanes {
                    8 => (types::F32X4, 2),
                    4 => (types::F32X4, 1),
                    _ => (types::F32, 1),
                };
                let accs: Vec<Variable> = (0..nacc).map(|_| b.declare_var(ty)).collect();
                let z = b.ins().f32const(0.0);
                let zv = if ty == types::F32 { z } else { b.ins().splat(ty, z) };
                for &acc in &accs {
                    b.def_var(acc, zv);
                }
                let j4 = b.ins().imul_imm_s(j, 4 * s.b_cs as i64);
                let bcol = b.ins().iadd(b_base, j4);
                let k0 = b.ins().iconst(types::I64, 0);
                let kend = b.ins().iconst(types::I64, k);
                for_loop(b, k0, kend, 1, |b, kk| {
                    let ao = b.ins().imul_imm_s(kk, s.a_cs as i64 * 4);
                    let ap = b.ins().iadd(a_row, ao);
                    let av = b.ins().load(types::F32, flags(), ap, 0);
                    let av = if ty == types::F32 { av } else { b.ins().splat(ty, av) };
                    let bo = b.ins().imul_imm_s(kk, s.b_rs as i64 * 4);
                    let bp = b.ins().iadd(bcol, bo);
                    for (i, &acc) in accs.iter().enumerate() {
                        let bv = b.ins().load(ty, flags(), bp, (i * 16) as i32);
                        let prod = b.ins().fmul(av, bv);
                        let cur = b.use_var(acc);
                        let sum = b.ins().fadd(cur, prod);
                        b.def_var(acc, sum);
                    }
                });
                let jo = b.ins().imul_imm_s(j, 4);
                let op = b.ins().iadd(o_row, jo);
                let al = b.ins().f32const(alpha);
                let al = if ty == types::F32 { al } else { b.ins().splat(ty, al) };
                for (i, &acc) in accs.iter().enumerate() {
                    let v = b.use_var(acc);
                    let v = if alpha == 1.0 { v } else { b.ins().fmul(v, al) };
                    b.ins().store(flags(), v, op, (i * 16) as i32);
                }
            });
        }
    });
    b.ins().return_(&[]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{InputSpec, OutputSpec};
    use cranelift_codegen::control::ControlPlane;
    use cranelift_codegen::ir::{Function, Opcode, Signature};
    use cranelift_codegen::isa::CallConv;
    use cranelift_codegen::settings::{self, Configurable};
    use cranelift_module::Linkage;

    /// A kernel compiled for the host: its machine code as Cranelift prints
    /// it, and the loop depth of each optimised CLIF instruction's block with
    /// the instruction's opcode (depth 1 is the loop over rows).
    pub(crate) fn compile_for_host(spec: &KernelSpec) -> (String, Vec<(usize, Opcode)>) {
        let mut flags = settings::builder();
        flags.set("opt_level", "speed").expect("opt_level");
        let isa = cranelift_native::builder().expect("host isa").finish(settings::Flags::new(flags)).expect("isa");
        let mut sig = Signature::new(CallConv::triple_default(isa.triple()));
        sig.params.push(AbiParam::new(isa.pointer_type()));
        sig.params.push(AbiParam::new(types::I64));
        sig.params.push(AbiParam::new(types::I64));
        let mut func = Function::with_name_signature(UserFuncName::user(0, 0), sig);
        build_kernel(&mut func, spec, isa.frontend_config(), isa.has_native_fma());
        let mut ctx = Context::for_function(func);
        ctx.set_disasm(true);
        ctx.compile(&*isa, &mut ControlPlane::default()).expect("compiles");
        let code = ctx.compiled_code().and_then(|c| c.vcode.clone()).expect("disassembly");
        ctx.compute_cfg();
        ctx.compute_domtree();
        ctx.compute_loop_analysis();
        let mut insts = Vec::new();
        for block in ctx.func.layout.blocks() {
            let depth = ctx.loop_analysis.loop_level(block).level();
            for inst in ctx.func.layout.block_insts(block) {
                insts.push((depth, ctx.func.dfg.insts[inst].opcode()));
            }
        }
        (code, insts)
    }

    /// Attention's epilogue: `softmax(x * scale + mask)` over rows of `n`,
    /// the mask broadcast over the rows of a head.
    pub(crate) fn attention_softmax(rows: usize, n: usize) -> KernelSpec {
        use Binary as B;
        let exprs = vec![
            Expr::Input(0),
            Expr::Const(0.125),
            Expr::Binary(B::Mul, 0, 1),
            Expr::Input(1),
            Expr::Binary(B::Add, 2, 3),
            Expr::Reduce(Reduce::Max, 4),
            Expr::Binary(B::Sub, 4, 5),
            Expr::Unary(Unary::Exp, 6),
            Expr::Reduce(Reduce::Sum, 7),
            Expr::Unary(Unary::Recip, 8),
            Expr::Binary(B::Mul, 7, 9),
        ];
        KernelSpec {
            dims: vec![rows, n],
            inputs: vec![
                InputSpec { ty: InputType::F32, strides: vec![n as isize, 1] },
                InputSpec { ty: InputType::F32, strides: vec![0, 1] },
            ],
            exprs,
            outputs: vec![OutputSpec { expr: 10, level: Level::Full }],
        }
    }

    /// Row values (the max, the sum's reciprocal, their splats) must be
    /// computed once per row, between the loops over the row, never inside
    /// one of them: Cranelift only hoists them there when loops are laid
    /// out as `emit_loop` does (see there).
    #[test]
    fn softmax_row_values_stay_out_of_inner_loops() {
        let (code, insts) = compile_for_host(&attention_softmax(4, 128));
        let per_row = [Opcode::Fdiv, Opcode::Extractlane, Opcode::Splat];
        for (depth, op) in &insts {
            assert!(*depth <= 1 || !per_row.contains(op), "{op} runs per element (loop depth {depth}):\n{code}");
        }
        assert!(insts.iter().any(|(_, op)| *op == Opcode::Fdiv), "one reciprocal per row");
        assert!(!code.lines().any(|l| l.trim_start().starts_with("call")), "the kernel calls out:\n{code}");
    }

    /// Compiles `spec` with the JIT and runs it over all its rows; `outs`
    /// are the output lengths.
    fn run_kernel(spec: &KernelSpec, inputs: &[Vec<f32>], outs: &[usize]) -> Vec<Vec<f32>> {
        use cranelift_jit::{JITBuilder, JITModule};
        let builder = JITBuilder::with_flags(&[("opt_level", "speed")], cranelift_module::default_libcall_names())
            .expect("jit builder");
        let mut module = JITModule::new(builder);
        let id = define_kernel(&mut module, "k", Linkage::Local, spec).expect("kernel compiles");
        module.finalize_definitions().expect("finalizes");
        let mut inputs = inputs.to_vec();
        let mut outputs: Vec<Vec<f32>> = outs.iter().map(|&n| vec![f32::MAX; n]).collect();
        let mut ptrs: Vec<*mut u8> = inputs.iter_mut().map(|v| v.as_mut_ptr() as *mut u8).collect();
        ptrs.extend(outputs.iter_mut().map(|v| v.as_mut_ptr() as *mut u8));
        // SAFETY: the buffers are as long as the spec's strides and dims
        // address (checked by the callers' shapes), and live across the call.
        unsafe {
            let f: extern "C" fn(*const *mut u8, i64, i64) = std::mem::transmute(module.get_finalized_function(id));
            f(ptrs.as_ptr(), 0, spec.rows() as i64);
        }
        outputs
    }

    /// Rows that exercise the reductions: ordinary values, all equal, and
    /// NaN / infinities at the first position (a vector lane) and the last
    /// (the scalar tail when `n` is not a multiple of 4).
    fn awkward_rows(n: usize) -> Vec<Vec<f32>> {
        let base: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.77 + 0.3).sin() * 3.0).collect();
        let with = |at: usize, v: f32| {
            let mut r = base.clone();
            r[at] = v;
            r
        };
        vec![
            base.clone(),
            vec![0.5; n],
            with(0, f32::NAN),
            with(n - 1, f32::NAN),
            with(0, f32::NEG_INFINITY),
            with(n - 1, f32::INFINITY),
            with(n / 2, -7.5),
        ]
    }

    #[test]
    fn max_min_sum_match_a_scalar_reference_with_nan_inf_and_tails() {
        // 21, 36 and 47 also run the unrolled loop's remainder vector.
        for n in [1usize, 3, 4, 5, 8, 11, 21, 36, 47, 128, 130] {
            let rows = awkward_rows(n);
            let spec = KernelSpec {
                dims: vec![rows.len(), n],
                inputs: vec![InputSpec { ty: InputType::F32, strides: vec![n as isize, 1] }],
                exprs: vec![
                    Expr::Input(0),
                    Expr::Reduce(Reduce::Max, 0),
                    Expr::Reduce(Reduce::Min, 0),
                    Expr::Reduce(Reduce::Sum, 0),
                ],
                outputs: (1..4).map(|e| OutputSpec { expr: e, level: Level::Row }).collect(),
            };
            let out = run_kernel(&spec, &[rows.concat()], &[rows.len(); 3]);
            for (r, row) in rows.iter().enumerate() {
                let nan = row.iter().any(|v| v.is_nan());
                let max = if nan { f32::NAN } else { row.iter().copied().fold(f32::NEG_INFINITY, f32::max) };
                let min = if nan { f32::NAN } else { row.iter().copied().fold(f32::INFINITY, f32::min) };
                let sum = row.iter().map(|&v| v as f64).sum::<f64>();
                let same = |a: f32, b: f32| a == b || (a.is_nan() && b.is_nan());
                assert!(same(out[0][r], max), "n {n} row {r}: max {} vs {max}", out[0][r]);
                assert!(same(out[1][r], min), "n {n} row {r}: min {} vs {min}", out[1][r]);
                let s = out[2][r] as f64;
                let close = (s - sum).abs() <= 1e-5 * sum.abs().max(1.0) || (s.is_nan() && sum.is_nan()) || s == sum;
                assert!(close, "n {n} row {r}: sum {s} vs {sum}");
            }
        }
    }

    #[test]
    fn masked_softmax_matches_f64_on_every_row_length() {
        for n in [1usize, 3, 4, 5, 7, 128, 130] {
            let rows = 5;
            let x: Vec<f32> =
                (0..rows * n).map(|i| if i / n == 1 { 2.5 } else { ((i as f32) * 0.61).sin() * 20.0 }).collect();
            // Position 0 stays visible; others are masked by -inf or by
            // BERT's -10000, in the vector part and in the tail.
            let mask: Vec<f32> = (0..n)
                .map(|j| match j {
                    0 => 0.0,
                    j if j % 3 == 1 => f32::NEG_INFINITY,
                    j if j % 5 == 2 || j == n - 1 => -10000.0,
                    _ => 0.0,
                })
                .collect();
            let out = run_kernel(&attention_softmax(rows, n), &[x.clone(), mask.clone()], &[rows * n]);
            for r in 0..rows {
                let v: Vec<f64> = (0..n).map(|j| x[r * n + j] as f64 * 0.125 + mask[j] as f64).collect();
                let mx = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = v.iter().map(|a| (a - mx).exp()).sum();
                for j in 0..n {
                    let want = (v[j] - mx).exp() / sum;
                    let got = out[0][r * n + j] as f64;
                    if mask[j] < -1.0 {
                        assert_eq!(got, 0.0, "n {n} row {r} col {j}: a masked position must be exactly 0");
                    }
                    assert!((got - want).abs() <= 1e-6 + 1e-6 * want, "n {n} row {r} col {j}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn division_by_a_constant_is_a_multiplication_within_an_ulp() {
        use Binary as B;
        let xs: Vec<f32> = (0..11).map(|i| (i as f32 - 5.0) * 1.37e3 + 0.1).collect();
        let run = |c: f32| {
            let spec = KernelSpec {
                dims: vec![1, xs.len()],
                inputs: vec![InputSpec { ty: InputType::F32, strides: vec![0, 1] }],
                exprs: vec![Expr::Input(0), Expr::Const(c), Expr::Binary(B::Div, 0, 1)],
                outputs: vec![OutputSpec { expr: 2, level: Level::Full }],
            };
            let (_, insts) = compile_for_host(&spec);
            let divides = insts.iter().any(|(_, op)| *op == Opcode::Fdiv);
            (run_kernel(&spec, std::slice::from_ref(&xs), &[xs.len()]).remove(0), divides)
        };
        for c in [std::f32::consts::SQRT_2, 3.0, 0.125, -7.5e-3] {
            let (out, divides) = run(c);
            assert!(!divides, "x / {c} still divides");
            for (x, y) in xs.iter().zip(&out) {
                let want = x / c;
                assert!((y - want).abs() <= want.abs() * f32::EPSILON, "{x} / {c}: {y} vs {want}");
            }
        }
        // Where 1/c is not a normal float, or c is 0, it stays a division.
        for c in [1e-39f32, 3e38, 0.0] {
            let (out, divides) = run(c);
            assert!(divides, "x / {c} must divide");
            for (x, y) in xs.iter().zip(&out) {
                let want = x / c;
                assert!(*y == want || (y.is_nan() && want.is_nan()), "{x} / {c}: {y} vs {want}");
            }
        }
    }
}

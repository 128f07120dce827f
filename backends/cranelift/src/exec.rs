//! Running a plan: JIT-compiled kernels, GEMM calls, interpreter fallbacks,
//! an arena reused across runs, and optional per-step timing.

use crate::codegen;
use crate::matmul::{GemmImpl, MatMulSpec, PanelB, SendPtr, run_gemm_crate, run_packed};
use crate::packed_gemm::{self, PackedB};
use crate::plan::{Loc, OutSrc, Plan, PlanStats, Step, TArg, View};
use crate::specialize::Specialized;
use crate::{CompileError, CompileOptions};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, default_libcall_names};
use rayon::prelude::*;
use sharc_interp::ops::{OpContext, run_op};
use sharc_ir::{DType, EvalError, Graph, Tensor, TensorData, Type, Value, WeightData, WeightId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A kernel's entry point: `(pointer table, first row, end row)`.
type KernelFn = unsafe extern "C" fn(*const *mut u8, i64, i64);

/// The JIT module, kept alive while its code may run.
struct Jit(Option<JITModule>);
// SAFETY: the module is never mutated after `finalize_definitions`; the code
// and data it owns are immutable and callable from any thread.
unsafe impl Send for Jit {}
// SAFETY: as above.
unsafe impl Sync for Jit {}

impl Drop for Jit {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            // SAFETY: `Compiled` owns the only function pointers into this
            // module and is being dropped.
            unsafe { m.free_memory() };
        }
    }
}

/// A read-only address that may be shared between threads.
#[derive(Clone, Copy)]
struct ConstPtr(*const u8);
// SAFETY: points into memory owned by `Compiled` (weights, constants) that is
// never written after compilation.
unsafe impl Send for ConstPtr {}
// SAFETY: as above.
unsafe impl Sync for ConstPtr {}

/// A 64-byte aligned block, the unit of arena allocation.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// The time spent in one kind of step.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileEntry {
    /// What ran (`fused LayerNormalization`, `matmul`, `fallback Gather`).
    pub label: String,
    /// How many steps of this kind ran, over all recorded runs.
    pub calls: u64,
    /// Their total time.
    pub total: Duration,
}

/// A compiled graph, ready to run on inputs of the shapes it was compiled for.
pub struct Compiled {
    graph: Graph,
    plan: Plan,
    kernels: Vec<KernelFn>,
    matmul_kernels: HashMap<usize, KernelFn>,
    _jit: Jit,
    weights: HashMap<WeightId, ConstPtr>,
    /// Dense copies of weights whose stored tensor is not in standard layout.
    _weight_copies: HashMap<WeightId, Tensor>,
    threads: usize,
    pool: Option<rayon::ThreadPool>,
    gemm: GemmImpl,
    /// Right operands packed at compile time, by step. A weight used by
    /// several products (a tied layer) is packed once and shared.
    prepacked: HashMap<usize, Arc<PackedB>>,
    arenas: Mutex<Vec<Vec<Line>>>,
    profile: Option<Mutex<Vec<(u64, Duration)>>>,
    input_names: Vec<String>,
    input_types: Vec<(DType, Vec<usize>)>,
    compile_time: Duration,
    distinct_kernels: usize,
}

impl Compiled {
    pub(crate) fn new(
        sp: Specialized,
        mut plan: Plan,
        opts: &CompileOptions,
        start: Instant,
    ) -> Result<Compiled, CompileError> {
        let g = sp.graph;
        let cg = |m: String| CompileError::Codegen { what: "the JIT module".into(), message: m };
        let builder = JITBuilder::with_flags(&[("opt_level", "speed")], default_libcall_names())
            .map_err(|e| cg(e.to_string()))?;
        let mut module = JITModule::new(builder);
        // Identical kernels (the same block repeated per layer) compile once.
        let mut by_spec: HashMap<String, FuncId> = HashMap::new();
        let mut ids = Vec::new();
        for (i, spec) in plan.kernels.iter().enumerate() {
            let key = format!("{spec:?}");
            let id = match by_spec.get(&key) {
                Some(id) => *id,
                None => {
                    let id = codegen::define_kernel(&mut module, &format!("kernel{i}"), Linkage::Local, spec)?;
                    by_spec.insert(key, id);
                    id
                }
            };
            ids.push(id);
        }
        let mut mm_ids: HashMap<usize, FuncId> = HashMap::new();
        if opts.gemm == GemmImpl::Cranelift {
            let mut by_mm: HashMap<MatMulSpec, FuncId> = HashMap::new();
            for (i, s) in plan.steps.iter().enumerate() {
                if let Step::MatMul { spec, .. } = s {
                    let id = match by_mm.get(spec) {
                        Some(id) => *id,
                        None => {
                            let id = codegen::define_matmul(&mut module, &format!("matmul{i}"), Linkage::Local, spec)?;
                            by_mm.insert(spec.clone(), id);
                            id
                        }
                    };
                    mm_ids.insert(i, id);
                }
            }
        }
        let distinct_kernels = by_spec.len();
        module.finalize_definitions().map_err(|e| cg(e.to_string()))?;
        let kernels: Vec<KernelFn> = ids
            .iter()
            .map(|&id| {
                let p = module.get_finalized_function(id);
                // SAFETY: every kernel was defined with the KernelFn signature.
                unsafe { std::mem::transmute::<*const u8, KernelFn>(p) }
            })
            .collect();
        let matmul_kernels = mm_ids
            .into_iter()
            .map(|(i, id)| {
                let p = module.get_finalized_function(id);
                // SAFETY: matmul kernels use the KernelFn signature too.
                (i, unsafe { std::mem::transmute::<*const u8, KernelFn>(p) })
            })
            .collect();
        // Constants in standard layout, so a pointer addresses them densely.
        for c in &mut plan.consts {
            *c = standard(c);
        }
        let mut weights = HashMap::new();
        let mut keep_alive = HashMap::new();
        for s in &plan.steps {
            for loc in step_locs(s) {
                if let Loc::Weight(w) = loc
                    && !weights.contains_key(&w)
                {
                    let wt = g.weights.get(w).ok_or_else(|| CompileError::Graph(format!("weight {w} is missing")))?;
                    let (p, keep) = weight_ptr(wt);
                    weights.insert(w, p);
                    keep_alive.extend(keep.map(|t| (w, t)));
                }
            }
        }
        for o in &plan.outputs {
            if let OutSrc::View(v) = o
                && let Loc::Weight(w) = v.loc
                && !weights.contains_key(&w)
                && let Some(wt) = g.weights.get(w)
            {
                let (p, keep) = weight_ptr(wt);
                weights.insert(w, p);
                keep_alive.extend(keep.map(|t| (w, t)));
            }
        }
        // The packed product needs AVX2 and FMA; elsewhere the crate runs.
        let gemm = match opts.gemm {
            GemmImpl::Packed if !packed_gemm::available() => GemmImpl::Crate,
            g => g,
        };
        let prepacked =
            if gemm == GemmImpl::Packed { prepack(&g, &plan, &mut weights, &mut keep_alive) } else { HashMap::new() };
        let threads = opts.threads.unwrap_or_else(rayon::current_num_threads).max(1);
        let pool = match opts.threads {
            Some(t) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t.max(1))
                    .build()
                    .map_err(|e| CompileError::Graph(format!("cannot start {t} threads: {e}")))?,
            ),
            None => None,
        };
        let input_names = g.inputs().iter().map(|&i| g.node(i).outputs[0].name.clone()).collect();
        let input_types = g
            .inputs()
            .iter()
            .zip(&sp.input_shapes)
            .map(|(&i, s)| (g.node(i).outputs[0].ty.dtype().unwrap_or(DType::F32), s.clone()))
            .collect();
        let profile = opts.profile.then(|| Mutex::new(vec![(0u64, Duration::ZERO); plan.steps.len()]));
        Ok(Compiled {
            graph: g,
            plan,
            kernels,
            matmul_kernels,
            _jit: Jit(Some(module)),
            weights,
            _weight_copies: keep_alive,
            threads,
            pool,
            gemm,
            prepacked,
            arenas: Mutex::new(Vec::new()),
            profile,
            input_names,
            input_types,
            compile_time: start.elapsed(),
            distinct_kernels,
        })
    }

    /// How long compilation took (specialisation, planning, code generation).
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// What the plan contains: how many nodes were fused, folded, viewed or
    /// run by the interpreter, and the arena size.
    pub fn stats(&self) -> &PlanStats {
        &self.plan.stats
    }

    /// Bytes of weights packed for the matrix products at compile time
    /// (each distinct operand once: a tied weight counts once).
    pub fn packed_weight_bytes(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        self.prepacked.values().filter(|p| seen.insert(Arc::as_ptr(p))).map(|p| p.bytes()).sum()
    }

    /// Number of distinct kernels generated (identical kernels are shared).
    pub fn distinct_kernels(&self) -> usize {
        self.distinct_kernels
    }

    /// The names and shapes of the inputs this plan expects.
    pub fn inputs(&self) -> Vec<(String, DType, Vec<usize>)> {
        self.input_names.iter().zip(&self.input_types).map(|(n, (d, s))| (n.clone(), *d, s.clone())).collect()
    }

    /// Time per kind of step over all runs so far (empty unless compiled
    /// with [`CompileOptions::profile`]), largest first.
    pub fn profile(&self) -> Vec<ProfileEntry> {
        let Some(p) = &self.profile else { return Vec::new() };
        let p = p.lock().unwrap_or_else(|e| e.into_inner());
        let mut by: HashMap<String, (u64, Duration)> = HashMap::new();
        for (s, (calls, t)) in self.plan.steps.iter().zip(p.iter()) {
            let label = match s {
                Step::Fallback { node, .. } => format!("fallback {}", self.graph.node(*node).op.op_type()),
                Step::MatMul { spec, epilogue, .. } => format!(
                    "matmul {}x{}x{} (batch {}){}",
                    spec.m,
                    spec.n,
                    spec.k,
                    spec.batch_count(),
                    epilogue.as_ref().map_or(String::new(), |e| format!(" + {}", e.label))
                ),
                other => other.label(),
            };
            let e = by.entry(label).or_default();
            e.0 += calls;
            e.1 += *t;
        }
        let mut out: Vec<ProfileEntry> =
            by.into_iter().map(|(label, (calls, total))| ProfileEntry { label, calls, total }).collect();
        out.sort_by(|a, b| b.total.cmp(&a.total).then(a.label.cmp(&b.label)));
        out
    }

    /// Runs the plan. The inputs must have the dtypes and shapes it was
    /// compiled for.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EvalError> {
        match &self.pool {
            Some(p) => p.install(|| self.run_inner(inputs)),
            None => self.run_inner(inputs),
        }
    }

    fn run_inner(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EvalError> {
        if inputs.len() != self.input_types.len() {
            return Err(EvalError::new(format!(
                "the compiled graph takes {} inputs but {} were given",
                self.input_types.len(),
                inputs.len()
            )));
        }
        let mut dyns: Vec<Option<Tensor>> = vec![None; self.plan.dyn_slots];
        for (i, t) in inputs.iter().enumerate() {
            let (dt, shape) = &self.input_types[i];
            if t.dtype() != *dt || t.shape() != shape.as_slice() {
                return Err(EvalError::new(format!(
                    "input '{}' is {}{:?} but the graph was compiled for {dt}{shape:?}",
                    self.input_names[i],
                    t.dtype(),
                    t.shape()
                )));
            }
            dyns[self.plan.input_slots[i]] = Some(standard(t));
        }
        let mut arena = {
            let mut pool = self.arenas.lock().unwrap_or_else(|e| e.into_inner());
            pool.pop().unwrap_or_else(|| vec![Line([0; 64]); self.plan.arena_bytes.div_ceil(64)])
        };
        let result = self.run_steps(&mut dyns, &mut arena);
        self.arenas.lock().unwrap_or_else(|e| e.into_inner()).push(arena);
        result
    }

    fn run_steps(&self, dyns: &mut [Option<Tensor>], arena: &mut [Line]) -> Result<Vec<Tensor>, EvalError> {
        let arena_base = arena.as_mut_ptr() as *mut u8;
        for (i, step) in self.plan.steps.iter().enumerate() {
            let t0 = self.profile.as_ref().map(|_| Instant::now());
            self.run_step(i, step, dyns, arena_base)?;
            if let (Some(p), Some(t0)) = (&self.profile, t0) {
                let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
                p[i].0 += 1;
                p[i].1 += t0.elapsed();
            }
            for &d in &self.plan.frees[i] {
                dyns[d] = None;
            }
        }
        let mut out = Vec::with_capacity(self.plan.outputs.len());
        for o in &self.plan.outputs {
            out.push(match o {
                OutSrc::Dyn(d) => dyns[*d].clone().ok_or_else(|| EvalError::new("an output was not computed"))?,
                OutSrc::Const(c) => self.plan.consts[*c].clone(),
                OutSrc::Weight(w) => self
                    .graph
                    .weights
                    .get(*w)
                    .map(|w| w.tensor().clone())
                    .ok_or_else(|| EvalError::new(format!("weight {w} is missing")))?,
                OutSrc::View(v) => self.read_view(v, dyns, arena_base)?,
                OutSrc::Missing(name) => {
                    return Err(EvalError::unsupported(format!("output '{name}' is not a tensor")));
                }
            });
        }
        Ok(out)
    }

    /// The address of a view's first element.
    fn ptr(&self, v: &View, dyns: &[Option<Tensor>], arena: *mut u8) -> Result<*mut u8, EvalError> {
        let base: *mut u8 = match v.loc {
            Loc::Arena(off) => arena.wrapping_add(off),
            Loc::Weight(w) => self
                .weights
                .get(&w)
                .map(|p| p.0 as *mut u8)
                .ok_or_else(|| EvalError::new(format!("weight {w} was not prepared (a bug in the planner)")))?,
            Loc::Const(c) => data_ptr(&self.plan.consts[c]) as *mut u8,
            Loc::Dyn(d) => {
                let t = dyns[d].as_ref().ok_or_else(|| EvalError::new("a value was used after it was freed"))?;
                data_ptr(t) as *mut u8
            }
        };
        let es = if v.dtype == DType::Bool { 1 } else { 4 };
        Ok(base.wrapping_offset(v.offset * es))
    }

    fn read_view(&self, v: &View, dyns: &[Option<Tensor>], arena: *mut u8) -> Result<Tensor, EvalError> {
        let p = self.ptr(v, dyns, arena)?;
        // SAFETY: the planner built the view inside a live buffer of its dtype.
        Ok(unsafe {
            match v.dtype {
                DType::Bool => {
                    Tensor::from_vec(&v.shape, gather_view(p as *const u8, v).into_iter().map(|b| b != 0).collect())
                }
                _ => Tensor::from_vec(&v.shape, gather_view(p as *const f32, v)),
            }
        })
    }

    fn run_step(&self, i: usize, step: &Step, dyns: &mut [Option<Tensor>], arena: *mut u8) -> Result<(), EvalError> {
        match step {
            Step::Kernel { kernel, args, rows, inner, .. } => {
                let ptrs: Vec<*mut u8> = args.iter().map(|v| self.ptr(v, dyns, arena)).collect::<Result<_, _>>()?;
                self.call_rows(self.kernels[*kernel], &ptrs, *rows, *inner);
            }
            Step::MatMul { spec, a, b, out, label, epilogue } => {
                let prepacked = self.prepacked.get(&i);
                // A prepacked operand's stored form may have been released.
                let pb = if prepacked.is_some() { std::ptr::null_mut() } else { self.ptr(b, dyns, arena)? };
                let (pa, po) = (self.ptr(a, dyns, arena)?, self.ptr(out, dyns, arena)?);
                let epi = match epilogue {
                    Some(e) => {
                        let ptrs: Vec<*mut u8> =
                            e.args.iter().map(|v| self.ptr(v, dyns, arena)).collect::<Result<_, _>>()?;
                        Some((self.kernels[e.kernel], ptrs))
                    }
                    None => None,
                };
                let rows = spec.batch_count() * spec.m;
                let epi_ref = epi.as_ref().map(|(f, p)| (*f, SendPtr(p.as_ptr() as *mut f32)));
                // The epilogue as the GEMM runners call it, on rows [s, e).
                let epilogue = epi_ref.map(|(f, p)| {
                    move |s: usize, e: usize| {
                        let p = p;
                        // SAFETY: the epilogue kernel reads the rows the
                        // product just wrote, through the planner's views.
                        unsafe { f(p.0 as *const *mut u8, s as i64, e as i64) }
                    }
                });
                match (self.gemm, self.matmul_kernels.get(&i)) {
                    (GemmImpl::Cranelift, Some(k)) => {
                        let ptrs = [pa, pb, po];
                        let table = SendPtr(ptrs.as_ptr() as *mut f32);
                        let k = *k;
                        self.call_rows_with(rows, spec.n * spec.k.max(1), move |s, e| {
                            let t = table;
                            // SAFETY: pointer tables built from the planner's views; row
                            // ranges of different calls are disjoint.
                            unsafe { k(t.0 as *const *mut u8, s as i64, e as i64) };
                            if let Some(epilogue) = epilogue {
                                epilogue(s, e);
                            }
                        });
                    }
                    (GemmImpl::Packed, _) => {
                        let b = match prepacked {
                            Some(p) => PanelB::Prepacked(p),
                            None => PanelB::Strided(SendPtr(pb as *mut f32)),
                        };
                        // SAFETY: as for the crate below; `prepack` packed the
                        // step's own B, and `packed_gemm::available` was checked
                        // when `self.gemm` was chosen.
                        unsafe { run_packed(spec, pa as *const f32, b, po as *mut f32, self.threads, epilogue) }
                    }
                    (GemmImpl::Crate, _) => {
                        // SAFETY: the views were checked against the spec by the planner.
                        unsafe {
                            run_gemm_crate(
                                spec,
                                pa as *const f32,
                                pb as *const f32,
                                po as *mut f32,
                                self.threads,
                                epilogue,
                            )
                        }
                    }
                    _ => return Err(EvalError::new(format!("matmul '{label}' has no kernel"))),
                }
            }
            Step::GatherRows { table, indices, out, label } => {
                let idx = dyns[*indices]
                    .as_ref()
                    .and_then(|t| t.to_i64_vec())
                    .ok_or_else(|| EvalError::new("gather indices are missing").at(label, "Gather"))?;
                let (rows, width) = (table.shape[0] as i64, table.shape[1]);
                let src = self.ptr(table, dyns, arena)? as *const f32;
                let dst = self.ptr(out, dyns, arena)? as *mut f32;
                for (j, &ix) in idx.iter().enumerate() {
                    let r = if ix < 0 { ix + rows } else { ix };
                    if r < 0 || r >= rows {
                        return Err(
                            EvalError::new(format!("index {ix} is out of range for {rows} rows")).at(label, "Gather")
                        );
                    }
                    // SAFETY: r < rows and out holds idx.len() rows of `width`.
                    unsafe { std::ptr::copy_nonoverlapping(src.add(r as usize * width), dst.add(j * width), width) };
                }
            }
            Step::Materialize { src, dst } => {
                let t = self.read_view(src, dyns, arena)?;
                dyns[*dst] = Some(t);
            }
            Step::Fallback { node, label, args, outs } => {
                let n = self.graph.node(*node);
                let mut values = Vec::with_capacity(args.len());
                for a in args {
                    values.push(match a {
                        None => None,
                        Some(TArg::Dyn(d)) => {
                            Some(dyns[*d].clone().map(Value::Tensor).ok_or_else(|| {
                                EvalError::new("an input was freed too early").at(label, n.op.op_type())
                            })?)
                        }
                        Some(TArg::Const(c)) => Some(Value::Tensor(self.plan.consts[*c].clone())),
                        Some(TArg::Weight(w)) => Some(Value::Tensor(
                            self.graph
                                .weights
                                .get(*w)
                                .map(|w| w.tensor().clone())
                                .ok_or_else(|| EvalError::new(format!("weight {w} is missing")))?,
                        )),
                    });
                }
                let types: Vec<Type> = n.outputs.iter().map(|o| o.ty.clone()).collect();
                let cx = OpContext { node_name: label, num_outputs: n.outputs.len(), output_types: &types };
                let result = run_op(&n.op, &values, &cx).map_err(|e| e.at(label, n.op.op_type()))?;
                for (p, slot) in outs.iter().enumerate() {
                    let Some(slot) = slot else { continue };
                    let v = result.get(p).cloned().ok_or_else(|| {
                        EvalError::new(format!("produced {} outputs, the node declares {}", result.len(), outs.len()))
                            .at(label, n.op.op_type())
                    })?;
                    let Value::Tensor(t) = v else {
                        return Err(EvalError::unsupported(format!(
                            "output {p} is a {}, which the cranelift backend does not carry",
                            v.describe()
                        ))
                        .at(label, n.op.op_type()));
                    };
                    // Native consumers rely on the compile-time shape.
                    if let Type::Tensor(tt) = &types[p]
                        && let Some(want) = tt.shape.as_ref().and_then(|s| s.as_fixed())
                        && (t.shape() != want.as_slice() || t.dtype() != tt.dtype)
                    {
                        return Err(EvalError::new(format!(
                            "output {p} is {}{:?} but shape inference promised {}",
                            t.dtype(),
                            t.shape(),
                            types[p]
                        ))
                        .at(label, n.op.op_type()));
                    }
                    dyns[*slot] = Some(standard(&t));
                }
            }
        }
        Ok(())
    }

    /// Calls a row kernel over `rows` rows, split over threads when the work
    /// is large enough to pay for it.
    fn call_rows(&self, f: KernelFn, ptrs: &[*mut u8], rows: usize, inner: usize) {
        let table = SendPtr(ptrs.as_ptr() as *mut f32);
        self.call_rows_with(rows, inner, move |s, e| {
            let t = table;
            // SAFETY: the pointer table addresses buffers laid out as the
            // kernel's spec says; row ranges of different calls are disjoint.
            unsafe { f(t.0 as *const *mut u8, s as i64, e as i64) }
        });
    }

    /// Runs `call(start, end)` over row ranges covering `0..rows`, in
    /// parallel when `rows × inner` elements of work pay for it.
    fn call_rows_with(&self, rows: usize, inner: usize, call: impl Fn(usize, usize) + Sync + Send) {
        let work = rows * inner.max(1);
        if self.threads <= 1 || rows < 2 || work < 32 * 1024 {
            call(0, rows);
            return;
        }
        let chunks = (self.threads * 4).min(rows);
        let per = rows.div_ceil(chunks);
        (0..chunks).into_par_iter().for_each(|c| {
            let s = c * per;
            let e = ((c + 1) * per).min(rows);
            if s < e {
                call(s, e);
            }
        });
    }
}

fn step_locs(s: &Step) -> Vec<Loc> {
    match s {
        Step::Kernel { args, .. } => args.iter().map(|v| v.loc).collect(),
        Step::MatMul { a, b, out, epilogue, .. } => {
            let mut v = vec![a.loc, b.loc, out.loc];
            if let Some(e) = epilogue {
                v.extend(e.args.iter().map(|x| x.loc));
            }
            v
        }
        Step::GatherRows { table, out, .. } => vec![table.loc, out.loc],
        Step::Materialize { src, .. } => vec![src.loc],
        Step::Fallback { .. } => vec![],
    }
}

/// Copies a strided view into a dense row-major vector. Graph outputs are
/// often views of the arena (a transposed or sliced result costs no copy
/// inside the plan), so this runs once per output per call: it copies whole
/// innermost rows (`memcpy` when they are contiguous) rather than computing
/// an offset per element, which cost more than a small model's products.
///
/// # Safety
/// `base` must address the view's first element, and every element the
/// view's shape and strides reach must be readable.
unsafe fn gather_view<T: Copy>(base: *const T, v: &View) -> Vec<T> {
    let n = v.numel();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let rank = v.shape.len();
    let (inner, inner_stride) = match rank {
        0 => (1, 1),
        _ => (v.shape[rank - 1], v.strides[rank - 1]),
    };
    let outer = rank.saturating_sub(1);
    let mut idx = vec![0usize; outer];
    let mut off = 0isize;
    loop {
        // SAFETY: `off` addresses the first element of a row inside the view.
        unsafe {
            let row = base.offset(off);
            if inner_stride == 1 {
                out.extend_from_slice(std::slice::from_raw_parts(row, inner));
            } else {
                out.extend((0..inner).map(|j| *row.offset(j as isize * inner_stride)));
            }
        }
        // Advance the outer index like an odometer, keeping `off` in step.
        let mut d = outer;
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            idx[d] += 1;
            off += v.strides[d];
            if idx[d] < v.shape[d] {
                break;
            }
            off -= v.strides[d] * v.shape[d] as isize;
            idx[d] = 0;
        }
    }
}

/// The address of a tensor's first element (f32 or bool data).
fn data_ptr(t: &Tensor) -> *const u8 {
    match t.data() {
        TensorData::F32(a) => a.as_ptr() as *const u8,
        TensorData::Bool(a) => a.as_ptr() as *const u8,
        TensorData::I64(a) => a.as_ptr() as *const u8,
        TensorData::I32(a) => a.as_ptr() as *const u8,
        _ => std::ptr::null(),
    }
}

/// The tensor with its data in standard (row-major, dense) layout.
fn standard(t: &Tensor) -> Tensor {
    let dense = sharc_ir::dispatch_array!(t.data(), a => a.is_standard_layout());
    if dense {
        t.clone()
    } else {
        Tensor::new(sharc_ir::map_array!(t.data(), a => a.as_standard_layout().into_owned().into_shared()))
    }
}

/// The identity of a packed operand: where it lives, its offset, `k`, `n`
/// and its row and column strides.
type Operand = (Loc, isize, usize, usize, isize, isize);

/// The products whose right operand is a constant shared by the whole batch
/// (a weight, or a folded constant), with the operand each one reads.
fn packable(plan: &Plan, weights: &HashMap<WeightId, ConstPtr>) -> Vec<(usize, Operand)> {
    let mut out = Vec::new();
    for (i, step) in plan.steps.iter().enumerate() {
        let Step::MatMul { spec, b, .. } = step else { continue };
        let constant = match b.loc {
            Loc::Weight(w) => weights.contains_key(&w),
            Loc::Const(_) => true,
            Loc::Arena(_) | Loc::Dyn(_) => false,
        };
        if constant && spec.b_bstrides.iter().all(|&s| s == 0) {
            out.push((i, (b.loc, b.offset, spec.k, spec.n, spec.b_rs, spec.b_cs)));
        }
    }
    out
}

/// Packs the right operand of every [`packable`] product, once per distinct
/// operand: products that read the same weight through the same strides (a
/// layer tied N times) share one packed copy.
///
/// A weight that nothing but packed products reads is needed no more in its
/// stored form once packed: right after its last packing, its decoded copy
/// is dropped and a file mapping's pages are given back, so the weight
/// occupies memory once (packed), and the peak never holds all of both.
fn prepack(
    g: &Graph,
    plan: &Plan,
    weights: &mut HashMap<WeightId, ConstPtr>,
    copies: &mut HashMap<WeightId, Tensor>,
) -> HashMap<usize, Arc<PackedB>> {
    let steps = packable(plan, weights);
    let packed_steps: std::collections::HashSet<usize> = steps.iter().map(|(i, _)| *i).collect();
    let releasable = read_only_packed(plan, &packed_steps);
    let mut last_packing: HashMap<WeightId, usize> = HashMap::new();
    for &(i, (loc, ..)) in &steps {
        if let Loc::Weight(w) = loc {
            last_packing.insert(w, i);
        }
    }
    let mut by_operand: HashMap<Operand, Arc<PackedB>> = HashMap::new();
    let mut out = HashMap::new();
    for (i, key @ (loc, offset, k, n, rs, cs)) in steps {
        let base = match loc {
            Loc::Weight(w) => weights.get(&w).map(|p| p.0 as *const f32),
            Loc::Const(c) => Some(data_ptr(&plan.consts[c]) as *const f32),
            Loc::Arena(_) | Loc::Dyn(_) => None,
        };
        let packed = match (by_operand.get(&key), base) {
            (Some(p), _) => p.clone(),
            (None, Some(base)) => {
                // SAFETY: the planner built the view inside the constant, and
                // the spec's strides are the view's.
                let p = Arc::new(unsafe { PackedB::pack(base.wrapping_offset(offset), k, n, rs, cs) });
                by_operand.insert(key, p.clone());
                p
            }
            (None, None) => continue,
        };
        out.insert(i, packed);
        if let Loc::Weight(w) = loc
            && last_packing.get(&w) == Some(&i)
            && releasable.contains(&w)
        {
            weights.remove(&w);
            copies.remove(&w);
            if let Some(wt) = g.weights.get(w)
                && let WeightData::Mapped { file, offset, len } = &wt.data
            {
                // SAFETY: the mapping is read-only, so dropping its pages
                // loses nothing: a later read faults them back in from the
                // file. Failure only means the pages stay resident.
                let _ = unsafe { file.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, *offset, *len) };
            }
        }
    }
    out
}

/// The weights that the plan reads only as the right operand of the
/// products in `packed` (not in kernels, other products, the interpreter's
/// fallbacks, nor as graph outputs).
fn read_only_packed(plan: &Plan, packed: &std::collections::HashSet<usize>) -> std::collections::HashSet<WeightId> {
    let mut only_packed = std::collections::HashSet::new();
    let mut other = std::collections::HashSet::new();
    for (i, step) in plan.steps.iter().enumerate() {
        let mut locs = step_locs(step);
        if let Step::MatMul { b, .. } = step
            && let Loc::Weight(w) = b.loc
            && packed.contains(&i)
        {
            only_packed.insert(w);
            // Only the B operand's own entry is a packed read.
            if let Some(at) = locs.iter().position(|&l| l == b.loc) {
                locs.remove(at);
            }
        }
        other.extend(locs.into_iter().filter_map(|l| if let Loc::Weight(w) = l { Some(w) } else { None }));
        if let Step::Fallback { args, .. } = step {
            other.extend(args.iter().filter_map(|a| if let Some(TArg::Weight(w)) = a { Some(*w) } else { None }));
        }
    }
    for o in &plan.outputs {
        match o {
            OutSrc::Weight(w) => {
                other.insert(*w);
            }
            OutSrc::View(v) => {
                if let Loc::Weight(w) = v.loc {
                    other.insert(w);
                }
            }
            _ => {}
        }
    }
    only_packed.retain(|w| !other.contains(w));
    only_packed
}

/// Where a weight's elements are: in the mapped file when it is aligned for
/// its type (no copy), else in its decoded tensor (in standard layout; a
/// copy is returned to keep alive when the stored tensor is not).
fn weight_ptr(w: &sharc_ir::Weight) -> (ConstPtr, Option<Tensor>) {
    if let WeightData::Mapped { .. } = &w.data
        && let Some(bytes) = w.mapped_bytes()
        && (w.dtype == DType::Bool || (w.dtype == DType::F32 && (bytes.as_ptr() as usize).is_multiple_of(4)))
        && cfg!(target_endian = "little")
    {
        return (ConstPtr(bytes.as_ptr()), None);
    }
    let t = w.tensor();
    let s = standard(t);
    let p = ConstPtr(data_ptr(&s));
    (p, Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_read_only_by_packed_products_are_released_and_others_kept() {
        use sharc_ir::{BinaryOp, Op, Shape, Weight};
        if !packed_gemm::available() {
            return;
        }
        // y1 = x · W1 and y2 = x · W2, and W2 also feeds a kernel (v + W2):
        // W1's stored form is needed no more once packed, W2's is.
        let mut g = Graph::new("release");
        let x = g.add_input("x", Type::tensor(DType::F32, Shape::fixed(&[3, 4])));
        let v = g.add_input("v", Type::tensor(DType::F32, Shape::fixed(&[4, 5])));
        let w1: Vec<f32> = (0..20).map(|i| i as f32 / 7.0).collect();
        let w2: Vec<f32> = (0..20).map(|i| 1.0 - i as f32 / 9.0).collect();
        let id1 = g.weights.add_unique(Weight::from_tensor("w1", Tensor::from_vec(&[4, 5], w1.clone())));
        let id2 = g.weights.add_unique(Weight::from_tensor("w2", Tensor::from_vec(&[4, 5], w2.clone())));
        let (a, b) = (g.weight_value(id1), g.weight_value(id2));
        let y1 = g.add_op(Op::MatMul, &[x, a], Type::Unknown);
        let y2 = g.add_op(Op::MatMul, &[x, b], Type::Unknown);
        let z = g.add_op(Op::Binary(BinaryOp::Add), &[v, b], Type::Unknown);
        g.add_output("y1", y1);
        g.add_output("y2", y2);
        g.add_output("z", z);
        let c = crate::compile(&g, &crate::CompileOptions { threads: Some(1), ..Default::default() }).unwrap();
        assert_eq!(c.prepacked.len(), 2, "both products read a packed weight");
        assert!(!c.weights.contains_key(&id1), "W1 is read only by its packed product");
        assert!(c.weights.contains_key(&id2), "W2 is also read by a kernel");
        let xs: Vec<f32> = (0..12).map(|i| i as f32 - 5.5).collect();
        let out = c.run(&[Tensor::from_vec(&[3, 4], xs.clone()), Tensor::from_vec(&[4, 5], vec![0.5f32; 20])]).unwrap();
        for (o, w) in [(&out[0], &w1), (&out[1], &w2)] {
            let got = o.as_array::<f32>().unwrap();
            for r in 0..3 {
                for col in 0..5 {
                    let want: f32 = (0..4).map(|p| xs[r * 4 + p] * w[p * 5 + col]).sum();
                    assert!((got[[r, col]] - want).abs() < 1e-4);
                }
            }
        }
        let z = out[2].as_array::<f32>().unwrap();
        assert!(z.iter().zip(&w2).all(|(&z, &w)| z == 0.5 + w));
    }

    /// The element at `idx` of a view, by the definition of strides.
    fn naive(buf: &[f32], v: &View, idx: &[usize]) -> f32 {
        let off = v.offset + idx.iter().zip(&v.strides).map(|(&i, &s)| i as isize * s).sum::<isize>();
        buf[off as usize]
    }

    fn view(offset: isize, shape: &[usize], strides: &[isize]) -> View {
        View { loc: Loc::Arena(0), dtype: DType::F32, offset, shape: shape.to_vec(), strides: strides.to_vec() }
    }

    #[test]
    fn gather_view_copies_strided_views_in_row_major_order() {
        let buf: Vec<f32> = (0..200).map(|i| i as f32 * 0.5 - 7.0).collect();
        let cases = [
            // Dense, a transpose (innermost stride not 1), a slice with an
            // offset and a gap between rows, a broadcast dim, a reversed
            // dim, and a rank-3 permutation.
            view(0, &[3, 4], &[4, 1]),
            view(0, &[4, 3], &[1, 4]),
            view(5, &[3, 2], &[10, 1]),
            view(2, &[3, 4], &[0, 1]),
            view(30, &[4, 2], &[-6, 1]),
            view(1, &[2, 3, 4], &[3, 1, 6]),
        ];
        for v in &cases {
            // SAFETY: every case stays inside `buf` (checked by `naive`'s indexing).
            let got = unsafe { gather_view(buf.as_ptr().offset(v.offset), v) };
            let mut want = Vec::new();
            for i in 0..v.numel() {
                let mut idx = vec![0; v.shape.len()];
                let mut r = i;
                for d in (0..v.shape.len()).rev() {
                    idx[d] = r % v.shape[d];
                    r /= v.shape[d];
                }
                want.push(naive(&buf, v, &idx));
            }
            assert_eq!(got, want, "{:?} / {:?}", v.shape, v.strides);
        }
        // A scalar view and an empty one.
        // SAFETY: the scalar reads buf[7]; the empty view reads nothing.
        unsafe {
            assert_eq!(gather_view(buf.as_ptr().add(7), &view(7, &[], &[])), vec![buf[7]]);
            assert!(gather_view(buf.as_ptr(), &view(0, &[3, 0, 2], &[0, 2, 1])).is_empty());
        }
    }
}

//! Compiling the lowered module with MLIR (through melior): the CPU pipeline
//! down to LLVM and the JIT, the GPU pipeline down to PTX, and the stage-by-
//! stage printing behind `sharc compile --emit mlir`.

use crate::MlirError;
use crate::gpu_map::{BUFFERIZE, GpuMapping, copies_as_loops, reductions_innermost};
use crate::lower::{ArgKind, ArgSpec, ENTRY, Lowered};
use crate::nvvm::NvvmTarget;
use melior::dialect::DialectRegistry;
use melior::ir::Module;
use melior::pass::PassManager;
use melior::utility::{
    parse_pass_pipeline, register_all_dialects, register_all_llvm_translations, register_all_passes,
};
use melior::{Context, ExecutionEngine};
use sharc_ir::{DType, Dim, EvalError, Evaluator, Graph, Tensor, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Once;

/// One step of a pipeline: a name users see and the pass pipeline text.
#[derive(Clone, Copy, Debug)]
pub struct Stage {
    /// Short name, printed as a heading by `--emit mlir`.
    pub name: &'static str,
    /// `builtin.module(...)` pass pipeline.
    pub pipeline: &'static str,
}

/// The CPU path: fuse elementwise chains on tensors, bufferize, lower to
/// loops, then to LLVM. Split into stages so that each intermediate module
/// can be printed.
///
/// Affine loop fusion (`affine-loop-fusion` after
/// `convert-linalg-to-affine-loops`) merges a transformer block's 25 linalg
/// ops into 10 loop nests, but on LLVM 22 it miscompiles reductions whose
/// accumulator is initialised by a separate fill (the block's result was off
/// by 0.34), so the pipeline stops at elementwise fusion.
pub const CPU_STAGES: &[Stage] = &[
    Stage {
        name: "fused",
        pipeline: "builtin.module(func.func(linalg-fuse-elementwise-ops,canonicalize,cse,linalg-fuse-elementwise-ops))",
    },
    Stage {
        name: "bufferized",
        pipeline: "builtin.module(one-shot-bufferize{bufferize-function-boundaries \
                   function-boundary-type-conversion=identity-layout-map},canonicalize,\
                   buffer-deallocation-pipeline)",
    },
    Stage {
        name: "loops",
        pipeline: "builtin.module(func.func(convert-linalg-to-loops,canonicalize),convert-math-to-libm,\
                   arith-expand,convert-scf-to-cf,expand-strided-metadata,lower-affine)",
    },
    Stage {
        name: "llvm",
        pipeline: "builtin.module(convert-math-to-llvm,finalize-memref-to-llvm,convert-func-to-llvm,\
                   convert-arith-to-llvm,convert-cf-to-llvm,convert-index-to-llvm,reconcile-unrealized-casts)",
    },
];

static REGISTER: Once = Once::new();

/// A context with every dialect, pass and LLVM translation registered, and a
/// diagnostic sink so MLIR's error messages end up in our errors.
pub struct Mlir {
    /// The MLIR context.
    pub context: Context,
    diagnostics: Rc<RefCell<Vec<String>>>,
}

impl Default for Mlir {
    fn default() -> Self {
        Mlir::new()
    }
}

impl Mlir {
    /// A fresh context.
    pub fn new() -> Mlir {
        REGISTER.call_once(register_all_passes);
        let registry = DialectRegistry::new();
        register_all_dialects(&registry);
        let context = Context::new();
        context.append_dialect_registry(&registry);
        context.load_all_available_dialects();
        register_all_llvm_translations(&context);
        let diagnostics = Rc::new(RefCell::new(Vec::new()));
        let sink = diagnostics.clone();
        context.attach_diagnostic_handler(move |d| {
            sink.borrow_mut().push(format!("{} at {}", d, d.location()));
            true
        });
        Mlir { context, diagnostics }
    }

    fn take_diagnostics(&self) -> String {
        let mut d = self.diagnostics.borrow_mut();
        let s = d.join("\n");
        d.clear();
        if s.is_empty() { "(no diagnostics)".into() } else { s }
    }

    /// Parses module text.
    pub fn parse(&self, text: &str) -> Result<Module<'_>, MlirError> {
        Module::parse(&self.context, text)
            .ok_or_else(|| MlirError::Mlir { stage: "parsing".into(), message: self.take_diagnostics() })
    }

    /// Runs one pass pipeline on a module.
    pub fn run(&self, module: &mut Module, stage: &str, pipeline: &str) -> Result<(), MlirError> {
        let pm = PassManager::new(&self.context);
        parse_pass_pipeline(pm.as_operation_pass_manager(), pipeline).map_err(|e| MlirError::Mlir {
            stage: format!("{stage} (pipeline text)"),
            message: format!("{e}: {}", self.take_diagnostics()),
        })?;
        pm.run(module).map_err(|_| MlirError::Mlir { stage: stage.into(), message: self.take_diagnostics() })
    }
}

/// The module text after each CPU stage, starting with the lowered module.
pub fn cpu_stages(lowered: &Lowered) -> Result<Vec<(String, String)>, MlirError> {
    let mlir = Mlir::new();
    let mut module = mlir.parse(&lowered.text)?;
    let mut out = vec![("tensor".to_string(), module.as_operation().to_string())];
    for s in CPU_STAGES {
        mlir.run(&mut module, s.name, s.pipeline)?;
        out.push((s.name.to_string(), module.as_operation().to_string()));
    }
    Ok(out)
}

/// How many loop nests (kernels) the fused module has: each `linalg` op that
/// survives elementwise fusion becomes one loop nest on the CPU and one GPU
/// kernel. Fills count too: they are separate passes over memory.
pub fn count_kernels(fused_text: &str) -> usize {
    fused_text
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            let op = l.split_once(" = ").map(|(_, r)| r).unwrap_or(l);
            op.starts_with("linalg.") && !op.starts_with("linalg.yield") && !op.starts_with("linalg.index")
        })
        .count()
}

/// The kernels of a fused module by kind: `fill` (initialising an
/// accumulator), `contraction` (a reduction with parallel loops on both
/// sides, a matrix product), `reduction`, `elementwise` (all-parallel
/// generics, after fusion usually a chain of several ops), or the op's own
/// name for named linalg ops. Sorted by kind; the counts add up to
/// [`count_kernels`].
pub fn kernel_stats(fused_text: &str) -> Vec<(String, usize)> {
    let mut stats: BTreeMap<String, usize> = BTreeMap::new();
    for l in fused_text.lines() {
        let l = l.trim_start();
        let op = l.split_once(" = ").map(|(_, r)| r).unwrap_or(l);
        if !op.starts_with("linalg.") || op.starts_with("linalg.yield") || op.starts_with("linalg.index") {
            continue;
        }
        let name = op.split(|c: char| c.is_whitespace() || c == '{' || c == '(').next().unwrap_or(op);
        let kind = match name {
            "linalg.fill" => "fill".to_string(),
            "linalg.generic" => {
                let iters = op.split("iterator_types = [").nth(1).and_then(|r| r.split(']').next()).unwrap_or("");
                let red = iters.matches("reduction").count();
                let par = iters.matches("parallel").count();
                let last_parallel = iters.trim_end().ends_with("\"parallel\"");
                match (red, par) {
                    (0, _) => "elementwise",
                    (_, p) if p >= 2 && last_parallel => "contraction",
                    _ => "reduction",
                }
                .to_string()
            }
            other => other.trim_start_matches("linalg.").to_string(),
        };
        *stats.entry(kind).or_default() += 1;
    }
    stats.into_iter().collect()
}

/// `{rank, descriptor}`: how MLIR passes a memref of any rank to C.
#[repr(C)]
pub(crate) struct UnrankedMemRef {
    rank: i64,
    descriptor: *const i64,
}

/// The runtime function MLIR's `memref.copy` lowers to when the layouts are
/// not both contiguous: copies `src` to `dst` element by element following
/// their strides (descriptor layout `{alloc, aligned, offset, sizes, strides}`).
/// Implemented here so the JIT needs no MLIR runtime library.
pub(crate) unsafe extern "C" fn memref_copy(elem_size: i64, src: *const UnrankedMemRef, dst: *const UnrankedMemRef) {
    // SAFETY: MLIR passes valid descriptors of equal rank and sizes.
    unsafe {
        let (s, d) = (&*src, &*dst);
        let rank = s.rank as usize;
        let sd = std::slice::from_raw_parts(s.descriptor, 3 + 2 * rank);
        let dd = std::slice::from_raw_parts(d.descriptor, 3 + 2 * rank);
        let es = elem_size as usize;
        let sbase = (sd[1] as *const u8).add(sd[2] as usize * es);
        let dbase = (dd[1] as *mut u8).add(dd[2] as usize * es);
        let sizes = &sd[3..3 + rank];
        if sizes.contains(&0) {
            return;
        }
        let mut idx = vec![0i64; rank];
        loop {
            let (mut so, mut dof) = (0i64, 0i64);
            for k in 0..rank {
                so += idx[k] * sd[3 + rank + k];
                dof += idx[k] * dd[3 + rank + k];
            }
            std::ptr::copy_nonoverlapping(
                sbase.offset(so as isize * es as isize),
                dbase.offset(dof as isize * es as isize),
                es,
            );
            let mut k = rank;
            loop {
                if k == 0 {
                    return;
                }
                k -= 1;
                idx[k] += 1;
                if idx[k] < sizes[k] {
                    break;
                }
                idx[k] = 0;
            }
        }
    }
}

/// A buffer aligned for any element type.
struct Buf {
    words: Vec<u64>,
}

impl Buf {
    fn zeroed(bytes: usize) -> Buf {
        Buf { words: vec![0u64; bytes.div_ceil(8)] }
    }
    fn from_bytes(bytes: &[u8]) -> Buf {
        let mut b = Buf::zeroed(bytes.len());
        // SAFETY: the word vector holds at least `bytes.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), b.words.as_mut_ptr() as *mut u8, bytes.len()) };
        b
    }
    fn ptr(&mut self) -> *mut u8 {
        self.words.as_mut_ptr() as *mut u8
    }
    fn bytes(&self, n: usize) -> &[u8] {
        // SAFETY: `n` never exceeds the allocation (checked by callers' sizes).
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, n.min(self.words.len() * 8)) }
    }
}

/// A weight's data as little-endian bytes, the layout both executables
/// hand to the compiled code.
pub(crate) fn weight_bytes(graph: &Graph, w: sharc_ir::WeightId, name: &str) -> Result<Vec<u8>, MlirError> {
    let wt =
        graph.weights.get(w).ok_or_else(|| MlirError::Graph(format!("weight '{name}' is missing from the store")))?;
    wt.tensor().to_le_bytes().ok_or_else(|| MlirError::Graph(format!("weight '{name}' has no byte form")))
}

/// Checks that `inputs` are one tensor per graph input with the dtype and
/// shape the executable was compiled for (both executables take only those).
pub(crate) fn check_inputs(args: &[ArgSpec], inputs: &[Tensor]) -> Result<(), MlirError> {
    let n_in = args.iter().filter(|a| matches!(a.kind, ArgKind::Input(_))).count();
    if inputs.len() != n_in {
        return Err(MlirError::Run(format!("the model takes {n_in} inputs, {} were given", inputs.len())));
    }
    for a in args {
        if let ArgKind::Input(i) = a.kind {
            let t = &inputs[i];
            let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
            if t.dtype() != a.dtype || shape != a.shape {
                return Err(MlirError::Run(format!(
                    "input '{}' must be {}{:?} (as compiled), got {}{:?}",
                    a.name,
                    a.dtype,
                    a.shape,
                    t.dtype(),
                    shape
                )));
            }
        }
    }
    Ok(())
}

/// Bytes of a dense tensor of `dt` and `shape` (bools take a byte each).
pub(crate) fn byte_size(dt: DType, shape: &[u64]) -> Result<usize, MlirError> {
    let n: u64 = shape.iter().product();
    let w = match dt {
        DType::Bool => 8,
        _ => dt.bit_width().ok_or_else(|| MlirError::Run(format!("{dt} has no fixed width")))?,
    };
    Ok(n as usize * w.div_ceil(8))
}

/// A memref descriptor as MLIR's C interface lays it out:
/// `{allocated, aligned, offset, sizes[rank], strides[rank]}`.
pub(crate) fn descriptor(ptr: *mut u8, shape: &[u64]) -> Vec<i64> {
    let mut d = vec![ptr as i64, ptr as i64, 0];
    d.extend(shape.iter().map(|&s| s as i64));
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1] as i64;
    }
    d.extend(strides);
    d
}

/// A graph compiled for the CPU: a JIT-compiled `@main` plus the weights it
/// reads, copied once into aligned buffers (one per weight, however many
/// nodes share it).
pub struct CpuExecutable {
    engine: ExecutionEngine,
    args: Vec<ArgSpec>,
    weights: Vec<Buf>,
    /// Kernels (linalg ops, each one loop nest) after elementwise fusion.
    pub kernels: usize,
}

impl CpuExecutable {
    /// Compiles a lowered graph; `graph` supplies the weights' data.
    pub fn new(graph: &Graph, lowered: &Lowered, opt_level: usize) -> Result<CpuExecutable, MlirError> {
        let mlir = Mlir::new();
        let mut module = mlir.parse(&lowered.text)?;
        let mut kernels = 0;
        for s in CPU_STAGES {
            mlir.run(&mut module, s.name, s.pipeline)?;
            if s.name == "fused" {
                kernels = count_kernels(&module.as_operation().to_string());
            }
        }
        let engine = ExecutionEngine::new(&module, opt_level, &[], false, false);
        // SAFETY: `memref_copy` has the C signature MLIR's lowering of
        // `memref.copy` calls (`memrefCopy` of libmlir_c_runner_utils).
        unsafe { engine.register_symbol("memrefCopy", memref_copy as *mut ()) };
        if engine.lookup(&format!("_mlir_ciface_{ENTRY}")).is_null() {
            return Err(MlirError::Mlir {
                stage: "JIT compilation".into(),
                message: format!("the engine has no @{ENTRY} ({})", mlir.take_diagnostics()),
            });
        }
        let mut weights = Vec::new();
        for a in &lowered.args {
            if let ArgKind::Weight(w) = a.kind {
                weights.push(Buf::from_bytes(&weight_bytes(graph, w, &a.name)?));
            }
        }
        Ok(CpuExecutable { engine, args: lowered.args.clone(), weights, kernels })
    }

    /// Runs on one tensor per graph input (shapes and dtypes must match the
    /// ones compiled for) and returns one tensor per graph output.
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, MlirError> {
        check_inputs(&self.args, inputs)?;
        let mut in_bufs = Vec::new();
        let mut out_bufs = Vec::new();
        for a in &self.args {
            match a.kind {
                ArgKind::Input(i) => {
                    let t = &inputs[i];
                    let bytes = t
                        .to_le_bytes()
                        .ok_or_else(|| MlirError::Run(format!("input '{}' has no byte form", a.name)))?;
                    in_bufs.push(Buf::from_bytes(&bytes));
                }
                ArgKind::Output(_) => out_bufs.push(Buf::zeroed(byte_size(a.dtype, &a.shape)?)),
                ArgKind::Weight(_) => {}
            }
        }
        let (mut ii, mut wi, mut oi) = (0, 0, 0);
        let mut descs: Vec<Vec<i64>> = Vec::new();
        for a in &self.args {
            let p = match a.kind {
                ArgKind::Input(_) => {
                    ii += 1;
                    in_bufs[ii - 1].ptr()
                }
                ArgKind::Weight(_) => {
                    wi += 1;
                    self.weights[wi - 1].ptr()
                }
                ArgKind::Output(_) => {
                    oi += 1;
                    out_bufs[oi - 1].ptr()
                }
            };
            descs.push(descriptor(p, &a.shape));
        }
        let mut desc_ptrs: Vec<*mut i64> = descs.iter_mut().map(|d| d.as_mut_ptr()).collect();
        let mut packed: Vec<*mut ()> = desc_ptrs.iter_mut().map(|p| p as *mut *mut i64 as *mut ()).collect();
        // SAFETY: every argument is a pointer to a descriptor of a live buffer
        // of exactly the compiled shape and dtype, as `@main` expects.
        unsafe { self.engine.invoke_packed(ENTRY, &mut packed) }
            .map_err(|e| MlirError::Run(format!("invoking @{ENTRY}: {e}")))?;
        let mut outs = Vec::new();
        let mut k = 0;
        for a in &self.args {
            if let ArgKind::Output(_) = a.kind {
                let n = byte_size(a.dtype, &a.shape)?;
                let shape: Vec<usize> = a.shape.iter().map(|&d| d as usize).collect();
                let t = Tensor::from_le_bytes(a.dtype, &shape, out_bufs[k].bytes(n))
                    .map_err(|e| MlirError::Run(format!("output '{}': {e}", a.name)))?;
                outs.push(t);
                k += 1;
            }
        }
        Ok(outs)
    }
}

/// Derives dim values from actual inputs: each symbolic dim of a graph input
/// takes the size the tensor has there. Two inputs that disagree on a symbol
/// are an error.
pub fn dims_from_inputs(graph: &Graph, inputs: &[Tensor]) -> Result<BTreeMap<String, u64>, MlirError> {
    let mut dims = BTreeMap::new();
    for (v, t) in graph.input_values().iter().zip(inputs) {
        let info = graph.value_info(*v);
        let Some(shape) = info.ty.shape() else { continue };
        if shape.rank() != t.rank() {
            return Err(MlirError::Run(format!(
                "input '{}' has rank {} but the model declares {}",
                info.name,
                t.rank(),
                shape.rank()
            )));
        }
        for (d, &n) in shape.dims().iter().zip(t.shape()) {
            if let Dim::Sym(s) = d
                && let Some(old) = dims.insert(s.clone(), n as u64)
                && old != n as u64
            {
                return Err(MlirError::Run(format!("the dim '{s}' is {old} in one input and {n} in '{}'", info.name)));
            }
        }
    }
    Ok(dims)
}

/// The MLIR CPU backend as an [`Evaluator`]: specialises to the shapes of the
/// inputs it is given, compiles, and runs. Compiling on every call suits
/// conformance tests and one-off runs; keep a [`CpuExecutable`] to run a
/// model repeatedly.
#[derive(Clone, Debug)]
pub struct MlirCpu {
    /// LLVM optimisation level for the JIT (0 to 3).
    pub opt_level: usize,
}

impl Default for MlirCpu {
    fn default() -> Self {
        MlirCpu { opt_level: 3 }
    }
}

impl MlirCpu {
    /// Specialises and compiles `graph` for the shapes of `inputs`.
    pub fn compile_for(&self, graph: &Graph, inputs: &[Tensor]) -> Result<CpuExecutable, MlirError> {
        let dims = dims_from_inputs(graph, inputs)?;
        let lowered = crate::lower_graph(graph, &dims)?;
        CpuExecutable::new(graph, &lowered, self.opt_level)
    }
}

impl Evaluator for MlirCpu {
    fn name(&self) -> &str {
        "mlir-cpu"
    }

    fn evaluate(&self, graph: &Graph, inputs: &[Value]) -> Result<Vec<Value>, EvalError> {
        let tensors: Vec<Tensor> = inputs
            .iter()
            .map(|v| {
                v.as_tensor().cloned().ok_or_else(|| EvalError::unsupported("the MLIR backend takes tensors only"))
            })
            .collect::<Result<_, _>>()?;
        // What the backend rejects before MLIR sees it is unsupported; MLIR
        // rejecting the generated module, or a run going wrong, is a failure.
        let to_eval = |e: MlirError| match e {
            MlirError::Unsupported { .. } | MlirError::MissingDim { .. } | MlirError::Graph(_) => {
                EvalError::unsupported(e.to_string())
            }
            other => EvalError::new(other.to_string()),
        };
        let mut exe = self.compile_for(graph, &tensors).map_err(to_eval)?;
        let out = exe.run(&tensors).map_err(to_eval)?;
        Ok(out.into_iter().map(Value::Tensor).collect())
    }
}

/// A graph compiled to PTX.
#[derive(Clone, Debug)]
pub struct GpuModule {
    /// The PTX text of every kernel.
    pub ptx: String,
    /// One line per kernel launch: name, signature, grid and block sizes.
    pub kernels: Vec<String>,
    /// The module after each stage, for `--emit mlir`.
    pub stages: Vec<(String, String)>,
}

/// Compiles a lowered graph for an NVIDIA GPU of architecture `chip`
/// (`sm_80`, `sm_90`) down to PTX. Needs neither CUDA nor a GPU: LLVM's
/// NVPTX backend writes the PTX (`format=isa`). Kernels with only arithmetic
/// need nothing else; transcendental math (exp, erf, sqrt...) needs CUDA's
/// libdevice, which is linked in when found and named in the error when not
/// (see [`crate::nvvm`]).
pub fn gpu_compile(lowered: &Lowered, chip: &str) -> Result<GpuModule, MlirError> {
    gpu_compile_for(lowered, &NvvmTarget::new(chip)?)
}

/// [`gpu_compile`] for an explicit target (architecture and libdevice).
pub fn gpu_compile_for(lowered: &Lowered, target: &NvvmTarget) -> Result<GpuModule, MlirError> {
    let mut stages = Vec::new();
    let mapped = map_to_gpu(lowered, &mut stages)?;
    let kernels = describe_kernels(&mapped);
    let mlir = Mlir::new();
    let mut module = mlir.parse(&mapped)?;
    mlir.run(&mut module, "NVVM/PTX", &target.pipeline())?;
    let ptx = binary_objects(&module).join("\n");
    if ptx.is_empty() {
        // Pure data movement (reshapes, slices, transposes of inputs) and
        // loops the mapping leaves on the host need no kernel; say so rather
        // than write an empty PTX file.
        let message = if kernels.is_empty() {
            "the graph maps to no GPU kernels (its ops are views, copies or reductions that the GPU mapping leaves on the host), so there is no \
             PTX to write; `sharc run --backend mlir --target cuda` still runs it"
        } else {
            "the module has kernels but no gpu.binary"
        };
        return Err(MlirError::Mlir { stage: "PTX extraction".into(), message: message.into() });
    }
    target.check_no_libdevice_calls(&ptx)?;
    Ok(GpuModule { ptx, kernels, stages })
}

/// The lowered module fused, bufferized and mapped to GPU kernels (see
/// [`crate::gpu_map`]), as text; each stage's text is pushed to `stages`.
pub(crate) fn map_to_gpu(lowered: &Lowered, stages: &mut Vec<(String, String)>) -> Result<String, MlirError> {
    let mlir = Mlir::new();
    let mut module = mlir.parse(&lowered.text)?;
    stages.push(("tensor".into(), module.as_operation().to_string()));
    mlir.run(&mut module, "fused", CPU_STAGES[0].pipeline)?;
    stages.push(("fused".into(), module.as_operation().to_string()));
    mlir.run(&mut module, "bufferization", BUFFERIZE)?;
    let mut module = mlir.parse(&reductions_innermost(&copies_as_loops(&module.as_operation().to_string())))?;
    mlir.run(&mut module, "gpu mapping", &GpuMapping::from_env()?.pipeline())?;
    let mapped = module.as_operation().to_string();
    stages.push(("gpu".into(), mapped.clone()));
    Ok(mapped)
}

/// The objects (PTX text with `format=isa`) of every `gpu.binary` op.
fn binary_objects(module: &Module) -> Vec<String> {
    use mlir_sys::*;
    let mut out = Vec::new();
    // SAFETY: plain reads through MLIR's C API on a live module; every handle
    // comes from the API itself and is checked for null before use.
    unsafe {
        let op = module.as_operation().to_raw();
        let region = mlirOperationGetRegion(op, 0);
        let block = mlirRegionGetFirstBlock(region);
        if block.ptr.is_null() {
            return out;
        }
        let mut cur = mlirBlockGetFirstOperation(block);
        while !cur.ptr.is_null() {
            let name = mlirIdentifierStr(mlirOperationGetName(cur));
            let name = std::slice::from_raw_parts(name.data as *const u8, name.length);
            if name == b"gpu.binary" {
                let key = mlirStringRefCreateFromCString(c"objects".as_ptr());
                let attr = mlirOperationGetAttributeByName(cur, key);
                if !attr.ptr.is_null() && mlirAttributeIsAArray(attr) {
                    for i in 0..mlirArrayAttrGetNumElements(attr) {
                        let obj = mlirArrayAttrGetElement(attr, i);
                        if mlirAttributeIsAGPUObjectAttr(obj) {
                            let s = mlirGPUObjectAttrGetObject(obj);
                            let bytes = std::slice::from_raw_parts(s.data as *const u8, s.length);
                            out.push(String::from_utf8_lossy(bytes).into_owned());
                        }
                    }
                }
            }
            cur = mlirOperationGetNextInBlock(cur);
        }
    }
    out
}

/// One line per `gpu.launch_func` of the mapped module: the kernel, its
/// parameter types, and its grid and block sizes (numbers where they are
/// constants, which they are for static shapes).
pub fn describe_kernels(mapped: &str) -> Vec<String> {
    // Outlined kernels are all named after the function, one gpu.module
    // each, so signatures are keyed by `module::kernel`.
    let mut sigs: BTreeMap<String, String> = BTreeMap::new();
    let mut module = String::new();
    for l in mapped.lines() {
        let l = l.trim();
        if let Some(rest) = l.strip_prefix("gpu.module @") {
            module = rest.split_whitespace().next().unwrap_or("").to_string();
        }
        if let Some(rest) = l.strip_prefix("gpu.func @")
            && let Some((name, tail)) = rest.split_once('(')
        {
            let params = tail.split(')').next().unwrap_or("");
            let types: Vec<&str> = params.split(", ").filter_map(|p| p.split_once(": ").map(|(_, t)| t)).collect();
            sigs.insert(format!("{module}::{name}"), types.join(", "));
        }
    }
    let konst = |s: &str| -> String {
        let s = s.trim();
        match s.strip_prefix("%c").map(|r| r.split('_').next().unwrap_or("")) {
            Some(n) if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) => n.to_string(),
            _ => s.to_string(),
        }
    };
    let triple = |s: &str| -> String { s.split(',').map(konst).collect::<Vec<_>>().join("x") };
    let mut out = Vec::new();
    for l in mapped.lines() {
        let l = l.trim();
        let Some(rest) = l.strip_prefix("gpu.launch_func") else { continue };
        let name = rest.split_whitespace().next().unwrap_or("").trim_start_matches('@').replace("::@", "::");
        let grid = rest.split("blocks in (").nth(1).and_then(|r| r.split(')').next()).unwrap_or("");
        let block = rest.split("threads in (").nth(1).and_then(|r| r.split(')').next()).unwrap_or("");
        let sig = sigs.get(&name).cloned().unwrap_or_default();
        out.push(format!("{name}({sig}) grid {} block {}", triple(grid), triple(block)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::kernel_stats;

    #[test]
    fn kernels_are_classified_by_iterators() {
        let text = "%0 = linalg.fill ins(%c : f32) outs(%e : tensor<4xf32>) -> tensor<4xf32>\n\
                    %1 = linalg.generic {indexing_maps = [#m], iterator_types = [\"parallel\", \"reduction\", \"parallel\"]} ins()\n\
                    %2 = linalg.generic {indexing_maps = [#m], iterator_types = [\"parallel\", \"reduction\"]} ins()\n\
                    %3 = linalg.generic {indexing_maps = [#m], iterator_types = [\"parallel\"]} ins()\n\
                    linalg.yield %x : f32\n";
        let want: Vec<(String, usize)> =
            [("contraction", 1), ("elementwise", 1), ("fill", 1), ("reduction", 1)].map(|(k, n)| (k.into(), n)).into();
        assert_eq!(kernel_stats(text), want);
    }
}

//! Running the GPU path: the module after GPU mapping is lowered to NVVM/PTX
//! *and* to host code, and the host code runs in MLIR's ExecutionEngine.
//!
//! The host side is not a list of launches that could be replayed: after
//! mapping, `@main` still allocates intermediates, copies (strided) views,
//! reshapes through shape buffers and runs the loops that could not be mapped
//! to the GPU. So rather than re-implement that, the runner JIT-compiles the
//! host code MLIR generates and supplies the small runtime it calls (the
//! `mgpu*` functions of MLIR's CUDA runtime wrappers, which Debian does not
//! ship) on top of a [`Device`]:
//!
//! - every `gpu.binary` becomes a global constructor calling
//!   `mgpuModuleLoadJIT` with the PTX, which the driver compiles for the GPU
//!   at hand;
//! - every `gpu.launch_func` becomes `mgpuModuleGetFunction`,
//!   `mgpuLaunchKernel` (with the grid and block sizes the lowering chose) and
//!   `mgpuStreamSynchronize`, so launches run in program order and host code
//!   after a launch sees its results;
//! - `memref.alloc` calls `malloc`, which the runner replaces by an allocation
//!   the device and the host can both reach (CUDA managed memory), recycled
//!   from one run to the next.
//!
//! Constants (`memref.get_global`) live in the JIT's host memory, which a
//! kernel cannot read, so each is copied into an allocation first
//! ([`device_visible_globals`]).
//!
//! The real device ([`CudaDevice`], cargo feature `cuda`) uses the CUDA driver
//! API through cudarc, loaded at run time, so sharc builds without CUDA and
//! reports a missing driver as an error. The tests drive the same host code
//! with a recording device, which checks on any machine that every kernel is
//! loaded and launched with the recorded dimensions and with pointers only to
//! memory the device can reach.

use crate::MlirError;
use crate::compile::{
    Mlir, binary_objects, byte_size, check_inputs, describe_kernels, descriptor, map_to_gpu, memref_copy, weight_bytes,
};
use crate::lower::{ArgKind, ArgSpec, ENTRY, Lowered};
use crate::nvvm::NvvmTarget;
use mlir_sys::{
    MlirExecutionEngine, MlirStringRef, mlirExecutionEngineCreate, mlirExecutionEngineDestroy,
    mlirExecutionEngineInitialize, mlirExecutionEngineInvokePacked, mlirExecutionEngineLookup,
    mlirExecutionEngineRegisterSymbol,
};
use sharc_ir::{Graph, Tensor};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, c_char, c_void};

/// What the compiled host code needs from a GPU. Allocations must be
/// readable and writable both by kernels and by the host (the host code
/// copies views and runs unmapped loops on them).
pub trait Device {
    /// A name for messages (the GPU's model).
    fn name(&self) -> String;
    /// Loads (and JIT-compiles) a module of PTX text; returns its handle.
    fn load_module(&mut self, ptx: &CStr) -> Result<*mut c_void, String>;
    /// Looks a kernel up in a loaded module.
    fn function(&mut self, module: *mut c_void, name: &CStr) -> Result<*mut c_void, String>;
    /// Launches a kernel. `params` points to `count` pointers, one to each
    /// argument's value, as `cuLaunchKernel` takes them.
    ///
    /// # Safety
    /// `params` must hold `count` pointers to live argument values of the
    /// kernel's parameter types.
    unsafe fn launch(
        &mut self,
        function: *mut c_void,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        params: *mut *mut c_void,
        count: usize,
    ) -> Result<(), String>;
    /// Waits for every launch so far to finish (and reports its failure).
    fn synchronize(&mut self) -> Result<(), String>;
    /// Memory of `bytes` bytes, aligned to at least 64, reachable from the
    /// device and the host.
    fn alloc(&mut self, bytes: usize) -> Result<*mut u8, String>;
    /// Frees an allocation of [`Device::alloc`].
    fn free(&mut self, ptr: *mut u8);
    /// Unloads a module of [`Device::load_module`].
    fn unload_module(&mut self, module: *mut c_void);
}

/// The state the runtime functions called from JIT code work on. It is made
/// reachable to them through a thread-local pointer only while the runner
/// calls into the engine ([`Active`]).
struct Runtime {
    device: Box<dyn Device>,
    /// The first failure of this run: the runtime functions cannot return
    /// errors to the generated code, so they record it and skip the rest.
    error: Option<String>,
    /// Allocations made during the current run, by address, with their sizes.
    live: HashMap<usize, usize>,
    /// Allocations of earlier runs, by size, for reuse: the host code never
    /// frees its intermediates, and every run asks for the same sizes.
    pool: BTreeMap<usize, Vec<*mut u8>>,
    /// Host memory handed out after a device allocation failed, so that the
    /// host code can finish the run that then reports the failure.
    fallback: Vec<Vec<u64>>,
    modules: Vec<*mut c_void>,
    /// Allocations that live as long as the runtime (the weights).
    owned: Vec<*mut u8>,
    /// Kernel names by function handle, for messages.
    names: HashMap<usize, String>,
    /// Launches in the current run.
    launches: usize,
}

impl Runtime {
    fn new(device: Box<dyn Device>) -> Runtime {
        Runtime {
            device,
            error: None,
            live: HashMap::new(),
            pool: BTreeMap::new(),
            fallback: Vec::new(),
            modules: Vec::new(),
            owned: Vec::new(),
            names: HashMap::new(),
            launches: 0,
        }
    }

    fn fail(&mut self, message: String) {
        if self.error.is_none() {
            self.error = Some(message);
        }
    }

    fn malloc(&mut self, bytes: usize) -> *mut u8 {
        let bytes = bytes.max(1);
        let p = match self.pool.get_mut(&bytes).and_then(|v| v.pop()) {
            Some(p) => p,
            None => match self.device.alloc(bytes) {
                Ok(p) => p,
                Err(e) => {
                    self.fail(format!("allocating {bytes} bytes on the GPU: {e}"));
                    let mut host = vec![0u64; bytes.div_ceil(8)];
                    let p = host.as_mut_ptr() as *mut u8;
                    self.fallback.push(host);
                    return p;
                }
            },
        };
        self.live.insert(p as usize, bytes);
        p
    }

    fn free(&mut self, p: *mut u8) {
        if let Some(bytes) = self.live.remove(&(p as usize)) {
            self.pool.entry(bytes).or_default().push(p);
        }
    }

    /// Ends a run: its allocations go back to the pool, its failure (if any)
    /// is returned.
    fn finish_run(&mut self) -> Result<(), String> {
        if self.error.is_none()
            && let Err(e) = self.device.synchronize()
        {
            self.fail(e);
        }
        for (p, bytes) in self.live.drain() {
            self.pool.entry(bytes).or_default().push(p as *mut u8);
        }
        self.fallback.clear();
        self.error.take().map_or(Ok(()), Err)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let ptrs: Vec<*mut u8> =
            self.live.keys().map(|&p| p as *mut u8).chain(self.pool.values().flatten().copied()).collect();
        let ptrs = ptrs.into_iter().chain(std::mem::take(&mut self.owned));
        for p in ptrs {
            self.device.free(p);
        }
        for m in std::mem::take(&mut self.modules) {
            self.device.unload_module(m);
        }
    }
}

thread_local! {
    static ACTIVE: Cell<*mut Runtime> = const { Cell::new(std::ptr::null_mut()) };
}

/// Makes a runtime reachable to the runtime functions for as long as it
/// lives; restores the previous one (normally none) when dropped.
struct Active {
    previous: *mut Runtime,
}

impl Active {
    fn new(rt: &mut Runtime) -> Active {
        Active { previous: ACTIVE.with(|a| a.replace(rt as *mut Runtime)) }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(self.previous));
    }
}

/// Runs `f` on the active runtime; `otherwise` when there is none (calls from
/// global destructors after the run, which need nothing done).
fn with_runtime<R>(otherwise: R, f: impl FnOnce(&mut Runtime) -> R) -> R {
    let p = ACTIVE.with(|a| a.get());
    if p.is_null() {
        return otherwise;
    }
    // SAFETY: `ACTIVE` is only non-null while an `Active` guard borrows the
    // runtime mutably on this thread, during a call into the engine; the
    // runtime functions are not re-entered.
    f(unsafe { &mut *p })
}

// The runtime functions the host code calls, with the signatures MLIR 22's
// GPU-to-LLVM lowering declares for them.

unsafe extern "C" fn rt_malloc(bytes: usize) -> *mut c_void {
    with_runtime(std::ptr::null_mut(), |rt| rt.malloc(bytes) as *mut c_void)
}

unsafe extern "C" fn rt_free(p: *mut c_void) {
    with_runtime((), |rt| rt.free(p as *mut u8))
}

unsafe extern "C" fn rt_module_load_jit(data: *mut c_void, _opt_level: i32) -> *mut c_void {
    with_runtime(std::ptr::null_mut(), |rt| {
        if rt.error.is_some() || data.is_null() {
            return std::ptr::null_mut();
        }
        // SAFETY: the embedded PTX text is NUL-terminated (MLIR adds the
        // terminator when it embeds `format=isa` objects).
        let ptx = unsafe { CStr::from_ptr(data as *const c_char) };
        match rt.device.load_module(ptx) {
            Ok(m) => {
                rt.modules.push(m);
                m
            }
            Err(e) => {
                rt.fail(format!("loading a PTX module: {e}"));
                std::ptr::null_mut()
            }
        }
    })
}

unsafe extern "C" fn rt_module_load(data: *mut c_void, _bytes: usize) -> *mut c_void {
    // SAFETY: as for `rt_module_load_jit`; the driver reads PTX and binary
    // images alike.
    unsafe { rt_module_load_jit(data, 0) }
}

unsafe extern "C" fn rt_module_unload(_module: *mut c_void) {
    // Modules are owned by the runtime and unloaded when it is dropped.
}

unsafe extern "C" fn rt_module_get_function(module: *mut c_void, name: *const c_char) -> *mut c_void {
    with_runtime(std::ptr::null_mut(), |rt| {
        if rt.error.is_some() || module.is_null() || name.is_null() {
            return std::ptr::null_mut();
        }
        // SAFETY: MLIR passes the kernel's name as a NUL-terminated global.
        let name = unsafe { CStr::from_ptr(name) };
        match rt.device.function(module, name) {
            Ok(f) => {
                rt.names.insert(f as usize, name.to_string_lossy().into_owned());
                f
            }
            Err(e) => {
                rt.fail(format!("looking up kernel '{}': {e}", name.to_string_lossy()));
                std::ptr::null_mut()
            }
        }
    })
}

/// The runtime's only stream: launches are synchronised right after each
/// other anyway, so one is enough; a non-null dummy keeps the code happy.
unsafe extern "C" fn rt_stream_create() -> *mut c_void {
    std::ptr::NonNull::<c_void>::dangling().as_ptr()
}

unsafe extern "C" fn rt_stream_destroy(_stream: *mut c_void) {}

unsafe extern "C" fn rt_stream_synchronize(_stream: *mut c_void) {
    with_runtime((), |rt| {
        if rt.error.is_none()
            && let Err(e) = rt.device.synchronize()
        {
            rt.fail(e);
        }
    })
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn rt_launch_kernel(
    function: *mut c_void,
    gx: i64,
    gy: i64,
    gz: i64,
    bx: i64,
    by: i64,
    bz: i64,
    shared_bytes: i32,
    _stream: *mut c_void,
    params: *mut *mut c_void,
    _extra: *mut *mut c_void,
    count: i64,
) {
    with_runtime((), |rt| {
        if rt.error.is_some() || function.is_null() {
            return;
        }
        let name = rt.names.get(&(function as usize)).cloned().unwrap_or_else(|| "?".into());
        // A loop over an empty range maps to a launch with a zero dimension
        // (a mixture-of-experts layer's expert that no token chose has zero
        // rows): there is nothing to run, and the driver would refuse it.
        if [gx, gy, gz, bx, by, bz].contains(&0) {
            return;
        }
        let dim = |v: [i64; 3]| -> Option<[u32; 3]> {
            let mut out = [0u32; 3];
            for (o, x) in out.iter_mut().zip(v) {
                *o = u32::try_from(x).ok().filter(|&x| x > 0)?;
            }
            Some(out)
        };
        let (Some(grid), Some(block), Ok(shared), Ok(count)) =
            (dim([gx, gy, gz]), dim([bx, by, bz]), u32::try_from(shared_bytes), usize::try_from(count))
        else {
            rt.fail(format!(
                "kernel '{name}': launch dimensions grid {gx}x{gy}x{gz} block {bx}x{by}x{bz} are out of range"
            ));
            return;
        };
        rt.launches += 1;
        // SAFETY: the generated code passes `count` pointers to the values
        // of the kernel's arguments.
        if let Err(e) = unsafe { rt.device.launch(function, grid, block, shared, params, count) } {
            rt.fail(format!("launching kernel '{name}' (grid {grid:?}, block {block:?}): {e}"));
        }
    })
}

/// The symbols the host code needs resolved, with our implementations.
fn runtime_symbols() -> [(&'static str, *mut c_void); 12] {
    [
        ("malloc", rt_malloc as *mut c_void),
        ("free", rt_free as *mut c_void),
        ("memrefCopy", memref_copy as *mut c_void),
        ("mgpuModuleLoadJIT", rt_module_load_jit as *mut c_void),
        ("mgpuModuleLoad", rt_module_load as *mut c_void),
        ("mgpuModuleUnload", rt_module_unload as *mut c_void),
        ("mgpuModuleGetFunction", rt_module_get_function as *mut c_void),
        ("mgpuStreamCreate", rt_stream_create as *mut c_void),
        ("mgpuStreamDestroy", rt_stream_destroy as *mut c_void),
        ("mgpuStreamSynchronize", rt_stream_synchronize as *mut c_void),
        ("mgpuLaunchKernel", rt_launch_kernel as *mut c_void),
        // Same as `mgpuStreamSynchronize`: the runtime has one stream.
        ("mgpuCtxSynchronize", rt_stream_synchronize as *mut c_void),
    ]
}

fn string_ref(s: &str) -> MlirStringRef {
    MlirStringRef { data: s.as_ptr() as *const c_char, length: s.len() }
}

/// MLIR's ExecutionEngine through the C API directly: melior's wrapper has
/// no way to run the global constructors (which load the kernels) after the
/// runtime symbols are registered.
struct Engine(MlirExecutionEngine);

impl Engine {
    fn new(module: &melior::ir::Module, opt_level: usize) -> Result<Engine, MlirError> {
        // SAFETY: a live module; no shared libraries are passed.
        let raw =
            unsafe { mlirExecutionEngineCreate(module.to_raw(), opt_level as i32, 0, std::ptr::null(), false, false) };
        if raw.ptr.is_null() {
            return Err(MlirError::Mlir {
                stage: "JIT compilation of the host code".into(),
                message: "the ExecutionEngine could not translate the module to LLVM IR".into(),
            });
        }
        Ok(Engine(raw))
    }

    fn register(&self, name: &str, ptr: *mut c_void) {
        // SAFETY: a live engine; `ptr` is a function with the C signature the
        // generated code declares for `name`.
        unsafe { mlirExecutionEngineRegisterSymbol(self.0, string_ref(name), ptr) }
    }

    fn has(&self, name: &str) -> bool {
        // SAFETY: a live engine.
        !unsafe { mlirExecutionEngineLookup(self.0, string_ref(name)) }.is_null()
    }

    /// Runs the global constructors.
    fn initialize(&self) {
        // SAFETY: a live engine whose external symbols are all registered.
        unsafe { mlirExecutionEngineInitialize(self.0) }
    }

    /// # Safety
    /// `args` must match the packed signature of `name`.
    unsafe fn invoke_packed(&self, name: &str, args: &mut [*mut c_void]) -> bool {
        // SAFETY: forwarded to the caller.
        unsafe { mlirExecutionEngineInvokePacked(self.0, string_ref(name), args.as_mut_ptr()) }.value != 0
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: created by `mlirExecutionEngineCreate`, destroyed once.
        unsafe { mlirExecutionEngineDestroy(self.0) }
    }
}

/// Rewrites the mapped module so that kernels never read the JIT's host
/// memory: each `memref.get_global` (a constant emitted into the JIT's data
/// section) is followed by a copy into a fresh allocation, which the runtime
/// makes device-visible, and its uses take the copy. Works on the printed
/// form `%v = memref.get_global @sym : type`, which MLIR always prints alike.
pub fn device_visible_globals(mapped: &str) -> String {
    let mut out = String::with_capacity(mapped.len() + 1024);
    let mut n = 0;
    for line in mapped.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let parsed = line.trim_start().split_once(" = memref.get_global @").and_then(|(v, rest)| {
            let (sym, ty) = rest.split_once(" : ")?;
            (v.starts_with('%') && !v.contains(' ')).then_some((v, sym, ty.trim_end()))
        });
        match parsed {
            Some((v, sym, ty)) => {
                let g = format!("%sharc_host_global{n}");
                n += 1;
                out.push_str(&format!(
                    "{indent}{g} = memref.get_global @{sym} : {ty}\n\
                     {indent}{v} = memref.alloc() {{alignment = 64 : i64}} : {ty}\n\
                     {indent}memref.copy {g}, {v} : {ty} to {ty}\n"
                ));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The host-side lowering of math (`exp` in loops left on the host) that
/// the NVVM pipeline's host part leaves alone; it runs first.
const HOST_MATH: &str = "builtin.module(func.func(arith-expand,convert-math-to-llvm))";

/// A graph compiled for a GPU: the host code in MLIR's ExecutionEngine, the
/// kernels loaded on the device, and the weights uploaded once (one buffer
/// per weight, however many nodes share it).
pub struct GpuExecutable {
    // Dropped before `runtime`: the engine's global destructors may still
    // call into the (then inactive) runtime functions.
    engine: Engine,
    runtime: Box<Runtime>,
    args: Vec<ArgSpec>,
    weights: Vec<*mut u8>,
    /// Kernels in the mapped module, one line each: name, signature, grid
    /// and block sizes.
    pub kernels: Vec<String>,
    /// The GPU's name.
    pub device: String,
    /// The architecture the PTX was generated for.
    pub chip: String,
}

impl GpuExecutable {
    /// Compiles a lowered graph for `device`, whose PTX is generated for
    /// `chip` (`sm_80`, `sm_90`); `graph` supplies the weights' data.
    pub fn with_device(
        graph: &Graph,
        lowered: &Lowered,
        device: Box<dyn Device>,
        chip: &str,
    ) -> Result<GpuExecutable, MlirError> {
        let target = NvvmTarget::new(chip)?;
        let mapped = map_to_gpu(lowered, None)?;
        let kernels = describe_kernels(&mapped);
        let mlir = Mlir::new();
        let mut module = mlir.parse(&device_visible_globals(&mapped))?;
        mlir.run(&mut module, "host math", HOST_MATH)?;
        mlir.run(&mut module, "host code and NVVM/PTX", &target.pipeline())?;
        target.check_no_libdevice_calls(&binary_objects(&module).join("\n"))?;
        let engine = Engine::new(&module, 3)?;
        for (name, ptr) in runtime_symbols() {
            engine.register(name, ptr);
        }
        let device_name = device.name();
        let mut runtime = Box::new(Runtime::new(device));
        {
            let _active = Active::new(&mut runtime);
            engine.initialize();
        }
        if let Some(e) = runtime.error.take() {
            return Err(MlirError::Run(format!("loading the kernels on {device_name}: {e}")));
        }
        if !engine.has(&format!("_mlir_ciface_{ENTRY}")) {
            return Err(MlirError::Mlir {
                stage: "JIT compilation of the host code".into(),
                message: format!("the engine has no @{ENTRY}"),
            });
        }
        let mut exe = GpuExecutable {
            engine,
            runtime,
            args: lowered.args.clone(),
            weights: Vec::new(),
            kernels,
            device: device_name,
            chip: chip.to_string(),
        };
        for a in &lowered.args {
            if let ArgKind::Weight(w) = a.kind {
                let bytes = weight_bytes(graph, w, &a.name)?;
                let p = exe.upload(&bytes).map_err(|e| MlirError::Run(format!("weight '{}': {e}", a.name)))?;
                exe.weights.push(p);
            }
        }
        Ok(exe)
    }

    /// Copies bytes into a fresh device-visible allocation, which the runtime
    /// owns (and frees when dropped).
    fn upload(&mut self, bytes: &[u8]) -> Result<*mut u8, String> {
        let p = self.runtime.device.alloc(bytes.len().max(1))?;
        // SAFETY: `p` is a fresh allocation of at least `bytes.len()` bytes
        // that the host can write.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
        self.runtime.owned.push(p);
        Ok(p)
    }

    /// Kernel launches in the last run.
    pub fn launches(&self) -> usize {
        self.runtime.launches
    }

    /// Runs on one tensor per graph input (shapes and dtypes as compiled for)
    /// and returns one tensor per graph output.
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, MlirError> {
        check_inputs(&self.args, inputs)?;
        self.runtime.launches = 0;
        let runtime = &mut *self.runtime;
        // Inputs and outputs are allocated as part of the run, so their
        // buffers are recycled like the intermediates'.
        let mut ptrs = Vec::with_capacity(self.args.len());
        let mut w = 0;
        for a in &self.args {
            let p = match a.kind {
                ArgKind::Input(i) => {
                    let bytes = inputs[i]
                        .to_le_bytes()
                        .ok_or_else(|| MlirError::Run(format!("input '{}' has no byte form", a.name)))?;
                    let p = runtime.malloc(bytes.len());
                    // SAFETY: `p` holds at least `bytes.len()` host-writable bytes.
                    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
                    p
                }
                ArgKind::Weight(_) => {
                    w += 1;
                    self.weights[w - 1]
                }
                ArgKind::Output(_) => runtime.malloc(byte_size(a.dtype, &a.shape)?),
            };
            ptrs.push(p);
        }
        let mut descs: Vec<Vec<i64>> = self.args.iter().zip(&ptrs).map(|(a, &p)| descriptor(p, &a.shape)).collect();
        let mut desc_ptrs: Vec<*mut i64> = descs.iter_mut().map(|d| d.as_mut_ptr()).collect();
        let mut packed: Vec<*mut c_void> = desc_ptrs.iter_mut().map(|p| p as *mut *mut i64 as *mut c_void).collect();
        let invoked = {
            let _active = Active::new(runtime);
            // SAFETY: every argument points to a descriptor of a live buffer
            // of exactly the compiled shape and dtype, as `@main` expects.
            unsafe { self.engine.invoke_packed(ENTRY, &mut packed) }
        };
        let mut outs = Vec::new();
        for (a, &p) in self.args.iter().zip(&ptrs) {
            if let ArgKind::Output(_) = a.kind {
                let n = byte_size(a.dtype, &a.shape)?;
                // SAFETY: the output buffer holds `n` bytes, written by the run
                // (which has synchronised with the device).
                let bytes = unsafe { std::slice::from_raw_parts(p, n) };
                let shape: Vec<usize> = a.shape.iter().map(|&d| d as usize).collect();
                outs.push(
                    Tensor::from_le_bytes(a.dtype, &shape, bytes)
                        .map_err(|e| MlirError::Run(format!("output '{}': {e}", a.name))),
                );
            }
        }
        let finished = self.runtime.finish_run();
        if !invoked {
            return Err(MlirError::Run(format!("invoking @{ENTRY}: the engine could not call it")));
        }
        finished.map_err(|e| MlirError::Run(format!("on {}: {e}", self.device)))?;
        outs.into_iter().collect()
    }
}

#[cfg(feature = "cuda")]
pub use real::CudaDevice;

#[cfg(feature = "cuda")]
mod real {
    use super::{Device, GpuExecutable};
    use crate::MlirError;
    use crate::lower::Lowered;
    use cudarc::driver::result::{self, DriverError};
    use cudarc::driver::sys;
    use cudarc::driver::{CudaContext, sys::CUjit_option};
    use sharc_ir::Graph;
    use std::ffi::{CStr, c_void};
    use std::sync::Arc;

    /// What to tell a user whose machine has no CUDA driver.
    const NO_DRIVER: &str = "no CUDA driver: libcuda.so could not be loaded. `--target cuda` needs an NVIDIA GPU \
                             with its driver installed (no CUDA toolkit is needed); use the CPU path otherwise";

    fn describe(e: DriverError) -> String {
        match (e.error_name(), e.error_string()) {
            (Ok(n), Ok(s)) => format!("{} ({})", n.to_string_lossy(), s.to_string_lossy()),
            _ => format!("{e}"),
        }
    }

    /// An NVIDIA GPU through the CUDA driver API (loaded at run time).
    pub struct CudaDevice {
        ctx: Arc<CudaContext>,
        stream: sys::CUstream,
        name: String,
        chip: &'static str,
    }

    impl CudaDevice {
        /// Opens GPU number `ordinal`. Fails with a clear message when the
        /// driver library is missing, the driver cannot start, or the GPU is
        /// older than sm_80 (the oldest architecture the PTX targets).
        pub fn open(ordinal: usize) -> Result<CudaDevice, MlirError> {
            // SAFETY: only tries to dlopen the driver library.
            if !unsafe { sys::is_culib_present() } {
                return Err(MlirError::Run(NO_DRIVER.into()));
            }
            let err = |what: &str, e: DriverError| MlirError::Run(format!("CUDA: {what}: {}", describe(e)));
            let ctx = CudaContext::new(ordinal).map_err(|e| err(&format!("cannot open GPU {ordinal}"), e))?;
            let name = ctx.name().map_err(|e| err("reading the GPU's name", e))?;
            let (major, minor) = ctx.compute_capability().map_err(|e| err("reading the compute capability", e))?;
            let chip = match major {
                9.. => "sm_90",
                8 => "sm_80",
                _ => {
                    return Err(MlirError::Run(format!(
                        "GPU {ordinal} ({name}) has compute capability {major}.{minor}; the MLIR backend's PTX \
                         needs 8.0 or newer"
                    )));
                }
            };
            let stream = result::stream::create(result::stream::StreamKind::NonBlocking)
                .map_err(|e| err("creating a stream", e))?;
            Ok(CudaDevice { ctx, stream, name: format!("{name} (compute capability {major}.{minor})"), chip })
        }

        /// The architecture to generate PTX for: sm_90 on compute
        /// capability 9.0 and newer (PTX is forward compatible), else sm_80.
        pub fn chip(&self) -> &'static str {
            self.chip
        }
    }

    impl Drop for CudaDevice {
        fn drop(&mut self) {
            // SAFETY: the stream was created by `open`, destroyed once.
            let _ = unsafe { result::stream::destroy(self.stream) };
        }
    }

    impl Device for CudaDevice {
        fn name(&self) -> String {
            self.name.clone()
        }

        fn load_module(&mut self, ptx: &CStr) -> Result<*mut c_void, String> {
            self.ctx.bind_to_thread().map_err(describe)?;
            let mut log = vec![0u8; 16 * 1024];
            let mut options = [CUjit_option::CU_JIT_ERROR_LOG_BUFFER, CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES];
            let mut values = [log.as_mut_ptr() as *mut c_void, log.len() as *mut c_void];
            let mut module = std::ptr::null_mut();
            // SAFETY: NUL-terminated PTX; the log buffer outlives the call.
            let r = unsafe {
                sys::cuModuleLoadDataEx(
                    &mut module,
                    ptx.as_ptr() as *const c_void,
                    options.len() as u32,
                    options.as_mut_ptr(),
                    values.as_mut_ptr(),
                )
            };
            r.result().map_err(|e| {
                let log =
                    CStr::from_bytes_until_nul(&log).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
                format!("the driver rejected the PTX: {}: {}", describe(e), log.trim())
            })?;
            Ok(module as *mut c_void)
        }

        fn function(&mut self, module: *mut c_void, name: &CStr) -> Result<*mut c_void, String> {
            let mut f = std::ptr::null_mut();
            // SAFETY: a module of `load_module`, a NUL-terminated name.
            unsafe { sys::cuModuleGetFunction(&mut f, module as sys::CUmodule, name.as_ptr()) }
                .result()
                .map_err(describe)?;
            Ok(f as *mut c_void)
        }

        unsafe fn launch(
            &mut self,
            function: *mut c_void,
            grid: [u32; 3],
            block: [u32; 3],
            shared_bytes: u32,
            params: *mut *mut c_void,
            _count: usize,
        ) -> Result<(), String> {
            // SAFETY: a function of `function`; the caller vouches for the
            // parameters.
            unsafe {
                sys::cuLaunchKernel(
                    function as sys::CUfunction,
                    grid[0],
                    grid[1],
                    grid[2],
                    block[0],
                    block[1],
                    block[2],
                    shared_bytes,
                    self.stream,
                    params,
                    std::ptr::null_mut(),
                )
            }
            .result()
            .map_err(describe)
        }

        fn synchronize(&mut self) -> Result<(), String> {
            // SAFETY: the stream of `open`.
            unsafe { result::stream::synchronize(self.stream) }.map_err(describe)
        }

        fn alloc(&mut self, bytes: usize) -> Result<*mut u8, String> {
            self.ctx.bind_to_thread().map_err(describe)?;
            // SAFETY: plain allocation; managed memory is reachable from the
            // host and the device at the same address.
            let p = unsafe { result::malloc_managed(bytes.max(1), sys::CUmemAttach_flags::CU_MEM_ATTACH_GLOBAL) }
                .map_err(describe)?;
            Ok(p as *mut u8)
        }

        fn free(&mut self, ptr: *mut u8) {
            // SAFETY: an allocation of `alloc`, freed once.
            let _ = unsafe { result::free_sync(ptr as sys::CUdeviceptr) };
        }

        fn unload_module(&mut self, module: *mut c_void) {
            // SAFETY: a module of `load_module`, unloaded once.
            let _ = unsafe { result::module::unload(module as sys::CUmodule) };
        }
    }

    impl GpuExecutable {
        /// Compiles a lowered graph for the first CUDA GPU, generating PTX
        /// for its architecture. Errors clearly without a driver or GPU.
        pub fn cuda(graph: &Graph, lowered: &Lowered) -> Result<GpuExecutable, MlirError> {
            let device = CudaDevice::open(0)?;
            let chip = device.chip();
            GpuExecutable::with_device(graph, lowered, Box::new(device), chip)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharc_ir::{DType, Dim, Op, Type};
    use std::cell::RefCell;
    use std::rc::Rc;

    /// One launch the recording device saw.
    struct Launch {
        kernel: String,
        grid: [u32; 3],
        block: [u32; 3],
        /// The first 8 bytes of each argument.
        words: Vec<u64>,
    }

    /// What the recording device saw.
    #[derive(Default)]
    struct Seen {
        modules: Vec<String>,
        functions: Vec<String>,
        launches: Vec<Launch>,
        /// Every allocation, as (start, bytes).
        allocs: Vec<(usize, usize)>,
        syncs: usize,
        frees: usize,
    }

    /// A device that runs nothing: it records modules, launches and
    /// allocations (host memory), so the host code can be checked on a
    /// machine without a GPU.
    struct Recorder {
        seen: Rc<RefCell<Seen>>,
        memory: Vec<Vec<u64>>,
        fail_load: bool,
    }

    impl Device for Recorder {
        fn name(&self) -> String {
            "recorder".into()
        }
        fn load_module(&mut self, ptx: &CStr) -> Result<*mut c_void, String> {
            if self.fail_load {
                return Err("CUDA_ERROR_INVALID_PTX".into());
            }
            let mut s = self.seen.borrow_mut();
            s.modules.push(ptx.to_string_lossy().into_owned());
            Ok(s.modules.len() as *mut c_void)
        }
        fn function(&mut self, module: *mut c_void, name: &CStr) -> Result<*mut c_void, String> {
            let mut s = self.seen.borrow_mut();
            let ptx = &s.modules[module as usize - 1];
            let name = name.to_string_lossy().into_owned();
            if !ptx.contains(&format!(".entry {name}(")) {
                return Err(format!("no kernel {name} in the module"));
            }
            s.functions.push(format!("{}:{name}", module as usize - 1));
            Ok(s.functions.len() as *mut c_void)
        }
        unsafe fn launch(
            &mut self,
            function: *mut c_void,
            grid: [u32; 3],
            block: [u32; 3],
            _shared: u32,
            params: *mut *mut c_void,
            count: usize,
        ) -> Result<(), String> {
            let mut s = self.seen.borrow_mut();
            let name = s.functions[function as usize - 1].clone();
            // SAFETY: `count` pointers to argument values, which MLIR stores
            // in one stack struct; its fields are pointers, i64 and f32, so
            // it is 8-aligned and padded, and an 8-byte read from any field
            // stays inside it (only pointer arguments' words are used).
            let words = (0..count)
                .map(|i| unsafe {
                    let p = *params.add(i);
                    (p as *const u64).read_unaligned()
                })
                .collect();
            s.launches.push(Launch { kernel: name, grid, block, words });
            Ok(())
        }
        fn synchronize(&mut self) -> Result<(), String> {
            self.seen.borrow_mut().syncs += 1;
            Ok(())
        }
        fn alloc(&mut self, bytes: usize) -> Result<*mut u8, String> {
            let mut m = vec![0u64; bytes.div_ceil(8) + 8];
            let p = m.as_mut_ptr() as *mut u8;
            self.memory.push(m);
            self.seen.borrow_mut().allocs.push((p as usize, bytes));
            Ok(p)
        }
        fn free(&mut self, _ptr: *mut u8) {
            self.seen.borrow_mut().frees += 1;
        }
        fn unload_module(&mut self, _module: *mut c_void) {}
    }

    fn recorder() -> (Box<Recorder>, Rc<RefCell<Seen>>) {
        let seen = Rc::new(RefCell::new(Seen::default()));
        (Box::new(Recorder { seen: seen.clone(), memory: Vec::new(), fail_load: false }), seen)
    }

    /// `relu(x @ w + c)` with `c` a constant (a `memref.global` after
    /// bufferization, read by a kernel) and `w` a weight used twice.
    fn graph() -> Graph {
        let mut g = Graph::new("gpu");
        let x = g.add_input("x", Type::tensor(DType::F32, vec![Dim::sym("batch"), Dim::Fixed(8)]));
        let w = g.add_weight(sharc_ir::Weight::from_tensor(
            "w",
            Tensor::from_vec(&[8, 8], (0..64).map(|i| i as f32 / 64.0).collect::<Vec<_>>()),
        ));
        let c = g.add_constant("c", Tensor::from_vec(&[8], (0..8).map(|i| i as f32 - 4.0).collect::<Vec<_>>()));
        let h = g.add_op(Op::MatMul, &[x, w], Type::Unknown);
        let h = g.add_op(Op::Binary(sharc_ir::op::BinaryOp::Add), &[h, c], Type::Unknown);
        let h = g.add_op(Op::Unary(sharc_ir::op::UnaryOp::Relu), &[h], Type::Unknown);
        let y = g.add_op(Op::MatMul, &[h, w], Type::Unknown);
        g.add_output("y", y);
        g
    }

    fn lowered(g: &Graph, batch: u64) -> Lowered {
        crate::lower_graph(g, &BTreeMap::from([("batch".to_string(), batch)])).unwrap()
    }

    /// (kernel module index, grid, block) per `gpu.launch_func`, from the
    /// lines of `describe_kernels` (`main_kernel_3::main_kernel(...) grid
    /// 1x2x4 block 1x4x32`).
    fn recorded_dims(kernels: &[String]) -> Vec<([u32; 3], [u32; 3])> {
        let triple = |s: &str| -> [u32; 3] {
            let v: Vec<u32> = s.split('x').map(|d| d.parse().unwrap()).collect();
            [v[0], v[1], v[2]]
        };
        kernels
            .iter()
            .map(|k| {
                let grid = k.split(" grid ").nth(1).unwrap().split(' ').next().unwrap();
                let block = k.split(" block ").nth(1).unwrap().trim();
                (triple(grid), triple(block))
            })
            .collect()
    }

    /// The rank of a memref type (`memref<2x?xf32, ...>` has rank 2), or
    /// `None` for another type.
    fn memref_rank(t: &str) -> Option<usize> {
        let shape = t.strip_prefix("memref<")?.split([',', '>']).next()?;
        Some(shape.split('x').count() - 1)
    }

    #[test]
    fn host_code_loads_every_kernel_and_launches_them_as_recorded() {
        let g = graph();
        let l = lowered(&g, 4);
        let (dev, seen) = recorder();
        let mut exe = GpuExecutable::with_device(&g, &l, dev, "sm_90").unwrap();
        {
            // The global constructors loaded one module per kernel, each PTX
            // for the chip asked for.
            let s = seen.borrow();
            let modules: std::collections::BTreeSet<&str> =
                exe.kernels.iter().map(|k| k.split("::").next().unwrap()).collect();
            assert!(!modules.is_empty());
            assert_eq!(s.modules.len(), modules.len());
            assert!(s.modules.iter().all(|m| m.contains(".target sm_90") && m.contains(".entry ")));
            assert!(s.launches.is_empty(), "nothing runs before the first call");
        }
        let x = Tensor::from_vec(&[4, 8], vec![0.5f32; 32]);
        let out = exe.run(std::slice::from_ref(&x)).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].shape(), &[4, 8]);
        assert_eq!(out[0].dtype(), DType::F32);
        let s = seen.borrow();
        // Launched in program order with the grid and block sizes of the
        // mapped module's gpu.launch_func ops, each followed by a sync.
        let got: Vec<([u32; 3], [u32; 3])> = s.launches.iter().map(|l| (l.grid, l.block)).collect();
        assert_eq!(got, recorded_dims(&exe.kernels), "{:#?}", exe.kernels);
        assert_eq!(exe.launches(), exe.kernels.len());
        assert!(s.syncs >= s.launches.len());
        // Every memref argument points into memory the device can reach
        // (one of its allocations), never into the JIT's host data: the
        // constant `c` was copied to an allocation first.
        let inside = |p: u64| s.allocs.iter().any(|&(a, n)| p as usize >= a && (p as usize) < a + n.max(1));
        for (Launch { kernel: name, words, .. }, k) in s.launches.iter().zip(&exe.kernels) {
            let sig = k.split_once('(').unwrap().1.rsplit_once(") grid").unwrap().0;
            // A memref of rank r is passed as its descriptor: allocated and
            // aligned pointers, offset, r sizes, r strides.
            let mut words = words.iter();
            for t in crate::gpu_map::split_top_level(sig) {
                match memref_rank(t) {
                    Some(rank) => {
                        for _ in 0..2 {
                            let p = *words.next().unwrap_or_else(|| panic!("{name}: too few arguments: {k}"));
                            assert!(inside(p), "{name}: a {t} argument points outside device memory: {k}");
                        }
                        for _ in 0..1 + 2 * rank {
                            words.next().unwrap_or_else(|| panic!("{name}: too few arguments: {k}"));
                        }
                    }
                    None => {
                        words.next().unwrap_or_else(|| panic!("{name}: too few arguments: {k}"));
                    }
                }
            }
            assert!(words.next().is_none(), "{name}: more arguments than the signature has: {k}");
        }
    }

    #[test]
    fn runs_reuse_their_allocations_and_check_inputs() {
        let g = graph();
        let l = lowered(&g, 2);
        let (dev, seen) = recorder();
        let mut exe = GpuExecutable::with_device(&g, &l, dev, "sm_80").unwrap();
        let x = Tensor::from_vec(&[2, 8], vec![1.0f32; 16]);
        exe.run(std::slice::from_ref(&x)).unwrap();
        let after_first = seen.borrow().allocs.len();
        exe.run(std::slice::from_ref(&x)).unwrap();
        assert_eq!(seen.borrow().allocs.len(), after_first, "the second run allocated anew");
        assert_eq!(seen.borrow().launches.len(), 2 * exe.kernels.len());
        let bad = Tensor::from_vec(&[3, 8], vec![1.0f32; 24]);
        let err = exe.run(&[bad]).unwrap_err().to_string();
        assert!(err.contains("input 'x'") && err.contains("[2, 8]"), "{err}");
        let err = exe.run(&[]).unwrap_err().to_string();
        assert!(err.contains("takes 1 inputs"), "{err}");
        drop(exe);
        // Weights, intermediates, inputs and outputs are all given back.
        let s = seen.borrow();
        assert_eq!(s.frees, s.allocs.len());
    }

    /// A loop over a range that is empty at run time (an expert no token
    /// chose) is launched with a zero grid dimension: skipped, not an error.
    #[test]
    fn launches_over_nothing_are_skipped() {
        let (dev, seen) = recorder();
        let mut rt = Runtime::new(dev);
        {
            let _active = Active::new(&mut rt);
            let mut none: [*mut c_void; 0] = [];
            // SAFETY: a zero-sized launch reads no parameters.
            unsafe {
                rt_launch_kernel(
                    std::ptr::dangling_mut::<c_void>(),
                    0,
                    1,
                    1,
                    32,
                    1,
                    1,
                    0,
                    std::ptr::null_mut(),
                    none.as_mut_ptr(),
                    std::ptr::null_mut(),
                    0,
                )
            };
        }
        assert!(rt.error.is_none(), "{:?}", rt.error);
        assert!(seen.borrow().launches.is_empty());
    }

    #[test]
    fn a_module_the_driver_rejects_is_an_error_naming_the_device() {
        let g = graph();
        let l = lowered(&g, 2);
        let (mut dev, _) = recorder();
        dev.fail_load = true;
        let err = GpuExecutable::with_device(&g, &l, dev, "sm_90").err().expect("load fails").to_string();
        assert!(err.contains("recorder") && err.contains("CUDA_ERROR_INVALID_PTX"), "{err}");
    }

    #[test]
    fn unknown_chip_is_an_error() {
        let g = graph();
        let l = lowered(&g, 2);
        let (dev, _) = recorder();
        let err = GpuExecutable::with_device(&g, &l, dev, "sm_70").err().expect("sm_70 is unsupported").to_string();
        assert!(err.contains("sm_70"), "{err}");
    }

    /// gpt-tiny's host code and kernels, through the same steps as on a
    /// GPU up to the first run: its math (exp, tanh, erf, sqrt) must come
    /// out as PTX that needs nothing but the driver, and every kernel module
    /// must be loaded by the global constructors.
    #[test]
    fn a_real_model_compiles_and_loads_every_kernel() {
        let shared = std::env::var_os("SHARC_SHARED_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
        let model = shared.join("models/gpt-tiny.onnx");
        if !model.is_file() || crate::nvvm::find_libdevice().unwrap().is_none() {
            assert!(std::env::var_os("SHARC_REQUIRE_LIBDEVICE").is_none(), "no gpt-tiny or no libdevice here");
            eprintln!("skipped: needs {} and libdevice", model.display());
            return;
        }
        let g = sharc_onnx::import_file(&model).unwrap();
        let dims = BTreeMap::from([("batch".to_string(), 2), ("seq".to_string(), 16)]);
        let l = crate::lower_graph(&g, &dims).unwrap();
        let (dev, seen) = recorder();
        let exe = GpuExecutable::with_device(&g, &l, dev, "sm_90").unwrap_or_else(|e| panic!("{e}"));
        let s = seen.borrow();
        assert!(s.modules.iter().all(|m| !m.contains("__nv_")), "libdevice calls left in the PTX");
        let modules: std::collections::BTreeSet<&str> =
            exe.kernels.iter().map(|k| k.split("::").next().unwrap()).collect();
        assert!(modules.len() > 10, "{modules:?}");
        assert_eq!(s.modules.len(), modules.len(), "one module loaded per kernel");
    }

    #[test]
    fn globals_are_copied_to_allocations() {
        let text = "  func.func @main() {\n    %0 = memref.get_global @__constant_2xi64 : memref<2xi64>\n    \
                    %r = memref.reshape %a(%0) : (memref<8xf32>, memref<2xi64>) -> memref<2x4xf32>\n  }\n";
        let out = device_visible_globals(text);
        assert!(out.contains("    %sharc_host_global0 = memref.get_global @__constant_2xi64 : memref<2xi64>\n"));
        assert!(out.contains("    %0 = memref.alloc() {alignment = 64 : i64} : memref<2xi64>\n"));
        assert!(out.contains("    memref.copy %sharc_host_global0, %0 : memref<2xi64> to memref<2xi64>\n"));
        // Other lines pass through unchanged.
        assert!(out.contains("%r = memref.reshape %a(%0)"));
        assert_eq!(device_visible_globals("memref.global \"private\" @g : memref<2xi64>\n").lines().count(), 1);
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn without_a_driver_cuda_is_a_clear_error() {
        // SAFETY: only tries to dlopen the driver library.
        if unsafe { cudarc::driver::sys::is_culib_present() } {
            eprintln!("a CUDA driver is present: the missing-driver error cannot be checked here");
            return;
        }
        let g = graph();
        let err = GpuExecutable::cuda(&g, &lowered(&g, 2)).err().expect("no driver").to_string();
        assert!(err.contains("no CUDA driver") && err.contains("libcuda"), "{err}");
    }
}

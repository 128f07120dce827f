//! Ahead-of-time output: an object file with a C entry point, and its header.
//!
//! The object holds the fused kernels, matrix-product kernels (generated
//! with Cranelift, since an object cannot call into the Rust `gemm` crate),
//! a driver that runs the plan's steps in order, and every weight and
//! constant the plan reads, embedded in its read-only data section. It needs
//! nothing but `memcpy` from the C library. The entry point is
//!
//! ```c
//! int32_t <prefix>_run(const void *const *inputs, void *const *outputs, void *workspace);
//! ```
//!
//! with one pointer per graph input and output (dense row-major data of the
//! shapes in the header) and a caller-provided workspace of
//! `<PREFIX>_WORKSPACE_BYTES` bytes aligned to 64 (the memory plan's arena).
//! It returns 0. The object is specialised to the shapes it was compiled
//! for and is single-threaded; the caller may run several workspaces in
//! parallel.
//!
//! Only graphs whose every step compiles natively can be written this way:
//! ops that the JIT runs through the interpreter (gathers, shape
//! computations on run-time values, control flow) make [`compile_object`]
//! fail with a message listing them. Constant subgraphs are folded first,
//! so shape arithmetic on fixed shapes is fine.

use crate::codegen::{define_kernel, define_matmul};
use crate::plan::{self, Loc, OutSrc, Step, View};
use crate::specialize::specialize;
use crate::{CompileError, CompileOptions, GemmImpl};
use cranelift_codegen::Context;
use cranelift_codegen::ir::{AbiParam, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, UserFuncName, types};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{DataDescription, DataId, FuncId, Linkage, Module, default_libcall_names};
use cranelift_object::{ObjectBuilder, ObjectModule};
use sharc_ir::{DType, Graph, Tensor, WeightId};
use std::collections::HashMap;

/// An object file and the C header that declares its entry point.
pub struct ObjectOutput {
    /// The relocatable object (ELF, Mach-O or COFF for the host).
    pub object: Vec<u8>,
    /// The C header.
    pub header: String,
    /// Bytes of the workspace the caller must provide.
    pub workspace_bytes: usize,
    /// Bytes of weights and constants embedded in the object.
    pub embedded_bytes: usize,
}

/// Compiles `graph` for the dims in `opts` into an object file whose entry
/// point is `<prefix>_run`. `prefix` must be a C identifier.
pub fn compile_object(graph: &Graph, opts: &CompileOptions, prefix: &str) -> Result<ObjectOutput, CompileError> {
    if prefix.is_empty()
        || !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || prefix.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(CompileError::Aot(format!("'{prefix}' is not a C identifier")));
    }
    let mut o = opts.clone();
    o.gemm = GemmImpl::Cranelift;
    let sp = specialize(graph, &o.dims)?;
    let plan = plan::build(&sp, &o)?;
    let g = &sp.graph;
    // Every step must be native and read only inputs, weights, constants
    // and the arena.
    let mut problems = Vec::new();
    let input_slot: HashMap<usize, usize> = plan.input_slots.iter().enumerate().map(|(i, &s)| (s, i)).collect();
    for s in &plan.steps {
        match s {
            Step::Fallback { node, label, .. } => problems.push(format!("'{label}' ({})", g.node(*node).op.op_type())),
            Step::GatherRows { label, .. } => problems.push(format!("'{label}' (Gather)")),
            Step::Materialize { .. } => problems.push("a value needed by an interpreted op".to_string()),
            _ => {}
        }
    }
    for (i, &id) in g.inputs().iter().enumerate() {
        let dt = g.node(id).outputs[0].ty.dtype();
        if dt != Some(DType::F32) {
            problems.push(format!(
                "input '{}' is {}; object output takes f32 inputs",
                g.node(id).outputs[0].name,
                dt.map_or("?".to_string(), |d| d.to_string())
            ));
        }
        let _ = i;
    }
    if !problems.is_empty() {
        problems.truncate(12);
        return Err(CompileError::Aot(format!(
            "these nodes do not compile natively (the JIT runs them through the interpreter): {}",
            problems.join(", ")
        )));
    }

    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k: &str, v: &str| {
        f.set(k, v).map_err(|e| CompileError::Codegen { what: "target flags".into(), message: e.to_string() })
    };
    set(&mut flags, "opt_level", "speed")?;
    set(&mut flags, "is_pic", "true")?;
    let isa = cranelift_native::builder()
        .map_err(|e| CompileError::Codegen { what: "the host target".into(), message: e.to_string() })?
        .finish(settings::Flags::new(flags))
        .map_err(|e| CompileError::Codegen { what: "the host target".into(), message: e.to_string() })?;
    let builder = ObjectBuilder::new(isa, prefix.to_string(), default_libcall_names())
        .map_err(|e| CompileError::Codegen { what: "the object file".into(), message: e.to_string() })?;
    let mut module = ObjectModule::new(builder);
    let cg = |m: String| CompileError::Codegen { what: "the object file".into(), message: m };

    // Embedded data: each weight and constant the plan reads, once.
    let mut data: HashMap<Loc, DataId> = HashMap::new();
    let mut embedded = 0usize;
    let mut embed = |module: &mut ObjectModule, loc: Loc, bytes: Vec<u8>| -> Result<(), CompileError> {
        if data.contains_key(&loc) {
            return Ok(());
        }
        let name = match loc {
            Loc::Weight(WeightId(w)) => format!("{prefix}_weight{w}"),
            Loc::Const(c) => format!("{prefix}_const{c}"),
            _ => unreachable!("only weights and constants are embedded"),
        };
        let id = module.declare_data(&name, Linkage::Local, false, false).map_err(|e| cg(e.to_string()))?;
        let mut d = DataDescription::new();
        embedded += bytes.len();
        d.define(bytes.into_boxed_slice());
        d.set_align(64);
        module.define_data(id, &d).map_err(|e| cg(e.to_string()))?;
        data.insert(loc, id);
        Ok(())
    };
    let mut views: Vec<&View> = Vec::new();
    for s in &plan.steps {
        match s {
            Step::Kernel { args, .. } => views.extend(args.iter()),
            Step::MatMul { a, b, out, epilogue, .. } => {
                views.extend([a, b, out]);
                if let Some(e) = epilogue {
                    views.extend(e.args.iter());
                }
            }
            _ => {}
        }
    }
    for o in &plan.outputs {
        if let OutSrc::View(v) = o {
            views.push(v);
        }
    }
    for v in &views {
        match v.loc {
            Loc::Weight(w) => {
                let t =
                    g.weights.get(w).map(|w| w.tensor().clone()).ok_or_else(|| cg(format!("weight {w} missing")))?;
                embed(&mut module, v.loc, bytes_of(&t)?)?;
            }
            Loc::Const(c) => embed(&mut module, v.loc, bytes_of(&plan.consts[c])?)?,
            _ => {}
        }
    }
    for (i, o) in plan.outputs.iter().enumerate() {
        match o {
            OutSrc::View(v) if v.is_dense() => {}
            OutSrc::View(_) => return Err(CompileError::Aot(format!("output {i} is a strided view"))),
            OutSrc::Const(c) => embed(&mut module, Loc::Const(*c), bytes_of(&plan.consts[*c])?)?,
            OutSrc::Weight(w) => {
                let t =
                    g.weights.get(*w).map(|w| w.tensor().clone()).ok_or_else(|| cg(format!("weight {w} missing")))?;
                embed(&mut module, Loc::Weight(*w), bytes_of(&t)?)?;
            }
            OutSrc::Dyn(_) | OutSrc::Missing(_) => {
                return Err(CompileError::Aot(format!("output {i} is not computed natively")));
            }
        }
    }

    // Kernels, each distinct one defined once.
    let mut kernel_ids: HashMap<String, FuncId> = HashMap::new();
    let mut fused_fn: HashMap<usize, FuncId> = HashMap::new();
    for (ki, spec) in plan.kernels.iter().enumerate() {
        let key = format!("k{spec:?}");
        let id = match kernel_ids.get(&key) {
            Some(id) => *id,
            None => {
                let id = define_kernel(&mut module, &format!("{prefix}_kernel{ki}"), Linkage::Local, spec)?;
                kernel_ids.insert(key, id);
                id
            }
        };
        fused_fn.insert(ki, id);
    }
    let mut step_fn: Vec<Option<FuncId>> = Vec::new();
    for (i, s) in plan.steps.iter().enumerate() {
        step_fn.push(match s {
            Step::Kernel { kernel, .. } => Some(fused_fn[kernel]),
            Step::MatMul { spec, .. } => {
                let key = format!("m{spec:?}");
                Some(match kernel_ids.get(&key) {
                    Some(id) => *id,
                    None => {
                        let id = define_matmul(&mut module, &format!("{prefix}_matmul{i}"), Linkage::Local, spec)?;
                        kernel_ids.insert(key, id);
                        id
                    }
                })
            }
            _ => None,
        });
    }

    // The driver.
    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    for _ in 0..3 {
        sig.params.push(AbiParam::new(ptr));
    }
    sig.returns.push(AbiParam::new(types::I32));
    let entry_name = format!("{prefix}_run");
    let run_id = module.declare_function(&entry_name, Linkage::Export, &sig).map_err(|e| cg(e.to_string()))?;
    let mut ctx = Context::new();
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, run_id.as_u32());
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let block = b.create_block();
        b.append_block_params_for_function_params(block);
        b.switch_to_block(block);
        let p = b.block_params(block).to_vec();
        let (ins, outs, ws) = (p[0], p[1], p[2]);
        let max_args = plan
            .steps
            .iter()
            .map(|s| match s {
                Step::Kernel { args, .. } => args.len(),
                Step::MatMul { epilogue: Some(e), .. } => e.args.len().max(3),
                _ => 3,
            })
            .max()
            .unwrap_or(3);
        let slot = b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, (max_args * 8) as u32, 3));
        let fl = MemFlagsData::new().with_notrap();
        let mut gv_cache = HashMap::new();
        let mut addr = |b: &mut FunctionBuilder, module: &mut ObjectModule, v: &View| -> Result<_, CompileError> {
            let base = match v.loc {
                Loc::Arena(off) => b.ins().iadd_imm_s(ws, off as i64),
                Loc::Dyn(d) => {
                    let i = input_slot.get(&d).ok_or_else(|| cg("a run-time value in object output".into()))?;
                    b.ins().load(ptr, fl, ins, (*i * 8) as i32)
                }
                loc => {
                    let id = data[&loc];
                    let gv = *gv_cache.entry(id).or_insert_with(|| module.declare_data_in_func(id, b.func));
                    b.ins().symbol_value(ptr, gv)
                }
            };
            let es = if v.dtype == DType::Bool { 1 } else { 4 };
            Ok(b.ins().iadd_imm_s(base, v.offset as i64 * es))
        };
        for (i, s) in plan.steps.iter().enumerate() {
            let mut calls: Vec<(FuncId, Vec<&View>, usize)> = Vec::new();
            match s {
                Step::Kernel { args, rows, .. } => {
                    calls.push((step_fn[i].expect("native"), args.iter().collect(), *rows))
                }
                Step::MatMul { spec, a, b: bv, out, epilogue, .. } => {
                    let rows = spec.batch_count() * spec.m;
                    calls.push((step_fn[i].expect("native"), vec![a, bv, out], rows));
                    if let Some(e) = epilogue {
                        calls.push((fused_fn[&e.kernel], e.args.iter().collect(), rows));
                    }
                }
                _ => continue,
            }
            for (fid, views, rows) in calls {
                for (k, v) in views.iter().enumerate() {
                    let a = addr(&mut b, &mut module, v)?;
                    b.ins().stack_store(ptr, a, slot, (k * 8) as i32);
                }
                let f = module.declare_func_in_func(fid, b.func);
                let table = b.ins().stack_addr(ptr, slot, 0);
                let zero = b.ins().iconst(types::I64, 0);
                let n = b.ins().iconst(types::I64, rows as i64);
                b.ins().call(f, &[table, zero, n]);
            }
        }
        for (i, o) in plan.outputs.iter().enumerate() {
            let (src, bytes) = match o {
                OutSrc::View(v) => (addr(&mut b, &mut module, v)?, v.numel() * elem_bytes(v.dtype)),
                OutSrc::Const(c) => {
                    let t = &plan.consts[*c];
                    let v = View {
                        loc: Loc::Const(*c),
                        dtype: t.dtype(),
                        offset: 0,
                        shape: t.shape().to_vec(),
                        strides: plan::dense_strides(t.shape()),
                    };
                    (addr(&mut b, &mut module, &v)?, t.len() * elem_bytes(t.dtype()))
                }
                OutSrc::Weight(w) => {
                    let wt = g.weights.get(*w).ok_or_else(|| cg(format!("weight {w} missing")))?;
                    let v = View {
                        loc: Loc::Weight(*w),
                        dtype: wt.dtype,
                        offset: 0,
                        shape: wt.shape.clone(),
                        strides: plan::dense_strides(&wt.shape),
                    };
                    (addr(&mut b, &mut module, &v)?, wt.num_elements() as usize * elem_bytes(wt.dtype))
                }
                _ => unreachable!("checked above"),
            };
            let dst = b.ins().load(ptr, fl, outs, (i * 8) as i32);
            let size = b.ins().iconst(ptr, bytes as i64);
            let cfg = module.target_config();
            b.call_memcpy(cfg, dst, src, size);
        }
        let ok = b.ins().iconst(types::I32, 0);
        b.ins().return_(&[ok]);
        b.seal_all_blocks();
        b.finalize(module.target_config());
    }
    module.define_function(run_id, &mut ctx).map_err(|e| cg(format!("{e:?}")))?;
    let product = module.finish();
    let object = product.emit().map_err(|e| cg(e.to_string()))?;
    let header = header(g, prefix, &sp.input_shapes, plan.arena_bytes);
    Ok(ObjectOutput { object, header, workspace_bytes: plan.arena_bytes, embedded_bytes: embedded })
}

fn elem_bytes(d: DType) -> usize {
    d.storage_bytes(1).unwrap_or(4)
}

fn bytes_of(t: &Tensor) -> Result<Vec<u8>, CompileError> {
    t.to_le_bytes().ok_or_else(|| CompileError::Aot(format!("a {} tensor cannot be embedded", t.dtype())))
}

fn c_type(d: DType) -> &'static str {
    match d {
        DType::F32 => "float",
        DType::Bool => "uint8_t",
        DType::I64 => "int64_t",
        _ => "void",
    }
}

/// The C header: entry point, workspace size, and each input's and
/// output's shape.
fn header(g: &Graph, prefix: &str, input_shapes: &[Vec<usize>], workspace: usize) -> String {
    let up = prefix.to_uppercase();
    let mut h = String::new();
    h.push_str(&format!(
        "/* Generated by sharc (cranelift backend) from graph '{}'. Do not edit. */\n\
         #ifndef {up}_H\n#define {up}_H\n\n#include <stdint.h>\n\n#ifdef __cplusplus\nextern \"C\" {{\n#endif\n\n",
        g.name.replace("*/", "")
    ));
    h.push_str(&format!(
        "/* Bytes of scratch memory {prefix}_run needs, 64-byte aligned (e.g. aligned_alloc(64, ...)). */\n\
         #define {up}_WORKSPACE_BYTES {workspace}u\n\n"
    ));
    h.push_str(&format!("#define {up}_NUM_INPUTS {}\n", input_shapes.len()));
    for (i, (&id, shape)) in g.inputs().iter().zip(input_shapes).enumerate() {
        let vi = &g.node(id).outputs[0];
        let n: usize = shape.iter().product();
        h.push_str(&format!(
            "/* input {i}: \"{}\" {} {:?} */\n#define {up}_INPUT{i}_ELEMENTS {n}u\n",
            vi.name.replace("*/", ""),
            c_type(vi.ty.dtype().unwrap_or(DType::F32)),
            shape
        ));
    }
    h.push_str(&format!("\n#define {up}_NUM_OUTPUTS {}\n", g.outputs().len()));
    for (i, o) in g.outputs().iter().enumerate() {
        let ty = g.value_type(o.value);
        let shape = ty.shape().and_then(|s| s.as_fixed()).unwrap_or_default();
        let n: usize = shape.iter().product();
        h.push_str(&format!(
            "/* output {i}: \"{}\" {} {:?} */\n#define {up}_OUTPUT{i}_ELEMENTS {n}u\n",
            o.name.replace("*/", ""),
            c_type(ty.dtype().unwrap_or(DType::F32)),
            shape
        ));
    }
    h.push_str(&format!(
        "\n/* Runs the model: inputs[i] and outputs[i] point to dense row-major data of the\n   \
         shapes above; workspace holds {up}_WORKSPACE_BYTES bytes. Returns 0. */\n\
         int32_t {prefix}_run(const void *const *inputs, void *const *outputs, void *workspace);\n\n\
         #ifdef __cplusplus\n}}\n#endif\n\n#endif\n"
    ));
    h
}

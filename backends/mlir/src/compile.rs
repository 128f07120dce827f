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
/// can be printed. Between the first two stages, [`tile_contractions`]
/// tiles and vectorizes every matrix product together with its epilogue
/// (stage "tiled"; it is generated per module, so it is no entry here).
///
/// Affine loop fusion (`affine-loop-fusion` after
/// `convert-linalg-to-affine-loops`) merges a transformer block's 25 linalg
/// ops into 10 loop nests, but on LLVM 22 it miscompiles reductions whose
/// accumulator is initialised by a separate fill (the block's result was off
/// by 0.34), so fusion across kernels is done by tiling instead: a
/// contraction is computed tile by tile inside the loop nest of its
/// elementwise consumer.
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
        pipeline: "builtin.module(scf-forall-to-for,func.func(convert-linalg-to-loops,canonicalize),\
                   convert-vector-to-scf,convert-math-to-libm,arith-expand,convert-scf-to-cf,expand-strided-metadata,\
                   lower-affine)",
    },
    Stage {
        name: "llvm",
        pipeline: "builtin.module(convert-vector-to-llvm,convert-math-to-llvm,finalize-memref-to-llvm,\
                   convert-func-to-llvm,convert-arith-to-llvm,convert-cf-to-llvm,convert-index-to-llvm,\
                   convert-ub-to-llvm,reconcile-unrealized-casts)",
    },
];

/// Rows and columns of the output tile one iteration of a tiled
/// contraction's outer loop computes (at most; the sizes are divisors of
/// the dims so that every tile is full and static). A 32 x 64 f32 tile of
/// the result plus its 32-row panel of A and 64-column panel of B stay in
/// L2 for the K of a transformer (384 to 1536).
const TILE_M: i64 = 32;
const TILE_N: i64 = 64;
/// The register tile: 4 rows x 16 columns of accumulators (8 AVX2
/// registers, enough independent FMAs to hide their latency), advanced 8
/// steps of K per iteration of the innermost loop.
const REG_M: i64 = 4;
const REG_N: i64 = 16;
const REG_K: i64 = 8;

/// How one contraction is tiled, per loop of the op (in its loop order):
/// `outer` is the cache tile (0: the loop is not tiled, which is the case
/// for reductions), `inner` the register tile applied to one outer tile,
/// and `interchange` the order of the register-tile loops (parallel loops
/// outside, the reduction innermost, so the accumulators stay in
/// registers across it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContractionTiling {
    /// Cache tile sizes.
    pub outer: Vec<i64>,
    /// Register tile sizes (within one cache tile).
    pub inner: Vec<i64>,
    /// Loop order of the register tiling.
    pub interchange: Vec<usize>,
}

/// The largest divisor of `n` that is at most `max` (at least 1).
fn divisor_at_most(n: i64, max: i64) -> i64 {
    (1..=max.min(n).max(1)).rev().find(|d| n % d == 0).unwrap_or(1)
}

/// Plans the tiling of a contraction whose operands `a`, `b` and result
/// `c` read the given loops (one loop index per tensor dim) over loops of
/// extents `sizes`. The result's innermost dim must come from `b` alone
/// (the `n` of a matrix product, contiguous in the result, vectorized);
/// `m` is the innermost result dim that comes from `a` alone; loops shared
/// by `a`, `b` and `c` are batch loops, taken one at a time; loops not in
/// `c` are reductions, of which the one innermost in `a` is stepped by
/// [`REG_K`]. `None` when the op is not of that form (a matrix-vector
/// product, an outer product): those stay plain loops.
pub fn plan_contraction(a: &[usize], b: &[usize], c: &[usize], sizes: &[i64]) -> Option<ContractionTiling> {
    let loops = sizes.len();
    let (in_a, in_b, in_c) = (|d: usize| a.contains(&d), |d: usize| b.contains(&d), |d: usize| c.contains(&d));
    let n = *c.last()?;
    if !in_b(n) || in_a(n) {
        return None;
    }
    let m = c.iter().rev().copied().find(|&d| in_a(d) && !in_b(d));
    let k = a.iter().rev().copied().find(|&d| !in_c(d))?;
    if !in_b(k) {
        return None;
    }
    let mut outer = vec![1i64; loops];
    let mut inner = vec![0i64; loops];
    for d in 0..loops {
        if !in_c(d) {
            // Reductions run whole inside a cache tile, one step at a time
            // in the register tile except for the vectorized one.
            outer[d] = 0;
            inner[d] = if d == k { divisor_at_most(sizes[d], REG_K) } else { 1 };
        }
    }
    let tn = divisor_at_most(sizes[n], TILE_N);
    outer[n] = tn;
    inner[n] = divisor_at_most(tn, REG_N);
    if let Some(m) = m {
        let tm = divisor_at_most(sizes[m], TILE_M);
        outer[m] = tm;
        inner[m] = divisor_at_most(tm, REG_M);
    }
    let mut interchange: Vec<usize> = (0..loops).filter(|&d| in_c(d)).collect();
    interchange.extend((0..loops).filter(|&d| !in_c(d) && d != k));
    interchange.push(k);
    Some(ContractionTiling { outer, inner, interchange })
}

/// One contraction found in the fused module, with the elementwise op that
/// consumes it (if it can be fused).
struct Contraction {
    tiling: ContractionTiling,
    /// Tile sizes for the consumer's loops (its dims are the result's).
    epilogue: Option<Vec<i64>>,
}

fn list(v: &[i64]) -> String {
    v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
}

/// The transform-dialect script that tiles contraction `i` (tagged
/// `sharc.tile = i`) and its epilogue (tagged `sharc.epilogue = i`): the
/// consumer is tiled into an `scf.forall` over output tiles, the
/// contraction and the fill of its accumulator are fused into that loop,
/// the contraction's tile is tiled again into register tiles, and the
/// register tile is vectorized. The fill and the epilogue stay scalar loop
/// nests over the tile, which LLVM vectorizes where it can: vectorizing the
/// epilogue here would turn each math function (erf, tanh) into a libm call
/// per element of a 2-D vector, unrolled, which makes the JIT take seconds
/// for no gain, and a vectorized fill made the later pattern sets run out
/// of memory on LLVM 22 (with non-leading unit dims in its vector).
/// Each contraction's part runs with failures suppressed: an op that cannot
/// be tiled or vectorized stays correct scalar code.
fn transform_script(found: &[Contraction]) -> String {
    const ANY: &str = "!transform.any_op";
    let one = format!("({ANY}) -> {ANY}");
    let two = format!("({ANY}, {ANY}) -> ({ANY}, {ANY})");
    let mut l: Vec<String> =
        vec![format!("transform.named_sequence @__transform_main(%root: {ANY} {{transform.readonly}}) {{")];
    for (i, c) in found.iter().enumerate() {
        let t = &c.tiling;
        l.push(format!("  transform.sequence %root : {ANY} failures(suppress) {{"));
        l.push(format!("  ^bb0(%r: {ANY}):"));
        l.push(format!("    %mm = transform.structured.match attributes {{sharc.tile = {i} : i64}} in %r : {one}"));
        l.push(format!("    %fill = transform.get_producer_of_operand %mm[2] : {one}"));
        match &c.epilogue {
            Some(sizes) => {
                l.push(format!(
                    "    %ep = transform.structured.match attributes {{sharc.epilogue = {i} : i64}} in %r : {one}"
                ));
                l.push(format!(
                    "    %tep, %l0 = transform.structured.tile_using_forall %ep tile_sizes [{}] : ({ANY}) -> ({ANY}, {ANY})",
                    list(sizes)
                ));
                l.push(format!("    %tmm, %l1 = transform.structured.fuse_into_containing_op %mm into %l0 : {two}"));
            }
            None => l.push(format!(
                "    %tmm, %l1 = transform.structured.tile_using_forall %mm tile_sizes [{}] : ({ANY}) -> ({ANY}, {ANY})",
                list(&t.outer)
            )),
        }
        l.push(format!("    %tfill, %l2 = transform.structured.fuse_into_containing_op %fill into %l1 : {two}"));
        let nloops = t.inner.iter().filter(|&&x| x != 0).count();
        let order: Vec<String> = t.interchange.iter().map(|x| x.to_string()).collect();
        l.push(format!(
            "    %reg, %loops:{nloops} = transform.structured.tile_using_for %tmm tile_sizes [{}] interchange = [{}] : ({ANY}) -> ({})",
            list(&t.inner),
            order.join(", "),
            vec![ANY; nloops + 1].join(", ")
        ));
        // Batch loops (and a reduction split in two by a reshape) leave
        // unit dims in the register tile; dropping them first gives the
        // plain (m, k, n) vector contraction that lowers to FMAs. That
        // works on generics only, hence the generalisation.
        let innermost = format!("%loops#{}", nloops - 1);
        l.push(format!("    %gen = transform.structured.generalize %reg : {one}"));
        l.push(format!("    transform.apply_patterns to {innermost} {{"));
        l.push("      transform.apply_patterns.linalg.fold_unit_extent_dims_via_slices".into());
        l.push(format!("    }} : {ANY}"));
        l.push(format!("    %kernel = transform.structured.match interface{{LinalgOp}} in {innermost} : {one}"));
        l.push(format!("    transform.structured.vectorize %kernel : {ANY}"));
        l.push("  }".into());
    }
    // Vectorization leaves broadcast + multiply + multi_reduction: turn that
    // back into a vector.contract, keep the accumulator tile in registers
    // across the reduction loop (hoisting its read and write), and lower
    // the contraction to FMAs of rows of B by broadcast elements of A.
    l.push(format!("  %func = transform.structured.match ops{{[\"func.func\"]}} in %root : {one}"));
    apply_patterns(
        &mut l,
        &[
            "vector.reduction_to_contract",
            "vector.transfer_permutation_patterns",
            "tensor.fold_tensor_subset_ops_into_vector_transfers",
            "canonicalization",
        ],
    );
    l.push(format!("  transform.apply_cse to %func : {ANY}"));
    l.push(format!("  %tiles = transform.structured.match ops{{[\"scf.forall\"]}} in %root : {one}"));
    l.push(format!("  transform.foreach %tiles : {ANY} {{"));
    l.push(format!("  ^bb0(%t: {ANY}):"));
    l.push(format!("    %fors = transform.structured.match ops{{[\"scf.for\"]}} in %t : {one}"));
    l.push(format!("    transform.foreach %fors : {ANY} {{"));
    l.push(format!("    ^bb0(%f: {ANY}):"));
    l.push(format!("      transform.loop.hoist_loop_invariant_subsets %f : {ANY}"));
    l.push("    }".into());
    l.push("  }".into());
    apply_patterns(
        &mut l,
        &[
            "vector.lower_contraction lowering_strategy = \"outerproduct\"",
            "vector.transfer_permutation_patterns",
            "vector.lower_transfer max_transfer_rank = 1",
            "vector.lower_transpose lowering_strategy = \"shuffle_1d\"",
            "vector.lower_outerproduct",
            "vector.lower_broadcast",
            "vector.lower_shape_cast",
            "canonicalization",
        ],
    );
    l.push("  transform.yield".into());
    l.push("}".into());
    l.join("\n")
}

/// One `transform.apply_patterns` on the function (`%func`) with the given
/// pattern sets, in order.
fn apply_patterns(l: &mut Vec<String>, patterns: &[&str]) {
    l.push("  transform.apply_patterns to %func {".into());
    for p in patterns {
        l.push(format!("    transform.apply_patterns.{p}"));
    }
    l.push("  } : !transform.any_op".into());
}

/// The name of an operation.
///
/// # Safety
/// `op` must be a live operation.
unsafe fn op_name(op: mlir_sys::MlirOperation) -> String {
    // SAFETY: the caller guarantees `op` is live; the identifier's string
    // is owned by the context.
    unsafe {
        let name = mlir_sys::mlirIdentifierStr(mlir_sys::mlirOperationGetName(op));
        String::from_utf8_lossy(std::slice::from_raw_parts(name.data as *const u8, name.length)).into_owned()
    }
}

/// The loop dims each indexing map of a linalg op reads (one per tensor
/// dim), and the number of loops; `None` if an expression is not a plain
/// loop dim.
///
/// # Safety
/// `op` must be a live operation.
unsafe fn indexing_dims(op: mlir_sys::MlirOperation) -> Option<(Vec<Vec<usize>>, usize)> {
    use mlir_sys::*;
    // SAFETY: reads through the C API on a live op; every handle comes from
    // the API and is checked before use.
    unsafe {
        let maps = mlirOperationGetAttributeByName(op, mlirStringRefCreateFromCString(c"indexing_maps".as_ptr()));
        if maps.ptr.is_null() || !mlirAttributeIsAArray(maps) {
            return None;
        }
        let mut out = Vec::new();
        let mut loops = 0;
        for i in 0..mlirArrayAttrGetNumElements(maps) {
            let m = mlirArrayAttrGetElement(maps, i);
            if !mlirAttributeIsAAffineMap(m) {
                return None;
            }
            let map = mlirAffineMapAttrGetValue(m);
            loops = mlirAffineMapGetNumDims(map) as usize;
            let mut dims = Vec::new();
            for r in 0..mlirAffineMapGetNumResults(map) {
                let e = mlirAffineMapGetResult(map, r);
                if !mlirAffineExprIsADim(e) {
                    return None;
                }
                dims.push(mlirAffineDimExprGetPosition(e) as usize);
            }
            out.push(dims);
        }
        Some((out, loops))
    }
}

/// The static shape of a ranked tensor value of f32 elements, or `None`.
///
/// # Safety
/// `v` must be a live value.
unsafe fn f32_tensor_shape(v: mlir_sys::MlirValue) -> Option<Vec<i64>> {
    use mlir_sys::*;
    // SAFETY: type queries on a live value.
    unsafe {
        let t = mlirValueGetType(v);
        if !mlirTypeIsARankedTensor(t)
            || !mlirShapedTypeHasStaticShape(t)
            || !mlirTypeIsAF32(mlirShapedTypeGetElementType(t))
        {
            return None;
        }
        Some((0..mlirShapedTypeGetRank(t)).map(|i| mlirShapedTypeGetDimSize(t, i as isize)).collect())
    }
}

/// The only user of `v` and the operand index it uses `v` as, if `v` has
/// exactly one use.
///
/// # Safety
/// `v` must be a live value.
unsafe fn single_use(v: mlir_sys::MlirValue) -> Option<(mlir_sys::MlirOperation, usize)> {
    use mlir_sys::*;
    // SAFETY: use-list walk on a live value.
    unsafe {
        let u = mlirValueGetFirstUse(v);
        if mlirOpOperandIsNull(u) || !mlirOpOperandIsNull(mlirOpOperandGetNextUse(u)) {
            return None;
        }
        Some((mlirOpOperandGetOwner(u), mlirOpOperandGetOperandNumber(u) as usize))
    }
}

/// Tile sizes for the loops of `consumer` if it is an elementwise
/// `linalg.generic` that can take `producer`'s tiles: all loops parallel,
/// one result of the same shape, and both the operand it reads the
/// contraction through and its result indexed by the identity (so its
/// loops are the contraction's result dims, in order).
///
/// # Safety
/// Both ops must be live.
unsafe fn epilogue_tiles(
    consumer: mlir_sys::MlirOperation,
    operand: usize,
    out_loops: &[usize],
    outer: &[i64],
) -> Option<Vec<i64>> {
    use mlir_sys::*;
    // SAFETY: queries on live ops.
    unsafe {
        if op_name(consumer) != "linalg.generic" || mlirOperationGetNumResults(consumer) != 1 {
            return None;
        }
        let iters =
            mlirOperationGetAttributeByName(consumer, mlirStringRefCreateFromCString(c"iterator_types".as_ptr()));
        if iters.ptr.is_null() || attribute_text(iters).contains("reduction") {
            return None;
        }
        let (maps, loops) = indexing_dims(consumer)?;
        let identity: Vec<usize> = (0..loops).collect();
        let n_operands = mlirOperationGetNumOperands(consumer) as usize;
        // The operand must be an input (not the init), and the result
        // (the last map) written in place.
        if loops != out_loops.len() || operand + 1 >= n_operands || maps.len() != n_operands {
            return None;
        }
        if maps[operand] != identity || maps[n_operands - 1] != identity {
            return None;
        }
        Some(out_loops.iter().map(|&d| outer[d]).collect())
    }
}

/// An attribute printed as MLIR text.
///
/// # Safety
/// `a` must be a live attribute.
unsafe fn attribute_text(a: mlir_sys::MlirAttribute) -> String {
    unsafe extern "C" fn push(s: mlir_sys::MlirStringRef, data: *mut std::ffi::c_void) {
        // SAFETY: `data` is the `Vec<u8>` passed below; `s` is valid for
        // the duration of the callback.
        unsafe {
            let out = &mut *(data as *mut Vec<u8>);
            out.extend_from_slice(std::slice::from_raw_parts(s.data as *const u8, s.length));
        }
    }
    let mut out: Vec<u8> = Vec::new();
    // SAFETY: prints a live attribute into `out` through the callback.
    unsafe { mlir_sys::mlirAttributePrint(a, Some(push), &mut out as *mut Vec<u8> as *mut std::ffi::c_void) };
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `op` is a `linalg.contract`, or a `linalg.generic` with two
/// inputs and one init whose body is exactly `init + in0 * in1` (what
/// reshape propagation makes of a `linalg.contract` it folds a reshape
/// into).
///
/// # Safety
/// `op` must be a live operation.
unsafe fn is_contraction(op: mlir_sys::MlirOperation) -> bool {
    use mlir_sys::*;
    // SAFETY: reads of a live op and its body.
    unsafe {
        if mlirOperationGetNumOperands(op) != 3 || mlirOperationGetNumResults(op) != 1 {
            return false;
        }
        match op_name(op).as_str() {
            "linalg.contract" => return true,
            "linalg.generic" => {}
            _ => return false,
        }
        let block = mlirRegionGetFirstBlock(mlirOperationGetRegion(op, 0));
        if block.ptr.is_null() || mlirBlockGetNumArguments(block) != 3 {
            return false;
        }
        let arg =
            |v: MlirValue| -> Option<isize> { mlirValueIsABlockArgument(v).then(|| mlirBlockArgumentGetArgNumber(v)) };
        let mul = mlirBlockGetFirstOperation(block);
        if mul.ptr.is_null() || op_name(mul) != "arith.mulf" {
            return false;
        }
        let add = mlirOperationGetNextInBlock(mul);
        if add.ptr.is_null() || op_name(add) != "arith.addf" {
            return false;
        }
        let yield_ = mlirOperationGetNextInBlock(add);
        if yield_.ptr.is_null()
            || op_name(yield_) != "linalg.yield"
            || !mlirOperationGetNextInBlock(yield_).ptr.is_null()
        {
            return false;
        }
        let mut ins = [arg(mlirOperationGetOperand(mul, 0)), arg(mlirOperationGetOperand(mul, 1))];
        ins.sort();
        let product = mlirOperationGetResult(mul, 0);
        let (a0, a1) = (mlirOperationGetOperand(add, 0), mlirOperationGetOperand(add, 1));
        let sum_ok =
            (arg(a0) == Some(2) && mlirValueEqual(a1, product)) || (arg(a1) == Some(2) && mlirValueEqual(a0, product));
        ins == [Some(0), Some(1)]
            && sum_ok
            && mlirOperationGetNumOperands(yield_) == 1
            && mlirValueEqual(mlirOperationGetOperand(yield_, 0), mlirOperationGetResult(add, 0))
    }
}

/// Finds the contractions ([`is_contraction`]) of the module's functions
/// (at the top level of their bodies, where the lowering puts them) that
/// [`plan_contraction`] can tile, tags each (`sharc.tile = i`) and its
/// fusable elementwise consumer (`sharc.epilogue = i`), and returns their
/// plans in tag order.
fn tag_contractions(module: &Module) -> Vec<Contraction> {
    use mlir_sys::*;
    let mut found = Vec::new();
    let mut claimed: Vec<MlirOperation> = Vec::new();
    // SAFETY: a walk over the live module through MLIR's C API; every
    // handle comes from the API itself and is checked for null before use,
    // and only discardable attributes are added.
    unsafe {
        let ctx = mlirOperationGetContext(module.as_operation().to_raw());
        let i64t = mlirIntegerTypeGet(ctx, 64);
        let body = mlirRegionGetFirstBlock(mlirOperationGetRegion(module.as_operation().to_raw(), 0));
        if body.ptr.is_null() {
            return found;
        }
        let mut func = mlirBlockGetFirstOperation(body);
        while !func.ptr.is_null() {
            if op_name(func) == "func.func" {
                let block = mlirRegionGetFirstBlock(mlirOperationGetRegion(func, 0));
                let mut op = if block.ptr.is_null() {
                    MlirOperation { ptr: std::ptr::null_mut() }
                } else {
                    mlirBlockGetFirstOperation(block)
                };
                while !op.ptr.is_null() {
                    if is_contraction(op)
                        && let Some((maps, loops)) = indexing_dims(op)
                        && maps.len() == 3
                    {
                        let shapes: Vec<Option<Vec<i64>>> =
                            (0..3).map(|i| f32_tensor_shape(mlirOperationGetOperand(op, i))).collect();
                        if let [Some(sa), Some(sb), Some(sc)] = &shapes[..] {
                            let mut sizes = vec![0i64; loops];
                            for (dims, shape) in maps.iter().zip([sa, sb, sc]) {
                                for (&d, &n) in dims.iter().zip(shape) {
                                    sizes[d] = n;
                                }
                            }
                            if sizes.iter().all(|&n| n > 0)
                                && let Some(tiling) = plan_contraction(&maps[0], &maps[1], &maps[2], &sizes)
                            {
                                let i = found.len();
                                let tag = |o: MlirOperation, name: &std::ffi::CStr| {
                                    mlirOperationSetDiscardableAttributeByName(
                                        o,
                                        mlirStringRefCreateFromCString(name.as_ptr()),
                                        mlirIntegerAttrGet(i64t, i as i64),
                                    )
                                };
                                tag(op, c"sharc.tile");
                                let epilogue = single_use(mlirOperationGetResult(op, 0)).and_then(|(user, operand)| {
                                    if claimed.iter().any(|c| c.ptr == user.ptr) {
                                        return None;
                                    }
                                    let tiles = epilogue_tiles(user, operand, &maps[2], &tiling.outer)?;
                                    claimed.push(user);
                                    tag(user, c"sharc.epilogue");
                                    Some(tiles)
                                });
                                found.push(Contraction { tiling, epilogue });
                            }
                        }
                    }
                    op = mlirOperationGetNextInBlock(op);
                }
            }
            func = mlirOperationGetNextInBlock(func);
        }
    }
    found
}

/// Tiles, fuses and vectorizes the module's contractions (see
/// [`transform_script`]) and returns the new module and how many
/// contractions were planned. The script runs in MLIR's transform
/// interpreter and is removed from the module afterwards.
pub fn tile_contractions<'c>(mlir: &'c Mlir, module: Module<'c>) -> Result<(Module<'c>, usize), MlirError> {
    let found = tag_contractions(&module);
    if found.is_empty() {
        return Ok((module, 0));
    }
    let script = transform_script(&found);
    // The schedule goes at the end of the module, which must be marked as
    // holding named sequences.
    // SAFETY: sets a unit attribute on the live module op.
    unsafe {
        use mlir_sys::*;
        let m = module.as_operation().to_raw();
        mlirOperationSetAttributeByName(
            m,
            mlirStringRefCreateFromCString(c"transform.with_named_sequence".as_ptr()),
            mlirUnitAttrGet(mlirOperationGetContext(m)),
        );
    }
    let text = module.as_operation().to_string();
    let close = text
        .rfind('}')
        .ok_or_else(|| MlirError::Mlir { stage: "tiling".into(), message: "the module text has no end".into() })?;
    let text = format!("{}\n{script}\n}}\n", &text[..close]);
    let mut module = mlir.parse(&text)?;
    mlir.run(&mut module, "tiled", "builtin.module(transform-interpreter)")?;
    // SAFETY: removes and destroys the schedule op, which nothing refers to
    // once the interpreter is done, and the module attribute that marked it.
    unsafe {
        use mlir_sys::*;
        let m = module.as_operation().to_raw();
        let body = mlirRegionGetFirstBlock(mlirOperationGetRegion(m, 0));
        let mut op = mlirBlockGetFirstOperation(body);
        while !op.ptr.is_null() {
            let next = mlirOperationGetNextInBlock(op);
            if op_name(op) == "transform.named_sequence" {
                mlirOperationRemoveFromParent(op);
                mlirOperationDestroy(op);
            }
            op = next;
        }
        mlirOperationRemoveAttributeByName(
            m,
            mlirStringRefCreateFromCString(c"transform.with_named_sequence".as_ptr()),
        );
    }
    Ok((module, found.len()))
}

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

/// Runs the CPU pipeline on a lowered module: [`CPU_STAGES`] with the
/// contractions tiled after the first (fusion) stage. `on_stage` sees the
/// module after each stage. Returns the LLVM-dialect module and how many
/// contractions were tiled; with `tile` false the contractions stay plain
/// loop nests (the fallback when tiling fails).
fn cpu_pipeline<'c>(
    mlir: &'c Mlir,
    lowered: &Lowered,
    tile: bool,
    on_stage: &mut dyn FnMut(&str, &Module),
) -> Result<(Module<'c>, usize), MlirError> {
    let mut module = mlir.parse(&lowered.text)?;
    on_stage("tensor", &module);
    let mut tiled = 0;
    for (i, s) in CPU_STAGES.iter().enumerate() {
        mlir.run(&mut module, s.name, s.pipeline)?;
        on_stage(s.name, &module);
        if i == 0 && tile {
            (module, tiled) = tile_contractions(mlir, module)?;
            on_stage("tiled", &module);
        }
    }
    Ok((module, tiled))
}

/// The module text after each CPU stage, starting with the lowered module.
pub fn cpu_stages(lowered: &Lowered) -> Result<Vec<(String, String)>, MlirError> {
    let mlir = Mlir::new();
    let mut out = Vec::new();
    cpu_pipeline(&mlir, lowered, true, &mut |name, m| out.push((name.to_string(), m.as_operation().to_string())))?;
    Ok(out)
}

/// The ops of a module's text that each become one loop nest: linalg ops
/// (not the terminators and index ops of their bodies) and loops at the
/// level of the function body (`scf.forall` of a tiled contraction,
/// `scf.for` of a tile nest whose one-iteration forall folded away or of a
/// data-dependent op), whose bodies count as part of them. Each comes as
/// the text from the op's name on and whether its body computes on vectors.
fn kernel_ops(text: &str) -> Vec<(&str, bool)> {
    let mut out: Vec<(&str, bool)> = Vec::new();
    let mut inside: Option<usize> = None;
    for line in text.lines() {
        let l = line.trim_start();
        let indent = line.len() - l.len();
        if let Some(i) = inside {
            if indent > i || l.is_empty() {
                if l.contains("vector.")
                    && let Some(last) = out.last_mut()
                {
                    last.1 = true;
                }
                continue;
            }
            inside = None;
        }
        let op = l.split_once(" = ").map(|(_, r)| r).unwrap_or(l);
        if op.starts_with("scf.forall") || op.starts_with("scf.for ") {
            inside = Some(indent);
            out.push((op, false));
        } else if op.starts_with("linalg.") && !op.starts_with("linalg.yield") && !op.starts_with("linalg.index") {
            out.push((op, false));
        }
    }
    out
}

/// How many loop nests (kernels) a module (after fusion or tiling) has:
/// each `linalg` op becomes one loop nest on the CPU and one GPU kernel,
/// fills included (they are separate passes over memory), and a tiled
/// contraction is one loop nest with its fill and epilogue (or, where its
/// one tile covers the whole result, the fill, the contraction's loops and
/// the epilogue are three).
pub fn count_kernels(fused_text: &str) -> usize {
    kernel_ops(fused_text).len()
}

/// The kernels of a fused module by kind: `fill` (initialising an
/// accumulator), `contraction` (`linalg.contract`, or a reduction with
/// parallel loops on both sides), `reduction`, `elementwise` (all-parallel
/// generics, after fusion usually a chain of several ops), `tiled` (a
/// loop nest computing on vectors: a tiled contraction, with its fill and
/// elementwise epilogue where it has tiles to fuse them into), `loop`
/// (other loops), or the op's own name for other named linalg ops. Sorted
/// by kind; the counts add up to [`count_kernels`].
pub fn kernel_stats(fused_text: &str) -> Vec<(String, usize)> {
    let mut stats: BTreeMap<String, usize> = BTreeMap::new();
    for (op, vector) in kernel_ops(fused_text) {
        let name = op.split(|c: char| c.is_whitespace() || c == '{' || c == '(').next().unwrap_or(op);
        let kind = match name {
            "scf.forall" | "scf.for" if vector => "tiled".to_string(),
            "scf.forall" | "scf.for" => "loop".to_string(),
            "linalg.fill" => "fill".to_string(),
            "linalg.contract" => "contraction".to_string(),
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
    /// Loop nests after fusion and tiling: each linalg op left is one, and
    /// so is each tiled contraction with its fill and epilogue.
    pub kernels: usize,
    /// Contractions tiled and vectorized (0 if tiling failed and the
    /// untiled pipeline was used).
    pub tiled: usize,
}

impl CpuExecutable {
    /// Compiles a lowered graph; `graph` supplies the weights' data.
    pub fn new(graph: &Graph, lowered: &Lowered, opt_level: usize) -> Result<CpuExecutable, MlirError> {
        let mlir = Mlir::new();
        // Tiling is an optimisation: should it, or anything after it, fail
        // on some module, the untiled pipeline still gives correct code.
        let (engine, tiled, kernels) = match Self::jit(&mlir, lowered, opt_level, true) {
            Ok(r) => r,
            Err(_) => Self::jit(&mlir, lowered, opt_level, false)?,
        };
        let mut weights = Vec::new();
        for a in &lowered.args {
            if let ArgKind::Weight(w) = a.kind {
                weights.push(Buf::from_bytes(&weight_bytes(graph, w, &a.name)?));
            }
        }
        Ok(CpuExecutable { engine, args: lowered.args.clone(), weights, kernels, tiled })
    }

    /// Compiles through [`cpu_pipeline`] and the JIT; returns the engine,
    /// the number of tiled contractions and of loop nests.
    fn jit(
        mlir: &Mlir,
        lowered: &Lowered,
        opt_level: usize,
        tile: bool,
    ) -> Result<(ExecutionEngine, usize, usize), MlirError> {
        let mut kernels = 0;
        let (module, tiled) = cpu_pipeline(mlir, lowered, tile, &mut |name, m| {
            if name == if tile { "tiled" } else { "fused" } {
                kernels = count_kernels(&m.as_operation().to_string());
            }
        })?;
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
        Ok((engine, tiled, kernels))
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
    let mapped = map_to_gpu(lowered, Some(&mut stages))?;
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
/// [`crate::gpu_map`]), as text. With `stages`, each stage's text is pushed
/// there too (printing a whole model's module takes a while, so the runner,
/// which shows no stages, does not ask).
pub(crate) fn map_to_gpu(
    lowered: &Lowered,
    mut stages: Option<&mut Vec<(String, String)>>,
) -> Result<String, MlirError> {
    let mlir = Mlir::new();
    let mut module = mlir.parse(&lowered.text)?;
    let mut record = |name: &str, module: &Module| {
        if let Some(stages) = stages.as_deref_mut() {
            stages.push((name.to_string(), module.as_operation().to_string()));
        }
    };
    record("tensor", &module);
    mlir.run(&mut module, "fused", CPU_STAGES[0].pipeline)?;
    record("fused", &module);
    mlir.run(&mut module, "bufferization", BUFFERIZE)?;
    let mut module = mlir.parse(&reductions_innermost(&copies_as_loops(&module.as_operation().to_string())))?;
    mlir.run(&mut module, "gpu mapping", &GpuMapping::from_env()?.pipeline())?;
    let mapped = module.as_operation().to_string();
    if let Some(stages) = stages {
        stages.push(("gpu".into(), mapped.clone()));
    }
    Ok(mapped)
}

/// The objects (PTX text with `format=isa`) of every `gpu.binary` op.
pub(crate) fn binary_objects(module: &Module) -> Vec<String> {
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
    use super::{ContractionTiling, count_kernels, divisor_at_most, kernel_stats, plan_contraction};

    #[test]
    fn tile_sizes_divide_the_dims() {
        assert_eq!(divisor_at_most(128, 32), 32);
        assert_eq!(divisor_at_most(384, 64), 64);
        assert_eq!(divisor_at_most(100, 32), 25);
        assert_eq!(divisor_at_most(7, 32), 7);
        assert_eq!(divisor_at_most(97, 64), 1);
        assert_eq!(divisor_at_most(1, 4), 1);
    }

    #[test]
    fn matmul_is_tiled_over_m_and_n_with_k_innermost() {
        // (m, k, n) loops as the lowering orders them: A[m, k], B[k, n], C[m, n].
        let t = plan_contraction(&[0, 1], &[1, 2], &[0, 2], &[128, 384, 1536]).unwrap();
        assert_eq!(t, ContractionTiling { outer: vec![32, 0, 64], inner: vec![4, 8, 16], interchange: vec![0, 2, 1] });
        // Odd sizes take the largest divisors: every tile is full.
        let t = plan_contraction(&[0, 1], &[1, 2], &[0, 2], &[7, 9, 30]).unwrap();
        assert_eq!(t.outer, vec![7, 0, 30]);
        assert_eq!(t.inner, vec![1, 3, 15]);
    }

    #[test]
    fn attention_contractions_take_batch_loops_one_at_a_time() {
        // Q K^T with K already transposed: loops (b, h, m, k, n),
        // A[b, h, m, k], B[b, h, k, n], C[b, h, m, n].
        let t = plan_contraction(&[0, 1, 2, 3], &[0, 1, 3, 4], &[0, 1, 2, 4], &[1, 12, 128, 32, 128]).unwrap();
        assert_eq!(t.outer, vec![1, 1, 32, 0, 64]);
        assert_eq!(t.inner, vec![0, 0, 4, 8, 16]);
        assert_eq!(t.interchange, vec![0, 1, 2, 4, 3]);
        // The output projection after a head reshape: loops (b, m, h, c, n)
        // with two reductions h and c; c (innermost in A) is vectorized.
        let t = plan_contraction(&[0, 2, 1, 3], &[2, 3, 4], &[0, 1, 4], &[1, 128, 12, 32, 384]).unwrap();
        assert_eq!(t.outer, vec![1, 32, 0, 0, 64]);
        assert_eq!(t.inner, vec![0, 4, 1, 8, 16]);
        assert_eq!(t.interchange, vec![0, 1, 4, 2, 3]);
    }

    #[test]
    fn products_without_a_contiguous_n_stay_loops() {
        // Matrix-vector: the result's last dim is m, from A.
        assert_eq!(plan_contraction(&[0, 1], &[1], &[0], &[8, 8]), None);
        // Outer product: no reduction.
        assert_eq!(plan_contraction(&[0], &[1], &[0, 1], &[8, 8]), None);
    }

    #[test]
    fn a_tiled_loop_nest_counts_once() {
        let text = "    %1 = linalg.generic {iterator_types = [\"parallel\"]} ins()\n\
                    \x20   %2 = scf.forall (%i) in (4) shared_outs(%o = %1) -> (tensor<8xf32>) {\n\
                    \x20     %3 = linalg.fill ins(%c : f32) outs(%e : tensor<4xf32>) -> tensor<4xf32>\n\
                    \x20     %4 = scf.for %j = %c0 to %c4 step %c1 iter_args(%a = %3) -> (tensor<4xf32>) {\n\
                    \x20       %5 = vector.fma %x, %y, %z : vector<16xf32>\n\
                    \x20     }\n\
                    \x20   }\n\
                    \x20   %6 = linalg.fill ins(%c : f32) outs(%e : tensor<4xf32>) -> tensor<4xf32>\n\
                    \x20   %7 = scf.for %i = %c0 to %n step %c1 iter_args(%a = %6) -> (tensor<4xf32>) {\n\
                    \x20     %8 = tensor.insert %v into %a[%i] : tensor<4xf32>\n\
                    \x20   }\n";
        assert_eq!(count_kernels(text), 4);
        let want: Vec<(String, usize)> =
            [("elementwise", 1), ("fill", 1), ("loop", 1), ("tiled", 1)].map(|(k, n)| (k.into(), n)).into();
        assert_eq!(kernel_stats(text), want);
    }

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

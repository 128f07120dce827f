//! Matrix products over strided views.
//!
//! `MatMul` and `Gemm` are planned as a batched product with arbitrary
//! strides for both operands: a transposed operand, a broadcast batch dim or
//! a head split by `Reshape`+`Transpose` is just a stride, so none of them
//! costs a copy. The product itself runs on sharc's packed product
//! ([`crate::packed_gemm`]: weights packed once at compile time, an AVX2+FMA
//! microkernel), on the `gemm` crate where that cannot run, or — for object
//! files, which cannot call into Rust — on a kernel generated with Cranelift.

use crate::packed_gemm::{self, PackedB};
use crate::plan::View;
use std::cell::RefCell;
use std::ops::Range;

/// Which GEMM computes matrix products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GemmImpl {
    /// sharc's packed product: constant right operands packed once at
    /// compile time into 16-column panels, a 6x16 AVX2+FMA microkernel.
    /// On CPUs without AVX2/FMA it falls back to [`GemmImpl::Crate`].
    #[default]
    Packed,
    /// The `gemm` crate (AVX2/AVX-512 or NEON microkernels with cache
    /// blocking); it packs the right operand in every call.
    Crate,
    /// A kernel generated with Cranelift (`f32x4`, one row by eight columns
    /// per step). Object output always uses it.
    Cranelift,
}

/// A batched product `out[b] = alpha * A[b] · B[b]` with `out` dense.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct MatMulSpec {
    /// The output's batch dims.
    pub batch: Vec<usize>,
    /// A's and B's strides (elements) along each batch dim; 0 broadcasts.
    pub a_bstrides: Vec<isize>,
    pub b_bstrides: Vec<isize>,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_rs: isize,
    pub a_cs: isize,
    pub b_rs: isize,
    pub b_cs: isize,
    /// The bits of `alpha` (kept as bits so the spec can be hashed).
    pub alpha_bits: u32,
}

impl MatMulSpec {
    /// The product of two views with ONNX `MatMul` semantics (numpy
    /// broadcasting of batch dims; 1-D operands promoted and the added dim
    /// dropped), or 2-D `Gemm` with transposes. `None` when the shapes do not
    /// give `out_shape`.
    pub fn new(
        a: &View,
        b: &View,
        out_shape: &[usize],
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
    ) -> Option<MatMulSpec> {
        let (ra, rb) = (a.shape.len(), b.shape.len());
        if ra == 0 || rb == 0 || ((trans_a || trans_b) && (ra != 2 || rb != 2)) {
            return None;
        }
        // A as [batch.., m, k], B as [batch.., k, n].
        let (mut ash, mut ast) = (a.shape.clone(), a.strides.clone());
        if ra == 1 {
            ash.insert(0, 1);
            ast.insert(0, 0);
        }
        let (mut bsh, mut bst) = (b.shape.clone(), b.strides.clone());
        if rb == 1 {
            bsh.push(1);
            bst.push(0);
        }
        let (la, lb) = (ash.len(), bsh.len());
        if trans_a {
            ash.swap(0, 1);
            ast.swap(0, 1);
        }
        if trans_b {
            bsh.swap(0, 1);
            bst.swap(0, 1);
        }
        let (m, k) = (ash[la - 2], ash[la - 1]);
        let (k2, n) = (bsh[lb - 2], bsh[lb - 1]);
        if k != k2 {
            return None;
        }
        let nb = (la - 2).max(lb - 2);
        let mut batch = vec![0usize; nb];
        let mut a_bstrides = vec![0isize; nb];
        let mut b_bstrides = vec![0isize; nb];
        for d in 0..nb {
            let ad = (d + la - 2).checked_sub(nb);
            let bd = (d + lb - 2).checked_sub(nb);
            let asz = ad.map_or(1, |i| ash[i]);
            let bsz = bd.map_or(1, |i| bsh[i]);
            let size = if asz == bsz || bsz == 1 {
                asz
            } else if asz == 1 {
                bsz
            } else {
                return None;
            };
            batch[d] = size;
            a_bstrides[d] = match ad {
                Some(i) if asz == size && size != 1 => ast[i],
                _ => 0,
            };
            b_bstrides[d] = match bd {
                Some(i) if bsz == size && size != 1 => bst[i],
                _ => 0,
            };
        }
        let mut want = batch.clone();
        if ra > 1 {
            want.push(m);
        }
        if rb > 1 {
            want.push(n);
        }
        if want != out_shape {
            return None;
        }
        // Inner batch dims over which B is shared and A's rows run on from
        // one matrix to the next (a [batch, seq, hidden] activation times a
        // weight) fold into m: one tall product instead of many small ones,
        // so B is packed once per block of rows rather than once per matrix,
        // and threads split rows of one matrix. Row `b * m + r` of the tall
        // product is row r of matrix b in A and in the dense output alike.
        let (mut m, a_rs) = (m, ast[la - 2]);
        while let (Some(&size), Some(&0), Some(&sa)) = (batch.last(), b_bstrides.last(), a_bstrides.last()) {
            if sa != m as isize * a_rs {
                break;
            }
            m *= size;
            batch.pop();
            a_bstrides.pop();
            b_bstrides.pop();
        }
        Some(MatMulSpec {
            batch,
            a_bstrides,
            b_bstrides,
            m,
            n,
            k,
            a_rs,
            a_cs: ast[la - 1],
            b_rs: bst[lb - 2],
            b_cs: bst[lb - 1],
            alpha_bits: alpha.to_bits(),
        })
    }

    pub fn alpha(&self) -> f32 {
        f32::from_bits(self.alpha_bits)
    }

    /// Number of matrices in the batch.
    pub fn batch_count(&self) -> usize {
        self.batch.iter().product()
    }

    /// Element offsets of batch `i` in A and B.
    pub fn batch_offsets(&self, mut i: usize) -> (isize, isize) {
        let (mut oa, mut ob) = (0isize, 0isize);
        for d in (0..self.batch.len()).rev() {
            let idx = (i % self.batch[d]) as isize;
            i /= self.batch[d];
            oa += idx * self.a_bstrides[d];
            ob += idx * self.b_bstrides[d];
        }
        (oa, ob)
    }
}

/// A raw pointer that may cross threads: the plan guarantees that the
/// regions written by different tasks are disjoint.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: see the type's doc; every use writes disjoint regions.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// How a product's work is shared between threads, decided alike for every
/// GEMM runner: `None` for an empty product (nothing to do).
struct Split {
    m: usize,
    n: usize,
    k: usize,
    count: usize,
    /// Worth more than one thread (at least 2e5 multiply-adds).
    threaded: bool,
    /// The batch alone keeps every thread busy: one matrix per task.
    whole_matrices: bool,
}

impl Split {
    fn of(spec: &MatMulSpec, threads: usize) -> Option<Split> {
        let (m, n, k, count) = (spec.m, spec.n, spec.k, spec.batch_count());
        if m == 0 || n == 0 || count == 0 {
            return None;
        }
        Some(Split {
            m,
            n,
            k,
            count,
            threaded: threads > 1 && (m * n * k.max(1) * count) as f64 >= 2e5,
            whole_matrices: count >= 2 * threads || (count >= threads && m < 64),
        })
    }
}

/// Runs the product with the `gemm` crate, then `epilogue(first, end)` on
/// each block of output rows (rows numbered `batch × m + row`) right after
/// the block is computed.
///
/// Work is split into blocks of rows: whole matrices when the batch alone
/// keeps every thread busy, else slices of rows of each matrix, each block
/// one single-threaded GEMM call followed by its epilogue, so the epilogue
/// reads rows that are still in cache.
///
/// # Safety
/// The pointers must address the views the spec was built from (A and B
/// readable over their strided extents, `out` writable for the dense
/// output), and the epilogue must only touch the rows it is given.
pub(crate) unsafe fn run_gemm_crate<E: Fn(usize, usize) + Sync>(
    spec: &MatMulSpec,
    a: *const f32,
    b: *const f32,
    out: *mut f32,
    threads: usize,
    epilogue: Option<E>,
) {
    use rayon::prelude::*;
    let Some(Split { m, n, k, count, threaded, whole_matrices }) = Split::of(spec, threads) else { return };
    let (a, b, out) = (SendPtr(a as *mut f32), SendPtr(b as *mut f32), SendPtr(out));
    let block = move |i: usize, r0: usize, r1: usize, par: gemm::Parallelism| {
        let (oa, ob) = spec.batch_offsets(i);
        let (a, b, out) = (a, b, out);
        // SAFETY: offsets stay within the views (checked by the planner's
        // shapes); each block writes its own rows of `out`.
        unsafe {
            let dst = out.0.add((i * m + r0) * n);
            if k == 0 {
                std::ptr::write_bytes(dst, 0, (r1 - r0) * n);
            } else {
                gemm::gemm(
                    r1 - r0,
                    n,
                    k,
                    dst,
                    1,
                    n as isize,
                    false,
                    a.0.offset(oa + r0 as isize * spec.a_rs),
                    spec.a_cs,
                    spec.a_rs,
                    b.0.offset(ob),
                    spec.b_cs,
                    spec.b_rs,
                    0.0,
                    spec.alpha(),
                    false,
                    false,
                    false,
                    par,
                )
            }
        }
        if let Some(e) = &epilogue {
            e(i * m + r0, i * m + r1);
        }
    };
    if !threaded {
        for i in 0..count {
            block(i, 0, m, gemm::Parallelism::None);
        }
    } else if whole_matrices {
        (0..count).into_par_iter().for_each(|i| block(i, 0, m, gemm::Parallelism::None));
    } else {
        // Slices of rows: about two per thread overall, but at least 64 rows
        // each. Every slice packs all of B again and runs the GEMM's edge
        // handling, which slices of 32 rows (a 128-token product split four
        // ways) measured ~20% slower than one slice of 64 per thread.
        let per_matrix = (2 * threads).div_ceil(count).max(1);
        let rows = m.div_ceil(per_matrix).max(64).min(m);
        let slices = m.div_ceil(rows);
        (0..count * slices).into_par_iter().for_each(|t| {
            let (i, s) = (t / slices, t % slices);
            let r0 = s * rows;
            block(i, r0, ((s + 1) * rows).min(m), gemm::Parallelism::None);
        });
    }
}

/// Where the packed product finds its right operand.
#[derive(Clone, Copy)]
pub(crate) enum PanelB<'a> {
    /// Packed when the model was compiled (a constant shared by the batch).
    Prepacked(&'a PackedB),
    /// At this address through the spec's strides: packed in the call.
    Strided(SendPtr),
}

thread_local! {
    /// Each worker's buffer for packing the right operand of the matrices
    /// it takes, reused from call to call.
    static PACK_BUFFER: RefCell<PackedB> = RefCell::new(PackedB::default());
}

/// Runs the product with [`packed_gemm`], then `epilogue(first, end)` on
/// each block of output rows (numbered `batch × m + row`) right after the
/// block is computed, as [`run_gemm_crate`] does.
///
/// Work is split like [`run_gemm_crate`]: whole matrices when the batch
/// keeps every thread busy (each worker packs its matrix's right operand
/// into its own buffer), else slices of rows of each matrix sharing one
/// packed right operand.
///
/// # Safety
/// As for [`run_gemm_crate`], and [`packed_gemm::available`] must be true.
/// A prepacked operand must be the spec's `B` (then `B` is shared by every
/// matrix of the batch).
pub(crate) unsafe fn run_packed<E: Fn(usize, usize) + Sync>(
    spec: &MatMulSpec,
    a: *const f32,
    b: PanelB<'_>,
    out: *mut f32,
    threads: usize,
    epilogue: Option<E>,
) {
    use rayon::prelude::*;
    let Some(Split { m, n, k, count, threaded, whole_matrices }) = Split::of(spec, threads) else { return };
    if let PanelB::Prepacked(p) = b {
        assert!(p.k() == k && p.n() == n, "a prepacked operand must be the spec's B (a bug in the planner)");
    }
    let (a, out) = (SendPtr(a as *mut f32), SendPtr(out));
    // Rows r0..r1 of matrix i, over the columns of some panels of B.
    let product = |i: usize, r0: usize, r1: usize, panels: Range<usize>, packed: &PackedB| {
        let (oa, _) = spec.batch_offsets(i);
        let (a, out) = (a, out);
        // SAFETY: offsets stay within the views (checked by the planner's
        // shapes); each call writes its own rows or columns of `out`.
        unsafe {
            packed_gemm::gemm_rows(
                a.0.offset(oa + r0 as isize * spec.a_rs),
                spec.a_rs,
                spec.a_cs,
                packed,
                panels,
                out.0.add((i * m + r0) * n),
                n,
                r1 - r0,
                spec.alpha(),
            )
        };
    };
    let finish = |i: usize, r0: usize, r1: usize| {
        if let Some(e) = &epilogue {
            e(i * m + r0, i * m + r1);
        }
    };
    // Rows r0..r1 of matrix i whole, then their epilogue while in cache.
    let rows = |i: usize, r0: usize, r1: usize, packed: &PackedB| {
        product(i, r0, r1, 0..packed.panels(), packed);
        finish(i, r0, r1);
    };
    // Matrix i's B, packed into `buf` unless it was packed at compile time.
    let b_addr = match b {
        PanelB::Strided(p) => Some(p),
        PanelB::Prepacked(_) => None,
    };
    let pack = |i: usize, buf: &mut PackedB| {
        if let Some(p) = b_addr {
            let (_, ob) = spec.batch_offsets(i);
            // SAFETY: B's strided extent for matrix i is readable.
            unsafe { buf.repack(p.0.offset(ob), k, n, spec.b_rs, spec.b_cs) };
        }
    };
    if threaded && whole_matrices {
        (0..count).into_par_iter().for_each(|i| match b {
            PanelB::Prepacked(p) => rows(i, 0, m, p),
            PanelB::Strided(_) => PACK_BUFFER.with_borrow_mut(|buf| {
                pack(i, buf);
                rows(i, 0, m, buf)
            }),
        });
        return;
    }
    // Slices of rows, a multiple of the microkernel's 6 rows and at least
    // 48, one to four per thread: each slice reads all of B again (from the
    // shared cache), so more slices only pay for balance. With too few rows
    // for that (one token at a time, a small batch), threads take groups of
    // columns instead, and the epilogue runs once they have all finished.
    let panels = n.div_ceil(packed_gemm::NR);
    let by_columns = threaded && m < 48 * threads && panels >= 2 * threads;
    let slices = if threaded { threads * (m / (48 * threads)).clamp(1, 4) } else { 1 };
    let per = m.div_ceil(slices).next_multiple_of(packed_gemm::MR).min(m);
    let slices = m.div_ceil(per);
    let per_group = panels.div_ceil(2 * threads);
    let mut own = PackedB::default();
    for i in 0..count {
        let packed = match b {
            PanelB::Prepacked(p) => p,
            PanelB::Strided(_) => {
                pack(i, &mut own);
                &own
            }
        };
        if by_columns {
            (0..panels.div_ceil(per_group))
                .into_par_iter()
                .for_each(|g| product(i, 0, m, g * per_group..((g + 1) * per_group).min(panels), packed));
            finish(i, 0, m);
        } else if slices == 1 {
            rows(i, 0, m, packed);
        } else {
            (0..slices).into_par_iter().for_each(|s| rows(i, s * per, ((s + 1) * per).min(m), packed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Loc, dense_strides};
    use sharc_ir::DType;

    fn view(shape: &[usize]) -> View {
        View { loc: Loc::Arena(0), dtype: DType::F32, offset: 0, shape: shape.to_vec(), strides: dense_strides(shape) }
    }

    #[test]
    fn broadcasts_batches_and_promotes_vectors() {
        let s = MatMulSpec::new(&view(&[2, 1, 3, 4]), &view(&[5, 4, 6]), &[2, 5, 3, 6], false, false, 1.0).unwrap();
        assert_eq!(s.batch, vec![2, 5]);
        assert_eq!(s.a_bstrides, vec![12, 0]);
        assert_eq!(s.b_bstrides, vec![0, 24]);
        // A shared weight folds the activation's batch into its rows.
        let f = MatMulSpec::new(&view(&[8, 128, 384]), &view(&[384, 64]), &[8, 128, 64], false, false, 1.0).unwrap();
        assert_eq!((f.batch.clone(), f.m, f.a_rs), (vec![], 1024, 384));
        // A transposed activation does not continue row to row: no fold.
        let mut t = view(&[8, 384, 128]);
        t.shape = vec![8, 128, 384];
        t.strides = vec![384 * 128, 1, 128];
        let nf = MatMulSpec::new(&t, &view(&[384, 64]), &[8, 128, 64], false, false, 1.0).unwrap();
        assert_eq!((nf.batch.clone(), nf.m), (vec![8], 128));
        let v = MatMulSpec::new(&view(&[4]), &view(&[4, 6]), &[6], false, false, 1.0).unwrap();
        assert_eq!((v.m, v.n, v.k), (1, 6, 4));
        assert!(MatMulSpec::new(&view(&[3, 4]), &view(&[5, 6]), &[3, 6], false, false, 1.0).is_none());
    }

    #[test]
    fn gemm_crate_matches_naive_product_with_transposed_b() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let s = MatMulSpec::new(&view(&[m, k]), &view(&[n, k]), &[m, n], false, true, 2.0).unwrap();
        let mut out = vec![0f32; m * n];
        // SAFETY: buffers sized for the spec.
        unsafe { run_gemm_crate(&s, a.as_ptr(), bt.as_ptr(), out.as_mut_ptr(), 1, None::<fn(usize, usize)>) };
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 2.0 * (0..k).map(|l| a[i * k + l] * bt[j * k + l]).sum::<f32>();
                assert!((out[i * n + j] - want).abs() < 1e-5, "{i},{j}");
            }
        }
    }

    /// `out[b] = alpha * A[b] · B[b]` by the definition, over the spec's own
    /// batch offsets and strides.
    fn naive(s: &MatMulSpec, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut out = Vec::new();
        for i in 0..s.batch_count() {
            let (oa, ob) = s.batch_offsets(i);
            for r in 0..s.m {
                for c in 0..s.n {
                    let dot: f64 = (0..s.k)
                        .map(|l| {
                            let x = a[(oa + r as isize * s.a_rs + l as isize * s.a_cs) as usize];
                            let y = b[(ob + l as isize * s.b_rs + c as isize * s.b_cs) as usize];
                            x as f64 * y as f64
                        })
                        .sum();
                    out.push((dot * s.alpha() as f64) as f32);
                }
            }
        }
        out
    }

    #[test]
    fn threaded_paths_match_naive_product_and_cover_every_row_once() {
        // Odd sizes throughout. The first two run one product per task
        // (a batch of 12 from broadcasting [3, 1] against [1, 4], the second
        // with B transposed: a strided view); the third splits the rows of a
        // single product between tasks; the last is too small to thread.
        // Each threaded case is above run_gemm_crate's 2e5 multiply-adds.
        // B as [4, 61, 19] viewing a dense [4, 19, 61] transposed.
        let mut t = view(&[4, 61, 19]);
        t.strides = vec![19 * 61, 1, 61];
        let cases = [
            (view(&[3, 1, 37, 53]), view(&[1, 4, 53, 19]), vec![3, 4, 37, 19]),
            (view(&[4, 45, 61]), t, vec![4, 45, 19]),
            (view(&[101, 53]), view(&[53, 47]), vec![101, 47]),
            // Too few rows to split: the packed runner splits columns.
            (view(&[7, 61]), view(&[61, 530]), vec![7, 530]),
            (view(&[5, 3]), view(&[3, 2]), vec![5, 2]),
        ];
        for (av, bv, out_shape) in cases {
            let s = MatMulSpec::new(&av, &bv, &out_shape, false, false, 0.5).unwrap();
            let extent =
                |v: &View| 1 + v.shape.iter().zip(&v.strides).map(|(&n, &st)| (n - 1) * st as usize).sum::<usize>();
            let a: Vec<f32> = (0..extent(&av)).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..extent(&bv)).map(|i| (i as f32 * 0.11).cos()).collect();
            let want = naive(&s, &a, &b);
            // The crate, the packed product packing B in the call, and (when
            // B is shared by the batch) packed once beforehand.
            let shared = s.b_bstrides.iter().all(|&x| x == 0);
            // SAFETY: b is the spec's B over its extent.
            let prepacked = unsafe { PackedB::pack(b.as_ptr(), s.k, s.n, s.b_rs, s.b_cs) };
            for runner in ["crate", "packed", "prepacked"] {
                if runner != "crate" && !packed_gemm::available() || runner == "prepacked" && !shared {
                    continue;
                }
                let rows = s.batch_count() * s.m;
                let mut out = vec![f32::NAN; rows * s.n];
                let seen = std::sync::Mutex::new(vec![0u32; rows]);
                let epilogue = |r0: usize, r1: usize| {
                    let mut seen = seen.lock().unwrap();
                    for r in r0..r1 {
                        seen[r] += 1;
                    }
                };
                // SAFETY: buffers sized for the views' extents and the output;
                // the packed runners only run where the CPU has AVX2/FMA.
                unsafe {
                    let (pa, po) = (a.as_ptr(), out.as_mut_ptr());
                    match runner {
                        "crate" => run_gemm_crate(&s, pa, b.as_ptr(), po, 2, Some(epilogue)),
                        "packed" => {
                            run_packed(&s, pa, PanelB::Strided(SendPtr(b.as_ptr() as *mut f32)), po, 2, Some(epilogue))
                        }
                        _ => run_packed(&s, pa, PanelB::Prepacked(&prepacked), po, 2, Some(epilogue)),
                    }
                }
                for (i, (&g, &w)) in out.iter().zip(&want).enumerate() {
                    assert!((g - w).abs() < 1e-4, "{runner} {out_shape:?}: element {i} is {g}, want {w}");
                }
                assert!(seen.into_inner().unwrap().iter().all(|&c| c == 1), "{runner} {out_shape:?}: epilogue rows");
            }
        }
    }
}

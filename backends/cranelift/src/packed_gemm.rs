//! A matrix product for x86-64 with AVX2 and FMA whose right operand is
//! packed into panels of 16 columns, so that a constant weight is packed
//! once, when the model is compiled, instead of in every call.
//!
//! Why sharc has its own product next to the `gemm` crate: in a transformer
//! the right operand of nearly every product is a weight, and the crate packs
//! it again in every call and for every slice of rows that a thread takes.
//! Packing a weight once and keeping the packed copy is what onnxruntime's
//! MLAS does too. The crate stays as the fallback on CPUs without AVX2/FMA
//! and on other architectures.
//!
//! **Layout.** `B` (`k` rows, `n` columns) becomes `ceil(n / 16)` panels.
//! Panel `j` holds, row after row, the 16 values `B[p, 16j .. 16j + 16]`
//! (zeros past `n`), so the microkernel reads `B` as one contiguous stream.
//!
//! **Microkernel.** A block of up to 6 rows by 16 columns of `C` lives in
//! twelve 8-lane registers for the whole of a `k` block: each step loads
//! two vectors of the panel, broadcasts one value of each of the 6 rows of
//! `A` and issues twelve fused multiply-adds. `A` is read in place through
//! its strides (no packing): a row-major activation streams through the
//! cache in the order the kernel needs it.
//!
//! **Blocking.** `k` is cut into blocks of at most [`KC_MAX`] and the
//! columns into blocks of [`NC`]. For each 6-row group of a block of up to
//! [`MC`] rows, the group's slice of `A` (6 x kc values) stays in the
//! level-1 cache while the kernel runs across the column block's panels,
//! whose kc x NC values of `B` stay in level 2 together with the block's
//! partial sums. Running across panels rather than down rows measured
//! 7-13% faster on the widest product (minilm's FFN up-projection) and no
//! slower on the others, in paired alternating runs of a throw-away harness
//! that switched the variants (only the ratio of back-to-back runs repeats
//! on the dev VM); the benchmark in `bench/` shows the net effect.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::ops::Range;

/// Columns per panel: two 8-lane vectors.
pub(crate) const NR: usize = 16;
/// Rows of `C` per microkernel call: 12 accumulators + 2 panel vectors + 1
/// broadcast fill 15 of the 16 vector registers.
pub(crate) const MR: usize = 6;
/// The most rows of `k` per block: a 6-row group's 6 x 512 x 4 bytes of
/// `A` (12 KiB) stay in a 32 KiB level-1 cache while the panels stream by,
/// and a 384-deep product (minilm's) needs no second pass over `C`.
/// Against 256, paired alternating runs of minilm b8's three product
/// shapes (the same throw-away harness) gave medians of 0.93-0.99 of the
/// time, on one thread and on two.
pub(crate) const KC_MAX: usize = 512;
/// Rows of `A` per block. With [`NC`], the block's `A` (72 x 512 x 4 bytes),
/// partial sums in `C` (72 x 128 x 4) and panels of `B` (512 x 128 x 4) fit
/// a 512 KiB level 2. Paired runs found no difference between 48, 72 and
/// 144 rows, nor between 128 and 256 columns, in this loop order.
pub(crate) const MC: usize = 72;
/// Columns of `C` per block (see [`MC`]).
pub(crate) const NC: usize = 128;

/// The right operand of a product, packed into panels of [`NR`] columns.
#[derive(Clone, Debug, Default)]
pub(crate) struct PackedB {
    k: usize,
    n: usize,
    /// One cache line per row of a panel: the microkernel's two 8-lane
    /// loads per step never straddle two lines.
    data: Vec<PanelRow>,
}

/// The 16 values of one row of a panel, aligned to a 64-byte cache line.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct PanelRow([f32; NR]);

impl PackedB {
    /// Packs the `k` x `n` matrix at `b` whose element `(p, c)` is at
    /// `b + p * rs + c * cs`.
    ///
    /// # Safety
    /// Every element of that strided matrix must be readable.
    pub unsafe fn pack(b: *const f32, k: usize, n: usize, rs: isize, cs: isize) -> PackedB {
        let mut p = PackedB::default();
        // SAFETY: forwarded from the caller.
        unsafe { p.repack(b, k, n, rs, cs) };
        p
    }

    /// Packs a new matrix into this buffer, reusing its allocation.
    ///
    /// # Safety
    /// As for [`PackedB::pack`].
    pub unsafe fn repack(&mut self, b: *const f32, k: usize, n: usize, rs: isize, cs: isize) {
        self.k = k;
        self.n = n;
        let panels = n.div_ceil(NR);
        // Every value is overwritten below except the last panel's padding,
        // which is zeroed there: no need to clear the buffer first.
        self.data.resize(panels * k, PanelRow::default());
        for j in 0..panels {
            let c0 = j * NR;
            let width = (n - c0).min(NR);
            let dst = &mut self.data[j * k..(j + 1) * k];
            if width < NR {
                for row in dst.iter_mut() {
                    row.0[width..].fill(0.0);
                }
            }
            // Walk the source along its unit stride: a transposed operand
            // (keys in attention) is read column by column.
            // SAFETY: (p, c) stays inside the caller's matrix, and the
            // destination panel holds k x NR values.
            unsafe {
                let dst = dst.as_mut_ptr() as *mut f32;
                if cs == 1 {
                    for p in 0..k {
                        std::ptr::copy_nonoverlapping(b.offset(p as isize * rs + c0 as isize), dst.add(p * NR), width);
                    }
                } else if rs.unsigned_abs() >= cs.unsigned_abs() {
                    for p in 0..k {
                        let src = b.offset(p as isize * rs + c0 as isize * cs);
                        for c in 0..width {
                            *dst.add(p * NR + c) = *src.offset(c as isize * cs);
                        }
                    }
                } else {
                    for c in 0..width {
                        let src = b.offset((c0 + c) as isize * cs);
                        for p in 0..k {
                            *dst.add(p * NR + c) = *src.offset(p as isize * rs);
                        }
                    }
                }
            }
        }
    }

    /// Rows of the packed matrix (the product's `k`).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of the packed matrix (the product's `n`).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Number of panels ([`NR`] columns each, the last may be narrower).
    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// Bytes held by the packed copy.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<PanelRow>()
    }
}

/// Whether this CPU runs the packed product (x86-64 with AVX2 and FMA).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Stand-in where the packed product cannot exist; [`available`] is false
/// there, so it is never called.
///
/// # Safety
/// Never safe to call: [`available`] is false on this architecture.
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_rows(
    _a: *const f32,
    _a_rs: isize,
    _a_cs: isize,
    _b: &PackedB,
    _panels: Range<usize>,
    _c: *mut f32,
    _c_rs: usize,
    _rows: usize,
    _alpha: f32,
) {
    unreachable!("the packed product needs x86-64 with AVX2 and FMA; callers check `available`")
}

/// `C[r, cols] = alpha * A[r, :] · B[:, cols]` for the `rows` rows of `A`
/// at `a` (row stride `a_rs`, column stride `a_cs`) and the columns of the
/// given `panels` of `B` (all of them: `0..b.panels()`), writing rows of `C`
/// `c_rs` apart (`c` addresses column 0).
///
/// # Safety
/// [`available`] must be true; `a` must address `rows` x `b.k()` readable
/// values through its strides and `c` `rows` rows of `b.n()` writable ones
/// whose columns in `panels` nothing else touches meanwhile; `panels` must
/// lie within `0..b.panels()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)] // a BLAS-style signature: operands with their strides
pub(crate) unsafe fn gemm_rows(
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: &PackedB,
    panels: Range<usize>,
    c: *mut f32,
    c_rs: usize,
    rows: usize,
    alpha: f32,
) {
    let (k, n) = (b.k, b.n);
    let (first, end) = (panels.start * NR, (panels.end * NR).min(n));
    if rows == 0 || first >= end {
        return;
    }
    if k == 0 {
        for r in 0..rows {
            // SAFETY: row r of C is writable over the panels' columns.
            unsafe { std::ptr::write_bytes(c.add(r * c_rs + first), 0, end - first) };
        }
        return;
    }
    let kblocks = k.div_ceil(KC_MAX);
    let kc = k.div_ceil(kblocks);
    for m0 in (0..rows).step_by(MC) {
        let mrows = (rows - m0).min(MC);
        for j0 in panels.clone().step_by(NC / NR) {
            let j1 = (j0 + NC / NR).min(panels.end);
            for p0 in (0..k).step_by(kc) {
                let kcb = (k - p0).min(kc);
                let accumulate = p0 > 0;
                // Each 6-row group of A (6 x kc values) stays in level 1
                // while the kernel runs across the block's panels, whose
                // kc x NC values of B stay in level 2: one stream of B per
                // call, and A read once per column block.
                for i in (0..mrows).step_by(MR) {
                    let r = (mrows - i).min(MR);
                    for j in j0..j1 {
                        let cols = (n - j * NR).min(NR);
                        // SAFETY: panel j's rows p0.. exist in the packed
                        // data; A's and C's addresses stay in the caller's
                        // extents.
                        unsafe {
                            let bp = b.data.as_ptr().add(j * k + p0) as *const f32;
                            let ap = a.offset((m0 + i) as isize * a_rs + p0 as isize * a_cs);
                            let cp = c.add((m0 + i) * c_rs + j * NR);
                            let t = Tile { kc: kcb, a: ap, a_rs, a_cs, b: bp, c: cp, c_rs, cols, alpha, accumulate };
                            match r {
                                6 => micro::<6>(&t),
                                5 => micro::<5>(&t),
                                4 => micro::<4>(&t),
                                3 => micro::<3>(&t),
                                2 => micro::<2>(&t),
                                _ => micro::<1>(&t),
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One microkernel call: `R` rows by `cols` (at most 16) columns of `C`
/// over a block of `kc` rows of the panel.
#[cfg(target_arch = "x86_64")]
struct Tile {
    kc: usize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    c: *mut f32,
    c_rs: usize,
    cols: usize,
    alpha: f32,
    /// Add to `C` (a later `k` block) instead of overwriting it.
    accumulate: bool,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn micro<const R: usize>(t: &Tile) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    // Rows are reached as one moving pointer plus a fixed offset each, so
    // no address waits on another's update; two steps of k per turn halve
    // the loop's own instructions next to the twelve multiply-adds.
    let mut offsets = [0isize; R];
    for (r, o) in offsets.iter_mut().enumerate() {
        *o = r as isize * t.a_rs;
    }
    let (mut ap, mut bp) = (t.a, t.b);
    // SAFETY (whole block): the caller's Tile addresses R rows of A over kc
    // steps of a_cs, kc x 16 packed values, and R x cols values of C.
    unsafe {
        let step = |acc: &mut [[__m256; 2]; R], ap: *const f32, bp: *const f32| {
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            for r in 0..R {
                let x = _mm256_broadcast_ss(&*ap.offset(offsets[r]));
                acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
            }
        };
        for _ in 0..t.kc / 2 {
            step(&mut acc, ap, bp);
            step(&mut acc, ap.offset(t.a_cs), bp.add(NR));
            ap = ap.offset(2 * t.a_cs);
            bp = bp.add(2 * NR);
        }
        if t.kc % 2 == 1 {
            step(&mut acc, ap, bp);
        }
        // Nearly every product has alpha 1 (only Gemm carries one): skip
        // the scaling, which short-k products (attention's) would feel.
        if t.alpha != 1.0 {
            let alpha = _mm256_set1_ps(t.alpha);
            for acc in acc.iter_mut() {
                acc[0] = _mm256_mul_ps(acc[0], alpha);
                acc[1] = _mm256_mul_ps(acc[1], alpha);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let cp = t.c.add(r * t.c_rs);
            let (mut v0, mut v1) = (acc[0], acc[1]);
            if t.cols == NR {
                if t.accumulate {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(cp));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(cp.add(8)));
                }
                _mm256_storeu_ps(cp, v0);
                _mm256_storeu_ps(cp.add(8), v1);
            } else {
                let mut tile = [0f32; NR];
                _mm256_storeu_ps(tile.as_mut_ptr(), v0);
                _mm256_storeu_ps(tile.as_mut_ptr().add(8), v1);
                for (cc, &v) in tile.iter().enumerate().take(t.cols) {
                    let d = cp.add(cc);
                    *d = if t.accumulate { *d + v } else { v };
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// `A · B` by the definition, in f64.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        a: &[f32],
        a_rs: usize,
        a_cs: usize,
        b: &[f32],
        b_rs: usize,
        b_cs: usize,
        m: usize,
        n: usize,
        k: usize,
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k).map(|p| a[i * a_rs + p * a_cs] as f64 * b[p * b_rs + j * b_cs] as f64).sum();
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_on_ragged_shapes_and_strides() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX2/FMA");
            return;
        }
        // Shapes around every edge: rows not a multiple of 6 or of the row
        // block, columns not a multiple of 16 or of the column block, k
        // split into uneven blocks, k = 1, and the empty product.
        for &(m, n, k) in
            &[(1, 1, 1), (7, 17, 3), (13, 33, 300), (150, 40, 513), (80, 150, 300), (6, 16, 256), (5, 3, 0), (2, 50, 1)]
        {
            for (a_t, b_t) in [(false, false), (true, false), (false, true)] {
                let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 23) as f32 - 11.0) / 8.0).collect();
                let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 19) as f32 - 9.0) / 4.0).collect();
                let (a_rs, a_cs) = if a_t { (1, m) } else { (k, 1) };
                let (b_rs, b_cs) = if b_t { (1, k) } else { (n, 1) };
                // SAFETY: the strided views stay inside the vectors.
                let packed = unsafe { PackedB::pack(b.as_ptr(), k, n, b_rs as isize, b_cs as isize) };
                let mut c = vec![f32::NAN; m * n];
                // SAFETY: available() checked; buffers sized for m x n.
                unsafe {
                    gemm_rows(
                        a.as_ptr(),
                        a_rs as isize,
                        a_cs as isize,
                        &packed,
                        0..packed.panels(),
                        c.as_mut_ptr(),
                        n,
                        m,
                        0.5,
                    )
                };
                let want = naive(&a, a_rs, a_cs, &b, b_rs, b_cs, m, n, k);
                for (i, (&g, &w)) in c.iter().zip(&want).enumerate() {
                    assert!(
                        (g - 0.5 * w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{m}x{n}x{k} a_t={a_t} b_t={b_t}: element {i} is {g}, want {}",
                        0.5 * w
                    );
                }
            }
        }
    }

    #[test]
    fn writes_only_its_rows_and_columns() {
        if !available() {
            return;
        }
        // C is a window of a wider matrix: the columns past n and the rows
        // past `rows` must be left alone.
        let (m, n, k, ld) = (8, 20, 9, 27);
        let a = vec![1f32; m * k];
        let b = vec![2f32; k * n];
        // SAFETY: dense k x n.
        let packed = unsafe { PackedB::pack(b.as_ptr(), k, n, n as isize, 1) };
        let mut c = vec![-1f32; (m + 1) * ld];
        // SAFETY: m rows of ld values with n <= ld.
        unsafe { gemm_rows(a.as_ptr(), k as isize, 1, &packed, 0..packed.panels(), c.as_mut_ptr(), ld, m, 1.0) };
        for r in 0..=m {
            for col in 0..ld {
                let want = if r < m && col < n { 18.0 } else { -1.0 };
                assert_eq!(c[r * ld + col], want, "row {r} col {col}");
            }
        }
        // Only the second panel: columns 16..20.
        let mut c = vec![-1f32; m * ld];
        // SAFETY: as above.
        unsafe { gemm_rows(a.as_ptr(), k as isize, 1, &packed, 1..2, c.as_mut_ptr(), ld, m, 1.0) };
        for r in 0..m {
            for col in 0..ld {
                let want = if (16..n).contains(&col) { 18.0 } else { -1.0 };
                assert_eq!(c[r * ld + col], want, "panel 1: row {r} col {col}");
            }
        }
    }
}

//! The numerical core of `dictionary`: Matrix PCA without centring and the
//! whitened low-rank residual. Pure functions on `f64` data, so that they can
//! be tested against hand-computed values independently of any graph.
//!
//! All matrices are row-major `Vec<f64>` with explicit dimensions; faer does
//! the eigendecomposition, the SVD and the Cholesky factorisation.

use faer::{Mat, Side};

/// The result of Matrix PCA over the `L` layers of one group and role.
///
/// With `W = [vec W_1 … vec W_L]` (an `n × L` matrix) and the small Gram
/// matrix `G = WᵀW = VΛVᵀ`, the `S` atoms are `D = W V_S Λ_S^{-1/2}`
/// (orthonormal columns) and the coefficients `C = Λ_S^{1/2} V_Sᵀ`, so that
/// `Ŵ_l = Σ_s C[s][l] D_s` is the best rank-`S` approximation of the stack
/// in the Frobenius norm (Eckart–Young), with no mean removed: a shared
/// mean would need its own stored matrix, and MASA's atoms already absorb it.
#[derive(Clone, Debug, PartialEq)]
pub struct MatrixPca {
    /// `S` atoms of `n` elements each (row `s` is `D_s`).
    pub atoms: Vec<Vec<f64>>,
    /// `L` rows of `S` coefficients: `coefficients[l][s] = C[s][l]`.
    pub coefficients: Vec<Vec<f64>>,
    /// All `L` eigenvalues of `G`, largest first (the energy each direction
    /// carries; they sum to `Σ_l ‖W_l‖²`).
    pub eigenvalues: Vec<f64>,
}

impl MatrixPca {
    /// The number of atoms kept.
    pub fn atom_count(&self) -> usize {
        self.atoms.len()
    }

    /// The fraction of the stack's energy (`Σ‖W_l‖²`) the kept atoms explain.
    pub fn explained_energy(&self) -> f64 {
        let total: f64 = self.eigenvalues.iter().map(|l| l.max(0.0)).sum();
        if total <= 0.0 {
            return 1.0;
        }
        let kept: f64 = self.eigenvalues.iter().take(self.atoms.len()).map(|l| l.max(0.0)).sum();
        kept / total
    }

    /// Layer `l` rebuilt from the atoms: `Σ_s C[s][l] D_s`.
    pub fn reconstruct(&self, l: usize) -> Vec<f64> {
        let n = self.atoms.first().map_or(0, Vec::len);
        let mut out = vec![0.0; n];
        for (c, d) in self.coefficients[l].iter().zip(&self.atoms) {
            for (o, x) in out.iter_mut().zip(d) {
                *o += c * x;
            }
        }
        out
    }
}

/// Eigenvalues below this fraction of the largest are treated as zero: their
/// directions carry no energy, and `Λ^{-1/2}` would amplify rounding noise.
const RANK_TOLERANCE: f64 = 1e-12;

/// Matrix PCA of `layers` (each a flattened weight of the same length) keeping
/// at most `atoms` atoms. Fewer come back when the stack has lower rank
/// (identical layers need one atom). See [`MatrixPca`].
pub fn matrix_pca(layers: &[Vec<f64>], atoms: usize) -> Result<MatrixPca, String> {
    let l = layers.len();
    if l == 0 {
        return Err("matrix PCA needs at least one layer".into());
    }
    let n = layers[0].len();
    if let Some((i, w)) = layers.iter().enumerate().find(|(_, w)| w.len() != n) {
        return Err(format!("layer {i} has {} elements where layer 0 has {n}", w.len()));
    }
    if atoms == 0 {
        return Err("matrix PCA needs at least one atom".into());
    }
    if let Some(i) = layers.iter().position(|w| w.iter().any(|x| !x.is_finite())) {
        return Err(format!("layer {i} holds a value that is not finite"));
    }
    // G = WᵀW, L × L: the whole decomposition costs L² dot products of length
    // n plus an L × L eigenproblem, never an n × n one.
    let gram = Mat::<f64>::from_fn(l, l, |i, j| dot(&layers[i], &layers[j]));
    let evd = gram
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| format!("the eigendecomposition of the {l}×{l} Gram matrix failed: {e:?}"))?;
    let (u, s) = (evd.U(), evd.S().column_vector());
    // faer sorts ascending; take them largest first.
    let order: Vec<usize> = (0..l).rev().collect();
    let eigenvalues: Vec<f64> = order.iter().map(|&i| s[i]).collect();
    let largest = eigenvalues.first().copied().unwrap_or(0.0);
    let rank = eigenvalues.iter().take_while(|&&v| v > largest * RANK_TOLERANCE && v > 0.0).count();
    let keep = atoms.min(rank);
    let mut atom_rows = Vec::with_capacity(keep);
    let mut coefficients = vec![vec![0.0; keep]; l];
    for (k, &col) in order.iter().take(keep).enumerate() {
        let lambda = s[col];
        let inv_sqrt = 1.0 / lambda.sqrt();
        let mut d = vec![0.0; n];
        for (li, w) in layers.iter().enumerate() {
            let v = u[(li, col)] * inv_sqrt;
            for (o, x) in d.iter_mut().zip(w) {
                *o += v * x;
            }
        }
        atom_rows.push(d);
        let sqrt = lambda.sqrt();
        for (li, row) in coefficients.iter_mut().enumerate() {
            row[k] = sqrt * u[(li, col)];
        }
    }
    Ok(MatrixPca { atoms: atom_rows, coefficients, eigenvalues })
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A rank-`r` factorisation `ΔW ≈ B·A` of a residual, `B: rows × r`,
/// `A: r × cols`, both row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct LowRank {
    /// `rows × rank`.
    pub b: Vec<f64>,
    /// `rank × cols`.
    pub a: Vec<f64>,
    /// The rank actually used (at most the requested one).
    pub rank: usize,
}

impl LowRank {
    /// `B·A` as a row-major `rows × cols` matrix.
    pub fn product(&self, rows: usize, cols: usize) -> Vec<f64> {
        let mut out = vec![0.0; rows * cols];
        for i in 0..rows {
            for k in 0..self.rank {
                let b = self.b[i * self.rank + k];
                if b == 0.0 {
                    continue;
                }
                let a = &self.a[k * cols..(k + 1) * cols];
                for (o, x) in out[i * cols..(i + 1) * cols].iter_mut().zip(a) {
                    *o += b * x;
                }
            }
        }
        out
    }
}

/// Relative damping added to the diagonal of `XᵀX` before its Cholesky
/// factorisation: calibration inputs rarely span every direction (LayerNorm
/// outputs lie near a hyperplane), and a singular autocorrelation has no
/// Cholesky factor. The damping is relative to the mean diagonal, so it
/// does not depend on the scale of the activations.
pub const WHITENING_DAMPING: f64 = 1e-6;

/// The rank-`rank` approximation of `delta` (`rows × cols`, applied as
/// `x·ΔW` to row vectors `x` of length `rows`) that is best for inputs with
/// autocorrelation `autocorr = XᵀX` (`rows × rows`), or best in the plain
/// Frobenius norm when `autocorr` is `None`.
///
/// With `XᵀX = LLᵀ` (Cholesky), `‖X(ΔW − BA)‖_F = ‖Lᵀ(ΔW − BA)‖_F`, so the
/// truncated SVD `LᵀΔW ≈ U_r Σ_r V_rᵀ` gives `B = L^{-T} U_r Σ_r` and
/// `A = V_rᵀ` (SVD-LLM's whitening, which MASA uses for its local
/// refinement).
pub fn low_rank_residual(
    delta: &[f64],
    rows: usize,
    cols: usize,
    rank: usize,
    autocorr: Option<&[f64]>,
) -> Result<LowRank, String> {
    if delta.len() != rows * cols {
        return Err(format!("the residual has {} elements, not {rows}×{cols}", delta.len()));
    }
    if delta.iter().any(|x| !x.is_finite()) {
        return Err("the residual holds a value that is not finite".into());
    }
    let rank = rank.min(rows).min(cols);
    if rank == 0 {
        return Ok(LowRank { b: Vec::new(), a: Vec::new(), rank: 0 });
    }
    let d = Mat::<f64>::from_fn(rows, cols, |i, j| delta[i * cols + j]);
    let (target, chol) = match autocorr {
        None => (d, None),
        Some(xtx) => {
            if xtx.len() != rows * rows {
                return Err(format!("the autocorrelation has {} elements, not {rows}×{rows}", xtx.len()));
            }
            let mean_diag = (0..rows).map(|i| xtx[i * rows + i]).sum::<f64>() / rows as f64;
            let eps = WHITENING_DAMPING * mean_diag.max(f64::MIN_POSITIVE);
            let m = Mat::<f64>::from_fn(rows, rows, |i, j| xtx[i * rows + j] + if i == j { eps } else { 0.0 });
            let llt =
                m.llt(Side::Lower).map_err(|e| format!("the input autocorrelation has no Cholesky factor: {e:?}"))?;
            let l = llt.L().to_owned();
            // Lᵀ·ΔW
            let lt_d = l.transpose() * &d;
            (lt_d, Some(l))
        }
    };
    let svd = target.thin_svd().map_err(|e| format!("the SVD did not converge: {e:?}"))?;
    let (u, s, v) = (svd.U(), svd.S().column_vector(), svd.V());
    let rank = rank.min(s.nrows());
    // U_r Σ_r, rows × rank
    let mut us = Mat::<f64>::from_fn(rows, rank, |i, k| u[(i, k)] * s[k]);
    if let Some(l) = chol {
        // Solve Lᵀ·B = U_rΣ_r by back substitution (Lᵀ is upper triangular).
        for k in 0..rank {
            for i in (0..rows).rev() {
                let mut acc = us[(i, k)];
                for j in i + 1..rows {
                    acc -= l[(j, i)] * us[(j, k)];
                }
                us[(i, k)] = acc / l[(i, i)];
            }
        }
    }
    let mut b = Vec::with_capacity(rows * rank);
    for i in 0..rows {
        for k in 0..rank {
            b.push(us[(i, k)]);
        }
    }
    let mut a = Vec::with_capacity(rank * cols);
    for k in 0..rank {
        for j in 0..cols {
            a.push(v[(j, k)]);
        }
    }
    Ok(LowRank { b, a, rank })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    /// A deterministic pseudo-random stream (xorshift), so tests need no
    /// random-number crate and always see the same data.
    fn noise(seed: u64, n: usize) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn two_orthogonal_layers_by_hand() {
        // W_1 = (3, 0), W_2 = (0, 4): G = diag(9, 16), so the first atom is
        // (0, 1) with coefficient 4 on layer 2, the second (1, 0) with 3 on
        // layer 1 (signs are free; products are not).
        let pca = matrix_pca(&[vec![3.0, 0.0], vec![0.0, 4.0]], 2).unwrap();
        assert_eq!(pca.eigenvalues.len(), 2);
        assert!((pca.eigenvalues[0] - 16.0).abs() < 1e-12);
        assert!((pca.eigenvalues[1] - 9.0).abs() < 1e-12);
        assert!((pca.atoms[0][0]).abs() < 1e-12 && (pca.atoms[0][1].abs() - 1.0).abs() < 1e-12);
        assert!((pca.coefficients[1][0] * pca.atoms[0][1] - 4.0).abs() < 1e-12);
        assert!((pca.coefficients[0][1] * pca.atoms[1][0] - 3.0).abs() < 1e-12);
        assert!((pca.explained_energy() - 1.0).abs() < 1e-12);
        // One atom keeps the larger direction: 16 of 25.
        let one = matrix_pca(&[vec![3.0, 0.0], vec![0.0, 4.0]], 1).unwrap();
        assert!((one.explained_energy() - 16.0 / 25.0).abs() < 1e-12);
        assert!(max_diff(&one.reconstruct(0), &[0.0, 0.0]) < 1e-12);
        assert!(max_diff(&one.reconstruct(1), &[0.0, 4.0]) < 1e-12);
    }

    #[test]
    fn atoms_are_orthonormal_and_full_rank_reconstructs_exactly() {
        let layers: Vec<Vec<f64>> = (0..5).map(|i| noise(i + 1, 200)).collect();
        let pca = matrix_pca(&layers, 5).unwrap();
        assert_eq!(pca.atom_count(), 5);
        for (i, a) in pca.atoms.iter().enumerate() {
            for (j, b) in pca.atoms.iter().enumerate() {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot(a, b) - want).abs() < 1e-10, "atoms {i},{j}: {}", dot(a, b));
            }
        }
        for (l, w) in layers.iter().enumerate() {
            assert!(max_diff(&pca.reconstruct(l), w) < 1e-10);
        }
        // c_ls = tr(D_sᵀ W_l) = <D_s, W_l>.
        for (l, w) in layers.iter().enumerate() {
            for s in 0..5 {
                assert!((pca.coefficients[l][s] - dot(&pca.atoms[s], w)).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn truncation_error_equals_the_dropped_eigenvalues() {
        // Eckart–Young: Σ_l ‖W_l − Ŵ_l‖² = Σ of the dropped eigenvalues.
        let layers: Vec<Vec<f64>> = (0..6).map(|i| noise(10 + i, 64)).collect();
        let pca = matrix_pca(&layers, 2).unwrap();
        let err: f64 = (0..6)
            .map(|l| pca.reconstruct(l).iter().zip(&layers[l]).map(|(a, b)| (a - b) * (a - b)).sum::<f64>())
            .sum();
        let dropped: f64 = pca.eigenvalues[2..].iter().sum();
        assert!((err - dropped).abs() < 1e-9 * dropped.max(1.0), "{err} vs {dropped}");
    }

    #[test]
    fn identical_layers_need_one_atom_even_when_more_are_asked() {
        let w = noise(3, 50);
        let pca = matrix_pca(&[w.clone(), w.clone(), w.clone()], 3).unwrap();
        assert_eq!(pca.atom_count(), 1);
        assert!(max_diff(&pca.reconstruct(2), &w) < 1e-10);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matrix_pca(&[], 1).is_err());
        assert!(matrix_pca(&[vec![1.0], vec![1.0, 2.0]], 1).unwrap_err().contains("layer 1"));
        assert!(matrix_pca(&[vec![f64::NAN]], 1).is_err());
        assert!(matrix_pca(&[vec![1.0]], 0).is_err());
        assert!(low_rank_residual(&[1.0, 2.0], 2, 2, 1, None).is_err());
        assert!(low_rank_residual(&[1.0; 4], 2, 2, 1, Some(&[1.0])).is_err());
    }

    #[test]
    fn plain_low_rank_matches_a_hand_svd() {
        // diag(5, 2): rank 1 keeps the 5.
        let lr = low_rank_residual(&[5.0, 0.0, 0.0, 2.0], 2, 2, 1, None).unwrap();
        assert_eq!(lr.rank, 1);
        assert!(max_diff(&lr.product(2, 2), &[5.0, 0.0, 0.0, 0.0]) < 1e-12);
        let full = low_rank_residual(&[5.0, 1.0, -3.0, 2.0], 2, 2, 2, None).unwrap();
        assert!(max_diff(&full.product(2, 2), &[5.0, 1.0, -3.0, 2.0]) < 1e-12);
    }

    /// `‖X·M‖_F²` for row-major X (t × rows) and M (rows × cols).
    fn weighted_err(x: &[f64], t: usize, rows: usize, m: &[f64], cols: usize) -> f64 {
        let mut e = 0.0;
        for r in 0..t {
            for c in 0..cols {
                let v: f64 = (0..rows).map(|k| x[r * rows + k] * m[k * cols + c]).sum();
                e += v * v;
            }
        }
        e
    }

    #[test]
    fn whitening_minimises_the_error_on_the_calibration_inputs() {
        let (t, rows, cols) = (40, 6, 5);
        // Inputs with very unequal scales per channel: whitening must weight
        // the residual's rows by them, where a plain SVD does not.
        let mut x = noise(7, t * rows);
        for r in 0..t {
            for k in 0..rows {
                x[r * rows + k] *= [10.0, 0.1, 5.0, 0.2, 1.0, 0.05][k];
            }
        }
        let mut xtx = vec![0.0; rows * rows];
        for r in 0..t {
            for i in 0..rows {
                for j in 0..rows {
                    xtx[i * rows + j] += x[r * rows + i] * x[r * rows + j];
                }
            }
        }
        let delta = noise(8, rows * cols);
        let err_of = |lr: &LowRank| {
            let p = lr.product(rows, cols);
            let m: Vec<f64> = delta.iter().zip(&p).map(|(d, p)| d - p).collect();
            weighted_err(&x, t, rows, &m, cols)
        };
        for rank in 1..cols {
            let w = low_rank_residual(&delta, rows, cols, rank, Some(&xtx)).unwrap();
            let p = low_rank_residual(&delta, rows, cols, rank, None).unwrap();
            assert!(err_of(&w) <= err_of(&p) * (1.0 + 1e-4), "rank {rank}: {} > {}", err_of(&w), err_of(&p));
        }
        // Strictly better at rank 2 on this data, so the weighting is real.
        let w = low_rank_residual(&delta, rows, cols, 2, Some(&xtx)).unwrap();
        let p = low_rank_residual(&delta, rows, cols, 2, None).unwrap();
        assert!(err_of(&w) < 0.9 * err_of(&p));
        // Full rank gives the residual back through the triangular solve.
        let full = low_rank_residual(&delta, rows, cols, cols, Some(&xtx)).unwrap();
        assert!(max_diff(&full.product(rows, cols), &delta) < 1e-8);
    }
}

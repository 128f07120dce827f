//! Similarity measures between activations: cosine, relative mean squared
//! error and linear CKA.
//!
//! These are the numbers every sharing pass reports: how close a compressed
//! block's output stays to the original's (cosine, relative MSE, taken per
//! token on the residual stream), and how similar two layers' representations
//! are (linear CKA, over pooled per-sequence vectors), which methods such as
//! CRaSh use to decide what to share.
//!
//! Everything accumulates in `f64`, because the sums run over millions of
//! `f32` products and cancellation in centred statistics would otherwise eat
//! the digits that distinguish 0.999 from 0.9999.

/// Cosine similarity of two vectors of equal length.
///
/// Two zero vectors are identical (1.0); a zero vector against a non-zero one
/// has no direction in common (0.0). Those conventions keep averages over
/// tokens defined when a model produces exact zeros (padding, masked rows).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    cosine_from_sums(dot, na, nb)
}

fn cosine_from_sums(dot: f64, na: f64, nb: f64) -> f64 {
    match (na == 0.0, nb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        _ => (dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0),
    }
}

/// Relative mean squared error `Σ(r − x)² / Σ r²` of `approx` against
/// `reference`: 0 for a perfect match, 1 for predicting zeros. A zero
/// reference gives 0 when `approx` is zero too and infinity otherwise.
pub fn relative_mse(reference: &[f32], approx: &[f32]) -> f64 {
    debug_assert_eq!(reference.len(), approx.len());
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    for (&r, &x) in reference.iter().zip(approx) {
        let d = r as f64 - x as f64;
        err += d * d;
        norm += r as f64 * r as f64;
    }
    ratio(err, norm)
}

fn ratio(err: f64, norm: f64) -> f64 {
    if norm == 0.0 { if err == 0.0 { 0.0 } else { f64::INFINITY } } else { err / norm }
}

/// Streaming fidelity of an approximation against a reference, row by row.
///
/// A row is one token's vector on the residual stream (the last dim of a
/// `[batch, seq, hidden]` activation). Feeding batches one at a time keeps
/// memory at one batch of activations however much data is measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FidelityAccumulator {
    rows: u64,
    cos_sum: f64,
    cos_min: f64,
    err_sq: f64,
    ref_sq: f64,
    max_abs: f64,
}

impl FidelityAccumulator {
    /// An empty accumulator.
    pub fn new() -> FidelityAccumulator {
        FidelityAccumulator { cos_min: f64::INFINITY, ..Default::default() }
    }

    /// Adds rows of `dim` elements. `keep[i]` (when given) says whether row
    /// `i` counts: padding tokens of an encoder are computed but meaningless.
    /// Fails when the lengths do not fit.
    pub fn add(&mut self, reference: &[f32], approx: &[f32], dim: usize, keep: Option<&[bool]>) -> Result<(), String> {
        if reference.len() != approx.len() {
            return Err(format!("reference has {} elements, the approximation {}", reference.len(), approx.len()));
        }
        if dim == 0 || !reference.len().is_multiple_of(dim) {
            return Err(format!("{} elements do not split into rows of {dim}", reference.len()));
        }
        let rows = reference.len() / dim;
        if let Some(k) = keep
            && k.len() != rows
        {
            return Err(format!("the row mask has {} entries for {rows} rows", k.len()));
        }
        for i in 0..rows {
            if keep.is_some_and(|k| !k[i]) {
                continue;
            }
            let (r, x) = (&reference[i * dim..(i + 1) * dim], &approx[i * dim..(i + 1) * dim]);
            let (mut dot, mut nr, mut nx, mut err) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
            for (&a, &b) in r.iter().zip(x) {
                let (a, b) = (a as f64, b as f64);
                dot += a * b;
                nr += a * a;
                nx += b * b;
                err += (a - b) * (a - b);
                self.max_abs = self.max_abs.max((a - b).abs());
            }
            let c = cosine_from_sums(dot, nr, nx);
            self.cos_sum += c;
            self.cos_min = self.cos_min.min(c);
            self.err_sq += err;
            self.ref_sq += nr;
            self.rows += 1;
        }
        Ok(())
    }

    /// Number of rows counted.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Mean cosine over rows (NaN before any row).
    pub fn mean_cosine(&self) -> f64 {
        if self.rows == 0 { f64::NAN } else { self.cos_sum / self.rows as f64 }
    }

    /// The smallest row cosine (NaN before any row).
    pub fn min_cosine(&self) -> f64 {
        if self.rows == 0 { f64::NAN } else { self.cos_min }
    }

    /// `Σ‖r − x‖² / Σ‖r‖²` over all rows counted.
    pub fn relative_mse(&self) -> f64 {
        ratio(self.err_sq, self.ref_sq)
    }

    /// The largest absolute elementwise difference seen.
    pub fn max_abs_diff(&self) -> f64 {
        self.max_abs
    }
}

/// A dense row-major matrix of `f64`, `rows × cols`: `n` samples of `d`
/// features for CKA.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples {
    /// Number of samples (rows).
    pub rows: usize,
    /// Features per sample (columns).
    pub cols: usize,
    /// Row-major data, `rows * cols` long.
    pub data: Vec<f64>,
}

impl Samples {
    /// An empty sample set with `cols` features.
    pub fn new(cols: usize) -> Samples {
        Samples { rows: 0, cols, data: Vec::new() }
    }

    /// Builds from row-major data; fails when the length does not fit.
    pub fn from_rows(rows: usize, cols: usize, data: Vec<f64>) -> Result<Samples, String> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(format!("{} values do not form a {rows}×{cols} matrix", data.len()));
        }
        Ok(Samples { rows, cols, data })
    }

    /// Appends one sample; fails when its length is not `cols`.
    pub fn push(&mut self, row: &[f64]) -> Result<(), String> {
        if row.len() != self.cols {
            return Err(format!("a sample of {} features does not fit a set of {}", row.len(), self.cols));
        }
        self.data.extend_from_slice(row);
        self.rows += 1;
        Ok(())
    }

    /// The samples with every column's mean subtracted.
    fn centred(&self) -> Vec<f64> {
        let mut mean = vec![0.0f64; self.cols];
        for r in self.data.chunks_exact(self.cols.max(1)) {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += v;
            }
        }
        let n = self.rows.max(1) as f64;
        mean.iter_mut().for_each(|m| *m /= n);
        let mut out = self.data.clone();
        for r in out.chunks_exact_mut(self.cols.max(1)) {
            for (v, m) in r.iter_mut().zip(&mean) {
                *v -= m;
            }
        }
        out
    }
}

/// The (biased) linear HSIC of two sample sets of the same `n` samples:
/// `tr(K H L H) / (n − 1)²` with `K = XXᵀ`, `L = YYᵀ` and the centring
/// matrix `H = I − 11ᵀ/n`.
///
/// It is computed as `‖X̃ᵀỸ‖²_F / (n − 1)²` with column-centred `X̃`, `Ỹ`
/// (the same number, since `tr(K̃L̃) = ‖X̃ᵀỸ‖²_F`) when the features are fewer
/// than the samples, and from the centred Gram matrices otherwise, so the
/// cost is `O(n·d·min(n, d))` either way.
pub fn hsic_linear(x: &Samples, y: &Samples) -> Result<f64, String> {
    if x.rows != y.rows {
        return Err(format!("HSIC needs the same samples on both sides, got {} and {}", x.rows, y.rows));
    }
    let n = x.rows;
    if n < 2 {
        return Err(format!("HSIC needs at least 2 samples, got {n}"));
    }
    let (xc, yc) = (x.centred(), y.centred());
    let (dx, dy) = (x.cols, y.cols);
    let sum = if dx.max(dy) < n {
        // Feature space: C = X̃ᵀỸ (dx × dy), HSIC ∝ ‖C‖².
        let mut c = vec![0.0f64; dx * dy];
        for i in 0..n {
            let (xr, yr) = (&xc[i * dx..(i + 1) * dx], &yc[i * dy..(i + 1) * dy]);
            for (a, &xv) in xr.iter().enumerate() {
                let row = &mut c[a * dy..(a + 1) * dy];
                for (cv, &yv) in row.iter_mut().zip(yr) {
                    *cv += xv * yv;
                }
            }
        }
        c.iter().map(|v| v * v).sum::<f64>()
    } else {
        // Sample space: centred Grams K̃ = X̃X̃ᵀ and L̃ = ỸỸᵀ, HSIC ∝ Σ K̃ ∘ L̃.
        let gram = |m: &[f64], d: usize| {
            let mut g = vec![0.0f64; n * n];
            for i in 0..n {
                for j in i..n {
                    let v: f64 = m[i * d..(i + 1) * d].iter().zip(&m[j * d..(j + 1) * d]).map(|(a, b)| a * b).sum();
                    g[i * n + j] = v;
                    g[j * n + i] = v;
                }
            }
            g
        };
        let (k, l) = (gram(&xc, dx), gram(&yc, dy));
        k.iter().zip(&l).map(|(a, b)| a * b).sum::<f64>()
    };
    let scale = (n as f64 - 1.0) * (n as f64 - 1.0);
    Ok(sum / scale)
}

/// Linear CKA: `HSIC(X, Y) / √(HSIC(X, X) · HSIC(Y, Y))`, in [0, 1]. It is
/// invariant to orthogonal transforms, isotropic scaling and translation of
/// either side, so it compares what two layers represent rather than how.
/// A side with no variance (all samples equal) has no similarity to report;
/// that is an error rather than a NaN in a report.
pub fn linear_cka(x: &Samples, y: &Samples) -> Result<f64, String> {
    let xy = hsic_linear(x, y)?;
    let xx = hsic_linear(x, x)?;
    let yy = hsic_linear(y, y)?;
    if xx <= 0.0 || yy <= 0.0 {
        return Err("CKA is undefined when one side has no variance across samples".to_string());
    }
    Ok((xy / (xx.sqrt() * yy.sqrt())).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values computed with numpy:
    //   X = [[1,2,.5],[.3,-1,2],[2.5,.1,-.7],[-1.2,.8,1.1],[0,1.5,-2]]
    //   Y = [[.2,1,-.5,3],[1.3,-.4,.9,.1],[-2,.6,1.7,-1.1],[.5,.5,.5,.5],[1.1,-1.9,.3,2.2]]
    //   H = eye(5) - ones((5,5))/5
    //   hsic(K, L) = trace(K@H@L@H) / (n-1)**2,  K = X@X.T, L = Y@Y.T
    const X: [[f64; 3]; 5] = [[1.0, 2.0, 0.5], [0.3, -1.0, 2.0], [2.5, 0.1, -0.7], [-1.2, 0.8, 1.1], [0.0, 1.5, -2.0]];
    const Y: [[f64; 4]; 5] = [
        [0.2, 1.0, -0.5, 3.0],
        [1.3, -0.4, 0.9, 0.1],
        [-2.0, 0.6, 1.7, -1.1],
        [0.5, 0.5, 0.5, 0.5],
        [1.1, -1.9, 0.3, 2.2],
    ];

    fn samples<const D: usize>(m: &[[f64; D]]) -> Samples {
        Samples::from_rows(m.len(), D, m.iter().flatten().copied().collect()).unwrap()
    }

    #[test]
    fn hsic_and_cka_match_numpy() {
        let (x, y) = (samples(&X), samples(&Y));
        // n = 5 > d: the feature-space path.
        assert!((hsic_linear(&x, &y).unwrap() - 7.332822500000002).abs() < 1e-12);
        assert!((linear_cka(&x, &y).unwrap() - 0.4288830694121147).abs() < 1e-12);
        assert!((linear_cka(&x, &x).unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn gram_path_agrees_with_feature_path() {
        // Pad the features with zero columns so that d >= n and the Gram path
        // runs; zero columns change neither HSIC nor CKA.
        let pad = |m: &Samples, extra: usize| {
            let mut data = Vec::new();
            for r in m.data.chunks(m.cols) {
                data.extend_from_slice(r);
                data.extend(std::iter::repeat_n(0.0, extra));
            }
            Samples::from_rows(m.rows, m.cols + extra, data).unwrap()
        };
        let (x, y) = (pad(&samples(&X), 4), pad(&samples(&Y), 3));
        assert!(x.cols >= x.rows && y.cols >= y.rows);
        assert!((hsic_linear(&x, &y).unwrap() - 7.332822500000002).abs() < 1e-12);
        assert!((linear_cka(&x, &y).unwrap() - 0.4288830694121147).abs() < 1e-12);
    }

    #[test]
    fn cka_is_invariant_to_rotation_scale_and_shift() {
        let x = samples(&X);
        // A rotation about the z axis by 0.7 rad, scale 3, shift by 1.
        let (c, s) = (0.7f64.cos(), 0.7f64.sin());
        let r = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]];
        let mut data = Vec::new();
        for row in &X {
            for col in r.iter().take(3) {
                let v: f64 = (0..3).map(|k| row[k] * col[k]).sum();
                data.push(3.0 * v + 1.0);
            }
        }
        let z = Samples::from_rows(5, 3, data).unwrap();
        assert!((linear_cka(&x, &z).unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn cka_rejects_bad_input() {
        let x = samples(&X);
        let y = Samples::from_rows(2, 3, vec![0.0; 6]).unwrap();
        assert!(linear_cka(&x, &y).unwrap_err().contains("same samples"));
        let flat = Samples::from_rows(5, 3, vec![1.0; 15]).unwrap();
        assert!(linear_cka(&x, &flat).unwrap_err().contains("no variance"));
        assert!(Samples::from_rows(2, 2, vec![0.0; 3]).is_err());
    }

    #[test]
    fn cosine_and_relative_mse_match_numpy() {
        // a = X.ravel(), b = Y[:, :3].ravel()
        let a: Vec<f32> = X.iter().flatten().map(|&v| v as f32).collect();
        let b: Vec<f32> = Y.iter().flat_map(|r| r[..3].iter()).map(|&v| v as f32).collect();
        assert!((cosine(&a, &b) - -0.22133927055396352).abs() < 1e-6);
        assert!((relative_mse(&a, &b) - 1.9853548629365374).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[0.0, 0.0]), 1.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert_eq!(relative_mse(&[0.0], &[0.0]), 0.0);
        assert_eq!(relative_mse(&[0.0], &[1.0]), f64::INFINITY);
    }

    #[test]
    fn accumulator_is_per_row_and_respects_the_mask() {
        let mut acc = FidelityAccumulator::new();
        // Row 0 identical, row 1 opposite, row 2 masked out.
        let r = [1.0f32, 2.0, 3.0, 4.0, 9.0, 9.0];
        let x = [1.0f32, 2.0, -3.0, -4.0, 0.0, 0.0];
        acc.add(&r, &x, 2, Some(&[true, true, false])).unwrap();
        assert_eq!(acc.rows(), 2);
        assert!((acc.mean_cosine() - 0.0).abs() < 1e-12);
        assert!((acc.min_cosine() - -1.0).abs() < 1e-12);
        // err = 6² + 8² = 100, ref = 1 + 4 + 9 + 16 = 30.
        assert!((acc.relative_mse() - 100.0 / 30.0).abs() < 1e-12);
        assert_eq!(acc.max_abs_diff(), 8.0);
        assert!(acc.add(&r, &x[..4], 2, None).is_err());
        assert!(acc.add(&r, &x, 4, None).is_err());
        assert!(acc.add(&r, &x, 2, Some(&[true])).is_err());
    }
}

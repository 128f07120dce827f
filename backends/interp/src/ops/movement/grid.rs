//! GridSample (any number of spatial dims) and AffineGrid (2-D and 3-D),
//! following PyTorch's `grid_sample` / `affine_grid` as ONNX specifies.

use super::resize::cubic_kernel;
use super::{checked_numel, from_f64, real_values, strides, to_sizes, unravel};
use crate::util::{i64_values, single, tensor_arg};
use sharc_ir::op::{AffineGrid, GridSample};
use sharc_ir::{EvalError, Value};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Interp {
    Nearest,
    Linear,
    Cubic,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Padding {
    Zeros,
    Border,
    Reflection,
}

/// Maps a normalised coordinate in [-1, 1] to a pixel coordinate.
fn denormalize(v: f64, len: usize, align_corners: bool) -> f64 {
    let len = len as f64;
    if align_corners { (v + 1.0) / 2.0 * (len - 1.0) } else { ((v + 1.0) * len - 1.0) / 2.0 }
}

/// Reflects `x` by the borders until it lies within `[lo, hi]`.
fn reflect(x: f64, lo: f64, hi: f64) -> f64 {
    let range = hi - lo;
    if range <= 0.0 {
        return lo;
    }
    let (dx, from_low) = if x < lo {
        (lo - x, true)
    } else if x > hi {
        (x - hi, false)
    } else {
        return x;
    };
    let flips = (dx / range).trunc();
    let r = dx - flips * range;
    let even = flips % 2.0 == 0.0;
    if even == from_low { lo + r } else { hi - r }
}

/// One spatial dim's sampling context.
struct Dim {
    len: usize,
    lo: f64,
    hi: f64,
}

impl Dim {
    /// The input position an integer tap reads under the padding mode
    /// (`None`: the tap reads zero).
    fn pixel(&self, i: i64, pad: Padding) -> Option<usize> {
        let n = self.len as i64;
        match pad {
            Padding::Zeros => (0..n).contains(&i).then_some(i as usize),
            Padding::Border => Some(i.clamp(0, n - 1) as usize),
            Padding::Reflection => Some((reflect(i as f64, self.lo, self.hi).trunc() as i64).clamp(0, n - 1) as usize),
        }
    }
}

/// The weighted taps of one coordinate along one dim.
fn dim_taps(x: f64, d: &Dim, interp: Interp, pad: Padding) -> Vec<(Option<usize>, f64)> {
    let x = if interp == Interp::Nearest { x.round_ties_even() } else { x };
    let x = if x < d.lo || x > d.hi {
        match pad {
            Padding::Border => x.clamp(0.0, d.len as f64 - 1.0),
            Padding::Reflection => reflect(x, d.lo, d.hi),
            Padding::Zeros => x,
        }
    } else {
        x
    };
    match interp {
        Interp::Nearest => vec![(d.pixel(x.trunc() as i64, pad), 1.0)],
        Interp::Linear => {
            let x0 = x.floor();
            let t = x - x0;
            let x0 = x0 as i64;
            vec![(d.pixel(x0, pad), 1.0 - t), (d.pixel(x0 + 1, pad), t)]
        }
        Interp::Cubic => {
            let x0 = x.floor();
            let t = x - x0;
            let x0 = x0 as i64;
            (-1..=2).map(|j| (d.pixel(x0 + j, pad), cubic_kernel(j as f64 - t, -0.75))).collect()
        }
    }
}

pub(super) fn grid_sample(a: &GridSample, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let x = tensor_arg(inputs, 0, "X")?;
    let grid = tensor_arg(inputs, 1, "grid")?;
    let interp = match a.mode.as_str() {
        "linear" | "bilinear" => Interp::Linear,
        "nearest" => Interp::Nearest,
        "cubic" | "bicubic" => Interp::Cubic,
        m => return Err(EvalError::new(format!("unknown mode '{m}'"))),
    };
    let pad = match a.padding_mode.as_str() {
        "zeros" => Padding::Zeros,
        "border" => Padding::Border,
        "reflection" => Padding::Reflection,
        m => return Err(EvalError::new(format!("unknown padding_mode '{m}'"))),
    };
    let (xs, gs) = (x.shape(), grid.shape());
    let r = xs.len().saturating_sub(2);
    if r == 0 || gs.len() != r + 2 || gs[0] != xs[0] || gs[r + 1] != r {
        return Err(EvalError::new(format!("X {xs:?} must be (N, C, d1..dr) and grid {gs:?} must be (N, D1..Dr, r)")));
    }
    let (n, c) = (xs[0], xs[1]);
    let in_sp = &xs[2..];
    let out_sp = &gs[1..r + 1];
    let dims: Vec<Dim> = in_sp
        .iter()
        .map(|&len| {
            let (lo, hi) = if a.align_corners { (0.0, len as f64 - 1.0) } else { (-0.5, len as f64 - 0.5) };
            Dim { len, lo, hi }
        })
        .collect();
    let mut out_shape = vec![n, c];
    out_shape.extend_from_slice(out_sp);
    let out_size = checked_numel(out_sp)?;
    let in_size = checked_numel(in_sp)?;
    if in_size == 0 && out_size * n * c > 0 {
        return Err(EvalError::new(format!("cannot sample from the empty input {xs:?}")));
    }
    let xv = real_values(x, "X")?;
    let gv = real_values(grid, "grid")?;
    let ist = strides(in_sp);
    let mut out = vec![0.0; n * c * out_size];
    for b in 0..n {
        for o in 0..out_size {
            let g = &gv[(b * out_size + o) * r..][..r];
            // grid's last axis lists coordinates fastest dim first (x, y, z).
            let taps: Vec<Vec<(Option<usize>, f64)>> = (0..r)
                .map(|d| dim_taps(denormalize(g[r - 1 - d], in_sp[d], a.align_corners), &dims[d], interp, pad))
                .collect();
            // The product of the per-dim taps: (flat input offset, weight).
            let mut combos: Vec<(Option<usize>, f64)> = vec![(Some(0), 1.0)];
            for (t, &stride) in taps.iter().zip(&ist) {
                combos = combos
                    .iter()
                    .flat_map(|&(off, w)| {
                        t.iter().map(move |&(p, tw)| (off.zip(p).map(|(o, p)| o + p * stride), w * tw))
                    })
                    .collect();
            }
            for ch in 0..c {
                let plane = &xv[(b * c + ch) * in_size..][..in_size];
                let v: f64 = combos.iter().filter_map(|&(off, w)| off.map(|o| w * plane[o])).sum();
                out[(b * c + ch) * out_size + o] = v;
            }
        }
    }
    single(from_f64(x.dtype(), &out_shape, out)?)
}

/// Evenly spaced normalised positions of `len` pixels.
fn base_positions(len: usize, align_corners: bool) -> Vec<f64> {
    (0..len)
        .map(|i| {
            let i = i as f64;
            let n = len as f64;
            if !align_corners {
                (2.0 * i + 1.0) / n - 1.0
            } else if len > 1 {
                -1.0 + 2.0 * i / (n - 1.0)
            } else {
                0.0
            }
        })
        .collect()
}

pub(super) fn affine_grid(a: &AffineGrid, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let theta = tensor_arg(inputs, 0, "theta")?;
    let size = to_sizes(&i64_values(tensor_arg(inputs, 1, "size")?, "size")?, "size")?;
    let r = size.len().saturating_sub(2);
    if !(r == 2 || r == 3) {
        return Err(EvalError::new(format!("size must be (N, C, H, W) or (N, C, D, H, W), got {size:?}")));
    }
    let n = size[0];
    if theta.shape() != [n, r, r + 1] {
        return Err(EvalError::new(format!(
            "theta must have shape [{n}, {r}, {}] for size {size:?}, got {:?}",
            r + 1,
            theta.shape()
        )));
    }
    let th = real_values(theta, "theta")?;
    let sp = &size[2..];
    let pos: Vec<Vec<f64>> = sp.iter().map(|&l| base_positions(l, a.align_corners)).collect();
    let count = checked_numel(sp)?;
    let mut out = Vec::with_capacity(n * count * r);
    let mut idx = vec![0; r];
    for b in 0..n {
        let m = &th[b * r * (r + 1)..][..r * (r + 1)];
        for p in 0..count {
            unravel(p, sp, &mut idx);
            // Homogeneous source point (x, y[, z], 1): x runs along the last dim.
            let mut h: Vec<f64> = (0..r).map(|k| pos[r - 1 - k][idx[r - 1 - k]]).collect();
            h.push(1.0);
            for row in 0..r {
                out.push((0..=r).map(|k| m[row * (r + 1) + k] * h[k]).sum());
            }
        }
    }
    let mut shape = vec![n];
    shape.extend_from_slice(sp);
    shape.push(r);
    single(from_f64(theta.dtype(), &shape, out)?)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::reflect;
    use sharc_ir::Op;
    use sharc_ir::op::{AffineGrid, GridSample};

    fn gs(mode: &str, padding: &str, align: bool) -> Op {
        Op::GridSample(GridSample { align_corners: align, mode: mode.into(), padding_mode: padding.into() })
    }

    #[test]
    fn reflection_folds_back() {
        assert_eq!(reflect(-1.0, -0.5, 3.5), 0.0);
        assert_eq!(reflect(5.0, -0.5, 3.5), 2.0);
        assert_eq!(reflect(9.0, 0.0, 3.0), 3.0);
        assert_eq!(reflect(1.0, 0.0, 3.0), 1.0);
    }

    #[test]
    fn matches_reference_on_a_small_image() {
        // X = 0..16 in 1x1x4x4; values from onnx.reference for each mode.
        let x = iota(&[1, 1, 4, 4]);
        let grid = f(&[1, 1, 3, 2], &[-0.9, -0.8, 0.3, 0.55, 1.2, -1.3]);
        let cases: [(&str, &str, bool, [f64; 3]); 6] = [
            ("linear", "zeros", false, [0.0, 12.5, 0.0]),
            ("linear", "border", true, [1.35, 11.249999, 3.0]),
            ("nearest", "reflection", false, [0.0, 14.0, 3.0]),
            ("cubic", "zeros", false, [-0.27641237, 14.509822, -0.01535447]),
            ("cubic", "border", false, [-0.35324985, 12.878746, 3.0]),
            ("linear", "reflection", true, [1.35, 11.249999, 4.4999995]),
        ];
        for (mode, pad, align, want) in cases {
            let out = run1(gs(mode, pad, align), vec![Some(x.clone()), Some(grid.clone())]).unwrap();
            assert_eq!(out.shape(), &[1, 1, 1, 3]);
            close(&fv(&out), &want, 1e-5);
        }
    }

    #[test]
    fn volumetric_and_bad_shapes() {
        let x = iota(&[1, 2, 2, 2, 2]);
        // The centre of the volume averages all eight voxels.
        let grid = f(&[1, 1, 1, 1, 3], &[0., 0., 0.]);
        let out = run1(gs("linear", "zeros", false), vec![Some(x.clone()), Some(grid)]).unwrap();
        assert_eq!(out.shape(), &[1, 2, 1, 1, 1]);
        close(&fv(&out), &[3.5, 11.5], 1e-6);
        let bad = f(&[1, 1, 1, 2], &[0., 0.]);
        assert!(run1(gs("linear", "zeros", false), vec![Some(x), Some(bad)]).is_err());
    }

    #[test]
    fn affine_grid_identity_and_translation() {
        let theta = f(&[1, 2, 3], &[1., 0., 0.5, 0., 1., 0.]);
        let out = run1(
            Op::AffineGrid(AffineGrid { align_corners: false }),
            vec![Some(theta.clone()), Some(i(&[4], &[1, 1, 2, 2]))],
        )
        .unwrap();
        assert_eq!(out.shape(), &[1, 2, 2, 2]);
        assert_eq!(fv(&out), vec![0.0, -0.5, 1.0, -0.5, 0.0, 0.5, 1.0, 0.5]);
        let out = run1(
            Op::AffineGrid(AffineGrid { align_corners: true }),
            vec![Some(theta.clone()), Some(i(&[4], &[1, 1, 2, 3]))],
        )
        .unwrap();
        assert_eq!(fv(&out)[..6], [-0.5, -1.0, 0.5, -1.0, 1.5, -1.0]);
        assert!(
            run1(
                Op::AffineGrid(AffineGrid { align_corners: true }),
                vec![Some(theta), Some(i(&[5], &[1, 1, 2, 2, 2]))]
            )
            .is_err()
        );
    }
}

//! Resize: nearest, (anti-aliased) linear and cubic interpolation over any
//! subset of axes, with every coordinate transformation mode of opset 19.
//!
//! Interpolation is separable, so the input is resized one axis at a time
//! (in the order of `axes`), as ONNX's reference implementation does. For
//! each axis and each output position we compute the source positions and
//! their weights once ([`Taps`]), then sweep every line along that axis.
//! Linear and cubic work in `f64` and round back to the input type; nearest
//! only copies elements, so it works for every dtype and is exact for
//! 64-bit integers.

use super::{FILL, checked_numel, concat_flat, from_f64, real_values, resolve_axes, strides, take, unravel};
use crate::util::{i64_values, opt_tensor_arg, single, tensor_arg};
use sharc_ir::op::{CoordinateTransform, KeepAspectRatio, NearestMode, Resize, ResizeMode};
use sharc_ir::{EvalError, Tensor, Value};

/// What Resize does along one axis.
#[derive(Clone, Debug)]
struct AxisPlan {
    axis: usize,
    input: usize,
    output: usize,
    scale: f64,
    roi: (f64, f64),
}

/// Maps an output coordinate to the input coordinate it samples.
fn source_coord(mode: CoordinateTransform, y: f64, p: &AxisPlan) -> f64 {
    let in_w = p.input as f64;
    // The (possibly fractional) output length the scale implies; ONNX uses
    // it, not the rounded length, in the align_corners family of formulas.
    let out_w = p.scale * in_w;
    match mode {
        CoordinateTransform::HalfPixel => (y + 0.5) / p.scale - 0.5,
        CoordinateTransform::HalfPixelSymmetric => {
            let adjustment = p.output as f64 / out_w;
            let offset = in_w / 2.0 * (1.0 - adjustment);
            offset + (y + 0.5) / p.scale - 0.5
        }
        CoordinateTransform::PytorchHalfPixel => {
            if p.output > 1 {
                (y + 0.5) / p.scale - 0.5
            } else {
                0.0
            }
        }
        CoordinateTransform::AlignCorners => {
            if out_w == 1.0 {
                0.0
            } else {
                y * (in_w - 1.0) / (out_w - 1.0)
            }
        }
        CoordinateTransform::Asymmetric => y / p.scale,
        CoordinateTransform::TfHalfPixelForNearest => (y + 0.5) / p.scale,
        CoordinateTransform::TfCropAndResize => {
            let (start, end) = p.roi;
            let x = if out_w == 1.0 {
                (end - start) * (in_w - 1.0) / 2.0
            } else {
                y * (end - start) * (in_w - 1.0) / (out_w - 1.0)
            };
            x + start * (in_w - 1.0)
        }
    }
}

/// Keys' cubic convolution kernel with parameter `a`.
pub(super) fn cubic_kernel(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

/// The weighted input positions one output position reads (`None` when it
/// takes the extrapolation value).
type Taps = Option<Vec<(i64, f64)>>;

/// Source positions and weights for one output position of linear or cubic
/// interpolation. Positions may fall outside the input; callers clamp them.
fn filter_taps(r: &Resize, x: f64, scale: f64) -> Vec<(i64, f64)> {
    // The tap left of x, with the fraction in (0, 1]: at an integer x we
    // step one left so both kernel halves are evaluated the same way.
    let mut base = x.floor();
    let mut ratio = x - base;
    if ratio == 0.0 {
        base -= 1.0;
        ratio = 1.0;
    }
    let base = base as i64;
    let a = r.cubic_coeff_a as f64;
    match (r.mode, r.antialias) {
        (ResizeMode::Cubic, false) => (-1..=2).map(|j| (base + j, cubic_kernel(j as f64 - ratio, a))).collect(),
        (_, false) => vec![(base, 1.0 - ratio), (base + 1, ratio)],
        (mode, true) => {
            // Stretch the kernel by 1/scale when downsampling.
            let s = scale.min(1.0);
            let support = if mode == ResizeMode::Cubic { 2.0 } else { 1.0 };
            let start = (-support / s).floor() as i64 + 1;
            let n = 2 - 2 * start;
            let taps: Vec<(i64, f64)> = (0..n)
                .map(|j| {
                    let t = (start + j) as f64 - ratio;
                    let w = if mode == ResizeMode::Cubic {
                        cubic_kernel(s * t, a)
                    } else {
                        (1.0 - (t * s).abs()).clamp(0.0, 1.0)
                    };
                    (base + start + j, w)
                })
                .collect();
            let sum: f64 = taps.iter().map(|t| t.1).sum();
            taps.into_iter().map(|(p, w)| (p, w / sum)).collect()
        }
    }
}

/// The nearest input position for one output coordinate.
fn nearest_index(mode: NearestMode, x: f64) -> i64 {
    let f = x.floor();
    let ratio = x - f;
    if ratio == 0.0 {
        return f as i64;
    }
    let up = match mode {
        NearestMode::RoundPreferFloor => ratio > 0.5,
        NearestMode::RoundPreferCeil => ratio >= 0.5,
        NearestMode::Floor => false,
        NearestMode::Ceil => true,
    };
    f as i64 + up as i64
}

/// All taps of one axis, after exclude_outside and clamping.
fn axis_taps(r: &Resize, p: &AxisPlan) -> Vec<Taps> {
    let n = p.input as i64;
    (0..p.output)
        .map(|y| {
            let x = source_coord(r.coordinate_transformation_mode, y as f64, p);
            if r.coordinate_transformation_mode == CoordinateTransform::TfCropAndResize
                && (x < 0.0 || x > (p.input as f64 - 1.0))
            {
                return None;
            }
            let mut taps = match r.mode {
                ResizeMode::Nearest => vec![(nearest_index(r.nearest_mode, x), 1.0)],
                _ => filter_taps(r, x, p.scale),
            };
            if r.exclude_outside {
                for t in taps.iter_mut() {
                    if t.0 < 0 || t.0 >= n {
                        t.1 = 0.0;
                    }
                }
                let sum: f64 = taps.iter().map(|t| t.1).sum();
                let sum = if sum == 0.0 { 1.0 } else { sum };
                for t in taps.iter_mut() {
                    t.1 /= sum;
                }
            }
            Some(taps.into_iter().map(|(i, w)| (i.clamp(0, n - 1), w)).collect())
        })
        .collect()
}

/// An optional input given as an empty tensor counts as absent.
fn nonempty(t: Option<&Tensor>) -> Option<&Tensor> {
    t.filter(|t| !t.is_empty())
}

/// Works out, per resized axis, the input and output lengths, the scale
/// and the region of interest, following the rules for `scales`, `sizes`
/// and `keep_aspect_ratio_policy`.
fn plan(r: &Resize, x: &Tensor, inputs: &[Option<Value>]) -> Result<Vec<AxisPlan>, EvalError> {
    let rank = x.rank();
    let shape = x.shape();
    let axes = match &r.axes {
        Some(a) => resolve_axes(a, rank)?,
        None => (0..rank).collect(),
    };
    let scales = nonempty(opt_tensor_arg(inputs, 2, "scales")?);
    let sizes = nonempty(opt_tensor_arg(inputs, 3, "sizes")?);
    let roi = match nonempty(opt_tensor_arg(inputs, 1, "roi")?) {
        Some(t) if r.coordinate_transformation_mode == CoordinateTransform::TfCropAndResize => {
            let v = real_values(t, "roi")?;
            if v.len() != 2 * axes.len() {
                return Err(EvalError::new(format!("roi has {} entries, expected {}", v.len(), 2 * axes.len())));
            }
            Some(v)
        }
        _ => None,
    };
    let roi_of = |k: usize| roi.as_ref().map(|v| (v[k], v[k + axes.len()])).unwrap_or((0.0, 1.0));
    let mut plans = Vec::with_capacity(axes.len());
    match (scales, sizes) {
        (Some(_), Some(_)) => return Err(EvalError::new("only one of scales and sizes may be given")),
        (None, None) => return Err(EvalError::new("one of scales and sizes must be given")),
        (Some(s), None) => {
            let s = real_values(s, "scales")?;
            if s.len() != axes.len() {
                return Err(EvalError::new(format!("scales has {} entries for {} axes", s.len(), axes.len())));
            }
            for (k, &axis) in axes.iter().enumerate() {
                if !s[k].is_finite() || s[k] <= 0.0 {
                    return Err(EvalError::new(format!("scales must be positive, got {:?}", s)));
                }
                let output = (s[k] * shape[axis] as f64).floor() as usize;
                plans.push(AxisPlan { axis, input: shape[axis], output, scale: s[k], roi: roi_of(k) });
            }
        }
        (None, Some(t)) => {
            let sz = i64_values(t, "sizes")?;
            if sz.len() != axes.len() {
                return Err(EvalError::new(format!("sizes has {} entries for {} axes", sz.len(), axes.len())));
            }
            let sz = super::to_sizes(&sz, "sizes")?;
            if let Some(k) = (0..axes.len()).find(|&k| shape[axes[k]] == 0 && sz[k] != 0) {
                return Err(EvalError::new(format!("cannot resize the empty axis {} to {}", axes[k], sz[k])));
            }
            let ratios: Vec<f64> = axes
                .iter()
                .zip(&sz)
                .map(|(&a, &o)| if shape[a] == 0 { 1.0 } else { o as f64 / shape[a] as f64 })
                .collect();
            let common = match r.keep_aspect_ratio_policy {
                KeepAspectRatio::Stretch => None,
                KeepAspectRatio::NotLarger => ratios.iter().copied().reduce(f64::min),
                KeepAspectRatio::NotSmaller => ratios.iter().copied().reduce(f64::max),
            };
            for (k, &axis) in axes.iter().enumerate() {
                let (output, scale) = match common {
                    None => (sz[k], ratios[k]),
                    Some(s) => ((s * shape[axis] as f64 + 0.5).floor() as usize, s),
                };
                plans.push(AxisPlan { axis, input: shape[axis], output, scale, roi: roi_of(k) });
            }
        }
    }
    Ok(plans)
}

fn is_identity(p: &AxisPlan) -> bool {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs());
    close(p.scale, 1.0) && p.output == p.input && close(p.roi.0, 0.0) && close(p.roi.1, 1.0)
}

pub(super) fn resize(r: &Resize, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let x = tensor_arg(inputs, 0, "X")?;
    let plans: Vec<AxisPlan> = plan(r, x, inputs)?.into_iter().filter(|p| !is_identity(p)).collect();
    let mut out_shape = x.shape().to_vec();
    for p in &plans {
        out_shape[p.axis] = p.output;
    }
    checked_numel(&out_shape)?;
    if plans.is_empty() {
        return single(x.clone());
    }
    if plans.iter().any(|p| p.input == 0) {
        return single(Tensor::zeros(x.dtype(), &out_shape));
    }
    let taps: Vec<Vec<Taps>> = plans.iter().map(|p| axis_taps(r, p)).collect();
    if r.mode == ResizeMode::Nearest {
        return single(nearest(r, x, &plans, &taps, &out_shape)?);
    }
    let mut shape = x.shape().to_vec();
    let mut data = real_values(x, "X")?;
    let ev = r.extrapolation_value as f64;
    for (p, taps) in plans.iter().zip(&taps) {
        let outer: usize = shape[..p.axis].iter().product();
        let inner: usize = shape[p.axis + 1..].iter().product();
        let mut next = vec![0.0; outer * p.output * inner];
        for o in 0..outer {
            for (j, t) in taps.iter().enumerate() {
                let dst = &mut next[(o * p.output + j) * inner..(o * p.output + j + 1) * inner];
                match t {
                    None => dst.fill(ev),
                    Some(t) => {
                        for &(i, w) in t {
                            let src = &data[(o * p.input + i as usize) * inner..][..inner];
                            for (d, s) in dst.iter_mut().zip(src) {
                                *d += w * s;
                            }
                        }
                    }
                }
            }
        }
        data = next;
        shape[p.axis] = p.output;
    }
    single(from_f64(x.dtype(), &shape, data)?)
}

/// Nearest resize as an element copy. A position excluded on every side
/// (exclude_outside) reads 0; an extrapolated one reads the extrapolation
/// value; when both happen on different axes the axis resized last wins,
/// as with separable resizing.
fn nearest(
    r: &Resize,
    x: &Tensor,
    plans: &[AxisPlan],
    taps: &[Vec<Taps>],
    out_shape: &[usize],
) -> Result<Tensor, EvalError> {
    const EXTRAPOLATE: usize = FILL - 1;
    const ZERO: usize = FILL - 2;
    let st = strides(x.shape());
    let total = checked_numel(out_shape)?;
    let mut by_axis: Vec<Option<usize>> = vec![None; x.rank()];
    for (k, p) in plans.iter().enumerate() {
        by_axis[p.axis] = Some(k);
    }
    let mut idx = vec![0; out_shape.len()];
    let mut src = Vec::with_capacity(total);
    let mut used = [false; 2];
    for flat in 0..total {
        unravel(flat, out_shape, &mut idx);
        let mut pos = 0;
        let mut special = None;
        for (d, &o) in idx.iter().enumerate() {
            let i = match by_axis[d] {
                None => o,
                Some(k) => match &taps[k][o] {
                    None => {
                        if special.is_none_or(|(s, _)| s < k) {
                            special = Some((k, EXTRAPOLATE));
                        }
                        0
                    }
                    Some(t) => {
                        // One tap: weight 1, or 0 if exclude_outside dropped it.
                        if t[0].1 == 0.0 && special.is_none_or(|(s, _)| s < k) {
                            special = Some((k, ZERO));
                        }
                        t[0].0 as usize
                    }
                },
            };
            pos += i * st[d];
        }
        src.push(match special {
            Some((_, EXTRAPOLATE)) => {
                used[0] = true;
                EXTRAPOLATE
            }
            Some(_) => {
                used[1] = true;
                ZERO
            }
            None => pos,
        });
    }
    if !used[0] && !used[1] {
        return take(x, out_shape, &src, None);
    }
    let ev = if used[0] {
        from_f64(x.dtype(), &[], vec![r.extrapolation_value as f64]).map_err(|_| {
            EvalError::unsupported(format!("extrapolation into a {} tensor is not supported", x.dtype()))
        })?
    } else {
        Tensor::zeros(x.dtype(), &[])
    };
    let n = x.len();
    let all = concat_flat(&[x, &ev, &Tensor::zeros(x.dtype(), &[])])?;
    let src: Vec<usize> = src
        .into_iter()
        .map(|i| match i {
            EXTRAPOLATE => n,
            ZERO => n + 1,
            i => i,
        })
        .collect();
    take(&all, out_shape, &src, None)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use sharc_ir::op::*;
    use sharc_ir::{Op, Tensor};

    fn resize_op(mode: ResizeMode, ctm: CoordinateTransform) -> Resize {
        Resize {
            antialias: false,
            axes: None,
            coordinate_transformation_mode: ctm,
            cubic_coeff_a: -0.75,
            exclude_outside: false,
            extrapolation_value: 0.0,
            keep_aspect_ratio_policy: KeepAspectRatio::Stretch,
            mode,
            nearest_mode: NearestMode::RoundPreferFloor,
        }
    }

    fn run_scales(r: Resize, x: Tensor, scales: &[f32]) -> Tensor {
        run1(Op::Resize(r), vec![Some(x), None, Some(f(&[scales.len()], scales))]).unwrap()
    }

    fn run_sizes(r: Resize, x: Tensor, sizes: &[i64]) -> Tensor {
        run1(Op::Resize(r), vec![Some(x), None, None, Some(i(&[sizes.len()], sizes))]).unwrap()
    }

    fn x4() -> Tensor {
        f(&[1, 1, 4, 4], &(1..=16).map(|v| v as f32).collect::<Vec<_>>())
    }

    #[test]
    fn nearest_upsample() {
        // test_resize_upsample_scales_nearest.
        let x = f(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
        let out = run_scales(resize_op(ResizeMode::Nearest, CoordinateTransform::HalfPixel), x, &[1., 1., 2., 3.]);
        assert_eq!(out.shape(), &[1, 1, 4, 6]);
        assert_eq!(fv(&out)[..12], [1., 1., 1., 2., 2., 2., 1., 1., 1., 2., 2., 2.]);
    }

    #[test]
    fn linear_downsample_matches_reference() {
        // test_resize_downsample_scales_linear: [[1,2,3,4],[5,6,7,8]] by 0.6 -> [[2.6666665, 4.3333335]].
        let x = f(&[1, 1, 2, 4], &[1., 2., 3., 4., 5., 6., 7., 8.]);
        let out =
            run_scales(resize_op(ResizeMode::Linear, CoordinateTransform::HalfPixel), x.clone(), &[1., 1., 0.6, 0.6]);
        close(&fv(&out), &[2.6666665, 4.3333335], 1e-6);
        // Same with align_corners: [[1, 3.142857]].
        let out = run_scales(resize_op(ResizeMode::Linear, CoordinateTransform::AlignCorners), x, &[1., 1., 0.6, 0.6]);
        close(&fv(&out), &[1.0, 3.142857], 1e-6);
    }

    #[test]
    fn cubic_upsample_matches_reference() {
        // First row of test_resize_upsample_scales_cubic (onnx.reference).
        let out = run_scales(resize_op(ResizeMode::Cubic, CoordinateTransform::HalfPixel), x4(), &[1., 1., 2., 2.]);
        close(
            &fv(&out)[..8],
            &[0.47265625, 0.76953125, 1.24609375, 1.875, 2.28125, 2.91015625, 3.38671875, 3.68359375],
            1e-6,
        );
    }

    #[test]
    fn cubic_antialias_and_exclude_outside() {
        // test_resize_downsample_scales_cubic_antialias and
        // test_resize_downsample_scales_cubic_A_n0p5_exclude_outside (onnx.reference).
        let mut r = resize_op(ResizeMode::Cubic, CoordinateTransform::HalfPixel);
        r.antialias = true;
        let out = run_scales(r, x4(), &[1., 1., 0.6, 0.6]);
        close(&fv(&out), &[2.5180695, 4.2858858, 9.5893354, 11.357152], 1e-5);
        let mut r = resize_op(ResizeMode::Cubic, CoordinateTransform::HalfPixel);
        r.cubic_coeff_a = -0.5;
        r.exclude_outside = true;
        let out = run_scales(r, x4(), &[1., 1., 0.8, 0.8]);
        close(&fv(&out)[..3], &[1.3681267, 2.6695013, 4.0133367], 1e-5);
    }

    #[test]
    fn sizes_with_aspect_policy() {
        // test_resize_downsample_sizes_nearest_not_larger: sizes [1, 3] of a 2x4 input -> 1x2.
        let x = f(&[1, 1, 2, 4], &[1., 2., 3., 4., 5., 6., 7., 8.]);
        let mut r = resize_op(ResizeMode::Nearest, CoordinateTransform::HalfPixel);
        r.axes = Some(vec![2, 3]);
        r.keep_aspect_ratio_policy = KeepAspectRatio::NotLarger;
        let out = run_sizes(r.clone(), x.clone(), &[1, 3]);
        assert_eq!(out.shape(), &[1, 1, 1, 2]);
        assert_eq!(fv(&out), vec![1., 3.]);
        r.keep_aspect_ratio_policy = KeepAspectRatio::NotSmaller;
        let out = run_sizes(r, x, &[1, 3]);
        assert_eq!(out.shape(), &[1, 1, 2, 3]);
    }

    #[test]
    fn tf_crop_and_resize_extrapolates() {
        let mut r = resize_op(ResizeMode::Linear, CoordinateTransform::TfCropAndResize);
        r.extrapolation_value = 10.0;
        r.axes = Some(vec![2, 3]);
        let roi = f(&[4], &[0.4, 0.6, 0.6, 1.2]);
        let out = run1(Op::Resize(r), vec![Some(x4()), Some(roi), None, Some(i(&[2], &[3, 3]))]).unwrap();
        // Values from onnx.reference; the last column reads past the input.
        close(&fv(&out), &[7.6000004, 8.5, 10., 8.8000002, 9.7000008, 10., 10., 10.900001, 10.], 1e-5);
    }

    #[test]
    fn pytorch_half_pixel_maps_a_single_output_to_zero() {
        // The spec (and onnxruntime) use coordinate 0 when the output length
        // is 1, so cubic sampling returns the first element exactly.
        let x = f(&[1, 4], &[5., 1., 2., 3.]);
        let out = run_sizes(resize_op(ResizeMode::Cubic, CoordinateTransform::PytorchHalfPixel), x, &[1, 1]);
        assert_eq!(fv(&out), vec![5.]);
    }

    #[test]
    fn nearest_works_for_strings_and_rejects_bad_inputs() {
        let x = Tensor::from_vec(&[2], vec!["a".to_string(), "b".into()]);
        let out = run_sizes(resize_op(ResizeMode::Nearest, CoordinateTransform::Asymmetric), x.clone(), &[4]);
        assert_eq!(out, Tensor::from_vec(&[4], vec!["a".to_string(), "a".into(), "b".into(), "b".into()]));
        let r = resize_op(ResizeMode::Linear, CoordinateTransform::HalfPixel);
        assert!(
            run1(Op::Resize(r.clone()), vec![Some(x.clone()), None, None, Some(i(&[1], &[4]))])
                .unwrap_err()
                .unsupported
        );
        assert!(run1(Op::Resize(r.clone()), vec![Some(x4()), None, None, None]).is_err());
        assert!(run1(Op::Resize(r), vec![Some(x4()), None, Some(f(&[4], &[1., 1., -1., 1.]))]).is_err());
    }
}

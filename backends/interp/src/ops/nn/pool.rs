//! Pooling: `MaxPool`, `AveragePool`, `LpPool`, the global pools,
//! `MaxRoiPool`, `MaxUnpool`. Values are pooled in `f64` and rounded once to
//! the input's type.

use super::{OpContext, f64_array, kernel_span, no_overflow, spatial_attr, split_same, tensor_from_f64};
use crate::util::{i64_values, opt_tensor_arg, single, tensor_arg};
use sharc_ir::op::{AutoPad, AveragePool, LpPool, MaxPool, MaxRoiPool, MaxUnpool};
use sharc_ir::{DType, EvalError, Tensor, Value};

type Outputs = Result<Vec<Value>, EvalError>;

/// Where the pooling windows sit.
#[derive(Debug, PartialEq)]
struct Geometry {
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dilations: Vec<usize>,
    pads_begin: Vec<usize>,
    pads_end: Vec<usize>,
    out: Vec<usize>,
}

/// The attributes the windowed pools share.
struct Window<'a> {
    auto_pad: AutoPad,
    ceil_mode: bool,
    dilations: &'a Option<Vec<i64>>,
    kernel_shape: &'a [i64],
    pads: &'a Option<Vec<i64>>,
    strides: &'a Option<Vec<i64>>,
}

/// The `Window` of any pool op's attribute struct: the three windowed pools
/// spell these six attributes identically but are distinct types.
macro_rules! window_of {
    ($a:expr) => {
        Window {
            auto_pad: $a.auto_pad,
            ceil_mode: $a.ceil_mode,
            dilations: &$a.dilations,
            kernel_shape: &$a.kernel_shape,
            pads: &$a.pads,
            strides: &$a.strides,
        }
    };
}

/// The output shape and padding per the ONNX pooling definition: explicit
/// pads use floor (or ceil, dropping a last window that would start in the
/// end padding); `SAME_*` gives `ceil(in / stride)`; `VALID` has its own
/// formulas for floor and ceil mode.
fn geometry(w: &Window, x_spatial: &[usize]) -> Result<Geometry, EvalError> {
    let n = x_spatial.len();
    if w.kernel_shape.len() != n {
        return Err(EvalError::new(format!(
            "kernel_shape {:?} has {} dims, the input has {n} spatial dims",
            w.kernel_shape,
            w.kernel_shape.len()
        )));
    }
    let kernel = spatial_attr(&Some(w.kernel_shape.to_vec()), n, 1, "kernel_shape", 1)?;
    let strides = spatial_attr(w.strides, n, 1, "strides", 1)?;
    let dilations = spatial_attr(w.dilations, n, 1, "dilations", 1)?;
    let (mut pb, mut pe) = (vec![0; n], vec![0; n]);
    let mut out = vec![0; n];
    for d in 0..n {
        let (i, s) = (x_spatial[d], strides[d]);
        let eff = kernel_span(kernel[d], dilations[d])?;
        match w.auto_pad {
            AutoPad::NotSet => {
                let (b, e) = super::pads_attr(w.pads, n)?;
                (pb[d], pe[d]) = (b[d], e[d]);
                let padded = no_overflow(i.checked_add(pb[d]).and_then(|v| v.checked_add(pe[d])), "pads")?;
                if padded < eff {
                    return Err(EvalError::new(format!(
                        "spatial dim {d}: the window spans {eff} but the padded input has {padded}"
                    )));
                }
                out[d] = if w.ceil_mode { (padded - eff).div_ceil(s) + 1 } else { (padded - eff) / s + 1 };
                if w.ceil_mode && (out[d] - 1) * s >= i + pb[d] {
                    out[d] -= 1;
                }
            }
            AutoPad::Valid => {
                if i < eff {
                    return Err(EvalError::new(format!("spatial dim {d}: the window spans {eff}, the input has {i}")));
                }
                out[d] = if w.ceil_mode { (i - eff + 1).div_ceil(s) } else { (i - eff) / s + 1 };
            }
            AutoPad::SameUpper | AutoPad::SameLower => {
                out[d] = i.div_ceil(s);
                let span = (out[d].max(1) - 1).checked_mul(s).and_then(|v| v.checked_add(eff));
                let total = no_overflow(span, "the padding for auto_pad")?.saturating_sub(i);
                (pb[d], pe[d]) = split_same(total, w.auto_pad == AutoPad::SameUpper);
            }
        }
    }
    Ok(Geometry { kernel, strides, dilations, pads_begin: pb, pads_end: pe, out })
}

const PAD: isize = -1;
const BEYOND: isize = -2;

/// For every kernel position and output position, the input's spatial offset,
/// [`PAD`] in the explicit padding, or [`BEYOND`] past it (ceil-mode
/// overhang, never counted). Indexed `[k · |out| + o]`.
fn taps(x_spatial: &[usize], g: &Geometry) -> Vec<isize> {
    let nd = x_spatial.len();
    let mut strides = vec![1usize; nd];
    for d in (0..nd.saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * x_spatial[d + 1];
    }
    let kk: usize = g.kernel.iter().product();
    let p: usize = g.out.iter().product();
    let mut table = Vec::with_capacity(kk * p);
    let (mut ki, mut oi) = (vec![0; nd], vec![0; nd]);
    for kf in 0..kk {
        unravel(kf, &g.kernel, &mut ki);
        for of in 0..p {
            unravel(of, &g.out, &mut oi);
            let mut off = 0isize;
            for d in 0..nd {
                let c = (oi[d] * g.strides[d] + ki[d] * g.dilations[d]) as isize - g.pads_begin[d] as isize;
                if c >= (x_spatial[d] + g.pads_end[d]) as isize {
                    off = BEYOND;
                    break;
                }
                if c < 0 || c >= x_spatial[d] as isize {
                    off = PAD;
                } else if off != PAD {
                    off += c * strides[d] as isize;
                }
            }
            table.push(off);
        }
    }
    table
}

fn unravel(mut i: usize, shape: &[usize], out: &mut [usize]) {
    for d in (0..shape.len()).rev() {
        out[d] = i % shape[d];
        i /= shape[d];
    }
}

fn pooled_input<'a>(inputs: &'a [Option<Value>], op: &str, ints: bool) -> Result<&'a Tensor, EvalError> {
    let x = tensor_arg(inputs, 0, "X")?;
    let ok = super::is_wide_float(x.dtype()) || (ints && matches!(x.dtype(), DType::I8 | DType::U8));
    if !ok {
        return Err(EvalError::new(format!("{op} does not accept {} input", x.dtype())));
    }
    if x.rank() < 3 {
        return Err(EvalError::new(format!("{op} needs X as [N, C, spatial...], got shape {:?}", x.shape())));
    }
    Ok(x)
}

/// What a window reduces to.
#[derive(Clone, Copy)]
enum Kind {
    Average { count_include_pad: bool },
    Lp(f64),
}

/// Average and Lp pooling over every (N, C) plane.
fn pool_windows(x: &Tensor, w: &Window, kind: Kind) -> Outputs {
    let sp = &x.shape()[2..];
    let g = geometry(w, sp)?;
    let taps = taps(sp, &g);
    let xs = f64_array(x, "X")?;
    let xs = xs.as_slice().expect("standard layout");
    let plane: usize = sp.iter().product();
    let p: usize = g.out.iter().product();
    let kk: usize = g.kernel.iter().product();
    let planes = x.shape()[0] * x.shape()[1];
    let mut y = Vec::with_capacity(planes * p);
    for pi in 0..planes {
        let xp = &xs[pi * plane..(pi + 1) * plane];
        for o in 0..p {
            let (mut sum, mut count) = (0.0, 0usize);
            for k in 0..kk {
                match taps[k * p + o] {
                    BEYOND => {}
                    PAD => {
                        if let Kind::Average { count_include_pad: true } = kind {
                            count += 1;
                        }
                    }
                    off => {
                        let v = xp[off as usize];
                        sum += match kind {
                            Kind::Average { .. } => v,
                            Kind::Lp(pw) => v.abs().powf(pw),
                        };
                        count += 1;
                    }
                }
            }
            y.push(match kind {
                // A window with no element to average is 0/0.
                Kind::Average { .. } => sum / count as f64,
                Kind::Lp(pw) => sum.powf(1.0 / pw),
            });
        }
    }
    let mut shape = x.shape()[..2].to_vec();
    shape.extend(&g.out);
    single(tensor_from_f64(&shape, y, x.dtype())?)
}

/// `AveragePool`.
pub(crate) fn average_pool(a: &AveragePool, inputs: &[Option<Value>]) -> Outputs {
    let x = pooled_input(inputs, "AveragePool", false)?;
    let w = window_of!(a);
    pool_windows(x, &w, Kind::Average { count_include_pad: a.count_include_pad })
}

/// `LpPool`: `(Σ |x|^p)^(1/p)` over each window; padding contributes zero.
pub(crate) fn lp_pool(a: &LpPool, inputs: &[Option<Value>]) -> Outputs {
    let x = pooled_input(inputs, "LpPool", false)?;
    if a.p < 1 {
        return Err(EvalError::new(format!("LpPool p = {} must be at least 1", a.p)));
    }
    let w = window_of!(a);
    pool_windows(x, &w, Kind::Lp(a.p as f64))
}

/// `MaxPool`, with the optional `Indices` output: flat indices into X, the
/// spatial part row-major (`storage_order` 0) or column-major (1). Padding is
/// never selected; NaN propagates; the first maximum wins ties. A window
/// that covers only padding yields the lowest value of the type and index -1.
pub(crate) fn max_pool(a: &MaxPool, inputs: &[Option<Value>], cx: &OpContext) -> Outputs {
    let x = pooled_input(inputs, "MaxPool", true)?;
    if !matches!(a.storage_order, 0 | 1) {
        return Err(EvalError::new(format!("storage_order = {} must be 0 or 1", a.storage_order)));
    }
    let w = window_of!(a);
    let sp = &x.shape()[2..];
    let g = geometry(&w, sp)?;
    let taps = taps(sp, &g);
    let xs = f64_array(x, "X")?;
    let xs = xs.as_slice().expect("standard layout");
    let plane: usize = sp.iter().product();
    let p: usize = g.out.iter().product();
    let kk: usize = g.kernel.iter().product();
    let planes = x.shape()[0] * x.shape()[1];
    // Column-major position of each row-major spatial offset.
    let column_major = |mut off: usize| -> usize {
        let mut idx = 0;
        let mut stride = 1;
        let mut coords = vec![0; sp.len()];
        for d in (0..sp.len()).rev() {
            coords[d] = off % sp[d];
            off /= sp[d];
        }
        for d in 0..sp.len() {
            idx += coords[d] * stride;
            stride *= sp[d];
        }
        idx
    };
    let mut y = Vec::with_capacity(planes * p);
    let mut ind = Vec::with_capacity(planes * p);
    for pi in 0..planes {
        let xp = &xs[pi * plane..(pi + 1) * plane];
        for o in 0..p {
            let mut best: Option<(f64, usize)> = None;
            for k in 0..kk {
                let off = taps[k * p + o];
                if off < 0 {
                    continue;
                }
                let v = xp[off as usize];
                let better = match best {
                    None => true,
                    Some((b, _)) => v > b || (v.is_nan() && !b.is_nan()),
                };
                if better {
                    best = Some((v, off as usize));
                }
            }
            match best {
                Some((v, off)) => {
                    y.push(v);
                    let sp_idx = if a.storage_order == 1 { column_major(off) } else { off };
                    ind.push((pi * plane + sp_idx) as i64);
                }
                None => {
                    y.push(f64::NEG_INFINITY);
                    ind.push(-1);
                }
            }
        }
    }
    let mut shape = x.shape()[..2].to_vec();
    shape.extend(&g.out);
    let mut out = vec![Value::Tensor(tensor_from_f64(&shape, y, x.dtype())?)];
    if cx.num_outputs > 1 {
        out.push(Value::Tensor(Tensor::from_vec(&shape, ind)));
    }
    Ok(out)
}

/// The reduction of a global pool.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Global {
    Average,
    Max,
    /// `GlobalLpPool` with its `p`.
    Lp(i64),
}

/// `GlobalAveragePool`, `GlobalMaxPool`, `GlobalLpPool`: reduce every (N, C)
/// plane to one value, keeping the spatial dims as 1.
pub(crate) fn global_pool(kind: Global, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "X")?;
    if !super::is_wide_float(x.dtype()) {
        return Err(EvalError::new(format!("global pooling does not accept {} input", x.dtype())));
    }
    if x.rank() < 2 {
        return Err(EvalError::new(format!("global pooling needs X as [N, C, spatial...], got {:?}", x.shape())));
    }
    if let Global::Lp(p) = kind
        && p < 1
    {
        return Err(EvalError::new(format!("GlobalLpPool p = {p} must be at least 1")));
    }
    let xs = f64_array(x, "X")?;
    let xs = xs.as_slice().expect("standard layout");
    let plane: usize = x.shape()[2..].iter().product();
    let planes = x.shape()[0] * x.shape()[1];
    let y: Vec<f64> = (0..planes)
        .map(|i| {
            let v = &xs[i * plane..(i + 1) * plane];
            match kind {
                Global::Average => v.iter().sum::<f64>() / plane as f64,
                Global::Max => {
                    v.iter().fold(f64::NEG_INFINITY, |m, &x| if x > m || x.is_nan() && !m.is_nan() { x } else { m })
                }
                Global::Lp(p) => v.iter().map(|x| x.abs().powi(p as i32)).sum::<f64>().powf(1.0 / p as f64),
            }
        })
        .collect();
    let mut shape = x.shape()[..2].to_vec();
    shape.extend(std::iter::repeat_n(1, x.rank() - 2));
    single(tensor_from_f64(&shape, y, x.dtype())?)
}

/// `MaxRoiPool`: for each region `[batch, x1, y1, x2, y2]` (scaled by
/// `spatial_scale` and rounded), max over a `pooled_shape` grid of bins;
/// empty bins give 0.
pub(crate) fn max_roi_pool(a: &MaxRoiPool, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "X")?;
    let rois = tensor_arg(inputs, 1, "rois")?;
    if !super::is_wide_float(x.dtype()) || rois.dtype() != x.dtype() {
        return Err(EvalError::new(format!(
            "MaxRoiPool needs float X and rois of one type, got {} and {}",
            x.dtype(),
            rois.dtype()
        )));
    }
    if x.rank() != 4 || rois.rank() != 2 || rois.shape()[1] != 5 {
        return Err(EvalError::new(format!(
            "MaxRoiPool needs X [N, C, H, W] and rois [R, 5], got {:?} and {:?}",
            x.shape(),
            rois.shape()
        )));
    }
    if a.pooled_shape.len() != 2 || a.pooled_shape.iter().any(|&v| v < 1) {
        return Err(EvalError::new(format!("pooled_shape {:?} must be two positive values", a.pooled_shape)));
    }
    let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (ph, pw) = (a.pooled_shape[0] as usize, a.pooled_shape[1] as usize);
    let xs = f64_array(x, "X")?;
    let xs = xs.as_slice().expect("standard layout");
    let rs = f64_array(rois, "rois")?;
    let scale = a.spatial_scale as f64;
    let mut y = Vec::with_capacity(rois.shape()[0] * c * ph * pw);
    for r in rs.as_slice().expect("standard layout").chunks(5) {
        let b = r[0];
        if !(b >= 0.0 && (b as usize) < n && b.fract() == 0.0) {
            return Err(EvalError::new(format!("roi batch index {b} is not an image index below {n}")));
        }
        let b = b as usize;
        // Region bounds in f64, so that absurd coordinates clamp instead of overflowing.
        let (x1, y1) = ((r[1] * scale).round(), (r[2] * scale).round());
        let (x2, y2) = ((r[3] * scale).round(), (r[4] * scale).round());
        let bin_h = (y2 - y1 + 1.0).max(1.0) / ph as f64;
        let bin_w = (x2 - x1 + 1.0).max(1.0) / pw as f64;
        let clampf = |v: f64, hi: usize| if v.is_nan() { 0 } else { v.clamp(0.0, hi as f64) as usize };
        for ci in 0..c {
            let plane = &xs[(b * c + ci) * h * w..(b * c + ci + 1) * h * w];
            for i in 0..ph {
                let hs = clampf((i as f64 * bin_h).floor() + y1, h);
                let he = clampf(((i + 1) as f64 * bin_h).ceil() + y1, h);
                for j in 0..pw {
                    let ws = clampf((j as f64 * bin_w).floor() + x1, w);
                    let we = clampf(((j + 1) as f64 * bin_w).ceil() + x1, w);
                    let mut m = f64::NEG_INFINITY;
                    for yy in hs..he {
                        for xx in ws..we {
                            m = m.max(plane[yy * w + xx]);
                        }
                    }
                    y.push(if he <= hs || we <= ws { 0.0 } else { m });
                }
            }
        }
    }
    single(tensor_from_f64(&[rois.shape()[0], c, ph, pw], y, x.dtype())?)
}

/// `MaxUnpool`: scatters X into zeros at the flat indices I. The output shape
/// is the `output_shape` input when given (I then indexes that tensor, as
/// MaxPool's indices index its input), else the shape that inverts the
/// pooling attributes.
pub(crate) fn max_unpool(a: &MaxUnpool, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "X")?;
    let ind = tensor_arg(inputs, 1, "I")?;
    let out_shape = opt_tensor_arg(inputs, 2, "output_shape")?;
    if x.rank() < 3 || ind.shape() != x.shape() {
        return Err(EvalError::new(format!(
            "MaxUnpool needs X [N, C, spatial...] and I of the same shape, got {:?} and {:?}",
            x.shape(),
            ind.shape()
        )));
    }
    let n = x.rank() - 2;
    let shape: Vec<usize> =
        match out_shape {
            Some(s) => {
                let v = i64_values(s, "output_shape")?;
                if v.len() != x.rank()
                    || v.iter().any(|&d| d < 0)
                    || v[0] as usize != x.shape()[0]
                    || v[1] as usize != x.shape()[1]
                {
                    return Err(EvalError::new(format!(
                        "output_shape {v:?} must be [N, C, spatial...] matching X {:?}",
                        x.shape()
                    )));
                }
                v.iter().map(|&d| d as usize).collect()
            }
            None => {
                if a.kernel_shape.len() != n {
                    return Err(EvalError::new(format!("kernel_shape {:?} must have {n} values", a.kernel_shape)));
                }
                let kernel = spatial_attr(&Some(a.kernel_shape.clone()), n, 1, "kernel_shape", 1)?;
                let strides = spatial_attr(&a.strides, n, 1, "strides", 1)?;
                let (pb, pe) = super::pads_attr(&a.pads, n)?;
                let mut s = x.shape()[..2].to_vec();
                for d in 0..n {
                    let full = (x.shape()[d + 2].max(1) - 1) * strides[d] + kernel[d];
                    s.push(full.checked_sub(pb[d] + pe[d]).ok_or_else(|| {
                        EvalError::new(format!("spatial dim {d}: pads exceed the unpooled size {full}"))
                    })?);
                }
                s
            }
        };
    let total: usize = shape.iter().product();
    let xs = f64_array(x, "X")?;
    let is = i64_values(ind, "I")?;
    let mut y = vec![0.0; total];
    for (&v, &i) in xs.iter().zip(&is) {
        if i < 0 || i as usize >= total {
            return Err(EvalError::new(format!("index {i} in I is outside the output of {total} elements {shape:?}")));
        }
        y[i as usize] = v;
    }
    single(tensor_from_f64(&shape, y, x.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, run_n, run1, t};
    use super::*;
    use sharc_ir::Op;

    fn mp(kernel: Vec<i64>) -> MaxPool {
        MaxPool {
            auto_pad: AutoPad::NotSet,
            ceil_mode: false,
            dilations: None,
            kernel_shape: kernel,
            pads: None,
            storage_order: 0,
            strides: None,
        }
    }

    fn ap(kernel: Vec<i64>) -> AveragePool {
        AveragePool {
            auto_pad: AutoPad::NotSet,
            ceil_mode: false,
            count_include_pad: false,
            dilations: None,
            kernel_shape: kernel,
            pads: None,
            strides: None,
        }
    }

    fn iota(n: usize) -> Vec<f32> {
        (1..=n).map(|v| v as f32).collect()
    }

    #[test]
    fn max_pool_with_indices() {
        // onnx test_maxpool_with_argmax_2d_precomputed_strides (storage_order 1).
        let a = MaxPool { strides: Some(vec![2, 2]), storage_order: 1, ..mp(vec![2, 2]) };
        let out = run_n(&Op::MaxPool(a), &[t(&[1, 1, 5, 5], iota(25))], 2).unwrap();
        assert_close(&out[0], &[1, 1, 2, 2], &[7., 9., 17., 19.], 0.0);
        assert_eq!(out[1], Tensor::from_vec(&[1, 1, 2, 2], vec![6i64, 16, 8, 18]));
        // Row-major indices include the (n, c) plane offset.
        let a = MaxPool { strides: Some(vec![2]), ..mp(vec![2]) };
        let out = run_n(&Op::MaxPool(a), &[t(&[1, 2, 4], vec![1f32, 5., 2., 0., 3., 3., 9., 8.])], 2).unwrap();
        assert_close(&out[0], &[1, 2, 2], &[5., 2., 3., 9.], 0.0);
        assert_eq!(out[1], Tensor::from_vec(&[1, 2, 2], vec![1i64, 2, 4, 6]));
    }

    #[test]
    fn max_pool_pads_ceil_dilation() {
        // onnx test_maxpool_2d_precomputed_pads: 5x5 iota, k5, pads 2.
        let a = MaxPool { pads: Some(vec![2, 2, 2, 2]), ..mp(vec![5, 5]) };
        let y = run1(&Op::MaxPool(a), &[t(&[1, 1, 5, 5], iota(25))]).unwrap();
        assert_close(
            &y,
            &[1, 1, 5, 5],
            &[
                13., 14., 15., 15., 15., 18., 19., 20., 20., 20., 23., 24., 25., 25., 25., 23., 24., 25., 25., 25.,
                23., 24., 25., 25., 25.,
            ],
            0.0,
        );
        // onnx test_maxpool_2d_ceil: 4x4 iota, k3, s2, ceil -> 2x2.
        let a = MaxPool { ceil_mode: true, strides: Some(vec![2, 2]), ..mp(vec![3, 3]) };
        let y = run1(&Op::MaxPool(a), &[t(&[1, 1, 4, 4], iota(16))]).unwrap();
        assert_close(&y, &[1, 1, 2, 2], &[11., 12., 15., 16.], 0.0);
        // onnx test_maxpool_2d_ceil_output_size_reduce_by_one: the last window would start past the input.
        let a = MaxPool { ceil_mode: true, strides: Some(vec![2, 2]), ..mp(vec![1, 1]) };
        let y = run1(&Op::MaxPool(a), &[t(&[1, 1, 2, 2], iota(4))]).unwrap();
        assert_close(&y, &[1, 1, 1, 1], &[1.], 0.0);
        // onnx test_maxpool_2d_dilations.
        let a = MaxPool { dilations: Some(vec![2, 2]), ..mp(vec![2, 2]) };
        let y = run1(&Op::MaxPool(a), &[t(&[1, 1, 4, 4], iota(16))]).unwrap();
        assert_close(&y, &[1, 1, 2, 2], &[11., 12., 15., 16.], 0.0);
        // uint8 input keeps its type.
        let y = run1(&Op::MaxPool(mp(vec![2])), &[t(&[1, 1, 3], vec![3u8, 200, 7])]).unwrap();
        assert_eq!(y, Tensor::from_vec(&[1, 1, 2], vec![200u8, 200]));
    }

    #[test]
    fn max_pool_same_padding() {
        // onnx test_maxpool_2d_precomputed_same_upper: 5x5 iota, k3, s2 -> 3x3.
        let a = MaxPool { auto_pad: AutoPad::SameUpper, strides: Some(vec![2, 2]), ..mp(vec![3, 3]) };
        let y = run1(&Op::MaxPool(a), &[t(&[1, 1, 5, 5], iota(25))]).unwrap();
        assert_close(&y, &[1, 1, 3, 3], &[7., 9., 10., 17., 19., 20., 22., 24., 25.], 0.0);
        // SAME_LOWER with k2 on 3 values pads one at the start.
        let a = MaxPool { auto_pad: AutoPad::SameLower, ..mp(vec![2]) };
        let y = run1(&Op::MaxPool(a), &[t(&[1, 1, 3], vec![5f32, 1., 3.])]).unwrap();
        assert_close(&y, &[1, 1, 3], &[5., 5., 3.], 0.0);
        let a = MaxPool { auto_pad: AutoPad::SameUpper, ..mp(vec![2]) };
        let y = run1(&Op::MaxPool(a), &[t(&[1, 1, 3], vec![5f32, 1., 3.])]).unwrap();
        assert_close(&y, &[1, 1, 3], &[5., 3., 3.], 0.0);
    }

    #[test]
    fn average_pool_padding_counts() {
        // onnx test_averagepool_2d_precomputed_pads (count_include_pad 0) and _count_include_pad.
        let a = AveragePool { pads: Some(vec![2, 2, 2, 2]), ..ap(vec![5, 5]) };
        let y = run1(&Op::AveragePool(a), &[t(&[1, 1, 5, 5], iota(25))]).unwrap();
        let want = [
            7., 7.5, 8., 8.5, 9., 9.5, 10., 10.5, 11., 11.5, 12., 12.5, 13., 13.5, 14., 14.5, 15., 15.5, 16., 16.5,
            17., 17.5, 18., 18.5, 19.,
        ];
        assert_close(&y, &[1, 1, 5, 5], &want, 1e-6);
        let a = AveragePool { pads: Some(vec![2, 2, 2, 2]), count_include_pad: true, ..ap(vec![5, 5]) };
        let y = run1(&Op::AveragePool(a), &[t(&[1, 1, 5, 5], iota(25))]).unwrap();
        let want = [
            2.52, 3.6, 4.8, 4.08, 3.24, 4.56, 6.4, 8.4, 7.04, 5.52, 7.2, 10., 13., 10.8, 8.4, 6.96, 9.6, 12.4, 10.24,
            7.92, 6.12, 8.4, 10.8, 8.88, 6.84,
        ];
        assert_close(&y, &[1, 1, 5, 5], &want, 1e-6);
    }

    #[test]
    fn average_pool_ceil_overhang_is_not_counted() {
        // onnx test_averagepool_2d_ceil_last_window_starts_on_pad style: 1-D, in 4, k3, s3, pads 1, ceil,
        // count_include_pad: windows [-1..1] -> (0+1+2)/3, [2..4] covers 3, 4 and the end pad (counted) -> (3+4+0)/3.
        let a = AveragePool {
            ceil_mode: true,
            count_include_pad: true,
            pads: Some(vec![1, 1]),
            strides: Some(vec![3]),
            ..ap(vec![3])
        };
        let y = run1(&Op::AveragePool(a), &[t(&[1, 1, 4], iota(4))]).unwrap();
        assert_close(&y, &[1, 1, 2], &[1., 7. / 3.], 1e-6);
        // Ceil mode without padding: the last window hangs over the end and averages what it covers.
        let a = AveragePool { ceil_mode: true, strides: Some(vec![2]), ..ap(vec![2]) };
        let y = run1(&Op::AveragePool(a), &[t(&[1, 1, 3], iota(3))]).unwrap();
        assert_close(&y, &[1, 1, 2], &[1.5, 3.], 0.0);
        // count_include_pad does not count the ceil overhang beyond the explicit padding (as
        // onnx.reference): the second window of [1, 2, 3] with k2 s2 averages only 3.
        let a = AveragePool { ceil_mode: true, count_include_pad: true, strides: Some(vec![2]), ..ap(vec![2]) };
        let y = run1(&Op::AveragePool(a), &[t(&[1, 1, 3], iota(3))]).unwrap();
        assert_close(&y, &[1, 1, 2], &[1.5, 3.], 0.0);
    }

    #[test]
    fn lp_pool_and_global_pools() {
        // Lp with p = 2 over windows of 2: sqrt(1 + 4), sqrt(4 + 9); padding adds nothing.
        let a = LpPool {
            auto_pad: AutoPad::NotSet,
            ceil_mode: false,
            dilations: None,
            kernel_shape: vec![2],
            p: 2,
            pads: Some(vec![1, 0]),
            strides: None,
        };
        let y = run1(&Op::LpPool(a), &[t(&[1, 1, 3], vec![1f32, -2., 3.])]).unwrap();
        assert_close(&y, &[1, 1, 3], &[1., 5f64.sqrt(), 13f64.sqrt()], 1e-6);
        let x = t(&[1, 2, 2, 2], vec![1f32, 2., 3., 4., -1., -5., 0., 2.]);
        let y = run1(&Op::GlobalAveragePool, std::slice::from_ref(&x)).unwrap();
        assert_close(&y, &[1, 2, 1, 1], &[2.5, -1.], 0.0);
        let y = run1(&Op::GlobalMaxPool, std::slice::from_ref(&x)).unwrap();
        assert_close(&y, &[1, 2, 1, 1], &[4., 2.], 0.0);
        let y = run1(&Op::GlobalLpPool(sharc_ir::op::GlobalLpPool { p: 1 }), &[x]).unwrap();
        assert_close(&y, &[1, 2, 1, 1], &[10., 8.], 0.0);
    }

    #[test]
    fn pool_errors() {
        let e = run1(&Op::MaxPool(mp(vec![2, 2])), &[t(&[1, 1, 3], iota(3))]).unwrap_err();
        assert!(e.message.contains("kernel_shape"), "{}", e.message);
        let e = run1(&Op::MaxPool(mp(vec![4])), &[t(&[1, 1, 3], iota(3))]).unwrap_err();
        assert!(e.message.contains("window spans 4"), "{}", e.message);
        assert!(run1(&Op::AveragePool(ap(vec![2])), &[t(&[1, 1, 3], vec![1i32, 2, 3])]).is_err());
        assert!(run1(&Op::MaxPool(mp(vec![2])), &[t(&[3, 3], iota(9))]).is_err());
    }

    #[test]
    fn roi_pool() {
        // One 4x4 image 1..16; roi over x 1..2, y 0..3 with 2x1 bins: max of rows 0-1 and 2-3 of columns 1-2.
        let a = MaxRoiPool { pooled_shape: vec![2, 1], spatial_scale: 1.0 };
        let y = run1(&Op::MaxRoiPool(a.clone()), &[t(&[1, 1, 4, 4], iota(16)), t(&[1, 5], vec![0f32, 1., 0., 2., 3.])])
            .unwrap();
        assert_close(&y, &[1, 1, 2, 1], &[7., 15.], 0.0);
        let e = run1(&Op::MaxRoiPool(a), &[t(&[1, 1, 4, 4], iota(16)), t(&[1, 5], vec![1f32, 0., 0., 1., 1.])])
            .unwrap_err();
        assert!(e.message.contains("batch index"), "{}", e.message);
    }

    #[test]
    fn unpool() {
        let a = MaxUnpool { kernel_shape: vec![2, 2], pads: None, strides: Some(vec![2, 2]) };
        let x = t(&[1, 1, 2, 2], vec![1f32, 2., 3., 4.]);
        let i = t(&[1, 1, 2, 2], vec![5i64, 7, 13, 15]);
        let y = run1(&Op::MaxUnpool(a.clone()), &[x.clone(), i.clone()]).unwrap();
        let mut want = vec![0.0; 16];
        for (k, v) in [(5, 1.), (7, 2.), (13, 3.), (15, 4.)] {
            want[k] = v;
        }
        assert_close(&y, &[1, 1, 4, 4], &want, 0.0);
        // With an output shape the indices address that tensor (as MaxPool's indices address its input).
        let y = run1(
            &Op::MaxUnpool(a.clone()),
            &[x.clone(), t(&[1, 1, 2, 2], vec![6i64, 8, 16, 24]), t(&[4], vec![1i64, 1, 5, 5])],
        )
        .unwrap();
        let mut want = vec![0.0; 25];
        for (k, v) in [(6, 1.), (8, 2.), (16, 3.), (24, 4.)] {
            want[k] = v;
        }
        assert_close(&y, &[1, 1, 5, 5], &want, 0.0);
        let e = run1(&Op::MaxUnpool(a), &[x, t(&[1, 1, 2, 2], vec![0i64, 1, 2, 16])]).unwrap_err();
        assert!(e.message.contains("outside"), "{}", e.message);
    }
}

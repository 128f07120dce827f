//! Convolutions: `Conv`, `ConvTranspose`, `DeformConv`, `ConvInteger`,
//! `QLinearConv`, for any number of spatial dims.
//!
//! `Conv` is an im2col gather followed by one matrix product per image and
//! group; `ConvTranspose` is the transposed product followed by a col2im
//! scatter-add. Both share [`tap_table`], which maps each (kernel position,
//! grid position) pair to a flat offset in the other grid or to padding.

use super::{
    MatElem, Real, int_array, is_wide_float, kernel_span, no_overflow, pads_attr, real_array, real_cow, real_tensor,
    round_to, spatial_attr, split_same,
};
use crate::util::{opt_tensor_arg, single, tensor_arg};
use ndarray::{Array2, Array3, ArrayD, ArrayViewD, IxDyn, s};
use sharc_ir::op::{AutoPad, Conv, ConvTranspose, DeformConv};
use sharc_ir::{DType, EvalError, Tensor, Value};

type Outputs = Result<Vec<Value>, EvalError>;

/// Where a convolution's windows sit on its input.
#[derive(Debug, PartialEq)]
struct Geometry {
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dilations: Vec<usize>,
    /// Padding before each spatial dim (negative for a transposed
    /// convolution whose requested output is larger than its natural size).
    pads_begin: Vec<isize>,
    /// The output's spatial dims.
    out: Vec<usize>,
}

/// Checks the data and weight shapes shared by the convolutions and returns
/// the kernel's spatial dims. `w_in` is the weight dim that counts input
/// channels per group (1 for `Conv`, 0 for `ConvTranspose`).
fn check_shapes(x: &[usize], w: &[usize], group: i64, transposed: bool) -> Result<Vec<usize>, EvalError> {
    if x.len() < 3 || w.len() != x.len() {
        return Err(EvalError::new(format!(
            "convolution needs X as [N, C, spatial...] and W of the same rank, got X {x:?} and W {w:?}"
        )));
    }
    if group < 1 {
        return Err(EvalError::new(format!("group = {group} must be at least 1")));
    }
    let g = group as usize;
    let c = x[1];
    let ok = if transposed { w[0] == c && c.is_multiple_of(g) } else { w[1] * g == c && w[0].is_multiple_of(g) };
    if !ok {
        return Err(EvalError::new(if transposed {
            format!("ConvTranspose: W {w:?} must be [C, M/group, k...] for X {x:?} with group {g}")
        } else {
            format!("convolution: W {w:?} must be [M, C/group, k...] with M divisible by group for X {x:?}, group {g}")
        }));
    }
    if w[2..].contains(&0) {
        return Err(EvalError::new(format!("the kernel of W {w:?} has an empty spatial dim")));
    }
    Ok(w[2..].to_vec())
}

fn kernel_attr(attr: &Option<Vec<i64>>, from_w: &[usize]) -> Result<(), EvalError> {
    if let Some(k) = attr
        && (k.len() != from_w.len() || k.iter().zip(from_w).any(|(&a, &b)| a != b as i64))
    {
        return Err(EvalError::new(format!("attribute kernel_shape {k:?} disagrees with the weight's {from_w:?}")));
    }
    Ok(())
}

/// The geometry of a forward convolution (`Conv`, `ConvInteger`,
/// `QLinearConv`, `DeformConv`).
fn conv_geometry(a: &Conv, x_spatial: &[usize], kernel: Vec<usize>) -> Result<Geometry, EvalError> {
    let n = x_spatial.len();
    kernel_attr(&a.kernel_shape, &kernel)?;
    let strides = spatial_attr(&a.strides, n, 1, "strides", 1)?;
    let dilations = spatial_attr(&a.dilations, n, 1, "dilations", 1)?;
    let (pb, pe) = match a.auto_pad {
        AutoPad::NotSet => pads_attr(&a.pads, n)?,
        AutoPad::Valid => (vec![0; n], vec![0; n]),
        AutoPad::SameUpper | AutoPad::SameLower => {
            let mut pb = vec![0; n];
            let mut pe = vec![0; n];
            for d in 0..n {
                let eff = kernel_span(kernel[d], dilations[d])?;
                let out = x_spatial[d].div_ceil(strides[d]);
                let span = (out.max(1) - 1).checked_mul(strides[d]).and_then(|v| v.checked_add(eff));
                let total = no_overflow(span, "the padding for auto_pad")?.saturating_sub(x_spatial[d]);
                (pb[d], pe[d]) = split_same(total, a.auto_pad == AutoPad::SameUpper);
            }
            (pb, pe)
        }
    };
    let mut out = Vec::with_capacity(n);
    for d in 0..n {
        let eff = kernel_span(kernel[d], dilations[d])?;
        let padded = no_overflow(x_spatial[d].checked_add(pb[d]).and_then(|v| v.checked_add(pe[d])), "pads")?;
        if padded < eff {
            return Err(EvalError::new(format!(
                "spatial dim {d}: the kernel spans {eff} (size {}, dilation {}) but the padded input has {padded}",
                kernel[d], dilations[d]
            )));
        }
        out.push((padded - eff) / strides[d] + 1);
    }
    Ok(Geometry { kernel, strides, dilations, pads_begin: pb.iter().map(|&p| p as isize).collect(), out })
}

/// Row-major strides of a shape.
fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Unravels a flat row-major index.
fn unravel(mut i: usize, shape: &[usize], out: &mut [usize]) {
    for d in (0..shape.len()).rev() {
        out[d] = i % shape[d];
        i /= shape[d];
    }
}

/// For every kernel position `k` and grid position `o` (flat, row-major),
/// the flat offset into `target` of coordinate `o·stride + k·dilation -
/// pad_begin`, or -1 where that falls outside `target`. Indexed `[k · |grid| + o]`.
fn tap_table(target: &[usize], grid: &[usize], g: &Geometry) -> Vec<isize> {
    let nd = target.len();
    let tstrides = strides_of(target);
    let kk: usize = g.kernel.iter().product();
    let p: usize = grid.iter().product();
    let mut table = Vec::with_capacity(kk * p);
    let (mut ki, mut oi) = (vec![0; nd], vec![0; nd]);
    for kf in 0..kk {
        unravel(kf, &g.kernel, &mut ki);
        for of in 0..p {
            unravel(of, grid, &mut oi);
            let mut off = 0isize;
            for d in 0..nd {
                let c = (oi[d] * g.strides[d] + ki[d] * g.dilations[d]) as isize - g.pads_begin[d];
                if c < 0 || c >= target[d] as isize {
                    off = -1;
                    break;
                }
                off += c * tstrides[d] as isize;
            }
            table.push(off);
        }
    }
    table
}

/// Forward convolution of `x` [N, C, in...] with `w` [M, C/group, k...]:
/// im2col, then one product per image and group. Padding reads as zero.
fn conv_core<T: MatElem>(x: ArrayViewD<T>, w: ArrayViewD<T>, group: usize, g: &Geometry) -> ArrayD<T> {
    let (n, c, m) = (x.shape()[0], x.shape()[1], w.shape()[0]);
    let (cg, mg) = (c / group, m / group);
    let kk: usize = g.kernel.iter().product();
    let p: usize = g.out.iter().product();
    let in_sp: usize = x.shape()[2..].iter().product();
    let taps = tap_table(&x.shape()[2..], &g.out, g);
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let w = w.as_standard_layout();
    let w2 = w.view().into_shape_with_order((m, cg * kk)).expect("weight is [M, C/group, k...]");
    let mut out = Array3::<T>::zeros((n, m, p));
    let mut cols = Array2::<T>::zeros((cg * kk, p));
    for ni in 0..n {
        for gi in 0..group {
            for ci in 0..cg {
                let base = (ni * c + gi * cg + ci) * in_sp;
                for k in 0..kk {
                    let mut row = cols.row_mut(ci * kk + k);
                    for (dst, &off) in row.iter_mut().zip(&taps[k * p..(k + 1) * p]) {
                        *dst = if off >= 0 { xs[base + off as usize] } else { T::zero() };
                    }
                }
            }
            let wg = w2.slice(s![gi * mg..(gi + 1) * mg, ..]);
            let mut og = out.slice_mut(s![ni, gi * mg..(gi + 1) * mg, ..]);
            T::gemm(&wg, &cols.view(), &mut og);
        }
    }
    let mut shape = vec![n, m];
    shape.extend(&g.out);
    out.into_shape_with_order(IxDyn(&shape)).expect("sizes agree")
}

/// Adds a per-output-channel bias to [N, M, spatial...].
fn add_bias<T: Copy>(y: &mut ArrayD<T>, b: &[T], add: impl Fn(T, T) -> T) {
    let m = y.shape()[1];
    let inner: usize = y.shape()[2..].iter().product();
    for (i, v) in y.iter_mut().enumerate() {
        *v = add(*v, b[(i / inner) % m]);
    }
}

fn bias_arg(inputs: &[Option<Value>], i: usize, m: usize) -> Result<Option<&Tensor>, EvalError> {
    let b = opt_tensor_arg(inputs, i, "B")?;
    if let Some(b) = b
        && (b.rank() != 1 || b.len() != m)
    {
        return Err(EvalError::new(format!("bias B of shape {:?} must be [{m}] (one per output channel)", b.shape())));
    }
    Ok(b)
}

fn float_inputs(ts: &[(&Tensor, &str)], op: &str) -> Result<DType, EvalError> {
    let d = ts[0].0.dtype();
    for (t, what) in ts {
        if !is_wide_float(t.dtype()) {
            return Err(EvalError::new(format!("{op} {what} must be a float tensor, got {}", t.dtype())));
        }
        if t.dtype() != d {
            return Err(EvalError::new(format!("{op} inputs must share one type, {what} is {} not {d}", t.dtype())));
        }
    }
    Ok(d)
}

/// `Conv`.
pub(crate) fn conv(a: &Conv, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "X")?;
    let w = tensor_arg(inputs, 1, "W")?;
    let kernel = check_shapes(x.shape(), w.shape(), a.group, false)?;
    let b = bias_arg(inputs, 2, w.shape()[0])?;
    let mut ts = vec![(x, "X"), (w, "W")];
    ts.extend(b.map(|b| (b, "B")));
    let dtype = float_inputs(&ts, "Conv")?;
    let g = conv_geometry(a, &x.shape()[2..], kernel)?;
    fn run<T: Real + MatElem>(x: &Tensor, w: &Tensor, b: Option<&Tensor>, group: usize, g: &Geometry) -> Outputs {
        let mut y = conv_core::<T>(real_cow(x, "X")?.view(), real_cow(w, "W")?.view(), group, g);
        if let Some(b) = b {
            let b = real_array::<T>(b, "B")?;
            add_bias(&mut y, b.as_slice().expect("standard layout"), |a, b| a + b);
        }
        single(real_tensor(y, x.dtype()))
    }
    match dtype {
        DType::F64 => run::<f64>(x, w, b, a.group as usize, &g),
        _ => run::<f32>(x, w, b, a.group as usize, &g),
    }
}

/// The geometry of a transposed convolution, following the ONNX definition:
/// either explicit pads give the output size, or the output size (requested,
/// or `input · stride` for `SAME_*`) gives the pads.
fn transpose_geometry(a: &ConvTranspose, x_spatial: &[usize], kernel: Vec<usize>) -> Result<Geometry, EvalError> {
    let n = x_spatial.len();
    kernel_attr(&a.kernel_shape, &kernel)?;
    let strides = spatial_attr(&a.strides, n, 1, "strides", 1)?;
    let dilations = spatial_attr(&a.dilations, n, 1, "dilations", 1)?;
    let out_pad = spatial_attr(&a.output_padding, n, 0, "output_padding", 0)?;
    // The size with no padding at all.
    let mut natural = Vec::with_capacity(n);
    for d in 0..n {
        let steps = x_spatial[d].checked_sub(1).ok_or_else(|| {
            EvalError::new(format!("ConvTranspose input has an empty spatial dim {d}: {x_spatial:?}"))
        })?;
        let span = kernel_span(kernel[d], dilations[d])?;
        let size =
            strides[d].checked_mul(steps).and_then(|v| v.checked_add(out_pad[d])).and_then(|v| v.checked_add(span));
        natural.push(no_overflow(size, "the ConvTranspose output size")?);
    }
    let requested: Option<Vec<usize>> = match &a.output_shape {
        None => None,
        Some(s) => {
            // Older exporters sometimes give the full [N, C, spatial...] shape.
            let s = if s.len() == n + 2 { &s[2..] } else { &s[..] };
            if s.len() != n || s.iter().any(|&v| v < 0) {
                return Err(EvalError::new(format!(
                    "attribute output_shape {:?} does not give {n} spatial dims",
                    a.output_shape
                )));
            }
            Some(s.iter().map(|&v| v as usize).collect())
        }
    };
    let same = matches!(a.auto_pad, AutoPad::SameUpper | AutoPad::SameLower);
    let explicit_pads = a.auto_pad == AutoPad::NotSet && a.pads.is_some();
    let (pads_begin, out) = if requested.is_some() && !explicit_pads || same {
        let out = match requested {
            Some(o) => o,
            None => (0..n)
                .map(|d| no_overflow(x_spatial[d].checked_mul(strides[d]), "the ConvTranspose output size"))
                .collect::<Result<_, _>>()?,
        };
        let pads = (0..n)
            .map(|d| {
                let total = natural[d] as isize - out[d] as isize;
                let half = total.div_euclid(2);
                if a.auto_pad == AutoPad::SameUpper { half } else { total - half }
            })
            .collect();
        (pads, out)
    } else {
        let (pb, pe) = if a.auto_pad == AutoPad::Valid { (vec![0; n], vec![0; n]) } else { pads_attr(&a.pads, n)? };
        let out = match requested {
            Some(o) => o,
            None => (0..n)
                .map(|d| {
                    natural[d].checked_sub(pb[d] + pe[d]).ok_or_else(|| {
                        EvalError::new(format!(
                            "spatial dim {d}: pads {} + {} exceed the output size {}",
                            pb[d], pe[d], natural[d]
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        (pb.iter().map(|&p| p as isize).collect(), out)
    };
    Ok(Geometry { kernel, strides, dilations, pads_begin, out })
}

/// `ConvTranspose`.
pub(crate) fn conv_transpose(a: &ConvTranspose, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "X")?;
    let w = tensor_arg(inputs, 1, "W")?;
    let kernel = check_shapes(x.shape(), w.shape(), a.group, true)?;
    let group = a.group as usize;
    let m = w.shape()[1] * group;
    let b = bias_arg(inputs, 2, m)?;
    let mut ts = vec![(x, "X"), (w, "W")];
    ts.extend(b.map(|b| (b, "B")));
    let dtype = float_inputs(&ts, "ConvTranspose")?;
    let g = transpose_geometry(a, &x.shape()[2..], kernel)?;
    no_overflow(g.out.iter().try_fold(x.shape()[0] * m, |acc, &d| acc.checked_mul(d)), "the output size")?;
    fn run<T: Real + MatElem>(x: &Tensor, w: &Tensor, b: Option<&Tensor>, group: usize, g: &Geometry) -> Outputs {
        let mut y = conv_transpose_core::<T>(real_cow(x, "X")?.view(), real_cow(w, "W")?.view(), group, g);
        if let Some(b) = b {
            let b = real_array::<T>(b, "B")?;
            add_bias(&mut y, b.as_slice().expect("standard layout"), |a, b| a + b);
        }
        single(real_tensor(y, x.dtype()))
    }
    match dtype {
        DType::F64 => run::<f64>(x, w, b, group, &g),
        _ => run::<f32>(x, w, b, group, &g),
    }
}

/// Transposed convolution of `x` [N, C, in...] with `w` [C, M/group, k...]:
/// per image and group, `Wᵀ · X` gives every kernel tap's contribution, which
/// col2im adds into the output.
fn conv_transpose_core<T: MatElem>(x: ArrayViewD<T>, w: ArrayViewD<T>, group: usize, g: &Geometry) -> ArrayD<T> {
    let (n, c) = (x.shape()[0], x.shape()[1]);
    let cg = c / group;
    let mg = w.shape()[1];
    let m = mg * group;
    let kk: usize = g.kernel.iter().product();
    let p_in: usize = x.shape()[2..].iter().product();
    let p_out: usize = g.out.iter().product();
    let taps = tap_table(&g.out, &x.shape()[2..], g);
    let x = x.as_standard_layout();
    let x3 = x.view().into_shape_with_order((n, c, p_in)).expect("X is [N, C, spatial...]");
    let w = w.as_standard_layout();
    let w2 = w.view().into_shape_with_order((c, mg * kk)).expect("W is [C, M/group, k...]");
    let mut out = Array3::<T>::zeros((n, m, p_out));
    let mut cols = Array2::<T>::zeros((mg * kk, p_in));
    for ni in 0..n {
        for gi in 0..group {
            let wg = w2.slice(s![gi * cg..(gi + 1) * cg, ..]);
            let xg = x3.slice(s![ni, gi * cg..(gi + 1) * cg, ..]);
            T::gemm(&wg.t(), &xg, &mut cols.view_mut());
            for mi in 0..mg {
                let mut dst = out.slice_mut(s![ni, gi * mg + mi, ..]);
                for k in 0..kk {
                    let row = cols.row(mi * kk + k);
                    for (&v, &off) in row.iter().zip(&taps[k * p_in..(k + 1) * p_in]) {
                        if off >= 0 {
                            let d = &mut dst[off as usize];
                            *d = d.plus(v);
                        }
                    }
                }
            }
        }
    }
    let mut shape = vec![n, m];
    shape.extend(&g.out);
    out.into_shape_with_order(IxDyn(&shape)).expect("sizes agree")
}

/// `DeformConv`: each kernel tap samples the input at its regular position
/// plus a learned offset, by multilinear interpolation (zero outside the
/// input), optionally weighted by a mask.
pub(crate) fn deform_conv(a: &DeformConv, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "X")?;
    let w = tensor_arg(inputs, 1, "W")?;
    let offset = tensor_arg(inputs, 2, "offset")?;
    let kernel = check_shapes(x.shape(), w.shape(), a.group, false)?;
    let b = bias_arg(inputs, 3, w.shape()[0])?;
    let mask = opt_tensor_arg(inputs, 4, "mask")?;
    let mut ts = vec![(x, "X"), (w, "W"), (offset, "offset")];
    ts.extend(b.map(|b| (b, "B")));
    ts.extend(mask.map(|m| (m, "mask")));
    let dtype = float_inputs(&ts, "DeformConv")?;
    let conv_attrs = Conv {
        auto_pad: AutoPad::NotSet,
        dilations: a.dilations.clone(),
        group: a.group,
        kernel_shape: a.kernel_shape.clone(),
        pads: a.pads.clone(),
        strides: a.strides.clone(),
    };
    let g = conv_geometry(&conv_attrs, &x.shape()[2..], kernel)?;
    let nd = g.out.len();
    let kk: usize = g.kernel.iter().product();
    let c = x.shape()[1];
    if a.offset_group < 1 || c % a.offset_group as usize != 0 {
        return Err(EvalError::new(format!("offset_group {} must divide the {c} input channels", a.offset_group)));
    }
    let og = a.offset_group as usize;
    let mut want = vec![x.shape()[0], og * kk * nd];
    want.extend(&g.out);
    if offset.shape() != want.as_slice() {
        return Err(EvalError::new(format!("offset has shape {:?}, expected {want:?}", offset.shape())));
    }
    want[1] = og * kk;
    if let Some(m) = mask
        && m.shape() != want.as_slice()
    {
        return Err(EvalError::new(format!("mask has shape {:?}, expected {want:?}", m.shape())));
    }
    fn run<T: Real + MatElem>(
        t: [&Tensor; 3],
        b: Option<&Tensor>,
        mask: Option<&Tensor>,
        group: usize,
        og: usize,
        g: &Geometry,
    ) -> Outputs {
        let x = real_array::<T>(t[0], "X")?;
        let w = real_array::<T>(t[1], "W")?;
        let off = real_array::<T>(t[2], "offset")?;
        let mask = mask.map(|m| real_array::<T>(m, "mask")).transpose()?;
        let mut y = deform_core(&x, &w, &off, mask.as_ref(), group, og, g);
        if let Some(b) = b {
            let b = real_array::<T>(b, "B")?;
            add_bias(&mut y, b.as_slice().expect("standard layout"), |a, b| a + b);
        }
        single(real_tensor(y, t[0].dtype()))
    }
    match dtype {
        DType::F64 => run::<f64>([x, w, offset], b, mask, a.group as usize, og, &g),
        _ => run::<f32>([x, w, offset], b, mask, a.group as usize, og, &g),
    }
}

fn deform_core<T: Real + MatElem>(
    x: &ArrayD<T>,
    w: &ArrayD<T>,
    off: &ArrayD<T>,
    mask: Option<&ArrayD<T>>,
    group: usize,
    og: usize,
    g: &Geometry,
) -> ArrayD<T> {
    let (n, c, m) = (x.shape()[0], x.shape()[1], w.shape()[0]);
    let (cg, mg) = (c / group, m / group);
    let in_shape = &x.shape()[2..];
    let nd = in_shape.len();
    let in_sp: usize = in_shape.iter().product();
    let in_strides = strides_of(in_shape);
    let kk: usize = g.kernel.iter().product();
    let p: usize = g.out.iter().product();
    let xs = x.as_slice().expect("standard layout");
    let offs = off.as_slice().expect("standard layout");
    let masks = mask.map(|m| m.as_slice().expect("standard layout"));
    let w2 = w.view().into_shape_with_order((m, cg * kk)).expect("weight is [M, C/group, k...]");
    let mut out = Array3::<T>::zeros((n, m, p));
    let mut cols = Array2::<T>::zeros((cg * kk, p));
    let (mut ki, mut oi) = (vec![0; nd], vec![0; nd]);
    let mut pos = vec![0.0f64; nd];
    for ni in 0..n {
        for gi in 0..group {
            for ci in 0..cg {
                let ch = gi * cg + ci;
                let ogi = ch / (c / og);
                let plane = &xs[(ni * c + ch) * in_sp..(ni * c + ch + 1) * in_sp];
                for k in 0..kk {
                    unravel(k, &g.kernel, &mut ki);
                    for o in 0..p {
                        unravel(o, &g.out, &mut oi);
                        for d in 0..nd {
                            let base = (oi[d] * g.strides[d] + ki[d] * g.dilations[d]) as f64 - g.pads_begin[d] as f64;
                            let oc = ((ni * og + ogi) * kk + k) * nd + d;
                            pos[d] = base + offs[oc * p + o].wide();
                        }
                        let mut v = interpolate(plane, in_shape, &in_strides, &pos);
                        if let Some(ms) = masks {
                            v *= ms[((ni * og + ogi) * kk + k) * p + o].wide();
                        }
                        cols[[ci * kk + k, o]] = T::of(v);
                    }
                }
            }
            let wg = w2.slice(s![gi * mg..(gi + 1) * mg, ..]);
            let mut dst = out.slice_mut(s![ni, gi * mg..(gi + 1) * mg, ..]);
            T::gemm(&wg, &cols.view(), &mut dst);
        }
    }
    let mut shape = vec![n, m];
    shape.extend(&g.out);
    out.into_shape_with_order(IxDyn(&shape)).expect("sizes agree")
}

/// Multilinear interpolation of a row-major grid at a real position; corners
/// outside the grid read as zero.
fn interpolate<T: Real>(plane: &[T], shape: &[usize], strides: &[usize], pos: &[f64]) -> f64 {
    let nd = shape.len();
    let mut total = 0.0;
    'corner: for corner in 0..(1usize << nd) {
        let mut weight = 1.0;
        let mut off = 0usize;
        for d in 0..nd {
            let lo = pos[d].floor();
            let frac = pos[d] - lo;
            let up = corner >> d & 1 == 1;
            let coord = lo + if up { 1.0 } else { 0.0 };
            weight *= if up { frac } else { 1.0 - frac };
            if weight == 0.0 || !(coord >= 0.0 && coord < shape[d] as f64) {
                continue 'corner;
            }
            off += coord as usize * strides[d];
        }
        total += weight * plane[off].wide();
    }
    total
}

/// Integer operands with zero points subtracted, for `ConvInteger` and
/// `QLinearConv`: `x_zero_point` is a scalar, `w_zero_point` a scalar or one
/// per output channel.
fn integer_operands(
    x: &Tensor,
    xzp: Option<&Tensor>,
    w: &Tensor,
    wzp: Option<&Tensor>,
    op: &str,
) -> Result<(ArrayD<i64>, ArrayD<i64>), EvalError> {
    for (t, what) in [(Some(x), "x"), (xzp, "x_zero_point"), (Some(w), "w"), (wzp, "w_zero_point")] {
        if let Some(t) = t
            && !matches!(t.dtype(), DType::I8 | DType::U8)
        {
            return Err(EvalError::new(format!("{op} {what} must be int8 or uint8, got {}", t.dtype())));
        }
    }
    let mut xv = int_array(x, "x")?;
    if let Some(z) = xzp {
        if z.len() != 1 {
            return Err(EvalError::new(format!("{op} x_zero_point must be a scalar, got shape {:?}", z.shape())));
        }
        let z = int_array(z, "x_zero_point")?.iter().copied().next().expect("one element");
        xv.mapv_inplace(|v| v - z);
    }
    let mut wv = int_array(w, "w")?;
    if let Some(z) = wzp {
        let m = w.shape()[0];
        let zs: Vec<i64> = int_array(z, "w_zero_point")?.iter().copied().collect();
        if zs.len() != 1 && (z.rank() != 1 || zs.len() != m) {
            return Err(EvalError::new(format!(
                "{op} w_zero_point of shape {:?} must be a scalar or have one value per output channel ({m})",
                z.shape()
            )));
        }
        let per = w.len() / m.max(1);
        for (i, v) in wv.iter_mut().enumerate() {
            *v -= if zs.len() == 1 { zs[0] } else { zs[i / per] };
        }
    }
    Ok((xv, wv))
}

/// `ConvInteger`: convolution of zero-point-shifted integers, int32 output.
pub(crate) fn conv_integer(a: &Conv, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "x")?;
    let w = tensor_arg(inputs, 1, "w")?;
    let xzp = opt_tensor_arg(inputs, 2, "x_zero_point")?;
    let wzp = opt_tensor_arg(inputs, 3, "w_zero_point")?;
    let kernel = check_shapes(x.shape(), w.shape(), a.group, false)?;
    let g = conv_geometry(a, &x.shape()[2..], kernel)?;
    let (xv, wv) = integer_operands(x, xzp, w, wzp, "ConvInteger")?;
    let y = conv_core::<i64>(xv.view(), wv.view(), a.group as usize, &g);
    single(super::int_tensor(y, DType::I32)?)
}

/// `QLinearConv`: integer convolution (accumulated in int32 as ONNX's
/// reference does), bias added, then requantised with
/// `x_scale · w_scale / y_scale` (computed in f32) and `y_zero_point`.
pub(crate) fn qlinear_conv(a: &Conv, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "x")?;
    let x_scale = tensor_arg(inputs, 1, "x_scale")?;
    let xzp = opt_tensor_arg(inputs, 2, "x_zero_point")?;
    let w = tensor_arg(inputs, 3, "w")?;
    let w_scale = tensor_arg(inputs, 4, "w_scale")?;
    let wzp = opt_tensor_arg(inputs, 5, "w_zero_point")?;
    let y_scale = tensor_arg(inputs, 6, "y_scale")?;
    let yzp = opt_tensor_arg(inputs, 7, "y_zero_point")?;
    let kernel = check_shapes(x.shape(), w.shape(), a.group, false)?;
    let m = w.shape()[0];
    let b = opt_tensor_arg(inputs, 8, "B")?;
    if let Some(b) = b
        && (b.dtype() != DType::I32 || b.rank() != 1 || b.len() != m)
    {
        return Err(EvalError::new(format!("QLinearConv bias must be int32 [{m}], got {}{:?}", b.dtype(), b.shape())));
    }
    let g = conv_geometry(a, &x.shape()[2..], kernel)?;
    let (xv, wv) = integer_operands(x, xzp, w, wzp, "QLinearConv")?;
    let scalar = |t: &Tensor, what: &str| -> Result<f32, EvalError> {
        match t.as_array::<f32>() {
            Some(v) if v.len() == 1 => Ok(v.iter().copied().next().expect("one element")),
            _ => Err(EvalError::new(format!(
                "QLinearConv {what} must be an f32 scalar, got {}{:?}",
                t.dtype(),
                t.shape()
            ))),
        }
    };
    let (xs, ys) = (scalar(x_scale, "x_scale")?, scalar(y_scale, "y_scale")?);
    let ws: Vec<f32> = match w_scale.as_array::<f32>() {
        Some(v) if v.len() == 1 || (v.ndim() == 1 && v.len() == m) => v.iter().copied().collect(),
        _ => {
            return Err(EvalError::new(format!(
                "QLinearConv w_scale must be f32, a scalar or one per output channel ({m}), got {}{:?}",
                w_scale.dtype(),
                w_scale.shape()
            )));
        }
    };
    let out_dtype = yzp.map(|z| z.dtype()).unwrap_or(x.dtype());
    if !matches!(out_dtype, DType::I8 | DType::U8) {
        return Err(EvalError::new(format!("QLinearConv y_zero_point must be int8 or uint8, got {out_dtype}")));
    }
    let zy = match yzp {
        Some(z) if z.len() == 1 => int_array(z, "y_zero_point")?.iter().copied().next().expect("one element") as f64,
        Some(z) => {
            return Err(EvalError::new(format!("QLinearConv y_zero_point must be a scalar, got {:?}", z.shape())));
        }
        None => 0.0,
    };
    let mut acc = conv_core::<i64>(xv.view(), wv.view(), a.group as usize, &g);
    if let Some(b) = b {
        let bv: Vec<i64> = int_array(b, "B")?.iter().copied().collect();
        add_bias(&mut acc, &bv, |a, b| a.wrapping_add(b));
    }
    let (lo, hi) = if out_dtype == DType::I8 { (-128.0, 127.0) } else { (0.0, 255.0) };
    let inner: usize = acc.shape()[2..].iter().product();
    let v: Vec<f64> = acc
        .iter()
        .enumerate()
        .map(|(i, &r)| {
            let wsc = if ws.len() == 1 { ws[0] } else { ws[(i / inner) % m] };
            let mult = round_to(DType::F32, (xs * wsc) as f64 / ys as f64);
            ((r as i32) as f64 * mult + zy).clamp(lo, hi).round_ties_even()
        })
        .collect();
    single(super::tensor_from_f64(acc.shape(), v, out_dtype)?)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, run1, t};
    use super::*;
    use sharc_ir::Op;

    fn conv_attrs() -> Conv {
        Conv { auto_pad: AutoPad::NotSet, dilations: None, group: 1, kernel_shape: None, pads: None, strides: None }
    }

    fn iota(n: usize) -> Vec<f32> {
        (0..n).map(|v| v as f32).collect()
    }

    #[test]
    fn conv_basic_with_padding() {
        // onnx test_basic_conv_with_padding / without_padding: 5x5 iota, 3x3 ones.
        let x = t(&[1, 1, 5, 5], iota(25));
        let w = t(&[1, 1, 3, 3], vec![1f32; 9]);
        let y =
            run1(&Op::Conv(Conv { pads: Some(vec![1, 1, 1, 1]), ..conv_attrs() }), &[x.clone(), w.clone()]).unwrap();
        assert_close(
            &y,
            &[1, 1, 5, 5],
            &[
                12., 21., 27., 33., 24., 33., 54., 63., 72., 51., 63., 99., 108., 117., 81., 93., 144., 153., 162.,
                111., 72., 111., 117., 123., 84.,
            ],
            0.0,
        );
        let y = run1(&Op::Conv(conv_attrs()), &[x, w]).unwrap();
        assert_close(&y, &[1, 1, 3, 3], &[54., 63., 72., 99., 108., 117., 144., 153., 162.], 0.0);
    }

    #[test]
    fn conv_strides_asymmetric_pads_and_same() {
        // onnx test_conv_with_strides_and_asymmetric_padding: 7x5 iota, 3x3 ones, pads [1,0,1,0], strides 2.
        let x = t(&[1, 1, 7, 5], iota(35));
        let w = t(&[1, 1, 3, 3], vec![1f32; 9]);
        let a = Conv { pads: Some(vec![1, 0, 1, 0]), strides: Some(vec![2, 2]), ..conv_attrs() };
        let y = run1(&Op::Conv(a), &[x, w.clone()]).unwrap();
        assert_close(&y, &[1, 1, 4, 2], &[21., 33., 99., 117., 189., 207., 171., 183.], 0.0);
        // onnx test_conv_with_autopad_same: SAME_LOWER, strides 2 on 5x5.
        let a = Conv { auto_pad: AutoPad::SameLower, strides: Some(vec![2, 2]), ..conv_attrs() };
        let y = run1(&Op::Conv(a), &[t(&[1, 1, 5, 5], iota(25)), w]).unwrap();
        assert_close(&y, &[1, 1, 3, 3], &[12., 27., 24., 63., 108., 81., 72., 117., 84.], 0.0);
    }

    #[test]
    fn conv_groups_dilations_bias_1d() {
        // torch.nn.functional.conv1d(arange(8.).reshape(1,2,4), [[[1,-1]],[[2,0]]], bias=[10,20], groups=2, dilation=2)
        let x = t(&[1, 2, 4], iota(8));
        let w = t(&[2, 1, 2], vec![1f32, -1., 2., 0.]);
        let b = t(&[2], vec![10f32, 20.]);
        let a = Conv { group: 2, dilations: Some(vec![2]), ..conv_attrs() };
        let y = run1(&Op::Conv(a), &[x, w, b]).unwrap();
        assert_close(&y, &[1, 2, 2], &[8., 8., 28., 30.], 0.0);
    }

    #[test]
    fn conv_3d_matches_direct_sum() {
        // A 2x2x2 kernel of ones over a 3x3x3 iota: each output is the sum of its 8-cube.
        let y = run1(
            &Op::Conv(conv_attrs()),
            &[
                t(&[1, 1, 3, 3, 3], iota(27)),
                t(&[1, 1, 2, 2, 2], vec![1f64; 8].into_iter().map(|v| v as f32).collect()),
            ],
        )
        .unwrap();
        let sum = |a: usize, b: usize, c: usize| -> f64 {
            let mut s = 0.0;
            for i in 0..2 {
                for j in 0..2 {
                    for k in 0..2 {
                        s += ((a + i) * 9 + (b + j) * 3 + c + k) as f64;
                    }
                }
            }
            s
        };
        let want: Vec<f64> = (0..8).map(|i| sum(i / 4, (i / 2) % 2, i % 2)).collect();
        assert_close(&y, &[1, 1, 2, 2, 2], &want, 0.0);
    }

    #[test]
    fn conv_errors() {
        let x = t(&[1, 2, 3, 3], iota(18));
        let e = run1(&Op::Conv(conv_attrs()), &[x.clone(), t(&[1, 1, 2, 2], iota(4))]).unwrap_err();
        assert!(e.message.contains("C/group"), "{}", e.message);
        let e = run1(&Op::Conv(conv_attrs()), &[x.clone(), t(&[1, 2, 4, 4], iota(32))]).unwrap_err();
        assert!(e.message.contains("padded input"), "{}", e.message);
        let e = run1(&Op::Conv(conv_attrs()), &[x.clone(), t(&[1, 2, 0, 1], Vec::<f32>::new())]).unwrap_err();
        assert!(e.message.contains("empty spatial dim"), "{}", e.message);
        // Hostile attribute values give errors, not overflow panics.
        let a = Conv { dilations: Some(vec![i64::MAX, 1]), ..conv_attrs() };
        assert!(run1(&Op::Conv(a), &[x.clone(), t(&[1, 2, 2, 2], iota(8))]).is_err());
        let a = Conv { pads: Some(vec![i64::MAX, 0, i64::MAX, 0]), ..conv_attrs() };
        assert!(run1(&Op::Conv(a), &[x.clone(), t(&[1, 2, 2, 2], iota(8))]).is_err());
        let a = Conv { kernel_shape: Some(vec![3, 3]), ..conv_attrs() };
        assert!(run1(&Op::Conv(a), &[x.clone(), t(&[1, 2, 2, 2], iota(8))]).is_err());
        assert!(run1(&Op::Conv(conv_attrs()), &[x, t(&[1, 2, 2, 2], vec![1f64; 8])]).is_err());
    }

    fn ct_attrs() -> ConvTranspose {
        ConvTranspose {
            auto_pad: AutoPad::NotSet,
            dilations: None,
            group: 1,
            kernel_shape: None,
            output_padding: None,
            output_shape: None,
            pads: None,
            strides: None,
        }
    }

    #[test]
    fn conv_transpose_basic_and_strided() {
        // onnx test_convtranspose_1d: x [0,1,2], w ones [1,2,3].
        let y = run1(&Op::ConvTranspose(ct_attrs()), &[t(&[1, 1, 3], iota(3)), t(&[1, 2, 3], vec![1f32; 6])]).unwrap();
        assert_close(&y, &[1, 2, 5], &[0., 1., 3., 3., 2., 0., 1., 3., 3., 2.], 0.0);
        // Stride 2 with bias, and output_padding adding a trailing zero (+bias) column.
        let a = ConvTranspose { strides: Some(vec![2]), output_padding: Some(vec![1]), ..ct_attrs() };
        let y = run1(
            &Op::ConvTranspose(a),
            &[t(&[1, 1, 2], vec![1f32, 2.]), t(&[1, 1, 2], vec![1f32, 10.]), t(&[1], vec![0.5f32])],
        )
        .unwrap();
        assert_close(&y, &[1, 1, 5], &[1.5, 10.5, 2.5, 20.5, 0.5], 0.0);
        // Explicit pads crop: same as above with pads [1, 1] (without output padding).
        let a = ConvTranspose { strides: Some(vec![2]), pads: Some(vec![1, 1]), ..ct_attrs() };
        let y = run1(&Op::ConvTranspose(a), &[t(&[1, 1, 2], vec![1f32, 2.]), t(&[1, 1, 2], vec![1f32, 10.])]).unwrap();
        assert_close(&y, &[1, 1, 2], &[10., 2.], 0.0);
    }

    #[test]
    fn conv_transpose_output_shape_and_same() {
        // Requested output 6 from natural 5 (stride 2, k 2, in 2): total padding -1 -> begin 0, end -1 (extra zero).
        let a = ConvTranspose { strides: Some(vec![2]), output_shape: Some(vec![6]), ..ct_attrs() };
        let y =
            run1(&Op::ConvTranspose(a), &[t(&[1, 1, 2], vec![1f32, 2.]), t(&[1, 1, 3], vec![1f32, 1., 1.])]).unwrap();
        assert_close(&y, &[1, 1, 6], &[1., 1., 3., 2., 2., 0.], 0.0);
        // SAME_UPPER: output = in * stride = 4, natural 5 -> total 1 -> begin 0, end 1.
        let a = ConvTranspose { strides: Some(vec![2]), auto_pad: AutoPad::SameUpper, ..ct_attrs() };
        let y =
            run1(&Op::ConvTranspose(a), &[t(&[1, 1, 2], vec![1f32, 2.]), t(&[1, 1, 3], vec![1f32, 1., 1.])]).unwrap();
        assert_close(&y, &[1, 1, 4], &[1., 1., 3., 2.], 0.0);
        // SAME_LOWER puts the odd pad first.
        let a = ConvTranspose { strides: Some(vec![2]), auto_pad: AutoPad::SameLower, ..ct_attrs() };
        let y =
            run1(&Op::ConvTranspose(a), &[t(&[1, 1, 2], vec![1f32, 2.]), t(&[1, 1, 3], vec![1f32, 1., 1.])]).unwrap();
        assert_close(&y, &[1, 1, 4], &[1., 3., 2., 2.], 0.0);
    }

    #[test]
    fn conv_transpose_groups_and_dilation() {
        // Two groups, one channel each; dilation 2: y[g] = x[g] scattered with kernel w[g] at gaps of 2.
        let a = ConvTranspose { group: 2, dilations: Some(vec![2]), ..ct_attrs() };
        let y = run1(
            &Op::ConvTranspose(a),
            &[t(&[1, 2, 2], vec![1f32, 2., 3., 4.]), t(&[2, 1, 2], vec![1f32, 1., 1., -1.])],
        )
        .unwrap();
        // Group 0: [1, 2, 1, 2]; group 1: [3, 4, -3, -4].
        assert_close(&y, &[1, 2, 4], &[1., 2., 1., 2., 3., 4., -3., -4.], 0.0);
        let e = run1(&Op::ConvTranspose(ct_attrs()), &[t(&[1, 2, 2], iota(4)), t(&[1, 1, 2], iota(2))]).unwrap_err();
        assert!(e.message.contains("[C, M/group"), "{}", e.message);
        let e = run1(&Op::ConvTranspose(ct_attrs()), &[t(&[1, 1, 0], Vec::<f32>::new()), t(&[1, 1, 2], iota(2))])
            .unwrap_err();
        assert!(e.message.contains("empty spatial dim"), "{}", e.message);
        let a = ConvTranspose { strides: Some(vec![i64::MAX]), ..ct_attrs() };
        assert!(run1(&Op::ConvTranspose(a), &[t(&[1, 1, 3], iota(3)), t(&[1, 1, 2], iota(2))]).is_err());
        let a = ConvTranspose { output_shape: Some(vec![1 << 40]), ..ct_attrs() };
        let e = run1(
            &Op::ConvTranspose(a),
            &[t(&[1 << 20, 1, 1], vec![0f32; 1 << 20]), t(&[1, 1 << 10, 1], vec![0f32; 1 << 10])],
        );
        assert!(e.is_err());
    }

    #[test]
    fn deform_conv_zero_offsets_is_conv() {
        let x = t(&[1, 1, 3, 3], iota(9));
        let w = t(&[1, 1, 2, 2], vec![1f32, 2., 3., 4.]);
        let off = t(&[1, 8, 2, 2], vec![0f32; 32]);
        let a =
            DeformConv { dilations: None, group: 1, kernel_shape: None, offset_group: 1, pads: None, strides: None };
        let y = run1(&Op::DeformConv(a.clone()), &[x.clone(), w.clone(), off]).unwrap();
        let c = run1(&Op::Conv(conv_attrs()), &[x.clone(), w.clone()]).unwrap();
        assert_eq!(y, c);
        // Offsets of +0.5 in both dims for every tap, a mask of 0.5 and bias 1: each tap reads the
        // mean of a 2x2 patch, e.g. output (0, 0) = 0.5 * (1*2 + 2*3 + 3*5 + 4*6) + 1 = 24.5; taps
        // past the edge blend with zeros. Values from onnx.reference's DeformConv.
        let off = t(&[1, 8, 2, 2], vec![0.5f32; 32]);
        let mask = t(&[1, 4, 2, 2], vec![0.5f32; 16]);
        let y = run1(&Op::DeformConv(a), &[x, w, off, t(&[1], vec![1f32]), mask]).unwrap();
        assert_close(&y, &[1, 1, 2, 2], &[24.5, 19.75, 21.875, 16.875], 1e-6);
    }

    #[test]
    fn conv_integer_and_qlinear() {
        // onnx test_convinteger_with_padding: x = arange(2, 11) uint8, w ones [2,1,2,2] with zero points.
        let x = t(&[1, 1, 3, 3], (2u8..11).collect());
        let w = t(&[1, 1, 2, 2], vec![1u8; 4]);
        let a = Conv { pads: Some(vec![1, 1, 1, 1]), ..conv_attrs() };
        let y = run1(&Op::ConvInteger(a), &[x.clone(), w.clone(), t(&[], vec![1u8])]).unwrap();
        assert_eq!(y, Tensor::from_vec(&[1, 1, 4, 4], vec![1i32, 3, 5, 3, 5, 12, 16, 9, 11, 24, 28, 15, 7, 15, 17, 9]));
        let y = run1(&Op::ConvInteger(conv_attrs()), &[x.clone(), w.clone(), t(&[], vec![1u8]), t(&[1], vec![1u8])])
            .unwrap();
        assert_eq!(y, Tensor::from_vec(&[1, 1, 2, 2], vec![0i32; 4]));
        // QLinearConv: 1x1 kernel, so y = round((x - 1) * 2 * 0.5 / 0.25 + 3) clamped, with bias 1 in the accumulator.
        let inputs = [
            x,
            t(&[], vec![2f32]),
            t(&[], vec![1u8]),
            t(&[1, 1, 1, 1], vec![2u8]),
            t(&[1], vec![0.5f32]),
            t(&[1], vec![1u8]),
            t(&[], vec![0.25f32]),
            t(&[], vec![3u8]),
            t(&[1], vec![1i32]),
        ];
        let y = run1(&Op::QLinearConv(conv_attrs()), &inputs).unwrap();
        let want: Vec<u8> = (2..11).map(|v: i32| ((v - 1 + 1) * 4 + 3).min(255) as u8).collect();
        assert_eq!(y, Tensor::from_vec(&[1, 1, 3, 3], want));
    }
}

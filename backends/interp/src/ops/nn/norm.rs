//! Normalisation: `BatchNormalization`, `InstanceNormalization`,
//! `LayerNormalization`, `GroupNormalization`, `RMSNormalization`,
//! `LpNormalization`, `MeanVarianceNormalization`, `LRN`.
//!
//! Statistics are accumulated in `f64` from the exact input values. Where
//! ONNX defines a cast (the `stash_type` of stage one, the cast of the
//! normalised value back to the input type before scale and bias), the value
//! is rounded to that type at that point, so the result is the correctly
//! rounded version of the ONNX function body.

use super::{OpContext, broadcast_index, broadcasts_to, f64_array, is_wide_float, round_to, tensor_from_f64};
use crate::util::{normalize_axis, opt_tensor_arg, tensor_arg};
use sharc_ir::op::{
    BatchNormalization, GroupNormalization, InstanceNormalization, LRN, LayerNormalization, LpNormalization,
    MeanVarianceNormalization, RMSNormalization,
};
use sharc_ir::{DType, EvalError, Tensor, Value};

type Outputs = Result<Vec<Value>, EvalError>;

fn float_arg<'a>(inputs: &'a [Option<Value>], i: usize, what: &str, op: &str) -> Result<&'a Tensor, EvalError> {
    let t = tensor_arg(inputs, i, what)?;
    if !is_wide_float(t.dtype()) {
        return Err(EvalError::new(format!("{op} {what} must be a float tensor, got {}", t.dtype())));
    }
    Ok(t)
}

fn opt_float_arg<'a>(
    inputs: &'a [Option<Value>],
    i: usize,
    what: &str,
    op: &str,
) -> Result<Option<&'a Tensor>, EvalError> {
    match opt_tensor_arg(inputs, i, what)? {
        Some(t) if !is_wide_float(t.dtype()) => {
            Err(EvalError::new(format!("{op} {what} must be a float tensor, got {}", t.dtype())))
        }
        t => Ok(t),
    }
}

/// The precision of stage one from a `stash_type` dtype code.
fn stash(code: i64) -> Result<DType, EvalError> {
    match i32::try_from(code).ok().and_then(DType::from_onnx_code) {
        Some(d) if is_wide_float(d) => Ok(d),
        _ => Err(EvalError::new(format!("stash_type {code} is not a float dtype code (1 = f32, 11 = f64, ...)"))),
    }
}

/// The values of a per-channel parameter, checking its length.
fn per_channel(t: &Tensor, c: usize, what: &str) -> Result<Vec<f64>, EvalError> {
    if t.rank() != 1 || t.len() != c {
        return Err(EvalError::new(format!("{what} of shape {:?} must be [{c}] (one per channel)", t.shape())));
    }
    Ok(f64_array(t, what)?.into_iter().collect())
}

/// A parameter (scale, bias) broadcast unidirectionally to the input.
struct Param {
    values: Vec<f64>,
    /// Set when the parameter only varies over the trailing `inner`
    /// elements (the usual case), so `values` holds one row.
    inner: Option<usize>,
}

impl Param {
    /// Broadcasts `t` to `shape`, keeping a single row when it broadcasts to
    /// the dims from `axis` on.
    fn new(t: &Tensor, shape: &[usize], axis: usize, what: &str) -> Result<Param, EvalError> {
        if !broadcasts_to(t.shape(), shape) {
            return Err(EvalError::new(format!(
                "{what} of shape {:?} does not broadcast to the input {shape:?}",
                t.shape()
            )));
        }
        let v = f64_array(t, what)?;
        let v = v.as_slice().expect("standard layout");
        let (target, inner) = if broadcasts_to(t.shape(), &shape[axis..]) {
            (&shape[axis..], Some(shape[axis..].iter().product()))
        } else {
            (shape, None)
        };
        Ok(Param { values: broadcast_index(target, t.shape()).into_iter().map(|i| v[i]).collect(), inner })
    }

    /// The value for element `j` of row `row` (rows of `inner` elements).
    fn at(&self, row: usize, j: usize, inner: usize) -> f64 {
        match self.inner {
            Some(_) => self.values[j],
            None => self.values[row * inner + j],
        }
    }
}

fn channels_input(x: &Tensor, op: &str) -> Result<(usize, usize, usize), EvalError> {
    if x.rank() < 2 {
        return Err(EvalError::new(format!("{op} needs X as [N, C, ...], got shape {:?}", x.shape())));
    }
    Ok((x.shape()[0], x.shape()[1], x.shape()[2..].iter().product()))
}

/// Mean and population variance (two passes).
fn moments(v: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let (mut n, mut sum) = (0usize, 0.0);
    for x in v.clone() {
        n += 1;
        sum += x;
    }
    let mean = sum / n as f64;
    let var = v.map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
    (mean, var)
}

/// `BatchNormalization`: inference with the given statistics, or training
/// mode with the batch's statistics and updated running ones.
pub(crate) fn batch_norm(a: &BatchNormalization, inputs: &[Option<Value>], cx: &OpContext) -> Outputs {
    const OP: &str = "BatchNormalization";
    let x = float_arg(inputs, 0, "X", OP)?;
    let (n, c, s) = channels_input(x, OP)?;
    let scale = per_channel(float_arg(inputs, 1, "scale", OP)?, c, "scale")?;
    let bias = per_channel(float_arg(inputs, 2, "B", OP)?, c, "B")?;
    let mean_t = float_arg(inputs, 3, "input_mean", OP)?;
    let var_t = float_arg(inputs, 4, "input_var", OP)?;
    let (in_mean, in_var) = (per_channel(mean_t, c, "input_mean")?, per_channel(var_t, c, "input_var")?);
    if !a.training_mode && cx.num_outputs > 1 {
        return Err(EvalError::new("running_mean and running_var are outputs only in training mode"));
    }
    let xs = f64_array(x, "X")?;
    let xs = xs.as_slice().expect("standard layout");
    let eps = a.epsilon as f64;
    let (mean, var) = if a.training_mode {
        (0..c)
            .map(|ci| moments((0..n).flat_map(|ni| xs[(ni * c + ci) * s..(ni * c + ci + 1) * s].iter().copied())))
            .unzip()
    } else {
        (in_mean.clone(), in_var.clone())
    };
    let y: Vec<f64> = xs
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ci = (i / s) % c;
            scale[ci] * (v - mean[ci]) / (var[ci] + eps).sqrt() + bias[ci]
        })
        .collect();
    let mut out = vec![Value::Tensor(tensor_from_f64(x.shape(), y, x.dtype())?)];
    if a.training_mode {
        let m = a.momentum as f64;
        let run = |input: &[f64], cur: &[f64]| input.iter().zip(cur).map(|(i, c)| i * m + c * (1.0 - m)).collect();
        out.push(Value::Tensor(tensor_from_f64(&[c], run(&in_mean, &mean), mean_t.dtype())?));
        out.push(Value::Tensor(tensor_from_f64(&[c], run(&in_var, &var), var_t.dtype())?));
    }
    Ok(out)
}

/// `InstanceNormalization`: per (image, channel) statistics over the spatial dims.
pub(crate) fn instance_norm(a: &InstanceNormalization, inputs: &[Option<Value>]) -> Outputs {
    const OP: &str = "InstanceNormalization";
    let x = float_arg(inputs, 0, "input", OP)?;
    let (_, c, s) = channels_input(x, OP)?;
    let scale = per_channel(float_arg(inputs, 1, "scale", OP)?, c, "scale")?;
    let bias = per_channel(float_arg(inputs, 2, "B", OP)?, c, "B")?;
    let xs = f64_array(x, "input")?;
    let xs = xs.as_slice().expect("standard layout");
    let eps = a.epsilon as f64;
    let mut y = Vec::with_capacity(xs.len());
    // With no spatial elements X is empty and there is no plane to visit.
    for (p, plane) in xs.chunks(s.max(1)).enumerate() {
        let ci = p % c;
        let (mean, var) = moments(plane.iter().copied());
        let inv = 1.0 / (var + eps).sqrt();
        y.extend(plane.iter().map(|&v| scale[ci] * (v - mean) * inv + bias[ci]));
    }
    Ok(vec![Value::Tensor(tensor_from_f64(x.shape(), y, x.dtype())?)])
}

/// `LayerNormalization`: statistics over the dims from `axis` on, computed in
/// `stash_type`; the optional `Mean` and `InvStdDev` outputs have the shape
/// of X with those dims set to 1.
pub(crate) fn layer_norm(a: &LayerNormalization, inputs: &[Option<Value>], cx: &OpContext) -> Outputs {
    const OP: &str = "LayerNormalization";
    let x = float_arg(inputs, 0, "X", OP)?;
    let scale = float_arg(inputs, 1, "Scale", OP)?;
    let b = opt_float_arg(inputs, 2, "B", OP)?;
    let s_type = stash(a.stash_type)?;
    let t = x.dtype();
    let axis = normalize_axis(a.axis, x.rank())?;
    let shape = x.shape();
    let inner: usize = shape[axis..].iter().product();
    let scale = Param::new(scale, shape, axis, "Scale")?;
    let bias = b.map(|b| Param::new(b, shape, axis, "B")).transpose()?;
    let xs = f64_array(x, "X")?;
    let xs = xs.as_slice().expect("standard layout");
    let eps = a.epsilon as f64;
    let rows = xs.len().checked_div(inner).unwrap_or(0);
    let (mut y, mut means, mut invs) = (Vec::with_capacity(xs.len()), Vec::new(), Vec::new());
    for r in 0..rows {
        let row = &xs[r * inner..(r + 1) * inner];
        let (mean, var) = moments(row.iter().map(|&v| round_to(s_type, v)));
        let inv = 1.0 / (var + eps).sqrt();
        means.push(round_to(s_type, mean));
        invs.push(round_to(s_type, inv));
        for (j, &v) in row.iter().enumerate() {
            let norm = round_to(t, round_to(s_type, (round_to(s_type, v) - mean) * inv));
            let scaled = round_to(t, norm * scale.at(r, j, inner));
            y.push(match &bias {
                Some(b) => scaled + b.at(r, j, inner),
                None => scaled,
            });
        }
    }
    let mut out = vec![Value::Tensor(tensor_from_f64(shape, y, t)?)];
    if cx.num_outputs > 1 {
        let stat_type = |k: usize| cx.output_types.get(k).and_then(|ty| ty.dtype()).filter(|d| is_wide_float(*d));
        let mut stat_shape = shape[..axis].to_vec();
        stat_shape.extend(std::iter::repeat_n(1, shape.len() - axis));
        out.push(Value::Tensor(tensor_from_f64(&stat_shape, means, stat_type(1).unwrap_or(s_type))?));
        out.push(Value::Tensor(tensor_from_f64(&stat_shape, invs, stat_type(2).unwrap_or(s_type))?));
    }
    Ok(out)
}

/// `GroupNormalization`: statistics per (image, group of channels), then a
/// per-channel scale and bias (opset 21; a per-group scale and bias of
/// opset 18 models is accepted too).
pub(crate) fn group_norm(a: &GroupNormalization, inputs: &[Option<Value>]) -> Outputs {
    const OP: &str = "GroupNormalization";
    let x = float_arg(inputs, 0, "X", OP)?;
    let (n, c, s) = channels_input(x, OP)?;
    let s_type = stash(a.stash_type)?;
    if a.num_groups < 1 || c % a.num_groups as usize != 0 {
        return Err(EvalError::new(format!("num_groups {} must divide the {c} channels", a.num_groups)));
    }
    let g = a.num_groups as usize;
    let param = |i: usize, what: &str| -> Result<Vec<f64>, EvalError> {
        let p = float_arg(inputs, i, what, OP)?;
        if p.rank() == 1 && p.len() == g && g != c {
            // Opset 18: one value per group.
            let v: Vec<f64> = f64_array(p, what)?.into_iter().collect();
            return Ok((0..c).map(|ci| v[ci / (c / g)]).collect());
        }
        per_channel(p, c, what)
    };
    let (scale, bias) = (param(1, "scale")?, param(2, "bias")?);
    let xs = f64_array(x, "X")?;
    let xs = xs.as_slice().expect("standard layout");
    let t = x.dtype();
    let eps = a.epsilon as f64;
    let block = (c / g) * s;
    let mut y = Vec::with_capacity(xs.len());
    for ni in 0..n {
        for gi in 0..g {
            let start = (ni * g + gi) * block;
            let vals = &xs[start..start + block];
            let (mean, var) = moments(vals.iter().map(|&v| round_to(s_type, v)));
            let inv = 1.0 / (var + eps).sqrt();
            for (j, &v) in vals.iter().enumerate() {
                let ci = gi * (c / g) + j / s.max(1);
                let norm = round_to(t, round_to(s_type, (round_to(s_type, v) - mean) * inv));
                y.push(round_to(t, scale[ci] * norm) + bias[ci]);
            }
        }
    }
    Ok(vec![Value::Tensor(tensor_from_f64(x.shape(), y, t)?)])
}

/// `RMSNormalization`: `X / sqrt(mean(X²) + epsilon) · scale` over the dims
/// from `axis` on; the output has the scale's type.
pub(crate) fn rms_norm(a: &RMSNormalization, inputs: &[Option<Value>]) -> Outputs {
    const OP: &str = "RMSNormalization";
    let x = float_arg(inputs, 0, "X", OP)?;
    let scale_t = float_arg(inputs, 1, "scale", OP)?;
    let s_type = stash(a.stash_type)?;
    let axis = normalize_axis(a.axis, x.rank())?;
    let shape = x.shape();
    let inner: usize = shape[axis..].iter().product();
    let scale = Param::new(scale_t, shape, axis, "scale")?;
    let xs = f64_array(x, "X")?;
    let xs = xs.as_slice().expect("standard layout");
    let eps = a.epsilon as f64;
    let (t, v_type) = (x.dtype(), scale_t.dtype());
    let mut y = Vec::with_capacity(xs.len());
    for (r, row) in xs.chunks(inner.max(1)).enumerate() {
        let ms = row.iter().map(|&v| round_to(s_type, v).powi(2)).sum::<f64>() / inner as f64;
        let rms = (ms + eps).sqrt();
        for (j, &v) in row.iter().enumerate() {
            let norm = round_to(t, round_to(s_type, round_to(s_type, v) / rms));
            y.push(norm * scale.at(r, j, inner));
        }
    }
    Ok(vec![Value::Tensor(tensor_from_f64(shape, y, v_type)?)])
}

/// Visits the lines of `shape` along `axis`: calls `f` with the flat indices
/// of each line.
fn for_each_line(shape: &[usize], axis: usize, mut f: impl FnMut(&[usize])) {
    let inner: usize = shape[axis + 1..].iter().product();
    let len = shape[axis];
    let outer: usize = shape[..axis].iter().product();
    let mut idx = Vec::with_capacity(len);
    for o in 0..outer {
        for i in 0..inner {
            idx.clear();
            idx.extend((0..len).map(|k| (o * len + k) * inner + i));
            f(&idx);
        }
    }
}

/// `LpNormalization`: divides by the L1 or L2 norm along `axis` (a zero norm
/// gives zeros).
pub(crate) fn lp_norm(a: &LpNormalization, inputs: &[Option<Value>]) -> Outputs {
    let x = float_arg(inputs, 0, "input", "LpNormalization")?;
    if !matches!(a.p, 1 | 2) {
        return Err(EvalError::new(format!("LpNormalization p = {} must be 1 or 2", a.p)));
    }
    let axis = normalize_axis(a.axis, x.rank())?;
    let xs = f64_array(x, "input")?;
    let xs = xs.as_slice().expect("standard layout");
    let mut y = vec![0.0; xs.len()];
    for_each_line(x.shape(), axis, |idx| {
        let norm = if a.p == 1 {
            idx.iter().map(|&i| xs[i].abs()).sum::<f64>()
        } else {
            idx.iter().map(|&i| xs[i] * xs[i]).sum::<f64>().sqrt()
        };
        for &i in idx {
            y[i] = if norm == 0.0 { 0.0 } else { xs[i] / norm };
        }
    });
    Ok(vec![Value::Tensor(tensor_from_f64(x.shape(), y, x.dtype())?)])
}

/// `MeanVarianceNormalization`: `(X - mean) / (std + 1e-9)` with statistics
/// over `axes`.
pub(crate) fn mean_variance_norm(a: &MeanVarianceNormalization, inputs: &[Option<Value>]) -> Outputs {
    let x = float_arg(inputs, 0, "X", "MeanVarianceNormalization")?;
    let r = x.rank();
    let mut reduced = vec![false; r];
    for &ax in &a.axes {
        let d = normalize_axis(ax, r)?;
        if reduced[d] {
            return Err(EvalError::new(format!("axes {:?} name dim {d} twice", a.axes)));
        }
        reduced[d] = true;
    }
    let shape = x.shape();
    // Each element's group: its index with the reduced dims dropped.
    let kept: Vec<usize> = (0..r).map(|d| if reduced[d] { 1 } else { shape[d] }).collect();
    let group = broadcast_index(shape, &kept);
    let ngroups: usize = kept.iter().product();
    let xs = f64_array(x, "X")?;
    let xs = xs.as_slice().expect("standard layout");
    let (mut sum, mut count) = (vec![0.0; ngroups], vec![0usize; ngroups]);
    for (&v, &g) in xs.iter().zip(&group) {
        sum[g] += v;
        count[g] += 1;
    }
    let mean: Vec<f64> = sum.iter().zip(&count).map(|(s, &n)| s / n as f64).collect();
    let mut sq = vec![0.0; ngroups];
    for (&v, &g) in xs.iter().zip(&group) {
        sq[g] += (v - mean[g]) * (v - mean[g]);
    }
    let std: Vec<f64> = sq.iter().zip(&count).map(|(s, &n)| (s / n as f64).sqrt()).collect();
    let y = xs.iter().zip(&group).map(|(&v, &g)| (v - mean[g]) / (std[g] + 1e-9)).collect();
    Ok(vec![Value::Tensor(tensor_from_f64(shape, y, x.dtype())?)])
}

/// `LRN`: divides by `(bias + alpha / size · Σ x²)^beta`, the sum over a
/// window of `size` neighbouring channels.
pub(crate) fn lrn(a: &LRN, inputs: &[Option<Value>]) -> Outputs {
    let x = float_arg(inputs, 0, "X", "LRN")?;
    let (n, c, s) = channels_input(x, "LRN")?;
    if a.size < 1 {
        return Err(EvalError::new(format!("LRN size = {} must be at least 1", a.size)));
    }
    let size = a.size as usize;
    let (before, after) = ((size - 1) / 2, (size - 1).div_ceil(2));
    let xs = f64_array(x, "X")?;
    let xs = xs.as_slice().expect("standard layout");
    let (alpha, beta, bias) = (a.alpha as f64, a.beta as f64, a.bias as f64);
    let mut y = vec![0.0; xs.len()];
    for ni in 0..n {
        for ci in 0..c {
            let lo = ci.saturating_sub(before);
            let hi = (ci + after).min(c - 1);
            for si in 0..s {
                let sq: f64 = (lo..=hi).map(|cj| xs[(ni * c + cj) * s + si].powi(2)).sum();
                let i = (ni * c + ci) * s + si;
                y[i] = xs[i] / (bias + alpha / size as f64 * sq).powf(beta);
            }
        }
    }
    Ok(vec![Value::Tensor(tensor_from_f64(x.shape(), y, x.dtype())?)])
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, run_n, run1, t};
    use super::*;
    use sharc_ir::Op;

    fn ln(axis: i64) -> Op {
        Op::LayerNormalization(LayerNormalization { axis, epsilon: 1e-5, stash_type: 1 })
    }

    #[test]
    fn batch_norm_inference_and_training() {
        // y = scale * (x - mean) / sqrt(var + eps) + B per channel.
        let x = t(&[1, 2, 2], vec![1f32, 3., 10., 20.]);
        let p = |a: f32, b: f32| t(&[2], vec![a, b]);
        let op = Op::BatchNormalization(BatchNormalization { epsilon: 0.0, momentum: 0.9, training_mode: false });
        let y = run1(&op, &[x.clone(), p(2., 1.), p(0., 1.), p(1., 15.), p(4., 25.)]).unwrap();
        assert_close(&y, &[1, 2, 2], &[0., 2., 0., 2.], 1e-6);
        let e = run_n(&op, &[x.clone(), p(2., 1.), p(0., 1.), p(1., 15.), p(4., 25.)], 3).unwrap_err();
        assert!(e.message.contains("training"), "{}", e.message);
        // Training: batch stats mean [2, 15], var [1, 25]; running = 0.9 * input + 0.1 * batch.
        let op = Op::BatchNormalization(BatchNormalization { epsilon: 0.0, momentum: 0.9, training_mode: true });
        let out = run_n(&op, &[x, p(1., 1.), p(0., 0.), p(0., 0.), p(1., 1.)], 3).unwrap();
        assert_close(&out[0], &[1, 2, 2], &[-1., 1., -1., 1.], 1e-6);
        assert_close(&out[1], &[2], &[0.2, 1.5], 1e-6);
        assert_close(&out[2], &[2], &[1.0, 3.4], 1e-6);
    }

    #[test]
    fn instance_norm_per_plane() {
        // onnx test_instancenorm_example.
        let x = t(&[1, 2, 1, 3], vec![-1f32, 0., 1., 2., 3., 4.]);
        let op = Op::InstanceNormalization(InstanceNormalization { epsilon: 1e-5 });
        let y = run1(&op, &[x, t(&[2], vec![1f32, 1.5]), t(&[2], vec![0f32, 1.])]).unwrap();
        assert_close(&y, &[1, 2, 1, 3], &[-1.2247355, 0., 1.2247355, -0.8371033, 1., 2.8371033], 1e-6);
    }

    #[test]
    fn layer_norm_with_stats() {
        // x = [[1, 2, 3], [2, 4, 6]] over the last axis: means [2, 4], variances [2/3, 8/3].
        let x = t(&[2, 3], vec![1f32, 2., 3., 2., 4., 6.]);
        let scale = t(&[3], vec![1f32, 2., 3.]);
        let bias = t(&[3], vec![0f32, 0., 1.]);
        let out = run_n(&ln(-1), &[x.clone(), scale.clone(), bias], 3).unwrap();
        let s1 = 1.0 / (2.0f64 / 3.0 + 1e-5).sqrt();
        let s2 = 1.0 / (8.0f64 / 3.0 + 1e-5).sqrt();
        assert_close(&out[0], &[2, 3], &[-s1, 0., 3. * s1 + 1., -2. * s2, 0., 6. * s2 + 1.], 1e-6);
        assert_close(&out[1], &[2, 1], &[2., 4.], 1e-7);
        assert_close(&out[2], &[2, 1], &[s1, s2], 1e-6);
        // axis 0 normalises everything; no bias.
        let y = run1(&ln(0), &[x, t(&[1], vec![1f32])]).unwrap();
        let m = 3.0;
        let var: f64 = [1., 2., 3., 2., 4., 6.].iter().map(|v: &f64| (v - m) * (v - m)).sum::<f64>() / 6.0;
        let want: Vec<f64> = [1., 2., 3., 2., 4., 6.].iter().map(|v| (v - m) / (var + 1e-5).sqrt()).collect();
        assert_close(&y, &[2, 3], &want, 1e-6);
        let e = run1(&ln(1), &[t(&[2, 3], vec![0f32; 6]), t(&[2], vec![1f32, 1.])]).unwrap_err();
        assert!(e.message.contains("broadcast"), "{}", e.message);
    }

    #[test]
    fn group_norm_example() {
        // onnx test_group_normalization_example style: 2 groups of 2 channels, one spatial element.
        let x = t(&[1, 4, 1], vec![1f32, 3., 10., 14.]);
        let op = Op::GroupNormalization(GroupNormalization { epsilon: 0.0, num_groups: 2, stash_type: 1 });
        let y = run1(&op, &[x.clone(), t(&[4], vec![1f32, 1., 2., 2.]), t(&[4], vec![0f32, 0., 1., 1.])]).unwrap();
        assert_close(&y, &[1, 4, 1], &[-1., 1., -1., 3.], 1e-6);
        // Opset-18 per-group parameters give the same result.
        let y = run1(&op, &[x, t(&[2], vec![1f32, 2.]), t(&[2], vec![0f32, 1.])]).unwrap();
        assert_close(&y, &[1, 4, 1], &[-1., 1., -1., 3.], 1e-6);
    }

    #[test]
    fn rms_norm_values() {
        // rms of [3, 4] = sqrt(12.5).
        let op = Op::RMSNormalization(RMSNormalization { axis: -1, epsilon: 0.0, stash_type: 1 });
        let y = run1(&op, &[t(&[1, 2], vec![3f32, 4.]), t(&[2], vec![1f32, 2.])]).unwrap();
        let r = 12.5f64.sqrt();
        assert_close(&y, &[1, 2], &[3. / r, 8. / r], 1e-6);
    }

    #[test]
    fn lp_norm_mvn_lrn() {
        let op = Op::LpNormalization(LpNormalization { axis: 1, p: 2 });
        let y = run1(&op, &[t(&[2, 2], vec![3f32, 4., 0., 0.])]).unwrap();
        assert_close(&y, &[2, 2], &[0.6, 0.8, 0., 0.], 1e-7);
        let op = Op::LpNormalization(LpNormalization { axis: 0, p: 1 });
        let y = run1(&op, &[t(&[2, 2], vec![1f32, -1., 3., 1.])]).unwrap();
        assert_close(&y, &[2, 2], &[0.25, -0.5, 0.75, 0.5], 1e-7);
        // MVN over axis 0 of [[1, 2], [3, 6]]: columns mean [2, 4], std [1, 2].
        let op = Op::MeanVarianceNormalization(MeanVarianceNormalization { axes: vec![0] });
        let y = run1(&op, &[t(&[2, 2], vec![1f32, 2., 3., 6.])]).unwrap();
        assert_close(&y, &[2, 2], &[-1., -1., 1., 1.], 1e-7);
        // LRN size 2 (window [c, c+1]): y0 = 1 / (1 + 0.5 (1 + 4))^1, y1 = 2 / (1 + 0.5 * 4).
        let op = Op::LRN(LRN { alpha: 1.0, beta: 1.0, bias: 1.0, size: 2 });
        let y = run1(&op, &[t(&[1, 2, 1], vec![1f32, 2.])]).unwrap();
        assert_close(&y, &[1, 2, 1], &[1. / 3.5, 2. / 3.], 1e-7);
    }
}

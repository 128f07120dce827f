//! Ops that select or rearrange parts of one tensor (or join several):
//! Concat, Split, Slice, Pad, CenterCropPad, Compress, ReverseSequence,
//! Trilu and NonZero.

use super::{FILL, concat_axis, resolve_axes, scalar_i64, strides, take, take_axes, to_sizes, unravel};
use crate::ops::OpContext;
use crate::util::{i64_values, normalize_axis, opt_tensor_arg, single, tensor_arg};
use sharc_ir::op::{CenterCropPad, Compress, Concat, Pad, PadMode, ReverseSequence, Split, Trilu};
use sharc_ir::{DType, EvalError, Tensor, TensorData, Value};

type Outputs = Result<Vec<Value>, EvalError>;

pub(super) fn concat(a: &Concat, inputs: &[Option<Value>]) -> Outputs {
    let ts: Vec<&Tensor> = (0..inputs.len()).map(|i| tensor_arg(inputs, i, "inputs")).collect::<Result<_, _>>()?;
    let first = ts.first().ok_or_else(|| EvalError::new("Concat needs at least one input"))?;
    let rank = first.rank();
    let axis = normalize_axis(a.axis, rank)?;
    for (i, t) in ts.iter().enumerate() {
        let same = t.rank() == rank && (0..rank).all(|d| d == axis || t.shape()[d] == first.shape()[d]);
        if !same {
            return Err(EvalError::new(format!(
                "input {i} has shape {:?}, which does not match {:?} outside axis {axis}",
                t.shape(),
                first.shape()
            )));
        }
    }
    single(concat_axis(&ts, axis)?)
}

/// The part of `x` with positions `start..start + len` along `axis`.
fn range_along(x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor, EvalError> {
    let per_axis: Vec<Vec<Option<usize>>> = x
        .shape()
        .iter()
        .enumerate()
        .map(|(d, &n)| if d == axis { (start..start + len).map(Some).collect() } else { (0..n).map(Some).collect() })
        .collect();
    take_axes(x, &per_axis, None)
}

pub(super) fn split(a: &Split, inputs: &[Option<Value>], cx: &OpContext) -> Outputs {
    let x = tensor_arg(inputs, 0, "input")?;
    let axis = normalize_axis(a.axis, x.rank())?;
    let dim = x.shape()[axis];
    let sizes = match opt_tensor_arg(inputs, 1, "split")? {
        Some(t) if !t.is_empty() => {
            if a.num_outputs.is_some() {
                return Err(EvalError::new("the split input and the num_outputs attribute cannot both be given"));
            }
            let sizes = to_sizes(&i64_values(t, "split")?, "split")?;
            if sizes.iter().sum::<usize>() != dim {
                return Err(EvalError::new(format!(
                    "split sizes {sizes:?} do not add up to the dim {dim} of axis {axis}"
                )));
            }
            sizes
        }
        _ => {
            let n = match a.num_outputs {
                Some(n) if n <= 0 => return Err(EvalError::new(format!("num_outputs must be positive, got {n}"))),
                Some(n) => n as usize,
                None => cx.num_outputs,
            };
            if n == 0 {
                return Err(EvalError::new("Split has no outputs"));
            }
            let chunk = dim.div_ceil(n);
            let last = dim as i64 - (chunk * (n - 1)) as i64;
            if last < 0 {
                return Err(EvalError::new(format!(
                    "a dim of {dim} cannot be split into {n} parts of at most {chunk}"
                )));
            }
            let mut sizes = vec![chunk; n - 1];
            sizes.push(last as usize);
            sizes
        }
    };
    let mut start = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for s in sizes {
        out.push(Value::Tensor(range_along(x, axis, start, s)?));
        start += s;
    }
    Ok(out)
}

/// The positions a Slice picks from a dim of size `dim`, following ONNX's
/// clamping of out-of-range starts and ends.
pub(crate) fn slice_positions(start: i64, end: i64, step: i64, dim: usize) -> Result<Vec<usize>, EvalError> {
    if step == 0 {
        return Err(EvalError::new("slice step cannot be 0"));
    }
    let n = dim as i128;
    let (start, end, step) = (start as i128, end as i128, step as i128);
    let start = if start < 0 { start + n } else { start };
    let end = if end < 0 { end + n } else { end };
    let mut out = Vec::new();
    if step > 0 {
        let (mut i, end) = (start.clamp(0, n), end.clamp(0, n));
        while i < end {
            out.push(i as usize);
            i += step;
        }
    } else {
        let (mut i, end) = (start.clamp(0, n - 1), end.clamp(-1, n - 1));
        while i > end {
            out.push(i as usize);
            i += step;
        }
    }
    Ok(out)
}

pub(super) fn slice(inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "data")?;
    let r = x.rank();
    let starts = i64_values(tensor_arg(inputs, 1, "starts")?, "starts")?;
    let ends = i64_values(tensor_arg(inputs, 2, "ends")?, "ends")?;
    let axes = match opt_tensor_arg(inputs, 3, "axes")? {
        Some(t) => resolve_axes(&i64_values(t, "axes")?, r)?,
        None => (0..starts.len()).collect(),
    };
    let steps = match opt_tensor_arg(inputs, 4, "steps")? {
        Some(t) => i64_values(t, "steps")?,
        None => vec![1; starts.len()],
    };
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(EvalError::new(format!(
            "starts, ends, axes and steps must have the same length, got {}, {}, {} and {}",
            starts.len(),
            ends.len(),
            axes.len(),
            steps.len()
        )));
    }
    if axes.iter().any(|&a| a >= r) {
        return Err(EvalError::new(format!("slice has more axes than the input's rank {r}")));
    }
    let mut per_axis: Vec<Vec<Option<usize>>> = x.shape().iter().map(|&n| (0..n).map(Some).collect()).collect();
    for (k, &axis) in axes.iter().enumerate() {
        per_axis[axis] =
            slice_positions(starts[k], ends[k], steps[k], x.shape()[axis])?.into_iter().map(Some).collect();
    }
    single(take_axes(x, &per_axis, None)?)
}

/// Maps a position outside `0..n` back inside it for a padding mode.
fn pad_source(s: i64, n: i64, mode: PadMode) -> usize {
    let s = match mode {
        PadMode::Constant => s,
        PadMode::Edge => s.clamp(0, n - 1),
        PadMode::Wrap => s.rem_euclid(n),
        PadMode::Reflect => {
            if n == 1 {
                0
            } else {
                let period = 2 * (n - 1);
                let m = s.rem_euclid(period);
                if m >= n { period - m } else { m }
            }
        }
    };
    s as usize
}

pub(super) fn pad(a: &Pad, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "data")?;
    let r = x.rank();
    let pads = i64_values(tensor_arg(inputs, 1, "pads")?, "pads")?;
    let fill = match opt_tensor_arg(inputs, 2, "constant_value")? {
        Some(v) if !v.is_empty() => {
            if v.dtype() != x.dtype() || v.len() != 1 {
                return Err(EvalError::new(format!(
                    "constant_value must be one {} element, got {}{:?}",
                    x.dtype(),
                    v.dtype(),
                    v.shape()
                )));
            }
            v.clone()
        }
        _ => Tensor::zeros(x.dtype(), &[]),
    };
    let axes = match opt_tensor_arg(inputs, 3, "axes")? {
        Some(t) => resolve_axes(&i64_values(t, "axes")?, r)?,
        None => (0..r).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(EvalError::new(format!(
            "pads has {} entries, expected 2 per padded axis ({})",
            pads.len(),
            2 * axes.len()
        )));
    }
    let mut per_axis: Vec<Vec<Option<usize>>> = x.shape().iter().map(|&n| (0..n).map(Some).collect()).collect();
    for (k, &axis) in axes.iter().enumerate() {
        let (begin, end) = (pads[k], pads[k + axes.len()]);
        let n = x.shape()[axis] as i64;
        // Negative pads crop first; positive pads then extend what is left
        // (onnxruntime's reading, so edge/reflect/wrap see the cropped data).
        let lo = (-begin).max(0);
        let kept = n - lo - (-end).max(0);
        if kept < 0 {
            return Err(EvalError::new(format!(
                "pads {begin}, {end} remove more than the {n} elements of axis {axis}"
            )));
        }
        let (pb, pe) = (begin.max(0), end.max(0));
        if a.mode != PadMode::Constant && kept == 0 && pb + pe > 0 {
            return Err(EvalError::new(format!(
                "{} padding needs data along axis {axis}, which is empty after cropping",
                a.mode.as_str()
            )));
        }
        per_axis[axis] = (0..pb + kept + pe)
            .map(|o| {
                let s = o - pb;
                if (0..kept).contains(&s) {
                    Some((lo + s) as usize)
                } else if a.mode == PadMode::Constant {
                    None
                } else {
                    Some(lo as usize + pad_source(s, kept, a.mode))
                }
            })
            .collect();
    }
    single(take_axes(x, &per_axis, Some(&fill))?)
}

pub(super) fn center_crop_pad(a: &CenterCropPad, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "input_data")?;
    let r = x.rank();
    let shape = to_sizes(&i64_values(tensor_arg(inputs, 1, "shape")?, "shape")?, "shape")?;
    let axes = match &a.axes {
        Some(axes) => resolve_axes(axes, r)?,
        None => (0..r).collect(),
    };
    if shape.len() != axes.len() {
        return Err(EvalError::new(format!("shape {shape:?} must have one entry per axis ({})", axes.len())));
    }
    let mut per_axis: Vec<Vec<Option<usize>>> = x.shape().iter().map(|&n| (0..n).map(Some).collect()).collect();
    for (&axis, &want) in axes.iter().zip(&shape) {
        let n = x.shape()[axis];
        per_axis[axis] = if want <= n {
            let off = (n - want) / 2;
            (off..off + want).map(Some).collect()
        } else {
            let off = (want - n) / 2;
            (0..want).map(|o| o.checked_sub(off).filter(|&s| s < n)).collect()
        };
    }
    single(take_axes(x, &per_axis, Some(&Tensor::zeros(x.dtype(), &[])))?)
}

pub(super) fn compress(a: &Compress, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "input")?;
    let cond = tensor_arg(inputs, 1, "condition")?;
    let cond: Vec<bool> = match cond.as_array::<bool>() {
        Some(c) => c.iter().copied().collect(),
        None => return Err(EvalError::new(format!("condition must be a bool tensor, got {}", cond.dtype()))),
    };
    let (x, axis) = match a.axis {
        Some(axis) => (x.clone(), normalize_axis(axis, x.rank())?),
        None => (x.reshape(&[x.len()]).ok_or_else(|| EvalError::new("internal: cannot flatten"))?, 0),
    };
    let n = x.shape()[axis];
    if let Some(p) = cond.iter().skip(n).position(|&c| c) {
        return Err(EvalError::new(format!("condition is true at {} but the axis has only {n} entries", n + p)));
    }
    let keep: Vec<Option<usize>> = cond.iter().take(n).enumerate().filter(|(_, c)| **c).map(|(i, _)| Some(i)).collect();
    let mut per_axis: Vec<Vec<Option<usize>>> = x.shape().iter().map(|&n| (0..n).map(Some).collect()).collect();
    per_axis[axis] = keep;
    single(take_axes(&x, &per_axis, None)?)
}

pub(super) fn reverse_sequence(a: &ReverseSequence, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "input")?;
    let lens = i64_values(tensor_arg(inputs, 1, "sequence_lens")?, "sequence_lens")?;
    let r = x.rank();
    if r < 2 {
        return Err(EvalError::new(format!("input must have rank at least 2, got shape {:?}", x.shape())));
    }
    let batch = normalize_axis(a.batch_axis, r)?;
    let time = normalize_axis(a.time_axis, r)?;
    if batch > 1 || time > 1 || batch == time {
        return Err(EvalError::new(format!("batch_axis {batch} and time_axis {time} must be 0 and 1 in some order")));
    }
    let shape = x.shape();
    if lens.len() != shape[batch] {
        return Err(EvalError::new(format!(
            "sequence_lens has {} entries for a batch of {}",
            lens.len(),
            shape[batch]
        )));
    }
    if let Some(l) = lens.iter().find(|&&l| l < 0 || l as usize > shape[time]) {
        return Err(EvalError::new(format!("sequence length {l} is outside 0..={}", shape[time])));
    }
    let st = strides(shape);
    let mut idx = vec![0; r];
    let src: Vec<usize> = (0..x.len())
        .map(|flat| {
            unravel(flat, shape, &mut idx);
            let (b, t) = (idx[batch], idx[time]);
            let len = lens[b] as usize;
            if t < len { flat + (len - 1 - t) * st[time] - t * st[time] } else { flat }
        })
        .collect();
    single(take(x, shape, &src, None)?)
}

pub(super) fn trilu(a: &Trilu, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "input")?;
    let k = match opt_tensor_arg(inputs, 1, "k")? {
        Some(t) => scalar_i64(t, "k")?,
        None => 0,
    };
    let shape = x.shape();
    let r = shape.len();
    if r < 2 {
        return Err(EvalError::new(format!("input must have rank at least 2, got shape {shape:?}")));
    }
    let (rows, cols) = (shape[r - 2], shape[r - 1]);
    let src: Vec<usize> = (0..x.len())
        .map(|flat| {
            let j = (flat % cols.max(1)) as i64;
            let i = ((flat / cols.max(1)) % rows.max(1)) as i64;
            let keep = if a.upper { j - i >= k } else { j - i <= k };
            if keep { flat } else { FILL }
        })
        .collect();
    single(take(x, shape, &src, Some(&Tensor::zeros(x.dtype(), &[])))?)
}

/// Which elements are non-zero (true, non-empty for strings).
pub(crate) fn nonzero_mask(t: &Tensor) -> Result<Vec<bool>, EvalError> {
    Ok(match t.data() {
        TensorData::String(a) => a.iter().map(|s| !s.is_empty()).collect(),
        TensorData::Complex64(a) => a.iter().map(|[re, im]| *re != 0.0 || *im != 0.0).collect(),
        TensorData::Complex128(a) => a.iter().map(|[re, im]| *re != 0.0 || *im != 0.0).collect(),
        TensorData::Narrow { dtype, codes } => {
            // Which code bits carry magnitude: the sign bit alone is -0.
            let magnitude: u8 = match dtype {
                DType::F8E4M3FN | DType::F8E5M2 => 0x7f,
                DType::F4E2M1 => 0x07,
                DType::F8E8M0 => return Ok(vec![true; codes.len()]),
                _ => 0xff,
            };
            codes.iter().map(|c| c & magnitude != 0).collect()
        }
        TensorData::I64(a) => a.iter().map(|v| *v != 0).collect(),
        TensorData::U64(a) => a.iter().map(|v| *v != 0).collect(),
        _ => super::real_values(t, "input")?.into_iter().map(|v| v != 0.0).collect(),
    })
}

pub(super) fn non_zero(inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "X")?;
    let mask = nonzero_mask(x)?;
    let shape = x.shape();
    let r = shape.len();
    let hits: Vec<usize> = mask.iter().enumerate().filter(|(_, m)| **m).map(|(i, _)| i).collect();
    let mut out = vec![0i64; r * hits.len()];
    let mut idx = vec![0; r];
    for (j, &flat) in hits.iter().enumerate() {
        unravel(flat, shape, &mut idx);
        for d in 0..r {
            out[d * hits.len() + j] = idx[d] as i64;
        }
    }
    single(Tensor::from_vec(&[r, hits.len()], out))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::slice_positions;
    use sharc_ir::op::*;
    use sharc_ir::{Op, Tensor};

    #[test]
    fn concat_checks_shapes() {
        let a = iota(&[2, 2]);
        let b = f(&[2, 1], &[9., 8.]);
        let c = run1(Op::Concat(Concat { axis: -1 }), vec![Some(a.clone()), Some(b.clone())]).unwrap();
        assert_eq!(c.shape(), &[2, 3]);
        assert_eq!(fv(&c), vec![0., 1., 9., 2., 3., 8.]);
        let e = run1(Op::Concat(Concat { axis: 0 }), vec![Some(a), Some(b)]).unwrap_err();
        assert!(e.message.contains("does not match"), "{}", e.message);
    }

    #[test]
    fn split_variants() {
        let x = iota(&[7]);
        let parts = run_n(Op::Split(Split { axis: 0, num_outputs: Some(3) }), vec![Some(x.clone())], 3).unwrap();
        let lens: Vec<usize> = parts.iter().map(|p| p.as_tensor().unwrap().len()).collect();
        assert_eq!(lens, vec![3, 3, 1]);
        let parts = run_n(Op::Split(Split { axis: 0, num_outputs: None }), vec![Some(x.clone())], 4).unwrap();
        let lens: Vec<usize> = parts.iter().map(|p| p.as_tensor().unwrap().len()).collect();
        assert_eq!(lens, vec![2, 2, 2, 1]);
        let parts =
            run_n(Op::Split(Split { axis: 0, num_outputs: None }), vec![Some(x.clone()), Some(i(&[3], &[0, 4, 3]))], 3)
                .unwrap();
        assert_eq!(parts[0].as_tensor().unwrap().shape(), &[0]);
        assert_eq!(fv(parts[2].as_tensor().unwrap()), vec![4., 5., 6.]);
        assert!(
            run_n(Op::Split(Split { axis: 0, num_outputs: None }), vec![Some(x), Some(i(&[2], &[3, 3]))], 2).is_err()
        );
        // 5 into 4 parts of ceil(5/4) = 2 leaves nothing for the last one.
        assert!(run_n(Op::Split(Split { axis: 0, num_outputs: Some(4) }), vec![Some(iota(&[5]))], 4).is_err());
    }

    #[test]
    fn slice_clamping() {
        assert_eq!(slice_positions(1, 1000, 1, 5).unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(slice_positions(-1000, 2, 1, 5).unwrap(), vec![0, 1]);
        assert_eq!(slice_positions(-1, i64::MIN, -1, 4).unwrap(), vec![3, 2, 1, 0]);
        assert_eq!(slice_positions(i64::MAX, -3, -2, 6).unwrap(), vec![5]);
        assert_eq!(slice_positions(10, 20, 1, 5).unwrap(), Vec::<usize>::new());
        assert_eq!(slice_positions(0, 5, 2, 5).unwrap(), vec![0, 2, 4]);
        assert!(slice_positions(0, 5, 0, 5).is_err());
        // With a negative step the start is clamped to [0, dim - 1] (the ONNX
        // spec and onnxruntime); numpy-style slicing would pick nothing here.
        assert_eq!(slice_positions(-8, -6, -2, 5).unwrap(), vec![0]);
    }

    #[test]
    fn slice_with_axes_and_steps() {
        let x = iota(&[3, 4]);
        let out = run1(
            Op::Slice,
            vec![
                Some(x),
                Some(i(&[2], &[-1, 0])),
                Some(i(&[2], &[0, 3])),
                Some(i(&[2], &[1, 0])),
                Some(i(&[2], &[-2, 2])),
            ],
        )
        .unwrap();
        // Axis 1 from -1 down to (not including) 0 by -2: [3, 1]; axis 0 from 0 to 3 by 2: [0, 2].
        assert_eq!(out.shape(), &[2, 2]);
        assert_eq!(fv(&out), vec![3., 1., 11., 9.]);
    }

    fn pad(mode: PadMode, x: Tensor, pads: &[i64]) -> Vec<f32> {
        fv(&run1(Op::Pad(Pad { mode }), vec![Some(x), Some(i(&[pads.len()], pads))]).unwrap())
    }

    #[test]
    fn pad_modes_match_numpy() {
        let x = f(&[4], &[1., 2., 3., 4.]);
        assert_eq!(pad(PadMode::Constant, x.clone(), &[2, 1]), vec![0., 0., 1., 2., 3., 4., 0.]);
        assert_eq!(pad(PadMode::Edge, x.clone(), &[2, 1]), vec![1., 1., 1., 2., 3., 4., 4.]);
        // np.pad([1,2,3,4], (5, 2), 'reflect') and 'wrap'.
        assert_eq!(pad(PadMode::Reflect, x.clone(), &[5, 2]), vec![2., 3., 4., 3., 2., 1., 2., 3., 4., 3., 2.]);
        assert_eq!(pad(PadMode::Wrap, x.clone(), &[5, 2]), vec![4., 1., 2., 3., 4., 1., 2., 3., 4., 1., 2.]);
    }

    #[test]
    fn negative_pads_crop_first_like_onnxruntime() {
        let x = f(&[4], &[1., 2., 3., 4.]);
        // onnxruntime 1.x outputs for these cases.
        assert_eq!(pad(PadMode::Wrap, x.clone(), &[-1, 1]), vec![2., 3., 4., 2.]);
        assert_eq!(pad(PadMode::Wrap, x.clone(), &[1, -2]), vec![2., 1., 2.]);
        assert_eq!(pad(PadMode::Reflect, x.clone(), &[-1, 1]), vec![2., 3., 4., 3.]);
        assert_eq!(pad(PadMode::Edge, x.clone(), &[2, -3]), vec![1., 1., 1.]);
        assert_eq!(pad(PadMode::Constant, x.clone(), &[-3, 1]), vec![4., 0.]);
        assert!(run1(Op::Pad(Pad { mode: PadMode::Edge }), vec![Some(x.clone()), Some(i(&[2], &[-5, 0]))]).is_err());
        assert!(run1(Op::Pad(Pad { mode: PadMode::Edge }), vec![Some(x), Some(i(&[3], &[1, 1, 1]))]).is_err());
    }

    #[test]
    fn pad_with_axes_and_value() {
        let x = iota(&[2, 2]);
        let out = run1(
            Op::Pad(Pad { mode: PadMode::Constant }),
            vec![Some(x), Some(i(&[2], &[1, 0])), Some(Tensor::scalar(7.0f32)), Some(i(&[1], &[-1]))],
        )
        .unwrap();
        assert_eq!(out.shape(), &[2, 3]);
        assert_eq!(fv(&out), vec![7., 0., 1., 7., 2., 3.]);
    }

    #[test]
    fn pad_strings() {
        let x = Tensor::from_vec(&[1], vec!["a".to_string()]);
        let out = run1(Op::Pad(Pad { mode: PadMode::Constant }), vec![Some(x), Some(i(&[2], &[1, 1]))]).unwrap();
        assert_eq!(out, Tensor::from_vec(&[3], vec![String::new(), "a".into(), String::new()]));
    }

    #[test]
    fn center_crop_pad_odd_differences() {
        let x = iota(&[5]);
        let crop = run1(Op::CenterCropPad(CenterCropPad { axes: None }), vec![Some(x.clone()), Some(i(&[1], &[2]))]);
        assert_eq!(fv(&crop.unwrap()), vec![1., 2.]);
        let padded = run1(Op::CenterCropPad(CenterCropPad { axes: None }), vec![Some(x), Some(i(&[1], &[8]))]);
        assert_eq!(fv(&padded.unwrap()), vec![0., 0., 1., 2., 3., 4., 0., 0.]);
        let y = iota(&[2, 3]);
        let out = run1(Op::CenterCropPad(CenterCropPad { axes: Some(vec![-1]) }), vec![Some(y), Some(i(&[1], &[1]))])
            .unwrap();
        assert_eq!(fv(&out), vec![1., 4.]);
    }

    #[test]
    fn compress_axis_and_flat() {
        let x = iota(&[3, 2]);
        let c = Tensor::from_vec(&[3], vec![false, true, true]);
        let out = run1(Op::Compress(Compress { axis: Some(0) }), vec![Some(x.clone()), Some(c)]).unwrap();
        assert_eq!(fv(&out), vec![2., 3., 4., 5.]);
        let c = Tensor::from_vec(&[5], vec![false, true, false, false, true]);
        let out = run1(Op::Compress(Compress { axis: None }), vec![Some(x.clone()), Some(c)]).unwrap();
        assert_eq!(fv(&out), vec![1., 4.]);
        let c = Tensor::from_vec(&[4], vec![false, true, false, true]);
        assert!(run1(Op::Compress(Compress { axis: Some(0) }), vec![Some(x), Some(c)]).is_err());
    }

    #[test]
    fn reverse_sequence_per_batch() {
        // time_axis 0, batch_axis 1 (ONNX example "reversesequence_time").
        let x = iota(&[4, 4]);
        let out = run1(
            Op::ReverseSequence(ReverseSequence { batch_axis: 1, time_axis: 0 }),
            vec![Some(x.clone()), Some(i(&[4], &[4, 3, 2, 1]))],
        )
        .unwrap();
        assert_eq!(fv(&out), vec![12., 9., 6., 3., 8., 5., 2., 7., 4., 1., 10., 11., 0., 13., 14., 15.]);
        let bad = run1(
            Op::ReverseSequence(ReverseSequence { batch_axis: 1, time_axis: 0 }),
            vec![Some(x), Some(i(&[4], &[5, 3, 2, 1]))],
        );
        assert!(bad.is_err());
    }

    #[test]
    fn trilu_upper_lower_with_k() {
        let x = iota(&[3, 4]);
        let up = run1(Op::Trilu(Trilu { upper: true }), vec![Some(x.clone()), Some(Tensor::scalar(1i64))]).unwrap();
        assert_eq!(fv(&up), vec![0., 1., 2., 3., 0., 0., 6., 7., 0., 0., 0., 11.]);
        let lo = run1(Op::Trilu(Trilu { upper: false }), vec![Some(x.clone()), Some(Tensor::scalar(-1i64))]).unwrap();
        assert_eq!(fv(&lo), vec![0., 0., 0., 0., 4., 0., 0., 0., 8., 9., 0., 0.]);
        assert!(run1(Op::Trilu(Trilu { upper: true }), vec![Some(iota(&[3]))]).is_err());
    }

    #[test]
    fn nonzero_row_major() {
        let x = Tensor::from_vec(&[2, 2], vec![1i32, 0, 1, 1]);
        let out = run1(Op::NonZero, vec![Some(x)]).unwrap();
        assert_eq!(out.shape(), &[2, 3]);
        assert_eq!(iv(&out), vec![0, 1, 1, 0, 0, 1]);
        let s = Tensor::from_vec(&[3], vec!["".to_string(), "x".into(), "".into()]);
        assert_eq!(iv(&run1(Op::NonZero, vec![Some(s)]).unwrap()), vec![1]);
        let neg_zero = Tensor::from_codes(sharc_ir::DType::F8E4M3FN, &[2], vec![0x80, 0x38]).unwrap();
        assert_eq!(iv(&run1(Op::NonZero, vec![Some(neg_zero)]).unwrap()), vec![1]);
    }
}

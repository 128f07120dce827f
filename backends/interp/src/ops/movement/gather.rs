//! Index-driven reads and writes: Gather, GatherElements, GatherND,
//! ScatterElements, ScatterND and TensorScatter.
//!
//! Reads become a [`take`]; writes become a list of (destination, update)
//! element pairs applied in order, either by copying (`reduction = none`,
//! for every dtype) or with arithmetic (numeric dtypes and bool).

use super::{checked_numel, concat_flat, resolve_index, strides, take, unravel};
use crate::util::{i64_values, normalize_axis, opt_tensor_arg, single, tensor_arg};
use ndarray::{ArrayD, IxDyn};
use sharc_ir::op::TensorScatterMode;
use sharc_ir::op::{Gather, GatherElements, GatherND, ScatterElements, ScatterND, ScatterReduction, TensorScatter};
use sharc_ir::{Array, EvalError, Tensor, TensorData, Value};

type Outputs = Result<Vec<Value>, EvalError>;

pub(super) fn gather(a: &Gather, inputs: &[Option<Value>]) -> Outputs {
    let data = tensor_arg(inputs, 0, "data")?;
    let indices = tensor_arg(inputs, 1, "indices")?;
    let axis = normalize_axis(a.axis, data.rank())?;
    let shape = data.shape();
    let n = shape[axis];
    let idx = i64_values(indices, "indices")?
        .into_iter()
        .map(|i| resolve_index(i, n, &format!("index along axis {axis}")))
        .collect::<Result<Vec<_>, _>>()?;
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out_shape = shape[..axis].to_vec();
    out_shape.extend_from_slice(indices.shape());
    out_shape.extend_from_slice(&shape[axis + 1..]);
    let mut src = Vec::with_capacity(checked_numel(&out_shape)?);
    for o in 0..outer {
        for &j in &idx {
            let base = (o * n + j) * inner;
            src.extend(base..base + inner);
        }
    }
    single(take(data, &out_shape, &src, None)?)
}

/// For each element of `indices` (same rank as data), the flat data position
/// with the `axis` coordinate replaced by the index value.
fn element_positions(data: &[usize], indices: &Tensor, axis: usize) -> Result<Vec<usize>, EvalError> {
    let ishape = indices.shape();
    if ishape.len() != data.len() {
        return Err(EvalError::new(format!("indices {ishape:?} must have the rank of data {data:?}")));
    }
    for d in 0..data.len() {
        if d != axis && ishape[d] > data[d] {
            return Err(EvalError::new(format!("indices {ishape:?} are larger than data {data:?} in dim {d}")));
        }
    }
    let st = strides(data);
    let mut pos = vec![0; data.len()];
    i64_values(indices, "indices")?
        .into_iter()
        .enumerate()
        .map(|(flat, i)| {
            unravel(flat, ishape, &mut pos);
            pos[axis] = resolve_index(i, data[axis], &format!("index along axis {axis}"))?;
            Ok(pos.iter().zip(&st).map(|(p, s)| p * s).sum())
        })
        .collect()
}

pub(super) fn gather_elements(a: &GatherElements, inputs: &[Option<Value>]) -> Outputs {
    let data = tensor_arg(inputs, 0, "data")?;
    let indices = tensor_arg(inputs, 1, "indices")?;
    let axis = normalize_axis(a.axis, data.rank())?;
    let src = element_positions(data.shape(), indices, axis)?;
    single(take(data, indices.shape(), &src, None)?)
}

/// Where each index tuple of a GatherND/ScatterND points: for every tuple
/// (in row-major order), the flat offset of the addressed slice in data.
/// Returns the offsets and the size of one slice.
fn nd_offsets(data: &[usize], indices: &Tensor, batch_dims: usize) -> Result<(Vec<usize>, usize), EvalError> {
    let ishape = indices.shape();
    let q = ishape.len();
    let r = data.len();
    let k = *ishape.last().ok_or_else(|| EvalError::new("indices must have rank at least 1"))?;
    if batch_dims >= q {
        return Err(EvalError::new(format!("batch_dims {batch_dims} must be less than the rank of indices ({q})")));
    }
    if batch_dims + k > r {
        return Err(EvalError::new(format!(
            "index tuples of length {k} (after {batch_dims} batch dims) address more dims than data {data:?} has"
        )));
    }
    if ishape[..batch_dims] != data[..batch_dims] {
        return Err(EvalError::new(format!("the batch dims of indices {ishape:?} and data {data:?} differ")));
    }
    let st = strides(data);
    let slice: usize = data[batch_dims + k..].iter().product();
    let batch_stride = if batch_dims == 0 { 0 } else { st[batch_dims - 1] };
    let tuples_per_batch: usize = ishape[batch_dims..q - 1].iter().product();
    let idx = i64_values(indices, "indices")?;
    let mut offsets = Vec::with_capacity(idx.len() / k.max(1));
    let n_tuples: usize = ishape[..q - 1].iter().product();
    for t in 0..n_tuples {
        let b = t.checked_div(tuples_per_batch).unwrap_or(0);
        let mut off = b * batch_stride;
        for j in 0..k {
            let d = batch_dims + j;
            off += resolve_index(idx[t * k + j], data[d], &format!("index for dim {d}"))? * st[d];
        }
        offsets.push(off);
    }
    Ok((offsets, slice))
}

pub(super) fn gather_nd(a: &GatherND, inputs: &[Option<Value>]) -> Outputs {
    let data = tensor_arg(inputs, 0, "data")?;
    let indices = tensor_arg(inputs, 1, "indices")?;
    let b = usize::try_from(a.batch_dims).map_err(|_| EvalError::new("batch_dims cannot be negative"))?;
    let (offsets, slice) = nd_offsets(data.shape(), indices, b)?;
    let ishape = indices.shape();
    let k = ishape[ishape.len() - 1];
    let mut out_shape = ishape[..ishape.len() - 1].to_vec();
    out_shape.extend_from_slice(&data.shape()[b + k..]);
    let src: Vec<usize> = offsets.iter().flat_map(|&o| o..o + slice).collect();
    single(take(data, &out_shape, &src, None)?)
}

/// Arithmetic for scatter reductions.
trait Combine: Copy {
    fn combine(self, other: Self, how: ScatterReduction) -> Self;
}

macro_rules! int_combine {
    ($($t:ty),*) => { $(
        impl Combine for $t {
            fn combine(self, o: Self, how: ScatterReduction) -> Self {
                match how {
                    ScatterReduction::None => o,
                    ScatterReduction::Add => self.wrapping_add(o),
                    ScatterReduction::Mul => self.wrapping_mul(o),
                    ScatterReduction::Max => Ord::max(self, o),
                    ScatterReduction::Min => Ord::min(self, o),
                }
            }
        }
    )* };
}
int_combine!(i8, i16, i32, i64, u8, u16, u32, u64);

macro_rules! float_combine {
    ($($t:ty),*) => { $(
        impl Combine for $t {
            fn combine(self, o: Self, how: ScatterReduction) -> Self {
                match how {
                    ScatterReduction::None => o,
                    ScatterReduction::Add => self + o,
                    ScatterReduction::Mul => self * o,
                    _ if self.is_nan() || o.is_nan() => <$t>::NAN,
                    ScatterReduction::Max => self.max(o),
                    ScatterReduction::Min => self.min(o),
                }
            }
        }
    )* };
}
float_combine!(f32, f64);

macro_rules! half_combine {
    ($($t:ty),*) => { $(
        impl Combine for $t {
            fn combine(self, o: Self, how: ScatterReduction) -> Self {
                <$t>::from_f32(self.to_f32().combine(o.to_f32(), how))
            }
        }
    )* };
}
half_combine!(half::f16, half::bf16);

impl Combine for bool {
    fn combine(self, o: Self, how: ScatterReduction) -> Self {
        match how {
            ScatterReduction::None => o,
            ScatterReduction::Add | ScatterReduction::Max => self || o,
            ScatterReduction::Mul | ScatterReduction::Min => self && o,
        }
    }
}

fn combine_arrays<T: Combine>(
    data: &Array<T>,
    upd: &Array<T>,
    pairs: &[(usize, usize)],
    how: ScatterReduction,
) -> Result<Array<T>, EvalError> {
    let mut out: Vec<T> = data.iter().copied().collect();
    let upd: Vec<T> = upd.iter().copied().collect();
    for &(d, u) in pairs {
        out[d] = out[d].combine(upd[u], how);
    }
    ArrayD::from_shape_vec(IxDyn(data.shape()), out)
        .map(|a| a.into_shared())
        .map_err(|e| EvalError::new(format!("internal: {e}")))
}

macro_rules! combine_variants {
    ($data:expr, $upd:expr, $pairs:expr, $how:expr, [$($v:ident),*]) => {
        match ($data.data(), $upd.data()) {
            $( (TensorData::$v(d), TensorData::$v(u)) => TensorData::$v(combine_arrays(d, u, $pairs, $how)?), )*
            _ if $data.dtype() != $upd.dtype() => {
                return Err(EvalError::new(format!(
                    "data is {} but updates are {}", $data.dtype(), $upd.dtype()
                )))
            }
            _ => {
                return Err(EvalError::unsupported(format!(
                    "reduction '{}' is not supported for element type {}", $how.as_str(), $data.dtype()
                )))
            }
        }
    };
}

/// Writes `updates[u]` into `data[d]` for each pair in order, combining with
/// the existing element as `how` says.
fn apply_scatter(
    data: &Tensor,
    updates: &Tensor,
    pairs: &[(usize, usize)],
    how: ScatterReduction,
) -> Result<Tensor, EvalError> {
    if how == ScatterReduction::None {
        // A copy works for every dtype: gather from [data, updates].
        let n = data.len();
        let both = concat_flat(&[data, updates])?;
        let mut src: Vec<usize> = (0..n).collect();
        for &(d, u) in pairs {
            src[d] = n + u;
        }
        return take(&both, data.shape(), &src, None);
    }
    let out =
        combine_variants!(data, updates, pairs, how, [F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64, Bool]);
    Ok(Tensor::new(out))
}

pub(super) fn scatter_elements(a: &ScatterElements, inputs: &[Option<Value>]) -> Outputs {
    let data = tensor_arg(inputs, 0, "data")?;
    let indices = tensor_arg(inputs, 1, "indices")?;
    let updates = tensor_arg(inputs, 2, "updates")?;
    if updates.shape() != indices.shape() {
        return Err(EvalError::new(format!(
            "updates {:?} must have the shape of indices {:?}",
            updates.shape(),
            indices.shape()
        )));
    }
    let axis = normalize_axis(a.axis, data.rank())?;
    let dest = element_positions(data.shape(), indices, axis)?;
    let pairs: Vec<(usize, usize)> = dest.into_iter().enumerate().map(|(u, d)| (d, u)).collect();
    single(apply_scatter(data, updates, &pairs, a.reduction)?)
}

pub(super) fn scatter_nd(a: &ScatterND, inputs: &[Option<Value>]) -> Outputs {
    let data = tensor_arg(inputs, 0, "data")?;
    let indices = tensor_arg(inputs, 1, "indices")?;
    let updates = tensor_arg(inputs, 2, "updates")?;
    let (offsets, slice) = nd_offsets(data.shape(), indices, 0)?;
    let ishape = indices.shape();
    let k = ishape[ishape.len() - 1];
    let mut want = ishape[..ishape.len() - 1].to_vec();
    want.extend_from_slice(&data.shape()[k..]);
    if updates.shape() != want.as_slice() {
        return Err(EvalError::new(format!("updates have shape {:?}, expected {want:?}", updates.shape())));
    }
    let pairs: Vec<(usize, usize)> =
        offsets.iter().enumerate().flat_map(|(t, &o)| (0..slice).map(move |e| (o + e, t * slice + e))).collect();
    single(apply_scatter(data, updates, &pairs, a.reduction)?)
}

pub(super) fn tensor_scatter(a: &TensorScatter, inputs: &[Option<Value>]) -> Outputs {
    let cache = tensor_arg(inputs, 0, "past_cache")?;
    let update = tensor_arg(inputs, 1, "update")?;
    let (cs, us) = (cache.shape(), update.shape());
    let r = cs.len();
    let axis = normalize_axis(a.axis, r)?;
    if axis == 0 {
        return Err(EvalError::new("axis cannot be the batch dim 0"));
    }
    let compatible = us.len() == r && (0..r).all(|d| if d == axis { us[d] <= cs[d] } else { us[d] == cs[d] });
    if !compatible {
        return Err(EvalError::new(format!("update {us:?} does not fit cache {cs:?} along axis {axis}")));
    }
    let writes = match opt_tensor_arg(inputs, 2, "write_indices")? {
        Some(t) => {
            let w = i64_values(t, "write_indices")?;
            if w.len() != cs[0] {
                return Err(EvalError::new(format!("write_indices has {} entries for a batch of {}", w.len(), cs[0])));
            }
            w
        }
        None => vec![0; cs[0]],
    };
    let max_len = cs[axis] as i64;
    let st = strides(cs);
    let mut pos = vec![0; r];
    let mut pairs = Vec::with_capacity(update.len());
    for u in 0..update.len() {
        unravel(u, us, &mut pos);
        let mut s = writes[pos[0]] + pos[axis] as i64;
        match a.mode {
            TensorScatterMode::Circular => s = s.rem_euclid(max_len.max(1)),
            TensorScatterMode::Linear if s < 0 || s >= max_len => {
                return Err(EvalError::new(format!(
                    "write index {} + position {} is outside the cache length {max_len} (batch {})",
                    writes[pos[0]], pos[axis], pos[0]
                )));
            }
            TensorScatterMode::Linear => {}
        }
        pos[axis] = s as usize;
        pairs.push((pos.iter().zip(&st).map(|(p, s)| p * s).sum(), u));
    }
    single(apply_scatter(cache, update, &pairs, ScatterReduction::None)?)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use sharc_ir::op::*;
    use sharc_ir::{Op, Tensor};

    #[test]
    fn gather_axes_and_negative_indices() {
        let x = iota(&[3, 2]);
        let out =
            run1(Op::Gather(Gather { axis: 0 }), vec![Some(x.clone()), Some(i(&[2, 2], &[0, 1, -1, 1]))]).unwrap();
        assert_eq!(out.shape(), &[2, 2, 2]);
        assert_eq!(fv(&out), vec![0., 1., 2., 3., 4., 5., 2., 3.]);
        let out = run1(Op::Gather(Gather { axis: 1 }), vec![Some(x.clone()), Some(Tensor::scalar(1i32))]).unwrap();
        assert_eq!(out.shape(), &[3]);
        assert_eq!(fv(&out), vec![1., 3., 5.]);
        let e = run1(Op::Gather(Gather { axis: 0 }), vec![Some(x), Some(i(&[1], &[3]))]).unwrap_err();
        assert!(e.message.contains("out of range"), "{}", e.message);
    }

    #[test]
    fn gather_elements_axis1() {
        // ONNX example: data [[1,2],[3,4]], indices [[0,0],[1,0]], axis 1.
        let x = f(&[2, 2], &[1., 2., 3., 4.]);
        let out = run1(
            Op::GatherElements(GatherElements { axis: 1 }),
            vec![Some(x.clone()), Some(i(&[2, 2], &[0, 0, -1, 0]))],
        )
        .unwrap();
        assert_eq!(fv(&out), vec![1., 1., 4., 3.]);
        assert!(run1(Op::GatherElements(GatherElements { axis: 1 }), vec![Some(x), Some(i(&[1, 1], &[2]))]).is_err());
    }

    #[test]
    fn gather_nd_with_batch_dims() {
        // ONNX examples 3 and 5.
        let x = Tensor::from_vec(&[2, 2, 2], (0..8).collect::<Vec<i32>>());
        let out =
            run1(Op::GatherND(GatherND { batch_dims: 0 }), vec![Some(x.clone()), Some(i(&[2, 2], &[0, 1, 1, 0]))])
                .unwrap();
        assert_eq!(out, Tensor::from_vec(&[2, 2], vec![2, 3, 4, 5]));
        let out =
            run1(Op::GatherND(GatherND { batch_dims: 1 }), vec![Some(x.clone()), Some(i(&[2, 1], &[1, 0]))]).unwrap();
        assert_eq!(out, Tensor::from_vec(&[2, 2], vec![2, 3, 4, 5]));
        let out = run1(
            Op::GatherND(GatherND { batch_dims: 0 }),
            vec![Some(x.clone()), Some(i(&[2, 1, 3], &[0, 0, 1, 1, 1, 1]))],
        )
        .unwrap();
        assert_eq!(out, Tensor::from_vec(&[2, 1], vec![1, 7]));
        assert!(
            run1(Op::GatherND(GatherND { batch_dims: 0 }), vec![Some(x), Some(i(&[1, 4], &[0, 0, 0, 0]))]).is_err()
        );
    }

    #[test]
    fn scatter_elements_reductions() {
        let data = f(&[1, 5], &[1., 2., 3., 4., 5.]);
        let idx = i(&[1, 2], &[1, 1]);
        let upd = f(&[1, 2], &[1.1, 2.1]);
        let run = |reduction| {
            fv(&run1(
                Op::ScatterElements(ScatterElements { axis: 1, reduction }),
                vec![Some(data.clone()), Some(idx.clone()), Some(upd.clone())],
            )
            .unwrap())
        };
        close(&run(ScatterReduction::Add), &[1., 5.2, 3., 4., 5.], 1e-6);
        close(&run(ScatterReduction::Mul), &[1., 2. * 1.1 * 2.1, 3., 4., 5.], 1e-6);
        close(&run(ScatterReduction::Max), &[1., 2.1, 3., 4., 5.], 1e-6);
        close(&run(ScatterReduction::Min), &[1., 1.1, 3., 4., 5.], 1e-6);
        close(&run(ScatterReduction::None), &[1., 2.1, 3., 4., 5.], 1e-6);
        let neg = run1(
            Op::ScatterElements(ScatterElements { axis: 1, reduction: ScatterReduction::None }),
            vec![Some(data.clone()), Some(i(&[1, 1], &[-1])), Some(f(&[1, 1], &[9.]))],
        )
        .unwrap();
        assert_eq!(fv(&neg), vec![1., 2., 3., 4., 9.]);
        let bad = run1(
            Op::ScatterElements(ScatterElements { axis: 1, reduction: ScatterReduction::None }),
            vec![Some(data), Some(i(&[1, 1], &[5])), Some(f(&[1, 1], &[9.]))],
        );
        assert!(bad.is_err());
    }

    #[test]
    fn scatter_strings_and_unsupported_reduction() {
        let data = Tensor::from_vec(&[3], vec!["a".to_string(), "b".into(), "c".into()]);
        let upd = Tensor::from_vec(&[1], vec!["z".to_string()]);
        let op = |reduction| Op::ScatterElements(ScatterElements { axis: 0, reduction });
        let out = run1(op(ScatterReduction::None), vec![Some(data.clone()), Some(i(&[1], &[2])), Some(upd.clone())]);
        assert_eq!(out.unwrap(), Tensor::from_vec(&[3], vec!["a".to_string(), "b".into(), "z".into()]));
        let e = run1(op(ScatterReduction::Add), vec![Some(data), Some(i(&[1], &[2])), Some(upd)]).unwrap_err();
        assert!(e.unsupported);
    }

    #[test]
    fn scatter_nd_slices_and_add() {
        // ONNX ScatterND example 2 (slices of a 4x4x4 tensor), reduced here to 2x2x2.
        let data = Tensor::from_vec(&[2, 2, 2], vec![1i64; 8]);
        let idx = i(&[2, 1], &[1, 1]);
        let upd = Tensor::from_vec(&[2, 2, 2], (10..18).collect::<Vec<i64>>());
        let out = run1(
            Op::ScatterND(ScatterND { reduction: ScatterReduction::Add }),
            vec![Some(data.clone()), Some(idx.clone()), Some(upd.clone())],
        )
        .unwrap();
        assert_eq!(iv(&out), vec![1, 1, 1, 1, 1 + 10 + 14, 1 + 11 + 15, 1 + 12 + 16, 1 + 13 + 17]);
        let out = run1(
            Op::ScatterND(ScatterND { reduction: ScatterReduction::None }),
            vec![Some(data.clone()), Some(i(&[1, 3], &[0, 1, 0])), Some(i(&[1], &[7]))],
        )
        .unwrap();
        assert_eq!(iv(&out), vec![1, 1, 7, 1, 1, 1, 1, 1]);
        let bad = run1(
            Op::ScatterND(ScatterND { reduction: ScatterReduction::None }),
            vec![Some(data), Some(idx), Some(i(&[2], &[1, 2]))],
        );
        assert!(bad.is_err());
    }

    #[test]
    fn tensor_scatter_linear_and_circular() {
        let cache = f(&[2, 4, 1], &[0.; 8]);
        let upd = f(&[2, 2, 1], &[1., 2., 3., 4.]);
        let w = i(&[2], &[1, 3]);
        let op = |mode| Op::TensorScatter(TensorScatter { axis: 1, mode });
        let out = run1(op(TensorScatterMode::Circular), vec![Some(cache.clone()), Some(upd.clone()), Some(w.clone())]);
        assert_eq!(fv(&out.unwrap()), vec![0., 1., 2., 0., 4., 0., 0., 3.]);
        let bad = run1(op(TensorScatterMode::Linear), vec![Some(cache.clone()), Some(upd.clone()), Some(w)]);
        assert!(bad.unwrap_err().message.contains("outside the cache"));
        let out = run1(op(TensorScatterMode::Linear), vec![Some(cache), Some(upd), None]).unwrap();
        assert_eq!(fv(&out), vec![1., 2., 0., 0., 3., 4., 0., 0.]);
    }
}

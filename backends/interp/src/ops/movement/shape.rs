//! Ops that only change how the elements are laid out: Reshape, Transpose,
//! Flatten, Squeeze, Unsqueeze, Expand, Tile, DepthToSpace, SpaceToDepth,
//! plus the shape queries Shape and Size, and Identity.

use super::{checked_numel, resolve_axes, take_axes, to_sizes};
use crate::util::{broadcast_shapes, i64_values, opt_tensor_arg, single, tensor_arg};
use ndarray::IxDyn;
use sharc_ir::op::{DepthSpaceMode, DepthToSpace, Flatten, Reshape, ShapeOf, SpaceToDepth, Transpose};
use sharc_ir::{EvalError, Tensor, Value, map_array};

type Outputs = Result<Vec<Value>, EvalError>;

/// Resolves a Reshape target against the input shape: `-1` is inferred,
/// `0` copies the input dim unless `allowzero` (then it means size 0).
pub(crate) fn reshape_dims(input: &[usize], spec: &[i64], allowzero: bool) -> Result<Vec<usize>, EvalError> {
    let total = checked_numel(input)?;
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 => {
                if infer.is_some() {
                    return Err(EvalError::new(format!("shape {spec:?} has more than one -1")));
                }
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => {
                let dim = input.get(i).ok_or_else(|| {
                    EvalError::new(format!(
                        "shape {spec:?} copies dim {i} (a 0 entry) but the input {input:?} has rank {}",
                        input.len()
                    ))
                })?;
                out.push(*dim);
            }
            d if d < 0 => return Err(EvalError::new(format!("shape {spec:?} has an invalid entry {d}"))),
            d => out.push(d as usize),
        }
    }
    if allowzero && infer.is_some() && spec.contains(&0) {
        return Err(EvalError::new(format!("shape {spec:?} has both -1 and 0 while allowzero is set")));
    }
    let known = checked_numel(&out)?;
    if let Some(i) = infer {
        if known == 0 || total % known != 0 {
            return Err(EvalError::new(format!("cannot reshape {input:?} to {spec:?}: the -1 dim cannot be inferred")));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(EvalError::new(format!(
            "cannot reshape {input:?} ({total} elements) to {spec:?} ({known} elements)"
        )));
    }
    Ok(out)
}

fn reshaped(x: &Tensor, shape: &[usize]) -> Result<Tensor, EvalError> {
    x.reshape(shape)
        .ok_or_else(|| EvalError::new(format!("cannot reshape {:?} to {shape:?}: element counts differ", x.shape())))
}

pub(super) fn reshape(a: &Reshape, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "data")?;
    let spec = i64_values(tensor_arg(inputs, 1, "shape")?, "shape")?;
    let shape = reshape_dims(x.shape(), &spec, a.allowzero)?;
    single(reshaped(x, &shape)?)
}

/// Permutes the dims of any tensor (the permutation must be valid).
pub(crate) fn transpose_tensor(t: &Tensor, perm: &[usize]) -> Tensor {
    let data =
        map_array!(t.data(), a => a.view().permuted_axes(IxDyn(perm)).as_standard_layout().into_owned().into_shared());
    Tensor::new(data)
}

pub(super) fn transpose(a: &Transpose, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "data")?;
    let r = x.rank();
    let perm: Vec<usize> = match &a.perm {
        None => (0..r).rev().collect(),
        Some(p) => {
            if p.len() != r {
                return Err(EvalError::new(format!("perm {p:?} has {} entries for a rank-{r} input", p.len())));
            }
            resolve_axes(p, r).map_err(|e| EvalError::new(format!("invalid perm {p:?}: {}", e.message)))?
        }
    };
    single(transpose_tensor(x, &perm))
}

pub(super) fn flatten(a: &Flatten, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "input")?;
    let r = x.rank();
    let axis = if a.axis < 0 { a.axis + r as i64 } else { a.axis };
    if axis < 0 || axis > r as i64 {
        return Err(EvalError::new(format!("axis {} is out of range for rank {r}", a.axis)));
    }
    let (outer, inner) = x.shape().split_at(axis as usize);
    single(reshaped(x, &[checked_numel(outer)?, checked_numel(inner)?])?)
}

pub(super) fn squeeze(inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "data")?;
    let shape = x.shape();
    let out: Vec<usize> = match opt_tensor_arg(inputs, 1, "axes")? {
        // An empty axes list means "all size-1 dims", as in onnxruntime.
        Some(t) if !t.is_empty() => {
            let axes = resolve_axes(&i64_values(t, "axes")?, x.rank())?;
            for &a in &axes {
                if shape[a] != 1 {
                    return Err(EvalError::new(format!(
                        "cannot squeeze axis {a} of size {} (shape {shape:?})",
                        shape[a]
                    )));
                }
            }
            shape.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect()
        }
        _ => shape.iter().copied().filter(|&d| d != 1).collect(),
    };
    single(reshaped(x, &out)?)
}

pub(super) fn unsqueeze(inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "data")?;
    let axes = i64_values(tensor_arg(inputs, 1, "axes")?, "axes")?;
    let rank = x.rank() + axes.len();
    let axes = resolve_axes(&axes, rank)?;
    let mut rest = x.shape().iter();
    let out: Vec<usize> =
        (0..rank).map(|i| if axes.contains(&i) { 1 } else { rest.next().copied().unwrap_or(1) }).collect();
    single(reshaped(x, &out)?)
}

pub(super) fn shape_of(a: &ShapeOf, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "data")?;
    let r = x.rank() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clamp(a.start);
    let end = clamp(a.end.unwrap_or(r));
    let dims: Vec<i64> = if start < end { x.shape()[start..end].iter().map(|&d| d as i64).collect() } else { vec![] };
    single(Tensor::from_vec(&[dims.len()], dims))
}

pub(super) fn size(inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "data")?;
    single(Tensor::scalar(x.len() as i64))
}

/// Passes any value through: tensors, sequences and optionals alike.
pub(super) fn identity(inputs: &[Option<Value>]) -> Outputs {
    match inputs.first() {
        Some(Some(v)) => Ok(vec![v.clone()]),
        _ => Err(EvalError::new("input 0 (input) is required but missing")),
    }
}

pub(super) fn expand(inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "input")?;
    let spec = to_sizes(&i64_values(tensor_arg(inputs, 1, "shape")?, "shape")?, "shape")?;
    let out = broadcast_shapes(x.shape(), &spec)?;
    // Give the input the output's rank, then repeat along its size-1 dims.
    let mut padded = vec![1; out.len() - x.rank()];
    padded.extend_from_slice(x.shape());
    let x = reshaped(x, &padded)?;
    let per_axis: Vec<Vec<Option<usize>>> =
        padded.iter().zip(&out).map(|(&n, &o)| (0..o).map(|j| Some(if n == 1 { 0 } else { j })).collect()).collect();
    single(take_axes(&x, &per_axis, None)?)
}

pub(super) fn tile(inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "input")?;
    let reps = i64_values(tensor_arg(inputs, 1, "repeats")?, "repeats")?;
    if reps.len() != x.rank() {
        return Err(EvalError::new(format!("repeats {reps:?} must have one entry per input dim ({:?})", x.shape())));
    }
    let reps = to_sizes(&reps, "repeats")?;
    let mut per_axis = Vec::with_capacity(x.rank());
    for (&n, &r) in x.shape().iter().zip(&reps) {
        let len = n.checked_mul(r).ok_or_else(|| EvalError::new("tiled shape is too large"))?;
        per_axis.push((0..len).map(|j| Some(j % n)).collect());
    }
    single(take_axes(x, &per_axis, None)?)
}

fn blocks(x: &Tensor, blocksize: i64, what: &str) -> Result<(usize, [usize; 4]), EvalError> {
    let s = x.shape();
    let [n, c, h, w] = s else {
        return Err(EvalError::new(format!("{what} needs a rank-4 input, got shape {s:?}")));
    };
    if blocksize <= 0 {
        return Err(EvalError::new(format!("blocksize must be positive, got {blocksize}")));
    }
    Ok((blocksize as usize, [*n, *c, *h, *w]))
}

pub(super) fn depth_to_space(a: &DepthToSpace, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "input")?;
    let (b, [n, c, h, w]) = blocks(x, a.blocksize, "DepthToSpace")?;
    if c % (b * b) != 0 {
        return Err(EvalError::new(format!("channels {c} are not divisible by blocksize² = {}", b * b)));
    }
    let c2 = c / (b * b);
    let (tmp, perm) = match a.mode {
        DepthSpaceMode::Dcr => ([n, b, b, c2, h, w], [0, 3, 4, 1, 5, 2]),
        DepthSpaceMode::Crd => ([n, c2, b, b, h, w], [0, 1, 4, 2, 5, 3]),
    };
    let t = transpose_tensor(&reshaped(x, &tmp)?, &perm);
    single(reshaped(&t, &[n, c2, h * b, w * b])?)
}

pub(super) fn space_to_depth(a: &SpaceToDepth, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "input")?;
    let (b, [n, c, h, w]) = blocks(x, a.blocksize, "SpaceToDepth")?;
    if h % b != 0 || w % b != 0 {
        return Err(EvalError::new(format!("spatial dims {h}x{w} are not divisible by blocksize {b}")));
    }
    let perm = match a.mode {
        DepthSpaceMode::Dcr => [0, 3, 5, 1, 2, 4],
        DepthSpaceMode::Crd => [0, 1, 3, 5, 2, 4],
    };
    let t = transpose_tensor(&reshaped(x, &[n, c, h / b, b, w / b, b])?, &perm);
    single(reshaped(&t, &[n, c * b * b, h / b, w / b])?)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use sharc_ir::op::*;
    use sharc_ir::{Op, Tensor, Value};

    fn reshape(x: Tensor, s: &[i64], allowzero: bool) -> Result<Tensor, sharc_ir::EvalError> {
        run1(Op::Reshape(Reshape { allowzero }), vec![Some(x), Some(i(&[s.len()], s))])
    }

    #[test]
    fn reshape_infers_and_copies() {
        let x = iota(&[2, 3, 4]);
        assert_eq!(reshape(x.clone(), &[4, -1], false).unwrap().shape(), &[4, 6]);
        assert_eq!(reshape(x.clone(), &[0, -1], false).unwrap().shape(), &[2, 12]);
        assert_eq!(reshape(x.clone(), &[2, 0, 4, 1], false).unwrap().shape(), &[2, 3, 4, 1]);
        assert_eq!(fv(&reshape(x.clone(), &[24], false).unwrap()), fv(&x));
        assert!(reshape(x.clone(), &[5, -1], false).unwrap_err().message.contains("inferred"));
        assert!(reshape(x.clone(), &[-1, -1], false).is_err());
        assert!(reshape(x.clone(), &[7], false).is_err());
        assert!(reshape(x, &[-2, 12], false).is_err());
    }

    #[test]
    fn reshape_allowzero() {
        let x = Tensor::from_vec::<f32>(&[0, 3, 4], vec![]);
        assert_eq!(reshape(x.clone(), &[3, 4, 0], true).unwrap().shape(), &[3, 4, 0]);
        // Without allowzero the 0 copies dim 0 (which is 0 here, too).
        assert_eq!(reshape(x.clone(), &[0, 12], false).unwrap().shape(), &[0, 12]);
        assert!(reshape(x, &[0, -1], true).is_err());
    }

    #[test]
    fn transpose_default_and_perm() {
        let x = iota(&[2, 3]);
        let t = run1(Op::Transpose(Transpose { perm: None }), vec![Some(x.clone())]).unwrap();
        assert_eq!(t.shape(), &[3, 2]);
        assert_eq!(fv(&t), vec![0., 3., 1., 4., 2., 5.]);
        let x = iota(&[2, 3, 4]);
        let t = run1(Op::Transpose(Transpose { perm: Some(vec![1, 2, 0]) }), vec![Some(x.clone())]).unwrap();
        assert_eq!(t.shape(), &[3, 4, 2]);
        // t[i, j, k] = x[k, i, j] = 12k + 4i + j
        assert_eq!(fv(&t)[..4], [0., 12., 1., 13.]);
        assert!(run1(Op::Transpose(Transpose { perm: Some(vec![0, 0, 1]) }), vec![Some(x.clone())]).is_err());
        assert!(run1(Op::Transpose(Transpose { perm: Some(vec![0, 1]) }), vec![Some(x)]).is_err());
    }

    #[test]
    fn flatten_axes() {
        let x = iota(&[2, 3, 4, 5]);
        for (axis, want) in [(0, [1, 120]), (1, [2, 60]), (4, [120, 1]), (-1, [24, 5]), (-4, [1, 120])] {
            assert_eq!(run1(Op::Flatten(Flatten { axis }), vec![Some(x.clone())]).unwrap().shape(), &want);
        }
        assert!(run1(Op::Flatten(Flatten { axis: 5 }), vec![Some(x)]).is_err());
    }

    #[test]
    fn squeeze_and_unsqueeze() {
        let x = iota(&[1, 3, 1, 2]);
        assert_eq!(run1(Op::Squeeze, vec![Some(x.clone())]).unwrap().shape(), &[3, 2]);
        assert_eq!(run1(Op::Squeeze, vec![Some(x.clone()), Some(i(&[0], &[]))]).unwrap().shape(), &[3, 2]);
        assert_eq!(run1(Op::Squeeze, vec![Some(x.clone()), Some(i(&[1], &[-2]))]).unwrap().shape(), &[1, 3, 2]);
        assert!(run1(Op::Squeeze, vec![Some(x.clone()), Some(i(&[1], &[1]))]).unwrap_err().message.contains("size 3"));
        let y = iota(&[3, 4]);
        let u = run1(Op::Unsqueeze, vec![Some(y.clone()), Some(i(&[3], &[4, 0, -3]))]).unwrap();
        // Output rank 5; axes 4, 0 and 2 are new.
        assert_eq!(u.shape(), &[1, 3, 1, 4, 1]);
        assert!(run1(Op::Unsqueeze, vec![Some(y.clone()), Some(i(&[2], &[0, 0]))]).is_err());
        assert!(run1(Op::Unsqueeze, vec![Some(y), Some(i(&[1], &[3]))]).is_err());
    }

    #[test]
    fn shape_with_start_end() {
        let x = iota(&[3, 4, 5]);
        let shape = |start, end| iv(&run1(Op::Shape(ShapeOf { start, end }), vec![Some(x.clone())]).unwrap());
        assert_eq!(shape(0, None), vec![3, 4, 5]);
        assert_eq!(shape(1, Some(-1)), vec![4]);
        assert_eq!(shape(-10, Some(10)), vec![3, 4, 5]);
        assert_eq!(shape(2, Some(1)), Vec::<i64>::new());
        assert_eq!(iv(&run1(Op::Size, vec![Some(x)]).unwrap()), vec![60]);
    }

    #[test]
    fn identity_passes_sequences() {
        let s = Value::Sequence(vec![Value::Tensor(iota(&[2]))]);
        let types = vec![sharc_ir::Type::Unknown];
        let cx = crate::ops::OpContext { node_name: "n", num_outputs: 1, output_types: &types };
        let out = super::super::run(&Op::Identity, &[Some(s.clone())], &cx).unwrap().unwrap();
        assert_eq!(out, vec![s]);
        let o = Value::Optional(None);
        let out = super::super::run(&Op::Identity, &[Some(o.clone())], &cx).unwrap().unwrap();
        assert_eq!(out, vec![o]);
    }

    #[test]
    fn expand_broadcasts_both_ways() {
        let x = f(&[3, 1], &[1., 2., 3.]);
        let e = run1(Op::Expand, vec![Some(x.clone()), Some(i(&[3], &[2, 1, 2]))]).unwrap();
        assert_eq!(e.shape(), &[2, 3, 2]);
        assert_eq!(fv(&e), vec![1., 1., 2., 2., 3., 3., 1., 1., 2., 2., 3., 3.]);
        // A smaller target keeps the input's dims.
        let e = run1(Op::Expand, vec![Some(x.clone()), Some(i(&[1], &[1]))]).unwrap();
        assert_eq!(e.shape(), &[3, 1]);
        assert!(run1(Op::Expand, vec![Some(x), Some(i(&[2], &[2, 2]))]).is_err());
    }

    #[test]
    fn tile_repeats() {
        let x = f(&[2, 2], &[0., 1., 2., 3.]);
        let t = run1(Op::Tile, vec![Some(x.clone()), Some(i(&[2], &[2, 1]))]).unwrap();
        assert_eq!(t.shape(), &[4, 2]);
        assert_eq!(fv(&t), vec![0., 1., 2., 3., 0., 1., 2., 3.]);
        let t = run1(Op::Tile, vec![Some(x.clone()), Some(i(&[2], &[1, 2]))]).unwrap();
        assert_eq!(fv(&t), vec![0., 1., 0., 1., 2., 3., 2., 3.]);
        assert!(run1(Op::Tile, vec![Some(x.clone()), Some(i(&[1], &[2]))]).is_err());
        assert!(run1(Op::Tile, vec![Some(x), Some(i(&[2], &[-1, 1]))]).is_err());
    }

    #[test]
    fn depth_space_round_trip() {
        // Values from the ONNX DepthToSpace DCR/CRD examples (numpy).
        let x = iota(&[1, 8, 2, 3]);
        let dcr =
            run1(Op::DepthToSpace(DepthToSpace { blocksize: 2, mode: DepthSpaceMode::Dcr }), vec![Some(x.clone())])
                .unwrap();
        assert_eq!(dcr.shape(), &[1, 2, 4, 6]);
        assert_eq!(fv(&dcr)[..12], [0., 12., 1., 13., 2., 14., 24., 36., 25., 37., 26., 38.]);
        let crd =
            run1(Op::DepthToSpace(DepthToSpace { blocksize: 2, mode: DepthSpaceMode::Crd }), vec![Some(x.clone())])
                .unwrap();
        assert_eq!(fv(&crd)[..12], [0., 6., 1., 7., 2., 8., 12., 18., 13., 19., 14., 20.]);
        for mode in [DepthSpaceMode::Dcr, DepthSpaceMode::Crd] {
            let d = run1(Op::DepthToSpace(DepthToSpace { blocksize: 2, mode }), vec![Some(x.clone())]).unwrap();
            let back = run1(Op::SpaceToDepth(SpaceToDepth { blocksize: 2, mode }), vec![Some(d)]).unwrap();
            assert_eq!(back, x);
        }
        let bad = iota(&[1, 3, 2, 2]);
        assert!(
            run1(Op::DepthToSpace(DepthToSpace { blocksize: 2, mode: DepthSpaceMode::Dcr }), vec![Some(bad)]).is_err()
        );
    }
}

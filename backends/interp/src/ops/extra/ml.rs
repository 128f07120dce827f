//! `ai.onnx.ml` ops, which sharc keeps as [`Opaque`] nodes: `Binarizer`,
//! `ArrayFeatureExtractor`, `LabelEncoder` and `TreeEnsemble`.
//!
//! Their attributes are read straight from the opaque attribute list, with
//! the defaults of the ONNX schemas (`ai.onnx.ml` opset 5).

use super::common::{Floats, float_tensor, gather_flat, numeric_tensor, outputs, pick};
use crate::util::tensor_arg;
use sharc_ir::{Attr, Attrs, DType, EvalError, Opaque, Tensor, TensorData, Value};
use std::collections::HashMap;

/// Typed access to an opaque node's attributes.
pub(crate) struct AttrView<'a>(pub &'a Attrs);

impl AttrView<'_> {
    fn get(&self, name: &str) -> Option<&Attr> {
        self.0.get(name)
    }

    fn wrong(name: &str, want: &str, a: &Attr) -> EvalError {
        EvalError::new(format!("attribute '{name}' should be {want}, found {}", a.kind()))
    }

    pub(crate) fn int(&self, name: &str, default: i64) -> Result<i64, EvalError> {
        match self.get(name) {
            None => Ok(default),
            Some(Attr::Int(v)) => Ok(*v),
            Some(a) => Err(Self::wrong(name, "an int", a)),
        }
    }

    pub(crate) fn float(&self, name: &str, default: f32) -> Result<f32, EvalError> {
        match self.get(name) {
            None => Ok(default),
            Some(Attr::Float(v)) => Ok(*v),
            Some(Attr::Int(v)) => Ok(*v as f32),
            Some(a) => Err(Self::wrong(name, "a float", a)),
        }
    }

    pub(crate) fn string(&self, name: &str) -> Result<Option<String>, EvalError> {
        match self.get(name) {
            None => Ok(None),
            Some(Attr::String(v)) => Ok(Some(v.clone())),
            Some(a) => Err(Self::wrong(name, "a string", a)),
        }
    }

    pub(crate) fn ints(&self, name: &str) -> Result<Option<Vec<i64>>, EvalError> {
        match self.get(name) {
            None => Ok(None),
            Some(Attr::Ints(v)) => Ok(Some(v.clone())),
            Some(Attr::Floats(v)) if v.is_empty() => Ok(Some(Vec::new())),
            Some(a) => Err(Self::wrong(name, "ints", a)),
        }
    }

    pub(crate) fn floats(&self, name: &str) -> Result<Option<Vec<f32>>, EvalError> {
        match self.get(name) {
            None => Ok(None),
            Some(Attr::Floats(v)) => Ok(Some(v.clone())),
            Some(Attr::Ints(v)) if v.is_empty() => Ok(Some(Vec::new())),
            Some(a) => Err(Self::wrong(name, "floats", a)),
        }
    }

    pub(crate) fn strings(&self, name: &str) -> Result<Option<Vec<String>>, EvalError> {
        match self.get(name) {
            None => Ok(None),
            Some(Attr::Strings(v)) => Ok(Some(v.clone())),
            Some(Attr::Ints(v)) if v.is_empty() => Ok(Some(Vec::new())),
            Some(a) => Err(Self::wrong(name, "strings", a)),
        }
    }

    pub(crate) fn tensor(&self, name: &str) -> Result<Option<&Tensor>, EvalError> {
        match self.get(name) {
            None => Ok(None),
            Some(Attr::Tensor(t)) => Ok(Some(t)),
            Some(a) => Err(Self::wrong(name, "a tensor", a)),
        }
    }

    /// A required integer list.
    fn req_ints(&self, name: &str) -> Result<Vec<i64>, EvalError> {
        self.ints(name)?.ok_or_else(|| EvalError::new(format!("attribute '{name}' is required")))
    }

    /// A numeric tensor attribute as `f64`s.
    fn tensor_f64(&self, name: &str) -> Result<Option<Vec<f64>>, EvalError> {
        self.tensor(name)?
            .map(|t| {
                t.to_f64_vec().ok_or_else(|| {
                    EvalError::new(format!("attribute '{name}' must be a numeric tensor, got {}", t.dtype()))
                })
            })
            .transpose()
    }
}

/// Runs an `ai.onnx.ml` op, or returns `None` if it is not one of ours.
pub(crate) fn run(o: &Opaque, inputs: &[Option<Value>]) -> Option<Result<Vec<Value>, EvalError>> {
    let a = AttrView(&o.attrs);
    Some(match o.op_type.as_str() {
        "Binarizer" => binarizer(&a, inputs),
        "ArrayFeatureExtractor" => array_feature_extractor(inputs),
        "LabelEncoder" => label_encoder(&a, inputs),
        "TreeEnsemble" => tree_ensemble(&a, inputs),
        _ => return None,
    })
}

/// `Binarizer`: 1 where `x > threshold`, else 0, in the input's type.
fn binarizer(a: &AttrView, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let x = tensor_arg(inputs, 0, "X")?;
    let threshold = a.float("threshold", 0.0)? as f64;
    let f = Floats::read_numeric(x, "X")?;
    let data = f.data.iter().map(|&v| if v > threshold { 1.0 } else { 0.0 }).collect();
    outputs(vec![numeric_tensor(x.dtype(), &f.shape, data)?])
}

/// `ArrayFeatureExtractor`: picks entries of the last axis. A 1-D input
/// gives a `[1, k]` result, as onnxruntime does.
fn array_feature_extractor(inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let x = tensor_arg(inputs, 0, "X")?;
    let idx_t = tensor_arg(inputs, 1, "Y")?;
    let idx = idx_t.to_i64_vec().ok_or_else(|| EvalError::new("Y must be an integer tensor"))?;
    let shape = x.shape();
    let last = *shape.last().ok_or_else(|| EvalError::new("X must have rank 1 or more"))?;
    let idx: Vec<usize> = idx
        .iter()
        .map(|&i| {
            usize::try_from(i)
                .ok()
                .filter(|&i| i < last)
                .ok_or_else(|| EvalError::new(format!("index {i} is outside the last dim of size {last}")))
        })
        .collect::<Result<_, _>>()?;
    let rows = x.len() / last.max(1);
    let flat: Vec<usize> = (0..rows).flat_map(|r| idx.iter().map(move |&i| r * last + i)).collect();
    let out_shape = if shape.len() == 1 {
        vec![1, idx.len()]
    } else {
        let mut s = shape[..shape.len() - 1].to_vec();
        s.push(idx.len());
        s
    };
    outputs(vec![gather_flat(x, &flat, &out_shape)?])
}

/// A hashable lookup key for `LabelEncoder`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Int(i64),
    /// The bits of an `f64`, with every NaN and both zeros made one key.
    Float(u64),
    Str(String),
}

fn float_key(v: f64) -> Key {
    let v = if v.is_nan() {
        f64::NAN
    } else if v == 0.0 {
        0.0
    } else {
        v
    };
    Key::Float(v.to_bits())
}

/// The elements of a tensor as lookup keys.
fn keys_of(t: &Tensor) -> Result<Vec<Key>, EvalError> {
    Ok(match t.data() {
        TensorData::String(a) => a.iter().map(|s| Key::Str(s.clone())).collect(),
        TensorData::F32(_) | TensorData::F64(_) | TensorData::F16(_) | TensorData::BF16(_) => {
            Floats::read(t, "keys")?.data.into_iter().map(float_key).collect()
        }
        _ => t
            .to_i64_vec()
            .ok_or_else(|| EvalError::new(format!("cannot use {} values as keys", t.dtype())))?
            .into_iter()
            .map(Key::Int)
            .collect(),
    })
}

/// `LabelEncoder` (opset 4): maps each element through `keys_*` → `values_*`,
/// using the matching `default_*` for elements not among the keys.
fn label_encoder(a: &AttrView, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let x = tensor_arg(inputs, 0, "X")?;
    let keys: Tensor = match (
        a.ints("keys_int64s")?,
        a.floats("keys_floats")?,
        a.strings("keys_strings")?,
        a.tensor("keys_tensor")?,
    ) {
        (Some(k), None, None, None) => Tensor::from_vec(&[k.len()], k),
        (None, Some(k), None, None) => Tensor::from_vec(&[k.len()], k),
        (None, None, Some(k), None) => Tensor::from_vec(&[k.len()], k),
        (None, None, None, Some(k)) => k.clone(),
        _ => return Err(EvalError::new("exactly one keys_* attribute must be set")),
    };
    let (values, default): (Tensor, Tensor) = match (
        a.ints("values_int64s")?,
        a.floats("values_floats")?,
        a.strings("values_strings")?,
        a.tensor("values_tensor")?,
    ) {
        (Some(v), None, None, None) => {
            (Tensor::from_vec(&[v.len()], v), Tensor::from_vec(&[1], vec![a.int("default_int64", -1)?]))
        }
        (None, Some(v), None, None) => {
            (Tensor::from_vec(&[v.len()], v), Tensor::from_vec(&[1], vec![a.float("default_float", -0.0)?]))
        }
        (None, None, Some(v), None) => {
            let d = a.string("default_string")?.unwrap_or_else(|| "_Unused".to_string());
            (Tensor::from_vec(&[v.len()], v), Tensor::from_vec(&[1], vec![d]))
        }
        (None, None, None, Some(v)) => {
            let d = match a.tensor("default_tensor")? {
                Some(d) if d.dtype() == v.dtype() && d.len() == 1 => {
                    d.reshape(&[1]).ok_or_else(|| EvalError::new("bad default_tensor"))?
                }
                Some(d) => {
                    return Err(EvalError::new(format!(
                        "default_tensor must hold one {} value, got {}{:?}",
                        v.dtype(),
                        d.dtype(),
                        d.shape()
                    )));
                }
                None => match v.dtype() {
                    DType::String => Tensor::from_vec(&[1], vec!["_Unused".to_string()]),
                    d if d.is_float() => numeric_tensor(d, &[1], vec![-0.0])?,
                    d => numeric_tensor(d, &[1], vec![-1.0])?,
                },
            };
            (v.clone(), d)
        }
        _ => return Err(EvalError::new("exactly one values_* attribute must be set")),
    };
    if keys.len() != values.len() {
        return Err(EvalError::new(format!("{} keys but {} values", keys.len(), values.len())));
    }
    let key_list = keys_of(&keys)?;
    let input_keys = keys_of(x)?;
    let same_kind = |k: &Key, l: &Key| std::mem::discriminant(k) == std::mem::discriminant(l);
    if let (Some(k), Some(i)) = (key_list.first(), input_keys.first())
        && !same_kind(k, i)
    {
        return Err(EvalError::new(format!(
            "the input's {} elements do not match the keys' {}",
            x.dtype(),
            keys.dtype()
        )));
    }
    // A repeated key: the last one wins.
    let map: HashMap<&Key, usize> = key_list.iter().enumerate().map(|(i, k)| (k, i)).collect();
    if values.dtype() != default.dtype() {
        return Err(EvalError::new(format!(
            "values {} and default {} differ in type",
            values.dtype(),
            default.dtype()
        )));
    }
    let picks: Vec<(usize, usize)> = input_keys.iter().map(|k| map.get(k).map_or((1, 0), |&i| (0, i))).collect();
    outputs(vec![pick(&[&values, &default], &picks, x.shape())?])
}

/// One tree node of a `TreeEnsemble`.
struct TreeNode {
    mode: u8,
    feature: usize,
    split: f64,
    members: Vec<f64>,
    missing_true: bool,
    /// (is_leaf, index) of each branch.
    t: (bool, usize),
    f: (bool, usize),
}

impl TreeNode {
    fn goes_true(&self, x: f64) -> bool {
        if x.is_nan() && self.missing_true {
            return true;
        }
        match self.mode {
            0 => x <= self.split,
            1 => x < self.split,
            2 => x >= self.split,
            3 => x > self.split,
            4 => x == self.split,
            5 => x != self.split,
            _ => self.members.contains(&x),
        }
    }
}

/// `TreeEnsemble` (ai.onnx.ml opset 5): sums (or averages, mins, maxes) the
/// leaf weights each row reaches in each tree, per target, then applies the
/// post transform.
fn tree_ensemble(a: &AttrView, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let xt = tensor_arg(inputs, 0, "X")?;
    let x = Floats::read(xt, "X")?;
    let (rows, features) = match x.shape[..] {
        [n, f] => (n, f),
        [f] => (1, f),
        _ => return Err(EvalError::new(format!("X must be [N, F], got {:?}", x.shape))),
    };
    let n_targets = usize::try_from(a.int("n_targets", -1)?).map_err(|_| EvalError::new("n_targets is required"))?;
    let splits = a.tensor_f64("nodes_splits")?.ok_or_else(|| EvalError::new("nodes_splits is required"))?;
    let featureids = a.req_ints("nodes_featureids")?;
    let modes = a.tensor_f64("nodes_modes")?.ok_or_else(|| EvalError::new("nodes_modes is required"))?;
    let true_ids = a.req_ints("nodes_truenodeids")?;
    let false_ids = a.req_ints("nodes_falsenodeids")?;
    let true_leafs = a.req_ints("nodes_trueleafs")?;
    let false_leafs = a.req_ints("nodes_falseleafs")?;
    let missing = a.ints("nodes_missing_value_tracks_true")?;
    let leaf_targets = a.req_ints("leaf_targetids")?;
    let leaf_weights = a.tensor_f64("leaf_weights")?.ok_or_else(|| EvalError::new("leaf_weights is required"))?;
    let roots = a.req_ints("tree_roots")?;
    let members = a.tensor_f64("membership_values")?.unwrap_or_default();
    let n = featureids.len();
    for (name, len) in [
        ("nodes_splits", splits.len()),
        ("nodes_modes", modes.len()),
        ("nodes_truenodeids", true_ids.len()),
        ("nodes_falsenodeids", false_ids.len()),
        ("nodes_trueleafs", true_leafs.len()),
        ("nodes_falseleafs", false_leafs.len()),
    ] {
        if len != n {
            return Err(EvalError::new(format!("{name} has {len} entries, nodes_featureids has {n}")));
        }
    }
    if let Some(m) = &missing
        && m.len() != n
    {
        return Err(EvalError::new(format!("nodes_missing_value_tracks_true has {} entries for {n} nodes", m.len())));
    }
    if leaf_targets.len() != leaf_weights.len() {
        return Err(EvalError::new("leaf_targetids and leaf_weights differ in length"));
    }
    let leaves = leaf_weights.len();
    let branch = |leaf: i64, id: i64| -> Result<(bool, usize), EvalError> {
        let limit = if leaf != 0 { leaves } else { n };
        usize::try_from(id)
            .ok()
            .filter(|&i| i < limit)
            .map(|i| (leaf != 0, i))
            .ok_or_else(|| EvalError::new(format!("branch target {id} is out of range")))
    };
    // Set members are listed per BRANCH_MEMBER node, in node order, separated by NaN.
    let mut member_sets = members.split(|v| v.is_nan());
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let mode = modes[i];
        if !(0.0..=6.0).contains(&mode) || mode.fract() != 0.0 {
            return Err(EvalError::new(format!("node {i} has unknown mode {mode}")));
        }
        let mode = mode as u8;
        let set = if mode == 6 {
            member_sets.next().ok_or_else(|| EvalError::new("membership_values has too few sets"))?.to_vec()
        } else {
            Vec::new()
        };
        nodes.push(TreeNode {
            mode,
            feature: usize::try_from(featureids[i]).map_err(|_| EvalError::new("negative feature id"))?,
            split: splits[i],
            members: set,
            missing_true: missing.as_ref().is_some_and(|m| m[i] != 0),
            t: branch(true_leafs[i], true_ids[i])?,
            f: branch(false_leafs[i], false_ids[i])?,
        });
    }
    for &t in &leaf_targets {
        if usize::try_from(t).ok().filter(|&t| t < n_targets).is_none() {
            return Err(EvalError::new(format!("leaf target {t} is outside [0, {n_targets})")));
        }
    }
    let aggregate = a.int("aggregate_function", 1)?;
    let init = match aggregate {
        0 | 1 => 0.0,
        2 => f64::MAX,
        3 => f64::MIN,
        v => return Err(EvalError::new(format!("unknown aggregate_function {v}"))),
    };
    let mut out = vec![init; rows * n_targets];
    for r in 0..rows {
        let row = &x.data[r * features..(r + 1) * features];
        for &root in &roots {
            let root = usize::try_from(root)
                .ok()
                .filter(|&i| i < n)
                .ok_or_else(|| EvalError::new(format!("tree root {root} is out of range")))?;
            let rn = &nodes[root];
            // A tree that is a single leaf: both branches name the same leaf.
            let mut at = if rn.t.0 && rn.f.0 && rn.t.1 == rn.f.1 { rn.t } else { (false, root) };
            let mut steps = 0;
            while !at.0 {
                let node = &nodes[at.1];
                let v = *row.get(node.feature).ok_or_else(|| {
                    EvalError::new(format!("feature {} is out of range for {features} features", node.feature))
                })?;
                at = if node.goes_true(v) { node.t } else { node.f };
                steps += 1;
                if steps > n {
                    return Err(EvalError::new("the trees contain a cycle"));
                }
            }
            let (w, t) = (leaf_weights[at.1], leaf_targets[at.1] as usize);
            let o = &mut out[r * n_targets + t];
            *o = match aggregate {
                0 => *o + w / roots.len() as f64,
                1 => *o + w,
                2 => o.min(w),
                _ => o.max(w),
            };
        }
    }
    post_transform(a.int("post_transform", 0)?, &mut out, n_targets)?;
    outputs(vec![float_tensor(xt.dtype(), &[rows, n_targets], out)?])
}

/// The score transforms of the `ai.onnx.ml` ensembles, applied per row.
fn post_transform(kind: i64, v: &mut [f64], width: usize) -> Result<(), EvalError> {
    match kind {
        0 => {}
        1 | 3 => {
            for row in v.chunks_mut(width.max(1)) {
                // SOFTMAX_ZERO leaves zero scores at zero.
                let keep = |x: f64| kind == 1 || x != 0.0;
                let m = row.iter().copied().filter(|&x| keep(x)).fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = row.iter().filter(|&&x| keep(x)).map(|&x| (x - m).exp()).sum();
                for x in row.iter_mut() {
                    *x = if keep(*x) { (*x - m).exp() / s } else { 0.0 };
                }
            }
        }
        2 => v.iter_mut().for_each(|x| *x = 1.0 / (1.0 + (-*x).exp())),
        4 => {
            for x in v.iter_mut() {
                *x = std::f64::consts::SQRT_2 * erf_inv(2.0 * *x - 1.0);
            }
        }
        k => return Err(EvalError::new(format!("unknown post_transform {k}"))),
    }
    Ok(())
}

/// The error function, by the complementary-function Chebyshev fit of
/// Numerical Recipes (fractional error below 1.2e-7).
fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223
        + t * (1.00002368
            + t * (0.37409196
                + t * (0.09678418
                    + t * (-0.18628806
                        + t * (0.27886807
                            + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let erfc = t * poly.exp();
    if x >= 0.0 { 1.0 - erfc } else { erfc - 1.0 }
}

/// The inverse error function: Winitzki's closed form refined by Newton
/// steps on [`erf`].
fn erf_inv(y: f64) -> f64 {
    if y <= -1.0 {
        return f64::NEG_INFINITY;
    }
    if y >= 1.0 {
        return f64::INFINITY;
    }
    let a = 0.147;
    let l = ((1.0 - y) * (1.0 + y)).ln();
    let b = 2.0 / (std::f64::consts::PI * a) + 0.5 * l;
    let mut x = y.signum() * ((b * b - l / a).sqrt() - b).sqrt();
    for _ in 0..3 {
        let d = 2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp();
        if d == 0.0 {
            break;
        }
        x -= (erf(x) - y) / d;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::extra::testutil::{assert_close, cx, f32s, run1};
    use sharc_ir::Op;

    fn ml(op_type: &str, attrs: Vec<(&str, Attr)>) -> Op {
        Op::Opaque(Opaque {
            domain: "ai.onnx.ml".into(),
            op_type: op_type.into(),
            attrs: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        })
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn binarizer_keeps_type() {
        let op = ml("Binarizer", vec![("threshold", Attr::Float(1.0))]);
        let y = run1(&op, vec![Some(Value::Tensor(Tensor::from_vec(&[4], vec![0i64, 1, 2, 5])))]);
        assert_eq!(y, Tensor::from_vec(&[4], vec![0i64, 0, 1, 1]));
        let y = run1(&op, vec![Some(Value::Tensor(f32s(&[3], vec![1.5, f64::NAN, -3.0])))]);
        assert_eq!(y, Tensor::from_vec(&[3], vec![1.0f32, 0.0, 0.0]));
    }

    #[test]
    fn array_feature_extractor_last_axis() {
        let op = ml("ArrayFeatureExtractor", vec![]);
        let x = Tensor::from_vec(&[2, 3], strs(&["a", "b", "c", "d", "e", "f"]));
        let idx = Tensor::from_vec(&[2], vec![2i64, 0]);
        let y = run1(&op, vec![Some(Value::Tensor(x)), Some(Value::Tensor(idx.clone()))]);
        assert_eq!(y, Tensor::from_vec(&[2, 2], strs(&["c", "a", "f", "d"])));
        // A vector becomes one row.
        let v = Tensor::from_vec(&[3], vec![1.0f32, 2.0, 3.0]);
        let y = run1(&op, vec![Some(Value::Tensor(v.clone())), Some(Value::Tensor(idx))]);
        assert_eq!(y, Tensor::from_vec(&[1, 2], vec![3.0f32, 1.0]));
        let bad = Tensor::from_vec(&[1], vec![3i64]);
        let e = crate::ops::extra::run(&op, &[Some(Value::Tensor(v)), Some(Value::Tensor(bad))], &cx(1)).unwrap();
        assert!(e.is_err());
    }

    #[test]
    fn label_encoder_lists_tensors_and_defaults() {
        let op = ml(
            "LabelEncoder",
            vec![
                ("keys_strings", Attr::Strings(strs(&["Amy", "Sally", "Amy"]))),
                ("values_int64s", Attr::Ints(vec![5, 6, 7])),
            ],
        );
        let x = Tensor::from_vec(&[2, 2], strs(&["Dori", "Amy", "Sally", "x"]));
        // A repeated key takes the last value; unknown keys get -1.
        assert_eq!(run1(&op, vec![Some(Value::Tensor(x))]), Tensor::from_vec(&[2, 2], vec![-1i64, 7, 6, -1]));
        let op = ml(
            "LabelEncoder",
            vec![
                ("keys_tensor", Attr::Tensor(Tensor::from_vec(&[2], vec![f64::NAN, 0.0]))),
                ("values_tensor", Attr::Tensor(Tensor::from_vec(&[2], strs(&["nan", "zero"])))),
                ("default_tensor", Attr::Tensor(Tensor::from_vec(&[1], strs(&["?"])))),
            ],
        );
        let x = Tensor::from_vec(&[3], vec![-0.0f64, f64::NAN, 1.0]);
        assert_eq!(run1(&op, vec![Some(Value::Tensor(x))]), Tensor::from_vec(&[3], strs(&["zero", "nan", "?"])));
        let op =
            ml("LabelEncoder", vec![("keys_int64s", Attr::Ints(vec![1])), ("values_floats", Attr::Floats(vec![0.5]))]);
        let y = run1(&op, vec![Some(Value::Tensor(Tensor::from_vec(&[2], vec![1i64, 2])))]);
        assert_eq!(y.to_f64_vec().unwrap(), vec![0.5, -0.0]);
    }

    fn tree(aggregate: i64, post: i64) -> Op {
        let ints = |v: &[i64]| Attr::Ints(v.to_vec());
        ml(
            "TreeEnsemble",
            vec![
                ("nodes_featureids", ints(&[0, 1, 2, 1])),
                ("nodes_modes", Attr::Tensor(Tensor::from_vec(&[4], vec![0u8, 3, 6, 5]))),
                ("nodes_splits", Attr::Tensor(Tensor::from_vec(&[4], vec![0.75f32, 0.0, 0.0, 3.0]))),
                ("nodes_truenodeids", ints(&[1, 0, 1, 2])),
                ("nodes_falsenodeids", ints(&[2, 1, 3, 3])),
                ("nodes_trueleafs", ints(&[0, 1, 1, 1])),
                ("nodes_falseleafs", ints(&[0, 1, 0, 1])),
                ("nodes_missing_value_tracks_true", ints(&[0, 0, 1, 0])),
                ("membership_values", Attr::Tensor(Tensor::from_vec(&[3], vec![2.0f32, 5.0, f32::NAN]))),
                ("leaf_targetids", ints(&[0, 1, 0, 1])),
                ("leaf_weights", Attr::Tensor(Tensor::from_vec(&[4], vec![1.5f32, -2.0, 0.25, 4.0]))),
                ("tree_roots", ints(&[0, 3])),
                ("n_targets", Attr::Int(2)),
                ("aggregate_function", Attr::Int(aggregate)),
                ("post_transform", Attr::Int(post)),
            ],
        )
    }

    // Expected values from onnx.reference (which ignores post_transform;
    // the transformed values are computed by hand).
    #[test]
    fn tree_ensemble_modes_membership_missing_and_aggregates() {
        let x = || vec![Some(Value::Tensor(f32s(&[2, 3], vec![1.0, -2.0, f64::NAN, 0.5, 3.0, 2.0])))];
        assert_close(&run1(&tree(1, 0), x()), &[2, 2], &[0.25, -2.0, 1.5, 4.0], 0.0);
        assert_close(&run1(&tree(0, 0), x()), &[2, 2], &[0.125, -1.0, 0.75, 2.0], 0.0);
        assert_close(&run1(&tree(2, 0), x()), &[2, 2], &[0.25, -2.0, 1.5, 4.0], 0.0);
        let sm = [0.9046505, 0.0953495, 0.0758582, 0.9241418];
        assert_close(&run1(&tree(1, 1), x()), &[2, 2], &sm, 1e-6);
        let lg = [0.5621765, 0.1192029, 0.8175745, 0.9820138];
        assert_close(&run1(&tree(1, 2), x()), &[2, 2], &lg, 1e-6);
        // PROBIT is sqrt(2) * erfinv(2p - 1): the standard normal quantile.
        let mut p = vec![0.8413447, 0.5, 0.0227501];
        post_transform(4, &mut p, 3).unwrap();
        assert!(p.iter().zip([1.0, 0.0, -2.0]).all(|(a, b)| (a - b).abs() < 1e-5), "{p:?}");
        assert!((erf_inv(0.5) - 0.4769363).abs() < 1e-6 && (erf(0.4769363) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn tree_ensemble_rejects_bad_feature_ids() {
        let x = vec![Some(Value::Tensor(f32s(&[1, 1], vec![1.0])))];
        assert!(crate::ops::extra::run(&tree(1, 0), &x, &cx(1)).unwrap().is_err());
    }
}

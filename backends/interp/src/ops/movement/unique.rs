//! Unique: distinct elements (or slices along an axis), with the index of
//! each one's first occurrence, the inverse mapping and the counts, as
//! numpy.unique computes them.

use super::take_axes;
use crate::util::{normalize_axis, tensor_arg};
use sharc_ir::op::Unique;
use sharc_ir::{EvalError, Tensor, TensorData, Value};
use std::cmp::Ordering;

/// A totally ordered stand-in for one element: exact for every integer
/// type, IEEE order for floats with NaN last and equal to itself (numpy
/// collapses NaNs), and -0 equal to +0.
#[derive(Clone, Debug)]
enum Key {
    Int(i128),
    Float(f64),
    Str(String),
    Complex(f64, f64),
}

fn cmp_f64(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

impl Key {
    fn cmp(&self, other: &Key) -> Ordering {
        match (self, other) {
            (Key::Int(a), Key::Int(b)) => a.cmp(b),
            (Key::Float(a), Key::Float(b)) => cmp_f64(*a, *b),
            (Key::Str(a), Key::Str(b)) => a.cmp(b),
            (Key::Complex(ar, ai), Key::Complex(br, bi)) => cmp_f64(*ar, *br).then(cmp_f64(*ai, *bi)),
            // One tensor has one dtype, so keys are never mixed.
            _ => Ordering::Equal,
        }
    }
}

fn keys(t: &Tensor) -> Result<Vec<Key>, EvalError> {
    Ok(match t.data() {
        TensorData::String(a) => a.iter().map(|s| Key::Str(s.clone())).collect(),
        TensorData::Complex64(a) => a.iter().map(|[r, i]| Key::Complex(*r as f64, *i as f64)).collect(),
        TensorData::Complex128(a) => a.iter().map(|[r, i]| Key::Complex(*r, *i)).collect(),
        TensorData::U64(a) => a.iter().map(|&v| Key::Int(v as i128)).collect(),
        TensorData::Bool(a) => a.iter().map(|&v| Key::Int(v as i128)).collect(),
        TensorData::Narrow { dtype, .. } => {
            return Err(EvalError::unsupported(format!("Unique of element type {dtype} is not supported")));
        }
        _ => match t.to_i64_vec() {
            Some(v) => v.into_iter().map(|v| Key::Int(v as i128)).collect(),
            None => super::real_values(t, "X")?.into_iter().map(Key::Float).collect(),
        },
    })
}

fn cmp_rows(a: &[Key], b: &[Key]) -> Ordering {
    a.iter().zip(b).map(|(x, y)| x.cmp(y)).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
}

pub(super) fn unique(a: &Unique, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let x = tensor_arg(inputs, 0, "X")?;
    // Work on rows: the slices along the axis, or single elements.
    let (x, axis) = match a.axis {
        Some(axis) => (x.clone(), normalize_axis(axis, x.rank())?),
        None => (x.reshape(&[x.len()]).ok_or_else(|| EvalError::new("internal: cannot flatten"))?, 0),
    };
    let n = x.shape()[axis];
    let moved = if axis == 0 {
        x.clone()
    } else {
        let mut perm: Vec<usize> = (0..x.rank()).collect();
        perm.remove(axis);
        perm.insert(0, axis);
        super::shape::transpose_tensor(&x, &perm)
    };
    let flat = keys(&moved)?;
    let width = flat.len().checked_div(n).unwrap_or(0);
    let row = |i: usize| &flat[i * width..(i + 1) * width];

    let mut order: Vec<usize> = (0..n).collect();
    // A stable sort keeps equal rows in input order, so each group starts
    // with its first occurrence.
    order.sort_by(|&i, &j| cmp_rows(row(i), row(j)));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &i in &order {
        match groups.last_mut() {
            Some(g) if cmp_rows(row(g[0]), row(i)).is_eq() => g.push(i),
            _ => groups.push(vec![i]),
        }
    }
    if !a.sorted {
        groups.sort_by_key(|g| g[0]);
    }
    let mut inverse = vec![0i64; n];
    for (k, g) in groups.iter().enumerate() {
        for &i in g {
            inverse[i] = k as i64;
        }
    }
    let first: Vec<usize> = groups.iter().map(|g| g[0]).collect();
    let mut per_axis: Vec<Vec<Option<usize>>> = x.shape().iter().map(|&d| (0..d).map(Some).collect()).collect();
    per_axis[axis] = first.iter().map(|&i| Some(i)).collect();
    let y = take_axes(&x, &per_axis, None)?;
    let k = groups.len();
    let as_tensor = |v: Vec<i64>| Value::Tensor(Tensor::from_vec(&[v.len()], v));
    Ok(vec![
        Value::Tensor(y),
        as_tensor(first.iter().map(|&i| i as i64).collect()),
        as_tensor(inverse),
        Value::Tensor(Tensor::from_vec(&[k], groups.iter().map(|g| g.len() as i64).collect())),
    ])
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use sharc_ir::op::Unique;
    use sharc_ir::{Op, Tensor, Value};

    fn unique(x: Tensor, axis: Option<i64>, sorted: bool) -> Vec<Value> {
        run_n(Op::Unique(Unique { axis, sorted }), vec![Some(x)], 4).unwrap()
    }

    fn ints(v: &Value) -> Vec<i64> {
        iv(v.as_tensor().unwrap())
    }

    #[test]
    fn unsorted_flat_example() {
        // ONNX example 1.
        let out = unique(f(&[6], &[2., 1., 1., 3., 4., 3.]), None, false);
        assert_eq!(fv(out[0].as_tensor().unwrap()), vec![2., 1., 3., 4.]);
        assert_eq!(ints(&out[1]), vec![0, 1, 3, 4]);
        assert_eq!(ints(&out[2]), vec![0, 1, 1, 2, 3, 2]);
        assert_eq!(ints(&out[3]), vec![1, 2, 2, 1]);
    }

    #[test]
    fn sorted_flat_example() {
        // ONNX example 2.
        let out = unique(Tensor::from_vec(&[2, 2], vec![1i32, 3, 2, 3]), None, true);
        assert_eq!(out[0], Value::Tensor(Tensor::from_vec(&[3], vec![1i32, 2, 3])));
        assert_eq!(ints(&out[1]), vec![0, 2, 1]);
        assert_eq!(ints(&out[2]), vec![0, 2, 1, 2]);
        assert_eq!(ints(&out[3]), vec![1, 1, 2]);
    }

    #[test]
    fn sorted_along_axis() {
        // ONNX example 4: slices along axis 1.
        let x = f(&[2, 4, 2], &[1., 1., 0., 1., 2., 1., 0., 1., 1., 1., 0., 1., 2., 1., 0., 1.]);
        let out = unique(x, Some(1), true);
        let y = out[0].as_tensor().unwrap();
        assert_eq!(y.shape(), &[2, 3, 2]);
        assert_eq!(fv(y), vec![0., 1., 1., 1., 2., 1., 0., 1., 1., 1., 2., 1.]);
        assert_eq!(ints(&out[1]), vec![1, 0, 2]);
        assert_eq!(ints(&out[2]), vec![1, 0, 2, 0]);
        assert_eq!(ints(&out[3]), vec![2, 1, 1]);
    }

    #[test]
    fn unsorted_along_axis_keeps_whole_slices() {
        let x = f(&[2, 3], &[1., 0., 1., 2., 5., 2.]);
        let out = unique(x, Some(1), false);
        let y = out[0].as_tensor().unwrap();
        assert_eq!(y.shape(), &[2, 2]);
        assert_eq!(fv(y), vec![1., 0., 2., 5.]);
        assert_eq!(ints(&out[1]), vec![0, 1]);
        assert_eq!(ints(&out[2]), vec![0, 1, 0]);
        assert_eq!(ints(&out[3]), vec![2, 1]);
    }

    #[test]
    fn strings_and_large_integers_stay_exact() {
        let s = Tensor::from_vec(&[3], vec!["b".to_string(), "a".into(), "b".into()]);
        let out = unique(s, None, true);
        assert_eq!(out[0], Value::Tensor(Tensor::from_vec(&[2], vec!["a".to_string(), "b".into()])));
        // Distinct as i64 but equal once rounded to f64.
        let big = Tensor::from_vec(&[2], vec![i64::MAX, i64::MAX - 1]);
        let out = unique(big, None, true);
        assert_eq!(ints(&out[3]), vec![1, 1]);
    }
}

//! Small helpers shared by the op families: input access, axes, broadcasting.

use sharc_ir::{EvalError, Tensor, Value};

/// The tensor at input `i`, which must be present.
pub fn tensor_arg<'a>(inputs: &'a [Option<Value>], i: usize, what: &str) -> Result<&'a Tensor, EvalError> {
    match inputs.get(i) {
        Some(Some(Value::Tensor(t))) => Ok(t),
        Some(Some(v)) => Err(EvalError::new(format!("input {i} ({what}) must be a tensor, got {}", v.describe()))),
        _ => Err(EvalError::new(format!("input {i} ({what}) is required but missing"))),
    }
}

/// The tensor at input `i`, if present.
pub fn opt_tensor_arg<'a>(inputs: &'a [Option<Value>], i: usize, what: &str) -> Result<Option<&'a Tensor>, EvalError> {
    match inputs.get(i) {
        Some(Some(Value::Tensor(t))) => Ok(Some(t)),
        Some(Some(v)) => Err(EvalError::new(format!("input {i} ({what}) must be a tensor, got {}", v.describe()))),
        _ => Ok(None),
    }
}

/// An integer tensor's elements (axes, shapes, indices).
pub fn i64_values(t: &Tensor, what: &str) -> Result<Vec<i64>, EvalError> {
    t.to_i64_vec().ok_or_else(|| EvalError::new(format!("{what} must be an integer tensor, got {}", t.dtype())))
}

/// Resolves a possibly negative axis against a rank.
pub fn normalize_axis(axis: i64, rank: usize) -> Result<usize, EvalError> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(EvalError::new(format!("axis {axis} is out of range for rank {rank}")));
    }
    Ok(a as usize)
}

/// The numpy broadcast of two shapes.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>, EvalError> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let x = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let y = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(EvalError::new(format!("shapes {a:?} and {b:?} do not broadcast")));
            }
        };
    }
    Ok(out)
}

/// One output tensor.
pub fn single(t: Tensor) -> Result<Vec<Value>, EvalError> {
    Ok(vec![Value::Tensor(t)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_and_broadcast() {
        assert_eq!(normalize_axis(-1, 3).unwrap(), 2);
        assert!(normalize_axis(3, 3).is_err());
        assert_eq!(broadcast_shapes(&[2, 1, 3], &[4, 1]).unwrap(), vec![2, 4, 3]);
        assert!(broadcast_shapes(&[2], &[3]).is_err());
    }
}

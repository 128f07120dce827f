//! Ops that build new tensors from shapes and small parameters:
//! ConstantOfShape, Range, EyeLike, OneHot, and Dropout (which at inference
//! is a pass-through plus an all-true mask).

use super::{from_f64, real_values, scalar_f64, take, to_sizes};
use crate::ops::OpContext;
use crate::util::{i64_values, opt_tensor_arg, single, tensor_arg};
use half::{bf16, f16};
use sharc_ir::op::{ConstantOfShape, Dropout, EyeLike, OneHot, Range};
use sharc_ir::{DType, EvalError, Tensor, TensorData, Value};

type Outputs = Result<Vec<Value>, EvalError>;

/// The most elements a generated tensor may have; Range and OneHot take
/// their sizes from data, and a typo there should not exhaust memory.
const MAX_GENERATED: usize = 1 << 36;

fn check_generated(n: usize, what: &str) -> Result<(), EvalError> {
    if n > MAX_GENERATED {
        return Err(EvalError::new(format!("{what} would have {n} elements, more than the limit of {MAX_GENERATED}")));
    }
    Ok(())
}

pub(super) fn constant_of_shape(a: &ConstantOfShape, inputs: &[Option<Value>]) -> Outputs {
    let shape = to_sizes(&i64_values(tensor_arg(inputs, 0, "input")?, "shape")?, "shape")?;
    let value = a.value.clone().unwrap_or_else(|| Tensor::scalar(0.0f32));
    if value.len() != 1 {
        return Err(EvalError::new(format!("value must have one element, it has shape {:?}", value.shape())));
    }
    let n = super::checked_numel(&shape)?;
    check_generated(n, "ConstantOfShape's output")?;
    single(take(&value, &shape, &vec![0; n], None)?)
}

/// How many elements `start, start + delta, ...` has before reaching `limit`.
fn range_count_int(start: i64, limit: i64, delta: i64) -> Result<usize, EvalError> {
    if delta == 0 {
        return Err(EvalError::new("Range delta cannot be 0"));
    }
    let (diff, delta) = (limit as i128 - start as i128, delta as i128);
    let q = diff / delta;
    let n = if diff % delta != 0 && ((diff % delta > 0) == (delta > 0)) { q + 1 } else { q };
    let n = n.max(0) as usize;
    check_generated(n, "Range's output")?;
    Ok(n)
}

fn range_count_float(start: f64, limit: f64, delta: f64) -> Result<usize, EvalError> {
    if delta == 0.0 || !delta.is_finite() || !start.is_finite() || !limit.is_finite() {
        return Err(EvalError::new(format!("Range cannot count from {start} to {limit} by {delta}")));
    }
    let n = ((limit - start) / delta).ceil().max(0.0);
    if n > MAX_GENERATED as f64 {
        return Err(EvalError::new(format!("Range's output would have {n} elements")));
    }
    Ok(n as usize)
}

pub(super) fn range(a: &Range, inputs: &[Option<Value>]) -> Outputs {
    let start = tensor_arg(inputs, 0, "start")?;
    let limit = tensor_arg(inputs, 1, "limit")?;
    let delta = tensor_arg(inputs, 2, "delta")?;
    let dtype = start.dtype();
    if limit.dtype() != dtype || delta.dtype() != dtype {
        return Err(EvalError::new(format!(
            "start, limit and delta must share a type, got {}, {} and {}",
            dtype,
            limit.dtype(),
            delta.dtype()
        )));
    }
    if dtype.is_integer() {
        let s = super::scalar_i64(start, "start")?;
        let l = super::scalar_i64(limit, "limit")?;
        let d = super::scalar_i64(delta, "delta")?;
        let n = range_count_int(s, l, d)?;
        let values: Vec<i64> = (0..n as i64).map(|i| s.wrapping_add(i.wrapping_mul(d))).collect();
        return single(super::from_i64(dtype, &[n], values)?);
    }
    let (s, l, d) = (scalar_f64(start, "start")?, scalar_f64(limit, "limit")?, scalar_f64(delta, "delta")?);
    let n = range_count_float(s, l, d)?;
    let values: Vec<f64> = match dtype {
        DType::F16 | DType::BF16 if a.stash_type != 1 => {
            // Arithmetic in the narrow type itself, rounding after each step.
            let round =
                |x: f64| if dtype == DType::F16 { f16::from_f64(x).to_f64() } else { bf16::from_f64(x).to_f64() };
            (0..n).map(|i| round(s + round(round(i as f64) * d))).collect()
        }
        DType::F16 | DType::BF16 | DType::F32 => {
            let (s, d) = (s as f32, d as f32);
            (0..n).map(|i| (s + i as f32 * d) as f64).collect()
        }
        DType::F64 => (0..n).map(|i| s + i as f64 * d).collect(),
        other => return Err(EvalError::unsupported(format!("Range of type {other} is not supported"))),
    };
    single(from_f64(dtype, &[n], values)?)
}

pub(super) fn eye_like(a: &EyeLike, inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "input")?;
    let &[rows, cols] = x.shape() else {
        return Err(EvalError::new(format!("EyeLike needs a rank-2 input, got shape {:?}", x.shape())));
    };
    let dtype = a.dtype.unwrap_or(x.dtype());
    let mut v = vec![0.0; rows * cols];
    for i in 0..rows {
        let j = i as i64 + a.k;
        if j >= 0 && (j as usize) < cols {
            v[i * cols + j as usize] = 1.0;
        }
    }
    single(from_f64(dtype, &[rows, cols], v)?)
}

pub(super) fn one_hot(a: &OneHot, inputs: &[Option<Value>]) -> Outputs {
    let indices = tensor_arg(inputs, 0, "indices")?;
    let depth = scalar_f64(tensor_arg(inputs, 1, "depth")?, "depth")?;
    let values = tensor_arg(inputs, 2, "values")?;
    if values.len() != 2 {
        return Err(EvalError::new(format!("values must hold [off_value, on_value], got shape {:?}", values.shape())));
    }
    if depth.is_nan() || depth < 1.0 || depth > MAX_GENERATED as f64 {
        return Err(EvalError::new(format!("depth must be at least 1, got {depth}")));
    }
    let depth = depth as i64;
    let idx: Vec<i64> = match indices.to_i64_vec() {
        Some(v) => v,
        None => real_values(indices, "indices")?.into_iter().map(|v| v as i64).collect(),
    };
    let r = indices.rank();
    let axis = if a.axis < 0 { a.axis + r as i64 + 1 } else { a.axis };
    if axis < 0 || axis > r as i64 {
        return Err(EvalError::new(format!("axis {} is out of range for an output of rank {}", a.axis, r + 1)));
    }
    let axis = axis as usize;
    let mut shape = indices.shape().to_vec();
    shape.insert(axis, depth as usize);
    let n = super::checked_numel(&shape)?;
    check_generated(n, "OneHot's output")?;
    let outer: usize = indices.shape()[..axis].iter().product();
    let inner: usize = indices.shape()[axis..].iter().product();
    let mut src = vec![0usize; n];
    for o in 0..outer {
        for k in 0..inner {
            let v = idx[o * inner + k];
            let v = if v < 0 { v + depth } else { v };
            if (0..depth).contains(&v) {
                src[(o * depth as usize + v as usize) * inner + k] = 1;
            }
        }
    }
    single(take(values, &shape, &src, None)?)
}

/// The Mersenne Twister (MT19937) with numpy's legacy seeding and its
/// 53-bit doubles, so that a seeded Dropout draws the same mask as
/// `numpy.random.RandomState(seed).uniform(0, 1, shape)`, which is what
/// ONNX's reference implementation uses.
struct Mt19937 {
    state: [u32; 624],
    pos: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Mt19937 {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            state[i] = 1_812_433_253u32.wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30)).wrapping_add(i as u32);
        }
        Mt19937 { state, pos: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.pos >= 624 {
            for i in 0..624 {
                let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
                let mut v = self.state[(i + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    v ^= 0x9908_b0df;
                }
                self.state[i] = v;
            }
            self.pos = 0;
        }
        let mut y = self.state[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn next_f64(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }
}

/// Inference Dropout passes the data through with an all-true mask. In
/// training mode with a non-zero ratio, elements are dropped at random and the
/// survivors scaled by `1 / (1 - ratio)`. The mask comes from MT19937 seeded
/// with the `seed` attribute (0 when absent, so that runs are reproducible).
pub(super) fn dropout(a: &Dropout, inputs: &[Option<Value>], cx: &OpContext) -> Outputs {
    let x = tensor_arg(inputs, 0, "data")?;
    let ratio = match opt_tensor_arg(inputs, 1, "ratio")? {
        Some(t) => scalar_f64(t, "ratio")?,
        None => 0.5,
    };
    let training = match opt_tensor_arg(inputs, 2, "training_mode")? {
        Some(t) => match t.data() {
            TensorData::Bool(b) if b.len() == 1 => b.iter().all(|&v| v),
            _ => return Err(EvalError::new(format!("training_mode must be a bool scalar, got {}", t.dtype()))),
        },
        None => false,
    };
    let (out, mask) = if !training || ratio == 0.0 {
        (x.clone(), vec![true; x.len()])
    } else {
        if !(0.0..1.0).contains(&ratio) {
            return Err(EvalError::new(format!("ratio must be in [0, 1), got {ratio}")));
        }
        let mut rng = Mt19937::new(a.seed.unwrap_or(0) as u32);
        let mask: Vec<bool> = (0..x.len()).map(|_| rng.next_f64() >= ratio).collect();
        let scale = 1.0 / (1.0 - ratio);
        let v = real_values(x, "data")?;
        let v = v.iter().zip(&mask).map(|(&v, &m)| if m { v * scale } else { 0.0 }).collect();
        (from_f64(x.dtype(), x.shape(), v)?, mask)
    };
    let mut outputs = vec![Value::Tensor(out)];
    if cx.num_outputs > 1 {
        outputs.push(Value::Tensor(Tensor::from_vec(x.shape(), mask)));
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use half::f16;
    use sharc_ir::op::*;
    use sharc_ir::{DType, Op, Tensor, Value};

    #[test]
    fn constant_of_shape_defaults_and_values() {
        let out = run1(Op::ConstantOfShape(ConstantOfShape { value: None }), vec![Some(i(&[2], &[2, 3]))]).unwrap();
        assert_eq!(out, Tensor::from_vec(&[2, 3], vec![0.0f32; 6]));
        let v = Tensor::from_vec(&[1], vec![7i32]);
        let out = run1(Op::ConstantOfShape(ConstantOfShape { value: Some(v) }), vec![Some(i(&[1], &[0]))]).unwrap();
        assert_eq!(out, Tensor::from_vec::<i32>(&[0], vec![]));
        assert!(run1(Op::ConstantOfShape(ConstantOfShape { value: None }), vec![Some(i(&[1], &[-1]))]).is_err());
    }

    fn range(s: Tensor, l: Tensor, d: Tensor) -> Result<Tensor, sharc_ir::EvalError> {
        run1(Op::Range(Range { stash_type: 1 }), vec![Some(s), Some(l), Some(d)])
    }

    #[test]
    fn range_int_and_float() {
        let r = range(Tensor::scalar(10i32), Tensor::scalar(4i32), Tensor::scalar(-3i32)).unwrap();
        assert_eq!(r, Tensor::from_vec(&[2], vec![10i32, 7]));
        let r = range(Tensor::scalar(3i64), Tensor::scalar(9i64), Tensor::scalar(3i64)).unwrap();
        assert_eq!(r, Tensor::from_vec(&[2], vec![3i64, 6]));
        let r = range(Tensor::scalar(1.0f32), Tensor::scalar(5.0f32), Tensor::scalar(2.0f32)).unwrap();
        assert_eq!(r, Tensor::from_vec(&[2], vec![1.0f32, 3.0]));
        let r = range(Tensor::scalar(0.0f32), Tensor::scalar(1.0f32), Tensor::scalar(0.3f32)).unwrap();
        assert_eq!(r.len(), 4);
        let r = range(Tensor::scalar(5i64), Tensor::scalar(1i64), Tensor::scalar(1i64)).unwrap();
        assert_eq!(r.len(), 0);
        let h = |v: f32| Tensor::scalar(f16::from_f32(v));
        let r = range(h(1.0), h(2.0), h(0.25)).unwrap();
        assert_eq!(r.shape(), &[4]);
        assert_eq!(r.dtype(), DType::F16);
        assert!(range(Tensor::scalar(1i64), Tensor::scalar(2i64), Tensor::scalar(0i64)).is_err());
        assert!(range(Tensor::scalar(1i64), Tensor::scalar(2i32), Tensor::scalar(1i64)).is_err());
    }

    #[test]
    fn eye_like_offsets() {
        let x = Tensor::from_vec(&[2, 3], vec![0i32; 6]);
        let out = run1(Op::EyeLike(EyeLike { dtype: None, k: 1 }), vec![Some(x.clone())]).unwrap();
        assert_eq!(out, Tensor::from_vec(&[2, 3], vec![0i32, 1, 0, 0, 0, 1]));
        let out = run1(Op::EyeLike(EyeLike { dtype: Some(DType::F64), k: -1 }), vec![Some(x)]).unwrap();
        assert_eq!(out, Tensor::from_vec(&[2, 3], vec![0.0f64, 0., 0., 1., 0., 0.]));
    }

    #[test]
    fn one_hot_axis_and_negative_indices() {
        let idx = Tensor::from_vec(&[3], vec![0.0f32, -1.0, 7.0]);
        let vals = f(&[2], &[2., 5.]);
        let out = run1(
            Op::OneHot(OneHot { axis: -1 }),
            vec![Some(idx.clone()), Some(Tensor::scalar(3i64)), Some(vals.clone())],
        )
        .unwrap();
        assert_eq!(out.shape(), &[3, 3]);
        assert_eq!(fv(&out), vec![5., 2., 2., 2., 2., 5., 2., 2., 2.]);
        let out =
            run1(Op::OneHot(OneHot { axis: 0 }), vec![Some(idx), Some(Tensor::scalar(3i64)), Some(vals)]).unwrap();
        assert_eq!(out.shape(), &[3, 3]);
        assert_eq!(fv(&out), vec![5., 2., 2., 2., 2., 2., 2., 5., 2.]);
    }

    #[test]
    fn mersenne_twister_matches_numpy() {
        // numpy.random.RandomState(0).uniform(0, 1, 3) and RandomState(42).random_sample().
        let mut r = super::Mt19937::new(0);
        let got: Vec<f64> = (0..3).map(|_| r.next_f64()).collect();
        assert_eq!(got, vec![0.5488135039273248, 0.7151893663724195, 0.6027633760716439]);
        assert_eq!(super::Mt19937::new(42).next_f64(), 0.3745401188473625);
    }

    #[test]
    fn dropout_inference_and_training() {
        let x = iota(&[4]);
        let out = run_n(Op::Dropout(Dropout { seed: None }), vec![Some(x.clone())], 2).unwrap();
        assert_eq!(out[0], Value::Tensor(x.clone()));
        assert_eq!(out[1], Value::Tensor(Tensor::from_vec(&[4], vec![true; 4])));
        let train = Tensor::scalar(true);
        let out = run_n(
            Op::Dropout(Dropout { seed: Some(3) }),
            vec![Some(x.clone()), Some(Tensor::scalar(0.0f32)), Some(train.clone())],
            2,
        )
        .unwrap();
        assert_eq!(out[0], Value::Tensor(x.clone()));
        let big = iota(&[1000]);
        let out = run_n(
            Op::Dropout(Dropout { seed: Some(3) }),
            vec![Some(big.clone()), Some(Tensor::scalar(0.75f32)), Some(train.clone())],
            2,
        )
        .unwrap();
        let y = fv(out[0].as_tensor().unwrap());
        let mask: Vec<bool> = out[1].as_tensor().unwrap().as_array::<bool>().unwrap().iter().copied().collect();
        let kept = mask.iter().filter(|&&m| m).count();
        assert!((150..350).contains(&kept), "kept {kept} of 1000 at ratio 0.75");
        for (k, (&v, &m)) in y.iter().zip(&mask).enumerate() {
            assert_eq!(v, if m { k as f32 * 4.0 } else { 0.0 });
        }
        let again = run_n(
            Op::Dropout(Dropout { seed: Some(3) }),
            vec![Some(big), Some(Tensor::scalar(0.75f32)), Some(train.clone())],
            2,
        )
        .unwrap();
        assert_eq!(again, out, "a seeded dropout is reproducible");
        assert!(
            run_n(Op::Dropout(Dropout { seed: None }), vec![Some(x), Some(Tensor::scalar(1.0f32)), Some(train)], 1)
                .is_err()
        );
    }
}

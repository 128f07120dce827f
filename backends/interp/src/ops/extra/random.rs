//! Random generators: `RandomUniform(Like)`, `RandomNormal(Like)`,
//! `Bernoulli` and `Multinomial`.
//!
//! ONNX leaves the generator unspecified, so the values cannot match any
//! other implementation; only their shape, type and distribution are
//! defined. The generator here is xoshiro256++ whose state is filled by
//! SplitMix64 from a 64-bit seed. With a `seed` attribute the seed is the
//! bit pattern of that `f32`, so a node with a seed gives the same values on
//! every run (and on every platform). Without one each call draws a fresh
//! seed from the standard library's per-process random hash keys and a call
//! counter, so repeated runs differ as ONNX intends.

use super::common::{Floats, checked_len, float_tensor, int_tensor, numeric_tensor, outputs, to_usize};
use crate::util::tensor_arg;
use sharc_ir::op::{Bernoulli, Multinomial, RandomNormal, RandomNormalLike, RandomUniform, RandomUniformLike};
use sharc_ir::{DType, EvalError, Value};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// xoshiro256++ (Blackman and Vigna), seeded through SplitMix64.
pub(crate) struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator from a 64-bit seed.
    pub(crate) fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng { s: [next(), next(), next(), next()] }
    }

    /// A generator for an op's optional `seed` attribute (see the module docs).
    pub(crate) fn for_seed(seed: Option<f32>) -> Rng {
        static CALLS: AtomicU64 = AtomicU64::new(0);
        match seed {
            Some(s) => Rng::new(s.to_bits() as u64),
            None => {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
                Rng::new(h.finish())
            }
        }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal, by the Box-Muller transform.
    pub(crate) fn normal(&mut self) -> f64 {
        // 1 - u is in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

fn shape_attr(shape: &[i64]) -> Result<Vec<usize>, EvalError> {
    shape.iter().map(|&d| to_usize(d, "every dim of shape")).collect()
}

/// The dtype of a `*Like` op's output: the attribute, else the input's.
fn like_dtype(attr: Option<DType>, input: DType) -> DType {
    attr.unwrap_or(input)
}

/// Runs `RandomUniform` / `RandomUniformLike`: `low + (high - low) * U[0, 1)`.
fn uniform(dtype: DType, shape: &[usize], low: f32, high: f32, seed: Option<f32>) -> Result<Vec<Value>, EvalError> {
    if high < low {
        return Err(EvalError::new(format!("high ({high}) must not be below low ({low})")));
    }
    let mut rng = Rng::for_seed(seed);
    let n = checked_len(shape)?;
    let (low, span) = (low as f64, high as f64 - low as f64);
    let data = (0..n).map(|_| low + span * rng.uniform()).collect();
    outputs(vec![float_tensor(dtype, shape, data)?])
}

/// Runs `RandomNormal` / `RandomNormalLike`: `mean + scale * N(0, 1)`.
fn normal(dtype: DType, shape: &[usize], mean: f32, scale: f32, seed: Option<f32>) -> Result<Vec<Value>, EvalError> {
    let mut rng = Rng::for_seed(seed);
    let n = checked_len(shape)?;
    let data = (0..n).map(|_| mean as f64 + scale as f64 * rng.normal()).collect();
    outputs(vec![float_tensor(dtype, shape, data)?])
}

pub(crate) fn random_uniform(a: &RandomUniform) -> Result<Vec<Value>, EvalError> {
    uniform(a.dtype, &shape_attr(&a.shape)?, a.low, a.high, a.seed)
}

pub(crate) fn random_normal(a: &RandomNormal) -> Result<Vec<Value>, EvalError> {
    normal(a.dtype, &shape_attr(&a.shape)?, a.mean, a.scale, a.seed)
}

pub(crate) fn random_uniform_like(a: &RandomUniformLike, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let x = tensor_arg(inputs, 0, "input")?;
    uniform(like_dtype(a.dtype, x.dtype()), x.shape(), a.low, a.high, a.seed)
}

pub(crate) fn random_normal_like(a: &RandomNormalLike, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let x = tensor_arg(inputs, 0, "input")?;
    normal(like_dtype(a.dtype, x.dtype()), x.shape(), a.mean, a.scale, a.seed)
}

/// Runs `Bernoulli`: 1 with the input's probability, else 0.
pub(crate) fn bernoulli(a: &Bernoulli, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let t = tensor_arg(inputs, 0, "input")?;
    let p = Floats::read(t, "input")?;
    if let Some(bad) = p.data.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        return Err(EvalError::new(format!("probability {bad} is outside [0, 1]")));
    }
    let mut rng = Rng::for_seed(a.seed);
    let data = p.data.iter().map(|&q| if rng.uniform() < q { 1.0 } else { 0.0 }).collect();
    outputs(vec![numeric_tensor(like_dtype(a.dtype, t.dtype()), &p.shape, data)?])
}

/// Runs `Multinomial`: `sample_size` class indices per batch row, drawn
/// with probabilities `softmax(row)` (the input holds unnormalised log
/// probabilities).
pub(crate) fn multinomial(a: &Multinomial, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let x = Floats::read(tensor_arg(inputs, 0, "input")?, "input")?;
    let [batch, classes] = x.shape[..] else {
        return Err(EvalError::new(format!("input must be 2-D [batch, classes], got {:?}", x.shape)));
    };
    if !matches!(a.dtype, DType::I32 | DType::I64) {
        return Err(EvalError::new(format!("dtype must be int32 or int64, got {}", a.dtype)));
    }
    let samples = to_usize(a.sample_size, "sample_size")?;
    if classes == 0 && samples > 0 {
        return Err(EvalError::new("cannot sample from zero classes"));
    }
    let mut rng = Rng::for_seed(a.seed);
    let mut out = Vec::with_capacity(batch * samples);
    let mut cdf = vec![0.0; classes];
    for b in 0..batch {
        let row = &x.data[b * classes..(b + 1) * classes];
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut acc = 0.0;
        for (c, &v) in cdf.iter_mut().zip(row) {
            acc += (v - m).exp();
            *c = acc;
        }
        if !(acc > 0.0 && acc.is_finite()) {
            return Err(EvalError::new(format!("row {b} does not define a distribution (its weights sum to {acc})")));
        }
        for _ in 0..samples {
            let u = rng.uniform() * acc;
            let k = cdf.iter().position(|&c| u < c).unwrap_or(classes - 1);
            out.push(k as i64);
        }
    }
    outputs(vec![int_tensor(a.dtype, &[batch, samples], out)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::extra::run;
    use crate::ops::extra::testutil::{cx, f32s, run1};
    use sharc_ir::{Op, Tensor};

    #[test]
    fn generator_is_deterministic_and_spread() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<f64> = (0..1000).map(|_| a.uniform()).collect();
        assert!(xs.iter().zip((0..1000).map(|_| b.uniform())).all(|(x, y)| *x == y));
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
        let mut c = Rng::new(8);
        assert_ne!(c.uniform(), xs[0]);
        let zs: Vec<f64> = (0..4000).map(|_| c.normal()).collect();
        let m = zs.iter().sum::<f64>() / 4000.0;
        let var = zs.iter().map(|z| (z - m) * (z - m)).sum::<f64>() / 4000.0;
        assert!(m.abs() < 0.06 && (var - 1.0).abs() < 0.1, "{m} {var}");
    }

    #[test]
    fn uniform_and_normal_shapes_types_ranges() {
        let op = Op::RandomUniform(RandomUniform {
            dtype: DType::F64,
            high: 5.0,
            low: 2.0,
            seed: Some(3.0),
            shape: vec![2, 3],
        });
        let y = run1(&op, vec![]);
        assert_eq!((y.dtype(), y.shape()), (DType::F64, &[2usize, 3][..]));
        assert!(y.to_f64_vec().unwrap().iter().all(|v| (2.0..5.0).contains(v)));
        // A seed makes the op repeatable.
        assert_eq!(run1(&op, vec![]), y);
        let like = Op::RandomNormalLike(RandomNormalLike { dtype: None, mean: 10.0, scale: 0.01, seed: None });
        let y = run1(&like, vec![Some(Value::Tensor(f32s(&[4], vec![0.0; 4])))]);
        assert_eq!((y.dtype(), y.shape()), (DType::F32, &[4usize][..]));
        assert!(y.to_f64_vec().unwrap().iter().all(|v| (v - 10.0).abs() < 0.1));
        // Integer outputs are not allowed.
        let bad = Op::RandomUniformLike(RandomUniformLike { dtype: None, high: 1.0, low: 0.0, seed: None });
        let ints = Some(Value::Tensor(Tensor::from_vec(&[2], vec![1i64, 2])));
        assert!(run(&bad, &[ints], &cx(1)).unwrap().is_err());
    }

    #[test]
    fn bernoulli_extremes_and_dtype() {
        let op = Op::Bernoulli(Bernoulli { dtype: Some(DType::Bool), seed: None });
        let y = run1(&op, vec![Some(Value::Tensor(f32s(&[4], vec![0.0, 1.0, 1.0, 0.0])))]);
        assert_eq!(y, Tensor::from_vec(&[4], vec![false, true, true, false]));
        assert!(run(&op, &[Some(Value::Tensor(f32s(&[1], vec![1.5])))], &cx(1)).unwrap().is_err());
    }

    #[test]
    fn multinomial_picks_likely_classes() {
        let op = Op::Multinomial(Multinomial { dtype: DType::I64, sample_size: 50, seed: Some(1.0) });
        // Row 0 puts (almost) all mass on class 2, row 1 on class 0.
        let x = f32s(&[2, 3], vec![-50.0, -50.0, 0.0, 0.0, -60.0, -60.0]);
        let y = run1(&op, vec![Some(Value::Tensor(x))]);
        assert_eq!(y.shape(), &[2, 50]);
        let v = y.to_i64_vec().unwrap();
        assert!(v[..50].iter().all(|&k| k == 2) && v[50..].iter().all(|&k| k == 0));
        let even = f32s(&[1, 2], vec![0.0, 0.0]);
        let y = run1(&op, vec![Some(Value::Tensor(even))]).to_i64_vec().unwrap();
        let ones = y.iter().filter(|&&k| k == 1).count();
        assert!((10..=40).contains(&ones), "{ones}");
    }
}

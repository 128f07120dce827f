//! Small tensors whose elements are known at compile time, symbolically.
//!
//! Real exports compute shapes at run time: `Shape → Gather → Unsqueeze →
//! Concat → Reshape`. To give that `Reshape` an exact output type, inference
//! tracks the *values* of such small tensors, each integer element an
//! [`Expr`] (`[batch, seq, 12, 32]`). Float elements are tracked as numbers
//! only (they feed `Resize` scales and `ConstantOfShape` fills, never dims).
//!
//! Only tensors of at most [`MAX_TRACKED`] elements are tracked; anything
//! larger is data, not shape arithmetic.

use super::symbolic::Expr;
use crate::{DType, Tensor};
use half::{bf16, f16};

/// The largest number of elements a tracked tensor may have.
pub const MAX_TRACKED: usize = 1024;

/// The elements of a [`SymTensor`].
#[derive(Clone, Debug, PartialEq)]
pub enum SymData {
    /// Integer or boolean elements (booleans as 0 and 1), possibly symbolic.
    Int(Vec<Expr>),
    /// Floating-point elements, already rounded to the tensor's dtype.
    Float(Vec<f64>),
}

/// A small tensor whose elements are known (symbolically for integers).
#[derive(Clone, Debug, PartialEq)]
pub struct SymTensor {
    /// Element type of the run-time tensor.
    pub dtype: DType,
    /// Its shape (always concrete: a tracked tensor has a known size).
    pub shape: Vec<usize>,
    /// The elements in row-major order.
    pub data: SymData,
}

/// The number of elements of a shape, or `None` on overflow.
pub fn checked_product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// True for dtypes whose elements are tracked as integers.
fn int_like(d: DType) -> bool {
    d.is_integer() && !d.is_narrow() || d == DType::Bool
}

/// True for dtypes whose elements are tracked as floats.
fn float_like(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F64)
}

/// Rounds a float to what a tensor of `dtype` stores.
fn round_to(d: DType, v: f64) -> f64 {
    match d {
        DType::F32 => v as f32 as f64,
        DType::F16 => f16::from_f64(v).to_f64(),
        DType::BF16 => bf16::from_f64(v).to_f64(),
        _ => v,
    }
}

/// Wraps an integer the way storing it in `dtype` does (two's complement).
fn wrap_int(d: DType, v: i64) -> i64 {
    match d {
        DType::I8 => v as i8 as i64,
        DType::I16 => v as i16 as i64,
        DType::I32 => v as i32 as i64,
        DType::U8 => v as u8 as i64,
        DType::U16 => v as u16 as i64,
        DType::U32 => v as u32 as i64,
        DType::Bool => (v != 0) as i64,
        _ => v,
    }
}

/// The range of values a (non-64-bit) integer dtype holds.
fn int_bounds(d: DType) -> Option<(i64, i64)> {
    Some(match d {
        DType::I8 => (i8::MIN as i64, i8::MAX as i64),
        DType::I16 => (i16::MIN as i64, i16::MAX as i64),
        DType::I32 => (i32::MIN as i64, i32::MAX as i64),
        DType::U8 => (0, u8::MAX as i64),
        DType::U16 => (0, u16::MAX as i64),
        DType::U32 => (0, u32::MAX as i64),
        _ => return None,
    })
}

impl SymTensor {
    /// An integer tensor from expressions.
    pub fn ints(dtype: DType, shape: Vec<usize>, elems: Vec<Expr>) -> SymTensor {
        SymTensor { dtype, shape, data: SymData::Int(elems) }
    }

    /// A 1-D `i64` tensor, the form shape tensors take.
    pub fn shape_vector(elems: Vec<Expr>) -> SymTensor {
        SymTensor::ints(DType::I64, vec![elems.len()], elems)
    }

    /// A scalar integer.
    pub fn scalar(dtype: DType, e: Expr) -> SymTensor {
        SymTensor::ints(dtype, vec![], vec![e])
    }

    /// Tracks a literal tensor, if it is small and of a tracked type.
    pub fn from_tensor(t: &Tensor) -> Option<SymTensor> {
        if t.len() > MAX_TRACKED {
            return None;
        }
        let dtype = t.dtype();
        let data = if int_like(dtype) {
            if dtype == DType::Bool {
                SymData::Int(t.to_f64_vec()?.into_iter().map(|v| Expr::int(v as i64)).collect())
            } else if dtype == DType::U64 {
                // u64 values above i64::MAX cannot be held; leave them untracked.
                let a = t.as_array::<u64>()?;
                let mut v = Vec::with_capacity(a.len());
                for x in a.iter() {
                    v.push(Expr::int(i64::try_from(*x).ok()?));
                }
                SymData::Int(v)
            } else {
                SymData::Int(t.to_i64_vec()?.into_iter().map(Expr::int).collect())
            }
        } else if float_like(dtype) {
            SymData::Float(t.to_f64_vec()?)
        } else {
            return None;
        };
        Some(SymTensor { dtype, shape: t.shape().to_vec(), data })
    }

    /// Converts a fully constant tensor back to a literal.
    pub fn to_tensor(&self) -> Option<Tensor> {
        match &self.data {
            SymData::Int(_) => {
                let v = self.as_ints()?;
                Some(match self.dtype {
                    DType::I64 => Tensor::try_from_vec(&self.shape, v)?,
                    DType::I32 => Tensor::try_from_vec(&self.shape, v.iter().map(|&x| x as i32).collect())?,
                    DType::I16 => Tensor::try_from_vec(&self.shape, v.iter().map(|&x| x as i16).collect())?,
                    DType::I8 => Tensor::try_from_vec(&self.shape, v.iter().map(|&x| x as i8).collect())?,
                    DType::U8 => Tensor::try_from_vec(&self.shape, v.iter().map(|&x| x as u8).collect())?,
                    DType::U16 => Tensor::try_from_vec(&self.shape, v.iter().map(|&x| x as u16).collect())?,
                    DType::U32 => Tensor::try_from_vec(&self.shape, v.iter().map(|&x| x as u32).collect())?,
                    DType::U64 => Tensor::try_from_vec(&self.shape, v.iter().map(|&x| x as u64).collect())?,
                    DType::Bool => Tensor::try_from_vec(&self.shape, v.iter().map(|&x| x != 0).collect())?,
                    _ => return None,
                })
            }
            SymData::Float(v) => match self.dtype {
                DType::F32 => Tensor::try_from_vec(&self.shape, v.iter().map(|&x| x as f32).collect()),
                DType::F64 => Tensor::try_from_vec(&self.shape, v.clone()),
                _ => None,
            },
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            SymData::Int(v) => v.len(),
            SymData::Float(v) => v.len(),
        }
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The integer elements as expressions.
    pub fn exprs(&self) -> Option<&[Expr]> {
        match &self.data {
            SymData::Int(v) => Some(v),
            SymData::Float(_) => None,
        }
    }

    /// The integer elements, if all are constants.
    pub fn as_ints(&self) -> Option<Vec<i64>> {
        self.exprs()?.iter().map(Expr::as_int).collect()
    }

    /// The elements as numbers, if all are constants.
    pub fn as_f64s(&self) -> Option<Vec<f64>> {
        match &self.data {
            SymData::Float(v) => Some(v.clone()),
            SymData::Int(_) => Some(self.as_ints()?.into_iter().map(|v| v as f64).collect()),
        }
    }

    /// The same elements with another shape of equal size.
    pub fn reshaped(&self, shape: Vec<usize>) -> Option<SymTensor> {
        (shape.iter().product::<usize>() == self.len()).then(|| SymTensor { shape, ..self.clone() })
    }

    /// Picks elements by flat index.
    pub fn select(&self, shape: Vec<usize>, idx: &[usize]) -> Option<SymTensor> {
        let data = match &self.data {
            SymData::Int(v) => SymData::Int(idx.iter().map(|&i| v.get(i).cloned()).collect::<Option<_>>()?),
            SymData::Float(v) => SymData::Float(idx.iter().map(|&i| v.get(i).copied()).collect::<Option<_>>()?),
        };
        Some(SymTensor { dtype: self.dtype, shape, data })
    }

    /// Converts to another dtype as `Cast` does. `None` when the result is
    /// not known exactly (a symbolic element cast to a float, say).
    ///
    /// A symbolic integer cast to a narrower integer type keeps its
    /// expression: the model itself relies on the size fitting that type.
    pub fn cast(&self, to: DType) -> Option<SymTensor> {
        let data = match (&self.data, int_like(to), float_like(to)) {
            (SymData::Int(v), true, _) => SymData::Int(
                v.iter()
                    .map(|e| match e.as_int() {
                        Some(c) => Some(Expr::int(wrap_int(to, c))),
                        None if to == DType::Bool => e.is_positive().then(|| Expr::int(1)),
                        None => match int_bounds(to) {
                            Some((lo, _)) if lo == 0 && !e.is_nonneg() => None,
                            _ => Some(e.clone()),
                        },
                    })
                    .collect::<Option<_>>()?,
            ),
            (SymData::Int(_), _, true) => {
                SymData::Float(self.as_ints()?.into_iter().map(|c| round_to(to, c as f64)).collect())
            }
            (SymData::Float(v), true, _) => SymData::Int(
                v.iter()
                    .map(|&x| {
                        if to == DType::Bool {
                            return Some(Expr::int((x != 0.0) as i64));
                        }
                        if !x.is_finite() {
                            return None;
                        }
                        let t = x.trunc();
                        if t < i64::MIN as f64 || t >= i64::MAX as f64 {
                            return None;
                        }
                        let i = t as i64;
                        match int_bounds(to) {
                            Some((lo, hi)) if i < lo || i > hi => None,
                            _ => Some(Expr::int(i)),
                        }
                    })
                    .collect::<Option<_>>()?,
            ),
            (SymData::Float(v), _, true) => SymData::Float(v.iter().map(|&x| round_to(to, x)).collect()),
            _ => return None,
        };
        Some(SymTensor { dtype: to, shape: self.shape.clone(), data })
    }
}

/// Builds a tensor of `out_shape` whose element at each multi-index is the
/// element of `src` at the multi-index `f` writes into its second argument.
/// `None` when `f` fails, an index is out of range, or the result is too big.
pub fn remap(
    src: &SymTensor,
    out_shape: Vec<usize>,
    f: impl Fn(&[usize], &mut [usize]) -> Option<()>,
) -> Option<SymTensor> {
    let n: usize = out_shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    if n > MAX_TRACKED {
        return None;
    }
    let mut strides = vec![1usize; src.shape.len()];
    for i in (0..src.shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * src.shape[i + 1];
    }
    let mut pos = vec![0usize; out_shape.len()];
    let mut at = vec![0usize; src.shape.len()];
    let mut idx = Vec::with_capacity(n);
    for _ in 0..n {
        f(&pos, &mut at)?;
        let mut flat = 0;
        for (k, &a) in at.iter().enumerate() {
            if a >= src.shape[k] {
                return None;
            }
            flat += a * strides[k];
        }
        idx.push(flat);
        for d in (0..out_shape.len()).rev() {
            pos[d] += 1;
            if pos[d] < out_shape[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    src.select(out_shape, &idx)
}

/// The numpy broadcast of two concrete shapes.
pub fn broadcast_concrete(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for (i, o) in out.iter_mut().enumerate() {
        let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
        let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
        *o = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

/// For each element of `out` (row-major), the flat index of the element of
/// a tensor of shape `src` that broadcasting reads.
pub fn broadcast_index(src: &[usize], out: &[usize]) -> Vec<usize> {
    let n: usize = checked_product(out).unwrap_or(0);
    let offset = out.len() - src.len();
    let mut strides = vec![0usize; src.len()];
    let mut acc = 1;
    for i in (0..src.len()).rev() {
        strides[i] = if src[i] == 1 { 0 } else { acc };
        acc *= src[i];
    }
    let mut idx = Vec::with_capacity(n);
    let mut pos = vec![0usize; out.len()];
    for _ in 0..n {
        let mut flat = 0;
        for (k, s) in strides.iter().enumerate() {
            flat += pos[k + offset] * s;
        }
        idx.push(flat);
        for d in (0..out.len()).rev() {
            pos[d] += 1;
            if pos[d] < out[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    idx
}

/// Applies `f` elementwise to the broadcast of several tracked tensors.
/// `None` when any element is unknown or the result would be too large.
pub fn broadcast_map<T>(
    ins: &[&SymTensor],
    dtype: DType,
    f: impl Fn(&[&Expr]) -> Option<T>,
    wrap: impl FnOnce(Vec<T>) -> SymData,
) -> Option<SymTensor> {
    let mut shape: Vec<usize> = Vec::new();
    for t in ins {
        shape = broadcast_concrete(&shape, &t.shape)?;
    }
    let n = checked_product(&shape)?;
    if n > MAX_TRACKED {
        return None;
    }
    let maps: Vec<Vec<usize>> = ins.iter().map(|t| broadcast_index(&t.shape, &shape)).collect();
    let elems: Vec<&[Expr]> = ins.iter().map(|t| t.exprs()).collect::<Option<_>>()?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let args: Vec<&Expr> = elems.iter().zip(&maps).map(|(e, m)| &e[m[i]]).collect();
        out.push(f(&args)?);
    }
    Some(SymTensor { dtype, shape, data: wrap(out) })
}

/// Like [`broadcast_map`] for float elements.
pub fn broadcast_map_f64(ins: &[&SymTensor], dtype: DType, f: impl Fn(&[f64]) -> Option<f64>) -> Option<SymTensor> {
    let mut shape: Vec<usize> = Vec::new();
    for t in ins {
        shape = broadcast_concrete(&shape, &t.shape)?;
    }
    let n = checked_product(&shape)?;
    if n > MAX_TRACKED {
        return None;
    }
    let maps: Vec<Vec<usize>> = ins.iter().map(|t| broadcast_index(&t.shape, &shape)).collect();
    let vals: Vec<Vec<f64>> = ins.iter().map(|t| t.as_f64s()).collect::<Option<_>>()?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let args: Vec<f64> = vals.iter().zip(&maps).map(|(v, m)| v[m[i]]).collect();
        out.push(round_to(dtype, f(&args)?));
    }
    Some(SymTensor { dtype, shape, data: SymData::Float(out) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_round_trip() {
        let t = Tensor::from_vec(&[2, 2], vec![1i64, -2, 3, 4]);
        let s = SymTensor::from_tensor(&t).unwrap();
        assert_eq!(s.as_ints(), Some(vec![1, -2, 3, 4]));
        assert_eq!(s.to_tensor().unwrap(), t);
        let f = SymTensor::from_tensor(&Tensor::from_vec(&[1], vec![0.5f32])).unwrap();
        assert_eq!(f.as_f64s(), Some(vec![0.5]));
    }

    #[test]
    fn casts() {
        let s = SymTensor::shape_vector(vec![Expr::sym("batch"), Expr::int(300)]);
        let i32s = s.cast(DType::I32).unwrap();
        assert_eq!(i32s.exprs().unwrap()[0], Expr::sym("batch"));
        let u8s = SymTensor::shape_vector(vec![Expr::int(300)]).cast(DType::U8).unwrap();
        assert_eq!(u8s.as_ints(), Some(vec![44]));
        assert!(s.cast(DType::F32).is_none());
        let f = SymTensor::shape_vector(vec![Expr::int(3)]).cast(DType::F32).unwrap();
        assert_eq!(f.as_f64s(), Some(vec![3.0]));
        let back = SymTensor { dtype: DType::F32, shape: vec![2], data: SymData::Float(vec![-2.7, 2.7]) };
        assert_eq!(back.cast(DType::I64).unwrap().as_ints(), Some(vec![-2, 2]));
        assert_eq!(back.cast(DType::Bool).unwrap().as_ints(), Some(vec![1, 1]));
    }

    #[test]
    fn broadcast_indexing() {
        assert_eq!(broadcast_concrete(&[2, 1], &[3]), Some(vec![2, 3]));
        assert_eq!(broadcast_concrete(&[2], &[3]), None);
        assert_eq!(broadcast_index(&[2, 1], &[2, 3]), vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(broadcast_index(&[3], &[2, 3]), vec![0, 1, 2, 0, 1, 2]);
        let a = SymTensor::shape_vector(vec![Expr::sym("n"), Expr::int(2)]);
        let b = SymTensor::scalar(DType::I64, Expr::int(3));
        let m = broadcast_map(&[&a, &b], DType::I64, |x| x[0].mul(x[1]), SymData::Int).unwrap();
        assert_eq!(m.exprs().unwrap(), &[Expr::sym("n").scale(3).unwrap(), Expr::int(6)]);
    }
}

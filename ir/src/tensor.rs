//! Dense tensors with an element type chosen at run time.
//!
//! [`Tensor`] is what flows between ops in the interpreter, what a constant
//! holds, and what a weight decodes to. Its data is an `ndarray` array behind
//! an `Arc`, so cloning a tensor is cheap and a weight read once can be handed
//! to every consumer without copying.
//!
//! The narrow formats (8-, 4- and 2-bit floats and integers) keep one code per
//! element in a byte; ops convert them through `f32`.

use crate::DType;
use half::{bf16, f16};
use ndarray::{ArcArray, ArrayD, IxDyn};
use std::fmt;

/// A shared n-dimensional array.
pub type Array<T> = ArcArray<T, IxDyn>;

/// The typed storage of a [`Tensor`].
#[derive(Clone, PartialEq)]
pub enum TensorData {
    F32(Array<f32>),
    F64(Array<f64>),
    F16(Array<f16>),
    BF16(Array<bf16>),
    I8(Array<i8>),
    I16(Array<i16>),
    I32(Array<i32>),
    I64(Array<i64>),
    U8(Array<u8>),
    U16(Array<u16>),
    U32(Array<u32>),
    U64(Array<u64>),
    Bool(Array<bool>),
    String(Array<String>),
    /// Complex numbers as (re, im) pairs.
    Complex64(Array<[f32; 2]>),
    /// Complex numbers as (re, im) pairs.
    Complex128(Array<[f64; 2]>),
    /// A narrow format ([`DType::is_narrow`]): one code per element, unpacked.
    Narrow {
        dtype: DType,
        codes: Array<u8>,
    },
}

/// Applies an expression to the array inside a [`TensorData`], whatever its
/// element type. The narrow formats bind their code array.
#[macro_export]
macro_rules! dispatch_array {
    ($data:expr, $a:ident => $body:expr) => {
        match $data {
            $crate::TensorData::F32($a) => $body,
            $crate::TensorData::F64($a) => $body,
            $crate::TensorData::F16($a) => $body,
            $crate::TensorData::BF16($a) => $body,
            $crate::TensorData::I8($a) => $body,
            $crate::TensorData::I16($a) => $body,
            $crate::TensorData::I32($a) => $body,
            $crate::TensorData::I64($a) => $body,
            $crate::TensorData::U8($a) => $body,
            $crate::TensorData::U16($a) => $body,
            $crate::TensorData::U32($a) => $body,
            $crate::TensorData::U64($a) => $body,
            $crate::TensorData::Bool($a) => $body,
            $crate::TensorData::String($a) => $body,
            $crate::TensorData::Complex64($a) => $body,
            $crate::TensorData::Complex128($a) => $body,
            $crate::TensorData::Narrow { codes: $a, .. } => $body,
        }
    };
}

/// Rebuilds a [`TensorData`] of the same variant from an expression over its
/// array (for shape-only operations that keep the element type).
#[macro_export]
macro_rules! map_array {
    ($data:expr, $a:ident => $body:expr) => {
        match $data {
            $crate::TensorData::F32($a) => $crate::TensorData::F32($body),
            $crate::TensorData::F64($a) => $crate::TensorData::F64($body),
            $crate::TensorData::F16($a) => $crate::TensorData::F16($body),
            $crate::TensorData::BF16($a) => $crate::TensorData::BF16($body),
            $crate::TensorData::I8($a) => $crate::TensorData::I8($body),
            $crate::TensorData::I16($a) => $crate::TensorData::I16($body),
            $crate::TensorData::I32($a) => $crate::TensorData::I32($body),
            $crate::TensorData::I64($a) => $crate::TensorData::I64($body),
            $crate::TensorData::U8($a) => $crate::TensorData::U8($body),
            $crate::TensorData::U16($a) => $crate::TensorData::U16($body),
            $crate::TensorData::U32($a) => $crate::TensorData::U32($body),
            $crate::TensorData::U64($a) => $crate::TensorData::U64($body),
            $crate::TensorData::Bool($a) => $crate::TensorData::Bool($body),
            $crate::TensorData::String($a) => $crate::TensorData::String($body),
            $crate::TensorData::Complex64($a) => $crate::TensorData::Complex64($body),
            $crate::TensorData::Complex128($a) => $crate::TensorData::Complex128($body),
            $crate::TensorData::Narrow { dtype, codes: $a } => {
                $crate::TensorData::Narrow { dtype: *dtype, codes: $body }
            }
        }
    };
}

/// Element types that can live in a [`Tensor`] directly.
pub trait Element: Clone + Send + Sync + 'static {
    /// The dtype of this element type.
    const DTYPE: DType;
    /// Wraps an array of this type.
    fn wrap(a: Array<Self>) -> TensorData;
    /// Borrows the array if the data holds this type.
    fn unwrap_ref(d: &TensorData) -> Option<&Array<Self>>;
}

macro_rules! element {
    ($t:ty, $variant:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn wrap(a: Array<Self>) -> TensorData {
                TensorData::$variant(a)
            }
            fn unwrap_ref(d: &TensorData) -> Option<&Array<Self>> {
                match d {
                    TensorData::$variant(a) => Some(a),
                    _ => None,
                }
            }
        }
    };
}
element!(f32, F32);
element!(f64, F64);
element!(f16, F16);
element!(bf16, BF16);
element!(i8, I8);
element!(i16, I16);
element!(i32, I32);
element!(i64, I64);
element!(u8, U8);
element!(u16, U16);
element!(u32, U32);
element!(u64, U64);
element!(bool, Bool);
element!(String, String);

/// A dense tensor of any [`DType`].
///
/// Equality is exact identity of contents: same dtype, shape and bits, so a
/// NaN equals the same NaN and `-0.0` differs from `0.0`. That is what graph
/// comparison and constant deduplication need; numeric comparisons with a
/// tolerance belong in tests.
#[derive(Clone)]
pub struct Tensor {
    data: TensorData,
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Tensor) -> bool {
        if self.dtype() != other.dtype() || self.shape() != other.shape() {
            return false;
        }
        match (&self.data, &other.data) {
            (TensorData::String(a), TensorData::String(b)) => a == b,
            _ => self.to_le_bytes() == other.to_le_bytes(),
        }
    }
}

impl Tensor {
    /// Wraps typed data.
    pub fn new(data: TensorData) -> Tensor {
        Tensor { data }
    }

    /// A tensor from a flat vector and a shape. Panics if the sizes disagree;
    /// use [`Tensor::try_from_vec`] for untrusted sizes.
    pub fn from_vec<T: Element>(shape: &[usize], values: Vec<T>) -> Tensor {
        Self::try_from_vec(shape, values).expect("shape matches the number of values")
    }

    /// A tensor from a flat vector and a shape, or `None` if the sizes disagree.
    pub fn try_from_vec<T: Element>(shape: &[usize], values: Vec<T>) -> Option<Tensor> {
        let a = ArrayD::from_shape_vec(IxDyn(shape), values).ok()?;
        Some(Tensor { data: T::wrap(a.into_shared()) })
    }

    /// A tensor from an ndarray array.
    pub fn from_array<T: Element>(a: impl Into<Array<T>>) -> Tensor {
        Tensor { data: T::wrap(a.into()) }
    }

    /// A scalar (rank 0) tensor.
    pub fn scalar<T: Element>(v: T) -> Tensor {
        Self::from_vec(&[], vec![v])
    }

    /// A narrow-format tensor from one code per element.
    pub fn from_codes(dtype: DType, shape: &[usize], codes: Vec<u8>) -> Option<Tensor> {
        if !dtype.is_narrow() {
            return None;
        }
        let a = ArrayD::from_shape_vec(IxDyn(shape), codes).ok()?;
        Some(Tensor { data: TensorData::Narrow { dtype, codes: a.into_shared() } })
    }

    /// A tensor of zeros (false, empty strings, code 0) of any dtype.
    pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let s = IxDyn(shape);
        let data = match dtype {
            DType::F32 => TensorData::F32(ArrayD::zeros(s).into_shared()),
            DType::F64 => TensorData::F64(ArrayD::zeros(s).into_shared()),
            DType::F16 => TensorData::F16(ArrayD::from_elem(s, f16::ZERO).into_shared()),
            DType::BF16 => TensorData::BF16(ArrayD::from_elem(s, bf16::ZERO).into_shared()),
            DType::I8 => TensorData::I8(ArrayD::zeros(s).into_shared()),
            DType::I16 => TensorData::I16(ArrayD::zeros(s).into_shared()),
            DType::I32 => TensorData::I32(ArrayD::zeros(s).into_shared()),
            DType::I64 => TensorData::I64(ArrayD::zeros(s).into_shared()),
            DType::U8 => TensorData::U8(ArrayD::zeros(s).into_shared()),
            DType::U16 => TensorData::U16(ArrayD::zeros(s).into_shared()),
            DType::U32 => TensorData::U32(ArrayD::zeros(s).into_shared()),
            DType::U64 => TensorData::U64(ArrayD::zeros(s).into_shared()),
            DType::Bool => TensorData::Bool(ArrayD::from_elem(s, false).into_shared()),
            DType::String => TensorData::String(ArrayD::from_elem(s, String::new()).into_shared()),
            DType::Complex64 => TensorData::Complex64(ArrayD::from_elem(s, [0.0; 2]).into_shared()),
            DType::Complex128 => TensorData::Complex128(ArrayD::from_elem(s, [0.0; 2]).into_shared()),
            _ => TensorData::Narrow {
                dtype,
                codes: ArrayD::from_shape_vec(s, vec![0u8; n]).expect("sizes agree").into_shared(),
            },
        };
        Tensor { data }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match &self.data {
            TensorData::F32(_) => DType::F32,
            TensorData::F64(_) => DType::F64,
            TensorData::F16(_) => DType::F16,
            TensorData::BF16(_) => DType::BF16,
            TensorData::I8(_) => DType::I8,
            TensorData::I16(_) => DType::I16,
            TensorData::I32(_) => DType::I32,
            TensorData::I64(_) => DType::I64,
            TensorData::U8(_) => DType::U8,
            TensorData::U16(_) => DType::U16,
            TensorData::U32(_) => DType::U32,
            TensorData::U64(_) => DType::U64,
            TensorData::Bool(_) => DType::Bool,
            TensorData::String(_) => DType::String,
            TensorData::Complex64(_) => DType::Complex64,
            TensorData::Complex128(_) => DType::Complex128,
            TensorData::Narrow { dtype, .. } => *dtype,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        dispatch_array!(&self.data, a => a.shape())
    }

    /// Number of dims.
    pub fn rank(&self) -> usize {
        self.shape().len()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        dispatch_array!(&self.data, a => a.len())
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The typed data.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// The typed data, owned.
    pub fn into_data(self) -> TensorData {
        self.data
    }

    /// Borrows the array if the tensor holds elements of type `T`.
    pub fn as_array<T: Element>(&self) -> Option<&Array<T>> {
        T::unwrap_ref(&self.data)
    }

    /// The narrow codes, if this is a narrow-format tensor.
    pub fn as_codes(&self) -> Option<&Array<u8>> {
        match &self.data {
            TensorData::Narrow { codes, .. } => Some(codes),
            _ => None,
        }
    }

    /// The elements as `i64`, for integer tensors used as shapes, axes or
    /// indices. `None` for other dtypes.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        Some(match &self.data {
            TensorData::I64(a) => a.iter().copied().collect(),
            TensorData::I32(a) => a.iter().map(|&v| v as i64).collect(),
            TensorData::I16(a) => a.iter().map(|&v| v as i64).collect(),
            TensorData::I8(a) => a.iter().map(|&v| v as i64).collect(),
            TensorData::U8(a) => a.iter().map(|&v| v as i64).collect(),
            TensorData::U16(a) => a.iter().map(|&v| v as i64).collect(),
            TensorData::U32(a) => a.iter().map(|&v| v as i64).collect(),
            TensorData::U64(a) => a.iter().map(|&v| v as i64).collect(),
            _ => return None,
        })
    }

    /// The elements as `f64`, for real-valued tensors (floats of 16 bits and
    /// more, integers and bools). `None` for strings, complex and narrow types.
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        Some(match &self.data {
            TensorData::F32(a) => a.iter().map(|&v| v as f64).collect(),
            TensorData::F64(a) => a.iter().copied().collect(),
            TensorData::F16(a) => a.iter().map(|v| v.to_f64()).collect(),
            TensorData::BF16(a) => a.iter().map(|v| v.to_f64()).collect(),
            TensorData::Bool(a) => a.iter().map(|&v| v as u8 as f64).collect(),
            _ => self.to_i64_vec()?.into_iter().map(|v| v as f64).collect(),
        })
    }

    /// Reinterprets the tensor with a new shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Option<Tensor> {
        if shape.iter().product::<usize>() != self.len() {
            return None;
        }
        let data = map_array!(&self.data, a => a.to_shape(IxDyn(shape)).ok()?.to_owned().into_shared());
        Some(Tensor { data })
    }

    /// Dense little-endian bytes as ONNX `raw_data` stores them: sub-byte
    /// formats packed low bits first. `None` for strings.
    pub fn to_le_bytes(&self) -> Option<Vec<u8>> {
        fn le<T: Copy, const N: usize>(a: &Array<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
            let mut out = Vec::with_capacity(a.len() * N);
            for v in a.iter() {
                out.extend_from_slice(&f(*v));
            }
            out
        }
        Some(match &self.data {
            TensorData::F32(a) => le(a, f32::to_le_bytes),
            TensorData::F64(a) => le(a, f64::to_le_bytes),
            TensorData::F16(a) => le(a, |v: f16| v.to_le_bytes()),
            TensorData::BF16(a) => le(a, |v: bf16| v.to_le_bytes()),
            TensorData::I8(a) => le(a, i8::to_le_bytes),
            TensorData::I16(a) => le(a, i16::to_le_bytes),
            TensorData::I32(a) => le(a, i32::to_le_bytes),
            TensorData::I64(a) => le(a, i64::to_le_bytes),
            TensorData::U8(a) => a.iter().copied().collect(),
            TensorData::U16(a) => le(a, u16::to_le_bytes),
            TensorData::U32(a) => le(a, u32::to_le_bytes),
            TensorData::U64(a) => le(a, u64::to_le_bytes),
            TensorData::Bool(a) => a.iter().map(|&b| b as u8).collect(),
            TensorData::String(_) => return None,
            TensorData::Complex64(a) => {
                a.iter().flat_map(|[r, i]| r.to_le_bytes().into_iter().chain(i.to_le_bytes())).collect()
            }
            TensorData::Complex128(a) => {
                a.iter().flat_map(|[r, i]| r.to_le_bytes().into_iter().chain(i.to_le_bytes())).collect()
            }
            TensorData::Narrow { dtype, codes } => {
                let bits = dtype.bit_width().expect("narrow types have a width");
                if bits == 8 {
                    codes.iter().copied().collect()
                } else {
                    let per_byte = 8 / bits;
                    let mask = (1u8 << bits) - 1;
                    let mut out = vec![0u8; dtype.storage_bytes(codes.len()).expect("sized")];
                    for (i, c) in codes.iter().enumerate() {
                        out[i / per_byte] |= (c & mask) << ((i % per_byte) * bits);
                    }
                    out
                }
            }
        })
    }

    /// Decodes dense little-endian bytes (the layout [`Tensor::to_le_bytes`]
    /// writes). Returns an error message when the byte count does not match.
    pub fn from_le_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Tensor, String> {
        let n: usize = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or("element count overflows")?;
        let want = dtype.storage_bytes(n).ok_or_else(|| format!("{dtype} tensors have no dense byte layout"))?;
        if bytes.len() != want {
            return Err(format!("{dtype}{shape:?} needs {want} bytes of data but {} were given", bytes.len()));
        }
        fn dec<T, const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
            bytes.chunks_exact(N).map(|c| f(c.try_into().expect("exact chunk"))).collect()
        }
        let t = match dtype {
            DType::F32 => Tensor::try_from_vec(shape, dec(bytes, f32::from_le_bytes)),
            DType::F64 => Tensor::try_from_vec(shape, dec(bytes, f64::from_le_bytes)),
            DType::F16 => Tensor::try_from_vec(shape, dec(bytes, f16::from_le_bytes)),
            DType::BF16 => Tensor::try_from_vec(shape, dec(bytes, bf16::from_le_bytes)),
            DType::I8 => Tensor::try_from_vec(shape, dec(bytes, i8::from_le_bytes)),
            DType::I16 => Tensor::try_from_vec(shape, dec(bytes, i16::from_le_bytes)),
            DType::I32 => Tensor::try_from_vec(shape, dec(bytes, i32::from_le_bytes)),
            DType::I64 => Tensor::try_from_vec(shape, dec(bytes, i64::from_le_bytes)),
            DType::U8 => Tensor::try_from_vec(shape, bytes.to_vec()),
            DType::U16 => Tensor::try_from_vec(shape, dec(bytes, u16::from_le_bytes)),
            DType::U32 => Tensor::try_from_vec(shape, dec(bytes, u32::from_le_bytes)),
            DType::U64 => Tensor::try_from_vec(shape, dec(bytes, u64::from_le_bytes)),
            DType::Bool => Tensor::try_from_vec(shape, bytes.iter().map(|&b| b != 0).collect()),
            DType::Complex64 => ArrayD::from_shape_vec(
                IxDyn(shape),
                dec(bytes, |c: [u8; 8]| {
                    [
                        f32::from_le_bytes(c[..4].try_into().expect("4 bytes")),
                        f32::from_le_bytes(c[4..].try_into().expect("4 bytes")),
                    ]
                }),
            )
            .ok()
            .map(|a| Tensor::new(TensorData::Complex64(a.into_shared()))),
            DType::Complex128 => ArrayD::from_shape_vec(
                IxDyn(shape),
                dec(bytes, |c: [u8; 16]| {
                    [
                        f64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
                        f64::from_le_bytes(c[8..].try_into().expect("8 bytes")),
                    ]
                }),
            )
            .ok()
            .map(|a| Tensor::new(TensorData::Complex128(a.into_shared()))),
            DType::String => None,
            _ => {
                let bits = dtype.bit_width().expect("narrow types have a width");
                let codes = if bits == 8 {
                    bytes.to_vec()
                } else {
                    let per_byte = 8 / bits;
                    let mask = (1u8 << bits) - 1;
                    (0..n).map(|i| (bytes[i / per_byte] >> ((i % per_byte) * bits)) & mask).collect()
                };
                Tensor::from_codes(dtype, shape, codes)
            }
        };
        t.ok_or_else(|| format!("cannot build a {dtype}{shape:?} tensor"))
    }

    /// A short content hash (hex), used by the text format to identify weight
    /// and constant data without printing it.
    pub fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.dtype().name().as_bytes());
        for d in self.shape() {
            h.update((*d as u64).to_le_bytes());
        }
        match &self.data {
            TensorData::String(a) => {
                for s in a.iter() {
                    h.update((s.len() as u64).to_le_bytes());
                    h.update(s.as_bytes());
                }
            }
            _ => h.update(self.to_le_bytes().expect("non-string tensors have bytes")),
        }
        let d = h.finalize();
        d[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor<{}{:?}>", self.dtype(), self.shape())?;
        if self.len() <= 16 {
            match &self.data {
                TensorData::Narrow { codes, .. } => {
                    write!(f, " codes {:?}", codes.iter().collect::<Vec<_>>())
                }
                d => dispatch_array!(d, a => write!(f, " {:?}", a.iter().collect::<Vec<_>>())),
            }?;
        }
        Ok(())
    }
}

impl<T: Element> From<ArrayD<T>> for Tensor {
    fn from(a: ArrayD<T>) -> Tensor {
        Tensor::from_array(a.into_shared())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_every_dtype() {
        for d in crate::dtype::ALL_DTYPES {
            if d == DType::String {
                continue;
            }
            let t = Tensor::zeros(d, &[2, 3]);
            let bytes = t.to_le_bytes().unwrap();
            assert_eq!(bytes.len(), d.storage_bytes(6).unwrap());
            assert_eq!(Tensor::from_le_bytes(d, &[2, 3], &bytes).unwrap(), t);
        }
    }

    #[test]
    fn equality_is_bitwise() {
        let nan = Tensor::from_vec(&[1], vec![f32::NAN]);
        assert_eq!(nan, nan.clone());
        assert_ne!(Tensor::scalar(0.0f32), Tensor::scalar(-0.0f32));
        assert_ne!(Tensor::scalar(1.0f32), Tensor::scalar(1.0f64));
    }

    #[test]
    fn packed_nibbles() {
        let t = Tensor::from_codes(DType::U4, &[3], vec![1, 2, 15]).unwrap();
        assert_eq!(t.to_le_bytes().unwrap(), vec![0x21, 0x0f]);
        assert_eq!(Tensor::from_le_bytes(DType::U4, &[3], &[0x21, 0x0f]).unwrap(), t);
    }

    #[test]
    fn wrong_byte_count_is_an_error() {
        let err = Tensor::from_le_bytes(DType::F32, &[2], &[0; 7]).unwrap_err();
        assert!(err.contains("needs 8 bytes"), "{err}");
    }

    #[test]
    fn hash_depends_on_content_and_shape() {
        let a = Tensor::from_vec(&[2], vec![1.0f32, 2.0]);
        let b = Tensor::from_vec(&[2], vec![1.0f32, 3.0]);
        let c = Tensor::from_vec(&[2, 1], vec![1.0f32, 2.0]);
        assert_ne!(a.content_hash(), b.content_hash());
        assert_ne!(a.content_hash(), c.content_hash());
        assert_eq!(a.content_hash(), a.clone().content_hash());
    }
}

//! `TensorProto` ⇄ [`Tensor`].
//!
//! ONNX stores tensor data either as dense little-endian bytes (`raw_data`,
//! or a range of an external file) or in typed repeated fields whose choice
//! depends on the element type: `float_data` for f32 and complex64,
//! `int32_data` for every integer, bool and 8/16-bit float type narrower
//! than 32 bits (16-bit floats as their bit patterns, 4- and 2-bit types
//! packed into bytes), `int64_data`, `uint64_data` for u32/u64,
//! `double_data` for f64 and complex128, and `string_data`. Every path checks
//! that the amount of data matches the shape, because a short buffer in a
//! downloaded model must be an error and never a silently wrong tensor.

use crate::OnnxError;
use crate::external::ExternalData;
use onnx_protobuf::{SparseTensorProto, TensorProto};
use sharc_ir::{DType, Tensor, TensorData};

/// The dtype for an ONNX element type code, or an error naming it.
pub(crate) fn dtype_from_code(code: i32) -> Result<DType, String> {
    match code {
        0 => Err("has no element type (UNDEFINED)".to_string()),
        27 | 28 => Err(format!(
            "has element type {code} ({}), a 6-bit float format that sharc does not support yet",
            if code == 27 { "FLOAT6E2M3" } else { "FLOAT6E3M2" }
        )),
        _ => DType::from_onnx_code(code).ok_or_else(|| format!("has unknown element type code {code}")),
    }
}

/// The shape of a tensor proto as sizes, rejecting negative dims and
/// element counts that overflow.
pub(crate) fn shape_of(dims: &[i64]) -> Result<(Vec<usize>, usize), String> {
    let mut shape = Vec::with_capacity(dims.len());
    let mut n: usize = 1;
    for &d in dims {
        let d = usize::try_from(d).map_err(|_| format!("has a negative dimension {d} in its shape {dims:?}"))?;
        n = n.checked_mul(d).ok_or_else(|| format!("shape {dims:?} has more elements than memory can hold"))?;
        shape.push(d);
    }
    // Byte sizes (up to 128 bits per element) must be computable without
    // overflow further down.
    if n > usize::MAX / 128 {
        return Err(format!("shape {dims:?} has more elements than memory can hold"));
    }
    Ok((shape, n))
}

/// Decodes a tensor whose data is stored in the message itself.
///
/// Tensors that use external data need the model's folder; import them with
/// [`crate::import_file`] instead (this function reports an error for them).
pub fn tensor_from_proto(t: &TensorProto) -> Result<Tensor, OnnxError> {
    decode_tensor(t, None).map_err(|m| OnnxError::tensor("<memory>", &t.name, m))
}

/// Decodes a tensor; external data is resolved through `ext` when given.
pub(crate) fn decode_tensor(t: &TensorProto, ext: Option<&mut ExternalData>) -> Result<Tensor, String> {
    let dtype = dtype_from_code(t.data_type)?;
    let (shape, n) = shape_of(&t.dims)?;
    if t.segment.is_some() {
        return Err("is stored in segments, which sharc does not support; re-save the model without segments".into());
    }
    if ExternalData::is_external(t) {
        let Some(ext) = ext else {
            return Err(
                "stores its data in an external file, which is only available when importing a model file".into()
            );
        };
        if dtype == DType::String {
            return Err("is a string tensor with external data, which ONNX does not allow".into());
        }
        let range = ext.locate(t)?;
        return Tensor::from_le_bytes(dtype, &shape, range.bytes());
    }
    if !t.raw_data.is_empty() {
        if dtype == DType::String {
            return Err("is a string tensor stored in raw_data; ONNX requires string_data for strings".into());
        }
        return Tensor::from_le_bytes(dtype, &shape, &t.raw_data);
    }
    from_typed_fields(dtype, &shape, n, t)
}

fn count_error(dtype: DType, shape: &[usize], field: &str, want: usize, got: usize) -> String {
    format!(
        "{dtype}{shape:?} needs {want} values in {field} but {got} are stored; the model is corrupted or was written by a faulty exporter"
    )
}

/// Values of `int32_data` reinterpreted as `bits`-wide codes. ONNX writers
/// store them either sign-extended or zero-extended, so both readings are
/// accepted; anything outside both ranges is garbage.
fn narrow_codes(vals: &[i32], bits: u32, dtype: DType) -> Result<Vec<u64>, String> {
    let lo = -(1i64 << (bits - 1));
    let hi = (1i64 << bits) - 1;
    vals.iter()
        .map(|&v| {
            let v = v as i64;
            if v < lo || v > hi {
                Err(format!("int32_data value {v} does not fit the {bits}-bit storage of {dtype}"))
            } else {
                Ok((v as u64) & ((1u64 << bits) - 1))
            }
        })
        .collect()
}

fn from_typed_fields(dtype: DType, shape: &[usize], n: usize, t: &TensorProto) -> Result<Tensor, String> {
    let check = |field: &str, want: usize, got: usize| {
        if want == got { Ok(()) } else { Err(count_error(dtype, shape, field, want, got)) }
    };
    let build = |t: Option<Tensor>| t.ok_or_else(|| format!("cannot build a {dtype}{shape:?} tensor"));
    match dtype {
        DType::F32 => {
            check("float_data", n, t.float_data.len())?;
            build(Tensor::try_from_vec(shape, t.float_data.clone()))
        }
        DType::F64 => {
            check("double_data", n, t.double_data.len())?;
            build(Tensor::try_from_vec(shape, t.double_data.clone()))
        }
        DType::I64 => {
            check("int64_data", n, t.int64_data.len())?;
            build(Tensor::try_from_vec(shape, t.int64_data.clone()))
        }
        DType::I32 => {
            check("int32_data", n, t.int32_data.len())?;
            build(Tensor::try_from_vec(shape, t.int32_data.clone()))
        }
        DType::U64 => {
            check("uint64_data", n, t.uint64_data.len())?;
            build(Tensor::try_from_vec(shape, t.uint64_data.clone()))
        }
        DType::U32 => {
            check("uint64_data", n, t.uint64_data.len())?;
            let v: Result<Vec<u32>, String> = t
                .uint64_data
                .iter()
                .map(|&x| u32::try_from(x).map_err(|_| format!("uint64_data value {x} does not fit u32")))
                .collect();
            build(Tensor::try_from_vec(shape, v?))
        }
        DType::Complex64 => {
            check("float_data", 2 * n, t.float_data.len())?;
            let bytes: Vec<u8> = t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect();
            Tensor::from_le_bytes(dtype, shape, &bytes)
        }
        DType::Complex128 => {
            check("double_data", 2 * n, t.double_data.len())?;
            let bytes: Vec<u8> = t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect();
            Tensor::from_le_bytes(dtype, shape, &bytes)
        }
        DType::String => {
            check("string_data", n, t.string_data.len())?;
            let strings: Result<Vec<String>, String> = t
                .string_data
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    String::from_utf8(s.clone()).map_err(|_| {
                        format!("string element {i} is not valid UTF-8; sharc keeps strings as UTF-8 text")
                    })
                })
                .collect();
            build(Tensor::try_from_vec(shape, strings?))
        }
        DType::Bool => {
            check("int32_data", n, t.int32_data.len())?;
            let v: Result<Vec<bool>, String> = t
                .int32_data
                .iter()
                .map(|&x| match x {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err(format!("int32_data value {x} is not a boolean (0 or 1)")),
                })
                .collect();
            build(Tensor::try_from_vec(shape, v?))
        }
        DType::I8 | DType::U8 | DType::I16 | DType::U16 | DType::F16 | DType::BF16 => {
            check("int32_data", n, t.int32_data.len())?;
            let bits = if matches!(dtype, DType::I8 | DType::U8) { 8 } else { 16 };
            let codes = narrow_codes(&t.int32_data, bits, dtype)?;
            let bytes: Vec<u8> = if bits == 8 {
                codes.iter().map(|&c| c as u8).collect()
            } else {
                codes.iter().flat_map(|&c| (c as u16).to_le_bytes()).collect()
            };
            Tensor::from_le_bytes(dtype, shape, &bytes)
        }
        DType::U4 | DType::I4 | DType::F4E2M1 | DType::U2 | DType::I2 => {
            // Packed: each int32_data entry is one byte holding 2 (or 4) elements.
            let want = dtype.storage_bytes(n).expect("sub-byte types have a width");
            check("int32_data (packed bytes)", want, t.int32_data.len())?;
            let bytes: Vec<u8> = narrow_codes(&t.int32_data, 8, dtype)?.iter().map(|&c| c as u8).collect();
            Tensor::from_le_bytes(dtype, shape, &bytes)
        }
        DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ | DType::F8E8M0 => {
            check("int32_data", n, t.int32_data.len())?;
            let bytes: Vec<u8> = narrow_codes(&t.int32_data, 8, dtype)?.iter().map(|&c| c as u8).collect();
            Tensor::from_le_bytes(dtype, shape, &bytes)
        }
    }
}

/// Writes a tensor as a `TensorProto`: dense `raw_data` for every type but
/// strings, which ONNX requires in `string_data`.
pub fn tensor_to_proto(t: &Tensor, name: &str) -> TensorProto {
    let mut p = TensorProto::new();
    p.name = name.to_string();
    p.data_type = t.dtype().onnx_code();
    p.dims = t.shape().iter().map(|&d| d as i64).collect();
    match t.data() {
        TensorData::String(a) => p.string_data = a.iter().map(|s| s.as_bytes().to_vec()).collect(),
        _ => p.raw_data = t.to_le_bytes().expect("non-string tensors have a byte layout"),
    }
    p
}

/// The largest dense tensor a sparse one may expand to (1 GiB).
const MAX_DENSIFIED_BYTES: usize = 1 << 30;

/// Turns a sparse tensor into a dense one (zeros, or empty strings, where no
/// value is given).
pub(crate) fn densify(sp: &SparseTensorProto, mut ext: Option<&mut ExternalData>) -> Result<Tensor, String> {
    let values = sp.values.as_ref().ok_or("is a sparse tensor without values")?;
    let indices = sp.indices.as_ref().ok_or("is a sparse tensor without indices")?;
    let vals = decode_tensor(values, ext.as_deref_mut()).map_err(|m| format!("sparse values {m}"))?;
    let idx = decode_tensor(indices, ext).map_err(|m| format!("sparse indices {m}"))?;
    let (shape, n) = shape_of(&sp.dims)?;
    // A sparse tensor is a handful of bytes that can describe an enormous
    // dense one; refuse to materialise more than this.
    let dense_bytes = n.saturating_mul(vals.dtype().bit_width().unwrap_or(128)) / 8;
    if dense_bytes > MAX_DENSIFIED_BYTES {
        return Err(format!(
            "is a sparse tensor of shape {:?} whose dense form would take {dense_bytes} bytes, more than the {} sharc \
             materialises; store it densely",
            sp.dims, MAX_DENSIFIED_BYTES
        ));
    }
    if vals.rank() != 1 {
        return Err(format!("sparse values must be 1-D, found shape {:?}", vals.shape()));
    }
    let nnz = vals.len();
    let flat_idx = idx.to_i64_vec().ok_or("sparse indices must be an integer tensor")?;
    // Indices are either linear ([NNZ]) or coordinates ([NNZ, rank]).
    let linear: Vec<usize> = if idx.shape() == [nnz] {
        flat_idx
            .iter()
            .map(|&i| usize::try_from(i).ok().filter(|&i| i < n).ok_or(format!("sparse index {i} is out of range")))
            .collect::<Result<_, _>>()?
    } else if idx.shape() == [nnz, shape.len()] {
        let mut out = Vec::with_capacity(nnz);
        for row in flat_idx.chunks(shape.len().max(1)).take(nnz) {
            let mut lin = 0usize;
            for (&c, &d) in row.iter().zip(&shape) {
                let c = usize::try_from(c)
                    .ok()
                    .filter(|&c| c < d)
                    .ok_or(format!("sparse coordinate {c} is out of range"))?;
                lin = lin * d + c;
            }
            out.push(lin);
        }
        out
    } else {
        return Err(format!(
            "sparse indices have shape {:?}, expected [{nnz}] or [{nnz}, {}]",
            idx.shape(),
            shape.len()
        ));
    };
    scatter_dense(&vals, &linear, &shape)
}

fn scatter_dense(vals: &Tensor, linear: &[usize], shape: &[usize]) -> Result<Tensor, String> {
    fn put<T: Clone>(dense: &mut [T], vals: &sharc_ir::Array<T>, idx: &[usize]) {
        for (v, &i) in vals.iter().zip(idx) {
            dense[i] = v.clone();
        }
    }
    let dense = Tensor::zeros(vals.dtype(), shape);
    macro_rules! scatter {
        ($($v:ident),*) => {
            match (dense.into_data(), vals.data()) {
                $( (TensorData::$v(d), TensorData::$v(s)) => {
                    let mut d = d.into_owned();
                    put(d.as_slice_mut().expect("fresh arrays are contiguous"), s, linear);
                    TensorData::$v(d.into_shared())
                } )*
                (TensorData::Narrow { dtype, codes }, TensorData::Narrow { codes: s, .. }) => {
                    let mut d = codes.into_owned();
                    put(d.as_slice_mut().expect("fresh arrays are contiguous"), s, linear);
                    TensorData::Narrow { dtype, codes: d.into_shared() }
                }
                _ => return Err("sparse values and dense result disagree on the type".to_string()),
            }
        };
    }
    let data = scatter!(F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64, Bool, String, Complex64, Complex128);
    Ok(Tensor::new(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharc_ir::dtype::ALL_DTYPES;

    fn proto(dtype: DType, dims: &[i64]) -> TensorProto {
        let mut p = TensorProto::new();
        p.data_type = dtype.onnx_code();
        p.dims = dims.to_vec();
        p
    }

    #[test]
    fn every_dtype_round_trips_through_raw_data() {
        for d in ALL_DTYPES {
            let t = if d == DType::String {
                Tensor::from_vec(&[2], vec!["a".to_string(), "βγ".to_string()])
            } else {
                // Non-zero codes: every byte 0x11 is a valid code for all types.
                let bytes = vec![0x11u8; d.storage_bytes(6).unwrap()];
                Tensor::from_le_bytes(d, &[2, 3], &bytes).unwrap()
            };
            let p = tensor_to_proto(&t, "x");
            assert_eq!(tensor_from_proto(&p).unwrap(), t, "{d}");
        }
    }

    #[test]
    fn typed_fields_follow_onnx_rules() {
        let mut p = proto(DType::F16, &[2]);
        // 1.0 and -2.0 as f16 bit patterns; the second one sign-extended.
        p.int32_data = vec![0x3C00, 0xC000u16 as i16 as i32];
        let t = tensor_from_proto(&p).unwrap();
        assert_eq!(t.to_f64_vec().unwrap(), vec![1.0, -2.0]);

        let mut p = proto(DType::U8, &[3]);
        p.int32_data = vec![0, 200, 255];
        assert_eq!(tensor_from_proto(&p).unwrap().to_i64_vec().unwrap(), vec![0, 200, 255]);

        let mut p = proto(DType::I4, &[3]);
        // Packed: elements 1, -1 (0xF) in the first byte, 7 in the second.
        p.int32_data = vec![0xF1, 0x07];
        let t = tensor_from_proto(&p).unwrap();
        assert_eq!(t.as_codes().unwrap().iter().copied().collect::<Vec<_>>(), vec![1, 15, 7]);

        let mut p = proto(DType::Complex64, &[1]);
        p.float_data = vec![1.5, -2.0];
        let t = tensor_from_proto(&p).unwrap();
        assert_eq!(t.as_array::<f32>(), None);
        assert_eq!(t.to_le_bytes().unwrap(), [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat());

        let mut p = proto(DType::U32, &[1]);
        p.uint64_data = vec![4_000_000_000];
        assert_eq!(tensor_from_proto(&p).unwrap().to_i64_vec().unwrap(), vec![4_000_000_000]);
    }

    #[test]
    fn size_mismatches_are_errors() {
        let mut p = proto(DType::F32, &[2, 2]);
        p.float_data = vec![1.0; 3];
        let e = tensor_from_proto(&p).unwrap_err().to_string();
        assert!(e.contains("needs 4 values in float_data but 3"), "{e}");

        let mut p = proto(DType::F32, &[2]);
        p.raw_data = vec![0; 7];
        assert!(tensor_from_proto(&p).unwrap_err().to_string().contains("needs 8 bytes"));

        let mut p = proto(DType::I8, &[1]);
        p.int32_data = vec![300];
        assert!(tensor_from_proto(&p).unwrap_err().to_string().contains("does not fit"));

        let mut p = proto(DType::Bool, &[1]);
        p.int32_data = vec![2];
        assert!(tensor_from_proto(&p).is_err());

        let mut p = proto(DType::F32, &[-1]);
        p.float_data = vec![1.0];
        assert!(tensor_from_proto(&p).unwrap_err().to_string().contains("negative dimension"));

        let p = proto(DType::F32, &[i64::MAX, i64::MAX]);
        assert!(tensor_from_proto(&p).is_err());

        let mut p = TensorProto::new();
        p.data_type = 99;
        assert!(tensor_from_proto(&p).unwrap_err().to_string().contains("unknown element type"));

        let mut p = proto(DType::String, &[1]);
        p.string_data = vec![vec![0xff, 0xfe]];
        assert!(tensor_from_proto(&p).unwrap_err().to_string().contains("UTF-8"));
    }

    #[test]
    fn empty_tensors_need_no_data() {
        let p = proto(DType::F32, &[0, 3]);
        assert_eq!(tensor_from_proto(&p).unwrap().shape(), &[0, 3]);
    }

    #[test]
    fn sparse_tensors_densify() {
        let mut sp = SparseTensorProto::new();
        let mut v = proto(DType::F32, &[2]);
        v.float_data = vec![5.0, 7.0];
        let mut i = proto(DType::I64, &[2]);
        i.int64_data = vec![1, 5];
        sp.values = Some(v).into();
        sp.indices = Some(i).into();
        sp.dims = vec![2, 3];
        let t = densify(&sp, None).unwrap();
        assert_eq!(t.to_f64_vec().unwrap(), vec![0.0, 5.0, 0.0, 0.0, 0.0, 7.0]);

        // Coordinate form: [[0, 1], [1, 2]].
        let mut i = proto(DType::I64, &[2, 2]);
        i.int64_data = vec![0, 1, 1, 2];
        sp.indices = Some(i).into();
        assert_eq!(densify(&sp, None).unwrap().to_f64_vec().unwrap(), vec![0.0, 5.0, 0.0, 0.0, 0.0, 7.0]);

        let mut i = proto(DType::I64, &[2]);
        i.int64_data = vec![1, 6];
        sp.indices = Some(i).into();
        assert!(densify(&sp, None).unwrap_err().contains("out of range"));
    }
}

//! Reading the `.pb` data files of ONNX test cases: a serialized
//! `TensorProto`, `SequenceProto` or `OptionalProto`.
//!
//! `onnx-protobuf` only generates the messages of `onnx.proto`; the sequence
//! and optional messages live in `onnx-data.proto`. They are small, so they
//! are decoded here by field number:
//!
//! ```text
//! SequenceProto { 1 name, 2 elem_type, 3 tensor_values*, 4 sparse_tensor_values*,
//!                 5 sequence_values*, 6 map_values*, 7 optional_values* }
//! OptionalProto { 1 name, 2 elem_type, 3 tensor_value, 4 sparse_tensor_value,
//!                 5 sequence_value, 6 map_value, 7 optional_value }
//! elem_type: 1 tensor, 2 sparse tensor, 3 sequence, 4 map, 5 optional
//! ```

use crate::OnnxError;
use crate::tensor::{decode_tensor, densify};
use onnx_protobuf::{Message, SparseTensorProto, TensorProto};
use protobuf::CodedInputStream;
use protobuf::rt::WireType;
use sharc_ir::{Tensor, Type, Value};

const FILE: &str = "<value file>";

/// Reads a serialized `TensorProto` (external data is not allowed here).
pub fn read_tensor_pb(bytes: &[u8]) -> Result<Tensor, OnnxError> {
    let p = TensorProto::parse_from_bytes(bytes).map_err(|e| OnnxError::decode(FILE, "TensorProto", e))?;
    decode_tensor(&p, None).map_err(|m| OnnxError::tensor(FILE, &p.name, m))
}

/// Reads a value file, choosing the message by the type the value should
/// have: a `SequenceProto` for sequences, an `OptionalProto` for optionals,
/// and a `TensorProto` otherwise. A tensor whose element type differs from
/// the expected one is an error, because comparing against it would be
/// meaningless.
pub fn read_value_pb(bytes: &[u8], expected: &Type) -> Result<Value, OnnxError> {
    let v = match expected {
        Type::Sequence(elem) => read_sequence(bytes, elem, 0)?,
        Type::Optional(elem) => read_optional(bytes, elem, 0)?,
        Type::Tensor(_) | Type::Unknown => Value::Tensor(read_tensor_pb(bytes)?),
    };
    check_type(&v, expected)?;
    Ok(v)
}

fn check_type(v: &Value, expected: &Type) -> Result<(), OnnxError> {
    let bad = |m: String| Err(OnnxError::model(FILE, m));
    match (v, expected) {
        (_, Type::Unknown) => Ok(()),
        (Value::Tensor(t), Type::Tensor(tt)) => {
            if t.dtype() != tt.dtype {
                return bad(format!("holds a {} tensor where {} was expected", t.dtype(), tt.dtype));
            }
            if let Some(shape) = &tt.shape
                && shape.rank() != t.rank()
            {
                return bad(format!(
                    "holds a tensor of shape {:?} where rank {} was expected",
                    t.shape(),
                    shape.rank()
                ));
            }
            Ok(())
        }
        (Value::Sequence(items), Type::Sequence(elem)) => items.iter().try_for_each(|i| check_type(i, elem)),
        (Value::Optional(None), Type::Optional(_)) => Ok(()),
        (Value::Optional(Some(i)), Type::Optional(elem)) => check_type(i, elem),
        _ => bad(format!("holds {} where a value of type {expected} was expected", v.describe())),
    }
}

/// Nested containers deeper than this are rejected instead of exhausting the
/// stack on a malicious file.
const MAX_DEPTH: usize = 64;

fn decode_err(what: &str, e: impl ToString) -> OnnxError {
    OnnxError::decode(FILE, what, e)
}

/// Iterates the fields of a message, handing length-delimited payloads and
/// varints to `f` and skipping everything else.
fn for_each_field(
    bytes: &[u8],
    what: &str,
    mut f: impl FnMut(u32, Field) -> Result<(), OnnxError>,
) -> Result<(), OnnxError> {
    let mut is = CodedInputStream::from_bytes(bytes);
    while let Some(tag) = is.read_raw_tag_or_eof().map_err(|e| decode_err(what, e))? {
        let (field, wire) = (tag >> 3, tag & 7);
        let wire = WireType::new(wire).ok_or_else(|| decode_err(what, format!("invalid wire type {wire}")))?;
        if field == 0 {
            return Err(decode_err(what, "field number 0"));
        }
        match wire {
            WireType::LengthDelimited => {
                let payload = is.read_bytes().map_err(|e| decode_err(what, e))?;
                f(field, Field::Bytes(payload))?;
            }
            WireType::Varint => {
                let v = is.read_raw_varint64().map_err(|e| decode_err(what, e))?;
                f(field, Field::Varint(v))?;
            }
            other => is.skip_field(other).map_err(|e| decode_err(what, e))?,
        }
    }
    Ok(())
}

enum Field {
    Bytes(Vec<u8>),
    Varint(u64),
}

/// The parts of a SequenceProto or OptionalProto that sharc reads.
#[derive(Default)]
struct Container {
    elem_type: Option<u64>,
    tensors: Vec<Vec<u8>>,
    sparse: Vec<Vec<u8>>,
    sequences: Vec<Vec<u8>>,
    maps: usize,
    optionals: Vec<Vec<u8>>,
}

fn read_container(bytes: &[u8], what: &str) -> Result<Container, OnnxError> {
    let mut c = Container::default();
    for_each_field(bytes, what, |field, v| {
        match (field, v) {
            (2, Field::Varint(t)) => c.elem_type = Some(t),
            (3, Field::Bytes(b)) => c.tensors.push(b),
            (4, Field::Bytes(b)) => c.sparse.push(b),
            (5, Field::Bytes(b)) => c.sequences.push(b),
            (6, Field::Bytes(_)) => c.maps += 1,
            (7, Field::Bytes(b)) => c.optionals.push(b),
            // name (1) and unknown fields carry nothing sharc needs.
            _ => {}
        }
        Ok(())
    })?;
    Ok(c)
}

fn tensor_elem(b: &[u8]) -> Result<Value, OnnxError> {
    Ok(Value::Tensor(read_tensor_pb(b)?))
}

fn sparse_elem(b: &[u8]) -> Result<Value, OnnxError> {
    let sp = SparseTensorProto::parse_from_bytes(b).map_err(|e| decode_err("SparseTensorProto", e))?;
    densify(&sp, None).map(Value::Tensor).map_err(|m| OnnxError::tensor(FILE, "", m))
}

fn read_sequence(bytes: &[u8], elem: &Type, depth: usize) -> Result<Value, OnnxError> {
    if depth > MAX_DEPTH {
        return Err(decode_err("SequenceProto", "containers are nested too deeply"));
    }
    let c = read_container(bytes, "SequenceProto")?;
    if c.maps > 0 {
        return Err(OnnxError::model(FILE, "holds a sequence of maps, which sharc does not support"));
    }
    let inner = match elem {
        Type::Sequence(e) | Type::Optional(e) => e.as_ref(),
        _ => &Type::Unknown,
    };
    let mut items = Vec::new();
    // elem_type says which list is used; without it, take whichever is filled.
    match c.elem_type {
        Some(1) | None if c.sparse.is_empty() && c.sequences.is_empty() && c.optionals.is_empty() => {
            for t in &c.tensors {
                items.push(tensor_elem(t)?);
            }
        }
        Some(2) | None if c.tensors.is_empty() && c.sequences.is_empty() && c.optionals.is_empty() => {
            for t in &c.sparse {
                items.push(sparse_elem(t)?);
            }
        }
        Some(3) | None if c.tensors.is_empty() && c.sparse.is_empty() && c.optionals.is_empty() => {
            for s in &c.sequences {
                items.push(read_sequence(s, inner, depth + 1)?);
            }
        }
        Some(5) | None if c.tensors.is_empty() && c.sparse.is_empty() && c.sequences.is_empty() => {
            for o in &c.optionals {
                items.push(read_optional(o, inner, depth + 1)?);
            }
        }
        Some(0) if c.tensors.is_empty() && c.sparse.is_empty() && c.sequences.is_empty() && c.optionals.is_empty() => {}
        other => {
            return Err(OnnxError::model(
                FILE,
                format!("sequence with element type {other:?} holds values of another kind; the file is inconsistent"),
            ));
        }
    }
    Ok(Value::Sequence(items))
}

fn read_optional(bytes: &[u8], elem: &Type, depth: usize) -> Result<Value, OnnxError> {
    if depth > MAX_DEPTH {
        return Err(decode_err("OptionalProto", "containers are nested too deeply"));
    }
    let c = read_container(bytes, "OptionalProto")?;
    if c.maps > 0 {
        return Err(OnnxError::model(FILE, "holds an optional map, which sharc does not support"));
    }
    let count = c.tensors.len() + c.sparse.len() + c.sequences.len() + c.optionals.len();
    if count > 1 {
        return Err(OnnxError::model(FILE, "an optional holds more than one value"));
    }
    let inner = match elem {
        Type::Sequence(e) | Type::Optional(e) => e.as_ref(),
        _ => &Type::Unknown,
    };
    let v = if let Some(t) = c.tensors.first() {
        Some(tensor_elem(t)?)
    } else if let Some(t) = c.sparse.first() {
        Some(sparse_elem(t)?)
    } else if let Some(s) = c.sequences.first() {
        Some(read_sequence(s, inner, depth + 1)?)
    } else if let Some(o) = c.optionals.first() {
        Some(read_optional(o, inner, depth + 1)?)
    } else {
        None
    };
    Ok(Value::Optional(v.map(Box::new)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor_to_proto;
    use protobuf::CodedOutputStream;
    use sharc_ir::DType;

    fn message(fields: &[(u32, &[u8])], elem_type: u64) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut os = CodedOutputStream::vec(&mut out);
            os.write_string(1, "v").unwrap();
            os.write_uint64(2, elem_type).unwrap();
            for (f, b) in fields {
                os.write_bytes(*f, b).unwrap();
            }
            os.flush().unwrap();
        }
        out
    }

    #[test]
    fn sequences_and_optionals() {
        let a = Tensor::from_vec(&[2], vec![1.0f32, 2.0]);
        let b = Tensor::from_vec(&[1], vec![3.0f32]);
        let ta = tensor_to_proto(&a, "a").write_to_bytes().unwrap();
        let tb = tensor_to_proto(&b, "b").write_to_bytes().unwrap();
        let seq = message(&[(3, &ta), (3, &tb)], 1);
        let ty = Type::Sequence(Box::new(Type::Tensor(sharc_ir::TensorType::unranked(DType::F32))));
        let v = read_value_pb(&seq, &ty).unwrap();
        assert_eq!(v, Value::Sequence(vec![Value::Tensor(a.clone()), Value::Tensor(b)]));

        let opt = message(&[(3, &ta)], 1);
        let ty = Type::Optional(Box::new(Type::Unknown));
        assert_eq!(read_value_pb(&opt, &ty).unwrap(), Value::Optional(Some(Box::new(Value::Tensor(a.clone())))));
        let none = message(&[], 0);
        assert_eq!(read_value_pb(&none, &ty).unwrap(), Value::Optional(None));

        // An optional holding a sequence.
        let opt_seq = message(&[(5, &seq)], 3);
        let ty = Type::Optional(Box::new(Type::Sequence(Box::new(Type::Unknown))));
        match read_value_pb(&opt_seq, &ty).unwrap() {
            Value::Optional(Some(inner)) => assert!(matches!(*inner, Value::Sequence(ref s) if s.len() == 2)),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn wrong_dtype_and_garbage_are_errors() {
        let t = tensor_to_proto(&Tensor::from_vec(&[1], vec![1i64]), "x").write_to_bytes().unwrap();
        let e = read_value_pb(&t, &Type::tensor(DType::F32, vec![sharc_ir::Dim::Fixed(1)])).unwrap_err();
        assert!(e.to_string().contains("i64 tensor where f32"), "{e}");
        assert!(read_value_pb(&[0xff, 0xff, 0xff], &Type::Sequence(Box::new(Type::Unknown))).is_err());
        assert!(read_tensor_pb(&t[..t.len() - 1]).is_err());
    }
}

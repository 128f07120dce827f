//! `TypeProto` ⇄ [`Type`], with symbolic dimensions.

use crate::tensor::dtype_from_code;
use onnx_protobuf::tensor_shape_proto::Dimension;
use onnx_protobuf::tensor_shape_proto::dimension::Value as DimValue;
use onnx_protobuf::type_proto::{self, Value as TypeValue};
use onnx_protobuf::{TensorShapeProto, TypeProto};
use sharc_ir::{Dim, Shape, TensorType, Type};
use std::collections::HashSet;

/// Hands out symbols for dims that ONNX leaves anonymous (neither a size nor
/// a name). Each anonymous dim gets its own symbol, because two anonymous
/// dims are not known to be equal. The symbols are numbered in the order the
/// importer meets them, so the same model always gets the same names, and
/// they avoid every `dim_param` the model itself uses.
#[derive(Default)]
pub(crate) struct SymbolGen {
    used: HashSet<String>,
    next: u64,
}

impl SymbolGen {
    /// A generator that avoids the given names.
    pub fn avoiding(used: HashSet<String>) -> SymbolGen {
        SymbolGen { used, next: 0 }
    }

    /// A fresh symbol.
    pub fn fresh(&mut self) -> String {
        loop {
            let s = format!("unk__{}", self.next);
            self.next += 1;
            if self.used.insert(s.clone()) {
                return s;
            }
        }
    }
}

/// Collects every `dim_param` in a type (for [`SymbolGen::avoiding`]).
pub(crate) fn collect_dim_params(t: &TypeProto, out: &mut HashSet<String>) {
    match &t.value {
        Some(TypeValue::TensorType(tt)) => collect_shape_params(tt.shape.as_ref(), out),
        Some(TypeValue::SparseTensorType(tt)) => collect_shape_params(tt.shape.as_ref(), out),
        Some(TypeValue::SequenceType(s)) => {
            if let Some(e) = s.elem_type.as_ref() {
                collect_dim_params(e, out)
            }
        }
        Some(TypeValue::OptionalType(s)) => {
            if let Some(e) = s.elem_type.as_ref() {
                collect_dim_params(e, out)
            }
        }
        Some(TypeValue::MapType(m)) => {
            if let Some(e) = m.value_type.as_ref() {
                collect_dim_params(e, out)
            }
        }
        _ => {}
    }
}

fn collect_shape_params(s: Option<&TensorShapeProto>, out: &mut HashSet<String>) {
    for d in s.map(|s| s.dim.as_slice()).unwrap_or_default() {
        if let Some(DimValue::DimParam(p)) = &d.value {
            out.insert(p.clone());
        }
    }
}

/// Converts an ONNX type. Map, sparse-tensor and opaque types have no IR
/// counterpart: they are reported as errors, which callers turn into
/// [`Type::Unknown`] where the type is only a hint.
pub(crate) fn type_from_proto(t: &TypeProto, syms: &mut SymbolGen) -> Result<Type, String> {
    match &t.value {
        None => Ok(Type::Unknown),
        Some(TypeValue::TensorType(tt)) => {
            if tt.elem_type == 0 {
                return Ok(Type::Unknown);
            }
            let dtype = dtype_from_code(tt.elem_type).map_err(|m| format!("tensor type {m}"))?;
            let shape = tt.shape.as_ref().map(|s| Shape(s.dim.iter().map(|d| dim_from_proto(d, syms)).collect()));
            Ok(Type::Tensor(TensorType { dtype, shape }))
        }
        Some(TypeValue::SequenceType(s)) => {
            let elem = match s.elem_type.as_ref() {
                Some(e) => type_from_proto(e, syms)?,
                None => Type::Unknown,
            };
            Ok(Type::Sequence(Box::new(elem)))
        }
        Some(TypeValue::OptionalType(s)) => {
            let elem = match s.elem_type.as_ref() {
                Some(e) => type_from_proto(e, syms)?,
                None => Type::Unknown,
            };
            Ok(Type::Optional(Box::new(elem)))
        }
        Some(TypeValue::MapType(_)) => Err("map types are not supported by sharc".to_string()),
        Some(TypeValue::SparseTensorType(_)) => Err("sparse tensor types are not supported by sharc".to_string()),
        Some(_) => Err("this kind of type is not supported by sharc".to_string()),
    }
}

fn dim_from_proto(d: &Dimension, syms: &mut SymbolGen) -> Dim {
    match &d.value {
        // Some exporters write -1 for "unknown"; it is as anonymous as no value.
        Some(DimValue::DimValue(v)) if *v >= 0 => Dim::Fixed(*v as u64),
        Some(DimValue::DimParam(p)) if !p.is_empty() => Dim::Sym(p.clone()),
        _ => Dim::Sym(syms.fresh()),
    }
}

/// Converts an IR type, or `None` for [`Type::Unknown`] (ONNX then simply
/// carries no type for the value).
pub(crate) fn type_to_proto(t: &Type) -> Option<TypeProto> {
    let mut p = TypeProto::new();
    match t {
        Type::Unknown => return None,
        Type::Tensor(tt) => {
            let mut tp = type_proto::Tensor::new();
            tp.elem_type = tt.dtype.onnx_code();
            if let Some(shape) = &tt.shape {
                let mut sp = TensorShapeProto::new();
                for d in shape.dims() {
                    let mut dp = Dimension::new();
                    dp.value = Some(match d {
                        Dim::Fixed(n) => DimValue::DimValue(*n as i64),
                        Dim::Sym(s) => DimValue::DimParam(s.clone()),
                    });
                    sp.dim.push(dp);
                }
                tp.shape = Some(sp).into();
            }
            p.value = Some(TypeValue::TensorType(tp));
        }
        Type::Sequence(e) => {
            let mut sp = type_proto::Sequence::new();
            sp.elem_type = type_to_proto(e).into();
            p.value = Some(TypeValue::SequenceType(sp));
        }
        Type::Optional(e) => {
            let mut op = type_proto::Optional::new();
            op.elem_type = type_to_proto(e).into();
            p.value = Some(TypeValue::OptionalType(op));
        }
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharc_ir::DType;

    #[test]
    fn round_trip_with_symbols() {
        let t = Type::Sequence(Box::new(Type::tensor(DType::F16, vec![Dim::sym("batch"), Dim::Fixed(3)])));
        let p = type_to_proto(&t).unwrap();
        let mut syms = SymbolGen::default();
        assert_eq!(type_from_proto(&p, &mut syms).unwrap(), t);
        let o = Type::Optional(Box::new(Type::Tensor(TensorType::unranked(DType::Bool))));
        assert_eq!(type_from_proto(&type_to_proto(&o).unwrap(), &mut syms).unwrap(), o);
    }

    #[test]
    fn anonymous_dims_get_distinct_fresh_symbols() {
        let mut tp = type_proto::Tensor::new();
        tp.elem_type = 1;
        let mut sp = TensorShapeProto::new();
        sp.dim.push(Dimension::new());
        sp.dim.push(Dimension::new());
        tp.shape = Some(sp).into();
        let mut p = TypeProto::new();
        p.value = Some(TypeValue::TensorType(tp));
        let mut syms = SymbolGen::avoiding(["unk__0".to_string()].into_iter().collect());
        let t = type_from_proto(&p, &mut syms).unwrap();
        assert_eq!(t, Type::tensor(DType::F32, vec![Dim::sym("unk__1"), Dim::sym("unk__2")]));
    }
}

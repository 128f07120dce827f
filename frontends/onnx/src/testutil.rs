//! Builders for small ONNX protos in tests.

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_shape_proto::Dimension;
use onnx_protobuf::tensor_shape_proto::dimension::Value as DimValue;
use onnx_protobuf::type_proto::{self, Value as TypeValue};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};

/// A node of the default domain.
pub fn node(op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.to_string();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = outputs.iter().map(|s| s.to_string()).collect();
    n.attribute = attrs;
    n
}

pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.i = v;
    a.type_ = AttributeType::INT.into();
    a
}

pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.f = v;
    a.type_ = AttributeType::FLOAT.into();
    a
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.ints = v.to_vec();
    a.type_ = AttributeType::INTS.into();
    a
}

pub fn attr_floats(name: &str, v: &[f32]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.floats = v.to_vec();
    a.type_ = AttributeType::FLOATS.into();
    a
}

pub fn attr_string(name: &str, v: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.s = v.as_bytes().to_vec();
    a.type_ = AttributeType::STRING.into();
    a
}

pub fn attr_tensor(name: &str, t: TensorProto) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.t = Some(t).into();
    a.type_ = AttributeType::TENSOR.into();
    a
}

pub fn attr_graph(name: &str, g: GraphProto) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.g = Some(g).into();
    a.type_ = AttributeType::GRAPH.into();
    a
}

pub fn tensor_f32(name: &str, dims: &[i64], vals: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = 1;
    t.dims = dims.to_vec();
    t.float_data = vals.to_vec();
    t
}

pub fn tensor_i64(name: &str, dims: &[i64], vals: &[i64]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = 7;
    t.dims = dims.to_vec();
    t.int64_data = vals.to_vec();
    t
}

/// A tensor value info; `None` dims are anonymous, `Some(s)` with a
/// non-numeric string are symbolic.
pub fn vi(name: &str, elem: i32, dims: &[&str]) -> ValueInfoProto {
    let mut tt = type_proto::Tensor::new();
    tt.elem_type = elem;
    let mut sp = TensorShapeProto::new();
    for d in dims {
        let mut dp = Dimension::new();
        dp.value = match d.parse::<i64>() {
            Ok(v) => Some(DimValue::DimValue(v)),
            Err(_) if d.is_empty() => None,
            Err(_) => Some(DimValue::DimParam(d.to_string())),
        };
        sp.dim.push(dp);
    }
    tt.shape = Some(sp).into();
    let mut tp = TypeProto::new();
    tp.value = Some(TypeValue::TensorType(tt));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = Some(tp).into();
    v
}

pub fn graph(
    name: &str,
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
) -> GraphProto {
    let mut g = GraphProto::new();
    g.name = name.into();
    g.node = nodes;
    g.input = inputs;
    g.output = outputs;
    g.initializer = inits;
    g
}

pub fn model(g: GraphProto, opset: i64) -> ModelProto {
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut o = OperatorSetIdProto::new();
    o.version = opset;
    m.opset_import.push(o);
    m.producer_name = "test".into();
    m.graph = Some(g).into();
    m
}

pub fn bytes(m: &ModelProto) -> Vec<u8> {
    m.write_to_bytes().unwrap()
}

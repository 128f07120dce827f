//! Opset normalisation: older forms of ops are rewritten into the form of a
//! recent opset, so that the IR (and every pass and backend) sees one
//! version of each op.
//!
//! The rewrites follow the version history of `onnx.defs`: wherever a newer
//! version moved an attribute to an input, renamed an attribute value,
//! changed a default or changed semantics, the old form is translated here.
//! What cannot be translated faithfully is an error naming the node, never a
//! silent change of meaning.
//!
//! The list of rewrites is in the crate documentation.

use super::{Emitter, NodeIn};
use sharc_ir::op::{Flatten, Reshape, Scan, ShapeOf};
use sharc_ir::{Attr, Attrs, DType, Graph, Op, Subgraph, Tensor, Type, ValueInfo, ValueRef};

type Outputs = Vec<Option<ValueRef>>;

/// Rewrites `n` in place into its modern form, or, for rewrites that need
/// several nodes, emits them and returns the node's outputs.
pub(super) fn normalize(em: &mut Emitter, n: &mut NodeIn) -> Result<Option<Outputs>, String> {
    let v = n.version;
    if v < 7 {
        n.attrs.remove("consumed_inputs");
    }
    let op = n.op_type.clone();
    match op.as_str() {
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "And" | "Or" | "Xor" | "Equal" | "Greater" | "Less" if v < 7 => {
            legacy_broadcast(em, n)?
        }
        "Gemm" if v < 7 => {
            n.attrs.remove("broadcast");
        }
        "PRelu" if v < 7 => prelu_slope(em, n)?,
        "Concat" if v < 4 && !n.attrs.contains_key("axis") => {
            n.attrs.insert("axis".into(), Attr::Int(1));
        }
        "Softmax" | "LogSoftmax" | "Hardmax" if v < 13 => return coerce_2d(em, n),
        "BatchNormalization" if v < 14 => batch_norm(em, n)?,
        "Dropout" if v < 12 => return dropout(em, n),
        "Cast" if v < 6 => cast_name(n)?,
        "Clip" if v < 11 => {
            let min = take_float(&mut n.attrs, "min")?;
            let max = take_float(&mut n.attrs, "max")?;
            let x = input(n, 0, "input")?;
            n.inputs.truncate(1);
            if let Some(m) = min {
                let c = scalar_like(em, "min", m as f64, x)?;
                set_input(n, 1, c);
            }
            if let Some(m) = max {
                let c = scalar_like(em, "max", m as f64, x)?;
                set_input(n, 2, c);
            }
        }
        "Pad" if v < 11 => {
            let pads = match take_ints(&mut n.attrs, "pads")? {
                Some(p) => p,
                None => take_ints(&mut n.attrs, "paddings")?.ok_or("Pad needs a 'pads' attribute before opset 11")?,
            };
            let value = take_float(&mut n.attrs, "value")?.unwrap_or(0.0);
            let x = input(n, 0, "data")?;
            n.inputs.truncate(1);
            let p = em.ints("pads", &pads);
            set_input(n, 1, p);
            if value != 0.0 {
                let c = scalar_like(em, "pad_value", value as f64, x)?;
                set_input(n, 2, c);
            }
        }
        "Slice" if v < 10 => {
            let starts = take_ints(&mut n.attrs, "starts")?.ok_or("Slice needs 'starts' before opset 10")?;
            let ends = take_ints(&mut n.attrs, "ends")?.ok_or("Slice needs 'ends' before opset 10")?;
            let axes = take_ints(&mut n.attrs, "axes")?;
            n.inputs.truncate(1);
            let s = em.ints("starts", &starts);
            let e = em.ints("ends", &ends);
            set_input(n, 1, s);
            set_input(n, 2, e);
            if let Some(a) = axes {
                let a = em.ints("axes", &a);
                set_input(n, 3, a);
            }
        }
        "TopK" if v < 10 => {
            let k = take_int(&mut n.attrs, "k")?.ok_or("TopK needs 'k' before opset 10")?;
            n.inputs.truncate(1);
            let k = em.ints("k", &[k]);
            set_input(n, 1, k);
        }
        "Split" => {
            if v < 13
                && let Some(split) = take_ints(&mut n.attrs, "split")?
            {
                if n.inputs.get(1).copied().flatten().is_some() {
                    return Err("Split has both a 'split' attribute and a split input".to_string());
                }
                let s = em.ints("split", &split);
                set_input(n, 1, s);
            }
            if v < 18 && n.inputs.get(1).copied().flatten().is_none() && !n.attrs.contains_key("num_outputs") {
                // Before opset 18 the number of outputs alone said "split evenly".
                n.attrs.insert("num_outputs".into(), Attr::Int(n.outputs.len() as i64));
            }
        }
        "Squeeze" | "Unsqueeze" if v < 13 => {
            if let Some(axes) = take_ints(&mut n.attrs, "axes")? {
                n.inputs.truncate(1);
                let a = em.ints("axes", &axes);
                set_input(n, 1, a);
            } else if op == "Unsqueeze" {
                return Err("Unsqueeze needs an 'axes' attribute before opset 13".to_string());
            }
        }
        _ if op.starts_with("Reduce")
            && sharc_ir::ReduceKind::from_onnx(&op).is_some()
            && v < if op == "ReduceSum" { 13 } else { 18 } =>
        {
            // An empty list meant "all axes", which is also what no axes input means now.
            if let Some(axes) = take_ints(&mut n.attrs, "axes")?
                && !axes.is_empty()
            {
                n.inputs.truncate(1);
                let a = em.ints("axes", &axes);
                set_input(n, 1, a);
            }
        }
        "Reshape" if v < 5 => {
            let shape = take_ints(&mut n.attrs, "shape")?.ok_or("Reshape needs a 'shape' attribute before opset 5")?;
            n.inputs.truncate(1);
            let s = em.ints("shape", &shape);
            set_input(n, 1, s);
        }
        "Tile" if v < 6 => tile_v1(em, n)?,
        "Upsample" => upsample(em, n)?,
        "Resize" if v < 11 => {
            let x = input(n, 0, "X")?;
            let scales = input(n, 1, "scales")?;
            n.inputs = vec![Some(x), None, Some(scales)];
            resize_v10_attrs(&mut n.attrs);
        }
        "Scatter" => n.op_type = "ScatterElements".to_string(),
        "LpPool" | "GlobalLpPool" if v < 2 => {
            if let Some(Attr::Float(p)) = n.attrs.get("p").cloned() {
                if p.fract() != 0.0 || p < 1.0 {
                    return Err(format!("p = {p} is not a positive integer, which newer opsets require"));
                }
                n.attrs.insert("p".into(), Attr::Int(p as i64));
            }
        }
        "RNN" | "GRU" | "LSTM" if v < 7 => {
            n.attrs.remove("output_sequence");
        }
        "GridSample" if v < 20 => {
            if let Some(Attr::String(m)) = n.attrs.get_mut("mode") {
                match m.as_str() {
                    "bilinear" => *m = "linear".to_string(),
                    "bicubic" => *m = "cubic".to_string(),
                    _ => {}
                }
            }
        }
        "DFT" if v < 20 => {
            let axis = take_int(&mut n.attrs, "axis")?.unwrap_or(1);
            let a = em.constant_node("axis", Tensor::scalar(axis));
            set_input(n, 2, a);
        }
        "Scan" if v < 9 => return scan_v8(em, n).map(Some),
        "GroupNormalization" if v < 21 => group_norm_v18(em, n)?,
        "RoiAlign" if v < 16 => {
            n.attrs.insert("coordinate_transformation_mode".into(), Attr::String("output_half_pixel".into()));
        }
        _ => {}
    }
    Ok(None)
}

fn take_int(a: &mut Attrs, name: &str) -> Result<Option<i64>, String> {
    match a.remove(name) {
        None => Ok(None),
        Some(Attr::Int(i)) => Ok(Some(i)),
        Some(x) => Err(format!("attribute '{name}' should be int, found {}", x.kind())),
    }
}

fn take_float(a: &mut Attrs, name: &str) -> Result<Option<f32>, String> {
    match a.remove(name) {
        None => Ok(None),
        Some(Attr::Float(f)) => Ok(Some(f)),
        Some(Attr::Int(i)) => Ok(Some(i as f32)),
        Some(x) => Err(format!("attribute '{name}' should be float, found {}", x.kind())),
    }
}

fn take_ints(a: &mut Attrs, name: &str) -> Result<Option<Vec<i64>>, String> {
    match a.remove(name) {
        None => Ok(None),
        Some(Attr::Ints(v)) => Ok(Some(v)),
        Some(Attr::Floats(v)) if v.is_empty() => Ok(Some(Vec::new())),
        Some(x) => Err(format!("attribute '{name}' should be ints, found {}", x.kind())),
    }
}

fn take_floats(a: &mut Attrs, name: &str) -> Result<Option<Vec<f32>>, String> {
    match a.remove(name) {
        None => Ok(None),
        Some(Attr::Floats(v)) => Ok(Some(v)),
        Some(Attr::Ints(v)) => Ok(Some(v.into_iter().map(|x| x as f32).collect())),
        Some(x) => Err(format!("attribute '{name}' should be floats, found {}", x.kind())),
    }
}

fn take_string(a: &mut Attrs, name: &str) -> Result<Option<String>, String> {
    match a.remove(name) {
        None => Ok(None),
        Some(Attr::String(s)) => Ok(Some(s)),
        Some(x) => Err(format!("attribute '{name}' should be string, found {}", x.kind())),
    }
}

fn input(n: &NodeIn, port: usize, what: &str) -> Result<ValueRef, String> {
    n.inputs.get(port).copied().flatten().ok_or_else(|| format!("input {port} ('{what}') is required"))
}

fn set_input(n: &mut NodeIn, port: usize, v: ValueRef) {
    if n.inputs.len() <= port {
        n.inputs.resize(port + 1, None);
    }
    n.inputs[port] = Some(v);
}

/// A typed op from a name and attributes (for helper nodes).
fn typed(op_type: &str, attrs: Attrs) -> Result<Op, String> {
    Op::from_onnx_default_domain(op_type, attrs)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{op_type} is not modelled"))
}

/// A scalar tensor of `dtype` holding `v`, for dtypes that can hold it.
fn scalar_of(dtype: DType, v: f64) -> Option<Tensor> {
    Some(match dtype {
        DType::F32 => Tensor::scalar(v as f32),
        DType::F64 => Tensor::scalar(v),
        DType::F16 => Tensor::scalar(half::f16::from_f64(v)),
        DType::BF16 => Tensor::scalar(half::bf16::from_f64(v)),
        DType::I8 => Tensor::scalar(v as i8),
        DType::I16 => Tensor::scalar(v as i16),
        DType::I32 => Tensor::scalar(v as i32),
        DType::I64 => Tensor::scalar(v as i64),
        DType::U8 => Tensor::scalar(v as u8),
        DType::U16 => Tensor::scalar(v as u16),
        DType::U32 => Tensor::scalar(v as u32),
        DType::U64 => Tensor::scalar(v as u64),
        _ => return None,
    })
}

/// A scalar constant with the element type of `like`: a typed constant when
/// the type is known, else an f32 constant cast with CastLike at run time.
fn scalar_like(em: &mut Emitter, hint: &str, v: f64, like: ValueRef) -> Result<ValueRef, String> {
    match em.dtype(like) {
        Some(dt) => {
            let t = scalar_of(dt, v)
                .ok_or_else(|| format!("cannot make a {dt} constant for the old '{hint}' attribute"))?;
            Ok(em.constant_node(hint, t))
        }
        None => {
            let c = em.constant_node(hint, Tensor::scalar(v as f32));
            let cast = typed("CastLike", Attrs::new())?;
            Ok(em.op(cast, &[Some(c), Some(like)], hint))
        }
    }
}

/// Opset < 7 elementwise ops: `broadcast=1` with `axis` aligned B's dims at
/// `axis` of A; numpy broadcasting aligns them at the end, so B gets the
/// missing trailing unit dims.
fn legacy_broadcast(em: &mut Emitter, n: &mut NodeIn) -> Result<(), String> {
    let broadcast = take_int(&mut n.attrs, "broadcast")?.unwrap_or(0);
    let axis = take_int(&mut n.attrs, "axis")?;
    let (Some(axis), true) = (axis, broadcast != 0) else {
        // No broadcast (same shapes) or suffix broadcast: numpy rules agree.
        return Ok(());
    };
    let a = input(n, 0, "A")?;
    let b = input(n, 1, "B")?;
    let (Some(ra), Some(rb)) = (em.rank(a), em.rank(b)) else {
        return Err(format!(
            "legacy broadcast with axis={axis} needs the ranks of both inputs, which the model does not declare; \
             convert the model to opset 7 or later"
        ));
    };
    let (ra, rb) = (ra as i64, rb as i64);
    let axis = if axis < 0 { axis + ra } else { axis };
    if axis < 0 || axis + rb > ra {
        return Err(format!("legacy broadcast axis {axis} does not fit input ranks {ra} and {rb}"));
    }
    let trailing = ra - axis - rb;
    if trailing > 0 {
        let axes: Vec<i64> = (-trailing..0).collect();
        let axes = em.ints("axes", &axes);
        let b2 = em.op(Op::Unsqueeze, &[Some(b), Some(axes)], "broadcast_b");
        n.inputs[1] = Some(b2);
    }
    Ok(())
}

/// Opset < 7 PRelu applied a 1-D slope per channel (dim 1).
fn prelu_slope(em: &mut Emitter, n: &mut NodeIn) -> Result<(), String> {
    let x = input(n, 0, "X")?;
    let slope = input(n, 1, "slope")?;
    let slope_shape = em.graph.value_type(slope).shape().cloned();
    let Some(shape) = slope_shape else {
        return Err("opset < 7 PRelu needs the slope's shape to apply it per channel".to_string());
    };
    if shape.rank() != 1 || shape.dims()[0] == sharc_ir::Dim::Fixed(1) {
        return Ok(());
    }
    let rx = em.rank(x).ok_or("opset < 7 PRelu needs the rank of X to apply a 1-D slope per channel")?;
    if rx > 2 {
        let axes: Vec<i64> = (1..rx as i64 - 1).collect();
        let axes = em.ints("axes", &axes);
        let s2 = em.op(Op::Unsqueeze, &[Some(slope), Some(axes)], "slope");
        n.inputs[1] = Some(s2);
    }
    Ok(())
}

/// Opset < 13 Softmax/LogSoftmax/Hardmax flattened the input to 2-D at
/// `axis` (default 1) and normalised each row.
fn coerce_2d(em: &mut Emitter, n: &mut NodeIn) -> Result<Option<Outputs>, String> {
    let axis = take_int(&mut n.attrs, "axis")?.unwrap_or(1);
    if !n.attrs.is_empty() {
        return Ok(None);
    }
    let x = input(n, 0, "input")?;
    let last = axis == -1 || em.rank(x).is_some_and(|r| r >= 1 && axis == r as i64 - 1);
    if last {
        // Rows of the 2-D view are exactly the last axis: same result.
        n.attrs.insert("axis".into(), Attr::Int(axis));
        return Ok(None);
    }
    let shape = em.op(Op::Shape(ShapeOf { start: 0, end: None }), &[Some(x)], "shape");
    let flat = em.op(Op::Flatten(Flatten { axis }), &[Some(x)], "flatten");
    let mut a = Attrs::new();
    a.insert("axis".into(), Attr::Int(1));
    let op = typed(&n.op_type, a)?;
    let hint = n.op_type.to_lowercase();
    let name = em.graph.fresh_name(&hint);
    let id = em.graph.add_node(op, &n.name, &[Some(flat)], vec![ValueInfo::new(name, Type::Unknown)]);
    let y = ValueRef::new(id, 0);
    em.main_node(Op::Reshape(Reshape { allowzero: false }), "", &[Some(y), Some(shape)], &n.outputs, false).map(Some)
}

fn batch_norm(em: &mut Emitter, n: &mut NodeIn) -> Result<(), String> {
    let spatial = take_int(&mut n.attrs, "spatial")?;
    if n.version < 9 && spatial == Some(0) {
        return Err("BatchNormalization with spatial=0 (per-activation statistics) is not supported; \
                    convert the model to opset 9 or later"
            .to_string());
    }
    // Inference semantics, as every runtime applies to these models.
    n.attrs.remove("is_test");
    if let Some(o) = n.outputs.iter().skip(1).find(|o| !o.is_empty() && em.used.contains(*o)) {
        return Err(format!(
            "the training output '{o}' of an opset < 14 BatchNormalization is used; its meaning changed in opset 14 \
             and sharc does not support it; export the model for inference"
        ));
    }
    n.outputs.truncate(1);
    Ok(())
}

fn dropout(em: &mut Emitter, n: &mut NodeIn) -> Result<Option<Outputs>, String> {
    // Inference semantics (identity), as every runtime applies to these models.
    n.attrs.remove("is_test");
    if let Some(r) = take_float(&mut n.attrs, "ratio")? {
        n.inputs.truncate(1);
        let c = em.constant_node("ratio", Tensor::scalar(r));
        set_input(n, 1, c);
    }
    let mask_used = n.outputs.get(1).is_some_and(|m| !m.is_empty() && em.used.contains(m));
    if !mask_used {
        n.outputs.truncate(1);
        return Ok(None);
    }
    if n.version >= 10 {
        return Ok(None);
    }
    // Before opset 10 the mask had the data's type; now it is bool.
    let x = input(n, 0, "data")?;
    let op = typed("Dropout", std::mem::take(&mut n.attrs))?;
    let mask_tmp = em.graph.fresh_name("mask_bool");
    let outs = vec![n.outputs[0].clone(), mask_tmp];
    let r = em.main_node(op, &n.name, &n.inputs, &outs, true)?;
    let mask = r[1].expect("the mask output was named");
    let cast = typed("CastLike", Attrs::new())?;
    let ty = em.declared(&n.outputs[1]);
    let id = em.graph.add_node(cast, "", &[Some(mask), Some(x)], vec![ValueInfo::new(n.outputs[1].clone(), ty)]);
    Ok(Some(vec![r[0], Some(ValueRef::new(id, 0))]))
}

fn cast_name(n: &mut NodeIn) -> Result<(), String> {
    let Some(Attr::String(s)) = n.attrs.get("to") else { return Ok(()) };
    let code = match s.to_ascii_uppercase().as_str() {
        "FLOAT" => 1,
        "UINT8" => 2,
        "INT8" => 3,
        "UINT16" => 4,
        "INT16" => 5,
        "INT32" => 6,
        "INT64" => 7,
        "STRING" => 8,
        "BOOL" => 9,
        "FLOAT16" => 10,
        "DOUBLE" => 11,
        "UINT32" => 12,
        "UINT64" => 13,
        "COMPLEX64" => 14,
        "COMPLEX128" => 15,
        other => return Err(format!("Cast target type '{other}' is not an ONNX type name")),
    };
    n.attrs.insert("to".into(), Attr::Int(code));
    Ok(())
}

/// Opset < 6 Tile took a scalar count and an axis; now it takes one count
/// per dim.
fn tile_v1(em: &mut Emitter, n: &mut NodeIn) -> Result<(), String> {
    let x = input(n, 0, "input")?;
    let tiles = input(n, 1, "tiles")?;
    let axis = input(n, 2, "axis")?;
    let known =
        (em.rank(x), em.constant(tiles).and_then(|t| t.to_i64_vec()), em.constant(axis).and_then(|t| t.to_i64_vec()));
    let repeats = if let (Some(r), Some(t), Some(a)) = known {
        let (&[t], &[a]) = (t.as_slice(), a.as_slice()) else {
            return Err("Tile's 'tiles' and 'axis' must be scalars".to_string());
        };
        let a = if a < 0 { a + r as i64 } else { a };
        if a < 0 || a >= r as i64 {
            return Err(format!("Tile axis {a} is out of range for rank {r}"));
        }
        let mut rep = vec![1i64; r];
        rep[a as usize] = t;
        em.ints("repeats", &rep)
    } else {
        // repeats = ScatterElements(ones(rank), [axis], [tiles]), at run time.
        let shape = em.op(Op::Shape(ShapeOf { start: 0, end: None }), &[Some(x)], "shape");
        let rank = em.op(Op::Shape(ShapeOf { start: 0, end: None }), &[Some(shape)], "rank");
        let mut a = Attrs::new();
        a.insert("value".into(), Attr::Tensor(Tensor::from_vec(&[1], vec![1i64])));
        let ones = em.op(typed("ConstantOfShape", a)?, &[Some(rank)], "ones");
        let one = em.ints("shape1", &[1]);
        let mut to64 = Attrs::new();
        to64.insert("to".into(), Attr::Int(DType::I64.onnx_code() as i64));
        let axis64 = em.op(typed("Cast", to64.clone())?, &[Some(axis)], "axis");
        let tiles64 = em.op(typed("Cast", to64)?, &[Some(tiles)], "tiles");
        let idx = em.op(Op::Reshape(Reshape { allowzero: false }), &[Some(axis64), Some(one)], "axis");
        let upd = em.op(Op::Reshape(Reshape { allowzero: false }), &[Some(tiles64), Some(one)], "tiles");
        em.op(typed("ScatterElements", Attrs::new())?, &[Some(ones), Some(idx), Some(upd)], "repeats")
    };
    n.inputs = vec![Some(x), Some(repeats)];
    Ok(())
}

/// The coordinate mapping of opset 10 Resize and of Upsample.
fn resize_v10_attrs(attrs: &mut Attrs) {
    attrs.insert("coordinate_transformation_mode".into(), Attr::String("asymmetric".into()));
    let nearest = match attrs.get("mode") {
        None => true,
        Some(Attr::String(m)) => m == "nearest",
        Some(_) => false,
    };
    if nearest {
        attrs.insert("nearest_mode".into(), Attr::String("floor".into()));
    }
}

fn upsample(em: &mut Emitter, n: &mut NodeIn) -> Result<(), String> {
    let x = input(n, 0, "X")?;
    let mut mode = take_string(&mut n.attrs, "mode")?.unwrap_or_else(|| "nearest".to_string());
    if mode == "bilinear" {
        mode = "linear".to_string();
    }
    let scales = if n.version < 7 {
        let h = take_float(&mut n.attrs, "height_scale")?.ok_or("Upsample needs 'height_scale' before opset 7")?;
        let w = take_float(&mut n.attrs, "width_scale")?.ok_or("Upsample needs 'width_scale' before opset 7")?;
        em.constant_node("scales", Tensor::from_vec(&[4], vec![1.0f32, 1.0, h, w]))
    } else if n.version < 9 {
        let s = take_floats(&mut n.attrs, "scales")?.ok_or("Upsample needs 'scales' before opset 9")?;
        em.constant_node("scales", Tensor::from_vec(&[s.len()], s))
    } else {
        input(n, 1, "scales")?
    };
    n.op_type = "Resize".to_string();
    n.inputs = vec![Some(x), None, Some(scales)];
    n.attrs.insert("mode".into(), Attr::String(mode));
    resize_v10_attrs(&mut n.attrs);
    Ok(())
}

/// Opset 18 GroupNormalization had one scale and bias per group; since
/// opset 21 they are per channel, so each group's value is repeated C/G times.
fn group_norm_v18(em: &mut Emitter, n: &mut NodeIn) -> Result<(), String> {
    let groups = match n.attrs.get("num_groups") {
        Some(Attr::Int(g)) if *g > 0 => *g,
        _ => return Err("GroupNormalization needs a positive 'num_groups'".to_string()),
    };
    let x = input(n, 0, "X")?;
    let channels = em.op(Op::Shape(ShapeOf { start: 1, end: Some(2) }), &[Some(x)], "channels");
    let g = em.ints("groups", &[groups]);
    let per_group = em.op(Op::Binary(sharc_ir::BinaryOp::Div), &[Some(channels), Some(g)], "per_group");
    let mut cat = Attrs::new();
    cat.insert("axis".into(), Attr::Int(0));
    let grid = em.op(typed("Concat", cat)?, &[Some(g), Some(per_group)], "group_grid");
    let one = em.ints("axes", &[1]);
    for port in [1, 2] {
        let v = input(n, port, if port == 1 { "scale" } else { "bias" })?;
        let col = em.op(Op::Unsqueeze, &[Some(v), Some(one)], "per_group_col");
        let grid_v = em.op(Op::Expand, &[Some(col), Some(grid)], "per_channel_grid");
        let flat = em.op(Op::Reshape(Reshape { allowzero: false }), &[Some(grid_v), Some(channels)], "per_channel");
        n.inputs[port] = Some(flat);
    }
    Ok(())
}

/// Opset 8 Scan has a leading batch dim on every input and output. It is
/// the same as an opset-9 Scan over the batch (every input is a scan input,
/// every output a scan output) whose body runs the original, unbatched scan.
fn scan_v8(em: &mut Emitter, n: &mut NodeIn) -> Result<Outputs, String> {
    if n.inputs.first().copied().flatten().is_some() {
        return Err("an opset-8 Scan with sequence_lens is not supported; convert the model to opset 9 or later".into());
    }
    let body = match n.attrs.remove("body") {
        Some(Attr::Graph(b)) => b,
        _ => return Err("Scan needs a 'body' graph attribute".to_string()),
    };
    let num_scan = take_int(&mut n.attrs, "num_scan_inputs")?.ok_or("Scan needs 'num_scan_inputs'")?;
    let directions = take_ints(&mut n.attrs, "directions")?;
    if let Some(k) = n.attrs.keys().next() {
        return Err(format!("unknown attribute '{k}' for an opset-8 Scan"));
    }
    let rest: Vec<ValueRef> = n
        .inputs
        .iter()
        .skip(1)
        .map(|v| v.ok_or("opset-8 Scan inputs after sequence_lens may not be empty"))
        .collect::<Result<_, _>>()?;
    if num_scan < 1 || num_scan as usize > rest.len() {
        return Err(format!("num_scan_inputs = {num_scan} does not fit {} inputs", rest.len()));
    }

    let cap_names: Vec<String> = body.captures().iter().map(|&c| body.node(c).outputs[0].name.clone()).collect();
    let mut b = Graph::new(format!("{}_per_batch", body.name));
    for c in &cap_names {
        b.reserve_name(c);
    }
    let mut formal = Vec::with_capacity(rest.len());
    for &r in &rest {
        let hint = format!("{}_item", em.graph.value_info(r).name);
        let name = b.fresh_name(&hint);
        formal.push(b.add_input(name, Type::Unknown));
    }
    let mut b_caps = Vec::with_capacity(n.captures.len());
    for (name, &outer) in cap_names.iter().zip(&n.captures) {
        b_caps.push(b.add_capture(name.clone(), em.graph.value_type(outer).clone()));
    }
    let inner = Op::Scan(Scan {
        body,
        num_scan_inputs: num_scan,
        scan_input_axes: None,
        scan_input_directions: directions,
        scan_output_axes: None,
        scan_output_directions: None,
    });
    let infos: Vec<ValueInfo> = n
        .outputs
        .iter()
        .map(|o| {
            ValueInfo::new(b.fresh_name(&format!("{}_item", if o.is_empty() { "scan_out" } else { o })), Type::Unknown)
        })
        .collect();
    let count = infos.len();
    let inner_inputs: Vec<Option<ValueRef>> = formal.iter().chain(&b_caps).copied().map(Some).collect();
    let id = b.add_node(inner, "", &inner_inputs, infos);
    for i in 0..count {
        let name = b.value_info(ValueRef::new(id, i as u32)).name.clone();
        b.add_output(name, ValueRef::new(id, i as u32));
    }
    let outer = Op::Scan(Scan {
        body: Subgraph::new(b),
        num_scan_inputs: rest.len() as i64,
        scan_input_axes: None,
        scan_input_directions: None,
        scan_output_axes: None,
        scan_output_directions: None,
    });
    let inputs: Vec<Option<ValueRef>> = rest.iter().chain(&n.captures).copied().map(Some).collect();
    em.main_node(outer, &n.name, &inputs, &n.outputs, true)
}

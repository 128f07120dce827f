//! Control flow (If, Loop, Scan, SequenceMap), sequences and optionals.
//!
//! Bodies run through [`crate::run_graph`]. A node with bodies lists the
//! outer values its bodies capture after its regular inputs (see
//! `sharc_ir::op::control`), so every body gets those trailing inputs as its
//! captures.

use super::{OpContext, OpResult};
use crate::run_graph;
use crate::util::{normalize_axis, single, tensor_arg};
use ndarray::Axis;
use sharc_ir::{DType, EvalError, Graph, Op, Tensor, TensorData, Type, Value, map_array};

/// Runs the op if it belongs to this family.
pub fn run(op: &Op, inputs: &[Option<Value>], cx: &OpContext) -> OpResult {
    Some(match op {
        Op::If(a) => run_if(&a.then_branch, &a.else_branch, inputs),
        Op::Loop(a) => run_loop(&a.body, inputs, cx),
        Op::Scan(a) => run_scan(a, inputs, cx),
        Op::SequenceMap(a) => run_sequence_map(&a.body, inputs),
        Op::SequenceEmpty(_) => Ok(vec![Value::Sequence(Vec::new())]),
        Op::SequenceConstruct => inputs
            .iter()
            .map(|v| v.clone().ok_or_else(|| EvalError::new("SequenceConstruct inputs are required")))
            .collect::<Result<Vec<_>, _>>()
            .map(|s| vec![Value::Sequence(s)]),
        Op::SequenceLength => sequence(inputs, 0).map(|s| vec![Value::Tensor(Tensor::scalar(s.len() as i64))]),
        Op::SequenceAt => sequence_at(inputs),
        Op::SequenceInsert => sequence_insert(inputs),
        Op::SequenceErase => sequence_erase(inputs),
        Op::SplitToSequence(a) => split_to_sequence(inputs, a.axis, a.keepdims),
        Op::ConcatFromSequence(a) => concat_from_sequence(inputs, a.axis, a.new_axis),
        Op::Optional(_) => Ok(vec![Value::Optional(inputs.first().cloned().flatten().map(Box::new))]),
        Op::OptionalHasElement => {
            let has = match inputs.first() {
                None | Some(None) | Some(Some(Value::Optional(None))) => false,
                Some(Some(_)) => true,
            };
            single(Tensor::scalar(has))
        }
        Op::OptionalGetElement => match inputs.first() {
            Some(Some(Value::Optional(Some(v)))) => Ok(vec![(**v).clone()]),
            Some(Some(Value::Optional(None))) => Err(EvalError::new("OptionalGetElement on an empty optional")),
            Some(Some(v)) => Ok(vec![v.clone()]),
            _ => Err(EvalError::new("OptionalGetElement needs an input")),
        },
        _ => return None,
    })
}

/// Splits a node's inputs into its regular inputs and the values its bodies capture.
fn split_captures<'a>(
    body: &Graph,
    inputs: &'a [Option<Value>],
) -> Result<(&'a [Option<Value>], Vec<Value>), EvalError> {
    let c = body.captures().len();
    if inputs.len() < c {
        return Err(EvalError::new(format!("the body captures {c} values but the node has {} inputs", inputs.len())));
    }
    let (regular, captured) = inputs.split_at(inputs.len() - c);
    let captured = captured
        .iter()
        .map(|v| v.clone().ok_or_else(|| EvalError::new("a captured outer value is missing")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((regular, captured))
}

fn scalar_bool(t: &Tensor, what: &str) -> Result<bool, EvalError> {
    if t.len() != 1 {
        return Err(EvalError::new(format!("{what} must hold one element, it has shape {:?}", t.shape())));
    }
    match t.data() {
        TensorData::Bool(a) => Ok(*a.iter().next().expect("one element")),
        _ => t
            .to_f64_vec()
            .map(|v| v[0] != 0.0)
            .ok_or_else(|| EvalError::new(format!("{what} must be a bool tensor, got {}", t.dtype()))),
    }
}

fn run_if(then_branch: &Graph, else_branch: &Graph, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let (regular, captured) = split_captures(then_branch, inputs)?;
    let cond = scalar_bool(tensor_arg(regular, 0, "cond")?, "If's condition")?;
    run_graph(if cond { then_branch } else { else_branch }, &[], &captured)
}

fn run_loop(body: &Graph, inputs: &[Option<Value>], cx: &OpContext) -> Result<Vec<Value>, EvalError> {
    let (regular, captured) = split_captures(body, inputs)?;
    if regular.len() < 2 {
        return Err(EvalError::new("Loop needs the trip count and condition inputs (either may be empty)"));
    }
    let max_trips = match &regular[0] {
        Some(Value::Tensor(t)) => Some(
            t.to_i64_vec()
                .and_then(|v| v.first().copied())
                .ok_or_else(|| EvalError::new("Loop's M must be an int64 scalar"))?,
        ),
        None => None,
        Some(v) => return Err(EvalError::new(format!("Loop's M must be a tensor, got {}", v.describe()))),
    };
    let mut cond = match &regular[1] {
        Some(Value::Tensor(t)) => scalar_bool(t, "Loop's condition")?,
        None => true,
        Some(v) => return Err(EvalError::new(format!("Loop's condition must be a tensor, got {}", v.describe()))),
    };
    let mut carried: Vec<Value> = regular[2..]
        .iter()
        .map(|v| v.clone().ok_or_else(|| EvalError::new("Loop's loop-carried initial values are required")))
        .collect::<Result<_, _>>()?;
    let n = carried.len();
    let k = body.outputs().len().checked_sub(1 + n).ok_or_else(|| {
        EvalError::new(format!(
            "Loop's body has {} outputs, fewer than 1 + {n} loop-carried values",
            body.outputs().len()
        ))
    })?;
    let mut scans: Vec<Vec<Value>> = vec![Vec::new(); k];
    let mut i: i64 = 0;
    while cond && max_trips.is_none_or(|m| i < m) {
        let mut args = vec![Value::Tensor(Tensor::scalar(i)), Value::Tensor(Tensor::scalar(cond))];
        args.extend(carried.iter().cloned());
        let mut out = run_graph(body, &args, &captured)?.into_iter();
        let c = out.next().expect("body has at least one output");
        cond = scalar_bool(
            c.as_tensor().ok_or_else(|| EvalError::new("Loop's body condition must be a tensor"))?,
            "Loop's body condition",
        )?;
        carried = out.by_ref().take(n).collect();
        for (s, v) in scans.iter_mut().zip(out) {
            s.push(v);
        }
        i += 1;
    }
    let mut result = carried;
    for (j, s) in scans.into_iter().enumerate() {
        let ty = cx.output_types.get(n + j);
        result.push(stack(s, 0, ty)?);
    }
    Ok(result)
}

/// Stacks per-iteration values along a new axis (tensors) or keeps them as a
/// sequence when the iterations produced sequences.
fn stack(values: Vec<Value>, axis: usize, ty: Option<&Type>) -> Result<Value, EvalError> {
    if values.is_empty() {
        let dtype = ty.and_then(|t| t.dtype()).unwrap_or(DType::F32);
        return Ok(Value::Tensor(Tensor::zeros(dtype, &[0])));
    }
    if values.iter().all(|v| matches!(v, Value::Sequence(_))) {
        return Ok(Value::Sequence(values));
    }
    let tensors: Vec<Tensor> = values
        .into_iter()
        .map(|v| v.into_tensor().ok_or_else(|| EvalError::new("scan outputs must be tensors")))
        .collect::<Result<_, _>>()?;
    stack_tensors(&tensors, axis).map(Value::Tensor)
}

fn stack_tensors(tensors: &[Tensor], axis: usize) -> Result<Tensor, EvalError> {
    let expanded: Vec<Tensor> = tensors
        .iter()
        .map(|t| {
            let mut shape = t.shape().to_vec();
            if axis > shape.len() {
                return Err(EvalError::new(format!("cannot stack along axis {axis} of rank-{} tensors", shape.len())));
            }
            shape.insert(axis, 1);
            t.reshape(&shape).ok_or_else(|| EvalError::new("reshape failed"))
        })
        .collect::<Result<_, _>>()?;
    concat(&expanded, axis)
}

/// Concatenates tensors of one dtype along an axis.
fn concat(tensors: &[Tensor], axis: usize) -> Result<Tensor, EvalError> {
    let first = tensors.first().ok_or_else(|| EvalError::new("nothing to concatenate"))?;
    let dtype = first.dtype();
    if let Some(t) = tensors.iter().find(|t| t.dtype() != dtype) {
        return Err(EvalError::new(format!("cannot concatenate {} with {}", dtype, t.dtype())));
    }
    for t in tensors {
        if t.rank() != first.rank() || axis >= t.rank() {
            return Err(EvalError::new(format!(
                "cannot concatenate shapes {:?} and {:?} on axis {axis}",
                first.shape(),
                t.shape()
            )));
        }
        for d in 0..t.rank() {
            if d != axis && t.shape()[d] != first.shape()[d] {
                return Err(EvalError::new(format!(
                    "cannot concatenate shapes {:?} and {:?} on axis {axis}",
                    first.shape(),
                    t.shape()
                )));
            }
        }
    }
    macro_rules! cat {
        ($variant:ident, $a:ident) => {{
            let views: Vec<_> = tensors
                .iter()
                .map(|t| match t.data() {
                    TensorData::$variant(a) => a.view(),
                    _ => unreachable!("dtypes were checked"),
                })
                .collect();
            ndarray::concatenate(Axis(axis), &views).map_err(|e| EvalError::new(e.to_string()))?.into_shared()
        }};
    }
    let data = match first.data() {
        TensorData::F32(_) => TensorData::F32(cat!(F32, a)),
        TensorData::F64(_) => TensorData::F64(cat!(F64, a)),
        TensorData::F16(_) => TensorData::F16(cat!(F16, a)),
        TensorData::BF16(_) => TensorData::BF16(cat!(BF16, a)),
        TensorData::I8(_) => TensorData::I8(cat!(I8, a)),
        TensorData::I16(_) => TensorData::I16(cat!(I16, a)),
        TensorData::I32(_) => TensorData::I32(cat!(I32, a)),
        TensorData::I64(_) => TensorData::I64(cat!(I64, a)),
        TensorData::U8(_) => TensorData::U8(cat!(U8, a)),
        TensorData::U16(_) => TensorData::U16(cat!(U16, a)),
        TensorData::U32(_) => TensorData::U32(cat!(U32, a)),
        TensorData::U64(_) => TensorData::U64(cat!(U64, a)),
        TensorData::Bool(_) => TensorData::Bool(cat!(Bool, a)),
        TensorData::String(_) => TensorData::String(cat!(String, a)),
        TensorData::Complex64(_) => TensorData::Complex64(cat!(Complex64, a)),
        TensorData::Complex128(_) => TensorData::Complex128(cat!(Complex128, a)),
        TensorData::Narrow { dtype, .. } => {
            let views: Vec<_> = tensors.iter().map(|t| t.as_codes().expect("same dtype").view()).collect();
            TensorData::Narrow {
                dtype: *dtype,
                codes: ndarray::concatenate(Axis(axis), &views)
                    .map_err(|e| EvalError::new(e.to_string()))?
                    .into_shared(),
            }
        }
    };
    Ok(Tensor::new(data))
}

/// Slice `i` of a tensor along `axis`, with that axis removed.
fn slice_along(t: &Tensor, axis: usize, i: usize) -> Tensor {
    Tensor::new(map_array!(t.data(), a => a.index_axis(Axis(axis), i).to_owned().into_shared()))
}

fn run_scan(a: &sharc_ir::op::Scan, inputs: &[Option<Value>], _cx: &OpContext) -> Result<Vec<Value>, EvalError> {
    let body = &a.body;
    let (regular, captured) = split_captures(body, inputs)?;
    let m = usize::try_from(a.num_scan_inputs).map_err(|_| EvalError::new("num_scan_inputs must be positive"))?;
    let n = regular
        .len()
        .checked_sub(m)
        .ok_or_else(|| EvalError::new(format!("Scan has {} inputs but num_scan_inputs is {m}", regular.len())))?;
    let mut state: Vec<Value> = regular[..n]
        .iter()
        .map(|v| v.clone().ok_or_else(|| EvalError::new("Scan's state inputs are required")))
        .collect::<Result<_, _>>()?;
    let scan_in: Vec<&Tensor> = (0..m).map(|j| tensor_arg(regular, n + j, "scan input")).collect::<Result<_, _>>()?;
    let in_axes: Vec<usize> = (0..m)
        .map(|j| {
            normalize_axis(a.scan_input_axes.as_ref().and_then(|v| v.get(j).copied()).unwrap_or(0), scan_in[j].rank())
        })
        .collect::<Result<_, _>>()?;
    let in_rev: Vec<bool> =
        (0..m).map(|j| a.scan_input_directions.as_ref().and_then(|v| v.get(j).copied()).unwrap_or(0) == 1).collect();
    let len = scan_in.first().map(|t| t.shape()[in_axes[0]]).unwrap_or(0);
    for (j, t) in scan_in.iter().enumerate() {
        if t.shape()[in_axes[j]] != len {
            return Err(EvalError::new(format!(
                "scan inputs disagree on the sequence length: {len} vs {}",
                t.shape()[in_axes[j]]
            )));
        }
    }
    let k = body.outputs().len().checked_sub(n).ok_or_else(|| EvalError::new("Scan's body has too few outputs"))?;
    let mut scans: Vec<Vec<Tensor>> = vec![Vec::new(); k];
    for step in 0..len {
        let mut args = state.clone();
        for j in 0..m {
            let i = if in_rev[j] { len - 1 - step } else { step };
            args.push(Value::Tensor(slice_along(scan_in[j], in_axes[j], i)));
        }
        let mut out = run_graph(body, &args, &captured)?.into_iter();
        state = out.by_ref().take(n).collect();
        for (s, v) in scans.iter_mut().zip(out) {
            s.push(v.into_tensor().ok_or_else(|| EvalError::new("Scan outputs must be tensors"))?);
        }
    }
    let mut result = state;
    for (j, mut s) in scans.into_iter().enumerate() {
        if a.scan_output_directions.as_ref().and_then(|v| v.get(j).copied()).unwrap_or(0) == 1 {
            s.reverse();
        }
        if s.is_empty() {
            result.push(Value::Tensor(Tensor::zeros(DType::F32, &[0])));
            continue;
        }
        let rank = s[0].rank() + 1;
        let axis = normalize_axis(a.scan_output_axes.as_ref().and_then(|v| v.get(j).copied()).unwrap_or(0), rank)?;
        result.push(Value::Tensor(stack_tensors(&s, axis)?));
    }
    Ok(result)
}

fn run_sequence_map(body: &Graph, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let (regular, captured) = split_captures(body, inputs)?;
    let args: Vec<&Value> = regular
        .iter()
        .map(|v| v.as_ref().ok_or_else(|| EvalError::new("SequenceMap inputs are required")))
        .collect::<Result<_, _>>()?;
    let len = match args.first() {
        Some(Value::Sequence(s)) => s.len(),
        _ => return Err(EvalError::new("SequenceMap's first input must be a sequence")),
    };
    let mut outs: Vec<Vec<Value>> = vec![Vec::new(); body.outputs().len()];
    for i in 0..len {
        let step: Vec<Value> = args
            .iter()
            .map(|v| match v {
                Value::Sequence(s) => {
                    s.get(i).cloned().ok_or_else(|| EvalError::new("SequenceMap's sequences differ in length"))
                }
                other => Ok((*other).clone()),
            })
            .collect::<Result<_, _>>()?;
        for (o, v) in outs.iter_mut().zip(run_graph(body, &step, &captured)?) {
            o.push(v);
        }
    }
    Ok(outs.into_iter().map(Value::Sequence).collect())
}

fn sequence(inputs: &[Option<Value>], i: usize) -> Result<&Vec<Value>, EvalError> {
    match inputs.get(i) {
        Some(Some(Value::Sequence(s))) => Ok(s),
        Some(Some(v)) => Err(EvalError::new(format!("input {i} must be a sequence, got {}", v.describe()))),
        _ => Err(EvalError::new(format!("input {i} (a sequence) is required"))),
    }
}

/// Resolves a (possibly negative) position into a sequence of length `len`;
/// `insert` allows `len` itself.
fn position(inputs: &[Option<Value>], i: usize, len: usize, insert: bool) -> Result<Option<usize>, EvalError> {
    let Some(Some(Value::Tensor(t))) = inputs.get(i) else { return Ok(None) };
    let p = t
        .to_i64_vec()
        .and_then(|v| v.first().copied())
        .ok_or_else(|| EvalError::new("position must be an integer scalar"))?;
    let n = len as i64;
    let q = if p < 0 { p + n } else { p };
    let hi = if insert { n } else { n - 1 };
    if q < 0 || q > hi {
        return Err(EvalError::new(format!("position {p} is out of range for a sequence of length {len}")));
    }
    Ok(Some(q as usize))
}

fn sequence_at(inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let s = sequence(inputs, 0)?;
    let p = position(inputs, 1, s.len(), false)?.ok_or_else(|| EvalError::new("SequenceAt needs a position"))?;
    Ok(vec![s[p].clone()])
}

fn sequence_insert(inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let mut s = sequence(inputs, 0)?.clone();
    let v = inputs.get(1).cloned().flatten().ok_or_else(|| EvalError::new("SequenceInsert needs a tensor"))?;
    let p = position(inputs, 2, s.len(), true)?.unwrap_or(s.len());
    s.insert(p, v);
    Ok(vec![Value::Sequence(s)])
}

fn sequence_erase(inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let mut s = sequence(inputs, 0)?.clone();
    if s.is_empty() {
        return Err(EvalError::new("SequenceErase on an empty sequence"));
    }
    let p = position(inputs, 1, s.len(), false)?.unwrap_or(s.len() - 1);
    s.remove(p);
    Ok(vec![Value::Sequence(s)])
}

fn split_to_sequence(inputs: &[Option<Value>], axis: i64, keepdims: bool) -> Result<Vec<Value>, EvalError> {
    let t = tensor_arg(inputs, 0, "input")?;
    let axis = normalize_axis(axis, t.rank())?;
    let dim = t.shape()[axis];
    let sizes: Vec<usize> = match crate::util::opt_tensor_arg(inputs, 1, "split")? {
        None => vec![1; dim],
        Some(s) => {
            let v = crate::util::i64_values(s, "split")?;
            if s.rank() == 0 {
                let chunk = usize::try_from(v[0])
                    .ok()
                    .filter(|&c| c > 0)
                    .ok_or_else(|| EvalError::new("split must be positive"))?;
                let mut out = vec![chunk; dim / chunk];
                if dim % chunk != 0 {
                    out.push(dim % chunk);
                }
                out
            } else {
                let out: Vec<usize> = v
                    .iter()
                    .map(|&x| usize::try_from(x).map_err(|_| EvalError::new("split sizes must be non-negative")))
                    .collect::<Result<_, _>>()?;
                if out.iter().sum::<usize>() != dim {
                    return Err(EvalError::new(format!("split sizes {v:?} do not add up to dim {dim}")));
                }
                out
            }
        }
    };
    // Only an absent split may drop the axis (ONNX ignores keepdims otherwise).
    let squeeze = !keepdims && crate::util::opt_tensor_arg(inputs, 1, "split")?.is_none();
    let mut start = 0;
    let mut seq = Vec::with_capacity(sizes.len());
    for size in sizes {
        let part = Tensor::new(
            map_array!(t.data(), a => a.slice_axis(Axis(axis), ndarray::Slice::from(start..start + size)).to_owned().into_shared()),
        );
        start += size;
        let part = if squeeze {
            let mut shape = part.shape().to_vec();
            shape.remove(axis);
            part.reshape(&shape).ok_or_else(|| EvalError::new("squeeze failed"))?
        } else {
            part
        };
        seq.push(Value::Tensor(part));
    }
    Ok(vec![Value::Sequence(seq)])
}

fn concat_from_sequence(inputs: &[Option<Value>], axis: i64, new_axis: bool) -> Result<Vec<Value>, EvalError> {
    let s = sequence(inputs, 0)?;
    let tensors: Vec<Tensor> = s
        .iter()
        .map(|v| v.as_tensor().cloned().ok_or_else(|| EvalError::new("ConcatFromSequence needs tensors")))
        .collect::<Result<_, _>>()?;
    let first = tensors.first().ok_or_else(|| EvalError::new("ConcatFromSequence of an empty sequence"))?;
    if new_axis {
        let axis = normalize_axis(axis, first.rank() + 1)?;
        return single(stack_tensors(&tensors, axis)?);
    }
    let axis = normalize_axis(axis, first.rank())?;
    single(concat(&tensors, axis)?)
}

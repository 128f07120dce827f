//! Ops that move, select or re-shape data: the family where shape values are
//! produced (`Shape`, `Size`), carried (`Gather`, `Slice`, `Concat`,
//! `Unsqueeze`, `Squeeze`, `Reshape`...) and consumed (`Reshape`, `Expand`,
//! `Tile`, `Range`, `ConstantOfShape`, `Pad`, `Resize`...).

use super::elementwise::{broadcast, passthrough, same_dtype};
use super::symbolic::Expr;
use super::value::{MAX_TRACKED, SymData, SymTensor, broadcast_concrete, broadcast_index, remap};
use super::{OpCx, RuleResult, norm_axes, norm_axis, out, out_value, show};
use crate::op::{CoordinateTransform, KeepAspectRatio, Resize};
use crate::{DType, Op};

pub(super) fn infer(cx: &mut OpCx) -> RuleResult {
    match cx.op {
        Op::Identity => Ok(vec![passthrough(cx)]),
        Op::Expand => expand(cx),
        Op::Size => {
            let n = cx.shape(0).and_then(|s| product(&s));
            let v = n.map(|n| SymTensor::scalar(DType::I64, n));
            Ok(vec![out_value(Some(DType::I64), Some(vec![]), v)?])
        }
        Op::Tile => tile(cx),
        Op::NonZero => non_zero(cx),
        Op::Slice => slice(cx),
        Op::Squeeze => squeeze(cx),
        Op::Unsqueeze => unsqueeze(cx),
        Op::Reshape(r) => reshape(cx, r.allowzero),
        Op::Transpose(t) => transpose(cx, t.perm.as_deref()),
        Op::Flatten(f) => flatten(cx, f.axis),
        Op::Concat(c) => concat(cx, c.axis),
        Op::Split(s) => split(cx, s.axis, s.num_outputs),
        Op::Gather(g) => gather(cx, g.axis),
        Op::GatherElements(g) => {
            if let (Some(d), Some(i)) = (cx.rank(0), cx.rank(1))
                && d != i
            {
                return Err(format!("data has rank {d} but indices have rank {i}"));
            }
            if let Some(r) = cx.rank(0) {
                norm_axis(g.axis, r)?;
            }
            Ok(vec![out(cx.dtype(0), cx.shape(1))?])
        }
        Op::GatherND(g) => gather_nd(cx, g.batch_dims),
        Op::ScatterElements(s) => {
            if let (Some(d), Some(i)) = (cx.rank(0), cx.rank(1))
                && d != i
            {
                return Err(format!("data has rank {d} but indices have rank {i}"));
            }
            if let Some(r) = cx.rank(0) {
                norm_axis(s.axis, r)?;
            }
            Ok(vec![out(cx.dtype(0), cx.shape(0))?])
        }
        Op::ScatterND(_) | Op::ReverseSequence(_) | Op::CumSum(_) | Op::CumProd(_) => {
            Ok(vec![out(cx.dtype(0), cx.shape(0))?])
        }
        Op::Trilu(_) => {
            cx.shape_of_rank(0, "the input", |r| r >= 2)?;
            Ok(vec![out(cx.dtype(0), cx.shape(0))?])
        }
        Op::TensorScatter(t) => {
            if let Some(r) = cx.rank(0) {
                norm_axis(t.axis, r)?;
            }
            Ok(vec![out(same_dtype(cx, &[0, 1])?, cx.shape(0))?])
        }
        Op::Pad(_) => pad(cx),
        Op::Shape(s) => shape_of(cx, s.start, s.end),
        Op::ConstantOfShape(c) => constant_of_shape(cx, c.value.as_ref()),
        Op::Range(_) => range(cx),
        Op::Dropout(_) => {
            // Only inference mode passes values through unchanged.
            let training = cx.has(2) && cx.ints(2).is_none_or(|v| v.iter().any(|&b| b != 0));
            let mut y = passthrough(cx);
            if training {
                y.value = None;
            }
            Ok(vec![y, out(Some(DType::Bool), cx.shape(0))?])
        }
        Op::OneHot(o) => one_hot(cx, o.axis),
        Op::TopK(t) => top_k(cx, t.axis),
        Op::Compress(c) => compress(cx, c.axis),
        Op::DepthToSpace(d) => depth_space(cx, d.blocksize, true),
        Op::SpaceToDepth(d) => depth_space(cx, d.blocksize, false),
        Op::EyeLike(e) => {
            cx.shape_of_rank(0, "the input", |r| r == 2)?;
            Ok(vec![out(e.dtype.or(cx.dtype(0)), cx.shape(0))?])
        }
        Op::Unique(u) => unique(cx, u.axis),
        Op::CenterCropPad(c) => center_crop_pad(cx, c.axes.as_deref()),
        Op::Col2Im(_) => col2im(cx),
        Op::Resize(r) => resize(cx, r),
        other => Err(format!("{} is not a movement op", other.op_type())),
    }
}

/// The product of dims.
pub(crate) fn product(dims: &[Expr]) -> Option<Expr> {
    dims.iter().try_fold(Expr::int(1), |acc, d| acc.mul(d))
}

/// Concrete sizes, if every dim is a constant.
fn concrete(dims: &[Expr]) -> Option<Vec<usize>> {
    dims.iter().map(|d| d.as_int().and_then(|v| usize::try_from(v).ok())).collect()
}

/// Checks that an input holding a shape or index list is 1-D and returns
/// its length when known.
fn vector_len(cx: &OpCx, port: usize, what: &str) -> Result<Option<usize>, String> {
    match cx.shape(port) {
        Some(s) if s.len() != 1 => Err(format!("{what} must be 1-D, found shape {}", show(&s))),
        Some(s) => Ok(s[0].as_int().map(|v| v as usize)),
        None => Ok(cx.value(port).map(|v| v.len())),
    }
}

/// Like [`vector_len`] for lists of axes, which ONNX's own function
/// expansions also pass as scalars (one axis).
pub(crate) fn axes_len(cx: &OpCx, port: usize) -> Result<Option<usize>, String> {
    match cx.shape(port) {
        Some(s) if s.is_empty() => Ok(Some(1)),
        Some(s) if s.len() != 1 => Err(format!("axes must be 1-D, found shape {}", show(&s))),
        Some(s) => Ok(s[0].as_int().map(|v| v as usize)),
        None => Ok(cx.value(port).map(|v| v.len())),
    }
}

fn reshaped_value(cx: &OpCx, shape: &Option<Vec<Expr>>) -> Option<SymTensor> {
    let v = cx.value(0)?;
    v.reshaped(concrete(shape.as_ref()?)?)
}

fn expand(cx: &mut OpCx) -> RuleResult {
    let n = vector_len(cx, 1, "the shape input")?;
    let data = cx.shape(0);
    let shape = match (cx.exprs(1), &data) {
        (Some(target), Some(d)) => Some(broadcast(&[d, &target])?),
        // With the input rank unknown, a longer input could add dims.
        (Some(_), None) => None,
        (None, Some(d)) => n.map(|n| {
            let r = n.max(d.len());
            (0..r)
                .map(|i| {
                    let di = (i + d.len()).checked_sub(r).map(|k| d[k].clone());
                    match di {
                        Some(x) if x.as_int().is_some_and(|v| v != 1) => x,
                        _ => cx.fresh(0),
                    }
                })
                .collect()
        }),
        (None, None) => None,
    };
    let value = match (cx.value(0), &shape) {
        (Some(v), Some(s)) => concrete(s).and_then(|os| {
            broadcast_concrete(&v.shape, &os).filter(|b| *b == os).and_then(|_| {
                let idx = broadcast_index(&v.shape, &os);
                (idx.len() <= MAX_TRACKED).then(|| v.select(os, &idx)).flatten()
            })
        }),
        _ => None,
    };
    Ok(vec![out_value(cx.dtype(0), shape, value)?])
}

fn tile(cx: &mut OpCx) -> RuleResult {
    let n = vector_len(cx, 1, "repeats")?;
    let data = cx.shape(0);
    if let (Some(d), Some(n)) = (&data, n)
        && d.len() != n
    {
        return Err(format!("repeats has {n} entries for an input of rank {} ({})", d.len(), show(d)));
    }
    let shape = match (&data, cx.exprs(1)) {
        (Some(d), Some(r)) => {
            if r.len() != d.len() {
                return Err(format!("repeats has {} entries for an input of rank {}", r.len(), d.len()));
            }
            let mut s = Vec::with_capacity(d.len());
            for (x, k) in d.iter().zip(&r) {
                if k.as_int().is_some_and(|v| v < 0) {
                    return Err(format!("repeats must be non-negative, found {k}"));
                }
                s.push(x.mul(k).ok_or("dim overflow")?);
            }
            Some(s)
        }
        (Some(d), None) => {
            Some(d.iter().map(|x| if x.as_int() == Some(0) { x.clone() } else { cx.fresh(0) }).collect::<Vec<_>>())
        }
        (None, _) => n.map(|n| cx.fresh_shape(0, n)),
    };
    let value = match (cx.value(0), &shape) {
        (Some(v), Some(s)) => concrete(s).and_then(|os| {
            let src = v.shape.clone();
            remap(v, os, |o, at| {
                for (k, a) in at.iter_mut().enumerate() {
                    *a = o[k] % src[k].max(1);
                }
                Some(())
            })
        }),
        _ => None,
    };
    Ok(vec![out_value(cx.dtype(0), shape, value)?])
}

fn non_zero(cx: &mut OpCx) -> RuleResult {
    let count = cx.value(0).and_then(|v| match &v.data {
        SymData::Int(_) => v.as_ints().map(|x| x.iter().filter(|&&e| e != 0).count()),
        SymData::Float(f) => Some(f.iter().filter(|&&e| e != 0.0).count()),
    });
    let n = match count {
        Some(c) => Expr::int(c as i64),
        None => cx.fresh(0),
    };
    let shape = cx.rank(0).map(|r| vec![Expr::int(r as i64), n]);
    Ok(vec![out(Some(DType::I64), shape)?])
}

/// Where a normalised slice bound lies, for positive steps: a known point,
/// or `max(d + c, 0)` for a negative offset `c` from the end.
#[derive(Clone)]
enum Bound {
    At(Expr),
    FromEnd(Expr),
}

/// Normalises a start or end for a positive step, following ONNX: negative
/// values count from the end and are clamped at 0. Only ends are clamped at
/// `d` (`upper`): a start beyond `d` gives the same empty slice either way.
fn bound(v: &Expr, d: &Expr, upper: bool) -> Option<Bound> {
    if v.is_nonneg() {
        Some(Bound::At(if upper { v.minimum(d) } else { v.clone() }))
    } else if Expr::int(-1).provably_ge(v) {
        let shifted = v.add(d)?;
        if shifted.is_nonneg() { Some(Bound::At(shifted)) } else { Some(Bound::FromEnd(v.clone())) }
    } else {
        None
    }
}

/// The length of `x[s:e:k]` along a dim of size `d`.
pub(crate) fn slice_len(d: &Expr, s: &Expr, e: &Expr, k: &Expr) -> Option<Expr> {
    let k = k.as_int()?;
    if let (Some(d), Some(s), Some(e)) = (d.as_int(), s.as_int(), e.as_int()) {
        // In i128 so that extreme steps and bounds cannot overflow.
        let (d, k) = (d as i128, k as i128);
        let (s, e) = (if s < 0 { s as i128 + d } else { s as i128 }, if e < 0 { e as i128 + d } else { e as i128 });
        let n = if k > 0 {
            let (s, e) = (s.clamp(0, d), e.clamp(0, d));
            if e > s { (e - s + k - 1) / k } else { 0 }
        } else {
            let (s, e) = (s.clamp(0, (d - 1).max(0)), e.clamp(-1, d - 1));
            if d == 0 || s <= e { 0 } else { (s - e - k - 1) / (-k) }
        };
        return i64::try_from(n).ok().map(Expr::int);
    }
    let zero = Expr::zero();
    if k > 0 {
        // The end never exceeds d, so max(end - start, 0) is the length.
        let len = match (bound(s, d, false)?, bound(e, d, true)?) {
            (Bound::At(s), Bound::At(e)) => e.sub(&s)?.maximum(&zero),
            // e - max(d + c, 0) = min(e - d - c, e)
            (Bound::FromEnd(c), Bound::At(e)) => e.sub(&d.add(&c)?)?.minimum(&e).maximum(&zero),
            // max(d + c, 0) - s with s >= 0
            (Bound::At(s), Bound::FromEnd(c)) => d.add(&c)?.sub(&s)?.maximum(&zero),
            (Bound::FromEnd(cs), Bound::FromEnd(ce)) => ce.sub(&cs)?.minimum(&d.add(&ce)?).maximum(&zero),
        };
        return len.ceil_div(&Expr::int(k));
    }
    // Negative steps with symbolic dims: only whole-range reversals are
    // common (`x[::-1]`), and they need d >= 1 to state; give up otherwise.
    None
}

fn slice(cx: &mut OpCx) -> RuleResult {
    let dtype = cx.dtype(0);
    let data = cx.shape(0);
    let n = vector_len(cx, 1, "starts")?;
    if let (Some(a), Some(b)) = (n, vector_len(cx, 2, "ends")?)
        && a != b
    {
        return Err(format!("starts has {a} entries but ends has {b}"));
    }
    let (starts, ends) = (cx.exprs(1), cx.exprs(2));
    let axes: Option<Vec<i64>> = if cx.has(3) { cx.ints(3) } else { n.map(|n| (0..n as i64).collect()) };
    let steps: Option<Vec<Expr>> = if cx.has(4) { cx.exprs(4) } else { n.map(|n| vec![Expr::int(1); n]) };
    let Some(d) = data else {
        return Ok(vec![out(dtype, None)?]);
    };
    let rank = d.len();
    let (Some(starts), Some(ends), Some(axes), Some(steps)) = (starts, ends, axes.clone(), steps) else {
        // Values unknown: sliced axes become unknown.
        let mut shape = d.clone();
        match axes {
            Some(ax) => {
                for a in norm_axes(&ax, rank)? {
                    shape[a] = cx.fresh(0);
                }
            }
            None => shape = cx.fresh_shape(0, rank),
        }
        return Ok(vec![out(dtype, Some(shape))?]);
    };
    if starts.len() != ends.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(format!(
            "starts, ends, axes and steps must have one length, found {}, {}, {} and {}",
            starts.len(),
            ends.len(),
            axes.len(),
            steps.len()
        ));
    }
    let axes = norm_axes(&axes, rank)?;
    let mut shape = d.clone();
    let mut plan: Vec<(usize, i64, i64, i64)> = Vec::new();
    for (i, &a) in axes.iter().enumerate() {
        if steps[i].as_int() == Some(0) {
            return Err("slice steps must not be 0".to_string());
        }
        shape[a] = match slice_len(&d[a], &starts[i], &ends[i], &steps[i]) {
            Some(l) => l,
            None => cx.fresh(0),
        };
        if let (Some(s), Some(e), Some(k)) = (starts[i].as_int(), ends[i].as_int(), steps[i].as_int()) {
            plan.push((a, s, e, k));
        }
    }
    let value = match cx.value(0) {
        Some(v) if plan.len() == axes.len() => concrete(&shape).and_then(|os| {
            let src = v.shape.clone();
            remap(v, os, |o, at| {
                at.copy_from_slice(o);
                for &(a, s, _, k) in &plan {
                    let dim = src[a] as i64;
                    let s = if s < 0 { s.saturating_add(dim) } else { s };
                    let s = if k > 0 { s.clamp(0, dim) } else { s.clamp(0, dim - 1) };
                    at[a] = usize::try_from((o[a] as i64).checked_mul(k)?.checked_add(s)?).ok()?;
                }
                Some(())
            })
        }),
        _ => None,
    };
    Ok(vec![out_value(dtype, Some(shape), value)?])
}

fn squeeze(cx: &mut OpCx) -> RuleResult {
    let dtype = cx.dtype(0);
    let Some(d) = cx.shape(0) else {
        return Ok(vec![out(dtype, None)?]);
    };
    let axes: Vec<usize> = if cx.has(1) {
        match cx.ints(1) {
            Some(a) => norm_axes(&a, d.len())?,
            None => {
                let n = axes_len(cx, 1)?;
                // Which dims go is unknown, but only size-1 dims can go: if
                // exactly n dims could be 1, those are the ones.
                let maybe: Vec<usize> = (0..d.len()).filter(|&i| could_be_one(&d[i])).collect();
                match n {
                    Some(n) if maybe.len() == n => maybe,
                    _ => return Ok(vec![out(dtype, None)?]),
                }
            }
        }
    } else {
        let mut a = Vec::new();
        for (i, x) in d.iter().enumerate() {
            if x.as_int() == Some(1) {
                a.push(i);
            } else if could_be_one(x) {
                // A symbolic dim might be 1 at run time: the rank is unknown.
                return Ok(vec![out(dtype, None)?]);
            }
        }
        a
    };
    for &a in &axes {
        if d[a].as_int().is_some_and(|v| v != 1) {
            return Err(format!("cannot squeeze axis {a} of size {} in {}", d[a], show(&d)));
        }
    }
    let shape: Vec<Expr> = d.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, x)| x.clone()).collect();
    let shape = Some(shape);
    let value = reshaped_value(cx, &shape);
    Ok(vec![out_value(dtype, shape, value)?])
}

fn could_be_one(e: &Expr) -> bool {
    match e.as_int() {
        Some(v) => v == 1,
        None => !(e.provably_ge(&Expr::int(2)) || Expr::zero().provably_ge(e)),
    }
}

fn unsqueeze(cx: &mut OpCx) -> RuleResult {
    let dtype = cx.dtype(0);
    let n = axes_len(cx, 1)?;
    let d = cx.shape(0);
    let shape = match (&d, cx.ints(1)) {
        (Some(d), Some(axes)) => {
            let r = d.len() + axes.len();
            let axes = norm_axes(&axes, r)?;
            let mut it = d.iter();
            let mut s = Vec::with_capacity(r);
            for i in 0..r {
                if axes.contains(&i) {
                    s.push(Expr::int(1));
                } else {
                    s.push(it.next().ok_or("axes do not fit the rank")?.clone());
                }
            }
            Some(s)
        }
        (Some(d), None) => n.map(|n| cx.fresh_shape(0, d.len() + n)),
        (None, _) => None,
    };
    let value = reshaped_value(cx, &shape);
    Ok(vec![out_value(dtype, shape, value)?])
}

fn reshape(cx: &mut OpCx, allowzero: bool) -> RuleResult {
    let dtype = cx.dtype(0);
    let n = vector_len(cx, 1, "the shape input")?;
    let data = cx.shape(0);
    let Some(target) = cx.exprs(1) else {
        let shape = n.map(|n| cx.fresh_shape(0, n));
        return Ok(vec![out(dtype, shape)?]);
    };
    let mut shape: Vec<Option<Expr>> = Vec::with_capacity(target.len());
    let mut infer_at: Option<usize> = None;
    for (i, t) in target.iter().enumerate() {
        match t.as_int() {
            Some(-1) => {
                if infer_at.is_some() {
                    return Err(format!("the target shape {} has more than one -1", show(&target)));
                }
                infer_at = Some(i);
                shape.push(None);
            }
            Some(0) if !allowzero => match &data {
                Some(d) => {
                    let x = d.get(i).ok_or_else(|| {
                        format!(
                            "the target shape {} copies dim {i}, but the input {} has rank {}",
                            show(&target),
                            show(d),
                            d.len()
                        )
                    })?;
                    shape.push(Some(x.clone()));
                }
                None => shape.push(None),
            },
            Some(v) if v < -1 => return Err(format!("the target shape {} has the invalid entry {v}", show(&target))),
            _ => shape.push(Some(t.clone())),
        }
    }
    if allowzero && infer_at.is_some() && target.iter().any(|t| t.as_int() == Some(0)) {
        return Err(format!("with allowzero, the target shape {} cannot hold both 0 and -1", show(&target)));
    }
    let total = data.as_ref().and_then(|d| product(d));
    if let Some(k) = infer_at {
        let known: Option<Vec<Expr>> =
            shape.iter().enumerate().filter(|(i, _)| *i != k).map(|(_, x)| x.clone()).collect();
        let dim = match (&total, known.as_ref().and_then(|k| product(k))) {
            (Some(num), Some(den)) if !den.is_const() || den.as_int() != Some(0) => {
                let q = num.floor_div(&den);
                match q {
                    Some(q) if q.mul(&den).as_ref() == Some(num) => Some(q),
                    _ if num.is_const() && den.is_const() => {
                        return Err(format!(
                            "cannot reshape {} ({num} elements) to {}",
                            show(data.as_deref().unwrap_or(&[])),
                            show(&target)
                        ));
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        shape[k] = dim;
    }
    let shape: Vec<Expr> = shape.into_iter().map(|x| x.unwrap_or_else(|| cx.fresh(0))).collect();
    if let (Some(num), Some(count)) = (&total, product(&shape))
        && let (Some(a), Some(b)) = (num.as_int(), count.as_int())
        && a != b
    {
        return Err(format!(
            "cannot reshape {} ({a} elements) to {} ({b} elements)",
            show(data.as_deref().unwrap_or(&[])),
            show(&shape)
        ));
    }
    let shape = Some(shape);
    let value = reshaped_value(cx, &shape);
    Ok(vec![out_value(dtype, shape, value)?])
}

fn transpose(cx: &mut OpCx, perm: Option<&[i64]>) -> RuleResult {
    let dtype = cx.dtype(0);
    let Some(d) = cx.shape(0) else {
        let shape = perm.map(|p| cx.fresh_shape(0, p.len()));
        return Ok(vec![out(dtype, shape)?]);
    };
    let r = d.len();
    let perm: Vec<usize> = match perm {
        Some(p) => {
            if p.len() != r {
                return Err(format!("perm {p:?} has {} entries for an input of rank {r} ({})", p.len(), show(&d)));
            }
            norm_axes(p, r).map_err(|e| format!("perm {p:?} is not a permutation: {e}"))?
        }
        None => (0..r).rev().collect(),
    };
    let shape: Vec<Expr> = perm.iter().map(|&p| d[p].clone()).collect();
    let value = cx.value(0).and_then(|v| {
        let os: Vec<usize> = perm.iter().map(|&p| v.shape[p]).collect();
        remap(v, os, |o, at| {
            for (i, &p) in perm.iter().enumerate() {
                at[p] = o[i];
            }
            Some(())
        })
    });
    Ok(vec![out_value(dtype, Some(shape), value)?])
}

fn flatten(cx: &mut OpCx, axis: i64) -> RuleResult {
    let dtype = cx.dtype(0);
    let Some(d) = cx.shape(0) else {
        let shape = Some(vec![cx.fresh(0), cx.fresh(0)]);
        return Ok(vec![out(dtype, shape)?]);
    };
    let r = d.len() as i64;
    let a = super::from_end(axis, r);
    if a < 0 || a > r {
        return Err(format!("axis {axis} is out of range for rank {r}"));
    }
    let a = a as usize;
    let shape = Some(vec![product(&d[..a]).ok_or("dim overflow")?, product(&d[a..]).ok_or("dim overflow")?]);
    let value = reshaped_value(cx, &shape);
    Ok(vec![out_value(dtype, shape, value)?])
}

/// The dim two inputs share where they must be equal: a fixed one if any,
/// else one without fresh symbols. Errors on two different fixed sizes.
pub(crate) fn unify(a: &Expr, b: &Expr) -> Result<Expr, ()> {
    if a == b {
        return Ok(a.clone());
    }
    match (a.as_int(), b.as_int()) {
        (Some(_), Some(_)) => Err(()),
        (Some(_), None) => Ok(a.clone()),
        (None, Some(_)) => Ok(b.clone()),
        (None, None) => {
            let fresh = |e: &Expr| e.symbols().iter().any(|s| s.starts_with(super::FRESH_PREFIX));
            Ok(if fresh(a) && !fresh(b) { b.clone() } else { a.clone() })
        }
    }
}

fn concat(cx: &mut OpCx, axis: i64) -> RuleResult {
    let ports: Vec<usize> = (0..cx.num_inputs()).filter(|&i| cx.has(i)).collect();
    if ports.is_empty() {
        return Err("needs at least one input".to_string());
    }
    let dtype = same_dtype(cx, &ports)?;
    let shapes: Option<Vec<Vec<Expr>>> = ports.iter().map(|&p| cx.shape(p)).collect();
    let Some(shapes) = shapes else {
        let rank = ports.iter().find_map(|&p| cx.rank(p));
        let shape = rank.map(|r| cx.fresh_shape(0, r));
        return Ok(vec![out(dtype, shape)?]);
    };
    let r = shapes[0].len();
    if r == 0 {
        return Err("cannot concatenate scalars".to_string());
    }
    let a = norm_axis(axis, r)?;
    let mut shape = shapes[0].clone();
    for s in &shapes[1..] {
        if s.len() != r {
            let all: Vec<String> = shapes.iter().map(|s| show(s)).collect();
            return Err(format!("inputs have different ranks: {}", all.join(", ")));
        }
        for i in 0..r {
            if i == a {
                shape[i] = shape[i].add(&s[i]).ok_or("dim overflow")?;
            } else {
                shape[i] = unify(&shape[i], &s[i]).map_err(|_| {
                    let all: Vec<String> = shapes.iter().map(|s| show(s)).collect();
                    format!("inputs disagree on dim {i} outside the concat axis {a}: {}", all.join(", "))
                })?;
            }
        }
    }
    let vals: Option<Vec<&SymTensor>> = ports.iter().map(|&p| cx.value(p)).collect();
    let value = vals.and_then(|vals| concat_values(&vals, a));
    Ok(vec![out_value(dtype, Some(shape), value)?])
}

fn concat_values(vals: &[&SymTensor], a: usize) -> Option<SymTensor> {
    let first = vals.first()?;
    let outer: usize = first.shape[..a].iter().product();
    let mut shape = first.shape.clone();
    shape[a] = vals.iter().map(|v| v.shape.get(a).copied()).sum::<Option<usize>>()?;
    let mut ints: Vec<Expr> = Vec::new();
    let mut floats: Vec<f64> = Vec::new();
    let is_int = first.exprs().is_some();
    for o in 0..outer {
        for v in vals {
            let inner: usize = v.shape[a..].iter().product();
            match (&v.data, is_int) {
                (SymData::Int(e), true) => ints.extend_from_slice(e.get(o * inner..(o + 1) * inner)?),
                (SymData::Float(f), false) => floats.extend_from_slice(f.get(o * inner..(o + 1) * inner)?),
                _ => return None,
            }
        }
    }
    let data = if is_int { SymData::Int(ints) } else { SymData::Float(floats) };
    Some(SymTensor { dtype: first.dtype, shape, data })
}

fn split(cx: &mut OpCx, axis: i64, num_outputs: Option<i64>) -> RuleResult {
    let dtype = cx.dtype(0);
    let n = cx.num_outputs;
    if let Some(k) = num_outputs
        && k as usize != n
    {
        return Err(format!("num_outputs is {k} but the node has {n} outputs"));
    }
    let Some(d) = cx.shape(0) else {
        return Ok(vec![out(dtype, None)?; n]);
    };
    let a = norm_axis(axis, d.len())?;
    let dim = d[a].clone();
    let sizes: Vec<Option<Expr>> = if cx.has(1) {
        if let Some(len) = vector_len(cx, 1, "split")?
            && len != n
        {
            return Err(format!("split has {len} entries but the node has {n} outputs"));
        }
        match cx.exprs(1) {
            Some(s) => {
                if s.iter().any(|x| x.as_int().is_some_and(|v| v < 0)) {
                    return Err(format!("split sizes must be non-negative, found {}", show(&s)));
                }
                let total = s.iter().try_fold(Expr::zero(), |acc, x| acc.add(x)).ok_or("dim overflow")?;
                if let (Some(t), Some(dv)) = (total.as_int(), dim.as_int())
                    && t != dv
                {
                    return Err(format!("split sizes {} add up to {t}, not to the dim {dv} of {}", show(&s), show(&d)));
                }
                s.into_iter().map(Some).collect()
            }
            None => vec![None; n],
        }
    } else if n == 0 {
        return Err("the node has no outputs".to_string());
    } else {
        let k = Expr::int(n as i64);
        if num_outputs.is_some() {
            // Chunks of ceil(d / n); the last one takes what is left.
            let chunk = dim.ceil_div(&k).ok_or("division overflow")?;
            let last = dim.sub(&chunk.scale(n as i64 - 1).ok_or("overflow")?).ok_or("overflow")?;
            if last.as_int().is_some_and(|v| v < 0) {
                return Err(format!("cannot split dim {dim} into {n} chunks of {chunk}"));
            }
            let mut v = vec![Some(chunk); n - 1];
            v.push(Some(last));
            v
        } else {
            if let Some(dv) = dim.as_int()
                && dv % n as i64 != 0
            {
                return Err(format!("dim {dv} of {} does not split evenly into {n} outputs", show(&d)));
            }
            vec![dim.floor_div(&k); n]
        }
    };
    let mut outs = Vec::with_capacity(n);
    let mut offset = Some(0usize);
    for (i, s) in sizes.into_iter().enumerate() {
        let mut shape = d.clone();
        shape[a] = match s.clone() {
            Some(s) => s,
            None => cx.fresh(i),
        };
        let value = match (cx.value(0), s.as_ref().and_then(|s| s.as_int()), offset) {
            (Some(v), Some(len), Some(off)) => {
                let os: Vec<usize> =
                    v.shape.iter().enumerate().map(|(k, &x)| if k == a { len as usize } else { x }).collect();
                remap(v, os, |o, at| {
                    at.copy_from_slice(o);
                    at[a] += off;
                    Some(())
                })
            }
            _ => None,
        };
        offset = match (offset, s.and_then(|s| s.as_int())) {
            (Some(o), Some(l)) => Some(o + l as usize),
            _ => None,
        };
        outs.push(out_value(dtype, Some(shape), value)?);
    }
    Ok(outs)
}

fn gather(cx: &mut OpCx, axis: i64) -> RuleResult {
    let dtype = cx.dtype(0);
    if let Some(i) = cx.dtype(1)
        && !matches!(i, DType::I32 | DType::I64)
    {
        return Err(format!("indices must be i32 or i64, found {i}"));
    }
    let (Some(d), Some(ind)) = (cx.shape(0), cx.shape(1)) else {
        return Ok(vec![out(dtype, None)?]);
    };
    if d.is_empty() {
        return Err("cannot gather from a scalar".to_string());
    }
    let a = norm_axis(axis, d.len())?;
    if let (Some(idx), Some(n)) = (cx.ints(1), d[a].as_int()) {
        for &i in &idx {
            if i < -n || i >= n {
                return Err(format!("index {i} is out of range for dim {a} of size {n} in {}", show(&d)));
            }
        }
    }
    let mut shape: Vec<Expr> = d[..a].to_vec();
    shape.extend(ind.iter().cloned());
    shape.extend(d[a + 1..].iter().cloned());
    let value = match (cx.value(0), cx.value(1).and_then(|v| v.as_ints())) {
        (Some(v), Some(idx)) => {
            let n = v.shape[a] as i64;
            let idx: Option<Vec<usize>> =
                idx.iter().map(|&i| usize::try_from(if i < 0 { i + n } else { i }).ok()).collect();
            let ishape = cx.value(1).map(|t| t.shape.clone()).unwrap_or_default();
            idx.and_then(|idx| {
                let q = ishape.len();
                let mut os: Vec<usize> = v.shape[..a].to_vec();
                os.extend(&ishape);
                os.extend(&v.shape[a + 1..]);
                let mut istr = vec![1usize; q];
                for k in (0..q.saturating_sub(1)).rev() {
                    istr[k] = istr[k + 1] * ishape[k + 1];
                }
                remap(v, os, |o, at| {
                    at[..a].copy_from_slice(&o[..a]);
                    let flat: usize = (0..q).map(|k| o[a + k] * istr[k]).sum();
                    at[a] = *idx.get(flat)?;
                    at[a + 1..].copy_from_slice(&o[a + q..]);
                    Some(())
                })
            })
        }
        _ => None,
    };
    Ok(vec![out_value(dtype, Some(shape), value)?])
}

fn gather_nd(cx: &mut OpCx, batch_dims: i64) -> RuleResult {
    let dtype = cx.dtype(0);
    let (Some(d), Some(ind)) = (cx.shape(0), cx.shape(1)) else {
        return Ok(vec![out(dtype, None)?]);
    };
    let b = usize::try_from(batch_dims).map_err(|_| format!("batch_dims {batch_dims} is negative"))?;
    if ind.is_empty() || b >= d.len().min(ind.len()) {
        return Err(format!("batch_dims {b} needs data {} and indices {} of larger rank", show(&d), show(&ind)));
    }
    let Some(m) = ind[ind.len() - 1].as_int() else {
        return Ok(vec![out(dtype, None)?]);
    };
    let m = m as usize;
    if m < 1 || b + m > d.len() {
        return Err(format!("index tuples of length {m} do not fit data {} with batch_dims {b}", show(&d)));
    }
    let mut shape: Vec<Expr> = ind[..ind.len() - 1].to_vec();
    shape.extend(d[b + m..].iter().cloned());
    Ok(vec![out(dtype, Some(shape))?])
}

fn pad(cx: &mut OpCx) -> RuleResult {
    let dtype = cx.dtype(0);
    let Some(d) = cx.shape(0) else {
        return Ok(vec![out(dtype, None)?]);
    };
    let r = d.len();
    let axes: Option<Vec<usize>> = if cx.has(3) {
        match cx.ints(3) {
            Some(a) => Some(norm_axes(&a, r)?),
            None => None,
        }
    } else {
        Some((0..r).collect())
    };
    if let (Some(ax), Some(n)) = (&axes, vector_len(cx, 1, "pads")?)
        && n != 2 * ax.len()
    {
        return Err(format!("pads has {n} entries, expected {} for {} padded axes", 2 * ax.len(), ax.len()));
    }
    let mut shape = d.clone();
    match (axes, cx.exprs(1)) {
        (Some(ax), Some(p)) => {
            let k = ax.len();
            for (i, &a) in ax.iter().enumerate() {
                let v = d[a].add(&p[i]).and_then(|x| x.add(&p[i + k])).ok_or("dim overflow")?;
                if v.as_int().is_some_and(|x| x < 0) {
                    return Err(format!("padding {} by {} and {} leaves a negative size", d[a], p[i], p[i + k]));
                }
                shape[a] = v;
            }
        }
        (Some(ax), None) => {
            for a in ax {
                shape[a] = cx.fresh(0);
            }
        }
        (None, _) => shape = cx.fresh_shape(0, r),
    }
    Ok(vec![out(dtype, Some(shape))?])
}

fn shape_of(cx: &mut OpCx, start: i64, end: Option<i64>) -> RuleResult {
    let Some(d) = cx.shape(0) else {
        let n = cx.fresh(0);
        return Ok(vec![out(Some(DType::I64), Some(vec![n]))?]);
    };
    let r = d.len() as i64;
    let clamp = |v: i64| if v < 0 { v.saturating_add(r).max(0) } else { v.min(r) } as usize;
    let (s, e) = (clamp(start), clamp(end.unwrap_or(r)));
    let dims: Vec<Expr> = if s < e { d[s..e].to_vec() } else { Vec::new() };
    let v = SymTensor::shape_vector(dims.clone());
    Ok(vec![out_value(Some(DType::I64), Some(vec![Expr::int(dims.len() as i64)]), Some(v))?])
}

fn constant_of_shape(cx: &mut OpCx, value: Option<&crate::Tensor>) -> RuleResult {
    let dtype = match value {
        Some(t) => {
            if t.len() != 1 {
                return Err(format!("value must hold one element, it holds {}", t.len()));
            }
            t.dtype()
        }
        None => DType::F32,
    };
    let n = vector_len(cx, 0, "the shape input")?;
    let shape = match cx.exprs(0) {
        Some(s) => {
            if let Some(bad) = s.iter().find(|x| x.as_int().is_some_and(|v| v < 0)) {
                return Err(format!("the shape {} has the negative entry {bad}", show(&s)));
            }
            Some(s)
        }
        None => n.map(|n| cx.fresh_shape(0, n)),
    };
    let fill = match value {
        Some(t) => SymTensor::from_tensor(t),
        None => SymTensor::from_tensor(&crate::Tensor::scalar(0.0f32)),
    };
    let v = match (&shape, fill) {
        (Some(s), Some(f)) => concrete(s).and_then(|os| {
            let count = super::value::checked_product(&os)?;
            (count <= MAX_TRACKED).then(|| f.select(os, &vec![0; count])).flatten()
        }),
        _ => None,
    };
    Ok(vec![out_value(Some(dtype), shape, v)?])
}

fn range(cx: &mut OpCx) -> RuleResult {
    let dtype = same_dtype(cx, &[0, 1, 2])?;
    for p in 0..3 {
        if let Some(s) = cx.shape(p)
            && !(s.is_empty() || s == [Expr::int(1)])
        {
            return Err(format!("input {p} must be a scalar, found shape {}", show(&s)));
        }
    }
    let is_int = dtype.is_some_and(|d| d.is_integer());
    let (mut len, mut value) = (None, None);
    if is_int {
        if let (Some(s), Some(l), Some(k)) = (cx.scalar_expr(0), cx.scalar_expr(1), cx.scalar_expr(2)) {
            match k.as_int() {
                Some(0) => return Err("delta must not be 0".to_string()),
                Some(kv) => {
                    let span = l.sub(&s).ok_or("overflow")?;
                    let span = if kv > 0 { span } else { span.neg().ok_or("overflow")? };
                    len = kv.checked_abs().and_then(|k| span.ceil_div(&Expr::int(k))).map(|n| n.maximum(&Expr::zero()));
                    if let (Some(n), Some(d)) = (len.as_ref().and_then(|n| n.as_int()), dtype)
                        && n as usize <= MAX_TRACKED
                    {
                        let elems: Option<Vec<Expr>> = (0..n).map(|i| s.add(&Expr::int(i.checked_mul(kv)?))).collect();
                        value = elems.map(|e| SymTensor::ints(d, vec![n as usize], e));
                    }
                }
                None => {}
            }
        }
    } else if let (Some(s), Some(l), Some(k)) = (cx.scalar_f64(0), cx.scalar_f64(1), cx.scalar_f64(2)) {
        if k == 0.0 {
            return Err("delta must not be 0".to_string());
        }
        let n = ((l - s) / k).ceil().max(0.0);
        if n.is_finite() && n < 1e15 {
            len = Some(Expr::int(n as i64));
        }
    }
    let len = match len {
        Some(l) => l,
        None => cx.fresh(0),
    };
    Ok(vec![out_value(dtype, Some(vec![len]), value)?])
}

fn one_hot(cx: &mut OpCx, axis: i64) -> RuleResult {
    let dtype = cx.dtype(2);
    if let Some(s) = cx.shape(2)
        && s.len() != 1
    {
        return Err(format!("values must be 1-D with two elements, found shape {}", show(&s)));
    }
    let Some(ind) = cx.shape(0) else {
        return Ok(vec![out(dtype, None)?]);
    };
    let r = ind.len() as i64 + 1;
    let a = super::from_end(axis, r);
    if a < 0 || a >= r {
        return Err(format!("axis {axis} is out of range for an output of rank {r}"));
    }
    let depth = match cx.value(1) {
        Some(v) if v.len() == 1 => match &v.data {
            SymData::Int(e) => Some(e[0].clone()),
            SymData::Float(f) => Some(Expr::int(f[0].trunc() as i64)),
        },
        _ => None,
    };
    if let Some(dv) = depth.as_ref().and_then(|d| d.as_int())
        && dv < 1
    {
        return Err(format!("depth must be positive, found {dv}"));
    }
    let depth = match depth {
        Some(d) => d,
        None => cx.fresh(0),
    };
    let mut shape = ind;
    shape.insert(a as usize, depth);
    Ok(vec![out(dtype, Some(shape))?])
}

fn top_k(cx: &mut OpCx, axis: i64) -> RuleResult {
    let dtype = cx.dtype(0);
    let Some(d) = cx.shape(0) else {
        return Ok(vec![out(dtype, None)?, out(Some(DType::I64), None)?]);
    };
    let a = norm_axis(axis, d.len())?;
    let k = cx.scalar_expr(1);
    if let (Some(kv), Some(n)) = (k.as_ref().and_then(|k| k.as_int()), d[a].as_int())
        && (kv < 0 || kv > n)
    {
        return Err(format!("k = {kv} is out of range for axis {a} of size {n} in {}", show(&d)));
    }
    let mut shape = d;
    shape[a] = match k {
        Some(k) => k,
        None => cx.fresh(0),
    };
    Ok(vec![out(dtype, Some(shape.clone()))?, out(Some(DType::I64), Some(shape))?])
}

fn compress(cx: &mut OpCx, axis: Option<i64>) -> RuleResult {
    let dtype = cx.dtype(0);
    if let Some(s) = cx.shape(1)
        && s.len() != 1
    {
        return Err(format!("the condition must be 1-D, found shape {}", show(&s)));
    }
    let count = cx.ints(1).map(|c| Expr::int(c.iter().filter(|&&b| b != 0).count() as i64));
    let count = match count {
        Some(c) => c,
        None => cx.fresh(0),
    };
    let shape = match axis {
        None => Some(vec![count]),
        Some(ax) => match cx.shape(0) {
            Some(mut d) => {
                let a = norm_axis(ax, d.len())?;
                d[a] = count;
                Some(d)
            }
            None => None,
        },
    };
    Ok(vec![out(dtype, shape)?])
}

fn depth_space(cx: &mut OpCx, blocksize: i64, to_space: bool) -> RuleResult {
    let dtype = cx.dtype(0);
    if blocksize < 1 {
        return Err(format!("blocksize must be positive, found {blocksize}"));
    }
    let Some(d) = cx.shape_of_rank(0, "the input", |r| r == 4)? else {
        return Ok(vec![out(dtype, None)?]);
    };
    let b = Expr::int(blocksize);
    let bb = Expr::int(blocksize.checked_mul(blocksize).ok_or("blocksize overflow")?);
    let exact = |x: &Expr, k: &Expr| -> Result<Expr, String> {
        if let (Some(v), Some(kv)) = (x.as_int(), k.as_int())
            && v % kv != 0
        {
            return Err(format!("dim {v} of {} is not divisible by {kv}", show(&d)));
        }
        x.floor_div(k).ok_or_else(|| "division overflow".to_string())
    };
    let shape = if to_space {
        vec![d[0].clone(), exact(&d[1], &bb)?, d[2].mul(&b).ok_or("overflow")?, d[3].mul(&b).ok_or("overflow")?]
    } else {
        vec![d[0].clone(), d[1].mul(&bb).ok_or("overflow")?, exact(&d[2], &b)?, exact(&d[3], &b)?]
    };
    Ok(vec![out(dtype, Some(shape))?])
}

fn unique(cx: &mut OpCx, axis: Option<i64>) -> RuleResult {
    let dtype = cx.dtype(0);
    let u = cx.fresh(0);
    let i64t = Some(DType::I64);
    let d = cx.shape(0);
    let (y, inverse) = match (axis, &d) {
        (None, Some(d)) => (Some(vec![u.clone()]), Some(vec![product(d).ok_or("overflow")?])),
        (None, None) => (Some(vec![u.clone()]), None),
        (Some(ax), Some(d)) => {
            let a = norm_axis(ax, d.len())?;
            let mut y = d.clone();
            y[a] = u.clone();
            (Some(y), Some(vec![d[a].clone()]))
        }
        (Some(_), None) => (None, None),
    };
    let inverse = match inverse {
        Some(i) => Some(i),
        None => Some(vec![cx.fresh(2)]),
    };
    Ok(vec![out(dtype, y)?, out(i64t, Some(vec![u.clone()]))?, out(i64t, inverse)?, out(i64t, Some(vec![u]))?])
}

fn center_crop_pad(cx: &mut OpCx, axes: Option<&[i64]>) -> RuleResult {
    let dtype = cx.dtype(0);
    let Some(d) = cx.shape(0) else {
        return Ok(vec![out(dtype, None)?]);
    };
    let r = d.len();
    let axes: Vec<usize> = match axes {
        Some(a) => norm_axes(a, r)?,
        None => (0..r).collect(),
    };
    if let Some(n) = vector_len(cx, 1, "shape")?
        && n != axes.len()
    {
        return Err(format!("shape has {n} entries for {} axes", axes.len()));
    }
    let mut shape = d;
    match cx.exprs(1) {
        Some(s) => {
            for (i, &a) in axes.iter().enumerate() {
                shape[a] = s[i].clone();
            }
        }
        None => {
            for &a in &axes {
                shape[a] = cx.fresh(0);
            }
        }
    }
    Ok(vec![out(dtype, Some(shape))?])
}

fn col2im(cx: &mut OpCx) -> RuleResult {
    let dtype = cx.dtype(0);
    let d = cx.shape_of_rank(0, "the input", |r| r == 3)?;
    let image = cx.exprs(1);
    let block = cx.exprs(2);
    let n_spatial = image.as_ref().map(|i| i.len()).or(vector_len(cx, 1, "image_shape")?);
    let Some(k) = n_spatial else {
        return Ok(vec![out(dtype, None)?]);
    };
    let (batch, channels) = match &d {
        Some(d) => {
            let c = match block.as_ref().and_then(|b| product(b)) {
                Some(p) if p != Expr::zero() => {
                    if let (Some(x), Some(y)) = (d[1].as_int(), p.as_int())
                        && x % y != 0
                    {
                        return Err(format!("dim 1 of {} is not divisible by the block size {y}", show(d)));
                    }
                    d[1].floor_div(&p).ok_or("division overflow")?
                }
                _ => cx.fresh(0),
            };
            (d[0].clone(), c)
        }
        None => (cx.fresh(0), cx.fresh(0)),
    };
    let mut shape = vec![batch, channels];
    match image {
        Some(i) => shape.extend(i),
        None => shape.extend(cx.fresh_shape(0, k)),
    }
    Ok(vec![out(dtype, Some(shape))?])
}

/// `floor(d * scale)` with a dyadic rational scale kept exact for symbolic d.
fn scaled_dim(d: &Expr, scale: f64) -> Option<Expr> {
    if !scale.is_finite() || scale < 0.0 {
        return None;
    }
    if let Some(v) = d.as_int() {
        return Some(Expr::int((v as f64 * scale).floor() as i64));
    }
    for k in 0..=20 {
        let q = (1i64 << k) as f64;
        let p = scale * q;
        if p == p.trunc() && p.abs() < 1e15 {
            return d.scale(p as i64)?.floor_div(&Expr::int(1i64 << k));
        }
    }
    None
}

fn resize(cx: &mut OpCx, r: &Resize) -> RuleResult {
    let dtype = cx.dtype(0);
    let Some(d) = cx.shape(0) else {
        return Ok(vec![out(dtype, None)?]);
    };
    let rank = d.len();
    let axes: Vec<usize> = match &r.axes {
        Some(a) => norm_axes(a, rank)?,
        None => (0..rank).collect(),
    };
    let scales_given =
        cx.has(2) && cx.value(2).is_none_or(|v| !v.is_empty()) && cx.shape(2).is_none_or(|s| s != [Expr::zero()]);
    let sizes_given =
        cx.has(3) && cx.value(3).is_none_or(|v| !v.is_empty()) && cx.shape(3).is_none_or(|s| s != [Expr::zero()]);
    if scales_given && sizes_given {
        return Err("only one of scales and sizes may be given".to_string());
    }
    let mut shape = d.clone();
    if sizes_given {
        if let Some(n) = vector_len(cx, 3, "sizes")?
            && n != axes.len()
        {
            return Err(format!("sizes has {n} entries for {} axes", axes.len()));
        }
        match cx.exprs(3) {
            Some(sizes) => match r.keep_aspect_ratio_policy {
                KeepAspectRatio::Stretch => {
                    for (i, &a) in axes.iter().enumerate() {
                        shape[a] = sizes[i].clone();
                    }
                }
                policy => {
                    let ins: Option<Vec<i64>> = axes.iter().map(|&a| d[a].as_int()).collect();
                    let outs: Option<Vec<i64>> = sizes.iter().map(|s| s.as_int()).collect();
                    match (ins, outs) {
                        (Some(ins), Some(outs)) => {
                            let ratios = ins.iter().zip(&outs).map(|(&i, &o)| o as f64 / i as f64);
                            let scale = if policy == KeepAspectRatio::NotLarger {
                                ratios.fold(f64::INFINITY, f64::min)
                            } else {
                                ratios.fold(0.0, f64::max)
                            };
                            for (i, &a) in axes.iter().enumerate() {
                                // round_int: the nearest integer, halves up.
                                shape[a] = Expr::int((scale * ins[i] as f64 + 0.5).floor() as i64);
                            }
                        }
                        _ => {
                            for &a in &axes {
                                shape[a] = cx.fresh(0);
                            }
                        }
                    }
                }
            },
            None => {
                for &a in &axes {
                    shape[a] = cx.fresh(0);
                }
            }
        }
    } else if scales_given {
        if let Some(n) = vector_len(cx, 2, "scales")?
            && n != axes.len()
        {
            return Err(format!("scales has {n} entries for {} axes", axes.len()));
        }
        let mut scales = cx.value(2).and_then(|v| v.as_f64s());
        if scales.as_ref().is_some_and(|s| s.len() != axes.len()) {
            return Err(format!("scales has {} entries for {} axes", scales.map_or(0, |s| s.len()), axes.len()));
        }
        // The size is floor(d * (roi_end - roi_start) * scale), and the region
        // only counts with tf_crop_and_resize: claim a size there only for a
        // region known to span the whole axis.
        if r.coordinate_transformation_mode == CoordinateTransform::TfCropAndResize {
            let roi = cx.value(1).and_then(|v| v.as_f64s());
            let n = axes.len();
            let full = roi.is_some_and(|roi| roi.len() == 2 * n && (0..n).all(|i| roi[i + n] - roi[i] == 1.0));
            if !full {
                scales = None;
            }
        }
        for (i, &a) in axes.iter().enumerate() {
            shape[a] = match scales.as_ref().and_then(|s| scaled_dim(&d[a], s[i])) {
                Some(x) => x,
                None => cx.fresh(0),
            };
        }
    } else {
        return Err("one of scales and sizes must be given".to_string());
    }
    Ok(vec![out(dtype, Some(shape))?])
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::op::{self, ShapeOf};
    use crate::{Graph, Tensor, Type};

    #[test]
    fn slice_lengths() {
        let d = Expr::sym("seq");
        let big = Expr::int(i64::MAX);
        let l = |s: i64, e: &Expr, k: i64| slice_len(&d, &Expr::int(s), e, &Expr::int(k)).map(|x| x.to_string());
        assert_eq!(l(0, &big, 1).as_deref(), Some("seq"));
        assert_eq!(l(1, &big, 1).as_deref(), Some("max(0, seq-1)"));
        assert_eq!(l(-1, &big, 1).as_deref(), Some("min(1, seq)"));
        assert_eq!(l(0, &Expr::int(-1), 1).as_deref(), Some("max(0, seq-1)"));
        assert_eq!(l(0, &d, 2).as_deref(), Some("(seq+1)//2"));
        assert_eq!(l(0, &Expr::int(512), 1).as_deref(), Some("min(512, seq)"));
        // Concrete dims follow ONNX's clamping exactly.
        let c = |d: i64, s: i64, e: i64, k: i64| {
            slice_len(&Expr::int(d), &Expr::int(s), &Expr::int(e), &Expr::int(k)).unwrap().as_int().unwrap()
        };
        assert_eq!(c(10, 2, 8, 3), 2);
        assert_eq!(c(10, -1, i64::MIN, -1), 10);
        assert_eq!(c(10, 8, 2, -2), 3);
        assert_eq!(c(5, 7, 9, 1), 0);
        assert_eq!(c(0, -1, i64::MIN, -1), 0);
    }

    /// The minilm attention reshape: Shape → Gather → Unsqueeze → Concat →
    /// Reshape gives `[batch, seq, 12, 32]`.
    #[test]
    fn torch_reshape_chain() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", t(DType::F32, &["batch", "seq", "384"]));
        let s = g.add_op(Op::Shape(ShapeOf { start: 0, end: None }), &[x], Type::Unknown);
        let i0 = scalar(&mut g, 0);
        let i1 = scalar(&mut g, 1);
        let b = g.add_op(Op::Gather(op::Gather { axis: 0 }), &[s, i0], Type::Unknown);
        let q = g.add_op(Op::Gather(op::Gather { axis: 0 }), &[s, i1], Type::Unknown);
        let ax = ints(&mut g, &[0]);
        let bu = g.add_op(Op::Unsqueeze, &[b, ax], Type::Unknown);
        let qu = g.add_op(Op::Unsqueeze, &[q, ax], Type::Unknown);
        let heads = ints(&mut g, &[12]);
        let hd = ints(&mut g, &[32]);
        let shape = g.add_op(Op::Concat(op::Concat { axis: 0 }), &[bu, qu, heads, hd], Type::Unknown);
        let r = g.add_op(Op::Reshape(op::Reshape { allowzero: false }), &[x, shape], Type::Unknown);
        let perm = op::Transpose { perm: Some(vec![0, 2, 1, 3]) };
        let tr = g.add_op(Op::Transpose(perm), &[r], Type::Unknown);
        g.add_output("t", tr);
        run(&mut g);
        assert_eq!(ty_of(&g, s), "i64[3]");
        assert_eq!(ty_of(&g, b), "i64[]");
        assert_eq!(ty_of(&g, shape), "i64[4]");
        assert_eq!(ty_of(&g, r), "f32[batch, seq, 12, 32]");
        assert_eq!(ty_of(&g, tr), "f32[batch, 12, seq, 32]");
        // A second run changes nothing.
        assert_eq!(run(&mut g).changed, 0);
    }

    #[test]
    fn reshape_rules() {
        let rs = || Op::Reshape(op::Reshape { allowzero: false });
        let mut g = Graph::new("g");
        let x = g.add_input("x", t(DType::F32, &["batch", "seq", "384"]));
        let s1 = ints(&mut g, &[0, -1, 12, 32]);
        let r1 = g.add_op(rs(), &[x, s1], Type::Unknown);
        let s2 = ints(&mut g, &[-1, 384]);
        let r2 = g.add_op(rs(), &[x, s2], Type::Unknown);
        let s3 = ints(&mut g, &[-1]);
        let r3 = g.add_op(rs(), &[x, s3], Type::Unknown);
        g.add_output("a", r1);
        run(&mut g);
        assert_eq!(ty_of(&g, r1), "f32[batch, seq, 12, 32]");
        assert_eq!(ty_of(&g, r2), "f32[\"batch*seq\", 384]");
        assert_eq!(ty_of(&g, r3), "f32[\"384*batch*seq\"]");

        let e = one(rs(), [t(DType::F32, &["2", "3"]), t(DType::I64, &["2", "2"])], 1).unwrap_err();
        assert!(e.contains("1-D"), "{e}");
        let mut g = Graph::new("g");
        let x = g.add_input("x", t(DType::F32, &["2", "3"]));
        let s = ints(&mut g, &[4, -1]);
        let r = g.add_op(rs(), &[x, s], Type::Unknown);
        g.add_output("r", r);
        let e = fails(&mut g);
        assert!(e.contains("[2, 3]") && e.contains("[4, -1]"), "{e}");
    }

    #[test]
    fn squeeze_unsqueeze_flatten_transpose() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", t(DType::F32, &["batch", "1", "seq"]));
        let a1 = ints(&mut g, &[1]);
        let sq = g.add_op(Op::Squeeze, &[x, a1], Type::Unknown);
        let a2 = ints(&mut g, &[0, -1]);
        let us = g.add_op(Op::Unsqueeze, &[x, a2], Type::Unknown);
        let sq_all = g.add_op(Op::Squeeze, &[x], Type::Unknown);
        let fl = g.add_op(Op::Flatten(op::Flatten { axis: 2 }), &[x], Type::Unknown);
        let tr = g.add_op(Op::Transpose(op::Transpose { perm: None }), &[x], Type::Unknown);
        g.add_output("a", sq);
        run(&mut g);
        assert_eq!(ty_of(&g, sq), "f32[batch, seq]");
        assert_eq!(ty_of(&g, us), "f32[1, batch, 1, seq, 1]");
        // batch or seq could be 1: the rank is unknown.
        assert_eq!(ty_of(&g, sq_all), "f32[*]");
        assert_eq!(ty_of(&g, fl), "f32[batch, seq]");
        assert_eq!(ty_of(&g, tr), "f32[seq, 1, batch]");

        let mut g = Graph::new("g");
        let x = g.add_input("x", t(DType::F32, &["batch", "3"]));
        let a = ints(&mut g, &[1]);
        let sq = g.add_op(Op::Squeeze, &[x, a], Type::Unknown);
        g.add_output("s", sq);
        assert!(fails(&mut g).contains("size 3"));
        let bad = Op::Transpose(op::Transpose { perm: Some(vec![0, 0]) });
        assert!(one(bad, [t(DType::F32, &["2", "3"])], 1).is_err());
    }

    #[test]
    fn concat_split_gather_values() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", t(DType::F32, &["batch", "seq", "768"]));
        let y = g.add_input("y", t(DType::F32, &["batch", "7", "768"]));
        let c = g.add_op(Op::Concat(op::Concat { axis: 1 }), &[x, y], Type::Unknown);
        let sizes = ints(&mut g, &[256, 512]);
        let sp = node(&mut g, Op::Split(op::Split { axis: -1, num_outputs: None }), &[Some(x), Some(sizes)], 2);
        let sp3 = node(&mut g, Op::Split(op::Split { axis: 2, num_outputs: Some(3) }), &[Some(x)], 3);
        let sh = g.add_op(Op::Shape(ShapeOf { start: -2, end: None }), &[x], Type::Unknown);
        let idx = ints(&mut g, &[1, 0, 1]);
        let ga = g.add_op(Op::Gather(op::Gather { axis: 0 }), &[sh, idx], Type::Unknown);
        let co = g.add_op(Op::ConstantOfShape(op::ConstantOfShape { value: None }), &[ga], Type::Unknown);
        g.add_output("c", c);
        run(&mut g);
        assert_eq!(ty_of(&g, c), "f32[batch, \"seq+7\", 768]");
        assert_eq!(ty_of(&g, sp[0]), "f32[batch, seq, 256]");
        assert_eq!(ty_of(&g, sp[1]), "f32[batch, seq, 512]");
        assert_eq!(ty_of(&g, sp3[2]), "f32[batch, seq, 256]");
        assert_eq!(ty_of(&g, co), "f32[768, seq, 768]");

        let e = one(Op::Concat(op::Concat { axis: 0 }), [t(DType::F32, &["2", "3"]), t(DType::F32, &["2", "4"])], 1);
        assert!(e.unwrap_err().contains("dim 1"));
        let mut g = Graph::new("g");
        let x = g.add_input("x", t(DType::F32, &["4"]));
        let i = ints(&mut g, &[4]);
        let ga = g.add_op(Op::Gather(op::Gather { axis: 0 }), &[x, i], Type::Unknown);
        g.add_output("g", ga);
        assert!(fails(&mut g).contains("index 4"));
    }

    #[test]
    fn expand_tile_range_pad_slice() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", t(DType::F32, &["batch", "1", "1", "seq"]));
        let mask = g.add_input("m", t(DType::I64, &["batch", "seq"]));
        let sh = g.add_op(Op::Shape(ShapeOf { start: 0, end: None }), &[x], Type::Unknown);
        let sq = g.add_op(Op::Shape(ShapeOf { start: 1, end: None }), &[mask], Type::Unknown);
        let i0 = scalar(&mut g, 0);
        let seq = g.add_op(Op::Gather(op::Gather { axis: 0 }), &[sq, i0], Type::Unknown);
        let ax = ints(&mut g, &[0]);
        let sequ = g.add_op(Op::Unsqueeze, &[seq, ax], Type::Unknown);
        let b = ints(&mut g, &[0]);
        let b2 = ints(&mut g, &[3]);
        let prefix = g.add_op(Op::Slice, &[sh, b, b2], Type::Unknown);
        let target = g.add_op(Op::Concat(op::Concat { axis: 0 }), &[prefix, sequ], Type::Unknown);
        let ex = g.add_op(Op::Expand, &[x, target], Type::Unknown);
        let zero = scalar(&mut g, 0);
        let one_ = scalar(&mut g, 1);
        let rg = g.add_op(Op::Range(op::Range { stash_type: 1 }), &[zero, seq, one_], Type::Unknown);
        let reps = ints(&mut g, &[2, 3, 1, 1]);
        let ti = g.add_op(Op::Tile, &[x, reps], Type::Unknown);
        let pads = ints(&mut g, &[0, 0, 1, 0, 0, 0, 2, 3]);
        let pd = g.add_op(Op::Pad(op::Pad { mode: op::PadMode::Constant }), &[x, pads], Type::Unknown);
        let st = ints(&mut g, &[1]);
        let en = ints(&mut g, &[i64::MAX]);
        let axs = ints(&mut g, &[3]);
        let sl = g.add_op(Op::Slice, &[x, st, en, axs], Type::Unknown);
        g.add_output("e", ex);
        run(&mut g);
        assert_eq!(ty_of(&g, target), "i64[4]");
        assert_eq!(ty_of(&g, ex), "f32[batch, 1, 1, seq]");
        assert_eq!(ty_of(&g, rg), "i64[seq]");
        assert_eq!(ty_of(&g, ti), "f32[\"2*batch\", 3, 1, seq]");
        assert_eq!(ty_of(&g, pd), "f32[batch, 1, 4, \"seq+3\"]");
        assert_eq!(ty_of(&g, sl), "f32[batch, 1, 1, \"max(0, seq-1)\"]");
    }

    #[test]
    fn index_and_misc_ops() {
        let x = t(DType::F32, &["n", "5"]);
        let topk = Op::TopK(op::TopK { axis: -1, largest: true, sorted: true });
        let k = Tensor::from_vec(&[1], vec![3i64]);
        let r = infer_node_for(&topk, &[Some(x.clone()), None], &[None, Some(&k)], 2);
        assert_eq!(r, vec!["f32[n, 3]", "i64[n, 3]"]);
        let k9 = Tensor::from_vec(&[1], vec![9i64]);
        assert!(crate::infer::infer_node(&topk, &[Some(x.clone()), None], &[None, Some(&k9)], &["a", "b"]).is_err());
        let nz = one(Op::NonZero, [x.clone()], 1).unwrap();
        assert_eq!(nz, vec!["i64[2, unk__out0_0]"]);
        let u = one(Op::Unique(op::Unique { axis: None, sorted: true }), [x.clone()], 4).unwrap();
        assert_eq!(u, vec!["f32[unk__out0_0]", "i64[unk__out0_0]", "i64[\"5*n\"]", "i64[unk__out0_0]"]);
        let d2s = Op::DepthToSpace(op::DepthToSpace { blocksize: 2, mode: op::DepthSpaceMode::Dcr });
        assert_eq!(one(d2s, [t(DType::F32, &["b", "8", "h", "3"])], 1).unwrap(), vec!["f32[b, 2, \"2*h\", 6]"]);
        let gnd = Op::GatherND(op::GatherND { batch_dims: 0 });
        let r = one(gnd, [t(DType::F32, &["2", "3", "4"]), t(DType::I64, &["n", "2"])], 1).unwrap();
        assert_eq!(r, vec!["f32[n, 4]"]);
        let oh = Op::OneHot(op::OneHot { axis: -1 });
        let depth = Tensor::scalar(10i64);
        let r = infer_node_for(
            &oh,
            &[Some(t(DType::I64, &["n"])), None, Some(t(DType::F32, &["2"]))],
            &[None, Some(&depth), None],
            1,
        );
        assert_eq!(r, vec!["f32[n, 10]"]);
        let rs = Op::Resize(Resize {
            antialias: false,
            axes: None,
            coordinate_transformation_mode: op::CoordinateTransform::HalfPixel,
            cubic_coeff_a: -0.75,
            exclude_outside: false,
            extrapolation_value: 0.0,
            keep_aspect_ratio_policy: KeepAspectRatio::Stretch,
            mode: op::ResizeMode::Nearest,
            nearest_mode: op::NearestMode::RoundPreferFloor,
        });
        let scales = Tensor::from_vec(&[4], vec![1.0f32, 1.0, 2.0, 0.5]);
        let r = infer_node_for(
            &rs,
            &[Some(t(DType::F32, &["n", "3", "h", "w"])), None, None],
            &[None, None, Some(&scales)],
            1,
        );
        assert_eq!(r, vec!["f32[n, 3, \"2*h\", \"w//2\"]"]);
        // With tf_crop_and_resize the region scales the size too: unknown
        // region, unknown size; a full region, the plain rule.
        let Op::Resize(mut crop) = rs.clone() else { unreachable!() };
        crop.coordinate_transformation_mode = op::CoordinateTransform::TfCropAndResize;
        let crop = Op::Resize(crop);
        let x = Some(t(DType::F32, &["n", "3", "h", "w"]));
        let r = infer_node_for(&crop, &[x.clone(), Some(t(DType::F32, &["8"])), None], &[None, None, Some(&scales)], 1);
        assert_eq!(r, vec!["f32[unk__o0_0, unk__o0_1, unk__o0_2, unk__o0_3]"]);
        let roi = Tensor::from_vec(&[8], vec![0.0f32, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
        let r = infer_node_for(&crop, &[x, None, None], &[None, Some(&roi), Some(&scales)], 1);
        assert_eq!(r, vec!["f32[n, 3, \"2*h\", \"w//2\"]"]);
    }

    fn infer_node_for(op: &Op, tys: &[Option<Type>], consts: &[Option<&Tensor>], n: usize) -> Vec<String> {
        let names: Vec<String> = (0..n).map(|i| format!("o{i}")).collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        crate::infer::infer_node(op, tys, consts, &refs).unwrap().iter().map(|t| t.to_string()).collect()
    }
}

//! Reductions (`Reduce*` with the axes as input 1) and `ArgMax`/`ArgMin`.
//! `ReduceProd` over a shape vector is how some exporters count elements, so
//! integer sums, products, maxima and minima of tracked values are computed.

use super::symbolic::Expr;
use super::value::{SymData, SymTensor};
use super::{OpCx, RuleResult, norm_axes, norm_axis, out, out_value};
use crate::op::{Reduce, ReduceKind};
use crate::{DType, Op};

pub(super) fn infer(cx: &mut OpCx) -> RuleResult {
    match cx.op {
        Op::Reduce(r) => reduce(cx, r),
        Op::ArgMax(a) | Op::ArgMin(a) => {
            let shape = match cx.shape(0) {
                Some(d) => {
                    let ax = norm_axis(a.axis, d.len().max(1))?;
                    Some(reduced(&d, &[ax], a.keepdims))
                }
                None => None,
            };
            Ok(vec![out(Some(DType::I64), shape)?])
        }
        other => Err(format!("{} is not a reduction", other.op_type())),
    }
}

/// The shape after reducing `axes`.
fn reduced(d: &[Expr], axes: &[usize], keepdims: bool) -> Vec<Expr> {
    let mut s = Vec::with_capacity(d.len());
    for (i, x) in d.iter().enumerate() {
        if axes.contains(&i) {
            if keepdims {
                s.push(Expr::int(1));
            }
        } else {
            s.push(x.clone());
        }
    }
    s
}

fn reduce(cx: &mut OpCx, r: &Reduce) -> RuleResult {
    let dtype = cx.dtype(0);
    let keep = r.attrs.keepdims;
    let d = cx.shape(0);
    // None: unknown axes; Some(empty): no axes given or an empty list.
    let axes: Option<Vec<i64>> = if cx.has(1) { cx.ints(1) } else { Some(Vec::new()) };
    if cx.has(1) {
        super::movement::axes_len(cx, 1)?;
    }
    let Some(d) = d else {
        // Only keepdims and a full-rank reduction fix the rank without the input.
        return Ok(vec![out(dtype, None)?]);
    };
    let axes: Option<Vec<usize>> = match axes {
        Some(a) if a.is_empty() => {
            if r.attrs.noop_with_empty_axes {
                let v = cx.value(0).cloned();
                return Ok(vec![out_value(dtype, Some(d), v)?]);
            }
            Some((0..d.len()).collect())
        }
        Some(a) => Some(norm_axes(&a, d.len())?),
        None => None,
    };
    let Some(axes) = axes else {
        let shape = if keep {
            Some(d.iter().map(|x| if x.as_int() == Some(1) { x.clone() } else { cx.fresh(0) }).collect())
        } else {
            match super::movement::axes_len(cx, 1)?.map(|n| n as i64) {
                Some(n) if n > 0 && (n as usize) <= d.len() => Some(cx.fresh_shape(0, d.len() - n as usize)),
                _ => None,
            }
        };
        return Ok(vec![out(dtype, shape)?]);
    };
    let shape = reduced(&d, &axes, keep);
    let value = cx.value(0).and_then(|v| reduce_value(v, &axes, r.kind, &shape));
    Ok(vec![out_value(dtype, Some(shape), value)?])
}

fn reduce_value(v: &SymTensor, axes: &[usize], kind: ReduceKind, out_shape: &[Expr]) -> Option<SymTensor> {
    let SymData::Int(elems) = &v.data else {
        return None;
    };
    let os: Vec<usize> =
        out_shape.iter().map(|e| e.as_int().and_then(|x| usize::try_from(x).ok())).collect::<Option<_>>()?;
    let n_out: usize = os.iter().product();
    let mut acc: Vec<Option<Expr>> = vec![None; n_out];
    // Strides of the kept dims in the output.
    let kept: Vec<usize> = (0..v.shape.len()).filter(|i| !axes.contains(i)).collect();
    let mut ostr = vec![0usize; v.shape.len()];
    let mut stride = 1;
    for &k in kept.iter().rev() {
        ostr[k] = stride;
        stride *= v.shape[k];
    }
    let mut pos = vec![0usize; v.shape.len()];
    for e in elems {
        let o: usize = pos.iter().zip(&ostr).map(|(p, s)| p * s).sum();
        let slot = acc.get_mut(o)?;
        *slot = Some(match slot.take() {
            None => e.clone(),
            Some(a) => match kind {
                ReduceKind::Sum => a.add(e)?,
                ReduceKind::Prod => a.mul(e)?,
                ReduceKind::Max => a.maximum(e),
                ReduceKind::Min => a.minimum(e),
                _ => return None,
            },
        });
        for d in (0..pos.len()).rev() {
            pos[d] += 1;
            if pos[d] < v.shape[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    let identity = match kind {
        ReduceKind::Sum => Some(Expr::zero()),
        ReduceKind::Prod => Some(Expr::int(1)),
        _ => None,
    };
    let out: Vec<Expr> = acc.into_iter().map(|a| a.or_else(|| identity.clone())).collect::<Option<_>>()?;
    Some(SymTensor::ints(v.dtype, os, out))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::op::{ArgReduce, ReduceAttrs, ShapeOf};
    use crate::{Graph, Type};

    fn red(kind: ReduceKind, keepdims: bool, noop: bool) -> Op {
        Op::Reduce(Reduce { kind, attrs: ReduceAttrs { keepdims, noop_with_empty_axes: noop } })
    }

    #[test]
    fn reduce_shapes() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", t(DType::F32, &["batch", "seq", "384"]));
        let ax = ints(&mut g, &[-1]);
        let keep = g.add_op(red(ReduceKind::Mean, true, false), &[x, ax], Type::Unknown);
        let drop = g.add_op(red(ReduceKind::Sum, false, false), &[x, ax], Type::Unknown);
        let all = g.add_op(red(ReduceKind::Max, false, false), &[x], Type::Unknown);
        let noop = g.add_op(red(ReduceKind::Max, true, true), &[x], Type::Unknown);
        let am =
            g.add_op(Op::ArgMax(ArgReduce { axis: 1, keepdims: false, select_last_index: false }), &[x], Type::Unknown);
        // numel through ReduceProd(Shape(x)).
        let sh = g.add_op(Op::Shape(ShapeOf { start: 0, end: None }), &[x], Type::Unknown);
        let n = g.add_op(red(ReduceKind::Prod, true, false), &[sh], Type::Unknown);
        let c = g.add_op(Op::ConstantOfShape(crate::op::ConstantOfShape { value: None }), &[n], Type::Unknown);
        g.add_output("k", keep);
        run(&mut g);
        assert_eq!(ty_of(&g, keep), "f32[batch, seq, 1]");
        assert_eq!(ty_of(&g, drop), "f32[batch, seq]");
        assert_eq!(ty_of(&g, all), "f32[]");
        assert_eq!(ty_of(&g, noop), "f32[batch, seq, 384]");
        assert_eq!(ty_of(&g, am), "i64[batch, 384]");
        assert_eq!(ty_of(&g, c), "f32[\"384*batch*seq\"]");

        let mut g = Graph::new("g");
        let x = g.add_input("x", t(DType::F32, &["2", "3"]));
        let ax = ints(&mut g, &[2]);
        let r = g.add_op(red(ReduceKind::Sum, true, false), &[x, ax], Type::Unknown);
        g.add_output("r", r);
        assert!(fails(&mut g).contains("axis 2"));
    }

    #[test]
    fn unknown_axes() {
        let r = one(red(ReduceKind::Sum, true, false), [t(DType::F32, &["n", "1"]), t(DType::I64, &["1"])], 1).unwrap();
        assert_eq!(r, vec!["f32[unk__out0_0, 1]"]);
        let r = one(red(ReduceKind::Sum, false, false), [t(DType::F32, &["n", "3", "4"]), t(DType::I64, &["2"])], 1);
        assert_eq!(r.unwrap(), vec!["f32[unk__out0_0]"]);
    }
}

//! Linear algebra: `MatMul`, `Gemm`, `Einsum`, `Det`.

use super::{MatElem, Real, int_array, int_tensor, is_wide_float, real_array, real_cow, real_tensor};
use crate::util::{broadcast_shapes, opt_tensor_arg, single, tensor_arg};
use ndarray::{Array2, Array3, ArrayD, ArrayViewD, Axis, Ix2, IxDyn};
use sharc_ir::op::{Einsum, Gemm};
use sharc_ir::{DType, EvalError, Tensor, Value};

type Outputs = Result<Vec<Value>, EvalError>;

/// Numpy `matmul` of two arrays: rank-1 operands are promoted to a matrix and
/// the added dim removed again, batch dims broadcast.
pub(crate) fn matmul_nd<T: MatElem>(a: ArrayViewD<T>, b: ArrayViewD<T>) -> Result<ArrayD<T>, EvalError> {
    if a.ndim() == 0 || b.ndim() == 0 {
        return Err(EvalError::new(format!(
            "matrix product operands must have rank ≥ 1, got shapes {:?} and {:?}",
            a.shape(),
            b.shape()
        )));
    }
    let a_shape: Vec<usize> = if a.ndim() == 1 { vec![1, a.len()] } else { a.shape().to_vec() };
    let b_shape: Vec<usize> = if b.ndim() == 1 { vec![b.len(), 1] } else { b.shape().to_vec() };
    let (ra, rb) = (a_shape.len(), b_shape.len());
    let (m, k) = (a_shape[ra - 2], a_shape[ra - 1]);
    let (k2, n) = (b_shape[rb - 2], b_shape[rb - 1]);
    if k != k2 {
        return Err(EvalError::new(format!(
            "matrix product of shapes {:?} and {:?}: inner dims {k} and {k2} differ",
            a.shape(),
            b.shape()
        )));
    }
    let (batch_a, batch_b) = (&a_shape[..ra - 2], &b_shape[..rb - 2]);
    let batch = broadcast_shapes(batch_a, batch_b).map_err(|e| {
        EvalError::new(format!("matrix product of shapes {:?} and {:?}: {}", a.shape(), b.shape(), e.message))
    })?;
    let (na, nb, nbatch) =
        (batch_a.iter().product::<usize>(), batch_b.iter().product::<usize>(), batch.iter().product::<usize>());
    let a_std = a.as_standard_layout();
    let b_std = b.as_standard_layout();
    let a3 = a_std.view().into_shape_with_order((na, m, k)).expect("standard layout reshapes");
    let b3 = b_std.view().into_shape_with_order((nb, k, n)).expect("standard layout reshapes");
    let mut out = Array3::<T>::zeros((nbatch, m, n));
    if nb == 1 && na == nbatch {
        // One shared right operand (a weight): a single tall product.
        let a2 = a3.into_shape_with_order((na * m, k)).expect("contiguous");
        let mut o2 = out.view_mut().into_shape_with_order((nbatch * m, n)).expect("contiguous");
        T::gemm(&a2, &b3.index_axis(Axis(0), 0), &mut o2);
    } else {
        let ia = super::broadcast_index(&batch, batch_a);
        let ib = super::broadcast_index(&batch, batch_b);
        for (o, (&i, &j)) in ia.iter().zip(&ib).enumerate() {
            T::gemm(&a3.index_axis(Axis(0), i), &b3.index_axis(Axis(0), j), &mut out.index_axis_mut(Axis(0), o));
        }
    }
    let mut shape = batch;
    if a.ndim() > 1 {
        shape.push(m);
    }
    if b.ndim() > 1 {
        shape.push(n);
    }
    Ok(out.into_shape_with_order(IxDyn(&shape)).expect("same element count"))
}

/// How a typed op computes for an input dtype.
enum Kind {
    F32,
    F64,
    Int,
}

fn kind_of(d: DType, op: &str) -> Result<Kind, EvalError> {
    match d {
        DType::F64 => Ok(Kind::F64),
        d if is_wide_float(d) => Ok(Kind::F32),
        d if d.is_integer() && !d.is_narrow() => Ok(Kind::Int),
        d => Err(EvalError::unsupported(format!("{op} on {d} tensors is not supported"))),
    }
}

fn same_dtype(a: &Tensor, b: &Tensor, op: &str) -> Result<DType, EvalError> {
    if a.dtype() != b.dtype() {
        return Err(EvalError::new(format!("{op} operands must have one dtype, got {} and {}", a.dtype(), b.dtype())));
    }
    Ok(a.dtype())
}

/// `MatMul`.
pub(crate) fn matmul(inputs: &[Option<Value>]) -> Outputs {
    let a = tensor_arg(inputs, 0, "A")?;
    let b = tensor_arg(inputs, 1, "B")?;
    let dtype = same_dtype(a, b, "MatMul")?;
    let out = match kind_of(dtype, "MatMul")? {
        Kind::F32 => real_tensor(matmul_nd::<f32>(real_cow(a, "A")?.view(), real_cow(b, "B")?.view())?, dtype),
        Kind::F64 => real_tensor(matmul_nd::<f64>(real_cow(a, "A")?.view(), real_cow(b, "B")?.view())?, dtype),
        Kind::Int => int_tensor(matmul_nd::<i64>(int_array(a, "A")?.view(), int_array(b, "B")?.view())?, dtype)?,
    };
    single(out)
}

/// `Gemm`: `alpha · A' · B' + beta · C`, with `C` broadcast to `[M, N]`.
pub(crate) fn gemm(attrs: &Gemm, inputs: &[Option<Value>]) -> Outputs {
    let a = tensor_arg(inputs, 0, "A")?;
    let b = tensor_arg(inputs, 1, "B")?;
    let c = opt_tensor_arg(inputs, 2, "C")?;
    let dtype = same_dtype(a, b, "Gemm")?;
    if let Some(c) = c {
        same_dtype(a, c, "Gemm")?;
    }
    if a.rank() != 2 || b.rank() != 2 {
        return Err(EvalError::new(format!("Gemm needs 2-D A and B, got shapes {:?} and {:?}", a.shape(), b.shape())));
    }
    let (m, ka) = if attrs.trans_a { (a.shape()[1], a.shape()[0]) } else { (a.shape()[0], a.shape()[1]) };
    let (kb, n) = if attrs.trans_b { (b.shape()[1], b.shape()[0]) } else { (b.shape()[0], b.shape()[1]) };
    if ka != kb {
        return Err(EvalError::new(format!(
            "Gemm: A' is [{m}, {ka}] and B' is [{kb}, {n}] (A {:?}, B {:?}, transA={}, transB={}): inner dims differ",
            a.shape(),
            b.shape(),
            attrs.trans_a,
            attrs.trans_b
        )));
    }
    // ONNX's reference ignores C when beta is zero (even if C holds NaN).
    let c = c.filter(|_| attrs.beta != 0.0);
    if let Some(c) = c
        && !super::broadcasts_to(c.shape(), &[m, n])
    {
        return Err(EvalError::new(format!("Gemm: C of shape {:?} does not broadcast to [{m}, {n}]", c.shape())));
    }
    let out = match kind_of(dtype, "Gemm")? {
        Kind::F32 => real_tensor(gemm_real::<f32>(attrs, a, b, c, m, n)?, dtype),
        Kind::F64 => real_tensor(gemm_real::<f64>(attrs, a, b, c, m, n)?, dtype),
        Kind::Int => gemm_int(attrs, a, b, c, m, n, dtype)?,
    };
    single(out)
}

fn gemm_real<T: Real + MatElem>(
    attrs: &Gemm,
    a: &Tensor,
    b: &Tensor,
    c: Option<&Tensor>,
    m: usize,
    n: usize,
) -> Result<ArrayD<T>, EvalError> {
    let a = real_cow::<T>(a, "A")?;
    let b = real_cow::<T>(b, "B")?;
    let a = a.view().into_dimensionality::<Ix2>().expect("rank checked");
    let b = b.view().into_dimensionality::<Ix2>().expect("rank checked");
    let av = if attrs.trans_a { a.t() } else { a };
    let bv = if attrs.trans_b { b.t() } else { b };
    let mut y = Array2::<T>::zeros((m, n));
    T::gemm(&av, &bv, &mut y.view_mut());
    let alpha = T::of(attrs.alpha as f64);
    y.mapv_inplace(|v| v * alpha);
    if let Some(c) = c {
        let c = real_array::<T>(c, "C")?;
        let beta = T::of(attrs.beta as f64);
        let cb = c.broadcast((m, n)).expect("broadcast checked");
        y.zip_mut_with(&cb, |y, &c| *y += c * beta);
    }
    Ok(y.into_dyn())
}

fn gemm_int(
    attrs: &Gemm,
    a: &Tensor,
    b: &Tensor,
    c: Option<&Tensor>,
    m: usize,
    n: usize,
    dtype: DType,
) -> Result<Tensor, EvalError> {
    let a = int_array(a, "A")?.into_dimensionality::<Ix2>().expect("rank checked");
    let b = int_array(b, "B")?.into_dimensionality::<Ix2>().expect("rank checked");
    let av = if attrs.trans_a { a.t() } else { a.view() };
    let bv = if attrs.trans_b { b.t() } else { b.view() };
    let mut y = Array2::<i64>::zeros((m, n));
    i64::gemm(&av, &bv, &mut y.view_mut());
    let c = c.map(|c| int_array(c, "C")).transpose()?;
    let cb = c.as_ref().map(|c| c.broadcast((m, n)).expect("broadcast checked"));
    if attrs.alpha == 1.0 && (attrs.beta == 1.0 || cb.is_none()) {
        // Exact integer arithmetic where the scalars do not need floats.
        if let Some(cb) = cb {
            y.zip_mut_with(&cb, |y, &c| *y = y.wrapping_add(c));
        }
        return int_tensor(y.into_dyn(), dtype);
    }
    let mut yf = y.mapv(|v| v as f64 * attrs.alpha as f64);
    if let Some(cb) = cb {
        yf.zip_mut_with(&cb, |y, &c| *y += c as f64 * attrs.beta as f64);
    }
    super::tensor_from_f64(&[m, n], yf.iter().map(|v| v.trunc()).collect(), dtype)
}

/// `Det`: determinants of the trailing square matrices.
pub(crate) fn det(inputs: &[Option<Value>]) -> Outputs {
    let x = tensor_arg(inputs, 0, "X")?;
    let s = x.shape();
    if x.rank() < 2 || s[s.len() - 1] != s[s.len() - 2] {
        return Err(EvalError::new(format!("Det needs square matrices in the last two dims, got shape {s:?}")));
    }
    if !is_wide_float(x.dtype()) {
        return Err(EvalError::new(format!("Det needs a float tensor, got {}", x.dtype())));
    }
    let n = s[s.len() - 1];
    let batch = &s[..s.len() - 2];
    let a = real_array::<f64>(x, "X")?;
    let flat = a.as_slice().expect("standard layout");
    let dets: Vec<f64> = if n == 0 {
        vec![1.0; batch.iter().product()]
    } else {
        flat.chunks(n * n).map(|m| lu_det(m.to_vec(), n)).collect()
    };
    single(super::tensor_from_f64(batch, dets, x.dtype())?)
}

/// Determinant by LU decomposition with partial pivoting.
fn lu_det(mut m: Vec<f64>, n: usize) -> f64 {
    let mut det = 1.0;
    for col in 0..n {
        let pivot =
            (col..n).max_by(|&i, &j| m[i * n + col].abs().total_cmp(&m[j * n + col].abs())).expect("non-empty range");
        if m[pivot * n + col] == 0.0 {
            return 0.0;
        }
        if pivot != col {
            for j in 0..n {
                m.swap(pivot * n + j, col * n + j);
            }
            det = -det;
        }
        let p = m[col * n + col];
        det *= p;
        for i in col + 1..n {
            let f = m[i * n + col] / p;
            if f != 0.0 {
                for j in col..n {
                    m[i * n + j] -= f * m[col * n + j];
                }
            }
        }
    }
    det
}

// ---------------------------------------------------------------- Einsum

/// A label: a letter, or one of the dims an ellipsis stands for.
type Label = u32;
const ELLIPSIS_BASE: Label = 0x1_0000;

/// One side of an einsum term: its letters with the ellipsis position.
#[derive(Debug, PartialEq)]
struct Term {
    letters: Vec<char>,
    /// Index into `letters` where the ellipsis sits, if any.
    ellipsis: Option<usize>,
}

#[derive(Debug, PartialEq)]
struct Equation {
    inputs: Vec<Term>,
    output: Option<Term>,
}

fn parse_term(s: &str, eq: &str) -> Result<Term, EvalError> {
    let mut letters = Vec::new();
    let mut ellipsis = None;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_alphabetic() {
            letters.push(c);
        } else if c == '.' {
            if chars.next() != Some('.') || chars.next() != Some('.') || ellipsis.is_some() {
                return Err(EvalError::new(format!("einsum equation '{eq}': malformed or repeated ellipsis in '{s}'")));
            }
            ellipsis = Some(letters.len());
        } else {
            return Err(EvalError::new(format!("einsum equation '{eq}': unexpected character '{c}'")));
        }
    }
    Ok(Term { letters, ellipsis })
}

fn parse_equation(eq: &str) -> Result<Equation, EvalError> {
    let compact: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match compact.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (compact.as_str(), None),
    };
    if rhs.is_some_and(|r| r.contains("->")) {
        return Err(EvalError::new(format!("einsum equation '{eq}' has more than one '->'")));
    }
    let inputs = lhs.split(',').map(|t| parse_term(t, eq)).collect::<Result<Vec<_>, _>>()?;
    let output = rhs.map(|r| parse_term(r, eq)).transpose()?;
    Ok(Equation { inputs, output })
}

/// Expands a term to one label per dim, given how many dims its ellipsis
/// covers and the total ellipsis rank (ellipsis dims align from the right).
fn term_labels(t: &Term, ell_rank: usize, max_ell: usize) -> Vec<Label> {
    let mut out: Vec<Label> = Vec::new();
    for (i, &c) in t.letters.iter().enumerate() {
        if t.ellipsis == Some(i) {
            out.extend((max_ell - ell_rank..max_ell).map(|j| ELLIPSIS_BASE + j as Label));
        }
        out.push(c as Label);
    }
    if t.ellipsis == Some(t.letters.len()) {
        out.extend((max_ell - ell_rank..max_ell).map(|j| ELLIPSIS_BASE + j as Label));
    }
    out
}

/// `Einsum`.
pub(crate) fn einsum(attrs: &Einsum, inputs: &[Option<Value>]) -> Outputs {
    let eq = parse_equation(&attrs.equation)?;
    let ops = (0..inputs.len()).map(|i| tensor_arg(inputs, i, "Inputs")).collect::<Result<Vec<_>, _>>()?;
    if ops.len() != eq.inputs.len() {
        return Err(EvalError::new(format!(
            "einsum equation '{}' has {} operands but {} inputs were given",
            attrs.equation,
            eq.inputs.len(),
            ops.len()
        )));
    }
    let dtype = ops[0].dtype();
    if let Some(o) = ops.iter().find(|o| o.dtype() != dtype) {
        return Err(EvalError::new(format!("Einsum operands must share a dtype, got {dtype} and {}", o.dtype())));
    }
    let out = match kind_of(dtype, "Einsum")? {
        Kind::F32 => real_tensor(
            einsum_typed(&eq, &attrs.equation, ops.iter().map(|t| real_array::<f32>(t, "Inputs")).collect())?,
            dtype,
        ),
        Kind::F64 => real_tensor(
            einsum_typed(&eq, &attrs.equation, ops.iter().map(|t| real_array::<f64>(t, "Inputs")).collect())?,
            dtype,
        ),
        Kind::Int => int_tensor(
            einsum_typed(&eq, &attrs.equation, ops.iter().map(|t| int_array(t, "Inputs")).collect())?,
            dtype,
        )?,
    };
    single(out)
}

fn einsum_typed<T: MatElem>(
    eq: &Equation,
    text: &str,
    arrays: Result<Vec<ArrayD<T>>, EvalError>,
) -> Result<ArrayD<T>, EvalError> {
    let arrays = arrays?;
    let err = |m: String| EvalError::new(format!("einsum equation '{text}': {m}"));
    // How many dims each operand's ellipsis covers.
    let mut ell = Vec::new();
    for (i, (t, a)) in eq.inputs.iter().zip(&arrays).enumerate() {
        let r = a.ndim();
        match t.ellipsis {
            None if r != t.letters.len() => {
                return Err(err(format!("operand {i} has rank {r} but its term names {} dims", t.letters.len())));
            }
            Some(_) if r < t.letters.len() => {
                return Err(err(format!("operand {i} has rank {r}, fewer than the {} letters", t.letters.len())));
            }
            _ => ell.push(r - t.letters.len()),
        }
    }
    let max_ell = ell.iter().copied().max().unwrap_or(0);
    let labels: Vec<Vec<Label>> = eq.inputs.iter().zip(&ell).map(|(t, &e)| term_labels(t, e, max_ell)).collect();
    // Size of every label, checking agreement (ellipsis dims broadcast from 1).
    let mut sizes: std::collections::BTreeMap<Label, usize> = Default::default();
    for (ls, a) in labels.iter().zip(&arrays) {
        for (&l, &d) in ls.iter().zip(a.shape()) {
            let e = sizes.entry(l).or_insert(d);
            if *e != d {
                if l >= ELLIPSIS_BASE && (*e == 1 || d == 1) {
                    *e = (*e).max(d);
                } else {
                    let name = if l >= ELLIPSIS_BASE {
                        "an ellipsis dim".to_string()
                    } else {
                        format!("'{}'", l as u8 as char)
                    };
                    return Err(err(format!("{name} has sizes {} and {d}", *e)));
                }
            }
        }
    }
    let out_labels: Vec<Label> = match &eq.output {
        Some(t) => {
            // Without an ellipsis in the output, the ellipsis dims are summed.
            let ls = term_labels(t, max_ell, max_ell);
            for (i, l) in ls.iter().enumerate() {
                if l < &ELLIPSIS_BASE && !sizes.contains_key(l) {
                    return Err(err(format!("output letter '{}' does not appear in the inputs", *l as u8 as char)));
                }
                if ls[..i].contains(l) {
                    return Err(err(format!("output letter '{}' is repeated", *l as u8 as char)));
                }
            }
            ls
        }
        None => {
            // Implicit output: the ellipsis dims, then the letters seen exactly once, sorted.
            let mut counts: std::collections::BTreeMap<Label, usize> = Default::default();
            for t in &eq.inputs {
                for &c in &t.letters {
                    *counts.entry(c as Label).or_default() += 1;
                }
            }
            let mut ls: Vec<Label> = (0..max_ell).map(|j| ELLIPSIS_BASE + j as Label).collect();
            ls.extend(counts.into_iter().filter(|&(_, n)| n == 1).map(|(l, _)| l));
            ls
        }
    };
    // Diagonals of repeated labels, and ellipsis dims broadcast to full size.
    let mut operands: Vec<(ArrayD<T>, Vec<Label>)> = Vec::new();
    for (a, ls) in arrays.into_iter().zip(labels) {
        let (a, ls) = diagonal(a, &ls);
        let full: Vec<usize> = ls.iter().map(|l| sizes[l]).collect();
        let a = if a.shape() != full.as_slice() {
            a.broadcast(IxDyn(&full)).expect("only size-1 ellipsis dims differ").to_owned()
        } else {
            a
        };
        operands.push((a, ls));
    }
    let mut rest = operands.into_iter();
    let (mut cur, mut cur_labels) = rest.next().ok_or_else(|| err("no operands".into()))?;
    let remaining: Vec<(ArrayD<T>, Vec<Label>)> = rest.collect();
    for (i, (b, lb)) in remaining.iter().enumerate() {
        let mut needed: Vec<Label> = out_labels.clone();
        for (_, l) in &remaining[i + 1..] {
            needed.extend(l);
        }
        (cur, cur_labels) = contract(cur, &cur_labels, b.clone(), lb, &needed);
    }
    // Sum what the output drops, then order the dims as the output names them.
    let (cur, cur_labels) = sum_unneeded(cur, &cur_labels, &out_labels);
    let perm: Vec<usize> =
        out_labels.iter().map(|l| cur_labels.iter().position(|c| c == l).expect("output labels survive")).collect();
    Ok(cur.permuted_axes(IxDyn(&perm)).as_standard_layout().into_owned())
}

/// Takes the diagonal over repeated labels, so each label names one dim.
fn diagonal<T: MatElem>(a: ArrayD<T>, labels: &[Label]) -> (ArrayD<T>, Vec<Label>) {
    let mut uniq: Vec<Label> = Vec::new();
    for l in labels {
        if !uniq.contains(l) {
            uniq.push(*l);
        }
    }
    if uniq.len() == labels.len() {
        return (a, uniq);
    }
    let pos: Vec<usize> = labels.iter().map(|l| uniq.iter().position(|u| u == l).expect("present")).collect();
    let mut shape = vec![0; uniq.len()];
    for (&p, &d) in pos.iter().zip(a.shape()) {
        shape[p] = d;
    }
    let out = ArrayD::from_shape_fn(IxDyn(&shape), |idx| {
        let full: Vec<usize> = pos.iter().map(|&p| idx[p]).collect();
        a[IxDyn(&full)]
    });
    (out, uniq)
}

/// Sums out every dim whose label is not in `keep`.
fn sum_unneeded<T: MatElem>(mut a: ArrayD<T>, labels: &[Label], keep: &[Label]) -> (ArrayD<T>, Vec<Label>) {
    let mut ls = labels.to_vec();
    for i in (0..ls.len()).rev() {
        if !keep.contains(&ls[i]) {
            a = a.fold_axis(Axis(i), T::zero(), |acc, &x| acc.plus(x));
            ls.remove(i);
        }
    }
    (a, ls)
}

/// Contracts two operands as one batched matrix product: labels in both and
/// still needed are batch dims, labels in both and not needed are summed.
fn contract<T: MatElem>(
    a: ArrayD<T>,
    la: &[Label],
    b: ArrayD<T>,
    lb: &[Label],
    needed: &[Label],
) -> (ArrayD<T>, Vec<Label>) {
    let keep_a: Vec<Label> = needed.iter().chain(lb).copied().collect();
    let keep_b: Vec<Label> = needed.iter().chain(la).copied().collect();
    let (a, la) = sum_unneeded(a, la, &keep_a);
    let (b, lb) = sum_unneeded(b, lb, &keep_b);
    let batch: Vec<Label> = la.iter().filter(|l| lb.contains(l) && needed.contains(l)).copied().collect();
    let summed: Vec<Label> = la.iter().filter(|l| lb.contains(l) && !needed.contains(l)).copied().collect();
    let a_only: Vec<Label> = la.iter().filter(|l| !lb.contains(l)).copied().collect();
    let b_only: Vec<Label> = lb.iter().filter(|l| !la.contains(l)).copied().collect();
    let size = |a: &ArrayD<T>, la: &[Label], l: &Label| a.shape()[la.iter().position(|x| x == l).expect("present")];
    let prod = |ls: &[Label], a: &ArrayD<T>, la: &[Label]| ls.iter().map(|l| size(a, la, l)).product::<usize>();
    let (nb, m, k, n) = (prod(&batch, &a, &la), prod(&a_only, &a, &la), prod(&summed, &a, &la), prod(&b_only, &b, &lb));
    let order = |ls: &[Label], parts: [&[Label]; 3]| -> Vec<usize> {
        parts.iter().flat_map(|p| p.iter()).map(|l| ls.iter().position(|x| x == l).expect("present")).collect()
    };
    let pa = order(&la, [&batch, &a_only, &summed]);
    let pb = order(&lb, [&batch, &summed, &b_only]);
    let mut shape: Vec<usize> = batch.iter().chain(&a_only).map(|l| size(&a, &la, l)).collect();
    shape.extend(b_only.iter().map(|l| size(&b, &lb, l)));
    let a3 = a.permuted_axes(IxDyn(&pa)).as_standard_layout().into_owned();
    let b3 = b.permuted_axes(IxDyn(&pb)).as_standard_layout().into_owned();
    let a3 = a3.into_shape_with_order((nb, m, k)).expect("sizes agree");
    let b3 = b3.into_shape_with_order((nb, k, n)).expect("sizes agree");
    let mut out = Array3::<T>::zeros((nb, m, n));
    for i in 0..nb {
        T::gemm(&a3.index_axis(Axis(0), i), &b3.index_axis(Axis(0), i), &mut out.index_axis_mut(Axis(0), i));
    }
    let labels: Vec<Label> = batch.iter().chain(&a_only).chain(&b_only).copied().collect();
    (out.into_shape_with_order(IxDyn(&shape)).expect("sizes agree"), labels)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, run1, t};
    use super::*;
    use sharc_ir::Op;

    fn einsum_op(eq: &str) -> Op {
        Op::Einsum(Einsum { equation: eq.to_string() })
    }

    fn iota(n: usize) -> Vec<f32> {
        (0..n).map(|v| v as f32).collect()
    }

    #[test]
    fn matmul_2d_and_vectors() {
        let a = t(&[2, 3], vec![1f32, 2., 3., 4., 5., 6.]);
        let b = t(&[3, 2], vec![7f32, 8., 9., 10., 11., 12.]);
        let y = run1(&Op::MatMul, &[a.clone(), b]).unwrap();
        assert_close(&y, &[2, 2], &[58., 64., 139., 154.], 0.0);
        // 1-D on the right: matrix-vector, the added dim is removed.
        let v = t(&[3], vec![1f32, 0., -1.]);
        let y = run1(&Op::MatMul, &[a, v.clone()]).unwrap();
        assert_close(&y, &[2], &[-2., -2.], 0.0);
        // 1-D · 1-D is a scalar.
        let y = run1(&Op::MatMul, &[v.clone(), v]).unwrap();
        assert_close(&y, &[], &[2.], 0.0);
    }

    #[test]
    fn matmul_broadcasts_batches() {
        // numpy: np.arange(6).reshape(2,1,1,3) @ np.arange(12).reshape(1,2,3,2)
        let a = t(&[2, 1, 1, 3], iota(6));
        let b = t(&[1, 2, 3, 2], iota(12));
        let y = run1(&Op::MatMul, &[a, b]).unwrap();
        assert_close(&y, &[2, 2, 1, 2], &[10., 13., 28., 31., 28., 40., 100., 112.], 0.0);
        // A shared 2-D weight under a batch of inputs takes the single-GEMM path.
        let y = run1(&Op::MatMul, &[t(&[2, 2, 3], iota(12)), t(&[3, 1], vec![1f32, 1., 1.])]).unwrap();
        assert_close(&y, &[2, 2, 1], &[3., 12., 21., 30.], 0.0);
    }

    #[test]
    fn matmul_empty_dims() {
        // K = 0 gives zeros; M = 0 gives an empty result.
        let y = run1(&Op::MatMul, &[t(&[2, 0], Vec::<f32>::new()), t(&[0, 3], Vec::<f32>::new())]).unwrap();
        assert_close(&y, &[2, 3], &[0.; 6], 0.0);
        let y = run1(&Op::MatMul, &[t(&[0, 2], Vec::<f32>::new()), t(&[2, 3], iota(6))]).unwrap();
        assert_close(&y, &[0, 3], &[], 0.0);
        let y = run1(&Op::MatMul, &[t(&[0, 1, 2], Vec::<i64>::new()), t(&[2, 1], vec![1i64, 2])]).unwrap();
        assert_eq!(y.shape(), &[0, 1, 1]);
    }

    #[test]
    fn matmul_types_and_errors() {
        let y = run1(&Op::MatMul, &[t(&[1, 2], vec![i32::MAX, 1]), t(&[2, 1], vec![2i32, 3])]).unwrap();
        // int32 accumulation wraps: 2·MAX + 3 mod 2^32.
        assert_eq!(y, Tensor::from_vec(&[1, 1], vec![i32::MAX.wrapping_mul(2).wrapping_add(3)]));
        let h = |v: &[f32]| v.iter().map(|&x| half::f16::from_f32(x)).collect::<Vec<_>>();
        let y = run1(&Op::MatMul, &[t(&[1, 2], h(&[0.5, 2.])), t(&[2], h(&[4., 0.25]))]).unwrap();
        assert_eq!(y, Tensor::from_vec(&[1], h(&[2.5])));
        let e = run1(&Op::MatMul, &[t(&[2, 3], iota(6)), t(&[2, 3], iota(6))]).unwrap_err();
        assert!(e.message.contains("inner dims 3 and 2"), "{}", e.message);
        let e = run1(&Op::MatMul, &[t(&[2, 2, 2], iota(8)), t(&[3, 2, 2], iota(12))]).unwrap_err();
        assert!(e.message.contains("do not broadcast"), "{}", e.message);
        assert!(run1(&Op::MatMul, &[t(&[2], iota(2)), t(&[2], vec![1i64, 2])]).is_err());
    }

    #[test]
    fn gemm_attributes() {
        // numpy: 0.5 * a.T @ b.T + 2 * c with a = arange(6).reshape(3,2), b = arange(6).reshape(2,3), c = [1, -1]
        let op = Op::Gemm(Gemm { alpha: 0.5, beta: 2.0, trans_a: true, trans_b: true });
        let y = run1(&op, &[t(&[3, 2], iota(6)), t(&[2, 3], iota(6)), t(&[2], vec![1f32, -1.])]).unwrap();
        assert_close(&y, &[2, 2], &[7., 12., 8.5, 18.], 1e-7);
        // No C, and a C that does not broadcast.
        let op = Op::Gemm(Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: false });
        let y = run1(&op, &[t(&[1, 2], vec![1f64, 2.]), t(&[2, 1], vec![3f64, 4.])]).unwrap();
        assert_eq!(y, Tensor::from_vec(&[1, 1], vec![11f64]));
        let e = run1(&op, &[t(&[1, 2], iota(2)), t(&[2, 2], iota(4)), t(&[3], iota(3))]).unwrap_err();
        assert!(e.message.contains("does not broadcast"), "{}", e.message);
        // beta = 0 ignores C entirely, even NaN.
        let op0 = Op::Gemm(Gemm { alpha: 1.0, beta: 0.0, trans_a: false, trans_b: false });
        let y = run1(&op0, &[t(&[1, 1], vec![2f32]), t(&[1, 1], vec![3f32]), t(&[1], vec![f32::NAN])]).unwrap();
        assert_close(&y, &[1, 1], &[6.], 0.0);
        let y = run1(&op, &[t(&[1, 1], vec![2i64]), t(&[1, 1], vec![3i64]), t(&[1], vec![4i64])]).unwrap();
        assert_eq!(y, Tensor::from_vec(&[1, 1], vec![10i64]));
    }

    #[test]
    fn det_values() {
        // numpy.linalg.det([[1,2],[3,4]]) = -2, det([[0,1],[1,0]]) = -1, singular = 0.
        let y = run1(&Op::Det, &[t(&[3, 2, 2], vec![1f32, 2., 3., 4., 0., 1., 1., 0., 1., 2., 2., 4.])]).unwrap();
        assert_close(&y, &[3], &[-2., -1., 0.], 1e-6);
        // numpy.linalg.det([[2,-1,0],[-1,2,-1],[0,-1,2]]) = 4
        let y = run1(&Op::Det, &[t(&[3, 3], vec![2f64, -1., 0., -1., 2., -1., 0., -1., 2.])]).unwrap();
        assert_close(&y, &[], &[4.], 1e-12);
        assert!(run1(&Op::Det, &[t(&[2, 3], iota(6))]).is_err());
    }

    #[test]
    fn einsum_parses() {
        let e = parse_equation("...ii ->...i").unwrap();
        assert_eq!(e.inputs[0], Term { letters: vec!['i', 'i'], ellipsis: Some(0) });
        assert_eq!(e.output, Some(Term { letters: vec!['i'], ellipsis: Some(0) }));
        assert!(parse_equation("i.j").is_err());
        assert!(parse_equation("i,j->k->l").is_err());
        assert!(parse_equation("i1").is_err());
    }

    #[test]
    fn einsum_matmul_transpose_sum() {
        let a = t(&[2, 3], iota(6));
        let b = t(&[3, 2], iota(6));
        let y = run1(&einsum_op("ij,jk->ik"), &[a.clone(), b]).unwrap();
        assert_close(&y, &[2, 2], &[10., 13., 28., 40.], 0.0);
        let y = run1(&einsum_op("ij->ji"), std::slice::from_ref(&a)).unwrap();
        assert_close(&y, &[3, 2], &[0., 3., 1., 4., 2., 5.], 0.0);
        let y = run1(&einsum_op("ij->i"), std::slice::from_ref(&a)).unwrap();
        assert_close(&y, &[2], &[3., 12.], 0.0);
        // Implicit output: letters seen once, sorted ("ba" -> "ab" is a transpose).
        let y = run1(&einsum_op("ba"), std::slice::from_ref(&a)).unwrap();
        assert_close(&y, &[3, 2], &[0., 3., 1., 4., 2., 5.], 0.0);
        let y = run1(&einsum_op("i,i"), &[t(&[3], iota(3)), t(&[3], iota(3))]).unwrap();
        assert_close(&y, &[], &[5.], 0.0);
        let y = run1(&einsum_op("->"), &[t(&[], vec![4f64])]).unwrap();
        assert_close(&y, &[], &[4.], 0.0);
    }

    #[test]
    fn einsum_diagonals_and_ellipsis() {
        let m = t(&[2, 3, 3], iota(18));
        // np.einsum('...ii->...i', arange(18).reshape(2,3,3))
        let y = run1(&einsum_op("...ii->...i"), std::slice::from_ref(&m)).unwrap();
        assert_close(&y, &[2, 3], &[0., 4., 8., 9., 13., 17.], 0.0);
        // Trace in implicit mode.
        let y = run1(&einsum_op("ii"), &[t(&[3, 3], iota(9))]).unwrap();
        assert_close(&y, &[], &[12.], 0.0);
        // Broadcast ellipsis: np.einsum('...ij,jk->...ik', arange(12).reshape(2,2,3), arange(6).reshape(3,2))
        let y = run1(&einsum_op("...ij,jk->...ik"), &[t(&[2, 2, 3], iota(12)), t(&[3, 2], iota(6))]).unwrap();
        assert_close(&y, &[2, 2, 2], &[10., 13., 28., 40., 46., 67., 64., 94.], 0.0);
        // Size-1 ellipsis dims broadcast: np.einsum('...i,...i->...', ones((2,1,3)), arange(6).reshape(2,3))
        let y = run1(&einsum_op("...i,...i->..."), &[t(&[2, 1, 3], vec![1f32; 6]), t(&[2, 3], iota(6))]).unwrap();
        assert_close(&y, &[2, 2], &[3., 12., 3., 12.], 0.0);
    }

    #[test]
    fn einsum_three_operands_and_outer() {
        // np.einsum('i,ij,j->', [1,2], arange(6).reshape(2,3), [1,0,-1]) = 1*(0-2) + 2*(3-5) = -6
        let y = run1(
            &einsum_op("i,ij,j->"),
            &[t(&[2], vec![1f64, 2.]), t(&[2, 3], (0..6).map(f64::from).collect()), t(&[3], vec![1f64, 0., -1.])],
        )
        .unwrap();
        assert_close(&y, &[], &[-6.], 0.0);
        // Outer product and a label summed inside one operand: np.einsum('ij,k->ik', ...)
        let y = run1(&einsum_op("ij,k->ik"), &[t(&[2, 2], vec![1i32, 2, 3, 4]), t(&[2], vec![1i32, 10])]).unwrap();
        assert_eq!(y, Tensor::from_vec(&[2, 2], vec![3i32, 30, 7, 70]));
        // Batch matmul.
        let y = run1(&einsum_op("bij,bjk->bik"), &[t(&[2, 1, 2], iota(4)), t(&[2, 2, 1], iota(4))]).unwrap();
        assert_close(&y, &[2, 1, 1], &[1., 13.], 0.0);
    }

    #[test]
    fn einsum_errors() {
        let a = t(&[2, 3], iota(6));
        let e = run1(&einsum_op("ijk->i"), std::slice::from_ref(&a)).unwrap_err();
        assert!(e.message.contains("rank 2"), "{}", e.message);
        let e = run1(&einsum_op("ij,ij->i"), &[a.clone(), t(&[3, 2], iota(6))]).unwrap_err();
        assert!(e.message.contains("sizes"), "{}", e.message);
        assert!(run1(&einsum_op("ij->z"), std::slice::from_ref(&a)).is_err());
        assert!(run1(&einsum_op("ij->ii"), std::slice::from_ref(&a)).is_err());
        assert!(run1(&einsum_op("ij,jk->ik"), std::slice::from_ref(&a)).is_err());
    }
}

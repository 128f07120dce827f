//! Ops whose results depend on the data in ways an affine map cannot say:
//! `NonZero` (its result's size is a count of the data), `ScatterElements`
//! (writes at data-chosen places, in order), `TopK` (a selection) and
//! `OneHot`.
//!
//! `NonZero` counts first (a parallel reduction), binds the count to the
//! result's data-dependent dim (see [`super::dims`]), then fills a tensor of
//! exactly that size in one sequential `scf.for` over the input. Everything
//! downstream sees a `tensor<2x?xi64>` whose `?` is that count, so the
//! results are exact, not padded.
//!
//! `ScatterElements` is an `scf.for` over the updates carrying the result
//! tensor: writes happen in index order, so duplicate indices resolve as the
//! ONNX reference does (last write wins, or accumulate with a reduction).
//! One-shot bufferization turns the carried tensor into one buffer updated
//! in place.
//!
//! `TopK` ranks every element of a row against the others (`x_j` beats `x_i`
//! when it is larger, or equal with a smaller index, as ONNX orders ties),
//! then output `k` is the element of rank `k`. That is O(n²) per row but
//! fully parallel linalg; the rows it serves (expert routing, small
//! classification heads) are short.

use super::{Emitter, In, Init, R, dims::Dv, elem_type, identity_exprs, is_unsigned, tensor_ty};
use crate::MlirError;
use sharc_ir::op::ScatterReduction;
use sharc_ir::{DType, NodeId, ValueRef};
use std::fmt::Write as _;

fn norm_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(a as usize)
}

/// `out = x != 0` for a scalar of any dtype (NaN counts as non-zero), as
/// region lines; `out` names the result and prefixes a helper constant.
fn nonzero_test(x: &str, dt: DType, out: &str) -> Result<String, String> {
    let e = elem_type(dt).ok_or("no element type")?;
    let (zero, cmp) = if dt.is_float() {
        (format!("0.0 : {e}"), "arith.cmpf une")
    } else if dt == DType::Bool {
        ("false".to_string(), "arith.cmpi ne")
    } else {
        (format!("0 : {e}"), "arith.cmpi ne")
    };
    Ok(format!("{out}_z = arith.constant {zero}\n{out} = {cmp}, {x}, {out}_z : {e}"))
}

/// The arith op that combines an old element with an update, or `None` when
/// the update replaces it.
fn combine_op(reduction: ScatterReduction, dt: DType) -> Option<&'static str> {
    let f = dt.is_float();
    let u = is_unsigned(dt);
    Some(match reduction {
        ScatterReduction::None => return None,
        ScatterReduction::Add if f => "arith.addf",
        ScatterReduction::Add => "arith.addi",
        ScatterReduction::Mul if f => "arith.mulf",
        ScatterReduction::Mul => "arith.muli",
        ScatterReduction::Max if f => "arith.maximumf",
        ScatterReduction::Max if u => "arith.maxui",
        ScatterReduction::Max => "arith.maxsi",
        ScatterReduction::Min if f => "arith.minimumf",
        ScatterReduction::Min if u => "arith.minui",
        ScatterReduction::Min => "arith.minsi",
    })
}

impl Emitter<'_> {
    /// The row-major coordinates of flat position `i` (an index value inside
    /// a loop body) for a shape given as index values; lines go to `body`.
    fn delinearize(&mut self, body: &mut String, i: &str, sizes: &[String]) -> Vec<String> {
        let mut coords = vec![String::new(); sizes.len()];
        let mut rest = i.to_string();
        for d in (0..sizes.len()).rev() {
            if d == 0 {
                coords[0] = rest.clone();
                break;
            }
            let c = self.fresh();
            let q = self.fresh();
            let _ = writeln!(body, "{c} = arith.remui {rest}, {} : index", sizes[d]);
            let _ = writeln!(body, "{q} = arith.divui {rest}, {} : index", sizes[d]);
            coords[d] = c;
            rest = q;
        }
        coords
    }

    fn sizes(&mut self, dims: &[Dv]) -> R<Vec<String>> {
        dims.iter().map(|d| self.dim_ssa(d)).collect()
    }

    fn product(&mut self, sizes: &[String]) -> String {
        let mut acc = self.index_const(1);
        for s in sizes {
            acc = self.index_op("arith.muli", &acc, s);
        }
        acc
    }

    /// `NonZero`: the coordinates of the non-zero elements, one column each,
    /// in row-major order.
    pub(super) fn non_zero(&mut self, id: NodeId, x: ValueRef, odims: &[Dv]) -> R<String> {
        let (dt, xd) = self.dims_of(x)?;
        let lbl = crate::specialise::label(self.g, id);
        let err = |m: String| MlirError::unsupported(&lbl, "NonZero", m);
        let r = xd.len();
        if odims.len() != 2 || odims[0] != Dv::N(r as u64) {
            return Err(err(format!("the result type {} is not [rank, count]", tensor_ty(DType::I64, odims))));
        }
        let xs = self.val(x)?;
        // 1. The count, as a parallel reduction into a 0-d tensor.
        let rank_exprs = identity_exprs(r);
        let ins = [In { ssa: xs.clone(), dtype: dt, shape: xd.clone(), exprs: rank_exprs }];
        let cnt = self
            .generic(&ins, DType::I64, &[], &[], &vec![false; r], Init::Fill(0.0), |b, a, o| {
                let t = b.op("arith.constant 0 : i64");
                let nz_name = format!("%{}_nz", b.prefix);
                let test = nonzero_test(&a[0], dt, &nz_name)?;
                b.lines.extend(test.lines().map(str::to_string));
                let one = b.iconst(1, "i64");
                let inc = b.op(format!("arith.select {nz_name}, {one}, {t} : i64"));
                Ok(b.op(format!("arith.addi {o}, {inc} : i64")))
            })
            .map_err(err)?;
        let c = self.fresh();
        self.push(format!("{c} = tensor.extract {cnt}[] : tensor<i64>"));
        let n = self.fresh();
        self.push(format!("{n} = arith.index_cast {c} : i64 to index"));
        match &odims[1] {
            Dv::S(_) => self.bind(id, &odims[1], &n)?,
            // Only a literal input has a count known before the run, and
            // that is folded; a fixed count here could disagree with the data.
            Dv::N(_) => return Err(err("the count is fixed at compile time but the input is not".into())),
        }
        // 2. The coordinates, written in one ordered pass.
        let oty = tensor_ty(DType::I64, odims);
        let empty = self.empty(DType::I64, odims)?;
        let sizes = self.sizes(&xd)?;
        let total = self.product(&sizes);
        let (c0, c1) = (self.index_const(0), self.index_const(1));
        let xty = tensor_ty(dt, &xd);
        let (i, pos, acc, res) = (self.fresh(), self.fresh(), self.fresh(), self.fresh());
        let mut body = String::new();
        let coords = self.delinearize(&mut body, &i, &sizes);
        let xv = self.fresh();
        let _ = writeln!(body, "{xv} = tensor.extract {xs}[{}] : {xty}", coords.join(", "));
        let nz = self.fresh();
        let _ = writeln!(body, "{}", nonzero_test(&xv, dt, &nz).map_err(err)?);
        let (ifr, pos1) = (self.fresh(), self.fresh());
        let _ = writeln!(body, "{ifr}:2 = scf.if {nz} -> (index, {oty}) {{");
        let mut cur = acc.clone();
        for (k, coord) in coords.iter().enumerate() {
            let (v, t) = (self.fresh(), self.fresh());
            let kc = self.index_const(k as i64);
            let _ = writeln!(body, "  {v} = arith.index_cast {coord} : index to i64");
            let _ = writeln!(body, "  {t} = tensor.insert {v} into {cur}[{kc}, {pos}] : {oty}");
            cur = t;
        }
        let _ = writeln!(body, "  {pos1} = arith.addi {pos}, {c1} : index");
        let _ = writeln!(body, "  scf.yield {pos1}, {cur} : index, {oty}");
        let _ = writeln!(body, "}} else {{");
        let _ = writeln!(body, "  scf.yield {pos}, {acc} : index, {oty}");
        let _ = writeln!(body, "}}");
        let _ = writeln!(body, "scf.yield {ifr}#0, {ifr}#1 : index, {oty}");
        let mut s = format!(
            "{res}:2 = scf.for {i} = {c0} to {total} step {c1} iter_args({pos} = {c0}, {acc} = {empty}) -> (index, {oty}) {{\n"
        );
        for l in body.lines() {
            let _ = writeln!(s, "  {l}");
        }
        s.push('}');
        self.push(s);
        Ok(format!("{res}#1"))
    }

    /// `OneHot`: `values[1]` where the (wrapped) index equals the position
    /// on the new axis, `values[0]` elsewhere; indices outside
    /// `[-depth, depth)` give a row of `values[0]`, as ONNX says.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn one_hot(
        &mut self,
        ind: ValueRef,
        depth: i64,
        values: ValueRef,
        axis: i64,
        odt: DType,
        odims: &[Dv],
    ) -> Result<String, String> {
        let e = |m: MlirError| m.to_string();
        let (idt, idims) = self.dims_of(ind).map_err(e)?;
        let (vdt, vdims) = self.dims_of(values).map_err(e)?;
        if vdims != [Dv::N(2)] || vdt != odt {
            return Err(format!("values must be a 2-element {odt} tensor, not {}", tensor_ty(vdt, &vdims)));
        }
        let r = idims.len() + 1;
        let a = norm_axis(axis, r)?;
        if odims.len() != r || odims[a] != Dv::N(depth.max(0) as u64) {
            return Err(format!("the result type {} does not have depth {depth} on axis {a}", tensor_ty(odt, odims)));
        }
        let vs = self.val(values).map_err(e)?;
        let (c0, c1) = (self.index_const(0), self.index_const(1));
        let vty = tensor_ty(vdt, &vdims);
        let (off, on) = (self.fresh(), self.fresh());
        self.push(format!("{off} = tensor.extract {vs}[{c0}] : {vty}"));
        self.push(format!("{on} = tensor.extract {vs}[{c1}] : {vty}"));
        let is = self.val(ind).map_err(e)?;
        let exprs: Vec<String> = (0..r).filter(|&d| d != a).map(|d| format!("d{d}")).collect();
        let ins = [In { ssa: is, dtype: idt, shape: idims, exprs }];
        let et = elem_type(odt).ok_or("no element type")?;
        self.generic(&ins, odt, odims, &identity_exprs(r), &vec![true; r], Init::Empty, |b, args, _| {
            let i = b.convert(&args[0], idt, DType::I64)?;
            let dep = b.iconst(depth, "i64");
            let z = b.iconst(0, "i64");
            let neg = b.op(format!("arith.cmpi slt, {i}, {z} : i64"));
            let w = b.op(format!("arith.addi {i}, {dep} : i64"));
            let i = b.op(format!("arith.select {neg}, {w}, {i} : i64"));
            let k = b.index(a);
            let k = b.op(format!("arith.index_cast {k} : index to i64"));
            let hit = b.op(format!("arith.cmpi eq, {i}, {k} : i64"));
            Ok(b.op(format!("arith.select {hit}, {on}, {off} : {et}")))
        })
    }

    /// `ScatterElements`: a copy of `data` with `updates` written (or
    /// combined) at the places `indices` name along `axis`, in index order.
    /// Indices outside `[-n, n)` are skipped, so bad data never writes
    /// outside the buffer.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scatter_elements(
        &mut self,
        data: ValueRef,
        indices: ValueRef,
        updates: ValueRef,
        axis: i64,
        reduction: ScatterReduction,
        odt: DType,
        odims: &[Dv],
    ) -> Result<String, String> {
        let e = |m: MlirError| m.to_string();
        let (ddt, dd) = self.dims_of(data).map_err(e)?;
        let (idt, id) = self.dims_of(indices).map_err(e)?;
        let (udt, ud) = self.dims_of(updates).map_err(e)?;
        if id != ud || udt != ddt || ddt != odt || dd != odims {
            return Err(format!(
                "indices {}, updates {}, data {} and result {} do not fit together",
                tensor_ty(idt, &id),
                tensor_ty(udt, &ud),
                tensor_ty(ddt, &dd),
                tensor_ty(odt, odims)
            ));
        }
        let r = dd.len();
        let a = norm_axis(axis, r)?;
        for d in (0..r).filter(|&d| d != a) {
            let fits = id[d] == dd[d] || matches!((id[d].fixed(), dd[d].fixed()), (Some(x), Some(y)) if x <= y);
            if !fits {
                return Err(format!("indices dim {d} may exceed the data's, which is not checked at run time"));
            }
        }
        let ds = self.val(data).map_err(e)?;
        let is = self.val(indices).map_err(e)?;
        let us = self.val(updates).map_err(e)?;
        let sizes = self.sizes(&id).map_err(e)?;
        let total = self.product(&sizes);
        let n = self.dim_ssa(&dd[a]).map_err(e)?;
        let (c0, c1) = (self.index_const(0), self.index_const(1));
        let oty = tensor_ty(odt, odims);
        let ity = tensor_ty(idt, &id);
        let uty = tensor_ty(udt, &ud);
        let ie = elem_type(idt).ok_or("no element type")?;
        let et = elem_type(odt).ok_or("no element type")?;
        let (i, acc, res) = (self.fresh(), self.fresh(), self.fresh());
        let mut body = String::new();
        let coords = self.delinearize(&mut body, &i, &sizes);
        let (iv, ix, neg, w, j, ok1, ok2, ok, u, ifr) = (
            self.fresh(),
            self.fresh(),
            self.fresh(),
            self.fresh(),
            self.fresh(),
            self.fresh(),
            self.fresh(),
            self.fresh(),
            self.fresh(),
            self.fresh(),
        );
        let _ = writeln!(body, "{iv} = tensor.extract {is}[{}] : {ity}", coords.join(", "));
        if ie == "i64" || ie == "i32" || ie == "i16" || ie == "i8" {
            let _ = writeln!(body, "{ix} = arith.index_cast {iv} : {ie} to index");
        } else {
            return Err(format!("indices of type {idt} are not lowered"));
        }
        let _ = writeln!(body, "{neg} = arith.cmpi slt, {ix}, {c0} : index");
        let _ = writeln!(body, "{w} = arith.addi {ix}, {n} : index");
        let _ = writeln!(body, "{j} = arith.select {neg}, {w}, {ix} : index");
        let _ = writeln!(body, "{ok1} = arith.cmpi sge, {j}, {c0} : index");
        let _ = writeln!(body, "{ok2} = arith.cmpi slt, {j}, {n} : index");
        let _ = writeln!(body, "{ok} = arith.andi {ok1}, {ok2} : i1");
        let _ = writeln!(body, "{u} = tensor.extract {us}[{}] : {uty}", coords.join(", "));
        let mut tgt = coords.clone();
        tgt[a] = j.clone();
        let tgt = tgt.join(", ");
        let _ = writeln!(body, "{ifr} = scf.if {ok} -> ({oty}) {{");
        let val = match combine_op(reduction, odt) {
            None => u.clone(),
            Some(op) => {
                let (old, new) = (self.fresh(), self.fresh());
                let _ = writeln!(body, "  {old} = tensor.extract {acc}[{tgt}] : {oty}");
                let _ = writeln!(body, "  {new} = {op} {old}, {u} : {et}");
                new
            }
        };
        let t = self.fresh();
        let _ = writeln!(body, "  {t} = tensor.insert {val} into {acc}[{tgt}] : {oty}");
        let _ = writeln!(body, "  scf.yield {t} : {oty}");
        let _ = writeln!(body, "}} else {{");
        let _ = writeln!(body, "  scf.yield {acc} : {oty}");
        let _ = writeln!(body, "}}");
        let _ = writeln!(body, "scf.yield {ifr} : {oty}");
        let mut s = format!("{res} = scf.for {i} = {c0} to {total} step {c1} iter_args({acc} = {ds}) -> ({oty}) {{\n");
        for l in body.lines() {
            let _ = writeln!(s, "  {l}");
        }
        s.push('}');
        self.push(s);
        Ok(res)
    }

    /// `TopK`: the values and (i64) indices of the `k` largest (or smallest)
    /// elements along `axis`, best first, ties to the smaller index.
    pub(super) fn top_k(
        &mut self,
        x: ValueRef,
        k: i64,
        axis: i64,
        largest: bool,
        odt: DType,
        odims: &[Dv],
    ) -> Result<(String, String), String> {
        let e = |m: MlirError| m.to_string();
        let (dt, xd) = self.dims_of(x).map_err(e)?;
        let r = xd.len();
        let a = norm_axis(axis, r)?;
        if k < 0 || xd[a].fixed().is_some_and(|n| k as u64 > n) {
            return Err(format!("K = {k} is not in [0, {}]", super::dim_name(&xd[a])));
        }
        let mut vd = xd.clone();
        vd[a] = Dv::N(k as u64);
        if vd != odims || dt != odt {
            return Err(format!("the result type {} is not {}", tensor_ty(odt, odims), tensor_ty(dt, &vd)));
        }
        let xs = self.val(x).map_err(e)?;
        let f = dt.is_float();
        let (gt, eq) = match (f, is_unsigned(dt), largest) {
            (true, _, true) => ("arith.cmpf ogt", "arith.cmpf oeq"),
            (true, _, false) => ("arith.cmpf olt", "arith.cmpf oeq"),
            (false, true, true) => ("arith.cmpi ugt", "arith.cmpi eq"),
            (false, true, false) => ("arith.cmpi ult", "arith.cmpi eq"),
            (false, false, true) => ("arith.cmpi sgt", "arith.cmpi eq"),
            (false, false, false) => ("arith.cmpi slt", "arith.cmpi eq"),
        };
        let xe = elem_type(dt).ok_or("no element type")?;
        // rank[.., i, ..] = #{ j : x_j beats x_i }
        let other: Vec<String> = (0..r).map(|d| if d == a { format!("d{r}") } else { format!("d{d}") }).collect();
        let ins = [
            In { ssa: xs.clone(), dtype: dt, shape: xd.clone(), exprs: identity_exprs(r) },
            In { ssa: xs.clone(), dtype: dt, shape: xd.clone(), exprs: other.clone() },
        ];
        let mut iters = vec![true; r + 1];
        iters[r] = false;
        let rank = self.generic(&ins, DType::I64, &xd, &identity_exprs(r), &iters, Init::Fill(0.0), |b, v, o| {
            let better = b.op(format!("{gt}, {}, {} : {xe}", v[1], v[0]));
            let same = b.op(format!("{eq}, {}, {} : {xe}", v[1], v[0]));
            let (i, j) = (b.index(a), b.index(r));
            let before = b.op(format!("arith.cmpi ult, {j}, {i} : index"));
            let tie = b.op(format!("arith.andi {same}, {before} : i1"));
            let beat = b.op(format!("arith.ori {better}, {tie} : i1"));
            let one = b.iconst(1, "i64");
            let zero = b.iconst(0, "i64");
            let inc = b.op(format!("arith.select {beat}, {one}, {zero} : i64"));
            Ok(b.op(format!("arith.addi {o}, {inc} : i64")))
        })?;
        // index[.., k, ..] = the i whose rank is k
        let ins = [In { ssa: rank, dtype: DType::I64, shape: xd.clone(), exprs: other }];
        let indices = self.generic(&ins, DType::I64, &vd, &identity_exprs(r), &iters, Init::Fill(0.0), |b, v, o| {
            let kk = b.index(a);
            let kk = b.op(format!("arith.index_cast {kk} : index to i64"));
            let hit = b.op(format!("arith.cmpi eq, {}, {kk} : i64", v[0]));
            let j = b.index(r);
            let j = b.op(format!("arith.index_cast {j} : index to i64"));
            Ok(b.op(format!("arith.select {hit}, {j}, {o} : i64")))
        })?;
        let xty = tensor_ty(dt, &xd);
        let ins = [In { ssa: indices.clone(), dtype: DType::I64, shape: vd.clone(), exprs: identity_exprs(r) }];
        let values = self.generic(&ins, odt, &vd, &identity_exprs(r), &vec![true; r], Init::Empty, |b, v, _| {
            let j = b.op(format!("arith.index_cast {} : i64 to index", v[0]));
            let idx: Vec<String> = (0..r).map(|d| if d == a { j.clone() } else { b.index(d) }).collect();
            Ok(b.op(format!("tensor.extract {xs}[{}] : {xty}", idx.join(", "))))
        })?;
        Ok((values, indices))
    }
}

//! The structured ops that are more than one elementwise generic: reshapes,
//! contractions, gathers, slices, concatenation, softmax, LayerNorm and the
//! reductions.

use super::*;

impl Emitter<'_> {
    pub(super) fn known_f64(&self, v: ValueRef, node: &str, op: &str, what: &str) -> R<f64> {
        let t = self.known.get(&v).ok_or_else(|| {
            MlirError::unsupported(node, op, format!("the {what} input must be known at compile time"))
        })?;
        t.to_f64_vec()
            .and_then(|v| v.first().copied())
            .ok_or_else(|| MlirError::unsupported(node, op, format!("the {what} input is not a number")))
    }

    /// Any reshape (Reshape, Flatten, Squeeze, Unsqueeze). The target comes
    /// from the inferred type, not from a shape input, so a shape vector
    /// computed at run time needs no reading back.
    pub(super) fn reshape(&mut self, x: ValueRef, odims: &[Dv]) -> R<String> {
        let (dt, xdims) = self.dims_of(x)?;
        let ssa = self.val(x)?;
        if xdims == odims {
            return Ok(ssa);
        }
        let (Some(shape), Some(oshape)) = (all_fixed(&xdims), all_fixed(odims)) else {
            // Run-time dims: `tensor.reshape` with the sizes as a vector
            // (equal element counts follow from inference).
            if xdims.is_empty() || odims.is_empty() {
                return Err(MlirError::Graph("a reshape between a scalar and run-time dims".into()));
            }
            let mut vals = Vec::new();
            for d in odims {
                vals.push(self.dim_ssa(d)?);
            }
            let c = self.tensor_of_indices(&vals, DType::I64, &[odims.len() as u64])?;
            let s = self.fresh();
            self.push(format!(
                "{s} = tensor.reshape {ssa}({c}) : ({}, tensor<{}xi64>) -> {}",
                tensor_ty(dt, &xdims),
                odims.len(),
                tensor_ty(dt, odims)
            ));
            return Ok(s);
        };
        let oshape = oshape.as_slice();
        let n_in: u64 = shape.iter().product();
        let n_out: u64 = oshape.iter().product();
        if n_in != n_out {
            return Err(MlirError::Graph(format!("reshape of {shape:?} to {oshape:?} changes the element count")));
        }
        let (ity, oty) = (tensor_ty(dt, &shape), tensor_ty(dt, oshape));
        let s = self.fresh();
        if oshape.is_empty() {
            self.push(format!("{s} = tensor.collapse_shape {ssa} [] : {ity} into {oty}"));
        } else if shape.is_empty() {
            let dims: Vec<String> = oshape.iter().map(|d| d.to_string()).collect();
            self.push(format!(
                "{s} = tensor.expand_shape {ssa} [] output_shape [{}] : {ity} into {oty}",
                dims.join(", ")
            ));
        } else if let Some(groups) = reshape_groups(&shape, oshape) {
            // A collapse then an expand: unlike `tensor.reshape`, both are
            // seen through by elementwise fusion (fusion by expansion), so a
            // head split or merge does not cut a chain of loops in two.
            let mid: Vec<u64> = groups.iter().map(|(gi, _)| gi.iter().map(|&i| shape[i]).product()).collect();
            let assoc = |pick: fn(&Group) -> &Vec<usize>| -> String {
                let parts: Vec<String> = groups
                    .iter()
                    .map(|g| format!("[{}]", pick(g).iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")))
                    .collect();
                format!("[{}]", parts.join(", "))
            };
            let mut cur = ssa.clone();
            if mid.len() != shape.len() {
                let c = self.fresh();
                self.push(format!(
                    "{c} = tensor.collapse_shape {cur} {} : {ity} into {}",
                    assoc(|g| &g.0),
                    tensor_ty(dt, &mid)
                ));
                cur = c;
            }
            if mid.len() != oshape.len() {
                let dims: Vec<String> = oshape.iter().map(|d| d.to_string()).collect();
                self.push(format!(
                    "{s} = tensor.expand_shape {cur} {} output_shape [{}] : {} into {oty}",
                    assoc(|g| &g.1),
                    dims.join(", "),
                    tensor_ty(dt, &mid)
                ));
            } else {
                return Ok(cur);
            }
        } else {
            let c = self.fresh();
            let dims: Vec<String> = oshape.iter().map(|d| d.to_string()).collect();
            self.push(format!("{c} = arith.constant dense<[{}]> : tensor<{}xi64>", dims.join(", "), oshape.len()));
            self.push(format!("{s} = tensor.reshape {ssa}({c}) : ({ity}, tensor<{}xi64>) -> {oty}", oshape.len()));
        }
        Ok(s)
    }

    /// `alpha * op(A) @ op(B)` with numpy batch broadcasting; loops ordered
    /// batch, m, k, n so the innermost loop is contiguous.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn matmul(
        &mut self,
        a: ValueRef,
        b: ValueRef,
        odt: DType,
        oshape: &[Dv],
        alpha: f64,
        ta: bool,
        tb: bool,
    ) -> Result<String, String> {
        let (adt, ashape) = self.dims_of(a).map_err(|e| e.to_string())?;
        let (bdt, bshape) = self.dims_of(b).map_err(|e| e.to_string())?;
        if adt != odt || bdt != odt {
            return Err(format!("operands {adt} and {bdt} must both be {odt}"));
        }
        if ashape.is_empty() || bshape.is_empty() {
            return Err("operands must have rank 1 or more".into());
        }
        let a1 = ashape.len() == 1;
        let b1 = bshape.len() == 1;
        let nb = oshape.len() - usize::from(!a1) - usize::from(!b1);
        // Loop ids: batch 0..nb, then m (if any), k, n (if any).
        let m = nb;
        let k = nb + usize::from(!a1);
        let n = k + 1;
        let loops = k + 1 + usize::from(!b1);
        let batch_exprs = |shape: &[Dv], mat: usize| -> Result<Vec<String>, String> {
            let lead = shape.len() - mat;
            if lead > nb {
                return Err(format!("an operand has {lead} batch dims, the result {nb}"));
            }
            bcast_exprs(&shape[..lead], &oshape[..nb])
        };
        let mut aex = if a1 { vec![] } else { batch_exprs(&ashape, 2)? };
        if a1 {
            aex.push(format!("d{k}"));
        } else if ta {
            aex.extend([format!("d{k}"), format!("d{m}")]);
        } else {
            aex.extend([format!("d{m}"), format!("d{k}")]);
        }
        let mut bex = if b1 { vec![] } else { batch_exprs(&bshape, 2)? };
        if b1 {
            bex.push(format!("d{k}"));
        } else if tb {
            bex.extend([format!("d{n}"), format!("d{k}")]);
        } else {
            bex.extend([format!("d{k}"), format!("d{n}")]);
        }
        let mut oex: Vec<String> = (0..nb).map(|i| format!("d{i}")).collect();
        if !a1 {
            oex.push(format!("d{m}"));
        }
        if !b1 {
            oex.push(format!("d{n}"));
        }
        let mut iters = vec![true; loops];
        iters[k] = false;
        // A size-1 batch dim broadcast against a larger one reads index 0,
        // which `linalg.contract` cannot express; those stay generics.
        let plain = aex.iter().chain(&bex).all(|e| e.starts_with('d'));
        let ins = if plain {
            [self.through_transpose(a, aex)?, self.through_transpose(b, bex)?]
        } else {
            let sa = self.val(a).map_err(|e| e.to_string())?;
            let sb = self.val(b).map_err(|e| e.to_string())?;
            [
                In { ssa: sa, dtype: adt, shape: ashape, exprs: aex },
                In { ssa: sb, dtype: bdt, shape: bshape, exprs: bex },
            ]
        };
        let prod = if plain {
            self.contract([&ins[0], &ins[1]], odt, oshape, &oex, loops)?
        } else {
            self.generic(&ins, odt, oshape, &oex, &iters, Init::Fill(0.0), |b, a, o| {
                let p = b.mul(&a[0], &a[1], odt);
                Ok(b.add(o, &p, odt))
            })?
        };
        if alpha == 1.0 {
            return Ok(prod);
        }
        let r = oshape.len();
        let ins = [In { ssa: prod, dtype: odt, shape: oshape.to_vec(), exprs: identity_exprs(r) }];
        self.generic(&ins, odt, oshape, &identity_exprs(r), &vec![true; r], Init::Empty, |b, a, _| {
            let k = b.konst(alpha, odt);
            Ok(b.mul(&k, &a[0], odt))
        })
    }

    /// A contraction operand `v` read through `exprs`. When `v` is a
    /// Transpose, its input is read instead, with the permutation folded
    /// into the expressions: attention's `Q K^T` and the head transposes
    /// then cost no copy of their own (the Transpose's own loop nest is
    /// dead and dropped when nothing else reads it).
    fn through_transpose(&mut self, v: ValueRef, exprs: Vec<String>) -> Result<In, String> {
        let node = self.g.node(v.node);
        if let Op::Transpose(t) = &node.op
            && v.port == 0
            && let Some(Some(x)) = self.g.node_inputs(v.node).first().copied()
        {
            let (dt, shape) = self.dims_of(x).map_err(|e| e.to_string())?;
            let r = shape.len();
            let perm: Vec<usize> = match &t.perm {
                Some(p) => p.iter().map(|&a| usize::try_from(a).unwrap_or(usize::MAX)).collect(),
                None => (0..r).rev().collect(),
            };
            // Output dim j of the Transpose is input dim perm[j].
            let mut xex = vec![String::new(); r];
            let valid = perm.len() == r && exprs.len() == r;
            if valid {
                for (j, &p) in perm.iter().enumerate() {
                    if p < r && xex[p].is_empty() {
                        xex[p] = exprs[j].clone();
                    }
                }
            }
            if valid && xex.iter().all(|e| !e.is_empty()) {
                let ssa = self.val(x).map_err(|e| e.to_string())?;
                return Ok(In { ssa, dtype: dt, shape, exprs: xex });
            }
        }
        let (dt, shape) = self.dims_of(v).map_err(|e| e.to_string())?;
        let ssa = self.val(v).map_err(|e| e.to_string())?;
        Ok(In { ssa, dtype: dt, shape, exprs })
    }

    pub(super) fn gather(
        &mut self,
        data: ValueRef,
        idx: ValueRef,
        axis: i64,
        odt: DType,
        oshape: &[Dv],
    ) -> Result<String, String> {
        let (ddt, dshape) = self.dims_of(data).map_err(|e| e.to_string())?;
        let (idt, ishape) = self.dims_of(idx).map_err(|e| e.to_string())?;
        let r = dshape.len() as i64;
        let axis = if axis < 0 { axis + r } else { axis };
        if axis < 0 || axis >= r {
            return Err(format!("axis out of range for rank {r}"));
        }
        let axis = axis as usize;
        let q = ishape.len();
        if dshape[axis] == Dv::N(0) {
            return Err("gathering from an empty axis".into());
        }
        // The axis size as an i64 outside the loop (it may be a run-time dim).
        let n_idx = self.dim_ssa(&dshape[axis]).map_err(|e| e.to_string())?;
        let nn = self.fresh();
        self.push(format!("{nn} = arith.index_cast {n_idx} : index to i64"));
        let dssa = self.val(data).map_err(|e| e.to_string())?;
        let issa = self.val(idx).map_err(|e| e.to_string())?;
        let ie = elem_type(idt).ok_or("no element type")?;
        let dty = tensor_ty(ddt, &dshape);
        let exprs: Vec<String> = (0..q).map(|i| format!("d{}", axis + i)).collect();
        let ins = [In { ssa: issa, dtype: idt, shape: ishape, exprs }];
        let ro = oshape.len();
        self.generic(&ins, odt, oshape, &identity_exprs(ro), &vec![true; ro], Init::Empty, |b, a, _| {
            // Negative indices count from the end; out-of-range ones are
            // clamped so that bad data can never read outside the buffer.
            let i64v = if ie == "i64" { a[0].clone() } else { b.op(format!("arith.extsi {} : {ie} to i64", a[0])) };
            let z = b.iconst(0, "i64");
            let one = b.iconst(1, "i64");
            let hi = b.op(format!("arith.subi {nn}, {one} : i64"));
            let neg = b.op(format!("arith.cmpi slt, {i64v}, {z} : i64"));
            let wrapped = b.op(format!("arith.addi {i64v}, {nn} : i64"));
            let j = b.op(format!("arith.select {neg}, {wrapped}, {i64v} : i64"));
            let j = b.op(format!("arith.maxsi {j}, {z} : i64"));
            let j = b.op(format!("arith.minsi {j}, {hi} : i64"));
            let j = b.op(format!("arith.index_cast {j} : i64 to index"));
            let mut idxs = Vec::new();
            for d in 0..dshape.len() {
                if d < axis {
                    idxs.push(b.index(d));
                } else if d == axis {
                    idxs.push(j.clone());
                } else {
                    idxs.push(b.index(d + q - 1));
                }
            }
            Ok(b.op(format!("tensor.extract {dssa}[{}] : {dty}", idxs.join(", "))))
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn slice(
        &mut self,
        x: ValueRef,
        starts: &[i64],
        ends: &[i64],
        axes: Option<Vec<i64>>,
        steps: Option<Vec<i64>>,
        odt: DType,
        odims: &[Dv],
    ) -> Result<String, String> {
        let (dt, xdims) = self.dims_of(x).map_err(|e| e.to_string())?;
        let r = xdims.len();
        let axes: Vec<i64> = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
        if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            return Err("starts, ends, axes and steps differ in length".into());
        }
        let mut start = vec![0i64; r];
        let mut step = vec![1i64; r];
        for i in 0..starts.len() {
            let a = if axes[i] < 0 { axes[i] + r as i64 } else { axes[i] };
            if a < 0 || a >= r as i64 {
                return Err(format!("axis {} out of range for rank {r}", axes[i]));
            }
            let a = a as usize;
            let n = xdims[a].fixed().ok_or("a sliced axis has a data-dependent size")? as i64;
            let s = steps[i];
            if s == 0 {
                return Err("a step is 0".into());
            }
            let mut b = starts[i];
            if b < 0 {
                b = b.saturating_add(n);
            }
            b = if s > 0 { b.clamp(0, n) } else { b.clamp(0, (n - 1).max(0)) };
            start[a] = b;
            step[a] = s;
        }
        let ssa = self.val(x).map_err(|e| e.to_string())?;
        if step.iter().all(|&s| s > 0) {
            // linalg infers loop bounds from operands read through plain
            // dims, so a strided window is cut with `extract_slice` rather
            // than read through an offset map.
            let list = |v: Vec<String>| v.join(", ");
            let sizes: Vec<String> =
                odims.iter().map(|d| self.dim_operand(d)).collect::<R<_>>().map_err(|e| e.to_string())?;
            let s = self.fresh();
            self.push(format!(
                "{s} = tensor.extract_slice {ssa}[{}] [{}] [{}] : {} to {}",
                list(start.iter().map(|v| v.to_string()).collect()),
                list(sizes),
                list(step.iter().map(|v| v.to_string()).collect()),
                tensor_ty(dt, &xdims),
                tensor_ty(odt, odims)
            ));
            return Ok(s);
        }
        let (Some(shape), Some(oshape)) = (all_fixed(&xdims), all_fixed(odims)) else {
            return Err("negative steps on a tensor with data-dependent dims are not lowered".into());
        };
        let oshape = oshape.as_slice();
        // Negative steps: an affine read `start + d * step`, which is never a
        // plain dim on the reversed axes. Plain dims elsewhere have the
        // output's size, which the branch above ensures.
        if (0..r).any(|i| step[i] == 1 && (start[i] != 0 || shape[i] != oshape[i])) {
            let s = self.fresh();
            let list = |v: Vec<String>| v.join(", ");
            let mid: Vec<u64> = (0..r).map(|i| if step[i] == 1 { oshape[i] } else { shape[i] }).collect();
            self.push(format!(
                "{s} = tensor.extract_slice {ssa}[{}] [{}] [{}] : {} to {}",
                list((0..r).map(|i| if step[i] == 1 { start[i].to_string() } else { "0".into() }).collect()),
                list(mid.iter().map(|v| v.to_string()).collect()),
                list(vec!["1".to_string(); r]),
                tensor_ty(dt, &shape),
                tensor_ty(dt, &mid)
            ));
            for i in 0..r {
                if step[i] == 1 {
                    start[i] = 0;
                }
            }
            let exprs: Vec<String> = (0..r)
                .map(|i| if step[i] == 1 { format!("d{i}") } else { format!("d{i} * {} + {}", step[i], start[i]) })
                .collect();
            let ins = [In { ssa: s, dtype: dt, shape: dv(&mid), exprs }];
            return self.generic(&ins, odt, odims, &identity_exprs(r), &vec![true; r], Init::Empty, |_, a, _| {
                Ok(a[0].clone())
            });
        }
        let exprs: Vec<String> = (0..r)
            .map(|i| match (start[i], step[i]) {
                (0, 1) => format!("d{i}"),
                (b, 1) => format!("d{i} + {b}"),
                (b, s) => format!("d{i} * {s} + {b}"),
            })
            .collect();
        let ins = [In { ssa, dtype: dt, shape: dv(&shape), exprs }];
        self.generic(&ins, odt, odims, &identity_exprs(r), &vec![true; r], Init::Empty, |_, a, _| Ok(a[0].clone()))
    }

    pub(super) fn concat(&mut self, vs: &[ValueRef], axis: usize, odt: DType, odims: &[Dv]) -> R<String> {
        let oty = tensor_ty(odt, odims);
        let mut acc = self.empty(odt, odims)?;
        // The running offset: a number while every part so far is static.
        let mut offset: Result<u64, String> = Ok(0);
        for &v in vs {
            let (dt, shape) = self.dims_of(v)?;
            if shape.len() != odims.len() || dt != odt {
                return Err(MlirError::Graph(format!("Concat input '{}' does not match", self.g.value_info(v).name)));
            }
            if shape[axis] == Dv::N(0) {
                continue;
            }
            let ssa = self.val(v)?;
            let at = match &offset {
                Ok(n) => n.to_string(),
                Err(s) => s.clone(),
            };
            let offs: Vec<String> = (0..shape.len()).map(|i| if i == axis { at.clone() } else { "0".into() }).collect();
            let sizes: Vec<String> = shape.iter().map(|d| self.dim_operand(d)).collect::<R<_>>()?;
            let ones = vec!["1"; shape.len()];
            let s = self.fresh();
            self.push(format!(
                "{s} = tensor.insert_slice {ssa} into {acc}[{}] [{}] [{}] : {} into {oty}",
                offs.join(", "),
                sizes.join(", "),
                ones.join(", "),
                tensor_ty(dt, &shape)
            ));
            acc = s;
            offset = match (offset, shape[axis].fixed()) {
                (Ok(o), Some(n)) => Ok(o + n),
                (o, _) => {
                    let cur = match o {
                        Ok(n) => self.index_const(n as i64),
                        Err(s) => s,
                    };
                    let d = self.dim_ssa(&shape[axis])?;
                    Err(self.index_op("arith.addi", &cur, &d))
                }
            };
        }
        if let (Ok(o), Some(n)) = (&offset, odims[axis].fixed())
            && *o != n
        {
            return Err(MlirError::Graph(format!("Concat parts cover {o} of {n} on the axis")));
        }
        Ok(acc)
    }

    /// A reduction of `x` over the dims in `red` into a tensor with those
    /// dims dropped; `f(b, acc, x)` combines.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reduce_dims(
        &mut self,
        x_ssa: &str,
        dt: DType,
        shape: &[u64],
        red: &[bool],
        init: f64,
        extra: Vec<In>,
        f: impl FnOnce(&mut Body, &str, &[String]) -> BodyResult,
    ) -> Result<(String, Vec<u64>), String> {
        let r = shape.len();
        let oshape: Vec<u64> = (0..r).filter(|&i| !red[i]).map(|i| shape[i]).collect();
        let oex: Vec<String> = (0..r).filter(|&i| !red[i]).map(|i| format!("d{i}")).collect();
        let mut ins = vec![In { ssa: x_ssa.to_string(), dtype: dt, shape: dv(shape), exprs: identity_exprs(r) }];
        ins.extend(extra);
        let iters: Vec<bool> = red.iter().map(|&x| !x).collect();
        let s = self.generic(&ins, dt, &dv(&oshape), &oex, &iters, Init::Fill(init), |b, a, o| f(b, o, a))?;
        Ok((s, oshape))
    }

    pub(super) fn softmax(
        &mut self,
        x: ValueRef,
        axis: i64,
        log: bool,
        odt: DType,
        oshape: &[u64],
    ) -> Result<String, String> {
        if !odt.is_float() {
            return Err("Softmax needs a float input".into());
        }
        let (dt, shape) = self.shape_of(x).map_err(|e| e.to_string())?;
        let r = shape.len() as i64;
        let a = if axis < 0 { axis + r } else { axis };
        if a < 0 || a >= r {
            return Err(format!("axis {axis} out of range for rank {r}"));
        }
        let a = a as usize;
        let r = r as usize;
        let red: Vec<bool> = (0..r).map(|i| i == a).collect();
        let xs = self.val(x).map_err(|e| e.to_string())?;
        let (mx, rshape) =
            self.reduce_dims(&xs, dt, &shape, &red, f64::NEG_INFINITY, vec![], |b, o, a| Ok(b.max(o, &a[0], dt)))?;
        let rex: Vec<String> = (0..r).filter(|&i| i != a).map(|i| format!("d{i}")).collect();
        let mx_in = || In { ssa: mx.clone(), dtype: dt, shape: dv(&rshape), exprs: rex.clone() };
        let (sum, _) = self.reduce_dims(&xs, dt, &shape, &red, 0.0, vec![mx_in()], |b, o, a| {
            let d = b.f2("arith.subf", &a[0], &a[1], dt);
            let e = b.f1("math.exp", &d, dt);
            Ok(b.f2("arith.addf", o, &e, dt))
        })?;
        let ins = [
            In { ssa: xs, dtype: dt, shape: dv(&shape), exprs: identity_exprs(r) },
            mx_in(),
            In { ssa: sum, dtype: dt, shape: dv(&rshape), exprs: rex.clone() },
        ];
        self.generic(&ins, odt, &dv(oshape), &identity_exprs(r), &vec![true; r], Init::Empty, |b, a, _| {
            let d = b.f2("arith.subf", &a[0], &a[1], dt);
            if log {
                let l = b.f1("math.log", &a[2], dt);
                Ok(b.f2("arith.subf", &d, &l, dt))
            } else {
                let e = b.f1("math.exp", &d, dt);
                Ok(b.f2("arith.divf", &e, &a[2], dt))
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn layer_norm(
        &mut self,
        x: ValueRef,
        scale: ValueRef,
        bias: Option<ValueRef>,
        axis: i64,
        eps: f64,
        odt: DType,
        oshape: &[u64],
    ) -> Result<String, String> {
        let (dt, shape) = self.shape_of(x).map_err(|e| e.to_string())?;
        if !dt.is_float() {
            return Err("LayerNormalization needs a float input".into());
        }
        let r = shape.len() as i64;
        let a = if axis < 0 { axis + r } else { axis };
        if a < 0 || a >= r {
            return Err(format!("axis {axis} out of range for rank {r}"));
        }
        let (a, r) = (a as usize, r as usize);
        let count: u64 = shape[a..].iter().product();
        let red: Vec<bool> = (0..r).map(|i| i >= a).collect();
        let xs = self.val(x).map_err(|e| e.to_string())?;
        let (sum, rshape) =
            self.reduce_dims(&xs, dt, &shape, &red, 0.0, vec![], |b, o, a| Ok(b.f2("arith.addf", o, &a[0], dt)))?;
        let rex: Vec<String> = (0..a).map(|i| format!("d{i}")).collect();
        let cnt = count as f64;
        let sum_in = || In { ssa: sum.clone(), dtype: dt, shape: dv(&rshape), exprs: rex.clone() };
        let (var, _) = self.reduce_dims(&xs, dt, &shape, &red, 0.0, vec![sum_in()], |b, o, a| {
            let n = b.fconst(cnt, dt);
            let mean = b.f2("arith.divf", &a[1], &n, dt);
            let d = b.f2("arith.subf", &a[0], &mean, dt);
            let d2 = b.f2("arith.mulf", &d, &d, dt);
            Ok(b.f2("arith.addf", o, &d2, dt))
        })?;
        let (sdt, sshape) = self.shape_of(scale).map_err(|e| e.to_string())?;
        if sshape.len() > r {
            return Err("Scale has a higher rank than X".into());
        }
        let ss = self.val(scale).map_err(|e| e.to_string())?;
        let mut ins = vec![
            In { ssa: xs, dtype: dt, shape: dv(&shape), exprs: identity_exprs(r) },
            sum_in(),
            In { ssa: var, dtype: dt, shape: dv(&rshape), exprs: rex.clone() },
            In { ssa: ss, dtype: sdt, exprs: bcast_exprs(&dv(&sshape), &dv(&shape))?, shape: dv(&sshape) },
        ];
        if let Some(bv) = bias {
            let (bdt, bshape) = self.shape_of(bv).map_err(|e| e.to_string())?;
            if bshape.len() > r {
                return Err("B has a higher rank than X".into());
            }
            let bs = self.val(bv).map_err(|e| e.to_string())?;
            ins.push(In { ssa: bs, dtype: bdt, exprs: bcast_exprs(&dv(&bshape), &dv(&shape))?, shape: dv(&bshape) });
        }
        let has_bias = bias.is_some();
        self.generic(&ins, odt, &dv(oshape), &identity_exprs(r), &vec![true; r], Init::Empty, |b, a, _| {
            let n = b.fconst(cnt, dt);
            let e = b.fconst(eps, dt);
            let mean = b.f2("arith.divf", &a[1], &n, dt);
            let var = b.f2("arith.divf", &a[2], &n, dt);
            let ve = b.f2("arith.addf", &var, &e, dt);
            // math.rsqrt would become a call to a libm `rsqrtf` that does
            // not exist; 1/sqrt is exact to the same rounding here.
            let sq = b.f1("math.sqrt", &ve, dt);
            let one = b.fconst(1.0, dt);
            let rs = b.f2("arith.divf", &one, &sq, dt);
            let d = b.f2("arith.subf", &a[0], &mean, dt);
            let y = b.f2("arith.mulf", &d, &rs, dt);
            let y = b.f2("arith.mulf", &y, &a[3], dt);
            Ok(if has_bias { b.f2("arith.addf", &y, &a[4], dt) } else { y })
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn reduce(
        &mut self,
        x: ValueRef,
        kind: ReduceKind,
        axes: Option<Vec<i64>>,
        keepdims: bool,
        noop: bool,
        odt: DType,
        oshape: &[u64],
    ) -> Result<String, String> {
        let (dt, shape) = self.shape_of(x).map_err(|e| e.to_string())?;
        let r = shape.len();
        let xs = self.val(x).map_err(|e| e.to_string())?;
        let axes = axes.unwrap_or_default();
        if axes.is_empty() && noop {
            return Ok(xs);
        }
        let mut red = vec![axes.is_empty(); r];
        for &a in &axes {
            let a2 = if a < 0 { a + r as i64 } else { a };
            if a2 < 0 || a2 >= r as i64 {
                return Err(format!("axis {a} out of range for rank {r}"));
            }
            red[a2 as usize] = true;
        }
        let count: u64 = (0..r).filter(|&i| red[i]).map(|i| shape[i]).product();
        let f = dt.is_float();
        let init = match kind {
            ReduceKind::Max if f => f64::NEG_INFINITY,
            ReduceKind::Min if f => f64::INFINITY,
            ReduceKind::Max => {
                if is_unsigned(dt) {
                    0.0
                } else {
                    -(2f64.powi(dt.bit_width().unwrap_or(64) as i32 - 1))
                }
            }
            ReduceKind::Min => {
                if is_unsigned(dt) || dt.bit_width().unwrap_or(64) >= 64 {
                    return Err(format!("ReduceMin on {dt} is not lowered"));
                }
                2f64.powi(dt.bit_width().unwrap_or(32) as i32 - 1) - 1.0
            }
            ReduceKind::Prod => 1.0,
            _ => 0.0,
        };
        if !f && matches!(kind, ReduceKind::L2 | ReduceKind::LogSum | ReduceKind::LogSumExp) {
            return Err(format!("{} on {dt} is not lowered", kind.onnx_name()));
        }
        // Stable LogSumExp subtracts the maximum first.
        let mut extra = vec![];
        let rex: Vec<String> = (0..r).filter(|&i| !red[i]).map(|i| format!("d{i}")).collect();
        let mut mx_in = None;
        if kind == ReduceKind::LogSumExp {
            let (mx, ms) =
                self.reduce_dims(&xs, dt, &shape, &red, f64::NEG_INFINITY, vec![], |b, o, a| Ok(b.max(o, &a[0], dt)))?;
            // An all -inf slice would give inf - inf; use 0 as the shift there.
            let ms2 = ms.clone();
            let mxf = self.generic(
                &[In { ssa: mx, dtype: dt, shape: dv(&ms), exprs: identity_exprs(ms.len()) }],
                dt,
                &dv(&ms2),
                &identity_exprs(ms.len()),
                &vec![true; ms.len()],
                Init::Empty,
                |b, a, _| {
                    let ab = b.f1("math.absf", &a[0], dt);
                    let inf = b.fconst(f64::INFINITY, dt);
                    let z = b.fconst(0.0, dt);
                    let isinf = b.cmp("oeq", &ab, &inf, dt);
                    Ok(b.select(&isinf, &z, &a[0], dt))
                },
            )?;
            extra.push(In { ssa: mxf.clone(), dtype: dt, shape: dv(&ms), exprs: rex.clone() });
            mx_in = Some((mxf, ms));
        }
        let (acc, rshape) = self.reduce_dims(&xs, dt, &shape, &red, init, extra, |b, o, a| {
            let x = &a[0];
            Ok(match kind {
                ReduceKind::Sum | ReduceKind::Mean | ReduceKind::LogSum => b.add(o, x, dt),
                ReduceKind::Max => b.max(o, x, dt),
                ReduceKind::Min => b.min(o, x, dt),
                ReduceKind::Prod => b.mul(o, x, dt),
                ReduceKind::L1 => {
                    let ax = if f { b.f1("math.absf", x, dt) } else { unary(b, &UnaryOp::Abs, x, dt)? };
                    b.add(o, &ax, dt)
                }
                ReduceKind::L2 | ReduceKind::SumSquare => {
                    let sq = b.mul(x, x, dt);
                    b.add(o, &sq, dt)
                }
                ReduceKind::LogSumExp => {
                    let d = b.f2("arith.subf", x, &a[1], dt);
                    let e = b.f1("math.exp", &d, dt);
                    b.add(o, &e, dt)
                }
            })
        })?;
        let rr = rshape.len();
        let mut ins = vec![In { ssa: acc, dtype: dt, shape: dv(&rshape), exprs: identity_exprs(rr) }];
        if let Some((m, ms)) = mx_in {
            ins.push(In { ssa: m, dtype: dt, shape: dv(&ms), exprs: identity_exprs(rr) });
        }
        let fin =
            self.generic(&ins, odt, &dv(&rshape), &identity_exprs(rr), &vec![true; rr], Init::Empty, |b, a, _| {
                let v = &a[0];
                Ok(match kind {
                    ReduceKind::Mean => {
                        let c = b.konst(count as f64, dt);
                        b.div(v, &c, dt)
                    }
                    ReduceKind::L2 => b.f1("math.sqrt", v, dt),
                    ReduceKind::LogSum => b.f1("math.log", v, dt),
                    ReduceKind::LogSumExp => {
                        let l = b.f1("math.log", v, dt);
                        b.f2("arith.addf", &l, &a[1], dt)
                    }
                    _ => v.clone(),
                })
            })?;
        if keepdims && rshape.as_slice() != oshape {
            let (ity, oty) = (tensor_ty(dt, &rshape), tensor_ty(odt, oshape));
            let s = self.fresh();
            if rshape.is_empty() {
                let dims: Vec<String> = oshape.iter().map(|d| d.to_string()).collect();
                self.push(format!(
                    "{s} = tensor.expand_shape {fin} [] output_shape [{}] : {ity} into {oty}",
                    dims.join(", ")
                ));
            } else {
                let c = self.fresh();
                let dims: Vec<String> = oshape.iter().map(|d| d.to_string()).collect();
                self.push(format!("{c} = arith.constant dense<[{}]> : tensor<{}xi64>", dims.join(", "), oshape.len()));
                self.push(format!("{s} = tensor.reshape {fin}({c}) : ({ity}, tensor<{}xi64>) -> {oty}", oshape.len()));
            }
            return Ok(s);
        }
        if rshape.as_slice() != oshape {
            return Err(format!("reduced shape {rshape:?} differs from the declared {oshape:?}"));
        }
        Ok(fin)
    }
}

/// Input dims and output dims of one reshape group.
pub(super) type Group = (Vec<usize>, Vec<usize>);

/// Splits a reshape of non-empty static shapes into contiguous groups of
/// input and output dims with equal products, e.g. `[2, 3, 4] -> [6, 2, 2]`
/// into `([0, 1], [0])` and `([2], [1, 2])`. Size-1 dims join a neighbouring
/// group. `None` for empty tensors (every split fits) and rank 0.
pub(super) fn reshape_groups(a: &[u64], b: &[u64]) -> Option<Vec<Group>> {
    if a.is_empty() || b.is_empty() || a.contains(&0) || b.contains(&0) {
        return None;
    }
    let mut groups: Vec<Group> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let (mut gi, mut gj) = (Vec::new(), Vec::new());
        let (mut pa, mut pb) = (1u64, 1u64);
        if i < a.len() {
            pa *= a[i];
            gi.push(i);
            i += 1;
        }
        if j < b.len() {
            pb *= b[j];
            gj.push(j);
            j += 1;
        }
        while pa != pb {
            if pa < pb && i < a.len() {
                pa = pa.checked_mul(a[i])?;
                gi.push(i);
                i += 1;
            } else if pb < pa && j < b.len() {
                pb = pb.checked_mul(b[j])?;
                gj.push(j);
                j += 1;
            } else {
                return None;
            }
        }
        // A lone size-1 dim on one side joins the previous group.
        match groups.last_mut() {
            Some(last) if gi.is_empty() || gj.is_empty() => {
                last.0.extend(gi);
                last.1.extend(gj);
            }
            _ if gi.is_empty() || gj.is_empty() => return None,
            _ => groups.push((gi, gj)),
        }
    }
    Some(groups)
}

#[cfg(test)]
mod tests {
    use super::reshape_groups;

    #[test]
    fn reshapes_split_into_collapse_and_expand_groups() {
        let g = |a: &[u64], b: &[u64]| reshape_groups(a, b);
        assert_eq!(g(&[2, 3, 4], &[6, 2, 2]), Some(vec![(vec![0, 1], vec![0]), (vec![2], vec![1, 2])]));
        assert_eq!(g(&[8, 64], &[8, 4, 16]), Some(vec![(vec![0], vec![0]), (vec![1], vec![1, 2])]));
        assert_eq!(g(&[2, 3], &[3, 2]), Some(vec![(vec![0, 1], vec![0, 1])]));
        assert_eq!(g(&[6, 1], &[6]), Some(vec![(vec![0, 1], vec![0])]));
        assert_eq!(g(&[1], &[1, 1]), Some(vec![(vec![0], vec![0, 1])]));
        assert_eq!(g(&[0, 3], &[3, 0]), None);
    }
}

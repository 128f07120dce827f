//! Neural-network ops: matrix products, convolution and pooling,
//! normalisation, attention, recurrent layers, losses, quantisation and
//! signal processing.

use super::elementwise::{broadcast, same_dtype};
use super::movement::unify;
use super::symbolic::Expr;
use super::{OpCx, RuleResult, norm_axis, out, show};
use crate::op::{AutoPad, Conv, ConvTranspose, Recurrent, RnnDirection};
use crate::{DType, Op};

pub(super) fn infer(cx: &mut OpCx) -> RuleResult {
    match cx.op {
        Op::MatMul => {
            let dtype = same_dtype(cx, &[0, 1])?;
            Ok(vec![out(dtype, matmul_inputs(cx, 0, 1)?)?])
        }
        Op::MatMulInteger => Ok(vec![out(Some(DType::I32), matmul_inputs(cx, 0, 1)?)?]),
        Op::QLinearMatMul => Ok(vec![out(cx.dtype(7), matmul_inputs(cx, 0, 3)?)?]),
        Op::Gemm(g) => gemm(cx, g.trans_a, g.trans_b),
        Op::Det => {
            let shape = match cx.shape_of_rank(0, "the input", |r| r >= 2)? {
                Some(d) => {
                    let r = d.len();
                    unify(&d[r - 2], &d[r - 1]).map_err(|_| format!("the matrices of {} are not square", show(&d)))?;
                    Some(d[..r - 2].to_vec())
                }
                None => None,
            };
            Ok(vec![out(cx.dtype(0), shape)?])
        }
        Op::Conv(c) => conv(cx, c, 0, 1, cx.dtype(0)),
        Op::ConvInteger(c) => conv(cx, c, 0, 1, Some(DType::I32)),
        Op::QLinearConv(c) => {
            let dtype = cx.dtype(7).or(cx.dtype(0));
            conv(cx, c, 0, 3, dtype)
        }
        Op::ConvTranspose(c) => conv_transpose(cx, c),
        Op::DeformConv(d) => {
            let c = Conv {
                auto_pad: AutoPad::NotSet,
                dilations: d.dilations.clone(),
                group: d.group,
                kernel_shape: d.kernel_shape.clone(),
                pads: d.pads.clone(),
                strides: d.strides.clone(),
            };
            conv(cx, &c, 0, 1, cx.dtype(0))
        }
        Op::MaxPool(p) => {
            let y = pool(
                cx,
                &p.kernel_shape,
                p.strides.as_deref(),
                p.pads.as_deref(),
                p.dilations.as_deref(),
                p.auto_pad,
                p.ceil_mode,
            )?;
            let ind = out(Some(DType::I64), y.ty.shape().map(|s| s.dims().iter().map(Expr::from_dim).collect()))?;
            Ok(vec![y, ind])
        }
        Op::AveragePool(p) => Ok(vec![pool(
            cx,
            &p.kernel_shape,
            p.strides.as_deref(),
            p.pads.as_deref(),
            p.dilations.as_deref(),
            p.auto_pad,
            p.ceil_mode,
        )?]),
        Op::LpPool(p) => Ok(vec![pool(
            cx,
            &p.kernel_shape,
            p.strides.as_deref(),
            p.pads.as_deref(),
            p.dilations.as_deref(),
            p.auto_pad,
            p.ceil_mode,
        )?]),
        Op::GlobalAveragePool | Op::GlobalMaxPool | Op::GlobalLpPool(_) => {
            let shape = cx.shape_of_rank(0, "the input", |r| r >= 2)?.map(|d| {
                let mut s = d[..2].to_vec();
                s.extend(std::iter::repeat_n(Expr::int(1), d.len() - 2));
                s
            });
            Ok(vec![out(cx.dtype(0), shape)?])
        }
        Op::MaxRoiPool(p) => {
            if p.pooled_shape.len() != 2 {
                return Err(format!("pooled_shape must have 2 entries, found {:?}", p.pooled_shape));
            }
            let x = cx.shape_of_rank(0, "the input", |r| r == 4)?;
            let rois = cx.shape_of_rank(1, "rois", |r| r == 2)?;
            let n = match rois {
                Some(r) => r[0].clone(),
                None => cx.fresh(0),
            };
            let c = match x {
                Some(x) => x[1].clone(),
                None => cx.fresh(0),
            };
            Ok(vec![out(cx.dtype(0), Some(vec![n, c, Expr::int(p.pooled_shape[0]), Expr::int(p.pooled_shape[1])]))?])
        }
        Op::MaxUnpool(p) => max_unpool(cx, &p.kernel_shape, p.strides.as_deref(), p.pads.as_deref()),
        Op::BatchNormalization(b) => {
            if let Some(r) = cx.rank(0)
                && r < 2
            {
                return Err(format!("the input must have rank >= 2, found rank {r}"));
            }
            let mut outs = vec![out(cx.dtype(0), cx.shape(0))?];
            if b.training_mode {
                for p in [3, 4] {
                    outs.push(out(cx.dtype(p), cx.shape(p))?);
                }
            }
            Ok(outs)
        }
        Op::InstanceNormalization(_) | Op::GroupNormalization(_) | Op::LRN(_) | Op::MeanVarianceNormalization(_) => {
            cx.shape_of_rank(0, "the input", |r| r >= 2)?;
            Ok(vec![out(cx.dtype(0), cx.shape(0))?])
        }
        Op::RMSNormalization(n) => {
            if let Some(r) = cx.rank(0) {
                norm_axis(n.axis, r)?;
            }
            check_unidirectional(cx, 1)?;
            Ok(vec![out(cx.dtype(0), cx.shape(0))?])
        }
        Op::LayerNormalization(n) => {
            let d = cx.shape(0);
            let stats = match &d {
                Some(d) => {
                    let a = norm_axis(n.axis, d.len())?;
                    Some(d.iter().enumerate().map(|(i, x)| if i < a { x.clone() } else { Expr::int(1) }).collect())
                }
                None => None,
            };
            check_unidirectional(cx, 1)?;
            check_unidirectional(cx, 2)?;
            let stash = DType::from_onnx_code(n.stash_type as i32)
                .ok_or_else(|| format!("stash_type {} is not a known element type", n.stash_type))?;
            Ok(vec![out(cx.dtype(0), d)?, out(Some(stash), stats.clone())?, out(Some(stash), stats)?])
        }
        Op::LpNormalization(n) => {
            if let Some(r) = cx.rank(0) {
                norm_axis(n.axis, r)?;
            }
            Ok(vec![out(cx.dtype(0), cx.shape(0))?])
        }
        Op::Softmax(a) | Op::LogSoftmax(a) | Op::Hardmax(a) => {
            if let Some(r) = cx.rank(0) {
                norm_axis(a.axis, r.max(1))?;
            }
            Ok(vec![out(cx.dtype(0), cx.shape(0))?])
        }
        Op::Einsum(e) => einsum(cx, &e.equation),
        Op::Attention(_) => attention(cx),
        Op::RotaryEmbedding(_) => {
            cx.shape_of_rank(0, "the input", |r| r == 3 || r == 4)?;
            Ok(vec![out(cx.dtype(0), cx.shape(0))?])
        }
        Op::SwiGLU(_) => {
            let dtype = same_dtype(cx, &[0, 1])?;
            let shape = match (cx.shape(0), cx.shape(1)) {
                (Some(a), Some(b)) => {
                    let mismatch = || format!("the gate {} and the value {} must have one shape", show(&a), show(&b));
                    if a.len() != b.len() {
                        return Err(mismatch());
                    }
                    Some(
                        a.iter()
                            .zip(&b)
                            .map(|(x, y)| unify(x, y))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|_| mismatch())?,
                    )
                }
                (a, b) => a.or(b),
            };
            Ok(vec![out(dtype, shape)?])
        }
        Op::LinearAttention(l) => linear_attention(cx, l.q_num_heads, l.kv_num_heads),
        Op::CausalConvWithState(_) => {
            let x = cx.shape_of_rank(0, "the input", |r| r == 3)?;
            let w = cx.shape_of_rank(1, "the weight", |r| r == 3)?;
            let state = match (&x, &w) {
                (Some(x), Some(w)) => {
                    Some(vec![x[0].clone(), x[1].clone(), w[2].sub(&Expr::int(1)).ok_or("overflow")?])
                }
                _ => None,
            };
            Ok(vec![out(cx.dtype(0), x)?, out(cx.dtype(0), state)?])
        }
        Op::RNN(r) => recurrent(cx, r, 1, false),
        Op::GRU(r) => recurrent(cx, r, 3, false),
        Op::LSTM(r) => recurrent(cx, r, 4, true),
        Op::NegativeLogLikelihoodLoss(l) | Op::SoftmaxCrossEntropyLoss(l) => {
            let x = cx.shape_of_rank(0, "the input", |r| r >= 2)?;
            let t = cx.shape(1);
            if let (Some(x), Some(t)) = (&x, &t)
                && t.len() + 1 != x.len()
            {
                return Err(format!("the target {} must have one dim less than the input {}", show(t), show(x)));
            }
            let loss = match l.reduction {
                crate::op::LossReduction::None => t.or_else(|| {
                    x.as_ref().map(|x| {
                        let mut s = vec![x[0].clone()];
                        s.extend(x[2..].iter().cloned());
                        s
                    })
                }),
                _ => Some(vec![]),
            };
            let mut outs = vec![out(cx.dtype(0), loss)?];
            if matches!(cx.op, Op::SoftmaxCrossEntropyLoss(_)) {
                outs.push(out(cx.dtype(0), x)?);
            }
            Ok(outs)
        }
        Op::GridSample(_) => {
            let x = cx.shape_of_rank(0, "the input", |r| r >= 3)?;
            let grid = cx.shape_of_rank(1, "the grid", |r| r >= 3)?;
            let shape = match (x, grid) {
                (Some(x), Some(g)) => {
                    if g.len() != x.len() {
                        return Err(format!("the grid {} and the input {} must have one rank", show(&g), show(&x)));
                    }
                    let mut s = vec![unify(&x[0], &g[0]).map_err(|_| "batch sizes differ".to_string())?, x[1].clone()];
                    s.extend(g[1..g.len() - 1].iter().cloned());
                    Some(s)
                }
                _ => None,
            };
            Ok(vec![out(cx.dtype(0), shape)?])
        }
        Op::AffineGrid(_) => {
            let theta = cx.shape_of_rank(0, "theta", |r| r == 3)?;
            let shape = match cx.exprs(1) {
                Some(size) if size.len() == 4 || size.len() == 5 => {
                    let mut s = vec![size[0].clone()];
                    s.extend(size[2..].iter().cloned());
                    s.push(Expr::int(size.len() as i64 - 2));
                    Some(s)
                }
                Some(size) => return Err(format!("size must have 4 or 5 entries, found {}", size.len())),
                None => theta.map(|t| {
                    let k = if t[1].as_int() == Some(3) { 3 } else { 2 };
                    let mut s = vec![t[0].clone()];
                    s.extend(cx.fresh_shape(0, k));
                    s.push(Expr::int(k as i64));
                    s
                }),
            };
            Ok(vec![out(cx.dtype(0), shape)?])
        }
        Op::RoiAlign(r) => {
            let x = cx.shape_of_rank(0, "the input", |r| r == 4)?;
            let rois = cx.shape_of_rank(1, "rois", |r| r == 2)?;
            let n = match (rois, cx.shape(2)) {
                (Some(r), _) => r[0].clone(),
                (None, Some(b)) if b.len() == 1 => b[0].clone(),
                _ => cx.fresh(0),
            };
            let c = match x {
                Some(x) => x[1].clone(),
                None => cx.fresh(0),
            };
            Ok(vec![out(cx.dtype(0), Some(vec![n, c, Expr::int(r.output_height), Expr::int(r.output_width)]))?])
        }
        Op::NonMaxSuppression(_) => {
            let n = cx.fresh(0);
            Ok(vec![out(Some(DType::I64), Some(vec![n, Expr::int(3)]))?])
        }
        Op::QuantizeLinear(q) => {
            let dtype = if q.output_dtype != 0 {
                let d = DType::from_onnx_code(q.output_dtype as i32)
                    .ok_or_else(|| format!("output_dtype {} is not a known element type", q.output_dtype))?;
                if let Some(z) = cx.dtype(2)
                    && z != d
                {
                    return Err(format!("output_dtype {d} differs from the zero point's type {z}"));
                }
                Some(d)
            } else if cx.has(2) {
                cx.dtype(2)
            } else {
                Some(DType::U8)
            };
            Ok(vec![out(dtype, cx.shape(0))?])
        }
        Op::DequantizeLinear(q) => {
            let dtype = if q.output_dtype != 0 {
                Some(
                    DType::from_onnx_code(q.output_dtype as i32)
                        .ok_or_else(|| format!("output_dtype {} is not a known element type", q.output_dtype))?,
                )
            } else {
                cx.dtype(1)
            };
            Ok(vec![out(dtype, cx.shape(0))?])
        }
        Op::DynamicQuantizeLinear => Ok(vec![
            out(Some(DType::U8), cx.shape(0))?,
            out(Some(DType::F32), Some(vec![]))?,
            out(Some(DType::U8), Some(vec![]))?,
        ]),
        Op::DFT(d) => dft(cx, d.onesided, d.inverse),
        Op::STFT(s) => stft(cx, s.onesided),
        Op::HannWindow(w) | Op::HammingWindow(w) | Op::BlackmanWindow(w) => {
            let n = match cx.scalar_expr(0) {
                Some(n) => n,
                None => cx.fresh(0),
            };
            Ok(vec![out(Some(w.output_datatype), Some(vec![n]))?])
        }
        Op::MelWeightMatrix(m) => {
            let bins = match cx.scalar_expr(1) {
                Some(n) => n.floor_div(&Expr::int(2)).and_then(|h| h.add(&Expr::int(1))).ok_or("overflow")?,
                None => cx.fresh(0),
            };
            let mels = match cx.scalar_expr(0) {
                Some(n) => n,
                None => cx.fresh(0),
            };
            Ok(vec![out(Some(m.output_datatype), Some(vec![bins, mels]))?])
        }
        other => Err(format!("{} is not a neural-network op", other.op_type())),
    }
}

/// Checks that input `p` (scale, bias) broadcasts to input 0 without
/// growing it.
fn check_unidirectional(cx: &OpCx, p: usize) -> Result<(), String> {
    if let (Some(x), Some(s)) = (cx.shape(0), cx.shape(p)) {
        let b = broadcast(&[&x, &s])?;
        if b.len() != x.len() {
            return Err(format!("input {p} {} does not broadcast to the input {}", show(&s), show(&x)));
        }
    }
    Ok(())
}

/// The numpy `matmul` of two shapes, with 1-D promotion.
pub(crate) fn matmul_shape(a: &[Expr], b: &[Expr]) -> Result<Vec<Expr>, String> {
    if a.is_empty() || b.is_empty() {
        return Err(format!("matrix products need inputs of rank >= 1, found {} and {}", show(a), show(b)));
    }
    let (mut a2, mut b2) = (a.to_vec(), b.to_vec());
    if a.len() == 1 {
        a2.insert(0, Expr::int(1));
    }
    if b.len() == 1 {
        b2.push(Expr::int(1));
    }
    let (ra, rb) = (a2.len(), b2.len());
    unify(&a2[ra - 1], &b2[rb - 2]).map_err(|_| {
        format!("inner dims differ: {} times {} ({} against {})", show(a), show(b), a2[ra - 1], b2[rb - 2])
    })?;
    let mut s = broadcast(&[&a2[..ra - 2], &b2[..rb - 2]])?;
    if a.len() > 1 {
        s.push(a2[ra - 2].clone());
    }
    if b.len() > 1 {
        s.push(b2[rb - 1].clone());
    }
    Ok(s)
}

fn matmul_inputs(cx: &OpCx, pa: usize, pb: usize) -> Result<Option<Vec<Expr>>, String> {
    match (cx.shape(pa), cx.shape(pb)) {
        (Some(a), Some(b)) => matmul_shape(&a, &b).map(Some),
        _ => Ok(None),
    }
}

fn gemm(cx: &mut OpCx, ta: bool, tb: bool) -> RuleResult {
    let dtype = same_dtype(cx, &[0, 1])?;
    let a = cx.shape_of_rank(0, "A", |r| r == 2)?;
    let b = cx.shape_of_rank(1, "B", |r| r == 2)?;
    let (m, ka) = match &a {
        Some(a) if ta => (Some(a[1].clone()), Some(a[0].clone())),
        Some(a) => (Some(a[0].clone()), Some(a[1].clone())),
        None => (None, None),
    };
    let (kb, n) = match &b {
        Some(b) if tb => (Some(b[1].clone()), Some(b[0].clone())),
        Some(b) => (Some(b[0].clone()), Some(b[1].clone())),
        None => (None, None),
    };
    if let (Some(x), Some(y)) = (&ka, &kb) {
        unify(x, y).map_err(|_| {
            format!(
                "inner dims differ: A {} (transA={ta}) times B {} (transB={tb})",
                show(a.as_deref().unwrap_or(&[])),
                show(b.as_deref().unwrap_or(&[]))
            )
        })?;
    }
    let m = m.unwrap_or_else(|| cx.fresh(0));
    let n = n.unwrap_or_else(|| cx.fresh(0));
    let shape = vec![m, n];
    if let Some(c) = cx.shape(2) {
        let bc = broadcast(&[&shape, &c])?;
        if bc.len() != 2 || bc.iter().zip(&shape).any(|(x, y)| x.as_int().is_some() && y.as_int().is_some() && x != y) {
            return Err(format!("C {} does not broadcast to the output {}", show(&c), show(&shape)));
        }
    }
    Ok(vec![out(dtype, Some(shape))?])
}

/// Per-axis attributes with a default.
fn attr_or(v: Option<&[i64]>, n: usize, default: i64, name: &str) -> Result<Vec<i64>, String> {
    match v {
        Some(v) if v.len() != n => Err(format!("{name} has {} entries for {n} spatial axes", v.len())),
        Some(v) => Ok(v.to_vec()),
        None => Ok(vec![default; n]),
    }
}

/// Output size of one spatial axis of a convolution or pooling window.
#[allow(clippy::too_many_arguments)]
fn window_out(
    input: &Expr,
    kernel: &Expr,
    stride: i64,
    dilation: i64,
    pad_begin: i64,
    pad_end: i64,
    auto_pad: AutoPad,
    ceil_mode: bool,
) -> Result<Option<Expr>, String> {
    if stride < 1 || dilation < 1 {
        return Err(format!("strides and dilations must be positive, found {stride} and {dilation}"));
    }
    let s = Expr::int(stride);
    let one = Expr::int(1);
    let eff = kernel.sub(&one).and_then(|k| k.scale(dilation)).and_then(|k| k.add(&one)).ok_or("overflow")?;
    let r = match auto_pad {
        AutoPad::SameUpper | AutoPad::SameLower => input.ceil_div(&s),
        AutoPad::Valid | AutoPad::NotSet => {
            let (pb, pe) = if auto_pad == AutoPad::Valid { (0, 0) } else { (pad_begin, pad_end) };
            let span = pb
                .checked_add(pe)
                .and_then(|p| input.add(&Expr::int(p)))
                .and_then(|x| x.sub(&eff))
                .ok_or("overflow")?;
            if let Some(v) = span.as_int()
                && v < 0
            {
                return Err(format!("the window ({eff}) is larger than the padded input ({input} + {pb} + {pe})"));
            }
            if ceil_mode && auto_pad == AutoPad::NotSet {
                let o = span.ceil_div(&s).and_then(|x| x.add(&one));
                // A window that would start in the end padding is dropped.
                match o {
                    Some(o) => {
                        let start = o.sub(&one).and_then(|x| x.scale(stride));
                        let limit = input.add(&Expr::int(pb));
                        match (start, limit) {
                            (Some(st), Some(li)) if st.provably_ge(&li) => o.sub(&one),
                            (Some(st), Some(li)) if li.sub(&st).is_some_and(|d| d.is_positive()) => Some(o),
                            _ => None,
                        }
                    }
                    None => None,
                }
            } else {
                span.floor_div(&s).and_then(|x| x.add(&one))
            }
        }
    };
    Ok(r)
}

fn spatial_rank(cx: &OpCx, x: usize, w: Option<usize>, hints: &[Option<usize>]) -> Option<usize> {
    cx.rank(x)
        .map(|r| r.saturating_sub(2))
        .or_else(|| w.and_then(|w| cx.rank(w)).map(|r| r.saturating_sub(2)))
        .or_else(|| hints.iter().flatten().next().copied())
}

fn conv(cx: &mut OpCx, c: &Conv, px: usize, pw: usize, dtype: Option<DType>) -> RuleResult {
    let x = cx.shape_of_rank(px, "the input", |r| r >= 3)?;
    let w = cx.shape_of_rank(pw, "the weight", |r| r >= 3)?;
    let Some(n) = spatial_rank(cx, px, Some(pw), &[c.kernel_shape.as_ref().map(|k| k.len())]) else {
        return Ok(vec![out(dtype, None)?]);
    };
    if let (Some(x), Some(w)) = (&x, &w)
        && x.len() != w.len()
    {
        return Err(format!("the input {} and the weight {} must have one rank", show(x), show(w)));
    }
    if c.group < 1 {
        return Err(format!("group must be positive, found {}", c.group));
    }
    if let (Some(x), Some(w)) = (&x, &w)
        && let (Some(ci), Some(wc)) = (x[1].as_int(), w[1].as_int())
        && ci != wc * c.group
    {
        return Err(format!(
            "the input {} has {ci} channels, the weight {} expects {wc} x group {}",
            show(x),
            show(w),
            c.group
        ));
    }
    let kernel: Vec<Expr> = match (&c.kernel_shape, &w) {
        (Some(k), _) => {
            if k.len() != n {
                return Err(format!("kernel_shape {k:?} has {} entries for {n} spatial axes", k.len()));
            }
            k.iter().map(|&v| Expr::int(v)).collect()
        }
        (None, Some(w)) => w[2..].to_vec(),
        (None, None) => cx.fresh_shape(0, n),
    };
    let strides = attr_or(c.strides.as_deref(), n, 1, "strides")?;
    let dil = attr_or(c.dilations.as_deref(), n, 1, "dilations")?;
    let pads = attr_or(c.pads.as_deref(), 2 * n, 0, "pads")?;
    let batch = match &x {
        Some(x) => x[0].clone(),
        None => cx.fresh(0),
    };
    let m = match &w {
        Some(w) => w[0].clone(),
        None => cx.fresh(0),
    };
    let mut shape = vec![batch, m];
    for i in 0..n {
        let d = match &x {
            Some(x) => window_out(&x[2 + i], &kernel[i], strides[i], dil[i], pads[i], pads[i + n], c.auto_pad, false)?,
            None => None,
        };
        shape.push(match d {
            Some(d) => d,
            None => cx.fresh(0),
        });
    }
    Ok(vec![out(dtype, Some(shape))?])
}

fn conv_transpose(cx: &mut OpCx, c: &ConvTranspose) -> RuleResult {
    let dtype = cx.dtype(0);
    let x = cx.shape_of_rank(0, "the input", |r| r >= 3)?;
    let w = cx.shape_of_rank(1, "the weight", |r| r >= 3)?;
    let Some(n) = spatial_rank(cx, 0, Some(1), &[c.kernel_shape.as_ref().map(|k| k.len())]) else {
        return Ok(vec![out(dtype, None)?]);
    };
    if c.group < 1 {
        return Err(format!("group must be positive, found {}", c.group));
    }
    if let (Some(x), Some(w)) = (&x, &w)
        && let (Some(ci), Some(wc)) = (x[1].as_int(), w[0].as_int())
        && ci != wc
    {
        return Err(format!("the input {} has {ci} channels, the weight {} expects {wc}", show(x), show(w)));
    }
    let kernel: Vec<Expr> = match (&c.kernel_shape, &w) {
        (Some(k), _) => k.iter().map(|&v| Expr::int(v)).collect(),
        (None, Some(w)) => w[2..].to_vec(),
        (None, None) => cx.fresh_shape(0, n),
    };
    if kernel.len() != n {
        return Err(format!("kernel_shape has {} entries for {n} spatial axes", kernel.len()));
    }
    let strides = attr_or(c.strides.as_deref(), n, 1, "strides")?;
    let dil = attr_or(c.dilations.as_deref(), n, 1, "dilations")?;
    let pads = attr_or(c.pads.as_deref(), 2 * n, 0, "pads")?;
    let opad = attr_or(c.output_padding.as_deref(), n, 0, "output_padding")?;
    let batch = match &x {
        Some(x) => x[0].clone(),
        None => cx.fresh(0),
    };
    let m = match &w {
        Some(w) => w[1].scale(c.group).ok_or("overflow")?,
        None => cx.fresh(0),
    };
    let mut shape = vec![batch, m];
    match &c.output_shape {
        Some(os) => {
            // Either the spatial dims or the full shape.
            let spatial = if os.len() == n + 2 { &os[2..] } else { &os[..] };
            if spatial.len() != n {
                return Err(format!("output_shape {os:?} does not fit {n} spatial axes"));
            }
            shape.extend(spatial.iter().map(|&v| Expr::int(v)));
        }
        None => {
            for i in 0..n {
                let d = match &x {
                    Some(x) => {
                        let input = &x[2 + i];
                        match c.auto_pad {
                            AutoPad::SameUpper | AutoPad::SameLower => input.scale(strides[i]),
                            _ => {
                                let (pb, pe) =
                                    if c.auto_pad == AutoPad::Valid { (0, 0) } else { (pads[i], pads[i + n]) };
                                let eff = kernel[i]
                                    .sub(&Expr::int(1))
                                    .and_then(|k| k.scale(dil[i]))
                                    .and_then(|k| k.add(&Expr::int(1)));
                                input
                                    .sub(&Expr::int(1))
                                    .and_then(|v| v.scale(strides[i]))
                                    .and_then(|v| v.add(&Expr::int(opad[i].checked_sub(pb)?.checked_sub(pe)?)))
                                    .and_then(|v| v.add(&eff?))
                            }
                        }
                    }
                    None => None,
                };
                shape.push(match d {
                    Some(d) => d,
                    None => cx.fresh(0),
                });
            }
        }
    }
    Ok(vec![out(dtype, Some(shape))?])
}

#[allow(clippy::too_many_arguments)]
fn pool(
    cx: &mut OpCx,
    kernel: &[i64],
    strides: Option<&[i64]>,
    pads: Option<&[i64]>,
    dilations: Option<&[i64]>,
    auto_pad: AutoPad,
    ceil_mode: bool,
) -> Result<super::Fact, String> {
    let dtype = cx.dtype(0);
    let n = kernel.len();
    let Some(x) = cx.shape(0) else {
        return out(dtype, Some(cx.fresh_shape(0, n + 2)));
    };
    if x.len() != n + 2 {
        return Err(format!("kernel_shape {kernel:?} has {n} entries for the input {}", show(&x)));
    }
    let strides = attr_or(strides, n, 1, "strides")?;
    let dil = attr_or(dilations, n, 1, "dilations")?;
    let pads = attr_or(pads, 2 * n, 0, "pads")?;
    let mut shape = x[..2].to_vec();
    for i in 0..n {
        let d = window_out(
            &x[2 + i],
            &Expr::int(kernel[i]),
            strides[i],
            dil[i],
            pads[i],
            pads[i + n],
            auto_pad,
            ceil_mode,
        )?;
        shape.push(match d {
            Some(d) => d,
            None => cx.fresh(0),
        });
    }
    out(dtype, Some(shape))
}

fn max_unpool(cx: &mut OpCx, kernel: &[i64], strides: Option<&[i64]>, pads: Option<&[i64]>) -> RuleResult {
    let dtype = cx.dtype(0);
    let n = kernel.len();
    if cx.has(2) {
        let shape = match cx.exprs(2) {
            Some(s) => Some(s),
            None => Some(cx.fresh_shape(0, n + 2)),
        };
        return Ok(vec![out(dtype, shape)?]);
    }
    let Some(x) = cx.shape(0) else {
        return Ok(vec![out(dtype, Some(cx.fresh_shape(0, n + 2)))?]);
    };
    if x.len() != n + 2 {
        return Err(format!("kernel_shape {kernel:?} has {n} entries for the input {}", show(&x)));
    }
    let strides = attr_or(strides, n, 1, "strides")?;
    let pads = attr_or(pads, 2 * n, 0, "pads")?;
    let mut shape = x[..2].to_vec();
    for i in 0..n {
        let d = x[2 + i]
            .sub(&Expr::int(1))
            .and_then(|v| v.scale(strides[i]))
            .and_then(|v| v.add(&Expr::int(kernel[i].checked_sub(pads[i])?.checked_sub(pads[i + n])?)))
            .ok_or("overflow")?;
        shape.push(d);
    }
    Ok(vec![out(dtype, Some(shape))?])
}

fn einsum(cx: &mut OpCx, equation: &str) -> RuleResult {
    let eq: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l.to_string(), Some(r.to_string())),
        None => (eq.clone(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    let n_in = cx.num_inputs();
    if terms.len() != n_in {
        return Err(format!("the equation '{equation}' names {} operands, the node has {n_in} inputs", terms.len()));
    }
    let dtype = same_dtype(cx, &(0..n_in).collect::<Vec<_>>())?;
    let mut dims: std::collections::BTreeMap<char, Expr> = std::collections::BTreeMap::new();
    let mut counts: std::collections::BTreeMap<char, usize> = std::collections::BTreeMap::new();
    let mut ellipsis: Option<Vec<Expr>> = Some(Vec::new());
    let mut any_ellipsis = false;
    for (i, term) in terms.iter().enumerate() {
        let has_ell = term.contains("...");
        any_ellipsis |= has_ell;
        let letters: Vec<char> = term.replace("...", "").chars().collect();
        if letters.iter().any(|c| !c.is_ascii_alphabetic()) {
            return Err(format!("the equation '{equation}' has an invalid term '{term}'"));
        }
        for &l in &letters {
            *counts.entry(l).or_default() += 1;
        }
        let Some(s) = cx.shape(i) else {
            if has_ell {
                ellipsis = None;
            }
            continue;
        };
        let n_ell = if has_ell {
            s.len()
                .checked_sub(letters.len())
                .ok_or_else(|| format!("operand {i} {} is too small for '{term}'", show(&s)))?
        } else {
            if s.len() != letters.len() {
                return Err(format!(
                    "operand {i} {} has rank {}, the term '{term}' has {}",
                    show(&s),
                    s.len(),
                    letters.len()
                ));
            }
            0
        };
        let pos_ell = term.find("...").map(|p| term[..p].chars().count()).unwrap_or(letters.len());
        let mut k = 0;
        for (j, &l) in letters.iter().enumerate() {
            if j == pos_ell {
                k += n_ell;
            }
            let d = s[k].clone();
            k += 1;
            match dims.get(&l) {
                Some(prev) => {
                    let merged = if prev.as_int() == Some(1) {
                        d.clone()
                    } else if d.as_int() == Some(1) {
                        prev.clone()
                    } else {
                        unify(prev, &d)
                            .map_err(|_| format!("label '{l}' stands for both {prev} and {d} in '{equation}'"))?
                    };
                    dims.insert(l, merged);
                }
                None => {
                    dims.insert(l, d);
                }
            }
        }
        if has_ell && let Some(e) = ellipsis.as_mut() {
            let part = &s[pos_ell..pos_ell + n_ell];
            *e = broadcast(&[e, part])?;
        }
    }
    let out_letters: String = match rhs {
        Some(r) => r,
        None => {
            let mut s: String = if any_ellipsis { "...".to_string() } else { String::new() };
            s.extend(counts.iter().filter(|(_, n)| **n == 1).map(|(c, _)| *c));
            s
        }
    };
    let mut shape = Vec::new();
    let mut unknown = false;
    let mut rest = out_letters.as_str();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("...") {
            match &ellipsis {
                Some(e) => shape.extend(e.iter().cloned()),
                None => unknown = true,
            }
            rest = r;
            continue;
        }
        let c = rest.chars().next().ok_or("empty")?;
        rest = &rest[c.len_utf8()..];
        if !counts.contains_key(&c) {
            return Err(format!("output label '{c}' does not occur in the inputs of '{equation}'"));
        }
        match dims.get(&c) {
            Some(d) => shape.push(d.clone()),
            None => unknown = true,
        }
    }
    Ok(vec![out(dtype, if unknown { None } else { Some(shape) })?])
}

fn attention(cx: &mut OpCx) -> RuleResult {
    let Op::Attention(a) = cx.op else {
        return Err("not Attention".to_string());
    };
    let (qh, kvh) = (a.q_num_heads, a.kv_num_heads);
    let q = cx.shape_of_rank(0, "Q", |r| r == 3 || r == 4)?;
    let k = cx.shape_of_rank(1, "K", |r| r == 3 || r == 4)?;
    let v = cx.shape_of_rank(2, "V", |r| r == 3 || r == 4)?;
    let dtype = cx.dtype(0);
    let vdtype = cx.dtype(2);
    let per_head = |s: &[Expr], heads: Option<i64>, what: &str| -> Result<Option<Expr>, String> {
        if s.len() == 4 {
            return Ok(Some(s[3].clone()));
        }
        match heads {
            Some(h) if h > 0 => {
                if let Some(hidden) = s[2].as_int()
                    && hidden % h != 0
                {
                    return Err(format!("{what} {} does not split into {h} heads", show(s)));
                }
                Ok(s[2].floor_div(&Expr::int(h)))
            }
            _ => Err(format!("{what} is 3-D, so the number of heads must be given")),
        }
    };
    let (Some(q), Some(k), Some(v)) = (q, k, v) else {
        let n = cx.num_outputs;
        return Ok(vec![out(dtype, None)?; n]);
    };
    let batch = q[0].clone();
    let (q_seq, q_heads) =
        if q.len() == 4 { (q[2].clone(), q[1].clone()) } else { (q[1].clone(), Expr::int(qh.unwrap_or(0))) };
    let (kv_seq, kv_heads) =
        if k.len() == 4 { (k[2].clone(), k[1].clone()) } else { (k[1].clone(), Expr::int(kvh.unwrap_or(0))) };
    let head = per_head(&k, kvh, "K")?.ok_or("overflow")?;
    let v_head = per_head(&v, kvh, "V")?.ok_or("overflow")?;
    if let Some(qd) = per_head(&q, qh, "Q")? {
        unify(&qd, &head).map_err(|_| format!("Q {} and K {} have different head sizes", show(&q), show(&k)))?;
    }
    let past = cx.shape(4).filter(|p| p.len() == 4).map(|p| p[2].clone());
    let total = match &past {
        Some(p) => p.add(&kv_seq).ok_or("overflow")?,
        None => kv_seq.clone(),
    };
    let y = if q.len() == 4 {
        vec![batch.clone(), q_heads.clone(), q_seq.clone(), v_head.clone()]
    } else {
        vec![batch.clone(), q_seq.clone(), q_heads.mul(&v_head).ok_or("overflow")?]
    };
    let mut outs = vec![out(dtype, Some(y))?];
    outs.push(out(dtype, Some(vec![batch.clone(), kv_heads.clone(), total.clone(), head]))?);
    outs.push(out(vdtype, Some(vec![batch.clone(), kv_heads, total.clone(), v_head]))?);
    outs.push(out(dtype, Some(vec![batch, q_heads, q_seq, total]))?);
    outs.truncate(cx.num_outputs.max(1));
    Ok(outs)
}

fn linear_attention(cx: &mut OpCx, qh: i64, kvh: i64) -> RuleResult {
    if qh < 1 || kvh < 1 || qh % kvh != 0 {
        return Err(format!("q_num_heads ({qh}) must be a positive multiple of kv_num_heads ({kvh})"));
    }
    let q = cx.shape_of_rank(0, "query", |r| r == 3)?;
    let k = cx.shape_of_rank(1, "key", |r| r == 3)?;
    let v = cx.shape_of_rank(2, "value", |r| r == 3)?;
    let dtype = cx.dtype(0);
    let state_dtype = if cx.has(3) { cx.dtype(3) } else { dtype };
    let dk = k.as_ref().and_then(|k| k[2].floor_div(&Expr::int(kvh)));
    let dv = v.as_ref().and_then(|v| v[2].floor_div(&Expr::int(kvh)));
    let y = match (&q, &dv) {
        (Some(q), Some(dv)) => Some(vec![q[0].clone(), q[1].clone(), dv.scale(qh).ok_or("overflow")?]),
        _ => None,
    };
    let state = match (&q, dk, dv) {
        (Some(q), Some(dk), Some(dv)) => Some(vec![q[0].clone(), Expr::int(kvh), dk, dv]),
        _ => cx.shape(3),
    };
    Ok(vec![out(dtype, y)?, out(state_dtype, state)?])
}

fn recurrent(cx: &mut OpCx, r: &Recurrent, gates: i64, lstm: bool) -> RuleResult {
    let dtype = cx.dtype(0);
    let x = cx.shape_of_rank(0, "X", |k| k == 3)?;
    let w = cx.shape_of_rank(1, "W", |k| k == 3)?;
    let dirs = Expr::int(if r.direction == RnnDirection::Bidirectional { 2 } else { 1 });
    if let Some(w) = &w
        && let Some(d) = w[0].as_int()
        && Some(d) != dirs.as_int()
    {
        return Err(format!("W {} has {d} directions, direction '{}' needs {}", show(w), r.direction.as_str(), dirs));
    }
    let hidden = match (r.hidden_size, &w) {
        (Some(h), _) => Expr::int(h),
        (None, Some(w)) => w[1].floor_div(&Expr::int(gates)).ok_or("overflow")?,
        (None, None) => cx.fresh(0),
    };
    let (seq, batch) = match (&x, r.layout) {
        (Some(x), 0) => (x[0].clone(), x[1].clone()),
        (Some(x), _) => (x[1].clone(), x[0].clone()),
        (None, _) => (cx.fresh(0), cx.fresh(0)),
    };
    let (y, yh) = if r.layout == 0 {
        (vec![seq, dirs.clone(), batch.clone(), hidden.clone()], vec![dirs, batch, hidden])
    } else {
        (vec![batch.clone(), seq, dirs.clone(), hidden.clone()], vec![batch, dirs, hidden])
    };
    let mut outs = vec![out(dtype, Some(y))?, out(dtype, Some(yh.clone()))?];
    if lstm {
        outs.push(out(dtype, Some(yh))?);
    }
    Ok(outs)
}

fn dft(cx: &mut OpCx, onesided: bool, inverse: bool) -> RuleResult {
    let dtype = cx.dtype(0);
    // One-sided inverse (IRFFT) turns a half spectrum into a real signal.
    let irfft = onesided && inverse;
    let last = Expr::int(if irfft { 1 } else { 2 });
    let Some(x) = cx.shape_of_rank(0, "the input", |r| r >= 2)? else {
        return Ok(vec![out(dtype, None)?]);
    };
    let r = x.len();
    if let Some(l) = x[r - 1].as_int()
        && l != 1
        && l != 2
    {
        return Err(format!("the last dim of {} must be 1 (real) or 2 (complex)", show(&x)));
    }
    let axis = if cx.has(2) {
        match cx.value(2).and_then(|v| v.as_ints()) {
            Some(a) if a.len() == 1 => {
                let ax = norm_axis(a[0], r)?;
                if ax == r - 1 {
                    return Err("the DFT axis cannot be the last (complex) dim".to_string());
                }
                Some(ax)
            }
            Some(a) => return Err(format!("axis must be a scalar, found {a:?}")),
            None => None,
        }
    } else {
        Some(r - 2)
    };
    let Some(axis) = axis else {
        let mut s = cx.fresh_shape(0, r);
        s[r - 1] = last;
        return Ok(vec![out(dtype, Some(s))?]);
    };
    let n = if cx.has(1) {
        match cx.scalar_expr(1) {
            Some(n) => n,
            None => cx.fresh(0),
        }
    } else if irfft {
        x[axis].sub(&Expr::int(1)).and_then(|v| v.scale(2)).ok_or("overflow")?
    } else {
        x[axis].clone()
    };
    let mut s = x;
    s[axis] = if onesided && !inverse {
        n.floor_div(&Expr::int(2)).and_then(|h| h.add(&Expr::int(1))).ok_or("overflow")?
    } else {
        n
    };
    s[r - 1] = last;
    Ok(vec![out(dtype, Some(s))?])
}

fn stft(cx: &mut OpCx, onesided: bool) -> RuleResult {
    let dtype = cx.dtype(0);
    let Some(sig) = cx.shape_of_rank(0, "the signal", |r| r == 3)? else {
        let s = vec![cx.fresh(0), cx.fresh(0), cx.fresh(0), Expr::int(2)];
        return Ok(vec![out(dtype, Some(s))?]);
    };
    let frame_len = if cx.has(3) {
        cx.scalar_expr(3)
    } else if cx.has(2) {
        cx.shape(2).filter(|w| w.len() == 1).map(|w| w[0].clone())
    } else {
        Some(sig[1].clone())
    };
    let step = cx.scalar_expr(1);
    let frames = match (&frame_len, step) {
        (Some(fl), Some(st)) if st.as_int().is_some_and(|v| v > 0) => {
            sig[1].sub(fl).and_then(|d| d.floor_div(&st)).and_then(|d| d.add(&Expr::int(1)))
        }
        _ => None,
    };
    let frames = match frames {
        Some(f) => f,
        None => cx.fresh(0),
    };
    let bins = match frame_len {
        Some(fl) if onesided => fl.floor_div(&Expr::int(2)).and_then(|h| h.add(&Expr::int(1))).ok_or("overflow")?,
        Some(fl) => fl,
        None => cx.fresh(0),
    };
    Ok(vec![out(dtype, Some(vec![sig[0].clone(), frames, bins, Expr::int(2)]))?])
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::op::{self, AveragePool, MaxPool};
    use crate::{Tensor, Type};

    fn conv_op(pads: Option<Vec<i64>>, strides: Option<Vec<i64>>, auto_pad: AutoPad) -> Op {
        Op::Conv(Conv { auto_pad, dilations: None, group: 1, kernel_shape: None, pads, strides })
    }

    #[test]
    fn matmul_and_gemm() {
        let f = |a: &[&str], b: &[&str]| one(Op::MatMul, [t(DType::F32, a), t(DType::F32, b)], 1);
        assert_eq!(
            f(&["batch", "12", "seq", "32"], &["batch", "12", "32", "seq"]).unwrap(),
            vec!["f32[batch, 12, seq, seq]"]
        );
        assert_eq!(f(&["4"], &["4"]).unwrap(), vec!["f32[]"]);
        assert_eq!(f(&["4"], &["b", "4", "5"]).unwrap(), vec!["f32[b, 5]"]);
        assert_eq!(f(&["n", "4"], &["4"]).unwrap(), vec!["f32[n]"]);
        let e = f(&["batch", "seq", "384"], &["256", "384"]).unwrap_err();
        assert!(e.contains("[batch, seq, 384]") && e.contains("[256, 384]"), "{e}");
        let gm = |ta, tb| Op::Gemm(op::Gemm { alpha: 1.0, beta: 1.0, trans_a: ta, trans_b: tb });
        let r =
            one(gm(false, true), [t(DType::F32, &["n", "8"]), t(DType::F32, &["3", "8"]), t(DType::F32, &["3"])], 1);
        assert_eq!(r.unwrap(), vec!["f32[n, 3]"]);
        let r = one(gm(false, false), [t(DType::F32, &["n", "8"]), t(DType::F32, &["3", "8"])], 1);
        assert!(r.unwrap_err().contains("inner dims"));
        let r =
            one(gm(false, false), [t(DType::F32, &["n", "8"]), t(DType::F32, &["8", "3"]), t(DType::F32, &["4"])], 1);
        assert!(r.is_err());
    }

    #[test]
    fn conv_and_pool() {
        let x = t(DType::F32, &["n", "3", "h", "32"]);
        let w = t(DType::F32, &["16", "3", "3", "3"]);
        let r = one(conv_op(Some(vec![1, 1, 1, 1]), Some(vec![2, 2]), AutoPad::NotSet), [x.clone(), w.clone()], 1);
        assert_eq!(r.unwrap(), vec!["f32[n, 16, \"(h+1)//2\", 16]"]);
        let r = one(conv_op(None, Some(vec![2, 2]), AutoPad::SameUpper), [x.clone(), w.clone()], 1);
        assert_eq!(r.unwrap(), vec!["f32[n, 16, \"(h+1)//2\", 16]"]);
        let r = one(conv_op(None, None, AutoPad::Valid), [x.clone(), w.clone()], 1);
        assert_eq!(r.unwrap(), vec!["f32[n, 16, \"h-2\", 30]"]);
        let bad = t(DType::F32, &["16", "4", "3", "3"]);
        assert!(one(conv_op(None, None, AutoPad::NotSet), [x.clone(), bad], 1).unwrap_err().contains("channels"));

        let mp = |ceil_mode, pads: Option<Vec<i64>>| {
            Op::MaxPool(MaxPool {
                auto_pad: AutoPad::NotSet,
                ceil_mode,
                dilations: None,
                kernel_shape: vec![3],
                pads,
                storage_order: 0,
                strides: Some(vec![2]),
            })
        };
        // Values checked against onnx.shape_inference.
        assert_eq!(
            one(mp(true, None), [t(DType::F32, &["1", "1", "6"])], 2).unwrap(),
            vec!["f32[1, 1, 3]", "i64[1, 1, 3]"]
        );
        assert_eq!(
            one(mp(true, Some(vec![1, 1])), [t(DType::F32, &["1", "1", "6"])], 1).unwrap(),
            vec!["f32[1, 1, 4]"]
        );
        assert_eq!(one(mp(false, None), [t(DType::F32, &["1", "1", "6"])], 1).unwrap(), vec!["f32[1, 1, 2]"]);
        let ap = Op::AveragePool(AveragePool {
            auto_pad: AutoPad::NotSet,
            ceil_mode: false,
            count_include_pad: false,
            dilations: None,
            kernel_shape: vec![2, 2],
            pads: None,
            strides: Some(vec![2, 2]),
        });
        assert_eq!(one(ap, [t(DType::F32, &["n", "c", "h", "8"])], 1).unwrap(), vec!["f32[n, c, \"h//2\", 4]"]);
        let ct = Op::ConvTranspose(ConvTranspose {
            auto_pad: AutoPad::NotSet,
            dilations: None,
            group: 1,
            kernel_shape: None,
            output_padding: None,
            output_shape: None,
            pads: None,
            strides: Some(vec![2]),
        });
        let r = one(ct, [t(DType::F32, &["n", "4", "l"]), t(DType::F32, &["4", "8", "3"])], 1).unwrap();
        assert_eq!(r, vec!["f32[n, 8, \"2*l+1\"]"]);
    }

    #[test]
    fn normalisation_attention_recurrent() {
        let ln = Op::LayerNormalization(op::LayerNormalization { axis: -1, epsilon: 1e-5, stash_type: 1 });
        let r = one(ln, [t(DType::F16, &["b", "s", "384"]), t(DType::F16, &["384"])], 3).unwrap();
        assert_eq!(r, vec!["f16[b, s, 384]", "f32[b, s, 1]", "f32[b, s, 1]"]);
        let att = Op::Attention(op::Attention {
            is_causal: false,
            kv_num_heads: Some(2),
            left_window_size: -1,
            q_num_heads: Some(4),
            qk_matmul_output_mode: 0,
            right_window_size: -1,
            scale: None,
            softcap: 0.0,
            softmax_precision: None,
        });
        let r = one(
            att,
            [
                t(DType::F32, &["2", "3", "32"]),
                t(DType::F32, &["2", "6", "16"]),
                t(DType::F32, &["2", "6", "20"]),
                t(DType::F32, &["3", "9"]),
                t(DType::F32, &["2", "2", "3", "8"]),
                t(DType::F32, &["2", "2", "3", "10"]),
            ],
            4,
        )
        .unwrap();
        // Matches onnx.shape_inference for the same node.
        assert_eq!(r, vec!["f32[2, 3, 40]", "f32[2, 2, 9, 8]", "f32[2, 2, 9, 10]", "f32[2, 4, 3, 9]"]);
        let lstm = Op::LSTM(Recurrent {
            activation_alpha: None,
            activation_beta: None,
            activations: None,
            clip: None,
            direction: RnnDirection::Bidirectional,
            hidden_size: None,
            layout: 0,
            linear_before_reset: None,
            input_forget: None,
        });
        let r = one(lstm, [t(DType::F32, &["seq", "b", "10"]), t(DType::F32, &["2", "80", "10"])], 3).unwrap();
        assert_eq!(r, vec!["f32[seq, 2, b, 20]", "f32[2, b, 20]", "f32[2, b, 20]"]);
        let es = Op::Einsum(op::Einsum { equation: "bhqd,bhkd->bhqk".into() });
        let r = one(es, [t(DType::F32, &["b", "12", "s", "32"]), t(DType::F32, &["b", "12", "t", "32"])], 1).unwrap();
        assert_eq!(r, vec!["f32[b, 12, s, t]"]);
        let es = Op::Einsum(op::Einsum { equation: "...ij,...jk".into() });
        let r = one(es, [t(DType::F32, &["b", "2", "3"]), t(DType::F32, &["3", "4"])], 1).unwrap();
        assert_eq!(r, vec!["f32[b, 2, 4]"]);
        let es = Op::Einsum(op::Einsum { equation: "ij,jk->ik".into() });
        assert!(one(es, [t(DType::F32, &["2", "3"]), t(DType::F32, &["4", "5"])], 1).is_err());
    }

    /// Expected values from onnx.shape_inference (opset 28).
    #[test]
    fn recent_ops_match_onnx() {
        let la = Op::LinearAttention(op::LinearAttention {
            chunk_size: 64,
            kv_num_heads: 2,
            q_num_heads: 4,
            scale: 0.0,
            update_rule: "linear".into(),
        });
        let r = one(
            la,
            [
                t(DType::F32, &["2", "5", "32"]),
                t(DType::F32, &["2", "5", "16"]),
                t(DType::F32, &["2", "5", "24"]),
                t(DType::F64, &["2", "2", "8", "12"]),
            ],
            2,
        );
        assert_eq!(r.unwrap(), vec!["f32[2, 5, 48]", "f64[2, 2, 8, 12]"]);
        let cc = Op::CausalConvWithState(op::CausalConvWithState { activation: "none".into() });
        let r = one(cc, [t(DType::F32, &["b", "6", "l"]), t(DType::F32, &["6", "1", "4"])], 2).unwrap();
        assert_eq!(r, vec!["f32[b, 6, l]", "f32[b, 6, 3]"]);
        let sw = Op::SwiGLU(op::SwiGlu { alpha: 1.0 });
        assert_eq!(
            one(sw.clone(), [t(DType::F32, &["n", "8"]), t(DType::F32, &["n", "8"])], 1).unwrap(),
            vec!["f32[n, 8]"]
        );
        assert!(one(sw, [t(DType::F32, &["n", "8"]), t(DType::F32, &["n", "4"])], 1).is_err());
    }

    #[test]
    fn signal_and_quantisation() {
        let dft = Op::DFT(op::Dft { inverse: false, onesided: true });
        let r = one(dft, [t(DType::F32, &["2", "9", "1"])], 1).unwrap();
        assert_eq!(r, vec!["f32[2, 5, 2]"]);
        // IRFFT, as onnx.shape_inference gives it.
        let irfft = Op::DFT(op::Dft { inverse: true, onesided: true });
        assert_eq!(one(irfft, [t(DType::F32, &["1", "10", "n", "2"])], 1).unwrap(), vec!["f32[1, 10, \"2*n-2\", 1]"]);
        let stft = Op::STFT(op::Stft { onesided: true });
        let step = Tensor::scalar(8i64);
        let r = crate::infer::infer_node(
            &stft,
            &[Some(t(DType::F32, &["1", "128", "1"])), None, Some(t(DType::F32, &["16"]))],
            &[None, Some(&step), None],
            &["o"],
        )
        .unwrap();
        assert_eq!(r[0].to_string(), "f32[1, 15, 9, 2]");
        let q = Op::QuantizeLinear(op::QuantizeLinear {
            axis: 1,
            block_size: 0,
            output_dtype: 0,
            precision: 0,
            saturate: true,
        });
        assert_eq!(one(q, [t(DType::F32, &["n"]), t(DType::F32, &[])], 1).unwrap(), vec!["u8[n]"]);
        let _ = Type::Unknown;
    }
}

//! Attention and the ops that surround it in transformer blocks:
//! `Attention`, `RotaryEmbedding`, `SwiGLU`, `LinearAttention`,
//! `CausalConvWithState` and `ai.onnx.preview.FlexAttention`.
//!
//! `Attention` follows opset 25: 3-D or 4-D inputs, grouped KV heads, boolean
//! or additive masks (shorter masks padded with "masked"), offset-aware causal
//! masking, sliding windows, an internal KV cache (`past_*`/`present_*`) or an
//! external one (`nonpad_kv_seqlen`), soft-capping, the debug output
//! `qk_matmul_output` in its four modes, and a softmax precision. ONNX
//! defines the op as a composition whose intermediate values live in the
//! input type, so the computation below is done in `f64` but rounded to that
//! type at the same points; half-precision results then match the
//! specification instead of an idealised exact answer.

use super::common::{Floats, float_tensor, is_real_float, outputs, round_all, round_to, sum_in, to_usize};
use super::ml::AttrView;
use crate::util::{opt_tensor_arg, tensor_arg};
use sharc_ir::op::{Attention, CausalConvWithState, LinearAttention, RotaryEmbedding, SwiGlu};
use sharc_ir::{Attr, DType, EvalError, Opaque, Subgraph, Tensor, TensorData, Value};

/// The maximum of a slice, NaN if any element is NaN (as numpy's `max`).
fn nan_max(v: impl IntoIterator<Item = f64>) -> f64 {
    let mut m = f64::NEG_INFINITY;
    for x in v {
        if x.is_nan() {
            return f64::NAN;
        }
        if x > m {
            m = x;
        }
    }
    m
}

/// Q, K or V brought to `(batch, heads, seq, head_size)` layout.
struct Heads {
    batch: usize,
    heads: usize,
    seq: usize,
    size: usize,
    data: Vec<f64>,
}

impl Heads {
    fn at(&self, b: usize, h: usize, s: usize) -> &[f64] {
        let o = ((b * self.heads + h) * self.seq + s) * self.size;
        &self.data[o..o + self.size]
    }

    /// Brings a 3-D `(batch, seq, heads * size)` or 4-D `(batch, heads, seq,
    /// size)` tensor to head-major layout.
    fn from_floats(f: Floats, heads: Option<usize>, what: &str) -> Result<Heads, EvalError> {
        match f.shape.as_slice() {
            &[batch, h, seq, size] => {
                if let Some(n) = heads
                    && n != h
                {
                    return Err(EvalError::new(format!("{what} has {h} heads but the attribute says {n}")));
                }
                Ok(Heads { batch, heads: h, seq, size, data: f.data })
            }
            &[batch, seq, hidden] => {
                let heads = heads.ok_or_else(|| {
                    EvalError::new(format!("{what} is 3-D, so q_num_heads and kv_num_heads are required"))
                })?;
                if heads == 0 || hidden % heads != 0 {
                    return Err(EvalError::new(format!(
                        "{what} hidden size {hidden} is not a multiple of its {heads} heads"
                    )));
                }
                let size = hidden / heads;
                let mut data = vec![0.0; f.data.len()];
                for b in 0..batch {
                    for s in 0..seq {
                        for h in 0..heads {
                            let src = (b * seq + s) * hidden + h * size;
                            let dst = ((b * heads + h) * seq + s) * size;
                            data[dst..dst + size].copy_from_slice(&f.data[src..src + size]);
                        }
                    }
                }
                Ok(Heads { batch, heads, seq, size, data })
            }
            s => Err(EvalError::new(format!("{what} must be 3-D or 4-D, got shape {s:?}"))),
        }
    }

    /// Concatenates a cache in front of this tensor along the sequence axis.
    fn after(past: Heads, new: Heads, what: &str) -> Result<Heads, EvalError> {
        if past.batch != new.batch || past.heads != new.heads || past.size != new.size {
            return Err(EvalError::new(format!(
                "past_{what} has shape [{}, {}, {}, {}], which does not match {what} [{}, {}, _, {}]",
                past.batch, past.heads, past.seq, past.size, new.batch, new.heads, new.size
            )));
        }
        let seq = past.seq + new.seq;
        let mut data = Vec::with_capacity(past.data.len() + new.data.len());
        for b in 0..new.batch {
            for h in 0..new.heads {
                for s in 0..past.seq {
                    data.extend_from_slice(past.at(b, h, s));
                }
                for s in 0..new.seq {
                    data.extend_from_slice(new.at(b, h, s));
                }
            }
        }
        Ok(Heads { batch: new.batch, heads: new.heads, seq, size: new.size, data })
    }

    fn shape(&self) -> [usize; 4] {
        [self.batch, self.heads, self.seq, self.size]
    }
}

/// The attention mask widened to 4-D (right-aligned broadcasting), as an
/// additive bias: booleans become 0 / -inf.
struct Mask {
    shape: [usize; 4],
    data: Vec<f64>,
}

impl Mask {
    fn read(t: &Tensor, q_dtype: DType, kv_len: usize) -> Result<Mask, EvalError> {
        let rank = t.rank();
        if rank == 0 || rank > 4 {
            return Err(EvalError::new(format!("attn_mask must have rank 1 to 4, got shape {:?}", t.shape())));
        }
        let (values, pad): (Vec<f64>, f64) = match t.data() {
            TensorData::Bool(a) => {
                (a.iter().map(|&m| if m { 0.0 } else { f64::NEG_INFINITY }).collect(), f64::NEG_INFINITY)
            }
            _ if is_real_float(t.dtype()) => {
                let f = Floats::read(t, "attn_mask")?;
                (f.data.into_iter().map(|v| round_to(q_dtype, v)).collect(), f64::NEG_INFINITY)
            }
            _ => {
                return Err(EvalError::new(format!("attn_mask must be bool or float, got {}", t.dtype())));
            }
        };
        let mut shape = [1usize; 4];
        shape[4 - rank..].copy_from_slice(t.shape());
        let last = shape[3];
        if last > kv_len {
            return Err(EvalError::new(format!(
                "attn_mask's last dim {last} is longer than the total sequence length {kv_len}"
            )));
        }
        // A shorter mask is padded with "masked" up to the total length.
        let rows: usize = shape[..3].iter().product();
        let mut data = Vec::with_capacity(rows * kv_len);
        for r in 0..rows {
            data.extend_from_slice(&values[r * last..(r + 1) * last]);
            data.extend(std::iter::repeat_n(pad, kv_len - last));
        }
        shape[3] = kv_len;
        Ok(Mask { shape, data })
    }

    /// The index of element `(b, h, i, j)` after broadcasting.
    fn index(&self, b: usize, h: usize, i: usize, j: usize) -> usize {
        let s = &self.shape;
        let pick = |x: usize, n: usize| if n == 1 { 0 } else { x };
        ((pick(b, s[0]) * s[1] + pick(h, s[1])) * s[2] + pick(i, s[2])) * s[3] + j
    }

    fn check(&self, target: [usize; 4]) -> Result<(), EvalError> {
        for k in 0..3 {
            if self.shape[k] != 1 && self.shape[k] != target[k] {
                return Err(EvalError::new(format!(
                    "attn_mask (padded to {:?}) does not broadcast to {target:?}",
                    self.shape
                )));
            }
        }
        Ok(())
    }
}

/// Runs `Attention`.
pub(crate) fn attention(a: &Attention, inputs: &[Option<Value>], num_outputs: usize) -> Result<Vec<Value>, EvalError> {
    let q_t = tensor_arg(inputs, 0, "Q")?;
    let k_t = tensor_arg(inputs, 1, "K")?;
    let v_t = tensor_arg(inputs, 2, "V")?;
    let mask_t = opt_tensor_arg(inputs, 3, "attn_mask")?;
    let past_k_t = opt_tensor_arg(inputs, 4, "past_key")?;
    let past_v_t = opt_tensor_arg(inputs, 5, "past_value")?;
    let nonpad_t = opt_tensor_arg(inputs, 6, "nonpad_kv_seqlen")?;
    let dtype = q_t.dtype();
    if !is_real_float(dtype) {
        return Err(EvalError::new(format!("Q must be a float tensor, got {dtype}")));
    }
    if k_t.dtype() != dtype || v_t.dtype() != dtype {
        return Err(EvalError::new(format!(
            "Q, K and V must share one type, got {dtype}, {} and {}",
            k_t.dtype(),
            v_t.dtype()
        )));
    }
    let rank = q_t.rank();
    if k_t.rank() != rank || v_t.rank() != rank {
        return Err(EvalError::new(format!(
            "Q, K and V must have the same rank, got shapes {:?}, {:?} and {:?}",
            q_t.shape(),
            k_t.shape(),
            v_t.shape()
        )));
    }
    if past_k_t.is_some() != past_v_t.is_some() {
        return Err(EvalError::new("past_key and past_value must be given together"));
    }
    if nonpad_t.is_some() && past_k_t.is_some() {
        return Err(EvalError::new("nonpad_kv_seqlen cannot be combined with past_key/past_value"));
    }
    for (name, w) in [("left_window_size", a.left_window_size), ("right_window_size", a.right_window_size)] {
        if w < -1 {
            return Err(EvalError::new(format!("{name} must be -1 or non-negative, got {w}")));
        }
    }
    if !(0..=3).contains(&a.qk_matmul_output_mode) {
        return Err(EvalError::new(format!(
            "qk_matmul_output_mode must be 0, 1, 2 or 3, got {}",
            a.qk_matmul_output_mode
        )));
    }
    let heads_attr = |v: Option<i64>, name: &str| v.map(|n| to_usize(n, name)).transpose();
    let q_heads_attr = heads_attr(a.q_num_heads, "q_num_heads")?;
    let kv_heads_attr = heads_attr(a.kv_num_heads, "kv_num_heads")?;
    let q = Heads::from_floats(Floats::read(q_t, "Q")?, q_heads_attr, "Q")?;
    let k = Heads::from_floats(Floats::read(k_t, "K")?, kv_heads_attr, "K")?;
    let v = Heads::from_floats(Floats::read(v_t, "V")?, kv_heads_attr, "V")?;
    let (batch, hq, sq, d) = (q.batch, q.heads, q.seq, q.size);
    if k.batch != batch || v.batch != batch {
        return Err(EvalError::new("Q, K and V must have the same batch size"));
    }
    if k.size != d {
        return Err(EvalError::new(format!("Q's head size {d} differs from K's {}", k.size)));
    }
    if k.heads != v.heads || k.seq != v.seq {
        return Err(EvalError::new(format!(
            "K and V disagree on heads or sequence length: {:?} vs {:?}",
            k.shape(),
            v.shape()
        )));
    }
    let hkv = k.heads;
    if hkv == 0 || hq % hkv != 0 {
        return Err(EvalError::new(format!("q_num_heads {hq} must be a multiple of kv_num_heads {hkv}")));
    }
    let past_len = match past_k_t {
        Some(t) => t.shape().get(2).copied().unwrap_or(0),
        None => 0,
    };
    let (k, v) = match (past_k_t, past_v_t) {
        (Some(pk), Some(pv)) => {
            let read = |t: &Tensor, what: &str| -> Result<Heads, EvalError> {
                if t.dtype() != dtype || t.rank() != 4 {
                    return Err(EvalError::new(format!(
                        "{what} must be a 4-D {dtype} tensor, got {}{:?}",
                        t.dtype(),
                        t.shape()
                    )));
                }
                Heads::from_floats(Floats::read(t, what)?, None, what)
            };
            (Heads::after(read(pk, "past_key")?, k, "key")?, Heads::after(read(pv, "past_value")?, v, "value")?)
        }
        _ => (k, v),
    };
    let skv = k.seq;
    let dv = v.size;
    let nonpad = match nonpad_t {
        Some(t) => {
            let n = t.to_i64_vec().ok_or_else(|| EvalError::new("nonpad_kv_seqlen must be an integer tensor"))?;
            if n.len() != batch {
                return Err(EvalError::new(format!("nonpad_kv_seqlen has {} entries for a batch of {batch}", n.len())));
            }
            Some(n)
        }
        None => None,
    };
    let mask = match mask_t {
        Some(t) => {
            let m = Mask::read(t, dtype, skv)?;
            m.check([batch, hq, sq, skv])?;
            Some(m)
        }
        None => None,
    };

    // Where the query block sits among the keys: after the internal cache,
    // or (external cache) `nonpad - q_len` keys in, per batch.
    let offset = |b: usize| -> i64 {
        match &nonpad {
            Some(n) if past_k_t.is_none() => n[b] - sq as i64,
            _ => past_len as i64,
        }
    };
    let bias_at = |b: usize, h: usize, i: usize, j: usize| -> f64 {
        let mut bias = match &mask {
            Some(m) => m.data[m.index(b, h, i, j)],
            None => 0.0,
        };
        let pos = i as i64 + offset(b);
        let j = j as i64;
        if a.is_causal && j > pos {
            bias += f64::NEG_INFINITY;
        }
        if a.left_window_size >= 0 && pos - j > a.left_window_size {
            bias += f64::NEG_INFINITY;
        }
        if a.right_window_size >= 0 && j - pos > a.right_window_size {
            bias += f64::NEG_INFINITY;
        }
        if let Some(n) = &nonpad
            && j >= n[b]
        {
            bias += f64::NEG_INFINITY;
        }
        bias
    };

    let scale = match a.scale {
        Some(s) => s as f64,
        None => 1.0 / (d as f64).sqrt(),
    };
    // Q and K are each scaled by sqrt(scale) in the input type.
    let root = round_to(dtype, scale.sqrt());
    let softmax_dtype = match a.softmax_precision {
        None => dtype,
        Some(code) => match DType::from_onnx_code(code as i32) {
            Some(t @ (DType::F32 | DType::F16 | DType::F64 | DType::BF16)) => t,
            _ => return Err(EvalError::new(format!("softmax_precision {code} is not a float type code"))),
        },
    };
    let group = hq / hkv;
    let mut y = vec![0.0; batch * hq * sq * dv];
    let mut qk_out = vec![0.0; if num_outputs > 3 { batch * hq * sq * skv } else { 0 }];
    let mut qs = vec![0.0; d];
    let mut ks = vec![0.0; skv * d];
    let mut row = vec![0.0; skv];
    let mut probs = vec![0.0; skv];
    for b in 0..batch {
        for h in 0..hq {
            let kh = h / group;
            for j in 0..skv {
                for (x, &kv) in ks[j * d..(j + 1) * d].iter_mut().zip(k.at(b, kh, j)) {
                    *x = round_to(dtype, kv * root);
                }
            }
            for i in 0..sq {
                for (x, &qv) in qs.iter_mut().zip(q.at(b, h, i)) {
                    *x = round_to(dtype, qv * root);
                }
                let mut biases = Vec::with_capacity(skv);
                for j in 0..skv {
                    let raw = round_to(dtype, qs.iter().zip(&ks[j * d..(j + 1) * d]).map(|(x, y)| x * y).sum());
                    let capped = if a.softcap > 0.0 {
                        let c = a.softcap as f64;
                        round_to(dtype, round_to(dtype, round_to(dtype, raw / c).tanh()) * c)
                    } else {
                        raw
                    };
                    let bias = bias_at(b, h, i, j);
                    biases.push(bias);
                    row[j] = round_to(dtype, capped + bias);
                    if num_outputs > 3 {
                        let o = ((b * hq + h) * sq + i) * skv + j;
                        qk_out[o] = match a.qk_matmul_output_mode {
                            0 => raw,
                            1 => capped,
                            _ => row[j],
                        };
                    }
                }
                // Softmax in the requested precision; an all -inf row gives zeros.
                let m = nan_max(row.iter().map(|&x| round_to(softmax_dtype, x)));
                let safe = if m == f64::NEG_INFINITY { 0.0 } else { m };
                for j in 0..skv {
                    let shifted = round_to(softmax_dtype, round_to(softmax_dtype, row[j]) - safe);
                    probs[j] = round_to(softmax_dtype, shifted.exp());
                }
                let sum = sum_in(softmax_dtype, probs.iter().copied());
                let sum = if sum == 0.0 { 1.0 } else { sum };
                let all_masked = nan_max(biases.iter().copied()) == f64::NEG_INFINITY;
                for p in probs.iter_mut() {
                    *p = if all_masked { 0.0 } else { round_to(dtype, round_to(softmax_dtype, *p / sum)) };
                }
                if num_outputs > 3 && a.qk_matmul_output_mode == 3 {
                    let o = ((b * hq + h) * sq + i) * skv;
                    qk_out[o..o + skv].copy_from_slice(&probs);
                }
                let o = ((b * hq + h) * sq + i) * dv;
                for (j, &p) in probs.iter().enumerate() {
                    for (acc, &x) in y[o..o + dv].iter_mut().zip(v.at(b, kh, j)) {
                        *acc += p * x;
                    }
                }
            }
        }
    }
    round_all(dtype, &mut y);
    let y = if rank == 3 {
        // Back to (batch, seq, heads * v_head_size).
        let mut out = vec![0.0; y.len()];
        for b in 0..batch {
            for h in 0..hq {
                for i in 0..sq {
                    let src = ((b * hq + h) * sq + i) * dv;
                    let dst = (b * sq + i) * hq * dv + h * dv;
                    out[dst..dst + dv].copy_from_slice(&y[src..src + dv]);
                }
            }
        }
        float_tensor(dtype, &[batch, sq, hq * dv], out)?
    } else {
        float_tensor(dtype, &[batch, hq, sq, dv], y)?
    };
    let mut result = vec![y];
    if num_outputs > 1 {
        result.push(float_tensor(dtype, &k.shape(), k.data)?);
    }
    if num_outputs > 2 {
        result.push(float_tensor(dtype, &v.shape(), v.data)?);
    }
    if num_outputs > 3 {
        result.push(float_tensor(dtype, &[batch, hq, sq, skv], qk_out)?);
    }
    outputs(result)
}

/// Runs `RotaryEmbedding`.
pub(crate) fn rotary_embedding(a: &RotaryEmbedding, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let x_t = tensor_arg(inputs, 0, "X")?;
    let cos_t = tensor_arg(inputs, 1, "cos_cache")?;
    let sin_t = tensor_arg(inputs, 2, "sin_cache")?;
    let pos_t = opt_tensor_arg(inputs, 3, "position_ids")?;
    let dtype = x_t.dtype();
    let x = Floats::read(x_t, "X")?;
    let cos = Floats::read(cos_t, "cos_cache")?;
    let sin = Floats::read(sin_t, "sin_cache")?;
    if cos.shape != sin.shape {
        return Err(EvalError::new(format!(
            "cos_cache {:?} and sin_cache {:?} must have the same shape",
            cos.shape, sin.shape
        )));
    }
    // Element (b, s, h, d) of the input, whatever its layout.
    // The input as (batch, seq, heads, head) with strides for each, whatever its layout.
    let (batch, seq, heads, head, st): (usize, usize, usize, usize, [usize; 4]) = match x.shape.as_slice() {
        &[b, h, s, d] => (b, s, h, d, [h * s * d, d, s * d, 1]),
        &[b, s, hidden] => {
            let n = a
                .num_heads
                .ok_or_else(|| EvalError::new("num_heads is required for a 3-D input"))
                .and_then(|n| to_usize(n, "num_heads"))?;
            if n == 0 || hidden % n != 0 {
                return Err(EvalError::new(format!("hidden size {hidden} is not a multiple of num_heads {n}")));
            }
            let d = hidden / n;
            (b, s, n, d, [s * hidden, hidden, d, 1])
        }
        s => return Err(EvalError::new(format!("X must be 3-D or 4-D, got shape {s:?}"))),
    };
    let x_index = |b: usize, s: usize, h: usize, d: usize| b * st[0] + s * st[1] + h * st[2] + d * st[3];
    let rot = match a.rotary_embedding_dim {
        0 => head,
        r => to_usize(r, "rotary_embedding_dim")?,
    };
    if rot > head || rot % 2 != 0 {
        return Err(EvalError::new(format!(
            "rotary_embedding_dim {rot} must be even and at most the head size {head}"
        )));
    }
    let half = rot / 2;
    // The cache row for (b, s): looked up by position id, or given per token.
    let cache_row: Box<dyn Fn(usize, usize) -> usize> = match pos_t {
        Some(p) => {
            let ids = p.to_i64_vec().ok_or_else(|| EvalError::new("position_ids must be an integer tensor"))?;
            if p.shape() != [batch, seq] {
                return Err(EvalError::new(format!(
                    "position_ids has shape {:?}, expected [{batch}, {seq}]",
                    p.shape()
                )));
            }
            let [rows, width] = cos.shape[..] else {
                return Err(EvalError::new(format!("with position_ids the caches must be 2-D, got {:?}", cos.shape)));
            };
            if width != half {
                return Err(EvalError::new(format!(
                    "the caches' last dim {width} must be rotary_embedding_dim / 2 = {half}"
                )));
            }
            if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= rows) {
                return Err(EvalError::new(format!("position id {bad} is outside the cache of {rows} rows")));
            }
            Box::new(move |b, s| ids[b * seq + s] as usize)
        }
        None => {
            if cos.shape != [batch, seq, half] {
                return Err(EvalError::new(format!(
                    "without position_ids the caches must have shape [{batch}, {seq}, {half}], got {:?}",
                    cos.shape
                )));
            }
            Box::new(move |b, s| b * seq + s)
        }
    };
    let mut out = x.data.clone();
    for b in 0..batch {
        for s in 0..seq {
            let r = cache_row(b, s) * half;
            for h in 0..heads {
                for i in 0..half {
                    let (i1, i2) = if a.interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
                    let (p1, p2) = (x_index(b, s, h, i1), x_index(b, s, h, i2));
                    let (x1, x2) = (x.data[p1], x.data[p2]);
                    let (c, sn) = (cos.data[r + i], sin.data[r + i]);
                    out[p1] = round_to(dtype, round_to(dtype, c * x1) - round_to(dtype, sn * x2));
                    out[p2] = round_to(dtype, round_to(dtype, sn * x1) + round_to(dtype, c * x2));
                }
            }
        }
    }
    outputs(vec![float_tensor(dtype, &x.shape, out)?])
}

/// The logistic sigmoid.
fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Runs `SwiGLU`: `A * sigmoid(alpha * A) * B`.
pub(crate) fn swiglu(a: &SwiGlu, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let at = tensor_arg(inputs, 0, "A")?;
    let bt = tensor_arg(inputs, 1, "B")?;
    if at.shape() != bt.shape() || at.dtype() != bt.dtype() {
        return Err(EvalError::new(format!(
            "A and B must have the same shape and type (no broadcasting), got {}{:?} and {}{:?}",
            at.dtype(),
            at.shape(),
            bt.dtype(),
            bt.shape()
        )));
    }
    let dtype = at.dtype();
    let x = Floats::read(at, "A")?;
    let y = Floats::read(bt, "B")?;
    let alpha = a.alpha as f64;
    let data = x
        .data
        .iter()
        .zip(&y.data)
        .map(|(&g, &v)| {
            let swish = round_to(dtype, g * round_to(dtype, sigmoid(alpha * g)));
            swish * v
        })
        .collect();
    outputs(vec![float_tensor(dtype, &x.shape, data)?])
}

/// Runs `LinearAttention`: a recurrent state updated token by token with one
/// of four rules (linear, gated, delta, gated delta) and read by the queries.
pub(crate) fn linear_attention(a: &LinearAttention, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let q_t = tensor_arg(inputs, 0, "query")?;
    let k_t = tensor_arg(inputs, 1, "key")?;
    let v_t = tensor_arg(inputs, 2, "value")?;
    let past_t = opt_tensor_arg(inputs, 3, "past_state")?;
    let decay_t = opt_tensor_arg(inputs, 4, "decay")?;
    let beta_t = opt_tensor_arg(inputs, 5, "beta")?;
    let (gated, delta) = match a.update_rule.as_str() {
        "linear" => (false, false),
        "gated" => (true, false),
        "delta" => (false, true),
        "gated_delta" => (true, true),
        r => {
            return Err(EvalError::new(format!("update_rule '{r}' is not one of linear, gated, delta, gated_delta")));
        }
    };
    let hq = to_usize(a.q_num_heads, "q_num_heads")?;
    let hkv = to_usize(a.kv_num_heads, "kv_num_heads")?;
    if hq == 0 || hkv == 0 || hq % hkv != 0 {
        return Err(EvalError::new(format!("q_num_heads {hq} must be a positive multiple of kv_num_heads {hkv}")));
    }
    match (gated, decay_t.is_some()) {
        (true, false) => return Err(EvalError::new(format!("update_rule '{}' requires decay", a.update_rule))),
        (false, true) => return Err(EvalError::new(format!("update_rule '{}' takes no decay", a.update_rule))),
        _ => {}
    }
    match (delta, beta_t.is_some()) {
        (true, false) => return Err(EvalError::new(format!("update_rule '{}' requires beta", a.update_rule))),
        (false, true) => return Err(EvalError::new(format!("update_rule '{}' takes no beta", a.update_rule))),
        _ => {}
    }
    let dtype = q_t.dtype();
    let q = Floats::read(q_t, "query")?;
    let k = Floats::read(k_t, "key")?;
    let v = Floats::read(v_t, "value")?;
    for (name, f) in [("query", &q), ("key", &k), ("value", &v)] {
        if f.rank() != 3 {
            return Err(EvalError::new(format!("{name} must be 3-D (B, T, H*D), got {:?}", f.shape)));
        }
    }
    let (b, t) = (q.shape[0], q.shape[1]);
    if q.shape[2] % hq != 0 || k.shape[2] % hkv != 0 || v.shape[2] % hkv != 0 {
        return Err(EvalError::new("the packed head dims are not multiples of the head counts"));
    }
    let dk = q.shape[2] / hq;
    let dv = v.shape[2] / hkv;
    if k.shape != [b, t, hkv * dk] || v.shape[..2] != [b, t] {
        return Err(EvalError::new(format!(
            "key {:?} and value {:?} do not match query {:?}",
            k.shape, v.shape, q.shape
        )));
    }
    // Lower-precision inputs are widened to f32, as the reference does.
    let f32r = |x: f64| x as f32 as f64;
    let decay = match decay_t {
        Some(dt) => {
            let f = Floats::read(dt, "decay")?;
            if f.rank() != 3 || f.shape[..2] != [b, t] || (f.shape[2] != hkv && f.shape[2] != hkv * dk) {
                return Err(EvalError::new(format!(
                    "decay must have shape [{b}, {t}, {hkv}] or [{b}, {t}, {}], got {:?}",
                    hkv * dk,
                    f.shape
                )));
            }
            Some(f)
        }
        None => None,
    };
    let beta = match beta_t {
        Some(bt) => {
            let f = Floats::read(bt, "beta")?;
            if f.rank() != 3 || f.shape[..2] != [b, t] || (f.shape[2] != hkv && f.shape[2] != 1) {
                return Err(EvalError::new(format!(
                    "beta must have shape [{b}, {t}, {hkv}] or [{b}, {t}, 1], got {:?}",
                    f.shape
                )));
            }
            Some(f)
        }
        None => None,
    };
    let (mut state, state_dtype) = match past_t {
        Some(p) => {
            let f = Floats::read(p, "past_state")?;
            if f.shape != [b, hkv, dk, dv] {
                return Err(EvalError::new(format!(
                    "past_state has shape {:?}, expected [{b}, {hkv}, {dk}, {dv}]",
                    f.shape
                )));
            }
            (f.data.into_iter().map(f32r).collect::<Vec<_>>(), p.dtype())
        }
        None => (vec![0.0; b * hkv * dk * dv], dtype),
    };
    let scale = if a.scale == 0.0 { 1.0 / (dk as f64).sqrt() } else { a.scale as f64 };
    let group = hq / hkv;
    let mut out = vec![0.0; b * t * hq * dv];
    let mut vt = vec![0.0; dv];
    for bi in 0..b {
        for ti in 0..t {
            for h in 0..hkv {
                let s = &mut state[(bi * hkv + h) * dk * dv..(bi * hkv + h + 1) * dk * dv];
                let kt: Vec<f64> = (0..dk).map(|d| f32r(k.data[(bi * t + ti) * hkv * dk + h * dk + d])).collect();
                for (m, x) in vt.iter_mut().enumerate() {
                    *x = f32r(v.data[(bi * t + ti) * hkv * dv + h * dv + m]);
                }
                if let Some(g) = &decay {
                    let w = g.shape[2];
                    for d in 0..dk {
                        let gi = if w == hkv { h } else { h * dk + d };
                        let e = f32r(g.data[(bi * t + ti) * w + gi]).exp();
                        for x in &mut s[d * dv..(d + 1) * dv] {
                            *x *= e;
                        }
                    }
                }
                if let Some(be) = &beta {
                    let w = be.shape[2];
                    let bv = f32r(be.data[(bi * t + ti) * w + if w == 1 { 0 } else { h }]);
                    for (m, x) in vt.iter_mut().enumerate() {
                        let retrieved: f64 = (0..dk).map(|d| s[d * dv + m] * kt[d]).sum();
                        *x = bv * (*x - retrieved);
                    }
                }
                for d in 0..dk {
                    for m in 0..dv {
                        s[d * dv + m] += kt[d] * vt[m];
                    }
                }
                for g in 0..group {
                    let qh = h * group + g;
                    let qo = (bi * t + ti) * hq * dk + qh * dk;
                    let oo = (bi * t + ti) * hq * dv + qh * dv;
                    for m in 0..dv {
                        let dot: f64 = (0..dk).map(|d| f32r(q.data[qo + d]) * s[d * dv + m]).sum();
                        out[oo + m] = scale * dot;
                    }
                }
            }
        }
    }
    outputs(vec![float_tensor(dtype, &[b, t, hq * dv], out)?, float_tensor(state_dtype, &[b, hkv, dk, dv], state)?])
}

/// Runs `CausalConvWithState`: a depthwise causal 1-D convolution whose
/// left context comes from (and is handed back as) a carried state.
pub(crate) fn causal_conv_with_state(
    a: &CausalConvWithState,
    inputs: &[Option<Value>],
) -> Result<Vec<Value>, EvalError> {
    let x_t = tensor_arg(inputs, 0, "input")?;
    let w_t = tensor_arg(inputs, 1, "weight")?;
    let bias_t = opt_tensor_arg(inputs, 2, "bias")?;
    let past_t = opt_tensor_arg(inputs, 3, "past_state")?;
    let silu = match a.activation.as_str() {
        "none" => false,
        "silu" | "swish" => true,
        other => return Err(EvalError::new(format!("activation '{other}' is not one of none, silu, swish"))),
    };
    let dtype = x_t.dtype();
    let x = Floats::read(x_t, "input")?;
    let w = Floats::read(w_t, "weight")?;
    let [batch, channels, len] = x.shape[..] else {
        return Err(EvalError::new(format!("input must be 3-D (batch, channels, length), got {:?}", x.shape)));
    };
    let [wc, 1, kernel] = w.shape[..] else {
        return Err(EvalError::new(format!("weight must have shape (channels, 1, k), got {:?}", w.shape)));
    };
    if wc != channels || kernel == 0 {
        return Err(EvalError::new(format!(
            "weight {:?} does not match {channels} channels (or has an empty kernel)",
            w.shape
        )));
    }
    let bias = match bias_t {
        Some(t) => {
            let f = Floats::read(t, "bias")?;
            if f.shape != [channels] {
                return Err(EvalError::new(format!("bias must have shape [{channels}], got {:?}", f.shape)));
            }
            f.data
        }
        None => vec![0.0; channels],
    };
    let carry = kernel - 1;
    let past = match past_t {
        Some(t) => {
            let f = Floats::read(t, "past_state")?;
            if f.shape != [batch, channels, carry] {
                return Err(EvalError::new(format!(
                    "past_state must have shape [{batch}, {channels}, {carry}], got {:?}",
                    f.shape
                )));
            }
            f.data
        }
        None => vec![0.0; batch * channels * carry],
    };
    let padded_len = carry + len;
    let mut out = vec![0.0; batch * channels * len];
    let mut present = vec![0.0; batch * channels * carry];
    let mut padded = vec![0.0; padded_len];
    for b in 0..batch {
        for (c, &bias_c) in bias.iter().enumerate() {
            let bc = b * channels + c;
            padded[..carry].copy_from_slice(&past[bc * carry..(bc + 1) * carry]);
            padded[carry..].copy_from_slice(&x.data[bc * len..(bc + 1) * len]);
            let kw = &w.data[c * kernel..(c + 1) * kernel];
            for t in 0..len {
                let acc: f64 = kw.iter().zip(&padded[t..t + kernel]).map(|(a, b)| a * b).sum::<f64>() + bias_c;
                let acc = round_to(dtype, acc);
                out[bc * len + t] = if silu { acc * sigmoid(acc) } else { acc };
            }
            present[bc * carry..(bc + 1) * carry].copy_from_slice(&padded[padded_len - carry..]);
        }
    }
    let state_dtype = past_t.map(|t| t.dtype()).unwrap_or(dtype);
    outputs(vec![float_tensor(dtype, &x.shape, out)?, float_tensor(state_dtype, &[batch, channels, carry], present)?])
}

/// Runs `ai.onnx.preview.FlexAttention`: scaled dot-product attention on
/// 4-D inputs whose scores and probabilities may be rewritten by the
/// `score_mod` and `prob_mod` body graphs. Values the bodies capture from
/// the outer graph follow the three regular inputs (every body of the node
/// has the same capture list).
pub(crate) fn flex_attention(o: &Opaque, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let body = |name: &str| -> Result<Option<&Subgraph>, EvalError> {
        match o.attrs.get(name) {
            None => Ok(None),
            Some(Attr::Graph(g)) => Ok(Some(g)),
            Some(a) => Err(EvalError::new(format!("attribute '{name}' must be a graph, found {}", a.kind()))),
        }
    };
    let (score_mod, prob_mod) = (body("score_mod")?, body("prob_mod")?);
    let captures = score_mod.or(prob_mod).map_or(0, |g| g.captures().len());
    if inputs.len() < 3 + captures {
        return Err(EvalError::new(format!(
            "expected Q, K, V and {captures} captured values, got {} inputs",
            inputs.len()
        )));
    }
    let captured: Vec<Value> = inputs[inputs.len() - captures..]
        .iter()
        .map(|v| v.clone().ok_or_else(|| EvalError::new("a captured outer value is missing")))
        .collect::<Result<_, _>>()?;
    let q_t = tensor_arg(inputs, 0, "Q")?;
    let k_t = tensor_arg(inputs, 1, "K")?;
    let v_t = tensor_arg(inputs, 2, "V")?;
    let dtype = q_t.dtype();
    for t in [q_t, k_t, v_t] {
        if t.rank() != 4 {
            return Err(EvalError::new(format!("Q, K and V must be 4-D, got shape {:?}", t.shape())));
        }
    }
    let q = Heads::from_floats(Floats::read(q_t, "Q")?, None, "Q")?;
    let k = Heads::from_floats(Floats::read(k_t, "K")?, None, "K")?;
    let v = Heads::from_floats(Floats::read(v_t, "V")?, None, "V")?;
    let (b, hq, l, e) = (q.batch, q.heads, q.seq, q.size);
    if k.batch != b || v.batch != b || k.size != e || k.heads != v.heads || k.seq != v.seq {
        return Err(EvalError::new(format!(
            "Q {:?}, K {:?} and V {:?} do not fit together",
            q.shape(),
            k.shape(),
            v.shape()
        )));
    }
    let (hkv, s, ev) = (k.heads, k.seq, v.size);
    if hkv == 0 || hq % hkv != 0 {
        return Err(EvalError::new(format!("q heads {hq} must be a multiple of kv heads {hkv}")));
    }
    let view = AttrView(&o.attrs);
    let scale = match o.attrs.get("scale") {
        Some(_) => view.float("scale", 0.0)? as f64,
        None => 1.0 / (e as f64).sqrt(),
    };
    let compute = match o.attrs.get("softmax_precision") {
        Some(_) => match DType::from_onnx_code(view.int("softmax_precision", 1)? as i32) {
            Some(d @ (DType::F32 | DType::F16 | DType::BF16 | DType::F64)) => d,
            _ => return Err(EvalError::new("softmax_precision must be a float type code")),
        },
        None if dtype == DType::F64 => DType::F64,
        None => DType::F32,
    };
    // sqrt(scale) is taken in f32 and cast to the input type.
    let root = round_to(dtype, (scale as f32).sqrt() as f64);
    let group = hq / hkv;
    let mut scores = vec![0.0; b * hq * l * s];
    for bi in 0..b {
        for h in 0..hq {
            for i in 0..l {
                let qs: Vec<f64> = q.at(bi, h, i).iter().map(|&x| round_to(dtype, x * root)).collect();
                for j in 0..s {
                    let dot: f64 =
                        k.at(bi, h / group, j).iter().zip(&qs).map(|(&kv, qv)| round_to(dtype, kv * root) * qv).sum();
                    scores[((bi * hq + h) * l + i) * s + j] = round_to(compute, round_to(dtype, dot));
                }
            }
        }
    }
    let shape = [b, hq, l, s];
    let apply = |g: Option<&Subgraph>, data: Vec<f64>, what: &str| -> Result<Vec<f64>, EvalError> {
        let Some(g) = g else { return Ok(data) };
        let t = float_tensor(compute, &shape, data)?;
        let out = crate::run_graph(g, &[Value::Tensor(t)], &captured)?;
        match out.as_slice() {
            [Value::Tensor(r)] if r.shape() == shape => {
                let mut f = Floats::read(r, what)?.data;
                round_all(compute, &mut f);
                Ok(f)
            }
            _ => Err(EvalError::new(format!("{what} must return one tensor of shape {shape:?}"))),
        }
    };
    let scores = apply(score_mod, scores, "score_mod")?;
    let mut probs = vec![0.0; scores.len()];
    for (row, out) in scores.chunks(s.max(1)).zip(probs.chunks_mut(s.max(1))) {
        let m = nan_max(row.iter().copied());
        for (p, &x) in out.iter_mut().zip(row) {
            *p = round_to(compute, round_to(compute, x - m).exp());
        }
        let sum = sum_in(compute, out.iter().copied());
        for p in out.iter_mut() {
            *p = round_to(compute, *p / sum);
        }
    }
    let probs = apply(prob_mod, probs, "prob_mod")?;
    let mut y = vec![0.0; b * hq * l * ev];
    for bi in 0..b {
        for h in 0..hq {
            for i in 0..l {
                let p = &probs[((bi * hq + h) * l + i) * s..((bi * hq + h) * l + i + 1) * s];
                let o = ((bi * hq + h) * l + i) * ev;
                for (j, &pj) in p.iter().enumerate() {
                    for (acc, &x) in y[o..o + ev].iter_mut().zip(v.at(bi, h / group, j)) {
                        *acc += pj * round_to(compute, x);
                    }
                }
                for acc in &mut y[o..o + ev] {
                    *acc = round_to(compute, *acc);
                }
            }
        }
    }
    outputs(vec![float_tensor(v_t.dtype(), &[b, hq, l, ev], y)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::extra::testutil::{assert_close, f32s, run_n, run1};
    use sharc_ir::Op;

    fn t(shape: &[usize], v: Vec<f64>) -> Option<Value> {
        Some(Value::Tensor(f32s(shape, v)))
    }

    fn att(f: impl FnOnce(&mut Attention)) -> Op {
        let mut a = Attention {
            is_causal: false,
            kv_num_heads: None,
            left_window_size: -1,
            q_num_heads: None,
            qk_matmul_output_mode: 0,
            right_window_size: -1,
            scale: None,
            softcap: 0.0,
            softmax_precision: None,
        };
        f(&mut a);
        Op::Attention(a)
    }

    fn qkv() -> Vec<Option<Value>> {
        vec![
            t(&[1, 1, 2, 2], vec![-0.3, -0.163, -0.026, 0.111]),
            t(&[1, 1, 3, 2], vec![-0.3, 0.0151, 0.3302, 0.6453, -0.0396, 0.2755]),
            t(&[1, 1, 3, 2], vec![-0.5, -0.0753, 0.3494, -0.2259, 0.1988, -0.3765]),
        ]
    }

    // Expected values in these tests come from onnx.reference (onnx 1.23).
    #[test]
    fn attention_4d_basic() {
        let y = run1(&att(|_| {}), qkv());
        assert_close(&y, &[1, 1, 2, 2], &[-0.01214705, -0.221395, 0.02122337, -0.2266778], 1e-6);
    }

    #[test]
    fn attention_3d_gqa_causal_with_cache_and_probabilities() {
        let op = att(|a| {
            a.q_num_heads = Some(2);
            a.kv_num_heads = Some(1);
            a.is_causal = true;
            a.qk_matmul_output_mode = 3;
        });
        let inputs = vec![
            t(&[1, 2, 4], vec![-0.3, -0.0671, 0.1658, 0.3987, 0.6316, -0.1355, 0.0974, 0.3303]),
            t(&[1, 2, 2], vec![-0.3, 0.0973, 0.3, -0.0973]),
            t(&[1, 2, 2], vec![-0.2, 0.3617, -0.0766, 0.4851]),
            None,
            t(&[1, 1, 1, 2], vec![-0.3, 0.4261]),
            t(&[1, 1, 1, 2], vec![-0.7, 0.1357]),
        ];
        let out = run_n(&op, inputs, 4);
        let y = [-0.44805, 0.2495814, -0.4615788, 0.2434664, -0.2969849, 0.3451487, -0.3355846, 0.3223115];
        assert_close(&out[0], &[1, 2, 4], &y, 1e-6);
        assert_close(&out[1], &[1, 1, 3, 2], &[-0.3, 0.4261, -0.3, 0.0973, 0.3, -0.0973], 1e-7);
        assert_close(&out[2], &[1, 1, 3, 2], &[-0.7, 0.1357, -0.2, 0.3617, -0.0766, 0.4851], 1e-7);
        // The causal frontier is offset by the one cached key.
        let p = [
            0.4960999, 0.5039001, 0.0, 0.2935532, 0.3029483, 0.4034985, 0.5231575, 0.4768424, 0.0, 0.3510807,
            0.3251292, 0.3237901,
        ];
        assert_close(&out[3], &[1, 2, 2, 3], &p, 1e-6);
    }

    #[test]
    fn attention_softcap_and_float_mask_debug_modes() {
        let mut inputs = qkv();
        inputs.push(t(&[1, 3], vec![0.5, -1.0, 0.0]));
        let op = |mode| {
            att(|a| {
                a.softcap = 0.7;
                a.qk_matmul_output_mode = mode;
            })
        };
        let out = run_n(&op(1), inputs.clone(), 4);
        assert_close(&out[0], &[1, 1, 2, 2], &[-0.1872877, -0.1875404, -0.1604883, -0.1946112], 1e-6);
        let capped = [0.06173838, -0.1424073, -0.0233446, 0.006700411, 0.04451803, 0.02234412];
        assert_close(&out[3], &[1, 1, 2, 3], &capped, 1e-6);
        let out = run_n(&op(2), inputs.clone(), 4);
        let biased = [0.5617384, -1.142407, -0.0233446, 0.5067004, -0.9554819, 0.02234412];
        assert_close(&out[3], &[1, 1, 2, 3], &biased, 1e-6);
        // Mode 0 is the raw product, before the soft cap: (q . k) / sqrt(2).
        let out = run_n(&op(0), inputs, 4);
        let raw0 = (-0.3 * -0.3 + -0.163 * 0.0151) / 2f64.sqrt();
        assert!((out[3].to_f64_vec().unwrap()[0] - raw0).abs() < 1e-6);
    }

    #[test]
    fn attention_short_bool_mask_is_padded_with_masked() {
        let mut inputs = qkv();
        inputs.push(Some(Value::Tensor(Tensor::from_vec(&[2, 2], vec![true, false, true, true]))));
        let y = run1(&att(|_| {}), inputs);
        // Row 0 sees only key 0, so it is exactly V[0].
        assert_close(&y, &[1, 1, 2, 2], &[-0.5, -0.0753, -0.06725766, -0.1520259], 1e-6);
    }

    #[test]
    fn attention_fully_masked_rows_are_zero() {
        let mut inputs = qkv();
        inputs.push(Some(Value::Tensor(Tensor::from_vec(&[2, 3], vec![false, false, false, true, true, true]))));
        let out = run_n(&att(|a| a.qk_matmul_output_mode = 3), inputs, 4);
        let y = out[0].to_f64_vec().unwrap();
        assert_eq!(&y[..2], &[0.0, 0.0]);
        assert!(y[2..].iter().all(|v| v.is_finite() && *v != 0.0));
        assert_eq!(&out[3].to_f64_vec().unwrap()[..3], &[0.0, 0.0, 0.0]);
    }

    #[test]
    fn attention_windows_and_external_cache() {
        // With a window of zero on both sides each query sees one key: the
        // one at its own absolute position (offset = nonpad - q_len = 1).
        let mut inputs = qkv();
        inputs.extend([None, None, None, Some(Value::Tensor(Tensor::from_vec(&[1], vec![3i64])))]);
        let y = run1(
            &att(|a| {
                a.left_window_size = 0;
                a.right_window_size = 0;
            }),
            inputs,
        );
        assert_close(&y, &[1, 1, 2, 2], &[0.3494, -0.2259, 0.1988, -0.3765], 1e-7);
    }

    #[test]
    fn attention_rejects_bad_inputs() {
        let mut bad = qkv();
        bad[1] = Some(Value::Tensor(Tensor::from_vec(&[1, 1, 3, 2], vec![0.0f64; 6])));
        assert!(run(&att(|_| {}), &bad, &cx(1)).unwrap().is_err());
        let mut bad = qkv();
        bad.push(t(&[2, 2, 2], vec![0.0; 8]));
        let e = run(&att(|_| {}), &bad, &cx(1)).unwrap().unwrap_err();
        assert!(e.message.contains("attn_mask"), "{e}");
        let mut bad = qkv();
        bad.extend([None, t(&[1, 1, 1, 2], vec![0.0; 2]), t(&[1, 1, 1, 2], vec![0.0; 2])]);
        bad.push(Some(Value::Tensor(Tensor::from_vec(&[1], vec![3i64]))));
        assert!(run(&att(|_| {}), &bad, &cx(1)).unwrap().is_err());
        let e = run(&att(|a| a.q_num_heads = Some(2)), &qkv(), &cx(1)).unwrap().unwrap_err();
        assert!(e.message.contains("heads"), "{e}");
        let three_d = vec![t(&[1, 2, 4], vec![0.0; 8]), t(&[1, 2, 4], vec![0.0; 8]), t(&[1, 2, 4], vec![0.0; 8])];
        let e = run(&att(|_| {}), &three_d, &cx(1)).unwrap().unwrap_err();
        assert!(e.message.contains("q_num_heads"), "{e}");
    }

    use crate::ops::extra::run;
    use crate::ops::extra::testutil::cx;

    fn flex(attrs: Vec<(&str, Attr)>) -> Op {
        Op::Opaque(Opaque {
            domain: "ai.onnx.preview".into(),
            op_type: "FlexAttention".into(),
            attrs: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        })
    }

    fn flex_inputs() -> Vec<Option<Value>> {
        vec![
            t(&[1, 2, 2, 2], vec![-0.3, -0.0123, 0.2754, 0.5631, -0.1492, 0.1385, 0.4262, -0.2861]),
            t(&[1, 1, 3, 2], vec![-0.3, 0.1521, 0.6042, 0.0563, 0.5084, -0.0395]),
            t(&[1, 1, 3, 1], vec![-0.6, 0.0439, -0.3122]),
        ]
    }

    // Expected values from onnx.reference; there the bias is a constant in
    // the score_mod body, here it is captured from the outer graph.
    #[test]
    fn flex_attention_plain_and_with_modifiers() {
        use sharc_ir::{Graph, Subgraph, Type, UnaryOp};
        let y = run1(&flex(vec![]), flex_inputs());
        assert_close(&y, &[1, 2, 2, 1], &[-0.3098057, -0.2747766, -0.3004652, -0.2606353], 1e-6);

        let mut sm = Graph::new("score_mod");
        let s = sm.add_input("s", Type::Unknown);
        let b = sm.add_capture("bias", Type::Unknown);
        let o = sm.add_op(Op::Binary(sharc_ir::BinaryOp::Add), &[s, b], Type::Unknown);
        sm.add_output("o", o);
        let mut pm = Graph::new("prob_mod");
        let p = pm.add_input("p", Type::Unknown);
        // Every body of a node lists the same captures.
        pm.add_capture("bias", Type::Unknown);
        let o = pm.add_op(Op::Unary(UnaryOp::Neg), &[p], Type::Unknown);
        pm.add_output("o", o);
        let op = flex(vec![
            ("score_mod", Attr::Graph(Subgraph::new(sm))),
            ("prob_mod", Attr::Graph(Subgraph::new(pm))),
            ("scale", Attr::Float(0.5)),
        ]);
        let mut inputs = flex_inputs();
        inputs.push(t(&[1, 1, 1, 3], vec![0.0, -1.0, 0.5]));
        let y = run1(&op, inputs.clone());
        assert_close(&y, &[1, 2, 2, 1], &[0.3744747, 0.3576927, 0.3700249, 0.3487821], 1e-6);
        // Without the captured value the node is malformed.
        inputs.pop();
        assert!(run(&op, &inputs, &cx(1)).unwrap().is_err());
    }

    #[test]
    fn rotary_embedding_with_position_ids() {
        let op = Op::RotaryEmbedding(RotaryEmbedding { interleaved: false, num_heads: None, rotary_embedding_dim: 0 });
        let inputs = vec![
            t(&[1, 1, 2, 4], vec![-0.3, -0.0397, 0.2206, 0.4809, -0.2588, 0.0015, 0.2618, 0.5221]),
            t(&[2, 2], vec![0.2, 0.5151, 0.8302, 1.1453]),
            t(&[2, 2], vec![-0.1, 0.4069, -0.0862, 0.4207]),
            Some(Value::Tensor(Tensor::from_vec(&[1, 2], vec![1i64, 0]))),
        ];
        let want = [-0.2300443, -0.247783, 0.2090021, 0.5340729, -0.02558, -0.2116698, 0.07824, 0.269544];
        assert_close(&run1(&op, inputs.clone()), &[1, 1, 2, 4], &want, 1e-6);
        let mut bad = inputs;
        bad[3] = Some(Value::Tensor(Tensor::from_vec(&[1, 2], vec![2i64, 0])));
        assert!(run(&op, &bad, &cx(1)).unwrap().is_err());
    }

    #[test]
    fn rotary_embedding_interleaved_partial_3d() {
        let op =
            Op::RotaryEmbedding(RotaryEmbedding { interleaved: true, num_heads: Some(2), rotary_embedding_dim: 2 });
        let x = vec![
            -0.3, -0.1219, 0.0562, 0.2343, 0.4124, 0.5905, -0.2314, -0.0533, 0.1248, 0.3029, 0.481, 0.6591, -0.1628,
            0.0153, 0.1934, 0.3715,
        ];
        let inputs = vec![t(&[1, 2, 8], x), t(&[1, 2, 1], vec![0.4, 0.811]), t(&[1, 2, 1], vec![-0.4, 0.559])];
        let want = [
            -0.16876,
            0.07124001,
            0.0562,
            0.2343,
            0.40116,
            0.07123999,
            -0.2314,
            -0.0533,
            -0.06810829,
            0.3154151,
            0.481,
            0.6591,
            -0.1405835,
            -0.0785969,
            0.1934,
            0.3715,
        ];
        assert_close(&run1(&op, inputs), &[1, 2, 8], &want, 1e-6);
    }

    #[test]
    fn swiglu_values_and_shape_check() {
        let op = Op::SwiGLU(SwiGlu { alpha: 1.7 });
        let y = run1(&op, vec![t(&[4], vec![-2.0, -0.5, 0.0, 1.5]), t(&[4], vec![1.0, 2.0, 3.0, -1.0])]);
        assert_close(&y, &[4], &[-0.06459092, -0.2994328, 0.0, -1.39136], 1e-6);
        assert!(run(&op, &[t(&[4], vec![0.0; 4]), t(&[2, 2], vec![0.0; 4])], &cx(1)).unwrap().is_err());
    }

    #[test]
    fn linear_attention_gated_delta_and_linear() {
        let la = |rule: &str, scale| {
            Op::LinearAttention(LinearAttention {
                chunk_size: 64,
                kv_num_heads: 1,
                q_num_heads: 2,
                scale,
                update_rule: rule.to_string(),
            })
        };
        let q = t(&[1, 2, 4], vec![-0.3, -0.0123, 0.2754, 0.5631, -0.1492, 0.1385, 0.4262, -0.2861]);
        let k = t(&[1, 2, 2], vec![-0.3, 0.1521, 0.6042, 0.0563]);
        let v = t(&[1, 2, 2], vec![-0.6, 0.0439, -0.3122, 0.3317]);
        let past = t(&[1, 1, 2, 2], vec![-0.2, 0.6083, 0.4166, 0.2249]);
        let decay = t(&[1, 2, 1], vec![-0.1, -0.5]);
        let beta = t(&[1, 2, 1], vec![0.9, 0.3]);
        let out = run_n(&la("gated_delta", 0.0), vec![q.clone(), k.clone(), v.clone(), past, decay, beta], 2);
        let y = [-0.004801075, -0.1085429, 0.1134808, 0.1885561, 0.02158198, -0.02105082, -0.04894453, 0.07102098];
        assert_close(&out[0], &[1, 2, 4], &y, 1e-6);
        assert_close(&out[1], &[1, 1, 2, 2], &[-0.05228594, 0.3300262, 0.1640467, 0.1405744], 1e-6);
        let out = run_n(&la("linear", 0.5), vec![q.clone(), k.clone(), v.clone()], 2);
        let y =
            [-0.02643875, 0.001934436, -0.00090825, 6.645359e-05, -0.006893062, -0.01221272, 0.01372979, 0.03627492];
        assert_close(&out[0], &[1, 2, 4], &y, 1e-6);
        assert_close(&out[1], &[1, 1, 2, 2], &[-0.008631244, 0.1872431, -0.1088369, 0.0253519], 1e-6);
        // The gated rules need a decay input.
        assert!(run(&la("gated", 0.0), &[q, k, v], &cx(2)).unwrap().is_err());
    }

    #[test]
    fn causal_conv_with_state_and_silu() {
        let op = Op::CausalConvWithState(CausalConvWithState { activation: "silu".into() });
        let x = t(&[1, 2, 3], vec![-0.4, -0.0301, 0.3398, -0.2903, 0.0796, 0.4495]);
        let w = t(&[2, 1, 3], vec![-0.5, 0.0891, -0.3218, 0.2673, -0.1436, 0.4455]);
        let bias = t(&[2], vec![0.1, -0.2]);
        let past = t(&[1, 2, 2], vec![-0.3, -0.1493, 0.0014, 0.1521]);
        let out = run_n(&op, vec![x.clone(), w.clone(), bias, past], 2);
        let y = [0.2157246, 0.07986557, 0.1027925, -0.1449452, -0.03940935, -0.04241878];
        assert_close(&out[0], &[1, 2, 3], &y, 1e-6);
        assert_close(&out[1], &[1, 2, 2], &[-0.0301, 0.3398, 0.0796, 0.4495], 1e-7);
        // An input shorter than the kernel keeps zero padding in the state.
        let plain = Op::CausalConvWithState(CausalConvWithState { activation: "none".into() });
        let short = t(&[1, 2, 1], vec![-0.4, -0.2903]);
        let out = run_n(&plain, vec![short, w], 2);
        assert_close(&out[0], &[1, 2, 1], &[0.12872, -0.1293287], 1e-6);
        assert_close(&out[1], &[1, 2, 2], &[0.0, -0.4, 0.0, -0.2903], 1e-7);
    }
}

//! The recurrent layers `RNN`, `GRU` and `LSTM`.
//!
//! One driver runs all three: it reads the weights per direction, walks the
//! sequence forward or backward for each batch entry up to its
//! `sequence_lens` entry, and writes `Y`, `Y_h` (and `Y_c`) in either layout.
//! Steps past a batch entry's length leave zeros in `Y`, and its final state
//! is the one after its last valid step (the initial state when the length is
//! 0), as onnxruntime does; the ONNX reference ignores `sequence_lens`.
//! `clip` bounds every gate's pre-activation (peephole terms included) but
//! not the cell state passed to the LSTM's output activation, again as
//! onnxruntime does.

use super::common::{Floats, float_tensor, outputs, to_usize};
use crate::util::{opt_tensor_arg, tensor_arg};
use sharc_ir::op::{Recurrent, RnnDirection};
use sharc_ir::{EvalError, Value};

/// Which recurrent layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cell {
    Rnn,
    Gru,
    Lstm,
}

impl Cell {
    fn gates(self) -> usize {
        match self {
            Cell::Rnn => 1,
            Cell::Gru => 3,
            Cell::Lstm => 4,
        }
    }

    fn default_activations(self) -> &'static [&'static str] {
        match self {
            Cell::Rnn => &["Tanh"],
            Cell::Gru => &["Sigmoid", "Tanh"],
            Cell::Lstm => &["Sigmoid", "Tanh", "Tanh"],
        }
    }
}

/// An activation function with its parameters.
#[derive(Clone, Copy, Debug)]
enum Act {
    Relu,
    Tanh,
    Sigmoid,
    Affine(f64, f64),
    LeakyRelu(f64),
    ThresholdedRelu(f64),
    ScaledTanh(f64, f64),
    HardSigmoid(f64, f64),
    Elu(f64),
    Softsign,
    Softplus,
}

impl Act {
    /// Parses one activation, taking its alpha/beta from the shared lists
    /// (consumed in order, only by functions that use them) or the defaults
    /// of the ONNX op of the same name.
    fn parse(
        name: &str,
        alphas: &mut impl Iterator<Item = f32>,
        betas: &mut impl Iterator<Item = f32>,
    ) -> Result<Act, EvalError> {
        let mut alpha = |d: f64| alphas.next().map(|v| v as f64).unwrap_or(d);
        Ok(match name.to_ascii_lowercase().as_str() {
            "relu" => Act::Relu,
            "tanh" => Act::Tanh,
            "sigmoid" => Act::Sigmoid,
            "affine" => {
                let a = alpha(1.0);
                Act::Affine(a, betas.next().map(|v| v as f64).unwrap_or(0.0))
            }
            "leakyrelu" => Act::LeakyRelu(alpha(0.01)),
            "thresholdedrelu" => Act::ThresholdedRelu(alpha(1.0)),
            "scaledtanh" => {
                let a = alpha(1.0);
                Act::ScaledTanh(a, betas.next().map(|v| v as f64).unwrap_or(1.0))
            }
            "hardsigmoid" => {
                let a = alpha(0.2);
                Act::HardSigmoid(a, betas.next().map(|v| v as f64).unwrap_or(0.5))
            }
            "elu" => Act::Elu(alpha(1.0)),
            "softsign" => Act::Softsign,
            "softplus" => Act::Softplus,
            _ => return Err(EvalError::new(format!("unknown activation function '{name}'"))),
        })
    }

    fn apply(self, x: f64) -> f64 {
        match self {
            Act::Relu => x.max(0.0),
            Act::Tanh => x.tanh(),
            Act::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Act::Affine(a, b) => a * x + b,
            Act::LeakyRelu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a * x
                }
            }
            Act::ThresholdedRelu(a) => {
                if x > a {
                    x
                } else {
                    0.0
                }
            }
            Act::ScaledTanh(a, b) => a * (b * x).tanh(),
            Act::HardSigmoid(a, b) => (a * x + b).clamp(0.0, 1.0),
            Act::Elu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a * (x.exp() - 1.0)
                }
            }
            Act::Softsign => x / (1.0 + x.abs()),
            Act::Softplus => {
                // ln(1 + e^x) without overflow for large x.
                if x > 0.0 { x + (-x).exp().ln_1p() } else { x.exp().ln_1p() }
            }
        }
    }
}

/// The parameters of one direction.
struct Direction<'a> {
    w: &'a [f64],
    r: &'a [f64],
    /// Input and recurrence biases, `gates * hidden` each.
    wb: Vec<f64>,
    rb: Vec<f64>,
    /// Peepholes (LSTM): input, output, forget.
    p: Vec<f64>,
    acts: Vec<Act>,
    reverse: bool,
}

/// Runs `RNN`, `GRU` or `LSTM`.
pub(crate) fn recurrent(
    cell: Cell,
    a: &Recurrent,
    inputs: &[Option<Value>],
    num_outputs: usize,
) -> Result<Vec<Value>, EvalError> {
    let x_t = tensor_arg(inputs, 0, "X")?;
    let w_t = tensor_arg(inputs, 1, "W")?;
    let r_t = tensor_arg(inputs, 2, "R")?;
    let b_t = opt_tensor_arg(inputs, 3, "B")?;
    let lens_t = opt_tensor_arg(inputs, 4, "sequence_lens")?;
    let h0_t = opt_tensor_arg(inputs, 5, "initial_h")?;
    let c0_t = if cell == Cell::Lstm { opt_tensor_arg(inputs, 6, "initial_c")? } else { None };
    let p_t = if cell == Cell::Lstm { opt_tensor_arg(inputs, 7, "P")? } else { None };
    let dtype = x_t.dtype();
    let layout = match a.layout {
        0 => false,
        1 => true,
        l => return Err(EvalError::new(format!("layout must be 0 or 1, got {l}"))),
    };
    let x = Floats::read(x_t, "X")?;
    let [d0, d1, input] = x.shape[..] else {
        return Err(EvalError::new(format!("X must be 3-D, got shape {:?}", x.shape)));
    };
    let (seq, batch) = if layout { (d1, d0) } else { (d0, d1) };
    let dirs = if a.direction == RnnDirection::Bidirectional { 2 } else { 1 };
    let g = cell.gates();
    let w = Floats::read(w_t, "W")?;
    let r = Floats::read(r_t, "R")?;
    let hidden = match a.hidden_size {
        Some(h) => to_usize(h, "hidden_size")?,
        None => *r.shape.get(2).ok_or_else(|| EvalError::new(format!("R must be 3-D, got {:?}", r.shape)))?,
    };
    if w.shape != [dirs, g * hidden, input] {
        return Err(EvalError::new(format!("W has shape {:?}, expected [{dirs}, {}, {input}]", w.shape, g * hidden)));
    }
    if r.shape != [dirs, g * hidden, hidden] {
        return Err(EvalError::new(format!("R has shape {:?}, expected [{dirs}, {}, {hidden}]", r.shape, g * hidden)));
    }
    let bias = match b_t {
        Some(t) => {
            let f = Floats::read(t, "B")?;
            if f.shape != [dirs, 2 * g * hidden] {
                return Err(EvalError::new(format!(
                    "B has shape {:?}, expected [{dirs}, {}]",
                    f.shape,
                    2 * g * hidden
                )));
            }
            f.data
        }
        None => vec![0.0; dirs * 2 * g * hidden],
    };
    let peep = match p_t {
        Some(t) => {
            let f = Floats::read(t, "P")?;
            if f.shape != [dirs, 3 * hidden] {
                return Err(EvalError::new(format!("P has shape {:?}, expected [{dirs}, {}]", f.shape, 3 * hidden)));
            }
            f.data
        }
        None => vec![0.0; dirs * 3 * hidden],
    };
    let lens: Vec<usize> = match lens_t {
        Some(t) => {
            let v = t.to_i64_vec().ok_or_else(|| EvalError::new("sequence_lens must be an integer tensor"))?;
            if v.len() != batch {
                return Err(EvalError::new(format!("sequence_lens has {} entries for a batch of {batch}", v.len())));
            }
            v.into_iter()
                .map(|l| {
                    usize::try_from(l)
                        .ok()
                        .filter(|&l| l <= seq)
                        .ok_or_else(|| EvalError::new(format!("sequence length {l} is outside [0, {seq}]")))
                })
                .collect::<Result<_, _>>()?
        }
        None => vec![seq; batch],
    };
    // States are kept as [dir][batch][hidden] whatever the layout.
    let read_state = |t: Option<&sharc_ir::Tensor>, what: &str| -> Result<Vec<f64>, EvalError> {
        let Some(t) = t else { return Ok(vec![0.0; dirs * batch * hidden]) };
        let f = Floats::read(t, what)?;
        let want = if layout { [batch, dirs, hidden] } else { [dirs, batch, hidden] };
        if f.shape != want {
            return Err(EvalError::new(format!("{what} has shape {:?}, expected {want:?}", f.shape)));
        }
        if !layout {
            return Ok(f.data);
        }
        let mut out = vec![0.0; f.data.len()];
        for b in 0..batch {
            for d in 0..dirs {
                let src = (b * dirs + d) * hidden;
                let dst = (d * batch + b) * hidden;
                out[dst..dst + hidden].copy_from_slice(&f.data[src..src + hidden]);
            }
        }
        Ok(out)
    };
    let h0 = read_state(h0_t, "initial_h")?;
    let c0 = read_state(c0_t, "initial_c")?;

    let names: Vec<String> = match &a.activations {
        Some(v) => v.clone(),
        None => {
            let d = cell.default_activations();
            (0..dirs).flat_map(|_| d.iter().map(|s| s.to_string())).collect()
        }
    };
    let per_dir = cell.default_activations().len();
    if names.len() != per_dir * dirs {
        return Err(EvalError::new(format!(
            "{} activations given, {} expected ({per_dir} per direction)",
            names.len(),
            per_dir * dirs
        )));
    }
    let mut alphas = a.activation_alpha.clone().unwrap_or_default().into_iter();
    let mut betas = a.activation_beta.clone().unwrap_or_default().into_iter();
    let acts: Vec<Act> = names.iter().map(|n| Act::parse(n, &mut alphas, &mut betas)).collect::<Result<_, _>>()?;
    let clip = match a.clip {
        Some(c) if c <= 0.0 => return Err(EvalError::new(format!("clip must be positive, got {c}"))),
        c => c.map(|c| c as f64),
    };
    let linear_before_reset = a.linear_before_reset.unwrap_or(false);
    let input_forget = a.input_forget.unwrap_or(false);

    let gh = g * hidden;
    let mut y = vec![0.0; seq * dirs * batch * hidden];
    let mut yh = h0.clone();
    let mut yc = c0.clone();
    for d in 0..dirs {
        let dir = Direction {
            w: &w.data[d * gh * input..(d + 1) * gh * input],
            r: &r.data[d * gh * hidden..(d + 1) * gh * hidden],
            wb: bias[d * 2 * gh..d * 2 * gh + gh].to_vec(),
            rb: bias[d * 2 * gh + gh..(d + 1) * 2 * gh].to_vec(),
            p: peep[d * 3 * hidden..(d + 1) * 3 * hidden].to_vec(),
            acts: acts[d * per_dir..(d + 1) * per_dir].to_vec(),
            reverse: a.direction == RnnDirection::Reverse || d == 1,
        };
        for b in 0..batch {
            let mut h = h0[(d * batch + b) * hidden..(d * batch + b + 1) * hidden].to_vec();
            let mut c = c0[(d * batch + b) * hidden..(d * batch + b + 1) * hidden].to_vec();
            let len = lens[b];
            for step in 0..len {
                let t = if dir.reverse { len - 1 - step } else { step };
                let xo = if layout { (b * seq + t) * input } else { (t * batch + b) * input };
                let xt = &x.data[xo..xo + input];
                let (nh, nc) = step_cell(cell, &dir, xt, &h, &c, clip, linear_before_reset, input_forget);
                h = nh;
                c = nc;
                let yo = ((t * dirs + d) * batch + b) * hidden;
                y[yo..yo + hidden].copy_from_slice(&h);
            }
            yh[(d * batch + b) * hidden..(d * batch + b + 1) * hidden].copy_from_slice(&h);
            yc[(d * batch + b) * hidden..(d * batch + b + 1) * hidden].copy_from_slice(&c);
        }
    }

    let mut result = Vec::new();
    if layout {
        // [seq, dir, batch, hidden] -> [batch, seq, dir, hidden]
        let mut yl = vec![0.0; y.len()];
        for t in 0..seq {
            for d in 0..dirs {
                for b in 0..batch {
                    let src = ((t * dirs + d) * batch + b) * hidden;
                    let dst = ((b * seq + t) * dirs + d) * hidden;
                    yl[dst..dst + hidden].copy_from_slice(&y[src..src + hidden]);
                }
            }
        }
        let state = |s: Vec<f64>| {
            let mut o = vec![0.0; s.len()];
            for d in 0..dirs {
                for b in 0..batch {
                    let src = (d * batch + b) * hidden;
                    let dst = (b * dirs + d) * hidden;
                    o[dst..dst + hidden].copy_from_slice(&s[src..src + hidden]);
                }
            }
            o
        };
        result.push(float_tensor(dtype, &[batch, seq, dirs, hidden], yl)?);
        result.push(float_tensor(dtype, &[batch, dirs, hidden], state(yh))?);
        if cell == Cell::Lstm {
            result.push(float_tensor(dtype, &[batch, dirs, hidden], state(yc))?);
        }
    } else {
        result.push(float_tensor(dtype, &[seq, dirs, batch, hidden], y)?);
        result.push(float_tensor(dtype, &[dirs, batch, hidden], yh)?);
        if cell == Cell::Lstm {
            result.push(float_tensor(dtype, &[dirs, batch, hidden], yc)?);
        }
    }
    result.truncate(num_outputs.max(1));
    outputs(result)
}

/// `x * W^T + h * R^T` restricted to gate `k`'s rows, plus both biases.
fn gate_preact(dir: &Direction, k: usize, hidden: usize, x: &[f64], h: &[f64], out: &mut [f64], with_r: bool) {
    let input = x.len();
    for (j, o) in out.iter_mut().enumerate() {
        let row = k * hidden + j;
        let mut acc: f64 = dir.w[row * input..(row + 1) * input].iter().zip(x).map(|(a, b)| a * b).sum();
        acc += dir.wb[row];
        if with_r {
            acc += dir.r[row * hidden..(row + 1) * hidden].iter().zip(h).map(|(a, b)| a * b).sum::<f64>();
            acc += dir.rb[row];
        }
        *o = acc;
    }
}

/// One time step; returns the new hidden (and cell) state.
#[allow(clippy::too_many_arguments)]
fn step_cell(
    cell: Cell,
    dir: &Direction,
    x: &[f64],
    h: &[f64],
    c: &[f64],
    clip: Option<f64>,
    linear_before_reset: bool,
    input_forget: bool,
) -> (Vec<f64>, Vec<f64>) {
    let hidden = h.len();
    let clipped = |v: f64| match clip {
        Some(c) => v.clamp(-c, c),
        None => v,
    };
    let act = |i: usize, v: f64| dir.acts[i].apply(clipped(v));
    let mut buf = vec![0.0; hidden];
    match cell {
        Cell::Rnn => {
            gate_preact(dir, 0, hidden, x, h, &mut buf, true);
            (buf.iter().map(|&v| act(0, v)).collect(), c.to_vec())
        }
        Cell::Gru => {
            // Gate order: update (z), reset (r), hidden (h).
            let mut z = vec![0.0; hidden];
            let mut r = vec![0.0; hidden];
            gate_preact(dir, 0, hidden, x, h, &mut z, true);
            gate_preact(dir, 1, hidden, x, h, &mut r, true);
            z.iter_mut().for_each(|v| *v = act(0, *v));
            r.iter_mut().for_each(|v| *v = act(0, *v));
            // The candidate: x part and bias, then the recurrent part with the reset applied.
            gate_preact(dir, 2, hidden, x, h, &mut buf, false);
            let rh: Vec<f64> = r.iter().zip(h).map(|(a, b)| a * b).collect();
            let mut new_h = vec![0.0; hidden];
            for j in 0..hidden {
                let row = 2 * hidden + j;
                let rrow = &dir.r[row * hidden..(row + 1) * hidden];
                let rec = if linear_before_reset {
                    r[j] * (rrow.iter().zip(h).map(|(a, b)| a * b).sum::<f64>() + dir.rb[row])
                } else {
                    rrow.iter().zip(&rh).map(|(a, b)| a * b).sum::<f64>() + dir.rb[row]
                };
                let cand = act(1, buf[j] + rec);
                new_h[j] = (1.0 - z[j]) * cand + z[j] * h[j];
            }
            (new_h, c.to_vec())
        }
        Cell::Lstm => {
            // Gate order: input, output, forget, cell; peepholes: input, output, forget.
            let mut gi = vec![0.0; hidden];
            let mut go = vec![0.0; hidden];
            let mut gf = vec![0.0; hidden];
            let mut gc = vec![0.0; hidden];
            gate_preact(dir, 0, hidden, x, h, &mut gi, true);
            gate_preact(dir, 1, hidden, x, h, &mut go, true);
            gate_preact(dir, 2, hidden, x, h, &mut gf, true);
            gate_preact(dir, 3, hidden, x, h, &mut gc, true);
            let (pi, po, pf) = (&dir.p[..hidden], &dir.p[hidden..2 * hidden], &dir.p[2 * hidden..]);
            let mut new_c = vec![0.0; hidden];
            let mut new_h = vec![0.0; hidden];
            for j in 0..hidden {
                let i = act(0, gi[j] + pi[j] * c[j]);
                let f = if input_forget { 1.0 - i } else { act(0, gf[j] + pf[j] * c[j]) };
                let cand = act(1, gc[j]);
                new_c[j] = f * c[j] + i * cand;
                let o = act(0, go[j] + po[j] * new_c[j]);
                // The cell state itself is not clipped (as in onnxruntime).
                new_h[j] = o * dir.acts[2].apply(new_c[j]);
            }
            (new_h, new_c)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::extra::run;
    use crate::ops::extra::testutil::{assert_close, cx, f32s, run_n};
    use sharc_ir::{Op, Tensor};

    fn t(shape: &[usize], v: Vec<f64>) -> Option<Value> {
        Some(Value::Tensor(f32s(shape, v)))
    }

    fn attrs(direction: RnnDirection) -> Recurrent {
        Recurrent {
            activation_alpha: None,
            activation_beta: None,
            activations: None,
            clip: None,
            direction,
            hidden_size: Some(2),
            layout: 0,
            linear_before_reset: None,
            input_forget: None,
        }
    }

    fn x() -> Option<Value> {
        t(&[2, 2, 2], vec![-0.3, -0.0671, 0.1658, 0.3987, 0.6316, -0.1355, 0.0974, 0.3303])
    }

    // Expected values come from onnxruntime 1.23 (which implements
    // sequence_lens, clip, input_forget and activation parameters) and
    // onnx.reference where it covers the case.
    fn gru_inputs(lens: Option<Vec<i32>>) -> Vec<Option<Value>> {
        vec![
            x(),
            t(
                &[2, 6, 2],
                vec![
                    -0.5, -0.1027, 0.2946, -0.3081, 0.0892, 0.4865, -0.1162, 0.2811, -0.3216, 0.0757, 0.473, -0.1297,
                    0.2676, -0.3351, 0.0622, 0.4595, -0.1432, 0.2541, -0.3486, 0.0487, 0.446, -0.1567, 0.2406, -0.3621,
                ],
            ),
            t(
                &[2, 6, 2],
                vec![
                    -0.4, 0.0247, 0.4494, -0.1259, 0.2988, -0.2765, 0.1482, 0.5729, -0.0024, 0.4223, -0.153, 0.2717,
                    -0.3036, 0.1211, 0.5458, -0.0295, 0.3952, -0.1801, 0.2446, -0.3307, 0.094, 0.5187, -0.0566, 0.3681,
                ],
            ),
            t(
                &[2, 12],
                vec![
                    -0.2, 0.1151, 0.4302, 0.7453, 0.0604, 0.3755, 0.6906, 0.0057, 0.3208, 0.6359, -0.049, 0.2661,
                    0.5812, -0.1037, 0.2114, 0.5265, -0.1584, 0.1567, 0.4718, 0.7869, 0.102, 0.4171, 0.7322, 0.0473,
                ],
            ),
            lens.map(|l| Value::Tensor(Tensor::from_vec(&[2], l))),
            t(&[2, 2, 2], vec![-0.1, 0.4617, 0.0234, 0.5851, 0.1468, 0.7085, 0.2702, 0.8319]),
        ]
    }

    #[test]
    fn gru_bidirectional_linear_before_reset_with_lengths() {
        let mut a = attrs(RnnDirection::Bidirectional);
        a.linear_before_reset = Some(true);
        let out = run_n(&Op::GRU(a), gru_inputs(Some(vec![2, 1])), 2);
        let y = [
            0.01265066,
            0.4942192,
            0.08419359,
            0.6146679,
            0.2720201,
            0.5275406,
            0.332944,
            0.6810108,
            -0.01540471,
            0.6121918,
            0.0,
            0.0,
            0.2486716,
            0.6393085,
            0.0,
            0.0,
        ];
        assert_close(&out[0], &[2, 2, 2, 2], &y, 2e-6);
        let yh = [-0.01540471, 0.6121918, 0.08419359, 0.6146679, 0.2720201, 0.5275406, 0.332944, 0.6810108];
        assert_close(&out[1], &[2, 2, 2], &yh, 2e-6);
    }

    #[test]
    fn gru_bidirectional_default_reset() {
        let out = run_n(&Op::GRU(attrs(RnnDirection::Bidirectional)), gru_inputs(None), 2);
        let y = [
            0.01964118,
            0.5086813,
            0.09464917,
            0.6255953,
            0.3738367,
            0.536747,
            0.4732979,
            0.5736039,
            -0.0002413606,
            0.6286653,
            0.1488866,
            0.6394994,
            0.2869358,
            0.6438177,
            0.3872918,
            0.6838234,
        ];
        assert_close(&out[0], &[2, 2, 2, 2], &y, 2e-6);
    }

    fn lstm_inputs() -> Vec<Option<Value>> {
        vec![
            x(),
            t(
                &[1, 8, 2],
                vec![
                    -0.5, -0.1027, 0.2946, -0.3081, 0.0892, 0.4865, -0.1162, 0.2811, -0.3216, 0.0757, 0.473, -0.1297,
                    0.2676, -0.3351, 0.0622, 0.4595,
                ],
            ),
            t(
                &[1, 8, 2],
                vec![
                    -0.4, 0.0247, 0.4494, -0.1259, 0.2988, -0.2765, 0.1482, 0.5729, -0.0024, 0.4223, -0.153, 0.2717,
                    -0.3036, 0.1211, 0.5458, -0.0295,
                ],
            ),
            t(
                &[1, 16],
                vec![
                    -0.2, 0.1151, 0.4302, 0.7453, 0.0604, 0.3755, 0.6906, 0.0057, 0.3208, 0.6359, -0.049, 0.2661,
                    0.5812, -0.1037, 0.2114, 0.5265,
                ],
            ),
            None,
            t(&[1, 2, 2], vec![-0.1, 0.4617, 0.0234, 0.5851]),
            t(&[1, 2, 2], vec![-0.4, 0.3261, 0.0522, -0.2217]),
            t(&[1, 6], vec![-0.3, 0.2069, -0.2862, 0.2207, -0.2724, 0.2345]),
        ]
    }

    #[test]
    fn lstm_reverse_peepholes_clip() {
        let mut a = attrs(RnnDirection::Reverse);
        a.clip = Some(0.5);
        let out = run_n(&Op::LSTM(a), lstm_inputs(), 3);
        let y = [0.1344778, 0.3066149, 0.2261662, 0.225098, -0.01056143, 0.2682112, 0.1509307, 0.09636682];
        assert_close(&out[0], &[2, 1, 2, 2], &y, 2e-6);
        assert_close(&out[1], &[1, 2, 2], &y[..4], 2e-6);
        assert_close(&out[2], &[1, 2, 2], &[0.2529565, 0.5394695, 0.380824, 0.3787563], 2e-6);
    }

    #[test]
    fn lstm_input_forget() {
        let mut a = attrs(RnnDirection::Forward);
        a.input_forget = Some(true);
        let out = run_n(&Op::LSTM(a), lstm_inputs(), 3);
        let y = [0.146923, 0.2813049, 0.208874, 0.2492026, 0.2557782, 0.3449734, 0.2789909, 0.4034252];
        assert_close(&out[0], &[2, 1, 2, 2], &y, 2e-6);
        assert_close(&out[2], &[1, 2, 2], &[0.5058014, 0.4846271, 0.5050645, 0.5546571], 2e-6);
    }

    #[test]
    fn rnn_activation_with_alpha_and_batch_first_layout() {
        let mut a = attrs(RnnDirection::Forward);
        a.activations = Some(vec!["LeakyRelu".into()]);
        a.activation_alpha = Some(vec![0.2]);
        let w = t(&[1, 2, 2], vec![-0.5, -0.1027, 0.2946, -0.3081]);
        let r = t(&[1, 2, 2], vec![-0.4, 0.0247, 0.4494, -0.1259]);
        let out = run_n(&Op::RNN(a.clone()), vec![x(), w.clone(), r.clone()], 2);
        let y = [0.1568912, -0.0135413, -0.0247693, -0.01479896, -0.07299503, 0.3000287, -0.01461593, -0.0164679];
        assert_close(&out[0], &[2, 1, 2, 2], &y, 2e-6);
        assert_close(&out[1], &[1, 2, 2], &y[4..], 2e-6);
        // The same sequence batch-first: X transposed to [batch, seq, input].
        a.layout = 1;
        let xt = t(&[2, 2, 2], vec![-0.3, -0.0671, 0.6316, -0.1355, 0.1658, 0.3987, 0.0974, 0.3303]);
        let out = run_n(&Op::RNN(a), vec![xt, w, r], 2);
        let yl = [0.1568912, -0.0135413, -0.07299503, 0.3000287, -0.0247693, -0.01479896, -0.01461593, -0.0164679];
        assert_close(&out[0], &[2, 2, 1, 2], &yl, 2e-6);
        assert_close(&out[1], &[2, 1, 2], &[-0.07299503, 0.3000287, -0.01461593, -0.0164679], 2e-6);
    }

    #[test]
    fn recurrent_rejects_bad_shapes_and_names() {
        let w = t(&[1, 2, 3], vec![0.0; 6]);
        let r = t(&[1, 2, 2], vec![0.0; 4]);
        let e = run(&Op::RNN(attrs(RnnDirection::Forward)), &[x(), w, r.clone()], &cx(1)).unwrap().unwrap_err();
        assert!(e.message.contains("W has shape"), "{e}");
        let mut a = attrs(RnnDirection::Forward);
        a.activations = Some(vec!["Swoosh".into()]);
        let w = t(&[1, 2, 2], vec![0.0; 4]);
        let e = run(&Op::RNN(a), &[x(), w.clone(), r.clone()], &cx(1)).unwrap().unwrap_err();
        assert!(e.message.contains("Swoosh"), "{e}");
        let lens = Some(Value::Tensor(Tensor::from_vec(&[2], vec![3i32, 1])));
        let e = run(&Op::RNN(attrs(RnnDirection::Forward)), &[x(), w, r, None, lens], &cx(1)).unwrap().unwrap_err();
        assert!(e.message.contains("sequence length 3"), "{e}");
    }
}

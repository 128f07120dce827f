//! Signal processing: `DFT`, `STFT`, the window generators and
//! `MelWeightMatrix`.
//!
//! The transforms are plain O(n²) sums in `f64` with exact twiddle indices
//! (`k * n mod N`), which keeps them obviously right and accurate for any
//! length, not only powers of two.

use super::common::{Floats, checked_len, float_tensor, outputs, round_to, scalar_f64, scalar_i64, to_usize};
use crate::util::{normalize_axis, opt_tensor_arg, tensor_arg};
use sharc_ir::op::{Dft, MelWeightMatrix, Stft, Window};
use sharc_ir::{DType, EvalError, Value};
use std::f64::consts::PI;

/// `e^{sign * 2πi k / n}` for every `k < n`.
fn twiddles(n: usize, sign: f64) -> Vec<(f64, f64)> {
    (0..n)
        .map(|k| {
            let a = sign * 2.0 * PI * k as f64 / n as f64;
            (a.cos(), a.sin())
        })
        .collect()
}

/// The DFT of `x` (complex, length `n`): `y[k] = Σ x[t] e^{sign 2πi kt/n}`,
/// for `k < out_len`.
fn dft(x: &[(f64, f64)], tw: &[(f64, f64)], out_len: usize) -> Vec<(f64, f64)> {
    let n = tw.len();
    (0..out_len)
        .map(|k| {
            let mut acc = (0.0, 0.0);
            for (t, &(re, im)) in x.iter().enumerate() {
                let (c, s) = tw[(k * t) % n];
                acc.0 += re * c - im * s;
                acc.1 += re * s + im * c;
            }
            acc
        })
        .collect()
}

/// Runs `DFT` (opset 20: `dft_length` and `axis` are inputs).
pub(crate) fn dft_op(a: &Dft, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let x_t = tensor_arg(inputs, 0, "input")?;
    let x = Floats::read(x_t, "input")?;
    let rank = x.rank();
    if rank < 2 {
        return Err(EvalError::new(format!("input must have rank 2 or more, got shape {:?}", x.shape)));
    }
    let comps = x.shape[rank - 1];
    if comps != 1 && comps != 2 {
        return Err(EvalError::new(format!(
            "the last dim holds (real) or (real, imaginary) and must be 1 or 2, got {comps}"
        )));
    }
    let axis = match opt_tensor_arg(inputs, 2, "axis")? {
        Some(t) => scalar_i64(t, "axis")?,
        None => -2,
    };
    // The last dim is the complex one, so a valid axis is in [-r, -2] or [0, r-2].
    let axis = if axis == -1 || axis == rank as i64 - 1 {
        return Err(EvalError::new(format!("axis {axis} names the complex dimension")));
    } else {
        normalize_axis(axis, rank)?
    };
    let len = x.shape[axis];
    let n = match opt_tensor_arg(inputs, 1, "dft_length")? {
        Some(t) => {
            let v = scalar_i64(t, "dft_length")?;
            if v <= 0 {
                return Err(EvalError::new(format!("dft_length must be positive, got {v}")));
            }
            v as usize
        }
        None if a.inverse && a.onesided => {
            if len == 0 {
                return Err(EvalError::new("the inverse one-sided DFT needs a non-empty axis"));
            }
            2 * (len - 1)
        }
        None => len,
    };
    if n == 0 {
        return Err(EvalError::new("the DFT length is 0"));
    }
    let outer: usize = x.shape[..axis].iter().product();
    let inner: usize = x.shape[axis + 1..rank - 1].iter().product();
    let (out_len, out_comps) = match (a.inverse, a.onesided) {
        (false, true) => (n / 2 + 1, 2),
        (true, true) => (n, 1),
        _ => (n, 2),
    };
    // The inverse one-sided transform reads n/2+1 bins; the others read n samples.
    let in_len = if a.inverse && a.onesided { n / 2 + 1 } else { n };
    checked_len(&[outer, out_len, inner, out_comps])?;
    let tw = twiddles(n, if a.inverse { 1.0 } else { -1.0 });
    let mut out = vec![0.0; outer * out_len * inner * out_comps];
    let mut sig = vec![(0.0, 0.0); n];
    for o in 0..outer {
        for i in 0..inner {
            sig.iter_mut().for_each(|v| *v = (0.0, 0.0));
            for (t, v) in sig.iter_mut().enumerate().take(in_len.min(len)) {
                let base = ((o * len + t) * inner + i) * comps;
                *v = (x.data[base], if comps == 2 { x.data[base + 1] } else { 0.0 });
            }
            if a.inverse && a.onesided {
                // Rebuild the Hermitian spectrum; the real part of its inverse
                // is the signal (the imaginary parts of DC and Nyquist drop out).
                for k in in_len..n {
                    let (re, im) = sig[n - k];
                    sig[k] = (re, -im);
                }
            }
            let y = dft(&sig, &tw, out_len);
            let scale = if a.inverse { 1.0 / n as f64 } else { 1.0 };
            for (k, (re, im)) in y.into_iter().enumerate() {
                let base = ((o * out_len + k) * inner + i) * out_comps;
                out[base] = re * scale;
                if out_comps == 2 {
                    out[base + 1] = im * scale;
                }
            }
        }
    }
    let mut shape = x.shape.clone();
    shape[axis] = out_len;
    shape[rank - 1] = out_comps;
    outputs(vec![float_tensor(x.dtype, &shape, out)?])
}

/// Runs `STFT`: windowed DFTs of frames of the signal.
pub(crate) fn stft(a: &Stft, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let x = Floats::read(tensor_arg(inputs, 0, "signal")?, "signal")?;
    let [batch, len, comps] = x.shape[..] else {
        return Err(EvalError::new(format!("signal must be 3-D [batch, length, 1 or 2], got {:?}", x.shape)));
    };
    if comps != 1 && comps != 2 {
        return Err(EvalError::new(format!("signal's last dim must be 1 or 2, got {comps}")));
    }
    let step = scalar_i64(tensor_arg(inputs, 1, "frame_step")?, "frame_step")?;
    if step <= 0 {
        return Err(EvalError::new(format!("frame_step must be positive, got {step}")));
    }
    let step = step as usize;
    let window = opt_tensor_arg(inputs, 2, "window")?.map(|t| Floats::read(t, "window")).transpose()?;
    if let Some(w) = &window
        && w.rank() != 1
    {
        return Err(EvalError::new(format!("window must be 1-D, got {:?}", w.shape)));
    }
    let frame_len = match opt_tensor_arg(inputs, 3, "frame_length")? {
        Some(t) => {
            let f = to_usize(scalar_i64(t, "frame_length")?, "frame_length")?;
            if let Some(w) = &window
                && w.shape[0] != f
            {
                return Err(EvalError::new(format!("window length {} differs from frame_length {f}", w.shape[0])));
            }
            f
        }
        None => window.as_ref().map_or(len, |w| w.shape[0]),
    };
    if frame_len == 0 || frame_len > len {
        return Err(EvalError::new(format!("frame_length {frame_len} must be in [1, {len}]")));
    }
    let win = window.map_or_else(|| vec![1.0; frame_len], |w| w.data);
    let frames = (len - frame_len) / step + 1;
    let bins = if a.onesided { frame_len / 2 + 1 } else { frame_len };
    let tw = twiddles(frame_len, -1.0);
    let mut out = vec![0.0; batch * frames * bins * 2];
    let mut sig = vec![(0.0, 0.0); frame_len];
    for b in 0..batch {
        for f in 0..frames {
            for (t, s) in sig.iter_mut().enumerate() {
                let base = (b * len + f * step + t) * comps;
                let w = win[t];
                *s = (x.data[base] * w, if comps == 2 { x.data[base + 1] * w } else { 0.0 });
            }
            for (k, (re, im)) in dft(&sig, &tw, bins).into_iter().enumerate() {
                let o = ((b * frames + f) * bins + k) * 2;
                out[o] = re;
                out[o + 1] = im;
            }
        }
    }
    outputs(vec![float_tensor(x.dtype, &[batch, frames, bins, 2], out)?])
}

/// Which window `window_op` generates.
#[derive(Clone, Copy, Debug)]
pub(crate) enum WindowKind {
    Hann,
    Hamming,
    Blackman,
}

/// Runs `HannWindow`, `HammingWindow` or `BlackmanWindow`.
///
/// A symmetric window of length 1 would divide by zero; it is `[1]`, as in
/// PyTorch, whose window functions these ops follow.
pub(crate) fn window_op(kind: WindowKind, a: &Window, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let size = to_usize(scalar_i64(tensor_arg(inputs, 0, "size")?, "size")?, "size")?;
    let denom = if a.periodic { size } else { size.saturating_sub(1) } as f64;
    let data = (0..size)
        .map(|i| {
            if denom == 0.0 {
                return 1.0;
            }
            let x = 2.0 * PI * i as f64 / denom;
            match kind {
                // sin²(πn/N) = (1 - cos(2πn/N)) / 2
                WindowKind::Hann => (PI * i as f64 / denom).sin().powi(2),
                WindowKind::Hamming => 25.0 / 46.0 - (21.0 / 46.0) * x.cos(),
                WindowKind::Blackman => 0.42 - 0.5 * x.cos() + 0.08 * (2.0 * x).cos(),
            }
        })
        .collect();
    outputs(vec![float_tensor(a.output_datatype, &[size], data)?])
}

/// Runs `MelWeightMatrix`: triangular filters, equally spaced on the mel
/// scale, over the one-sided spectrum bins.
pub(crate) fn mel_weight_matrix(a: &MelWeightMatrix, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let mel_bins = to_usize(scalar_i64(tensor_arg(inputs, 0, "num_mel_bins")?, "num_mel_bins")?, "num_mel_bins")?;
    let dft_len = to_usize(scalar_i64(tensor_arg(inputs, 1, "dft_length")?, "dft_length")?, "dft_length")?;
    let rate = scalar_i64(tensor_arg(inputs, 2, "sample_rate")?, "sample_rate")?;
    if rate <= 0 {
        return Err(EvalError::new(format!("sample_rate must be positive, got {rate}")));
    }
    let lower_t = tensor_arg(inputs, 3, "lower_edge_hertz")?;
    let upper_t = tensor_arg(inputs, 4, "upper_edge_hertz")?;
    let lower = scalar_f64(lower_t, "lower_edge_hertz")?;
    let upper = scalar_f64(upper_t, "upper_edge_hertz")?;
    if !(0.0..=upper).contains(&lower) {
        return Err(EvalError::new(format!("need 0 <= lower_edge_hertz ({lower}) <= upper_edge_hertz ({upper})")));
    }
    // The edges' mel values are computed in the edges' own type, as the
    // reference does; the rest in f64.
    let mel = |hz: f64, dt: DType| {
        let r = |v| round_to(dt, v);
        r(2595.0 * r(r(hz / 700.0).ln_1p())) / 10f64.ln()
    };
    let low_mel = mel(lower, lower_t.dtype());
    let high_mel = mel(upper, upper_t.dtype());
    let step = (high_mel - low_mel) / (mel_bins + 2) as f64;
    let spec_bins = dft_len / 2 + 1;
    let edges: Vec<i64> = (0..mel_bins + 2)
        .map(|i| {
            let hz = 700.0 * ((i as f64 * step + low_mel) / 2595.0 * 10f64.ln()).exp_m1();
            (((dft_len + 1) as f64 * hz) / rate as f64).floor() as i64
        })
        .collect();
    if let Some(bad) = edges.iter().find(|&&e| e < 0 || e as usize >= spec_bins) {
        return Err(EvalError::new(format!(
            "a filter edge falls on bin {bad}, outside the {spec_bins} spectrum bins (is upper_edge_hertz above the Nyquist frequency?)"
        )));
    }
    let mut out = vec![0.0; spec_bins * mel_bins];
    for i in 0..mel_bins {
        let (lo, center, hi) = (edges[i] as usize, edges[i + 1] as usize, edges[i + 2] as usize);
        if center == lo {
            out[center * mel_bins + i] = 1.0;
        } else {
            for j in lo..=center {
                out[j * mel_bins + i] = (j - lo) as f64 / (center - lo) as f64;
            }
        }
        if hi > center {
            for j in center..hi {
                out[j * mel_bins + i] = (hi - j) as f64 / (hi - center) as f64;
            }
        }
    }
    outputs(vec![float_tensor(a.output_datatype, &[spec_bins, mel_bins], out)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::extra::run;
    use crate::ops::extra::testutil::{assert_close, cx, f32s, run1};
    use sharc_ir::{Op, Tensor};

    fn t(shape: &[usize], v: Vec<f64>) -> Option<Value> {
        Some(Value::Tensor(f32s(shape, v)))
    }

    fn i(v: i64) -> Option<Value> {
        Some(Value::Tensor(Tensor::scalar(v)))
    }

    fn dft(inverse: bool, onesided: bool) -> Op {
        Op::DFT(Dft { inverse, onesided })
    }

    const REAL: [f64; 6] = [-0.2, 0.2247, 0.6494, 0.0741, 0.4988, -0.0765];
    const SPEC: [f64; 8] = [1.1705, 0.0, -0.7741, -0.3912703, -0.7741, -0.1304234, 0.7259, 0.0];

    // Expected values from onnx.reference (numpy.fft).
    #[test]
    fn dft_complex_forward_and_inverse() {
        let x = vec![-0.4, -0.0849, 0.2302, 0.5453, -0.1396, 0.1755, 0.4906, -0.1943, 0.1208, 0.4359];
        let y = [
            0.302,
            0.8775,
            -0.2540914,
            0.4998937,
            -0.862897,
            -1.548177,
            -0.288103,
            -0.2208575,
            -0.8969086,
            -0.03285969,
        ];
        assert_close(&run1(&dft(false, false), vec![t(&[1, 5, 2], x.clone())]), &[1, 5, 2], &y, 1e-6);
        let inv = [
            0.06040001,
            0.1755,
            -0.1793817,
            -0.006571934,
            -0.0576206,
            -0.0441715,
            -0.1725794,
            -0.3096353,
            -0.05081829,
            0.09997874,
        ];
        assert_close(&run1(&dft(true, false), vec![t(&[1, 5, 2], x)]), &[1, 5, 2], &inv, 1e-6);
    }

    #[test]
    fn dft_real_onesided_padding_and_inverse() {
        let y = run1(&dft(false, true), vec![t(&[1, 6, 1], REAL.to_vec())]);
        assert_close(&y, &[1, 4, 2], &SPEC, 1e-6);
        let y = run1(&dft(false, true), vec![t(&[1, 6, 1], REAL.to_vec()), i(8)]);
        let padded = [1.1705, 0.0, -0.5382161, -0.9147772, -0.3506, -0.0741, -0.8593839, 0.3840228, 0.7259, 0.0];
        assert_close(&y, &[1, 5, 2], &padded, 1e-6);
        // The inverse of the one-sided spectrum gives back the real signal.
        let back = run1(&dft(true, true), vec![t(&[1, 4, 2], SPEC.to_vec())]);
        assert_close(&back, &[1, 6, 1], &REAL, 1e-6);
    }

    #[test]
    fn dft_on_another_axis_and_bad_axis() {
        let x = t(&[2, 3, 1], vec![-0.3, -0.0397, 0.2206, 0.4809, -0.2588, 0.0015]);
        let y = run1(&dft(false, false), vec![x.clone(), None, i(0)]);
        let want = [0.1809, 0.0, -0.2985, 0.0, 0.2221, 0.0, -0.7809, 0.0, 0.2191, 0.0, 0.2191, 0.0];
        assert_close(&y, &[2, 3, 2], &want, 1e-6);
        let e = run(&dft(false, false), &[x.clone(), None, i(-1)], &cx(1)).unwrap().unwrap_err();
        assert!(e.message.contains("complex"), "{e}");
        let e = run(&dft(false, false), &[x, i(1 << 62), i(0)], &cx(1)).unwrap().unwrap_err();
        assert!(e.message.contains("too many"), "{e}");
    }

    #[test]
    fn stft_with_window() {
        let s = vec![-0.3, 0.0973, 0.4946, -0.1081, 0.2892, 0.6865, 0.0838, 0.4811, -0.1216, 0.2757];
        let op = Op::STFT(Stft { onesided: true });
        let y = run1(&op, vec![t(&[1, 10, 1], s.clone()), i(3), t(&[4], vec![0.5, 1.0, 0.25, 0.75])]);
        let want = [
            -0.010125,
            0.0,
            -0.27365,
            -0.178375,
            -0.04257501,
            0.0,
            0.469625,
            0.0,
            -0.225675,
            -0.22635,
            -0.234475,
            0.0,
            0.699375,
            0.0,
            0.0723,
            -0.274325,
            -0.676375,
            0.0,
        ];
        assert_close(&y, &[1, 3, 3, 2], &want, 1e-6);
        let e = run(&op, &[t(&[1, 10, 1], s), i(3), t(&[4], vec![1.0; 4]), i(5)], &cx(1)).unwrap().unwrap_err();
        assert!(e.message.contains("differs"), "{e}");
    }

    #[test]
    fn windows_periodic_and_symmetric() {
        let w = |kind, periodic| {
            let a = Window { output_datatype: DType::F64, periodic };
            let op = match kind {
                WindowKind::Hann => Op::HannWindow(a),
                WindowKind::Hamming => Op::HammingWindow(a),
                WindowKind::Blackman => Op::BlackmanWindow(a),
            };
            let y = run1(&op, vec![i(5)]);
            assert_eq!(y.dtype(), DType::F64);
            y
        };
        let hann_p = [0.0, 0.3454915, 0.9045085, 0.9045085, 0.3454915];
        assert_close(&w(WindowKind::Hann, true), &[5], &hann_p, 1e-7);
        assert_close(&w(WindowKind::Hann, false), &[5], &[0.0, 0.5, 1.0, 0.5, 0.0], 1e-7);
        let ham = [0.08695652, 0.4024053, 0.9128121, 0.9128121, 0.4024053];
        assert_close(&w(WindowKind::Hamming, true), &[5], &ham, 1e-7);
        assert_close(&w(WindowKind::Blackman, false), &[5], &[0.0, 0.34, 1.0, 0.34, 0.0], 1e-7);
        let bl = [0.0, 0.2007701, 0.8492299, 0.8492299, 0.2007701];
        assert_close(&w(WindowKind::Blackman, true), &[5], &bl, 1e-7);
    }

    #[test]
    fn mel_weight_matrix_triangles() {
        let op = Op::MelWeightMatrix(MelWeightMatrix { output_datatype: DType::F32 });
        let args = |upper: f64| vec![i(3), i(16), i(8000), t(&[], vec![100.0]), t(&[], vec![upper])];
        let mut want = vec![0.0; 27];
        for (k, v) in [(0, 1.0), (4, 1.0), (7, 0.5), (8, 0.5), (11, 1.0)] {
            want[k] = v;
        }
        assert_close(&run1(&op, args(3500.0)), &[9, 3], &want, 0.0);
        // Beyond the Nyquist frequency the filters leave the spectrum.
        assert!(run(&op, &args(9000.0), &cx(1)).unwrap().is_err());
    }
}

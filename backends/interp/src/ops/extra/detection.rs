//! Object-detection ops: `RoiAlign` and `NonMaxSuppression`.

use super::common::{Floats, float_tensor, outputs, round_to, scalar_f64, scalar_i64, to_usize};
use crate::util::{opt_tensor_arg, tensor_arg};
use sharc_ir::op::{NonMaxSuppression, RoiAlign};
use sharc_ir::{EvalError, Tensor, Value};

/// One bilinear sample: four positions in a feature map and their weights.
#[derive(Clone, Copy, Default)]
struct Sample {
    pos: [usize; 4],
    w: [f64; 4],
}

/// The bilinear sample at `(y, x)` of an `height x width` map. Points more
/// than one pixel outside the map contribute nothing; points just outside
/// are clamped onto the border.
fn bilinear(height: usize, width: usize, y: f64, x: f64) -> Sample {
    let (h, w) = (height as f64, width as f64);
    if y < -1.0 || y > h || x < -1.0 || x > w || height == 0 || width == 0 {
        return Sample::default();
    }
    let (mut y, mut x) = (y.max(0.0), x.max(0.0));
    let (mut y_low, mut x_low) = (y as usize, x as usize);
    let y_high = if y_low >= height - 1 {
        y_low = height - 1;
        y = y_low as f64;
        y_low
    } else {
        y_low + 1
    };
    let x_high = if x_low >= width - 1 {
        x_low = width - 1;
        x = x_low as f64;
        x_low
    } else {
        x_low + 1
    };
    let (ly, lx) = (y - y_low as f64, x - x_low as f64);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    Sample {
        pos: [y_low * width + x_low, y_low * width + x_high, y_high * width + x_low, y_high * width + x_high],
        w: [hy * hx, hy * lx, ly * hx, ly * lx],
    }
}

/// Runs `RoiAlign`: average or max of bilinear samples over a grid in each
/// output bin of each region.
pub(crate) fn roi_align(a: &RoiAlign, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let x = Floats::read(tensor_arg(inputs, 0, "X")?, "X")?;
    let rois = Floats::read(tensor_arg(inputs, 1, "rois")?, "rois")?;
    let idx_t = tensor_arg(inputs, 2, "batch_indices")?;
    let batch_idx = idx_t.to_i64_vec().ok_or_else(|| EvalError::new("batch_indices must be an integer tensor"))?;
    let [n, channels, height, width] = x.shape[..] else {
        return Err(EvalError::new(format!("X must be 4-D (N, C, H, W), got {:?}", x.shape)));
    };
    let num_rois = batch_idx.len();
    if rois.shape != [num_rois, 4] {
        return Err(EvalError::new(format!("rois has shape {:?}, expected [{num_rois}, 4]", rois.shape)));
    }
    let half_pixel = match a.coordinate_transformation_mode.as_str() {
        "half_pixel" => true,
        "output_half_pixel" => false,
        m => return Err(EvalError::new(format!("unknown coordinate_transformation_mode '{m}'"))),
    };
    let max_mode = match a.mode.as_str() {
        "avg" => false,
        "max" => true,
        m => return Err(EvalError::new(format!("unknown mode '{m}' (avg or max)"))),
    };
    let (ph_n, pw_n) = (to_usize(a.output_height, "output_height")?, to_usize(a.output_width, "output_width")?);
    if ph_n == 0 || pw_n == 0 {
        return Err(EvalError::new("output_height and output_width must be positive"));
    }
    let scale = a.spatial_scale as f64;
    let offset = if half_pixel { 0.5 } else { 0.0 };
    let mut out = vec![0.0; num_rois * channels * ph_n * pw_n];
    for r in 0..num_rois {
        let b = usize::try_from(batch_idx[r])
            .ok()
            .filter(|&b| b < n)
            .ok_or_else(|| EvalError::new(format!("batch index {} is outside [0, {n})", batch_idx[r])))?;
        let roi = &rois.data[r * 4..r * 4 + 4];
        let (start_w, start_h) = (roi[0] * scale - offset, roi[1] * scale - offset);
        let (end_w, end_h) = (roi[2] * scale - offset, roi[3] * scale - offset);
        let (mut roi_w, mut roi_h) = (end_w - start_w, end_h - start_h);
        if !half_pixel {
            // Malformed regions are forced to 1x1 in the legacy mode.
            roi_w = roi_w.max(1.0);
            roi_h = roi_h.max(1.0);
        }
        let (bin_h, bin_w) = (roi_h / ph_n as f64, roi_w / pw_n as f64);
        let grid = |extent: f64, bins: usize| -> usize {
            if a.sampling_ratio > 0 {
                a.sampling_ratio as usize
            } else {
                (extent / bins as f64).ceil().max(0.0) as usize
            }
        };
        let (grid_h, grid_w) = (grid(roi_h, ph_n), grid(roi_w, pw_n));
        let count = (grid_h * grid_w).max(1) as f64;
        // The samples are shared by all channels.
        let mut samples = Vec::with_capacity(ph_n * pw_n * grid_h * grid_w);
        for ph in 0..ph_n {
            for pw in 0..pw_n {
                for iy in 0..grid_h {
                    let y = start_h + ph as f64 * bin_h + (iy as f64 + 0.5) * bin_h / grid_h as f64;
                    for ix in 0..grid_w {
                        let xx = start_w + pw as f64 * bin_w + (ix as f64 + 0.5) * bin_w / grid_w as f64;
                        samples.push(bilinear(height, width, y, xx));
                    }
                }
            }
        }
        let per_bin = grid_h * grid_w;
        for c in 0..channels {
            let map = &x.data[(b * channels + c) * height * width..(b * channels + c + 1) * height * width];
            for bin in 0..ph_n * pw_n {
                let bin_samples = &samples[bin * per_bin..(bin + 1) * per_bin];
                let v = if max_mode {
                    // The max of the weighted corners, as onnxruntime defines max mode.
                    bin_samples
                        .iter()
                        .map(|s| {
                            (0..4)
                                .map(|k| s.w[k] * map.get(s.pos[k]).copied().unwrap_or(0.0))
                                .fold(f64::NEG_INFINITY, f64::max)
                        })
                        .reduce(f64::max)
                        .unwrap_or(0.0)
                } else {
                    bin_samples
                        .iter()
                        .map(|s| (0..4).map(|k| s.w[k] * map.get(s.pos[k]).copied().unwrap_or(0.0)).sum::<f64>())
                        .sum::<f64>()
                        / count
                };
                out[(r * channels + c) * ph_n * pw_n + bin] = v;
            }
        }
    }
    outputs(vec![float_tensor(x.dtype, &[num_rois, channels, ph_n, pw_n], out)?])
}

/// Runs `NonMaxSuppression`: per batch and class, greedily keeps the best
/// scoring boxes that do not overlap an already kept box by more than the
/// IoU threshold. Box arithmetic is rounded to the boxes' type, so ties at
/// the threshold resolve as in a same-precision implementation.
pub(crate) fn non_max_suppression(a: &NonMaxSuppression, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let boxes_t = tensor_arg(inputs, 0, "boxes")?;
    let boxes = Floats::read(boxes_t, "boxes")?;
    let scores = Floats::read(tensor_arg(inputs, 1, "scores")?, "scores")?;
    let max_out = match opt_tensor_arg(inputs, 2, "max_output_boxes_per_class")? {
        Some(t) if !t.is_empty() => scalar_i64(t, "max_output_boxes_per_class")?.max(0) as usize,
        _ => 0,
    };
    let iou_threshold = match opt_tensor_arg(inputs, 3, "iou_threshold")? {
        Some(t) if !t.is_empty() => scalar_f64(t, "iou_threshold")?,
        _ => 0.0,
    };
    if !(0.0..=1.0).contains(&iou_threshold) {
        return Err(EvalError::new(format!("iou_threshold must be in [0, 1], got {iou_threshold}")));
    }
    let score_threshold = match opt_tensor_arg(inputs, 4, "score_threshold")? {
        Some(t) if !t.is_empty() => Some(scalar_f64(t, "score_threshold")?),
        _ => None,
    };
    let center = match a.center_point_box {
        0 => false,
        1 => true,
        v => return Err(EvalError::new(format!("center_point_box must be 0 or 1, got {v}"))),
    };
    let [batches, num_boxes, 4] = boxes.shape[..] else {
        return Err(EvalError::new(format!("boxes must have shape [batches, boxes, 4], got {:?}", boxes.shape)));
    };
    let [sb, classes, sn] = scores.shape[..] else {
        return Err(EvalError::new(format!("scores must be 3-D, got {:?}", scores.shape)));
    };
    if sb != batches || sn != num_boxes {
        return Err(EvalError::new(format!("scores {:?} do not match boxes {:?}", scores.shape, boxes.shape)));
    }
    let r = |v: f64| round_to(boxes_t.dtype(), v);
    // (x_min, x_max, y_min, y_max) of a box.
    let extent = |b: &[f64]| -> [f64; 4] {
        if center {
            let (hw, hh) = (r(b[2] / 2.0), r(b[3] / 2.0));
            [r(b[0] - hw), r(b[0] + hw), r(b[1] - hh), r(b[1] + hh)]
        } else {
            [b[1].min(b[3]), b[1].max(b[3]), b[0].min(b[2]), b[0].max(b[2])]
        }
    };
    let suppresses = |p: [f64; 4], q: [f64; 4]| -> bool {
        let (ix0, ix1) = (p[0].max(q[0]), p[1].min(q[1]));
        let (iy0, iy1) = (p[2].max(q[2]), p[3].min(q[3]));
        if ix1 <= ix0 || iy1 <= iy0 {
            return false;
        }
        let inter = r(r(ix1 - ix0) * r(iy1 - iy0));
        let a1 = r(r(p[1] - p[0]) * r(p[3] - p[2]));
        let a2 = r(r(q[1] - q[0]) * r(q[3] - q[2]));
        let union = r(r(a1 + a2) - inter);
        if inter <= 0.0 || a1 <= 0.0 || a2 <= 0.0 || union <= 0.0 {
            return false;
        }
        r(inter / union) > iou_threshold
    };
    let mut selected: Vec<i64> = Vec::new();
    for b in 0..batches {
        let ext: Vec<[f64; 4]> =
            (0..num_boxes).map(|i| extent(&boxes.data[(b * num_boxes + i) * 4..(b * num_boxes + i + 1) * 4])).collect();
        for c in 0..classes {
            let s = &scores.data[(b * classes + c) * num_boxes..(b * classes + c + 1) * num_boxes];
            let mut cand: Vec<usize> = (0..num_boxes).filter(|&i| score_threshold.is_none_or(|t| s[i] > t)).collect();
            // Highest score first; equal scores keep the lower index first.
            cand.sort_by(|&i, &j| s[j].total_cmp(&s[i]).then(i.cmp(&j)));
            let mut kept: Vec<usize> = Vec::new();
            for i in cand {
                if kept.len() >= max_out {
                    break;
                }
                if kept.iter().all(|&k| !suppresses(ext[i], ext[k])) {
                    kept.push(i);
                    selected.extend([b as i64, c as i64, i as i64]);
                }
            }
        }
    }
    let n = selected.len() / 3;
    outputs(vec![Tensor::from_vec(&[n, 3], selected)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::extra::run;
    use crate::ops::extra::testutil::{assert_close, cx, f32s, run1};
    use sharc_ir::Op;

    fn roi_inputs() -> Vec<Option<Value>> {
        let x: Vec<f64> = (0..40).map(|i| i as f64 * 0.5 - 3.0).collect();
        vec![
            Some(Value::Tensor(f32s(&[2, 1, 4, 5], x))),
            Some(Value::Tensor(f32s(&[3, 4], vec![0.5, 0.5, 3.2, 2.7, -1.0, 1.0, 2.0, 5.5, 1.0, 1.0, 1.0, 1.0]))),
            Some(Value::Tensor(Tensor::from_vec(&[3], vec![1i64, 0, 0]))),
        ]
    }

    fn roi(mode: &str, ctm: &str, oh: i64, ow: i64, sr: i64, scale: f32) -> Op {
        Op::RoiAlign(RoiAlign {
            coordinate_transformation_mode: ctm.into(),
            mode: mode.into(),
            output_height: oh,
            output_width: ow,
            sampling_ratio: sr,
            spatial_scale: scale,
        })
    }

    // Expected values from onnx.reference.
    #[test]
    fn roi_align_modes() {
        let cases: [(&str, &str, [f64; 12]); 4] = [
            ("avg", "half_pixel", [8.7125, 9.387501, 11.4625, 12.1375, 0.53125, 1.4375, 1.5, 3.25, 0.0, 0.0, 0.0, 0.0]),
            (
                "avg",
                "output_half_pixel",
                [10.2125, 10.8875, 12.9625, 13.6375, 2.34375, 2.9375, 1.510417, 1.708333, 0.75, 1.0, 2.0, 2.25],
            ),
            (
                "max",
                "half_pixel",
                [8.146875, 5.955469, 11.41797, 8.267188, 1.6875, 1.640625, 4.5, 4.375, 0.0, 0.0, 0.0, 0.0],
            ),
            (
                "max",
                "output_half_pixel",
                [
                    6.490624, 7.352814, 9.160156, 10.18828, 3.9375, 3.828125, 4.5, 4.375, 0.46875, 0.5625, 1.40625,
                    1.6875,
                ],
            ),
        ];
        for (mode, ctm, want) in cases {
            let y = run1(&roi(mode, ctm, 2, 2, 0, 1.0), roi_inputs());
            assert_close(&y, &[3, 1, 2, 2], &want, 1e-5);
        }
        let y = run1(&roi("avg", "half_pixel", 1, 3, 2, 0.5), roi_inputs());
        let want = [7.771875, 7.9625, 8.1875, -0.1875, -0.1875, -0.0625, -3.0, -3.0, -3.0];
        assert_close(&y, &[3, 1, 1, 3], &want, 1e-5);
    }

    #[test]
    fn roi_align_rejects_bad_batch_index() {
        let mut inputs = roi_inputs();
        inputs[2] = Some(Value::Tensor(Tensor::from_vec(&[3], vec![2i64, 0, 0])));
        let e = run(&roi("avg", "half_pixel", 1, 1, 0, 1.0), &inputs, &cx(1)).unwrap().unwrap_err();
        assert!(e.message.contains("batch index 2"), "{e}");
    }

    fn nms(center: i64, inputs: Vec<Option<Value>>) -> Vec<i64> {
        let op = Op::NonMaxSuppression(NonMaxSuppression { center_point_box: center });
        run1(&op, inputs).to_i64_vec().unwrap()
    }

    #[test]
    fn nms_corners_thresholds_and_limits() {
        let boxes = vec![
            0.0, 0.0, 1.0, 1.0, 0.0, 0.1, 1.0, 1.1, 0.0, -0.1, 1.0, 0.9, 0.0, 10.0, 1.0, 11.0, 1.0, 1.0, 0.0, 0.0, 0.0,
            100.0, 1.0, 101.0,
        ];
        let scores = vec![0.9, 0.75, 0.6, 0.95, 0.5, 0.3, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
        let inputs = vec![
            Some(Value::Tensor(f32s(&[1, 6, 4], boxes))),
            Some(Value::Tensor(f32s(&[1, 2, 6], scores))),
            Some(Value::Tensor(Tensor::from_vec(&[1], vec![3i64]))),
            Some(Value::Tensor(f32s(&[1], vec![0.5]))),
            Some(Value::Tensor(f32s(&[1], vec![0.25]))),
        ];
        // The flipped box 4 equals box 0 and is suppressed by it.
        assert_eq!(nms(0, inputs.clone()), vec![0, 0, 3, 0, 0, 0, 0, 0, 5, 0, 1, 5, 0, 1, 4, 0, 1, 3]);
        // Without max_output_boxes_per_class nothing is selected.
        assert_eq!(nms(0, inputs[..2].to_vec()), Vec::<i64>::new());
    }

    #[test]
    fn nms_center_point_boxes() {
        let inputs = vec![
            Some(Value::Tensor(f32s(&[1, 3, 4], vec![0.5, 0.5, 1.0, 1.0, 0.6, 0.5, 1.0, 1.0, 5.0, 5.0, 2.0, 2.0]))),
            Some(Value::Tensor(f32s(&[1, 1, 3], vec![0.5, 0.6, 0.7]))),
            Some(Value::Tensor(Tensor::from_vec(&[1], vec![10i64]))),
            Some(Value::Tensor(f32s(&[1], vec![0.5]))),
        ];
        assert_eq!(nms(1, inputs), vec![0, 0, 2, 0, 0, 1]);
    }
}

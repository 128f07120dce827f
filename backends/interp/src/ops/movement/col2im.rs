//! Col2Im: sums column blocks back into an image (the adjoint of im2col),
//! for any number of spatial dims.

use super::{checked_numel, from_f64, real_values, strides, to_sizes, unravel};
use crate::util::{i64_values, single, tensor_arg};
use sharc_ir::op::Col2Im;
use sharc_ir::{EvalError, Value};

fn attr_or(v: &Option<Vec<i64>>, n: usize, default: i64, what: &str) -> Result<Vec<i64>, EvalError> {
    match v {
        None => Ok(vec![default; n]),
        Some(v) if v.len() == n => Ok(v.clone()),
        Some(v) => Err(EvalError::new(format!("{what} has {} entries, expected {n}", v.len()))),
    }
}

pub(super) fn col2im(a: &Col2Im, inputs: &[Option<Value>]) -> Result<Vec<Value>, EvalError> {
    let x = tensor_arg(inputs, 0, "input")?;
    let image = to_sizes(&i64_values(tensor_arg(inputs, 1, "image_shape")?, "image_shape")?, "image_shape")?;
    let block = to_sizes(&i64_values(tensor_arg(inputs, 2, "block_shape")?, "block_shape")?, "block_shape")?;
    let nd = image.len();
    if block.len() != nd || nd == 0 {
        return Err(EvalError::new(format!(
            "image_shape {image:?} and block_shape {block:?} must have one entry per spatial dim"
        )));
    }
    let dil = attr_or(&a.dilations, nd, 1, "dilations")?;
    let strides_attr = attr_or(&a.strides, nd, 1, "strides")?;
    let pads = attr_or(&a.pads, 2 * nd, 0, "pads")?;
    if dil.iter().chain(&strides_attr).any(|&v| v <= 0) || pads.iter().any(|&p| p < 0) {
        return Err(EvalError::new("dilations and strides must be positive and pads non-negative"));
    }
    let &[n, cols, l] = x.shape() else {
        return Err(EvalError::new(format!("input must have shape (N, C*prod(block_shape), L), got {:?}", x.shape())));
    };
    let kernel = checked_numel(&block)?;
    if kernel == 0 || cols % kernel != 0 {
        return Err(EvalError::new(format!("input dim 1 ({cols}) is not a multiple of the block size {kernel}")));
    }
    let c = cols / kernel;
    // Number of block positions along each spatial dim.
    let mut n_blocks = Vec::with_capacity(nd);
    for d in 0..nd {
        let span = dil[d] * (block[d] as i64 - 1) + 1;
        let nb = (image[d] as i64 + pads[d] + pads[d + nd] - span).div_euclid(strides_attr[d]) + 1;
        if nb <= 0 {
            return Err(EvalError::new(format!("the block does not fit the padded image along spatial dim {d}")));
        }
        n_blocks.push(nb as usize);
    }
    if checked_numel(&n_blocks)? != l {
        return Err(EvalError::new(format!(
            "input dim 2 is {l} but the image holds {n_blocks:?} = {} block positions",
            n_blocks.iter().product::<usize>()
        )));
    }
    let src = real_values(x, "input")?;
    let image_size = checked_numel(&image)?;
    let mut out = vec![0.0f64; n * c * image_size];
    let ist = strides(&image);
    let (mut k_idx, mut b_idx) = (vec![0; nd], vec![0; nd]);
    for batch in 0..n {
        for ch in 0..c {
            for k in 0..kernel {
                unravel(k, &block, &mut k_idx);
                let row = batch * cols * l + (ch * kernel + k) * l;
                for b in 0..l {
                    unravel(b, &n_blocks, &mut b_idx);
                    let mut pos = 0usize;
                    let inside = (0..nd).all(|d| {
                        let p = b_idx[d] as i64 * strides_attr[d] - pads[d] + k_idx[d] as i64 * dil[d];
                        pos += p.max(0) as usize * ist[d];
                        (0..image[d] as i64).contains(&p)
                    });
                    if inside {
                        out[(batch * c + ch) * image_size + pos] += src[row + b];
                    }
                }
            }
        }
    }
    let mut shape = vec![n, c];
    shape.extend_from_slice(&image);
    single(from_f64(x.dtype(), &shape, out)?)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use sharc_ir::Op;
    use sharc_ir::op::Col2Im;

    #[test]
    fn onnx_example_with_overlap() {
        // ONNX's test_col2im: 1x5x5 image from 5 columns of 5 entries, block 1x5.
        let x = iota(&[1, 5, 5]);
        let x = f(&[1, 5, 5], &fv(&x).iter().map(|v| v + 1.0).collect::<Vec<_>>());
        let out = run1(
            Op::Col2Im(Col2Im { dilations: None, pads: None, strides: None }),
            vec![Some(x), Some(i(&[2], &[5, 5])), Some(i(&[2], &[1, 5]))],
        )
        .unwrap();
        assert_eq!(out.shape(), &[1, 1, 5, 5]);
        let want: Vec<f32> = vec![
            1., 6., 11., 16., 21., 2., 7., 12., 17., 22., 3., 8., 13., 18., 23., 4., 9., 14., 19., 24., 5., 10., 15.,
            20., 25.,
        ];
        assert_eq!(fv(&out), want);
    }

    #[test]
    fn overlapping_blocks_sum() {
        // 1-D image of 3 from blocks of 2 at stride 1: positions 0..2 and 1..3.
        let x = f(&[1, 2, 2], &[1., 2., 10., 20.]);
        let out = run1(
            Op::Col2Im(Col2Im { dilations: None, pads: None, strides: None }),
            vec![Some(x), Some(i(&[1], &[3])), Some(i(&[1], &[2]))],
        )
        .unwrap();
        // Column 0 is kernel tap 0 at blocks (0, 1); column 1 is tap 1.
        assert_eq!(fv(&out), vec![1., 2. + 10., 20.]);
    }

    #[test]
    fn padding_drops_outside_taps_and_shapes_are_checked() {
        let x = f(&[1, 2, 3], &[1., 2., 3., 4., 5., 6.]);
        let op = Op::Col2Im(Col2Im { dilations: None, pads: Some(vec![1, 0]), strides: None });
        let out = run1(op.clone(), vec![Some(x.clone()), Some(i(&[1], &[3])), Some(i(&[1], &[2]))]).unwrap();
        // Blocks start at -1, 0, 1: tap 0 lands at -1 (dropped), 0, 1; tap 1 at 0, 1, 2.
        assert_eq!(fv(&out), vec![2. + 4., 3. + 5., 6.]);
        assert!(run1(op, vec![Some(x), Some(i(&[1], &[4])), Some(i(&[1], &[2]))]).is_err());
    }
}

//! Expected values are hand-computed or taken from numpy 2.4 / onnx 1.23's
//! reference evaluator (noted per test).

use crate::ops::elementwise::test_util::{assert_close, eval, eval_err, eval1, f32s, t, vals};
use half::f16;
use sharc_ir::op::{ArgReduce, AxisAttr, Cumulative, ReduceAttrs, TopK};
use sharc_ir::{Op, Reduce, ReduceKind, Tensor};

fn reduce_op(kind: ReduceKind, keepdims: bool, noop: bool) -> Op {
    Op::Reduce(Reduce { kind, attrs: ReduceAttrs { keepdims, noop_with_empty_axes: noop } })
}

fn reduce(kind: ReduceKind, x: &Tensor, axes: Option<Vec<i64>>, keepdims: bool) -> Tensor {
    let axes = axes.map(|a| t(&[a.len()], a));
    eval(reduce_op(kind, keepdims, false), vec![Some(x.clone()), axes]).unwrap().remove(0)
}

/// x = arange(24).reshape(2, 3, 4) - 7.5
fn cube() -> Tensor {
    t(&[2, 3, 4], (0..24).map(|v| v as f32 - 7.5).collect())
}

#[test]
fn sums_and_means_over_axes() {
    let y = reduce(ReduceKind::Sum, &cube(), Some(vec![1]), true);
    assert_eq!(y.shape(), &[2, 1, 4]);
    assert_eq!(vals::<f32>(&y), vec![-10.5, -7.5, -4.5, -1.5, 25.5, 28.5, 31.5, 34.5]);
    let y = reduce(ReduceKind::Mean, &cube(), Some(vec![0, -1]), false);
    assert_eq!((y.shape(), vals::<f32>(&y)), (&[3usize][..], vec![0.0, 4.0, 8.0]));
    // No axes: everything, to a [1, 1, 1] or a scalar.
    let y = reduce(ReduceKind::Sum, &cube(), None, true);
    assert_eq!((y.shape(), vals::<f32>(&y)), (&[1usize, 1, 1][..], vec![96.0]));
    let y = reduce(ReduceKind::Max, &cube(), Some(vec![]), false);
    assert_eq!((y.shape(), vals::<f32>(&y)), (&[][..], vec![15.5]));
    // numpy: np.prod(x[0], axis=0) and np.sqrt(np.sum(x*x, axis=2)).
    let first = reduce(ReduceKind::Prod, &cube(), Some(vec![1]), false);
    assert_eq!(&vals::<f32>(&first)[..4], &[13.125, 24.375, 20.625, 7.875]);
    let y = reduce(ReduceKind::L2, &cube(), Some(vec![2]), false);
    assert_close(&f32s(&y), &[12.206555, 4.5825758, 4.5825758, 12.206555, 20.12461, 28.089144], 1e-6);
    let y = reduce(ReduceKind::L1, &cube(), Some(vec![2]), false);
    assert_eq!(vals::<f32>(&y), vec![24.0, 8.0, 8.0, 24.0, 40.0, 56.0]);
    let y = reduce(ReduceKind::SumSquare, &t(&[2, 2], vec![1.0f64, 2.0, 3.0, 4.0]), Some(vec![0]), false);
    assert_eq!(vals::<f64>(&y), vec![10.0, 20.0]);
    let y = reduce(ReduceKind::LogSum, &t(&[2, 2], vec![1.0f32, 2.0, 3.0, 4.0]), Some(vec![1]), false);
    assert_close(&f32s(&y), &[3f64.ln(), 7f64.ln()], 1e-6);
}

#[test]
fn log_sum_exp_is_stable() {
    // onnx reference compute_log_sum_exp: [[1000, 1000, -inf], [1, 2, 3]] → [1000.6932, 3.4076061].
    let x = t(&[2, 3], vec![1000.0f32, 1000.0, f32::NEG_INFINITY, 1.0, 2.0, 3.0]);
    let y = reduce(ReduceKind::LogSumExp, &x, Some(vec![1]), true);
    assert_eq!(y.shape(), &[2, 1]);
    assert_close(&f32s(&y), &[1000.6932, 3.4076061], 1e-7);
    let x = t(&[3], vec![f32::NEG_INFINITY; 3]);
    assert_eq!(vals::<f32>(&reduce(ReduceKind::LogSumExp, &x, None, false)), vec![f32::NEG_INFINITY]);
    let x = t(&[2], vec![f32::INFINITY, 1.0]);
    assert_eq!(vals::<f32>(&reduce(ReduceKind::LogSumExp, &x, None, false)), vec![f32::INFINITY]);
}

#[test]
fn noop_with_empty_axes_keeps_the_elementwise_part() {
    let x = t(&[3], vec![-2.0f32, 3.0, 0.5]);
    let run = |kind| eval1(reduce_op(kind, true, true), vec![x.clone()]);
    assert_eq!(vals::<f32>(&run(ReduceKind::Sum)), vec![-2.0, 3.0, 0.5]);
    assert_eq!(vals::<f32>(&run(ReduceKind::SumSquare)), vec![4.0, 9.0, 0.25]);
    assert_eq!(vals::<f32>(&run(ReduceKind::L1)), vec![2.0, 3.0, 0.5]);
    let y = eval(reduce_op(ReduceKind::Sum, true, true), vec![Some(x.clone()), Some(t(&[0], Vec::<i64>::new()))]);
    assert_eq!(vals::<f32>(&y.unwrap()[0]), vec![-2.0, 3.0, 0.5]);
    // With axes given, noop_with_empty_axes does nothing.
    let y = eval(reduce_op(ReduceKind::Sum, false, true), vec![Some(x), Some(t(&[1], vec![0i64]))]);
    assert_eq!(vals::<f32>(&y.unwrap()[0]), vec![1.5]);
}

#[test]
fn empty_sets_give_identities() {
    // test_reduce_*_empty_set: shape [2, 0, 4] reduced over axis 1.
    let x = t(&[2, 0, 4], Vec::<f32>::new());
    let want = [
        (ReduceKind::Sum, 0.0),
        (ReduceKind::Prod, 1.0),
        (ReduceKind::Max, f64::NEG_INFINITY),
        (ReduceKind::Min, f64::INFINITY),
        (ReduceKind::L1, 0.0),
        (ReduceKind::L2, 0.0),
        (ReduceKind::LogSum, f64::NEG_INFINITY),
        (ReduceKind::LogSumExp, f64::NEG_INFINITY),
        (ReduceKind::SumSquare, 0.0),
        (ReduceKind::Mean, f64::NAN),
    ];
    for (kind, v) in want {
        let y = reduce(kind, &x, Some(vec![1]), true);
        assert_eq!(y.shape(), &[2, 1, 4], "{kind:?}");
        assert_close(&f32s(&y), &[v; 8], 0.0);
    }
    // Reducing a non-empty axis of an empty tensor gives an empty tensor.
    let y = reduce(ReduceKind::Sum, &x, Some(vec![2]), false);
    assert_eq!(y.shape(), &[2, 0]);
    let y = reduce(ReduceKind::Max, &t(&[0], Vec::<i32>::new()), None, false);
    assert_eq!(vals::<i32>(&y), vec![i32::MIN]);
    let y = reduce(ReduceKind::Max, &t(&[0], Vec::<bool>::new()), None, false);
    assert_eq!(vals::<bool>(&y), vec![false]);
}

#[test]
fn integer_and_bool_reductions() {
    let x = t(&[2, 3], vec![1i32, -2, 3, -4, 5, -6]);
    assert_eq!(vals::<i32>(&reduce(ReduceKind::Sum, &x, Some(vec![1]), false)), vec![2, -5]);
    assert_eq!(vals::<i32>(&reduce(ReduceKind::Mean, &x, Some(vec![1]), false)), vec![0, -1]);
    assert_eq!(vals::<i32>(&reduce(ReduceKind::Max, &x, Some(vec![0]), false)), vec![1, 5, 3]);
    assert_eq!(vals::<i32>(&reduce(ReduceKind::L1, &x, None, false)), vec![21]);
    assert_eq!(vals::<i32>(&reduce(ReduceKind::L2, &x, None, false)), vec![9]); // sqrt(91) = 9.54
    // The sum wraps in the type but the count does not (numpy:
    // np.mean(np.ones(300, uint8), dtype=uint8) = 44 // 300 = 0).
    let y = reduce(ReduceKind::Mean, &t(&[300], vec![1u8; 300]), None, false);
    assert_eq!(vals::<u8>(&y), vec![0]);
    let y = reduce(ReduceKind::Mean, &t(&[200], vec![-1i64; 200]), None, false);
    assert_eq!(vals::<i64>(&y), vec![-1]);
    let y = reduce(ReduceKind::Prod, &t(&[2], vec![200u8, 2]), None, false);
    assert_eq!(vals::<u8>(&y), vec![144]);
    // test_reduce_max_bool_inputs / test_reduce_min_bool_inputs.
    let b = t(&[4, 2], vec![true, true, true, false, false, true, false, false]);
    assert_eq!(vals::<bool>(&reduce(ReduceKind::Max, &b, Some(vec![1]), true)), vec![true, true, true, false]);
    assert_eq!(vals::<bool>(&reduce(ReduceKind::Min, &b, Some(vec![1]), true)), vec![true, false, false, false]);
    assert!(eval_err(reduce_op(ReduceKind::Sum, true, false), vec![b]).contains("bool"));
}

#[test]
fn reductions_of_half_floats_accumulate_wide() {
    // 2048 + 1 + 1 ... in f16 steps would stay at 2048; one rounding gives 2056.
    let mut v = vec![f16::from_f32(2048.0)];
    v.extend(std::iter::repeat_n(f16::ONE, 8));
    let y = reduce(ReduceKind::Sum, &t(&[9], v), None, false);
    assert_eq!(vals::<f16>(&y), vec![f16::from_f32(2056.0)]);
}

#[test]
fn bad_axes_are_errors() {
    let x = cube();
    let run = |axes: Vec<i64>| {
        let a = t(&[axes.len()], axes);
        eval(reduce_op(ReduceKind::Sum, true, false), vec![Some(x.clone()), Some(a)]).unwrap_err().message
    };
    assert!(run(vec![3]).contains("out of range"));
    assert!(run(vec![1, -2]).contains("twice"));
}

fn arg(max: bool, axis: i64, keepdims: bool, last: bool, x: Tensor) -> Tensor {
    let a = ArgReduce { axis, keepdims, select_last_index: last };
    eval1(if max { Op::ArgMax(a) } else { Op::ArgMin(a) }, vec![x])
}

#[test]
fn arg_max_and_min() {
    // test_argmax_*_example: [[2, 1], [3, 10]].
    let x = t(&[2, 2], vec![2.0f32, 1.0, 3.0, 10.0]);
    let y = arg(true, 0, true, false, x.clone());
    assert_eq!((y.shape(), vals::<i64>(&y)), (&[1usize, 2][..], vec![1, 1]));
    let y = arg(true, -1, false, false, x.clone());
    assert_eq!((y.shape(), vals::<i64>(&y)), (&[2usize][..], vec![0, 1]));
    assert_eq!(vals::<i64>(&arg(false, 1, false, false, x)), vec![1, 0]);
    // Ties: first index, or last with select_last_index ([[2, 2], [3, 10]] style).
    let x = t(&[5], vec![1i32, 3, 0, 3, 0]);
    assert_eq!(vals::<i64>(&arg(true, 0, false, false, x.clone())), vec![1]);
    assert_eq!(vals::<i64>(&arg(true, 0, false, true, x.clone())), vec![3]);
    assert_eq!(vals::<i64>(&arg(false, 0, false, false, x.clone())), vec![2]);
    assert_eq!(vals::<i64>(&arg(false, 0, false, true, x)), vec![4]);
    // NaN wins both (numpy's argmax/argmin).
    let x = t(&[4], vec![1.0f64, f64::NAN, 5.0, f64::NAN]);
    assert_eq!(vals::<i64>(&arg(true, 0, false, false, x.clone())), vec![1]);
    assert_eq!(vals::<i64>(&arg(false, 0, false, false, x.clone())), vec![1]);
    assert_eq!(vals::<i64>(&arg(true, 0, false, true, x)), vec![3]);
    let a = ArgReduce { axis: 0, keepdims: true, select_last_index: false };
    assert!(eval_err(Op::ArgMax(a), vec![t(&[0], Vec::<f32>::new())]).contains("size 0"));
}

fn cum(prod: bool, exclusive: bool, reverse: bool, x: Tensor, axis: Tensor) -> Tensor {
    let c = Cumulative { exclusive, reverse };
    eval1(if prod { Op::CumProd(c) } else { Op::CumSum(c) }, vec![x, axis])
}

#[test]
fn cumulative_sums_and_products() {
    // The CumSum spec's examples on [1, 2, 3, 4, 5].
    let x = t(&[5], vec![1.0f64, 2.0, 3.0, 4.0, 5.0]);
    let ax = t(&[], vec![0i32]);
    assert_eq!(vals::<f64>(&cum(false, false, false, x.clone(), ax.clone())), vec![1.0, 3.0, 6.0, 10.0, 15.0]);
    assert_eq!(vals::<f64>(&cum(false, true, false, x.clone(), ax.clone())), vec![0.0, 1.0, 3.0, 6.0, 10.0]);
    assert_eq!(vals::<f64>(&cum(false, false, true, x.clone(), ax.clone())), vec![15.0, 14.0, 12.0, 9.0, 5.0]);
    assert_eq!(vals::<f64>(&cum(false, true, true, x.clone(), ax.clone())), vec![14.0, 12.0, 9.0, 5.0, 0.0]);
    assert_eq!(vals::<f64>(&cum(true, false, false, x.clone(), ax.clone())), vec![1.0, 2.0, 6.0, 24.0, 120.0]);
    assert_eq!(vals::<f64>(&cum(true, true, true, x, ax)), vec![120.0, 60.0, 20.0, 5.0, 1.0]);
    // 2-D along either axis, negative axis given as a 1-element int64 tensor.
    let x = t(&[2, 3], vec![1i32, 2, 3, 4, 5, 6]);
    assert_eq!(vals::<i32>(&cum(false, false, false, x.clone(), t(&[], vec![0i64]))), vec![1, 2, 3, 5, 7, 9]);
    assert_eq!(vals::<i32>(&cum(false, false, false, x.clone(), t(&[1], vec![-1i64]))), vec![1, 3, 6, 4, 9, 15]);
    // Integer overflow wraps.
    let y = cum(true, false, false, t(&[3], vec![100u8, 3, 2]), t(&[], vec![0i64]));
    assert_eq!(vals::<u8>(&y), vec![100, 44, 88]);
    let c = Cumulative { exclusive: false, reverse: false };
    assert!(eval_err(Op::CumSum(c), vec![x, t(&[2], vec![0i64, 1])]).contains("one value"));
}

fn softmax(kind: &str, axis: i64, x: Tensor) -> Tensor {
    let a = AxisAttr { axis };
    let op = match kind {
        "softmax" => Op::Softmax(a),
        "log" => Op::LogSoftmax(a),
        _ => Op::Hardmax(a),
    };
    eval1(op, vec![x])
}

#[test]
fn softmax_family_is_stable() {
    // test_softmax_large_number: [[0, 1, 2, 3], [10000, 10001, 10002, 10003]].
    let x = t(&[2, 4], vec![0.0f32, 1.0, 2.0, 3.0, 10000.0, 10001.0, 10002.0, 10003.0]);
    let p = [0.032058604, 0.08714432, 0.23688281, 0.6439143];
    let want: Vec<f64> = p.iter().chain(p.iter()).copied().collect();
    assert_close(&f32s(&softmax("softmax", -1, x.clone())), &want, 1e-6);
    let l = [-3.4401896, -2.4401896, -1.4401897, -0.44018966];
    let want: Vec<f64> = l.iter().chain(l.iter()).copied().collect();
    assert_close(&f32s(&softmax("log", 1, x.clone())), &want, 1e-6);
    // Along axis 0 (opset 13: that axis alone).
    let y = softmax("softmax", 0, t(&[2, 2], vec![0.0f32, 1.0, 0.0, 3.0]));
    let e = (-2f64).exp();
    assert_close(&f32s(&y), &[0.5, e / (1.0 + e), 0.5, 1.0 / (1.0 + e)], 1e-6);
    // An all -inf lane is NaN (as numpy computes it); an empty tensor stays empty.
    let y = softmax("softmax", 0, t(&[2], vec![f32::NEG_INFINITY; 2]));
    assert!(vals::<f32>(&y).iter().all(|v| v.is_nan()));
    assert_eq!(softmax("softmax", 1, t(&[0, 3], Vec::<f32>::new())).shape(), &[0, 3]);
}

#[test]
fn hardmax_marks_the_first_maximum() {
    // test_hardmax_example / one_hot: ties go to the first index.
    let x = t(&[2, 4], vec![3.0f32, 0.0, 1.0, 2.0, 0.0, 2.0, 2.0, 1.0]);
    assert_eq!(vals::<f32>(&softmax("hard", -1, x)), vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
    let x = t(&[2, 2], vec![1.0f64, 5.0, 2.0, 4.0]);
    assert_eq!(vals::<f64>(&softmax("hard", 0, x)), vec![0.0, 1.0, 1.0, 0.0]);
}

fn topk(x: Tensor, k: i64, axis: i64, largest: bool) -> (Tensor, Vec<i64>) {
    let op = Op::TopK(TopK { axis, largest, sorted: true });
    let mut out = eval(op, vec![Some(x), Some(t(&[1], vec![k]))]).unwrap();
    let i = vals::<i64>(&out[1]);
    (out.remove(0), i)
}

#[test]
fn top_k() {
    // test_top_k: arange(12).reshape(3, 4), k = 3.
    let x = t(&[3, 4], (0..12).map(|v| v as f32).collect());
    let (v, i) = topk(x.clone(), 3, 1, true);
    assert_eq!(v.shape(), &[3, 3]);
    assert_eq!(vals::<f32>(&v), vec![3.0, 2.0, 1.0, 7.0, 6.0, 5.0, 11.0, 10.0, 9.0]);
    assert_eq!(i, vec![3, 2, 1, 3, 2, 1, 3, 2, 1]);
    let (v, i) = topk(x, 2, 0, false);
    assert_eq!(vals::<f32>(&v), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    assert_eq!(i, vec![0, 0, 0, 0, 1, 1, 1, 1]);
    // Equal values keep index order, largest or not (test_top_k_same_values).
    let x = t(&[6], vec![0i64, 0, 1, 1, 0, 1]);
    assert_eq!(topk(x.clone(), 4, 0, true).1, vec![2, 3, 5, 0]);
    assert_eq!(topk(x, 4, 0, false).1, vec![0, 1, 4, 2]);
    // NaN sorts above every number (numpy's order).
    let x = t(&[4], vec![1.0f32, f32::NAN, 3.0, f32::NEG_INFINITY]);
    assert_eq!(topk(x.clone(), 2, 0, true).1, vec![1, 2]);
    assert_eq!(topk(x, 4, 0, false).1, vec![3, 0, 2, 1]);
    let x = t(&[3], vec![u64::MAX, 0, 1]);
    let (v, i) = topk(x.clone(), 2, -1, true);
    assert_eq!((vals::<u64>(&v), i), (vec![u64::MAX, 1], vec![0, 2]));
    assert_eq!(topk(x.clone(), 0, 0, true).0.shape(), &[0]);
    let op = Op::TopK(TopK { axis: 0, largest: true, sorted: true });
    assert!(eval_err(op, vec![x, t(&[1], vec![4i64])]).contains("outside"));
}

/// 16-bit Softmax and LogSoftmax follow the function body with every step
/// rounded to the type. Softmax bits come from onnx's ReferenceEvaluator;
/// LogSoftmax bits from numpy evaluating `(x - max) - log(sum(exp(x - max)))`
/// in the type (the expanded graph's semantics).
#[test]
fn half_float_softmax_rounds_every_step() {
    let x: Vec<f32> = vec![
        6.122757, -7.666995, 1.2542965, -1.7033088, -1.3579478, -0.6467915, -6.0599585, -0.6957971, -2.5956392,
        9.968998, 0.6773598, -1.0578923, -0.8438623, -2.004139, -3.1654515, -1.172403, 1.4458362, -0.7156608,
    ];
    let run = |kind: &str, x: Tensor| softmax(kind, -1, x);
    let h = t(&[2, 9], x.iter().map(|&v| f16::from_f32(v)).collect());
    let bits = |y: &Tensor| vals::<f16>(y).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&run("softmax", h.clone())),
        vec![15338, 17, 8140, 3707, 4242, 5287, 85, 5233, 2380, 15360, 1551, 274, 338, 106, 33, 243, 2691, 383]
    );
    assert_eq!(
        bits(&run("log", h)),
        vec![
            41336, 51942, 50401, 51158, 51070, 50888, 51736, 50900, 51293, 0, 51365, 51587, 51560, 51708, 51857, 51602,
            51267, 51544
        ]
    );
    let b = t(&[2, 9], x.iter().map(|&v| half::bf16::from_f32(v)).collect());
    let bits = |y: &Tensor| vals::<half::bf16>(y).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&run("softmax", b.clone())),
        vec![
            16254, 13710, 15352, 14802, 14864, 14996, 13994, 14991, 14629, 16256, 14525, 14212, 14239, 14030, 13820,
            14184, 14664, 14271
        ]
    );
    assert_eq!(
        bits(&run("log", b)),
        vec![
            48127, 49500, 49308, 49402, 49392, 49369, 49475, 49370, 49420, 0, 49429, 49457, 49454, 49472, 49491, 49459,
            49417, 49451
        ]
    );
}

//! Expected values are hand-computed or taken from numpy 2.4 / onnx 1.23's
//! reference evaluator (noted per test).

use super::test_util::{assert_close, eval, eval_err, eval1, f32s, t, vals};
use half::{bf16, f16};
use sharc_ir::op::GeluApproximation;
use sharc_ir::{BinaryOp, DType, Op, Tensor, UnaryOp, VariadicOp};

fn bin(op: BinaryOp, a: Tensor, b: Tensor) -> Tensor {
    eval1(Op::Binary(op), vec![a, b])
}

fn un(op: UnaryOp, x: Tensor) -> Tensor {
    eval1(Op::Unary(op), vec![x])
}

#[test]
fn add_broadcasts() {
    let y = bin(BinaryOp::Add, t(&[2, 1], vec![1.0f32, 2.0]), t(&[3], vec![10.0f32, 20.0, 30.0]));
    assert_eq!(y.shape(), &[2, 3]);
    assert_eq!(vals::<f32>(&y), vec![11.0, 21.0, 31.0, 12.0, 22.0, 32.0]);
    // Scalar against a tensor, and an empty tensor against a scalar.
    let y = bin(BinaryOp::Sub, t(&[], vec![1i64]), t(&[2], vec![5i64, -5]));
    assert_eq!(vals::<i64>(&y), vec![-4, 6]);
    let y = bin(BinaryOp::Mul, t(&[0, 3], Vec::<f32>::new()), t(&[], vec![2.0f32]));
    assert_eq!(y.shape(), &[0, 3]);
    let msg = eval_err(Op::Binary(BinaryOp::Add), vec![t(&[2], vec![1.0f32, 2.0]), t(&[3], vec![1.0f32, 2.0, 3.0])]);
    assert!(msg.contains("do not broadcast"), "{msg}");
    let msg = eval_err(Op::Binary(BinaryOp::Add), vec![t(&[1], vec![1.0f32]), t(&[1], vec![1i64])]);
    assert!(msg.contains("one type"), "{msg}");
}

#[test]
fn integer_arithmetic_wraps() {
    let y = bin(BinaryOp::Add, t(&[2], vec![100i8, -100]), t(&[2], vec![100i8, -100]));
    assert_eq!(vals::<i8>(&y), vec![-56, 56]);
    let y = bin(BinaryOp::Mul, t(&[1], vec![u8::MAX]), t(&[1], vec![2u8]));
    assert_eq!(vals::<u8>(&y), vec![254]);
    let y = bin(BinaryOp::Sub, t(&[1], vec![0u32]), t(&[1], vec![1u32]));
    assert_eq!(vals::<u32>(&y), vec![u32::MAX]);
    assert_eq!(vals::<i8>(&un(UnaryOp::Abs, t(&[2], vec![i8::MIN, -3]))), vec![i8::MIN, 3]);
    assert_eq!(vals::<i8>(&un(UnaryOp::Neg, t(&[2], vec![i8::MIN, 3]))), vec![i8::MIN, -3]);
}

#[test]
fn integer_division_truncates() {
    let y = bin(BinaryOp::Div, t(&[4], vec![-7i32, 7, -7, i32::MIN]), t(&[4], vec![2i32, -2, -2, -1]));
    assert_eq!(vals::<i32>(&y), vec![-3, -3, 3, i32::MIN]);
    let msg = eval_err(Op::Binary(BinaryOp::Div), vec![t(&[1], vec![1u8]), t(&[1], vec![0u8])]);
    assert!(msg.contains("division by zero"), "{msg}");
    // Float division by zero is IEEE.
    let y = bin(BinaryOp::Div, t(&[3], vec![1.0f32, -1.0, 0.0]), t(&[3], vec![0.0f32, 0.0, 0.0]));
    assert_close(&f32s(&y), &[f64::INFINITY, f64::NEG_INFINITY, f64::NAN], 0.0);
}

#[test]
fn modulo_follows_divisor_or_dividend() {
    // numpy: np.mod / np.fmod of [-4,7,5,4,-7,8] by [2,-3,8,-2,3,5].
    let a = t(&[6], vec![-4i32, 7, 5, 4, -7, 8]);
    let b = t(&[6], vec![2i32, -3, 8, -2, 3, 5]);
    assert_eq!(vals::<i32>(&bin(BinaryOp::Mod { fmod: false }, a.clone(), b.clone())), vec![0, -2, 5, 0, 2, 3]);
    assert_eq!(vals::<i32>(&bin(BinaryOp::Mod { fmod: true }, a, b)), vec![0, 1, 5, 0, -1, 3]);
    // Float edge cases of the Mod spec (numpy's np.mod and np.fmod).
    let inf = f32::INFINITY;
    let a = t(&[12], vec![0.0f32, -0.0, inf, 5.0, -5.0, 5.0, -5.0, f32::NAN, 5.5, -5.5, 5.5, -5.5]);
    let b = t(&[12], vec![-2.0f32, 3.0, 2.0, 0.0, inf, -inf, -inf, 1.0, 2.0, 2.0, -2.0, -2.0]);
    let m = bin(BinaryOp::Mod { fmod: false }, a.clone(), b.clone());
    let want = [-0.0, 0.0, f32::NAN, f32::NAN, inf, -inf, -5.0, f32::NAN, 1.5, 0.5, -0.5, -1.5];
    let got = vals::<f32>(&m);
    for (g, w) in got.iter().zip(want) {
        assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "mod: {got:?} vs {want:?}");
    }
    let f = bin(BinaryOp::Mod { fmod: true }, a, b);
    let want = [0.0, -0.0, f32::NAN, f32::NAN, -5.0, 5.0, -5.0, f32::NAN, 1.5, -1.5, 1.5, -1.5];
    let got = vals::<f32>(&f);
    for (g, w) in got.iter().zip(want) {
        assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "fmod: {got:?} vs {want:?}");
    }
    // Unsigned remainders and broadcasting.
    let y = bin(BinaryOp::Mod { fmod: false }, t(&[3], vec![250u8, 7, 9]), t(&[], vec![4u8]));
    assert_eq!(vals::<u8>(&y), vec![2, 3, 1]);
    let msg = eval_err(Op::Binary(BinaryOp::Mod { fmod: false }), vec![t(&[1], vec![3i64]), t(&[1], vec![0i64])]);
    assert!(msg.contains("division by zero"), "{msg}");
}

#[test]
fn half_precision_rounds_like_ieee() {
    // f16: 1 + 2^-11 is a tie between 1 and 1 + 2^-10 and goes to even (numpy: 1.0).
    let y = bin(BinaryOp::Add, t(&[1], vec![f16::ONE]), t(&[1], vec![f16::from_f64(2f64.powi(-11))]));
    assert_eq!(vals::<f16>(&y), vec![f16::ONE]);
    let y = bin(BinaryOp::Add, t(&[1], vec![f16::from_f32(65504.0)]), t(&[1], vec![f16::from_f32(32.0)]));
    assert!(vals::<f16>(&y)[0].is_infinite());
    let y = bin(BinaryOp::Mul, t(&[1], vec![bf16::from_f32(3.0)]), t(&[1], vec![bf16::from_f32(1.0 / 3.0)]));
    assert_eq!(vals::<bf16>(&y), vec![bf16::from_f32(3.0 * bf16::from_f32(1.0 / 3.0).to_f32())]);
}

#[test]
fn pow_mixes_types() {
    // numpy: np.power(float32, int64).astype(float32) and (int32 ** float32).astype(int32).
    let y = bin(BinaryOp::Pow, t(&[3], vec![2.0f32, -2.0, 0.5]), t(&[3], vec![3i64, -2, 2]));
    assert_eq!(vals::<f32>(&y), vec![8.0, 0.25, 0.25]);
    let y = bin(BinaryOp::Pow, t(&[3], vec![2i32, 3, -2]), t(&[3], vec![0.5f32, 2.0, 3.0]));
    assert_eq!(vals::<i32>(&y), vec![1, 9, -8]);
    // Integer powers wrap (numpy: 3**40 and 2**63 in int64).
    let y = bin(BinaryOp::Pow, t(&[2], vec![3i64, 2]), t(&[2], vec![40i64, 63]));
    assert_eq!(vals::<i64>(&y), vec![-6289078614652622815, i64::MIN]);
    let y = bin(BinaryOp::Pow, t(&[4], vec![2i32, 1, -1, -1]), t(&[4], vec![-1i32, -5, -3, -2]));
    assert_eq!(vals::<i32>(&y), vec![0, 1, -1, 1]);
    assert!(eval_err(Op::Binary(BinaryOp::Pow), vec![t(&[1], vec![0i32]), t(&[1], vec![-1i32])]).contains("zero"));
    let y = bin(BinaryOp::Pow, t(&[2], vec![f32::NAN, 4.0]), t(&[2], vec![0.0f32, 0.5]));
    assert_eq!(vals::<f32>(&y), vec![1.0, 2.0]);
    let y = bin(BinaryOp::Pow, t(&[2, 1], vec![2.0f64, 3.0]), t(&[2], vec![2u8, 3]));
    assert_eq!(vals::<f64>(&y), vec![4.0, 8.0, 9.0, 27.0]);
}

#[test]
fn bit_shifts() {
    let r = |x: Tensor, y: Tensor| bin(BinaryOp::BitShift { left: false }, x, y);
    let l = |x: Tensor, y: Tensor| bin(BinaryOp::BitShift { left: true }, x, y);
    assert_eq!(vals::<u8>(&r(t(&[2], vec![16u8, 4]), t(&[2], vec![1u8, 1]))), vec![8, 2]);
    assert_eq!(vals::<u8>(&l(t(&[2], vec![1u8, 2]), t(&[2], vec![1u8, 2]))), vec![2, 8]);
    // Signed: arithmetic right shift, left shift through the sign bit.
    assert_eq!(vals::<i8>(&r(t(&[2], vec![-16i8, -1]), t(&[2], vec![2i8, 7]))), vec![-4, -1]);
    assert_eq!(vals::<i8>(&l(t(&[2], vec![64i8, 3]), t(&[2], vec![1i8, 6]))), vec![-128, -64]);
    // Out-of-range shifts: -1 for a negative value shifted right, else 0.
    assert_eq!(vals::<i32>(&r(t(&[4], vec![-5i32, 5, -5, 5]), t(&[4], vec![32i32, 40, -1, -1]))), vec![-1, 0, -1, 0]);
    assert_eq!(vals::<i32>(&l(t(&[3], vec![-5i32, 5, 1]), t(&[3], vec![32i32, -1, 31]))), vec![0, 0, i32::MIN]);
    assert_eq!(vals::<u64>(&l(t(&[1], vec![1u64]), t(&[1], vec![64u64]))), vec![0]);
}

#[test]
fn bitwise_and_logic() {
    let a = t(&[3], vec![0b1100u16, 0xFFFF, 0]);
    let b = t(&[], vec![0b1010u16]);
    assert_eq!(vals::<u16>(&bin(BinaryOp::BitwiseAnd, a.clone(), b.clone())), vec![0b1000, 0b1010, 0]);
    assert_eq!(vals::<u16>(&bin(BinaryOp::BitwiseOr, a.clone(), b.clone())), vec![0b1110, 0xFFFF, 0b1010]);
    assert_eq!(vals::<u16>(&bin(BinaryOp::BitwiseXor, a.clone(), b)), vec![0b0110, 0xFFF5, 0b1010]);
    assert_eq!(vals::<i16>(&un(UnaryOp::BitwiseNot, t(&[2], vec![0i16, -1]))), vec![-1, 0]);
    let p = t(&[4], vec![true, true, false, false]);
    let q = t(&[4], vec![true, false, true, false]);
    assert_eq!(vals::<bool>(&bin(BinaryOp::And, p.clone(), q.clone())), vec![true, false, false, false]);
    assert_eq!(vals::<bool>(&bin(BinaryOp::Or, p.clone(), q.clone())), vec![true, true, true, false]);
    assert_eq!(vals::<bool>(&bin(BinaryOp::Xor, p.clone(), q)), vec![false, true, true, false]);
    assert_eq!(vals::<bool>(&un(UnaryOp::Not, p)), vec![false, false, true, true]);
    assert!(eval_err(Op::Binary(BinaryOp::And), vec![t(&[1], vec![1u8]), t(&[1], vec![1u8])]).contains("u8"));
    assert!(eval_err(Op::Binary(BinaryOp::BitwiseAnd), vec![t(&[1], vec![1f32]), t(&[1], vec![1f32])]).contains("f32"));
}

#[test]
fn comparisons_give_bool_and_nan_is_unordered() {
    let a = t(&[4], vec![1.0f32, f32::NAN, 3.0, -0.0]);
    let b = t(&[4], vec![2.0f32, f32::NAN, 3.0, 0.0]);
    assert_eq!(vals::<bool>(&bin(BinaryOp::Equal, a.clone(), b.clone())), vec![false, false, true, true]);
    assert_eq!(vals::<bool>(&bin(BinaryOp::Less, a.clone(), b.clone())), vec![true, false, false, false]);
    assert_eq!(vals::<bool>(&bin(BinaryOp::LessOrEqual, a.clone(), b.clone())), vec![true, false, true, true]);
    assert_eq!(vals::<bool>(&bin(BinaryOp::Greater, a.clone(), b.clone())), vec![false, false, false, false]);
    assert_eq!(vals::<bool>(&bin(BinaryOp::GreaterOrEqual, a, b)), vec![false, false, true, true]);
    let s = t(&[2], vec!["a".to_string(), "bc".to_string()]);
    let r = t(&[], vec!["bc".to_string()]);
    assert_eq!(vals::<bool>(&bin(BinaryOp::Equal, s, r)), vec![false, true]);
    let y = bin(BinaryOp::Greater, t(&[2], vec![u64::MAX, 1]), t(&[2], vec![1u64, u64::MAX]));
    assert_eq!(vals::<bool>(&y), vec![true, false]);
}

#[test]
fn prelu_broadcasts_slope_to_x() {
    let x = t(&[2, 3], vec![-1.0f32, 2.0, -3.0, 4.0, -5.0, 0.0]);
    let y = bin(BinaryOp::PRelu, x.clone(), t(&[3], vec![0.1f32, 0.2, 0.3]));
    assert_close(&f32s(&y), &[-0.1, 2.0, -0.9, 4.0, -1.0, 0.0], 1e-6);
    let y = bin(BinaryOp::PRelu, t(&[2], vec![-4i32, 4]), t(&[], vec![3i32]));
    assert_eq!(vals::<i32>(&y), vec![-12, 4]);
    // The slope may not grow X (unidirectional broadcasting).
    let msg = eval_err(Op::Binary(BinaryOp::PRelu), vec![t(&[3], vec![1.0f32; 3]), t(&[2, 3], vec![1.0f32; 6])]);
    assert!(msg.contains("does not broadcast"), "{msg}");
}

#[test]
fn float_unary_functions() {
    let x = t(&[7], vec![-3.0f32, -0.5, 0.0, 0.5, 2.0, 40.0, -40.0]);
    let check = |op: UnaryOp, want: &[f64]| assert_close(&f32s(&un(op, x.clone())), want, 1e-6);
    // numpy float64 evaluated then rounded to float32.
    check(UnaryOp::Erf, &[-0.9999779, -0.5204999, 0.0, 0.5204999, 0.9953223, 1.0, -1.0]);
    check(UnaryOp::Sigmoid, &[0.047425874, 0.37754068, 0.5, 0.62245935, 0.8807971, 1.0, 4.248354e-18]);
    check(
        UnaryOp::Gelu { approximate: GeluApproximation::None },
        &[-0.004049694, -0.15426877, 0.0, 0.34573123, 1.9544997, 40.0, -0.0],
    );
    check(
        UnaryOp::Gelu { approximate: GeluApproximation::Tanh },
        &[-0.003637392, -0.154286, 0.0, 0.345714, 1.9545977, 40.0, -0.0],
    );
    check(UnaryOp::Softplus, &[0.048587352, 0.474077, std::f64::consts::LN_2, 0.974077, 2.126928, 40.0, 4.248354e-18]);
    check(UnaryOp::Mish, &[-0.14564747, -0.22074378, 0.0, 0.3752452, 1.943959, 40.0, -1.6993417e-16]);
    check(UnaryOp::Relu, &[0.0, 0.0, 0.0, 0.5, 2.0, 40.0, 0.0]);
    check(UnaryOp::LeakyRelu { alpha: 0.1 }, &[-0.3, -0.05, 0.0, 0.5, 2.0, 40.0, -4.0]);
    check(UnaryOp::HardSigmoid { alpha: 0.2, beta: 0.5 }, &[0.0, 0.4, 0.5, 0.6, 0.9, 1.0, 0.0]);
    check(UnaryOp::HardSwish, &[0.0, -0.20833333, 0.0, 0.29166666, 1.6666666, 40.0, -0.0]);
    check(UnaryOp::Softsign, &[-0.75, -1.0 / 3.0, 0.0, 1.0 / 3.0, 2.0 / 3.0, 40.0 / 41.0, -40.0 / 41.0]);
    check(UnaryOp::ThresholdedRelu { alpha: 1.0 }, &[0.0, 0.0, 0.0, 0.0, 2.0, 40.0, 0.0]);
    check(UnaryOp::Shrink { bias: 1.5, lambd: 1.0 }, &[-1.5, 0.0, 0.0, 0.0, 0.5, 38.5, -38.5]);
    check(UnaryOp::Swish { alpha: 1.0 }, &[-0.14227763, -0.18877034, 0.0, 0.31122968, 1.7615942, 40.0, -1.6993417e-16]);
    let e = |v: f64| v.exp_m1();
    check(UnaryOp::Elu { alpha: 2.0 }, &[2.0 * e(-3.0), 2.0 * e(-0.5), 0.0, 0.5, 2.0, 40.0, 2.0 * e(-40.0)]);
    check(UnaryOp::Celu { alpha: 2.0 }, &[2.0 * e(-1.5), 2.0 * e(-0.25), 0.0, 0.5, 2.0, 40.0, 2.0 * e(-20.0)]);
    let (a, g) = (1.673_263_2f32 as f64, 1.050_701f32 as f64);
    check(
        UnaryOp::Selu { alpha: 1.673_263_2, gamma: 1.050_701 },
        &[g * a * e(-3.0), g * a * e(-0.5), 0.0, g * 0.5, g * 2.0, g * 40.0, g * a * e(-40.0)],
    );
    // Round: halves to even (numpy: np.round).
    let y = un(UnaryOp::Round, t(&[8], vec![0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 2.3, -2.7]));
    assert_eq!(vals::<f32>(&y), vec![0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 2.0, -3.0]);
    let y = un(UnaryOp::Sign, t(&[4], vec![-2.0f64, 0.0, 3.0, f64::NAN]));
    assert_close(&vals::<f64>(&y), &[-1.0, 0.0, 1.0, f64::NAN], 0.0);
    let y = un(UnaryOp::Sqrt, t(&[2], vec![f16::from_f32(2.0), f16::from_f32(-1.0)]));
    let y = vals::<f16>(&y);
    assert_eq!(y[0], f16::from_f64(2f64.sqrt()));
    assert!(y[1].is_nan());
    assert!(eval_err(Op::Unary(UnaryOp::Exp), vec![t(&[1], vec![1i32])]).contains("Exp does not accept i32"));
}

#[test]
fn integer_unary() {
    assert_eq!(vals::<i32>(&un(UnaryOp::Sign, t(&[3], vec![-9i32, 0, 4]))), vec![-1, 0, 1]);
    assert_eq!(vals::<u8>(&un(UnaryOp::Sign, t(&[2], vec![0u8, 200]))), vec![0, 1]);
    assert_eq!(vals::<i64>(&un(UnaryOp::Relu, t(&[2], vec![-9i64, 7]))), vec![0, 7]);
    assert_eq!(vals::<u16>(&un(UnaryOp::Abs, t(&[1], vec![7u16]))), vec![7]);
    // ONNX's reference: np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0)).astype(int8).
    let y = un(UnaryOp::Shrink { bias: 1.5, lambd: 1.5 }, t(&[5], vec![-3i8, -2, 0, 2, 3]));
    assert_eq!(vals::<i8>(&y), vec![-1, 0, 0, 0, 1]);
}

#[test]
fn nan_and_inf_tests() {
    let x = t(&[5], vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0, -0.0]);
    assert_eq!(vals::<bool>(&un(UnaryOp::IsNaN, x.clone())), vec![true, false, false, false, false]);
    let inf = |n, p| vals::<bool>(&un(UnaryOp::IsInf { detect_negative: n, detect_positive: p }, x.clone()));
    assert_eq!(inf(true, true), vec![false, true, true, false, false]);
    assert_eq!(inf(false, true), vec![false, true, false, false, false]);
    assert_eq!(inf(true, false), vec![false, false, true, false, false]);
    assert_eq!(inf(false, false), vec![false; 5]);
    // Float8: e5m2 has infinities (0x7C, 0xFC) and NaN (0x7E); e4m3fn has only NaN (0x7F).
    let f8 = Tensor::from_codes(DType::F8E5M2, &[4], vec![0x7C, 0xFC, 0x7E, 0x3C]).unwrap();
    assert_eq!(vals::<bool>(&un(UnaryOp::IsNaN, f8.clone())), vec![false, false, true, false]);
    let y = un(UnaryOp::IsInf { detect_negative: true, detect_positive: true }, f8);
    assert_eq!(vals::<bool>(&y), vec![true, true, false, false]);
    let f8 = Tensor::from_codes(DType::F8E4M3FN, &[2], vec![0x7F, 0x7E]).unwrap();
    assert_eq!(vals::<bool>(&un(UnaryOp::IsNaN, f8)), vec![true, false]);
    assert!(eval_err(Op::Unary(UnaryOp::IsNaN), vec![t(&[1], vec![1i32])]).contains("i32"));
}

fn var(op: VariadicOp, xs: Vec<Tensor>) -> Tensor {
    eval1(Op::Variadic(op), xs)
}

#[test]
fn variadic_ops_broadcast_all_inputs() {
    let a = t(&[3], vec![3.0f32, 2.0, 1.0]);
    let b = t(&[2, 1], vec![1.0f32, 4.0]);
    let c = t(&[], vec![2.0f32]);
    let s = var(VariadicOp::Sum, vec![a.clone(), b.clone(), c.clone()]);
    assert_eq!(s.shape(), &[2, 3]);
    assert_eq!(vals::<f32>(&s), vec![6.0, 5.0, 4.0, 9.0, 8.0, 7.0]);
    assert_eq!(
        vals::<f32>(&var(VariadicOp::Mean, vec![a.clone(), b.clone(), c.clone()])),
        vec![2.0, 5.0 / 3.0, 4.0 / 3.0, 3.0, 8.0 / 3.0, 7.0 / 3.0]
    );
    assert_eq!(
        vals::<f32>(&var(VariadicOp::Max, vec![a.clone(), b.clone(), c.clone()])),
        vec![3.0, 2.0, 2.0, 4.0, 4.0, 4.0]
    );
    assert_eq!(vals::<f32>(&var(VariadicOp::Min, vec![a.clone(), b, c])), vec![1.0, 1.0, 1.0, 2.0, 2.0, 1.0]);
    // One input is returned as is.
    assert_eq!(vals::<f32>(&var(VariadicOp::Max, vec![a.clone()])), vec![3.0, 2.0, 1.0]);
    // NaN propagates through Max and Min (numpy's maximum/minimum).
    let n = t(&[3], vec![f32::NAN, 0.0, 5.0]);
    assert_close(&f32s(&var(VariadicOp::Max, vec![a.clone(), n.clone()])), &[f64::NAN, 2.0, 5.0], 0.0);
    assert_close(&f32s(&var(VariadicOp::Min, vec![n, a])), &[f64::NAN, 0.0, 1.0], 0.0);
    // Integers.
    let y = var(VariadicOp::Max, vec![t(&[2], vec![-1i8, 5]), t(&[2], vec![3i8, -7])]);
    assert_eq!(vals::<i8>(&y), vec![3, 5]);
    let y = var(VariadicOp::Sum, vec![t(&[1], vec![200u8]), t(&[1], vec![100u8])]);
    assert_eq!(vals::<u8>(&y), vec![44]);
    let msg = eval_err(Op::Variadic(VariadicOp::Min), vec![t(&[1], vec![1.0f32]), t(&[1], vec![1.0f64])]);
    assert!(msg.contains("one type"), "{msg}");
    assert!(eval_err(Op::Variadic(VariadicOp::Mean), vec![t(&[1], vec![1i32])]).contains("Mean"));
}

#[test]
fn where_selects_with_broadcasting() {
    let c = t(&[2, 1], vec![true, false]);
    let x = t(&[2], vec!["a".to_string(), "b".to_string()]);
    let y = t(&[], vec!["z".to_string()]);
    let out = eval1(Op::Where, vec![c.clone(), x, y]);
    assert_eq!(out.shape(), &[2, 2]);
    assert_eq!(vals::<String>(&out), vec!["a", "b", "z", "z"]);
    let out = eval1(Op::Where, vec![c, t(&[1], vec![1i64]), t(&[1], vec![-1i64])]);
    assert_eq!(vals::<i64>(&out), vec![1, -1]);
    let f8x = Tensor::from_codes(DType::F8E4M3FN, &[2], vec![1, 2]).unwrap();
    let f8y = Tensor::from_codes(DType::F8E4M3FN, &[2], vec![3, 4]).unwrap();
    let out = eval1(Op::Where, vec![t(&[2], vec![false, true]), f8x, f8y]);
    assert_eq!(out.as_codes().unwrap().iter().copied().collect::<Vec<_>>(), vec![3, 2]);
    let msg = eval_err(Op::Where, vec![t(&[1], vec![1u8]), t(&[1], vec![1i64]), t(&[1], vec![1i64])]);
    assert!(msg.contains("bool"), "{msg}");
    let msg = eval_err(Op::Where, vec![t(&[1], vec![true]), t(&[1], vec![1i64]), t(&[1], vec![1i32])]);
    assert!(msg.contains("one type"), "{msg}");
}

#[test]
fn clip_with_optional_bounds() {
    let x = t(&[5], vec![-2.0f32, -0.5, 0.5, 3.0, f32::NAN]);
    let lo = t(&[], vec![-1.0f32]);
    let hi = t(&[1], vec![1.0f32]);
    let run = |lo: Option<Tensor>, hi: Option<Tensor>| eval(Op::Clip, vec![Some(x.clone()), lo, hi]).unwrap().remove(0);
    assert_close(&f32s(&run(Some(lo.clone()), Some(hi.clone()))), &[-1.0, -0.5, 0.5, 1.0, f64::NAN], 0.0);
    assert_close(&f32s(&run(None, Some(hi.clone()))), &[-2.0, -0.5, 0.5, 1.0, f64::NAN], 0.0);
    assert_close(&f32s(&run(Some(lo.clone()), None)), &[-1.0, -0.5, 0.5, 3.0, f64::NAN], 0.0);
    assert_close(&f32s(&run(None, None)), &[-2.0, -0.5, 0.5, 3.0, f64::NAN], 0.0);
    // min > max: everything becomes max.
    assert_close(&f32s(&run(Some(hi), Some(lo))), &[-1.0, -1.0, -1.0, -1.0, f64::NAN], 0.0);
    let y = eval1(Op::Clip, vec![t(&[4], vec![-128i8, -3, 3, 127]), t(&[], vec![-5i8]), t(&[], vec![5i8])]);
    assert_eq!(vals::<i8>(&y), vec![-5, -3, 3, 5]);
    let msg = eval_err(Op::Clip, vec![x.clone(), t(&[2], vec![0.0f32, 1.0])]);
    assert!(msg.contains("scalar"), "{msg}");
    let msg = eval_err(Op::Clip, vec![x, t(&[], vec![0.0f64])]);
    assert!(msg.contains("f64"), "{msg}");
}

#[test]
fn not_this_family() {
    let cx = crate::ops::OpContext { node_name: "n", num_outputs: 1, output_types: &[] };
    assert!(super::run(&Op::MatMul, &[], &cx).is_none());
}

//! Expected values are hand-computed or taken from numpy 2.4 / ml_dtypes 0.6
//! (what ONNX 1.23's reference evaluator casts with), noted per test.

use super::narrow;
use crate::ops::elementwise::test_util::{eval_err, eval1, t, vals};
use half::{bf16, f16};
use sharc_ir::op::{BitCast, Cast, CastLike, RoundMode};
use sharc_ir::{DType, Op, Tensor};

fn cast(x: Tensor, to: DType) -> Tensor {
    eval1(Op::Cast(Cast { to, saturate: true, round_mode: RoundMode::Up }), vec![x])
}

fn cast_nosat(x: Tensor, to: DType) -> Tensor {
    eval1(Op::Cast(Cast { to, saturate: false, round_mode: RoundMode::Up }), vec![x])
}

fn codes(t: &Tensor) -> Vec<u8> {
    t.as_codes().expect("a narrow tensor").iter().copied().collect()
}

#[test]
fn float_to_int_truncates_and_wraps() {
    // numpy: np.array([1.9, -1.9, 300.5, -0.5], np.float32).astype(uint8 / int8).
    let x = t(&[4], vec![1.9f32, -1.9, 300.5, -0.5]);
    assert_eq!(vals::<u8>(&cast(x.clone(), DType::U8)), vec![1, 255, 44, 0]);
    assert_eq!(vals::<i8>(&cast(x.clone(), DType::I8)), vec![1, -1, 44, 0]);
    assert_eq!(vals::<i64>(&cast(x, DType::I64)), vec![1, -1, 300, 0]);
    assert_eq!(vals::<u64>(&cast(t(&[1], vec![1e19f64]), DType::U64)), vec![10_000_000_000_000_000_000]);
    // Integers narrow by keeping the low bits (Cast spec: 200 i16 → -56 i8).
    assert_eq!(vals::<i8>(&cast(t(&[2], vec![200i16, -129]), DType::I8)), vec![-56, 127]);
    assert_eq!(vals::<u32>(&cast(t(&[1], vec![-1i64]), DType::U32)), vec![u32::MAX]);
    assert_eq!(vals::<i64>(&cast(t(&[1], vec![u64::MAX]), DType::I64)), vec![-1]);
}

#[test]
fn int_to_float_rounds_once() {
    // numpy: int64 → float32 rounds directly, not through float64.
    let x = t(&[4], vec![(1i64 << 53) + 1, (1 << 24) + 1, -(1 << 31) + 1, i64::MAX]);
    assert_eq!(vals::<f32>(&cast(x, DType::F32)), vec![9007199254740992.0, 16777216.0, -2147483648.0, 9.223372e18]);
    // 2^60 + 2^36 + 1 rounds up directly, but through f64 it loses the 1 and
    // becomes a tie that goes to even (down).
    let v = (1i64 << 60) + (1 << 36) + 1;
    assert_eq!(vals::<f32>(&cast(t(&[1], vec![v]), DType::F32)), vec![((1u64 << 60) + (1 << 37)) as f32]);
    assert_eq!(vals::<f64>(&cast(t(&[2], vec![true, false]), DType::F64)), vec![1.0, 0.0]);
}

#[test]
fn float_widths() {
    // numpy: float64 → float16 bits for [65520, 65519, 1e-8, 0.1, 1/3].
    let x = t(&[5], vec![65520.0f64, 65519.0, 1e-8, 0.1, 1.0 / 3.0]);
    let bits: Vec<u16> = vals::<f16>(&cast(x, DType::F16)).iter().map(|v| v.to_bits()).collect();
    assert_eq!(bits, vec![31744, 31743, 0, 11878, 13653]);
    // ml_dtypes: float64 → bfloat16 bits for [1/3, 1e39, 3e38, -0.1].
    let x = t(&[4], vec![1.0 / 3.0, 1e39f64, 3.0e38, -0.1]);
    let bits: Vec<u16> = vals::<bf16>(&cast(x, DType::BF16)).iter().map(|v| v.to_bits()).collect();
    assert_eq!(bits, vec![16043, 32640, 32610, 48589]);
    let y = cast(t(&[3], vec![f16::from_f32(0.5), f16::INFINITY, f16::NAN]), DType::F32);
    let y = vals::<f32>(&y);
    assert_eq!(&y[..2], &[0.5, f32::INFINITY]);
    assert!(y[2].is_nan());
}

#[test]
fn to_and_from_bool() {
    let x = t(&[4], vec![0.0f32, -0.0, f32::NAN, 0.1]);
    assert_eq!(vals::<bool>(&cast(x, DType::Bool)), vec![false, false, true, true]);
    assert_eq!(vals::<bool>(&cast(t(&[2], vec![0i32, 36]), DType::Bool)), vec![false, true]);
    assert_eq!(vals::<i32>(&cast(t(&[2], vec![true, false]), DType::I32)), vec![1, 0]);
}

#[test]
fn strings_both_ways() {
    // numpy: astype(np.str_) of float32, int8 and bool.
    let x = t(&[5], vec![0.1f32, 1e20, f32::NAN, -0.0, 100.0]);
    assert_eq!(vals::<String>(&cast(x, DType::String)), vec!["0.1", "1e+20", "nan", "-0.0", "100.0"]);
    assert_eq!(vals::<String>(&cast(t(&[2], vec![-5i8, 7]), DType::String)), vec!["-5", "7"]);
    assert_eq!(vals::<String>(&cast(t(&[2], vec![true, false]), DType::String)), vec!["True", "False"]);
    let x = t(&[2], vec![f16::from_f32(0.1), f16::from_f32(2048.0)]);
    assert_eq!(vals::<String>(&cast(x, DType::String)), vec!["0.1", "2.048e+03"]);
    // Parsing, with the Cast spec's literals.
    let s = |v: &[&str]| t(&[v.len()], v.iter().map(|s| s.to_string()).collect());
    let y = cast(s(&["2.5", "1e-5", "+INF", "-inf", "NaN", "1E8"]), DType::F32);
    let y = vals::<f32>(&y);
    assert_eq!(y[..4], [2.5, 1e-5, f32::INFINITY, f32::NEG_INFINITY]);
    assert!(y[4].is_nan());
    assert_eq!(y[5], 1e8);
    assert_eq!(vals::<i64>(&cast(s(&["1000", "-3", "100.5"]), DType::I64)), vec![1000, -3, 100]);
    assert_eq!(vals::<u8>(&cast(s(&["300"]), DType::U8)), vec![44]);
    assert_eq!(vals::<bool>(&cast(s(&["True", "0", "false"]), DType::Bool)), vec![true, false, false]);
    let y = cast(s(&["0.48", "9"]), DType::F8E4M3FN);
    assert_eq!(codes(&y), vec![narrow::encode(DType::F8E4M3FN, 0.48, true), 0x51]);
    let msg =
        eval_err(Op::Cast(Cast { to: DType::F32, saturate: true, round_mode: RoundMode::Up }), vec![s(&["Hello"])]);
    assert!(msg.contains("\"Hello\""), "{msg}");
    // A round trip through strings is exact for f32.
    let x = t(&[3], vec![0.478_925_47f32, 1.0e-7, 123_456.79]);
    assert_eq!(vals::<f32>(&cast(cast(x.clone(), DType::String), DType::F32)), vals::<f32>(&x));
}

#[test]
fn float8_saturation() {
    // test_cast_FLOAT_to_FLOAT8E4M3FN and test_cast_no_saturate_FLOAT_to_FLOAT8E4M3FN inputs.
    let x = t(&[5], vec![0.478_925_47f32, 1e6, f32::INFINITY, -1e6, 1e-7]);
    let sat = cast(x.clone(), DType::F8E4M3FN);
    let decoded: Vec<f32> = codes(&sat).iter().map(|&c| narrow::decode(DType::F8E4M3FN, c)).collect();
    assert_eq!(decoded, vec![0.46875, 448.0, 448.0, -448.0, 0.0]);
    let raw = cast_nosat(x.clone(), DType::F8E4M3FN);
    assert_eq!(codes(&raw), vec![0x2F, 0x7F, 0x7F, 0xFF, 0x00]);
    let e5 = cast_nosat(x.clone(), DType::F8E5M2);
    let decoded: Vec<f32> = codes(&e5).iter().map(|&c| narrow::decode(DType::F8E5M2, c)).collect();
    assert_eq!(decoded, vec![0.5, f32::INFINITY, f32::INFINITY, f32::NEG_INFINITY, 0.0]);
    // Back to wide types.
    let y = cast(sat, DType::F16);
    assert_eq!(vals::<f16>(&y), [0.46875f32, 448.0, 448.0, -448.0, 0.0].map(f16::from_f32).to_vec());
    // float4: saturates always; ml_dtypes gives these codes.
    let x = t(&[6], vec![0.48f32, 1.05, -3.5, 9.0, f32::NEG_INFINITY, 0.01]);
    assert_eq!(codes(&cast(x, DType::F4E2M1)), vec![0x1, 0x2, 0xE, 0x7, 0xF, 0x0]);
}

#[test]
fn e8m0_round_mode() {
    let x = t(&[3], vec![1.1f32, 1.6, 4.0]);
    let run =
        |mode| codes(&eval1(Op::Cast(Cast { to: DType::F8E8M0, saturate: true, round_mode: mode }), vec![x.clone()]));
    assert_eq!(run(RoundMode::Up), vec![128, 128, 129]);
    assert_eq!(run(RoundMode::Down), vec![127, 127, 129]);
    assert_eq!(run(RoundMode::ToNearestEven), vec![127, 128, 129]);
    let back = cast(Tensor::from_codes(DType::F8E8M0, &[2], vec![127, 0xFF]).unwrap(), DType::F32);
    let back = vals::<f32>(&back);
    assert_eq!(back[0], 1.0);
    assert!(back[1].is_nan());
}

#[test]
fn sub_byte_integers() {
    // test_cast_FLOAT_to_UINT4 / INT4 (wrapping) and UINT2.
    let x = t(&[5], vec![-9.0f32, -1.0, 7.0, 8.0, 15.0]);
    assert_eq!(codes(&cast(x.clone(), DType::U4)), vec![7, 15, 7, 8, 15]);
    let i4 = cast(x, DType::I4);
    assert_eq!(vals::<i8>(&cast(i4.clone(), DType::I8)), vec![7, -1, 7, -8, -1]);
    assert_eq!(vals::<f32>(&cast(i4, DType::F32)), vec![7.0, -1.0, 7.0, -8.0, -1.0]);
    let u2 = cast(t(&[4], vec![-3i32, -1, 2, 5]), DType::U2);
    assert_eq!(vals::<u8>(&cast(u2, DType::U8)), vec![1, 3, 2, 1]);
    let i2 = Tensor::from_codes(DType::I2, &[4], vec![0, 1, 2, 3]).unwrap();
    assert_eq!(vals::<String>(&cast(i2, DType::String)), vec!["0", "1", "-2", "-1"]);
}

#[test]
fn cast_like_takes_the_second_inputs_type() {
    let op = Op::CastLike(CastLike { saturate: true, round_mode: RoundMode::Up });
    let y = eval1(op.clone(), vec![t(&[2], vec![1.5f64, -2.5]), t(&[0], Vec::<i32>::new())]);
    assert_eq!(vals::<i32>(&y), vec![1, -2]);
    let like = Tensor::from_codes(DType::F8E5M2FNUZ, &[1], vec![0]).unwrap();
    let y = eval1(op, vec![t(&[1], vec![1e6f32]), like]);
    assert_eq!(y.dtype(), DType::F8E5M2FNUZ);
    assert_eq!(codes(&y), vec![0x7F]);
}

#[test]
fn bitcast_keeps_bits() {
    let op = |to| Op::BitCast(BitCast { to });
    let y = eval1(op(DType::I32), vec![t(&[2], vec![1.0f32, -0.0])]);
    assert_eq!(vals::<i32>(&y), vec![0x3f80_0000, i32::MIN]);
    let y = eval1(op(DType::F64), vec![t(&[1], vec![0x4000_0000_0000_0000i64])]);
    assert_eq!(vals::<f64>(&y), vec![2.0]);
    let y = eval1(op(DType::U8), vec![t(&[2], vec![true, false])]);
    assert_eq!(vals::<u8>(&y), vec![1, 0]);
    let y = eval1(op(DType::U16), vec![t(&[1], vec![bf16::from_f32(1.0)])]);
    assert_eq!(vals::<u16>(&y), vec![0x3F80]);
    let i4 = Tensor::from_codes(DType::I4, &[3], vec![0xF, 0x8, 0x1]).unwrap();
    let y = eval1(op(DType::U4), vec![i4]);
    assert_eq!((y.dtype(), codes(&y)), (DType::U4, vec![0xF, 0x8, 0x1]));
    let msg = eval_err(op(DType::I64), vec![t(&[1], vec![1.0f32])]);
    assert!(msg.contains("32 bits") && msg.contains("64"), "{msg}");
    assert!(eval_err(op(DType::String), vec![t(&[1], vec![1u8])]).contains("string"));
}

#[test]
fn same_type_is_identity() {
    let x = t(&[2], vec!["a".to_string(), "b".to_string()]);
    assert_eq!(cast(x.clone(), DType::String), x);
    let f8 = Tensor::from_codes(DType::F8E4M3FN, &[1], vec![0x7F]).unwrap();
    assert_eq!(cast(f8.clone(), DType::F8E4M3FN), f8);
}

//! One-input elementwise ops (`Op::Unary`).

use super::num::{Int, Real, match_int, match_real, max_nan, min_nan};
use super::{bad_type, map_tensor};
use crate::ops::cast::narrow;
use sharc_ir::op::GeluApproximation;
use sharc_ir::{Array, EvalError, Tensor, TensorData, UnaryOp};

pub(super) fn unary(op: &UnaryOp, x: &Tensor) -> Result<Tensor, EvalError> {
    let name = op.onnx_name();
    match op {
        UnaryOp::Not => match x.data() {
            TensorData::Bool(a) => Ok(map_tensor(a, |v| !v)),
            _ => Err(bad_type(name, x.dtype())),
        },
        UnaryOp::BitwiseNot => {
            match_int!(x.data(), a => Ok(map_tensor(a, |v| v.bitnot())), _ => Err(bad_type(name, x.dtype())))
        }
        UnaryOp::IsNaN => classify(name, x, f64::is_nan),
        UnaryOp::IsInf { detect_negative, detect_positive } => {
            let (neg, pos) = (*detect_negative, *detect_positive);
            classify(name, x, move |v| (pos && v == f64::INFINITY) || (neg && v == f64::NEG_INFINITY))
        }
        _ => match_int!(x.data(), a => int_unary(op, a),
        _ => {
            let f = real_fn(op).ok_or_else(|| bad_type(name, x.dtype()))?;
            match_real!(x.data(), a => Ok(map_real(a, &*f)), _ => Err(bad_type(name, x.dtype())))
        }),
    }
}

fn map_real<T: Real>(a: &Array<T>, f: &dyn Fn(f64) -> f64) -> Tensor {
    map_tensor(a, |v| T::from_f64(f(v.to_f64())))
}

/// `IsNaN` and `IsInf`, which also accept the float8 formats.
fn classify(name: &str, x: &Tensor, test: impl Fn(f64) -> bool) -> Result<Tensor, EvalError> {
    match_real!(x.data(), a => Ok(map_tensor(a, |v| test(v.to_f64()))),
    _ => match x.data() {
        TensorData::Narrow { dtype, codes } if dtype.is_float() => {
            let d = *dtype;
            Ok(map_tensor(codes, |&c| test(narrow::decode(d, c) as f64)))
        }
        _ => Err(bad_type(name, x.dtype())),
    })
}

fn int_unary<T: Int>(op: &UnaryOp, a: &Array<T>) -> Result<Tensor, EvalError> {
    Ok(match op {
        UnaryOp::Abs => map_tensor(a, |v| v.wrapping_abs()),
        UnaryOp::Neg => map_tensor(a, |v| v.wrapping_neg()),
        UnaryOp::Sign => map_tensor(a, |v| v.signum()),
        UnaryOp::Relu => map_tensor(a, |&v| v.max(T::ZERO)),
        // ONNX's reference adds the float bias and truncates back.
        &UnaryOp::Shrink { bias, lambd } => {
            let f = shrink(bias as f64, lambd as f64);
            map_tensor(a, |v| {
                let r = f(v.to_f64());
                T::from_i128_wrapping(if r.is_nan() { 0 } else { r.trunc() as i128 })
            })
        }
        _ => return Err(bad_type(op.onnx_name(), T::DTYPE)),
    })
}

fn shrink(bias: f64, lambd: f64) -> impl Fn(f64) -> f64 {
    move |x| {
        if x < -lambd {
            x + bias
        } else if x > lambd {
            x - bias
        } else {
            0.0
        }
    }
}

/// `1 / (1 + e^-x)` without overflow for large `|x|`.
pub(crate) fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `ln(1 + e^x)` without overflow for large `x`.
pub(crate) fn softplus(x: f64) -> f64 {
    if x > 0.0 { x + (-x).exp().ln_1p() } else { x.exp().ln_1p() }
}

/// The function a float unary op applies, in `f64`. `None` for ops that are
/// not float functions (`Not`, `BitwiseNot`, `IsNaN`, `IsInf`).
pub(crate) fn real_fn(op: &UnaryOp) -> Option<Box<dyn Fn(f64) -> f64>> {
    let f: Box<dyn Fn(f64) -> f64> = match op {
        UnaryOp::Abs => Box::new(f64::abs),
        UnaryOp::Neg => Box::new(|x| -x),
        UnaryOp::Exp => Box::new(f64::exp),
        UnaryOp::Log => Box::new(f64::ln),
        UnaryOp::Sqrt => Box::new(f64::sqrt),
        UnaryOp::Reciprocal => Box::new(|x| 1.0 / x),
        UnaryOp::Floor => Box::new(f64::floor),
        UnaryOp::Ceil => Box::new(f64::ceil),
        UnaryOp::Round => Box::new(f64::round_ties_even),
        UnaryOp::Sign => Box::new(|x| {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                x
            }
        }),
        UnaryOp::Sin => Box::new(f64::sin),
        UnaryOp::Cos => Box::new(f64::cos),
        UnaryOp::Tan => Box::new(f64::tan),
        UnaryOp::Asin => Box::new(f64::asin),
        UnaryOp::Acos => Box::new(f64::acos),
        UnaryOp::Atan => Box::new(f64::atan),
        UnaryOp::Sinh => Box::new(f64::sinh),
        UnaryOp::Cosh => Box::new(f64::cosh),
        UnaryOp::Asinh => Box::new(f64::asinh),
        UnaryOp::Acosh => Box::new(f64::acosh),
        UnaryOp::Atanh => Box::new(f64::atanh),
        UnaryOp::Erf => Box::new(libm::erf),
        UnaryOp::Sigmoid => Box::new(sigmoid),
        UnaryOp::Tanh => Box::new(f64::tanh),
        UnaryOp::Relu => Box::new(|x| if x < 0.0 { 0.0 } else { x }),
        UnaryOp::Softplus => Box::new(softplus),
        UnaryOp::Softsign => Box::new(|x| x / (1.0 + x.abs())),
        UnaryOp::Mish => Box::new(|x| x * softplus(x).tanh()),
        UnaryOp::HardSwish => Box::new(|x| x * (x / 6.0 + 0.5).clamp(0.0, 1.0)),
        &UnaryOp::LeakyRelu { alpha } => Box::new(move |x| if x > 0.0 { x } else { x * alpha as f64 }),
        &UnaryOp::Elu { alpha } => Box::new(move |x| if x > 0.0 { x } else { alpha as f64 * x.exp_m1() }),
        &UnaryOp::Celu { alpha } => {
            let a = alpha as f64;
            Box::new(move |x| max_nan(x, 0.0) + min_nan(a * (x / a).exp_m1(), 0.0))
        }
        &UnaryOp::Selu { alpha, gamma } => {
            let (a, g) = (alpha as f64, gamma as f64);
            Box::new(move |x| g * if x > 0.0 { x } else { a * x.exp_m1() })
        }
        &UnaryOp::HardSigmoid { alpha, beta } => {
            let (a, b) = (alpha as f64, beta as f64);
            Box::new(move |x| (a * x + b).clamp(0.0, 1.0))
        }
        &UnaryOp::ThresholdedRelu { alpha } => Box::new(move |x| if x > alpha as f64 { x } else { 0.0 }),
        &UnaryOp::Shrink { bias, lambd } => Box::new(shrink(bias as f64, lambd as f64)),
        UnaryOp::Gelu { approximate: GeluApproximation::None } => {
            Box::new(|x| 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)))
        }
        UnaryOp::Gelu { approximate: GeluApproximation::Tanh } => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            Box::new(move |x| 0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh()))
        }
        &UnaryOp::Swish { alpha } => Box::new(move |x| x * sigmoid(alpha as f64 * x)),
        UnaryOp::Not | UnaryOp::BitwiseNot | UnaryOp::IsNaN | UnaryOp::IsInf { .. } => return None,
    };
    Some(f)
}

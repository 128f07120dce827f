//! Elementwise ops: `Unary`, `Binary`, `Variadic`, `Where` and `Clip`.
//!
//! Inputs broadcast with numpy rules. Float types compute through `f64` and
//! round once to the input type (see [`num`]); integer types use
//! two's-complement wrapping, which is what ONNX's reference (numpy) does on
//! overflow. Integer division or remainder by zero is undefined in ONNX and
//! is reported as an error rather than given an arbitrary value.

pub(crate) mod num;
#[cfg(test)]
pub(crate) mod test_util;
mod unary;

use super::{OpContext, OpResult};
use crate::util::{opt_tensor_arg, single, tensor_arg};
use ndarray::{ArrayBase, ArrayD, Data, IxDyn, Zip};
use num::{
    Int, Real, broadcast_all, broadcast_to, match_int, match_int2, match_real, match_real2, max_nan, min_nan, try_zip2,
    zip2,
};
use sharc_ir::{Array, BinaryOp, DType, Element, EvalError, Op, Tensor, TensorData, Value, VariadicOp};
use std::cmp::Ordering;

/// Runs the op if it belongs to this family.
pub fn run(op: &Op, inputs: &[Option<Value>], _cx: &OpContext) -> OpResult {
    let result = match op {
        Op::Unary(u) => tensor_arg(inputs, 0, "X").and_then(|x| unary::unary(u, x)),
        Op::Binary(b) => binary(b, inputs),
        Op::Variadic(v) => variadic(*v, inputs),
        Op::Where => where_(inputs),
        Op::Clip => clip(inputs),
        _ => return None,
    };
    Some(result.and_then(single))
}

/// The error for an input type the op does not accept.
pub(crate) fn bad_type(op: &str, dtype: DType) -> EvalError {
    EvalError::new(format!("{op} does not accept {dtype} inputs"))
}

/// The error for two inputs that must share a type but do not.
fn type_mismatch(op: &str, a: DType, b: DType) -> EvalError {
    EvalError::new(format!("{op} needs inputs of one type, got {a} and {b}"))
}

/// Applies a function to every element of an array, giving a tensor.
pub(crate) fn map_tensor<T, U: Element, S: Data<Elem = T>>(a: &ArrayBase<S, IxDyn>, f: impl FnMut(&T) -> U) -> Tensor {
    Tensor::from(a.map(f))
}

/// Arithmetic on two operands of one type.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    /// Remainder with the sign of the divisor (numpy's `mod`, ONNX `fmod=0`).
    Mod,
    /// Remainder with the sign of the dividend (C's `fmod`, ONNX `fmod=1`).
    FMod,
}

fn binary(op: &BinaryOp, inputs: &[Option<Value>]) -> Result<Tensor, EvalError> {
    let name = op.onnx_name();
    let a = tensor_arg(inputs, 0, "A")?;
    let b = tensor_arg(inputs, 1, "B")?;
    if *op == BinaryOp::Pow {
        return pow(a, b);
    }
    if a.dtype() != b.dtype() {
        return Err(type_mismatch(name, a.dtype(), b.dtype()));
    }
    let arith = match op {
        BinaryOp::Add => Some(Arith::Add),
        BinaryOp::Sub => Some(Arith::Sub),
        BinaryOp::Mul => Some(Arith::Mul),
        BinaryOp::Div => Some(Arith::Div),
        BinaryOp::Mod { fmod: false } => Some(Arith::Mod),
        BinaryOp::Mod { fmod: true } => Some(Arith::FMod),
        _ => None,
    };
    if let Some(k) = arith {
        return match_real2!(a.data(), b.data(), (x, y) => real_arith(k, x, y),
            _ => match_int2!(a.data(), b.data(), (x, y) => int_arith(k, x, y),
                _ => Err(bad_type(name, a.dtype()))));
    }
    match op {
        BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => match (a.data(), b.data()) {
            (TensorData::Bool(x), TensorData::Bool(y)) => {
                let f = match op {
                    BinaryOp::And => |p: bool, q: bool| p && q,
                    BinaryOp::Or => |p: bool, q: bool| p || q,
                    _ => |p: bool, q: bool| p != q,
                };
                Ok(Tensor::from(zip2(x, y, |p, q| f(*p, *q))?))
            }
            _ => Err(bad_type(name, a.dtype())),
        },
        BinaryOp::Equal | BinaryOp::Less | BinaryOp::LessOrEqual | BinaryOp::Greater | BinaryOp::GreaterOrEqual => {
            compare(op, a, b)
        }
        BinaryOp::BitwiseAnd | BinaryOp::BitwiseOr | BinaryOp::BitwiseXor => {
            match_int2!(a.data(), b.data(), (x, y) => Ok(bitwise(op, x, y)?), _ => Err(bad_type(name, a.dtype())))
        }
        BinaryOp::BitShift { left } => {
            match_int2!(a.data(), b.data(), (x, y) => Ok(Tensor::from(zip2(x, y, |p, q| shift(*p, *q, *left))?)),
                _ => Err(bad_type(name, a.dtype())))
        }
        BinaryOp::PRelu => match_real2!(a.data(), b.data(), (x, s) => prelu(x, s, |p, q| {
                if p.to_f64() > 0.0 { p } else { Real::from_f64(p.to_f64() * q.to_f64()) }
            }),
            _ => match_int2!(a.data(), b.data(), (x, s) => prelu(x, s, |p, q| if p > Int::ZERO { p } else { p.wrapping_mul(q) }),
                _ => Err(bad_type(name, a.dtype())))),
        _ => Err(EvalError::unsupported(format!("binary op {name} is not implemented"))),
    }
}

fn real_arith<T: Real>(k: Arith, x: &Array<T>, y: &Array<T>) -> Result<Tensor, EvalError> {
    let f: fn(f64, f64) -> f64 = match k {
        Arith::Add => |p, q| p + q,
        Arith::Sub => |p, q| p - q,
        Arith::Mul => |p, q| p * q,
        Arith::Div => |p, q| p / q,
        Arith::Mod => floor_mod,
        Arith::FMod => |p, q| p % q,
    };
    Ok(Tensor::from(zip2(x, y, |p, q| T::from_f64(f(p.to_f64(), q.to_f64())))?))
}

/// numpy's `mod` for floats: the remainder takes the divisor's sign. The
/// special cases are those ONNX's `Mod` lists for `fmod=0`: a zero result
/// takes the divisor's sign, an infinite divisor of the other sign is
/// returned as is, and a zero divisor or infinite dividend gives NaN.
pub(crate) fn floor_mod(a: f64, b: f64) -> f64 {
    let m = a % b;
    if m == 0.0 {
        0f64.copysign(b)
    } else if (b < 0.0) != (m < 0.0) && !m.is_nan() {
        m + b
    } else {
        m
    }
}

fn int_arith<T: Int>(k: Arith, x: &Array<T>, y: &Array<T>) -> Result<Tensor, EvalError> {
    let div_zero = || EvalError::new("integer division by zero");
    let out = try_zip2(x, y, |&p, &q| match k {
        Arith::Add => Ok(p.wrapping_add(q)),
        Arith::Sub => Ok(p.wrapping_sub(q)),
        Arith::Mul => Ok(p.wrapping_mul(q)),
        Arith::Div => p.checked_div_trunc(q).ok_or_else(div_zero),
        Arith::FMod => p.checked_rem_trunc(q).ok_or_else(div_zero),
        Arith::Mod => {
            let r = p.checked_rem_trunc(q).ok_or_else(div_zero)?;
            Ok(if r != T::ZERO && ((r < T::ZERO) != (q < T::ZERO)) { r.wrapping_add(q) } else { r })
        }
    })?;
    Ok(Tensor::from(out))
}

fn compare(op: &BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor, EvalError> {
    let test = |o: Option<Ordering>| match op {
        BinaryOp::Equal => o == Some(Ordering::Equal),
        BinaryOp::Less => o == Some(Ordering::Less),
        BinaryOp::LessOrEqual => matches!(o, Some(Ordering::Less | Ordering::Equal)),
        BinaryOp::Greater => o == Some(Ordering::Greater),
        _ => matches!(o, Some(Ordering::Greater | Ordering::Equal)),
    };
    fn go<T: PartialOrd>(
        x: &Array<T>,
        y: &Array<T>,
        test: impl Fn(Option<Ordering>) -> bool,
    ) -> Result<Tensor, EvalError> {
        Ok(Tensor::from(zip2(x, y, |p, q| test(p.partial_cmp(q)))?))
    }
    match_real2!(a.data(), b.data(), (x, y) => go(x, y, test),
    _ => match_int2!(a.data(), b.data(), (x, y) => go(x, y, test),
        _ => match (a.data(), b.data()) {
            (TensorData::Bool(x), TensorData::Bool(y)) => go(x, y, test),
            (TensorData::String(x), TensorData::String(y)) => go(x, y, test),
            _ => Err(bad_type(op.onnx_name(), a.dtype())),
        }))
}

fn bitwise<T: Int>(op: &BinaryOp, x: &Array<T>, y: &Array<T>) -> Result<Tensor, EvalError> {
    let f: fn(T, T) -> T = match op {
        BinaryOp::BitwiseAnd => T::bitand,
        BinaryOp::BitwiseOr => T::bitor,
        _ => T::bitxor,
    };
    Ok(Tensor::from(zip2(x, y, |p, q| f(*p, *q))?))
}

/// ONNX `BitShift`: a shift by a negative amount or by the width or more
/// leaves only what sign extension gives (-1 for a right shift of a negative
/// value, else 0).
fn shift<T: Int>(x: T, n: T, left: bool) -> T {
    let n = n.to_i128();
    if n < 0 || n >= T::BITS as i128 {
        if !left && x < T::ZERO { T::from_i128_wrapping(-1) } else { T::ZERO }
    } else if left {
        x.shl(n as u32)
    } else {
        x.shr(n as u32)
    }
}

/// `PRelu`: the slope broadcasts to X (unidirectionally), so the output has
/// X's shape.
fn prelu<T: Element + Copy>(x: &Array<T>, slope: &Array<T>, f: impl Fn(T, T) -> T) -> Result<Tensor, EvalError> {
    let s = broadcast_to(slope, x.shape()).map_err(|_| {
        EvalError::new(format!("slope of shape {:?} does not broadcast to X {:?}", slope.shape(), x.shape()))
    })?;
    Ok(Tensor::from(Zip::from(x).and(&s).map_collect(|&p, &q| f(p, q))))
}

/// The exponent of `Pow`, which may have another type than the base.
enum Exponent {
    Real(ArrayD<f64>),
    Int(ArrayD<i128>),
}

fn pow(a: &Tensor, b: &Tensor) -> Result<Tensor, EvalError> {
    let e = match_real!(b.data(), e => Exponent::Real(e.map(|v| v.to_f64())),
        _ => match_int!(b.data(), e => Exponent::Int(e.map(|v| v.to_i128())),
            _ => return Err(EvalError::new(format!("Pow does not accept a {} exponent", b.dtype())))));
    match_real!(a.data(), x => pow_real(x, &e), _ => match_int!(a.data(), x => pow_int(x, &e), _ => Err(bad_type("Pow", a.dtype()))))
}

fn pow_real<T: Real>(x: &Array<T>, e: &Exponent) -> Result<Tensor, EvalError> {
    let x = x.map(|v| v.to_f64());
    let out = match e {
        Exponent::Real(e) => zip2(&x, e, |p, q| T::from_f64(p.powf(*q)))?,
        Exponent::Int(e) => zip2(&x, e, |p, q| T::from_f64(p.powf(*q as f64)))?,
    };
    Ok(Tensor::from(out))
}

fn pow_int<T: Int>(x: &Array<T>, e: &Exponent) -> Result<Tensor, EvalError> {
    let out = match e {
        // numpy computes an integer base with a float exponent in f64 and
        // truncates the result back.
        Exponent::Real(e) => zip2(x, e, |p, q| {
            let v = p.to_f64().powf(*q);
            T::from_i128_wrapping(if v.is_nan() { 0 } else { v.trunc() as i128 })
        })?,
        Exponent::Int(e) => try_zip2(x, e, |p, q| int_pow(*p, *q))?,
    };
    Ok(Tensor::from(out))
}

/// `base^exp` with wrapping multiplication. A negative exponent gives the
/// truncated value of `1 / base^|exp|`, which is 0 unless `|base| = 1`.
fn int_pow<T: Int>(base: T, exp: i128) -> Result<T, EvalError> {
    if exp < 0 {
        return match base.to_i128() {
            0 => Err(EvalError::new("Pow: zero to a negative integer power")),
            1 => Ok(T::ONE),
            -1 => Ok(if exp % 2 == 0 { T::ONE } else { base }),
            _ => Ok(T::ZERO),
        };
    }
    let (mut result, mut b, mut e) = (T::ONE, base, exp as u128);
    while e > 0 {
        if e & 1 == 1 {
            result = result.wrapping_mul(b);
        }
        b = b.wrapping_mul(b);
        e >>= 1;
    }
    Ok(result)
}

/// All present inputs of a variadic op, which must share one type.
fn same_typed_inputs<'a>(op: &str, inputs: &'a [Option<Value>]) -> Result<Vec<&'a Tensor>, EvalError> {
    if inputs.is_empty() {
        return Err(EvalError::new(format!("{op} needs at least one input")));
    }
    let ts = (0..inputs.len()).map(|i| tensor_arg(inputs, i, "data")).collect::<Result<Vec<_>, _>>()?;
    let d = ts[0].dtype();
    if let Some(t) = ts.iter().find(|t| t.dtype() != d) {
        return Err(type_mismatch(op, d, t.dtype()));
    }
    Ok(ts)
}

fn arrays<'a, T: Element>(ts: &[&'a Tensor]) -> Vec<&'a Array<T>> {
    // `same_typed_inputs` checked that every tensor holds T.
    ts.iter().filter_map(|t| t.as_array::<T>()).collect()
}

fn variadic(op: VariadicOp, inputs: &[Option<Value>]) -> Result<Tensor, EvalError> {
    let name = op.onnx_name();
    let ts = same_typed_inputs(name, inputs)?;
    let shape = broadcast_all(ts.iter().map(|t| t.shape()))?;
    match ts[0].dtype() {
        DType::F32 => variadic_real::<f32>(op, &arrays(&ts), &shape),
        DType::F64 => variadic_real::<f64>(op, &arrays(&ts), &shape),
        DType::F16 => variadic_real::<half::f16>(op, &arrays(&ts), &shape),
        DType::BF16 => variadic_real::<half::bf16>(op, &arrays(&ts), &shape),
        DType::I8 => variadic_int::<i8>(op, &arrays(&ts), &shape),
        DType::I16 => variadic_int::<i16>(op, &arrays(&ts), &shape),
        DType::I32 => variadic_int::<i32>(op, &arrays(&ts), &shape),
        DType::I64 => variadic_int::<i64>(op, &arrays(&ts), &shape),
        DType::U8 => variadic_int::<u8>(op, &arrays(&ts), &shape),
        DType::U16 => variadic_int::<u16>(op, &arrays(&ts), &shape),
        DType::U32 => variadic_int::<u32>(op, &arrays(&ts), &shape),
        DType::U64 => variadic_int::<u64>(op, &arrays(&ts), &shape),
        d => Err(bad_type(name, d)),
    }
}

/// Folds the inputs in `f64` and rounds once: `Sum` and `Mean` of `f16`
/// inputs are then correctly rounded sums, not a chain of `f16` roundings.
fn variadic_real<T: Real>(op: VariadicOp, xs: &[&Array<T>], shape: &[usize]) -> Result<Tensor, EvalError> {
    let f: fn(f64, f64) -> f64 = match op {
        VariadicOp::Sum | VariadicOp::Mean => |a, b| a + b,
        VariadicOp::Max => max_nan,
        VariadicOp::Min => min_nan,
    };
    let mut acc = broadcast_to(xs[0], shape)?.map(|v| v.to_f64());
    for x in &xs[1..] {
        Zip::from(&mut acc).and(&broadcast_to(x, shape)?).for_each(|a, v| *a = f(*a, v.to_f64()));
    }
    let n = xs.len() as f64;
    let mean = op == VariadicOp::Mean;
    Ok(map_tensor(&acc, |&v| T::from_f64(if mean { v / n } else { v })))
}

fn variadic_int<T: Int>(op: VariadicOp, xs: &[&Array<T>], shape: &[usize]) -> Result<Tensor, EvalError> {
    let f: fn(T, T) -> T = match op {
        VariadicOp::Sum => T::wrapping_add,
        VariadicOp::Max => |a, b| a.max(b),
        VariadicOp::Min => |a, b| a.min(b),
        VariadicOp::Mean => return Err(bad_type("Mean", T::DTYPE)),
    };
    let mut acc = broadcast_to(xs[0], shape)?.to_owned();
    for x in &xs[1..] {
        Zip::from(&mut acc).and(&broadcast_to(x, shape)?).for_each(|a, v| *a = f(*a, *v));
    }
    Ok(Tensor::from(acc))
}

fn where_(inputs: &[Option<Value>]) -> Result<Tensor, EvalError> {
    let c = tensor_arg(inputs, 0, "condition")?;
    let x = tensor_arg(inputs, 1, "X")?;
    let y = tensor_arg(inputs, 2, "Y")?;
    let TensorData::Bool(c) = c.data() else {
        return Err(EvalError::new(format!("Where's condition must be bool, got {}", c.dtype())));
    };
    if x.dtype() != y.dtype() {
        return Err(type_mismatch("Where", x.dtype(), y.dtype()));
    }
    let shape = broadcast_all([c.shape(), x.shape(), y.shape()])?;
    fn pick<T: Clone>(c: &Array<bool>, x: &Array<T>, y: &Array<T>, shape: &[usize]) -> Result<Array<T>, EvalError> {
        let (cv, xv, yv) = (broadcast_to(c, shape)?, broadcast_to(x, shape)?, broadcast_to(y, shape)?);
        Ok(Zip::from(&cv).and(&xv).and(&yv).map_collect(|&c, a, b| if c { a.clone() } else { b.clone() }).into_shared())
    }
    macro_rules! select {
        ($($v:ident),*) => {
            match (x.data(), y.data()) {
                $( (TensorData::$v(a), TensorData::$v(b)) => TensorData::$v(pick(c, a, b, &shape)?), )*
                (TensorData::Narrow { dtype, codes: a }, TensorData::Narrow { codes: b, .. }) => {
                    TensorData::Narrow { dtype: *dtype, codes: pick(c, a, b, &shape)? }
                }
                _ => return Err(type_mismatch("Where", x.dtype(), y.dtype())),
            }
        };
    }
    let data = select!(F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64, Bool, String, Complex64, Complex128);
    Ok(Tensor::new(data))
}

/// `Clip`: `min(max(x, lo), hi)` with absent bounds ignored; when `lo > hi`
/// every element becomes `hi`. NaN elements stay NaN.
fn clip(inputs: &[Option<Value>]) -> Result<Tensor, EvalError> {
    let x = tensor_arg(inputs, 0, "input")?;
    let lo = opt_tensor_arg(inputs, 1, "min")?;
    let hi = opt_tensor_arg(inputs, 2, "max")?;
    for (b, what) in [(lo, "min"), (hi, "max")] {
        if let Some(b) = b {
            if b.dtype() != x.dtype() {
                return Err(EvalError::new(format!("Clip's {what} is {} but the input is {}", b.dtype(), x.dtype())));
            }
            if b.len() != 1 {
                return Err(EvalError::new(format!("Clip's {what} must be a scalar, got shape {:?}", b.shape())));
            }
        }
    }
    fn bound<T: Element + Copy>(b: Option<&Tensor>) -> Option<T> {
        b.and_then(|b| b.as_array::<T>()).and_then(|a| a.iter().next().copied())
    }
    fn go<T: Element + Copy + PartialOrd>(x: &Array<T>, lo: Option<T>, hi: Option<T>) -> Tensor {
        map_tensor(x, |&v| {
            let v = match lo {
                Some(l) if v < l => l,
                _ => v,
            };
            match hi {
                Some(h) if v > h => h,
                _ => v,
            }
        })
    }
    match_real!(x.data(), a => Ok(go(a, bound(lo), bound(hi))),
        _ => match_int!(x.data(), a => Ok(go(a, bound(lo), bound(hi))), _ => Err(bad_type("Clip", x.dtype()))))
}

#[cfg(test)]
mod tests;

//! The scalar statements inside `linalg.generic` regions: constants,
//! arithmetic with ONNX semantics (safe integer division, NaN-preserving
//! sign, Python-style modulo), conversions, and every unary and binary op.

use super::{elem_type, float_bits, is_unsigned};
use sharc_ir::op::GeluApproximation;
use sharc_ir::{BinaryOp, DType, UnaryOp};

/// The scalar statements of a `linalg.generic` region.
pub(crate) struct Body {
    pub(crate) prefix: String,
    pub(crate) n: usize,
    pub(crate) lines: Vec<String>,
}

pub(crate) type BodyResult = Result<String, String>;

impl Body {
    pub(crate) fn new(prefix: String) -> Body {
        Body { prefix, n: 0, lines: Vec::new() }
    }

    /// Appends `%x = rhs` and returns `%x`.
    pub(crate) fn op(&mut self, rhs: impl AsRef<str>) -> String {
        let name = format!("%{}_{}", self.prefix, self.n);
        self.n += 1;
        self.lines.push(format!("{name} = {}", rhs.as_ref()));
        name
    }

    pub(crate) fn fconst(&mut self, v: f64, dt: DType) -> String {
        let e = elem_type(dt).unwrap_or("f32");
        self.op(format!("arith.constant {} : {e}", float_bits(v, dt)))
    }

    pub(crate) fn iconst(&mut self, v: i64, ty: &str) -> String {
        if ty == "i1" {
            // A bool literal carries its type: no `: i1` after it.
            return self.op(format!("arith.constant {}", if v != 0 { "true" } else { "false" }));
        }
        self.op(format!("arith.constant {v} : {ty}"))
    }

    /// A constant of the given dtype (float or integer).
    pub(crate) fn konst(&mut self, v: f64, dt: DType) -> String {
        if dt.is_float() { self.fconst(v, dt) } else { self.iconst(v as i64, elem_type(dt).unwrap_or("i64")) }
    }

    pub(crate) fn index(&mut self, d: usize) -> String {
        self.op(format!("linalg.index {d} : index"))
    }

    pub(crate) fn f2(&mut self, op: &str, a: &str, b: &str, dt: DType) -> String {
        let e = elem_type(dt).unwrap_or("f32");
        self.op(format!("{op} {a}, {b} : {e}"))
    }

    pub(crate) fn f1(&mut self, op: &str, a: &str, dt: DType) -> String {
        let e = elem_type(dt).unwrap_or("f32");
        self.op(format!("{op} {a} : {e}"))
    }

    pub(crate) fn select(&mut self, c: &str, a: &str, b: &str, dt: DType) -> String {
        let e = elem_type(dt).unwrap_or("f32");
        self.op(format!("arith.select {c}, {a}, {b} : {e}"))
    }

    pub(crate) fn cmp(&mut self, pred: &str, a: &str, b: &str, dt: DType) -> String {
        let e = elem_type(dt).unwrap_or("f32");
        if dt.is_float() {
            self.op(format!("arith.cmpf {pred}, {a}, {b} : {e}"))
        } else {
            self.op(format!("arith.cmpi {pred}, {a}, {b} : {e}"))
        }
    }

    pub(crate) fn add(&mut self, a: &str, b: &str, dt: DType) -> String {
        self.f2(if dt.is_float() { "arith.addf" } else { "arith.addi" }, a, b, dt)
    }
    pub(crate) fn sub(&mut self, a: &str, b: &str, dt: DType) -> String {
        self.f2(if dt.is_float() { "arith.subf" } else { "arith.subi" }, a, b, dt)
    }
    pub(crate) fn mul(&mut self, a: &str, b: &str, dt: DType) -> String {
        self.f2(if dt.is_float() { "arith.mulf" } else { "arith.muli" }, a, b, dt)
    }
    pub(crate) fn max(&mut self, a: &str, b: &str, dt: DType) -> String {
        let op = if dt.is_float() {
            "arith.maximumf"
        } else if is_unsigned(dt) {
            "arith.maxui"
        } else {
            "arith.maxsi"
        };
        self.f2(op, a, b, dt)
    }
    pub(crate) fn min(&mut self, a: &str, b: &str, dt: DType) -> String {
        let op = if dt.is_float() {
            "arith.minimumf"
        } else if is_unsigned(dt) {
            "arith.minui"
        } else {
            "arith.minsi"
        };
        self.f2(op, a, b, dt)
    }

    /// Integer division that yields 0 for a zero divisor instead of the
    /// undefined behaviour (a trap on x86) of LLVM's `sdiv`.
    pub(crate) fn safe_idiv(&mut self, a: &str, b: &str, dt: DType, rem: bool) -> String {
        let e = elem_type(dt).unwrap_or("i64");
        let zero = self.iconst(0, e);
        let one = self.iconst(1, e);
        let is0 = self.op(format!("arith.cmpi eq, {b}, {zero} : {e}"));
        let b1 = self.op(format!("arith.select {is0}, {one}, {b} : {e}"));
        let op = match (rem, is_unsigned(dt)) {
            (false, false) => "arith.divsi",
            (false, true) => "arith.divui",
            (true, false) => "arith.remsi",
            (true, true) => "arith.remui",
        };
        let q = self.op(format!("{op} {a}, {b1} : {e}"));
        self.op(format!("arith.select {is0}, {zero}, {q} : {e}"))
    }

    pub(crate) fn div(&mut self, a: &str, b: &str, dt: DType) -> String {
        if dt.is_float() { self.f2("arith.divf", a, b, dt) } else { self.safe_idiv(a, b, dt, false) }
    }

    pub(crate) fn sigmoid(&mut self, x: &str, dt: DType) -> String {
        let one = self.fconst(1.0, dt);
        let n = self.f1("arith.negf", x, dt);
        let e = self.f1("math.exp", &n, dt);
        let d = self.f2("arith.addf", &one, &e, dt);
        self.f2("arith.divf", &one, &d, dt)
    }

    /// `log(1 + exp(x))` without overflow for large `x`.
    pub(crate) fn softplus(&mut self, x: &str, dt: DType) -> String {
        let zero = self.fconst(0.0, dt);
        let ax = self.f1("math.absf", x, dt);
        let nax = self.f1("arith.negf", &ax, dt);
        let e = self.f1("math.exp", &nax, dt);
        let l = self.f1("math.log1p", &e, dt);
        let m = self.f2("arith.maximumf", x, &zero, dt);
        self.f2("arith.addf", &m, &l, dt)
    }

    /// Converts a scalar between element types with ONNX `Cast` semantics
    /// (float to bool is `x != 0`, bool to number is 0 or 1).
    pub(crate) fn convert(&mut self, x: &str, from: DType, to: DType) -> BodyResult {
        let (fe, te) = (elem_type(from).ok_or("no element type")?, elem_type(to).ok_or("no element type")?);
        if from == to || fe == te && from.is_float() == to.is_float() && !(is_unsigned(from) ^ is_unsigned(to)) {
            return Ok(x.to_string());
        }
        if to == DType::Bool {
            let zero = self.konst(0.0, from);
            return Ok(if from.is_float() {
                self.op(format!("arith.cmpf une, {x}, {zero} : {fe}"))
            } else {
                self.op(format!("arith.cmpi ne, {x}, {zero} : {fe}"))
            });
        }
        let fw = from.bit_width().ok_or("no width")?;
        let tw = to.bit_width().ok_or("no width")?;
        Ok(match (from.is_float(), to.is_float()) {
            (true, true) if fw < tw => self.op(format!("arith.extf {x} : {fe} to {te}")),
            (true, true) if fw > tw => self.op(format!("arith.truncf {x} : {fe} to {te}")),
            (true, true) => {
                let wide = self.op(format!("arith.extf {x} : {fe} to f32"));
                self.op(format!("arith.truncf {wide} : f32 to {te}"))
            }
            (false, true) if is_unsigned(from) => self.op(format!("arith.uitofp {x} : {fe} to {te}")),
            (false, true) => self.op(format!("arith.sitofp {x} : {fe} to {te}")),
            (true, false) if is_unsigned(to) => self.op(format!("arith.fptoui {x} : {fe} to {te}")),
            (true, false) => self.op(format!("arith.fptosi {x} : {fe} to {te}")),
            (false, false) if fw < tw && is_unsigned(from) => self.op(format!("arith.extui {x} : {fe} to {te}")),
            (false, false) if fw < tw => self.op(format!("arith.extsi {x} : {fe} to {te}")),
            (false, false) if fw > tw => self.op(format!("arith.trunci {x} : {fe} to {te}")),
            (false, false) => x.to_string(),
        })
    }
}

/// The scalar form of a unary op.
pub(crate) fn unary(b: &mut Body, op: &UnaryOp, x: &str, dt: DType) -> BodyResult {
    let f = dt.is_float();
    let need_float = |name: &str| -> Result<(), String> {
        if f { Ok(()) } else { Err(format!("{name} on {dt} is not lowered (float only)")) }
    };
    Ok(match op {
        UnaryOp::Abs if f => b.f1("math.absf", x, dt),
        UnaryOp::Abs if is_unsigned(dt) => x.to_string(),
        UnaryOp::Abs => b.f1("math.absi", x, dt),
        UnaryOp::Neg if f => b.f1("arith.negf", x, dt),
        UnaryOp::Neg => {
            let z = b.konst(0.0, dt);
            b.sub(&z, x, dt)
        }
        UnaryOp::Sign => {
            let z = b.konst(0.0, dt);
            let one = b.konst(1.0, dt);
            let m1 = b.konst(-1.0, dt);
            let (gt, lt) = if f {
                ("ogt", "olt")
            } else if is_unsigned(dt) {
                ("ugt", "ult")
            } else {
                ("sgt", "slt")
            };
            let pos = b.cmp(gt, x, &z, dt);
            let neg = b.cmp(lt, x, &z, dt);
            let s = b.select(&neg, &m1, &z, dt);
            let s = b.select(&pos, &one, &s, dt);
            if f {
                // NaN stays NaN.
                let nan = b.cmp("uno", x, x, dt);
                b.select(&nan, x, &s, dt)
            } else {
                s
            }
        }
        UnaryOp::Not => {
            let t = b.iconst(1, "i1");
            b.op(format!("arith.xori {x}, {t} : i1"))
        }
        UnaryOp::BitwiseNot => {
            let e = elem_type(dt).ok_or("no element type")?;
            let m = b.iconst(-1, e);
            b.op(format!("arith.xori {x}, {m} : {e}"))
        }
        UnaryOp::Relu => {
            let z = b.konst(0.0, dt);
            b.max(x, &z, dt)
        }
        _ => {
            need_float(op_name(op))?;
            float_unary(b, op, x, dt)?
        }
    })
}

fn op_name(op: &UnaryOp) -> &'static str {
    op.onnx_name()
}

fn float_unary(b: &mut Body, op: &UnaryOp, x: &str, dt: DType) -> BodyResult {
    let math = |b: &mut Body, name: &str| b.f1(name, x, dt);
    Ok(match op {
        UnaryOp::Exp => math(b, "math.exp"),
        UnaryOp::Log => math(b, "math.log"),
        UnaryOp::Sqrt => math(b, "math.sqrt"),
        UnaryOp::Reciprocal => {
            let one = b.fconst(1.0, dt);
            b.f2("arith.divf", &one, x, dt)
        }
        UnaryOp::Floor => math(b, "math.floor"),
        UnaryOp::Ceil => math(b, "math.ceil"),
        UnaryOp::Round => math(b, "math.roundeven"),
        UnaryOp::Sin => math(b, "math.sin"),
        UnaryOp::Cos => math(b, "math.cos"),
        UnaryOp::Tan => math(b, "math.tan"),
        UnaryOp::Asin => math(b, "math.asin"),
        UnaryOp::Acos => math(b, "math.acos"),
        UnaryOp::Atan => math(b, "math.atan"),
        UnaryOp::Sinh => math(b, "math.sinh"),
        UnaryOp::Cosh => math(b, "math.cosh"),
        UnaryOp::Asinh => math(b, "math.asinh"),
        UnaryOp::Acosh => math(b, "math.acosh"),
        UnaryOp::Atanh => math(b, "math.atanh"),
        UnaryOp::Erf => math(b, "math.erf"),
        UnaryOp::Tanh => math(b, "math.tanh"),
        UnaryOp::Sigmoid => b.sigmoid(x, dt),
        UnaryOp::Softplus => b.softplus(x, dt),
        UnaryOp::Softsign => {
            let one = b.fconst(1.0, dt);
            let a = b.f1("math.absf", x, dt);
            let d = b.f2("arith.addf", &one, &a, dt);
            b.f2("arith.divf", x, &d, dt)
        }
        UnaryOp::Mish => {
            let sp = b.softplus(x, dt);
            let t = b.f1("math.tanh", &sp, dt);
            b.f2("arith.mulf", x, &t, dt)
        }
        UnaryOp::HardSwish | UnaryOp::HardSigmoid { .. } => {
            let (alpha, beta) = match op {
                UnaryOp::HardSigmoid { alpha, beta } => (*alpha as f64, *beta as f64),
                _ => (1.0 / 6.0, 0.5),
            };
            let a = b.fconst(alpha, dt);
            let bb = b.fconst(beta, dt);
            let z = b.fconst(0.0, dt);
            let one = b.fconst(1.0, dt);
            let t = b.f2("arith.mulf", &a, x, dt);
            let t = b.f2("arith.addf", &t, &bb, dt);
            let t = b.f2("arith.minimumf", &t, &one, dt);
            let t = b.f2("arith.maximumf", &t, &z, dt);
            if matches!(op, UnaryOp::HardSwish) { b.f2("arith.mulf", x, &t, dt) } else { t }
        }
        UnaryOp::LeakyRelu { alpha } => {
            let z = b.fconst(0.0, dt);
            let a = b.fconst(*alpha as f64, dt);
            let ax = b.f2("arith.mulf", &a, x, dt);
            let neg = b.cmp("olt", x, &z, dt);
            b.select(&neg, &ax, x, dt)
        }
        UnaryOp::Elu { alpha } => {
            let z = b.fconst(0.0, dt);
            let a = b.fconst(*alpha as f64, dt);
            let em1 = b.f1("math.expm1", x, dt);
            let v = b.f2("arith.mulf", &a, &em1, dt);
            let neg = b.cmp("olt", x, &z, dt);
            b.select(&neg, &v, x, dt)
        }
        UnaryOp::Celu { alpha } => {
            let z = b.fconst(0.0, dt);
            let a = b.fconst(*alpha as f64, dt);
            let q = b.f2("arith.divf", x, &a, dt);
            let em1 = b.f1("math.expm1", &q, dt);
            let v = b.f2("arith.mulf", &a, &em1, dt);
            let lo = b.f2("arith.minimumf", &v, &z, dt);
            let hi = b.f2("arith.maximumf", x, &z, dt);
            b.f2("arith.addf", &hi, &lo, dt)
        }
        UnaryOp::Selu { alpha, gamma } => {
            let z = b.fconst(0.0, dt);
            let a = b.fconst(*alpha as f64, dt);
            let g = b.fconst(*gamma as f64, dt);
            let e = b.f1("math.exp", x, dt);
            let ae = b.f2("arith.mulf", &a, &e, dt);
            let neg = b.f2("arith.subf", &ae, &a, dt);
            let pos = b.cmp("ogt", x, &z, dt);
            let v = b.select(&pos, x, &neg, dt);
            b.f2("arith.mulf", &g, &v, dt)
        }
        UnaryOp::ThresholdedRelu { alpha } => {
            let z = b.fconst(0.0, dt);
            let a = b.fconst(*alpha as f64, dt);
            let gt = b.cmp("ogt", x, &a, dt);
            b.select(&gt, x, &z, dt)
        }
        UnaryOp::Shrink { bias, lambd } => {
            let z = b.fconst(0.0, dt);
            let l = b.fconst(*lambd as f64, dt);
            let nl = b.fconst(-*lambd as f64, dt);
            let bi = b.fconst(*bias as f64, dt);
            let xp = b.f2("arith.addf", x, &bi, dt);
            let xm = b.f2("arith.subf", x, &bi, dt);
            let lt = b.cmp("olt", x, &nl, dt);
            let gt = b.cmp("ogt", x, &l, dt);
            let v = b.select(&gt, &xm, &z, dt);
            b.select(&lt, &xp, &v, dt)
        }
        UnaryOp::Gelu { approximate } => {
            let half = b.fconst(0.5, dt);
            let one = b.fconst(1.0, dt);
            let inner = match approximate {
                GeluApproximation::None => {
                    let r = b.fconst(std::f64::consts::FRAC_1_SQRT_2, dt);
                    let s = b.f2("arith.mulf", x, &r, dt);
                    b.f1("math.erf", &s, dt)
                }
                GeluApproximation::Tanh => {
                    let c = b.fconst((2.0 / std::f64::consts::PI).sqrt(), dt);
                    let k = b.fconst(0.044715, dt);
                    let x2 = b.f2("arith.mulf", x, x, dt);
                    let x3 = b.f2("arith.mulf", &x2, x, dt);
                    let t = b.f2("arith.mulf", &k, &x3, dt);
                    let t = b.f2("arith.addf", x, &t, dt);
                    let t = b.f2("arith.mulf", &c, &t, dt);
                    b.f1("math.tanh", &t, dt)
                }
            };
            let s = b.f2("arith.addf", &one, &inner, dt);
            let h = b.f2("arith.mulf", &half, x, dt);
            b.f2("arith.mulf", &h, &s, dt)
        }
        UnaryOp::Swish { alpha } => {
            let a = b.fconst(*alpha as f64, dt);
            let ax = b.f2("arith.mulf", &a, x, dt);
            let s = b.sigmoid(&ax, dt);
            b.f2("arith.mulf", x, &s, dt)
        }
        UnaryOp::IsNaN => b.cmp("uno", x, x, dt),
        UnaryOp::IsInf { detect_negative, detect_positive } => {
            let pinf = b.fconst(f64::INFINITY, dt);
            let ninf = b.fconst(f64::NEG_INFINITY, dt);
            let p = b.cmp("oeq", x, &pinf, dt);
            let n = b.cmp("oeq", x, &ninf, dt);
            let f = b.iconst(0, "i1");
            let p = if *detect_positive { p } else { f.clone() };
            let n = if *detect_negative { n } else { f };
            b.op(format!("arith.ori {p}, {n} : i1"))
        }
        other => return Err(format!("{} is not lowered", other.onnx_name())),
    })
}

/// The scalar form of a binary op on operands of dtype `dt`.
pub(crate) fn binary(b: &mut Body, op: &BinaryOp, x: &str, y: &str, dt: DType, ydt: DType) -> BodyResult {
    let f = dt.is_float();
    let u = is_unsigned(dt);
    let e = elem_type(dt).ok_or("no element type")?;
    Ok(match op {
        BinaryOp::Add => b.add(x, y, dt),
        BinaryOp::Sub => b.sub(x, y, dt),
        BinaryOp::Mul => b.mul(x, y, dt),
        BinaryOp::Div => b.div(x, y, dt),
        BinaryOp::Pow if f => {
            let y = b.convert(y, ydt, dt)?;
            b.f2("math.powf", x, &y, dt)
        }
        BinaryOp::Pow => return Err(format!("integer Pow on {dt} is not lowered")),
        BinaryOp::Mod { fmod: true } if f => b.f2("arith.remf", x, y, dt),
        BinaryOp::Mod { .. } if f => return Err("Mod with fmod=0 on floats is invalid ONNX".into()),
        BinaryOp::Mod { fmod } => {
            let r = b.safe_idiv(x, y, dt, true);
            if *fmod || u {
                r
            } else {
                // Python's %: the result takes the divisor's sign.
                let z = b.iconst(0, e);
                let rnz = b.op(format!("arith.cmpi ne, {r}, {z} : {e}"));
                let rneg = b.op(format!("arith.cmpi slt, {r}, {z} : {e}"));
                let yneg = b.op(format!("arith.cmpi slt, {y}, {z} : {e}"));
                let diff = b.op(format!("arith.xori {rneg}, {yneg} : i1"));
                let fix = b.op(format!("arith.andi {rnz}, {diff} : i1"));
                let ry = b.op(format!("arith.addi {r}, {y} : {e}"));
                b.op(format!("arith.select {fix}, {ry}, {r} : {e}"))
            }
        }
        BinaryOp::And | BinaryOp::BitwiseAnd => b.op(format!("arith.andi {x}, {y} : {e}")),
        BinaryOp::Or | BinaryOp::BitwiseOr => b.op(format!("arith.ori {x}, {y} : {e}")),
        BinaryOp::Xor | BinaryOp::BitwiseXor => b.op(format!("arith.xori {x}, {y} : {e}")),
        BinaryOp::Equal => b.cmp(if f { "oeq" } else { "eq" }, x, y, dt),
        BinaryOp::Less => b.cmp(
            if f {
                "olt"
            } else if u {
                "ult"
            } else {
                "slt"
            },
            x,
            y,
            dt,
        ),
        BinaryOp::LessOrEqual => b.cmp(
            if f {
                "ole"
            } else if u {
                "ule"
            } else {
                "sle"
            },
            x,
            y,
            dt,
        ),
        BinaryOp::Greater => b.cmp(
            if f {
                "ogt"
            } else if u {
                "ugt"
            } else {
                "sgt"
            },
            x,
            y,
            dt,
        ),
        BinaryOp::GreaterOrEqual => b.cmp(
            if f {
                "oge"
            } else if u {
                "uge"
            } else {
                "sge"
            },
            x,
            y,
            dt,
        ),
        BinaryOp::BitShift { left } => {
            // Shifting by the width or more is poison in LLVM; ONNX's
            // reference (numpy on unsigned types) gives 0.
            let w = b.iconst(dt.bit_width().ok_or("no width")? as i64, e);
            let z = b.iconst(0, e);
            let big = b.op(format!("arith.cmpi uge, {y}, {w} : {e}"));
            let s = b.op(format!("arith.select {big}, {z}, {y} : {e}"));
            let r = b.op(format!("{} {x}, {s} : {e}", if *left { "arith.shli" } else { "arith.shrui" }));
            b.op(format!("arith.select {big}, {z}, {r} : {e}"))
        }
        BinaryOp::PRelu => {
            let z = b.konst(0.0, dt);
            let sx = b.mul(y, x, dt);
            let neg = b.cmp(if f { "olt" } else { "slt" }, x, &z, dt);
            b.select(&neg, &sx, x, dt)
        }
    })
}

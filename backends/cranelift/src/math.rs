//! Transcendental functions written in Cranelift IR, for one `f32` or four
//! lanes of `f32x4` with the same code.
//!
//! Cranelift has no `exp`, `log`, `tanh` or `erf` instruction, and calling
//! libm per element would both forbid vectorisation and cost a call per
//! element. These are range-reduced polynomials accurate to a few ulp over
//! the whole f32 range (checked against libm in the tests below), with IEEE
//! behaviour at the edges: overflow to `inf`, underflow to 0, NaN in → NaN
//! out.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value, types};
use cranelift_frontend::FunctionBuilder;

/// Emits math for one lane type (`f32` or `f32x4`).
pub(crate) struct Math {
    /// The float type: `F32` or `F32X4`.
    pub ty: Type,
    /// Whether the target has a fused multiply-add instruction. Polynomials
    /// and range reductions then use it: one rounding instead of two, and
    /// half the latency on the Horner chain, which is what bounds the speed
    /// of `erf`/`exp` loops. Without it Cranelift would lower `fma` to a
    /// libm call per element, so the separate multiply and add are kept.
    pub fma: bool,
}

impl Math {
    /// The matching 32-bit integer type.
    pub fn int_ty(&self) -> Type {
        if self.ty.is_vector() { types::I32X4 } else { types::I32 }
    }

    /// A float constant of this lane type.
    pub fn f(&self, b: &mut FunctionBuilder, v: f32) -> Value {
        let s = b.ins().f32const(v);
        if self.ty.is_vector() { b.ins().splat(self.ty, s) } else { s }
    }

    /// An i32 constant of the matching integer type.
    pub fn i(&self, b: &mut FunctionBuilder, v: i32) -> Value {
        let s = b.ins().iconst(types::I32, v as i64);
        if self.ty.is_vector() { b.ins().splat(types::I32X4, s) } else { s }
    }

    /// `mask ? x : y` for a mask made by `fcmp` on this lane type.
    pub fn select(&self, b: &mut FunctionBuilder, mask: Value, x: Value, y: Value) -> Value {
        if self.ty.is_vector() {
            let m = if b.func.dfg.value_type(mask) == self.ty {
                mask
            } else {
                b.ins().bitcast(self.ty, MemFlagsData::new(), mask)
            };
            b.ins().bitselect(m, x, y)
        } else {
            b.ins().select(mask, x, y)
        }
    }

    fn to_int(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        b.ins().bitcast(self.int_ty(), MemFlagsData::new(), x)
    }

    fn to_float(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        b.ins().bitcast(self.ty, MemFlagsData::new(), x)
    }

    /// `x * y + z`, fused where the target allows.
    fn mul_add(&self, b: &mut FunctionBuilder, x: Value, y: Value, z: Value) -> Value {
        if self.fma {
            b.ins().fma(x, y, z)
        } else {
            let t = b.ins().fmul(x, y);
            b.ins().fadd(t, z)
        }
    }

    /// Horner evaluation of `c[0] + c[1] x + c[2] x² + ...`.
    fn poly(&self, b: &mut FunctionBuilder, x: Value, c: &[f32]) -> Value {
        let mut acc = self.f(b, *c.last().expect("coefficients"));
        for &k in c.iter().rev().skip(1) {
            let kk = self.f(b, k);
            acc = self.mul_add(b, acc, x, kk);
        }
        acc
    }

    /// `x` limited to `[lo, hi]`, NaN passing through.
    ///
    /// Written as the compare-and-select that Cranelift lowers to one
    /// `maxps`/`minps` each on x86 (`fmax`/`fmin` are an eight-instruction
    /// sequence there, for IEEE NaN and signed-zero rules a clamp against
    /// constants does not need). Those instructions return their second
    /// operand when either is NaN, so `x` goes second.
    pub fn clamp(&self, b: &mut FunctionBuilder, x: Value, lo: f32, hi: f32) -> Value {
        let lo = self.f(b, lo);
        let hi = self.f(b, hi);
        let below = b.ins().fcmp(FloatCC::LessThan, x, lo);
        let x = self.select(b, below, lo, x);
        let above = b.ins().fcmp(FloatCC::LessThan, hi, x);
        self.select(b, above, hi, x)
    }

    /// `e^x`.
    pub fn exp(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        // x = n ln2 + r, e^x = 2^n e^r. Adding 1.5 * 2^23 to x log2(e)
        // rounds it to an integer (the float's ulp there is 1) and leaves
        // that integer in the low mantissa bits, so neither a `nearest` nor
        // a float-to-int conversion (a long saturating sequence on x86) is
        // needed. n is held at 127, the largest normal exponent; it is at
        // least -126 wherever the result is not replaced by 0 below. Every
        // instruction and constant counts here: a softmax's exp loop keeps
        // all of them in the 16 vector registers, and each one more spills.
        const MAGIC: f32 = 12_582_912.0;
        let log2e = self.f(b, std::f32::consts::LOG2_E);
        let magic = self.f(b, MAGIC);
        let k = self.mul_add(b, x, log2e, magic);
        let hi = self.f(b, MAGIC + 127.0);
        let above = b.ins().fcmp(FloatCC::LessThan, hi, k);
        let k = self.select(b, above, hi, k);
        let n = b.ins().fsub(k, magic);
        // ln2 split in two so n*C1 is exact: r = x - n C1 - n C2.
        let c1 = self.f(b, -0.693_359_4);
        let c2 = self.f(b, 2.121_944_4e-4);
        let r = self.mul_add(b, n, c1, x);
        let r = self.mul_add(b, n, c2, r);
        // |r| <= ln2/2, or up to ln2 where n is held at 127 near overflow:
        // a degree-6 fit over that range (`scripts/fit_exp.py`), 1.1e-7
        // relative in f32.
        let p = self.poly(b, r, &[1.0, 1.0, 0.500_002_1, 0.166_670_07, 0.041_622_363, 0.008_325_808, 0.001_622_291_6]);
        // 2^n: k's bits are MAGIC's plus n; rebias to the exponent field.
        let bits = self.to_int(b, k);
        let rebias = self.i(b, MAGIC.to_bits() as i32 - 127);
        let e = b.ins().isub(bits, rebias);
        let e = b.ins().ishl_imm_s(e, 23);
        let scale = self.to_float(b, e);
        // Past the largest result p * 2^127 overflows to inf by itself (p
        // grows with r, and r with x); below the smallest normal result the
        // answer is 0 (not a subnormal, nor the garbage of an exponent
        // below -126): the mask "not below" (true for NaN) ANDed in.
        let y = b.ins().fmul(p, scale);
        let under = self.f(b, -87.336_55);
        let keep = b.ins().fcmp(FloatCC::UnorderedOrGreaterThanOrEqual, x, under);
        if self.ty.is_vector() {
            let keep = self.to_float(b, keep);
            b.ins().band(y, keep)
        } else {
            let zero = self.f(b, 0.0);
            b.ins().select(keep, y, zero)
        }
    }

    /// Natural logarithm.
    pub fn log(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        // Subnormals are scaled into the normal range first.
        let tiny = self.f(b, f32::MIN_POSITIVE);
        let small = b.ins().fcmp(FloatCC::LessThan, x, tiny);
        let k = self.f(b, 8_388_608.0);
        let xs = b.ins().fmul(x, k);
        let xs = self.select(b, small, xs, x);
        let adj_small = self.f(b, -23.0);
        let zero = self.f(b, 0.0);
        let adj = self.select(b, small, adj_small, zero);
        // x = 2^e m, m in [1, 2), then m in [sqrt(1/2), sqrt(2)).
        let bits = self.to_int(b, xs);
        let e = b.ins().ushr_imm_s(bits, 23);
        let ff = self.i(b, 0xff);
        let e = b.ins().band(e, ff);
        let bias = self.i(b, 127);
        let e = b.ins().isub(e, bias);
        let mant = self.i(b, 0x007f_ffff);
        let one_bits = self.i(b, 0x3f80_0000);
        let m = b.ins().band(bits, mant);
        let m = b.ins().bor(m, one_bits);
        let m = self.to_float(b, m);
        let sqrt2 = self.f(b, std::f32::consts::SQRT_2);
        let big = b.ins().fcmp(FloatCC::GreaterThan, m, sqrt2);
        let half = self.f(b, 0.5);
        let mh = b.ins().fmul(m, half);
        let m = self.select(b, big, mh, m);
        let one = self.f(b, 1.0);
        let inc = self.select(b, big, one, zero);
        let ef = b.ins().fcvt_from_sint(self.ty, e);
        let ef = b.ins().fadd(ef, inc);
        let ef = b.ins().fadd(ef, adj);
        // log(m) = 2 atanh(s), s = (m-1)/(m+1), |s| <= 0.172.
        let f = b.ins().fsub(m, one);
        let two = self.f(b, 2.0);
        let d = b.ins().fadd(f, two);
        let s = b.ins().fdiv(f, d);
        let s2 = b.ins().fmul(s, s);
        let p = self.poly(b, s2, &[2.0, 2.0 / 3.0, 2.0 / 5.0, 2.0 / 7.0, 2.0 / 9.0, 2.0 / 11.0]);
        let p = b.ins().fmul(p, s);
        let ln2_hi = self.f(b, 0.693_359_4);
        let ln2_lo = self.f(b, -2.121_944_4e-4);
        let a = b.ins().fmul(ef, ln2_lo);
        let p = b.ins().fadd(p, a);
        let a = b.ins().fmul(ef, ln2_hi);
        let y = b.ins().fadd(p, a);
        // Edges: log(0) = -inf, log(inf) = inf, negative or NaN gives NaN.
        let ninf = self.f(b, f32::NEG_INFINITY);
        let pinf = self.f(b, f32::INFINITY);
        let nan = self.f(b, f32::NAN);
        let m0 = b.ins().fcmp(FloatCC::Equal, x, zero);
        let y = self.select(b, m0, ninf, y);
        let mi = b.ins().fcmp(FloatCC::Equal, x, pinf);
        let y = self.select(b, mi, pinf, y);
        let mn = b.ins().fcmp(FloatCC::UnorderedOrLessThan, x, zero);
        self.select(b, mn, nan, y)
    }

    /// The hyperbolic tangent, as `x P(x²) / Q(x²)` on `x` clamped to ±9
    /// (beyond that tanh is ±1 in f32).
    ///
    /// P and Q (degree 4 each, Q ≥ 1 on the range: no poles) were fitted by
    /// `scripts/fit_rational.py tanh`; evaluated in f32 they are within
    /// 3.0e-7 relative of tanh over the backend's test grid (the script and
    /// `generated_math_matches_libm` both print it). One division and eight
    /// multiply-adds per lane replace a Taylor series, an `exp` and a
    /// division that were all computed for every element: tanh bounds the
    /// speed of the tanh-form GELU that GPT-2-style models export.
    pub fn tanh(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        let xc = self.clamp(b, x, -9.0, 9.0);
        let t = b.ins().fmul(xc, xc);
        let p = self.poly(b, t, &[0.999_999_94, 0.133_792_88, 0.003_493_716_7, 2.058_541_4e-5, 1.333_435_2e-8]);
        let q = self.poly(b, t, &[1.0, 0.467_125_9, 0.025_869_371, 0.000_328_288_85, 7.765_650_6e-7]);
        let r = b.ins().fdiv(p, q);
        let y = b.ins().fmul(xc, r);
        // NaN passes the clamps and the arithmetic; the fit may overshoot 1
        // by an ulp near the clamp, tanh never does.
        self.clamp(b, y, -1.0, 1.0)
    }

    /// The error function, as `x P(x²) / Q(x²)` on `x` clamped to ±4
    /// (beyond that erf is 1 in f32).
    ///
    /// P and Q (degree 5 each) were fitted to erf(x)/x on [0, 4] by
    /// iterated linearised least squares in f64 (`scripts/fit_rational.py erf`). The
    /// generated code is within 2.8e-7 relative of erf over the test grid
    /// (`generated_math_matches_libm` prints it). One division and ten multiply-adds per lane replace the earlier
    /// Taylor series + erfc-times-exp pair, which computed both branches for
    /// every element: erf bounds the speed of a torch-exported GELU, the
    /// epilogue of every feed-forward up-projection.
    pub fn erf(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        let xc = self.clamp(b, x, -4.0, 4.0);
        let t = b.ins().fmul(xc, xc);
        let p = self.poly(
            b,
            t,
            &[
                std::f32::consts::FRAC_2_SQRT_PI,
                0.193_652_59,
                0.053_133_22,
                0.003_894_913,
                0.000_286_022_58,
                2.000_139_6e-6,
            ],
        );
        let q = self.poly(b, t, &[1.0, 0.504_952, 0.115_411_19, 0.015_226_343, 0.001_190_797_7, 3.763_822_3e-5]);
        let r = b.ins().fdiv(p, q);
        let y = b.ins().fmul(xc, r);
        // The fit overshoots 1 by an ulp near the clamp; erf never does.
        self.clamp(b, y, -1.0, 1.0)
    }

    /// `1 / (1 + e^-x)`.
    pub fn sigmoid(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        let nx = b.ins().fneg(x);
        let e = self.exp(b, nx);
        let one = self.f(b, 1.0);
        let d = b.ins().fadd(e, one);
        b.ins().fdiv(one, d)
    }
}

//! Arithmetic identities.
//!
//! Float policy: a law is used as *exact* only when it holds bit for bit in
//! IEEE arithmetic for every input, NaN, infinities and `-0.0` included. So
//! `x * 1 → x` and `x - 0.0 → x` are exact, while `x + 0.0 → x` is relaxed
//! (it turns `-0.0` into `+0.0`... the other way round), and `x - x → 0`,
//! `x * 0 → 0` and `sqrt(x) * sqrt(x) → x` are never used on floats (NaN,
//! infinities and negative `x` break them). Integer arithmetic wraps, so
//! reassociating integer constants is exact.

use super::{Rule, RuleOptions, data, is_float, is_int, lit, rule, same_type, scalar_for, var};
use crate::rewrite::lang::{Literal, TensorLang};
use egg::Id;
use sharc_ir::DType;

/// The arithmetic rules.
pub fn rules(opts: RuleOptions) -> Vec<Rule> {
    let (x, y, c, a, b, t, u) = (var("?x"), var("?y"), var("?c"), var("?a"), var("?b"), var("?t"), var("?u"));
    let mut rules = vec![
        // x * 1 = x
        rule("mul-one", "(mul ?x ?c)", move |eg, m, s| {
            (data(eg, s[c]).splat() == Some(1.0) && same_type(eg, m, s[x])).then_some(s[x])
        }),
        // 1 * x = x
        rule("one-mul", "(mul ?c ?x)", move |eg, m, s| {
            (data(eg, s[c]).splat() == Some(1.0) && same_type(eg, m, s[x])).then_some(s[x])
        }),
        // x / 1 = x
        rule("div-one", "(div ?x ?c)", move |eg, m, s| {
            (data(eg, s[c]).splat() == Some(1.0) && same_type(eg, m, s[x])).then_some(s[x])
        }),
        // x - 0 = x (for floats with +0.0 only: -0.0 - +0.0 = -0.0)
        rule("sub-zero", "(sub ?x ?c)", move |eg, m, s| {
            let zero = data(eg, s[c]).splat().is_some_and(|v| v == 0.0 && (v.is_sign_positive() || is_int(eg, m)));
            (zero && same_type(eg, m, s[x])).then_some(s[x])
        }),
        // x + (-0.0) = x, and x + 0 = x for integers
        rule("add-zero", "(add ?x ?c)", move |eg, m, s| {
            (adds_nothing(eg, s[c], m, false) && same_type(eg, m, s[x])).then_some(s[x])
        }),
        // (-0.0) + x = x, and 0 + x = x for integers
        rule("zero-add", "(add ?c ?x)", move |eg, m, s| {
            (adds_nothing(eg, s[c], m, false) && same_type(eg, m, s[x])).then_some(s[x])
        }),
        // -(-x) = x
        rule("neg-neg", "(neg (neg ?x))", move |_, _, s| Some(s[x])),
        // x * -1 = -x
        rule("mul-minus-one", "(mul ?x ?c)", move |eg, m, s| {
            (data(eg, s[c]).splat() == Some(-1.0) && same_type(eg, m, s[x])).then(|| eg.add(TensorLang::Neg(s[x])))
        }),
        // x - (-y) = x + y
        rule("sub-neg", "(sub ?x (neg ?y))", move |eg, _, s| Some(eg.add(TensorLang::Add([s[x], s[y]])))),
        // x + (-y) = x - y
        rule("add-neg", "(add ?x (neg ?y))", move |eg, _, s| Some(eg.add(TensorLang::Sub([s[x], s[y]])))),
        // (-x) + y = y - x
        rule("neg-add", "(add (neg ?x) ?y)", move |eg, _, s| Some(eg.add(TensorLang::Sub([s[y], s[x]])))),
        // (-x) * (-y) = x * y
        rule("neg-mul-neg", "(mul (neg ?x) (neg ?y))", move |eg, _, s| Some(eg.add(TensorLang::Mul([s[x], s[y]])))),
        // (-x) * c = x * (-c), for a float constant c
        rule("neg-mul-const", "(mul (neg ?x) ?c)", move |eg, _, s| {
            if !is_float(eg, s[c]) || data(eg, s[c]).literal.is_none() {
                return None;
            }
            let nc = eg.add(TensorLang::Neg(s[c]));
            data(eg, nc).literal.is_some().then(|| eg.add(TensorLang::Mul([s[x], nc])))
        }),
        // identity(x) = x
        rule("identity", "(identity ?x)", move |_, _, s| Some(s[x])),
        // where(c, x, x) = x
        rule("where-same", "(where ?c ?x ?x)", move |eg, m, s| same_type(eg, m, s[x]).then_some(s[x])),
        // cast(x, dtype(x)) = x
        rule("cast-same", "(cast ?x ?t)", move |eg, m, s| {
            (cast_target(eg, s[t]).is_some()
                && cast_target(eg, s[t]) == data(eg, s[x]).dtype()
                && same_type(eg, m, s[x]))
            .then_some(s[x])
        }),
        // cast(cast(x, t), u) = cast(x, u) when t holds every value of x's dtype exactly
        rule("cast-cast", "(cast (cast ?x ?t) ?u)", move |eg, _, s| {
            let from = data(eg, s[x]).dtype()?;
            let mid = cast_target(eg, s[t])?;
            widens(from, mid).then(|| eg.add(TensorLang::Cast([s[x], s[u]])))
        }),
        // x / c = x * (1/c), when c is a power of two (so 1/c is exact and
        // both roundings agree)
        rule("div-pow2", "(div ?x ?c)", move |eg, m, s| div_to_mul(eg, m, s[x], s[c], false)),
        // pow(x, 1) = x
        rule("pow-one", "(pow ?x ?c)", move |eg, m, s| {
            (data(eg, s[c]).splat() == Some(1.0) && same_type(eg, m, s[x])).then_some(s[x])
        }),
        // (x * a) * b = x * (a * b), for integer constants a and b (wrapping
        // arithmetic is associative)
        rule("mul-const-const-int", "(mul (mul ?x ?a) ?b)", move |eg, m, s| {
            (is_int(eg, m)).then_some(())?;
            fold_consts(eg, m, s[x], s[a], s[b], TensorLang::Mul)
        }),
        // (x + a) + b = x + (a + b), for integer constants a and b
        rule("add-const-const-int", "(add (add ?x ?a) ?b)", move |eg, m, s| {
            (is_int(eg, m)).then_some(())?;
            fold_consts(eg, m, s[x], s[a], s[b], TensorLang::Add)
        }),
    ];
    if opts.relaxed {
        rules.extend([
            // x + 0 = x (relaxed: -0.0 + 0.0 = +0.0)
            rule("add-zero-relaxed", "(add ?x ?c)", move |eg, m, s| {
                (adds_nothing(eg, s[c], m, true) && same_type(eg, m, s[x])).then_some(s[x])
            }),
            // 0 + x = x (relaxed)
            rule("zero-add-relaxed", "(add ?c ?x)", move |eg, m, s| {
                (adds_nothing(eg, s[c], m, true) && same_type(eg, m, s[x])).then_some(s[x])
            }),
            // x / c = x * (1/c) for any finite non-zero constant c whose
            // reciprocal is finite (relaxed: one rounding becomes two)
            rule("div-const", "(div ?x ?c)", move |eg, m, s| div_to_mul(eg, m, s[x], s[c], true)),
            // (x * a) * b = x * (a * b), for float constants (relaxed: reassociation)
            rule("mul-const-const", "(mul (mul ?x ?a) ?b)", move |eg, m, s| {
                is_float(eg, m).then_some(())?;
                fold_consts(eg, m, s[x], s[a], s[b], TensorLang::Mul)
            }),
            // (x + a) + b = x + (a + b), for float constants (relaxed)
            rule("add-const-const", "(add (add ?x ?a) ?b)", move |eg, m, s| {
                is_float(eg, m).then_some(())?;
                fold_consts(eg, m, s[x], s[a], s[b], TensorLang::Add)
            }),
            // (x + y) * s = x * s + y * s, for a scalar constant s (relaxed:
            // distribution), so a scale can travel to where it is cheapest
            rule("distribute-scale", "(mul (add ?x ?y) ?c)", move |eg, m, s| {
                is_float(eg, m).then_some(())?;
                let rx = data(eg, s[x]).rank()?;
                let ry = data(eg, s[y]).rank()?;
                scalar_for(eg, s[c], Some(rx.min(ry)))?;
                let xs = eg.add(TensorLang::Mul([s[x], s[c]]));
                let ys = eg.add(TensorLang::Mul([s[y], s[c]]));
                let sum = eg.add(TensorLang::Add([xs, ys]));
                same_type(eg, m, sum).then_some(sum)
            }),
            // x * (1 / y) = x / y (relaxed: two roundings become one)
            rule("mul-recip", "(mul ?x (recip ?y))", move |eg, m, s| {
                let d = eg.add(TensorLang::Div([s[x], s[y]]));
                same_type(eg, m, d).then_some(d)
            }),
            // 1 / (1 / x) = x (relaxed: rounding)
            rule("recip-recip", "(recip (recip ?x))", move |eg, _, s| is_float(eg, s[x]).then_some(s[x])),
            // pow(x, 2) = x * x (relaxed: pow may round differently)
            rule("pow-two", "(pow ?x ?c)", move |eg, m, s| {
                (data(eg, s[c]).splat() == Some(2.0) && same_type(eg, m, s[x]) && is_float(eg, m))
                    .then(|| eg.add(TensorLang::Mul([s[x], s[x]])))
            }),
            // pow(x, 3) = (x * x) * x (relaxed: two roundings)
            rule("pow-three", "(pow ?x ?c)", move |eg, m, s| {
                (data(eg, s[c]).splat() == Some(3.0) && same_type(eg, m, s[x]) && is_float(eg, m)).then(|| {
                    let sq = eg.add(TensorLang::Mul([s[x], s[x]]));
                    eg.add(TensorLang::Mul([sq, s[x]]))
                })
            }),
            // pow(x, 0.5) = sqrt(x) (relaxed: differs at -0.0 and -inf)
            rule("pow-half", "(pow ?x ?c)", move |eg, m, s| {
                (data(eg, s[c]).splat() == Some(0.5) && same_type(eg, m, s[x]) && is_float(eg, m))
                    .then(|| eg.add(TensorLang::Sqrt(s[x])))
            }),
            // pow(x, -1) = 1 / x (relaxed: pow may round differently)
            rule("pow-minus-one", "(pow ?x ?c)", move |eg, m, s| {
                (data(eg, s[c]).splat() == Some(-1.0) && same_type(eg, m, s[x]) && is_float(eg, m))
                    .then(|| eg.add(TensorLang::Recip(s[x])))
            }),
            // exp(a) * exp(b) = exp(a + b) (relaxed: rounding; overflow only
            // in the left form)
            rule("exp-mul", "(mul (exp ?a) (exp ?b))", move |eg, m, s| {
                let sum = eg.add(TensorLang::Add([s[a], s[b]]));
                let e = eg.add(TensorLang::Exp(sum));
                same_type(eg, m, e).then_some(e)
            }),
        ]);
    }
    rules
}

/// True when adding constant `c` to a value of class `m`'s dtype leaves it
/// unchanged: integer 0 always, float `-0.0` always, float `+0.0` only when
/// relaxed.
fn adds_nothing(eg: &crate::rewrite::analysis::TensorGraph, c: Id, m: Id, relaxed: bool) -> bool {
    match data(eg, c).splat() {
        Some(v) if v == 0.0 => is_int(eg, m) || v.is_sign_negative() || relaxed,
        _ => false,
    }
}

/// The dtype a cast's target literal names.
fn cast_target(eg: &crate::rewrite::analysis::TensorGraph, t: Id) -> Option<DType> {
    match data(eg, t).ints()?.as_slice() {
        [code] => i32::try_from(*code).ok().and_then(DType::from_onnx_code),
        _ => None,
    }
}

/// True when every value of `from` is exactly a value of `to`.
pub fn widens(from: DType, to: DType) -> bool {
    use DType::*;
    if from == to {
        return true;
    }
    match from {
        Bool => to.is_integer() || to.is_float() && !to.is_narrow(),
        I8 => matches!(to, I16 | I32 | I64 | F16 | BF16 | F32 | F64),
        U8 => matches!(to, I16 | U16 | I32 | U32 | I64 | U64 | F16 | BF16 | F32 | F64),
        I16 => matches!(to, I32 | I64 | F32 | F64),
        U16 => matches!(to, I32 | U32 | I64 | U64 | F32 | F64),
        I32 => matches!(to, I64 | F64),
        U32 => matches!(to, I64 | U64 | F64),
        F16 | BF16 => matches!(to, F32 | F64),
        F32 => to == F64,
        _ => false,
    }
}

/// `x / c → x * (1/c)`: exact for powers of two with a normal reciprocal,
/// relaxed for any finite non-zero `c` with a finite reciprocal.
fn div_to_mul(eg: &mut crate::rewrite::analysis::TensorGraph, m: Id, x: Id, c: Id, relaxed: bool) -> Option<Id> {
    if !is_float(eg, m) {
        return None;
    }
    let lit = data(eg, c).literal.clone()?;
    let v = lit.splat_value()?;
    let dtype = lit.dtype;
    let r = 1.0 / v;
    let (max, min_normal) = match dtype {
        DType::F32 => (f32::MAX as f64, f32::MIN_POSITIVE as f64),
        DType::F64 => (f64::MAX, f64::MIN_POSITIVE),
        _ => return None,
    };
    let finite = v.is_finite() && v != 0.0 && r.abs() <= max;
    let pow2 = v.abs().log2().fract() == 0.0 && r.abs() >= min_normal && v.abs() >= min_normal;
    if !finite || !(pow2 || relaxed) {
        return None;
    }
    let rc = lit_splat(eg, &lit, r)?;
    let mul = eg.add(TensorLang::Mul([x, rc]));
    same_type(eg, m, mul).then_some(mul)
}

/// A literal shaped like `like` holding `v` everywhere.
fn lit_splat(eg: &mut crate::rewrite::analysis::TensorGraph, like: &Literal, v: f64) -> Option<Id> {
    let l = Literal::splat(like.dtype, &like.shape, v)?;
    Some(lit(eg, l))
}

/// `(x op a) op b → x op (a op b)` for constants `a` and `b`: builds
/// `a op b` (which the analysis folds into a literal) and checks that the
/// result keeps its type.
fn fold_consts(
    eg: &mut crate::rewrite::analysis::TensorGraph,
    m: Id,
    x: Id,
    a: Id,
    b: Id,
    op: fn([Id; 2]) -> TensorLang,
) -> Option<Id> {
    if data(eg, a).literal.is_none() || data(eg, b).literal.is_none() || data(eg, x).literal.is_some() {
        return None;
    }
    let ab = eg.add(op([a, b]));
    data(eg, ab).literal.as_ref()?;
    let r = eg.add(op([x, ab]));
    same_type(eg, m, r).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::super::testing::rewrites_to;
    use super::*;

    fn exact(leaves: &[&str], e: &str, t: &str) -> bool {
        rewrites_to(rules, false, leaves, e, t)
    }
    fn relaxed(leaves: &[&str], e: &str, t: &str) -> bool {
        rewrites_to(rules, true, leaves, e, t)
    }

    #[test]
    fn multiplying_by_one_is_dropped_unless_it_broadcasts() {
        assert!(exact(&["f32[batch, 4]"], "(mul v0 f32[]:1)", "v0"));
        assert!(exact(&["f32[batch, 4]"], "(mul f32[1]:1 v0)", "v0"));
        // A [1, 1, 1] one makes the result rank 3: not the same value.
        assert!(!exact(&["f32[batch, 4]"], "(mul v0 f32[1,1,1]:1)", "v0"));
        assert!(!exact(&["f32[batch, 4]"], "(mul v0 f32[]:2)", "v0"));
        assert!(exact(&["f32[3]"], "(div v0 f32[]:1)", "v0"));
    }

    #[test]
    fn zero_policy_follows_ieee() {
        assert!(exact(&["f32[3]"], "(sub v0 f32[]:0)", "v0"));
        assert!(!exact(&["f32[3]"], "(sub v0 f32[]:-0.0)", "v0"));
        assert!(exact(&["f32[3]"], "(add v0 f32[]:-0.0)", "v0"));
        // x + 0.0 is not x for x = -0.0: only relaxed.
        assert!(!exact(&["f32[3]"], "(add v0 f32[]:0)", "v0"));
        assert!(relaxed(&["f32[3]"], "(add v0 f32[]:0)", "v0"));
        assert!(exact(&["i64[3]"], "(add i64[]:0 v0)", "v0"));
    }

    #[test]
    fn negations_cancel_and_fold() {
        assert!(exact(&["f32[3]"], "(neg (neg v0))", "v0"));
        assert!(exact(&["f32[3]", "f32[3]"], "(sub v0 (neg v1))", "(add v0 v1)"));
        assert!(exact(&["f32[3]", "f32[3]"], "(mul (neg v0) (neg v1))", "(mul v0 v1)"));
        assert!(exact(&["f32[3]"], "(mul v0 f32[]:-1)", "(neg v0)"));
        assert!(exact(&["f32[3]"], "(mul (neg v0) f32[]:2)", "(mul v0 f32[]:-2)"));
    }

    #[test]
    fn division_by_a_power_of_two_is_exact_others_relaxed() {
        assert!(exact(&["f32[3]"], "(div v0 f32[]:4)", "(mul v0 f32[]:0.25)"));
        assert!(!exact(&["f32[3]"], "(div v0 f32[]:3)", "(mul v0 f32[]:0.3333333432674408)"));
        assert!(relaxed(&["f32[3]"], "(div v0 f32[]:8)", "(mul v0 f32[]:0.125)"));
        let third = format!("(mul v0 f32[]:{:?})", (1.0f32 / 3.0) as f64);
        assert!(relaxed(&["f32[3]"], "(div v0 f32[]:3)", &third));
        // Dividing by zero stays a division.
        assert!(!relaxed(&["f32[3]"], "(div v0 f32[]:0)", "(mul v0 f32[]:inf)"));
        // Integers divide, they do not multiply by reciprocals.
        assert!(!relaxed(&["i64[3]"], "(div v0 i64[]:2)", "(mul v0 i64[]:0)"));
    }

    #[test]
    fn constants_reassociate_only_when_allowed() {
        assert!(relaxed(&["f32[3]"], "(mul (mul v0 f32[]:2) f32[]:3)", "(mul v0 f32[]:6)"));
        assert!(!exact(&["f32[3]"], "(mul (mul v0 f32[]:2) f32[]:3)", "(mul v0 f32[]:6)"));
        assert!(exact(&["i64[3]"], "(add (add v0 i64[]:2) i64[]:3)", "(add v0 i64[]:5)"));
    }

    #[test]
    fn casts_through_a_wider_type_collapse() {
        let f64c = DType::F64.onnx_code();
        let f32c = DType::F32.onnx_code();
        let i32c = DType::I32.onnx_code();
        let via_f64 = format!("(cast (cast v0 i64[]:{f64c}) i64[]:{i32c})");
        assert!(exact(&["f32[3]"], &via_f64, &format!("(cast v0 i64[]:{i32c})")));
        // Through a narrower type the value changes: kept.
        let via_i32 = format!("(cast (cast v0 i64[]:{i32c}) i64[]:{f64c})");
        assert!(!exact(&["f32[3]"], &via_i32, &format!("(cast v0 i64[]:{f64c})")));
        assert!(exact(&["f32[3]"], &format!("(cast v0 i64[]:{f32c})"), "v0"));
    }

    #[test]
    fn powers_become_products_when_relaxed() {
        assert!(relaxed(&["f32[3]"], "(pow v0 f32[]:2)", "(mul v0 v0)"));
        assert!(!exact(&["f32[3]"], "(pow v0 f32[]:2)", "(mul v0 v0)"));
        assert!(relaxed(&["f32[3]"], "(pow v0 f32[]:3)", "(mul (mul v0 v0) v0)"));
        assert!(relaxed(&["f32[3]"], "(pow v0 f32[]:0.5)", "(sqrt v0)"));
        assert!(exact(&["f32[3]"], "(pow v0 f32[]:1)", "v0"));
        // An exponent that broadcasts the base is not dropped.
        assert!(!exact(&["f32[3]"], "(pow v0 f32[2,1]:1,1)", "v0"));
    }

    #[test]
    fn scales_distribute_only_without_broadcasting() {
        assert!(relaxed(&["f32[4]", "f32[4]"], "(mul (add v0 v1) f32[]:2)", "(add (mul v0 f32[]:2) (mul v1 f32[]:2))"));
        // The [1, 1] scale would make v0 * s rank 2 while v0 is rank 1.
        assert!(!relaxed(
            &["f32[4]", "f32[3, 4]"],
            "(mul (add v0 v1) f32[1,1]:2)",
            "(add (mul v0 f32[1,1]:2) (mul v1 f32[1,1]:2))"
        ));
    }

    #[test]
    fn identities_and_where() {
        assert!(exact(&["f32[3]"], "(identity v0)", "v0"));
        assert!(exact(&["bool[3]", "f32[3]"], "(where v0 v1 v1)", "v1"));
        // A condition that broadcasts the result is kept.
        assert!(!exact(&["bool[2, 3]", "f32[3]"], "(where v0 v1 v1)", "v1"));
    }

    #[test]
    fn widening_table() {
        assert!(widens(DType::I32, DType::F64));
        assert!(!widens(DType::I32, DType::F32));
        assert!(!widens(DType::F64, DType::F32));
        assert!(widens(DType::Bool, DType::U8));
    }
}

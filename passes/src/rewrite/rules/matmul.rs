//! Matrix products: `MatMul` and `Gemm` forms, folding transposes, biases
//! and scales into `Gemm`'s attributes, and scales through products.
//!
//! The form changes (`MatMul` with a transposed operand ↔ `Gemm` with
//! `transB`, a bias `Add` ↔ `Gemm`'s `C`, a flattened `Gemm` between two
//! reshapes ↔ a batched `MatMul`) compute the same dot products and the same
//! additions, so they are exact. Moving a scale into a product changes where
//! it rounds, so those rules are relaxed.

use super::{Rule, RuleOptions, data, is_float, lit, rule, same_type, scalar_for, var};
use crate::rewrite::analysis::{ClassSource, TensorGraph};
use crate::rewrite::lang::{Literal, TensorLang, gemm_attrs, gemm_literal};
use egg::Id;
use sharc_ir::op::Gemm;
use sharc_ir::{DType, Dim};

/// The matrix-product rules.
pub fn rules(opts: RuleOptions) -> Vec<Rule> {
    let (a, b, c, g, x, w, s1) = (var("?a"), var("?b"), var("?c"), var("?g"), var("?x"), var("?w"), var("?s1"));
    let p = var("?p");
    let mut rules = vec![
        // a @ transpose(b, [1, 0]) = gemm(a, b, transB = 1), for matrices
        rule("matmul-transposed-to-gemm", "(matmul ?a (transpose ?b ?p))", move |eg, m, s| {
            if !is_swap(eg, s[p]) || !gemm_operands(eg, s[a], s[b]) {
                return None;
            }
            let attrs = lit(eg, gemm_literal(&Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true }));
            let none = eg.add(TensorLang::None);
            let r = eg.add(TensorLang::Gemm([attrs, s[a], s[b], none]));
            same_type(eg, m, r).then_some(r)
        }),
        // gemm(a, transpose(b, [1, 0]), transB = t) = gemm(a, b, transB = !t)
        rule("gemm-absorb-transpose-b", "(gemm ?g ?a (transpose ?b ?p) ?c)", move |eg, m, s| {
            if !is_swap(eg, s[p]) {
                return None;
            }
            let mut attrs = gemm_attrs(&ClassSource(eg), s[g]).ok()?;
            attrs.trans_b = !attrs.trans_b;
            let gl = lit(eg, gemm_literal(&attrs));
            let r = eg.add(TensorLang::Gemm([gl, s[a], s[b], s[c]]));
            same_type(eg, m, r).then_some(r)
        }),
        // gemm(transpose(a, [1, 0]), b, transA = t) = gemm(a, b, transA = !t)
        rule("gemm-absorb-transpose-a", "(gemm ?g (transpose ?a ?p) ?b ?c)", move |eg, m, s| {
            if !is_swap(eg, s[p]) {
                return None;
            }
            let mut attrs = gemm_attrs(&ClassSource(eg), s[g]).ok()?;
            attrs.trans_a = !attrs.trans_a;
            let gl = lit(eg, gemm_literal(&attrs));
            let r = eg.add(TensorLang::Gemm([gl, s[a], s[b], s[c]]));
            same_type(eg, m, r).then_some(r)
        }),
        // gemm(a, b) without C, alpha = 1, transA = 0 = a @ b (or a @ transpose(b) with transB)
        rule("gemm-to-matmul", "(gemm ?g ?a ?b ?c)", move |eg, m, s| {
            if !data(eg, s[c]).none {
                return None;
            }
            let attrs = gemm_attrs(&ClassSource(eg), s[g]).ok()?;
            if attrs.alpha != 1.0 || attrs.trans_a {
                return None;
            }
            let rhs = if attrs.trans_b {
                let perm = lit(eg, Literal::ints(&[1, 0]));
                eg.add(TensorLang::Transpose([s[b], perm]))
            } else {
                s[b]
            };
            let r = eg.add(TensorLang::MatMul([s[a], rhs]));
            same_type(eg, m, r).then_some(r)
        }),
        // a @ b + c = gemm(a, b, c), for matrices and a c that broadcasts to the product
        rule("matmul-bias-to-gemm", "(add (matmul ?a ?b) ?c)", move |eg, m, s| bias_into_gemm(eg, m, s[a], s[b], s[c])),
        // c + a @ b = gemm(a, b, c)
        rule("bias-matmul-to-gemm", "(add ?c (matmul ?a ?b))", move |eg, m, s| bias_into_gemm(eg, m, s[a], s[b], s[c])),
        // gemm(a, b) + c = gemm(a, b, c, beta = 1), when gemm had no C
        rule("gemm-add-bias", "(add (gemm ?g ?a ?b ?c) ?x)", move |eg, m, s| {
            gemm_take_bias(eg, m, s[g], s[a], s[b], s[c], s[x])
        }),
        // c + gemm(a, b) = gemm(a, b, c, beta = 1), when gemm had no C
        rule("bias-gemm-add", "(add ?x (gemm ?g ?a ?b ?c))", move |eg, m, s| {
            gemm_take_bias(eg, m, s[g], s[a], s[b], s[c], s[x])
        }),
        // reshape(gemm(reshape(x, [M, K]), w, c), x.shape[:-1] ++ [N]) = x @ w' + c:
        // a flattened linear layer is a batched matmul (w' = w or its transpose)
        rule("gemm-unflatten", "(reshape (gemm ?g (reshape ?x ?s1) ?w ?c) ?s2)", move |eg, m, s| {
            let attrs = gemm_attrs(&ClassSource(eg), s[g]).ok()?;
            if attrs.alpha != 1.0 || attrs.trans_a || (attrs.beta != 1.0 && !data(eg, s[c]).none) {
                return None;
            }
            let xs = data(eg, s[x]).shape()?.to_vec();
            let out = data(eg, m).shape()?.to_vec();
            let (k, lead) = xs.split_last()?;
            let (n, out_lead) = out.split_last()?;
            let inner = eg.lookup(TensorLang::Reshape([s[x], s[s1]]))?;
            let flat = data(eg, inner).shape()?.to_vec();
            // The inner reshape keeps the contracted dim; the outer one
            // restores x's leading dims.
            if lead.is_empty() || flat.len() != 2 || flat[1] != *k || out_lead != lead {
                return None;
            }
            let rhs = if attrs.trans_b {
                let perm = lit(eg, Literal::ints(&[1, 0]));
                eg.add(TensorLang::Transpose([s[w], perm]))
            } else {
                s[w]
            };
            let mm = eg.add(TensorLang::MatMul([s[x], rhs]));
            let r = if data(eg, s[c]).none {
                mm
            } else {
                // C must broadcast along N only: [N], [1, N] or a scalar.
                let cs = data(eg, s[c]).shape()?.to_vec();
                let rows_free = match cs.as_slice() {
                    [] | [_] => true,
                    [r, _] => *r == Dim::Fixed(1),
                    _ => false,
                };
                if !rows_free || cs.last().is_some_and(|d| d != n && *d != Dim::Fixed(1)) {
                    return None;
                }
                eg.add(TensorLang::Add([mm, s[c]]))
            };
            same_type(eg, m, r).then_some(r)
        }),
    ];
    if opts.relaxed {
        rules.extend([
            // (a @ b) * s = (a * s) @ b, for a scalar constant s (relaxed: rounding)
            rule("matmul-scale-left", "(mul (matmul ?a ?b) ?c)", move |eg, m, s| {
                scale_operand(eg, m, s[a], s[b], s[c], true, TensorLang::Mul)
            }),
            // (a @ b) * s = a @ (b * s)
            rule("matmul-scale-right", "(mul (matmul ?a ?b) ?c)", move |eg, m, s| {
                scale_operand(eg, m, s[a], s[b], s[c], false, TensorLang::Mul)
            }),
            // (a @ b) / s = (a / s) @ b
            rule("matmul-div-left", "(div (matmul ?a ?b) ?c)", move |eg, m, s| {
                scale_operand(eg, m, s[a], s[b], s[c], true, TensorLang::Div)
            }),
            // (a @ b) / s = a @ (b / s)
            rule("matmul-div-right", "(div (matmul ?a ?b) ?c)", move |eg, m, s| {
                scale_operand(eg, m, s[a], s[b], s[c], false, TensorLang::Div)
            }),
            // gemm(a, b, c, alpha, beta) * s = gemm(a, b, c, alpha * s, beta * s)
            rule("gemm-scale", "(mul (gemm ?g ?a ?b ?c) ?x)", move |eg, m, s| {
                let v = scalar_for(eg, s[x], Some(2))?;
                if !is_float(eg, m) {
                    return None;
                }
                let mut attrs = gemm_attrs(&ClassSource(eg), s[g]).ok()?;
                attrs.alpha = (attrs.alpha as f64 * v) as f32;
                attrs.beta = (attrs.beta as f64 * v) as f32;
                if !attrs.alpha.is_finite() || !attrs.beta.is_finite() {
                    return None;
                }
                let gl = lit(eg, gemm_literal(&attrs));
                let r = eg.add(TensorLang::Gemm([gl, s[a], s[b], s[c]]));
                same_type(eg, m, r).then_some(r)
            }),
        ]);
    }
    rules
}

/// True when the literal is the permutation `[1, 0]`.
fn is_swap(eg: &TensorGraph, p: Id) -> bool {
    data(eg, p).ints().as_deref() == Some(&[1, 0])
}

/// True when `a` and `b` are matrices of one float dtype Gemm accepts.
fn gemm_operands(eg: &TensorGraph, a: Id, b: Id) -> bool {
    let (da, db) = (data(eg, a), data(eg, b));
    da.rank() == Some(2)
        && db.rank() == Some(2)
        && da.dtype() == db.dtype()
        && matches!(da.dtype(), Some(DType::F32 | DType::F64 | DType::F16 | DType::BF16))
}

/// True when a tensor of shape `c` broadcasts to `target` in one direction
/// (Gemm's rule for `C`): aligned from the right, each dim is 1 or equal.
fn broadcasts_to(c: &[Dim], target: &[Dim]) -> bool {
    c.len() <= target.len() && c.iter().rev().zip(target.iter().rev()).all(|(d, t)| *d == Dim::Fixed(1) || d == t)
}

/// `a @ b + c → gemm(a, b, c)`.
fn bias_into_gemm(eg: &mut TensorGraph, m: Id, a: Id, b: Id, c: Id) -> Option<Id> {
    if !gemm_operands(eg, a, b) || data(eg, c).dtype() != data(eg, a).dtype() {
        return None;
    }
    let out = data(eg, m).shape()?.to_vec();
    if !broadcasts_to(data(eg, c).shape()?, &out) {
        return None;
    }
    let attrs = lit(eg, gemm_literal(&Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: false }));
    let r = eg.add(TensorLang::Gemm([attrs, a, b, c]));
    same_type(eg, m, r).then_some(r)
}

/// `gemm(a, b) + x → gemm(a, b, x)` when the Gemm had no `C`.
fn gemm_take_bias(eg: &mut TensorGraph, m: Id, g: Id, a: Id, b: Id, c: Id, x: Id) -> Option<Id> {
    if !data(eg, c).none || data(eg, x).dtype() != data(eg, m).dtype() {
        return None;
    }
    let out = data(eg, m).shape()?.to_vec();
    if !broadcasts_to(data(eg, x).shape()?, &out) {
        return None;
    }
    let mut attrs = gemm_attrs(&ClassSource(eg), g).ok()?;
    attrs.beta = 1.0;
    let gl = lit(eg, gemm_literal(&attrs));
    let r = eg.add(TensorLang::Gemm([gl, a, b, x]));
    same_type(eg, m, r).then_some(r)
}

/// `(a @ b) op s → (a op s) @ b` (or `a @ (b op s)`) for a scalar constant `s`.
fn scale_operand(
    eg: &mut TensorGraph,
    m: Id,
    a: Id,
    b: Id,
    c: Id,
    left: bool,
    op: fn([Id; 2]) -> TensorLang,
) -> Option<Id> {
    if !is_float(eg, m) {
        return None;
    }
    let target = if left { a } else { b };
    let rank = data(eg, target).rank()?.min(data(eg, m).rank()?);
    scalar_for(eg, c, Some(rank))?;
    let scaled = eg.add(op([target, c]));
    let r = if left { eg.add(TensorLang::MatMul([scaled, b])) } else { eg.add(TensorLang::MatMul([a, scaled])) };
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

    const TB: &str = "f64[4]:1,1,0,1";
    const PLAIN: &str = "f64[4]:1,1,0,0";

    #[test]
    fn transposed_weights_become_gemm_trans_b() {
        assert!(exact(
            &["f32[m, 8]", "w:f32[4, 8]"],
            "(matmul v0 (transpose v1 i64[2]:1,0))",
            &format!("(gemm {TB} v0 v1 none)")
        ));
        // Batched operands are not matrices: Gemm does not apply.
        assert!(!exact(
            &["f32[b, m, 8]", "w:f32[4, 8]"],
            "(matmul v0 (transpose v1 i64[2]:1,0))",
            &format!("(gemm {TB} v0 v1 none)")
        ));
        assert!(exact(
            &["f32[m, 8]", "w:f32[8, 4]"],
            &format!("(gemm {TB} v0 (transpose v1 i64[2]:1,0) none)"),
            &format!("(gemm {PLAIN} v0 v1 none)")
        ));
        assert!(exact(&["f32[m, 8]", "w:f32[8, 4]"], &format!("(gemm {PLAIN} v0 v1 none)"), "(matmul v0 v1)"));
    }

    #[test]
    fn biases_fold_into_gemm_when_they_broadcast() {
        assert!(exact(
            &["f32[m, 8]", "w:f32[8, 4]", "w:f32[4]"],
            "(add (matmul v0 v1) v2)",
            &format!("(gemm {PLAIN} v0 v1 v2)")
        ));
        assert!(exact(
            &["f32[m, 8]", "w:f32[8, 4]", "w:f32[4]"],
            &format!("(add v2 (gemm {TB} v0 (transpose v1 i64[2]:1,0) none))"),
            &format!("(gemm {PLAIN} v0 v1 v2)")
        ));
        // A [3, 4] addend would broadcast the [m, 4] product (or fail): no.
        assert!(!exact(
            &["f32[m, 8]", "w:f32[8, 4]", "f32[3, 4]"],
            "(add (matmul v0 v1) v2)",
            &format!("(gemm {PLAIN} v0 v1 v2)")
        ));
    }

    #[test]
    fn a_flattened_linear_layer_is_a_batched_matmul() {
        // gpt-2's Conv1D: x.view(-1, K) @ W + b, viewed back.
        assert!(exact(
            &["f32[2, 3, 8]", "w:f32[8, 4]", "w:f32[4]"],
            &format!("(reshape (gemm {PLAIN} (reshape v0 i64[2]:-1,8) v1 v2) i64[3]:2,3,4)"),
            "(add (matmul v0 v1) v2)"
        ));
        // Different leading dims after the product: a real reshape, kept.
        assert!(!exact(
            &["f32[2, 3, 8]", "w:f32[8, 4]", "w:f32[4]"],
            &format!("(reshape (gemm {PLAIN} (reshape v0 i64[2]:-1,8) v1 v2) i64[3]:3,2,4)"),
            "(add (matmul v0 v1) v2)"
        ));
    }

    #[test]
    fn scales_move_into_products_when_relaxed() {
        let (l, r) = ("(mul (matmul v0 v1) f32[]:0.125)", "(matmul v0 (mul v1 f32[]:0.125))");
        assert!(relaxed(&["f32[b, 4, 8]", "f32[b, 8, 4]"], l, r));
        assert!(!exact(&["f32[b, 4, 8]", "f32[b, 8, 4]"], l, r));
        assert!(relaxed(
            &["f32[b, 4, 8]", "f32[b, 8, 4]"],
            "(div (matmul v0 v1) f32[]:8)",
            "(matmul (div v0 f32[]:8) v1)"
        ));
        // A scale of rank 3 would change a rank-2 operand's shape.
        assert!(!relaxed(
            &["f32[4, 8]", "f32[b, 8, 4]"],
            "(mul (matmul v0 v1) f32[1,1,1]:2)",
            "(matmul (mul v0 f32[1,1,1]:2) v1)"
        ));
        assert!(relaxed(
            &["f32[m, 8]", "w:f32[8, 4]", "w:f32[4]"],
            &format!("(mul (gemm {PLAIN} v0 v1 v2) f32[]:2)"),
            "(gemm f64[4]:2,2,0,0 v0 v1 v2)"
        ));
    }
}

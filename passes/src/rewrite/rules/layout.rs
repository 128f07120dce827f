//! Layout laws: transposes, reshapes, squeezes and unsqueezes that compose
//! or cancel, and scalars moved through them.
//!
//! Every rule here is exact: data movement does not round. The conditions
//! are about shapes: a reshape target that copies dims (`0`) refers to its
//! own input, so composing reshapes checks that the copied dims agree.

use super::{Rule, RuleOptions, data, lit, norm_axes, rule, same_type, scalar_for, var};
use crate::rewrite::lang::{Literal, TensorLang};
use egg::Id;
use sharc_ir::Dim;

/// The layout rules (all exact; `opts` is accepted for symmetry).
pub fn rules(_opts: RuleOptions) -> Vec<Rule> {
    let (x, p, q, sh, a, b) = (var("?x"), var("?p"), var("?q"), var("?s"), var("?a"), var("?b"));
    let s1 = var("?s1");
    let mut rules = vec![
        // transpose(transpose(x, p), q) = transpose(x, r) with r[i] = p[q[i]]
        rule("transpose-transpose", "(transpose (transpose ?x ?p) ?q)", move |eg, _, s| {
            let (pp, qq) = (data(eg, s[p]).ints()?, data(eg, s[q]).ints()?);
            if pp.len() != qq.len() {
                return None;
            }
            let r: Vec<i64> =
                qq.iter().map(|&i| usize::try_from(i).ok().and_then(|i| pp.get(i).copied())).collect::<Option<_>>()?;
            let perm = lit(eg, Literal::ints(&r));
            Some(eg.add(TensorLang::Transpose([s[x], perm])))
        }),
        // transpose(x, [0, 1, ..., n-1]) = x
        rule("transpose-identity", "(transpose ?x ?p)", move |eg, _, s| {
            let pp = data(eg, s[p]).ints()?;
            pp.iter().enumerate().all(|(i, &v)| v == i as i64).then_some(s[x])
        }),
        // transpose(x, p) = reshape(x, shape) when p keeps the order of the
        // dims that are not 1 (only size-1 dims move: no data moves)
        rule("transpose-as-reshape", "(transpose ?x ?p)", move |eg, m, s| {
            let pp = data(eg, s[p]).ints()?;
            let xs = data(eg, s[x]).shape()?.to_vec();
            let target = relabelling_target(&xs, &pp)?;
            let shape = lit(eg, Literal::ints(&target));
            let r = eg.add(TensorLang::Reshape([s[x], shape]));
            same_type(eg, m, r).then_some(r)
        }),
        // reshape(x, s) = x when the result has x's shape
        rule("reshape-noop", "(reshape ?x ?s)", move |eg, m, s| same_type(eg, m, s[x]).then_some(s[x])),
        // reshape(reshape(x, s1), s) = reshape(x, s) when every dim s copies
        // (a 0 entry) is the same in x as in reshape(x, s1)
        rule("reshape-reshape", "(reshape (reshape ?x ?s1) ?s)", move |eg, m, s| {
            let target = data(eg, s[sh]).ints()?;
            if target.contains(&0) {
                let xs = data(eg, s[x]).shape()?;
                let inner = eg.lookup(TensorLang::Reshape([s[x], s[s1]]))?;
                let is = data(eg, inner).shape()?;
                let copied_agree =
                    target.iter().enumerate().all(|(i, &t)| t != 0 || (xs.get(i).is_some() && xs.get(i) == is.get(i)));
                if !copied_agree {
                    return None;
                }
            }
            let r = eg.add(TensorLang::Reshape([s[x], s[sh]]));
            same_type(eg, m, r).then_some(r)
        }),
        // squeeze(unsqueeze(x, a), b) = x when a and b name the same dims
        rule("squeeze-unsqueeze", "(squeeze (unsqueeze ?x ?a) ?b)", move |eg, m, s| {
            let r = data(eg, s[x]).rank()?;
            let ua = norm_axes(&data(eg, s[a]).ints()?, r + data(eg, s[a]).ints()?.len())?;
            let sb = norm_axes(&data(eg, s[b]).ints()?, r + ua.len())?;
            (ua == sb && same_type(eg, m, s[x])).then_some(s[x])
        }),
        // unsqueeze(squeeze(x, a), b) = x when a and b name the same dims
        // (squeeze only accepts dims of size 1, which unsqueeze restores)
        rule("unsqueeze-squeeze", "(unsqueeze (squeeze ?x ?a) ?b)", move |eg, m, s| {
            let r = data(eg, s[x]).rank()?;
            let sa = norm_axes(&data(eg, s[a]).ints()?, r)?;
            let ub = norm_axes(&data(eg, s[b]).ints()?, r)?;
            (sa == ub && same_type(eg, m, s[x])).then_some(s[x])
        }),
        // unsqueeze(unsqueeze(x, a), b) = unsqueeze(x, c), c the positions
        // of all inserted dims in the result
        rule("unsqueeze-unsqueeze", "(unsqueeze (unsqueeze ?x ?a) ?b)", move |eg, m, s| {
            let r = data(eg, s[x]).rank()?;
            let (aa, bb) = (data(eg, s[a]).ints()?, data(eg, s[b]).ints()?);
            let ua = norm_axes(&aa, r + aa.len())?;
            let ub = norm_axes(&bb, r + aa.len() + bb.len())?;
            // Mark which dims of the result are new.
            let mut marks = insert_marks(&vec![false; r], &ua);
            marks = insert_marks(&marks, &ub);
            let merged: Vec<i64> = marks.iter().enumerate().filter(|(_, m)| **m).map(|(i, _)| i as i64).collect();
            let axes = lit(eg, Literal::ints(&merged));
            let u = eg.add(TensorLang::Unsqueeze([s[x], axes]));
            same_type(eg, m, u).then_some(u)
        }),
        // squeeze(squeeze(x, a), b) = squeeze(x, c), c the dims of x both remove
        rule("squeeze-squeeze", "(squeeze (squeeze ?x ?a) ?b)", move |eg, m, s| {
            let r = data(eg, s[x]).rank()?;
            let sa = norm_axes(&data(eg, s[a]).ints()?, r)?;
            let sb = norm_axes(&data(eg, s[b]).ints()?, r - sa.len().min(r))?;
            let kept: Vec<usize> = (0..r).filter(|i| !sa.contains(i)).collect();
            let mut all: Vec<i64> = sa.iter().map(|&i| i as i64).collect();
            all.extend(sb.iter().map(|&j| kept.get(j).map(|&k| k as i64)).collect::<Option<Vec<_>>>()?);
            all.sort_unstable();
            let axes = lit(eg, Literal::ints(&all));
            let sq = eg.add(TensorLang::Squeeze([s[x], axes]));
            same_type(eg, m, sq).then_some(sq)
        }),
        // slice(x, ...) = x when the steps are 1 and nothing is cut
        rule("slice-noop", "(slice ?x ?a ?b ?c ?q)", move |eg, m, s| {
            let steps_one = data(eg, s[q]).none || data(eg, s[q]).ints().is_some_and(|v| v.iter().all(|&t| t == 1));
            (steps_one && same_type(eg, m, s[x])).then_some(s[x])
        }),
        // concat(axis, x) = x
        rule("concat-single", "(concat ?a ?x)", move |eg, m, s| same_type(eg, m, s[x]).then_some(s[x])),
    ];
    // A scalar commutes with data movement: layout(x) * s = layout(x * s),
    // when x * s keeps x's shape. Same for division.
    for (name, pattern) in [
        ("transpose", "(transpose ?x ?p)"),
        ("reshape", "(reshape ?x ?p)"),
        ("unsqueeze", "(unsqueeze ?x ?p)"),
        ("squeeze", "(squeeze ?x ?p)"),
    ] {
        for (op_name, op) in [("mul", TensorLang::Mul as fn([Id; 2]) -> TensorLang), ("div", TensorLang::Div)] {
            let rule_name = format!("{op_name}-through-{name}");
            let lhs = format!("({op_name} {pattern} ?c)");
            let (x, p, c) = (var("?x"), var("?p"), var("?c"));
            let layout = name.to_string();
            rules.push(rule(&rule_name, &lhs, move |eg, m, s| {
                let rx = data(eg, s[x]).rank()?;
                let ro = data(eg, m).rank()?;
                scalar_for(eg, s[c], Some(rx.min(ro)))?;
                let scaled = eg.add(op([s[x], s[c]]));
                let moved = eg.add(rebuild(&layout, scaled, s[p]));
                same_type(eg, m, moved).then_some(moved)
            }));
        }
    }
    rules
}

/// The layout node `name` over `x` with attribute/shape child `p`.
fn rebuild(name: &str, x: Id, p: Id) -> TensorLang {
    match name {
        "transpose" => TensorLang::Transpose([x, p]),
        "reshape" => TensorLang::Reshape([x, p]),
        "unsqueeze" => TensorLang::Unsqueeze([x, p]),
        _ => TensorLang::Squeeze([x, p]),
    }
}

/// Inserts `true` marks at the sorted output positions `axes`.
fn insert_marks(marks: &[bool], axes: &[usize]) -> Vec<bool> {
    let mut out = Vec::with_capacity(marks.len() + axes.len());
    let mut src = marks.iter();
    for i in 0..marks.len() + axes.len() {
        if axes.contains(&i) {
            out.push(true);
        } else if let Some(&m) = src.next() {
            out.push(m);
        }
    }
    out
}

/// The reshape target equivalent to transposing a tensor of shape `xs` by
/// `perm`, when the transpose only moves size-1 dims, and when that target
/// can be written as a literal: fixed dims as numbers, symbolic dims that
/// stay in place as `0` (copy). A fixed dim of 0 would read as a copy, so it
/// declines then, as it does for a symbolic dim that moves.
fn relabelling_target(xs: &[Dim], perm: &[i64]) -> Option<Vec<i64>> {
    if perm.len() != xs.len() {
        return None;
    }
    let perm: Vec<usize> =
        perm.iter().map(|&p| usize::try_from(p).ok().filter(|&p| p < xs.len())).collect::<Option<_>>()?;
    let non_unit =
        |order: &mut dyn Iterator<Item = usize>| -> Vec<usize> { order.filter(|&i| xs[i] != Dim::Fixed(1)).collect() };
    if non_unit(&mut (0..xs.len())) != non_unit(&mut perm.iter().copied()) {
        return None;
    }
    perm.iter()
        .enumerate()
        .map(|(out_pos, &src)| match &xs[src] {
            Dim::Fixed(0) => None,
            Dim::Fixed(n) => i64::try_from(*n).ok(),
            Dim::Sym(_) if src == out_pos => Some(0),
            Dim::Sym(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testing::rewrites_to;
    use super::*;

    fn proves(leaves: &[&str], e: &str, t: &str) -> bool {
        rewrites_to(rules, false, leaves, e, t)
    }

    #[test]
    fn transposes_compose_and_cancel() {
        // BERT's key path: permute(0, 2, 1, 3) then transpose(-1, -2).
        assert!(proves(
            &["f32[b, s, 12, 32]"],
            "(transpose (transpose v0 i64[4]:0,2,1,3) i64[4]:0,1,3,2)",
            "(transpose v0 i64[4]:0,2,3,1)"
        ));
        assert!(proves(&["f32[2, 3]"], "(transpose (transpose v0 i64[2]:1,0) i64[2]:1,0)", "v0"));
        assert!(!proves(&["f32[2, 3, 4]"], "(transpose v0 i64[3]:1,0,2)", "v0"));
    }

    #[test]
    fn a_transpose_of_unit_dims_is_a_reshape() {
        // [b, 1, 8] -> [b, 8, 1]: b stays in place, so the target copies it.
        assert!(proves(&["f32[b, 1, 8]"], "(transpose v0 i64[3]:0,2,1)", "(reshape v0 i64[3]:0,8,1)"));
        assert!(proves(&["f32[2, 1, 8]"], "(transpose v0 i64[3]:1,0,2)", "(reshape v0 i64[3]:1,2,8)"));
        // A symbolic dim that moves cannot be written as a literal target
        // (`0` would copy the wrong dim, and `-1` fails when b is 0).
        assert!(!proves(&["f32[b, 1, 8]"], "(transpose v0 i64[3]:1,0,2)", "(reshape v0 i64[3]:1,0,8)"));
        assert!(!proves(&["f32[1, b, 8]"], "(transpose v0 i64[3]:1,0,2)", "(reshape v0 i64[3]:0,1,8)"));
        // Real data moves: no reshape.
        assert!(!proves(&["f32[2, 3]"], "(transpose v0 i64[2]:1,0)", "(reshape v0 i64[2]:3,2)"));
    }

    #[test]
    fn reshapes_compose_unless_a_copied_dim_differs() {
        assert!(proves(&["f32[6, 4]"], "(reshape (reshape v0 i64[2]:4,6) i64[1]:24)", "(reshape v0 i64[1]:24)"));
        assert!(proves(&["f32[6, 4]"], "(reshape v0 i64[2]:6,4)", "v0"));
        // `0` copies dim 0 of the *intermediate* (4), which is not x's (6).
        assert!(!proves(&["f32[6, 4]"], "(reshape (reshape v0 i64[2]:4,6) i64[2]:0,-1)", "(reshape v0 i64[2]:0,-1)"));
        assert!(proves(
            &["f32[b, 4, 6]"],
            "(reshape (reshape v0 i64[3]:0,24,1) i64[2]:0,-1)",
            "(reshape v0 i64[2]:0,-1)"
        ));
    }

    #[test]
    fn squeezes_and_unsqueezes() {
        assert!(proves(&["f32[b, 4]"], "(squeeze (unsqueeze v0 i64[1]:1) i64[1]:-2)", "v0"));
        assert!(!proves(&["f32[b, 4]"], "(squeeze (unsqueeze v0 i64[1]:1) i64[1]:0)", "v0"));
        assert!(proves(&["f32[b, 1, 4]"], "(unsqueeze (squeeze v0 i64[1]:1) i64[1]:1)", "v0"));
        // The attention-mask idiom: unsqueeze(unsqueeze(m, 1), 2) = unsqueeze(m, [1, 2]).
        assert!(proves(&["i64[b, s]"], "(unsqueeze (unsqueeze v0 i64[1]:1) i64[1]:2)", "(unsqueeze v0 i64[2]:1,2)"));
        assert!(proves(&["f32[1, b, 1, 4]"], "(squeeze (squeeze v0 i64[1]:0) i64[1]:1)", "(squeeze v0 i64[2]:0,2)"));
    }

    #[test]
    fn slices_and_concats_that_do_nothing() {
        assert!(proves(&["f32[b, 4]"], "(slice v0 i64[1]:0 i64[1]:4 i64[1]:1 none)", "v0"));
        assert!(!proves(&["f32[b, 4]"], "(slice v0 i64[1]:0 i64[1]:3 i64[1]:1 none)", "v0"));
        // Same shape but reversed: not a no-op.
        assert!(!proves(&["f32[4]"], "(slice v0 i64[1]:-1 i64[1]:-5 i64[1]:0 i64[1]:-1)", "v0"));
        assert!(proves(&["f32[4]"], "(concat i64[]:0 v0)", "v0"));
    }

    #[test]
    fn scalars_move_through_layout_ops() {
        assert!(proves(
            &["f32[b, 2, 3]"],
            "(mul (transpose v0 i64[3]:0,2,1) f32[]:0.5)",
            "(transpose (mul v0 f32[]:0.5) i64[3]:0,2,1)"
        ));
        assert!(proves(
            &["f32[b, 6]"],
            "(div (reshape v0 i64[3]:0,2,3) f32[1,1]:2)",
            "(reshape (div v0 f32[1,1]:2) i64[3]:0,2,3)"
        ));
        // A rank-3 scalar would turn the rank-2 x into rank 3: not moved.
        assert!(!proves(
            &["f32[b, 6]"],
            "(mul (reshape v0 i64[3]:0,2,3) f32[1,1,1]:2)",
            "(reshape (mul v0 f32[1,1,1]:2) i64[3]:0,2,3)"
        ));
    }

    #[test]
    fn marks() {
        assert_eq!(insert_marks(&[false, false], &[0, 3]), vec![true, false, false, true]);
    }
}

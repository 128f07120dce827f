//! The rewrite rules, one file per theme.
//!
//! - [`algebra`]: identities of arithmetic (`x * 1 → x`, double negation,
//!   division by a constant, constant reassociation, casts);
//! - [`layout`]: transposes, reshapes, squeezes and unsqueezes that compose
//!   or cancel, and scalars moved through layout ops;
//! - [`matmul`]: `MatMul` and `Gemm` forms, bias and scale folding.
//!
//! Every rule is directional and written as a left-hand pattern plus a
//! builder that checks the law's conditions against the analysis and adds
//! the right-hand side, or declines. A rule's name is what statistics and
//! tests refer to; the comment above it states its law.
//!
//! Each rule is *exact* (valid for every input in IEEE arithmetic,
//! including NaN, infinities and signed zeros, and for wrapping integers)
//! or *relaxed* (valid in real arithmetic, changing float results only by
//! rounding: reassociation, distribution, replacing a division by a
//! multiplication with the reciprocal, `x + 0.0 → x` which differs only for
//! `x = -0.0`). Relaxed rules are used only when [`RuleOptions::relaxed`]
//! is set. No rule ever changes a result's dtype or shape: every rule that
//! could (through broadcasting) checks the shapes first.

pub mod algebra;
pub mod layout;
pub mod matmul;

use super::analysis::{ClassData, TensorAnalysis, TensorGraph};
use super::lang::{Literal, TensorLang};
use egg::{Applier, Id, Pattern, PatternAst, Rewrite, Subst, Symbol, Var};
use sharc_ir::DType;

/// A rewrite rule over the tensor language.
pub type Rule = Rewrite<TensorLang, TensorAnalysis>;

/// Which rules to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleOptions {
    /// Also use relaxed rules (see the [module docs](self)).
    pub relaxed: bool,
}

/// Every rule, for the given options.
pub fn all(opts: RuleOptions) -> Vec<Rule> {
    let mut rules = algebra::rules(opts);
    rules.extend(layout::rules(opts));
    rules.extend(matmul::rules(opts));
    rules
}

/// Builds the right-hand side of a rule from a match, or declines with
/// `None`. Arguments: the e-graph, the matched class, the substitution.
type BuildFn = dyn Fn(&mut TensorGraph, Id, &Subst) -> Option<Id> + Send + Sync;

/// An applier that runs a [`BuildFn`] and unions its result with the match.
struct Build(Box<BuildFn>);

impl Applier<TensorLang, TensorAnalysis> for Build {
    fn apply_one(
        &self,
        egraph: &mut TensorGraph,
        eclass: Id,
        subst: &Subst,
        _searcher_ast: Option<&PatternAst<TensorLang>>,
        _rule_name: Symbol,
    ) -> Vec<Id> {
        match (self.0)(egraph, eclass, subst) {
            Some(new) if egraph.union(eclass, new) => vec![eclass],
            _ => vec![],
        }
    }
}

/// A rule: `name`, the left-hand pattern, and the builder of the right-hand
/// side. The patterns are fixed text; a malformed one is a programming
/// error caught by the tests that build every rule set.
pub(crate) fn rule(
    name: &str,
    lhs: &str,
    build: impl Fn(&mut TensorGraph, Id, &Subst) -> Option<Id> + Send + Sync + 'static,
) -> Rule {
    let searcher: Pattern<TensorLang> =
        lhs.parse().unwrap_or_else(|e| panic!("rule {name}: the pattern {lhs} does not parse: {e}"));
    Rewrite::new(name, searcher, Build(Box::new(build))).unwrap_or_else(|e| panic!("rule {name} is malformed: {e}"))
}

/// A pattern variable (`"?x"`).
pub(crate) fn var(name: &str) -> Var {
    name.parse().unwrap_or_else(|_| panic!("{name} is not a pattern variable"))
}

/// The analysis data of a class.
pub(crate) fn data(eg: &TensorGraph, id: Id) -> &ClassData {
    &eg[id].data
}

/// True when two classes have the same dtype and the same known shape: a
/// rewrite from one to the other changes no type.
pub(crate) fn same_type(eg: &TensorGraph, a: Id, b: Id) -> bool {
    let (x, y) = (data(eg, a), data(eg, b));
    x.dtype().is_some() && x.dtype() == y.dtype() && x.shape().is_some() && x.shape() == y.shape()
}

/// True for a float dtype (the ones rules with float laws apply to).
pub(crate) fn is_float(eg: &TensorGraph, id: Id) -> bool {
    data(eg, id).dtype().is_some_and(DType::is_float)
}

/// True for an integer dtype (wrapping arithmetic, where more laws hold).
pub(crate) fn is_int(eg: &TensorGraph, id: Id) -> bool {
    data(eg, id).dtype().is_some_and(DType::is_integer)
}

/// A scalar constant that can scale another tensor without changing its
/// shape: one element, of rank at most `rank_limit`.
pub(crate) fn scalar_for(eg: &TensorGraph, s: Id, rank_limit: Option<usize>) -> Option<f64> {
    let d = data(eg, s);
    let lit = d.literal.as_ref()?;
    if lit.len() != 1 || lit.shape.len() > rank_limit? {
        return None;
    }
    lit.splat_value()
}

/// Adds a literal.
pub(crate) fn lit(eg: &mut TensorGraph, l: Literal) -> Id {
    eg.add(TensorLang::Lit(l))
}

/// Normalizes axes against a rank; `None` when one is out of range or
/// repeated.
pub(crate) fn norm_axes(axes: &[i64], rank: usize) -> Option<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let a = if a < 0 { a + rank as i64 } else { a };
        if a < 0 || a >= rank as i64 || out.contains(&(a as usize)) {
            return None;
        }
        out.push(a as usize);
    }
    out.sort_unstable();
    Some(out)
}

#[cfg(test)]
pub(crate) mod testing;

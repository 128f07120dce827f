//! The e-class analysis: what every e-class is known to be.
//!
//! Each class carries a [`Fact`] (dtype, shape with symbolic dims, and the
//! elements when they are small and known), computed by sharc's own shape
//! inference ([`sharc_ir::infer_node_facts`]) on the IR op a node lowers to,
//! so the analysis and the IR can never disagree about what a node means.
//! Rules use the facts in their conditions (a law that only holds for equal
//! shapes checks them), and the cost model reads sizes from them.
//!
//! Besides the fact, a class records whether it can be computed at load
//! time (it depends only on weights and constants) and whether it depends on
//! a weight. A class whose elements inference knows completely and that
//! does not depend on a weight is *folded*: a [`Literal`] node is added to
//! it, so extraction can replace the computation by the constant. Classes
//! that depend on weights are never folded, because that would store a new
//! tensor beside the weight and grow the model.
//!
//! Inference invents *fresh* symbols (`unk__...`) for dims it cannot
//! determine. Such a dim says nothing, so [`ClassData::shape`] hides shapes
//! that contain one, and rules never compare them.

use super::lang::{LeafRef, Literal, LiteralSource, OpRef, TensorLang};
use egg::{Analysis, DidMerge, EGraph, Id};
use sharc_ir::infer::is_fresh_dim;
use sharc_ir::{DType, Dim, Fact, Op, Type, ValueRef, infer_node_facts};

/// The e-graph the pass saturates.
pub type TensorGraph = EGraph<TensorLang, TensorAnalysis>;

/// What kind of value a leaf is; decides whether it is static.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafKind {
    /// A graph input or an output of an op outside the language: known at
    /// run time only.
    Dynamic,
    /// A stored weight.
    Weight,
    /// A constant too large to carry as a literal.
    Constant,
}

/// A value from outside the lifted region.
#[derive(Clone, Debug)]
pub struct LeafInfo {
    /// The value it stands for.
    pub value: ValueRef,
    /// What kind of value it is.
    pub kind: LeafKind,
    /// What is known about it.
    pub fact: Fact,
}

/// The analysis state: the tables the leaves and `(opN ...)` nodes refer to.
#[derive(Clone, Debug, Default)]
pub struct TensorAnalysis {
    /// Leaf table, indexed by [`LeafRef`].
    pub leaves: Vec<LeafInfo>,
    /// Op table, indexed by [`OpRef`].
    pub ops: Vec<Op>,
    /// Nodes whose type inference failed, with the reason. A sound rule
    /// set builds none; the pass reports how many there were, and the splice
    /// re-checks every node it creates.
    pub failures: Vec<String>,
}

/// What is known about one e-class.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassData {
    /// Type and, for small tensors, elements.
    pub fact: Fact,
    /// The elements as a literal, when they are known, small, of a literal
    /// dtype and do not depend on a weight.
    pub literal: Option<Literal>,
    /// Computable at load time: depends on weights and constants only.
    pub is_static: bool,
    /// Depends on at least one weight.
    pub weighty: bool,
    /// The class is `none` (an absent operand).
    pub none: bool,
}

impl ClassData {
    fn leafless(fact: Fact) -> ClassData {
        ClassData { fact, literal: None, is_static: true, weighty: false, none: false }
    }

    /// The dtype, if known.
    pub fn dtype(&self) -> Option<DType> {
        self.fact.ty.dtype()
    }

    /// The shape, when the rank is known and no dim is a fresh symbol.
    pub fn shape(&self) -> Option<&[Dim]> {
        let s = self.fact.ty.shape()?;
        if s.dims().iter().any(is_fresh_dim) { None } else { Some(s.dims()) }
    }

    /// The rank, if known (fresh dims do not hide the rank).
    pub fn rank(&self) -> Option<usize> {
        self.fact.ty.shape().map(|s| s.rank())
    }

    /// The shape as sizes, when every dim is fixed.
    pub fn fixed_shape(&self) -> Option<Vec<usize>> {
        self.fact.ty.shape()?.as_fixed()
    }

    /// The value every element has, for a known uniform constant.
    pub fn splat(&self) -> Option<f64> {
        self.literal.as_ref().and_then(Literal::splat_value)
    }

    /// True for a constant with exactly one element.
    pub fn is_scalar_constant(&self) -> bool {
        self.literal.as_ref().is_some_and(|l| l.len() == 1)
    }

    /// The integer elements of a known constant.
    pub fn ints(&self) -> Option<Vec<i64>> {
        self.literal.as_ref().and_then(|l| l.as_ints().map(<[i64]>::to_vec))
    }
}

/// How much a type says: unknown < unranked < ranked with fresh dims <
/// ranked without.
fn informativeness(t: &Type) -> u8 {
    match t {
        Type::Unknown => 0,
        Type::Tensor(tt) => match &tt.shape {
            None => 1,
            Some(s) if s.dims().iter().any(is_fresh_dim) => 2,
            Some(_) => 3,
        },
        Type::Sequence(_) | Type::Optional(_) => 1,
    }
}

/// Answers the lowering's questions from the e-graph.
pub struct ClassSource<'a>(pub &'a TensorGraph);

impl LiteralSource for ClassSource<'_> {
    fn literal(&self, id: Id) -> Option<Literal> {
        self.0[id].data.literal.clone()
    }
    fn is_none(&self, id: Id) -> bool {
        self.0[id].data.none
    }
}

impl TensorAnalysis {
    /// The fact about a node's value, from its children's classes. `label`
    /// names fresh symbols. Errors when the node is ill-typed.
    pub fn infer(egraph: &TensorGraph, enode: &TensorLang, label: &str) -> Result<Fact, String> {
        let lowered = enode.to_ir(&egraph.analysis.ops, &ClassSource(egraph))?;
        let inputs: Vec<Option<Fact>> =
            lowered.inputs.iter().map(|c| c.map(|id| egraph[id].data.fact.clone())).collect();
        let mut facts = infer_node_facts(&lowered.op, &inputs, &[label]).map_err(|e| e.message)?;
        if facts.is_empty() {
            return Err(format!("{} produced no output", lowered.op.op_type()));
        }
        Ok(facts.swap_remove(0))
    }
}

impl Analysis<TensorLang> for TensorAnalysis {
    type Data = ClassData;

    fn make(egraph: &mut TensorGraph, enode: &TensorLang, id: Id) -> ClassData {
        match enode {
            TensorLang::None => ClassData { none: true, ..ClassData::leafless(Fact::of_type(Type::Unknown)) },
            TensorLang::Lit(l) => {
                ClassData { literal: Some(l.clone()), ..ClassData::leafless(Fact::of_value(l.to_sym())) }
            }
            TensorLang::Leaf(LeafRef(k)) => match egraph.analysis.leaves.get(*k as usize) {
                Some(leaf) => ClassData {
                    fact: leaf.fact.clone(),
                    literal: None,
                    is_static: leaf.kind != LeafKind::Dynamic,
                    weighty: leaf.kind == LeafKind::Weight,
                    none: false,
                },
                None => ClassData { is_static: false, ..ClassData::leafless(Fact::of_type(Type::Unknown)) },
            },
            _ => {
                let children = enode.data_children();
                let is_static = children.iter().all(|&c| egraph[c].data.is_static);
                let weighty = children.iter().any(|&c| egraph[c].data.weighty);
                let fact = match TensorAnalysis::infer(egraph, enode, &format!("e{id}")) {
                    Ok(f) => f,
                    Err(m) => {
                        egraph.analysis.failures.push(format!("{enode}: {m}"));
                        Fact::of_type(Type::Unknown)
                    }
                };
                let literal = if weighty { None } else { fact.value.as_ref().and_then(Literal::from_sym) };
                ClassData { fact, literal, is_static, weighty, none: false }
            }
        }
    }

    fn merge(&mut self, a: &mut ClassData, b: ClassData) -> DidMerge {
        let before = a.clone();
        if informativeness(&b.fact.ty) > informativeness(&a.fact.ty) {
            a.fact.ty = b.fact.ty.clone();
        }
        if a.fact.value.is_none() && b.fact.value.is_some() {
            a.fact.value = b.fact.value.clone();
        }
        if a.literal.is_none() && b.literal.is_some() {
            a.literal = b.literal.clone();
        }
        // One node that needs no run-time input (or no weight) is enough.
        a.is_static |= b.is_static;
        a.weighty &= b.weighty;
        a.none |= b.none;
        DidMerge(*a != before, *a != b)
    }

    fn modify(egraph: &mut TensorGraph, id: Id) {
        // Constant folding: a class whose value is known gets the literal.
        let Some(lit) = egraph[id].data.literal.clone() else { return };
        if egraph[id].nodes.iter().any(|n| matches!(n, TensorLang::Lit(_))) {
            return;
        }
        let lit_id = egraph.add(TensorLang::Lit(lit));
        egraph.union(id, lit_id);
    }
}

/// The op reference of a node, for `(opN ...)` nodes.
pub fn op_ref(enode: &TensorLang) -> Option<OpRef> {
    match enode {
        TensorLang::Other(r, _) => Some(*r),
        _ => None,
    }
}

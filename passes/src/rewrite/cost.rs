//! The cost model: floating-point operations plus bytes moved, per node,
//! from the shapes the analysis knows.
//!
//! A node costs a fixed dispatch overhead ([`DISPATCH`]) plus its
//! arithmetic and its memory traffic (bytes read and written count one unit
//! each, like one flop). Pure layout changes that only relabel dims
//! (`reshape`, `squeeze`, `unsqueeze`, `identity`) move no bytes; a
//! `transpose`, `slice` or `concat` copies its output.
//!
//! Sizes come from the analysis. A symbolic dim counts as
//! `nominal_dim` elements (an option of the pass, 64 by default, so
//! `batch*seq` counts 4096), a shape the analysis does not know as
//! `nominal_dim²` elements.
//!
//! A node whose operands are all static (weights and constants) runs once,
//! when a backend loads the model, not per inference, so it costs
//! [`STATIC_FACTOR`] of the same node at run time: moving work onto weights
//! (`(x @ W) * s` → `x @ (W * s)`) pays, yet pointless static nodes still
//! cost something. Leaves and literals are free.
//!
//! Nodes that were not in the input graph carry a small extra
//! ([`NOVELTY`]), so that among equally cheap forms extraction keeps the
//! original and an unchanged region prints unchanged.
//!
//! Extraction is greedy (egg's [`egg::Extractor`]): the cost of a node
//! includes its operands' full costs, so a subexpression shared by two
//! consumers is counted twice. That biases extraction towards forms without
//! sharing, never towards wrong ones.

use super::analysis::{ClassData, TensorGraph};
use super::lang::TensorLang;
use egg::{CostFunction, Id, Language};
use sharc_ir::Dim;
use sharc_ir::infer::Expr;
use std::collections::HashSet;

/// The fixed cost of running any node (a kernel launch, a dispatch), in the
/// units of one flop or one byte moved.
pub const DISPATCH: f64 = 1000.0;

/// What a node whose operands are all static costs, relative to running it
/// at every inference.
pub const STATIC_FACTOR: f64 = 1e-3;

/// The extra cost of a node the input graph did not have.
pub const NOVELTY: f64 = 1e-3;

/// Costs are capped here so that sums stay finite and comparable.
const MAX_COST: f64 = 1e300;

/// The cost function the extractor uses. See the [module docs](self).
pub struct CostModel<'a> {
    egraph: &'a TensorGraph,
    nominal_dim: f64,
    original: HashSet<TensorLang>,
}

impl<'a> CostModel<'a> {
    /// A cost model over `egraph`, counting symbolic dims as `nominal_dim`.
    /// `original` holds the nodes of the input graph (with canonical
    /// children); other nodes pay [`NOVELTY`].
    pub fn new(egraph: &'a TensorGraph, nominal_dim: u64, original: HashSet<TensorLang>) -> CostModel<'a> {
        CostModel { egraph, nominal_dim: nominal_dim.max(1) as f64, original }
    }

    fn data(&self, id: Id) -> &ClassData {
        &self.egraph[id].data
    }

    /// Number of elements of a class, with the nominal size for symbolic
    /// dims and unknown shapes.
    pub fn numel(&self, id: Id) -> f64 {
        numel(self.data(id), self.nominal_dim)
    }

    fn bytes(&self, id: Id) -> f64 {
        let d = self.data(id);
        let width = d.dtype().and_then(|t| t.bit_width()).unwrap_or(32) as f64;
        numel(d, self.nominal_dim) * (width / 8.0).max(0.125)
    }

    /// The own cost of a node, without its operands.
    pub fn node_cost(&self, enode: &TensorLang) -> f64 {
        if enode.is_leaf_kind() {
            return 0.0;
        }
        let data_children: Vec<Id> = enode.data_children().into_iter().filter(|&c| !self.data(c).none).collect();
        let out = self.egraph.lookup(enode.clone());
        let (out_elems, out_bytes) = match out {
            Some(o) => (self.numel(o), self.bytes(o)),
            // Not yet in the e-graph: size it like its largest operand.
            None => data_children
                .iter()
                .map(|&c| (self.numel(c), self.bytes(c)))
                .fold((0.0, 0.0), |a, b| (f64::max(a.0, b.0), f64::max(a.1, b.1))),
        };
        let in_bytes: f64 = data_children.iter().map(|&c| self.bytes(c)).sum();
        let elementwise = in_bytes + out_bytes;
        let (flops, bytes) = match enode {
            TensorLang::Add(_) | TensorLang::Sub(_) | TensorLang::Mul(_) | TensorLang::Neg(_) => {
                (out_elems, elementwise)
            }
            TensorLang::Div(_) | TensorLang::Sqrt(_) | TensorLang::Recip(_) => (4.0 * out_elems, elementwise),
            TensorLang::Exp(_) | TensorLang::Pow(_) => (10.0 * out_elems, elementwise),
            TensorLang::Where(_) | TensorLang::Cast(_) => (out_elems, elementwise),
            TensorLang::MatMul([a, _]) | TensorLang::Gemm([_, a, _, _]) => {
                // out = [..., M, N]; each output element is a K-long dot product.
                let k = self.inner_dim(enode, *a);
                (2.0 * out_elems * k, elementwise)
            }
            TensorLang::Reshape(_) | TensorLang::Squeeze(_) | TensorLang::Unsqueeze(_) | TensorLang::Identity(_) => {
                (0.0, 0.0)
            }
            TensorLang::Transpose(_) | TensorLang::Slice(_) | TensorLang::Concat(_) => (0.0, 2.0 * out_bytes),
            TensorLang::ReduceSum(_) | TensorLang::ReduceMean(_) => {
                (data_children.first().map_or(out_elems, |&c| self.numel(c)), elementwise)
            }
            TensorLang::Softmax(_) => (15.0 * out_elems, 2.0 * elementwise),
            _ => (out_elems, elementwise),
        };
        let mut cost = DISPATCH + flops + bytes;
        if !data_children.is_empty() && data_children.iter().all(|&c| self.data(c).is_static) {
            cost *= STATIC_FACTOR;
        }
        if !self.original.contains(enode) {
            cost += NOVELTY;
        }
        cost
    }

    /// The contracted dim of a matmul-like node: the last dim of `a` (the
    /// first when Gemm transposes `a`).
    fn inner_dim(&self, enode: &TensorLang, a: Id) -> f64 {
        let trans_a = match enode {
            TensorLang::Gemm([attrs, ..]) => {
                self.data(*attrs).literal.as_ref().map(|l| l.to_f64s()).is_some_and(|v| v.get(2) == Some(&1.0))
            }
            _ => false,
        };
        let Some(shape) = self.data(a).fact.ty.shape() else { return self.nominal_dim };
        let dims = shape.dims();
        let d = if trans_a && dims.len() >= 2 { dims.get(dims.len() - 2) } else { dims.last() };
        d.map_or(1.0, |d| dim_size(d, self.nominal_dim))
    }
}

/// The size of a dim, with the nominal size for every symbol in it.
pub fn dim_size(d: &Dim, nominal: f64) -> f64 {
    match d {
        Dim::Fixed(n) => *n as f64,
        Dim::Sym(_) => {
            let e = Expr::from_dim(d);
            let mut v = e.clone();
            for s in e.symbols() {
                match v.subst(&s, &Expr::int(nominal as i64)) {
                    Some(next) => v = next,
                    None => return nominal,
                }
            }
            v.as_int().map_or(nominal, |n| n.max(1) as f64)
        }
    }
}

fn numel(d: &ClassData, nominal: f64) -> f64 {
    match d.fact.ty.shape() {
        Some(s) => s.dims().iter().map(|d| dim_size(d, nominal)).product::<f64>().min(MAX_COST),
        None => nominal * nominal,
    }
}

impl CostFunction<TensorLang> for CostModel<'_> {
    type Cost = f64;

    fn cost<C>(&mut self, enode: &TensorLang, mut costs: C) -> f64
    where
        C: FnMut(Id) -> f64,
    {
        let own = self.node_cost(enode);
        enode.fold(own, |sum, id| (sum + costs(id)).min(MAX_COST))
    }
}

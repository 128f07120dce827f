//! Lifting: from the graph to one [`RecExpr`] over [`TensorLang`].
//!
//! A node is *liftable* when it has exactly one output, is pure, owns no body
//! graph and produces a tensor (or a value of unknown type): the language
//! carries every such op, the ones rules know by name and the rest as
//! `(opN ...)`. Small constants become [`Literal`]s. Everything else is a
//! *leaf*, bound to its [`ValueRef`]: graph inputs, weights, large
//! constants, and the outputs of *barrier* nodes (several outputs, impure,
//! control flow, sequences).
//!
//! # Regions
//!
//! The liftable nodes are split into regions so that rewriting can never
//! create a cycle through a barrier. Each node gets a *level*: the largest
//! number of barriers on any path from a source to it. Along any path the
//! level never falls and rises by one past each barrier, so a path that
//! leaves the liftable nodes of level `L` through a barrier can only come
//! back at a higher level. Taking the liftable nodes of one level as a region
//! therefore guarantees that no leaf of a region depends on the region, and
//! any expression over the region's leaves can replace a region value.
//! Within a region, a value of another region is a leaf like any other.
//!
//! The region *outputs* (the roots) are the values used outside their region
//! or by the graph's outputs; the splice replaces exactly those.

use super::analysis::{LeafInfo, LeafKind, TensorAnalysis, TensorGraph};
use super::lang::{LeafRef, Literal, OpRef, TensorLang, gemm_literal};
use egg::{Id, Language, RecExpr};
use sharc_ir::infer::{MAX_TRACKED, SymTensor};
use sharc_ir::op::RoundMode;
use sharc_ir::{BinaryOp, Fact, Graph, NodeId, Op, ReduceKind, Type, UnaryOp, ValueRef};
use std::collections::HashMap;

/// The lifted form of a graph's liftable nodes.
#[derive(Clone, Debug, Default)]
pub struct Lifted {
    /// Every lifted node, each after its operands.
    pub expr: RecExpr<TensorLang>,
    /// The leaf table ([`LeafRef`] indexes it).
    pub leaves: Vec<LeafInfo>,
    /// The op table of `(opN ...)` nodes ([`OpRef`] indexes it).
    pub ops: Vec<Op>,
    /// Region outputs: the graph value and its expression.
    pub roots: Vec<(ValueRef, Id)>,
    /// Every lifted value (region nodes and lifted constants) and its
    /// expression, in topological order.
    pub values: Vec<(ValueRef, Id)>,
    /// The lifted nodes, in topological order.
    pub nodes: Vec<NodeId>,
    /// Number of non-empty regions.
    pub regions: usize,
}

/// What a node is to the lift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Input, weight, or a constant too large for a literal.
    Source(LeafKind),
    /// A constant carried as a literal.
    Literal,
    /// A node of a region.
    Region,
    /// A node the language cannot carry.
    Barrier,
}

fn role(g: &Graph, id: NodeId) -> Role {
    let node = g.node(id);
    match &node.op {
        Op::Input => Role::Source(LeafKind::Dynamic),
        Op::Weight(_) => Role::Source(LeafKind::Weight),
        Op::Constant(t) => {
            if Literal::from_tensor(t).is_some() {
                Role::Literal
            } else {
                Role::Source(LeafKind::Constant)
            }
        }
        op => {
            let tensor_or_unknown =
                node.outputs.first().is_some_and(|o| matches!(o.ty, Type::Tensor(_) | Type::Unknown));
            if node.outputs.len() == 1 && tensor_or_unknown && op.is_pure() && op.subgraphs().is_empty() {
                Role::Region
            } else {
                Role::Barrier
            }
        }
    }
}

/// Builds the expression, remembering leaves, ops and literals.
struct Builder<'g> {
    g: &'g Graph,
    out: Lifted,
    leaf_of: HashMap<ValueRef, Id>,
    lit_of: HashMap<Literal, Id>,
    op_index: HashMap<String, u32>,
    none: Option<Id>,
}

impl Builder<'_> {
    fn add(&mut self, n: TensorLang) -> Id {
        self.out.expr.add(n)
    }

    fn none(&mut self) -> Id {
        if let Some(id) = self.none {
            return id;
        }
        let id = self.add(TensorLang::None);
        self.none = Some(id);
        id
    }

    fn lit(&mut self, l: Literal) -> Id {
        if let Some(&id) = self.lit_of.get(&l) {
            return id;
        }
        let id = self.add(TensorLang::Lit(l.clone()));
        self.lit_of.insert(l, id);
        id
    }

    fn leaf(&mut self, v: ValueRef, kind: LeafKind) -> Id {
        if let Some(&id) = self.leaf_of.get(&v) {
            return id;
        }
        let ty = self.g.value_type(v).clone();
        let mut fact = Fact::of_type(ty);
        if let Op::Weight(w) = &self.g.node(v.node).op
            && let Some(w) = self.g.weights.get(*w)
            && w.num_elements() <= MAX_TRACKED as u64
        {
            fact.value = SymTensor::from_tensor(w.tensor());
        }
        let k = self.out.leaves.len() as u32;
        self.out.leaves.push(LeafInfo { value: v, kind, fact });
        let id = self.add(TensorLang::Leaf(LeafRef(k)));
        self.leaf_of.insert(v, id);
        id
    }

    fn op_ref(&mut self, op: &Op) -> OpRef {
        let key = format!("{op:?}");
        if let Some(&k) = self.op_index.get(&key) {
            return OpRef(k);
        }
        let k = self.out.ops.len() as u32;
        self.out.ops.push(op.clone());
        self.op_index.insert(key, k);
        OpRef(k)
    }
}

/// Lifts the liftable nodes of `g`. Fails only on a graph with a cycle.
pub fn lift(g: &Graph) -> Result<Lifted, String> {
    let order = g.topo_order().map_err(|e| e.to_string())?;
    let roles: HashMap<NodeId, Role> = order.iter().map(|&n| (n, role(g, n))).collect();
    let mut level: HashMap<NodeId, usize> = HashMap::new();
    for &n in &order {
        let l = g.predecessors(n).iter().map(|p| level[p] + usize::from(roles[p] == Role::Barrier)).max().unwrap_or(0);
        level.insert(n, l);
    }
    let mut b = Builder {
        g,
        out: Lifted::default(),
        leaf_of: HashMap::new(),
        lit_of: HashMap::new(),
        op_index: HashMap::new(),
        none: None,
    };
    // Leaves are per region: a value of region A used in region B is a leaf
    // of B, while A refers to it by its expression.
    let mut expr_of: HashMap<ValueRef, Id> = HashMap::new();
    let mut regions: std::collections::HashSet<usize> = Default::default();
    for &n in &order {
        let v = ValueRef::new(n, 0);
        match roles[&n] {
            Role::Literal => {
                if let Op::Constant(t) = &g.node(n).op
                    && let Some(l) = Literal::from_tensor(t)
                {
                    let id = b.lit(l);
                    expr_of.insert(v, id);
                    b.out.values.push((v, id));
                    b.out.nodes.push(n);
                }
            }
            Role::Region => {
                regions.insert(level[&n]);
                let mut inputs: Vec<Option<Id>> = Vec::new();
                for input in g.node_inputs(n) {
                    let Some(u) = input else {
                        inputs.push(None);
                        continue;
                    };
                    let id = match roles[&u.node] {
                        Role::Literal => expr_of.get(&u).copied(),
                        Role::Region if level[&u.node] == level[&n] => expr_of.get(&u).copied(),
                        _ => None,
                    };
                    let id = match id {
                        Some(id) => id,
                        None => {
                            let kind = match roles[&u.node] {
                                Role::Source(k) => k,
                                _ => LeafKind::Dynamic,
                            };
                            // A value of another region counts as dynamic, even
                            // when it happens to depend on weights only.
                            b.leaf(u, kind)
                        }
                    };
                    inputs.push(Some(id));
                }
                let node = from_ir(&mut b, &g.node(n).op, &inputs, input_rank(g, n));
                let id = b.add(node);
                expr_of.insert(v, id);
                b.out.values.push((v, id));
                b.out.nodes.push(n);
            }
            Role::Source(_) | Role::Barrier => {}
        }
    }
    // Roots: region values used outside their region or as graph outputs.
    let graph_outputs: Vec<ValueRef> = g.outputs().iter().map(|o| o.value).collect();
    for &(v, id) in &b.out.values {
        if roles[&v.node] != Role::Region {
            continue;
        }
        let outside = g.users(v).iter().any(|(user, _)| roles[user] != Role::Region || level[user] != level[&v.node]);
        if outside || graph_outputs.contains(&v) {
            b.out.roots.push((v, id));
        }
    }
    b.out.regions = regions.len();
    Ok(b.out)
}

/// The rank of a node's first input, when known (for `Transpose` without
/// `perm`, which reverses the dims).
fn input_rank(g: &Graph, n: NodeId) -> Option<usize> {
    let v = g.node_input(n, 0)?;
    g.value_type(v).shape().map(|s| s.rank())
}

/// The language node for an IR op with lifted operands (`None` for absent
/// optional inputs).
fn from_ir(b: &mut Builder, op: &Op, inputs: &[Option<Id>], rank0: Option<usize>) -> TensorLang {
    let all: Option<Vec<Id>> = inputs.iter().copied().collect();
    let exact = |k: usize| all.as_ref().filter(|a| a.len() == k).cloned();
    let named = match op {
        Op::Binary(bin) => exact(2).and_then(|c| {
            let c = [c[0], c[1]];
            Some(match bin {
                BinaryOp::Add => TensorLang::Add(c),
                BinaryOp::Sub => TensorLang::Sub(c),
                BinaryOp::Mul => TensorLang::Mul(c),
                BinaryOp::Div => TensorLang::Div(c),
                BinaryOp::Pow => TensorLang::Pow(c),
                _ => return None,
            })
        }),
        Op::Unary(u) => exact(1).and_then(|c| {
            Some(match u {
                UnaryOp::Neg => TensorLang::Neg(c[0]),
                UnaryOp::Sqrt => TensorLang::Sqrt(c[0]),
                UnaryOp::Reciprocal => TensorLang::Recip(c[0]),
                UnaryOp::Exp => TensorLang::Exp(c[0]),
                _ => return None,
            })
        }),
        Op::Identity => exact(1).map(|c| TensorLang::Identity(c[0])),
        Op::MatMul => exact(2).map(|c| TensorLang::MatMul([c[0], c[1]])),
        Op::Gemm(attrs) => {
            let c = match inputs {
                [Some(x), Some(y)] => Some((*x, *y, b.none())),
                [Some(x), Some(y), c] => Some((*x, *y, c.unwrap_or_else(|| b.none()))),
                _ => None,
            };
            c.map(|(x, y, c)| TensorLang::Gemm([b.lit(gemm_literal(attrs)), x, y, c]))
        }
        Op::Transpose(t) => {
            let perm = match &t.perm {
                Some(p) => Some(p.clone()),
                None => rank0.map(|r| (0..r as i64).rev().collect()),
            };
            match (exact(1), perm) {
                (Some(c), Some(p)) => Some(TensorLang::Transpose([c[0], b.lit(Literal::ints(&p))])),
                _ => None,
            }
        }
        Op::Reshape(r) if !r.allowzero => exact(2).map(|c| TensorLang::Reshape([c[0], c[1]])),
        Op::Unsqueeze => exact(2).map(|c| TensorLang::Unsqueeze([c[0], c[1]])),
        Op::Squeeze => match inputs {
            [Some(x)] => Some(TensorLang::Squeeze([*x, b.none()])),
            [Some(x), Some(a)] => Some(TensorLang::Squeeze([*x, *a])),
            _ => None,
        },
        Op::Concat(c) => all.filter(|a| !a.is_empty()).map(|xs| {
            let axis = b.lit(Literal::int_scalar(c.axis));
            TensorLang::Concat(std::iter::once(axis).chain(xs).collect())
        }),
        Op::Slice if (3..=5).contains(&inputs.len()) && inputs[..3].iter().all(Option::is_some) => {
            let mut c = [b.none(); 5];
            for (i, x) in inputs.iter().enumerate() {
                if let Some(x) = x {
                    c[i] = *x;
                }
            }
            Some(TensorLang::Slice(c))
        }
        Op::Reduce(r) if matches!(r.kind, ReduceKind::Sum | ReduceKind::Mean) => {
            let flags = b.lit(Literal::ints(&[r.attrs.keepdims as i64, r.attrs.noop_with_empty_axes as i64]));
            let c = match inputs {
                [Some(x)] => Some([*x, b.none(), flags]),
                [Some(x), Some(a)] => Some([*x, *a, flags]),
                _ => None,
            };
            c.map(|c| if r.kind == ReduceKind::Sum { TensorLang::ReduceSum(c) } else { TensorLang::ReduceMean(c) })
        }
        Op::Softmax(a) => exact(1).map(|c| TensorLang::Softmax([c[0], b.lit(Literal::int_scalar(a.axis))])),
        Op::Where => exact(3).map(|c| TensorLang::Where([c[0], c[1], c[2]])),
        Op::Cast(c) if c.saturate && c.round_mode == RoundMode::Up => {
            exact(1).map(|x| TensorLang::Cast([x[0], b.lit(Literal::int_scalar(c.to.onnx_code() as i64))]))
        }
        _ => None,
    };
    if let Some(n) = named {
        return n;
    }
    let r = b.op_ref(op);
    let children: Vec<Id> = inputs
        .iter()
        .map(|x| match x {
            Some(x) => *x,
            None => b.none(),
        })
        .collect();
    TensorLang::Other(r, children.into_boxed_slice())
}

impl Lifted {
    /// Loads the expression into a fresh e-graph; returns it and the e-class
    /// of every expression node.
    pub fn to_egraph(&self) -> (TensorGraph, Vec<Id>) {
        let analysis = TensorAnalysis { leaves: self.leaves.clone(), ops: self.ops.clone(), failures: Vec::new() };
        let mut eg = TensorGraph::new(analysis);
        let mut class_of: Vec<Id> = Vec::with_capacity(self.expr.len());
        for node in self.expr.as_ref() {
            let n = node.clone().map_children(|c| class_of[usize::from(c)]);
            class_of.push(eg.add(n));
        }
        eg.rebuild();
        (eg, class_of)
    }

    /// The expression of a root, as a self-contained `RecExpr` (for tests
    /// and debugging).
    pub fn root_expr(&self, root: Id) -> RecExpr<TensorLang> {
        let nodes = self.expr.as_ref();
        let mut memo: HashMap<Id, Id> = HashMap::new();
        let mut out = RecExpr::default();
        fn go(nodes: &[TensorLang], id: Id, memo: &mut HashMap<Id, Id>, out: &mut RecExpr<TensorLang>) -> Id {
            if let Some(&m) = memo.get(&id) {
                return m;
            }
            let n = nodes[usize::from(id)].clone().map_children(|c| go(nodes, c, memo, out));
            let m = out.add(n);
            memo.insert(id, m);
            m
        }
        go(nodes, root, &mut memo, &mut out);
        out
    }
}

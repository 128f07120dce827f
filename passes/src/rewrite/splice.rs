//! Splicing: writing the extracted expressions back into the graph.
//!
//! Every region output's e-class is materialized from the node extraction
//! chose for it, operands first. A class is materialized once, so shared
//! subexpressions stay shared. Where the chosen node is one the graph
//! already has, with the same operands, that node is reused, so unchanged
//! parts keep their nodes and names. Literals reuse an existing constant
//! node holding the same value where there is one.
//!
//! Then each region output's uses move to its new value, the lifted nodes
//! nobody uses any more are removed (and a weight or large constant that was
//! used only by them), and a new node takes over the name of a removed value
//! of its class, so a rewritten graph output keeps its value name and a
//! rewritten region does not rename everything downstream. Every new node's
//! type is inferred from its actual operands; a node whose type cannot be
//! inferred is an error, naming it.

use super::analysis::{ClassSource, TensorGraph};
use super::lang::{Literal, TensorLang};
use super::lift::Lifted;
use egg::{Id, Language};
use sharc_ir::infer::is_fresh_dim;
use sharc_ir::{Fact, Graph, NodeId, Op, Type, ValueInfo, ValueRef, infer_node_facts};
use std::collections::{HashMap, HashSet};

/// What the splice did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpliceStats {
    /// Nodes created.
    pub created: usize,
    /// Nodes kept as they were because extraction chose them again.
    pub reused: usize,
    /// Nodes removed because nothing used them any more.
    pub removed: usize,
    /// Region outputs whose uses moved to a new value.
    pub replaced: usize,
}

impl SpliceStats {
    /// True when the graph changed.
    pub fn changed(&self) -> bool {
        self.created > 0 || self.removed > 0 || self.replaced > 0
    }
}

/// Writes the extraction back. `class_of` maps expression nodes of
/// `lifted` to their e-classes; `best` gives the chosen node of a class.
pub fn splice<'e>(
    g: &mut Graph,
    lifted: &Lifted,
    egraph: &'e TensorGraph,
    class_of: &[Id],
    best: impl Fn(Id) -> &'e TensorLang,
) -> Result<SpliceStats, String> {
    let canon = |id: Id| egraph.find(id);
    let nodes = lifted.expr.as_ref();
    // The graph's own nodes, keyed by their canonical e-node.
    let mut original: HashMap<TensorLang, ValueRef> = HashMap::new();
    let mut literals: HashMap<Literal, ValueRef> = HashMap::new();
    let mut class_values: HashMap<Id, Vec<ValueRef>> = HashMap::new();
    for &(v, e) in &lifted.values {
        let n = nodes[usize::from(e)].clone().map_children(|c| canon(class_of[usize::from(c)]));
        if let TensorLang::Lit(l) = &n {
            literals.entry(l.clone()).or_insert(v);
        } else {
            original.entry(n).or_insert(v);
        }
        class_values.entry(canon(class_of[usize::from(e)])).or_default().push(v);
    }
    let mut stats = SpliceStats::default();
    let mut memo: HashMap<Id, ValueRef> = HashMap::new();
    let mut created: Vec<(NodeId, Id)> = Vec::new();
    let src = ClassSource(egraph);

    // Materialize iteratively (graphs are deep): a class is finished once
    // its operands are.
    for &(_, root) in &lifted.roots {
        let mut stack: Vec<(Id, bool)> = vec![(canon(class_of[usize::from(root)]), false)];
        while let Some((class, expanded)) = stack.pop() {
            if memo.contains_key(&class) {
                continue;
            }
            let node = best(class);
            if !expanded {
                stack.push((class, true));
                for &c in node.children() {
                    let c = canon(c);
                    if !memo.contains_key(&c) && !egraph[c].data.none && !is_attribute(node, c) {
                        stack.push((c, false));
                    }
                }
                continue;
            }
            let v = match node {
                TensorLang::Leaf(k) => {
                    lifted.leaves.get(k.0 as usize).map(|l| l.value).ok_or_else(|| format!("leaf {k} is unbound"))?
                }
                TensorLang::Lit(l) => match literals.get(l) {
                    Some(&v) => v,
                    None => {
                        let t = l.to_tensor().ok_or_else(|| format!("literal {l} has no tensor form"))?;
                        let v = g.add_constant("", t);
                        literals.insert(l.clone(), v);
                        stats.created += 1;
                        created.push((v.node, class));
                        v
                    }
                },
                TensorLang::None => return Err("an absent operand was chosen as a value".to_string()),
                _ => {
                    let lowered = node.to_ir(&egraph.analysis.ops, &src)?;
                    let mut inputs: Vec<Option<ValueRef>> = Vec::with_capacity(lowered.inputs.len());
                    for i in &lowered.inputs {
                        inputs.push(match i {
                            Some(c) => Some(*memo.get(&canon(*c)).ok_or_else(|| format!("operand of {node} missing"))?),
                            None => None,
                        });
                    }
                    while inputs.last() == Some(&None) {
                        inputs.pop();
                    }
                    let canonical = node.clone().map_children(canon);
                    match original.get(&canonical) {
                        Some(&v) if g.node_inputs(v.node) == inputs && g.node(v.node).op == lowered.op => {
                            stats.reused += 1;
                            v
                        }
                        _ => {
                            let name = g.fresh_name(&lowered.op.op_type().to_lowercase());
                            let ty = new_type(g, egraph, &lowered.op, &lowered.inputs, &inputs, class, &name)?;
                            let id = g.add_node(lowered.op, "", &inputs, vec![ValueInfo::new(name, ty)]);
                            stats.created += 1;
                            created.push((id, class));
                            ValueRef::new(id, 0)
                        }
                    }
                }
            };
            memo.insert(class, v);
        }
    }

    for &(old, root) in &lifted.roots {
        let class = canon(class_of[usize::from(root)]);
        let new = *memo.get(&class).ok_or("a region output was not materialized")?;
        if new != old {
            g.replace_uses(old, new);
            stats.replaced += 1;
        }
    }

    // Remove what became dead: lifted nodes, and the sources only they used.
    let lifted_nodes: HashSet<NodeId> = lifted.nodes.iter().copied().collect();
    let mut candidates: Vec<NodeId> = lifted.nodes.clone();
    for leaf in &lifted.leaves {
        let n = leaf.value.node;
        if matches!(g.node(n).op, Op::Weight(_) | Op::Constant(_)) && !lifted_nodes.contains(&n) {
            candidates.push(n);
        }
    }
    let order = g.topo_order().map_err(|e| format!("the rewritten graph is not acyclic: {e}"))?;
    let position: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    candidates.sort_by_key(|n| std::cmp::Reverse(position.get(n).copied()));
    candidates.dedup();
    let mut freed: HashMap<Id, Vec<String>> = HashMap::new();
    let value_class: HashMap<ValueRef, Id> =
        class_values.iter().flat_map(|(c, vs)| vs.iter().map(move |v| (*v, *c))).collect();
    let mut removed_weights = Vec::new();
    for n in candidates {
        if !g.contains(n) || (0..g.node(n).outputs.len()).any(|p| g.is_used(ValueRef::new(n, p as u32))) {
            continue;
        }
        if let Some(&c) = value_class.get(&ValueRef::new(n, 0)) {
            freed.entry(c).or_default().push(g.node(n).outputs[0].name.clone());
        }
        if let Some(node) = g.remove_node(n) {
            if let Op::Weight(w) = node.op {
                removed_weights.push(w);
            }
            stats.removed += 1;
        }
    }
    // A weight no node refers to any more leaves the store with its last node.
    let still_used: HashSet<_> =
        g.node_ids().filter_map(|n| if let Op::Weight(w) = g.node(n).op { Some(w) } else { None }).collect();
    for w in removed_weights {
        if !still_used.contains(&w) {
            g.weights.remove(w);
        }
    }

    // New nodes take over the names of removed values of their class. The
    // freed names are in reverse topological order; a graph output's name
    // is preferred, then the most downstream one, which is what the
    // consumers of the class saw last.
    let output_names: HashSet<String> = g.outputs().iter().map(|o| o.name.clone()).collect();
    for (id, class) in created {
        if let Some(names) = freed.get_mut(&class)
            && !names.is_empty()
            && g.contains(id)
        {
            let pick = names.iter().position(|n| output_names.contains(n)).unwrap_or(0);
            let name = names.remove(pick);
            g.reserve_name(&name);
            g.node_mut(id).outputs[0].name = name;
        }
    }
    Ok(stats)
}

/// True when child `c` of `node` is an attribute literal rather than an
/// operand (attributes are read from the class, never materialized).
fn is_attribute(node: &TensorLang, c: Id) -> bool {
    !node.data_children().contains(&c)
}

/// The type of a new node: inferred from its actual operands (their graph
/// types, and the values the analysis knows), falling back to the class's
/// type for dims inference cannot determine.
fn new_type(
    g: &Graph,
    egraph: &TensorGraph,
    op: &Op,
    classes: &[Option<Id>],
    inputs: &[Option<ValueRef>],
    class: Id,
    name: &str,
) -> Result<Type, String> {
    let facts: Vec<Option<Fact>> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let v = inputs.get(i).copied().flatten()?;
            let c = (*c)?;
            let ty = match g.value_type(v) {
                Type::Unknown => egraph[c].data.fact.ty.clone(),
                t => t.clone(),
            };
            Some(Fact { ty, value: egraph[c].data.fact.value.clone() })
        })
        .collect();
    let facts = infer_node_facts(op, &facts, &[name]).map_err(|e| {
        let operands: Vec<String> = inputs
            .iter()
            .map(|v| v.map_or("_".to_string(), |v| format!("%{}: {}", g.value_info(v).name, g.value_type(v))))
            .collect();
        format!("the rewritten {} node on ({}) is ill-typed: {}", op.op_type(), operands.join(", "), e.message)
    })?;
    let inferred = facts.into_iter().next().map_or(Type::Unknown, |f| f.ty);
    let class_ty = &egraph[class].data.fact.ty;
    let fresh = |t: &Type| t.shape().is_some_and(|s| s.dims().iter().any(is_fresh_dim));
    Ok(if (inferred == Type::Unknown || fresh(&inferred)) && *class_ty != Type::Unknown && !fresh(class_ty) {
        class_ty.clone()
    } else {
        inferred
    })
}

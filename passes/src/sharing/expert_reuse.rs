//! `expert-reuse`: post-training expert sharing across adjacent MoE layers,
//! after ReXMoE (arXiv 2510.17483) with MC-SMoE-style merging.
//!
//! ReXMoE lets each layer's router pick from the pooled experts of `r`
//! adjacent layers; it is trained that way. This pass converts a trained
//! MoE model without training:
//!
//! 1. [`find_moe_layers`] finds each layer's router, top-k, experts and
//!    combine from the graph's structure.
//! 2. On calibration data it records how often each expert is picked, the
//!    router logits, and the token rows each layer routes.
//! 3. Layers are cut into windows of `window` adjacent layers. In each
//!    window the `experts` most-used experts become group centres, and every
//!    other expert joins its most similar centre (`similarity=router`: cosine
//!    of router-logit columns over the calibration tokens; `weights`: cosine
//!    of the flattened parameters; `output`: cosine of the experts' outputs
//!    on a shared sample of routed rows).
//! 4. Each group becomes one pooled expert, shared by every layer of the
//!    window: `merge=frequency` averages the members' weights weighted by
//!    their usage, `W = Σ f_e W_e / Σ f_e`; `merge=representative` keeps the
//!    centre's weights. `merge=drop` is the naive baseline at the same
//!    parameter count: members are dropped, not merged, and tokens routed to
//!    them lose that expert's contribution.
//! 5. Each layer's router is rebound to the pool: the dense gate matrix
//!    (`[tokens, N]`, the top-k gates scattered to their experts) is
//!    multiplied by a 0/1 membership matrix `[N, P]`, so when the top-k picks
//!    two members of one group the pooled expert runs once with the summed
//!    gate. Pooled experts run only on the tokens whose gate is non-zero
//!    (`NonZero` → `Gather` → expert → `ScatterND(add)`), as the original
//!    dispatch did.
//!
//! With `experts` at least the window's expert count every expert is its
//! own group and the model computes what it did before (up to the order of
//! the floating-point sums). The report gives experts and parameters
//! before and after, top-k routing agreement, per-layer MoE output error
//! and the final logits' KL divergence and top-1 agreement.

pub mod measure;
#[cfg(test)]
mod tests;

use crate::analysis::moe::{MoeLayer, find_moe_layers, routing_from_indices};
use crate::{Pass, PassContext, PassError, PassOutcome};
use measure::{ErrorSum, LogitSum, floats, for_each_probe, remove_dead_nodes};
use serde::{Deserialize, Serialize};
use sharc_ir::{
    BinaryOp, DType, Graph, NodeId, Op, Reduce, ReduceKind, Tensor, Type, Value, ValueInfo, ValueRef, Weight, WeightId,
    op::{ConstantOfShape, Gather, OneHot, ReduceAttrs, Reshape, ScatterND, ScatterReduction, ShapeOf},
};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

/// The pass name.
pub const NAME: &str = "expert-reuse";

/// How experts are compared when grouping them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Similarity {
    /// Cosine of router-logit columns over the calibration tokens.
    Router,
    /// Cosine of the flattened expert weights.
    Weights,
    /// Cosine of the experts' outputs on a shared sample of routed rows.
    Output,
}

/// How a group of experts becomes one pooled expert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Merge {
    /// Usage-weighted average of the members' weights.
    Frequency,
    /// The centre's weights.
    Representative,
    /// Baseline: keep the centres, drop every other expert.
    Drop,
}

crate::pass_options! {
    /// Options of `expert-reuse`.
    pub struct ExpertReuseOptions {
        /// Number of adjacent MoE layers that share one pool of experts.
        window: usize = 2,
        /// How experts are compared: router (logit columns), weights or output.
        similarity: Similarity = Similarity::Router,
        /// How a group merges: frequency (usage-weighted), representative, or drop (baseline).
        merge: Merge = Merge::Frequency,
        /// Pooled experts per window (default: one layer's expert count).
        experts: Option<usize> = None,
        /// Rows per layer sampled for similarity=output.
        output_rows: usize = 256,
    }
}

impl ExpertReuseOptions {
    /// Options from `key=value` settings (`sharc compress` presets).
    pub fn from_settings(settings: &BTreeMap<String, String>) -> Result<ExpertReuseOptions, String> {
        let mut o = ExpertReuseOptions::default();
        for (k, v) in settings {
            let bad = || format!("{NAME}: option {k}={v} is not valid");
            match k.as_str() {
                "window" => o.window = v.parse().map_err(|_| bad())?,
                "similarity" => {
                    o.similarity = match v.as_str() {
                        "router" => Similarity::Router,
                        "weights" => Similarity::Weights,
                        "output" => Similarity::Output,
                        _ => return Err(format!("{}; use router, weights or output", bad())),
                    }
                }
                "merge" => {
                    o.merge = match v.as_str() {
                        "frequency" => Merge::Frequency,
                        "representative" => Merge::Representative,
                        "drop" => Merge::Drop,
                        _ => return Err(format!("{}; use frequency, representative or drop", bad())),
                    }
                }
                "experts" => o.experts = Some(v.parse().map_err(|_| bad())?),
                "output-rows" => o.output_rows = v.parse().map_err(|_| bad())?,
                _ => {
                    return Err(format!(
                        "{NAME}: unknown option '{k}'; valid: window, similarity, merge, experts, output-rows"
                    ));
                }
            }
        }
        Ok(o)
    }
}

/// The `expert-reuse` pass. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct ExpertReuse {
    /// The options.
    pub options: ExpertReuseOptions,
    /// The report of the last run.
    pub report: Option<ExpertReuseReport>,
}

/// What `expert-reuse` did and what it cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ExpertReuseReport {
    /// The options used.
    pub window: usize,
    /// Similarity measure, merge rule.
    pub similarity: String,
    /// Merge rule.
    pub merge: String,
    /// MoE layers found.
    pub layers: usize,
    /// Distinct experts before and after.
    pub experts_before: usize,
    /// Distinct experts after (the pools' sizes summed).
    pub experts_after: usize,
    /// Expert parameters before and after.
    pub expert_params_before: u64,
    /// Expert parameters after.
    pub expert_params_after: u64,
    /// Unique parameters of the whole model before and after.
    pub params_before: u64,
    /// Unique parameters after.
    pub params_after: u64,
    /// Calibration usage of each expert, per layer.
    pub usage: Vec<Vec<u64>>,
    /// Per window: for each pooled expert, its members as (layer, expert).
    pub groups: Vec<Vec<Vec<(usize, usize)>>>,
    /// Per layer: fraction of tokens whose top-k set is unchanged.
    pub routing_agreement: Vec<f64>,
    /// Per layer: relative MSE of the MoE output against the original.
    pub layer_error: Vec<f64>,
    /// Mean KL(p_ref ‖ p_new) of the first graph output, read as logits.
    pub logit_kl: f64,
    /// Top-1 agreement of the first graph output.
    pub top1: f64,
    /// Relative MSE of the first graph output.
    pub output_error: f64,
}

impl ExpertReuseReport {
    /// The report as text.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "expert-reuse (window={}, similarity={}, merge={}) on {} MoE layers",
            self.window, self.similarity, self.merge, self.layers
        );
        let _ = writeln!(s, "  experts            {:>10} -> {:>10}", self.experts_before, self.experts_after);
        let _ =
            writeln!(s, "  expert parameters  {:>10} -> {:>10}", self.expert_params_before, self.expert_params_after);
        let _ = writeln!(
            s,
            "  model parameters   {:>10} -> {:>10} ({:.1}% kept)",
            self.params_before,
            self.params_after,
            100.0 * self.params_after as f64 / self.params_before.max(1) as f64
        );
        for (w, pools) in self.groups.iter().enumerate() {
            let list: Vec<String> = pools
                .iter()
                .map(|g| {
                    let m: Vec<String> = g.iter().map(|(l, e)| format!("{l}.{e}")).collect();
                    format!("[{}]", m.join(" "))
                })
                .collect();
            let _ = writeln!(s, "  window {w} pool: {}", list.join(" "));
        }
        let _ = writeln!(s, "  layer  usage                                  routing-agreement  moe-output-rel-mse");
        for l in 0..self.layers {
            let usage: Vec<String> = self.usage.get(l).map_or(Vec::new(), |u| u.iter().map(u64::to_string).collect());
            let _ = writeln!(
                s,
                "  {l:>5}  {:<38} {:>17.4}  {:>18.3e}",
                usage.join(","),
                self.routing_agreement.get(l).copied().unwrap_or(f64::NAN),
                self.layer_error.get(l).copied().unwrap_or(f64::NAN)
            );
        }
        let _ = writeln!(
            s,
            "  final output: logit KL {:.4e} nats, top-1 agreement {:.4}, relative MSE {:.3e}",
            self.logit_kl, self.top1, self.output_error
        );
        s
    }
}

impl crate::RegisteredPass for ExpertReuse {
    type Options = ExpertReuseOptions;
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str =
        "Share merged MoE experts across adjacent layers and rebind routers to the pool (ReXMoE, post-training)";
    fn new(options: ExpertReuseOptions) -> ExpertReuse {
        ExpertReuse { options, report: None }
    }
}

impl ExpertReuse {
    /// A pass with these options.
    pub fn new(options: ExpertReuseOptions) -> ExpertReuse {
        ExpertReuse { options, report: None }
    }
}

fn refused(message: impl Into<String>) -> PassError {
    PassError::Refused { pass: NAME.into(), message: message.into() }
}

fn failed(message: impl Into<String>) -> PassError {
    PassError::Failed { pass: NAME.into(), message: message.into() }
}

impl Pass for ExpertReuse {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let o = self.options.clone();
        if o.window == 0 {
            return Err(refused("window must be at least 1"));
        }
        let analysis = find_moe_layers(g).map_err(failed)?;
        if analysis.layers.is_empty() {
            let why: Vec<String> = analysis.rejected.iter().map(|(at, w)| format!("{at}: {w}")).collect();
            return Err(refused(if why.is_empty() {
                "the graph has no MoE layers (no TopK routing)".to_string()
            } else {
                format!("the graph has no usable MoE layers: {}", why.join("; "))
            }));
        }
        let layers = analysis.layers;
        check_experts_match(g, &layers)?;
        let (ev, batches) = cx.measuring(NAME, "measuring expert usage")?;
        let original = g.clone();
        let stats = calibrate(g, &layers, ev, batches, &o)?;
        let n = layers[0].num_experts();
        let mut report = ExpertReuseReport {
            window: o.window,
            similarity: format!("{:?}", o.similarity).to_lowercase(),
            merge: format!("{:?}", o.merge).to_lowercase(),
            layers: layers.len(),
            experts_before: layers.len() * n,
            expert_params_before: layers.iter().map(|l| (0..n).map(|e| l.expert_params(g, e)).sum::<u64>()).sum(),
            params_before: g.stats().unique_params,
            usage: stats.usage.clone(),
            ..Default::default()
        };
        // Group and merge window by window, then rebuild each layer.
        let mut new_outputs = Vec::new();
        let windows: Vec<Vec<usize>> =
            (0..layers.len()).collect::<Vec<_>>().chunks(o.window).map(<[usize]>::to_vec).collect();
        let mut expert_params_after = 0;
        for (w, members) in windows.iter().enumerate() {
            let groups = group_window(g, &layers, members, &stats, &o, ev)?;
            report.groups.push(groups.iter().map(|gr| gr.members.clone()).collect());
            let pool = build_pool(g, &layers, &groups, &stats, o.merge, w)?;
            expert_params_after +=
                pool.iter().flatten().filter_map(|id| g.weights.get(*id)).map(Weight::num_elements).sum::<u64>();
            for &l in members {
                let membership: Vec<Option<usize>> =
                    (0..n).map(|e| groups.iter().position(|gr| gr.members.contains(&(l, e)))).collect();
                let out = rebuild_layer(g, &layers[l], &membership, &pool).map_err(failed)?;
                new_outputs.push(out);
            }
        }
        report.experts_after = report.groups.iter().map(Vec::len).sum();
        report.expert_params_after = expert_params_after;
        for (layer, out) in layers.iter().zip(&new_outputs) {
            g.replace_uses(layer.output, *out);
        }
        // The new outputs were wired before the old combine was replaced;
        // the old dispatch and its experts are now dead.
        remove_dead_nodes(g);
        report.params_after = g.stats().unique_params;
        measure_report(&original, g, &layers, &new_outputs, ev, batches, &mut report).map_err(failed)?;
        cx.count(NAME, "experts-before", report.experts_before as i64);
        cx.count(NAME, "experts-after", report.experts_after as i64);
        cx.reports.insert(NAME.into(), report.to_text());
        self.report = Some(report);
        Ok(PassOutcome::Changed)
    }
}

/// Every layer's experts must have the same structure (weights of the same
/// shapes, bodies of the same ops) for experts of different layers to merge.
fn check_experts_match(g: &Graph, layers: &[MoeLayer]) -> Result<(), PassError> {
    let sig = |l: &MoeLayer, e: usize| -> (Vec<Vec<usize>>, Vec<String>) {
        let ex = &l.experts[e];
        let shapes = ex.weights.iter().map(|w| g.weights.get(*w).map_or(Vec::new(), |w| w.shape.clone())).collect();
        let ops = ex.body.iter().map(|n| g.node(*n).op.op_type().to_string()).collect();
        (shapes, ops)
    };
    let first = sig(&layers[0], 0);
    for (li, l) in layers.iter().enumerate() {
        if l.num_experts() != layers[0].num_experts() {
            return Err(refused(format!(
                "MoE layer {li} has {} experts where layer 0 has {}",
                l.num_experts(),
                layers[0].num_experts()
            )));
        }
        for e in 0..l.num_experts() {
            let s = sig(l, e);
            if s != first {
                return Err(refused(format!(
                    "expert {e} of MoE layer {li} differs from expert 0 of layer 0 (weights {:?} vs {:?}, {} vs {} body ops), so they cannot be merged",
                    s.0,
                    first.0,
                    s.1.len(),
                    first.1.len()
                )));
            }
        }
        for w in l.experts.iter().flat_map(|e| &e.weights) {
            match g.weights.get(*w) {
                Some(w) if w.dtype == DType::F32 => {}
                Some(w) => {
                    return Err(refused(format!(
                        "expert weight {} is {}, only f32 experts are merged",
                        w.name, w.dtype
                    )));
                }
                None => return Err(failed(format!("expert weight {w} is missing from the store"))),
            }
        }
    }
    Ok(())
}

/// What calibration recorded.
struct Stats {
    /// Per layer, per expert: how many (token, slot) picks.
    usage: Vec<Vec<u64>>,
    /// Per layer: router logits of the sampled tokens, column-major by
    /// expert (`logits[l][e]` is a vector over tokens).
    logits: Vec<Vec<Vec<f32>>>,
    /// Per layer: sampled rows of the token source (for output similarity).
    rows: Vec<Vec<f32>>,
    /// Row width of the token source.
    width: usize,
    /// Per layer: the top-k picks of every token of every batch.
    routing: Vec<Vec<Vec<usize>>>,
}

/// Tokens per layer kept for router-logit similarity.
const LOGIT_TOKENS: usize = 4096;

fn calibrate(
    g: &Graph,
    layers: &[MoeLayer],
    ev: &dyn sharc_ir::Evaluator,
    batches: &[Vec<Value>],
    o: &ExpertReuseOptions,
) -> Result<Stats, PassError> {
    let n = layers[0].num_experts();
    let mut values = Vec::new();
    for l in layers {
        values.push(l.indices);
        values.push(l.router_logits);
        values.push(l.token_source);
    }
    let mut st = Stats {
        usage: vec![vec![0; n]; layers.len()],
        logits: vec![vec![Vec::new(); n]; layers.len()],
        rows: vec![Vec::new(); layers.len()],
        width: 0,
        routing: vec![Vec::new(); layers.len()],
    };
    for_each_probe(ev, g, &values, batches, |_, ts| {
        for (li, chunk) in ts.chunks(3).enumerate() {
            let picks = routing_from_indices(&chunk[0], n).map_err(|e| format!("MoE layer {li}: {e}"))?;
            for row in &picks {
                for &e in row {
                    st.usage[li][e] += 1;
                }
            }
            st.routing[li].extend(picks);
            let logits = floats(&chunk[1])?;
            for row in logits.chunks(n) {
                if st.logits[li][0].len() >= LOGIT_TOKENS {
                    break;
                }
                for (e, v) in row.iter().enumerate() {
                    st.logits[li][e].push(*v);
                }
            }
            if o.similarity == Similarity::Output {
                let shape = chunk[2].shape();
                let width = *shape.last().ok_or("the token rows are a scalar")?;
                st.width = width;
                let data = floats(&chunk[2])?;
                let want = o.output_rows * width;
                let have = st.rows[li].len();
                if have < want {
                    let take = (want - have).min(data.len());
                    st.rows[li].extend_from_slice(&data[..take - take % width.max(1)]);
                }
            }
        }
        Ok(())
    })
    .map_err(failed)?;
    Ok(st)
}

/// One pooled expert: its centre and all members, as (layer, expert).
struct Group {
    centre: (usize, usize),
    members: Vec<(usize, usize)>,
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        ab += f64::from(*x) * f64::from(*y);
        aa += f64::from(*x) * f64::from(*x);
        bb += f64::from(*y) * f64::from(*y);
    }
    if aa == 0.0 || bb == 0.0 { 0.0 } else { ab / (aa.sqrt() * bb.sqrt()) }
}

fn group_window(
    g: &Graph,
    layers: &[MoeLayer],
    members: &[usize],
    st: &Stats,
    o: &ExpertReuseOptions,
    ev: &dyn sharc_ir::Evaluator,
) -> Result<Vec<Group>, PassError> {
    let n = layers[0].num_experts();
    let candidates: Vec<(usize, usize)> = members.iter().flat_map(|&l| (0..n).map(move |e| (l, e))).collect();
    let pool = o.experts.unwrap_or(n).min(candidates.len());
    if pool == 0 {
        return Err(refused("experts must be at least 1"));
    }
    // Centres: the most-used experts (ties by position, so the result is deterministic).
    let mut by_use = candidates.clone();
    by_use.sort_by_key(|&(l, e)| (std::cmp::Reverse(st.usage[l][e]), l, e));
    let centres: Vec<(usize, usize)> = by_use[..pool].to_vec();
    let mut groups: Vec<Group> = centres.iter().map(|&c| Group { centre: c, members: vec![c] }).collect();
    if o.merge == Merge::Drop {
        return Ok(groups);
    }
    let features = features(g, layers, &candidates, st, o, ev)?;
    for &c in &candidates {
        if centres.contains(&c) {
            continue;
        }
        let best = (0..groups.len())
            .max_by(|&a, &b| {
                let sa = cosine(&features[&c], &features[&groups[a].centre]);
                let sb = cosine(&features[&c], &features[&groups[b].centre]);
                sa.total_cmp(&sb).then(b.cmp(&a))
            })
            .expect("at least one group");
        groups[best].members.push(c);
    }
    for gr in &mut groups {
        gr.members.sort();
    }
    Ok(groups)
}

/// The vector each expert is compared by.
fn features(
    g: &Graph,
    layers: &[MoeLayer],
    candidates: &[(usize, usize)],
    st: &Stats,
    o: &ExpertReuseOptions,
    ev: &dyn sharc_ir::Evaluator,
) -> Result<HashMap<(usize, usize), Vec<f32>>, PassError> {
    let mut out = HashMap::new();
    match o.similarity {
        Similarity::Router => {
            for &(l, e) in candidates {
                out.insert((l, e), st.logits[l][e].clone());
            }
        }
        Similarity::Weights => {
            for &(l, e) in candidates {
                let mut v = Vec::new();
                for w in &layers[l].experts[e].weights {
                    let w = g.weights.get(*w).ok_or_else(|| failed("an expert weight is missing"))?;
                    v.extend(floats(w.tensor()).map_err(failed)?);
                }
                out.insert((l, e), v);
            }
        }
        Similarity::Output => {
            // One shared input: the routed rows of every layer of the window.
            let mut rows = Vec::new();
            let mut seen = Vec::new();
            for &(l, _) in candidates {
                if !seen.contains(&l) {
                    seen.push(l);
                    rows.extend_from_slice(&st.rows[l]);
                }
            }
            let width = st.width.max(1);
            let x = Tensor::from_vec(&[rows.len() / width, width], rows);
            for &(l, e) in candidates {
                let eg = expert_graph(g, &layers[l], e).map_err(failed)?;
                out.insert((l, e), run_expert(ev, &eg, &x)?);
            }
        }
    }
    Ok(out)
}

/// Runs a one-expert graph on rows and returns its output, flattened.
fn run_expert(ev: &dyn sharc_ir::Evaluator, eg: &Graph, x: &Tensor) -> Result<Vec<f32>, PassError> {
    let out = ev.evaluate(eg, &[Value::Tensor(x.clone())]).map_err(|e| failed(format!("expert evaluation: {e}")))?;
    let t = out.into_iter().next().and_then(Value::into_tensor).ok_or_else(|| failed("the expert gave no tensor"))?;
    floats(&t).map_err(failed)
}

/// A standalone graph computing one expert: input `x` (`[rows, d]`) to the
/// expert's output, with the body's constants and weights copied in.
pub fn expert_graph(g: &Graph, layer: &MoeLayer, e: usize) -> Result<Graph, String> {
    let ex = &layer.experts[e];
    let mut eg = Graph::new(format!("expert{e}"));
    let ty = g.value_type(ex.input).clone();
    let x = eg.add_input("x", ty);
    let mut map: HashMap<ValueRef, ValueRef> = HashMap::from([(ex.input, x)]);
    let body: std::collections::HashSet<NodeId> = ex.body.iter().copied().collect();
    for &n in &ex.body {
        let node = g.node(n);
        let mut ins = Vec::new();
        for v in g.node_inputs(n) {
            let Some(v) = v else {
                ins.push(None);
                continue;
            };
            if let Some(m) = map.get(&v) {
                ins.push(Some(*m));
                continue;
            }
            let src = g.node(v.node);
            let copied = match &src.op {
                Op::Constant(t) => eg.add_constant(&src.outputs[0].name, t.clone()),
                Op::Weight(w) => {
                    let w = g.weights.get(*w).ok_or("an expert weight is missing")?;
                    eg.add_weight(w.clone())
                }
                _ if body.contains(&v.node) => return Err("the expert body is not in topological order".into()),
                other => {
                    return Err(format!(
                        "the expert reads {} ({}), a value computed outside it",
                        src.outputs.get(v.port as usize).map_or("?", |o| o.name.as_str()),
                        other.op_type()
                    ));
                }
            };
            map.insert(v, copied);
            ins.push(Some(copied));
        }
        let outputs: Vec<ValueInfo> = node.outputs.clone();
        let id = eg.add_node(node.op.clone(), node.name.clone(), &ins, outputs);
        for p in 0..node.outputs.len() {
            map.insert(ValueRef::new(n, p as u32), ValueRef::new(id, p as u32));
        }
    }
    let out = *map.get(&ex.output).ok_or("the expert output is not in its body")?;
    eg.add_output("y", out);
    Ok(eg)
}

/// Merges each group into new pooled weights; returns, per group, the new
/// weights in the experts' weight order.
fn build_pool(
    g: &mut Graph,
    layers: &[MoeLayer],
    groups: &[Group],
    st: &Stats,
    merge: Merge,
    window: usize,
) -> Result<Vec<Vec<WeightId>>, PassError> {
    let mut pool = Vec::new();
    for (p, gr) in groups.iter().enumerate() {
        let (cl, ce) = gr.centre;
        let template = layers[cl].experts[ce].weights.clone();
        let mut ids = Vec::new();
        for (i, &tw) in template.iter().enumerate() {
            let tw = g.weights.get(tw).ok_or_else(|| failed("an expert weight is missing"))?;
            let shape = tw.shape.clone();
            let base = tw.name.clone();
            let data: Vec<f32> = match merge {
                Merge::Representative | Merge::Drop => floats(tw.tensor()).map_err(failed)?,
                Merge::Frequency => {
                    let total: u64 = gr.members.iter().map(|&(l, e)| st.usage[l][e]).sum();
                    let mut acc = vec![0.0f64; shape.iter().product()];
                    for &(l, e) in &gr.members {
                        let f = if total == 0 {
                            1.0 / gr.members.len() as f64
                        } else {
                            st.usage[l][e] as f64 / total as f64
                        };
                        if f == 0.0 {
                            continue;
                        }
                        let w =
                            g.weights.get(layers[l].experts[e].weights[i]).ok_or_else(|| failed("missing weight"))?;
                        for (a, x) in acc.iter_mut().zip(floats(w.tensor()).map_err(failed)?) {
                            *a += f * f64::from(x);
                        }
                    }
                    acc.into_iter().map(|x| x as f32).collect()
                }
            };
            let name = format!("moe_pool{window}.expert{p}.{i}.{}", sanitize(&base));
            ids.push(g.weights.add_unique(Weight::from_tensor(name, Tensor::from_vec(&shape, data))));
        }
        pool.push(ids);
    }
    Ok(pool)
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// Builds the rebound dispatch of one layer over the pool; returns the new
/// MoE output (same shape as the old one).
fn rebuild_layer(
    g: &mut Graph,
    layer: &MoeLayer,
    membership: &[Option<usize>],
    pool: &[Vec<WeightId>],
) -> Result<ValueRef, String> {
    let n = layer.num_experts();
    // Pooled experts this layer reaches, in pool order.
    let mut used: Vec<usize> = membership.iter().flatten().copied().collect();
    used.sort_unstable();
    used.dedup();
    let f32_ty = Type::Unknown;
    let c_i64 = |g: &mut Graph, v: Vec<i64>, shape: &[usize]| g.add_constant("moe_const", Tensor::from_vec(shape, v));
    // Dense gates [T, N]: the top-k gates scattered to their experts.
    let depth = c_i64(g, vec![n as i64], &[]);
    let on_off = g.add_constant("moe_onehot_values", Tensor::from_vec(&[2], vec![0.0f32, 1.0]));
    let onehot = g.add_op(Op::OneHot(OneHot { axis: -1 }), &[layer.indices, depth, on_off], f32_ty.clone());
    let ax2 = c_i64(g, vec![2], &[1]);
    let gates3 = g.add_op(Op::Unsqueeze, &[layer.gates, ax2], Type::Unknown);
    let weighted = g.add_op(Op::Binary(BinaryOp::Mul), &[onehot, gates3], Type::Unknown);
    let ax1 = c_i64(g, vec![1], &[1]);
    let dense = g.add_op(
        Op::Reduce(Reduce {
            kind: ReduceKind::Sum,
            attrs: ReduceAttrs { keepdims: false, noop_with_empty_axes: false },
        }),
        &[weighted, ax1],
        Type::Unknown,
    );
    // Rebinding: pool gates [T, P] = dense · M, M[e][j] = 1 when expert e
    // belongs to the j-th pooled expert this layer uses. Summing is what
    // makes two picks of one group run once with their gates added.
    let mut m = vec![0.0f32; n * used.len().max(1)];
    for (e, p) in membership.iter().enumerate() {
        if let Some(p) = p
            && let Some(j) = used.iter().position(|u| u == p)
        {
            m[e * used.len() + j] = 1.0;
        }
    }
    let zero_shape = g.add_op(Op::Shape(ShapeOf { start: 0, end: None }), &[layer.token_source], Type::Unknown);
    let mut acc = g.add_op(
        Op::ConstantOfShape(ConstantOfShape { value: Some(Tensor::from_vec(&[1], vec![0.0f32])) }),
        &[zero_shape],
        Type::Unknown,
    );
    if used.is_empty() {
        return Ok(acc);
    }
    let mv = g.add_constant("moe_rebind", Tensor::from_vec(&[n, used.len()], m));
    let pool_gates = g.add_op(Op::MatMul, &[dense, mv], Type::Unknown);
    let template = &layer.experts[0];
    let zero = g.add_constant("moe_zero", Tensor::scalar(0.0f32));
    let flat = c_i64(g, vec![-1], &[1]);
    let ax1b = c_i64(g, vec![1], &[1]);
    for (j, &p) in used.iter().enumerate() {
        let jv = c_i64(g, vec![j as i64], &[]);
        let gj = g.add_op(Op::Gather(Gather { axis: 1 }), &[pool_gates, jv], Type::Unknown);
        let mask = g.add_op(Op::Binary(BinaryOp::Greater), &[gj, zero], Type::Unknown);
        let nz = g.add_op(Op::NonZero, &[mask], Type::Unknown);
        let idx = g.add_op(Op::Reshape(Reshape { allowzero: false }), &[nz, flat], Type::Unknown);
        let rows = g.add_op(Op::Gather(Gather { axis: 0 }), &[layer.token_source, idx], Type::Unknown);
        let h = clone_body(g, template, rows, &pool[p])?;
        let gsel = g.add_op(Op::Gather(Gather { axis: 0 }), &[gj, idx], Type::Unknown);
        let gcol = g.add_op(Op::Unsqueeze, &[gsel, ax1b], Type::Unknown);
        let y = g.add_op(Op::Binary(BinaryOp::Mul), &[h, gcol], Type::Unknown);
        let idx2 = g.add_op(Op::Unsqueeze, &[idx, ax1b], Type::Unknown);
        acc = g.add_op(Op::ScatterND(ScatterND { reduction: ScatterReduction::Add }), &[acc, idx2, y], Type::Unknown);
    }
    Ok(acc)
}

/// Copies an expert's body onto new input rows with other weights. Values
/// from outside the body (constants, shape values of the same layer) are
/// shared with the original.
fn clone_body(
    g: &mut Graph,
    template: &crate::analysis::moe::Expert,
    rows: ValueRef,
    weights: &[WeightId],
) -> Result<ValueRef, String> {
    let mut map: HashMap<ValueRef, ValueRef> = HashMap::from([(template.input, rows)]);
    let mut weight_nodes: HashMap<WeightId, ValueRef> = HashMap::new();
    for &n in &template.body {
        let node = g.node(n).clone();
        let mut ins = Vec::new();
        for v in g.node_inputs(n) {
            let Some(v) = v else {
                ins.push(None);
                continue;
            };
            let mapped = if let Some(m) = map.get(&v) {
                *m
            } else if let Op::Weight(w) = g.node(v.node).op {
                let i = template.weights.iter().position(|t| *t == w).ok_or("a body weight is not an expert weight")?;
                let id = *weights.get(i).ok_or("the pooled expert has fewer weights")?;
                match weight_nodes.get(&id) {
                    Some(v) => *v,
                    None => {
                        let v = g.weight_value(id);
                        weight_nodes.insert(id, v);
                        v
                    }
                }
            } else {
                v
            };
            ins.push(Some(mapped));
        }
        let outputs: Vec<ValueInfo> = node
            .outputs
            .iter()
            .map(|o| {
                let name = g.fresh_name(&format!("{}_pooled", o.name));
                ValueInfo::new(name, Type::Unknown)
            })
            .collect();
        let id = g.add_node(node.op.clone(), "", &ins, outputs);
        for p in 0..node.outputs.len() {
            map.insert(ValueRef::new(n, p as u32), ValueRef::new(id, p as u32));
        }
    }
    map.get(&template.output).copied().ok_or_else(|| "the expert output is not in its body".to_string())
}

/// Compares the original and the compressed model on the calibration data.
fn measure_report(
    original: &Graph,
    g: &Graph,
    layers: &[MoeLayer],
    new_outputs: &[ValueRef],
    ev: &dyn sharc_ir::Evaluator,
    batches: &[Vec<Value>],
    report: &mut ExpertReuseReport,
) -> Result<(), String> {
    let n = layers[0].num_experts();
    let first_out = |gr: &Graph| gr.outputs().first().map(|o| o.value).ok_or("the graph has no outputs");
    let mut ref_values: Vec<ValueRef> = layers.iter().flat_map(|l| [l.indices, l.output]).collect();
    ref_values.push(first_out(original)?);
    let mut new_values: Vec<ValueRef> = layers.iter().zip(new_outputs).flat_map(|(l, o)| [l.indices, *o]).collect();
    new_values.push(first_out(g)?);
    let mut reference: Vec<Vec<Tensor>> = Vec::new();
    for_each_probe(ev, original, &ref_values, batches, |_, ts| {
        reference.push(ts);
        Ok(())
    })?;
    let mut agree = vec![(0u64, 0u64); layers.len()];
    let mut errs = vec![ErrorSum::default(); layers.len()];
    let mut out_err = ErrorSum::default();
    let mut logits = LogitSum::default();
    for_each_probe(ev, g, &new_values, batches, |b, ts| {
        let r = &reference[b];
        for li in 0..layers.len() {
            let a = routing_from_indices(&r[2 * li], n)?;
            let c = routing_from_indices(&ts[2 * li], n)?;
            for (x, y) in a.iter().zip(&c) {
                let (mut x, mut y) = (x.clone(), y.clone());
                x.sort_unstable();
                y.sort_unstable();
                agree[li].0 += u64::from(x == y);
                agree[li].1 += 1;
            }
            errs[li].add(&floats(&r[2 * li + 1])?, &floats(&ts[2 * li + 1])?)?;
        }
        let (ro, no) = (&r[2 * layers.len()], &ts[2 * layers.len()]);
        let (rf, nf) = (floats(ro)?, floats(no)?);
        out_err.add(&rf, &nf)?;
        let vocab = ro.shape().last().copied().unwrap_or(1);
        logits.add(&rf, &nf, vocab)?;
        Ok(())
    })?;
    report.routing_agreement = agree.iter().map(|(a, t)| if *t == 0 { 1.0 } else { *a as f64 / *t as f64 }).collect();
    report.layer_error = errs.iter().map(ErrorSum::relative_mse).collect();
    report.output_error = out_err.relative_mse();
    report.logit_kl = logits.mean_kl();
    report.top1 = logits.top1();
    Ok(())
}

/// `expert-reuse` as a `sharc compress` method.
pub struct ExpertReuseMethod {
    /// The pass options.
    pub options: ExpertReuseOptions,
}

impl super::Method for ExpertReuseMethod {
    fn name(&self) -> &str {
        NAME
    }

    fn needs_calibration(&self) -> bool {
        true
    }

    fn apply(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<super::MethodOutcome, PassError> {
        // The residual stream between blocks keeps its values; only the MoE
        // dispatch inside each block is rebuilt.
        let names: Vec<String> = crate::analysis::blocks::find_blocks(g)
            .map(|b| b.blocks.iter().map(|bl| g.value_info(bl.output).name.clone()).collect())
            .unwrap_or_default();
        let mut pass = ExpertReuse::new(self.options.clone());
        pass.run(g, cx)?;
        let report = pass.report.unwrap_or_default();
        let labels = (0..names.len()).map(|i| format!("block {i}")).collect();
        Ok(super::MethodOutcome {
            summary: report.to_text(),
            details: serde_json::to_value(&report).unwrap_or(serde_json::Value::Null),
            points: super::report::StreamPoints::same_names(labels, names),
        })
    }
}

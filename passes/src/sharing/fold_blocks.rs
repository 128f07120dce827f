//! `fold-blocks`: FoldGPT (arXiv 2407.00928) without training.
//!
//! 1. **Importance.** FoldGPT learns gates that rank blocks; the
//!    training-free stand-in is ShortGPT's Block Influence,
//!    `BI_i = 1 − mean_tokens cos(x_i, x_{i+1})`, measured on calibration
//!    data (`importance=block-influence`), or its angular variant
//!    `arccos(cos)/π` (`importance=angular`). See
//!    [`influence`](crate::analysis::influence). `importance=last` drops
//!    the last blocks without measuring: the naive baseline.
//! 2. **Removal.** The `remove` blocks with the lowest influence (or
//!    `round(rate·L)` of them when `rate` is given) are dropped in one shot:
//!    the stream skips them and their weights disappear.
//! 3. **Folding.** The retained blocks, in stream order, are cut into
//!    consecutive groups of `group` blocks; inside a group every weight
//!    except the norms is shared. `share=representative` keeps the weights
//!    of the group's most influential block (the one whose own computation
//!    matters most stays exact); `share=average` stores the mean of the
//!    group's weights. Norm gains and shifts stay private to each block, as
//!    FoldGPT keeps them.
//! 4. **Curing without training** (`refit-norms=true`): each retained
//!    block's private norms are refitted, block after block in stream
//!    order, by per-channel least squares, so that each norm's output on
//!    calibration data matches the original model's output of the same norm:
//!    with `n` the normalised input the compressed model now feeds it and `t`
//!    the original output, `γ, β = argmin Σ (γ·n + β − t)²` per channel
//!    (`β` only where the norm has a shift). For a post-norm model the last
//!    norm of a block *is* the block output, so this fits block outputs
//!    directly. `n` is recovered from the norm's output and its current
//!    gain and shift (`n = (y − β′)/γ′`), which works for fused
//!    `LayerNormalization`/`RMSNormalization` ops and for norms spelled out
//!    as `… · γ + β` alike; channels whose current gain is zero keep their
//!    parameters.
//!
//! The pass needs an evaluator and calibration batches in its context. It
//! refuses models without repeated blocks, settings that would remove every
//! block, and a group size of 0.

use crate::analysis::blocks::{BlockAnalysis, RoleKind, find_blocks};
use crate::analysis::calibration::{CalibrationError, Probe, f32_data, run_pair, token_mask};
use crate::analysis::influence::{BlockInfluence, block_influence};
use crate::sharing::rewire::{bypass_blocks, remove_dead, rewire_role, share_weight};
use crate::{Pass, PassContext, PassError, PassOutcome};
use serde::{Deserialize, Serialize};
use sharc_ir::{DType, Evaluator, Graph, NodeId, Op, Tensor, Value, ValueRef, Weight, WeightId};
use std::collections::BTreeSet;
use std::fmt;

/// The pass name.
pub const NAME: &str = "fold-blocks";

/// How a group's shared weights are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Share {
    /// The weights of the group's most influential block.
    Representative,
    /// The mean of the group's weights.
    Average,
}

/// The training-free importance measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Importance {
    /// ShortGPT's Block Influence, `1 − mean cos`.
    BlockInfluence,
    /// The angular variant, `mean arccos(cos)/π`.
    Angular,
    /// No measurement: the last blocks go first. The naive baseline the
    /// measured importances are compared against.
    Last,
}

/// Options of `fold-blocks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct FoldBlocksOptions {
    /// Blocks to remove (ignored when `rate` is given).
    pub remove: usize,
    /// Fraction of blocks to remove, rounded to the nearest count.
    pub rate: Option<f64>,
    /// Retained blocks per weight-sharing group (1: no sharing).
    pub group: usize,
    /// How a group's shared weights are chosen.
    pub share: Share,
    /// How blocks are ranked.
    pub importance: Importance,
    /// Refit the private norms by least squares on calibration data.
    pub refit_norms: bool,
}

impl Default for FoldBlocksOptions {
    fn default() -> FoldBlocksOptions {
        FoldBlocksOptions {
            remove: 1,
            rate: None,
            group: 2,
            share: Share::Representative,
            importance: Importance::BlockInfluence,
            refit_norms: true,
        }
    }
}

impl FoldBlocksOptions {
    /// Options from `key=value` settings (`sharc compress --set`): `remove`,
    /// `rate`, `group`, `share`, `importance`, `refit-norms`.
    pub fn from_settings(settings: &std::collections::BTreeMap<String, String>) -> Result<FoldBlocksOptions, String> {
        let mut o = FoldBlocksOptions::default();
        for (k, v) in settings {
            let v = v.trim();
            match k.as_str() {
                "remove" => o.remove = v.parse().map_err(|_| format!("remove={v}: expected a number of blocks"))?,
                "rate" => {
                    let r: f64 = v.parse().map_err(|_| format!("rate={v}: expected a fraction"))?;
                    o.rate = Some(r);
                }
                "group" | "groups" => o.group = v.parse().map_err(|_| format!("{k}={v}: expected a group size"))?,
                "share" => {
                    o.share = match v {
                        "representative" => Share::Representative,
                        "average" => Share::Average,
                        _ => return Err(format!("share={v}: expected representative or average")),
                    }
                }
                "importance" => {
                    o.importance = match v {
                        "block-influence" | "bi" => Importance::BlockInfluence,
                        "angular" => Importance::Angular,
                        "last" => Importance::Last,
                        _ => return Err(format!("importance={v}: expected block-influence, angular or last")),
                    }
                }
                "refit-norms" | "refit_norms" => {
                    o.refit_norms = v.parse().map_err(|_| format!("refit-norms={v}: expected true or false"))?
                }
                _ => {
                    return Err(format!(
                        "fold has no setting '{k}' (settings: remove, rate, group, share, importance, refit-norms)"
                    ));
                }
            }
        }
        Ok(o)
    }

    /// How many of `layers` blocks to remove.
    pub fn removal_count(&self, layers: usize) -> Result<usize, String> {
        match self.rate {
            Some(r) if !(0.0..1.0).contains(&r) => Err(format!("rate={r}: expected a fraction in [0, 1)")),
            Some(r) => Ok((r * layers as f64).round() as usize),
            None => Ok(self.remove),
        }
    }
}

/// The `fold-blocks` pass. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct FoldBlocks {
    /// Its options.
    pub options: FoldBlocksOptions,
    /// What the last run did.
    pub summary: Option<FoldSummary>,
}

impl FoldBlocks {
    /// The pass with these options.
    pub fn new(options: FoldBlocksOptions) -> FoldBlocks {
        FoldBlocks { options, summary: None }
    }
}

impl Pass for FoldBlocks {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&mut self, graph: &mut Graph, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let (ev, batches) = cx.measuring(NAME, "block influence")?;
        let s = fold_blocks(graph, &self.options, ev, batches)?;
        cx.count(NAME, "blocks-removed", s.removed.len() as i64);
        cx.count(NAME, "groups", s.groups.len() as i64);
        cx.count(NAME, "params-removed", s.params_before as i64 - s.params_after as i64);
        cx.reports.insert(NAME.to_string(), s.to_string());
        self.summary = Some(s);
        Ok(PassOutcome::Changed)
    }
}

/// How well one refitted norm matches the original.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NormFit {
    /// The block (0-based, original numbering).
    pub block: usize,
    /// The norm's role (`norm1`).
    pub norm: String,
    /// `Σ(y − t)²/Σt²` of the norm's output before the refit.
    pub error_before: f64,
    /// The same after the refit.
    pub error_after: f64,
}

/// What `fold-blocks` did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FoldSummary {
    /// L, the blocks found.
    pub layers: usize,
    /// The importance measure used.
    pub importance: Importance,
    /// Block influence and its angular variant, per block.
    pub influence: BlockInfluence,
    /// Removed blocks (0-based), ascending.
    pub removed: Vec<usize>,
    /// Groups of retained blocks sharing weights (0-based).
    pub groups: Vec<Vec<usize>>,
    /// Per group: the block whose weights it keeps (`share=representative`).
    pub representatives: Vec<Option<usize>>,
    /// The options, as given.
    pub options: FoldBlocksOptions,
    /// Norm refits, in the order they were made.
    pub norm_fits: Vec<NormFit>,
    /// Unique parameters before.
    pub params_before: u64,
    /// Unique parameters after.
    pub params_after: u64,
    /// Every block's output name in the original model.
    pub block_outputs: Vec<String>,
    /// The name of block 0's input (the stream before any block).
    pub stream_input: String,
}

impl FoldSummary {
    /// For each original block, the value of the folded model that holds
    /// the stream at that depth: the block's own output when it was kept,
    /// otherwise that of the last kept block before it (or the stream input).
    pub fn counterparts(&self) -> Vec<String> {
        let removed: BTreeSet<usize> = self.removed.iter().copied().collect();
        let mut last = self.stream_input.clone();
        self.block_outputs
            .iter()
            .enumerate()
            .map(|(i, name)| {
                if !removed.contains(&i) {
                    last = name.clone();
                }
                last.clone()
            })
            .collect()
    }
}

impl fmt::Display for FoldSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "fold-blocks: {} blocks, removed {}, {} groups of up to {} ({:?} sharing, {:?} importance)",
            self.layers,
            self.removed.len(),
            self.groups.len(),
            o.group,
            o.share,
            self.importance
        )?;
        let bi: Vec<String> = self.influence.influence.iter().map(|v| format!("{v:.4}")).collect();
        let ang: Vec<String> = self.influence.angular.iter().map(|v| format!("{v:.4}")).collect();
        writeln!(f, "  block influence (1 - cos):  {}", bi.join(" "))?;
        writeln!(f, "  angular (arccos/pi):        {}", ang.join(" "))?;
        let removed: Vec<String> = self.removed.iter().map(|b| b.to_string()).collect();
        writeln!(f, "  removed blocks: {}", if removed.is_empty() { "none".to_string() } else { removed.join(", ") })?;
        for (g, rep) in self.groups.iter().zip(&self.representatives) {
            let members: Vec<String> = g.iter().map(|b| b.to_string()).collect();
            match rep {
                Some(r) => writeln!(f, "  group [{}] shares block {r}'s weights", members.join(", "))?,
                None if g.len() == 1 => writeln!(f, "  group [{}] keeps its own weights", members.join(", "))?,
                None => writeln!(f, "  group [{}] shares the average of its weights", members.join(", "))?,
            }
        }
        for n in &self.norm_fits {
            writeln!(
                f,
                "  refit block {} {}: relative error {:.3e} -> {:.3e}",
                n.block, n.norm, n.error_before, n.error_after
            )?;
        }
        writeln!(f, "  unique parameters {} -> {}", self.params_before, self.params_after)
    }
}

fn refused(message: impl Into<String>) -> PassError {
    PassError::Refused { pass: NAME.to_string(), message: message.into() }
}

fn failed(message: impl Into<String>) -> PassError {
    PassError::Failed { pass: NAME.to_string(), message: message.into() }
}

fn calibration_failed(e: CalibrationError) -> PassError {
    failed(e.to_string())
}

/// A weight's data as `f64`.
pub(crate) fn weight_f64(g: &Graph, id: WeightId) -> Result<Vec<f64>, String> {
    let w = g.weights.get(id).ok_or_else(|| format!("weight {id} is missing from the store"))?;
    w.tensor().to_f64_vec().ok_or_else(|| format!("weight '{}' ({}) has no numeric data", w.name, w.dtype))
}

/// A tensor of `dtype` (f32 or f64) from `f64` values.
pub(crate) fn tensor_of(dtype: DType, shape: &[usize], v: Vec<f64>) -> Tensor {
    match dtype {
        DType::F64 => Tensor::from_vec(shape, v),
        _ => Tensor::from_vec(shape, v.into_iter().map(|x| x as f32).collect::<Vec<f32>>()),
    }
}

/// The mean of several weights as a new stored weight.
pub(crate) fn average_weight(g: &mut Graph, ids: &[WeightId], name: String) -> Result<WeightId, String> {
    let first = g.weights.get(ids[0]).ok_or("a weight is missing from the store")?;
    let (dtype, shape) = (first.dtype, first.shape.clone());
    if !matches!(dtype, DType::F32 | DType::F64) {
        return Err(format!("weight '{}' is {dtype}; only f32 and f64 weights can be averaged", first.name));
    }
    let mut mean = weight_f64(g, ids[0])?;
    for &id in &ids[1..] {
        for (acc, x) in mean.iter_mut().zip(weight_f64(g, id)?) {
            *acc += x;
        }
    }
    mean.iter_mut().for_each(|x| *x /= ids.len() as f64);
    Ok(g.weights.add_unique(Weight::from_tensor(name, tensor_of(dtype, &shape, mean))))
}

/// Groups of consecutive retained blocks, `size` at a time.
pub fn groups(retained: &[usize], size: usize) -> Vec<Vec<usize>> {
    retained.chunks(size.max(1)).map(|c| c.to_vec()).collect()
}

/// The `count` blocks with the lowest score (ties: the later block goes
/// first, since later blocks of a trained stack tend to be the redundant
/// ones), ascending.
pub fn lowest(scores: &[f64], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(b.cmp(&a)));
    let mut out: Vec<usize> = order.into_iter().take(count).collect();
    out.sort_unstable();
    out
}

/// Applies `fold-blocks` to `g`, measuring on `batches` through `ev`.
pub fn fold_blocks(
    g: &mut Graph,
    opts: &FoldBlocksOptions,
    ev: &dyn Evaluator,
    batches: &[Vec<Value>],
) -> Result<FoldSummary, PassError> {
    let an = find_blocks(g).map_err(|e| refused(e.to_string()))?;
    let layers = an.len();
    let count = opts.removal_count(layers).map_err(refused)?;
    if count >= layers {
        return Err(refused(format!(
            "removing {count} of {layers} blocks would leave none; remove at most {}",
            layers - 1
        )));
    }
    if opts.group == 0 {
        return Err(refused("group=0: a group holds at least one block"));
    }
    if batches.is_empty() {
        return Err(PassError::Missing {
            pass: NAME.to_string(),
            message: "block influence needs at least one calibration batch".to_string(),
        });
    }
    let original = g.clone();
    let influence = block_influence(ev, g, &an, batches).map_err(calibration_failed)?;
    let position: Vec<f64> = (0..layers).map(|i| (layers - i) as f64).collect();
    let scores = match opts.importance {
        Importance::BlockInfluence => &influence.influence,
        Importance::Angular => &influence.angular,
        Importance::Last => &position,
    };
    let removed = lowest(scores, count);
    let removed_set: BTreeSet<usize> = removed.iter().copied().collect();
    let retained: Vec<usize> = (0..layers).filter(|b| !removed_set.contains(b)).collect();
    let grouped = groups(&retained, opts.group);
    let params_before = g.stats().unique_params;

    let mut dead = bypass_blocks(g, &an, &removed_set);
    let mut representatives = Vec::new();
    for (gi, members) in grouped.iter().enumerate() {
        if members.len() < 2 {
            representatives.push(None);
            continue;
        }
        let rep = match opts.share {
            Share::Representative => {
                Some(*members.iter().max_by(|&&a, &&b| scores[a].total_cmp(&scores[b])).unwrap_or(&members[0]))
            }
            Share::Average => None,
        };
        representatives.push(rep);
        for (ri, role) in an.roles.iter().enumerate() {
            if matches!(role.kind, RoleKind::NormGain | RoleKind::NormBias) {
                continue;
            }
            let ids: Vec<WeightId> = members.iter().map(|&b| an.blocks[b].weights[ri].id).collect();
            let target = match rep {
                Some(r) => an.blocks[r].weights[ri].id,
                None if ids.iter().all(|i| *i == ids[0]) => ids[0],
                None => average_weight(g, &ids, format!("fold{}.{}", gi + 1, role.name))
                    .map_err(|e| refused(format!("role '{}': {e}", role.name)))?,
            };
            for &b in members {
                dead.extend(share_weight(g, &an, b, ri, target));
            }
        }
    }
    remove_dead(g, dead);

    let mut norm_fits = Vec::new();
    if opts.refit_norms {
        for &b in &retained {
            let sites = norm_sites(g, &an, b);
            if !sites.is_empty() {
                norm_fits.extend(refit(g, &original, &an, b, &sites, ev, batches)?);
            }
        }
    }

    let name = |v: ValueRef| original.value_info(v).name.clone();
    Ok(FoldSummary {
        layers,
        importance: opts.importance,
        influence,
        removed,
        groups: grouped,
        representatives,
        options: opts.clone(),
        norm_fits,
        params_before,
        params_after: g.stats().unique_params,
        block_outputs: an.blocks.iter().map(|b| name(b.output)).collect(),
        stream_input: name(an.blocks[0].input),
    })
}

/// One norm of one block: where its gain (and shift) enter and the value
/// that carries `γ·n + β`.
#[derive(Clone, Debug)]
struct NormSite {
    /// `norm1`, from the role names `norm1.gain` / `norm1.bias`.
    label: String,
    gain_role: usize,
    bias_role: Option<usize>,
    /// The value holding `γ·n + β` (the same node in both models).
    output: ValueRef,
}

/// The norms of block `b` whose affine output can be located: a
/// `LayerNormalization`/`RMSNormalization` op reading the gain (and shift),
/// or a `Mul` by the gain followed by an `Add` of the shift. Gains must be
/// vectors over the last dim.
fn norm_sites(g: &Graph, an: &BlockAnalysis, b: usize) -> Vec<NormSite> {
    let block = &an.blocks[b];
    let mut out = Vec::new();
    for (gi, role) in an.roles.iter().enumerate() {
        if role.kind != RoleKind::NormGain || role.shape.len() != 1 {
            continue;
        }
        let label = role.name.strip_suffix(".gain").unwrap_or(&role.name).to_string();
        let bias_role = an
            .roles
            .iter()
            .position(|r| r.kind == RoleKind::NormBias && r.name.strip_suffix(".bias") == Some(label.as_str()));
        let [(gnode, gport)] = block.weights[gi].uses.as_slice() else { continue };
        let gnode = *gnode;
        let output = match &g.node(gnode).op {
            Op::LayerNormalization(_) | Op::RMSNormalization(_) if *gport == 1 => {
                // The fused op must also read the shift, if there is one.
                if let Some(br) = bias_role
                    && !block.weights[br].uses.iter().all(|(n, p)| *n == gnode && *p == 2)
                {
                    continue;
                }
                ValueRef::new(gnode, 0)
            }
            Op::Binary(sharc_ir::BinaryOp::Mul) => {
                let prod = ValueRef::new(gnode, 0);
                match bias_role {
                    None => prod,
                    Some(br) => {
                        let [(bnode, _)] = block.weights[br].uses.as_slice() else { continue };
                        let reads_prod = g.node_inputs(*bnode).contains(&Some(prod));
                        if !matches!(g.node(*bnode).op, Op::Binary(sharc_ir::BinaryOp::Add)) || !reads_prod {
                            continue;
                        }
                        ValueRef::new(*bnode, 0)
                    }
                }
            }
            _ => continue,
        };
        // The gain must scale the last dim (checked again on the data,
        // where inference left the shape unknown).
        if let Some(last) = g.value_type(output).shape().and_then(|s| s.dims().last().and_then(|d| d.fixed()))
            && last != role.shape[0] as u64
        {
            continue;
        }
        out.push(NormSite { label, gain_role: gi, bias_role, output });
    }
    out
}

/// Per-channel sums for the least-squares fit `t ≈ γ·n + β`.
#[derive(Clone, Debug, Default)]
struct ChannelSums {
    count: f64,
    n: f64,
    nn: f64,
    t: f64,
    tt: f64,
    nt: f64,
}

impl ChannelSums {
    /// `Σ(γn + β − t)²`.
    fn sq_error(&self, gamma: f64, beta: f64) -> f64 {
        (self.tt - 2.0 * gamma * self.nt - 2.0 * beta * self.t
            + gamma * gamma * self.nn
            + 2.0 * gamma * beta * self.n
            + self.count * beta * beta)
            .max(0.0)
    }
}

/// Refits the norms `sites` of block `b` in `g` against `original`.
fn refit(
    g: &mut Graph,
    original: &Graph,
    an: &BlockAnalysis,
    b: usize,
    sites: &[NormSite],
    ev: &dyn Evaluator,
    batches: &[Vec<Value>],
) -> Result<Vec<NormFit>, PassError> {
    let names: Vec<String> = sites.iter().map(|s| g.value_info(s.output).name.clone()).collect();
    let rp = Probe::by_names(original, &names).map_err(calibration_failed)?;
    let cp = Probe::by_names(g, &names).map_err(calibration_failed)?;
    let block = &an.blocks[b];
    let mut params = Vec::new();
    for s in sites {
        let gamma = weight_f64(g, block.weights[s.gain_role].id).map_err(failed)?;
        let beta = match s.bias_role {
            Some(r) => weight_f64(g, block.weights[r].id).map_err(failed)?,
            None => vec![0.0; gamma.len()],
        };
        params.push((gamma, beta));
    }
    let mut sums: Vec<Vec<ChannelSums>> = params.iter().map(|(gm, _)| vec![ChannelSums::default(); gm.len()]).collect();
    let label = format!("refitting block {b} norms");
    run_pair(ev, &rp, &cp, batches, &label, |batch, a, c| {
        let mask = token_mask(original, batch);
        for (k, site_sums) in sums.iter_mut().enumerate() {
            let (t, y) = (f32_data(&a.probes[k])?, f32_data(&c.probes[k])?);
            let d = site_sums.len();
            if a.probes[k].shape().last() != Some(&d) {
                return Err(format!(
                    "norm output '{}' has shape {:?}; its gain of {d} must scale the last dim",
                    names[k],
                    a.probes[k].shape()
                ));
            }
            if t.len() != y.len() || !t.len().is_multiple_of(d) {
                return Err(format!("norm output '{}' differs in shape between the models", names[k]));
            }
            let rows = t.len() / d;
            let keep = mask.as_ref().filter(|m| m.len() == rows);
            let (gamma, beta) = &params[k];
            for r in (0..rows).filter(|&r| keep.is_none_or(|m| m[r])) {
                for (ch, s) in site_sums.iter_mut().enumerate() {
                    if gamma[ch] == 0.0 {
                        continue;
                    }
                    let n = (y[r * d + ch] as f64 - beta[ch]) / gamma[ch];
                    let tv = t[r * d + ch] as f64;
                    s.count += 1.0;
                    s.n += n;
                    s.nn += n * n;
                    s.t += tv;
                    s.tt += tv * tv;
                    s.nt += n * tv;
                }
            }
        }
        Ok(())
    })
    .map_err(calibration_failed)?;

    let mut fits = Vec::new();
    for ((site, site_sums), (gamma, beta)) in sites.iter().zip(&sums).zip(params) {
        let (mut new_g, mut new_b) = (gamma.clone(), beta.clone());
        let (mut before, mut after, mut norm) = (0.0, 0.0, 0.0);
        for (ch, s) in site_sums.iter().enumerate() {
            if s.count == 0.0 {
                continue;
            }
            let (g0, b0) = (gamma[ch], beta[ch]);
            let (g1, b1) = if site.bias_role.is_some() {
                let var = s.count * s.nn - s.n * s.n;
                if var > 1e-12 * s.count * s.count {
                    let g1 = (s.count * s.nt - s.n * s.t) / var;
                    (g1, (s.t - g1 * s.n) / s.count)
                } else {
                    (g0, b0)
                }
            } else if s.nn > 0.0 {
                (s.nt / s.nn, 0.0)
            } else {
                (g0, b0)
            };
            let (e0, e1) = (s.sq_error(g0, b0), s.sq_error(g1, b1));
            // Least squares cannot be worse on the data it was fitted to;
            // rounding can make it so by a hair, and then the old values stay.
            let (gf, bf, ef) = if e1 <= e0 { (g1, b1, e1) } else { (g0, b0, e0) };
            new_g[ch] = gf;
            new_b[ch] = bf;
            before += e0;
            after += ef;
            norm += s.tt;
        }
        replace_param(g, an, b, site.gain_role, new_g, "gain")?;
        if let Some(br) = site.bias_role {
            replace_param(g, an, b, br, new_b, "bias")?;
        }
        let rel = |e: f64| if norm > 0.0 { e / norm } else { 0.0 };
        fits.push(NormFit { block: b, norm: site.label.clone(), error_before: rel(before), error_after: rel(after) });
    }
    Ok(fits)
}

/// Gives block `b` a private weight with `data` for role `role`.
fn replace_param(
    g: &mut Graph,
    an: &BlockAnalysis,
    b: usize,
    role: usize,
    data: Vec<f64>,
    what: &str,
) -> Result<(), PassError> {
    let old = an.blocks[b].weights[role].id;
    let w = g.weights.get(old).ok_or_else(|| failed(format!("block {b}'s norm {what} is missing from the store")))?;
    let (dtype, shape, name) = (w.dtype, w.shape.clone(), w.name.clone());
    let value = g.add_weight(Weight::from_tensor(format!("{name}.refit"), tensor_of(dtype, &shape, data)));
    let dead: Vec<NodeId> = rewire_role(g, an, b, role, value);
    remove_dead(g, dead);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::blocks::tests::synthetic;
    use sharc_interp::Interpreter;
    use sharc_ir::text::{parse, print};

    fn batches(d: usize) -> Vec<Vec<Value>> {
        (0..2)
            .map(|b| {
                let v: Vec<f32> = (0..2 * 5 * d).map(|i| (((i + 13 * b) * 37 % 23) as f32 - 11.0) / 7.0).collect();
                vec![Value::Tensor(Tensor::from_vec(&[2, 5, d], v))]
            })
            .collect()
    }

    fn opts(remove: usize, group: usize, share: Share, refit: bool) -> FoldBlocksOptions {
        FoldBlocksOptions { remove, group, share, refit_norms: refit, ..Default::default() }
    }

    #[test]
    fn lowest_scores_and_groups() {
        assert_eq!(lowest(&[0.3, 0.1, 0.2, 0.1], 2), [1, 3]);
        assert_eq!(lowest(&[0.3, 0.1, 0.2, 0.1], 1), [3]);
        assert_eq!(groups(&[0, 2, 3, 5, 6], 2), [vec![0, 2], vec![3, 5], vec![6]]);
        assert_eq!(groups(&[0, 1], 1), [vec![0], vec![1]]);
    }

    #[test]
    fn removes_the_least_influential_block_and_shares_in_groups() {
        let g0 = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
        let mut g = g0.clone();
        let ev = Interpreter::new();
        let s = fold_blocks(&mut g, &opts(1, 2, Share::Representative, false), &ev, &batches(4)).unwrap();
        sharc_ir::verify(&g).unwrap();
        let bi = &s.influence.influence;
        let min = (0..4).min_by(|&a, &b| bi[a].total_cmp(&bi[b]).then(b.cmp(&a))).unwrap();
        assert_eq!(s.removed, vec![min]);
        assert_eq!(s.groups.len(), 2);
        // 3 blocks remain in 2 groups: one of 2 (sharing everything but
        // its norms) and one of 1.
        let an = find_blocks(&g0).unwrap();
        let per_block = an.block_params(&g0, 0);
        let norms: u64 = an
            .roles
            .iter()
            .filter(|r| matches!(r.kind, RoleKind::NormGain | RoleKind::NormBias))
            .map(|r| r.shape.iter().product::<usize>() as u64)
            .sum();
        assert_eq!(s.params_after, s.params_before - per_block - (per_block - norms));
        assert_eq!(g.stats().unique_params, s.params_after);
        // The counterparts of a removed block's output name the stream
        // before it.
        let c = s.counterparts();
        assert_eq!(c.len(), 4);
        if min > 0 {
            assert_eq!(c[min], c[min - 1]);
        }
    }

    #[test]
    fn group_one_without_removal_changes_nothing_numerically() {
        let g0 = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
        let mut g = g0.clone();
        let ev = Interpreter::new();
        let s = fold_blocks(&mut g, &opts(0, 1, Share::Average, true), &ev, &batches(4)).unwrap();
        assert!(s.removed.is_empty());
        // Refitting a norm that already matches exactly keeps it (within
        // rounding), so the outputs stay.
        let x = &batches(4)[0];
        let (a, b) = (ev.evaluate(&g0, x).unwrap(), ev.evaluate(&g, x).unwrap());
        let (a, b) = (a[0].as_tensor().unwrap().to_f64_vec().unwrap(), b[0].as_tensor().unwrap().to_f64_vec().unwrap());
        let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(err < 1e-4, "{err}");
        assert!(s.norm_fits.iter().all(|f| f.error_after <= 1e-9), "{s}");
    }

    #[test]
    fn refitting_norms_reduces_their_error() {
        let g0 = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
        let ev = Interpreter::new();
        let mut g = g0.clone();
        let s = fold_blocks(&mut g, &opts(1, 3, Share::Average, true), &ev, &batches(4)).unwrap();
        assert!(!s.norm_fits.is_empty());
        for f in &s.norm_fits {
            assert!(f.error_after <= f.error_before, "{f:?}");
        }
        assert!(s.norm_fits.iter().any(|f| f.error_after < f.error_before * 0.99), "{s}");
    }

    #[test]
    fn refuses_removing_everything_and_empty_groups() {
        let ev = Interpreter::new();
        let mut g = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
        let e = fold_blocks(&mut g, &opts(4, 2, Share::Average, false), &ev, &batches(4)).unwrap_err();
        assert!(e.to_string().contains("at most 3"), "{e}");
        let e = fold_blocks(&mut g, &opts(1, 0, Share::Average, false), &ev, &batches(4)).unwrap_err();
        assert!(e.to_string().contains("group=0"), "{e}");
        let o = FoldBlocksOptions { rate: Some(1.5), ..Default::default() };
        assert!(fold_blocks(&mut g, &o, &ev, &batches(4)).unwrap_err().to_string().contains("rate=1.5"));
    }

    #[test]
    fn the_pass_needs_calibration() {
        let mut g = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
        let mut cx = PassContext::default();
        let e = FoldBlocks::default().run(&mut g, &mut cx).unwrap_err();
        assert!(matches!(e, PassError::Missing { .. }), "{e}");
    }

    #[test]
    fn snapshot_fold_remove1_group2_representative() {
        let mut g = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
        let ev = Interpreter::new();
        fold_blocks(&mut g, &opts(1, 2, Share::Representative, false), &ev, &batches(4)).unwrap();
        insta::assert_snapshot!(print(&g));
    }

    #[test]
    fn snapshot_refusal_when_blocks_do_not_match() {
        let mut g = parse(&synthetic(&["Relu", "Sigmoid", "Tanh", "Erf"], 4, 8)).unwrap();
        let before = print(&g);
        let e = fold_blocks(&mut g, &opts(1, 2, Share::Average, false), &Interpreter::new(), &batches(4)).unwrap_err();
        assert_eq!(print(&g), before, "a refused pass leaves the graph alone");
        insta::assert_snapshot!(e.to_string());
    }
}

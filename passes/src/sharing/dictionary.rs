//! `dictionary`: MASA's matrix dictionary ("Share Your Attention", arXiv
//! 2508.04581) applied to a trained model, without training.
//!
//! For each group of consecutive blocks and each chosen role (`q`, `k`, `v`,
//! `o`, or any linear role the block analysis names), the group's weights
//! `W_1 … W_L` are replaced by `S` shared atoms and `L·S` coefficients:
//!
//! - **Matrix PCA without centring** ([`math::matrix_pca`]): the small Gram
//!   matrix `G = WᵀW = VΛVᵀ` gives the atoms `D = W V_S Λ_S^{-1/2}` and the
//!   coefficients `C = Λ_S^{1/2} V_Sᵀ`. With `S = L` the weights come back
//!   exactly.
//! - **Groups**: `groups` runs of consecutive blocks, cut evenly
//!   (`cut=uniform`) or at the largest representation drift between
//!   consecutive blocks on calibration data (`cut=drift`: one minus the mean
//!   cosine of consecutive blocks' outputs, the encoder-friendly substitute
//!   for MASA's head-projected KL that needs no output head).
//! - **Local refinement** (`residual-rank=r`): each layer's residual
//!   `W_l − Ŵ_l` is approximated at rank `r` after whitening with the
//!   Cholesky factor of the calibration inputs' autocorrelation `XᵀX = LLᵀ`
//!   ([`math::low_rank_residual`]); `whiten=false` uses a plain SVD.
//!
//! Each layer's weight becomes a *derived weight* in the graph:
//! `Reshape(MatMul(c_l, D))` (plus `MatMul(B_l, A_l)` for the residual),
//! named `dictionary.<role>.l<block>`. Its inputs are shared atoms, so
//! `fold-constants` refuses to fold it (the result is larger than the bytes
//! folding would free), backends evaluate it once at load, and the exported
//! ONNX stores atoms and coefficients, so the file shrinks.
//!
//! `method=svd` is the baseline the quality tables compare against: every
//! layer's weight is replaced by its own truncated SVD `U_rΣ_r · V_rᵀ`, with
//! the rank chosen so that the parameter count matches what the dictionary
//! would store for the same options.

pub mod math;

use crate::analysis::blocks::{BlockAnalysis, RoleKind, find_blocks};
use crate::sharing::expert_reuse::measure::{ErrorSum, LogitSum, floats, for_each_probe, remove_dead_nodes};
use crate::{Pass, PassContext, PassError, PassOutcome};
use math::{LowRank, MatrixPca, low_rank_residual, matrix_pca};
use serde::{Deserialize, Serialize};
use sharc_ir::op::{Gemm, Reshape};
use sharc_ir::{BinaryOp, DType, Graph, NodeId, Op, Tensor, Type, Value, ValueRef, Weight};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

/// The pass name.
pub const NAME: &str = "dictionary";

/// Where groups of blocks are cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cut {
    /// Groups of (nearly) equal size.
    Uniform,
    /// At the largest representation drift between consecutive blocks.
    Drift,
}

/// Which factorisation replaces the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Shared atoms and per-layer coefficients (MASA).
    Masa,
    /// Baseline: per-layer truncated SVD at the same parameter count.
    Svd,
}

crate::pass_options! {
    /// Options of `dictionary`.
    pub struct DictionaryOptions {
        /// Roles to factorise (block-analysis names: q, k, v, o, qkv, ...).
        roles: Vec<String> = vec!["q".into(), "k".into(), "v".into()],
        /// Atoms per group: a count (3) or, below 1, a fraction of the group's layers (0.5), rounded up.
        atoms: f64 = 0.5,
        /// Number of groups of consecutive blocks.
        groups: usize = 1,
        /// Where groups are cut: uniform, or drift (largest representation drift; needs calibration).
        cut: Cut = Cut::Uniform,
        /// Rank of each layer's low-rank residual correction (0: none).
        residual_rank: usize = 0,
        /// Fit the residual after whitening with the calibration inputs' autocorrelation.
        whiten: bool = true,
        /// masa (shared atoms) or svd (per-layer truncated SVD baseline at the same parameter count).
        method: Method = Method::Masa,
    }
}

impl DictionaryOptions {
    /// Options from `key=value` settings (`sharc compress` presets); lists
    /// are separated by `+` or `,`.
    pub fn from_settings(settings: &BTreeMap<String, String>) -> Result<DictionaryOptions, String> {
        let mut o = DictionaryOptions::default();
        for (k, v) in settings {
            let bad = || format!("{NAME}: option {k}={v} is not valid");
            match k.as_str() {
                "roles" => {
                    o.roles = v.split(['+', ',']).map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
                }
                "atoms" => o.atoms = v.parse().map_err(|_| bad())?,
                "groups" => o.groups = v.parse().map_err(|_| bad())?,
                "cut" => {
                    o.cut = match v.as_str() {
                        "uniform" => Cut::Uniform,
                        "drift" => Cut::Drift,
                        _ => return Err(format!("{}; use uniform or drift", bad())),
                    }
                }
                "residual-rank" => o.residual_rank = v.parse().map_err(|_| bad())?,
                "whiten" => o.whiten = v.parse().map_err(|_| bad())?,
                "method" => {
                    o.method = match v.as_str() {
                        "masa" => Method::Masa,
                        "svd" => Method::Svd,
                        _ => return Err(format!("{}; use masa or svd", bad())),
                    }
                }
                _ => {
                    return Err(format!(
                        "{NAME}: unknown option '{k}'; valid: roles, atoms, groups, cut, residual-rank, whiten, method"
                    ));
                }
            }
        }
        Ok(o)
    }

    /// Atoms for a group of `layers` layers.
    pub fn atoms_for(&self, layers: usize) -> Result<usize, String> {
        let a = self.atoms;
        if !(a.is_finite() && a > 0.0) {
            return Err(format!("atoms must be positive, not {a}"));
        }
        if a < 1.0 {
            return Ok(((a * layers as f64).ceil() as usize).clamp(1, layers));
        }
        if a.fract() != 0.0 {
            return Err(format!("atoms={a} is neither a count nor a fraction below 1"));
        }
        Ok((a as usize).min(layers))
    }
}

/// The `dictionary` pass. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct Dictionary {
    /// The options.
    pub options: DictionaryOptions,
    /// The report of the last run.
    pub report: Option<DictionaryReport>,
}

impl crate::RegisteredPass for Dictionary {
    type Options = DictionaryOptions;
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str =
        "Replace per-layer projections by shared atoms and per-layer coefficients (MASA matrix PCA)";
    fn new(options: DictionaryOptions) -> Dictionary {
        Dictionary { options, report: None }
    }
}

impl Dictionary {
    /// A pass with these options.
    pub fn new(options: DictionaryOptions) -> Dictionary {
        Dictionary { options, report: None }
    }
}

/// One group and role of the factorisation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupRole {
    /// The role.
    pub role: String,
    /// The blocks of the group.
    pub blocks: Vec<usize>,
    /// Atoms kept (for `method=svd`, the per-layer rank).
    pub atoms: usize,
    /// Fraction of the group's energy the atoms explain (1 for SVD rows).
    pub explained_energy: f64,
    /// Per layer: relative Frobenius error of the final weight.
    pub weight_error: Vec<f64>,
    /// Whether the residual was whitened.
    pub whitened: bool,
    /// Parameters before and after for this group and role.
    pub params_before: u64,
    /// Parameters after.
    pub params_after: u64,
}

/// What `dictionary` did and what it cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DictionaryReport {
    /// `masa` or `svd`.
    pub method: String,
    /// The groups, as block lists.
    pub groups: Vec<Vec<usize>>,
    /// Per group and role.
    pub parts: Vec<GroupRole>,
    /// Unique parameters of the model before and after.
    pub params_before: u64,
    /// Unique parameters after.
    pub params_after: u64,
    /// Per block: relative MSE of its output on the residual stream
    /// (calibration data; empty without it).
    pub block_error: Vec<f64>,
    /// Per block: mean cosine of its output rows against the original.
    pub block_cosine: Vec<f64>,
    /// Relative MSE of the first graph output.
    pub output_error: f64,
    /// Largest absolute difference of the first graph output.
    pub output_max_abs: f64,
    /// Mean KL(p_ref ‖ p_new) of the first output read as logits (decoders).
    pub logit_kl: Option<f64>,
    /// Top-1 agreement of the first output read as logits (decoders).
    pub top1: Option<f64>,
}

impl DictionaryReport {
    /// The report as text.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "dictionary (method={}) over groups {:?}", self.method, self.groups);
        let _ = writeln!(
            s,
            "  model parameters  {:>10} -> {:>10} ({:.1}% kept)",
            self.params_before,
            self.params_after,
            100.0 * self.params_after as f64 / self.params_before.max(1) as f64
        );
        let _ = writeln!(
            s,
            "  role      blocks            atoms  explained-energy  params-before  params-after  max-weight-rel-err"
        );
        for p in &self.parts {
            let worst = p.weight_error.iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                s,
                "  {:<9} {:<17} {:>5}  {:>16.4}  {:>13}  {:>12}  {:>18.3e}",
                p.role,
                format!("{:?}", p.blocks),
                p.atoms,
                p.explained_energy,
                p.params_before,
                p.params_after,
                worst
            );
        }
        if !self.block_error.is_empty() {
            let _ = writeln!(s, "  block  output-rel-mse  mean-cosine");
            for (i, (e, c)) in self.block_error.iter().zip(&self.block_cosine).enumerate() {
                let _ = writeln!(s, "  {i:>5}  {e:>14.3e}  {c:>11.6}");
            }
            let _ = write!(
                s,
                "  final output: relative MSE {:.3e}, max |diff| {:.3e}",
                self.output_error, self.output_max_abs
            );
            if let (Some(kl), Some(t)) = (self.logit_kl, self.top1) {
                let _ = write!(s, ", logit KL {kl:.4e} nats, top-1 agreement {t:.4}");
            }
            let _ = writeln!(s);
        }
        s
    }
}

fn refused(message: impl Into<String>) -> PassError {
    PassError::Refused { pass: NAME.into(), message: message.into() }
}

fn failed(message: impl Into<String>) -> PassError {
    PassError::Failed { pass: NAME.into(), message: message.into() }
}

/// How a weight meets its activations, for whitening: `x·W` (rows are the
/// input dim) or `x·Wᵀ` (columns are).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Orientation {
    RowsIn,
    ColsIn,
}

/// The activation a weight use multiplies, and how.
fn consumer(g: &Graph, node: NodeId, port: usize) -> Option<(ValueRef, Orientation)> {
    match &g.node(node).op {
        Op::MatMul if port == 1 => Some((g.node_input(node, 0)?, Orientation::RowsIn)),
        Op::Gemm(Gemm { trans_a: false, trans_b, .. }) if port == 1 => {
            Some((g.node_input(node, 0)?, if *trans_b { Orientation::ColsIn } else { Orientation::RowsIn }))
        }
        Op::Transpose(t) if t.perm.as_deref().is_none_or(|p| p == [1, 0]) => {
            let out = ValueRef::new(node, 0);
            let users = g.users(out);
            let (u, p) = *users.first()?;
            let (x, o) = consumer(g, u, p as usize)?;
            Some((x, if o == Orientation::RowsIn { Orientation::ColsIn } else { Orientation::RowsIn }))
        }
        _ => None,
    }
}

impl Pass for Dictionary {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let o = self.options.clone();
        if o.roles.is_empty() {
            return Err(refused("no roles to factorise"));
        }
        if o.groups == 0 {
            return Err(refused("groups must be at least 1"));
        }
        let blocks = find_blocks(g).map_err(|e| refused(e.to_string()))?;
        let nblocks = blocks.len();
        if o.groups > nblocks {
            return Err(refused(format!("{} groups asked for {nblocks} blocks", o.groups)));
        }
        let mut role_ids: Vec<usize> = Vec::new();
        for r in &o.roles {
            // A fused projection (`qkv` in GPT-2) stands for its parts.
            let fused = || {
                blocks.roles.iter().position(|x| {
                    x.kind == RoleKind::Linear
                        && x.name.len() > 1
                        && x.name.contains(r.as_str())
                        && x.name.chars().all(|c| "qkv".contains(c))
                })
            };
            let found = blocks.role_index(r).or_else(|| if r.len() == 1 { fused() } else { None });
            let Some(i) = found else {
                let linear: Vec<&str> =
                    blocks.roles.iter().filter(|x| x.kind == RoleKind::Linear).map(|x| x.name.as_str()).collect();
                return Err(refused(format!("no role '{r}' in the blocks; linear roles are: {}", linear.join(", "))));
            };
            let role = &blocks.roles[i];
            if role.kind != RoleKind::Linear || role.shape.len() != 2 {
                return Err(refused(format!(
                    "role '{r}' is a {} of shape {:?}; only matrices are factorised",
                    role.kind.name(),
                    role.shape
                )));
            }
            if role.dtype != DType::F32 {
                return Err(refused(format!("role '{r}' is {}; only f32 weights are factorised", role.dtype)));
            }
            if !role_ids.contains(&i) {
                role_ids.push(i);
            }
        }
        let calibration = match (cx.evaluator, cx.calibration) {
            (Some(ev), Some(b)) if !b.is_empty() => Some((ev, b)),
            _ => None,
        };
        let groups = match o.cut {
            Cut::Uniform => uniform_groups(nblocks, o.groups),
            Cut::Drift => {
                let (ev, batches) = calibration.ok_or_else(|| PassError::Missing {
                    pass: NAME.into(),
                    message: "cut=drift needs an evaluator and calibration batches".into(),
                })?;
                let drift = block_drift(g, &blocks, ev, batches).map_err(failed)?;
                drift_groups(&drift, o.groups)
            }
        };
        let needs_inputs = o.residual_rank > 0 && o.whiten && o.method == Method::Masa;
        let autocorr = if needs_inputs {
            let (ev, batches) = calibration.ok_or_else(|| PassError::Missing {
                pass: NAME.into(),
                message: "whitening the residual needs an evaluator and calibration batches (or whiten=false)".into(),
            })?;
            autocorrelations(g, &blocks, &role_ids, ev, batches).map_err(failed)?
        } else {
            HashMap::new()
        };
        let original = g.clone();
        let mut report = DictionaryReport {
            method: format!("{:?}", o.method).to_lowercase(),
            groups: groups.clone(),
            params_before: g.stats().unique_params,
            ..Default::default()
        };
        for &ri in &role_ids {
            for (gi, members) in groups.iter().enumerate() {
                let part = factorise(g, &blocks, ri, gi, members, &o, &autocorr)?;
                report.parts.push(part);
            }
        }
        remove_dead_nodes(g);
        report.params_after = g.stats().unique_params;
        if let Some((ev, batches)) = calibration {
            measure(&original, g, &blocks, ev, batches, &mut report).map_err(failed)?;
        }
        cx.count(NAME, "params-removed", report.params_before as i64 - report.params_after as i64);
        cx.reports.insert(NAME.into(), report.to_text());
        self.report = Some(report);
        Ok(PassOutcome::Changed)
    }
}

/// `count` runs of consecutive blocks of nearly equal size, larger first.
pub fn uniform_groups(blocks: usize, count: usize) -> Vec<Vec<usize>> {
    let count = count.clamp(1, blocks.max(1));
    let (base, extra) = (blocks / count, blocks % count);
    let mut out = Vec::new();
    let mut at = 0;
    for i in 0..count {
        let len = base + usize::from(i < extra);
        out.push((at..at + len).collect());
        at += len;
    }
    out
}

/// Cuts after the `count − 1` largest drifts (`drift[i]` is between blocks
/// `i` and `i + 1`).
pub fn drift_groups(drift: &[f64], count: usize) -> Vec<Vec<usize>> {
    let blocks = drift.len() + 1;
    let mut order: Vec<usize> = (0..drift.len()).collect();
    order.sort_by(|&a, &b| drift[b].total_cmp(&drift[a]).then(a.cmp(&b)));
    let mut cuts: Vec<usize> = order.into_iter().take(count.saturating_sub(1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for c in cuts {
        out.push((at..=c).collect());
        at = c + 1;
    }
    out.push((at..blocks).collect());
    out
}

/// One minus the mean cosine between consecutive blocks' output rows.
fn block_drift(
    g: &Graph,
    blocks: &BlockAnalysis,
    ev: &dyn sharc_ir::Evaluator,
    batches: &[Vec<Value>],
) -> Result<Vec<f64>, String> {
    let outs: Vec<ValueRef> = blocks.blocks.iter().map(|b| b.output).collect();
    let mut sums = vec![(0.0f64, 0u64); outs.len().saturating_sub(1)];
    for_each_probe(ev, g, &outs, batches, |_, ts| {
        let width = ts[0].shape().last().copied().unwrap_or(1).max(1);
        let data: Vec<Vec<f32>> = ts.iter().map(floats).collect::<Result<_, _>>()?;
        for (i, s) in sums.iter_mut().enumerate() {
            for (a, b) in data[i].chunks(width).zip(data[i + 1].chunks(width)) {
                s.0 += cosine(a, b);
                s.1 += 1;
            }
        }
        Ok(())
    })?;
    Ok(sums.iter().map(|(c, n)| 1.0 - if *n == 0 { 1.0 } else { c / *n as f64 }).collect())
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        ab += f64::from(*x) * f64::from(*y);
        aa += f64::from(*x) * f64::from(*x);
        bb += f64::from(*y) * f64::from(*y);
    }
    if aa == 0.0 && bb == 0.0 {
        1.0
    } else if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa.sqrt() * bb.sqrt())
    }
}

/// `XᵀX` of every activation a chosen role's weight multiplies, keyed by
/// the activation, in `f64`.
fn autocorrelations(
    g: &Graph,
    blocks: &BlockAnalysis,
    role_ids: &[usize],
    ev: &dyn sharc_ir::Evaluator,
    batches: &[Vec<Value>],
) -> Result<HashMap<ValueRef, (usize, Vec<f64>)>, String> {
    let mut acts: Vec<ValueRef> = Vec::new();
    for b in &blocks.blocks {
        for &ri in role_ids {
            for &(node, port) in &b.weights[ri].uses {
                if let Some((x, _)) = consumer(g, node, port)
                    && !acts.contains(&x)
                {
                    acts.push(x);
                }
            }
        }
    }
    let mut out: HashMap<ValueRef, (usize, Vec<f64>)> = HashMap::new();
    for_each_probe(ev, g, &acts, batches, |_, ts| {
        for (v, t) in acts.iter().zip(&ts) {
            let d = t.shape().last().copied().ok_or("an activation is a scalar")?;
            let x = floats(t)?;
            let e = out.entry(*v).or_insert_with(|| (d, vec![0.0; d * d]));
            if e.0 != d {
                return Err("an activation changed width between batches".into());
            }
            for row in x.chunks(d) {
                for i in 0..d {
                    let xi = f64::from(row[i]);
                    if xi == 0.0 {
                        continue;
                    }
                    let acc = &mut e.1[i * d..(i + 1) * d];
                    for (a, xj) in acc.iter_mut().zip(row) {
                        *a += xi * f64::from(*xj);
                    }
                }
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Factorises one role over one group and rewires the group's uses.
fn factorise(
    g: &mut Graph,
    blocks: &BlockAnalysis,
    ri: usize,
    gi: usize,
    members: &[usize],
    o: &DictionaryOptions,
    autocorr: &HashMap<ValueRef, (usize, Vec<f64>)>,
) -> Result<GroupRole, PassError> {
    let role = blocks.roles[ri].name.clone();
    let shape = blocks.roles[ri].shape.clone();
    let (rows, cols) = (shape[0], shape[1]);
    let n = rows * cols;
    let mut layers: Vec<Vec<f64>> = Vec::new();
    let mut seen = HashMap::new();
    for &b in members {
        let id = blocks.blocks[b].weights[ri].id;
        let w = g.weights.get(id).ok_or_else(|| failed(format!("the weight of {role} in block {b} is missing")))?;
        if w.shape != shape {
            return Err(refused(format!("{role} of block {b} has shape {:?}, not {shape:?}", w.shape)));
        }
        seen.entry(id).or_insert(b);
        layers.push(floats(w.tensor()).map_err(failed)?.into_iter().map(f64::from).collect());
    }
    let l = members.len();
    let s = o.atoms_for(l).map_err(refused)?;
    let params_before: u64 = seen.len() as u64 * n as u64;
    let tag = format!("dictionary.{}.g{gi}", sanitize(&role));
    let mut derived: Vec<ValueRef> = Vec::new();
    let mut weight_error = Vec::new();
    let (atoms_used, energy, params_after, whitened) = match o.method {
        Method::Svd => {
            // Same parameters as S atoms plus L·S coefficients (plus the
            // residuals the dictionary would add).
            let budget = (s * n + l * s + l * o.residual_rank * (rows + cols)) as f64;
            let r = ((budget / (l as f64 * (rows + cols) as f64)).floor() as usize).min(rows.min(cols));
            let mut after = 0u64;
            for (k, w) in layers.iter().enumerate() {
                let lr = low_rank_residual(w, rows, cols, r, None).map_err(failed)?;
                let name = format!("{tag}.l{}", members[k]);
                let (v, p) = low_rank_value(g, &lr, rows, cols, &name);
                after += p;
                weight_error.push(rel_err(w, &lr.product(rows, cols)));
                derived.push(v.unwrap_or_else(|| zeros(g, rows, cols)));
            }
            (r, 1.0, after, false)
        }
        Method::Masa => {
            let pca: MatrixPca = matrix_pca(&layers, s).map_err(failed)?;
            let s = pca.atom_count();
            let atoms_f32: Vec<f32> = pca.atoms.iter().flatten().map(|x| *x as f32).collect();
            let atoms =
                g.add_weight(Weight::from_tensor(format!("{tag}.atoms"), Tensor::from_vec(&[s, n], atoms_f32.clone())));
            let target =
                g.add_constant(&format!("{tag}.shape"), Tensor::from_vec(&[2], vec![rows as i64, cols as i64]));
            let mut after = (s * n) as u64;
            let mut whitened = false;
            for (k, w) in layers.iter().enumerate() {
                let b = members[k];
                let coef: Vec<f32> = pca.coefficients[k].iter().map(|x| *x as f32).collect();
                // What the graph will compute, in the f32 it stores.
                let mut approx = vec![0.0f64; n];
                for (c, d) in coef.iter().zip(atoms_f32.chunks(n)) {
                    for (a, x) in approx.iter_mut().zip(d) {
                        *a += f64::from(*c) * f64::from(*x);
                    }
                }
                let cw = g.add_weight(Weight::from_tensor(
                    format!("{tag}.l{b}.coefficients"),
                    Tensor::from_vec(&[1, s], coef),
                ));
                after += s as u64;
                let flat = g.add_op(Op::MatMul, &[cw, atoms], Type::Unknown);
                let mut value = g.add_op(Op::Reshape(Reshape { allowzero: false }), &[flat, target], Type::Unknown);
                if o.residual_rank > 0 {
                    let delta: Vec<f64> = w.iter().zip(&approx).map(|(a, b)| a - b).collect();
                    let weighting =
                        if o.whiten { residual_weighting(g, blocks, b, ri, autocorr, rows, cols) } else { None };
                    let lr = match weighting {
                        Some((ac, Orientation::RowsIn)) => {
                            whitened = true;
                            low_rank_residual(&delta, rows, cols, o.residual_rank, Some(ac)).map_err(failed)?
                        }
                        Some((ac, Orientation::ColsIn)) => {
                            // Fit Δᵀ (cols × rows) against the inputs, then transpose back.
                            whitened = true;
                            let t = transpose(&delta, rows, cols);
                            let lr = low_rank_residual(&t, cols, rows, o.residual_rank, Some(ac)).map_err(failed)?;
                            LowRank {
                                b: transpose(&lr.a, lr.rank, rows),
                                a: transpose(&lr.b, cols, lr.rank),
                                rank: lr.rank,
                            }
                        }
                        None => low_rank_residual(&delta, rows, cols, o.residual_rank, None).map_err(failed)?,
                    };
                    let (res, p) = low_rank_value(g, &lr, rows, cols, &format!("{tag}.l{b}.residual"));
                    after += p;
                    let corr = lr.product(rows, cols);
                    for (a, c) in approx.iter_mut().zip(&corr) {
                        *a += c;
                    }
                    if let Some(res) = res {
                        value = g.add_op(Op::Binary(BinaryOp::Add), &[value, res], Type::Unknown);
                    }
                }
                weight_error.push(rel_err(w, &approx));
                derived.push(value);
            }
            (s, pca.explained_energy(), after, whitened)
        }
    };
    for (k, &b) in members.iter().enumerate() {
        let v = derived[k];
        // Mark the derived weight by name: it is computed from shared atoms.
        let name = g.fresh_name(&format!("dictionary.{}.l{b}", sanitize(&role)));
        g.node_mut(v.node).outputs[0].name = name;
        for &(node, port) in &blocks.blocks[b].weights[ri].uses {
            g.set_node_input(node, port, Some(v));
        }
    }
    Ok(GroupRole {
        role,
        blocks: members.to_vec(),
        atoms: atoms_used,
        explained_energy: energy,
        weight_error,
        whitened,
        params_before,
        params_after,
    })
}

/// The autocorrelation of the activation block `b`'s role weight multiplies,
/// when its orientation is known and its width matches.
fn residual_weighting<'a>(
    g: &Graph,
    blocks: &BlockAnalysis,
    b: usize,
    ri: usize,
    autocorr: &'a HashMap<ValueRef, (usize, Vec<f64>)>,
    rows: usize,
    cols: usize,
) -> Option<(&'a [f64], Orientation)> {
    let &(node, port) = blocks.blocks[b].weights[ri].uses.first()?;
    let (x, orient) = consumer(g, node, port)?;
    let (d, ac) = autocorr.get(&x)?;
    let want = if orient == Orientation::RowsIn { rows } else { cols };
    (*d == want).then_some((ac.as_slice(), orient))
}

fn transpose(m: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; m.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = m[i * cols + j];
        }
    }
    t
}

/// `MatMul(B, A)` as weights in the graph; `None` at rank 0. Returns the
/// value and the parameters it stores.
fn low_rank_value(g: &mut Graph, lr: &LowRank, rows: usize, cols: usize, name: &str) -> (Option<ValueRef>, u64) {
    if lr.rank == 0 {
        return (None, 0);
    }
    let b: Vec<f32> = lr.b.iter().map(|x| *x as f32).collect();
    let a: Vec<f32> = lr.a.iter().map(|x| *x as f32).collect();
    let bv = g.add_weight(Weight::from_tensor(format!("{name}.b"), Tensor::from_vec(&[rows, lr.rank], b)));
    let av = g.add_weight(Weight::from_tensor(format!("{name}.a"), Tensor::from_vec(&[lr.rank, cols], a)));
    (Some(g.add_op(Op::MatMul, &[bv, av], Type::Unknown)), (lr.rank * (rows + cols)) as u64)
}

fn zeros(g: &mut Graph, rows: usize, cols: usize) -> ValueRef {
    g.add_constant("dictionary.zero", Tensor::from_vec(&[rows, cols], vec![0.0f32; rows * cols]))
}

fn rel_err(w: &[f64], approx: &[f64]) -> f64 {
    let num: f64 = w.iter().zip(approx).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f64 = w.iter().map(|a| a * a).sum();
    if den == 0.0 { num.sqrt() } else { (num / den).sqrt() }
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

/// Per-block and final-output fidelity on the calibration data.
fn measure(
    original: &Graph,
    g: &Graph,
    blocks: &BlockAnalysis,
    ev: &dyn sharc_ir::Evaluator,
    batches: &[Vec<Value>],
    report: &mut DictionaryReport,
) -> Result<(), String> {
    let first = |gr: &Graph| gr.outputs().first().map(|o| o.value).ok_or("the graph has no outputs");
    let mut values: Vec<ValueRef> = blocks.blocks.iter().map(|b| b.output).collect();
    values.push(first(original)?);
    let mut reference = Vec::new();
    for_each_probe(ev, original, &values, batches, |_, ts| {
        reference.push(ts);
        Ok(())
    })?;
    let mut new_values: Vec<ValueRef> = blocks.blocks.iter().map(|b| b.output).collect();
    new_values.push(first(g)?);
    let nb = blocks.len();
    let mut errs = vec![ErrorSum::default(); nb + 1];
    let mut cos = vec![(0.0f64, 0u64); nb];
    let mut logits = LogitSum::default();
    let logits_like = matches!(g.value_type(first(g)?).as_tensor().map(|t| t.dtype), Some(DType::F32));
    for_each_probe(ev, g, &new_values, batches, |b, ts| {
        for i in 0..=nb {
            let (r, a) = (floats(&reference[b][i])?, floats(&ts[i])?);
            errs[i].add(&r, &a)?;
            if i < nb {
                let w = ts[i].shape().last().copied().unwrap_or(1).max(1);
                for (x, y) in r.chunks(w).zip(a.chunks(w)) {
                    cos[i].0 += cosine(x, y);
                    cos[i].1 += 1;
                }
            } else if logits_like {
                let vocab = ts[i].shape().last().copied().unwrap_or(1);
                logits.add(&r, &a, vocab)?;
            }
        }
        Ok(())
    })?;
    report.block_error = errs[..nb].iter().map(ErrorSum::relative_mse).collect();
    report.block_cosine = cos.iter().map(|(c, n)| if *n == 0 { 1.0 } else { c / *n as f64 }).collect();
    report.output_error = errs[nb].relative_mse();
    report.output_max_abs = errs[nb].max_abs();
    if crate::sharing::dictionary::is_decoder(original) {
        report.logit_kl = Some(logits.mean_kl());
        report.top1 = Some(logits.top1());
    }
    Ok(())
}

/// A decoder's first output is logits over a vocabulary: integer token ids
/// in, a float tensor whose last dim differs from the hidden width out. The
/// heuristic only decides whether KL and top-1 are reported.
pub fn is_decoder(g: &Graph) -> bool {
    let ids_in = g.inputs().len() == 1
        && g.value_type(ValueRef::new(g.inputs()[0], 0)).as_tensor().is_some_and(|t| t.dtype == DType::I64);
    let name_hint = g.outputs().first().is_some_and(|o| o.name.contains("logits"));
    ids_in || name_hint
}

/// `dictionary` as a `sharc compress` method.
pub struct DictionaryMethod {
    /// The pass options.
    pub options: DictionaryOptions,
}

impl super::Method for DictionaryMethod {
    fn name(&self) -> &str {
        NAME
    }

    fn needs_calibration(&self) -> bool {
        self.options.cut == Cut::Drift || (self.options.residual_rank > 0 && self.options.whiten)
    }

    fn apply(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<super::MethodOutcome, PassError> {
        // Block outputs keep their values: only weights change.
        let names: Vec<String> = find_blocks(g)
            .map(|b| b.blocks.iter().map(|bl| g.value_info(bl.output).name.clone()).collect())
            .unwrap_or_default();
        let mut pass = Dictionary::new(self.options.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_and_drift_groups() {
        assert_eq!(uniform_groups(6, 2), vec![vec![0, 1, 2], vec![3, 4, 5]]);
        assert_eq!(uniform_groups(5, 2), vec![vec![0, 1, 2], vec![3, 4]]);
        assert_eq!(uniform_groups(3, 1), vec![vec![0, 1, 2]]);
        // Largest drift between blocks 1 and 2, next between 3 and 4.
        assert_eq!(drift_groups(&[0.1, 0.9, 0.2, 0.5, 0.1], 3), vec![vec![0, 1], vec![2, 3], vec![4, 5]]);
        assert_eq!(drift_groups(&[0.1, 0.9], 1), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn atom_counts_and_fractions() {
        let o = |a: f64| DictionaryOptions { atoms: a, ..Default::default() };
        assert_eq!(o(0.5).atoms_for(6).unwrap(), 3);
        assert_eq!(o(0.34).atoms_for(6).unwrap(), 3);
        assert_eq!(o(2.0).atoms_for(6).unwrap(), 2);
        assert_eq!(o(9.0).atoms_for(6).unwrap(), 6);
        assert!(o(2.5).atoms_for(6).is_err());
        assert!(o(0.0).atoms_for(6).is_err());
    }

    #[test]
    fn settings_parse_and_reject() {
        let mut s = BTreeMap::new();
        s.insert("roles".to_string(), "q+k+v+o".to_string());
        s.insert("atoms".to_string(), "3".to_string());
        s.insert("cut".to_string(), "drift".to_string());
        let o = DictionaryOptions::from_settings(&s).unwrap();
        assert_eq!(o.roles, vec!["q", "k", "v", "o"]);
        assert_eq!(o.cut, Cut::Drift);
        s.insert("bogus".to_string(), "1".to_string());
        assert!(DictionaryOptions::from_settings(&s).unwrap_err().contains("unknown option 'bogus'"));
    }

    mod on_graphs {
        use super::super::*;
        use crate::analysis::blocks::tests::synthetic;
        use sharc_interp::Interpreter;
        use sharc_ir::{Evaluator, text::parse};

        fn input(seed: u64) -> Vec<Value> {
            let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let v: Vec<f32> = (0..2 * 3 * 4)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
                })
                .collect();
            vec![Value::Tensor(Tensor::from_vec(&[2, 3, 4], v))]
        }

        fn out(g: &Graph, x: &[Value]) -> Vec<f32> {
            let o = Interpreter::new().evaluate(g, x).unwrap();
            floats(o[0].as_tensor().unwrap()).unwrap()
        }

        fn apply(
            g: &mut Graph,
            o: DictionaryOptions,
            calib: Option<&[Vec<Value>]>,
        ) -> Result<DictionaryReport, PassError> {
            let ev = Interpreter::new();
            let mut cx = PassContext { evaluator: Some(&ev), calibration: calib, ..Default::default() };
            let mut p = Dictionary::new(o);
            p.run(g, &mut cx)?;
            sharc_ir::infer_shapes(g).unwrap();
            sharc_ir::verify(g).unwrap();
            Ok(p.report.unwrap())
        }

        fn opts(roles: &[&str], atoms: f64) -> DictionaryOptions {
            DictionaryOptions { roles: roles.iter().map(|r| r.to_string()).collect(), atoms, ..Default::default() }
        }

        #[test]
        fn full_atoms_give_the_outputs_back_and_fewer_lose_energy() {
            let g0 = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
            let x = input(1);
            let mut g = g0.clone();
            let r = apply(&mut g, opts(&["q", "k", "v", "o"], 4.0), None).unwrap();
            let diff = out(&g0, &x).iter().zip(out(&g, &x)).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(diff < 1e-5, "{diff}");
            assert!(r.parts.iter().all(|p| (p.explained_energy - 1.0).abs() < 1e-9));
            let mut g = g0.clone();
            let r = apply(&mut g, opts(&["q", "k"], 2.0), None).unwrap();
            assert!(r.parts.iter().all(|p| p.atoms == 2 && p.explained_energy < 1.0));
            // q and k: 4 layers × 16 → 2 atoms × 16 + 4 × 2 coefficients each.
            assert_eq!(r.params_before - r.params_after, 2 * (64 - (32 + 8)));
        }

        #[test]
        fn fold_constants_does_not_fold_the_derived_weights_back() {
            // Width 8: each derived weight is 256 bytes, above the size
            // fold-constants always folds, so only its byte rule decides.
            let mut g = parse(&synthetic(&["Relu"; 4], 8, 8)).unwrap();
            apply(&mut g, opts(&["q", "v"], 2.0), None).unwrap();
            let before = g.stats().unique_params;
            let mut fold = crate::standard::FoldConstants::default();
            fold.run(&mut g, &mut PassContext::default()).unwrap();
            assert_eq!(g.stats().unique_params, before);
            assert!(sharc_ir::print(&g).contains("dictionary.q.l3"));
        }

        #[test]
        fn a_whitened_residual_reduces_the_error() {
            let g0 = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
            let calib = vec![input(2), input(3)];
            let mut plain = g0.clone();
            let a = apply(&mut plain, opts(&["q", "k", "v"], 1.0), Some(&calib)).unwrap();
            let mut refined = g0.clone();
            let o = DictionaryOptions { residual_rank: 2, ..opts(&["q", "k", "v"], 1.0) };
            let b = apply(&mut refined, o, Some(&calib)).unwrap();
            assert!(b.parts.iter().all(|p| p.whitened));
            assert!(b.output_error < a.output_error, "{} vs {}", b.output_error, a.output_error);
            // The SVD baseline at the same budget runs and reports.
            let mut svd = g0.clone();
            let c =
                apply(&mut svd, DictionaryOptions { method: Method::Svd, ..opts(&["q", "k", "v"], 2.0) }, Some(&calib))
                    .unwrap();
            assert!(c.parts.iter().all(|p| p.atoms >= 1));
            assert!(c.to_text().contains("per") || c.to_text().contains("svd"));
        }

        #[test]
        fn refuses_unknown_roles_and_models_without_blocks() {
            let mut g = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
            let e = apply(&mut g, opts(&["gate"], 2.0), None).unwrap_err();
            assert!(matches!(e, PassError::Refused { .. }) && e.to_string().contains("linear roles are"), "{e}");
            let mut one = parse(&synthetic(&["Relu"], 4, 8)).unwrap();
            let e = apply(&mut one, opts(&["q"], 1.0), None).unwrap_err();
            assert!(matches!(e, PassError::Refused { .. }), "{e}");
            let mut g = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
            let o = DictionaryOptions { cut: Cut::Drift, ..opts(&["q"], 1.0) };
            let e = Dictionary::new(o).run(&mut g, &mut PassContext::default()).unwrap_err();
            assert!(matches!(e, PassError::Missing { .. }), "{e}");
        }

        #[test]
        fn snapshot_of_two_groups_of_one_atom_for_q_and_k() {
            let mut g = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
            apply(&mut g, DictionaryOptions { groups: 2, ..opts(&["q", "k"], 1.0) }, None).unwrap();
            insta::assert_snapshot!(sharc_ir::print(&g));
        }
    }
}

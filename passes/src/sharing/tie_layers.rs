//! `tie-layers`: Relaxed Recursive Transformers (Bae et al., ICLR 2025),
//! applied to a trained model without training.
//!
//! **Tying.** The model's `L` repeated blocks (found by
//! [`find_blocks`](crate::analysis::blocks::find_blocks)) become `K` unique
//! blocks. With `pattern=cycle` layer ℓ (1-based) uses shared block
//! `((ℓ−1) mod K)+1`, so the stack loops `L/K` times; with `pattern=sequence`
//! it uses `⌊(ℓ−1)·K/L⌋+1`, so neighbours share. Every weight of a block is
//! tied: linear weights, their biases and the norm weights.
//!
//! **Initialising the shared weights W′_k** (`init=`):
//! - `stepwise`: K source layers at fixed intervals including the first and
//!   the last, `idx_k = 1+⌊(k−1)(L−1)/(K−1)⌋` ({1,3,6} for L=6, K=3);
//! - `average`: the mean of the layers tied to slot k;
//! - `lower`: the first K layers.
//!
//! **Relaxation** (`rank=`). Every weight at every depth gets its own
//! correction of its residual `R_ℓ = W_ℓ − W′_slot(ℓ)`:
//! - matrices (rank ≥ 2; convolution kernels are viewed as
//!   `[out, in·k…]`): the rank-r truncated SVD `U_rΣ_rV_rᵀ` gives the LoRA
//!   factors `B_ℓ = U_rΣ_r`, `A_ℓ = V_rᵀ`, and the graph computes
//!   `W_eff = W′ + B_ℓ·A_ℓ` as ops on weights (a `MatMul` and an `Add`);
//! - vectors (biases, norm gains and shifts) are `d×1` matrices whose rank is
//!   at most 1, so any rank ≥ 1 stores their residual exactly
//!   (`W_eff = W′ + δ_ℓ`) and rank 0 ties them outright;
//! - a residual that is exactly zero gets no correction.
//!
//! `rank=0` gives the purely recursive model; `rank=full` reproduces the
//! original outputs (Pareto continuity) at more parameters than the original.
//! `role-ranks` sets the rank of single roles (`{ffn-out=64,k=8,bias=0}`): a
//! key names a role (`q`, `ffn-out`), a role suffix (`ffn-out` also matches
//! `expert3.ffn-out`) or a kind (`linear`, `bias`, `norm-gain`, `norm-bias`,
//! `other`); exact names win over suffixes, suffixes over kinds. The paper
//! keeps norms tied without relaxation; `role-ranks={norm-gain=0,norm-bias=0}`
//! does that.
//!
//! The SVD runs in `f64` (faer). The derived weights stay in the graph, so the
//! exported model stores each shared weight once; constant folding must not
//! fold `W′ + B·A` back, since the result is larger than its inputs.

use crate::analysis::blocks::{BlockAnalysis, RoleKind, find_blocks};
use crate::{Pass, PassContext, PassError, PassOutcome};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sharc_ir::{BinaryOp, DType, Graph, NodeId, Op, Tensor, Type, ValueInfo, ValueRef, Weight, WeightId};
use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// The pass name.
pub const NAME: &str = "tie-layers";

/// How layers map to shared blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// Layer ℓ uses block ((ℓ−1) mod K)+1: the stack is looped.
    Cycle,
    /// Layer ℓ uses block ⌊(ℓ−1)·K/L⌋+1: neighbouring layers share.
    Sequence,
}

/// How the shared weights are initialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// K source layers at fixed intervals, first and last included.
    Stepwise,
    /// The mean of the layers tied to each shared block.
    Average,
    /// The first K layers.
    Lower,
}

/// A LoRA rank: a number, or `full` (the residual's full rank, exact).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rank {
    /// At most this many singular values.
    Value(usize),
    /// All of them.
    Full,
}

impl fmt::Display for Rank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rank::Value(r) => write!(f, "{r}"),
            Rank::Full => f.write_str("full"),
        }
    }
}

impl std::str::FromStr for Rank {
    type Err = String;
    fn from_str(s: &str) -> Result<Rank, String> {
        match s.trim() {
            "full" => Ok(Rank::Full),
            t => t.parse::<usize>().map(Rank::Value).map_err(|_| format!("'{s}' is not a rank (a number or `full`)")),
        }
    }
}

impl Serialize for Rank {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Rank::Value(r) => s.serialize_u64(*r as u64),
            Rank::Full => s.serialize_str("full"),
        }
    }
}

impl<'de> Deserialize<'de> for Rank {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rank, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Rank;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rank: a non-negative integer or `full`")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Rank, E> {
                Ok(Rank::Value(v as usize))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Rank, E> {
                usize::try_from(v).map(Rank::Value).map_err(|_| E::custom(format!("a rank cannot be {v}")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Rank, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Options of `tie-layers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct TieLayersOptions {
    /// K, the number of unique blocks left (`groups` is accepted too).
    #[serde(alias = "groups")]
    pub blocks: usize,
    /// How layers map to shared blocks.
    pub pattern: Pattern,
    /// How the shared weights are initialised.
    pub init: Init,
    /// LoRA rank of the per-depth corrections (0: purely recursive).
    pub rank: Rank,
    /// Ranks of single roles or kinds, overriding `rank`.
    pub role_ranks: BTreeMap<String, Rank>,
}

impl Default for TieLayersOptions {
    fn default() -> TieLayersOptions {
        TieLayersOptions {
            blocks: 2,
            pattern: Pattern::Cycle,
            init: Init::Average,
            rank: Rank::Value(0),
            role_ranks: BTreeMap::new(),
        }
    }
}

impl TieLayersOptions {
    /// Options from `key=value` settings (`sharc compress --set`, presets):
    /// `blocks` (or `groups`), `pattern`, `init`, `rank` and `role-ranks`
    /// (`q=8,ffn-out=64`, or `q:8;ffn-out:64`). Unknown keys are errors.
    pub fn from_settings(settings: &BTreeMap<String, String>) -> Result<TieLayersOptions, String> {
        let mut o = TieLayersOptions::default();
        for (k, v) in settings {
            let v = v.trim();
            match k.as_str() {
                "blocks" | "groups" => {
                    o.blocks = v.parse().map_err(|_| format!("{k}={v}: expected a number of blocks"))?;
                }
                "pattern" => {
                    o.pattern = match v {
                        "cycle" => Pattern::Cycle,
                        "sequence" => Pattern::Sequence,
                        _ => return Err(format!("pattern={v}: expected cycle or sequence")),
                    }
                }
                "init" => {
                    o.init = match v {
                        "stepwise" => Init::Stepwise,
                        "average" => Init::Average,
                        "lower" => Init::Lower,
                        _ => return Err(format!("init={v}: expected stepwise, average or lower")),
                    }
                }
                "rank" => o.rank = v.parse().map_err(|e| format!("rank: {e}"))?,
                "role-ranks" | "role_ranks" => {
                    for item in v.split([',', ';']).map(str::trim).filter(|s| !s.is_empty()) {
                        let (role, r) = item
                            .split_once(['=', ':'])
                            .ok_or_else(|| format!("role-ranks: '{item}' is not role=rank"))?;
                        o.role_ranks
                            .insert(role.trim().to_string(), r.parse().map_err(|e| format!("role-ranks: {e}"))?);
                    }
                }
                _ => {
                    return Err(format!(
                        "tie has no setting '{k}' (settings: blocks, pattern, init, rank, role-ranks)"
                    ));
                }
            }
        }
        Ok(o)
    }

    /// The rank for a role (see the [module docs](self)).
    pub fn rank_for(&self, role: &str, kind: RoleKind) -> Rank {
        if let Some(r) = self.role_ranks.get(role) {
            return *r;
        }
        if let Some((_, r)) =
            self.role_ranks.iter().filter(|(k, _)| role.ends_with(&format!(".{k}"))).max_by_key(|(k, _)| k.len())
        {
            return *r;
        }
        self.role_ranks.get(kind.name()).copied().unwrap_or(self.rank)
    }
}

/// The `tie-layers` pass. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct TieLayers {
    /// Its options.
    pub options: TieLayersOptions,
    /// What the last run did (for reports).
    pub summary: Option<TieSummary>,
}

impl TieLayers {
    /// The pass with these options.
    pub fn new(options: TieLayersOptions) -> TieLayers {
        TieLayers { options, summary: None }
    }
}

impl Pass for TieLayers {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&mut self, graph: &mut Graph, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let s = tie_layers(graph, &self.options)?;
        cx.count(NAME, "layers", s.layers as i64);
        cx.count(NAME, "unique-blocks", s.unique_blocks as i64);
        cx.count(NAME, "lora-params", s.correction_params as i64);
        cx.count(NAME, "params-removed", s.params_before as i64 - s.params_after as i64);
        cx.reports.insert(NAME.to_string(), s.to_string());
        self.summary = Some(s);
        Ok(PassOutcome::Changed)
    }
}

/// What `tie-layers` did to one role.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoleSummary {
    /// The role (`q`, `ffn-out`, `norm1.gain`).
    pub role: String,
    /// Its kind (`linear`, `bias`, ...).
    pub kind: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// The rank asked for.
    pub rank: String,
    /// Per layer: the rank actually stored (0 = tied outright or no
    /// residual; vectors store 1 for an exact residual).
    pub stored_ranks: Vec<usize>,
    /// Parameters of the corrections.
    pub correction_params: u64,
    /// Per layer: the relative Frobenius norm of the residual left after the
    /// correction, ‖R − BA‖/‖W‖ (0 = exact).
    pub residual_error: Vec<f64>,
}

/// What `tie-layers` did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TieSummary {
    /// L, the number of blocks found.
    pub layers: usize,
    /// K, the unique blocks left.
    pub unique_blocks: usize,
    /// Per layer (0-based): the shared block it uses (0-based).
    pub slots: Vec<usize>,
    /// Per shared block: the layers it was initialised from (0-based).
    pub sources: Vec<Vec<usize>>,
    /// The options, as given.
    pub options: TieLayersOptions,
    /// Per role.
    pub roles: Vec<RoleSummary>,
    /// Parameters of the shared weights.
    pub shared_params: u64,
    /// Parameters of all corrections.
    pub correction_params: u64,
    /// Unique parameters of the model before and after.
    pub params_before: u64,
    /// Unique parameters after.
    pub params_after: u64,
    /// Names of the residual-stream values at the block boundaries (every
    /// block's input, then the last output); unchanged by the pass, so they
    /// name the same points in the original and the tied model.
    pub boundaries: Vec<String>,
}

impl fmt::Display for TieSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "tie-layers: {} blocks -> {} shared ({:?} pattern, {:?} init, rank {})",
            self.layers, self.unique_blocks, o.pattern, o.init, o.rank
        )?;
        let slots: Vec<String> = self.slots.iter().map(|s| (s + 1).to_string()).collect();
        writeln!(f, "  layer -> shared block: {}", slots.join(" "))?;
        for (k, src) in self.sources.iter().enumerate() {
            let s: Vec<String> = src.iter().map(|l| (l + 1).to_string()).collect();
            writeln!(f, "  shared block {} from layer(s) {}", k + 1, s.join(", "))?;
        }
        writeln!(
            f,
            "  shared weights {} parameters, corrections {} parameters; unique parameters {} -> {}",
            self.shared_params, self.correction_params, self.params_before, self.params_after
        )?;
        for r in &self.roles {
            let worst = r.residual_error.iter().cloned().fold(0.0f64, f64::max);
            writeln!(
                f,
                "  {:<16} {:<9} rank {:<5} stored {:?} (+{} params), worst residual {:.3e}",
                r.role, r.kind, r.rank, r.stored_ranks, r.correction_params, worst
            )?;
        }
        Ok(())
    }
}

/// The shared block of each layer (0-based) under a pattern.
pub fn slots(layers: usize, k: usize, pattern: Pattern) -> Vec<usize> {
    (0..layers)
        .map(|l| match pattern {
            Pattern::Cycle => l % k,
            Pattern::Sequence => l * k / layers,
        })
        .collect()
}

/// The layers each shared block is initialised from (0-based).
pub fn sources(layers: usize, k: usize, slots: &[usize], init: Init) -> Vec<Vec<usize>> {
    match init {
        Init::Stepwise => (0..k).map(|i| vec![if k == 1 { 0 } else { i * (layers - 1) / (k - 1) }]).collect(),
        Init::Lower => (0..k).map(|i| vec![i]).collect(),
        Init::Average => (0..k).map(|i| (0..layers).filter(|l| slots[*l] == i).collect()).collect(),
    }
}

fn refused(message: impl Into<String>) -> PassError {
    PassError::Refused { pass: NAME.to_string(), message: message.into() }
}

fn failed(message: impl Into<String>) -> PassError {
    PassError::Failed { pass: NAME.to_string(), message: message.into() }
}

/// A weight's data as `f64`, for f32 and f64 weights.
fn weight_f64(g: &Graph, id: WeightId) -> Result<Vec<f64>, PassError> {
    let w = g.weights.get(id).ok_or_else(|| failed(format!("weight {id} is missing from the store")))?;
    w.tensor().to_f64_vec().ok_or_else(|| failed(format!("weight '{}' ({}) has no numeric data", w.name, w.dtype)))
}

/// Builds a tensor of `dtype` (f32 or f64) from `f64` values.
fn tensor_of(dtype: DType, shape: &[usize], v: Vec<f64>) -> Tensor {
    match dtype {
        DType::F64 => Tensor::from_vec(shape, v),
        _ => Tensor::from_vec(shape, v.into_iter().map(|x| x as f32).collect::<Vec<f32>>()),
    }
}

/// A correction of one layer's weight.
enum Correction {
    None,
    Lora { b: Vec<f64>, a: Vec<f64>, m: usize, n: usize, r: usize },
    Delta(Vec<f64>),
}

/// Truncated SVD of the `m×n` row-major residual: `B = U_rΣ_r` (`m×r`) and
/// `A = V_rᵀ` (`r×n`), with `r` capped at `min(m, n)`. Returns the factors
/// and the Frobenius norm of what is left out.
fn lora_factors(res: &[f64], m: usize, n: usize, rank: usize) -> Result<(Vec<f64>, Vec<f64>, usize, f64), String> {
    let mat = faer::Mat::<f64>::from_fn(m, n, |i, j| res[i * n + j]);
    let svd = mat.thin_svd().map_err(|e| format!("the SVD did not converge: {e:?}"))?;
    let (u, s, v) = (svd.U(), svd.S().column_vector(), svd.V());
    let full = m.min(n);
    let r = rank.min(full);
    let mut b = vec![0.0f64; m * r];
    let mut a = vec![0.0f64; r * n];
    for k in 0..r {
        let sk = s[k];
        for i in 0..m {
            b[i * r + k] = u[(i, k)] * sk;
        }
        for j in 0..n {
            a[k * n + j] = v[(j, k)];
        }
    }
    let left: f64 = (r..full).map(|k| s[k] * s[k]).sum::<f64>().sqrt();
    Ok((b, a, r, left))
}

/// Applies `tie-layers` to `g`. See the [module docs](self).
pub fn tie_layers(g: &mut Graph, opts: &TieLayersOptions) -> Result<TieSummary, PassError> {
    let analysis = find_blocks(g).map_err(|e| refused(e.to_string()))?;
    tie_with(g, &analysis, opts)
}

/// Applies `tie-layers` with an analysis already made of `g`.
pub fn tie_with(g: &mut Graph, an: &BlockAnalysis, opts: &TieLayersOptions) -> Result<TieSummary, PassError> {
    let layers = an.blocks.len();
    let k = opts.blocks;
    if k == 0 || k >= layers {
        return Err(refused(format!(
            "blocks={k}: the model has {layers} repeated blocks, so the number of shared blocks must be between 1 and {}",
            layers - 1
        )));
    }
    let slot = slots(layers, k, opts.pattern);
    let src = sources(layers, k, &slot, opts.init);
    let params_before = g.stats().unique_params;
    let mut roles = Vec::new();
    let mut orphans: HashSet<NodeId> = HashSet::new();
    let (mut shared_params, mut correction_params) = (0u64, 0u64);
    let mut counted_shared: HashSet<WeightId> = HashSet::new();
    for (ri, role) in an.roles.iter().enumerate() {
        let ids: Vec<WeightId> = an.blocks.iter().map(|b| b.weights[ri].id).collect();
        if !matches!(role.dtype, DType::F32 | DType::F64) {
            if ids.iter().all(|i| *i == ids[0]) {
                continue;
            }
            return Err(refused(format!(
                "role '{}' holds {} weights; tie-layers ties f32 and f64 weights only",
                role.name, role.dtype
            )));
        }
        let data: Vec<Vec<f64>> = ids.iter().map(|&id| weight_f64(g, id)).collect::<Result<_, _>>()?;
        let numel = data[0].len();
        let (m, n) = match role.shape.as_slice() {
            [] => (1, 1),
            [d] => (*d, 1),
            [d, rest @ ..] => (*d, rest.iter().product()),
        };
        let matrix = role.shape.len() >= 2;
        // The shared weights: reuse a source layer's weight when it is one
        // layer's exactly (stepwise, lower), average otherwise.
        let mut shared: Vec<(WeightId, Vec<f64>)> = Vec::new();
        for (s, from) in src.iter().enumerate() {
            if from.len() == 1 || from.iter().all(|l| ids[*l] == ids[from[0]]) {
                shared.push((ids[from[0]], data[from[0]].clone()));
            } else {
                let mut mean = vec![0.0f64; numel];
                for l in from {
                    for (acc, x) in mean.iter_mut().zip(&data[*l]) {
                        *acc += x;
                    }
                }
                mean.iter_mut().for_each(|x| *x /= from.len() as f64);
                let w = Weight::from_tensor(
                    format!("tied{}.{}", s + 1, role.name),
                    tensor_of(role.dtype, &role.shape, mean),
                );
                let id = g.weights.add_unique(w);
                // Store what the graph will compute with, so residuals are
                // taken against the rounded shared weight.
                let stored = weight_f64(g, id)?;
                shared.push((id, stored));
            }
        }
        let rank = opts.rank_for(&role.name, role.kind);
        let mut stored_ranks = Vec::new();
        let mut residual_error = Vec::new();
        let mut role_params = 0u64;
        for (l, block) in an.blocks.iter().enumerate() {
            let (sid, sdata) = &shared[slot[l]];
            let res: Vec<f64> = data[l].iter().zip(sdata).map(|(w, s)| w - s).collect();
            let wnorm = data[l].iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
            let rnorm = res.iter().map(|x| x * x).sum::<f64>().sqrt();
            let corr = if rnorm == 0.0 || rank == Rank::Value(0) {
                residual_error.push(rnorm / wnorm);
                Correction::None
            } else if matrix {
                let r = match rank {
                    Rank::Full => m.min(n),
                    Rank::Value(r) => r,
                };
                let (b, a, r, left) = lora_factors(&res, m, n, r)
                    .map_err(|e| failed(format!("role '{}' of block {l}: {e}", role.name)))?;
                residual_error.push(left / wnorm);
                Correction::Lora { b, a, m, n, r }
            } else {
                residual_error.push(0.0);
                Correction::Delta(res)
            };
            stored_ranks.push(match &corr {
                Correction::None => 0,
                Correction::Lora { r, .. } => *r,
                Correction::Delta(_) => 1,
            });
            let value = build_effective(g, *sid, &role.name, &role.shape, role.dtype, l, corr, &mut role_params)?;
            for &(node, port) in &block.weights[ri].uses {
                if let Some(old) = g.node_input(node, port) {
                    orphans.insert(old.node);
                }
                g.set_node_input(node, port, Some(value));
            }
        }
        for (sid, _) in &shared {
            if counted_shared.insert(*sid) {
                shared_params += g.weights.get(*sid).map_or(0, |w| w.num_elements());
            }
        }
        correction_params += role_params;
        roles.push(RoleSummary {
            role: role.name.clone(),
            kind: role.kind.name().to_string(),
            shape: role.shape.clone(),
            rank: rank.to_string(),
            stored_ranks,
            correction_params: role_params,
            residual_error,
        });
    }
    // Weight nodes the blocks no longer read, and weights no node reads.
    let mut orphans: Vec<NodeId> = orphans.into_iter().collect();
    orphans.sort();
    for n in orphans {
        if g.contains(n) && g.successors(n).is_empty() && !g.outputs().iter().any(|o| o.value.node == n) {
            g.remove_node(n);
        }
    }
    g.remove_unused_weights();
    let names = |v: ValueRef| g.value_info(v).name.clone();
    let boundaries = an.boundaries().into_iter().map(names).collect();
    Ok(TieSummary {
        layers,
        unique_blocks: k,
        slots: slot,
        sources: src,
        options: opts.clone(),
        roles,
        shared_params,
        correction_params,
        params_before,
        params_after: g.stats().unique_params,
        boundaries,
    })
}

/// Adds the nodes computing layer `l`'s effective weight for a role and
/// returns that value: the shared weight itself, `W′ + B·A`, or `W′ + δ`.
#[allow(clippy::too_many_arguments)]
fn build_effective(
    g: &mut Graph,
    shared: WeightId,
    role: &str,
    shape: &[usize],
    dtype: DType,
    l: usize,
    corr: Correction,
    params: &mut u64,
) -> Result<ValueRef, PassError> {
    let ty = |s: &[usize]| Type::tensor(dtype, sharc_ir::Shape::fixed(s));
    let base = g.weight_value(shared);
    let node = |g: &mut Graph, op: Op, ins: &[ValueRef], hint: &str, out: &[usize]| -> ValueRef {
        let name = g.fresh_name(hint);
        let ins: Vec<Option<ValueRef>> = ins.iter().copied().map(Some).collect();
        let id = g.add_node(op, "", &ins, vec![ValueInfo::new(name, ty(out))]);
        ValueRef::new(id, 0)
    };
    match corr {
        Correction::None => Ok(base),
        Correction::Delta(d) => {
            *params += d.len() as u64;
            let dw =
                g.add_weight(Weight::from_tensor(format!("layer{}.{role}.delta", l + 1), tensor_of(dtype, shape, d)));
            Ok(node(g, Op::Binary(BinaryOp::Add), &[base, dw], &format!("layer{}.{role}.eff", l + 1), shape))
        }
        Correction::Lora { b, a, m, n, r } => {
            *params += (b.len() + a.len()) as u64;
            let bw = g
                .add_weight(Weight::from_tensor(format!("layer{}.{role}.lora_b", l + 1), tensor_of(dtype, &[m, r], b)));
            let aw = g
                .add_weight(Weight::from_tensor(format!("layer{}.{role}.lora_a", l + 1), tensor_of(dtype, &[r, n], a)));
            let mut ba = node(g, Op::MatMul, &[bw, aw], &format!("layer{}.{role}.lora", l + 1), &[m, n]);
            if shape.len() != 2 {
                let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                let target = g.add_constant("", Tensor::from_vec(&[dims.len()], dims));
                ba = node(
                    g,
                    Op::Reshape(sharc_ir::op::Reshape { allowzero: false }),
                    &[ba, target],
                    &format!("layer{}.{role}.lora_shaped", l + 1),
                    shape,
                );
            }
            Ok(node(g, Op::Binary(BinaryOp::Add), &[base, ba], &format!("layer{}.{role}.eff", l + 1), shape))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::blocks::tests::synthetic;
    use sharc_interp::Interpreter;
    use sharc_ir::text::{parse, print};
    use sharc_ir::{Evaluator, Value};

    fn opts(blocks: usize, init: Init, rank: Rank) -> TieLayersOptions {
        TieLayersOptions { blocks, init, rank, ..Default::default() }
    }

    fn input(d: usize) -> Vec<Value> {
        let v: Vec<f32> = (0..3 * d).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
        vec![Value::Tensor(Tensor::from_vec(&[1, 3, d], v))]
    }

    fn run(g: &Graph, d: usize) -> Vec<f64> {
        let out = Interpreter::new().evaluate(g, &input(d)).unwrap();
        out[0].as_tensor().unwrap().to_f64_vec().unwrap()
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    #[test]
    fn slots_and_sources_follow_the_paper() {
        assert_eq!(slots(6, 3, Pattern::Cycle), [0, 1, 2, 0, 1, 2]);
        assert_eq!(slots(6, 3, Pattern::Sequence), [0, 0, 1, 1, 2, 2]);
        assert_eq!(slots(6, 2, Pattern::Cycle), [0, 1, 0, 1, 0, 1]);
        let s = slots(6, 3, Pattern::Cycle);
        // Stepwise for L=6, K=3 is {1, 3, 6} (1-based).
        assert_eq!(sources(6, 3, &s, Init::Stepwise), [vec![0], vec![2], vec![5]]);
        assert_eq!(sources(6, 3, &s, Init::Lower), [vec![0], vec![1], vec![2]]);
        assert_eq!(sources(6, 3, &s, Init::Average), [vec![0, 3], vec![1, 4], vec![2, 5]]);
        assert_eq!(sources(6, 1, &slots(6, 1, Pattern::Cycle), Init::Stepwise), [vec![0]]);
    }

    #[test]
    fn full_rank_reproduces_the_original() {
        let src = synthetic(&["Relu"; 4], 8, 16);
        let g0 = parse(&src).unwrap();
        let want = run(&g0, 8);
        for (init, pattern) in
            [(Init::Average, Pattern::Cycle), (Init::Stepwise, Pattern::Cycle), (Init::Lower, Pattern::Sequence)]
        {
            let mut g = g0.clone();
            let o = TieLayersOptions { pattern, ..opts(2, init, Rank::Full) };
            let s = tie_layers(&mut g, &o).unwrap();
            sharc_ir::verify(&g).unwrap();
            let err = max_diff(&run(&g, 8), &want);
            assert!(err <= 1e-4, "{init:?}/{pattern:?}: max error {err}");
            assert!(s.roles.iter().all(|r| r.residual_error.iter().all(|e| *e < 1e-12)), "{s}");
        }
    }

    #[test]
    fn rank_zero_is_purely_recursive() {
        let g0 = parse(&synthetic(&["Relu"; 4], 8, 16)).unwrap();
        let mut g = g0.clone();
        let s = tie_layers(&mut g, &opts(2, Init::Average, Rank::Value(0))).unwrap();
        assert_eq!(s.correction_params, 0);
        // Two shared blocks of 12 weights; the final norm stays.
        let per_block = g0.stats().unique_params - 16;
        assert_eq!(s.params_before, g0.stats().unique_params);
        assert_eq!(s.params_after, per_block / 4 * 2 + 16);
        assert_eq!(g.stats().unique_params, s.params_after);
        // Blocks 0 and 2 read the same stored weight for `q`.
        let an = find_blocks(&g).unwrap();
        let q = an.role_index("q").unwrap();
        assert_eq!(an.len(), 4);
        assert_eq!(an.blocks[0].weights[q].id, an.blocks[2].weights[q].id);
        assert_ne!(an.blocks[0].weights[q].id, an.blocks[1].weights[q].id);
        // The outputs differ from the original's, as they must.
        assert!(max_diff(&run(&g, 8), &run(&g0, 8)) > 1e-3);
    }

    #[test]
    fn lora_error_shrinks_with_rank() {
        let g0 = parse(&synthetic(&["Relu"; 4], 8, 16)).unwrap();
        let want = run(&g0, 8);
        let mut last = f64::INFINITY;
        for r in [0, 2, 4, 8] {
            let mut g = g0.clone();
            let s = tie_layers(&mut g, &opts(2, Init::Average, Rank::Value(r))).unwrap();
            let q = s.roles.iter().find(|x| x.role == "q").unwrap();
            assert!(q.stored_ranks.iter().all(|&k| k == r.min(8)), "{q:?}");
            let worst = q.residual_error.iter().cloned().fold(0.0, f64::max);
            assert!(worst < last || worst == 0.0, "rank {r}: residual {worst} after {last}");
            last = worst;
            // Vectors are exact as soon as the rank is 1 or more.
            let bias = s.roles.iter().find(|x| x.role == "o.bias").unwrap();
            assert_eq!(bias.stored_ranks, vec![(r > 0) as usize; 4]);
            if r == 8 {
                assert!(max_diff(&run(&g, 8), &want) <= 1e-4);
            }
        }
    }

    #[test]
    fn stepwise_reuses_the_source_weights_and_adds_no_correction_there() {
        let mut g = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
        let s = tie_layers(&mut g, &opts(2, Init::Stepwise, Rank::Full)).unwrap();
        // Sources for L=4, K=2: layers 1 and 4; cycle slots 0 1 0 1.
        assert_eq!(s.sources, [vec![0], vec![3]]);
        let q = s.roles.iter().find(|x| x.role == "q").unwrap();
        assert_eq!(q.stored_ranks, [0, 4, 4, 0]);
        assert!(g.weights.find("l0.wq").is_some() && g.weights.find("l3.wq").is_some());
        assert!(g.weights.find("l1.wq").is_none());
    }

    #[test]
    fn role_ranks_pick_the_most_specific_key() {
        let mut o = opts(2, Init::Average, Rank::Value(4));
        o.role_ranks.insert("ffn-out".into(), Rank::Value(16));
        o.role_ranks.insert("linear".into(), Rank::Value(2));
        o.role_ranks.insert("expert1.ffn-out".into(), Rank::Full);
        o.role_ranks.insert("norm-gain".into(), Rank::Value(0));
        assert_eq!(o.rank_for("ffn-out", RoleKind::Linear), Rank::Value(16));
        assert_eq!(o.rank_for("expert0.ffn-out", RoleKind::Linear), Rank::Value(16));
        assert_eq!(o.rank_for("expert1.ffn-out", RoleKind::Linear), Rank::Full);
        assert_eq!(o.rank_for("q", RoleKind::Linear), Rank::Value(2));
        assert_eq!(o.rank_for("norm1.gain", RoleKind::NormGain), Rank::Value(0));
        assert_eq!(o.rank_for("o.bias", RoleKind::Bias), Rank::Value(4));
    }

    #[test]
    fn settings_parse_and_reject_nonsense() {
        let mut s = BTreeMap::new();
        s.insert("blocks".to_string(), "3".to_string());
        s.insert("init".to_string(), "stepwise".to_string());
        s.insert("rank".to_string(), "full".to_string());
        s.insert("role-ranks".to_string(), "q=8, ffn-out:64".to_string());
        let o = TieLayersOptions::from_settings(&s).unwrap();
        assert_eq!((o.blocks, o.init, o.rank), (3, Init::Stepwise, Rank::Full));
        assert_eq!(o.role_ranks["ffn-out"], Rank::Value(64));
        s.insert("rank".to_string(), "-1".to_string());
        assert!(TieLayersOptions::from_settings(&s).unwrap_err().contains("not a rank"));
        let mut bad = BTreeMap::new();
        bad.insert("colour".to_string(), "red".to_string());
        assert!(TieLayersOptions::from_settings(&bad).unwrap_err().contains("no setting 'colour'"));
        // Serde (for pipelines) accepts numbers and `full`.
        let o: TieLayersOptions =
            serde_json::from_str(r#"{"groups": 2, "rank": "full", "pattern": "sequence"}"#).unwrap();
        assert_eq!((o.blocks, o.rank, o.pattern), (2, Rank::Full, Pattern::Sequence));
        assert!(serde_json::from_str::<TieLayersOptions>(r#"{"rnak": 3}"#).is_err());
    }

    #[test]
    fn refuses_too_many_shared_blocks() {
        let mut g = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
        let e = tie_layers(&mut g, &opts(4, Init::Average, Rank::Value(0))).unwrap_err();
        assert!(matches!(e, PassError::Refused { .. }));
        assert!(e.to_string().contains("between 1 and 3"), "{e}");
    }

    #[test]
    fn the_pass_reports_what_it_did() {
        let mut g = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
        let mut pass = TieLayers::new(opts(2, Init::Average, Rank::Value(1)));
        let mut cx = PassContext::default();
        assert_eq!(pass.run(&mut g, &mut cx).unwrap(), PassOutcome::Changed);
        assert_eq!(cx.statistics[NAME]["layers"], 4);
        assert!(cx.reports[NAME].contains("4 blocks -> 2 shared"), "{}", cx.reports[NAME]);
        assert!(pass.summary.unwrap().correction_params > 0);
    }

    /// The printed IR with the content hashes of SVD factors masked: their
    /// last bits depend on the CPU's vector units.
    fn printed(g: &Graph) -> String {
        print(g)
            .lines()
            .map(|l| match (l.contains(".lora_"), l.find("// sha ")) {
                (true, Some(i)) => format!("{}// sha <svd>", &l[..i]),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn snapshot_tie_rank0_cycle_average() {
        let mut g = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
        tie_layers(&mut g, &opts(2, Init::Average, Rank::Value(0))).unwrap();
        insta::assert_snapshot!(printed(&g));
    }

    #[test]
    fn snapshot_tie_rank1_sequence_stepwise() {
        let mut g = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
        let o = TieLayersOptions { pattern: Pattern::Sequence, ..opts(2, Init::Stepwise, Rank::Value(1)) };
        tie_layers(&mut g, &o).unwrap();
        insta::assert_snapshot!(printed(&g));
    }

    #[test]
    fn snapshot_refusal_when_blocks_do_not_match() {
        let mut g = parse(&synthetic(&["Relu", "Sigmoid", "Tanh", "Erf"], 4, 8)).unwrap();
        let before = print(&g);
        let e = tie_layers(&mut g, &opts(2, Init::Average, Rank::Value(0))).unwrap_err();
        assert_eq!(print(&g), before, "a refused pass leaves the graph alone");
        insta::assert_snapshot!(e.to_string());
    }
}

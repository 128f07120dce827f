//! `crash`: CRaSh (EMNLP 2023, TsinghuaC3I/CRaSh) — layer clustering by
//! representation similarity, then sharing or removal.
//!
//! 1. **Representations.** Calibration data runs through the model; each
//!    block's output on the residual stream is pooled per sequence
//!    (`pooling=mean|mean-weighted|last|max`; the paper uses
//!    `mean-weighted`, position weights 1..T), giving `X_ℓ ∈ ℝ^{n×d}`.
//! 2. **Similarity** is linear CKA between every pair of layers.
//! 3. **Contiguous clustering.** From singletons, the adjacent pair of
//!    clusters whose boundary layers are most similar (CKA between the last
//!    layer of cluster `i` and the first of cluster `i+1`) is merged, until
//!    `clusters` remain. Ties merge the earlier pair. An undefined CKA (a
//!    layer without variance) never wins over a defined one.
//! 4. **Representatives.** Each cluster keeps `cluster[len/2]`.
//! 5. **`mode=share`**: the depth stays `L`; every position that is not a
//!    representative uses the weights of the *nearest* representative (ties
//!    go to the higher index), whole layers, norms included, so the model
//!    stores only `clusters` unique layers. **`mode=remove`**: the positions
//!    that are not representatives are removed.
//!
//! The pass needs an evaluator and calibration batches in its context.

use crate::analysis::blocks::find_blocks;
use crate::analysis::calibration::{CalibrationError, Pooling, Probe, Representations, for_each_batch, token_mask};
use crate::sharing::rewire::{bypass_blocks, remove_dead, share_weight};
use crate::{Pass, PassContext, PassError, PassOutcome};
use serde::{Deserialize, Serialize};
use sharc_ir::{Evaluator, Graph, Value, ValueRef};
use std::collections::BTreeSet;
use std::fmt;

/// The pass name.
pub const NAME: &str = "crash";

/// What happens to the layers that are not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// They use the nearest kept layer's weights; the depth stays.
    Share,
    /// They are removed.
    Remove,
}

/// Options of `crash`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct CrashOptions {
    /// Clusters (unique layers) to keep.
    pub clusters: usize,
    /// How each layer's hidden states are pooled per sequence.
    pub pooling: Pooling,
    /// Share the kept layers' weights, or remove the others.
    pub mode: Mode,
}

impl Default for CrashOptions {
    fn default() -> CrashOptions {
        CrashOptions { clusters: 3, pooling: Pooling::MeanWeighted, mode: Mode::Share }
    }
}

impl CrashOptions {
    /// Options from `key=value` settings: `clusters`, `pooling`, `mode`.
    pub fn from_settings(settings: &std::collections::BTreeMap<String, String>) -> Result<CrashOptions, String> {
        let mut o = CrashOptions::default();
        for (k, v) in settings {
            let v = v.trim();
            match k.as_str() {
                "clusters" | "blocks" => {
                    o.clusters = v.parse().map_err(|_| format!("{k}={v}: expected a number of clusters"))?
                }
                "pooling" => {
                    o.pooling = Pooling::parse(v)
                        .ok_or_else(|| format!("pooling={v}: expected mean, mean-weighted, last or max"))?
                }
                "mode" => {
                    o.mode = match v {
                        "share" => Mode::Share,
                        "remove" => Mode::Remove,
                        _ => return Err(format!("mode={v}: expected share or remove")),
                    }
                }
                _ => return Err(format!("crash has no setting '{k}' (settings: clusters, pooling, mode)")),
            }
        }
        Ok(o)
    }
}

/// The `crash` pass. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct Crash {
    /// Its options.
    pub options: CrashOptions,
    /// What the last run did.
    pub summary: Option<CrashSummary>,
}

impl Crash {
    /// The pass with these options.
    pub fn new(options: CrashOptions) -> Crash {
        Crash { options, summary: None }
    }
}

impl Pass for Crash {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&mut self, graph: &mut Graph, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let (ev, batches) = cx.measuring(NAME, "layer similarity")?;
        let s = crash(graph, &self.options, ev, batches)?;
        cx.count(NAME, "clusters", s.clusters.len() as i64);
        cx.count(NAME, "params-removed", s.params_before as i64 - s.params_after as i64);
        cx.reports.insert(NAME.to_string(), s.to_string());
        self.summary = Some(s);
        Ok(PassOutcome::Changed)
    }
}

/// What `crash` did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CrashSummary {
    /// L, the blocks found.
    pub layers: usize,
    /// The options, as given.
    pub options: CrashOptions,
    /// Linear CKA between block outputs (NaN where undefined).
    pub cka: Vec<Vec<f64>>,
    /// Sequences the CKA was measured on.
    pub samples: usize,
    /// The clusters of consecutive blocks (0-based).
    pub clusters: Vec<Vec<usize>>,
    /// The kept block of each cluster.
    pub kept: Vec<usize>,
    /// Per position: the block whose weights it uses (share mode), or
    /// `None` where it was removed (remove mode).
    pub uses: Vec<Option<usize>>,
    /// Unique parameters before.
    pub params_before: u64,
    /// Unique parameters after.
    pub params_after: u64,
    /// Every block's output name in the original model.
    pub block_outputs: Vec<String>,
    /// The name of block 0's input.
    pub stream_input: String,
}

impl CrashSummary {
    /// For each original block, the value of the compressed model that holds
    /// the stream at that depth (see
    /// [`FoldSummary::counterparts`](super::fold_blocks::FoldSummary::counterparts)).
    pub fn counterparts(&self) -> Vec<String> {
        let mut last = self.stream_input.clone();
        self.block_outputs
            .iter()
            .zip(&self.uses)
            .map(|(name, u)| {
                if u.is_some() {
                    last = name.clone();
                }
                last.clone()
            })
            .collect()
    }
}

impl fmt::Display for CrashSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "crash: {} blocks -> {} clusters ({:?} pooling over {} sequences, {:?} mode)",
            self.layers,
            self.clusters.len(),
            self.options.pooling,
            self.samples,
            self.options.mode
        )?;
        for (c, k) in self.clusters.iter().zip(&self.kept) {
            let members: Vec<String> = c.iter().map(|b| b.to_string()).collect();
            writeln!(f, "  cluster [{}] keeps block {k}", members.join(", "))?;
        }
        let uses: Vec<String> =
            self.uses.iter().map(|u| u.map_or_else(|| "-".to_string(), |b| b.to_string())).collect();
        writeln!(f, "  position -> block used: {}", uses.join(" "))?;
        writeln!(f, "  unique parameters {} -> {}", self.params_before, self.params_after)
    }
}

fn refused(message: impl Into<String>) -> PassError {
    PassError::Refused { pass: NAME.to_string(), message: message.into() }
}

/// CRaSh's contiguous merge clustering of `n = cka.len()` layers into
/// `target` clusters. See the [module docs](self).
pub fn cluster(cka: &[Vec<f64>], target: usize) -> Vec<Vec<usize>> {
    let mut clusters: Vec<Vec<usize>> = (0..cka.len()).map(|i| vec![i]).collect();
    while clusters.len() > target.max(1) {
        let mut best: Option<(usize, f64)> = None;
        for i in 0..clusters.len() - 1 {
            let (a, b) = (clusters[i][clusters[i].len() - 1], clusters[i + 1][0]);
            let s = cka[a][b];
            let s = if s.is_nan() { f64::NEG_INFINITY } else { s };
            if best.is_none_or(|(_, v)| s > v) {
                best = Some((i, s));
            }
        }
        let Some((i, _)) = best else { break };
        let next = clusters.remove(i + 1);
        clusters[i].extend(next);
    }
    clusters
}

/// The representative of each cluster: `cluster[len/2]`.
pub fn representatives(clusters: &[Vec<usize>]) -> Vec<usize> {
    clusters.iter().map(|c| c[c.len() / 2]).collect()
}

/// For each of `layers` positions, the nearest kept layer (ties to the
/// higher index).
pub fn nearest_kept(layers: usize, kept: &[usize]) -> Vec<usize> {
    (0..layers)
        .map(|p| kept.iter().copied().min_by_key(|&k| (k.abs_diff(p), std::cmp::Reverse(k))).unwrap_or(p))
        .collect()
}

/// Linear CKA between the block outputs `names` of `g` on `batches`.
fn layer_cka(
    ev: &dyn Evaluator,
    g: &Graph,
    outputs: &[ValueRef],
    batches: &[Vec<Value>],
    pooling: Pooling,
) -> Result<(Vec<Vec<f64>>, usize), CalibrationError> {
    let probe = Probe::new(g, outputs)?;
    let mut reps = Representations::new(outputs.len(), pooling);
    for_each_batch(ev, &probe, batches, "layer similarity", |_, batch, out| {
        reps.add(&out.probes, token_mask(g, batch).as_deref())
    })?;
    let m = reps.cka_matrix().map_err(CalibrationError::Data)?;
    Ok((m, reps.samples()))
}

/// Applies `crash` to `g`, measuring on `batches` through `ev`.
pub fn crash(
    g: &mut Graph,
    opts: &CrashOptions,
    ev: &dyn Evaluator,
    batches: &[Vec<Value>],
) -> Result<CrashSummary, PassError> {
    let an = find_blocks(g).map_err(|e| refused(e.to_string()))?;
    let layers = an.len();
    if opts.clusters == 0 || opts.clusters >= layers {
        return Err(refused(format!(
            "clusters={}: the model has {layers} repeated blocks, so the clusters must number between 1 and {}",
            opts.clusters,
            layers - 1
        )));
    }
    let outputs: Vec<ValueRef> = an.blocks.iter().map(|b| b.output).collect();
    let (cka, samples) = layer_cka(ev, g, &outputs, batches, opts.pooling)
        .map_err(|e| PassError::Failed { pass: NAME.to_string(), message: e.to_string() })?;
    let clusters = cluster(&cka, opts.clusters);
    let kept = representatives(&clusters);
    let params_before = g.stats().unique_params;
    let names: Vec<String> = outputs.iter().map(|&v| g.value_info(v).name.clone()).collect();
    let stream_input = g.value_info(an.blocks[0].input).name.clone();
    let uses: Vec<Option<usize>> = match opts.mode {
        Mode::Share => {
            let near = nearest_kept(layers, &kept);
            let mut dead = Vec::new();
            for (p, &k) in near.iter().enumerate() {
                if p == k {
                    continue;
                }
                for ri in 0..an.roles.len() {
                    dead.extend(share_weight(g, &an, p, ri, an.blocks[k].weights[ri].id));
                }
            }
            remove_dead(g, dead);
            near.into_iter().map(Some).collect()
        }
        Mode::Remove => {
            let kept_set: BTreeSet<usize> = kept.iter().copied().collect();
            let removed: BTreeSet<usize> = (0..layers).filter(|b| !kept_set.contains(b)).collect();
            let dead = bypass_blocks(g, &an, &removed);
            remove_dead(g, dead);
            (0..layers).map(|b| kept_set.contains(&b).then_some(b)).collect()
        }
    };
    Ok(CrashSummary {
        layers,
        options: opts.clone(),
        cka,
        samples,
        clusters,
        kept,
        uses,
        params_before,
        params_after: g.stats().unique_params,
        block_outputs: names,
        stream_input,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::blocks::tests::synthetic;
    use sharc_interp::Interpreter;
    use sharc_ir::Tensor;
    use sharc_ir::text::{parse, print};

    fn batches(d: usize) -> Vec<Vec<Value>> {
        (0..2)
            .map(|b| {
                let v: Vec<f32> = (0..3 * 5 * d).map(|i| (((i + 7 * b) * 37 % 23) as f32 - 11.0) / 7.0).collect();
                vec![Value::Tensor(Tensor::from_vec(&[3, 5, d], v))]
            })
            .collect()
    }

    fn m(rows: &[&[f64]]) -> Vec<Vec<f64>> {
        rows.iter().map(|r| r.to_vec()).collect()
    }

    #[test]
    fn clustering_merges_the_most_similar_boundaries() {
        // 5 layers; boundary similarities (i, i+1): .9 .5 .8 .7
        let mut c = vec![vec![1.0; 5]; 5];
        for (i, v) in [0.9, 0.5, 0.8, 0.7].iter().enumerate() {
            c[i][i + 1] = *v;
            c[i + 1][i] = *v;
        }
        assert_eq!(cluster(&c, 4), [vec![0, 1], vec![2], vec![3], vec![4]]);
        assert_eq!(cluster(&c, 3), [vec![0, 1], vec![2, 3], vec![4]]);
        // Next: cluster [2,3] and [4] join on cka[3][4] = .7 over cka[1][2] = .5.
        assert_eq!(cluster(&c, 2), [vec![0, 1], vec![2, 3, 4]]);
        assert_eq!(cluster(&c, 1), [vec![0, 1, 2, 3, 4]]);
        assert_eq!(representatives(&cluster(&c, 2)), [1, 3]);
        // The boundary uses the last layer of the left cluster, not its
        // first: with [0,1] formed, cka[1][2] = .1 decides, not cka[0][2] = .99.
        let c2 = m(&[&[1.0, 0.95, 0.99, 0.0], &[0.95, 1.0, 0.1, 0.0], &[0.99, 0.1, 1.0, 0.5], &[0.0, 0.0, 0.5, 1.0]]);
        assert_eq!(cluster(&c2, 2), [vec![0, 1], vec![2, 3]]);
        // NaN never wins.
        let c3 = m(&[&[1.0, f64::NAN, 0.0], &[f64::NAN, 1.0, 0.2], &[0.0, 0.2, 1.0]]);
        assert_eq!(cluster(&c3, 2), [vec![0], vec![1, 2]]);
    }

    #[test]
    fn nearest_kept_ties_go_to_the_higher_index() {
        assert_eq!(nearest_kept(6, &[1, 3]), [1, 1, 3, 3, 3, 3]);
        assert_eq!(nearest_kept(5, &[0, 4]), [0, 0, 4, 4, 4]);
        assert_eq!(nearest_kept(4, &[2]), [2, 2, 2, 2]);
    }

    #[test]
    fn share_mode_keeps_the_depth_with_fewer_unique_layers() {
        let g0 = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
        let mut g = g0.clone();
        let o = CrashOptions { clusters: 2, pooling: Pooling::MeanWeighted, mode: Mode::Share };
        let s = crash(&mut g, &o, &Interpreter::new(), &batches(4)).unwrap();
        sharc_ir::verify(&g).unwrap();
        assert_eq!(s.samples, 6);
        assert_eq!(s.clusters.len(), 2);
        let an = find_blocks(&g0).unwrap();
        let per_block = an.block_params(&g0, 0);
        assert_eq!(s.params_after, s.params_before - 2 * per_block);
        let an2 = find_blocks(&g).unwrap();
        assert_eq!(an2.len(), 4);
        for (p, u) in s.uses.iter().enumerate() {
            let u = u.unwrap();
            assert_eq!(an2.blocks[p].weights[0].id, an2.blocks[u].weights[0].id);
        }
        assert!((s.cka[0][0] - 1.0).abs() < 1e-9);
    }

    #[test]
    fn remove_mode_drops_the_other_layers() {
        let mut g = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
        let o = CrashOptions { clusters: 3, pooling: Pooling::Mean, mode: Mode::Remove };
        let s = crash(&mut g, &o, &Interpreter::new(), &batches(4)).unwrap();
        sharc_ir::verify(&g).unwrap();
        assert_eq!(find_blocks(&g).unwrap().len(), 3);
        assert_eq!(s.uses.iter().filter(|u| u.is_none()).count(), 1);
        let c = s.counterparts();
        let gone = s.uses.iter().position(|u| u.is_none()).unwrap();
        assert_eq!(c[gone], if gone == 0 { s.stream_input.clone() } else { c[gone - 1].clone() });
    }

    #[test]
    fn refuses_bad_cluster_counts_and_needs_calibration() {
        let mut g = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
        let o = CrashOptions { clusters: 4, ..Default::default() };
        let e = crash(&mut g, &o, &Interpreter::new(), &batches(4)).unwrap_err();
        assert!(e.to_string().contains("between 1 and 3"), "{e}");
        let e = Crash::default().run(&mut g, &mut PassContext::default()).unwrap_err();
        assert!(matches!(e, PassError::Missing { .. }));
    }

    #[test]
    fn snapshot_crash_share_2_clusters() {
        let mut g = parse(&synthetic(&["Relu"; 4], 4, 8)).unwrap();
        let o = CrashOptions { clusters: 2, pooling: Pooling::MeanWeighted, mode: Mode::Share };
        crash(&mut g, &o, &Interpreter::new(), &batches(4)).unwrap();
        insta::assert_snapshot!(print(&g));
    }

    #[test]
    fn snapshot_refusal_when_blocks_do_not_match() {
        let mut g = parse(&synthetic(&["Relu", "Sigmoid", "Tanh", "Erf"], 4, 8)).unwrap();
        let before = print(&g);
        let e = crash(&mut g, &CrashOptions::default(), &Interpreter::new(), &batches(4)).unwrap_err();
        assert_eq!(print(&g), before);
        insta::assert_snapshot!(e.to_string());
    }
}

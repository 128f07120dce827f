//! Compression reports: what a sharing pass saved and what it cost.
//!
//! A report holds
//! - unique (stored) and total parameters and bytes before and after, and
//!   the model file sizes when known;
//! - per-block fidelity: cosine and relative MSE of every block's output on
//!   the residual stream against the uncompressed model, per token (padding
//!   left out where the model has an `attention_mask` input);
//! - final-output fidelity on held-back data: for encoders the cosine of
//!   mean-pooled, L2-normalised sentence embeddings; for decoders the logit
//!   KL(p_ref‖p_new), top-1 agreement and the perplexity ratio of next-token
//!   prediction (the inputs shifted by one);
//! - the layer-similarity matrix (linear CKA of pooled residual-stream
//!   representations of the original model).
//!
//! It renders as text ([`CompressionReport::to_text`]), JSON
//! ([`CompressionReport::to_json`]) and an SVG heatmap of the CKA matrix
//! ([`CompressionReport::to_svg`]). The SVG is written by hand: a heatmap
//! is rectangles and text, and a plotting crate would bring font handling
//! and image dependencies for nothing.

use crate::analysis::calibration::{
    CalibrationError, Pooling, Probe, Representations, f32_data, for_each_batch, pool, run_pair, token_mask,
};
use crate::analysis::similarity::{FidelityAccumulator, cosine};
use serde::Serialize;
use sharc_ir::{Evaluator, Graph, Op, Tensor, Value};
use std::fmt::Write;

/// Which final-output check applies to a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// The first output is hidden states `[batch, seq, hidden]`; compare
    /// mean-pooled sentence embeddings.
    Encoder,
    /// The first output is next-token logits `[batch, seq, vocab]`; compare
    /// distributions and perplexity.
    Decoder,
}

/// Decides the task from the structure: a model whose first output's last
/// dim equals the row count of an embedding table indexed by an integer
/// graph input produces logits over that vocabulary (a decoder); otherwise
/// its output is treated as hidden states (an encoder).
pub fn detect_task(graph: &Graph) -> Task {
    // Imported graphs type only their inputs and outputs; the dtypes of the
    // index values come from inference (on a copy: detection changes nothing).
    let mut typed = graph.clone();
    let _ = sharc_ir::infer_shapes(&mut typed);
    let g = &typed;
    let Some(out) = g.outputs().first() else { return Task::Encoder };
    let Some(last) = g.value_type(out.value).shape().and_then(|s| s.dims().last().and_then(|d| d.fixed())) else {
        return Task::Encoder;
    };
    let vocab_tables = g.node_ids().filter_map(|n| {
        if !matches!(g.node(n).op, Op::Gather(_)) {
            return None;
        }
        let ins = g.node_inputs(n);
        let table = ins.first().copied().flatten()?;
        let Op::Weight(w) = g.node(table.node).op else { return None };
        let indices = ins.get(1).copied().flatten()?;
        let int_input = g.value_type(indices).dtype().is_some_and(|d| d.is_integer());
        int_input.then(|| g.weights.get(w).and_then(|w| w.shape.first().copied())).flatten()
    });
    let vocab: Vec<usize> = vocab_tables.collect();
    if vocab.contains(&(last as usize)) { Task::Decoder } else { Task::Encoder }
}

/// Size of a model.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ModelSize {
    /// Parameters stored (each shared weight once).
    pub unique_params: u64,
    /// Parameters as if nothing were shared.
    pub total_params: u64,
    /// Bytes stored.
    pub unique_bytes: u64,
    /// The model file's size, when written.
    pub file_bytes: Option<u64>,
}

impl ModelSize {
    /// The size of a graph (without a file).
    pub fn of(g: &Graph) -> ModelSize {
        let s = g.stats();
        ModelSize {
            unique_params: s.unique_params,
            total_params: s.total_params,
            unique_bytes: s.unique_bytes,
            file_bytes: None,
        }
    }
}

/// Fidelity of one block's output on the residual stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BlockFidelity {
    /// Block index (0-based).
    pub block: usize,
    /// A label (the compressed model's block, e.g. `shared 2`).
    pub label: String,
    /// Mean per-token cosine against the original.
    pub cosine: f64,
    /// The worst token's cosine.
    pub min_cosine: f64,
    /// `Σ‖r − x‖² / Σ‖r‖²` over tokens.
    pub relative_mse: f64,
    /// Largest absolute difference of any element.
    pub max_abs_diff: f64,
    /// Tokens compared.
    pub tokens: u64,
}

/// Fidelity of the final outputs.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "task", rename_all = "kebab-case")]
pub enum FinalFidelity {
    /// Sentence-embedding agreement.
    Encoder {
        /// Sentences compared.
        sentences: usize,
        /// Mean cosine of the (mean-pooled, L2-normalised) embeddings.
        mean_cosine: f64,
        /// The worst sentence's cosine.
        min_cosine: f64,
    },
    /// Next-token prediction agreement.
    Decoder {
        /// Positions compared.
        positions: u64,
        /// Mean KL(p_ref ‖ p_new) per position, in nats.
        kl: f64,
        /// Fraction of positions where both pick the same top token.
        top1_agreement: f64,
        /// Mean next-token NLL of the original (nats), when the inputs hold ids.
        nll_reference: Option<f64>,
        /// Mean next-token NLL of the compressed model.
        nll_compressed: Option<f64>,
        /// Perplexity ratio new/original (`exp(nll_new − nll_ref)`).
        perplexity_ratio: Option<f64>,
    },
}

/// The layer-similarity matrix.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CkaReport {
    /// One label per residual-stream point (`input`, `block 0`, ...).
    pub labels: Vec<String>,
    /// Linear CKA between every pair of points.
    pub matrix: Vec<Vec<f64>>,
    /// How sequences were pooled.
    pub pooling: Pooling,
    /// Sequences used.
    pub samples: usize,
}

/// Everything a compression run reports. See the [module docs](self).
#[derive(Clone, Debug, Serialize)]
pub struct CompressionReport {
    /// The model (file name or graph name).
    pub model: String,
    /// The method (`tie`, `fold`, ...).
    pub method: String,
    /// The method's own account of what it did (text).
    pub method_summary: String,
    /// The method's own account, for machines.
    pub method_details: serde_json::Value,
    /// Size before.
    pub before: ModelSize,
    /// Size after.
    pub after: ModelSize,
    /// Per-block fidelity.
    pub blocks: Vec<BlockFidelity>,
    /// Final-output fidelity.
    pub final_output: Option<FinalFidelity>,
    /// Layer similarity of the original model.
    pub cka: Option<CkaReport>,
    /// Rows of calibration data used by the method and for CKA.
    pub calibration_rows: usize,
    /// Rows the fidelity numbers were measured on.
    pub evaluation_rows: usize,
    /// True when those rows were held back from calibration.
    pub evaluation_held_out: bool,
    /// Anything else worth knowing.
    pub notes: Vec<String>,
}

/// Points on the residual stream to compare: the reference model's value
/// names, and for each the compressed model's corresponding value (`None`
/// where it has none, e.g. a removed block).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamPoints {
    /// Labels for reports.
    pub labels: Vec<String>,
    /// Value names in the reference model.
    pub reference: Vec<String>,
    /// Value names in the compressed model.
    pub candidate: Vec<Option<String>>,
}

impl StreamPoints {
    /// Points named the same in both models (passes that only rewire
    /// weights keep every value name).
    pub fn same_names(labels: Vec<String>, names: Vec<String>) -> StreamPoints {
        StreamPoints { labels, candidate: names.iter().cloned().map(Some).collect(), reference: names }
    }
}

/// Compares `candidate` with `reference` on `batches`: per stream point and
/// on the final outputs (for `task`; `None` skips it).
pub fn measure_fidelity(
    ev: &dyn Evaluator,
    reference: &Graph,
    candidate: &Graph,
    points: &StreamPoints,
    batches: &[Vec<Value>],
    task: Option<Task>,
) -> Result<(Vec<BlockFidelity>, Option<FinalFidelity>), CalibrationError> {
    let pairs: Vec<(usize, String)> =
        points.candidate.iter().enumerate().filter_map(|(i, c)| c.clone().map(|c| (i, c))).collect();
    let ref_names: Vec<String> = pairs.iter().map(|(i, _)| points.reference[*i].clone()).collect();
    let cand_names: Vec<String> = pairs.iter().map(|(_, c)| c.clone()).collect();
    let rp = Probe::by_names(reference, &ref_names)?;
    let cp = Probe::by_names(candidate, &cand_names)?;
    let mut accs = vec![FidelityAccumulator::new(); pairs.len()];
    let mut fin = FinalAccumulator::new(task, reference);
    run_pair(ev, &rp, &cp, batches, "comparing outputs", |batch, a, b| {
        let mask = token_mask(reference, batch);
        for (k, acc) in accs.iter_mut().enumerate() {
            let (x, y) = (&a.probes[k], &b.probes[k]);
            if x.shape() != y.shape() {
                return Err(format!(
                    "'{}' has shape {:?} in the original and {:?} in the compressed model",
                    ref_names[k],
                    x.shape(),
                    y.shape()
                ));
            }
            let dim = *x.shape().last().unwrap_or(&1);
            let rows = x.len() / dim.max(1);
            let keep = mask.as_deref().filter(|m| m.len() == rows);
            acc.add(&f32_data(x)?, &f32_data(y)?, dim, keep)?;
        }
        fin.add(batch, &a.outputs, &b.outputs, mask.as_deref())
    })?;
    let blocks = pairs
        .iter()
        .zip(&accs)
        .map(|((i, _), acc)| BlockFidelity {
            block: *i,
            label: points.labels.get(*i).cloned().unwrap_or_default(),
            cosine: acc.mean_cosine(),
            min_cosine: acc.min_cosine(),
            relative_mse: acc.relative_mse(),
            max_abs_diff: acc.max_abs_diff(),
            tokens: acc.rows(),
        })
        .collect();
    Ok((blocks, fin.finish()))
}

/// Linear CKA between the residual-stream points `names` of `g`, pooled per
/// sequence, on `batches`.
pub fn measure_cka(
    ev: &dyn Evaluator,
    g: &Graph,
    names: &[String],
    labels: Vec<String>,
    batches: &[Vec<Value>],
    pooling: Pooling,
) -> Result<CkaReport, CalibrationError> {
    let probe = Probe::by_names(g, names)?;
    let mut reps = Representations::new(names.len(), pooling);
    for_each_batch(ev, &probe, batches, "layer similarity", |_, batch, out| {
        reps.add(&out.probes, token_mask(g, batch).as_deref())
    })?;
    let matrix = reps.cka_matrix().map_err(CalibrationError::Consumer)?;
    Ok(CkaReport { labels, matrix, pooling, samples: reps.samples() })
}

/// Accumulates final-output fidelity batch by batch.
struct FinalAccumulator {
    task: Option<Task>,
    ids_input: Option<usize>,
    // Encoder.
    sentences: usize,
    cos_sum: f64,
    cos_min: f64,
    // Decoder.
    positions: u64,
    kl_sum: f64,
    agree: u64,
    nll_positions: u64,
    nll_ref: f64,
    nll_new: f64,
}

impl FinalAccumulator {
    fn new(task: Option<Task>, g: &Graph) -> FinalAccumulator {
        // Token ids: the first integer graph input of rank 2.
        let ids_input = g.input_values().iter().position(|&v| {
            let t = g.value_type(v);
            t.dtype().is_some_and(|d| d.is_integer()) && t.shape().is_some_and(|s| s.rank() == 2)
        });
        FinalAccumulator {
            task,
            ids_input,
            sentences: 0,
            cos_sum: 0.0,
            cos_min: f64::INFINITY,
            positions: 0,
            kl_sum: 0.0,
            agree: 0,
            nll_positions: 0,
            nll_ref: 0.0,
            nll_new: 0.0,
        }
    }

    fn add(&mut self, batch: &[Value], a: &[Value], b: &[Value], mask: Option<&[bool]>) -> Result<(), String> {
        let Some(task) = self.task else { return Ok(()) };
        let (Some(x), Some(y)) = (a.first().and_then(Value::as_tensor), b.first().and_then(Value::as_tensor)) else {
            return Err("the first output is not a tensor".to_string());
        };
        if x.shape() != y.shape() {
            return Err(format!("the first output has shape {:?} originally and {:?} now", x.shape(), y.shape()));
        }
        match task {
            Task::Encoder => self.add_encoder(x, y, mask),
            Task::Decoder => {
                let ids = self.ids_input.and_then(|i| batch.get(i)).and_then(Value::as_tensor).cloned();
                self.add_decoder(x, y, ids.as_ref(), mask)
            }
        }
    }

    fn add_encoder(&mut self, x: &Tensor, y: &Tensor, mask: Option<&[bool]>) -> Result<(), String> {
        let (px, py) = (pool(x, mask, Pooling::Mean)?, pool(y, mask, Pooling::Mean)?);
        for (u, v) in px.iter().zip(&py) {
            // Cosine is scale invariant, so L2 normalisation does not change
            // it; normalise anyway so the numbers are those of the embeddings.
            let unit = |w: &[f64]| {
                let n = w.iter().map(|z| z * z).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
                w.iter().map(|z| (z / n) as f32).collect::<Vec<f32>>()
            };
            let c = cosine(&unit(u), &unit(v));
            self.sentences += 1;
            self.cos_sum += c;
            self.cos_min = self.cos_min.min(c);
        }
        Ok(())
    }

    fn add_decoder(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        ids: Option<&Tensor>,
        mask: Option<&[bool]>,
    ) -> Result<(), String> {
        let [b, s, v] = x.shape() else {
            return Err(format!("decoder logits must be [batch, seq, vocab], got {:?}", x.shape()));
        };
        let (b, s, v) = (*b, *s, *v);
        let (lx, ly) = (f32_data(x)?, f32_data(y)?);
        let ids = match ids {
            Some(t) if t.shape() == [b, s] => t.to_i64_vec(),
            _ => None,
        };
        let keep = |i: usize, t: usize| mask.is_none_or(|m| m.get(i * s + t).copied().unwrap_or(true));
        for i in 0..b {
            for t in 0..s {
                if !keep(i, t) {
                    continue;
                }
                let off = (i * s + t) * v;
                let (p, q) = (log_softmax(&lx[off..off + v]), log_softmax(&ly[off..off + v]));
                let kl: f64 = p.iter().zip(&q).map(|(lp, lq)| lp.exp() * (lp - lq)).sum();
                self.kl_sum += kl.max(0.0);
                self.positions += 1;
                if argmax(&p) == argmax(&q) {
                    self.agree += 1;
                }
                if let Some(ids) = &ids
                    && t + 1 < s
                    && keep(i, t + 1)
                {
                    let next = ids[i * s + t + 1];
                    let Some(next) = usize::try_from(next).ok().filter(|n| *n < v) else {
                        return Err(format!("token id {next} is outside the vocabulary of {v}"));
                    };
                    self.nll_ref -= p[next];
                    self.nll_new -= q[next];
                    self.nll_positions += 1;
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Option<FinalFidelity> {
        match self.task? {
            Task::Encoder => (self.sentences > 0).then(|| FinalFidelity::Encoder {
                sentences: self.sentences,
                mean_cosine: self.cos_sum / self.sentences as f64,
                min_cosine: self.cos_min,
            }),
            Task::Decoder => (self.positions > 0).then(|| {
                let nll = (self.nll_positions > 0).then(|| {
                    let n = self.nll_positions as f64;
                    (self.nll_ref / n, self.nll_new / n)
                });
                FinalFidelity::Decoder {
                    positions: self.positions,
                    kl: self.kl_sum / self.positions as f64,
                    top1_agreement: self.agree as f64 / self.positions as f64,
                    nll_reference: nll.map(|n| n.0),
                    nll_compressed: nll.map(|n| n.1),
                    perplexity_ratio: nll.map(|(r, c)| (c - r).exp()),
                }
            }),
        }
    }
}

/// Log-probabilities of a row of logits, in f64.
pub(crate) fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let lse = max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    x.iter().map(|&v| v as f64 - lse).collect()
}

/// The index of the first largest value.
pub(crate) fn argmax(x: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn change(before: u64, after: u64) -> String {
    if before == 0 {
        return String::new();
    }
    format!(" ({:+.1}%)", 100.0 * (after as f64 - before as f64) / before as f64)
}

impl CompressionReport {
    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "sharc compress: method {} on {}", self.method, self.model);
        let (b, a) = (&self.before, &self.after);
        let _ = writeln!(s, "size");
        let _ = writeln!(
            s,
            "  unique parameters  {:>14} -> {:>14}{}",
            thousands(b.unique_params),
            thousands(a.unique_params),
            change(b.unique_params, a.unique_params)
        );
        let _ = writeln!(
            s,
            "  unique bytes       {:>14} -> {:>14}{}",
            thousands(b.unique_bytes),
            thousands(a.unique_bytes),
            change(b.unique_bytes, a.unique_bytes)
        );
        let _ = writeln!(
            s,
            "  total parameters   {:>14} -> {:>14}  (counting every use of a shared weight)",
            thousands(b.total_params),
            thousands(a.total_params)
        );
        if let (Some(fb), Some(fa)) = (b.file_bytes, a.file_bytes) {
            let _ =
                writeln!(s, "  file bytes         {:>14} -> {:>14}{}", thousands(fb), thousands(fa), change(fb, fa));
        }
        let _ = writeln!(s, "method");
        for line in self.method_summary.lines() {
            let _ = writeln!(s, "  {line}");
        }
        let _ = writeln!(
            s,
            "fidelity against the original on {} rows{}",
            self.evaluation_rows,
            if self.evaluation_held_out {
                format!(" held back from the {} calibration rows", self.calibration_rows)
            } else {
                " (the calibration rows themselves: no rows were held back)".to_string()
            }
        );
        if !self.blocks.is_empty() {
            let _ = writeln!(s, "  per block, on the residual stream (per token):");
            let _ = writeln!(
                s,
                "    {:<6} {:<12} {:>10} {:>10} {:>11} {:>11}",
                "block", "label", "cosine", "min cos", "rel. MSE", "max |diff|"
            );
            for bl in &self.blocks {
                let _ = writeln!(
                    s,
                    "    {:<6} {:<12} {:>10.6} {:>10.6} {:>11.3e} {:>11.3e}",
                    bl.block, bl.label, bl.cosine, bl.min_cosine, bl.relative_mse, bl.max_abs_diff
                );
            }
        }
        match &self.final_output {
            Some(FinalFidelity::Encoder { sentences, mean_cosine, min_cosine }) => {
                let _ = writeln!(
                    s,
                    "  final output (encoder): sentence-embedding cosine {mean_cosine:.6} mean, {min_cosine:.6} worst, over {sentences} sentences"
                );
            }
            Some(FinalFidelity::Decoder {
                positions,
                kl,
                top1_agreement,
                nll_reference,
                nll_compressed,
                perplexity_ratio,
            }) => {
                let _ = writeln!(
                    s,
                    "  final output (decoder): KL(p_ref||p_new) {kl:.5} nats/token, top-1 agreement {:.2}%, over {positions} positions",
                    100.0 * top1_agreement
                );
                if let (Some(r), Some(c), Some(p)) = (nll_reference, nll_compressed, perplexity_ratio) {
                    let _ = writeln!(
                        s,
                        "    next-token NLL {r:.4} -> {c:.4} nats, perplexity {:.3} -> {:.3} (ratio {p:.4})",
                        r.exp(),
                        c.exp()
                    );
                }
            }
            None => {}
        }
        if let Some(c) = &self.cka {
            let _ = writeln!(
                s,
                "layer similarity of the original (linear CKA, {:?} pooling, {} sequences)",
                c.pooling, c.samples
            );
            let w = c.labels.iter().map(|l| l.len()).max().unwrap_or(4).max(6);
            let _ = write!(s, "  {:<w$}", "");
            for l in &c.labels {
                let _ = write!(s, " {:>w$}", l);
            }
            let _ = writeln!(s);
            for (l, row) in c.labels.iter().zip(&c.matrix) {
                let _ = write!(s, "  {:<w$}", l);
                for v in row {
                    let _ = write!(s, " {:>w$.3}", v);
                }
                let _ = writeln!(s);
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }

    /// The report for machines (pretty-printed JSON). Non-finite numbers
    /// become `null`, as JSON has no NaN.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// An SVG heatmap of the CKA matrix, or a short SVG saying there is none.
    pub fn to_svg(&self) -> String {
        match &self.cka {
            Some(c) => heatmap_svg(&format!("{}: layer similarity (linear CKA)", self.model), &c.labels, &c.matrix),
            None => {
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"360\" height=\"40\"><text x=\"10\" y=\"25\" font-family=\"sans-serif\" font-size=\"14\">no layer-similarity data (no calibration rows)</text></svg>\n".to_string()
            }
        }
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A colour for a value in [0, 1] on a perceptually ordered dark-blue →
/// green → yellow scale (viridis anchors); grey for NaN.
fn colour(v: f64) -> (u8, u8, u8) {
    const STOPS: [(f64, (f64, f64, f64)); 5] = [
        (0.0, (68.0, 1.0, 84.0)),
        (0.25, (59.0, 82.0, 139.0)),
        (0.5, (33.0, 145.0, 140.0)),
        (0.75, (94.0, 201.0, 98.0)),
        (1.0, (253.0, 231.0, 37.0)),
    ];
    if !v.is_finite() {
        return (200, 200, 200);
    }
    let v = v.clamp(0.0, 1.0);
    for w in STOPS.windows(2) {
        let ((a, ca), (b, cb)) = (w[0], w[1]);
        if v <= b {
            let t = (v - a) / (b - a);
            let mix = |x: f64, y: f64| (x + t * (y - x)).round() as u8;
            return (mix(ca.0, cb.0), mix(ca.1, cb.1), mix(ca.2, cb.2));
        }
    }
    (253, 231, 37)
}

/// A labelled heatmap of a square matrix with values in [0, 1].
pub fn heatmap_svg(title: &str, labels: &[String], m: &[Vec<f64>]) -> String {
    let n = labels.len();
    let cell = 52usize;
    let left = 20 + 8 * labels.iter().map(|l| l.len()).max().unwrap_or(4);
    let top = 50usize;
    let legend = 70usize;
    let width = left + n * cell + legend + 20;
    let height = top + n * cell + 8 * labels.iter().map(|l| l.len()).max().unwrap_or(4) + 30;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\">"
    );
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(s, "<text x=\"10\" y=\"24\" font-size=\"16\">{}</text>", xml_escape(title));
    for (i, row) in m.iter().enumerate().take(n) {
        for (j, &v) in row.iter().enumerate().take(n) {
            let (r, g, b) = colour(v);
            let (x, y) = (left + j * cell, top + i * cell);
            let _ = writeln!(
                s,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{cell}\" height=\"{cell}\" fill=\"rgb({r},{g},{b})\"><title>{} vs {}: {v:.4}</title></rect>",
                xml_escape(&labels[i]),
                xml_escape(&labels[j])
            );
            let text_colour = if v.is_finite() && v > 0.6 { "black" } else { "white" };
            let shown = if v.is_finite() { format!("{v:.2}") } else { "n/a".to_string() };
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" font-size=\"13\" text-anchor=\"middle\" fill=\"{text_colour}\">{shown}</text>",
                x + cell / 2,
                y + cell / 2 + 5
            );
        }
    }
    for (i, l) in labels.iter().enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"13\" text-anchor=\"end\">{}</text>",
            left - 6,
            top + i * cell + cell / 2 + 5,
            xml_escape(l)
        );
        let (x, y) = (left + i * cell + cell / 2 + 5, top + n * cell + 8);
        let _ = writeln!(
            s,
            "<text x=\"{x}\" y=\"{y}\" font-size=\"13\" text-anchor=\"end\" transform=\"rotate(-90 {x} {y})\">{}</text>",
            xml_escape(l)
        );
    }
    // Colour scale.
    let lx = left + n * cell + 20;
    let steps = 20;
    let h = (n * cell).max(100);
    for k in 0..steps {
        let v = 1.0 - k as f64 / (steps - 1) as f64;
        let (r, g, b) = colour(v);
        let y = top + k * h / steps;
        let _ = writeln!(
            s,
            "<rect x=\"{lx}\" y=\"{y}\" width=\"16\" height=\"{}\" fill=\"rgb({r},{g},{b})\"/>",
            h / steps + 1
        );
    }
    let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" font-size=\"12\">1.0</text>", lx + 20, top + 10);
    let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" font-size=\"12\">0.0</text>", lx + 20, top + h);
    let _ = writeln!(s, "</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_and_kl_by_hand() {
        let p = log_softmax(&[0.0, 0.0]);
        assert!((p[0] - 0.5f64.ln()).abs() < 1e-12);
        // KL([0.5, 0.5] || softmax([ln 3, 0]) = [0.75, 0.25])
        //   = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.14384103622589045
        let q = log_softmax(&[3f32.ln(), 0.0]);
        let kl: f64 = p.iter().zip(&q).map(|(a, b)| a.exp() * (a - b)).sum();
        assert!((kl - 0.14384103622589045).abs() < 1e-6);
        assert_eq!(argmax(&q), 0);
    }

    #[test]
    fn decoder_accumulator_by_hand() {
        let g = Graph::new("g");
        let mut acc = FinalAccumulator::new(Some(Task::Decoder), &g);
        // One sequence of 2 positions over a vocabulary of 2; the ids are [0, 1].
        let a = Tensor::from_vec(&[1, 2, 2], vec![0.0f32, 0.0, 3f32.ln(), 0.0]);
        let b = Tensor::from_vec(&[1, 2, 2], vec![3f32.ln(), 0.0, 3f32.ln(), 0.0]);
        let ids = Tensor::from_vec(&[1, 2], vec![0i64, 1]);
        acc.add_decoder(&a, &b, Some(&ids), None).unwrap();
        let Some(FinalFidelity::Decoder { positions, kl, top1_agreement, nll_reference, nll_compressed, .. }) =
            acc.finish()
        else {
            panic!("decoder fidelity expected")
        };
        assert_eq!(positions, 2);
        // Position 0: KL([.5,.5] || [.75,.25]); position 1: identical.
        assert!((kl - 0.14384103622589045 / 2.0).abs() < 1e-6);
        // argmax of [0, 0] is 0, as for [ln 3, 0]: both positions agree.
        assert_eq!(top1_agreement, 1.0);
        // Only position 0 predicts a next token (id 1): −ln 0.5 and −ln 0.25.
        assert!((nll_reference.unwrap() - 2f64.ln()).abs() < 1e-6);
        assert!((nll_compressed.unwrap() - 4f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn encoder_accumulator_pools_over_the_mask() {
        let g = Graph::new("g");
        let mut acc = FinalAccumulator::new(Some(Task::Encoder), &g);
        // Token 1 is padding and differs wildly; the real token agrees.
        let a = Tensor::from_vec(&[1, 2, 2], vec![1.0f32, 0.0, 0.0, 1.0]);
        let b = Tensor::from_vec(&[1, 2, 2], vec![2.0f32, 0.0, -5.0, 9.0]);
        acc.add_encoder(&a, &b, Some(&[true, false])).unwrap();
        let Some(FinalFidelity::Encoder { sentences, mean_cosine, .. }) = acc.finish() else { panic!() };
        assert_eq!(sentences, 1);
        assert!((mean_cosine - 1.0).abs() < 1e-12);
    }

    #[test]
    fn svg_is_well_formed_and_escapes_labels() {
        let svg = heatmap_svg("a<b", &["x&y".to_string(), "z".to_string()], &[vec![1.0, 0.5], vec![0.5, f64::NAN]]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a&lt;b") && svg.contains("x&amp;y") && svg.contains("n/a"));
        assert_eq!(colour(0.0), (68, 1, 84));
        assert_eq!(colour(1.0), (253, 231, 37));
        assert_eq!(thousands(1234567), "1,234,567");
    }
}

//! Running a model on calibration data and recording what happens on its
//! residual stream, with memory that does not grow with the data.
//!
//! - [`make_batches`] splits named tensors (a safetensors file whose names are
//!   the graph's input names) into batches along dim 0.
//! - [`Probe`] is a copy of a graph that also outputs chosen intermediate
//!   values, typically the block boundaries of
//!   [`BlockAnalysis::boundaries`](super::blocks::BlockAnalysis::boundaries).
//!   Running it through any [`Evaluator`] gives the model's outputs and the
//!   probed values, one batch at a time.
//! - [`for_each_batch`] and [`run_pair`] drive batches with a progress bar,
//!   handing each batch's results to accumulators and dropping them, so only
//!   one batch of activations is alive at a time.
//! - [`pool`] reduces `[batch, seq, hidden]` activations to one vector per
//!   sequence (mean, max, last or position-weighted mean, honouring a token
//!   mask), and [`Representations`] collects those per layer for linear CKA:
//!   `n × d` numbers per layer instead of `n × seq × d`.

use super::similarity::{Samples, linear_cka};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sharc_ir::{DType, EvalError, Evaluator, Graph, Tensor, Value, ValueRef};
use std::collections::BTreeMap;
use std::ops::Range;

/// Why calibration failed.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    /// The calibration data does not fit the graph.
    #[error("calibration data: {0}")]
    Data(String),
    /// Running the model failed.
    #[error("running the model on calibration batch {batch}: {source}")]
    Eval { batch: usize, source: EvalError },
    /// A consumer of the results failed.
    #[error("{0}")]
    Consumer(String),
}

/// The number of rows (dim 0) shared by the graph inputs in `tensors`.
/// Fails naming the input that is missing or disagrees.
pub fn row_count(g: &Graph, tensors: &BTreeMap<String, Tensor>) -> Result<usize, CalibrationError> {
    let mut rows: Option<(usize, String)> = None;
    for v in g.input_values() {
        let name = &g.value_info(v).name;
        let t = tensors.get(name).ok_or_else(|| {
            CalibrationError::Data(format!(
                "no tensor for graph input '{name}' (the data has: {})",
                tensors.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        if let Some(d) = g.value_type(v).dtype()
            && d != t.dtype()
        {
            return Err(CalibrationError::Data(format!("input '{name}' must be {d}, the data has {}", t.dtype())));
        }
        let n = *t
            .shape()
            .first()
            .ok_or_else(|| CalibrationError::Data(format!("input '{name}' is a scalar; batches split dim 0")))?;
        match &rows {
            Some((m, other)) if *m != n => {
                return Err(CalibrationError::Data(format!(
                    "input '{name}' has {n} rows but '{other}' has {m}; all inputs split along dim 0 together"
                )));
            }
            None => rows = Some((n, name.clone())),
            _ => {}
        }
    }
    rows.map(|r| r.0).ok_or_else(|| CalibrationError::Data("the graph has no inputs".to_string()))
}

/// Rows `range` of a tensor (along dim 0).
pub fn slice_rows(t: &Tensor, range: Range<usize>) -> Result<Tensor, String> {
    let rows = *t.shape().first().ok_or("a scalar has no rows")?;
    if range.start > range.end || range.end > rows {
        return Err(format!("rows {}..{} are outside 0..{rows}", range.start, range.end));
    }
    let bytes = t.to_le_bytes().ok_or_else(|| format!("{} tensors cannot be sliced", t.dtype()))?;
    if rows == 0 || !bytes.len().is_multiple_of(rows) {
        return Err(format!("{} tensor of shape {:?} has no whole-byte rows", t.dtype(), t.shape()));
    }
    let per = bytes.len() / rows;
    let mut shape = t.shape().to_vec();
    shape[0] = range.len();
    Tensor::from_le_bytes(t.dtype(), &shape, &bytes[range.start * per..range.end * per])
}

/// Splits rows `rows` of the named tensors into batches of at most
/// `batch_size` rows, one value per graph input in input order.
pub fn make_batches(
    g: &Graph,
    tensors: &BTreeMap<String, Tensor>,
    rows: Range<usize>,
    batch_size: usize,
) -> Result<Vec<Vec<Value>>, CalibrationError> {
    if batch_size == 0 {
        return Err(CalibrationError::Data("the batch size must be at least 1".to_string()));
    }
    let total = row_count(g, tensors)?;
    if rows.end > total || rows.start > rows.end {
        return Err(CalibrationError::Data(format!(
            "rows {}..{} requested, the data has {total}",
            rows.start, rows.end
        )));
    }
    let mut batches = Vec::new();
    let mut start = rows.start;
    while start < rows.end {
        let end = (start + batch_size).min(rows.end);
        let batch = g
            .input_values()
            .iter()
            .map(|&v| {
                let name = &g.value_info(v).name;
                slice_rows(&tensors[name], start..end)
                    .map(Value::Tensor)
                    .map_err(|m| CalibrationError::Data(format!("input '{name}': {m}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        batches.push(batch);
        start = end;
    }
    Ok(batches)
}

/// A copy of a graph that also outputs chosen intermediate values.
#[derive(Clone, Debug)]
pub struct Probe {
    graph: Graph,
    model_outputs: usize,
    probed: usize,
}

/// What one run of a [`Probe`] gives.
#[derive(Clone, Debug)]
pub struct ProbeOutput {
    /// The model's own outputs, in order.
    pub outputs: Vec<Value>,
    /// The probed values, in the order they were asked for.
    pub probes: Vec<Tensor>,
}

impl Probe {
    /// Probes `values` of `g` (for example block boundaries).
    pub fn new(g: &Graph, values: &[ValueRef]) -> Result<Probe, CalibrationError> {
        let mut graph = g.clone();
        let model_outputs = graph.outputs().len();
        for (i, &v) in values.iter().enumerate() {
            if graph.try_node(v.node).is_none_or(|n| n.outputs.len() <= v.port as usize) {
                return Err(CalibrationError::Data(format!("probe {i} refers to a value that is not in the graph")));
            }
            let name = graph.fresh_name("sharc_probe");
            graph.add_output(name, v);
        }
        Ok(Probe { graph, model_outputs, probed: values.len() })
    }

    /// Probes the values of `g` with these names (the names survive passes
    /// that only rewire weights, so one list serves a model and its
    /// compressed version).
    pub fn by_names(g: &Graph, names: &[String]) -> Result<Probe, CalibrationError> {
        let values = names
            .iter()
            .map(|n| {
                g.value_by_name(n)
                    .ok_or_else(|| CalibrationError::Data(format!("the graph has no value named '{n}' to probe")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Probe::new(g, &values)
    }

    /// The probing graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Runs one batch.
    pub fn run(&self, ev: &dyn Evaluator, inputs: &[Value]) -> Result<ProbeOutput, EvalError> {
        let mut out = ev.evaluate(&self.graph, inputs)?;
        let probed = out.split_off(self.model_outputs);
        let probes = probed
            .into_iter()
            .take(self.probed)
            .enumerate()
            .map(|(i, v)| v.into_tensor().ok_or_else(|| EvalError::new(format!("probed value {i} is not a tensor"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ProbeOutput { outputs: out, probes })
    }
}

/// A progress bar on stderr for `n` steps; hidden when stderr is not a
/// terminal (tests, pipes), so logs stay clean.
pub fn progress_bar(n: usize, label: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_string());
    bar
}

/// Runs `probe` on every batch and hands each result to `consume`, with a
/// progress bar labelled `label`.
pub fn for_each_batch(
    ev: &dyn Evaluator,
    probe: &Probe,
    batches: &[Vec<Value>],
    label: &str,
    mut consume: impl FnMut(usize, &[Value], ProbeOutput) -> Result<(), String>,
) -> Result<(), CalibrationError> {
    let bar = progress_bar(batches.len(), label);
    for (i, batch) in batches.iter().enumerate() {
        let out = probe.run(ev, batch).map_err(|e| CalibrationError::Eval { batch: i, source: e })?;
        consume(i, batch, out).map_err(CalibrationError::Consumer)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Runs a reference and a candidate probe on every batch and hands both
/// results to `consume`: the way reports compare a compressed model with the
/// original without storing either's activations.
pub fn run_pair(
    ev: &dyn Evaluator,
    reference: &Probe,
    candidate: &Probe,
    batches: &[Vec<Value>],
    label: &str,
    mut consume: impl FnMut(&[Value], &ProbeOutput, &ProbeOutput) -> Result<(), String>,
) -> Result<(), CalibrationError> {
    let bar = progress_bar(batches.len(), label);
    for (i, batch) in batches.iter().enumerate() {
        let a = reference.run(ev, batch).map_err(|e| CalibrationError::Eval { batch: i, source: e })?;
        let b = candidate.run(ev, batch).map_err(|e| CalibrationError::Eval { batch: i, source: e })?;
        consume(batch, &a, &b).map_err(CalibrationError::Consumer)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// The elements of a float tensor as `f32`.
pub fn f32_data(t: &Tensor) -> Result<Vec<f32>, String> {
    match t.dtype() {
        DType::F32 => Ok(t.as_array::<f32>().map(|a| a.iter().copied().collect()).unwrap_or_default()),
        d if d.is_float() => {
            t.to_f64_vec().map(|v| v.into_iter().map(|x| x as f32).collect()).ok_or_else(|| format!("{d} data"))
        }
        d => Err(format!("expected a float tensor, got {d}")),
    }
}

/// How [`pool`] reduces a sequence to one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// Mean over the (unmasked) tokens.
    Mean,
    /// Elementwise max over the tokens.
    Max,
    /// The last unmasked token.
    Last,
    /// Mean with weights 1..T by position (CRaSh's `mean_weighted`), so later
    /// tokens, which have seen more context, count more.
    MeanWeighted,
}

impl Pooling {
    /// Parses `mean`, `max`, `last` or `mean-weighted`.
    pub fn parse(s: &str) -> Option<Pooling> {
        match s {
            "mean" => Some(Pooling::Mean),
            "max" => Some(Pooling::Max),
            "last" => Some(Pooling::Last),
            "mean-weighted" | "mean_weighted" => Some(Pooling::MeanWeighted),
            _ => None,
        }
    }
}

/// Pools a `[batch, seq, hidden]` activation to `batch` vectors of `hidden`.
/// `mask` (`[batch, seq]`, non-zero = real token) leaves out padding; a
/// sequence with no real token pools to zeros. Rank-2 `[batch, hidden]`
/// activations pass through.
pub fn pool(t: &Tensor, mask: Option<&[bool]>, how: Pooling) -> Result<Vec<Vec<f64>>, String> {
    let data = f32_data(t)?;
    let (b, s, d) = match t.shape() {
        [b, s, d] => (*b, *s, *d),
        [b, d] => (*b, 1, *d),
        other => return Err(format!("cannot pool an activation of shape {other:?}; expected [batch, seq, hidden]")),
    };
    if let Some(m) = mask
        && m.len() != b * s
    {
        return Err(format!("the token mask has {} entries for {b}×{s} tokens", m.len()));
    }
    let keep = |i: usize, j: usize| mask.is_none_or(|m| m[i * s + j]);
    let mut out = Vec::with_capacity(b);
    for i in 0..b {
        let row = |j: usize| &data[(i * s + j) * d..(i * s + j + 1) * d];
        let mut v = vec![0.0f64; d];
        match how {
            Pooling::Mean | Pooling::MeanWeighted => {
                let mut total = 0.0f64;
                for j in (0..s).filter(|&j| keep(i, j)) {
                    let w = if how == Pooling::MeanWeighted { (j + 1) as f64 } else { 1.0 };
                    total += w;
                    for (acc, &x) in v.iter_mut().zip(row(j)) {
                        *acc += w * x as f64;
                    }
                }
                if total > 0.0 {
                    v.iter_mut().for_each(|x| *x /= total);
                }
            }
            Pooling::Max => {
                let mut any = false;
                for j in (0..s).filter(|&j| keep(i, j)) {
                    for (acc, &x) in v.iter_mut().zip(row(j)) {
                        *acc = if any { acc.max(x as f64) } else { x as f64 };
                    }
                    any = true;
                }
            }
            Pooling::Last => {
                if let Some(j) = (0..s).rev().find(|&j| keep(i, j)) {
                    for (acc, &x) in v.iter_mut().zip(row(j)) {
                        *acc = x as f64;
                    }
                }
            }
        }
        out.push(v);
    }
    Ok(out)
}

/// The token mask of a batch: the graph input named `attention_mask` (the
/// convention of transformers exports), as booleans, when it is present and
/// has rank 2. Names are a hint here because the mask's meaning is a data
/// convention, not something the graph's structure states.
pub fn token_mask(g: &Graph, batch: &[Value]) -> Option<Vec<bool>> {
    let i = g.input_values().iter().position(|&v| g.value_info(v).name == "attention_mask")?;
    let t = batch.get(i)?.as_tensor()?;
    if t.rank() != 2 {
        return None;
    }
    Some(t.to_f64_vec()?.into_iter().map(|x| x != 0.0).collect())
}

/// Pooled representations of several layers over the same samples, for CKA.
#[derive(Clone, Debug)]
pub struct Representations {
    /// The pooling used.
    pub pooling: Pooling,
    /// One sample set per layer.
    pub layers: Vec<Samples>,
}

impl Representations {
    /// An empty collection for `layers` layers.
    pub fn new(layers: usize, pooling: Pooling) -> Representations {
        Representations { pooling, layers: vec![Samples::default(); layers] }
    }

    /// Adds one batch: one activation per layer, all for the same sequences.
    pub fn add(&mut self, activations: &[Tensor], mask: Option<&[bool]>) -> Result<(), String> {
        if activations.len() != self.layers.len() {
            return Err(format!("{} activations for {} layers", activations.len(), self.layers.len()));
        }
        for (layer, t) in self.layers.iter_mut().zip(activations) {
            let pooled = pool(t, mask, self.pooling)?;
            for v in pooled {
                if layer.rows == 0 && layer.cols == 0 {
                    layer.cols = v.len();
                }
                layer.push(&v)?;
            }
        }
        Ok(())
    }

    /// Number of samples collected.
    pub fn samples(&self) -> usize {
        self.layers.first().map_or(0, |l| l.rows)
    }

    /// The linear-CKA matrix between every pair of layers (symmetric, ones
    /// on the diagonal). An undefined entry (a layer without variance) is NaN.
    pub fn cka_matrix(&self) -> Result<Vec<Vec<f64>>, String> {
        let n = self.layers.len();
        if self.samples() < 2 {
            return Err(format!("CKA needs at least 2 samples, {} were collected", self.samples()));
        }
        let mut m = vec![vec![f64::NAN; n]; n];
        for i in 0..n {
            for j in i..n {
                let v = linear_cka(&self.layers[i], &self.layers[j]).unwrap_or(f64::NAN);
                m[i][j] = v;
                m[j][i] = v;
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharc_interp::Interpreter;
    use sharc_ir::{BinaryOp, Dim, Op, Type, UnaryOp};

    fn graph() -> Graph {
        let mut g = Graph::new("g");
        let x = g.add_input("x", Type::tensor(DType::F32, vec![Dim::sym("batch"), Dim::Fixed(2)]));
        let y = g.add_op(Op::Binary(BinaryOp::Add), &[x, x], Type::Unknown);
        let z = g.add_op(Op::Unary(UnaryOp::Neg), &[y], Type::Unknown);
        g.add_output("z", z);
        g
    }

    #[test]
    fn batches_split_dim_zero_and_check_names() {
        let g = graph();
        let mut data = BTreeMap::new();
        data.insert("x".to_string(), Tensor::from_vec(&[5, 2], (0..10).map(|v| v as f32).collect()));
        let b = make_batches(&g, &data, 1..5, 3).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0][0], Value::Tensor(Tensor::from_vec(&[3, 2], vec![2.0f32, 3.0, 4.0, 5.0, 6.0, 7.0])));
        assert_eq!(b[1][0], Value::Tensor(Tensor::from_vec(&[1, 2], vec![8.0f32, 9.0])));
        assert!(make_batches(&g, &data, 0..6, 3).unwrap_err().to_string().contains("the data has 5"));
        let mut wrong = BTreeMap::new();
        wrong.insert("y".to_string(), Tensor::from_vec(&[1], vec![0.0f32]));
        assert!(make_batches(&g, &wrong, 0..1, 1).unwrap_err().to_string().contains("'x'"));
        let mut ints = BTreeMap::new();
        ints.insert("x".to_string(), Tensor::from_vec(&[1, 2], vec![1i64, 2]));
        assert!(make_batches(&g, &ints, 0..1, 1).unwrap_err().to_string().contains("must be f32"));
    }

    #[test]
    fn probe_returns_outputs_and_intermediates() {
        let g = graph();
        let add = g.outputs()[0].value.node;
        let y = g.node_inputs(add)[0].unwrap();
        let probe = Probe::new(&g, &[y]).unwrap();
        let out =
            probe.run(&Interpreter::new(), &[Value::Tensor(Tensor::from_vec(&[1, 2], vec![1.0f32, 2.0]))]).unwrap();
        assert_eq!(out.outputs, vec![Value::Tensor(Tensor::from_vec(&[1, 2], vec![-2.0f32, -4.0]))]);
        assert_eq!(out.probes, vec![Tensor::from_vec(&[1, 2], vec![2.0f32, 4.0])]);
        // The original graph is untouched.
        assert_eq!(g.outputs().len(), 1);
        let name = g.value_info(y).name.clone();
        assert!(Probe::by_names(&g, &[name]).is_ok());
        assert!(Probe::by_names(&g, &["nope".into()]).unwrap_err().to_string().contains("nope"));
    }

    #[test]
    fn pooling_by_hand() {
        // One sequence of 3 tokens, 2 features; token 2 is padding.
        let t = Tensor::from_vec(&[1, 3, 2], vec![1.0f32, 2.0, 3.0, -4.0, 100.0, 100.0]);
        let mask = [true, true, false];
        assert_eq!(pool(&t, Some(&mask), Pooling::Mean).unwrap(), vec![vec![2.0, -1.0]]);
        assert_eq!(pool(&t, Some(&mask), Pooling::Max).unwrap(), vec![vec![3.0, 2.0]]);
        assert_eq!(pool(&t, Some(&mask), Pooling::Last).unwrap(), vec![vec![3.0, -4.0]]);
        // Weights 1 and 2: (1·1 + 2·3)/3, (1·2 + 2·(−4))/3.
        let w = pool(&t, Some(&mask), Pooling::MeanWeighted).unwrap();
        assert!((w[0][0] - 7.0 / 3.0).abs() < 1e-12 && (w[0][1] - -2.0).abs() < 1e-12);
        assert_eq!(pool(&t, None, Pooling::Mean).unwrap(), vec![vec![104.0 / 3.0, 98.0 / 3.0]]);
        assert!(pool(&t, Some(&[true]), Pooling::Mean).is_err());
        assert!(pool(&Tensor::from_vec(&[2], vec![1.0f32, 2.0]), None, Pooling::Mean).is_err());
    }

    #[test]
    fn representations_give_a_cka_matrix() {
        let mut r = Representations::new(2, Pooling::Mean);
        let a = Tensor::from_vec(&[3, 1, 2], vec![1.0f32, 0.0, 0.0, 1.0, 2.0, 2.0]);
        // Layer 2 is layer 1 scaled and shifted: CKA 1.
        let b = Tensor::from_vec(&[3, 1, 2], vec![3.0f32, 1.0, 1.0, 3.0, 5.0, 5.0]);
        r.add(&[a, b], None).unwrap();
        assert_eq!(r.samples(), 3);
        let m = r.cka_matrix().unwrap();
        assert!((m[0][1] - 1.0).abs() < 1e-12 && (m[1][0] - 1.0).abs() < 1e-12);
        assert!(r.add(&[], None).is_err());
    }
}

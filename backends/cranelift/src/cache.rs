//! The [`Evaluator`] for this backend, with a cache of compiled plans.
//!
//! Passes call an evaluator many times on the same graph (calibration
//! batches), and a CLI user runs the same model again and again. Compiling
//! costs far more than a run, so plans are kept per (graph fingerprint,
//! input shapes) and reused.

use crate::{CompileOptions, Compiled, compile};
use sharc_ir::{Dim, EvalError, Evaluator, Graph, Op, Tensor, Type, Value, WeightData};
use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A compiled plan's key: the graph's fingerprint and the concrete input shapes.
type CacheKey = (u64, Vec<Vec<usize>>);

/// Runs graphs with the Cranelift backend, compiling each (graph, input
/// shapes) pair once.
pub struct CraneliftEvaluator {
    opts: CompileOptions,
    cache: Mutex<HashMap<CacheKey, Arc<Compiled>>>,
    compiles: AtomicU64,
    hits: AtomicU64,
}

impl Default for CraneliftEvaluator {
    fn default() -> CraneliftEvaluator {
        CraneliftEvaluator::new(CompileOptions::default())
    }
}

impl CraneliftEvaluator {
    /// An evaluator compiling with `opts` (its `dims` are ignored: they come
    /// from the inputs of each call).
    pub fn new(opts: CompileOptions) -> CraneliftEvaluator {
        CraneliftEvaluator {
            opts,
            cache: Mutex::new(HashMap::new()),
            compiles: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        }
    }

    /// How many times a graph was compiled, and how many calls reused a
    /// cached plan.
    pub fn cache_stats(&self) -> (u64, u64) {
        (self.compiles.load(Ordering::Relaxed), self.hits.load(Ordering::Relaxed))
    }

    /// The compiled plan for `graph` at these input shapes, from the cache
    /// or freshly compiled.
    pub fn prepare(&self, graph: &Graph, inputs: &[Tensor]) -> Result<Arc<Compiled>, EvalError> {
        let dims = bind_dims(graph, inputs)?;
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
        let key = (graph_fingerprint(graph), shapes);
        if let Some(c) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(c.clone());
        }
        let mut opts = self.opts.clone();
        opts.dims = dims;
        let compiled = Arc::new(compile(graph, &opts).map_err(|e| EvalError::new(e.to_string()))?);
        self.compiles.fetch_add(1, Ordering::Relaxed);
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, compiled.clone());
        Ok(compiled)
    }
}

impl Evaluator for CraneliftEvaluator {
    fn name(&self) -> &str {
        "cranelift"
    }

    fn evaluate(&self, graph: &Graph, inputs: &[Value]) -> Result<Vec<Value>, EvalError> {
        let tensors: Vec<Tensor> = inputs
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_tensor().cloned().ok_or_else(|| {
                    EvalError::unsupported(format!(
                        "input {i} is a {}; the cranelift backend takes tensor inputs only",
                        v.describe()
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let compiled = self.prepare(graph, &tensors)?;
        Ok(compiled.run(&tensors)?.into_iter().map(Value::Tensor).collect())
    }
}

/// The values of the symbolic dims of `graph`'s inputs, read off the input
/// tensors. A fixed dim that disagrees, or a symbol bound to two sizes, is
/// an error naming the input.
pub(crate) fn bind_dims(graph: &Graph, inputs: &[Tensor]) -> Result<BTreeMap<String, usize>, EvalError> {
    if inputs.len() != graph.inputs().len() {
        return Err(EvalError::new(format!(
            "graph '{}' takes {} inputs but {} were given",
            graph.name,
            graph.inputs().len(),
            inputs.len()
        )));
    }
    let mut dims = BTreeMap::new();
    for (&id, t) in graph.inputs().iter().zip(inputs) {
        let vi = &graph.node(id).outputs[0];
        let Some(shape) = vi.ty.shape() else { continue };
        if shape.rank() != t.rank() {
            return Err(EvalError::new(format!(
                "input '{}' has rank {} but the graph declares {}",
                vi.name,
                t.rank(),
                vi.ty
            )));
        }
        for (d, &n) in shape.dims().iter().zip(t.shape()) {
            match d {
                Dim::Fixed(f) if *f as usize != n => {
                    return Err(EvalError::new(format!(
                        "input '{}' has shape {:?} but the graph declares {}",
                        vi.name,
                        t.shape(),
                        vi.ty
                    )));
                }
                Dim::Sym(s) => {
                    if let Some(&prev) = dims.get(s)
                        && prev != n
                    {
                        return Err(EvalError::new(format!(
                            "dim '{s}' is {prev} in one input and {n} in input '{}'",
                            vi.name
                        )));
                    }
                    dims.insert(s.clone(), n);
                }
                _ => {}
            }
        }
    }
    Ok(dims)
}

/// A fingerprint of everything that affects what a graph computes: ops and
/// attributes, wiring, types, constants (by content) and weights (mapped
/// ones by file range, owned ones by content).
pub fn graph_fingerprint(g: &Graph) -> u64 {
    let mut h = DefaultHasher::new();
    let order = match g.topo_order() {
        Ok(o) => o,
        // A cyclic graph does not compile; any fingerprint will do.
        Err(_) => return 0,
    };
    let pos: HashMap<_, _> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    for &id in &order {
        let node = g.node(id);
        node.name.hash(&mut h);
        for o in &node.outputs {
            o.name.hash(&mut h);
            format!("{}", o.ty).hash(&mut h);
        }
        match &node.op {
            Op::Constant(t) => hash_tensor(t, &mut h),
            Op::Weight(w) => match g.weights.get(*w) {
                Some(wt) => {
                    wt.name.hash(&mut h);
                    format!("{}{:?}", wt.dtype, wt.shape).hash(&mut h);
                    match &wt.data {
                        WeightData::Mapped { file, offset, len } => {
                            file.path.hash(&mut h);
                            (file.map.as_ptr() as usize, offset, len).hash(&mut h);
                        }
                        WeightData::Owned(t) => hash_tensor(t, &mut h),
                    }
                }
                None => "missing".hash(&mut h),
            },
            op if !op.subgraphs().is_empty() => {
                op.op_type().hash(&mut h);
                for s in op.subgraphs() {
                    sharc_ir::print(s).hash(&mut h);
                }
            }
            op => format!("{op:?}").hash(&mut h),
        }
        for v in g.node_inputs(id) {
            v.map(|v| (pos[&v.node], v.port)).hash(&mut h);
        }
    }
    for &i in g.inputs() {
        pos[&i].hash(&mut h);
        if let Type::Tensor(t) = &g.node(i).outputs[0].ty {
            format!("{t}").hash(&mut h);
        }
    }
    for o in g.outputs() {
        (o.name.as_str(), pos[&o.value.node], o.value.port).hash(&mut h);
    }
    h.finish()
}

fn hash_tensor(t: &Tensor, h: &mut DefaultHasher) {
    format!("{}{:?}", t.dtype(), t.shape()).hash(h);
    match t.to_le_bytes() {
        Some(b) => b.hash(h),
        None => format!("{t:?}").hash(h),
    }
}

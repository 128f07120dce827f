//! IR → ONNX.
//!
//! Export writes the graph in topological order, one initializer per weight
//! (however many nodes share it), bodies with their captured values referred
//! to by the outer names, and the smallest opset (at least 18, or the
//! model's own when higher) at which every node is valid according to the
//! schema table generated from `onnx.defs` (see `tools/gen_opsets.py`).
//!
//! Names: graph input and output names are the model's interface and are
//! kept exactly; other values keep their IR names unless two would clash
//! (for example a weight and a value with the same name, or a body value
//! with the name of an outer one, which ONNX forbids), in which case a
//! `__N` suffix is added.
//!
//! Files are written atomically: to a temporary file in the target folder,
//! renamed into place once complete. A failed export leaves nothing behind.

use crate::OnnxError;
use crate::import::{PRESERVED_FUNCTION, PRESERVED_TRAINING_INFO, canonical_domain};
use crate::opsets::{LATEST_OPSET, SCHEMAS, Schema, VERSION_TABLE};
use crate::tensor::tensor_to_proto;
use crate::types::type_to_proto;
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataLocation;
use onnx_protobuf::{
    AttributeProto, FunctionProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TrainingInfoProto, ValueInfoProto,
};
use sharc_ir::{Attr, DType, Graph, NodeId, Op, Tensor, Type, ValueRef, Weight, WeightData, WeightId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// How to write a model.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Write large weights to a side file next to the model instead of into
    /// the protobuf (needed for models over 2 GiB, and lets runtimes
    /// memory-map the weights).
    pub external_data: bool,
    /// With `external_data`, weights smaller than this many bytes stay in the
    /// model file.
    pub external_threshold: usize,
    /// With `external_data`, each weight starts at a multiple of this many
    /// bytes in the side file (the page size, so runtimes can map it).
    pub alignment: usize,
    /// The side file's name (a plain file name in the model's folder);
    /// default `<model file name>.data`.
    pub data_file: Option<String>,
}

impl Default for ExportOptions {
    fn default() -> ExportOptions {
        ExportOptions { external_data: false, external_threshold: 1024, alignment: 4096, data_file: None }
    }
}

impl ExportOptions {
    /// Options that put every weight of at least `threshold` bytes in
    /// `<model>.data`.
    pub fn external(threshold: usize) -> ExportOptions {
        ExportOptions { external_data: true, external_threshold: threshold, ..ExportOptions::default() }
    }
}

/// The smallest default-domain opset export writes: every normalised op form
/// the importer produces is valid from here on.
pub const MIN_EXPORT_OPSET: i64 = 18;

/// Serializes a graph to ONNX bytes (weights inline).
pub fn export_bytes(g: &Graph, opts: &ExportOptions) -> Result<Vec<u8>, OnnxError> {
    let file = "<memory>";
    if opts.external_data {
        return Err(OnnxError::export(file, "external data needs a target file; use export_file"));
    }
    let model = build_model(g, file, None)?;
    serialize(&model, file)
}

/// Writes a graph as an ONNX model file (and, with
/// [`ExportOptions::external_data`], its weights to a side file).
///
/// The output passes `onnx.checker.check_model(full_check=True)` for graphs
/// that sharc imported, and for built or transformed graphs whose graph
/// inputs and outputs have known types (ONNX requires them; a value of
/// unknown type is written without one). The write is atomic: on error no
/// file is created or changed.
pub fn export_file(g: &Graph, path: impl AsRef<Path>, opts: &ExportOptions) -> Result<(), OnnxError> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| OnnxError::export(&file, "the path has no file name"))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut data = if opts.external_data {
        let data_name = opts.data_file.clone().unwrap_or_else(|| format!("{name}.data"));
        let plain = Path::new(&data_name).file_name().and_then(|n| n.to_str()) == Some(data_name.as_str());
        if !plain || data_name == ".." || data_name == name {
            return Err(OnnxError::export(
                &file,
                format!("the data file name '{data_name}' must be a plain file name, different from the model's"),
            ));
        }
        if opts.alignment == 0 {
            return Err(OnnxError::export(&file, "the external data alignment must be at least 1"));
        }
        Some(DataFile {
            name: data_name.clone(),
            path: dir.join(&data_name),
            dir: dir.clone(),
            threshold: opts.external_threshold,
            alignment: opts.alignment as u64,
            writer: None,
            offset: 0,
        })
    } else {
        None
    };
    let model = build_model(g, &file, data.as_mut())?;
    let bytes = serialize(&model, &file)?;
    let io = |what: &str, e: std::io::Error| OnnxError::io(path, what, e);
    let mut tmp =
        temp_file_in(&dir, ".sharc-export-").map_err(|e| io("cannot create a temporary file next to the model", e))?;
    tmp.write_all(&bytes).map_err(|e| io("cannot write the model", e))?;
    tmp.as_file().sync_all().map_err(|e| io("cannot write the model", e))?;
    let data_written = match data {
        Some(d) => d.persist(path)?,
        None => None,
    };
    if let Err(e) = tmp.persist(path) {
        // Keep the pair consistent: without the model, the new data file is
        // useless.
        if let Some(p) = data_written {
            let _ = std::fs::remove_file(p);
        }
        return Err(io("cannot move the model into place", e.error));
    }
    Ok(())
}

fn serialize(model: &ModelProto, file: &str) -> Result<Vec<u8>, OnnxError> {
    let size = model.compute_size();
    if size > i32::MAX as u64 {
        return Err(OnnxError::export(
            file,
            format!(
                "the model is {size} bytes, over protobuf's 2 GiB limit; export with external data \
                 (ExportOptions::external)"
            ),
        ));
    }
    model.write_to_bytes().map_err(|e| OnnxError::export(file, format!("cannot serialize the model: {e}")))
}

/// The side file for external data, created on first use.
struct DataFile {
    name: String,
    path: PathBuf,
    dir: PathBuf,
    threshold: usize,
    alignment: u64,
    writer: Option<BufWriter<tempfile::NamedTempFile>>,
    offset: u64,
}

/// A temporary file in `dir` that becomes an output by rename. Temporary
/// files are normally private (0600); outputs should get the permissions any
/// new file gets (0666 less the umask), so ask for those at creation.
fn temp_file_in(dir: &Path, prefix: &str) -> std::io::Result<tempfile::NamedTempFile> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    b.tempfile_in(dir)
}

impl DataFile {
    /// Appends bytes at the next aligned offset; returns the offset.
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<u64> {
        if self.writer.is_none() {
            let tmp = temp_file_in(&self.dir, ".sharc-export-data-")?;
            self.writer = Some(BufWriter::with_capacity(1 << 20, tmp));
        }
        let w = self.writer.as_mut().expect("created above");
        let pad = (self.alignment - self.offset % self.alignment) % self.alignment;
        w.write_all(&vec![0u8; pad as usize])?;
        let at = self.offset + pad;
        w.write_all(bytes)?;
        self.offset = at + bytes.len() as u64;
        Ok(at)
    }

    /// Moves the data into place; returns its path if anything was written.
    fn persist(self, model: &Path) -> Result<Option<PathBuf>, OnnxError> {
        let Some(w) = self.writer else { return Ok(None) };
        let io = |what: &str, e: std::io::Error| OnnxError::io(model, what, e);
        let tmp = w.into_inner().map_err(|e| io("cannot write the external data", e.into_error()))?;
        tmp.as_file().sync_all().map_err(|e| io("cannot write the external data", e))?;
        tmp.persist(&self.path).map_err(|e| io("cannot move the external data into place", e.error))?;
        Ok(Some(self.path))
    }
}

/// What a default-domain node needs from its opset.
struct NodeReq {
    label: String,
    op: String,
    attrs: Vec<String>,
    inputs: usize,
    outputs: usize,
}

/// Ops whose IR form has the semantics of a version later than their
/// signature shows.
const SEMANTIC_MIN: &[(&str, i64)] = &[
    // The axis input's default changed from 1 to -2 in opset 20.
    ("DFT", 20),
    // Mode names changed (bilinear → linear) and N-D support came in opset 20.
    ("GridSample", 20),
    // Scale and bias became per channel (instead of per group) in opset 21.
    ("GroupNormalization", 21),
];

/// The first opset whose ops accept each narrow dtype.
fn dtype_min_opset(d: DType) -> i64 {
    match d {
        DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ => 19,
        DType::U4 | DType::I4 => 21,
        DType::F4E2M1 => 23,
        DType::F8E8M0 => 24,
        DType::U2 | DType::I2 => 25,
        _ => 0,
    }
}

fn schema_at(op: &str, v: i64) -> Option<&'static Schema> {
    SCHEMAS.iter().filter(|s| s.op == op && s.since <= v).max_by_key(|s| s.since)
}

/// Why `req` is invalid at opset `v`, or `None` when it is valid.
fn reject(req: &NodeReq, v: i64) -> Option<String> {
    if !SCHEMAS.iter().any(|s| s.op == req.op) {
        // Not an ONNX op (a removed experimental one, say): nothing to check.
        return None;
    }
    if let Some(&(_, min)) = SEMANTIC_MIN.iter().find(|(op, _)| *op == req.op)
        && v < min
    {
        return Some(format!("its sharc form needs opset {min}"));
    }
    let Some(s) = schema_at(&req.op, v) else { return Some("the op does not exist yet".to_string()) };
    if s.deprecated {
        return Some(format!("the op is deprecated since opset {}", s.since));
    }
    if let Some(a) = req.attrs.iter().find(|a| !s.attrs.contains(&a.as_str())) {
        return Some(format!("attribute '{a}' is not part of the op"));
    }
    if req.inputs > s.max_inputs {
        return Some(format!("it has {} inputs, the op takes at most {}", req.inputs, s.max_inputs));
    }
    if req.outputs > s.max_outputs {
        return Some(format!("it has {} outputs, the op has at most {}", req.outputs, s.max_outputs));
    }
    None
}

/// The IR version onnx.helper pairs with these opsets (the oldest release
/// that knows all of them).
fn ir_version_for(opsets: &[(String, i64)]) -> i64 {
    let mut ir = 3;
    for (domain, v) in opsets {
        let col = match domain.as_str() {
            "" | "ai.onnx" => 2,
            "ai.onnx.ml" => 3,
            "ai.onnx.training" => 4,
            _ => continue,
        };
        let row = VERSION_TABLE.iter().find(|r| [r.2, r.3, r.4][col - 2] >= *v);
        ir = ir.max(row.map_or(VERSION_TABLE.last().map_or(3, |r| r.1), |r| r.1));
    }
    ir
}

struct Exporter<'a> {
    file: &'a str,
    data: Option<&'a mut DataFile>,
    reqs: Vec<NodeReq>,
    min_opset: i64,
    domains: BTreeMap<String, ()>,
}

fn build_model(g: &Graph, file: &str, data: Option<&mut DataFile>) -> Result<ModelProto, OnnxError> {
    // Export indexes values freely; a malformed graph must be an error here.
    sharc_ir::verify(g).map_err(|e| OnnxError::export(file, format!("the graph is not well formed: {e}")))?;
    let mut ex = Exporter { file, data, reqs: Vec::new(), min_opset: 0, domains: BTreeMap::new() };
    let graph = ex.graph(g, &HashSet::new(), &[], true, &format!("graph '{}'", g.name))?;

    let model_opset = g.meta.opset_imports.iter().find(|(d, _)| canonical_domain(d).is_empty()).map(|(_, v)| *v);
    let base = MIN_EXPORT_OPSET.max(model_opset.unwrap_or(0)).max(ex.min_opset);
    let opset = if base > LATEST_OPSET {
        base
    } else {
        match (base..=LATEST_OPSET).find(|&v| ex.reqs.iter().all(|r| reject(r, v).is_none())) {
            Some(v) => v,
            None => {
                let (r, why) = ex
                    .reqs
                    .iter()
                    .find_map(|r| reject(r, LATEST_OPSET).map(|w| (r, w)))
                    .expect("some node is rejected at every opset");
                return Err(OnnxError::export(
                    file,
                    format!("node {} cannot be written at any opset from {base} to {LATEST_OPSET}: {why}", r.label),
                ));
            }
        }
    };

    let mut opsets: Vec<(String, i64)> = vec![(String::new(), opset)];
    for (d, v) in &g.meta.opset_imports {
        let d = canonical_domain(d);
        if !d.is_empty() && !opsets.iter().any(|(x, _)| x == d) {
            opsets.push((d.to_string(), *v));
        }
    }
    for d in ex.domains.keys() {
        if !opsets.iter().any(|(x, _)| x == d) {
            opsets.push((d.clone(), 1));
        }
    }

    let mut m = ModelProto::new();
    m.ir_version = ir_version_for(&opsets);
    m.opset_import = opsets
        .iter()
        .map(|(d, v)| {
            let mut o = OperatorSetIdProto::new();
            o.domain = d.clone();
            o.version = *v;
            o
        })
        .collect();
    let meta = &g.meta;
    if meta.producer_name.is_empty() {
        m.producer_name = "sharc".to_string();
        m.producer_version = env!("CARGO_PKG_VERSION").to_string();
    } else {
        m.producer_name = meta.producer_name.clone();
        m.producer_version = meta.producer_version.clone();
    }
    m.domain = meta.domain.clone();
    m.model_version = meta.model_version;
    m.doc_string = meta.doc_string.clone();
    m.metadata_props = meta
        .props
        .iter()
        .map(|(k, v)| {
            let mut e = StringStringEntryProto::new();
            e.key = k.clone();
            e.value = v.clone();
            e
        })
        .collect();
    for (key, bytes) in &meta.preserved {
        let bad = |e: protobuf::Error| OnnxError::export(file, format!("preserved '{key}' is corrupted: {e}"));
        match key.as_str() {
            PRESERVED_FUNCTION => {
                let f = FunctionProto::parse_from_bytes(bytes).map_err(bad)?;
                check_function_opset(&f, opset).map_err(|m| OnnxError::export(file, m))?;
                m.functions.push(f);
            }
            PRESERVED_TRAINING_INFO => m.training_info.push(TrainingInfoProto::parse_from_bytes(bytes).map_err(bad)?),
            // Data preserved by other frontends means nothing to ONNX.
            _ => {}
        }
    }
    m.graph = Some(graph).into();
    Ok(m)
}

/// A model-local function keeps its own opset imports, which ONNX requires to
/// agree with the model's for every op the function uses: the op's
/// definition must not change between the two versions. sharc does not
/// rewrite function bodies, so a function that uses an op changed between
/// its opset and the exported one cannot be written.
fn check_function_opset(f: &FunctionProto, model_opset: i64) -> Result<(), String> {
    let Some(fv) = f.opset_import.iter().find(|o| canonical_domain(&o.domain).is_empty()).map(|o| o.version) else {
        return Ok(());
    };
    let (lo, hi) = (fv.min(model_opset), fv.max(model_opset));
    for n in f.node.iter().filter(|n| canonical_domain(&n.domain).is_empty()) {
        if let Some(s) = schema_at(&n.op_type, hi)
            && s.since > lo
        {
            return Err(format!(
                "local function '{}' uses {} from opset {fv}, whose definition changed in opset {}; the model is \
                 written at opset {model_opset} and sharc does not rewrite function bodies; re-export the model with \
                 opset {model_opset} or inline the function",
                f.name, n.op_type, s.since
            ));
        }
    }
    Ok(())
}

fn value_info(name: &str, ty: &Type) -> ValueInfoProto {
    let mut vi = ValueInfoProto::new();
    vi.name = name.to_string();
    vi.type_ = type_to_proto(ty).into();
    vi
}

fn node_label(g: &Graph, id: NodeId, graph_label: &str) -> String {
    let n = g.node(id);
    let name = if n.name.is_empty() { n.outputs.first().map(|o| o.name.as_str()).unwrap_or("") } else { &n.name };
    format!("'{name}' ({}) in {graph_label}", n.op.op_type())
}

/// Assigns ONNX names within one graph.
struct Names<'o> {
    outer: &'o HashSet<String>,
    taken: HashSet<String>,
}

impl Names<'_> {
    fn is_free(&self, n: &str) -> bool {
        !n.is_empty() && !self.taken.contains(n) && !self.outer.contains(n)
    }

    /// `base`, or `base__N` when taken; reserves the result.
    fn claim(&mut self, base: &str) -> String {
        let base = if base.is_empty() { "v" } else { base };
        let mut name = base.to_string();
        let mut k = 1;
        while !self.is_free(&name) {
            name = format!("{base}__{k}");
            k += 1;
        }
        self.taken.insert(name.clone());
        name
    }
}

impl Exporter<'_> {
    fn err(&self, m: impl Into<String>) -> OnnxError {
        OnnxError::export(self.file, m)
    }

    fn note_dtype(&mut self, d: DType) {
        self.min_opset = self.min_opset.max(dtype_min_opset(d));
    }

    fn note_type(&mut self, t: &Type) {
        match t {
            Type::Tensor(tt) => self.note_dtype(tt.dtype),
            Type::Sequence(e) | Type::Optional(e) => self.note_type(e),
            Type::Unknown => {}
        }
    }

    /// Exports one graph. `outer` holds the names visible from enclosing
    /// graphs (which ONNX forbids redefining); `captures` the outer names of
    /// the graph's captured values.
    fn graph(
        &mut self,
        g: &Graph,
        outer: &HashSet<String>,
        captures: &[String],
        top: bool,
        label: &str,
    ) -> Result<GraphProto, OnnxError> {
        let order = g.topo_order().map_err(|e| self.err(format!("{label}: {e}")))?;
        if g.captures().len() != captures.len() {
            return Err(self.err(format!(
                "{label} captures {} values but its node passes {}",
                g.captures().len(),
                captures.len()
            )));
        }
        let mut names = Names { outer, taken: HashSet::new() };
        let mut name_of: HashMap<ValueRef, String> = HashMap::new();
        for (&c, outer_name) in g.captures().iter().zip(captures) {
            // A reference to the outer value, not a definition.
            names.taken.insert(outer_name.clone());
            name_of.insert(ValueRef::new(c, 0), outer_name.clone());
        }
        for &i in g.inputs() {
            let ir = &g.node(i).outputs[0].name;
            let n = if top {
                if !names.is_free(ir) {
                    return Err(self.err(format!("{label}: input name '{ir}' is used twice")));
                }
                names.claim(ir)
            } else {
                names.claim(ir)
            };
            name_of.insert(ValueRef::new(i, 0), n);
        }

        // Graph outputs keep their names: the value is renamed to the output
        // name, or an Identity bridges when the value already has a name.
        let is_weight = |v: ValueRef| matches!(g.node(v.node).op, Op::Weight(_));
        let mut out_names = Vec::with_capacity(g.outputs().len());
        let mut bridges: Vec<(ValueRef, String)> = Vec::new();
        for o in g.outputs() {
            if !g.contains(o.value.node) {
                return Err(self.err(format!("{label}: output '{}' refers to a removed node", o.name)));
            }
            match name_of.get(&o.value) {
                Some(n) if *n == o.name => out_names.push(o.name.clone()),
                _ => {
                    let direct = !name_of.contains_key(&o.value) && !is_weight(o.value) && names.is_free(&o.name);
                    let name = if names.is_free(&o.name) {
                        names.claim(&o.name)
                    } else if top {
                        return Err(self.err(format!(
                            "graph output '{}' has the name of another graph input or output; rename one of them",
                            o.name
                        )));
                    } else {
                        names.claim(&o.name)
                    };
                    if direct {
                        name_of.insert(o.value, name.clone());
                    } else {
                        bridges.push((o.value, name.clone()));
                    }
                    out_names.push(name);
                }
            }
        }

        // One initializer per weight, whatever number of nodes use it.
        let mut weight_names: BTreeMap<WeightId, String> = BTreeMap::new();
        for &id in &order {
            if let Op::Weight(w) = g.node(id).op {
                if g.weights.get(w).is_none() {
                    return Err(self.err(format!("node {} uses a missing weight", node_label(g, id, label))));
                }
                weight_names.insert(w, String::new());
            }
        }
        for (w, slot) in weight_names.iter_mut() {
            *slot = names.claim(&g.weights.get(*w).expect("checked above").name);
        }
        for &id in &order {
            let node = g.node(id);
            for (port, o) in node.outputs.iter().enumerate() {
                let v = ValueRef::new(id, port as u32);
                if name_of.contains_key(&v) {
                    continue;
                }
                let n = match node.op {
                    Op::Weight(w) => weight_names[&w].clone(),
                    _ => names.claim(&o.name),
                };
                name_of.insert(v, n);
            }
        }

        let mut gp = GraphProto::new();
        gp.name = g.name.clone();
        for &i in g.inputs() {
            let ty = g.value_type(ValueRef::new(i, 0));
            self.note_type(ty);
            gp.input.push(value_info(&name_of[&ValueRef::new(i, 0)], ty));
        }
        for (w, name) in &weight_names {
            let weight = g.weights.get(*w).expect("checked above");
            let t = self.weight_proto(weight, name)?;
            gp.initializer.push(t);
        }
        let body_outer: HashSet<String> = outer.union(&names.taken).cloned().collect();
        let output_names: HashSet<&str> = out_names.iter().map(|s| s.as_str()).collect();
        for &id in &order {
            let node = g.node(id);
            match &node.op {
                Op::Input | Op::Weight(_) => continue,
                _ => {}
            }
            let np = self.node(g, id, &name_of, &body_outer, label)?;
            gp.node.push(np);
            for (port, o) in node.outputs.iter().enumerate() {
                let n = &name_of[&ValueRef::new(id, port as u32)];
                self.note_type(&o.ty);
                if o.ty != Type::Unknown && !output_names.contains(n.as_str()) {
                    gp.value_info.push(value_info(n, &o.ty));
                }
            }
        }
        for (v, out) in &bridges {
            let mut np = NodeProto::new();
            np.op_type = "Identity".to_string();
            np.input.push(name_of[v].clone());
            np.output.push(out.clone());
            gp.node.push(np);
        }
        for (o, name) in g.outputs().iter().zip(&out_names) {
            gp.output.push(value_info(name, g.value_type(o.value)));
        }
        Ok(gp)
    }

    fn weight_proto(&mut self, w: &Weight, name: &str) -> Result<TensorProto, OnnxError> {
        self.note_dtype(w.dtype);
        if w.dtype == DType::String {
            return Ok(tensor_to_proto(w.tensor(), name));
        }
        let owned;
        let bytes: &[u8] = match &w.data {
            WeightData::Mapped { .. } => w.mapped_bytes().expect("mapped weights have bytes"),
            WeightData::Owned(t) => {
                owned = t.to_le_bytes().expect("non-string tensors have a byte layout");
                &owned
            }
        };
        let mut p = TensorProto::new();
        p.name = name.to_string();
        p.data_type = w.dtype.onnx_code();
        p.dims = w.shape.iter().map(|&d| d as i64).collect();
        match self.data.as_deref_mut() {
            Some(d) if bytes.len() >= d.threshold && !bytes.is_empty() => {
                let at = d.append(bytes).map_err(|e| {
                    OnnxError::export(self.file, format!("cannot write the external data for '{name}': {e}"))
                })?;
                p.data_location = DataLocation::EXTERNAL.into();
                for (k, v) in
                    [("location", d.name.clone()), ("offset", at.to_string()), ("length", bytes.len().to_string())]
                {
                    let mut e = StringStringEntryProto::new();
                    e.key = k.to_string();
                    e.value = v;
                    p.external_data.push(e);
                }
            }
            _ => p.raw_data = bytes.to_vec(),
        }
        Ok(p)
    }

    fn node(
        &mut self,
        g: &Graph,
        id: NodeId,
        name_of: &HashMap<ValueRef, String>,
        body_outer: &HashSet<String>,
        graph_label: &str,
    ) -> Result<NodeProto, OnnxError> {
        let node = g.node(id);
        let label = node_label(g, id, graph_label);
        let mut np = NodeProto::new();
        np.name = node.name.clone();
        np.output = (0..node.outputs.len()).map(|p| name_of[&ValueRef::new(id, p as u32)].clone()).collect();
        if let Op::Constant(t) = &node.op {
            self.note_dtype(t.dtype());
            np.op_type = "Constant".to_string();
            np.attribute.push(self.attr("value", &Attr::Tensor(t.clone()), &[], body_outer, &label)?);
            return Ok(np);
        }
        np.op_type = node.op.op_type().to_string();
        np.domain = node.op.domain().to_string();
        let inputs = g.node_inputs(id);
        let ncap = node.op.subgraphs().first().map_or(0, |b| b.captures().len());
        if inputs.len() < ncap {
            return Err(
                self.err(format!("node {label}: its bodies capture {ncap} values but it has {} inputs", inputs.len()))
            );
        }
        let regular = inputs.len() - ncap;
        let mut captures = Vec::with_capacity(ncap);
        for (i, v) in inputs[regular..].iter().enumerate() {
            let v = v.ok_or_else(|| self.err(format!("node {label}: captured value {i} is not connected")))?;
            captures.push(name_of[&v].clone());
        }
        np.input = inputs[..regular].iter().map(|v| v.map(|v| name_of[&v].clone()).unwrap_or_default()).collect();
        let attrs = node.op.attrs();
        for (k, a) in &attrs {
            np.attribute.push(self.attr(k, a, &captures, body_outer, &label)?);
        }
        if let Op::Cast(c) = &node.op {
            self.note_dtype(c.to);
        }
        if np.domain.is_empty() {
            self.reqs.push(NodeReq {
                label,
                op: np.op_type.clone(),
                attrs: attrs.keys().cloned().collect(),
                inputs: np.input.len(),
                outputs: np.output.len(),
            });
        } else {
            self.domains.insert(np.domain.clone(), ());
        }
        Ok(np)
    }

    fn attr(
        &mut self,
        name: &str,
        a: &Attr,
        captures: &[String],
        body_outer: &HashSet<String>,
        label: &str,
    ) -> Result<AttributeProto, OnnxError> {
        let mut p = AttributeProto::new();
        p.name = name.to_string();
        let kind = match a {
            Attr::Float(f) => {
                p.f = *f;
                AttributeType::FLOAT
            }
            Attr::Int(i) => {
                p.i = *i;
                AttributeType::INT
            }
            Attr::String(s) => {
                p.s = s.as_bytes().to_vec();
                AttributeType::STRING
            }
            Attr::Floats(v) => {
                p.floats = v.clone();
                AttributeType::FLOATS
            }
            Attr::Ints(v) => {
                p.ints = v.clone();
                AttributeType::INTS
            }
            Attr::Strings(v) => {
                p.strings = v.iter().map(|s| s.as_bytes().to_vec()).collect();
                AttributeType::STRINGS
            }
            Attr::Tensor(t) => {
                self.note_tensor(t);
                p.t = Some(tensor_to_proto(t, "")).into();
                AttributeType::TENSOR
            }
            Attr::Tensors(ts) => {
                for t in ts {
                    self.note_tensor(t);
                }
                p.tensors = ts.iter().map(|t| tensor_to_proto(t, "")).collect();
                AttributeType::TENSORS
            }
            Attr::Graph(b) => {
                let gl = format!("body '{name}' of node {label}");
                p.g = Some(self.graph(b, body_outer, captures, false, &gl)?).into();
                AttributeType::GRAPH
            }
            Attr::Graphs(bs) => {
                for (i, b) in bs.iter().enumerate() {
                    let gl = format!("body '{name}[{i}]' of node {label}");
                    p.graphs.push(self.graph(b, body_outer, captures, false, &gl)?);
                }
                AttributeType::GRAPHS
            }
            Attr::Type(t) => {
                self.note_type(t);
                let tp = type_to_proto(t)
                    .ok_or_else(|| self.err(format!("node {label}: type attribute '{name}' is unknown")))?;
                p.tp = Some(tp).into();
                AttributeType::TYPE_PROTO
            }
        };
        p.type_ = kind.into();
        Ok(p)
    }

    fn note_tensor(&mut self, t: &Tensor) {
        self.note_dtype(t.dtype());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use sharc_ir::{Attrs, Dim, Op, Tensor, Weight};

    fn opset_of(bytes: &[u8]) -> (i64, i64) {
        let m = ModelProto::parse_from_bytes(bytes).unwrap();
        (m.opset_import.iter().find(|o| o.domain.is_empty()).unwrap().version, m.ir_version)
    }

    fn one_op(op: Op, inputs: usize) -> Graph {
        let mut g = Graph::new("g");
        let ty = Type::tensor(DType::F32, vec![Dim::Fixed(2)]);
        let ins: Vec<ValueRef> = (0..inputs).map(|i| g.add_input(format!("x{i}"), ty.clone())).collect();
        let y = g.add_op(op, &ins, ty);
        g.add_output("y", y);
        g
    }

    #[cfg(unix)]
    #[test]
    fn written_files_get_the_permissions_of_any_new_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut g = one_op(Op::MatMul, 2);
        let w = g.add_weight(Weight::from_tensor("w", Tensor::from_vec(&[64], vec![1.0f32; 64])));
        g.add_output("w_out", w);
        let opts = ExportOptions { external_data: true, external_threshold: 0, ..ExportOptions::default() };
        export_file(&g, dir.path().join("m.onnx"), &opts).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        assert_eq!(mode(&dir.path().join("m.onnx")), mode(&plain));
        assert_eq!(mode(&dir.path().join("m.onnx.data")), mode(&plain));
    }

    #[test]
    fn opset_is_the_smallest_that_accepts_every_node() {
        let g = one_op(Op::MatMul, 2);
        assert_eq!(opset_of(&export_bytes(&g, &ExportOptions::default()).unwrap()), (18, 8));
        let gelu = Op::from_onnx_default_domain("Gelu", Attrs::new()).unwrap().unwrap();
        assert_eq!(opset_of(&export_bytes(&one_op(gelu, 1), &ExportOptions::default()).unwrap()), (20, 9));
        let attn = Op::from_onnx_default_domain("Attention", Attrs::new()).unwrap().unwrap();
        assert_eq!(opset_of(&export_bytes(&one_op(attn.clone(), 3), &ExportOptions::default()).unwrap()), (23, 11));
        // The seventh input (nonpad_kv_seqlen) arrived in opset 24.
        assert_eq!(opset_of(&export_bytes(&one_op(attn, 7), &ExportOptions::default()).unwrap()), (24, 12));
        let gn = Op::from_onnx_default_domain("GroupNormalization", {
            let mut a = Attrs::new();
            a.insert("num_groups".into(), Attr::Int(1));
            a
        })
        .unwrap()
        .unwrap();
        assert_eq!(opset_of(&export_bytes(&one_op(gn, 3), &ExportOptions::default()).unwrap()).0, 21);

        // A float8 weight needs opset 19 (and so IR 9).
        let mut g = one_op(Op::MatMul, 2);
        let w = g.add_weight(Weight::from_tensor("w", Tensor::from_codes(DType::F8E4M3FN, &[2], vec![1, 2]).unwrap()));
        g.add_output("w_out", w);
        assert_eq!(opset_of(&export_bytes(&g, &ExportOptions::default()).unwrap()), (19, 9));

        // The model's own newer opset is kept.
        let mut g = one_op(Op::MatMul, 2);
        g.meta.opset_imports = vec![(String::new(), 22), ("ai.onnx.ml".into(), 3)];
        let m = ModelProto::parse_from_bytes(&export_bytes(&g, &ExportOptions::default()).unwrap()).unwrap();
        let ops: Vec<(String, i64)> = m.opset_import.iter().map(|o| (o.domain.clone(), o.version)).collect();
        assert_eq!(ops, vec![(String::new(), 22), ("ai.onnx.ml".into(), 3)]);
        assert_eq!(m.ir_version, 10);
    }

    #[test]
    fn malformed_graphs_are_refused() {
        let mut g = one_op(Op::MatMul, 2);
        let y = g.outputs()[0].value;
        // A dangling edge: the Input feeding the MatMul is removed.
        let x0 = g.inputs()[0];
        g.remove_node(x0);
        g.add_node(
            Op::Identity,
            "",
            &[Some(ValueRef::new(y.node, 5))],
            vec![sharc_ir::ValueInfo::new("z", Type::Unknown)],
        );
        let e = export_bytes(&g, &ExportOptions::default()).unwrap_err().to_string();
        assert!(e.contains("not well formed"), "{e}");
    }

    #[test]
    fn unknown_attributes_make_export_fail_clearly() {
        let mut a = Attrs::new();
        a.insert("bogus".into(), Attr::Int(1));
        let op = Op::Opaque(sharc_ir::Opaque { domain: String::new(), op_type: "Relu".into(), attrs: a });
        let e = export_bytes(&one_op(op, 1), &ExportOptions::default()).unwrap_err().to_string();
        assert!(e.contains("attribute 'bogus' is not part of the op"), "{e}");
    }

    #[test]
    fn local_functions_must_stay_compatible() {
        let f = |op: &str, v: i64| {
            let mut f = FunctionProto::new();
            f.name = "F".into();
            f.domain = "custom".into();
            f.node.push(node(op, &["x"], &["y"], vec![]));
            let mut o = OperatorSetIdProto::new();
            o.version = v;
            f.opset_import.push(o);
            f
        };
        assert!(check_function_opset(&f("Relu", 17), 18).is_ok(), "Relu did not change between 17 and 18");
        let e = check_function_opset(&f("ReduceMean", 17), 18).unwrap_err();
        assert!(e.contains("changed in opset 18"), "{e}");
        assert!(check_function_opset(&f("ReduceMean", 18), 20).is_ok());
    }
}

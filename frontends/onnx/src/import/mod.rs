//! ONNX → IR.
//!
//! The importer walks the model's graph once, in topological order, keeping
//! a stack of scopes (one per graph being built: the main graph, and the
//! bodies of control-flow nodes while they are built). A name that a body
//! uses but does not define is looked up in the enclosing scopes and becomes
//! a *capture* (see `sharc_ir::op` control-flow docs): the body gets a
//! capture input, created the first time the name is used, and the owning
//! node gets the outer value as an extra trailing input. Because captures are
//! created in order of first use, and export writes nodes in that same
//! order, import → export → import reproduces the same capture order.
//!
//! Old opsets are rewritten into the forms of recent ones (see [`legacy`]),
//! so the IR only ever sees one version of each op.

mod legacy;

use crate::OnnxError;
use crate::external::ExternalData;
use crate::tensor::{decode_tensor, densify, shape_of};
use crate::types::{SymbolGen, collect_dim_params, type_from_proto};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::{AttributeProto, GraphProto, Message, ModelProto, NodeProto, TensorProto};
use sharc_ir::{
    Attr, Attrs, DType, Graph, MappedFile, Metadata, NodeId, Op, Opaque, Subgraph, Tensor, Type, ValueInfo, ValueRef,
    Weight,
};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

/// Key under which serialized model-local functions are kept in
/// [`Metadata::preserved`], one entry per function, in model order.
pub const PRESERVED_FUNCTION: &str = "onnx.function";
/// Key under which serialized training info is kept in [`Metadata::preserved`].
pub const PRESERVED_TRAINING_INFO: &str = "onnx.training_info";

/// Imports an ONNX model file. External data is looked up next to it.
///
/// The result has passed [`sharc_ir::verify()`]. Old opsets are normalised to
/// the forms of recent ones; ops that sharc does not model (and every op of
/// another domain) become [`Op::Opaque`] with their attributes kept.
pub fn import_file(path: impl AsRef<Path>) -> Result<Graph, OnnxError> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|e| OnnxError::io(path, "cannot open the model", e))?;
    let len = file.metadata().map_err(|e| OnnxError::io(path, "cannot read the model", e))?.len();
    let base = path.parent().unwrap_or(Path::new("."));
    let name = path.display().to_string();
    if len == 0 {
        return Err(OnnxError::decode(&name, "model", "the file is empty"));
    }
    // SAFETY: read-only mapping. As with every memory-mapped model loader,
    // the file must not be truncated while the graph uses its weights.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| OnnxError::io(path, "cannot map the model", e))?;
    let mapped = Arc::new(MappedFile { path: path.to_path_buf(), map });
    // Large weights stay in the mapped file: decode a copy of the model
    // without them, and point the weights at their bytes.
    match crate::scan::strip_initializer_data(&mapped.map, MIN_MAPPED_BYTES) {
        Some(stripped) => {
            let inline = InlineData { file: mapped.clone(), ranges: stripped.raw_ranges };
            import_impl(&stripped.bytes, Some(base), name, Some(inline))
        }
        None => import_impl(&mapped.map, Some(base), name, None),
    }
}

/// Initializer payloads of at least this many bytes are not copied out of
/// a model file but mapped.
const MIN_MAPPED_BYTES: usize = 1024;

/// Where the stripped `raw_data` of the main graph's initializers is.
struct InlineData {
    file: Arc<MappedFile>,
    ranges: Vec<Option<(usize, usize)>>,
}

/// Imports a model from bytes. `base_dir` is the folder that external data
/// locations are relative to; without it, a model that uses external data
/// is rejected with an error.
pub fn import_bytes(bytes: &[u8], base_dir: Option<&Path>) -> Result<Graph, OnnxError> {
    import_impl(bytes, base_dir, "<memory>".to_string(), None)
}

fn import_impl(
    bytes: &[u8],
    base_dir: Option<&Path>,
    file: String,
    inline: Option<InlineData>,
) -> Result<Graph, OnnxError> {
    let model = ModelProto::parse_from_bytes(bytes).map_err(|e| OnnxError::decode(&file, "model", e))?;
    let graph_proto = model.graph.as_ref().ok_or_else(|| OnnxError::model(&file, "the model has no graph"))?;
    if let Some(i) = &inline
        && i.ranges.len() != graph_proto.initializer.len()
    {
        return Err(OnnxError::model(&file, "the initializer list could not be located in the file"));
    }

    let mut opsets: HashMap<String, i64> = HashMap::new();
    for o in &model.opset_import {
        let domain = canonical_domain(&o.domain).to_string();
        if opsets.insert(domain.clone(), o.version).is_some() {
            return Err(OnnxError::model(&file, format!("the opset of domain '{}' is imported twice", o.domain)));
        }
    }
    let default_opset = match opsets.get("") {
        Some(&v) => v,
        // IR versions before 3 had no opset imports; they mean opset 1.
        None if model.ir_version < 3 => 1,
        None => 0,
    };

    let mut params = HashSet::new();
    collect_graph_dim_params(graph_proto, &mut params, 0);
    let mut imp = Importer {
        file: file.clone(),
        ext: ExternalData::new(base_dir),
        inline,
        opsets,
        default_opset,
        syms: SymbolGen::avoiding(params),
        free_cache: HashMap::new(),
    };
    let mut scopes = Vec::new();
    let mut g = imp.build_graph(&mut scopes, graph_proto, None)?;
    g.meta = metadata(&model, &file)?;
    sharc_ir::verify(&g).map_err(|e| OnnxError::Verify { file: file.clone(), message: e.to_string() })?;
    Ok(g)
}

/// `ai.onnx` is an alias of the default domain.
pub(crate) fn canonical_domain(d: &str) -> &str {
    if d == "ai.onnx" { "" } else { d }
}

fn metadata(model: &ModelProto, file: &str) -> Result<Metadata, OnnxError> {
    let mut meta = Metadata {
        producer_name: model.producer_name.clone(),
        producer_version: model.producer_version.clone(),
        domain: model.domain.clone(),
        model_version: model.model_version,
        doc_string: model.doc_string.clone(),
        ir_version: model.ir_version,
        opset_imports: model.opset_import.iter().map(|o| (o.domain.clone(), o.version)).collect(),
        props: model.metadata_props.iter().map(|p| (p.key.clone(), p.value.clone())).collect(),
        preserved: Vec::new(),
    };
    for f in &model.functions {
        let bytes =
            f.write_to_bytes().map_err(|e| OnnxError::model(file, format!("local function '{}': {e}", f.name)))?;
        meta.preserved.push((PRESERVED_FUNCTION.to_string(), bytes));
    }
    for t in &model.training_info {
        let bytes = t.write_to_bytes().map_err(|e| OnnxError::model(file, format!("training info: {e}")))?;
        meta.preserved.push((PRESERVED_TRAINING_INFO.to_string(), bytes));
    }
    Ok(meta)
}

fn collect_graph_dim_params(g: &GraphProto, out: &mut HashSet<String>, depth: usize) {
    if depth > 256 {
        return;
    }
    for vi in g.input.iter().chain(&g.output).chain(&g.value_info) {
        if let Some(t) = vi.type_.as_ref() {
            collect_dim_params(t, out);
        }
    }
    for n in &g.node {
        for a in &n.attribute {
            if let Some(t) = a.tp.as_ref() {
                collect_dim_params(t, out);
            }
            for sub in a.g.as_ref().into_iter().chain(&a.graphs) {
                collect_graph_dim_params(sub, out, depth + 1);
            }
        }
    }
}

/// The graphs held by a node's attributes, in attribute order.
fn node_bodies(n: &NodeProto) -> impl Iterator<Item = &GraphProto> {
    n.attribute.iter().flat_map(|a| a.g.as_ref().into_iter().chain(&a.graphs))
}

/// One graph under construction.
struct Scope {
    graph: Graph,
    /// ONNX name → value, for everything defined (or captured) so far.
    names: HashMap<String, ValueRef>,
    /// Declared types (value_info and graph outputs) by name.
    types: HashMap<String, Type>,
    /// Names consumed somewhere in this graph (node inputs, bodies, outputs).
    used: HashSet<String>,
    /// Where this graph is, for messages.
    label: String,
}

/// A node after attribute conversion and input resolution, before it is
/// turned into IR nodes.
pub(crate) struct NodeIn {
    pub name: String,
    pub op_type: String,
    pub domain: String,
    /// The opset version of the node's domain.
    pub version: i64,
    /// Regular inputs by port (`None` for an empty name).
    pub inputs: Vec<Option<ValueRef>>,
    /// Outer values captured by the node's bodies, after the regular inputs.
    pub captures: Vec<ValueRef>,
    pub attrs: Attrs,
    /// ONNX output names (`""` for an output that is not requested).
    pub outputs: Vec<String>,
}

struct Importer {
    file: String,
    ext: ExternalData,
    /// Main-graph initializer payloads left in the mapped model file.
    inline: Option<InlineData>,
    opsets: HashMap<String, i64>,
    default_opset: i64,
    syms: SymbolGen,
    /// Free variables of each body, computed once.
    free_cache: HashMap<*const GraphProto, Rc<Vec<String>>>,
}

impl Importer {
    fn model_err(&self, m: impl Into<String>) -> OnnxError {
        OnnxError::model(&self.file, m)
    }

    /// Names a graph uses but does not define, recursively through nested
    /// bodies, in order of first appearance.
    fn free_vars(&mut self, g: &GraphProto) -> Rc<Vec<String>> {
        let key = g as *const GraphProto;
        if let Some(v) = self.free_cache.get(&key) {
            return v.clone();
        }
        let mut defined: HashSet<&str> = HashSet::new();
        defined.extend(g.input.iter().map(|v| v.name.as_str()));
        defined.extend(g.initializer.iter().map(|t| t.name.as_str()));
        defined.extend(g.sparse_initializer.iter().filter_map(|s| s.values.as_ref()).map(|t| t.name.as_str()));
        for n in &g.node {
            defined.extend(n.output.iter().map(|s| s.as_str()));
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut note = |name: &str, out: &mut Vec<String>| {
            if !name.is_empty() && !defined.contains(name) && seen.insert(name.to_string()) {
                out.push(name.to_string());
            }
        };
        for n in &g.node {
            for i in &n.input {
                note(i, &mut out);
            }
            for sub in node_bodies(n) {
                for v in self.free_vars(sub).iter() {
                    note(v, &mut out);
                }
            }
        }
        for o in &g.output {
            note(&o.name, &mut out);
        }
        let rc = Rc::new(out);
        self.free_cache.insert(key, rc.clone());
        rc
    }

    /// Resolves a name in the innermost scope, capturing it from enclosing
    /// scopes when needed.
    fn resolve(scopes: &mut [Scope], name: &str) -> Option<ValueRef> {
        let (last, outer) = scopes.split_last_mut()?;
        if let Some(v) = last.names.get(name) {
            return Some(*v);
        }
        if outer.is_empty() {
            return None;
        }
        let ov = Self::resolve(outer, name)?;
        let parent = outer.last().expect("outer is not empty");
        let ty = parent.graph.value_type(ov).clone();
        let v = last.graph.add_capture(name, ty);
        last.names.insert(name.to_string(), v);
        Some(v)
    }

    /// Builds the graph `gp`. `owner` is `None` for the main graph, or the
    /// label of the body (which attribute of which node).
    fn build_graph(
        &mut self,
        scopes: &mut Vec<Scope>,
        gp: &GraphProto,
        owner: Option<String>,
    ) -> Result<Graph, OnnxError> {
        let top = owner.is_none();
        let label = owner.unwrap_or_else(|| format!("graph '{}'", gp.name));
        let mut scope = Scope {
            graph: Graph::new(gp.name.clone()),
            names: HashMap::new(),
            types: HashMap::new(),
            used: HashSet::new(),
            label: label.clone(),
        };
        // Reserve every name this graph defines or captures, so that names
        // invented for helper nodes never collide with them.
        for vi in gp.input.iter().chain(&gp.output) {
            scope.graph.reserve_name(&vi.name);
        }
        for t in &gp.initializer {
            scope.graph.reserve_name(&t.name);
        }
        for n in &gp.node {
            for o in &n.output {
                scope.graph.reserve_name(o);
            }
            for i in &n.input {
                scope.used.insert(i.clone());
            }
        }
        if !top {
            for v in self.free_vars(gp).iter() {
                scope.graph.reserve_name(v);
            }
        }
        for n in &gp.node {
            for sub in node_bodies(n) {
                scope.used.extend(self.free_vars(sub).iter().cloned());
            }
        }
        scope.used.extend(gp.output.iter().map(|o| o.name.clone()));
        for vi in gp.value_info.iter().chain(&gp.output) {
            if let Some(t) = vi.type_.as_ref() {
                // A declared type is only a hint for intermediate values: an
                // unsupported one is dropped rather than failing the import.
                if let Ok(ty) = type_from_proto(t, &mut self.syms) {
                    scope.types.insert(vi.name.clone(), ty);
                }
            }
        }

        let initializer_names: HashSet<&str> = gp
            .initializer
            .iter()
            .map(|t| t.name.as_str())
            .chain(gp.sparse_initializer.iter().filter_map(|s| s.values.as_ref()).map(|t| t.name.as_str()))
            .collect();
        for vi in &gp.input {
            if vi.name.is_empty() {
                return Err(self.model_err(format!("{label} has an input without a name")));
            }
            if initializer_names.contains(vi.name.as_str()) {
                if top {
                    // Old exporters list every initializer as a graph input
                    // too (IR < 4). Such an input has a default and is almost
                    // always a parameter, so it is imported as a weight and
                    // dropped from the inputs.
                    continue;
                }
                return Err(self.model_err(format!(
                    "{label}: body input '{}' is also an initializer, which sharc does not support",
                    vi.name
                )));
            }
            let ty = match vi.type_.as_ref() {
                Some(t) => type_from_proto(t, &mut self.syms)
                    .map_err(|m| self.model_err(format!("{label}: input '{}': {m}", vi.name)))?,
                None => Type::Unknown,
            };
            if scope.names.contains_key(&vi.name) {
                return Err(self.model_err(format!("{label}: input '{}' is listed twice", vi.name)));
            }
            let v = scope.graph.add_input(vi.name.clone(), ty);
            scope.names.insert(vi.name.clone(), v);
        }

        // Initializers: weights in the main graph, constants in bodies.
        for (i, t) in gp.initializer.iter().enumerate() {
            let inline =
                if top { self.inline.as_ref().and_then(|d| d.ranges[i].map(|r| (d.file.clone(), r))) } else { None };
            let value = self.initializer(&mut scope, t, top, inline)?;
            scope.names.insert(t.name.clone(), value);
        }
        for sp in &gp.sparse_initializer {
            let name = sp.values.as_ref().map(|v| v.name.clone()).unwrap_or_default();
            let dense = densify(sp, Some(&mut self.ext)).map_err(|m| OnnxError::tensor(&self.file, &name, m))?;
            let value = self.add_initializer_tensor(&mut scope, &name, dense, top)?;
            scope.names.insert(name, value);
        }

        let order = self.node_order(gp, &label)?;
        scopes.push(scope);
        let result = (|| {
            for &i in &order {
                self.import_node(scopes, &gp.node[i])?;
            }
            for o in &gp.output {
                if o.name.is_empty() {
                    return Err(self.model_err(format!("{label} has an output without a name")));
                }
                let v = Self::resolve(scopes, &o.name).ok_or_else(|| {
                    self.model_err(format!(
                        "{label}: output '{}' is not produced by any node, input or initializer",
                        o.name
                    ))
                })?;
                let scope = scopes.last_mut().expect("pushed above");
                if scope.graph.outputs().iter().any(|x| x.name == o.name) {
                    return Err(self.model_err(format!("{label}: output '{}' is listed twice", o.name)));
                }
                scope.graph.add_output(o.name.clone(), v);
            }
            Ok(())
        })();
        let scope = scopes.pop().expect("pushed above");
        result?;
        Ok(scope.graph)
    }

    fn initializer(
        &mut self,
        scope: &mut Scope,
        t: &TensorProto,
        top: bool,
        inline: Option<(Arc<MappedFile>, (usize, usize))>,
    ) -> Result<ValueRef, OnnxError> {
        if t.name.is_empty() {
            return Err(self.model_err(format!("{}: an initializer has no name", scope.label)));
        }
        if let (Some((file, (offset, len))), false) = (inline, ExternalData::is_external(t)) {
            // The raw bytes were left in the mapped model file.
            let terr = |m: String| OnnxError::tensor(&self.file, &t.name, m);
            let dtype = crate::tensor::dtype_from_code(t.data_type).map_err(terr)?;
            if dtype == DType::String {
                return Err(terr(
                    "is a string tensor stored in raw_data; ONNX requires string_data for strings".into(),
                ));
            }
            if t.segment.is_some() {
                return Err(terr("is stored in segments, which sharc does not support".into()));
            }
            let (shape, _) = shape_of(&t.dims).map_err(terr)?;
            let w = Weight::mapped(t.name.clone(), dtype, shape, file, offset, len).map_err(terr)?;
            return self.add_weight(scope, w);
        }
        if top && ExternalData::is_external(t) {
            // Large weights stay in the mapped file: no copy at import time.
            let dtype =
                crate::tensor::dtype_from_code(t.data_type).map_err(|m| OnnxError::tensor(&self.file, &t.name, m))?;
            let (shape, _) = shape_of(&t.dims).map_err(|m| OnnxError::tensor(&self.file, &t.name, m))?;
            let range = self.ext.locate(t).map_err(|m| OnnxError::tensor(&self.file, &t.name, m))?;
            let w = Weight::mapped(t.name.clone(), dtype, shape, range.file, range.offset, range.len)
                .map_err(|m| OnnxError::tensor(&self.file, &t.name, m))?;
            return self.add_weight(scope, w);
        }
        let tensor = decode_tensor(t, Some(&mut self.ext)).map_err(|m| OnnxError::tensor(&self.file, &t.name, m))?;
        self.add_initializer_tensor(scope, &t.name, tensor, top)
    }

    fn add_initializer_tensor(
        &mut self,
        scope: &mut Scope,
        name: &str,
        t: Tensor,
        top: bool,
    ) -> Result<ValueRef, OnnxError> {
        if name.is_empty() {
            return Err(self.model_err(format!("{}: an initializer has no name", scope.label)));
        }
        if scope.names.contains_key(name) {
            return Err(self.model_err(format!("{}: initializer '{name}' is defined twice", scope.label)));
        }
        if top {
            self.add_weight(scope, Weight::from_tensor(name, t))
        } else {
            let ty = Type::tensor(t.dtype(), sharc_ir::Shape::fixed(t.shape()));
            let id = scope.graph.add_node(Op::Constant(t), "", &[], vec![ValueInfo::new(name, ty)]);
            Ok(ValueRef::new(id, 0))
        }
    }

    fn add_weight(&mut self, scope: &mut Scope, w: Weight) -> Result<ValueRef, OnnxError> {
        let name = w.name.clone();
        if scope.names.contains_key(&name) {
            return Err(self.model_err(format!("{}: initializer '{name}' is defined twice", scope.label)));
        }
        let id = scope.graph.weights.add(w).map_err(|m| self.model_err(format!("{}: {m}", scope.label)))?;
        let v = scope.graph.weight_value(id);
        // The initializer's name was reserved up front (so helper nodes never
        // take it), which made `weight_value` pick a fresh one; the value
        // must keep the ONNX name so that printed IR and export match the file.
        scope.graph.value_info_mut(v).name = name;
        Ok(v)
    }

    /// The order in which to import the nodes: the file order when it is
    /// topological (as ONNX requires), otherwise a stable topological sort.
    /// Duplicate outputs and cycles are errors.
    fn node_order(&mut self, gp: &GraphProto, label: &str) -> Result<Vec<usize>, OnnxError> {
        let mut producer: HashMap<&str, usize> = HashMap::new();
        for (i, n) in gp.node.iter().enumerate() {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                if producer.insert(o.as_str(), i).is_some() {
                    return Err(self.model_err(format!(
                        "{label}: value '{o}' is produced by more than one node; ONNX graphs must assign each name once"
                    )));
                }
            }
        }
        let mut deps: Vec<Vec<usize>> = Vec::with_capacity(gp.node.len());
        let mut sorted = true;
        for (i, n) in gp.node.iter().enumerate() {
            let mut d: Vec<usize> = n.input.iter().filter_map(|x| producer.get(x.as_str()).copied()).collect();
            for sub in node_bodies(n) {
                d.extend(self.free_vars(sub).iter().filter_map(|x| producer.get(x.as_str()).copied()));
            }
            d.sort_unstable();
            d.dedup();
            if d.iter().any(|&p| p >= i) {
                sorted = false;
            }
            deps.push(d);
        }
        if sorted {
            return Ok((0..gp.node.len()).collect());
        }
        let mut indeg: Vec<usize> = deps.iter().map(|d| d.len()).collect();
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); gp.node.len()];
        for (i, d) in deps.iter().enumerate() {
            for &p in d {
                users[p].push(i);
            }
        }
        let mut ready: BinaryHeap<std::cmp::Reverse<usize>> =
            (0..gp.node.len()).filter(|&i| indeg[i] == 0).map(std::cmp::Reverse).collect();
        let mut order = Vec::with_capacity(gp.node.len());
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            order.push(i);
            for &u in &users[i] {
                indeg[u] -= 1;
                if indeg[u] == 0 {
                    ready.push(std::cmp::Reverse(u));
                }
            }
        }
        if order.len() != gp.node.len() {
            let stuck = (0..gp.node.len()).find(|&i| indeg[i] > 0).expect("some node is left");
            let n = &gp.node[stuck];
            return Err(self.model_err(format!(
                "{label}: the nodes form a cycle through node '{}' ({}); ONNX graphs must be acyclic",
                node_name(n),
                n.op_type
            )));
        }
        Ok(order)
    }

    fn node_err(&self, scopes: &[Scope], n: &NodeProto, message: impl Into<String>) -> OnnxError {
        let op = if n.domain.is_empty() || n.domain == "ai.onnx" {
            n.op_type.clone()
        } else {
            format!("{}.{}", n.domain, n.op_type)
        };
        OnnxError::Node {
            file: self.file.clone(),
            node: node_name(n).to_string(),
            op,
            graph: scopes.last().map(|s| s.label.clone()).unwrap_or_default(),
            message: message.into(),
        }
    }

    fn import_node(&mut self, scopes: &mut Vec<Scope>, n: &NodeProto) -> Result<(), OnnxError> {
        let domain = canonical_domain(&n.domain).to_string();
        let version = if domain.is_empty() {
            if self.default_opset == 0 {
                return Err(self.node_err(
                    scopes,
                    n,
                    "the model imports no opset for the default ONNX domain; add an opset_import entry",
                ));
            }
            self.default_opset
        } else {
            self.opsets.get(&domain).copied().unwrap_or(1)
        };

        // Regular inputs first, then the bodies: both may create captures in
        // the current scope, and this order is what export reproduces.
        let mut inputs = Vec::with_capacity(n.input.len());
        for name in &n.input {
            if name.is_empty() {
                inputs.push(None);
                continue;
            }
            match Self::resolve(scopes, name) {
                Some(v) => inputs.push(Some(v)),
                None => {
                    return Err(self.node_err(
                        scopes,
                        n,
                        format!("input '{name}' is not produced by any node, graph input or initializer"),
                    ));
                }
            }
        }

        let mut aps: Vec<&AttributeProto> = n.attribute.iter().collect();
        aps.sort_by(|a, b| a.name.cmp(&b.name));
        let mut attrs = Attrs::new();
        for ap in aps {
            if ap.name.is_empty() {
                return Err(self.node_err(scopes, n, "has an attribute without a name"));
            }
            if attrs.contains_key(&ap.name) {
                return Err(self.node_err(scopes, n, format!("attribute '{}' is given twice", ap.name)));
            }
            let a = self.attribute(scopes, n, ap)?;
            attrs.insert(ap.name.clone(), a);
        }

        // The bodies' captures, unified: every body captures the same outer
        // values, in order of first use across the bodies.
        let mut union: Vec<String> = Vec::new();
        for a in attrs.values() {
            for b in attr_graphs(a) {
                for &c in b.captures() {
                    let name = &b.node(c).outputs[0].name;
                    if !union.contains(name) {
                        union.push(name.clone());
                    }
                }
            }
        }
        let mut captures = Vec::with_capacity(union.len());
        for name in &union {
            let v = Self::resolve(scopes, name).ok_or_else(|| {
                self.node_err(scopes, n, format!("a body uses '{name}', which is not defined in any enclosing graph"))
            })?;
            captures.push(v);
        }
        if !union.is_empty() {
            let outer = &scopes.last().expect("a scope is open").graph;
            let types: Vec<Type> = captures.iter().map(|&v| outer.value_type(v).clone()).collect();
            for a in attrs.values_mut() {
                for b in attr_graphs_mut(a) {
                    align_captures(b, &union, &types);
                }
            }
        }

        let node_in = NodeIn {
            name: n.name.clone(),
            op_type: n.op_type.clone(),
            domain,
            version,
            inputs,
            captures,
            attrs,
            outputs: n.output.clone(),
        };
        let outputs = {
            let scope = scopes.last_mut().expect("a scope is open");
            for o in node_in.outputs.iter().filter(|o| !o.is_empty()) {
                if scope.names.contains_key(o) {
                    let what = if scope.graph.value_by_name(o).is_some_and(|v| scope.graph.captures().contains(&v.node))
                    {
                        "a value of an enclosing graph, which ONNX does not allow to be redefined"
                    } else {
                        "already defined in this graph"
                    };
                    let message = format!("output '{o}' is {what}");
                    return Err(self.node_err(scopes, n, message));
                }
            }
            let mut em = Emitter { graph: &mut scope.graph, types: &scope.types, used: &scope.used };
            match lower(&mut em, node_in) {
                Ok(o) => o,
                Err(m) => return Err(self.node_err(scopes, n, m)),
            }
        };
        let scope = scopes.last_mut().expect("a scope is open");
        for (name, v) in n.output.iter().zip(outputs) {
            if let (false, Some(v)) = (name.is_empty(), v) {
                scope.names.insert(name.clone(), v);
            }
        }
        Ok(())
    }

    fn attribute(&mut self, scopes: &mut Vec<Scope>, n: &NodeProto, ap: &AttributeProto) -> Result<Attr, OnnxError> {
        let err =
            |this: &Self, scopes: &[Scope], m: String| this.node_err(scopes, n, format!("attribute '{}' {m}", ap.name));
        if !ap.ref_attr_name.is_empty() {
            return Err(err(
                self,
                scopes,
                format!("refers to function attribute '{}', which is only valid inside a function", ap.ref_attr_name),
            ));
        }
        let kind = match ap.type_.enum_value() {
            Ok(AttributeType::UNDEFINED) => infer_attr_kind(ap).ok_or_else(|| {
                err(self, scopes, "has no type and no value from which the type could be told".to_string())
            })?,
            Ok(k) => k,
            Err(code) => return Err(err(self, scopes, format!("has unknown attribute type {code}"))),
        };
        let utf8 =
            |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| "holds a string that is not valid UTF-8".to_string());
        let tensor = |this: &mut Self, t: &TensorProto| -> Result<Tensor, String> {
            decode_tensor(t, Some(&mut this.ext)).map_err(|m| format!("holds a tensor that {m}"))
        };
        let r: Result<Attr, String> = match kind {
            AttributeType::FLOAT => Ok(Attr::Float(ap.f)),
            AttributeType::INT => Ok(Attr::Int(ap.i)),
            AttributeType::STRING => utf8(&ap.s).map(Attr::String),
            AttributeType::FLOATS => Ok(Attr::Floats(ap.floats.clone())),
            AttributeType::INTS => Ok(Attr::Ints(ap.ints.clone())),
            AttributeType::STRINGS => ap.strings.iter().map(|s| utf8(s)).collect::<Result<_, _>>().map(Attr::Strings),
            AttributeType::TENSOR => match ap.t.as_ref() {
                Some(t) => tensor(self, t).map(Attr::Tensor),
                None => Err("is a tensor attribute without a tensor".to_string()),
            },
            AttributeType::TENSORS => {
                ap.tensors.iter().map(|t| tensor(self, t)).collect::<Result<_, _>>().map(Attr::Tensors)
            }
            // Sparse tensors are densified: the IR has one tensor kind.
            AttributeType::SPARSE_TENSOR => match ap.sparse_tensor.as_ref() {
                Some(sp) => {
                    densify(sp, Some(&mut self.ext)).map(Attr::Tensor).map_err(|m| format!("holds a tensor that {m}"))
                }
                None => Err("is a sparse tensor attribute without a tensor".to_string()),
            },
            AttributeType::SPARSE_TENSORS => ap
                .sparse_tensors
                .iter()
                .map(|sp| densify(sp, Some(&mut self.ext)).map_err(|m| format!("holds a tensor that {m}")))
                .collect::<Result<_, _>>()
                .map(Attr::Tensors),
            AttributeType::TYPE_PROTO => match ap.tp.as_ref() {
                Some(t) => type_from_proto(t, &mut self.syms).map(Attr::Type),
                None => Err("is a type attribute without a type".to_string()),
            },
            AttributeType::TYPE_PROTOS => Err("is a list of types, which sharc does not support".to_string()),
            AttributeType::GRAPH => {
                let Some(g) = ap.g.as_ref() else {
                    return Err(err(self, scopes, "is a graph attribute without a graph".to_string()));
                };
                let label = self.body_label(scopes, n, &ap.name);
                return Ok(Attr::Graph(Subgraph::new(self.build_graph(scopes, g, Some(label))?)));
            }
            AttributeType::GRAPHS => {
                let mut gs = Vec::with_capacity(ap.graphs.len());
                for (i, g) in ap.graphs.iter().enumerate() {
                    let label = self.body_label(scopes, n, &format!("{}[{i}]", ap.name));
                    gs.push(Subgraph::new(self.build_graph(scopes, g, Some(label))?));
                }
                return Ok(Attr::Graphs(gs));
            }
            AttributeType::UNDEFINED => Err("has no type".to_string()),
        };
        r.map_err(|m| err(self, scopes, m))
    }

    fn body_label(&self, scopes: &[Scope], n: &NodeProto, attr: &str) -> String {
        let parent = scopes.last().map(|s| s.label.as_str()).unwrap_or("");
        format!("body '{attr}' of node '{}' ({}) in {parent}", node_name(n), n.op_type)
    }
}

/// Old writers leave `type` unset; the filled field tells the kind.
fn infer_attr_kind(a: &AttributeProto) -> Option<AttributeType> {
    Some(if a.t.is_some() {
        AttributeType::TENSOR
    } else if a.g.is_some() {
        AttributeType::GRAPH
    } else if a.sparse_tensor.is_some() {
        AttributeType::SPARSE_TENSOR
    } else if a.tp.is_some() {
        AttributeType::TYPE_PROTO
    } else if !a.floats.is_empty() {
        AttributeType::FLOATS
    } else if !a.ints.is_empty() {
        AttributeType::INTS
    } else if !a.strings.is_empty() {
        AttributeType::STRINGS
    } else if !a.tensors.is_empty() {
        AttributeType::TENSORS
    } else if !a.graphs.is_empty() {
        AttributeType::GRAPHS
    } else if !a.s.is_empty() {
        AttributeType::STRING
    } else if a.f != 0.0 {
        AttributeType::FLOAT
    } else if a.i != 0 {
        AttributeType::INT
    } else {
        return None;
    })
}

pub(crate) fn node_name(n: &NodeProto) -> &str {
    if !n.name.is_empty() { &n.name } else { n.output.iter().find(|o| !o.is_empty()).map(|s| s.as_str()).unwrap_or("") }
}

fn attr_graphs(a: &Attr) -> Vec<&Subgraph> {
    match a {
        Attr::Graph(g) => vec![g],
        Attr::Graphs(gs) => gs.iter().collect(),
        _ => Vec::new(),
    }
}

fn attr_graphs_mut(a: &mut Attr) -> Vec<&mut Subgraph> {
    match a {
        Attr::Graph(g) => vec![g],
        Attr::Graphs(gs) => gs.iter_mut().collect(),
        _ => Vec::new(),
    }
}

/// Gives a body one capture per name in `union`, in that order, adding
/// (unused) captures for names only other bodies use.
fn align_captures(b: &mut Graph, union: &[String], types: &[Type]) {
    let existing: HashMap<String, NodeId> =
        b.captures().iter().map(|&c| (b.node(c).outputs[0].name.clone(), c)).collect();
    let mut list = Vec::with_capacity(union.len());
    for (name, ty) in union.iter().zip(types) {
        let id = match existing.get(name) {
            Some(&id) => id,
            None => {
                // A body-local value may already use the name; the capture
                // is unused here, so any free name will do.
                let local_clash = b.node_ids().any(|id| b.node(id).outputs.iter().any(|o| &o.name == name));
                let cname = if local_clash { b.fresh_name(name) } else { name.clone() };
                b.add_capture(cname, ty.clone()).node
            }
        };
        list.push(id);
    }
    b.set_captures(list);
}

/// Creates IR nodes in one graph, for the lowering of one ONNX node.
pub(crate) struct Emitter<'a> {
    pub graph: &'a mut Graph,
    /// Declared types of named values.
    pub types: &'a HashMap<String, Type>,
    /// Names consumed anywhere in this graph.
    pub used: &'a HashSet<String>,
}

impl Emitter<'_> {
    /// The declared type of an ONNX name, or unknown.
    pub fn declared(&self, name: &str) -> Type {
        self.types.get(name).cloned().unwrap_or(Type::Unknown)
    }

    /// A value's dtype, if known.
    pub fn dtype(&self, v: ValueRef) -> Option<DType> {
        self.graph.value_type(v).dtype()
    }

    /// A value's rank, if known.
    pub fn rank(&self, v: ValueRef) -> Option<usize> {
        self.graph.value_type(v).shape().map(|s| s.rank())
    }

    /// The tensor of a Constant or Weight value, if it is one.
    pub fn constant(&self, v: ValueRef) -> Option<Tensor> {
        match &self.graph.node(v.node).op {
            Op::Constant(t) => Some(t.clone()),
            Op::Weight(id) => self.graph.weights.get(*id).map(|w| w.tensor().clone()),
            _ => None,
        }
    }

    /// A one-output helper node with a fresh name built from `hint`.
    pub fn op(&mut self, op: Op, inputs: &[Option<ValueRef>], hint: &str) -> ValueRef {
        let name = self.graph.fresh_name(hint);
        let id = self.graph.add_node(op, "", inputs, vec![ValueInfo::new(name, Type::Unknown)]);
        ValueRef::new(id, 0)
    }

    /// A constant helper node.
    pub fn constant_node(&mut self, hint: &str, t: Tensor) -> ValueRef {
        let name = self.graph.fresh_name(hint);
        let ty = Type::tensor(t.dtype(), sharc_ir::Shape::fixed(t.shape()));
        let id = self.graph.add_node(Op::Constant(t), "", &[], vec![ValueInfo::new(name, ty)]);
        ValueRef::new(id, 0)
    }

    /// A 1-D int64 constant.
    pub fn ints(&mut self, hint: &str, v: &[i64]) -> ValueRef {
        self.constant_node(hint, Tensor::from_vec(&[v.len()], v.to_vec()))
    }

    /// The node that computes an ONNX node's outputs: output names are kept
    /// (with declared types), empty names in the middle get fresh names, and
    /// trailing empty ones are dropped unless `keep_all`.
    pub fn main_node(
        &mut self,
        op: Op,
        name: &str,
        inputs: &[Option<ValueRef>],
        outputs: &[String],
        keep_all: bool,
    ) -> Result<Vec<Option<ValueRef>>, String> {
        let count =
            if keep_all { outputs.len() } else { outputs.iter().rposition(|o| !o.is_empty()).map_or(0, |i| i + 1) };
        if count == 0 && !matches!(op, Op::Opaque(_)) {
            // Only ops sharc does not know may exist for their side effects.
            return Err("the node has no outputs".to_string());
        }
        let hint = op.op_type().to_lowercase();
        let infos: Vec<ValueInfo> = outputs[..count]
            .iter()
            .map(|o| {
                if o.is_empty() {
                    ValueInfo::new(self.graph.fresh_name(&hint), Type::Unknown)
                } else {
                    ValueInfo::new(o.clone(), self.declared(o))
                }
            })
            .collect();
        let id = self.graph.add_node(op, name, inputs, infos);
        Ok(outputs
            .iter()
            .enumerate()
            .map(|(i, o)| (!o.is_empty() && i < count).then(|| ValueRef::new(id, i as u32)))
            .collect())
    }
}

/// Turns one ONNX node into IR nodes; returns the value of each ONNX output
/// (`None` for outputs that were not requested).
fn lower(em: &mut Emitter, mut n: NodeIn) -> Result<Vec<Option<ValueRef>>, String> {
    if n.domain.is_empty() {
        if n.op_type == "Constant" {
            return constant_node(em, n);
        }
        if let Some(done) = legacy::normalize(em, &mut n)? {
            return Ok(done);
        }
    }
    let op = typed_op(&n)?;
    // Split's output count is its split count, and control-flow outputs
    // correspond to body outputs: their positions must all stay.
    let keep_all =
        (n.domain.is_empty() && n.op_type == "Split") || op.as_ref().is_some_and(|o| !o.subgraphs().is_empty());
    let mut inputs = n.inputs;
    inputs.extend(n.captures.into_iter().map(Some));
    let op = match op {
        Some(op) => op,
        None => Op::Opaque(Opaque { domain: n.domain, op_type: n.op_type, attrs: n.attrs }),
    };
    em.main_node(op, &n.name, &inputs, &n.outputs, keep_all)
}

/// The typed op for a default-domain node, `None` when sharc does not model
/// the op (or the node is of another domain).
fn typed_op(n: &NodeIn) -> Result<Option<Op>, String> {
    if !n.domain.is_empty() {
        return Ok(None);
    }
    // Probe with no attributes: unmodelled ops answer `None` without the
    // (possibly large) attribute list being cloned.
    if matches!(Op::from_onnx_default_domain(&n.op_type, Attrs::new()), Ok(None)) {
        return Ok(None);
    }
    Op::from_onnx_default_domain(&n.op_type, n.attrs.clone())
        .map_err(|e| format!("{e}; the node does not match the ONNX definition of {} (opset {})", n.op_type, n.version))
}

fn constant_node(em: &mut Emitter, n: NodeIn) -> Result<Vec<Option<ValueRef>>, String> {
    if n.attrs.len() != 1 {
        let names: Vec<&str> = n.attrs.keys().map(|k| k.as_str()).collect();
        return Err(format!("a Constant needs exactly one value attribute, found {names:?}"));
    }
    if !n.inputs.is_empty() {
        return Err("a Constant takes no inputs".to_string());
    }
    let (key, value) = n.attrs.into_iter().next().expect("one attribute");
    let t = match (key.as_str(), value) {
        ("value" | "sparse_value", Attr::Tensor(t)) => t,
        ("value_float", Attr::Float(f)) => Tensor::scalar(f),
        ("value_floats", Attr::Floats(f)) => Tensor::from_vec(&[f.len()], f),
        ("value_int", Attr::Int(i)) => Tensor::scalar(i),
        ("value_ints", Attr::Ints(i)) => Tensor::from_vec(&[i.len()], i),
        ("value_string", Attr::String(s)) => Tensor::scalar(s),
        ("value_strings", Attr::Strings(s)) => Tensor::from_vec(&[s.len()], s),
        (k, a) => return Err(format!("attribute '{k}' of kind {} is not a Constant value", a.kind())),
    };
    let ty = Type::tensor(t.dtype(), sharc_ir::Shape::fixed(t.shape()));
    let out = n.outputs.first().filter(|o| !o.is_empty()).ok_or("a Constant needs an output name")?;
    if n.outputs.len() > 1 {
        return Err("a Constant has exactly one output".to_string());
    }
    let id = em.graph.add_node(Op::Constant(t), &n.name, &[], vec![ValueInfo::new(out.clone(), ty)]);
    Ok(vec![Some(ValueRef::new(id, 0))])
}

#[cfg(test)]
mod tests;

//! The printer. Output depends only on the graph's contents and its
//! [`Graph::topo_order`], so it is identical across runs and machines.

use super::literal::{format_elements, quote_str};
use super::{is_plain_ident, quote_name};
use crate::{Attr, Attrs, DType, Graph, Metadata, NodeId, Op, Shape, Tensor, Type, ValueRef, WeightId};
use std::collections::{HashMap, HashSet};
use std::fmt::Write;

/// Ops spelled like these words must be written with a domain qualifier:
/// the first three start special statements, and `loc` would read as the
/// previous node's location.
pub(crate) const KEYWORDS: &[&str] = &["const", "weight", "input", "loc"];

/// Typed-op attributes that hold a [`DType`] as its ONNX code; printed by name
/// (`to = f16`) because a bare code (`to = 10`) means nothing to a reader.
const DTYPE_ATTRS: &[&str] = &["to", "dtype", "output_datatype"];

const INDENT: &str = "  ";

/// Prints a graph in the IR text format. See the [module docs](super).
pub fn print(g: &Graph) -> String {
    let mut p = Printer { out: String::new(), hashes: HashMap::new() };
    if let Some(m) = meta_text(&g.meta) {
        p.out.push_str(&m);
        p.out.push('\n');
    }
    p.graph(g, 0);
    p.out.push('\n');
    p.out
}

struct Printer {
    out: String,
    /// Content hashes already computed, by weight address (hashing reads the
    /// whole tensor, and a shared weight is printed once per use).
    hashes: HashMap<(usize, WeightId), String>,
}

/// A type in text form.
pub(crate) fn type_text(t: &Type) -> String {
    match t {
        Type::Unknown => "?".to_string(),
        Type::Sequence(t) => format!("seq<{}>", type_text(t)),
        Type::Optional(t) => format!("opt<{}>", type_text(t)),
        Type::Tensor(tt) => match &tt.shape {
            None => format!("{}[*]", tt.dtype),
            Some(s) => format!("{}{}", tt.dtype, shape_text(s)),
        },
    }
}

fn shape_text(s: &Shape) -> String {
    let dims: Vec<String> = s
        .dims()
        .iter()
        .map(|d| match d {
            crate::Dim::Fixed(n) => n.to_string(),
            crate::Dim::Sym(s) if is_plain_ident(s) => s.clone(),
            crate::Dim::Sym(s) => quote_str(s),
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

fn tensor_type_text(dtype: DType, shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("{dtype}[{}]", dims.join(", "))
}

/// A tensor's type and data: `i64[3] [0, -1, 384]`.
pub(crate) fn tensor_text(t: &Tensor) -> String {
    format!("{} {}", tensor_type_text(t.dtype(), t.shape()), literal_text(t))
}

/// A tensor's data: a scalar, a flat list (rank 1), nested lists (rank 2 and
/// up, like numpy), or `splat(x)` when every element is the same.
fn literal_text(t: &Tensor) -> String {
    let elems = format_elements(t);
    if t.rank() == 0 {
        return elems.into_iter().next().unwrap_or_default();
    }
    if elems.len() >= 2 && elems.iter().all(|e| *e == elems[0]) {
        return format!("splat({})", elems[0]);
    }
    let mut out = String::new();
    nested(&mut out, t.shape(), &elems);
    out
}

fn nested(out: &mut String, shape: &[usize], elems: &[String]) {
    out.push('[');
    if shape.len() <= 1 {
        out.push_str(&elems.join(", "));
    } else {
        let stride: usize = shape[1..].iter().product();
        for i in 0..shape[0] {
            if i > 0 {
                out.push_str(", ");
            }
            nested(out, &shape[1..], elems.get(i * stride..(i + 1) * stride).unwrap_or(&[]));
        }
    }
    out.push(']');
}

/// The `meta {...}` header, or `None` when the metadata is all defaults.
fn meta_text(m: &Metadata) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    if m.ir_version != 0 {
        parts.push(format!("ir_version = {}", m.ir_version));
    }
    for (key, v) in
        [("producer_name", &m.producer_name), ("producer_version", &m.producer_version), ("domain", &m.domain)]
    {
        if !v.is_empty() {
            parts.push(format!("{key} = {}", quote_str(v)));
        }
    }
    if m.model_version != 0 {
        parts.push(format!("model_version = {}", m.model_version));
    }
    if !m.doc_string.is_empty() {
        parts.push(format!("doc_string = {}", quote_str(&m.doc_string)));
    }
    let dict = |items: Vec<String>| format!("{{{}}}", items.join(", "));
    if !m.opset_imports.is_empty() {
        let items = m.opset_imports.iter().map(|(d, v)| format!("{} = {v}", quote_str(d))).collect();
        parts.push(format!("opset_import = {}", dict(items)));
    }
    if !m.props.is_empty() {
        let items = m.props.iter().map(|(k, v)| format!("{} = {}", quote_str(k), quote_str(v))).collect();
        parts.push(format!("props = {}", dict(items)));
    }
    if !m.preserved.is_empty() {
        let items = m
            .preserved
            .iter()
            .map(|(k, bytes)| {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                format!("{} = {}", quote_str(k), quote_str(&hex))
            })
            .collect();
        parts.push(format!("preserved = {}", dict(items)));
    }
    if parts.is_empty() { None } else { Some(format!("meta {{{}}}", parts.join(", "))) }
}

/// How an op is named in text: bare for typed ops and for default-domain ops
/// sharc does not model; `domain.Op` or `"domain".Op` otherwise. An opaque
/// default-domain op whose name a typed op also uses is written `"".Name`, so
/// it stays opaque when read back.
fn op_name_text(op: &Op) -> String {
    let Op::Opaque(o) = op else {
        return op.op_type().to_string();
    };
    let ident_op = is_plain_ident(&o.op_type) && !KEYWORDS.contains(&o.op_type.as_str());
    if o.domain.is_empty() {
        let reads_back_opaque =
            ident_op && matches!(Op::from_onnx_default_domain(&o.op_type, o.attrs.clone()), Ok(None));
        if reads_back_opaque {
            return o.op_type.clone();
        }
        let name = if is_plain_ident(&o.op_type) { o.op_type.clone() } else { quote_str(&o.op_type) };
        return format!("\"\".{name}");
    }
    let plain_domain = o.domain.split('.').all(is_plain_ident);
    if plain_domain && is_plain_ident(&o.op_type) {
        format!("{}.{}", o.domain, o.op_type)
    } else {
        let name = if is_plain_ident(&o.op_type) { o.op_type.clone() } else { quote_str(&o.op_type) };
        format!("{}.{name}", quote_str(&o.domain))
    }
}

fn attr_name_text(name: &str) -> String {
    if is_plain_ident(name) { name.to_string() } else { quote_str(name) }
}

fn has_graphs(a: &Attr) -> bool {
    matches!(a, Attr::Graph(_) | Attr::Graphs(_))
}

impl Printer {
    fn line(&mut self, indent: usize, text: &str) {
        for _ in 0..indent {
            self.out.push_str(INDENT);
        }
        self.out.push_str(text);
        self.out.push('\n');
    }

    /// A graph, from `graph @name` to its closing brace (no newline after it).
    fn graph(&mut self, g: &Graph, indent: usize) {
        let value = |v: &ValueRef| value_text(g, *v);
        let decl = |id: &NodeId| match g.try_node(*id).and_then(|n| n.outputs.first().map(|o| (n, o))) {
            Some((n, o)) => {
                let mut s = format!("%{}", quote_name(&o.name));
                if o.ty != Type::Unknown {
                    let _ = write!(s, ": {}", type_text(&o.ty));
                }
                if !n.name.is_empty() {
                    let _ = write!(s, " loc({})", quote_str(&n.name));
                }
                s
            }
            None => "%\"<missing input node>\"".to_string(),
        };
        let inputs: Vec<String> = g.inputs().iter().map(decl).collect();
        let _ = write!(self.out, "graph @{}({})", quote_name(&g.name), inputs.join(", "));
        if !g.captures().is_empty() {
            let caps: Vec<String> = g.captures().iter().map(decl).collect();
            let _ = write!(self.out, " captures({})", caps.join(", "));
        }
        let outputs: Vec<String> = g
            .outputs()
            .iter()
            .map(|o| {
                let v = value(&o.value);
                let same = g.try_node(o.value.node).and_then(|n| n.outputs.get(o.value.port as usize)).map(|i| &i.name)
                    == Some(&o.name);
                if same {
                    v
                } else if is_plain_ident(&o.name) {
                    format!("{v} as {}", o.name)
                } else {
                    format!("{v} as {}", quote_str(&o.name))
                }
            })
            .collect();
        let _ = writeln!(self.out, " -> ({}) {{", outputs.join(", "));

        let header: HashSet<NodeId> = g.inputs().iter().chain(g.captures()).copied().collect();
        let order = match g.topo_order() {
            Ok(o) => o,
            Err(e) => {
                self.line(indent + 1, &format!("// warning: {e}; nodes follow in id order"));
                g.node_ids().collect()
            }
        };
        let mut used_weights = HashSet::new();
        for id in order {
            if header.contains(&id) {
                continue;
            }
            if let Op::Weight(w) = g.node(id).op {
                used_weights.insert(w);
            }
            self.node(g, id, indent + 1);
        }
        for (id, w) in g.weights.iter() {
            if !used_weights.contains(&id) {
                let text = format!(
                    "weight @{} : {}  // sha {}, unused",
                    quote_name(&w.name),
                    tensor_type_text(w.dtype, &w.shape),
                    self.hash(g, id)
                );
                self.line(indent + 1, &text);
            }
        }
        for _ in 0..indent {
            self.out.push_str(INDENT);
        }
        self.out.push('}');
    }

    fn hash(&mut self, g: &Graph, id: WeightId) -> String {
        let key = (&g.weights as *const _ as usize, id);
        if let Some(h) = self.hashes.get(&key) {
            return h.clone();
        }
        let h = g.weights.get(id).map(|w| w.content_hash()).unwrap_or_default();
        self.hashes.insert(key, h.clone());
        h
    }

    fn node(&mut self, g: &Graph, id: NodeId, indent: usize) {
        let node = g.node(id);
        let mut s = String::new();
        for _ in 0..indent {
            s.push_str(INDENT);
        }
        if !node.outputs.is_empty() {
            let names: Vec<String> = node.outputs.iter().map(|o| format!("%{}", quote_name(&o.name))).collect();
            let _ = write!(s, "{} = ", names.join(", "));
        }
        let types: Vec<String> = node.outputs.iter().map(|o| type_text(&o.ty)).collect();
        let single = |t: &Type| node.outputs.len() == 1 && node.outputs[0].ty == *t;
        let mut comment = None;
        let show_types = match &node.op {
            Op::Input => {
                s.push_str("input");
                !node.outputs.iter().all(|o| o.ty == Type::Unknown)
            }
            Op::Constant(t) => {
                s.push_str("const ");
                s.push_str(&tensor_text(t));
                !single(&Type::tensor(t.dtype(), Shape::fixed(t.shape())))
            }
            Op::Weight(w) => match g.weights.get(*w) {
                Some(weight) => {
                    let _ = write!(s, "weight @{}", quote_name(&weight.name));
                    let natural = Type::tensor(weight.dtype, Shape::fixed(&weight.shape));
                    if !single(&natural) {
                        let _ = write!(s, " {}", tensor_type_text(weight.dtype, &weight.shape));
                    }
                    comment = Some(format!("sha {}", self.hash(g, *w)));
                    true
                }
                None => {
                    let _ = write!(s, "weight @\"<missing {w}>\"");
                    comment = Some(format!("error: weight {w} is not in the graph's store"));
                    true
                }
            },
            op => {
                s.push_str(&op_name_text(op));
                let inputs: Vec<String> =
                    g.node_inputs(id).iter().map(|v| v.map_or_else(|| "_".to_string(), |v| value_text(g, v))).collect();
                let _ = write!(s, "({})", inputs.join(", "));
                self.attrs(&mut s, op, indent);
                !node.outputs.iter().all(|o| o.ty == Type::Unknown)
            }
        };
        if show_types && !types.is_empty() {
            let _ = write!(s, " : {}", types.join(", "));
        }
        if !node.name.is_empty() {
            let _ = write!(s, " loc({})", quote_str(&node.name));
        }
        if let Some(c) = comment {
            let _ = write!(s, "  // {c}");
        }
        self.out.push_str(&s);
        self.out.push('\n');
    }

    /// ` {a = 1, b = [2]}` on one line, or one attribute per line when any
    /// holds a graph.
    fn attrs(&mut self, s: &mut String, op: &Op, indent: usize) {
        let attrs: Attrs = op.attrs();
        if attrs.is_empty() {
            return;
        }
        let typed = !matches!(op, Op::Opaque(_));
        let value = |this: &mut Printer, name: &str, a: &Attr, indent: usize| -> String {
            if typed
                && DTYPE_ATTRS.contains(&name)
                && let Attr::Int(code) = a
                && let Some(d) = i32::try_from(*code).ok().and_then(DType::from_onnx_code)
            {
                return d.name().to_string();
            }
            this.attr_value(a, indent)
        };
        if !attrs.values().any(has_graphs) {
            let items: Vec<String> =
                attrs.iter().map(|(k, a)| format!("{} = {}", attr_name_text(k), value(self, k, a, indent))).collect();
            let _ = write!(s, " {{{}}}", items.join(", "));
            return;
        }
        s.push_str(" {\n");
        let n = attrs.len();
        for (i, (k, a)) in attrs.iter().enumerate() {
            for _ in 0..indent + 1 {
                s.push_str(INDENT);
            }
            let v = value(self, k, a, indent + 1);
            let _ = write!(s, "{} = {v}{}", attr_name_text(k), if i + 1 < n { ",\n" } else { "\n" });
        }
        for _ in 0..indent {
            s.push_str(INDENT);
        }
        s.push('}');
    }

    /// One attribute value. Graphs are printed at `indent` (the indentation of
    /// the line they start on).
    fn attr_value(&mut self, a: &Attr, indent: usize) -> String {
        let list = |items: Vec<String>, kind: &str| {
            if items.is_empty() { format!("{kind}[]") } else { format!("[{}]", items.join(", ")) }
        };
        match a {
            Attr::Float(v) => super::literal::fmt_f32(*v),
            Attr::Int(v) => v.to_string(),
            Attr::String(v) => quote_str(v),
            Attr::Tensor(t) => tensor_text(t),
            Attr::Type(t) => format!("type {}", type_text(t)),
            Attr::Floats(v) => list(v.iter().map(|x| super::literal::fmt_f32(*x)).collect(), "floats"),
            // An empty list reads back as ints, so it needs no prefix.
            Attr::Ints(v) => list(v.iter().map(|x| x.to_string()).collect(), ""),
            Attr::Strings(v) => list(v.iter().map(|x| quote_str(x)).collect(), "strings"),
            Attr::Tensors(v) => list(v.iter().map(tensor_text).collect(), "tensors"),
            Attr::Graph(g) => self.sub_graph(g, indent),
            Attr::Graphs(gs) => {
                if gs.is_empty() {
                    return "graphs[]".to_string();
                }
                let mut s = "[\n".to_string();
                for (i, g) in gs.iter().enumerate() {
                    for _ in 0..indent + 1 {
                        s.push_str(INDENT);
                    }
                    s.push_str(&self.sub_graph(g, indent + 1));
                    s.push_str(if i + 1 < gs.len() { ",\n" } else { "\n" });
                }
                for _ in 0..indent {
                    s.push_str(INDENT);
                }
                s.push(']');
                s
            }
        }
    }

    /// A body graph as an attribute value, with its metadata when it has any.
    fn sub_graph(&mut self, g: &Graph, indent: usize) -> String {
        let saved = std::mem::take(&mut self.out);
        if let Some(m) = meta_text(&g.meta) {
            self.out.push_str(&m);
            self.out.push(' ');
        }
        self.graph(g, indent);
        std::mem::replace(&mut self.out, saved)
    }
}

/// `%name` of a value, or a marker for a dangling reference (which only an
/// invalid graph has; it does not parse back).
fn value_text(g: &Graph, v: ValueRef) -> String {
    match g.try_node(v.node).and_then(|n| n.outputs.get(v.port as usize)) {
        Some(info) => format!("%{}", quote_name(&info.name)),
        None => format!("%\"<invalid {}:{}>\"", v.node.index(), v.port),
    }
}

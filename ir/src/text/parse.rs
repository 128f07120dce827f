//! The parser: a recursive-descent reader that builds a [`Graph`] directly.
//!
//! Each graph body is read in two steps: statements create their nodes as
//! they come, and operands are connected once the closing brace is reached.
//! Values may therefore be used before the line that defines them, which
//! keeps hand-written tests free to order lines for readability.

use super::ParseError;
use super::lex::{Lexer, Tok, Token};
use super::literal::{Elem, MAX_DATA_BYTES, attr_f32, build_tensor, data_bytes, synthetic};
use crate::{
    Attr, Attrs, DType, Dim, Graph, Metadata, NodeId, Op, Opaque, Shape, Subgraph, Tensor, TensorType, Type, ValueInfo,
    ValueRef, Weight, WeightId, WeightStore,
};
use std::collections::HashMap;

/// How deeply graphs, lists and types may nest. Real graphs stay far below;
/// the limit keeps hostile input from overflowing the stack.
const MAX_DEPTH: usize = 64;

/// Where weights come from.
pub(crate) enum WeightSource<'s> {
    /// Synthetic data (or the text's inline data).
    Synthetic,
    /// A store, looked up by name (inline data still wins).
    Store { store: &'s WeightStore, by_name: HashMap<&'s str, WeightId> },
}

impl<'s> WeightSource<'s> {
    pub(crate) fn store(store: &'s WeightStore) -> WeightSource<'s> {
        let mut by_name = HashMap::new();
        for (id, w) in store.iter() {
            by_name.entry(w.name.as_str()).or_insert(id);
        }
        WeightSource::Store { store, by_name }
    }
}

/// Parses a whole file: an optional `meta {...}` and one graph.
pub(crate) fn parse_file(src: &str, weights: WeightSource<'_>) -> Result<Graph, ParseError> {
    let mut p = Parser { src, lex: Lexer::new(src), weights, depth: 0 };
    let g = p.graph_value()?;
    let t = p.next()?;
    if t.tok != Tok::Eof {
        return Err(
            p.err_at(t.pos, format!("expected the end of the text after the graph, found {}", t.tok.describe()))
        );
    }
    Ok(g)
}

struct Parser<'a, 's> {
    src: &'a str,
    lex: Lexer<'a>,
    weights: WeightSource<'s>,
    depth: usize,
}

/// A node's operands as written: a value name and where it appears, or
/// `None` for `_`.
type Operands = Vec<Option<(String, usize)>>;

/// A weight as a statement declares it.
struct WeightDecl {
    name: String,
    pos: usize,
    dtype: DType,
    shape: Vec<usize>,
    data: Option<Tensor>,
}

/// What a graph body is being built from.
struct Scope {
    g: Graph,
    /// Every value defined so far, with where it was defined.
    values: HashMap<String, (ValueRef, usize)>,
    /// Nodes whose operands are connected at the closing brace.
    pending: Vec<(NodeId, Operands)>,
    /// Weights already in this graph's store, by name, with their declaration.
    weights: HashMap<String, (WeightId, usize, bool)>,
}

/// The elements of a tensor literal, where each was written, and the
/// nesting seen.
#[derive(Default)]
struct Leaves {
    elems: Vec<Elem>,
    pos: Vec<usize>,
    dims: Vec<Option<DepthInfo>>,
    leaf_depth: Option<usize>,
}

/// The lists seen at one nesting depth.
struct DepthInfo {
    len: usize,
    uniform: bool,
}

/// One attribute value, before typed ops interpret it.
enum Parsed {
    Attr(Attr),
    /// A bare dtype name (`to = f16`), stored as its ONNX code.
    DType(DType),
}

impl Parsed {
    fn describe(&self) -> String {
        match self {
            Parsed::Attr(a) => format!("a {} value", a.kind()),
            Parsed::DType(d) => format!("the dtype {d}"),
        }
    }
}

impl<'a, 's> Parser<'a, 's> {
    // ----- tokens -----

    fn err_at(&self, pos: usize, msg: impl Into<String>) -> ParseError {
        ParseError::at(self.src, pos, msg)
    }

    fn peek(&mut self) -> Result<&Tok, ParseError> {
        Ok(&self.lex.peek_nth(0)?.tok)
    }

    fn peek_pos(&mut self) -> Result<usize, ParseError> {
        Ok(self.lex.peek_nth(0)?.pos)
    }

    fn next(&mut self) -> Result<Token, ParseError> {
        self.lex.next()
    }

    fn is_punct(&mut self, c: char) -> Result<bool, ParseError> {
        Ok(*self.peek()? == Tok::Punct(c))
    }

    fn is_ident(&mut self, s: &str) -> Result<bool, ParseError> {
        Ok(matches!(self.peek()?, Tok::Ident(i) if i == s))
    }

    /// Consumes `c` if it is next.
    fn eat(&mut self, c: char) -> Result<bool, ParseError> {
        if self.is_punct(c)? {
            self.next()?;
            return Ok(true);
        }
        Ok(false)
    }

    fn unexpected(&mut self, expected: &str) -> ParseError {
        match self.lex.peek_nth(0) {
            Ok(t) => {
                let (pos, found) = (t.pos, t.tok.describe());
                self.err_at(pos, format!("expected {expected}, found {found}"))
            }
            Err(e) => e,
        }
    }

    fn expect(&mut self, c: char, expected: &str) -> Result<usize, ParseError> {
        if self.is_punct(c)? {
            return Ok(self.next()?.pos);
        }
        Err(self.unexpected(expected))
    }

    fn expect_ident(&mut self, word: &str, expected: &str) -> Result<usize, ParseError> {
        if self.is_ident(word)? {
            return Ok(self.next()?.pos);
        }
        Err(self.unexpected(expected))
    }

    fn expect_value(&mut self, expected: &str) -> Result<(String, usize), ParseError> {
        if let Tok::Value(_) = self.peek()? {
            let t = self.next()?;
            if let Tok::Value(n) = t.tok {
                return Ok((n, t.pos));
            }
        }
        Err(self.unexpected(expected))
    }

    fn expect_symbol(&mut self, expected: &str) -> Result<(String, usize), ParseError> {
        if let Tok::Symbol(_) = self.peek()? {
            let t = self.next()?;
            if let Tok::Symbol(n) = t.tok {
                return Ok((n, t.pos));
            }
        }
        Err(self.unexpected(expected))
    }

    fn expect_string(&mut self, expected: &str) -> Result<String, ParseError> {
        if let Tok::Str(_) = self.peek()?
            && let Tok::Str(s) = self.next()?.tok
        {
            return Ok(s);
        }
        Err(self.unexpected(expected))
    }

    /// An identifier or a quoted string (attribute names, output aliases).
    fn name_token(&mut self, expected: &str) -> Result<(String, usize), ParseError> {
        if let Tok::Ident(_) | Tok::Str(_) = self.peek()? {
            let t = self.next()?;
            if let Tok::Ident(s) | Tok::Str(s) = t.tok {
                return Ok((s, t.pos));
            }
        }
        Err(self.unexpected(expected))
    }

    fn enter(&mut self, pos: usize) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err_at(pos, format!("nesting is deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    /// `a, b, c` up to (not including) `close`, allowing a trailing comma.
    fn comma_list<T>(
        &mut self,
        close: char,
        what: &str,
        mut item: impl FnMut(&mut Self) -> Result<T, ParseError>,
    ) -> Result<Vec<T>, ParseError> {
        let mut out = Vec::new();
        while !self.is_punct(close)? {
            out.push(item(self)?);
            if !self.eat(',')? && !self.is_punct(close)? {
                return Err(self.unexpected(&format!("',' or '{close}' after {what}")));
            }
        }
        Ok(out)
    }

    // ----- graphs -----

    /// `[meta {...}] graph @name(...) [captures(...)] -> (...) { ... }`
    fn graph_value(&mut self) -> Result<Graph, ParseError> {
        let pos = self.peek_pos()?;
        self.enter(pos)?;
        let meta = if self.is_ident("meta")? { self.meta()? } else { Metadata::default() };
        let g = self.graph(meta)?;
        self.leave();
        Ok(g)
    }

    fn graph(&mut self, meta: Metadata) -> Result<Graph, ParseError> {
        self.expect_ident("graph", "'graph'")?;
        let (name, _) = self.expect_symbol("the graph's name (@name)")?;
        let mut scope =
            Scope { g: Graph::new(name), values: HashMap::new(), pending: Vec::new(), weights: HashMap::new() };
        scope.g.meta = meta;
        self.expect('(', "'(' before the graph's inputs")?;
        let inputs = self.comma_list(')', "an input", |p| p.input_decl())?;
        self.next()?;
        for (name, pos, ty, loc) in inputs {
            let v = scope.g.add_input(name.clone(), ty);
            scope.g.node_mut(v.node).name = loc;
            define(self, &mut scope, name, v, pos)?;
        }
        if self.is_ident("captures")? {
            self.next()?;
            self.expect('(', "'(' after 'captures'")?;
            let caps = self.comma_list(')', "a capture", |p| p.input_decl())?;
            self.next()?;
            for (name, pos, ty, loc) in caps {
                let v = scope.g.add_capture(name.clone(), ty);
                scope.g.node_mut(v.node).name = loc;
                define(self, &mut scope, name, v, pos)?;
            }
        }
        if *self.peek()? != Tok::Arrow {
            return Err(self.unexpected("'->' before the graph's outputs"));
        }
        self.next()?;
        self.expect('(', "'(' before the graph's outputs")?;
        let outputs = self.comma_list(')', "an output", |p| {
            let (value, pos) = p.expect_value("an output value (%name)")?;
            let alias = if p.is_ident("as")? {
                p.next()?;
                Some(p.name_token("the output's name after 'as'")?.0)
            } else {
                None
            };
            Ok((value, pos, alias))
        })?;
        self.next()?;
        self.expect('{', "'{' to open the graph's body")?;
        while !self.is_punct('}')? {
            self.statement(&mut scope)?;
        }
        self.next()?;

        let graph_name = scope.g.name.clone();
        let lookup = |p: &Self, values: &HashMap<String, (ValueRef, usize)>, name: &str, pos: usize| {
            values.get(name).map(|(v, _)| *v).ok_or_else(|| {
                p.err_at(
                    pos,
                    format!(
                        "unknown value %{} in graph @{} (a body graph sees outer values only through its captures)",
                        super::quote_name(name),
                        super::quote_name(&graph_name)
                    ),
                )
            })
        };
        for (node, operands) in std::mem::take(&mut scope.pending) {
            let mut ins = Vec::with_capacity(operands.len());
            for o in operands {
                ins.push(match o {
                    Some((name, pos)) => Some(lookup(self, &scope.values, &name, pos)?),
                    None => None,
                });
            }
            scope.g.set_node_inputs(node, &ins);
        }
        for (value, pos, alias) in outputs {
            let v = lookup(self, &scope.values, &value, pos)?;
            scope.g.add_output(alias.unwrap_or(value), v);
        }
        Ok(scope.g)
    }

    /// `%name[: type] [loc("...")]` in an input or capture list.
    fn input_decl(&mut self) -> Result<(String, usize, Type, String), ParseError> {
        let (name, pos) = self.expect_value("an input (%name)")?;
        let ty = if self.eat(':')? { self.ty()? } else { Type::Unknown };
        let loc = self.loc()?;
        Ok((name, pos, ty, loc))
    }

    /// An optional `loc("node name")`.
    fn loc(&mut self) -> Result<String, ParseError> {
        if !self.is_ident("loc")? {
            return Ok(String::new());
        }
        self.next()?;
        self.expect('(', "'(' after 'loc'")?;
        let s = self.expect_string("the node's name as a string")?;
        self.expect(')', "')' after the node's name")?;
        Ok(s)
    }

    fn statement(&mut self, scope: &mut Scope) -> Result<(), ParseError> {
        let start = self.peek_pos()?;
        let mut results = Vec::new();
        match self.peek()? {
            Tok::Value(_) => {
                results.push(self.expect_value("a value")?);
                while self.eat(',')? {
                    results.push(self.expect_value("another result (%name)")?);
                }
                self.expect('=', "'=' after the results")?;
            }
            Tok::Ident(w) if w == "weight" => {
                // A stored weight that no node uses.
                self.next()?;
                let decl = self.weight_decl(start)?;
                self.add_weight(scope, decl)?;
                return Ok(());
            }
            Tok::Ident(_) | Tok::Str(_) => {}
            _ => return Err(self.unexpected("a statement ('%result = ...', an op, or '}')")),
        }
        let op_pos = self.peek_pos()?;
        let one = |p: &Self, what: &str| {
            if results.len() == 1 {
                Ok(())
            } else {
                Err(p.err_at(start, format!("{what} defines exactly one value, not {}", results.len())))
            }
        };
        let (op, operands, types, loc) = if self.is_ident("const")? {
            self.next()?;
            one(self, "a constant")?;
            let t = self.tensor_value()?;
            let natural = Type::tensor(t.dtype(), Shape::fixed(t.shape()));
            let types = if self.eat(':')? { vec![self.ty()?] } else { vec![natural] };
            (Op::Constant(t), Vec::new(), types, self.loc()?)
        } else if self.is_ident("input")? {
            self.next()?;
            one(self, "an input")?;
            let types = if self.eat(':')? { vec![self.ty()?] } else { vec![Type::Unknown] };
            (Op::Input, Vec::new(), types, self.loc()?)
        } else if self.is_ident("weight")? {
            self.next()?;
            one(self, "a weight")?;
            let (decl, value_ty) = self.weight_use(op_pos)?;
            let id = self.add_weight(scope, decl)?;
            (Op::Weight(id), Vec::new(), vec![value_ty], self.loc()?)
        } else {
            let (op, operands) = self.op_call()?;
            let types = if self.eat(':')? {
                let types = self.types()?;
                if types.len() != results.len() {
                    return Err(
                        self.err_at(op_pos, format!("{} results but {} types after ':'", results.len(), types.len()))
                    );
                }
                types
            } else {
                vec![Type::Unknown; results.len()]
            };
            (op, operands, types, self.loc()?)
        };
        let outputs: Vec<ValueInfo> =
            results.iter().zip(types).map(|((name, _), ty)| ValueInfo::new(name.clone(), ty)).collect();
        let id = scope.g.add_node(op, loc, &[], outputs);
        for (port, (name, pos)) in results.into_iter().enumerate() {
            define(self, scope, name, ValueRef::new(id, port as u32), pos)?;
        }
        if !operands.is_empty() {
            scope.pending.push((id, operands));
        }
        Ok(())
    }

    fn types(&mut self) -> Result<Vec<Type>, ParseError> {
        let mut types = vec![self.ty()?];
        while self.eat(',')? {
            types.push(self.ty()?);
        }
        Ok(types)
    }

    /// After `weight` in a node: `@name [D] [: T] [= literal]`. Returns the
    /// declaration and the value's type.
    fn weight_use(&mut self, pos: usize) -> Result<(WeightDecl, Type), ParseError> {
        let (name, _) = self.expect_symbol("the weight's name (@name)")?;
        let declared = if let Tok::Ident(_) = self.peek()? {
            if self.is_ident("loc")? { None } else { Some(self.fixed_tensor_type("the weight's type")?) }
        } else {
            None
        };
        let value_ty = if self.eat(':')? { Some((self.peek_pos()?, self.ty()?)) } else { None };
        let (dtype, shape) = match (&declared, &value_ty) {
            (Some((d, s)), _) => (*d, s.clone()),
            (None, Some((tpos, ty))) => fixed_of(ty).ok_or_else(|| {
                self.err_at(
                    *tpos,
                    format!("a weight needs a tensor type with fixed dims, found {}", super::print::type_text(ty)),
                )
            })?,
            (None, None) => return Err(self.unexpected("the weight's type (': f32[16, 8]')")),
        };
        let data = self.inline_data(dtype, &shape)?;
        let value_ty = match value_ty {
            Some((_, t)) => t,
            None => Type::tensor(dtype, Shape::fixed(&shape)),
        };
        Ok((WeightDecl { name, pos, dtype, shape, data }, value_ty))
    }

    /// A store-only weight: `weight @name [D] [: T] [= literal]`.
    fn weight_decl(&mut self, pos: usize) -> Result<WeightDecl, ParseError> {
        let (decl, _) = self.weight_use(pos)?;
        Ok(decl)
    }

    /// An optional `= literal` giving a weight's exact data.
    fn inline_data(&mut self, dtype: DType, shape: &[usize]) -> Result<Option<Tensor>, ParseError> {
        if !self.eat('=')? {
            return Ok(None);
        }
        self.literal(dtype, shape).map(Some)
    }

    /// Puts a declared weight into the graph's store (once per name) and
    /// returns its id.
    fn add_weight(&mut self, scope: &mut Scope, d: WeightDecl) -> Result<WeightId, ParseError> {
        if let Some(&(id, first, had_data)) = scope.weights.get(&d.name) {
            let w = scope.g.weights.get(id).ok_or_else(|| self.err_at(d.pos, "internal: weight vanished"))?;
            if w.dtype != d.dtype || w.shape != d.shape {
                return Err(self.err_at(
                    d.pos,
                    format!(
                        "weight @{} is declared as {}{:?} here but as {}{:?} at {}",
                        super::quote_name(&d.name),
                        d.dtype,
                        d.shape,
                        w.dtype,
                        w.shape,
                        ParseError::at(self.src, first, "").location()
                    ),
                ));
            }
            if let Some(t) = d.data {
                if had_data {
                    return Err(
                        self.err_at(d.pos, format!("weight @{} is given data twice", super::quote_name(&d.name)))
                    );
                }
                if let Some(w) = scope.g.weights.get_mut(id) {
                    w.set_tensor(t);
                }
                scope.weights.insert(d.name, (id, first, true));
            }
            return Ok(id);
        }
        let has_data = d.data.is_some();
        let weight = match (d.data, &self.weights) {
            (Some(t), _) => Weight::from_tensor(d.name.clone(), t),
            (None, WeightSource::Synthetic) => {
                let t = synthetic(&d.name, d.dtype, &d.shape).map_err(|m| self.err_at(d.pos, m))?;
                Weight::from_tensor(d.name.clone(), t)
            }
            (None, WeightSource::Store { store, by_name }) => {
                let w = by_name.get(d.name.as_str()).and_then(|id| store.get(*id)).ok_or_else(|| {
                    self.err_at(d.pos, format!("weight @{} is not in the weight store", super::quote_name(&d.name)))
                })?;
                if w.dtype != d.dtype || w.shape != d.shape {
                    return Err(self.err_at(
                        d.pos,
                        format!(
                            "weight @{} is {}{:?} in the weight store but the text says {}{:?}",
                            super::quote_name(&d.name),
                            w.dtype,
                            w.shape,
                            d.dtype,
                            d.shape
                        ),
                    ));
                }
                w.clone()
            }
        };
        let id = scope.g.weights.add(weight).map_err(|m| self.err_at(d.pos, m))?;
        scope.weights.insert(d.name, (id, d.pos, has_data));
        Ok(id)
    }

    /// `Name(%a, _, %b) {attrs}`, with an optional domain qualifier.
    fn op_call(&mut self) -> Result<(Op, Operands), ParseError> {
        let pos = self.peek_pos()?;
        let t = self.next()?;
        // (domain, op type, whether a domain was written)
        let (domain, op_type, qualified) = match t.tok {
            Tok::Ident(name) => match name.rsplit_once('.') {
                Some((d, o)) => (d.to_string(), o.to_string(), true),
                None => (String::new(), name, false),
            },
            Tok::Str(first) => {
                if self.eat('.')? {
                    let (op, _) = self.name_token("the op's name after the domain")?;
                    (first, op, true)
                } else {
                    (String::new(), first, false)
                }
            }
            other => {
                return Err(self.err_at(t.pos, format!("expected an op name, found {}", other.describe())));
            }
        };
        self.expect('(', &format!("'(' after the op name {op_type}"))?;
        let operands = self.comma_list(')', "an operand", |p| {
            if p.is_ident("_")? {
                p.next()?;
                return Ok(None);
            }
            let (name, pos) = p.expect_value("an operand (%name, or _ for an absent optional input)")?;
            Ok(Some((name, pos)))
        })?;
        self.next()?;
        let attrs = if self.is_punct('{')? { self.attr_dict()? } else { Attrs::new() };
        let op = if qualified {
            Op::Opaque(Opaque { domain, op_type, attrs })
        } else {
            match Op::from_onnx_default_domain(&op_type, attrs.clone()) {
                Ok(Some(op)) => op,
                Ok(None) => Op::Opaque(Opaque { domain, op_type, attrs }),
                Err(e) => return Err(self.err_at(pos, format!("{op_type}: {e}"))),
            }
        };
        Ok((op, operands))
    }

    // ----- attributes -----

    fn attr_dict(&mut self) -> Result<Attrs, ParseError> {
        self.expect('{', "'{'")?;
        let mut attrs = Attrs::new();
        let items = self.comma_list('}', "an attribute", |p| {
            let (name, pos) = p.name_token("an attribute name")?;
            p.expect('=', &format!("'=' after the attribute name {name}"))?;
            let value = p.attr_value()?;
            Ok((name, pos, value))
        })?;
        self.next()?;
        for (name, pos, value) in items {
            if attrs.contains_key(&name) {
                return Err(self.err_at(pos, format!("attribute '{name}' is given twice")));
            }
            attrs.insert(name, value);
        }
        Ok(attrs)
    }

    fn attr_value(&mut self) -> Result<Attr, ParseError> {
        Ok(match self.parsed_value()? {
            Parsed::Attr(a) => a,
            Parsed::DType(d) => Attr::Int(d.onnx_code() as i64),
        })
    }

    fn parsed_value(&mut self) -> Result<Parsed, ParseError> {
        let pos = self.peek_pos()?;
        let tok = self.peek()?.clone();
        let a = match tok {
            Tok::Int(s) => {
                self.next()?;
                Attr::Int(s.parse::<i64>().map_err(|_| self.err_at(pos, format!("{s} does not fit in 64 bits")))?)
            }
            Tok::Float(_) | Tok::Minus => Attr::Float(self.float_attr()?),
            Tok::Str(s) => {
                self.next()?;
                Attr::String(s)
            }
            Tok::Punct('[') => self.list(None)?,
            Tok::Ident(w) => match w.as_str() {
                "inf" | "nan" | "bits" => Attr::Float(self.float_attr()?),
                "graph" | "meta" => Attr::Graph(Subgraph::new(self.graph_value()?)),
                "type" => {
                    self.next()?;
                    Attr::Type(self.ty()?)
                }
                "ints" | "floats" | "strings" | "tensors" | "graphs" => {
                    self.next()?;
                    self.list(Some(w.as_str()))?
                }
                _ => match DType::from_name(&w) {
                    Some(d) => {
                        if matches!(self.lex.peek_nth(1)?.tok, Tok::Punct('[')) {
                            Attr::Tensor(self.tensor_value()?)
                        } else {
                            self.next()?;
                            return Ok(Parsed::DType(d));
                        }
                    }
                    None => {
                        return Err(
                            self.err_at(pos, format!("expected an attribute value, found '{w}' (strings need quotes)"))
                        );
                    }
                },
            },
            _ => {
                return Err(self.unexpected(
                    "an attribute value (a number, string, list, tensor like f32[2] [1.0, 2.0], graph or type)",
                ));
            }
        };
        Ok(Parsed::Attr(a))
    }

    fn float_attr(&mut self) -> Result<f32, ParseError> {
        let pos = self.peek_pos()?;
        let e = self.element()?;
        attr_f32(&e).map_err(|m| self.err_at(pos, m))
    }

    /// `[v, ...]`, or a kind-prefixed list (`floats[]`) whose prefix has been read.
    fn list(&mut self, kind: Option<&str>) -> Result<Attr, ParseError> {
        let open = self.expect('[', "'[' to start a list")?;
        self.enter(open)?;
        let items = self.comma_list(']', "a list element", |p| {
            let pos = p.peek_pos()?;
            Ok((pos, p.parsed_value()?))
        })?;
        self.next()?;
        self.leave();
        let kind = match kind {
            Some(k) => k,
            None => match items.first() {
                None => "ints",
                // Numbers: floats if any element is one, so `[1, 2.5]` reads as floats.
                Some((_, Parsed::Attr(Attr::Float(_) | Attr::Int(_)) | Parsed::DType(_))) => {
                    let any_float = items.iter().any(|(_, v)| matches!(v, Parsed::Attr(Attr::Float(_))));
                    if any_float { "floats" } else { "ints" }
                }
                Some((_, Parsed::Attr(Attr::String(_)))) => "strings",
                Some((_, Parsed::Attr(Attr::Tensor(_)))) => "tensors",
                Some((_, Parsed::Attr(Attr::Graph(_)))) => "graphs",
                Some((pos, Parsed::Attr(other))) => {
                    return Err(self.err_at(*pos, format!("a list cannot hold {} values", other.kind())));
                }
            },
        };
        let wrong = |p: &Self, pos: usize, what: &str| {
            p.err_at(pos, format!("a list of {kind} cannot hold {what} (list elements must all be of one kind)"))
        };
        macro_rules! collect {
            ($($pat:pat => $val:expr),+) => {{
                let mut out = Vec::with_capacity(items.len());
                for (pos, v) in items {
                    out.push(match v {
                        $($pat => $val,)+
                        other => return Err(wrong(self, pos, &other.describe())),
                    });
                }
                out
            }};
        }
        Ok(match kind {
            "ints" => Attr::Ints(collect!(
                Parsed::Attr(Attr::Int(i)) => i,
                Parsed::DType(d) => d.onnx_code() as i64
            )),
            "floats" => Attr::Floats(collect!(
                Parsed::Attr(Attr::Float(f)) => f,
                Parsed::Attr(Attr::Int(i)) => i as f32
            )),
            "strings" => Attr::Strings(collect!(Parsed::Attr(Attr::String(s)) => s)),
            "tensors" => Attr::Tensors(collect!(Parsed::Attr(Attr::Tensor(t)) => t)),
            _ => Attr::Graphs(collect!(Parsed::Attr(Attr::Graph(g)) => g)),
        })
    }

    // ----- metadata -----

    fn meta(&mut self) -> Result<Metadata, ParseError> {
        self.expect_ident("meta", "'meta'")?;
        self.expect('{', "'{' after 'meta'")?;
        let mut m = Metadata::default();
        let mut seen = Vec::new();
        while !self.is_punct('}')? {
            let (key, pos) = self.name_token("a metadata key")?;
            if seen.contains(&key) {
                return Err(self.err_at(pos, format!("metadata key '{key}' is given twice")));
            }
            self.expect('=', &format!("'=' after '{key}'"))?;
            match key.as_str() {
                "ir_version" => m.ir_version = self.int("the IR version")?,
                "model_version" => m.model_version = self.int("the model version")?,
                "producer_name" => m.producer_name = self.expect_string("a string")?,
                "producer_version" => m.producer_version = self.expect_string("a string")?,
                "domain" => m.domain = self.expect_string("a string")?,
                "doc_string" => m.doc_string = self.expect_string("a string")?,
                "opset_import" => m.opset_imports = self.string_dict(|p| p.int("an opset version"))?,
                "props" => m.props = self.string_dict(|p| p.expect_string("a string value"))?,
                "preserved" => {
                    m.preserved = self.string_dict(|p| {
                        let pos = p.peek_pos()?;
                        let hex = p.expect_string("hex bytes as a string")?;
                        decode_hex(&hex).ok_or_else(|| p.err_at(pos, "expected an even number of hex digits"))
                    })?
                }
                _ => {
                    return Err(self.err_at(
                        pos,
                        format!(
                            "unknown metadata key '{key}' (known: ir_version, producer_name, producer_version, \
                             domain, model_version, doc_string, opset_import, props, preserved)"
                        ),
                    ));
                }
            }
            seen.push(key);
            if !self.eat(',')? && !self.is_punct('}')? {
                return Err(self.unexpected("',' or '}' after a metadata entry"));
            }
        }
        self.next()?;
        Ok(m)
    }

    /// `{"key" = value, ...}`, keeping order and repeated keys.
    fn string_dict<T>(
        &mut self,
        mut value: impl FnMut(&mut Self) -> Result<T, ParseError>,
    ) -> Result<Vec<(String, T)>, ParseError> {
        self.expect('{', "'{'")?;
        let items = self.comma_list('}', "an entry", |p| {
            let (k, _) = p.name_token("a key")?;
            p.expect('=', "'=' after the key")?;
            Ok((k, value(p)?))
        })?;
        self.next()?;
        Ok(items)
    }

    fn int(&mut self, what: &str) -> Result<i64, ParseError> {
        if let Tok::Int(s) = self.peek()? {
            let s = s.clone();
            let pos = self.next()?.pos;
            return s.parse::<i64>().map_err(|_| self.err_at(pos, format!("{s} does not fit in 64 bits")));
        }
        Err(self.unexpected(&format!("{what} (an integer)")))
    }

    // ----- types -----

    fn ty(&mut self) -> Result<Type, ParseError> {
        let pos = self.peek_pos()?;
        if self.eat('?')? {
            return Ok(Type::Unknown);
        }
        let Tok::Ident(word) = self.peek()?.clone() else {
            return Err(self.unexpected("a type (f32[2, batch], f32[*], seq<...>, opt<...> or ?)"));
        };
        self.next()?;
        if word == "seq" || word == "opt" {
            self.enter(pos)?;
            self.expect('<', &format!("'<' after '{word}'"))?;
            let inner = Box::new(self.ty()?);
            self.expect('>', &format!("'>' to close '{word}<'"))?;
            self.leave();
            return Ok(if word == "seq" { Type::Sequence(inner) } else { Type::Optional(inner) });
        }
        let dtype = DType::from_name(&word).ok_or_else(|| {
            self.err_at(pos, format!("unknown type '{word}' (element types are f32, i64, bool, str, f16, ...)"))
        })?;
        self.expect('[', &format!("'[' after {word} (a scalar is {word}[])"))?;
        if self.eat('*')? {
            self.expect(']', "']' after '*'")?;
            return Ok(Type::Tensor(TensorType::unranked(dtype)));
        }
        let dims = self.comma_list(']', "a dimension", |p| {
            let pos = p.peek_pos()?;
            let t = p.next()?;
            match t.tok {
                Tok::Int(s) => {
                    s.parse::<u64>().map(Dim::Fixed).map_err(|_| p.err_at(pos, format!("{s} is not a valid size")))
                }
                Tok::Ident(s) | Tok::Str(s) => Ok(Dim::Sym(s)),
                other => Err(p.err_at(pos, format!("expected a dimension, found {}", other.describe()))),
            }
        })?;
        self.next()?;
        Ok(Type::tensor(dtype, dims))
    }

    /// A tensor type whose dims are all fixed (for constants and weights).
    fn fixed_tensor_type(&mut self, what: &str) -> Result<(DType, Vec<usize>), ParseError> {
        let pos = self.peek_pos()?;
        let ty = self.ty()?;
        fixed_of(&ty).ok_or_else(|| {
            self.err_at(
                pos,
                format!("{what} must be a tensor type with fixed dims, found {}", super::print::type_text(&ty)),
            )
        })
    }

    // ----- tensors -----

    /// `dtype[dims] literal`
    fn tensor_value(&mut self) -> Result<Tensor, ParseError> {
        let (dtype, shape) = self.fixed_tensor_type("a tensor's type")?;
        self.literal(dtype, &shape)
    }

    /// A tensor literal for a known type: a scalar, `splat(x)`, or a list
    /// (flat, or nested to match the shape).
    fn literal(&mut self, dtype: DType, shape: &[usize]) -> Result<Tensor, ParseError> {
        let pos = self.peek_pos()?;
        let count = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let mut leaves = Leaves::default();
        if self.is_ident("splat")? {
            self.next()?;
            self.expect('(', "'(' after 'splat'")?;
            let epos = self.peek_pos()?;
            let e = self.element()?;
            self.expect(')', "')' after the splat value")?;
            let n = match count {
                Some(n) if data_bytes(dtype, n) <= MAX_DATA_BYTES => n as usize,
                _ => return Err(self.err_at(pos, format!("{dtype}{shape:?} is too large for a literal"))),
            };
            leaves.elems = vec![e; n];
            leaves.pos = vec![epos; n];
        } else if self.is_punct('[')? {
            self.nested(&mut leaves, 0)?;
            let n = leaves.elems.len() as u64;
            let nested_ok = leaves.dims.len() == shape.len()
                && leaves.dims.iter().zip(shape).all(|(d, s)| d.as_ref().is_some_and(|d| d.uniform && d.len == *s));
            let flat_ok = leaves.dims.len() == 1 && Some(n) == count;
            if !nested_ok && !flat_ok {
                let found: Vec<usize> = leaves.dims.iter().map(|d| d.as_ref().map_or(0, |d| d.len)).collect();
                return Err(self.err_at(
                    pos,
                    format!(
                        "the literal has {n} elements (nested as {found:?}) but the type {dtype}{shape:?} needs {}",
                        count.map_or("more than 2^64".to_string(), |c| c.to_string())
                    ),
                ));
            }
        } else {
            if !shape.is_empty() {
                return Err(self.unexpected(&format!("'[' or splat(...) for a {dtype}{shape:?} literal")));
            }
            leaves.pos.push(self.peek_pos()?);
            leaves.elems.push(self.element()?);
        }
        build_tensor(dtype, shape, &leaves.elems).map_err(|(i, m)| {
            let at = leaves.pos.get(i).copied().unwrap_or(pos);
            self.err_at(at, format!("invalid {dtype} element: {m}"))
        })
    }

    /// Reads a nested list, checking that it is regular: elements all at one
    /// depth, and every list at a depth of the same length.
    fn nested(&mut self, leaves: &mut Leaves, depth: usize) -> Result<(), ParseError> {
        let open = self.expect('[', "'['")?;
        self.enter(open)?;
        let mut n = 0usize;
        while !self.is_punct(']')? {
            let here = self.peek_pos()?;
            let is_list = self.is_punct('[')?;
            let leaf_depth = if is_list { None } else { Some(depth) };
            match leaves.leaf_depth {
                Some(d) if is_list && d == depth || !is_list && d != depth => {
                    return Err(self.err_at(here, "the tensor literal is nested unevenly"));
                }
                None if !is_list && leaves.dims.len() > depth + 1 => {
                    return Err(self.err_at(here, "the tensor literal is nested unevenly"));
                }
                _ => {}
            }
            if is_list {
                self.nested(leaves, depth + 1)?;
            } else {
                leaves.leaf_depth = leaf_depth;
                leaves.pos.push(here);
                leaves.elems.push(self.element()?);
            }
            n += 1;
            if !self.eat(',')? && !self.is_punct(']')? {
                return Err(self.unexpected("',' or ']' in a tensor literal"));
            }
        }
        self.next()?;
        self.leave();
        // Inner lists close first, so deeper entries may already exist.
        if leaves.dims.len() <= depth {
            leaves.dims.resize_with(depth + 1, || None);
        }
        match &mut leaves.dims[depth] {
            Some(d) => d.uniform &= d.len == n,
            slot => *slot = Some(DepthInfo { len: n, uniform: true }),
        }
        Ok(())
    }

    /// One element: a number, `inf`, `nan`, `bits(0x..)`, `true`/`false`, a
    /// string, or a complex pair `(re, im)`.
    fn element(&mut self) -> Result<Elem, ParseError> {
        let pos = self.peek_pos()?;
        let t = self.next()?;
        Ok(match t.tok {
            Tok::Int(s) | Tok::Float(s) => Elem::Num(s),
            Tok::Str(s) => Elem::Str(s),
            Tok::Minus => match self.next()?.tok {
                Tok::Ident(w) if w == "inf" => Elem::Inf { neg: true },
                Tok::Ident(w) if w == "nan" => Elem::Nan { neg: true },
                _ => return Err(self.err_at(pos, "expected inf or nan after '-'")),
            },
            Tok::Ident(w) => match w.as_str() {
                "inf" => Elem::Inf { neg: false },
                "nan" => Elem::Nan { neg: false },
                "true" => Elem::Bool(true),
                "false" => Elem::Bool(false),
                "bits" => {
                    self.expect('(', "'(' after 'bits'")?;
                    let hpos = self.peek_pos()?;
                    let Tok::Hex(h) = self.next()?.tok else {
                        return Err(self.err_at(hpos, "expected a hexadecimal bit pattern like 0x7fc00001"));
                    };
                    self.expect(')', "')' after the bit pattern")?;
                    Elem::Bits(h)
                }
                _ => return Err(self.err_at(pos, format!("expected a tensor element, found '{w}'"))),
            },
            Tok::Punct('(') => {
                self.enter(pos)?;
                let re = self.element()?;
                self.expect(',', "',' between the real and imaginary parts")?;
                let im = self.element()?;
                self.expect(')', "')' after the imaginary part")?;
                self.leave();
                Elem::Complex(Box::new(re), Box::new(im))
            }
            other => return Err(self.err_at(pos, format!("expected a tensor element, found {}", other.describe()))),
        })
    }
}

/// Registers a value name, rejecting duplicates.
fn define(p: &Parser<'_, '_>, scope: &mut Scope, name: String, v: ValueRef, pos: usize) -> Result<(), ParseError> {
    if let Some((_, first)) = scope.values.get(&name) {
        return Err(p.err_at(
            pos,
            format!(
                "value %{} is already defined at {}",
                super::quote_name(&name),
                ParseError::at(p.src, *first, "").location()
            ),
        ));
    }
    scope.values.insert(name, (v, pos));
    Ok(())
}

fn fixed_of(ty: &Type) -> Option<(DType, Vec<usize>)> {
    let t = ty.as_tensor()?;
    let dims = t.shape.as_ref()?.as_fixed()?;
    Some((t.dtype, dims))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

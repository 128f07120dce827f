//! The IR text format: a readable, deterministic, MLIR-like form of a
//! [`Graph`], with a printer ([`print`]) and a parser ([`parse`],
//! [`parse_with_weights`]).
//!
//! Tests state graphs in this text, snapshot tests compare it, and
//! `sharc opt` reads and writes it as `.sharc` files, so it is exact: for
//! every valid graph `g`,
//! `print(&parse_with_weights(&print(&g), &g.weights)?) == print(&g)`.
//!
//! ```
//! use sharc_ir::text::{parse, print};
//! let src = r#"graph @tiny(%x: f32[batch, 16]) -> (%y) {
//!   %w = weight @fc.weight : f32[16, 8]  // sha db6dff5b254a
//!   %0 = MatMul(%x, %w) : f32[batch, 8]
//!   %y = Relu(%0) : f32[batch, 8]
//! }
//! "#;
//! let g = parse(src).unwrap();
//! assert_eq!(g.node_count(), 4);
//! assert_eq!(print(&g), src);
//! ```
//!
//! # Syntax
//!
//! A file is an optional metadata line followed by one graph. `//` starts a
//! comment that runs to the end of the line; whitespace is free.
//!
//! ```text
//! file      := [meta] graph
//! meta      := 'meta' '{' key '=' value, ... '}'
//! graph     := 'graph' @name '(' input, ... ')' ['captures' '(' input, ... ')']
//!              '->' '(' output, ... ')' '{' statement* '}'
//! input     := %name [':' type] [loc]
//! output    := %value ['as' name]
//! statement := %r, ... '=' op '(' operand, ... ')' [attrs] [':' type, ...] [loc]
//!            | %r '=' 'const' tensor-type literal [':' type] [loc]
//!            | %r '=' 'weight' @name [tensor-type] [':' type] ['=' literal] [loc]
//!            | %r '=' 'input' [':' type] [loc]
//!            | op '(' operand, ... ')' [attrs] [loc]        (a node without outputs)
//!            | 'weight' @name [tensor-type] [':' type] ['=' literal]  (a stored weight no node uses)
//! operand   := %value | '_'                                   (_ = absent optional input)
//! op        := Name | domain.Name | "domain".Name | "".Name
//! attrs     := '{' name '=' attr-value, ... '}'
//! loc       := 'loc' '(' "node name" ')'
//! type      := '?' | dtype '[' dim, ... ']' | dtype '[*]' | 'seq' '<' type '>' | 'opt' '<' type '>'
//! dim       := 123 | symbol | "quoted symbol"
//! ```
//!
//! **Names.** Values are `%name`, graphs and weights `@name`. Names made of
//! ASCII letters, digits, `_` and `.` are written bare; any other name is
//! quoted (`%"onnx::MatMul_123"`, `@"layer.0/attn"`). Names are kept exactly:
//! they are the ONNX names and survive import → print → parse → export. A
//! graph output whose name differs from its value's is written
//! `%value as name`. A node's own name (the ONNX node name) follows as
//! `loc("...")` and is omitted when empty.
//!
//! **Values and types.** Each node lists its results, the op, its operands
//! and, after `:`, one type per result; the types are omitted when all are
//! unknown (`?`). Types are `f32[batch, 16]` (symbolic dims are bare or
//! quoted symbols), `f32[]` (a scalar), `f32[*]` (rank unknown), `seq<T>`,
//! `opt<T>` and `?`. Element types use the short names of
//! [`DType::name`](crate::DType::name): `f32`, `i64`, `bool`, `str`,
//! `f8e4m3fn`, ...
//!
//! **Ops.** Typed ops are written by their ONNX name and read back through
//! [`Op::from_onnx_default_domain`](crate::Op::from_onnx_default_domain).
//! Ops of other domains are `com.microsoft.FusedMatMul(...)` (or
//! `"my-domain".Op(...)` when the domain is not made of identifiers) and are
//! always opaque. An unmodelled op of the default domain is written bare; an
//! opaque default-domain op whose name sharc models is written `"".Name` so
//! that it stays opaque. Nodes are printed in [`Graph::topo_order`], so the
//! text is deterministic. When parsing, operands may refer to values defined
//! further down.
//!
//! **Attributes** use ONNX names and are printed from [`Op::attrs`](crate::Op::attrs)
//! (sorted, defaults left out): `1` (int), `1.0` (float; see below for exact
//! floats), `"s"` (string), `[1, 2]` (ints), `[1.0]` (floats), `["a"]`
//! (strings), `f32[2] [1.0, 2.0]` (a tensor), `[f32[] 1.0, i64[] 2]`
//! (tensors), `graph @body(...) ... { ... }` (a graph), `[graph ..., graph ...]`
//! (graphs) and `type f32[2]` (a type). An empty list is `[]` for ints and
//! `floats[]`, `strings[]`, `tensors[]`, `graphs[]` otherwise. Typed ops
//! print their element-type attributes (`to`, `dtype`, `output_datatype`) by
//! name: `Cast(%x) {to = f16}`; any int attribute may be written that way.
//!
//! **Body graphs** (If branches, Loop and Scan bodies, graph attributes of
//! opaque ops) are nested inline as graph-valued attributes, with their
//! formal inputs in `(...)` and their captures in `captures(...)`. The
//! owning node lists the captured outer values as its trailing operands, in
//! capture order (see [`Graph::captures`]); a body sees no other outer value.
//!
//! **Constants** carry their data: `%c = const i64[3] [0, -1, 384]`. Rank 0
//! is a bare element (`const f32[] 0.5`), rank 1 a list, higher ranks nested
//! lists like numpy (a flat list of the right length is accepted too), and a
//! tensor whose elements are all equal is `splat(x)`. Elements print exactly:
//! `f32`/`f64` in shortest round-trip form (`0.1`, `1e-7`, `-0.0`), `f16` and
//! `bf16` in the shortest decimal that reads back to the same value, narrow
//! formats as the exact value of their code (a value the format cannot
//! represent is an error, never rounded), `inf`, `-inf`, `nan`, `-nan` for
//! the canonical quiet NaN, `bits(0x7fc00001)` for any other bit pattern
//! (NaN payloads), `true`/`false`, escaped strings (`\" \\ \n \t \r \0
//! \u{7f}`) and complex pairs `(1.0, -2.0)`.
//!
//! **Weights** print as a summary, never their data:
//! `%w = weight @fc.weight : f32[16, 8]  // sha 3f2a9b01c2d4`, where the
//! comment is [`Weight::content_hash`](crate::Weight::content_hash). Nodes
//! naming the same `@weight` share one stored weight. A weight in the store
//! that no node uses is listed as `weight @name : f32[3]` at the end of the
//! body. When the value's type differs from the weight's (after a pass
//! changed it), both are shown: `weight @w f32[16, 8] : ?`.
//!
//! **Metadata** that export needs is kept in a header line, printed only when
//! not all defaults:
//! `meta {ir_version = 8, producer_name = "pytorch", opset_import = {"" = 17, "com.microsoft" = 1}}`.
//! The keys are `ir_version`, `producer_name`, `producer_version`, `domain`,
//! `model_version`, `doc_string`, `opset_import`, `props` (string pairs) and
//! `preserved` (byte blobs as hex strings). A body graph with metadata of its
//! own writes `meta {...}` before its `graph`.
//!
//! # Where weights come from when parsing
//!
//! [`parse_with_weights`] looks every `weight @name` up by name in the store
//! it is given (also inside body graphs) and fails when the name is missing
//! or the dtype or shape disagree. Body graphs own their weight stores, so
//! for a graph whose bodies hold weights, pass [`all_weights`]`(&g)` rather
//! than `&g.weights`. [`parse`] instead gives each declared
//! weight synthetic data, deterministically: a SplitMix64 generator seeded
//! with the 64-bit FNV-1a hash of the weight's name fills the tensor in
//! row-major order, floats uniform in [-1, 1) (the top 24 bits of each draw
//! for 32-bit and smaller floats, 53 bits for `f64`; complex numbers draw the
//! real part first), signed integers uniform in [-8, 8), unsigned ones in
//! [0, 16), bools from the lowest bit, strings `name#index`, and narrow
//! formats a random code with NaN and infinity codes replaced by zero. In
//! both, an explicit `= literal` after a weight's type gives its exact data
//! instead (`%w = weight @w : f32[2] = [0.5, -1.0]`), so tests can state
//! exact values. A weight or literal larger than 1 GiB is refused.
//!
//! # Known limits
//!
//! Printing is total: any graph prints, even an invalid one (a dangling
//! reference prints as a marker that does not parse back, a cycle prints in
//! node-id order with a warning comment). Value names must be unique within
//! each graph, as the verifier demands, since text refers to values by name.
//! `parse(print(g))` is [`Graph::structurally_equal`] to `g` when `g` has no
//! weights (with weights, `parse` invents their data) and no NaN constants
//! (NaN is not equal to itself); the printed texts are equal in every case.

mod lex;
mod literal;
mod parse;
mod print;

pub use print::print;

use crate::{Graph, WeightStore};
use std::fmt;

/// Parses IR text into a graph, giving declared weights deterministic
/// synthetic data (see the [module docs](self)).
pub fn parse(src: &str) -> Result<Graph, ParseError> {
    parse::parse_file(src, parse::WeightSource::Synthetic)
}

/// Parses IR text into a graph, taking each `weight @name` from `weights` by
/// name. Fails when a weight is missing there or its dtype or shape differ
/// from the text's.
pub fn parse_with_weights(src: &str, weights: &WeightStore) -> Result<Graph, ParseError> {
    parse::parse_file(src, parse::WeightSource::store(weights))
}

/// A parse error: what went wrong and where, with the source line for
/// display. `Display` renders it with a caret under the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What went wrong and, where it helps, what was expected.
    pub message: String,
    /// The text of the offending line.
    pub source_line: String,
}

impl ParseError {
    /// An error at byte offset `pos` of `src`.
    pub(crate) fn at(src: &str, pos: usize, message: impl Into<String>) -> ParseError {
        let mut pos = pos.min(src.len());
        while !src.is_char_boundary(pos) {
            pos -= 1;
        }
        let line_start = src[..pos].rfind('\n').map_or(0, |i| i + 1);
        let line_end = src[pos..].find('\n').map_or(src.len(), |i| pos + i);
        ParseError {
            line: src[..pos].matches('\n').count() + 1,
            column: src[line_start..pos].chars().count() + 1,
            message: message.into(),
            source_line: src[line_start..line_end].trim_end_matches('\r').to_string(),
        }
    }

    /// `line L, column C`.
    pub fn location(&self) -> String {
        format!("line {}, column {}", self.line, self.column)
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let num = self.line.to_string();
        let pad = " ".repeat(num.len());
        // Keep tabs under tabs so the caret lines up in a terminal.
        let lead: String =
            self.source_line.chars().take(self.column - 1).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
        writeln!(f, "error: {}", self.message)?;
        writeln!(f, "{pad}--> {}", self.location())?;
        writeln!(f, "{pad} |")?;
        writeln!(f, "{num} | {}", self.source_line)?;
        write!(f, "{pad} | {lead}^")
    }
}

impl std::error::Error for ParseError {}

/// True for names printed without quotes after `%` or `@`.
fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(lex::is_name_char)
}

/// True for identifiers printed bare (dims, attribute names, op names).
pub(crate) fn is_plain_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A `%`/`@` name as printed (without the sigil).
pub(crate) fn quote_name(s: &str) -> String {
    if is_plain_name(s) { s.to_string() } else { quote_str(s) }
}

pub(crate) use literal::quote_str;

/// Every weight of a graph and of its body graphs, in one store, for
/// [`parse_with_weights`]: body graphs keep their own stores, while the text
/// names weights in one namespace. The first weight of a name wins.
pub fn all_weights(g: &Graph) -> WeightStore {
    fn walk(g: &Graph, out: &mut WeightStore, seen: &mut std::collections::HashSet<String>) {
        for (_, w) in g.weights.iter() {
            if seen.insert(w.name.clone()) {
                let _ = out.add(w.clone());
            }
        }
        for id in g.node_ids() {
            for body in g.node(id).op.subgraphs() {
                walk(body, out, seen);
            }
        }
    }
    let mut out = WeightStore::new();
    walk(g, &mut out, &mut Default::default());
    out
}

#[cfg(test)]
mod tests;

//! Dims known only at run time.
//!
//! Specialising fixes every dim that follows from the input shapes. What is
//! left is data-dependent: the count of `NonZero`, and everything derived
//! from it (`n`, `2*n`, `bcast(n, 1)`...). Such dims are written `?` in the
//! MLIR types, and their sizes are `index` values computed once, at the top
//! of `@main`, from the symbols they mention. A symbol gets its value where
//! it is produced: the op that makes the data-dependent dim (NonZero) binds
//! it to the count it computed, so a later `tensor.empty` of `n x 64` reads
//! that count. Bufferization then allocates exactly that many elements: no
//! upper bound, no padding, nothing that changes the semantics.
//!
//! A dim is carried as the canonical text of sharc's symbolic expressions
//! ([`sharc_ir::infer::Expr`]): equal dims print equally, so the text is the
//! key of a cache that computes each size once.

use super::{Emitter, R, elem_type};
use crate::MlirError;
use crate::specialise::label;
use sharc_ir::infer::Expr;
use sharc_ir::{DType, Dim, NodeId, ValueRef};

/// One dim of a lowered value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Dv {
    /// A size fixed at compile time.
    N(u64),
    /// A size known at run time: the expression's canonical text.
    S(String),
}

impl Dv {
    /// The size, when it is fixed.
    pub(crate) fn fixed(&self) -> Option<u64> {
        match self {
            Dv::N(n) => Some(*n),
            Dv::S(_) => None,
        }
    }
}

/// How a dim prints inside an MLIR shaped type.
pub(crate) trait DimText {
    /// `3` or `?`.
    fn text(&self) -> String;
}

impl DimText for u64 {
    fn text(&self) -> String {
        self.to_string()
    }
}

impl DimText for Dv {
    fn text(&self) -> String {
        match self {
            Dv::N(n) => n.to_string(),
            Dv::S(_) => "?".to_string(),
        }
    }
}

/// Fixed dims as [`Dv`]s.
pub(crate) fn dv(shape: &[u64]) -> Vec<Dv> {
    shape.iter().map(|&d| Dv::N(d)).collect()
}

/// The shape as numbers, when every dim is fixed.
pub(crate) fn all_fixed(shape: &[Dv]) -> Option<Vec<u64>> {
    shape.iter().map(Dv::fixed).collect()
}

/// Tokens of the expression text (the grammar of `Expr::parse`).
#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Int(i64),
    Name(String),
    Op(&'static str),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let cs: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        match c {
            ' ' => i += 1,
            '/' if cs.get(i + 1) == Some(&'/') => {
                out.push(Tok::Op("//"));
                i += 2;
            }
            '+' | '-' | '*' | '%' | '^' | '(' | ')' | ',' => {
                out.push(Tok::Op(match c {
                    '+' => "+",
                    '-' => "-",
                    '*' => "*",
                    '%' => "%",
                    '^' => "^",
                    '(' => "(",
                    ')' => ")",
                    _ => ",",
                }));
                i += 1;
            }
            '"' => {
                let mut name = String::new();
                i += 1;
                loop {
                    match cs.get(i) {
                        None => return Err(format!("unterminated symbol in '{s}'")),
                        Some('"') => break,
                        Some('\\') => {
                            name.extend(cs.get(i + 1));
                            i += 2;
                        }
                        Some(&c) => {
                            name.push(c);
                            i += 1;
                        }
                    }
                }
                i += 1;
                out.push(Tok::Name(name));
            }
            c if c.is_ascii_digit() => {
                let start = i;
                while i < cs.len() && cs[i].is_ascii_digit() {
                    i += 1;
                }
                let text: String = cs[start..i].iter().collect();
                out.push(Tok::Int(text.parse().map_err(|_| format!("'{text}' is out of range in '{s}'"))?));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < cs.len() && (cs[i].is_ascii_alphanumeric() || cs[i] == '_') {
                    i += 1;
                }
                out.push(Tok::Name(cs[start..i].iter().collect()));
            }
            other => return Err(format!("unexpected '{other}' in the dim '{s}'")),
        }
    }
    Ok(out)
}

/// A recursive-descent reader of the expression text that emits `index`
/// arithmetic as it goes (precedence as in `Expr::parse`: `+ -` below
/// `* // %` below unary minus and `^`).
struct Eval<'e, 'a> {
    em: &'e mut Emitter<'a>,
    toks: Vec<Tok>,
    pos: usize,
    text: String,
}

impl Eval<'_, '_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn bad(&self) -> MlirError {
        MlirError::Graph(format!("the dim '{}' is not an expression the MLIR backend can evaluate", self.text))
    }

    fn expr(&mut self) -> R<String> {
        let mut e = self.term()?;
        loop {
            if self.eat("+") {
                let r = self.term()?;
                e = self.em.index_op("arith.addi", &e, &r);
            } else if self.eat("-") {
                let r = self.term()?;
                e = self.em.index_op("arith.subi", &e, &r);
            } else {
                return Ok(e);
            }
        }
    }

    fn term(&mut self) -> R<String> {
        let mut e = self.unary()?;
        loop {
            if self.eat("*") {
                let r = self.unary()?;
                e = self.em.index_op("arith.muli", &e, &r);
            } else if self.eat("//") {
                let r = self.unary()?;
                e = self.em.index_op("arith.floordivsi", &e, &r);
            } else if self.eat("%") {
                // Modulo with the divisor's sign: a - b * floor(a / b).
                let r = self.unary()?;
                let q = self.em.index_op("arith.floordivsi", &e, &r);
                let p = self.em.index_op("arith.muli", &r, &q);
                e = self.em.index_op("arith.subi", &e, &p);
            } else {
                return Ok(e);
            }
        }
    }

    fn unary(&mut self) -> R<String> {
        if self.eat("-") {
            let x = self.unary()?;
            let z = self.em.index_const(0);
            return Ok(self.em.index_op("arith.subi", &z, &x));
        }
        let base = self.primary()?;
        if self.eat("^") {
            let Some(Tok::Int(p)) = self.peek().cloned() else { return Err(self.bad()) };
            self.pos += 1;
            if !(1..=16).contains(&p) {
                return Err(self.bad());
            }
            let mut e = base.clone();
            for _ in 1..p {
                e = self.em.index_op("arith.muli", &e, &base);
            }
            return Ok(e);
        }
        Ok(base)
    }

    fn primary(&mut self) -> R<String> {
        match self.peek().cloned().ok_or_else(|| self.bad())? {
            Tok::Int(v) => {
                self.pos += 1;
                Ok(self.em.index_const(v))
            }
            Tok::Op("(") => {
                self.pos += 1;
                let e = self.expr()?;
                if self.eat(")") { Ok(e) } else { Err(self.bad()) }
            }
            Tok::Name(name) => {
                self.pos += 1;
                if matches!(name.as_str(), "min" | "max" | "bcast") && self.eat("(") {
                    let a = self.expr()?;
                    if !self.eat(",") {
                        return Err(self.bad());
                    }
                    let b = self.expr()?;
                    if !self.eat(")") {
                        return Err(self.bad());
                    }
                    return Ok(match name.as_str() {
                        "min" => self.em.index_op("arith.minsi", &a, &b),
                        "max" => self.em.index_op("arith.maxsi", &a, &b),
                        _ => {
                            // numpy broadcasting: the one that is not 1.
                            let one = self.em.index_const(1);
                            let c = self.em.fresh();
                            self.em.push(format!("{c} = arith.cmpi eq, {a}, {one} : index"));
                            let s = self.em.fresh();
                            self.em.push(format!("{s} = arith.select {c}, {b}, {a} : index"));
                            s
                        }
                    });
                }
                self.em.symbol(&name)
            }
            _ => Err(self.bad()),
        }
    }
}

impl<'a> Emitter<'a> {
    /// The dtype and dims of a value; data-dependent dims stay symbolic.
    pub(crate) fn dims_of(&self, v: ValueRef) -> R<(DType, Vec<Dv>)> {
        let info = self.g.value_info(v);
        let t = info
            .ty
            .as_tensor()
            .ok_or_else(|| MlirError::Graph(format!("value '{}' is not a tensor ({})", info.name, info.ty)))?;
        let shape = t.shape.as_ref().ok_or_else(|| {
            MlirError::Graph(format!("value '{}' has an unknown rank even with all input dims given", info.name))
        })?;
        let dims = shape
            .dims()
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => Dv::N(*n),
                Dim::Sym(s) => Dv::S(s.clone()),
            })
            .collect();
        Ok((t.dtype, dims))
    }

    /// An `index` constant, made once at the top of the function.
    pub(crate) fn index_const(&mut self, v: i64) -> String {
        let key = format!("#const {v}");
        if let Some(s) = self.size_cache.get(&key) {
            return s.clone();
        }
        let s = self.fresh();
        self.push(format!("{s} = arith.constant {v} : index"));
        self.size_cache.insert(key, s.clone());
        s
    }

    pub(crate) fn index_op(&mut self, op: &str, a: &str, b: &str) -> String {
        let s = self.fresh();
        self.push(format!("{s} = {op} {a}, {b} : index"));
        s
    }

    /// The run-time value of a symbol, bound by the op that produced it.
    fn symbol(&mut self, name: &str) -> R<String> {
        self.env.get(name).cloned().ok_or_else(|| {
            MlirError::Graph(format!(
                "the dim '{name}' is data-dependent and no lowered op computes it (the op that makes it has \
                 no dynamic-shape lowering)"
            ))
        })
    }

    /// The size of a dim as an `index` SSA value.
    pub(crate) fn dim_ssa(&mut self, d: &Dv) -> R<String> {
        let text = match d {
            Dv::N(n) => return Ok(self.index_const(*n as i64)),
            Dv::S(s) => s.clone(),
        };
        if let Some(s) = self.size_cache.get(&text) {
            return Ok(s.clone());
        }
        let parsed = Expr::parse(&text);
        let s = if let Some(v) = parsed.as_ref().and_then(Expr::as_int) {
            self.index_const(v)
        } else if let Some(name) = parsed.as_ref().and_then(|e| e.as_sym().map(str::to_string)) {
            self.symbol(&name)?
        } else {
            let toks = tokenize(&text).map_err(MlirError::Graph)?;
            let mut ev = Eval { em: self, toks, pos: 0, text: text.clone() };
            let s = ev.expr()?;
            if ev.pos != ev.toks.len() {
                return Err(ev.bad());
            }
            s
        };
        self.size_cache.insert(text, s.clone());
        Ok(s)
    }

    /// A size for a mixed static/dynamic operand list (`[0, %n]`).
    pub(crate) fn dim_operand(&mut self, d: &Dv) -> R<String> {
        match d {
            Dv::N(n) => Ok(n.to_string()),
            Dv::S(_) => self.dim_ssa(d),
        }
    }

    /// `tensor.empty` of a shape, with the dynamic sizes as operands.
    pub(crate) fn empty(&mut self, dt: DType, shape: &[Dv]) -> R<String> {
        let mut dyns = Vec::new();
        for d in shape {
            if let Dv::S(_) = d {
                dyns.push(self.dim_ssa(d)?);
            }
        }
        let s = self.fresh();
        self.push(format!("{s} = tensor.empty({}) : {}", dyns.join(", "), super::tensor_ty(dt, shape)));
        Ok(s)
    }

    /// Makes `ssa` (an `index`) the value of a data-dependent dim: the dim
    /// must be a plain symbol, not yet bound. A dim that inference fixed is
    /// checked by the caller's arithmetic instead.
    pub(crate) fn bind(&mut self, id: NodeId, d: &Dv, ssa: &str) -> R<()> {
        let Dv::S(text) = d else { return Ok(()) };
        let name = Expr::parse(text).and_then(|e| e.as_sym().map(str::to_string)).ok_or_else(|| {
            MlirError::unsupported(
                &label(self.g, id),
                self.g.node(id).op.op_type(),
                format!("its data-dependent dim '{text}' is an expression, not a fresh symbol"),
            )
        })?;
        if self.env.contains_key(&name) {
            return Err(MlirError::unsupported(
                &label(self.g, id),
                self.g.node(id).op.op_type(),
                format!("the data-dependent dim '{name}' is produced twice"),
            ));
        }
        self.env.insert(name.clone(), ssa.to_string());
        self.size_cache.insert(text.clone(), ssa.to_string());
        Ok(())
    }

    /// A tensor of integers from `index` values (shape vectors computed from
    /// run-time dims), of the given integer dtype and static shape.
    pub(crate) fn tensor_of_indices(&mut self, vals: &[String], dt: DType, shape: &[u64]) -> R<String> {
        let e = elem_type(dt).ok_or_else(|| MlirError::Graph(format!("no element type for {dt}")))?;
        let mut elems = Vec::new();
        for v in vals {
            let s = self.fresh();
            self.push(format!("{s} = arith.index_cast {v} : index to {e}"));
            elems.push(s);
        }
        let s = self.fresh();
        self.push(format!("{s} = tensor.from_elements {} : {}", elems.join(", "), super::tensor_ty(dt, shape)));
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expression_text_tokenizes_like_the_ir_parser() {
        let t = tokenize("(\"a/b\"+1)//2-3*n^2").unwrap();
        assert_eq!(t[1], Tok::Name("a/b".into()));
        assert!(t.contains(&Tok::Op("//")));
        assert!(t.contains(&Tok::Op("^")));
        assert!(tokenize("a $ b").is_err());
    }

    #[test]
    fn shaped_types_print_question_marks_for_run_time_dims() {
        let d = [Dv::N(2), Dv::S("n".into())];
        assert_eq!(super::super::tensor_ty(DType::I64, &d), "tensor<2x?xi64>");
        assert_eq!(all_fixed(&d), None);
        assert_eq!(all_fixed(&dv(&[3, 4])), Some(vec![3, 4]));
    }
}

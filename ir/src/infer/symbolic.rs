//! Symbolic dimension expressions.
//!
//! A derived dimension such as "batch times seq" or "seq minus one" is kept
//! as an [`Expr`]: a polynomial with integer coefficients over *atoms*. An
//! atom is a named symbol (`batch`), or one of the few non-polynomial
//! functions that shape rules need: floor division, modulo, `min`, `max` and
//! `bcast` (the result of broadcasting two dims). Arguments of function atoms
//! are themselves canonical expressions.
//!
//! Every constructor normalises, so two expressions that are equal as
//! polynomials have the same representation and compare equal; printing is a
//! pure function of that representation, and [`Expr::parse`] reads it back
//! exactly (`parse(e.to_string()) == e`). That is what lets a derived dim live
//! in a plain [`Dim::Sym`] string and still be recognised when a later pass
//! (or a second run of inference) meets it again.
//!
//! Text form: `+ - *`, `//` (floor division), `%` (modulo, sign of the
//! divisor), `^` (a small power), `min(a, b)`, `max(a, b)`, `bcast(a, b)`,
//! integers, identifiers, and symbols in double quotes when their name is not
//! an identifier. Examples: `batch*seq`, `seq-1`, `(h+1)//2-1`,
//! `min(512, seq)`. Terms are ordered by monomial with the constant last, and
//! the arguments of `min`, `max` and `bcast` in a fixed order.
//!
//! Floor division by a constant `k` keeps only the part of the dividend that
//! `k` does not divide: `(h-3)//2+1` is stored, and printed, as `(h+1)//2-1`.
//! The normal form is complete for polynomials; identities that need case
//! analysis of floor, `min` or `max` (`h - h//2` against `(h+1)//2`) are not
//! recognised, so such expressions may compare unequal although they are
//! equal. That costs precision, never correctness.
//!
//! Comparisons ([`Expr::cmp_sym`]) use interval arithmetic under one
//! documented assumption: **every symbol is a size in `[0, 2^62)`**. That is
//! enough to decide that `seq + 1 > 0`, that `seq != -1`, or that an `INT64_MAX`
//! slice end lies beyond any dim, and it never decides anything a valid run
//! could contradict.

use crate::Dim;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

/// The largest value a symbol is assumed to take (sizes stay below 2^62).
pub const SYM_MAX: i128 = (1i128 << 62) - 1;

/// The highest power of one atom an expression may hold; a product beyond
/// it counts as an overflow. It bounds every loop over powers, which no real
/// shape computation comes near.
const MAX_POWER: u32 = 64;

/// Names that the text form reserves for functions.
const FUNCTIONS: [&str; 3] = ["min", "max", "bcast"];

/// A factor of a monomial: a symbol or a function of expressions.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Atom {
    /// A named size.
    Sym(String),
    /// `floor(a / b)`.
    FloorDiv(Expr, Expr),
    /// `a - b * floor(a / b)`.
    Mod(Expr, Expr),
    /// The smaller of two expressions (arguments in canonical order).
    Min(Expr, Expr),
    /// The larger of two expressions (arguments in canonical order).
    Max(Expr, Expr),
    /// The numpy broadcast of two dims: `a` when `b == 1`, `b` when `a == 1`,
    /// either when they are equal (arguments in canonical order).
    Bcast(Expr, Expr),
}

/// A product of atoms with positive powers, sorted by atom.
type Mono = Vec<(Atom, u32)>;

/// A canonical polynomial over [`Atom`]s with `i64` coefficients. See the
/// [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Expr {
    /// Monomial → non-zero coefficient; the empty monomial is the constant.
    terms: BTreeMap<Mono, i64>,
}

fn mono_mul(a: &Mono, b: &Mono) -> Option<Mono> {
    let mut out: Mono = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let take_a = j >= b.len() || (i < a.len() && a[i].0 <= b[j].0);
        let take_b = i >= a.len() || (j < b.len() && b[j].0 <= a[i].0);
        if take_a && take_b {
            let p = a[i].1.checked_add(b[j].1).filter(|&p| p <= MAX_POWER)?;
            out.push((a[i].0.clone(), p));
            i += 1;
            j += 1;
        } else if take_a {
            out.push(a[i].clone());
            i += 1;
        } else {
            out.push(b[j].clone());
            j += 1;
        }
    }
    Some(out)
}

/// `a / b` for monomials when `b` divides `a`.
fn mono_div(a: &Mono, b: &Mono) -> Option<Mono> {
    let mut out = a.clone();
    for (atom, p) in b {
        let pos = out.iter().position(|(x, _)| x == atom)?;
        let have = out[pos].1;
        match have.cmp(p) {
            Ordering::Less => return None,
            Ordering::Equal => {
                out.remove(pos);
            }
            Ordering::Greater => out[pos].1 = have - p,
        }
    }
    Some(out)
}

fn mono_degree(m: &Mono) -> u32 {
    m.iter().map(|(_, p)| *p).sum()
}

/// Interval arithmetic on `i128`, saturating outwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    lo: i128,
    hi: i128,
}

impl Range {
    const ALL: Range = Range { lo: i128::MIN, hi: i128::MAX };

    fn point(v: i128) -> Range {
        Range { lo: v, hi: v }
    }

    fn add(self, o: Range) -> Range {
        Range { lo: self.lo.saturating_add(o.lo), hi: self.hi.saturating_add(o.hi) }
    }

    fn mul(self, o: Range) -> Range {
        let c = [
            self.lo.saturating_mul(o.lo),
            self.lo.saturating_mul(o.hi),
            self.hi.saturating_mul(o.lo),
            self.hi.saturating_mul(o.hi),
        ];
        Range { lo: *c.iter().min().expect("four corners"), hi: *c.iter().max().expect("four corners") }
    }

    fn nonneg(self) -> bool {
        self.lo >= 0
    }
}

impl Expr {
    /// The constant `v`.
    pub fn int(v: i64) -> Expr {
        let mut terms = BTreeMap::new();
        if v != 0 {
            terms.insert(Vec::new(), v);
        }
        Expr { terms }
    }

    /// The constant zero.
    pub fn zero() -> Expr {
        Expr::default()
    }

    /// A named symbol.
    pub fn sym(name: impl Into<String>) -> Expr {
        Expr::atom(Atom::Sym(name.into()))
    }

    fn atom(a: Atom) -> Expr {
        let mut terms = BTreeMap::new();
        terms.insert(vec![(a, 1)], 1);
        Expr { terms }
    }

    /// The value, if the expression is a constant.
    pub fn as_int(&self) -> Option<i64> {
        match self.terms.len() {
            0 => Some(0),
            1 => self.terms.get(&Vec::new()).copied(),
            _ => None,
        }
    }

    /// True for a constant.
    pub fn is_const(&self) -> bool {
        self.as_int().is_some()
    }

    /// The single atom, if the expression is exactly one atom.
    pub fn as_atom(&self) -> Option<&Atom> {
        if self.terms.len() != 1 {
            return None;
        }
        let (m, c) = self.terms.iter().next()?;
        match (m.as_slice(), c) {
            ([(a, 1)], 1) => Some(a),
            _ => None,
        }
    }

    /// The symbol name, if the expression is exactly one symbol.
    pub fn as_sym(&self) -> Option<&str> {
        match self.as_atom() {
            Some(Atom::Sym(s)) => Some(s),
            _ => None,
        }
    }

    /// Every symbol name that occurs, recursively, sorted and deduplicated.
    pub fn symbols(&self) -> Vec<String> {
        fn walk(e: &Expr, out: &mut Vec<String>) {
            for m in e.terms.keys() {
                for (a, _) in m {
                    match a {
                        Atom::Sym(s) => out.push(s.clone()),
                        Atom::FloorDiv(x, y)
                        | Atom::Mod(x, y)
                        | Atom::Min(x, y)
                        | Atom::Max(x, y)
                        | Atom::Bcast(x, y) => {
                            walk(x, out);
                            walk(y, out);
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out.sort();
        out.dedup();
        out
    }

    fn add_term(&mut self, m: Mono, c: i64) -> Option<()> {
        if c == 0 {
            return Some(());
        }
        let entry = self.terms.entry(m);
        match entry {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(c);
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                let s = o.get().checked_add(c)?;
                if s == 0 {
                    o.remove();
                } else {
                    *o.get_mut() = s;
                }
            }
        }
        Some(())
    }

    /// `self + o`, or `None` on coefficient overflow.
    pub fn add(&self, o: &Expr) -> Option<Expr> {
        let mut r = self.clone();
        for (m, c) in &o.terms {
            r.add_term(m.clone(), *c)?;
        }
        Some(r)
    }

    /// `-self`.
    pub fn neg(&self) -> Option<Expr> {
        let mut r = Expr::zero();
        for (m, c) in &self.terms {
            r.terms.insert(m.clone(), c.checked_neg()?);
        }
        Some(r)
    }

    /// `self - o`.
    pub fn sub(&self, o: &Expr) -> Option<Expr> {
        self.add(&o.neg()?)
    }

    /// `self * o`.
    pub fn mul(&self, o: &Expr) -> Option<Expr> {
        let mut r = Expr::zero();
        for (ma, ca) in &self.terms {
            for (mb, cb) in &o.terms {
                r.add_term(mono_mul(ma, mb)?, ca.checked_mul(*cb)?)?;
            }
        }
        Some(r)
    }

    /// `self * k` for a constant.
    pub fn scale(&self, k: i64) -> Option<Expr> {
        self.mul(&Expr::int(k))
    }

    /// `floor(self / o)`. `None` on division by the constant zero or
    /// overflow. Exact quotients are found for constant divisors and for
    /// polynomial divisors that divide exactly; anything else becomes a
    /// floor-division atom.
    pub fn floor_div(&self, o: &Expr) -> Option<Expr> {
        if let Some(b) = o.as_int() {
            if b == 0 {
                return None;
            }
            if b < 0 {
                return self.neg()?.floor_div(&o.neg()?);
            }
            if b == 1 {
                return Some(self.clone());
            }
            // self = b*q + r with every coefficient of r in [0, b).
            let (mut q, mut r) = (Expr::zero(), Expr::zero());
            for (m, c) in &self.terms {
                q.add_term(m.clone(), c.div_euclid(b))?;
                r.add_term(m.clone(), c.rem_euclid(b))?;
            }
            if r.is_const() {
                // 0 <= r < b, so floor(r / b) = 0.
                return Some(q);
            }
            return q.add(&Expr::atom(Atom::FloorDiv(r, o.clone())));
        }
        if self.terms.is_empty() {
            return Some(Expr::zero());
        }
        if let Some(quot) = self.exact_div(o) {
            return Some(quot);
        }
        Some(Expr::atom(Atom::FloorDiv(self.clone(), o.clone())))
    }

    /// `ceil(self / o)` for a positive constant or exact divisor.
    pub fn ceil_div(&self, o: &Expr) -> Option<Expr> {
        match o.as_int() {
            Some(b) if b > 0 => self.add(&Expr::int(b - 1))?.floor_div(o),
            _ => self.neg()?.floor_div(o)?.neg(),
        }
    }

    /// The polynomial quotient when `o` divides `self` exactly.
    fn exact_div(&self, o: &Expr) -> Option<Expr> {
        // Leading term: highest degree, then largest monomial.
        let lead = |e: &Expr| -> Option<(Mono, i64)> {
            e.terms
                .iter()
                .max_by(|a, b| mono_degree(a.0).cmp(&mono_degree(b.0)).then(a.0.cmp(b.0)))
                .map(|(m, c)| (m.clone(), *c))
        };
        let (dm, dc) = lead(o)?;
        let mut rem = self.clone();
        let mut quot = Expr::zero();
        for _ in 0..64 {
            let Some((rm, rc)) = lead(&rem) else {
                return Some(quot);
            };
            if rc % dc != 0 {
                return None;
            }
            let qm = mono_div(&rm, &dm)?;
            let mut t = Expr::zero();
            t.terms.insert(qm, rc / dc);
            quot = quot.add(&t)?;
            rem = rem.sub(&t.mul(o)?)?;
        }
        None
    }

    /// `self mod o` with the sign of the divisor (Python's `%`).
    pub fn modulo(&self, o: &Expr) -> Option<Expr> {
        if let Some(b) = o.as_int() {
            if b == 0 {
                return None;
            }
            if let Some(a) = self.as_int() {
                return Some(Expr::int(a.checked_rem_euclid(b).map(|r| if b < 0 && r != 0 { r + b } else { r })?));
            }
            if b > 0 {
                let mut r = Expr::zero();
                for (m, c) in &self.terms {
                    r.add_term(m.clone(), c.rem_euclid(b))?;
                }
                if r.is_const() {
                    return Some(r);
                }
                return Some(Expr::atom(Atom::Mod(r, o.clone())));
            }
        }
        if self.exact_div(o).is_some() {
            return Some(Expr::zero());
        }
        Some(Expr::atom(Atom::Mod(self.clone(), o.clone())))
    }

    /// True when `self >= o` for every allowed assignment.
    pub fn provably_ge(&self, o: &Expr) -> bool {
        self == o || self.sub(o).is_some_and(|d| d.is_nonneg())
    }

    /// The smaller of two expressions (an atom when undecidable).
    pub fn minimum(&self, o: &Expr) -> Expr {
        if o.provably_ge(self) {
            self.clone()
        } else if self.provably_ge(o) {
            o.clone()
        } else {
            let (a, b) = if self <= o { (self, o) } else { (o, self) };
            Expr::atom(Atom::Min(a.clone(), b.clone()))
        }
    }

    /// The larger of two expressions (an atom when undecidable).
    pub fn maximum(&self, o: &Expr) -> Expr {
        if self.provably_ge(o) {
            self.clone()
        } else if o.provably_ge(self) {
            o.clone()
        } else {
            let (a, b) = if self <= o { (self, o) } else { (o, self) };
            Expr::atom(Atom::Max(a.clone(), b.clone()))
        }
    }

    /// The dim that broadcasting `self` with `o` gives in any valid run, or
    /// `None` when both are constants that cannot broadcast.
    ///
    /// Decided cases: equal dims; a `1` on either side; a constant other than
    /// 1 on either side (a valid run then has the other side equal or 1); a
    /// side that cannot be 1 by its range; and a side that is one symbol `s`
    /// when the other side becomes 1 once `s = 1` (so `bcast(seq, min(seq,
    /// 512))` is `seq`). Otherwise the result is a `bcast` atom, which is still
    /// exact: it names "whichever of the two is not 1".
    pub fn bcast(&self, o: &Expr) -> Option<Expr> {
        if self == o {
            return Some(self.clone());
        }
        let one = Expr::int(1);
        match (self.as_int(), o.as_int()) {
            (Some(a), Some(b)) => {
                return if a == 1 {
                    Some(o.clone())
                } else if b == 1 || a == b {
                    Some(self.clone())
                } else {
                    None
                };
            }
            (Some(1), None) => return Some(o.clone()),
            (None, Some(1)) => return Some(self.clone()),
            (Some(_), None) => return Some(self.clone()),
            (None, Some(_)) => return Some(o.clone()),
            (None, None) => {}
        }
        // Broadcasting is idempotent: bcast(a, bcast(a, b)) = bcast(a, b).
        for (p, q) in [(self, o), (o, self)] {
            if let Some(Atom::Bcast(x, y)) = q.as_atom()
                && (x == p || y == p)
            {
                return Some(q.clone());
            }
        }
        let cannot_be_one = |e: &Expr| {
            let r = e.range();
            r.lo > 1 || r.hi < 1
        };
        if cannot_be_one(self) {
            return Some(self.clone());
        }
        if cannot_be_one(o) {
            return Some(o.clone());
        }
        if let Some(s) = self.as_sym()
            && o.subst(s, &one).as_ref() == Some(&one)
        {
            return Some(self.clone());
        }
        if let Some(s) = o.as_sym()
            && self.subst(s, &one).as_ref() == Some(&one)
        {
            return Some(o.clone());
        }
        let (a, b) = if self <= o { (self, o) } else { (o, self) };
        Some(Expr::atom(Atom::Bcast(a.clone(), b.clone())))
    }

    /// Replaces a symbol by an expression, re-normalising on the way.
    pub fn subst(&self, name: &str, by: &Expr) -> Option<Expr> {
        let mut out = Expr::zero();
        for (m, c) in &self.terms {
            let mut t = Expr::int(*c);
            for (a, p) in m {
                let v = match a {
                    Atom::Sym(s) if s == name => by.clone(),
                    Atom::Sym(_) => Expr::atom(a.clone()),
                    Atom::FloorDiv(x, y) => x.subst(name, by)?.floor_div(&y.subst(name, by)?)?,
                    Atom::Mod(x, y) => x.subst(name, by)?.modulo(&y.subst(name, by)?)?,
                    Atom::Min(x, y) => x.subst(name, by)?.minimum(&y.subst(name, by)?),
                    Atom::Max(x, y) => x.subst(name, by)?.maximum(&y.subst(name, by)?),
                    Atom::Bcast(x, y) => x.subst(name, by)?.bcast(&y.subst(name, by)?)?,
                };
                for _ in 0..*p {
                    t = t.mul(&v)?;
                }
            }
            out = out.add(&t)?;
        }
        Some(out)
    }

    fn atom_range(a: &Atom) -> Range {
        match a {
            Atom::Sym(_) => Range { lo: 0, hi: SYM_MAX },
            Atom::FloorDiv(x, y) => {
                let (rx, ry) = (x.range(), y.range());
                if rx.nonneg() && ry.lo > 0 { Range { lo: rx.lo / ry.hi, hi: rx.hi / ry.lo } } else { Range::ALL }
            }
            Atom::Mod(x, y) => {
                let (rx, ry) = (x.range(), y.range());
                if ry.lo > 0 {
                    let hi = ry.hi - 1;
                    Range { lo: 0, hi: if rx.nonneg() { hi.min(rx.hi) } else { hi } }
                } else {
                    Range::ALL
                }
            }
            Atom::Min(x, y) => {
                let (rx, ry) = (x.range(), y.range());
                Range { lo: rx.lo.min(ry.lo), hi: rx.hi.min(ry.hi) }
            }
            Atom::Max(x, y) => {
                let (rx, ry) = (x.range(), y.range());
                Range { lo: rx.lo.max(ry.lo), hi: rx.hi.max(ry.hi) }
            }
            Atom::Bcast(x, y) => {
                let (rx, ry) = (x.range(), y.range());
                Range { lo: rx.lo.min(ry.lo), hi: rx.hi.max(ry.hi) }
            }
        }
    }

    fn range(&self) -> Range {
        let mut total = Range::point(0);
        for (m, c) in &self.terms {
            let mut t = Range::point(*c as i128);
            for (a, p) in m {
                let ra = Expr::atom_range(a);
                for _ in 0..*p {
                    t = t.mul(ra);
                }
            }
            total = total.add(t);
        }
        total
    }

    /// Compares two expressions for every assignment of the symbols allowed
    /// by the [module's assumption](self); `None` when it depends on them.
    pub fn cmp_sym(&self, o: &Expr) -> Option<Ordering> {
        if self == o {
            return Some(Ordering::Equal);
        }
        let d = self.sub(o)?;
        if let Some(v) = d.as_int() {
            return Some(v.cmp(&0));
        }
        let r = d.range();
        if r.lo > 0 {
            Some(Ordering::Greater)
        } else if r.hi < 0 {
            Some(Ordering::Less)
        } else {
            None
        }
    }

    /// True when the expression is `>= 0` for every allowed assignment.
    pub fn is_nonneg(&self) -> bool {
        self.range().nonneg()
    }

    /// True when the expression is `>= 1` for every allowed assignment.
    pub fn is_positive(&self) -> bool {
        self.range().lo >= 1
    }

    /// The dim this expression stands for: a fixed size for a non-negative
    /// constant, otherwise a symbol holding the canonical text. `None` for a
    /// negative constant, which is not a size.
    pub fn to_dim(&self) -> Option<Dim> {
        match self.as_int() {
            Some(v) if v >= 0 => Some(Dim::Fixed(v as u64)),
            Some(_) => None,
            None => Some(Dim::Sym(self.to_string())),
        }
    }

    /// The expression a dim stands for. A symbol whose text parses as a
    /// non-constant expression (such as `batch*seq`, written by an earlier
    /// run) is read back as that expression; any other symbol is one atom.
    pub fn from_dim(d: &Dim) -> Expr {
        match d {
            Dim::Fixed(n) => match i64::try_from(*n) {
                Ok(v) => Expr::int(v),
                // Larger than any real size: keep it symbolic rather than wrong.
                Err(_) => Expr::sym(n.to_string()),
            },
            Dim::Sym(s) => match Expr::parse(s) {
                Some(e) if !e.is_const() => e,
                _ => Expr::sym(s.clone()),
            },
        }
    }

    /// Parses the text form written by `Display`. `None` when the text is not
    /// a well-formed expression.
    pub fn parse(s: &str) -> Option<Expr> {
        let toks = tokenize(s)?;
        let mut p = Parser { toks, pos: 0, depth: 0 };
        let e = p.expr()?;
        if p.pos != p.toks.len() { None } else { Some(e) }
    }
}

// ----- printing -----

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !FUNCTIONS.contains(&s)
}

fn write_sym(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    if is_ident(s) {
        f.write_str(s)
    } else {
        f.write_str("\"")?;
        for c in s.chars() {
            if c == '"' || c == '\\' {
                f.write_str("\\")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("\"")
    }
}

/// True when the expression prints as one token or a function call, so it
/// needs no parentheses as an operand.
fn is_simple(e: &Expr) -> bool {
    if let Some(v) = e.as_int() {
        return v >= 0;
    }
    matches!(e.as_atom(), Some(Atom::Sym(_) | Atom::Min(..) | Atom::Max(..) | Atom::Bcast(..)))
}

fn write_operand(f: &mut fmt::Formatter<'_>, e: &Expr) -> fmt::Result {
    if is_simple(e) {
        write_expr(f, e, false)
    } else {
        f.write_str("(")?;
        write_expr(f, e, false)?;
        f.write_str(")")
    }
}

fn write_atom(f: &mut fmt::Formatter<'_>, a: &Atom, alone: bool) -> fmt::Result {
    let call = |f: &mut fmt::Formatter<'_>, name: &str, x: &Expr, y: &Expr| -> fmt::Result {
        write!(f, "{name}(")?;
        write_expr(f, x, false)?;
        f.write_str(", ")?;
        write_expr(f, y, false)?;
        f.write_str(")")
    };
    match a {
        Atom::Sym(s) => write_sym(f, s),
        Atom::FloorDiv(x, y) | Atom::Mod(x, y) => {
            let op = if matches!(a, Atom::FloorDiv(..)) { "//" } else { "%" };
            if !alone {
                f.write_str("(")?;
            }
            write_operand(f, x)?;
            f.write_str(op)?;
            write_operand(f, y)?;
            if !alone {
                f.write_str(")")?;
            }
            Ok(())
        }
        Atom::Min(x, y) => call(f, "min", x, y),
        Atom::Max(x, y) => call(f, "max", x, y),
        Atom::Bcast(x, y) => call(f, "bcast", x, y),
    }
}

/// Writes an expression. At the top level a lone symbol prints as its raw
/// name, so a dim symbol round-trips to exactly the string it came from;
/// nested, names that are not identifiers are quoted.
fn write_expr(f: &mut fmt::Formatter<'_>, e: &Expr, top: bool) -> fmt::Result {
    if e.terms.is_empty() {
        return f.write_str("0");
    }
    if top && let Some(s) = e.as_sym() {
        return f.write_str(s);
    }
    let mut first = true;
    let constant = e.terms.get(&Vec::new()).copied();
    for (m, c) in e.terms.iter().filter(|(m, _)| !m.is_empty()) {
        let c = *c;
        if c < 0 {
            f.write_str("-")?;
        } else if !first {
            f.write_str("+")?;
        }
        first = false;
        let mag = c.unsigned_abs();
        // Only a bare `+1 * atom` may print a division without parentheses:
        // unary minus and `k*` bind tighter than `//` when read back.
        let alone = c == 1 && m.len() == 1 && m[0].1 == 1;
        if mag != 1 {
            write!(f, "{mag}*")?;
        }
        for (i, (a, p)) in m.iter().enumerate() {
            if i > 0 {
                f.write_str("*")?;
            }
            write_atom(f, a, alone)?;
            if *p > 1 {
                write!(f, "^{p}")?;
            }
        }
    }
    if let Some(c) = constant {
        if c < 0 {
            write!(f, "-{}", c.unsigned_abs())?;
        } else if first {
            write!(f, "{c}")?;
        } else {
            write!(f, "+{c}")?;
        }
    }
    Ok(())
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_expr(f, self, true)
    }
}

// ----- parsing -----

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Int(i64),
    Ident(String),
    Plus,
    Minus,
    Star,
    SlashSlash,
    Percent,
    Caret,
    LParen,
    RParen,
    Comma,
}

fn tokenize(s: &str) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        match c {
            ' ' => i += 1,
            '+' => {
                out.push(Tok::Plus);
                i += 1
            }
            '-' => {
                out.push(Tok::Minus);
                i += 1
            }
            '*' => {
                out.push(Tok::Star);
                i += 1
            }
            '%' => {
                out.push(Tok::Percent);
                i += 1
            }
            '^' => {
                out.push(Tok::Caret);
                i += 1
            }
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            '/' => {
                if cs.get(i + 1) != Some(&'/') {
                    return None;
                }
                out.push(Tok::SlashSlash);
                i += 2
            }
            '"' => {
                let mut name = String::new();
                i += 1;
                loop {
                    match cs.get(i)? {
                        '"' => break,
                        '\\' => {
                            name.push(*cs.get(i + 1)?);
                            i += 2;
                        }
                        ch => {
                            name.push(*ch);
                            i += 1;
                        }
                    }
                }
                i += 1;
                out.push(Tok::Ident(format!("\"{name}")));
            }
            c if c.is_ascii_digit() => {
                let start = i;
                while i < cs.len() && cs[i].is_ascii_digit() {
                    i += 1;
                }
                let text: String = cs[start..i].iter().collect();
                out.push(Tok::Int(text.parse().ok()?));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < cs.len() && (cs[i].is_ascii_alphanumeric() || cs[i] == '_') {
                    i += 1;
                }
                out.push(Tok::Ident(cs[start..i].iter().collect()));
            }
            _ => return None,
        }
    }
    Some(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

/// Nesting deeper than this is not an expression sharc wrote; the text is
/// then kept as an opaque symbol instead of risking the stack.
const MAX_DEPTH: usize = 128;

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Option<Expr> {
        let mut e = self.term()?;
        loop {
            if self.eat(&Tok::Plus) {
                e = e.add(&self.term()?)?;
            } else if self.eat(&Tok::Minus) {
                e = e.sub(&self.term()?)?;
            } else {
                return Some(e);
            }
        }
    }

    fn term(&mut self) -> Option<Expr> {
        let mut e = self.unary()?;
        loop {
            if self.eat(&Tok::Star) {
                e = e.mul(&self.unary()?)?;
            } else if self.eat(&Tok::SlashSlash) {
                e = e.floor_div(&self.unary()?)?;
            } else if self.eat(&Tok::Percent) {
                e = e.modulo(&self.unary()?)?;
            } else {
                return Some(e);
            }
        }
    }

    fn unary(&mut self) -> Option<Expr> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let r = self.unary_inner();
        self.depth -= 1;
        r
    }

    fn unary_inner(&mut self) -> Option<Expr> {
        if self.eat(&Tok::Minus) {
            return self.unary()?.neg();
        }
        let base = self.primary()?;
        if self.eat(&Tok::Caret) {
            let Some(Tok::Int(p)) = self.peek().cloned() else {
                return None;
            };
            self.pos += 1;
            if !(1..=16).contains(&p) {
                return None;
            }
            let mut e = base.clone();
            for _ in 1..p {
                e = e.mul(&base)?;
            }
            return Some(e);
        }
        Some(base)
    }

    fn primary(&mut self) -> Option<Expr> {
        match self.peek().cloned()? {
            Tok::Int(v) => {
                self.pos += 1;
                Some(Expr::int(v))
            }
            Tok::LParen => {
                self.pos += 1;
                let e = self.expr()?;
                self.eat(&Tok::RParen).then_some(e)
            }
            Tok::Ident(name) => {
                self.pos += 1;
                if let Some(quoted) = name.strip_prefix('"') {
                    return Some(Expr::sym(quoted));
                }
                if FUNCTIONS.contains(&name.as_str()) {
                    if !self.eat(&Tok::LParen) {
                        return None;
                    }
                    let a = self.expr()?;
                    if !self.eat(&Tok::Comma) {
                        return None;
                    }
                    let b = self.expr()?;
                    if !self.eat(&Tok::RParen) {
                        return None;
                    }
                    return match name.as_str() {
                        "min" => Some(a.minimum(&b)),
                        "max" => Some(a.maximum(&b)),
                        _ => a.bcast(&b),
                    };
                }
                Some(Expr::sym(name))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: &str) -> Expr {
        Expr::sym(n)
    }

    fn p(t: &str) -> Expr {
        Expr::parse(t).unwrap_or_else(|| panic!("'{t}' should parse"))
    }

    #[test]
    fn polynomial_normal_form() {
        let a = s("batch").mul(&s("seq")).unwrap();
        let b = s("seq").mul(&s("batch")).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "batch*seq");
        let e = s("seq").add(&Expr::int(1)).unwrap().sub(&Expr::int(2)).unwrap();
        assert_eq!(e.to_string(), "seq-1");
        assert_eq!(s("seq").sub(&s("seq")).unwrap(), Expr::zero());
        assert_eq!(s("seq").scale(2).unwrap().to_string(), "2*seq");
        assert_eq!(s("seq").neg().unwrap().add(&Expr::int(5)).unwrap().to_string(), "-seq+5");
        let sq = s("n").mul(&s("n")).unwrap();
        assert_eq!(sq.to_string(), "n^2");
    }

    #[test]
    fn exact_and_floor_division() {
        // 384*batch*seq / (12*batch*seq) = 32, as a torch Reshape(-1) needs.
        let total = s("batch").mul(&s("seq")).unwrap().scale(384).unwrap();
        let known = s("batch").mul(&s("seq")).unwrap().scale(12).unwrap();
        assert_eq!(total.floor_div(&known).unwrap(), Expr::int(32));
        assert_eq!(total.floor_div(&Expr::int(384)).unwrap().to_string(), "batch*seq");
        // (2*seq + 1) // 2 == seq for every integer seq.
        let e = s("seq").scale(2).unwrap().add(&Expr::int(1)).unwrap();
        assert_eq!(e.floor_div(&Expr::int(2)).unwrap(), s("seq"));
        let h = s("h").add(&Expr::int(1)).unwrap().floor_div(&Expr::int(2)).unwrap();
        assert_eq!(h.to_string(), "(h+1)//2");
        assert_eq!(Expr::int(-7).floor_div(&Expr::int(2)).unwrap(), Expr::int(-4));
        assert_eq!(Expr::int(7).floor_div(&Expr::int(-2)).unwrap(), Expr::int(-4));
        assert!(Expr::int(7).floor_div(&Expr::zero()).is_none());
        // Polynomial divisor that divides exactly.
        let sp1 = s("seq").add(&Expr::int(1)).unwrap();
        let prod = sp1.mul(&s("batch")).unwrap();
        assert_eq!(prod.floor_div(&sp1).unwrap(), s("batch"));
        // Not exact: an atom.
        assert_eq!(s("a").floor_div(&s("b")).unwrap().to_string(), "a//b");
        assert_eq!(Expr::int(7).ceil_div(&Expr::int(2)).unwrap(), Expr::int(4));
    }

    #[test]
    fn modulo_follows_the_divisor_sign() {
        assert_eq!(Expr::int(-7).modulo(&Expr::int(3)).unwrap(), Expr::int(2));
        assert_eq!(Expr::int(7).modulo(&Expr::int(-3)).unwrap(), Expr::int(-2));
        assert_eq!(s("n").scale(4).unwrap().modulo(&Expr::int(2)).unwrap(), Expr::zero());
        assert_eq!(s("n").modulo(&Expr::int(2)).unwrap().to_string(), "n%2");
    }

    #[test]
    fn comparisons_assume_sizes() {
        use Ordering::*;
        assert_eq!(s("seq").cmp_sym(&Expr::int(-1)), Some(Greater));
        assert_eq!(s("seq").add(&Expr::int(1)).unwrap().cmp_sym(&s("seq")), Some(Greater));
        assert_eq!(s("seq").cmp_sym(&Expr::int(i64::MAX)), Some(Less));
        assert_eq!(s("seq").cmp_sym(&Expr::int(512)), None);
        assert_eq!(s("seq").minimum(&Expr::int(i64::MAX)), s("seq"));
        assert_eq!(s("seq").minimum(&Expr::int(512)).to_string(), "min(512, seq)");
        assert_eq!(s("seq").maximum(&Expr::zero()), s("seq"));
    }

    #[test]
    fn broadcasting_dims() {
        let one = Expr::int(1);
        assert_eq!(s("batch").bcast(&one).unwrap(), s("batch"));
        assert_eq!(s("batch").bcast(&s("batch")).unwrap(), s("batch"));
        assert_eq!(s("batch").bcast(&Expr::int(4)).unwrap(), Expr::int(4));
        assert!(Expr::int(3).bcast(&Expr::int(4)).is_none());
        let b = s("batch").bcast(&s("seq")).unwrap();
        assert_eq!(b, s("seq").bcast(&s("batch")).unwrap());
        assert_eq!(b.to_string(), "bcast(batch, seq)");
        // seq+1 can never be 1 for a size... it can (seq = 0); 2*seq+2 cannot.
        let big = s("seq").scale(2).unwrap().add(&Expr::int(2)).unwrap();
        assert_eq!(big.bcast(&s("n")).unwrap(), big);
        // A position-id slice min(seq, 512) broadcast against seq is seq.
        let m = s("seq").minimum(&Expr::int(512));
        assert_eq!(m.bcast(&s("seq")).unwrap(), s("seq"));
        let u = s("u").bcast(&s("n").minimum(&Expr::int(1))).unwrap();
        assert_eq!(s("u").bcast(&u).unwrap(), u);
        assert_eq!(u.bcast(&s("u")).unwrap(), u);
    }

    #[test]
    fn text_round_trips() {
        let cases = [
            "batch*seq",
            "seq-1",
            "-seq+5",
            "2*seq",
            "(h+1)//2",
            "(seq-3)//2+1",
            "n%2",
            "min(seq, 512)",
            "max(a, b)+1",
            "bcast(batch, seq)",
            "3*(h//w)",
            "n^2+2*n+1",
            "\"a b\"*2",
            "(a//b)*c",
            "-((h+1)//2)",
            "min(\"a b\", 3)",
        ];
        for c in cases {
            let e = p(c);
            let printed = e.to_string();
            assert_eq!(Expr::parse(&printed).as_ref(), Some(&e), "{c} printed as {printed}");
        }
        // Absurd nesting or powers are refused, not a crash.
        let deep = format!("{}x{}", "(".repeat(10_000), ")".repeat(10_000));
        assert_eq!(Expr::parse(&deep), None);
        assert_eq!(Expr::from_dim(&Dim::sym(deep.clone())), Expr::sym(deep));
        let mut e = s("x");
        for _ in 0..10 {
            e = match e.mul(&e) {
                Some(sq) => sq,
                None => break,
            };
        }
        assert!(e.to_string().len() < 20, "powers are capped: {e}");
        // Equal expressions print equal whatever the spelling.
        assert_eq!(p("seq*batch"), p("batch*seq"));
        assert_eq!(p("(n+1)*(n+1)"), p("n^2+2*n+1"));
        // Operator precedence.
        assert_eq!(p("2*h//2"), s("h"));
        assert_eq!(p("2*(h//2)").to_string(), "2*(h//2)");
    }

    #[test]
    fn dims_map_both_ways() {
        assert_eq!(Expr::from_dim(&Dim::Fixed(4)), Expr::int(4));
        assert_eq!(Expr::from_dim(&Dim::sym("batch")), s("batch"));
        assert_eq!(Expr::from_dim(&Dim::sym("batch*seq")), s("batch").mul(&s("seq")).unwrap());
        // Names that are not expressions are single atoms, kept verbatim.
        let odd = Dim::sym("input.1_dim_0");
        assert_eq!(Expr::from_dim(&odd).to_dim(), Some(odd));
        assert_eq!(Expr::from_dim(&Dim::sym("7")), s("7"));
        assert_eq!(Expr::int(-1).to_dim(), None);
        assert_eq!(s("a").add(&s("b")).unwrap().to_dim(), Some(Dim::sym("a+b")));
    }

    #[test]
    fn substitution_renormalises() {
        let e = p("min(seq, 512)+seq");
        assert_eq!(e.subst("seq", &Expr::int(3)).unwrap(), Expr::int(6));
        assert_eq!(p("bcast(a, b)").subst("a", &Expr::int(1)).unwrap(), s("b"));
    }
}

//! Pipeline text: which passes to run, in order, with their options.
//!
//! The syntax follows MLIR's pass pipelines:
//!
//! ```text
//! pipeline := [pass (',' pass)*]
//! pass     := name ['{' [option (',' option)*] '}']
//! option   := name '=' value
//! value    := int | float | bool | identifier | "quoted string" | '[' [value (',' value)*] ']'
//! ```
//!
//! For example `infer-shapes,cse,tie-layers{groups=2,init=average,rank=32},dce`.
//! Names are kebab-case identifiers. Whitespace between tokens is ignored.
//! Ints are written `32` or `-1`, floats `0.5`, `1e-3` or `-2.0`, bools
//! `true` and `false`. Any other bare word (`average`, `q.weight`,
//! `layers/0`) is an identifier; strings with spaces or punctuation are
//! quoted with `"` and use `\"`, `\\`, `\n` and `\t` escapes. Lists nest:
//! `targets=[q,k,v]`.
//!
//! Parsing only checks the syntax. Pass and option names, and the types of
//! values, are checked against a [`Registry`](crate::Registry) when the
//! pipeline is built into passes. Every error carries the position it is
//! about, and its `Display` shows the pipeline with a caret under it.

use std::fmt;

/// A byte range of the pipeline text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// The range `start..end`.
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }
}

/// A parsed pipeline: the text it came from and its passes in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    /// The text, for error messages.
    pub text: String,
    /// The passes in the order they run.
    pub passes: Vec<PassSpec>,
}

/// One pass of a pipeline as written.
#[derive(Clone, Debug, PartialEq)]
pub struct PassSpec {
    /// The pass name.
    pub name: String,
    /// Where the name is.
    pub span: Span,
    /// The options given, in the order written.
    pub options: Vec<OptionSetting>,
}

/// One `name=value` option of a pass.
#[derive(Clone, Debug, PartialEq)]
pub struct OptionSetting {
    /// The option name.
    pub name: String,
    /// Where the name is.
    pub name_span: Span,
    /// The value.
    pub value: OptionValue,
}

/// An option value as written, before it is given a type.
#[derive(Clone, Debug, PartialEq)]
pub struct OptionValue {
    /// What was written.
    pub kind: ValueKind,
    /// Where.
    pub span: Span,
}

/// The forms an option value can take.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueKind {
    /// `32`, `-1`.
    Int(i64),
    /// `0.5`, `1e-3`.
    Float(f64),
    /// `true`, `false`.
    Bool(bool),
    /// A bare word: `average`, `q.weight`.
    Ident(String),
    /// A quoted string.
    Str(String),
    /// `[a, b, c]`.
    List(Vec<OptionValue>),
}

impl ValueKind {
    /// What kind of value this is, for messages (`integer 3`, `identifier avg`).
    pub fn describe(&self) -> String {
        match self {
            ValueKind::Int(v) => format!("integer `{v}`"),
            ValueKind::Float(v) => format!("float `{v}`"),
            ValueKind::Bool(v) => format!("bool `{v}`"),
            ValueKind::Ident(s) => format!("identifier `{s}`"),
            ValueKind::Str(s) => format!("string {s:?}"),
            ValueKind::List(v) => format!("a list of {} values", v.len()),
        }
    }
}

impl fmt::Display for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ValueKind::Int(v) => write!(f, "{v}"),
            ValueKind::Float(v) => write!(f, "{}", format_float(*v)),
            ValueKind::Bool(v) => write!(f, "{v}"),
            ValueKind::Ident(s) => f.write_str(s),
            ValueKind::Str(s) => f.write_str(&quote_if_needed(s)),
            ValueKind::List(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// A float in a form that reads back as a float (`1.0`, not `1`).
pub(crate) fn format_float(v: f64) -> String {
    let s = format!("{v:?}");
    if s.contains(['.', 'e', 'E', 'n', 'i']) { s } else { format!("{s}.0") }
}

/// A string as a pipeline writes it: bare when it reads back as the same
/// identifier, quoted otherwise.
pub(crate) fn quote_if_needed(s: &str) -> String {
    let bare = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(is_word_char)
        && s != "true"
        && s != "false";
    if bare {
        return s.to_string();
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl fmt::Display for PassSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.options.is_empty() {
            f.write_str("{")?;
            for (i, o) in self.options.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{}={}", o.name, o.value)?;
            }
            f.write_str("}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.passes.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// A problem with a pipeline: what is wrong, where, and possibly a hint.
///
/// `Display` renders it like a compiler diagnostic:
///
/// ```text
/// error: unknown pass `csee`
///   | infer-shapes,csee,dce
///   |              ^^^^
///   = help: did you mean `cse`?
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineError {
    /// The whole pipeline text.
    pub pipeline: String,
    /// The part the error is about.
    pub span: Span,
    /// What is wrong.
    pub message: String,
    /// A suggestion (closest names, the expected form), if any.
    pub help: Option<String>,
}

impl PipelineError {
    /// An error about `span` of `pipeline`.
    pub fn new(pipeline: &str, span: Span, message: impl Into<String>) -> PipelineError {
        PipelineError { pipeline: pipeline.to_string(), span, message: message.into(), help: None }
    }

    /// Adds a hint.
    pub fn with_help(mut self, help: impl Into<String>) -> PipelineError {
        self.help = Some(help.into());
        self
    }

    /// The 0-based character column where the error starts.
    pub fn column(&self) -> usize {
        let start = self.span.start.min(self.pipeline.len());
        self.pipeline.get(..start).map_or(start, |s| s.chars().count())
    }
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        // The pipeline is usually one line; show the line the span is on.
        let start = self.span.start.min(self.pipeline.len());
        let line_start = self.pipeline[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.pipeline[start..].find('\n').map_or(self.pipeline.len(), |i| start + i);
        let line = &self.pipeline[line_start..line_end];
        let col = self.pipeline[line_start..start].chars().count();
        let end = self.span.end.clamp(start, line_end);
        let width = self.pipeline[start..end].chars().count().max(1);
        writeln!(f, "  | {line}")?;
        write!(f, "  | {}{}", " ".repeat(col), "^".repeat(width))?;
        if let Some(h) = &self.help {
            write!(f, "\n  = help: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PipelineError {}

/// Characters of a bare word (names and identifier values).
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':' | '@' | '+')
}

/// Parses pipeline text. An empty (or all-blank) pipeline has no passes.
pub fn parse_pipeline(text: &str) -> Result<Pipeline, PipelineError> {
    let mut p = Parser { src: text, pos: 0 };
    let mut passes = Vec::new();
    p.skip_ws();
    if p.at_end() {
        return Ok(Pipeline { text: text.to_string(), passes });
    }
    loop {
        passes.push(p.pass()?);
        p.skip_ws();
        match p.peek() {
            None => break,
            Some(',') => {
                p.pos += 1;
                p.skip_ws();
                if p.at_end() {
                    return Err(p.error_here("expected a pass name after `,`"));
                }
            }
            Some(c) => {
                return Err(p.error_char(format!("unexpected `{c}` after a pass; passes are separated by `,`")));
            }
        }
    }
    Ok(Pipeline { text: text.to_string(), passes })
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if !c.is_whitespace() {
                break;
            }
            self.pos += c.len_utf8();
        }
    }

    fn error_here(&self, message: impl Into<String>) -> PipelineError {
        PipelineError::new(self.src, Span::new(self.pos, self.pos), message)
    }

    fn error_char(&self, message: impl Into<String>) -> PipelineError {
        let len = self.peek().map_or(0, char::len_utf8);
        PipelineError::new(self.src, Span::new(self.pos, self.pos + len), message)
    }

    /// A bare word starting at the current position (may be empty).
    fn word(&mut self) -> (String, Span) {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if !is_word_char(c) {
                break;
            }
            self.pos += c.len_utf8();
        }
        (self.src[start..self.pos].to_string(), Span::new(start, self.pos))
    }

    fn name(&mut self, what: &str) -> Result<(String, Span), PipelineError> {
        match self.peek() {
            Some(c) if c.is_ascii_alphabetic() || c == '_' => Ok(self.word()),
            None => Err(self.error_here(format!("expected {what}, found the end of the pipeline"))),
            Some(c) => Err(self.error_char(format!("expected {what}, found `{c}`"))),
        }
    }

    fn pass(&mut self) -> Result<PassSpec, PipelineError> {
        let (name, span) = self.name("a pass name")?;
        self.skip_ws();
        let mut options: Vec<OptionSetting> = Vec::new();
        if self.peek() == Some('{') {
            self.pos += 1;
            self.skip_ws();
            if self.peek() == Some('}') {
                self.pos += 1;
                return Ok(PassSpec { name, span, options });
            }
            loop {
                self.skip_ws();
                let (oname, name_span) = self.name("an option name")?;
                if let Some(prev) = options.iter().find(|o| o.name == oname) {
                    let _ = prev;
                    return Err(PipelineError::new(
                        self.src,
                        name_span,
                        format!("option `{oname}` of pass `{name}` is given twice"),
                    ));
                }
                self.skip_ws();
                if self.peek() != Some('=') {
                    let e = match self.peek() {
                        None => self.error_here(format!("expected `=` after option `{oname}`")),
                        Some(c) => self.error_char(format!("expected `=` after option `{oname}`, found `{c}`")),
                    };
                    return Err(e.with_help(format!("options are written `{oname}=value`")));
                }
                self.pos += 1;
                self.skip_ws();
                let value = self.value()?;
                options.push(OptionSetting { name: oname, name_span, value });
                self.skip_ws();
                match self.peek() {
                    Some(',') => {
                        self.pos += 1;
                    }
                    Some('}') => {
                        self.pos += 1;
                        break;
                    }
                    None => {
                        return Err(self
                            .error_here(format!("unclosed `{{` in the options of pass `{name}`"))
                            .with_help("close the option list with `}`"));
                    }
                    Some(c) => {
                        return Err(self.error_char(format!(
                            "expected `,` or `}}` after the value of option `{}`, found `{c}`",
                            options.last().map_or("", |o| o.name.as_str())
                        )));
                    }
                }
            }
        }
        Ok(PassSpec { name, span, options })
    }

    fn value(&mut self) -> Result<OptionValue, PipelineError> {
        let start = self.pos;
        match self.peek() {
            None => Err(self.error_here("expected a value, found the end of the pipeline")),
            Some('[') => {
                self.pos += 1;
                let mut items = Vec::new();
                self.skip_ws();
                if self.peek() == Some(']') {
                    self.pos += 1;
                    return Ok(OptionValue { kind: ValueKind::List(items), span: Span::new(start, self.pos) });
                }
                loop {
                    self.skip_ws();
                    items.push(self.value()?);
                    self.skip_ws();
                    match self.peek() {
                        Some(',') => self.pos += 1,
                        Some(']') => {
                            self.pos += 1;
                            break;
                        }
                        None => {
                            return Err(PipelineError::new(self.src, Span::new(start, start + 1), "unclosed `[`")
                                .with_help("close the list with `]`"));
                        }
                        Some(c) => return Err(self.error_char(format!("expected `,` or `]` in a list, found `{c}`"))),
                    }
                }
                Ok(OptionValue { kind: ValueKind::List(items), span: Span::new(start, self.pos) })
            }
            Some('"') => {
                self.pos += 1;
                let mut s = String::new();
                loop {
                    match self.peek() {
                        None => {
                            return Err(PipelineError::new(
                                self.src,
                                Span::new(start, start + 1),
                                "unterminated string",
                            )
                            .with_help("close the string with `\"`"));
                        }
                        Some('"') => {
                            self.pos += 1;
                            break;
                        }
                        Some('\\') => {
                            self.pos += 1;
                            let c = self.peek();
                            let esc = match c {
                                Some('"') => '"',
                                Some('\\') => '\\',
                                Some('n') => '\n',
                                Some('t') => '\t',
                                _ => {
                                    return Err(PipelineError::new(
                                        self.src,
                                        Span::new(self.pos - 1, self.pos + c.map_or(0, char::len_utf8)),
                                        "unknown escape in a string",
                                    )
                                    .with_help("the escapes are \\\" \\\\ \\n \\t"));
                                }
                            };
                            s.push(esc);
                            self.pos += 1;
                        }
                        Some(c) => {
                            s.push(c);
                            self.pos += c.len_utf8();
                        }
                    }
                }
                Ok(OptionValue { kind: ValueKind::Str(s), span: Span::new(start, self.pos) })
            }
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => {
                let (w, span) = self.word();
                let kind = parse_number(&w).ok_or_else(|| {
                    PipelineError::new(self.src, span, format!("`{w}` is not a number"))
                        .with_help("write ints as `32` or `-1` and floats as `0.5` or `1e-3`; quote other text")
                })?;
                Ok(OptionValue { kind, span })
            }
            Some(c) if is_word_char(c) => {
                let (w, span) = self.word();
                let kind = match w.as_str() {
                    "true" => ValueKind::Bool(true),
                    "false" => ValueKind::Bool(false),
                    _ => ValueKind::Ident(w),
                };
                Ok(OptionValue { kind, span })
            }
            Some(c) => Err(self.error_char(format!("expected a value, found `{c}`"))),
        }
    }
}

fn parse_number(w: &str) -> Option<ValueKind> {
    let digits = w.strip_prefix(['-', '+']).unwrap_or(w);
    if digits.is_empty() || !digits.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    if digits.chars().all(|c| c.is_ascii_digit()) {
        return w.parse::<i64>().ok().map(ValueKind::Int);
    }
    if !digits.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+')) {
        return None;
    }
    w.parse::<f64>().ok().filter(|v| v.is_finite()).map(ValueKind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(p: &PassSpec) -> Vec<(String, ValueKind)> {
        p.options.iter().map(|o| (o.name.clone(), o.value.kind.clone())).collect()
    }

    #[test]
    fn parses_passes_and_typed_values() {
        let p = parse_pipeline("infer-shapes, cse ,tie-layers{groups=2, init=average,rank=32, eps=1e-3, on=true, who=[q,k,v], s=\"a b\\\"\"},dce").unwrap();
        let names: Vec<&str> = p.passes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["infer-shapes", "cse", "tie-layers", "dce"]);
        let k = kinds(&p.passes[2]);
        assert_eq!(k[0], ("groups".into(), ValueKind::Int(2)));
        assert_eq!(k[1], ("init".into(), ValueKind::Ident("average".into())));
        assert_eq!(k[3], ("eps".into(), ValueKind::Float(1e-3)));
        assert_eq!(k[4], ("on".into(), ValueKind::Bool(true)));
        match &k[5].1 {
            ValueKind::List(items) => {
                let v: Vec<String> = items.iter().map(|i| i.to_string()).collect();
                assert_eq!(v, ["q", "k", "v"]);
            }
            other => panic!("expected a list, got {other:?}"),
        }
        assert_eq!(k[6].1, ValueKind::Str("a b\"".into()));
        // Spans point at the text they came from.
        let s = p.passes[1].span;
        assert_eq!(&p.text[s.start..s.end], "cse");
        let v = &p.passes[2].options[2].value.span;
        assert_eq!(&p.text[v.start..v.end], "32");
    }

    #[test]
    fn prints_back_in_canonical_form() {
        let p = parse_pipeline(" a { x = -1 , y = 2.0, z=[1,[b, \"c d\"]] } , b{}").unwrap();
        assert_eq!(p.to_string(), "a{x=-1,y=2.0,z=[1,[b,\"c d\"]]},b");
        assert_eq!(parse_pipeline(&p.to_string()).unwrap().to_string(), p.to_string());
    }

    #[test]
    fn empty_pipeline_has_no_passes() {
        assert!(parse_pipeline("").unwrap().passes.is_empty());
        assert!(parse_pipeline("   ").unwrap().passes.is_empty());
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = parse_pipeline("cse,,dce").unwrap_err();
        assert_eq!(e.span.start, 4);
        assert_eq!(e.to_string(), "error: expected a pass name, found `,`\n  | cse,,dce\n  |     ^");

        let e = parse_pipeline("cse{rank 3}").unwrap_err();
        assert_eq!(e.column(), 9);
        assert!(e.message.contains("expected `=` after option `rank`"), "{e}");
        assert!(e.to_string().contains("help: options are written `rank=value`"), "{e}");

        let e = parse_pipeline("cse{rank=3").unwrap_err();
        assert!(e.message.contains("unclosed `{`"), "{e}");

        let e = parse_pipeline("cse{x=[1,2}").unwrap_err();
        assert!(e.message.contains("expected `,` or `]`"), "{e}");

        let e = parse_pipeline("cse{x=12ab}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "error: `12ab` is not a number\n  | cse{x=12ab}\n  |       ^^^^\n  = help: write ints as `32` or `-1` and floats as `0.5` or `1e-3`; quote other text"
        );

        let e = parse_pipeline("cse{x=1,x=2}").unwrap_err();
        assert!(e.message.contains("given twice"), "{e}");

        let e = parse_pipeline("cse,").unwrap_err();
        assert!(e.message.contains("after `,`"), "{e}");

        let e = parse_pipeline("cse dce").unwrap_err();
        assert_eq!(e.span.start, 4);

        let e = parse_pipeline("cse{s=\"abc}").unwrap_err();
        assert!(e.message.contains("unterminated string"), "{e}");
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("-12"), Some(ValueKind::Int(-12)));
        assert_eq!(parse_number("+3"), Some(ValueKind::Int(3)));
        assert_eq!(parse_number("1.5e2"), Some(ValueKind::Float(150.0)));
        assert_eq!(parse_number(".5"), Some(ValueKind::Float(0.5)));
        assert_eq!(parse_number("1e-3"), Some(ValueKind::Float(1e-3)));
        assert_eq!(parse_number("99999999999999999999"), None);
        assert_eq!(parse_number("1.2.3"), None);
        assert_eq!(parse_number("-"), None);
    }
}

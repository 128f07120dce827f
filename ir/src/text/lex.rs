//! The lexer: turns IR text into tokens, lazily, so that the first error the
//! parser reports is the first problem in the text.

use super::ParseError;

/// A token's kind and payload.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok {
    /// `%name` or `%"quoted name"`: a value.
    Value(String),
    /// `@name` or `@"quoted name"`: a graph or weight symbol.
    Symbol(String),
    /// A bare identifier; may contain inner dots (`com.microsoft.FusedMatMul`).
    Ident(String),
    /// A decimal integer, sign included, as written.
    Int(String),
    /// A decimal number with a fraction or exponent, sign included, as written.
    Float(String),
    /// The digits of a `0x` hexadecimal literal.
    Hex(String),
    /// A string literal, escapes resolved.
    Str(String),
    /// One of `( ) [ ] { } < > , : = ? * .`
    Punct(char),
    /// `->`
    Arrow,
    /// A `-` not starting a number or an arrow (as in `-inf`).
    Minus,
    /// The end of the text.
    Eof,
}

impl Tok {
    /// How the token reads in an error message.
    pub(crate) fn describe(&self) -> String {
        fn clip(s: &str) -> String {
            let mut out: String = s.chars().take(40).collect();
            if s.chars().count() > 40 {
                out.push('…');
            }
            out
        }
        match self {
            Tok::Value(n) => format!("value %{}", clip(&super::quote_name(n))),
            Tok::Symbol(n) => format!("symbol @{}", clip(&super::quote_name(n))),
            Tok::Ident(s) => format!("'{}'", clip(s)),
            Tok::Int(s) | Tok::Float(s) => format!("number {}", clip(s)),
            Tok::Hex(s) => format!("number 0x{}", clip(s)),
            Tok::Str(s) => format!("string {}", clip(&super::quote_str(s))),
            Tok::Punct(c) => format!("'{c}'"),
            Tok::Arrow => "'->'".to_string(),
            Tok::Minus => "'-'".to_string(),
            Tok::Eof => "the end of the text".to_string(),
        }
    }
}

/// A token and where it starts (a byte offset into the source).
#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub tok: Tok,
    pub pos: usize,
}

/// Characters allowed in an unquoted `%` or `@` name.
pub(crate) fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// A lazy lexer with arbitrary lookahead.
pub(crate) struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    ahead: std::collections::VecDeque<Token>,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(src: &'a str) -> Lexer<'a> {
        // Editors on some systems start files with a byte-order mark.
        let pos = if src.starts_with('\u{feff}') { '\u{feff}'.len_utf8() } else { 0 };
        Lexer { src, pos, ahead: std::collections::VecDeque::new() }
    }

    /// The `n`th token from here (0 is the next one).
    pub(crate) fn peek_nth(&mut self, n: usize) -> Result<&Token, ParseError> {
        while self.ahead.len() <= n {
            let t = self.lex()?;
            self.ahead.push_back(t);
        }
        Ok(&self.ahead[n])
    }

    /// The next token, consumed.
    pub(crate) fn next(&mut self) -> Result<Token, ParseError> {
        match self.ahead.pop_front() {
            Some(t) => Ok(t),
            None => self.lex(),
        }
    }

    fn err(&self, pos: usize, msg: impl Into<String>) -> ParseError {
        ParseError::at(self.src, pos, msg)
    }

    fn peek_char(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn char_at(&self, pos: usize) -> Option<char> {
        self.src.get(pos..).and_then(|s| s.chars().next())
    }

    fn skip_trivia(&mut self) {
        loop {
            let rest = &self.src[self.pos..];
            let trimmed = rest.trim_start();
            self.pos += rest.len() - trimmed.len();
            if trimmed.starts_with("//") {
                self.pos += trimmed.find('\n').unwrap_or(trimmed.len());
            } else {
                return;
            }
        }
    }

    fn lex(&mut self) -> Result<Token, ParseError> {
        self.skip_trivia();
        let start = self.pos;
        let Some(c) = self.peek_char() else {
            return Ok(Token { tok: Tok::Eof, pos: start });
        };
        let tok = match c {
            '%' | '@' => {
                self.pos += 1;
                let name = self.name(c)?;
                if c == '%' { Tok::Value(name) } else { Tok::Symbol(name) }
            }
            '"' => Tok::Str(self.string()?),
            '-' => match self.char_at(start + 1) {
                Some('>') => {
                    self.pos += 2;
                    Tok::Arrow
                }
                Some(d) if d.is_ascii_digit() => self.number()?,
                _ => {
                    self.pos += 1;
                    Tok::Minus
                }
            },
            '0'..='9' => self.number()?,
            c if is_ident_start(c) => {
                self.pos += 1;
                loop {
                    match self.peek_char() {
                        Some(c) if is_ident_char(c) => self.pos += 1,
                        Some('.') if self.char_at(self.pos + 1).is_some_and(is_ident_char) => self.pos += 1,
                        _ => break,
                    }
                }
                Tok::Ident(self.src[start..self.pos].to_string())
            }
            '(' | ')' | '[' | ']' | '{' | '}' | '<' | '>' | ',' | ':' | '=' | '?' | '*' | '.' => {
                self.pos += 1;
                Tok::Punct(c)
            }
            other => {
                return Err(self.err(start, format!("unexpected character {other:?}")));
            }
        };
        Ok(Token { tok, pos: start })
    }

    /// A name after `%` or `@`: plain characters or a quoted string.
    fn name(&mut self, sigil: char) -> Result<String, ParseError> {
        if self.peek_char() == Some('"') {
            return self.string();
        }
        let start = self.pos;
        while self.peek_char().is_some_and(is_name_char) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.err(
                start,
                format!("expected a name after '{sigil}' (letters, digits, '_' and '.', or a quoted string)"),
            ));
        }
        Ok(self.src[start..self.pos].to_string())
    }

    fn number(&mut self) -> Result<Tok, ParseError> {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        let digits = |p: &mut usize| {
            let s = *p;
            while bytes.get(*p).is_some_and(|b| b.is_ascii_digit()) {
                *p += 1;
            }
            *p > s
        };
        let mut p = self.pos;
        if bytes.get(p) == Some(&b'-') {
            p += 1;
        }
        if bytes.get(p) == Some(&b'0') && matches!(bytes.get(p + 1), Some(b'x') | Some(b'X')) {
            if p != self.pos {
                return Err(self.err(start, "hexadecimal literals cannot be negative"));
            }
            p += 2;
            let hs = p;
            while bytes.get(p).is_some_and(|b| b.is_ascii_hexdigit()) {
                p += 1;
            }
            if p == hs {
                return Err(self.err(start, "expected hexadecimal digits after '0x'"));
            }
            self.pos = p;
            self.check_number_end(start)?;
            return Ok(Tok::Hex(self.src[hs..p].to_string()));
        }
        digits(&mut p);
        let mut is_float = false;
        if bytes.get(p) == Some(&b'.') && bytes.get(p + 1).is_some_and(|b| b.is_ascii_digit()) {
            p += 1;
            digits(&mut p);
            is_float = true;
        }
        if matches!(bytes.get(p), Some(b'e') | Some(b'E')) {
            let mut q = p + 1;
            if matches!(bytes.get(q), Some(b'+') | Some(b'-')) {
                q += 1;
            }
            if !digits(&mut q) {
                return Err(self.err(p, "expected digits in the exponent"));
            }
            p = q;
            is_float = true;
        }
        self.pos = p;
        self.check_number_end(start)?;
        let text = self.src[start..p].to_string();
        Ok(if is_float { Tok::Float(text) } else { Tok::Int(text) })
    }

    /// A number directly followed by a letter (`16x`) is a typo, not two tokens.
    fn check_number_end(&self, start: usize) -> Result<(), ParseError> {
        match self.peek_char() {
            Some(c) if is_ident_char(c) => {
                Err(self.err(start, format!("malformed number '{}{c}'", &self.src[start..self.pos])))
            }
            _ => Ok(()),
        }
    }

    fn string(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        self.pos += 1; // the opening quote
        let mut out = String::new();
        loop {
            let Some(c) = self.peek_char() else {
                return Err(self.err(start, "unterminated string (missing closing '\"')"));
            };
            let here = self.pos;
            self.pos += c.len_utf8();
            match c {
                '"' => return Ok(out),
                '\n' => return Err(self.err(start, "unterminated string (strings cannot span lines; write \\n)")),
                '\\' => {
                    let Some(e) = self.peek_char() else {
                        return Err(self.err(start, "unterminated string (missing closing '\"')"));
                    };
                    self.pos += e.len_utf8();
                    match e {
                        '"' => out.push('"'),
                        '\\' => out.push('\\'),
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        '0' => out.push('\0'),
                        'u' => out.push(self.unicode_escape(here)?),
                        other => {
                            return Err(self.err(
                                here,
                                format!("unknown escape '\\{other}' (use \\\" \\\\ \\n \\t \\r \\0 or \\u{{hex}})"),
                            ));
                        }
                    }
                }
                c => out.push(c),
            }
        }
    }

    fn unicode_escape(&mut self, at: usize) -> Result<char, ParseError> {
        let bad = |s: &Self| s.err(at, "malformed unicode escape (write \\u{hex digits})");
        if self.peek_char() != Some('{') {
            return Err(bad(self));
        }
        self.pos += 1;
        let hs = self.pos;
        while self.peek_char().is_some_and(|c| c.is_ascii_hexdigit()) {
            self.pos += 1;
        }
        let hex = &self.src[hs..self.pos];
        if self.peek_char() != Some('}') || hex.is_empty() || hex.len() > 6 {
            return Err(bad(self));
        }
        self.pos += 1;
        u32::from_str_radix(hex, 16)
            .ok()
            .and_then(char::from_u32)
            .ok_or_else(|| self.err(at, format!("\\u{{{hex}}} is not a unicode scalar value")))
    }
}

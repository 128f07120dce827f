//! Typed pass options: how `rank=32` in a pipeline becomes a `usize` field.
//!
//! A pass declares its options as a struct with the [`pass_options!`]
//! macro: each field has a type, a default and a doc comment. The macro
//! derives [`Default`], the [`PassOptions`] trait (which sets a field from a
//! pipeline value through serde's `Deserialize`) and the [`OptionDoc`]s that
//! `sharc passes` lists. Any type that implements `serde::Deserialize` and
//! `serde::Serialize` works as an option type: integers, floats, `bool`,
//! `String`, `Vec<T>`, `Option<T>`, and enums of unit variants (written as
//! identifiers, `init=average`).
//!
//! ```
//! use sharc_passes::pass_options;
//!
//! pass_options! {
//!     /// Options of a pass that ties layers together.
//!     pub struct TieOptions {
//!         /// Number of groups of layers that share weights.
//!         groups: usize = 2,
//!         /// Which projections to tie.
//!         targets: Vec<String> = vec!["q".into(), "k".into()],
//!         /// Rank of the per-layer correction.
//!         rank: Option<u32> = None,
//!     }
//! }
//!
//! let docs = <TieOptions as sharc_passes::PassOptions>::docs();
//! assert_eq!(docs[0].name, "groups");
//! assert_eq!(docs[1].default, "[q,k]");
//! assert_eq!(TieOptions::default().groups, 2);
//! ```

use crate::pipeline::{OptionValue, Span, ValueKind, format_float, quote_if_needed};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use std::fmt;

/// The documentation of one option, for `sharc passes` and error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionDoc {
    /// The name pipelines use (kebab-case).
    pub name: String,
    /// The type, in a short readable form (`uint`, `float`, `list<string>`).
    pub ty: String,
    /// The default, written as a pipeline would write it.
    pub default: String,
    /// One line saying what the option does.
    pub description: String,
}

impl OptionDoc {
    /// Documents a field: its Rust name (snake_case becomes kebab-case), its
    /// Rust type as written (made readable), its default value and its doc
    /// comment (the first paragraph, on one line).
    pub fn new<T: serde::Serialize>(field: &str, rust_type: &str, default: &T, doc: &str) -> OptionDoc {
        OptionDoc {
            name: field.replace('_', "-"),
            ty: readable_type(rust_type),
            default: format_default(default),
            description: first_paragraph(doc),
        }
    }
}

/// `usize` → `uint`, `Vec<String>` → `list<string>`, `Option<f32>` →
/// `float?`; other names are kept (an enum's name).
fn readable_type(t: &str) -> String {
    let t: String = t.chars().filter(|c| !c.is_whitespace()).collect();
    if let Some(inner) = t.strip_prefix("Vec<").and_then(|s| s.strip_suffix('>')) {
        return format!("list<{}>", readable_type(inner));
    }
    if let Some(inner) = t.strip_prefix("Option<").and_then(|s| s.strip_suffix('>')) {
        return format!("{}?", readable_type(inner));
    }
    match t.as_str() {
        "usize" | "u64" | "u32" | "u16" | "u8" => "uint".to_string(),
        "isize" | "i64" | "i32" | "i16" | "i8" => "int".to_string(),
        "f32" | "f64" => "float".to_string(),
        "bool" => "bool".to_string(),
        "String" | "&str" | "&'staticstr" => "string".to_string(),
        other => other.to_string(),
    }
}

fn first_paragraph(doc: &str) -> String {
    let mut out = Vec::new();
    for line in doc.lines() {
        let line = line.trim();
        if line.is_empty() {
            if !out.is_empty() {
                break;
            }
            continue;
        }
        out.push(line);
    }
    out.join(" ")
}

/// A default value in pipeline syntax, through its serde form.
fn format_default<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(j) => format_json(&j),
        Err(_) => "?".to_string(),
    }
}

fn format_json(v: &serde_json::Value) -> String {
    use serde_json::Value as J;
    match v {
        J::Null => "none".to_string(),
        J::Bool(b) => b.to_string(),
        J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => format_float(f),
            _ => n.to_string(),
        },
        J::String(s) => quote_if_needed(s),
        J::Array(items) => format!("[{}]", items.iter().map(format_json).collect::<Vec<_>>().join(",")),
        J::Object(m) => {
            format!("{{{}}}", m.iter().map(|(k, v)| format!("{k}={}", format_json(v))).collect::<Vec<_>>().join(","))
        }
    }
}

/// Options a pass can be built from.
///
/// Implemented by [`pass_options!`]; write it by hand only for unusual
/// option handling.
pub trait PassOptions: Default + fmt::Debug + 'static {
    /// The options, in declaration order.
    fn docs() -> Vec<OptionDoc>;

    /// Sets the option `name` (kebab-case) from a pipeline value. Returns
    /// [`OptionError::Unknown`] for a name that is not an option.
    fn set(&mut self, name: &str, value: &OptionValue) -> Result<(), OptionError>;
}

/// Why an option could not be set.
#[derive(Clone, Debug, PartialEq)]
pub enum OptionError {
    /// No option has that name.
    Unknown,
    /// The value does not fit the option's type.
    Invalid {
        /// What is wrong, e.g. "expected uint, found identifier `abc`".
        message: String,
        /// The part of the value at fault (an element of a list, say).
        span: Span,
    },
}

/// Deserializes the value of option `option` into `T`; used by
/// [`pass_options!`]. `ty` is the option's Rust type for messages.
pub fn deserialize_option<T: serde::de::DeserializeOwned>(value: &OptionValue, ty: &str) -> Result<T, OptionError> {
    T::deserialize(ValueDeserializer { value, expected: readable_type(ty) })
        .map_err(|e| OptionError::Invalid { message: e.message, span: e.span.unwrap_or(value.span) })
}

/// Declares an options struct with defaults and docs.
///
/// Each field is `/// doc` `name: Type = default`. The struct gets public
/// fields, `Clone`, `Debug`, `PartialEq` and a `Default` built from the
/// defaults, and implements [`PassOptions`]. Field names are written in
/// kebab-case in pipelines (`max_iters` is `max-iters`). See the
/// [module docs](crate::options) for an example.
#[macro_export]
macro_rules! pass_options {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty = $default:expr
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq)]
        $vis struct $name {
            $(
                $(#[doc = $doc])*
                pub $field: $ty,
            )*
        }

        impl ::std::default::Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $crate::PassOptions for $name {
            fn docs() -> ::std::vec::Vec<$crate::OptionDoc> {
                #[allow(unused_variables)]
                let defaults = <Self as ::std::default::Default>::default();
                ::std::vec![
                    $(
                        $crate::OptionDoc::new(
                            stringify!($field),
                            stringify!($ty),
                            &defaults.$field,
                            concat!($($doc, "\n",)* ""),
                        ),
                    )*
                ]
            }

            #[allow(unused_variables)]
            fn set(&mut self, name: &str, value: &$crate::pipeline::OptionValue) -> ::std::result::Result<(), $crate::OptionError> {
                $(
                    if name == stringify!($field).replace('_', "-") {
                        self.$field = $crate::options::deserialize_option::<$ty>(value, stringify!($ty))?;
                        return Ok(());
                    }
                )*
                Err($crate::OptionError::Unknown)
            }
        }
    };
}

pass_options! {
    /// The options of a pass that takes none.
    pub struct NoOptions {}
}

/// The error of [`ValueDeserializer`]: a message and, when known, the span
/// of the offending (sub)value.
#[derive(Debug)]
struct DeError {
    message: String,
    span: Option<Span>,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> DeError {
        DeError { message: msg.to_string(), span: None }
    }
}

/// Feeds one pipeline value to serde. Type mismatches are reported as
/// "expected <type>, found <value>" with the value's span.
struct ValueDeserializer<'a> {
    value: &'a OptionValue,
    /// The readable type of the option (or list element), for messages.
    expected: String,
}

impl<'a> ValueDeserializer<'a> {
    fn mismatch(&self) -> DeError {
        DeError {
            message: format!("expected {}, found {}", self.expected, self.value.kind.describe()),
            span: Some(self.value.span),
        }
    }

    fn located(&self, e: DeError) -> DeError {
        DeError { span: e.span.or(Some(self.value.span)), ..e }
    }

    fn int(&self) -> Result<i64, DeError> {
        match self.value.kind {
            ValueKind::Int(v) => Ok(v),
            _ => Err(self.mismatch()),
        }
    }
}

macro_rules! deserialize_int {
    ($($method:ident => $visit:ident : $t:ty),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
                let v = self.int()?;
                let n = <$t>::try_from(v).map_err(|_| DeError {
                    message: format!("{v} is out of range for {}", self.expected),
                    span: Some(self.value.span),
                })?;
                visitor.$visit(n).map_err(|e| self.located(e))
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for ValueDeserializer<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match &self.value.kind {
            ValueKind::Int(v) => visitor.visit_i64(*v),
            ValueKind::Float(v) => visitor.visit_f64(*v),
            ValueKind::Bool(v) => visitor.visit_bool(*v),
            ValueKind::Ident(s) | ValueKind::Str(s) => visitor.visit_str(s),
            ValueKind::List(items) => {
                visitor.visit_seq(SeqAccess { items: items.iter(), expected: element_type(&self.expected) })
            }
        };
        r.map_err(|e| self.located(e))
    }

    deserialize_int! {
        deserialize_i8 => visit_i8: i8,
        deserialize_i16 => visit_i16: i16,
        deserialize_i32 => visit_i32: i32,
        deserialize_i64 => visit_i64: i64,
        deserialize_u8 => visit_u8: u8,
        deserialize_u16 => visit_u16: u16,
        deserialize_u32 => visit_u32: u32,
        deserialize_u64 => visit_u64: u64,
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let v = match self.value.kind {
            ValueKind::Float(v) => v,
            // An integer is a fine float (`lr=1`).
            ValueKind::Int(v) => v as f64,
            _ => return Err(self.mismatch()),
        };
        visitor.visit_f64(v).map_err(|e| self.located(e))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value.kind {
            ValueKind::Bool(v) => visitor.visit_bool(v).map_err(|e| self.located(e)),
            _ => Err(self.mismatch()),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.value.kind {
            ValueKind::Ident(s) | ValueKind::Str(s) => visitor.visit_str(s).map_err(|e| self.located(e)),
            _ => Err(self.mismatch()),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.value.kind {
            ValueKind::Ident(s) if s == "none" => visitor.visit_none(),
            _ => {
                let expected = self.expected.strip_suffix('?').unwrap_or(&self.expected).to_string();
                visitor.visit_some(ValueDeserializer { value: self.value, expected })
            }
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let expected = element_type(&self.expected);
        let r = match &self.value.kind {
            ValueKind::List(items) => visitor.visit_seq(SeqAccess { items: items.iter(), expected }),
            // A single value is a one-element list (`targets=q`).
            _ => visitor.visit_seq(SeqAccess { items: std::slice::from_ref(self.value).iter(), expected }),
        };
        r.map_err(|e| self.located(e))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.value.kind {
            ValueKind::Ident(s) | ValueKind::Str(s) => {
                let d: de::value::StrDeserializer<'_, DeError> = s.as_str().into_deserializer();
                visitor.visit_enum(d).map_err(|e| self.located(e))
            }
            _ => Err(self.mismatch()),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        i128 u128 bytes byte_buf unit unit_struct tuple tuple_struct map struct identifier ignored_any
    }
}

fn element_type(list: &str) -> String {
    list.strip_prefix("list<").and_then(|s| s.strip_suffix('>')).unwrap_or("a value").to_string()
}

struct SeqAccess<'a> {
    items: std::slice::Iter<'a, OptionValue>,
    expected: String,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            None => Ok(None),
            Some(v) => seed.deserialize(ValueDeserializer { value: v, expected: self.expected.clone() }).map(Some),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::parse_pipeline;
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    enum Init {
        Average,
        First,
    }

    pass_options! {
        /// Test options.
        struct Opts {
            /// Number of groups.
            ///
            /// More text that is not listed.
            groups: usize = 2,
            /// How to initialise.
            init: Init = Init::Average,
            /// Which targets.
            targets: Vec<String> = vec!["q".to_string()],
            /// Step size.
            lr: f32 = 0.5,
            /// Optional rank.
            max_rank: Option<u32> = None,
            /// A switch.
            on: bool = false,
        }
    }

    fn set(text: &str) -> Result<Opts, (OptionError, String)> {
        let p = parse_pipeline(text).unwrap();
        let mut o = Opts::default();
        for s in &p.passes[0].options {
            o.set(&s.name, &s.value).map_err(|e| (e, s.name.clone()))?;
        }
        Ok(o)
    }

    #[test]
    fn docs_list_names_types_and_defaults() {
        let d = Opts::docs();
        let rows: Vec<(&str, &str, &str, &str)> =
            d.iter().map(|d| (d.name.as_str(), d.ty.as_str(), d.default.as_str(), d.description.as_str())).collect();
        assert_eq!(
            rows,
            [
                ("groups", "uint", "2", "Number of groups."),
                ("init", "Init", "average", "How to initialise."),
                ("targets", "list<string>", "[q]", "Which targets."),
                ("lr", "float", "0.5", "Step size."),
                ("max-rank", "uint?", "none", "Optional rank."),
                ("on", "bool", "false", "A switch."),
            ]
        );
        assert!(NoOptions::docs().is_empty());
    }

    #[test]
    fn sets_typed_values() {
        let o = set("p{groups=4,init=first,targets=[k,v],lr=1,max-rank=8,on=true}").unwrap();
        assert_eq!(
            o,
            Opts {
                groups: 4,
                init: Init::First,
                targets: vec!["k".into(), "v".into()],
                lr: 1.0,
                max_rank: Some(8),
                on: true
            }
        );
        assert_eq!(set("p{targets=q}").unwrap().targets, vec!["q".to_string()]);
        assert_eq!(set("p{max-rank=none}").unwrap().max_rank, None);
    }

    #[test]
    fn type_errors_name_the_expected_type_and_point_at_the_value() {
        let (e, name) = set("p{groups=abc}").unwrap_err();
        assert_eq!(name, "groups");
        assert_eq!(
            e,
            OptionError::Invalid { message: "expected uint, found identifier `abc`".into(), span: Span::new(9, 12) }
        );
        let (e, _) = set("p{groups=-1}").unwrap_err();
        assert!(
            matches!(e, OptionError::Invalid { ref message, .. } if message == "-1 is out of range for uint"),
            "{e:?}"
        );
        let (e, _) = set("p{targets=[a,3]}").unwrap_err();
        assert_eq!(
            e,
            OptionError::Invalid { message: "expected string, found integer `3`".into(), span: Span::new(13, 14) }
        );
        let (e, _) = set("p{init=middle}").unwrap_err();
        match e {
            OptionError::Invalid { message, span } => {
                assert!(message.contains("unknown variant `middle`"), "{message}");
                assert_eq!(span, Span::new(7, 13));
            }
            other => panic!("{other:?}"),
        }
        let (e, _) = set("p{on=1}").unwrap_err();
        assert!(matches!(e, OptionError::Invalid { ref message, .. } if message == "expected bool, found integer `1`"));
        let (e, _) = set("p{nope=1}").unwrap_err();
        assert_eq!(e, OptionError::Unknown);
    }
}

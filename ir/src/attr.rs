//! Attributes: the generic form, and the typed structs ops are built from.
//!
//! ONNX stores attributes as a name → value list. sharc parses them once, on
//! import, into typed op structs (see [`crate::op`]); the generic [`Attr`] form
//! survives only at the edges: ONNX import and export, the text format, and
//! [`crate::Op::Opaque`]. Both directions go through one codec, the
//! [`AttrValue`] trait and the [`attr_struct!`](crate::attr_struct) macro, so
//! the text format and ONNX export can never disagree about an op's
//! attributes.

use crate::{DType, Subgraph, Tensor};
use std::collections::BTreeMap;
use std::fmt;

/// One attribute value, in ONNX's generic form.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Float(f32),
    Int(i64),
    String(String),
    Tensor(Tensor),
    Graph(Subgraph),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<String>),
    Tensors(Vec<Tensor>),
    Graphs(Vec<Subgraph>),
    /// A type-valued attribute (kept as its text form; ONNX uses these only in
    /// a few experimental ops).
    Type(crate::Type),
}

impl Attr {
    /// The ONNX spelling of this attribute's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Attr::Float(_) => "float",
            Attr::Int(_) => "int",
            Attr::String(_) => "string",
            Attr::Tensor(_) => "tensor",
            Attr::Graph(_) => "graph",
            Attr::Floats(_) => "floats",
            Attr::Ints(_) => "ints",
            Attr::Strings(_) => "strings",
            Attr::Tensors(_) => "tensors",
            Attr::Graphs(_) => "graphs",
            Attr::Type(_) => "type",
        }
    }
}

/// An ordered attribute list (sorted by name, which keeps printing and export
/// deterministic).
pub type Attrs = BTreeMap<String, Attr>;

/// Why an attribute list could not be turned into a typed op.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AttrError {
    #[error("missing required attribute '{name}'")]
    Missing { name: String },
    #[error("attribute '{name}' should be {expected}, found {found}")]
    WrongKind { name: String, expected: &'static str, found: &'static str },
    #[error("attribute '{name}' has an invalid value: {why}")]
    Invalid { name: String, why: String },
    #[error("unknown attribute '{name}' (known: {known})")]
    Unknown { name: String, known: String },
}

/// A Rust type that an attribute can be parsed into and written back from.
pub trait AttrValue: Sized + Clone + PartialEq {
    /// Parses the generic value. `name` is for error messages.
    fn from_attr(name: &str, a: &Attr) -> Result<Self, AttrError>;
    /// The generic value to write, or `None` to write nothing.
    fn to_attr(&self) -> Option<Attr>;
    /// The value to use when the attribute is absent and the op declares no
    /// default: `Some` for optional types, `None` makes it required.
    fn absent() -> Option<Self> {
        None
    }
}

fn wrong(name: &str, expected: &'static str, a: &Attr) -> AttrError {
    AttrError::WrongKind { name: name.to_string(), expected, found: a.kind() }
}

impl AttrValue for f32 {
    fn from_attr(name: &str, a: &Attr) -> Result<Self, AttrError> {
        match a {
            Attr::Float(v) => Ok(*v),
            // Some exporters write integral floats as ints.
            Attr::Int(v) => Ok(*v as f32),
            _ => Err(wrong(name, "float", a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Float(*self))
    }
}

impl AttrValue for i64 {
    fn from_attr(name: &str, a: &Attr) -> Result<Self, AttrError> {
        match a {
            Attr::Int(v) => Ok(*v),
            _ => Err(wrong(name, "int", a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Int(*self))
    }
}

impl AttrValue for bool {
    fn from_attr(name: &str, a: &Attr) -> Result<Self, AttrError> {
        match a {
            Attr::Int(v) => Ok(*v != 0),
            _ => Err(wrong(name, "int", a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Int(*self as i64))
    }
}

impl AttrValue for String {
    fn from_attr(name: &str, a: &Attr) -> Result<Self, AttrError> {
        match a {
            Attr::String(v) => Ok(v.clone()),
            _ => Err(wrong(name, "string", a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::String(self.clone()))
    }
}

impl AttrValue for Vec<i64> {
    fn from_attr(name: &str, a: &Attr) -> Result<Self, AttrError> {
        match a {
            Attr::Ints(v) => Ok(v.clone()),
            // An empty list carries no kind in some writers.
            Attr::Floats(v) if v.is_empty() => Ok(Vec::new()),
            _ => Err(wrong(name, "ints", a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Ints(self.clone()))
    }
}

impl AttrValue for Vec<f32> {
    fn from_attr(name: &str, a: &Attr) -> Result<Self, AttrError> {
        match a {
            Attr::Floats(v) => Ok(v.clone()),
            Attr::Ints(v) => Ok(v.iter().map(|&x| x as f32).collect()),
            _ => Err(wrong(name, "floats", a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Floats(self.clone()))
    }
}

impl AttrValue for Vec<String> {
    fn from_attr(name: &str, a: &Attr) -> Result<Self, AttrError> {
        match a {
            Attr::Strings(v) => Ok(v.clone()),
            Attr::Ints(v) if v.is_empty() => Ok(Vec::new()),
            _ => Err(wrong(name, "strings", a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Strings(self.clone()))
    }
}

impl AttrValue for Tensor {
    fn from_attr(name: &str, a: &Attr) -> Result<Self, AttrError> {
        match a {
            Attr::Tensor(t) => Ok(t.clone()),
            _ => Err(wrong(name, "tensor", a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Tensor(self.clone()))
    }
}

impl AttrValue for Subgraph {
    fn from_attr(name: &str, a: &Attr) -> Result<Self, AttrError> {
        match a {
            Attr::Graph(g) => Ok(g.clone()),
            _ => Err(wrong(name, "graph", a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Graph(self.clone()))
    }
}

impl AttrValue for DType {
    fn from_attr(name: &str, a: &Attr) -> Result<Self, AttrError> {
        match a {
            Attr::Int(code) => DType::from_onnx_code(*code as i32).ok_or_else(|| AttrError::Invalid {
                name: name.to_string(),
                why: format!("{code} is not a known ONNX data type"),
            }),
            _ => Err(wrong(name, "int", a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Int(self.onnx_code() as i64))
    }
}

impl<T: AttrValue> AttrValue for Option<T> {
    fn from_attr(name: &str, a: &Attr) -> Result<Self, AttrError> {
        T::from_attr(name, a).map(Some)
    }
    fn to_attr(&self) -> Option<Attr> {
        self.as_ref().and_then(T::to_attr)
    }
    fn absent() -> Option<Self> {
        Some(None)
    }
}

/// Reads typed attributes out of a generic list, and reports the ones nobody
/// asked for.
pub struct AttrReader {
    attrs: Attrs,
    known: Vec<&'static str>,
}

impl AttrReader {
    /// Starts reading a list.
    pub fn new(attrs: Attrs) -> AttrReader {
        AttrReader { attrs, known: Vec::new() }
    }

    /// Takes an attribute, using `default` when it is absent (or the type's
    /// own absent value, or an error when neither exists).
    pub fn take<T: AttrValue>(&mut self, name: &'static str, default: Option<T>) -> Result<T, AttrError> {
        self.known.push(name);
        match self.attrs.remove(name) {
            Some(a) => T::from_attr(name, &a),
            None => default.or_else(T::absent).ok_or_else(|| AttrError::Missing { name: name.to_string() }),
        }
    }

    /// Takes an attribute that may be absent.
    pub fn take_opt<T: AttrValue>(&mut self, name: &'static str) -> Result<Option<T>, AttrError> {
        self.known.push(name);
        self.attrs.remove(name).map(|a| T::from_attr(name, &a)).transpose()
    }

    /// Fails if any attribute was left unread.
    pub fn finish(self) -> Result<(), AttrError> {
        match self.attrs.into_keys().next() {
            None => Ok(()),
            Some(name) => Err(AttrError::Unknown {
                name,
                known: if self.known.is_empty() { "none".to_string() } else { self.known.join(", ") },
            }),
        }
    }
}

/// Collects typed attributes into a generic list, leaving out the ones equal
/// to their default so that printed and exported ops stay short.
#[derive(Default)]
pub struct AttrWriter {
    attrs: Attrs,
}

impl AttrWriter {
    /// A new, empty list.
    pub fn new() -> AttrWriter {
        AttrWriter::default()
    }

    /// Writes an attribute unless it equals `default`.
    pub fn put<T: AttrValue>(&mut self, name: &str, value: &T, default: Option<T>) {
        if default.as_ref() == Some(value) {
            return;
        }
        if let Some(a) = value.to_attr() {
            self.attrs.insert(name.to_string(), a);
        }
    }

    /// The list.
    pub fn finish(self) -> Attrs {
        self.attrs
    }
}

/// Typed attribute structs implement this; [`attr_struct!`](crate::attr_struct) writes it.
pub trait OpAttrs: Sized {
    /// Parses an attribute list.
    fn read(r: &mut AttrReader) -> Result<Self, AttrError>;
    /// Writes the attributes that differ from their defaults.
    fn write(&self, w: &mut AttrWriter);
}

/// Declares a struct of typed attributes together with its codec.
///
/// Each field names its ONNX attribute and optionally a default:
///
/// ```
/// sharc_ir::attr_struct! {
///     /// Scales and shifts.
///     pub struct Affine {
///         /// The scale.
///         alpha: f32 = "alpha", default 1.0;
///         /// The shift; required.
///         beta: f32 = "beta";
///     }
/// }
/// let a = Affine { alpha: 2.0, beta: 1.0 };
/// let mut w = sharc_ir::AttrWriter::new();
/// sharc_ir::OpAttrs::write(&a, &mut w);
/// assert_eq!(w.finish().len(), 2);
/// ```
///
/// A field without a default is required, except `Option<T>` fields, which
/// are `None` when absent.
#[macro_export]
macro_rules! attr_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                $field:ident : $ty:ty = $key:literal $(, default $default:expr)? ;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $name {
            $(
                $(#[$fmeta])*
                pub $field: $ty,
            )*
        }

        impl $crate::OpAttrs for $name {
            #[allow(unused_variables)]
            fn read(r: &mut $crate::AttrReader) -> Result<Self, $crate::AttrError> {
                Ok($name {
                    $( $field: r.take::<$ty>($key, $crate::attr_struct!(@default $($default)?))?, )*
                })
            }
            #[allow(unused_variables)]
            fn write(&self, w: &mut $crate::AttrWriter) {
                $( w.put::<$ty>($key, &self.$field, $crate::attr_struct!(@default $($default)?)); )*
            }
        }
    };
    (@default $default:expr) => { Some($default) };
    (@default) => { None };
}

/// Declares an enum stored as a string attribute, with its codec.
#[macro_export]
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $( $(#[$vmeta])* $variant ),* }

        impl $name {
            /// The ONNX spelling.
            pub fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $text ),* }
            }
        }

        impl $crate::AttrValue for $name {
            fn from_attr(name: &str, a: &$crate::Attr) -> Result<Self, $crate::AttrError> {
                let s = <String as $crate::AttrValue>::from_attr(name, a)?;
                match s.as_str() {
                    $( $text => Ok($name::$variant), )*
                    other => Err($crate::AttrError::Invalid {
                        name: name.to_string(),
                        why: format!("'{}' is not one of {}", other, [$($text),*].join(", ")),
                    }),
                }
            }
            fn to_attr(&self) -> Option<$crate::Attr> {
                Some($crate::Attr::String(self.as_str().to_string()))
            }
        }
    };
}

impl fmt::Display for Attr {
    /// A compact display for messages; the text format has its own printer.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attr::Float(v) => write!(f, "{v:?}"),
            Attr::Int(v) => write!(f, "{v}"),
            Attr::String(s) => write!(f, "{s:?}"),
            Attr::Floats(v) => write!(f, "{v:?}"),
            Attr::Ints(v) => write!(f, "{v:?}"),
            Attr::Strings(v) => write!(f, "{v:?}"),
            Attr::Tensor(t) => write!(f, "{t:?}"),
            Attr::Tensors(t) => write!(f, "{} tensors", t.len()),
            Attr::Graph(_) => f.write_str("<graph>"),
            Attr::Graphs(g) => write!(f, "{} graphs", g.len()),
            Attr::Type(t) => write!(f, "{t}"),
        }
    }
}

impl AttrValue for crate::Type {
    fn from_attr(name: &str, a: &Attr) -> Result<Self, AttrError> {
        match a {
            Attr::Type(t) => Ok(t.clone()),
            _ => Err(wrong(name, "type", a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Type(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::attr_struct! {
        /// Test struct.
        pub struct Demo {
            alpha: f32 = "alpha", default 1.0;
            trans_b: bool = "transB", default false;
            perm: Option<Vec<i64>> = "perm";
            axis: i64 = "axis";
        }
    }

    #[test]
    fn reads_defaults_and_requires() {
        let mut attrs = Attrs::new();
        attrs.insert("axis".into(), Attr::Int(2));
        let mut r = AttrReader::new(attrs);
        let d = Demo::read(&mut r).unwrap();
        r.finish().unwrap();
        assert_eq!(d, Demo { alpha: 1.0, trans_b: false, perm: None, axis: 2 });
        let mut w = AttrWriter::new();
        d.write(&mut w);
        assert_eq!(w.finish().into_keys().collect::<Vec<_>>(), vec!["axis".to_string()]);

        let mut r = AttrReader::new(Attrs::new());
        assert_eq!(Demo::read(&mut r).unwrap_err(), AttrError::Missing { name: "axis".into() });
    }

    #[test]
    fn unknown_attribute_is_reported() {
        let mut attrs = Attrs::new();
        attrs.insert("axis".into(), Attr::Int(2));
        attrs.insert("bogus".into(), Attr::Int(2));
        let mut r = AttrReader::new(attrs);
        Demo::read(&mut r).unwrap();
        let e = r.finish().unwrap_err();
        assert!(e.to_string().contains("unknown attribute 'bogus'"), "{e}");
    }

    #[test]
    fn wrong_kind_is_reported() {
        let mut attrs = Attrs::new();
        attrs.insert("axis".into(), Attr::String("x".into()));
        let e = Demo::read(&mut AttrReader::new(attrs)).unwrap_err();
        assert_eq!(e.to_string(), "attribute 'axis' should be int, found string");
    }
}

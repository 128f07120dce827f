//! The pass registry: pass names → constructors taking typed options.
//!
//! Pipelines name passes (`cse`, `tie-layers{rank=32}`); the registry turns
//! each name and its options into a [`Pass`]. Standard passes are
//! registered by [`register_standard`](crate::standard::register_standard);
//! a user's own pass registers the same way and then works in pipelines and
//! in `sharc opt`:
//!
//! ```
//! use sharc_ir::Graph;
//! use sharc_passes::{pass_options, Pass, PassContext, PassError, PassOutcome, Registry, RegisteredPass};
//!
//! pass_options! {
//!     /// Options of `rename`.
//!     pub struct RenameOptions {
//!         /// Prefix added to every graph output name.
//!         prefix: String = "out_".to_string(),
//!     }
//! }
//!
//! /// Prefixes graph output names.
//! struct Rename(RenameOptions);
//!
//! impl Pass for Rename {
//!     fn name(&self) -> &'static str { "rename" }
//!     fn run(&mut self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassOutcome, PassError> {
//!         for o in g.outputs_mut() {
//!             o.name = format!("{}{}", self.0.prefix, o.name);
//!         }
//!         Ok(PassOutcome::from_changed(!g.outputs().is_empty()))
//!     }
//! }
//!
//! impl RegisteredPass for Rename {
//!     type Options = RenameOptions;
//!     const NAME: &'static str = "rename";
//!     const SUMMARY: &'static str = "Prefix graph output names";
//!     fn new(options: RenameOptions) -> Self { Rename(options) }
//! }
//!
//! let mut registry = Registry::with_standard_passes();
//! registry.register::<Rename>();
//! let passes = registry.build_str("cse,rename{prefix=y_}").unwrap();
//! assert_eq!(passes.len(), 2);
//! ```

use crate::Pass;
use crate::options::{OptionDoc, OptionError, PassOptions};
use crate::pipeline::{PassSpec, Pipeline, PipelineError, parse_pipeline};
use std::collections::BTreeMap;
use std::fmt;

/// A pass the registry can build by name.
///
/// Implement it next to [`Pass`] and call [`Registry::register`].
pub trait RegisteredPass: Pass + Sized + 'static {
    /// The options the pass is built from (see [`pass_options!`](crate::pass_options)).
    type Options: PassOptions;
    /// The name pipelines use; kebab-case. Usually equal to [`Pass::name`].
    const NAME: &'static str;
    /// One line saying what the pass does, for `sharc passes`.
    const SUMMARY: &'static str;
    /// Builds the pass.
    fn new(options: Self::Options) -> Self;
}

type Builder = Box<dyn Fn(&PassSpec, &str) -> Result<Box<dyn Pass>, PipelineError> + Send + Sync>;

/// What the registry knows about one pass.
pub struct PassInfo {
    /// The pipeline name.
    pub name: &'static str,
    /// One line saying what it does.
    pub summary: &'static str,
    /// Its options.
    pub options: Vec<OptionDoc>,
    build: Builder,
}

impl fmt::Debug for PassInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PassInfo").field("name", &self.name).field("options", &self.options).finish()
    }
}

/// Registering a second pass under a name that is taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a pass named `{0}` is already registered")]
pub struct DuplicatePass(pub String);

/// Pass names → constructors. See the [module docs](self).
#[derive(Default)]
pub struct Registry {
    passes: BTreeMap<&'static str, PassInfo>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.passes.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// A registry holding every standard pass
    /// ([`STANDARD_PASSES`](crate::standard::STANDARD_PASSES)).
    pub fn with_standard_passes() -> Registry {
        let mut r = Registry::new();
        crate::standard::register_standard(&mut r);
        r
    }

    /// Registers a pass type.
    ///
    /// # Panics
    ///
    /// When a pass of the same name is registered already: that is a bug in
    /// the program that registers, not bad input. Use
    /// [`Registry::try_register`] to handle it.
    pub fn register<P: RegisteredPass>(&mut self) -> &mut Registry {
        if let Err(e) = self.try_register::<P>() {
            panic!("{e}");
        }
        self
    }

    /// Registers a pass type, failing when the name is taken.
    pub fn try_register<P: RegisteredPass>(&mut self) -> Result<(), DuplicatePass> {
        self.try_register_fn::<P::Options>(P::NAME, P::SUMMARY, |o| Box::new(P::new(o)))
    }

    /// Registers a pass built by a function from its options (for passes
    /// whose type is generic or built from other parts).
    pub fn try_register_fn<O: PassOptions>(
        &mut self,
        name: &'static str,
        summary: &'static str,
        build: impl Fn(O) -> Box<dyn Pass> + Send + Sync + 'static,
    ) -> Result<(), DuplicatePass> {
        if self.passes.contains_key(name) {
            return Err(DuplicatePass(name.to_string()));
        }
        let docs = O::docs();
        let builder: Builder = Box::new(move |spec: &PassSpec, text: &str| {
            let options = parse_options::<O>(name, spec, text)?;
            Ok(build(options))
        });
        self.passes.insert(name, PassInfo { name, summary, options: docs, build: builder });
        Ok(())
    }

    /// The pass of this name, if registered.
    pub fn get(&self, name: &str) -> Option<&PassInfo> {
        self.passes.get(name)
    }

    /// True when a pass of this name is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.passes.contains_key(name)
    }

    /// Every registered pass, by name.
    pub fn iter(&self) -> impl Iterator<Item = &PassInfo> {
        self.passes.values()
    }

    /// Builds the passes of a parsed pipeline. Unknown pass or option
    /// names, and values of the wrong type, are errors that point into the
    /// pipeline text and suggest the closest valid names.
    pub fn build(&self, pipeline: &Pipeline) -> Result<Vec<Box<dyn Pass>>, PipelineError> {
        pipeline.passes.iter().map(|spec| self.build_one(spec, &pipeline.text)).collect()
    }

    /// Parses pipeline text and builds its passes.
    pub fn build_str(&self, pipeline: &str) -> Result<Vec<Box<dyn Pass>>, PipelineError> {
        self.build(&parse_pipeline(pipeline)?)
    }

    /// Builds one pass of a pipeline whose text is `text`.
    pub fn build_one(&self, spec: &PassSpec, text: &str) -> Result<Box<dyn Pass>, PipelineError> {
        match self.passes.get(spec.name.as_str()) {
            Some(info) => (info.build)(spec, text),
            None => {
                let names: Vec<&str> = self.passes.keys().copied().collect();
                let e = PipelineError::new(text, spec.span, format!("unknown pass `{}`", spec.name));
                Err(match closest(&spec.name, &names) {
                    Some(s) => e.with_help(s),
                    None => e.with_help(format!(
                        "`sharc passes` lists the passes; registered here: {}",
                        list_or_none(&names)
                    )),
                })
            }
        }
    }

    /// A listing of every pass with its options, as `sharc passes` prints it.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let width = self.passes.keys().map(|n| n.len()).max().unwrap_or(0);
        for info in self.passes.values() {
            out.push_str(&format!("{:width$}  {}\n", info.name, info.summary));
            let ow = info.options.iter().map(|o| o.name.len() + o.ty.len() + o.default.len() + 4).max().unwrap_or(0);
            for o in &info.options {
                let sig = format!("{}: {} = {}", o.name, o.ty, o.default);
                out.push_str(&format!("{:width$}    {sig:ow$}  {}\n", "", o.description));
            }
        }
        out
    }
}

/// Applies the options of `spec` to `O::default()`.
fn parse_options<O: PassOptions>(pass: &str, spec: &PassSpec, text: &str) -> Result<O, PipelineError> {
    let mut o = O::default();
    for s in &spec.options {
        match o.set(&s.name, &s.value) {
            Ok(()) => {}
            Err(OptionError::Unknown) => {
                let names: Vec<String> = O::docs().into_iter().map(|d| d.name).collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let e = PipelineError::new(text, s.name_span, format!("pass `{pass}` has no option `{}`", s.name));
                return Err(match closest(&s.name, &refs) {
                    Some(h) => e.with_help(h),
                    None if refs.is_empty() => e.with_help(format!("`{pass}` takes no options")),
                    None => e.with_help(format!("the options of `{pass}` are {}", list_or_none(&refs))),
                });
            }
            Err(OptionError::Invalid { message, span }) => {
                let ty = O::docs().into_iter().find(|d| d.name == s.name).map(|d| d.ty).unwrap_or_default();
                return Err(PipelineError::new(
                    text,
                    span,
                    format!("invalid value for option `{}` of pass `{pass}` (type {ty}): {message}", s.name),
                ));
            }
        }
    }
    Ok(o)
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    }
}

/// "did you mean `cse`?" for the names closest to `name`, if any is close.
pub(crate) fn closest(name: &str, candidates: &[&str]) -> Option<String> {
    let mut scored: Vec<(f64, &str)> = candidates
        .iter()
        .map(|c| {
            let lev = strsim::levenshtein(name, c);
            let jw = strsim::jaro_winkler(name, c);
            // Close by edits relative to length, or a shared prefix (jaro-winkler).
            let close = lev <= (name.len().max(c.len()) / 3).max(1) || jw >= 0.85;
            (if close { jw - lev as f64 * 0.01 } else { -1.0 }, *c)
        })
        .filter(|(s, _)| *s >= 0.0)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    let best: Vec<String> = scored.iter().take(3).map(|(_, n)| format!("`{n}`")).collect();
    match best.len() {
        0 => None,
        1 => Some(format!("did you mean {}?", best[0])),
        _ => Some(format!("did you mean one of {}?", best.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PassContext, PassError, PassOutcome, pass_options};
    use sharc_ir::Graph;

    pass_options! {
        struct TieOptions {
            /// Groups.
            groups: usize = 2,
            /// Rank.
            rank: u32 = 16,
            /// Init.
            init: String = "average".to_string(),
        }
    }

    struct Tie(TieOptions);
    impl Pass for Tie {
        fn name(&self) -> &'static str {
            "tie-layers"
        }
        fn run(&mut self, _g: &mut Graph, _cx: &mut PassContext) -> Result<PassOutcome, PassError> {
            if self.0.groups == 0 {
                return Err(PassError::Refused {
                    pass: "tie-layers".into(),
                    message: "groups must be positive".into(),
                });
            }
            Ok(PassOutcome::Unchanged)
        }
    }
    impl RegisteredPass for Tie {
        type Options = TieOptions;
        const NAME: &'static str = "tie-layers";
        const SUMMARY: &'static str = "Tie layers";
        fn new(o: TieOptions) -> Tie {
            Tie(o)
        }
    }

    fn registry() -> Registry {
        let mut r = Registry::with_standard_passes();
        r.register::<Tie>();
        r
    }

    #[test]
    fn builds_passes_with_options() {
        let passes = registry().build_str("infer-shapes,cse,tie-layers{groups=3,rank=32},dce").unwrap();
        let names: Vec<&str> = passes.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["infer-shapes", "cse", "tie-layers", "dce"]);
    }

    #[test]
    fn duplicate_registration_is_refused() {
        let mut r = registry();
        assert_eq!(r.try_register::<Tie>(), Err(DuplicatePass("tie-layers".into())));
    }

    #[test]
    fn unknown_pass_suggests_the_closest_names() {
        let e = registry().build_str("infer-shapes,csee,dce").err().unwrap();
        assert_eq!(
            e.to_string(),
            "error: unknown pass `csee`\n  | infer-shapes,csee,dce\n  |              ^^^^\n  = help: did you mean `cse`?"
        );
        let e = registry().build_str("tie-layer").err().unwrap();
        assert_eq!(e.help.as_deref(), Some("did you mean `tie-layers`?"));
        let e = registry().build_str("zzzzzzzz").err().unwrap();
        assert!(e.help.unwrap().contains("registered here: `canonicalize`"));
    }

    #[test]
    fn unknown_option_suggests_the_closest_option() {
        let e = registry().build_str("cse,tie-layers{grups=2}").err().unwrap();
        assert_eq!(
            e.to_string(),
            "error: pass `tie-layers` has no option `grups`\n  | cse,tie-layers{grups=2}\n  |                ^^^^^\n  = help: did you mean `groups`?"
        );
        let e = registry().build_str("cse{x=1}").err().unwrap();
        assert_eq!(e.help.as_deref(), Some("`cse` takes no options"));
    }

    #[test]
    fn wrongly_typed_value_names_option_type_and_position() {
        let e = registry().build_str("tie-layers{groups=2,rank=big}").err().unwrap();
        assert_eq!(
            e.to_string(),
            "error: invalid value for option `rank` of pass `tie-layers` (type uint): expected uint, found identifier `big`\n  | tie-layers{groups=2,rank=big}\n  |                          ^^^"
        );
    }

    #[test]
    fn describe_lists_options_with_defaults() {
        let d = registry().describe();
        assert!(d.contains("tie-layers"), "{d}");
        assert!(d.contains("groups: uint = 2"), "{d}");
        assert!(d.contains("init: string = average"), "{d}");
    }
}

//! Parameter-sharing passes and the compression methods built on them.
//!
//! Every sharing pass follows one skeleton:
//! 1. [`analysis::blocks`](crate::analysis::blocks) finds the repeated blocks
//!    of the model and aligns their weights by role;
//! 2. [`analysis::calibration`](crate::analysis::calibration) optionally runs
//!    calibration data and records the residual stream;
//! 3. the transformation runs ([`tie_layers`], [`fold_blocks`], [`crash`],
//!    and dictionary and expert reuse as they land; [`rewire`] has the graph
//!    surgery they share);
//! 4. [`report`] measures what it saved and what it cost.
//!
//! [`Method`] packages steps 1–3 for `sharc compress`: a method compresses a
//! graph and says which residual-stream points of the result correspond to
//! which of the original, so the report can compare them. [`method`] builds
//! a method from its name and `key=value` settings; new methods add an arm
//! there.

pub mod crash;
pub mod dictionary;
pub mod expert_reuse;
pub mod fold_blocks;
pub mod report;
pub mod rewire;
pub mod tie_layers;

use crate::analysis::calibration::Pooling;
use crate::options::deserialize_option;
use crate::{OptionDoc, OptionError, PassContext, PassError, PassOptions, RegisteredPass, Registry};
use report::StreamPoints;
use sharc_ir::{Evaluator, Graph, Value};
use std::collections::BTreeMap;

/// What a method did, for the report.
#[derive(Clone, Debug)]
pub struct MethodOutcome {
    /// A human-readable account (several lines).
    pub summary: String,
    /// The same for machines.
    pub details: serde_json::Value,
    /// Residual-stream points of the original and their counterparts in
    /// the compressed model.
    pub points: StreamPoints,
}

/// A compression method as `sharc compress` runs it.
pub trait Method {
    /// The method's name (`tie`).
    fn name(&self) -> &str;

    /// True when the method needs calibration batches in the context.
    fn needs_calibration(&self) -> bool {
        false
    }

    /// The pooling the method uses for representations (CKA reports use it).
    fn pooling(&self) -> Pooling {
        Pooling::Mean
    }

    /// Compresses `g` in place.
    fn apply(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<MethodOutcome, PassError>;
}

/// The methods [`method`] knows, with one line each.
pub const METHODS: &[(&str, &str)] = &[
    ("tie", "Relaxed Recursive Transformers: tie L blocks into K shared ones, with per-depth LoRA of rank r"),
    ("fold", "FoldGPT: drop the blocks of least influence, share weights in groups of retained blocks, refit norms"),
    ("crash", "CRaSh: cluster layers by CKA, keep one per cluster, share it with its neighbours or remove them"),
    ("dictionary", "MASA: per group and role, shared atoms and per-layer coefficients from matrix PCA"),
    ("expert-reuse", "ReXMoE-style: merge experts of adjacent MoE layers into a shared pool and rebind the routers"),
];

/// Named starting points for `sharc compress --preset`: (method, preset,
/// settings). They are sized for stacks of 6 to 12 blocks (the `blocks` and
/// `clusters` counts are absolute); flags given next to a preset override
/// its settings.
pub const PRESETS: &[(&str, &str, &str)] = &[
    ("tie", "light", "blocks=3 init=average rank=64"),
    ("tie", "medium", "blocks=3 init=average rank=16"),
    ("tie", "strong", "blocks=2 init=stepwise rank=0"),
    ("fold", "light", "remove=1 group=1 refit-norms=true"),
    ("fold", "medium", "remove=1 group=2 share=representative refit-norms=true"),
    ("fold", "strong", "remove=2 group=2 share=representative refit-norms=true"),
    ("crash", "light", "clusters=4 mode=share pooling=mean-weighted"),
    ("crash", "medium", "clusters=3 mode=share pooling=mean-weighted"),
    ("crash", "strong", "clusters=2 mode=share pooling=mean-weighted"),
    ("dictionary", "light", "roles=q+k+v atoms=0.67 residual-rank=16"),
    ("dictionary", "medium", "roles=q+k+v atoms=0.5"),
    ("dictionary", "strong", "roles=q+k+v+o atoms=0.34"),
    ("expert-reuse", "light", "window=2 experts=12"),
    ("expert-reuse", "medium", "window=2 experts=8"),
    ("expert-reuse", "strong", "window=4 experts=8"),
];

/// The settings of a preset of a method. Fails listing the presets the
/// method has.
pub fn preset_settings(method: &str, preset: &str) -> Result<BTreeMap<String, String>, String> {
    let canonical = match method {
        "tie-layers" => "tie",
        "fold-blocks" => "fold",
        m => m,
    };
    let Some((_, _, settings)) = PRESETS.iter().find(|(m, p, _)| *m == canonical && *p == preset) else {
        let known: Vec<&str> = PRESETS.iter().filter(|(m, ..)| *m == canonical).map(|(_, p, _)| *p).collect();
        return Err(if known.is_empty() {
            format!("method '{method}' has no presets")
        } else {
            format!("method '{method}' has no preset '{preset}' (presets: {})", known.join(", "))
        });
    };
    Ok(settings
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// Builds a method from its name and settings (`blocks=3`, `rank=32`, ...).
/// Fails naming the setting that is wrong.
pub fn method(name: &str, settings: &BTreeMap<String, String>) -> Result<Box<dyn Method>, String> {
    match name {
        "tie" | "tie-layers" => {
            Ok(Box::new(TieMethod { options: tie_layers::TieLayersOptions::from_settings(settings)? }))
        }
        "fold" | "fold-blocks" => {
            Ok(Box::new(FoldMethod { options: fold_blocks::FoldBlocksOptions::from_settings(settings)? }))
        }
        "crash" => Ok(Box::new(CrashMethod { options: crash::CrashOptions::from_settings(settings)? })),
        "dictionary" => Ok(Box::new(dictionary::DictionaryMethod {
            options: dictionary::DictionaryOptions::from_settings(settings)?,
        })),
        "expert-reuse" => Ok(Box::new(expert_reuse::ExpertReuseMethod {
            options: expert_reuse::ExpertReuseOptions::from_settings(settings)?,
        })),
        other => Err(format!(
            "unknown method '{other}'; known methods: {}",
            METHODS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// `tie`: [`tie_layers`] as a method.
pub struct TieMethod {
    /// The pass options.
    pub options: tie_layers::TieLayersOptions,
}

impl Method for TieMethod {
    fn name(&self) -> &str {
        "tie"
    }

    fn apply(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<MethodOutcome, PassError> {
        let s = tie_layers::tie_layers(g, &self.options)?;
        cx.reports.insert(tie_layers::NAME.to_string(), s.to_string());
        // Compare every block's output; the first boundary is the input of
        // block 0, identical in both models by construction.
        let labels = s.slots.iter().map(|k| format!("shared {}", k + 1)).collect();
        let points = StreamPoints::same_names(labels, s.boundaries[1..].to_vec());
        Ok(MethodOutcome {
            summary: s.to_string(),
            details: serde_json::to_value(&s).unwrap_or(serde_json::Value::Null),
            points,
        })
    }
}

/// The calibration batches and evaluator of a context, or a clear error.
fn calibration<'a>(cx: &PassContext<'a>, method: &str) -> Result<(&'a dyn Evaluator, &'a [Vec<Value>]), PassError> {
    match (cx.evaluator, cx.calibration) {
        (Some(ev), Some(b)) if !b.is_empty() => Ok((ev, b)),
        _ => Err(PassError::Missing {
            pass: method.to_string(),
            message: "this method measures activations: give calibration data (--calib)".to_string(),
        }),
    }
}

/// Stream points for a method that removes blocks: each original block's
/// output against the value that holds the stream at that depth now.
fn depth_points(outputs: &[String], counterparts: Vec<String>, removed: impl Fn(usize) -> bool) -> StreamPoints {
    let labels =
        (0..outputs.len()).map(|i| if removed(i) { format!("removed {i}") } else { format!("block {i}") }).collect();
    StreamPoints { labels, reference: outputs.to_vec(), candidate: counterparts.into_iter().map(Some).collect() }
}

/// `fold`: [`fold_blocks`] as a method.
pub struct FoldMethod {
    /// The pass options.
    pub options: fold_blocks::FoldBlocksOptions,
}

impl Method for FoldMethod {
    fn name(&self) -> &str {
        "fold"
    }

    fn needs_calibration(&self) -> bool {
        true
    }

    fn apply(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<MethodOutcome, PassError> {
        let (ev, batches) = calibration(cx, fold_blocks::NAME)?;
        let s = fold_blocks::fold_blocks(g, &self.options, ev, batches)?;
        cx.reports.insert(fold_blocks::NAME.to_string(), s.to_string());
        let points = depth_points(&s.block_outputs, s.counterparts(), |i| s.removed.contains(&i));
        Ok(MethodOutcome {
            summary: s.to_string(),
            details: serde_json::to_value(&s).unwrap_or(serde_json::Value::Null),
            points,
        })
    }
}

/// `crash`: [`crash::crash`] as a method.
pub struct CrashMethod {
    /// The pass options.
    pub options: crash::CrashOptions,
}

impl Method for CrashMethod {
    fn name(&self) -> &str {
        "crash"
    }

    fn needs_calibration(&self) -> bool {
        true
    }

    fn pooling(&self) -> Pooling {
        self.options.pooling
    }

    fn apply(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<MethodOutcome, PassError> {
        let (ev, batches) = calibration(cx, crash::NAME)?;
        let s = crash::crash(g, &self.options, ev, batches)?;
        cx.reports.insert(crash::NAME.to_string(), s.to_string());
        let points = depth_points(&s.block_outputs, s.counterparts(), |i| s.uses[i].is_none());
        Ok(MethodOutcome {
            summary: s.to_string(),
            details: serde_json::to_value(&s).unwrap_or(serde_json::Value::Null),
            points,
        })
    }
}

/// The names of the sharing passes [`register_sharing`] registers.
pub const SHARING_PASSES: &[&str] =
    &[tie_layers::NAME, fold_blocks::NAME, crash::NAME, dictionary::NAME, expert_reuse::NAME];

/// Registers the sharing passes (`tie-layers`, `fold-blocks`, `crash`) so
/// pipelines can name them: `sharc opt -p "tie-layers{blocks=3,rank=32},dce"`.
/// `fold-blocks` and `crash` measure activations, so they run only where the
/// pass context carries an evaluator and calibration batches (as in
/// `sharc compress`); elsewhere they fail saying so.
pub fn register_sharing(registry: &mut Registry) {
    registry.register::<tie_layers::TieLayers>();
    registry.register::<fold_blocks::FoldBlocks>();
    registry.register::<crash::Crash>();
    registry.register::<dictionary::Dictionary>();
    registry.register::<expert_reuse::ExpertReuse>();
}

/// Sets one option from a pipeline value through serde, as
/// [`pass_options!`](crate::pass_options) does.
fn set_field<T: serde::de::DeserializeOwned>(
    slot: &mut T,
    value: &crate::pipeline::OptionValue,
    ty: &str,
) -> Result<(), OptionError> {
    *slot = deserialize_option::<T>(value, ty)?;
    Ok(())
}

impl PassOptions for tie_layers::TieLayersOptions {
    fn docs() -> Vec<OptionDoc> {
        let d = Self::default();
        let role_ranks: Vec<String> = d.role_ranks.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        vec![
            OptionDoc::new("blocks", "usize", &d.blocks, "Shared blocks K left (alias `groups`)."),
            OptionDoc::new(
                "pattern",
                "cycle|sequence",
                &d.pattern,
                "Layer l uses block (l mod K) or neighbours share.",
            ),
            OptionDoc::new("init", "stepwise|average|lower", &d.init, "How the shared weights start."),
            OptionDoc::new(
                "rank",
                "uint|full",
                &d.rank,
                "LoRA rank of the per-depth corrections (0: purely recursive).",
            ),
            OptionDoc::new(
                "role_ranks",
                "Vec<String>",
                &role_ranks,
                "Ranks of single roles or kinds as role:rank, e.g. [ffn-out:64,k:8,norm-gain:0].",
            ),
        ]
    }

    fn set(&mut self, name: &str, value: &crate::pipeline::OptionValue) -> Result<(), OptionError> {
        match name {
            "blocks" | "groups" => set_field(&mut self.blocks, value, "usize"),
            "pattern" => set_field(&mut self.pattern, value, "cycle|sequence"),
            "init" => set_field(&mut self.init, value, "stepwise|average|lower"),
            "rank" => set_field(&mut self.rank, value, "uint|full"),
            "role-ranks" => {
                let items: Vec<String> = deserialize_option(value, "Vec<String>")?;
                for item in items {
                    let parsed = item
                        .split_once([':', '='])
                        .ok_or_else(|| format!("'{item}' is not role:rank"))
                        .and_then(|(role, r)| Ok((role.trim().to_string(), r.parse::<tie_layers::Rank>()?)));
                    let (role, r) = parsed.map_err(|message| OptionError::Invalid { message, span: value.span })?;
                    self.role_ranks.insert(role, r);
                }
                Ok(())
            }
            _ => Err(OptionError::Unknown),
        }
    }
}

impl RegisteredPass for tie_layers::TieLayers {
    type Options = tie_layers::TieLayersOptions;
    const NAME: &'static str = tie_layers::NAME;
    const SUMMARY: &'static str = "Relaxed Recursive Transformers: tie L repeated blocks into K, with per-depth LoRA";
    fn new(options: Self::Options) -> Self {
        tie_layers::TieLayers::new(options)
    }
}

impl PassOptions for fold_blocks::FoldBlocksOptions {
    fn docs() -> Vec<OptionDoc> {
        let d = Self::default();
        vec![
            OptionDoc::new("remove", "usize", &d.remove, "Blocks to remove (ignored when `rate` is given)."),
            OptionDoc::new("rate", "Option<f64>", &d.rate, "Fraction of blocks to remove."),
            OptionDoc::new("group", "usize", &d.group, "Retained blocks per weight-sharing group (1: no sharing)."),
            OptionDoc::new("share", "representative|average", &d.share, "How a group's shared weights are chosen."),
            OptionDoc::new(
                "importance",
                "block-influence|angular|last",
                &d.importance,
                "How blocks are ranked for removal.",
            ),
            OptionDoc::new("refit_norms", "bool", &d.refit_norms, "Refit the private norms by least squares."),
        ]
    }

    fn set(&mut self, name: &str, value: &crate::pipeline::OptionValue) -> Result<(), OptionError> {
        match name {
            "remove" => set_field(&mut self.remove, value, "usize"),
            "rate" => set_field(&mut self.rate, value, "Option<f64>"),
            "group" => set_field(&mut self.group, value, "usize"),
            "share" => set_field(&mut self.share, value, "representative|average"),
            "importance" => set_field(&mut self.importance, value, "block-influence|angular|last"),
            "refit-norms" => set_field(&mut self.refit_norms, value, "bool"),
            _ => Err(OptionError::Unknown),
        }
    }
}

impl RegisteredPass for fold_blocks::FoldBlocks {
    type Options = fold_blocks::FoldBlocksOptions;
    const NAME: &'static str = fold_blocks::NAME;
    const SUMMARY: &'static str =
        "FoldGPT: remove the blocks of least Block Influence, share weights in groups, refit norms (needs calibration)";
    fn new(options: Self::Options) -> Self {
        fold_blocks::FoldBlocks::new(options)
    }
}

impl PassOptions for crash::CrashOptions {
    fn docs() -> Vec<OptionDoc> {
        let d = Self::default();
        vec![
            OptionDoc::new("clusters", "usize", &d.clusters, "Clusters (unique layers) kept."),
            OptionDoc::new("pooling", "mean|mean-weighted|last|max", &d.pooling, "How hidden states are pooled."),
            OptionDoc::new("mode", "share|remove", &d.mode, "Share the kept layers or remove the others."),
        ]
    }

    fn set(&mut self, name: &str, value: &crate::pipeline::OptionValue) -> Result<(), OptionError> {
        match name {
            "clusters" => set_field(&mut self.clusters, value, "usize"),
            "pooling" => set_field(&mut self.pooling, value, "mean|mean-weighted|last|max"),
            "mode" => set_field(&mut self.mode, value, "share|remove"),
            _ => Err(OptionError::Unknown),
        }
    }
}

impl RegisteredPass for crash::Crash {
    type Options = crash::CrashOptions;
    const NAME: &'static str = crash::NAME;
    const SUMMARY: &'static str =
        "CRaSh: cluster layers by linear CKA, keep the middle of each, share or remove the rest (needs calibration)";
    fn new(options: Self::Options) -> Self {
        crash::Crash::new(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharing_passes_build_from_pipeline_text() {
        let mut r = Registry::with_standard_passes();
        register_sharing(&mut r);
        let passes = r
            .build_str(
                "tie-layers{groups=3,init=stepwise,rank=full,role-ranks=[ffn-out:64,k:8]},\
                 fold-blocks{remove=2,group=3,share=average,refit-norms=false,rate=0.5},\
                 crash{clusters=2,pooling=mean-weighted,mode=remove},dce",
            )
            .unwrap();
        let names: Vec<&str> = passes.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["tie-layers", "fold-blocks", "crash", "dce"]);
        let e = r.build_str("tie-layers{init=middle}").err().unwrap().to_string();
        assert!(e.contains("init"), "{e}");
        let e = r.build_str("tie-layers{role-ranks=[q]}").err().unwrap().to_string();
        assert!(e.contains("not role:rank"), "{e}");
        let e = r.build_str("crash{clustres=2}").err().unwrap().to_string();
        assert!(e.contains("clusters"), "{e}");
        for name in SHARING_PASSES {
            assert!(!r.get(name).unwrap().options.is_empty());
        }
    }

    #[test]
    fn presets_exist_for_every_method_and_build() {
        for (m, _) in METHODS {
            for p in ["light", "medium", "strong"] {
                let s = preset_settings(m, p).unwrap();
                assert!(method(m, &s).is_ok(), "{m}/{p}: {s:?}");
            }
        }
        assert!(preset_settings("tie", "huge").unwrap_err().contains("light, medium, strong"));
    }
}

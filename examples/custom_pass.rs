//! A pass written outside sharc, registered next to the standard passes and
//! run from a pipeline string.
//!
//! `fold-neutral` removes arithmetic with a neutral element: `x * 1`,
//! `x / 1`, `x - 0` and `x + 0` become `x`. Exporters leave these behind
//! (scaling by a constant that happens to be 1, adding a zero bias), and
//! they cost a full pass over the tensor at run time.
//!
//! Run it with `cargo run --example custom_pass`; `cargo test` runs its
//! snapshot test.

use sharc::ir::{BinaryOp, Graph, NodeId, Op, ValueRef};
use sharc::passes::{Pass, PassContext, PassError, PassOutcome, Patch, RegisteredPass, Registry, pass_options};

pass_options! {
    /// Options of `fold-neutral`.
    pub struct FoldNeutralOptions {
        /// Also fold `x + 0`, which turns -0.0 into +0.0 (harmless for almost every model).
        add_zero: bool = true,
    }
}

/// The `fold-neutral` pass.
pub struct FoldNeutral {
    options: FoldNeutralOptions,
}

impl RegisteredPass for FoldNeutral {
    type Options = FoldNeutralOptions;
    const NAME: &'static str = "fold-neutral";
    const SUMMARY: &'static str = "Fold x*1, x/1, x-0 and x+0 into x";
    fn new(options: FoldNeutralOptions) -> FoldNeutral {
        FoldNeutral { options }
    }
}

impl FoldNeutral {
    /// The operand that node `id` passes through unchanged, if any.
    fn passthrough(&self, g: &Graph, id: NodeId) -> Option<ValueRef> {
        let Op::Binary(op) = &g.node(id).op else { return None };
        let (a, b) = (g.node_input(id, 0)?, g.node_input(id, 1)?);
        // Which operand may be neutral, and which element is neutral for it.
        let candidates: &[(ValueRef, ValueRef, f64)] = match op {
            BinaryOp::Mul => &[(a, b, 1.0), (b, a, 1.0)],
            BinaryOp::Div => &[(a, b, 1.0)],
            BinaryOp::Sub => &[(a, b, 0.0)],
            BinaryOp::Add if self.options.add_zero => &[(a, b, 0.0), (b, a, 0.0)],
            _ => &[],
        };
        let out = ValueRef::new(id, 0);
        candidates.iter().find_map(|&(x, c, neutral)| {
            let Op::Constant(t) = &g.node(c.node).op else { return None };
            let all_neutral = t.to_f64_vec()?.iter().all(|&v| v == neutral);
            // Broadcasting against the constant must not change x's type.
            let same_type = g.value_type(x) == g.value_type(out) && g.value_type(x).shape().is_some();
            (all_neutral && same_type).then_some(x)
        })
    }
}

impl Pass for FoldNeutral {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        // Read the graph, record the changes in a patch, apply it at once.
        let mut patch = Patch::new();
        let mut folded = 0;
        for id in g.node_ids() {
            if let Some(x) = self.passthrough(g, id) {
                patch.replace_uses(ValueRef::new(id, 0), x);
                patch.remove_node(id);
                folded += 1;
            }
        }
        patch.apply(g).map_err(|e| PassError::Failed { pass: Self::NAME.into(), message: e.to_string() })?;
        cx.count(Self::NAME, "folded", folded);
        Ok(PassOutcome::from_changed(folded > 0))
    }
}

/// The standard passes plus `fold-neutral`.
pub fn registry() -> Registry {
    let mut r = Registry::with_standard_passes();
    r.register::<FoldNeutral>();
    r
}

const EXAMPLE: &str = "graph @mlp(%x: f32[batch, 4]) -> (%y) {
  %w = weight @fc.weight : f32[4, 4]
  %m = MatMul(%x, %w)
  %one = const f32[] 1.0
  %scaled = Mul(%m, %one)
  %zero = const f32[4] splat(0.0)
  %biased = Add(%scaled, %zero)
  %y = Relu(%biased)
}";

fn main() {
    let out = sharc::testing::run_pipeline_with(&registry(), EXAMPLE, "infer-shapes,fold-neutral,dce");
    println!("{out}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharc::testing::{PipelineTest, run_pipeline_with};

    #[test]
    fn folds_neutral_arithmetic() {
        insta::assert_snapshot!(run_pipeline_with(&registry(), EXAMPLE, "infer-shapes,fold-neutral,dce"));
    }

    #[test]
    fn keeps_x_plus_zero_when_asked_and_broadcasting_adds() {
        let src = "graph @g(%x: f32[4], %s: f32[]) -> (%y, %z) {
  %zero = const f32[] 0.0
  %y = Add(%x, %zero)
  %ones = const f32[4] splat(1.0)
  %z = Mul(%s, %ones)
}";
        let out = PipelineTest::new("infer-shapes,fold-neutral{add-zero=false}")
            .registry(&registry())
            .check_numerics(0.0)
            .run(src)
            .unwrap_or_else(|e| panic!("{e}"));
        // Neither fires: `add-zero` is off, and `s * ones` broadcasts a scalar to [4].
        assert_eq!(out.report.records[1].counters.get("folded"), None);
        assert!(out.after.contains("%y = Add(%x, %zero)"), "{}", out.after);
        assert!(out.after.contains("%z = Mul(%s, %ones)"), "{}", out.after);
    }

    #[test]
    fn works_with_the_standard_passes_and_keeps_the_numbers() {
        let out = PipelineTest::new("infer-shapes,canonicalize,fold-neutral,cse,dce")
            .registry(&registry())
            .check_numerics(0.0)
            .run(EXAMPLE)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.graph.stats().compute_nodes, 2);
    }
}

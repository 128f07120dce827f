//! `infer-shapes`: sets the type of every value from the graph's inputs.
//!
//! Most passes need types: canonicalize recognises a Reshape to the same
//! shape only when both shapes are known, and fold-constants checks a fold's
//! size before running it. This pass wraps [`sharc_ir::infer_shapes`], which
//! keeps symbolic dims symbolic (`batch`, `seq*12`), merges with the types
//! already on the graph without losing information, and recurses into
//! bodies. Run it first, and again after passes that add untyped values.

use crate::options::NoOptions;
use crate::registry::RegisteredPass;
use crate::{Pass, PassContext, PassError, PassOutcome};
use sharc_ir::Graph;

/// The `infer-shapes` pass. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct InferShapes;

impl Pass for InferShapes {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let stats = sharc_ir::infer_shapes(g)
            .map_err(|e| PassError::Failed { pass: Self::NAME.to_string(), message: e.to_string() })?;
        cx.count(Self::NAME, "values-changed", stats.changed as i64);
        cx.count(Self::NAME, "values-unknown", stats.unknown as i64);
        cx.count(Self::NAME, "values-with-shape", stats.known_shape as i64);
        Ok(PassOutcome::from_changed(stats.changed > 0))
    }
}

impl RegisteredPass for InferShapes {
    type Options = NoOptions;
    const NAME: &'static str = "infer-shapes";
    const SUMMARY: &'static str = "Infer the type and shape of every value, keeping symbolic dims symbolic";
    fn new(_: NoOptions) -> InferShapes {
        InferShapes
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::run_pipeline;
    use insta::assert_snapshot;

    #[test]
    fn types_a_chain_with_symbolic_dims() {
        assert_snapshot!(run_pipeline(
            "graph @g(%x: f32[batch, 16], %w: f32[16, 8]) -> (%y) {
  %m = MatMul(%x, %w)
  %t = Transpose(%m) {perm = [1, 0]}
  %y = Relu(%t)
}",
            "infer-shapes"
        ));
    }

    #[test]
    fn tracks_shape_values_into_reshape() {
        assert_snapshot!(run_pipeline(
            "graph @g(%x: f32[batch, seq, 64]) -> (%y) {
  %s = Shape(%x)
  %i = const i64[] 0
  %b = Gather(%s, %i)
  %b1 = Unsqueeze(%b, %ax)
  %ax = const i64[1] [0]
  %rest = const i64[3] [-1, 8, 8]
  %shape = Concat(%b1, %rest) {axis = 0}
  %y = Reshape(%x, %shape)
}",
            "infer-shapes"
        ));
    }

    #[test]
    fn typed_graph_is_unchanged() {
        let src = "graph @g(%x: f32[2, 3]) -> (%y) {
  %y = Neg(%x) : f32[2, 3]
}
";
        let out = run_pipeline(src, "infer-shapes");
        assert_eq!(out, src);
        assert_snapshot!(out);
    }

    #[test]
    fn a_type_conflict_is_an_error_naming_the_node() {
        let e = crate::testing::try_run_pipeline(
            "graph @g(%x: f32[2, 3]) -> (%y) {
  %y = Neg(%x) : f32[4, 3]
}",
            "infer-shapes",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("infer-shapes") && msg.contains("'y'") && msg.contains("conflicts"), "{msg}");
    }
}

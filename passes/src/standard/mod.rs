//! The standard passes, one file per pass.
//!
//! Every pass here keeps symbolic dims symbolic and leaves the
//! interpreter's outputs unchanged (up to float reassociation where a pass
//! says so). Each is tested with snapshot tests in IR text.
//!
//! The list below is the one place that declares every pass sharc ships
//! (as rustc declares its MIR passes), the ones in this folder and those of
//! other modules (`simplify`, the parameter-sharing passes): adding a line
//! for a [`RegisteredPass`] type makes it available to pipelines,
//! [`Registry::with_standard_passes`], `sharc passes` and `sharc opt` at
//! once. It defines [`STANDARD_PASSES`] and [`register_standard`].

pub mod canonicalize;
pub mod cse;
pub mod dce;
pub mod fold_constants;
pub mod infer_shapes;

pub use canonicalize::Canonicalize;
pub use cse::Cse;
pub use dce::Dce;
pub use fold_constants::FoldConstants;
pub use infer_shapes::InferShapes;

use crate::registry::{RegisteredPass, Registry};

macro_rules! standard_passes {
    ($($pass:path),* $(,)?) => {
        /// The names of the standard passes.
        pub const STANDARD_PASSES: &[&str] = &[$(<$pass as RegisteredPass>::NAME),*];

        /// Registers every standard pass in `registry`.
        pub fn register_standard(registry: &mut Registry) {
            $( registry.register::<$pass>(); )*
        }
    };
}

standard_passes! {
    InferShapes,
    Canonicalize,
    Cse,
    FoldConstants,
    Dce,
    // The equality-saturation pass `simplify` (passes/src/rewrite/) is
    // registered here when it lands: `crate::rewrite::Simplify,`.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_standard_pass_is_registered_under_its_name() {
        let r = Registry::with_standard_passes();
        for name in STANDARD_PASSES {
            let info = r.get(name).unwrap_or_else(|| panic!("{name} is not registered"));
            assert!(!info.summary.is_empty());
            let pass = r.build_str(name).unwrap();
            assert_eq!(pass[0].name(), *name);
        }
        assert_eq!(r.iter().count(), STANDARD_PASSES.len());
    }
}

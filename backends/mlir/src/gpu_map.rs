//! How the parallel loops of a bufferized module become GPU kernels: each
//! loop nest is tiled, the tile becomes a thread block and the tile loops
//! the grid, and each nest is outlined into its own kernel.
//!
//! The block shape decides most of a naive kernel's speed: how many threads
//! a block has, and whether neighbouring threads touch neighbouring memory
//! (the loop's innermost dim, contiguous in row-major buffers). Both are
//! settings rather than constants so they can be measured on a GPU without
//! rebuilding: `SHARC_GPU_TILE` (up to three tile sizes, for a loop's
//! leading dims) and `SHARC_GPU_MAPPING` (`outermost-first` puts a loop's
//! first dim on threads' x, `innermost-first` its last).

use crate::MlirError;

/// Tile sizes for a loop's leading dims when `SHARC_GPU_TILE` is unset.
pub const DEFAULT_TILE: [u64; 3] = [1, 4, 32];
/// Which loop dim goes to x when `SHARC_GPU_MAPPING` is unset.
pub const DEFAULT_MAPPING: &str = "outermost-first";

/// The block shape and loop-to-dimension mapping of the GPU kernels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuMapping {
    /// Tile sizes of a loop's leading dims (one to three).
    pub tile: Vec<u64>,
    /// `outermost-first` or `innermost-first`.
    pub policy: String,
}

impl Default for GpuMapping {
    fn default() -> GpuMapping {
        GpuMapping { tile: DEFAULT_TILE.to_vec(), policy: DEFAULT_MAPPING.to_string() }
    }
}

impl GpuMapping {
    /// The defaults, overridden by `SHARC_GPU_TILE` and `SHARC_GPU_MAPPING`.
    pub fn from_env() -> Result<GpuMapping, MlirError> {
        let mut m = GpuMapping::default();
        if let Ok(tile) = std::env::var("SHARC_GPU_TILE") {
            m.tile = parse_tile(&tile)?;
        }
        if let Ok(policy) = std::env::var("SHARC_GPU_MAPPING") {
            m.policy = policy;
        }
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<(), MlirError> {
        if !matches!(self.policy.as_str(), "outermost-first" | "innermost-first") {
            return Err(MlirError::Run(format!(
                "SHARC_GPU_MAPPING is '{}': use outermost-first or innermost-first",
                self.policy
            )));
        }
        let threads: u64 = self.tile.iter().product();
        if self.tile.is_empty() || self.tile.len() > 3 || self.tile.contains(&0) || threads > 1024 {
            return Err(MlirError::Run(format!(
                "GPU tile {:?}: give one to three sizes of at least 1 whose product (the threads in a block) is at \
                 most 1024, e.g. SHARC_GPU_TILE=1,4,32",
                self.tile
            )));
        }
        Ok(())
    }

    /// The pass pipeline from the fused tensor module to outlined kernels.
    ///
    /// The tiles have fixed sizes with a bounds check inside
    /// (`no-min-max-bounds`): the mapping needs a thread count it can read
    /// as a constant, and an `affine.min` of the remainder is not one, so
    /// loops tiled that way stayed on the host. Math functions are left
    /// whole: libdevice implements them (see [`crate::nvvm`]).
    pub fn pipeline(&self) -> String {
        let tile = self.tile.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        format!(
            "builtin.module(one-shot-bufferize{{bufferize-function-boundaries \
             function-boundary-type-conversion=identity-layout-map}},canonicalize,\
             func.func(convert-linalg-to-parallel-loops,\
             scf-parallel-loop-tiling{{parallel-loop-tile-sizes={tile} no-min-max-bounds=true}},\
             gpu-map-parallel-loops{{mapping-policy={policy}}},convert-parallel-loops-to-gpu),\
             gpu-kernel-outlining,canonicalize,cse)",
            policy = self.policy
        )
    }
}

/// Parses `1,4,32`.
fn parse_tile(text: &str) -> Result<Vec<u64>, MlirError> {
    text.split(',')
        .map(|t| {
            t.trim().parse::<u64>().map_err(|_| {
                MlirError::Run(format!("SHARC_GPU_TILE is '{text}': give comma-separated sizes, e.g. 1,4,32"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pipeline_tiles_1_4_32_outermost_first() {
        let p = GpuMapping::default().pipeline();
        assert!(p.contains("parallel-loop-tile-sizes=1,4,32 no-min-max-bounds=true"), "{p}");
        assert!(p.contains("mapping-policy=outermost-first"), "{p}");
    }

    #[test]
    fn bad_tiles_and_policies_are_refused() {
        assert!(parse_tile("4,x").is_err());
        let too_big = GpuMapping { tile: vec![32, 64], policy: DEFAULT_MAPPING.into() };
        assert!(too_big.check().unwrap_err().to_string().contains("1024"));
        let zero = GpuMapping { tile: vec![0, 4], policy: DEFAULT_MAPPING.into() };
        assert!(zero.check().is_err());
        let policy = GpuMapping { tile: vec![4, 32], policy: "sideways".into() };
        assert!(policy.check().unwrap_err().to_string().contains("innermost-first"));
    }
}

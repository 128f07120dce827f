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

    /// The pass pipeline from the bufferized module (after
    /// [`copies_as_loops`]) to outlined kernels.
    ///
    /// The tiles have fixed sizes with a bounds check inside
    /// (`no-min-max-bounds`): the mapping needs a thread count it can read
    /// as a constant, and an `affine.min` of the remainder is not one, so
    /// loops tiled that way stayed on the host. Math functions are left
    /// whole: libdevice implements them (see [`crate::nvvm`]).
    pub fn pipeline(&self) -> String {
        let tile = self.tile.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        format!(
            "builtin.module(func.func(convert-linalg-to-parallel-loops,\
             scf-parallel-loop-tiling{{parallel-loop-tile-sizes={tile} no-min-max-bounds=true}},\
             gpu-map-parallel-loops{{mapping-policy={policy}}},convert-parallel-loops-to-gpu),\
             gpu-kernel-outlining,canonicalize,cse)",
            policy = self.policy
        )
    }
}

/// Tensors to buffers, before the GPU mapping. Function boundaries get
/// plain (identity-layout) memrefs, which the runner passes as descriptors.
pub const BUFFERIZE: &str = "builtin.module(one-shot-bufferize{bufferize-function-boundaries \
     function-boundary-type-conversion=identity-layout-map},canonicalize)";

/// Rewrites every `memref.copy` of the bufferized module as `linalg.copy`,
/// which the mapping turns into a kernel like any other loop nest.
///
/// Bufferization copies buffers (to keep a value that is later written in
/// place, to fill the results), and a `memref.copy` would run on the host:
/// every run would then pull those buffers from GPU memory to the host and
/// back, page by page, through managed memory. gpt-tiny's host code had 67
/// such copies.
pub fn copies_as_loops(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        match copy_parts(line) {
            Some((indent, from, to, from_ty, to_ty)) => {
                out.push_str(&format!("{indent}linalg.copy ins({from} : {from_ty}) outs({to} : {to_ty})\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// `memref.copy %a, %b : T to U` as (indent, %a, %b, T, U).
fn copy_parts(line: &str) -> Option<(&str, &str, &str, &str, &str)> {
    let body = line.trim_start();
    let indent = &line[..line.len() - body.len()];
    let rest = body.strip_prefix("memref.copy ")?;
    let (operands, types) = rest.split_once(" : ")?;
    let (from, to) = operands.split_once(", ")?;
    let (from_ty, to_ty) = types.split_once(" to ")?;
    Some((indent, from, to, from_ty, to_ty.trim_end()))
}

/// Reorders the loops of every `linalg.generic` whose reduction dims come
/// before some of its parallel dims so that the parallel dims come first.
///
/// The lowering writes contractions as `i, k, j` (reduction in the middle),
/// the order that vectorises on a CPU. `convert-linalg-to-parallel-loops`
/// only makes the dims before the first reduction parallel, so on a GPU a
/// matmul became one thread per row looping over the whole `k × j` plane,
/// one thread per block. With the reductions last every output element gets
/// its own thread. Each output element still sums over `k` in the same order,
/// so results do not change. Generics that read `linalg.index` (which names
/// loop dims by number) are left alone.
pub fn reductions_innermost(text: &str) -> String {
    let aliases: std::collections::HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix('#').and_then(|l| l.split_once(" = ")))
        .filter(|(_, v)| v.starts_with("affine_map<"))
        .collect();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::with_capacity(text.len());
    for (n, line) in lines.iter().enumerate() {
        let rewritten =
            if line.trim_start().starts_with("linalg.generic {indexing_maps = [") && !body_uses_index(&lines[n..]) {
                reorder_generic(line, &aliases)
            } else {
                None
            };
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Whether the generic opening `lines[0]` reads `linalg.index` in its body
/// (the lines up to the `}` at the generic's own indentation).
fn body_uses_index(lines: &[&str]) -> bool {
    let indent = lines[0].len() - lines[0].trim_start().len();
    for l in &lines[1..] {
        let body = l.trim_start();
        if l.len() - body.len() == indent && body.starts_with('}') {
            return false;
        }
        if body.contains("linalg.index") {
            return true;
        }
    }
    true
}

/// The generic on `line` with its parallel dims first, or `None` when it
/// needs no change or has a form this rewrite does not know.
fn reorder_generic(line: &str, aliases: &std::collections::HashMap<&str, &str>) -> Option<String> {
    let maps_start = line.find("indexing_maps = [")? + "indexing_maps = [".len();
    let maps_end = maps_start + line[maps_start..].find("], iterator_types = [")?;
    let iters_start = maps_end + "], iterator_types = [".len();
    let iters_end = iters_start + line[iters_start..].find(']')?;
    let iters: Vec<&str> = line[iters_start..iters_end].split(", ").collect();
    let first_reduction = iters.iter().position(|&t| t == "\"reduction\"")?;
    if !iters[first_reduction..].contains(&"\"parallel\"")
        || iters.iter().any(|&t| t != "\"reduction\"" && t != "\"parallel\"")
    {
        return None;
    }
    // New position of each old dim: parallel dims in order, then reductions.
    let order: Vec<usize> = (0..iters.len())
        .filter(|&d| iters[d] == "\"parallel\"")
        .chain((0..iters.len()).filter(|&d| iters[d] == "\"reduction\""))
        .collect();
    let mut position = vec![0; iters.len()];
    for (new, &old) in order.iter().enumerate() {
        position[old] = new;
    }
    let mut maps = Vec::new();
    for m in split_top_level(&line[maps_start..maps_end]) {
        let map = if let Some(name) = m.strip_prefix('#') { aliases.get(name)?.to_string() } else { m.to_string() };
        let (domain, results) = map.split_once(" -> ")?;
        maps.push(format!("{domain} -> {}", rename_dims(results, &position)));
    }
    let new_iters: Vec<&str> = order.iter().map(|&d| iters[d]).collect();
    Some(format!(
        "{}{}], iterator_types = [{}{}",
        &line[..maps_start],
        maps.join(", "),
        new_iters.join(", "),
        &line[iters_end..]
    ))
}

/// Splits `index, memref<2x4xf32, strided<[4, 1]>>, f32` at the commas
/// outside brackets (an empty text has no parts).
pub(crate) fn split_top_level(text: &str) -> Vec<&str> {
    let (mut depth, mut start, mut parts) = (0i32, 0, Vec::new());
    for (i, c) in text.char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if !text[start..].trim().is_empty() {
        parts.push(text[start..].trim());
    }
    parts
}

/// `dK` becomes `d{position[K]}` in an affine expression.
fn rename_dims(expr: &str, position: &[usize]) -> String {
    let mut out = String::with_capacity(expr.len());
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_token = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if bytes[i] == b'd' && starts_token && i + 1 < bytes.len() && bytes[i + 1].is_ascii_digit() {
            let end = (i + 1..bytes.len()).find(|&j| !bytes[j].is_ascii_digit()).unwrap_or(bytes.len());
            match expr[i + 1..end].parse::<usize>().ok().and_then(|k| position.get(k)) {
                Some(p) => out.push_str(&format!("d{p}")),
                None => out.push_str(&expr[i..end]),
            }
            i = end;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    out
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
    fn matmul_reduction_moves_innermost() {
        let text = "#map = affine_map<(d0, d1, d2) -> (d0, d1)>\n#map1 = affine_map<(d0, d1, d2) -> (d1, d2)>\n\
                    #map2 = affine_map<(d0, d1, d2) -> (d0, d2)>\n\
                    \x20 linalg.generic {indexing_maps = [#map, #map1, #map2], iterator_types = [\"parallel\", \"reduction\", \"parallel\"]} ins(%a, %b : A, B) outs(%c : C) {\n\
                    \x20 ^bb0(%x: f32, %y: f32, %z: f32):\n\
                    \x20 }\n";
        let got = reductions_innermost(text);
        assert!(
            got.contains(
                "indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d2)>, affine_map<(d0, d1, d2) -> (d2, d1)>, \
                 affine_map<(d0, d1, d2) -> (d0, d1)>], iterator_types = [\"parallel\", \"parallel\", \"reduction\"]} ins(%a"
            ),
            "{got}"
        );
        // A generic that reads loop indices keeps its order.
        let indexed = text.replace("  ^bb0", "  %i = linalg.index 1 : index\n  ^bb0");
        assert_eq!(reductions_innermost(&indexed), indexed);
        assert_eq!(rename_dims("(d0 + d10, s0, 0)", &[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), "(d2 + d1, s0, 0)");
    }

    #[test]
    fn copies_become_linalg_copies() {
        let text = "  %a = memref.alloc() : memref<2xf32>\n    memref.copy %a, %arg1 : memref<2xf32, strided<[2]>> to memref<2xf32>\n";
        assert_eq!(
            copies_as_loops(text),
            "  %a = memref.alloc() : memref<2xf32>\n    linalg.copy ins(%a : memref<2xf32, strided<[2]>>) outs(%arg1 : memref<2xf32>)\n"
        );
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

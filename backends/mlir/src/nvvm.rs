//! Lowering GPU kernels to PTX through NVVM, and the one library that
//! lowering may need: CUDA's libdevice.
//!
//! Kernels made only of arithmetic lower to PTX with LLVM's NVPTX backend
//! alone. Transcendental math does not: `math.exp`, `math.erf`,
//! `math.sqrt`... become calls to libdevice's `__nv_expf`, `__nv_erff`...,
//! and a PTX module that still calls them cannot be loaded. libdevice is a
//! bitcode file that ships with every CUDA toolkit (`nvvm/libdevice/
//! libdevice.10.bc`, also in pip's `nvidia-cuda-nvcc-cu12`). When sharc finds
//! it, NVVM links it into each kernel module (only the functions the kernels
//! call, inlined and optimised with them), so the PTX is self-contained and
//! the GPU machine needs only the driver. When it is not found, kernels that
//! need it are refused with an error that says which functions are missing
//! and how to point sharc at the file.
//!
//! The pipeline is MLIR's `gpu-lower-to-nvvm-pipeline` spelled out pass by
//! pass, because that pipeline has no option for the libraries to link: the
//! `l=` list belongs to `nvvm-attach-target`, which it runs inside.

use crate::MlirError;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The environment variable naming libdevice's file, checked before the
/// usual CUDA install locations.
pub const LIBDEVICE_ENV: &str = "SHARC_LIBDEVICE";

/// Where a GPU's kernels are compiled for: the architecture, the PTX version
/// it needs, and the libdevice to link, if one was found.
#[derive(Clone, Debug)]
pub struct NvvmTarget {
    /// `sm_80` or `sm_90`.
    pub chip: &'static str,
    /// The PTX ISA version, as an LLVM feature (`+ptx70`).
    pub features: &'static str,
    /// CUDA's libdevice bitcode, linked into the kernels when present.
    pub libdevice: Option<PathBuf>,
}

impl NvvmTarget {
    /// The target for `chip`, with libdevice looked up as
    /// [`find_libdevice`] does.
    pub fn new(chip: &str) -> Result<NvvmTarget, MlirError> {
        let libdevice = find_libdevice()?;
        NvvmTarget::with_libdevice(chip, libdevice)
    }

    /// The target for `chip` with an explicit libdevice (or none).
    pub fn with_libdevice(chip: &str, libdevice: Option<PathBuf>) -> Result<NvvmTarget, MlirError> {
        // The oldest PTX version that has each architecture: newer drivers
        // JIT older PTX, so the lowest keeps the PTX loadable on most drivers.
        let (chip, features) = match chip {
            "sm_80" => ("sm_80", "+ptx70"),
            "sm_90" => ("sm_90", "+ptx80"),
            other => return Err(MlirError::Run(format!("unknown GPU architecture '{other}' (sm_80 or sm_90)"))),
        };
        if let Some(path) = &libdevice {
            check_option_safe(path)?;
        }
        Ok(NvvmTarget { chip, features, libdevice })
    }

    /// The pass pipeline from GPU-mapped MLIR (after `gpu-kernel-outlining`
    /// or before) to host code plus `gpu.binary` ops holding PTX text.
    /// Kernels take whole memref descriptors (pointers, offset, sizes,
    /// strides), not bare pointers: a kernel's arguments can be views with an
    /// offset or a dynamic size (a mixture-of-experts layer's rows per
    /// expert are only known at run time), which a bare pointer cannot
    /// describe.
    pub fn pipeline(&self) -> String {
        let link = match &self.libdevice {
            Some(path) => format!(" l=\"{}\"", path.display()),
            None => String::new(),
        };
        format!(
            "builtin.module(convert-nvgpu-to-nvvm,gpu-kernel-outlining,convert-vector-to-scf,convert-scf-to-cf,\
             convert-nvvm-to-llvm,convert-func-to-llvm,expand-strided-metadata,\
             nvvm-attach-target{{O=3 chip={chip} features={features}{link}}},\
             lower-affine,convert-arith-to-llvm,convert-index-to-llvm{{index-bitwidth=64}},canonicalize,cse,\
             gpu.module(convert-gpu-to-nvvm{{index-bitwidth=64}},\
             canonicalize,cse,reconcile-unrealized-casts),\
             gpu-to-llvm,gpu-module-to-binary{{format=isa}},\
             convert-math-to-llvm,canonicalize,cse,reconcile-unrealized-casts)",
            chip = self.chip,
            features = self.features,
        )
    }

    /// Fails if the compiled module (or its PTX) still calls libdevice
    /// functions, which happens exactly when no libdevice was linked: such
    /// PTX would be refused when the driver loads it, far from the cause.
    pub fn check_no_libdevice_calls(&self, text: &str) -> Result<(), MlirError> {
        let missing = libdevice_calls(text);
        if missing.is_empty() {
            return Ok(());
        }
        let message = match &self.libdevice {
            None => format!(
                "the kernels call libdevice functions ({}), and no libdevice.10.bc was found: set {LIBDEVICE_ENV} \
                 to its path (it ships with the CUDA toolkit under nvvm/libdevice, and with pip's \
                 nvidia-cuda-nvcc-cu12 under nvidia/cuda_nvcc/nvvm/libdevice); searched {}",
                missing.join(", "),
                search_path().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
            Some(path) => format!(
                "the kernels still call libdevice functions ({}) after linking {}: is it CUDA's libdevice.10.bc?",
                missing.join(", "),
                path.display()
            ),
        };
        Err(MlirError::Mlir { stage: "PTX".into(), message })
    }
}

/// CUDA's libdevice: the file [`LIBDEVICE_ENV`] names (an error if it does
/// not exist, since the user asked for it), else the first
/// `nvvm/libdevice/libdevice.10.bc` under `$CUDA_HOME`, `$CUDA_PATH`,
/// `/usr/local/cuda` or `/opt/cuda`, or Debian's
/// `/usr/lib/nvidia-cuda-toolkit/libdevice`; `None` when there is none.
pub fn find_libdevice() -> Result<Option<PathBuf>, MlirError> {
    if let Some(path) = std::env::var_os(LIBDEVICE_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(MlirError::Run(format!(
                "{LIBDEVICE_ENV} is set to {}, which is not a file (it should name CUDA's libdevice.10.bc)",
                path.display()
            )));
        }
        return Ok(Some(path));
    }
    Ok(search_path().into_iter().find(|p| p.is_file()))
}

/// The install locations [`find_libdevice`] tries, in order.
fn search_path() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .filter(|p| !p.is_empty())
        .map(Into::into)
        .collect();
    roots.extend(["/usr/local/cuda", "/opt/cuda"].map(PathBuf::from));
    let mut paths: Vec<PathBuf> = roots.iter().map(|r| r.join("nvvm/libdevice/libdevice.10.bc")).collect();
    paths.push(PathBuf::from("/usr/lib/nvidia-cuda-toolkit/libdevice/libdevice.10.bc"));
    paths
}

/// MLIR's pass options split lists at commas and end at braces, whatever
/// the quoting, so a path holding them cannot be passed through `l=`.
fn check_option_safe(path: &Path) -> Result<(), MlirError> {
    let text = path.to_str().ok_or_else(|| {
        MlirError::Run(format!("libdevice's path {} is not UTF-8; copy the file to a plain path", path.display()))
    })?;
    if text.contains([',', '{', '}', '"']) {
        return Err(MlirError::Run(format!(
            "libdevice's path '{text}' holds one of , {{ }} \", which MLIR's pass options cannot carry; copy or \
             link the file to a plain path and set {LIBDEVICE_ENV} to it"
        )));
    }
    Ok(())
}

/// The libdevice functions (`__nv_*`) that `text` calls, each once, sorted.
pub fn libdevice_calls(text: &str) -> Vec<&str> {
    let set: BTreeSet<&str> =
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("__nv_")).collect();
    set.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libdevice_calls_are_listed_once() {
        assert_eq!(libdevice_calls("call __nv_expf(x); call __nv_expf(y); __nv_sqrtf"), ["__nv_expf", "__nv_sqrtf"]);
        assert!(libdevice_calls("ex2.approx.f32").is_empty());
    }

    #[test]
    fn unknown_chips_and_unsafe_paths_are_refused() {
        assert!(NvvmTarget::with_libdevice("sm_75", None).unwrap_err().to_string().contains("sm_75"));
        let err = NvvmTarget::with_libdevice("sm_90", Some("/a,b/libdevice.10.bc".into())).unwrap_err();
        assert!(err.to_string().contains("SHARC_LIBDEVICE"), "{err}");
    }

    #[test]
    fn the_pipeline_links_libdevice_only_when_found() {
        let with = NvvmTarget::with_libdevice("sm_80", Some("/cuda/libdevice.10.bc".into())).unwrap();
        assert!(
            with.pipeline().contains("nvvm-attach-target{O=3 chip=sm_80 features=+ptx70 l=\"/cuda/libdevice.10.bc\"}")
        );
        let without = NvvmTarget::with_libdevice("sm_90", None).unwrap();
        assert!(without.pipeline().contains("nvvm-attach-target{O=3 chip=sm_90 features=+ptx80}"));
    }

    #[test]
    fn a_missing_libdevice_is_named_with_what_to_do() {
        let target = NvvmTarget::with_libdevice("sm_90", None).unwrap();
        let err = target.check_no_libdevice_calls("call.uni __nv_erff").unwrap_err().to_string();
        assert!(err.contains("__nv_erff") && err.contains(LIBDEVICE_ENV), "{err}");
        assert!(target.check_no_libdevice_calls("fma.rn.f32").is_ok());
    }
}

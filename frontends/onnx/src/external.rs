//! External tensor data: files next to the model that hold raw tensor bytes.
//!
//! ONNX keeps large tensors out of the protobuf (which cannot exceed 2 GiB)
//! by pointing at a byte range of a side file (`location`, `offset`,
//! `length`). Each such file is memory-mapped once and shared by every
//! weight that lives in it, so importing a multi-gigabyte model costs no copy.
//!
//! The location is untrusted input: a model downloaded from the internet
//! must not be able to make sharc read `/etc/passwd` or `../../secrets`.
//! Only relative paths that stay inside the model's folder (after resolving
//! symlinks) are accepted.

use onnx_protobuf::TensorProto;
use sharc_ir::MappedFile;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// Where one tensor's bytes are: a range of a mapped file.
pub(crate) struct ExternalRange {
    pub file: Arc<MappedFile>,
    pub offset: usize,
    pub len: usize,
}

impl ExternalRange {
    /// The bytes of the range (checked to lie in the file when resolved).
    pub fn bytes(&self) -> &[u8] {
        &self.file.map[self.offset..self.offset + self.len]
    }
}

/// Resolves and maps external data files, each once.
pub(crate) struct ExternalData {
    /// The model's folder, canonicalized; `None` for models read from bytes
    /// without a folder, which then cannot use external data.
    base: Option<PathBuf>,
    base_error: Option<String>,
    files: HashMap<PathBuf, Arc<MappedFile>>,
}

impl ExternalData {
    /// A resolver for a model stored in `base_dir`.
    pub fn new(base_dir: Option<&Path>) -> ExternalData {
        let (base, base_error) = match base_dir {
            None => (None, None),
            Some(dir) => {
                let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
                match dir.canonicalize() {
                    Ok(p) => (Some(p), None),
                    Err(e) => (None, Some(format!("the model folder '{}' cannot be resolved: {e}", dir.display()))),
                }
            }
        };
        ExternalData { base, base_error, files: HashMap::new() }
    }

    /// True when the tensor's data lives in an external file.
    pub fn is_external(t: &TensorProto) -> bool {
        t.data_location.value() == onnx_protobuf::tensor_proto::DataLocation::EXTERNAL as i32
    }

    /// Finds the byte range of an external tensor, mapping its file on first use.
    pub fn locate(&mut self, t: &TensorProto) -> Result<ExternalRange, String> {
        let mut location = None;
        let mut offset = None;
        let mut length = None;
        for kv in &t.external_data {
            match kv.key.as_str() {
                "location" => location = Some(kv.value.as_str()),
                "offset" => offset = Some(parse_size("offset", &kv.value)?),
                "length" => length = Some(parse_size("length", &kv.value)?),
                // "checksum" and unknown keys carry nothing sharc needs.
                _ => {}
            }
        }
        let location = location.ok_or("uses external data but has no 'location' entry")?;
        let file = self.map(location)?;
        let size = file.map.len();
        let offset = offset.unwrap_or(0);
        if offset > size {
            return Err(format!("external data offset {offset} lies beyond the end of '{location}' ({size} bytes)"));
        }
        let len = length.unwrap_or(size - offset);
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(format!(
                "external data range {offset}..{} lies beyond the end of '{location}' ({size} bytes); the data file \
                 is truncated or does not belong to this model",
                offset.saturating_add(len)
            ));
        }
        Ok(ExternalRange { file, offset, len })
    }

    fn map(&mut self, location: &str) -> Result<Arc<MappedFile>, String> {
        let base = match (&self.base, &self.base_error) {
            (Some(b), _) => b.clone(),
            (None, Some(e)) => return Err(format!("uses external data file '{location}' but {e}")),
            (None, None) => {
                return Err(format!(
                    "uses external data file '{location}', but the model was given as bytes without a folder; \
                     import it from its file or pass the folder that holds its data"
                ));
            }
        };
        let rel = Path::new(location);
        if location.is_empty() {
            return Err("has an empty external data location".to_string());
        }
        if rel.is_absolute() || rel.components().any(|c| matches!(c, Component::RootDir | Component::Prefix(_))) {
            return Err(format!(
                "external data location '{location}' is an absolute path; ONNX requires a path relative to the model's \
                 folder, and sharc refuses absolute ones so that a model cannot read arbitrary files"
            ));
        }
        if rel.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(format!(
                "external data location '{location}' goes up with '..' and so escapes the model's folder; move the data \
                 next to the model"
            ));
        }
        let full = base.join(rel);
        let canon = full.canonicalize().map_err(|e| {
            format!("external data file '{location}' (looked for at '{}') cannot be opened: {e}", full.display())
        })?;
        if !canon.starts_with(&base) {
            return Err(format!(
                "external data location '{location}' resolves (through a symbolic link) to '{}', outside the model's \
                 folder; sharc refuses it so that a model cannot read arbitrary files",
                canon.display()
            ));
        }
        if let Some(f) = self.files.get(&canon) {
            return Ok(f.clone());
        }
        let meta = std::fs::metadata(&canon).map_err(|e| format!("external data file '{location}': {e}"))?;
        if !meta.is_file() {
            return Err(format!("external data location '{location}' is not a regular file"));
        }
        let f = std::fs::File::open(&canon).map_err(|e| format!("external data file '{location}': {e}"))?;
        // SAFETY: the mapping is read-only. As with every memory-mapped model
        // loader, the file must not be truncated while the graph uses it.
        let map = unsafe { memmap2::Mmap::map(&f) }
            .map_err(|e| format!("external data file '{location}' cannot be memory-mapped: {e}"))?;
        let mapped = Arc::new(MappedFile { path: canon.clone(), map });
        self.files.insert(canon, mapped.clone());
        Ok(mapped)
    }
}

fn parse_size(key: &str, v: &str) -> Result<usize, String> {
    v.trim().parse::<usize>().map_err(|_| format!("external data '{key}' is '{v}', not a non-negative integer"))
}

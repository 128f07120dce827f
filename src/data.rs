//! Reading and writing named tensors as safetensors files.
//!
//! `sharc run` reads model inputs from, and writes outputs to, safetensors
//! files whose tensor names are the graph's input and output names. The
//! reference data in `shared/models/*.data.safetensors` uses the same layout.

use crate::Error;
use safetensors::{Dtype, SafeTensors, View};
use sharc_ir::{DType, Tensor};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Named tensors in file order, plus the file's free-form metadata.
#[derive(Clone, Debug, Default)]
pub struct TensorFile {
    /// The tensors, sorted by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// The `__metadata__` entries.
    pub metadata: BTreeMap<String, String>,
}

impl TensorFile {
    /// The tensor with this name, or an error naming the file and the names it has.
    pub fn get(&self, name: &str, path: &Path) -> Result<&Tensor, Error> {
        self.tensors.get(name).ok_or_else(|| Error::Data {
            path: path.to_path_buf(),
            message: format!(
                "no tensor named '{name}' (the file has: {})",
                self.tensors.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })
    }
}

fn to_dtype(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::BOOL => DType::Bool,
        Dtype::U8 => DType::U8,
        Dtype::I8 => DType::I8,
        Dtype::I16 => DType::I16,
        Dtype::U16 => DType::U16,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I32 => DType::I32,
        Dtype::U32 => DType::U32,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::I64 => DType::I64,
        Dtype::U64 => DType::U64,
        Dtype::F8_E5M2 => DType::F8E5M2,
        Dtype::F8_E4M3 => DType::F8E4M3FN,
        Dtype::F8_E4M3FNUZ => DType::F8E4M3FNUZ,
        Dtype::F8_E5M2FNUZ => DType::F8E5M2FNUZ,
        Dtype::F8_E8M0 => DType::F8E8M0,
        _ => return None,
    })
}

fn from_dtype(d: DType) -> Option<Dtype> {
    Some(match d {
        DType::Bool => Dtype::BOOL,
        DType::U8 => Dtype::U8,
        DType::I8 => Dtype::I8,
        DType::I16 => Dtype::I16,
        DType::U16 => Dtype::U16,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I32 => Dtype::I32,
        DType::U32 => Dtype::U32,
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::I64 => Dtype::I64,
        DType::U64 => Dtype::U64,
        DType::F8E5M2 => Dtype::F8_E5M2,
        DType::F8E4M3FN => Dtype::F8_E4M3,
        DType::F8E4M3FNUZ => Dtype::F8_E4M3FNUZ,
        DType::F8E5M2FNUZ => Dtype::F8_E5M2FNUZ,
        DType::F8E8M0 => Dtype::F8_E8M0,
        _ => return None,
    })
}

/// Reads a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<TensorFile, Error> {
    let err = |message: String| Error::Data { path: path.to_path_buf(), message };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
    let mut out = TensorFile::default();
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| err(format!("bad header: {e}")))?;
    if let Some(m) = meta.metadata() {
        out.metadata = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    for (name, view) in st.tensors() {
        let dtype = to_dtype(view.dtype())
            .ok_or_else(|| err(format!("tensor '{name}' has unsupported dtype {:?}", view.dtype())))?;
        let t = Tensor::from_le_bytes(dtype, view.shape(), view.data())
            .map_err(|m| err(format!("tensor '{name}': {m}")))?;
        out.tensors.insert(name, t);
    }
    Ok(out)
}

struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes named tensors to a safetensors file, atomically (a temporary file
/// in the same folder is renamed into place, so a failure leaves no partial
/// file).
pub fn write_safetensors(path: &Path, file: &TensorFile) -> Result<(), Error> {
    let err = |message: String| Error::Data { path: path.to_path_buf(), message };
    let mut views = Vec::new();
    for (name, t) in &file.tensors {
        let dtype = from_dtype(t.dtype())
            .ok_or_else(|| err(format!("tensor '{name}': {} cannot be stored in safetensors", t.dtype())))?;
        let data = t.to_le_bytes().ok_or_else(|| err(format!("tensor '{name}' has no byte layout")))?;
        views.push((name.clone(), Bytes { dtype, shape: t.shape().to_vec(), data }));
    }
    let meta: Option<HashMap<String, String>> =
        if file.metadata.is_empty() { None } else { Some(file.metadata.clone().into_iter().collect()) };
    let bytes = safetensors::serialize(views.iter().map(|(n, b)| (n.as_str(), b)), meta)
        .map_err(|e| err(format!("cannot serialise: {e}")))?;
    crate::io::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let mut f = TensorFile::default();
        f.tensors.insert("a".into(), Tensor::from_vec(&[2, 2], vec![1.0f32, 2.0, 3.0, 4.0]));
        f.tensors.insert("b".into(), Tensor::from_vec(&[3], vec![1i64, -2, 3]));
        f.metadata.insert("k".into(), "v".into());
        write_safetensors(&p, &f).unwrap();
        let g = read_safetensors(&p).unwrap();
        assert_eq!(g.tensors, f.tensors);
        assert_eq!(g.metadata, f.metadata);
    }

    #[test]
    fn garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.safetensors");
        std::fs::write(&p, b"\x10\0\0\0\0\0\0\0{not json").unwrap();
        let e = read_safetensors(&p).unwrap_err().to_string();
        assert!(e.contains("bad.safetensors"), "{e}");
    }
}

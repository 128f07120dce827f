//! Stored parameters, shareable between any number of consumers.
//!
//! A model's trained parameters live in a [`WeightStore`], not in the graph's
//! nodes. Nodes refer to a weight through [`crate::Op::Weight`]; when several
//! nodes refer to one [`WeightId`], that parameter is stored once and shared.
//! This is the representation every parameter-sharing pass produces, and the
//! one ONNX export turns into a single initializer.
//!
//! Weight data is either owned or a range of a memory-mapped file, so
//! importing a large model costs no copy until a backend reads it.

use crate::{DType, Tensor};
use memmap2::Mmap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// Identifies a weight in a [`WeightStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WeightId(pub u32);

impl fmt::Display for WeightId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}", self.0)
    }
}

/// A memory-mapped file that weights point into.
#[derive(Debug)]
pub struct MappedFile {
    /// Where the file was mapped from (for messages).
    pub path: PathBuf,
    /// The mapping.
    pub map: Mmap,
}

/// Where a weight's bytes are.
#[derive(Clone)]
pub enum WeightData {
    /// Decoded and held in memory.
    Owned(Tensor),
    /// Dense little-endian bytes at `offset..offset+len` of a mapped file.
    Mapped { file: Arc<MappedFile>, offset: usize, len: usize },
}

impl fmt::Debug for WeightData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightData::Owned(t) => write!(f, "Owned({t:?})"),
            WeightData::Mapped { file, offset, len } => {
                write!(f, "Mapped({}@{offset}+{len})", file.path.display())
            }
        }
    }
}

/// One stored parameter.
#[derive(Clone, Debug)]
pub struct Weight {
    /// The name (an ONNX initializer name on import). Unique in its store.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// The bytes.
    pub data: WeightData,
    decoded: OnceLock<Tensor>,
}

impl Weight {
    /// A weight holding a tensor.
    pub fn from_tensor(name: impl Into<String>, t: Tensor) -> Weight {
        Weight {
            name: name.into(),
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
            data: WeightData::Owned(t),
            decoded: OnceLock::new(),
        }
    }

    /// A weight whose dense little-endian bytes lie in a mapped file. Fails
    /// when the range is outside the file or has the wrong length.
    pub fn mapped(
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<usize>,
        file: Arc<MappedFile>,
        offset: usize,
        len: usize,
    ) -> Result<Weight, String> {
        let name = name.into();
        let n = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("weight '{name}': shape {shape:?} is too large"))?;
        let want =
            dtype.storage_bytes(n).ok_or_else(|| format!("weight '{name}': {dtype}{shape:?} cannot be mapped"))?;
        if want != len {
            return Err(format!("weight '{name}': {dtype}{shape:?} needs {want} bytes, the file gives {len}"));
        }
        if offset.checked_add(len).is_none_or(|end| end > file.map.len()) {
            return Err(format!(
                "weight '{name}': bytes {offset}..{} lie outside {} ({} bytes)",
                offset.saturating_add(len),
                file.path.display(),
                file.map.len()
            ));
        }
        Ok(Weight { name, dtype, shape, data: WeightData::Mapped { file, offset, len }, decoded: OnceLock::new() })
    }

    /// Number of elements.
    pub fn num_elements(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// Bytes the weight occupies when stored densely.
    pub fn num_bytes(&self) -> u64 {
        match &self.data {
            WeightData::Mapped { len, .. } => *len as u64,
            WeightData::Owned(t) => match t.data() {
                crate::TensorData::String(a) => a.iter().map(|s| s.len() as u64).sum(),
                _ => self.dtype.storage_bytes(t.len()).unwrap_or(0) as u64,
            },
        }
    }

    /// The raw bytes when mapped (zero-copy access for backends).
    pub fn mapped_bytes(&self) -> Option<&[u8]> {
        match &self.data {
            WeightData::Mapped { file, offset, len } => Some(&file.map[*offset..*offset + *len]),
            WeightData::Owned(_) => None,
        }
    }

    /// The weight as a tensor, decoded once and then shared.
    pub fn tensor(&self) -> &Tensor {
        self.decoded.get_or_init(|| match &self.data {
            WeightData::Owned(t) => t.clone(),
            WeightData::Mapped { file, offset, len } => {
                Tensor::from_le_bytes(self.dtype, &self.shape, &file.map[*offset..*offset + *len])
                    .expect("the byte range was checked when the weight was created")
            }
        })
    }

    /// Replaces the data with a tensor of any shape and type.
    pub fn set_tensor(&mut self, t: Tensor) {
        self.dtype = t.dtype();
        self.shape = t.shape().to_vec();
        self.data = WeightData::Owned(t);
        self.decoded = OnceLock::new();
    }

    /// A short content hash, as the text format prints it.
    pub fn content_hash(&self) -> String {
        self.tensor().content_hash()
    }
}

/// The parameters of a graph.
#[derive(Clone, Debug, Default)]
pub struct WeightStore {
    slots: Vec<Option<Weight>>,
}

impl WeightStore {
    /// An empty store.
    pub fn new() -> WeightStore {
        WeightStore::default()
    }

    /// Adds a weight. Fails if the name is taken.
    pub fn add(&mut self, w: Weight) -> Result<WeightId, String> {
        if self.find(&w.name).is_some() {
            return Err(format!("a weight named '{}' already exists", w.name));
        }
        self.slots.push(Some(w));
        Ok(WeightId(self.slots.len() as u32 - 1))
    }

    /// Adds a weight, renaming it with a numeric suffix if the name is taken.
    pub fn add_unique(&mut self, mut w: Weight) -> WeightId {
        if self.find(&w.name).is_some() {
            let base = w.name.clone();
            let mut i = 1;
            while self.find(&format!("{base}.{i}")).is_some() {
                i += 1;
            }
            w.name = format!("{base}.{i}");
        }
        self.add(w).expect("the name was made unique")
    }

    /// The weight with this id, if present.
    pub fn get(&self, id: WeightId) -> Option<&Weight> {
        self.slots.get(id.0 as usize).and_then(|s| s.as_ref())
    }

    /// Mutable access to a weight.
    pub fn get_mut(&mut self, id: WeightId) -> Option<&mut Weight> {
        self.slots.get_mut(id.0 as usize).and_then(|s| s.as_mut())
    }

    /// Removes a weight (nodes must no longer refer to it).
    pub fn remove(&mut self, id: WeightId) -> Option<Weight> {
        self.slots.get_mut(id.0 as usize).and_then(|s| s.take())
    }

    /// Finds a weight by name.
    pub fn find(&self, name: &str) -> Option<WeightId> {
        self.iter().find(|(_, w)| w.name == name).map(|(id, _)| id)
    }

    /// All weights with their ids, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (WeightId, &Weight)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|w| (WeightId(i as u32), w)))
    }

    /// Number of weights.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// True when the store holds no weight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

//! Loading and saving models by file extension.
//!
//! - `.onnx`: ONNX protobuf (import and export through [`sharc_onnx`]).
//! - `.sharc`: sharc's IR text. The weights go in a safetensors file beside
//!   it with the same stem (`model.sharc` + `model.safetensors`), because the
//!   text format prints weights as a summary, never as data.

use crate::Error;
use crate::data::{TensorFile, read_safetensors, write_safetensors};
use sharc_ir::{Graph, Weight, WeightStore};
use std::path::{Path, PathBuf};

/// The kinds of model files sharc reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// ONNX protobuf.
    Onnx,
    /// sharc IR text with a safetensors weight file beside it.
    Text,
}

impl Format {
    /// The format of a path, from its extension.
    pub fn of(path: &Path) -> Result<Format, Error> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("onnx") => Ok(Format::Onnx),
            Some("sharc") => Ok(Format::Text),
            _ => Err(Error::Usage(format!(
                "{}: unknown model format; use a .onnx (ONNX) or .sharc (sharc IR text) file",
                path.display()
            ))),
        }
    }
}

/// The safetensors file that holds the weights of a `.sharc` file.
pub fn weights_path(text_path: &Path) -> PathBuf {
    text_path.with_extension("safetensors")
}

/// Loads a model from a `.onnx` or `.sharc` file.
pub fn load(path: &Path) -> Result<Graph, Error> {
    match Format::of(path)? {
        Format::Onnx => {
            let g = sharc_onnx::import_file(path)?;
            if let Some(w) = sharc_onnx::newer_opset_warning(&g) {
                eprintln!("warning: {}: {w}", path.display());
            }
            Ok(g)
        }
        Format::Text => {
            let src = std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
            let wpath = weights_path(path);
            let parsed = if wpath.exists() {
                let file = read_safetensors(&wpath)?;
                let mut store = WeightStore::new();
                for (name, t) in file.tensors {
                    store
                        .add(Weight::from_tensor(name, t))
                        .map_err(|m| Error::Data { path: wpath.clone(), message: m })?;
                }
                sharc_ir::text::parse_with_weights(&src, &store)
            } else {
                // Weights the text only declares get synthetic data. That is
                // right for hand-written test graphs but a silently wrong
                // result for a real model whose weight file went missing, so
                // say so when it happens (an empty store accepts exactly the
                // texts that need no synthetic data).
                sharc_ir::text::parse_with_weights(&src, &WeightStore::new()).or_else(|_| {
                    let g = sharc_ir::text::parse(&src)?;
                    eprintln!(
                        "warning: {}: no weight file {} beside it; its weights get synthetic (made-up) data, \
                         so results are not the trained model's",
                        path.display(),
                        wpath.display()
                    );
                    Ok(g)
                })
            };
            // The parse error prints as a compiler-style report whose first
            // line repeats "error:"; the CLI already says that, so lead with
            // the location and message and keep only the source snippet.
            parsed.map_err(|e| {
                let report = e.to_string();
                let snippet = report.split_once('\n').map_or("", |(_, rest)| rest);
                Error::Data { path: path.to_path_buf(), message: format!("{}: {}\n{snippet}", e.location(), e.message) }
            })
        }
    }
}

/// Options for [`save`].
#[derive(Clone, Debug, Default)]
pub struct SaveOptions {
    /// ONNX only: store weights in a side file next to the model.
    pub external_data: bool,
}

/// Saves a model to a `.onnx` or `.sharc` file, atomically.
pub fn save(g: &Graph, path: &Path, opts: &SaveOptions) -> Result<(), Error> {
    let format = Format::of(path)?;
    // Before anything is written: a `.sharc` save writes two files, and a
    // missing folder found between them would leave the first one behind.
    crate::io::check_output_path(path)?;
    match format {
        Format::Onnx => {
            let o = sharc_onnx::ExportOptions { external_data: opts.external_data, ..Default::default() };
            Ok(sharc_onnx::export_file(g, path, &o)?)
        }
        Format::Text => {
            let mut file = TensorFile::default();
            for (_, w) in g.weights.iter() {
                file.tensors.insert(w.name.clone(), w.tensor().clone());
            }
            // Weights first: a text file without its weights would load with
            // synthetic data, which is worse than no file at all.
            write_safetensors(&weights_path(path), &file)?;
            crate::io::write_atomic(path, sharc_ir::text::print(g).as_bytes())
        }
    }
}

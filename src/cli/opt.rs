//! `sharc opt`: read a model, write it back in the format the output path names.

use sharc::Error;
use sharc::model::SaveOptions;
use std::path::PathBuf;

/// Arguments of `sharc opt`.
#[derive(clap::Args)]
pub struct Args {
    /// The input model (.onnx or .sharc).
    model: PathBuf,
    /// The output model (.onnx or .sharc).
    #[arg(short, long)]
    output: PathBuf,
    /// For .onnx output: write the weights to a side file.
    #[arg(long)]
    external_data: bool,
}

pub fn run(a: Args) -> Result<(), Error> {
    let g = sharc::model::load(&a.model)?;
    sharc_ir_verify(&g)?;
    sharc::model::save(&g, &a.output, &SaveOptions { external_data: a.external_data })?;
    eprintln!("wrote {} ({})", a.output.display(), g.stats());
    Ok(())
}

fn sharc_ir_verify(g: &sharc::ir::Graph) -> Result<(), Error> {
    sharc::ir::verify(g).map_err(|e| Error::Usage(format!("the model is not valid: {e}")))
}

//! Command-line interface: one file per subcommand.

mod inspect;
mod mlir;
mod opt;
mod run;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// sharc: a compiler for ONNX models that makes trained models smaller and faster.
#[derive(Parser)]
#[command(name = "sharc", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's inputs, outputs, ops and parameters (total and unique).
    Inspect(inspect::Args),
    /// Run a model on inputs from a safetensors file.
    Run(run::Args),
    /// Convert (and later optimise) a model: .onnx or .sharc in, .onnx or .sharc out.
    Opt(opt::Args),
    /// Compile a model to native code (MLIR backend: `--emit mlir` prints each stage).
    Compile(mlir::Args),
}

/// Parses arguments, runs the command, and turns errors into a message on
/// stderr and a non-zero exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Run(a) => run::run(a),
        Command::Opt(a) => opt::run(a),
        Command::Compile(a) => mlir::compile(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

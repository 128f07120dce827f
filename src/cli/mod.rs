//! Command-line interface: one file per subcommand.

mod backend;
mod bench;
mod compile;
mod compress;
mod inspect;
mod mlir;
mod opt;
mod passes;
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
    /// Run a pass pipeline on a model: .onnx or .sharc in, .onnx or .sharc out.
    Opt(opt::Args),
    /// Compress a model with a parameter-sharing method and report what it saved and cost.
    Compress(Box<compress::Args>),
    /// List the passes, their options and defaults.
    Passes(passes::Args),
    /// Measure latency, throughput and memory on a backend, optionally against a peer.
    Bench(bench::Args),
    /// Compile a model to an object file with a C entry point (and its header).
    Compile(compile::Args),
}

/// Parses arguments, runs the command, and turns errors into a message on
/// stderr and a non-zero exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Run(a) => run::run(a),
        Command::Opt(a) => opt::run(a),
        Command::Compress(a) => compress::run(*a),
        Command::Passes(a) => passes::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Compile(a) => compile::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

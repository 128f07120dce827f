//! `sharc opt -p` and `sharc passes` as a user runs them: hand-written IR
//! text in, optimised IR text out, instrumentation on stderr, and readable
//! errors with a non-zero exit code.

use std::path::Path;
use std::process::{Command, Output};

const GRAPH: &str = "graph @g(%x: f32[batch, 4]) -> (%y) {
  %a = Relu(%x)
  %b = Relu(%x)
  %i = Identity(%b)
  %dead = Neg(%x)
  %y = Add(%a, %i)
}
";

fn sharc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sharc")).args(args).output().expect("the sharc binary runs")
}

fn write_graph(dir: &Path) -> String {
    let input = dir.join("in.sharc");
    std::fs::write(&input, GRAPH).unwrap();
    input.to_str().unwrap().to_string()
}

#[test]
fn opt_runs_a_pipeline_on_ir_text_with_instrumentation() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_graph(dir.path());
    let output = dir.path().join("out.sharc");
    let out = sharc(&[
        "opt",
        &input,
        "-o",
        output.to_str().unwrap(),
        "-p",
        "canonicalize,cse,dce",
        "--time-passes",
        "--pass-statistics",
        "--print-ir-diff",
        "--print-ir-after=dce",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let written = std::fs::read_to_string(&output).unwrap();
    assert_eq!(written, "graph @g(%x: f32[batch, 4]) -> (%y) {\n  %a = Relu(%x)\n  %y = Add(%a, %a)\n}\n");
    assert!(stderr.contains("pass execution timing report"), "{stderr}");
    assert!(stderr.contains("1. canonicalize") && stderr.contains("3. dce"), "{stderr}");
    assert!(stderr.contains("-  %dead = Neg(%x)"), "{stderr}");
    assert!(stderr.contains("// -----// IR after pass 3 `dce` //----- //"), "{stderr}");
    assert!(stderr.contains("merged = 1"), "{stderr}");
}

#[test]
fn stop_after_runs_only_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_graph(dir.path());
    let output = dir.path().join("out.sharc");
    let out = sharc(&["opt", &input, "-o", output.to_str().unwrap(), "-p", "cse,dce", "--stop-after=1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("not run: dce"), "{stderr}");
    // cse ran (one Relu left), dce did not (the dead Neg is still there).
    let written = std::fs::read_to_string(&output).unwrap();
    assert!(written.contains("%dead = Neg(%x)") && !written.contains("%b = Relu"), "{written}");
}

#[test]
fn a_bad_pipeline_is_an_error_with_a_caret_and_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_graph(dir.path());
    let output = dir.path().join("out.sharc");
    let out = sharc(&["opt", &input, "-o", output.to_str().unwrap(), "-p", "cse,canonicalise"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unknown pass `canonicalise`"), "{stderr}");
    assert!(stderr.contains("  | cse,canonicalise\n  |     ^^^^^^^^^^^^"), "{stderr}");
    assert!(stderr.contains("did you mean `canonicalize`?"), "{stderr}");
    assert!(!output.exists(), "nothing is written on error");

    let out = sharc(&["opt", &input, "-o", output.to_str().unwrap(), "-p", "cse,,dce", "--time-passes"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("expected a pass name, found `,`"), "{stderr}");
    assert!(stderr.contains("  | cse,,dce\n  |     ^\n"), "{stderr}");
}

#[test]
fn passes_lists_every_pass_with_its_options() {
    let out = sharc(&["passes"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in sharc::passes::STANDARD_PASSES {
        assert!(stdout.contains(name), "{name} missing from:\n{stdout}");
    }
    assert!(stdout.contains("small-result-bytes: uint = 64"), "{stdout}");
    assert!(stdout.contains("max-iterations: uint = 16"), "{stdout}");
}

#[test]
fn opt_passes_calibration_data_to_the_passes_that_measure_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("models/gpt-tiny.onnx");
    let sample = root.join("models/gpt-tiny.sample.safetensors");
    let output = dir.path().join("folded.onnx");
    let args = ["opt", model.to_str().unwrap(), "-o", output.to_str().unwrap(), "-p", "fold-blocks{remove=1,group=1}"];
    let out = sharc(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("give --calib"), "{stderr}");
    assert!(!output.exists());

    let mut with_calib = args.to_vec();
    with_calib.extend(["--calib", sample.to_str().unwrap()]);
    let out = sharc(&with_calib);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // One of six equal blocks removed: 1,271,808 parameters less one block's 198,272.
    assert!(stderr.contains("unique parameters 1271808 -> 1073536"), "{stderr}");
    assert!(output.exists());
}

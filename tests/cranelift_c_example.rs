//! The C example in `examples/c`: `sharc compile --backend cranelift` writes
//! an object file and its header, a C compiler links `main.c` against them,
//! the program runs, and its output must match the reference interpreter's
//! (`examples/c/check.py`, max abs difference ≤ 1e-5).
//!
//! It needs python3 with onnx, numpy and safetensors (to write the model and
//! compare) and a C compiler (`$CC` or `cc`). Without python's onnx the test
//! skips, unless `SHARC_REQUIRE_PYTHON=1` (set by `scripts/test.sh`) makes
//! that a failure.

use std::path::PathBuf;
use std::process::Command;

fn have_python_onnx() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import onnx, numpy, safetensors"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok && std::env::var("SHARC_REQUIRE_PYTHON").as_deref() == Ok("1") {
        panic!("SHARC_REQUIRE_PYTHON=1 but `python3 -c \"import onnx, numpy, safetensors\"` fails");
    }
    ok
}

#[test]
fn c_program_linked_against_compiled_model_matches_interpreter() {
    if !have_python_onnx() {
        eprintln!("skipping: python3 with onnx, numpy and safetensors is not available");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let build = std::env::temp_dir().join(format!("sharc-c-example-{}", std::process::id()));
    let out = Command::new("bash")
        .arg(root.join("examples/c/run.sh"))
        .env("SHARC_BIN", env!("CARGO_BIN_EXE_sharc"))
        .env("BUILD_DIR", &build)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    let _ = std::fs::remove_dir_all(&build);
    assert!(out.status.success(), "examples/c/run.sh failed:\n{stdout}\n{stderr}");
    // The program printed its first outputs, and the check compared all of them.
    assert!(stdout.contains("probs[0][0..4]"), "the C program did not run:\n{stdout}");
    assert!(stdout.contains("C program vs interpreter: max abs difference"), "no comparison was made:\n{stdout}");
}

//! Bad input through the `sharc` binary, as a user meets it: every case must
//! exit non-zero without a panic, name the file (and node/op where there is
//! one), say what to do, and leave no output file behind.

use sharc::data::{TensorFile, write_safetensors};
use sharc::ir::Tensor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ADD: &str = "graph @g(%x: f32[2, 3], %y: f32[2, 3]) -> (%sum) {
  %sum = Add(%x, %y)
}
";

const SYM: &str = "graph @g(%x: f32[batch, 3], %y: f32[batch, 3]) -> (%sum) {
  %sum = Add(%x, %y)
}
";

fn sharc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sharc"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("the sharc binary runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts a clean failure: exit code 1, no panic, and every `needle` in
/// the message. Returns the message.
fn fails(out: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "expected exit code 1, got {:?}; stderr:\n{err}", out.status);
    assert!(!err.contains("panicked"), "panic:\n{err}");
    assert!(err.lines().any(|l| l.starts_with("error: ")), "no `error: ` line:\n{err}");
    for n in needles {
        assert!(err.contains(n), "message lacks {n:?}:\n{err}");
    }
    err
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn tensors(dir: &Path, name: &str, items: &[(&str, Tensor)]) -> PathBuf {
    let p = dir.join(name);
    let mut f = TensorFile::default();
    for (n, t) in items {
        f.tensors.insert(n.to_string(), t.clone());
    }
    write_safetensors(&p, &f).unwrap();
    p
}

fn f32s(shape: &[usize]) -> Tensor {
    Tensor::from_vec(shape, vec![1.0f32; shape.iter().product()])
}

/// A valid ONNX file of [`ADD`], made by the binary itself.
fn onnx_model(dir: &Path) -> PathBuf {
    let text = write(dir, "add.sharc", ADD);
    let onnx = dir.join("add.onnx");
    let out = sharc(&["opt", s(&text), "-o", s(&onnx)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    onnx
}

#[test]
fn corrupt_onnx_files_are_named_and_explained() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(onnx_model(dir.path())).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.onnx", vec![]),
        ("garbage.onnx", (0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()),
        ("truncated.onnx", good[..good.len() * 2 / 3].to_vec()),
    ];
    for (name, bytes) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        for cmd in ["inspect", "run"] {
            let out = sharc(&[cmd, s(&p)]);
            let err = fails(&out, &[name]);
            // Either an unreadable file, or (for a cut that still parses) a
            // structural problem; both must say what to do or what is wrong.
            assert!(err.contains("re-export") || err.contains("graph"), "{cmd} {name}: {err}");
        }
    }
}

#[test]
fn text_syntax_errors_show_the_location_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "syn.sharc", "graph @g(%x: f32[3]) -> (%y) {\n  %y = Relu(%x : f32[3]\n}\n");
    let err = fails(&sharc(&["inspect", s(&p)]), &["syn.sharc: line 2, column", "expected", "^"]);
    assert_eq!(err.matches("error").count(), 1, "one `error:` header, not two:\n{err}");

    let p = write(dir.path(), "dangling.sharc", "graph @g(%x: f32[3]) -> (%y) {\n  %y = Add(%x, %z)\n}\n");
    fails(&sharc(&["run", s(&p)]), &["dangling.sharc", "%z"]);

    let p = write(dir.path(), "type.sharc", "graph @g(%x: q99[3]) -> (%x) {\n}\n");
    fails(&sharc(&["inspect", s(&p)]), &["type.sharc", "q99"]);
}

#[test]
fn unsupported_ops_say_the_backend_cannot_run_them() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "unk.sharc", "graph @g(%x: f32[3]) -> (%y) {\n  %y = Frobnicate(%x)\n}\n");
    let out_file = dir.path().join("out.safetensors");
    fails(&sharc(&["run", s(&p), "-o", s(&out_file)]), &["unk.sharc", "'y'", "Frobnicate", "another ONNX runtime"]);
    assert!(!out_file.exists(), "a failed run must not write its output");
}

#[test]
fn wrong_inputs_are_rejected_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let model = onnx_model(dir.path());
    let out_file = dir.path().join("out.safetensors");
    type Case<'a> = (&'a str, Vec<(&'a str, Tensor)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        ("name.safetensors", vec![("x", f32s(&[2, 3])), ("z", f32s(&[2, 3]))], vec!["no tensor named 'y'"]),
        ("missing.safetensors", vec![("x", f32s(&[2, 3]))], vec!["no tensor named 'y'"]),
        (
            "dtype.safetensors",
            vec![("x", f32s(&[2, 3])), ("y", Tensor::from_vec(&[2, 3], vec![1i64; 6]))],
            vec!["input 'y' must be f32"],
        ),
        // Both of these would broadcast against x and give a plausible,
        // wrong result if the declared shape were not checked.
        ("rank.safetensors", vec![("x", f32s(&[2, 3])), ("y", f32s(&[3]))], vec!["input 'y' has rank 1", "f32[2, 3]"]),
        ("dim.safetensors", vec![("x", f32s(&[2, 3])), ("y", f32s(&[1, 3]))], vec!["input 'y' has 1 in dim 0"]),
    ];
    for (name, items, needles) in cases {
        let inputs = tensors(dir.path(), name, &items);
        let mut all = needles.clone();
        all.push(name);
        fails(&sharc(&["run", s(&model), "--inputs", s(&inputs), "-o", s(&out_file)]), &all);
        assert!(!out_file.exists(), "{name}: a failed run must not write its output");
    }

    let sym = write(dir.path(), "sym.sharc", SYM);
    let inputs = tensors(dir.path(), "sym.safetensors", &[("x", f32s(&[2, 3])), ("y", f32s(&[1, 3]))]);
    fails(&sharc(&["run", s(&sym), "--inputs", s(&inputs)]), &["batch=1", "batch=2", "must agree"]);
    // The same symbolic dim given consistently runs.
    let inputs = tensors(dir.path(), "sym_ok.safetensors", &[("x", f32s(&[4, 3])), ("y", f32s(&[4, 3]))]);
    let out = sharc(&["run", s(&sym), "--inputs", s(&inputs)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn bad_safetensors_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = onnx_model(dir.path());
    let good = tensors(dir.path(), "good.safetensors", &[("x", f32s(&[2, 3])), ("y", f32s(&[2, 3]))]);
    let bytes = std::fs::read(&good).unwrap();
    for (name, data) in [
        ("truncated.safetensors", bytes[..bytes.len() - 5].to_vec()),
        ("text.safetensors", b"hello".to_vec()),
        ("empty.safetensors", vec![]),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        fails(&sharc(&["run", s(&model), "--inputs", s(&p)]), &[name, "safetensors"]);
        fails(&sharc(&["run", s(&model), "--inputs", s(&good), "--expect", s(&p)]), &[name]);
    }
}

#[test]
fn symbolic_dims_need_sane_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let sym = write(dir.path(), "sym.sharc", SYM);
    fails(&sharc(&["run", s(&sym)]), &["'x'", "batch", "--shape batch=N"]);
    fails(&sharc(&["run", s(&sym), "--shape", "batch=x"]), &["--shape", "'x' is not a size"]);
    fails(&sharc(&["run", s(&sym), "--shape", "batch"]), &["--shape", "sym=value"]);
    // Would overflow the allocation (a panic inside ndarray before).
    fails(&sharc(&["run", s(&sym), "--shape", "batch=9223372036854775807"]), &["'x'", "too large"]);
}

#[test]
fn outputs_into_a_missing_folder_fail_first_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = onnx_model(dir.path());
    let missing = dir.path().join("no-such-folder");
    let out = sharc(&["run", s(&model), "-o", s(&missing.join("out.safetensors"))]);
    let err = fails(&out, &["no-such-folder", "does not exist", "create it"]);
    // Checked before running: no output summary was printed.
    assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "ran before failing: {err}");
    for ext in ["onnx", "sharc"] {
        fails(&sharc(&["opt", s(&model), "-o", s(&missing.join(format!("m.{ext}")))]), &["does not exist"]);
    }
    assert!(!missing.exists());
    // A folder given as the output file.
    fails(&sharc(&["run", s(&model), "-o", s(dir.path())]), &["is a folder"]);
    // No temporary files are left in the folder after the failures above.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
}

#[test]
fn bad_pipelines_and_formats_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = onnx_model(dir.path());
    let out_file = dir.path().join("o.onnx");
    fails(&sharc(&["opt", s(&model), "-p", "nosuch", "-o", s(&out_file)]), &["unknown pass `nosuch`", "sharc passes"]);
    fails(&sharc(&["opt", s(&model), "-p", "dce{x=1}", "-o", s(&out_file)]), &["no option `x`"]);
    assert!(!out_file.exists());
    fails(&sharc(&["opt", s(&model), "-o", s(&dir.path().join("o.txt"))]), &["o.txt", "use a .onnx"]);
    fails(&sharc(&["inspect", s(&dir.path().join("absent.onnx"))]), &["absent.onnx"]);
}

#[test]
fn expect_counts_nan_as_a_difference() {
    let dir = tempfile::tempdir().unwrap();
    // Log(-1) is NaN; a finite reference must not pass.
    let p = write(dir.path(), "log.sharc", "graph @g(%x: f32[2]) -> (%y) {\n  %y = Log(%x)\n}\n");
    let inputs = tensors(dir.path(), "in.safetensors", &[("x", Tensor::from_vec(&[2], vec![1.0f32, -1.0]))]);
    let want = tensors(dir.path(), "want.safetensors", &[("y", Tensor::from_vec(&[2], vec![0.0f32, 0.0]))]);
    fails(&sharc(&["run", s(&p), "--inputs", s(&inputs), "--expect", s(&want)]), &["differ", "inf"]);
    // NaN where the reference also has NaN agrees.
    let want = tensors(dir.path(), "nan.safetensors", &[("y", Tensor::from_vec(&[2], vec![0.0f32, f32::NAN]))]);
    let out = sharc(&["run", s(&p), "--inputs", s(&inputs), "--expect", s(&want)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_missing_weight_file_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let text = "graph @g(%x: f32[2]) -> (%y) {\n  %w = weight @w : f32[2]\n  %y = Add(%x, %w)\n}\n";
    let p = write(dir.path(), "w.sharc", text);
    let out = sharc(&["run", s(&p)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: ") && err.contains("w.safetensors") && err.contains("synthetic"), "{err}");
    // Inline data needs no weight file and gets no warning.
    let text = "graph @g(%x: f32[2]) -> (%y) {\n  %w = weight @w : f32[2] = [1.0, 2.0]\n  %y = Add(%x, %w)\n}\n";
    let p = write(dir.path(), "inline.sharc", text);
    let out = sharc(&["run", s(&p)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
}

#[test]
fn input_tensors_the_model_does_not_take_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = write(dir.path(), "add.sharc", ADD);
    let file = tensors(
        dir.path(),
        "in.safetensors",
        &[("x", f32s(&[2, 3])), ("y", f32s(&[2, 3])), ("sum", f32s(&[2, 3])), ("z", f32s(&[2, 3]))],
    );
    let out = sharc(&["run", s(&model), "--inputs", s(&file)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // `sum` is an output (expected values may share the file); `z` is unused.
    assert!(stderr.contains("not used: z\n"), "{stderr}");
}

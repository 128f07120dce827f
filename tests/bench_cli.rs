//! `sharc bench` as a user runs it on the model bundled in the repo: timings
//! next to a peer, alternating rounds, the JSON report, and bad options.
//! Only the shape of the report is checked: timings are never judged here.

use std::path::Path;
use std::process::{Command, Output};

fn sharc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sharc")).args(args).output().expect("the sharc binary runs")
}

fn model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/gpt-tiny.onnx").to_str().unwrap().to_string()
}

#[test]
fn alternating_rounds_report_one_ratio_per_round_and_their_median() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = sharc(&[
        "bench",
        &model(),
        "--backend",
        "cranelift",
        "--shape",
        "batch=1,seq=8",
        "--peer",
        "interp",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--rounds",
        "3",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("round 2: sharc") && stdout.contains("round 3: sharc"), "{stdout}");
    assert!(stdout.contains("ratio sharc/interp over 3 alternating rounds: median"), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rounds = report["rounds"].as_array().expect("rounds in the report");
    assert_eq!(rounds.len(), 3);
    for r in rounds {
        assert!(r["sharc_ms"].as_f64().is_some_and(|v| v > 0.0) && r["interp"].as_f64().is_some_and(|v| v > 0.0));
    }
    let ratio = report["peers"]["interp"]["ratio_median_of_rounds"].as_f64().expect("median ratio");
    let mut per_round: Vec<f64> =
        rounds.iter().map(|r| r["sharc_ms"].as_f64().unwrap() / r["interp"].as_f64().unwrap()).collect();
    per_round.sort_by(f64::total_cmp);
    // (serde_json's default float parsing may differ in the last bit.)
    assert!((ratio - per_round[1]).abs() <= 1e-12 * ratio, "{ratio} is not the median of {per_round:?}");
}

#[test]
fn zero_rounds_is_refused_before_anything_runs() {
    let out = sharc(&["bench", &model(), "--shape", "batch=1,seq=8", "--rounds", "0"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--rounds"), "{stderr}");
}

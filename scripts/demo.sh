#!/usr/bin/env bash
# The main job on the model bundled in this repository (models/gpt-tiny.onnx):
# inspect it, run it against onnxruntime's reference outputs, convert it to
# sharc's IR text and back to ONNX, and check the round-tripped model still
# gives the same outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
sharc=target/release/sharc
out=out/demo
mkdir -p "$out"

echo "== sharc inspect"
$sharc inspect models/gpt-tiny.onnx --top 12

echo "== sharc run (reference interpreter vs onnxruntime's logits)"
$sharc run models/gpt-tiny.onnx --inputs models/gpt-tiny.sample.safetensors \
    -o "$out/logits.safetensors" --expect models/gpt-tiny.sample.safetensors

echo "== sharc opt: ONNX -> IR text -> ONNX"
$sharc opt models/gpt-tiny.onnx -o "$out/gpt-tiny.sharc"
$sharc opt "$out/gpt-tiny.sharc" -o "$out/gpt-tiny.onnx"
$sharc run "$out/gpt-tiny.onnx" --inputs models/gpt-tiny.sample.safetensors \
    --expect models/gpt-tiny.sample.safetensors
echo "IR text: $out/gpt-tiny.sharc ($(wc -l < "$out/gpt-tiny.sharc") lines)"

echo "== sharc opt: the standard pipeline, then the compiled (Cranelift) backend"
$sharc opt models/gpt-tiny.onnx -o "$out/gpt-tiny.opt.onnx" \
    -p "infer-shapes,canonicalize,cse,simplify,dce" --time-passes
$sharc run "$out/gpt-tiny.opt.onnx" --backend cranelift --inputs models/gpt-tiny.sample.safetensors \
    --expect models/gpt-tiny.sample.safetensors

echo "== sharc compress: tie the 6 layers into 3 shared ones with rank-16 LoRA corrections"
# The sample's rows double as calibration data here; a real run would use
# a few hundred held-out sequences.
$sharc compress models/gpt-tiny.onnx --method tie --preset medium \
    --calib models/gpt-tiny.sample.safetensors -o "$out/gpt-tiny.tied.onnx" --report "$out/tie" \
    | grep -E "unique parameters|file bytes|KL|perplexity"
$sharc run "$out/gpt-tiny.tied.onnx" --backend cranelift --inputs models/gpt-tiny.sample.safetensors \
    -o "$out/tied-logits.safetensors"
echo "file size: $(stat -c %s models/gpt-tiny.onnx) -> $(stat -c %s "$out/gpt-tiny.tied.onnx") bytes;" \
    "report: $out/tie.txt, CKA heatmap: $out/tie.svg"

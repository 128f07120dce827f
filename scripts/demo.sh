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

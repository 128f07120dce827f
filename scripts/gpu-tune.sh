#!/usr/bin/env bash
# Times one model on the GPU under several block shapes (see
# backends/mlir/src/gpu_map.rs), checking each against the reference:
#   scripts/gpu-tune.sh MODEL RUNS TILE:POLICY...
# e.g. scripts/gpu-tune.sh gpt-tiny 5 1,4,32:outermost-first 4,32:innermost-first
# SHARC_BIN is the sharc to run (built with --features cuda), SHARC_SHARED_DIR
# the folder whose models/ holds MODEL.onnx and MODEL.data.safetensors.
set -euo pipefail
model="$1" runs="$2"
shift 2
SHARC="${SHARC_BIN:-target/release/sharc}"
dir="${SHARC_SHARED_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/shared}/models"
data="$dir/$model.data.safetensors"
for config in "$@"; do
    tile="${config%%:*}" policy="${config##*:}"
    if log=$(SHARC_GPU_TILE="$tile" SHARC_GPU_MAPPING="$policy" "$SHARC" run "$dir/$model.onnx" --inputs "$data" \
        --expect "$data" --tolerance 1e-4 --backend mlir --target cuda --runs "$runs" 2>&1); then
        status=ok
    else
        status=FAIL
    fi
    printf '%-10s tile %-9s %-16s %-5s %s | %s\n' "$model" "$tile" "$policy" "$status" \
        "$(grep -E '^ran ' <<<"$log" | tail -1)" "$(grep -o 'difference vs [^=]*= [0-9.e+-]*' <<<"$log" | sed 's/.*= //' | tr '\n' ' ')"
    [ "$status" = ok ] || tail -3 <<<"$log" | sed 's/^/    /'
done

#!/usr/bin/env bash
# One short check of the MLIR backend on an NVIDIA GPU: builds sharc with the
# CUDA runner, runs minilm-l6 and gpt-tiny on the GPU against onnxruntime's
# reference outputs, and times them next to the CPU backends (interpreter,
# Cranelift, MLIR on the CPU) on the same inputs.
#
# Needs LLVM/MLIR 22 to build (scripts/setup.sh installs it) and, for the GPU
# steps, an NVIDIA driver and a GPU of compute capability 8.0 or newer; no
# CUDA toolkit. Everything before the GPU steps runs on any machine, so the
# script can be checked without a GPU: there it stops before the GPU steps and
# exits with status 2.
#
# Environment: SHARC_SHARED_DIR (the models, default ../shared), SHARC_BIN (a
# sharc built with --features cuda, to skip the build), RUNS (timed runs per
# backend, default 10; the interpreter runs once), OUT (where outputs go),
# GPU_CHECK_MODELS (default "minilm-l6 gpt-tiny"), CPU_BACKENDS (the CPU
# backends to time beside the GPU, default "interp cranelift mlir"), PROBES
# (a folder of one-op models from scripts/op_probes.py to run on the GPU
# first).
# scripts/gpu-bundle.sh packs a prebuilt sharc, its libraries, libdevice and
# the models for a GPU machine without Rust or LLVM.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${SHARC_SHARED_DIR:-$(cd .. && pwd)/shared}"
export MLIR_SYS_220_PREFIX="${MLIR_SYS_220_PREFIX:-/usr/lib/llvm-22}"
export TABLEGEN_220_PREFIX="${TABLEGEN_220_PREFIX:-$MLIR_SYS_220_PREFIX}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
RUNS="${RUNS:-10}"
read -r -a MODELS <<<"${GPU_CHECK_MODELS:-minilm-l6 gpt-tiny}"
read -r -a CPU_BACKENDS <<<"${CPU_BACKENDS:-interp cranelift mlir}"
TOLERANCE=1e-4

for m in "${MODELS[@]}"; do
    for f in "$m.onnx" "$m.data.safetensors"; do
        if [ ! -f "$SHARED/models/$f" ]; then
            echo "gpu-check: missing $SHARED/models/$f (set SHARC_SHARED_DIR)" >&2
            exit 1
        fi
    done
done

echo "== build"
if [ -n "${SHARC_BIN:-}" ]; then
    SHARC="$SHARC_BIN"
else
    start=$(date +%s)
    cargo build --release --quiet --features cuda --bin sharc
    SHARC=target/release/sharc
    echo "built in $(($(date +%s) - start)) s"
fi

# One result line per (model, backend): status, median and first run time,
# max difference from the reference.
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
failed=0

# run_model MODEL LABEL RUNS sharc-run-arguments...: runs the model on the
# reference inputs, compares with the reference outputs, records the times.
run_model() {
    local model="$1" label="$2" runs="$3"
    shift 3
    local log="$OUT/$model.$label.log"
    local dir="${MODEL_DIR:-$SHARED/models}"
    local data="$dir/$model.data.safetensors"
    if "$SHARC" run "$dir/$model.onnx" --inputs "$data" --expect "$data" --tolerance "$TOLERANCE" \
        --runs "$runs" "$@" >"$log" 2>&1; then
        status=ok
    else
        status=FAIL
        failed=1
    fi
    local time diff
    time=$(grep -E '^ran ' "$log" | tail -1 || true)
    diff=$(grep -o 'max abs difference vs [^=]*= [0-9.e+-]*' "$log" | sed 's/.*= //' | sort -g | tail -1 || true)
    printf '%-10s %-12s %-5s %-60s max|diff| %s\n' "$model" "$label" "$status" "${time:-}" "${diff:--}" |
        tee -a "$SUMMARY"
    grep -E '^compiled' "$log" | sed 's/^/    /' || true
    if [ "$status" = FAIL ]; then
        sed 's/^/    /' "$log" | tail -5
    fi
}

for m in "${MODELS[@]}"; do
    echo "== $m on the CPU"
    for b in "${CPU_BACKENDS[@]}"; do
        case "$b" in
        interp) run_model "$m" interp 1 --backend interp ;;
        cranelift) run_model "$m" cranelift "$RUNS" --backend cranelift ;;
        mlir) run_model "$m" mlir-cpu "$RUNS" --backend mlir ;;
        *)
            echo "gpu-check: unknown CPU backend '$b' in CPU_BACKENDS (interp, cranelift, mlir)" >&2
            exit 1
            ;;
        esac
    done
done

echo "== GPU"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-check: no NVIDIA GPU or driver here: the GPU steps are skipped" >&2
    cat "$SUMMARY"
    exit $((failed ? 1 : 2))
fi
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader

# Probes first (PROBES=DIR from scripts/op_probes.py): when a model fails,
# the one-op models say which op is wrong on the GPU.
if [ -n "${PROBES:-}" ]; then
    echo "== op probes on the GPU ($PROBES)"
    for p in "$PROBES"/*.onnx; do
        MODEL_DIR="$PROBES" run_model "$(basename "$p" .onnx)" probe-cuda 1 --backend mlir --target cuda
    done
fi

for m in "${MODELS[@]}"; do
    echo "== $m on the GPU"
    run_model "$m" mlir-cuda "$RUNS" --backend mlir --target cuda
done

echo "== summary (times: sharc run --runs N, whole batch of the reference data)"
cat "$SUMMARY"
exit "$failed"

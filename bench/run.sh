#!/usr/bin/env bash
# Side-by-side benchmark of sharc's Cranelift backend against onnxruntime and
# tract, plus kernel-level figures. Writes everything to bench/results/<stamp>/
# and prints a summary table. Never part of the tests: timings are reported,
# not judged.
#
#   bench/run.sh                 # all models, peers and kernel figures
#   ITERS=10 THREADS=2 bench/run.sh
#   SKIP_TRACT=1 bench/run.sh    # without building tract (a long build)
#
# Needs: python3 with onnxruntime and numpy; shared/models (SHARC_SHARED_DIR).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
shared="${SHARC_SHARED_DIR:-$root/../shared}"
iters="${ITERS:-20}"
threads="${THREADS:-2}"
stamp="$(date -u +%Y%m%d-%H%M)"
out="${OUT:-$root/bench/results/$stamp}"
mkdir -p "$out"
cd "$root"
cargo build -q --release --bin sharc
peers=(--peer onnxruntime)
if [ -z "${SKIP_TRACT:-}" ]; then
  cargo build -q --release --manifest-path bench/tract-peer/Cargo.toml
  peers+=(--peer tract)
fi
{
  echo "command: bench/run.sh (ITERS=$iters THREADS=$threads${SKIP_TRACT:+ SKIP_TRACT=1})"
  echo "date: $(date -u)"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out/env.txt"
run() {
  local name="$1" model="$2" shape="$3"
  echo "== $name" | tee "$out/$name.txt"
  ./target/release/sharc bench "$shared/models/$model" --backend cranelift --shape "$shape" \
    --threads "$threads" --iters "$iters" --profile "${peers[@]}" --json "$out/$name.json" | tee -a "$out/$name.txt"
}
run minilm-b1-s128 minilm-l6.onnx batch=1,seq=128
run minilm-b8-s128 minilm-l6.onnx batch=8,seq=128
run gpt-tiny-b1-s128 gpt-tiny.onnx batch=1,seq=128
run gpt-tiny-b8-s64 gpt-tiny.onnx batch=8,seq=64
echo "load after models: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/env.txt"
cargo run -q --release -p sharc-cranelift --example kernels -- --threads "$threads" | tee "$out/kernels.txt"
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS="$threads" python3 bench/gemm_numpy.py | tee "$out/gemm_numpy.txt"
echo "load after kernels: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/env.txt"
python3 bench/summarize.py "$out" | tee "$out/summary.md"

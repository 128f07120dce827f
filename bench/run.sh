#!/usr/bin/env bash
# Side-by-side benchmark of sharc's Cranelift backend against onnxruntime and
# tract, plus kernel-level figures. Writes everything to bench/results/<stamp>/
# and prints a summary table. Never part of the tests: timings are reported,
# not judged.
#
#   bench/run.sh                 # all models, peers and kernel figures
#   ITERS=10 THREADS=2 bench/run.sh
#   SKIP_TRACT=1 bench/run.sh    # without building tract (a long build)
#   SKIP_KERNELS=1 bench/run.sh  # models only
#   ONLY=minilm-b8-s128 bench/run.sh   # one row (a substring of its name)
#   SKIP_BUILD=1 bench/run.sh    # measure what is already built
#   MLIR=1 bench/run.sh          # also a `--backend mlir` minilm-l6 row
#                                # (builds sharc with --features mlir: needs LLVM/MLIR)
#
# The machine may be shared: the load average is recorded before and after
# every row (in <row>.load and in the summary), so that a number taken under
# load can be recognised and rerun.
#
# The tract column comes from bench/tract-peer (tract-onnx, built here in
# release on first use; it times on one thread or THREADS, whichever its
# warm-up found faster); its outputs are also checked against onnxruntime's
# reference outputs (tract-check.txt).
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
features=()
if [ -n "${MLIR:-}" ]; then
  features=(--features mlir)
fi
# SKIP_BUILD=1 measures the binaries already built (e.g. while another
# cargo command holds the build directory).
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build -q --release --bin sharc "${features[@]}"
fi
peers=(--peer onnxruntime)
if [ -z "${SKIP_TRACT:-}" ]; then
  if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build -q --release --manifest-path bench/tract-peer/Cargo.toml
  fi
  peers+=(--peer tract)
fi
load() { cut -d' ' -f1-3 /proc/loadavg; }
{
  echo "command: bench/run.sh (ITERS=$iters THREADS=$threads${SKIP_TRACT:+ SKIP_TRACT=1}${MLIR:+ MLIR=1}${ONLY:+ ONLY=$ONLY})"
  echo "date: $(date -u)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "onnxruntime: $(python3 -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || echo missing)"
  if [ -z "${SKIP_TRACT:-}" ]; then
    echo "tract: tract-onnx $(sed -n '/^name = "tract-onnx"$/{n;s/version = "\(.*\)"/\1/p}' bench/tract-peer/Cargo.lock)"
  fi
  echo "load before: $(load)"
} > "$out/env.txt"
# run NAME MODEL SHAPE [BACKEND [PEERS...]]
run() {
  local name="$1" model="$2" shape="$3" backend="${4:-cranelift}"
  shift 4 2>/dev/null || shift $#
  if [ -n "${ONLY:-}" ] && [[ "$name" != *"$ONLY"* ]]; then
    return
  fi
  local p=("$@")
  echo "== $name" | tee "$out/$name.txt"
  echo "before: $(load)" > "$out/$name.load"
  ./target/release/sharc bench "$shared/models/$model" --backend "$backend" --shape "$shape" \
    --threads "$threads" --iters "$iters" --profile "${p[@]}" --json "$out/$name.json" | tee -a "$out/$name.txt"
  echo "after: $(load)" >> "$out/$name.load"
}
run minilm-b1-s128 minilm-l6.onnx batch=1,seq=128 cranelift "${peers[@]}"
run minilm-b8-s128 minilm-l6.onnx batch=8,seq=128 cranelift "${peers[@]}"
run gpt-tiny-b1-s128 gpt-tiny.onnx batch=1,seq=128 cranelift "${peers[@]}"
run gpt-tiny-b8-s64 gpt-tiny.onnx batch=8,seq=64 cranelift "${peers[@]}"
if [ -n "${MLIR:-}" ]; then
  # The same model and shapes on the MLIR backend; the peers' figures are
  # in the cranelift rows above.
  run minilm-b8-s128-mlir minilm-l6.onnx batch=8,seq=128 mlir
fi
echo "load after models: $(load)" >> "$out/env.txt"
if [ -z "${SKIP_TRACT:-}" ] && [ -z "${ONLY:-}" ]; then
  # tract's timings count only if it computes the models right: its outputs
  # on the first rows of the reference inputs, against onnxruntime's outputs
  # stored beside them (the peer fails beyond its tolerance, 1e-3).
  for m in minilm-l6 gpt-tiny; do
    echo "$m: $(bench/tract-peer/target/release/tract-peer "$shared/models/$m.onnx" \
      --data "$shared/models/$m.data.safetensors" --rows 8 --check --iters 1 --warmup 0)"
  done | tee "$out/tract-check.txt"
fi
if [ -z "${SKIP_KERNELS:-}" ]; then
  cargo run -q --release -p sharc-cranelift --example kernels -- --threads "$threads" | tee "$out/kernels.txt"
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS="$threads" python3 bench/gemm_numpy.py \
    | tee "$out/gemm_numpy.txt"
  echo "load after kernels: $(load)" >> "$out/env.txt"
fi
python3 bench/summarize.py "$out" | tee "$out/summary.md"

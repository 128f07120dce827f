#!/usr/bin/env bash
# One short GPU check of the MLIR backend, for a machine with an NVIDIA GPU.
#
# 1. Builds sharc with the MLIR backend (needs LLVM/MLIR 22, see README).
# 2. Compiles minilm-l6 and gpt-tiny (batch 8 x seq 128 / 64) to PTX for the
#    GPU's own architecture (sm_80 or sm_90).
# 3. Has the CUDA driver JIT-load every PTX module (cuModuleLoadData through
#    ctypes: no CUDA toolkit needed), which validates the kernels on the real
#    hardware and driver, and lists them.
# 4. Runs both models on the CPU path against onnxruntime's references and
#    prints the latencies next to the interpreter's.
#
# What it does not do yet: launch the kernels on the GPU. sharc has no CUDA
# runner (the `cuda` feature is reserved for it), so the GPU numbers stop at
# "the driver accepts every kernel".
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${SHARC_SHARED_DIR:-$(pwd)/../shared}"
export MLIR_SYS_220_PREFIX="${MLIR_SYS_220_PREFIX:-/usr/lib/llvm-22}"
export TABLEGEN_220_PREFIX="${TABLEGEN_220_PREFIX:-/usr/lib/llvm-22}"
OUT="${OUT:-$(mktemp -d)}"

echo "== GPU"
if ! command -v nvidia-smi >/dev/null; then
  echo "no nvidia-smi: this machine has no NVIDIA driver" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader
CAP="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')"
case "$CAP" in
  80|86|87|89) CHIP=sm_80 ;;
  90*) CHIP=sm_90 ;;
  *) echo "compute capability $CAP: compiling for sm_80"; CHIP=sm_80 ;;
esac

echo "== build"
cargo build --release --features mlir --bin sharc
SHARC=target/release/sharc

for spec in "minilm-l6 batch=8,seq=128" "gpt-tiny batch=8,seq=64"; do
  set -- $spec
  model="$1"; shape="$2"
  echo "== $model: PTX for $CHIP"
  start=$(date +%s.%N)
  "$SHARC" compile "$SHARED/models/$model.onnx" --backend mlir --target cuda --chip "$CHIP" \
    --shape "$shape" -o "$OUT/$model.ptx"
  echo "compiled in $(echo "$(date +%s.%N) - $start" | bc) s, $(grep -c '^.visible .entry' "$OUT/$model.ptx") kernels"
  python3 - "$OUT/$model.ptx" <<'PY'
import ctypes, sys
cuda = ctypes.CDLL("libcuda.so.1")
def check(r, what):
    if r != 0:
        name = ctypes.c_char_p()
        cuda.cuGetErrorName(r, ctypes.byref(name))
        sys.exit(f"{what} failed: {name.value.decode() if name.value else r}")
check(cuda.cuInit(0), "cuInit")
dev = ctypes.c_int(); check(cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
ctx = ctypes.c_void_p(); check(cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev), "cuCtxCreate")
ptx = open(sys.argv[1], "rb").read() + b"\0"
mod = ctypes.c_void_p(); check(cuda.cuModuleLoadData(ctypes.byref(mod), ptx), "cuModuleLoadData (driver JIT of the PTX)")
names = [l.split("(")[0].split()[-1] for l in ptx.decode().splitlines() if l.startswith(".visible .entry")]
for n in names:
    f = ctypes.c_void_p(); check(cuda.cuModuleGetFunction(ctypes.byref(f), mod, n.encode()), f"cuModuleGetFunction {n}")
print(f"driver loaded all {len(names)} kernels")
PY
  echo "== $model: CPU path vs onnxruntime references"
  "$SHARC" run "$SHARED/models/$model.onnx" --backend mlir --inputs "$SHARED/models/$model.data.safetensors" \
    --expect "$SHARED/models/$model.data.safetensors" --tolerance 1e-4
  "$SHARC" run "$SHARED/models/$model.onnx" --backend interp --inputs "$SHARED/models/$model.data.safetensors" 2>&1 | tail -1
done

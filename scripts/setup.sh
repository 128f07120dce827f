#!/usr/bin/env bash
# Installs what sharc's tests and demo need on a fresh Debian 12 machine:
#  - the Python packages used as independent references (onnx's checker,
#    onnxruntime);
#  - LLVM/MLIR 22 (Debian's llvm-22 packages), which the MLIR backend links
#    (cargo feature `mlir`). /usr/bin/llvm-config on Debian 12 is LLVM 14, so
#    the build finds LLVM 22 through MLIR_SYS_220_PREFIX/TABLEGEN_220_PREFIX,
#    which scripts/test.sh and .ci/run set.
# Safe to run repeatedly; does nothing that is already done. Installing
# packages needs root, or sudo without a password; otherwise it stops with
# the command to run. SHARC_NO_MLIR=1 skips the LLVM part (and scripts/test.sh
# then skips the MLIR tests).
set -euo pipefail

python_ok() {
    python3 - "$@" <<'PY' 2>/dev/null
import importlib, sys
for m in ("onnx", "onnxruntime", "numpy", "safetensors"):
    importlib.import_module(m)
PY
}

if ! python_ok; then
    echo "setup: installing python packages (onnx, onnxruntime, numpy, safetensors)"
    python3 -m pip install --quiet --disable-pip-version-check \
        "onnx==1.23.2" onnxruntime numpy safetensors
fi

# What mlir-sys needs to build and link: LLVM and MLIR's static libraries and
# headers, mlir-tblgen (melior's ODS dialects), libclang for bindgen, and the
# compression/XML libraries that LLVM's static libraries reference.
LLVM_PACKAGES=(llvm-22-dev libmlir-22-dev mlir-22-tools libclang1-22 libclang-common-22-dev libpolly-22-dev
    zlib1g-dev libzstd-dev libz3-dev libxml2-dev)

# The packages of LLVM_PACKAGES that dpkg does not list as installed.
missing_llvm_packages() {
    local p
    for p in "${LLVM_PACKAGES[@]}"; do
        if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
            echo "$p"
        fi
    done
}

# Runs a command as root: directly when we are root, through passwordless
# sudo otherwise; fails (returns 1) when neither is possible.
as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 1
    fi
}

install_llvm() {
    if ! command -v dpkg-query >/dev/null; then
        echo "setup: no dpkg here (not Debian?): install LLVM/MLIR 22 yourself and set MLIR_SYS_220_PREFIX and" \
            "TABLEGEN_220_PREFIX to its prefix, or set SHARC_NO_MLIR=1 to skip the MLIR backend" >&2
        return 1
    fi
    local missing
    missing=$(missing_llvm_packages | tr '\n' ' ')
    missing=${missing% }
    if [ -z "$missing" ]; then
        return 0
    fi
    echo "setup: installing LLVM/MLIR 22 for the MLIR backend: $missing"
    if ! as_root true; then
        echo "setup: installing packages needs root or passwordless sudo; run as root:" >&2
        echo "    apt-get update && apt-get install -y $missing" >&2
        echo "(or set SHARC_NO_MLIR=1 to skip the MLIR backend's tests)" >&2
        return 1
    fi
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q; then
        echo "setup: apt-get update failed (no network or a broken apt source?)" >&2
        return 1
    fi
    # shellcheck disable=SC2086 # one word per package
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing; then
        echo "setup: apt-get could not install $missing. Debian 12 gets LLVM 22 from bookworm-security;" \
            "elsewhere add https://apt.llvm.org's llvm-toolchain-bookworm-22 source and run this again" >&2
        return 1
    fi
    missing=$(missing_llvm_packages | tr '\n' ' ')
    if [ -n "$missing" ]; then
        echo "setup: still missing after apt-get: $missing" >&2
        return 1
    fi
}

# CUDA's libdevice (a 0.5 MB bitcode file of math functions) lets the MLIR
# backend's GPU path compile exp, erf, sqrt... into self-contained PTX, and
# lets the tests check that on machines without CUDA. Without a CUDA toolkit
# it is taken from pip's CUDA compiler package (pinned, so the file does not
# change under the tests) into the cache scripts/test.sh points
# SHARC_LIBDEVICE at.
LIBDEVICE_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/sharc/libdevice.10.bc"
fetch_libdevice() {
    [ -f "$LIBDEVICE_CACHE" ] && return 0
    echo "setup: fetching CUDA's libdevice.10.bc (pip's nvidia-cuda-nvcc-cu12) into $LIBDEVICE_CACHE"
    local tmp
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        -d "$tmp" "nvidia-cuda-nvcc-cu12==12.9.86"
    mkdir -p "$(dirname "$LIBDEVICE_CACHE")"
    python3 - "$tmp" "$LIBDEVICE_CACHE" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    data = z.read("nvidia/cuda_nvcc/nvvm/libdevice/libdevice.10.bc")
tmp = sys.argv[2] + ".part"
with open(tmp, "wb") as f:
    f.write(data)
os.replace(tmp, sys.argv[2])
PY
    rm -rf "$tmp"
}

if [ "${SHARC_NO_MLIR:-0}" != 1 ]; then
    fetch_libdevice
    install_llvm
    prefix="${MLIR_SYS_220_PREFIX:-/usr/lib/llvm-22}"
    if [ ! -x "$prefix/bin/llvm-config" ] || [ ! -x "$prefix/bin/mlir-tblgen" ]; then
        echo "setup: $prefix has no bin/llvm-config or bin/mlir-tblgen: point MLIR_SYS_220_PREFIX and" \
            "TABLEGEN_220_PREFIX at LLVM/MLIR 22's prefix" >&2
        exit 1
    fi
fi

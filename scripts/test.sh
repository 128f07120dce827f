#!/usr/bin/env bash
# The test command: sets up what is missing, then runs every test.
# Large data (real models, ONNX's node suite) comes from $SHARC_SHARED_DIR,
# which defaults to ../shared beside the repository.
#
# The MLIR backend sits behind cargo features (it links LLVM/MLIR 22), so its
# tests run in a second step with `--features cuda`, which is `mlir` plus the
# CUDA runner: cudarc loads the driver at run time, so this builds and tests
# on machines without CUDA (the runner's tests check it reports the missing
# driver). SHARC_NO_MLIR=1 skips that step on machines without LLVM 22.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export SHARC_SHARED_DIR="${SHARC_SHARED_DIR:-$(cd .. && pwd)/shared}"
export SHARC_REQUIRE_PYTHON=1
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc "$@"

if [ "${SHARC_NO_MLIR:-0}" = 1 ]; then
    echo "test: SHARC_NO_MLIR=1: skipping the MLIR backend's tests" >&2
    exit 0
fi
export MLIR_SYS_220_PREFIX="${MLIR_SYS_220_PREFIX:-/usr/lib/llvm-22}"
export TABLEGEN_220_PREFIX="${TABLEGEN_220_PREFIX:-$MLIR_SYS_220_PREFIX}"
# The libdevice scripts/setup.sh fetched, unless one is named already: the
# GPU path's math tests then run rather than skip.
export SHARC_LIBDEVICE="${SHARC_LIBDEVICE:-${XDG_CACHE_HOME:-$HOME/.cache}/sharc/libdevice.10.bc}"
export SHARC_REQUIRE_LIBDEVICE=1
# Only these test targets link MLIR (the backend's own tests, the command
# line's backend selection, the end-to-end tests): the static libraries make
# every binary that links them large and slow to link.
cargo test -p sharc-mlir --features cuda "$@"
cargo test --features cuda --bin sharc --test mlir_backend "$@"

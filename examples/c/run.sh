#!/usr/bin/env bash
# Builds and runs the C example: compiles a model with `sharc compile` to an
# object file + header, links a small C program against it, runs it, and
# checks its output against the reference interpreter (`sharc run`).
# Needs python3 with onnx, numpy and safetensors, and a C compiler.
#   examples/c/run.sh            # work files in examples/c/build
#   SHARC_BIN=path/to/sharc ...  # use a prebuilt sharc
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="${BUILD_DIR:-$here/build}"
mkdir -p "$build"
if [ -z "${SHARC_BIN:-}" ]; then
  (cd "$root" && cargo build -q --bin sharc)
  SHARC_BIN="$root/target/debug/sharc"
fi
python3 "$here/make_model.py" "$build"
"$SHARC_BIN" compile "$build/mlp.onnx" --backend cranelift --shape batch=4 -o "$build/mlp.o"
"${CC:-cc}" -O2 -std=c11 -I"$build" "$here/main.c" "$build/mlp.o" -o "$build/demo" -lm
"$build/demo" "$build/input.bin" "$build/output.bin"
"$SHARC_BIN" run "$build/mlp.onnx" --backend interp --inputs "$build/input.safetensors" -o "$build/ref.safetensors" >/dev/null
python3 "$here/check.py" "$build/output.bin" "$build/ref.safetensors"

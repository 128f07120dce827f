#!/usr/bin/env bash
# Installs what sharc's tests and demo need on a fresh Debian 12 machine:
# the Python packages used as independent references (onnx's checker,
# onnxruntime). Safe to run repeatedly; does nothing that is already done.
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

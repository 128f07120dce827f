"""Runs onnx.checker.check_model(path, full_check=True) on every model path
given on stdin (one per line). Prints "OK <path>" or "FAIL <path>\t<reason>".
"""
import sys

import onnx

for line in sys.stdin:
    path = line.strip()
    if not path:
        continue
    try:
        onnx.checker.check_model(path, full_check=True)
        print(f"OK {path}", flush=True)
    except Exception as e:  # noqa: BLE001 - every failure is reported
        reason = " ".join(str(e).split())[:400]
        print(f"FAIL {path}\t{reason}", flush=True)

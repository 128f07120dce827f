#!/usr/bin/env python3
"""Compares the C program's output with the interpreter's (exit 1 if they differ)."""
import sys

import numpy as np
from safetensors.numpy import load_file

got = np.fromfile(sys.argv[1], dtype=np.float32)
want = load_file(sys.argv[2])["probs"].reshape(-1)
if got.shape != want.shape:
    sys.exit(f"output has {got.size} values, the interpreter {want.size}")
diff = float(np.max(np.abs(got - want)))
print(f"C program vs interpreter: max abs difference {diff:.3e} over {got.size} values")
sys.exit(0 if diff <= 1e-5 else 1)

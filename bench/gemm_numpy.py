#!/usr/bin/env python3
"""numpy (OpenBLAS) GEMM GFLOP/s on the shapes of bench/kernels (the
`kernels` example of sharc-cranelift), for the kernel-level comparison.

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, when set on this machine, slow a
current OpenBLAS down; run.sh unsets both for this script only.
"""
import time

import numpy as np

try:
    from threadpoolctl import threadpool_info
    info = [(i.get("internal_api"), i.get("num_threads"), i.get("architecture")) for i in threadpool_info()]
except Exception:  # threadpoolctl is optional
    info = "threadpoolctl not installed"
print("numpy", np.__version__, "BLAS:", info)
shapes = [(1, 128, 384, 384), (1, 1024, 384, 384), (1, 1024, 1536, 384), (1, 1024, 384, 1536),
          (96, 128, 128, 32), (96, 128, 32, 128), (1, 128, 768, 256)]
for b, m, n, k in shapes:
    a = np.sin(np.arange(b * m * k, dtype=np.float32)).reshape((b, m, k) if b > 1 else (m, k))
    w = np.cos(np.arange(b * k * n, dtype=np.float32)).reshape((b, k, n) if b > 1 else (k, n))
    out = np.empty((b, m, n) if b > 1 else (m, n), dtype=np.float32)
    for _ in range(3):
        np.matmul(a, w, out=out)
    ts = []
    for _ in range(30):
        t = time.perf_counter()
        np.matmul(a, w, out=out)
        ts.append(time.perf_counter() - t)
    ts.sort()
    print(f"{b}x{m}x{n}x{k:<6} numpy {2 * b * m * n * k / ts[len(ts) // 2] / 1e9:8.1f} GFLOP/s")

#!/usr/bin/env python3
"""onnxruntime peer for `sharc bench --peer onnxruntime`.

Runs a model on onnxruntime (CPU) with all graph optimisations and a fixed
number of intra-op threads, on inputs filled with ones (as `sharc bench`
generates them), and prints one JSON line with the median and p90 latency.
"""
import argparse
import json
import sys
import time

import numpy as np
import onnxruntime as ort

DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--shape", default="", help="sym=value,... for symbolic dims")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    dims = {}
    for item in filter(None, a.shape.split(",")):
        k, v = item.split("=")
        dims[k.strip()] = int(v)
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t0 = time.perf_counter()
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - t0) * 1e3
    feeds = {}
    for i in sess.get_inputs():
        shape = []
        for d in i.shape:
            if isinstance(d, int):
                shape.append(d)
            elif d in dims:
                shape.append(dims[d])
            else:
                sys.exit(f"input {i.name} has symbolic dim {d}: give it with --shape {d}=N")
        feeds[i.name] = np.ones(shape, dtype=DTYPES.get(i.type, np.float32))
    for _ in range(a.warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(max(1, a.iters)):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    at = lambda q: times[round((len(times) - 1) * q)]
    print(json.dumps({"median_ms": at(0.5), "p90_ms": at(0.9), "min_ms": times[0], "load_ms": load_ms,
                      "threads": a.threads, "onnxruntime": ort.__version__}))


if __name__ == "__main__":
    main()

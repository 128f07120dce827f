#!/usr/bin/env python3
"""onnxruntime (MLAS) GEMM GFLOP/s on one MatMul with a constant weight, the
way onnxruntime runs a model's products (weight packed at session start).
A reference for the packed product of sharc-cranelift on the same shapes.

Usage: ort_matmul.py [--threads N] [M K N ...]   (default: minilm b8's products)
"""
import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def gflops(m, k, n, threads):
    w = np.cos(np.arange(k * n, dtype=np.float32)).reshape(k, n)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.sin(np.arange(m * k, dtype=np.float32)).reshape(m, k)
    for _ in range(5):
        sess.run(None, {"x": x})
    ts = []
    for _ in range(30):
        t = time.perf_counter()
        sess.run(None, {"x": x})
        ts.append(time.perf_counter() - t)
    ts.sort()
    return 2 * m * n * k / ts[len(ts) // 2] / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("dims", type=int, nargs="*", help="M K N triples")
    a = ap.parse_args()
    dims = a.dims or [1024, 384, 384, 1024, 384, 1536, 1024, 1536, 384]
    if len(dims) % 3:
        ap.error("give M K N triples")
    for i in range(0, len(dims), 3):
        m, k, n = dims[i:i + 3]
        print(f"1x{m}x{n}x{k:<6} onnxruntime {gflops(m, k, n, a.threads):8.1f} GFLOP/s ({a.threads} threads)")


if __name__ == "__main__":
    main()

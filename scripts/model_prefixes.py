#!/usr/bin/env python3
"""Cuts a model into N growing prefixes, each ending at a float tensor
1/2^(N-1), ..., 1/2, all of the way through the graph, with onnxruntime's outputs as references: when
a whole model does not match on a backend or device, the first prefix that
fails brackets the wrong op (scripts/gpu-check.sh runs them with PROBES=DIR).

Usage: model_prefixes.py MODEL.onnx DATA.safetensors OUTDIR N [ROWS]
The prefixes are OUTDIR/<model>-pNN.onnx with <model>-pNN.data.safetensors
(the first ROWS rows of the reference inputs, default 2, and the prefix's
output).
"""

import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import shape_inference
from safetensors.numpy import load_file, save_file


def main(model_path, data_path, out, count, rows=2):
    count, rows = int(count), int(rows)
    os.makedirs(out, exist_ok=True)
    model = shape_inference.infer_shapes(onnx.load(model_path))
    data = load_file(data_path)
    graph = model.graph
    inputs = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    floats = {
        v.name
        for v in list(graph.value_info) + list(graph.output)
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and v.type.tensor_type.shape.dim
    }
    # Cut points: float outputs of nodes spread geometrically along the
    # graph (1/2^(N-1) of the way, ..., 1/2, the end), so the early prefixes
    # are short and cheap and a failure's first node is bracketed closely.
    candidates = [(i, o) for i, node in enumerate(graph.node) for o in node.output if o in floats]
    if not candidates:
        sys.exit(f"model_prefixes: {model_path} has no float intermediate with a known shape")
    positions = sorted({max(0, round(len(candidates) / 2 ** (count - 1 - k)) - 1) for k in range(count)})
    picks = [candidates[p] for p in positions]
    stem = os.path.splitext(os.path.basename(model_path))[0]
    feed = {n: np.ascontiguousarray(data[n][:rows]) for n in inputs}
    for k, (index, name) in enumerate(picks):
        path = os.path.join(out, f"{stem}-p{k:02d}.onnx")
        onnx.utils.extract_model(model_path, path, inputs, [name], check_model=False)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        used = {i.name for i in sess.get_inputs()}
        result = sess.run(None, {n: v for n, v in feed.items() if n in used})[0]
        save_file({**{n: v for n, v in feed.items() if n in used}, name: np.ascontiguousarray(result)},
                  path.replace(".onnx", ".data.safetensors"))
        print(f"model_prefixes: {path}: up to node {index} of {len(graph.node)} ({name})")


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6):
        sys.exit(__doc__)
    main(*sys.argv[1:])

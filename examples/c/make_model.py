#!/usr/bin/env python3
"""Writes the model and inputs for the C example into OUT_DIR.

mlp.onnx: a transformer-style feed-forward block, x[batch, 64] ->
MatMul + bias -> GELU (the Erf spelling torch exports) -> LayerNormalization
-> MatMul + bias -> residual-free Softmax -> probs[batch, 32]. Weights are
seeded, so every run writes the same files.
"""
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
f = np.float32
w1 = (rng.standard_normal((64, 128)) * 0.2).astype(f)
b1 = (rng.standard_normal(128) * 0.1).astype(f)
g = (1 + rng.standard_normal(128) * 0.1).astype(f)
beta = (rng.standard_normal(128) * 0.1).astype(f)
w2 = (rng.standard_normal((128, 32)) * 0.2).astype(f)
b2 = (rng.standard_normal(32) * 0.1).astype(f)
inits = [numpy_helper.from_array(a, n) for a, n in
         [(w1, "w1"), (b1, "b1"), (g, "ln_g"), (beta, "ln_b"), (w2, "w2"), (b2, "b2"),
          (np.array(np.sqrt(2), f), "sqrt2"), (np.array(1, f), "one"), (np.array(0.5, f), "half")]]
nodes = [
    helper.make_node("MatMul", ["x", "w1"], ["h0"]),
    helper.make_node("Add", ["h0", "b1"], ["h1"]),
    helper.make_node("Div", ["h1", "sqrt2"], ["g0"]),
    helper.make_node("Erf", ["g0"], ["g1"]),
    helper.make_node("Add", ["g1", "one"], ["g2"]),
    helper.make_node("Mul", ["h1", "g2"], ["g3"]),
    helper.make_node("Mul", ["g3", "half"], ["g4"]),
    helper.make_node("LayerNormalization", ["g4", "ln_g", "ln_b"], ["n"], axis=-1, epsilon=1e-5),
    helper.make_node("MatMul", ["n", "w2"], ["o0"]),
    helper.make_node("Add", ["o0", "b2"], ["o1"]),
    helper.make_node("Softmax", ["o1"], ["probs"], axis=-1),
]
graph = helper.make_graph(
    nodes, "mlp",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
    [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 32])],
    inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sharc-example")
onnx.checker.check_model(model)
onnx.save(model, out / "mlp.onnx")
x = np.sin(np.arange(4 * 64, dtype=np.float64) * 0.37).astype(f).reshape(4, 64) * 3
x.tofile(out / "input.bin")
save_file({"x": x}, str(out / "input.safetensors"))

#!/usr/bin/env python3
"""Writes small one- or two-op ONNX models with onnxruntime's outputs as
references: probes that say which op goes wrong when a whole model does not
match on a new backend or device (scripts/gpu-check.sh runs them with
PROBES=DIR before the models).

Usage: op_probes.py OUTDIR
Each probe is OUTDIR/NAME.onnx plus OUTDIR/NAME.data.safetensors holding its
inputs and onnxruntime's outputs under the graph's names, the layout
`sharc run --inputs F --expect F` reads.
"""

import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file

rng = np.random.default_rng(7)


def f32(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def probe(out, name, nodes, inputs, initializers=()):
    """inputs: {name: array}; initializers: [(name, array)]. Outputs are the
    last node's outputs."""
    vin = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in inputs.items()]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in nodes[-1].output]
    graph = helper.make_graph(
        nodes, name, vin, outs, [numpy_helper.from_array(a, n) for n, a in initializers]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = os.path.join(out, name + ".onnx")
    onnx.save(model, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    results = sess.run(None, inputs)
    data = dict(inputs)
    for o, r in zip(sess.get_outputs(), results):
        data[o.name] = np.ascontiguousarray(r)
    save_file(data, os.path.join(out, name + ".data.safetensors"))


def main(out):
    os.makedirs(out, exist_ok=True)
    n = helper.make_node
    x = f32(4, 64)
    probe(out, "add", [n("Add", ["x", "y"], ["z"])], {"x": x, "y": f32(4, 64)})
    probe(out, "add_broadcast", [n("Add", ["x", "b"], ["z"])], {"x": x}, [("b", f32(64))])
    probe(out, "mul_const", [n("Mul", ["x", "c"], ["z"])], {"x": x}, [("c", np.array(0.5, np.float32))])
    for op in ["Exp", "Tanh", "Erf", "Sqrt", "Relu", "Sigmoid", "Neg", "Reciprocal"]:
        inp = np.abs(x) + 0.1 if op in ("Sqrt", "Reciprocal") else x
        probe(out, op.lower(), [n(op, ["x"], ["z"])], {"x": inp})
    probe(out, "pow", [n("Pow", ["x", "p"], ["z"])], {"x": np.abs(x) + 0.1}, [("p", np.array(2.5, np.float32))])
    # A negative base with an integer exponent (GPT-2's tanh-GELU cubes its
    # input): exp(p * log(x)) would give NaN here.
    probe(out, "pow_negative_base", [n("Pow", ["x", "p"], ["z"])], {"x": x}, [("p", np.array(3.0, np.float32))])
    # Saturating inputs: tanh(x) written as a ratio of exponentials gives
    # inf / inf = NaN.
    probe(out, "tanh_large", [n("Tanh", ["x"], ["z"])], {"x": x * 60})
    unit = np.tanh(x) * 0.99
    for op, inp in [
        ("Abs", x), ("Ceil", x * 3), ("Floor", x * 3), ("Round", x * 3), ("Sin", x * 3), ("Cos", x * 3),
        ("Tan", unit), ("Asin", unit), ("Acos", unit), ("Atan", x * 3), ("Sinh", x), ("Cosh", x),
        ("Asinh", x * 3), ("Acosh", np.abs(x) + 1), ("Atanh", unit), ("Log", np.abs(x) + 0.01),
        ("Softplus", x * 10), ("Elu", x), ("HardSigmoid", x * 3),
    ]:
        probe(out, op.lower(), [n(op, ["x"], ["z"])], {"x": inp.astype(np.float32)})
    probe(out, "matmul_weight", [n("MatMul", ["x", "w"], ["z"])], {"x": f32(8, 64)}, [("w", f32(64, 32))])
    probe(out, "matmul_inputs", [n("MatMul", ["x", "y"], ["z"])], {"x": f32(8, 64), "y": f32(64, 32)})
    probe(
        out,
        "matmul_batched",
        [n("MatMul", ["x", "y"], ["z"])],
        {"x": f32(2, 4, 16, 32), "y": f32(2, 4, 32, 16)},
    )
    probe(out, "gemm", [n("Gemm", ["x", "w", "b"], ["z"], transB=1)], {"x": f32(8, 64)}, [("w", f32(32, 64)), ("b", f32(32))])
    probe(out, "softmax", [n("Softmax", ["x"], ["z"], axis=-1)], {"x": f32(2, 4, 16, 16)})
    probe(out, "reduce_mean", [n("ReduceMean", ["x"], ["z"], axes=[-1])], {"x": f32(4, 8, 64)})
    probe(out, "reduce_sum", [n("ReduceSum", ["x", "a"], ["z"])], {"x": f32(4, 8, 64)}, [("a", np.array([1], np.int64))])
    probe(
        out,
        "layer_norm",
        [n("LayerNormalization", ["x", "g", "b"], ["z"], axis=-1, epsilon=1e-5)],
        {"x": f32(4, 8, 64)},
        [("g", f32(64)), ("b", f32(64))],
    )
    probe(
        out,
        "gather_embedding",
        [n("Gather", ["t", "ids"], ["z"], axis=0)],
        {"ids": rng.integers(0, 50, (4, 8)).astype(np.int64)},
        [("t", f32(50, 16))],
    )
    probe(out, "transpose", [n("Transpose", ["x"], ["z"], perm=[0, 2, 1, 3])], {"x": f32(2, 8, 4, 16)})
    probe(
        out,
        "reshape",
        [n("Reshape", ["x", "s"], ["z"])],
        {"x": f32(2, 8, 64)},
        [("s", np.array([2, 8, 4, 16], np.int64))],
    )
    probe(
        out,
        "slice",
        [n("Slice", ["x", "st", "en", "ax"], ["z"])],
        {"x": f32(4, 96)},
        [("st", np.array([32], np.int64)), ("en", np.array([64], np.int64)), ("ax", np.array([1], np.int64))],
    )
    probe(
        out,
        "where",
        [n("Less", ["x", "y"], ["m"]), n("Where", ["m", "x", "y"], ["z"])],
        {"x": f32(4, 64), "y": f32(4, 64)},
    )
    probe(out, "cast_i64", [n("Cast", ["x"], ["z"], to=TensorProto.FLOAT)], {"x": rng.integers(-9, 9, (4, 8)).astype(np.int64)})
    probe(
        out,
        "concat",
        [n("Concat", ["x", "y"], ["z"], axis=1)],
        {"x": f32(4, 8), "y": f32(4, 24)},
    )
    # A GELU MLP block: matmul + bias, erf-GELU, matmul.
    probe(
        out,
        "mlp_gelu",
        [
            n("MatMul", ["x", "w1"], ["h"]),
            n("Add", ["h", "b1"], ["hb"]),
            n("Mul", ["hb", "s"], ["hs"]),
            n("Erf", ["hs"], ["e"]),
            n("Add", ["e", "one"], ["e1"]),
            n("Mul", ["hb", "e1"], ["g0"]),
            n("Mul", ["g0", "half"], ["g"]),
            n("MatMul", ["g", "w2"], ["z"]),
        ],
        {"x": f32(16, 64)},
        [
            ("w1", f32(64, 128, scale=0.1)),
            ("b1", f32(128)),
            ("s", np.array(1 / np.sqrt(2), np.float32)),
            ("one", np.array(1, np.float32)),
            ("half", np.array(0.5, np.float32)),
            ("w2", f32(128, 64, scale=0.1)),
        ],
    )
    print(f"op_probes: wrote {len([f for f in os.listdir(out) if f.endswith('.onnx')])} probes to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])

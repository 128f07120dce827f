"""Old-opset models with independently computed expected outputs, for
checking that sharc's opset normalisation keeps their meaning.

    legacy_cases.py gen DIR             writes DIR/<case>.onnx and DIR/<case>.npz
    legacy_cases.py check DIR EXPORTED  runs EXPORTED/<case>.onnx (sharc's
                                        re-export) on the inputs and compares

Expected outputs come from numpy, written from the old operator definitions,
or, where noted, from onnxruntime running the original old-opset model.
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

rng = np.random.default_rng(0)
F = TensorProto.FLOAT


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def model(nodes, inputs, outputs, opset, inits=()):
    g = helper.make_graph(nodes, "legacy", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 3 if opset < 8 else 7
    return m


def softmax2d(x, axis, f):
    n = int(np.prod(x.shape[:axis]))
    return f(x.reshape(n, -1)).reshape(x.shape)


def sm(a):
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def lsm(a):
    return np.log(sm(a))


def hm(a):
    out = np.zeros_like(a)
    out[np.arange(a.shape[0]), a.argmax(axis=1)] = 1
    return out


def cases():
    x234 = rng.standard_normal((2, 3, 4)).astype(np.float32)
    yield "softmax_axis1_v11", model(
        [helper.make_node("Softmax", ["x"], ["y"])], [vi("x", F, [2, 3, 4])], [vi("y", F, [2, 3, 4])], 11
    ), {"x": x234}, [softmax2d(x234, 1, sm)]
    x23 = rng.standard_normal((2, 3)).astype(np.float32)
    yield "logsoftmax_axis0_v11", model(
        [helper.make_node("LogSoftmax", ["x"], ["y"], axis=0)], [vi("x", F, [2, 3])], [vi("y", F, [2, 3])], 11
    ), {"x": x23}, [softmax2d(x23, 0, lsm)]
    yield "hardmax_default_v11", model(
        [helper.make_node("Hardmax", ["x"], ["y"])], [vi("x", F, [2, 3, 4])], [vi("y", F, [2, 3, 4])], 11
    ), {"x": x234}, [softmax2d(x234, 1, hm)]
    yield "softmax_last_v12", model(
        [helper.make_node("Softmax", ["x"], ["y"], axis=2)], [vi("x", F, [2, 3, 4])], [vi("y", F, [2, 3, 4])], 12
    ), {"x": x234}, [softmax2d(x234, 2, sm)]

    yield "pad_v2_constant", model(
        [helper.make_node("Pad", ["x"], ["y"], pads=[0, 1, 1, 0], value=1.5)], [vi("x", F, [2, 3])], [vi("y", F, [3, 4])], 2
    ), {"x": x23}, [np.pad(x23, ((0, 1), (1, 0)), constant_values=1.5)]
    yield "pad_v1_reflect", model(
        [helper.make_node("Pad", ["x"], ["y"], paddings=[1, 1, 1, 1], mode="reflect")],
        [vi("x", F, [2, 3])],
        [vi("y", F, [4, 5])],
        1,
    ), {"x": x23}, [np.pad(x23, ((1, 1), (1, 1)), mode="reflect")]

    x34 = rng.standard_normal((3, 4)).astype(np.float32)
    yield "slice_v9", model(
        [helper.make_node("Slice", ["x"], ["y"], starts=[1, 0], ends=[3, 2], axes=[0, 1])],
        [vi("x", F, [3, 4])],
        [vi("y", F, [2, 2])],
        9,
    ), {"x": x34}, [x34[1:3, 0:2]]
    idx = np.argsort(-x34, axis=1, kind="stable")[:, :2]
    yield "topk_v9", model(
        [helper.make_node("TopK", ["x"], ["v", "i"], k=2)],
        [vi("x", F, [3, 4])],
        [vi("v", F, [3, 2]), vi("i", TensorProto.INT64, [3, 2])],
        9,
    ), {"x": x34}, [np.take_along_axis(x34, idx, 1), idx.astype(np.int64)]

    x5 = np.linspace(-1, 1, 5).astype(np.float32)
    yield "clip_v6", model(
        [helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=0.5)], [vi("x", F, [5])], [vi("y", F, [5])], 6
    ), {"x": x5}, [np.clip(x5, -0.5, 0.5)]
    yield "clip_v6_untyped_input", model(
        [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Clip", ["n"], ["y"], max=0.25)],
        [vi("x", F, [5])],
        [vi("y", F, [5])],
        6,
    ), {"x": x5}, [np.minimum(-x5, 0.25)]

    yield "split_v11_attr", model(
        [helper.make_node("Split", ["x"], ["a", "b"], axis=1, split=[1, 3])],
        [vi("x", F, [3, 4])],
        [vi("a", F, [3, 1]), vi("b", F, [3, 3])],
        11,
    ), {"x": x34}, [x34[:, :1], x34[:, 1:]]
    yield "split_v13_even", model(
        [helper.make_node("Split", ["x"], ["a", "b"], axis=1)],
        [vi("x", F, [3, 4])],
        [vi("a", F, [3, 2]), vi("b", F, [3, 2])],
        13,
    ), {"x": x34}, [x34[:, :2], x34[:, 2:]]
    yield "squeeze_unsqueeze_v11", model(
        [helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0, 3]), helper.make_node("Squeeze", ["u"], ["y"], axes=[0])],
        [vi("x", F, [3, 4])],
        [vi("y", F, [3, 4, 1])],
        11,
    ), {"x": x34}, [x34[:, :, None]]
    yield "reduce_v13", model(
        [
            helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=0),
            helper.make_node("ReduceSum", ["x"], ["s"], axes=[0, 2]),
            helper.make_node("ReduceMax", ["x"], ["mx"], keepdims=0),
        ],
        [vi("x", F, [2, 3, 4])],
        [vi("m", F, [2, 4]), vi("s", F, [1, 3, 1]), vi("mx", F, [])],
        11,
    ), {"x": x234}, [x234.mean(axis=1), x234.sum(axis=(0, 2), keepdims=True), np.array(x234.max(), np.float32)]
    yield "reshape_v4", model(
        [helper.make_node("Reshape", ["x"], ["y"], shape=[4, 3])], [vi("x", F, [3, 4])], [vi("y", F, [4, 3])], 4
    ), {"x": x34}, [x34.reshape(4, 3)]
    yield "tile_v5_inputs", model(
        [helper.make_node("Tile", ["x", "t", "a"], ["y"])],
        [vi("x", F, [2, 3]), vi("t", TensorProto.INT64, []), vi("a", TensorProto.INT64, [])],
        [vi("y", F, [2, 6])],
        5,
    ), {"x": x23, "t": np.array(2, np.int64), "a": np.array(1, np.int64)}, [np.tile(x23, (1, 2))]

    x1122 = rng.standard_normal((1, 1, 2, 2)).astype(np.float32)
    yield "upsample_v7_nearest", model(
        [helper.make_node("Upsample", ["x"], ["y"], scales=[1.0, 1.0, 2.0, 3.0], mode="nearest")],
        [vi("x", F, [1, 1, 2, 2])],
        [vi("y", F, [1, 1, 4, 6])],
        7,
    ), {"x": x1122}, [x1122.repeat(2, axis=2).repeat(3, axis=3)]
    scales = np.array([1.0, 1.0, 2.0, 2.0], np.float32)
    yield "upsample_v9_linear", model(
        [helper.make_node("Upsample", ["x", "s"], ["y"], mode="linear")],
        [vi("x", F, [1, 1, 2, 2]), vi("s", F, [4])],
        [vi("y", F, [1, 1, 4, 4])],
        9,
    ), {"x": x1122, "s": scales}, "ort"
    yield "resize_v10_nearest", model(
        [helper.make_node("Resize", ["x", "s"], ["y"], mode="nearest")],
        [vi("x", F, [1, 1, 2, 2]), vi("s", F, [4])],
        [vi("y", F, [1, 1, 4, 4])],
        10,
    ), {"x": x1122, "s": scales}, "ort"
    yield "resize_v10_linear", model(
        [helper.make_node("Resize", ["x", "s"], ["y"], mode="linear")],
        [vi("x", F, [1, 1, 2, 2]), vi("s", F, [4])],
        [vi("y", F, [1, 1, 4, 4])],
        10,
    ), {"x": x1122, "s": scales}, "ort"

    data = np.zeros((2, 3), np.float32)
    ind = np.array([[1, 0], [2, 1]], np.int64)
    upd = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    exp = data.copy()
    for i in range(2):
        for j in range(2):
            exp[i, ind[i, j]] = upd[i, j]
    yield "scatter_v10", model(
        [helper.make_node("Scatter", ["d", "i", "u"], ["y"], axis=1)],
        [vi("d", F, [2, 3]), vi("i", TensorProto.INT64, [2, 2]), vi("u", F, [2, 2])],
        [vi("y", F, [2, 3])],
        10,
    ), {"d": data, "i": ind, "u": upd}, [exp]

    yield "dropout_v7_mask", model(
        [helper.make_node("Dropout", ["x"], ["y", "m"], ratio=0.3), helper.make_node("Identity", ["m"], ["mask"])],
        [vi("x", F, [3, 4])],
        [vi("y", F, [3, 4]), vi("mask", F, [3, 4])],
        7,
    ), {"x": x34}, [x34, np.ones_like(x34)]

    xbn = rng.standard_normal((2, 3, 2)).astype(np.float32)
    s, b, mean = (rng.standard_normal(3).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.5, 2, 3).astype(np.float32)
    bn = (xbn - mean[:, None]) / np.sqrt(var[:, None] + 1e-5) * s[:, None] + b[:, None]
    yield "batchnorm_v6", model(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], is_test=1, spatial=1)],
        [vi(n, F, sh) for n, sh in [("x", [2, 3, 2]), ("s", [3]), ("b", [3]), ("m", [3]), ("v", [3])]],
        [vi("y", F, [2, 3, 2])],
        6,
    ), {"x": xbn, "s": s, "b": b, "m": mean, "v": var}, [bn]

    a = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    bb = rng.standard_normal((3, 4)).astype(np.float32)
    yield "add_v6_broadcast_axis", model(
        [helper.make_node("Add", ["a", "b"], ["y"], broadcast=1, axis=1)],
        [vi("a", F, [2, 3, 4, 5]), vi("b", F, [3, 4])],
        [vi("y", F, [2, 3, 4, 5])],
        6,
    ), {"a": a, "b": bb}, [a + bb[None, :, :, None]]
    b5 = rng.standard_normal(5).astype(np.float32)
    yield "mul_v6_broadcast_suffix", model(
        [helper.make_node("Mul", ["a", "b"], ["y"], broadcast=1)],
        [vi("a", F, [2, 3, 4, 5]), vi("b", F, [5])],
        [vi("y", F, [2, 3, 4, 5])],
        6,
    ), {"a": a, "b": b5}, [a * b5]
    xp = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    slope = np.array([0.1, 0.2, 0.3], np.float32)
    yield "prelu_v6_channel", model(
        [helper.make_node("PRelu", ["x", "s"], ["y"])],
        [vi("x", F, [2, 3, 2, 2]), vi("s", F, [3])],
        [vi("y", F, [2, 3, 2, 2])],
        6,
    ), {"x": xp, "s": slope}, [np.where(xp < 0, xp * slope[None, :, None, None], xp)]
    ga = rng.standard_normal((2, 4)).astype(np.float32)
    gb = rng.standard_normal((4, 3)).astype(np.float32)
    gc = rng.standard_normal(3).astype(np.float32)
    yield "gemm_v6_broadcast", model(
        [helper.make_node("Gemm", ["a", "b", "c"], ["y"], broadcast=1, alpha=0.5)],
        [vi("a", F, [2, 4]), vi("b", F, [4, 3]), vi("c", F, [3])],
        [vi("y", F, [2, 3])],
        6,
    ), {"a": ga, "b": gb, "c": gc}, [0.5 * ga @ gb + gc]
    yield "concat_v3_default_axis", model(
        [helper.make_node("Concat", ["a", "b"], ["y"])],
        [vi("a", F, [2, 3]), vi("b", F, [2, 3])],
        [vi("y", F, [2, 6])],
        3,
    ), {"a": x23, "b": x23 * 2}, [np.concatenate([x23, x23 * 2], axis=1)]
    cast_to = helper.make_attribute("to", "INT32")
    cast = helper.make_node("Cast", ["x"], ["y"])
    cast.attribute.append(cast_to)
    xi = np.array([1.7, -2.2, 3.0], np.float32)
    yield "cast_v5_string_to", model(
        [cast], [vi("x", F, [3])], [vi("y", TensorProto.INT32, [3])], 5
    ), {"x": xi}, [xi.astype(np.int32)]

    xg = rng.standard_normal((2, 4, 2, 2)).astype(np.float32)
    gs = np.array([1.5, -0.5], np.float32)
    gbias = np.array([0.1, 0.2], np.float32)
    xr = xg.reshape(2, 2, -1)
    norm = ((xr - xr.mean(-1, keepdims=True)) / np.sqrt(xr.var(-1, keepdims=True) + 1e-5)).reshape(2, 2, 2, 2, 2)
    gn = (norm * gs[None, :, None, None, None] + gbias[None, :, None, None, None]).reshape(xg.shape)
    yield "group_norm_v18", model(
        [helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2)],
        [vi("x", F, [2, 4, 2, 2]), vi("s", F, [2]), vi("b", F, [2])],
        [vi("y", F, [2, 4, 2, 2])],
        18,
    ), {"x": xg, "s": gs, "b": gbias}, [gn]

    sig = rng.standard_normal((1, 8, 1)).astype(np.float32)
    f = np.fft.fft(sig[..., 0], axis=1)
    yield "dft_v17_axis_attr", model(
        [helper.make_node("DFT", ["x"], ["y"])], [vi("x", F, [1, 8, 1])], [vi("y", F, [1, 8, 2])], 17
    ), {"x": sig}, [np.stack([f.real, f.imag], -1).astype(np.float32)]

    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "x_t"], ["s_out"]), helper.make_node("Identity", ["s_out"], ["y_t"])],
        "body",
        [vi("s_in", F, [2]), vi("x_t", F, [2])],
        [vi("s_out", F, [2]), vi("y_t", F, [2])],
    )
    init = rng.standard_normal((3, 2)).astype(np.float32)
    xs = rng.standard_normal((3, 4, 2)).astype(np.float32)
    cum = init[:, None, :] + np.cumsum(xs, axis=1)
    yield "scan_v8_batched", model(
        [helper.make_node("Scan", ["", "init", "xs"], ["fin", "ys"], body=body, num_scan_inputs=1)],
        [vi("init", F, [3, 2]), vi("xs", F, [3, 4, 2])],
        [vi("fin", F, [3, 2]), vi("ys", F, [3, 4, 2])],
        8,
    ), {"init": init, "xs": xs}, [cum[:, -1, :], cum]
    body_rev = helper.make_graph(
        [helper.make_node("Add", ["s_in", "x_t"], ["s_out"]), helper.make_node("Identity", ["s_out"], ["y_t"])],
        "body",
        [vi("s_in", F, [2]), vi("x_t", F, [2])],
        [vi("s_out", F, [2]), vi("y_t", F, [2])],
    )
    rcum = init[:, None, :] + np.cumsum(xs[:, ::-1, :], axis=1)
    yield "scan_v8_reverse", model(
        [helper.make_node("Scan", ["", "init", "xs"], ["fin", "ys"], body=body_rev, num_scan_inputs=1, directions=[1])],
        [vi("init", F, [3, 2]), vi("xs", F, [3, 4, 2])],
        [vi("fin", F, [3, 2]), vi("ys", F, [3, 4, 2])],
        8,
    ), {"init": init, "xs": xs}, [rcum[:, -1, :], rcum]

    xl = np.abs(rng.standard_normal((1, 2, 3, 3))).astype(np.float32)
    yield "globallppool_v1_float_p", model(
        [helper.make_node("GlobalLpPool", ["x"], ["y"], p=3.0)], [vi("x", F, [1, 2, 3, 3])], [vi("y", F, [1, 2, 1, 1])], 1
    ), {"x": xl}, [np.power(np.power(xl, 3).sum(axis=(2, 3), keepdims=True), 1 / 3)]

    xr = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    rois = np.array([[0.5, 1.0, 4.0, 5.5], [1.0, 0.0, 3.0, 3.0]], np.float32)
    yield "roialign_v10", model(
        [helper.make_node("RoiAlign", ["x", "r", "b"], ["y"], output_height=2, output_width=2, sampling_ratio=2)],
        [vi("x", F, [1, 2, 6, 6]), vi("r", F, [2, 4]), vi("b", TensorProto.INT64, [2])],
        [vi("y", F, [2, 2, 2, 2])],
        10,
    ), {"x": xr, "r": rois, "b": np.zeros(2, np.int64)}, "ort"

    grid = rng.uniform(-1, 1, (1, 3, 3, 2)).astype(np.float32)
    xgs = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
    yield "gridsample_v16_bilinear", model(
        [helper.make_node("GridSample", ["x", "g"], ["y"], mode="bilinear")],
        [vi("x", F, [1, 1, 4, 4]), vi("g", F, [1, 3, 3, 2])],
        [vi("y", F, [1, 1, 3, 3])],
        16,
    ), {"x": xgs, "g": grid}, "ort"


def gen(out):
    import onnxruntime as ort

    os.makedirs(out, exist_ok=True)
    for name, m, feeds, expected in cases():
        path = os.path.join(out, name + ".onnx")
        onnx.save(m, path)
        if expected == "ort":
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            expected = sess.run(None, feeds)
        arrays = {f"in_{k}": v for k, v in feeds.items()}
        arrays.update({f"out_{i}": np.asarray(v) for i, v in enumerate(expected)})
        np.savez(os.path.join(out, name + ".npz"), **arrays)
        print(name)


def run(path, feeds):
    from onnx.reference import ReferenceEvaluator

    try:
        return ReferenceEvaluator(path).run(None, feeds)
    except Exception as ref_err:  # noqa: BLE001 - fall back to onnxruntime
        import onnxruntime as ort

        try:
            return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)
        except Exception as ort_err:  # noqa: BLE001
            raise RuntimeError(f"reference: {ref_err}; onnxruntime: {ort_err}") from None


def check(cases_dir, exported):
    for f in sorted(os.listdir(cases_dir)):
        if not f.endswith(".npz"):
            continue
        name = f[:-4]
        data = np.load(os.path.join(cases_dir, f))
        feeds = {k[3:]: data[k] for k in data.files if k.startswith("in_")}
        expected = [data[f"out_{i}"] for i in range(sum(k.startswith("out_") for k in data.files))]
        path = os.path.join(exported, name + ".onnx")
        try:
            onnx.checker.check_model(path, full_check=True)
            got = run(path, feeds)
        except Exception as e:  # noqa: BLE001
            print(f"FAIL {name}\t{' '.join(str(e).split())[:300]}")
            continue
        bad = [
            i
            for i, (g, e) in enumerate(zip(got, expected))
            if np.asarray(g).shape != e.shape or not np.allclose(np.asarray(g, np.float64), e, rtol=1e-4, atol=1e-5)
        ]
        print(f"FAIL {name}\toutputs {bad} differ" if bad else f"OK {name}")


if __name__ == "__main__":
    if sys.argv[1] == "gen":
        gen(sys.argv[2])
    else:
        check(sys.argv[2], sys.argv[3])

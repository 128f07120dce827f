"""Runs re-exported node-suite models on their test data with onnx's
reference evaluator and compares with the expected outputs.

stdin: lines "<exported model>\t<node case folder>". Prints per case
"OK <case>", "FAIL <case>\t<why>", or "SKIP <case>\t<why>" when the
reference evaluator cannot reproduce the expected outputs from the original
model either (so it cannot judge the export).
"""
import glob
import os
import signal
import sys

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator


def load_pb(path, vi):
    b = open(path, "rb").read()
    kind = vi.type.WhichOneof("value")
    if kind == "sequence_type":
        s = onnx.SequenceProto()
        s.ParseFromString(b)
        return numpy_helper.to_list(s)
    if kind == "optional_type":
        s = onnx.OptionalProto()
        s.ParseFromString(b)
        return numpy_helper.to_optional(s)
    t = onnx.TensorProto()
    t.ParseFromString(b)
    return numpy_helper.to_array(t)


def close(a, b):
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(close, a, b))
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "OSU" or b.dtype.kind in "OSU":
        return bool((a == b).all())
    return np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=1e-3, atol=1e-5, equal_nan=True)


def matches(model, case):
    sess = ReferenceEvaluator(model)
    for ds in sorted(glob.glob(os.path.join(case, "test_data_set_*"))):
        feeds = {}
        for i, vi in enumerate(model.graph.input):
            p = os.path.join(ds, f"input_{i}.pb")
            if os.path.exists(p):
                feeds[vi.name] = load_pb(p, vi)
        expected = [load_pb(os.path.join(ds, f"output_{i}.pb"), vi) for i, vi in enumerate(model.graph.output)]
        got = sess.run(None, feeds)
        if not all(map(close, got, expected)):
            return False
    return True


class Timeout(Exception):
    pass


def on_alarm(*_):
    raise Timeout()


signal.signal(signal.SIGALRM, on_alarm)
for line in sys.stdin:
    if not line.strip():
        continue
    exported, case = line.rstrip("\n").split("\t")
    name = os.path.basename(case)
    signal.alarm(30)
    try:
        try:
            original_ok = matches(onnx.load(os.path.join(case, "model.onnx")), case)
        except Exception as e:  # noqa: BLE001
            original_ok = False
        if not original_ok:
            print(f"SKIP {name}\tthe reference evaluator does not reproduce the original", flush=True)
            continue
        try:
            ok = matches(onnx.load(exported), case)
            print(f"OK {name}" if ok else f"FAIL {name}\toutputs differ", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"FAIL {name}\t{' '.join(str(e).split())[:300]}", flush=True)
    except Timeout:
        print(f"SKIP {name}\ttimed out", flush=True)
    finally:
        signal.alarm(0)

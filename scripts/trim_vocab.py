#!/usr/bin/env python3
"""Cuts a model's token-embedding tables down to the rows its reference
inputs use, so the model and its data travel in less space, with the same
outputs.

A token-embedding table is an initializer read by a Gather (axis 0) whose
indices are a graph input directly. Its rows are replaced by the rows of the
ids that occur in that input in the reference data, and the input's ids are
renumbered to match: the Gather then reads the very same vectors, so every
output is unchanged. Nothing else in the model is touched.

Usage: trim_vocab.py MODEL.onnx DATA.safetensors OUT.onnx OUT.data.safetensors
"""

import sys

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import load_file, save_file


def main(model_path, data_path, out_model, out_data):
    model = onnx.load(model_path)
    data = load_file(data_path)
    graph = model.graph
    inputs = {i.name for i in graph.input}
    inits = {t.name: t for t in graph.initializer}
    # Which initializer tables each id input indexes.
    tables = {}
    for node in graph.node:
        if node.op_type != "Gather" or len(node.input) < 2:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        table, ids = node.input[0], node.input[1]
        if axis == 0 and table in inits and ids in inputs and ids in data:
            tables.setdefault(ids, set()).add(table)
    if not tables:
        sys.exit(f"trim_vocab: {model_path} has no Gather of an initializer by a graph input; nothing to trim")
    used_by_table = {}
    for ids, names in tables.items():
        for name in names:
            used_by_table.setdefault(name, set()).add(ids)
    for name, id_inputs in used_by_table.items():
        if len(id_inputs) > 1:
            sys.exit(f"trim_vocab: table {name} is indexed by several inputs ({sorted(id_inputs)}); not trimmed")
    for ids, names in tables.items():
        values = data[ids]
        used = np.unique(values)
        rows = {len(numpy_helper.to_array(inits[n])) for n in names}
        if used.min() < 0 or used.max() >= min(rows):
            sys.exit(f"trim_vocab: input {ids} holds ids outside its tables' {min(rows)} rows")
        for name in names:
            table = numpy_helper.to_array(inits[name])
            inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(table[used]), name))
            print(f"trim_vocab: {name}: {len(table)} -> {len(used)} rows")
        data[ids] = np.searchsorted(used, values).astype(values.dtype)
    onnx.save(model, out_model)
    save_file(data, out_data)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])

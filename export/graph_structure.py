"""The structure of an ONNX graph, apart from its weight values: what decides TensorRT refit.

A TensorRT engine built with the REFIT flag can take new weights in seconds instead of a
rebuild in minutes, but only weights: same layers, same tensor names, same shapes and
dtypes. Trained methods (EfficientAD, STFPM) produce exactly that on every refresh, so
the manifest carries `refit.structure_sha256`, a hash of the graph with every
initializer's values removed. Two bundles with equal structure hashes can share an
engine through refit; the graph hash (`files["model.onnx"]`) still tells them apart.

Initializer names stay in the hash on purpose: refit looks weights up by name.
"""

from __future__ import annotations

import hashlib
import os

import onnx

_VALUE_FIELDS = (
    "raw_data",
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
)


def structure_sha256(model_path: str | os.PathLike[str]) -> str:
    """sha256 of the graph with initializer values, doc strings and producer info removed."""
    model = onnx.load(str(model_path), load_external_data=False)
    model.ClearField("producer_name")
    model.ClearField("producer_version")
    model.ClearField("doc_string")
    del model.metadata_props[:]
    graph = model.graph
    graph.ClearField("doc_string")
    for init in graph.initializer:
        for name in _VALUE_FIELDS:
            init.ClearField(name)
        del init.external_data[:]
        init.ClearField("data_location")
        init.ClearField("doc_string")
    for node in graph.node:  # stack traces and source lines that the torch exporter records
        node.ClearField("doc_string")
        if hasattr(node, "metadata_props"):  # onnx >= 1.16
            del node.metadata_props[:]
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()

"""ScoringGraph -> ONNX: the whole scoring path, uint8 frames in, normalised map and score out.

Which exporter, and why: the torch.export-based ("dynamo") exporter traces with a
symbolic batch and concrete sizes everywhere else, so every intermediate shape in the
ONNX graph is static apart from `batch` and the shape arithmetic folds away. The
legacy TorchScript exporter records `Shape -> Gather -> Concat` chains for every
`x.shape[...]` in the module, which leaves unknown dims after ONNX shape inference.
So `exporter="auto"` uses dynamo, and falls back to the legacy exporter only if
torch.export cannot capture the module (the static checks then say what is dynamic).

The dynamo exporter emits opset 18. TensorRT 8.6 (JetPack 6.0) parses opsets up to 17,
so the graph is converted down with ONNX's version converter, and the few opset-18
attributes it leaves behind at their default values are removed (see `_downgrade`).

The data arrays (memory banks, Gaussians, normalisation) are graph inputs with static
shapes, never initializers, so a bank-only refresh reuses a compiled engine.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from linewatch.contract.graph_io import (
    ANOMALY_MAP,
    BATCH_DIM,
    FRAMES,
    OUTPUT_NAMES,
    RESERVED_NAMES,
    SCORE,
    TASK,
    output_shapes,
)
from linewatch.export.shapes import infer_shapes
from linewatch.trainer.methods.base import ScoringGraph

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
_DYNAMO_OPSET = 18
# Attributes that opset 18 added to ops whose opset-17 schema lacks them, with the value
# that means "behave like opset 17". Anything else cannot be downgraded.
_OPSET18_DEFAULTS: dict[str, dict[str, Any]] = {
    "ReduceMax": {"noop_with_empty_axes": 0},
    "ReduceMin": {"noop_with_empty_axes": 0},
    "ReduceMean": {"noop_with_empty_axes": 0},
    "ReduceProd": {"noop_with_empty_axes": 0},
    "ReduceL1": {"noop_with_empty_axes": 0},
    "ReduceL2": {"noop_with_empty_axes": 0},
    "ReduceLogSum": {"noop_with_empty_axes": 0},
    "ReduceLogSumExp": {"noop_with_empty_axes": 0},
    "ReduceSumSquare": {"noop_with_empty_axes": 0},
    "Resize": {"antialias": 0, "keep_aspect_ratio_policy": b"stretch"},
}


class ExportError(RuntimeError):
    """The graph could not be exported, or the exported graph breaks the bundle contract."""


@dataclass
class OnnxExport:
    """What was exported and how: recorded in the manifest's `export` section."""

    path: Path
    exporter: str
    opset: int
    input_names: list[str]
    output_names: list[str]
    seconds: float
    torch_version: str = torch.__version__
    notes: list[str] = field(default_factory=list)

    def as_manifest(self) -> dict[str, Any]:
        return {
            "exporter": self.exporter,
            "opset": self.opset,
            "torch": self.torch_version,
            "onnx": onnx.__version__,
            "seconds": round(self.seconds, 3),
        }


def _example_inputs(graph: ScoringGraph, max_batch: int) -> tuple[torch.Tensor, ...]:
    """Trace with batch 2 (or 1 if max_batch is 1): batch 1 would let torch specialise it."""
    h, w = graph.input_hw
    b = 2 if max_batch >= 2 else 1
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 256, size=(b, h, w, 3), dtype=np.uint8))
    data = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in graph.data_inputs.values())
    return (frames, *data)


def _validate_graph(graph: ScoringGraph) -> None:
    names = list(graph.data_inputs)
    for n in names:
        if not n.replace("_", "").replace("-", "").replace(".", "").isalnum() or n.startswith("."):
            raise ExportError(f"data input name {n!r} must be alphanumeric (it becomes <name>.npy)")
    clash = RESERVED_NAMES.intersection(names)
    if clash:
        raise ExportError(f"data input names {sorted(clash)} clash with graph input/output names")
    for n, a in graph.data_inputs.items():
        if not isinstance(a, np.ndarray) or a.dtype == object:
            raise ExportError(f"data input {n} must be a numeric numpy array, got {type(a).__name__}")
    h, w = graph.input_hw
    if h <= 0 or w <= 0:
        raise ExportError(f"input_hw must be positive, got {graph.input_hw}")


def _export_dynamo(
    module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, names: list[str], max_batch: int
) -> None:
    from torch.export import Dim

    batch = Dim(BATCH_DIM, min=1, max=max(2, max_batch))
    dynamic_shapes = ({0: batch}, *([None] * (len(args) - 1)))
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            None,
            dynamo=True,
            opset_version=_DYNAMO_OPSET,
            input_names=names,
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    log.debug("dynamo exporter output:\n%s", sink.getvalue())
    assert program is not None
    program.save(str(path), external_data=False)


def _export_legacy(
    module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, names: list[str], opset: int
) -> None:
    axes = {FRAMES: {0: BATCH_DIM}, **{o: {0: BATCH_DIM} for o in OUTPUT_NAMES}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            do_constant_folding=True,
            keep_initializers_as_inputs=False,
        )


def _downgrade(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Convert an opset-18 graph to `opset`, dropping opset-18-only attributes at their defaults."""
    current = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if current <= opset:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, opset)
    except Exception as e:
        raise ExportError(f"cannot convert the graph from opset {current} to {opset}: {e}") from e
    for node in converted.graph.node:
        defaults = _OPSET18_DEFAULTS.get(node.op_type, {})
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
        allowed = set(schema.attributes)
        keep = []
        for attr in node.attribute:
            if attr.name in allowed:
                keep.append(attr)
                continue
            value = onnx.helper.get_attribute_value(attr)
            if attr.name in defaults and value == defaults[attr.name]:
                continue
            raise ExportError(
                f"node {node.name} ({node.op_type}) uses {attr.name}={value!r}, which opset {opset} lacks"
            )
        del node.attribute[:]
        node.attribute.extend(keep)
    return converted


def _cast_frames_first(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make `frames` feed nothing but one Cast to float, as TensorRT requires of uint8 inputs.

    The natural torch spelling `frames.permute(0, 3, 1, 2).float()` transposes the uint8
    tensor first, and `frames.shape[0]` becomes a `Shape` of it. Both are exact on the
    float copy instead: a Transpose followed only by Casts to one float type is swapped
    with them, and a Shape reads the cast tensor (same shape). Anything else is left
    for the static checks to report.
    """
    g = model.graph
    outputs = {o.name for o in g.output}
    consumers = [n for n in g.node if FRAMES in n.input]
    if all(n.op_type == "Cast" for n in consumers):
        return model
    if any(n.op_type not in ("Transpose", "Shape", "Cast") for n in consumers):
        return model
    transposes = [n for n in consumers if n.op_type == "Transpose"]
    float_type = onnx.TensorProto.FLOAT
    swap: dict[str, set[str]] = {}  # transpose output -> outputs of the casts it replaces
    for t in transposes:
        t_out = t.output[0]
        casts = [n for n in g.node if t_out in n.input]
        to = {onnx.helper.get_attribute_value(a) for c in casts for a in c.attribute if a.name == "to"}
        if not casts or any(c.op_type != "Cast" for c in casts) or t_out in outputs or len(to) != 1:
            return model
        float_type = int(to.pop())
        swap[t_out] = {c.output[0] for c in casts}
    dropped = set().union(*swap.values()) if swap else set()
    if dropped & outputs:
        return model
    cast_out = f"{FRAMES}_as_float"
    new_cast = onnx.helper.make_node(
        "Cast", [FRAMES], [cast_out], to=float_type, name="linewatch/cast_frames"
    )
    replace = {c: t_out for t_out, cs in swap.items() for c in cs}
    nodes: list[onnx.NodeProto] = [new_cast]
    for n in g.node:
        if n.op_type == "Cast" and n.output[0] in dropped:
            continue
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        for i, name in enumerate(copy.input):
            if name == FRAMES and copy.op_type in ("Transpose", "Shape"):
                copy.input[i] = cast_out
            elif name in replace:
                copy.input[i] = replace[name]
        nodes.append(copy)
    del g.node[:]
    g.node.extend(nodes)
    # The transposes now carry floats; the exporter's (exact, symbolic) shapes stay valid.
    for vi in g.value_info:
        if vi.name in swap:
            vi.type.tensor_type.elem_type = float_type
    return model


def _strip_metadata(model: onnx.ModelProto) -> None:
    """Drop exporter bookkeeping that changes between runs (keeps graph hashes comparable)."""
    protos = [*model.graph.input, *model.graph.output, *model.graph.value_info, *model.graph.node]
    for proto in [*protos, *model.graph.initializer]:
        if hasattr(proto, "metadata_props"):  # onnx >= 1.16
            del proto.metadata_props[:]


def export_onnx(
    graph: ScoringGraph,
    path: str | os.PathLike[str],
    max_batch: int,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
) -> OnnxExport:
    """Export `graph.module` to `path`; check it, infer shapes, and save with value_info.

    Inputs: `frames` (uint8, [batch, H, W, 3]) then one input per data array in
    `graph.data_inputs` order (static shapes). Outputs: `anomaly_map` [batch, H, W],
    `score` [batch], `task` [batch] (int64). Raises ExportError when the result breaks
    this contract (for example a data input the graph does not use, which an exporter
    silently drops).
    """
    if exporter not in ("auto", "dynamo", "legacy"):
        raise ValueError(f"exporter must be auto, dynamo or legacy, got {exporter!r}")
    if opset < 13:
        raise ValueError("opset must be >= 13")
    _validate_graph(graph)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = graph.module.eval()
    args = _example_inputs(graph, max_batch)
    names = [FRAMES, *graph.data_inputs]
    notes: list[str] = []
    t0 = time.perf_counter()
    used = exporter
    with torch.no_grad():
        if exporter in ("auto", "dynamo"):
            try:
                _export_dynamo(module, args, path, names, max_batch)
                used = "dynamo"
            except Exception as e:
                if exporter == "dynamo":
                    raise ExportError(f"dynamo export failed: {e}") from e
                notes.append(f"dynamo export failed ({type(e).__name__}: {e}); used the legacy exporter")
                log.warning(notes[-1])
                used = "legacy"
        if used == "legacy":
            try:
                _export_legacy(module, args, path, names, opset)
            except Exception as e:
                raise ExportError(f"legacy export failed: {e}") from e

    model = onnx.load(str(path))
    model = _downgrade(model, opset)
    model = _cast_frames_first(model)
    _strip_metadata(model)
    model.producer_name = "linewatch-export"
    model.doc_string = "linewatch scoring graph: uint8 NHWC frames -> anomaly_map, score, task"
    try:
        onnx.checker.check_model(model, full_check=True)
        model = infer_shapes(model)
    except Exception as e:
        raise ExportError(f"exported graph fails the ONNX checker / shape inference: {e}") from e
    _check_contract(model, graph)
    onnx.save(model, str(path))
    seconds = time.perf_counter() - t0
    got_opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return OnnxExport(path, used, got_opset, names, list(OUTPUT_NAMES), seconds, notes=notes)


def _dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    out: list[int | str | None] = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _check_contract(model: onnx.ModelProto, graph: ScoringGraph) -> None:
    """Inputs, outputs, dtypes and shapes exactly as the bundle contract says."""
    h, w = graph.input_hw
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    got = [i.name for i in inputs]
    want = [FRAMES, *graph.data_inputs]
    if got != want:
        missing = [n for n in want if n not in got]
        hint = f" (unused by the graph, so the exporter dropped them: {missing})" if missing else ""
        raise ExportError(f"graph inputs are {got}, expected {want}{hint}")
    consumed = {i for n in model.graph.node for i in n.input}
    for name in graph.data_inputs:
        if name in initializers:
            raise ExportError(f"data input {name} became an initializer; it must stay a graph input")
        if name not in consumed:
            # TensorRT drops unused inputs from the engine, so the bundle and engine would disagree.
            raise ExportError(f"data input {name} is unused by the graph; leave it out of data_inputs")
    frames = inputs[0]
    if frames.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        raise ExportError("frames must be uint8")
    if _dims(frames) != [BATCH_DIM, h, w, 3]:
        raise ExportError(f"frames shape is {_dims(frames)}, expected ['{BATCH_DIM}', {h}, {w}, 3]")
    for vi, (name, arr) in zip(inputs[1:], graph.data_inputs.items(), strict=True):
        want_type = onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
        if _dims(vi) != list(arr.shape) or vi.type.tensor_type.elem_type != want_type:
            raise ExportError(
                f"data input {name}: graph has {_dims(vi)}, array is {arr.dtype}{list(arr.shape)}"
            )
    outs = {o.name: o for o in model.graph.output}
    if list(outs) != list(OUTPUT_NAMES):
        raise ExportError(f"graph outputs are {list(outs)}, expected {list(OUTPUT_NAMES)}")
    for name, shape in output_shapes((h, w)).items():
        if _dims(outs[name]) != shape:
            raise ExportError(f"output {name} has shape {_dims(outs[name])}, expected {shape}")
    float_t = onnx.TensorProto.FLOAT
    if (
        outs[ANOMALY_MAP].type.tensor_type.elem_type != float_t
        or outs[SCORE].type.tensor_type.elem_type != float_t
    ):
        raise ExportError("anomaly_map and score must be float32")
    if outs[TASK].type.tensor_type.elem_type != onnx.TensorProto.INT64:
        raise ExportError("task must be int64")

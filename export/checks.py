"""Static checks on an exported graph, run before a bundle is written.

Why static: a graph that TensorRT cannot parse, that has a dynamic dim somewhere, or
that needs gigabytes for one intermediate tensor fails on the box, on the line, long
after export. These checks catch it on the export machine, without a GPU:

(a) `check_tensorrt_ops`: every op is in the TensorRT ONNX parser's support matrix, and
    the parser's documented restrictions that matter here hold (constant axes/K,
    supported Resize modes, uint8 only as the network input and immediately cast).
(b) `check_static_shapes`: after ONNX shape inference every tensor's dims are ints or
    the `batch` symbol.
(c) `largest_intermediate`: the biggest tensor with batch = max_batch, < 2**31 elements
    (TensorRT's per-tensor volume limit).
(d) `check_memory`: the largest few intermediates together stay under a bound.

The operator list is the TensorRT 8.6 ONNX parser's (onnx-tensorrt `docs/operators.md`
for the 8.5/8.6 releases, opset <= 17). TensorRT 10.x supports a superset, so a graph
that passes here parses on both. Random*, and the deprecated ImageScaler, Upsample,
Scatter, ScaledTanh and ParametricSoftplus, are left out on purpose: a scoring graph
must be deterministic and current.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from linewatch.contract.graph_io import BATCH_DIM, FRAMES
from linewatch.export.shapes import infer_shapes

TRT_OPS_VERSION = "TensorRT 8.6 ONNX parser (opset <= 17); TensorRT 10.x supports a superset"
TRT_MAX_OPSET = 17
TRT_MAX_TENSOR_ELEMENTS = 2**31 - 1

_TRT_OPS_TEXT = """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    Cast Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
    DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten
    Floor Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
    Greater GreaterOrEqual GridSample GRU HardSigmoid HardSwish Identity If InstanceNormalization
    IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
    LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg
    NonMaxSuppression NonZero Not OneHot Or Pad Pow PRelu QuantizeLinear Range Reciprocal
    ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
    ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round Scan
    ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
    Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose
    Trilu Unsqueeze Where Xor
"""
TRT_SUPPORTED_OPS: frozenset[str] = frozenset(_TRT_OPS_TEXT.split())
# Inputs the parser needs as constants (initializer or Constant node): op -> input index.
_CONSTANT_INPUTS: dict[str, tuple[int, ...]] = {
    "TopK": (1,),
    "Slice": (3,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "CumSum": (1,),
    "Conv": (1,),
    "ConvTranspose": (1,),
}
_RESIZE_MODES = {b"nearest", b"linear"}
_RESIZE_COORDS = {
    b"half_pixel",
    b"pytorch_half_pixel",
    b"tf_half_pixel_for_nn",
    b"asymmetric",
    b"align_corners",
}


@dataclass
class CheckLimits:
    """Bounds for check (d); the defaults fit an 8 GB Jetson Orin with room for the runtime."""

    max_tensor_elements: int = TRT_MAX_TENSOR_ELEMENTS
    top_k: int = 3
    max_top_k_bytes: int = 4 * 2**30


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


class StaticCheckError(RuntimeError):
    """One or more static checks failed; the message lists each."""


@dataclass
class StaticReport:
    results: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def raise_for_failures(self) -> None:
        bad = [f"{r.name}: {r.detail}" for r in self.results if not r.ok]
        if bad:
            raise StaticCheckError("static checks failed:\n  " + "\n  ".join(bad))

    def as_manifest(self) -> dict[str, Any]:
        return {r.name: {"ok": r.ok, "detail": r.detail, **r.data} for r in self.results}


def _load(model: onnx.ModelProto | str | os.PathLike[str]) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(Path(model)))


def _constant_names(model: onnx.ModelProto) -> set[str]:
    """Initializers, Constant outputs, and DequantizeLinear of constants: the parser takes a
    quantised weight (an INT8 graph's `initializer -> DequantizeLinear -> Conv`) as a constant."""
    names = {i.name for i in model.graph.initializer}
    names.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    names.update(
        n.output[0]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and all(i in names for i in n.input if i)
    )
    return names


def check_tensorrt_ops(model: onnx.ModelProto | str | os.PathLike[str]) -> CheckResult:
    """(a) Every node is a TensorRT-parseable ONNX op and meets the parser's restrictions."""
    m = _load(model)
    problems: list[str] = []
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset > TRT_MAX_OPSET:
        problems.append(f"opset {opset} > {TRT_MAX_OPSET}")
    if len(m.functions):
        problems.append(f"local functions {[f.name for f in m.functions]} (inline them)")
    constants = _constant_names(m)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    unsupported: set[str] = set()
    for n in m.graph.node:
        if n.domain not in ("", "ai.onnx"):
            problems.append(f"{n.name}: custom domain {n.domain}::{n.op_type}")
            continue
        if n.op_type not in TRT_SUPPORTED_OPS:
            unsupported.add(n.op_type)
            continue
        for idx in _CONSTANT_INPUTS.get(n.op_type, ()):
            if idx < len(n.input) and n.input[idx] and n.input[idx] not in constants:
                problems.append(f"{n.name} ({n.op_type}): input {idx} must be a constant for TensorRT")
        if n.op_type == "Resize":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            if attrs.get("mode", b"nearest") not in _RESIZE_MODES:
                problems.append(f"{n.name}: Resize mode {attrs.get('mode')!r} unsupported")
            if attrs.get("coordinate_transformation_mode", b"half_pixel") not in _RESIZE_COORDS:
                problems.append(
                    f"{n.name}: Resize coordinate mode {attrs['coordinate_transformation_mode']!r}"
                )
        if n.op_type == "MaxPool" and len(n.output) > 1 and n.output[1]:
            problems.append(f"{n.name}: MaxPool Indices output unsupported")
    if unsupported:
        problems.append(f"ops not in the TensorRT support matrix: {sorted(unsupported)}")
    # TensorRT accepts uint8 only as a network input that is cast right away.
    for inp in m.graph.input:
        if inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8:
            bad = [c.op_type for c in consumers.get(inp.name, []) if c.op_type != "Cast"]
            if bad:
                problems.append(f"uint8 input {inp.name} feeds {bad}: TensorRT needs a Cast first")
    ops = sorted({n.op_type for n in m.graph.node})
    return CheckResult(
        "tensorrt_ops",
        not problems,
        "; ".join(problems) or f"{len(ops)} op types, all supported ({TRT_OPS_VERSION})",
        {"ops": ops, "basis": TRT_OPS_VERSION},
    )


def _dims(vi: onnx.ValueInfoProto) -> list[int | str | None] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference on top of the exporter's value_info.

    The exporter's shapes come from torch.export's symbolic tracing and are exact;
    ONNX inference alone cannot carry a symbolic batch through `Shape -> Concat ->
    Reshape`, so it only fills in what the exporter left out.
    """
    return infer_shapes(model)


_EXPR_OK = re.compile(r"^[0-9a-z_+\-*/() ]+$")


def _eval_dim(dim: str, batch: int) -> int | None:
    """Evaluate a symbolic dim such as `batch` or `64*batch` with batch substituted."""
    if not _EXPR_OK.match(dim) or re.sub(r"\bbatch\b", "", dim).strip("0123456789+-*/() ") != "":
        return None
    try:
        value = eval(
            re.sub(r"\bbatch\b", str(int(batch)), dim), {"__builtins__": {}}, {}
        )  # only digits, operators and the batch value remain
    except Exception:
        return None
    return int(value) if isinstance(value, (int, float)) and float(value).is_integer() else None


def _tensor_infos(m: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Every non-constant tensor the graph computes: value_info and outputs."""
    consts = {i.name for i in m.graph.initializer}
    return [vi for vi in [*m.graph.value_info, *m.graph.output] if vi.name not in consts]


def check_static_shapes(model: onnx.ModelProto | str | os.PathLike[str]) -> CheckResult:
    """(b) After shape inference, every dim of every tensor is an int or the batch symbol."""
    m = _inferred(_load(model))
    produced = {o for n in m.graph.node for o in n.output if o}
    known = {vi.name for vi in _tensor_infos(m)} | {i.name for i in m.graph.input}
    problems: list[str] = []
    for name in sorted(produced - known - {i.name for i in m.graph.initializer}):
        problems.append(f"{name}: no inferred shape")
    for vi in [*m.graph.input, *_tensor_infos(m)]:
        dims = _dims(vi)
        if dims is None:
            problems.append(f"{vi.name}: unknown rank")
            continue
        bad = [
            d
            for d in dims
            if not (isinstance(d, int) or (isinstance(d, str) and _eval_dim(d, 1) is not None))
        ]
        if bad:
            problems.append(f"{vi.name}: dims {dims}")
    for inp in m.graph.input:
        dims = _dims(inp) or []
        if inp.name != FRAMES and BATCH_DIM in dims:
            problems.append(f"data input {inp.name} has a batch dim: it must be static")
    shown = problems[:10] + ([f"... {len(problems) - 10} more"] if len(problems) > 10 else [])
    return CheckResult(
        "static_shapes",
        not problems,
        "; ".join(shown) or "all dims static apart from batch",
        {"n_tensors": len(_tensor_infos(m)), "n_dynamic": len(problems)},
    )


def intermediates(
    model: onnx.ModelProto | str | os.PathLike[str], max_batch: int
) -> list[tuple[str, int, int]]:
    """(name, elements, bytes) of every computed tensor with batch = max_batch, largest first.

    Raises ValueError when some tensor's size cannot be resolved (check (b) says why).
    """
    m = onnx.ModelProto()
    m.CopyFrom(_inferred(_load(model)))
    # Substitute the batch everywhere (exporter shapes are exact), then let inference
    # resolve whatever was still unknown from the now concrete input shapes.
    for vi in [*m.graph.input, *m.graph.output, *m.graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                value = _eval_dim(d.dim_param, max_batch)
                d.Clear()
                if value is not None:
                    d.dim_value = value
    inf = _inferred(m)
    rows: list[tuple[str, int, int]] = []
    unresolved: list[str] = []
    for vi in _tensor_infos(inf):
        dims = _dims(vi)
        if dims is None or not all(isinstance(d, int) for d in dims):
            unresolved.append(vi.name)
            continue
        elements = math.prod(dims)  # type: ignore[arg-type]
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).itemsize
        rows.append((vi.name, int(elements), int(elements * itemsize)))
    if unresolved:
        raise ValueError(f"sizes unresolved with batch={max_batch}: {unresolved[:10]}")
    rows.sort(key=lambda r: r[1], reverse=True)
    return rows


def largest_intermediate(
    model_path: onnx.ModelProto | str | os.PathLike[str], max_batch: int
) -> tuple[str, int]:
    """(c) The name and element count of the biggest computed tensor at batch = max_batch."""
    rows = intermediates(model_path, max_batch)
    if not rows:
        return "", 0
    return rows[0][0], rows[0][1]


def check_largest(
    model: onnx.ModelProto | str | os.PathLike[str], max_batch: int, limits: CheckLimits | None = None
) -> CheckResult:
    """(c) as a check: the biggest tensor stays under TensorRT's 2**31 element limit."""
    lim = limits or CheckLimits()
    try:
        rows = intermediates(model, max_batch)
    except ValueError as e:
        return CheckResult("largest_intermediate", False, str(e))
    name, elements, nbytes = rows[0] if rows else ("", 0, 0)
    ok = elements < lim.max_tensor_elements
    detail = f"{name}: {elements:,} elements, {nbytes / 2**20:.1f} MiB at batch {max_batch}"
    if not ok:
        detail += f" (limit {lim.max_tensor_elements:,} elements: lower max_batch or chunk the computation)"
    return CheckResult(
        "largest_intermediate",
        ok,
        detail,
        {"name": name, "elements": elements, "bytes": nbytes, "max_batch": int(max_batch)},
    )


def check_memory(
    model: onnx.ModelProto | str | os.PathLike[str], max_batch: int, limits: CheckLimits | None = None
) -> CheckResult:
    """(d) The `top_k` largest intermediates together stay under `max_top_k_bytes`."""
    lim = limits or CheckLimits()
    try:
        rows = intermediates(model, max_batch)
    except ValueError as e:
        return CheckResult("memory", False, str(e))
    top = rows[: lim.top_k]
    total = sum(r[2] for r in top)
    ok = total < lim.max_top_k_bytes
    detail = (
        f"top {len(top)} intermediates use {total / 2**20:.1f} MiB at batch {max_batch} "
        f"(bound {lim.max_top_k_bytes / 2**20:.0f} MiB)"
    )
    return CheckResult(
        "memory",
        ok,
        detail,
        {"top": [{"name": n, "elements": e, "bytes": b} for n, e, b in top], "top_k_bytes": total},
    )


def run_static_checks(
    model_path: str | os.PathLike[str], max_batch: int, limits: CheckLimits | None = None
) -> StaticReport:
    """All four checks; call `.raise_for_failures()` to refuse a bad graph."""
    m = _load(model_path)
    return StaticReport(
        [
            check_tensorrt_ops(m),
            check_static_shapes(m),
            check_largest(m, max_batch, limits),
            check_memory(m, max_batch, limits),
        ]
    )

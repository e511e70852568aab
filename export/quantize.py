"""INT8 graphs (`linewatch-export --int8`): static QDQ quantisation with onnxruntime's tools.

What is quantised, and why: the backbone's convolutions, which are most of a CPU frame after the
chunked kNN (trainer/methods/patchcore/knn.py) and which every x86 CPU with VNNI, OpenVINO and
TensorRT run fastest in int8. The bank distance is NOT quantised by default: the nearest-neighbour
distance is a small difference of large terms (||q||^2 - 2 q.b + ||b||^2), and a per-tensor int8
q.b carries an error of about 1% of |q||b|, the size of the distance itself; `ops` can add
"Gemm" to measure it (benchmarks/int8_accuracy.py does).

How: onnxruntime.quantization.quantize_static, QDQ format, int8 activations and weights,
symmetric (zero point 0: the only form TensorRT takes), weights per channel, MinMax ranges from
calibration frames of the TRAINING set (never the test images the metrics are measured on). The
data inputs (bank, Gaussians) are fed as they are; they are not quantised.

The INT8 graph is then the bundle's model. Its golden samples are the INT8 graph's own outputs
on onnxruntime's CPU provider, with their own, wider tolerances (`GOLDEN_ATOL`, written into the
manifest's golden entry like every tolerance): other backends round int8 requantisation
differently. INT8 must keep FP32's task routing on the golden frames (`FP32_DRIFT`); how far its
scores moved is recorded (`quantization.fp32_parity`); accuracy on real images is
benchmarks/int8_accuracy.py's job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from linewatch.contract.graph_io import FRAMES
from linewatch.export.onnx_export import ExportError

log = logging.getLogger(__name__)

# Golden tolerances of an INT8 graph, backend against backend (score, map): manifest `golden`.
GOLDEN_ATOL = (2e-2, 5e-2)
# INT8 against the FP32 torch module on the golden frames, at export: every frame routed to the same
# task, every output finite (scores and maps lie in [0, 1], so a bound of 1 refuses only NaN/inf).
# How far the scores moved is recorded, not bounded: a small model's normalised score can move a
# lot on a few frames, and what matters (AUROC, verdicts on real images) is measured by
# benchmarks/int8_accuracy.py.
FP32_DRIFT = (1.0, 1.0)
DEFAULT_OPS = ("Conv",)


class _Frames:
    """onnxruntime's CalibrationDataReader protocol: one feed per calibration frame."""

    def __init__(self, frames: np.ndarray, data_inputs: dict[str, np.ndarray]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = (
            {FRAMES: np.ascontiguousarray(f[None]), **data_inputs} for f in frames
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    data_inputs: dict[str, np.ndarray],
    calibration: np.ndarray,
    ops: tuple[str, ...] = DEFAULT_OPS,
) -> dict[str, Any]:
    """Write the INT8 QDQ graph of `fp32_path` to `out_path`; return the manifest's `quantization`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if calibration.ndim != 4 or calibration.dtype != np.uint8 or len(calibration) == 0:
        raise ExportError(
            f"INT8 calibration needs uint8 (N,H,W,3) frames, got {calibration.dtype}{calibration.shape}"
        )
    reader = _Frames(calibration, {k: np.ascontiguousarray(v) for k, v in data_inputs.items()})
    try:
        quantize_static(
            str(fp32_path),
            str(out_path),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(ops),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    except Exception as e:
        raise ExportError(f"INT8 quantisation failed: {type(e).__name__}: {e}") from e
    model = onnx.load(str(out_path))
    counts = {
        op: sum(n.op_type == op for n in model.graph.node) for op in ("QuantizeLinear", "DequantizeLinear")
    }
    if not counts["QuantizeLinear"]:
        raise ExportError(f"INT8 quantisation quantised nothing (ops {list(ops)} not in the graph?)")
    return {
        "precision": "int8",
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ, int8 symmetric activations, int8 per-channel weights",
        "calibration": "MinMax",
        "calibration_frames": len(calibration),
        "ops": list(ops),
        "qdq_nodes": counts,
    }


def replace_with_int8(
    model_path: Path, data_inputs: dict[str, np.ndarray], calibration: np.ndarray
) -> dict[str, Any]:
    """Quantise the exported FP32 graph in place; the entry records the FP32 graph's sha256,
    which a bank-only refresh of this bundle re-exports and compares against."""
    from linewatch.contract.manifest import sha256_file

    fp32 = model_path.with_name("model.fp32.onnx.tmp")
    model_path.rename(fp32)
    try:
        entry = quantize_int8(fp32, model_path, data_inputs, calibration)
        entry["fp32_graph_sha256"] = sha256_file(fp32)
    finally:
        fp32.unlink(missing_ok=True)
    return entry


def fp32_graph_sha256(manifest: dict[str, Any], graph_sha256: str) -> str:
    """The sha256 a re-exported FP32 graph must have to reuse this bundle's graph."""
    quant = manifest.get("quantization") or {}
    return str(quant.get("fp32_graph_sha256", graph_sha256))

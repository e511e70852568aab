"""Shape inference that keeps the batch symbolic: ONNX's, then onnxruntime's symbolic pass.

Why two passes: ONNX's own inference cannot carry a symbolic dim through
`Shape -> Slice -> Concat -> Reshape` (what `x.view(b, ...)` exports to) and leaves a
fresh unknown dim; onnxruntime's symbolic shape inference evaluates those shape
computations with sympy and gives `batch` back. The exporter saves the result as
value_info, so the static checks and TensorRT tooling see every shape.
"""

from __future__ import annotations

import logging

import onnx

log = logging.getLogger(__name__)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX inference (strict, with data propagation), then the symbolic pass where available."""
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:  # the exporter's parity check needs onnxruntime anyway
        return model
    try:
        out = SymbolicShapeInference.infer_shapes(
            model, int_max=2**31 - 1, auto_merge=False, guess_output_rank=False
        )
    except Exception as e:  # it is a best-effort refinement: the checks report what stays unknown
        log.warning("symbolic shape inference failed (%s); keeping ONNX's shapes", e)
        return model
    return out if out is not None else model

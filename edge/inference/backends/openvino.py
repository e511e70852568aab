"""OpenVINO backend: what Intel industrial PCs (CPU, often an iGPU) run fastest.

The bundle's own `model.onnx` is read by OpenVINO's ONNX frontend (no conversion step, no extra
file to sign), compiled for `backend.openvino_device` and admitted like every backend: only after
the golden samples pass (`select_backend`).

- Precision: OpenVINO's CPU plugin silently runs in bf16 on CPUs that have it (AMX/AVX512-BF16)
  and its GPU plugin in f16. That would be a different model from the one the golden samples
  prove, so `INFERENCE_PRECISION_HINT` is pinned to f32 (an INT8 bundle's Q/DQ nodes still run in
  int8: the hint only governs floating-point ops).
- Data inputs (banks, Gaussians) are set on the infer request once, wrapping the bundle's arrays
  without a copy; a frame costs only its own tensor.
- The batch stays dynamic (1..max_batch), as in the graph.
"""

from __future__ import annotations

import logging

import numpy as np

from linewatch.contract.graph_io import FRAMES, OUTPUT_NAMES
from linewatch.edge.config import BackendConfig
from linewatch.edge.inference.backends import BackendUnavailable
from linewatch.edge.model.bundle import Bundle

log = logging.getLogger(__name__)


class OpenVinoBackend:
    """One compiled model and one infer request with the data inputs set once."""

    name = "openvino"

    def __init__(self, bundle: Bundle, cfg: BackendConfig) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendUnavailable(
                f"openvino is not installed (pip install linewatch[openvino]): {exc}"
            ) from exc
        core = ov.Core()
        device = cfg.openvino_device
        family = device.split(".")[0].split(":")[0]
        if family not in ("AUTO", "MULTI", "HETERO") and not any(
            d.split(".")[0] == family for d in core.available_devices
        ):
            raise BackendUnavailable(f"OpenVINO device {device} not present (has {core.available_devices})")
        model = core.read_model(str(bundle.onnx_path))
        inputs = [p.get_any_name() for p in model.inputs]
        if not inputs or inputs[0] != FRAMES:
            raise BackendUnavailable(f"graph's first input must be {FRAMES!r}, got {inputs}")
        missing = [n for n in inputs[1:] if n not in bundle.data_inputs]
        if missing:
            raise BackendUnavailable(f"bundle lacks data inputs {missing} required by the graph")
        outputs = [p.get_any_name() for p in model.outputs]
        if outputs[:3] != list(OUTPUT_NAMES):
            raise BackendUnavailable(f"graph outputs must be {list(OUTPUT_NAMES)}, got {outputs}")
        config: dict[str, object] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        if cfg.threads and family == "CPU":
            config["INFERENCE_NUM_THREADS"] = cfg.threads
        self.compiled = core.compile_model(model, device, config)
        self.request = self.compiled.create_infer_request()
        # Kept referenced: the ov.Tensors share these arrays' memory.
        self._data = {n: np.ascontiguousarray(bundle.data_inputs[n]) for n in inputs[1:]}
        for n, array in self._data.items():
            self.request.set_tensor(n, ov.Tensor(array, shared_memory=True))
        self._ov = ov
        self.device = device

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if frames.dtype != np.uint8 or frames.ndim != 4:
            raise ValueError(f"frames must be uint8 (B,H,W,3), got {frames.dtype}{frames.shape}")
        self.request.set_tensor(FRAMES, self._ov.Tensor(np.ascontiguousarray(frames), shared_memory=True))
        self.request.infer()
        maps, scores, tasks = (self.request.get_tensor(n).data for n in OUTPUT_NAMES)
        return (
            np.array(maps, dtype=np.float32),
            np.array(scores, dtype=np.float32).reshape(-1),
            np.array(tasks, dtype=np.int64).reshape(-1),
        )

    def close(self) -> None:
        self.request = None  # type: ignore[assignment]
        self.compiled = None  # type: ignore[assignment]
        self._data = {}

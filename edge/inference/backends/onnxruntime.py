"""onnxruntime backend with the CPU, CUDA or TensorRT execution provider.

IO binding: the data inputs (memory banks, Gaussians: often hundreds of MB) are turned into
OrtValues on the provider's device ONCE at load and stay bound, so a frame costs only the copy of
the frame batch itself. On CPU the frame batch is bound straight from the caller's buffer (no copy).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from linewatch.contract.graph_io import FRAMES, OUTPUT_NAMES
from linewatch.edge.config import BackendConfig
from linewatch.edge.inference.backends import BackendUnavailable
from linewatch.edge.model.bundle import Bundle

log = logging.getLogger(__name__)

PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-tensorrt": "TensorrtExecutionProvider",
}


class OrtBackend:
    """One InferenceSession with its data inputs bound once."""

    def __init__(self, bundle: Bundle, name: str, cfg: BackendConfig) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed: {exc}") from exc
        provider = PROVIDERS.get(name)
        if provider is None:
            raise BackendUnavailable(f"unknown onnxruntime backend {name!r}")
        available = ort.get_available_providers()
        if provider not in available:
            raise BackendUnavailable(f"{provider} is not in this onnxruntime build (has {available})")
        self.name = name
        self._ort = ort
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if cfg.threads:
            opts.intra_op_num_threads = cfg.threads
        opts.log_severity_level = 3
        # Spinning pool threads would burn the CPU that capture and post-processing need.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if cfg.allow_spinning else "0")
        providers: list[Any] = [provider]
        if provider == "TensorrtExecutionProvider":
            from linewatch.contract.store import engine_cache_dir

            # Beside the bundle with the native engines, so the refresh job prunes both together.
            cache = engine_cache_dir(bundle.base.root if bundle.base is not None else bundle.root) / "ort-trt"
            providers = [
                (
                    provider,
                    {
                        "trt_fp16_enable": cfg.precision == "fp16",
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(cache),
                    },
                ),
                "CUDAExecutionProvider",
            ]
        if provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")
        self.session = ort.InferenceSession(str(bundle.onnx_path), sess_options=opts, providers=providers)
        active = self.session.get_providers()
        if provider not in active:
            raise BackendUnavailable(f"{provider} could not be initialised (session runs on {active})")
        self.device = "cpu" if provider == "CPUExecutionProvider" else "cuda"
        inputs = [i.name for i in self.session.get_inputs()]
        if not inputs or inputs[0] != FRAMES:
            raise BackendUnavailable(f"graph's first input must be {FRAMES!r}, got {inputs}")
        missing = [n for n in inputs[1:] if n not in bundle.data_inputs]
        if missing:
            raise BackendUnavailable(f"bundle lacks data inputs {missing} required by the graph")
        outputs = [o.name for o in self.session.get_outputs()]
        if list(outputs[:3]) != list(OUTPUT_NAMES):
            raise BackendUnavailable(f"graph outputs must be {list(OUTPUT_NAMES)}, got {outputs}")
        self._binding = self.session.io_binding()
        # The data inputs become device-resident OrtValues exactly once and stay bound.
        self._data_values = {
            n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(bundle.data_inputs[n]), self.device, 0)
            for n in inputs[1:]
        }
        for n, value in self._data_values.items():
            self._binding.bind_ortvalue_input(n, value)

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if frames.dtype != np.uint8 or frames.ndim != 4:
            raise ValueError(f"frames must be uint8 (B,H,W,3), got {frames.dtype}{frames.shape}")
        binding = self._binding
        binding.bind_cpu_input(FRAMES, np.ascontiguousarray(frames))
        binding.clear_binding_outputs()
        for name in OUTPUT_NAMES:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        maps, scores, tasks = binding.copy_outputs_to_cpu()[:3]
        return maps, scores, tasks.astype(np.int64, copy=False)

    def close(self) -> None:
        self._binding = None  # type: ignore[assignment]
        self._data_values = {}
        self.session = None  # type: ignore[assignment]

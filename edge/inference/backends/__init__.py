"""Inference backends and the choice between them.

Every backend has the same tiny protocol (``infer`` on a uint8 NHWC RGB batch at model resolution,
returning normalised maps, scores and task ids), so the pipeline never knows which one runs. The
choice walks the configured order (native TensorRT, onnxruntime with the TensorRT, CUDA, then CPU
execution provider; OpenVINO when the config names it); a backend that is not available on this box is skipped with its reason logged,
and a backend is only accepted after the bundle's golden samples pass on it: that is how a TensorRT
build on the box is proven equal to the ONNX graph before a single verdict is published.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from linewatch.edge.config import BackendConfig
from linewatch.edge.model.bundle import Bundle, BundleError, GoldenReport, check_golden

log = logging.getLogger(__name__)


class BackendUnavailable(RuntimeError):
    """This backend cannot run on this box (library, GPU or provider missing); the reason says which."""


class Backend(Protocol):
    name: str

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """frames uint8 (B,H,W,3) RGB -> (maps (B,H,W) float32, scores (B,) float32, tasks (B,) int64)."""
        ...

    def close(self) -> None: ...


@dataclass
class Selection:
    """The backend that passed the golden samples, its report, and why the others were skipped."""

    backend: Any
    report: GoldenReport
    skipped: dict[str, str] = field(default_factory=dict)


def create_backend(name: str, bundle: Bundle, cfg: BackendConfig) -> Backend:
    """Instantiate one backend by name; raises BackendUnavailable with the reason."""
    if name == "tensorrt":
        from linewatch.edge.inference.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(bundle, cfg)
    if name == "openvino":
        from linewatch.edge.inference.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(bundle, cfg)
    if name.startswith("ort-"):
        from linewatch.edge.inference.backends.onnxruntime import OrtBackend

        return OrtBackend(bundle, name, cfg)
    raise BackendUnavailable(f"unknown backend {name!r}")


def warm_up(backend: Backend, bundle: Bundle, runs: int) -> None:
    """Run full-size batches once or twice so the first real frame pays no allocation/tuning cost."""
    h, w = bundle.input_hw
    frames = np.zeros((bundle.max_batch, h, w, 3), np.uint8)
    for _ in range(runs):
        backend.infer(frames)
        backend.infer(frames[:1])


def select_backend(bundle: Bundle, cfg: BackendConfig, order: list[str] | None = None) -> Selection:
    """The first backend in ``order`` that is available here AND reproduces the golden samples.

    Raises BundleError("golden") when a backend ran but no backend reproduced the golden samples,
    BackendUnavailable when none could even start.
    """
    skipped: dict[str, str] = {}
    golden_error: BundleError | None = None
    for name in order or cfg.order:
        try:
            backend = create_backend(name, bundle, cfg)
        except BackendUnavailable as exc:
            skipped[name] = str(exc)
            log.info("backend skipped", extra={"backend": name, "reason": str(exc)})
            continue
        except Exception as exc:  # a provider that crashes on this graph: try the next one
            skipped[name] = f"failed to start: {exc}"
            log.warning("backend failed to start", extra={"backend": name, "error": str(exc)})
            continue
        try:
            report = check_golden(bundle, backend.infer, batch_size=bundle.max_batch)
        except BundleError as exc:
            backend.close()
            skipped[name] = str(exc)
            golden_error = golden_error or exc
            log.warning("golden samples failed on backend", extra={"backend": name, "error": str(exc)})
            continue
        except Exception as exc:
            backend.close()
            skipped[name] = f"inference failed: {exc}"
            log.warning("backend failed on golden samples", extra={"backend": name, "error": str(exc)})
            continue
        warm_up(backend, bundle, cfg.warmup_runs)
        log.info(
            "backend selected",
            extra={
                "backend": name,
                "model": bundle.name,
                "version": bundle.version,
                **{f"golden_{k}": v for k, v in report.as_dict().items()},
            },
        )
        return Selection(backend, report, skipped)
    if golden_error is not None:
        raise golden_error
    raise BackendUnavailable("no backend available: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))

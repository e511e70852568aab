"""Native TensorRT backend (pycuda): the fastest path on a Jetson or a GPU box.

- The plan comes from the bundle when one of its engines matches this GPU and TensorRT version;
  otherwise ``edge.model.trt_build.ensure_engine`` builds one from ``model.onnx`` and caches it next to the
  bundle (a later start, or a bank-only refresh of the same graph, reuses it). A retrained model of
  the same structure gets its weights refitted into a copy of the cached plan instead of a rebuild.
- Host buffers are page-locked and every copy is asynchronous on one CUDA stream, so a batch costs
  one H2D copy of the frames, one enqueue and the D2H copies of the outputs.
- The data inputs (memory banks...) are copied to the device ONCE at load and stay bound.
- The CUDA primary context is pushed around each call because loading (model manager thread) and
  inference (pipeline thread) happen on different threads.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from linewatch.contract.graph_io import ANOMALY_MAP, FRAMES, OUTPUT_NAMES, SCORE, TASK
from linewatch.edge.config import BackendConfig
from linewatch.edge.inference.backends import BackendUnavailable
from linewatch.edge.model.bundle import Bundle

log = logging.getLogger(__name__)


class TensorRTBackend:
    """A deserialised engine with page-locked host buffers and device buffers sized for max_batch."""

    name = "tensorrt"

    def __init__(self, bundle: Bundle, cfg: BackendConfig) -> None:
        from linewatch.edge.model import trt_build

        ok, reason = trt_build.tensorrt_available()
        if not ok:
            raise BackendUnavailable(reason)
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailable(f"pycuda/tensorrt import failed: {exc}") from exc
        self._cuda, self._trt = cuda, trt
        cuda.init()
        self._ctx = cuda.Device(0).retain_primary_context()
        self._ctx.push()
        try:
            precision = "fp32" if cfg.precision == "fp32" else "fp16"
            entry = trt_build.ensure_engine(bundle, precision, workspace_bytes=cfg.workspace_mb << 20)
            self.plan_path = entry["path"]
            self.engine_origin = str(entry.get("origin", "unknown"))  # bundled/cached/refitted/built
            log.info("tensorrt engine ready", extra={"plan": self.plan_path, "origin": self.engine_origin})
            self._setup(bundle, entry)
        finally:
            self._ctx.pop()

    def _setup(self, bundle: Bundle, entry: dict[str, Any]) -> None:
        cuda, trt = self._cuda, self._trt
        logger = trt.Logger(trt.Logger.WARNING)
        with open(self.plan_path, "rb") as f:
            self._engine = trt.Runtime(logger).deserialize_cuda_engine(f.read())
        if self._engine is None:
            raise BackendUnavailable(f"TensorRT could not deserialise {self.plan_path}")
        self._context = self._engine.create_execution_context()
        self._stream = cuda.Stream()
        self.max_batch = bundle.max_batch
        h, w = bundle.input_hw
        self._hw = (h, w)
        self._device: dict[str, Any] = {}
        self._host: dict[str, np.ndarray] = {}
        self._outputs: list[str] = []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            if is_input and name == FRAMES:
                host = cuda.pagelocked_empty((self.max_batch, h, w, 3), np.uint8)
                self._host[name] = host
                self._device[name] = cuda.mem_alloc(host.nbytes)
            elif is_input:
                if name not in bundle.data_inputs:
                    raise BackendUnavailable(f"engine input {name} is not a data input of the bundle")
                array = np.ascontiguousarray(bundle.data_inputs[name].astype(dtype, copy=False))
                self._device[name] = cuda.mem_alloc(max(array.nbytes, 1))
                cuda.memcpy_htod(self._device[name], array)  # once, for the life of the backend
                self._context.set_input_shape(name, tuple(array.shape))
            else:
                shape = [self.max_batch if d < 0 else int(d) for d in self._engine.get_tensor_shape(name)]
                host = cuda.pagelocked_empty(tuple(shape), dtype)
                self._host[name] = host
                self._device[name] = cuda.mem_alloc(max(host.nbytes, 1))
                self._outputs.append(name)
            self._context.set_tensor_address(name, int(self._device[name]))
        for needed in (FRAMES, *OUTPUT_NAMES):
            if needed not in self._device:
                raise BackendUnavailable(f"engine has no tensor {needed!r}")

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b = int(frames.shape[0])
        if frames.dtype != np.uint8 or frames.shape[1:] != (*self._hw, 3) or not 1 <= b <= self.max_batch:
            raise ValueError(f"frames must be uint8 (1..{self.max_batch},{self._hw[0]},{self._hw[1]},3)")
        cuda = self._cuda
        self._ctx.push()
        try:
            host_frames = self._host[FRAMES]
            host_frames[:b] = frames
            cuda.memcpy_htod_async(self._device[FRAMES], host_frames[:b], self._stream)
            self._context.set_input_shape(FRAMES, (b, *self._hw, 3))
            if not self._context.execute_async_v3(self._stream.handle):
                raise RuntimeError("TensorRT enqueue failed")
            for name in self._outputs:
                cuda.memcpy_dtoh_async(self._host[name][:b], self._device[name], self._stream)
            self._stream.synchronize()
            maps = np.array(self._host[ANOMALY_MAP][:b], dtype=np.float32)
            scores = np.array(self._host[SCORE][:b], dtype=np.float32)
            tasks = np.array(self._host[TASK][:b]).astype(np.int64)  # int32 on TensorRT 8.6
            return maps, scores, tasks
        finally:
            self._ctx.pop()

    def close(self) -> None:
        if getattr(self, "_ctx", None) is None:
            return
        self._ctx.push()
        try:
            for mem in self._device.values():
                mem.free()
            self._device.clear()
            self._context = None
            self._engine = None
        finally:
            self._ctx.pop()
            self._ctx.detach()
            self._ctx = None

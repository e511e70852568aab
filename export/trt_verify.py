"""Run a TensorRT plan on frames at export time, to prove it against the torch outputs.

Why here and not in `edge`: the export machine has torch, so CUDA buffers are torch
tensors and no pycuda/cuda-python is needed; the box's TensorRT backend (edge/) has
its own runner and proves the engine again with `check_golden` before going live.

Uses the named-tensor API of TensorRT >= 8.5 (`set_input_shape`, `set_tensor_address`,
`execute_async_v3`), which is the same on 8.6 and 10.x.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.contract.graph_io import ANOMALY_MAP, FRAMES, SCORE, TASK

Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int8: torch.int8,
    }
    table[trt.bool] = torch.bool
    if hasattr(trt, "uint8"):
        table[trt.uint8] = torch.uint8
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    return table[dtype]


def engine_infer(
    plan_path: str | os.PathLike[str], data_inputs: dict[str, np.ndarray], frames: np.ndarray, max_batch: int
) -> Outputs:
    """(maps, scores, tasks) of the plan on `frames`, in chunks of at most `max_batch`."""
    import tensorrt as trt  # type: ignore[import-not-found]
    import torch

    dev = torch.device("cuda")
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
    if engine is None:
        raise RuntimeError(f"cannot deserialize {plan_path}")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
    dtypes = {n: _torch_dtype(trt, engine.get_tensor_dtype(n)) for n in names}
    data = {
        k: torch.from_numpy(np.ascontiguousarray(v)).to(dev).to(dtypes[k]) for k, v in data_inputs.items()
    }
    stream = torch.cuda.Stream()
    maps, scores, tasks = [], [], []
    for i in range(0, len(frames), max_batch):
        x = torch.from_numpy(np.ascontiguousarray(frames[i : i + max_batch])).to(dev).to(dtypes[FRAMES])
        feeds = {FRAMES: x, **data}
        for name in names:
            if is_input[name]:
                context.set_input_shape(name, tuple(feeds[name].shape))
                context.set_tensor_address(name, feeds[name].data_ptr())
        outs = {}
        for name in names:
            if not is_input[name]:
                shape = tuple(context.get_tensor_shape(name))
                outs[name] = torch.empty(shape, dtype=dtypes[name], device=dev)
                context.set_tensor_address(name, outs[name].data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        maps.append(outs[ANOMALY_MAP].float().cpu().numpy())
        scores.append(outs[SCORE].float().cpu().numpy().reshape(-1))
        tasks.append(outs[TASK].cpu().numpy().reshape(-1).astype(np.int64))
    return np.concatenate(maps), np.concatenate(scores), np.concatenate(tasks)

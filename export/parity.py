"""Run the torch module and the ONNX graph on the same frames and compare them.

Why a module of its own: the writer refuses a bundle whose ONNX graph disagrees with
torch on the golden frames, the tests prove parity on validation images, and the
latency benchmark times the same two paths; all three must run them identically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from linewatch.contract.graph_io import FRAMES, OUTPUT_NAMES
from linewatch.edge.model.bundle import GoldenReport
from linewatch.trainer.methods.base import ScoringGraph

Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]  # maps (N,H,W), scores (N,), tasks (N,)


def torch_infer(graph: ScoringGraph, frames: np.ndarray, batch_size: int = 8) -> Outputs:
    """The reference outputs: `graph.module` on uint8 NHWC frames, in chunks of `batch_size`."""
    module = graph.module.eval()
    data = [torch.from_numpy(np.ascontiguousarray(a)) for a in graph.data_inputs.values()]
    maps, scores, tasks = [], [], []
    with torch.inference_mode():
        for i in range(0, len(frames), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(frames[i : i + batch_size]))
            m, s, t = module(x, *data)
            maps.append(m.float().cpu().numpy())
            scores.append(s.float().cpu().numpy().reshape(-1))
            tasks.append(t.cpu().numpy().reshape(-1).astype(np.int64))
    return np.concatenate(maps), np.concatenate(scores), np.concatenate(tasks)


def ort_session(onnx_path: str | os.PathLike[str], threads: int | None = None, spinning: bool = True) -> Any:
    """A CPU onnxruntime session (the reference backend every box can run).

    `spinning=False` stops idle worker threads from busy-waiting after a run, which
    would steal CPU from whatever runs next (the interleaved torch timings).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(Path(onnx_path)), sess_options=opts, providers=["CPUExecutionProvider"])


def ort_infer(
    session: Any, data_inputs: dict[str, np.ndarray], frames: np.ndarray, batch_size: int = 8
) -> Outputs:
    """The graph's outputs on `frames`, feeding the data arrays as inputs."""
    maps, scores, tasks = [], [], []
    for i in range(0, len(frames), batch_size):
        feed = {FRAMES: np.ascontiguousarray(frames[i : i + batch_size]), **data_inputs}
        m, s, t = session.run(list(OUTPUT_NAMES), feed)
        maps.append(np.asarray(m, dtype=np.float32))
        scores.append(np.asarray(s, dtype=np.float32).reshape(-1))
        tasks.append(np.asarray(t).reshape(-1).astype(np.int64))
    return np.concatenate(maps), np.concatenate(scores), np.concatenate(tasks)


@dataclass
class ParityReport(GoldenReport):
    """Largest differences between two backends on the same frames.

    The edge's golden report with a stricter verdict: at export time the task each frame
    is routed to must agree too, while the box only needs the outputs within tolerance.
    """

    @property
    def ok(self) -> bool:
        return super().ok and self.task_mismatches == 0

    def __str__(self) -> str:
        return (
            f"{self.n} frames: max score error {self.max_score_error:.3g} (tol {self.atol_score}), "
            f"max map error {self.max_map_error:.3g} (tol {self.atol_map}), "
            f"{self.task_mismatches} task mismatches"
        )


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(d.max()) if d.size and np.all(np.isfinite(d)) else (0.0 if not d.size else float("inf"))


def compare(
    reference: Outputs, other: Outputs, atol_score: float = 1e-3, atol_map: float = 1e-2
) -> ParityReport:
    """Compare two (maps, scores, tasks) triples; non-finite values count as infinite error."""
    rm, rs, rt = reference
    om, os_, ot = other
    mismatches = int(np.sum(rt != ot)) if rt.shape == ot.shape else len(rt)
    return ParityReport(len(rs), _max_abs(rs, os_), _max_abs(rm, om), mismatches, atol_score, atol_map)

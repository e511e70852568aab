"""Whole-frame scoring for bundles with a `letterbox` or `tile` geometry.

The frame is cut into model inputs in one pass into a buffer reused from frame to frame (BGR->RGB
swapped in place there), the tiles run through the backend as one batch (the exporter sets
max_batch to the tiles of a frame; a frame bigger than the bundle knew runs in max_batch chunks),
and the per-tile maps are stitched back to a map at the frame's own resolution, so regions come out
in full-frame pixels. Score = max of the stitched map; task = the majority of the tiles' tasks.
Exactly what the trainer does (trainer/geometry.py is the same file as edge/geometry.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from contract.geometry import Geometry, combine_tasks

log = logging.getLogger(__name__)


@dataclass
class FrameScore:
    anomaly_map: np.ndarray  # (H, W) float32 at the frame's resolution
    score: float
    task: int
    tiles: int
    cut_ms: float
    infer_ms: float
    stitch_ms: float


class FrameScorer:
    """One per (bundle, backend): keeps the geometry's plans and the tile buffer."""

    def __init__(self, bundle: Any, backend: Any, geometry: Geometry | None = None) -> None:
        self.geometry = geometry or Geometry.from_dict(bundle.geometry, bundle.input_hw)
        self.backend = backend
        self.max_batch = max(1, int(bundle.max_batch))
        self._buffer: np.ndarray | None = None
        self._warned: set[tuple[int, int]] = set()

    def _tiles_buffer(self, n: int) -> np.ndarray:
        th, tw = self.geometry.tile_hw
        if self._buffer is None or self._buffer.shape[0] != n:
            self._buffer = np.empty((n, th, tw, 3), np.uint8)  # once per frame size
        return self._buffer

    def score(self, frame: np.ndarray, bgr: bool = True) -> FrameScore:
        """Score one frame (OpenCV BGR by default)."""
        t0 = time.perf_counter()
        plan = self.geometry.plan(frame.shape[:2])
        tiles = plan.cut(frame, self._tiles_buffer(plan.n), bgr=bgr)
        t1 = time.perf_counter()
        if plan.n > self.max_batch and plan.frame_hw not in self._warned:
            self._warned.add(plan.frame_hw)
            log.warning(
                "frame has more tiles than the bundle's max_batch; scored in chunks",
                extra={"tiles": plan.n, "max_batch": self.max_batch, "frame": list(plan.frame_hw)},
            )
        maps, tasks = [], []
        for start in range(0, plan.n, self.max_batch):
            m, _s, t = self.backend.infer(tiles[start : start + self.max_batch])
            maps.append(m)
            tasks.append(t)
        t2 = time.perf_counter()
        tile_maps = maps[0] if len(maps) == 1 else np.concatenate(maps)
        full = plan.stitch(tile_maps)
        score = float(full.max())
        task = combine_tasks(np.concatenate(tasks))
        t3 = time.perf_counter()
        return FrameScore(full, score, task, plan.n, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)

"""The inference stage: frames -> model inputs -> backend -> one map and one score per frame.

Every geometry goes through the same steps, because ``resize`` is a one-tile plan
(``contract/geometry.py``, the module the trainer evaluates with, so the box scores exactly the image
the trainer scored): each frame of a micro-batch is cut into its tiles, in one pass, into a buffer
reused from batch to batch (BGR->RGB swapped in place there); all the batch's tiles run through the
backend in chunks of the bundle's ``max_batch``; each frame's tile maps are stitched back. A tiled or
letterboxed frame gets a map at its own resolution, so regions come out in full-frame pixels; a
resized frame keeps the model-resolution map (postprocess scales region boxes) and the graph's score.
Score = max of the stitched map; task = the majority of the tiles' tasks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from linewatch.contract.geometry import Geometry, combine_tasks

log = logging.getLogger(__name__)


@dataclass
class FrameScore:
    anomaly_map: np.ndarray  # (H, W) float32: frame resolution (tile, letterbox) or model resolution (resize)
    score: float
    task: int
    tiles: int
    cut_ms: float  # this frame's share of cutting and resampling
    infer_ms: float  # the backend time of the batch the frame ran in
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
        """At least ``n`` model inputs; grows (rarely: a bigger frame) and is otherwise reused."""
        th, tw = self.geometry.tile_hw
        if self._buffer is None or self._buffer.shape[0] < n:
            self._buffer = np.empty((max(n, self.max_batch), th, tw, 3), np.uint8)
        return self._buffer

    def score(self, frame: np.ndarray, bgr: bool = True) -> FrameScore:
        """Score one frame (OpenCV BGR by default)."""
        return self.score_many([frame], bgr)[0]

    def score_many(self, frames: Sequence[np.ndarray], bgr: bool = True) -> list[FrameScore]:
        """Score a micro-batch of frames (of any sizes) with as few backend calls as ``max_batch`` allows."""
        t0 = time.perf_counter()
        plans = [self.geometry.plan(f.shape[:2]) for f in frames]
        total = sum(p.n for p in plans)
        tiles = self._tiles_buffer(total)
        start = 0
        for frame, plan in zip(frames, plans, strict=True):
            plan.cut(frame, tiles[start : start + plan.n], bgr=bgr)
            start += plan.n
            if plan.n > self.max_batch and plan.frame_hw not in self._warned:
                self._warned.add(plan.frame_hw)
                log.warning(
                    "frame has more tiles than the bundle's max_batch; scored in chunks",
                    extra={"tiles": plan.n, "max_batch": self.max_batch, "frame": list(plan.frame_hw)},
                )
        t1 = time.perf_counter()
        maps, scores, tasks = [], [], []
        for s in range(0, total, self.max_batch):
            m, sc, t = self.backend.infer(tiles[s : min(s + self.max_batch, total)])
            maps.append(m)
            scores.append(sc)
            tasks.append(t)
        t2 = time.perf_counter()
        maps_all = maps[0] if len(maps) == 1 else np.concatenate(maps)
        scores_all = scores[0] if len(scores) == 1 else np.concatenate(scores)
        tasks_all = np.asarray(tasks[0] if len(tasks) == 1 else np.concatenate(tasks))
        out: list[FrameScore] = []
        start = 0
        cut_ms = (t1 - t0) * 1e3 / len(frames)
        for plan in plans:
            t_s = time.perf_counter()
            part = slice(start, start + plan.n)
            full = plan.stitch(maps_all[part], frame_size=False)
            # resize: the graph's own score (the max of its map); framed: the max of the stitched map
            score = float(scores_all[start]) if not self.geometry.framed else float(full.max())
            task = combine_tasks(tasks_all[part])
            start += plan.n
            stitch_ms = (time.perf_counter() - t_s) * 1e3
            out.append(FrameScore(full, score, task, plan.n, cut_ms, (t2 - t1) * 1e3, stitch_ms))
        return out

"""Input geometry: how a camera frame becomes model inputs, and how their maps become one frame map.

Three modes, a model setting recorded in the run config and in the bundle manifest (`geometry`):

- ``resize``: the frame is squeezed to the model input (the original behaviour; the default).
- ``letterbox``: the frame is scaled to fit the model input with its aspect kept and padded with
  zeros, centred; the map is cropped back to the picture and scaled to the frame.
- ``tile``: the frame is brought to ``frame_hw`` (when known), rescaled by ``scale`` (1 = native
  pixels) and cut into a grid of model-input-sized tiles overlapping by ``overlap`` px. The grid
  covers the whole frame; the last tile of each row and column is aligned to the border. Per-tile
  maps are stitched back and scaled to the frame. Where tiles overlap the maps are averaged with
  feathered weights (``tile_window``): a tile's own border band, where zero padding makes CNN
  features unlike anything inside a part, gives way to the neighbour that sees those pixels from
  its interior. Pixels that one tile alone covers keep that tile's value. ``margin`` > 0 mirrors
  that many px of the (rescaled) frame around it before tiling (the grid then covers the mirrored
  frame, its last tiles aligned to that border) and crops the map back, so the frame's own border
  is seen from inside a tile too; ``overlap / 2`` is a good value.

The image score is the max of the stitched map; the task of a frame is the majority of its tiles'.

This is the one implementation: the trainer, the exporter and the torch-free edge all import it
(``contract/`` is the small package every part may import), so the box cuts, resizes and stitches
exactly as training and evaluation did. numpy and OpenCV only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

MODES = ("resize", "letterbox", "tile")


def tile_starts(size: int, tile: int, overlap: int = 0) -> list[int]:
    """Start offsets along one axis: stride ``tile - overlap``, the last start at ``size - tile``."""
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile} overlap={overlap}")
    if size < tile:
        raise ValueError(f"a frame side of {size} px is smaller than the {tile} px tile")
    stride = tile - overlap
    n = math.ceil((size - tile) / stride) + 1
    return [min(i * stride, size - tile) for i in range(n)]


def tile_boxes(frame_hw: tuple[int, int], tile_hw: tuple[int, int], overlap: int = 0) -> np.ndarray:
    """(N, 4) int64 boxes ``(y0, x0, y1, x1)``, row-major, covering the whole frame."""
    ys = tile_starts(int(frame_hw[0]), int(tile_hw[0]), overlap)
    xs = tile_starts(int(frame_hw[1]), int(tile_hw[1]), overlap)
    th, tw = int(tile_hw[0]), int(tile_hw[1])
    return np.array([(y, x, y + th, x + tw) for y in ys for x in xs], dtype=np.int64)


def tile_window(tile_hw: tuple[int, int], overlap: int, floor: float = 1e-3) -> np.ndarray:
    """(th, tw) float32 stitching weights: ~0 within overlap/4 of the tile's edge, rising linearly to 1
    at 3*overlap/4, so two tiles overlapping by ``overlap`` cross-fade (weights sum to 1) in the
    middle half of the band. All ones without overlap (plain averaging)."""
    th, tw = int(tile_hw[0]), int(tile_hw[1])
    if overlap <= 0:
        return np.ones((th, tw), np.float32)

    def ramp(n: int) -> np.ndarray:
        d = np.minimum(np.arange(n), np.arange(n)[::-1]) + 0.5  # distance of pixel centres to the edge
        return np.clip((d - overlap / 4) / (overlap / 2), floor, 1.0)

    return np.outer(ramp(th), ramp(tw)).astype(np.float32)


def combine_tasks(tasks: np.ndarray) -> int:
    """A frame's task from its tiles' tasks: the most frequent (lowest index on a tie)."""
    tasks = np.asarray(tasks, dtype=np.int64).reshape(-1)
    if tasks.size == 0:
        return 0
    return int(np.bincount(np.maximum(tasks, 0)).argmax())


def _hw(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    h, w = (int(v) for v in value)
    return h, w


@dataclass(frozen=True)
class Geometry:
    """The geometry of one model. ``tile_hw`` is the model input size (H, W)."""

    mode: str = "resize"
    tile_hw: tuple[int, int] = (256, 256)
    overlap: int = 0
    scale: float = 1.0
    frame_hw: tuple[int, int] | None = None
    margin: int = 0
    _plans: dict[tuple[int, int], FramePlan] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"geometry mode must be one of {MODES}, got {self.mode!r}")
        if min(self.tile_hw) < 1 or not 0 <= self.overlap < min(self.tile_hw):
            raise ValueError(
                f"overlap {self.overlap} must lie in [0, {min(self.tile_hw)}) for tiles {self.tile_hw}"
            )
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.frame_hw is not None and min(self.frame_hw) < 1:
            raise ValueError(f"frame size must be positive, got {self.frame_hw}")

    @classmethod
    def from_dict(cls, doc: dict[str, Any] | None, tile_hw: tuple[int, int] | None = None) -> Geometry:
        """From a manifest/config ``geometry`` dict; None or a missing key means ``resize``."""
        doc = dict(doc or {})
        tile = _hw(doc.get("tile")) or _hw(tile_hw) or (256, 256)
        return cls(
            mode=str(doc.get("mode", "resize")),
            tile_hw=tile,
            overlap=int(doc.get("overlap", 0)),
            scale=float(doc.get("scale", 1.0)),
            frame_hw=_hw(doc.get("frame_size")),
            margin=int(doc.get("margin", 0)),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "tile": list(self.tile_hw),
            "overlap": int(self.overlap),
            "scale": float(self.scale),
            "frame_size": list(self.frame_hw) if self.frame_hw else None,
            "margin": int(self.margin),
        }

    @property
    def framed(self) -> bool:
        """True when maps come back at frame resolution through a plan (letterbox, tile)."""
        return self.mode != "resize"

    def plan(self, frame_hw: tuple[int, int]) -> FramePlan:
        """The (cached) plan for frames of this size."""
        key = (int(frame_hw[0]), int(frame_hw[1]))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = FramePlan(self, key)
        return plan

    def tiles_per_frame(self, frame_hw: tuple[int, int] | None = None) -> int | None:
        """Model inputs per frame; None in tile mode when no frame size is known."""
        if self.mode != "tile":
            return 1
        hw = frame_hw or self.frame_hw
        return None if hw is None else len(self.plan(hw).boxes)

    def cut_many(self, frames: np.ndarray) -> np.ndarray:
        """Every model input of every frame, frame by frame (training): (N * tiles, th, tw, 3)."""
        frames = np.asarray(frames)
        if len(frames) == 0:
            return np.empty((0, *self.tile_hw, 3), np.uint8)
        plan = self.plan(frames.shape[1:3])
        n = len(plan.boxes)
        out = np.empty((len(frames) * n, *self.tile_hw, 3), np.uint8)
        for i, frame in enumerate(frames):
            plan.cut(frame, out[i * n : (i + 1) * n])
        return out


class FramePlan:
    """Everything fixed for one frame size: working size, tile boxes, overlap weights, buffers."""

    def __init__(self, geometry: Geometry, frame_hw: tuple[int, int]) -> None:
        self.geometry = geometry
        self.frame_hw = (int(frame_hw[0]), int(frame_hw[1]))
        th, tw = geometry.tile_hw
        self.offset = (0, 0)  # letterbox: where the picture sits in the model input
        self.margin = 0  # tile: mirrored px around the working frame
        if geometry.mode == "tile":
            base = geometry.frame_hw or self.frame_hw
            self.work_hw = (round(base[0] * geometry.scale), round(base[1] * geometry.scale))
            self.margin = m = geometry.margin
            if m >= min(self.work_hw):
                raise ValueError(f"margin {m} must be smaller than the working frame {self.work_hw}")
            self.boxes = tile_boxes(
                (self.work_hw[0] + 2 * m, self.work_hw[1] + 2 * m), geometry.tile_hw, geometry.overlap
            )
        elif geometry.mode == "letterbox":
            s = min(th / self.frame_hw[0], tw / self.frame_hw[1])
            self.work_hw = (
                min(th, max(1, round(self.frame_hw[0] * s))),
                min(tw, max(1, round(self.frame_hw[1] * s))),
            )
            self.offset = ((th - self.work_hw[0]) // 2, (tw - self.work_hw[1]) // 2)
            self.boxes = np.array([(0, 0, th, tw)], dtype=np.int64)
        else:
            self.work_hw = (th, tw)
            self.boxes = np.array([(0, 0, th, tw)], dtype=np.int64)
        self.n = len(self.boxes)
        self._work: np.ndarray | None = None
        self._padded: np.ndarray | None = None
        self._window: np.ndarray | None = None
        self._inv_weight: np.ndarray | None = None
        if geometry.mode == "tile":
            window = tile_window(geometry.tile_hw, geometry.overlap)
            weight = np.zeros(
                (self.work_hw[0] + 2 * self.margin, self.work_hw[1] + 2 * self.margin), np.float32
            )
            for y0, x0, y1, x1 in self.boxes:
                weight[y0:y1, x0:x1] += window
            if self.n > 1 and not np.all(weight == 1.0):  # tiles overlap: a weighted average
                self._window, self._inv_weight = window, 1.0 / weight

    def _resized(self, frame: np.ndarray) -> np.ndarray:
        """The frame at the working size, in a buffer reused from frame to frame."""
        wh, ww = self.work_hw
        if frame.shape[:2] == (wh, ww):
            return frame
        if self._work is None:
            self._work = np.empty((wh, ww, 3), np.uint8)
        shrink = wh * ww < frame.shape[0] * frame.shape[1]
        cv2.resize(
            frame, (ww, wh), dst=self._work, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
        return self._work

    def cut(self, frame: np.ndarray, out: np.ndarray | None = None, bgr: bool = False) -> np.ndarray:
        """The frame's model inputs (n, th, tw, 3) uint8 RGB, written into ``out`` when given.

        ``bgr=True`` takes an OpenCV BGR frame and swaps to RGB in place in ``out``.
        """
        if frame.shape[:2] != self.frame_hw or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame is {frame.shape}, this plan is for {self.frame_hw} x 3")
        th, tw = self.geometry.tile_hw
        if out is None:
            out = np.empty((self.n, th, tw, 3), np.uint8)
        if out.shape != (self.n, th, tw, 3) or out.dtype != np.uint8:
            raise ValueError(f"out must be uint8 {(self.n, th, tw, 3)}, got {out.dtype}{out.shape}")
        src = self._resized(frame)
        if self.margin:
            m = self.margin
            if self._padded is None:
                self._padded = np.empty((src.shape[0] + 2 * m, src.shape[1] + 2 * m, 3), np.uint8)
            cv2.copyMakeBorder(src, m, m, m, m, cv2.BORDER_REFLECT_101, dst=self._padded)
            src = self._padded
        if self.geometry.mode == "letterbox":
            oy, ox = self.offset
            out[0].fill(0)
            out[0, oy : oy + self.work_hw[0], ox : ox + self.work_hw[1]] = src
        else:
            for i, (y0, x0, y1, x1) in enumerate(self.boxes):
                out[i] = src[y0:y1, x0:x1]
        if bgr:
            for i in range(self.n):
                cv2.cvtColor(out[i], cv2.COLOR_BGR2RGB, dst=out[i])
        return out

    def stitch(self, maps: np.ndarray) -> np.ndarray:
        """Per-input maps (n, th, tw) -> one float32 map at the frame's size (overlaps averaged)."""
        maps = np.asarray(maps, dtype=np.float32)
        th, tw = self.geometry.tile_hw
        if maps.shape != (self.n, th, tw):
            raise ValueError(f"maps must be {(self.n, th, tw)}, got {maps.shape}")
        if self.geometry.mode == "tile":
            m = self.margin
            acc = np.zeros((self.work_hw[0] + 2 * m, self.work_hw[1] + 2 * m), np.float32)
            window = self._window
            for i, (y0, x0, y1, x1) in enumerate(self.boxes):
                acc[y0:y1, x0:x1] += maps[i] if window is None else maps[i] * window
            if self._inv_weight is not None:
                acc *= self._inv_weight
            if m:
                acc = np.ascontiguousarray(acc[m : m + self.work_hw[0], m : m + self.work_hw[1]])
        elif self.geometry.mode == "letterbox":
            oy, ox = self.offset
            acc = np.ascontiguousarray(maps[0, oy : oy + self.work_hw[0], ox : ox + self.work_hw[1]])
        else:
            acc = maps[0]
        if acc.shape != self.frame_hw:
            acc = cv2.resize(acc, (self.frame_hw[1], self.frame_hw[0]), interpolation=cv2.INTER_LINEAR)
        return acc

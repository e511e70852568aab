"""Input geometry: how a camera frame becomes model inputs, and how their maps become one frame map.

Three modes, a model setting recorded in the run config and in the bundle manifest (`geometry`):

- ``resize``: the frame is squeezed to the model input (the original behaviour).
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
  is seen from inside a tile too; ``overlap / 2`` is a good value. ``context`` adds one more model
  input, the whole frame resized (what ``resize`` sees), and the frame map is the mean of the
  stitched tile map and that context map: a defect larger than a tile's view, or one the tiles see
  only as texture, still counts at the scale where it stands out, and a single noisy patch of the
  many more that tiles score weighs half.

``resize`` is a one-tile plan like the others, so there is one frame path: every mode cuts, scores
and stitches, and every resampling goes through ``resize_frame`` (INTER_AREA to shrink, bilinear to
enlarge), in training, evaluation and on the box alike.

The image score is the max of the stitched map; the task of a frame is the majority of its tiles'.

The trainer's default is ``auto``: ``choose_geometry`` is a rule on the training frames' size that
resolves to ``resize`` or ``tile`` at the first ``fit`` (the geometry for frames of sizes no task
has); then each task whose frames would be squeezed more than ``AUTO_MAX_SHRINK`` gets its own
choice, validated on its training images (``trainer/geometry_choice.py``), kept in ``by_size``: a
list of geometries, each for frames within ``SIZE_MATCH_TOLERANCE`` of one task's frame size. A
continual model can so resize one camera's frames (large defects) and tile another's (hairline
cracks); the frame size, known before scoring, picks the plan, on the box as in training.

This is the one implementation: the trainer, the exporter and the torch-free edge all import it
(``contract/`` is the small package every part may import), so the box cuts, resizes and stitches
exactly as training and evaluation did. numpy and OpenCV only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


def resize_frame(image: np.ndarray, hw: tuple[int, int], dst: np.ndarray | None = None) -> np.ndarray:
    """``image`` at ``hw`` = (H, W): INTER_AREA when it shrinks (it averages, so thin defects fade
    instead of vanishing between samples), bilinear when it grows. The only resampling of frames in
    Linewatch: the trainer's reader, the tile plans and the edge all call it, so they cannot drift."""
    h, w = int(hw[0]), int(hw[1])
    if image.shape[:2] == (h, w):
        if dst is None:
            return image
        dst[...] = image
        return dst
    shrink = h * w < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    if dst is None:
        return cv2.resize(image, (w, h), interpolation=interpolation)
    cv2.resize(image, (w, h), dst=dst, interpolation=interpolation)
    return dst


# ``auto``: squeezing a frame by more than this (linear factor) loses defects a few pixels wide, so
# larger frames are tiled. Frames up to 2x the model input lose at most half a pixel per pixel of
# defect width: a 3 px scratch stays 1.5 px, still one stride-8 feature cell's worth of contrast.
AUTO_MAX_SHRINK = 2.0
# ``auto`` tiles with this share of the tile as overlap (and half of it as mirrored margin), so every
# pixel is seen away from a tile border by some tile.
AUTO_OVERLAP_FRACTION = 1 / 8
# ``auto`` keeps native resolution unless that needs more tiles per frame than this; then it scales
# the frame down just enough, but never by more than AUTO_MAX_SHRINK.
AUTO_MAX_TILES = 8


def choose_geometry(
    frame_sizes: list[tuple[int, int]], tile_hw: tuple[int, int]
) -> tuple[dict[str, Any], str]:
    """The ``auto`` rule: a geometry dict (``Geometry.from_dict``) and the reason, in words.

    Why a rule on sizes alone: the defects are not known at training time (only good parts are), and
    what makes them disappear is the linear shrink a squeeze applies. ``frame_sizes`` are the (H, W)
    of the training frames (one per task is enough). Tiled frames keep their own size (``frame_size``
    stays None), so tasks whose cameras differ (landscape, portrait) are each cut at their own scale.
    """
    th, tw = int(tile_hw[0]), int(tile_hw[1])
    if not frame_sizes:
        raise ValueError("auto geometry needs the size of at least one training frame")
    shrink = max(max(h / th, w / tw) for h, w in frame_sizes)
    biggest = max(frame_sizes, key=lambda hw: hw[0] * hw[1])
    if shrink <= AUTO_MAX_SHRINK:
        return {"mode": "resize", "tile": [th, tw]}, (
            f"auto: frames up to {biggest[0]}x{biggest[1]} are at most {shrink:.2f}x the {th}x{tw} model "
            f"input (limit {AUTO_MAX_SHRINK:g}x), so they are resized"
        )
    overlap = max(0, round(min(th, tw) * AUTO_OVERLAP_FRACTION))
    margin = overlap // 2
    # Never below the shrink limit, and never so small that a frame's side no longer fills a tile.
    floor = max(
        1.0 / AUTO_MAX_SHRINK, min(1.0, max((min(th, tw) - 2 * margin) / min(h, w) for h, w in frame_sizes))
    )
    candidates = [s for s in (round(1.0 - 0.05 * i, 2) for i in range(20)) if s >= floor] or [1.0]

    def tiled(scale: float) -> tuple[dict[str, Any], int]:
        doc = {"mode": "tile", "tile": [th, tw], "overlap": overlap, "scale": scale, "margin": margin}
        return doc, max(Geometry.from_dict(doc).plan(hw).n for hw in frame_sizes)

    doc, tiles = tiled(candidates[-1])
    for scale in candidates:  # the largest scale (1 = native) within the tile budget
        doc, tiles = tiled(scale)
        if tiles <= AUTO_MAX_TILES:
            break
    scale = doc["scale"]
    why = (
        "native pixels"
        if scale == 1
        else f"scaled by {scale:g} to stay within {AUTO_MAX_TILES} tiles per frame"
    )
    if tiles > AUTO_MAX_TILES:
        why = f"scaled by {scale:g}, the least allowed; {AUTO_MAX_TILES} tiles per frame cannot be kept"
    return doc, (
        f"auto: frames up to {biggest[0]}x{biggest[1]} would be squeezed {shrink:.2f}x into the {th}x{tw} "
        f"model input (limit {AUTO_MAX_SHRINK:g}x), so they are tiled: {why}; {tiles} tiles for the "
        f"largest frame, overlap {overlap} px, margin {margin} px"
    )


# ``by_size``: a frame uses the entry whose reference size is nearest, if each side is within this
# factor of it (the commutator camera's frames vary by a few px; another camera differs by far more).
SIZE_MATCH_TOLERANCE = 1.1


def size_distance(a: tuple[int, int], b: tuple[int, int]) -> float:
    """How far apart two frame sizes are: the larger of the two sides' log ratios."""
    return max(abs(math.log(a[0] / b[0])), abs(math.log(a[1] / b[1])))


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
    context: bool = False  # tile: also score the whole frame resized, and average the two maps
    reason: str | None = field(default=None, compare=False)  # why ``auto`` chose this geometry
    tasks: tuple[str, ...] = field(default=(), compare=False)  # ``by_size``: the tasks it was chosen for
    # ``auto``, per task: ((reference frame size, geometry for frames near it), ...)
    by_size: tuple[tuple[tuple[int, int], Geometry], ...] = ()
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
        if self.context and self.mode != "tile":
            raise ValueError(f"context is a tile-mode option; mode is {self.mode!r}")
        for hw, sub in self.by_size:
            if sub.tile_hw != self.tile_hw or sub.by_size:
                raise ValueError(
                    f"by_size entry for {hw}: tile {sub.tile_hw} (must be {self.tile_hw}, unnested)"
                )

    @classmethod
    def from_dict(cls, doc: dict[str, Any] | None, tile_hw: tuple[int, int] | None = None) -> Geometry:
        """From a manifest/config ``geometry`` dict; None or a missing key means ``resize``."""
        doc = dict(doc or {})
        tile = _hw(doc.get("tile")) or _hw(tile_hw) or (256, 256)
        by_size = tuple(
            (_hw(entry["match"]), cls.from_dict({k: v for k, v in entry.items() if k != "match"}, tile))
            for entry in doc.get("by_size") or ()
        )
        return cls(
            mode=str(doc.get("mode", "resize")),
            tile_hw=tile,
            overlap=int(doc.get("overlap", 0)),
            scale=float(doc.get("scale", 1.0)),
            frame_hw=_hw(doc.get("frame_size")),
            margin=int(doc.get("margin", 0)),
            context=bool(doc.get("context", False)),
            reason=doc.get("reason"),
            tasks=tuple(str(t) for t in doc.get("tasks") or ()),
            by_size=by_size,  # type: ignore[arg-type]
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "tile": list(self.tile_hw),
            "overlap": int(self.overlap),
            "scale": float(self.scale),
            "frame_size": list(self.frame_hw) if self.frame_hw else None,
            "margin": int(self.margin),
            **({"context": True} if self.context else {}),
            **({"reason": self.reason} if self.reason else {}),
            **({"tasks": list(self.tasks)} if self.tasks else {}),
            **(
                {"by_size": [{"match": list(hw), **g.as_dict()} for hw, g in self.by_size]}
                if self.by_size
                else {}
            ),
        }

    @property
    def framed(self) -> bool:
        """True when frames are cut through per-size plans (letterbox, tile, or any tiled ``by_size``
        entry) and maps come back at frame resolution. All-``resize`` models take model-size inputs."""
        return self.mode != "resize" or any(g.mode != "resize" for _, g in self.by_size)

    def for_frame(self, frame_hw: tuple[int, int]) -> Geometry:
        """The geometry that frames of this size are cut with: the ``by_size`` entry of the nearest
        reference size within SIZE_MATCH_TOLERANCE, else this one."""
        if not self.by_size:
            return self
        hw = (int(frame_hw[0]), int(frame_hw[1]))
        dist, sub = min(((size_distance(hw, ref), g) for ref, g in self.by_size), key=lambda d: d[0])
        return sub if dist <= math.log(SIZE_MATCH_TOLERANCE) else self

    def plan(self, frame_hw: tuple[int, int]) -> FramePlan:
        """The (cached) plan for frames of this size."""
        key = (int(frame_hw[0]), int(frame_hw[1]))
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= 64:  # a camera whose frame size keeps changing: do not grow forever
                self._plans.clear()
            geometry = self.for_frame(key)
            plan = self._plans[key] = FramePlan(geometry, key) if geometry is self else geometry.plan(key)
        return plan

    def tiles_per_frame(self, frame_hw: tuple[int, int] | None = None) -> int | None:
        """Model inputs per frame; None in tile mode when no frame size is known."""
        if frame_hw is not None and self.by_size:
            return self.plan(frame_hw).n
        if self.mode != "tile":
            return 1
        hw = frame_hw or self.frame_hw
        return None if hw is None else self.plan(hw).n

    def cut_many(self, frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Every model input of every frame, frame by frame (training): (sum of tiles, th, tw, 3).

        ``frames`` is an (N, H, W, 3) array or a list of frames of different sizes."""
        if len(frames) == 0:
            return np.empty((0, *self.tile_hw, 3), np.uint8)
        counts = [self.plan(f.shape[:2]).n for f in frames]
        out = np.empty((sum(counts), *self.tile_hw, 3), np.uint8)
        start = 0
        for frame, n in zip(frames, counts, strict=True):
            self.plan(frame.shape[:2]).cut(frame, out[start : start + n])
            start += n
        return out


class FramePlan:
    """Everything fixed for one frame size: working size, tile boxes, overlap weights, buffers."""

    def __init__(self, geometry: Geometry, frame_hw: tuple[int, int]) -> None:
        self.geometry = geometry
        self.frame_hw = (int(frame_hw[0]), int(frame_hw[1]))
        th, tw = geometry.tile_hw
        self.offset = (0, 0)  # letterbox: where the picture sits in the model input
        self.scale = 1.0  # tile: the scale this frame size is cut at (raised when a tile would not fit)
        self.margin = 0  # tile: mirrored px around the working frame
        if geometry.mode == "tile":
            base = geometry.frame_hw or self.frame_hw
            self.margin = m = geometry.margin
            # A frame too small for one tile at the model's scale (a smaller camera, a later task)
            # is scaled up just enough, the same way in training and on the box, rather than refused:
            # a refused frame would leave the line uninspected.
            scale = max(geometry.scale, (th - 2 * m) / base[0], (tw - 2 * m) / base[1])
            self.scale = scale
            self.work_hw = (
                max(th - 2 * m, round(base[0] * scale)),
                max(tw - 2 * m, round(base[1] * scale)),
            )
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
        # The context view (tile mode) is the last model input: the whole frame, resized.
        self.context = geometry.mode == "tile" and geometry.context
        self.n = len(self.boxes) + int(self.context)
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
            if len(self.boxes) > 1 and not np.all(weight == 1.0):  # tiles overlap: a weighted average
                self._window, self._inv_weight = window, 1.0 / weight

    def _resized(self, frame: np.ndarray) -> np.ndarray:
        """The frame at the working size, in a buffer reused from frame to frame."""
        if frame.shape[:2] == self.work_hw:
            return frame
        if self._work is None:
            self._work = np.empty((*self.work_hw, 3), np.uint8)
        return resize_frame(frame, self.work_hw, dst=self._work)

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
        if self.geometry.mode == "resize":  # one tile, the whole frame: resample straight into it
            resize_frame(frame, self.work_hw, dst=out[0])
            if bgr:
                cv2.cvtColor(out[0], cv2.COLOR_BGR2RGB, dst=out[0])
            return out
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
            if self.context:
                resize_frame(frame, (th, tw), dst=out[-1])
        if bgr:
            for i in range(self.n):
                cv2.cvtColor(out[i], cv2.COLOR_BGR2RGB, dst=out[i])
        return out

    def stitch(self, maps: np.ndarray, frame_size: bool = True) -> np.ndarray:
        """Per-input maps (n, th, tw) -> one float32 map at the frame's size (overlaps averaged).

        ``frame_size=False`` leaves a ``resize`` map at model resolution (the edge finds regions on it
        and scales their boxes, which is cheaper than upsampling every frame's map)."""
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
            if self.context:
                acc = 0.5 * (acc + resize_frame(maps[-1], self.work_hw))
        elif self.geometry.mode == "letterbox":
            oy, ox = self.offset
            acc = np.ascontiguousarray(maps[0, oy : oy + self.work_hw[0], ox : ox + self.work_hw[1]])
        else:
            acc = maps[0]
        if acc.shape != self.frame_hw and (frame_size or self.geometry.framed):
            acc = resize_frame(acc, self.frame_hw)
        return acc

"""Shared pieces of the generator: seeding, sizes, and rendering one good or defective part.

Every image gets its own random stream derived from (seed, task, stream, index), so image 7 of a
task is the same whatever the other tasks or counts are, and good/defect draws never shift each
other.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from linewatch.trainer.data.defects import DEFECT_TYPES, apply_defect
from linewatch.trainer.data.source_photos import SOURCES, render_view

SizeLike = int | tuple[int, int]


def as_size_wh(size: SizeLike) -> tuple[int, int]:
    """``256`` -> (256, 256); ``(W, H)`` stays. Generator sizes are (W, H), like OpenCV frame sizes."""
    w, h = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if w < 16 or h < 16:
        raise ValueError(f"image size must be at least 16x16, got {w}x{h}")
    return w, h


def rng_for(seed: int, task: str, *stream: int) -> np.random.Generator:
    """An independent generator per (seed, task, stream...); crc32 keeps it stable across runs."""
    if seed < 0:
        raise ValueError("seed must be >= 0")
    return np.random.default_rng([seed, zlib.crc32(task.encode()), *stream])


def check_tasks(tasks: Sequence[str]) -> list[str]:
    unknown = [t for t in tasks if t not in SOURCES]
    if unknown or not tasks:
        raise ValueError(f"unknown or no task(s) {unknown}; available sources: {', '.join(SOURCES)}")
    return list(tasks)


def check_defect_types(defect_types: Sequence[str] | None) -> list[str]:
    types = list(DEFECT_TYPES if defect_types is None else defect_types)
    unknown = [d for d in types if d not in DEFECT_TYPES]
    if unknown or not types:
        raise ValueError(f"unknown or no defect type(s) {unknown}; known: {', '.join(DEFECT_TYPES)}")
    return types


def render_part(
    task: str,
    size_wh: tuple[int, int],
    seed: int,
    stream: int,
    index: int,
    defect_type: str | None = None,
    defect_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 (H, W, 3) RGB, bool mask or None). The good view is the same with or without a defect."""
    image = render_view(task, rng_for(seed, task, stream, index, 0), size_wh)
    if defect_type is None:
        return image, None
    return apply_defect(image, defect_type, rng_for(seed, task, stream, index, 1), task, defect_scale)


def bbox_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in pixels, x1/y1 exclusive."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1

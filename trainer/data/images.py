"""Pixels from the file lists: one reader for every format.

Decoding goes through OpenCV (the edge reads frames with OpenCV too, so train and serve see the
same decoder). EXIF orientation is ignored so that an image and its mask stay on the same pixel grid.
Every bad file is collected and reported in one ``DatasetError``, not one crash per run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from linewatch.contract.frames import DECODE_COLOR, DECODE_UNCHANGED
from linewatch.contract.geometry import resize_frame
from linewatch.trainer.data.errors import bad_files_error
from linewatch.trainer.data.samples import Sample

_COLOR = DECODE_COLOR  # the edge decodes with the same flags (contract/frames.py)
_UNCHANGED = DECODE_UNCHANGED
T = TypeVar("T")
Frames = np.ndarray | list[np.ndarray]
"""Frames of one size as one (N, H, W, 3) array; frames of several sizes (cameras that differ, or
``auto`` tiling at each frame's own size) as a list. Both index, iterate and ``len`` alike."""


def _decode(path: Path, flags: int) -> np.ndarray:
    """Decode from bytes (works for non-ASCII paths); raise OSError with the reason on failure."""
    if not path.is_file():
        raise OSError("file does not exist")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise OSError("file is empty")
    try:
        image = cv2.imdecode(data, flags)
    except cv2.error as exc:  # some truncated files make the codec throw instead of returning None
        raise OSError(f"cannot be decoded ({exc.err})") from exc
    if image is None or image.size == 0:
        raise OSError("cannot be decoded as an image (corrupt or unsupported)")
    return image


def imread_rgb(path: Path | str) -> np.ndarray:
    """uint8 (H, W, 3) RGB at the file's resolution; grayscale and 16-bit become 8-bit RGB."""
    return cv2.cvtColor(_decode(Path(path), _COLOR), cv2.COLOR_BGR2RGB)


def imread_mask(path: Path | str) -> np.ndarray:
    """bool (H, W): any non-zero value is defect (MVTec stores 255, VisA stores class indices)."""
    mask = _decode(Path(path), _UNCHANGED)
    if mask.ndim == 3:
        mask = mask[..., :3].any(axis=-1)
    return mask > 0


def image_size(path: Path | str) -> tuple[int, int]:
    """(H, W) from the header when Pillow is present (cheap), else by decoding."""
    path = Path(path)
    try:
        from PIL import Image

        with Image.open(path) as im:
            width, height = im.size
        return height, width
    except ImportError:
        pass
    except Exception:  # Pillow cannot parse it; let OpenCV have the final word
        pass
    image = _decode(path, _UNCHANGED)
    return image.shape[0], image.shape[1]


def _parallel(fn: Callable[[int], T], n: int) -> list[T]:
    """OpenCV releases the GIL while decoding, so a few threads help even on 2 cores."""
    if n <= 1:
        return [fn(i) for i in range(n)]
    workers = min(8, os.cpu_count() or 1, n)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, range(n)))


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    height, width = (int(v) for v in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive (H, W), got {size}")
    return height, width


def read_images(paths: Sequence[Path | str], size: tuple[int, int] | None) -> Frames:
    """uint8 RGB frames at ``size`` = (H, W) through ``resize_frame`` (the one resampling the edge
    uses too), as one (N, H, W, 3) array. ``size=None`` keeps every image at its own resolution: an
    array when they all share one size, else a list."""
    target = None if size is None else _check_size(size)
    images: list[np.ndarray | None] = [None] * len(paths)

    def load(i: int) -> tuple[Path, str] | None:
        path = Path(paths[i])
        try:
            image = imread_rgb(path)
        except OSError as exc:
            return path, str(exc)
        images[i] = image if target is None else resize_frame(image, target)
        return None

    problems = [p for p in _parallel(load, len(paths)) if p is not None]
    if problems:
        raise bad_files_error("unreadable image file(s)", problems)
    if target is not None:
        out = np.empty((len(paths), *target, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            out[i] = image
        return out
    return as_frames(images)  # type: ignore[arg-type]


def as_frames(frames: Sequence[np.ndarray]) -> Frames:
    """One array when every frame has the same shape (the fast, common case), else a list."""
    if len({f.shape for f in frames}) <= 1:
        return np.stack(frames) if len(frames) else np.empty((0, 1, 1, 3), np.uint8)
    return list(frames)


def concat_frames(parts: Sequence[Frames]) -> Frames:
    """``np.concatenate`` for frame sets that may differ in size (tasks of different cameras)."""
    if len({p.shape[1:] for p in parts if isinstance(p, np.ndarray)}) == 1 and all(
        isinstance(p, np.ndarray) for p in parts
    ):
        return np.concatenate(parts)
    return as_frames([f for part in parts for f in part])


def take_frames(frames: Frames, index: np.ndarray) -> Frames:
    """``frames[index]`` for an index array, for lists too."""
    if isinstance(frames, np.ndarray):
        return frames[index]
    return as_frames([frames[int(i)] for i in index])


def read_masks(samples: Sequence[Sample], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(masks bool (N, H, W), has_mask bool (N,)).

    Good samples get an empty mask that counts (``has_mask`` True); a defect without a mask gets an
    empty mask with ``has_mask`` False, so pixel metrics can leave it out. A mask must have exactly
    its image's size: a mismatch means the pair is wrong, and resizing would hide that.
    """
    height, width = _check_size(size)
    masks = np.zeros((len(samples), height, width), dtype=bool)
    has_mask = np.ones(len(samples), dtype=bool)

    def load(i: int) -> tuple[Path, str] | None:
        sample = samples[i]
        if sample.label == 0:
            return None
        if sample.mask_path is None:
            has_mask[i] = False
            return None
        try:
            mask = imread_mask(sample.mask_path)
        except OSError as exc:
            return sample.mask_path, str(exc)
        try:
            image_hw = image_size(sample.path)
        except OSError as exc:
            return sample.path, f"image of mask {sample.mask_path.name} {exc}"
        if mask.shape != image_hw:
            return sample.mask_path, (
                f"mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image {sample.path} is {image_hw[0]}x{image_hw[1]}"
            )
        if mask.shape != (height, width):
            mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        masks[i] = mask
        return None

    problems = [p for p in _parallel(load, len(samples)) if p is not None]
    if problems:
        raise bad_files_error("bad mask file(s)", problems)
    return masks, has_mask

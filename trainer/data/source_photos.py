"""Source photographs for synthetic parts: the images that ship inside scikit-image (no download).

A task is one source. Textures (brick, grass, gravel) give views anywhere in the picture; scene
photographs (astronaut, coffee, ...) give views of nearly the whole picture with small shifts, like a
part that lands on the conveyor slightly off-centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np


@dataclass(frozen=True)
class Source:
    """How to view one source: the crop side as a fraction of the picture, and allowed flips."""

    crop: tuple[float, float]
    vflip: bool


_TEXTURE = Source(crop=(0.5, 0.75), vflip=True)
_SCENE = Source(crop=(0.82, 0.95), vflip=False)

SOURCES: dict[str, Source] = {
    "brick": _TEXTURE,
    "grass": _TEXTURE,
    "gravel": _TEXTURE,
    "moon": _TEXTURE,
    "immunohistochemistry": _TEXTURE,
    "hubble_deep_field": _TEXTURE,
    "retina": Source(crop=(0.35, 0.55), vflip=True),
    "cell": _TEXTURE,
    "camera": _SCENE,
    "coffee": _SCENE,
    "astronaut": _SCENE,
    "rocket": _SCENE,
    "coins": _SCENE,
    "chelsea": _SCENE,
    "clock": _SCENE,
}


def available_sources() -> list[str]:
    """Task names the generator can make, in a fixed order (textures first)."""
    return list(SOURCES)


@cache
def load_source(name: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB; grayscale sources are stacked to 3 channels. Read-only, cached."""
    if name not in SOURCES:
        raise KeyError(f"unknown source {name!r}; available: {', '.join(SOURCES)}")
    from skimage import data as skdata

    image = np.asarray(getattr(skdata, name)())
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = np.ascontiguousarray(image[..., :3].astype(np.uint8))
    image.setflags(write=False)
    return image


def random_crop(
    image: np.ndarray, rng: np.random.Generator, frac: tuple[float, float], size_wh: tuple[int, int]
) -> np.ndarray:
    """A crop with the output's aspect ratio, its larger side a random fraction of the picture's
    matching side, resized (INTER_AREA when shrinking) to ``size_wh``."""
    src_h, src_w = image.shape[:2]
    out_w, out_h = size_wh
    aspect = out_w / out_h
    f = rng.uniform(*frac)
    crop_w = min(src_w, f * min(src_w, src_h * aspect))
    crop_h = crop_w / aspect
    cw, ch = max(1, round(crop_w)), max(1, round(crop_h))
    x0 = int(rng.integers(0, src_w - cw + 1))
    y0 = int(rng.integers(0, src_h - ch + 1))
    crop = image[y0 : y0 + ch, x0 : x0 + cw]
    shrinking = cw >= out_w and ch >= out_h
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(crop, (out_w, out_h), interpolation=interp)


def render_view(name: str, rng: np.random.Generator, size_wh: tuple[int, int]) -> np.ndarray:
    """One good part: crop, flips, slight brightness/contrast jitter. uint8 (H, W, 3) RGB."""
    source = SOURCES[name]
    view = random_crop(load_source(name), rng, source.crop, size_wh)
    if rng.random() < 0.5:
        view = view[:, ::-1]
    if source.vflip and rng.random() < 0.5:
        view = view[::-1]
    contrast = rng.uniform(0.92, 1.08)
    brightness = rng.uniform(-8.0, 8.0)
    mean = view.mean()
    out = (view.astype(np.float32) - mean) * contrast + mean + brightness
    return np.ascontiguousarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))

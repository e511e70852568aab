"""The support images of a part being onboarded: read, checked, brought to the model's input.

Why strict: a bank built from a wrong picture (another camera's size, a truncated file, one image
only) silently changes what "good" means for a whole line, so every problem is gathered into one
`OnboardError` naming each file before anything is built, and the serving model is not touched.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from linewatch.contract.fewshot import MAX_IMAGES, MIN_IMAGES
from linewatch.contract.frames import decode_file
from linewatch.contract.geometry import Geometry

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ASPECT_TOLERANCE = 0.1  # support images may differ in size, not in shape, by this much


class OnboardError(ValueError):
    """Onboarding refused; the message says why (it goes back on cmd/onboard/response)."""


def images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise OnboardError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _count(n: int) -> None:
    if not MIN_IMAGES <= n <= MAX_IMAGES:
        raise OnboardError(f"onboarding takes {MIN_IMAGES} to {MAX_IMAGES} good images, got {n}")


def read_files(paths: Sequence[Path]) -> list[np.ndarray]:
    """RGB images of `paths`; every unreadable one is named in one error."""
    _count(len(paths))
    images, bad = [], []
    for p in paths:
        bgr = decode_file(p)
        if bgr is None:
            bad.append(p.name)
        else:
            images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if bad:
        raise OnboardError(f"unreadable images: {', '.join(bad)}")
    return images


def decode_jpegs(encoded: Sequence[str], max_bytes: int) -> list[np.ndarray]:
    """RGB images from base64 JPEG/PNG strings (cmd/onboard `images`)."""
    _count(len(encoded))
    images, bad = [], []
    for i, text in enumerate(encoded):
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            bad.append(f"#{i} (not base64)")
            continue
        if len(raw) > max_bytes:
            bad.append(f"#{i} ({len(raw)} bytes > {max_bytes})")
            continue
        bgr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR) if raw else None
        if bgr is None:
            bad.append(f"#{i} (not a decodable image)")
        else:
            images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if bad:
        raise OnboardError(f"unreadable images: {', '.join(bad)}")
    return images


def model_inputs(images: Sequence[np.ndarray], geometry: Geometry) -> np.ndarray:
    """(K, H, W, 3) uint8 model inputs; refuses sizes the bundle's camera would never give.

    With a known camera frame size every image must have it; otherwise all images must share one
    aspect ratio (within 10 %) and be at least half the model input on each side.
    """
    if geometry.mode == "tile":
        raise OnboardError("few-shot onboarding needs a resize or letterbox bundle, this one tiles")
    th, tw = geometry.tile_hw
    sizes = [im.shape[:2] for im in images]
    if geometry.frame_hw is not None:
        wrong = [f"#{i} {w}x{h}" for i, (h, w) in enumerate(sizes) if (h, w) != tuple(geometry.frame_hw)]
        if wrong:
            fh, fw = geometry.frame_hw
            raise OnboardError(f"images of the wrong size (the camera gives {fw}x{fh}): {', '.join(wrong)}")
    ref = sizes[0][1] / sizes[0][0]
    for i, (h, w) in enumerate(sizes):
        if h < th // 2 or w < tw // 2:
            raise OnboardError(f"image #{i} is {w}x{h}, smaller than half the model input {tw}x{th}")
        if abs((w / h) / ref - 1) > ASPECT_TOLERANCE:
            raise OnboardError(
                f"image #{i} is {w}x{h}: another shape than image #0 ({sizes[0][1]}x{sizes[0][0]})"
            )
    out = np.empty((len(images), th, tw, 3), np.uint8)
    for i, im in enumerate(images):
        plan = geometry.plan(im.shape[:2])
        out[i] = plan.cut(np.ascontiguousarray(im))[0]
    return out

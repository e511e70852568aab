"""How an image file becomes a frame, in training and on the box alike.

One decode rule: colour (grey and 16-bit files become 8-bit, three channels) with EXIF orientation
IGNORED, because masks are drawn on the stored pixel grid and a camera writes upright frames; a
trainer that rotated by EXIF and a box that did not (or the reverse) would score different images.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

DECODE_COLOR = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
DECODE_UNCHANGED = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION


def decode_file(path: Path | str, flags: int = DECODE_COLOR) -> np.ndarray | None:
    """The file's pixels (OpenCV BGR for colour), or None when it cannot be read or decoded.

    Reads bytes first, so non-ASCII paths work; a codec that throws on a truncated file counts as
    undecodable rather than crashing the caller."""
    try:
        data = np.fromfile(Path(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    try:
        image = cv2.imdecode(data, flags)
    except cv2.error:
        return None
    return image if image is not None and image.size else None

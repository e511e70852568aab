"""From a normalised anomaly map to what SCADA needs: regions in the camera's pixels and an overlay.

The model works at its own resolution (e.g. 256x256); operators look at the camera's frame. So every
bbox and area is mapped back to the ORIGINAL frame's pixel coordinates here, once, and nobody
downstream has to know the model's input size. Tile and letterbox bundles (``edge/inference/frame_scorer.py``) hand
over a map already stitched at the frame's resolution; the mapping is then the identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Region:
    """A connected blob of the map above threshold. bbox is [x, y, w, h] in original-frame pixels."""

    bbox: tuple[int, int, int, int]
    area: int
    peak: float

    def as_dict(self) -> dict[str, object]:
        return {"bbox": list(self.bbox), "area": self.area, "peak": round(self.peak, 5)}


def find_regions(
    anomaly_map: np.ndarray,
    frame_hw: tuple[int, int],
    threshold: float = 0.5,
    min_area: int = 1,
    max_regions: int = 64,
) -> list[Region]:
    """Connected components of ``anomaly_map >= threshold``, largest first, scaled to ``frame_hw``."""
    if anomaly_map.ndim != 2:
        raise ValueError(f"anomaly map must be 2-D, got shape {anomaly_map.shape}")
    mh, mw = anomaly_map.shape
    fh, fw = frame_hw
    mask = (anomaly_map >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    sx, sy = fw / mw, fh / mh
    regions: list[Region] = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < min_area:
            continue
        window = anomaly_map[y : y + h, x : x + w]
        peak = float(window[labels[y : y + h, x : x + w] == label].max())
        x0, y0 = math.floor(x * sx), math.floor(y * sy)
        x1, y1 = min(fw, math.ceil((x + w) * sx)), min(fh, math.ceil((y + h) * sy))
        regions.append(Region((x0, y0, x1 - x0, y1 - y0), round(area * sx * sy), peak))
    regions.sort(key=lambda r: r.area, reverse=True)
    return regions[:max_regions]


def overlay_jpeg(
    frame_bgr: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.45, quality: int = 80
) -> bytes:
    """The frame with the anomaly map as a JET heatmap blended on top, JPEG-encoded."""
    fh, fw = frame_bgr.shape[:2]
    heat = np.clip(anomaly_map * 255.0, 0, 255).astype(np.uint8)
    if heat.shape != (fh, fw):  # a stitched full-frame map needs no resize
        heat = cv2.resize(heat, (fw, fh), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(heat, cv2.COLORMAP_JET)
    blended = cv2.addWeighted(frame_bgr, 1.0 - alpha, colour, alpha, 0.0)
    ok, buf = cv2.imencode(".jpg", blended, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def frame_jpeg(frame_bgr: np.ndarray, quality: int = 90) -> bytes:
    """The raw frame as JPEG (snapshot command)."""
    ok, buf = cv2.imencode(".jpg", frame_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()

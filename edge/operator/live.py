"""What the operator page shows of the frame path: the latest scored frame per camera and a gallery.

The postprocess stage hands every verdict to ``LiveView.record``, which only keeps references (the
frame it already holds, its map, its verdict) in a dict and a bounded deque: no copy, no encoding. The
overlay JPEG is made when a browser asks for it (``overlay``), once per frame, so a box nobody is
watching pays nothing for the page, and one that is watched pays per image shown, not per frame scored.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from linewatch.edge.inference.postprocess import overlay_jpeg

BOX_BGR = (255, 255, 255)


@dataclass
class Shown:
    """One scored frame as the page may show it and an operator may judge it."""

    camera: str
    frame_id: int
    image: np.ndarray  # BGR, the camera's full resolution, unscored
    anomaly_map: np.ndarray
    score: float
    threshold: float
    anomalous: bool
    regions: list[dict[str, Any]]
    model: dict[str, Any]  # {"name", "version"}
    task: str | None  # the task that scored it (None when the model gave no known task)
    ts: float = field(default_factory=time.time)
    _jpeg: bytes | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "camera": self.camera,
            "frame_id": self.frame_id,
            "score": round(float(self.score), 5),
            "threshold": round(float(self.threshold), 5),
            "anomalous": self.anomalous,
            "regions": self.regions,
            "model": self.model,
            "task": self.task,
            "ts": self.ts,
        }

    def overlay(self, alpha: float = 0.45, quality: int = 80) -> bytes:
        """The frame with the heatmap and region boxes, JPEG; made on the first request, then kept."""
        if self._jpeg is None:
            image = self.image
            if self.regions:
                image = image.copy()
                for r in self.regions:
                    x, y, w, h = r["bbox"]
                    cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), BOX_BGR, 2)
            amap = np.nan_to_num(self.anomaly_map, nan=1.0, posinf=1.0, neginf=0.0)
            self._jpeg = overlay_jpeg(image, amap, alpha, quality)
        return self._jpeg


class LiveView:
    """Latest frame per camera, the last ``gallery`` anomalous frames, and a wake-up for viewers."""

    def __init__(self, gallery: int = 12) -> None:
        self.latest: dict[str, Shown] = {}
        self.gallery: deque[Shown] = deque(maxlen=gallery)
        self.changed = threading.Condition()
        self.sequence = 0  # bumped on every record; viewers wait for it to move

    def record(self, shown: Shown) -> None:
        """Called by the postprocess thread for every verdict: references only, O(1)."""
        with self.changed:
            self.latest[shown.camera] = shown
            if shown.anomalous:
                self.gallery.append(shown)
            self.sequence += 1
            self.changed.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        """Block until something newer than ``seen`` was recorded (or timeout); the new sequence."""
        with self.changed:
            self.changed.wait_for(lambda: self.sequence != seen, timeout)
            return self.sequence

    def find(self, camera: str, frame_id: int) -> Shown | None:
        """A frame the page can still show: the camera's latest or one in the gallery."""
        with self.changed:
            latest = self.latest.get(camera)
            if latest is not None and latest.frame_id == frame_id:
                return latest
            for shown in self.gallery:
                if shown.camera == camera and shown.frame_id == frame_id:
                    return shown
        return None

    def snapshot(self) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        with self.changed:
            latest = {name: s.summary() for name, s in self.latest.items()}
            gallery = [s.summary() for s in reversed(self.gallery)]
        return latest, gallery

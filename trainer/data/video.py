"""Synthetic line videos with known defect frames, for edge tests, the demo and throughput benchmarks.

Codec: MJPG in ``.avi`` is written and read back by opencv-python-headless here (checked; so are
XVID and FFV1). MJPG is lossy, so compare frames with a tolerance; FFV1 is lossless.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from linewatch.trainer.data.synth import (
    SizeLike,
    as_size_wh,
    bbox_of,
    check_defect_types,
    check_tasks,
    render_part,
)

VIDEO_STREAM = 3
"""Random stream id for video frames (datasets use 0-2), so videos and datasets never share parts."""


@dataclass(frozen=True, eq=False)
class FrameTruth:
    """What frame ``index`` really shows. ``bbox`` is (x0, y0, x1, y1), x1/y1 exclusive."""

    index: int
    defective: bool
    mask: np.ndarray | None
    bbox: tuple[int, int, int, int] | None
    defect_type: str | None = None


def is_defect_frame(index: int, defect_every: int) -> bool:
    """Every ``defect_every``-th frame (the 5th, 10th, ... for 5); frame 0 is always good."""
    return defect_every > 0 and (index + 1) % defect_every == 0


def render_frame(
    task: str,
    index: int,
    size: SizeLike = (256, 256),
    seed: int = 0,
    defect_type: str | None = None,
    defect_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Frame ``index`` of a task's video as uint8 RGB (before encoding), and its mask when defective."""
    return render_part(task, as_size_wh(size), seed, VIDEO_STREAM, index, defect_type, defect_scale)


def generate_video(
    path: Path,
    task: str,
    n_frames: int = 60,
    defect_every: int = 5,
    size: SizeLike = (256, 256),
    fps: float = 10,
    seed: int = 0,
    defect_types: Sequence[str] | None = None,
    defect_scale: float = 1.0,
    codec: str = "MJPG",
) -> list[FrameTruth]:
    """Write a video of ``n_frames`` parts of ``task``; defect types cycle over the defect frames."""
    check_tasks([task])
    types = check_defect_types(defect_types)
    width, height = as_size_wh(size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), float(fps), (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {codec} video to {path}")
    truths: list[FrameTruth] = []
    n_defects = 0
    try:
        for index in range(n_frames):
            defect = None
            if is_defect_frame(index, defect_every):
                defect, n_defects = types[n_defects % len(types)], n_defects + 1
            frame, mask = render_frame(task, index, (width, height), seed, defect, defect_scale)
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            bbox = bbox_of(mask) if mask is not None else None
            truths.append(FrameTruth(index, mask is not None, mask, bbox, defect))
    finally:
        writer.release()
    return truths


def read_video(path: Path) -> np.ndarray:
    """All frames as uint8 (N, H, W, 3) RGB; for tests and offline checks, not the edge capture path."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    if not frames:
        raise OSError(f"no frames could be read from {path}")
    return np.stack(frames)


def write_truth_json(
    path: Path, truths: Sequence[FrameTruth], video: Path | None = None, mask_dir: Path | None = None
) -> Path:
    """Ground truth beside a video: per frame index, defective, type, bbox, mask area.

    With ``mask_dir`` the masks are also written as ``<index>_mask.png`` (0/255) and named in the JSON
    relative to the JSON file.
    """
    path = Path(path)
    frames = []
    for t in truths:
        entry: dict[str, object] = {
            "index": t.index,
            "defective": t.defective,
            "defect_type": t.defect_type,
            "bbox": list(t.bbox) if t.bbox else None,
            "area": int(t.mask.sum()) if t.mask is not None else 0,
        }
        if mask_dir is not None and t.mask is not None:
            Path(mask_dir).mkdir(parents=True, exist_ok=True)
            mask_file = Path(mask_dir) / f"{t.index:05d}_mask.png"
            cv2.imwrite(str(mask_file), t.mask.astype(np.uint8) * 255)
            entry["mask"] = os.path.relpath(mask_file, path.parent)
        frames.append(entry)
    doc = {"schema": 1, "video": str(video) if video else None, "n_frames": len(frames), "frames": frames}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def read_truth_json(path: Path) -> list[FrameTruth]:
    """Inverse of ``write_truth_json``; masks are loaded when they were written."""
    path = Path(path)
    doc = json.loads(path.read_text())
    truths = []
    for f in doc["frames"]:
        mask = cv2.imread(str(path.parent / f["mask"]), cv2.IMREAD_GRAYSCALE) > 0 if f.get("mask") else None
        bbox = tuple(f["bbox"]) if f["bbox"] else None
        truths.append(FrameTruth(f["index"], f["defective"], mask, bbox, f.get("defect_type")))  # type: ignore[arg-type]
    return truths

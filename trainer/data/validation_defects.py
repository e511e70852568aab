"""Faint synthetic defects for choosing settings on training images only (`auto` geometry).

Only good parts are known at training time, and the test split must never choose a setting, so a
choice is made on held-out *training* frames, half of them with a defect painted on at native
resolution. The defects are decided up front, not tuned:

- *blobs*: DRAEM's Perlin-noise masks filled with photograph texture (`synthetic_anomalies.py`),
  at 16 to 64 noise cells per side, so a blob is about 1/32 to 1/128 of the frame's side (pits of a
  few hundred pixels), the texture at 20 to 60 % opacity;
- *scratches*: one to three thin polylines, 1 to 2 px wide, 5 to 20 % of the frame's diagonal long,
  brighter or darker than the part by 10 to 30 grey levels (hairline cracks).

Why this faint: with 2-3x stronger defects (texture at 50-100 % opacity, scratches of 25-60 grey
levels) image AUROC saturated at 1.000 for both resize and tile on ball-screw frames, so the
validation could not choose; it must leave the candidates room to differ.
"""

from __future__ import annotations

import cv2
import numpy as np

from linewatch.trainer.data.synthetic_anomalies import perlin_anomaly, perlin_mask, random_texture

KINDS = ("blob", "scratch")


def scratch_mask(hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """1-3 thin polylines, 1-2 px wide, 5-20 % of the diagonal long: float32 (H, W) of {0, 1}."""
    h, w = hw
    mask = np.zeros((h, w), np.uint8)
    diag = float(np.hypot(h, w))
    for _ in range(int(rng.integers(1, 4))):
        length = rng.uniform(0.05, 0.2) * diag
        y, x = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        angle = rng.uniform(0, np.pi)
        points = [(x, y)]
        for _ in range(4):  # a gently bending crack
            angle += rng.normal(0, 0.3)
            x, y = x + np.cos(angle) * length / 4, y + np.sin(angle) * length / 4
            points.append((x, y))
        pts = np.round(np.array(points)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(mask, [pts], False, 1, thickness=int(rng.integers(1, 3)), lineType=cv2.LINE_AA)
    return (mask > 0).astype(np.float32)


def paint_defect(
    frame: np.ndarray, kind: str, rng: np.random.Generator, textures: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic defect on a copy of ``frame`` (uint8, 3 channels): (image, float32 mask)."""
    hw = frame.shape[:2]
    if kind == "blob":
        for _attempt in range(20):  # an empty mask is possible; draw again
            mask = perlin_mask(hw, rng, scale_range=(4, 7))
            if mask.sum() >= 16:
                break
        return perlin_anomaly(frame, random_texture(textures, hw, rng), rng, (0.4, 0.8), mask=mask)
    if kind != "scratch":
        raise ValueError(f"defect kind must be one of {KINDS}, got {kind!r}")
    mask = scratch_mask(hw, rng)
    delta = rng.uniform(10, 30) * (1 if rng.random() < 0.5 else -1)
    out = np.clip(frame.astype(np.float32) + delta * mask[..., None], 0, 255)
    return np.rint(out).astype(np.uint8), mask

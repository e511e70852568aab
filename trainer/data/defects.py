"""Synthetic defects with exact masks: nothing outside the mask changes, (nearly) everything inside does.

Each drawer first decides WHERE (a binary mask), then picks a colour that contrasts with the part
under that mask, then writes only those pixels. So pixels outside the mask are untouched and pixels
inside visibly change, which makes pixel metrics on synthetic data meaningful.

Sizes are fractions of the shorter image side times ``defect_scale``; at 256x256 and scale 1 most
defects span 3-15 % of the side and scratches are long and 2-4 px wide. For large frames with tiny
defects (2048x1536, 3-15 px) pass a small ``defect_scale``.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from linewatch.trainer.data.source_photos import SOURCES, load_source, random_crop

DEFECT_TYPES: tuple[str, ...] = ("scratch", "crack", "hole", "stain", "foreign_patch", "missing_corner")
MIN_AREA = 4
"""Smallest mask (pixels) accepted; smaller draws are retried."""
VISIBLE_DELTA = 12
"""A mask pixel counts as changed when some channel moved by at least this much."""

Drawer = Callable[[np.ndarray, np.random.Generator, float, str], tuple[np.ndarray, np.ndarray]]
_STAIN_COLOURS = np.array(
    [
        [120, 66, 24],
        [34, 62, 150],
        [170, 160, 40],
        [95, 25, 95],
        [25, 105, 45],
        [200, 200, 190],
        [25, 20, 18],
    ],
    dtype=np.float32,
)


def _px(scale: float, lo: float, hi: float, rng: np.random.Generator, floor: float = 1.0) -> float:
    """A length in pixels: a random fraction of the (scaled) image side, never below ``floor``."""
    return max(floor, rng.uniform(lo, hi) * scale)


def _width(scale: float, rng: np.random.Generator, lo: float = 3.0, hi: float = 5.0) -> int:
    """Line width: 3-5 px at a 256 px side, proportional elsewhere, at least 1 px."""
    return max(1, round(rng.uniform(lo, hi) * scale / 256))


def _point(shape: tuple[int, ...], rng: np.random.Generator, margin: float = 0.1) -> np.ndarray:
    h, w = shape[:2]
    return np.array([rng.uniform(margin, 1 - margin) * w, rng.uniform(margin, 1 - margin) * h])


def _contrast_grey(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A near-grey RGB colour at least 80 levels away from the mean brightness under ``mask``."""
    local = float(image[mask].mean()) if mask.any() else 128.0
    options = [v for v in (rng.uniform(8, 45), rng.uniform(205, 250)) if abs(v - local) >= 80]
    value = options[int(rng.integers(len(options)))]
    return np.clip(value + rng.normal(0, 6, 3), 0, 255)


def _paint(
    image: np.ndarray, mask: np.ndarray, colour: np.ndarray, rng: np.random.Generator, noise: float = 3.0
) -> np.ndarray:
    out = image.copy()
    n = int(mask.sum())
    out[mask] = np.clip(np.rint(colour + rng.normal(0, noise, (n, 3))), 0, 255).astype(np.uint8)
    return out


def _polyline_mask(shape: tuple[int, ...], points: list[np.ndarray], width: int) -> np.ndarray:
    canvas = np.zeros(shape[:2], np.uint8)
    for line in points:
        cv2.polylines(
            canvas, [np.rint(line).astype(np.int32)], False, 1, thickness=width, lineType=cv2.LINE_8
        )
    return canvas > 0


def scratch(
    image: np.ndarray, rng: np.random.Generator, scale: float, task: str
) -> tuple[np.ndarray, np.ndarray]:
    """A long, thin, slightly curved bright or dark line."""
    length = _px(scale, 0.3, 0.6, rng, floor=4)
    centre, angle = _point(image.shape, rng, 0.2), rng.uniform(0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    a, b = centre - direction * length / 2, centre + direction * length / 2
    bend = centre + normal * rng.uniform(-0.12, 0.12) * length
    t = np.linspace(0, 1, 32)[:, None]
    curve = (1 - t) ** 2 * a + 2 * (1 - t) * t * bend + t**2 * b
    mask = _polyline_mask(image.shape, [curve], _width(scale, rng))
    return _paint(image, mask, _contrast_grey(image, mask, rng), rng), mask


def crack(
    image: np.ndarray, rng: np.random.Generator, scale: float, task: str
) -> tuple[np.ndarray, np.ndarray]:
    """A jagged random-walk polyline with a branch or two, dark on bright parts."""
    total = _px(scale, 0.2, 0.4, rng, floor=4)
    steps = int(rng.integers(10, 18))
    step, angle = total / steps, rng.uniform(0, 2 * np.pi)
    walk = [_point(image.shape, rng, 0.2)]
    for _ in range(steps):
        angle += rng.normal(0, 0.6)
        walk.append(walk[-1] + step * np.array([np.cos(angle), np.sin(angle)]))
    lines = [np.array(walk)]
    for _ in range(int(rng.integers(0, 3))):
        start = walk[int(rng.integers(2, len(walk) - 2))]
        branch_angle = angle + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
        branch = [start]
        for _ in range(int(rng.integers(3, 6))):
            branch_angle += rng.normal(0, 0.5)
            branch.append(branch[-1] + step * np.array([np.cos(branch_angle), np.sin(branch_angle)]))
        lines.append(np.array(branch))
    mask = _polyline_mask(image.shape, lines, _width(scale, rng, 3.0, 4.5))
    if not mask.any():
        return image.copy(), mask
    local = float(image[mask].mean())
    value = local * 0.15 if local >= 90 else min(255.0, local + 110)
    return _paint(image, mask, np.full(3, value), rng, noise=2.0), mask


def hole(
    image: np.ndarray, rng: np.random.Generator, scale: float, task: str
) -> tuple[np.ndarray, np.ndarray]:
    """A dark filled ellipse with a lighter rim, like a drilled or punched-through spot."""
    h, w = image.shape[:2]
    axes = (_px(scale, 0.04, 0.08, rng, 2), _px(scale, 0.04, 0.08, rng, 2))
    centre = _point(image.shape, rng, 0.12)
    box = ((float(centre[0]), float(centre[1])), (2 * axes[0], 2 * axes[1]), float(rng.uniform(0, 180)))
    inner, rim = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    cv2.ellipse(inner, box, 1, thickness=-1, lineType=cv2.LINE_8)
    cv2.ellipse(rim, box, 1, thickness=max(1, round(min(axes) / 4)), lineType=cv2.LINE_8)
    inner_mask, rim_mask = inner > 0, rim > 0
    if not inner_mask.any():
        return image.copy(), inner_mask
    local = float(image[inner_mask].mean())
    if local >= 70:  # dark hole with a light rim
        inside, rim_value = rng.uniform(5, 25), min(255.0, max(local + 70, 150.0))
    else:  # on dark parts light shows through the hole
        inside, rim_value = rng.uniform(200, 235), local + 70
    out = _paint(image, inner_mask & ~rim_mask, np.full(3, inside), rng, noise=3.0)
    out = _paint(out, rim_mask, np.full(3, rim_value), rng, noise=4.0)
    return out, inner_mask | rim_mask


def stain(
    image: np.ndarray, rng: np.random.Generator, scale: float, task: str
) -> tuple[np.ndarray, np.ndarray]:
    """A soft coloured blob blended in; alpha below 0.3 is cut to 0 so the mask is exactly what changed."""
    h, w = image.shape[:2]
    radius = _px(scale, 0.06, 0.11, rng, 2)
    centre = _point(image.shape, rng, 0.15)
    blob = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        offset = rng.normal(0, radius * 0.4, 2)
        axes = (max(1, round(radius * rng.uniform(0.5, 1.0))), max(1, round(radius * rng.uniform(0.5, 1.0))))
        c = (round(centre[0] + offset[0]), round(centre[1] + offset[1]))
        cv2.ellipse(blob, c, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, thickness=-1)
    sigma = max(0.8, radius / 3)
    alpha = cv2.GaussianBlur(blob, (0, 0), sigma) * rng.uniform(0.85, 0.95)
    alpha[alpha < 0.3] = 0
    mask = alpha > 0
    if not mask.any():
        return image.copy(), mask
    local = image[mask].reshape(-1, 3).astype(np.float32).mean(axis=0)
    distance = np.linalg.norm(_STAIN_COLOURS - local, axis=1)
    far = np.flatnonzero(distance >= np.sort(distance)[-3])
    colour = _STAIN_COLOURS[int(rng.choice(far))]
    out = image.astype(np.float32)
    a = alpha[mask][:, None]
    out[mask] = out[mask] * (1 - a) + colour * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask


def foreign_patch(
    image: np.ndarray, rng: np.random.Generator, scale: float, task: str
) -> tuple[np.ndarray, np.ndarray]:
    """A piece of a different source photograph pasted in (rectangle or ellipse)."""
    h, w = image.shape[:2]
    pw, ph = round(_px(scale, 0.08, 0.15, rng, 3)), round(_px(scale, 0.08, 0.15, rng, 3))
    pw, ph = min(pw, w - 1), min(ph, h - 1)
    others = [name for name in SOURCES if name != task]
    other = others[int(rng.integers(len(others)))]
    patch = random_crop(load_source(other), rng, (0.1, 0.3), (pw, ph))
    x0, y0 = int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1))
    shape = np.zeros((ph, pw), np.uint8)
    if rng.random() < 0.5:
        shape[:] = 1
    else:
        cv2.ellipse(shape, ((pw / 2 - 0.5, ph / 2 - 0.5), (pw, ph), 0.0), 1, thickness=-1)
    mask = np.zeros((h, w), bool)
    mask[y0 : y0 + ph, x0 : x0 + pw] = shape > 0
    out = image.copy()
    out[mask] = patch[shape > 0]
    return out, mask


def missing_corner(
    image: np.ndarray, rng: np.random.Generator, scale: float, task: str
) -> tuple[np.ndarray, np.ndarray]:
    """A corner triangle replaced by flat background (the conveyor showing through a broken part)."""
    h, w = image.shape[:2]
    a, b = min(_px(scale, 0.08, 0.18, rng, 3), w - 1), min(_px(scale, 0.08, 0.18, rng, 3), h - 1)
    corner = int(rng.integers(4))
    x, sx = (0, 1) if corner in (0, 3) else (w - 1, -1)
    y, sy = (0, 1) if corner in (0, 1) else (h - 1, -1)
    triangle = np.rint([[x, y], [x + sx * a, y], [x, y + sy * b]]).astype(np.int32)
    canvas = np.zeros((h, w), np.uint8)
    cv2.fillPoly(canvas, [triangle], 1, lineType=cv2.LINE_8)
    mask = canvas > 0
    if not mask.any():
        return image.copy(), mask
    return _paint(image, mask, _contrast_grey(image, mask, rng), rng, noise=1.5), mask


DEFECTS: dict[str, Drawer] = {
    "scratch": scratch,
    "crack": crack,
    "hole": hole,
    "stain": stain,
    "foreign_patch": foreign_patch,
    "missing_corner": missing_corner,
}


def apply_defect(
    image: np.ndarray,
    defect_type: str,
    rng: np.random.Generator,
    task: str = "",
    defect_scale: float = 1.0,
    tries: int = 25,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect: (new uint8 image, bool mask). Retries draws that would be tiny or faint.

    Accepts a draw only when its mask is at least ``MIN_AREA`` pixels, at least 90 % of mask pixels
    visibly changed and the mean change is at least 25 levels, so every defect is really there.
    """
    if defect_type not in DEFECTS:
        raise KeyError(f"unknown defect type {defect_type!r}; known: {', '.join(DEFECT_TYPES)}")
    if defect_scale <= 0:
        raise ValueError("defect_scale must be positive")
    scale = min(image.shape[:2]) * defect_scale
    for _ in range(tries):
        out, mask = DEFECTS[defect_type](image, rng, scale, task)
        if mask.sum() < MIN_AREA:
            continue
        delta = np.abs(out.astype(np.int16) - image.astype(np.int16)).max(axis=-1)[mask]
        if (delta >= VISIBLE_DELTA).mean() >= 0.9 and delta.mean() >= 25:
            return out, mask
    raise RuntimeError(f"could not draw a visible {defect_type} after {tries} tries (image {image.shape})")

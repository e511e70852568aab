"""DRAEM's synthetic anomalies (Zavrtanik et al., ICCV 2021): Perlin-noise masks filled with a foreign texture.

Torch-free (numpy + OpenCV), so any method or tool can use it.

The recipe, as the paper and its reference code do it:
1. Perlin noise at a random power-of-two scale per axis (2^0 .. 2^5 gradient cells), rotated by a
   random angle in [-90, 90] degrees, thresholded at 0.5 -> a blobby binary mask `M`.
2. A texture image `A` (the paper: a random Describable Textures Dataset (DTD) image, itself
   randomly augmented), resized to the image.
3. `I_a = (1 - M) * I + (1 - beta) * (M * A) + beta * (M * I)`: inside the mask the texture is
   blended in with opacity `1 - beta`.

Offline there is no DTD: `texture_source()` returns the photographs that ship inside scikit-image
(the same ones the project's data generator and EfficientAD's generic images use), and
`random_texture` takes a random crop, flips and a colour jitter of one of them, which stands in for
the paper's imgaug augmentations of the DTD image. Published DRAEM numbers are with DTD; with 15
photographs instead of 5,640 textures the anomalies are less varied.

Note on `beta`: the reference code draws beta in [0, 0.8); here the range is an argument
(default (0.1, 1.0), the caller's choice), so that the anomaly's opacity is `1 - beta`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import cv2
import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    return 6 * t**5 - 15 * t**4 + 10 * t**3


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise, float32 (H, W), values in about [-1, 1].

    `res` is the number of gradient cells along (H, W). Any shape works: the noise is made on the
    next multiple of `res` and cropped (the reference code needs `shape` divisible by `res`).
    """
    h, w = (int(s) for s in shape)
    ry, rx = (max(1, int(r)) for r in res)
    dy, dx = math.ceil(h / ry), math.ceil(w / rx)
    full_h, full_w = dy * ry, dx * rx
    angles = 2 * math.pi * rng.random((ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # (ry+1, rx+1, 2)
    ys = (np.arange(full_h) + 0.5) / dy  # cell coordinates, pixel centres
    xs = (np.arange(full_w) + 0.5) / dx
    iy, ix = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = (ys - iy)[:, None], (xs - ix)[None, :]

    def corner(oy: int, ox: int) -> np.ndarray:
        g = grads[(iy + oy)[:, None], (ix + ox)[None, :]]  # (H, W, 2)
        return g[..., 0] * (fy - oy) + g[..., 1] * (fx - ox)

    ty, tx = _fade(fy), _fade(fx)
    top = corner(0, 0) * (1 - tx) + corner(0, 1) * tx
    bottom = corner(1, 0) * (1 - tx) + corner(1, 1) * tx
    noise = math.sqrt(2) * (top * (1 - ty) + bottom * ty)
    return noise[:h, :w].astype(np.float32)


def perlin_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    threshold: float = 0.5,
    scale_range: tuple[int, int] = (0, 6),
) -> np.ndarray:
    """A DRAEM anomaly mask: float32 (H, W) of {0, 1}.

    Scales are 2^k gradient cells per axis, k drawn independently per axis from
    `[scale_range[0], scale_range[1])` as in the reference code; the noise is rotated by a
    random angle in [-90, 90] degrees (zero outside, so corners never pass the threshold) and
    thresholded. The mask can be empty (the paper's samples can be too).
    """
    h, w = (int(s) for s in shape)
    lo, hi = scale_range
    ky, kx = (int(rng.integers(lo, hi)) for _ in range(2))
    noise = perlin_noise((h, w), (2**ky, 2**kx), rng)
    angle = float(rng.uniform(-90.0, 90.0))
    rot = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    noise = cv2.warpAffine(
        noise, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0
    )
    return (noise > threshold).astype(np.float32)


def perlin_anomaly(
    image: np.ndarray,
    texture: np.ndarray,
    rng: np.random.Generator,
    beta_range: tuple[float, float] = (0.1, 1.0),
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (H, W, 3) image with the texture blended into a Perlin mask, float32 (H, W) mask).

    `texture` may have any size; it is resized to the image. `beta` is drawn from
    `beta_range`; the texture's opacity inside the mask is `1 - beta`. A given `mask` is used
    instead of a fresh `perlin_mask`.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    if mask is None:
        mask = perlin_mask((h, w), rng)
    tex = texture
    if tex.ndim == 2:
        tex = np.repeat(tex[..., None], 3, axis=2)
    if tex.shape[:2] != (h, w):
        shrink = tex.shape[0] >= h and tex.shape[1] >= w
        tex = cv2.resize(tex, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    beta = float(rng.uniform(*beta_range))
    m = mask[..., None].astype(np.float32)
    img = image.astype(np.float32)
    out = img * (1 - m) + (1 - beta) * (m * tex[..., :3].astype(np.float32)) + beta * (m * img)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask.astype(np.float32)


def texture_source(exclude: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """The offline anomaly textures: scikit-image's photographs (uint8 RGB, read-only), by name.

    The paper draws its anomaly sources from DTD (the Describable Textures Dataset), which this
    project cannot download; the photographs shipped with scikit-image are used instead (the same
    ones `trainer.data.sources` makes parts from). `exclude` drops names (e.g. a task's own
    source, so its anomalies are not its own texture).
    """
    from linewatch.trainer.data.source_photos import available_sources, load_source

    skip = set(exclude)
    names = [n for n in available_sources() if n not in skip]
    if not names:
        raise ValueError("no texture sources left after the exclusions")
    return {n: load_source(n) for n in names}


def random_texture(
    textures: list[np.ndarray], size_hw: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """One anomaly texture: a random crop (1/4 to 3/4 of the side) of a random photograph, flipped,
    rotated by a multiple of 90 degrees, with a gamma and brightness jitter; uint8 (H, W, 3)."""
    src = textures[int(rng.integers(len(textures)))]
    sh, sw = src.shape[:2]
    frac = rng.uniform(0.25, 0.75)
    ch, cw = max(2, int(sh * frac)), max(2, int(sw * frac))
    y0, x0 = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    crop = src[y0 : y0 + ch, x0 : x0 + cw]
    crop = np.rot90(crop, int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    h, w = size_hw
    tex = cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    gamma = rng.uniform(0.5, 2.0)
    tex = 255.0 * (tex / 255.0) ** gamma + rng.uniform(-30, 30)
    if rng.random() < 0.2:
        tex = 255.0 - tex  # the reference augments with inversion too
    return np.clip(np.rint(tex), 0, 255).astype(np.uint8)

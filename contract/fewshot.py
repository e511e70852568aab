"""Few-shot onboarding: the manifest's `fewshot` section and the augmentation recipe, written once.

Why here: the trainer's `fewshot` method builds the support-set bank of the tasks it is fitted on,
and the box builds the bank of a part it is shown (`linewatch-edge onboard`); both must augment
the same way and agree on the bank layout, or a bank made on the box would not mean what the
graph expects. numpy + OpenCV only (no torch), so the edge can import it.

Bank layout: the scoring graph (PatchCore's: per-task banks, task inference by the lowest mean
nearest-neighbour distance) takes ``bank`` (S, M, D), ``bank_knn`` (S, M, k), ``center`` (S,),
``scale`` (S,) with a FIXED number of slots S. An empty slot is filled with ``EMPTY_FILL`` in
every coordinate: its distance to any real patch is so large that task inference never picks it.
Adding, replacing or removing a task therefore changes array values only, never shapes, so every
onboarding is a bank-only bundle on the same graph (and TensorRT engine).

The embedding graph (``embed.onnx``): uint8 NHWC frames in, ``features`` (B, P, D) float32 out,
the same patch features the scoring graph computes inside (exported from the same torch module).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SECTION = "fewshot"  # manifest key
EMBED_NAME = "embed.onnx"
EMBED_OUTPUT = "features"
EMPTY_FILL = 1.0e3  # every coordinate of an empty slot's bank
EMPTY_TASK = ""  # the manifest's task name of an empty slot
MIN_IMAGES, MAX_IMAGES = 2, 8


class AugmentRecipe(BaseModel):
    """Geometric and photometric augmentation of a support image (data in the manifest).

    Each view draws every parameter uniformly within its range; view 0 is the image itself.
    """

    model_config = ConfigDict(extra="forbid")
    hflip: bool = True
    vflip: bool = False
    rotate_deg: float = Field(10.0, ge=0, le=180)
    shift: float = Field(0.05, ge=0, le=0.5, description="largest shift, as a fraction of the side")
    brightness: float = Field(0.1, ge=0, le=1, description="largest additive change, fraction of 255")
    contrast: float = Field(0.1, ge=0, le=1, description="largest relative gain change")
    grey: float = Field(0.2, ge=0, le=1, description="probability of a grey view")


def augment(image: np.ndarray, recipe: AugmentRecipe, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` views (n, H, W, 3) uint8 of one RGB image; view 0 is the image unchanged.

    Borders are mirrored (a shifted part does not get black edges the test images never have).
    """
    h, w = image.shape[:2]
    out = np.empty((n, h, w, 3), np.uint8)
    out[0] = image
    for i in range(1, n):
        view = image
        if recipe.hflip and rng.random() < 0.5:
            view = view[:, ::-1]
        if recipe.vflip and rng.random() < 0.5:
            view = view[::-1]
        angle = rng.uniform(-recipe.rotate_deg, recipe.rotate_deg)
        tx, ty = rng.uniform(-recipe.shift, recipe.shift, 2) * (w, h)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        m[:, 2] += (tx, ty)
        view = cv2.warpAffine(
            np.ascontiguousarray(view), m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
        gain = 1.0 + rng.uniform(-recipe.contrast, recipe.contrast)
        bias = 255.0 * rng.uniform(-recipe.brightness, recipe.brightness)
        f = view.astype(np.float32)
        f = (f - f.mean()) * gain + f.mean() + bias
        if rng.random() < recipe.grey:
            f[:] = f @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
        out[i] = np.clip(f, 0, 255).astype(np.uint8)
    return out


class FewShotSection(BaseModel):
    """The manifest's `fewshot` section: what the box needs to build a bank the graph understands."""

    model_config = ConfigDict(extra="forbid")
    embedding: str = EMBED_NAME
    output: str = EMBED_OUTPUT
    slots: int = Field(ge=1)
    bank_per_task: int = Field(ge=1)
    feature_dim: int = Field(ge=1)
    knn: int = Field(ge=1)
    views: int = Field(8, ge=1, description="augmented views per support image in the bank")
    holdout_views: int = Field(4, ge=1, description="further views per image, for the threshold")
    quantile: float = Field(0.99, gt=0, lt=1)
    proj_dim: int = Field(32, ge=1)
    augment: AugmentRecipe = Field(default_factory=AugmentRecipe)
    extractor: dict[str, Any] = Field(default_factory=dict, description="what the extractor was trained on")
    embedding_parity: float | None = Field(None, description="max |torch - onnxruntime| feature at export")


def empty_bank(slots: int, m: int, d: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(S, M, D) bank and (S, M, k) neighbours with every slot empty."""
    bank = np.full((slots, m, d), EMPTY_FILL, np.float32)
    knn = np.broadcast_to(np.arange(k, dtype=np.int64) % m, (slots, m, k)).copy()
    return bank, knn


def greedy_coreset(x: np.ndarray, n_select: int, proj_dim: int, seed: int) -> np.ndarray:
    """Indices of `n_select` rows of `x` (N, D) by greedy k-center on a random projection (numpy).

    The same selection as the trainer's PatchCore coreset (farthest point first), in numpy so the
    box needs no torch.
    """
    n = x.shape[0]
    if n_select >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    z = x.astype(np.float32)
    if proj_dim < z.shape[1]:
        z = z @ (rng.standard_normal((z.shape[1], proj_dim)).astype(np.float32) / math.sqrt(proj_dim))
    z = np.ascontiguousarray(z)
    sq = np.einsum("ij,ij->i", z, z)
    min_d = np.full(n, np.inf, np.float32)
    chosen = np.empty(n_select, np.int64)
    idx = int(rng.integers(n))
    for i in range(n_select):
        chosen[i] = idx
        d = sq - 2.0 * (z @ z[idx]) + sq[idx]
        np.minimum(min_d, d, out=min_d)
        idx = int(np.argmax(min_d))
    return chosen


def padded_slot(coreset: np.ndarray, m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One slot's (M, D) bank padded with repeats (they never change a nearest neighbour) and (M, k) kNN.

    The k nearest bank points of each point, itself first, as PatchCore's re-weighting reads them.
    """
    c = coreset.astype(np.float32)
    if c.shape[0] < k:  # fewer points than neighbours: repeat them (a repeat is at distance 0)
        c = c[np.arange(k) % c.shape[0]]
    sq = np.einsum("ij,ij->i", c, c)
    knn = np.empty((c.shape[0], k), np.int64)
    for start in range(0, c.shape[0], 2048):
        x = c[start : start + 2048]
        d2 = sq[start : start + 2048, None] - 2.0 * x @ c.T + sq[None, :]
        d2[np.arange(x.shape[0]), np.arange(start, start + x.shape[0])] = -1.0
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(d2, part, 1).argsort(1)
        knn[start : start + 2048] = np.take_along_axis(part, order, 1)
    reps = np.arange(m) % c.shape[0]
    return c[reps], knn[reps]

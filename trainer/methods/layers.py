"""Graph pieces every exported scoring module shares: input conversion, map head, normalisation.

They are written with exportable ops only (no cdist, no reflect padding) so that the
ONNX graph parses in TensorRT and all of the scoring path lives inside the graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FrameInput(nn.Module):
    """uint8 NHWC RGB frames -> normalised float NCHW, inside the graph."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)), persistent=False)
        self.register_buffer(
            "shift", (torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1), persistent=False
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).to(torch.float32)
        return x * self.scale - self.shift


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = math.ceil(4 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


class MapHead(nn.Module):
    """Patch-grid scores -> full-resolution smoothed map.

    Smoothing is a separable Gaussian with zero padding, divided by the blur of a
    constant image: the same result as renormalising the kernel at the border, but
    with plain convolutions that every runtime supports.
    """

    def __init__(self, input_hw: tuple[int, int], sigma: float = 4.0):
        super().__init__()
        self.input_hw = tuple(input_hw)
        k = gaussian_kernel1d(sigma)
        self.pad = k.numel() // 2
        self.register_buffer("kx", k.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("ky", k.view(1, 1, -1, 1), persistent=False)
        ones = torch.ones(1, 1, *self.input_hw)
        self.register_buffer("border", self._blur(ones), persistent=False)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.kx, padding=(0, self.pad))
        return F.conv2d(x, self.ky, padding=(self.pad, 0))

    def forward(self, grid_scores: torch.Tensor) -> torch.Tensor:
        """(B, h, w) raw patch scores -> (B, H, W) smoothed raw map."""
        x = F.interpolate(grid_scores.unsqueeze(1), size=self.input_hw, mode="bilinear", align_corners=False)
        return (self._blur(x) / self.border).squeeze(1)


def normalise(raw_map: torch.Tensor, task: torch.Tensor, center: torch.Tensor, scale: torch.Tensor):
    """Map raw scores so that the task's calibrated threshold lands on 0.5.

    A sigmoid keeps values in (0, 1) for SCADA, and because it is monotonic the image
    score (the max of the normalised map) is anomalous exactly when a region exists.
    """
    c = center.index_select(0, task).view(-1, 1, 1)
    s = scale.index_select(0, task).view(-1, 1, 1)
    norm_map = torch.sigmoid((raw_map - c) / s)
    score = norm_map.flatten(1).amax(dim=1)
    return norm_map, score


def local_patch_features(features: list[torch.Tensor]) -> torch.Tensor:
    """PatchCore's locally aware features: 3x3 average of each level, upsampled to the finest.

    Returns (B, D, h, w) at the first level's resolution.
    """
    size = features[0].shape[-2:]
    pooled = []
    for f in features:
        f = F.avg_pool2d(f, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        if f.shape[-2:] != size:
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        pooled.append(f)
    return torch.cat(pooled, dim=1)


def cosine_distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) teacher and student features -> (B, h, w) 1 - cosine similarity per position,
    written as 0.5 * the squared distance of the unit vectors (equal, and plain ops when exported).

    STFPM's per-level distance and Reverse Distillation's per-level map are this same quantity."""
    return 0.5 * ((F.normalize(t, dim=1) - F.normalize(s, dim=1)) ** 2).sum(dim=1)


def single_slot_outputs(
    raw: torch.Tensor, center: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The graph's three outputs for a method with one shared slot: every frame's task is 0."""
    task = torch.zeros_like(raw[:, 0, 0], dtype=torch.int64)
    anomaly_map, score = normalise(raw, task, center, scale)
    return anomaly_map, score, task


def to_first_level(maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """(B, h, w) per-level maps, each bilinearly resized to the first (finest) level's grid."""
    size = maps[0].shape[-2:]
    up = [
        F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        for m in maps[1:]
    ]
    return [maps[0], *up]

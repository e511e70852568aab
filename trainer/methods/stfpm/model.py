"""STFPM's scoring module (Wang et al., BMVC 2021): a pretrained teacher, a student of the same shape.

The student is trained from scratch to reproduce the teacher's L2-normalised features
at three levels on good images only, so where it fails to (a defect it never saw)
the per-level distance 0.5 * ||t/|t| - s/|s|||^2 is large.

Anomaly map = product over levels of the per-level maps, each upsampled to the finest
level's grid (bilinear), then upsampled to the input and smoothed (`MapHead`). The
product is the paper's choice: a defect must disagree at every scale to score high,
which suppresses one level's noise. (Upsampling to the finest grid before the
product, not to the full image, gives the same map up to interpolation order and
keeps the graph's largest tensors small.)
"""

from __future__ import annotations

import torch
from torch import nn

from linewatch.trainer.backbones import FeatureExtractor
from linewatch.trainer.methods.layers import (
    FrameInput,
    MapHead,
    cosine_distance,
    single_slot_outputs,
    to_first_level,
)


def stfpm_loss(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """Sum over levels of the mean per-position distance (the paper's loss)."""
    return sum(cosine_distance(t, s).mean() for t, s in zip(teacher, student, strict=True))


class STFPMModel(nn.Module):
    def __init__(
        self, teacher: FeatureExtractor, student: nn.Module, input_hw: tuple[int, int], sigma: float = 4.0
    ):
        super().__init__()
        self.input = FrameInput(teacher.mean, teacher.std)
        self.teacher = teacher
        self.student = student
        self.head = MapHead(input_hw, sigma)

    def features(self, frames: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        x = self.input(frames)
        with torch.no_grad():
            t = self.teacher(x)
        return t, self.student(x)

    def level_maps(self, frames: torch.Tensor) -> list[torch.Tensor]:
        t, s = self.features(frames)
        return [cosine_distance(a, b) for a, b in zip(t, s, strict=True)]

    def raw_map(self, frames: torch.Tensor) -> torch.Tensor:
        maps = to_first_level(self.level_maps(frames))
        product = maps[0]
        for m in maps[1:]:
            product = product * m
        return self.head(product)

    def forward(self, frames, center, scale):
        raw = self.raw_map(frames)
        return single_slot_outputs(raw, center, scale)

"""Reverse Distillation's scoring module (Deng & Li, CVPR 2022, "Anomaly Detection via Reverse
Distillation from One-Class Embedding").

- Teacher: a frozen pretrained encoder, three levels. The paper uses Wide-ResNet-50's layer1-3;
  the offline default here is EfficientNet-Lite0's feature indices (1, 2, 3) (strides 4, 8, 16;
  24, 40 and 112 channels), from the backbone registry.
- One-class bottleneck embedding (OCBE, trainable): multi-scale feature fusion (the two finer levels
  brought to the coarsest by stride-2 3x3 convolutions, concatenated with it) and a residual layer
  with stride 2 that compresses them into one low-resolution embedding (stride 32).
- Student decoder (trainable, random init): the teacher in reverse. Three stages, each a transposed
  2x2 stride-2 convolution block (the paper's de-ResNet blocks), give back the teacher's levels from
  coarsest to finest.

Loss: sum over levels of 1 - cos(teacher, student) with each image's level flattened to one vector
(the paper's training loss). Map: sum over levels of the per-position 1 - cos, each upsampled to the
input size; then the shared Gaussian smoothing (`MapHead`, sigma 4 as the paper). Upsampling each
level to the finest grid first, then once to the input, is the same map up to interpolation order
and keeps the graph's largest tensors small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from linewatch.trainer.backbones import FeatureExtractor
from linewatch.trainer.methods.layers import (
    FrameInput,
    MapHead,
    cosine_distance,
    single_slot_outputs,
    to_first_level,
)


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet's basic block; stride 2 halves the grid (with a 1x1 stride-2 shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, 1, relu=False))
        self.short = (
            conv_bn(cin, cout, 1, stride, relu=False) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.short(x))


class DeBlock(nn.Module):
    """The decoder's upsampling block: a transposed 2x2 stride-2 convolution instead of the first conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, 2, 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            conv_bn(cout, cout, 3, 1, relu=False),
        )
        self.short = nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, 2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.short(x))


class Bottleneck(nn.Module):
    """OCBE: multi-scale feature fusion, then one residual layer with stride 2 -> the one-class embedding."""

    def __init__(self, channels: list[int], embed: int, blocks: int = 2):
        super().__init__()
        c1, c2, c3 = channels
        self.down1 = nn.Sequential(conv_bn(c1, c2, 3, 2), conv_bn(c2, c3, 3, 2))
        self.down2 = conv_bn(c2, c3, 3, 2)
        layer: list[nn.Module] = [BasicBlock(3 * c3, embed, stride=2)]
        layer += [BasicBlock(embed, embed) for _ in range(blocks - 1)]
        self.embed = nn.Sequential(*layer)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        a, b, c = feats
        a, b = self.down1(a), self.down2(b)
        size = c.shape[-2:]
        if a.shape[-2:] != size:  # input sizes that are not a multiple of 16
            a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        if b.shape[-2:] != size:
            b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
        return self.embed(torch.cat([a, b, c], dim=1))


class Decoder(nn.Module):
    """The student: one-class embedding -> the teacher's three levels, coarsest first, returned finest first."""

    def __init__(self, channels: list[int], embed: int, blocks: int = 2):
        super().__init__()
        c1, c2, c3 = channels
        stages = []
        for cin, cout in ((embed, c3), (c3, c2), (c2, c1)):
            stages.append(
                nn.Sequential(DeBlock(cin, cout), *[BasicBlock(cout, cout) for _ in range(blocks - 1)])
            )
        self.stages = nn.ModuleList(stages)

    def forward(self, z: torch.Tensor, sizes: list[torch.Size]) -> list[torch.Tensor]:
        out = []
        for stage, size in zip(self.stages, reversed(sizes), strict=True):
            z = stage(z)
            if z.shape[-2:] != size:  # odd grids: match the teacher's level exactly
                z = F.interpolate(z, size=size, mode="bilinear", align_corners=False)
            out.append(z)
        return out[::-1]


def rd_loss(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """The paper's loss: per level, 1 - cos of each image's flattened features, mean over the batch."""
    total = torch.zeros(())
    for t, s in zip(teacher, student, strict=True):
        cos = F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1)
        total = total + (1.0 - cos).mean()
    return total


class ReverseDistillationModel(nn.Module):
    def __init__(
        self,
        teacher: FeatureExtractor,
        input_hw: tuple[int, int],
        sigma: float = 4.0,
        embed: int | None = None,
        blocks: int = 2,
    ):
        super().__init__()
        channels = list(teacher.channels)
        if len(channels) != 3:
            raise ValueError(f"reverse distillation needs three teacher levels, got {len(channels)}")
        embed = embed or 2 * channels[-1]
        self.input = FrameInput(teacher.mean, teacher.std)
        self.teacher = teacher
        self.bottleneck = Bottleneck(channels, embed, blocks)
        self.decoder = Decoder(channels, embed, blocks)
        self.head = MapHead(input_hw, sigma)

    def trainable(self) -> nn.ModuleDict:
        """What learns (and what a run saves): the bottleneck and the decoder; the teacher is frozen."""
        return nn.ModuleDict({"bottleneck": self.bottleneck, "decoder": self.decoder})

    def features(self, frames: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        x = self.input(frames)
        with torch.no_grad():
            t = self.teacher(x)
        s = self.decoder(self.bottleneck(t), [f.shape[-2:] for f in t])
        return t, s

    def level_maps(self, frames: torch.Tensor) -> list[torch.Tensor]:
        t, s = self.features(frames)
        return [cosine_distance(a, b) for a, b in zip(t, s, strict=True)]

    def raw_map(self, frames: torch.Tensor) -> torch.Tensor:
        maps = to_first_level(self.level_maps(frames))
        total = maps[0]
        for m in maps[1:]:
            total = total + m
        return self.head(total)

    def forward(self, frames, center, scale):
        raw = self.raw_map(frames)
        return single_slot_outputs(raw, center, scale)

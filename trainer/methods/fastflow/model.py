"""FastFlow's scoring module (Yu et al., 2021): a frozen backbone and a 2-D normalising flow per level.

Each feature level (B, C, h, w) is normalised over (C, h, w) with a learned element-wise affine
(the reference implementation's LayerNorm for ResNet-like backbones, written as plain reductions
so the graph needs no LayerNormalization op), then mapped by `steps` flow steps to a latent `z`
that should be standard normal on good images. A flow step is hand-written (`AffineCoupling`):

    x1, x2 = split(x)                     # channels, first half conditions the second
    s, t   = 0.1 * subnet(x1)             # subnet: conv k x k -> ReLU -> conv k x k, k alternating 3 / 1
    s      = clamp * tanh(s / clamp)      # soft clamp keeps exp(s) bounded
    y      = cat(x1, x2 * exp(s) + t)
    y      = y * exp(g) + b               # per-channel global affine (learned, like FrEIA's AllInOneBlock)
    y      = y[:, perm]                   # fixed random channel permutation (seeded)

log|det J| = sum(s) + h * w * sum(g). Training loss (per image) = 0.5 * sum(z^2) - log|det J|,
the negative log-likelihood up to a constant (anomalib's).

Anomaly map, as anomalib computes it: per level -exp(-0.5 * mean_c z^2) (minus the likelihood
of the latent, per position), brought to the finest level's grid (bilinear), averaged over the
levels, then upsampled and smoothed (`MapHead`). Every op is static and in TensorRT's list
(Conv, Relu, Tanh, Exp, Gather with a constant index, ReduceMean, Resize).
"""

from __future__ import annotations

import torch
from torch import nn

from linewatch.trainer.backbones import FeatureExtractor
from linewatch.trainer.methods.layers import (
    FrameInput,
    MapHead,
    single_slot_outputs,
    to_first_level,
)


class FeatureNorm(nn.Module):
    """LayerNorm over (C, h, w) with an element-wise affine, from plain reductions."""

    def __init__(self, shape: tuple[int, int, int], eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class AffineCoupling(nn.Module):
    """One flow step: affine coupling + global affine + fixed permutation (see the module docstring)."""

    def __init__(
        self, channels: int, kernel: int, hidden_ratio: float, clamp: float, generator: torch.Generator
    ):
        super().__init__()
        self.c1 = channels // 2
        self.c2 = channels - self.c1
        hidden = max(1, round(channels * hidden_ratio))
        self.subnet = nn.Sequential(
            nn.Conv2d(self.c1, hidden, kernel, padding=kernel // 2),
            nn.ReLU(),
            nn.Conv2d(hidden, 2 * self.c2, kernel, padding=kernel // 2),
        )
        self.clamp = float(clamp)
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.offset = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("perm", torch.randperm(channels, generator=generator))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (y, log|det J| per image)."""
        x1, x2 = x[:, : self.c1], x[:, self.c1 :]
        a = 0.1 * self.subnet(x1)
        s = self.clamp * torch.tanh(a[:, : self.c2] / self.clamp)
        y = torch.cat([x1, x2 * torch.exp(s) + a[:, self.c2 :]], dim=1)
        y = y * torch.exp(self.log_scale) + self.offset
        logdet = s.flatten(1).sum(1) + self.log_scale.sum() * (x.shape[2] * x.shape[3])
        return y.index_select(1, self.perm), logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The exact inverse (tests prove the flow is a bijection)."""
        inv = torch.argsort(self.perm)
        y = y.index_select(1, inv)
        y = (y - self.offset) * torch.exp(-self.log_scale)
        x1, y2 = y[:, : self.c1], y[:, self.c1 :]
        a = 0.1 * self.subnet(x1)
        s = self.clamp * torch.tanh(a[:, : self.c2] / self.clamp)
        return torch.cat([x1, (y2 - a[:, self.c2 :]) * torch.exp(-s)], dim=1)


class Flow2d(nn.Module):
    """`steps` couplings on one level, subnet kernels alternating 3x3 and 1x1 (the paper's ResNet setting)."""

    def __init__(
        self,
        channels: int,
        steps: int,
        hidden_ratio: float,
        clamp: float,
        conv3x3_only: bool,
        generator: torch.Generator,
    ):
        super().__init__()
        self.steps = nn.ModuleList(
            AffineCoupling(channels, 3 if (conv3x3_only or i % 2 == 0) else 1, hidden_ratio, clamp, generator)
            for i in range(steps)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for step in self.steps:
            x, ld = step(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for step in reversed(self.steps):
            z = step.inverse(z)
        return z


def flow_nll(z: torch.Tensor, logdet: torch.Tensor) -> torch.Tensor:
    """Mean over images of 0.5 * sum(z^2) - log|det J| (anomalib's FastFlow loss for one level)."""
    return (0.5 * (z**2).flatten(1).sum(1) - logdet).mean()


def level_map(z: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latent -> (B, h, w) -exp(-0.5 * mean_c z^2), as anomalib's anomaly map."""
    return -torch.exp(-0.5 * (z**2).mean(dim=1))


class FlowHead(nn.Module):
    """Per-level normalisation and flow: the trained part, saved with a run."""

    def __init__(
        self,
        channels: list[int],
        grid_hw: list[tuple[int, int]],
        steps: int,
        hidden_ratio: float,
        clamp: float,
        conv3x3_only: bool,
        seed: int,
    ):
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        self.norms = nn.ModuleList(
            FeatureNorm((c, h, w)) for c, (h, w) in zip(channels, grid_hw, strict=True)
        )
        self.flows = nn.ModuleList(Flow2d(c, steps, hidden_ratio, clamp, conv3x3_only, g) for c in channels)

    def forward(self, features: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [flow(norm(f)) for f, norm, flow in zip(features, self.norms, self.flows, strict=True)]


class FastFlowModel(nn.Module):
    def __init__(self, backbone: FeatureExtractor, head: FlowHead, input_hw: tuple[int, int], sigma: float):
        super().__init__()
        self.input = FrameInput(backbone.mean, backbone.std)
        self.backbone = backbone
        self.head = head
        self.map_head = MapHead(input_hw, sigma)

    def latents(self, frames: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x = self.input(frames)
        with torch.no_grad():
            features = self.backbone(x)
        return self.head([f.detach() for f in features])

    def raw_map(self, frames: torch.Tensor) -> torch.Tensor:
        maps = to_first_level([level_map(z) for z, _ in self.latents(frames)])
        total = maps[0]
        for m in maps[1:]:
            total = total + m
        return self.map_head(total / len(maps))

    def forward(self, frames, center, scale):
        raw = self.raw_map(frames)
        return single_slot_outputs(raw, center, scale)

"""CFA's scoring module (Lee et al., IEEE Access 2022, "CFA: Coupled-hypersphere-based Feature
Adaptation for Target-Oriented Anomaly Localization").

- Patch features: the frozen backbone's levels as PatchCore uses them (3x3 local average, the
  coarser level upsampled to the finer grid, concatenated; Lite0 levels 2 and 3: 152 dims at
  stride 8), as the paper's descriptor input (it uses Wide-ResNet-50's layers 1-3).
- Patch descriptor: one learned 1x1 convolution (the paper's CoordConv without the coordinate
  channels: a simplification, the centres are matched position-free anyway).
- Memory bank: the centres of the hyperspheres, a graph DATA input `(N, D)` (so a bank-only refresh
  reuses the engine). Score of a patch: its K nearest centres by squared distance, the softmin
  weight of the nearest times its distance (the paper's scoring), minus the radius r^2 (a constant
  shift, calibrated away). Map: upsampled and smoothed by the shared `MapHead`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from linewatch.trainer.backbones import FeatureExtractor
from linewatch.trainer.methods.layers import (
    FrameInput,
    MapHead,
    local_patch_features,
    single_slot_outputs,
)


def squared_distances(phi: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(B, P, D) descriptors and (N, D) centres -> (B, P, N) squared distances, in matmul form."""
    d2 = (phi * phi).sum(-1, keepdim=True) - 2.0 * torch.matmul(phi, bank.t()) + (bank * bank).sum(-1)
    return d2.clamp_min(0.0)


def soft_boundary_loss(
    phi: torch.Tensor, bank: torch.Tensor, k: int, j: int, radius: float, nu: float, alpha: float
) -> torch.Tensor:
    """The paper's loss: pull each descriptor into the hyperspheres (radius r) of its K nearest
    centres (attraction), and push the next J centres (hard negatives) out beyond r^2 + alpha
    (repulsion), both scaled by 1/nu."""
    d2 = squared_distances(phi, bank)
    n = min(k + j, bank.shape[0])
    k = min(k, n)
    top = d2.topk(n, dim=-1, largest=False).values
    r2 = radius**2
    loss = F.relu(top[..., :k] - r2).mean() / nu
    if n > k:
        loss = loss + F.relu(r2 - top[..., k:] - alpha).mean() / nu
    return loss


class CFAModel(nn.Module):
    def __init__(
        self,
        extractor: FeatureExtractor,
        input_hw: tuple[int, int],
        sigma: float = 4.0,
        dim: int | None = None,
        k: int = 3,
        radius: float = 1e-5,
    ):
        super().__init__()
        self.input = FrameInput(extractor.mean, extractor.std)
        self.extractor = extractor
        channels = sum(extractor.channels)
        self.descriptor = nn.Conv2d(channels, dim or channels, kernel_size=1)
        self.head = MapHead(input_hw, sigma)
        self.k = k
        self.radius = radius

    def patch_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) frozen locally aware features (no gradient: the backbone never learns)."""
        with torch.no_grad():
            return local_patch_features(self.extractor(self.input(frames)))

    def describe(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, P, D) adapted patch descriptors and the patch grid."""
        phi = self.descriptor(self.patch_features(frames))
        _b, _d, h, w = phi.shape
        return phi.flatten(2).transpose(1, 2), (h, w)

    def patch_scores(self, phi: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """(B, P): softmin over the K nearest centres' squared distances, weight of the nearest times it, - r^2."""
        k = min(self.k, bank.shape[0])
        top = squared_distances(phi, bank).topk(k, dim=-1, largest=False).values
        weight = torch.softmax(-top, dim=-1)[..., 0]
        return weight * top[..., 0] - self.radius**2

    def raw_map(self, frames: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        phi, (h, w) = self.describe(frames)
        return self.head(self.patch_scores(phi, bank).reshape(-1, h, w))

    def forward(self, frames, bank, center, scale):
        raw = self.raw_map(frames, bank)
        return single_slot_outputs(raw, center, scale)

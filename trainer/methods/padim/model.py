"""PaDiM's torch scoring model: a Gaussian per patch position, Mahalanobis distance map.

Means (S, P, d) and inverse covariances (S, P, d, d) for S slots are graph inputs, so
new statistics are a data refresh, not a new graph.
"""

from __future__ import annotations

import torch
from torch import nn

from linewatch.trainer.backbones import FeatureExtractor
from linewatch.trainer.methods.layers import FrameInput, MapHead, normalise


class PadimModel(nn.Module):
    def __init__(
        self, extractor: FeatureExtractor, input_hw: tuple[int, int], keep: torch.Tensor, sigma: float = 4.0
    ):
        super().__init__()
        self.input = FrameInput(extractor.mean, extractor.std)
        self.extractor = extractor
        self.head = MapHead(input_hw, sigma)
        self.register_buffer("keep", keep.long())  # the seeded random dimension reduction

    def embed(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        feats = self.extractor(self.input(frames))
        size = feats[0].shape[-2:]
        ups = [
            f if f.shape[-2:] == size else nn.functional.interpolate(f, size=size, mode="nearest")
            for f in feats
        ]
        emb = torch.cat(ups, dim=1).index_select(1, self.keep)
        _b, _d, h, w = emb.shape
        return emb.flatten(2).transpose(1, 2), (h, w)  # (B, P, d)

    def distances(self, q: torch.Tensor, mean: torch.Tensor, inv_cov: torch.Tensor) -> torch.Tensor:
        """(B, S, P) Mahalanobis distances of every patch to every slot's Gaussian at its position."""
        diff = q.unsqueeze(1) - mean.unsqueeze(0)  # (B, S, P, d)
        left = torch.matmul(diff.unsqueeze(-2), inv_cov.unsqueeze(0)).squeeze(-2)
        return torch.sqrt((left * diff).sum(-1).clamp_min(0.0))

    def raw_map(self, frames, mean, inv_cov, task: torch.Tensor | None = None):
        q, (h, w) = self.embed(frames)
        dist = self.distances(q, mean, inv_cov)
        if task is None:
            task = dist.mean(dim=2).argmin(dim=1)
        b, _, p = dist.shape
        sel = dist.gather(1, task.view(b, 1, 1).expand(b, 1, p)).squeeze(1)
        return self.head(sel.reshape(b, h, w)), task

    def forward(self, frames, mean, inv_cov, center, scale):
        raw, task = self.raw_map(frames, mean, inv_cov)
        anomaly_map, score = normalise(raw, task, center, scale)
        return anomaly_map, score, task

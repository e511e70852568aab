"""PatchCore's torch scoring model: patch features, nearest neighbour in per-task banks, map.

The module's forward is the exported graph. The banks for all tasks are one input of
shape (T, M, D), so task inference (lowest mean nearest-neighbour distance) and
scoring share one chunked nearest-neighbour search (`knn.py`).
"""

from __future__ import annotations

import torch
from torch import nn

from linewatch.trainer.backbones import FeatureExtractor
from linewatch.trainer.methods.layers import FrameInput, MapHead, local_patch_features, normalise
from linewatch.trainer.methods.patchcore.knn import nearest_per_task


class PatchCoreModel(nn.Module):
    def __init__(self, extractor: FeatureExtractor, input_hw: tuple[int, int], sigma: float = 4.0):
        super().__init__()
        self.input = FrameInput(extractor.mean, extractor.std)
        self.extractor = extractor
        self.head = MapHead(input_hw, sigma)

    def embed(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, P, D) locally aware patch features and the patch grid size."""
        emb = local_patch_features(self.extractor(self.input(frames)))
        _b, _d, h, w = emb.shape
        return emb.flatten(2).transpose(1, 2), (h, w)

    def patch_scores(
        self, q: torch.Tensor, bank: torch.Tensor, bank_knn: torch.Tensor, task: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-weighted nearest-neighbour distance per patch, and the task used.

        The nearest neighbour is found chunk by chunk (`knn.py`): the largest tensor is
        (B*P, BANK_CHUNK), never the (B, P, T*M) distance matrix.
        """
        b, p, d = q.shape
        t, m, _ = bank.shape
        flat = bank.reshape(t * m, d)
        nn_d2, nn_idx = nearest_per_task(q, bank)  # (B, P, T) each
        nn_d = torch.sqrt(nn_d2)
        if task is None:
            task = nn_d.mean(dim=1).argmin(dim=1)  # task inference: (B,)
        sel = task.view(b, 1, 1).expand(b, p, 1)
        nn_d = nn_d.gather(2, sel).squeeze(2)  # (B, P)
        nn_idx = nn_idx.gather(2, sel).squeeze(2)
        # PatchCore re-weighting: how isolated the nearest bank point is among its own neighbours.
        offset = (task * m).view(b, 1)
        neigh = bank_knn.reshape(t * m, -1)[nn_idx + offset] + offset.unsqueeze(-1)  # (B, P, k)
        neigh_feats = flat[neigh]  # (B, P, k, D)
        dk = torch.sqrt(((q.unsqueeze(2) - neigh_feats) ** 2).sum(-1).clamp_min(0.0))
        weight = 1.0 - torch.softmax(dk, dim=-1)[..., 0]
        return weight * nn_d, task

    def raw_map(
        self,
        frames: torch.Tensor,
        bank: torch.Tensor,
        bank_knn: torch.Tensor,
        task: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q, (h, w) = self.embed(frames)
        scores, task = self.patch_scores(q, bank, bank_knn, task)
        return self.head(scores.reshape(-1, h, w)), task

    def forward(self, frames, bank, bank_knn, center, scale):
        raw, task = self.raw_map(frames, bank, bank_knn)
        anomaly_map, score = normalise(raw, task, center, scale)
        return anomaly_map, score, task

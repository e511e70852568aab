"""Per-position Gaussian statistics and the rules for combining them across tasks.

`GaussianStats` carries count, mean and scatter (sum of centred outer products) so two
sets combine exactly: the merged covariance equals the one all the data would give,
including the spread between task means. The published continual PaDiM instead
averages per-task means and covariances, which loses that between-task spread.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GaussianStats:
    n: int
    mean: torch.Tensor  # (P, d) float64
    scatter: torch.Tensor  # (P, d, d) float64

    @classmethod
    def from_features(cls, feats: torch.Tensor) -> GaussianStats:
        """feats (N, P, d) -> statistics per position."""
        x = feats.double()
        mean = x.mean(0)
        centred = (x - mean).permute(1, 0, 2)  # (P, N, d)
        return cls(x.shape[0], mean, centred.transpose(1, 2) @ centred)

    def merge(self, other: GaussianStats) -> GaussianStats:
        n = self.n + other.n
        delta = (other.mean - self.mean).unsqueeze(-1)  # (P, d, 1)
        mean = self.mean + delta.squeeze(-1) * (other.n / n)
        scatter = self.scatter + other.scatter + (delta @ delta.transpose(1, 2)) * (self.n * other.n / n)
        return GaussianStats(n, mean, scatter)

    def covariance(self) -> torch.Tensor:
        return self.scatter / max(self.n - 1, 1)


def regularised_inverse(cov: torch.Tensor, eps: float) -> torch.Tensor:
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype)
    return torch.linalg.inv(cov + eps * eye)

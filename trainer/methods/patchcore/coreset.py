"""Greedy k-center coreset selection on a random projection.

Why this shape: each greedy step is one matrix-vector product over all candidates
plus a running minimum, done in place on preallocated buffers. The projection to a
low dimension (Johnson-Lindenstrauss) keeps the candidate matrix small enough to stay
in cache, which is what makes the loop fast on a 2-core CPU.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


def random_projection(dim_in: int, dim_out: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(dim_in, dim_out, generator=generator) / dim_out**0.5


def greedy_coreset(
    features: torch.Tensor,
    n_select: int,
    proj_dim: int | None = 32,
    seed: int = 0,
    progress: bool = True,
    desc: str = "coreset",
) -> torch.Tensor:
    """Indices of `n_select` rows of `features` (N, D) chosen by greedy k-center.

    Each step picks the point farthest from everything chosen so far, so the coreset
    covers the feature distribution's tails, which is where anomalies are judged.
    """
    n = features.shape[0]
    if n_select >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    z = features.float()
    if proj_dim is not None and proj_dim < z.shape[1]:
        z = z @ random_projection(z.shape[1], proj_dim, gen)
    z = z.contiguous()
    sq_norm = (z * z).sum(dim=1)
    min_dist = torch.full((n,), float("inf"))
    buf = torch.empty(n)
    chosen = torch.empty(n_select, dtype=torch.long)
    idx = int(torch.randint(n, (1,), generator=gen))
    for i in tqdm(range(n_select), desc=desc, disable=not progress, mininterval=1.0, leave=False):
        chosen[i] = idx
        center = z[idx]
        # squared distance to the new center: |z|^2 - 2 z.c + |c|^2
        torch.addmv(sq_norm, z, center, alpha=-2.0, out=buf)
        buf.add_(sq_norm[idx])
        torch.minimum(min_dist, buf, out=min_dist)
        idx = int(torch.argmax(min_dist))
    return chosen


def coverage_radius(features: torch.Tensor, coreset: torch.Tensor, chunk: int = 8192) -> float:
    """Largest distance from any point to its nearest coreset point: the k-center objective."""
    worst = 0.0
    c_sq = (coreset * coreset).sum(1)
    for start in range(0, features.shape[0], chunk):
        x = features[start : start + chunk]
        d2 = (x * x).sum(1, keepdim=True) - 2 * x @ coreset.T + c_sq
        worst = max(worst, float(d2.clamp_min(0).min(dim=1).values.max().sqrt()))
    return worst

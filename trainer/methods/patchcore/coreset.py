"""Greedy k-center coreset selection on a random projection.

Why this shape: each greedy step is one matrix-vector product over all candidates
plus a running minimum, done in place on preallocated buffers. The projection to a
low dimension (Johnson-Lindenstrauss) keeps the candidate matrix small enough to stay
in cache, which is what makes the loop fast on a 2-core CPU.

Tiled frames multiply the candidates (8 tiles of 200 images: 1.4 M patches), and the greedy
cost is candidates x picks. Above ``CHUNK`` x 2 candidates the selection runs in two stages, the
composable-coreset scheme of distributed k-center: every chunk of candidates picks its share
(twice over) by greedy k-center, then one greedy pass over the union picks the coreset. A rare
pattern is kept by its own chunk's greedy, so the tails stay covered; the cost drops about 4x.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm


def random_projection(dim_in: int, dim_out: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(dim_in, dim_out, generator=generator) / dim_out**0.5


CHUNK = 131_072
"""First-stage chunk size (candidates) of the two-stage selection used for very large sets."""


def greedy_coreset(
    features: torch.Tensor,
    n_select: int,
    proj_dim: int | None = 32,
    seed: int = 0,
    progress: bool = True,
    desc: str = "coreset",
    chunk: int = CHUNK,
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
    if n <= 2 * chunk or 4 * n_select >= n:
        return _greedy(z, n_select, gen, progress, desc)
    # Two stages: each chunk (a seeded shuffle, so chunks mix images) keeps twice its share.
    order = torch.randperm(n, generator=gen)
    parts = []
    for start in range(0, n, chunk):
        idx = order[start : start + chunk]
        share = min(len(idx), math.ceil(2 * n_select * len(idx) / n))
        parts.append(idx[_greedy(z[idx].contiguous(), share, gen, progress, f"{desc} (stage 1)")])
    union = torch.cat(parts)
    return union[_greedy(z[union].contiguous(), n_select, gen, progress, f"{desc} (stage 2)")]


def _greedy(z: torch.Tensor, n_select: int, gen: torch.Generator, progress: bool, desc: str) -> torch.Tensor:
    n = z.shape[0]
    if n_select >= n:
        return torch.arange(n)
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

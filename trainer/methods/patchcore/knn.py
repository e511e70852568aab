"""Exact nearest neighbour of every patch in every task's bank, without the patch x bank matrix.

Why: on a CPU the distance GEMM is the one unavoidable cost of PatchCore. Written densely
(`||q||^2 - 2 q.b + ||b||^2`, clamp, reshape, min over the bank) the (B*P, T*M) matrix is
written once by the GEMM and then re-read and re-written by every elementwise op and the
reduction, at 30,000 patches 120 MB a pass: the graph ran 2.5x slower than the GEMM alone.

How: the bank axis is cut into fixed chunks of `BANK_CHUNK` columns. Per chunk one `Gemm`
computes `||b||^2 - 2 q.b` (alpha=-2 and the bias input fold the two elementwise passes into
the GEMM) and one `TopK(k=1, largest=0)` reads it back once for both value and index while it
is still in cache; the per-chunk minima (B*P, n_chunks) are tiny, and `||q||^2`, the clamp and
the sqrt are applied after the minimum, on (B*P, T) only (they are monotone and per-patch, so
they cannot change which bank point is nearest).

Why a static unrolled split and not a Loop/Scan: the bank is a graph input with a static shape
(T, M, D) (a bank-only refresh keeps it: M is the padded per-task budget share), so the chunk
count is a constant of the graph and the unrolled slices have constant bounds. Every op is in
TensorRT 8.6's parser list and every shape stays static, which a Loop with a carried running
minimum would not guarantee (TensorRT's loop support and ONNX shape inference of loop-carried
values are both partial). A new chunk count only comes with a new bank shape, which already
means a new graph.

Exactness: ties break to the lowest index inside a chunk (ONNX TopK) and to the earliest chunk
across chunks (ArgMin, select_last_index=0), as a dense argmin does. Rounding differs from the
dense form only in the order of two fp32 additions, far below golden-sample tolerances.
"""

from __future__ import annotations

import torch

BANK_CHUNK = 512  # columns per chunk: (1024 patches x 512) fp32 = 2 MiB per frame, one core's L2


def nearest_per_task(
    q: torch.Tensor, bank: torch.Tensor, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance to, and index of, the nearest bank point per patch and task.

    q: (B, P, D); bank: (T, M, D). Returns (B, P, T) float (clamped at 0) and (B, P, T) int64
    indices into each task's M rows. `chunk` defaults to `BANK_CHUNK`, read at call time.
    """
    chunk = chunk or BANK_CHUNK
    b, p, d = q.shape
    t, m, _ = bank.shape
    q2 = q.reshape(b * p, d)
    bank_sq = (bank * bank).sum(-1)  # (T, M)
    values, indices = [], []
    for ti in range(t):
        mins, idxs = [], []
        for start in range(0, m, chunk):
            stop = min(m, start + chunk)
            partial = torch.addmm(bank_sq[ti, start:stop], q2, bank[ti, start:stop].t(), beta=1.0, alpha=-2.0)
            v, i = torch.topk(partial, 1, dim=1, largest=False)
            mins.append(v)
            idxs.append(i + start if start else i)
        if len(mins) == 1:
            values.append(mins[0])
            indices.append(idxs[0])
            continue
        cat_v, cat_i = torch.cat(mins, 1), torch.cat(idxs, 1)
        best_v, best_c = cat_v.min(dim=1, keepdim=True)
        values.append(best_v)
        indices.append(cat_i.gather(1, best_c))
    nn_d2 = torch.cat(values, 1) + (q2 * q2).sum(-1, keepdim=True)  # (B*P, T)
    return nn_d2.clamp_min(0.0).reshape(b, p, t), torch.cat(indices, 1).reshape(b, p, t)


def dense_nearest_per_task(q: torch.Tensor, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense form the graph used before (full (B, P, T*M) matrix): the tests' reference and
    the `old` graph of benchmarks/knn_scaling.py. Same contract as `nearest_per_task`."""
    b, p, d = q.shape
    t, m, _ = bank.shape
    flat = bank.reshape(t * m, d)
    d2 = (q * q).sum(-1, keepdim=True) - 2.0 * torch.matmul(q, flat.t()) + (flat * flat).sum(-1)
    return d2.clamp_min(0.0).reshape(b, p, t, m).min(dim=3)

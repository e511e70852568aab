"""A tiny but real ScoringGraph: for tests, smoke benchmarks and edge-runtime tests.

Why it exists: the exporter, the bundle format and the edge runtime must be testable
in seconds and without a trained method. This graph has the same anatomy as the
memory-bank methods (uint8 NHWC in, normalisation, a conv feature extractor, kNN
against a per-task bank given as a data input, task picked by lowest mean
nearest-neighbour distance, bilinear upsampling, Gaussian smoothing, per-task score
normalisation from a data input, 0.5 threshold), just with random conv weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from linewatch.trainer.methods.base import ScoringGraph


class ToyScorer(nn.Module):
    """kNN-to-bank anomaly scorer; `forward(frames, bank, norm)` per the ScoringGraph contract."""

    def __init__(self, input_hw: tuple[int, int], channels: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.input_hw = input_hw
        self.fh, self.fw = input_hw[0] // 4, input_hw[1] // 4
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, channels, 3, stride=2, padding=1),
        )
        with torch.no_grad():
            for p in self.features.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        k = torch.exp(-(torch.arange(-2, 3, dtype=torch.float32) ** 2) / 2.0)
        k = k / k.sum()
        self.register_buffer("blur", (k[:, None] * k[None, :]).view(1, 1, 5, 5))

    def patch_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, P, C) patch features of uint8 NHWC frames."""
        x = frames.permute(0, 3, 1, 2).float() / 255.0  # transpose-then-cast: the exporter fixes the order
        x = (x - self.mean) / self.std
        return self.features(x).flatten(2).transpose(1, 2)

    def forward(
        self, frames: torch.Tensor, bank: torch.Tensor, norm: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.patch_features(frames)  # B, P, C
        t, m, c = bank.shape
        flat = bank.reshape(t * m, c)
        d2 = (f * f).sum(-1, keepdim=True) - 2.0 * f @ flat.t() + (flat * flat).sum(-1)[None, None, :]
        d = d2.unflatten(2, (t, m)).amin(-1).clamp_min(0.0).sqrt()  # B, P, T
        task = d.mean(1).argmin(-1)  # B
        dist = torch.gather(d, 2, task.view(-1, 1, 1).expand(-1, d.shape[1], 1)).squeeze(2)
        amap = dist.reshape(-1, 1, self.fh, self.fw)
        amap = F.interpolate(amap, size=self.input_hw, mode="bilinear", align_corners=False)
        amap = F.conv2d(amap, self.blur, padding=2)[:, 0]
        nt = norm[task]  # B, 2: (offset, scale) so that offset maps to 0.5
        amap = (amap - nt[:, 0, None, None]) * nt[:, 1, None, None] + 0.5
        score = amap.flatten(1).amax(1)
        return amap, score, task


def toy_frames(n: int, input_hw: tuple[int, int], seed: int = 0, defect: bool = False) -> np.ndarray:
    """Smooth textured uint8 frames; `defect=True` paints a bright square on each."""
    rng = np.random.default_rng(seed)
    h, w = input_hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        phase = rng.uniform(0, 2 * np.pi, 3)
        base = 128 + 40 * np.sin(xx[..., None] / 3.0 + phase) * np.cos(yy[..., None] / 4.0)
        img = base + rng.normal(0, 6, (h, w, 3))
        if defect:
            y0, x0 = rng.integers(0, h - h // 4), rng.integers(0, w - w // 4)
            img[y0 : y0 + h // 4, x0 : x0 + w // 4] = 250
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def toy_scoring_graph(
    input_hw: tuple[int, int] = (32, 32),
    n_tasks: int = 2,
    bank_size: int = 48,
    seed: int = 0,
    channels: int = 16,
) -> ScoringGraph:
    """A fitted toy graph: the bank holds real patch features of toy frames, calibrated on others."""
    module = ToyScorer(input_hw, channels=channels, seed=seed).eval()
    banks = []
    with torch.no_grad():
        for t in range(n_tasks):
            frames = toy_frames(4, input_hw, seed=seed * 100 + t)
            feats = module.patch_features(torch.from_numpy(frames)).reshape(-1, channels).numpy()
            idx = np.random.default_rng(seed + t).choice(
                len(feats), bank_size, replace=len(feats) < bank_size
            )
            banks.append(feats[idx])
    bank = np.stack(banks).astype(np.float32)
    raw_norm = np.tile(np.array([[0.0, 1.0]], np.float32), (n_tasks, 1))
    with torch.no_grad():
        good = toy_frames(4, input_hw, seed=seed * 100 + 50)
        amap, _, _ = module(torch.from_numpy(good), torch.from_numpy(bank), torch.from_numpy(raw_norm))
        peak = float(amap.flatten(1).amax(1).max()) - 0.5
    scale = 0.5 / max(peak, 1e-6)
    norm = np.array([[peak, scale]] * n_tasks, np.float32)  # the max good score lands at 0.5
    return ScoringGraph(
        module=module,
        data_inputs={"bank": bank, "norm": norm},
        input_hw=input_hw,
        meta={
            "method": "toy",
            "strategy": "cl",
            "backbone": "toy-conv",
            "tasks": [f"task{t}" for t in range(n_tasks)],
            "calibration": {"kind": "max-good", "offset": peak, "scale": scale},
        },
    )


def toy_golden(input_hw: tuple[int, int] = (32, 32)) -> np.ndarray:
    """Three golden frames: two good, one with a defect."""
    return np.concatenate([toy_frames(2, input_hw, seed=5), toy_frames(1, input_hw, seed=6, defect=True)])


def write_toy_bundle(out: str | Path, graph: ScoringGraph | None = None, **kwargs: Any) -> Any:
    """A complete toy bundle at `out` (keyword arguments go to `write_bundle`); returns WrittenBundle.

    For tests of anything that consumes bundles (the edge runtime, the refresh job):
    seconds to write, a real ONNX graph, real golden samples.
    """
    from linewatch.export.bundle_writer import BundleInfo, write_bundle

    g = graph or toy_scoring_graph()
    info = BundleInfo(
        name=kwargs.pop("name", "toy"),
        method="toy",
        strategy="cl",
        backbone="toy-conv",
        tasks=list(g.meta.get("tasks", ["task0"])),
        calibration=dict(g.meta.get("calibration", {})),
        provenance={"data": "linewatch.export.toy synthetic frames"},
        golden_source="linewatch.export.toy.toy_golden",
    )
    golden = kwargs.pop("golden_inputs", None)
    return write_bundle(
        g, out, info=info, golden_inputs=toy_golden(g.input_hw) if golden is None else golden, **kwargs
    )

"""PatchCore with continual learning by memory (the benchmark's `cl` algorithm).

One total memory budget is shared by per-task coresets. When task i arrives every
stored coreset is re-subsampled to budget/(i+1); at test time the task is inferred by
the lowest mean nearest-neighbour distance and the image is scored on that task's bank.
`naive` keeps only the latest task's bank, to show what forgetting looks like.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from linewatch.trainer.backbones import create_feature_extractor
from linewatch.trainer.methods.base import CommonSettings, ScoringGraph
from linewatch.trainer.methods.common import TorchMethodMixin, batches
from linewatch.trainer.methods.patchcore.coreset import greedy_coreset
from linewatch.trainer.methods.patchcore.model import PatchCoreModel
from linewatch.trainer.methods.registry import register_method


class PatchCoreConfig(BaseModel):
    """The `[patchcore]` section."""

    model_config = ConfigDict(extra="forbid")
    budget: int = Field(30_000, gt=0, description="total memory-bank patches over all tasks")
    coreset_ratio: float = Field(0.1, gt=0, le=1)
    proj_dim: int | None = Field(32, gt=0, description="random projection for coreset selection")
    reweight_k: int = Field(9, ge=1)


@register_method
class PatchCore(TorchMethodMixin[PatchCoreConfig]):
    name: ClassVar[str] = "patchcore"
    strategies: ClassVar[tuple[str, ...]] = ("cl", "naive")
    Config: ClassVar[type[BaseModel]] = PatchCoreConfig
    smoke_config: ClassVar[dict[str, Any]] = {"budget": 400}

    def __init__(self, strategy: str, common: CommonSettings, config: PatchCoreConfig | None = None):
        super().__init__(strategy, common, config)
        self.extractor = create_feature_extractor(common.backbone, common.layers, common.backbone_weights)
        self.model = PatchCoreModel(self.extractor, self.input_hw, common.sigma).eval()
        self.coresets: list[torch.Tensor] = []
        self._steps = 0
        self._bank_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- learning -----------------------------------------------------------------
    def features(self, images: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([self.model.embed(f)[0].flatten(0, 1) for f in batches(images, self.batch_size)])

    def fit_task(self, task: str, images: np.ndarray) -> None:
        """Learn a new task, or re-learn a known one from its current images (a refresh)."""
        feats = self.features(images)
        seed, cfg = self.seed, self.cfg
        self._steps += 1
        if task in self.tasks:
            j = self.tasks.index(task)
            size = min(cfg.budget // len(self.tasks), math.ceil(cfg.coreset_ratio * len(feats)))
            idx = greedy_coreset(feats, size, cfg.proj_dim, seed + 104_729 * self._steps, self.progress)
            self.coresets[j] = feats[idx].clone()
            self._bank_cache = None
            return
        if self.strategy == "naive":
            self.tasks, self.coresets, self.center, self.scale = [], [], [], []
        n_tasks = len(self.tasks) + 1
        per_task = cfg.budget // n_tasks
        size = min(per_task, math.ceil(cfg.coreset_ratio * feats.shape[0]))
        for j, old in enumerate(self.coresets):  # re-subsample earlier coresets to the new share
            if old.shape[0] > per_task:
                keep = greedy_coreset(old, per_task, cfg.proj_dim, seed + 7919 * self._steps + j, False)
                self.coresets[j] = old[keep].clone()
        idx = greedy_coreset(
            feats,
            size,
            cfg.proj_dim,
            seed + 104_729 * self._steps,
            self.progress,
            f"coreset {task}",
        )
        self.tasks.append(task)
        self.coresets.append(feats[idx].clone())
        self.center.append(1.0)
        self.scale.append(1.0)
        self._bank_cache = None

    @property
    def slots(self) -> list[list[str]]:
        return [[t] for t in self.tasks]

    # -- scoring ------------------------------------------------------------------
    def banks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, M, D) bank padded with repeats (which never change a nearest neighbour) and (T, M, k) neighbours.

        M is the per-task budget share: the graph's compute is set by the budget, not the data.
        """
        if self._bank_cache is None:
            # Padding to the budget share keeps the bank shape a function of the task count
            # alone, so more images for a known task is a bank-only refresh (same engine).
            share = self.cfg.budget // len(self.coresets)
            m = max(share, *(c.shape[0] for c in self.coresets))
            k = min(self.cfg.reweight_k, m)
            padded, knn = [], []
            for c in self.coresets:
                reps = torch.arange(m) % c.shape[0]
                padded.append(c[reps])
                knn.append(_self_knn(c, k)[reps])
            self._bank_cache = (torch.stack(padded), torch.stack(knn))
        return self._bank_cache

    def _raw_map(self, frames: torch.Tensor, slot: int) -> torch.Tensor:
        bank, knn = self.banks()
        task = torch.full((frames.shape[0],), slot, dtype=torch.long)
        return self.model.raw_map(frames, bank, knn, task)[0]

    def scoring_graph(self) -> ScoringGraph:
        bank, knn = self.banks()
        return self._graph(self.model, {"bank": bank.numpy(), "bank_knn": knn.numpy()})

    # -- state --------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"coreset.{i}": c.contiguous() for i, c in enumerate(self.coresets)}
        meta = {
            "method": self.name,
            "strategy": self.strategy,
            "config": self.config,
            "tasks": self.tasks,
            "center": self.center,
            "scale": self.scale,
            "steps": self._steps,
        }
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.tasks = list(meta["tasks"])
        self.coresets = [tensors[f"coreset.{i}"] for i in range(len(self.tasks))]
        self.center = [float(v) for v in meta["center"]]
        self.scale = [float(v) for v in meta["scale"]]
        self._steps = int(meta["steps"])
        self._bank_cache = None


def _self_knn(bank: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Each bank point's k nearest bank points, itself first (distance 0)."""
    sq = (bank * bank).sum(1)
    out = []
    for start in range(0, bank.shape[0], chunk):
        x = bank[start : start + chunk]
        d2 = (x * x).sum(1, keepdim=True) - 2 * x @ bank.T + sq
        rows = torch.arange(start, start + x.shape[0])
        d2[torch.arange(x.shape[0]), rows] = -1.0  # force self first despite rounding
        out.append(d2.topk(k, dim=1, largest=False).indices)
    return torch.cat(out)

"""PaDiM and its continual variants.

- `cl`: the published running average of per-task means and covariances (fixed memory).
- `cl-exact`: exact merge of counts, means and scatters (fixed memory, equals joint).
- `per-task`: one Gaussian map per task plus task inference, as PatchCore does.
- `naive`: only the latest task's Gaussians.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from linewatch.trainer.backbones import create_feature_extractor
from linewatch.trainer.methods.base import CommonSettings, ScoringGraph
from linewatch.trainer.methods.common import TorchMethodMixin, batches
from linewatch.trainer.methods.padim.gaussians import GaussianStats, regularised_inverse
from linewatch.trainer.methods.padim.model import PadimModel
from linewatch.trainer.methods.registry import register_method


class PadimConfig(BaseModel):
    """The `[padim]` section."""

    model_config = ConfigDict(extra="forbid")
    dims: int = Field(100, gt=0, description="feature dimensions kept (a seeded random choice)")
    eps: float = Field(0.01, gt=0, description="covariance regulariser (times the identity)")


@register_method
class PaDiM(TorchMethodMixin[PadimConfig]):
    name: ClassVar[str] = "padim"
    strategies: ClassVar[tuple[str, ...]] = ("cl", "cl-exact", "per-task", "naive")
    Config: ClassVar[type[BaseModel]] = PadimConfig
    smoke_config: ClassVar[dict[str, Any]] = {"dims": 16}

    def __init__(self, strategy: str, common: CommonSettings, config: PadimConfig | None = None):
        super().__init__(strategy, common, config)
        self.extractor = create_feature_extractor(common.backbone, common.layers, common.backbone_weights)
        total = sum(self.extractor.channels)
        gen = torch.Generator().manual_seed(common.seed)
        keep = torch.randperm(total, generator=gen)[: min(self.cfg.dims, total)].sort().values
        self.model = PadimModel(self.extractor, self.input_hw, keep, common.sigma).eval()
        # One entry per slot: exact stats for cl-exact/per-task/naive, or (mean, cov) averages for cl.
        self.stats: list[GaussianStats] = []
        self.avg_mean: torch.Tensor | None = None
        self.avg_cov: torch.Tensor | None = None
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def slots(self) -> list[list[str]]:
        if self.strategy == "per-task":
            return [[t] for t in self.tasks]
        if self.strategy == "naive":
            return [self.tasks[-1:]]
        return [list(self.tasks)]

    def features(self, images: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([self.model.embed(f)[0] for f in batches(images, self.batch_size)])

    def fit_task(self, task: str, images: np.ndarray) -> None:
        if task in self.tasks:
            self._relearn(task, images)
            return
        new = GaussianStats.from_features(self.features(images))
        self.tasks.append(task)
        if self.strategy == "per-task":
            self.stats.append(new)
        elif self.strategy == "naive" or not self.stats:
            self.stats = [new]
        elif self.strategy == "cl-exact":
            self.stats = [self.stats[0].merge(new)]
        if self.strategy == "cl":
            k = len(self.tasks)
            cov = new.covariance()
            if self.avg_mean is None:
                self.avg_mean, self.avg_cov = new.mean, cov
            else:
                self.avg_mean = self.avg_mean + (new.mean - self.avg_mean) / k
                self.avg_cov = self.avg_cov + (cov - self.avg_cov) / k
            self.stats = []
        self.center = [1.0] * len(self.slots)
        self.scale = [1.0] * len(self.slots)
        self._cache = None

    def _relearn(self, task: str, images: np.ndarray) -> None:
        """Replace a known task's statistics; only possible where they are kept apart."""
        if self.strategy == "per-task":
            self.stats[self.tasks.index(task)] = GaussianStats.from_features(self.features(images))
        elif self.strategy == "naive" and task == self.tasks[-1]:
            self.stats = [GaussianStats.from_features(self.features(images))]
        else:
            raise ValueError(
                f"padim {self.strategy} merges tasks into one Gaussian and cannot replace task {task!r}; "
                "use the per-task strategy for refreshable tasks, or fit a new run"
            )
        self._cache = None

    def gaussians(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, P, d) means and (S, P, d, d) inverse covariances, float32."""
        if self._cache is None:
            eps = self.cfg.eps
            if self.strategy == "cl":
                pairs = [(self.avg_mean, self.avg_cov)]
            else:
                pairs = [(s.mean, s.covariance()) for s in self.stats]
            means = torch.stack([m for m, _ in pairs]).float()
            invs = torch.stack([regularised_inverse(c, eps) for _, c in pairs]).float()
            self._cache = (means, invs)
        return self._cache

    def _raw_map(self, frames: torch.Tensor, slot: int) -> torch.Tensor:
        mean, inv = self.gaussians()
        task = torch.full((frames.shape[0],), slot, dtype=torch.long)
        return self.model.raw_map(frames, mean, inv, task)[0]

    def scoring_graph(self) -> ScoringGraph:
        mean, inv = self.gaussians()
        return self._graph(self.model, {"mean": mean.numpy(), "inv_cov": inv.numpy()})

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        counts = []
        for i, s in enumerate(self.stats):
            tensors[f"stats.{i}.mean"] = s.mean.contiguous()
            tensors[f"stats.{i}.scatter"] = s.scatter.contiguous()
            counts.append(s.n)
        if self.avg_mean is not None:
            tensors["avg.mean"] = self.avg_mean.contiguous()
            tensors["avg.cov"] = self.avg_cov.contiguous()
        meta = {
            "method": self.name,
            "strategy": self.strategy,
            "config": self.config,
            "tasks": self.tasks,
            "counts": counts,
            "center": self.center,
            "scale": self.scale,
        }
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.tasks = list(meta["tasks"])
        self.stats = [
            GaussianStats(n, tensors[f"stats.{i}.mean"], tensors[f"stats.{i}.scatter"])
            for i, n in enumerate(meta["counts"])
        ]
        self.avg_mean = tensors.get("avg.mean")
        self.avg_cov = tensors.get("avg.cov")
        self.center = [float(v) for v in meta["center"]]
        self.scale = [float(v) for v in meta["scale"]]
        self._cache = None

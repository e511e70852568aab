"""A whole anomaly-detection method in one file with one decorator: what adding a method takes.

Per task, the mean colour of each cell of a `grid` x `grid` image; a frame's raw map is its
cells' colour distance to the mean of the task it is closest to. Crude, but it is a real
method: it learns, infers the task, calibrates through the shared plumbing, exports its
scoring module, and saves its state. `test_toy_method.py` loads this file (the decorator
registers it), runs the same conformance checks as the built-in methods, and unregisters it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from linewatch.trainer.methods.base import CommonSettings, ScoringGraph
from linewatch.trainer.methods.common import TorchMethodMixin, batches
from linewatch.trainer.methods.registry import register_method


class ToyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grid: int = Field(8, ge=1, description="cells per side of the mean image")


class MeanCells(nn.Module):
    def __init__(self, input_hw: tuple[int, int], grid: int):
        super().__init__()
        self.input_hw, self.grid = input_hw, grid

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(frames.permute(0, 3, 1, 2).float() / 255.0, self.grid)

    def distances(self, frames: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """(B, T, g, g): each cell's colour distance to every task's mean."""
        return (self.embed(frames)[:, None] - means[None]).pow(2).sum(2).sqrt()

    def upsample(self, cells: torch.Tensor) -> torch.Tensor:
        return F.interpolate(cells[:, None], size=self.input_hw, mode="bilinear", align_corners=False)[:, 0]

    def raw_map(self, frames: torch.Tensor, means: torch.Tensor, slot: int) -> torch.Tensor:
        return self.upsample(self.distances(frames, means)[:, slot])

    def forward(self, frames: torch.Tensor, means: torch.Tensor, center: torch.Tensor, scale: torch.Tensor):
        d = self.distances(frames, means)
        task = d.flatten(2).mean(2).argmin(1)
        raw = self.upsample(d[torch.arange(d.shape[0]), task])
        amap = torch.sigmoid((raw - center[task][:, None, None]) / scale[task][:, None, None])
        return amap, amap.flatten(1).amax(1), task


@register_method
class ToyMeanCells(TorchMethodMixin[ToyConfig]):
    name: ClassVar[str] = "toy"
    strategies: ClassVar[tuple[str, ...]] = ("cl",)
    Config: ClassVar[type[BaseModel]] = ToyConfig
    smoke_config: ClassVar[dict[str, Any]] = {"grid": 4}

    def __init__(self, strategy: str, common: CommonSettings, config: ToyConfig | None = None):
        super().__init__(strategy, common, config)
        self.model = MeanCells(self.input_hw, self.cfg.grid).eval()
        self.means: list[torch.Tensor] = []

    @property
    def slots(self) -> list[list[str]]:
        return [[t] for t in self.tasks]

    def fit_task(self, task: str, images: np.ndarray) -> None:
        with torch.inference_mode():
            mean = torch.cat([self.model.embed(f) for f in batches(images, self.batch_size)]).mean(0)
        if task in self.tasks:
            self.means[self.tasks.index(task)] = mean
            return
        self.tasks.append(task)
        self.means.append(mean)
        self.center, self.scale = [*self.center, 1.0], [*self.scale, 1.0]

    def _raw_map(self, frames: torch.Tensor, slot: int) -> torch.Tensor:
        return self.model.raw_map(frames, torch.stack(self.means), slot)

    def scoring_graph(self) -> ScoringGraph:
        return self._graph(self.model, {"means": torch.stack(self.means).numpy()})

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        meta = {"method": self.name, "tasks": self.tasks, "center": self.center, "scale": self.scale}
        return {"means": torch.stack(self.means).contiguous()}, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.tasks = list(meta["tasks"])
        self.means = list(tensors["means"])
        self.center = [float(v) for v in meta["center"]]
        self.scale = [float(v) for v in meta["scale"]]

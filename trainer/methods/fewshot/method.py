"""Few-shot memory bank: PatchCore-CL's scoring with a fixed number of task slots, built from 2-8 images.

Why a method of its own: the bank is filled from an augmented support set (each image gives
`views` views, `contract/fewshot.augment`) and subsampled by the same numpy coreset the box uses,
into one of `slots` fixed slots of `bank_per_task` patches. The graph's data inputs never change
shape, so a part onboarded on the box (`linewatch-edge onboard`) is a bank-only bundle on this
graph. The scoring graph is PatchCore's (`patchcore/model.py`); the exported bundle also carries
the embedding graph (`graph.embedding`: frames -> patch features) and the manifest's
`fewshot` section. The extractor is the registry backbone, or a SimSiam fine-tuned one given as
`--backbone-weights` (`linewatch-train train-extractor`, whose record is read from the file's
sidecar JSON into the section's `extractor`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from linewatch.contract.fewshot import (
    EMPTY_TASK,
    AugmentRecipe,
    FewShotSection,
    augment,
    empty_bank,
    greedy_coreset,
    padded_slot,
)
from linewatch.trainer.backbones import create_feature_extractor
from linewatch.trainer.methods.base import CommonSettings, ScoringGraph
from linewatch.trainer.methods.common import TorchMethodMixin, batches
from linewatch.trainer.methods.patchcore.model import PatchCoreModel
from linewatch.trainer.methods.registry import register_method


class FewShotConfig(BaseModel):
    """The `[fewshot]` section."""

    model_config = ConfigDict(extra="forbid")
    slots: int = Field(4, ge=1, description="task slots in the bank (its shape); more needs a full export")
    bank_per_task: int = Field(1000, ge=1, description="coreset patches per task slot")
    views: int = Field(8, ge=1, description="augmented views per support image in the bank")
    holdout_views: int = Field(4, ge=1, description="further views per image, for the box's threshold")
    reweight_k: int = Field(9, ge=1)
    proj_dim: int = Field(32, ge=1)
    augment: AugmentRecipe = Field(default_factory=AugmentRecipe)


class Embedding(nn.Module):
    """The embedding graph: uint8 NHWC frames -> (B, P, D) patch features, PatchCore's own."""

    def __init__(self, model: PatchCoreModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model.embed(frames)[0]


def extractor_record(weights: Path | None) -> dict[str, Any]:
    """What the extractor was trained on: the sidecar `<weights>.json` of train-extractor, or ImageNet."""
    if weights is None:
        return {"kind": "imagenet"}
    sidecar = Path(f"{weights}.json")
    try:
        return {"kind": "file", "file": Path(weights).name, **json.loads(sidecar.read_text())}
    except (OSError, ValueError):
        return {"kind": "file", "file": Path(weights).name}


@register_method
class FewShot(TorchMethodMixin[FewShotConfig]):
    name: ClassVar[str] = "fewshot"
    strategies: ClassVar[tuple[str, ...]] = ("cl",)
    Config: ClassVar[type[BaseModel]] = FewShotConfig
    smoke_config: ClassVar[dict[str, Any]] = {"bank_per_task": 64, "views": 2, "slots": 3}

    def __init__(self, strategy: str, common: CommonSettings, config: FewShotConfig | None = None):
        super().__init__(strategy, common, config)
        self.extractor = create_feature_extractor(common.backbone, common.layers, common.backbone_weights)
        self.model = PatchCoreModel(self.extractor, self.input_hw, common.sigma).eval()
        self.coresets: list[np.ndarray] = []
        with torch.inference_mode():
            probe = torch.zeros((1, *self.input_hw, 3), dtype=torch.uint8)
            self.feature_dim = int(self.model.embed(probe)[0].shape[-1])

    def features(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.cat(
                [self.model.embed(f)[0].flatten(0, 1) for f in batches(images, self.batch_size)]
            ).numpy()

    def support_bank(self, images: np.ndarray, seed: int) -> np.ndarray:
        """The coreset of the augmented views of `images` (exactly what the box computes)."""
        cfg = self.cfg
        rng = np.random.default_rng(seed)
        views = np.concatenate([augment(im, cfg.augment, cfg.views, rng) for im in images])
        feats = self.features(views)
        return feats[greedy_coreset(feats, cfg.bank_per_task, cfg.proj_dim, seed)]

    def fit_task(self, task: str, images: np.ndarray) -> None:
        if task not in self.tasks and len(self.tasks) >= self.cfg.slots:
            raise ValueError(f"all {self.cfg.slots} task slots are taken; raise fewshot.slots and re-export")
        bank = self.support_bank(images, self.seed + len(self.tasks))
        if task in self.tasks:
            self.coresets[self.tasks.index(task)] = bank
            return
        self.tasks.append(task)
        self.coresets.append(bank)
        self.center.append(1.0)
        self.scale.append(1.0)

    @property
    def slots(self) -> list[list[str]]:
        return [[t] for t in self.tasks]

    def banks(self) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        bank, knn = empty_bank(cfg.slots, cfg.bank_per_task, self.feature_dim, cfg.reweight_k)
        for j, c in enumerate(self.coresets):
            bank[j], knn[j] = padded_slot(c, cfg.bank_per_task, cfg.reweight_k)
        return bank, knn

    def _raw_map(self, frames: torch.Tensor, slot: int) -> torch.Tensor:
        bank, knn = self.banks()
        task = torch.full((frames.shape[0],), slot, dtype=torch.long)
        return self.model.raw_map(frames, torch.from_numpy(bank), torch.from_numpy(knn), task)[0]

    def _norm_inputs(self) -> dict[str, np.ndarray]:
        pad = self.cfg.slots - len(self.tasks)
        return {
            "center": np.asarray([*self.center, *([1.0] * pad)], dtype=np.float32),
            "scale": np.asarray([*self.scale, *([1.0] * pad)], dtype=np.float32),
        }

    def section(self) -> FewShotSection:
        cfg = self.cfg
        return FewShotSection(
            slots=cfg.slots,
            bank_per_task=cfg.bank_per_task,
            feature_dim=self.feature_dim,
            knn=cfg.reweight_k,
            views=cfg.views,
            holdout_views=cfg.holdout_views,
            quantile=self.quantile,
            proj_dim=cfg.proj_dim,
            augment=cfg.augment,
            extractor=extractor_record(self.common.backbone_weights),
        )

    def scoring_graph(self) -> ScoringGraph:
        bank, knn = self.banks()
        graph = self._graph(self.model, {"bank": bank, "bank_knn": knn})
        graph.embedding = Embedding(self.model).eval()
        graph.meta["manifest"] = {
            "fewshot": self.section().model_dump(mode="json"),
            "slot_tasks": [*self.tasks, *([EMPTY_TASK] * (self.cfg.slots - len(self.tasks)))],
        }
        return graph

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {
            f"coreset.{i}": torch.from_numpy(np.ascontiguousarray(c)) for i, c in enumerate(self.coresets)
        }
        meta = {
            "method": self.name,
            "strategy": self.strategy,
            "config": self.config,
            "tasks": self.tasks,
            "center": self.center,
            "scale": self.scale,
        }
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.tasks = list(meta["tasks"])
        self.coresets = [tensors[f"coreset.{i}"].numpy() for i in range(len(self.tasks))]
        self.center = [float(v) for v in meta["center"]]
        self.scale = [float(v) for v in meta["scale"]]

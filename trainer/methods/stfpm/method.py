"""STFPM with continual learning by replay.

Teacher: a pretrained backbone from the registry (ResNet-18 as published, with timm or
torchvision weights when the machine can download them or a local `backbone_weights`
file; or the offline default EfficientNet-Lite0). It never falls back to random
weights. Student: the same architecture, randomly initialised, trained with the
published optimiser (SGD, lr 0.4, momentum 0.9, weight decay 1e-4) by default.

The published levels are ResNet-18's layer1-3 (strides 4, 8, 16); `layers=None`
picks the same strides, feature indices (1, 2, 3), on either backbone.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar, Literal

import numpy as np
import timm
import torch
from pydantic import BaseModel, Field

from linewatch.trainer.backbones import create_feature_extractor
from linewatch.trainer.methods.base import CommonSettings, ScoringGraph
from linewatch.trainer.methods.common import TorchMethodMixin
from linewatch.trainer.methods.registry import register_method
from linewatch.trainer.methods.replay_training import SMOKE_LOOP, ReplayTrainingConfig, ReplayTrainingMixin
from linewatch.trainer.methods.stfpm.model import STFPMModel, stfpm_loss

STFPM_LAYERS = (1, 2, 3)


class STFPMConfig(ReplayTrainingConfig):
    """The `[stfpm]` section: the published optimiser, and the replay loop's settings."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.4, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(1e-4, ge=0)


@register_method
class STFPM(ReplayTrainingMixin, TorchMethodMixin[STFPMConfig]):
    name: ClassVar[str] = "stfpm"
    state_prefix: ClassVar[str] = "student"  # the teacher is frozen backbone weights, not saved
    strategies: ClassVar[tuple[str, ...]] = ("replay", "naive")
    Config: ClassVar[type[BaseModel]] = STFPMConfig
    smoke_config: ClassVar[dict[str, Any]] = {
        **SMOKE_LOOP,
        "optimizer": "adam",
        "lr": 1e-3,
    }

    def __init__(self, strategy: str, common: CommonSettings, config: STFPMConfig | None = None):
        layers = tuple(common.layers) if common.layers else STFPM_LAYERS
        super().__init__(strategy, replace(common, layers=layers), config)
        teacher = create_feature_extractor(common.backbone, layers, common.backbone_weights)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(common.seed)
            student = timm.create_model(
                common.backbone, pretrained=False, features_only=True, out_indices=layers
            )
        self.model = STFPMModel(teacher, student, self.input_hw, common.sigma).eval()

    # -- training hooks ---------------------------------------------------------------
    def _net(self) -> torch.nn.Module:
        return self.model

    def _begin_task(self, task: str, rng: np.random.Generator) -> None:
        c, params = self.cfg, self.model.student.parameters()
        if c.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(
                params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, foreach=True
            )
        else:
            self.optimizer = torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay, foreach=True)

    def _loss(self, frames: torch.Tensor) -> torch.Tensor:
        t, s = self.model.features(frames.to(self.device))
        return stfpm_loss(t, s)

    # -- scoring ------------------------------------------------------------------------
    def _raw_map(self, frames: torch.Tensor, slot: int) -> torch.Tensor:
        return self.model.raw_map(frames)

    def scoring_graph(self) -> ScoringGraph:
        return self._graph(self.model, {})

    def _stateful_module(self) -> torch.nn.Module:
        return self.model.student

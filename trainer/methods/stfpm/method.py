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

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import timm
import torch

from trainer.backbones import DEFAULT_BACKBONE, create_feature_extractor
from trainer.methods.common import TorchMethodMixin, batches
from trainer.methods.replay import ReplayTrainingMixin
from trainer.methods.stfpm.model import STFPMModel, stfpm_loss

STFPM_LAYERS = (1, 2, 3)
OPTIMIZERS = ("sgd", "adam")


class STFPM(ReplayTrainingMixin, TorchMethodMixin):
    name: ClassVar[str] = "stfpm"
    state_prefix: ClassVar[str] = "student"  # the teacher is frozen backbone weights, not saved
    strategies: ClassVar[tuple[str, ...]] = ("replay", "naive")

    def __init__(
        self,
        strategy: str = "replay",
        backbone: str = DEFAULT_BACKBONE,
        layers: tuple[int, ...] | None = None,
        backbone_weights: Path | None = None,
        input_hw: tuple[int, int] = (256, 256),
        sigma: float = 4.0,
        quantile: float = 0.99,
        seed: int = 0,
        progress: bool = True,
        steps: int = 1000,
        batch_size: int = 8,
        optimizer: str = "sgd",
        lr: float = 0.4,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        eval_every: int = 50,
        patience: int = 5,
        holdout: float = 0.1,
        device: str = "cpu",
        replay: dict[str, Any] | None = None,
    ):
        if strategy not in self.strategies:
            raise ValueError(f"stfpm strategy must be one of {self.strategies}, got {strategy!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"stfpm optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.strategy = strategy
        self.seed = seed
        self.progress = progress
        self.quantile = quantile
        self.input_hw = tuple(input_hw)
        self.device = torch.device(device)
        layers = tuple(layers) if layers else STFPM_LAYERS
        self.config = {
            "backbone": backbone,
            "layers": list(layers),
            "input_hw": list(input_hw),
            "sigma": sigma,
            "quantile": quantile,
            "seed": seed,
            "optimizer": optimizer,
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
        }
        self.train_cfg = {
            "steps": steps,
            "batch_size": batch_size,
            "eval_every": eval_every,
            "patience": patience,
            "holdout": holdout,
        }
        teacher = create_feature_extractor(backbone, layers, backbone_weights)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            student = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=layers)
        self.model = STFPMModel(teacher, student, self.input_hw, sigma).eval()
        self._init_replay(replay)

    # -- training hooks ---------------------------------------------------------------
    def _net(self) -> torch.nn.Module:
        return self.model

    def _begin_task(self, task: str, rng: np.random.Generator) -> None:
        c, params = self.config, self.model.student.parameters()
        if c["optimizer"] == "sgd":
            self.optimizer = torch.optim.SGD(
                params, lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"], foreach=True
            )
        else:
            self.optimizer = torch.optim.Adam(
                params, lr=c["lr"], weight_decay=c["weight_decay"], foreach=True
            )

    def _train_step(self, frames: torch.Tensor, rng: np.random.Generator) -> dict[str, float]:
        self.model.train()
        t, s = self.model.features(frames.to(self.device))
        loss = stfpm_loss(t, s)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def _val_loss(self, images: np.ndarray) -> float:
        self.model.eval()
        total, n = 0.0, 0
        with torch.inference_mode():
            for frames in batches(images, 8):
                t, s = self.model.features(frames.to(self.device))
                total += float(stfpm_loss(t, s)) * len(frames)
                n += len(frames)
        return total / max(n, 1)

    # -- scoring ------------------------------------------------------------------------
    def _raw_map(self, frames: torch.Tensor, slot: int) -> torch.Tensor:
        return self.model.raw_map(frames)

    def scoring_graph(self):
        return self._graph(self.model, {})

    def _stateful_module(self) -> torch.nn.Module:
        return self.model.student

"""The method protocol every anomaly-detection method implements, and what it is built from.

Why a protocol and not a base class with logic: the continual-learning loop, the
exporter and the evaluation only ever need these few calls, so a new method is one
folder with a torch model plus a small class, with nothing inherited to understand.
The shared plumbing (`common.TorchMethodMixin`, `replay_training.ReplayTrainingMixin`)
is there to be used, not required.

A method is built from two things, each with its defaults written once:
- `CommonSettings`: what the trainer's config gives every method (backbone, input size,
  map smoothing, threshold quantile, seed). Its values come from `TrainConfig`'s
  top-level keys, so the dataclass has no defaults of its own;
- its own `Config`, a pydantic model declared on the class: the `[<name>]` section of
  the trainer config (`trainer/config.py` takes the sections from the registry).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from pydantic import BaseModel

if TYPE_CHECKING:
    from linewatch.contract.geometry import Geometry


@dataclass(frozen=True)
class CommonSettings:
    """The trainer settings every method takes (`TrainConfig.method_settings()` builds them)."""

    backbone: str
    layers: tuple[int, ...] | None
    backbone_weights: Path | None
    input_hw: tuple[int, int]
    sigma: float
    quantile: float
    seed: int
    progress: bool

    def record(self) -> dict[str, Any]:
        """JSON facts for saved state and reports (progress is how a run looks, not what it learns)."""
        return {
            "backbone": self.backbone,
            "layers": list(self.layers) if self.layers else None,
            "backbone_weights": str(self.backbone_weights) if self.backbone_weights else None,
            "input_hw": list(self.input_hw),
            "sigma": self.sigma,
            "quantile": self.quantile,
            "seed": self.seed,
        }


@dataclass
class Prediction:
    """Normalised outputs: 0.5 is the decision threshold for both map and score."""

    maps: np.ndarray  # (N, H, W) float32
    scores: np.ndarray  # (N,) float32
    task: np.ndarray  # (N,) int64, index into the method's task list (0 when not inferred)


@dataclass
class ScoringGraph:
    """The whole scoring path as one torch module plus its data inputs.

    `module(frames, *data_inputs.values())` takes a uint8 NHWC RGB batch at
    `input_hw` and returns `(anomaly_map (B,H,W), score (B,), task (B,) int64)`,
    normalised so that 0.5 is the threshold. Memory banks, Gaussians and the
    calibration are data inputs rather than constants, so a bank-only refresh can
    reuse a compiled engine.

    `meta` holds facts about the graph the exporter acts on (`refittable`: a refresh
    changes weights only, so engines are built refittable). `calibration` is how the
    outputs were normalised; `metadata` is what the method records about itself
    (teacher provenance, replay buffer, training log). The exporter writes both into
    the manifest; `meta["manifest"]` holds extra manifest sections (JSON).
    """

    module: torch.nn.Module
    data_inputs: dict[str, np.ndarray]
    input_hw: tuple[int, int]
    meta: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    # Few-shot bundles: frames -> (B, P, D) patch features, exported beside as `embed.onnx`.
    embedding: torch.nn.Module | None = None


@runtime_checkable
class Method(Protocol):
    """One anomaly-detection method under one continual-learning strategy.

    Constructed as `cls(strategy, common: CommonSettings, config: cls.Config)` (the
    registry's `create_method` does it from a `TrainConfig`); registered with
    `@register_method` (`trainer/methods/registry.py`).
    """

    name: ClassVar[str]  # the `--method` value and the config section `[name]`
    strategies: ClassVar[tuple[str, ...]]  # the first is the default
    Config: ClassVar[type[BaseModel]]  # the method's own settings, with their defaults

    strategy: str
    tasks: list[str]  # every task learned, in order
    # Set by the learner for the letterbox and tile geometries (whole frames in, stitched maps out).
    geometry: Geometry | None

    @property
    def slots(self) -> list[list[str]]:
        """The graph's `task` output indexes this: one slot per task, or one shared."""

    def fit_task(self, task: str, images: np.ndarray) -> None:
        """Learn one more task from good images (uint8 N,H,W,3), following the strategy."""

    def calibrate(self, val: dict[str, np.ndarray]) -> None:
        """Set the normalisation from held-out good images of every task learned so far."""

    def predict(self, images: np.ndarray) -> Prediction:
        """Score a batch with exactly the module that `scoring_graph` exports."""

    def scoring_graph(self) -> ScoringGraph:
        """The exportable scoring module, its data inputs, calibration and metadata."""

    def calibration_meta(self) -> dict[str, Any]:
        """How the outputs are normalised (JSON): what a reader needs to interpret 0.5."""

    def metadata(self) -> dict[str, Any]:
        """What else the method records about itself (JSON), e.g. its teacher or replay buffer."""

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors (saved with safetensors) and JSON metadata: no pickles."""

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore what `state` returned, on an instance built from the same config."""

"""The method protocol every anomaly-detection method implements.

Why a protocol and not a base class with logic: the continual-learning loop, the
exporter and the evaluation only ever need these few calls, so a new method is one
folder with a torch model plus a small class, with nothing inherited to understand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch


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
    """

    module: torch.nn.Module
    data_inputs: dict[str, np.ndarray]
    input_hw: tuple[int, int]
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Method(Protocol):
    """One anomaly-detection method under one continual-learning strategy."""

    name: ClassVar[str]
    strategies: ClassVar[tuple[str, ...]]

    tasks: list[str]  # every task learned, in order
    slots: list[list[str]]  # the graph's `task` output indexes this: one slot per task, or one shared

    def fit_task(self, task: str, images: np.ndarray) -> None:
        """Learn one more task from good images (uint8 N,H,W,3), following the strategy."""

    def calibrate(self, val: dict[str, np.ndarray]) -> None:
        """Set the normalisation from held-out good images of every task learned so far."""

    def predict(self, images: np.ndarray) -> Prediction:
        """Score a batch with exactly the module that `scoring_graph` exports."""

    def scoring_graph(self) -> ScoringGraph:
        """The exportable scoring module and its data inputs."""

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors (saved with safetensors) and JSON metadata: no pickles."""

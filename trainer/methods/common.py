"""Plumbing shared by the torch-based methods: construction, batching, prediction and calibration.

A method supplies its scoring module, its data inputs and a raw map for a forced
task; everything that turns those into predictions and thresholds lives here once,
and so does the constructor's bookkeeping (strategy check, common settings, config).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
from pydantic import BaseModel

from linewatch.contract.calibration import fit_normalisation
from linewatch.contract.geometry import Geometry, combine_tasks, resize_frame
from linewatch.trainer.data.images import concat_frames
from linewatch.trainer.methods.base import CommonSettings, Prediction, ScoringGraph


def batches(images: np.ndarray, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), size):
        yield torch.from_numpy(np.ascontiguousarray(images[start : start + size]))


C = TypeVar("C", bound=BaseModel)


class TorchMethodMixin(Generic[C]):
    """Needs: `name`, `strategies`, `Config`, `self.slots`, `scoring_graph()`, `_raw_map(frames, slot)`.

    Parametrised by the method's config model (`TorchMethodMixin[PatchCoreConfig]`), so `self.cfg`
    is typed. A slot is one scoring model inside the method: one per task for methods that infer
    the task (the graph's `task` output is the slot index), or a single shared slot.
    """

    name: ClassVar[str]
    strategies: ClassVar[tuple[str, ...]]
    Config: ClassVar[type[BaseModel]]
    # Section values that make a fit take seconds at 64 px (numbers, not quality): the registry's
    # conformance test runs every method with them, and a user can try a method with them.
    smoke_config: ClassVar[dict[str, Any]] = {}

    batch_size: int = 4  # frames per inference batch
    # Set by the learner for the letterbox and tile geometries: `predict` and `raw_scores` then take
    # whole frames, cut them into model inputs and stitch the maps back to the frame (geometry.py).
    geometry: Geometry | None = None

    cfg: C

    def __init__(self, strategy: str, common: CommonSettings, config: C | None = None) -> None:
        """`config` is the method's own `Config` (its defaults when None); the subclass builds its model."""
        if strategy not in self.strategies:
            raise ValueError(f"{self.name} strategy must be one of {self.strategies}, got {strategy!r}")
        config = self.Config() if config is None else config
        if not isinstance(config, self.Config):
            raise TypeError(f"{self.name} takes a {self.Config.__name__}, got {type(config).__name__}")
        self.strategy = strategy
        self.common = common
        self.cfg = config
        self.input_hw = tuple(common.input_hw)
        self.quantile = common.quantile
        self.seed = common.seed
        self.progress = common.progress
        self.tasks: list[str] = []
        self.center: list[float] = []
        self.scale: list[float] = []

    @property
    def config(self) -> dict[str, Any]:
        """Every setting this instance was built with (JSON), as its saved state records them."""
        return {**self.common.record(), **self.cfg.model_dump(mode="json")}

    def _framed(self) -> bool:
        return self.geometry is not None and self.geometry.framed

    def predict(self, images: np.ndarray) -> Prediction:
        graph = self.scoring_graph()
        inputs = [torch.from_numpy(np.ascontiguousarray(a)) for a in graph.data_inputs.values()]
        if self._framed():
            return self._predict_frames(graph, inputs, images)
        maps, scores, tasks = [], [], []
        with torch.inference_mode():
            for frames in batches(images, self.batch_size):
                m, s, t = graph.module(frames, *inputs)
                maps.append(m.numpy())
                scores.append(s.numpy())
                tasks.append(t.numpy())
        return Prediction(
            np.concatenate(maps), np.concatenate(scores), np.concatenate(tasks).astype(np.int64)
        )

    def _predict_frames(
        self, graph: ScoringGraph, inputs: list[torch.Tensor], images: np.ndarray
    ) -> Prediction:
        """Whole frames: the graph scores each frame's tiles; maps are stitched, score = max of the map."""
        maps, scores, tasks = [], [], []
        with torch.inference_mode():
            for frame in images:
                plan = self.geometry.plan(frame.shape[:2])
                tiles = plan.cut(frame)
                parts = [graph.module(t, *inputs) for t in batches(tiles, self.batch_size)]
                # The score is the max of the map at the plan's own resolution, as the edge takes it
                # (a ``resize`` entry of ``by_size`` keeps model resolution until metrics need the frame's).
                small = plan.stitch(torch.cat([p[0] for p in parts]).numpy(), frame_size=False)
                maps.append(small if small.shape == plan.frame_hw else resize_frame(small, plan.frame_hw))
                scores.append(np.float32(small.max()))
                tasks.append(combine_tasks(torch.cat([p[2] for p in parts]).numpy()))
        if len({m.shape for m in maps}) > 1:  # frames of several sizes: maps at the first's, for metrics
            maps = [resize_frame(m, maps[0].shape) for m in maps]
        return Prediction(np.stack(maps), np.array(scores, np.float32), np.array(tasks, np.int64))

    def raw_scores(self, images: np.ndarray, slot: int) -> np.ndarray:
        """Image scores (max of the raw map) on one slot, bypassing task inference.

        Framed geometries score the max of the stitched raw map of each whole frame, so the
        threshold is set per frame, which is what the line decides on.
        """
        if self._framed():
            out = []
            with torch.inference_mode():
                for frame in images:
                    plan = self.geometry.plan(frame.shape[:2])
                    raw = [self._raw_map(t, slot) for t in batches(plan.cut(frame), self.batch_size)]
                    out.append(plan.stitch(torch.cat(raw).numpy(), frame_size=False).max())
            return np.asarray(out, dtype=np.float64)
        out = []
        with torch.inference_mode():
            for frames in batches(images, self.batch_size):
                out.append(self._raw_map(frames, slot).flatten(1).amax(1).numpy())
        return np.concatenate(out)

    def calibrate(self, val: dict[str, np.ndarray]) -> None:
        """Per slot, threshold on the held-out good images of the tasks that slot serves."""
        self.center = [1.0] * len(self.slots)
        self.scale = [1.0] * len(self.slots)
        for idx, slot_tasks in enumerate(self.slots):
            images = [val[t] for t in slot_tasks if t in val]
            if not images:
                raise ValueError(f"no held-out good images to calibrate tasks {slot_tasks}")
            raw = self.raw_scores(concat_frames(images), idx)
            self.center[idx], self.scale[idx] = fit_normalisation(raw, self.quantile)

    def slot_names(self) -> list[str]:
        return ["+".join(s) for s in self.slots]

    def calibration_meta(self) -> dict[str, Any]:
        return {
            "kind": "sigmoid((raw - center[slot]) / scale[slot])",
            "quantile": self.quantile,
            "slots": self.slot_names(),
            "center": self.center,
            "scale": self.scale,
        }

    def metadata(self) -> dict[str, Any]:
        """Nothing beyond the calibration by default; trained methods add their buffer and training."""
        return {}

    def _norm_inputs(self) -> dict[str, np.ndarray]:
        return {
            "center": np.asarray(self.center, dtype=np.float32),
            "scale": np.asarray(self.scale, dtype=np.float32),
        }

    def _graph(self, module: torch.nn.Module, data: dict[str, np.ndarray]) -> ScoringGraph:
        data = {**data, **self._norm_inputs()}
        return ScoringGraph(
            module.eval(),
            data,
            tuple(self.input_hw),
            calibration=self.calibration_meta(),
            metadata=self.metadata(),
        )

"""Strategies: how one or more method instances take a continual step.

Method-level strategies (`cl`, `naive`, PaDiM's `cl-exact` and `per-task`) live inside
the method, which sees tasks one by one. The two benchmark references are built here:
`joint` refits one model on every task seen so far (the upper bound), `single` keeps
an independent model per task and scores each task with its own (the oracle).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from linewatch.contract.geometry import Geometry
from linewatch.trainer.config import GeometryConfig, TrainConfig
from linewatch.trainer.data.images import Frames, concat_frames
from linewatch.trainer.methods.base import Method, Prediction
from linewatch.trainer.methods.registry import create_method, method_class

PROTOCOL_STRATEGIES = ("joint", "single")


@dataclass
class TaskData:
    """One task's pixels; `val` is held out of `train` for calibration.

    At model resolution for the `resize` geometry; at frame resolution (the geometry's frame size)
    for `letterbox` and `tile`, where the learner cuts the model inputs and predictions are
    stitched back to the frame, so masks and metrics stay at full resolution.
    """

    name: str
    spec: str
    train: Frames
    val: Frames
    test: Frames
    labels: np.ndarray
    masks: np.ndarray
    has_mask: np.ndarray


def strategies_for(method: str) -> tuple[str, ...]:
    return (*method_class(method).strategies, *PROTOCOL_STRATEGIES)


class Learner:
    def __init__(self, cfg: TrainConfig):
        if cfg.strategy not in strategies_for(cfg.method):
            raise ValueError(
                f"strategy {cfg.strategy!r} is not available for {cfg.method}; choose from {strategies_for(cfg.method)}"
            )
        self.cfg = cfg
        self.methods: dict[str, Method] = {}
        self.tasks: list[str] = []

    @property
    def protocol_level(self) -> bool:
        return self.cfg.strategy in PROTOCOL_STRATEGIES

    @property
    def geometry(self) -> Geometry:
        return Geometry.from_dict(self.cfg.geometry_manifest())

    def new_method(self) -> Method:
        inner = method_class(self.cfg.method).strategies[0] if self.protocol_level else self.cfg.strategy
        method = create_method(self.cfg, inner)
        if self.geometry.framed:  # predict/calibrate cut frames and stitch maps (methods/common.py)
            method.geometry = self.geometry
        return method

    def _inputs(self, frames: np.ndarray) -> np.ndarray:
        """Training inputs: the frames themselves (resize), else every tile of every frame."""
        geometry = self.geometry
        return geometry.cut_many(frames) if geometry.framed else frames

    def set_geometry(self, doc: dict, reason: str) -> None:
        """Fix the geometry `auto` chose (contract.geometry.choose_geometry): frames keep their own size."""
        update = {k: doc[k] for k in ("mode", "overlap", "scale", "margin", "context") if k in doc}
        if update.get("mode") != "tile":
            update["context"] = False  # a context view is part of a tile plan only
        g = self.cfg.geometry.model_copy(
            update={**update, "learn_frame_size": False, "reason": reason, "auto": True}
        )
        self._use_geometry(g)

    def set_size_geometry(self, task: str, frame_hw: tuple[int, int], doc: dict, reason: str) -> None:
        """Add `auto`'s choice for one task's frame size (trainer/geometry_choice.py) to `by_size`.
        Frames of that size are cut with it from now on, in training, evaluation and on the box."""
        g = self.cfg.geometry
        entry = {"match": list(frame_hw), **doc, "tasks": [task], "reason": reason}
        self._use_geometry(g.model_copy(update={"by_size": [*g.by_size, entry]}))

    def _use_geometry(self, g: GeometryConfig) -> None:
        self.cfg = self.cfg.model_copy(update={"geometry": g})
        for m in self.methods.values():
            m.geometry = self.geometry if self.geometry.framed else None

    def _note_frame_size(self, task: TaskData) -> None:
        """Record the frame size in the config on first sight, so later tasks and the bundle agree."""
        g = self.cfg.geometry
        if g.mode != "resize" and g.frame_size is None and g.learn_frame_size:
            hw = (int(task.train[0].shape[0]), int(task.train[0].shape[1]))
            self.cfg = self.cfg.model_copy(update={"geometry": g.model_copy(update={"frame_size": hw})})
            for m in self.methods.values():
                m.geometry = self.geometry

    def learn(self, task: TaskData, seen: dict[str, TaskData]) -> None:
        """One continual step. `seen` holds every task so far, the new one included (joint needs them)."""
        strategy = self.cfg.strategy
        self._note_frame_size(task)
        if strategy == "single":
            m = self.new_method()
            m.fit_task(task.name, self._inputs(task.train))
            m.calibrate({task.name: task.val})
            self.methods[task.name] = m
        elif strategy == "joint":
            m = self.new_method()
            name = "+".join(seen)
            m.fit_task(name, self._inputs(concat_frames([d.train for d in seen.values()])))
            m.calibrate({name: concat_frames([d.val for d in seen.values()])})
            self.methods = {"main": m}
        else:
            m = self.methods.get("main") or self.new_method()
            m.fit_task(task.name, self._inputs(task.train))
            m.calibrate({name: d.val for name, d in seen.items()})
            self.methods["main"] = m
        if task.name not in self.tasks:
            self.tasks.append(task.name)

    def model_for(self, task: str) -> Method:
        return self.methods[task] if self.cfg.strategy == "single" else self.methods["main"]

    def predict(self, task: str, images: np.ndarray) -> Prediction:
        return self.model_for(task).predict(images)

    def infers_task(self) -> bool:
        """True when the graph's task output names one task per slot, so its accuracy means something."""
        if self.cfg.strategy == "single" or "main" not in self.methods:
            return False
        slots = self.methods["main"].slots
        return len(slots) > 1 and all(len(s) == 1 for s in slots)

    def task_hits(self, task: str, prediction: Prediction) -> np.ndarray | None:
        if not self.infers_task():
            return None
        names = [s[0] for s in self.methods["main"].slots]
        return np.array([names[int(t)] == task for t in prediction.task])

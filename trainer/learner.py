"""Strategies: how one or more method instances take a continual step.

Method-level strategies (`cl`, `naive`, PaDiM's `cl-exact` and `per-task`) live inside
the method, which sees tasks one by one. The two benchmark references are built here:
`joint` refits one model on every task seen so far (the upper bound), `single` keeps
an independent model per task and scores each task with its own (the oracle).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.config import TrainConfig
from trainer.methods.base import Method, Prediction
from trainer.methods.registry import create_method, method_class

PROTOCOL_STRATEGIES = ("joint", "single")


@dataclass
class TaskData:
    """One task's pixels at model resolution; `val` is held out of `train` for calibration."""

    name: str
    spec: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
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

    def new_method(self) -> Method:
        inner = method_class(self.cfg.method).strategies[0] if self.protocol_level else self.cfg.strategy
        return create_method(self.cfg.method, inner, **self.cfg.method_kwargs())

    def learn(self, task: TaskData, seen: dict[str, TaskData]) -> None:
        """One continual step. `seen` holds every task so far, the new one included (joint needs them)."""
        strategy = self.cfg.strategy
        if strategy == "single":
            m = self.new_method()
            m.fit_task(task.name, task.train)
            m.calibrate({task.name: task.val})
            self.methods[task.name] = m
        elif strategy == "joint":
            m = self.new_method()
            name = "+".join(seen)
            m.fit_task(name, np.concatenate([d.train for d in seen.values()]))
            m.calibrate({name: np.concatenate([d.val for d in seen.values()])})
            self.methods = {"main": m}
        else:
            m = self.methods.get("main") or self.new_method()
            m.fit_task(task.name, task.train)
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

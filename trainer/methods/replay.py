"""The training loop the trained methods share: strategies, replay mixing, early stopping.

Why one loop for EfficientAD and STFPM: continual learning by replay is the same for
every trained method (a batch is current-task images plus replayed ones; after a
task its images join the buffer), and so are early stopping and the progress bar.
A method supplies four hooks: `_begin_task` (fresh optimiser), `_train_step` (one
update on a uint8 batch), `_val_loss` (held-out good images) and `_net` (the module
that is moved to the training device and whose weights early stopping snapshots).

Strategies:
- `replay`: each batch mixes `batch_size` current images with `replay.batch` images
  drawn from the buffer of earlier tasks (tasks uniformly, then an image).
- `naive`: fine-tune on the new task only, which is what forgetting looks like.

Determinism: every task's randomness (batches, replay draws, dropout, the buffer's
subsets) comes from (seed, task index, task name), and the optimiser starts fresh
for each task, so `update` on a saved run equals fitting the whole sequence at once.
"""

from __future__ import annotations

import time
import zlib
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from trainer.methods.base import ScoringGraph
from trainer.replay import ReplayBuffer

REPLAY_DEFAULTS: dict[str, Any] = {"size": 300, "format": "png", "jpeg_quality": 95, "batch": 8}


class ReplayTrainingMixin:
    """Needs: `self.strategy`, `self.seed`, `self.progress`, `self.device`, `self.train_cfg` (steps,
    batch_size, eval_every, patience, holdout), and the four hooks. Provides `fit_task`, `slots`,
    the buffer's state and report."""

    strategies: ClassVar[tuple[str, ...]] = ("replay", "naive")
    name: ClassVar[str]

    def _init_replay(self, replay: dict[str, Any] | None) -> None:
        self.replay_cfg = {**REPLAY_DEFAULTS, **(replay or {})}
        self.buffer = ReplayBuffer(
            int(self.replay_cfg["size"]), self.replay_cfg["format"], int(self.replay_cfg["jpeg_quality"])
        )
        self.tasks: list[str] = []
        self.training_log: list[dict[str, Any]] = []
        self.center: list[float] = [1.0]
        self.scale: list[float] = [1.0]

    @property
    def slots(self) -> list[list[str]]:
        """One shared model covers every task: the graph's task output is always 0."""
        return [list(self.tasks)]

    # -- hooks the method implements ----------------------------------------------
    def _begin_task(self, task: str, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def _train_step(self, frames: torch.Tensor, rng: np.random.Generator) -> dict[str, float]:
        raise NotImplementedError

    def _val_loss(self, images: np.ndarray) -> float:
        raise NotImplementedError

    def _net(self) -> nn.Module:
        raise NotImplementedError

    # -- the loop -------------------------------------------------------------------
    def fit_task(self, task: str, images: np.ndarray) -> None:
        """Continue training on `task` (with replay of earlier tasks), then store it in the buffer."""
        if len(images) < 1:
            raise ValueError(f"task {task}: no training images")
        index = len(self.training_log)
        rng = np.random.default_rng([int(self.seed), index, zlib.crc32(task.encode())])
        order = rng.permutation(len(images))
        cfg = self.train_cfg
        n_hold = max(2, round(cfg["holdout"] * len(images))) if len(images) >= 6 else 0
        held, train = images[order[:n_hold]], images[order[n_hold:]]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**31)))
            self._net().to(self.device)
            try:
                record = self._train_loop(task, train, held, rng)
            finally:
                self._net().to("cpu").eval()  # scoring and export run on the CPU copy
        record["index"] = index
        self.training_log.append(record)
        if task not in self.tasks:
            self.tasks.append(task)
        if self.strategy == "replay":
            self.buffer.add_task(task, images, rng)
        self.center, self.scale = [1.0], [1.0]

    def _replay_batch(self, task: str, rng: np.random.Generator) -> np.ndarray | None:
        if self.strategy != "replay":
            return None
        return self.buffer.sample(int(self.replay_cfg["batch"]), rng, exclude=task)

    def _train_loop(
        self, task: str, train: np.ndarray, held: np.ndarray, rng: np.random.Generator
    ) -> dict[str, Any]:
        cfg = self.train_cfg
        steps, batch = int(cfg["steps"]), int(cfg["batch_size"])
        every, patience = max(1, int(cfg["eval_every"])), int(cfg["patience"])
        self._begin_task(task, rng)
        module = self._net()
        best, best_step, best_state, bad = float("inf"), 0, None, 0
        replayed, stopped, done = 0, False, 0
        t0 = time.perf_counter()
        bar = tqdm(
            range(steps), desc=f"{self.name} {task}", disable=not self.progress, mininterval=1.0, leave=False
        )
        for step in bar:
            pick = rng.choice(len(train), batch, replace=len(train) < batch)
            frames = train[pick]
            old = self._replay_batch(task, rng)
            if old is not None:
                frames = np.concatenate([frames, old])
                replayed += len(old)
            losses = self._train_step(torch.from_numpy(np.ascontiguousarray(frames)), rng)
            done = step + 1
            if len(held) and (done % every == 0 or done == steps):
                val = self._val_loss(held)
                if val < best:
                    best, best_step, bad = val, done, 0
                    best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
                else:
                    bad += 1
                bar.set_postfix(loss=f"{losses['loss']:.4f}", val=f"{val:.4f}", refresh=False)
                if patience and bad >= patience:
                    stopped = True
                    break
        if best_state is not None:
            module.load_state_dict(best_state)  # early stopping keeps the best held-out weights
        return {
            "task": task,
            "steps": done,
            "best_step": best_step if best_state is not None else done,
            "best_val_loss": None if best_state is None else round(best, 6),
            "stopped_early": stopped,
            "replayed_images": replayed,
            "train_images": len(train),
            "held_out_images": len(held),
            "seconds": round(time.perf_counter() - t0, 2),
        }

    def _graph(self, module: torch.nn.Module, data: dict[str, np.ndarray]) -> ScoringGraph:
        """Mark the graph refittable: every refresh retrains these weights but keeps the layers,
        so a box can refit them into its TensorRT engine instead of rebuilding it."""
        graph = super()._graph(module, data)  # type: ignore[misc]
        graph.meta["refittable"] = True
        return graph

    # -- reporting and state --------------------------------------------------------
    def calibration_meta(self) -> dict[str, Any]:
        """Calibration plus what a reader of metrics.json needs to judge the run: buffer and training."""
        meta = super().calibration_meta()  # type: ignore[misc]
        meta["replay_buffer"] = {"strategy": self.strategy, **self.buffer.stats()}
        meta["training"] = list(self.training_log)
        return meta

    # State: the learned weights under one prefix, the buffer, and what the method adds.
    state_prefix: ClassVar[str] = "model"  # names the weights in saved runs

    def _stateful_module(self) -> nn.Module:
        """The weights a run saves: the whole model unless a method's frozen part is rebuilt on load."""
        return self.model  # type: ignore[attr-defined]

    def _extra_state(self) -> dict[str, Any]:
        """Method-specific metadata saved beside the weights (EfficientAD: quantiles, teacher)."""
        return {}

    def _load_extra_state(self, meta: dict[str, Any]) -> None:
        """Restore what `_extra_state` saved."""

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        prefix = f"{self.state_prefix}."
        tensors = {
            prefix + k: v.detach().contiguous() for k, v in self._stateful_module().state_dict().items()
        }
        buf_tensors, buf_meta = self.buffer.state("replay")
        tensors.update(buf_tensors)
        meta = {
            "method": self.name,
            "strategy": self.strategy,  # type: ignore[attr-defined]
            "config": self.config,  # type: ignore[attr-defined]
            "train": self.train_cfg,  # type: ignore[attr-defined]
            "center": self.center,
            "scale": self.scale,
            **self._extra_state(),
            "replay": buf_meta,
            "training_log": self.training_log,
            "tasks": self.tasks,
        }
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        prefix = f"{self.state_prefix}."
        weights = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        self._stateful_module().load_state_dict(weights)
        self.model.eval()  # type: ignore[attr-defined]
        self._load_extra_state(meta)
        self.buffer = ReplayBuffer.from_state(tensors, meta["replay"], "replay")
        self.training_log = list(meta["training_log"])
        self.tasks = list(meta["tasks"])
        self.center = [float(v) for v in meta["center"]]
        self.scale = [float(v) for v in meta["scale"]]

"""The training loop the trained methods share: strategies, replay mixing, early stopping.

Why one loop for EfficientAD and STFPM: continual learning by replay is the same for
every trained method (a batch is current-task images plus replayed ones; after a
task its images join the buffer), and so are early stopping and the progress bar.
A method supplies four hooks: `_begin_task` (fresh optimiser), `_train_step` (one
update on a uint8 batch), `_val_loss` (held-out good images) and `_net` (the module
that is moved to the training device and whose weights early stopping snapshots).
Its settings are `ReplayTrainingConfig` (steps, batch, early stopping, device, the
buffer), which each such method's own config section extends.

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
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm.auto import tqdm

from linewatch.trainer.methods.base import CommonSettings, ScoringGraph
from linewatch.trainer.replay_buffer import ReplayBuffer

LOOP_KEYS = ("steps", "batch_size", "eval_every", "patience", "holdout")  # saved as the state's "train"
# The loop's part of a replay-trained method's `smoke_config`: two steps of two images, a small buffer.
SMOKE_LOOP: dict[str, Any] = {"steps": 2, "eval_every": 1, "batch_size": 2, "replay": {"size": 8, "batch": 2}}


def resolve_device(device: str | None = "auto") -> torch.device:
    """`auto` (or None): CUDA when torch sees a GPU, else the CPU; anything else as given."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ReplayConfig(BaseModel):
    """Continual learning by replay (trained methods): a fixed buffer of past tasks' images."""

    model_config = ConfigDict(extra="forbid")
    size: int = Field(300, ge=0, description="images kept over all past tasks, shared equally")
    format: Literal["png", "jpeg"] = Field("png", description="how buffered images are stored")
    jpeg_quality: int = Field(95, ge=1, le=100)
    batch: int = Field(8, ge=0, description="replayed images added to each training batch")


class ReplayTrainingConfig(BaseModel):
    """The loop's settings, part of every replay-trained method's config section.

    The defaults are STFPM's; a method whose published schedule differs overrides the field.
    """

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(1000, gt=0, description="training steps per task (early stopping may end sooner)")
    batch_size: int = Field(8, gt=0, description="current-task images per batch")
    eval_every: int = Field(50, gt=0, description="steps between held-out evaluations")
    patience: int = Field(5, ge=0, description="evaluations without improvement before stopping (0: never)")
    holdout: float = Field(0.1, gt=0, lt=1, description="share of a task's images held out to stop early")
    device: str = Field(
        "cpu",
        description="where training runs (cuda on a GPU box, auto: cuda when present); scoring stays on CPU",
    )
    replay: ReplayConfig = ReplayConfig()


class ReplayTrainingMixin:
    """Needs: a `Config` derived from `ReplayTrainingConfig`, a cooperative `__init__` after this one
    in the MRO (`TorchMethodMixin`), and the four hooks. Provides `fit_task`, `slots`, the buffer's
    state and metadata."""

    strategies: ClassVar[tuple[str, ...]] = ("replay", "naive")
    name: ClassVar[str]
    cfg: ReplayTrainingConfig

    def __init__(self, strategy: str, common: CommonSettings, config: BaseModel | None = None) -> None:
        super().__init__(strategy, common, config)  # type: ignore[call-arg]
        replay = self.cfg.replay
        self.buffer = ReplayBuffer(replay.size, replay.format, replay.jpeg_quality)
        self.device = resolve_device(self.cfg.device)
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

    def _loss(self, frames: torch.Tensor) -> torch.Tensor:
        """The objective on a uint8 batch, for methods whose step is one loss and one optimiser
        (STFPM, Reverse Distillation, FastFlow, CFA); the default step and validation use it."""
        raise NotImplementedError

    def _train_mode(self) -> None:
        """Put the network in training mode before a step (a method keeps frozen parts in eval)."""
        self._net().train()

    def _train_step(self, frames: torch.Tensor, rng: np.random.Generator) -> dict[str, float]:
        self._train_mode()
        loss = self._loss(frames)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def _val_loss(self, images: np.ndarray) -> float:
        """Mean loss per image on held-out good images, in eval mode and without gradients."""
        self._net().eval()
        total, n = 0.0, 0
        with torch.inference_mode():
            for start in range(0, len(images), 8):
                frames = torch.from_numpy(np.ascontiguousarray(images[start : start + 8]))
                total += float(self._loss(frames)) * len(frames)
                n += len(frames)
        return total / max(n, 1)

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
        n_hold = max(2, round(self.cfg.holdout * len(images))) if len(images) >= 6 else 0
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
        return self.buffer.sample(self.cfg.replay.batch, rng, exclude=task)

    def _train_loop(
        self, task: str, train: np.ndarray, held: np.ndarray, rng: np.random.Generator
    ) -> dict[str, Any]:
        cfg = self.cfg
        steps, batch = cfg.steps, cfg.batch_size
        every, patience = max(1, cfg.eval_every), cfg.patience
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
    def metadata(self) -> dict[str, Any]:
        """What a reader of metrics.json needs to judge the run: the buffer's cost and the training."""
        meta = super().metadata()  # type: ignore[misc]
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
            "train": self.cfg.model_dump(include=set(LOOP_KEYS)),
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

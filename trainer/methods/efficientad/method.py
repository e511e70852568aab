"""EfficientAD (S or M) with continual learning by replay.

Training follows the paper: the student (twice the teacher's channels) learns the
teacher's features with the hard-feature loss (only element-wise errors above their
0.999 quantile count) plus a penalty that keeps it from imitating the teacher on
generic "pretraining" images; the autoencoder learns the teacher's features of
augmented images through a 64-channel bottleneck, and the student's second half
learns the autoencoder. Adam (1e-4, weight decay 1e-5), learning rate x0.1 at 95%.

Departures, and why:
- the teacher is distilled offline from the default backbone (`distill.py`), and its
  output normalisation is computed once on generic images, not per task: a continual
  student needs targets that do not move when a task arrives;
- a batch is `batch_size` current images (+ `replay.batch` replayed ones) instead of
  one image, and training stops early on held-out good images (mean of the three
  training distances), keeping the best weights;
- the map quantiles q_a/q_b are taken on the calibration images of every task seen
  (one shared slot), over the PDN grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field

from linewatch.trainer.data.images import concat_frames
from linewatch.trainer.methods.base import CommonSettings, ScoringGraph
from linewatch.trainer.methods.common import TorchMethodMixin, batches
from linewatch.trainer.methods.efficientad.distill import (
    CPU_BUDGET,
    GPU_BUDGET,
    DistillConfig,
    TeacherError,
    cached_teacher,
    default_budget,
    load_teacher,
    provenance,
)
from linewatch.trainer.methods.efficientad.generic import generic_images, generic_sources
from linewatch.trainer.methods.efficientad.model import EfficientADModel
from linewatch.trainer.methods.efficientad.networks import pdn
from linewatch.trainer.methods.registry import register_method
from linewatch.trainer.methods.replay_training import SMOKE_LOOP, ReplayTrainingConfig, ReplayTrainingMixin

PUBLISHED_TEACHER = DistillConfig()  # the PDN and distillation defaults are written there, once
TEACHER_KEYS = ("size", "out_channels", "width", "padding")  # a teacher file must match these


class EfficientADConfig(ReplayTrainingConfig):
    """The `[efficientad]` section: the PDN, its offline teacher, the paper's losses, and the loop."""

    size: Literal["s", "m"] = PUBLISHED_TEACHER.size  # type: ignore[assignment]
    out_channels: int = Field(PUBLISHED_TEACHER.out_channels, gt=0)
    width: float = Field(
        PUBLISHED_TEACHER.width, gt=0, description="PDN hidden-channel multiplier (1.0 = published)"
    )
    padding: bool = Field(
        PUBLISHED_TEACHER.padding, description="padded PDN: the map covers the border (not published)"
    )
    teacher: Path | None = Field(None, description="distilled teacher file (linewatch-train distill-teacher)")
    teacher_cache: Path | None = Field(None, description="where distilled teachers are cached")
    distill_steps: int | None = Field(
        None,
        gt=0,
        description=f"teacher distillation steps; default {GPU_BUDGET.steps} on a GPU, {CPU_BUDGET.steps} on a CPU",
    )
    distill_batch: int = Field(PUBLISHED_TEACHER.batch_size, gt=0)
    distill_pool: int | None = Field(
        None,
        ge=0,
        description=f"fixed pool of distillation views (0: fresh views); default {GPU_BUDGET.pool} on a GPU, "
        f"{CPU_BUDGET.pool} on a CPU",
    )
    distill_crop: int | None = Field(
        None,
        ge=0,
        description=f"distil on random crops of this side (0: whole views); default none on a GPU, "
        f"{CPU_BUDGET.crop} on a CPU",
    )
    distill_lr: float | None = Field(
        None,
        gt=0,
        description=f"distillation learning rate; default {GPU_BUDGET.lr} on a GPU, {CPU_BUDGET.lr} on a CPU",
    )
    device: str = Field("auto", description="where distillation and training run (auto: cuda when present)")
    steps: int = Field(10_000, gt=0, description="training steps per task (early stopping may end sooner)")
    eval_every: int = Field(100, gt=0, description="steps between held-out evaluations")
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    hard_quantile: float = Field(0.999, ge=0, lt=1)
    penalty_batch: int = Field(4, ge=0, description="generic images per step for the student penalty")
    penalty_pool: int = Field(64, gt=0)
    penalty_sources: list[str] | None = None
    map_quantiles: tuple[float, float] = (0.9, 0.995)


def check_teacher(path: Path, cfg: EfficientADConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A teacher file's (tensors, record), refused with a `TeacherError` that says why when it is
    missing, corrupt, of another format, or not the PDN `cfg` describes (size, channels, width,
    padding, and every tensor's shape)."""
    tensors, record = load_teacher(Path(path))
    want = {k: getattr(cfg, k) for k in TEACHER_KEYS}
    got = {k: (record.get("config") or {}).get(k) for k in want}
    if got != want:
        raise TeacherError(f"teacher {path} is a PDN {got}, this run needs {want}")
    with torch.random.fork_rng(devices=[]):
        expected = pdn(cfg.size, cfg.out_channels, cfg.width, cfg.padding).state_dict()
    expected = {f"pdn.{k}": tuple(v.shape) for k, v in expected.items()}
    expected["mean"] = expected["std"] = (1, cfg.out_channels, 1, 1)
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if found != expected:
        wrong = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        detail = ", ".join(
            f"{k}: {found.get(k, 'missing')} (needs {expected.get(k, 'nothing')})" for k in wrong[:4]
        )
        raise TeacherError(f"teacher {path} does not hold a PDN-{cfg.size.upper()} as configured: {detail}")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TeacherError(f"teacher {path} has non-finite values in {', '.join(sorted(bad)[:4])}")
    return tensors, record


def augment(frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """The paper's autoencoder augmentation: brightness, contrast or saturation x U(0.8, 1.2).

    uint8 NHWC -> float NCHW in [0, 255].
    """
    x = frames.permute(0, 3, 1, 2).float()
    n = x.shape[0]
    kind = torch.from_numpy(rng.integers(3, size=n)).to(x.device).view(n, 1, 1, 1)
    f = torch.from_numpy(rng.uniform(0.8, 1.2, size=n).astype(np.float32)).to(x.device).view(n, 1, 1, 1)
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
    bright = x * f
    contrast = (x - gray.mean(dim=(1, 2, 3), keepdim=True)) * f + gray.mean(dim=(1, 2, 3), keepdim=True)
    sat = (x - gray) * f + gray
    out = torch.where(kind == 0, bright, torch.where(kind == 1, contrast, sat))
    return out.clamp(0.0, 255.0)


def hard_feature_loss(sq_err: torch.Tensor, quantile: float) -> torch.Tensor:
    """Mean of the element-wise errors at or above their `quantile` (the paper's L_hard).

    Top-k instead of `torch.quantile`, which refuses tensors above 16M elements (a batch
    of 16 published-size maps has 19M).
    """
    k = max(1, round(sq_err.numel() * (1.0 - quantile)))
    return sq_err.flatten().topk(k).values.mean()


@register_method
class EfficientAD(ReplayTrainingMixin, TorchMethodMixin[EfficientADConfig]):
    name: ClassVar[str] = "efficientad"
    strategies: ClassVar[tuple[str, ...]] = ("replay", "naive")
    Config: ClassVar[type[BaseModel]] = EfficientADConfig
    smoke_config: ClassVar[dict[str, Any]] = {
        **SMOKE_LOOP,
        "width": 0.125,
        "out_channels": 16,
        "distill_steps": 2,
        "distill_batch": 2,
        "distill_pool": 0,
        "penalty_pool": 4,
        "penalty_batch": 1,
    }

    def __init__(self, strategy: str, common: CommonSettings, config: EfficientADConfig | None = None):
        super().__init__(strategy, common, config)
        c = self.cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(common.seed)
            self.model = EfficientADModel(
                c.size, c.out_channels, c.width, self.input_hw, common.sigma, c.padding
            ).eval()
        self.quantiles = [0.0, 1.0, 0.0, 1.0]
        self.teacher_info: dict[str, Any] | None = None

    # -- the teacher ----------------------------------------------------------------
    def distill_config(self) -> DistillConfig:
        """The teacher this run distils when none is given: the published recipe on a GPU, the
        CPU budget on a CPU (each `distill_*` setting overrides its part)."""
        c, common = self.cfg, self.common
        budget = default_budget(self.device)
        crop = budget.crop_for(self.input_hw) if c.distill_crop is None else c.distill_crop
        return DistillConfig(
            size=c.size,
            out_channels=c.out_channels,
            width=c.width,
            padding=c.padding,
            backbone=common.backbone,
            layers=tuple(common.layers) if common.layers else PUBLISHED_TEACHER.layers,
            backbone_weights=str(common.backbone_weights) if common.backbone_weights else None,
            input_hw=self.input_hw,
            steps=c.distill_steps or budget.steps,
            batch_size=c.distill_batch,
            pool=budget.pool if c.distill_pool is None else c.distill_pool,
            lr=budget.lr if c.distill_lr is None else c.distill_lr,
            crop_hw=(tuple(crop) if isinstance(crop, tuple) else (crop, crop)) if crop else None,
        )

    def _ensure_teacher(self) -> None:
        """Load the configured teacher file, or the cached distillation (distilling it if needed)."""
        if self.teacher_info is not None:
            return
        if self.cfg.teacher:
            path = Path(self.cfg.teacher)
        else:
            path = cached_teacher(
                self.distill_config(), self.cfg.teacher_cache, progress=self.progress, device=str(self.device)
            )
        tensors, record = check_teacher(path, self.cfg)
        pdn_state = {k[4:]: v for k, v in tensors.items() if k.startswith("pdn.")}
        self.model.teacher.load_state_dict(pdn_state)
        self.model.teacher_mean.copy_(tensors["mean"])
        self.model.teacher_std.copy_(tensors["std"])
        self.teacher_info = provenance(path, record)

    # -- training hooks ---------------------------------------------------------------
    def _net(self) -> torch.nn.Module:
        return self.model

    def _begin_task(self, task: str, rng: np.random.Generator) -> None:
        self._ensure_teacher()
        c = self.cfg
        params = [*self.model.student.parameters(), *self.model.autoencoder.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay, foreach=True)
        decay_at = max(1, int(0.95 * c.steps))
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, [decay_at], gamma=0.1)
        sources = c.penalty_sources or generic_sources(exclude=[*self.tasks, task])
        pool = generic_images(c.penalty_pool, self.input_hw, rng, sources) if c.penalty_batch else None
        self._penalty_pool = None if pool is None else torch.from_numpy(pool)

    def _train_step(self, frames: torch.Tensor, rng: np.random.Generator) -> dict[str, float]:
        m, c = self.model.train(), self.model.out_channels
        frames = frames.to(self.device)
        x = m.input(frames)
        with torch.no_grad():
            t = m.teacher_features(x)
        loss_hard = hard_feature_loss((t - m.student(x)[:, :c]) ** 2, self.cfg.hard_quantile)
        loss_penalty = torch.zeros((), device=self.device)
        if self._penalty_pool is not None:
            idx = rng.integers(len(self._penalty_pool), size=self.cfg.penalty_batch)
            generic = self._penalty_pool[torch.from_numpy(idx)].to(self.device)
            loss_penalty = (m.student(m.input(generic))[:, :c] ** 2).mean()
        xa = m.normalise_float(augment(frames, rng))
        with torch.no_grad():
            ta = m.teacher_features(xa)
        ae = m.autoencoder(xa)
        loss_ae = ((ta - ae) ** 2).mean()
        loss_stae = ((ae - m.student(xa)[:, c:]) ** 2).mean()
        loss = loss_hard + loss_penalty + loss_ae + loss_stae
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {
            "loss": float(loss.detach()),
            "hard": float(loss_hard.detach()),
            "ae": float(loss_ae.detach()),
            "stae": float(loss_stae.detach()),
        }

    def _val_loss(self, images: np.ndarray) -> float:
        m, c = self.model.eval(), self.model.out_channels
        total, n = 0.0, 0
        with torch.inference_mode():
            for frames in batches(images, 8):
                x = m.input(frames.to(self.device))
                t, s, a = m.teacher_features(x), m.student(x), m.autoencoder(x)
                per = (
                    ((t - s[:, :c]) ** 2).mean(dim=(1, 2, 3))
                    + ((t - a) ** 2).mean(dim=(1, 2, 3))
                    + ((a - s[:, c:]) ** 2).mean(dim=(1, 2, 3))
                )
                total += float(per.sum())
                n += len(frames)
        return total / max(n, 1)

    # -- calibration and scoring --------------------------------------------------------
    def calibrate(self, val: dict[str, np.ndarray]) -> None:
        """Map quantiles (q_a, q_b) of both maps on held-out good images, then the 0.5 threshold."""
        images = [val[t] for t in self.slots[0] if t in val]
        if not images:
            raise ValueError(f"no held-out good images to calibrate tasks {self.slots[0]}")
        pool = concat_frames(images)
        geometry = getattr(self, "geometry", None)  # letterbox/tile: whole frames -> model inputs
        if geometry is not None and geometry.framed:
            pool = geometry.cut_many(pool)
        local, glob = [], []
        with torch.inference_mode():
            for frames in batches(pool, self.batch_size):
                lo, gl = self.model.grid_maps(frames)
                local.append(lo.flatten().numpy())
                glob.append(gl.flatten().numpy())
        qa, qb = self.cfg.map_quantiles
        q = []
        for values in (np.concatenate(local), np.concatenate(glob)):
            lo_q, hi_q = np.quantile(values.astype(np.float64), [qa, qb])
            q += [float(lo_q), float(max(hi_q, lo_q + 1e-6))]
        self.quantiles = q
        super().calibrate(val)

    def _quantile_tensor(self) -> torch.Tensor:
        return torch.tensor(self.quantiles, dtype=torch.float32)

    def _raw_map(self, frames: torch.Tensor, slot: int) -> torch.Tensor:
        return self.model.raw_map(frames, self._quantile_tensor())

    def scoring_graph(self) -> ScoringGraph:
        return self._graph(self.model, {"quantiles": np.asarray(self.quantiles, dtype=np.float32)})

    def calibration_meta(self) -> dict[str, Any]:
        """The 0.5 threshold's calibration plus the map quantiles that normalise both maps first."""
        meta = super().calibration_meta()
        qa, qb = self.cfg.map_quantiles
        meta["map_quantiles"] = {
            "q_a": qa,
            "q_b": qb,
            "local": self.quantiles[:2],
            "global": self.quantiles[2:],
        }
        return meta

    def metadata(self) -> dict[str, Any]:
        """The replay buffer and training log, and which teacher the student learnt from."""
        return {**super().metadata(), "teacher": self.teacher_info}

    # -- state (saved by the replay mixin) ---------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {"quantiles": self.quantiles, "teacher": self.teacher_info}

    def _load_extra_state(self, meta: dict[str, Any]) -> None:
        self.quantiles = [float(v) for v in meta["quantiles"]]
        self.teacher_info = meta.get("teacher")

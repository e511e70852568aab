"""SimSiam fine-tuning of a registry backbone into a category-agnostic patch extractor (few-shot).

Why: the few-shot method compares patches of a new part with 2-8 support images, so the features
should describe industrial surfaces rather than ImageNet classes, without being tied to any one
part. SimSiam (Chen & He, 2021) needs no labels and no negatives: two augmented views of a good
image, an encoder + projector, a predictor on one branch, a stop-gradient on the other, and the
negative cosine between them, symmetrised. Trained once, offline, on good images of many
categories aggregated; the result is a state dict that `--backbone-weights` loads into the same
registry backbone, so PatchCore's feature path (levels, 3x3 averaging) is unchanged.

The encoder is exactly what the few-shot graphs embed with (`PatchCoreModel.embed`: the chosen
levels, locally averaged), pooled over the image. Batch-norm statistics stay ImageNet's (eval mode),
which keeps small CPU batches stable; every convolution weight trains. Views come from the box's
own augmentation (`contract/fewshot.augment`) with a stronger recipe. The sidecar `<out>.json`
records what it was trained on (tasks, image counts, data specs, steps, losses), and the few-shot
bundle's manifest copies it (`fewshot.extractor`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from linewatch.contract.fewshot import AugmentRecipe, augment
from linewatch.trainer.backbones import DEFAULT_BACKBONE, create_feature_extractor
from linewatch.trainer.methods.layers import FrameInput, local_patch_features

TRAIN_RECIPE = AugmentRecipe(vflip=True, rotate_deg=20, shift=0.1, brightness=0.2, contrast=0.3, grey=0.2)


@dataclass
class SimSiamConfig:
    backbone: str = DEFAULT_BACKBONE
    layers: tuple[int, ...] | None = None
    image_size: tuple[int, int] = (224, 224)
    steps: int = 300
    batch: int = 16
    lr: float = 1e-4  # backbone; heads get 10x
    proj_dim: int = 512
    pred_dim: int = 128
    seed: int = 0
    recipe: AugmentRecipe = field(default_factory=lambda: TRAIN_RECIPE)


class SimSiam(nn.Module):
    def __init__(self, cfg: SimSiamConfig) -> None:
        super().__init__()
        ext = create_feature_extractor(cfg.backbone, cfg.layers)
        self.input = FrameInput(ext.mean, ext.std)
        self.net = ext.net
        for p in self.net.parameters():
            p.requires_grad_(True)
        dim = sum(ext.channels)
        self.projector = nn.Sequential(
            nn.Linear(dim, cfg.proj_dim, bias=False), nn.BatchNorm1d(cfg.proj_dim), nn.ReLU(inplace=True),
            nn.Linear(cfg.proj_dim, cfg.proj_dim, bias=False), nn.BatchNorm1d(cfg.proj_dim, affine=False),
        )  # fmt: skip
        self.predictor = nn.Sequential(
            nn.Linear(cfg.proj_dim, cfg.pred_dim, bias=False), nn.BatchNorm1d(cfg.pred_dim), nn.ReLU(inplace=True),
            nn.Linear(cfg.pred_dim, cfg.proj_dim),
        )  # fmt: skip

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return local_patch_features(self.net(self.input(frames))).mean(dim=(2, 3))

    def loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.projector(self.encode(a)), self.projector(self.encode(b))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        cos = nn.functional.cosine_similarity
        return -0.5 * (cos(p1, z2.detach()).mean() + cos(p2, z1.detach()).mean())


def _views(images: np.ndarray, recipe: AugmentRecipe, rng: np.random.Generator) -> np.ndarray:
    return np.stack([augment(im, recipe, 2, rng)[1] for im in images])


def train_simsiam(
    images: np.ndarray,
    cfg: SimSiamConfig,
    out: Path,
    trained_on: dict[str, Any],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune on `images` (N, H, W, 3) uint8; write the backbone state dict to `out` and its record."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = SimSiam(cfg)
    model.net.eval()  # ImageNet batch-norm statistics are kept (see the module docstring)
    heads = [*model.projector.parameters(), *model.predictor.parameters()]
    opt = torch.optim.AdamW(
        [{"params": list(model.net.parameters()), "lr": cfg.lr}, {"params": heads, "lr": cfg.lr * 10}],
        weight_decay=1e-4,
    )
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        pick = rng.choice(len(images), size=min(cfg.batch, len(images)), replace=len(images) < cfg.batch)
        a = torch.from_numpy(_views(images[pick], cfg.recipe, rng))
        b = torch.from_numpy(_views(images[pick], cfg.recipe, rng))
        loss = model.loss(a, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step == 0 or (step + 1) % max(1, cfg.steps // 10) == 0:
            log(f"simsiam step {step + 1}/{cfg.steps}: loss {np.mean(losses[-10:]):.4f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in model.net.state_dict().items()}, out)
    record = {
        "method": "simsiam",
        "backbone": cfg.backbone,
        "layers": list(cfg.layers) if cfg.layers else None,
        "trained_on": trained_on,
        "config": {k: v for k, v in asdict(cfg).items() if k != "recipe"}
        | {"recipe": cfg.recipe.model_dump()},
        "loss_first10": float(np.mean(losses[:10])),
        "loss_last10": float(np.mean(losses[-10:])),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    Path(f"{out}.json").write_text(json.dumps(record, indent=1, default=list))
    return record


def train_extractor(
    data: str, tasks: list[str], out: Path, cfg: SimSiamConfig, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Aggregate the good training images of `tasks` from `data` and train (only train/good is read)."""
    from linewatch.trainer.data import load_task, read_images

    frames, trained_on = [], {}
    for task in tasks:
        split = load_task(data, task)
        paths = [s.path for s in split.train]
        frames.append(read_images(paths, cfg.image_size))
        trained_on[task] = {"data": data, "train_good": len(paths)}
        log(f"simsiam: {task}: {len(paths)} good training images")
    return train_simsiam(np.concatenate(frames), cfg, out, trained_on, log)

"""`auto` geometry, per task: resize or tile, chosen on the task's own training images.

The size rule (``contract.geometry.choose_geometry``) knows when a squeeze *may* lose a defect: past
``AUTO_MAX_SHRINK``. Whether it does depends on how large the defects are, which a rule on sizes
cannot know. The dev set shows both cases at the same squeeze: ball-screw pitting (a few hundred
px on 1130x460 frames, 4.4x squeezed) is found better when the whole frame is resized, commutator
hairline cracks (a few px wide on 500x1260 frames, 4.9x) only when the frame is tiled. So for a
frame size the rule would tile, both candidates are fitted on part of the task's *training* images
and score the held-out rest, each frame clean and with each kind of faint synthetic defect
(``trainer/data/validation_defects.py``). A probe fitted on a share of the images gets the same
share of the memory bank the task will keep: a bank denser than the real one would favour tiles,
which bring more patches per frame to the same budget. ``resize`` (one model input per frame, the cheaper on the
box) must score a strictly higher image AUROC to win; a tie keeps the rule's ``tile``, which loses
no pixels. The test split is never read.

The probe model: the run's method when it fits without a training loop (PatchCore, PaDiM), else
PatchCore on the run's backbone. What the geometry decides is whether a defect still shows in the
backbone's features at that scale, and a trained method would multiply the time by its epochs.

Cost: two extra fits on at most ``VALIDATION_IMAGES // 2`` frames, only for tasks whose frames are
more than ``AUTO_MAX_SHRINK`` times the model input (about 1-2 minutes on 2 CPU cores for the
dev set's large frames); small frames are resized by the rule alone.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.contract.geometry import Geometry, choose_geometry
from linewatch.trainer import metrics as M
from linewatch.trainer.config import TrainConfig
from linewatch.trainer.data import read_images
from linewatch.trainer.data.synthetic_anomalies import texture_source
from linewatch.trainer.data.validation_defects import KINDS, paint_defect
from linewatch.trainer.methods.registry import method_class

# At most this many training images take part: half fitted, half held out (half of those painted).
VALIDATION_IMAGES = 32
# Fewer held-out frames than this (4 good, 4 painted) cannot rank two candidates; the size rule
# decides alone then (tasks with fewer than 16 training images).
MIN_HELD_OUT = 8
# Methods that fit without a training loop probe for themselves; others through PatchCore.
DIRECT_PROBES = ("patchcore", "padim")
Log = Callable[[str], None]


def choose_task_geometry(
    cfg: TrainConfig,
    task: str,
    paths: Sequence[Path],
    frame_hw: tuple[int, int],
    log: Log = print,
    n_tasks: int = 1,
) -> tuple[dict[str, Any], str]:
    """The geometry for one task's frames (a ``Geometry.from_dict`` dict) and the reason, in words.
    ``n_tasks``: how many tasks the model will hold once this one is learnt (they share its memory)."""
    tile = (int(cfg.image_size[0]), int(cfg.image_size[1]))
    rule, rule_reason = choose_geometry([frame_hw], tile)
    if rule["mode"] == "resize":
        return rule, rule_reason
    if cfg.geometry.context:
        rule["context"] = True
    candidates = {"resize": {"mode": "resize", "tile": list(tile)}, "tile": rule}
    log(f"geometry for {task}: {rule_reason}; validating resize against tile on its training images")
    aurocs, n_held = validate(cfg, task, paths, candidates, n_tasks)
    if aurocs is None:
        return rule, f"{rule_reason} (too few training images to validate: {n_held} held out)"
    best = "resize" if aurocs["resize"] > aurocs["tile"] else "tile"
    scores = ", ".join(f"{name} {value:.3f}" for name, value in aurocs.items())
    return candidates[best], (
        f"{rule_reason.split(', so they are')[0]}; validated on {n_held} held-out training frames, "
        f"clean and with synthetic defects (image AUROC {scores}): {best}"
    )


def validate(
    cfg: TrainConfig,
    task: str,
    paths: Sequence[Path],
    candidates: dict[str, dict[str, Any]],
    n_tasks: int = 1,
) -> tuple[dict[str, float] | None, int]:
    """Image AUROC of each candidate geometry on held-out training frames (None if too few).

    Paired: every held-out frame is scored clean (a good part) and with each kind of defect, so the
    candidates are compared on the same parts and the AUROC is not a draw of which frames were
    painted."""
    rng = np.random.default_rng(cfg.seed + zlib.crc32(task.encode()) + 1)
    order = rng.permutation(len(paths))[:VALIDATION_IMAGES]
    n_held = len(order) // 2
    if n_held < MIN_HELD_OUT:
        return None, n_held
    clean = list(read_images([paths[i] for i in order[:n_held]], None))
    fit = read_images([paths[i] for i in order[n_held:]], None)
    textures = list(texture_source().values())
    painted = [paint_defect(frame, kind, rng, textures)[0] for kind in KINDS for frame in clean]
    labels = np.array([0] * len(clean) + [1] * len(painted))
    # The probe sees a share of the task's images; its memory gets the same share of what the task
    # will keep, or a bank far denser than the real one would favour the geometry with more patches.
    share = len(fit) / max(len(fit), round(len(paths) * (1 - cfg.val_fraction)))
    aurocs = {}
    for name, doc in candidates.items():
        scores = _probe_scores(cfg, task, Geometry.from_dict(doc), fit, clean + painted, share / n_tasks)
        aurocs[name] = M.auroc(labels, scores)
    return aurocs, n_held


def _probe_scores(
    cfg: TrainConfig,
    task: str,
    geometry: Geometry,
    fit: Sequence[np.ndarray],
    held: list[np.ndarray],
    memory_share: float = 1.0,
) -> np.ndarray:
    """Raw image scores of ``held`` from a probe model fitted on ``fit`` cut by ``geometry``."""
    name = cfg.method if cfg.method in DIRECT_PROBES else "patchcore"
    cls = method_class(name)
    settings = replace(cfg.method_settings(), progress=False)
    if name != cfg.method:  # the run's layers are chosen for its own method; the probe uses its own
        settings = replace(settings, layers=None)
    section = cfg.section(name)
    if "budget" in type(section).model_fields:  # a capped memory bank: the probe's share of it
        section = section.model_copy(update={"budget": max(256, round(section.budget * memory_share))})
    method = cls(cls.strategies[0], settings, section)
    method.fit_task(task, geometry.cut_many(fit))
    if geometry.framed:
        method.geometry = geometry
        return method.raw_scores(held, 0)
    return method.raw_scores(geometry.cut_many(held), 0)

"""Turn a trainer run directory into what the bundle writer needs.

Why separate from the writer: the writer takes a ScoringGraph and plain facts, so it
is testable with any graph; only this module knows the run directory's layout
(`trainer.runs.load_run`, `metrics.json`, the task sources in the run history).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.export.bundle_writer import BundleInfo
from linewatch.export.onnx_export import ExportError
from linewatch.trainer.methods.base import ScoringGraph

log = logging.getLogger(__name__)


@dataclass
class RunExport:
    graph: ScoringGraph
    info: BundleInfo
    golden_inputs: np.ndarray


def _metrics(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    keep = ("final", "forgetting", "task_inference_accuracy", "relative_gap")
    return {k: doc[k] for k in keep if k in doc} or None


def _task_samples(spec: str, task: str) -> Any | None:
    from linewatch.trainer.data import DatasetError, load_task

    try:
        return load_task(spec, task)
    except (DatasetError, OSError) as e:
        log.warning("task %s: data %s not readable here (%s)", task, spec, e)
        return None


def golden_from_data(
    sources: dict[str, str],
    tasks: list[str],
    input_hw: tuple[int, int],
    n: int = 4,
    geometry: dict[str, Any] | None = None,
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Up to `n` real test frames: a defect and a good image per task, tasks in turn.

    With a tile or letterbox `geometry` they are real model inputs: the frame's middle tile
    (or its letterboxed picture). Returns (frames or None, image counts per task) — the counts
    go into provenance.
    """
    from linewatch.trainer.data import image_size, read_images

    counts: dict[str, Any] = {}
    per_task: list[list[Path]] = []
    for task in tasks:
        spec = sources.get(task)
        split = _task_samples(spec, task) if spec else None
        if split is None:
            continue
        if split.test:
            counts[task] = {"frame_size": list(image_size(split.test[0].path))}
        good = [s for s in split.test if s.label == 0]
        bad = [s for s in split.test if s.label == 1]
        counts[task] = {
            **counts.get(task, {}),
            "train": len(split.train),
            "test_good": len(good),
            "test_defect": len(bad),
        }
        per_task.append([s.path for s in (bad[:1] + good[:1])])
    picks: list[Path] = []
    for rank in range(2):
        for paths in per_task:
            if rank < len(paths) and len(picks) < n:
                picks.append(paths[rank])
    if not picks:
        return None, counts
    if geometry is not None and _framed(geometry, input_hw):
        return _golden_tiles(picks, geometry, input_hw), counts
    return read_images(picks, input_hw), counts


def _golden_tiles(paths: list[Path], geometry: dict[str, Any], input_hw: tuple[int, int]) -> np.ndarray:
    from linewatch.contract.geometry import Geometry
    from linewatch.trainer.data import read_images

    g = Geometry.from_dict(geometry, input_hw)
    # Frames keep their own sizes (auto: each task's camera, each with its ``by_size`` plan).
    frames = read_images(paths, g.frame_hw)
    middles = []
    for frame in frames:
        plan = g.plan(frame.shape[:2])
        middles.append(plan.cut(frame)[plan.n // 2])
    return np.stack(middles)


def _framed(geometry: dict[str, Any], input_hw: tuple[int, int]) -> bool:
    from linewatch.contract.geometry import Geometry

    return Geometry.from_dict(geometry, input_hw).framed


def calibration_frames(info: BundleInfo, input_hw: tuple[int, int], n: int = 32, seed: int = 0) -> np.ndarray:
    """Up to `n` model inputs from the tasks' TRAINING images (INT8 calibration), tasks in turn.

    A seeded choice of images per task; with a tile geometry every tile of them is a candidate.
    Raises ExportError when no task's data is readable here (INT8 needs real frames).
    """
    from linewatch.contract.geometry import Geometry
    from linewatch.trainer.data import image_size, read_images

    sources = info.provenance.get("data") or {}
    rng = np.random.default_rng(seed)
    per_task = max(1, -(-n // max(1, len(info.tasks))))
    picks: list[Path] = []
    for task in info.tasks:
        split = _task_samples(sources[task], task) if sources.get(task) else None
        if split is not None and split.train:
            order = rng.permutation(len(split.train))[:per_task]
            picks.extend(split.train[i].path for i in order)
    if not picks:
        raise ExportError(f"--int8 needs the training images of {info.tasks} on this machine to calibrate")
    geometry = info.geometry
    if geometry is None or geometry.get("mode", "resize") == "resize":
        return read_images(picks, input_hw)[:n]
    g = Geometry.from_dict(geometry, input_hw)
    frames = read_images(picks, g.frame_hw or image_size(picks[0]))
    plan = g.plan(frames.shape[1:3])
    tiles = np.concatenate([plan.cut(f) for f in frames])
    return tiles[np.sort(rng.permutation(len(tiles))[:n])]


def synthetic_golden(input_hw: tuple[int, int], n: int = 3, seed: int = 0) -> np.ndarray:
    """Deterministic textured frames, for runs whose data is not on this machine."""
    from linewatch.export.toy import toy_frames

    good = toy_frames(n - 1, input_hw, seed=seed)
    bad = toy_frames(1, input_hw, seed=seed + 1, defect=True)
    return np.concatenate([good, bad])


def load_run_for_export(
    run_dir: str | Path, task: str | None = None, name: str | None = None, n_golden: int = 4
) -> RunExport:
    """The scoring graph, manifest facts and golden frames of a trainer run."""
    from linewatch.trainer.runs import RunError, load_run

    run_dir = Path(run_dir).resolve()
    try:
        learner, history = load_run(run_dir)
    except (RunError, OSError) as e:
        raise ExportError(f"cannot load run {run_dir}: {e}") from e
    cfg = learner.cfg
    if cfg.strategy == "single":
        if task is None or task not in learner.methods:
            raise ExportError(
                f"run {run_dir} keeps one model per task (strategy single): pick one with --task {sorted(learner.methods)}"
            )
        method, tasks = learner.methods[task], [task]
    else:
        if "main" not in learner.methods:
            raise ExportError(f"run {run_dir} has no fitted model")
        method, tasks = learner.methods["main"], list(learner.tasks)
    graph = method.scoring_graph()
    sources: dict[str, str] = dict(history.get("sources", {}))
    geometry = cfg.geometry_manifest()
    frames, counts = golden_from_data(sources, tasks, tuple(graph.input_hw), n_golden, geometry)
    golden_source = "test images of " + ", ".join(tasks)
    if frames is None:
        frames = synthetic_golden(tuple(graph.input_hw))
        golden_source = "synthetic (run data not readable on the export machine)"
    info = BundleInfo(
        name=name or cfg.method,
        method=cfg.method,
        strategy=cfg.strategy,
        backbone=cfg.backbone,
        tasks=tasks,
        calibration=dict(graph.calibration),
        method_metadata=dict(graph.metadata),
        provenance={
            "run_dir": str(run_dir),
            "data": {t: sources.get(t) for t in tasks},
            "tasks": tasks,
            "image_counts": counts,
            "slots": [list(s) for s in getattr(method, "slots", [])],
            "trainer_config": cfg.model_dump(mode="json"),
        },
        metrics=_metrics(run_dir),
        golden_source=golden_source,
        geometry=geometry,
        # Frames keep their own size under `auto`: the batch must hold every tile of the largest.
        frame_sizes=[tuple(c["frame_size"]) for c in counts.values() if "frame_size" in c],
    )
    return RunExport(graph, info, frames)

"""The continual-learning loop (the benchmark protocol): learn tasks in order, and after each one
evaluate every task seen. Named for what it runs, not `protocol.py`, which read like the method
`Protocol` class.

`fit` and `update` share one loop, so continuing a saved run gives the same result as
fitting the whole sequence at once with the same seed.
"""

from __future__ import annotations

import json
import resource
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import f1_score

from linewatch.contract.geometry import Geometry, choose_geometry
from linewatch.trainer import metrics as M
from linewatch.trainer.config import TrainConfig
from linewatch.trainer.data import DatasetError, image_size, load_task, read_images, read_masks, take_frames
from linewatch.trainer.geometry_choice import choose_task_geometry
from linewatch.trainer.learner import Learner, TaskData
from linewatch.trainer.report import TaskEval, write_report
from linewatch.trainer.runs import load_run, save_run

# Beside DESIGN.md's metrics: F1 of the verdicts at the calibrated threshold (0.5), which is
# what a line actually runs on; the max-F1 and AUROC metrics ignore calibration.
CALIBRATED_F1 = "image_f1_calibrated"
MATRIX_METRICS = (*M.METRIC_NAMES, CALIBRATED_F1)

Log = Callable[[str], None]


def _read_size(split: Any, cfg: TrainConfig) -> tuple[int, int] | None:
    """Model resolution for the `resize` geometry. For `letterbox` and `tile`, the frame size: the
    configured one, else the first training image's (the learner records it), or None to keep every
    frame at its own size (`auto` tiling). The learner cuts the model inputs itself, and test masks
    stay at full resolution so metrics judge the stitched full-frame maps."""
    g = cfg.geometry
    if not Geometry.from_dict(cfg.geometry_manifest()).framed:
        return tuple(cfg.image_size)
    if g.frame_size is not None:
        return tuple(g.frame_size)
    if not g.learn_frame_size:
        return None
    return _first_frame_size(split)


def load_task_data(spec: str, task: str, cfg: TrainConfig) -> TaskData:
    """Read a task at model (or, for tiles and letterbox, frame) resolution and hold out a seeded
    share of its good images."""
    split = load_task(spec, task)
    size = _read_size(split, cfg)
    train = read_images([s.path for s in split.train], size)
    rng = np.random.default_rng(cfg.seed + zlib.crc32(task.encode()))
    order = rng.permutation(len(train))
    n_val = max(cfg.min_val, round(cfg.val_fraction * len(train)))
    if len(train) - n_val < 1:
        raise ValueError(
            f"task {task}: {len(train)} train images are too few to hold out {n_val} for calibration"
        )
    test = read_images([s.path for s in split.test], size)
    # Frames kept at their own sizes are scored at those sizes; their masks (and, for metrics only,
    # their maps) are brought to the first test image's size so that one task's maps stack.
    mask_size = size or (test[0].shape[:2] if len(test) else image_size(split.train[0].path))
    masks, has_mask = read_masks(split.test, mask_size)
    labels = np.array([s.label for s in split.test], dtype=np.int64)
    train_part, val_part = take_frames(train, order[n_val:]), take_frames(train, order[:n_val])
    return TaskData(task, spec, train_part, val_part, test, labels, masks, has_mask)


def _first_frame_size(split: Any) -> tuple[int, int]:
    """The size of a task's first readable training image. Unreadable ones are skipped here: reading
    the task reports every bad file at once (one DatasetError), which is what the user needs."""
    for sample in split.train:
        try:
            return image_size(sample.path)
        except OSError:
            continue
    read_images([s.path for s in split.train], (8, 8))  # raises the DatasetError naming them all
    raise DatasetError(f"task {split.task}: no training image could be read")


def resolve_auto_geometry(learner: Learner, spec: str, tasks: list[str], log: Log = print) -> None:
    """`auto`, before any new task is read. At the first `fit` the size rule over every new task's
    frames (contract.geometry.choose_geometry) sets the geometry for frame sizes no task has; then
    each new task whose frame size has no choice yet gets its own (trainer/geometry_choice.py,
    validated on its training images), added to `by_size`. Printed and kept in the run, so `eval`,
    the exporter and the edge never re-decide, and `update` decides only for new frame sizes."""
    g = learner.cfg.geometry
    if g.mode != "auto" and not g.auto:
        return
    splits = {t: load_task(spec, t) for t in tasks}  # listed once, for the rule and the choices
    sizes = {t: _first_frame_size(split) for t, split in splits.items()}
    if g.mode == "auto":
        doc, reason = choose_geometry(list(sizes.values()), tuple(learner.cfg.image_size))
        learner.set_geometry(doc, reason)
        log(f"geometry: {reason}")
    for task in tasks:
        hw = sizes[task]
        geometry = learner.geometry
        if geometry.for_frame(hw) is not geometry:  # a camera a task already chose for: keep its cut
            log(f"geometry for {task}: as the earlier task with {hw[0]}x{hw[1]} frames")
            continue
        n_tasks = len(learner.tasks) + len(tasks)  # the tasks the model will hold after this step
        paths = [s.path for s in splits[task].train]
        doc, reason = choose_task_geometry(learner.cfg, task, paths, hw, log, n_tasks)
        learner.set_size_geometry(task, hw, doc, reason)
        log(f"geometry for {task}: {reason}")


def evaluate_task(learner: Learner, data: TaskData) -> tuple[dict[str, Any], TaskEval, np.ndarray | None]:
    pred = learner.predict(data.name, data.test)
    values = {
        **M.image_metrics(data.labels, pred.scores),
        CALIBRATED_F1: _calibrated_f1(data.labels, pred.scores),
    }
    values.update(M.pixel_metrics(data.masks, pred.maps, data.has_mask, labels=data.labels))
    evaluation = TaskEval(
        data.name, data.labels, pred.scores, pred.maps, data.masks, data.has_mask, data.test
    )
    return values, evaluation, learner.task_hits(data.name, pred)


def _calibrated_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(f1_score(labels, scores >= 0.5, zero_division=0.0))


def pooled_metrics(evals: list[TaskEval]) -> dict[str, float]:
    """All tasks' test images as one stream with one threshold, as the line sees them."""
    labels = np.concatenate([e.labels for e in evals])
    scores = np.concatenate([e.scores for e in evals])
    return {"image_auroc": M.auroc(labels, scores), CALIBRATED_F1: _calibrated_f1(labels, scores)}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_steps(
    learner: Learner, history: dict[str, Any], spec: str, new_tasks: list[str], log: Log = print
) -> tuple[dict[str, Any], list[TaskEval]]:
    """Learn `new_tasks` one by one; after each, evaluate all tasks seen so far."""
    history.setdefault("sources", {})
    history.setdefault("matrix", {m: [] for m in MATRIX_METRICS})
    history.setdefault("task_inference", [])
    history.setdefault("timings", [])
    history.setdefault("left_out", {})
    if len(set(new_tasks)) != len(new_tasks):
        raise ValueError(f"a task is named twice: {new_tasks}")
    history.setdefault("relearned", [])
    resolve_auto_geometry(learner, spec, [t for t in new_tasks if t not in learner.tasks], log)
    cfg = learner.cfg
    seen: dict[str, TaskData] = {}
    for name in learner.tasks:  # earlier tasks are re-read from where they were learned
        seen[name] = load_task_data(history["sources"][name], name, cfg)
    evals: list[TaskEval] = []
    for task in new_tasks:
        # A known task is re-learned from its current images (a refresh with new good images):
        # its slot is replaced and the last matrix row is replaced by the new evaluation.
        relearn = task in seen
        log(
            f"[{len(seen) + (0 if relearn else 1)}] task {task}: {'re-learning' if relearn else 'loading'} {spec}"
        )
        data = load_task_data(spec, task, learner.cfg)  # learner.cfg: the frame size, once learnt
        seen[task] = data
        history["sources"][task] = spec
        history["left_out"][task] = int(np.sum((data.labels == 1) & ~data.has_mask))
        t0 = time.perf_counter()
        learner.learn(data, seen)
        fit_s = time.perf_counter() - t0
        history["timings"].append(
            {"task": task, "fit_s": round(fit_s, 2), "peak_rss_mb": round(_peak_rss_mb(), 1)}
        )
        log(f"    learned {task} ({len(data.train)} images, {len(data.val)} held out) in {fit_s:.1f}s")
        row: dict[str, list] = {m: [] for m in MATRIX_METRICS}
        hits: list[np.ndarray] = []
        evals = []
        for name, d in seen.items():
            values, evaluation, task_hits = evaluate_task(learner, d)
            evals.append(evaluation)
            for m in MATRIX_METRICS:
                row[m].append(values[m])
            if task_hits is not None:
                hits.append(task_hits)
            log(
                f"    eval {name}: "
                + " ".join(f"{m}={values[m]:.3f}" for m in ("image_auroc", "pixel_auroc", "aupro"))
            )
        if relearn:
            history["relearned"].append({"task": task, "step": len(history["matrix"]["image_auroc"])})
            for m in MATRIX_METRICS:
                history["matrix"][m].pop()
            history["task_inference"].pop()
        for m in MATRIX_METRICS:
            history["matrix"][m].append(row[m])
        history["task_inference"].append(float(np.concatenate(hits).mean()) if hits else None)
        history["pooled"] = pooled_metrics(evals)
    return history, evals


def _square(rows: list[list[Any]]) -> list[list[Any]]:
    n = len(rows)
    return [list(r) + [None] * (n - len(r)) for r in rows]


def build_metrics(
    learner: Learner, history: dict[str, Any], single_final: dict | None = None
) -> dict[str, Any]:
    matrices = {m: _square(rows) for m, rows in history["matrix"].items()}
    out: dict[str, Any] = {
        "method": learner.cfg.method,
        "strategy": learner.cfg.strategy,
        "backbone": learner.cfg.backbone,
        "tasks": list(learner.tasks),
        "matrix": matrices,
        **M.summarise(matrices),
        "pixel_images_left_out": history["left_out"],
        "timings": history["timings"],
        "relearned": history.get("relearned", []),
        "pooled": history.get("pooled", {}),
        # How scores were normalised, and, in a field of its own, what the method records about itself
        # (replay_buffer, training, teacher): per model (`main`, or a task under `single`).
        "calibration": {k: m.calibration_meta() for k, m in learner.methods.items()},
        "method_metadata": {k: m.metadata() for k, m in learner.methods.items()},
        "geometry": learner.cfg.geometry_manifest(),
        "config": learner.cfg.model_dump(mode="json"),
    }
    buffers = {k: c["replay_buffer"] for k, c in out["method_metadata"].items() if "replay_buffer" in c}
    if buffers:  # what replay costs (images, bytes on disk), where a reader of the run looks first
        out["replay_buffer"] = buffers["main"] if list(buffers) == ["main"] else buffers
    tia = history["task_inference"]
    if tia and tia[-1] is not None:
        out["task_inference_accuracy"] = tia[-1]
        out["task_inference_by_step"] = tia
    if single_final:
        out["relative_gap"] = M.relative_gaps(single_final, out["final"])
    return M.json_safe(out)


def write_outputs(
    run_dir: Path, learner: Learner, history: dict, evals: list[TaskEval], single_run: Path | None
):
    single_final = json.loads((single_run / "metrics.json").read_text())["final"] if single_run else None
    metrics = build_metrics(learner, history, single_final)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if learner.cfg.report and evals:
        write_report(run_dir, metrics, evals)
    return metrics


def fit(
    cfg: TrainConfig,
    spec: str,
    tasks: list[str],
    run_dir: Path,
    single_run: Path | None = None,
    log: Log = print,
) -> dict[str, Any]:
    learner = Learner(cfg)
    history, evals = run_steps(learner, {}, spec, tasks, log)
    save_run(run_dir, learner, history)
    return write_outputs(run_dir, learner, history, evals, single_run)


def update(run_dir: Path, spec: str, tasks: list[str], single_run: Path | None = None, log: Log = print):
    learner, history = load_run(run_dir)
    history, evals = run_steps(learner, history, spec, tasks, log)
    save_run(run_dir, learner, history)
    return write_outputs(run_dir, learner, history, evals, single_run)


def evaluate(run_dir: Path, spec: str, tasks: list[str], log: Log = print) -> dict[str, Any]:
    """Score a saved run on the given tasks' test sets without learning anything."""
    learner, _ = load_run(run_dir)
    unknown = [t for t in tasks if t not in learner.tasks and learner.cfg.strategy == "single"]
    if unknown:
        raise ValueError(f"a single-strategy run has no model for {unknown}")
    per_task: dict[str, dict] = {}
    hits = []
    for task in tasks:
        data = load_task_data(spec, task, learner.cfg)
        values, _, task_hits = evaluate_task(learner, data)
        per_task[task] = values
        if task_hits is not None:
            hits.append(task_hits)
        log(
            f"eval {task}: "
            + " ".join(f"{m}={values[m]:.3f}" for m in ("image_auroc", "pixel_auroc", "aupro"))
        )
    row = {m: [per_task[t][m] for t in tasks] for m in MATRIX_METRICS}
    out = {
        "method": learner.cfg.method,
        "strategy": learner.cfg.strategy,
        "backbone": learner.cfg.backbone,
        "tasks": tasks,
        "learned_tasks": learner.tasks,
        "per_task": per_task,
        "matrix": {m: [row[m]] for m in MATRIX_METRICS},
        "final": {
            m: float(np.nanmean([v if v is not None else np.nan for v in row[m]])) for m in MATRIX_METRICS
        },
    }
    if hits:
        out["task_inference_accuracy"] = float(np.concatenate(hits).mean())
    return M.json_safe(out)

"""The run report: `report.html` plus its PNG plots in `report/`, written next to metrics.json.

The report is for a person deciding whether a model may go to the line, so it shows
what numbers alone hide: which task was forgotten when (the task x task matrices),
how the scores separate (ROC curves), and what the model actually marks on the best,
median and worst images of each task.

Plots use matplotlib's object-oriented `Figure` (rendered by Agg on `savefig`) and
never pyplot, so writing a report changes no global backend or state and works on a
headless trainer. The HTML has no scripts or external assets; images are relative
links to `report/*.png`, so the run directory can be copied or archived as a whole.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from linewatch.trainer.metrics import METRIC_NAMES

__all__ = ["TaskEval", "select_examples", "write_report"]

PLOT_DIR = "report"
# Pixel ROC curves are drawn from at most this many pixels per task: a curve through
# a uniform sample is visually identical, and plotting millions of points is slow.
_ROC_MAX_PIXELS = 200_000
_THRESHOLD = 0.5  # maps and scores are normalised so that 0.5 is the decision threshold
_SUMMARIES = ("final", "forgetting", "average", "relative_gap")


@dataclass
class TaskEval:
    """One task's final evaluation: what the report needs to draw ROC curves and examples.

    labels: (N,) 0 good / 1 defect; scores: (N,) normalised image scores;
    maps: (N,H,W) float anomaly maps in [0, 1] with 0.5 the threshold;
    masks: (N,H,W) bool ground truth; has_mask: (N,) bool, False for defect images
    without a mask; images: (N,H,W,3) uint8 RGB test images, or a list of (H,W,3) frames of
    several sizes (trainer/data/images.py: Frames).
    """

    task: str
    labels: np.ndarray
    scores: np.ndarray
    maps: np.ndarray
    masks: np.ndarray
    has_mask: np.ndarray
    images: np.ndarray

    def __post_init__(self) -> None:
        """Fail when the evaluation is built, not halfway through drawing the report."""
        n = len(self.labels)
        shapes = {
            "scores": (np.shape(self.scores), 1),
            "maps": (np.shape(self.maps), 3),
            "masks": (np.shape(self.masks), 3),
            "has_mask": (np.shape(self.has_mask), 1),
            "images": (_frames_shape(self.images), 4),
        }
        for name, (shape, ndim) in shapes.items():
            if len(shape) != ndim or shape[0] != n:
                raise ValueError(f"TaskEval({self.task!r}).{name} has shape {shape} for {n} labels")


def _frames_shape(frames: Any) -> tuple[int, ...]:
    """np.shape for Frames: a list of frames of different sizes has shape (N, -1, -1, 3)."""
    if isinstance(frames, np.ndarray) or not len(frames):
        return np.shape(frames)
    if any(np.ndim(f) != 3 for f in frames):
        return (len(frames),)
    return (len(frames), -1, -1, 3)


# ---------------------------------------------------------------- entry point


def write_report(run_dir: Path, metrics: Mapping[str, Any], evals: Sequence[TaskEval]) -> Path:
    """Write `run_dir/report.html` and its plots in `run_dir/report/`; return the HTML path.

    `metrics` has the metrics.json shape (DESIGN.md); every key is optional, so a
    partial run still gets a report. `evals` are the per-task final evaluations.
    """
    run_dir = Path(run_dir)
    plot_dir = run_dir / PLOT_DIR
    plot_dir.mkdir(parents=True, exist_ok=True)
    tasks = [str(t) for t in metrics.get("tasks", [])]

    heatmaps = [
        (metric, _plot_matrix(matrix, metric, tasks, plot_dir / f"matrix_{_slug(metric)}.png"))
        for metric, matrix in metrics.get("matrix", {}).items()
    ]
    roc = _plot_roc(evals, plot_dir / "roc.png") if evals else None
    grids = [
        (ev, _plot_examples(ev, plot_dir / f"examples_{i:02d}_{_slug(ev.task)}.png"))
        for i, ev in enumerate(evals)
    ]

    page = _render_html(metrics, heatmaps, roc, grids, run_dir)
    out = run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out


# ---------------------------------------------------------------- plots


def _plot_matrix(matrix: Sequence[Sequence[float | None]], metric: str, tasks: list[str], path: Path) -> Path:
    """Heatmap of matrix[i][j] (after training task i, evaluated on task j), values annotated."""
    values = np.array([[_num(v) for v in row] for row in matrix], dtype=np.float64).reshape(len(matrix), -1)
    rows, cols = values.shape
    labels = tasks if len(tasks) == max(rows, cols) else [str(i) for i in range(max(rows, cols))]
    fig = Figure(figsize=(max(3.5, 1.2 + 0.75 * cols), max(3.0, 1.0 + 0.6 * rows)))
    ax = fig.add_subplot()
    cells = np.ma.masked_invalid(values)
    image = ax.imshow(cells, cmap="viridis", vmin=0.0, vmax=1.0)
    for i, j in zip(*np.nonzero(~np.ma.getmaskarray(cells)), strict=True):
        v = values[i, j]
        ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=8, color="black" if v > 0.6 else "white")
    ax.set_xticks(range(cols), labels[:cols], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(rows), labels[:rows], fontsize=8)
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after training task")
    ax.set_title(metric)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def _plot_roc(evals: Sequence[TaskEval], path: Path) -> Path:
    """Image-level and pixel-level ROC curves of every task's final evaluation."""
    fig = Figure(figsize=(11, 5))
    ax_img, ax_pix = fig.subplots(1, 2)
    for ev in evals:
        _roc_line(
            ax_img, ev.task, np.asarray(ev.labels).astype(bool), np.asarray(ev.scores, dtype=np.float64)
        )
        y, s = _known_pixels(ev)
        _roc_line(ax_pix, ev.task, y, s)
    for ax, title in ((ax_img, "image-level ROC"), (ax_pix, "pixel-level ROC (images with masks)")):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            xlabel="false positive rate",
            ylabel="true positive rate",
            title=title,
        )
        ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def _roc_line(ax: Axes, task: str, y: np.ndarray, s: np.ndarray) -> None:
    """One task's ROC curve, or a legend-only entry saying why there is none."""
    if y.size == 0 or y.all() or not y.any():
        ax.plot([], [], label=f"{task}: n/a (one class)")
        return
    fpr, tpr, _ = roc_curve(y, s)
    ax.plot(fpr, tpr, linewidth=1.2, label=f"{task}: AUROC {roc_auc_score(y, s):.3f}")


def _known_pixels(ev: TaskEval) -> tuple[np.ndarray, np.ndarray]:
    """Flattened pixel labels and map values of images whose ground truth is known, sampled."""
    known = np.asarray(ev.has_mask, dtype=bool) | (np.asarray(ev.labels) == 0)
    y = np.asarray(ev.masks, dtype=bool)[known].reshape(-1)
    s = np.asarray(ev.maps, dtype=np.float64)[known].reshape(-1)
    if y.size > _ROC_MAX_PIXELS:
        idx = np.random.default_rng(0).choice(y.size, size=_ROC_MAX_PIXELS, replace=False)
        y, s = y[idx], s[idx]
    return y, s


def select_examples(labels: np.ndarray, scores: np.ndarray) -> list[tuple[str, int]]:
    """(caption, index) of the images worth looking at, without repeats.

    Defect images by descending score (highest = clearest detection, lowest = the
    likeliest miss) and good images by ascending score (highest = the likeliest false
    alarm): for each, the best, the median and the worst.
    """
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    picks: list[tuple[str, int]] = []
    for kind, label, descending in (("defect", 1, True), ("good", 0, False)):
        idx = np.flatnonzero(labels == label)
        if idx.size == 0:
            continue
        order = idx[np.argsort(-scores[idx] if descending else scores[idx], kind="stable")]
        for name, pos in (("best", 0), ("median", (order.size - 1) // 2), ("worst", order.size - 1)):
            if all(int(order[pos]) != i for _, i in picks):
                picks.append((f"{kind}, {name}", int(order[pos])))
    return picks


def _plot_examples(ev: TaskEval, path: Path) -> Path:
    """Top row: image with the true mask contour; bottom row: map overlay, 0.5 contour and mask.

    Green is the ground truth, white the region the model flags at the 0.5 threshold.
    """
    picks = select_examples(ev.labels, ev.scores)
    n = max(1, len(picks))
    fig = Figure(figsize=(2.3 * n, 5.0))
    axes = np.asarray(fig.subplots(2, n, squeeze=False))
    for col, (caption, i) in enumerate(picks):
        image = np.asarray(ev.images[i])
        hw = image.shape[:2]
        anomaly = _fit(np.asarray(ev.maps[i], dtype=np.float32), hw, cv2.INTER_LINEAR)
        mask = _fit(np.asarray(ev.masks[i], dtype=np.uint8), hw, cv2.INTER_NEAREST).astype(bool)
        known = bool(ev.has_mask[i]) or int(ev.labels[i]) == 0
        top, bottom = axes[0, col], axes[1, col]
        top.imshow(image)
        top.set_title(
            f"{caption}\nscore {float(ev.scores[i]):.3f}" + ("" if known else "\n(no mask)"), fontsize=8
        )
        bottom.imshow(image)
        bottom.imshow(np.clip(anomaly, 0.0, 1.0), cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
        for ax in (top, bottom):
            if mask.any():
                ax.contour(mask.astype(np.float32), levels=[0.5], colors="lime", linewidths=1.2)
        if anomaly.min() < _THRESHOLD < anomaly.max():  # drawn last so it stays visible over the truth
            bottom.contour(anomaly, levels=[_THRESHOLD], colors="white", linewidths=0.9, linestyles="dashed")
    for ax in axes.reshape(-1):
        ax.axis("off")
    fig.suptitle(f"{ev.task}: green = true defect, white = map >= {_THRESHOLD}", fontsize=9)
    return _save(fig, path)


def _fit(array: np.ndarray, hw: tuple[int, int], interpolation: int) -> np.ndarray:
    """Resize a map or mask to the image size when a method returns another resolution."""
    if array.shape[:2] == hw:
        return array
    return cv2.resize(array, (hw[1], hw[0]), interpolation=interpolation)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


# ---------------------------------------------------------------- HTML

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 0.5em; }
img { max-width: 100%; }
"""


def _render_html(
    metrics: Mapping[str, Any],
    heatmaps: list[tuple[str, Path]],
    roc: Path | None,
    grids: list[tuple[TaskEval, Path]],
    run_dir: Path,
) -> str:
    """The page: run info, summary table, matrices, ROC curves and examples, all text escaped."""
    title = f"Linewatch report: {metrics.get('method', '?')} / {metrics.get('strategy', '?')}"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        "<h2>Run</h2>",
        _run_table(metrics),
        "<h2>Summary</h2>",
        _summary_table(metrics),
    ]
    if heatmaps:
        parts.append("<h2>Task &times; task matrices</h2>")
        parts.append("<p>Row i: after training through task i; column j: evaluated on task j.</p>")
        parts += [_figure(path, metric, run_dir) for metric, path in heatmaps]
    if roc is not None:
        parts += ["<h2>ROC curves (final evaluation)</h2>", _figure(roc, "ROC curves", run_dir)]
    if grids:
        parts.append("<h2>Examples (final evaluation)</h2>")
        for ev, path in grids:
            parts += [
                f"<h3>{_e(ev.task)}</h3>",
                _eval_counts(ev),
                _figure(path, f"examples {ev.task}", run_dir),
            ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _run_table(metrics: Mapping[str, Any]) -> str:
    """Method, strategy, backbone, tasks, then every other scalar key of metrics.json."""
    rows: list[tuple[str, str]] = []
    for key in ("method", "strategy", "backbone"):
        rows.append((key, str(metrics.get(key, "—"))))
    rows.append(("tasks", ", ".join(str(t) for t in metrics.get("tasks", [])) or "—"))
    shown = {"method", "strategy", "backbone", "tasks", "matrix", *_SUMMARIES}
    for key, value in metrics.items():
        if key not in shown and (value is None or isinstance(value, (str, int, float, bool))):
            rows.append((key, _fmt(value)))
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _summary_table(metrics: Mapping[str, Any]) -> str:
    """One row per metric, one column per continual-learning summary present in metrics."""
    columns = [s for s in _SUMMARIES if isinstance(metrics.get(s), Mapping)]
    names = {m for s in columns for m in metrics[s]}
    ordered = [m for m in METRIC_NAMES if m in names] + sorted(names - set(METRIC_NAMES))
    if not ordered:
        return "<p>No summary metrics.</p>"
    head = "<tr><th>metric</th>" + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>"
    rows = [
        f"<tr><th>{_e(m)}</th>"
        + "".join(f'<td class="num">{_e(_fmt(metrics[c].get(m)))}</td>' for c in columns)
        + "</tr>"
        for m in ordered
    ]
    return f"<table>{head}{''.join(rows)}</table>"


def _eval_counts(ev: TaskEval) -> str:
    """Test-set composition, including the defect images left out of pixel metrics."""
    labels = np.asarray(ev.labels)
    defects = int((labels == 1).sum())
    left_out = int(((labels == 1) & ~np.asarray(ev.has_mask, dtype=bool)).sum())
    return (
        f"<p>{len(labels) - defects} good, {defects} defect test images; "
        f"{left_out} defect images without a mask (left out of pixel metrics).</p>"
    )


def _figure(path: Path, caption: str, run_dir: Path) -> str:
    src = path.relative_to(run_dir).as_posix()
    return f'<figure><img src="{_e(src)}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'


def _fmt(value: Any) -> str:
    """Numbers to three decimals, missing or NaN as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _slug(name: str) -> str:
    """A file-name-safe version of a task or metric name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "x"


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)

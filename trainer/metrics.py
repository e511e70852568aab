"""Evaluation metrics: image level, pixel level, AU-PRO and the continual-learning summaries.

The metric names are the ones DESIGN.md fixes for `metrics.json`, because scripts and
dashboards read them. Every function returns NaN (or `None` in `summarise`, which is
what ends up in JSON) when a metric is undefined, for example pixel metrics on a task
whose defect images have no masks; a missing value must never look like a bad model.

AUROC, AUPR and the precision-recall curves come from scikit-learn so that the
numbers match what the literature computes. AU-PRO is written here: scikit-learn has
no per-region overlap, and the MVTec AD definition needs connected components.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

IMAGE_METRICS: tuple[str, ...] = ("image_auroc", "image_f1")
PIXEL_METRICS: tuple[str, ...] = ("pixel_auroc", "pixel_aupr", "pixel_f1", "aupro")
METRIC_NAMES: tuple[str, ...] = IMAGE_METRICS + PIXEL_METRICS

# Above this many pixels, pixel AUROC/AUPR/F1 are computed on a deterministic uniform
# sample of this many pixels and AU-PRO on a threshold grid. Below it everything is
# exact. 20M pixels is about 300 images at 256x256, more than any single MVTec AD or
# VisA test split, so the published protocol is always exact; the limit only keeps
# scikit-learn's sort-based curves from needing gigabytes on very large evaluations.
MAX_EXACT_PIXELS = 20_000_000
# Grid size for AU-PRO above MAX_EXACT_PIXELS. The grid is uniform in FPR over
# [0, fpr_limit], so the integration step is fpr_limit / 2000 = 0.00015.
PRO_GRID_THRESHOLDS = 2000
_SAMPLE_SEED = 0

Matrix = Sequence[Sequence[float | None]]


# ---------------------------------------------------------------- image level


def best_f1(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Return (max F1 over all thresholds, the score threshold that reaches it).

    Max F1 rather than F1 at 0.5 because it measures how separable the scores are,
    independent of calibration; the threshold is returned so reports can show how far
    the calibrated 0.5 is from the best one. NaN for both when there is no positive.
    """
    labels, scores = _as_binary_pair(labels, scores)
    if not labels.any():
        return math.nan, math.nan
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # The last (precision=1, recall=0) point has no threshold and F1 = 0 anyway.
    p, r = precision[:-1], recall[:-1]
    denom = p + r
    f1 = np.divide(2 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, NaN when only one class is present (e.g. a task with no defects)."""
    labels, scores = _as_binary_pair(labels, scores)
    if labels.all() or not labels.any():
        return math.nan
    return float(roc_auc_score(labels, scores))


def image_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Image-level `image_auroc` and `image_f1` (max F1) from labels (0 good, 1 defect) and scores."""
    return {"image_auroc": auroc(labels, scores), "image_f1": best_f1(labels, scores)[0]}


# ---------------------------------------------------------------- pixel level


def pixel_metrics(
    masks: np.ndarray,
    maps: np.ndarray,
    has_mask: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    *,
    max_pixels: int = MAX_EXACT_PIXELS,
) -> dict[str, float | int]:
    """Pixel-level metrics over the images whose ground truth is known.

    Defect images without a mask (`has_mask` False) are left out, because their
    unmarked pixels are not known to be good, and counted in `pixel_images_left_out`
    for `metrics.json`. When `labels` is given, a good image (label 0) is always kept
    even if `has_mask` says False, since its mask is known to be empty; without
    `labels`, every image with `has_mask` False counts as a defect image.

    Exact up to `max_pixels` kept pixels. Above it, AUROC/AUPR/F1 use a deterministic
    uniform sample of `max_pixels` pixels and AU-PRO uses a grid of
    `PRO_GRID_THRESHOLDS` thresholds (a sample would drop small regions and bias PRO).

    Returns `pixel_auroc`, `pixel_aupr`, `pixel_f1`, `aupro` (NaN when no kept pixel is
    anomalous or none is good) and `pixel_images_left_out`.
    """
    masks, maps = _check_maps(masks, maps)
    left_out = _left_out(len(masks), has_mask, labels)
    kept_masks, kept_maps = masks[~left_out], maps[~left_out]
    result: dict[str, float | int] = dict.fromkeys(PIXEL_METRICS, math.nan)
    result["pixel_images_left_out"] = int(left_out.sum())
    n_pos = int(kept_masks.sum())
    if n_pos == 0 or n_pos == kept_masks.size:
        return result

    y, s = _pixel_sample(kept_masks, kept_maps, max_pixels)
    result["pixel_auroc"] = auroc(y, s)
    result["pixel_aupr"] = float(average_precision_score(y, s)) if y.any() else math.nan
    result["pixel_f1"] = best_f1(y, s)[0]
    exact = kept_masks.size <= max_pixels
    result["aupro"] = aupro(kept_masks, kept_maps, num_thresholds=None if exact else PRO_GRID_THRESHOLDS)
    return result


def _left_out(n: int, has_mask: np.ndarray | None, labels: np.ndarray | None) -> np.ndarray:
    """Boolean (N,) of images excluded from pixel metrics: defect images with no mask."""
    if has_mask is None:
        return np.zeros(n, dtype=bool)
    missing = ~np.asarray(has_mask, dtype=bool).reshape(-1)
    if missing.shape != (n,):
        raise ValueError(f"has_mask has {missing.size} entries for {n} images")
    if labels is not None:
        lab = np.asarray(labels).reshape(-1)
        if lab.shape != (n,):
            raise ValueError(f"labels has {lab.size} entries for {n} images")
        missing &= lab != 0
    return missing


def _pixel_sample(masks: np.ndarray, maps: np.ndarray, max_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Flattened (labels, scores), sampled uniformly with a fixed seed when above max_pixels."""
    y, s = masks.reshape(-1), maps.reshape(-1)
    if y.size <= max_pixels:
        return y, s
    idx = np.sort(np.random.default_rng(_SAMPLE_SEED).choice(y.size, size=max_pixels, replace=False))
    return y[idx], s[idx]


# ---------------------------------------------------------------- AU-PRO


def aupro(
    masks: np.ndarray,
    maps: np.ndarray,
    fpr_limit: float = 0.3,
    num_thresholds: int | None = None,
) -> float:
    """Area under the per-region-overlap curve up to `fpr_limit`, divided by `fpr_limit`.

    The MVTec AD definition: ground-truth regions are the 8-connected components of
    each image's mask; at a threshold t, PRO(t) is the mean over all regions of the
    fraction of the region's pixels scoring >= t, and FPR(t) is the fraction of all
    good pixels (of every image) scoring >= t. PRO is integrated over FPR with the
    trapezoid rule from 0 to `fpr_limit` (interpolating at `fpr_limit`). Unlike pixel
    AUROC, a small defect counts as much as a large one, which is what an inspector
    cares about.

    `num_thresholds=None` evaluates the curve exactly at every distinct score (sort
    based). An integer evaluates it at that many thresholds, chosen as quantiles of
    the good-pixel scores so the grid is uniform in FPR; every grid point is still an
    exact point of the curve, only the integration between points is coarser.
    NaN when there is no region or no good pixel.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    masks, maps = _check_maps(masks, maps)
    weights, n_regions = _region_weights(masks)
    good = ~masks.reshape(-1)
    if n_regions == 0 or not good.any():
        return math.nan
    scores = maps.reshape(-1)
    weights = weights.reshape(-1) / n_regions
    if num_thresholds is None:
        fpr, pro = _pro_curve_exact(scores, good, weights, fpr_limit)
    else:
        fpr, pro = _pro_curve_grid(scores, good, weights, fpr_limit, num_thresholds)
    return float(_area_to(fpr, pro, fpr_limit) / fpr_limit)


def _region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-pixel weight 1/(size of its region), 0 on good pixels, and the number of regions.

    Summing these weights over the pixels above a threshold gives the sum over regions
    of their overlap fraction; dividing by the region count gives PRO. One cv2 call per
    image, so the cost does not grow with the number of thresholds.
    """
    weights = np.zeros(masks.shape, dtype=np.float64)
    n_regions = 0
    for i, mask in enumerate(masks):
        if not mask.any():
            continue
        n_labels, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        sizes = np.bincount(labels.reshape(-1), minlength=n_labels).astype(np.float64)
        inv = np.zeros(n_labels, dtype=np.float64)
        inv[1:] = 1.0 / sizes[1:]
        weights[i] = inv[labels]
        n_regions += n_labels - 1
    return weights, n_regions


def _pro_curve_exact(
    scores: np.ndarray, good: np.ndarray, weights: np.ndarray, fpr_limit: float
) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every distinct score, descending thresholds, from (0, 0) to (1, 1).

    Only pixels at or above the score where FPR first reaches `fpr_limit` are sorted:
    the rest of the curve is never integrated, and this sorts about a third of the
    pixels instead of all of them.
    """
    good_scores = scores[good]
    n_good = good_scores.size
    k = min(n_good, max(1, math.ceil(fpr_limit * n_good)))
    cutoff = np.partition(good_scores, n_good - k)[n_good - k]  # the k-th highest good score
    keep = scores >= cutoff
    s, g, w = scores[keep], good[keep], weights[keep]
    order = np.argsort(s, kind="stable")[::-1]
    s = s[order]
    fpr = np.cumsum(g[order], dtype=np.int64) / n_good
    pro = np.cumsum(w[order])
    # All pixels with the same score switch together: keep the last index of each run.
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True))
    return _close_curve(fpr[last], pro[last])


def _pro_curve_grid(
    scores: np.ndarray, good: np.ndarray, weights: np.ndarray, fpr_limit: float, num_thresholds: int
) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at `num_thresholds` thresholds, via one histogram pass instead of a sort."""
    if num_thresholds < 2:
        raise ValueError(f"num_thresholds must be >= 2, got {num_thresholds}")
    good_scores = scores[good]
    levels = 1.0 - np.linspace(0.0, fpr_limit, num_thresholds)
    # 'lower' guarantees that the last threshold has FPR >= fpr_limit.
    thresholds = np.quantile(good_scores, levels, method="lower")
    # One threshold just above the best good pixel gives the exact FPR = 0 point.
    above = np.nextafter(np.float64(good_scores.max()), np.inf)
    thresholds = np.unique(np.append(thresholds, above))  # ascending
    # Bin c holds the pixels with exactly c thresholds <= score; a pixel counts at
    # threshold index i when c > i, so counts per threshold are reverse cumulative sums.
    bins = np.searchsorted(thresholds, scores, side="right")
    n_bins = thresholds.size + 1
    fp_hist = np.bincount(bins, weights=good.astype(np.float64), minlength=n_bins)
    pro_hist = np.bincount(bins, weights=weights, minlength=n_bins)
    fpr = np.cumsum(fp_hist[::-1])[:-1] / good_scores.size  # thresholds descending
    pro = np.cumsum(pro_hist[::-1])[:-1]
    return _close_curve(fpr, pro)


def _close_curve(fpr: np.ndarray, pro: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clip cumulative-sum rounding above 1 and add the (0, 0) and (1, 1) end points."""
    fpr = np.concatenate(([0.0], np.minimum(fpr, 1.0), [1.0]))
    pro = np.concatenate(([0.0], np.minimum(pro, 1.0), [1.0]))
    return fpr, pro


def _area_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) for x in [0, x_max], x non-decreasing, y interpolated at x_max."""
    inside = x <= x_max
    xi, yi = x[inside], y[inside]
    area = float(np.sum(0.5 * (yi[1:] + yi[:-1]) * np.diff(xi)))
    nxt = int(np.count_nonzero(inside))  # first point beyond x_max
    if xi[-1] < x_max and nxt < x.size:
        x0, y0, x1, y1 = xi[-1], yi[-1], x[nxt], y[nxt]
        y_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_max) * (x_max - x0)
    return area


# ---------------------------------------------------------------- continual-learning summaries


def final(matrix: Matrix) -> float:
    """Mean of the last row: every task's metric after training through the last task."""
    rows = _check_matrix(matrix)
    return _nanmean(rows[-1])


def forgetting(matrix: Matrix) -> float:
    """Mean over earlier tasks j of (best value of column j before the last row) - (last-row value).

    The best is taken over rows j..T-2, i.e. from the step that learned task j until
    just before the last step, so a later improvement (backward transfer) that is then
    lost also counts. Tasks missing either value are skipped. 0.0 for a single task
    (nothing can be forgotten); NaN when no earlier task has both values.
    """
    rows = _check_matrix(matrix)
    t = len(rows)
    if t == 1:
        return 0.0
    drops = []
    for j in range(t - 1):
        best = _nanmax(rows[i][j] for i in range(j, t - 1))
        last = rows[-1][j]
        if not (math.isnan(best) or math.isnan(last)):
            drops.append(best - last)
    return _nanmean(drops)


def average(matrix: Matrix) -> float:
    """Average accuracy: mean over steps i of the mean over the tasks seen so far (row i, j <= i).

    It rewards a method that was good throughout the sequence, not only at the end.
    """
    rows = _check_matrix(matrix)
    return _nanmean([_nanmean(row[: i + 1]) for i, row in enumerate(rows)])


def relative_gap(single_final: float | None, strategy_final: float | None) -> float:
    """(single - strategy) / single: the share of the one-model-per-task result a strategy loses."""
    single, strategy = _to_float(single_final), _to_float(strategy_final)
    if math.isnan(single) or math.isnan(strategy) or single == 0.0:
        return math.nan
    return (single - strategy) / single


def summarise(matrices: Mapping[str, Matrix]) -> dict[str, dict[str, float | None]]:
    """`{"final": {m: ...}, "forgetting": {m: ...}, "average": {m: ...}}` for every metric m.

    Undefined values are `None` so that the result can go straight into metrics.json.
    """
    funcs = {"final": final, "forgetting": forgetting, "average": average}
    return {
        name: {metric: _none_if_nan(func(matrix)) for metric, matrix in matrices.items()}
        for name, func in funcs.items()
    }


def relative_gaps(
    single: Mapping[str, float | None], strategy: Mapping[str, float | None]
) -> dict[str, float | None]:
    """`relative_gap` per metric present in both `final` dicts, `None` where undefined."""
    return {m: _none_if_nan(relative_gap(single[m], strategy[m])) for m in strategy if m in single}


def json_safe(obj: Any) -> Any:
    """Copy of `obj` with NaN/inf floats replaced by None, numpy scalars and arrays by Python ones.

    JSON has no NaN, and `json.dump` would otherwise write an invalid file.
    """
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------- helpers


def _as_binary_pair(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten labels (0/1 or bool) and finite scores of the same length."""
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores).reshape(-1)
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels for {s.size} scores")
    if y.size == 0:
        raise ValueError("no samples")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be 0 (good) or 1 (defect)")
        y = y.astype(bool)
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    return y, s


def _check_maps(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks as bool (N,H,W) and maps as float (N,H,W) of the same shape, finite."""
    masks = np.asarray(masks).astype(bool, copy=False)
    maps = np.asarray(maps)
    if not np.issubdtype(maps.dtype, np.floating):
        maps = maps.astype(np.float64)
    if masks.ndim != 3 or masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} must both be (N, H, W)")
    if not np.isfinite(maps).all():
        raise ValueError("anomaly maps contain NaN or inf")
    return masks, maps


def _check_matrix(matrix: Matrix) -> list[list[float]]:
    """The T x T matrix as floats with NaN for missing; entries above the diagonal must be missing."""
    rows = [[_to_float(v) for v in row] for row in matrix]
    t = len(rows)
    if t == 0 or any(len(row) != t for row in rows):
        raise ValueError(f"matrix must be square T x T with T >= 1, got row lengths {[len(r) for r in rows]}")
    for i, row in enumerate(rows):
        if any(not math.isnan(v) for v in row[i + 1 :]):
            raise ValueError(f"matrix[{i}] has values for tasks not yet trained (j > {i})")
    return rows


def _to_float(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _nanmean(values: Any) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _nanmax(values: Any) -> float:
    kept = [_to_float(v) for v in values]
    kept = [v for v in kept if not math.isnan(v)]
    return max(kept) if kept else math.nan


def _none_if_nan(v: float) -> float | None:
    return None if math.isnan(v) else v

"""Tests for trainer.metrics: known values, a hand-computed AU-PRO curve and DESIGN.md's summaries."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from linewatch.trainer import metrics as M

# ---------------------------------------------------------------- image level


def test_image_metrics_perfect_and_inverted() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert M.image_metrics(labels, scores) == {"image_auroc": 1.0, "image_f1": 1.0}
    assert M.image_metrics(labels, 1 - scores)["image_auroc"] == 0.0


def test_image_auroc_counts_pairs_and_half_ties() -> None:
    # Pairs (defect, good): 0.5 vs {0.1, 0.5, 0.7} -> 1 + 0.5 + 0; 0.9 vs all -> 3. 4.5 of 6.
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.5, 0.7, 0.5, 0.9])
    assert M.image_metrics(labels, scores)["image_auroc"] == pytest.approx(4.5 / 6)


def test_image_f1_is_the_maximum_over_thresholds() -> None:
    # Thresholds: >=0.9 -> P=1, R=1/2, F1=2/3; >=0.7 -> P=1/2, R=1/2; >=0.5 -> P=2/3, R=1, F1=0.8.
    labels = np.array([0, 1, 0, 1])
    scores = np.array([0.1, 0.5, 0.7, 0.9])
    f1, threshold = M.best_f1(labels, scores)
    assert f1 == pytest.approx(0.8)
    assert threshold == pytest.approx(0.5)
    assert M.image_metrics(labels, scores)["image_f1"] == pytest.approx(0.8)


def test_image_metrics_undefined_with_one_class_is_nan_not_an_error() -> None:
    only_good = M.image_metrics(np.zeros(4, dtype=int), np.arange(4.0))
    assert math.isnan(only_good["image_auroc"])
    assert math.isnan(only_good["image_f1"])
    only_defects = M.image_metrics(np.ones(3, dtype=int), np.arange(3.0))
    assert math.isnan(only_defects["image_auroc"])
    assert only_defects["image_f1"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("labels", "scores"),
    [
        (np.array([0, 1]), np.array([0.1, 0.2, 0.3])),
        (np.array([0, 2]), np.array([0.1, 0.2])),
        (np.array([0, 1]), np.array([0.1, np.nan])),
    ],
)
def test_image_metrics_reject_bad_input(labels: np.ndarray, scores: np.ndarray) -> None:
    with pytest.raises(ValueError):
        M.image_metrics(labels, scores)


# ---------------------------------------------------------------- AU-PRO, hand-computed


def hand_case() -> tuple[np.ndarray, np.ndarray]:
    """Two 2x4 images: region A (2 px) in image 0, region B (2x2 block, 4 px) in image 1.

    10 good pixels, so each good pixel is 0.1 FPR. Descending thresholds:
      0.9 A 1/2             -> FPR 0.0, PRO (0.5 + 0)/2    = 0.25
      0.8 B 2/4             -> FPR 0.0, PRO (0.5 + 0.5)/2  = 0.5
      0.7 good              -> FPR 0.1, PRO 0.5
      0.6 A 2/2             -> FPR 0.1, PRO (1 + 0.5)/2    = 0.75
      0.5 good              -> FPR 0.2, PRO 0.75
      0.4 good AND B 3/4    -> FPR 0.3, PRO (1 + 0.75)/2   = 0.875   (a tie: one step)
      0.3 good              -> FPR 0.4
      0.2 two good          -> FPR 0.6
      0.1 good AND B 4/4    -> FPR 0.7, PRO 1.0
      0.05, 0.0 x2 good     -> FPR 1.0
    Area to 0.3: 0.1*0.5 + 0.1*0.75 + 0.1*(0.75+0.875)/2 = 0.20625 -> /0.3 = 0.6875.
    Area to 1.0: 0.20625 + 0.0875 + 0.175 + 0.1*(0.875+1)/2 + 0.3 = 0.8625.
    Area to 0.25: PRO(0.25) interpolated = 0.8125;
      0.05 + 0.075 + 0.05*(0.75+0.8125)/2 = 0.1640625 -> /0.25 = 0.65625.
    Had the tie at 0.4 been split into two steps, the area to 0.3 would differ.
    """
    masks = np.zeros((2, 2, 4), dtype=bool)
    masks[0, 0, :2] = True
    masks[1, :, 2:] = True
    maps = np.array(
        [
            [[0.9, 0.6, 0.7, 0.5], [0.4, 0.3, 0.2, 0.2]],
            [[0.1, 0.05, 0.8, 0.8], [0.0, 0.0, 0.4, 0.1]],
        ]
    )
    return masks, maps


@pytest.mark.parametrize(("fpr_limit", "expected"), [(0.3, 0.6875), (0.25, 0.65625), (1.0, 0.8625)])
def test_aupro_matches_hand_computed_curve(fpr_limit: float, expected: float) -> None:
    masks, maps = hand_case()
    assert M.aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-12)


def test_aupro_default_limit_is_0_3() -> None:
    masks, maps = hand_case()
    assert M.aupro(masks, maps) == pytest.approx(0.6875, abs=1e-12)


def test_aupro_counts_each_region_equally_regardless_of_size() -> None:
    # One image: a 20-pixel region found perfectly, a 1-pixel region scored below every good pixel.
    mask = np.zeros((1, 10, 10), dtype=bool)
    mask[0, 0:4, 0:5] = True
    mask[0, 9, 9] = True
    maps = np.random.default_rng(0).uniform(0.1, 0.9, size=mask.shape)
    maps[0, 0:4, 0:5] = 1.0
    maps[0, 9, 9] = 0.0
    # PRO is (1 + 0)/2 = 0.5 from FPR 0 until FPR 1.
    assert M.aupro(mask, maps) == pytest.approx(0.5)
    # Pixel-level AUROC, by contrast, is dominated by the big region.
    assert M.pixel_metrics(mask, maps)["pixel_auroc"] > 0.95


def test_aupro_regions_are_8_connected() -> None:
    # (1,1) and (2,2) touch diagonally: one region with 8-connectivity. (4,4) is a second region.
    mask = np.zeros((1, 6, 6), dtype=bool)
    mask[0, 1, 1] = mask[0, 2, 2] = mask[0, 4, 4] = True
    maps = np.full((1, 6, 6), 0.5)
    maps[0, 1, 1] = maps[0, 4, 4] = 1.0
    maps[0, 2, 2] = 0.0
    # PRO = (1/2 + 1)/2 = 0.75 from FPR 0 to 1. With 4-connectivity it would be (1 + 0 + 1)/3.
    assert M.aupro(mask, maps) == pytest.approx(0.75)


def random_regions(rng: np.random.Generator, n: int = 20, size: int = 64) -> np.ndarray:
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        for _ in range(int(rng.integers(0, 3))):
            x, y = (int(v) for v in rng.integers(5, size - 5, 2))
            cv2.circle(masks[i], (x, y), int(rng.integers(1, 8)), 1, -1)
    return masks.astype(bool)


def test_aupro_properties_perfect_inverted_random() -> None:
    rng = np.random.default_rng(0)
    masks = random_regions(rng, n=100)  # ~100 regions, so the random case is close to its expectation
    assert masks.any()
    assert M.aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert M.aupro(masks, 1.0 - masks) == pytest.approx(0.0, abs=1e-12)
    # Scores independent of the truth: PRO(FPR) ~ FPR, area 0.3^2/2, normalised 0.15.
    assert M.aupro(masks, rng.random(masks.shape)) == pytest.approx(0.15, abs=0.015)


def brute_force_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float) -> float:
    """The definition written as slowly as possible: every threshold, every region, full passes."""
    regions = []
    for i, mask in enumerate(masks):
        n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        regions += [(i, labels == k) for k in range(1, n)]
    good = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fprs.append((above & good).sum() / good.sum())
        pros.append(np.mean([above[i][r].mean() for i, r in regions]))
    fprs.append(1.0)
    pros.append(1.0)
    x, y = np.array(fprs), np.array(pros)
    x_cut = np.append(x[x <= fpr_limit], fpr_limit)
    y_cut = np.interp(x_cut, x, y)  # x is non-decreasing; vertical steps sit at the same x
    y_cut[:-1] = y[x <= fpr_limit]
    return float(np.sum(0.5 * (y_cut[1:] + y_cut[:-1]) * np.diff(x_cut))) / fpr_limit


def test_aupro_exact_matches_brute_force_with_ties() -> None:
    rng = np.random.default_rng(1)
    masks = random_regions(rng, n=4, size=24)
    # Quantised scores create many ties; anomalous pixels score a bit higher on average.
    maps = np.round(rng.random(masks.shape) * 0.7 + masks * 0.3, 1)
    assert M.aupro(masks, maps) == pytest.approx(brute_force_aupro(masks, maps, 0.3), abs=1e-9)


def test_aupro_grid_is_close_to_exact() -> None:
    rng = np.random.default_rng(2)
    masks = random_regions(rng, n=30)
    maps = (rng.random(masks.shape) * 0.8 + masks * 0.3).astype(np.float32)
    exact = M.aupro(masks, maps)
    assert 0.2 < exact < 0.95  # a non-trivial curve
    assert M.aupro(masks, maps, num_thresholds=500) == pytest.approx(exact, abs=2e-3)


def test_aupro_undefined_without_regions() -> None:
    assert math.isnan(M.aupro(np.zeros((2, 4, 4), dtype=bool), np.random.default_rng(0).random((2, 4, 4))))


# ---------------------------------------------------------------- pixel level


def test_pixel_metrics_values_on_a_tiny_case() -> None:
    masks, maps = hand_case()
    result = M.pixel_metrics(masks, maps)
    y, s = masks.reshape(-1), maps.reshape(-1)
    # Defect pixel scores {0.9, 0.6, 0.8, 0.8, 0.4, 0.1} against 10 good ones, counted pair by pair.
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in s[y] for b in s[~y]]
    assert result["pixel_auroc"] == pytest.approx(np.mean(pairs))
    assert result["aupro"] == pytest.approx(0.6875)
    assert 0 < result["pixel_aupr"] <= 1
    assert 0 < result["pixel_f1"] <= 1
    assert result["pixel_images_left_out"] == 0


def test_pixel_metrics_leave_out_defect_images_without_masks() -> None:
    masks, maps = hand_case()
    # A third, defect image without a mask whose map would wreck the metrics if it were used.
    masks3 = np.concatenate([masks, np.zeros((1, 2, 4), dtype=bool)])
    maps3 = np.concatenate([maps, np.ones((1, 2, 4))])
    has_mask = np.array([True, True, False])
    with_left_out = M.pixel_metrics(masks3, maps3, has_mask)
    assert with_left_out["pixel_images_left_out"] == 1
    assert with_left_out == pytest.approx({**M.pixel_metrics(masks, maps), "pixel_images_left_out": 1})
    # Included by mistake, the all-1 map lowers both numbers.
    assert M.pixel_metrics(masks3, maps3)["aupro"] < with_left_out["aupro"]


def test_pixel_metrics_keep_good_images_even_when_has_mask_is_false() -> None:
    masks, maps = hand_case()
    labels = np.array([1, 0])
    has_mask = np.array([True, False])
    # Image 1 is "good" here, so its 2x2 block is not a region: only region A remains.
    masks_good = masks.copy()
    masks_good[1] = False
    result = M.pixel_metrics(masks_good, maps, has_mask, labels)
    assert result["pixel_images_left_out"] == 0
    assert result == pytest.approx({**M.pixel_metrics(masks_good, maps), "pixel_images_left_out": 0})


def test_pixel_metrics_all_masks_missing_is_nan_with_count() -> None:
    masks, maps = hand_case()
    result = M.pixel_metrics(np.zeros_like(masks), maps, np.array([False, False]))
    assert result["pixel_images_left_out"] == 2
    assert all(math.isnan(result[m]) for m in M.PIXEL_METRICS)


def test_pixel_metrics_subsample_only_above_the_limit() -> None:
    rng = np.random.default_rng(3)
    masks = random_regions(rng, n=10)
    maps = rng.random(masks.shape) * 0.7 + masks * 0.3
    exact = M.pixel_metrics(masks, maps)
    sampled = M.pixel_metrics(masks, maps, max_pixels=masks.size // 4)
    assert sampled != exact  # the sample path really ran
    assert sampled == M.pixel_metrics(masks, maps, max_pixels=masks.size // 4)  # deterministic
    for m in M.PIXEL_METRICS:
        assert sampled[m] == pytest.approx(exact[m], abs=0.02)
    assert M.pixel_metrics(masks, maps, max_pixels=masks.size) == exact


def test_pixel_metrics_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        M.pixel_metrics(np.zeros((2, 4, 4), dtype=bool), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError):
        M.pixel_metrics(np.zeros((2, 4, 4), dtype=bool), np.zeros((2, 4, 4)), np.array([True]))


# ---------------------------------------------------------------- continual-learning summaries

MATRIX = [
    [0.90, None, None],
    [0.95, 0.80, None],
    [0.70, 0.85, 0.60],
]


def test_final_is_mean_of_last_row() -> None:
    assert M.final(MATRIX) == pytest.approx((0.70 + 0.85 + 0.60) / 3)


def test_forgetting_uses_best_value_before_the_last_row() -> None:
    # Task 0: best of rows 0..1 is 0.95 (it improved after task 1), last 0.70 -> 0.25.
    # Task 1: best of row 1 is 0.80, last 0.85 -> -0.05 (backward transfer is negative forgetting).
    assert M.forgetting(MATRIX) == pytest.approx((0.25 - 0.05) / 2)


def test_average_is_mean_of_seen_task_means() -> None:
    assert M.average(MATRIX) == pytest.approx((0.90 + (0.95 + 0.80) / 2 + (0.70 + 0.85 + 0.60) / 3) / 3)


def test_summaries_skip_missing_entries() -> None:
    # Task 1 has no masks: its pixel metric is None or NaN in every row.
    pixel = [[0.9, None, None], [0.8, math.nan, None], [0.7, None, 0.6]]
    assert M.final(pixel) == pytest.approx(0.65)
    assert M.forgetting(pixel) == pytest.approx(0.9 - 0.7)
    assert M.average(pixel) == pytest.approx((0.9 + 0.8 + 0.65) / 3)


def test_single_task_has_zero_forgetting() -> None:
    assert M.forgetting([[0.8]]) == 0.0
    assert M.final([[0.8]]) == 0.8
    assert M.average([[0.8]]) == 0.8


def test_matrix_shape_is_checked() -> None:
    with pytest.raises(ValueError):
        M.final([[0.9, None], [0.8]])
    with pytest.raises(ValueError):
        M.final([[0.9, 0.5], [0.8, 0.7]])  # a value for a task not yet trained


def test_relative_gap() -> None:
    assert M.relative_gap(0.98, 0.93) == pytest.approx(0.05 / 0.98)
    assert math.isnan(M.relative_gap(0.0, 0.5))
    assert math.isnan(M.relative_gap(None, 0.5))
    assert M.relative_gaps({"image_auroc": 0.9, "aupro": None}, {"image_auroc": 0.81, "aupro": 0.5}) == {
        "image_auroc": pytest.approx(0.1),
        "aupro": None,
    }


def test_summarise_per_metric_and_json_ready() -> None:
    empty = [[None, None], [None, None]]
    summary = M.summarise({"image_auroc": MATRIX, "aupro": empty})
    assert set(summary) == {"final", "forgetting", "average"}
    assert summary["final"]["image_auroc"] == pytest.approx(M.final(MATRIX))
    assert summary["forgetting"]["image_auroc"] == pytest.approx(0.1)
    assert summary["average"]["image_auroc"] == pytest.approx(M.average(MATRIX))
    assert summary["final"]["aupro"] is None
    assert summary["forgetting"]["aupro"] is None
    json.dumps(summary, allow_nan=False)  # raises if a NaN slipped through


def test_json_safe_replaces_nan_and_numpy_types() -> None:
    data = {"a": np.float32(0.5), "b": [math.nan, np.int64(3)], "c": np.array([1.0, np.inf])}
    assert M.json_safe(data) == {"a": 0.5, "b": [None, 3], "c": [1.0, None]}
    json.dumps(M.json_safe(data), allow_nan=False)

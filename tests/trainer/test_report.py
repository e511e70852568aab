"""Tests for trainer.report: the HTML and every plot it links to are written and correct."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.trainer.report import TaskEval, select_examples, write_report


def make_eval(task: str, seed: int, n_good: int = 4, n_defect: int = 4, size: int = 32) -> TaskEval:
    """A small task: defect images have a square defect that the map mostly finds."""
    rng = np.random.default_rng(seed)
    n = n_good + n_defect
    labels = np.array([0] * n_good + [1] * n_defect)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n_good, n):
        x, y = rng.integers(4, size - 12, 2)
        masks[i, y : y + 8, x : x + 8] = True
    maps = np.clip(rng.random((n, size, size)) * 0.4 + masks * 0.5, 0, 1).astype(np.float32)
    scores = maps.reshape(n, -1).max(axis=1)
    images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    has_mask = np.ones(n, dtype=bool)
    has_mask[-1] = False  # one defect image is labelled but not masked
    masks[-1] = False
    return TaskEval(task, labels, scores, maps, masks, has_mask, images)


METRICS = {
    "method": "patchcore",
    "strategy": "cl",
    "backbone": "tf_efficientnet_lite0",
    "tasks": ["brick", "gravel"],
    "matrix": {
        "image_auroc": [[0.99, None], [0.97, 0.98]],
        "pixel_auroc": [[0.95, None], [0.94, 0.96]],
        "aupro": [[0.9, None], [0.85, None]],
    },
    "final": {"image_auroc": 0.975, "pixel_auroc": 0.95, "aupro": 0.85},
    "forgetting": {"image_auroc": 0.02, "pixel_auroc": 0.01, "aupro": 0.05},
    "average": {"image_auroc": 0.982, "pixel_auroc": 0.948, "aupro": 0.875},
    "task_inference_accuracy": 0.99,
}


def linked_images(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def png_size(path: Path) -> tuple[int, int]:
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a readable image"
    return image.shape[:2]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("run")
    evals = [make_eval("brick", 0), make_eval("gravel", 1)]
    out = write_report(run_dir, METRICS, evals)
    return out, out.read_text(encoding="utf-8")


def test_report_html_written_in_run_dir(report: tuple[Path, str]) -> None:
    out, page = report
    assert out.name == "report.html"
    assert page.startswith("<!doctype html>")
    assert page.rstrip().endswith("</html>")


def test_every_linked_png_exists_and_is_relative(report: tuple[Path, str]) -> None:
    out, page = report
    links = linked_images(page)
    # 3 heatmaps + 1 ROC + 1 example grid per task.
    assert len(links) == 3 + 1 + 2
    for link in links:
        assert not Path(link).is_absolute()
        assert link.startswith("report/") and link.endswith(".png")
        h, w = png_size(out.parent / link)
        assert h > 100 and w > 100


def test_one_heatmap_per_metric_in_the_matrix(report: tuple[Path, str]) -> None:
    _, page = report
    heatmaps = [link for link in linked_images(page) if Path(link).name.startswith("matrix_")]
    assert sorted(Path(h).name for h in heatmaps) == [
        "matrix_aupro.png",
        "matrix_image_auroc.png",
        "matrix_pixel_auroc.png",
    ]


def test_roc_and_example_grids_are_linked(report: tuple[Path, str]) -> None:
    _, page = report
    names = [Path(link).name for link in linked_images(page)]
    assert "roc.png" in names
    assert [n for n in names if n.startswith("examples_")] == [
        "examples_00_brick.png",
        "examples_01_gravel.png",
    ]


def test_example_grid_has_one_column_per_selected_image(report: tuple[Path, str]) -> None:
    out, _ = report
    # 3 defect + 3 good examples at 2.3 inches x 100 dpi each: wider than a single example.
    _, width = png_size(out.parent / "report" / "examples_00_brick.png")
    assert width >= 6 * 2.3 * 100 * 0.95


def test_run_info_and_summary_table(report: tuple[Path, str]) -> None:
    _, page = report
    for text in ("patchcore", "cl", "tf_efficientnet_lite0", "brick, gravel", "task_inference_accuracy"):
        assert text in page
    # Summary row: image_auroc with final, forgetting, average to three decimals.
    row = re.search(r"<tr><th>image_auroc</th>(.*?)</tr>", page)
    assert row is not None
    assert re.findall(r'<td class="num">([^<]*)</td>', row.group(1)) == ["0.975", "0.020", "0.982"]
    # Left-out count for the mask-less defect image.
    assert "1 defect images without a mask" in page


def test_text_is_escaped(tmp_path: Path) -> None:
    metrics = {**METRICS, "method": "<script>alert(1)</script>", "tasks": ["a&b", "c"]}
    page = write_report(tmp_path, metrics, [make_eval("a&b/<x>", 0)]).read_text(encoding="utf-8")
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    # The task name becomes a safe file name, and the link still resolves.
    for link in linked_images(page):
        assert (tmp_path / link).is_file()


def test_report_without_evals_or_defects_still_written(tmp_path: Path) -> None:
    only_good = make_eval("plain", 0, n_good=3, n_defect=0)
    out = write_report(tmp_path, {"tasks": ["plain"], "matrix": {"image_auroc": [[None]]}}, [only_good])
    links = linked_images(out.read_text(encoding="utf-8"))
    assert sorted(Path(link).name for link in links) == [
        "examples_00_plain.png",
        "matrix_image_auroc.png",
        "roc.png",
    ]
    assert all((tmp_path / link).is_file() for link in links)
    assert linked_images(write_report(tmp_path / "empty", {}, []).read_text(encoding="utf-8")) == []


def test_select_examples_best_median_worst() -> None:
    labels = np.array([1, 1, 1, 1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.2, 0.6, 0.8, 0.4, 0.3, 0.1, 0.7])
    assert select_examples(labels, scores) == [
        ("defect, best", 0),  # highest defect score
        ("defect, median", 2),  # 0.9 0.8 [0.6] 0.4 0.2
        ("defect, worst", 1),  # lowest defect score: the likeliest miss
        ("good, best", 6),  # lowest good score
        ("good, median", 5),
        ("good, worst", 7),  # highest good score: the likeliest false alarm
    ]


def test_select_examples_no_repeats_with_few_images() -> None:
    picks = select_examples(np.array([1, 0]), np.array([0.7, 0.2]))
    assert picks == [("defect, best", 0), ("good, best", 1)]


def test_task_eval_checks_shapes() -> None:
    ev = make_eval("t", 0)
    with pytest.raises(ValueError, match="maps"):
        TaskEval(ev.task, ev.labels, ev.scores, ev.maps[:-1], ev.masks, ev.has_mask, ev.images)
    with pytest.raises(ValueError, match="images"):
        TaskEval(ev.task, ev.labels, ev.scores, ev.maps, ev.masks, ev.has_mask, ev.images[..., 0])

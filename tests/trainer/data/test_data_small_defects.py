"""Large frames with small defects: 1024x768 and 2048x1536 parts whose defects span 3-15 px.

``defect_scale`` sizes defects as a fraction of the shorter side, so the same pixel sizes need half
the scale at twice the resolution. Scratches are left out: they are 1-3 px wide but long by design.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from linewatch.trainer.data import imread_mask, imread_rgb, load_task
from linewatch.trainer.data.generate import generate_dataset
from linewatch.trainer.data.synth import bbox_of, render_part

SMALL_TYPES = ("crack", "hole", "stain", "foreign_patch", "missing_corner")
# the defect_scale that gives 3-15 px defects at each size
SMALL = {(1024, 768): 0.05, (2048, 1536): 0.025}


def _longest_side(mask: np.ndarray) -> int:
    x0, y0, x1, y1 = bbox_of(mask)
    return max(x1 - x0, y1 - y0)


@pytest.mark.parametrize(
    ("size", "tasks", "n"), [((1024, 768), ("moon", "brick"), 3), ((2048, 1536), ("moon",), 1)]
)
def test_small_defect_scale_gives_3_to_15_px_defects(
    size: tuple[int, int], tasks: tuple[str, ...], n: int
) -> None:
    sides = []
    for kind in SMALL_TYPES:
        for task in tasks:
            for i in range(n):
                image, mask = render_part(task, size, 0, 2, i, kind, SMALL[size])
                assert (
                    image.shape == (size[1], size[0], 3)
                    and mask is not None
                    and mask.shape == image.shape[:2]
                )
                sides.append(_longest_side(mask))
    assert min(sides) >= 3 and max(sides) <= 15, (min(sides), max(sides))


def test_generate_dataset_writes_large_frames_with_small_defects(tmp_path: Path) -> None:
    generate_dataset(
        tmp_path, ["moon"], n_train=1, n_test_good=1, n_test_defect=5, size=(1024, 768),
        defect_scale=SMALL[(1024, 768)], defect_types=list(SMALL_TYPES),
    )  # fmt: skip
    split = load_task(f"mvtec:{tmp_path}", "moon")
    assert imread_rgb(split.train[0].path).shape == (768, 1024, 3)
    defects = [s for s in split.test if s.label == 1]
    assert len(defects) == 5
    for sample in defects:
        mask = imread_mask(sample.mask_path)
        assert mask.shape == (768, 1024) and 3 <= _longest_side(mask) <= 15

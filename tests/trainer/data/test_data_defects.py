"""Each defect drawer: exact mask, visibly changed pixels, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from linewatch.trainer.data.defects import DEFECT_TYPES, apply_defect
from linewatch.trainer.data.source_photos import render_view
from linewatch.trainer.data.synth import bbox_of


@pytest.mark.parametrize("defect_type", DEFECT_TYPES)
@pytest.mark.parametrize("task", ["brick", "hubble_deep_field", "coffee"])
def test_defect_is_exact_and_visible(task: str, defect_type: str) -> None:
    image = render_view(task, np.random.default_rng(1), (128, 128))
    out, mask = apply_defect(image, defect_type, np.random.default_rng(2), task)
    assert out.shape == image.shape and out.dtype == np.uint8 and mask.shape == image.shape[:2]
    changed = np.any(out != image, axis=-1)
    assert mask.sum() >= 4
    assert not (changed & ~mask).any()
    delta = np.abs(out.astype(int) - image).max(axis=-1)[mask]
    assert delta.mean() >= 25


@pytest.mark.parametrize("defect_type", DEFECT_TYPES)
def test_defect_is_deterministic(defect_type: str) -> None:
    image = render_view("gravel", np.random.default_rng(0), (96, 96))
    a = apply_defect(image, defect_type, np.random.default_rng(5), "gravel")
    b = apply_defect(image, defect_type, np.random.default_rng(5), "gravel")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_defect_sizes_at_256() -> None:
    """Most defects span about 3-15 % of the side; scratches are long."""
    image = render_view("grass", np.random.default_rng(0), (256, 256))
    for defect_type in DEFECT_TYPES:
        x0, y0, x1, y1 = bbox_of(apply_defect(image, defect_type, np.random.default_rng(3), "grass")[1])
        extent = max(x1 - x0, y1 - y0) / 256
        low = 0.2 if defect_type == "scratch" else 0.03
        assert low <= extent <= 0.7, (defect_type, extent)


def test_unknown_defect_type() -> None:
    with pytest.raises(KeyError):
        apply_defect(np.zeros((32, 32, 3), np.uint8), "dent", np.random.default_rng(0))

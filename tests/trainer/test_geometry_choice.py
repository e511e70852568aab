"""`auto` per task (trainer/geometry_choice.py): frames the size rule would tile are validated on the
task's own training images, resize against tile, and the choice and its numbers are kept."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the trainer needs torch")


def _config():
    from linewatch.trainer.config import load_config

    return load_config(None, progress=False, min_val=2, patchcore={"budget": 2000})


def test_small_frames_are_resized_by_the_rule_alone() -> None:
    from linewatch.trainer import geometry_choice

    doc, reason = geometry_choice.choose_task_geometry(_config(), "t", [], (300, 300))
    assert doc["mode"] == "resize" and "resized" in reason  # no image was read: nothing to validate


def test_large_frames_are_validated_on_training_images(tmp_path: Path) -> None:
    from linewatch.trainer.data import load_task
    from linewatch.trainer.data.generate import generate_dataset
    from linewatch.trainer.geometry_choice import choose_task_geometry

    generate_dataset(tmp_path, ["brick"], n_train=16, n_test_good=1, n_test_defect=1, size=(640, 200), seed=3)
    paths = [s.path for s in load_task(f"mvtec:{tmp_path}", "brick").train]
    lines: list[str] = []
    doc, reason = choose_task_geometry(_config(), "brick", paths, (200, 640), log=lines.append)
    found = re.search(
        r"validated on 8 held-out training frames.*resize ([\d.]+), tile ([\d.]+)\): (\w+)", reason
    )
    assert found, reason
    resize, tile, best = float(found[1]), float(found[2]), found[3]
    assert best == doc["mode"] == ("resize" if resize > tile else "tile")
    assert 0.0 <= resize <= 1.0 and 0.0 <= tile <= 1.0
    assert any("validating resize against tile" in line for line in lines)


@pytest.mark.parametrize(
    ("resize", "tile", "best"), [(0.9, 0.8, "resize"), (0.8, 0.8, "tile"), (0.5, 0.9, "tile")]
)
def test_resize_must_win_strictly(
    monkeypatch: pytest.MonkeyPatch, resize: float, tile: float, best: str
) -> None:
    """A tie keeps the rule's tiling, which loses no pixels; resize wins only on a higher AUROC."""
    from linewatch.trainer import geometry_choice

    monkeypatch.setattr(geometry_choice, "validate", lambda *a: ({"resize": resize, "tile": tile}, 16))
    doc, reason = geometry_choice.choose_task_geometry(_config(), "t", [], (1260, 500))
    assert doc["mode"] == best and reason.endswith(f": {best}")


def test_too_few_training_images_leave_the_rule_to_decide(tmp_path: Path) -> None:
    from linewatch.trainer import geometry_choice

    doc, reason = geometry_choice.choose_task_geometry(_config(), "t", [tmp_path / "x.png"] * 9, (1260, 500))
    assert doc["mode"] == "tile" and "too few training images to validate: 4 held out" in reason
    assert np.isfinite(doc["scale"])

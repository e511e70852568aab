"""`auto` geometry through the continual loop: tasks from cameras of different sizes and orientations.

Two generated tasks, landscape (640x200) then portrait (200x640), and a portrait test set whose
frames differ by a few pixels (as real scans do). `auto` must tile both at each frame's own size,
say why, and the whole loop (calibration, evaluation, metrics, report) must run on frames that do
not stack into one array.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

pytest.importorskip("torch", reason="the trainer needs torch")
pytestmark = pytest.mark.slow


def _crop_some(root: Path, task: str, px: int) -> None:
    """Crop the first two defect test images (and their masks) by ``px`` rows: ragged frame sizes."""
    test = root / task / "test"
    kinds = [d for d in sorted(test.iterdir()) if d.name != "good"]
    for image in sorted(kinds[0].iterdir())[:2]:
        mask = root / task / "ground_truth" / kinds[0].name / f"{image.stem}_mask.png"
        for path in (image, mask):
            pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(path), pixels[px:])


def test_auto_tiles_each_camera_at_its_own_size(tmp_path: Path) -> None:
    from linewatch.trainer.config import load_config
    from linewatch.trainer.continual import fit, update
    from linewatch.trainer.data.generate import generate_dataset

    wide, tall = tmp_path / "wide", tmp_path / "tall"
    generate_dataset(wide, ["brick"], n_train=8, n_test_good=3, n_test_defect=3, size=(640, 200), seed=1)
    generate_dataset(tall, ["moon"], n_train=8, n_test_good=3, n_test_defect=3, size=(200, 640), seed=2)
    _crop_some(tall, "moon", 6)
    cfg = load_config(None, progress=False, min_val=2, patchcore={"budget": 2000})
    assert cfg.geometry.mode == "auto"
    lines: list[str] = []
    run = tmp_path / "run"
    fit(cfg, f"mvtec:{wide}", ["brick"], run, log=lines.append)
    metrics = update(run, f"mvtec:{tall}", ["moon"], log=lines.append)

    geometry = metrics["geometry"]
    assert geometry["mode"] == "tile" and geometry["frame_size"] is None
    assert "tiled" in geometry["reason"] and "2.50x" in geometry["reason"]  # 640 px into 256
    assert any(line == f"geometry: {geometry['reason']}" for line in lines)
    saved = json.loads((run / "state" / "run.json").read_text())["config"]["geometry"]
    assert saved["learn_frame_size"] is False and saved["reason"] == geometry["reason"]
    # each camera got its own choice (8 training images are too few to validate: the rule's tiling)
    entries = {tuple(e["tasks"]): e for e in geometry["by_size"]}
    assert set(entries) == {("brick",), ("moon",)} and saved["by_size"] == geometry["by_size"]
    assert all(e["mode"] == "tile" and "too few training images" in e["reason"] for e in entries.values())
    assert any(line.startswith("geometry for moon: ") for line in lines)
    # both tasks evaluated after the second step, on their own frames (portrait ones ragged)
    assert len(metrics["matrix"]["image_auroc"]) == 2 and None not in metrics["matrix"]["image_auroc"][1]
    assert all(v is not None for v in metrics["matrix"]["pixel_auroc"][1])
    assert (run / "report.html").is_file()

"""The synthetic generator: deterministic, MVTec layout, exact masks, every defect type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from linewatch.trainer.data.defects import DEFECT_TYPES
from linewatch.trainer.data.generate import TEST_DEFECT, available_sources, generate_dataset, main
from linewatch.trainer.data.source_photos import load_source, render_view
from linewatch.trainer.data.synth import render_part, rng_for


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _small(root: Path, seed: int) -> Path:
    return generate_dataset(root, ["gravel"], n_train=2, n_test_good=1, n_test_defect=6, size=64, seed=seed)


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    a, b = _files(_small(tmp_path / "a", 3)), _files(_small(tmp_path / "b", 3))
    assert a.keys() == b.keys()
    assert a == b


def test_different_seed_differs(tmp_path: Path) -> None:
    a, b = _files(_small(tmp_path / "a", 3)), _files(_small(tmp_path / "b", 4))
    assert a.keys() == b.keys()
    images = [k for k in a if k.endswith(".png")]
    assert all(a[k] != b[k] for k in images if "/train/" in k)


def test_layout(synthetic_root: Path, synthetic_info: Any) -> None:
    info = synthetic_info
    for task in info.tasks:
        t = synthetic_root / task
        assert sorted(p.name for p in (t / "train" / "good").iterdir()) == [
            f"{i:03d}.png" for i in range(info.n_train)
        ]
        assert len(list((t / "test" / "good").glob("*.png"))) == info.n_test_good
        types = sorted(p.name for p in (t / "test").iterdir() if p.name != "good")
        assert types == sorted(DEFECT_TYPES)
        assert not (t / "ground_truth" / "good").exists()
        for kind in types:
            for image in (t / "test" / kind).glob("*.png"):
                assert (t / "ground_truth" / kind / f"{image.stem}_mask.png").is_file()
        assert (t / "synthetic.json").is_file()
    assert not list(synthetic_root.glob(".*")), "no partial folders are left behind"


def test_images_are_rgb_uint8_of_requested_size(synthetic_root: Path, synthetic_info: Any) -> None:
    image = cv2.imread(str(synthetic_root / "brick" / "train" / "good" / "000.png"), cv2.IMREAD_UNCHANGED)
    assert image.shape == (synthetic_info.size, synthetic_info.size, 3) and image.dtype == np.uint8


def test_masks_are_exact_nonempty_and_binary(synthetic_root: Path, synthetic_info: Any) -> None:
    """Outside the mask the defect image equals the clean part; inside, (almost) every pixel changed."""
    for task in synthetic_info.tasks:
        for i in range(synthetic_info.n_test_defect):
            kind = DEFECT_TYPES[i % len(DEFECT_TYPES)]
            name = f"{i // len(DEFECT_TYPES):03d}"
            image = cv2.imread(str(synthetic_root / task / "test" / kind / f"{name}.png"))[..., ::-1]
            raw = cv2.imread(
                str(synthetic_root / task / "ground_truth" / kind / f"{name}_mask.png"), cv2.IMREAD_UNCHANGED
            )
            assert raw.shape == image.shape[:2]
            assert set(np.unique(raw)) == {0, 255}
            mask = raw > 0
            clean, _ = render_part(task, (synthetic_info.size,) * 2, 0, TEST_DEFECT, i)
            changed = np.any(image != clean, axis=-1)
            assert not (changed & ~mask).any(), f"{task}/{kind}: pixels changed outside the mask"
            assert changed[mask].mean() > 0.95, f"{task}/{kind}: mask covers unchanged pixels"
            assert 4 <= mask.sum() < 0.2 * mask.size


def test_defect_types_subset_and_non_square_size(tmp_path: Path) -> None:
    root = generate_dataset(
        tmp_path, ["moon"], n_train=1, n_test_good=0, n_test_defect=2, size=(96, 64), defect_types=["hole"]
    )
    assert sorted(p.name for p in (root / "moon" / "test").iterdir()) == ["good", "hole"]
    image = cv2.imread(str(root / "moon" / "test" / "hole" / "001.png"))
    assert image.shape == (64, 96, 3)


def test_defect_scale_shrinks_defects(tmp_path: Path) -> None:
    def area(scale: float) -> float:
        sizes = [
            render_part("grass", (256, 256), 0, TEST_DEFECT, i, "hole", scale)[1].sum() for i in range(4)
        ]
        return float(np.mean(sizes))

    assert area(0.3) < area(1.0) / 4


def test_existing_task_needs_overwrite(tmp_path: Path) -> None:
    generate_dataset(tmp_path, ["brick"], n_train=3, n_test_good=0, n_test_defect=0, size=32)
    with pytest.raises(FileExistsError):
        generate_dataset(tmp_path, ["brick"], n_train=1, n_test_good=0, n_test_defect=0, size=32)
    generate_dataset(tmp_path, ["brick"], n_train=1, n_test_good=0, n_test_defect=0, size=32, overwrite=True)
    assert [p.name for p in (tmp_path / "brick" / "train" / "good").iterdir()] == ["000.png"], (
        "stale files removed"
    )


def test_rejects_unknown_task_and_defect(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="available sources"):
        generate_dataset(tmp_path, ["no_such_texture"])
    with pytest.raises(ValueError, match="defect"):
        generate_dataset(tmp_path, ["brick"], defect_types=["dent"])


def test_every_source_renders_as_rgb() -> None:
    names = available_sources()
    assert {"brick", "grass", "gravel", "moon"} <= set(names)
    for name in names:
        assert load_source(name).ndim == 3 and load_source(name).shape[2] == 3
        view = render_view(name, rng_for(0, name, 0), (48, 32))
        assert view.shape == (32, 48, 3) and view.dtype == np.uint8


def test_cli_writes_tasks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--out", str(tmp_path), "--tasks", "grass,gravel", "--n-train", "2", "--n-test-good", "1"]
    assert main([*argv, "--n-test-defect", "1", "--size", "48x32", "--seed", "1"]) == 0
    assert cv2.imread(str(tmp_path / "gravel" / "train" / "good" / "001.png")).shape == (32, 48, 3)
    assert main(["--out", str(tmp_path), "--tasks", "grass"]) == 2, "refuses to overwrite without --overwrite"
    assert "exists" in capsys.readouterr().err
    assert main(["--list-sources"]) == 0
    assert "brick" in capsys.readouterr().out.split()

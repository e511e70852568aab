"""Every failure names its file(s); bad files are reported all at once."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.trainer.data import DatasetError, list_tasks, load_task, read_images, read_masks


@pytest.mark.parametrize("fmt", ["mvtec", "folder", "visa"])
def test_missing_root(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="nowhere"):
        load_task(f"{fmt}:{root}", "brick")
    with pytest.raises(DatasetError, match="nowhere"):
        list_tasks(f"{fmt}:{root}")


def test_missing_task(synthetic_root: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_task(f"mvtec:{synthetic_root}", "bottle")
    message = str(info.value)
    assert str(synthetic_root / "bottle") in message and "brick, coffee" in message
    with pytest.raises(DatasetError, match="invalid task name"):
        load_task(f"mvtec:{synthetic_root}", "../brick")


def test_empty_or_missing_train(dataset_copy: Path) -> None:
    good = dataset_copy / "brick" / "train" / "good"
    for image in good.iterdir():
        image.unlink()
    (good / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="no images") as info:
        load_task(f"mvtec:{dataset_copy}", "brick")
    assert good in info.value.paths
    shutil.rmtree(good)
    with pytest.raises(DatasetError, match="train folder of good images is missing"):
        load_task(f"mvtec:{dataset_copy}", "brick")


def test_corrupt_images_reported_together(dataset_copy: Path) -> None:
    split = load_task(f"mvtec:{dataset_copy}", "brick")
    paths = [s.path for s in split.train]
    paths[0].write_bytes(b"this is not a png")
    paths[1].write_bytes(b"")
    paths[2].write_bytes(paths[2].read_bytes()[:40])  # header only: truncated
    missing = paths[3].with_name("gone.png")
    with pytest.raises(DatasetError) as info:
        read_images([*paths, missing], (32, 32))
    bad = {paths[0], paths[1], paths[2], missing}
    assert set(info.value.paths) == bad
    assert all(str(p) in str(info.value) for p in bad)
    assert str(info.value).startswith("4 unreadable")
    assert read_images(paths[3:], (32, 32)).shape == (1, 32, 32, 3)


def test_mask_size_mismatch_names_every_mask(dataset_copy: Path) -> None:
    split = load_task(f"mvtec:{dataset_copy}", "coffee")
    defects = [s for s in split.test if s.label == 1]
    for sample in defects[:2]:
        assert cv2.imwrite(str(sample.mask_path), np.full((50, 70), 255, np.uint8))
    with pytest.raises(DatasetError) as info:
        read_masks(split.test, (32, 32))
    assert set(info.value.paths) == {defects[0].mask_path, defects[1].mask_path}
    assert "50x70" in str(info.value) and "128x128" in str(info.value)


def test_corrupt_mask(dataset_copy: Path) -> None:
    split = load_task(f"mvtec:{dataset_copy}", "coffee")
    bad = next(s for s in split.test if s.label == 1)
    assert bad.mask_path is not None
    bad.mask_path.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match="bad mask") as info:
        read_masks(split.test, (32, 32))
    assert info.value.paths == [bad.mask_path]


def test_defect_without_mask_is_allowed(dataset_copy: Path) -> None:
    mask = dataset_copy / "brick" / "ground_truth" / "stain" / "000_mask.png"
    mask.unlink()
    split = load_task(f"mvtec:{dataset_copy}", "brick")
    stain = next(s for s in split.test if s.defect_type == "stain")
    assert stain.label == 1 and stain.mask_path is None
    assert split.n_test_defects_without_mask == 1
    masks, has_mask = read_masks(split.test, (32, 32))
    index = split.test.index(stain)
    assert not has_mask[index] and not masks[index].any()
    assert has_mask.sum() == len(split.test) - 1


def test_dataset_error_is_a_value_error() -> None:
    assert issubclass(DatasetError, ValueError)

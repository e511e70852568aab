"""FORMAT:ROOT specs and the mvtec / folder / visa loaders."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from linewatch.trainer.data import (
    DatasetError,
    Sample,
    list_tasks,
    load_task,
    parse_data_spec,
    read_images,
    read_masks,
)
from linewatch.trainer.data.defects import DEFECT_TYPES


def test_parse_data_spec() -> None:
    assert parse_data_spec("mvtec:/data/mvtec") == ("mvtec", Path("/data/mvtec"))
    assert parse_data_spec("VisA:/d") == ("visa", Path("/d"))
    assert parse_data_spec("folder:C:/parts") == ("folder", Path("C:/parts")), (
        "splits at the first colon only"
    )


@pytest.mark.parametrize("spec", ["mvtec", "mvtec:", "/data/mvtec", "coco:/data", ":x"])
def test_parse_data_spec_rejects(spec: str) -> None:
    with pytest.raises(DatasetError, match="folder, mvtec, visa"):
        parse_data_spec(spec)


def test_mvtec_loader(synthetic_root: Path, synthetic_info: Any) -> None:
    spec = f"mvtec:{synthetic_root}"
    assert list_tasks(spec) == sorted(synthetic_info.tasks)
    split = load_task(spec, "brick")
    assert split.task == "brick"
    assert len(split.train) == synthetic_info.n_train
    assert all(s.label == 0 and s.defect_type == "good" and s.mask_path is None for s in split.train)
    good = [s for s in split.test if s.label == 0]
    bad = [s for s in split.test if s.label == 1]
    assert len(good) == synthetic_info.n_test_good and len(bad) == synthetic_info.n_test_defect
    assert {s.defect_type for s in bad} == set(DEFECT_TYPES)
    assert all(s.mask_path is not None and s.mask_path.name == f"{s.path.stem}_mask.png" for s in bad)
    assert split.n_test_defects_without_mask == 0
    assert load_task(spec, "brick") == split, "loading is deterministic"


def test_loaded_split_reads_into_arrays(synthetic_root: Path) -> None:
    split = load_task(f"mvtec:{synthetic_root}", "coffee")
    images = read_images([s.path for s in split.test], (64, 80))
    masks, has_mask = read_masks(split.test, (64, 80))
    assert images.shape == (len(split.test), 64, 80, 3) and images.dtype == np.uint8
    assert masks.shape == (len(split.test), 64, 80) and masks.dtype == bool and has_mask.all()
    labels = np.array([s.label for s in split.test])
    assert (masks.reshape(len(labels), -1).any(axis=1) == (labels == 1)).all()


def test_folder_loader_without_masks(dataset_copy: Path, synthetic_info: Any) -> None:
    shutil.rmtree(dataset_copy / "brick" / "ground_truth")
    split = load_task(f"folder:{dataset_copy}", "brick")
    bad = [s for s in split.test if s.label == 1]
    assert len(bad) == synthetic_info.n_test_defect
    assert all(s.mask_path is None for s in bad)
    assert split.n_test_defects_without_mask == len(bad)
    masks, has_mask = read_masks(split.test, (32, 32))
    assert not masks.any()
    assert (has_mask == [s.label == 0 for s in split.test]).all()


def test_folder_loader_is_lenient(dataset_copy: Path) -> None:
    """Flat train folder, masks named like their image, no test folder: all fine for ``folder:``."""
    task = dataset_copy / "brick"
    for image in (task / "train" / "good").iterdir():
        image.rename(task / "train" / image.name)
    (task / "train" / "good").rmdir()
    mask = task / "ground_truth" / "hole" / "000_mask.png"
    mask.rename(mask.with_name("000.png"))
    split = load_task(f"folder:{dataset_copy}", "brick")
    assert len(split.train) == 4
    hole = next(s for s in split.test if s.defect_type == "hole")
    assert hole.mask_path == task / "ground_truth" / "hole" / "000.png"
    shutil.rmtree(task / "test")
    assert load_task(f"folder:{dataset_copy}", "brick").test == []
    with pytest.raises(DatasetError, match="train folder of good images is missing"):
        load_task(f"mvtec:{dataset_copy}", "brick")
    shutil.rmtree(dataset_copy / "coffee" / "test")
    with pytest.raises(DatasetError, match="test folder is missing"):
        load_task(f"mvtec:{dataset_copy}", "coffee")


def test_sample_is_frozen() -> None:
    sample = Sample(Path("a.png"), 0, "good", None)
    with pytest.raises(AttributeError):
        sample.label = 1  # type: ignore[misc]
    assert hash(sample) == hash(Sample(Path("a.png"), 0, "good", None))


def _write(path: Path, image: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return str(path)


def make_visa(root: Path, rows_extra: str = "") -> Path:
    """A tiny VisA tree: JPG images, masks holding class index 1 (as VisA's do), split_csv/1cls.csv."""
    rng = np.random.default_rng(0)
    rows = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        for i in range(3):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            _write(root / rel, rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
            rows.append(f"{obj},{'train' if i < 2 else 'test'},normal,{rel},")
        rel, mask_rel = f"{obj}/Data/Images/Anomaly/000.JPG", f"{obj}/Data/Masks/Anomaly/000.png"
        _write(root / rel, rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
        mask = np.zeros((40, 50), np.uint8)
        mask[10:20, 5:15] = 1
        _write(root / mask_rel, mask)
        rows.append(f"{obj},test,anomaly,{rel},{mask_rel}")
        rows.append(f"{obj},train,anomaly,{rel},{mask_rel}")  # as in VisA's 2cls splits: skipped
        rel = f"{obj}/Data/Images/Anomaly/001.JPG"
        _write(root / rel, rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
        rows.append(f"{obj},test,anomaly,{rel},")
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text("\n".join(rows) + "\n" + rows_extra)
    return root


def test_visa_loader(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa")
    spec = f"visa:{root}"
    assert list_tasks(spec) == ["candle", "pcb1"]
    split = load_task(spec, "pcb1")
    assert [s.path.name for s in split.train] == ["0000.JPG", "0001.JPG"]
    assert all(s.label == 0 for s in split.train)
    assert [(s.label, s.defect_type, s.mask_path is not None) for s in split.test] == [
        (0, "good", False),
        (1, "anomaly", True),
        (1, "anomaly", False),
    ]
    masks, has_mask = read_masks(split.test, (40, 50))
    assert has_mask.tolist() == [True, True, False]
    assert masks[1].sum() == 100 and masks[1][10:20, 5:15].all(), "class-index masks are binarised"
    assert read_images([s.path for s in split.test], (20, 25)).shape == (3, 20, 25, 3)
    by_csv = load_task(f"visa:{root / 'split_csv' / '1cls.csv'}", "pcb1")
    assert by_csv == split, "a csv file may be named directly"


def test_visa_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"1cls\.csv"):
        load_task(f"visa:{tmp_path}", "candle")
    root = make_visa(
        tmp_path / "v", "candle,train,normal,candle/missing_a.JPG,\ncandle,test,weird,candle/missing_b.JPG,\n"
    )
    with pytest.raises(DatasetError) as info:
        load_task(f"visa:{root}", "candle")
    message = str(info.value)
    assert "missing_a.JPG" in message and "'weird'" in message
    with pytest.raises(DatasetError, match="objects: candle, pcb1"):
        load_task(f"visa:{root}", "capsules")

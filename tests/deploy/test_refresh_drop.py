"""The drop directory: what is taken, what is left and why, staging, and the merge after success."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from linewatch.deploy.refresh import drop as drop_module
from linewatch.deploy.refresh.drop import apply_drop, read_journal, scan_drop, scan_review, undo_drop


def _img(path: Path, data: bytes = b"img") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _dataset(root: Path) -> Path:
    for task in ("brick", "gravel"):
        _img(root / task / "train" / "good" / "000.png", task.encode())
        _img(root / task / "test" / "good" / "000.png")
        _img(root / task / "test" / "crack" / "000.png")
        _img(root / task / "ground_truth" / "crack" / "000_mask.png")
    return root


def _new_task(drop: Path, name: str, *, defects: bool = True) -> None:
    _img(drop / name / "train" / "good" / "a.png")
    _img(drop / name / "train" / "good" / "b.png")
    _img(drop / name / "test" / "good" / "c.png")
    if defects:
        _img(drop / name / "test" / "scratch" / "d.png")
        _img(drop / name / "ground_truth" / "scratch" / "d_mask.png")


def test_scan_known_and_new_tasks_with_reasons(tmp_path: Path) -> None:
    data, drop = _dataset(tmp_path / "data"), tmp_path / "drop"
    _img(drop / "brick" / "train" / "good" / "100.png")
    _img(drop / "brick" / "train" / "good" / "000.png", b"same name as in the dataset")
    _img(drop / "brick" / "train" / "good" / "notes.txt")
    _img(drop / "brick" / "test" / "crack" / "x.png")
    _new_task(drop, "tile")
    _new_task(drop, "wood", defects=False)
    _img(drop / "README.txt")
    (drop / ".partial").mkdir()
    scan = scan_drop(drop, ["brick", "gravel"], data, settle_s=0, tag="T")
    assert sorted(scan.added) == ["brick"]
    dests = sorted(str(i.dest) for i in scan.added["brick"])
    assert dests == ["brick/train/good/000.drop-T.png", "brick/train/good/100.png"]  # never overwrite
    assert sorted(scan.new_tasks) == ["tile"]
    assert len(scan.new_tasks["tile"]) == 5
    assert scan.tasks_to_train == ["brick", "tile"]
    assert not scan.only_adds_images
    text = "\n".join(scan.ignored)
    assert "notes.txt: not an image" in text
    assert "only train/good is taken for the known task 'brick'" in text
    assert "wood: not a complete new task" in text and "no defect folder" in text
    assert "README.txt: not a task folder" in text
    assert ".partial" not in text


def test_files_still_being_written_are_left_for_the_next_run(tmp_path: Path) -> None:
    data, drop = _dataset(tmp_path / "data"), tmp_path / "drop"
    old = _img(drop / "brick" / "train" / "good" / "old.png")
    past = time.time() - 600
    os.utime(old, (past, past))
    _img(drop / "brick" / "train" / "good" / "fresh.png")
    _new_task(drop, "tile")
    scan = scan_drop(drop, ["brick"], data, settle_s=60)
    assert [i.src.name for i in scan.added["brick"]] == ["old.png"]
    assert scan.only_adds_images
    assert any("fresh.png: modified less than 60s ago" in r for r in scan.ignored)
    assert any("tile: files modified less than" in r for r in scan.ignored)


def test_empty_or_missing_drop(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    assert scan_drop(tmp_path / "nope", ["brick"], data).empty
    (tmp_path / "drop" / "brick" / "train" / "good").mkdir(parents=True)
    assert scan_drop(tmp_path / "drop", ["brick"], data, settle_s=0).empty


def test_apply_then_undo_and_crash_recovery(tmp_path: Path) -> None:
    data, drop = _dataset(tmp_path / "data"), tmp_path / "drop"
    _img(drop / "brick" / "train" / "good" / "100.png", b"new brick")
    _new_task(drop, "tile")
    scan = scan_drop(drop, ["brick", "gravel"], data, settle_s=0)
    before_data = sorted(str(p.relative_to(data)) for p in data.rglob("*"))
    before_drop = sorted(str(p.relative_to(drop)) for p in drop.rglob("*"))
    journal = tmp_path / "journal.json"
    moved = apply_drop(scan, data, drop, journal, {"run_id": "r1"})
    assert moved == 6
    assert (data / "brick" / "train" / "good" / "100.png").read_bytes() == b"new brick"
    assert (data / "tile" / "ground_truth" / "scratch" / "d_mask.png").is_file()
    assert not (drop / "tile").exists()  # emptied new-task folder removed
    assert (drop / "brick" / "train" / "good").is_dir()  # known-task drop folder kept for next time
    assert read_journal(journal)["run_id"] == "r1"
    assert scan_drop(drop, ["brick", "gravel", "tile"], data, settle_s=0).empty

    assert undo_drop(journal) == 6
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == before_data
    assert sorted(str(p.relative_to(drop)) for p in drop.rglob("*")) == before_drop
    assert undo_drop(journal) == 0  # idempotent


def test_undo_after_a_crash_halfway_through_the_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, drop = _dataset(tmp_path / "data"), tmp_path / "drop"
    _new_task(drop, "tile")
    scan = scan_drop(drop, ["brick"], data, settle_s=0)
    real_move = drop_module.shutil.move
    calls = {"n": 0}

    def dying_move(src: str, dst: str) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("power cut")
        return real_move(src, dst)

    monkeypatch.setattr(drop_module.shutil, "move", dying_move)
    with pytest.raises(KeyboardInterrupt):
        apply_drop(scan, data, drop, tmp_path / "journal.json")
    monkeypatch.setattr(drop_module.shutil, "move", real_move)
    assert undo_drop(tmp_path / "journal.json") == 2
    assert not (data / "tile").exists()
    assert len(scan_drop(drop, ["brick"], data, settle_s=0).new_tasks["tile"]) == 5


def test_apply_never_overwrites(tmp_path: Path) -> None:
    data, drop = _dataset(tmp_path / "data"), tmp_path / "drop"
    _img(drop / "brick" / "train" / "good" / "100.png")
    scan = scan_drop(drop, ["brick"], data, settle_s=0)
    _img(data / "brick" / "train" / "good" / "100.png", b"appeared meanwhile")
    with pytest.raises(FileExistsError):
        apply_drop(scan, data, drop, tmp_path / "journal.json")
    assert (drop / "brick" / "train" / "good" / "100.png").is_file()


def test_review_defects_go_to_the_test_set_and_back_on_undo(tmp_path: Path) -> None:
    """The operator page's "missed" frames: moved into <task>/test/<defect>/ with the drop, undone with it."""
    data, drop, review = _dataset(tmp_path / "data"), tmp_path / "drop", tmp_path / "review"
    _img(drop / "brick" / "train" / "good" / "100.png")
    _img(review / "brick" / "test" / "missed" / "cam0-f1.png")
    _img(review / "brick" / "test" / "crack" / "000.png", b"same name as in the dataset")
    _img(review / "tile" / "test" / "missed" / "x.png")
    scan = scan_drop(drop, ["brick", "gravel"], data, settle_s=0, tag="T")
    scan_review(review, ["brick", "gravel"], data, scan, settle_s=0, tag="T")
    assert sorted(str(i.dest) for i in scan.review["brick"]) == [
        "brick/test/crack/000.drop-T.png",
        "brick/test/missed/cam0-f1.png",
    ]
    assert scan.tasks_to_train == ["brick"] and scan.only_adds_images  # review images never train
    assert "review images are taken only for a task the model knows" in "\n".join(scan.ignored)
    assert scan.summary()["review_defects"] == {"brick": 2}
    journal = tmp_path / "journal.json"
    assert apply_drop(scan, data, drop, journal) == 3
    assert (data / "brick" / "test" / "missed" / "cam0-f1.png").is_file()
    assert undo_drop(journal) == 3
    assert (review / "brick" / "test" / "missed" / "cam0-f1.png").is_file()
    assert not (data / "brick" / "test" / "missed").exists()


def test_review_alone_starts_no_refresh(tmp_path: Path) -> None:
    data, review = _dataset(tmp_path / "data"), tmp_path / "review"
    _img(review / "brick" / "test" / "missed" / "a.png")
    scan = scan_review(review, ["brick"], data, scan_drop(tmp_path / "drop", ["brick"], data), settle_s=0)
    assert scan.empty and len(scan.review["brick"]) == 1

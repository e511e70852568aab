"""The drop directory: where people (or a line PC) leave new data for the next refresh.

Two kinds of drop are understood, both in the MVTec AD folder layout:

- `<drop>/<known task>/train/good/*.png`: more good images of a task the model
  already knows (a new batch of material, new lighting). Only `train/good` is taken.
- `<drop>/<new task>/{train/good, test/good, test/<defect>, ground_truth/...}`: a
  whole new product. It needs test images, good and defective, or the gate could
  not measure it.

A third, optional folder holds what the operator page reported as missed defects:
`<review>/<known task>/test/<defect>/*.png` (`review_dir`, scanned by `scan_review`). Those images
are moved with the drop into the dataset's test set of that task, so the evaluation before and
after the update (and so the gate) measures the model on them; they never train it, and alone they
do not start a refresh (nothing would change for them to measure).

The trainer records where each task was learned from and re-reads earlier tasks
from there on every later update, so it must be given the real dataset path, never
a temporary view. The new files are therefore moved into the dataset before
training, under a *journal* (`apply_drop`), and moved back (`undo_drop`) when the
refresh does not end in a confirmed release, including after a crash: the next run
finds the journal and undoes it first. Net effect, as promised: the dataset only
keeps the new files once the refresh has succeeded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linewatch.deploy.refresh.fsutil import fsync_dir, fsync_file

__all__ = [
    "IMAGE_EXTENSIONS",
    "DropItem",
    "DropScan",
    "apply_drop",
    "read_journal",
    "scan_drop",
    "scan_review",
    "undo_drop",
]

# Same set as trainer.data.samples (not imported: the refresh job must not pull torch in).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _is_image(p))


@dataclass(frozen=True)
class DropItem:
    """One file to take: where it is now, and where it goes relative to the dataset root."""

    src: Path
    dest: Path


@dataclass
class DropScan:
    added: dict[str, list[DropItem]] = field(default_factory=dict)
    new_tasks: dict[str, list[DropItem]] = field(default_factory=dict)
    review: dict[str, list[DropItem]] = field(default_factory=dict)  # test defects of known tasks
    ignored: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Nothing to learn; review images alone wait for the next drop with something to train."""
        return not self.added and not self.new_tasks

    @property
    def items(self) -> list[DropItem]:
        out = [item for items in self.added.values() for item in items]
        out += [item for items in self.review.values() for item in items]
        return out + [item for items in self.new_tasks.values() for item in items]

    @property
    def only_adds_images(self) -> bool:
        """True when only known tasks got more good images (a bank-only export may do)."""
        return bool(self.added) and not self.new_tasks

    @property
    def tasks_to_train(self) -> list[str]:
        return sorted(self.added) + sorted(self.new_tasks)

    def summary(self) -> dict[str, object]:
        return {
            "added_images": {task: len(items) for task, items in sorted(self.added.items())},
            "new_tasks": {task: len(items) for task, items in sorted(self.new_tasks.items())},
            "review_defects": {task: len(items) for task, items in sorted(self.review.items())},
            "ignored": list(self.ignored),
        }


def _settled(paths: list[Path], settle_s: float, now: float) -> bool:
    return all(now - p.stat().st_mtime >= settle_s for p in paths)


def _unique_dest(dataset_root: Path, rel: Path, tag: str, taken: set[Path]) -> Path:
    """Keep the drop's file name unless the dataset already has it; never overwrite."""
    candidate, n = rel, 0
    while (dataset_root / candidate).exists() or candidate in taken:
        n += 1
        suffix = f".drop-{tag}" + (f"-{n}" if n > 1 else "")
        candidate = rel.with_name(f"{rel.stem}{suffix}{rel.suffix}")
    taken.add(candidate)
    return candidate


def _scan_known(
    task_dir: Path, dataset_root: Path, settle_s: float, now: float, tag: str, scan: DropScan
) -> None:
    task = task_dir.name
    good = task_dir / "train" / "good"
    for path in sorted(task_dir.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.parent != good:
            scan.ignored.append(f"{path}: only train/good is taken for the known task {task!r}")
        elif not _is_image(path):
            scan.ignored.append(f"{path}: not an image ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    images = _images(good)
    fresh = [p for p in images if now - p.stat().st_mtime < settle_s]
    for path in fresh:
        scan.ignored.append(f"{path}: modified less than {settle_s:g}s ago, left for the next run")
    ready = [p for p in images if p not in fresh]
    if not ready:
        return
    taken: set[Path] = set()
    scan.added[task] = [
        DropItem(p, _unique_dest(dataset_root, Path(task, "train", "good", p.name), tag, taken))
        for p in ready
    ]


def _scan_new(task_dir: Path, dataset_root: Path, settle_s: float, now: float, scan: DropScan) -> None:
    task = task_dir.name
    if not _TASK_NAME.match(task):
        scan.ignored.append(f"{task_dir}: {task!r} is not a usable task name (letters, digits, _ . -)")
        return
    if (dataset_root / task).exists():
        scan.ignored.append(
            f"{task_dir}: the dataset already has a folder {task!r} the model was never trained on"
        )
        return
    problems = []
    if not _images(task_dir / "train" / "good"):
        problems.append("train/good has no images")
    test = task_dir / "test"
    if not _images(test / "good"):
        problems.append("test/good has no images")
    defect_dirs = (
        [d for d in sorted(test.iterdir()) if d.is_dir() and d.name != "good"] if test.is_dir() else []
    )
    if not any(_images(d) for d in defect_dirs):
        problems.append("test/ has no defect folder with images (the gate needs them to measure the task)")
    if problems:
        scan.ignored.append(f"{task_dir}: not a complete new task in the MVTec layout: {'; '.join(problems)}")
        return
    files = sorted(p for p in task_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not _settled(files, settle_s, now):
        scan.ignored.append(f"{task_dir}: files modified less than {settle_s:g}s ago, left for the next run")
        return
    scan.new_tasks[task] = [DropItem(p, Path(task) / p.relative_to(task_dir)) for p in files]


def scan_drop(
    drop_dir: Path,
    known_tasks: list[str],
    dataset_root: Path,
    *,
    settle_s: float = 60.0,
    now: float | None = None,
    tag: str | None = None,
) -> DropScan:
    """Look at the drop directory; decide what would be taken and why anything is not."""
    now = time.time() if now is None else now
    tag = tag or time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    scan = DropScan()
    if not Path(drop_dir).is_dir():
        return scan
    for entry in sorted(Path(drop_dir).iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            scan.ignored.append(f"{entry}: not a task folder")
        elif entry.name in known_tasks:
            _scan_known(entry, dataset_root, settle_s, now, tag, scan)
        else:
            _scan_new(entry, dataset_root, settle_s, now, scan)
    return scan


def scan_review(
    review_dir: Path,
    known_tasks: list[str],
    dataset_root: Path,
    scan: DropScan,
    *,
    settle_s: float = 60.0,
    now: float | None = None,
    tag: str | None = None,
) -> DropScan:
    """Add `<review>/<known task>/test/<defect>/` images to `scan.review` (dataset test defects)."""
    now = time.time() if now is None else now
    tag = tag or time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    if not Path(review_dir).is_dir():
        return scan
    for entry in sorted(Path(review_dir).iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir() or entry.name not in known_tasks:
            scan.ignored.append(f"{entry}: review images are taken only for a task the model knows")
            continue
        test = entry / "test"
        defects = (
            [d for d in sorted(test.iterdir()) if d.is_dir() and d.name != "good"] if test.is_dir() else []
        )
        taken: set[Path] = set()
        for defect in defects:
            if not _TASK_NAME.match(defect.name):
                scan.ignored.append(f"{defect}: not a usable defect folder name")
                continue
            for path in _images(defect):
                if now - path.stat().st_mtime < settle_s:
                    scan.ignored.append(
                        f"{path}: modified less than {settle_s:g}s ago, left for the next run"
                    )
                    continue
                dest = _unique_dest(
                    dataset_root, Path(entry.name, "test", defect.name, path.name), tag, taken
                )
                scan.review.setdefault(entry.name, []).append(DropItem(path, dest))
    return scan


def _prune_empty(path: Path, stop: Path) -> None:
    """Remove empty folders from `path` up to (not including) `stop`."""
    path, stop = Path(path), Path(stop)
    while path != stop and stop in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


def _write_json_durably(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def apply_drop(
    scan: DropScan, dataset_root: Path, drop_dir: Path, journal: Path, extra: dict[str, Any] | None = None
) -> int:
    """Move the taken files into the dataset, journaling first so it can be undone.

    Never overwrites: a destination that exists is an error raised before anything
    moves. The journal is written (and flushed) before the first move, so a crash
    at any point leaves enough to undo. Returns how many files moved.
    """
    dataset_root, drop_dir = Path(dataset_root), Path(drop_dir)
    moves = [(str(item.src), str(dataset_root / item.dest)) for item in scan.items]
    clashes = [dest for _src, dest in moves if Path(dest).exists()]
    if clashes:
        raise FileExistsError(f"not overwriting files already in the dataset: {', '.join(clashes[:5])}")
    doc = {"dataset_root": str(dataset_root), "drop_dir": str(drop_dir), "moves": moves, **(extra or {})}
    _write_json_durably(Path(journal), doc)
    touched: set[Path] = set()
    new_sources = {str(item.src) for items in scan.new_tasks.values() for item in items}
    for src, dest in moves:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, dest)
        touched.add(Path(dest).parent)
        if src in new_sources:  # emptied new-task folders go; known-task drop folders stay
            _prune_empty(Path(src).parent, drop_dir)
    for folder in touched:
        fsync_dir(folder)
    return len(moves)


def read_journal(journal: Path) -> dict[str, Any]:
    return json.loads(Path(journal).read_text())


def undo_drop(journal: Path) -> int:
    """Move journaled files back from the dataset to the drop directory; idempotent.

    Returns how many files moved back. Folders `apply_drop` created in the dataset
    (a new task's) are removed again once empty.
    """
    doc = read_journal(journal)
    dataset_root, moved = Path(doc["dataset_root"]), 0
    for src, dest in reversed(doc["moves"]):
        if Path(dest).exists() and not Path(src).exists():
            Path(src).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(dest, src)
            moved += 1
    for _src, dest in doc["moves"]:  # also folders made for files that never got there
        _prune_empty(Path(dest).parent, dataset_root)
    return moved

"""The drop directory: where people (or a line PC) leave new data for the next refresh.

Two kinds of drop are understood, both in the MVTec AD folder layout:

- `<drop>/<known task>/train/good/*.png`: more good images of a task the model
  already knows (a new batch of material, new lighting). Only `train/good` is taken.
- `<drop>/<new task>/{train/good, test/good, test/<defect>, ground_truth/...}`: a
  whole new product. It needs test images, good and defective, or the gate could
  not measure it.

Nothing is moved until the refresh has succeeded: the trainer reads a *staging*
view (hard links of the dataset plus the drop), so a refused or crashed refresh
leaves the dataset exactly as it was and the drop ready for the next try.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from deploy.refresh.fsutil import fsync_dir, link_or_copy

__all__ = ["IMAGE_EXTENSIONS", "DropItem", "DropScan", "merge_drop", "scan_drop", "stage_dataset"]

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
    ignored: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.added and not self.new_tasks

    @property
    def items(self) -> list[DropItem]:
        out = [item for items in self.added.values() for item in items]
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


def stage_dataset(dataset_root: Path, scan: DropScan, staging: Path) -> Path:
    """Build `staging` as the dataset plus the drop, out of hard links (symlinks across devices).

    The trainer and the evaluator read only this view, so the real dataset changes
    only once the refresh has succeeded (see `merge_drop`).
    """
    staging.mkdir(parents=True, exist_ok=False)
    for dirpath, dirnames, filenames in os.walk(dataset_root, followlinks=True):
        rel = Path(dirpath).relative_to(dataset_root)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in dirnames:
            (staging / rel / name).mkdir()
        for name in filenames:
            link_or_copy(Path(dirpath) / name, staging / rel / name)
    for item in scan.items:
        target = staging / item.dest
        target.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(item.src, target)
    return staging


def _prune_empty(path: Path, stop: Path) -> None:
    """Remove empty folders from `path` up to (not including) `stop`."""
    path = Path(path)
    while path != stop and stop in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


def merge_drop(scan: DropScan, dataset_root: Path, drop_dir: Path) -> int:
    """Move the taken files into the dataset (after success); return how many moved.

    Never overwrites: a name that appeared in the dataset since the scan is an error,
    raised before anything of that file moves. The folders of known tasks stay in the
    drop directory (people keep dropping there); emptied new-task folders go.
    """
    touched: set[Path] = set()
    moved = 0
    new_items = {item.src for items in scan.new_tasks.values() for item in items}
    for item in scan.items:
        target = Path(dataset_root) / item.dest
        if target.exists():
            raise FileExistsError(f"{target} appeared in the dataset during the refresh; not overwriting it")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(item.src), str(target))
        touched.add(target.parent)
        moved += 1
        if item.src in new_items:
            _prune_empty(item.src.parent, Path(drop_dir))
    for folder in touched:
        fsync_dir(folder)
    return moved

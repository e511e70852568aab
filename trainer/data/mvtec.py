"""MVTec AD layout (also MPDD): ``<task>/train/good``, ``<task>/test/<type>``,
``<task>/ground_truth/<type>/<stem>_mask.png``.

The ``folder:`` format reuses this scanner with looser rules, so both stay in step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from linewatch.trainer.data.errors import DatasetError
from linewatch.trainer.data.samples import GOOD, IMAGE_EXTENSIONS, Sample, TaskSplit, list_images

MaskFinder = Callable[[Path, Path], Path | None]
"""(ground_truth/<type> folder, image path) -> the mask file, or None when it has none."""


def mvtec_mask(gt_dir: Path, image: Path) -> Path | None:
    """MVTec's one naming rule: ``<stem>_mask.png``."""
    candidate = gt_dir / f"{image.stem}_mask.png"
    return candidate if candidate.is_file() else None


def check_root(root: Path) -> None:
    """Fail early, naming the path, instead of reporting "no tasks" for a typo in ROOT."""
    if not root.exists():
        raise DatasetError(f"dataset root does not exist: {root}", [root])
    if not root.is_dir():
        raise DatasetError(f"dataset root is not a folder: {root}", [root])


def check_task_name(task: str) -> None:
    """A task is one category folder name; anything else is a caller bug worth a clear message."""
    if not task or task in {".", ".."} or "/" in task or "\\" in task:
        raise DatasetError(f"invalid task name {task!r}: expected a category folder name")


def list_layout_tasks(root: Path) -> list[str]:
    """Category folders: sub-folders of ROOT that have a ``train`` folder."""
    check_root(root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "train").is_dir())


def _task_dir(root: Path, task: str) -> Path:
    check_root(root)
    check_task_name(task)
    task_dir = root / task
    if not task_dir.is_dir():
        known = ", ".join(list_layout_tasks(root)) or "none"
        raise DatasetError(
            f"task {task!r} not found: {task_dir} does not exist (tasks in {root}: {known})", [task_dir]
        )
    return task_dir


def _train_samples(train_dir: Path, allow_flat: bool) -> list[Sample]:
    good_dir = train_dir / GOOD
    if good_dir.is_dir():
        images = list_images(good_dir)
        where = good_dir
    elif allow_flat and train_dir.is_dir():
        images, where = list_images(train_dir), train_dir
    else:
        raise DatasetError(f"train folder of good images is missing: {good_dir}", [good_dir])
    if not images:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DatasetError(f"train folder has no images ({exts}): {where}", [where])
    return [Sample(path=p, label=0, defect_type=GOOD, mask_path=None) for p in images]


def _test_samples(test_dir: Path, gt_root: Path, find_mask: MaskFinder) -> list[Sample]:
    samples: list[Sample] = []
    for type_dir in sorted((p for p in test_dir.iterdir() if p.is_dir()), key=lambda p: p.name):
        defect_type = type_dir.name
        for image in list_images(type_dir):
            if defect_type == GOOD:
                samples.append(Sample(path=image, label=0, defect_type=GOOD, mask_path=None))
            else:
                mask = find_mask(gt_root / defect_type, image)
                samples.append(Sample(path=image, label=1, defect_type=defect_type, mask_path=mask))
    return samples


def scan_layout(
    root: Path,
    task: str,
    *,
    find_mask: MaskFinder = mvtec_mask,
    require_test: bool = True,
    allow_flat_train: bool = False,
) -> TaskSplit:
    """Scan one task folder of the MVTec layout. A defect without a mask gets ``mask_path=None``."""
    task_dir = _task_dir(root, task)
    train = _train_samples(task_dir / "train", allow_flat_train)
    test_dir = task_dir / "test"
    if test_dir.is_dir():
        test = _test_samples(test_dir, task_dir / "ground_truth", find_mask)
    elif require_test:
        raise DatasetError(f"test folder is missing: {test_dir}", [test_dir])
    else:
        test = []
    return TaskSplit(task=task, train=train, test=test)


def load_task(root: Path, task: str) -> TaskSplit:
    """MVTec AD / MPDD: the test folder is required, masks follow ``<stem>_mask.png``."""
    return scan_layout(root, task)


def list_tasks(root: Path) -> list[str]:
    return list_layout_tasks(root)

"""``folder:ROOT``: the MVTec layout as people build it by hand.

Looser than ``mvtec:`` because home-made datasets are: masks may be absent entirely or named like
their image, good training images may sit directly in ``train/``, and a task may have no test set yet
(fit works; eval then has nothing to score).
"""

from __future__ import annotations

from pathlib import Path

from linewatch.trainer.data.mvtec import list_layout_tasks, scan_layout
from linewatch.trainer.data.samples import IMAGE_EXTENSIONS, TaskSplit

_MASK_SUFFIXES = (".png", *sorted(IMAGE_EXTENSIONS - {".png"}))


def folder_mask(gt_dir: Path, image: Path) -> Path | None:
    """``<stem>_mask.<ext>`` first (MVTec style), then ``<stem>.<ext>``; None when neither exists."""
    if not gt_dir.is_dir():
        return None
    for name in (f"{image.stem}_mask", image.stem):
        for suffix in _MASK_SUFFIXES:
            candidate = gt_dir / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def load_task(root: Path, task: str) -> TaskSplit:
    return scan_layout(root, task, find_mask=folder_mask, require_test=False, allow_flat_train=True)


def list_tasks(root: Path) -> list[str]:
    return list_layout_tasks(root)
